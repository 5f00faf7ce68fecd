#!/usr/bin/env python3
"""An OTLP/HTTP trace sink for benchmarks: takes every POST /v1/traces, answers 200 with an
empty ExportTraceServiceResponse (an empty protobuf message is zero bytes) and counts the
requests and bytes, written to the file given as argv[2] at exit (SIGTERM). It decodes
nothing, so it costs the benchmarked machine as little as a collector on another machine
would. Prints its port on the first line of stdout; argv[1] is the port (0: any)."""
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        counts["requests"] += 1
        counts["bytes"] += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        with open(sys.argv[2], "w") as out:
            json.dump(counts, out)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
