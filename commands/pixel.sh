#!/usr/bin/env bash
# DAPS paper, pixel-space DAPS-1K (200 annealing x 5 ODE steps, the edm_daps defaults) on the 100-image
# test-ffhq and test-imagenet sets, all eight tasks (the DAPS repository's commands/pixel_*.sh).
#   commands/pixel.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Per dataset: one multirun over the seven one-sample tasks, one for phase retrieval (best of 4 runs).
# Results: OUT_ROOT/pixel/<dataset>[-4runs]/<overrides>/; table: python -m commands.report OUT_ROOT/pixel --papers
source "$(dirname "$0")/_common.sh"
parse_args "$@"

need_pixel_tables
check_needs

for dataset in ffhq imagenet; do
    daps_table "$dataset" "$OUT_ROOT/pixel" model="${dataset}256ddpm" sampler=edm_daps task_group=pixel batch_size=100
done
