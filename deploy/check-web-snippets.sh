#!/usr/bin/env bash
# Checks the HTTP-01 snippets in deploy/nginx/ and deploy/apache/ against the real web
# servers on this machine (whichever of nginx and apache2 are installed): each snippet is
# included in a throwaway port-"80" server that redirects everything else to https, the
# config must pass the server's own syntax check, and then, with the server running on
# 127.0.0.1 and a free port:
#   webroot: a token file under the webroot is served with 200 and its content;
#   proxy:   the challenge path reaches a stand-in agent (python3 http.server) on the
#            snippet's listen port, also right after it was down (Apache: retry=0);
#   both:    the challenge path is not redirected, everything else is (301).
# And the TLS-ALPN-01 front (deploy/nginx/acme-tls-alpn.conf, nginx's stream module): a
# handshake offering ALPN acme-tls/1 reaches a stand-in agent (openssl s_server), h2 and
# http/1.1 handshakes reach the web server's TLS listener (and its page), and acme-tls/1
# while the agent is down gets no handshake at all.
# Run as root or as a user who may start the servers. Touches nothing outside a temp dir.
# Usage: deploy/check-web-snippets.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
chmod 0755 "$tmp" # the servers' workers (nobody) read token files below it
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

fails=0
token="certfleet_check_0123456789abcdef"
key_auth="$token.thumbprint"
ok() { echo "ok   $*"; }
fail() {
	echo "FAIL $*"
	fails=$((fails + 1))
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host port
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# expect NAME URL STATUS [BODY]: status (and body) of a GET without following redirects.
expect() {
	local name="$1" url="$2" want="$3" want_body="${4-}" out status body
	out="$(curl -s -o "$tmp/body" -w '%{http_code} %{redirect_url}' --max-time 5 "$url" || true)"
	status="${out%% *}"
	body="$(cat "$tmp/body" 2>/dev/null || true)"
	if [[ "$status" != "$want" ]]; then
		fail "$name: $url answered $out, want $want"
	elif [[ -n "$want_body" && "$body" != "$want_body" ]]; then
		fail "$name: $url body ${body:0:80}, want $want_body"
	else
		ok "$name: $url → $out"
	fi
}

# snippet SRC DEST WEBROOT LISTEN: the snippet with our temp webroot and listen address.
snippet() {
	sed -e "s#/var/www/certfleet#$3#g" -e "s#127.0.0.1:8402#$4#g" "$1" >"$2"
}

webroot="$tmp/www"
mkdir -p "$webroot/.well-known/acme-challenge"
chmod -R 0755 "$webroot"
printf '%s' "$key_auth" >"$webroot/.well-known/acme-challenge/$token"
chmod 0644 "$webroot/.well-known/acme-challenge/$token"

# A stand-in for the agent in proxy mode: serves the same token file.
start_backend() { # port
	python3 -m http.server "$1" --bind 127.0.0.1 --directory "$webroot" >/dev/null 2>&1 &
	backend=$!
	pids+=("$backend")
	wait_port 127.0.0.1 "$1" || fail "stand-in agent did not start on $1"
}
stop_backend() { kill "$backend" 2>/dev/null || true; wait "$backend" 2>/dev/null || true; }

check_running() { # name port mode backend_port status_while_the_agent_is_down
	local name="$1" port="$2" mode="$3" bport="$4" down="$5"
	local base="http://127.0.0.1:$port"
	if [[ "$mode" == proxy ]]; then
		# Between challenges the agent does not listen; the next challenge must still
		# get through at once (older Apache releases hold a failed backend down for 60 s
		# unless retry=0).
		expect "$name agent not listening" "$base/.well-known/acme-challenge/$token" "$down"
		start_backend "$bport"
	fi
	expect "$name challenge" "$base/.well-known/acme-challenge/$token" 200 "$key_auth"
	expect "$name unknown token" "$base/.well-known/acme-challenge/unknown_token_0000000000" 404
	expect "$name other paths redirect" "$base/index.html" 301
	[[ "$mode" == proxy ]] && stop_backend
	return 0
}

run_nginx() { # mode
	local mode="$1" dir="$tmp/nginx-$1" port bport
	port="$(free_port)"
	bport="$(free_port)"
	mkdir -p "$dir/logs"
	snippet "$here/nginx/acme-$mode.conf" "$dir/snippet.conf" "$webroot" "127.0.0.1:$bport"
	cat >"$dir/nginx.conf" <<-EOF
		daemon off;
		pid $dir/nginx.pid;
		error_log $dir/logs/error.log warn;
		events { worker_connections 64; }
		http {
		    access_log off;
		    client_body_temp_path $dir/body;
		    proxy_temp_path $dir/proxy;
		    server {
		        listen 127.0.0.1:$port default_server;
		        include $dir/snippet.conf;
		        location ~ /\. { deny all; }
		        location / { return 301 https://\$host\$request_uri; }
		    }
		}
	EOF
	if ! nginx -t -q -p "$dir" -c "$dir/nginx.conf"; then
		fail "nginx -t with deploy/nginx/acme-$mode.conf"
		return
	fi
	ok "nginx -t with deploy/nginx/acme-$mode.conf"
	nginx -p "$dir" -c "$dir/nginx.conf" &
	pids+=($!)
	local pid=$!
	if ! wait_port 127.0.0.1 "$port"; then
		fail "nginx did not start with deploy/nginx/acme-$mode.conf:"
		cat "$dir/logs/error.log"
		return
	fi
	check_running "nginx/$mode" "$port" "$mode" "$bport" 502
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

run_apache() { # mode
	local mode="$1" dir="$tmp/apache-$1" port bport m redirect
	port="$(free_port)"
	bport="$(free_port)"
	mkdir -p "$dir/htdocs"
	snippet "$here/apache/acme-$mode.conf" "$dir/snippet.conf" "$webroot" "127.0.0.1:$bport"
	# webroot: a mod_rewrite redirect after the snippet; proxy: the RedirectMatch the
	# snippet's comment recommends instead of `Redirect /`.
	if [[ "$mode" == webroot ]]; then
		redirect='RewriteEngine On
    RewriteRule ^/(.*)$ https://%{HTTP_HOST}/$1 [R=301,L]'
	else
		redirect='RedirectMatch 301 ^/(?!\.well-known/acme-challenge/)(.*)$ https://127.0.0.1/$1'
	fi
	{
		echo "ServerRoot $dir"
		echo "Listen 127.0.0.1:$port"
		echo "PidFile $dir/httpd.pid"
		echo "ErrorLog $dir/error.log"
		echo "Mutex file:$dir default"
		echo "ServerName localhost"
		echo "User nobody"
		echo "Group nogroup"
		for m in mpm_event authz_core alias rewrite proxy proxy_http mime; do
			echo "LoadModule ${m}_module /usr/lib/apache2/modules/mod_$m.so"
		done
		echo "TypesConfig /dev/null"
		echo "DocumentRoot $dir/htdocs"
		echo "<VirtualHost 127.0.0.1:$port>"
		echo "    Include $dir/snippet.conf"
		echo "    $redirect"
		echo "</VirtualHost>"
	} >"$dir/httpd.conf"
	if ! apache2 -t -f "$dir/httpd.conf" 2>"$dir/t.log"; then
		cat "$dir/t.log"
		fail "apache2 -t with deploy/apache/acme-$mode.conf"
		return
	fi
	ok "apache2 -t with deploy/apache/acme-$mode.conf"
	apache2 -f "$dir/httpd.conf" -DFOREGROUND &
	pids+=($!)
	local pid=$!
	# Apache opens its port before its modules finish starting: check it stayed up.
	if ! wait_port 127.0.0.1 "$port" || ! sleep 0.3 || ! kill -0 "$pid" 2>/dev/null; then
		fail "apache2 did not start with deploy/apache/acme-$mode.conf:"
		cat "$dir/error.log"
		return
	fi
	check_running "apache/$mode" "$port" "$mode" "$bport" 503
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# tls_subject PORT ALPN: the subject of the certificate a handshake offering ALPN gets,
# and the negotiated protocol ("subject=CN = x|acme-tls/1"); empty when no handshake.
tls_subject() {
	local out subject alpn
	out="$(openssl s_client -connect "127.0.0.1:$1" -servername 1.0.0.127.in-addr.arpa \
		-alpn "$2" </dev/null 2>/dev/null)" || true
	subject="$(grep -m1 '^subject=' <<<"$out" || true)"
	alpn="$(grep -m1 -o 'ALPN protocol: .*' <<<"$out" | sed 's/ALPN protocol: //' || true)"
	[[ -n "$subject" ]] && echo "${subject// /}|$alpn"
	return 0
}

run_nginx_alpn() {
	local dir="$tmp/nginx-alpn" port aport wport got pid standin modules
	port="$(free_port)"
	aport="$(free_port)"
	wport="$(free_port)"
	mkdir -p "$dir/logs"
	for who in web agent; do
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
			-subj "/CN=$who-standin" -keyout "$dir/$who.key" -out "$dir/$who.pem" 2>/dev/null
	done
	sed -e "s#listen 443;#listen 127.0.0.1:$port;#" -e "/listen \[::\]:443;/d" \
		-e "s#127.0.0.1:8443#127.0.0.1:$aport#" -e "s#127.0.0.1:8444#127.0.0.1:$wport#" \
		"$here/nginx/acme-tls-alpn.conf" >"$dir/snippet.conf"
	# Debian builds the stream module as a dynamic module (libnginx-mod-stream).
	modules=""
	if ! nginx -V 2>&1 | grep -q -- '--with-stream '; then
		for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
			[[ -f "$m" ]] && modules="load_module $m;" && break
		done
		if [[ -z "$modules" ]]; then
			fail "nginx/tls-alpn: no stream module (Debian: apt install libnginx-mod-stream)"
			return
		fi
	fi
	cat >"$dir/nginx.conf" <<-EOF
		$modules
		daemon off;
		pid $dir/nginx.pid;
		error_log $dir/logs/error.log warn;
		events { worker_connections 64; }
		include $dir/snippet.conf;
		http {
		    access_log off;
		    client_body_temp_path $dir/body;
		    server {
		        listen 127.0.0.1:$wport ssl http2;
		        ssl_certificate $dir/web.pem;
		        ssl_certificate_key $dir/web.key;
		        location / { return 200 "web server\n"; }
		    }
		}
	EOF
	if ! nginx -t -q -p "$dir" -c "$dir/nginx.conf"; then
		fail "nginx -t with deploy/nginx/acme-tls-alpn.conf"
		return
	fi
	ok "nginx -t with deploy/nginx/acme-tls-alpn.conf"
	nginx -p "$dir" -c "$dir/nginx.conf" &
	pid=$!
	pids+=("$pid")
	if ! wait_port 127.0.0.1 "$port"; then
		fail "nginx did not start with deploy/nginx/acme-tls-alpn.conf:"
		cat "$dir/logs/error.log"
		return
	fi
	got="$(tls_subject "$port" acme-tls/1)"
	if [[ -z "$got" ]]; then
		ok "nginx/tls-alpn: acme-tls/1 with the agent down gets no handshake"
	else
		fail "nginx/tls-alpn: acme-tls/1 with the agent down got $got"
	fi
	openssl s_server -quiet -accept "127.0.0.1:$aport" -alpn acme-tls/1 \
		-cert "$dir/agent.pem" -key "$dir/agent.key" </dev/null >/dev/null 2>&1 &
	standin=$!
	pids+=("$standin")
	wait_port 127.0.0.1 "$aport" || fail "stand-in agent did not start on $aport"
	for case in "acme-tls/1|subject=CN=agent-standin|acme-tls/1" \
		"h2,http/1.1|subject=CN=web-standin|h2" "http/1.1|subject=CN=web-standin|http/1.1"; do
		local alpn="${case%%|*}" want="${case#*|}"
		got="$(tls_subject "$port" "$alpn")"
		if [[ "$got" == "$want" ]]; then
			ok "nginx/tls-alpn: ALPN $alpn → ${want%%|*}"
		else
			fail "nginx/tls-alpn: ALPN $alpn got '$got', want '$want'"
		fi
	done
	got="$(curl -sk --max-time 5 "https://127.0.0.1:$port/" || true)"
	if [[ "$got" == "web server" ]]; then
		ok "nginx/tls-alpn: https page through the front"
	else
		fail "nginx/tls-alpn: https page through the front: '$got'"
	fi
	kill "$standin" "$pid" 2>/dev/null || true
	wait "$standin" "$pid" 2>/dev/null || true
}

if command -v nginx >/dev/null; then
	for mode in webroot proxy; do run_nginx "$mode"; done
	run_nginx_alpn
else
	echo "skip nginx (not installed)"
fi
if command -v apache2 >/dev/null; then
	for mode in webroot proxy; do run_apache "$mode"; done
else
	echo "skip apache2 (not installed)"
fi

if ((fails > 0)); then
	echo "$fails check(s) failed"
	exit 1
fi
echo "all snippet checks passed"
