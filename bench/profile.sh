#!/usr/bin/env bash
# Where seg-proxy's CPU goes per proxied request: instructions, cycles and CPU time per request
# (perf stat on the gateway process alone), and optionally a call-graph profile (perf record).
#
# Unlike bench/compare.sh's requests/s, instructions per request hardly move when other work
# shares the machine, so this is the figure to compare before and after a change to the hot path.
# The setup is compare.sh's: the static SOAP upstream over TLS, seg-proxy proxying only (or with
# every layer on), wrk posting small GetFolder requests on keep-alive TLS connections.
#
# usage: bench/profile.sh
#
# Environment (all optional):
#   PROFILE_MODE=proxy        proxy: proxying only; full: every layer on (compare.sh's seg-full)
#   PROFILE_DURATION=10s      the measured wrk run
#   PROFILE_CONNECTIONS=32    wrk connections
#   PROFILE_RECORD=           a path: write a perf record -g profile there instead (perf report -i)
#   PROFILE_FREQUENCY=999     perf record's samples per second (more, for finer comparisons of
#                             two profiles; perf's own work then shares the gateway's core)
#   PROFILE_CALL_GRAPH=fp     perf record's --call-graph: fp (frame pointers, which the release
#                             build mostly lacks: callers are often missing) or dwarf (callers
#                             right, about 1 GB per 2 s: use a short PROFILE_DURATION)
#   PROFILE_STRACE=1          count the gateway's system calls per request instead (strace -c)
#   PROFILE_COPIES=1          bytes copied by memmove/memcpy per request instead, by size (a
#                             perf uprobe on glibc's memmove with its length argument; every
#                             hit traps, so the gateway runs far slower meanwhile);
#                             PROFILE_COPIES=stacks: by call site (DWARF call graphs, use a
#                             short PROFILE_DURATION: about 1 GB per 2 s)
#   PROFILE_COPY_SYMBOL=      the memmove variant to probe, if not the one guessed from the CPU
#   PROFILE_UPSTREAM_HTTP2=1  the upstream offers HTTP/2 as well (ALPN h2, as Exchange on IIS 10
#                             does), which the gateway then uses: one multiplexed connection
#   BENCH_NO_BUILD=1          use the release binaries already in the target dir
#   BENCH_SEG_PROXY=PATH      profile that seg-proxy binary instead (before/after pairs)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
mode=${PROFILE_MODE:-proxy}
# lib.sh's seg_proxy_config names proxying only "plain"; any other name there means every layer
# on, which without the test UEM started below refuses every request.
case $mode in
  proxy) config_mode=plain ;;
  full) config_mode=full ;;
  *) die "PROFILE_MODE is proxy or full, not '$mode'" ;;
esac
duration=${PROFILE_DURATION:-10s}
connections=${PROFILE_CONNECTIONS:-32}
record=${PROFILE_RECORD:-}

scripts/install-deps.sh wrk linux-perf strace python3 >&2
build_release_binaries
perf_bin=$(command -v perf || ls /usr/bin/perf_* 2>/dev/null | head -n 1)
[ -n "$perf_bin" ] || die "perf is missing"

"$seg_testbed" pki --dir "$work/pki" >/dev/null
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
export BENCH_AUTHORIZATION="Basic $(printf '%s:%s' alice@test.local "$password" | base64 -w0)"
export BENCH_DEVICE_ID=EASDEV000001

read -r upstream_port proxy_port admin_port uem_port < <(free_ports 4)
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$seg_testbed" static-soap \
  --listen "127.0.0.1:$upstream_port" --tls-cert "$work/pki/server.pem" \
  --tls-key "$work/pki/server.key" ${PROFILE_UPSTREAM_HTTP2:+--http2} >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$upstream_port" upstream

if [ "$mode" = full ]; then
  python3 bench/uem-devices.py 10000 "$work/devices.json"
  RUST_LOG=warn taskset -c 0 "$seg_testbed" uem --listen "127.0.0.1:$uem_port" \
    --devices "$work/devices.json" --tls-cert "$work/pki/server.pem" \
    --tls-key "$work/pki/server.key" >"$work/uem.log" 2>&1 &
  pids+=($!)
  wait_for_port "${pids[-1]}" "$uem_port" uem
fi
seg_proxy_config "$config_mode" "$proxy_port" "$upstream_port" "$uem_port" "$admin_port" >"$work/seg.toml"
TOKIO_WORKER_THREADS=1 taskset -c 1 "$seg_proxy" run --config "$work/seg.toml" \
  >"$work/seg-proxy.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_for_port "$gateway" "$proxy_port" seg-proxy
[ "$mode" != full ] || wait_for_200 "$gateway" "http://127.0.0.1:$admin_port/readyz" seg-proxy

url="https://127.0.0.1:$proxy_port"
taskset -c 0 wrk -t1 -c"$connections" -d2s -s bench/soap-post.lua "$url" >/dev/null # warm-up
copy_event=
if [ -n "${PROFILE_COPIES:-}" ]; then
  # memcpy and memmove both resolve to this one on AVX-512 machines; its length is in rdx.
  scripts/install-deps.sh libc6-dbg >&2 # perf probe finds glibc's internal symbols in it
  libc=$(ldd "$seg_proxy" | awk '$1 ~ /^libc\.so/ { print $3 }')
  # The variant glibc picks on this CPU (PROFILE_COPY_SYMBOL overrides; perf report names it).
  if grep -qw avx512f /proc/cpuinfo; then copy_symbol=__memmove_avx512_unaligned_erms
  elif grep -qw avx2 /proc/cpuinfo; then copy_symbol=__memmove_avx_unaligned_erms
  else copy_symbol=__memmove_sse2_unaligned_erms; fi
  copy_symbol=${PROFILE_COPY_SYMBOL:-$copy_symbol}
  copy_event=probe_libc:$copy_symbol
  if ! "$perf_bin" probe -l 2>/dev/null | grep -q "$copy_event "; then
    "$perf_bin" probe -q -x "$libc" "$copy_symbol len=%dx:u64" >/dev/null ||
      die "perf probe on $copy_symbol failed"
    added_probe=$copy_event # removed again once recorded
  fi
fi
if [ -n "${PROFILE_STRACE:-}" ]; then
  strace -c -f -o "$work/strace.out" -p "$gateway" &
elif [ -n "$copy_event" ]; then
  "$perf_bin" record -e "$copy_event" $([ "$PROFILE_COPIES" != stacks ] || echo --call-graph dwarf,8192) -o "$work/copies.data" -p "$gateway" 2>"$work/perf.log" &
elif [ -z "$record" ]; then
  "$perf_bin" stat -x, -e task-clock -o "$work/perf.out" -p "$gateway" &
else
  "$perf_bin" record -e cpu-clock --call-graph "${PROFILE_CALL_GRAPH:-fp}" -F "${PROFILE_FREQUENCY:-999}" -o "$record" -p "$gateway" 2>"$work/perf.log" &
fi
perf_pid=$!
sleep 0.5 # perf attaches asynchronously; a few requests more or less do not move the ratio
taskset -c 0 wrk -t1 -c"$connections" -d"$duration" -s bench/soap-post.lua "$url" >"$work/wrk.out"
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
declare -A got
wrk_result seg-proxy "$work/wrk.out"
requests=${got[requests]}
rps=${got[rps]}
if [ -n "$copy_event" ]; then
  [ -z "${added_probe:-}" ] || "$perf_bin" probe -q -d "$added_probe" >/dev/null 2>&1 || true
  if [ "$PROFILE_COPIES" = stacks ]; then
    "$perf_bin" script -i "$work/copies.data" -F trace,ip,sym 2>/dev/null |
      python3 bench/copy-sites.py "$requests" sites
  else
    "$perf_bin" script -i "$work/copies.data" -F trace 2>/dev/null |
      python3 bench/copy-sites.py "$requests"
  fi
elif [ -n "${PROFILE_STRACE:-}" ]; then
  log "$requests requests; system calls per request:"
  awk -v n="$requests" '$4 ~ /^[0-9]+$/ && $NF != "total" { printf "  %-16s %.2f\n", $NF, $4 / n }' "$work/strace.out" | sort -k2 -rn | head -n 12
elif [ -z "$record" ]; then
  python3 - "$work/perf.out" "$requests" "$rps" "$mode" <<'EOF'
import sys
values = {}
for line in open(sys.argv[1]):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0] and fields[0][0].isdigit():
        values[fields[2].split(":")[0]] = float(fields[0])
requests = int(sys.argv[2])
print(f"mode {sys.argv[4]}: {requests} requests, {float(sys.argv[3]):.0f}/s")
print(f"  instructions/request {values.get('instructions', 0) / requests:,.0f}")
print(f"  cycles/request       {values.get('cycles', 0) / requests:,.0f}")
print(f"  CPU us/request       {values.get('task-clock', 0) * 1000 / requests:.1f}")
EOF
else
  log "profile in $record ($requests requests, $rps/s): perf report -i $record --no-children"
fi
