//! Scoring: HTTP body in, [`protocol::Request`] out on the bus, [`protocol::Reply`] back.
//!
//! Everything that can be checked here is checked before publishing (body size, JSON shape,
//! the model's schema), so bad input costs no bus round trip and no R call, and the
//! worker receives a frame already in the model's column order and types.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bus::{ContentType, Outgoing};
use futures::StreamExt;
use protocol::json::{frame_from_slice, predictions_to_json, JsonError};
use protocol::message::SplitPolicy;
use protocol::{
    ErrorCode, Frame, Input, ModelInfo, ModelKind, NulAt, Options, Outcome, Reply, Request, Timings, NUL_IN_R,
};
use serde::Deserialize;
use tracing::Span;

use crate::error::ApiError;
use crate::request_log::RequestId;
use crate::routes::path_error;
use crate::AppState;

/// Overrides `server.request_timeout_ms` for one request.
pub const X_RFLEET_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-rfleet-timeout-ms");
/// The longest deadline a request may ask for: a day. A real-time request waiting longer
/// is a mistake, and a bound keeps deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Passed through to the worker so traces cross the bus (W3C trace context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Bodies (and replies) at least this large are parsed and encoded on the blocking pool:
/// below it the work takes well under a millisecond and a thread hop would cost more.
pub const BLOCKING_THRESHOLD_BYTES: usize = 1024 * 1024;

/// Query parameters of the scoring routes. Unknown ones are ignored: Azure ML clients
/// add their own.
#[derive(Debug, Default, Deserialize)]
pub struct ScoreQuery {
    /// `?type=prob`: passed to R's `predict` as `type`.
    #[serde(rename = "type")]
    pub predict_type: Option<String>,
    /// `?split=never|auto|always`: whether the worker may split this request across its
    /// R hosts (default: the model's policy).
    pub split: Option<SplitPolicy>,
}

/// `POST /score`: the only served model, else the configured default.
pub async fn score_default(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = state.default_model_name()?;
    score(state, name, None, request_id, query, headers, body).await
}

/// `POST /models/{name}/score`.
pub async fn score_model(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    score(state, name, None, request_id, query, headers, body).await
}

/// `POST /models/{name}/versions/{version}/score`.
pub async fn score_model_version(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((name, version)) = path.map_err(path_error)?;
    score(state, name, Some(version), request_id, query, headers, body).await
}

pub(crate) async fn score(
    state: AppState,
    name: String,
    version: Option<String>,
    RequestId(request_id): RequestId,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Span::current().record("model", name.as_str());
    let shared = &state.shared;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    // `?type=` would reach R as "" and fail there with a message about R's arguments.
    match query.predict_type.as_deref() {
        Some("") => {
            return Err(ApiError::bad_request(
                "`type` is empty: leave it out for the model's default, or name a type its predict accepts (e.g. prob)",
            ))
        }
        Some(predict_type) if predict_type.contains('\0') => {
            return Err(ApiError::bad_request(format!("`type` holds a NUL character, {NUL_IN_R}")))
        }
        _ => {}
    }

    // The caller's clock starts now: time spent reading the body counts against it.
    let timeout_ms = timeout_ms(&headers, shared.server.request_timeout_ms)?;
    let (deadline, deadline_ms) = deadline_after(timeout_ms)?;

    let info = state.find_model(&name, version.as_deref())?;

    // Held until the reply is turned into a response. Taken before reading the body, so
    // the limit also bounds the memory that bodies in flight hold.
    let _permit = shared.inflight.clone().try_acquire_owned().map_err(|_| {
        ApiError::coded(
            ErrorCode::Overloaded,
            format!("too many requests in flight (limit {}); retry later", shared.server.max_inflight),
        )
    })?;

    let body = read_body(body, &headers, shared.server.max_body_bytes).await?;

    let correlation_id = uuid::Uuid::new_v4().to_string();
    let request = Request {
        version: protocol::PROTOCOL_VERSION,
        id: correlation_id.clone(),
        model: info.name.clone(),
        // The version whose schema was checked here, so the worker scores with the same one.
        model_version: info.version.clone(),
        deadline_ms: Some(deadline_ms),
        options: Options { predict_type: query.predict_type, split: query.split },
        traceparent: headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_string),
        request_id: Some(request_id),
        // Filled in by `encode_request`, which may run on another thread.
        input: Input::Json(String::new()),
    };
    let queue = shared.requester.queue_for(&info.name);
    let max_rows = shared.server.max_rows;
    let encoded = run_cpu(body.len(), move || encode_request(request, &info, &body, max_rows)).await?;

    let outgoing = Outgoing {
        correlation_id: correlation_id.clone(),
        queue,
        content_type: ContentType::MsgPack,
        body: encoded,
        expiration_ms: Some(timeout_ms),
    };
    let reply = shared.requester.call(outgoing, deadline).await.map_err(|e| ApiError::from_bus(e, timeout_ms))?;
    run_cpu(reply.len(), move || reply_to_response(&reply, &correlation_id)).await
}

impl AppState {
    /// The model `POST /score` means: the only one served, else the default, else a 404
    /// pointing at the named route.
    pub(crate) fn default_model_name(&self) -> Result<String, ApiError> {
        let models = self.shared.catalog.models();
        let mut names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if let [only] = names.as_slice() {
            return Ok(only.to_string());
        }
        if let Some(default) = &self.shared.default_model {
            return Ok(default.clone());
        }
        let message = if names.is_empty() {
            "POST /score needs a served model, and none is served yet".to_string()
        } else {
            format!(
                "POST /score needs exactly one served model or a default model; {} are served ({}) and none is \
                 the default: use POST /models/{{name}}/score",
                names.len(),
                names.join(", ")
            )
        };
        Err(ApiError::coded(ErrorCode::ModelNotFound, message))
    }
}

/// The request's timeout: the `x-rfleet-timeout-ms` header, else the configured default.
fn timeout_ms(headers: &HeaderMap, default_ms: u64) -> Result<u64, ApiError> {
    let Some(value) = headers.get(&X_RFLEET_TIMEOUT_MS) else { return Ok(default_ms) };
    let valid = 1..=MAX_TIMEOUT_MS;
    value.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|ms| valid.contains(ms)).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid {X_RFLEET_TIMEOUT_MS} header '{}': expected a whole number of milliseconds from 1 to \
             {MAX_TIMEOUT_MS}",
            String::from_utf8_lossy(value.as_bytes())
        ))
    })
}

/// The deadline `timeout_ms` from now, as the bus waits for it (`Instant`) and as it travels
/// in the request (ms since the Unix epoch), taken at the same moment so they agree.
fn deadline_after(timeout_ms: u64) -> Result<(Instant, u64), ApiError> {
    let too_far = || ApiError::bad_request(format!("{X_RFLEET_TIMEOUT_MS} of {timeout_ms} ms is too far away"));
    let now = Instant::now();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let deadline = now.checked_add(Duration::from_millis(timeout_ms)).ok_or_else(too_far)?;
    let deadline_ms = now_ms.checked_add(timeout_ms).ok_or_else(too_far)?;
    Ok((deadline, deadline_ms))
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit_bytes`: at
/// once from `Content-Length`, else while streaming (chunked bodies).
async fn read_body(body: Body, headers: &HeaderMap, limit_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::BodyTooLarge { limit_bytes };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
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

/// Parses and checks the body for `info`'s kind of model and encodes the request carrying it.
fn encode_request(mut request: Request, info: &ModelInfo, body: &[u8], max_rows: usize) -> Result<Vec<u8>, ApiError> {
    request.input = match info.kind {
        // Azure ML entry scripts parse the body themselves; it only has to be JSON.
        ModelKind::AzureMl => Input::Json(json_text(body)?),
        ModelKind::Predict | ModelKind::PredictFn => {
            let frame = frame_from_slice(body).map_err(|e| match e {
                JsonError::Syntax(_) | JsonError::Empty => ApiError::bad_request(e.to_string()),
                _ => ApiError::invalid_input(e.to_string()),
            })?;
            // Checked before the schema: a huge request is refused without more work.
            if frame.n_rows > max_rows {
                return Err(ApiError::TooManyRows { rows: frame.n_rows, limit_rows: max_rows });
            }
            let frame = match &info.schema {
                Some(schema) => {
                    protocol::conform(&frame, schema).map_err(|e| ApiError::invalid_input(e.to_string()))?
                }
                None => frame,
            };
            refuse_nul(&frame)?;
            Input::Frame(frame)
        }
    };
    protocol::encode(&request).map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))
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
fn json_text(body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(JsonError::Empty.to_string()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: the body is not UTF-8 ({e})")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| ApiError::bad_request(JsonError::Syntax(e.to_string()).to_string()))?;
    Ok(text.to_string())
}

/// Decodes the worker's reply into the HTTP answer, with its timings as headers.
fn reply_to_response(bytes: &[u8], correlation_id: &str) -> Result<Response, ApiError> {
    let reply: Reply =
        protocol::decode(bytes).map_err(|e| ApiError::internal(format!("the worker's reply is unreadable: {e}")))?;
    if reply.id != correlation_id {
        // The bus routes by correlation id, so a mismatch is a transport or worker bug.
        return Err(ApiError::internal(format!(
            "the worker's reply carries id '{}' but the request's id is '{correlation_id}'",
            reply.id
        )));
    }
    let mut response = match reply.outcome {
        Outcome::Predictions(frame) => {
            // A frame whose factor codes point past its levels would panic when rendered.
            frame
                .validate()
                .map_err(|e| ApiError::internal(format!("the worker's reply holds an invalid frame: {e}")))?;
            Json(predictions_to_json(&frame)).into_response()
        }
        // The entry script's JSON goes back byte for byte, as Azure ML returns it.
        Outcome::Json(text) => ([(header::CONTENT_TYPE, ContentType::JSON)], text).into_response(),
        Outcome::Error(error) => ApiError::Coded(error).into_response(),
    };
    insert_timings(response.headers_mut(), &reply.timings);
    Ok(response)
}

fn insert_timings(headers: &mut HeaderMap, timings: &Timings) {
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
}
