#!/usr/bin/env bash
# Fetch the checkpoints and data sets the configs name, into the paths the configs expect.
#
#   bash download.sh [--dry-run] [PART ...]       PART: models | data | lpips | fid | sd | all (default: all)
#
#   models  checkpoints/ffhq256.pt         ADM FFHQ 256 (DPS's ffhq_10m.pt; Google Drive, needs gdown)
#           checkpoints/imagenet256.pt     ADM ImageNet 256 (OpenAI's 256x256_diffusion_uncond.pt)
#           checkpoints/ldm_ffhq256.pt     CompVis LDM FFHQ (model.ckpt of ffhq.zip)
#           checkpoints/ldm_imagenet256.pt CompVis LDM ImageNet, class-conditional (cin model.ckpt)
#           checkpoints/GOPRO_wVAE.pth     bkse non-linear blur network (Google Drive, needs gdown)
#   data    dataset/demo-ffhq, dataset/demo-imagenet   the 10+10 demo images of the DAPS repository
#           dataset/test-ffhq, dataset/test-imagenet   the DAPS 100-image test sets (Google Drive folder, gdown)
#   lpips   vgg16-397923af.pth, lpips_weights.pt       into $TORCH_HOME/hub/checkpoints (common/evaluation/metrics.py)
#           alexnet-owt-7be5be79.pth                   same folder: lpips_alex (lpips_vgg uses the vgg16 file)
#   fid     pt_inception-2015-12-05-6726825d.pth       TF-FID Inception weights (pytorch-fid), same folder
#   sd      Stable Diffusion v1.5 and v2.1 (the files diffusers loads) into the Hugging Face cache (`hf download`)
#
# Idempotent: a file already present with the right checksum is skipped; a file with a wrong checksum is
# fetched again. Every file goes to DEST.part first and is moved into place only after its SHA-256 matched.
# Where no checksum is published (and none could be checked when this script was written) the table says
# "unknown": that file is not verified, and a warning prints its SHA-256 so it can be recorded here.
# --dry-run prints what would be fetched ("fetch DEST <- SOURCE") or is present ("present DEST"); nothing
# is written. Exit status: 0 all fetched or present, 1 some step failed (each failure says why), 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_CHECKPOINTS="${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/checkpoints"
# the DAPS repository's demo images, pinned to one commit so that the checksums below stay valid
DAPS_RAW="https://raw.githubusercontent.com/zhangbingliang2019/DAPS/a9bed9f2ee5888e82c596909485347224d100480/dataset"
# Google Drive folder of the DAPS README holding test-ffhq and test-imagenet
TEST_SETS_FOLDER="1RHNif32W0hvB4M75ppG1ypTChy-W3q3Z"
# Stable Diffusion models of configs/model/stable-diffusion-*.yaml and the files diffusers reads from them
SD_MODELS=("stable-diffusion-v1-5/stable-diffusion-v1-5" "stabilityai/stable-diffusion-2-1")
SD_FILES=(model_index.json scheduler/scheduler_config.json
          tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json tokenizer/vocab.json
          text_encoder/config.json text_encoder/model.safetensors
          unet/config.json unet/diffusion_pytorch_model.safetensors
          vae/config.json vae/diffusion_pytorch_model.safetensors)

# part | kind | destination | SHA-256 (full, or the prefix its publisher states; or unknown) | source | zip member
#   kinds: url (HTTP GET), gdrive (Google Drive file id, via gdown), zip (HTTP zip archive, one member extracted)
FILES=(
    # DPS/DAPS Drive folder 1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh, file ffhq_10m.pt; no checksum published
    "models|gdrive|checkpoints/ffhq256.pt|unknown|1BGwhRWUoguF-D8wlZ65tf227gp3cDUDh"
    # guided-diffusion README; no checksum published
    "models|url|checkpoints/imagenet256.pt|unknown|https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
    # latent-diffusion README (ffhq-ldm-vq-4); no checksum published
    "models|zip|checkpoints/ldm_ffhq256.pt|unknown|https://ommer-lab.com/files/latent-diffusion/ffhq.zip|model.ckpt"
    # latent-diffusion README (cin256-v2); no checksum published
    "models|url|checkpoints/ldm_imagenet256.pt|unknown|https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt"
    # bkse pretrained GOPRO_wVAE.pth as linked by the DAPS README; no checksum published
    "models|gdrive|checkpoints/GOPRO_wVAE.pth|unknown|1vRoDpIsrTRYZKsOMPNbPcMtFDpCT6Foy"
    # torchvision names the file by the first 8 hex digits of its SHA-256
    "lpips|url|$TORCH_CHECKPOINTS/vgg16-397923af.pth|397923af|https://download.pytorch.org/models/vgg16-397923af.pth"
    # the lpips package's AlexNet backbone (lpips_alex; its VGG16 is the file above); torchvision's hash prefix
    "lpips|url|$TORCH_CHECKPOINTS/alexnet-owt-7be5be79.pth|7be5be79|https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    # piq's LPIPS layer weights; no checksum published
    "lpips|url|$TORCH_CHECKPOINTS/lpips_weights.pt|unknown|https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt"
    # pytorch-fid's port of the TF-FID Inception weights; no checksum published
    "fid|url|$TORCH_CHECKPOINTS/pt_inception-2015-12-05-6726825d.pth|unknown|https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    # demo images: SHA-256 of the files at the pinned commit
    "data|url|dataset/demo-ffhq/00000.png|1d2d27259b84ebe7d84a15664307e427e2fe6615609042279f482a895adde5bf|$DAPS_RAW/demo-ffhq/00000.png"
    "data|url|dataset/demo-ffhq/00001.png|fb1639f9848096893a662394f2c4d1d6452482a93cd0586d2586056dee0527af|$DAPS_RAW/demo-ffhq/00001.png"
    "data|url|dataset/demo-ffhq/00002.png|c5a9ebbfd99c978cdace29e5dad397d78d9a238480948a7f327b1fb0da12eaf2|$DAPS_RAW/demo-ffhq/00002.png"
    "data|url|dataset/demo-ffhq/00003.png|7f2d387589505c1129155582713bc781adf84fd88a84825589f45d35a6302fcf|$DAPS_RAW/demo-ffhq/00003.png"
    "data|url|dataset/demo-ffhq/00004.png|f44f63e7ba7f87793c233ce8e72c825e161212a7a6a1149d6e95d147a015a375|$DAPS_RAW/demo-ffhq/00004.png"
    "data|url|dataset/demo-ffhq/00005.png|c2af03eab7a873f2f52e11f8b48760b98ded9828908331a831ff45dcf2c04a5b|$DAPS_RAW/demo-ffhq/00005.png"
    "data|url|dataset/demo-ffhq/00006.png|a20d2da24ecec68fa4f34ca0622adad3d959bfce3593b2ea94e526e53a12ca52|$DAPS_RAW/demo-ffhq/00006.png"
    "data|url|dataset/demo-ffhq/00007.png|f2d19f259a2d8916a386cf2b813e4c274fd4064a6a50cce73eb55563de4e691a|$DAPS_RAW/demo-ffhq/00007.png"
    "data|url|dataset/demo-ffhq/00008.png|7b6af6830c92123eb6c4f2be1098cedd2c5cabbc8c92c704884cc7fcd6528be8|$DAPS_RAW/demo-ffhq/00008.png"
    "data|url|dataset/demo-ffhq/00009.png|93420fda2964b261528e24d8d3467db7d6b5b57c97a06716d58753e414e3542b|$DAPS_RAW/demo-ffhq/00009.png"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049000.JPEG|534c52a69676ba0026f50531bb07d6d4dc170092d559b1b562484e7cf6dbb6f0|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049000.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049001.JPEG|0e04889cb809fc7cb4fca24d3197bf8f1d3e5f34bb8189e6845bc34d24c17d25|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049001.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049002.JPEG|650691d0613b239da9696c729709516341d68a53e7969a66db6d223a03f037fe|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049002.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049003.JPEG|8dd85e4e0c20d22e1a842a9cd9ea4b49260b2c0c31bb48bb89b0d6ca804e2c41|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049003.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049004.JPEG|92066e69c6eac1cfc91ed523afb1761437179b79ae9c6c1768c99205920e30e8|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049004.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049005.JPEG|2e296a6b7f45a2f469ef5c9d220ad30850a0c5b3656621919bfd5e5be43a9403|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049005.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049006.JPEG|4f11184c326414117ec5b1c007f0561b3bc777d2ad20ec6705ac7ceb6b6cb337|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049006.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049007.JPEG|acdac3d22dff4982e7b8618e0c347543e08724ed9ff7f1114376c45b619248d5|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049007.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049008.JPEG|5eaac1eb5915f8d895b11ef32713338582f94558d50ab821295c368bf704440e|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049008.JPEG"
    "data|url|dataset/demo-imagenet/ILSVRC2012_val_00049009.JPEG|ffb2c2ffd596c2e733436d250039f435d1d8b0f32af3e4479588edce65f11bde|$DAPS_RAW/demo-imagenet/ILSVRC2012_val_00049009.JPEG"
)
ALL_PARTS=(models data lpips fid sd)

DRY_RUN=0
FAILED=()

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; FAILED+=("$1"); }

usage() {
    say "usage: bash download.sh [--dry-run] [models|data|lpips|fid|sd|all ...]   (default: all)" >&2
    exit 2
}

sha256() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# checksum_ok FILE EXPECTED [NAME]: the file's SHA-256 starts with EXPECTED ("unknown": warn, accept).
checksum_ok() {
    local actual name="${3:-$1}"
    actual="$(sha256 "$1")"
    if [ "$2" = unknown ]; then
        warn "no published SHA-256 for $name, not verified (its SHA-256: $actual)"
        return 0
    fi
    [[ "$actual" == "$2"* ]] && return 0
    printf 'error: %s: SHA-256 mismatch (expected %s..., got %s)\n' "$name" "$2" "$actual" >&2
    return 1
}

http_get() {  # URL OUT
    if command -v curl >/dev/null; then
        curl -fL --connect-timeout 30 --retry 3 --retry-delay 2 --progress-bar -o "$2" "$1"
    elif command -v wget >/dev/null; then
        wget -q --show-progress -O "$2" "$1"
    else
        printf 'error: neither curl nor wget is installed\n' >&2
        return 1
    fi
}

# Google Drive files need gdown (in requirements.txt): the command, or the module of the python on PATH
GDOWN=(gdown)
command -v gdown >/dev/null || GDOWN=(python -m gdown)
GDOWN_NOTED=0

have_gdown() { "${GDOWN[@]}" --version >/dev/null 2>&1; }

# gdown_note PART: once per run, where a Google Drive step is pending and gdown is missing, say how to get it
gdown_note() {
    have_gdown || [ "$GDOWN_NOTED" = 1 ] || {
        GDOWN_NOTED=1
        say "[$1] note: Google Drive files need gdown, which is not installed: pip install gdown (or pip install -r requirements.txt)"
    }
}

gdrive_get() {  # FILE_ID OUT
    if ! have_gdown; then
        printf 'error: gdown is needed for Google Drive files: pip install gdown (or pip install -r requirements.txt)\n' >&2
        return 1
    fi
    "${GDOWN[@]}" --fuzzy "https://drive.google.com/uc?id=$1" -O "$2"
}

zip_get() {  # URL MEMBER OUT: one member of a zip archive
    local rc=0
    http_get "$1" "$3.zip" && unzip -p "$3.zip" "$2" > "$3" || rc=1
    rm -f "$3.zip"
    return "$rc"
}

# fetch_file PART KIND DEST SHA SOURCE [MEMBER]
fetch_file() {
    local part="$1" kind="$2" dest="$3" sha="$4" source="$5" member="${6:-}"
    if [ -f "$dest" ]; then
        if [ "$DRY_RUN" = 1 ]; then say "[$part] present $dest"; return 0; fi
        if [ "$sha" = unknown ]; then say "[$part] present $dest (no checksum recorded)"; return 0; fi
        if checksum_ok "$dest" "$sha" 2>/dev/null; then say "[$part] present $dest (checksum ok)"; return 0; fi
        warn "$dest has a wrong checksum; fetching it again"
    fi
    local shown="$source"
    [ "$kind" = gdrive ] && shown="https://drive.google.com/uc?id=$source (gdown)"
    say "[$part] fetch $dest <- $shown${member:+ ($member)}"
    [ "$kind" = gdrive ] && gdown_note "$part"
    [ "$DRY_RUN" = 1 ] && return 0
    mkdir -p "$(dirname "$dest")"
    local tmp="$dest.part"
    rm -f "$tmp"
    case "$kind" in
        url) http_get "$source" "$tmp" ;;
        gdrive) gdrive_get "$source" "$tmp" ;;
        zip) zip_get "$source" "$member" "$tmp" ;;
    esac || { rm -f "$tmp"; fail "$dest: download from $source failed (network? moved?); fetch it by hand into $dest"; return 0; }
    if checksum_ok "$tmp" "$sha" "$dest"; then
        mv "$tmp" "$dest"
    else
        rm -f "$tmp"
        fail "$dest: the downloaded file does not match its checksum and was removed; the source may have changed"
    fi
}

count_images() {
    echo $(( $(find "$1" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) 2>/dev/null | wc -l) ))
}

# the DAPS test sets: one Drive folder; zip archives in it are unpacked into dataset/
fetch_test_sets() {
    local missing=() name
    for name in test-ffhq test-imagenet; do
        if [ "$(count_images "dataset/$name")" -ge 100 ]; then
            say "[data] present dataset/$name"
        else
            missing+=("$name")
            say "[data] fetch dataset/$name <- Google Drive folder $TEST_SETS_FOLDER (gdown)"
            gdown_note data
        fi
    done
    if [ "$DRY_RUN" = 1 ] || [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    local tmp="dataset/.download-test-sets"
    mkdir -p "$tmp"
    if ! "${GDOWN[@]}" --folder "https://drive.google.com/drive/folders/$TEST_SETS_FOLDER" -O "$tmp"; then
        rmdir "$tmp" 2>/dev/null || true
        fail "dataset/test-*: the Google Drive folder $TEST_SETS_FOLDER could not be fetched (pip install gdown; or download it by hand, unzip into dataset/)"
        return 0
    fi
    find "$tmp" -name '*.zip' -exec unzip -q -o {} -d dataset \;
    for name in "${missing[@]}"; do
        local found
        found="$(find "$tmp" -type d -name "$name" | head -n 1)"
        [ -n "$found" ] && [ ! -d "dataset/$name" ] && mv "$found" "dataset/$name"
        if [ "$(count_images "dataset/$name")" -lt 100 ]; then
            fail "dataset/$name: not found with 100 images in the downloaded folder (see $tmp)"
        fi
    done
    [ "${#FAILED[@]}" -gt 0 ] || rm -rf "$tmp"
}

fetch_sd() {
    local cli=(hf download) model
    command -v hf >/dev/null || cli=(huggingface-cli download)
    local cache="${HF_HUB_CACHE:-${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}/hub}"
    for model in "${SD_MODELS[@]}"; do
        if [ "$DRY_RUN" = 1 ] && [ -d "$cache/models--${model//\//--}/snapshots" ]; then
            say "[sd] present hf:$model (Hugging Face cache; \`hf download\` completes missing files)"
            continue
        fi
        say "[sd] fetch hf:$model <- https://huggingface.co/$model (${#SD_FILES[@]} files, Hugging Face cache)"
        [ "$DRY_RUN" = 1 ] && continue
        "${cli[@]}" "$model" "${SD_FILES[@]}" >/dev/null \
            || fail "hf:$model: \`${cli[*]} $model\` failed (network? license accepted? HF_TOKEN set?)"
    done
}

main() {
    local parts=() arg
    for arg in "$@"; do
        case "$arg" in
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage ;;
            all) parts+=("${ALL_PARTS[@]}") ;;
            models|data|lpips|fid|sd) parts+=("$arg") ;;
            *) say "error: unknown part '$arg'; valid: models, data, lpips, fid, sd, all" >&2; exit 2 ;;
        esac
    done
    [ "${#parts[@]}" -gt 0 ] || parts=("${ALL_PARTS[@]}")
    local part entry kind dest sha source member
    for part in "${ALL_PARTS[@]}"; do
        [[ " ${parts[*]} " == *" $part "* ]] || continue
        for entry in "${FILES[@]}"; do
            IFS='|' read -r p kind dest sha source member <<< "$entry"
            [ "$p" = "$part" ] && fetch_file "$part" "$kind" "$dest" "$sha" "$source" "$member"
        done
        [ "$part" = data ] && fetch_test_sets
        [ "$part" = sd ] && fetch_sd
    done
    if [ "${#FAILED[@]}" -gt 0 ]; then
        say "error: ${#FAILED[@]} step(s) failed:" >&2
        printf '  %s\n' "${FAILED[@]}" >&2
        exit 1
    fi
    if [ "$DRY_RUN" = 1 ]; then say "dry run: nothing was written"; else say "done"; fi
}

main "$@"
