#!/usr/bin/env bash
# Throughput table of every registered sampler (python -m commands.benchmark; see its docstring).
#   commands/bench.sh [extra benchmark options]
# On a GPU: full-size ffhq256ddpm / ffhq256ldm architectures (random weights, no checkpoints needed) at batch
# sizes 1, 10, 100 and the variants fp32, bf16+channels_last, bf16+channels_last+compile; without one: the tiny
# CPU models (--quick). Writes results/benchmark/<device>-<commit>.csv and .md (the README's performance table).
# Examples: commands/bench.sh --variants bf16+channels_last --batch-sizes 10
#           commands/bench.sh --samplers edm_daps,dps --compile-mode reduce-overhead
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    exec "$PYTHON" -m commands.benchmark "$@"
fi
exec "$PYTHON" -m commands.benchmark --quick "$@"
