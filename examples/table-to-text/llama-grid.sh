#!/usr/bin/env bash
# The results grid of the tiny Llama (results/results-llama.md): public pre-training only,
# non-private full and LoRA (rank 8), DP full, DP-BiTFiT and DP-LoRA (ranks 4 and 16) at each
# target ε, automatic clipping, `--seed 1`, release build on the default backend (Flex). Every
# configuration runs as its own process, so the peak resident memory in its metrics.json
# (`peak_rss_mib`, VmHWM) is its own. A configuration whose metrics.json exists is skipped, so
# an interrupted grid resumes. Then, one at a time (so their times are comparable), the step
# times: 8 steps of each method at ε = 3 (expected logical batch 512), non-private LoRA and
# DP-LoRA at rank 8 among them. Writes OUT/results.md.
#
#   examples/table-to-text/llama-grid.sh [OUT]    (default target/examples/table-to-text/llama-grid)
#
# EPSILONS="3" (default "3 1 8") restricts the target ε; extra flags for every run go in FLAGS;
# JOBS=N runs N configurations at a time (default 1: then the seconds of a run are its own).
set -euo pipefail
OUT=${1:-target/examples/table-to-text/llama-grid}
EPSILONS=${EPSILONS:-"3 1 8"}
FLAGS=${FLAGS:-}
JOBS=${JOBS:-1}
running=0
cargo build --release -p burn-dp-table-to-text
BIN=target/release/table-to-text
mkdir -p "$OUT/logs"

one() {
    local name=$1
    shift
    if [ -f "$OUT/runs/$name/metrics.json" ]; then
        echo "$name: done before"
        return
    fi
    echo "$(date -u +%H:%M:%S) $name: $*"
    # shellcheck disable=SC2086
    "$BIN" --model llama-tiny --seed 1 --quiet --out "$OUT/runs/$name" "$@" $FLAGS \
        >"$OUT/logs/$name.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
}

one non-private-lora-r8 --non-private --freeze lora --lora-rank 8
one non-private-full --non-private
for eps in $EPSILONS; do
    one "dp-full-eps$eps" --target-epsilon "$eps"
    one "dp-bitfit-eps$eps" --target-epsilon "$eps" --freeze bias
    one "dp-lora-r4-eps$eps" --target-epsilon "$eps" --freeze lora --lora-rank 4
    one "dp-lora-r16-eps$eps" --target-epsilon "$eps" --freeze lora --lora-rank 16
done
wait

# The step times, one process at a time whatever JOBS is.
JOBS=1
running=0
one timing-non-private-lora-r8 --non-private --freeze lora --lora-rank 8 --epochs 2 --max-eval 1
one timing-dp-lora-r8 --freeze lora --lora-rank 8 --max-steps 8 --max-eval 1
one timing-non-private-full --non-private --epochs 2 --max-eval 1
one timing-dp-full --max-steps 8 --max-eval 1
one timing-dp-bitfit --freeze bias --max-steps 8 --max-eval 1
one timing-dp-lora-r4 --freeze lora --lora-rank 4 --max-steps 8 --max-eval 1
one timing-dp-lora-r16 --freeze lora --lora-rank 16 --max-steps 8 --max-eval 1

table() {
    echo "| method | lr | target ε | ε spent | BLEU | trainable | steps | s / epoch | s / step | peak RSS (MiB) |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    local first
    first=$(ls "$OUT"/runs/*/metrics.json | head -1)
    jq -r '"| public pre-training only | - | ∞ | 0.00 | \(.pretrained_bleu * 1000 | round / 1000) | 0 | 0 | - | - | - |"' "$first"
    # Grouped by target ε, in the grid's order, then the step-time rows.
    local runs=(non-private-full non-private-lora-r8)
    for eps in $EPSILONS; do
        runs+=("dp-full-eps$eps" "dp-bitfit-eps$eps" "dp-lora-r4-eps$eps" "dp-lora-r16-eps$eps")
    done
    runs+=(timing-non-private-full timing-non-private-lora-r8 timing-dp-full timing-dp-bitfit
        timing-dp-lora-r4 timing-dp-lora-r8 timing-dp-lora-r16)
    for run in "${runs[@]}"; do
        f="$OUT/runs/$run/metrics.json"
        [ -f "$f" ] || continue
        jq -r '
          def r(n): (. * pow(10; n) | round) / pow(10; n);
          (if .freeze == "Lora" then "LoRA r=\(.lora.rank)" elif .freeze == "Bias" then "BiTFiT" else "full" end) as $what
          | (if .held_out_mrs == 1 then "step time: " else "" end)
            + (if .private then "DP " + $what else "non-private " + $what end)
          + " | \(.lr) | \(if .private then (.target_epsilon | tostring) else "∞" end)"
          + " | \(if .private then (.epsilon | r(2) | tostring) else "∞" end)"
          + " | \(if .held_out_mrs == 1 then "-" else (.bleu | r(3) | tostring) end)"
          + " | \(.trainable_parameters) | \(.steps)"
          + " | \(.seconds_per_epoch | r(1)) | \(.seconds_per_step | r(2)) | \(.peak_rss_mib | r(0)) |"
          | "| " + .' "$f"
    done
}
table >"$OUT/results.md"
cat "$OUT/results.md"
