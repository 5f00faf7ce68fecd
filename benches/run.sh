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
SERVER_PID=""
# Whatever happens, no server (and no R host of its) outlives this script. The server
# runs in its own process group (setsid), so the group kill reaches its children too.
cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]]; then
        kill -0 "$SERVER_PID" 2>/dev/null && say "stopping the server (pid $SERVER_PID) after a failure"
        kill_group "$SERVER_PID"
    fi
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
rm -f "$OUT"/rfleet-c*.json "$OUT"/r-limit-p*.json "$OUT"/results.* "$OUT"/server.*

# (a) Release binaries.
if [[ "$SKIP_BUILD" != 1 ]]; then
    say "building release binaries"
    (cd "$ROOT" && cargo build --release -p dispatcher -p rhost -p benches)
fi
for bin in "$RFLEET" "$LOAD"; do
    [[ -x "$bin" ]] || die "$bin is missing (build with: cargo build --release -p dispatcher -p rhost -p benches)"
done

# Machine facts, recorded next to the figures they qualify.
git_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then git_rev="$git_rev+dirty"; fi
jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg nproc "$(nproc)" \
    --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)" \
    --arg kernel "$(uname -sr)" \
    --arg r_version "$(Rscript -e 'cat(R.version.string)')" \
    --arg random_forest "$(Rscript -e 'cat(as.character(packageVersion("randomForest")))')" \
    --arg rfleet "$("$RFLEET" --version 2>/dev/null || echo unknown)" \
    --arg git "$git_rev" \
    --arg requests "$REQUESTS" --arg warmup "$WARMUP" --arg hosts "$HOSTS" \
    '{date: $date, nproc: ($nproc | tonumber), cpu: $cpu, kernel: $kernel, r_version: $r_version,
      randomForest: $random_forest, rfleet: $rfleet, git: $git,
      requests: ($requests | tonumber), warmup: ($warmup | tonumber), hosts: ($hosts | tonumber)}' \
    >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"

# (b) The model package and the request rows (seeded: identical on every run).
Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2

# (c) The server, on a port the kernel picks. It runs from $OUT so that no rfleet.toml
# lying in the caller's directory changes what is measured.
say "starting rfleet serve with $HOSTS R hosts"
(cd "$OUT" && exec setsid "$RFLEET" serve --models "$MODEL_DIR" --listen 127.0.0.1:0 --hosts "$HOSTS" \
    >"$OUT/server.stdout" 2>"$OUT/server.log") &
SERVER_PID=$!

server_failed() {
    say "server log (last 30 lines of $OUT/server.log):"
    tail -n 30 "$OUT/server.log" >&2 || true
    die "$*"
}

addr=""
deadline=$((SECONDS + READY_TIMEOUT_S))
while [[ -z "$addr" ]]; do
    kill -0 "$SERVER_PID" 2>/dev/null || server_failed "the server exited before listening"
    ((SECONDS < deadline)) || server_failed "no 'rfleet listening on' line within ${READY_TIMEOUT_S}s"
    addr="$(sed -n 's|^rfleet listening on http://\([^/[:space:]]*\).*$|\1|p' "$OUT/server.stdout" | head -n1)"
    [[ -n "$addr" ]] || sleep 0.1
done
base="http://$addr"
say "server listening on $base; waiting for GET /ready"
until [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/ready" || true)" == 200 ]]; do
    kill -0 "$SERVER_PID" 2>/dev/null || server_failed "the server exited before it was ready"
    ((SECONDS < deadline)) || server_failed "GET /ready did not answer 200 within ${READY_TIMEOUT_S}s"
    sleep 0.2
done

# One request by hand: a wrong answer must not be benchmarked. Its prediction is printed
# next to R's own prediction for the same row (from the R limit below) to compare.
first_row="$(head -n1 "$ROWS")"
status="$(curl -s -o "$OUT/server.first-reply.json" -w '%{http_code}' \
    -H 'content-type: application/json' --data-binary "$first_row" "$base/score")"
[[ "$status" == 200 ]] || server_failed "POST /score answered $status: $(head -c 500 "$OUT/server.first-reply.json")"
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
say "sending SIGTERM to the server"
kill -TERM "$SERVER_PID"
stop_started=$SECONDS
while kill -0 "$SERVER_PID" 2>/dev/null; do
    ((SECONDS - stop_started < SHUTDOWN_TIMEOUT_S)) || die "the server did not exit within ${SHUTDOWN_TIMEOUT_S}s of SIGTERM"
    sleep 0.1
done
server_status=0
wait "$SERVER_PID" || server_status=$?
# R hosts still exiting get a moment; after that, any survivor is a shutdown bug.
for _ in $(seq 20); do
    leftovers="$(pgrep -g "$SERVER_PID" || true)"
    [[ -n "$leftovers" ]] || break
    sleep 0.1
done
SERVER_PID_DONE="$SERVER_PID"
SERVER_PID=""
if [[ -n "$leftovers" ]]; then
    pkill -KILL -g "$SERVER_PID_DONE" || true
    die "processes of the server's group outlived it: $(echo "$leftovers" | tr '\n' ' ')"
fi
((server_status == 0)) || { tail -n 30 "$OUT/server.log" >&2; die "the server exited with status $server_status after SIGTERM"; }
say "server exited cleanly in $((SECONDS - stop_started))s"

# (e) The R limit, after the server is gone so that it has the machine to itself.
r_processes="1"
if [[ "$HOSTS" != 1 ]]; then r_processes="1 $HOSTS"; fi
for processes in $r_processes; do
    say "R limit: $processes process(es), $REQUESTS single-row predict calls after $WARMUP warm-up"
    Rscript "$ROOT/benches/r_limit.R" --model "$MODEL_DIR/rf500/model.rds" --rows "$ROWS" \
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
