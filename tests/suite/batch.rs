//! `rfleet score` (issue 14): batch jobs on one machine. Large files in CSV and Parquet
//! equal R's own `predict` on the whole file, in order, with the kept columns intact; bad
//! rows land in the errors file with their row numbers; the error threshold stops a job;
//! a runner killed with SIGKILL resumes to the very bytes of an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::Value;
use support::{binary, fixtures, poll_until};

/// Rows of the large file.
const N_ROWS: usize = 200_000;

/// `rfleet score` with two R hosts running R's own `predict`, in `dir`.
fn score(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary("rfleet"));
    command
        .arg("score")
        .args(["--models", fixtures().join("models").to_str().unwrap(), "--hosts", "2"])
        .args(args)
        .current_dir(dir)
        .env("RFLEET_WORKERS__ENGINE", "r")
        .stdin(Stdio::null());
    command
}

/// Runs a job to its end: its exit status and what it printed (every caller asserts on
/// them, with the stderr in the message).
fn run(dir: &Path, args: &[&str]) -> Output {
    score(dir, args).output().expect("run rfleet score")
}

/// The JSON summary of a job that succeeded.
fn summary(output: &Output, context: &str) -> Value {
    assert!(output.status.success(), "{context}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{context}: the summary is not JSON ({e})"))
}

fn rscript(code: &str) {
    let status = Command::new("Rscript").args(["-e", code]).status().expect("run Rscript");
    assert!(status.success(), "Rscript failed: {code}");
}

/// A CSV file's header and records.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader.headers().unwrap().iter().map(str::to_string).collect();
    let records = reader.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect();
    (header, records)
}

/// The large input (`in.csv`, the same rows as `in.parquet`) and R's prediction of each
/// row by `rf_reg`, computed by R on the whole file.
struct Large {
    dir: tempfile::TempDir,
    grp: Vec<String>,
    expected: Vec<f64>,
}

impl Large {
    fn make() -> Large {
        let dir = tempfile::tempdir().unwrap();
        let models = fixtures().join("models");
        rscript(&format!(
            r#"suppressPackageStartupMessages(library(randomForest)); set.seed(14); n <- {N_ROWS}
            d <- data.frame(id = seq_len(n), x1 = round(runif(n, 0, 10), 4), x2 = round(rnorm(n), 4),
                            grp = sample(c("alpha", "beta", "gamma"), n, TRUE), cnt = as.numeric(sample(0:20, n, TRUE)))
            write.csv(d, "{dir}/in.csv", row.names = FALSE)
            m <- readRDS("{models}/rf_reg/model.rds")
            d <- read.csv("{dir}/in.csv"); d$grp <- factor(d$grp, levels = c("alpha", "beta", "gamma"))
            writeLines(sprintf("%.17g", predict(m, newdata = d)), "{dir}/expected.txt")"#,
            dir = dir.path().display(),
            models = models.display(),
        ));
        let expected = std::fs::read_to_string(dir.path().join("expected.txt"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let (_, records) = read_csv(&dir.path().join("in.csv"));
        write_parquet(&dir.path().join("in.parquet"), &records);
        Large { grp: records.iter().map(|r| r[3].clone()).collect(), dir, expected }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Checks one output row: its id and group kept, its prediction R's.
    fn check(&self, row: usize, id: i64, grp: &str, prediction: f64, context: &str) {
        assert_eq!(id, row as i64 + 1, "{context}: row {row} is out of order");
        assert_eq!(grp, self.grp[row], "{context}: row {row}'s kept grp");
        let want = self.expected[row];
        assert!((prediction - want).abs() <= 1e-9, "{context}: row {row}: got {prediction}, R says {want}");
    }
}

/// The CSV's rows as Parquet: `id` as int64, the numbers as doubles, `grp` as strings,
/// in row groups of 50,000.
fn write_parquet(path: &Path, records: &[Vec<String>]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    for rows in records.chunks(50_000) {
        let float =
            |i: usize| Arc::new(rows.iter().map(|r| r[i].parse::<f64>().ok()).collect::<Float64Array>()) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(rows.iter().map(|r| r[0].parse::<i64>().ok()).collect::<Int64Array>()) as ArrayRef),
            ("x1", float(1)),
            ("x2", float(2)),
            ("grp", Arc::new(rows.iter().map(|r| Some(r[3].as_str())).collect::<StringArray>()) as ArrayRef),
            ("cnt", float(4)),
        ])
        .unwrap();
        let writer = writer
            .get_or_insert_with(|| ArrowWriter::try_new(file.try_clone().unwrap(), batch.schema(), None).unwrap());
        writer.write(&batch).unwrap();
        writer.flush().unwrap();
    }
    writer.unwrap().close().unwrap();
}

/// The names of the chunks a job's state holds as done.
fn chunks_done(state: &Path) -> usize {
    std::fs::read_dir(state.join("parts"))
        .map(|entries| {
            entries.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok())).count()
        })
        .unwrap_or(0)
}

#[test]
fn a_large_file_matches_r_in_order_and_resumes_after_sigkill() {
    let large = Large::make();
    let dir = large.dir.path();
    let job = ["--model", "rf_reg", "--keep", "id,grp", "--chunk-rows", "5000", "--in-flight", "3"];

    // CSV in, CSV out.
    let csv_out = large.path("out.csv");
    let args = [&job[..], &["--input", "in.csv", "--output", csv_out.to_str().unwrap()]].concat();
    let done = summary(&run(dir, &args), "csv");
    assert_eq!(done["rows"], N_ROWS as u64, "{done}");
    assert_eq!(done["errors"], 0, "{done}");
    assert_eq!(done["chunks"], (N_ROWS / 5000) as u64, "{done}");
    let (header, records) = read_csv(&csv_out);
    assert_eq!(header, ["id", "grp", ".pred"]);
    assert_eq!(records.len(), N_ROWS);
    for (row, record) in records.iter().enumerate() {
        large.check(row, record[0].parse().unwrap(), &record[1], record[2].parse().unwrap(), "csv");
    }
    assert_eq!(std::fs::read_to_string(large.path("out.csv.errors.csv")).unwrap(), "row,column,message\n");
    assert!(!large.path("out.csv.rfleet-job").exists(), "the job state outlived a finished job");

    // Parquet in, Parquet out: the kept id stays an integer.
    let parquet_out = large.path("out.parquet");
    let args = [&job[..], &["--input", "in.parquet", "--output", parquet_out.to_str().unwrap()]].concat();
    let done = summary(&run(dir, &args), "parquet");
    assert_eq!(done["rows"], N_ROWS as u64, "{done}");
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&parquet_out).unwrap()).unwrap().build().unwrap();
    let mut row = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "grp", ".pred"]);
        let (ids, grps, predictions) = (
            batch.column(0).as_primitive::<Int64Type>(),
            batch.column(1).as_string::<i32>(),
            batch.column(2).as_primitive::<Float64Type>(),
        );
        for i in 0..batch.num_rows() {
            large.check(row, ids.value(i), grps.value(i), predictions.value(i), "parquet");
            row += 1;
        }
    }
    assert_eq!(row, N_ROWS);

    // The same CSV job killed once a chunk is done, then resumed.
    let killed_out = large.path("killed.csv");
    let args = [&job[..], &["--input", "in.csv", "--output", killed_out.to_str().unwrap()]].concat();
    let state = large.path("killed.csv.rfleet-job");
    let mut runner = score(dir, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let some_done = poll_until(Duration::from_secs(180), || chunks_done(&state) >= 1);
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert!(some_done, "no chunk was done in time");
    let done_at_kill = chunks_done(&state);
    assert!(!killed_out.exists(), "the job had finished before the kill: the test proves nothing");
    assert!(done_at_kill < N_ROWS / 5000, "every chunk was done at the kill");
    let resumed = summary(&run(dir, &[&args[..], &["--resume"]].concat()), "resume");
    let chunks_resumed = resumed["chunks_resumed"].as_u64().unwrap();
    assert!(chunks_resumed >= done_at_kill as u64 && chunks_resumed < (N_ROWS / 5000) as u64, "{resumed}");
    assert_eq!(resumed["rows"], N_ROWS as u64, "{resumed}");
    assert!(
        std::fs::read(&killed_out).unwrap() == std::fs::read(&csv_out).unwrap(),
        "the resumed output differs from an uninterrupted run's"
    );
    assert_eq!(
        std::fs::read(large.path("killed.csv.errors.csv")).unwrap(),
        std::fs::read(large.path("out.csv.errors.csv")).unwrap()
    );
    assert!(!state.exists(), "the job state outlived the resumed job");
}

/// 1,000 rows for the `faulty` model (`x` numeric; R refuses a negative `x`): row 17
/// holds text, rows 250 and 731 are negative, row 500 is missing (R answers NA).
fn faulty_rows() -> Vec<(u64, Value)> {
    (1..=1000u64)
        .map(|id| {
            let x = match id {
                17 => Value::from("abc"),
                250 => Value::from(-1),
                731 => Value::from(-5.5),
                500 => Value::Null,
                _ => Value::from(id as f64 / 4.0),
            };
            (id, x)
        })
        .collect()
}

/// The errors file's rows, checked: the three bad rows, with the column the schema names.
fn check_errors(path: &Path, context: &str) {
    let (header, records) = read_csv(path);
    assert_eq!(header, ["row", "column", "message"], "{context}");
    let rows: Vec<(&str, &str)> = records.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(rows, [("17", "x"), ("250", ""), ("731", "")], "{context}: {records:?}");
    assert!(records[0][2].contains("expected a number") && records[0][2].contains("abc"), "{context}: {records:?}");
    assert!(records[1][2].contains("deliberate failure: x is negative"), "{context}: {records:?}");
    assert!(records[2][2].contains("deliberate failure: x is negative"), "{context}: {records:?}");
}

#[test]
fn bad_rows_land_in_the_errors_file_and_the_threshold_stops_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let rows = faulty_rows();
    let mut csv_text = String::from("id,x\n");
    let mut jsonl = String::new();
    for (id, x) in &rows {
        let cell = match x {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        csv_text.push_str(&format!("{id},{cell}\n"));
        jsonl.push_str(&format!("{}\n", serde_json::json!({ "id": id, "x": x })));
    }
    std::fs::write(dir.path().join("in.csv"), csv_text).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), jsonl).unwrap();
    let job = ["--model", "faulty", "--keep", "id", "--chunk-rows", "100"];

    // R refuses a chunk with a negative x: the chunk is bisected down to that row, and
    // every other row of it is scored.
    let done = summary(&run(dir.path(), &[&job[..], &["--input", "in.csv", "--output", "out.csv"]].concat()), "csv");
    assert_eq!(done["rows"], 1000, "{done}");
    assert_eq!(done["errors"], 3, "{done}");
    check_errors(&dir.path().join("out.csv.errors.csv"), "csv");
    let (header, records) = read_csv(&dir.path().join("out.csv"));
    assert_eq!(header, ["id", ".pred"]);
    let good: Vec<&(u64, Value)> = rows.iter().filter(|(id, _)| ![17, 250, 731].contains(id)).collect();
    assert_eq!(records.len(), good.len());
    for (record, (id, x)) in records.iter().zip(&good) {
        assert_eq!(record[0], id.to_string(), "rows out of order");
        match x.as_f64() {
            Some(x) => assert_eq!(record[1].parse::<f64>().unwrap(), 2.0 * x, "row {id}"),
            None => assert_eq!(record[1], "", "row {id}: R's NA is an empty cell"),
        }
    }

    // The same rows as JSON Lines, written as JSON Lines.
    let done =
        summary(&run(dir.path(), &[&job[..], &["--input", "in.jsonl", "--output", "out.jsonl"]].concat()), "jsonl");
    assert_eq!(done["errors"], 3, "{done}");
    check_errors(&dir.path().join("out.jsonl.errors.csv"), "jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), good.len());
    assert_eq!(lines[0], serde_json::json!({ "id": 1, ".pred": 0.5 }));
    assert_eq!(lines[497], serde_json::json!({ "id": 500, ".pred": null }), "row 500, after two bad rows");

    // Past the threshold the job stops, says why, and leaves no output.
    let stopped =
        run(dir.path(), &[&job[..], &["--input", "in.csv", "--output", "stopped.csv", "--max-errors", "2"]].concat());
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success(), "a job past its threshold succeeded");
    assert!(stderr.contains("3 bad rows") && stderr.contains("exceed --max-errors 2"), "{stderr}");
    assert!(!dir.path().join("stopped.csv").exists(), "a stopped job wrote its output");
    check_errors(&dir.path().join("stopped.csv.errors.csv"), "stopped");
    // A kept column the input lacks is named, with the columns it has.
    let missing =
        run(dir.path(), &["--model", "faulty", "--keep", "key", "--input", "in.csv", "--output", "missing.csv"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("no column 'key' that --keep names (its columns: id, x)"),
        "{stderr}"
    );
    // Within the threshold (as a fraction) the same job goes through.
    let done = summary(
        &run(
            dir.path(),
            &[&job[..], &["--input", "in.csv", "--output", "fraction.csv", "--max-error-fraction", "0.01"]].concat(),
        ),
        "fraction",
    );
    assert_eq!(done["errors"], 3, "{done}");
}
