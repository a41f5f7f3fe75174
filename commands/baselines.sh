#!/usr/bin/env bash
# DAPS paper, Table 1 baselines in our harness: DDRM, DDNM, ΠGDM, MMPS, DiffPIR, RED-diff, FPS-SMC, DCDP and HIO on the pixel-space
# ADM models, the 100-image test-ffhq and test-imagenet sets, the same images, masks/kernels and seeds as
# commands/pixel.sh (every draw derives from (seed, image id)), each sampler at its yaml's paper defaults.
#   commands/baselines.sh GPUS OUT_ROOT [--dry-run] [hydra overrides]     (see commands/_common.sh)
# Per dataset and sampler: one multirun over the tasks the sampler is defined for (DDRM needs an SVD: no motion
# blur; the linear methods, FPS-SMC among them, skip the non-linear tasks; DiffPIR, RED-diff and DCDP run all eight;
# HIO only phase retrieval, best of 4 runs as the papers report it).
# Results: OUT_ROOT/baselines/<dataset>-<sampler>/<overrides>/; table: python -m commands.report OUT_ROOT --papers
source "$(dirname "$0")/_common.sh"
parse_args "$@"

SVD_TASKS=down_sampling,inpainting,inpainting_rand,gaussian_blur
LINEAR_TASKS=$SVD_TASKS,motion_blur
ALL_TASKS=$LINEAR_TASKS,nonlinear_blur,hdr,phase_retrieval
declare -A TASKS=([ddrm]=$SVD_TASKS [ddnm]=$LINEAR_TASKS [pigdm]=$LINEAR_TASKS [mmps]=$LINEAR_TASKS
                  [diffpir]=$ALL_TASKS [reddiff]=$ALL_TASKS [fps_smc]=$LINEAR_TASKS [dcdp]=$ALL_TASKS)

need_pixel_tables
check_needs

for dataset in ffhq imagenet; do
    for sampler in ddrm ddnm pigdm mmps diffpir reddiff fps_smc dcdp; do
        multirun data="test-$dataset" model="${dataset}256ddpm" task_group=pixel sampler="$sampler" \
            save_dir="$OUT_ROOT/baselines" name="$dataset-$sampler" num_runs=1 task="${TASKS[$sampler]}"
    done
    multirun data="test-$dataset" model="${dataset}256ddpm" task_group=pixel sampler=hio \
        save_dir="$OUT_ROOT/baselines" name="$dataset-hio-4runs" num_runs=4 task=phase_retrieval
done
