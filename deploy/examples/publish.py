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

import pika

import rfleet_request


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--direct-reply-to", action="store_true", help="use amq.rabbitmq.reply-to")
    rfleet_request.add_arguments(parser)
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    if args.direct_reply_to:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue

    request = rfleet_request.Request(args)
    reply = {}

    def on_reply(ch, method, properties, reply_body):
        if properties.correlation_id != request.correlation_id:
            return  # a late reply to someone else's request
        reply["body"] = rfleet_request.decode(properties.content_type, reply_body)
        reply["content_type"] = properties.content_type

    # Direct reply-to needs the consumer before the publish.
    channel.basic_consume(queue=reply_to, on_message_callback=on_reply, auto_ack=True)
    # A pinned request goes to its version's queue: on the name queue it could reach a
    # worker that holds another version, which answers it model_not_found.
    queue = args.queue_prefix + args.model
    if args.model_version is not None:
        queue += "@" + args.model_version
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=request.body,
        properties=pika.BasicProperties(
            correlation_id=request.correlation_id,
            reply_to=reply_to,
            content_type=request.content_type,
            expiration=str(request.remaining_ms()),
        ),
    )
    give_up = time.time() + args.timeout
    while "body" not in reply and time.time() < give_up:
        connection.process_data_events(time_limit=0.1)
    connection.close()
    if "body" not in reply:
        print(json.dumps({"error": "no reply within %.1f s" % args.timeout}))
        return 2
    print(rfleet_request.summary(reply["content_type"], queue, reply["body"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
