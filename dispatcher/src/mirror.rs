//! Mirrored (shadow) traffic: a copy of a share of a model's unpinned requests goes to a
//! shadow version in the background; its answer is compared with the primary's and
//! recorded, never returned.
//!
//! A copy is made only of a request whose body parsed, after the primary's version was
//! chosen; it is checked against the shadow version's own schema, published to that
//! version's queue with a deadline of its own, and bounded: at most
//! [`MAX_MIRRORS_IN_FLIGHT`] copies at once, further ones are dropped (and counted). The
//! client's answer never waits for a copy: [`scoring::execute`](crate::scoring::execute)
//! hands the primary's outcome to the copy's task once it has it, and the task compares
//! ([`compare`]: the same predictions, numbers within [`RELATIVE_TOLERANCE`]) and counts
//! per model ([`MirrorCounts`], shown in `GET /models`, and `rfleet_mirrored_total` by
//! model, shadow version and outcome), logging each difference at info.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus::Requester;
use client::Deadline;
use parking_lot::Mutex;
use protocol::{ColumnData, ErrorBody, ErrorCode, Frame};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::scoring::{decode_reply, Answer};

/// Copies awaiting their answer at once; beyond it a copy is dropped, so shadow traffic
/// can never take the in-flight permits or the memory the primary traffic needs.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 32;

/// Two numbers are the same prediction when they differ by at most this much relative to
/// the larger: a shadow version on another machine may sum trees in another order.
pub const RELATIVE_TOLERANCE: f64 = 1e-9;

/// How long a copy's task waits for the primary's outcome beyond the copy's own deadline
/// (the primary's deadline started first, so it has ended by then; this only bounds it).
const PRIMARY_GRACE: Duration = Duration::from_secs(5);

/// What mirroring found for one model since the dispatcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct MirrorCounts {
    /// Copies sent to the shadow version.
    pub sent: u64,
    /// The shadow answered what the primary answered.
    pub equal: u64,
    /// The shadow answered something else (each one is logged at info).
    pub different: u64,
    /// The shadow gave no answer, or answered an error. A copy whose primary got no
    /// answer is counted only as sent.
    pub failed: u64,
    /// Not sent: [`MAX_MIRRORS_IN_FLIGHT`] copies were already in flight.
    pub dropped: u64,
}

/// A copy's outcome, as `rfleet_mirrored_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mirrored {
    Same,
    Different,
    Failed,
    Dropped,
}

impl Mirrored {
    fn as_str(self) -> &'static str {
        match self {
            Mirrored::Same => "same",
            Mirrored::Different => "different",
            Mirrored::Failed => "failed",
            Mirrored::Dropped => "dropped",
        }
    }
}

/// What a version answered a request: predictions (or an entry script's JSON), or an error.
pub type Outcome = Result<Answer, ErrorBody>;

/// How the shadow's outcome compares with the primary's.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    Equal,
    /// The first difference, as a sentence.
    Different(String),
    /// The shadow answered an error: its message.
    Failed(String),
}

/// One copy to send: the primary's request, encoded for the shadow version.
pub struct Copy {
    pub model: String,
    pub primary_version: Option<String>,
    pub mirror_version: String,
    pub request_id: String,
    /// Its PRODUCER span and correlation id, made before it was encoded with its trace context.
    pub publication: client::Publication,
    /// The encoded request, or why the shadow version cannot take it (its schema refused
    /// the input): counted as failed without being sent.
    pub body: Result<Vec<u8>, String>,
    pub timeout_ms: u64,
}

/// The mirrors of every model: the bound on copies in flight and the counts.
pub struct Mirrors {
    permits: Arc<Semaphore>,
    counts: Mutex<HashMap<String, MirrorCounts>>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors { permits: Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)), counts: Mutex::default() }
    }
}

impl Mirrors {
    /// The counts of `model`, once a copy of its requests was made or dropped.
    pub fn counts(&self, model: &str) -> Option<MirrorCounts> {
        self.counts.lock().get(model).copied()
    }

    fn count(&self, model: &str, count: impl FnOnce(&mut MirrorCounts)) {
        count(self.counts.lock().entry(model.to_string()).or_default());
    }

    /// Counts a copy's outcome in `GET /models` and in `rfleet_mirrored_total`; the metric
    /// first: whoever sees the count in `GET /models` finds it in `/metrics` too.
    fn outcome(&self, model: &str, mirror_version: &str, outcome: Mirrored) {
        crate::metrics::mirrored(model, mirror_version, outcome.as_str());
        self.count(model, |c| match outcome {
            Mirrored::Same => c.equal += 1,
            Mirrored::Different => c.different += 1,
            Mirrored::Failed => c.failed += 1,
            Mirrored::Dropped => c.dropped += 1,
        });
    }

    /// Sends `copy` in the background, unless [`MAX_MIRRORS_IN_FLIGHT`] copies are in
    /// flight (then it is dropped and counted). Returns where the primary's outcome goes
    /// once it is known; dropping that sender means the primary got no answer.
    pub fn send(self: &Arc<Self>, requester: Arc<dyn Requester>, copy: Copy) -> Option<oneshot::Sender<Outcome>> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.outcome(&copy.model, &copy.mirror_version, Mirrored::Dropped);
            tracing::debug!(model = %copy.model, request_id = %copy.request_id, "mirror copy dropped: too many in flight");
            return None;
        };
        self.count(&copy.model, |c| c.sent += 1);
        let (primary_tx, primary_rx) = oneshot::channel();
        tokio::spawn(self.clone().run(requester, copy, permit, primary_rx));
        Some(primary_tx)
    }

    /// A copy's task: publish, await the shadow's answer, then the primary's, compare, count.
    async fn run(
        self: Arc<Self>,
        requester: Arc<dyn Requester>,
        copy: Copy,
        _permit: OwnedSemaphorePermit,
        primary: oneshot::Receiver<Outcome>,
    ) {
        let Copy { model, primary_version, mirror_version, request_id, publication, body, timeout_ms } = copy;
        let deadline = Deadline::after(Duration::from_millis(timeout_ms));
        let correlation_id = publication.correlation_id().to_string();
        let mirrored: Outcome = match body {
            Err(message) => Err(ErrorBody::new(ErrorCode::InvalidInput, message)),
            Ok(body) => match publication.send(&*requester, body, &deadline).await {
                Ok(reply) => match decode_reply(&reply, &correlation_id) {
                    Ok((outcome, _)) => outcome,
                    Err(error) => Err(error_body(error)),
                },
                Err(error) => Err(error_body(ApiError::from_bus(error, timeout_ms))),
            },
        };
        let wait = Duration::from_millis(timeout_ms).saturating_add(PRIMARY_GRACE);
        let Ok(Ok(primary)) = tokio::time::timeout(wait, primary).await else {
            tracing::debug!(%model, %request_id, "mirror copy not compared: the primary got no answer");
            return;
        };
        let primary_version = primary_version.as_deref().unwrap_or("none");
        match compare(&primary, &mirrored) {
            Comparison::Equal => self.outcome(&model, &mirror_version, Mirrored::Same),
            Comparison::Different(difference) => {
                self.outcome(&model, &mirror_version, Mirrored::Different);
                tracing::info!(%model, primary_version, %mirror_version, %request_id, %difference, "mirror answered differently");
            }
            Comparison::Failed(error) => {
                self.outcome(&model, &mirror_version, Mirrored::Failed);
                tracing::debug!(%model, %mirror_version, %request_id, %error, "mirror copy failed");
            }
        }
    }
}

fn error_body(error: ApiError) -> ErrorBody {
    match error {
        ApiError::Coded(body) => body,
        other => ErrorBody::new(ErrorCode::Internal, other.to_string()),
    }
}

/// Compares the shadow's outcome with the primary's.
pub fn compare(primary: &Outcome, mirror: &Outcome) -> Comparison {
    match (primary, mirror) {
        (_, Err(error)) => Comparison::Failed(error.message.clone()),
        (Err(error), Ok(_)) => {
            Comparison::Different(format!("the primary answered an error ({}), the mirror an answer", error.message))
        }
        (Ok(primary), Ok(mirror)) => match first_difference(primary, mirror) {
            None => Comparison::Equal,
            Some(difference) => Comparison::Different(difference),
        },
    }
}

/// Where two answers first differ, if they do.
fn first_difference(primary: &Answer, mirror: &Answer) -> Option<String> {
    match (primary, mirror) {
        (Answer::Predictions(a), Answer::Predictions(b)) => frame_difference(a, b),
        (Answer::Json(a), Answer::Json(b)) => {
            match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
                (Ok(a), Ok(b)) => json_difference(&a, &b, "$"),
                _ => (a != b).then(|| "the JSON answers differ".to_string()),
            }
        }
        (Answer::Predictions(_), Answer::Json(_)) => Some("the primary answered predictions, the mirror JSON".into()),
        (Answer::Json(_), Answer::Predictions(_)) => Some("the primary answered JSON, the mirror predictions".into()),
    }
}

/// One value of a prediction frame, as compared: integers and doubles are numbers, factor
/// codes are their labels, `NA` is only equal to `NA`.
#[derive(Debug, PartialEq)]
enum Cell<'a> {
    Na,
    Number(f64),
    Bool(bool),
    Text(&'a str),
}

fn cell(data: &ColumnData, row: usize) -> Cell<'_> {
    let cell = match data {
        ColumnData::F64 { values } => values.get(row).copied().flatten().map(Cell::Number),
        ColumnData::I32 { values } => values.get(row).copied().flatten().map(|v| Cell::Number(f64::from(v))),
        ColumnData::Bool { values } => values.get(row).copied().flatten().map(Cell::Bool),
        ColumnData::Str { values } => values.get(row).and_then(|v| v.as_deref()).map(Cell::Text),
        ColumnData::Factor { levels, values, .. } => {
            values.get(row).copied().flatten().and_then(|code| levels.get(code as usize)).map(|l| Cell::Text(l))
        }
    };
    cell.unwrap_or(Cell::Na)
}

fn same_number(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs())
}

fn same_cell(a: &Cell<'_>, b: &Cell<'_>) -> bool {
    match (a, b) {
        (Cell::Number(a), Cell::Number(b)) => same_number(*a, *b),
        (a, b) => a == b,
    }
}

fn show(cell: &Cell<'_>) -> String {
    match cell {
        Cell::Na => "NA".into(),
        // `{:?}`: the shortest text that reads back as the same number, `1e-300` included.
        Cell::Number(n) => format!("{n:?}"),
        Cell::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        Cell::Text(t) => format!("{t:?}"),
    }
}

fn frame_difference(a: &Frame, b: &Frame) -> Option<String> {
    if a.n_rows != b.n_rows {
        return Some(format!("{} rows vs {} rows", a.n_rows, b.n_rows));
    }
    let names = |f: &Frame| f.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(a) != names(b) {
        return Some(format!("columns {:?} vs {:?}", names(a), names(b)));
    }
    for (x, y) in a.columns.iter().zip(&b.columns) {
        for row in 0..a.n_rows {
            let (p, m) = (cell(&x.data, row), cell(&y.data, row));
            if !same_cell(&p, &m) {
                return Some(format!("column '{}' row {}: {} vs {}", x.name, row + 1, show(&p), show(&m)));
            }
        }
    }
    None
}

fn json_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if same_number(x, y) => None,
            _ => Some(format!("{at}: {a} vs {b}")),
        },
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (x, y))| json_difference(x, y, &format!("{at}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() && x.keys().all(|k| y.contains_key(k)) => {
            x.iter().find_map(|(k, v)| json_difference(v, &y[k], &format!("{at}.{k}")))
        }
        (a, b) if a == b => None,
        _ => Some(format!("{at}: {a} vs {b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Column;

    fn frame(columns: Vec<(&str, ColumnData)>) -> Outcome {
        let columns = columns.into_iter().map(|(name, data)| Column::new(name, data)).collect();
        Ok(Answer::Predictions(Frame::new(columns).unwrap()))
    }

    fn numbers(values: &[Option<f64>]) -> ColumnData {
        ColumnData::F64 { values: values.to_vec() }
    }

    fn check(primary: Outcome, mirror: Outcome, expected: Comparison) {
        assert_eq!(compare(&primary, &mirror), expected, "{primary:?} vs {mirror:?}");
    }

    #[test]
    fn comparisons() {
        use Comparison::*;
        let pred = |values: &[Option<f64>]| frame(vec![(".pred", numbers(values))]);
        check(pred(&[Some(1.5), None]), pred(&[Some(1.5), None]), Equal);
        // Within 1e-9 relative: the same; beyond: the first differing value, rows from 1.
        check(pred(&[Some(1e6), Some(2.0)]), pred(&[Some(1e6 + 1e-4), Some(2.0)]), Equal);
        check(
            pred(&[Some(1.0), Some(2.0)]),
            pred(&[Some(1.0), Some(2.0 + 1e-6)]),
            Different("column '.pred' row 2: 2.0 vs 2.000001".into()),
        );
        check(pred(&[Some(0.0)]), pred(&[Some(1e-300)]), Different("column '.pred' row 1: 0.0 vs 1e-300".into()));
        check(pred(&[Some(f64::NAN)]), pred(&[Some(f64::NAN)]), Equal);
        check(pred(&[None]), pred(&[Some(1.0)]), Different("column '.pred' row 1: NA vs 1.0".into()));
        check(pred(&[Some(1.0)]), pred(&[Some(1.0), Some(2.0)]), Different("1 rows vs 2 rows".into()));
        check(
            pred(&[Some(1.0)]),
            frame(vec![("p", numbers(&[Some(1.0)]))]),
            Different(r#"columns [".pred"] vs ["p"]"#.into()),
        );
        // Integers equal doubles of the same value; factors compare by label, not code.
        check(pred(&[Some(3.0)]), frame(vec![(".pred", ColumnData::I32 { values: vec![Some(3)] })]), Equal);
        let factor = |levels: &[&str], codes: &[u32]| {
            frame(vec![(
                ".pred",
                ColumnData::Factor {
                    levels: levels.iter().map(|l| l.to_string()).collect(),
                    values: codes.iter().map(|c| Some(*c)).collect(),
                    ordered: false,
                },
            )])
        };
        check(factor(&["a", "b"], &[1, 0]), factor(&["b", "a"], &[0, 1]), Equal);
        check(
            factor(&["a", "b"], &[1]),
            factor(&["a", "b"], &[0]),
            Different(r#"column '.pred' row 1: "b" vs "a""#.into()),
        );
        check(
            factor(&["a", "b"], &[0]),
            frame(vec![(".pred", ColumnData::Str { values: vec![Some("a".into())] })]),
            Equal,
        );
        // An entry script's JSON: compared as JSON, numbers with the same tolerance.
        let json = |text: &str| Ok(Answer::Json(text.into()));
        check(json(r#"{"p": [1.0, 2]}"#), json(r#"{ "p": [1, 2.0000000000001] }"#), Equal);
        check(json(r#"{"p": [1, 2]}"#), json(r#"{"p": [1, 3]}"#), Different("$.p[1]: 2 vs 3".into()));
        check(json(r#"{"p": 1}"#), json(r#"{"q": 1}"#), Different(r#"$: {"p":1} vs {"q":1}"#.into()));
        check(json("[1]"), pred(&[Some(1.0)]), Different("the primary answered JSON, the mirror predictions".into()));
        // Errors: the mirror's is a failure; the primary's beside a mirror's answer a difference.
        let error = |message: &str| Err(ErrorBody::new(ErrorCode::RError, message));
        check(pred(&[Some(1.0)]), error("object 'x' not found"), Failed("object 'x' not found".into()));
        check(error("boom"), error("boom"), Failed("boom".into()));
        check(
            error("boom"),
            pred(&[Some(1.0)]),
            Different("the primary answered an error (boom), the mirror an answer".into()),
        );
    }
}
