#!/usr/bin/env python3
"""The treelite-class reference for the native engine: the same forest in treelite, timed with GTIL.

Usage: python benches/treelite_gtil.py --forest native-<digest>.msgpack --body body-big.json \
           [--reference native-big-reply.json] [--runs 20] [--single-calls 2000] [--json out.json]

Reads the NativeForest an R host cached (MessagePack, read with `msgpack`), builds the same
trees with treelite's model builder (numeric splits `x <= threshold` left, as randomForest
and ranger test them; categorical splits as the set of level codes that go left; float64
thresholds and leaves; the mean of the trees' outputs), and predicts the body's rows with
`treelite.gtil`, treelite's C++ evaluator. With --reference (the native engine's answer for
the same rows over HTTP, already checked against R's), it counts the rows whose double
differs in any bit and the largest difference.

Timing: GTIL on all rows with nthread=1 (the per-row cost without threads) and with one
thread per core, --runs times each after one untimed call, the median (nearest rank); and
one row at a time, --single-calls calls, whose median includes Python's and ctypes' cost of
a call. Each is also stated as ns per tree per row. Regression forests only (randomForest,
ranger): classification is out of this comparison's scope and is refused with the reason.
"""

import argparse
import json
import os
import struct
import sys
import time

import msgpack
import numpy as np
import treelite
import treelite.gtil
from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation


def fail(message):
    print(f"treelite_gtil: {message}", file=sys.stderr)
    sys.exit(1)


def load_forest(path):
    with open(path, "rb") as f:
        forest = msgpack.unpackb(f.read(), raw=False)
    if forest.get("algorithm") not in ("random_forest", "ranger"):
        fail(f"{path}: algorithm {forest.get('algorithm')!r}; this comparison builds regression forests only")
    output = forest["output"]
    if output.get("kind") != "mean" or output.get("bias") is not None:
        fail(f"{path}: output {output!r}; this comparison builds a plain mean of the trees only")
    return forest


def build(forest):
    """The forest as a treelite model: only the nodes reachable from each root."""
    trees = forest["trees"]
    inputs = forest["inputs"]
    builder = ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=Metadata(num_feature=len(inputs), task_type="kRegressor", average_tree_output=True,
                          num_target=1, num_class=[1], leaf_vector_shape=(1, 1)),
        tree_annotation=TreeAnnotation(num_tree=len(trees), target_id=[0] * len(trees), class_id=[0] * len(trees)),
        postprocessor=PostProcessorFunc(name="identity"),
        base_scores=[0.0],
    )
    nodes = 0
    for tree in trees:
        builder.start_tree()
        pending = [0]
        while pending:
            node = pending.pop()
            nodes += 1
            builder.start_node(node)
            var = tree["var"][node]
            if var < 0:
                builder.leaf(float(tree["value"][node]))
            else:
                left, right = int(tree["left"][node]), int(tree["right"][node])
                if inputs[var].get("categorical"):
                    directions = tree["sets"][int(tree["split"][node])]
                    builder.categorical_test(var, default_left=False,
                                             category_list=[code for code, d in enumerate(directions) if d == -1],
                                             category_list_right_child=False, left_child_key=left, right_child_key=right)
                else:
                    builder.numerical_test(var, float(tree["split"][node]), default_left=False, opname="<=",
                                           left_child_key=left, right_child_key=right)
                pending += [right, left]
            builder.end_node()
        builder.end_tree()
    return builder.commit(), nodes


def matrix(forest, body_path):
    """The body's rows as float64 features in the forest's input order, a factor as its
    0-based level code (what the categorical tests name)."""
    with open(body_path) as f:
        rows = json.load(f)
    columns = []
    for spec in forest["inputs"]:
        levels = spec.get("levels")
        if levels is None:
            columns.append([float(row[spec["name"]]) for row in rows])
        else:
            code = {level: i for i, level in enumerate(levels)}
            if not spec.get("categorical"):
                base = spec.get("code_base", 0)
                code = {level: i + base for level, i in code.items()}
            columns.append([float(code[row[spec["name"]]]) for row in rows])
    return np.ascontiguousarray(np.array(columns, dtype=np.float64).T)


def median(values):
    ordered = sorted(values)
    return ordered[(len(ordered) + 1) // 2 - 1]


def timed(call, runs):
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forest", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--reference")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--single-calls", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()

    forest = load_forest(args.forest)
    model, nodes = build(forest)
    x = matrix(forest, args.body)
    n_rows, n_trees = x.shape[0], len(forest["trees"])
    predicted = treelite.gtil.predict(model, x, nthread=1).reshape(-1)
    summary = {"treelite": treelite.__version__, "numpy": np.__version__, "trees": n_trees, "nodes": nodes, "rows": n_rows}
    if args.reference:
        with open(args.reference) as f:
            reference = json.load(f)
        if len(reference) != n_rows:
            fail(f"{args.reference} has {len(reference)} predictions for {n_rows} rows")
        bits = lambda v: struct.unpack("<q", struct.pack("<d", float(v)))[0]
        differing = sum(1 for a, b in zip(predicted, reference) if bits(a) != bits(b))
        largest = max(abs(float(a) - float(b)) for a, b in zip(predicted, reference))
        summary.update({"rows_differing_bits": differing, "max_abs_difference": largest})
        print(f"treelite_gtil: {n_rows - differing} of {n_rows} predictions bit for bit equal to the reference, "
              f"largest difference {largest:.3g}", file=sys.stderr)

    cores = os.cpu_count() or 1
    timings = {}
    for threads in sorted({1, cores}):
        ns = timed(lambda: treelite.gtil.predict(model, x, nthread=threads), args.runs)
        timings[f"rows_{n_rows}_threads{threads}"] = {"ns": ns, "ns_per_row": ns / n_rows,
                                                       "ns_per_tree_row": ns / n_rows / n_trees}
    one = np.ascontiguousarray(x[:1])
    ns = timed(lambda: treelite.gtil.predict(model, one, nthread=1), args.single_calls)
    timings["rows_1_threads1"] = {"ns": ns, "ns_per_row": ns, "ns_per_tree_row": ns / n_trees}
    summary["gtil"] = timings
    for name, t in timings.items():
        print(f"treelite_gtil: {name}: median {t['ns'] / 1e6:.3f} ms, {t['ns_per_tree_row']:.2f} ns per tree per row",
              file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
