#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for SECONDS each (default 60) and
# prints per target: executions, exec/s, corpus size, crashes. Exits non-zero when any
# target crashed (or hung past the per-input timeout).
#
#   tests/fuzz.sh                 # 60 s per target
#   tests/fuzz.sh 10              # the CI smoke run (tests/run.sh)
#   tests/fuzz.sh 300 x509        # one or more named targets
#   tests/fuzz.sh --seeds         # (re)writes the seed corpus fuzz/corpus/ (write-seeds)
#
# The fuzzer is libFuzzer through the `libfuzzer-sys` crate on the *stable* toolchain: the
# coverage instrumentation cargo-fuzz would ask for is given here as RUSTFLAGS (no
# sanitizer: the code is `forbid(unsafe_code)`, so what we look for are panics, overflows,
# hangs and runaway memory). Nothing to install but a C++ compiler (libfuzzer-sys builds
# libFuzzer from source); no nightly, no cargo-fuzz.
#
# Inputs: the committed seeds in fuzz/corpus/<target>/ (read only). What a run finds goes
# to <target dir>/corpus-work/<target>/ (kept between local runs, never committed); a
# crashing input goes to fuzz/artifacts/<target>/ — reproduce it with
#   <target dir>/<triple>/release/<target> fuzz/artifacts/<target>/crash-…
# The target dir is $CERTFLEET_FUZZ_TARGET_DIR, else /var/cache/certfleet-tests/fuzz-target
# as root (it outlives a clone), else fuzz/target.
# and, once fixed, copy it into fuzz/corpus/<target>/ as a regression seed.
set -euo pipefail

cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
seeds=false
if [[ $secs == --seeds ]]; then
    seeds=true
    secs=1
fi
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: tests/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! command -v c++ >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing g++ (libfuzzer-sys compiles libFuzzer)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y g++
    else
        echo "tests/fuzz.sh: needs a C++ compiler (apt-get install g++)" >&2
        exit 1
    fi
fi

if $seeds; then
    targets=(write-seeds)
elif (($#)); then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

# The instrumentation is only for the fuzz crate's target triple: with an explicit
# --target, RUSTFLAGS do not reach build scripts and proc macros (they would not link).
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cforce-frame-pointers"
bins=()
for t in "${targets[@]}"; do
    bins+=(--bin "$t")
done
# fuzz/Cargo.lock is committed; not --locked, so that a dependency added to the workspace
# since is resolved here too (commit the updated fuzz/Cargo.lock).
# The instrumented build is a release build of the whole dependency tree: keep it where it
# survives a fresh clone (CI runs one on the same machine) when we may write there.
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
    if [[ -n ${CERTFLEET_FUZZ_TARGET_DIR:-} ]]; then
        export CARGO_TARGET_DIR=$CERTFLEET_FUZZ_TARGET_DIR
    elif [[ $(id -u) -eq 0 ]]; then
        export CARGO_TARGET_DIR=/var/cache/certfleet-tests/fuzz-target
    else
        export CARGO_TARGET_DIR=fuzz/target
    fi
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "==> building ${targets[*]} (libFuzzer, release + debug assertions + overflow checks) in $CARGO_TARGET_DIR"
build_start=$SECONDS
nice -n 10 cargo build --manifest-path fuzz/Cargo.toml --release \
    --target "$triple" "${bins[@]}"
echo "    built in $((SECONDS - build_start)) s"
bindir=$CARGO_TARGET_DIR/$triple/release
if $seeds; then
    "$bindir/write-seeds" fuzz/corpus
    echo "==> seeds written to fuzz/corpus/"
    exit 0
fi

# Scratch space the targets' agent and coordinator write to (state dirs, sled, webroot).
shm=/dev/shm
[[ -d $shm && -w $shm ]] || shm=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$shm/certfleet-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

failed=()
rows=()
for t in "${targets[@]}"; do
    work=$CARGO_TARGET_DIR/corpus-work/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
    log=$scratch/$t.log
    echo "==> fuzz $t (${secs} s)"
    status=0
    TMPDIR=$scratch "$bindir/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "$work" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    rm -rf "${scratch:?}"/certfleet-fuzz-*
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | sed 's/corp: //')
    crashes=$(grep -cE '^==[0-9]+== ERROR: libFuzzer|^SUMMARY: libFuzzer|panicked at' "$log" || true)
    if ((status != 0)); then
        failed+=("$t")
        ((crashes > 0)) || crashes=1
        echo "    FAILED (exit $status); the log ends:"
        tail -30 "$log" | sed 's/^/    | /'
        echo "    input saved under $artifacts/"
    fi
    rows+=("$(printf '%-28s %12s %8s %8s %8s' "$t" "${execs:-?}" "${rate:-?}" "${corpus:-?}" "$crashes")")
done

echo
printf '%-28s %12s %8s %8s %8s\n' target executions exec/s corpus crashes
for r in "${rows[@]}"; do
    echo "$r"
done
if ((${#failed[@]})); then
    echo "==> fuzzing found crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "==> fuzzing: no crashes"
