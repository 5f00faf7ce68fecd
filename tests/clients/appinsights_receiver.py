"""A stand-in for Application Insights' ingestion endpoint (the "track" API), for the
Azure Monitor trace test: accepts `POST /v2/track` (and `/v2.1/track`) with what the Rust
crate opentelemetry-application-insights 0.46 sends (its uploader.rs: `Content-Type:
application/json`, `Content-Encoding: gzip`, a JSON array of envelopes) and appends each
envelope, unchanged, as one JSON line to --out.

It answers as the service does: 200 with `{"itemsReceived": n, "itemsAccepted": n,
"errors": []}` (the crate's `TrackResponse`). Anything else is refused with 400 naming
what is wrong, and the exporter treats a 400 as fatal, so a change in what the crate
sends shows up as envelopes that never arrive. An envelope must have `name`, `time`,
`iKey`, `tags` and `data` with `baseType` and `baseData`, as the crate always writes.

The crate turns any `http://` ingestion endpoint into `https://`, so the tests run this
with --cert/--key (a CA made by the test, trusted by rfleet through `traces.ca_file`).

usage: appinsights_receiver.py --out FILE [--cert PEM --key PEM]
       appinsights_receiver.py --out FILE --self-test
"""

import gzip
import json
import urllib.error
import urllib.request

import jsonl_sink

TRACK_PATHS = ("/v2/track", "/v2.1/track")
ENVELOPE_KEYS = ("name", "time", "iKey", "tags", "data")


def problem(envelopes):
    """What is wrong with a decoded body, or None."""
    if not isinstance(envelopes, list) or not envelopes:
        return "the body is not a non-empty JSON array of envelopes"
    for i, envelope in enumerate(envelopes):
        missing = [k for k in ENVELOPE_KEYS if k not in envelope]
        if missing:
            return f"envelope {i} lacks {missing}"
        if not {"baseType", "baseData"} <= set(envelope["data"]):
            return f"envelope {i}: data lacks baseType or baseData"
    return None


def handler(sink):
    class Receiver(jsonl_sink.Handler):
        def do_POST(self):
            body = jsonl_sink.read_body(self)
            refuse = lambda why: jsonl_sink.answer(self, 400, "text/plain", f"{why}\n".encode())
            if self.path.split("?")[0] not in TRACK_PATHS:
                jsonl_sink.answer(self, 404, "text/plain", b"only /v2/track and /v2.1/track\n")
                return
            if self.headers.get("Content-Encoding", "").lower() != "gzip":
                return refuse("expected Content-Encoding: gzip")
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return refuse("expected Content-Type: application/json")
            try:
                envelopes = json.loads(gzip.decompress(body))
            except (OSError, ValueError) as error:
                return refuse(f"not gzip-encoded JSON: {error}")
            why = problem(envelopes)
            if why:
                return refuse(why)
            sink.write(envelopes)
            n = len(envelopes)
            response = json.dumps({"itemsReceived": n, "itemsAccepted": n, "errors": []}).encode()
            jsonl_sink.answer(self, 200, "application/json", response)

    return Receiver


def self_test(args):
    """Posts a Request and an Exception envelope as the crate writes them, then a body the
    crate would never send, and checks what was kept and answered."""
    server = jsonl_sink.start(handler(jsonl_sink.Sink(args.out)), args, announce=False)
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/track"
    tags = {"ai.operation.id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    envelopes = [
        {"name": "Microsoft.ApplicationInsights.Request", "time": "2026-01-01T00:00:00.000000Z", "sampleRate": 100.0,
         "iKey": "0", "tags": tags, "data": {"baseType": "RequestData", "baseData": {"ver": 2, "id": "1"}}},
        {"name": "Microsoft.ApplicationInsights.Exception", "time": "2026-01-01T00:00:00.000000Z", "iKey": "0",
         "tags": tags, "data": {"baseType": "ExceptionData", "baseData": {"ver": 2, "exceptions": []}}},
    ]
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    post = urllib.request.Request(url, gzip.compress(json.dumps(envelopes).encode()), headers)
    with urllib.request.urlopen(post, timeout=10) as response:
        assert response.status == 200, response.status
        assert json.load(response) == {"itemsReceived": 2, "itemsAccepted": 2, "errors": []}
    for body, hdrs in [(json.dumps(envelopes).encode(), {"Content-Type": "application/json"}),
                       (gzip.compress(b'[{"name": "x"}]'), headers)]:
        try:
            urllib.request.urlopen(urllib.request.Request(url, body, hdrs), timeout=10)
            raise AssertionError(f"accepted {body[:40]!r} with {hdrs}")
        except urllib.error.HTTPError as error:
            assert error.code == 400, error.code
    server.shutdown()
    with open(args.out) as f:
        assert [json.loads(line) for line in f] == envelopes
    print("appinsights_receiver self-test: ok")


if __name__ == "__main__":
    jsonl_sink.main(__doc__, handler, self_test)
