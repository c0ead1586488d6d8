#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang into build-fuzz/ and runs each for a
# fixed time. Fails (non-zero) on any crash, sanitizer report, hang (an input slower than
# SVCCOMM_FUZZ_TIMEOUT seconds, default 10), leak or out-of-memory.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]   default: 15 s, every target
#   scripts/fuzz.sh 600                                 the long run (about an hour)
#
# Seeds come from tests/fuzz/corpus/<target>/ and are never modified: new corpus entries go to
# a scratch directory (SVCCOMM_FUZZ_WORK, default a fresh one under /tmp, kept and printed),
# as do crash reproducers (<work>/artifacts/<target>/). Files in tests/fuzz/regressions/<target>/
# (inputs that once failed) are replayed before fuzzing. One job per target (-jobs are not
# used): the stage is meant to share a small CI machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

SECS=${1:-15}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(json_scan utf8 relay_headers amqp_headers amqp_frames amqp_confirms json_decode)
TIMEOUT=${SVCCOMM_FUZZ_TIMEOUT:-10}
BUILD=${SVCCOMM_FUZZ_BUILD:-build-fuzz}
WORK=${SVCCOMM_FUZZ_WORK:-$(mktemp -d /tmp/svccomm-fuzz.XXXXXX)}
CC_FUZZ=${SVCCOMM_FUZZ_CC:-clang}

command -v "$CC_FUZZ" >/dev/null || {
	echo "fuzz.sh: $CC_FUZZ not found (scripts/install-deps.sh installs clang)" >&2
	exit 1
}
cmake -S . -B "$BUILD" -DCMAKE_C_COMPILER="$CC_FUZZ" -DSVCCOMM_FUZZ=ON -DSVCCOMM_TESTS=OFF \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target fuzz_targets -j"${SVCCOMM_JOBS:-2}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

dict_of() {
	case $1 in
	json_scan | relay_headers | json_decode) echo tests/fuzz/dict/json.dict ;;
	amqp_*) echo tests/fuzz/dict/amqp.dict ;;
	esac
}

rc=0
for t in "${TARGETS[@]}"; do
	bin=$BUILD/tests/fuzz/fuzz_$t
	[ -x "$bin" ] || {
		echo "fuzz.sh: no target $t" >&2
		rc=1
		continue
	}
	corpus=$WORK/corpus/$t
	artifacts=$WORK/artifacts/$t
	mkdir -p "$corpus" "$artifacts"
	args=(-timeout="$TIMEOUT" -rss_limit_mb=2048 -artifact_prefix="$artifacts/")
	dict=$(dict_of "$t")
	[ -z "$dict" ] || args+=(-dict="$dict")

	regressions=(tests/fuzz/regressions/"$t"/*)
	if [ -e "${regressions[0]}" ]; then
		echo "-- $t: replaying ${#regressions[@]} regression input(s)"
		"$bin" "${args[@]}" "${regressions[@]}" >"$WORK/$t.regressions.log" 2>&1 || {
			echo "fuzz.sh: $t FAILED on a regression input; log: $WORK/$t.regressions.log"
			tail -n 30 "$WORK/$t.regressions.log"
			rc=1
			continue
		}
	fi

	echo "-- $t: fuzzing for ${SECS}s"
	if "$bin" "${args[@]}" -max_total_time="$SECS" -print_final_stats=1 \
		"$corpus" "tests/fuzz/corpus/$t" >"$WORK/$t.log" 2>&1; then
		grep -E 'DONE|^stat::number_of_executed_units' "$WORK/$t.log" | tail -n 2
	else
		echo "fuzz.sh: $t FAILED; log: $WORK/$t.log, reproducer(s) in $artifacts/"
		grep -E 'ERROR|SUMMARY|Test unit written' "$WORK/$t.log" | head -n 10
		rc=1
	fi
done
echo "fuzz.sh: work directory $WORK"
exit $rc
