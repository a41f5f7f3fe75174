#!/usr/bin/env bash
# DAPS paper, LatentDAPS on the CompVis LDMs (DAPS-100: 50 annealing x 2 ODE steps, the latent_edm_daps
# defaults, HMC from the task's `ldm` group) on test-ffhq and test-imagenet, all eight tasks (the DAPS
# repository's commands/ldm_*.sh), and beside it the paper's latent baselines on the same images, masks/kernels
# and seeds: PSLD (sampler=psld, the five linear tasks) and ReSample (sampler=resample, all eight), each at its
# yaml's per-task defaults.
#   commands/ldm.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Per dataset: one multirun over the seven one-sample tasks, one for phase retrieval (best of 4 runs); then PSLD's
# linear tasks, and ReSample's seven one-sample tasks and phase retrieval (best of 4 runs).
# Results: OUT_ROOT/ldm/<dataset>[-psld|-resample][-4runs]/<overrides>/;
# table: python -m commands.report OUT_ROOT/ldm --papers
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
    common=(data="test-$dataset" model="${dataset}256ldm" task_group=ldm batch_size=10 save_dir="$OUT_ROOT/ldm")
    multirun "${common[@]}" sampler=psld name="$dataset-psld" num_runs=1 \
        task=down_sampling,inpainting,inpainting_rand,gaussian_blur,motion_blur
    multirun "${common[@]}" sampler=resample name="$dataset-resample" num_runs=1 \
        task=down_sampling,inpainting,inpainting_rand,gaussian_blur,motion_blur,nonlinear_blur,hdr
    multirun "${common[@]}" sampler=resample name="$dataset-resample-4runs" num_runs=4 task=phase_retrieval
    multirun "${common[@]}" sampler=latent_dcdp name="$dataset-dcdp" num_runs=1 \
        task=down_sampling,inpainting,inpainting_rand,gaussian_blur,motion_blur,nonlinear_blur,hdr
    multirun "${common[@]}" sampler=latent_dcdp name="$dataset-dcdp-4runs" num_runs=4 task=phase_retrieval
done
