# Shell functions the benchmark scripts share (sourced by run.sh, bus.sh and suite.sh).
# The caller defines say(), and for broker_cleanup sets NAMESPACE, BROKER_URL and
# broker_used=1 once it has used the broker.

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

broker_cleanup() {
    ((broker_used)) || return 0
    local queues=("$NAMESPACE.model.rf500" "$NAMESPACE.dead") exchanges=("$NAMESPACE.dead" "$NAMESPACE.catalog")
    if command -v rabbitmqctl >/dev/null; then
        mapfile -t -O "${#queues[@]}" queues < <(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$NAMESPACE." || true)
        mapfile -t -O "${#exchanges[@]}" exchanges < <(timeout 30 rabbitmqctl -q list_exchanges name 2>/dev/null | grep -F "$NAMESPACE." || true)
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
        if not name.startswith(prefix):
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

