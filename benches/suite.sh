#!/usr/bin/env bash
# benches/suite.sh: the comparative benchmark suite (BENCHMARKS.md, "Comparative suite").
#
# Usage: benches/suite.sh            (from anywhere; about 6 minutes on 2 cores, plus the build)
#
# One command, every system on this machine, one after the other (never two at once):
#   1. single-row requests to the 500-tree randomForest at each concurrency level, for
#      rfleet serve (embedded bus) with R's predict (engine r), the same with the native
#      engine (?engine=native), rfleet serve over RabbitMQ, plumber (one R process),
#      valve (HOSTS plumber processes behind one port), and the in-process R predict loop
#      (benches/r_limit.R, 1 and HOSTS processes);
#   2. one BIG_ROWS-row request to rfleet with splitting off and on (?split=never,
#      ?split=always by rows, ?split=always by trees), to the native engine, plumber, and
#      one R predict call;
#   3. rfleet's throughput at BATCH_CONCURRENCY as max_batch_rows varies;
#   4. the resident memory of every process of each service, after its load, and the
#      native forest's bytes beside R's object.size of the model;
#   5. with the native system: the engine in-process (benches/native.sh: criterion, and
#      treelite's GTIL on the same trees).
# It writes benches/out/suite/ (raw JSON, results.md) and the plot $PLOT (SVG).
#
# Knobs (environment):
#   REQUESTS=2000 WARMUP=200 DURATION_S=20   per load phase: measured requests, warm-up
#                                            requests, and a time cap on each phase
#   CONCURRENCY_LEVELS="1 8 32 64" HOSTS=2   (rfleet R hosts = valve plumber processes)
#   SYSTEMS="embedded native amqp plumber valve rloop"
#   NATIVE_REQUESTS=20000                    measured requests per native phase (still
#                                            capped by DURATION_S): 2,000 take under a second
#   INPROC=1                                 0 leaves out the in-process part (benches/native.sh)
#   BIG_ROWS=10000 BIG_RUNS=5                rows of the large request; timed runs (median)
#   BATCH_ROWS_LEVELS="1 4 16 64 256" BATCH_CONCURRENCY=32
#   BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f (loopback only)
#   SKIP_BUILD=0 SKIP_INSTALL=0 READY_TIMEOUT_S=180 SHUTDOWN_TIMEOUT_S=30
#   OUT_DIR=benches/out/suite PLOT=benches/suite.svg RFLEET=target/release/rfleet VALVE=valve
#   (binaries from $CARGO_TARGET_DIR/release when it is set)
#
# Installs what is missing from the registries: Debian's r-cran-plumber,
# r-cran-randomforest, r-cran-jsonlite, jq and curl (apt-get, as root); valve from
# crates.io (cargo install valve-rs --locked); pika from PyPI only for the RabbitMQ
# clean-up; treelite, msgpack and numpy from PyPI in a venv of benches/out for the
# in-process comparison (benches/native.sh). The plot is an SVG written by benches/suite_report.py (Python's standard
# library only).
#
# Every server runs in its own process group (setsid) on a loopback port; on any exit the
# trap kills every group this script started. Every load phase is bounded in requests and
# time; every wait has a timeout. rfleet settings reach the server's environment only.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
WARMUP="${WARMUP:-200}"
DURATION_S="${DURATION_S:-20}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-1 8 32 64}"
HOSTS="${HOSTS:-2}"
SYSTEMS="${SYSTEMS:-embedded native amqp plumber valve rloop}"
NATIVE_REQUESTS="${NATIVE_REQUESTS:-20000}"
INPROC="${INPROC:-1}"
BIG_ROWS="${BIG_ROWS:-10000}"
BIG_RUNS="${BIG_RUNS:-5}"
BATCH_ROWS_LEVELS="${BATCH_ROWS_LEVELS:-1 4 16 64 256}"
BATCH_CONCURRENCY="${BATCH_CONCURRENCY:-32}"
BROKER_URL="${BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
SHUTDOWN_TIMEOUT_S="${SHUTDOWN_TIMEOUT_S:-30}"
OUT="${OUT_DIR:-$ROOT/benches/out/suite}"
PLOT="${PLOT:-$ROOT/benches/suite.svg}"
# Where cargo puts the release binaries (CARGO_TARGET_DIR, as cargo itself reads it).
RELEASE_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RFLEET="${RFLEET:-$RELEASE_DIR/rfleet}"
LOAD="$RELEASE_DIR/rfleet-load"
VALVE="${VALVE:-}"
# Per-request timeout of the load generator (s); a slower reply counts as an error.
REQUEST_TIMEOUT_S=30
# This run's names on the broker: unique per run, never another fleet's queues.
NAMESPACE="rfleet-suite-$$"

say() { printf 'suite.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
has_system() { [[ " $SYSTEMS " == *" $1 "* ]]; }

for system in $SYSTEMS; do
    case "$system" in embedded | native | amqp | plumber | valve | rloop) ;; *) die "SYSTEMS may name embedded, native, amqp, plumber, valve and rloop (got $system)" ;; esac
done
for knob in REQUESTS NATIVE_REQUESTS WARMUP DURATION_S HOSTS BIG_ROWS BIG_RUNS BATCH_CONCURRENCY READY_TIMEOUT_S SHUTDOWN_TIMEOUT_S; do
    [[ "${!knob}" =~ ^[0-9]+$ ]] || die "$knob must be a whole number (got '${!knob}')"
done
((HOSTS >= 1 && REQUESTS >= 1 && NATIVE_REQUESTS >= 1 && DURATION_S >= 1 && BIG_RUNS >= 1)) || die "HOSTS, REQUESTS, DURATION_S and BIG_RUNS must be at least 1"
((DURATION_S <= 600)) || die "DURATION_S is capped at 600 s per phase"
[[ "$INPROC" == 0 || "$INPROC" == 1 ]] || die "INPROC is 0 or 1 (got '$INPROC')"

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
if has_system amqp; then require_loopback_broker; fi

# ---------------------------------------------------------------------------------------
# Clean-up: every process group this script started (start_group, start_rfleet), and this
# run's broker objects.

trap_cleanup_on_exit

# What else uses the CPU (top's second frame: current, not lifetime, usage), appended to
# cpu-samples.txt at the start, between sections and at the end: a busy neighbour on two
# cores changes every figure, and this is where to see whether there was one.
cpu_sample() {
    {
        echo "=== $1 ($(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg))"
        timeout 10 top -b -n 2 -d 1 -w 160 2>/dev/null | awk '/^top -/ {frame++} frame == 2' | sed -n '3p;7,14p' || true
    } >>"$OUT/cpu-samples.txt"
}

# CPU accounting per phase, to tell a clean figure from one taken while something else
# ran: the machine's busy time (/proc/stat) minus the measured service's (every process
# of its group, /proc/<pid>/stat) minus this script's waited children's (the load
# generator or the R loop, from the shell's `times`), as a share of all cores' time.
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
CURRENT_GROUP=""   # the process group of the service being measured, if any
machine_jiffies() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6; print busy, total}' /proc/stat; }
group_jiffies() {
    local leader="$1" pid total=0 value
    [[ -n "$leader" ]] || { echo 0; return; }
    for pid in $(pgrep -g "$leader" || true); do
        # Fields after "pid (comm) ": utime stime cutime cstime are the 12th to 15th.
        value="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}' || true)"
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
# Call as `times >"$OUT/.times"; children_jiffies` from this shell: `times` in a command
# substitution would run in a subshell, whose counts start at zero. Line 2 of its output
# is the user and system time of the children this shell has waited for (and theirs).
children_jiffies() {
    awk -v tck="$CLK_TCK" 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2] }; printf "%d\n", s * tck }' "$OUT/.times"
}
cpu_mark() {
    read -r MARK_BUSY MARK_TOTAL < <(machine_jiffies)
    MARK_GROUP="$(group_jiffies "$CURRENT_GROUP")"
    times >"$OUT/.times"
    MARK_CHILDREN="$(children_jiffies)"
}
# Adds cpu_other_pct (the share of all cores used by anything but the service and the load
# generator during the phase) and cpu_service_pct to a run's JSON.
cpu_account() {
    local file="$1" busy total group children
    read -r busy total < <(machine_jiffies)
    group="$(group_jiffies "$CURRENT_GROUP")"
    times >"$OUT/.times"
    children="$(children_jiffies)"
    jq --argjson busy $((busy - MARK_BUSY)) --argjson total $((total - MARK_TOTAL)) \
        --argjson group $((group - MARK_GROUP)) --argjson children $((children - MARK_CHILDREN)) \
        'if $total > 0 then . + {cpu_other_pct: ((([$busy - $group - $children, 0] | max) / $total * 1000 | round) / 10),
                               cpu_service_pct: (($group + $children) / $total * 1000 | round / 10)} else . end' \
        "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------
# (a) What the suite needs, from the registries when missing.

apt_updated=0
apt_install() {
    [[ "$(id -u)" == 0 ]] || die "missing Debian packages ($*): install them as root (apt-get install $*)"
    if ((!apt_updated)); then
        timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
    say "installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

install_needs() {
    local missing=() tool
    for tool in curl jq; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    command -v Rscript >/dev/null || missing+=(r-base-core)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        ((SKIP_INSTALL)) && die "missing: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    missing=()
    Rscript -e 'suppressPackageStartupMessages(library(randomForest))' >/dev/null 2>&1 || missing+=(r-cran-randomforest)
    Rscript -e 'suppressPackageStartupMessages(library(jsonlite))' >/dev/null 2>&1 || missing+=(r-cran-jsonlite)
    if has_system plumber || has_system valve; then
        # Debian's build of plumber; checked with dpkg and by loading it in R.
        if ! dpkg -s r-cran-plumber >/dev/null 2>&1 && ! Rscript -e 'suppressPackageStartupMessages(library(plumber))' >/dev/null 2>&1; then
            missing+=(r-cran-plumber)
        fi
    fi
    if ((${#missing[@]})); then
        ((SKIP_INSTALL)) && die "missing R packages: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    if has_system valve; then
        if [[ -z "$VALVE" ]]; then
            VALVE="$(command -v valve || true)"
            [[ -n "$VALVE" ]] || { [[ -x "$HOME/.cargo/bin/valve" ]] && VALVE="$HOME/.cargo/bin/valve"; } || true
        fi
        if [[ -z "$VALVE" || ! -x "$VALVE" ]]; then
            ((SKIP_INSTALL)) && die "valve is missing (cargo install valve-rs --locked)"
            say "installing valve from crates.io (cargo install valve-rs --locked)"
            timeout 1800 cargo install valve-rs --locked >&2 || die "cargo install valve-rs --locked failed"
            VALVE="$HOME/.cargo/bin/valve"
        fi
        # Output captured first: `cmd | grep -q` fails under pipefail when grep's early exit
        # kills the writer with SIGPIPE.
        local help
        help="$("$VALVE" --help 2>&1 || true)"
        [[ "$help" == *--n-max* ]] || die "$VALVE is not valve-rs's valve (no --n-max in its --help)"
    fi
    if has_system amqp && ! python3 -c 'import pika' 2>/dev/null; then
        ((SKIP_INSTALL)) && die "Python's pika is missing (needed to delete this run's broker queues)"
        say "installing pika from PyPI (to delete this run's queues on the broker afterwards)"
        timeout 300 python3 -m pip install --quiet pika >&2 || die "pip install pika failed"
    fi
}

require_tools cargo setsid pgrep timeout
install_needs

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODEL_DIR="$OUT/model"
SPLIT_MODELS="$OUT/split-models"
ROWS="$MODEL_DIR/rows.jsonl"
BIG_BODY="$OUT/body-big.json"
rm -rf "$OUT/native"
find "$OUT" -maxdepth 1 -type f \( -name '.times' -o -name '*.json' -o -name '*.log' -o -name '*.stdout' -o -name '*.headers' -o -name 'results.*' -o -name '*.svg' -o -name '*.txt' \) -delete

# ---------------------------------------------------------------------------------------
# (b) Release binaries, and what this rfleet build offers.

build_release "$RFLEET" "$LOAD"
if has_system amqp; then require_broker "leave amqp out of SYSTEMS"; fi
# Batching: the sweep needs the max_batch_rows setting, checked through `rfleet config`
# with the variable in its environment only.
config_default="$(cd "$OUT" && "$RFLEET" config 2>/dev/null || true)"
config_batch7="$(cd "$OUT" && env RFLEET_WORKERS__MAX_BATCH_ROWS=7 "$RFLEET" config 2>/dev/null || true)"
has_split_min_rows=0
if grep -Eq '^split_min_rows = ' <<<"$config_default"; then has_split_min_rows=1; fi
has_batching=0
if grep -Eq '^max_batch_rows = 7$' <<<"$config_batch7"; then
    has_batching=1
else
    say "this rfleet has no workers.max_batch_rows setting: the batching sweep is skipped"
fi
# Engines: every rfleet server but the native one runs R's predict
# (RFLEET_WORKERS__ENGINE=r), so that what the earlier sections measure stays R's path when
# a self-check would otherwise move the model to the native engine. An rfleet without the
# setting has no native engine: it needs no such setting, and cannot run the native system.
config_engine_r="$(cd "$OUT" && env RFLEET_WORKERS__ENGINE=r "$RFLEET" config 2>/dev/null || true)"
r_engine=()
if grep -Eq '^engine = "r"$' <<<"$config_engine_r"; then
    r_engine=(RFLEET_WORKERS__ENGINE=r)
elif has_system native; then
    die "this rfleet has no workers.engine setting, so no native engine: leave native out of SYSTEMS"
fi

# ---------------------------------------------------------------------------------------
# (c) Machine facts, next to the figures they qualify.

rabbitmq="-"
if has_system amqp; then rabbitmq="$(rabbitmq_version)"; fi
valve_version="-"
if has_system valve; then
    valve_version="$(grep -o 'valve-rs [0-9.]*' "$HOME/.cargo/.crates.toml" 2>/dev/null | head -n1 || true)"
    valve_version="${valve_version:-valve-rs (version unknown)}"
fi
plumber_version="$(Rscript -e 'cat(tryCatch(as.character(packageVersion("plumber")), error = function(e) "-"))')"
machine_facts | jq \
    --arg plumber "$plumber_version" \
    --arg valve "$valve_version" \
    --arg rabbitmq "$rabbitmq" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg mem "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
    --arg requests "$REQUESTS" --arg warmup "$WARMUP" --arg duration "$DURATION_S" --arg hosts "$HOSTS" \
    --arg big_rows "$BIG_ROWS" --arg big_runs "$BIG_RUNS" --arg batching "$has_batching" --arg native_requests "$NATIVE_REQUESTS" \
    '. + {memory: $mem, plumber: $plumber, valve: $valve, rabbitmq: $rabbitmq, loadavg_before: $loadavg,
          requests: ($requests | tonumber), warmup: ($warmup | tonumber), duration_s: ($duration | tonumber),
          hosts: ($hosts | tonumber), big_rows: ($big_rows | tonumber), big_runs: ($big_runs | tonumber),
          native_requests: ($native_requests | tonumber),
          batching: ($batching == "1")}' \
    >"$OUT/machine.json"
say "machine: $(jq -c . "$OUT/machine.json")"

# ---------------------------------------------------------------------------------------
# (d) The model, the single-row bodies and the large body (the same rows, repeated).

Rscript "$ROOT/benches/make_model.R" "$MODEL_DIR" >&2
n_rows="$(grep -c . "$ROWS")"
jq -s -c --argjson n "$BIG_ROWS" '[.[][]] as $rows | [range($n) | $rows[. % ($rows | length)]]' "$ROWS" >"$BIG_BODY"
[[ "$(jq length "$BIG_BODY")" == "$BIG_ROWS" ]] || die "could not build the $BIG_ROWS-row body"
say "large body: $BIG_ROWS rows (the $n_rows request rows, cycled), $(($(stat -c %s "$BIG_BODY") / 1024)) KiB"
# For the split runs: the same model twice, the second told (model.toml) never to split by
# rows, so that ?split=always splits it by trees (where this build has split_min_rows).
rm -rf "$SPLIT_MODELS"
mkdir -p "$SPLIT_MODELS/rf500"
ln -s "$MODEL_DIR/rf500/model.rds" "$SPLIT_MODELS/rf500/model.rds"
split_variants=("rf500 never" "rf500 always" "rf500 auto")
if ((has_split_min_rows)); then
    mkdir -p "$SPLIT_MODELS/rf500_trees"
    ln -s "$MODEL_DIR/rf500/model.rds" "$SPLIT_MODELS/rf500_trees/model.rds"
    printf 'split_min_rows = 1000000000\n' >"$SPLIT_MODELS/rf500_trees/model.toml"
    split_variants=("rf500 never" "rf500 always" "rf500_trees always" "rf500 auto")
fi

# ---------------------------------------------------------------------------------------
# (e) Measuring.

# Resident memory of every process in a process group: its command, VmRSS and VmHWM
# (peak), and PSS (shared pages divided among their sharers, so the group's PSS adds up).
memory_snapshot() {
    local system="$1" leader="$2" pid comm rss hwm pss procs=()
    for pid in $(pgrep -g "$leader" || true); do
        [[ -r "/proc/$pid/status" ]] || continue
        comm="$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')"
        rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
        hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
        pss="$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)"
        [[ -n "$rss" ]] || continue
        procs+=("$(jq -n -c --arg pid "$pid" --arg comm "$comm" --arg rss "$rss" --arg hwm "$hwm" --arg pss "${pss:-0}" \
            '{pid: ($pid | tonumber), comm: $comm, rss_kib: ($rss | tonumber), hwm_kib: ($hwm | tonumber), pss_kib: ($pss | tonumber)}')")
    done
    ((${#procs[@]})) || die "$system: no process left in group $leader to measure"
    printf '%s\n' "${procs[@]}" | jq -s -c --arg system "$system" '{system: $system, processes: .}' >"$OUT/memory-$system.json"
    say "$system memory: $(jq -r '[.processes[] | "\(.comm) \(.rss_kib / 1024 | floor) MiB"] | join(", ")' "$OUT/memory-$system.json")"
}

# One load phase: rfleet-load against $1 at concurrency $2, into $3 (JSON), labelled.
# HTTP errors are counted and reported, never hidden; a run that cannot complete stops.
load_run() {
    local url="$1" concurrency="$2" out="$3" body="$4" requests="$5" warmup="$6" section="$7" system="$8"
    say "$system: $requests requests after $warmup warm-up at concurrency $concurrency -> $url"
    cpu_mark
    run_waited "$LOAD" --url "$url" --body-file "$body" --concurrency "$concurrency" \
        --requests "$requests" --warmup "$warmup" --duration-s "$DURATION_S" --timeout-s "$REQUEST_TIMEOUT_S" \
        --max-errors "$requests" --json "$out.raw" >&2 || die "$system: rfleet-load failed at concurrency $concurrency"
    jq --arg section "$section" --arg system "$system" '. + {section: $section, system: $system}' "$out.raw" >"$out"
    rm -f "$out.raw"
    cpu_account "$out"
    local errors
    errors="$(jq .errors "$out")"
    ((errors == 0)) || say "warning: $system at concurrency $concurrency: $errors failed requests (reported in the table)"
}

# One request by hand: a wrong answer must not be benchmarked. Prints the reply.
first_reply() {
    local system="$1" url="$2" log="$3" status
    status="$(curl -s -m 60 -D "$OUT/$system.first-reply.headers" -o "$OUT/$system.first-reply.json" -w '%{http_code}' \
        -H 'content-type: application/json' --data-binary "$(head -n1 "$ROWS")" "$url" || true)"
    [[ "$status" == 200 ]] || die_with_log "$log" "$system: POST $url answered '$status': $(head -c 300 "$OUT/$system.first-reply.json" 2>/dev/null)"
    say "$system: first row -> $(head -c 200 "$OUT/$system.first-reply.json")"
}

# Stops a plumber or valve group (they have no graceful drain to check).
stop_other() {
    kill_group "$1"
    wait "$1" 2>/dev/null || true
}

check_same_prediction() {
    local system="$1" reference="$2"
    python3 - "$OUT/$system.first-reply.json" "$reference" <<'EOF' || die "$system answered the first row differently from rfleet: $(cat "$OUT/$system.first-reply.json") vs $reference"
import json, sys
got = json.load(open(sys.argv[1]))
want = float(sys.argv[2])
value = got[0] if isinstance(got, list) else got
sys.exit(0 if abs(float(value) - want) <= 1e-9 * max(1.0, abs(want)) else 1)
EOF
}

# After start_rfleet: waits up to READY_TIMEOUT_S for GET /models/rf500 to show the native
# engine's self-check, which must have passed with the model served natively; keeps what it
# showed in native-model.json. $1 = label.
await_self_check() {
    local label="$1" file="$OUT/native-model.json" deadline=$((SECONDS + READY_TIMEOUT_S)) status
    while :; do
        status="$(curl -s -m 5 -o "$file" -w '%{http_code}' "$RFLEET_BASE/models/rf500" || true)"
        if [[ "$status" == 200 ]] && jq -e '.engine.self_check != null' "$file" >/dev/null 2>&1; then break; fi
        kill -0 "$RFLEET_PID" 2>/dev/null || die_with_log "$RFLEET_LOG" "$label: rfleet exited before the self-check"
        ((SECONDS < deadline)) || die_with_log "$RFLEET_LOG" \
            "$label: GET /models/rf500 showed no self-check within ${READY_TIMEOUT_S}s: $(head -c 400 "$file" 2>/dev/null)"
        sleep 0.2
    done
    jq -e '.engine.self_check.passed == true and .engine.serving == "native"' "$file" >/dev/null ||
        die_with_log "$RFLEET_LOG" "$label: the self-check did not put the model on the native engine: $(jq -c .engine "$file")"
    say "$label: self-check passed $(jq -c .engine.self_check "$file"); forest $(jq -c .engine.native "$file")"
}

# Every successful reply counted in rfleet-load's JSON $1 said x-rfleet-path: native.
require_native_paths() {
    local file="$1" what="$2"
    jq -e '.paths != null and (.paths | keys) == ["native"]' "$file" >/dev/null ||
        die "rfleet-native: $what: not every reply came from the native engine: paths $(jq -c .paths "$file")"
}

# ---------------------------------------------------------------------------------------
# (f) Single-row requests, every system; memory after each service's load.

cpu_sample "before the single-row runs"
reference_prediction=""

if has_system embedded || has_system amqp; then
    for bus in embedded amqp; do
        has_system "$bus" || continue
        label="rfleet-$bus"
        start_rfleet "$label" "$OUT/server-$label.log" "$MODEL_DIR" "$bus" ${r_engine[@]+"${r_engine[@]}"}
        CURRENT_GROUP="$RFLEET_PID"
        first_reply "$label" "$RFLEET_BASE/score" "$OUT/server-$label.log"
        grep -qi '^x-rfleet-r-ms:' "$OUT/$label.first-reply.headers" || die "$label: the reply has no x-rfleet-r-ms header"
        prediction="$(jq '.[0]' "$OUT/$label.first-reply.json")"
        if [[ -z "$reference_prediction" ]]; then reference_prediction="$prediction"; else check_same_prediction "$label" "$reference_prediction"; fi
        for concurrency in $CONCURRENCY_LEVELS; do
            load_run "$RFLEET_BASE/score" "$concurrency" "$OUT/single-$label-c$concurrency.json" "$ROWS" \
                "$REQUESTS" "$WARMUP" single "$label"
            kill -0 "$RFLEET_PID" 2>/dev/null || die "$label: rfleet died during the load"
        done
        if [[ "$bus" == embedded ]]; then
            # At concurrency 1 the default policy (auto) splits a single row by trees across
            # the idle hosts; this is the like-for-like run against one R process.
            load_run "$RFLEET_BASE/score?split=never" 1 "$OUT/single-$label-never-c1.json" "$ROWS" \
                "$REQUESTS" "$WARMUP" single "$label-never"
        fi
        memory_snapshot "$label" "$RFLEET_PID"
        stop_rfleet
        if [[ "$bus" == amqp ]]; then broker_cleanup; fi
    done
fi

# The native engine: the same rfleet serve and model, scored by the model's native forest.
# The model's engine stays auto: its R hosts load it, extract the forest into the cache file
# beside it and keep R as the fallback, and the worker serves it natively once the
# self-check at load has passed, which the run waits for in GET /models. Every request asks
# ?engine=native, so one the engine could not serve would fail (422) instead of going to R
# unseen, and every reply must say x-rfleet-path: native.
native_cache_file=""
if has_system native; then
    label=rfleet-native
    start_rfleet "$label" "$OUT/server-$label.log" "$MODEL_DIR" embedded
    CURRENT_GROUP="$RFLEET_PID"
    await_self_check "$label"
    native_url="$RFLEET_BASE/score?engine=native"
    first_reply "$label" "$native_url" "$OUT/server-$label.log"
    grep -qi '^x-rfleet-path: native' "$OUT/$label.first-reply.headers" ||
        die "$label: the first reply does not say x-rfleet-path: native: $(tr -d '\r' <"$OUT/$label.first-reply.headers" | grep -i '^x-rfleet' | tr '\n' ' ')"
    if [[ -n "$reference_prediction" && "$(jq '.[0]' "$OUT/$label.first-reply.json")" != "$reference_prediction" ]]; then
        die "$label: the first row scored $(jq '.[0]' "$OUT/$label.first-reply.json"), R's predict $reference_prediction"
    fi
    say "$label: warm-up probe, $WARMUP requests at concurrency 8, every reply from the native engine"
    run_waited "$LOAD" --url "$native_url" --body-file "$ROWS" --concurrency 8 --requests "$WARMUP" \
        --duration-s "$DURATION_S" --timeout-s "$REQUEST_TIMEOUT_S" --json "$OUT/native-probe.json" >&2 ||
        die "$label: the warm-up probe had failed requests"
    require_native_paths "$OUT/native-probe.json" "the warm-up probe"
    for concurrency in $CONCURRENCY_LEVELS; do
        load_run "$native_url" "$concurrency" "$OUT/single-$label-c$concurrency.json" "$ROWS" \
            "$NATIVE_REQUESTS" "$WARMUP" single "$label"
        require_native_paths "$OUT/single-$label-c$concurrency.json" "concurrency $concurrency"
        kill -0 "$RFLEET_PID" 2>/dev/null || die "$label: rfleet died during the load"
    done
    memory_snapshot "$label" "$RFLEET_PID"
    # The large request: the native answer against R's on the same server, unsplit (a split
    # by trees sums in another order), compared value by value as doubles.
    for engine in r native; do
        status="$(curl -s -m 120 -o "$OUT/reply-big-$engine.json" -w '%{http_code}' -H 'content-type: application/json' \
            --data-binary "@$BIG_BODY" "$RFLEET_BASE/score?engine=$engine&split=never" || true)"
        [[ "$status" == 200 ]] || die_with_log "$RFLEET_LOG" "$label: the $BIG_ROWS-row request with ?engine=$engine answered '$status'"
    done
    big_differing="$(python3 - "$OUT/reply-big-native.json" "$OUT/reply-big-r.json" <<'PY'
import json, struct, sys
native, r = (json.load(open(path)) for path in sys.argv[1:])
bits = lambda v: struct.pack("<d", float(v))
print(sum(1 for a, b in zip(native, r) if bits(a) != bits(b)) + abs(len(native) - len(r)))
PY
)"
    if ((big_differing == 0)); then
        say "$label: the $BIG_ROWS-row request: the native answer equals R's, bit for bit"
    else
        say "warning: $label: the $BIG_ROWS-row request: $big_differing of $BIG_ROWS native values differ from R's (reported in the table)"
    fi
    load_run "$native_url" 1 "$OUT/big-$label.json" "$BIG_BODY" $((BIG_RUNS * 10)) 1 big "rfleet ?engine=native"
    require_native_paths "$OUT/big-$label.json" "the $BIG_ROWS-row request"
    # The forest's footprint in the worker beside R's own size of the model, which every R
    # host holds once.
    r_object_size="$(Rscript -e 'suppressPackageStartupMessages(library(randomForest)); cat(as.numeric(object.size(readRDS(commandArgs(TRUE)[1]))))' \
        "$MODEL_DIR/rf500/model.rds")"
    # The R host keeps the forest beside the model (named by the SHA-256 of model.rds and
    # the schema); this run's model directory is its own, so its one cache file is it.
    native_cache_file="$(find "$MODEL_DIR/rf500/.rfleet" -name 'native-*.msgpack' -print -quit 2>/dev/null || true)"
    [[ -n "$native_cache_file" ]] || say "warning: $label: no cache file native-*.msgpack beside the model: the in-process part is skipped"
    jq -n --slurpfile model "$OUT/native-model.json" --argjson r_bytes "$r_object_size" --argjson hosts "$HOSTS" \
        --arg cache "$native_cache_file" --argjson cache_bytes "$(stat -c %s "$native_cache_file" 2>/dev/null || echo null)" \
        --argjson differing "$big_differing" --argjson big_rows "$BIG_ROWS" \
        '{native: $model[0].engine.native, self_check: $model[0].engine.self_check, r_object_size_bytes: $r_bytes,
          hosts: $hosts, cache_file: $cache, cache_file_bytes: $cache_bytes,
          big_rows: $big_rows, big_values_differing_from_r: $differing}' >"$OUT/native-forest.json"
    stop_rfleet
fi

if has_system plumber; then
    label=plumber
    port="$(free_port)"
    say "plumber: starting one plumber process on 127.0.0.1:$port"
    start_group "$OUT/server-plumber.stdout" "$OUT/server-plumber.log" \
        env BENCH_MODEL_RDS="$MODEL_DIR/rf500/model.rds" Rscript "$ROOT/benches/plumber/serve.R" "$port"
    plumber_pid="$STARTED_PID"
    CURRENT_GROUP="$plumber_pid"
    wait_ready plumber "http://127.0.0.1:$port/ready" "$plumber_pid" "$OUT/server-plumber.log"
    first_reply plumber "http://127.0.0.1:$port/score" "$OUT/server-plumber.log"
    [[ -z "$reference_prediction" ]] || check_same_prediction plumber "$reference_prediction"
    for concurrency in $CONCURRENCY_LEVELS; do
        load_run "http://127.0.0.1:$port/score" "$concurrency" "$OUT/single-plumber-c$concurrency.json" "$ROWS" \
            "$REQUESTS" "$WARMUP" single plumber
        kill -0 "$plumber_pid" 2>/dev/null || die "plumber died during the load"
    done
    # The large request too: what one R process behind HTTP does with it.
    load_run "http://127.0.0.1:$port/score" 1 "$OUT/big-plumber.json" "$BIG_BODY" "$BIG_RUNS" 1 big plumber
    memory_snapshot plumber "$plumber_pid"
    stop_other "$plumber_pid"
fi

if has_system valve; then
    label=valve
    port="$(free_port)"
    say "valve: starting valve with up to $HOSTS plumber processes on 127.0.0.1:$port"
    # valve runs `R -e "plumber::plumb(file)$run(host, port)"` for each plumber process it
    # spawns (on demand, up to -n), on random loopback ports; --n-min keeps them all.
    start_group "$OUT/server-valve.stdout" "$OUT/server-valve.log" \
        env BENCH_MODEL_RDS="$MODEL_DIR/rf500/model.rds" "$VALVE" -h 127.0.0.1 -p "$port" -n "$HOSTS" \
        --n-min "$HOSTS" -w "$(nproc)" -f "$ROOT/benches/plumber/plumber.R"
    valve_pid="$STARTED_PID"
    CURRENT_GROUP="$valve_pid"
    wait_ready valve "http://127.0.0.1:$port/ready" "$valve_pid" "$OUT/server-valve.log"
    first_reply valve "http://127.0.0.1:$port/score" "$OUT/server-valve.log"
    [[ -z "$reference_prediction" ]] || check_same_prediction valve "$reference_prediction"
    # valve spawns a plumber process only when every one it has is busy: bring up all
    # HOSTS of them before measuring (each takes a few seconds to start R and load the model).
    deadline=$((SECONDS + READY_TIMEOUT_S))
    while (($(pgrep -g "$valve_pid" -x R | wc -l) < HOSTS)); do
        ((SECONDS < deadline)) || die "valve did not start $HOSTS plumber processes within ${READY_TIMEOUT_S}s"
        run_waited "$LOAD" --url "http://127.0.0.1:$port/score" --body-file "$ROWS" --concurrency $((HOSTS * 4)) \
            --requests 100 --duration-s 30 --max-errors 100 >/dev/null 2>&1 || true
    done
    say "valve: $(pgrep -g "$valve_pid" -x R | wc -l) plumber processes up"
    for concurrency in $CONCURRENCY_LEVELS; do
        load_run "http://127.0.0.1:$port/score" "$concurrency" "$OUT/single-valve-c$concurrency.json" "$ROWS" \
            "$REQUESTS" "$WARMUP" single valve
        kill -0 "$valve_pid" 2>/dev/null || die "valve died during the load"
    done
    memory_snapshot valve "$valve_pid"
    stop_other "$valve_pid"
fi

if has_system rloop; then
    CURRENT_GROUP=""
    for processes in 1 "$HOSTS"; do
        if [[ "$processes" == 1 && -f "$OUT/single-rloop-p1.json" ]]; then continue; fi
        say "R predict loop: $processes process(es), $REQUESTS calls after $WARMUP warm-up"
        cpu_mark
        # shellcheck disable=SC2046 # r_malloc_env gives several words
        run_waited timeout $((2 * DURATION_S + 120)) env $(r_malloc_env) Rscript "$ROOT/benches/r_limit.R" \
            --model "$MODEL_DIR/rf500/model.rds" --rows "$ROWS" --requests "$REQUESTS" --warmup "$WARMUP" --processes "$processes" \
            --duration-s "$DURATION_S" --json "$OUT/single-rloop-p$processes.raw" >&2 || die "r_limit.R failed"
        jq --arg system "R loop ($processes process$([[ $processes == 1 ]] || echo es))" \
            '. + {section: "single", system: $system}' "$OUT/single-rloop-p$processes.raw" >"$OUT/single-rloop-p$processes.json"
        rm -f "$OUT/single-rloop-p$processes.raw"
        cpu_account "$OUT/single-rloop-p$processes.json"
        [[ -z "$reference_prediction" ]] || {
            echo "[$(jq .first_prediction "$OUT/single-rloop-p$processes.json")]" >"$OUT/rloop.first-reply.json"
            check_same_prediction rloop "$reference_prediction"
        }
    done
    say "R predict, one call on $BIG_ROWS rows, $BIG_RUNS runs"
    cpu_mark
    # shellcheck disable=SC2046 # r_malloc_env gives several words
    run_waited timeout 600 env $(r_malloc_env) Rscript "$ROOT/benches/r_big.R" \
        --model "$MODEL_DIR/rf500/model.rds" --body "$BIG_BODY" --runs "$BIG_RUNS" --json "$OUT/big-rloop.raw" >&2 || die "r_big.R failed"
    jq '. + {section: "big", system: "R predict (1 call)"}' "$OUT/big-rloop.raw" >"$OUT/big-rloop.json"
    rm -f "$OUT/big-rloop.raw"
    cpu_account "$OUT/big-rloop.json"
fi

# ---------------------------------------------------------------------------------------
# (g) One large request: splitting off and on (rfleet, embedded bus, HOSTS hosts).

cpu_sample "before the large-request runs"
if has_system embedded; then
    label=rfleet-split
    start_rfleet "$label" "$OUT/server-$label.log" "$SPLIT_MODELS" embedded ${r_engine[@]+"${r_engine[@]}"}
    CURRENT_GROUP="$RFLEET_PID"
    for variant in "${split_variants[@]}"; do
        read -r model split <<<"$variant"
        name="big-rfleet-$model-$split"
        load_run "$RFLEET_BASE/models/$model/score?split=$split" 1 "$OUT/$name.json" "$BIG_BODY" "$BIG_RUNS" 1 big \
            "rfleet ?split=$split$([[ $model == rf500_trees ]] && echo ' (by trees)')"
    done
    jq -e '.paths' "$OUT/big-rfleet-rf500-always.json" >/dev/null ||
        say "warning: the replies carry no x-rfleet-path header: this rfleet may not split requests"
    stop_rfleet
fi

# ---------------------------------------------------------------------------------------
# (h) Batching: throughput at BATCH_CONCURRENCY as max_batch_rows varies.

cpu_sample "before the batching runs"
if has_system embedded && ((has_batching)); then
    for rows in $BATCH_ROWS_LEVELS; do
        label="rfleet-batch$rows"
        start_rfleet "$label" "$OUT/server-$label.log" "$MODEL_DIR" embedded "RFLEET_WORKERS__MAX_BATCH_ROWS=$rows" \
            ${r_engine[@]+"${r_engine[@]}"}
        CURRENT_GROUP="$RFLEET_PID"
        load_run "$RFLEET_BASE/score" "$BATCH_CONCURRENCY" "$OUT/batch-$rows.json" "$ROWS" "$REQUESTS" "$WARMUP" batch \
            "rfleet max_batch_rows=$rows"
        jq --argjson rows "$rows" '. + {max_batch_rows: $rows}' "$OUT/batch-$rows.json" >"$OUT/batch-$rows.tmp" &&
            mv "$OUT/batch-$rows.tmp" "$OUT/batch-$rows.json"
        stop_rfleet
    done
fi

# ---------------------------------------------------------------------------------------
# (i) The native engine in-process, on the forest the native server's R host cached, once
# no service runs: criterion and treelite's GTIL (benches/native.sh).

if has_system native && ((INPROC)) && [[ -n "$native_cache_file" ]]; then
    cpu_sample "before the in-process runs"
    CURRENT_GROUP=""
    run_waited "$ROOT/benches/native.sh" --forest "$native_cache_file" --body "$BIG_BODY" \
        --reference "$OUT/reply-big-native.json" --json "$OUT/native/inproc.json" || die "benches/native.sh failed"
fi

# ---------------------------------------------------------------------------------------
# (j) Results: one JSON, the Markdown tables with the targets, and the plot.

cpu_sample "after the last run"
jq --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --arg ended "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    '. + {loadavg_after: $loadavg, ended: $ended}' "$OUT/machine.json" >"$OUT/machine.tmp" && mv "$OUT/machine.tmp" "$OUT/machine.json"
runs=()
for file in "$OUT"/single-*.json "$OUT"/big-*.json "$OUT"/batch-*.json; do
    if [[ -f "$file" ]]; then runs+=("$file"); fi
done
memories=()
for file in "$OUT"/memory-*.json; do
    if [[ -f "$file" ]]; then memories+=("$file"); fi
done
jq -s '.' ${runs[@]+"${runs[@]}"} </dev/null >"$OUT/runs.tmp"
jq -s '.' ${memories[@]+"${memories[@]}"} </dev/null >"$OUT/memory.tmp"
# The native forest's facts and the in-process figures, where this run has them.
optional_json() { if [[ -f "$1" ]]; then cat "$1"; else echo null; fi; }
jq -n --slurpfile machine "$OUT/machine.json" --slurpfile runs "$OUT/runs.tmp" --slurpfile memory "$OUT/memory.tmp" \
    --slurpfile native_forest <(optional_json "$OUT/native-forest.json") --slurpfile inproc <(optional_json "$OUT/native/inproc.json") \
    --arg systems "$SYSTEMS" --arg levels "$CONCURRENCY_LEVELS" --arg batch_c "$BATCH_CONCURRENCY" \
    '{machine: $machine[0], systems: ($systems | split(" ")), concurrency_levels: ($levels | split(" ") | map(tonumber)),
      batch_concurrency: ($batch_c | tonumber), runs: $runs[0], memory: $memory[0],
      native_forest: $native_forest[0], inproc: $inproc[0]}' >"$OUT/results.json"
rm -f "$OUT/runs.tmp" "$OUT/memory.tmp"

python3 "$ROOT/benches/suite_report.py" "$OUT/results.json" --markdown "$OUT/results.md" --svg "$OUT/suite.svg" ||
    die "suite_report.py failed"
mkdir -p "$(dirname "$PLOT")"
cp "$OUT/suite.svg" "$PLOT"
echo
cat "$OUT/results.md"
say "results in $OUT (results.md, results.json, one JSON per run, memory-*.json, server logs); plot in $PLOT"
