#!/usr/bin/env bash
# Benchmarks that drive the real binaries (release build):
#   issuance — full certfleet issuance vs a direct instant-acme client, same pebble, same run:
#              an IP certificate, and a name certificate via HTTP-01 and via TLS-ALPN-01;
#   fleet    — N namespace hosts with nginx from enrollment to "served" on every host
#              (N = 1 as the baseline, then FLEET_SIZES, default 10,50,100), each N with
#              one IP certificate per host, then an IP and a name certificate per host;
#   bootstrap — boot to certificate: BOOT_RUNS (default 10) new namespace hosts with nginx
#              run deploy/cloud-init/certfleet-bootstrap.sh; `enroll --wait` start →
#              certificate served, median/min/max and the phases, vs a direct ACME client.
#   scale    — N simulated agents in one process (tests/src/loadgen.rs), N = SCALE_SIZES
#              (default 1000,10000), one coordinator on sled and two on PostgreSQL
#              (SCALE_SETUPS): sessions up, issuance rate, idle RSS/CPU, restart storm.
#              Long (minutes per N): only run when asked, never by `all` or CI.
# As root (adds addresses, makes network namespaces); installs pebble, nginx and knot if
# missing (knot serves the names pebble resolves).
#
#   tests/bench.sh              # all but scale
#   tests/bench.sh issuance     # one of them
#   BOOT_RUNS=3 tests/bench.sh bootstrap    # a short run
#   FLEET_SIZES=10 tests/bench.sh fleet
#   SCALE_SIZES=1000 SCALE_SETUPS=sled tests/bench.sh scale
set -euo pipefail

cd "$(dirname "$0")/.."

missing=()
command -v pebble >/dev/null || missing+=(pebble)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v ip >/dev/null || missing+=(iproute2)
# Knot DNS: the authoritative server (knotd) pebble resolves the benchmarks' names through,
# and its tools (knsupdate for TSIG-signed dynamic updates, kdig for lookups).
command -v knotd >/dev/null || [[ -x /usr/sbin/knotd ]] || missing+=(knot)
if ! command -v kdig >/dev/null || ! command -v knsupdate >/dev/null; then
    missing+=(knot-dnsutils)
fi
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

# The patched pebble of tests/run.sh (Debian's deadlocks under the scale benchmark's load).
PEBBLE_BIN=$(tests/pebble/build.sh)
export PEBBLE_BIN

cargo build --release --workspace --bins
case "${1:-all}" in
    issuance | fleet | bootstrap | scale) cargo bench -p certfleet-tests --bench "$1" ;;
    all)
        cargo bench -p certfleet-tests --bench issuance
        cargo bench -p certfleet-tests --bench fleet
        cargo bench -p certfleet-tests --bench bootstrap
        ;;
    *)
        echo "usage: tests/bench.sh [issuance|fleet|bootstrap|scale]" >&2
        exit 2
        ;;
esac
