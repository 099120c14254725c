#!/usr/bin/env bash
# The certfleet demo: knot (DNS for demo.test) + pebble + a coordinator + two agents (own
# IPv4 and IPv6 each) on this machine; web-1 gets an IP certificate, web-2 an IP and a name
# certificate (web-2.demo.test) and a wildcard *.demo.test + demo.test by DNS-01 (TXT
# records written into knot by the coordinator); prints the fleet view and where the
# certificates are, then stops everything. As root on Debian; installs pebble and knot if missing. Exits non-zero
# on failure.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/demo.sh: must run as root (adds IPv6 addresses to lo)" >&2
    exit 1
fi

missing=()
command -v pebble >/dev/null || missing+=(pebble)
command -v ip >/dev/null || missing+=(iproute2)
# Knot DNS: the authoritative server pebble resolves the demo name through (knotd), and
# its tools (knsupdate publishes the name, kdig checks it).
command -v knotd >/dev/null || [[ -x /usr/sbin/knotd ]] || missing+=(knot)
if ! command -v kdig >/dev/null || ! command -v knsupdate >/dev/null; then
    missing+=(knot-dnsutils)
fi
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

cargo build --workspace --bins
exec ./target/debug/certfleet-demo
