#!/usr/bin/env bash
# The certfleet demo: pebble + a coordinator + two agents (own IPv4 and IPv6 each) on
# this machine; prints the fleet view and where the certificates are, then stops
# everything. As root on Debian; installs pebble if missing. Exits non-zero on failure.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/demo.sh: must run as root (adds IPv6 addresses to lo)" >&2
    exit 1
fi

missing=()
command -v pebble >/dev/null || missing+=(pebble)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

cargo build --workspace --bins
exec ./target/debug/certfleet-demo
