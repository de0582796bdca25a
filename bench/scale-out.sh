#!/usr/bin/env bash
# Three gateway nodes sharing one compliance view through Redis (issue 8), as separate processes
# behind HAProxy: how long a wipe takes to block the device on every node, and proxy throughput
# of three nodes behind the balancer against one.
#
# Processes on loopback: redis-server, the test UEM (BENCH_DEVICES devices, change events sent to
# node 1's webhook), the static SOAP upstream, three seg-proxy nodes (compliance.backend =
# "redis"), and HAProxy (TCP mode, round robin) with two front ends: one over the three nodes,
# one over node 1 alone.
#   - propagation: bench/scale-out.py wipes BENCH_SAMPLES compliant devices in the UEM one after
#     the other; for each it polls every node's admin API until the device is blocked there and
#     reports, per node, the time from the wipe request to the block (p50, p99, max). Node 1
#     receives the webhook; nodes 2 and 3 learn it through Redis.
#   - throughput: wrk (small GetFolder, keep-alive TLS, every answer checked) through each front
#     end, for BENCH_DURATION.
# The results are appended to docs/benchmarks.md (BENCH_DOC="" to print only).
#
# usage: bench/scale-out.sh
#
# Environment (all optional):
#   BENCH_DEVICES=10000  devices in the UEM     BENCH_SAMPLES=200  wipes measured
#   BENCH_DURATION=10s   each wrk run           BENCH_CONNECTIONS=32
#   BENCH_NO_BUILD=1     use the release binaries already built
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
devices=${BENCH_DEVICES:-10000}
samples=${BENCH_SAMPLES:-200}
duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-32}
doc=${BENCH_DOC-docs/benchmarks.md}
command_line="bench/scale-out.sh"
for name in BENCH_DEVICES BENCH_SAMPLES BENCH_DURATION BENCH_CONNECTIONS; do
  [ -z "${!name:-}" ] || command_line="$name=${!name} $command_line"
done

scripts/install-deps.sh redis-server haproxy wrk python3 curl >&2
build_release_binaries
redis_bin=$(command -v redis-server || echo /usr/bin/redis-server)
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)

"$seg_testbed" pki --dir "$work/pki" >/dev/null
python3 bench/uem-devices.py "$devices" "$work/devices.json"
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
export BENCH_AUTHORIZATION="Basic $(printf '%s:%s' alice@test.local "$password" | base64 -w0)"
export BENCH_DEVICE_ID=EASDEV000001

read -r redis_port uem_port upstream_port lb3_port lb1_port \
  https1 https2 https3 admin1 admin2 admin3 < <(free_ports 11)
https_ports=("$https1" "$https2" "$https3")
admin_ports=("$admin1" "$admin2" "$admin3")

log "starting redis-server, the test UEM ($devices devices) and the upstream"
"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --dir "$work" --daemonize no --save "" \
  --appendonly no --logfile "$work/redis.log" &
pids+=($!)
wait_for_port "${pids[-1]}" "$redis_port" redis
RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
  --webhook "http://127.0.0.1:$admin1/events/compliance" --webhook-secret "$secret" \
  >"$work/uem.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$uem_port" uem 120
RUST_LOG=warn TOKIO_WORKER_THREADS=1 "$seg_testbed" static-soap \
  --listen "127.0.0.1:$upstream_port" --tls-cert "$work/pki/server.pem" \
  --tls-key "$work/pki/server.key" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$upstream_port" upstream

for index in 0 1 2; do
  node=$((index + 1))
  {
    echo "node = \"gw-$node\""
    seg_proxy_config plain "${https_ports[$index]}" "$upstream_port"
    cat <<EOF

[admin]
listen = "127.0.0.1:${admin_ports[$index]}"
token = "$token"

[compliance]
backend = "redis"
redis_url = "redis://127.0.0.1:$redis_port/0"
uem_url = "http://127.0.0.1:$uem_port"
uem_tenant_code = "testbed-tenant-code"
uem_user = "uemapi"
uem_password = "P@ssw0rd!"
webhook_secret = "$secret"
full_sync_interval = "24h"
delta_sync_interval = "24h"
EOF
  } >"$work/node$node.toml"
  TOKIO_WORKER_THREADS=1 "$seg_proxy" run --config "$work/node$node.toml" >"$work/node$node.log" 2>&1 &
  pids+=($!)
  # One after the other: the first leads and syncs, the others read the view from Redis.
  wait_for_200 "${pids[-1]}" "http://127.0.0.1:${admin_ports[$index]}/readyz" "node$node" 120
done

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend three_nodes
  bind 127.0.0.1:$lb3_port
  default_backend three
frontend one_node
  bind 127.0.0.1:$lb1_port
  default_backend one
backend three
  balance roundrobin
  server gw1 127.0.0.1:$https1
  server gw2 127.0.0.1:$https2
  server gw3 127.0.0.1:$https3
backend one
  server gw1 127.0.0.1:$https1
EOF
"$haproxy_bin" -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$lb3_port" haproxy

log "propagation: $samples wipes at the UEM, each polled on the three nodes"
python3 bench/scale-out.py "$work/devices.json" "$samples" "http://127.0.0.1:$uem_port" "$token" \
  "http://127.0.0.1:$admin1" "http://127.0.0.1:$admin2" "http://127.0.0.1:$admin3" \
  >"$work/propagation.txt"
cat "$work/propagation.txt" >&2

throughput() { # throughput PORT → requests/s
  wrk -t1 -c"$connections" -d"$duration" -s bench/soap-post.lua \
    "https://127.0.0.1:$1/EWS/Exchange.asmx" >"$work/wrk-$1.txt" 2>&1 ||
    die "wrk failed:$(printf '\n')$(cat "$work/wrk-$1.txt")"
  local -A got=()
  wrk_result "port $1" "$work/wrk-$1.txt"
  echo "${got[rps]}"
}
log "throughput: three nodes behind HAProxy, then one"
throughput "$lb1_port" >/dev/null # warm-up
rps3=$(throughput "$lb3_port")
rps1=$(throughput "$lb1_port")
ratio=$(python3 -c "print(f'{$rps3 / $rps1:.2f}')")
log "three nodes: $rps3 requests/s; one node: $rps1 requests/s (ratio $ratio)"

report=$(
  cat <<EOF

### Scale-out run: $(date -u +%Y-%m-%d) ($devices devices, $samples wipes)

- Command: \`$command_line\`; commit $(commit_line)
- Machine: $(machine_line)
- Processes on loopback: redis-server $("$redis_bin" --version | sed -E 's/.*v=([^ ]+).*/\1/'), the test UEM ($devices devices, webhook to node 1), the static SOAP upstream, three seg-proxy nodes (release, one worker thread each, \`compliance.backend = "redis"\`), HAProxy $("$haproxy_bin" -v | head -n 1 | awk '{print $3}') in TCP mode

Wipe at the UEM → device blocked on each node (the webhook reaches node 1; nodes 2 and 3 follow
Redis's change log):

\`\`\`
$(cat "$work/propagation.txt")
\`\`\`

Small GetFolder requests over keep-alive TLS, $connections connections, $duration each, all EWS
successes: three nodes behind HAProxy **$rps3/s**, node 1 alone behind HAProxy **$rps1/s**
(ratio $ratio). Every process shares this machine's $(nproc) CPUs with wrk and the upstream, so
the ratio is bounded by the CPUs, not by the nodes: a node decides from its own in-memory view
with no Redis round trip per request, so nodes on separate hosts add their capacity.
EOF
)
printf '%s\n' "$report"
if [ -n "$doc" ]; then
  add_run "$doc" 'Scale-out (issue 8)' '<!-- bench/scale-out.sh adds its runs above this line -->' "$report"
fi
