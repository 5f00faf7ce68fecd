//! Request ids and the access log, from tower-http's request-id and trace layers: every
//! request gets an id, a span and one log line.
//!
//! Azure ML clients correlate with `x-request-id` and `x-ms-client-request-id`; each one a
//! caller sent is echoed unchanged, and a request that carried neither gets a fresh UUID
//! back as `x-request-id`, so every answer can be found in the logs.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Request, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestId, MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::field::Empty;
use tracing::Span;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");

/// The request's id as handlers see it: the caller's `x-request-id`, else its
/// `x-ms-client-request-id`, else the one generated for it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn of(headers: &HeaderMap) -> RequestId {
        let value = headers.get(&X_REQUEST_ID).or_else(|| headers.get(&X_MS_CLIENT_REQUEST_ID));
        RequestId(value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId::of(&parts.headers))
    }
}

/// A fresh UUID as `x-request-id`, unless the caller identified the request with
/// `x-ms-client-request-id`: that one is the id then, and no second one is made up.
#[derive(Clone, Copy)]
struct UnlessClientId;

impl MakeRequestId for UnlessClientId {
    fn make_request_id<B>(&mut self, request: &Request<B>) -> Option<tower_http::request_id::RequestId> {
        if request.headers().contains_key(&X_MS_CLIENT_REQUEST_ID) {
            return None;
        }
        MakeRequestUuid.make_request_id(request)
    }
}

/// The access log's span: handlers record `model` (and the version chosen, `model_version`) in it.
#[derive(Clone, Copy)]
struct RequestSpan;

impl MakeSpan<Body> for RequestSpan {
    fn make_span(&mut self, request: &Request<Body>) -> Span {
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %RequestId::of(request.headers()).0,
            model = Empty,
            model_version = Empty,
            status = Empty,
            latency_ms = Empty,
        )
    }
}

/// One line per request, with its status and latency.
#[derive(Clone, Copy)]
struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        let latency_ms = latency.as_secs_f64() * 1000.0;
        span.record("status", status);
        span.record("latency_ms", latency_ms);
        // Server errors are worth a look; everything else is routine traffic.
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::info!(status, latency_ms, "request done");
        }
    }
}

/// Wraps `router` in the layers, outermost first: assign the id, echo both ids on every
/// answer, then the span and the log line around everything inside (panics and fallbacks
/// included).
pub fn track(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, UnlessClientId))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
            .layer(PropagateRequestIdLayer::new(X_MS_CLIENT_REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(RequestSpan)
                    .on_request(())
                    .on_response(LogResponse)
                    .on_body_chunk(())
                    .on_eos(())
                    // `LogResponse` logs server errors already.
                    .on_failure(()),
            ),
    )
}
