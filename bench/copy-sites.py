#!/usr/bin/env python3
"""Bytes copied by memmove per request, by size or by call site, from `perf script` output.

Reads `perf script -F trace[,ip,sym]` of a uprobe on glibc's memmove that records its length
(bench/profile.sh with PROFILE_COPIES) on stdin.

usage: copy-sites.py REQUESTS [sites]
  sizes (default): the sizes that account for most bytes
  sites: the call sites (the first three frames outside memmove) that account for most bytes;
         needs a profile recorded with call graphs (PROFILE_COPIES=stacks)
"""
import collections
import re
import sys


def samples(lines):
    """(length, frames) per probe hit; frames are empty without call graphs."""
    current = None
    for line in lines:
        found = re.search(r"len=(0x[0-9a-f]+|[0-9]+)", line)
        if found:
            if current:
                yield current
            current = (int(found.group(1), 0), [])
        elif current and line.strip():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                current[1].append(parts[1].replace(" (inlined)", ""))
    if current:
        yield current


def main():
    requests = int(sys.argv[1])
    by_sites = len(sys.argv) > 2 and sys.argv[2] == "sites"
    bytes_by = collections.Counter()
    calls_by = collections.Counter()
    for length, frames in samples(sys.stdin):
        if by_sites:
            outside = [f for f in frames if "memcpy" not in f and "memmove" not in f]
            key = " <- ".join(frame[:80] for frame in outside[:3]) or "(no stack)"
        else:
            key = length
        bytes_by[key] += length
        calls_by[key] += 1
    if not bytes_by:
        sys.exit("no copies seen: glibc uses another memmove variant here (PROFILE_COPY_SYMBOL)")
    total = sum(bytes_by.values())
    calls = sum(calls_by.values())
    print(f"{requests} requests; memmove per request: {calls / requests:.1f} calls, "
          f"{total / requests:,.0f} bytes")
    what = "call site" if by_sites else "size"
    print(f"  largest shares (bytes per request, calls per request, {what}):")
    for key, copied in bytes_by.most_common(25 if by_sites else 15):
        shown = key if by_sites else f"{key:8,}"
        print(f"  {copied / requests:9,.0f} {calls_by[key] / requests:6.2f}  {shown}")


if __name__ == "__main__":
    main()
