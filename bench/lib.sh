# Shell functions shared by the bench/ scripts; sourced, not run:
#
#   . "$(dirname "$0")/lib.sh"
#
# After sourcing, the caller is at the repository root ($root), with a temporary directory
# ($work) removed at exit, and every process whose pid it adds to the array `pids` stopped at exit
# (SIGINT, then SIGKILL after 10 s). Logs of the processes go to "$work/<name>.log" by convention.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
start_deadline=${start_deadline:-30} # seconds for a server to accept connections

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# The cargo target directory (shared with other builds of the workspace).
target_dir() {
  cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# Builds the release binaries seg-proxy and seg-testbed unless BENCH_NO_BUILD is set, then sets
# $target_dir, $seg_proxy and $seg_testbed. BENCH_SEG_PROXY=PATH runs another seg-proxy binary
# (a build of another commit, for before/after pairs).
build_release_binaries() {
  if [ -z "${BENCH_NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release --locked -p seg-proxy -p seg-testbed-cli >&2
  fi
  target_dir=$(target_dir)
  seg_proxy=${BENCH_SEG_PROXY:-$target_dir/release/seg-proxy}
  seg_testbed=$target_dir/release/seg-testbed
  [ -x "$seg_proxy" ] && [ -x "$seg_testbed" ] || die "missing $seg_proxy or $seg_testbed"
}

# Installs oha (a constant-rate load generator; Debian has none) into target/bench-tools when
# missing, and prints its path.
oha_version=1.16.0
oha_binary() {
  local oha=$root/target/bench-tools/bin/oha
  if ! "$oha" --version 2>/dev/null | grep -q "$oha_version"; then
    log "installing oha $oha_version (constant-rate load generator) into target/bench-tools"
    cargo install --locked oha --version "$oha_version" --root "$root/target/bench-tools" >&2
  fi
  printf '%s\n' "$oha"
}

# --- processes and cleanup -------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/seg-bench.XXXXXX")
pids=()
cleanup() {
  local status=$? pid deadline
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    # seg-testbed stops on SIGINT, seg-proxy drains on SIGINT or SIGTERM.
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

# N distinct free loopback ports, on one line.
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
' "$1"
}

# Dies if a server listens on 127.0.0.1:$1 (a port already taken would make a readiness check
# talk to someone else's server). Connections of a server stopped just before, in TIME_WAIT, do
# not count: every server here binds with SO_REUSEADDR, as this check does.
assert_port_free() {
  python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null || die "port $1 on 127.0.0.1 is already in use"
}

# Waits until 127.0.0.1:$2 accepts connections while process $1 lives; $3 names it.
wait_for_port() {
  local pid=$1 port=$2 name=$3 deadline=$((SECONDS + ${4:-$start_deadline}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name exited before listening; its log:$(printf '\n')$(tail -n 20 "$work/$name.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "$name does not accept connections on port $port after ${4:-$start_deadline}s"
    sleep 0.05
  done
}

# Waits until GET $2 answers 200 while process $1 lives; $3 names it, $4 is the deadline in s.
wait_for_200() {
  local pid=$1 url=$2 name=$3 deadline=$((SECONDS + ${4:-$start_deadline})) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null) || code=000
    [ "$code" = 200 ] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited before $url answered 200; its log:$(printf '\n')$(tail -n 20 "$work/$name.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "$url does not answer 200 after ${4:-$start_deadline}s (last: $code)"
    sleep 0.1
  done
}

assert_alive() {
  kill -0 "$1" 2>/dev/null || die "$2 died; its log:$(printf '\n')$(tail -n 20 "$work/$2.log")"
}

# --- seg-proxy's configuration --------------------------------------------------------------
# seg_proxy_config MODE PROXY_PORT UPSTREAM_PORT [UEM_PORT ADMIN_PORT] → TOML on stdout, with the
# certificates of "$work/pki" (seg-testbed pki). plain: proxying only, TLS listener, the static
# upstream trusted by its CA. full: every layer on as well: compliance synced from the test UEM
# (TLS) with an admin listener, auth modes Basic and OAuth, client certificates asked for,
# challenges stripped, SOAP required. kcd: full, and Kerberos constrained delegation for
# requests with a client certificate and no Authorization (auth mode cba-kcd, the gateway's keys
# in $kcd_keytab, the realm in $kcd_krb5_conf: seg-testbed kdc's). Callers may append tables of
# their own.
seg_proxy_config() {
  local mode=$1 proxy_port=$2 upstream_port=$3 uem_port=${4:-} admin_port=${5:-} ews_extra=""
  local auth_modes='"basic", "oauth"'
  [ "$mode" = plain ] || ews_extra=$'\nremove_unsupported_auth = true\nrequire_soap = true'
  [ "$mode" != kcd ] || auth_modes='"cba-kcd", "basic", "oauth"'
  cat <<EOF
[listen]
https = "127.0.0.1:$proxy_port"

[tls]
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"

[exchange]
url = "https://localhost:$upstream_port"
trust_store = "$work/pki/ca.pem"

[server]
max_connections = 20000

[ews]
enable_proxy = true$ews_extra

[log]
filter = "warn"
EOF
  [ "$mode" != plain ] || return 0
  cat <<EOF

[auth]
modes = [$auth_modes]
client_cert = "optional"
client_ca = "$work/pki/ca.pem"

[compliance]
uem_url = "https://localhost:$uem_port"
uem_tenant_code = "testbed-tenant-code"
uem_user = "uemapi"
uem_password = "P@ssw0rd!"
uem_trust_store = "$work/pki/ca.pem"
full_sync_interval = "24h"
delta_sync_interval = "24h"

[admin]
listen = "127.0.0.1:$admin_port"
EOF
  [ "$mode" = kcd ] || return 0
  cat <<EOF

[auth.kcd]
krb5_conf = "$kcd_krb5_conf"
keytab = "$kcd_keytab"
service_principal = "HTTP/seg.test.local"
target_spn = "HTTP/exchange.test.local"
EOF
}

# The user whose client certificate (seg-testbed pki --client) the KCD runs present: one of
# seg-testbed kdc's realm.
kcd_upn=alice@TEST.LOCAL

# start_kdc: starts seg-testbed kdc (a real MIT KDC, slapd and krb5kdc, in "$work/kdc"; realm
# TEST.LOCAL, users alice and bob, HTTP/seg.test.local allowed to delegate to
# HTTP/exchange.test.local), stopped at exit, and sets kcd_krb5_conf and kcd_keytab (the
# gateway's keys) for seg_proxy_config kcd.
start_kdc() {
  log "starting the KDC"
  RUST_LOG=warn "$seg_testbed" kdc --dir "$work/kdc" >"$work/kdc.log" 2>&1 &
  local kdc_pid=$! deadline=$((SECONDS + 120))
  pids+=("$kdc_pid")
  until grep -q '^Ctrl-C stops it' "$work/kdc.log"; do
    assert_alive "$kdc_pid" kdc
    [ "$SECONDS" -lt "$deadline" ] || die "the KDC did not start in 120 s: $(tail "$work/kdc.log")"
    sleep 0.2
  done
  kcd_krb5_conf=$(sed -n 's/^  export KRB5_CONFIG=//p' "$work/kdc.log")
  kcd_keytab=$(sed -n 's|^  HTTP/seg.test.local: ||p' "$work/kdc.log")
  [ -f "$kcd_krb5_conf" ] && [ -f "$kcd_keytab" ] || die "no krb5.conf or keytab in the KDC's output"
}

# --- CPU accounting --------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)

# utime + stime of a process, in clock ticks; `cpu_ticks PID user` or `cpu_ticks PID system` for
# one of them (user space, or the kernel working for the process).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) } # fields after the command name
  case ${2:-all} in
    user) awk '{ print $12 }' <<<"$stat" ;;
    system) awk '{ print $13 }' <<<"$stat" ;;
    *) awk '{ print $12 + $13 }' <<<"$stat" ;;
  esac
}

# CPU time the whole machine spent not idle, in clock ticks (guest time is already counted in
# user time).
busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# --- the report ------------------------------------------------------------------------------
# "2 CPUs (AMD EPYC), 24 GiB, Linux …"
# add_run DOC SECTION MARKER REPORT: puts REPORT into DOC just above the line MARKER, adding
# "## SECTION" and the marker at the end of DOC the first time.
add_run() {
  local doc=$1 section=$2 marker=$3 report=$4
  grep -qF "$marker" "$doc" || printf '\n## %s\n\n%s\n' "$section" "$marker" >>"$doc"
  python3 - "$doc" "$marker" "$report" <<'EOF'
import sys
path, marker, report = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(marker, report.strip("\n") + "\n\n" + marker, 1))
EOF
  log "results added to $doc"
}

machine_line() {
  printf '%s CPUs (%s), %s, Linux %s' "$(nproc)" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
}

# The short commit, noting uncommitted changes.
commit_line() {
  local commit
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
  fi
  # A run with another build says so: the commit above is not what it measured.
  [ -z "${BENCH_SEG_PROXY:-}" ] || commit="$commit; seg-proxy binary $BENCH_SEG_PROXY (BENCH_SEG_PROXY)"
  printf '%s' "$commit"
}

# The 1-minute load average now.
load_now() {
  cut -d' ' -f1 /proc/loadavg
}

# --- CPU layout ------------------------------------------------------------------------------
# cpu_layout PIN SERVERS: sets client_cpus and server_cpus (taskset prefixes) and $layout, a
# sentence naming SERVERS (e.g. "test Exchange server and seg-proxy"). PIN is split (wrk on
# CPU 0, the servers together on CPU 1; needs 2 CPUs, else falls back to none) or none.
cpu_layout() {
  local pin=$1 servers=$2 cpus
  cpus=$(nproc)
  if [ "$pin" = split ] && [ "$cpus" -lt 2 ]; then
    log "only $cpus CPU: not pinning"
    pin=none
  fi
  case $pin in
    split)
      client_cpus=(taskset -c 0)
      server_cpus=(taskset -c 1)
      layout="wrk pinned to CPU 0; $servers pinned together to CPU 1"
      ;;
    none)
      client_cpus=()
      server_cpus=()
      layout="no pinning: wrk, $servers share all $cpus CPUs"
      ;;
    *) die "BENCH_PIN must be split or none, not '$pin'" ;;
  esac
}

# rss_mib PID: the resident memory of process PID, e.g. "42 MiB".
rss_mib() {
  awk '/^VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"
}

# --- wrk runs --------------------------------------------------------------------------------
# wrk_result NAME FILE: the RESULT line bench/soap-post.lua wrote to FILE, into got[] (an
# associative array the caller declared: got[requests], got[rps], got[p50_us]…); dies unless
# every response was a 200 EWS success. A run of refusals costs a gateway far less than
# proxying, and would otherwise pass for a fast one.
wrk_result() {
  local name=$1 file=$2 result field key
  result=$(grep '^RESULT ' "$file") || die "no RESULT line from wrk ($name)"
  got=()
  for field in ${result#RESULT }; do got[${field%%=*}]=${field#*=}; done
  [ "${got[requests]}" -gt 0 ] || die "$name: no request completed"
  for key in non2xx not_success err_connect err_read err_write err_status err_timeout; do
    [ "${got[$key]}" = 0 ] || die "$name: $key=${got[$key]} (every response must be a 200 EWS success)"
  done
  [ "${got[responses]}" = "${got[requests]}" ] ||
    die "$name: ${got[responses]} responses for ${got[requests]} requests"
}

# wrk_measure NAME URL LABEL=PID…: a warm-up (unless $warmup is 0), then a run of $duration
# with "${wrk_args[@]}" under "${client_cpus[@]}"; checks every response (the RESULT line of
# bench/soap-post.lua) and that each process still lives. Sets, in associative arrays the
# caller declared: rps[NAME], p50[NAME], p99[NAME] (µs), wrk_us[NAME] (wrk's CPU per request),
# cpu_us[NAME.LABEL] (each process's CPU per request, µs) and other_cpu[NAME] (CPUs' worth other
# processes used meanwhile: 0.00 on an otherwise idle machine).
wrk_measure() {
  local name=$1 url=$2 requests proc label pid before_all after_all ticks
  shift 2
  local -A before=()
  if [ "$warmup" != 0 ]; then
    "${client_cpus[@]}" wrk "${wrk_args[@]}" -d"$warmup" "$url" >"$work/$name.warmup.txt" 2>&1 ||
      die "wrk warm-up against $name failed:$(printf '\n')$(cat "$work/$name.warmup.txt")"
  fi
  log "wrk ${wrk_args[*]} -d$duration against $name: $url"
  for proc in "$@"; do before[$proc]=$(cpu_ticks "${proc#*=}"); done
  before_all=$(busy_ticks)
  local TIMEFORMAT='%U %S' # the CPU seconds wrk itself used, from bash's time
  if ! { time "${client_cpus[@]}" wrk "${wrk_args[@]}" -d"$duration" "$url" >"$work/$name.txt" 2>&1; } \
    2>"$work/$name.time"; then
    die "wrk against $name failed:$(printf '\n')$(cat "$work/$name.txt")"
  fi
  after_all=$(busy_ticks)
  ticks=0
  local -A used=()
  for proc in "$@"; do
    used[$proc]=$(($(cpu_ticks "${proc#*=}") - before[$proc]))
    ticks=$((ticks + used[$proc]))
  done
  sed 's/^/  /' "$work/$name.txt" >&2
  for proc in "$@"; do assert_alive "${proc#*=}" "${proc%%=*}"; done
  local -A got=()
  wrk_result "$name" "$work/$name.txt"
  requests=${got[requests]}
  rps[$name]=${got[rps]}
  p50[$name]=${got[p50_us]}
  p99[$name]=${got[p99_us]}
  for proc in "$@"; do
    label=${proc%%=*}
    cpu_us[$name.$label]=$(awk -v t="${used[$proc]}" -v hz="$clk_tck" -v n="$requests" \
      'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
  done
  wrk_us[$name]=$(awk -v n="$requests" '{ printf "%.0f", ($1 + $2) * 1e6 / n }' "$work/$name.time")
  other_cpu[$name]=$(awk -v all=$((after_all - before_all)) -v mine="$ticks" -v hz="$clk_tck" \
    -v us="${got[duration_us]}" '
    { other = (all - mine) / hz - ($1 + $2); if (other < 0) other = 0
      printf "%.2f", other / (us / 1e6) }' "$work/$name.time")
}
