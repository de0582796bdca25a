#!/usr/bin/env python3
"""Drives an EWS endpoint with exchangelib, an EWS client library written independently of us.

Run by `tests/ews_client_library.rs` against the gateway in front of the test Exchange server;
it can also be pointed at anything that speaks EWS and has the testbed's delivery control:

    exchangelib_smoke.py --ews-url http://127.0.0.1:PORT/EWS/Exchange.asmx \
        --deliver-url https://127.0.0.1:PORT/testbed/deliver --ca-file ca.pem \
        --user alice@test.local --password 'P@ssw0rd!'

Steps, each printed as it passes: GetFolder (the inbox), Subscribe (pull), a delivery, GetEvents
(finding the NewMailEvent), GetItem (checking the subject), Subscribe (streaming), a second
delivery while GetStreamingEvents is open, Unsubscribe (both). Any mismatch exits non-zero with
a message naming the step. With EXCHANGELIB_SMOKE_DEBUG=1 in the environment, exchangelib logs
every request and response document to stderr.
"""

import argparse
import json
import logging
import os
import ssl
import sys
import threading
import time
import urllib.request
import uuid

from exchangelib import BASIC, DELEGATE, Account, Build, Configuration, Credentials, Version
from exchangelib.properties import NewMailEvent

# How long any single wait of this script may take.
STEP_SECONDS = 20


class Mismatch(Exception):
    """The endpoint did not answer as the EWS reference says it should."""


def step(text):
    print(f"exchangelib-smoke: {text}", flush=True)


def expect(condition, message):
    if not condition:
        raise Mismatch(message)


class Testbed:
    """The test Exchange server's own controls (not EWS): delivering mail, listing requests."""

    def __init__(self, deliver_url, ca_file):
        self.deliver_url = deliver_url
        self.requests_url = deliver_url.rsplit("/", 1)[0] + "/requests"
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def _open(self, request):
        return urllib.request.urlopen(request, timeout=STEP_SECONDS, context=self.context)

    def deliver(self, mailbox, subject):
        body = json.dumps({"mailbox": mailbox, "subject": subject}).encode()
        request = urllib.request.Request(
            self.deliver_url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with self._open(request) as response:
            answer = json.load(response)
        expect("item_id" in answer, f"delivery to {mailbox} failed: {answer}")
        return answer["item_id"]

    def operations(self):
        with self._open(urllib.request.Request(self.requests_url)) as response:
            return [r["operation"] for r in json.load(response)]


def new_mail_events(notifications):
    """The NewMailEvents of a sequence of exchangelib Notifications, with their subscription."""
    return [
        (notification.subscription_id, event)
        for notification in notifications
        for event in notification.events
        if isinstance(event, NewMailEvent)
    ]


def run(args):
    testbed = Testbed(args.deliver_url, args.ca_file)
    config = Configuration(
        service_endpoint=args.ews_url,
        credentials=Credentials(args.user, args.password),
        auth_type=BASIC,
        version=Version(build=Build(15, 1, 2507, 6)),
    )
    account = Account(
        primary_smtp_address=args.user, config=config, autodiscover=False, access_type=DELEGATE
    )
    run_id = uuid.uuid4().hex[:8]

    inbox = account.inbox
    step(f"GetFolder: inbox {inbox.name!r}, {inbox.total_count} items, {inbox.unread_count} unread")
    expect(inbox.id, "GetFolder returned the inbox without a FolderId")
    expect(inbox.name == "Inbox", f"GetFolder returned the inbox named {inbox.name!r}")

    pull_id, watermark = inbox.subscribe_to_pull(event_types=["NewMailEvent", "CreatedEvent"])
    step(f"Subscribe (pull): {pull_id[:16]}…, watermark {watermark}")
    expect(pull_id and watermark, "Subscribe (pull) returned no SubscriptionId or Watermark")

    subject = f"pull {run_id}"
    item_id = testbed.deliver(args.user, subject)
    step(f"delivered {subject!r} as {item_id[:16]}…")

    notifications = list(inbox.get_events(pull_id, watermark))
    events = new_mail_events(notifications)
    step(f"GetEvents: {len(notifications)} notification(s), {len(events)} NewMailEvent(s)")
    expect(
        [n.subscription_id for n in notifications] == [pull_id] * len(notifications),
        "GetEvents answered for another subscription",
    )
    matching = [e for _, e in events if e.item_id and e.item_id.id == item_id]
    expect(matching, f"GetEvents returned no NewMailEvent for item {item_id}: {notifications}")
    expect(
        matching[0].parent_folder_id and matching[0].parent_folder_id.id == inbox.id,
        "the NewMailEvent's ParentFolderId is not the inbox",
    )

    item = account.inbox.get(id=item_id, changekey=matching[0].item_id.changekey)
    step(f"GetItem: subject {item.subject!r}")
    expect(item.subject == subject, f"GetItem returned subject {item.subject!r}, not {subject!r}")

    streaming_id = inbox.subscribe_to_streaming(event_types=["NewMailEvent"])
    step(f"Subscribe (streaming): {streaming_id[:16]}…")
    expect(streaming_id, "Subscribe (streaming) returned no SubscriptionId")

    # The second mail is delivered once the server has seen GetStreamingEvents (waiting on that
    # condition, not on time), so it reaches an open stream rather than a queue.
    second = f"streaming {run_id}"
    delivered = {}

    def deliver_once_streaming():
        try:
            deadline = time.monotonic() + STEP_SECONDS
            while "GetStreamingEvents" not in testbed.operations():
                if time.monotonic() > deadline:
                    raise Mismatch("GetStreamingEvents never reached the server")
                time.sleep(0.02)  # polling interval of a condition wait, not synchronisation
            delivered["item_id"] = testbed.deliver(args.user, second)
        except Exception as error:  # reported by the main thread
            delivered["error"] = error

    deliverer = threading.Thread(target=deliver_once_streaming, daemon=True)
    deliverer.start()
    # connection_timeout is in (the server's) minutes: the stream ends with ConnectionStatus
    # Closed, and the generator with it. max_notifications_returned ends it at the first one.
    notifications = list(
        inbox.get_streaming_events(streaming_id, connection_timeout=1, max_notifications_returned=1)
    )
    deliverer.join(STEP_SECONDS)
    expect(not deliverer.is_alive(), "the second delivery did not finish")
    if "error" in delivered:
        raise delivered["error"]
    events = new_mail_events(notifications)
    step(f"GetStreamingEvents: {len(notifications)} notification(s), {len(events)} NewMailEvent(s)")
    expect(
        [(sid, e.item_id.id) for sid, e in events] == [(streaming_id, delivered["item_id"])],
        f"GetStreamingEvents did not return exactly the NewMailEvent of {second!r}: {notifications}",
    )

    # The stream ends by the server's ConnectionStatus Closed after connection_timeout.
    notifications = list(inbox.get_streaming_events(streaming_id, connection_timeout=1))
    step(f"GetStreamingEvents until Closed: {len(notifications)} notification(s)")
    expect(not new_mail_events(notifications), f"unexpected events: {notifications}")

    for name, subscription_id in [("pull", pull_id), ("streaming", streaming_id)]:
        result = inbox.unsubscribe(subscription_id)
        step(f"Unsubscribe ({name}): {result}")
        expect(result is True, f"Unsubscribe ({name}) returned {result!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ews-url", required=True, help="the EWS endpoint, e.g. the gateway's")
    parser.add_argument("--deliver-url", required=True, help="the testbed's POST /testbed/deliver")
    parser.add_argument("--ca-file", help="CA certificate (PEM) to trust for https URLs")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    if os.environ.get("EXCHANGELIB_SMOKE_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    if args.ca_file:
        # exchangelib uses requests, which reads its trust store from here.
        os.environ["REQUESTS_CA_BUNDLE"] = args.ca_file
    try:
        run(args)
    except Mismatch as mismatch:
        print(f"exchangelib-smoke: MISMATCH: {mismatch}", file=sys.stderr, flush=True)
        return 1
    step("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
