//! The bus contract: [`Request`] and [`Reply`], as published on a queue by the dispatcher
//! or by any other system (see `docs/protocol.md`).
//!
//! Both are MessagePack maps with named fields. Decoders ignore fields they do not know,
//! so a newer publisher can add optional fields without breaking older workers; a change
//! that older peers cannot ignore bumps [`PROTOCOL_VERSION`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::frame::Frame;
pub use crate::native::{Algorithm, Engine};
use crate::schema::Schema;

/// The version this build writes. Workers answer other versions with `unsupported_version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A scoring request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    /// Correlation id: unique per request, echoed in the reply.
    pub id: String,
    /// Model name, as listed by `GET /models`.
    pub model: String,
    #[serde(default)]
    pub model_version: Option<String>,
    /// Absolute deadline, milliseconds since the Unix epoch. Nothing is scored after it.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub options: Options,
    /// W3C trace context: the caller's trace, with the publishing (PRODUCER) span as parent;
    /// the same as the message's `traceparent` header, which a worker reads first.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The caller's own request id (`x-request-id`), for logs only.
    #[serde(default)]
    pub request_id: Option<String>,
    pub input: Input,
}

/// What to score: a typed frame (the fast path) or, for Azure ML style entry scripts, the
/// raw JSON body, handed to the script unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Frame(Frame),
    Json(String),
}

/// Per-request scoring options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Options {
    /// Passed to R's `predict` as `type` (`"response"`, `"prob"`, `"class"`, ...). When
    /// absent the model's default applies (see `model.toml`'s `predict_type`).
    #[serde(default, rename = "type")]
    pub predict_type: Option<String>,
    /// Whether the worker may split this request across several R hosts; when absent the
    /// model's policy applies (`model.toml`, else the worker's `split` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitPolicy>,
    /// Which engine scores it (`?engine=`); when absent the model's choice applies
    /// (`model.toml`'s `engine`, by default `auto`). `native` for a model or a `type` the
    /// native engine cannot serve is answered `invalid_input`, never sent to R.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// When a worker splits one request across several R hosts (by rows, or for a random
/// forest by trees) and combines the parts. Splitting shortens one request but costs
/// throughput, so it only pays while hosts would otherwise sit idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitPolicy {
    /// Split only when at least two hosts are idle and no other request is waiting.
    #[default]
    Auto,
    /// Always score the request whole, on one host.
    Never,
    /// Split across every host, waiting until they are all free.
    Always,
}

impl SplitPolicy {
    /// The policy as written in settings and on the wire (`auto`, `never`, `always`).
    pub fn as_str(self) -> &'static str {
        match self {
            SplitPolicy::Auto => "auto",
            SplitPolicy::Never => "never",
            SplitPolicy::Always => "always",
        }
    }
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    /// The request's `id`.
    pub id: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub timings: Timings,
}

/// Predictions, the JSON string an Azure ML entry script returned, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Predictions(Frame),
    Json(String),
    Error(ErrorBody),
}

/// A stable error code and a message for people that names the problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes. Each maps to one HTTP status in the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be decoded, or is not a valid request (HTTP 400).
    BadRequest,
    /// The request's `version` is not one this worker speaks (HTTP 400).
    UnsupportedVersion,
    /// The model (or model version) is not served here (HTTP 404).
    ModelNotFound,
    /// The input does not fit the model's schema: missing column, wrong type, unseen
    /// level (HTTP 422).
    InvalidInput,
    /// R signalled an error while scoring; the message is R's (HTTP 422).
    RError,
    /// The request crashed or hung R hosts on every attempt (HTTP 500).
    HostCrashed,
    /// The deadline passed before the request was scored (HTTP 504).
    DeadlineExceeded,
    /// Too much work is queued; retry later (HTTP 503).
    Overloaded,
    /// No worker or R host can take the request now (HTTP 503).
    Unavailable,
    /// A bug in rfleet (HTTP 500).
    Internal,
}

/// Where the time went, for observability. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// From publish (or the worker's receipt) until an R host took the request.
    pub queue_ms: f64,
    /// Inside R: building the data.frame, `predict`, converting the result.
    pub r_ms: f64,
    /// From the worker's receipt to its reply.
    pub worker_ms: f64,
    /// The worker that answered.
    pub worker: String,
    /// The R host process that scored it.
    pub host_pid: Option<u32>,
    /// How many times the request was given to R (2 after a host crash, or when a batch
    /// it was part of failed and it was retried on its own).
    pub attempts: u32,
    /// How the worker scored it: `whole` (alone, on one host), `batch:N` (in one R call
    /// with N requests), `rows:K` / `trees:K` (split across K hosts by rows or by a
    /// forest's trees), or a batch that was split, `batch:N+trees:K`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The version of the model that scored it (`None` for an unversioned model, and in
    /// replies of workers older than this field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
}

/// A model as the fleet addresses it: its name and, for a versioned package (`version` in
/// its `model.toml`), its version. Two packages of one name with different versions are
/// two models: a worker, and one R host, may hold both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

impl ModelRef {
    pub fn new(name: impl Into<String>, version: Option<String>) -> Self {
        ModelRef { name: name.into(), version }
    }

    /// Whether this is `name`, at `version` when one is asked for.
    pub fn matches(&self, name: &str, version: Option<&str>) -> bool {
        self.name == name && version.is_none_or(|v| self.version.as_deref() == Some(v))
    }
}

impl From<&str> for ModelRef {
    /// An unversioned model called `name`.
    fn from(name: &str) -> Self {
        ModelRef { name: name.to_string(), version: None }
    }
}

impl std::fmt::Display for ModelRef {
    /// `rf-reg` or `rf-reg version 2`, as error messages and logs say it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{} version {version}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Orders versions as people number them: runs of digits compare as numbers (`10` after
/// `9`, `1.10` after `1.9`), everything else as text; an unversioned model comes first.
/// The worker scores an unpinned request with the highest version it holds by this order.
pub fn compare_versions(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Less,
        (Some(_), None) => return Ordering::Greater,
        (Some(a), Some(b)) => (a, b),
    };
    // Split into alternating runs of digits and non-digits.
    fn runs(s: &str) -> Vec<&str> {
        let mut runs = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                runs.push(&s[start..i]);
                start = i;
            }
        }
        runs
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(rb.iter()) {
        let numeric = x.as_bytes()[0].is_ascii_digit() && y.as_bytes()[0].is_ascii_digit();
        let ordering = if numeric {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// A model package that did not load, as a worker reports it: the package, and R's (or
/// the manifest's) error. Its routes answer 503 with the message while no worker serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadFailure {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub message: String,
}

/// What the fleet serves, as listed by `GET /models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub kind: ModelKind,
    /// The R object's `class()`.
    #[serde(default)]
    pub r_class: Vec<String>,
    /// Declared in `model.toml` or inferred from the model; `None` when neither is known,
    /// in which case columns are passed to R as they come.
    #[serde(default)]
    pub schema: Option<Schema>,
    /// The `type` passed to `predict` when a request names none.
    #[serde(default)]
    pub predict_type: Option<String>,
    /// Set for random forests (randomForest, ranger) whose trees can be split across
    /// hosts and combined exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forest: Option<ForestInfo>,
    /// Which engine scores it, and what the native engine made of it; `None` from workers
    /// older than the native engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
}

/// A model's engines as its worker serves it (`GET /models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// `model.toml`'s `engine`.
    pub configured: Engine,
    /// What a request without `?engine=` gets now: `native` or `r` (for a `type` the
    /// native engine answers; any other goes to R).
    pub serving: Engine,
    /// The native forest, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeSummary>,
    /// The check at load that R and the native engine agree, once it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_check: Option<SelfCheck>,
    /// Why the model is served by R (no native forest, a failed self-check, one still
    /// running), for people reading `GET /models` and the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `model.toml`'s `r_fallback`: whether R keeps the model as the fallback. `true` from
    /// workers older than the option.
    #[serde(default = "r_fallback_default")]
    pub r_fallback: bool,
    /// Whether the R hosts let go of the model (`r_fallback = false` and the hosts'
    /// self-check passed): only the native engine serves it, and what would need R is
    /// refused.
    #[serde(default)]
    pub released: bool,
}

/// R keeps every model unless its `model.toml` says `r_fallback = false`: the default of
/// every message field that carries the option.
pub(crate) fn r_fallback_default() -> bool {
    true
}

/// A native forest's size and origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeSummary {
    pub algorithm: Algorithm,
    pub trees: u32,
    pub nodes: u64,
    /// What the compiled forest holds in the worker's memory, once per worker process.
    pub bytes: u64,
    pub bytes_per_node: f64,
    /// The `type`s it answers (`response`, `prob`, ...).
    pub types: Vec<String>,
    /// True when this load extracted it from R, false when it came from the cache.
    pub extracted: bool,
}

/// The self-check at load: rows scored by R and by the native engine, compared bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfCheck {
    pub passed: bool,
    /// Rows compared, per `type`.
    pub rows: u32,
    pub types: Vec<String>,
    /// Values that differ (ties excepted).
    pub mismatches: u32,
    /// Rows whose class is a tie of votes, which R breaks at random: the native label may
    /// differ there, and such a difference is not a mismatch.
    pub ties: u32,
    /// What differed first, or why the check could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl SelfCheck {
    /// A check that could not run (no sample rows, a forest that does not compile, R or
    /// the native engine not answering), and why.
    pub fn failed(types: Vec<String>, message: String) -> SelfCheck {
        SelfCheck { passed: false, rows: 0, types, mismatches: 0, ties: 0, message: Some(message) }
    }
}

/// What forest splitting needs to know about a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForestInfo {
    pub n_trees: u32,
    /// The classes in level order for a classification forest; `None` for regression.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

/// What a worker tells dispatchers about itself on the catalog exchange, every
/// `announce_interval_ms`. Dispatchers forget a worker after three intervals of silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub version: u32,
    pub worker: String,
    pub models: Vec<ModelInfo>,
    /// R hosts up now, and the configured number.
    pub live_hosts: u32,
    pub n_hosts: u32,
    pub interval_ms: u64,
    /// True once the worker is shutting down: it takes no new requests.
    #[serde(default)]
    pub draining: bool,
    /// Model packages in its directory that failed to load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<LoadFailure>,
}

/// How a model is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// `predict(model, newdata, type = ...)`.
    Predict,
    /// `predict_fn(model, newdata)` from `score.R`.
    PredictFn,
    /// Azure ML entry script: `init()` returns `function(json_string) -> json_string`.
    AzureMl,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Encodes any wire type as a named-field MessagePack map.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a wire type from MessagePack.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

impl ModelInfo {
    /// The reference requests use for this model.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef { name: self.name.clone(), version: self.version.clone() }
    }

    /// Whether this is `name`, at `version` when one is asked for.
    pub fn matches(&self, name: &str, version: Option<&str>) -> bool {
        self.name == name && version.is_none_or(|v| self.version.as_deref() == Some(v))
    }
}

impl ErrorCode {
    /// The code as it appears on the wire (`invalid_input`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::RError => "r_error",
            ErrorCode::HostCrashed => "host_crashed",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into() }
    }
}

impl Reply {
    pub fn error(id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply {
            version: PROTOCOL_VERSION,
            id: id.into(),
            outcome: Outcome::Error(ErrorBody::new(code, message)),
            timings: Timings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_order_as_numbered() {
        let check = |a: Option<&str>, b: Option<&str>, expected| {
            assert_eq!(compare_versions(a, b), expected, "{a:?} vs {b:?}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b:?} vs {a:?}");
        };
        check(Some("2"), Some("10"), Less);
        check(Some("1.9"), Some("1.10"), Less);
        check(Some("1.0"), Some("1.0.1"), Less);
        check(Some("v2"), Some("v10"), Less);
        check(Some("2024-01-31"), Some("2024-02-01"), Less);
        check(Some("01"), Some("1"), Less);
        check(Some("blue"), Some("green"), Less);
        check(Some("3"), Some("3"), Equal);
        check(None, Some("1"), Less);
        check(None, None, Equal);
    }
}
