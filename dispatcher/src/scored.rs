//! Scoring on behalf of other servers' APIs (vetiver, the Open Inference Protocol): the
//! same path as `POST /score`, with the predictions handed back as JSON to reshape.
//!
//! Going through [`score::score`] rather than a second scoring path keeps one place that
//! checks bodies, applies deadlines, limits requests in flight and reads the reply.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::request_log::RequestId;
use crate::score::{self, ScoreQuery};
use crate::AppState;

/// Predictions as `POST /score` answers them, with the response headers worth keeping
/// (`x-rfleet-*` timings).
pub(crate) struct Scored {
    /// A plain array for one prediction vector, an array of row objects for several columns,
    /// or an Azure ML entry script's own JSON.
    pub json: Value,
    pub headers: HeaderMap,
}

/// Which model a convention route scores with.
pub(crate) struct Target {
    pub name: String,
    pub version: Option<String>,
}

/// Scores `body` like `POST /score` would. A failure comes back as the response `/score`
/// would have given (rfleet's `{"message", "code"}` shape), for the caller to pass on or
/// reshape.
pub(crate) async fn score_json(
    state: AppState,
    target: Target,
    request_id: RequestId,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Scored, Response> {
    let response = score::score(state, target.name, target.version, request_id, query, headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    if !response.status().is_success() {
        return Err(response);
    }
    let (parts, body) = response.into_parts();
    // The reply was encoded by this process moments ago and is already bounded by it.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the scoring answer: {e}")).into_response())?;
    let json = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::coded(protocol::ErrorCode::RError, format!("the model's answer is not JSON: {e}")).into_response()
    })?;
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_LENGTH);
    Ok(Scored { json, headers })
}

/// The request's own headers, minus those describing a body other than the one scored.
pub(crate) fn headers_for_new_body(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}
