#!/usr/bin/env python3
"""Reads oha's JSON report (--output-format json) and prints "p50 p99 p99.9" in microseconds;
exits non-zero, saying why, if any request failed or got another status than 200.

usage: bench/oha-percentiles.py REPORT.json
"""
import json
import sys

report = json.load(open(sys.argv[1]))
codes = report.get("statusCodeDistribution") or {}
errors = report.get("errorDistribution") or {}
if not codes or any(code != "200" for code in codes) or errors:
    sys.exit(f"statuses {codes}, errors {errors}")
percentiles = report["latencyPercentiles"]
print(" ".join(f"{percentiles[key] * 1e6:.0f}" for key in ("p50", "p99", "p99.9")))
