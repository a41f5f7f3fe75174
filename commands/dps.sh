#!/usr/bin/env bash
# DPS paper (ICLR 2023), FFHQ: 1000-step DPS (sampler=dps, zeta from each task's `dps` block) with the FFHQ
# ADM on the tasks DPS reports: x4 super-resolution, box and random inpainting, Gaussian and motion
# deblurring, non-linear deblurring, phase retrieval (best of 4 samples).
# Differences from the paper, stated: the data are the DAPS 100-image test-ffhq set (DPS: 1000 FFHQ
# validation images), and random inpainting removes 70% of the pixels as in DAPS (the DPS paper: 92%;
# pass task.pixel.operator.mask_prob_range=[0.92,0.93] for that setting). HDR is not a DPS task.
#   commands/dps.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Results: OUT_ROOT/dps/ffhq[-4runs]/<overrides>/; table: python -m commands.report OUT_ROOT/dps --papers
source "$(dirname "$0")/_common.sh"
parse_args "$@"

need checkpoints/ffhq256.pt models
need checkpoints/GOPRO_wVAE.pth models
need dataset/test-ffhq data
need_lpips
check_needs

common=(data=test-ffhq model=ffhq256ddpm sampler=dps task_group=pixel batch_size=10 save_dir="$OUT_ROOT/dps")
multirun "${common[@]}" name=ffhq num_runs=1 \
    task=down_sampling,inpainting,inpainting_rand,gaussian_blur,motion_blur,nonlinear_blur
multirun "${common[@]}" name=ffhq-4runs num_runs=4 task=phase_retrieval
