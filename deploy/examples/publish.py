#!/usr/bin/env python3
"""Publish scoring requests straight onto rfleet's RabbitMQ queue, without HTTP.

An example for other systems (see docs/protocol.md): it builds a request with a typed
frame from JSON rows, publishes it to the model's queue with a reply queue and a
deadline, and prints the reply as JSON, with the version that scored it
(`timings.model_version`) as `model_version`. Needs `pip install pika msgpack`.

Unpinned requests go to the model's name queue (`<prefix><model>`), where a worker scores
them with the highest version it holds; `--model-version V` pins version V and publishes
to that version's queue (`<prefix><model>@V`), which only workers holding V consume.

    python3 publish.py --model mtcars --rows '[{"wt": 2.62, "hp": 110, "cyl": 6, "gear": "4"}]'
    python3 publish.py --model mtcars --model-version 2 --rows '...'
    python3 publish.py --model mtcars --content-type json --rows '...'
"""
import argparse
import json
import sys
import time
import uuid

import msgpack
import pika


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--model", required=True)
    parser.add_argument("--queue-prefix", default="rfleet.model.")
    parser.add_argument("--rows", required=True, help="JSON array of row objects")
    parser.add_argument("--type", default=None, help="predict's type, e.g. prob")
    parser.add_argument("--content-type", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--direct-reply-to", action="store_true", help="use amq.rabbitmq.reply-to")
    parser.add_argument("--deadline-ms", type=int, default=None, help="absolute deadline (default: now + timeout)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    parser.add_argument("--version", type=int, default=1, help="protocol version to claim")
    parser.add_argument(
        "--model-version",
        default=None,
        help="pin this version of the model: sets model_version and publishes to its version queue",
    )
    parser.add_argument("--raw-body", default=None, help="publish these bytes as is (for testing poison messages)")
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    if args.direct_reply_to:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue

    correlation_id = str(uuid.uuid4())
    deadline_ms = args.deadline_ms or int(time.time() * 1000 + args.timeout * 1000)
    request = {
        "version": args.version,
        "id": correlation_id,
        "model": args.model,
        "model_version": args.model_version,
        "deadline_ms": deadline_ms,
        "options": {"type": args.type},
        "input": {"frame": frame(json.loads(args.rows))},
    }
    if args.raw_body is not None:
        body = args.raw_body.encode()
    elif args.content_type == "json":
        body = json.dumps(request).encode()
    else:
        body = msgpack.packb(request)

    reply = {}

    def on_reply(ch, method, properties, reply_body):
        if properties.correlation_id != correlation_id:
            return  # a late reply to someone else's request
        if properties.content_type == "application/json":
            reply["body"] = json.loads(reply_body)
        else:
            reply["body"] = msgpack.unpackb(reply_body)
        reply["content_type"] = properties.content_type

    # Direct reply-to needs the consumer before the publish.
    channel.basic_consume(queue=reply_to, on_message_callback=on_reply, auto_ack=True)
    remaining_ms = max(1, deadline_ms - int(time.time() * 1000))
    # A pinned request goes to its version's queue: on the name queue it could reach a
    # worker that holds another version, which answers it model_not_found.
    queue = args.queue_prefix + args.model
    if args.model_version is not None:
        queue += "@" + args.model_version
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=body,
        properties=pika.BasicProperties(
            correlation_id=correlation_id,
            reply_to=reply_to,
            content_type="application/json" if args.content_type == "json" else "application/msgpack",
            expiration=str(remaining_ms),
        ),
    )
    give_up = time.time() + args.timeout
    while "body" not in reply and time.time() < give_up:
        connection.process_data_events(time_limit=0.1)
    connection.close()
    if "body" not in reply:
        print(json.dumps({"error": "no reply within %.1f s" % args.timeout}))
        return 2
    body = reply["body"]
    timings = body.get("timings") if isinstance(body, dict) else None
    answered = {
        "content_type": reply["content_type"],
        "queue": queue,
        # The version that scored it (None for an unversioned model or an older worker).
        "model_version": (timings or {}).get("model_version"),
        "reply": body,
    }
    print(json.dumps(answered, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
