#!/bin/sh
# certfleet-bootstrap.sh: a new VM from its first boot to its first certificate. cloud-init
# runs it (user-data.yaml + this script as one MIME user-data, see README.md); the e2e
# test runs the same file on a network-namespace host (tests/tests/e2e/bootstrap.rs).
#
#   1. install the agent package
#   2. give the web server a placeholder certificate if it has none (it needs one to start)
#   3. start the web server and the agent daemon (not enrolled yet: it waits for that)
#   4. `certfleet-agent enroll --wait`: join the fleet with the token, then wait until the
#      daemon has installed the host's first certificate and seen it served
#   5. remove the token, start the VM's own service
# A failing step stops the script (non-zero), so the service is never started without
# its certificate. Running it again (cloud-init re-runs) is safe: the package is there,
# the host is enrolled ("already enrolled", no token needed), the certificate served.
#
# Settings, from the environment or from $CERTFLEET_BOOTSTRAP_ENV (default
# /etc/certfleet/bootstrap.env, which user-data.yaml writes):
#   CERTFLEET_COORDINATOR    https://HOST:PORT the agents dial (comma list for several)
#   CERTFLEET_CA_SHA256      the fleet CA's SHA-256 (`certfleet-coordinator ca-fingerprint`)
#   CERTFLEET_TOKEN_FILE     the join token, 0600 (default /etc/certfleet/join-token)
#   CERTFLEET_LABELS         labels to ask for, "k=v k=v" (a token that fixes labels
#                            refuses any it does not fix: usually leave it empty)
#   CERTFLEET_NAME           the name operators see (default: hostname)
#   CERTFLEET_WAIT_TIMEOUT   give up after (default 5m)
#   CERTFLEET_AGENT_CONFIG   the agent's config (default /etc/certfleet/agent.toml)
#   CERTFLEET_WEB_CERT, CERTFLEET_WEB_KEY   the files of the agent target the web server
#                            reads (default /etc/ssl/certfleet/web/{fullchain,privkey}.pem)
#   CERTFLEET_AGENT_DEB      the package to install: a path to the .deb that
#                            packaging/build-debs.sh makes, or `certfleet-agent` from your
#                            apt repository (default /var/cache/certfleet/certfleet-agent.deb)
#   CERTFLEET_AGENT_DEB_URL  if set, the .deb is downloaded from there first
#
# The four commands below are the only lines the e2e test replaces, because a namespace
# host has neither apt nor systemd: CERTFLEET_INSTALL_AGENT, CERTFLEET_START_WEB,
# CERTFLEET_START_AGENT, CERTFLEET_START_SERVICE. Everything else runs as written.
set -eu

env_file=${CERTFLEET_BOOTSTRAP_ENV:-/etc/certfleet/bootstrap.env}
if [ -r "$env_file" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$env_file"
    set +a
fi

: "${CERTFLEET_COORDINATOR:?set CERTFLEET_COORDINATOR=https://HOST:PORT (in $env_file)}"
: "${CERTFLEET_CA_SHA256:?set CERTFLEET_CA_SHA256 to the output of certfleet-coordinator ca-fingerprint (in $env_file)}"
CERTFLEET_TOKEN_FILE=${CERTFLEET_TOKEN_FILE:-/etc/certfleet/join-token}
CERTFLEET_LABELS=${CERTFLEET_LABELS:-}
CERTFLEET_NAME=${CERTFLEET_NAME:-$(hostname)}
CERTFLEET_WAIT_TIMEOUT=${CERTFLEET_WAIT_TIMEOUT:-5m}
CERTFLEET_AGENT_CONFIG=${CERTFLEET_AGENT_CONFIG:-/etc/certfleet/agent.toml}
CERTFLEET_WEB_CERT=${CERTFLEET_WEB_CERT:-/etc/ssl/certfleet/web/fullchain.pem}
CERTFLEET_WEB_KEY=${CERTFLEET_WEB_KEY:-/etc/ssl/certfleet/web/privkey.pem}
CERTFLEET_AGENT_DEB=${CERTFLEET_AGENT_DEB:-/var/cache/certfleet/certfleet-agent.deb}
CERTFLEET_AGENT_DEB_URL=${CERTFLEET_AGENT_DEB_URL:-}
export CERTFLEET_AGENT_CONFIG

# The replaceable commands (see above); single quotes: expanded when they run.
# shellcheck disable=SC2016
CERTFLEET_INSTALL_AGENT=${CERTFLEET_INSTALL_AGENT:-'DEBIAN_FRONTEND=noninteractive apt-get install -y "$CERTFLEET_AGENT_DEB"'}
CERTFLEET_START_WEB=${CERTFLEET_START_WEB:-'systemctl reload-or-restart nginx'}
CERTFLEET_START_AGENT=${CERTFLEET_START_AGENT:-'systemctl enable --now certfleet-agent'}
CERTFLEET_START_SERVICE=${CERTFLEET_START_SERVICE:-'systemctl start app.service'}

step() { echo "certfleet-bootstrap: $*" >&2; }

step "1/5 installing the agent package"
if [ -n "$CERTFLEET_AGENT_DEB_URL" ]; then
    mkdir -p "$(dirname "$CERTFLEET_AGENT_DEB")"
    curl -fsSL --retry 5 -o "$CERTFLEET_AGENT_DEB" "$CERTFLEET_AGENT_DEB_URL"
fi
eval "$CERTFLEET_INSTALL_AGENT"

if [ -s "$CERTFLEET_WEB_CERT" ] && [ -s "$CERTFLEET_WEB_KEY" ]; then
    step "2/5 the web server has a certificate already"
else
    step "2/5 a placeholder certificate for the web server, until the first real one"
    mkdir -p "$(dirname "$CERTFLEET_WEB_CERT")" "$(dirname "$CERTFLEET_WEB_KEY")"
    (
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=certfleet placeholder" \
            -keyout "$CERTFLEET_WEB_KEY" -out "$CERTFLEET_WEB_CERT" 2>/dev/null
    )
    chmod 0644 "$CERTFLEET_WEB_CERT"
fi

step "3/5 starting the web server and the agent (it waits to be enrolled)"
eval "$CERTFLEET_START_WEB"
eval "$CERTFLEET_START_AGENT"

step "4/5 enrolling, then waiting for the first certificate (up to $CERTFLEET_WAIT_TIMEOUT)"
set --
for label in $CERTFLEET_LABELS; do
    set -- "$@" --label "$label"
done
token=
if [ -r "$CERTFLEET_TOKEN_FILE" ]; then
    token=$(cat "$CERTFLEET_TOKEN_FILE")
fi
# The token goes by the environment, not the command line (which others can read).
CERTFLEET_JOIN_TOKEN=$token certfleet-agent enroll \
    --coordinator "$CERTFLEET_COORDINATOR" --ca-sha256 "$CERTFLEET_CA_SHA256" \
    --name "$CERTFLEET_NAME" "$@" --wait --timeout "$CERTFLEET_WAIT_TIMEOUT"
rm -f "$CERTFLEET_TOKEN_FILE"

step "5/5 starting the service"
eval "$CERTFLEET_START_SERVICE"
step "done"
