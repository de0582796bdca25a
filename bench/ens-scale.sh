#!/usr/bin/env bash
# mock-ens with many devices watched through seg-proxy (issue 6): memory of each process per
# device, time from a delivery at Exchange to the notification recorded by mock-ens, and time
# from a UEM wipe to the device stopped at ENS (target: under one second); for streaming, push or
# pull devices (BENCH_MODE).
#
# Four processes on loopback, each the release binary as an operator runs it: the test Exchange
# (TLS, BENCH_DEVICES users), the test UEM (BENCH_DEVICES devices, all enrolled and compliant,
# change events to the gateway's webhook), seg-proxy (compliance on, plain HTTP listener for
# mock-ens, ENS callback to mock-ens) and mock-ens. The driver (bench/ens-scale.py) registers
# every device in BENCH_MODE through mock-ens's API, waits until each is subscribed (streaming:
# the gateway holds that many open streams; push and pull: mock-ens shows them all subscribed),
# reads each process's RSS, then delivers mail to BENCH_SAMPLES random mailboxes and wipes those
# devices in UEM, reading mock-ens's own timestamps, and last delivers mail to the wiped devices
# again, none of which may be notified. Appends the results to docs/benchmarks.md.
#
# The modes: streaming, GetStreamingEvents held open through the gateway; push, Exchange calls
# mock-ens's callback directly (not through the gateway) and mock-ens fetches the preview with
# GetItem through it, a wiped device's next SendNotification being answered Unsubscribe; pull,
# GetEvents through the gateway every BENCH_PULL_INTERVAL per device.
#
# usage: bench/ens-scale.sh
#
# Environment (all optional):
#   BENCH_MODE=streaming  streaming | push | pull
#   BENCH_DEVICES=10000   registered devices
#   BENCH_SAMPLES=200     deliveries and wipes measured (fewer than BENCH_DEVICES)
#   BENCH_RATE=20         deliveries and wipes per second
#   BENCH_PULL_INTERVAL=10s  pull mode: each device's GetEvents interval (BENCH_DEVICES / interval
#                         requests per second through the gateway)
#   BENCH_DOC             the results file (docs/benchmarks.md); empty to print only
#   BENCH_NO_BUILD        use the release binaries already built
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
mode=${BENCH_MODE:-streaming}
devices=${BENCH_DEVICES:-10000}
samples=${BENCH_SAMPLES:-200}
rate=${BENCH_RATE:-20}
pull_interval=${BENCH_PULL_INTERVAL:-10s}
doc=${BENCH_DOC-docs/benchmarks.md}
case "$mode" in
  streaming | push | pull) ;;
  *) die "BENCH_MODE must be streaming, push or pull, not $mode" ;;
esac
[ "$samples" -lt "$devices" ] || die "BENCH_SAMPLES ($samples) must be below BENCH_DEVICES ($devices)"
command_line="bench/ens-scale.sh"
for name in BENCH_DEVICES BENCH_SAMPLES BENCH_RATE BENCH_PULL_INTERVAL BENCH_MODE; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done

scripts/install-deps.sh python3 curl >&2
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "building release binaries"
  cargo build --release --locked -p seg-proxy -p seg-testbed-cli -p mock-ens >&2
fi
target_dir=$(target_dir)
seg_proxy=$target_dir/release/seg-proxy
seg_testbed=$target_dir/release/seg-testbed
mock_ens=$target_dir/release/mock-ens
for binary in "$seg_proxy" "$seg_testbed" "$mock_ens"; do
  [ -x "$binary" ] || die "missing $binary"
done
# Sockets per stream: one in mock-ens; one in the gateway (the client's: the streams share
# HTTP/2 connections to Exchange, up to 100 streams each, see ews_proxy_core::host_pool); the
# test Exchange's connections from the gateway; plus pools and files.
needed=$((devices + devices / 50 + 1000))
[ "$(ulimit -Hn)" -ge "$needed" ] || die "the hard open-files limit $(ulimit -Hn) is below $needed"
ulimit -n "$needed"

read -r exchange_port uem_port http_port admin_port ens_port < <(free_ports 5)
api_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
webhook_secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')

# --- users, devices, PKI -----------------------------------------------------------------------
"$seg_testbed" pki --dir "$work/pki" >/dev/null
python3 - "$devices" "$password" "$work" <<'EOF'
import json, sys
n, password, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
users = [{"upn": f"user{i:06d}@test.local", "password": password,
          "mailbox": f"user{i:06d}@test.local"} for i in range(1, n + 1)]
json.dump(users, open(f"{work}/users.json", "w"))
devices = [{"device_id": f"EASDEV{i:06d}", "uem_id": i, "user": f"user{i:06d}@test.local",
            "platform": "iOS", "model": "iPhone15,2", "os_version": "17.1",
            "enrollment": "enrolled", "compliance": "compliant", "compromised": False}
           for i in range(1, n + 1)]
json.dump(devices, open(f"{work}/devices.json", "w"))
EOF

# --- servers -----------------------------------------------------------------------------------
log "starting the test Exchange server on 127.0.0.1:$exchange_port ($devices users)"
# Push: the test Exchange logs each SendNotification answered Unsubscribe (counted at the end).
exchange_log=warn
[ "$mode" != push ] || exchange_log=warn,seg_testbed::exchange::push=debug
RUST_LOG=$exchange_log "$seg_testbed" exchange --listen "127.0.0.1:$exchange_port" \
  --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" \
  --users "$work/users.json" >"$work/exchange.log" 2>&1 &
exchange_pid=$!
pids+=("$exchange_pid")
log "starting seg-testbed uem on 127.0.0.1:$uem_port"
RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
  --webhook "http://127.0.0.1:$admin_port/events/compliance" --webhook-secret "$webhook_secret" \
  >"$work/uem.log" 2>&1 &
uem_pid=$!
pids+=("$uem_pid")
wait_for_port "$exchange_pid" "$exchange_port" exchange
wait_for_port "$uem_pid" "$uem_port" uem 120

cat >"$work/seg.toml" <<EOF
[listen]
http = "127.0.0.1:$http_port"

[exchange]
url = "https://localhost:$exchange_port"
trust_store = "$work/pki/ca.pem"

[ews]
enable_proxy = true

[server]
max_connections = $needed

[log]
filter = "warn"

[compliance]
uem_url = "http://127.0.0.1:$uem_port"
uem_tenant_code = "testbed-tenant-code"
uem_user = "uemapi"
uem_password = "P@ssw0rd!"
webhook_secret = "$webhook_secret"
full_sync_interval = "24h"
delta_sync_interval = "24h"

[admin]
listen = "127.0.0.1:$admin_port"

[ens]
callback_url = "http://127.0.0.1:$ens_port/gateway/compliance"
EOF
"$seg_proxy" check-config --config "$work/seg.toml" >"$work/check-config.txt" 2>&1 ||
  die "seg-proxy check-config failed:$(printf '\n')$(cat "$work/check-config.txt")"
log "starting seg-proxy on 127.0.0.1:$http_port (admin 127.0.0.1:$admin_port)"
"$seg_proxy" run --config "$work/seg.toml" >"$work/seg-proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_for_200 "$proxy_pid" "http://127.0.0.1:$admin_port/readyz" seg-proxy 120

cat >"$work/ens.toml" <<EOF
listen = "127.0.0.1:$ens_port"
gateway_url = "http://127.0.0.1:$http_port/EWS/Exchange.asmx"
store = "$work/ens.redb"
api_token = "$api_token"

[subscriptions]
pull_interval = "$pull_interval"
EOF
log "starting mock-ens on 127.0.0.1:$ens_port"
RUST_LOG=${BENCH_ENS_LOG:-warn} "$mock_ens" run --config "$work/ens.toml" >"$work/mock-ens.log" 2>&1 &
ens_pid=$!
pids+=("$ens_pid")
wait_for_200 "$ens_pid" "http://127.0.0.1:$ens_port/alive" mock-ens

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
declare -A before
for name in exchange proxy ens; do
  pid_var=${name}_pid
  before[$name]=$(rss_kib "${!pid_var}")
done

# --- registration and subscriptions ------------------------------------------------------------
log "registering $devices $mode devices with mock-ens"
registered=$(python3 bench/ens-scale.py register "http://127.0.0.1:$ens_port" "$api_token" "$devices" "$password" "$mode")
log "$registered"
if [ "$mode" = streaming ]; then
  ready_what="the gateway held $devices open streams"
  ready=$(python3 bench/ens-scale.py wait-streams "http://127.0.0.1:$admin_port/metrics" "$devices" 600)
else
  ready_what="mock-ens showed $devices devices subscribed"
  ready=$(python3 bench/ens-scale.py wait-subscribed "http://127.0.0.1:$ens_port" "$api_token" "$devices" 600)
fi
log "$ready"
for pid in "$exchange_pid" "$proxy_pid" "$ens_pid" "$uem_pid"; do assert_alive "$pid" process; done
declare -A after per_connection
for name in exchange proxy ens; do
  pid_var=${name}_pid
  after[$name]=$(rss_kib "${!pid_var}")
  per_connection[$name]=$(python3 -c "print(round(((${after[$name]}) - (${before[$name]})) / $devices, 1))")
done

# --- latencies ---------------------------------------------------------------------------------
log "delivering $samples mails at $rate/s"
delivery=$(python3 bench/ens-scale.py deliver "https://127.0.0.1:$exchange_port" \
  "http://127.0.0.1:$ens_port" "$api_token" "$devices" "$samples" "$rate" 2>&1) ||
  die "delivery measurement failed: $delivery$(printf '\n')mock-ens:$(printf '\n')$(tail -n 20 "$work/mock-ens.log")$(printf '\n')seg-proxy:$(printf '\n')$(tail -n 20 "$work/seg-proxy.log")"
log "delivery → notification: $delivery"
log "wiping $samples devices at $rate/s"
wipes=$(python3 bench/ens-scale.py wipe "http://127.0.0.1:$uem_port" \
  "http://127.0.0.1:$ens_port" "$api_token" "$devices" "$samples" "$rate" 2>&1) ||
  die "wipe measurement failed: $wipes"
log "wipe → blocked at ENS: $wipes"
# The wait before counting: a notification that leaked would be recorded within a few ms of the
# control device's (streaming, push), or within two polls (pull).
grace=2
if [ "$mode" = pull ]; then
  grace=$(python3 -c "
import re, sys
value, unit = re.fullmatch(r'(\d+)(ms|s|m)', sys.argv[1]).groups()
print(2 + 2 * int(value) * {'ms': 0.001, 's': 1, 'm': 60}[unit])" "$pull_interval")
fi
log "delivering $samples mails to the wiped devices (checked after at least $grace s)"
after_wipe=$(python3 bench/ens-scale.py deliver-wiped "https://127.0.0.1:$exchange_port" \
  "http://127.0.0.1:$ens_port" "$api_token" "$devices" "$samples" "$rate" "$grace" 2>&1) ||
  die "delivery to wiped devices failed: $after_wipe"
log "mail to wiped devices: $after_wipe"
push_row=""
if [ "$mode" = push ]; then
  unsubscribed=$(grep -c "callback answered Unsubscribe" "$work/exchange.log" || true)
  push_row=$'\n'"| their SendNotification answered Unsubscribe (test Exchange's log) | $unsubscribed of $samples |"
fi
open_after=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^seg_compliance_open_streams / { print $2 }')
subscribed_after=$(python3 bench/ens-scale.py subscribed "http://127.0.0.1:$ens_port" "$api_token")
for pid in "$exchange_pid" "$proxy_pid" "$ens_pid" "$uem_pid"; do assert_alive "$pid" process; done

field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
case "$mode" in
  streaming) watched="GetStreamingEvents through the gateway" ;;
  push) watched="Exchange's SendNotification to mock-ens directly" ;;
  pull) watched="GetEvents through the gateway every $pull_interval" ;;
esac
report=$(cat <<EOF

### mock-ens with $devices $mode devices through seg-proxy ($(date -u +%Y-%m-%d))

\`$command_line\` on $(machine_line), commit $(commit_line); all four processes on loopback, load
average $(load_now) at the end.

| measure | value |
|---|---|
| registration of $devices devices (32 concurrent API calls) | $(field "$registered" seconds) s |
| until $ready_what | $(field "$ready" seconds) s after registration |
| RSS per $mode device: mock-ens | ${per_connection[ens]} KiB ($(( ${before[ens]} / 1024 )) → $(( ${after[ens]} / 1024 )) MiB) |
| RSS per $mode device: seg-proxy | ${per_connection[proxy]} KiB ($(( ${before[proxy]} / 1024 )) → $(( ${after[proxy]} / 1024 )) MiB) |
| RSS per $mode device: test Exchange | ${per_connection[exchange]} KiB ($(( ${before[exchange]} / 1024 )) → $(( ${after[exchange]} / 1024 )) MiB) |
| delivery → notification recorded ($watched, then GetItem through the gateway), $samples at $rate/s | p50 $(field "$delivery" p50_ms) ms, p99 $(field "$delivery" p99_ms) ms, max $(field "$delivery" max_ms) ms, missing $(field "$delivery" missing) |
| UEM wipe → device blocked at mock-ens, $samples at $rate/s (target < 1 s) | p50 $(field "$wipes" p50_ms) ms, p99 $(field "$wipes" p99_ms) ms, max $(field "$wipes" max_ms) ms, missing $(field "$wipes" missing) |
| mail to the wiped devices afterwards → notified (must be 0) | $(field "$after_wipe" notified) of $(field "$after_wipe" delivered) |$push_row
| devices subscribed at mock-ens after the wipes | $subscribed_after |
| open streams at the gateway after the wipes | ${open_after:-0} |
EOF
)
printf '%s\n' "$report"
[ -z "$doc" ] ||
  add_run "$doc" 'mock-ens and ENS traffic at scale (issue 6)' '<!-- bench/ens-scale.sh adds its runs above this line -->' "$report"
