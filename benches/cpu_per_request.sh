#!/usr/bin/env bash
# CPU time per request of `rfleet serve` itself (dispatcher + worker) and of its R hosts,
# from /proc (utime + stime) before and after a closed-loop load at concurrency 32. Less
# noisy than requests/s on a shared machine, where the same build's throughput varies by
# a fifth from one minute to the next (BENCHMARKS.md, "Issue 9").
#
# Usage: benches/cpu_per_request.sh RFLEET_BINARY [REQUESTS] [MODEL_DIR]
#   MODEL_DIR: a directory made by benches/make_model.R (default: benches/out/model, as
#   benches/run.sh leaves it). Needs rfleet-load built (target/release/rfleet-load),
#   curl, jq, bc and pgrep.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bin=$1; n=${2:-10000}
MODEL_DIR=${3:-$ROOT/benches/out/model}
LOAD=$ROOT/target/release/rfleet-load
$bin serve --models $MODEL_DIR --listen 127.0.0.1:8765 --hosts 2 > ${TMPDIR:-/tmp}/rfleet-cpu-server.log 2>&1 &
pid=$!
for i in $(seq 300); do curl -sf http://127.0.0.1:8765/ready >/dev/null && break; sleep 0.2; done
$LOAD --url http://127.0.0.1:8765/score --body-file $MODEL_DIR/rows.jsonl --concurrency 32 --requests 500 --warmup 100 --duration-s 60 --json ${TMPDIR:-/tmp}/rfleet-cpu-warm.json >/dev/null 2>&1
ticks() { awk '{print $14+$15}' /proc/$pid/stat; }
hticks() { local t=0; for h in $(pgrep -P $pid rfleet-rhost); do t=$((t + $(awk '{print $14+$15}' /proc/$h/stat))); done; echo $t; }
t0=$(ticks); h0=$(hticks)
$LOAD --url http://127.0.0.1:8765/score --body-file $MODEL_DIR/rows.jsonl --concurrency 32 --requests $n --warmup 0 --duration-s 120 --json ${TMPDIR:-/tmp}/rfleet-cpu-run.json >/dev/null 2>&1
t1=$(ticks); h1=$(hticks)
hz=$(getconf CLK_TCK)
rps=$(jq .rps "${TMPDIR:-/tmp}/rfleet-cpu-run.json")
echo "$bin cpu_ms_per_request=$(echo "scale=4; ($t1-$t0)*1000/$hz/$n" | bc) rhost_cpu_ms_per_request=$(echo "scale=4; ($h1-$h0)*1000/$hz/$n" | bc) rps=$rps"
kill -TERM $pid; wait $pid 2>/dev/null || true
