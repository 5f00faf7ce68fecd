#!/usr/bin/env python3
"""Plots the curve of the autoscaling simulation as an SVG (no plotting library needed).

Usage: python3 tests/deploy/plot_autoscale.py target/debug/autoscale.json docs/autoscaling.svg

The input is what `tests/suite/autoscale.rs` (keda_autoscaling_simulation_under_a_load_ramp)
writes: the rendered ScaledObject, the run's figures, and one entry a second of the
curve (t, rate, metric, ready, unacked, desired, pods, running, answered, p50, p99).
Three panels over time: offered load and KEDA's metric; workers wanted and running;
latency (p50, p99) of the answers of each second. Exits non-zero naming what is wrong.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

W, PW, PH, LEFT, TOP, GAP = 760, 620, 150, 80, 70, 70
KEYS = ("t", "rate", "metric", "desired", "pods", "running", "p50", "p99")


def fail(message):
    print(f"plot_autoscale: {message}", file=sys.stderr)
    sys.exit(1)


def ticks(hi, n=5):
    """Round tick values from 0 to at least hi."""
    if hi <= 0:
        return [0, 1]
    raw = hi / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    top = math.ceil(hi / step) * step
    return [round(i * step, 6) for i in range(int(round(top / step)) + 1)]


def num(v):
    return f"{v:g}"


class Panel:
    def __init__(self, out, y, title, ylabel, t_max, y_max):
        self.out, self.y, self.t_max = out, y, t_max
        self.ticks = ticks(y_max)
        self.y_max = self.ticks[-1]
        out.append(f'<text x="{LEFT}" y="{y - 10}" font-weight="bold">{escape(title)}</text>')
        out.append(f'<text transform="translate({LEFT - 45},{y + PH / 2}) rotate(-90)" text-anchor="middle" '
                   f'font-size="11">{escape(ylabel)}</text>')
        for v in self.ticks:
            yy = self.ypos(v)
            out.append(f'<line x1="{LEFT}" x2="{LEFT + PW}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{LEFT - 5}" y="{yy + 4:.1f}" text-anchor="end" font-size="10">{num(v)}</text>')
        for v in ticks(t_max, 8):
            if v > t_max:
                break
            xx = self.xpos(v)
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{y}" y2="{y + PH}" stroke="#f3f3f3"/>')
            out.append(f'<text x="{xx:.1f}" y="{y + PH + 14}" text-anchor="middle" font-size="10">{num(v)}</text>')
        out.append(f'<rect x="{LEFT}" y="{y}" width="{PW}" height="{PH}" fill="none" stroke="#888"/>')
        self.legend = 0

    def xpos(self, t):
        return LEFT + PW * t / self.t_max

    def ypos(self, v):
        return self.y + PH - PH * min(v, self.y_max) / self.y_max

    def line(self, ts, vs, color, label, step=False, dashed=False):
        points = []
        for i, (t, v) in enumerate(zip(ts, vs)):
            if step and i > 0:
                points.append((self.xpos(t), self.ypos(vs[i - 1])))
            points.append((self.xpos(t), self.ypos(v)))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        self.out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        lx = LEFT + PW - 150
        ly = self.y + 14 + 14 * self.legend
        self.legend += 1
        self.out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>')
        self.out.append(f'<text x="{lx + 24}" y="{ly}" font-size="10">{escape(label)}</text>')


def main():
    if len(sys.argv) != 3:
        fail("usage: plot_autoscale.py autoscale.json out.svg")
    try:
        with open(sys.argv[1]) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {sys.argv[1]}: {e}")
    curve = record.get("curve") or fail("the record has no curve")
    for i, point in enumerate(curve):
        missing = [k for k in KEYS if not isinstance(point.get(k), (int, float))]
        if missing:
            fail(f"curve point {i} lacks {missing}")
    spec = record.get("scaled_object", {}).get("spec", {})
    trigger = (spec.get("triggers") or [{}])[0].get("metadata", {})
    ts = [p["t"] for p in curve]
    t_max = max(ts) or 1
    # Latencies of seconds with no answers are left out of the latency lines.
    answered = [p for p in curve if p.get("answered", 0) > 0]

    h = TOP + 3 * (PH + GAP) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" '
           'font-family="sans-serif" font-size="12">', f'<rect width="{W}" height="{h}" fill="white"/>']
    title = (f"rfleet under KEDA + HPA (simulated), {record.get('requests')} requests, "
             f"{record.get('service_seconds')} s of R per call, 1 R host per worker")
    out.append(f'<text x="{W / 2}" y="22" text-anchor="middle" font-weight="bold" font-size="14">{escape(title)}</text>')
    sub = (f"trigger value {trigger.get('value')} messages per worker, min {spec.get('minReplicaCount')} / "
           f"max {spec.get('maxReplicaCount')}; p50 {record.get('p50_s', 0):.3f} s, p99 {record.get('p99_s', 0):.3f} s "
           f"(deadline {record.get('deadline_s', 0):g} s); none lost")
    out.append(f'<text x="{W / 2}" y="40" text-anchor="middle" font-size="11">{escape(sub)}</text>')

    y = TOP
    load = Panel(out, y, "Offered load and KEDA's metric", "req/s, messages", t_max,
                 max(max(p["rate"] for p in curve), max(p["metric"] for p in curve)))
    load.line(ts, [p["rate"] for p in curve], "#1f77b4", "offered load (req/s)")
    load.line(ts, [p["metric"] for p in curve], "#ff7f0e", "queue messages (KEDA metric)", step=True)
    load.line(ts, [p.get("unacked", 0) for p in curve], "#bbbbbb", "of which unacknowledged", step=True, dashed=True)

    y += PH + GAP
    workers = Panel(out, y, "Workers", "workers", t_max, max(p["desired"] for p in curve) + 1)
    workers.line(ts, [p["pods"] for p in curve], "#2ca02c", "pods (starting + running)", step=True)
    workers.line(ts, [p["running"] for p in curve], "#9467bd", "serving (R hosts up)", step=True)
    workers.line(ts, [p["desired"] for p in curve], "#d62728", "desired (KEDA + HPA)", step=True, dashed=True)

    y += PH + GAP
    lat = Panel(out, y, "Latency of each second's answers", "seconds", t_max, max(p["p99"] for p in curve))
    lat.line([p["t"] for p in answered], [p["p50"] for p in answered], "#17becf", "p50")
    lat.line([p["t"] for p in answered], [p["p99"] for p in answered], "#e377c2", "p99")
    out.append(f'<text x="{LEFT + PW / 2}" y="{y + PH + 32}" text-anchor="middle" font-size="11">time (s)</text>')
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
