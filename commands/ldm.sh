#!/usr/bin/env bash
# DAPS paper, LatentDAPS on the CompVis LDMs (DAPS-100: 50 annealing x 2 ODE steps, the latent_edm_daps
# defaults, HMC from the task's `ldm` group) on test-ffhq and test-imagenet, all eight tasks (the DAPS
# repository's commands/ldm_*.sh).
#   commands/ldm.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Per dataset: one multirun over the seven one-sample tasks, one for phase retrieval (best of 4 runs).
# Results: OUT_ROOT/ldm/<dataset>[-4runs]/<overrides>/; table: python -m common.report OUT_ROOT/ldm --papers
source "$(dirname "$0")/_common.sh"
parse_args "$@"

need checkpoints/GOPRO_wVAE.pth models
need_lpips
for dataset in ffhq imagenet; do
    need "checkpoints/ldm_${dataset}256.pt" models
    need "dataset/test-$dataset" data
done
check_needs

for dataset in ffhq imagenet; do
    daps_table "$dataset" "$OUT_ROOT/ldm" model="${dataset}256ldm" sampler=latent_edm_daps task_group=ldm batch_size=10
done
