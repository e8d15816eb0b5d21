#!/usr/bin/env bash
# One-shot GPU check (issue 17): what a single short lease of an accelerator machine can show.
#
# From a fresh checkout with the CIFAR-10 archive copied into data/ (ignored by git), on a machine
# with PyTorch, pandas, pyarrow, matplotlib and filelock but no Ray and no internet, it
#   1. installs this checkout without dependencies (falls back to running from the source tree),
#   2. measures training throughput on the device (`bench perf`: PreAct-ResNet-18, fp32 and bf16
#      limits, the loop; then the torch.compile'd model),
#   3. runs the paper preset's BadNets CIFAR-10 cell for none, abl and ibau, packed on the one GPU
#      (three trials at once, --gpus-per-trial 0.34) through the Ray-free local executor,
#   4. prints the reproduction table of those cells against BackdoorBench's published numbers.
# Expected on one H200: about 1 minute of set-up and throughput, then the three trials together
# in about 5-8 minutes (PreAct-ResNet-18 at bf16: 100 epochs for none, 20 + 60 for ABL's
# isolation and fine-tuning, I-BAU after none's model); well under the 10-minute call limit.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # on the GPU machine
#   benchmarks/gpu_check.sh --smoke [OUT_DIR]  # the same steps on a CPU at smoke scale (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=paper
if [ "${1:-}" = "--smoke" ]; then SCALE=smoke; shift; fi
OUT=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export BENCH_OFFLINE=1 PYTHONUNBUFFERED=1
# data/ (the archive copied in) or the harness's default search path (../shared/data, ...)
if [ -z "${BENCH_DATA_DIR:-}" ] && [ -d data ]; then export BENCH_DATA_DIR=$PWD/data; fi
export BENCH_CACHE_DIR=${BENCH_CACHE_DIR:-$OUT/cache}

here=$("$PY" -c 'import bench, pathlib; print(pathlib.Path(bench.__file__).resolve().parent.parent)' \
  2>/dev/null || true)
if [ "$here" != "$PWD" ]; then  # not installed from this checkout yet
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    echo "pip install failed (see $OUT/install.log); running from the source tree"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # either way, this checkout's code
fi
bench() { "$PY" -m bench.cli "$@"; }

# Smoke scale measures at batch 8: on a CPU without bf16 units, bf16 is emulated and batch 128
# took 4 of the test's 4.4 minutes (2 images/s).
if [ "$SCALE" = paper ]; then
  DEVICE=cuda GPUS=0.34 PERF_STEPS=20 PERF_BATCH=128 PRESET=paper
else
  DEVICE=cpu GPUS=0 PERF_STEPS=1 PERF_BATCH=8 PRESET=smoke
fi

echo "== throughput ($DEVICE)"
bench perf --device "$DEVICE" --models preact_resnet18 --batch-size "$PERF_BATCH" \
  --steps "$PERF_STEPS" --repeats 2 | tee "$OUT/perf.txt"
if [ "$SCALE" = paper ]; then
  bench perf --device "$DEVICE" --models preact_resnet18 --batch-size "$PERF_BATCH" --steps "$PERF_STEPS" \
    --repeats 2 --compile | tee "$OUT/perf-compiled.txt"
fi

echo "== paper-preset BadNets cells on one device ($PRESET)"
start=$(date +%s)
status=0
bench run --preset "$PRESET" --executor local --datasets cifar10 --attacks badnets \
  --defenses none,abl,ibau --gpus-per-trial "$GPUS" --results-dir "$OUT/results" || status=$?
echo "grid wall time: $(( $(date +%s) - start )) s (exit $status)" | tee "$OUT/wall.txt"

echo "== reproduction"
bench reproduce --results-dir "$OUT/results" | tee "$OUT/reproduce.txt"
exit "$status"
