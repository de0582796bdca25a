#!/usr/bin/env bash
# seg-proxy against nginx and HAProxy, side by side (issue 7), in one go on loopback.
#
# The same fast upstream for every contender (`seg-testbed static-soap` over TLS: a canned small
# GetFolderResponse, or 1 MiB for a GetItem), and in front of it, one at a time:
#   nginx        TLS reverse proxy, keep-alive to the upstream, worker_processes = BENCH_WORKERS,
#                access log off, proxy_buffering off (what EWS streaming needs)
#   haproxy      TLS front end, nbthread = BENCH_WORKERS, http-reuse always
#   seg-proxy    proxying only (TOKIO_WORKER_THREADS = BENCH_WORKERS)
#   seg-full     seg-proxy with every layer on: compliance (a view synced from seg-testbed uem,
#                the device sent in X-Device-Id), auth modes (Basic/Bearer rules, challenges
#                stripped, NTLM refused), client certificates asked for (optional), SOAP checks
#   seg-kcd      seg-full, and Kerberos constrained delegation: every request comes with a client
#                certificate (alice@TEST.LOCAL) and no Authorization, and goes to the upstream
#                with a Negotiate token the gateway built from the user's cached S4U2Proxy
#                ticket (a real MIT KDC, seg-testbed kdc, issues the tickets). wrk cannot present
#                a client certificate: oha loads this contender, at saturation too
# For each contender, HTTP/1.1 keep-alive over TLS, checked to be all 200 EWS successes:
#   - requests/s at saturation (wrk, small SOAP), and the contender's CPU per 100k requests
#     (user space + kernel: utime and stime of its processes)
#   - requests/s and MiB/s with 1 MiB GetItem responses (wrk)
#   - p50/p99/p99.9 at a fixed moderate rate (oha -q with latency correction: no coordinated
#     omission)
#   - memory per idle keep-alive connection (BENCH_IDLE connections, one request each, held)
#   - peak RSS (VmHWM, summed over the contender's processes)
# Prints a table with ratios to the faster of nginx and HAProxy and adds it, with the machine
# and the command, to its section of docs/benchmarks.md.
#
# usage: bench/compare.sh
#
# Environment (all optional):
#   BENCH_CONTENDERS="nginx haproxy seg-proxy seg-full seg-kcd"
#   BENCH_WORKERS=1         worker processes/threads of every contender
#   BENCH_PIN=split         split: load generators and the upstream on CPU 0, the contender alone
#                           on CPU 1 (needs 2 CPUs); none: no pinning
#   BENCH_DURATION=15s      each measured wrk/oha run; BENCH_WARMUP=3s before each contender
#   BENCH_CONNECTIONS=32    connections of the small-request runs; BENCH_LARGE_CONNECTIONS=8
#   BENCH_RATE=4000         requests/s of the fixed-rate latency run
#   BENCH_UPSTREAM_HTTP2=1  the upstream offers HTTP/2 by ALPN as well, as Exchange on IIS 10
#                           does; each contender speaks the best it can: nginx HTTP/1.1 (it has
#                           no HTTP/2 to upstreams), HAProxy HTTP/2 (alpn h2 on its server
#                           line), seg-proxy what exchange.pool chooses: HTTP/1.1 for these
#                           short requests unless http2_short_requests is set
#   BENCH_IDLE=10000        idle keep-alive connections ("0" to skip). HAProxy gets 9,000 at
#                           most: this machine's hard limit is 20,000 descriptors per process,
#                           unraisable even by root, and HAProxy reserves two per connection
#                           (maxconn 9,900 here)
#   BENCH_DOC=docs/benchmarks.md   where the results are added ("" for nowhere)
#   BENCH_NO_BUILD=1        use the release binaries already in the target dir
#   BENCH_SEG_PROXY=PATH    run that seg-proxy binary (another build); the run's record names it
#   BENCH_ROUNDS=1          rounds over the contenders (each round in a rotated order; idle
#                           memory in the first only). With more than one, each figure is the
#                           median over the rounds and each ratio the median of the rounds' own
#                           ratios, with their range: the machine's drift between runs (±10% on
#                           a shared VM) then shows instead of hiding in one run's ratio
#   BENCH_LOAD=             "oha": oha loads every contender at saturation, not only seg-kcd
#                           (to compare seg-kcd with the others under the same load generator)
#   BENCH_PERF=             a directory: a perf profile of each contender's processes during
#                           its small-request saturation run, CONTENDER.ROUND.data there (flat,
#                           no call graphs: nginx and HAProxy have no frame pointers), for
#                           `perf report -i FILE --sort dso,sym`: where each one's CPU goes
#   BENCH_PERF_CALLERS=     with BENCH_PERF, "1": call graphs too (`perf record -g`), for
#                           `perf report --no-children -S SYMBOL -G`: who calls a kernel
#                           function (the kernel's stacks are whole; user space's stop where a
#                           library has no frame pointers); "dwarf": user space's stacks
#                           unwound from their debug info (seg-proxy only; large files)
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
command_line="bench/compare.sh"
for name in BENCH_CONTENDERS BENCH_WORKERS BENCH_PIN BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS \
  BENCH_LARGE_CONNECTIONS BENCH_RATE BENCH_IDLE BENCH_ROUNDS BENCH_UPSTREAM_HTTP2 BENCH_LOAD; do
  [ -z "${!name:-}" ] || command_line="$name=\"${!name}\" $command_line"
done
contenders=(${BENCH_CONTENDERS:-nginx haproxy seg-proxy seg-full seg-kcd})
workers=${BENCH_WORKERS:-1}
pin=${BENCH_PIN:-split}
duration=${BENCH_DURATION:-15s}
warmup=${BENCH_WARMUP:-3s}
connections=${BENCH_CONNECTIONS:-32}
large_connections=${BENCH_LARGE_CONNECTIONS:-8}
rate=${BENCH_RATE:-4000}
idle=${BENCH_IDLE:-10000}
haproxy_idle=9000 # see BENCH_IDLE above
rounds=${BENCH_ROUNDS:-1}
upstream_http2=${BENCH_UPSTREAM_HTTP2:-}
load=${BENCH_LOAD:-}
[ -z "$load" ] || [ "$load" = oha ] || die "BENCH_LOAD must be empty or oha, not '$load'"
if [ -n "$upstream_http2" ]; then
  upstream_args=(--http2)
  haproxy_server_alpn=h2,http/1.1
  upstream_protocol="HTTP/2 offered by ALPN as well as HTTP/1.1 (nginx speaks HTTP/1.1 to it, HAProxy HTTP/2, seg-proxy HTTP/2 for long-lived requests only, so HTTP/1.1 here)"
else
  upstream_args=()
  haproxy_server_alpn=http/1.1
  upstream_protocol="HTTP/1.1"
fi
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive number, not '$rounds'"
doc=${BENCH_DOC-docs/benchmarks.md}
device_id=EASDEV000001 # enrolled and compliant in bench/uem-devices.py
has_contender() { [[ " ${contenders[*]} " == *" $1 "* ]]; }

# --- 1. what it needs --------------------------------------------------------------------------
scripts/install-deps.sh wrk nginx haproxy python3 curl >&2
perf_dir=${BENCH_PERF:-}
perf_bin=
case ${BENCH_PERF_CALLERS:-} in
  "") perf_graph=() ;;
  1) perf_graph=(--call-graph=fp) ;;
  dwarf) perf_graph=(--call-graph=dwarf) ;;
  *) die "BENCH_PERF_CALLERS must be empty, 1 or dwarf, not '$BENCH_PERF_CALLERS'" ;;
esac
if [ -n "$perf_dir" ]; then
  scripts/install-deps.sh linux-perf >&2
  perf_bin=$(command -v perf || ls /usr/bin/perf_* 2>/dev/null | head -n 1)
  [ -n "$perf_bin" ] || die "perf is missing"
  mkdir -p "$perf_dir"
  perf_dir=$(cd "$perf_dir" && pwd)
fi
oha=$(oha_binary)
build_release_binaries
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$nginx_bin" ] && [ -x "$haproxy_bin" ] || die "nginx or haproxy is missing"

cpus=$(nproc)
if [ "$pin" = split ] && [ "$cpus" -ge 2 ]; then
  client_cpus=(taskset -c 0)
  server_cpus=(taskset -c 1)
  load_cpu=0
  layout="wrk/oha and the upstream pinned to CPU 0; the contender alone on CPU 1"
else
  client_cpus=()
  server_cpus=()
  load_cpu=
  layout="no pinning: load generators, upstream and contender share all $cpus CPUs"
fi

# --- 2. PKI, credentials, devices, upstream ------------------------------------------------------
"$seg_testbed" pki --dir "$work/pki" --client "$kcd_upn" >/dev/null
client_cert=$work/pki/$kcd_upn.pem
client_key=$work/pki/$kcd_upn.key
cat "$work/pki/server.pem" "$work/pki/server.key" >"$work/pki/haproxy.pem"
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
export BENCH_AUTHORIZATION="Basic $(printf '%s:%s' alice@test.local "$password" | base64 -w0)"
export BENCH_DEVICE_ID=$device_id
python3 bench/uem-devices.py 10000 "$work/devices.json"
# The bodies wrk's script sends (bench/soap-post.lua), for curl and oha: the GetFolder, and the
# GetItem the upstream answers with 1 MiB.
soap_body() { # soap_body OPERATION NEXT: the envelope around the Lua strings from "local OPERATION" to "local NEXT"
  python3 -c '
import re, sys
lua, start, end = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
body = lua[lua.index("local " + start):lua.index("local " + end)]
print("<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"><s:Body>" + "".join(re.findall(r"\x27([^\x27]*)\x27", body)) + "</s:Body></s:Envelope>", end="")
' bench/soap-post.lua "$1" "$2"
}
soap_body get_folder get_item >"$work/soap.xml"
soap_body get_item operation >"$work/get-item.xml"

kcd_krb5_conf=
kcd_keytab=
! has_contender seg-kcd || start_kdc

read -r upstream_port proxy_port admin_port uem_port < <(free_ports 4)
log "starting the static SOAP upstream on 127.0.0.1:$upstream_port"
RUST_LOG=warn TOKIO_WORKER_THREADS=1 "${client_cpus[@]}" "$seg_testbed" static-soap \
  --listen "127.0.0.1:$upstream_port" --tls-cert "$work/pki/server.pem" \
  --tls-key "$work/pki/server.key" "${upstream_args[@]}" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
pids+=("$upstream_pid")
wait_for_port "$upstream_pid" "$upstream_port" upstream

# --- 3. the contenders' configurations -----------------------------------------------------------
mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $workers;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream ews { server 127.0.0.1:$upstream_port; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$proxy_port ssl;
    ssl_certificate $work/pki/server.pem;
    ssl_certificate_key $work/pki/server.key;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 10m;
    location / {
      proxy_pass https://ews;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/pki/ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread $workers
  maxconn 9900
  ssl-server-verify required
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always
frontend ews_in
  bind 127.0.0.1:$proxy_port ssl crt $work/pki/haproxy.pem alpn http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend ews
backend ews
  http-request set-header Host localhost
  server exchange 127.0.0.1:$upstream_port ssl verify required ca-file $work/pki/ca.pem sni str(localhost) verifyhost localhost alpn $haproxy_server_alpn
EOF
seg_proxy_config plain "$proxy_port" "$upstream_port" >"$work/seg-proxy.toml"
seg_proxy_config full "$proxy_port" "$upstream_port" "$uem_port" "$admin_port" >"$work/seg-full.toml"
seg_proxy_names=(seg-proxy seg-full)
if has_contender seg-kcd; then
  seg_proxy_config kcd "$proxy_port" "$upstream_port" "$uem_port" "$admin_port" >"$work/seg-kcd.toml"
  seg_proxy_names+=(seg-kcd)
fi
for name in "${seg_proxy_names[@]}"; do
  "$seg_proxy" check-config --config "$work/$name.toml" >"$work/check-$name.txt" 2>&1 ||
    die "seg-proxy check-config ($name) failed:$(printf '\n')$(cat "$work/check-$name.txt")"
done
"$nginx_bin" -t -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx-check.txt" 2>&1 ||
  die "nginx -t failed:$(printf '\n')$(cat "$work/nginx-check.txt")"
"$haproxy_bin" -c -f "$work/haproxy.cfg" >"$work/haproxy-check.txt" 2>&1 ||
  die "haproxy -c failed:$(printf '\n')$(cat "$work/haproxy-check.txt")"

uem_pid=
if has_contender seg-full || has_contender seg-kcd; then
  RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
    --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" >"$work/uem.log" 2>&1 &
  uem_pid=$!
  pids+=("$uem_pid")
  wait_for_port "$uem_pid" "$uem_port" uem 120
fi

# --- 4. measuring one contender ------------------------------------------------------------------
# The pids of a contender: its main process and its children (nginx's workers).
family() {
  echo "$1"
  pgrep -P "$1" || true
}
sum_status() { # sum_status FIELD PID… → KiB
  local total=0 pid value
  for pid in "$@"; do
    value=$(awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${value:-0}))
  done
  echo "$total"
}
cpu_idle_busy() { # cpu_idle_busy CPU → "IDLE_TICKS ALL_TICKS" of that CPU so far (/proc/stat)
  awk -v cpu="cpu$1" '$1 == cpu { idle = $5 + $6; all = 0; for (i = 2; i <= NF; i++) all += $i; print idle, all }' /proc/stat
}
sum_cpu() { # sum_cpu user|system PID… → clock ticks
  local total=0 pid part=$1
  shift
  for pid in "$@"; do total=$((total + $(cpu_ticks "$pid" "$part"))); done
  echo "$total"
}

wrk_run() { # wrk_run NAME CONNECTIONS DURATION [env…] → $work/NAME.txt, RESULT fields in got[]
  local name=$1 conns=$2 length=$3
  shift 3
  env "$@" "${client_cpus[@]}" wrk -t1 -c"$conns" -d"$length" --latency -s bench/soap-post.lua \
    "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx" >"$work/$name.txt" 2>&1 ||
    die "wrk ($name) failed:$(printf '\n')$(cat "$work/$name.txt")"
  wrk_result "$name" "$work/$name.txt"
}

# How contender NAME's clients authenticate: Basic credentials, or (seg-kcd) a client certificate
# and no Authorization. Sets identity (arguments of curl and oha, which spell them alike) and
# idle_identity (environment of bench/idle-connections.py).
identify() {
  if [ "$1" = seg-kcd ]; then
    identity=(--cert "$client_cert" --key "$client_key")
    idle_identity=(BENCH_AUTHORIZATION= BENCH_CLIENT_CERT="$client_cert" BENCH_CLIENT_KEY="$client_key")
  else
    identity=(-H "Authorization: $BENCH_AUTHORIZATION")
    idle_identity=()
  fi
}
# Which load generator saturates contender NAME: wrk, or oha for seg-kcd (wrk presents no client
# certificate) and with BENCH_LOAD=oha.
saturation_tool() {
  if [ "$1" = seg-kcd ] || [ "$load" = oha ]; then echo oha; else echo wrk; fi
}
declare -A tool_used

# oha_post NAME BODY_FILE [oha options…]: oha POSTs BODY_FILE as the contender's client (see
# identify) into $work/NAME.json, for the options' time; dies if oha fails.
oha_post() {
  local name=$1 body=$2
  shift 2
  "${client_cpus[@]}" "$oha" --no-tui --output-format json "$@" \
    --wait-ongoing-requests-after-deadline --insecure -m POST "${identity[@]}" \
    -H "X-Device-Id: $device_id" -H 'Content-Type: text/xml; charset=utf-8' -D "$body" \
    "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx" >"$work/$name.json" 2>"$work/$name.err" ||
    die "oha ($name) failed:$(printf '\n')$(cat "$work/$name.err")"
}
oha_run() { # oha_run NAME CONNECTIONS DURATION BODY_FILE → $work/NAME.json, got[requests] and got[rps]
  local name=$1 summary
  oha_post "$name" "$4" -z "$3" -c "$2"
  summary=$(python3 bench/oha-percentiles.py --throughput "$work/$name.json" 2>&1) ||
    die "$name: $summary (every response must be a 200)"
  got=()
  read -r 'got[requests]' 'got[rps]' <<<"$summary"
  [ "${got[requests]}" -gt 0 ] || die "$name: no request completed"
}
# saturate NAME small|large CONTENDER [DURATION]: the saturation run of CONTENDER with small SOAP requests or
# 1 MiB GetItem answers, by the tool saturation_tool names.
saturate() { # saturate NAME SMALL|LARGE CONTENDER [DURATION]
  local name=$1 contender=$3 length=${4:-$duration} conns=$connections body=$work/soap.xml
  local wrk_env=()
  if [ "$2" = large ]; then
    conns=$large_connections
    body=$work/get-item.xml
    wrk_env=(BENCH_OPERATION=GetItem BENCH_CHECK_BODY=0)
  fi
  if [ "$(saturation_tool "$contender")" = oha ]; then
    oha_run "$name" "$conns" "$length" "$body"
  else
    wrk_run "$name" "$conns" "$length" "${wrk_env[@]}"
  fi
}

# Per contender: this round's figures, and every round's (space-separated, for the medians).
declare -A rps large_rps idle_kib peak_mib
declare -A all_load_idle # the load side's CPU, idle share over each small saturation run
declare -A all_rps all_cpu100k all_user100k all_system100k all_large_rps all_p50 all_p99 all_p999 all_ratio all_large_ratio
declare -A got
measure() { # measure CONTENDER PID ROUND
  local name=$1 pid=$2 round=$3 procs before_user before_system after_user after_system status_file idle_pid before_rss after_rss deadline
  # Every response right, through this contender, before measuring anything.
  local code
  identify "$name"
  tool_used[$name]=$(saturation_tool "$name")
  code=$(curl -sk -o "$work/$name.probe" -w '%{http_code}' "${identity[@]}" \
    -H "X-Device-Id: $device_id" -H 'Content-Type: text/xml; charset=utf-8' \
    --data-binary @"$work/soap.xml" "https://127.0.0.1:$proxy_port/EWS/Exchange.asmx") || code=000
  [ "$code" = 200 ] && grep -q 'ResponseClass="Success"' "$work/$name.probe" ||
    die "$name: a probe request got $code, not a 200 EWS success"

  [ "$warmup" = 0 ] || saturate "$name.warmup" small "$name" "$warmup"
  mapfile -t procs < <(family "$pid")
  log "$name: saturation, small SOAP (${tool_used[$name]} -c$connections, $duration)"
  local recorder=
  if [ -n "$perf_dir" ]; then
    "$perf_bin" record -q -F 1999 "${perf_graph[@]}" -o "$perf_dir/$name.$round.data" \
      -p "$(IFS=,; echo "${procs[*]}")" >"$work/$name.perf.log" 2>&1 &
    recorder=$!
  fi
  before_user=$(sum_cpu user "${procs[@]}")
  before_system=$(sum_cpu system "${procs[@]}")
  local load_before=
  [ -z "$load_cpu" ] || load_before=$(cpu_idle_busy "$load_cpu")
  saturate "$name.small" small "$name"
  after_user=$(sum_cpu user "${procs[@]}")
  after_system=$(sum_cpu system "${procs[@]}")
  if [ -n "$load_cpu" ]; then
    all_load_idle[$name]+="$(echo "$load_before $(cpu_idle_busy "$load_cpu")" |
      awk '{ printf "%.1f", ($4 > $2 ? 100 * ($3 - $1) / ($4 - $2) : 0) }') "
  fi
  if [ -n "$recorder" ]; then
    kill -INT "$recorder" 2>/dev/null || true
    wait "$recorder" || true # perf exits non-zero on SIGINT
    [ -s "$perf_dir/$name.$round.data" ] ||
      die "perf record ($name) wrote nothing: $(cat "$work/$name.perf.log")"
  fi
  rps[$name]=${got[rps]}
  all_rps[$name]+="${got[rps]} "
  per100k() { awk -v t="$1" -v hz="$clk_tck" -v n="${got[requests]}" 'BEGIN { printf "%.2f", t / hz * 100000 / n }'; }
  all_cpu100k[$name]+="$(per100k $((after_user - before_user + after_system - before_system))) "
  all_user100k[$name]+="$(per100k $((after_user - before_user))) "
  all_system100k[$name]+="$(per100k $((after_system - before_system))) "

  log "$name: saturation, 1 MiB GetItem responses (${tool_used[$name]} -c$large_connections, $duration)"
  saturate "$name.large" large "$name"
  large_rps[$name]=${got[rps]}
  all_large_rps[$name]+="${got[rps]} "

  log "$name: latency at a fixed $rate requests/s (oha -q $rate -c$connections -z $duration)"
  oha_post "$name.oha" "$work/soap.xml" -z "$duration" -q "$rate" -c "$connections" --latency-correction
  local percentiles
  percentiles=$(python3 bench/oha-percentiles.py "$work/$name.oha.json" 2>&1) ||
    die "$name: the fixed-rate run had failures: $percentiles"
  local p50 p99 p999
  read -r p50 p99 p999 <<<"$percentiles"
  all_p50[$name]+="$p50 "
  all_p99[$name]+="$p99 "
  all_p999[$name]+="$p999 "

  [ "$round" -gt 1 ] || idle_kib[$name]=-
  local held=$idle
  [ "$name" != haproxy ] || [ "$held" -le "$haproxy_idle" ] || held=$haproxy_idle
  if [ "$held" != 0 ] && [ "$round" = 1 ]; then
    log "$name: $held idle keep-alive connections"
    mapfile -t procs < <(family "$pid")
    before_rss=$(sum_status VmRSS "${procs[@]}")
    status_file=$work/$name.idle
    env "${idle_identity[@]}" python3 bench/idle-connections.py 127.0.0.1 "$proxy_port" "$held" "$status_file" \
      >"$work/$name.idle.log" 2>&1 &
    idle_pid=$!
    deadline=$((SECONDS + 300))
    until [ -s "$status_file" ]; do
      kill -0 "$idle_pid" 2>/dev/null || die "$name: idle-connections.py died:$(printf '\n')$(tail "$work/$name.idle.log")"
      [ "$SECONDS" -lt "$deadline" ] || die "$name: $held connections not open after 300 s"
      sleep 0.5
    done
    grep -q '^ready' "$status_file" || die "$name: idle connections: $(cat "$status_file")"
    # Measured once the connections are idle, not just opened: seg-proxy parks an HTTP/1.1
    # connection (drops hyper's buffers) after 250 ms without traffic.
    sleep 1
    mapfile -t procs < <(family "$pid")
    after_rss=$(sum_status VmRSS "${procs[@]}")
    idle_kib[$name]=$(awk -v a="$after_rss" -v b="$before_rss" -v n="$held" 'BEGIN { printf "%.1f", (a - b) / n }')
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
  fi
  mapfile -t procs < <(family "$pid")
  local peak
  peak=$(awk -v k="$(sum_status VmHWM "${procs[@]}")" 'BEGIN { printf "%.1f", k / 1024 }')
  # The highest of the rounds.
  awk -v a="$peak" -v b="${peak_mib[$name]:-0}" 'BEGIN { exit !(a > b) }' && peak_mib[$name]=$peak
  return 0
}

stop() { # stop PID: SIGTERM (nginx and HAProxy stop fast on it), then wait
  local pid=$1 deadline=$((SECONDS + 15))
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# The faster of nginx and HAProxy in this round's figures of ARRAY (rps or large_rps).
faster_reference() {
  local -n figures=$1
  local name best=
  for name in nginx haproxy; do
    [ -n "${figures[$name]:-}" ] || continue
    if [ -z "$best" ] || awk -v a="${figures[$name]}" -v b="${figures[$best]}" 'BEGIN { exit !(a > b) }'; then
      best=$name
    fi
  done
  echo "$best"
}
declare -A reference_count
run_one() { # run_one CONTENDER ROUND
  local name=$1 round=$2 pid
  assert_port_free "$proxy_port"
  case $name in
    nginx) "${server_cpus[@]}" "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/$name.log" 2>&1 & ;;
    haproxy) "${server_cpus[@]}" "$haproxy_bin" -db -f "$work/haproxy.cfg" >"$work/$name.log" 2>&1 & ;;
    seg-proxy | seg-full | seg-kcd)
      TOKIO_WORKER_THREADS=$workers "${server_cpus[@]}" "$seg_proxy" run --config "$work/$name.toml" \
        >"$work/$name.log" 2>&1 &
      ;;
    *) die "unknown contender '$name' (nginx, haproxy, seg-proxy, seg-full, seg-kcd)" ;;
  esac
  pid=$!
  pids+=("$pid")
  log "round $round of $rounds: starting $name on 127.0.0.1:$proxy_port"
  if [ "$name" = seg-full ] || [ "$name" = seg-kcd ]; then
    wait_for_200 "$pid" "http://127.0.0.1:$admin_port/readyz" "$name" 120
  fi
  wait_for_port "$pid" "$proxy_port" "$name"
  measure "$name" "$pid" "$round"
  assert_alive "$pid" "$name"
  stop "$pid"
}
for ((round = 1; round <= rounds; round++)); do
  # Each round starts one contender further on, so that none always runs first or last.
  n=${#contenders[@]}
  for ((i = 0; i < n; i++)); do
    run_one "${contenders[$(((i + round - 1) % n))]}" "$round"
  done
  best=$(faster_reference rps)
  large_best=$(faster_reference large_rps)
  [ -z "$best" ] || reference_count[$best]=$((${reference_count[$best]:-0} + 1))
  for name in "${contenders[@]}"; do
    [ -z "$best" ] || all_ratio[$name]+="$(awk -v a="${rps[$name]}" -v b="${rps[$best]}" 'BEGIN { printf "%.4f", a / b }') "
    [ -z "$large_best" ] || all_large_ratio[$name]+="$(awk -v a="${large_rps[$name]}" -v b="${large_rps[$large_best]}" 'BEGIN { printf "%.4f", a / b }') "
  done
done

# --- 5. report -----------------------------------------------------------------------------------
# The reference: the faster of nginx and HAProxy at saturation (small requests), round by round.
median() { # median NUMBER… (the mean of the middle two for an even count)
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "" } else if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}
range() { # range NUMBER… → "min–max" with two decimals
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f–%.2f", v[1], v[NR] }'
}
two() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
ratio_cell() { # ratio_cell RATIOS…: the median, and with more than one round its range
  [ $# -gt 0 ] || { echo "–"; return; }
  if [ $# -gt 1 ]; then echo "$(two "$(median "$@")") ($(range "$@"))"; else two "$1"; fi
}
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
rows=""
for name in "${contenders[@]}"; do
  # shellcheck disable=SC2086 # the lists split on purpose
  rows+="| $name | $(median ${all_rps[$name]}) | $(ratio_cell ${all_ratio[$name]:-}) | $(median ${all_large_rps[$name]}) | $(ratio_cell ${all_large_ratio[$name]:-}) | $(ms "$(median ${all_p50[$name]})") | $(ms "$(median ${all_p99[$name]})") | $(ms "$(median ${all_p999[$name]})") | $(two "$(median ${all_cpu100k[$name]})") ($(two "$(median ${all_user100k[$name]})") + $(two "$(median ${all_system100k[$name]})")) | ${peak_mib[$name]} | ${idle_kib[$name]} |"$'\n'
done
if [ "$rounds" = 1 ]; then
  reference="$best"
  figures_note="one run each"
else
  reference="the faster of nginx and HAProxy in each round ($(for name in "${!reference_count[@]}"; do printf '%s %s of %s, ' "$name" "${reference_count[$name]}" "$rounds"; done | sed 's/, $//'))"
  figures_note="medians of $rounds rounds, each round in a rotated order; ratios: the median of the rounds' own ratios (range in brackets); peak RSS the highest of the rounds; idle memory from the first round"
fi
load_idle_line=
if [ -n "$load_cpu" ]; then
  load_idle_line="- the load side's CPU ($load_cpu: load generator and upstream) idle during the small saturation runs$([ "$rounds" = 1 ] || echo ", medians"):"
  for name in "${contenders[@]}"; do
    # shellcheck disable=SC2086 # the list splits on purpose
    load_idle_line+=" $name $(median ${all_load_idle[$name]})%,"
  done
  load_idle_line="${load_idle_line%,}; the more it idles, the more a contender's kernel spends waking it (on a VM an inter-processor interrupt to a halted vCPU): a slower contender pays more per request for the same wake-ups"$'\n'
fi
oha_loaded=
for name in "${contenders[@]}"; do
  [ "${tool_used[$name]:-}" != oha ] || oha_loaded+="${oha_loaded:+, }$name"
done
[ -z "$oha_loaded" ] || oha_loaded=", the same by \`oha -c$connections -z $duration\` and \`oha -c$large_connections\` for $oha_loaded (every status checked, not the bodies; seg-kcd's clients present a client certificate, which wrk cannot)"
report=$(
  cat <<EOF

#### Comparison run of $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $(machine_line); commit $(commit_line)
- versions: $("$nginx_bin" -v 2>&1 | sed 's/.*: //'), HAProxy $("$haproxy_bin" -v | head -n1 | awk '{ print $3 }'), seg-proxy $("$seg_proxy" --version | awk '{ print $2 }'); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2), oha $oha_version
- every contender: $workers worker(s); TLS 1.3 and HTTP/1.1 keep-alive from the client, TLS and keep-alive to the upstream (\`seg-testbed static-soap\`, $upstream_protocol); $layout
- saturation: \`wrk -t1 -c$connections -d$duration\` (small GetFolder, every body checked), \`wrk -t1 -c$large_connections -d$duration\` (GetItem answered with 1 MiB)$oha_loaded; latency: \`oha -q $rate -c$connections -z $duration --latency-correction\`; idle: $idle keep-alive connections after one request each (HAProxy at most $haproxy_idle: two descriptors per connection, 20,000 per process here)
- figures: $figures_note
- reference for the ratios: $reference
${load_idle_line}- reproduce: \`$command_line\`

| contender | small req/s | ratio | 1 MiB req/s | ratio | p50 ms @${rate}/s | p99 ms | p99.9 ms | CPU s / 100k req (user + kernel) | peak RSS MiB | KiB / idle conn |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${rows%$'\n'}
EOF
)
printf '%s\n' "$report"
[ -z "$doc" ] ||
  add_run "$doc" 'seg-proxy against nginx and HAProxy (issue 7)' '<!-- bench/compare.sh adds its runs above this line -->' "$report"
