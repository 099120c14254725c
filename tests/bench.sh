#!/usr/bin/env bash
# Issuance benchmark: full certfleet issuance vs a direct instant-acme client, same
# pebble, same run. Builds the release binaries the benchmark drives, then runs it.
# As root (adds IPv6 addresses to lo); installs pebble if missing.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v pebble >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y pebble
fi

cargo build --release --workspace --bins
exec cargo bench -p certfleet-tests --bench issuance "$@"
