"""Checks the Service Bus stand-in with Microsoft's own client, azure-servicebus 7.14.2.

Usage: python3 check_with_azure_sdk.py CONNECTION_STRING LOCK_DURATION_SECS

The stand-in must have these queues (tests/servicebus/tests/azure_sdk.rs creates them):
  orders    lock LOCK_DURATION_SECS, 10 deliveries
  retries   max delivery count 2
  expiring  dead-letters expired messages
  dropping  drops expired messages
  sessions  requires sessions, lock LOCK_DURATION_SECS

Prints one JSON object on stdout: {"sdk": VERSION, "checks": {NAME: "ok" | "failed: WHY"}}.
Each check names what failed; the exit status is 0 whenever the verdict was printed.
"""

import datetime
import json
import sys
import time
import traceback

import azure.servicebus
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    ServiceBusAuthenticationError,
    ServiceBusError,
    SessionCannotBeLockedError,
)

# How long a receive that must come back empty waits: the stand-in delivers within its
# 50 ms tick, so this is ample.
EMPTY_WAIT_SECS = 0.5


class CheckFailed(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise CheckFailed(what)


def receive_one(receiver, wait=5):
    messages = receiver.receive_messages(max_message_count=1, max_wait_time=wait)
    expect(len(messages) == 1, f"expected one message, received {len(messages)}")
    return messages[0]


def expect_empty(receiver, what):
    messages = receiver.receive_messages(max_message_count=1, max_wait_time=EMPTY_WAIT_SECS)
    expect(not messages, f"{what}: received {[str(m) for m in messages]}")


def wait_past(instant, limit_secs=30):
    """Waits until the wall clock has passed INSTANT (an aware datetime, e.g. a lock's end):
    the condition a lock test needs, looked at every 50 ms, for at most LIMIT_SECS."""
    give_up = time.monotonic() + limit_secs
    while datetime.datetime.now(datetime.timezone.utc) <= instant:
        expect(time.monotonic() < give_up, f"the clock did not pass {instant} within {limit_secs} s")
        time.sleep(0.05)


def expect_dead_letter(client, queue, message_id, reason, description=None, delivery_count=None):
    """Receives the one message of QUEUE's $DeadLetterQueue, checks it and completes it."""
    with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = receive_one(dlq)
        expect(dead.message_id == message_id, f"dead letter message_id {dead.message_id!r}, expected {message_id!r}")
        expect(dead.dead_letter_reason == reason, f"dead_letter_reason {dead.dead_letter_reason!r}, expected {reason!r}")
        if description is not None:
            expect(
                dead.dead_letter_error_description == description,
                f"dead_letter_error_description {dead.dead_letter_error_description!r}, expected {description!r}",
            )
        if delivery_count is not None:
            expect(dead.delivery_count == delivery_count, f"dead letter delivery_count {dead.delivery_count}")
        dlq.complete_message(dead)


def check_send_receive_complete(client, _lock_secs):
    sent = ServiceBusMessage(
        b"hello",
        message_id="m-1",
        correlation_id="c-1",
        reply_to="replies",
        reply_to_session_id="r-1",
        content_type="application/json",
        subject="greeting",
        application_properties={"model": "iris", "attempt": 1},
    )
    with client.get_queue_sender("orders") as sender:
        sender.send_messages(sent)
    with client.get_queue_receiver("orders") as receiver:
        got = receive_one(receiver)
        expect(b"".join(got.body) == b"hello", f"body {got.body!r}")
        for name, want in [
            ("message_id", "m-1"),
            ("correlation_id", "c-1"),
            ("reply_to", "replies"),
            ("reply_to_session_id", "r-1"),
            ("content_type", "application/json"),
            ("subject", "greeting"),
            ("delivery_count", 0),
        ]:
            expect(getattr(got, name) == want, f"{name} {getattr(got, name)!r}, expected {want!r}")
        props = {k.decode() if isinstance(k, bytes) else k: v for k, v in got.application_properties.items()}
        model = props.get("model")
        model = model.decode() if isinstance(model, bytes) else model
        expect(model == "iris" and props.get("attempt") == 1, f"application_properties {props!r}")
        expect(got.sequence_number is not None and got.sequence_number >= 1, f"sequence_number {got.sequence_number}")
        expect(got.enqueued_time_utc is not None, "no enqueued_time_utc")
        expect(got.lock_token is not None, "no lock_token (the delivery tag must be 16 bytes)")
        now = datetime.datetime.now(datetime.timezone.utc)
        expect(got.locked_until_utc is not None and got.locked_until_utc > now, f"locked_until_utc {got.locked_until_utc}")
        receiver.complete_message(got)
        expect_empty(receiver, "a completed message came back")


def check_abandon(client, _lock_secs):
    with client.get_queue_sender("orders") as sender:
        sender.send_messages(ServiceBusMessage("abandon me"))
    with client.get_queue_receiver("orders") as receiver:
        first = receive_one(receiver)
        receiver.abandon_message(first)
        again = receive_one(receiver)
        expect(again.sequence_number == first.sequence_number, "a different message after abandon")
        expect(again.delivery_count == first.delivery_count + 1, f"delivery_count {first.delivery_count} -> {again.delivery_count}")
        receiver.complete_message(again)


def check_dead_letter(client, _lock_secs):
    with client.get_queue_sender("orders") as sender:
        sender.send_messages(ServiceBusMessage("poison", message_id="poison-1"))
    with client.get_queue_receiver("orders") as receiver:
        got = receive_one(receiver)
        receiver.dead_letter_message(got, reason="bad-input", error_description="no column x")
        expect_empty(receiver, "a dead-lettered message stayed in the queue")
    expect_dead_letter(client, "orders", "poison-1", "bad-input", "no column x")


def check_renew_message_lock(client, lock_secs):
    with client.get_queue_sender("orders") as sender:
        sender.send_messages(ServiceBusMessage("slow work"))
    with client.get_queue_receiver("orders") as receiver:
        got = receive_one(receiver)
        before = got.locked_until_utc
        # Renewed once half the lock is spent, so the new lock reaches half a lock past the old.
        wait_past(before - datetime.timedelta(seconds=lock_secs / 2))
        after = receiver.renew_message_lock(got)
        expect(after > before, f"renewed lock until {after}, not after {before}")
        # Past the first lock's end: the renewed lock still holds, so completing works.
        wait_past(before)
        receiver.complete_message(got)
        expect_empty(receiver, "a message whose renewed lock was completed came back")


def check_lock_expiry(client, lock_secs):
    with client.get_queue_sender("orders") as sender:
        sender.send_messages(ServiceBusMessage("forgotten"))
    with client.get_queue_receiver("orders") as receiver:
        first = receive_one(receiver)
        # The message comes back once its lock has expired: wait for it, a lock and more.
        again = receive_one(receiver, wait=lock_secs + 10)
        expect(again.sequence_number == first.sequence_number, "a different message after the lock expired")
        expect(again.delivery_count == first.delivery_count + 1, f"delivery_count {first.delivery_count} -> {again.delivery_count}")
        try:
            receiver.complete_message(first)
            raise CheckFailed("completing with the expired lock succeeded")
        except MessageLockLostError:
            pass
        receiver.complete_message(again)


def check_max_delivery_count(client, _lock_secs):
    with client.get_queue_sender("retries") as sender:
        sender.send_messages(ServiceBusMessage("always fails", message_id="fails-1"))
    with client.get_queue_receiver("retries") as receiver:
        for _ in range(2):
            receiver.abandon_message(receive_one(receiver))
        expect_empty(receiver, "the message was offered past its max delivery count")
    expect_dead_letter(client, "retries", "fails-1", "MaxDeliveryCountExceeded", delivery_count=2)


def check_sessions(client, _lock_secs):
    with client.get_queue_sender("sessions") as sender:
        sender.send_messages([ServiceBusMessage("a1", session_id="s-a"), ServiceBusMessage("b1", session_id="s-b")])
        sender.send_messages(ServiceBusMessage("a2", session_id="s-a"))
    with client.get_queue_receiver("sessions", session_id="s-a") as receiver:
        session = receiver.session
        expect(session.session_id == "s-a", f"session_id {session.session_id!r}")
        before = session.locked_until_utc
        expect(before is not None, "no session locked_until_utc from the attach")
        after = session.renew_lock()
        expect(after > before, f"session lock renewed until {after}, not after {before}")
        bodies = []
        for _ in range(2):
            got = receive_one(receiver)
            expect(got.session_id == "s-a", f"message of session {got.session_id!r} on receiver of s-a")
            bodies.append(b"".join(got.body))
            receiver.complete_message(got)
        expect(bodies == [b"a1", b"a2"], f"bodies {bodies!r}")
        expect_empty(receiver, "a message of another session reached s-a")
        try:
            with client.get_queue_receiver("sessions", session_id="s-a") as second:
                second.receive_messages(max_message_count=1, max_wait_time=EMPTY_WAIT_SECS)
            raise CheckFailed("a second receiver locked session s-a")
        except SessionCannotBeLockedError:
            pass
    with client.get_queue_receiver("sessions", session_id=NEXT_AVAILABLE_SESSION) as receiver:
        expect(receiver.session.session_id == "s-b", f"next available session {receiver.session.session_id!r}")
        got = receive_one(receiver)
        expect(b"".join(got.body) == b"b1", f"body {got.body!r}")
        receiver.complete_message(got)


def check_ttl(client, _lock_secs):
    ttl = datetime.timedelta(seconds=1)
    # `dropping` first: once `expiring`'s message has expired, so has the earlier one.
    for queue in ["dropping", "expiring"]:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("short-lived", message_id=f"ttl-{queue}", time_to_live=ttl))
    # Waits (receive_one's bound) for the expired message to reach the dead-letter queue.
    expect_dead_letter(client, "expiring", "ttl-expiring", "TTLExpiredException")
    for queue in ["expiring", "dropping"]:
        with client.get_queue_receiver(queue) as receiver:
            expect_empty(receiver, f"an expired message was received from {queue}")
    with client.get_queue_receiver("dropping", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        expect_empty(dlq, "dropping dead-lettered an expired message")


def check_peek_and_receive_and_delete(client, _lock_secs):
    with client.get_queue_sender("orders") as sender:
        sender.send_messages([ServiceBusMessage("p1"), ServiceBusMessage("p2")])
    with client.get_queue_receiver("orders") as receiver:
        peeked = receiver.peek_messages(max_message_count=5)
        expect([b"".join(m.body) for m in peeked] == [b"p1", b"p2"], f"peeked {[m.body for m in peeked]!r}")
    with client.get_queue_receiver("orders", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = receiver.receive_messages(max_message_count=2, max_wait_time=5)
        expect([b"".join(m.body) for m in got] == [b"p1", b"p2"], f"received {[m.body for m in got]!r}")
        expect_empty(receiver, "a received-and-deleted message came back")


def check_settle_via_management(client, _lock_secs):
    # The SDK settles through `$management` (`com.microsoft:update-disposition`) when the
    # receiver link failed, and for deferred messages; this calls that same path directly.
    from azure.servicebus._common.constants import (
        MGMT_REQUEST_DEAD_LETTER_ERROR_DESCRIPTION,
        MGMT_REQUEST_DEAD_LETTER_REASON,
        SETTLEMENT_COMPLETE,
        SETTLEMENT_DEADLETTER,
    )

    with client.get_queue_sender("orders") as sender:
        sender.send_messages([ServiceBusMessage("mgmt-complete"), ServiceBusMessage("mgmt-dead", message_id="mgmt-dead")])
    with client.get_queue_receiver("orders") as receiver:
        first, second = receive_one(receiver), receive_one(receiver)
        receiver._settle_message_via_mgmt_link(SETTLEMENT_COMPLETE, [first.lock_token])
        details = {MGMT_REQUEST_DEAD_LETTER_REASON: "mgmt-reason", MGMT_REQUEST_DEAD_LETTER_ERROR_DESCRIPTION: "mgmt-description"}
        receiver._settle_message_via_mgmt_link(SETTLEMENT_DEADLETTER, [second.lock_token], dead_letter_details=details)
        try:
            receiver._settle_message_via_mgmt_link(SETTLEMENT_COMPLETE, [first.lock_token])
            raise CheckFailed("settling a settled lock through $management succeeded")
        except MessageLockLostError:
            pass
        expect_empty(receiver, "a message settled through $management came back")
    expect_dead_letter(client, "orders", "mgmt-dead", "mgmt-reason", "mgmt-description")


def check_wrong_key(connection_string):
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if part)
    fields["SharedAccessKey"] = "d3Jvbmcga2V5"
    wrong = ";".join(f"{k}={v}" for k, v in fields.items())
    with ServiceBusClient.from_connection_string(wrong, retry_total=0) as client:
        try:
            with client.get_queue_sender("orders") as sender:
                sender.send_messages(ServiceBusMessage("never"))
            raise CheckFailed("sending with a wrong key succeeded")
        except ServiceBusAuthenticationError:
            pass
        except ServiceBusError as e:
            raise CheckFailed(f"a wrong key raised {type(e).__name__}: {e}, not ServiceBusAuthenticationError")


CHECKS = [
    check_send_receive_complete,
    check_abandon,
    check_dead_letter,
    check_renew_message_lock,
    check_lock_expiry,
    check_max_delivery_count,
    check_sessions,
    check_ttl,
    check_peek_and_receive_and_delete,
    check_settle_via_management,
]


def main():
    connection_string, lock_secs = sys.argv[1], float(sys.argv[2])
    verdict = {}
    with ServiceBusClient.from_connection_string(connection_string, retry_total=0) as client:
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            try:
                check(client, lock_secs)
                verdict[name] = "ok"
            except Exception as e:  # every failure is reported, with its cause
                detail = "" if isinstance(e, CheckFailed) else "\n" + traceback.format_exc(limit=3)
                verdict[name] = f"failed: {type(e).__name__}: {e}{detail}"
    try:
        check_wrong_key(connection_string)
        verdict["wrong_key"] = "ok"
    except Exception as e:
        verdict["wrong_key"] = f"failed: {type(e).__name__}: {e}"
    print(json.dumps({"sdk": azure.servicebus.__version__, "checks": verdict}))


if __name__ == "__main__":
    main()
