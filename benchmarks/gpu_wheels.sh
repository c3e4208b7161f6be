#!/usr/bin/env bash
# Downloads, on a machine that reaches PyPI, the wheels benchmarks/gpu.sh needs on a GPU machine
# that reaches no package registry, into gpu_wheels/ (ignored by git; carry it along with the
# project). That machine's python3 (CPython 3.12, x86-64 Linux) already has jax with its CUDA
# plugin, flax, optax, orbax-checkpoint, numpy, scipy, opencv, pillow, matplotlib, tensorboard,
# pytest, absl-py, etils, cloudpickle, protobuf, psutil, pyyaml and packaging; these are the
# packages camjax imports on the benchmark paths that it lacks, and the dependencies they bring
# that it lacks (grain imports array_record and portpicker). TensorFlow Datasets is left out:
# camjax imports it only for data.source='tfds'.
#
#   bash benchmarks/gpu_wheels.sh [DIR]        (default gpu_wheels; fails over 64 MiB in all)
#
# The versions are the ones rehearsed offline (benchmarks/gpu-rehearsal-*.txt) and lie inside
# pyproject.toml's ranges; a newer release could bring a dependency this list lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-gpu_wheels}
PY=${PYTHON:-python3}
LIMIT_MIB=64
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
  ml-collections==1.1.0 simplejpeg==1.9.0 tensorboardX==2.6.5 PyWavelets==1.10.0
)

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
# Binary wheels only, for CPython 3.12 on x86-64 glibc Linux; --no-deps: exactly the list above.
"$PY" -m pip download --quiet --dest "$DIR" --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  "${WHEELS[@]}"

ls -l "$DIR"/*.whl
count=$(find "$DIR" -maxdepth 1 -name '*.whl' | wc -l)
bytes=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "$count wheels, $bytes bytes ($((bytes / 1024 / 1024)) MiB) in $DIR"
if ((count != ${#WHEELS[@]})); then
  echo "expected ${#WHEELS[@]} wheels, found $count" >&2
  exit 1
fi
if ((bytes > LIMIT_MIB * 1024 * 1024)); then
  echo "over the ${LIMIT_MIB} MiB a carried folder may hold" >&2
  exit 1
fi
