#!/usr/bin/env bash
# DAPS with Stable Diffusion v1.5 (DAPS-100: 50 annealing x 2 ODE steps, the sd_edm_daps defaults, HMC from
# the task's `sd` group) on test-ffhq and test-imagenet, all eight tasks (the DAPS repository's
# commands/sd_*.sh). The papers publish no SD numbers; the report shows ours only.
#   commands/sd.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Per dataset: one multirun over the seven one-sample tasks, one for phase retrieval (best of 4 runs).
# Results: OUT_ROOT/sd/<dataset>[-4runs]/<overrides>/; table: python -m commands.report OUT_ROOT/sd
source "$(dirname "$0")/_common.sh"
parse_args "$@"

need checkpoints/GOPRO_wVAE.pth models
need_lpips
need_hf stable-diffusion-v1-5/stable-diffusion-v1-5
for dataset in ffhq imagenet; do
    need "dataset/test-$dataset" data
done
check_needs

for dataset in ffhq imagenet; do
    daps_table "$dataset" "$OUT_ROOT/sd" model=stable-diffusion-v1.5 sampler=sd_edm_daps task_group=sd batch_size=10
done
