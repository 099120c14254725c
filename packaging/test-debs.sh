#!/usr/bin/env bash
# Proof that the packages install, work and leave what Debian policy says. As root on
# Debian:
#
#   packaging/test-debs.sh                 # builds release .debs (packaging/build-debs.sh) first
#   packaging/test-debs.sh --from-debug    # .debs of the debug binaries `cargo build` made
#                                          # (what tests/run.sh runs: no release build)
#   DEBS="a.deb b.deb" packaging/test-debs.sh   # tests .debs built before
#
# A minimal Debian of the host's release (debootstrap --variant=minbase, with adduser) is
# unpacked into a temp dir from a tar of it cached in /var/cache/certfleet-tests (CACHE_DIR
# to change it; made once by debootstrap from the mirror, MIRROR to change it); in a chroot: dpkg -i both packages, --version,
# the system user, directories and modes, conffiles, units (the leave unit too, disabled,
# never restarted by the package), completions, man pages,
# `certfleet-coordinator init` as the service user with the packaged config edited as the
# README says, --help of every subcommand (found by walking the help itself), then dpkg -r
# (config, state and user stay) and dpkg --purge (config and state gone, user stays).
# Prints the time each phase took. The chroot is removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "test-debs.sh: must run as root (debootstrap, chroot)" >&2
    exit 1
fi

t0=$(date +%s)
phase_start=$t0
timings=()
phase() {
    local now
    now=$(date +%s)
    timings+=("$1: $((now - phase_start)) s")
    phase_start=$now
}

# shellcheck source=/dev/null
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
arch=$(dpkg --print-architecture)
mirror=${MIRROR:-http://deb.debian.org/debian}
cache_dir=${CACHE_DIR:-/var/cache/certfleet-tests}
tarball=$cache_dir/debootstrap-$suite-$arch.tgz
rootfs=$cache_dir/debootstrap-$suite-$arch-root.tar.gz

build_args=()
case ${1:-} in
"") ;;
--from-debug) build_args=(--from-debug) ;;
*) echo "test-debs.sh: unknown argument $1 (want nothing or --from-debug)" >&2; exit 2 ;;
esac

if [[ -n ${DEBS:-} ]]; then
    read -r -a debs <<<"$DEBS"
else
    # A failed build fails here (mapfile would not see the exit status).
    built=$(packaging/build-debs.sh "${build_args[@]}")
    mapfile -t debs <<<"$built"
fi
((${#debs[@]} == 2)) || { echo "test-debs.sh: want 2 .debs, got: ${debs[*]}" >&2; exit 1; }
phase "build the packages"

if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
fi
if [[ ! -s $tarball ]]; then
    echo "==> making $tarball (once; from $mirror)"
    mkdir -p "$cache_dir"
    scratch=$(mktemp -d /tmp/certfleet-debootstrap.XXXXXX)
    debootstrap --variant=minbase --include=adduser --make-tarball="$tarball.tmp" \
        "$suite" "$scratch" "$mirror"
    rm -rf --one-file-system "$scratch"
    mv "$tarball.tmp" "$tarball"
fi
# Unmounts what debootstrap or this script mounted under a root, then removes it (never
# across a file system boundary: a mount left behind stays rather than being emptied).
remove_root() {
    local m
    for m in proc sys dev/pts; do
        if mountpoint -q "$1/$m"; then umount "$1/$m"; fi
    done
    rm -rf --one-file-system "$1"
}
# The installed system itself is cached too: debootstrap's second stage (dpkg in the
# chroot) takes minutes on a busy machine, unpacking a tar of its result seconds. Made
# again when the package tarball is newer.
if [[ ! -s $rootfs || $tarball -nt $rootfs ]]; then
    echo "==> making $rootfs (once; debootstrap $suite from $tarball)"
    scratch=$(mktemp -d /tmp/certfleet-debootstrap.XXXXXX)
    chmod 0755 "$scratch"
    if ! debootstrap --variant=minbase --include=adduser --unpack-tarball="$tarball" \
        "$suite" "$scratch" "$mirror" >/dev/null; then
        remove_root "$scratch"
        echo "test-debs.sh: debootstrap from $tarball failed; remove it to fetch it again" >&2
        exit 1
    fi
    for m in proc sys dev/pts; do
        if mountpoint -q "$scratch/$m"; then umount "$scratch/$m"; fi
    done
    rm -f "$scratch"/var/cache/apt/archives/*.deb # the packages installed: not needed again
    tar -C "$scratch" --numeric-owner -czf "$rootfs.tmp" .
    remove_root "$scratch"
    mv "$rootfs.tmp" "$rootfs"
fi

root=$(mktemp -d /tmp/certfleet-debs.XXXXXX)
trap 'remove_root "$root"' EXIT
echo "==> $suite into $root (from $rootfs)"
tar -C "$root" --numeric-owner -xpzf "$rootfs"
chmod 0755 "$root" # the chroot's / (mktemp makes it 0700: no other user could run anything)
mount -t proc proc "$root/proc"
phase "the Debian root from the cached tarball"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_eq() { [[ $1 == "$2" ]] || fail "$3: got '$1', want '$2'"; }
mode_of() { in_root stat -c '%a %U %G' "$1"; }

# Nothing may start a service in the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

mkdir -p "$root/tmp/debs"
cp "${debs[@]}" "$root/tmp/debs/"
echo "==> dpkg -i ${debs[*]##*/}"
in_root sh -c 'dpkg -i /tmp/debs/*.deb'
phase "dpkg -i"

version=$(dpkg-deb -f "${debs[0]}" Version)
expect_eq "$(in_root certfleet-coordinator --version)" "certfleet-coordinator ${version%-*}" "coordinator --version"
expect_eq "$(in_root certfleet-agent --version)" "certfleet-agent ${version%-*}" "agent --version"

# The system user and its directories.
IFS=: read -r _ _ uid _ _ home shell <<<"$(in_root getent passwd certfleet)" || fail "no user certfleet"
((uid < 1000)) || fail "certfleet is not a system user (uid $uid)"
expect_eq "$home" /var/lib/certfleet-coordinator "certfleet's home"
expect_eq "$shell" /usr/sbin/nologin "certfleet's shell"
expect_eq "$(mode_of /var/lib/certfleet-coordinator)" "700 certfleet certfleet" "coordinator state dir"
expect_eq "$(mode_of /var/lib/certfleet-agent)" "700 root root" "agent state dir"
expect_eq "$(mode_of /etc/certfleet/coordinator.toml)" "640 root certfleet" "coordinator config"
expect_eq "$(mode_of /etc/certfleet/agent.toml)" "644 root root" "agent config"
for p in coordinator agent; do
    # shellcheck disable=SC2016 # dpkg-query's own ${field} syntax
    in_root dpkg-query -W -f '${Conffiles}\n' "certfleet-$p" | grep -q "/etc/certfleet/$p.toml" ||
        fail "/etc/certfleet/$p.toml is not a conffile of certfleet-$p"
    unit=/usr/lib/systemd/system/certfleet-$p.service
    grep -qx 'Type=notify' "$root$unit" || fail "$unit: not Type=notify"
    [[ -z $(find "$root/etc/systemd/system" -name "certfleet-$p*" 2>/dev/null) ]] ||
        fail "certfleet-$p: a unit is enabled by the package"
    # Completions load, man pages are gzip'd roff with the right title.
    in_root bash -c "source /usr/share/bash-completion/completions/certfleet-$p && complete -p certfleet-$p" >/dev/null ||
        fail "bash completion of certfleet-$p does not load"
    [[ -s $root/usr/share/zsh/vendor-completions/_certfleet-$p ]] || fail "no zsh completion for certfleet-$p"
    [[ -s $root/usr/share/fish/vendor_completions.d/certfleet-$p.fish ]] || fail "no fish completion for certfleet-$p"
    in_root zcat "/usr/share/man/man1/certfleet-$p.1.gz" | grep -q "^\.TH certfleet-$p 1" ||
        fail "man page of certfleet-$p"
done
# The leave unit (ephemeral VMs): installed, disabled, its ExecStop the packaged binary,
# and nothing of the package's own stops or restarts it but removal (a stop runs `leave`).
leave=/usr/lib/systemd/system/certfleet-agent-leave.service
[[ -f $root$leave ]] || fail "$leave not installed"
grep -qx 'ExecStop=/usr/bin/certfleet-agent --config /etc/certfleet/agent.toml leave --timeout 30s' "$root$leave" ||
    fail "$leave: ExecStop is not the packaged agent's leave"
grep -q '^Requires=' "$root$leave" && fail "$leave: Requires= would restart it (run leave) with the agent"
grep -qx 'Wants=certfleet-agent.service' "$root$leave" || fail "$leave: does not pull in the agent"
for script in postinst preinst; do
    f=$root/var/lib/dpkg/info/certfleet-agent.$script
    if [[ -f $f ]] && grep -E 'deb-systemd-invoke .*(start|restart).*certfleet-agent-leave' "$f"; then
        fail "certfleet-agent.$script starts or restarts the leave unit"
    fi
done
grep -q 'deb-systemd-invoke stop certfleet-agent-leave.service' "$root/var/lib/dpkg/info/certfleet-agent.prerm" ||
    fail "the agent's prerm does not stop the leave unit on removal"
phase "version, user, modes, conffiles, units, completions, man pages"

# --help of every command and subcommand, found from the help itself; each has a man page.
helps=0
walk_help() {
    local out sub
    out=$(in_root "$@" --help) || fail "$* --help"
    grep -q '^Usage: ' <<<"$out" || fail "$* --help printed no usage"
    local page
    page=$(IFS=-; echo "$*")
    [[ -s $root/usr/share/man/man1/$page.1.gz ]] || fail "no man page $page.1.gz"
    helps=$((helps + 1))
    while read -r sub; do
        if [[ -n $sub && $sub != help ]]; then walk_help "$@" "$sub"; fi
    done < <(awk '/^Commands:/{c=1; next} c && /^$/{c=0} c && /^  [a-z]/{print $1}' <<<"$out")
}
walk_help certfleet-coordinator
walk_help certfleet-agent
echo "    --help of $helps commands, each with its man page"
phase "--help of every command"

# The README's first step: set [server] names / ips (what agents dial) and the ACME contact,
# then `init` runs as the service user (as the unit's ExecStartPre does).
sed -i -e 's/^names = \["certfleet.example.net"\]/names = ["coordinator.fleet.test"]/' \
    -e 's/^ips = \["192.0.2.10"\]/ips = ["192.0.2.53"]/' \
    -e 's/ops@example.net/pki@fleet.test/g' "$root/etc/certfleet/coordinator.toml"
grep -q 'coordinator.fleet.test' "$root/etc/certfleet/coordinator.toml" || fail "README edit did not apply"
init_out=$(in_root runuser -u certfleet -- certfleet-coordinator --config /etc/certfleet/coordinator.toml init)
printf '    %s\n' "${init_out//$'\n'/$'\n'    }"
fp=$(sed -n 's/^ca-sha256: //p' <<<"$init_out")
[[ ${#fp} -eq 64 ]] || fail "init printed no ca-sha256"
expect_eq "$(in_root runuser -u certfleet -- certfleet-coordinator ca-fingerprint)" "$fp" "ca-fingerprint"
for f in fleet-ca.key server.key admin.key; do
    expect_eq "$(mode_of "/var/lib/certfleet-coordinator/$f")" "600 certfleet certfleet" "$f"
done
# The server certificate names what the config says.
in_root runuser -u certfleet -- cat /var/lib/certfleet-coordinator/server.pem >"$root/tmp/server.pem"
openssl x509 -in "$root/tmp/server.pem" -noout -ext subjectAltName | grep -q 'DNS:coordinator.fleet.test' ||
    fail "server certificate lacks the configured name"
# A second init refuses to overwrite the fleet CA.
if in_root runuser -u certfleet -- certfleet-coordinator init >/dev/null 2>&1; then
    fail "a second init succeeded over an existing fleet CA"
fi
expect_eq "$(in_root certfleet-agent status)" "not enrolled
session: none yet (the agent has not run)
target nginx: nothing installed" "agent status with the packaged config"
phase "init with the packaged config"

echo "==> dpkg -r"
in_root dpkg -r certfleet-agent certfleet-coordinator >/dev/null
for p in coordinator agent; do
    [[ ! -e $root/usr/bin/certfleet-$p ]] || fail "dpkg -r left /usr/bin/certfleet-$p"
    # shellcheck disable=SC2016 # dpkg-query's own ${field} syntax
    expect_eq "$(in_root dpkg-query -W -f '${Status}' "certfleet-$p")" "deinstall ok config-files" "certfleet-$p after -r"
    [[ -f $root/etc/certfleet/$p.toml ]] || fail "dpkg -r removed the conffile $p.toml"
    [[ -d $root/var/lib/certfleet-$p ]] || fail "dpkg -r removed /var/lib/certfleet-$p"
done
[[ -f $root/var/lib/certfleet-coordinator/fleet-ca.key ]] || fail "dpkg -r removed the fleet CA"
in_root getent passwd certfleet >/dev/null || fail "dpkg -r removed the user"

echo "==> dpkg --purge"
in_root dpkg --purge certfleet-agent certfleet-coordinator >/dev/null
for p in coordinator agent; do
    in_root dpkg-query -W "certfleet-$p" >/dev/null 2>&1 && fail "certfleet-$p still known to dpkg after --purge"
done
left=$(cd "$root" && find . -xdev -path ./proc -prune -o -path ./tmp -prune -o -name '*certfleet*' -print)
[[ -z $left ]] || fail "--purge left: $left"
in_root getent passwd certfleet >/dev/null || fail "--purge removed the system user (Debian keeps it)"
phase "dpkg -r and --purge"

echo "==> packages OK (total $(($(date +%s) - t0)) s)"
printf '    %s\n' "${timings[@]}"
