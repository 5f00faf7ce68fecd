# Shell functions the benchmark scripts share (sourced by run.sh, bus.sh and suite.sh):
# tool and build checks, machine facts, starting and stopping `rfleet serve`, and the clean-up
# that leaves no process and no broker object of a run behind.
#
# The caller defines say() and die(), and sets ROOT, OUT (an absolute path), RFLEET, HOSTS,
# SKIP_BUILD, READY_TIMEOUT_S and SHUTDOWN_TIMEOUT_S; for the broker, BROKER_URL and
# NAMESPACE (the prefix of this run's queues and exchanges).

GROUPS_STARTED=()   # leaders of the process groups (setsid) started with start_group
LOAD_PID=""         # the command run_waited is waiting for, if any
broker_used=0       # 1 once this run may have created objects on the broker
RFLEET_PID=""       # the server start_rfleet started, until stop_rfleet has stopped it
RFLEET_BASE=""      # its address, http://127.0.0.1:<port>
RFLEET_LABEL=""     # its label in messages, and its log (stderr)
RFLEET_LOG=""

# ---------------------------------------------------------------------------------------
# Clean-up.

# Installs the traps every script has: on any exit (an error, a signal, the end) the load
# generator and every process group this script started are stopped, R hosts included, and
# the broker keeps none of this run's objects.
trap_cleanup_on_exit() {
    trap cleanup_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup_on_exit() {
    local status=$? leader
    trap - EXIT INT TERM
    if [[ -n "$LOAD_PID" ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
    for leader in ${GROUPS_STARTED[@]+"${GROUPS_STARTED[@]}"}; do
        await_own_group "$leader"   # a signal may come while start_group waits for it
        if kill -0 -- "-$leader" 2>/dev/null; then
            say "stopping process group $leader"
            kill_group "$leader"
        fi
    done
    broker_cleanup
    exit "$status"
}

# Stops a process group started with setsid: SIGTERM, up to 5 s, then SIGKILL. Works
# when the leader is gone but members (R hosts) are left.
kill_group() {
    local leader="$1" _
    kill -0 -- "-$leader" 2>/dev/null || return 0
    kill -TERM -- "-$leader" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 -- "-$leader" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$leader" 2>/dev/null || true
}

# A child started with setsid stays in this script's process group until setsid runs, and
# the group kill cannot reach it there: waits (up to 5 s) until its own group exists or
# the child is gone.
await_own_group() {
    local leader="$1" _
    for _ in $(seq 500); do
        kill -0 -- "-$leader" 2>/dev/null && return 0
        kill -0 "$leader" 2>/dev/null || return 0
        sleep 0.01
    done
}

# Deletes the broker objects this run may have created: its request queues and dead-letter
# queue (found by name on the broker when rabbitmqctl can list them, else the ones it must
# have made), its dead-letter and catalog exchanges. Nothing without the prefix.
broker_cleanup() {
    ((broker_used)) || return 0
    local queues=("$NAMESPACE.model.rf500" "$NAMESPACE.dead" "$NAMESPACE.amqp1.model.rf500")
    local exchanges=("$NAMESPACE.dead" "$NAMESPACE.catalog")
    if command -v rabbitmqctl >/dev/null; then
        mapfile -t -O "${#queues[@]}" queues < <(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$NAMESPACE." || true)
        mapfile -t -O "${#exchanges[@]}" exchanges < <(timeout 30 rabbitmqctl -q list_exchanges name 2>/dev/null | grep -F "$NAMESPACE." || true)
        # The AMQP 1.0 plugin's server-named reply and catalog queues, which outlive their
        # links: found by their binding keys, which are this run's.
        mapfile -t -O "${#queues[@]}" queues < <(timeout 30 rabbitmqctl -q list_bindings destination_name routing_key 2>/dev/null |
            awk -v ns="$NAMESPACE." 'index($1, "amq.gen-") == 1 && index($2, ns) == 1 { print $1 }' || true)
    fi
    BROKER_URL="$BROKER_URL" NAMESPACE="$NAMESPACE" timeout 30 python3 - "${queues[@]}" -- "${exchanges[@]}" 2>/dev/null <<'EOF' || say "could not delete the broker's $NAMESPACE.* objects: delete them by hand"
import os, sys
import pika
names = sys.argv[1:]
split = names.index("--")
prefix = os.environ["NAMESPACE"] + "."
connection = pika.BlockingConnection(pika.URLParameters(os.environ["BROKER_URL"]))
for delete, group in (("queue_delete", names[:split]), ("exchange_delete", names[split + 1:])):
    for name in sorted(set(group)):
        if not (name.startswith(prefix) or name.startswith("amq.gen-")):
            continue
        channel = connection.channel()  # one per object: a failed delete closes the channel
        try:
            getattr(channel, delete)(name)
        except Exception:
            pass
connection.close()
EOF
    broker_used=0
}

# ---------------------------------------------------------------------------------------
# What a run needs.

require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
}

# Builds the release binaries unless SKIP_BUILD=1; then each of "$@" must be there.
build_release() {
    local build=(cargo build --release -p rfleet -p rhost -p benches) bin
    if [[ "$SKIP_BUILD" != 1 ]]; then
        say "building release binaries (cargo waits if another build holds the target directory)"
        (cd "$ROOT" && timeout 3600 "${build[@]}") || die "cargo build failed"
    fi
    for bin in "$@"; do
        [[ -x "$bin" ]] || die "$bin is missing (build with: ${build[*]})"
    done
}

# The broker's host and port, from BROKER_URL (amqp://user:password@host:port/vhost), into
# BROKER_HOST and BROKER_PORT. Loopback only, as for rfleet-load: this is a benchmark, not
# a probe of somebody else's broker.
require_loopback_broker() {
    BROKER_HOST="$(sed -n 's|^amqp://\([^@/]*@\)\{0,1\}\([^:/]*\).*$|\2|p' <<<"$BROKER_URL")"
    BROKER_PORT="$(sed -n 's|^amqp://\([^@/]*@\)\{0,1\}[^:/]*:\([0-9]*\).*$|\2|p' <<<"$BROKER_URL")"
    BROKER_PORT="${BROKER_PORT:-5672}"
    [[ "$BROKER_HOST" == 127.* || "$BROKER_HOST" == localhost ]] ||
        die "BROKER_URL must point at a loopback broker such as 127.0.0.1 (got host '${BROKER_HOST}')"
}

# After require_loopback_broker: this rfleet must have --bus and the broker must answer.
# $1 = what to do instead, for the messages.
require_broker() {
    local instead="$1" serve_help
    # Output captured first: `cmd | grep -q` fails under pipefail when grep's early exit
    # kills the writer with SIGPIPE.
    serve_help="$("$RFLEET" serve --help 2>&1 || true)"
    [[ "$serve_help" == *--bus* ]] || die "$RFLEET has no --bus flag: rebuild it, or $instead"
    (exec 3<>"/dev/tcp/$BROKER_HOST/$BROKER_PORT") 2>/dev/null || die "no broker answers on $BROKER_HOST:$BROKER_PORT (or $instead)"
}

# ---------------------------------------------------------------------------------------
# R outside rfleet.

# The allocator settings rfleet gives its R hosts (HOST_ENV_DEFAULTS in
# workers/worker/src/host.rs), as arguments to env(1). The R loop and R's own one-call
# predict run with them too (`env $(r_malloc_env) Rscript ...`), so the limit they set is
# R's and not glibc's defaults'; R_MALLOC=default runs them as a plain R session does.
R_MALLOC="${R_MALLOC:-rfleet}"
r_malloc_env() {
    case "$R_MALLOC" in
    rfleet) echo MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 ;;
    default) echo -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ ;;
    esac
}
[[ "$R_MALLOC" == rfleet || "$R_MALLOC" == default ]] || die "R_MALLOC is rfleet or default, not $R_MALLOC"

# ---------------------------------------------------------------------------------------
# Machine facts.

# The facts every script records next to its figures, as one JSON object; the caller adds
# its own with `jq '. + {...}'`. git is $ROOT's revision, +dirty when its tree has changes.
machine_facts() {
    local git_rev
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
        --arg r_malloc "$R_MALLOC" \
        '{date: $date, nproc: ($nproc | tonumber), cpu: $cpu, kernel: $kernel, r_version: $r_version,
          randomForest: $random_forest, rfleet: $rfleet, git: $git, r_malloc: $r_malloc}'
}

# The broker's product and version, e.g. "RabbitMQ 3.12.1", or "unknown".
rabbitmq_version() {
    BROKER_URL="$BROKER_URL" timeout 30 python3 -c '
import os, pika
c = pika.BlockingConnection(pika.URLParameters(os.environ["BROKER_URL"]))
p = c._impl.server_properties
print(" ".join(p.get(k, b"?").decode() if isinstance(p.get(k), bytes) else str(p.get(k, "?")) for k in ("product", "version")))
c.close()' 2>/dev/null || echo unknown
}

# ---------------------------------------------------------------------------------------
# Servers.

# Starts "$@" in a new session (its own process group, leader = its pid) from $OUT, with
# stdout and stderr to files; sets STARTED_PID. The command must not fork before exec'ing.
start_group() {
    local stdout="$1" stderr="$2"
    shift 2
    (cd "$OUT" && exec setsid "$@" >"$stdout" 2>"$stderr") &
    STARTED_PID=$!
    GROUPS_STARTED+=("$STARTED_PID")
    await_own_group "$STARTED_PID"
}

# Runs a command in the background and waits for it, so that a signal to this script is
# handled at once (a foreground command would hold the trap back until it ends).
run_waited() {
    "$@" &
    LOAD_PID=$!
    local status=0
    wait "$LOAD_PID" || status=$?
    LOAD_PID=""
    return "$status"
}

# Stops the script with the error $2, after the last 30 lines of the server's log $1.
die_with_log() {
    say "server log (last 30 lines of $1):"
    tail -n 30 "$1" >&2 || true
    die "$2"
}

# Waits up to READY_TIMEOUT_S for GET $2 to answer 200 while the group leader $3 lives.
# $1 = label for messages (empty: none), $4 = the server's log, shown on failure.
wait_ready() {
    local label="$1" url="$2" leader="$3" log="$4" deadline=$((SECONDS + READY_TIMEOUT_S))
    until [[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$url" || true)" == 200 ]]; do
        kill -0 "$leader" 2>/dev/null || die_with_log "$log" "${label:-the server} exited before it was ready"
        ((SECONDS < deadline)) || die_with_log "$log" "${label:+$label: }$url did not answer 200 within ${READY_TIMEOUT_S}s"
        sleep 0.2
    done
}

# Starts `rfleet serve --hosts $HOSTS` on a loopback port the kernel picks, and waits for
# its "rfleet listening on" line and for GET /ready. From $OUT (start_group cd's there), so
# that no rfleet.toml in the caller's directory changes what is measured. Sets RFLEET_PID
# and RFLEET_BASE.
# $1 = label for messages (empty: none), $2 = its log (stderr; stdout goes to the same path
# with .stdout for .log), $3 = models dir, $4 = bus (embedded|amqp|amqp1); the rest are NAME=value
# settings for the server's environment only. Over amqp, the server gets queues and
# exchanges of this run's own, named $NAMESPACE.*.
start_rfleet() {
    local label="$1" log="$2" models="$3" bus="$4"
    shift 4
    local env_vars=("$@") flags=() stdout="${log%.log}.stdout" prefix="${label:+$label: }"
    if [[ "$bus" == amqp ]]; then
        broker_used=1
        env_vars+=(
            "RFLEET_BUS__QUEUE_PREFIX=$NAMESPACE.model."
            "RFLEET_BUS__CATALOG_EXCHANGE=$NAMESPACE.catalog"
            "RFLEET_BUS__DEAD_LETTER_EXCHANGE=$NAMESPACE.dead"
            "RFLEET_BUS__DEAD_LETTER_QUEUE=$NAMESPACE.dead"
        )
        flags=(--bus "$BROKER_URL")
    elif [[ "$bus" == amqp1 ]]; then
        # The AMQP 1.0 transport in its broker dialect, to RabbitMQ's rabbitmq_amqp1_0 plugin,
        # on queues of its own: the plugin declares them without the 0-9-1 transport's
        # arguments, and refuses (ending the session) to attach to one declared with them.
        broker_used=1
        env_vars+=(
            "RFLEET_BUS__QUEUE_PREFIX=$NAMESPACE.amqp1.model."
            "RFLEET_BUS__CATALOG_EXCHANGE=$NAMESPACE.amqp1.catalog"
            "RFLEET_BUS__SERVICEBUS__REPLY_QUEUE=$NAMESPACE.amqp1.reply"
            "RFLEET_BUS__KIND=servicebus" "RFLEET_BUS__SERVICEBUS__DIALECT=broker" "RFLEET_BUS__URL=$BROKER_URL"
        )
    fi
    say "${prefix}starting rfleet serve --hosts $HOSTS${flags[*]:+ ${flags[*]}}${env_vars[*]:+ ${env_vars[*]}}"
    start_group "$stdout" "$log" env ${env_vars[@]+"${env_vars[@]}"} "$RFLEET" serve --models "$models" \
        --listen 127.0.0.1:0 --hosts "$HOSTS" ${flags[@]+"${flags[@]}"}
    RFLEET_PID="$STARTED_PID" RFLEET_LABEL="$label" RFLEET_LOG="$log"
    local addr="" deadline=$((SECONDS + READY_TIMEOUT_S))
    while [[ -z "$addr" ]]; do
        kill -0 "$RFLEET_PID" 2>/dev/null || die_with_log "$log" "${prefix}rfleet exited before listening"
        ((SECONDS < deadline)) || die_with_log "$log" "${prefix}no 'rfleet listening on' line within ${READY_TIMEOUT_S}s"
        addr="$(sed -n 's|^rfleet listening on http://\([^/[:space:]]*\).*$|\1|p;T;q' "$stdout")"
        [[ -n "$addr" ]] || sleep 0.1
    done
    RFLEET_BASE="http://$addr"
    say "${prefix}rfleet listening on $RFLEET_BASE; waiting for GET /ready"
    wait_ready "$label" "$RFLEET_BASE/ready" "$RFLEET_PID" "$log"
}

# Graceful stop of the server start_rfleet started: SIGTERM to it alone, and it must drain
# and exit by itself with status 0 within SHUTDOWN_TIMEOUT_S, taking its R hosts with it.
stop_rfleet() {
    local prefix="${RFLEET_LABEL:+$RFLEET_LABEL: }" started=$SECONDS status=0 leftovers="" _
    say "${prefix}sending SIGTERM to rfleet"
    kill -TERM "$RFLEET_PID"
    while kill -0 "$RFLEET_PID" 2>/dev/null; do
        ((SECONDS - started < SHUTDOWN_TIMEOUT_S)) || die "${prefix}rfleet did not exit within ${SHUTDOWN_TIMEOUT_S}s of SIGTERM"
        sleep 0.1
    done
    wait "$RFLEET_PID" || status=$?
    # R hosts still exiting get a moment; after that, any survivor is a shutdown bug.
    for _ in $(seq 20); do
        leftovers="$(pgrep -g "$RFLEET_PID" || true)"
        [[ -n "$leftovers" ]] || break
        sleep 0.1
    done
    if [[ -n "$leftovers" ]]; then
        kill_group "$RFLEET_PID"
        die "${prefix}processes of rfleet's group outlived it: $(echo "$leftovers" | tr '\n' ' ')"
    fi
    ((status == 0)) || die_with_log "$RFLEET_LOG" "${prefix}rfleet exited with status $status after SIGTERM"
    say "${prefix}rfleet exited cleanly in $((SECONDS - started))s"
    RFLEET_PID=""
}
