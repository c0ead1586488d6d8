#!/usr/bin/env bash
# The whole svccomm test suite: the one test command of the README and of CI (.ci/run).
#
#   1. install missing Debian packages    (scripts/install-deps.sh; skip: SVCCOMM_SKIP_INSTALL=1)
#   2. build into build/                  (cmake, -Werror)
#   3. start the local servers            (scripts/servers.sh start) and export their env
#   4. ctest in build/                    (unit, spec, integration)
#   5. ASan+UBSan build in build-asan/    unit tests and busted specs
#                                         (+ integration with SVCCOMM_ASAN_INTEGRATION=1)
#   6. valgrind on the unit test binaries of build/
#   7. libFuzzer targets in build-fuzz/ (scripts/fuzz.sh), SVCCOMM_FUZZ_SECONDS each (default 15)
#   8. the Debian package in build-deb/   (scripts/build-deb.sh; --test under CI: apt install,
#                                         run, remove; skip: SVCCOMM_SKIP_DEB=1)
#
# Exits non-zero when any step fails; the later test steps still run so one report shows all.
# SVCCOMM_JOBS sets build/ctest parallelism (default: number of CPUs). A test without its own
# TIMEOUT property is killed after SVCCOMM_TEST_TIMEOUT seconds (default 120), and so is one
# unit test binary under valgrind, so a hung test cannot stall CI.
# The servers keep running afterwards (scripts/servers.sh stop), except under CI=true or with
# SVCCOMM_STOP_SERVERS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

JOBS=${SVCCOMM_JOBS:-$(nproc 2>/dev/null || echo 2)}
TEST_TIMEOUT=${SVCCOMM_TEST_TIMEOUT:-120}
FAILED=()
T_START=$SECONDS
T_STEP=$SECONDS

step() {
	T_STEP=$SECONDS
	printf '\n==== %s\n' "$*"
}
done_step() { printf '==== %s: %ss\n' "$1" "$((SECONDS - T_STEP))"; }

# Runs a test step; records a failure instead of stopping.
check() {
	local name=$1
	shift
	if "$@"; then
		done_step "$name ok"
	else
		done_step "$name FAILED"
		FAILED+=("$name")
	fi
}

if [ "${SVCCOMM_SKIP_INSTALL:-0}" != 1 ]; then
	step "install dependencies"
	bash scripts/install-deps.sh
	done_step "install"
fi

step "build (build/)"
cmake -S . -B build
cmake --build build -j"$JOBS"
done_step "build"

step "local servers"
bash scripts/servers.sh start
eval "$(bash scripts/servers.sh env)"
if [ "${CI:-}" = true ] || [ "${SVCCOMM_STOP_SERVERS:-0}" = 1 ]; then
	trap 'bash scripts/servers.sh stop || true' EXIT
fi
done_step "servers"

step "ctest (build/)"
check "ctest" ctest --test-dir build --output-on-failure --timeout "$TEST_TIMEOUT" -j"$JOBS"

step "build with ASan+UBSan (build-asan/)"
asan_ok=1
if cmake -S . -B build-asan -DSVCCOMM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug &&
	cmake --build build-asan -j"$JOBS"; then
	done_step "asan build"
else
	done_step "asan build FAILED"
	FAILED+=("asan build")
	asan_ok=0
fi

if [ $asan_ok = 1 ]; then
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	step "ASan+UBSan: unit tests"
	check "asan unit" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		ctest --test-dir build-asan --output-on-failure --timeout "$TEST_TIMEOUT" -j"$JOBS" -L '^unit$'

	# The specs run in the uninstrumented lua5.4, which loads the instrumented native module:
	# the ASan runtime must be loaded first, and leaks of the interpreter are not ours.
	step "ASan+UBSan: busted specs"
	libasan=$(cc -print-file-name=libasan.so)
	check "asan spec" env LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		ctest --test-dir build-asan --output-on-failure --timeout "$TEST_TIMEOUT" -L '^spec$'

	if [ "${SVCCOMM_ASAN_INTEGRATION:-0}" = 1 ]; then
		step "ASan+UBSan: integration"
		check "asan integration" env ASAN_OPTIONS=detect_leaks=1 \
			ctest --test-dir build-asan --output-on-failure --timeout "$TEST_TIMEOUT" -L '^integration$'
	fi
fi

step "valgrind: unit test binaries (build/)"
valgrind_all() {
	local rc=0 bin n=0
	for bin in build/tests/test_*; do
		{ [ -f "$bin" ] && [ -x "$bin" ]; } || continue
		n=$((n + 1))
		echo "-- valgrind $bin"
		(cd build/tests && timeout -k 10 "$TEST_TIMEOUT" valgrind -q --error-exitcode=1 --leak-check=full \
			"./$(basename "$bin")" >/dev/null) || {
			echo "valgrind: $bin FAILED"
			rc=1
		}
	done
	[ $n -gt 0 ] || {
		echo "valgrind: no unit test binaries in build/tests"
		return 1
	}
	return $rc
}
check "valgrind" valgrind_all

step "fuzz: libFuzzer targets (build-fuzz/)"
check "fuzz" bash scripts/fuzz.sh "${SVCCOMM_FUZZ_SECONDS:-15}"

# The Debian package (CPU time about a minute): built, lintian-checked, and under CI also
# installed with apt, run and removed again (scripts/build-deb.sh). Skip: SVCCOMM_SKIP_DEB=1.
if [ "${SVCCOMM_SKIP_DEB:-0}" != 1 ]; then
	step "Debian package (build-deb/)"
	deb_args=()
	[ "${CI:-}" = true ] && deb_args=(--test)
	check "deb" bash scripts/build-deb.sh "${deb_args[@]}" build-deb
fi

printf '\n==== total: %ss\n' "$((SECONDS - T_START))"
if [ ${#FAILED[@]} -gt 0 ]; then
	echo "FAILED: ${FAILED[*]}"
	exit 1
fi
echo "ALL PASSED"
