#!/usr/bin/env python3
"""Publish scoring requests straight onto rfleet's Azure Service Bus queue, without HTTP.

The Service Bus twin of publish.py (see docs/protocol.md, "On Azure Service Bus"), with
Microsoft's own client: `pip install azure-servicebus msgpack`. It sends a request to the
model's queue with a deadline (the message's time to live), asks for the reply on a
session of its own of the session-enabled reply queue (`reply_to_session_id`), and prints
the reply as JSON, with the version that scored it as `model_version`.

Unpinned requests go to the model's name queue (`<prefix><model>`); `--model-version V`
pins version V and sends to that version's queue (`<prefix><model>/V`).

    export RFLEET_SERVICEBUS='Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...'
    python3 publish_servicebus.py --model mtcars --rows '[{"wt": 2.62, "hp": 110, "cyl": 6, "gear": "4"}]'
"""
import argparse
import datetime
import json
import os
import re
import sys
import time
import uuid

from azure.servicebus import ServiceBusClient, ServiceBusMessage

import rfleet_request


def entity_name(prefix, model, version):
    """The queue of `model` (at `version`), as rfleet names it on Service Bus: `/` before the
    version, and `_` for any character Service Bus does not take in an entity name."""
    name = prefix + model + ("" if version is None else "/" + version)
    return re.sub(r"[^A-Za-z0-9._/-]", "_", name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connection-string",
        default=os.environ.get("RFLEET_SERVICEBUS"),
        help="the namespace's connection string (default: $RFLEET_SERVICEBUS)",
    )
    parser.add_argument("--reply-queue", default="rfleet.replies", help="the session-enabled reply queue")
    rfleet_request.add_arguments(parser)
    args = parser.parse_args()
    if not args.connection_string:
        parser.error("give --connection-string or set RFLEET_SERVICEBUS")

    request = rfleet_request.Request(args)
    queue = entity_name(args.queue_prefix, args.model, args.model_version)
    session_id = str(uuid.uuid4())
    give_up = time.time() + args.timeout
    with ServiceBusClient.from_connection_string(args.connection_string) as client:
        # The session is ours for as long as the receiver is open: open it first.
        with client.get_queue_receiver(args.reply_queue, session_id=session_id) as replies:
            message = ServiceBusMessage(
                request.body,
                correlation_id=request.correlation_id,
                reply_to=args.reply_queue,
                reply_to_session_id=session_id,
                content_type=request.content_type,
                time_to_live=datetime.timedelta(milliseconds=request.remaining_ms()),
            )
            with client.get_queue_sender(queue) as sender:
                sender.send_messages(message)
            while time.time() < give_up:
                wait = max(1, int(give_up - time.time()))
                for reply in replies.receive_messages(max_message_count=1, max_wait_time=wait):
                    replies.complete_message(reply)
                    if reply.correlation_id != request.correlation_id:
                        continue  # a late reply to an earlier request of this session
                    body = rfleet_request.decode(reply.content_type, b"".join(reply.body))
                    print(rfleet_request.summary(reply.content_type, queue, body))
                    return 0
    print(json.dumps({"error": "no reply within %.1f s" % args.timeout}))
    return 2


if __name__ == "__main__":
    sys.exit(main())
