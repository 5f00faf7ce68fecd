//! The one scoring call every protocol goes through: [`execute`] a [`ScoreCall`], get
//! typed predictions ([`Scored`]) or a [`Failure`].
//!
//! The call owns everything the protocols share, in this order: the version that scores
//! ([`AppState::resolve`]: a pinned request's own, else the routing rule's choice, so the
//! schema check uses the version that will score), the in-flight permit, the body read under its limit, the protocol's parser and the
//! schema checks (off the async threads for large bodies), publishing, awaiting the reply
//! until the deadline, and decoding it; for a share of unpinned requests, a copy to the
//! model's shadow version ([`crate::mirror`]), which never delays or changes the answer.
//! Every answer says which version answered ([`X_RFLEET_MODEL_VERSION`]). A protocol (Azure ML's `/score`, vetiver, the Open
//! Inference Protocol, batch jobs) is a [`Parse`] in front and a renderer behind, so none
//! of them can skip a limit or parse an HTTP answer back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use client::{Deadline, Publication, TraceParent};
use futures::StreamExt;
use protocol::json::{frame_from_slice, JsonError};
use protocol::{
    ErrorBody, ErrorCode, Frame, Input, ModelInfo, ModelKind, NulAt, Options, Outcome, Request, Timings, NUL_IN_R,
};
use tracing::Span;

use crate::catalog::Served;
use crate::error::ApiError;
use crate::metrics;
use crate::routing::{self, Candidate};
use crate::AppState;

/// Overrides `server.request_timeout_ms` for one request.
pub const X_RFLEET_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-rfleet-timeout-ms");
/// The longest deadline a request may ask for: a day. A real-time request waiting longer
/// is a mistake, and a bound keeps deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// The version of the model that answered (the reply's `timings.model_version`, else the
/// version the request was published for), on every scoring answer once a version is chosen.
pub const X_RFLEET_MODEL_VERSION: HeaderName = HeaderName::from_static("x-rfleet-model-version");
/// Azure ML's deployment selector: on `/score` and `/models/{name}/score`, pins the
/// request to the version it names.
pub const AZUREML_MODEL_DEPLOYMENT: HeaderName = HeaderName::from_static("azureml-model-deployment");
/// The caller's W3C trace context, which the request's SERVER span continues
/// ([`crate::request_id`]); the worker gets the PRODUCER span's, so traces cross the bus.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Bodies (and replies) at least this large are parsed and encoded on the blocking pool:
/// below it the work takes well under a millisecond and a thread hop would cost more.
pub const BLOCKING_THRESHOLD_BYTES: usize = 1024 * 1024;

/// Which model scores: a name, and a version when the request pins one (a `/versions/{v}/`
/// route, or Azure ML's `azureml-model-deployment` header); else the routing rule chooses.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub version: Option<String>,
}

/// The version a request scores with, and the shadow version a copy of it goes to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub info: Arc<ModelInfo>,
    pub mirror: Option<Arc<ModelInfo>>,
}

/// One scoring request, as a protocol hands it to [`execute`].
pub struct ScoreCall<P> {
    pub target: Target,
    /// The request body, unread: [`execute`] reads it once the request holds a permit.
    pub body: Body,
    /// How the protocol turns the body into the request's input.
    pub parse: P,
    /// Options from the URL (`?type=`, `?split=`); a parser may add `type` from the body.
    pub options: Options,
    /// What the request's headers say: the deadline and the declared length.
    pub headers: CallHeaders,
    /// The request id (`x-request-id` or `x-ms-client-request-id`), for the worker's logs.
    pub request_id: String,
}

/// The headers the call reads, parsed before anything else so a bad one costs nothing.
#[derive(Debug, Clone)]
pub struct CallHeaders {
    /// `x-rfleet-timeout-ms`, when sent.
    pub timeout_ms: Option<u64>,
    /// `Content-Length`, when sent: a body declared too large is refused unread.
    pub content_length: Option<u64>,
}

impl CallHeaders {
    pub fn from_headers(headers: &HeaderMap) -> Result<CallHeaders, ApiError> {
        Ok(CallHeaders {
            timeout_ms: timeout_header(headers)?,
            content_length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok()),
        })
    }
}

/// A protocol's reading of a request body: the input for the model's kind, and whatever
/// the protocol's renderer needs back ([`Parse::Extra`]).
pub trait Parse: Send + 'static {
    type Extra: Send + 'static;

    /// Parses `body` for `info`'s model. Runs on the blocking pool for large bodies, so it
    /// may take its time; it must not block on I/O.
    fn parse(self, body: &[u8], info: &ModelInfo, max_rows: usize) -> Result<Parsed<Self::Extra>, ApiError>;
}

/// What a [`Parse`] found in the body.
pub struct Parsed<E> {
    pub input: Input,
    /// `type` given in the body (the Open Inference Protocol's `parameters.type`), which
    /// overrides the URL's.
    pub predict_type: Option<String>,
    /// The engine asked for in the body (`parameters.engine`), which overrides the URL's.
    pub engine: Option<protocol::Engine>,
    pub extra: E,
}

/// The body every rfleet and vetiver scoring route takes: rows, pandas' split orientation,
/// or either inside `{"data": ...}` (see `protocol::json`); an Azure ML entry script gets
/// the JSON text as it came.
pub struct Table;

impl Parse for Table {
    type Extra = ();

    fn parse(self, body: &[u8], info: &ModelInfo, max_rows: usize) -> Result<Parsed<()>, ApiError> {
        let input = match info.kind {
            // Azure ML entry scripts parse the body themselves; it only has to be JSON.
            ModelKind::AzureMl => Input::Json(json_text(body)?),
            ModelKind::Predict | ModelKind::PredictFn => {
                let frame = frame_from_slice(body).map_err(json_error)?;
                Input::Frame(checked_frame(frame, info, max_rows)?)
            }
        };
        Ok(Parsed { input, predict_type: None, engine: None, extra: () })
    }
}

/// What the model answered, typed.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Predictions as a frame: one column for a prediction vector, several for a matrix or
    /// a data.frame.
    Predictions(Frame),
    /// An Azure ML entry script's JSON text, as it returned it.
    Json(String),
}

/// A scored request: the model that scored it, its answer, where the time went (with
/// `timings.model_version` the version that answered, filled in with the version published
/// for when the worker's reply does not say), and what the protocol's parser kept.
pub struct Scored<E> {
    pub model: Arc<ModelInfo>,
    pub answer: Answer,
    pub timings: Timings,
    pub extra: E,
}

/// A request that failed, with the worker's timings when a worker answered it, and the
/// version it was for once one was chosen.
#[derive(Debug)]
pub struct Failure {
    pub error: ApiError,
    pub timings: Option<Box<Timings>>,
    pub model_version: Option<String>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { error, timings: None, model_version: None }
    }
}

impl Failure {
    /// The same failure, said to be about `version`.
    fn of_version(error: ApiError, version: &Option<String>) -> Self {
        Failure { error, timings: None, model_version: version.clone() }
    }

    /// A failure of a request a worker answered (its timings say which version).
    pub fn answered(error: ApiError, timings: &Timings) -> Self {
        Failure { error, timings: Some(Box::new(timings.clone())), model_version: timings.model_version.clone() }
    }

    /// The headers of the answer: the worker's timings and the version.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        if let Some(timings) = &self.timings {
            insert_timings(headers, timings);
        }
        insert_model_version(headers, self.model_version.as_deref());
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        self.insert_headers(&mut headers);
        let mut response = self.error.into_response();
        response.headers_mut().extend(headers);
        response
    }
}

/// Scores one request; see the module's documentation for what it owns. A request for a
/// version the catalog knows is counted in the scoring metrics by its outcome.
pub async fn execute<P: Parse>(state: &AppState, call: ScoreCall<P>) -> Result<Scored<P::Extra>, Failure> {
    let started = Instant::now();
    let trace = crate::request_id::current_trace();
    let mut seen = Seen::default();
    let scored = score(state, call, trace.as_ref(), &mut seen).await;
    if let Some(info) = &seen.info {
        let model = metrics::model(&info.name, info.version.as_deref());
        let (outcome, timings) = match &scored {
            Ok(scored) => (metrics::Outcome::Success, Some(&scored.timings)),
            Err(failure) => (metrics::outcome_of(&failure.error), failure.timings.as_deref()),
        };
        model.request(outcome, started.elapsed(), trace.as_ref());
        if let (Some(reply_wait), Some(timings)) = (seen.reply_wait, timings) {
            model.replied(reply_wait, timings.worker_ms, trace.as_ref());
        }
        if outcome != metrics::Outcome::Success && telemetry::trace::exporting() {
            telemetry::trace::attribute(&Span::current(), "rfleet.outcome", outcome.as_str());
        }
    }
    scored
}

/// What [`score`] got to before it returned: the version chosen, and how long the reply
/// took once published.
#[derive(Default)]
struct Seen {
    info: Option<Arc<ModelInfo>>,
    reply_wait: Option<Duration>,
}

async fn score<P: Parse>(
    state: &AppState,
    call: ScoreCall<P>,
    trace: Option<&TraceParent>,
    seen: &mut Seen,
) -> Result<Scored<P::Extra>, Failure> {
    let ScoreCall { target, body, parse, mut options, headers, request_id } = call;
    Span::current().record("model", target.name.as_str());
    let shared = &state.shared;
    // Resolved first, so a request refused for a bad header or `type` still counts under
    // its version; the errors keep their order.
    let resolved = state.resolve(&target);
    if let Ok(resolved) = &resolved {
        seen.info = Some(resolved.info.clone());
    }
    check_predict_type(options.predict_type.as_deref())?;

    // The caller's clock starts now: time spent reading the body counts against it.
    let timeout_ms = headers.timeout_ms.unwrap_or(shared.server.request_timeout_ms);
    let deadline = Deadline::after_ms(timeout_ms)
        .ok_or_else(|| ApiError::bad_request(format!("{X_RFLEET_TIMEOUT_MS} of {timeout_ms} ms is too far away")))?;

    let Resolved { info, mirror } = resolved?;
    let version = info.version.clone();
    if let Some(version) = &version {
        Span::current().record("model_version", version.as_str());
    }

    // Held until the reply is decoded. Taken before reading the body, so the limit also
    // bounds the memory that bodies in flight hold.
    let _permit = shared.inflight.clone().try_acquire_owned().map_err(|_| {
        Failure::of_version(
            ApiError::coded(
                ErrorCode::Overloaded,
                format!("too many requests in flight (limit {}); retry later", shared.server.max_inflight),
            ),
            &version,
        )
    })?;

    let body = read_body(body, headers.content_length, shared.server.max_body_bytes)
        .await
        .map_err(|e| Failure::of_version(e, &version))?;

    // The PRODUCER spans first, so the encoded requests carry the trace context their
    // messages' headers will.
    let requester = &*shared.requester;
    let publication =
        Publication::new(requester, &info.name, info.version.as_deref(), uuid::Uuid::new_v4().to_string(), trace);
    let mirror_publication = mirror.as_ref().map(|mirror| {
        Publication::new(requester, &info.name, mirror.version.as_deref(), uuid::Uuid::new_v4().to_string(), trace)
    });
    let correlation_id = publication.correlation_id().to_string();
    let traceparent = publication.traceparent().to_string();
    let max_rows = shared.server.max_rows;
    let id = correlation_id.clone();
    let copy_request_id = request_id.clone();
    // The model's entry travels with the work and back, for the renderer.
    let (encoded, extra, info, copy) = run_cpu(body.len(), move || {
        let parsed = parse.parse(&body, &info, max_rows)?;
        if parsed.predict_type.is_some() {
            check_predict_type(parsed.predict_type.as_deref())?;
            options.predict_type = parsed.predict_type;
        }
        if parsed.engine.is_some() {
            options.engine = parsed.engine;
        }
        let mut request = Request {
            version: protocol::PROTOCOL_VERSION,
            id,
            model: info.name.clone(),
            // The version whose schema was checked here, so the worker scores with the same one.
            model_version: info.version.clone(),
            deadline_ms: Some(deadline.epoch_ms),
            options,
            traceparent: Some(traceparent),
            request_id: Some(request_id),
            input: parsed.input,
        };
        let encoded =
            protocol::encode(&request).map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
        // Only a request that parsed is mirrored, checked against the shadow's own schema.
        let copy = mirror.zip(mirror_publication).map(|(mirror, publication)| {
            let mirror_version = mirror.version.clone().unwrap_or_default();
            request.id = publication.correlation_id().to_string();
            request.model_version = mirror.version.clone();
            request.traceparent = Some(publication.traceparent().to_string());
            let body = mirror_input(request.input.clone(), &info, &mirror, max_rows).and_then(|input| {
                request.input = input;
                protocol::encode(&request).map_err(|e| format!("cannot encode the request: {e}"))
            });
            crate::mirror::Copy {
                model: info.name.clone(),
                primary_version: info.version.clone(),
                mirror_version,
                request_id: copy_request_id,
                publication,
                body,
                timeout_ms,
            }
        });
        Ok::<_, ApiError>((encoded, parsed.extra, info, copy))
    })
    .await
    .map_err(|e| Failure::of_version(e, &version))?;
    let primary_tx = copy.and_then(|copy| shared.mirrors.send(shared.requester.clone(), copy));

    let published = Instant::now();
    let reply = publication
        .send(requester, encoded, &deadline)
        .await
        .map_err(|e| Failure::of_version(ApiError::from_bus(e, timeout_ms), &version))?;
    seen.reply_wait = Some(published.elapsed());
    let (answer, mut timings) = run_cpu(reply.len(), move || decode_reply(&reply, &correlation_id))
        .await
        .map_err(|e| Failure::of_version(e, &version))?;
    if timings.model_version.is_none() {
        timings.model_version = version;
    }
    if let Some(primary_tx) = primary_tx {
        // The copy's task compares; it may be gone (its own deadline passed) and that is fine.
        let _ = primary_tx.send(answer.clone());
    }
    match answer {
        Ok(answer) => Ok(Scored { model: info, answer, timings, extra }),
        Err(error) => Err(Failure::answered(ApiError::Coded(error), &timings)),
    }
}

/// The primary's input, as the shadow version `mirror` takes it: a frame fitted to its own
/// schema; JSON text as it is, if both are entry scripts.
fn mirror_input(input: Input, primary: &ModelInfo, mirror: &ModelInfo, max_rows: usize) -> Result<Input, String> {
    let json_kind = |info: &ModelInfo| info.kind == ModelKind::AzureMl;
    if json_kind(primary) != json_kind(mirror) {
        return Err("the shadow version takes another kind of input than the primary".into());
    }
    match input {
        Input::Frame(frame) => checked_frame(frame, mirror, max_rows).map(Input::Frame).map_err(|e| e.to_string()),
        Input::Json(text) => Ok(Input::Json(text)),
    }
}

impl AppState {
    /// The version `target` scores with: a pinned one as it is (or a 404 naming the live
    /// versions, a 503 naming a load failure); else the routing rule's choice over the
    /// catalog's versions and the traffic file's weights ([`routing`]), and, for the
    /// traffic file's share, the shadow version a copy goes to.
    pub(crate) fn resolve(&self, target: &Target) -> Result<Resolved, ApiError> {
        let snapshot = self.shared.catalog.snapshot();
        if let Some(version) = &target.version {
            return match snapshot.find(&target.name, Some(version)) {
                Some(served) => Ok(Resolved { info: served.info.clone(), mirror: None }),
                None => Err(self.not_served(&snapshot, &target.name, Some(version))),
            };
        }
        let versions: Vec<&Served> = snapshot.versions(&target.name).collect();
        if versions.is_empty() {
            return Err(self.not_served(&snapshot, &target.name, None));
        }
        let traffic = self.shared.traffic.current();
        let config = traffic.model(&target.name);
        let candidates: Vec<Candidate> = versions.iter().map(|s| Candidate::from(*s)).collect();
        let weights = config.and_then(|c| c.weights.as_ref());
        let chosen = routing::route(&candidates, weights, fastrand::f64()).unwrap_or(versions.len() - 1);
        let info = versions[chosen].info.clone();
        let mirror = config
            .and_then(|c| c.mirror.as_ref())
            .filter(|m| fastrand::f64() * 100.0 < f64::from(m.percent))
            .filter(|m| info.version.as_deref() != Some(m.version.as_str()))
            .and_then(|m| snapshot.find(&target.name, Some(&m.version)))
            .map(|s| s.info.clone());
        Ok(Resolved { info, mirror })
    }
}

/// `?type=` would reach R as "" and fail there with a message about R's arguments, and a
/// NUL character cannot be in an R string.
fn check_predict_type(predict_type: Option<&str>) -> Result<(), ApiError> {
    match predict_type {
        Some("") => Err(ApiError::bad_request(
            "`type` is empty: leave it out for the model's default, or name a type its predict accepts (e.g. prob)",
        )),
        Some(predict_type) if predict_type.contains('\0') => {
            Err(ApiError::bad_request(format!("`type` holds a NUL character, {NUL_IN_R}")))
        }
        _ => Ok(()),
    }
}

/// The `x-rfleet-timeout-ms` header, when sent.
fn timeout_header(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(&X_RFLEET_TIMEOUT_MS) else { return Ok(None) };
    let valid = 1..=MAX_TIMEOUT_MS;
    let timeout_ms =
        value.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|ms| valid.contains(ms)).ok_or_else(
            || {
                ApiError::bad_request(format!(
                    "invalid {X_RFLEET_TIMEOUT_MS} header '{}': expected a whole number of milliseconds from 1 to \
                     {MAX_TIMEOUT_MS}",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            },
        )?;
    Ok(Some(timeout_ms))
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit_bytes`: at
/// once from `Content-Length`, else while streaming (chunked bodies). A body that breaks
/// off is a 400, not a 413.
async fn read_body(body: Body, declared: Option<u64>, limit_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::BodyTooLarge { limit_bytes };
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit_bytes {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Runs CPU work proportional to `size_bytes` inline when small, else on the blocking pool
/// so a large body never stalls the other requests on this runtime thread.
async fn run_cpu<T: Send + 'static>(size_bytes: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    if size_bytes < BLOCKING_THRESHOLD_BYTES {
        return work();
    }
    let span = Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(work)).await {
        Ok(value) => value,
        // Re-raise on this task, where the catch-panic layer turns it into a JSON 500.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task cancelled: {e}"),
    }
}

/// A body that is not a table: malformed JSON is the client's syntax (400), a well-formed
/// body of the wrong shape is input that does not fit (422).
pub fn json_error(error: JsonError) -> ApiError {
    match error {
        JsonError::Syntax(_) | JsonError::Empty => ApiError::bad_request(error.to_string()),
        _ => ApiError::invalid_input(error.to_string()),
    }
}

/// The checks every frame passes before it is published: the row limit (first, so a huge
/// request is refused without more work), the model's schema, and no NUL character R
/// would get.
pub fn checked_frame(frame: Frame, info: &ModelInfo, max_rows: usize) -> Result<Frame, ApiError> {
    if frame.n_rows > max_rows {
        return Err(ApiError::TooManyRows { rows: frame.n_rows, limit_rows: max_rows });
    }
    let frame = match &info.schema {
        Some(schema) => protocol::conform(&frame, schema).map_err(|e| ApiError::invalid_input(e.to_string()))?,
        None => frame,
    };
    refuse_nul(&frame)?;
    Ok(frame)
}

/// Refuses a frame with a NUL character in a string R would get: trying to make one ends
/// the R host, so one request would cost two hosts (found by schemathesis).
fn refuse_nul(frame: &Frame) -> Result<(), ApiError> {
    let message = match frame.find_nul() {
        None => return Ok(()),
        Some(NulAt::ColumnName(name)) => format!("column {name:?}: its name holds a NUL character, {NUL_IN_R}"),
        Some(NulAt::Value { column, row }) => format!("column '{column}': a NUL character in row {row}, {NUL_IN_R}"),
        Some(NulAt::Level { column }) => format!("column '{column}': a level holds a NUL character, {NUL_IN_R}"),
    };
    Err(ApiError::invalid_input(message))
}

/// The body as a string, if it is well-formed JSON.
pub fn json_text(body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(JsonError::Empty.to_string()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: the body is not UTF-8 ({e})")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| ApiError::bad_request(JsonError::Syntax(e.to_string()).to_string()))?;
    Ok(text.to_string())
}

/// Decodes the worker's reply: its answer (or the error it answered) and its timings.
pub(crate) fn decode_reply(
    bytes: &[u8],
    correlation_id: &str,
) -> Result<(Result<Answer, ErrorBody>, Timings), ApiError> {
    let reply = client::read_reply(bytes, correlation_id).map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = match reply.outcome {
        Outcome::Predictions(frame) => {
            // A frame whose factor codes point past its levels would panic when rendered.
            frame
                .validate()
                .map_err(|e| ApiError::internal(format!("the worker's reply holds an invalid frame: {e}")))?;
            Ok(Answer::Predictions(frame))
        }
        Outcome::Json(text) => Ok(Answer::Json(text)),
        Outcome::Error(error) => Err(error),
    };
    Ok((answer, reply.timings))
}

/// The reply's timings as `x-rfleet-*` response headers.
pub fn insert_timings(headers: &mut HeaderMap, timings: &Timings) {
    let mut insert = |name: &'static str, value: String| {
        // A worker id that is not a valid header value is left out rather than failing the reply.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    insert("x-rfleet-worker", timings.worker.clone());
    if let Some(pid) = timings.host_pid {
        insert("x-rfleet-host-pid", pid.to_string());
    }
    insert("x-rfleet-queue-ms", format!("{:.3}", timings.queue_ms));
    insert("x-rfleet-r-ms", format!("{:.3}", timings.r_ms));
    insert("x-rfleet-attempts", timings.attempts.to_string());
    if let Some(path) = &timings.path {
        insert("x-rfleet-path", path.clone());
    }
    insert_model_version(headers, timings.model_version.as_deref());
}

/// [`X_RFLEET_MODEL_VERSION`], for a versioned model.
pub fn insert_model_version(headers: &mut HeaderMap, version: Option<&str>) {
    if let Some(value) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(X_RFLEET_MODEL_VERSION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// Too large by its header or while streaming is a 413; a body that breaks off is the
    /// client's 400, never a 413 (regression: the Open Inference Protocol answered 413).
    #[tokio::test]
    async fn body_limits_and_broken_bodies() {
        let chunks = |parts: Vec<Result<&'static str, std::io::Error>>| Body::from_stream(futures::stream::iter(parts));
        let check =
            |result: Result<Vec<u8>, ApiError>, expected: Result<&str, (StatusCode, &str)>| match (result, expected) {
                (Ok(bytes), Ok(want)) => assert_eq!(bytes, want.as_bytes()),
                (Err(e), Err((status, message))) => {
                    assert_eq!(e.status(), status, "{e}");
                    assert!(e.to_string().starts_with(message), "{e}");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            };
        check(read_body(chunks(vec![Ok("[1,"), Ok("2]")]), None, 5).await, Ok("[1,2]"));
        let too_large = (StatusCode::PAYLOAD_TOO_LARGE, "request body exceeds the limit of 5 bytes");
        check(read_body(chunks(vec![Ok("[1,"), Ok("2,3]")]), None, 5).await, Err(too_large));
        check(read_body(chunks(vec![Ok("[1]")]), Some(6), 5).await, Err(too_large));
        let broken = vec![Ok("[1,"), Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))];
        check(read_body(chunks(broken), None, 5).await, Err((StatusCode::BAD_REQUEST, "cannot read the request body")));
    }
}
