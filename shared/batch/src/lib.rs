//! Batch scoring jobs: a file read in chunks, each chunk scored through any bus, the
//! results written in input order, bad rows set aside, and the job resumable exactly once.
//!
//! # Layout
//! - [`read`]: CSV, JSON Lines and Parquet inputs, streamed as [`read::Row`]s.
//! - [`chunk`]: a chunk's rows to a frame fitting the model's schema (`protocol::json` and
//!   `protocol::conform`, as the HTTP front does), scored through `client::ScoringClient`,
//!   bisected where conversion or R fails.
//! - [`write`]: each chunk's output part in the output's format, and the parts joined.
//! - [`state`]: the job's state beside the output (`<output>.rfleet-job/`).
//! - [`progress`]: a bar on a terminal, plain lines otherwise.
//!
//! [`run`] takes any [`bus::Requester`]: the embedded bus of `rfleet score --models` or a
//! broker's. It holds at most `in_flight` chunks being scored and one being read, so its
//! memory does not grow with the input.
//!
//! **Invariant:** a chunk is done exactly when its directory in the job state exists;
//! the output is made only from those directories, in chunk order, so a job killed at any
//! point and resumed writes the same bytes as one never interrupted.

pub mod chunk;
pub mod progress;
pub mod read;
pub mod state;
pub mod write;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bus::Requester;
use futures::StreamExt;
use protocol::{Options, Schema};
use serde::{Deserialize, Serialize};

use crate::chunk::Scorer;
pub use crate::progress::Progress;
use crate::read::{Input, Row};
use crate::state::{ChunkMeta, JobDir, JobFile};

/// A file format, from the file's extension or named (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    JsonLines,
    Parquet,
}

impl Format {
    /// `csv`, `jsonl` (or `ndjson`, `json_lines`) and `parquet`.
    pub fn named(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json_lines" | "jsonlines" => Some(Format::JsonLines),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format a path's extension names.
    pub fn of_path(path: &Path) -> Option<Format> {
        path.extension().and_then(|e| e.to_str()).and_then(Format::named)
    }
}

/// A job: what to score, where to write, and how.
#[derive(Debug, Clone)]
pub struct Job {
    pub model: String,
    pub input: PathBuf,
    pub input_format: Format,
    pub output: PathBuf,
    pub output_format: Format,
    /// Input columns copied to the output beside the predictions (ids, keys).
    pub keep: Vec<String>,
    pub chunk_rows: usize,
    pub in_flight: usize,
    pub limit: ErrorLimit,
    pub resume: bool,
    pub options: Options,
    /// How long one chunk may take to be scored (its requests' deadline).
    pub chunk_timeout: Duration,
}

/// How many bad rows a job tolerates before it stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorLimit {
    Unlimited,
    /// At most this many bad rows.
    Count(u64),
    /// At most this fraction of the rows read so far (checked after every chunk).
    Fraction(f64),
}

/// A row that was not scored, as the errors file shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BadRow {
    /// 1-based, over the whole input.
    pub row: u64,
    /// Empty when no one column is at fault (R refused the row, or it is unreadable).
    pub column: String,
    pub message: String,
}

/// What a finished job did: printed as JSON at the end (`rfleet score`'s stdout).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub input: String,
    pub output: String,
    pub errors_file: String,
    /// Input rows, scored or bad.
    pub rows: u64,
    pub rows_scored: u64,
    pub errors: u64,
    pub chunks: u64,
    /// Chunks a resumed job found done.
    pub chunks_resumed: u64,
    pub duration_s: f64,
    /// Rows this run read, per second of this run.
    pub rows_per_s: f64,
    pub r_calls: u64,
    /// R's time per chunk, from the replies' timings (zero for rows the native engine scored).
    pub r_ms_per_chunk: PerChunkMs,
    /// The worker's time per chunk (receipt to reply: queue, R and conversions).
    pub worker_ms_per_chunk: PerChunkMs,
}

/// Milliseconds per chunk: the sum over the job and its distribution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerChunkMs {
    pub total: f64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl PerChunkMs {
    fn of(mut chunks: Vec<f64>) -> PerChunkMs {
        if chunks.is_empty() {
            return PerChunkMs::default();
        }
        chunks.sort_by(f64::total_cmp);
        let at = |q: f64| chunks[((chunks.len() - 1) as f64 * q).round() as usize];
        let total: f64 = chunks.iter().sum();
        PerChunkMs {
            total,
            mean: total / chunks.len() as f64,
            p50: at(0.5),
            p95: at(0.95),
            max: chunks[chunks.len() - 1],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{what} {path}: {source}")]
    Io { path: String, what: &'static str, source: std::io::Error },
    #[error("cannot read the CSV file {path}: {error}")]
    Csv { path: String, error: String },
    #[error("cannot read or write the Parquet file {path}: {error}")]
    Parquet { path: String, error: String },
    #[error("the input has no column '{column}' that {what} (its columns: {columns})")]
    MissingColumn { column: String, what: &'static str, columns: String },
    #[error("column '{column}': arrow type {data_type} is not supported (numbers, booleans, strings and dictionaries of strings are)")]
    UnsupportedType { column: String, data_type: String },
    #[error("the model has no input schema, so the columns of a {format} input are unknown: declare `input` in its model.toml")]
    NoSchema { format: &'static str },
    #[error("cannot tell the format of {path} from its extension: pass --format csv, jsonl or parquet")]
    Format { path: String },
    #[error(
        "{dir} holds the state of an earlier run of this job: pass --resume to continue it, or remove it to start over"
    )]
    StateExists { dir: String },
    #[error("the job state in {dir} is unreadable: {message}")]
    State { dir: String, message: String },
    #[error("the job state in {dir} is of another job: {field} differs; rerun it as it was, or remove the state to start over")]
    NotTheSameJob { dir: String, field: &'static str },
    #[error("the input changed since the job state was written: chunk {chunk} has {got} rows, it had {had}")]
    InputChanged { chunk: u64, got: u64, had: u64 },
    #[error("rows {first_row}-{last_row} could not be scored: {error}; the chunks done are kept: rerun with --resume")]
    Scoring { first_row: u64, last_row: u64, error: client::ClientError },
    #[error("the answer for the rows from {first_row} does not fit them: {message}")]
    Answer { first_row: u64, message: String },
    #[error("parts of the output disagree on its columns: {part} has {got}, earlier parts {expected}")]
    Columns { part: String, got: String, expected: String },
    #[error("stopped: {errors} bad rows of {rows} read exceed {limit}; they are listed in {errors_file}; the chunks done are kept: rerun with --resume and a higher limit to go on")]
    TooManyErrors { errors: u64, rows: u64, limit: String, errors_file: String },
    #[error("a task of the job failed: {0}")]
    Task(String),
}

impl BatchError {
    pub fn io(path: &Path, what: &'static str, source: std::io::Error) -> BatchError {
        BatchError::Io { path: path.display().to_string(), what, source }
    }
}

/// The errors file of the output `output`: `<output>.errors.csv`.
pub fn errors_file(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".errors.csv");
    output.with_file_name(name)
}

/// What the reader thread hands over, in input order.
enum Read {
    Todo { chunk: u64, rows: Vec<Row> },
    Done { meta: ChunkMeta },
}

/// Runs `job` through `requester` for a model of `schema`, showing `progress`.
pub async fn run<R: Requester>(
    job: &Job,
    requester: R,
    schema: Option<Schema>,
    mut progress: Progress,
) -> Result<Summary, BatchError> {
    let started = Instant::now();
    let input_meta =
        std::fs::metadata(&job.input).map_err(|e| BatchError::io(&job.input, "cannot read the input", e))?;
    let input = Input::open(&job.input, job.input_format, schema.as_ref(), &job.keep)?;
    let state = JobDir::of(&job.output);
    let job_file = JobFile {
        version: 1,
        model: job.model.clone(),
        input: std::fs::canonicalize(&job.input).unwrap_or_else(|_| job.input.clone()).display().to_string(),
        input_bytes: input_meta.len(),
        input_modified_ms: input_meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64),
        input_format: job.input_format,
        output_format: job.output_format,
        chunk_rows: job.chunk_rows,
        keep: input.keep.clone(),
    };
    // A resume without state is a fresh start: nothing was done yet.
    let done = state.open(&job_file, job.resume && state.exists())?;
    progress.set_total(input.total_rows);
    let keep = input.keep.clone();
    let scorer = Scorer {
        client: client::ScoringClient::new(requester),
        model: job.model.clone(),
        schema,
        model_columns: input.model_columns.clone(),
        options: job.options.clone(),
        timeout: job.chunk_timeout,
    };

    // The reader: a thread of its own (reading is blocking), one chunk ahead at most.
    let (read_tx, mut read_rx) = tokio::sync::mpsc::channel::<Result<Read, BatchError>>(1);
    let reader = {
        let (input_path, chunk_rows, done) = (job.input.clone(), job.chunk_rows, done.clone());
        let mut input = input;
        tokio::task::spawn_blocking(move || {
            for chunk in 0u64.. {
                let read = match input.next_rows(chunk_rows, &input_path) {
                    Ok(rows) if rows.is_empty() => break,
                    Ok(rows) => match done.get(&chunk) {
                        Some(meta) if meta.rows != rows.len() as u64 => {
                            Err(BatchError::InputChanged { chunk, got: rows.len() as u64, had: meta.rows })
                        }
                        Some(meta) => Ok(Read::Done { meta: meta.clone() }),
                        None => Ok(Read::Todo { chunk, rows }),
                    },
                    Err(error) => Err(error),
                };
                let failed = read.is_err();
                if read_tx.blocking_send(read).is_err() || failed {
                    break;
                }
            }
        })
    };
    let chunks = futures::stream::poll_fn(move |cx| read_rx.poll_recv(cx));

    let output_format = job.output_format;
    // Boxed, so that dropping it below closes the reader's channel.
    let mut scored = Box::pin(
        chunks
            .map(|read| {
                let (scorer, state_dir, keep) = (&scorer, state.dir.clone(), keep.clone());
                async move {
                    match read? {
                        Read::Done { meta, .. } => Ok((meta, true)),
                        Read::Todo { chunk, rows } => {
                            let rows = std::sync::Arc::new(rows);
                            let scored = scorer.score(&rows).await?;
                            let meta = ChunkMeta {
                                first_row: rows[0].number,
                                rows: rows.len() as u64,
                                bad_rows: scored
                                    .bad
                                    .iter()
                                    .map(|b| b.row)
                                    .collect::<std::collections::BTreeSet<_>>()
                                    .len() as u64,
                                columns: scored.segments.first().map(|s| write::column_names(&keep, &s.predictions)),
                                r_ms: scored.r_ms,
                                worker_ms: scored.worker_ms,
                                r_calls: scored.r_calls,
                            };
                            // Files are written off the async threads.
                            let committed = meta.clone();
                            tokio::task::spawn_blocking(move || {
                                JobDir { dir: state_dir }.commit(chunk, &committed, |dir| {
                                    write::part(
                                        &dir.join(state::PART_ROWS),
                                        output_format,
                                        &keep,
                                        &rows,
                                        &scored.segments,
                                    )?;
                                    write::errors(&dir.join(state::PART_ERRORS), &scored.bad)
                                })
                            })
                            .await
                            .map_err(|e| BatchError::Task(e.to_string()))??;
                            Ok((meta, false))
                        }
                    }
                }
            })
            .buffered(job.in_flight.max(1)),
    );

    let (mut rows, mut bad, mut chunks_done, mut resumed, mut r_calls, mut rows_this_run) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut r_ms, mut worker_ms) = (Vec::new(), Vec::new());
    let mut stopped = None;
    while let Some(outcome) = scored.next().await {
        let (meta, was_done) = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                stopped = Some(error);
                break;
            }
        };
        rows += meta.rows;
        bad += meta.bad_rows;
        chunks_done += 1;
        r_calls += u64::from(meta.r_calls);
        r_ms.push(meta.r_ms);
        worker_ms.push(meta.worker_ms);
        if was_done {
            resumed += 1;
        } else {
            rows_this_run += meta.rows;
        }
        progress.update(rows, bad);
        let over = match job.limit {
            ErrorLimit::Unlimited => None,
            ErrorLimit::Count(limit) => (bad > limit).then(|| format!("--max-errors {limit}")),
            ErrorLimit::Fraction(fraction) => {
                (bad as f64 > fraction * rows as f64).then(|| format!("--max-error-fraction {fraction}"))
            }
        };
        if let Some(limit) = over {
            stopped = Some(BatchError::TooManyErrors {
                errors: bad,
                rows,
                limit,
                errors_file: errors_file(&job.output).display().to_string(),
            });
            break;
        }
    }
    // The reader ends once its channel is closed (with the stream); its errors came
    // through the channel.
    drop(scored);
    let _ = reader.await;
    progress.finish();

    let chunk_dirs = finished_chunks(&state)?;
    if let Some(error) = stopped {
        // What was found so far, for whoever fixes the input before resuming.
        join_errors(&job.output, &chunk_dirs)?;
        return Err(error);
    }
    join_output(job, &keep, &chunk_dirs)?;
    join_errors(&job.output, &chunk_dirs)?;
    state.remove()?;
    let duration = started.elapsed().as_secs_f64();
    Ok(Summary {
        model: job.model.clone(),
        input: job.input.display().to_string(),
        output: job.output.display().to_string(),
        errors_file: errors_file(&job.output).display().to_string(),
        rows,
        rows_scored: rows - bad,
        errors: bad,
        chunks: chunks_done,
        chunks_resumed: resumed,
        duration_s: duration,
        rows_per_s: rows_this_run as f64 / duration.max(1e-9),
        r_calls,
        r_ms_per_chunk: PerChunkMs::of(r_ms),
        worker_ms_per_chunk: PerChunkMs::of(worker_ms),
    })
}

/// Every chunk done, in order, with its meta.
fn finished_chunks(state: &JobDir) -> Result<BTreeMap<u64, (PathBuf, ChunkMeta)>, BatchError> {
    let mut chunks = BTreeMap::new();
    let parts = state.dir.join("parts");
    for entry in std::fs::read_dir(&parts).map_err(|e| BatchError::io(&parts, "cannot read the job state", e))? {
        let entry = entry.map_err(|e| BatchError::io(&parts, "cannot read the job state", e))?;
        if let Ok(chunk) = entry.file_name().to_string_lossy().parse::<u64>() {
            let meta = std::fs::read(entry.path().join("meta.json"))
                .map_err(|e| BatchError::io(&entry.path(), "cannot read", e))?;
            let meta: ChunkMeta = serde_json::from_slice(&meta)
                .map_err(|e| BatchError::State { dir: entry.path().display().to_string(), message: e.to_string() })?;
            chunks.insert(chunk, (entry.path(), meta));
        }
    }
    Ok(chunks)
}

/// The output, made from the parts under a temporary name beside it, then renamed.
fn join_output(
    job: &Job,
    keep: &[(String, read::KeepKind)],
    chunks: &BTreeMap<u64, (PathBuf, ChunkMeta)>,
) -> Result<(), BatchError> {
    let dir = job.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut out =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| BatchError::io(dir, "cannot write the output in", e))?;
    let parts: Vec<(PathBuf, Option<Vec<String>>)> =
        chunks.values().map(|(dir, meta)| (dir.join(state::PART_ROWS), meta.columns.clone())).collect();
    write::join(out.as_file_mut(), job.output_format, keep, &parts)?;
    out.persist(&job.output).map_err(|e| BatchError::io(&job.output, "cannot write the output", e.error))?;
    state::sync_dir(dir)
}

/// `<output>.errors.csv`: a header, then every chunk's bad rows, in order.
fn join_errors(output: &Path, chunks: &BTreeMap<u64, (PathBuf, ChunkMeta)>) -> Result<(), BatchError> {
    let path = errors_file(output);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut out =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| BatchError::io(dir, "cannot write the errors in", e))?;
    let io = |e| BatchError::io(&path, "cannot write", e);
    out.write_all(write::ERRORS_HEADER.as_bytes()).map_err(io)?;
    for (dir, _) in chunks.values() {
        let part = dir.join(state::PART_ERRORS);
        let mut file = std::fs::File::open(&part).map_err(|e| BatchError::io(&part, "cannot read", e))?;
        std::io::copy(&mut file, &mut out).map_err(io)?;
    }
    out.as_file().sync_all().map_err(io)?;
    out.persist(&path).map_err(|e| BatchError::io(&path, "cannot write", e.error))?;
    state::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[tokio::test]
    async fn bad_rows_are_bisected_out_and_the_rest_is_scored_in_order() {
        let (dir, bus) = setup();
        let summary = run(&job(dir.path(), ErrorLimit::Unlimited), bus, schema(), Progress::Quiet).await.unwrap();
        assert_eq!((summary.rows, summary.errors, summary.chunks), (1000, 5, 100));
        let out = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
        let expected: String = std::iter::once("id,.pred\n".to_string())
            .chain(
                (1..=1000).filter(|id| ![15, 500, 666, 777, 900].contains(id)).map(|id| format!("{id},{}\n", 2 * id)),
            )
            .collect();
        // serde_json writes doubles with a fraction: 2.0.
        assert_eq!(out.replace(".0\n", "\n"), expected);
        let errors = std::fs::read_to_string(dir.path().join("out.csv.errors.csv")).unwrap();
        assert_eq!(
            errors,
            "row,column,message\n15,,x is negative\n500,x,\"expected a number, got a string: \"\"oops\"\"\"\n666,,the request crashed 2 R hosts\n777,,x is negative\n900,,\"has 3 fields, the header has 2\"\n"
        );
    }

    /// A job stopped early closes its reader (which would otherwise wait to hand over the
    /// next chunk forever) and keeps its state for a resume.
    #[tokio::test]
    async fn the_threshold_stops_a_job_long_before_its_input_ends() {
        let (dir, bus) = setup();
        let job = job(dir.path(), ErrorLimit::Count(0));
        let run = run(&job, bus, schema(), Progress::Quiet);
        let stopped = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the stopped job ended");
        match stopped {
            Err(BatchError::TooManyErrors { errors: 1, rows: 20, .. }) => {}
            other => panic!("expected a stop after the second chunk, got {other:?}"),
        }
        assert!(!dir.path().join("out.csv").exists());
        assert!(JobDir::of(&dir.path().join("out.csv")).exists());
    }

    /// Stopped at its threshold and resumed with a higher one, a job writes the bytes of a
    /// run never stopped, in every output format (Parquet's row groups included).
    #[tokio::test]
    async fn a_resumed_job_writes_what_an_uninterrupted_one_writes() {
        for (format, name) in [(Format::Csv, "csv"), (Format::JsonLines, "jsonl"), (Format::Parquet, "parquet")] {
            let (dir, bus) = setup();
            let whole = Job {
                output: dir.path().join(format!("whole.{name}")),
                output_format: format,
                ..job(dir.path(), ErrorLimit::Unlimited)
            };
            run(&whole, bus.clone(), schema(), Progress::Quiet).await.unwrap();
            let stopped = Job {
                output: dir.path().join(format!("resumed.{name}")),
                limit: ErrorLimit::Count(0),
                ..whole.clone()
            };
            assert!(matches!(
                run(&stopped, bus.clone(), schema(), Progress::Quiet).await,
                Err(BatchError::TooManyErrors { .. })
            ));
            let resumed = Job { limit: ErrorLimit::Unlimited, resume: true, ..stopped };
            let summary = run(&resumed, bus, schema(), Progress::Quiet).await.unwrap();
            assert!(summary.chunks_resumed >= 2, "{name}: {summary:?}");
            let read = |job: &Job| std::fs::read(&job.output).unwrap();
            assert!(read(&whole) == read(&resumed), "{name}: the resumed output differs");
            assert_eq!(
                std::fs::read(errors_file(&whole.output)).unwrap(),
                std::fs::read(errors_file(&resumed.output)).unwrap()
            );
        }
    }
}

/// A stand-in worker and a job on it, for the tests of `run` without R.
#[cfg(test)]
mod tests_support {
    use super::*;
    pub use bus::EmbeddedBus;
    use bus::{Consumer, ContentType};
    use protocol::{
        Column, ColumnData, ColumnSpec, ColumnType, ErrorCode, Frame, Input as Body, Outcome, Reply, Request,
    };

    /// A worker stand-in on the embedded bus: answers `2 x`, refuses (as R would) any
    /// request holding a negative `x`, and answers one holding 666 as if it crashed hosts.
    pub fn doubling_worker(bus: &EmbeddedBus) {
        let mut consumer = bus.consumer("requests");
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let request: Request = protocol::decode(&delivery.body).unwrap();
                let Body::Frame(frame) = request.input else { panic!("a frame") };
                let ColumnData::F64 { values } = &frame.column("x").unwrap().data else { panic!("x is numeric") };
                let reply = if values.iter().flatten().any(|x| *x < 0.0) {
                    Reply::error(request.id, ErrorCode::RError, "x is negative")
                } else if values.contains(&Some(666.0)) {
                    Reply::error(request.id, ErrorCode::HostCrashed, "the request crashed 2 R hosts")
                } else {
                    let doubled = values.iter().map(|x| x.map(|x| 2.0 * x)).collect();
                    let predictions =
                        Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: doubled })]).unwrap();
                    Reply {
                        outcome: Outcome::Predictions(predictions),
                        ..Reply::error(request.id, ErrorCode::Internal, "")
                    }
                };
                delivery.reply(ContentType::MsgPack, protocol::encode(&reply).unwrap()).await.unwrap();
                delivery.ack().await.unwrap();
            }
        });
    }

    pub fn job(dir: &Path, limit: ErrorLimit) -> Job {
        Job {
            model: "m".into(),
            input: dir.join("in.csv"),
            input_format: Format::Csv,
            output: dir.join("out.csv"),
            output_format: Format::Csv,
            keep: vec!["id".into()],
            chunk_rows: 10,
            in_flight: 2,
            limit,
            resume: false,
            options: Options::default(),
            chunk_timeout: Duration::from_secs(10),
        }
    }

    /// 1,000 rows; `x` negative in rows 15 and 777, text in row 500, 666 in row 666, a
    /// field too many in row 900.
    pub fn input(dir: &Path) {
        let mut text = String::from("id,x\n");
        for id in 1..=1000 {
            let x = match id {
                15 | 777 => "-1".to_string(),
                500 => "oops".to_string(),
                900 => "9,extra".to_string(),
                _ => id.to_string(),
            };
            text.push_str(&format!("{id},{x}\n"));
        }
        std::fs::write(dir.join("in.csv"), text).unwrap();
    }

    pub fn schema() -> Option<Schema> {
        Some(Schema { columns: vec![ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None }] })
    }

    /// The input in a directory of its own, and a bus with the stand-in worker on it.
    pub fn setup() -> (tempfile::TempDir, EmbeddedBus) {
        let dir = tempfile::tempdir().unwrap();
        input(dir.path());
        let bus = EmbeddedBus::new(16, "requests");
        doubling_worker(&bus);
        (dir, bus)
    }
}
