#!/usr/bin/env bash
# benches/native.sh: the native engine in-process (BENCHMARKS.md, "Issue 13"), beside
# treelite's GTIL on the same trees and rows, in one session.
#
# Usage: benches/native.sh --forest <package>/.rfleet/native-<digest>.msgpack --body body-big.json \
#            [--reference native-reply.json] [--json inproc.json]
#
# --forest is the cache file an R host wrote when it loaded the model (suite.sh passes the
# one its native server made); --body a JSON array of row objects (suite.sh's
# body-big.json, 10,000 rows; its first row is the single-row case); --reference the
# native engine's answer for the body (suite.sh's reply-big-native.json, equal to R's),
# against which treelite's predictions are compared bit for bit.
#
#   1. criterion (benches/native_bench.rs, `cargo bench -p benches --bench native`): one
#      row (the same each call, and a different one each call), and all rows on a rayon
#      pool of 1 thread and of one per core;
#   2. treelite (benches/treelite_gtil.py): the same forest built with treelite's model
#      builder, checked against --reference, GTIL timed on all rows with nthread=1 and one
#      per core, and one row at a time.
# Each figure also as ns per tree per row. Writes --json (default benches/out/native/inproc.json).
#
# Knobs (environment): CRITERION_ARGS ("--warm-up-time 2 --measurement-time 5"),
# GTIL_RUNS (20), GTIL_SINGLE_CALLS (2000), VENV (benches/out/treelite-venv: treelite,
# msgpack and numpy from PyPI, installed there when missing), SKIP_INSTALL (0).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CRITERION_ARGS="${CRITERION_ARGS:---warm-up-time 2 --measurement-time 5}"
GTIL_RUNS="${GTIL_RUNS:-20}"
GTIL_SINGLE_CALLS="${GTIL_SINGLE_CALLS:-2000}"
VENV="${VENV:-$ROOT/benches/out/treelite-venv}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"

say() { printf 'native.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

forest="" body="" reference="" out="$ROOT/benches/out/native/inproc.json"
while (($#)); do
    case "$1" in
    --forest) forest="$2" ;;
    --body) body="$2" ;;
    --reference) reference="$2" ;;
    --json) out="$2" ;;
    *) die "unknown argument $1 (usage: --forest F --body B [--reference R] [--json OUT])" ;;
    esac
    shift 2 || die "$1 needs a value"
done
[[ -f "$forest" ]] || die "--forest: no file '$forest'"
[[ -f "$body" ]] || die "--body: no file '$body'"
[[ -z "$reference" || -f "$reference" ]] || die "--reference: no file '$reference'"
for knob in GTIL_RUNS GTIL_SINGLE_CALLS; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a whole number of at least 1 (got '${!knob}')"
done
forest="$(cd "$(dirname "$forest")" && pwd)/$(basename "$forest")"
body="$(cd "$(dirname "$body")" && pwd)/$(basename "$body")"
mkdir -p "$(dirname "$out")"
work="$(dirname "$out")"

# treelite's wheels bundle their C++ library; numpy and msgpack come with them.
if ! "$VENV/bin/python" -c 'import treelite, treelite.gtil, msgpack, numpy' 2>/dev/null; then
    ((!SKIP_INSTALL)) || die "treelite is missing from $VENV (python3 -m venv $VENV && $VENV/bin/pip install treelite msgpack numpy)"
    say "installing treelite, msgpack and numpy from PyPI into $VENV"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    timeout 900 "$VENV/bin/pip" install --quiet treelite msgpack numpy >&2 || die "pip install treelite msgpack numpy failed"
fi

# 1. criterion. Its results land in <target dir>/criterion/native/<case>/new/estimates.json.
target_dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
rm -rf "$target_dir/criterion/native"
say "criterion: cargo bench -p benches --bench native -- $CRITERION_ARGS"
# shellcheck disable=SC2086 # CRITERION_ARGS is several words
(cd "$ROOT" && RFLEET_BENCH_FOREST="$forest" RFLEET_BENCH_BODY="$body" timeout 1800 \
    cargo bench -p benches --bench native -- $CRITERION_ARGS) >"$work/criterion.txt" 2>&1 ||
    { tail -n 30 "$work/criterion.txt" >&2; die "cargo bench failed (all of it in $work/criterion.txt)"; }
grep -E '^native/|time:|thrpt:' "$work/criterion.txt" >&2 || true

# 2. treelite's GTIL.
say "treelite: GTIL on the same forest and rows"
"$VENV/bin/python" "$ROOT/benches/treelite_gtil.py" --forest "$forest" --body "$body" ${reference:+--reference "$reference"} \
    --runs "$GTIL_RUNS" --single-calls "$GTIL_SINGLE_CALLS" --json "$work/gtil.json" >&2 || die "treelite_gtil.py failed"

# Both in one JSON: criterion's medians (ns per call) beside GTIL's, per tree per row.
python3 - "$target_dir/criterion/native" "$work/gtil.json" "$forest" "$out" <<'EOF'
import json, os, sys
criterion_dir, gtil_path, forest, out = sys.argv[1:]
gtil = json.load(open(gtil_path))
trees = gtil["trees"]
cases = {}
for function in sorted(os.listdir(criterion_dir)):
    for rows in sorted(os.listdir(os.path.join(criterion_dir, function))):
        estimates = os.path.join(criterion_dir, function, rows, "new", "estimates.json")
        if not os.path.exists(estimates):
            continue
        estimate = json.load(open(estimates))
        ns = estimate["median"]["point_estimate"]
        # "rows-threads<N>": on a rayon pool of N threads; "rows": on the calling thread.
        # "rows-cycled": on the calling thread, a different row each call.
        threads = int(function.split("threads")[1]) if "threads" in function else None
        cycled = function.endswith("cycled")
        key = f"rows_{rows}_threads{threads}" if threads else f"rows_{rows}" + ("_cycled" if cycled else "")
        cases[key] = {
            "rows": int(rows), "threads": threads, "distinct_rows": cycled or int(rows) > 1, "ns": ns,
            "ns_low": estimate["median"]["confidence_interval"]["lower_bound"],
            "ns_high": estimate["median"]["confidence_interval"]["upper_bound"],
            "ns_per_row": ns / int(rows), "ns_per_tree_row": ns / int(rows) / trees}
if not cases:
    sys.exit(f"no criterion estimates under {criterion_dir}")
summary = {"forest": forest, "forest_bytes": os.path.getsize(forest), "trees": trees, "nodes": gtil["nodes"],
           "rows": gtil["rows"], "criterion": cases, "treelite": gtil}
json.dump(summary, open(out, "w"), indent=2)
for name, case in cases.items():
    print(f"native.sh: native {name}: median {case['ns'] / 1e3:.1f} us, {case['ns_per_tree_row']:.2f} ns per tree per row",
          file=sys.stderr)
EOF
say "results in $out"
