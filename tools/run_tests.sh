#!/usr/bin/env bash
# The project's test command (README and CI). Runs from outside the source tree's import path so the
# *installed* mtd / mtd_kernels (with the compiled extension) are the ones tested.
set -euo pipefail
cd "$(dirname "$0")/.."
# numpy's OpenBLAS threads fight torch's OpenMP threads on a 2-core machine (measured: a 64x576 SVD
# 7 ms with one thread, 1.3 s with two under load); the library code is unaffected.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
exec pytest -q -p no:cacheprovider tests "$@"
