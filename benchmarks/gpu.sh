#!/usr/bin/env bash
# Runs the benchmark set on one NVIDIA GPU in under 8 minutes; JSON lines go to $1.
#
#   here, online, once: bash benchmarks/gpu_wheels.sh   (the wheels the GPU's python3 lacks -> gpu_wheels/)
#   there, offline:     PYTHON=python3 bash benchmarks/gpu.sh [OUT.jsonl]   (default benchmarks/gpu_results.jsonl)
#   check:              CAMJAX_BENCH_SMOKE=1 bash benchmarks/gpu.sh /tmp/smoke.jsonl   (CPU, tiny sizes)
#
# Nothing comes from a package registry. $PYTHON (default: the checkout's .venv/bin/python where
# there is one, as for the CPU check; else python3) brings jax with its CUDA plugin, flax, optax,
# orbax-checkpoint, numpy and the rest; camjax runs from this folder (PYTHONPATH), and each
# package that interpreter lacks (grain, ml-collections, simplejpeg, tensorboardX, PyWavelets and
# what they import) is installed from the carried gpu_wheels/ (CAMJAX_GPU_WHEELS) into
# .cache/gpu-site, which goes on PYTHONPATH as well. The card, the driver and the jax, jaxlib and
# CUDA versions go to OUT.log before the first measurement.
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
# $PYTHON; else a development checkout's .venv (the CPU smoke check); else python3.
DEFAULT_PY=python3
[[ -x .venv/bin/python ]] && DEFAULT_PY=.venv/bin/python
PY=${PYTHON:-$DEFAULT_PY}
WHEELS=${CAMJAX_GPU_WHEELS:-gpu_wheels}
SITE=.cache/gpu-site
export PYTHONPATH="$PWD:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${CAMJAX_BENCH_BUDGET_S:-450}
CORES=$(nproc)
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
: >"$OUT.log"

if [[ -n "${CAMJAX_BENCH_SMOKE:-}" && "${CAMJAX_BENCH_SMOKE}" != 0 ]]; then
  # Same commands, sizes a 2-core CPU runs in a minute; big backbones become small ones.
  PATCH=32 BATCHES=4,8 BIG_BATCH=8 TTA_BATCH=4 STEPS=2 WARMUP=1 WORKERS=0,1 PROCESSES=1,2 E2E_WORKERS=1
  RESNET=(--model mobilenet --model_kwargs '{"alpha": 0.25}')
  DENSENET=(--model camnet --config configs/camnet.py:quick)
  MOBILENET=(--model mobilenet --model_kwargs '{"alpha": 0.25}')
  MOBILENET_SHIFTS=(--model mobilenet --model_kwargs '{"alpha": 0.25, "depthwise_impl": "shifts"}')
else
  PATCH=512 BATCHES=64,128 BIG_BATCH=128 TTA_BATCH=32 STEPS=20 WARMUP=3 WORKERS=$((CORES / 2)),$CORES PROCESSES=1,$CORES E2E_WORKERS=$CORES
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

# What the benchmarks import. Whatever $PY lacks comes from $WHEELS, never from a registry:
# each wheel whose distribution $PY does not have, --no-index --no-deps, into $SITE.
IMPORTS="import grain, ml_collections, simplejpeg, tensorboardX, pywt, camjax.data.train_loader, camjax.writers"
if ! "$PY" -c "$IMPORTS" 2>/dev/null; then
  echo "+ installing what $PY lacks from $WHEELS into $SITE" | tee -a "$OUT.log" >&2
  "$PY" - "$WHEELS" "$SITE" >>"$OUT.log" 2>&1 <<'EOF'
import importlib.metadata, importlib.util, pathlib, subprocess, sys, zipfile

wheels, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
missing = []
for wheel in sorted(wheels.glob("*.whl")):
    try:
        importlib.metadata.distribution(wheel.name.split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        missing.append(wheel)
print("missing:", " ".join(w.name for w in missing) or "none")
site.mkdir(parents=True, exist_ok=True)
if missing and importlib.util.find_spec("pip"):
    # --isolated: this host's pip configuration (an index, find-links) plays no part
    cmd = ["pip", "install", "--isolated", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", *cmd, "--target", str(site), *map(str, missing)], check=True)
else:  # no pip in this interpreter: a wheel is a zip of what goes into site-packages
    for wheel in missing:
        zipfile.ZipFile(wheel).extractall(site)
EOF
fi
if ! "$PY" -c "$IMPORTS" >>"$OUT.log" 2>&1; then
  echo "FAILED: $PY cannot import what the benchmarks need (run benchmarks/gpu_wheels.sh where PyPI is reachable and carry $WHEELS/); see $OUT.log" | tee -a "$OUT.log" >&2
  exit 1
fi

# Where the numbers come from: card and driver, then Python, jax, jaxlib, the CUDA plugin, devices.
{
  echo "PYTHON=$PY PYTHONPATH=$PYTHONPATH"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  else
    echo "no nvidia-smi"
  fi
  "$PY" - <<'EOF'
import importlib.metadata, sys

import jax

print("python", sys.version.split()[0], sys.executable)
for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt",
             "flax", "optax", "orbax-checkpoint", "grain", "numpy"):
    try:
        print(dist, importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        pass
try:  # the CUDA runtime and cuDNN the plugin loaded (a private module; None or absent on a CPU build)
    from jax._src.lib import cuda_versions

    print("cuda runtime", cuda_versions.cuda_runtime_get_version(), "cudnn", cuda_versions.cudnn_get_version())
except Exception as e:
    print("cuda versions: none (" + type(e).__name__ + ")")
print("backend", jax.default_backend(), jax.devices())
EOF
} >>"$OUT.log" 2>&1
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
run benchmarks/train_throughput.py "${MOBILENET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
# XLA's depthwise convolution ('auto' on a GPU) against camjax's shifted-slices lowering (the CPU default)
run benchmarks/train_throughput.py "${MOBILENET_SHIFTS[@]}" "${TRAIN[@]}" --batch "$BIG_BATCH" --parallel sharded
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$BIG_BATCH" --parallel pmap
run benchmarks/train_throughput.py "${RESNET[@]}" "${TRAIN[@]}" --batch "$TTA_BATCH" --mode tta
run benchmarks/train_throughput.py "${DENSENET[@]}" "${TRAIN[@]}" --batch "$BATCHES" --parallel sharded
# Grain workers, then as many independent in-process pipelines (the host's own ceiling)
run benchmarks/input_pipeline.py --patch "$PATCH" --workers "$WORKERS" --processes "$PROCESSES" --manip_prob 0.5 --skip split,baseline
run benchmarks/end_to_end.py "${RESNET[@]}" --patch "$PATCH" --batch "$BIG_BATCH" --dtype bfloat16 \
  --steps "$STEPS" --warmup "$WARMUP" --workers "$E2E_WORKERS" --compilation_cache .cache/jax

echo "$(wc -l <"$OUT") measurements in $OUT ($((SECONDS - START)) s); log: $OUT.log" >&2
