#!/usr/bin/env python3
"""Driver of bench/scale-out.sh: block propagation across gateway nodes.

usage: bench/scale-out.py DEVICES_JSON SAMPLES UEM_URL ADMIN_TOKEN NODE_ADMIN_URL...

Picks SAMPLES devices that every node allows (enrolled, compliant, not compromised), and for each
one in turn: wipes it at the UEM (POST /testbed/devices/{id}/wipe; the UEM sends the change event
to node 1's webhook), then polls each node's GET /policy/device/{id} until the decision is a
block, and records the time from just before the wipe request to the first poll that saw it.
Prints p50, p99 and max per node, in milliseconds. A node that has not blocked the device
within 5 s fails the run.
"""
import json
import random
import sys
import time
import urllib.request

DEADLINE_S = 5.0


def get_json(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def blocked(report):
    return "block" in json.dumps(report.get("decision")).lower()


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    devices_file, samples, uem, token, *nodes = sys.argv[1:]
    samples = int(samples)
    devices = json.load(open(devices_file))
    candidates = []
    for device in devices:
        device_id = device.get("device_id") or device.get("easDeviceId") or device.get("id")
        if device_id and device_id != "EASDEV000001":
            candidates.append(device_id)
    random.seed(8)
    random.shuffle(candidates)
    picked = []
    for device_id in candidates:
        if len(picked) == samples:
            break
        reports = [get_json(f"{node}/policy/device/{device_id}", token) for node in nodes]
        if not any(blocked(r) for r in reports):
            picked.append(device_id)
    if len(picked) < samples:
        sys.exit(f"only {len(picked)} allowed devices to wipe")

    delays = [[] for _ in nodes]
    for device_id in picked:
        start = time.monotonic()
        request = urllib.request.Request(
            f"{uem}/testbed/devices/{device_id}/wipe", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=5).read()
        waiting = set(range(len(nodes)))
        while waiting:
            for index in sorted(waiting):
                report = get_json(f"{nodes[index]}/policy/device/{device_id}", token)
                if blocked(report):
                    delays[index].append((time.monotonic() - start) * 1000)
                    waiting.discard(index)
            if time.monotonic() - start > DEADLINE_S:
                sys.exit(f"{device_id}: nodes {sorted(i + 1 for i in waiting)} still allow it "
                         f"after {DEADLINE_S} s")
    print(f"{'node':<8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for index, values in enumerate(delays):
        role = "webhook" if index == 0 else "redis"
        print(f"{index + 1} ({role:<7}){percentile(values, 0.5):>6.1f}{percentile(values, 0.99):>9.1f}"
              f"{max(values):>9.1f}")
    print(f"(each time includes the UEM's webhook delivery and the HTTP polling, about 1 ms per round)")


if __name__ == "__main__":
    main()
