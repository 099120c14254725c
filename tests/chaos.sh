#!/usr/bin/env bash
# Long mode of the chaos tests (issue 9): kill -9 the coordinator, and agents, many times
# during renewals of a fleet of loopback hosts, then check the fleet settled whole.
#
#   tests/chaos.sh               # 200 kills each
#   tests/chaos.sh 50            # 50 kills each
#   CERTFLEET_CHAOS_SEED=1234 tests/chaos.sh 200     # replay a seed
#   CERTFLEET_CHAOS_HOSTS=20 tests/chaos.sh 100      # more hosts
#   tests/chaos.sh 200 coordinator_kill9             # only one of the two tests
#   tests/chaos.sh 10 ha::three_coordinators         # three nodes on PostgreSQL, 10 kills
#
# The same tests run in CI (tests/run.sh) with 20 kills each (three-coordinator test: 3). Each prints one
# `CHAOS SUMMARY` line with the counts; a failure prints the seed to replay it with.
# Needs root and pebble, like tests/run.sh (which installs what is missing).
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/chaos.sh: must run as root (adds IPv6 addresses to lo)" >&2
    exit 1
fi
# The patched pebble tests/run.sh uses (Debian's deadlocks under these loads).
PEBBLE_BIN=$(tests/pebble/build.sh)
export PEBBLE_BIN

kills=${1:-200}
filter=${2:-chaos::}
export CERTFLEET_CHAOS_KILLS=$kills
export CERTFLEET_HA_KILLS=$kills
if [[ -z ${CERTFLEET_CHAOS_SEED:-} ]]; then
    CERTFLEET_CHAOS_SEED=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
export CERTFLEET_CHAOS_SEED
echo "==> chaos: ${kills} kills, seed ${CERTFLEET_CHAOS_SEED}, hosts ${CERTFLEET_CHAOS_HOSTS:-10}"

cargo build --workspace --bins
log=$(mktemp /tmp/certfleet-chaos-XXXX.log)
status=0
cargo test -p certfleet-tests --test e2e "$filter" -- --test-threads 1 --nocapture 2>&1 |
    tee "$log" || status=$?
echo "==> summary (full log: $log)"
grep -E '^(CHAOS (SUMMARY|coordinator|agent)|HA SUMMARY)' "$log" || echo "(no CHAOS SUMMARY line: see the log)"
exit "$status"
