#!/usr/bin/env bash
# Instructions per proxied request (issue 7): seg-proxy, proxying only, under
# `valgrind --tool=callgrind`, answering small SOAP POSTs one after the other on one keep-alive
# TLS connection (every answer checked: 200 and Success). The whole process is counted: the
# server side, the proxy and the TLS client to the upstream. Runs N=50 and N=550 and divides the
# difference of the totals by 500, so that start-up (certificates, trust store) cancels out.
# Unlike requests/s, the count does not depend on what else the machine runs.
#
# usage: bench/instructions.sh [SEG_PROXY_BINARY...]   (default: the release build)
#
# Environment (optional): BENCH_NO_BUILD=1 (use the release binaries already built);
# INSTRUCTIONS_KEEP=DIR keeps the callgrind profiles there (callgrind.N.out of the last binary),
# for callgrind_annotate --tree=caller: which call sites the instructions go to;
# INSTRUCTIONS_MODE=full counts compare.sh's seg-full instead (every layer on: compliance synced
# from the test UEM, 100 devices, before the first request; auth; header rules), the requests
# sent as device EASDEV000001, compliant; INSTRUCTIONS_MODE=kcd counts compare.sh's seg-kcd (the
# same, and Kerberos constrained delegation: the requests come with $kcd_upn's client
# certificate and no Authorization, the gateway adds a Negotiate token from the ticket it got
# from seg-testbed kdc at the first request)
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
scripts/install-deps.sh python3 valgrind >&2
build_release_binaries
[ $# -gt 0 ] || set -- "$seg_proxy"

mode=${INSTRUCTIONS_MODE:-plain}
case $mode in plain | full | kcd) ;; *) die "INSTRUCTIONS_MODE is plain, full or kcd, not '$mode'" ;; esac

"$seg_testbed" pki --dir "$work/pki" --client "$kcd_upn" >/dev/null
[ "$mode" != kcd ] || start_kdc
read -r upstream_port proxy_port uem_port admin_port < <(free_ports 4)
RUST_LOG=warn "$seg_testbed" static-soap --listen "127.0.0.1:$upstream_port" \
  --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for_port "${pids[-1]}" "$upstream_port" upstream
if [ "$mode" != plain ]; then
  python3 bench/uem-devices.py 100 "$work/devices.json"
  RUST_LOG=warn "$seg_testbed" uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json" \
    --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" >"$work/uem.log" 2>&1 &
  pids+=($!)
  wait_for_port "${pids[-1]}" "$uem_port" uem
fi
seg_proxy_config "$mode" "$proxy_port" "$upstream_port" "$uem_port" "$admin_port" \
  >"$work/seg-proxy.toml"

# Sends $1 small GetFolder POSTs on one keep-alive TLS connection, checking each answer.
send() {
  python3 - "$proxy_port" "$work/pki" "$1" "$mode" "$kcd_upn" <<'EOF'
import http.client, ssl, sys
sys.path.insert(0, "bench")
import soak
port, pki, n, mode, upn = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=f"{pki}/ca.pem")
headers = {"Content-Type": "text/xml; charset=utf-8", "X-Device-Id": "EASDEV000001"}
if mode == "kcd":
    context.load_cert_chain(f"{pki}/{upn}.pem", f"{pki}/{upn}.key")
else:
    headers["Authorization"] = "Basic YWxpY2VAdGVzdC5sb2NhbDp4"
conn = http.client.HTTPSConnection("localhost", port, context=context)
body = soak.ENVELOPE.format(soak.OPERATIONS["GetFolder"]).encode()
for _ in range(n):
    conn.request("POST", "/EWS/Exchange.asmx", body, headers)
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200 or b'ResponseClass="Success"' not in answer:
        sys.exit(f"unexpected answer {response.status}: {answer[:200]!r}")
EOF
}

# Total instructions of one seg-proxy ($1) run answering $2 requests.
total() {
  local out=$work/callgrind.$2.out
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$1" run --config "$work/seg-proxy.toml" >"$work/callgrind.$2.log" 2>&1 &
  local pid=$!
  wait_for_port "$pid" "$proxy_port" "seg-proxy under callgrind" 300
  if [ "$mode" != plain ]; then
    # Compliance synced before the first request. Polled once a second: each poll is counted
    # too, and fewer polls vary the total less between the two runs.
    local deadline=$((SECONDS + 600))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ]; do
      kill -0 "$pid" 2>/dev/null || die "seg-proxy under callgrind exited: $(tail -n 20 "$work/callgrind.$2.log")"
      [ "$SECONDS" -lt "$deadline" ] || die "seg-proxy under callgrind not ready after 600 s"
      sleep 1
    done
  fi
  send "$2"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

for binary in "$@"; do
  small=$(total "$binary" 50)
  large=$(total "$binary" 550)
  printf '%s: %d instructions per request\n' "$binary" $(((large - small) / 500))
done
if [ -n "${INSTRUCTIONS_KEEP:-}" ]; then
  mkdir -p "$INSTRUCTIONS_KEEP"
  cp "$work"/callgrind.*.out "$INSTRUCTIONS_KEEP"/
fi
