#!/usr/bin/env bash
# GPU check of burn-dp's performance goals (issue 10): `bench train --backend cuda` on the anchor
# shapes, in priority order, within a time budget (default 340 s, for a 6-minute slot on one H200).
#
# Build here (a CPU machine; no CUDA toolkit is needed to build), from the repository root:
#
#   export CARGO_TARGET_DIR=/work/main/target     # or leave unset for ./target
#   cargo build --release -p burn-dp-bench --features cuda
#   mkdir -p gpu-check && strip -o gpu-check/bench "${CARGO_TARGET_DIR:-target}/release/bench" \
#     && xz -T2 -6 -f gpu-check/bench                # leaves gpu-check/bench.xz
#   # optional: the kernel's known-answer test and DP steps against NdArray on the GPU
#   exe=$(cargo test --release -p burn-dp --features cuda --lib --no-run 2>&1 \
#     | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p')
#   strip -o gpu-check/cube_tests "$exe" && xz -T2 -6 -f gpu-check/cube_tests
#   # optional (issue 26): NCCL between two GPUs of one MPI job (Open MPI on both machines; the
#   # binary links libmpi)
#   cargo build --release -p burn-dp-distributed --features nccl --bin burn-dp-peer
#   strip -o gpu-check/burn-dp-peer "${CARGO_TARGET_DIR:-target}/release/burn-dp-peer" \
#     && xz -T2 -6 -f gpu-check/burn-dp-peer
#
# Run on the GPU machine (repository root; bash, xz, timeout, nvidia-smi):
#
#   OUT=/some/dir tools/gpu-check.sh gpu-check/bench.xz
#
# What it does:
# - first, if gpu-check/burn-dp-peer.xz is there (feature `nccl`), `mpirun` is installed and the
#   machine has 2 GPUs: `mpirun -np 2 burn-dp-peer nccl-check` (5 all-reduces of 16 M f32 with
#   NCCL on the device, one GPU per rank, each checked against the sum), 120 s at most; output
#   (or why it was skipped) in $OUT/nccl.txt. The exact command, by hand:
#     mpirun -np 2 --allow-run-as-root ./burn-dp-peer nccl-check --count 5
# - first, if gpu-check/cube_tests.xz is there: the CUDA known-answer test of the noise kernel and
#   DP steps on `DpAutodiff<Cuda>` against NdArray (crates/burn-dp/src/cube_tests.rs), 120 s at
#   most; output in $OUT/cube_tests.txt.
# - one process per configuration (`bench train --single MODEL:BATCH:MODE`), each under a time
#   limit (PER seconds, and never past the budget), in this order: GPT-2 small B=32 plain-full,
#   dp-full (with --profile: per-phase times), dp-bitfit; then GPT-2 small B=96, GPT-2 medium B=16,
#   ViT-B/16 B=32, ResNet-50-GN B=32 (plain-full, dp-full, dp-bitfit each). A configuration that
#   would start with less than MIN_LEFT seconds of budget left is skipped and listed as skipped.
# - GPU memory sampled with nvidia-smi every 100 ms during each configuration; the peak above the
#   idle level goes to $OUT/memory.jsonl (`peak_device_mib`; this is what cubecl's pool reserved,
#   an upper bound of what the tensors use).
# - a cubecl.toml in the work folder turns on cubecl's on-disk PTX cache and keeps its autotune
#   cache there (KERNEL_CACHE=0 turns this off), so configurations after the first reuse compiled
#   kernels; AUTOTUNE=minimal|balanced|extensive|full sets the autotune level (cubecl's default:
#   balanced).
# - then two data-parallel peers on the one GPU (issue 15): `bench train --single PEERS_CFG
#   --peers PEERS` runs the configuration as one process, then as PEERS peer processes of one TCP
#   group sharing the GPU, and writes their lines and a `train-peers` line (examples/s of 1 vs
#   PEERS peers, scaling efficiency, all-reduce ms per step, the predicted cost on a GPU) to
#   $OUT/peers.jsonl, within PEERS_LIMIT seconds (default 240: the single process and the peers
#   each compile kernels, the peers from the PTX cache the first one filled) and the budget.
#   PEERS=0 skips it; PEERS_ONLY=1 runs only it (about 3-4 minutes).
# - results under $OUT (default ./gpu-check-out): bench.jsonl (one line per configuration, with
#   step time, examples/s, time to first step and, for the profiled one, phases_ms), runs.jsonl
#   (exit code and wall time per configuration; 124 = hit its time limit), memory.jsonl,
#   ratios.jsonl (the ratios of issue 10 points 4 and 5), gpu.txt, bench.err (stderr).
# Environment: OUT, BUDGET (340), PER (150), MIN_LEFT (45), STEPS (5), WARMUP (2), PEERS (2),
# PEERS_CFG (resnet50-gn:32:dp-full), PEERS_LIMIT (240), PEERS_ONLY (0), CFGS (a
# space-separated list of MODEL:BATCH:MODE[+profile] to run instead of the default order), WORK
# (the folder the binary runs in; default a fresh temporary one), KERNEL_CACHE, AUTOTUNE; for a
# dry run of the script on a CPU: BACKEND=ndarray ARGS="--seq 16 --image 32" and small CFGS.
set -u

BENCH_XZ=${1:-gpu-check/bench.xz}
OUT=${OUT:-$PWD/gpu-check-out}
BUDGET=${BUDGET:-340}
PER=${PER:-150}
MIN_LEFT=${MIN_LEFT:-45}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
KERNEL_CACHE=${KERNEL_CACHE:-1}
AUTOTUNE=${AUTOTUNE:-}
BACKEND=${BACKEND:-cuda}
ARGS=${ARGS:-}
PEERS=${PEERS:-2}
PEERS_CFG=${PEERS_CFG:-resnet50-gn:32:dp-full}
PEERS_LIMIT=${PEERS_LIMIT:-240}
PEERS_ONLY=${PEERS_ONLY:-0}
CFGS=${CFGS:-"gpt2-small:32:plain-full gpt2-small:32:dp-full+profile gpt2-small:32:dp-bitfit
  gpt2-small:96:plain-full gpt2-small:96:dp-full gpt2-small:96:dp-bitfit
  gpt2-medium:16:plain-full gpt2-medium:16:dp-full gpt2-medium:16:dp-bitfit
  vit-b16:32:plain-full vit-b16:32:dp-full vit-b16:32:dp-bitfit
  resnet50-gn:32:plain-full resnet50-gn:32:dp-full resnet50-gn:32:dp-bitfit
  smollm2-135m:16:plain-lora smollm2-135m:16:dp-lora smollm2-135m:16:dp-full
  smollm2-135m:16:dp-bitfit qwen2.5-0.5b:8:plain-lora qwen2.5-0.5b:8:dp-lora"}

start=$(date +%s)
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
[ -f "$BENCH_XZ" ] || { echo "no bench binary at $BENCH_XZ (see the header of $0)" >&2; exit 1; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK" && xz -dc "$BENCH_XZ" > "$WORK/bench" && chmod +x "$WORK/bench" || exit 1
cd "$WORK" || exit 1
if [ "$KERNEL_CACHE" = 1 ]; then
  # cubecl reads cubecl.toml from the working folder: PTX cache on (off by default in cubecl
  # 0.10), autotune results kept beside it.
  printf '[compilation]\ncache = "local"\n\n[autotune]\ncache = "local"\n' > cubecl.toml
fi
extra=()
[ -n "$AUTOTUNE" ] && extra+=(--autotune-level "$AUTOTUNE")

have_smi=0
command -v nvidia-smi > /dev/null && have_smi=1
if [ $have_smi = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
fi
mem_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; }
: > "$OUT/bench.jsonl"; : > "$OUT/runs.jsonl"; : > "$OUT/memory.jsonl"; : > "$OUT/peers.jsonl"
[ "$PEERS_ONLY" = 1 ] && CFGS=""

CUBE_XZ=$(dirname "$BENCH_XZ")/cube_tests.xz
case "$CUBE_XZ" in /*) ;; *) CUBE_XZ=$OLDPWD/$CUBE_XZ ;; esac
if [ -f "$CUBE_XZ" ] && [ "$BACKEND" = cuda ] && [ "$PEERS_ONLY" != 1 ]; then
  xz -dc "$CUBE_XZ" > cube_tests && chmod +x cube_tests
  echo "running the CUDA cube_tests (limit 120 s)" >&2
  timeout 120 ./cube_tests --ignored --test-threads 1 cube_tests > "$OUT/cube_tests.txt" 2>&1
  echo "{\"cfg\":\"cube_tests\",\"rc\":$?}" >> "$OUT/runs.jsonl"
fi

PEER_XZ=$(dirname "$BENCH_XZ")/burn-dp-peer.xz
case "$PEER_XZ" in /*) ;; *) PEER_XZ=$OLDPWD/$PEER_XZ ;; esac
if [ -f "$PEER_XZ" ] && [ "$BACKEND" = cuda ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
  if ! command -v mpirun > /dev/null; then
    echo "skipped: no mpirun (Open MPI) on this machine" > "$OUT/nccl.txt"
  elif (( gpus < 2 )); then
    echo "skipped: $gpus GPU(s); NCCL needs one GPU per rank" > "$OUT/nccl.txt"
  else
    xz -dc "$PEER_XZ" > burn-dp-peer && chmod +x burn-dp-peer
    echo "running the NCCL check over 2 GPUs (limit 120 s)" >&2
    timeout 120 mpirun -np 2 --allow-run-as-root ./burn-dp-peer nccl-check --count 5 \
      > "$OUT/nccl.txt" 2>&1
    echo "{\"cfg\":\"nccl-check\",\"rc\":$?}" >> "$OUT/runs.jsonl"
  fi
fi

for spec in $CFGS; do
  cfg=${spec%+profile}
  flags=()
  [ "$cfg" != "$spec" ] && flags+=(--profile)
  IFS=: read -r model batch mode <<< "$cfg"
  left=$(( BUDGET - ($(date +%s) - start) ))
  if (( left < MIN_LEFT )); then
    echo "{\"cfg\":\"$cfg\",\"skipped\":\"budget\"}" >> "$OUT/runs.jsonl"
    echo "skipped $cfg (budget)" >&2
    continue
  fi
  limit=$(( left < PER ? left : PER ))
  smi=
  if [ $have_smi = 1 ]; then
    idle=$(mem_used)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
      > "$OUT/mem-$model-$batch-$mode.csv" 2>/dev/null &
    smi=$!
  fi
  echo "running $cfg ${flags[*]:-} (limit ${limit} s)" >&2
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # ARGS is a list of flags
  timeout "$limit" ./bench train --single "$cfg" --backend "$BACKEND" --steps "$STEPS" \
    --warmup "$WARMUP" "${flags[@]}" "${extra[@]}" $ARGS >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
  rc=$?
  t1=$(date +%s.%N)
  if [ -n "$smi" ]; then
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    peak=$(sort -n "$OUT/mem-$model-$batch-$mode.csv" | tail -1)
    if [ -n "$peak" ] && [ -n "$idle" ]; then
      echo "{\"model\":\"$model\",\"batch\":$batch,\"mode\":\"$mode\",\"peak_device_mib\":$(( peak - idle )),\"idle_device_mib\":$idle}" >> "$OUT/memory.jsonl"
    fi
  fi
  echo "{\"cfg\":\"$cfg\",\"rc\":$rc,\"limit_s\":$limit,\"wall_s\":$(awk "BEGIN { print $t1 - $t0 }")}" >> "$OUT/runs.jsonl"
done

if (( PEERS > 1 )); then
  left=$(( BUDGET - ($(date +%s) - start) ))
  if [ "$PEERS_ONLY" = 1 ] || (( left >= MIN_LEFT )); then
    limit=$PEERS_LIMIT
    [ "$PEERS_ONLY" != 1 ] && (( left < limit )) && limit=$left
    echo "running $PEERS_CFG as 1 process, then $PEERS peers on one GPU (limit ${limit} s)" >&2
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086 # ARGS is a list of flags
    timeout "$limit" ./bench train --single "$PEERS_CFG" --peers "$PEERS" --backend "$BACKEND" \
      --steps "$STEPS" --warmup "$WARMUP" --peer-timeout-s "$limit" "${extra[@]}" $ARGS \
      >> "$OUT/peers.jsonl" 2>> "$OUT/bench.err"
    rc=$?
    t1=$(date +%s.%N)
    echo "{\"cfg\":\"$PEERS_CFG peers=$PEERS\",\"rc\":$rc,\"limit_s\":$limit,\"wall_s\":$(awk "BEGIN { print $t1 - $t0 }")}" >> "$OUT/runs.jsonl"
  else
    echo "{\"cfg\":\"$PEERS_CFG peers=$PEERS\",\"skipped\":\"budget\"}" >> "$OUT/runs.jsonl"
    echo "skipped $PEERS peers (budget)" >&2
  fi
fi

./bench ratios "$OUT/bench.jsonl" "$OUT/memory.jsonl" > "$OUT/ratios.jsonl" 2>> "$OUT/bench.err"
echo "== configurations (bench.jsonl)"
cat "$OUT/bench.jsonl"
echo "== ratios (issue 10 points 4 and 5; targets beside each)"
cat "$OUT/ratios.jsonl"
echo "== $PEERS peers on one GPU (peers.jsonl; the train-peers line: examples/s of 1 vs $PEERS peers)"
cat "$OUT/peers.jsonl"
echo "== runs"
cat "$OUT/runs.jsonl"
echo "total $(( $(date +%s) - start )) s" | tee -a "$OUT/runs.jsonl"
