#!/usr/bin/env bash
# Builds the pebble the tests run: Debian's own pebble 2.4.0 source package with one patch,
# authz-lock-order.patch, and prints the binary's path (cached by the patch's and this
# script's hash in /var/cache/certfleet-tests/pebble; about a minute on first use).
#
# Why: Debian's pebble deadlocks under many concurrent orders. Its Authz handler holds an
# authorization's write lock while it looks the account up (the memory store's read lock);
# FindValidAuthorization, run for every new order, holds the store's read lock while it
# read-locks each authorization in turn; a store writer (AddChallenge, AddOrder, …) queued
# between them blocks new readers. A goroutine dump of the stuck pebble showed exactly that
# cycle, and every ACME call timed out after it. Upstream's current code still has it. The
# patch looks the account up before taking the authorization's lock and changes nothing
# else. The scale benchmark and the three-coordinator kill test need it; tests/run.sh
# exports PEBBLE_BIN from this script for every test.
#
#   PEBBLE_BIN=$(tests/pebble/build.sh)       # as root (installs the build dependencies)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=/var/cache/certfleet-tests/pebble
version=2.4.0+ds1-2
upstream=2.4.0+ds1
# The .dsc pins the tarballs' checksums; its own checksum is pinned here.
dsc_sha256=4da2351758f0a7124466236b310a319b7548a3a46eb4c34396759c30582bb138
patch=$here/authz-lock-order.patch

key=$(cat "$patch" "$0" | sha256sum | cut -c1-16)
out=$cache/$key/pebble
if [[ -x $out ]]; then
    echo "$out"
    exit 0
fi

deps=(golang-any dh-golang debhelper dpkg-dev golang-github-letsencrypt-challtestsrv-dev
    golang-github-miekg-dns-dev golang-gopkg-square-go-jose.v2-dev curl)
missing=()
for d in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if ((${#missing[@]})); then
    echo "tests/pebble/build.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

work=$(mktemp -d /tmp/certfleet-pebble-build-XXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
for f in "pebble_${version}.dsc" "pebble_${upstream}.orig.tar.xz" "pebble_${version}.debian.tar.xz"; do
    curl -fsS --retry 3 -o "$f" "$mirror/pool/main/p/pebble/$f" || {
        echo "tests/pebble/build.sh: could not download $mirror/pool/main/p/pebble/$f (set DEBIAN_MIRROR to a reachable Debian mirror)" >&2
        exit 1
    }
done
echo "$dsc_sha256  pebble_${version}.dsc" | sha256sum -c --quiet - >&2
# dpkg-source checks the tarballs against the .dsc's checksums.
dpkg-source -x "pebble_${version}.dsc" src >&2 2>build.log || { cat build.log >&2; exit 1; }
patch -d src -p1 --quiet < "$patch"
if ! (cd src && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -b -uc -us -nc) >>build.log 2>&1; then
    tail -40 build.log >&2
    echo "tests/pebble/build.sh: building pebble failed (log above)" >&2
    exit 1
fi
mkdir -p "$cache/$key"
install -m 0755 src/_build/bin/pebble "$out.tmp"
mv "$out.tmp" "$out"
echo "tests/pebble/build.sh: built $out" >&2
echo "$out"
