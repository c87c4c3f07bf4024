#!/usr/bin/env bash
# One-shot GPU check for mtd on the lent device machine (H100/H200; torch 2.11 + CUDA 13, triton 3.6,
# nvcc 13; no tensorly and no internet there). In about 6-7 minutes it
#   1. prints nvidia-smi and the versions,
#   2. installs the carried wheels (.whl/*.whl, e.g. tensorly) into /tmp/site and builds + installs
#      mtd with the hand-written CUDA kernels (MTD_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0),
#   3. runs tests/test_gpu_ops.py (-x; the three per-layer ops on both backends, the rank-space bridge's
#      Triton twin and a model regrouped into rank space), then the quick CPU tests against the installed build,
#   4. runs benchmarks/gpu_layers.py with the time that is left (per layer; end to end, where the
#      e2e_cpu.py model runs one fused op per layer beside the same model in rank space),
# and writes everything under $OUT (7 files, no sub-folders; every log is tee'd as it goes, so a
# timeout still brings back what ran):
#   00_env.log 01_install.log 02_gpu_tests.log 03_quick_tests.log 04_bench.log gpu_layers.csv gpu_layers.json
#
# How to call it through the device tool (from the repo root here; .whl/ holds the wheels: once,
#   `python3 -m pip download --no-deps --only-binary=:all: -d .whl tensorly==0.10.0`):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Knobs (environment): MTD_CHECK_BUDGET total seconds to aim for (default 390),
#   MTD_CHECK_QUICK_TESTS test files for step 3 (default "tests/test_ops_cpu.py tests/test_packaging.py"),
#   MTD_BENCH_ARGS extra arguments for gpu_layers.py (e.g. "--quick" or "--no-compile").
# Exit status: 0 when every step passed, else the first failing step's status.
set -u -o pipefail
if [ -z "${OUT:-}" ]; then
  echo "gpu_check.sh: \$OUT is not set; it must name the folder whose files come back (the device tool sets it)" >&2
  exit 2
fi
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create \$OUT=$OUT" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET=${MTD_CHECK_BUDGET:-390}
PY=python3
STATUS=0
elapsed() { echo $(( $(date +%s) - START )); }
step() {  # step NAME LOGFILE TIMEOUT CMD... : run, tee, remember the first failure
  local name=$1 log=$2 limit=$3; shift 3
  echo "=== [$(elapsed)s] $name (limit ${limit}s)" | tee -a "$OUT/$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  echo "=== [$(elapsed)s] $name: exit $rc" | tee -a "$OUT/$log"
  if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
  return "$rc"
}

# ---- 1. machine and versions
{
  date -u
  nvidia-smi || echo "nvidia-smi failed"
  nvcc --version | tail -2 || echo "nvcc missing"
  $PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm_%d%d" % (p.major, p.minor), p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB")
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    print("triton missing:", exc)
EOF
} 2>&1 | tee "$OUT/00_env.log"

# ---- 2. install: carried wheels, then mtd with the CUDA kernels
install() {
  set -o pipefail
  if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  else
    echo "no .whl/*.whl carried (tensorly-dependent tests will skip or fail)"
  fi
  MTD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} \
    $PY -m pip install --no-build-isolation --no-deps --no-index -v . 2>&1 | grep -Ev '^\s*$|^  (copying|creating|adding)' || return 1
  # Run from / so the source tree cannot shadow the installed package (it has no compiled _C there).
  (cd / && $PY -c "import mtd_kernels as m, torch
print('mtd_kernels from', m.__file__)
print('extension', m.extension_available(), 'cuda kernels', m.cuda_extension_available(), 'error', m.extension_error())
assert m.cuda_extension_available(), 'the CUDA kernels were not built in'")
}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
step "install" 01_install.log 200 bash -c "$(declare -f install); PY=$PY; install" || {
  echo "install failed: stopping (see $OUT/01_install.log)"; exit "$STATUS"; }

# ---- 3. tests against the installed build (from /, importlib mode: no source-tree shadowing)
PYTEST=($PY -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir="$REPO")
step "tests/test_gpu_ops.py" 02_gpu_tests.log 210 \
  bash -c "cd / && ${PYTEST[*]} -x '$REPO/tests/test_gpu_ops.py'"
QUICK=${MTD_CHECK_QUICK_TESTS:-tests/test_ops_cpu.py tests/test_packaging.py}
QUICK_ABS=$(for f in $QUICK; do printf "'%s/%s' " "$REPO" "$f"; done)
step "quick tests ($QUICK)" 03_quick_tests.log 90 bash -c "cd / && ${PYTEST[*]} $QUICK_ABS"

# ---- 4. benchmark with what is left of the budget (at least 60 s)
LEFT=$(( BUDGET - $(elapsed) - 25 ))
[ "$LEFT" -lt 60 ] && LEFT=60
# shellcheck disable=SC2086
step "benchmarks/gpu_layers.py (budget ${LEFT}s)" 04_bench.log $(( LEFT + 90 )) \
  $PY benchmarks/gpu_layers.py --out "$OUT" --time-budget "$LEFT" ${MTD_BENCH_ARGS:-}

echo "=== done in $(elapsed)s, status $STATUS; files in \$OUT:" && ls -la "$OUT"
exit "$STATUS"
