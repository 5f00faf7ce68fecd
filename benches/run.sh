#!/usr/bin/env bash
# benches/run.sh: reproduces every figure in BENCHMARKS.md (rfleet serve vs a plain R predict loop).
#
# Usage: benches/run.sh            (from anywhere; takes a few minutes)
# Knobs (environment): REQUESTS=2000 WARMUP=200 HOSTS=2 CONCURRENCY_LEVELS="1 8"
#   DURATION_S=300 READY_TIMEOUT_S=180 SHUTDOWN_TIMEOUT_S=30 SKIP_BUILD=0
#   OUT_DIR=benches/out RFLEET=target/release/rfleet (another build of rfleet to measure)
#
# Steps: build release binaries, make the model and request rows, start `rfleet serve`
# on a free loopback port, wait for GET /ready, run rfleet-load at each concurrency level
# against POST /score, stop the server with SIGTERM (it must exit by itself, leaving no
# R host behind), run the R limit with 1 and HOSTS processes on the now idle machine,
# and print a Markdown table. Results go to $OUT_DIR (gitignored): one JSON per run,
# machine.json, results.json and results.md. Any failure stops the run with an error.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
WARMUP="${WARMUP:-200}"
HOSTS="${HOSTS:-2}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-1 8}"
DURATION_S="${DURATION_S:-300}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
SHUTDOWN_TIMEOUT_S="${SHUTDOWN_TIMEOUT_S:-30}"
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT="${OUT_DIR:-$ROOT/benches/out}"
RFLEET="${RFLEET:-$ROOT/target/release/rfleet}"
LOAD="$ROOT/target/release/rfleet-load"

say() { printf 'run.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# Whatever happens, no server (and no R host of its) outlives this script. The server
# runs in its own process group (setsid), so the group kill reaches its children too.
trap_cleanup_on_exit

require_tools cargo Rscript curl jq setsid pgrep
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODEL_DIR="$OUT/model"
ROWS="$MODEL_DIR/rows.jsonl"
rm -f "$OUT"/rfleet-c*.json "$OUT"/r-limit-p*.json "$OUT"/results.* "$OUT"/server.*

# (a) Release binaries.
build_release "$RFLEET" "$LOAD"

# Machine facts, recorded next to the figures they qualify.
machine_facts | jq --arg requests "$REQUESTS" --arg warmup "$WARMUP" --arg hosts "$HOSTS" \
    '. + {requests: ($requests | tonumber), warmup: ($warmup | tonumber), hosts: ($hosts | tonumber)}' \
    >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"

# (b) The model package and the request rows (seeded: identical on every run).
Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2

# (c) The server, on a port the kernel picks, with its log in server.log.
start_rfleet "" "$OUT/server.log" "$MODEL_DIR" embedded
base="$RFLEET_BASE"

# One request by hand: a wrong answer must not be benchmarked. Its prediction is printed
# next to R's own prediction for the same row (from the R limit below) to compare.
first_row="$(head -n1 "$ROWS")"
status="$(curl -s -o "$OUT/server.first-reply.json" -w '%{http_code}' \
    -H 'content-type: application/json' --data-binary "$first_row" "$base/score")"
[[ "$status" == 200 ]] || die_with_log "$OUT/server.log" "POST /score answered $status: $(head -c 500 "$OUT/server.first-reply.json")"
say "POST /score $first_row -> $(head -c 300 "$OUT/server.first-reply.json")"

# (d) Closed-loop load at each concurrency level.
for concurrency in $CONCURRENCY_LEVELS; do
    say "rfleet-load: concurrency $concurrency, $REQUESTS requests after $WARMUP warm-up"
    "$LOAD" --url "$base/score" --body-file "$ROWS" --concurrency "$concurrency" \
        --requests "$REQUESTS" --warmup "$WARMUP" --duration-s "$DURATION_S" \
        --json "$OUT/rfleet-c$concurrency.json"
done

# (f) Graceful stop: SIGTERM to the server alone, which must drain and exit by itself
# within the grace period and take its R hosts with it.
stop_rfleet

# (e) The R limit, after the server is gone so that it has the machine to itself.
r_processes="1"
if [[ "$HOSTS" != 1 ]]; then r_processes="1 $HOSTS"; fi
for processes in $r_processes; do
    say "R limit: $processes process(es), $REQUESTS single-row predict calls after $WARMUP warm-up"
    # shellcheck disable=SC2046 # r_malloc_env gives several words
    env $(r_malloc_env) Rscript "$ROOT/benches/r_limit.R" --model "$MODEL_DIR/rf500/model.rds" --rows "$ROWS" \
        --requests "$REQUESTS" --warmup "$WARMUP" --processes "$processes" --duration-s "$DURATION_S" \
        --json "$OUT/r-limit-p$processes.json"
done

# (g) Results: one JSON with everything, and the Markdown table.
runs=()
for concurrency in $CONCURRENCY_LEVELS; do
    runs+=("$(jq -c --arg system "rfleet serve ($HOSTS hosts)" '. + {system: $system}' "$OUT/rfleet-c$concurrency.json")")
done
for processes in $r_processes; do
    runs+=("$(jq -c --arg system "R predict loop ($processes process$([[ $processes == 1 ]] || echo es))" \
        '. + {system: $system}' "$OUT/r-limit-p$processes.json")")
done
printf '%s\n' "${runs[@]}" | jq -s --slurpfile machine "$OUT/machine.json" \
    '{machine: $machine[0], runs: .}' >"$OUT/results.json"

{
    jq -r '.machine | "Machine: \(.nproc) cores (\(.cpu)), \(.kernel), \(.r_version), randomForest \(.randomForest); \(.rfleet) at \(.git); \(.date)",
        "Workload: randomForest regression, 500 trees, single-row requests; \(.requests) measured requests after \(.warmup) warm-up per row."' \
        "$OUT/results.json"
    echo
    echo "| system | concurrency | requests/s | p50 ms | p99 ms | errors |"
    echo "|---|---:|---:|---:|---:|---:|"
    jq -r '.runs[] | [.system, .concurrency, .rps, (.p50_ms // "-"), (.p99_ms // "-"), .errors] | @tsv' \
        "$OUT/results.json" |
        while IFS=$'\t' read -r system concurrency rps p50 p99 errors; do
            [[ "$p50" == - ]] || p50="$(printf '%.2f' "$p50")"
            [[ "$p99" == - ]] || p99="$(printf '%.2f' "$p99")"
            printf '| %s | %s | %.1f | %s | %s | %s |\n' "$system" "$concurrency" "$rps" "$p50" "$p99" "$errors"
        done
} >"$OUT/results.md"

echo
cat "$OUT/results.md"
say "results in $OUT (results.md, results.json, machine.json, one JSON per run, server.log)"
