#!/usr/bin/env bash
# The CPU side-by-side table in one run: burn-dp's `bench train` on Flex and NdArray and the
# PyTorch anchors (plain full, plain BiTFiT, Opacus ghost, fastDP MixOpt and BiTFiT) at the same
# shapes, on this machine, one after the other; then `bench ratios` prints burn-dp ÷ each anchor.
# Not part of CI (it downloads PyTorch and runs for minutes).
#
#   tools/cpu-anchors.sh                      # GPT-2 small, B 4, T 32 (the issue-24 table)
#   MODELS=gpt2-small,vit-b16,resnet50-gn BATCH=8 SEQ=64 IMAGE=32 tools/cpu-anchors.sh
#
# Environment:
#   VENV        the Python virtual environment (default target/cpu-anchors/venv); created from
#               PyPI with torch (CPU wheels), opacus and transformers when it has no torch yet
#   FASTDP_SRC  a checkout of github.com/awslabs/fast-differential-privacy, put on PYTHONPATH
#               (its dependencies are installed into the venv); without it the fastDP rows are
#               error lines
#   OUT         where the JSON lines go (default target/cpu-anchors/<date>.jsonl)
#   MODELS BATCH SEQ IMAGE STEPS WARMUP THREADS BACKENDS MODES   the shapes and runs
#   SKIP_BUILD=1   use the release `bench` already built
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${MODELS:-gpt2-small}
BATCH=${BATCH:-4}
SEQ=${SEQ:-32}
IMAGE=${IMAGE:-32}
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-$(nproc)}
BACKENDS=${BACKENDS:-flex,ndarray}
MODES=${MODES:-plain-full,plain-bitfit,dp-full,dp-bitfit}
VENV=${VENV:-target/cpu-anchors/venv}
OUT=${OUT:-target/cpu-anchors/$(date -u +%Y-%m-%dT%H%M).jsonl}
mkdir -p "$(dirname "$OUT")"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "cpu-anchors: creating $VENV (torch CPU, opacus, transformers)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  "$VENV/bin/pip" install --quiet opacus transformers
fi
if [ -n "${FASTDP_SRC:-}" ]; then
  # From its source folder, not installed (nothing of it is copied into this repository).
  export PYTHONPATH="$FASTDP_SRC${PYTHONPATH:+:$PYTHONPATH}"
  "$VENV/bin/python" -c 'import fastDP' 2>/dev/null ||
    echo "cpu-anchors: fastDP from $FASTDP_SRC does not import; its rows will be errors" >&2
fi

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -j 1 -p burn-dp-bench --bin bench
fi
BENCH=${CARGO_TARGET_DIR:-target}/release/bench

{
  echo "{\"bench\": \"machine\", \"cpus\": $(nproc), \"threads\": $THREADS, \"load_avg_1m_at_start\": $(cut -d' ' -f1 /proc/loadavg), \"date\": \"$(date -u +%FT%TZ)\"}"
  for backend in ${BACKENDS//,/ }; do
    echo "cpu-anchors: bench train --backend $backend" >&2
    RAYON_NUM_THREADS=$THREADS "$BENCH" train --backend "$backend" --models "$MODELS" \
      --modes "$MODES" --batch "$BATCH" --seq "$SEQ" --image "$IMAGE" --steps "$STEPS" \
      --warmup "$WARMUP" | grep '"bench":"train"'
  done
  "$VENV/bin/python" tools/cpu_anchors.py --models "$MODELS" --batch "$BATCH" --seq "$SEQ" \
    --image "$IMAGE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
} | tee "$OUT"

echo "cpu-anchors: ratios (burn-dp ÷ each anchor)" >&2
"$BENCH" ratios "$OUT"
echo "cpu-anchors: lines written to $OUT" >&2
