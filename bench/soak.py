#!/usr/bin/env python3
"""Driver of bench/soak.sh: mixed EWS traffic through seg-proxy while devices are wiped and
restored throughout, every decision checked, the gateway's memory and descriptors sampled.

usage: bench/soak.py SECONDS GATEWAY_URL ADMIN_URL ADMIN_TOKEN UEM_URL CA_FILE GATEWAY_PID OUT_JSON

- The pool: POOL devices (of EASDEV000002…) that the UEM has enrolled, compliant and not
  compromised, so that each starts allowed.
- A churner flips one pool device at a time at the UEM (POST /testbed/devices/{id}/ with wipe,
  device-wipe, unenroll, noncompliant or compromised, and later compliant): the UEM sends the
  change event to the gateway's webhook. The device is "in
  transition" from just before the flip until the gateway's admin API reports the new decision
  (a deadline of 5 s; missing it counts as a wrong decision). Out of compliance, a device must
  be blocked; compliant again, allowed.
- WORKERS threads, each with its own keep-alive TLS connection, send GetFolder, FindItem,
  SyncFolderItems and (one request in twenty) GetItem, answered with 1 MiB, as random pool
  devices. A request whose device was not in transition from before it was sent until after its
  answer arrived is checked: allowed → 200 with ResponseClass="Success" (and the whole 1 MiB for
  GetItem); blocked → 403 and nothing from Exchange. Anything else is a wrong decision.
- Every SAMPLE_S seconds: the gateway's RSS (VmRSS), open descriptors and threads.

Prints one line per minute and writes the summary to OUT_JSON.
"""
import base64
import http.client
import json
import os
import random
import ssl
import sys
import threading
import time
import urllib.request
from urllib.parse import urlparse

WORKERS = int(os.environ.get("SOAK_WORKERS", "6"))
POOL = int(os.environ.get("SOAK_POOL", "200"))
FLIP_EVERY_S = float(os.environ.get("SOAK_FLIP_EVERY", "0.2"))
SAMPLE_S = 10.0
SETTLE_DEADLINE_S = 5.0

OPERATIONS = {
    "GetFolder": '<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
                 '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
    "FindItem": '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
                '</m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
                '</m:ParentFolderIds></m:FindItem>',
    "SyncFolderItems": '<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
                       '</m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/>'
                       '</m:SyncFolderId><m:MaxChangesReturned>100</m:MaxChangesReturned>'
                       '</m:SyncFolderItems>',
    "GetItem": '<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape>'
               '<m:ItemIds><t:ItemId Id="AAMkAD"/></m:ItemIds></m:GetItem>',
}
ENVELOPE = ('<?xml version="1.0" encoding="utf-8"?>'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
            '<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
            '<s:Body>{}</s:Body></s:Envelope>')
LARGE = 1 << 20
# The UEM's test controls that take a device out of compliance (POST /testbed/devices/{id}/…);
# "compliant" brings it back (enrolled, compliant, not compromised).
BLOCKING_ACTIONS = ["wipe", "device-wipe", "unenroll", "noncompliant", "compromised"]


class Devices:
    """Each pool device's expected decision and whether it is in transition, with a version
    bumped at every flip so that a request can tell whether a flip overlapped it."""

    def __init__(self, ids):
        self.lock = threading.Lock()
        self.allowed = {i: True for i in ids}
        self.version = {i: 0 for i in ids}
        self.moving = set()

    def snapshot(self, device):
        with self.lock:
            return (device not in self.moving, self.version[device], self.allowed[device])

    def begin(self, device):
        with self.lock:
            self.moving.add(device)
            self.version[device] += 1

    def settle(self, device, allowed):
        with self.lock:
            self.allowed[device] = allowed
            self.version[device] += 1
            self.moving.discard(device)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}
        self.wrong = []

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def wrong_decision(self, what):
        with self.lock:
            self.values["wrong"] = self.values.get("wrong", 0) + 1
            if len(self.wrong) < 20:
                self.wrong.append(what)


def http_json(method, url, token=None, timeout=10):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def uem_allows(record):
    enrolled = str(record.get("EnrollmentStatus", "")).lower()
    compliance = str(record.get("ComplianceStatus", "")).lower()
    if not enrolled or not compliance:
        raise SystemExit(f"cannot read the UEM record: {json.dumps(record)[:300]}")
    return enrolled == "enrolled" and compliance == "compliant" and \
        not record.get("CompromisedStatus", False)


def gateway_blocks(admin, token, device):
    report = http_json("GET", f"{admin}/policy/device/{device}", token)
    return "block" in json.dumps(report.get("decision")).lower()


def churner(stop, devices, counters, uem, admin, token):
    wiped = []
    rng = random.Random(11)
    ids = list(devices.allowed)
    while not stop.is_set():
        # Restore a wiped device half of the time (and always once a quarter of the pool is
        # wiped), otherwise wipe an allowed one.
        restore = wiped and (len(wiped) > len(ids) // 4 or rng.random() < 0.5)
        if restore:
            device = wiped.pop(rng.randrange(len(wiped)))
            action = "compliant"
        else:
            candidates = [d for d in ids if d not in wiped]
            device = rng.choice(candidates)
            action = rng.choice(BLOCKING_ACTIONS)
            wiped.append(device)
        devices.begin(device)
        started = time.monotonic()
        http_json("POST", f"{uem}/testbed/devices/{device}/{action}")
        expected_allowed = action == "compliant"
        while True:
            if gateway_blocks(admin, token, device) != expected_allowed:
                break
            if time.monotonic() - started > SETTLE_DEADLINE_S:
                counters.wrong_decision(f"{device}: {action} not applied within "
                                        f"{SETTLE_DEADLINE_S}s")
                # Counted once: the requests that follow are judged by what the gateway says.
                expected_allowed = not expected_allowed
                break
            time.sleep(0.005)
        counters.add("flips")
        counters.add("settle_ms_total", int((time.monotonic() - started) * 1000))
        devices.settle(device, expected_allowed)
        stop.wait(FLIP_EVERY_S)


def worker(stop, devices, counters, gateway, ca, authorization, seed):
    url = urlparse(gateway)
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    rng = random.Random(seed)
    ids = list(devices.allowed)
    connection = None
    while not stop.is_set():
        if connection is None:
            connection = http.client.HTTPSConnection(url.hostname, url.port, context=context,
                                                     timeout=30)
            counters.add("connections")
        device = rng.choice(ids)
        operation = "GetItem" if rng.random() < 0.05 else rng.choice(
            ["GetFolder", "FindItem", "SyncFolderItems"])
        body = ENVELOPE.format(OPERATIONS[operation]).encode()
        steady_before, version_before, allowed = devices.snapshot(device)
        try:
            connection.request("POST", "/EWS/Exchange.asmx", body=body, headers={
                "Content-Type": "text/xml; charset=utf-8",
                "Authorization": authorization,
                "X-Device-Id": device,
            })
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as error:
            counters.add("transport_errors")
            counters.wrong_decision(f"{device} {operation}: {error!r}")
            connection = None
            continue
        counters.add("requests")
        counters.add(f"{operation}")
        steady_after, version_after, _ = devices.snapshot(device)
        if not (steady_before and steady_after and version_before == version_after):
            counters.add("unchecked_in_transition")
            continue
        if allowed:
            good = status == 200 and b'ResponseClass="Success"' in answer[:4096] and (
                operation != "GetItem" or len(answer) == LARGE)
        else:
            good = status == 403 and b"ResponseClass" not in answer
        if good:
            counters.add("checked_allowed" if allowed else "checked_blocked")
        else:
            counters.wrong_decision(f"{device} {operation}: expected "
                                    f"{'allowed' if allowed else 'blocked'}, got {status} "
                                    f"{answer[:160]!r}")


def sample(pid, admin):
    status = open(f"/proc/{pid}/status").read()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    threads = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("Threads")))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    values = {"rss_kib": rss, "fds": fds, "threads": threads}
    # The heap really in use and the allocator's resident memory (seg_proxy::process_metrics,
    # with jemalloc): a leak grows the first, memory kept for reuse only the second.
    try:
        with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        for line in metrics.splitlines():
            name, _, value = line.partition(" ")
            if name in ("seg_heap_allocated_bytes", "seg_heap_resident_bytes"):
                values[name.removeprefix("seg_").removesuffix("_bytes") + "_kib"] = \
                    int(value) // 1024
    except OSError:
        pass
    return values


def main():
    seconds, gateway, admin, token, uem, ca, pid, out = sys.argv[1:]
    seconds = float(seconds)
    authorization = "Basic " + base64.b64encode(b"alice@test.local:soak-password").decode()
    pool = []
    n = 2
    while len(pool) < POOL:
        device = f"EASDEV{n:06d}"
        n += 1
        if uem_allows(http_json("GET", f"{uem}/testbed/devices/{device}")) and \
                not gateway_blocks(admin, token, device):
            pool.append(device)
    devices = Devices(pool)
    counters = Counters()
    stop = threading.Event()
    threads = [threading.Thread(target=churner, args=(stop, devices, counters, uem, admin, token),
                                daemon=True)]
    threads += [threading.Thread(target=worker, args=(stop, devices, counters, gateway, ca,
                                                      authorization, seed), daemon=True)
                for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    samples = []
    started = time.monotonic()
    next_sample, next_print = started, started + 60
    while time.monotonic() - started < seconds:
        now = time.monotonic()
        if now >= next_sample:
            samples.append({"t": round(now - started, 1), **sample(pid, admin)})
            next_sample += SAMPLE_S
        if now >= next_print:
            with counters.lock:
                values = dict(counters.values)
            print(f"{int(now - started)}s {json.dumps(values)} {json.dumps(samples[-1])}",
                  flush=True)
            next_print += 60
        if not all(t.is_alive() for t in threads):
            raise SystemExit("a driver thread died")
        time.sleep(min(next_sample, next_print) - time.monotonic() if
                   min(next_sample, next_print) > time.monotonic() else 0)
    stop.set()
    for thread in threads:
        thread.join(timeout=40)
    samples.append({"t": round(time.monotonic() - started, 1), **sample(pid, admin)})
    # Memory after warm-up: the first sample past 10% of the run against the last.
    warm = next((s for s in samples if s["t"] >= seconds * 0.1), samples[0])
    summary = {
        "seconds": seconds,
        "workers": WORKERS,
        "pool": POOL,
        "counters": counters.values,
        "wrong_examples": counters.wrong,
        "rss_kib": {"first": samples[0]["rss_kib"], "after_warmup": warm["rss_kib"],
                    "max": max(s["rss_kib"] for s in samples), "last": samples[-1]["rss_kib"]},
        **{key: {"first": samples[0][key], "after_warmup": warm[key],
                 "max": max(s[key] for s in samples), "last": samples[-1][key]}
           for key in ("heap_allocated_kib", "heap_resident_kib")
           if all(key in s for s in samples)},
        # Each tenth of the run: the last sample in it (memory at its end).
        "tenths": [next((s for s in reversed(samples) if s["t"] <= seconds * k / 10),
                        samples[0]) for k in range(1, 11)],
        "fds": {"first": samples[0]["fds"], "max": max(s["fds"] for s in samples),
                "last": samples[-1]["fds"]},
        "threads": {"first": samples[0]["threads"], "last": samples[-1]["threads"]},
        "samples": samples,
    }
    json.dump(summary, open(out, "w"), indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    if counters.values.get("wrong", 0):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
