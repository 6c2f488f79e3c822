#!/usr/bin/env bash
# On a GPU machine, in one go: build with all cores, run the whole test suite (GPU tests
# included), sanitise the kernels, profile a pretraining step, run the GPU benchmarks, and write
# logs, a JSON report and a markdown table to OUTDIR.
#   benchmarks/gpu_check.sh OUTDIR [STAGE...]
# STAGE: build throws tests sanitize profile bench (default: all). Each stage has its own time limit
# (TESTS_S, SANITIZE_S, PROFILE_S, BENCH_S seconds), so that a kernel that hangs costs one stage
# and not the whole lease; within the bench stage each benchmark file has its own (BENCH_FILE_S)
# and JSON. BENCH_K selects the benchmarks (default: the GPU ones; CPU
# timings on a lent 16-core machine are not the ones we report), BENCH_FILES the files.
# Commit OUTDIR/results.md as benchmarks/results/<date>_<gpu>.md.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR [build throws tests sanitize profile bench]}
shift
stages=${*:-build throws tests sanitize profile bench}
mkdir -p "$out"
python=${PYTHON:-python3}
status=0
has() { [[ " $stages " == *" $1 "* ]]; }
# pytest-timeout turns a hang into one failed test instead of a killed stage, where it exists.
per_test=$("$python" -c "import pytest_timeout" 2> /dev/null && echo "--timeout 240")
# Spread the suite over processes where pytest-xdist exists: most of it is CPU work.
workers=$("$python" -c "import xdist" 2> /dev/null && echo "-n ${TEST_WORKERS:-8}")

if has build; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    > "$out/gpu.txt" 2>&1
  start=$(date +%s)
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -m pip install --no-build-isolation --no-deps -e . \
    > "$out/build.log" 2>&1 || { echo "build failed"; tail -30 "$out/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s with MAX_JOBS=${MAX_JOBS:-$(nproc)}" \
    | tee "$out/build_time.txt"
  "$python" -m electra_fast.info --json > "$out/info.json"
  cat "$out/info.json"
  # Which tensor-core instructions the kernels compiled to: HGMMA is wgmma (sm_90a), HMMA mma.sync.
  if command -v cuobjdump > /dev/null; then
    cuobjdump -sass electra_fast/_C*.so 2> /dev/null | grep -oE "\b(HGMMA|HMMA)\.[^ ]*" \
      | sort | uniq -c > "$out/tensor_core_sass.txt"
    cat "$out/tensor_core_sass.txt"
  fi
fi

# On the first GPU run, test workers of pytest-xdist crashed whenever our C++ threw, and a fresh
# process did not. Where does it crash: our throws on threads, in an execnet worker and after
# other work (throw_check.py), and one file of tests that make our C++ throw with and without
# xdist's workers.
if has throws; then
  timeout 300 "$python" benchmarks/throw_check.py --json "$out/throws.json" 2>&1 \
    | tee "$out/throws.txt" || status=1
  for runner in "-p no:xdist" "-n 2"; do
    [[ $runner == "-n 2" && -z $workers ]] && continue
    timeout 300 "$python" -m pytest -q -p no:cacheprovider $runner tests/ops/test_sampling.py \
      -k "bad_input or rejects" > "$out/throws_pytest_${runner//[^a-z0-9]/}.log" 2>&1 || status=1
    echo "throwing tests with $runner: $(tail -1 "$out/throws_pytest_${runner//[^a-z0-9]/}.log")"
  done
fi

# The GPU tests first (marked cuda), then the rest: on the first GPU run the whole suite did
# not finish in 300 s. -v names each result as it comes, so a stage cut short by its time limit
# (or a worker that crashed) still says which tests failed.
if has tests; then
  start=$(date +%s)
  deadline=$(( start + ${TESTS_S:-420} ))
  for selection in cuda "not cuda"; do
    log="$out/tests_$([[ $selection == cuda ]] && echo gpu || echo cpu).log"
    left=$(( deadline - $(date +%s) ))
    (( left > 10 )) || { echo "tests: no time left for -m '$selection'"; status=1; break; }
    PYTHONUNBUFFERED=1 timeout "$left" "$python" -m pytest -v -p no:cacheprovider -m "$selection" \
      $per_test $workers -rfE tests > "$log" 2>&1
    code=$?
    (( code == 0 )) || status=1
    (( code == 124 )) && echo "tests -m '$selection': cut short after $left s (TESTS_S)"
    # Result lines name a test (::) and are not the summary's, which start with the outcome.
    results=$(grep "::" "$log" | grep -vE "^(FAILED|ERROR) ")
    echo "tests -m '$selection': $(grep -cE "PASSED|SKIPPED|XFAIL|XPASS" <<< "$results") passed" \
      "or skipped, $(grep -cE "FAILED|ERROR" <<< "$results") failed"
    { grep -E "FAILED|ERROR" <<< "$results"; grep -E "node down|crashed" "$log"; } | head -30
    tail -1 "$log" | tr -d '\n'; echo
  done
  echo "tests: $(( $(date +%s) - start )) s"
fi

# Out-of-bounds and race checks of the kernels on small cases, where the toolkit has the tool.
# The files of the kernels never sanitised come first (the sm80 backward's two halves handing dQ
# over in shared memory, then column_sums, bias_gelu...): the tool's time limit may end the run.
# Without the tests of argument errors, which launch no kernel: on the first GPU run a C++
# exception thrown in a pytest process there crashed it (not yet explained; a fresh process
# catches the same throw), which would end the sanitiser's one process.
argument_checks="bad or refuse or rejects or takes_a_seed or own_arguments or another_device"
argument_checks+=" or split_batch_samples"
if has sanitize; then
  if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
      timeout "${SANITIZE_S:-150}" compute-sanitizer --tool $tool --error-exitcode 9 \
        "$python" -m pytest -q -p no:cacheprovider tests/ops/test_attention_kernel.py \
        tests/ops/test_column_sums.py tests/ops/test_bias_gelu.py tests/ops/test_layer_norm.py \
        tests/ops/test_masking.py tests/ops/test_sampling.py tests/ops/test_attention.py \
        tests/ops/test_attention_sm90.py tests/ops/test_attention_qkvpacked.py \
        tests/ops/test_wgmma.py -x \
        -k "((cuda and kernel and not compile) or (sm90 and not fp64) or wgmma) and not ($argument_checks)" \
        > "$out/sanitizer_$tool.log" 2>&1 || status=1
      echo "sanitizer $tool:"; tail -3 "$out/sanitizer_$tool.log"
    done
  else
    echo "compute-sanitizer not found: kernels not sanitised" | tee "$out/sanitizer.txt"
  fi
fi

# Where the device time of an ELECTRA-small step goes, kernel by kernel, eager and replayed from
# CUDA graphs: what to work on next. And a step of one 16-token sequence, where the GPU should
# have almost nothing to do: on the first GPU run a narrow step of that size replayed from graphs
# still took 15.2 ms (bench_step_host, whose generator then had heads of 16 and so ran the
# reference attention; profile_step's tiny step is ELECTRA-small's layers, heads of 64). Last,
# the graphs again on the opt-in wgmma attention kernels (whose backward writes dq directly at
# length 128), to see what they would change in a step.
if has profile; then
  for mode in eager graphs tiny wgmma; do
    wgmma=0
    case $mode in
      graphs) flags=(--graphs) ;;
      tiny) flags=(--graphs --batch 1 --length 16) ;;
      wgmma) flags=(--graphs); wgmma=1 ;;
      *) flags=() ;;
    esac
    ELECTRA_FAST_WGMMA=$wgmma timeout "${PROFILE_S:-120}" "$python" benchmarks/profile_step.py \
      --device cuda "${flags[@]}" --out "$out/profile_$mode.md" > "$out/profile_$mode.log" 2>&1 \
      || status=1
    echo "profile $mode: $(head -1 "$out/profile_$mode.md" 2> /dev/null || tail -1 "$out/profile_$mode.log")"
  done
fi

# One pytest per benchmark file, each with its own JSON and time limit within the stage's, so
# that a file that runs long (compiling, say) costs its own rows and not the others'. The files
# most worth a GPU minute come first.
if has bench; then
  deadline=$(( $(date +%s) + ${BENCH_S:-420} ))
  reports=()
  for file in ${BENCH_FILES:-attention sampling masking layer_norm bias_grad pretraining step_host optimizer prepare vietnamese}; do
    left=$(( deadline - $(date +%s) ))
    (( left > 10 )) || { echo "bench: no time left for $file"; status=1; break; }
    limit=$(( left < ${BENCH_FILE_S:-240} ? left : ${BENCH_FILE_S:-240} ))
    PYTHONUNBUFFERED=1 timeout "$limit" "$python" -m pytest -q -p no:cacheprovider \
      "benchmarks/bench_$file.py" -k "${BENCH_K:-cuda}" --benchmark-json "$out/bench_$file.json" \
      --benchmark-min-rounds 20 > "$out/bench_$file.log" 2>&1
    code=$?
    # 5: every benchmark of the file deselected by BENCH_K, which is no failure.
    (( code == 0 || code == 5 )) || status=1
    echo "bench $file: exit $code, $(tail -1 "$out/bench_$file.log")"
    [[ -s "$out/bench_$file.json" ]] && reports+=("$out/bench_$file.json")
  done
  if (( ${#reports[@]} )); then
    "$python" benchmarks/report.py "${reports[@]}" --markdown "$out/results.md" \
      --rows "$out/rows.json" || status=1
  else
    echo "bench: no results"; status=1
  fi
fi
exit $status
