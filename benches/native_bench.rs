//! Criterion benchmark of the native engine in-process (BENCHMARKS.md, "Issue 13"): what
//! `NativeModel::predict` costs per row, for one row and for a large request, on a forest
//! as the R host extracted it, so that the figure per tree per row can be set beside
//! treelite's GTIL on the same trees (`benches/treelite_gtil.py`).
//!
//! Inputs, by environment (`benches/native.sh` sets them from a suite run):
//! - `RFLEET_BENCH_FOREST`: the cache file an R host wrote when it loaded the model
//!   (`<package>/.rfleet/native-<digest>.msgpack`, a `protocol::NativeForest`);
//! - `RFLEET_BENCH_BODY`: a request body, a JSON array of row objects (the suite's
//!   `body-big.json`, 10,000 rows); its first row is the single-row case.
//!
//! The rows are read and conformed as the dispatcher does (`frame_from_slice`, then
//! `conform` to a schema made from the forest's inputs), outside the timing. Each case's
//! throughput is set to rows × trees, so criterion's `elem/s` is tree walks per second
//! and its inverse the cost per tree per row. The large request is timed on a rayon pool
//! of one thread (the per-row cost, to compare with GTIL's `nthread=1`) and on one of a
//! thread per core (what the worker gets); one row is scored on the calling thread, as the
//! engine always does, both the same row every call (`rows/1`) and the next of the body's
//! first 1,000 rows each call (`rows-cycled/1`, what distinct single-row requests cost).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use native::NativeModel;
use protocol::{Column, ColumnSpec, ColumnType, Frame, NativeForest, Schema};

/// A path from the environment, or a stop naming what to set.
fn input_path(variable: &str, what: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(path) => PathBuf::from(path),
        None => panic!("set {variable} to {what} (benches/native.sh does it from a suite run)"),
    }
}

/// The schema a frame must fit for the forest: its inputs, factors with their levels.
fn schema_of(forest: &NativeForest) -> Schema {
    let columns = forest
        .inputs
        .iter()
        .map(|input| ColumnSpec {
            name: input.name.clone(),
            column_type: if input.levels.is_some() { ColumnType::Factor } else { ColumnType::Numeric },
            levels: input.levels.clone(),
        })
        .collect();
    Schema { columns }
}

/// Rows `start..start + n` of `frame`.
fn rows(frame: &Frame, start: usize, n: usize) -> Frame {
    use protocol::ColumnData as D;
    let columns = frame
        .columns
        .iter()
        .map(|column| {
            let data = match &column.data {
                D::F64 { values } => D::F64 { values: values[start..start + n].to_vec() },
                D::I32 { values } => D::I32 { values: values[start..start + n].to_vec() },
                D::Bool { values } => D::Bool { values: values[start..start + n].to_vec() },
                D::Str { values } => D::Str { values: values[start..start + n].to_vec() },
                D::Factor { levels, values, ordered } => {
                    D::Factor { levels: levels.clone(), values: values[start..start + n].to_vec(), ordered: *ordered }
                }
            };
            Column::new(column.name.clone(), data)
        })
        .collect();
    Frame { n_rows: n, columns }
}

fn bench_native(c: &mut Criterion) {
    let forest_path =
        input_path("RFLEET_BENCH_FOREST", "an R host's cache file, <package>/.rfleet/native-<digest>.msgpack");
    let body_path = input_path("RFLEET_BENCH_BODY", "a JSON array of row objects (the suite's body-big.json)");
    let bytes = std::fs::read(&forest_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", forest_path.display()));
    let forest: NativeForest =
        protocol::decode(&bytes).unwrap_or_else(|e| panic!("cannot decode {}: {e}", forest_path.display()));
    let model =
        NativeModel::compile(&forest).unwrap_or_else(|e| panic!("{} does not compile: {e}", forest_path.display()));
    let body = std::fs::read(&body_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", body_path.display()));
    let frame = protocol::json::frame_from_slice(&body).unwrap_or_else(|e| panic!("{}: {e}", body_path.display()));
    let frame =
        protocol::conform(&frame, &schema_of(&forest)).unwrap_or_else(|e| panic!("{}: {e}", body_path.display()));
    let n_trees = forest.trees.len() as u64;
    let footprint = model.footprint();
    eprintln!(
        "native bench: {} ({} trees, {} nodes, {} bytes compiled), {} rows from {}",
        forest_path.display(),
        footprint.trees,
        footprint.nodes,
        footprint.bytes,
        frame.n_rows,
        body_path.display()
    );
    // A declined row would time the refusal, not the trees.
    model.predict(&frame, None).unwrap_or_else(|e| panic!("the native engine declined the rows: {e}"));

    let mut group = c.benchmark_group("native");
    // One row: the same row every call (its path stays in the caches and the branch
    // predictor), and a different row each call, as single-row requests come.
    let one = rows(&frame, 0, 1);
    group.throughput(Throughput::Elements(n_trees));
    group.bench_function(BenchmarkId::new("rows", "1"), |b| b.iter(|| model.predict(black_box(&one), None)));
    let singles: Vec<Frame> = (0..frame.n_rows.min(1000)).map(|i| rows(&frame, i, 1)).collect();
    group.bench_function(BenchmarkId::new("rows-cycled", "1"), |b| {
        let mut next = singles.iter().cycle();
        b.iter(|| model.predict(black_box(next.next().expect("a row")), None))
    });

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    group.throughput(Throughput::Elements(frame.n_rows as u64 * n_trees));
    group.sample_size(20);
    for threads in thread_counts {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool");
        let id = BenchmarkId::new(format!("rows-threads{threads}"), frame.n_rows);
        group.bench_function(id, |b| b.iter(|| pool.install(|| model.predict(black_box(&frame), None))));
    }
    group.finish();
}

criterion_group!(benches, bench_native);
criterion_main!(benches);
