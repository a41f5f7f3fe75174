# Shared by commands/{pixel,ldm,sd,dps}.sh (sourced, not run): argument parsing, the checks that every
# checkpoint and data folder a table needs is present, and one Hydra multirun per call of `multirun`.
#
#   commands/<table>.sh GPUS OUT_ROOT [--dry-run] [extra Hydra overrides ...]
#
# GPUS      comma-separated GPU ids (e.g. 0,1,2,3); exported as CUDA_VISIBLE_DEVICES, every job uses gpu=0
#           of what it sees. Ignored by the SLURM launchers (SLURM assigns GPUs).
# OUT_ROOT  results go to OUT_ROOT/<table>/<dataset>/<job overrides>/ (python -m commands.report OUT_ROOT)
# LAUNCHER  environment variable, the Hydra launcher (configs/hydra/launcher/):
#           basic (default: the jobs one after another on the first GPU of GPUS),
#           local_gpus (Ray: one job per GPU, queued over GPUS), slurm, slurm_dp (SLURM job arrays).
# PYTHON    environment variable, the interpreter (default: python).
# --dry-run prints the checks and the commands, runs nothing.
# Extra overrides go to every job, e.g. `data.end_id=10 batch_size=5 wandb=true`.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAUNCHER="${LAUNCHER:-basic}"
PYTHON="${PYTHON:-python}"
TORCH_CHECKPOINTS="${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/checkpoints"
HF_CACHE="${HF_HUB_CACHE:-${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}/hub}"
DRY_RUN=0
EXTRA=()
MISSING=()

usage() {
    echo "usage: $(basename "$0") GPUS OUT_ROOT [--dry-run] [hydra overrides ...]" >&2
    echo "  e.g. $(basename "$0") 0,1 results     (LAUNCHER=basic|local_gpus|slurm|slurm_dp; default basic)" >&2
    exit 2
}

# parse_args "$@": sets GPUS, OUT_ROOT (absolute), DRY_RUN, EXTRA; cds to the repository root.
parse_args() {
    local positional=()
    for arg in "$@"; do
        case "$arg" in
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage ;;
            *) positional+=("$arg") ;;
        esac
    done
    [ "${#positional[@]}" -ge 2 ] || usage
    GPUS="${positional[0]}"
    [[ "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: GPUS must be a comma-separated list of GPU ids (e.g. 0,1), got '$GPUS'" >&2; exit 2; }
    case "${positional[1]}" in
        /*) OUT_ROOT="${positional[1]}" ;;
        *) OUT_ROOT="$PWD/${positional[1]}" ;;
    esac
    EXTRA=("${positional[@]:2}")
    case "$LAUNCHER" in
        basic|local_gpus|slurm|slurm_dp|submitit_local) ;;
        *) echo "error: LAUNCHER='$LAUNCHER' is not valid: basic, local_gpus, slurm, slurm_dp (submitit_local: tests)" >&2; exit 2 ;;
    esac
    if [ "$LAUNCHER" = basic ] && [[ "$GPUS" == *,* ]]; then
        echo "note: LAUNCHER=basic runs the jobs one after another on GPU ${GPUS%%,*}; LAUNCHER=local_gpus runs one job per GPU" >&2
    fi
    cd "$REPO_ROOT"
}

# quote ARG: ARG as the shell reads it back (plain when it is safe, else in single quotes).
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./=,:+@%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# need PATH PART: PATH (file or folder, relative to the repository root or absolute) must exist;
# PART names the `bash download.sh PART` step that fetches it.
need() {
    local status=present
    [ -e "$1" ] || { status=MISSING; MISSING+=("$1|$2"); }
    [ "$DRY_RUN" = 1 ] && echo "# needs $1 (bash download.sh $2): $status"
    return 0
}

need_lpips() {
    need "$TORCH_CHECKPOINTS/vgg16-397923af.pth" lpips
    need "$TORCH_CHECKPOINTS/lpips_weights.pt" lpips
}

# need_pixel_tables: what the pixel-space tables (pixel.sh, baselines.sh) need: the non-linear blur network, the
# LPIPS weights, and per dataset (ffhq, imagenet) its ADM checkpoint and test set.
need_pixel_tables() {
    need checkpoints/GOPRO_wVAE.pth models
    need_lpips
    local dataset
    for dataset in ffhq imagenet; do
        need "checkpoints/${dataset}256.pt" models
        need "dataset/test-$dataset" data
    done
}

# need_hf MODEL_ID: a Stable Diffusion model in the Hugging Face cache (or a local diffusers folder).
need_hf() {
    if [ -d "$1" ]; then need "$1" sd; else need "$HF_CACHE/models--${1//\//--}" sd; fi
}

# check_needs: stop with one line per missing path (not in --dry-run, which only reports).
check_needs() {
    if [ "$DRY_RUN" = 1 ] || [ "${#MISSING[@]}" -eq 0 ]; then
        return 0
    fi
    local item
    for item in "${MISSING[@]}"; do
        echo "error: missing ${item%%|*}: fetch it with \`bash download.sh ${item##*|}\`" >&2
    done
    echo "error: $(basename "$0") needs the ${#MISSING[@]} path(s) above; nothing was started" >&2
    exit 1
}

# launcher_overrides: what the chosen launcher needs besides hydra/launcher=<name>.
launcher_overrides() {
    printf 'hydra/launcher=%s' "$LAUNCHER"
    if [ "$LAUNCHER" = local_gpus ]; then
        local ids
        IFS=, read -r -a ids <<< "$GPUS"
        printf ' hydra.launcher.ray.init.num_gpus=%s' "${#ids[@]}"
    fi
    printf '\n'
}

# multirun OVERRIDES...: one `python posterior_sample.py -m` sweep (printed in --dry-run).
multirun() {
    local launch cmd
    read -r -a launch <<< "$(launcher_overrides)"
    cmd=("$PYTHON" posterior_sample.py -m "${launch[@]}" gpu=0 "$@" ${EXTRA[@]+"${EXTRA[@]}"})
    if [ "$DRY_RUN" = 1 ]; then
        printf 'CUDA_VISIBLE_DEVICES=%s' "$GPUS"
        local arg
        for arg in "${cmd[@]}"; do printf ' %s' "$(quote "$arg")"; done
        printf '\n'
    else
        echo "+ CUDA_VISIBLE_DEVICES=$GPUS ${cmd[*]}"
        CUDA_VISIBLE_DEVICES="$GPUS" "${cmd[@]}"
    fi
}

# daps_table DATASET SAVE_DIR OVERRIDES...: the DAPS paper's table for one data set, as two multiruns: the
# seven one-sample tasks, then phase retrieval scored as the best of 4 runs (Hydra cannot give one task of
# a sweep its own num_runs).
daps_table() {
    local dataset="$1" save_dir="$2"
    shift 2
    local common=(data="test-$dataset" "$@" save_dir="$save_dir")
    multirun "${common[@]}" name="$dataset" num_runs=1 \
        task=down_sampling,inpainting,inpainting_rand,gaussian_blur,motion_blur,nonlinear_blur,hdr
    multirun "${common[@]}" name="$dataset-4runs" num_runs=4 task=phase_retrieval
}
