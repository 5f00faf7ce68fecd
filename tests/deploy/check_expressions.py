#!/usr/bin/env python3
"""Checks of every PromQL expression in deploy/observability (rules and Grafana dashboard).

Run with the deploy tools' venv: `.rfleet/tools/venv/bin/python tests/deploy/check_expressions.py`
(`promtool` and `prometheus` from Debian's prometheus package, on PATH; `deploy/setup.sh
test` installs both). Exits non-zero, printing one `FAIL [check] ...` line per failure.

Offline, always:
- promtool: `promtool check rules` parses rules.yaml;
- rules: every alert has `for`, a severity, summary, description and a runbook_url whose
  anchor is a heading of docs/observability.md, and is seen both firing and silent in the
  `promtool test rules` tests (deploy/observability/tests/*.yaml);
- names: every metric an expression reads is one of docs/observability.md's tables (or a
  series rules.yaml records), every label it matches on is one that metric has;
- dashboard: the JSON's shape (datasource and model/version variables, unique panel ids,
  grid in 24 columns without overlaps, every query on `${datasource}`), and every selector
  of a metric labelled by model filters on `$model` and `$version`.

`--prometheus URL`: each expression is sent to Prometheus's HTTP API (`/api/v1/query`),
with Grafana's variables substituted (`$model` and `$version` by `--model`/`--version`
regexes, `$__rate_interval` by `--rate-interval`); it fails naming each dashboard or
recording-rule expression that errors or returns nothing, and each alert expression that
errors or reads a metric that has no series (an alert's own result is empty while it is
silent). Recorded series exist only where that Prometheus loads rules.yaml.

`--self-test`: serves tests/deploy/observability-sample.prom (every metric of the
contract, counters growing with each scrape) on loopback, runs a real `prometheus` of its
own (temporary folder, its own port, 1 s scrapes, rules.yaml loaded) against it, waits
until the series are there, and expects every check above to pass; then breaks copies of
the rules and the dashboard once per check and expects each break caught.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
RULES = OBSERVABILITY / "rules.yaml"
DASHBOARD = OBSERVABILITY / "grafana" / "rfleet.json"
RULE_TESTS = OBSERVABILITY / "tests"
CONTRACT = REPO / "docs" / "observability.md"
SAMPLE = Path(__file__).resolve().parent / "observability-sample.prom"
RUNBOOK = "https://github.com/rfleet/rfleet/blob/main/docs/observability.md#"
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus adds to every scraped series (the operator's monitors add the rest).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str) -> None:
        self.failures.append(f"[{check}] {message}")

    def of(self, check: str) -> list[str]:
        return [f for f in self.failures if f.startswith(f"[{check}]")]


@dataclass
class Expression:
    where: str  # "rules.yaml: alert RfleetNoWorkers", "rfleet.json: panel 'Error ratio' A", ...
    expr: str
    kind: str  # "alert", "record", "panel", "variable"


# ---------------------------------------------------------------------------------------
# Where the expressions are


def rule_expressions(rules_path: Path) -> list[Expression]:
    doc = yaml.safe_load(rules_path.read_text()) or {}
    found = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind = "alert" if "alert" in rule else "record"
            found.append(Expression(f"{rules_path.name}: {kind} {rule.get(kind)}", str(rule.get("expr", "")), kind))
    return found


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions(dashboard_path: Path) -> list[Expression]:
    dashboard = json.loads(dashboard_path.read_text())
    found = []
    for panel in dashboard_panels(dashboard):
        for t in panel.get("targets", []):
            if "expr" in t:
                found.append(Expression(f"{dashboard_path.name}: panel {panel.get('title')!r} {t.get('refId')}", t["expr"], "panel"))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else str(query or "")
            found.append(Expression(f"{dashboard_path.name}: variable ${var.get('name')}", query, "variable"))
    return found


def substitute(expr: str, model: str, version: str, rate_interval: str) -> str:
    """Grafana's variables as Grafana would send them (multi-value variables as a regex)."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": rate_interval,
              "model": model, "version": version}

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def label_values_query(expr: str) -> str:
    """`label_values(metric{...}, label)` (Grafana's variable query) as PromQL that returns
    one series per value."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, re.S)
    if not m:
        raise ValueError(f"not a label_values() query: {expr}")
    return f"count by ({m.group(2)}) ({m.group(1)})"


# ---------------------------------------------------------------------------------------
# PromQL, read just enough: the metrics an expression selects and the labels it matches.
# (No PromQL parser is packaged for Python; Prometheus itself checks the syntax: promtool
# for the rules, the query API for everything.)

STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan", "atan2"}
IDENT = r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])"


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text) of each vector selector, e.g. ("rfleet_requests_total",
    'model=~"$model"'); functions, keywords, grouping labels, ranges and strings are skipped."""
    masked = re.sub(STRING, lambda m: "\0" * len(m.group(0)), expr)  # same offsets, no strings
    masked = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", lambda m: " " * len(m.group(0)), masked)
    masked = re.sub(r"\[[^\]]*\]", lambda m: " " * len(m.group(0)), masked)
    found = []
    for m in re.finditer(IDENT + r"(\s*\{[^}]*\})?", masked):
        name, braces = m.group(1), m.group(2)
        rest = masked[m.end(1):]
        if name in KEYWORDS or (braces is None and re.match(r"\s*\(", rest)):
            continue
        matchers = expr[m.start(2):m.end(2)].strip()[1:-1] if braces else ""
        found.append((name, matchers))
    # A selector in braces alone ({__name__="x"}) is not used here; nothing above writes one.
    return found


def matcher_labels(matchers: str) -> list[str]:
    return re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*(?:" + STRING + ")", matchers)


def contract_metrics(contract: Path) -> dict[str, set[str]]:
    """docs/observability.md's metric tables: metric name -> its labels; histograms give
    their _bucket (with le), _sum and _count series."""
    metrics: dict[str, set[str]] = {}
    for line in contract.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.match(r"(counter|gauge|histogram)\b", cells[1]):
            continue
        labels = set(re.findall(r"`([a-z_]+)(?:=[^`]*)?`", re.sub(r"\([^)]*\)", "", cells[2])))
        for name in re.findall(r"`([a-z_:][a-z0-9_:]*)`", cells[0]):
            metrics.setdefault(name, set()).update(labels)
            if cells[1].startswith("histogram"):
                metrics.setdefault(f"{name}_bucket", set()).update(labels | {"le"})
                metrics.setdefault(f"{name}_sum", set()).update(labels)
                metrics.setdefault(f"{name}_count", set()).update(labels)
    if not metrics:
        raise SystemExit(f"no metric tables found in {contract}: has its format changed?")
    return metrics


# ---------------------------------------------------------------------------------------
# Offline checks


def check_promtool(rules: Path, report: Report) -> None:
    done = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    if done.returncode != 0:
        report.fail("promtool", f"promtool check rules {rules.name}: {(done.stdout + done.stderr).strip()}")


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lowercase, punctuation dropped, spaces to -."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def tested_alerts(tests: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per alert name, how many `promtool test rules` cases expect it firing, and silent."""
    firing: dict[str, int] = {}
    silent: dict[str, int] = {}
    for path in sorted(tests.glob("*.yaml")):
        for test in (yaml.safe_load(path.read_text()) or {}).get("tests", []):
            for case in test.get("alert_rule_test", []):
                counts = firing if case.get("exp_alerts") else silent
                counts[case["alertname"]] = counts.get(case["alertname"], 0) + 1
    return firing, silent


def check_rules(rules: Path, tests: Path, contract: Path, report: Report) -> None:
    doc = yaml.safe_load(rules.read_text()) or {}
    anchors = heading_anchors(contract.read_text())
    firing, silent = tested_alerts(tests)
    alerts = [r for g in doc.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    if not alerts:
        report.fail("rules", f"{rules.name} has no alert")
    for rule in alerts:
        what = f"{rules.name}: alert {rule['alert']}"
        if "for" not in rule:
            report.fail("rules", f"{what}: no `for` (one bad scrape would page)")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            report.fail("rules", f"{what}: severity {rule.get('labels', {}).get('severity')!r} is not one of {sorted(SEVERITIES)}")
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(notes.get(key, "")).strip():
                report.fail("rules", f"{what}: no {key} annotation")
        url = str(notes.get("runbook_url", ""))
        if url and (not url.startswith(RUNBOOK) or url[len(RUNBOOK):] not in anchors):
            report.fail("rules", f"{what}: runbook_url {url} is not a heading of {contract.relative_to(REPO)}")
        if not firing.get(rule["alert"]):
            report.fail("rules", f"{what}: no promtool test case sees it firing ({tests.relative_to(REPO)})")
        if not silent.get(rule["alert"]):
            report.fail("rules", f"{what}: no promtool test case sees it silent ({tests.relative_to(REPO)})")


def check_names(expressions: list[Expression], recorded: set[str], contract: dict[str, set[str]], report: Report) -> None:
    for e in expressions:
        query = label_values_query(e.expr) if e.kind == "variable" else e.expr
        for name, matchers in selectors(query):
            if name in recorded:
                continue
            if name not in contract:
                report.fail("names", f"{e.where}: reads {name}, which is not a metric of docs/observability.md")
                continue
            for label in matcher_labels(matchers):
                if label not in contract[name] | TARGET_LABELS | {"__name__"}:
                    report.fail("names", f"{e.where}: matches on label {label} of {name}, which has {sorted(contract[name])}")


def check_dashboard(path: Path, contract: dict[str, set[str]], report: Report) -> None:
    def fail(message):
        report.fail("dashboard", f"{path.name}: {message}")

    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"not JSON: {e}")
        return
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        fail(f"schemaVersion {dashboard.get('schemaVersion')!r}: not a current Grafana dashboard")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            fail(f"no {key}")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("no `datasource` variable of type datasource (query prometheus)")
    for name in ("model", "version"):
        var = variables.get(name, {})
        query = var.get("query", {})
        query = query.get("query", "") if isinstance(query, dict) else str(query)
        if var.get("type") != "query" or not re.match(rf"label_values\(rfleet_requests_total\b.*,\s*{name}\s*\)", query):
            fail(f"no `{name}` variable from label_values(rfleet_requests_total, {name})")
        elif var.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"variable {name} does not query ${{datasource}}")
        elif var.get("multi") and var.get("includeAll") and var.get("allValue") not in (".*", ".+"):
            fail(f"variable {name}: All must be a regex (allValue .* or .+), not a list of every value")
    ids = [p.get("id") for p in dashboard_panels(dashboard)]
    if len(ids) != len(set(ids)) or None in ids:
        fail(f"panel ids are not unique: {ids}")
    cells = {}
    for panel in dashboard_panels(dashboard):
        title = panel.get("title")
        pos = panel.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in "hwxy") or pos["x"] + pos["w"] > 24:
            fail(f"panel {title!r}: gridPos {pos} is not within the 24-column grid")
            continue
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    fail(f"panel {title!r} overlaps panel {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            fail(f"panel {title!r} has no query")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            fail(f"panel {title!r}: refIds {refs} are not unique")
        for t in [panel, *targets]:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"panel {title!r}: a datasource that is not ${{datasource}}: {t.get('datasource')}")
        for t in targets:
            for name, matchers in selectors(t.get("expr", "")):
                if "model" in contract.get(name, set()) and not (
                        re.search(r'\bmodel=~"\$model"', matchers) and re.search(r'\bversion=~"\$version"', matchers)):
                    fail(f"panel {title!r} {t.get('refId')}: {name}{{{matchers}}} ignores the model and version variables")


def check_offline(rules: Path, dashboard: Path, report: Report, tests: Path = RULE_TESTS, contract_path: Path = CONTRACT) -> list[Expression]:
    contract = contract_metrics(contract_path)
    check_promtool(rules, report)
    check_rules(rules, tests, contract_path, report)
    expressions = rule_expressions(rules) + dashboard_expressions(dashboard)
    recorded = {e.where.split("record ", 1)[1] for e in expressions if e.kind == "record"}
    check_names(expressions, recorded, contract, report)
    check_dashboard(dashboard, contract, report)
    return expressions


# ---------------------------------------------------------------------------------------
# Against a Prometheus


def query(prometheus: str, promql: str) -> tuple[list | None, str | None]:
    """(result, None), or (None, the error Prometheus gave)."""
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return None, f"no answer from {prometheus}: {e}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"]["result"], None


def check_live(prometheus: str, expressions: list[Expression], recorded: set[str], model: str, version: str,
               rate_interval: str, allow_empty: re.Pattern | None, report: Report) -> None:
    empty_names: dict[str, bool] = {}
    for e in expressions:
        try:
            promql = substitute(e.expr, model, version, rate_interval)
            if e.kind == "variable":
                promql = label_values_query(promql)
        except ValueError as err:
            report.fail("live", f"{e.where}: {err}")
            continue
        result, error = query(prometheus, promql)
        if error:
            report.fail("live", f"{e.where}: Prometheus refuses it: {error}\n    {promql}")
            continue
        if e.kind == "alert":
            # Silent alerts return nothing: what must exist is every series they read.
            for name, _ in selectors(promql):
                if name not in empty_names:
                    series, _ = query(prometheus, name)
                    empty_names[name] = not series
                if empty_names[name]:
                    hint = " (a recorded series: does this Prometheus load rules.yaml?)" if name in recorded else ""
                    report.fail("live", f"{e.where}: reads {name}, which has no series{hint}")
        elif not result:
            if allow_empty and allow_empty.search(e.expr):
                report.notes.append(f"{e.where}: empty (allowed by --allow-empty)")
            else:
                report.fail("live", f"{e.where}: returns nothing\n    {promql}")


# ---------------------------------------------------------------------------------------
# The self-test: a sample exposition, a real Prometheus, and breaks


def sample_families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def sample_at(text: str, scrape: int) -> str:
    """The sample as its `scrape`-th scrape: counters and histograms times the scrape number
    (so every rate is above zero), gauges as they are."""
    families = sample_families(text)
    lines = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if m:
            name = m.group(1)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if families.get(name) is None else name
            if families.get(family) in ("counter", "histogram"):
                value = float(m.group(3)) * scrape
                line = f"{name}{m.group(2) or ''} {value:.17g}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def serve_sample(text: str) -> ThreadingHTTPServer:
    scrapes = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            with lock:
                scrapes[0] += 1
                body = sample_at(text, scrapes[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A `prometheus` of our own: a temporary folder, its own port, the sample scraped every
    second and rules.yaml evaluated every second. Stopped (by its pid) on exit."""

    def __init__(self, target: str, rules: Path):
        self.tmp = Path(tempfile.mkdtemp(prefix="rfleet-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "rfleet", "static_configs": [{"targets": [target]}]}],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = None
        for _ in range(3):  # the port is free when picked, but may be taken before it binds
            self.port = free_port()
            self.log = open(self.tmp / "prometheus.log", "w")
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.tmp / 'prometheus.yml'}", f"--storage.tsdb.path={self.tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=self.log, stderr=subprocess.STDOUT)
            if self.wait_ready(deadline=time.monotonic() + 30):
                return
            self.stop(keep_tmp=True)
        raise RuntimeError(f"prometheus did not start: {(self.tmp / 'prometheus.log').read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return False

    def stop(self, keep_tmp: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if not keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def check_sample(contract: dict[str, set[str]], report: Report) -> None:
    """The sample has every metric of the contract, and is what promtool calls valid."""
    text = SAMPLE.read_text()
    families = set(sample_families(text))
    base = {n for n in contract if not re.search(r"_(bucket|sum|count)$", n) or n.rsplit("_", 1)[0] not in contract}
    for name in sorted(base - families):
        report.fail("sample", f"{SAMPLE.name} lacks {name}, a metric of docs/observability.md")
    done = subprocess.run(["promtool", "check", "metrics"], input=sample_at(text, 2), capture_output=True, text=True)
    if done.returncode != 0:
        report.fail("sample", f"promtool check metrics on {SAMPLE.name}: {(done.stdout + done.stderr).strip()}")


# Each break must be caught by the check it names: proof that the check can fail.
# (file, text to replace, replacement, check)
BREAKS = [
    ("rules.yaml", "      - alert: RfleetNoLiveHosts\n        expr: model_version:rfleet_hosts_live:sum == 0",
     "      - alert: RfleetNoLiveHosts\n        expr: model_version:rfleet_hosts_live:sum == = 0", "promtool"),
    ("rules.yaml", "        for: 10m\n        labels:\n          severity: warning\n        annotations:\n          summary: \"rfleet {{ $labels.model }}@{{ $labels.version }}: p99",
     "        labels:\n          severity: warning\n        annotations:\n          summary: \"rfleet {{ $labels.model }}@{{ $labels.version }}: p99", "rules"),
    ("rules.yaml", "#rfleetnoworkers", "#rfleet-no-workers", "rules"),
    ("rules.yaml", "absent(rfleet_hosts_configured)", "absent(rfleet_hosts_configurd)", "names"),
    ("rules.yaml", 'rfleet_hosts{state=~"idle|busy"}', 'rfleet_hosts{status=~"idle|busy"}', "names"),
    ("rules.yaml", "sum by (model, version) (rate(rfleet_rows_scored_total[5m]))", "sum by (model, version) (rate(rfleet_rows_scored_total{model=\"nope\"}[5m]))", "live"),
    ("rules.yaml", "max by (job, instance, transport) (rfleet_bus_connection_up) == 0", "max by (job, instance, transport) (rfleet_bus_connection_up) == 0 unless on () model_version:rfleet_nothing:sum", "live"),
    ("rfleet.json", 'sum by (phase) (rate(rfleet_phase_duration_seconds_sum{model=~\\"$model\\", version=~\\"$version\\"}',
     'sum by (phase) (rate(rfleet_phase_duration_seconds_sum{version=~\\"$version\\"}', "dashboard"),
    ("rfleet.json", '"query": "prometheus"', '"query": "loki"', "dashboard"),
    ("rfleet.json", 'max by (model, version) (rfleet_bus_queue_messages{', 'max by (model, version) (rfleet_bus_queue_message{', "names"),
    ("rfleet.json", 'rfleet_queue_depth{model=~\\"$model\\", version=~\\"$version\\"}', 'rfleet_queue_depth{model=~\\"$model\\", version=~\\"$version\\", outcome=\\"x\\"}', "names"),
    ("rfleet.json", "histogram_quantile(0.99, sum by (le, phase)", "histogram_quantile(0.99, sum by (lee, phase)", "live"),
    ("rfleet.json", "sum by (state) (rfleet_hosts *", 'sum by (state) (rfleet_hosts{state=\\"asleep\\"} *', "live"),
]


def run_checks(rules: Path, dashboard: Path, prometheus: str | None, report: Report, **live) -> None:
    expressions = check_offline(rules, dashboard, report)
    if prometheus:
        recorded = {e.where.split("record ", 1)[1] for e in expressions if e.kind == "record"}
        check_live(prometheus, expressions, recorded, report=report, **live)


def self_test() -> list[str]:
    problems = []
    live = {"model": ".+", "version": ".*", "rate_interval": "1m", "allow_empty": None}
    report = Report()
    check_sample(contract_metrics(CONTRACT), report)
    problems += [f"sample: {f}" for f in report.failures]
    server = serve_sample(SAMPLE.read_text())
    prometheus = None
    try:
        prometheus = Prometheus(f"127.0.0.1:{server.server_address[1]}", RULES)
        print(f"self-test: prometheus on {prometheus.url} scraping the sample on 127.0.0.1:{server.server_address[1]}")
        # rate() needs two scrapes and the recording rules an evaluation after them: poll
        # until every expression has data, or the deadline.
        deadline = time.monotonic() + 90
        while True:
            report = Report()
            run_checks(RULES, DASHBOARD, prometheus.url, report, **live)
            if not report.of("live") or time.monotonic() > deadline:
                break
            time.sleep(1)
        problems += [f"unbroken: {f}" for f in report.failures]
        if not report.failures:
            count = len(rule_expressions(RULES) + dashboard_expressions(DASHBOARD))
            print(f"self-test: all {count} expressions of rules.yaml and rfleet.json have data")
        for file, old, new, check in BREAKS:
            with tempfile.TemporaryDirectory(prefix="rfleet-expressions-break-") as tmp:
                rules, dashboard = Path(tmp) / "rules.yaml", Path(tmp) / "rfleet.json"
                shutil.copy(RULES, rules)
                shutil.copy(DASHBOARD, dashboard)
                path = Path(tmp) / file
                text = path.read_text()
                if text.count(old) != 1:
                    problems.append(f"break {file} {old[:50]!r} no longer applies (found {text.count(old)} times)")
                    continue
                path.write_text(text.replace(old, new))
                report = Report()
                run_checks(rules, dashboard, prometheus.url if check == "live" else None, report, **live)
                caught = report.of(check)
                if not caught:
                    problems.append(f"breaking {file} ({old[:50]!r} -> {new[:50]!r}) was not caught by [{check}]")
                else:
                    print(f"self-test: [{check}] caught {file}: {caught[0][:160]}")
    finally:
        if prometheus:
            prometheus.stop()
        server.shutdown()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", metavar="URL", help="also run every expression against this Prometheus")
    parser.add_argument("--model", default=".+", help="regex for $model (default .+, Grafana's All)")
    parser.add_argument("--version", default=".*", help="regex for $version (default .*, Grafana's All)")
    parser.add_argument("--rate-interval", default="1m", help="$__rate_interval (at least 4 scrape intervals; default 1m)")
    parser.add_argument("--allow-empty", metavar="REGEX", help="an empty result of an expression matching this is a note, not a failure")
    parser.add_argument("--self-test", action="store_true", help="instead, run the checks against a sample in a Prometheus of its own, and break copies once per check")
    args = parser.parse_args()
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None and (args.self_test or tool == "promtool"):
            print(f"FAIL [setup] {tool} is not on PATH: run deploy/setup.sh test (Debian's prometheus package)", file=sys.stderr)
            return 2
    if args.self_test:
        failures = [f"[self-test] {p}" for p in self_test()]
        for f in failures:
            print(f"FAIL {f}")
        print(f"self-test: {len(BREAKS) - sum('breaking' in f or 'no longer applies' in f for f in failures)} of {len(BREAKS)} breaks caught; "
              f"{len(failures)} failure(s)", file=sys.stderr if failures else sys.stdout)
        return 1 if failures else 0
    report = Report()
    allow = re.compile(args.allow_empty) if args.allow_empty else None
    run_checks(RULES, DASHBOARD, args.prometheus, report, model=args.model, version=args.version,
               rate_interval=args.rate_interval, allow_empty=allow)
    for note in report.notes:
        print(f"note: {note}")
    for f in report.failures:
        print(f"FAIL {f}")
    where = f"against {args.prometheus}" if args.prometheus else "offline"
    if report.failures:
        print(f"{len(report.failures)} failure(s) in the expression checks ({where})", file=sys.stderr)
        return 1
    print(f"expression checks passed ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
