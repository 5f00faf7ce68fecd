#!/usr/bin/env bash
# benches/observability.sh: what metrics and tracing cost, side by side in one run.
#
# Usage: benches/observability.sh     (from anywhere; SKIP_BUILD=1 to use built binaries)
# Knobs (environment): ROUNDS=3 REQUESTS=10000 WARMUP=500 HOSTS=2 CONCURRENCY_LEVELS="1 32"
#   BEFORE=<an rfleet binary built before observability> (adds a third side), RFLEET,
#   OUT_DIR=benches/out/observability, DURATION_S, READY_TIMEOUT_S, SHUTDOWN_TIMEOUT_S
#
# Sides, interleaved round by round in a rotating order:
#   off:    RFLEET_METRICS__ENABLED=false, no trace exporter (metrics are still recorded,
#           a few atomic adds per request; nobody scrapes)
#   on:     metrics scraped every second as Prometheus scrapes (OpenMetrics, exemplars),
#           and every request traced (traces.sample_ratio = 1) and exported by OTLP/HTTP
#           to benches/otlp_sink.py on loopback
#   before: the BEFORE binary, with no observability code at all (when BEFORE is set)
# Each side is `rfleet serve --hosts $HOSTS` with the 500-tree forest of benches/run.sh,
# loaded by rfleet-load at each concurrency; besides requests/s and latency, the CPU time
# of the rfleet process itself (dispatcher + worker, utime + stime from /proc) per request,
# which is what observability adds to and which is steadier than requests/s here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
REQUESTS="${REQUESTS:-10000}"
WARMUP="${WARMUP:-500}"
HOSTS="${HOSTS:-2}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-1 32}"
DURATION_S="${DURATION_S:-300}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
SHUTDOWN_TIMEOUT_S="${SHUTDOWN_TIMEOUT_S:-30}"
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT="${OUT_DIR:-$ROOT/benches/out/observability}"
RFLEET="${RFLEET:-$ROOT/target/release/rfleet}"
BEFORE="${BEFORE:-}"
LOAD="$ROOT/target/release/rfleet-load"

say() { printf 'observability.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
trap_cleanup_on_exit

require_tools cargo Rscript curl jq setsid python3 bc
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODEL_DIR="$OUT/model"
ROWS="$MODEL_DIR/rows.jsonl"
rm -f "$OUT"/run-*.json "$OUT"/results.* "$OUT"/sink.*

build_release "$RFLEET" "$LOAD"
[[ -z "$BEFORE" || -x "$BEFORE" ]] || die "BEFORE=$BEFORE is not an executable"
machine_facts >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"
Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2

# The OTLP sink, for the whole run.
start_group "$OUT/sink.port" "$OUT/sink.log" python3 "$ROOT/benches/otlp_sink.py" 0 "$OUT/sink.counts.json"
SINK_PID="$STARTED_PID"
deadline=$((SECONDS + 30))
until [[ -s "$OUT/sink.port" ]]; do
    ((SECONDS < deadline)) || die "the OTLP sink did not start"
    sleep 0.1
done
sink="http://127.0.0.1:$(head -n1 "$OUT/sink.port")"

sides=(off on)
[[ -z "$BEFORE" ]] || sides+=(before)
hz="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_side() {
    local side="$1" round="$2" binary="$RFLEET" env_vars=() scraper=""
    case "$side" in
        off) env_vars=(RFLEET_METRICS__ENABLED=false RFLEET_TRACES__EXPORTER=none) ;;
        on) env_vars=(RFLEET_TRACES__EXPORTER=otlp RFLEET_TRACES__SAMPLE_RATIO=1 "OTEL_EXPORTER_OTLP_ENDPOINT=$sink") ;;
        before) binary="$BEFORE" ;;
    esac
    RFLEET="$binary" start_rfleet "$side" "$OUT/server-$side-$round.log" "$MODEL_DIR" embedded ${env_vars[@]+"${env_vars[@]}"}
    if [[ "$side" == on ]]; then
        # As Prometheus scrapes: every second, asking for OpenMetrics.
        (while :; do
            curl -s -o /dev/null -H 'Accept: application/openmetrics-text;version=1.0.0' "$RFLEET_BASE/metrics" || true
            sleep 1
        done) &
        scraper=$!
    fi
    local concurrency
    for concurrency in $CONCURRENCY_LEVELS; do
        local before_ticks after_ticks json="$OUT/run-$side-$round-c$concurrency.json"
        # Warm-up apart, so the CPU counted is the measured requests' only.
        run_waited "$LOAD" --url "$RFLEET_BASE/score" --body-file "$ROWS" --concurrency "$concurrency" \
            --requests "$WARMUP" --warmup 0 --duration-s "$DURATION_S" --json "$OUT/warmup.json" >/dev/null
        before_ticks="$(cpu_ticks "$RFLEET_PID")"
        run_waited "$LOAD" --url "$RFLEET_BASE/score" --body-file "$ROWS" --concurrency "$concurrency" \
            --requests "$REQUESTS" --warmup 0 --duration-s "$DURATION_S" --json "$json.load" >/dev/null
        after_ticks="$(cpu_ticks "$RFLEET_PID")"
        local cpu_ms
        cpu_ms="$(echo "scale=4; ($after_ticks - $before_ticks) * 1000 / $hz / $REQUESTS" | bc)"
        jq -c --arg side "$side" --argjson round "$round" --argjson cpu "$cpu_ms" \
            '. + {side: $side, round: $round, rfleet_cpu_ms_per_request: $cpu}' "$json.load" >"$json"
        say "$side round $round concurrency $concurrency: $(jq -c '{rps, p50_ms, p99_ms, errors, rfleet_cpu_ms_per_request}' "$json")"
    done
    if [[ "$side" == on ]]; then
        kill "$scraper" 2>/dev/null || true
        wait "$scraper" 2>/dev/null || true
        # The run must have been what it claims: metrics with exemplars, spans exported.
        curl -s -H 'Accept: application/openmetrics-text;version=1.0.0' "$RFLEET_BASE/metrics" | grep -q 'trace_id=' ||
            die "the 'on' side's metrics carry no exemplar"
    fi
    stop_rfleet
}

for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order, so no side always runs first (or on a warmer machine).
    n=${#sides[@]}
    for i in $(seq 0 $((n - 1))); do
        run_side "${sides[$(((i + round - 1) % n))]}" "$round"
    done
done

kill -TERM "$SINK_PID"
deadline=$((SECONDS + 10))
until [[ -s "$OUT/sink.counts.json" ]]; do
    ((SECONDS < deadline)) || die "the OTLP sink did not write its counts"
    sleep 0.1
done
say "OTLP sink received: $(cat "$OUT/sink.counts.json")"
[[ "$(jq .requests "$OUT/sink.counts.json")" -gt 0 ]] || die "no span reached the OTLP sink"

jq -s --slurpfile machine "$OUT/machine.json" --slurpfile sink "$OUT/sink.counts.json" \
    '{machine: $machine[0], otlp_sink: $sink[0], runs: .}' "$OUT"/run-*-c*.json >"$OUT/results.json"
{
    jq -r '.machine | "Machine: \(.nproc) cores (\(.cpu)), \(.kernel), \(.r_version); \(.rfleet) at \(.git); \(.date)"' "$OUT/results.json"
    echo
    echo "| side | concurrency | round | requests/s | p50 ms | p99 ms | rfleet CPU ms/request | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    jq -r '.runs | sort_by(.concurrency, .side, .round)[] | [.side, .concurrency, .round, .rps, .p50_ms, .p99_ms, .rfleet_cpu_ms_per_request, .errors] | @tsv' "$OUT/results.json" |
        while IFS=$'\t' read -r side concurrency round rps p50 p99 cpu errors; do
            printf '| %s | %s | %s | %.1f | %.3f | %.3f | %.4f | %s |\n' "$side" "$concurrency" "$round" "$rps" "$p50" "$p99" "$cpu" "$errors"
        done
    echo
    echo "Means over rounds:"
    echo
    echo "| side | concurrency | requests/s | p50 ms | p99 ms | rfleet CPU ms/request |"
    echo "|---|---:|---:|---:|---:|---:|"
    jq -r '.runs | group_by([.concurrency, .side])[] | [.[0].side, .[0].concurrency, (map(.rps) | add / length), (map(.p50_ms) | add / length), (map(.p99_ms) | add / length), (map(.rfleet_cpu_ms_per_request) | add / length)] | @tsv' "$OUT/results.json" |
        while IFS=$'\t' read -r side concurrency rps p50 p99 cpu; do
            printf '| %s | %s | %.1f | %.3f | %.3f | %.4f |\n' "$side" "$concurrency" "$rps" "$p50" "$p99" "$cpu"
        done
} >"$OUT/results.md"
cat "$OUT/results.md"
