"""A loopback HTTP(S) server that appends what it receives to a JSON-lines file: what the
telemetry receivers (otlp_receiver.py, appinsights_receiver.py) are built on.

The server binds 127.0.0.1 on a port the kernel picks and prints that port alone as the
first line of stdout (the Rust tests read it), then serves until killed. With a
certificate and key it speaks HTTPS (Application Insights' exporter only speaks HTTPS).
Each record is written as one line and flushed at once, so a test polling the file never
reads half a batch.
"""

import argparse
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink:
    """The output file, appended to one whole line at a time by the handler threads."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, records):
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with self.lock:
            self.file.write(lines)
            self.file.flush()


def arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="the JSON-lines file to append records to")
    parser.add_argument("--cert", help="PEM certificate: serve HTTPS")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--self-test", action="store_true", help="check the receiver against a client and exit")
    return parser.parse_args()


def read_body(handler):
    """The request body (Content-Length or chunked)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0")))


def answer(handler, status, content_type, body):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def start(handler_class, args, announce=True):
    """Binds, wraps in TLS when asked, prints the port and serves on a thread; returns the
    server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    if announce:
        print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 (the exporters reuse connections) and no access log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def main(doc, handler, self_test):
    """A receiver's command line: `--self-test`, or serve with `handler(sink)` until killed."""
    args = arguments(doc.splitlines()[0])
    if args.self_test:
        self_test(args)
        return
    server = start(handler(Sink(args.out)), args)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
        sys.exit(0)
