#!/usr/bin/env bash
# Proxy throughput with the compliance layer on versus off (issue 3; target: under 5% apart).
#
# The same wrk load as bench/proxy-throughput.sh (a SOAP GetFolder over TLS and keep-alive, now
# with an `X-Device-Id` header), through two seg-proxy instances in front of the same test
# Exchange server: one without `[compliance]` (a plain EWS proxy), one with `[compliance]`
# synced from `seg-testbed uem` (holding BENCH_DEVICES devices, the one wrk sends among them,
# enrolled and compliant, so that every request passes). The runs alternate (off, on, on, off,
# off, on…) so that drifting background load and run order hit both alike; each is checked to be all 200 EWS successes.
# Prints a table and adds it to its section of docs/benchmarks.md.
#
# usage: bench/compliance-overhead.sh
#
# Environment (all optional): those of bench/proxy-throughput.sh (BENCH_DURATION=15s,
# BENCH_WARMUP=3s, BENCH_CONNECTIONS=32, BENCH_THREADS=1, BENCH_PIN=split, BENCH_DOC,
# BENCH_NO_BUILD), and
#   BENCH_DEVICES=1000000     devices in the UEM (and in the gateway's view)
#   BENCH_ROUNDS=2            off/on pairs
#   BENCH_MAX_GAP=0.05        the target: |on − off| / off of the mean requests/s
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
command_line="bench/compliance-overhead.sh"
for name in BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS BENCH_THREADS BENCH_PIN BENCH_DEVICES BENCH_ROUNDS; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done
duration=${BENCH_DURATION:-15s}
warmup=${BENCH_WARMUP:-3s}
connections=${BENCH_CONNECTIONS:-32}
threads=${BENCH_THREADS:-1}
pin=${BENCH_PIN:-split}
doc=${BENCH_DOC-docs/benchmarks.md}
devices=${BENCH_DEVICES:-1000000}
rounds=${BENCH_ROUNDS:-2}
max_gap=${BENCH_MAX_GAP:-0.05}
device_id=EASDEV000001 # enrolled and compliant in bench/uem-devices.py

# --- 1. what it needs, binaries, CPU layout ----------------------------------------------------
scripts/install-deps.sh wrk python3 curl >&2
command -v wrk >/dev/null || die "wrk is not installed"
build_release_binaries
cpu_layout "$pin" "test Exchange server and seg-proxy (both instances)"
layout="$layout; seg-testbed uem unpinned (idle during the runs)"

read -r exchange_port off_port on_port admin_port uem_port < <(free_ports 5)

# --- 2. PKI, users, devices --------------------------------------------------------------------
"$seg_testbed" pki --dir "$work/pki" >/dev/null
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
upn=alice@test.local
printf '[{"upn":"%s","password":"%s","mailbox":"%s"}]\n' "$upn" "$password" "$upn" >"$work/users.json"
export BENCH_AUTHORIZATION="Basic $(printf '%s:%s' "$upn" "$password" | base64 -w0)"
export BENCH_DEVICE_ID=$device_id # sent to both gateways: the same request either way
log "writing $devices devices"
python3 bench/uem-devices.py "$devices" "$work/devices.json"

# --- 3. servers ------------------------------------------------------------------------------
log "starting the test Exchange server on 127.0.0.1:$exchange_port"
RUST_LOG=warn "${server_cpus[@]}" "$seg_testbed" exchange --listen "127.0.0.1:$exchange_port" \
  --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" \
  --users "$work/users.json" >"$work/exchange.log" 2>&1 &
exchange_pid=$!
pids+=("$exchange_pid")
log "starting seg-testbed uem on 127.0.0.1:$uem_port"
RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
  --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" >"$work/uem.log" 2>&1 &
uem_pid=$!
pids+=("$uem_pid")
wait_for_port "$exchange_pid" "$exchange_port" exchange
wait_for_port "$uem_pid" "$uem_port" uem 300

# proxy_config PORT: the gateway's configuration as in bench/proxy-throughput.sh.
proxy_config() {
  cat <<EOF
[listen]
https = "127.0.0.1:$1"

[tls]
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"

[exchange]
url = "https://localhost:$exchange_port"
trust_store = "$work/pki/ca.pem"

[ews]
enable_proxy = true

[log]
filter = "warn"
EOF
}
proxy_config "$off_port" >"$work/off.toml"
{
  proxy_config "$on_port"
  cat <<EOF

[compliance]
uem_url = "https://localhost:$uem_port"
uem_tenant_code = "testbed-tenant-code"
uem_user = "uemapi"
uem_password = "P@ssw0rd!"
uem_trust_store = "$work/pki/ca.pem"
# No sync during the runs: the full sync at start only.
full_sync_interval = "24h"
delta_sync_interval = "24h"

[admin]
listen = "127.0.0.1:$admin_port"
EOF
} >"$work/on.toml"
for name in off on; do
  "$seg_proxy" check-config --config "$work/$name.toml" >"$work/check-config-$name.txt" 2>&1 ||
    die "seg-proxy check-config ($name) failed:$(printf '\n')$(cat "$work/check-config-$name.txt")"
done
log "starting seg-proxy without compliance on 127.0.0.1:$off_port"
"${server_cpus[@]}" "$seg_proxy" run --config "$work/off.toml" >"$work/off.log" 2>&1 &
off_pid=$!
pids+=("$off_pid")
log "starting seg-proxy with compliance on 127.0.0.1:$on_port (admin 127.0.0.1:$admin_port)"
"${server_cpus[@]}" "$seg_proxy" run --config "$work/on.toml" >"$work/on.log" 2>&1 &
on_pid=$!
pids+=("$on_pid")
wait_for_port "$off_pid" "$off_port" off
sync_started=$SECONDS
wait_for_200 "$on_pid" "http://127.0.0.1:$admin_port/readyz" on 300
log "compliance view loaded ($devices devices) $((SECONDS - sync_started)) s after start"
wait_for_port "$on_pid" "$on_port" on
on_rss=$(rss_mib "$on_pid")
off_rss=$(rss_mib "$off_pid")

# The layer is really there: the device passes, an unknown one is refused with the 403.
# The SOAP body of bench/soap-post.lua (the quoted pieces of `wrk.body = … .. …`, with its
# `operation`: the GetFolder of `local get_folder = …`).
python3 -c '
import re, sys
lua = open(sys.argv[1]).read()
def quoted(name):
    text = lua[lua.index(name):].split("\nlocal ")[0].split("\n\n")[0]
    return "".join(re.findall(r"\x27([^\x27]*)\x27", text))
print(quoted("wrk.body =").replace("<s:Body></s:Body>", "<s:Body>" + quoted("local get_folder =") + "</s:Body>"), end="")
' bench/soap-post.lua >"$work/soap.xml"
grep -q "<m:GetFolder>" "$work/soap.xml" || die "no GetFolder read from bench/soap-post.lua"
probe() { # probe PORT DEVICE → HTTP status
  curl -s -o /dev/null -w '%{http_code}' --cacert "$work/pki/ca.pem" \
    -H "Authorization: $BENCH_AUTHORIZATION" -H "X-Device-Id: $2" \
    -H 'Content-Type: text/xml; charset=utf-8' --data-binary @"$work/soap.xml" \
    "https://localhost:$1/EWS/Exchange.asmx"
}
[ "$(probe "$on_port" "$device_id")" = 200 ] || die "device $device_id is not let through the compliance gateway"
[ "$(probe "$on_port" NOSUCHDEVICE)" = 403 ] || die "an unknown device is not refused: is the compliance layer on?"
[ "$(probe "$off_port" NOSUCHDEVICE)" = 200 ] || die "the gateway without compliance refuses requests"

# --- 4. load, alternating ----------------------------------------------------------------------
wrk_args=(-t"$threads" -c"$connections" --latency -s bench/soap-post.lua)
declare -A rps p50 p99 wrk_us cpu_us other_cpu
load_before=$(load_now)
names=()
measure_off() {
  wrk_measure "off$1" "https://127.0.0.1:$off_port/EWS/Exchange.asmx" \
    exchange="$exchange_pid" proxy="$off_pid" uem="$uem_pid" idle_proxy="$on_pid"
}
measure_on() {
  wrk_measure "on$1" "https://127.0.0.1:$on_port/EWS/Exchange.asmx" \
    exchange="$exchange_pid" proxy="$on_pid" uem="$uem_pid" idle_proxy="$off_pid"
}
# ABBA: off, on, then on, off, … so that neither always runs second.
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    measure_off "$round"
    measure_on "$round"
    names+=("off$round" "on$round")
  else
    measure_on "$round"
    measure_off "$round"
    names+=("on$round" "off$round")
  fi
done
load_after=$(load_now)

# --- 5. report -------------------------------------------------------------------------------
mean() { # mean PREFIX ARRAY
  local -n values=$2
  local i sum=0
  for i in $(seq 1 "$rounds"); do sum=$(awk -v a="$sum" -v b="${values[$1$i]}" 'BEGIN { print a + b }'); done
  awk -v s="$sum" -v n="$rounds" 'BEGIN { printf "%.1f", s / n }'
}
off_mean=$(mean off rps)
on_mean=$(mean on rps)
gap=$(awk -v a="$on_mean" -v b="$off_mean" 'BEGIN { printf "%.3f", (b - a) / b }')
abs_gap=$(awk -v g="$gap" 'BEGIN { print (g < 0) ? -g : g }')
# "2.3% fewer" or "1.5% more": the sign said in words.
pct=$(awk -v g="$gap" 'BEGIN { if (g >= 0) printf "%.1f%% fewer", g * 100; else printf "%.1f%% more", -g * 100 }')
if awk -v g="$abs_gap" -v m="$max_gap" 'BEGIN { exit !(g < m) }'; then
  verdict="**met**: with the compliance layer the proxy serves $on_mean requests/s against $off_mean without, $pct (target: under $(awk -v m="$max_gap" 'BEGIN { printf "%g%%", m * 100 }') apart)"
else
  verdict="**not met**: with the compliance layer the proxy serves $on_mean requests/s against $off_mean without, $pct (target: under $(awk -v m="$max_gap" 'BEGIN { printf "%g%%", m * 100 }') apart)"
fi
disturbed=""
for name in "${names[@]}"; do
  if awk -v o="${other_cpu[$name]}" 'BEGIN { exit !(o > 0.1) }'; then disturbed="$disturbed $name=${other_cpu[$name]}"; fi
done
[ -z "$disturbed" ] || verdict="$verdict — but **unreliable**: other processes took CPU during runs ($disturbed CPUs' worth); run again on a quiet machine"
ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }
rows=""
for name in "${names[@]}"; do
  what="without compliance"
  [ "${name#on}" = "$name" ] || what="with compliance ($devices devices in the view)"
  rows="$rows| $name | $what | ${rps[$name]} | $(ms "${p50[$name]}") | $(ms "${p99[$name]}") | ${cpu_us[$name.proxy]} µs | ${cpu_us[$name.exchange]} µs | ${wrk_us[$name]} µs | ${other_cpu[$name]} |
"
done
report=$(
  cat <<EOF

#### Compliance on/off, run of $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $(machine_line)
- commit: $(commit_line); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)
- load: \`wrk -t$threads -c$connections -d$duration --latency -s bench/soap-post.lua\` (after a ${warmup} warm-up) with \`X-Device-Id: $device_id\`, TLS and keep-alive, GetFolder of the inbox with Basic credentials; every response checked to be a 200 EWS success; runs alternate off/on in ABBA order, $rounds rounds
- gateways: the same seg-proxy binary and configuration, without \`[compliance]\` and with it (UEM \`seg-testbed uem\` over TLS, $devices devices, view loaded by the full sync at start; \`/readyz\` 200 before loading; probes checked that the device passes and an unknown one gets 403). RSS after start: without $off_rss, with $on_rss
- layout: $layout
- load average (1 min) before the runs $load_before, after $load_after
- reproduce: \`$command_line\`

| run | gateway | requests/s | p50 | p99 | proxy CPU/request | Exchange CPU/request | wrk CPU/request | other processes (CPUs' worth) |
|---|---|---:|---:|---:|---:|---:|---:|---:|
${rows%$'\n'}

Mean requests/s: without compliance $off_mean, with $on_mean. Target (under 5% apart): $verdict.
EOF
)
printf '%s\n' "$report"
[ -z "$doc" ] ||
  add_run "$doc" 'Compliance (issue 3)' '<!-- bench/compliance-overhead.sh adds its runs above this line -->' "$report"
