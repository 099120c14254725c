#!/usr/bin/env python3
"""Serves acme2certifier's WSGI `application` over TLS for the certfleet e2e tests.

acme2certifier's own launcher serves plain HTTP on 0.0.0.0:80. This one serves HTTPS on
the address and port given, one thread per connection (the TLS handshake happens in that
thread, so a slow client cannot stall the accept loop), and sets `HTTPS=on` so the URLs
acme2certifier hands out are https ones.

Usage: python a2c_serve.py --host 127.0.0.1 --port PORT --cert CERT.pem --key KEY.pem
The acme2certifier config comes from $ACME_SRV_CONFIGFILE (read on import).
Run it with the venv's python; it prints `a2c-serve: listening on https://HOST:PORT`
once the socket is bound.
"""

import argparse
import socketserver
import ssl
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HANDSHAKE_TIMEOUT_SECS = 10


class TlsRequestHandler(WSGIRequestHandler):
    def get_environ(self):
        env = super().get_environ()
        env["HTTPS"] = "on"
        return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)

    class ThreadedTlsServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 64

        def finish_request(self, request, client_address):
            # Runs in the connection's own thread.
            request.settimeout(HANDSHAKE_TIMEOUT_SECS)
            try:
                tls = ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as err:
                sys.stderr.write(f"a2c-serve: TLS handshake with {client_address} failed: {err}\n")
                return
            tls.settimeout(60)
            try:
                super().finish_request(tls, client_address)
            finally:
                try:
                    tls.close()
                except OSError:
                    pass

    # Imported after argument parsing: importing reads $ACME_SRV_CONFIGFILE and opens the
    # database.
    from acme2certifier.share.acme2certifier_wsgi import application

    httpd = make_server(
        args.host,
        args.port,
        application,
        server_class=ThreadedTlsServer,
        handler_class=TlsRequestHandler,
    )
    print(f"a2c-serve: listening on https://{args.host}:{args.port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
