#!/usr/bin/env bash
# Runs the benchmark set on one NVIDIA GPU in under 8 minutes; JSON lines go to $1.
#
#   once:  python3.11 -m venv .venv && .venv/bin/pip install -e '.[cuda12,dev]'
#   run:   bash benchmarks/gpu.sh [OUT.jsonl]          (default benchmarks/gpu_results.jsonl)
#   check: CAMJAX_BENCH_SMOKE=1 bash benchmarks/gpu.sh /tmp/smoke.jsonl   (CPU, tiny sizes)
#
# The set: train-step throughput of ResNet50, DenseNet201 and MobileNet at 512x512 in bfloat16
# (batch 64 and 128, sharded; pmap at 128 for comparison; MobileNet's depthwise lowerings), D4 TTA inference (8 views), then,
# while time is left, the input pipeline on this host's cores and ResNet50 fed by it.
# Compilations dominate the time, so every command shares the persistent XLA cache
# (.cache/jax): a second run takes a fraction of the first. Each command gets what is left of
# the time budget (CAMJAX_BENCH_BUDGET_S, default 450 s); a command that fails or runs out of
# time is logged to OUT.log and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-benchmarks/gpu_results.jsonl}
PY=${PYTHON:-.venv/bin/python}
BUDGET=${CAMJAX_BENCH_BUDGET_S:-450}
CORES=$(nproc)
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
: >"$OUT.log"

if [[ -n "${CAMJAX_BENCH_SMOKE:-}" && "${CAMJAX_BENCH_SMOKE}" != 0 ]]; then
  # Same commands, sizes a 2-core CPU runs in a minute; big backbones become small ones.
  PATCH=32 BATCHES=4,8 BIG_BATCH=8 TTA_BATCH=4 STEPS=2 WARMUP=1 WORKERS=0,1 E2E_WORKERS=1
  RESNET=(--model mobilenet --model_kwargs '{"alpha": 0.25}')
  DENSENET=(--model camnet --config configs/camnet.py:quick)
  MOBILENET=(--model mobilenet --model_kwargs '{"alpha": 0.25}')
  MOBILENET_SHIFTS=(--model mobilenet --model_kwargs '{"alpha": 0.25, "depthwise_impl": "shifts"}')
else
  PATCH=512 BATCHES=64,128 BIG_BATCH=128 TTA_BATCH=32 STEPS=20 WARMUP=3 WORKERS=$((CORES / 2)),$CORES E2E_WORKERS=$CORES
  RESNET=(--model resnet50)
  DENSENET=(--model densenet201)
  MOBILENET=(--model mobilenet)
  MOBILENET_SHIFTS=(--model mobilenet --model_kwargs '{"depthwise_impl": "shifts"}')
fi
TRAIN=(--patch "$PATCH" --dtype bfloat16 --steps "$STEPS" --warmup "$WARMUP" --compilation_cache .cache/jax)
START=$SECONDS

run() {
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    echo "skipped (time budget spent): $*" | tee -a "$OUT.log" >&2
    return
  fi
  echo "+ $* (up to ${left}s)" | tee -a "$OUT.log" >&2
  timeout --signal=INT --kill-after=10 "$left" "$PY" "$@" >>"$OUT" 2>>"$OUT.log" \
    || echo "FAILED (exit $?): $*" | tee -a "$OUT.log" >&2
}

"$PY" -c 'import jax; print(jax.devices())' >>"$OUT.log" 2>&1
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
run benchmarks/train_throughput.py "${MOBILENET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
# XLA's depthwise convolution ('auto' on a GPU) against camjax's shifted-slices lowering (the CPU default)
run benchmarks/train_throughput.py "${MOBILENET_SHIFTS[@]}" "${TRAIN[@]}" --batch "$BIG_BATCH" --parallel sharded
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$BIG_BATCH" --parallel pmap
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$TTA_BATCH" --mode tta
run benchmarks/train_throughput.py "${DENSENET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
run benchmarks/input_pipeline.py --patch "$PATCH" --workers "$WORKERS" --manip_prob 0.5 --skip split,baseline
run benchmarks/end_to_end.py "${RESNET[@]}" --patch "$PATCH" --batch "$BIG_BATCH" --dtype bfloat16 \
  --steps "$STEPS" --warmup "$WARMUP" --workers "$E2E_WORKERS" --compilation_cache .cache/jax

echo "$(wc -l <"$OUT") measurements in $OUT ($((SECONDS - START)) s); log: $OUT.log" >&2
