#!/usr/bin/env bash
# libFuzzer on every kafka-mesh-core fuzz target (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS]      fuzz every target, SECONDS in all (default $FUZZ_SECONDS or
#                              240), split evenly; fails if any target finds a crash
#   fuzz/run.sh --smoke        CI: build every target, run the committed corpus and
#                              regressions through the sanitizer build, then fuzz each
#                              target for FUZZ_SMOKE_SECONDS (default 5)
#   fuzz/run.sh --cmin         merge what fuzzing found (fuzz/work) into fuzz/corpus,
#                              keeping only small inputs that add coverage (maintainers)
#
# Installs what is missing: the nightly toolchain (rustup) and cargo-fuzz (crates.io).
# New inputs go to fuzz/work/<target> (not committed); crashes to fuzz/artifacts/<target>.
# FUZZ_TARGETS limits the targets (space-separated); FUZZ_NICE sets the niceness (10);
# FUZZ_ARGS adds libFuzzer options.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

TARGETS=${FUZZ_TARGETS:-"session config rewrite differential"}
NICE="nice -n ${FUZZ_NICE:-10}"
MODE=fuzz
TOTAL=${FUZZ_SECONDS:-240}
case "${1:-}" in
    --smoke) MODE=smoke ;;
    --cmin) MODE=cmin ;;
    "") ;;
    *[!0-9]*) echo "usage: $0 [SECONDS | --smoke | --cmin]" >&2; exit 2 ;;
    *) TOTAL=$1 ;;
esac

# ---- tools -------------------------------------------------------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain (libFuzzer needs -Zsanitizer)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo +stable install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks on (as in `cargo test`), in an optimized build.
BUILD_FLAGS=(-a)
echo "fuzz: building the targets"
$NICE cargo +nightly fuzz build "${BUILD_FLAGS[@]}"
BIN_DIR=target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

mkdir -p work artifacts
summary=()
failed=0

# The figures of a run: executions, coverage (cov: edges, ft: features), corpus size.
figures() {
    local log=$1 done_line runs
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "runs=${runs:-?} $(echo "$done_line" | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || echo '(no DONE line)')"
}

# Longest input per target: session inputs are whole conversations (frames past the 4 KiB
# pause bound need room); the others stay at libFuzzer's default.
max_len() {
    case $1 in
        session) echo "-max_len=16384" ;;
        *) echo "" ;;
    esac
}

run_target() {
    local t=$1 seconds=$2 log=work/$t.log
    mkdir -p "work/$t" "artifacts/$t"
    local dirs=("work/$t" "corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    echo "fuzz: $t for ${seconds}s"
    set +e
    # shellcheck disable=SC2086
    $NICE cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -dict=dict/kafka.dict -print_final_stats=1 \
        -rss_limit_mb=2048 -timeout=10 -artifact_prefix="artifacts/$t/" $(max_len "$t") ${FUZZ_ARGS:-} \
        >"$log" 2>&1
    local rc=$?
    set -e
    summary+=("$(printf '%-13s %s' "$t" "$(figures "$log")")")
    if [ $rc -ne 0 ]; then
        failed=1
        echo "fuzz: $t FAILED (exit $rc); log: fuzz/$log" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|deadly signal' "$log" | head -20 >&2 || true
    fi
}

case $MODE in
fuzz)
    set -- $TARGETS
    per=$(( TOTAL / $# ))
    [ "$per" -ge 1 ] || per=1
    for t in $TARGETS; do run_target "$t" "$per"; done
    ;;
smoke)
    # The committed inputs, through the sanitizer build, each run once (-runs=0).
    for t in $TARGETS; do
        dirs=("corpus/$t")
        [ -d "regressions/$t" ] && dirs+=("regressions/$t")
        echo "fuzz: replaying ${dirs[*]}"
        $NICE "$BIN_DIR/$t" -runs=0 -rss_limit_mb=2048 -timeout=10 "${dirs[@]}" >"work/$t.replay.log" 2>&1 \
            || { failed=1; echo "fuzz: replay of $t FAILED; log: fuzz/work/$t.replay.log" >&2; }
    done
    for t in $TARGETS; do run_target "$t" "${FUZZ_SMOKE_SECONDS:-5}"; done
    ;;
cmin)
    # Keep the seeds and regressions as they are; add the inputs of fuzz/work of at most
    # FUZZ_CMIN_MAX_BYTES (default 4096) that reach edges the corpus does not (edges only,
    # -use_counters=0, so the committed corpus stays a few hundred KB).
    for t in $TARGETS; do
        [ -d "work/$t" ] || continue
        before=$(ls "corpus/$t" | wc -l)
        rm -rf "work/$t.small" && mkdir -p "work/$t.small"
        find "work/$t" -maxdepth 1 -type f -size -"$(( ${FUZZ_CMIN_MAX_BYTES:-4096} + 1 ))"c \
            -exec cp {} "work/$t.small/" \;
        $NICE "$BIN_DIR/$t" -merge=1 -use_counters=0 -rss_limit_mb=2048 \
            "corpus/$t" "work/$t.small" >"work/$t.cmin.log" 2>&1
        rm -rf "work/$t.small"
        echo "fuzz: $t corpus $before -> $(ls "corpus/$t" | wc -l) files, $(du -sh --apparent-size "corpus/$t" | cut -f1)"
    done
    exit 0
    ;;
esac

echo
echo "fuzz: $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), $(nproc) cores"
printf '  %s\n' "${summary[@]}"
if [ $failed -ne 0 ]; then
    echo "fuzz: a target failed: see fuzz/artifacts/<target>/ and fuzz/README.md (\"A crash\")" >&2
    exit 1
fi
