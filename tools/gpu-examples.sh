#!/usr/bin/env bash
# GPU timing of the two examples (issue 16, point 4): one epoch of private fine-tuning at the
# standard sizes (ResNet-18 on the digits at 64×64, GPT-2 small on the generated E2E corpus), full
# and DP-BiTFiT, on CUDA, within a time budget (default 420 s). Each run is one process and pays
# cubecl's kernel compilation (1–2 minutes on an H200, less for later runs: the kernel cache is
# on) before its first step, and the examples' `seconds` count from the start of the run: they
# are an upper bound of one epoch's time, the figure the examples' READMEs ask for.
#
# Build here (a CPU machine; no CUDA toolkit is needed to build), from the repository root:
#
#   export CARGO_TARGET_DIR=/work/main/target     # or leave unset for ./target
#   cargo build --release -p burn-dp-image-classification --features cuda
#   cargo build --release -p burn-dp-table-to-text --features cuda
#   mkdir -p gpu-check
#   for b in image-classification table-to-text; do
#     strip -o gpu-check/$b "${CARGO_TARGET_DIR:-target}/release/$b" && xz -T2 -6 -f gpu-check/$b
#   done
#
# Run on the GPU machine (from any folder; the examples' data are compiled in):
#
#   OUT=/some/dir tools/gpu-examples.sh gpu-check
#
# Results: $OUT/examples.jsonl, one line per run: the run's name, its exit code, wall seconds and
# the example's own final JSON line (ε, δ, accuracy or BLEU, steps, seconds). Environment: OUT,
# BUDGET (420), PER (200), MIN_LEFT (60), RUNS (a space-separated subset of the run names below),
# BACKEND (cuda), EXTRA (flags appended to every run; for a dry run on a CPU:
# BACKEND=ndarray EXTRA="--max-steps 1" RUNS=resnet18-bitfit).
set -u

DIR=${1:-gpu-check}
OUT=${OUT:-$PWD/gpu-examples-out}
BUDGET=${BUDGET:-420}
PER=${PER:-200}
MIN_LEFT=${MIN_LEFT:-60}
BACKEND=${BACKEND:-cuda}
EXTRA=${EXTRA:-}
RUNS=${RUNS:-"resnet18-full gpt2-small-full gpt2-small-bitfit resnet18-bitfit"}

start=$(date +%s)
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
for b in image-classification table-to-text; do
  [ -f "$DIR/$b.xz" ] || { echo "no $DIR/$b.xz (see the header of $0)" >&2; exit 1; }
  xz -dc "$DIR/$b.xz" > "$WORK/$b" && chmod +x "$WORK/$b" || exit 1
done
cd "$WORK" || exit 1   # the data are compiled into the binaries; cubecl.toml is read from here
printf '[compilation]\ncache = "local"\n\n[autotune]\ncache = "local"\n' > cubecl.toml
: > "$OUT/examples.jsonl"

# One epoch each (--epochs 1), no public pre-training (timing only: the weights are random),
# ε = 3 at δ = 1e-5, automatic clipping, a fixed seed.
common=(--backend "$BACKEND" --epochs 1 --pretrain-epochs 0 --target-epsilon 3 --seed 1 --quiet)
args_for() {
  case "$1" in
    resnet18-full) echo "image-classification --model resnet18 --image-size 64 --batch-size 256 --physical-batch-size 64 --max-eval 256" ;;
    resnet18-bitfit) echo "image-classification --model resnet18 --image-size 64 --batch-size 256 --physical-batch-size 64 --max-eval 256 --freeze bias" ;;
    gpt2-small-full) echo "table-to-text --model small --batch-size 512 --physical-batch-size 32 --max-len 64 --test-mrs 20" ;;
    gpt2-small-bitfit) echo "table-to-text --model small --batch-size 512 --physical-batch-size 32 --max-len 64 --test-mrs 20 --freeze bias" ;;
    *) return 1 ;;
  esac
}

for run in $RUNS; do
  spec=$(args_for "$run") || { echo "unknown run $run" >&2; continue; }
  left=$(( BUDGET - ($(date +%s) - start) ))
  if (( left < MIN_LEFT )); then
    echo "{\"run\":\"$run\",\"skipped\":\"budget\"}" >> "$OUT/examples.jsonl"
    continue
  fi
  limit=$(( left < PER ? left : PER ))
  read -r bin rest <<< "$spec"
  echo "running $run (limit ${limit} s)" >&2
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # rest and EXTRA are lists of flags
  timeout "$limit" "$WORK/$bin" $rest "${common[@]}" $EXTRA --out "$OUT/$run" \
    > "$OUT/$run.out" 2> "$OUT/$run.err"
  rc=$?
  t1=$(date +%s.%N)
  last=$(grep '^{' "$OUT/$run.out" | tail -1)
  echo "{\"run\":\"$run\",\"rc\":$rc,\"wall_s\":$(awk "BEGIN { print $t1 - $t0 }"),\"result\":${last:-null}}" >> "$OUT/examples.jsonl"
done
cat "$OUT/examples.jsonl"
echo "total $(( $(date +%s) - start )) s"
