//! Request ids, the request's SERVER span and trace, the HTTP metrics and the access log:
//! every request gets an id, a span in a trace (the caller's `traceparent`, or a new one),
//! one log line naming its trace id, and its place in `http_server_*`.
//!
//! Azure ML clients correlate with `x-request-id` and `x-ms-client-request-id`; each one a
//! caller sent is echoed unchanged, and a request that carried neither gets a fresh UUID
//! back as `x-request-id`, so every answer can be found in the logs.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Request, Response, Version};
use axum::middleware::Next;
use axum::Router;
use prometheus_client::metrics::histogram::Histogram;
use telemetry::trace::TraceParent;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestId, MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::metrics;
use crate::scoring::TRACEPARENT;

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

/// The SERVER span of a request (OpenTelemetry's HTTP server conventions when traces are
/// exported) and the access log's span: handlers record `model` (and the version chosen,
/// `model_version`) in it. Without export the OpenTelemetry fields stay empty (and out of
/// the log), so nothing OpenTelemetry-related is paid for per request.
fn request_span(request: &Request<Body>, method: &'static str, route: &'static str) -> Span {
    let request_id = RequestId::of(request.headers()).0;
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        model = Empty,
        model_version = Empty,
        status = Empty,
        latency_ms = Empty,
        trace_id = Empty,
        span_id = Empty,
        otel.name = Empty,
        otel.kind = Empty,
        otel.status_code = Empty,
        "http.request.method" = Empty,
        "url.path" = Empty,
        "http.route" = Empty,
        "network.protocol.version" = Empty,
        "user_agent.original" = Empty,
        "http.response.status_code" = Empty,
        "rfleet.request_id" = Empty,
    );
    if telemetry::trace::exporting() {
        // Before the trace is continued: that starts the OpenTelemetry span, whose kind
        // cannot change after.
        span.record("otel.kind", "server");
        // OpenTelemetry names a request no route matched by its method alone.
        if route == metrics::UNMATCHED {
            span.record("otel.name", method);
        } else {
            span.record("otel.name", format!("{method} {route}"));
            span.record("http.route", route);
        }
        span.record("http.request.method", method);
        span.record("url.path", request.uri().path());
        span.record("network.protocol.version", protocol_version(request.version()));
        let user_agent = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok());
        span.record("user_agent.original", user_agent.unwrap_or(""));
        span.record("rfleet.request_id", request_id.as_str());
    }
    span
}

/// OpenTelemetry's `network.protocol.version` of an HTTP version.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "",
    }
}

tokio::task_local! {
    /// The trace context of the request a handler serves (its SERVER span's), for what it
    /// publishes and for exemplars; set around every handler by [`serve_traced`].
    static CURRENT_TRACE: TraceParent;
}

/// The trace context of the request being served on this task, if any.
pub fn current_trace() -> Option<TraceParent> {
    CURRENT_TRACE.try_with(|trace| *trace).ok()
}

/// Serves one request within its span and trace, and records it: the access log line, the
/// HTTP metrics (by route template: every route counts, 404s and 401s included), and the
/// status on the span.
async fn serve_traced(request: Request<Body>, next: Next) -> Response<Body> {
    let arrived = Instant::now();
    let method = metrics::method_label(request.method());
    let route =
        request.extensions().get::<MatchedPath>().map_or(metrics::UNMATCHED, |m| metrics::route_label(m.as_str()));
    let span = request_span(&request, method, route);
    let incoming = request.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let trace = telemetry::trace::continue_trace(&span, incoming);
    let http = metrics::HttpRequest::start(method, route);
    let request = counted(request, http.request_size());
    let response = CURRENT_TRACE.scope(trace, next.run(request)).instrument(span.clone()).await;
    let latency = arrived.elapsed();
    let status = response.status().as_u16();
    http.responded(status, latency, &trace);
    let _entered = span.enter();
    log_response(&span, status, latency);
    counted(response, http.response_size())
}

/// The access log's line and the span's status.
fn log_response(span: &Span, status: u16, latency: Duration) {
    let latency_ms = latency.as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    if telemetry::trace::exporting() {
        span.record("http.response.status_code", status);
        // Per OpenTelemetry's HTTP server conventions, only a 5xx is the server's error.
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
    // Server errors are worth a look; everything else is routine traffic.
    if status >= 500 {
        tracing::warn!(status, latency_ms, "request failed");
    } else {
        tracing::info!(status, latency_ms, "request done");
    }
}

/// `message` with its body size observed in `sizes`: at once when the size is known
/// (`Content-Length`, or a body of known length), else counted as the body streams.
fn counted<M: HasBody>(mut message: M, sizes: Histogram) -> M {
    let declared = message
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| message.body().size_hint().exact());
    match declared {
        Some(bytes) => sizes.observe(bytes as f64),
        None => {
            let body = std::mem::take(message.body_mut());
            *message.body_mut() = Body::new(CountedBody { inner: body, bytes: 0, sizes: Some(sizes) });
        }
    }
    message
}

/// A request or a response, whose body [`counted`] measures.
trait HasBody {
    fn headers(&self) -> &HeaderMap;
    fn body(&self) -> &Body;
    fn body_mut(&mut self) -> &mut Body;
}

impl HasBody for Request<Body> {
    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }
    fn body(&self) -> &Body {
        Request::body(self)
    }
    fn body_mut(&mut self) -> &mut Body {
        Request::body_mut(self)
    }
}

impl HasBody for Response<Body> {
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
    fn body(&self) -> &Body {
        Response::body(self)
    }
    fn body_mut(&mut self) -> &mut Body {
        Response::body_mut(self)
    }
}

/// A body of unknown length, counted as it streams; the count is observed when it is
/// dropped (read to its end or not).
struct CountedBody {
    inner: Body,
    bytes: u64,
    sizes: Option<Histogram>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(sizes) = self.sizes.take() {
            sizes.observe(self.bytes as f64);
        }
    }
}

/// Wraps `router` in the layers, outermost first: assign the id, echo both ids on every
/// answer, then the span, the trace, the metrics and the log line around everything inside
/// (panics and fallbacks included). Layered on the router, so each route's layer sees the
/// route's template (`MatchedPath`).
pub fn track(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, UnlessClientId))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
            .layer(PropagateRequestIdLayer::new(X_MS_CLIENT_REQUEST_ID))
            .layer(axum::middleware::from_fn(serve_traced)),
    )
}
