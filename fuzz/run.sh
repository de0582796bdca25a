#!/usr/bin/env bash
# Runs every fuzz target for a set time and records what it found in docs/reliability.md.
#
#   fuzz/run.sh                          # every target, FUZZ_SECONDS (default 600) each
#   FUZZ_SECONDS=60 fuzz/run.sh keytab   # some targets only
#
# Opt-in: the normal test suite needs none of this (it replays the corpora, see
# crates/fuzz-targets/tests/replay.rs). Needs a nightly toolchain (or RUSTC_BOOTSTRAP=1 with
# FUZZ_TOOLCHAIN=) and cargo-fuzz, which it installs when missing.
#
# Environment:
#   FUZZ_SECONDS    time per target, in seconds (default 600)
#   FUZZ_TOOLCHAIN  the toolchain argument for cargo (default +nightly; empty for the pinned one
#                   with RUSTC_BOOTSTRAP=1 set by the caller)
#   FUZZ_FEATURES   extra cargo-fuzz arguments, e.g. --no-default-features to leave out the
#                   seg_properties target while bins/seg-proxy does not build
#   FUZZ_REPORT     the file whose results table is replaced (default docs/reliability.md)
#
# New inputs go to fuzz/target/corpus/<target>/ (not checked in; copy the interesting ones to
# fuzz/corpus/<target>/ by hand). A crash is written to fuzz/artifacts/<target>/; make it a
# regression: copy it to fuzz/regressions/<target>/, fix the bug, add a unit test.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${FUZZ_SECONDS:-600}
toolchain=${FUZZ_TOOLCHAIN-+nightly}
features=${FUZZ_FEATURES:-}
report=${FUZZ_REPORT:-docs/reliability.md}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_0-9]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^seg-fuzz$')
    if [[ "$features" == *--no-default-features* ]]; then
        targets=("${targets[@]/seg_properties/}")
    fi
fi

# shellcheck disable=SC2086
cargo $toolchain fuzz build $features

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for target in "${targets[@]}"; do
    [ -n "$target" ] || continue
    work="fuzz/target/corpus/$target"
    mkdir -p "$work" "fuzz/artifacts/$target"
    log="fuzz/target/$target.log"
    before=$(find "fuzz/artifacts/$target" -type f | wc -l)
    echo "== $target: ${seconds}s"
    status=0
    # shellcheck disable=SC2086
    cargo $toolchain fuzz run $features "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    after=$(find "fuzz/artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="error (exit $status, see $log)"
    fi
    corpus=$(($(find "$work" -type f | wc -l) + $(find "fuzz/corpus/$target" -type f | wc -l)))
    echo "   executions: ${execs:-?}, crashes: $crashes, corpus: $corpus"
    printf '| `%s` | %ss | %s | %s | %s | %s |\n' "$target" "$seconds" "${execs:-?}" "$crashes" "$corpus" \
        "$(date -u '+%Y-%m-%d %H:%M')" >>"$results"
done

# Update the table between the markers of the report: a row per target, the rows of targets
# run now replaced, the others kept.
begin='<!-- fuzz-results:begin -->'
end='<!-- fuzz-results:end -->'
rows=$(mktemp)
trap 'rm -f "$results" "$rows"' EXIT
if grep -qF "$begin" "$report" 2>/dev/null; then
    sed -n "/^$begin\$/,/^$end\$/p" "$report" | grep '^| `' >"$rows" || true
fi
awk -F'|' 'NR == FNR { fresh[$2] = $0; order[++n] = $2; next }
    ($2 in fresh) { print fresh[$2]; done[$2] = 1; next }
    { print }
    END { for (i = 1; i <= n; i++) if (!(order[i] in done)) print fresh[order[i]] }' \
    "$results" "$rows" >"$rows.merged"
{
    echo "$begin"
    echo "Runs on $(nproc) cores shared with other work, $(cargo $toolchain --version 2>/dev/null | head -1)."
    echo
    echo '| target | time | executions | crashes | corpus size (seeds + found) | run (UTC) |'
    echo '|---|---|---|---|---|---|'
    cat "$rows.merged"
    echo "$end"
} >"$rows.table"
if grep -qF "$begin" "$report" 2>/dev/null; then
    awk -v begin="$begin" -v end="$end" -v table="$rows.table" '
        $0 == begin { while ((getline line < table) > 0) print line; skip = 1; next }
        $0 == end { skip = 0; next }
        !skip { print }
    ' "$report" >"$report.new"
    mv "$report.new" "$report"
else
    cat "$rows.table" >>"$report"
fi
rm -f "$rows.merged" "$rows.table"
echo "results written to $root/$report"
