"""What rfleet's example publishers share (docs/protocol.md): a request with a typed frame
from JSON rows, its encoding, and the reply decoded and summed up as JSON."""
import json
import time
import uuid

import msgpack

MSGPACK = "application/msgpack"
JSON = "application/json"


def column(name, values):
    """One typed column from JSON values: strings become `str`, integers `i32`, other
    numbers `f64`, booleans `bool`; None is a missing value."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        kind = "bool"
    elif all(isinstance(v, str) for v in present):
        kind = "str"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        kind = "i32"
    else:
        kind = "f64"
        values = [None if v is None else float(v) for v in values]
    return {"name": name, "type": kind, "values": values}


def frame(rows):
    names = []
    for row in rows:
        for key in row:
            if key not in names:
                names.append(key)
    return {"n_rows": len(rows), "columns": [column(n, [row.get(n) for row in rows]) for n in names]}


def add_arguments(parser):
    """The options every example publisher takes."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--queue-prefix", default="rfleet.model.")
    parser.add_argument("--rows", required=True, help="JSON array of row objects")
    parser.add_argument("--type", default=None, help="predict's type, e.g. prob")
    parser.add_argument("--content-type", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--deadline-ms", type=int, default=None, help="absolute deadline (default: now + timeout)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    parser.add_argument("--version", type=int, default=1, help="protocol version to claim")
    parser.add_argument(
        "--model-version",
        default=None,
        help="pin this version of the model: sets model_version and publishes to its version queue",
    )
    parser.add_argument("--raw-body", default=None, help="publish these bytes as is (for testing poison messages)")


class Request:
    """The request the options describe: its id, deadline, body and content type."""

    def __init__(self, args):
        self.correlation_id = str(uuid.uuid4())
        self.deadline_ms = args.deadline_ms or int(time.time() * 1000 + args.timeout * 1000)
        request = {
            "version": args.version,
            "id": self.correlation_id,
            "model": args.model,
            "model_version": args.model_version,
            "deadline_ms": self.deadline_ms,
            "options": {"type": args.type},
            "input": {"frame": frame(json.loads(args.rows))},
        }
        self.content_type = JSON if args.content_type == "json" else MSGPACK
        if args.raw_body is not None:
            self.body = args.raw_body.encode()
        elif self.content_type == JSON:
            self.body = json.dumps(request).encode()
        else:
            self.body = msgpack.packb(request)

    def remaining_ms(self):
        return max(1, self.deadline_ms - int(time.time() * 1000))


def decode(content_type, body):
    return json.loads(body) if content_type == JSON else msgpack.unpackb(body)


def summary(content_type, queue, body):
    """What a publisher prints: the reply with the version that scored it."""
    timings = body.get("timings") if isinstance(body, dict) else None
    return json.dumps(
        {
            "content_type": content_type,
            "queue": queue,
            # The version that scored it (None for an unversioned model or an older worker).
            "model_version": (timings or {}).get("model_version"),
            "reply": body,
        },
        default=str,
    )
