#!/usr/bin/env bash
# benches/bus.sh: the "Bus overhead" figures in BENCHMARKS.md (embedded bus vs RabbitMQ over
# AMQP 0-9-1 vs RabbitMQ over AMQP 1.0).
#
# Usage: benches/bus.sh            (from anywhere; takes a few minutes; needs a RabbitMQ
#                                   broker on loopback, amqp://guest:guest@127.0.0.1:5672/%2f)
# Knobs (environment): REQUESTS=2000 WARMUP=200 HOSTS=2 CONCURRENCY_LEVELS="1 8" SPLIT=never
#   BUSES="embedded amqp amqp1" BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f
#   DURATION_S=300 READY_TIMEOUT_S=180 SHUTDOWN_TIMEOUT_S=30 SKIP_BUILD=0
#   OUT_DIR=benches/out/bus RFLEET=target/release/rfleet (another build of rfleet to measure)
#
# Steps: build release binaries, make the model and request rows (benches/make_model.R),
# then for each bus in $BUSES: start `rfleet serve --hosts $HOSTS` (plus `--bus $BROKER_URL`
# for amqp) on a free loopback port, wait for GET /ready, check one request by hand, run
# rfleet-load at each concurrency level against POST /score, stop the server with SIGTERM
# (it must exit by itself, leaving no R host behind). rfleet-load reports, besides
# latency, the overhead of each request: its latency minus the R host's time for it
# (`x-rfleet-r-ms`). The RabbitMQ run gets queues and exchanges of its own, named
# rfleet-bench-<pid>.*, and deletes them on the way out; no other broker object is touched.
# Results go to $OUT_DIR (gitignored): one JSON per run, machine.json, results.json and
# results.md. Any failure stops the run with an error.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
WARMUP="${WARMUP:-200}"
HOSTS="${HOSTS:-2}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-1 8}"
# `?split=` on every request. `never` by default: each request is one R call, so latency
# minus that call's R time is the path's own cost, not that plus combining forest parts.
SPLIT="${SPLIT:-never}"
# amqp1: `bus.kind = "servicebus"` in its broker dialect, to RabbitMQ's AMQP 1.0 plugin
# (enabled for the run if it was off, and switched off again at the end).
BUSES="${BUSES:-embedded amqp amqp1}"
BROKER_URL="${BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
DURATION_S="${DURATION_S:-300}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
SHUTDOWN_TIMEOUT_S="${SHUTDOWN_TIMEOUT_S:-30}"
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT="${OUT_DIR:-$ROOT/benches/out/bus}"
RFLEET="${RFLEET:-$ROOT/target/release/rfleet}"
LOAD="$ROOT/target/release/rfleet-load"
# This run's names on the broker: unique per run, so it never meets another fleet's queues.
NAMESPACE="rfleet-bench-$$"

say() { printf 'bus.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for bus in $BUSES; do
    [[ "$bus" == embedded || "$bus" == amqp || "$bus" == amqp1 ]] ||
        die "BUSES may name embedded, amqp and amqp1 only (got $bus)"
done
uses_broker=0
if [[ " $BUSES " == *" amqp "* || " $BUSES " == *" amqp1 "* ]]; then uses_broker=1; fi

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
if ((uses_broker)); then require_loopback_broker; fi

# Whatever happens, no server (and no R host of its) outlives this script, and the
# broker keeps none of this run's queues. The server runs in its own process group
# (setsid), so the group kill reaches its children too.
trap_cleanup_on_exit

require_tools cargo Rscript curl jq setsid pgrep
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODEL_DIR="$OUT/model"
ROWS="$MODEL_DIR/rows.jsonl"
rm -f "$OUT"/embedded-c*.json "$OUT"/amqp-c*.json "$OUT"/amqp1-c*.json "$OUT"/results.* "$OUT"/server-*

# (a) Release binaries.
build_release "$RFLEET" "$LOAD"
if ((uses_broker)); then require_broker "run BUSES=embedded"; fi
amqp1_plugin_enabled_here=0
if [[ " $BUSES " == *" amqp1 "* ]] && ! rabbitmq-plugins list --minimal --enabled | grep -qx rabbitmq_amqp1_0; then
    say "enabling rabbitmq_amqp1_0 for this run (switched off again at the end)"
    rabbitmq-plugins enable --quiet rabbitmq_amqp1_0 >/dev/null
    amqp1_plugin_enabled_here=1
fi

# Machine facts, recorded next to the figures they qualify.
rabbitmq="-"
if ((uses_broker)) && command -v python3 >/dev/null; then rabbitmq="$(rabbitmq_version)"; fi
machine_facts | jq \
    --arg rabbitmq "$rabbitmq" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg requests "$REQUESTS" --arg warmup "$WARMUP" --arg hosts "$HOSTS" --arg split "$SPLIT" \
    '. + {rabbitmq: $rabbitmq, loadavg_before: $loadavg, requests: ($requests | tonumber),
          warmup: ($warmup | tonumber), hosts: ($hosts | tonumber), split: $split}' \
    >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"

# (b) The model package and the request rows (seeded: identical on every run).
Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2

# (c) One bus: start the server, load it at each concurrency level, stop it.
run_bus() {
    local bus="$1" log="$OUT/server-$1.log"
    # Over amqp, with this run's own queues and exchanges (start_rfleet names them).
    start_rfleet "$bus" "$log" "$MODEL_DIR" "$bus"
    local score_url="$RFLEET_BASE/score?split=$SPLIT"

    # One request by hand: a wrong answer must not be benchmarked, and both buses must
    # give the same one.
    local first_row status
    first_row="$(head -n1 "$ROWS")"
    status="$(curl -s -D "$OUT/server-$bus.first-reply.headers" -o "$OUT/server-$bus.first-reply.json" \
        -w '%{http_code}' -H 'content-type: application/json' --data-binary "$first_row" "$score_url")"
    [[ "$status" == 200 ]] || die_with_log "$log" "$bus: POST /score answered $status: $(head -c 500 "$OUT/server-$bus.first-reply.json")"
    grep -qi '^x-rfleet-r-ms:' "$OUT/server-$bus.first-reply.headers" ||
        die_with_log "$log" "$bus: the reply has no x-rfleet-r-ms header: no overhead can be measured"
    say "$bus: POST /score $first_row -> $(head -c 300 "$OUT/server-$bus.first-reply.json")"

    local concurrency
    for concurrency in $CONCURRENCY_LEVELS; do
        say "$bus: rfleet-load: concurrency $concurrency, $REQUESTS requests after $WARMUP warm-up"
        run_waited "$LOAD" --url "$score_url" --body-file "$ROWS" --concurrency "$concurrency" \
            --requests "$REQUESTS" --warmup "$WARMUP" --duration-s "$DURATION_S" \
            --json "$OUT/$bus-c$concurrency.json"
        jq -e 'has("overhead_p50_ms")' "$OUT/$bus-c$concurrency.json" >/dev/null ||
            die_with_log "$log" "$bus: rfleet-load saw no x-rfleet-r-ms header"
    done

    # Graceful stop: SIGTERM to the server alone, which must drain and exit by itself
    # within the grace period and take its R hosts with it.
    stop_rfleet
}

for bus in $BUSES; do
    run_bus "$bus"
done

# Both buses must have answered the first row alike (the reply is the prediction alone).
first_replies="$(for bus in $BUSES; do cat "$OUT/server-$bus.first-reply.json"; echo; done | sort -u | wc -l)"
((first_replies == 1)) || die "the buses answered the first row differently: $(for bus in $BUSES; do echo "$bus: $(cat "$OUT/server-$bus.first-reply.json")"; done)"

# (d) Results: one JSON with everything, and the Markdown tables.
label() {
    case "$1" in
    amqp) echo "RabbitMQ (AMQP 0-9-1)" ;;
    amqp1) echo "RabbitMQ (AMQP 1.0)" ;;
    *) echo "embedded" ;;
    esac
}
runs=()
for bus in $BUSES; do
    for concurrency in $CONCURRENCY_LEVELS; do
        runs+=("$(jq -c --arg bus "$(label "$bus")" --arg system "rfleet serve ($HOSTS hosts)" \
            '. + {bus: $bus, system: $system}' "$OUT/$bus-c$concurrency.json")")
    done
done
printf '%s\n' "${runs[@]}" | jq -s --slurpfile machine "$OUT/machine.json" \
    '{machine: $machine[0], runs: .}' >"$OUT/results.json"

fmt() { if [[ "$1" == - || "$1" == null ]]; then echo -; else printf "%.${2}f" "$1"; fi; }
{
    jq -r '.machine | "Machine: \(.nproc) cores (\(.cpu)), \(.kernel), \(.r_version), randomForest \(.randomForest), \(.rabbitmq); \(.rfleet) at \(.git); \(.date)",
        "Workload: randomForest regression, 500 trees, single-row requests, `rfleet serve --hosts \(.hosts)`, `POST /score?split=\(.split)`; \(.requests) measured requests after \(.warmup) warm-up per row. Overhead = latency - x-rfleet-r-ms, per request."' \
        "$OUT/results.json"
    echo
    echo "| bus | concurrency | requests/s | p50 ms | p99 ms | R p50 ms | overhead p50 ms | overhead p99 ms | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    jq -r '.runs[] | [.bus, .concurrency, .rps, (.p50_ms // "-"), (.p99_ms // "-"), (.r_p50_ms // "-"),
            (.overhead_p50_ms // "-"), (.overhead_p99_ms // "-"), .errors] | @tsv' "$OUT/results.json" |
        while IFS=$'\t' read -r bus concurrency rps p50 p99 r50 o50 o99 errors; do
            printf '| %s | %s | %.1f | %s | %s | %s | %s | %s | %s |\n' "$bus" "$concurrency" "$rps" \
                "$(fmt "$p50" 2)" "$(fmt "$p99" 2)" "$(fmt "$r50" 2)" "$(fmt "$o50" 3)" "$(fmt "$o99" 3)" "$errors"
        done
    if [[ " $BUSES " == *" embedded "* ]]; then
        # What a broker adds: the difference of the runs' overhead percentiles (not a
        # percentile of per-request differences: the runs are different requests).
        echo
        echo "| bus | concurrency | − embedded, overhead p50 ms | − embedded, overhead p99 ms |"
        echo "|---|---:|---:|---:|"
        for bus in $BUSES; do
            [[ "$bus" == embedded ]] && continue
            for concurrency in $CONCURRENCY_LEVELS; do
                jq -r --argjson c "$concurrency" --arg bus "$(label "$bus")" \
                    '[.runs[] | select(.concurrency == $c)] as $r
                     | ($r[] | select(.bus == "embedded")) as $e | ($r[] | select(.bus == $bus)) as $a
                     | [$bus, $c, ($a.overhead_p50_ms - $e.overhead_p50_ms), ($a.overhead_p99_ms - $e.overhead_p99_ms)] | @tsv' \
                    "$OUT/results.json" |
                    while IFS=$'\t' read -r b c d50 d99; do
                        printf '| %s | %s | %+.3f | %+.3f |\n' "$b" "$c" "$d50" "$d99"
                    done
            done
        done
    fi
} >"$OUT/results.md"

if ((amqp1_plugin_enabled_here)); then rabbitmq-plugins disable --quiet rabbitmq_amqp1_0 >/dev/null; fi
echo
cat "$OUT/results.md"
say "results in $OUT (results.md, results.json, machine.json, one JSON per run, server-<bus>.log)"
