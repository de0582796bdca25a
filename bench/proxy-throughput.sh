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
#   BENCH_DOC=docs/benchmarks.md            where the results are appended ("" for nowhere)
#   BENCH_NO_BUILD=1        use the release binaries already in the target dir
#   BENCH_MIN_RATIO=0.70    the target ratio proxy/direct
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
command_line="bench/proxy-throughput.sh"
for name in BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS BENCH_THREADS BENCH_PIN BENCH_MIN_RATIO; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done

duration=${BENCH_DURATION:-15s}
warmup=${BENCH_WARMUP:-3s}
connections=${BENCH_CONNECTIONS:-32}
threads=${BENCH_THREADS:-1}
pin=${BENCH_PIN:-split}
doc=${BENCH_DOC-docs/benchmarks.md}
min_ratio=${BENCH_MIN_RATIO:-0.70}
start_deadline=30 # seconds for a server to accept connections

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# --- 1. what it needs ------------------------------------------------------------------------
scripts/install-deps.sh wrk python3 >&2
command -v wrk >/dev/null || die "wrk is not installed"

# --- 2. release binaries ---------------------------------------------------------------------
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "building release binaries"
  cargo build --release --locked -p seg-proxy -p seg-testbed-cli >&2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
seg_proxy=$target_dir/release/seg-proxy
seg_testbed=$target_dir/release/seg-testbed
[ -x "$seg_proxy" ] && [ -x "$seg_testbed" ] || die "missing $seg_proxy or $seg_testbed"

# --- CPU layout ------------------------------------------------------------------------------
cpus=$(nproc)
if [ "$pin" = split ] && [ "$cpus" -lt 2 ]; then
  log "only $cpus CPU: not pinning"
  pin=none
fi
case $pin in
  split)
    client_cpus=(taskset -c 0)
    server_cpus=(taskset -c 1)
    layout="wrk pinned to CPU 0; test Exchange server and seg-proxy pinned together to CPU 1"
    ;;
  none)
    client_cpus=()
    server_cpus=()
    layout="no pinning: wrk, test Exchange server and seg-proxy share all $cpus CPUs"
    ;;
  *) die "BENCH_PIN must be split or none, not '$pin'" ;;
esac

# --- processes and cleanup -------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/seg-bench.XXXXXX")
pids=()
cleanup() {
  local status=$? pid deadline
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    # seg-testbed exchange stops on SIGINT, seg-proxy drains on SIGINT or SIGTERM.
    kill -INT "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Two distinct free loopback ports (unless given).
read -r free_a free_b < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
exchange_port=${BENCH_EXCHANGE_PORT:-$free_a}
proxy_port=${BENCH_PROXY_PORT:-$free_b}
# A port already taken would make the readiness check below talk to someone else's server.
for port in "$exchange_port" "$proxy_port"; do
  python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$port" \
    2>/dev/null || die "port $port on 127.0.0.1 is already in use"
done

# Waits until 127.0.0.1:$2 accepts connections while process $1 lives; $3 names it.
wait_for_port() {
  local pid=$1 port=$2 name=$3 deadline=$((SECONDS + start_deadline))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name exited before listening; its log:$(printf '\n')$(tail -n 20 "$work/$name.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "$name does not accept connections on port $port after ${start_deadline}s"
    sleep 0.05
  done
}

assert_alive() {
  kill -0 "$1" 2>/dev/null || die "$2 died; its log:$(printf '\n')$(tail -n 20 "$work/$2.log")"
}

# utime + stime of a process, in clock ticks.
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) } # fields after the command name
  awk '{ print $12 + $13 }' <<<"$stat"
}

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
  --users "$work/users.json" >"$work/exchange.log" 2>&1 &
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
# busy_ticks: CPU time the whole machine spent not idle, in clock ticks (guest time is already
# counted in user time).
busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
wrk_args=(-t"$threads" -c"$connections" --latency -s bench/soap-post.lua)
declare -A rps p50 p99 exchange_us proxy_us wrk_us other_cpu
clk_tck=$(getconf CLK_TCK)

# run NAME URL: a warm-up, then the measured run; checks every response and both processes.
run() {
  local name=$1 url=$2 result field value key requests
  local before_e before_p before_all after_e after_p after_all
  if [ "$warmup" != 0 ]; then
    "${client_cpus[@]}" wrk "${wrk_args[@]}" -d"$warmup" "$url" >"$work/$name.warmup.txt" 2>&1 ||
      die "wrk warm-up against $name failed:$(printf '\n')$(cat "$work/$name.warmup.txt")"
  fi
  log "wrk -t$threads -c$connections -d$duration against $name: $url"
  before_e=$(cpu_ticks "$exchange_pid")
  before_p=$(cpu_ticks "$proxy_pid")
  before_all=$(busy_ticks)
  local TIMEFORMAT='%U %S' # the CPU seconds wrk itself used, from bash's time
  if ! { time "${client_cpus[@]}" wrk "${wrk_args[@]}" -d"$duration" "$url" >"$work/$name.txt" 2>&1; } \
    2>"$work/$name.time"; then
    die "wrk against $name failed:$(printf '\n')$(cat "$work/$name.txt")"
  fi
  after_e=$(cpu_ticks "$exchange_pid")
  after_p=$(cpu_ticks "$proxy_pid")
  after_all=$(busy_ticks)
  sed 's/^/  /' "$work/$name.txt" >&2
  assert_alive "$exchange_pid" exchange
  assert_alive "$proxy_pid" proxy
  result=$(grep '^RESULT ' "$work/$name.txt") || die "no RESULT line from wrk against $name"
  declare -A got=()
  for field in ${result#RESULT }; do
    key=${field%%=*}
    value=${field#*=}
    got[$key]=$value
  done
  requests=${got[requests]}
  [ "$requests" -gt 0 ] || die "$name: no request completed"
  for key in non2xx not_success err_connect err_read err_write err_status err_timeout; do
    [ "${got[$key]}" = 0 ] || die "$name: $key=${got[$key]} (every response must be a 200 EWS success)"
  done
  [ "${got[responses]}" = "$requests" ] || die "$name: ${got[responses]} responses for $requests requests"
  rps[$name]=${got[rps]}
  p50[$name]=${got[p50_us]}
  p99[$name]=${got[p99_us]}
  # CPU time each server process spent per request during the measured run.
  exchange_us[$name]=$(awk -v t=$((after_e - before_e)) -v hz="$clk_tck" -v n="$requests" \
    'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
  wrk_us[$name]=$(awk -v n="$requests" '{ printf "%.0f", ($1 + $2) * 1e6 / n }' "$work/$name.time")
  # CPUs' worth of time other processes used during the run (0.00 on an otherwise idle machine).
  other_cpu[$name]=$(awk -v all=$((after_all - before_all)) -v e=$((after_e - before_e)) \
    -v p=$((after_p - before_p)) -v hz="$clk_tck" -v us="${got[duration_us]}" '
    { other = (all - e - p) / hz - ($1 + $2); if (other < 0) other = 0
      printf "%.2f", other / (us / 1e6) }' "$work/$name.time")
  proxy_us[$name]=$(awk -v t=$((after_p - before_p)) -v hz="$clk_tck" -v n="$requests" \
    'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
}

run direct "https://127.0.0.1:$exchange_port/EWS/Exchange.asmx"
run proxy "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx"

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
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

report=$(
  cat <<EOF

#### Run of $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $cpus CPUs ($cpu_model), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)
- commit: $commit; $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)
- load: \`wrk -t$threads -c$connections -d$duration --latency -s bench/soap-post.lua\` (after a ${warmup} warm-up), TLS and keep-alive, GetFolder of the inbox with Basic credentials; every response checked to be a 200 EWS success
- layout: $layout
- other processes on the machine during the measured runs (CPUs' worth, of $cpus): direct ${other_cpu[direct]}, proxy ${other_cpu[proxy]}
- reproduce: \`$command_line\`

| target | requests/s | p50 | p99 | ratio proxy/direct | CPU time per request |
|---|---:|---:|---:|---:|---|
| direct to the test Exchange server | ${rps[direct]} | $(ms "${p50[direct]}") | $(ms "${p99[direct]}") | | wrk ${wrk_us[direct]} µs, Exchange ${exchange_us[direct]} µs |
| through seg-proxy | ${rps[proxy]} | $(ms "${p50[proxy]}") | $(ms "${p99[proxy]}") | $ratio | wrk ${wrk_us[proxy]} µs, Exchange ${exchange_us[proxy]} µs, proxy ${proxy_us[proxy]} µs |

Target (proxy ≥ 70% of direct): $verdict.
EOF
)
printf '%s\n' "$report"
if [ -n "$doc" ]; then
  printf '%s\n' "$report" >>"$doc"
  log "appended to $doc"
fi
