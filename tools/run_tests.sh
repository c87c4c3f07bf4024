#!/usr/bin/env bash
# The project's test command (README and CI). Runs from outside the source tree's import path so the
# *installed* mtd / mtd_kernels (with the compiled extension) are the ones tested.
set -euo pipefail
cd "$(dirname "$0")/.."
exec pytest -q -p no:cacheprovider tests "$@"
