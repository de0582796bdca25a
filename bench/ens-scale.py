#!/usr/bin/env python3
"""The driver of bench/ens-scale.sh: registers devices with mock-ens, waits for their
subscriptions, then measures delivery and wipe latencies from outside every process.

usage:
  ens-scale.py register ENS_URL API_TOKEN N PASSWORD MODE       # N devices (streaming|push|pull), 32 at a time
  ens-scale.py wait-streams METRICS_URL N DEADLINE_S           # until the gateway holds N streams
  ens-scale.py wait-subscribed ENS_URL API_TOKEN N DEADLINE_S  # until mock-ens shows N subscribed
  ens-scale.py subscribed ENS_URL API_TOKEN                     # how many mock-ens shows subscribed
  ens-scale.py deliver EXCHANGE_URL ENS_URL API_TOKEN N SAMPLES RATE
  ens-scale.py wipe UEM_URL ENS_URL API_TOKEN N SAMPLES RATE
  ens-scale.py deliver-wiped EXCHANGE_URL ENS_URL API_TOKEN N SAMPLES RATE GRACE_S

Devices are EASDEV000001… for user000001@test.local…, as bench/ens-scale.sh writes them.
`deliver` and `wipe` print one JSON line: {"samples": n, "p50_ms": …, "p99_ms": …, "max_ms": …,
"missing": k}. Latency is the mock-ens timestamp (a notification's `at`, a state's `state_since`)
minus the wall-clock time just before the delivery or wipe request was sent.
`deliver-wiped` delivers mail to the devices `wipe` wiped (the same random choice), waits until
a control device that was not wiped is notified of a mail delivered after them and at least
GRACE_S seconds, and prints {"delivered": n, "notified": k}: k must be 0 (a push device's
SendNotification is answered Unsubscribe, a stream is cut, polling has stopped).
"""
import concurrent.futures
import datetime
import http.client
import json
import random
import ssl
import sys
import threading
import time
import urllib.parse

local = threading.local()


def connection(base):
    """A keep-alive connection per thread and base URL."""
    pool = getattr(local, "pool", None)
    if pool is None:
        pool = local.pool = {}
    conn = pool.get(base)
    if conn is None:
        url = urllib.parse.urlsplit(base)
        if url.scheme == "https":
            # The test Exchange's certificate is from the run's own test CA.
            conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=60,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        pool[base] = conn
    return conn


def call(base, method, path, body=None, headers=None):
    for attempt in range(3):
        conn = connection(base)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"content-type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            local.pool.pop(base, None)
            if attempt == 2:
                raise


def device_id(i):
    return f"EASDEV{i:06d}"


def user(i):
    return f"user{i:06d}@test.local"


def register(ens, token, n, password, mode):
    def one(i):
        status, body = call(ens, "POST", "/devices", {
            "device_id": device_id(i), "user": user(i), "mailbox": user(i), "mode": mode,
            "auth": {"basic": {"user": user(i), "password": password}},
        }, {"ApiToken": token})
        if status not in (200, 201):
            raise SystemExit(f"registering {device_id(i)}: {status} {body[:200]!r}")
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(1, n + 1)))
    print(json.dumps({"registered": n, "seconds": round(time.time() - started, 1)}))


def metric(url, name):
    url = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", url.path)
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_streams(metrics_url, n, deadline):
    started, open_streams = time.time(), 0.0
    while time.time() - started < deadline:
        try:
            open_streams = metric(metrics_url, "seg_compliance_open_streams")
        except (OSError, http.client.HTTPException):
            # The gateway is busy setting up thousands of streams on two cores; ask again.
            continue
        if open_streams >= n:
            print(json.dumps({"open_streams": open_streams,
                              "seconds": round(time.time() - started, 1)}))
            return
        time.sleep(0.5)
    raise SystemExit(f"only {open_streams} of {n} streams open after {deadline} s")


def subscribed_count(ens, token):
    status, body = call(ens, "GET", "/devices", headers={"ApiToken": token})
    if status != 200:
        raise SystemExit(f"GET /devices: {status}")
    return sum(1 for device in json.loads(body) if device.get("subscribed"))


def wait_subscribed(ens, token, n, deadline):
    started, subscribed = time.time(), 0
    while time.time() - started < deadline:
        try:
            subscribed = subscribed_count(ens, token)
        except (OSError, http.client.HTTPException):
            continue
        if subscribed >= n:
            print(json.dumps({"subscribed": subscribed,
                              "seconds": round(time.time() - started, 1)}))
            return
        time.sleep(0.5)
    raise SystemExit(f"only {subscribed} of {n} devices subscribed after {deadline} s")


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def device_view(ens, token, i):
    status, body = call(ens, "GET", f"/devices/{device_id(i)}", headers={"ApiToken": token})
    if status != 200:
        raise SystemExit(f"GET /devices/{device_id(i)}: {status}")
    return json.loads(body)


def summarize(latencies, missing):
    if not latencies:
        raise SystemExit(f"no sample arrived ({missing} missing)")
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)
    print(json.dumps({"samples": len(latencies), "p50_ms": pick(0.50), "p99_ms": pick(0.99),
                      "max_ms": round(latencies[-1] * 1000, 1), "missing": missing}))


def paced(n, samples, rate, act):
    """Calls act(i) for `samples` distinct random devices at `rate` per second; returns
    {i: wall time just before its request}."""
    chosen = random.Random(7).sample(range(1, n + 1), samples)
    sent, start = {}, time.time()
    for k, i in enumerate(chosen):
        due = start + k / rate
        if time.time() < due:
            time.sleep(due - time.time())
        sent[i] = time.time()
        act(i)
    return sent


def collect(sent, found, deadline):
    latencies, pending = [], dict(sent)
    end = time.time() + deadline
    while pending and time.time() < end:
        for i in list(pending):
            at = found(i)
            if at is not None:
                latencies.append(max(0.0, at - pending.pop(i)))
        if pending:
            time.sleep(0.2)
    summarize(latencies, len(pending))


def deliver(exchange, ens, token, n, samples, rate):
    subject = lambda i: f"bench mail {i}"

    def act(i):
        status, body = call(exchange, "POST", "/testbed/deliver",
                            {"mailbox": user(i), "subject": subject(i)})
        if status != 200:
            raise SystemExit(f"deliver to {user(i)}: {status} {body[:200]!r}")

    def found(i):
        for note in device_view(ens, token, i)["notifications"]:
            if note["subject"] == subject(i):
                return parse_time(note["at"])
        return None
    collect(paced(n, samples, rate, act), found, 60)


def wipe(uem, ens, token, n, samples, rate):
    def act(i):
        status, body = call(uem, "POST", f"/testbed/devices/{device_id(i)}/wipe")
        if status != 200:
            raise SystemExit(f"wipe {device_id(i)}: {status} {body[:200]!r}")

    def found(i):
        view = device_view(ens, token, i)
        return parse_time(view["state_since"]) if view["state"] == "blocked" else None
    collect(paced(n, samples, rate, act), found, 60)


def deliver_wiped(exchange, ens, token, n, samples, rate, grace):
    subject = lambda i: f"bench mail after the wipe {i}"

    def deliver_to(i):
        status, body = call(exchange, "POST", "/testbed/deliver",
                            {"mailbox": user(i), "subject": subject(i)})
        if status != 200:
            raise SystemExit(f"deliver to {user(i)}: {status} {body[:200]!r}")
    # The same choice as `wipe` (same seed): the wiped devices.
    sent = paced(n, samples, rate, deliver_to)
    control = next(i for i in range(1, n + 1) if i not in sent)
    deliver_to(control)
    end, started = time.time() + 60, time.time()
    while not any(note["subject"] == subject(control)
                  for note in device_view(ens, token, control)["notifications"]):
        if time.time() > end:
            raise SystemExit(f"the control device {device_id(control)} was never notified")
        time.sleep(0.2)
    if time.time() - started < grace:
        time.sleep(grace - (time.time() - started))
    notified = sum(1 for i in sent
                   if any(note["subject"] == subject(i)
                          for note in device_view(ens, token, i)["notifications"]))
    print(json.dumps({"delivered": len(sent), "notified": notified}))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "register":
        register(args[0], args[1], int(args[2]), args[3], args[4])
    elif command == "wait-streams":
        wait_streams(args[0], int(args[1]), float(args[2]))
    elif command == "wait-subscribed":
        wait_subscribed(args[0], args[1], int(args[2]), float(args[3]))
    elif command == "subscribed":
        print(subscribed_count(args[0], args[1]))
    elif command == "deliver-wiped":
        deliver_wiped(args[0], args[1], args[2], int(args[3]), int(args[4]), float(args[5]),
                      float(args[6]))
    elif command == "deliver":
        deliver(args[0], args[1], args[2], int(args[3]), int(args[4]), float(args[5]))
    elif command == "wipe":
        wipe(args[0], args[1], args[2], int(args[3]), int(args[4]), float(args[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
