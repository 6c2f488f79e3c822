#!/usr/bin/env bash
# On a GPU machine, in one go: build with all cores, run the whole test suite (GPU tests
# included), run the benchmarks, and write logs, a JSON report and a markdown table to OUTDIR.
#   benchmarks/gpu_check.sh OUTDIR
# Commit OUTDIR/results.md as benchmarks/results/<date>_<gpu>.md.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
python=${PYTHON:-python3}
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
  > "$out/gpu.txt" 2>&1
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -m pip install --no-build-isolation --no-deps -e . \
  > "$out/build.log" 2>&1 || { echo "build failed"; tail -30 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s with MAX_JOBS=${MAX_JOBS:-$(nproc)}" | tee "$out/build_time.txt"
"$python" -m electra_fast.info --json > "$out/info.json"
cat "$out/info.json"

PYTHONUNBUFFERED=1 "$python" -m pytest -q -p no:cacheprovider tests > "$out/tests.log" 2>&1 || status=1
tail -4 "$out/tests.log"
# Out-of-bounds and race checks of the kernels on small cases, where the toolkit has the tool.
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 "$python" -m pytest -q -p no:cacheprovider \
      tests/ops/test_masking.py tests/ops/test_sampling.py -k "cuda and kernel and not compile" \
      -x > "$out/sanitizer_$tool.log" 2>&1 || status=1
    tail -3 "$out/sanitizer_$tool.log"
  done
else
  echo "compute-sanitizer not found: kernels not sanitised" | tee "$out/sanitizer.txt"
fi
PYTHONUNBUFFERED=1 "$python" -m pytest -q -p no:cacheprovider benchmarks \
  --benchmark-json "$out/bench.json" --benchmark-min-rounds 20 > "$out/bench.log" 2>&1 || status=1
tail -2 "$out/bench.log"
"$python" benchmarks/report.py "$out/bench.json" --markdown "$out/results.md" \
  --rows "$out/rows.json" || status=1
exit $status
