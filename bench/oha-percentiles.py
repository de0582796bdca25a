#!/usr/bin/env python3
"""Reads oha's JSON report (--output-format json) and prints "p50 p99 p99.9" in microseconds, or
with --throughput "requests requests_per_second"; exits non-zero, saying why, if any request
failed or got another status than 200.

usage: bench/oha-percentiles.py [--throughput] REPORT.json
"""
import json
import sys

throughput = sys.argv[1] == "--throughput"
report = json.load(open(sys.argv[-1]))
codes = report.get("statusCodeDistribution") or {}
errors = report.get("errorDistribution") or {}
if not codes or any(code != "200" for code in codes) or errors:
    sys.exit(f"statuses {codes}, errors {errors}")
if throughput:
    print(sum(codes.values()), f"{report['summary']['requestsPerSec']:.1f}")
else:
    percentiles = report["latencyPercentiles"]
    print(" ".join(f"{percentiles[key] * 1e6:.0f}" for key in ("p50", "p99", "p99.9")))
