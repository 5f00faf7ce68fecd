#!/usr/bin/env python3
"""Checks of the Helm chart deploy/helm/rfleet, offline, with the real tools.

Run with the deploy tools' venv: `.rfleet/tools/venv/bin/python tests/deploy/check_chart.py`
(helm at `.rfleet/tools/bin/helm`; both made by `deploy/setup.sh test`). Exits non-zero,
printing one `FAIL [check] ...` line per failure. `--self-test` instead breaks the chart
on purpose (a copy in a temporary folder), once per check, and fails unless each break is
caught by the check it targets. The rfleet binary (for `rfleet config`) is $RFLEET_BIN or
the workspace's target/release or target/debug build.

What is checked, for the default values and every file in deploy/helm/rfleet/values/:
- lint: `helm lint --strict` (values.schema.json included);
- k8s-schema: every rendered object against Kubernetes' own schemas, strictly (unknown
  fields refused), for each AKS version in AKS_VERSIONS; custom resources are checked below;
- keda: every ScaledObject and TriggerAuthentication against KEDA's CRD models
  (cloudcoil.models.keda, made strict: unknown fields refused), and the rabbitmq trigger's
  metadata keys against the scaler's documented parameters;
- monitoring: every ServiceMonitor, PodMonitor and PrometheusRule against the Prometheus
  Operator's CRD models (cloudcoil.models.prometheus_operator, made strict);
- checkov: no failed check, unless waived with its reason in checkov-waivers.yaml;
- package: `helm package` stores deploy/observability's rules and dashboard (which the
  chart reaches through symlinks in files/) as those files' contents;
- cross: the rendered objects agree with each other and with rfleet's code (queues, grace
  periods, CPU = hosts, probe routes, no R in the dispatcher, settings that exist, the
  monitors on the ports rfleet listens on, the PrometheusRule and the dashboard ConfigMap
  equal to deploy/observability's files, ...).
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".rfleet" / "tools"
HELM = TOOLS / "bin" / "helm"
CHECKOV = TOOLS / "venv" / "bin" / "checkov"
CHART = REPO / "deploy" / "helm" / "rfleet"
RELEASE = "rel"
NAMESPACE = "rfleet"

# Kubernetes minors AKS supports as of December 2026, each validated against
# kubernetes-validate 1.37.0's schemas (it ships 1.25 to 1.37). Source: AKS release notes
# https://github.com/Azure/AKS/releases/tag/2026-10-25 ("1.37 is now generally available and
# designated LTS; 1.36 the default; patches 1.37.1, 1.36.5, 1.35.9, 1.34.12"; 1.34's
# community support ends in November 2026, then platform support) and .../2026-07-17
# (1.33.13 still patched: LTS). The AKS calendar is
# https://learn.microsoft.com/azure/aks/supported-kubernetes-versions; update this with it.
AKS_VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")

# The rabbitmq scaler's trigger metadata (https://keda.sh/docs/2.16/scalers/rabbitmq-queue/);
# KEDA's CRD types this as a map of strings, so a misspelt key would pass the model.
RABBITMQ_TRIGGER_KEYS = {
    "host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
    "activationValue", "queueName", "vhostName", "useRegex", "excludeUnacknowledged",
    "pageSize", "operation", "unsafeSsl", "timeout",
}
RABBITMQ_AUTH_PARAMETERS = {"host", "username", "password", "ca", "cert", "key", "keyPassword", "tls"}
# The azure-servicebus scaler's trigger metadata and TriggerAuthentication parameter
# (https://keda.sh/docs/2.16/scalers/azure-service-bus/).
SERVICEBUS_TRIGGER_KEYS = {
    "queueName", "topicName", "subscriptionName", "namespace", "connectionFromEnv", "messageCount",
    "activationMessageCount", "cloud", "endpointSuffix", "useRegex", "operation",
}
SERVICEBUS_AUTH_PARAMETERS = {"connection"}
TRIGGER_KEYS = {"rabbitmq": RABBITMQ_TRIGGER_KEYS, "azure-servicebus": SERVICEBUS_TRIGGER_KEYS}
AUTH_PARAMETERS = {"rabbitmq": RABBITMQ_AUTH_PARAMETERS, "azure-servicebus": SERVICEBUS_AUTH_PARAMETERS}
# Service Bus entity names cannot hold `@`: version queues there are `<prefix><name>/<version>`
# (deploy/azure/README.md, "Queue names on Service Bus"; main.bicep makes them so).
VERSION_SEPARATOR = {"amqp": "@", "servicebus": "/"}



def rfleet_binary() -> Path | None:
    """The rfleet binary whose `rfleet config` resolves settings as the pods will: $RFLEET_BIN,
    else the workspace's own build."""
    import os

    candidates = [os.environ.get("RFLEET_BIN"), REPO / "target" / "release" / "rfleet", REPO / "target" / "debug" / "rfleet"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)

# RabbitmqCluster (rabbitmq.com/v1beta1) fields the chart may set, from the operator's
# api/v1beta1/rabbitmqcluster_types.go (RabbitmqClusterSpec, ...PersistenceSpec,
# ...ConfigurationSpec): kubernetes-validate has no schema for it, and the operator's CRD
# would refuse an unknown field at install time.
RABBITMQ_CLUSTER_SPEC = {
    "replicas", "image", "imagePullSecrets", "service", "persistence", "resources", "affinity",
    "tolerations", "rabbitmq", "tls", "override", "skipPostDeploySteps",
    "terminationGracePeriodSeconds", "secretBackend", "delayStartSeconds", "autoEnableAllFeatureFlags",
}
RABBITMQ_CLUSTER_PERSISTENCE = {"storageClassName", "storage"}
RABBITMQ_CLUSTER_CONFIG = {"additionalPlugins", "additionalConfig", "advancedConfig", "envConfig", "erlangInetConfig"}
# Keys of the operator's `<cluster>-default-user` Secret (internal/resource/default_user_secret.go).
RABBITMQ_DEFAULT_USER_KEYS = {"username", "password", "host", "port", "provider", "type", "default_user.conf"}

ROUTES = REPO / "dispatcher" / "src" / "routes.rs"
# deploy/observability's rules and dashboard, which the chart carries through symlinks.
OBSERVABILITY_RULES = REPO / "deploy" / "observability" / "rules.yaml"
OBSERVABILITY_DASHBOARD = REPO / "deploy" / "observability" / "grafana" / "rfleet.json"
# The worker's own listener (metrics.listen) answers these (docs/observability.md, Metrics).
WORKER_PROBE_PATHS = {"livenessProbe": "/live", "readinessProbe": "/ready"}


# What the checks could not check, printed with the result (not failures).
NOTES: set[str] = set()


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str) -> None:
        self.failures.append(f"[{check}] {message}")

    def of(self, check: str) -> list[str]:
        return [f for f in self.failures if f.startswith(f"[{check}]")]


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------
# What rfleet's code says (read from the source, so the checks follow it)


def probe_routes() -> set[str]:
    """GET routes of dispatcher/src/routes.rs tagged `probes` (open even with auth on)."""
    text = ROUTES.read_text()
    routes = re.findall(r'#\[utoipa::path\(get, path = "([^"]+)", tag = "probes"', text)
    if not routes:
        raise SystemExit(f"no probe routes found in {ROUTES}: has the utoipa annotation changed?")
    return set(routes)


# ---------------------------------------------------------------------------------------
# Rendering


def values_files(chart: Path) -> list[Path | None]:
    """None stands for the chart's default values."""
    return [None, *sorted((chart / "values").glob("*.yaml"))]


def label(values: Path | None) -> str:
    return "default values" if values is None else f"values/{values.name}"


def helm_args(values: Path | None) -> list:
    return [] if values is None else ["-f", values]


def render(chart: Path, values: Path | None, report: Report) -> list[dict] | None:
    done = run([HELM, "template", RELEASE, chart, "--namespace", NAMESPACE, *helm_args(values)])
    if done.returncode != 0:
        report.fail("render", f"{label(values)}: helm template failed: {done.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def check_lint(chart: Path, values: Path | None, report: Report) -> None:
    done = run([HELM, "lint", "--strict", chart, *helm_args(values)])
    if done.returncode != 0:
        lines = [l for l in (done.stdout + done.stderr).splitlines() if "[INFO]" not in l and l.strip()]
        report.fail("lint", f"{label(values)}: helm lint --strict: " + " | ".join(lines))
    # NOTES.txt is rendered only by install/upgrade: a client-side dry run renders it too.
    done = run([HELM, "install", RELEASE, chart, "--namespace", NAMESPACE, "--dry-run=client", *helm_args(values)])
    if done.returncode != 0 or "\nNOTES:\n" not in done.stdout:
        report.fail("lint", f"{label(values)}: helm install --dry-run=client (NOTES.txt): {done.stderr.strip() or 'no NOTES'}")


def check_package(chart: Path, report: Report) -> None:
    """The packaged chart (what `helm push` or a chart repository serves) holds the files the
    templates read from files/ as the contents of deploy/observability's: the symlinks are
    followed, and no stale copy drifts from them."""
    with tempfile.TemporaryDirectory(prefix="rfleet-package-") as tmp:
        done = run([HELM, "package", chart, "--destination", tmp])
        archives = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(archives) != 1:
            report.fail("package", f"helm package failed: {done.stderr.strip()}")
            return
        import tarfile

        with tarfile.open(archives[0]) as tar:
            for name, source in (("files/rules.yaml", OBSERVABILITY_RULES), ("files/rfleet.json", OBSERVABILITY_DASHBOARD)):
                member = next((m for m in tar.getmembers() if m.name == f"rfleet/{name}"), None)
                if member is None or not member.isfile():
                    report.fail("package", f"the packaged chart has no regular file {name}")
                elif tar.extractfile(member).read() != source.read_bytes():
                    report.fail("package", f"the packaged chart's {name} differs from {source.relative_to(REPO)}")


# ---------------------------------------------------------------------------------------
# Schemas


def check_kubernetes_schemas(name: str, docs: list[dict], report: Report) -> None:
    import kubernetes_validate

    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    for version in AKS_VERSIONS:
        if version not in shipped:
            report.fail("k8s-schema", f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for {version}")
            continue
        for doc in docs:
            what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} on Kubernetes {version}"
            try:
                kubernetes_validate.validate(doc, f"{version}.0", strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                if doc.get("apiVersion", "").split("/")[0] not in ("keda.sh", "rabbitmq.com", "monitoring.coreos.com"):
                    report.fail("k8s-schema", f"{what}: no schema for {doc.get('apiVersion')} (a removed API?)")
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                report.fail("k8s-schema", f"{what}: {where}: {e.message}")


_crd_models = None


def crd_models():
    """cloudcoil's models of KEDA's and the Prometheus Operator's CRDs, with every model (and
    ObjectMeta's) refusing unknown fields: pydantic's default is to ignore extras, which
    would let a misspelt field through."""
    global _crd_models
    if _crd_models is None:
        import pydantic
        import cloudcoil.apimachinery as meta
        import cloudcoil.models.keda.v1alpha1 as keda
        import cloudcoil.models.prometheus_operator.v1 as monitoring

        classes = [
            c for module in (keda, monitoring, meta) for c in vars(module).values()
            if inspect.isclass(c) and issubclass(c, pydantic.BaseModel) and c.__module__ == module.__name__
        ]
        for c in classes:
            c.model_config["extra"] = "forbid"
        for _ in range(2):  # nested models are compiled into their parents: twice settles them
            for c in classes:
                c.model_rebuild(force=True)
        _crd_models = {
            "keda.sh/v1alpha1": {"ScaledObject": keda.ScaledObject, "TriggerAuthentication": keda.TriggerAuthentication},
            "monitoring.coreos.com/v1": {"ServiceMonitor": monitoring.ServiceMonitor, "PodMonitor": monitoring.PodMonitor,
                                         "PrometheusRule": monitoring.PrometheusRule},
        }
    return _crd_models


def check_crd(check: str, group: str, name: str, docs: list[dict], report: Report) -> list[dict]:
    """Every object of the API group against its CRD model; returns those objects."""
    import pydantic

    mine = [d for d in docs if d.get("apiVersion", "").split("/")[0] == group]
    for doc in mine:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        model = crd_models().get(doc["apiVersion"], {}).get(doc["kind"])
        if model is None:
            report.fail(check, f"{what}: {doc['apiVersion']} {doc['kind']} is not a kind the chart should render")
            continue
        try:
            model.model_validate(doc)
        except pydantic.ValidationError as e:
            for err in e.errors():
                report.fail(check, f"{what}: {'.'.join(map(str, err['loc']))}: {err['msg']}")
    return mine


def check_keda(name: str, docs: list[dict], report: Report) -> None:
    # Which scaler types read each TriggerAuthentication: its parameters must be theirs.
    readers: dict[str, set[str]] = {}
    mine = check_crd("keda", "keda.sh", name, docs, report)
    for doc in mine:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"].get("triggers", []):
                kind = trigger.get("type")
                if kind not in TRIGGER_KEYS:
                    report.fail("keda", f"{what}: trigger type {kind!r} is not one the chart should render")
                    continue
                unknown = set(trigger.get("metadata", {})) - TRIGGER_KEYS[kind]
                if unknown:
                    report.fail("keda", f"{what}: {kind} trigger metadata has unknown keys {sorted(unknown)}")
                readers.setdefault(trigger.get("authenticationRef", {}).get("name"), set()).add(kind)
    for doc in mine:
        if doc["kind"] != "TriggerAuthentication":
            continue
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        for kind in readers.get(doc["metadata"]["name"], set()):
            for ref in doc["spec"].get("secretTargetRef", []):
                if ref.get("parameter") not in AUTH_PARAMETERS[kind]:
                    report.fail("keda", f"{what}: parameter {ref.get('parameter')!r} is not one the {kind} scaler reads")


def check_monitoring(name: str, docs: list[dict], report: Report) -> None:
    check_crd("monitoring", "monitoring.coreos.com", name, docs, report)


# ---------------------------------------------------------------------------------------
# checkov


def load_waivers(chart: Path, report: Report) -> list[dict]:
    path = chart / "checkov-waivers.yaml"
    waivers = (yaml.safe_load(path.read_text()) or {}).get("waivers", []) if path.exists() else []
    for w in waivers:
        if not (w.get("check") and w.get("resources") and str(w.get("reason", "")).strip()):
            report.fail("checkov", f"{path.name}: a waiver needs check, resources and its reason: {w}")
    return waivers


def check_checkov(chart: Path, renders: dict[str, list[dict]], report: Report) -> None:
    """checkov's Kubernetes checks on the rendered manifests. Offline (no Prisma Cloud API),
    checkov reports no severities, so "above LOW" cannot be told apart: every failed check
    without a severity counts (LOW and INFO pass where a severity is given), unless waived
    (check id + resource pattern) with a reason. A waiver that no
    longer matches a failure is reported too, so the list stays true."""
    waivers = load_waivers(chart, report)
    used = set()
    with tempfile.TemporaryDirectory(prefix="rfleet-checkov-") as tmp:
        for name, docs in renders.items():
            folder = Path(tmp) / re.sub(r"[^a-z0-9]+", "-", name.lower())
            folder.mkdir()
            (folder / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        done = run([CHECKOV, "-d", tmp, "--framework", "kubernetes", "--output", "json", "--quiet",
                    "--skip-download", "--compact"])
        if done.returncode not in (0, 1) or not done.stdout.strip():
            report.fail("checkov", f"checkov did not run: {done.stderr.strip()[-2000:]}")
            return
        results = json.loads(done.stdout)
        results = results if isinstance(results, list) else [results]
        for result in results:
            for failed in result.get("results", {}).get("failed_checks", []):
                resource = failed["resource"]  # Kind.namespace.name
                kind_name = f"{resource.split('.')[0]}.{resource.split('.', 2)[-1]}"
                if failed.get("severity") in ("LOW", "INFO"):
                    continue  # severities come only from Prisma Cloud's API; where given, LOW passes
                where = failed["file_path"].strip("/").split("/")[0]
                match = next((i for i, w in enumerate(waivers) if w.get("check") == failed["check_id"]
                              and any(fnmatch.fnmatch(kind_name, p) for p in w.get("resources", []))), None)
                if match is None:
                    report.fail("checkov", f"{where}: {failed['check_id']} {failed['check_name']} on {kind_name} "
                                           f"(fix it, or waive it with its reason in checkov-waivers.yaml)")
                else:
                    used.add(match)
    for i, w in enumerate(waivers):
        if i not in used:
            report.fail("checkov", f"waiver {w.get('check')} {w.get('resources')} matches no failure: remove it")


# ---------------------------------------------------------------------------------------
# Cross-checks on the rendered objects


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def mebibytes(quantity) -> float:
    q = str(quantity)
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    unit = next((u for u in units if q.endswith(u)), "")
    return float(q[: len(q) - len(unit)]) * units.get(unit, 1 / 2**20)


def cpu_cores(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def config_text(docs: list[dict], pod: dict, container: dict) -> str | None:
    """rfleet.toml as the container reads it (RFLEET_CONFIG -> the mounted ConfigMap key)."""
    path = env_of(container).get("RFLEET_CONFIG")
    if not path:
        return None
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == path), None)
    volume = next((v for v in pod.get("volumes", []) if mount and v["name"] == mount["name"]), None)
    if not volume or "configMap" not in volume:
        raise ValueError(f"RFLEET_CONFIG={path} is not a mounted ConfigMap key")
    name = volume["configMap"]["name"]
    cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name), None)
    key = mount.get("subPath") or Path(path).name
    if cm is None or key not in cm.get("data", {}):
        raise ValueError(f"RFLEET_CONFIG={path}: ConfigMap {name} with key {key} is not rendered")
    return cm["data"][key]


# Stand-ins for Secret values, shaped like what the chart's Secrets hold (a port must parse).
SECRET_STAND_INS = {"port": "5672", "host": "broker.example.svc", "url": "amqp://user:pass@broker.example.svc:5672/%2f"}


def container_env(container: dict) -> dict[str, str]:
    """The container's environment as the kubelet makes it: Secret values stood in for, and
    $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
        else:
            key = e.get("valueFrom", {}).get("secretKeyRef", {}).get("key", "")
            env[e["name"]] = SECRET_STAND_INS.get(key, f"stand-in-{key}")
    return env


def effective_settings(docs: list[dict], pod: dict, container: dict) -> dict:
    """`rfleet config` run with the container's rfleet.toml and environment: the settings the
    pod would start with, resolved by rfleet itself (unknown keys and bad values fail)."""
    text = config_text(docs, pod, container)
    env = container_env(container)
    with tempfile.TemporaryDirectory(prefix="rfleet-config-") as tmp:
        if text is not None:
            path = Path(tmp) / "rfleet.toml"
            path.write_text(text)
            env["RFLEET_CONFIG"] = str(path)
        done = run([rfleet_binary(), "config"], env=env, cwd=tmp)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        raise ValueError(f"rfleet config refuses its settings: {message}")
    return tomllib.loads(done.stdout)


_knows_servicebus = None


def rfleet_knows_servicebus() -> bool:
    """Whether this rfleet has the servicebus bus kind (issue 12): until it does, a Service
    Bus values file's pods cannot be resolved by `rfleet config`, and the checks that need
    its settings say so instead of failing on the missing transport."""
    global _knows_servicebus
    if _knows_servicebus is None:
        env = {"RFLEET_BUS__KIND": "servicebus", "RFLEET_BUS__SERVICEBUS__NAMESPACE": "probe-ns.servicebus.windows.net"}
        with tempfile.TemporaryDirectory(prefix="rfleet-config-") as tmp:
            _knows_servicebus = run([rfleet_binary(), "config"], env=env, cwd=tmp).returncode == 0
    return _knows_servicebus


def bus_of(docs: list[dict], pod: dict, container: dict) -> tuple[str, str]:
    """The container's bus kind (RFLEET_BUS__KIND) and queue prefix (its rfleet.toml's
    bus.queue_prefix), read without rfleet."""
    text = config_text(docs, pod, container)
    prefix = tomllib.loads(text).get("bus", {}).get("queue_prefix", "rfleet.model.") if text else "rfleet.model."
    return env_of(container).get("RFLEET_BUS__KIND") or "embedded", prefix


def check_cross(name: str, docs: list[dict], report: Report) -> None:
    def fail(message):
        report.fail("cross", f"{name}: {message}")

    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    component = lambda d: d["metadata"]["labels"].get("app.kubernetes.io/component")
    workers = {n: d for n, d in deployments.items() if component(d) == "worker"}
    dispatchers = [d for d in deployments.values() if component(d) == "dispatcher"]
    if len(dispatchers) != 1:
        fail(f"expected one dispatcher Deployment, found {len(dispatchers)}")
    probes = probe_routes()
    notes = NOTES

    # No secret in a ConfigMap (rfleet itself checks the keys: see effective_settings).
    for cm in by_kind.get("ConfigMap", {}).values():
        for key, text in cm.get("data", {}).items():
            if re.search(r"\w+://[^/@\s]+:[^/@\s]+@", text):
                fail(f"ConfigMap {cm['metadata']['name']} key {key} holds a URL with credentials")
            if key.endswith(".toml"):
                try:
                    config = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    fail(f"ConfigMap {cm['metadata']['name']} key {key} is not valid TOML: {e}")
                    continue
                for section, secret in (("bus", "url"), ("auth", "primary_key"), ("auth", "secondary_key")):
                    if secret in config.get(section, {}):
                        fail(f"{key}: {section}.{secret} is a secret, in a ConfigMap")

    # Every pod: hardened, and rfleet accepts its settings (file and environment).
    effective: dict[tuple[str, str], dict] = {}
    for d in deployments.values():
        pod = d["spec"]["template"]["spec"]
        what = f"Deployment {d['metadata']['name']}"
        if pod.get("automountServiceAccountToken") is not False:
            fail(f"{what}: automountServiceAccountToken is not false")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
            fail(f"{what}: pod must run as non-root uid 10001 (the images' user)")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            wanted = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "runAsNonRoot": True}
            for k, v in wanted.items():
                if sc.get(k) is not v:
                    fail(f"{what}/{c['name']}: securityContext.{k} is not {v}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{what}/{c['name']}: capabilities do not drop ALL")
            seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                fail(f"{what}/{c['name']}: seccompProfile is not RuntimeDefault")
            try:
                effective[(d["metadata"]["name"], c["name"])] = effective_settings(docs, pod, c)
            except ValueError as e:
                if bus_of(docs, pod, c)[0] == "servicebus" and not rfleet_knows_servicebus():
                    notes.add(f"{name}: this rfleet has no servicebus bus kind yet: the checks of rfleet's own settings "
                              f"are skipped for its pods")
                else:
                    fail(f"{what}/{c['name']}: {e}")

    # The dispatcher: no R, probes on real routes, grace above its drain.
    worker_images = {c["image"] for w in workers.values() for c in w["spec"]["template"]["spec"]["containers"]}
    for d in dispatchers:
        pod = d["spec"]["template"]["spec"]
        what = f"dispatcher {d['metadata']['name']}"
        for c in pod["containers"]:
            if c["image"] in worker_images or "worker" in c["image"].rsplit("/", 1)[-1]:
                fail(f"{what}: runs a worker image {c['image']} (the dispatcher has no R)")
            for var in env_of(c):
                if var.startswith(("RFLEET_WORKERS__", "RFLEET_MODELS__DIR", "R_")) or var in ("R_HOME", "R_LIBS"):
                    fail(f"{what}: has worker/R environment {var}")
            for m in c.get("volumeMounts", []):
                if m["mountPath"] == "/models" or m["mountPath"].startswith("/models/"):
                    fail(f"{what}: mounts {m['mountPath']} (models live with the workers)")
            settings = effective.get((d["metadata"]["name"], c["name"]))
            if settings is None:
                continue
            tls = bool(settings["tls"].get("cert_file"))
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            listen = settings["server"]["listen"]
            if not listen.startswith("0.0.0.0:"):
                fail(f"{what}: listens on {listen}, unreachable from the Service")
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(kind)
                if not probe or "httpGet" not in probe:
                    fail(f"{what}: no HTTP {kind}")
                    continue
                get = probe["httpGet"]
                if get["path"] not in probes:
                    fail(f"{what}: {kind} path {get['path']} is not a probe route of dispatcher/src/routes.rs {sorted(probes)}")
                port = ports.get(get["port"], get["port"])
                if not listen.endswith(f":{port}"):
                    fail(f"{what}: {kind} port {get['port']} is not the port rfleet listens on ({listen})")
                if (get.get("scheme", "HTTP") == "HTTPS") != tls:
                    fail(f"{what}: {kind} scheme {get.get('scheme', 'HTTP')} but dispatcher TLS is {'on' if tls else 'off'}")
            for kind, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
                if c.get(kind, {}).get("httpGet", {}).get("path") != path:
                    fail(f"{what}: {kind} should be {path}")
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            drain_ms = settings["server"]["drain_timeout_ms"]
            if pod.get("terminationGracePeriodSeconds", 30) * 1000 <= drain_ms + pause * 1000:
                fail(f"{what}: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} is not "
                     f"above the preStop pause ({pause}s) + server.drain_timeout_ms ({drain_ms})")
            if pause < 1:
                fail(f"{what}: no preStop pause (requests would reach a pod already draining)")
            check_traffic(what, settings, c, pod, by_kind, workers, fail)

    # Workers: CPU = hosts, grace above drain + notice + pause, R scratch, queues.
    consumed: dict[str, set[str]] = {}
    buses: set[str] = set()
    for d in dispatchers:
        c = d["spec"]["template"]["spec"]["containers"][0]
        if bus_of(docs, d["spec"]["template"]["spec"], c)[0] == "servicebus":
            check_servicebus_pod(f"dispatcher {d['metadata']['name']}", d, c, by_kind, fail)
    for wname, w in workers.items():
        pod = w["spec"]["template"]["spec"]
        what = f"worker {wname}"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", wname):
            fail(f"{what}: not a DNS label")
        model = w["metadata"].get("annotations", {}).get("rfleet.io/model")
        version = w["metadata"].get("annotations", {}).get("rfleet.io/model-version")
        if not (model and version):
            fail(f"{what}: does not say which model version it serves (annotations rfleet.io/model, rfleet.io/model-version)")
            continue
        if not wname.startswith(f"{RELEASE}-rfleet-worker-"):
            fail(f"{what}: not named <release>-worker-<name>-<version>")
        c = next(c for c in pod["containers"] if c["name"] == "worker")
        kind, prefix = bus_of(docs, pod, c)
        consumed[wname] = {f"{prefix}{model}{VERSION_SEPARATOR.get(kind, '@')}{version}", f"{prefix}{model}"}
        buses.add(kind)
        if kind == "servicebus":
            check_servicebus_pod(what, w, c, by_kind, fail)
        settings = effective.get((wname, c["name"]))
        if settings is None:
            continue
        hosts = settings["workers"]["n_hosts"]
        if hosts < 1:
            fail(f"{what}: workers.n_hosts is {hosts}: 0 means one per core of whatever node it lands on")
        else:
            cpu = c.get("resources", {}).get("requests", {}).get("cpu")
            if cpu is None or not math.isclose(cpu_cores(cpu), hosts):
                fail(f"{what}: CPU request {cpu} is not the R host count {hosts}")
        if settings["bus"]["kind"] != kind:
            fail(f"{what}: bus.kind is {settings['bus']['kind']}, not {kind} (RFLEET_BUS__KIND)")
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        rss = settings["workers"]["max_host_rss_mib"]
        if limit is None:
            fail(f"{what}: no memory limit")
        elif rss == 0 or rss * hosts >= mebibytes(limit):
            fail(f"{what}: workers.max_host_rss_mib {rss} x {hosts} hosts does not fit in the memory limit {limit}: "
                 f"a growing R host would get the whole pod OOM-killed instead of being recycled alone")
        url = next((e for e in c.get("env", []) if e["name"] == "RFLEET_BUS__URL"), None)
        if kind == "amqp" and (url is None or ("valueFrom" not in url and "$(" not in url.get("value", ""))):
            fail(f"{what}: RFLEET_BUS__URL is not read from a Secret")
        pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain_ms = settings["workers"]["drain_timeout_ms"]
        notice_ms = settings["workers"]["drain_notice_ms"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace * 1000 <= drain_ms + notice_ms + pause * 1000:
            fail(f"{what}: terminationGracePeriodSeconds {grace} is not above workers.drain_timeout_ms ({drain_ms}) "
                 f"+ drain_notice_ms ({notice_ms}) + preStop pause ({pause}s)")
        tmp = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"), None)
        if tmp is None or "emptyDir" not in next((v for v in pod.get("volumes", []) if v["name"] == tmp["name"]), {}):
            fail(f"{what}: no writable emptyDir at /tmp for R (the root filesystem is read-only)")
        models = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/models"]
        if models and not all(m.get("readOnly") for m in models):
            fail(f"{what}: /models is mounted writable")
        if settings["models"]["dir"] != "/models":
            fail(f"{what}: models.dir is {settings['models']['dir']}, not /models")
        spread = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
        if not {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= spread:
            fail(f"{what}: not spread over zones and nodes")
        check_worker_listener(what, settings, c, fail)
        if settings["bus"]["queue_prefix"] != prefix:
            fail(f"{what}: bus.queue_prefix is {settings['bus']['queue_prefix']}, not its rfleet.toml's {prefix}")
        if not any(p["spec"]["selector"]["matchLabels"].items() <= pod_labels(w).items()
                   for p in by_kind.get("PodDisruptionBudget", {}).values()):
            fail(f"{what}: no PodDisruptionBudget selects its pods")

    # KEDA: one ScaledObject per worker Deployment, on that Deployment's own queues.
    scaled = by_kind.get("ScaledObject", {})
    auths = by_kind.get("TriggerAuthentication", {})
    secrets = by_kind.get("Secret", {})
    targets = {}
    for sname, so in scaled.items():
        what = f"ScaledObject {sname}"
        ref = so["spec"]["scaleTargetRef"]
        target = ref.get("name")
        if ref.get("kind", "Deployment") != "Deployment" or target not in workers:
            fail(f"{what}: targets {ref.get('kind', 'Deployment')}/{target}, which is not a rendered worker Deployment")
            continue
        targets.setdefault(target, []).append(sname)
        triggers = so["spec"].get("triggers", [])
        queues = [t.get("metadata", {}).get("queueName") for t in triggers]
        w = workers[target]
        version_queue = max(consumed[target], key=len) if target in consumed else None
        if version_queue and version_queue not in queues:
            fail(f"{what}: no trigger on {version_queue}, the version queue {target}'s workers consume (triggers on {queues})")
        for q in queues:
            if q not in consumed.get(target, set()):
                fail(f"{what}: trigger queue {q} is not one {target}'s workers consume {sorted(consumed.get(target, []))}")
        if "servicebus" in buses:
            check_servicebus_triggers(what, triggers, w, auths, fail)
            triggers_checked = True
        else:
            triggers_checked = False
        for t in ([] if triggers_checked else triggers):
            meta = t.get("metadata", {})
            if t.get("type") != "rabbitmq" or meta.get("protocol") != "http" or meta.get("mode") != "QueueLength":
                fail(f"{what}: trigger {t.get('name')} is not rabbitmq/http/QueueLength (amqp counts only ready messages)")
            if meta.get("excludeUnacknowledged", "false") != "false":
                fail(f"{what}: trigger {t.get('name')} excludes unacknowledged (in-flight) messages")
            for key in ("value", "activationValue"):
                if not re.fullmatch(r"\d+(\.\d+)?", str(meta.get(key, ""))):
                    fail(f"{what}: trigger {t.get('name')} {key} {meta.get(key)!r} is not a number")
            if float(meta.get("value", "0") or 0) <= 0:
                fail(f"{what}: trigger {t.get('name')} value must be above 0")
            auth = auths.get(t.get("authenticationRef", {}).get("name"))
            if auth is None:
                fail(f"{what}: trigger {t.get('name')} authenticationRef names no rendered TriggerAuthentication")
                continue
            host = next((r for r in auth["spec"].get("secretTargetRef", []) if r["parameter"] == "host"), None)
            if host is None:
                fail(f"{what}: TriggerAuthentication {auth['metadata']['name']} gives no host")
            elif host["name"] in secrets:
                value = secrets[host["name"]].get("stringData", {}).get(host["key"])
                if value is None:
                    fail(f"{what}: Secret {host['name']} has no key {host['key']} (the management URL)")
                elif not re.match(r"https?://", value):
                    fail(f"{what}: the management URL in Secret {host['name']} is not http(s):// ({value.split('@')[-1]})")
        spec = so["spec"]
        if not (0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)):
            fail(f"{what}: minReplicaCount above maxReplicaCount")
        if spec.get("minReplicaCount", 0) == 0 and not any(
                {"activationValue", "activationMessageCount"} & set(t.get("metadata", {})) for t in triggers):
            fail(f"{what}: scales to zero without an activationValue")
        if w["spec"].get("replicas") is not None:
            fail(f"{what}: Deployment {target} sets replicas, which KEDA owns (every upgrade would reset it)")
    # Scale to zero: the dispatcher must keep knowing a version whose workers are all gone
    # (models.keep_idle_ms), or it refuses the requests that would wake them.
    if any(so["spec"].get("minReplicaCount", 0) == 0 for so in scaled.values()):
        for d in dispatchers:
            for c in d["spec"]["template"]["spec"]["containers"]:
                kept = effective.get((d["metadata"]["name"], c["name"]), {}).get("models", {}).get("keep_idle_ms")
                if not kept:
                    fail(f"dispatcher {d['metadata']['name']}: a ScaledObject scales to zero but models.keep_idle_ms is "
                         f"{kept!r}: the dispatcher would forget the model and refuse the requests that wake it")
    if scaled:
        for wname in workers:
            if len(targets.get(wname, [])) != 1:
                fail(f"worker {wname} has {len(targets.get(wname, []))} ScaledObjects, not one")

    check_monitors(by_kind, dispatchers, workers, effective, fail)

    # An operator-made broker: fields its CRD has, and Secret keys the operator writes.
    for cluster in by_kind.get("RabbitmqCluster", {}).values():
        what = f"RabbitmqCluster {cluster['metadata']['name']}"
        spec = cluster.get("spec", {})
        for keys, known, where in ((set(spec), RABBITMQ_CLUSTER_SPEC, "spec"),
                                   (set(spec.get("persistence", {})), RABBITMQ_CLUSTER_PERSISTENCE, "spec.persistence"),
                                   (set(spec.get("rabbitmq", {})), RABBITMQ_CLUSTER_CONFIG, "spec.rabbitmq")):
            if keys - known:
                fail(f"{what}: {where} has fields the operator does not know: {sorted(keys - known)}")
        default_user = f"{cluster['metadata']['name']}-default-user"
        refs = [e["valueFrom"]["secretKeyRef"] for d in deployments.values()
                for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})]
        refs += [r for a in auths.values() for r in a["spec"].get("secretTargetRef", [])]
        for ref in refs:
            if ref["name"].endswith("-default-user") and (ref["name"] != default_user or ref["key"] not in RABBITMQ_DEFAULT_USER_KEYS):
                fail(f"{what}: a reference to Secret {ref['name']} key {ref['key']}, not one the operator writes "
                     f"({default_user}: {sorted(RABBITMQ_DEFAULT_USER_KEYS)})")
        if not any(r["name"] == default_user for r in refs):
            fail(f"{what}: nothing reads its default user's Secret {default_user}")

    # NetworkPolicies: the dispatcher reachable only from namespaces (the ingress
    # controller's, Prometheus's) on its port, workers only on their metrics port (from
    # Prometheus's); egress only DNS and the broker (+ OIDC on 443); and every port a
    # monitor scrapes let in.
    policies = by_kind.get("NetworkPolicy", {})
    scraped = {"dispatcher": set(), "worker": set()}
    if by_kind.get("ServiceMonitor"):
        scraped["dispatcher"].add(8000)
    if by_kind.get("PodMonitor"):
        scraped["worker"] |= {metrics_port(w) for w in workers.values()} - {None}
    for comp, allowed_ports in (("dispatcher", {8000}), ("worker", {metrics_port(w) for w in workers.values()} - {None})):
        mine = [p for p in policies.values()
                if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == comp]
        if not mine:
            if policies or comp == "dispatcher":
                fail(f"no NetworkPolicy selects the {comp} pods")
            continue
        let_in = set()
        for p in mine:
            types = set(p["spec"].get("policyTypes", []))
            if types != {"Ingress", "Egress"}:
                fail(f"NetworkPolicy {p['metadata']['name']}: policyTypes {sorted(types)}, not Ingress and Egress")
            for rule in p["spec"].get("ingress", []):
                peers = rule.get("from", [])
                if not peers or any("namespaceSelector" not in peer or "ipBlock" in peer for peer in peers):
                    fail(f"NetworkPolicy {p['metadata']['name']}: ingress from {peers or 'anywhere'}, not only a namespace")
                ports = [pt.get("port") for pt in rule.get("ports", [])]
                if comp == "worker" and not workers:
                    pass  # no worker Deployment: no metrics port to compare with
                elif not ports or not set(ports) <= allowed_ports:
                    fail(f"NetworkPolicy {p['metadata']['name']}: ingress ports {rule.get('ports')} are not the {comp}'s "
                         f"{sorted(allowed_ports)}")
                let_in |= set(ports)
            for rule in p["spec"].get("egress", []):
                ports = {pt.get("port") for pt in rule.get("ports", [])}
                if not ports:
                    fail(f"NetworkPolicy {p['metadata']['name']}: egress to every port")
                # 443: the dispatcher's OIDC keys; on Service Bus, Entra ID's token endpoint
                # (workload identity) and AMQP over WebSockets, for every pod.
                elif not ports <= {53, 5672, 5671, 443 if comp == "dispatcher" or "servicebus" in buses else 53}:
                    fail(f"NetworkPolicy {p['metadata']['name']}: egress ports {sorted(ports)} beyond DNS and the broker")
        if scraped[comp] - let_in:
            fail(f"the {comp} NetworkPolicy lets nothing in on {sorted(scraped[comp] - let_in)}, which a monitor scrapes "
                 f"(networkPolicy.prometheusNamespace)")


def metrics_port(worker: dict) -> int | None:
    """The worker container's port named `metrics`."""
    c = next((c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"), {})
    return next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == "metrics"), None)


def check_worker_listener(what: str, settings: dict, container: dict, fail) -> None:
    """The worker's own listener (metrics.listen, as rfleet resolves it) is reachable from the
    pod's IP on the container port named `metrics`, and the probes ask it /live and /ready."""
    listen = settings.get("metrics", {}).get("listen")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if not listen:
        fail(f"{what}: no metrics.listen: the worker serves no /metrics, /live or /ready")
        return
    if not listen.startswith("0.0.0.0:"):
        fail(f"{what}: metrics.listen is {listen}, unreachable from Prometheus and the kubelet")
    if not settings.get("metrics", {}).get("enabled", True):
        fail(f"{what}: metrics.enabled is false, but the chart scrapes and probes the listener")
    if "metrics" not in ports:
        fail(f"{what}: no container port named metrics (what the PodMonitor and the probes name)")
    elif not listen.endswith(f":{ports['metrics']}"):
        fail(f"{what}: container port metrics is {ports['metrics']}, but rfleet listens on {listen}")
    for kind, path in WORKER_PROBE_PATHS.items():
        probe = container.get(kind)
        if probe is None:
            continue  # worker.probes.enabled: false
        get = probe.get("httpGet", {})
        if get.get("path") != path:
            fail(f"{what}: {kind} path {get.get('path')} is not the worker listener's {path}")
        port = ports.get(get.get("port"), get.get("port"))
        if not listen.endswith(f":{port}"):
            fail(f"{what}: {kind} port {get.get('port')} is not the port of metrics.listen ({listen})")
        if get.get("scheme", "HTTP") != "HTTP":
            fail(f"{what}: {kind} scheme {get.get('scheme')}: the worker's listener is plain HTTP")


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def check_monitors(by_kind: dict, dispatchers: list[dict], workers: dict, effective: dict, fail) -> None:
    """The ServiceMonitor scrapes the dispatcher Service's port on /metrics, the PodMonitor
    every worker pod's `metrics` port, the PrometheusRule holds deploy/observability's
    rules, and the dashboard ConfigMap its dashboard, labelled for Grafana's sidecar."""
    services = by_kind.get("Service", {})
    for sm in by_kind.get("ServiceMonitor", {}).values():
        what = f"ServiceMonitor {sm['metadata']['name']}"
        spec = sm["spec"]
        if spec.get("namespaceSelector", {}).get("matchNames") != [NAMESPACE]:
            fail(f"{what}: namespaceSelector {spec.get('namespaceSelector')} is not the release namespace {NAMESPACE}")
        chosen = [s for s in services.values() if selects(spec.get("selector", {}), s["metadata"].get("labels", {}))]
        names = [s["metadata"]["name"] for s in chosen]
        if len(chosen) != 1 or chosen[0]["spec"]["selector"].get("app.kubernetes.io/component") != "dispatcher":
            fail(f"{what}: selects Services {names}, not the dispatcher's alone")
            continue
        service = chosen[0]
        for ep in spec.get("endpoints", []):
            port = next((p for p in service["spec"]["ports"] if p.get("name") == ep.get("port")), None)
            if port is None:
                fail(f"{what}: endpoint port {ep.get('port')!r} is not a named port of Service {service['metadata']['name']}")
                continue
            if ep.get("path") != "/metrics":
                fail(f"{what}: path {ep.get('path')} is not /metrics")
            for d in dispatchers:
                c = d["spec"]["template"]["spec"]["containers"][0]
                settings = effective.get((d["metadata"]["name"], c["name"]))
                target = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == port["targetPort"]), port["targetPort"])
                if settings and not settings["server"]["listen"].endswith(f":{target}"):
                    fail(f"{what}: scrapes container port {target}, but the dispatcher listens on {settings['server']['listen']}")
                tls = bool(settings and settings["tls"].get("cert_file"))
                if (ep.get("scheme", "http") == "https") != tls:
                    fail(f"{what}: scheme {ep.get('scheme', 'http')} but dispatcher TLS is {'on' if tls else 'off'}")
    for pm in by_kind.get("PodMonitor", {}).values():
        what = f"PodMonitor {pm['metadata']['name']}"
        spec = pm["spec"]
        if spec.get("namespaceSelector", {}).get("matchNames") != [NAMESPACE]:
            fail(f"{what}: namespaceSelector {spec.get('namespaceSelector')} is not the release namespace {NAMESPACE}")
        for d in dispatchers:
            if selects(spec.get("selector", {}), pod_labels(d)):
                fail(f"{what}: selects the dispatcher's pods (they are the ServiceMonitor's)")
        for wname, w in workers.items():
            if not selects(spec.get("selector", {}), pod_labels(w)):
                fail(f"{what}: does not select worker {wname}'s pods")
                continue
            c = next(c for c in w["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
            named = {p.get("name") for p in c.get("ports", [])}
            for ep in spec.get("podMetricsEndpoints", []):
                if ep.get("port") not in named:
                    fail(f"{what}: endpoint port {ep.get('port')!r} is not a named port of worker {wname} ({sorted(named)})")
                if ep.get("path") != "/metrics":
                    fail(f"{what}: path {ep.get('path')} is not /metrics")
    if by_kind.get("PodMonitor") is not None and not workers:
        fail("a PodMonitor is rendered with no worker to scrape")
    expected_rules = yaml.safe_load(OBSERVABILITY_RULES.read_text())["groups"]
    for rule in by_kind.get("PrometheusRule", {}).values():
        if rule["spec"].get("groups") != expected_rules:
            fail(f"PrometheusRule {rule['metadata']['name']}: its groups are not those of {OBSERVABILITY_RULES.relative_to(REPO)}")
    expected_dashboard = json.loads(OBSERVABILITY_DASHBOARD.read_text())
    for cm in by_kind.get("ConfigMap", {}).values():
        dashboards = {k: v for k, v in cm.get("data", {}).items() if k.endswith(".json")}
        if not dashboards:
            continue
        what = f"ConfigMap {cm['metadata']['name']}"
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            fail(f"{what}: holds a dashboard but has no label grafana_dashboard: \"1\" (Grafana's sidecar would not load it)")
        for key, text in dashboards.items():
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as e:
                fail(f"{what}: {key} is not JSON: {e}")
                continue
            if dashboard != expected_dashboard:
                fail(f"{what}: {key} is not {OBSERVABILITY_DASHBOARD.relative_to(REPO)}")


def check_servicebus_pod(what: str, deployment: dict, container: dict, by_kind: dict, fail) -> None:
    """A pod on Service Bus: no RabbitMQ anywhere, and either a connection string from a
    Secret or Entra ID through workload identity (the pod label the webhook acts on, and a
    ServiceAccount with the client id)."""
    env = {e["name"]: e for e in container.get("env", [])}
    for var in ("RFLEET_BUS__URL", "RFLEET_BUS__CA_FILE", "BROKER_PASSWORD"):
        if var in env:
            fail(f"{what}: on Service Bus, but has RabbitMQ's {var}")
    if by_kind.get("RabbitmqCluster"):
        fail(f"{what}: on Service Bus, but a RabbitmqCluster is rendered")
    secret = env.get("RFLEET_BUS__SERVICEBUS__CONNECTION_STRING")
    namespace = env.get("RFLEET_BUS__SERVICEBUS__NAMESPACE")
    if secret is not None:
        if "valueFrom" not in secret:
            fail(f"{what}: RFLEET_BUS__SERVICEBUS__CONNECTION_STRING is not read from a Secret")
        return
    if namespace is None or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9]\.servicebus\.windows\.net", namespace.get("value", "")):
        fail(f"{what}: neither a connection string nor a namespace NS.servicebus.windows.net ({namespace})")
    if pod_labels(deployment).get("azure.workload.identity/use") != "true":
        fail(f"{what}: signs in by workload identity, but its pods lack the label azure.workload.identity/use: \"true\"")
    sa_name = deployment["spec"]["template"]["spec"].get("serviceAccountName")
    sa = by_kind.get("ServiceAccount", {}).get(sa_name)
    if sa is None or not sa["metadata"].get("annotations", {}).get("azure.workload.identity/client-id"):
        fail(f"{what}: ServiceAccount {sa_name} has no azure.workload.identity/client-id annotation")


def check_servicebus_triggers(what: str, triggers: list[dict], worker: dict, auths: dict, fail) -> None:
    """azure-servicebus triggers: the target per replica is the worker's hosts times the
    messages per host (as rabbitmq's `value`), in the namespace its pods use, authenticated
    by KEDA's own workload identity or the connection string Secret."""
    c = next(c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    env = {e["name"]: e for e in c.get("env", [])}
    hosts = int(env_of(c).get("RFLEET_WORKERS__N_HOSTS") or 0)
    namespace = (env.get("RFLEET_BUS__SERVICEBUS__NAMESPACE") or {}).get("value")
    for t in triggers:
        meta = t.get("metadata", {})
        name = t.get("name")
        if t.get("type") != "azure-servicebus":
            fail(f"{what}: trigger {name} is {t.get('type')}, but the workers are on Service Bus")
            continue
        for key in ("messageCount", "activationMessageCount"):
            if not re.fullmatch(r"\d+", str(meta.get(key, ""))):
                fail(f"{what}: trigger {name} {key} {meta.get(key)!r} is not a whole number")
        count = int(meta.get("messageCount", "0") or 0) if str(meta.get("messageCount", "")).isdigit() else 0
        if count <= 0 or (hosts and count % hosts):
            fail(f"{what}: trigger {name} messageCount {count} is not a positive multiple of the {hosts} R hosts")
        auth = auths.get(t.get("authenticationRef", {}).get("name"))
        if auth is None:
            fail(f"{what}: trigger {name} authenticationRef names no rendered TriggerAuthentication")
            continue
        identity = auth["spec"].get("podIdentity", {})
        refs = {r["parameter"]: r for r in auth["spec"].get("secretTargetRef", [])}
        if namespace is not None:
            if identity.get("provider") != "azure-workload":
                fail(f"{what}: TriggerAuthentication {auth['metadata']['name']} is not podIdentity azure-workload")
            if meta.get("namespace") != namespace.split(".")[0]:
                fail(f"{what}: trigger {name} namespace {meta.get('namespace')!r} is not the pods' {namespace}")
        elif "connection" not in refs:
            fail(f"{what}: TriggerAuthentication {auth['metadata']['name']} gives no connection (string)")


def check_traffic(what: str, settings: dict, container: dict, pod: dict, by_kind: dict, workers: dict, fail) -> None:
    """The dispatcher's traffic file (models.traffic_file, as rfleet resolves it) is a
    directory-mounted ConfigMap (a subPath mount would never see an update), its TOML holds
    only rfleet's keys, and every version it weighs or mirrors to has a worker Deployment."""
    path = settings["models"].get("traffic_file")
    if not path:
        fail(f"{what}: no models.traffic_file: traffic splits would need a restart")
        return
    mount = next((m for m in container.get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if mount is None or mount.get("subPath"):
        fail(f"{what}: models.traffic_file {path} is not in a directory mount (a subPath is never updated)")
        return
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    name = volume.get("configMap", {}).get("name")
    configmap = by_kind.get("ConfigMap", {}).get(name)
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    if configmap is None or key not in configmap.get("data", {}):
        fail(f"{what}: models.traffic_file {path} is not a key of a rendered ConfigMap (volume {mount['name']})")
        return
    try:
        traffic = tomllib.loads(configmap["data"][key])
    except tomllib.TOMLDecodeError as e:
        fail(f"{what}: the traffic file is not valid TOML: {e}")
        return
    served = {(w["metadata"].get("annotations", {}).get("rfleet.io/model"),
               w["metadata"].get("annotations", {}).get("rfleet.io/model-version")) for w in workers.values()}
    for model, split in traffic.items():
        if not isinstance(split, dict) or set(split) - {"weights", "mirror"}:
            fail(f"{what}: traffic [{model}] may hold only weights and mirror: {split}")
            continue
        versions = list(split.get("weights", {}))
        if "mirror" in split:
            versions.append(split["mirror"].get("version"))
        for version in versions:
            if (model, version) not in served:
                fail(f"{what}: traffic [{model}] names version {version!r}, which no worker Deployment serves")
        for version, weight in split.get("weights", {}).items():
            if not isinstance(weight, int) or weight < 0:
                fail(f"{what}: traffic [{model}] weight of {version!r} is {weight!r}, not a whole number >= 0")


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"].get("labels", {})


# ---------------------------------------------------------------------------------------


def check_chart(chart: Path, only: set[str] | None = None) -> Report:
    report = Report()
    wants = lambda check: only is None or check in only
    renders = {}
    for values in values_files(chart):
        if wants("lint"):
            check_lint(chart, values, report)
        docs = render(chart, values, report)
        if docs is None:
            continue
        renders[label(values)] = docs
        if wants("k8s-schema"):
            check_kubernetes_schemas(label(values), docs, report)
        if wants("keda"):
            check_keda(label(values), docs, report)
        if wants("monitoring"):
            check_monitoring(label(values), docs, report)
        if wants("cross"):
            check_cross(label(values), docs, report)
    for kind in ("ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"):
        if not any(d["kind"] == kind for docs in renders.values() for d in docs) and wants("cross"):
            report.fail("cross", f"no values file renders a {kind}")
    if wants("cross") and not any(d["kind"] == "ConfigMap" and any(k.endswith(".json") for k in d.get("data", {}))
                                  for docs in renders.values() for d in docs):
        report.fail("cross", "no values file renders the dashboard ConfigMap")
    if wants("package"):
        check_package(chart, report)
    if wants("checkov") and renders:
        check_checkov(chart, renders, report)
    return report


# Each break must be caught by the check it names: proof that the check can fail.
# (file under the chart, text to replace, replacement, check that must fail)
BREAKS = [
    ("values.yaml", "podDisruptionBudget:\n    enabled: true\n    maxUnavailable: 1\n  # Extra",
     "podDisruptionBudget:\n    enabled: true\n    maxUnavailable: one\n  # Extra", "lint"),
    ("templates/dispatcher.yaml", "      protocol: TCP\n      appProtocol:", "      protocol: TCP\n      portName: x\n      appProtocol:", "k8s-schema"),
    ("templates/keda.yaml", "  pollingInterval: {{ $keda.pollingInterval }}", "  pollingIntervall: {{ $keda.pollingInterval }}", "keda"),
    ("templates/keda.yaml", '"excludeUnacknowledged" "false"', '"excludeUnacked" "false"', "keda"),
    ("values.yaml", "  readOnlyRootFilesystem: true\n  runAsNonRoot: true\n  runAsUser: 10001\n  runAsGroup: 10001\n  capabilities",
     "  readOnlyRootFilesystem: false\n  runAsNonRoot: true\n  runAsUser: 10001\n  runAsGroup: 10001\n  capabilities", "checkov"),
    ("templates/keda.yaml", "    name: {{ $name }}\n  minReplicaCount", "    name: {{ $name }}-x\n  minReplicaCount", "cross"),
    ("templates/_helpers.tpl", '"@" .root.Values.serviceBus.enabled', '"-" .root.Values.serviceBus.enabled', "cross"),
    # Service Bus: the version separator main.bicep's queues use, KEDA's scaler keys, the
    # target per replica, workload identity on every pod, KEDA's own identity.
    ("values.yaml", '  versionSeparator: "/"', '  versionSeparator: "~"', "cross"),
    ("templates/keda.yaml", '"activationMessageCount" (toString', '"activationMessages" (toString', "keda"),
    ("templates/keda.yaml", 'dict "messageCount" $value', 'dict "messageCount" "3"', "cross"),
    ("values/servicebus.yaml", "worker:\n  podLabels:\n    azure.workload.identity/use: \"true\"", "worker:\n  podLabels: {}", "cross"),
    ("templates/keda.yaml", "    provider: azure-workload", "    provider: azure", "cross"),
    ("templates/_helpers.tpl", '(int .Values.worker.terminationGraceMarginSeconds) }}', '-30 }}', "cross"),
    ("templates/_helpers.tpl", '(int .Values.dispatcher.terminationGraceMarginSeconds) }}', '-30 }}', "cross"),
    ("templates/workers.yaml", "cpu: {{ $model.hosts | quote }}", 'cpu: "500m"', "cross"),
    ("values.yaml", "readiness: {path: /ready, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2}\n    startup:",
     "readiness: {path: /healthz, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2}\n    startup:", "cross"),
    ("templates/workers.yaml", "              value: {{ $model.hosts | quote }}", "              value: {{ $model.hosts | quote }}\n            - name: RFLEET_MODELS__STRICT\n              value: \"true\"\n            - name: RFLEET_WORKERS__NHOSTS\n              value: \"1\"", "cross"),
    ("templates/dispatcher.yaml", "          image: {{ include \"rfleet.image\" (dict \"root\" . \"image\" .Values.dispatcher.image) }}",
     "          image: {{ include \"rfleet.image\" (dict \"root\" . \"image\" .Values.worker.image) }}", "cross"),
    ("templates/_helpers.tpl", '"BROKER_PORT" "port"', '"BROKER_PORT" "amqp-port"', "cross"),
    ("templates/rabbitmqcluster.yaml", "  replicas: {{ .Values.rabbitmqCluster.replicas }}", "  replica: {{ .Values.rabbitmqCluster.replicas }}", "cross"),
    ("templates/workers.yaml", "value: {{ $rss | quote }}", "value: {{ mul $rss 4 | quote }}", "cross"),
    ("values/scale-to-zero.yaml", "keep_idle_ms: 604800000", "keep_idle_ms: 0", "cross"),
    ("templates/dispatcher.yaml", "              mountPath: /etc/rfleet/traffic\n", "              mountPath: /etc/rfleet/traffic/traffic.toml\n              subPath: traffic.toml\n", "cross"),
    ("values/rabbitmq.yaml", '"2": 10', '"3": 10', "cross"),
    ("templates/configmap.yaml", '{{- include "rfleet.toml" .Values.config | nindent 4 }}',
     '{{- include "rfleet.toml" .Values.config | nindent 4 }}\n    [auth]\n    primary_key = "p-0123456789abcdef"', "cross"),
    # Monitoring: the Prometheus Operator's CRDs, and monitors, probes and policies on the
    # ports rfleet listens on.
    ("values.yaml", "  metricsPort: 9464", '  metricsPort: "9464"', "lint"),
    ("files/rfleet.json", '"title": "rfleet",', '"title": "rfleet (a stale copy)",', "package"),
    ("templates/monitoring.yaml", "      scrapeTimeout: {{ $m.podMonitor.scrapeTimeout }}", "      scrapeTimout: {{ $m.podMonitor.scrapeTimeout }}", "monitoring"),
    ("templates/monitoring.yaml", "    - port: metrics\n      path: /metrics", "    - port: metric\n      path: /metrics", "cross"),
    ("templates/monitoring.yaml", "      path: /metrics\n      scheme:", "      path: /metric\n      scheme:", "cross"),
    ("templates/monitoring.yaml", '      scheme: {{ ternary "https" "http" .Values.tls.enabled }}', "      scheme: http", "cross"),
    ("templates/monitoring.yaml", '(dict "root" . "component" "worker") | nindent 6 }}', '(dict "root" . "component" "dispatcher") | nindent 6 }}', "cross"),
    ("templates/monitoring.yaml", "    {{- toYaml $rules.groups | nindent 4 }}", "    {{- toYaml (rest $rules.groups) | nindent 4 }}", "cross"),
    ("templates/monitoring.yaml", "    {{- $dashboard | nindent 4 }}", "    {{- $dashboard | trunc 2000 | nindent 4 }}", "cross"),
    ("values.yaml", '      grafana_dashboard: "1"', '      grafana_dashboards: "1"', "cross"),
    ("templates/workers.yaml", 'printf "0.0.0.0:%d" (int $.Values.worker.metricsPort)', 'printf "0.0.0.0:%d" (add 1 (int $.Values.worker.metricsPort))', "cross"),
    ("templates/workers.yaml", "              path: {{ $p.path }}\n              port: metrics", "              path: {{ $p.path }}\n              port: 8000", "cross"),
    ("values.yaml", "    readiness: {path: /ready, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2}\n\n# -- The models",
     "    readiness: {path: /healthz, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2}\n\n# -- The models", "cross"),
    ("templates/networkpolicies.yaml", "        - {protocol: TCP, port: {{ $.Values.worker.metricsPort }}}", "        - {protocol: TCP, port: 8000}", "cross"),
    ("values/monitoring.yaml", "  prometheusNamespace: monitoring\n", '  prometheusNamespace: ""\n', "cross"),
]


def self_test() -> list[str]:
    problems = []
    for file, old, new, check in BREAKS:
        with tempfile.TemporaryDirectory(prefix="rfleet-chart-break-") as tmp:
            copy = Path(tmp) / "rfleet"
            shutil.copytree(CHART, copy)
            path = copy / file
            text = path.read_text()
            if text.count(old) != 1:
                problems.append(f"self-test: break {file} {old[:40]!r} no longer applies (found {text.count(old)} times)")
                continue
            path.write_text(text.replace(old, new))
            report = check_chart(copy, only={check})
            caught = report.of(check) + report.of("render")
            if not caught:
                problems.append(f"self-test: breaking {file} ({old[:40]!r} -> {new[:40]!r}) was not caught by [{check}]")
            else:
                print(f"self-test: [{check}] caught {file}: {caught[0][:160]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true", help="instead, break a copy of the chart once per check and expect each break caught")
    args = parser.parse_args()
    for tool in (HELM, CHECKOV):
        if not tool.exists():
            print(f"FAIL [setup] {tool} is missing: run deploy/setup.sh test", file=sys.stderr)
            return 2
    if rfleet_binary() is None:
        print("FAIL [setup] no rfleet binary (target/release or target/debug, or $RFLEET_BIN): cargo build first", file=sys.stderr)
        return 2
    if args.self_test:
        failures = [f"[self-test] {p}" for p in self_test()]
        for f in failures:
            print(f"FAIL {f}")
        print(f"self-test: {len(BREAKS) - len(failures)} of {len(BREAKS)} breaks caught", file=sys.stderr if failures else sys.stdout)
        return 1 if failures else 0
    failures = list(check_chart(CHART).failures)
    for f in failures:
        print(f"FAIL {f}")
    checked = ", ".join(label(v) for v in values_files(CHART))
    if failures:
        print(f"{len(failures)} failure(s) in the chart checks ({checked})", file=sys.stderr)
        return 1
    for note in sorted(NOTES):
        print(f"NOTE {note}")
    print(f"chart checks passed: {checked}; Kubernetes {', '.join(AKS_VERSIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
