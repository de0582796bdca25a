#!/usr/bin/env bash
# Building the compliance view from a full sync (issue 3): 1,000,000 devices from the test UEM
# server, target under 5 s and peak RSS under 500 MB.
#
# Writes a devices file (bench/uem-devices.py), starts `seg-testbed uem` over TLS in its own
# process (its memory does not count), then runs, in another process,
# crates/compliance-policy/examples/full_sync_bench.rs: what the gateway's full sync does
# (`UemClient::full()` page by page, then `Compliance::replace_all`), twice in a row (the
# first sync into an empty view, as at start; the second over the loaded view, as the periodic
# full sync). It reports the wall time of fetch + parse + build, and the process's peak RSS
# (VmHWM, and /usr/bin/time's "Maximum resident set size"), for each page size; prints a table
# and adds it to its section of docs/benchmarks.md.
#
# usage: bench/compliance-full-sync.sh
#
# Environment (all optional):
#   BENCH_DEVICES=1000000          devices in the UEM
#   BENCH_PAGE_SIZES="500 5000"    page sizes to try (the gateway's default is 500)
#   BENCH_UEM_TLS=1                UEM over TLS (as a real console); 0 for plain HTTP
#   BENCH_DOC=docs/benchmarks.md   where the results are added ("" for nowhere)
#   BENCH_NO_BUILD=1               use the binaries already built
#   BENCH_MAX_SECONDS=5 BENCH_MAX_RSS_MB=500   the targets
set -euo pipefail

. "$(dirname "$0")/lib.sh" # cd to the root; log, die, $work, pids and cleanup at exit, …
command_line="bench/compliance-full-sync.sh"
for name in BENCH_DEVICES BENCH_PAGE_SIZES BENCH_UEM_TLS; do
  [ -z "${!name:-}" ] || command_line="$name=\"${!name}\" $command_line"
done
devices=${BENCH_DEVICES:-1000000}
page_sizes=${BENCH_PAGE_SIZES:-500 5000}
uem_tls=${BENCH_UEM_TLS:-1}
doc=${BENCH_DOC-docs/benchmarks.md}
max_seconds=${BENCH_MAX_SECONDS:-5}
max_rss_mb=${BENCH_MAX_RSS_MB:-500}

[ -x /usr/bin/time ] || die "/usr/bin/time is needed (Debian package time)"

# --- 1. binaries -----------------------------------------------------------------------------
build_release_binaries
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "building the full_sync_bench example"
  cargo build --release --locked -p compliance-policy --example full_sync_bench >&2
fi
full_sync_bench=$target_dir/release/examples/full_sync_bench
[ -x "$full_sync_bench" ] || die "missing $full_sync_bench"

# --- 2. the UEM, in its own process ------------------------------------------------------------
log "writing $devices devices"
python3 bench/uem-devices.py "$devices" "$work/devices.json"
read -r uem_port < <(free_ports 1)
uem_args=(uem --listen "127.0.0.1:$uem_port" --devices "$work/devices.json")
sync_args=()
if [ "$uem_tls" = 1 ]; then
  "$seg_testbed" pki --dir "$work/pki" >/dev/null
  uem_args+=(--tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key")
  uem_url="https://localhost:$uem_port"
  sync_args+=(--trust-store "$work/pki/ca.pem")
  scheme="HTTPS (rustls, HTTP/2 offered)"
else
  uem_url="http://127.0.0.1:$uem_port"
  scheme="plain HTTP"
fi
log "starting seg-testbed uem on $uem_url"
RUST_LOG=warn "$seg_testbed" "${uem_args[@]}" >"$work/uem.log" 2>&1 &
uem_pid=$!
pids+=("$uem_pid")
wait_for_port "$uem_pid" "$uem_port" uem 300

# --- 3. the syncs ----------------------------------------------------------------------------
declare -A result
rows=""
verdicts=""
for page_size in $page_sizes; do
  log "full syncs of $devices devices, $page_size per page"
  load_before=$(load_now)
  before_all=$(busy_ticks)
  before_uem=$(cpu_ticks "$uem_pid")
  started=$(date +%s.%N)
  /usr/bin/time -v "$full_sync_bench" --url "$uem_url" --page-size "$page_size" \
    --expect "$devices" --syncs 2 "${sync_args[@]}" >"$work/sync-$page_size.txt" 2>"$work/sync-$page_size.time" ||
    die "full_sync_bench failed:$(printf '\n')$(cat "$work/sync-$page_size.txt" "$work/sync-$page_size.time")"
  ended=$(date +%s.%N)
  after_all=$(busy_ticks)
  after_uem=$(cpu_ticks "$uem_pid")
  assert_alive "$uem_pid" uem
  cat "$work/sync-$page_size.txt" >&2
  # CPU of the measuring process, from /usr/bin/time.
  bench_cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$work/sync-$page_size.time")
  max_rss_kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/sync-$page_size.time")
  # CPUs' worth the rest of the machine used meanwhile (0.00 when quiet).
  other=$(awk -v all=$((after_all - before_all)) -v u=$((after_uem - before_uem)) -v hz="$clk_tck" \
    -v b="$bench_cpu" -v s="$started" -v e="$ended" \
    'BEGIN { o = all / hz - u / hz - b; if (o < 0) o = 0; printf "%.2f", o / (e - s) }')
  uem_cpu=$(awk -v u=$((after_uem - before_uem)) -v hz="$clk_tck" 'BEGIN { printf "%.1f", u / hz }')
  for sync in 1 2; do
    line=$(grep "^RESULT sync=$sync " "$work/sync-$page_size.txt") || die "no RESULT for sync $sync"
    unset got
    declare -A got=()
    for field in ${line#RESULT }; do got[${field%%=*}]=${field#*=}; done
    s=$(awk -v ms="${got[total_ms]}" 'BEGIN { printf "%.2f", ms / 1000 }')
    fetch=$(awk -v ms="${got[fetch_ms]}" 'BEGIN { printf "%.2f", ms / 1000 }')
    build=$(awk -v ms="${got[build_ms]}" 'BEGIN { printf "%.2f", ms / 1000 }')
    what="first (empty view)"
    [ "$sync" = 1 ] || what="second (over the loaded view)"
    rows="$rows| $page_size | $what | $s s | $fetch s | $build s | ${got[transitions]} | ${got[rss_fetched_mib]} MiB | ${got[rss_built_mib]} MiB | ${got[peak_rss_mib]} MiB |
"
    result[$page_size.$sync.s]=$s
    result[$page_size.$sync.peak]=${got[peak_rss_mib]}
  done
  result[$page_size.maxrss]=$(awk -v k="$max_rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
  result[$page_size.other]=$other
  result[$page_size.load]=$load_before
  result[$page_size.uem_cpu]=$uem_cpu
  result[$page_size.cpu]=$bench_cpu
  first_ok=$(awk -v s="${result[$page_size.1.s]}" -v m="$max_seconds" 'BEGIN { print (s < m) ? "met" : "not met" }')
  rss_first_ok=$(awk -v r="${result[$page_size.1.peak]}" -v m="$max_rss_mb" 'BEGIN { print (r * 1.048576 < m) ? "met" : "not met" }')
  rss_all_ok=$(awk -v r="${result[$page_size.maxrss]}" -v m="$max_rss_mb" 'BEGIN { print (r * 1.048576 < m) ? "met" : "not met" }')
  verdicts="$verdicts- page size $page_size: time of the first sync ${result[$page_size.1.s]} s (< $max_seconds s: **$first_ok**), second ${result[$page_size.2.s]} s; peak RSS after the first sync ${result[$page_size.1.peak]} MiB (< $max_rss_mb MB: **$rss_first_ok**), over both syncs ${result[$page_size.maxrss]} MiB (**$rss_all_ok**); CPU of the syncing process ${bench_cpu} s, of the UEM ${uem_cpu} s; load average before ${load_before}, other processes during the run ${other} CPUs' worth
"
done

# --- 4. report -------------------------------------------------------------------------------
uem_rss=$(awk '/^VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$uem_pid/status")
report=$(
  cat <<EOF

#### Full sync, run of $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $(machine_line)
- commit: $(commit_line)
- UEM: \`seg-testbed uem\` (release) in its own process over $scheme on loopback, $devices devices (\`bench/uem-devices.py\`), its own RSS $uem_rss (not counted)
- sync: \`full_sync_bench --url … --page-size N --expect $devices --syncs 2\` (release example): \`UemClient::full()\` then \`Compliance::replace_all\`, default policy; wall time from the first request to the new view swapped in
- reproduce: \`$command_line\`

| page size | sync | total | fetch + parse | build + swap | transitions | RSS after fetch | RSS after build | peak RSS so far (VmHWM) |
|---:|---|---:|---:|---:|---:|---:|---:|---:|
${rows%$'\n'}

$verdicts
EOF
)
printf '%s\n' "$report"
[ -z "$doc" ] ||
  add_run "$doc" 'Compliance (issue 3)' '<!-- bench/compliance-full-sync.sh adds its runs above this line -->' "$report"
