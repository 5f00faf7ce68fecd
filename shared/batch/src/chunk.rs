//! One chunk's rows to predictions: converted to a frame that fits the model's schema,
//! scored, and split in halves (bisected) wherever conversion or R fails, until the rows
//! at fault are found and every other row is scored.

use std::sync::Arc;
use std::time::Duration;

use bus::Requester;
use client::{ClientError, ScoringClient};
use protocol::{ErrorCode, Frame, InputError, Options, Schema};
use serde_json::Value;

use crate::read::Row;
use crate::{BadRow, BatchError};

/// A run of consecutive good rows (`rows[start..end]` of the chunk) and their predictions.
#[derive(Debug)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub predictions: Frame,
}

/// What a chunk became.
#[derive(Debug, Default)]
pub struct Scored {
    /// In row order; the rows between segments are bad.
    pub segments: Vec<Segment>,
    /// In row order.
    pub bad: Vec<BadRow>,
    /// R's time (the replies' `timings.r_ms`), summed over the chunk's calls.
    pub r_ms: f64,
    /// The worker's time (receipt to reply, `timings.worker_ms`), summed likewise.
    pub worker_ms: f64,
    pub r_calls: u32,
}

/// What scoring needs beyond the rows.
pub struct Scorer<R> {
    pub client: ScoringClient<R>,
    pub model: String,
    pub schema: Option<Schema>,
    pub model_columns: Vec<String>,
    pub options: Options,
    pub timeout: Duration,
}

/// The frame of `rows`, as the HTTP front makes one (pandas' split orientation through
/// `protocol::json`, then `protocol::conform`), or why not: one problem per bad cell for a
/// single row, else only that some row is bad (the caller bisects).
pub fn frame_of(rows: &[Row], columns: &[String], schema: Option<&Schema>) -> Result<Frame, Vec<BadRow>> {
    let data = rows.iter().map(|row| Value::Array(row.model.clone())).collect();
    let body = serde_json::json!({ "columns": columns, "data": Value::Array(data) });
    let single = |column: String, message: String| vec![BadRow { row: rows[0].number, column, message }];
    let frame = match protocol::json::frame_from_value(&body) {
        Ok(frame) => frame,
        Err(error) => {
            // In one row a column holds one value, so the only problems left are cells
            // that are not scalars.
            return Err(match error {
                protocol::json::JsonError::Nested { column, got, .. } => {
                    single(column, format!("holds {got}, expected a number, string, boolean or null"))
                }
                other => single(String::new(), other.to_string()),
            });
        }
    };
    match schema {
        None => Ok(frame),
        Some(schema) => protocol::conform(&frame, schema).map_err(|errors| {
            errors
                .0
                .into_iter()
                .map(|problem| {
                    let (column, message) = describe(problem);
                    BadRow { row: rows[0].number, column, message }
                })
                .collect()
        }),
    }
}

/// A problem of one row as the errors file shows it: its column, and what is wrong without
/// the row number (the file has its own, counted over the whole input).
fn describe(problem: InputError) -> (String, String) {
    match problem {
        InputError::MissingColumn { name, needed } => (name, format!("missing (the model needs: {needed})")),
        InputError::WrongType { name, expected, got, value, .. } => {
            (name, format!("expected {expected}, got {got}: {value}"))
        }
        InputError::UnseenLevel { name, value, levels, .. } => {
            (name, format!("unseen level '{value}' (known levels: {levels})"))
        }
        InputError::NoLevels { name } => (name.clone(), format!("factor '{name}' has no levels in the model's schema")),
    }
}

impl<R: Requester> Scorer<R> {
    /// Scores `rows`: every good row gets its prediction, every bad one a [`BadRow`].
    /// Fails only for what no row causes (the bus, the worker, a crashed host), which
    /// ends the job; its state lets `--resume` go on from the chunks done.
    pub async fn score(&self, rows: &Arc<Vec<Row>>) -> Result<Scored, BatchError> {
        let mut scored = Scored::default();
        // Ranges still to score, the next one last; split ranges go back in order.
        let mut todo: Vec<(usize, usize)> = Vec::new();
        // Rows that could not be read are bad already; the runs between them are scored.
        let mut start = 0;
        for (i, row) in rows.iter().enumerate() {
            if let Some(bad) = &row.unreadable {
                scored.bad.push(bad.clone());
                if start < i {
                    todo.push((start, i));
                }
                start = i + 1;
            }
        }
        if start < rows.len() {
            todo.push((start, rows.len()));
        }
        todo.reverse();
        while let Some((start, end)) = todo.pop() {
            let part = &rows[start..end];
            let bisect = |todo: &mut Vec<(usize, usize)>| {
                let middle = start + (end - start) / 2;
                todo.push((middle, end));
                todo.push((start, middle));
            };
            // Conversion is CPU work (milliseconds for a chunk): off the async threads.
            let converted = {
                let (rows, columns, schema) = (rows.clone(), self.model_columns.clone(), self.schema.clone());
                tokio::task::spawn_blocking(move || frame_of(&rows[start..end], &columns, schema.as_ref()))
                    .await
                    .map_err(|e| BatchError::Task(format!("converting rows failed: {e}")))?
            };
            let frame = match converted {
                Ok(frame) => frame,
                Err(_) if part.len() > 1 => {
                    bisect(&mut todo);
                    continue;
                }
                Err(mut problems) => {
                    scored.bad.append(&mut problems);
                    continue;
                }
            };
            match self.client.score(&self.model, frame, self.options.clone(), self.timeout).await {
                Ok(answer) => {
                    scored.r_ms += answer.timings.r_ms;
                    scored.worker_ms += answer.timings.worker_ms;
                    scored.r_calls += 1;
                    if answer.predictions.n_rows != part.len() {
                        return Err(BatchError::Answer {
                            first_row: part[0].number,
                            message: format!("{} predictions for {} rows", answer.predictions.n_rows, part.len()),
                        });
                    }
                    scored.segments.push(Segment { start, end, predictions: answer.predictions });
                }
                // R refused the rows (or the worker's own schema check did), or the call
                // crashed its hosts twice: some row is at fault (or the range is too large
                // for R), so halve the range until the row is alone.
                Err(ClientError::Scoring(error))
                    if matches!(error.code, ErrorCode::RError | ErrorCode::InvalidInput | ErrorCode::HostCrashed) =>
                {
                    if part.len() > 1 {
                        bisect(&mut todo);
                    } else {
                        scored.bad.push(BadRow { row: part[0].number, column: String::new(), message: error.message });
                    }
                }
                Err(error) => {
                    return Err(BatchError::Scoring {
                        first_row: part[0].number,
                        last_row: part[part.len() - 1].number,
                        error,
                    })
                }
            }
        }
        scored.segments.sort_by_key(|s| s.start);
        scored.bad.sort_by_key(|b| b.row);
        Ok(scored)
    }
}
