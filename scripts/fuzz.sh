#!/usr/bin/env bash
# Long fuzz runs: each target under libFuzzer, with coverage instrumentation on the stable
# toolchain (see docs/fuzzing.md). Findings (crashes, hangs, out-of-memory inputs) land in
# $MERIDIAN_FUZZ_DIR/findings/<target>/; a summary line per target is printed at the end
# and appended to $MERIDIAN_FUZZ_DIR/runs.tsv.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]     (default: 600 s each, every target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=(adql sql stcs votable fits csv parquet avro http vospace)

host=$(rustc -vV | sed -n 's/^host: //p')
# An instrumented build of its own, outside the clone (it shares nothing with the tests').
export CARGO_TARGET_DIR="${MERIDIAN_FUZZ_TARGET_DIR:-$HOME/.cache/meridian/fuzz-target}"
work="${MERIDIAN_FUZZ_DIR:-$HOME/.cache/meridian/fuzz}"
# libFuzzer's coverage: SanitizerCoverage's 8-bit counters, PC table and comparison
# tracing, all stable `-C` options (cargo-fuzz passes the same). `--target` keeps them off
# build scripts and procedural macros.
coverage="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
coverage="$coverage -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
coverage="$coverage -Cllvm-args=-sanitizer-coverage-pc-table"
coverage="$coverage -Cllvm-args=-sanitizer-coverage-trace-compares"
linker=""
command -v mold >/dev/null && linker="-C link-arg=-fuse-ld=mold"
RUSTFLAGS="$coverage $linker" cargo build --profile fuzz --target "$host" \
    -p meridian-fuzz --features libfuzzer --bin meridian-fuzz
bin="$CARGO_TARGET_DIR/$host/fuzz/meridian-fuzz"

mkdir -p "$work/logs"
summary=()
for t in "${targets[@]}"; do
    seeds="$work/seeds/$t"
    corpus="$work/corpus/$t"
    findings="$work/findings/$t"
    log="$work/logs/$t-$(date -u +%Y%m%dT%H%M%SZ).log"
    rm -rf "$seeds"
    mkdir -p "$corpus" "$findings"
    # The first run writes the seeds (and dictionary, and input length) and tries each.
    MERIDIAN_FUZZ_TARGET="$t" MERIDIAN_FUZZ_SEEDS="$seeds" "$bin" -runs=0 "$seeds" \
        >"$log" 2>&1 || { echo "$t: the seeds fail, see $log"; tail -30 "$log"; exit 1; }
    args=("-max_total_time=$seconds" "-timeout=30" "-rss_limit_mb=4096"
          "-max_len=$(cat "$seeds.max_len")" "-artifact_prefix=$findings/"
          "-print_final_stats=1" "-close_fd_mask=1")
    [ -s "$seeds.dict" ] && args+=("-dict=$seeds.dict")
    dirs=("$corpus" "$seeds")
    [ -d "crates/fuzz/regressions/$t" ] && dirs+=("crates/fuzz/regressions/$t")
    echo "== $t: $seconds s (log $log)"
    status=0
    MERIDIAN_FUZZ_TARGET="$t" "$bin" "${args[@]}" "${dirs[@]}" >>"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")
    units=$(find "$corpus" -type f | wc -l)
    found=$(find "$findings" -type f | wc -l)
    row="$t	$seconds	${execs:-?}	${cov:-?}	${ft:-?}	$units	$found	$status"
    summary+=("$row")
    printf '%s\t%s\n' "$(date -u +%FT%TZ)" "$row" >>"$work/runs.tsv"
    if [ "$status" -ne 0 ]; then
        echo "$t: libFuzzer stopped with status $status (a finding: see $findings and $log)"
        grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 || true
    fi
done
printf '\ntarget\tseconds\texecutions\tcov\tfeatures\tcorpus\tfindings\tstatus\n'
printf '%s\n' "${summary[@]}"
