#!/usr/bin/env bash
# Proxy throughput (issue 2): wrk POSTs a small SOAP GetFolder over TLS and keep-alive, first
# straight to the test Exchange server, then through seg-proxy, all on loopback; prints a table
# (requests/s, p50, p99, ratio proxy/direct) and appends it, with the machine and the command, to
# docs/benchmarks.md. The target: the proxy keeps at least 70% of the direct throughput.
#
# usage: bench/proxy-throughput.sh
#
# Environment (all optional):
#   BENCH_DURATION=15s      wrk -d of each measured run
#   BENCH_WARMUP=3s         an unrecorded wrk run before each measured one ("0" to skip)
#   BENCH_CONNECTIONS=32    wrk -c
#   BENCH_THREADS=1         wrk -t
#   BENCH_PIN=split         split: wrk on CPU 0, the test Exchange server and seg-proxy on CPU 1
#                           (needs 2 CPUs; falls back to none with fewer); none: no pinning
#   BENCH_EXCHANGE_PORT, BENCH_PROXY_PORT   loopback ports (default: free ones picked at random)
#   BENCH_DOC=docs/benchmarks.md            where the results are added ("" for nowhere)
#   BENCH_NO_BUILD=1        use the release binaries already in the target dir
#   BENCH_MIN_RATIO=0.70    the target ratio proxy/direct
#   BENCH_SERVICE_TIME_MS=0 how long the test Exchange waits before serving each call (a real
#                           Exchange's milliseconds; 0, the default, measures the proxy's cost
#                           against the stand-in's own ≈ 20 µs per request)
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
command_line="bench/proxy-throughput.sh"
for name in BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS BENCH_THREADS BENCH_PIN BENCH_MIN_RATIO BENCH_SERVICE_TIME_MS; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done

duration=${BENCH_DURATION:-15s}
warmup=${BENCH_WARMUP:-3s}
connections=${BENCH_CONNECTIONS:-32}
threads=${BENCH_THREADS:-1}
pin=${BENCH_PIN:-split}
doc=${BENCH_DOC-docs/benchmarks.md}
min_ratio=${BENCH_MIN_RATIO:-0.70}
service_time_ms=${BENCH_SERVICE_TIME_MS:-0}

# --- 1. what it needs ------------------------------------------------------------------------
scripts/install-deps.sh wrk python3 >&2
command -v wrk >/dev/null || die "wrk is not installed"

# --- 2. release binaries ---------------------------------------------------------------------
build_release_binaries

# --- CPU layout ------------------------------------------------------------------------------
cpus=$(nproc)
cpu_layout "$pin" "test Exchange server and seg-proxy"

# Two distinct free loopback ports (unless given).
read -r free_a free_b < <(free_ports 2)
exchange_port=${BENCH_EXCHANGE_PORT:-$free_a}
proxy_port=${BENCH_PROXY_PORT:-$free_b}
for port in "$exchange_port" "$proxy_port"; do
  assert_port_free "$port"
done

# --- 3. PKI and users ------------------------------------------------------------------------
"$seg_testbed" pki --dir "$work/pki" >/dev/null
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
upn=alice@test.local
printf '[{"upn":"%s","password":"%s","mailbox":"%s"}]\n' "$upn" "$password" "$upn" >"$work/users.json"
export BENCH_AUTHORIZATION="Basic $(printf '%s:%s' "$upn" "$password" | base64 -w0)"

# --- 4. servers ------------------------------------------------------------------------------
log "starting the test Exchange server on 127.0.0.1:$exchange_port"
RUST_LOG=warn "${server_cpus[@]}" "$seg_testbed" exchange --listen "127.0.0.1:$exchange_port" \
  --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" \
  --users "$work/users.json" --service-time-ms "$service_time_ms" >"$work/exchange.log" 2>&1 &
exchange_pid=$!
pids+=("$exchange_pid")
wait_for_port "$exchange_pid" "$exchange_port" exchange

cat >"$work/seg.toml" <<EOF
[listen]
https = "127.0.0.1:$proxy_port"

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
"$seg_proxy" check-config --config "$work/seg.toml" >"$work/check-config.txt" 2>&1 ||
  die "seg-proxy check-config failed:$(printf '\n')$(cat "$work/check-config.txt")"
log "starting seg-proxy on 127.0.0.1:$proxy_port"
"${server_cpus[@]}" "$seg_proxy" run --config "$work/seg.toml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_for_port "$proxy_pid" "$proxy_port" proxy
assert_alive "$exchange_pid" exchange
assert_alive "$proxy_pid" proxy

# --- 5. load ---------------------------------------------------------------------------------
# Anything else busy on the machine (another build) lowers the figures: each run notes the CPU
# time that processes other than wrk and the two servers used meanwhile.
wrk_args=(-t"$threads" -c"$connections" --latency -s bench/soap-post.lua)
declare -A rps p50 p99 exchange_us proxy_us wrk_us other_cpu cpu_us

# run NAME URL: a warm-up, then the measured run; checks every response and both processes.
run() {
  wrk_measure "$1" "$2" exchange="$exchange_pid" proxy="$proxy_pid"
  exchange_us[$1]=${cpu_us[$1.exchange]}
  proxy_us[$1]=${cpu_us[$1.proxy]}
}

run direct "https://127.0.0.1:$exchange_port/EWS/Exchange.asmx"
run proxy "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx"
# Memory after the runs: a server that keeps something per request shows here (the test
# Exchange kept every request until 2026-12-06 and grew to 6.6 GB in one run).
exchange_rss=$(rss_mib "$exchange_pid")
proxy_rss=$(rss_mib "$proxy_pid")

# --- 6. report -------------------------------------------------------------------------------
ratio=$(awk -v p="${rps[proxy]}" -v d="${rps[direct]}" 'BEGIN { printf "%.2f", p / d }')
if awk -v r="$ratio" -v m="$min_ratio" 'BEGIN { exit !(r >= m) }'; then
  verdict="**met**: the proxy keeps $ratio of the direct throughput (target ≥ $min_ratio)"
else
  verdict="**not met**: the proxy keeps $ratio of the direct throughput (target ≥ $min_ratio)"
fi
if awk -v d="${other_cpu[direct]}" -v p="${other_cpu[proxy]}" 'BEGIN { exit !(d > 0.1 || p > 0.1) }'; then
  verdict="$verdict — but **unreliable**: other processes took CPU during the runs (direct ${other_cpu[direct]}, proxy ${other_cpu[proxy]} CPUs' worth); run again on a quiet machine"
fi
ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }
# Gateway settings given by SEG_* variables (e.g. SEG_EXCHANGE__POOL__HTTP2_SHORT_REQUESTS=true)
# change what is measured: say which, leaving out anything that may hold a secret.
settings=$(env | awk '/^SEG_/ && !/^[^=]*(PASSWORD|SECRET|TOKEN|KEY)/ { print "`" $0 "`" }' | sort | paste -sd, - | sed 's/,/, /g')

if [ "$service_time_ms" = 0 ]; then
  upstream_timing="serving each call at once"
else
  upstream_timing="waiting $service_time_ms ms before serving each call (\`--service-time-ms\`, a real Exchange's service time)"
fi
report=$(
  cat <<EOF

#### Run of $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $(machine_line)
- commit: $(commit_line); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)
- gateway settings: the defaults (short requests to Exchange over pooled HTTP/1.1, long-lived ones over HTTP/2)${settings:+; from the environment: $settings}
- load: \`wrk -t$threads -c$connections -d$duration --latency -s bench/soap-post.lua\` (after a ${warmup} warm-up), TLS and keep-alive, GetFolder of the inbox with Basic credentials; every response checked to be a 200 EWS success
- upstream: \`seg-testbed exchange\`, $upstream_timing
- layout: $layout
- other processes on the machine during the measured runs (CPUs' worth, of $cpus): direct ${other_cpu[direct]}, proxy ${other_cpu[proxy]}
- resident memory after both runs: test Exchange $exchange_rss, seg-proxy $proxy_rss
- reproduce: \`$command_line\`

| target | requests/s | p50 | p99 | ratio proxy/direct | CPU time per request |
|---|---:|---:|---:|---:|---|
| direct to the test Exchange server | ${rps[direct]} | $(ms "${p50[direct]}") | $(ms "${p99[direct]}") | | wrk ${wrk_us[direct]} µs, Exchange ${exchange_us[direct]} µs |
| through seg-proxy | ${rps[proxy]} | $(ms "${p50[proxy]}") | $(ms "${p99[proxy]}") | $ratio | wrk ${wrk_us[proxy]} µs, Exchange ${exchange_us[proxy]} µs, proxy ${proxy_us[proxy]} µs |

Target (proxy ≥ 70% of direct): $verdict.
EOF
)
printf '%s\n' "$report"
[ -z "$doc" ] ||
  add_run "$doc" 'Proxy throughput (issue 2)' '<!-- bench/proxy-throughput.sh adds its runs above this line -->' "$report"
