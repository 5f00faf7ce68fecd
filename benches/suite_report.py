#!/usr/bin/env python3
"""Tables, targets and plot for benches/suite.sh, from its results.json.

Usage: python3 benches/suite_report.py results.json --markdown results.md --svg suite.svg

Standard library only. The Markdown has the machine line, one table per section
(single-row requests, one large request, batching, memory) and the targets, each
computed from the figures (met / missed, with the gap). The SVG has one panel per
section. Nothing here measures: it only reads what suite.sh wrote.
"""

import argparse
import json
import math
import sys
from html import escape

# Targets (BENCHMARKS.md, "Comparative suite").
TARGET_RATIO_VS_VALVE = 20.0
TARGET_C32_P99_MS = 100.0
TARGET_C1_P50_GAP_MS = 1.0
TARGET_SPLIT_RATIO = 0.6
# The native engine's (BENCHMARKS.md, "Issue 13").
TARGET_NATIVE_RATIO_VS_VALVE = 100.0
TARGET_NATIVE_C1_P50_MS = 1.0
TARGET_NATIVE_BIG_SPEEDUP = 50.0
TARGET_NATIVE_VS_TREELITE = 2.0

COLORS = {
    "rfleet-embedded": "#1f77b4",
    "rfleet-native": "#9467bd",
    "rfleet-amqp": "#17becf",
    "plumber": "#d62728",
    "valve": "#ff7f0e",
    "R loop (1 process)": "#2ca02c",
    "R loop (2 processes)": "#98df8a",
}
LABELS = {
    "rfleet-embedded": "rfleet (embedded bus)",
    "rfleet-embedded-never": "rfleet (embedded bus), ?split=never",
    "rfleet-native": "rfleet (embedded bus), native engine",
    "rfleet-amqp": "rfleet (RabbitMQ)",
    "plumber": "plumber (1 process)",
    "valve": "valve",
}


def label(system, hosts):
    if system == "valve":
        return f"valve ({hosts} plumber processes)"
    if system.startswith("rfleet-"):
        return f"{LABELS[system]}, {hosts} hosts"
    return LABELS.get(system, system)


def fmt(value, digits=2):
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def requests_per_call(run):
    return run.get("requests_per_r_call")


def paths_text(run):
    """x-rfleet-path values grouped: batch:N folded into one "batch" with its mean N
    (requests per batch, weighted by requests), split parts (trees:K, rows:K) kept."""
    paths = run.get("paths") or {}
    if not paths:
        return "-"
    total = sum(paths.values())
    groups = {}  # key -> [requests, sum of N over those requests]
    for path, n in paths.items():
        parts, batch_n = [], None
        for part in path.split("+"):
            if part.startswith("batch:"):
                parts.append("batch")
                batch_n = float(part.split(":", 1)[1])
            else:
                parts.append(part)
        group = groups.setdefault("+".join(parts), [0, 0.0])
        group[0] += n
        group[1] += (batch_n or 0.0) * n
    shown = []
    for key, (n, n_sum) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        text = f"{key} {100.0 * n / total:.0f}%"
        if "batch" in key.split("+"):
            text += f" (mean N {n_sum / n:.1f})"
        shown.append(text)
    return ", ".join(shown)


def find(runs, section, system, concurrency=None):
    for run in runs:
        if run.get("section") == section and run.get("system") == system:
            if concurrency is None or run.get("concurrency") == concurrency:
                return run
    return None


def mib(kib):
    return kib / 1024.0


def versus_valve(runs, system, concurrency=32):
    """(the system's run, valve's, the ratio of their requests/s) at one concurrency, or
    None when either is missing."""
    run, valve = find(runs, "single", system, concurrency), find(runs, "single", "valve", concurrency)
    if run and valve and valve["rps"] > 0:
        return run, valve, run["rps"] / valve["rps"]
    return None


def targets(results):
    """(name, status, text) per target; status is met, missed or not measured."""
    runs = results["runs"]
    out = []
    name = f"single-row, concurrency 32: rfleet ≥ {TARGET_RATIO_VS_VALVE:.0f}× valve's requests/s, p99 < {TARGET_C32_P99_MS:.0f} ms"
    compared = versus_valve(runs, "rfleet-embedded")
    if compared:
        rf32, valve32, ratio = compared
        ok_ratio = ratio >= TARGET_RATIO_VS_VALVE
        ok_p99 = rf32["p99_ms"] is not None and rf32["p99_ms"] < TARGET_C32_P99_MS
        text = (f"{rf32['rps']:.1f} vs {valve32['rps']:.1f} requests/s = {ratio:.2f}× "
                f"({'met' if ok_ratio else f'{TARGET_RATIO_VS_VALVE / ratio:.1f}× short'}); "
                f"p99 {fmt(rf32['p99_ms'])} ms ({'met' if ok_p99 else 'missed'})")
        out.append((name, "met" if ok_ratio and ok_p99 else "missed", text))
    else:
        out.append((name, "not measured", "needs rfleet-embedded and valve at concurrency 32"))
    rf1 = find(runs, "single", "rfleet-embedded", 1)
    loop1 = find(runs, "single", "R loop (1 process)")
    never1 = find(runs, "single", "rfleet-embedded-never", 1)
    name = f"single-row, concurrency 1: rfleet p50 within {TARGET_C1_P50_GAP_MS:.0f} ms of the R loop's"
    if rf1 and loop1:
        gap = rf1["p50_ms"] - loop1["p50_ms"]
        text = f"{rf1['p50_ms']:.2f} vs {loop1['p50_ms']:.2f} ms: {gap:+.2f} ms ({paths_text(rf1)})"
        if never1:
            text += (f"; with ?split=never (one host, like the loop's one process) {never1['p50_ms']:.2f} ms: "
                     f"{never1['p50_ms'] - loop1['p50_ms']:+.2f} ms")
        out.append((name, "met" if gap <= TARGET_C1_P50_GAP_MS else "missed", text))
    else:
        out.append((name, "not measured", "needs rfleet-embedded at concurrency 1 and the R loop"))
    never = find(runs, "big", "rfleet ?split=never")
    always = find(runs, "big", "rfleet ?split=always")
    trees = find(runs, "big", "rfleet ?split=always (by trees)")
    rows = results["machine"].get("big_rows", "?")
    name = f"one {rows}-row request, {results['machine'].get('hosts')} hosts: split ≤ {TARGET_SPLIT_RATIO}× unsplit latency"
    if never and always and never["p50_ms"]:
        ratio = always["p50_ms"] / never["p50_ms"]
        text = (f"{always['p50_ms']:.1f} ms ({paths_text(always)}) vs {never['p50_ms']:.1f} ms unsplit = {ratio:.2f}×")
        if trees and trees["p50_ms"]:
            text += f"; by trees {trees['p50_ms']:.1f} ms = {trees['p50_ms'] / never['p50_ms']:.2f}×"
        unsplit_paths = set((always.get("paths") or {}).keys()) <= {"whole"}
        status = "met" if ratio <= TARGET_SPLIT_RATIO else "missed"
        if unsplit_paths:
            text += " (the replies say the request was not split)"
        out.append((name, status, text))
    else:
        out.append((name, "not measured", "needs the ?split=never and ?split=always runs"))
    out.extend(native_targets(results))
    return out


def native_targets(results):
    """The native engine's targets (issue 13), each met, missed or not measured."""
    runs = results["runs"]
    out = []
    name = f"native engine, single-row, concurrency 32: ≥ {TARGET_NATIVE_RATIO_VS_VALVE:.0f}× valve's requests/s"
    compared = versus_valve(runs, "rfleet-native")
    if compared:
        native32, valve32, ratio = compared
        text = (f"{native32['rps']:.1f} vs {valve32['rps']:.1f} requests/s = {ratio:.1f}×"
                + ("" if ratio >= TARGET_NATIVE_RATIO_VS_VALVE else
                   f" ({TARGET_NATIVE_RATIO_VS_VALVE * valve32['rps']:.0f} requests/s needed)")
                + f"; p99 {fmt(native32.get('p99_ms'))} ms")
        out.append((name, "met" if ratio >= TARGET_NATIVE_RATIO_VS_VALVE else "missed", text))
    else:
        out.append((name, "not measured", "needs rfleet-native and valve at concurrency 32"))
    native1 = find(runs, "single", "rfleet-native", 1)
    name = f"native engine, single-row p50 over HTTP on the embedded bus < {TARGET_NATIVE_C1_P50_MS:.0f} ms"
    if native1 and native1.get("p50_ms") is not None:
        ok = native1["p50_ms"] < TARGET_NATIVE_C1_P50_MS
        text = f"{native1['p50_ms']:.3f} ms at concurrency 1 (p99 {fmt(native1.get('p99_ms'), 3)} ms)"
        out.append((name, "met" if ok else "missed", text))
    else:
        out.append((name, "not measured", "needs rfleet-native at concurrency 1"))
    big = find(runs, "big", "rfleet ?engine=native")
    r_big = find(runs, "big", "R predict (1 call)")
    rows = results["machine"].get("big_rows", "?")
    name = f"native engine, one {rows}-row request ≥ {TARGET_NATIVE_BIG_SPEEDUP:.0f}× faster than R's predict on it"
    inproc = results.get("inproc") or {}
    if big and r_big and big.get("p50_ms"):
        speedup = r_big["p50_ms"] / big["p50_ms"]
        verdicts = [f"{'met' if speedup >= TARGET_NATIVE_BIG_SPEEDUP else 'missed'} over HTTP"]
        text = (f"over HTTP {big['p50_ms']:.2f} ms (parsing the 1-MB body and writing {rows} predictions included) "
                f"vs R's one predict call {r_big['p50_ms']:.1f} ms (parsing outside its timing) = {speedup:.2f}×")
        # The engine alone on the same rows: criterion's figure with a thread per core.
        engine_cases = [c for k, c in (inproc.get("criterion") or {}).items() if c.get("rows") == rows and c.get("threads")]
        if engine_cases:
            fastest = max(engine_cases, key=lambda c: c["threads"])
            engine_speedup = r_big["p50_ms"] / (fastest["ns"] / 1e6)
            verdicts.append(f"{'met' if engine_speedup >= TARGET_NATIVE_BIG_SPEEDUP else 'missed'} in process")
            text += (f"; in process (criterion, {fastest['threads']} threads) {fastest['ns'] / 1e6:.2f} ms = "
                     f"{engine_speedup:.2f}×")
        out.append((name, ", ".join(verdicts), text))
    else:
        out.append((name, "not measured", "needs the native large request and R's predict call (rloop)"))
    native_case = (inproc.get("criterion") or {}).get(f"rows_{inproc.get('rows')}_threads1")
    gtil_case = ((inproc.get("treelite") or {}).get("gtil") or {}).get(f"rows_{inproc.get('rows')}_threads1")
    name = f"native engine in-process, per row, within {TARGET_NATIVE_VS_TREELITE:.0f}× of treelite-class (GTIL)"
    if native_case and gtil_case:
        ratio = native_case["ns_per_tree_row"] / gtil_case["ns_per_tree_row"]
        text = (f"{native_case['ns_per_tree_row']:.2f} vs GTIL's {gtil_case['ns_per_tree_row']:.2f} ns per tree per row "
                f"({inproc['rows']} rows, 1 thread each) = {ratio:.2f}× GTIL's cost")
        out.append((name, "met" if ratio <= TARGET_NATIVE_VS_TREELITE else "missed", text))
    else:
        out.append((name, "not measured", "needs benches/native.sh's criterion and GTIL figures"))
    return out


def native_markdown(results, hosts):
    """The native forest's memory beside R's, and the in-process figures."""
    lines = []
    forest = results.get("native_forest")
    if forest and forest.get("native"):
        native = forest["native"]
        r_total = forest["r_object_size_bytes"] * forest["hosts"]
        lines.append("")
        lines.append("**The native forest's memory** (`GET /models`) beside R's `object.size(model)` in each R host")
        lines.append("")
        lines.append("| trees | nodes | native bytes | bytes per node | R object.size | × hosts | R total | native / R total | cache file bytes | self-check | large request vs R |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        check = forest.get("self_check") or {}
        differing = forest.get("big_values_differing_from_r")
        lines.append(
            f"| {native['trees']} | {native['nodes']} | {native['bytes']} | {native['bytes_per_node']:.1f} | "
            f"{forest['r_object_size_bytes']:.0f} | {forest['hosts']} | {r_total:.0f} | {native['bytes'] / r_total:.3f} | "
            f"{forest.get('cache_file_bytes') or '-'} | {'passed' if check.get('passed') else 'failed'} "
            f"({check.get('rows')} rows, {', '.join(check.get('types') or [])}, {check.get('mismatches')} mismatches) | "
            f"{'bit for bit equal' if differing == 0 else f'{differing} values differ'} on {forest.get('big_rows')} rows |"
        )
    inproc = results.get("inproc")
    if inproc:
        trees = inproc["trees"]
        treelite = inproc.get("treelite") or {}
        lines.append("")
        lines.append(f"**In process** (`benches/native.sh`: criterion medians for the native engine, medians of "
                     f"timed calls for treelite {treelite.get('treelite', '?')}'s GTIL, same forest ({trees} trees, "
                     f"{inproc['nodes']} reachable nodes), same rows)")
        lines.append("")
        lines.append("| evaluator | rows per call | threads | median per call | per row | ns per tree per row |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for who, cases in (("native engine", inproc.get("criterion") or {}), ("treelite GTIL", treelite.get("gtil") or {})):
            # Keys are rows_<R> (the calling thread) or rows_<R>_threads<T>.
            shown = []
            for key, case in cases.items():
                rows = int(key.split("_")[1])
                threads = (int(key.split("threads")[1]) if "threads" in key else
                           "calling thread, a different row each call" if key.endswith("_cycled") else
                           "calling thread, the same row each call")
                shown.append((rows, str(threads), case))
            for rows, threads, case in sorted(shown, key=lambda t: (t[0], t[1])):
                lines.append(f"| {who} | {rows} | {threads} | {case['ns'] / 1e3:.1f} µs | {case['ns_per_row'] / 1e3:.3f} µs | "
                             f"{case['ns_per_tree_row']:.2f} |")
        if "rows_differing_bits" in treelite:
            lines.append("")
            lines.append(f"treelite's predictions against the native engine's (equal to R's): "
                         f"{treelite['rows'] - treelite['rows_differing_bits']} of {treelite['rows']} bit for bit equal, "
                         f"largest difference {treelite['max_abs_difference']:.3g}.")
    return lines


def markdown(results):
    machine = results["machine"]
    runs = results["runs"]
    hosts = machine.get("hosts")
    lines = []
    lines.append(
        f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine.get('memory', '?')}, {machine['kernel']}, "
        f"{machine['r_version']}, randomForest {machine['randomForest']}, plumber {machine.get('plumber', '-')}, "
        f"{machine.get('valve', '-')}, {machine.get('rabbitmq', '-')}; {machine['rfleet']} at {machine['git']}; "
        f"{machine['date']} to {machine.get('ended', '?')}; load average before: {machine.get('loadavg_before', '?')}, "
        f"after: {machine.get('loadavg_after', '?')} (what else ran: cpu-samples.txt)."
    )
    lines.append("")
    lines.append(
        f"Workload: randomForest regression, 500 trees; {machine['requests']} measured requests after "
        f"{machine['warmup']} warm-up per row, each phase capped at {machine['duration_s']} s; "
        f"closed loop (`rfleet-load`), exact percentiles. *Other CPU %*: the share of all {machine['nproc']} cores' time "
        f"that processes other than the measured service and its load generator used during the phase."
    )
    lines.append("")
    lines.append("**Single-row requests**")
    lines.append("")
    lines.append("| system | concurrency | requests/s | p50 ms | p99 ms | requests / R call | x-rfleet-path | errors | requests | other CPU % |")
    lines.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    order = ["rfleet-embedded", "rfleet-embedded-never", "rfleet-native", "rfleet-amqp", "plumber", "valve"]
    singles = [r for r in runs if r.get("section") == "single"]
    singles.sort(key=lambda r: (order.index(r["system"]) if r["system"] in order else 99, r["system"], r["concurrency"]))
    for run in singles:
        concurrency = run["concurrency"]
        if run["system"].startswith("R loop"):
            concurrency = run["processes"]
        lines.append(
            f"| {label(run['system'], hosts)} | {concurrency} | {run['rps']:.1f} | {fmt(run.get('p50_ms'))} | "
            f"{fmt(run.get('p99_ms'))} | {fmt(requests_per_call(run))} | {paths_text(run)} | {run['errors']} | {run['requests']} | "
            f"{fmt(run.get('cpu_other_pct'), 1)} |"
        )
    bigs = [r for r in runs if r.get("section") == "big"]
    if bigs:
        never = find(runs, "big", "rfleet ?split=never")
        lines.append("")
        native_runs = f", the native engine's of {10 * machine['big_runs']}" if find(runs, "big", "rfleet ?engine=native") else ""
        lines.append(f"**One {machine.get('big_rows')}-row request** (median of {machine.get('big_runs')} runs{native_runs}, "
                     f"after 1 warm-up)")
        lines.append("")
        lines.append("| system | median ms | min ms | max ms | vs unsplit rfleet | x-rfleet-path | errors | other CPU % |")
        lines.append("|---|---:|---:|---:|---:|---|---:|---:|")
        big_order = ["rfleet ?split=never", "rfleet ?split=always", "rfleet ?split=always (by trees)",
                     "rfleet ?split=auto", "rfleet ?engine=native", "plumber", "R predict (1 call)"]
        bigs.sort(key=lambda r: big_order.index(r["system"]) if r["system"] in big_order else 99)
        for run in bigs:
            minimum = run.get("min_ms")
            versus = fmt(run["p50_ms"] / never["p50_ms"]) + "×" if never and never.get("p50_ms") and run.get("p50_ms") else "-"
            name = run["system"] if run["system"] != "plumber" else "plumber (1 process)"
            lines.append(
                f"| {name} | {fmt(run.get('p50_ms'), 1)} | {fmt(minimum, 1)} | {fmt(run.get('max_ms'), 1)} | {versus} | "
                f"{paths_text(run)} | {run.get('errors', 0)} | {fmt(run.get('cpu_other_pct'), 1)} |"
            )
    batches = sorted((r for r in runs if r.get("section") == "batch"), key=lambda r: r["max_batch_rows"])
    if batches:
        lines.append("")
        lines.append(f"**Batching** (rfleet, embedded bus, {hosts} hosts, single-row requests at concurrency "
                     f"{results.get('batch_concurrency')}; `RFLEET_WORKERS__MAX_BATCH_ROWS`)")
        lines.append("")
        lines.append("| max_batch_rows | requests/s | p50 ms | p99 ms | requests / R call | x-rfleet-path | errors | other CPU % |")
        lines.append("|---:|---:|---:|---:|---:|---|---:|---:|")
        for run in batches:
            lines.append(
                f"| {run['max_batch_rows']} | {run['rps']:.1f} | {fmt(run.get('p50_ms'))} | {fmt(run.get('p99_ms'))} | "
                f"{fmt(requests_per_call(run))} | {paths_text(run)} | {run['errors']} | {fmt(run.get('cpu_other_pct'), 1)} |"
            )
    memory = results.get("memory") or []
    loops = [r for r in runs if r.get("section") == "single" and r["system"].startswith("R loop") and r.get("hwm_kib")]
    if memory or loops:
        lines.append("")
        lines.append("**Resident memory** after each service's single-row load (MiB; RSS counts shared pages in "
                     "every process, PSS divides them among the sharers, so PSS adds up)")
        lines.append("")
        lines.append("| system | process | count | RSS each | peak RSS each | PSS each | service RSS | service PSS |")
        lines.append("|---|---|---:|---|---|---|---:|---:|")
        for entry in sorted(memory, key=lambda m: order.index(m["system"]) if m["system"] in order else 99):
            procs = entry["processes"]
            total_rss = sum(p["rss_kib"] for p in procs)
            total_pss = sum(p["pss_kib"] for p in procs)
            by_comm = {}
            for proc in procs:
                by_comm.setdefault(proc["comm"], []).append(proc)
            first = True
            for comm, group in sorted(by_comm.items(), key=lambda kv: kv[0] in ("R", "rfleet-rhost")):
                role = {"rfleet": "dispatcher + worker (rfleet)", "rfleet-rhost": "R host (rfleet-rhost)",
                        "R": "R (plumber)", "valve": "proxy (valve)"}.get(comm, comm)
                each = lambda key: " / ".join(f"{mib(p[key]):.0f}" for p in group)
                lines.append(
                    f"| {label(entry['system'], hosts) if first else ''} | {role} | {len(group)} | {each('rss_kib')} | "
                    f"{each('hwm_kib')} | {each('pss_kib')} | {f'{mib(total_rss):.0f}' if first else ''} | "
                    f"{f'{mib(total_pss):.0f}' if first else ''} |"
                )
                first = False
        for run in loops:
            lines.append(
                f"| {run['system']} | R (parent process) | 1 | {mib(run['rss_kib']):.0f} | {mib(run['hwm_kib']):.0f} | - | "
                f"{mib(run['rss_kib']):.0f} | - |"
            )
    lines.extend(native_markdown(results, hosts))
    lines.append("")
    lines.append("**Targets**")
    lines.append("")
    lines.append("| target | status | figures |")
    lines.append("|---|---|---|")
    for name, status, text in targets(results):
        lines.append(f"| {name} | **{status}** | {text} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------
# SVG, by hand: a 3 x 2 grid of panels.

W, H = 1280, 850
PW, PH = 330, 260  # plot area of one panel
MARGIN_L, MARGIN_T = 70, 60


def nice_log_ticks(lo, hi):
    ticks = []
    exp = math.floor(math.log10(lo))
    while 10 ** exp <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
        exp += 1
    return ticks


def tick_text(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


class Panel:
    def __init__(self, svg, x, y, title, ylabel, xlabel):
        self.svg, self.x, self.y = svg, x, y
        svg.append(f'<text x="{x + PW / 2}" y="{y - 22}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
        svg.append(f'<text x="{x + PW / 2}" y="{y + PH + 44}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>')
        svg.append(f'<text transform="translate({x - 48},{y + PH / 2}) rotate(-90)" text-anchor="middle" font-size="11">'
                   f'{escape(ylabel)}</text>')
        svg.append(f'<rect x="{x}" y="{y}" width="{PW}" height="{PH}" fill="none" stroke="#888"/>')

    def log_y(self, lo, hi):
        self.lo, self.hi = math.log10(lo), math.log10(hi)
        for t in nice_log_ticks(lo, hi):
            yy = self.ypos(t)
            self.svg.append(f'<line x1="{self.x}" x2="{self.x + PW}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            self.svg.append(f'<text x="{self.x - 5}" y="{yy + 4:.1f}" text-anchor="end" font-size="10">{tick_text(t)}</text>')

    def lin_y(self, hi):
        """A linear axis from 0 to a round number above hi."""
        step = 10 ** math.floor(math.log10(hi / 4)) if hi > 0 else 1
        for m in (1, 2, 2.5, 5, 10):
            if hi / (m * step) <= 5:
                step *= m
                break
        top = step * math.ceil(hi * 1.15 / step)
        self.linear, self.top = True, top
        t = 0.0
        while t <= top * 1.0001:
            yy = self.ypos(t)
            self.svg.append(f'<line x1="{self.x}" x2="{self.x + PW}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            self.svg.append(f'<text x="{self.x - 5}" y="{yy + 4:.1f}" text-anchor="end" font-size="10">{tick_text(t)}</text>')
            t += step

    def ypos(self, v):
        if getattr(self, "linear", False):
            return self.y + PH - v / self.top * PH
        return self.y + PH - (math.log10(v) - self.lo) / (self.hi - self.lo) * PH

    def x_categories(self, names):
        self.cats = names
        for i, name in enumerate(names):
            xx = self.xpos(i)
            self.svg.append(f'<text x="{xx:.1f}" y="{self.y + PH + 15}" text-anchor="middle" font-size="10">{escape(str(name))}</text>')

    def xpos(self, i):
        n = len(self.cats)
        return self.x + (i + 0.5) * PW / n

    def line(self, points, color, dashed=False, label_text=None):
        pts = [(self.xpos(i), self.ypos(v)) for i, v in points if v and v > 0]
        if not pts:
            return
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y in pts:
            self.svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')

    def hline(self, v, color, text, below=False):
        yy = self.ypos(v)
        self.svg.append(f'<line x1="{self.x}" x2="{self.x + PW}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{color}" '
                        f'stroke-width="1.5" stroke-dasharray="6,4"/>')
        ty = yy + 11 if below else yy - 4
        self.svg.append(f'<text x="{self.x + PW - 4}" y="{ty:.1f}" text-anchor="end" font-size="9" fill="{color}">{escape(text)}</text>')

    def bars(self, values, colors, labels_above):
        n = len(values)
        width = PW / n * 0.6
        for i, v in enumerate(values):
            if not v or v <= 0:
                continue
            xx = self.xpos(i) - width / 2
            yy = self.ypos(v)
            self.svg.append(f'<rect x="{xx:.1f}" y="{yy:.1f}" width="{width:.1f}" height="{self.y + PH - yy:.1f}" fill="{colors[i]}"/>')
            if labels_above[i]:
                self.svg.append(f'<text x="{self.xpos(i):.1f}" y="{yy - 4:.1f}" text-anchor="middle" font-size="10">{escape(labels_above[i])}</text>')


def bounds(values, pad=1.6):
    vals = [v for v in values if v and v > 0]
    if not vals:
        return 1, 10
    lo, hi = min(vals) / pad, max(vals) * pad
    lo = 10 ** math.floor(math.log10(lo))
    return lo, hi


def svg(results):
    machine = results["machine"]
    runs = results["runs"]
    hosts = machine.get("hosts")
    levels = results.get("concurrency_levels") or sorted({r["concurrency"] for r in runs if r.get("section") == "single"})
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">rfleet comparative suite: '
           f'500-tree randomForest regression, single-row and {machine.get("big_rows")}-row requests</text>',
           f'<text x="{W / 2}" y="40" text-anchor="middle" font-size="11">{machine["nproc"]} cores ({escape(machine["cpu"])}), '
           f'{escape(machine["r_version"])}, rfleet {escape(machine["git"])} with {hosts} R hosts, {escape(machine.get("valve", ""))}, '
           f'plumber {escape(machine.get("plumber", ""))}, {escape(machine["date"])}</text>']
    systems = ["rfleet-embedded", "rfleet-native", "rfleet-amqp", "valve", "plumber"]
    singles = {s: {r["concurrency"]: r for r in runs if r.get("section") == "single" and r["system"] == s} for s in systems}
    loop1 = find(runs, "single", "R loop (1 process)")
    loopk = next((r for r in runs if r.get("section") == "single" and r["system"].startswith("R loop (") and r.get("processes", 1) > 1), None)
    col = [MARGIN_L, MARGIN_L + PW + 75, MARGIN_L + 2 * (PW + 75)]
    row = [MARGIN_T + 30, MARGIN_T + PH + 175]

    # (1) throughput, (2) p50, (3) p99 against concurrency.
    for k, (key, title, ylabel) in enumerate([("rps", "Single-row throughput", "requests/s (log)"),
                                               ("p50_ms", "Single-row latency p50", "ms (log)"),
                                               ("p99_ms", "Single-row latency p99", "ms (log)")]):
        panel = Panel(out, col[k], row[0], title, ylabel, "concurrency (requests in flight)")
        values = [r.get(key) for s in systems for r in singles[s].values()]
        values += [x.get(key) for x in (loop1, loopk) if x]
        panel.log_y(*bounds(values))
        panel.x_categories(levels)
        for s in systems:
            panel.line([(i, singles[s][c].get(key)) for i, c in enumerate(levels) if c in singles[s]], COLORS[s])
        loops = [x for x in (loop1, loopk) if x and x.get(key)]
        for loop in loops:
            # The lower of the two lines gets its label below it, so close lines stay legible.
            below = len(loops) == 2 and loop[key] == min(x[key] for x in loops)
            panel.hline(loop[key], COLORS.get(loop["system"], "#2ca02c"), f"{loop['system']}: {loop[key]:.1f}", below)
    # legend
    lx, ly = col[0], row[0] + PH + 66
    entries = [(COLORS[s], label(s, hosts), False) for s in systems] + \
              [(COLORS["R loop (1 process)"], "R predict loop, 1 process", True),
               (COLORS["R loop (2 processes)"], f"R predict loop, {hosts} processes", True)]
    for i, (color, text, dashed) in enumerate(entries):
        # Two lines of four: the labels are long.
        xx, yy = lx + (i % 4) * 290, ly + (i // 4) * 16
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        out.append(f'<line x1="{xx}" x2="{xx + 22}" y1="{yy}" y2="{yy}" stroke="{color}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{xx + 27}" y="{yy + 4}" font-size="10">{escape(text)}</text>')

    # (4) the large request.
    bigs = [r for r in runs if r.get("section") == "big"]
    big_order = [("rfleet ?split=never", "never"), ("rfleet ?split=always", "always\n(rows)"),
                 ("rfleet ?split=always (by trees)", "always\n(trees)"), ("rfleet ?split=auto", "auto"),
                 ("rfleet ?engine=native", "native"),
                 ("plumber", "plumber"), ("R predict (1 call)", "R, 1 call")]
    present = [(s, short) for s, short in big_order if any(r["system"] == s for r in bigs)]
    panel = Panel(out, col[0], row[1], f"One {machine.get('big_rows')}-row request (median)", "ms",
                  f"rfleet ?split= ({hosts} hosts), plumber, R")
    vals = [find(runs, "big", s).get("p50_ms") for s, _ in present]
    panel.lin_y(max([v for v in vals if v] or [1]))
    panel.x_categories([short.split("\n")[0] for _, short in present])
    for i, (_, short) in enumerate(present):
        if "\n" in short:
            out.append(f'<text x="{panel.xpos(i):.1f}" y="{row[1] + PH + 27}" text-anchor="middle" font-size="10">{escape(short.split(chr(10))[1])}</text>')
    colors = [COLORS["rfleet-native"] if s == "rfleet ?engine=native" else "#1f77b4" if s.startswith("rfleet") else COLORS["plumber"] if s == "plumber" else COLORS["R loop (1 process)"] for s, _ in present]
    panel.bars(vals, colors, [f"{v:.0f}" if v else "" for v in vals])

    # (5) batching.
    batches = sorted((r for r in runs if r.get("section") == "batch"), key=lambda r: r["max_batch_rows"])
    panel = Panel(out, col[1], row[1], f"Batching at concurrency {results.get('batch_concurrency')}", "requests/s",
                  "max_batch_rows (label: requests per R call)")
    if batches:
        vals = [r["rps"] for r in batches]
        valve32 = singles["valve"].get(results.get("batch_concurrency"))
        panel.lin_y(max(vals + ([valve32["rps"]] if valve32 else []) + ([loopk["rps"]] if loopk else [])))
        panel.x_categories([r["max_batch_rows"] for r in batches])
        panel.bars(vals, ["#1f77b4"] * len(vals), [fmt(requests_per_call(r), 1) if requests_per_call(r) else "" for r in batches])
        if valve32:
            panel.hline(valve32["rps"], COLORS["valve"], f"valve at the same concurrency: {valve32['rps']:.0f}", below=True)
        if loopk:
            panel.hline(loopk["rps"], COLORS["R loop (2 processes)"], f"{loopk['system']}: {loopk['rps']:.0f}")
    else:
        out.append(f'<text x="{col[1] + PW / 2}" y="{row[1] + PH / 2}" text-anchor="middle">not measured (no batching in this build)</text>')

    # (6) memory.
    memory = sorted(results.get("memory") or [], key=lambda m: systems.index(m["system"]) if m["system"] in systems else 99)
    panel = Panel(out, col[2], row[1], "Memory of the whole service", "MiB", "PSS summed over the service's processes")
    if memory:
        vals = [mib(sum(p["pss_kib"] for p in m["processes"])) for m in memory]
        panel.lin_y(max(vals))
        short = {"rfleet-embedded": "rfleet", "rfleet-native": "native", "rfleet-amqp": "rfleet amqp",
                 "plumber": "plumber", "valve": "valve"}
        panel.x_categories([short.get(m["system"], m["system"]) for m in memory])
        panel.bars(vals, [COLORS.get(m["system"], "#888") for m in memory], [f"{v:.0f}" for v in vals])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--svg", required=True)
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    text = markdown(results)
    with open(args.markdown, "w") as f:
        f.write(text)
    with open(args.svg, "w") as f:
        f.write(svg(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
