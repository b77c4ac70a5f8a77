#!/usr/bin/env bash
# Build dtkd with AddressSanitizer + UndefinedBehaviorSanitizer in a throw-away venv and run tests
# under it; then run one small training step under valgrind memcheck on the ordinary build.
# Prints the number of sanitizer / memcheck errors (zero expected) and exits non-zero on any.
#
#   bash benchmarks/sanitize.sh            # ASan+UBSan on the kernel, layer, loss, allocation-
#                                          # failure and fuzz tests; then valgrind
#   bash benchmarks/sanitize.sh --quick    # CI: a smaller ASan+UBSan subset; then valgrind
#   bash benchmarks/sanitize.sh --all      # ASan+UBSan on the whole test suite (slow)
#   SKIP_VALGRIND=1 / SKIP_ASAN=1          # one half only
#
# Why LD_PRELOAD: python itself is not built with ASan, so the ASan runtime must be loaded before
# anything else for its malloc interposition to see every allocation. detect_leaks=0: CPython
# keeps interned objects and caches alive at exit by design (LeakSanitizer would list thousands);
# dtkd's own leaks are covered by tests/test_alloc_failures.py's live-block counts and
# tests/test_memory.py's RSS bounds. allocator_may_return_null=1: tests ask for impossible sizes
# and expect MemoryError, not ASan's abort. PYTHONMALLOC=malloc: every Python object allocation
# goes through (sanitized) malloc, so overflows into Python objects are caught too.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-default}"
python="${PYTHON:-python}"
work="$(mktemp -d /tmp/dtkd-sanitize.XXXXXX)"
trap 'rm -rf "$work"' EXIT
errors=0

if [ -z "${SKIP_ASAN:-}" ]; then
    echo "== building dtkd with DTKD_SANITIZE=address,undefined in $work/venv"
    "$python" -m venv --system-site-packages "$work/venv"
    mkdir "$work/src"
    git ls-files -z | xargs -0 -I{} cp --parents {} "$work/src/"
    start=$(date +%s)
    # build isolation as a user's install has it (the venv's own setuptools may be too old)
    if ! DTKD_SANITIZE=address,undefined "$work/venv/bin/python" -m pip install -q "$work/src" \
            > "$work/build.log" 2>&1; then
        tail -30 "$work/build.log"
        echo "sanitize.sh: FAILED (the sanitized build did not install)"
        exit 1
    fi
    echo "   built in $(( $(date +%s) - start )) s"
    case "$mode" in
        --quick) tests=(tests/test_losses.py tests/test_losses_bad_input.py tests/test_kernels_bn.py
                        tests/test_kernels_pool_linear.py tests/test_alloc_failures.py
                        tests/test_winograd.py tests/fuzz) ;;
        --all) tests=(tests) ;;
        *) tests=(tests/test_losses.py tests/test_losses_bad_input.py tests/test_losses_properties.py
                  tests/test_kernels_bn.py tests/test_kernels_conv.py tests/test_kernels_pool_linear.py
                  tests/test_gemm.py tests/test_winograd.py tests/test_conv_paths.py tests/test_nn.py
                  tests/test_optim.py tests/test_data.py tests/test_alloc_failures.py
                  tests/test_concurrency.py tests/fuzz) ;;
    esac
    asan_lib="$(gcc -print-file-name=libasan.so)"
    echo "== DTKD_FAIL_ALLOC=1 in the sanitized build: the first C allocation fails"
    (cd "$work" && LD_PRELOAD="$asan_lib" ASAN_OPTIONS=detect_leaks=0 DTKD_FAIL_ALLOC=1 \
        "$work/venv/bin/python" -c "
import numpy as np, dtkd
try:
    dtkd.losses.kd(np.ones((2, 3)), np.ones((2, 3)))
except MemoryError as e:
    print('   MemoryError:', e)
else:
    raise SystemExit('DTKD_FAIL_ALLOC=1 was not honoured')
dtkd.losses.kd(np.ones((2, 3)), np.ones((2, 3)))  # once only
") || errors=$((errors + 1))
    echo "== ASan+UBSan: ${tests[*]}"
    start=$(date +%s)
    # run from $work so `import dtkd` finds the sanitized install, not the source tree
    set +e
    (cd "$work" && LD_PRELOAD="$asan_lib" PYTHONMALLOC=malloc \
        ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:detect_odr_violation=0 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 DTKD_SANITIZED_RUN=1 \
        "$work/venv/bin/python" -m pytest -q -p no:cacheprovider -x \
        "${tests[@]/#/$work/src/}" > "$work/asan.log" 2>&1)
    status=$?
    set -e
    asan_errors=$(grep -c -E "ERROR: AddressSanitizer|runtime error:" "$work/asan.log" || true)
    tail -3 "$work/asan.log"
    echo "   ASan+UBSan: $asan_errors sanitizer errors, pytest exit $status, $(( $(date +%s) - start )) s"
    if [ "$asan_errors" != 0 ] || [ "$status" != 0 ]; then
        grep -B2 -A30 -E "ERROR: AddressSanitizer|runtime error:|FAILED|Error" "$work/asan.log" | head -80
        errors=$((errors + 1))
    fi
fi

if [ -z "${SKIP_VALGRIND:-}" ]; then
    echo "== valgrind memcheck: one DTKD training step (tiny CNN and a resnet8 forward, ordinary build)"
    start=$(date +%s)
    set +e
    PYTHONMALLOC=malloc OMP_NUM_THREADS=2 valgrind --tool=memcheck --error-exitcode=99 \
        --suppressions=benchmarks/valgrind-python.supp --leak-check=no --track-origins=no \
        "$python" benchmarks/sanitize_step.py > "$work/valgrind.log" 2>&1
    status=$?
    set -e
    summary=$(grep "ERROR SUMMARY" "$work/valgrind.log" || echo "no summary")
    echo "   $summary; exit $status, $(( $(date +%s) - start )) s"
    if [ "$status" != 0 ]; then
        grep -A25 -E "Invalid|uninitialised|Mismatched|Syscall|Traceback" "$work/valgrind.log" | head -80
        errors=$((errors + 1))
    fi
fi

if [ "$errors" != 0 ]; then
    echo "sanitize.sh: FAILED"
    exit 1
fi
echo "sanitize.sh: clean"
