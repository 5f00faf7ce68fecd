#!/usr/bin/env bash
# benches/bus.sh: the "Bus overhead" figures in BENCHMARKS.md (embedded bus vs RabbitMQ).
#
# Usage: benches/bus.sh            (from anywhere; takes a few minutes; needs a RabbitMQ
#                                   broker on loopback, amqp://guest:guest@127.0.0.1:5672/%2f)
# Knobs (environment): REQUESTS=2000 WARMUP=200 HOSTS=2 CONCURRENCY_LEVELS="1 8" SPLIT=never
#   BUSES="embedded amqp" BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f
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
BUSES="${BUSES:-embedded amqp}"
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
    [[ "$bus" == embedded || "$bus" == amqp ]] || die "BUSES may name embedded and amqp only (got $bus)"
done
uses_broker=0
if [[ " $BUSES " == *" amqp "* ]]; then uses_broker=1; fi

# The broker's host and port, from amqp://user:password@host:port/vhost; loopback only,
# as for rfleet-load: this is a benchmark, not a probe of somebody else's broker.
broker_host="$(sed -n 's|^amqp://\([^@/]*@\)\{0,1\}\([^:/]*\).*$|\2|p' <<<"$BROKER_URL")"
broker_port="$(sed -n 's|^amqp://\([^@/]*@\)\{0,1\}[^:/]*:\([0-9]*\).*$|\2|p' <<<"$BROKER_URL")"
broker_port="${broker_port:-5672}"
if ((uses_broker)); then
    [[ "$broker_host" == 127.* || "$broker_host" == localhost ]] ||
        die "BROKER_URL must point at a loopback broker such as 127.0.0.1 (got host '${broker_host}')"
fi

# Broker objects this run may have created: its request queues and dead-letter queue
# (found by name on the broker when rabbitmqctl can list them, else the ones it must
# have made), its dead-letter and catalog exchanges. Nothing without the prefix.
broker_used=0
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

SERVER_PID=""
LOAD_PID=""
# Whatever happens, no server (and no R host of its) outlives this script, and the
# broker keeps none of this run's queues. The server runs in its own process group
# (setsid), so the group kill reaches its children too.
cleanup() {
    local status=$?
    if [[ -n "$LOAD_PID" ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]]; then
        kill -0 "$SERVER_PID" 2>/dev/null && say "stopping the server (pid $SERVER_PID) after a failure"
        kill_group "$SERVER_PID"
    fi
    broker_cleanup
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo Rscript curl jq setsid pgrep; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODEL_DIR="$OUT/model"
ROWS="$MODEL_DIR/rows.jsonl"
rm -f "$OUT"/embedded-c*.json "$OUT"/amqp-c*.json "$OUT"/results.* "$OUT"/server-*

# (a) Release binaries.
if [[ "$SKIP_BUILD" != 1 ]]; then
    say "building release binaries"
    (cd "$ROOT" && cargo build --release -p dispatcher -p rhost -p benches)
fi
for bin in "$RFLEET" "$LOAD"; do
    [[ -x "$bin" ]] || die "$bin is missing (build with: cargo build --release -p dispatcher -p rhost -p benches)"
done
if ((uses_broker)); then
    "$RFLEET" serve --help | grep -q -- '--bus' ||
        die "$RFLEET has no --bus flag: rebuild it (cargo build --release -p dispatcher -p rhost), or run BUSES=embedded"
    (exec 3<>"/dev/tcp/$broker_host/$broker_port") 2>/dev/null ||
        die "no broker answers on $broker_host:$broker_port"
fi

# Machine facts, recorded next to the figures they qualify.
git_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then git_rev="$git_rev+dirty"; fi
rabbitmq="-"
if ((uses_broker)) && command -v python3 >/dev/null; then
    rabbitmq="$(BROKER_URL="$BROKER_URL" timeout 30 python3 -c '
import os, pika
c = pika.BlockingConnection(pika.URLParameters(os.environ["BROKER_URL"]))
p = c._impl.server_properties
print(" ".join(str(p.get(k, b"?"), "utf-8") if isinstance(p.get(k), bytes) else str(p.get(k, "?")) for k in ("product", "version")))
c.close()' 2>/dev/null || echo unknown)"
fi
jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg nproc "$(nproc)" \
    --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)" \
    --arg kernel "$(uname -sr)" \
    --arg r_version "$(Rscript -e 'cat(R.version.string)')" \
    --arg random_forest "$(Rscript -e 'cat(as.character(packageVersion("randomForest")))')" \
    --arg rfleet "$("$RFLEET" --version 2>/dev/null || echo unknown)" \
    --arg git "$git_rev" \
    --arg rabbitmq "$rabbitmq" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg requests "$REQUESTS" --arg warmup "$WARMUP" --arg hosts "$HOSTS" --arg split "$SPLIT" \
    '{date: $date, nproc: ($nproc | tonumber), cpu: $cpu, kernel: $kernel, r_version: $r_version,
      randomForest: $random_forest, rfleet: $rfleet, git: $git, rabbitmq: $rabbitmq, loadavg_before: $loadavg,
      requests: ($requests | tonumber), warmup: ($warmup | tonumber), hosts: ($hosts | tonumber),
      split: $split}' \
    >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"

# (b) The model package and the request rows (seeded: identical on every run).
Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2

# (c) One bus: start the server, load it at each concurrency level, stop it.
run_bus() {
    local bus="$1" log="$OUT/server-$1.log" stdout="$OUT/server-$1.stdout"
    local flags=() env_vars=()
    if [[ "$bus" == amqp ]]; then
        broker_used=1
        flags=(--bus "$BROKER_URL")
        # Only for the server's process; never exported to this script or anything else.
        env_vars=(
            "RFLEET_BUS__QUEUE_PREFIX=$NAMESPACE.model."
            "RFLEET_BUS__CATALOG_EXCHANGE=$NAMESPACE.catalog"
            "RFLEET_BUS__DEAD_LETTER_EXCHANGE=$NAMESPACE.dead"
            "RFLEET_BUS__DEAD_LETTER_QUEUE=$NAMESPACE.dead"
        )
    fi

    server_failed() {
        say "server log (last 30 lines of $log):"
        tail -n 30 "$log" >&2 || true
        die "$bus: $*"
    }

    # From $OUT, so that no rfleet.toml lying in the caller's directory changes what is measured.
    say "$bus: starting rfleet serve with $HOSTS R hosts ${flags[*]+${flags[*]}}"
    (cd "$OUT" && exec env ${env_vars[@]+"${env_vars[@]}"} setsid "$RFLEET" serve --models "$MODEL_DIR" \
        --listen 127.0.0.1:0 --hosts "$HOSTS" ${flags[@]+"${flags[@]}"} >"$stdout" 2>"$log") &
    SERVER_PID=$!

    local addr="" deadline=$((SECONDS + READY_TIMEOUT_S))
    while [[ -z "$addr" ]]; do
        kill -0 "$SERVER_PID" 2>/dev/null || server_failed "the server exited before listening"
        ((SECONDS < deadline)) || server_failed "no 'rfleet listening on' line within ${READY_TIMEOUT_S}s"
        addr="$(sed -n 's|^rfleet listening on http://\([^/[:space:]]*\).*$|\1|p' "$stdout" | head -n1)"
        [[ -n "$addr" ]] || sleep 0.1
    done
    local base="http://$addr" score_url="http://$addr/score?split=$SPLIT"
    say "$bus: server listening on $base; waiting for GET /ready"
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/ready" || true)" == 200 ]]; do
        kill -0 "$SERVER_PID" 2>/dev/null || server_failed "the server exited before it was ready"
        ((SECONDS < deadline)) || server_failed "GET /ready did not answer 200 within ${READY_TIMEOUT_S}s"
        sleep 0.2
    done

    # One request by hand: a wrong answer must not be benchmarked, and both buses must
    # give the same one.
    local first_row status
    first_row="$(head -n1 "$ROWS")"
    status="$(curl -s -D "$OUT/server-$bus.first-reply.headers" -o "$OUT/server-$bus.first-reply.json" \
        -w '%{http_code}' -H 'content-type: application/json' --data-binary "$first_row" "$score_url")"
    [[ "$status" == 200 ]] || server_failed "POST /score answered $status: $(head -c 500 "$OUT/server-$bus.first-reply.json")"
    grep -qi '^x-rfleet-r-ms:' "$OUT/server-$bus.first-reply.headers" ||
        server_failed "the reply has no x-rfleet-r-ms header: no overhead can be measured"
    say "$bus: POST /score $first_row -> $(head -c 300 "$OUT/server-$bus.first-reply.json")"

    local concurrency
    for concurrency in $CONCURRENCY_LEVELS; do
        say "$bus: rfleet-load: concurrency $concurrency, $REQUESTS requests after $WARMUP warm-up"
        # In the background and waited for, so that a signal to this script is handled
        # at once (a foreground command would hold the trap back until it ends).
        "$LOAD" --url "$score_url" --body-file "$ROWS" --concurrency "$concurrency" \
            --requests "$REQUESTS" --warmup "$WARMUP" --duration-s "$DURATION_S" \
            --json "$OUT/$bus-c$concurrency.json" &
        LOAD_PID=$!
        wait "$LOAD_PID"
        LOAD_PID=""
        jq -e 'has("overhead_p50_ms")' "$OUT/$bus-c$concurrency.json" >/dev/null ||
            server_failed "rfleet-load saw no x-rfleet-r-ms header"
    done

    # Graceful stop: SIGTERM to the server alone, which must drain and exit by itself
    # within the grace period and take its R hosts with it.
    say "$bus: sending SIGTERM to the server"
    kill -TERM "$SERVER_PID"
    local stop_started=$SECONDS server_status=0 leftovers=""
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        ((SECONDS - stop_started < SHUTDOWN_TIMEOUT_S)) || die "$bus: the server did not exit within ${SHUTDOWN_TIMEOUT_S}s of SIGTERM"
        sleep 0.1
    done
    wait "$SERVER_PID" || server_status=$?
    # R hosts still exiting get a moment; after that, any survivor is a shutdown bug.
    for _ in $(seq 20); do
        leftovers="$(pgrep -g "$SERVER_PID" || true)"
        [[ -n "$leftovers" ]] || break
        sleep 0.1
    done
    local done_pid="$SERVER_PID"
    SERVER_PID=""
    if [[ -n "$leftovers" ]]; then
        pkill -KILL -g "$done_pid" || true
        die "$bus: processes of the server's group outlived it: $(echo "$leftovers" | tr '\n' ' ')"
    fi
    ((server_status == 0)) || { tail -n 30 "$log" >&2; die "$bus: the server exited with status $server_status after SIGTERM"; }
    say "$bus: server exited cleanly in $((SECONDS - stop_started))s"
}

for bus in $BUSES; do
    run_bus "$bus"
done

# Both buses must have answered the first row alike (the reply is the prediction alone).
first_replies="$(for bus in $BUSES; do cat "$OUT/server-$bus.first-reply.json"; echo; done | sort -u | wc -l)"
((first_replies == 1)) || die "the buses answered the first row differently: $(for bus in $BUSES; do echo "$bus: $(cat "$OUT/server-$bus.first-reply.json")"; done)"

# (d) Results: one JSON with everything, and the Markdown tables.
label() { if [[ "$1" == amqp ]]; then echo "RabbitMQ"; else echo "embedded"; fi; }
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
    if [[ " $BUSES " == *" embedded "* && " $BUSES " == *" amqp "* ]]; then
        # What RabbitMQ adds: the difference of the two runs' overhead percentiles (not a
        # percentile of per-request differences: the runs are different requests).
        echo
        echo "| concurrency | RabbitMQ − embedded, overhead p50 ms | RabbitMQ − embedded, overhead p99 ms |"
        echo "|---:|---:|---:|"
        for concurrency in $CONCURRENCY_LEVELS; do
            jq -r --argjson c "$concurrency" \
                '[.runs[] | select(.concurrency == $c)] as $r
                 | ($r[] | select(.bus == "embedded")) as $e | ($r[] | select(.bus == "RabbitMQ")) as $a
                 | [$c, ($a.overhead_p50_ms - $e.overhead_p50_ms), ($a.overhead_p99_ms - $e.overhead_p99_ms)] | @tsv' \
                "$OUT/results.json" |
                while IFS=$'\t' read -r c d50 d99; do
                    printf '| %s | %+.3f | %+.3f |\n' "$c" "$d50" "$d99"
                done
        done
    fi
} >"$OUT/results.md"

echo
cat "$OUT/results.md"
say "results in $OUT (results.md, results.json, machine.json, one JSON per run, server-<bus>.log)"
