//! Request ids and the access log: every request gets an id, a span and one log line.
//!
//! Azure ML clients correlate with `x-request-id` and `x-ms-client-request-id`; each one a
//! caller sent is echoed unchanged, and a request that carried neither gets a fresh UUID
//! back as `x-request-id`, so every answer can be found in the logs.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;
use tracing::Instrument;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");

/// The request's id as handlers see it (a request extension): the caller's `x-request-id`,
/// else its `x-ms-client-request-id`, else a generated one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: assigns the request id, runs the request inside a span carrying it (handlers
/// add `model`), echoes the ids and logs status and latency.
pub async fn track(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let sent_request_id = request.headers().get(&X_REQUEST_ID).cloned();
    let sent_client_id = request.headers().get(&X_MS_CLIENT_REQUEST_ID).cloned();
    let generated = match (&sent_request_id, &sent_client_id) {
        (None, None) => {
            Some(HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a valid header value"))
        }
        _ => None,
    };
    let id_value = sent_request_id.as_ref().or(sent_client_id.as_ref()).or(generated.as_ref());
    let request_id = id_value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    request.extensions_mut().insert(RequestId(request_id.clone()));

    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        model = Empty,
        status = Empty,
        latency_ms = Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;

    let headers = response.headers_mut();
    if let Some(value) = sent_request_id.or(generated) {
        headers.insert(X_REQUEST_ID, value);
    }
    if let Some(value) = sent_client_id {
        headers.insert(X_MS_CLIENT_REQUEST_ID, value);
    }

    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| {
        // Server errors are worth a look; everything else is routine traffic.
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::info!(status, latency_ms, "request done");
        }
    });
    response
}
