"""Offline checks of the Azure infrastructure in deploy/azure (issue 10).

No Bicep compiler runs here, so the template is parsed with pycep and the parts the Helm
chart depends on are asserted on the parse tree, with the parameter file's values put in:
the KEDA add-on, the OIDC issuer and workload identity, AcrPull for the kubelet identity on
the registry, a federated credential per chart service account, the Service Bus queues of
the parameter file's models (computed here from rfleet's RabbitMQ names and compared), Log
Analytics with workspace-based Application Insights, diagnostic settings, and the outputs
the chart reads. The parameter file's names must be the template's parameters. Then
checkov's Bicep framework runs, and each failed check must have a reasoned waiver in
deploy/azure/checkov-waivers.txt.

Checkov gives severities only with a Prisma Cloud API key; offline every check's severity is
unknown, so "no failed check above low" is applied as: no failed check at all unless waived.

Every assertion is shown to fail: `--mutations` (on by default) breaks a copy of the
template one way per assertion and requires the assertion's message among the failures.

Run: <repo>/.rfleet/tools/venv/bin/python tests/deploy/check_bicep.py [--no-mutations]
Exits 1 naming each failure.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
AZURE_DIR = REPO / "deploy" / "azure"
CHECKOV = REPO / ".rfleet" / "tools" / "venv" / "bin" / "checkov"

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"

# The outputs the chart and the docs read, each with the resource type and property it must
# come from (None: not a resource property).
OUTPUTS = {
    "resourceGroupName": None,
    "acrLoginServer": ("Microsoft.ContainerRegistry/registries", "properties.loginServer"),
    "aksClusterName": ("Microsoft.ContainerService/managedClusters", "name"),
    "oidcIssuerUrl": ("Microsoft.ContainerService/managedClusters", "properties.oidcIssuerProfile.issuerURL"),
    "workloadIdentityClientId": ("Microsoft.ManagedIdentity/userAssignedIdentities", "properties.clientId"),
    "kedaIdentityClientId": ("Microsoft.ManagedIdentity/userAssignedIdentities", "properties.clientId"),
    "tenantId": None,
    "serviceBusNamespaceFqdn": ("Microsoft.ServiceBus/namespaces", "properties.serviceBusEndpoint"),
    "logAnalyticsWorkspaceId": ("Microsoft.OperationalInsights/workspaces", "properties.customerId"),
    "appInsightsConnectionString": ("Microsoft.Insights/components", "properties.ConnectionString"),
}

# Service Bus entity names: letters, digits, '.', '-', '_' and '/', starting and ending with
# a letter or digit, at most 260 characters.
ENTITY_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")


def service_bus_queue(prefix: str, model: str, version: str | None) -> str:
    """The Service Bus entity name of a RabbitMQ request queue: '@' becomes '/'."""
    rabbitmq = f"{prefix}{model}@{version}" if version is not None else f"{prefix}{model}"
    return rabbitmq.replace("@", "/")


# ---------------------------------------------------------------------------------------
# A small evaluator of pycep's parse tree: enough of Bicep's expressions to put the
# parameter values into names, subjects and loops. What it cannot evaluate (uniqueString,
# runtime properties of resources) stays symbolic: a Ref to a resource's property or an
# Opaque function call.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A reference to a resource (path "") or to one of its properties."""

    symbol: str
    path: str = ""


@dataclass(frozen=True)
class Opaque:
    """A value only Azure knows (uniqueString, resourceGroup(), subscriptionResourceId)."""

    text: str


_PARSER: BicepParser | None = None


def bicep_parser() -> BicepParser:
    """One parser for every parse: building Lark's tables takes longer than a parse."""
    global _PARSER
    if _PARSER is None:
        _PARSER = BicepParser()
    return _PARSER


class Template:
    def __init__(self, files: list[Path], parameter_values: dict):
        self.parameters: dict = {}
        self.variables: dict = {}
        self.resources: dict = {}
        self.outputs: dict = {}
        parser = bicep_parser()
        for path in files:
            tree = parser.parse(file_path=path)
            for section in ("parameters", "variables", "resources", "outputs"):
                getattr(self, section).update(tree.get(section) or {})
        self.parameter_values = parameter_values
        self._values: dict = {}

    # Names in scope: parameters, variables, resources, then loop variables on top.
    def lookup(self, name: str, scope: dict):
        if name in scope:
            return scope[name]
        if name in self._values:
            return self._values[name]
        if name in self.parameters:
            if name in self.parameter_values:
                value = self.parameter_values[name]
            else:
                value = self.eval(self.parameters[name].get("default"), {})
        elif name in self.variables:
            value = self.eval(self.variables[name]["value"], {})
        elif name in self.resources:
            value = Ref(name)
        else:
            raise KeyError(name)
        self._values[name] = value
        return value

    def known(self, name: str, scope: dict) -> bool:
        return name in scope or name in self.parameters or name in self.variables or name in self.resources

    def dotted(self, text: str, scope: dict):
        root, *rest = text.split(".")
        value = self.lookup(root, scope)
        return self.access(value, rest)

    @staticmethod
    def access(value, path: list[str]):
        for key in path:
            if isinstance(value, Ref):
                value = Ref(value.symbol, f"{value.path}.{key}".lstrip("."))
            elif isinstance(value, dict):
                value = value[key]
            else:
                return Opaque(f"{value}.{key}")
        return value

    def chain(self, expr) -> list[str] | None:
        """a.b.c as ['a', 'b', 'c'] when expr is a plain property access chain."""
        if isinstance(expr, str) and re.fullmatch(r"\w+", expr):
            return [expr]
        if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
            operands = expr["operator"]["operands"]
            left, right = self.chain(operands["operand_1"]), self.chain(operands["operand_2"])
            if left is not None and right is not None:
                return left + right
        return None

    def eval(self, expr, scope: dict):
        if expr is None or isinstance(expr, (bool, int, float)):
            return expr
        if isinstance(expr, str):
            # pycep writes an identifier and a string literal alike: an identifier is a
            # name in scope, anything else is a literal.
            if "${" in expr:
                return re.sub(r"\$\{([^}]*)\}", lambda m: str(self.dotted(m.group(1).strip(), scope)), expr)
            if self.known(expr, scope):
                return self.lookup(expr, scope)
            return expr
        if isinstance(expr, list):
            return [self.eval(item, scope) for item in expr]
        if isinstance(expr, dict):
            if "loop_type" in expr:
                return self.eval_loop(expr, scope)
            if "operator" in expr:
                return self.eval_operator(expr["operator"], scope)
            if "function" in expr:
                return self.eval_function(expr["function"], scope)
            return {key: self.eval(value, scope) for key, value in expr.items()}
        return Opaque(repr(expr))

    def eval_loop(self, loop: dict, scope: dict) -> list:
        if loop["loop_type"]["type"] != "array":
            raise ValueError(f"unsupported loop {loop['loop_type']}")
        detail = loop["loop_type"]["detail"]
        items = self.dotted(detail["array_name"], scope)
        if not isinstance(items, list):
            raise ValueError(f"loop over {detail['array_name']}, which is not a known array")
        out = []
        for item in items:
            inner = {**scope, detail["item_name"]: item}
            if loop.get("condition") is not None and not self.eval(loop["condition"], inner):
                continue
            out.append(self.eval(loop["config"], inner))
        return out

    def eval_operator(self, op: dict, scope: dict):
        kind, operands = op["type"], op["operands"]
        if kind == "property_accessor":
            chain = self.chain({"operator": op})
            if chain is None:
                return Opaque(kind)
            return self.access(self.lookup(chain[0], scope), chain[1:])
        if kind == "not":
            return not self.eval(operands["bool_value"], scope)
        if kind == "equals":
            return self.eval(operands["operand_1"], scope) == self.eval(operands["operand_2"], scope)
        if kind == "not_equals":
            return self.eval(operands["operand_1"], scope) != self.eval(operands["operand_2"], scope)
        if kind == "conditional":
            chosen = "true_value" if self.eval(operands["condition"], scope) else "false_value"
            return self.eval(operands[chosen], scope)
        return Opaque(kind)

    def eval_function(self, fn: dict, scope: dict):
        kind, args = fn["type"], fn.get("parameters") or {}
        if kind == "replace":
            text = self.eval(args["original_string"], scope)
            if not isinstance(text, str):
                return Opaque(f"replace({text})")
            return text.replace(self.eval(args["old_string"], scope), self.eval(args["new_string"], scope))
        if kind in ("union", "concat"):
            values = [self.eval(value, scope) for value in args.values()]
            if not all(isinstance(v, list) for v in values):
                return Opaque(kind)
            merged = [item for value in values for item in value]
            if kind == "concat":
                return merged
            # ARM's union keeps the first of equal values, across and within its arguments.
            unique: list = []
            for item in merged:
                if item not in unique:
                    unique.append(item)
            return unique
        if kind == "subscription_resource_id":
            name = self.eval(args["resource_name_1"], scope)
            return Opaque(f"subscriptionResourceId({args['resource_type']}, {name})")
        if kind == "contains":
            container, item = (self.eval(value, scope) for value in args.values())
            if isinstance(container, (Ref, Opaque)) or isinstance(item, (Ref, Opaque)):
                return Opaque(kind)
            return item in container
        if kind == "empty":
            value = self.eval(next(iter(args.values())), scope)
            return Opaque("empty") if isinstance(value, (Ref, Opaque)) else not value
        return Opaque(kind)

    # The resources of one type, each evaluated (a loop gives one config per item).
    def resources_of(self, resource_type: str) -> list[tuple[str, dict]]:
        found = []
        for symbol, resource in self.resources.items():
            if resource.get("type", "").lower() != resource_type.lower():
                continue
            config = resource["config"]
            if isinstance(config, dict) and "deploy_condition" in config:
                config = config["deploy_condition"].get("config", config)
            evaluated = self.eval(config, {})
            for item in evaluated if isinstance(evaluated, list) else [evaluated]:
                found.append((symbol, item))
        return found

    def type_of(self, ref) -> str | None:
        if isinstance(ref, Ref) and ref.symbol in self.resources:
            return self.resources[ref.symbol]["type"]
        return None


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------


def get(obj, path: str):
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def load_parameter_file(path: Path) -> dict:
    document = json.loads(path.read_text())
    return {name: entry["value"] for name, entry in document.get("parameters", {}).items() if "value" in entry}


def check_template(azure_dir: Path) -> list[str]:
    failures: list[str] = []

    def check(ok, message: str) -> None:
        if not ok:
            failures.append(message)

    files = sorted(azure_dir.rglob("*.bicep"))
    if not (azure_dir / "main.bicep").is_file():
        return [f"no main.bicep in {azure_dir}"]
    parameter_file = azure_dir / "main.parameters.json"
    try:
        values = load_parameter_file(parameter_file)
    except (OSError, ValueError, KeyError) as e:
        return [f"{parameter_file.name} cannot be read as an ARM parameter file: {e}"]
    try:
        t = Template(files, values)
    except Exception as e:  # pycep raises lark's errors
        return [f"pycep cannot parse the Bicep: {type(e).__name__}: {str(e)[:500]}"]

    # The parameter file names the template's parameters, and every required one.
    for name in sorted(set(values) - set(t.parameters)):
        check(False, f"{parameter_file.name} sets '{name}', which main.bicep has no parameter for")
    for name, parameter in sorted(t.parameters.items()):
        if parameter.get("default") is None and name not in values:
            check(False, f"{parameter_file.name} leaves out '{name}', a parameter main.bicep has no default for")

    # AKS: KEDA add-on, OIDC issuer, workload identity; Entra ID sign-in with Azure RBAC.
    clusters = t.resources_of("Microsoft.ContainerService/managedClusters")
    check(len(clusters) == 1, f"expected one AKS cluster (managedClusters), found {len(clusters)}")
    aks_symbol, aks = clusters[0] if clusters else ("", {})
    check(get(aks, "properties.workloadAutoScalerProfile.keda.enabled") is True,
          "AKS: the KEDA add-on is off (properties.workloadAutoScalerProfile.keda.enabled is not true)")
    check(get(aks, "properties.oidcIssuerProfile.enabled") is True,
          "AKS: the OIDC issuer is off (properties.oidcIssuerProfile.enabled is not true)")
    check(get(aks, "properties.securityProfile.workloadIdentity.enabled") is True,
          "AKS: workload identity is off (properties.securityProfile.workloadIdentity.enabled is not true)")
    check(get(aks, "properties.aadProfile.enableAzureRBAC") is True and get(aks, "properties.aadProfile.managed") is True,
          "AKS: Entra ID integration with Azure RBAC is off (properties.aadProfile.managed/enableAzureRBAC)")
    check(get(aks, "properties.disableLocalAccounts") is True, "AKS: local accounts are on (properties.disableLocalAccounts)")
    issuer = Ref(aks_symbol, "properties.oidcIssuerProfile.issuerURL")
    kubelet = Ref(aks_symbol, "properties.identityProfile.kubeletidentity.objectId")

    # The registry, and AcrPull on it for the kubelet identity.
    registries = t.resources_of("Microsoft.ContainerRegistry/registries")
    check(len(registries) == 1, f"expected one container registry, found {len(registries)}")
    acr_symbol, acr = registries[0] if registries else ("", {})
    check(get(acr, "properties.adminUserEnabled") is False, "ACR: the admin user is not disabled (properties.adminUserEnabled)")
    assignments = t.resources_of("Microsoft.Authorization/roleAssignments")

    def assigned(role: str, principal, scope_symbol: str) -> bool:
        return any(
            role in str(get(a, "properties.roleDefinitionId"))
            and get(a, "properties.principalId") == principal
            and a.get("scope") == Ref(scope_symbol)
            for _, a in assignments
        )

    check(assigned(ACR_PULL, kubelet, acr_symbol),
          f"no AcrPull ({ACR_PULL}) for the kubelet identity ({aks_symbol}.properties.identityProfile.kubeletidentity.objectId) scoped to the registry ({acr_symbol})")

    # The workload identity: a federated credential per chart service account, trusting the
    # cluster's issuer; its client id is the output the chart annotates service accounts with.
    client_id_output = t.outputs.get("workloadIdentityClientId")
    client_id = t.eval(client_id_output["value"], {}) if client_id_output else None
    identity_symbol = client_id.symbol if isinstance(client_id, Ref) else ""
    check(t.type_of(Ref(identity_symbol)) == "Microsoft.ManagedIdentity/userAssignedIdentities",
          "output workloadIdentityClientId is not the clientId of a user-assigned identity")
    namespace = t.lookup("kubernetesNamespace", {}) if "kubernetesNamespace" in t.parameters else None
    check(namespace is not None, "main.bicep has no kubernetesNamespace parameter (the chart's namespace)")
    credentials = [c for s, c in t.resources_of("Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")
                   if c.get("parent") == Ref(identity_symbol)]
    for parameter in ("workerServiceAccount", "dispatcherServiceAccount"):
        if parameter not in t.parameters:
            check(False, f"main.bicep has no {parameter} parameter (a chart service account)")
            continue
        subject = f"system:serviceaccount:{namespace}:{t.lookup(parameter, {})}"
        matching = [c for c in credentials if get(c, "properties.subject") == subject]
        check(matching, f"no federated credential on the workload identity ({identity_symbol}) with subject {subject}")
        for c in matching:
            check(get(c, "properties.issuer") == issuer,
                  f"the federated credential for {subject} does not trust the AKS OIDC issuer ({aks_symbol}.properties.oidcIssuerProfile.issuerURL)")
            check(get(c, "properties.audiences") == [TOKEN_EXCHANGE_AUDIENCE],
                  f"the federated credential for {subject} does not have the audience {TOKEN_EXCHANGE_AUDIENCE}")

    # KEDA's operator (the add-on's kube-system/keda-operator) signs in as its own identity.
    keda_output = t.outputs.get("kedaIdentityClientId")
    keda_client_id = t.eval(keda_output["value"], {}) if keda_output else None
    keda_symbol = keda_client_id.symbol if isinstance(keda_client_id, Ref) else ""
    keda_subject = "system:serviceaccount:kube-system:keda-operator"
    check(any(c.get("parent") == Ref(keda_symbol) and get(c, "properties.subject") == keda_subject
              and get(c, "properties.issuer") == issuer
              for _, c in t.resources_of("Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")),
          f"no federated credential for {keda_subject} on the KEDA identity ({keda_symbol or 'output kedaIdentityClientId'}) trusting the AKS OIDC issuer")
    check(keda_symbol != identity_symbol, "KEDA's identity is the workload identity: the pods would get KEDA's Manage right on Service Bus")

    # Service Bus: Entra ID only (by default), TLS 1.2, the roles of the workload identity.
    namespaces = t.resources_of("Microsoft.ServiceBus/namespaces")
    check(len(namespaces) == 1, f"expected one Service Bus namespace, found {len(namespaces)}")
    bus_symbol, bus = namespaces[0] if namespaces else ("", {})
    check(get(bus, "properties.disableLocalAuth") is True,
          "Service Bus: local (SAS) auth is on with the parameter file's values (properties.disableLocalAuth)")
    check(get(bus, "properties.minimumTlsVersion") == "1.2", "Service Bus: minimumTlsVersion is not 1.2")
    principal = Ref(identity_symbol, "properties.principalId")
    check(assigned(SERVICE_BUS_DATA_SENDER, principal, bus_symbol),
          f"no Azure Service Bus Data Sender for the workload identity ({identity_symbol}) on the namespace ({bus_symbol})")
    check(assigned(SERVICE_BUS_DATA_RECEIVER, principal, bus_symbol),
          f"no Azure Service Bus Data Receiver for the workload identity ({identity_symbol}) on the namespace ({bus_symbol})")

    # The queues: one per model version and one per model name, named from rfleet's
    # RabbitMQ names ('@' -> '/'); in ARM, '/' is written '~'.
    models = values.get("models")
    check(isinstance(models, list) and models, f"{parameter_file.name} lists no models (parameter 'models')")
    models = models if isinstance(models, list) else []
    prefix = t.lookup("queuePrefix", {}) if "queuePrefix" in t.parameters else None
    check(prefix == "rfleet.model.", f"the queue prefix is {prefix!r}, not rfleet's default 'rfleet.model.'")
    expected: set[str] = set()
    for m in models:
        for part in ("name", "version"):
            text = str(m.get(part, ""))
            check(re.fullmatch(r"[A-Za-z0-9._-]+", text),
                  f"model {m}: its {part} holds characters a Service Bus queue name cannot (only letters, digits, '.', '-', '_')")
        expected.add(service_bus_queue(prefix or "", m.get("name"), m.get("version")))
        expected.add(service_bus_queue(prefix or "", m.get("name"), None))
    for entity in sorted(expected):
        check(ENTITY_NAME.fullmatch(entity), f"queue {entity!r} is not a valid Service Bus entity name")
    # Besides the request queues: the session-enabled reply queue and the catalog queue.
    replies = t.lookup("replyQueue", {}) if "replyQueue" in t.parameters else None
    catalog = t.lookup("catalogQueue", {}) if "catalogQueue" in t.parameters else None
    check(replies == "rfleet.replies", f"the reply queue is {replies!r}, not rfleet's 'rfleet.replies'")
    check(catalog == "rfleet.catalog", f"the catalog queue is {catalog!r}, not rfleet's 'rfleet.catalog'")
    queues = [(s, q) for s, q in t.resources_of("Microsoft.ServiceBus/namespaces/queues")]
    for _, q in queues:
        if q.get("name") == replies:
            check(get(q, "properties.requiresSession") is True, f"reply queue {replies}: sessions are not required")
        elif q.get("name") == catalog:
            check(get(q, "properties.requiresSession") is not True, f"catalog queue {catalog}: requires sessions")
    expected |= {replies, catalog}
    arm_names = [q.get("name") for _, q in queues]
    check(len(arm_names) == len(set(map(str, arm_names))), f"a Service Bus queue is declared twice: {sorted(map(str, arm_names))}")
    created = {name.replace("~", "/") for name in arm_names if isinstance(name, str)}
    check(all("/" not in str(name) for name in arm_names), "a queue's ARM name holds '/', which ARM reserves (write it '~')")
    check(created == expected,
          f"Service Bus queues do not follow the models: missing {sorted(expected - created)}, unexpected {sorted(created - expected)}")
    for _, q in queues:
        name = q.get("name")
        check(q.get("parent") == Ref(bus_symbol), f"queue {name} is not a child of the namespace {bus_symbol}")
        if name in (replies, catalog):
            continue  # a stale reply or announcement is dropped, not dead-lettered
        check(get(q, "properties.deadLetteringOnMessageExpiration") is True, f"queue {name}: expired requests are not dead-lettered")
        check(get(q, "properties.requiresDuplicateDetection") is False, f"queue {name}: duplicate detection is not off")
        check(isinstance(get(q, "properties.lockDuration"), str), f"queue {name}: no lockDuration")
        check(isinstance(get(q, "properties.maxDeliveryCount"), int), f"queue {name}: no maxDeliveryCount")

    # Log Analytics, workspace-based Application Insights, diagnostic settings into it.
    workspaces = t.resources_of("Microsoft.OperationalInsights/workspaces")
    check(len(workspaces) == 1, f"expected one Log Analytics workspace, found {len(workspaces)}")
    workspace_id = Ref(workspaces[0][0], "id") if workspaces else None
    components = t.resources_of("Microsoft.Insights/components")
    check(components and all(get(c, "properties.WorkspaceResourceId") == workspace_id for _, c in components),
          "Application Insights is missing or not workspace-based (properties.WorkspaceResourceId is not the Log Analytics workspace's id)")
    diagnostics = t.resources_of("Microsoft.Insights/diagnosticSettings")
    for symbol in (aks_symbol, acr_symbol, bus_symbol):
        check(any(d.get("scope") == Ref(symbol) and get(d, "properties.workspaceId") == workspace_id for _, d in diagnostics),
              f"no diagnostic setting sends {symbol}'s logs to the Log Analytics workspace")

    # The outputs, each from the resource it names.
    for name, source in OUTPUTS.items():
        if name not in t.outputs:
            check(False, f"output {name} is missing")
            continue
        if source is None:
            continue
        resource_type, path = source
        refs = refs_in(t, t.outputs[name]["value"])
        check(any(t.type_of(r) == resource_type and r.path == path for r in refs),
              f"output {name} does not read {path} of the {resource_type}")
    return failures


def refs_in(t: Template, expr) -> list[Ref]:
    """Every resource reference inside an expression (an output's value)."""
    found: list[Ref] = []
    chain = t.chain(expr)
    if chain is not None and chain[0] in t.resources:
        return [Ref(chain[0], ".".join(chain[1:]))]
    if isinstance(expr, dict):
        for value in expr.values():
            found += refs_in(t, value)
    elif isinstance(expr, list):
        for value in expr:
            found += refs_in(t, value)
    return found


def read_waivers(path: Path) -> tuple[dict[tuple[str, str], str], list[str]]:
    waivers, failures = {}, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(CKV2?_[A-Z]+_\d+)\s+(\S+):\s*(.*)", line)
        if not match:
            failures.append(f"{path.name}:{number}: not '<check id> <resource>: <reason>'")
        elif len(match.group(3)) < 20:
            failures.append(f"{path.name}:{number}: the waiver of {match.group(1)} gives no reason")
        else:
            waivers[(match.group(1), match.group(2))] = match.group(3)
    return waivers, failures


def check_checkov(azure_dir: Path) -> list[str]:
    if not CHECKOV.is_file():
        return [f"checkov is not installed at {CHECKOV} (deploy/setup.sh test)"]
    run = subprocess.run(
        [str(CHECKOV), "--framework", "bicep", "-d", str(azure_dir), "-o", "json", "--skip-download", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        return [f"checkov did not write a JSON report (exit {run.returncode}): {run.stderr[-2000:]}"]
    reports = report if isinstance(report, list) else [report]
    failed, passed = [], 0
    for r in reports:
        results = r.get("results", {})
        failed += results.get("failed_checks", [])
        passed += len(results.get("passed_checks", []))
        for error in results.get("parsing_errors", []):
            failed.append({"check_id": "PARSE", "resource": str(error), "check_name": "checkov could not parse the file"})
    if passed == 0 and not failed:
        return ["checkov ran no check on the Bicep (did it parse main.bicep?)"]
    waivers, failures = read_waivers(azure_dir / "checkov-waivers.txt")
    seen = set()
    for f in failed:
        key = (f["check_id"], f["resource"])
        seen.add(key)
        if key not in waivers:
            # Offline, checkov knows no severity: every failure counts as above low.
            failures.append(f"checkov {f['check_id']} failed on {f['resource']} ({f['check_name']}, "
                            f"severity {f.get('severity') or 'unknown'}) with no waiver in checkov-waivers.txt")
    for key in sorted(set(waivers) - seen):
        failures.append(f"checkov-waivers.txt waives {key[0]} on {key[1]}, which no longer fails: remove the waiver")
    return failures


# ---------------------------------------------------------------------------------------
# Mutations: each breaks a copy of deploy/azure one way and names the failure it must cause
# ---------------------------------------------------------------------------------------

MUTATIONS = [
    ("KEDA add-on off", "main.bicep", "keda: {\n        enabled: true", "keda: {\n        enabled: false", "the KEDA add-on is off"),
    ("OIDC issuer off", "main.bicep", "oidcIssuerProfile: {\n      enabled: true", "oidcIssuerProfile: {\n      enabled: false", "the OIDC issuer is off"),
    ("workload identity off", "main.bicep", "workloadIdentity: {\n        enabled: true", "workloadIdentity: {\n        enabled: false", "workload identity is off"),
    ("local accounts on", "main.bicep", "disableLocalAccounts: true", "disableLocalAccounts: false", "local accounts are on"),
    ("AcrPull for the control plane identity", "main.bicep", "principalId: aks.properties.identityProfile.kubeletidentity.objectId",
     "principalId: aks.identity.principalId", "no AcrPull"),
    ("AcrPull on the resource group", "main.bicep", "  scope: acr\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)",
     "  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)", "no AcrPull"),
    ("AcrPull is another role", "main.bicep", "acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'", "acrPull: 'acdd72a7-3385-48ef-bd42-f606fba81ae7'", "no AcrPull"),
    ("dispatcher has no credential", [
        ("main.parameters.json", '"releaseName": {', '"dispatcherServiceAccount": {"value": "rfleet-dispatcher"},\n    "releaseName": {'),
        ("main.bicep", "var chartServiceAccounts = union([\n  workerServiceAccount\n], [\n  dispatcherServiceAccount\n])", "var chartServiceAccounts = [\n  workerServiceAccount\n]"),
    ], "with subject system:serviceaccount:rfleet:rfleet-dispatcher"),
    ("credential subject in another namespace", "main.bicep", "'system:serviceaccount:${kubernetesNamespace}:${sa}'", "'system:serviceaccount:default:${sa}'", "with subject system:serviceaccount:rfleet:rfleet"),
    ("credential trusts another issuer", "main.bicep", "    issuer: aks.properties.oidcIssuerProfile.issuerURL\n    subject: 'system:serviceaccount:${kubernetesNamespace}",
     "    issuer: 'https://example.com'\n    subject: 'system:serviceaccount:${kubernetesNamespace}", "does not trust the AKS OIDC issuer"),
    ("KEDA credential for another service account", "main.bicep", "'system:serviceaccount:kube-system:keda-operator'",
     "'system:serviceaccount:kube-system:keda'", "no federated credential for system:serviceaccount:kube-system:keda-operator"),
    ("KEDA signs in as the workload identity", "main.bicep", "output kedaIdentityClientId string = kedaIdentity.properties.clientId",
     "output kedaIdentityClientId string = workloadIdentity.properties.clientId", "KEDA's identity is the workload identity"),
    ("replies without sessions", "main.bicep", "  properties: {\n    requiresSession: true\n", "  properties: {\n    requiresSession: false\n", "sessions are not required"),
    ("no catalog queue", "main.bicep", "param catalogQueue string = 'rfleet.catalog'", "param catalogQueue string = 'rfleet.announce'", "the catalog queue is"),
    ("no name queues", "main.bicep", "var queues = union(versionQueues, nameQueuesOfEachVersion)", "var queues = union(versionQueues, [])", "missing ['rfleet.model.churn']"),
    ("RabbitMQ's '@' kept", "main.bicep", "'${queuePrefix}${m.name}/${m.version}'", "'${queuePrefix}${m.name}@${m.version}'", "Service Bus queues do not follow the models"),
    ("a '/' in an ARM name", "main.bicep", "name: replace(queue, '/', '~')", "name: queue", "ARM reserves"),
    ("duplicates kept", "main.bicep", "var queues = union(versionQueues, nameQueuesOfEachVersion)", "var queues = concat(versionQueues, nameQueuesOfEachVersion)", "declared twice"),
    ("duplicate detection on", "main.bicep", "requiresDuplicateDetection: false", "requiresDuplicateDetection: true", "duplicate detection is not off"),
    ("expired requests dropped", "main.bicep", "deadLetteringOnMessageExpiration: true", "deadLetteringOnMessageExpiration: false", "expired requests are not dead-lettered"),
    ("SAS keys on by default", "main.bicep", "param serviceBusAllowLocalAuth bool = false", "param serviceBusAllowLocalAuth bool = true", "local (SAS) auth is on"),
    ("no receiver role", "main.bicep", "  roleIds.serviceBusDataSender\n  roleIds.serviceBusDataReceiver\n", "  roleIds.serviceBusDataSender\n", "no Azure Service Bus Data Receiver"),
    ("classic Application Insights", "main.bicep", "    WorkspaceResourceId: logAnalytics.id\n", "", "not workspace-based"),
    ("no Service Bus diagnostics", "main.bicep", "  scope: serviceBus\n  properties: {\n    workspaceId: logAnalytics.id", "  scope: serviceBus\n  properties: {\n    workspaceId: 'none'", "no diagnostic setting sends serviceBus's logs"),
    ("output missing", "main.bicep", "output oidcIssuerUrl string", "output issuer string", "output oidcIssuerUrl is missing"),
    ("output from the wrong property", "main.bicep", "output acrLoginServer string = acr.properties.loginServer", "output acrLoginServer string = acr.name", "output acrLoginServer does not read"),
    ("unknown parameter", "main.parameters.json", '"namePrefix": {', '"namePrefx": {', "sets 'namePrefx'"),
    ("required parameter missing", "main.bicep", "param releaseName string = 'rfleet'", "param releaseName string\nparam clusterOwner string", "leaves out 'clusterOwner'"),
    ("model version with '/'", "main.parameters.json", '"version": "2"', '"version": "2/b"', "its version holds characters"),
]

# The same for the checkov step (slower: checkov runs once per mutation).
CHECKOV_MUTATIONS = [
    ("ACR admin user on", "main.bicep", "adminUserEnabled: false", "adminUserEnabled: true", "CKV_AZURE_137 failed on Microsoft.ContainerRegistry/registries.acr"),
    ("a waiver without a reason", "checkov-waivers.txt", "CKV_AZURE_8 Microsoft.ContainerService/managedClusters.aks: the check",
     "CKV_AZURE_8 Microsoft.ContainerService/managedClusters.aks:\nCKV_AZURE_9 x: the check", "the waiver of CKV_AZURE_8 gives no reason"),
    ("a stale waiver", "checkov-waivers.txt", "CKV_AZURE_8 Microsoft", "CKV_AZURE_9 Microsoft", "waives CKV_AZURE_9 on Microsoft.ContainerService/managedClusters.aks, which no longer fails"),
]


def run_mutations(mutations: list, check) -> list[str]:
    """Each mutation is (label, file, old, new, expected) or (label, [(file, old, new)...], expected)."""
    failures = []
    for mutation in mutations:
        label, expected = mutation[0], mutation[-1]
        edits = [mutation[1:4]] if len(mutation) == 5 else mutation[1]
        with tempfile.TemporaryDirectory(prefix="check_bicep.") as tmp:
            copy = Path(tmp) / "azure"
            shutil.copytree(AZURE_DIR, copy)
            applied = True
            for file, old, new in edits:
                target = copy / file
                text = target.read_text()
                if text.count(old) != 1:
                    failures.append(f"mutation '{label}': its text is in {file} {text.count(old)} times, not once (update MUTATIONS)")
                    applied = False
                    break
                target.write_text(text.replace(old, new))
            if not applied:
                continue
            found = check(copy)
            if not any(expected in f for f in found):
                failures.append(f"mutation '{label}' did not make the check report '{expected}' (it reported: {found})")
    return failures


def check_chart_models(values_file: Path) -> list[str]:
    """The parameter file's models are the chart values file's models (name, version)."""
    import yaml

    chart = {(str(m["name"]), str(m["version"])) for m in yaml.safe_load(values_file.read_text()).get("models") or []}
    ours = {(str(m["name"]), str(m["version"])) for m in load_parameter_file(AZURE_DIR / "main.parameters.json").get("models", [])}
    if chart == ours:
        return []
    return [f"main.parameters.json's models differ from {values_file.name}'s: only in the parameter file {sorted(ours - chart)}, "
            f"only in the chart values {sorted(chart - ours)}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-mutations", action="store_true", help="skip showing that each assertion can fail")
    parser.add_argument("--no-checkov", action="store_true", help="skip checkov")
    parser.add_argument("--chart-values", type=Path, help="a chart values file whose models the parameter file must list")
    args = parser.parse_args()
    failures = check_template(AZURE_DIR)
    if args.chart_values:
        failures += check_chart_models(args.chart_values)
    if not args.no_checkov:
        failures += check_checkov(AZURE_DIR)
    if not args.no_mutations:
        failures += run_mutations(MUTATIONS, check_template)
        if not args.no_checkov:
            failures += run_mutations(CHECKOV_MUTATIONS, check_checkov)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    if failures:
        print(f"check_bicep: {len(failures)} failure(s)", file=sys.stderr)
        return 1
    checks = "template assertions" + ("" if args.no_checkov else ", checkov") + ("" if args.no_mutations else f", {len(MUTATIONS) + (0 if args.no_checkov else len(CHECKOV_MUTATIONS))} mutations")
    print(f"check_bicep: ok ({checks})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
