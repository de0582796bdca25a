#!/usr/bin/env python3
"""Writes a devices file for `seg-testbed uem` (the format of Device::parse_list in
crates/seg-testbed/src/uem/device.rs): N devices with ids EASDEV000001…, mixed platforms,
models, OS versions, enrollment and compliance states, like seg_testbed::uem::generate but more
varied.

usage: bench/uem-devices.py N FILE

Device EASDEV000001 is always enrolled, compliant and uncompromised (the benchmarks send it).
"""
import sys

PLATFORMS = [
    ("iOS", "iPhone15,2", "17.1"),
    ("Android", "Pixel 8", "14"),
    ("iOS", "iPad13,4", "16.7.2"),
    ("WinRT", "Surface", "10.0.19045"),
]


def main():
    n, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "w", buffering=1 << 20) as out:
        out.write("[\n")
        for i in range(1, n + 1):
            platform, model, os_version = PLATFORMS[i % len(PLATFORMS)]
            r = i % 101
            enrollment = ("enterprise_wiped" if r == 3 else "device_wiped" if r == 4
                          else "unenrolled" if r == 5 else "enrolled")
            compliance = "noncompliant" if i % 10 == 0 else ("pending" if i % 20 == 7 else "compliant")
            compromised = "true" if i % 97 == 50 else "false"
            out.write(
                f'{{"device_id":"EASDEV{i:06d}","uem_id":{i},"user":"user{i:06d}@test.local",'
                f'"platform":"{platform}","model":"{model}","os_version":"{os_version}",'
                f'"enrollment":"{enrollment}","compliance":"{compliance}","compromised":{compromised}}}'
                + (",\n" if i < n else "\n"))
        out.write("]\n")


if __name__ == "__main__":
    main()
