#!/usr/bin/env bash
# Full-scale CIFAR-10 GPU results (one run, at most ~9 minutes on an H100).
#
# Prepare on the developer machine (the GPU machine has no network):
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/          # .data/ is git-ignored
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl tensorly==0.10.0                                            # .whl/ is git-ignored
# then run this script there with `.data` and `.whl` carried; results land in $OUT (or benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if ! python3 -c "import tensorly" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The C++/CUDA extension is built against the torch found here (takes ~1-2 min with 16 cores).
if ! python3 -c "import mtd_kernels, sys; sys.exit(0 if mtd_kernels.extension_available() else 1)" 2>/dev/null; then
    MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
        || echo "extension build failed (see $OUT/build.log); the ops fall back to their PyTorch chains"
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
# time budget: 9 min minus what the setup above already used
BUDGET="${TIME_BUDGET:-$((540 - SECONDS))}"
python3 benchmarks/cifar_gpu.py --data .data/cifar10-jpeg.tar.gz --out "$OUT" --time-budget "$BUDGET" \
    --cache-dir /tmp/mtd-cache "$@" 2>&1 | tee "$OUT/cifar_gpu.log"
