#!/usr/bin/env bash
# Benchmarks that drive the real binaries (release build):
#   issuance — full certfleet issuance vs a direct instant-acme client, same pebble, same run;
#   fleet    — N namespace hosts with nginx from enrollment to "served" on every host
#              (N = 1 as the baseline, then FLEET_SIZES, default 10,50,100).
# As root (adds addresses, makes network namespaces); installs pebble and nginx if missing.
#
#   tests/bench.sh              # both
#   tests/bench.sh issuance     # one of them
#   FLEET_SIZES=10 tests/bench.sh fleet
set -euo pipefail

cd "$(dirname "$0")/.."

missing=()
command -v pebble >/dev/null || missing+=(pebble)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

cargo build --release --workspace --bins
case "${1:-all}" in
    issuance | fleet) cargo bench -p certfleet-tests --bench "$1" ;;
    all)
        cargo bench -p certfleet-tests --bench issuance
        cargo bench -p certfleet-tests --bench fleet
        ;;
    *)
        echo "usage: tests/bench.sh [issuance|fleet]" >&2
        exit 2
        ;;
esac
