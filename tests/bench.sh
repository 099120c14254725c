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
# As root (adds addresses, makes network namespaces); installs pebble, nginx and knot if
# missing (knot serves the names pebble resolves).
#
#   tests/bench.sh              # all three
#   tests/bench.sh issuance     # one of them
#   BOOT_RUNS=3 tests/bench.sh bootstrap    # a short run
#   FLEET_SIZES=10 tests/bench.sh fleet
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
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

cargo build --release --workspace --bins
case "${1:-all}" in
    issuance | fleet | bootstrap) cargo bench -p certfleet-tests --bench "$1" ;;
    all)
        cargo bench -p certfleet-tests --bench issuance
        cargo bench -p certfleet-tests --bench fleet
        cargo bench -p certfleet-tests --bench bootstrap
        ;;
    *)
        echo "usage: tests/bench.sh [issuance|fleet|bootstrap]" >&2
        exit 2
        ;;
esac
