#!/usr/bin/env bash
# The soak run of issue 10 (a benchmark, not a test): SOAK_SECONDS (default one hour) of mixed EWS
# traffic through seg-proxy while devices are wiped and restored throughout; memory flat, no
# descriptor leak, every decision right.
#
# Processes on loopback: the test UEM (BENCH_DEVICES devices, change events to the gateway's
# webhook), the static SOAP upstream over TLS, seg-proxy (release; compliance synced from the UEM,
# webhook, admin API) and two loads:
#   - bench/soak.py: SOAK_WORKERS keep-alive TLS clients sending GetFolder, FindItem,
#     SyncFolderItems and GetItem (1 MiB answers) as SOAK_POOL devices, while one device at a
#     time is wiped (or otherwise put out of compliance) or made compliant again at the UEM;
#     every answer whose device was not changing is checked (see its docstring). It samples the
#     gateway's RSS, descriptors and threads every 10 s, and its heap in use and allocator
#     resident memory from /metrics (jemalloc; seg_proxy::process_metrics).
#   - oha at SOAK_RATE requests/s (small GetFolder as an always-compliant device) underneath,
#     for volume; every answer must be 200.
# The summary is appended to docs/reliability.md (SOAK_DOC="" to print only). The run fails on a
# wrong decision, a failed oha request, or seg-proxy dying.
#
# usage: bench/soak.sh
#
# Environment (all optional):
#   SOAK_SECONDS=3600  SOAK_RATE=1000  SOAK_WORKERS=6  SOAK_POOL=200  SOAK_FLIP_EVERY=0.2 (s)
#   BENCH_DEVICES=10000  BENCH_NO_BUILD=1 (use the release binaries already built)
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
seconds=${SOAK_SECONDS:-3600}
rate=${SOAK_RATE:-1000}
devices=${BENCH_DEVICES:-10000}
doc=${SOAK_DOC-docs/reliability.md}
command_line="bench/soak.sh"
for name in SOAK_SECONDS SOAK_RATE SOAK_WORKERS SOAK_POOL SOAK_FLIP_EVERY BENCH_DEVICES; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done

scripts/install-deps.sh python3 curl >&2
build_release_binaries
oha_bin=$(oha_binary)

"$seg_testbed" pki --dir "$work/pki" >/dev/null
python3 bench/uem-devices.py "$devices" "$work/devices.json"
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
read -r uem_port upstream_port proxy_port admin_port < <(free_ports 4)

RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
  --webhook "http://127.0.0.1:$admin_port/events/compliance" --webhook-secret "$secret" \
  >"$work/uem.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$uem_port" uem 120
RUST_LOG=warn TOKIO_WORKER_THREADS=1 "$seg_testbed" static-soap \
  --listen "127.0.0.1:$upstream_port" --tls-cert "$work/pki/server.pem" \
  --tls-key "$work/pki/server.key" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$upstream_port" upstream
{
  seg_proxy_config plain "$proxy_port" "$upstream_port"
  cat <<EOF

[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"

[compliance]
uem_url = "http://127.0.0.1:$uem_port"
uem_tenant_code = "testbed-tenant-code"
uem_user = "uemapi"
uem_password = "P@ssw0rd!"
webhook_secret = "$secret"
full_sync_interval = "10m"
delta_sync_interval = "1m"
snapshot = "$work/snapshot.json"
EOF
} >"$work/seg-proxy.toml"
"$seg_proxy" run --config "$work/seg-proxy.toml" >"$work/seg-proxy.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_for_200 "$gateway" "http://127.0.0.1:$admin_port/readyz" seg-proxy 120

log "soak: ${seconds}s; oha at $rate/s underneath"
body=$(python3 -c 'import sys; sys.path.insert(0, "bench"); import soak; print(soak.ENVELOPE.format(soak.OPERATIONS["GetFolder"]))')
"$oha_bin" --no-tui --insecure -z "${seconds}s" -q "$rate" -c 16 -m POST -d "$body" \
  -H "Content-Type: text/xml; charset=utf-8" -H "X-Device-Id: EASDEV000001" \
  -H "Authorization: Basic $(printf 'bob@test.local:soak' | base64 -w0)" \
  --output-format json "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx" >"$work/oha.json" 2>"$work/oha.log" &
oha=$!
status=0
python3 bench/soak.py "$seconds" "https://127.0.0.1:$proxy_port" "http://127.0.0.1:$admin_port" \
  "$token" "http://127.0.0.1:$uem_port" "$work/pki/ca.pem" "$gateway" "$work/soak.json" || status=$?
wait "$oha" || die "oha failed: $(tail -n 5 "$work/oha.log")"
assert_alive "$gateway" seg-proxy

summary=$(python3 - "$work/soak.json" "$work/oha.json" <<'EOF'
import json, sys
soak = json.load(open(sys.argv[1]))
oha = json.load(open(sys.argv[2]))
codes = oha.get("statusCodeDistribution", {})
c = soak["counters"]
rss = soak["rss_kib"]
fds = soak["fds"]
print(f"- checked traffic: {c.get('requests', 0)} requests by {soak['workers']} clients over "
      f"{soak['pool']} devices ({c.get('checked_allowed', 0)} checked allowed, "
      f"{c.get('checked_blocked', 0)} checked blocked, {c.get('unchecked_in_transition', 0)} "
      f"during a flip, not checked); {c.get('GetItem', 0)} of them GetItem with 1 MiB answers")
print(f"- flips: {c.get('flips', 0)} changes at the UEM (wipes, unenrolments, noncompliance, "
      f"compromise, compliance again), each applied in "
      f"{c.get('settle_ms_total', 0) / max(1, c.get('flips', 1)):.1f} ms on average "
      f"(UEM → webhook → gateway → admin API poll)")
print(f"- wrong decisions: **{c.get('wrong', 0)}**; transport errors: {c.get('transport_errors', 0)}"
      + ("; examples: " + "; ".join(soak["wrong_examples"][:3]) if soak["wrong_examples"] else ""))
print(f"- volume underneath: oha {sum(codes.values())} requests, status codes {json.dumps(codes)}")
print(f"- seg-proxy RSS: {rss['first'] / 1024:.1f} MiB at start, {rss['after_warmup'] / 1024:.1f} "
      f"MiB after the first 10% of the run, {rss['max'] / 1024:.1f} MiB max, "
      f"{rss['last'] / 1024:.1f} MiB at the end")
for key, what in (("heap_allocated_kib", "heap in use (jemalloc's stats.allocated)"),
                  ("heap_resident_kib", "allocator resident (stats.resident)")):
    if key in soak:
        m = soak[key]
        print(f"- {what}: {m['first'] / 1024:.1f} MiB at start, {m['after_warmup'] / 1024:.1f} "
              f"MiB after the first 10%, {m['max'] / 1024:.1f} MiB max, "
              f"{m['last'] / 1024:.1f} MiB at the end")
tenths = soak.get("tenths", [])
if tenths:
    print("- memory at the end of each tenth of the run (minute: RSS / heap in use, MiB): "
          + ", ".join(f"{s['t'] / 60:.{0 if soak['seconds'] >= 600 else 1}f}: {s['rss_kib'] / 1024:.0f} / "
                      + (f"{s['heap_allocated_kib'] / 1024:.0f}" if "heap_allocated_kib" in s
                         else "?")
                      for s in tenths))
print(f"- descriptors: {fds['first']} at start, {fds['max']} max, {fds['last']} at the end; "
      f"threads {soak['threads']['first']} → {soak['threads']['last']}")
bad = [k for k in codes if k != "200"]
sys.exit(1 if bad else 0)
EOF
) || status=$?

report=$(
  cat <<EOF

### Soak run of $(date -u '+%Y-%m-%d %H:%M') UTC ($((seconds / 60)) minutes)

- Command: \`$command_line\`; commit $(commit_line)
- Machine: $(machine_line); the load generators, the UEM, the upstream and seg-proxy share it
$summary
EOF
)
printf '%s\n' "$report"
if [ -n "$doc" ]; then
  add_run "$doc" 'Soak' '<!-- bench/soak.sh adds its runs above this line -->' "$report"
fi
[ "$status" -eq 0 ] || die "the soak run failed (see above and $work, kept: no)"
