//! The dispatcher's Prometheus metrics (docs/observability.md: "HTTP" and "Scoring, seen by
//! the dispatcher"), registered in telemetry's one registry when first touched ([`init`]).
//!
//! Labels are bounded by construction: `http_route` is the route template (axum's
//! `MatchedPath`, or [`UNMATCHED`]), never the path asked for; `model` and `version` are a
//! version the catalog knows, so a request for an unknown model or version is counted by
//! its HTTP route and status only. Recording is a few atomic adds: the scoring metrics of a
//! model version are looked up once and kept ([`model`]), route templates are interned, so
//! a request allocates no label strings.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::http::Method;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use telemetry::metrics::{
    histograms, phase_durations, register, register_with_unit, traced_histograms, Histograms, PhaseLabels,
    TraceExemplar, TracedHistograms, BODY_BYTES, HTTP_DURATION_SECONDS, PHASE_SECONDS,
};
use telemetry::trace::TraceParent;

use crate::error::ApiError;

/// The `http_route` of a request no route matched (an unknown path, whatever it was).
pub const UNMATCHED: &str = "unmatched";

pub use telemetry::metrics::Outcome;

/// The outcome of a failed scoring request. Exhaustive on purpose, like `status_for_code`:
/// a new error does not compile until someone decides what it counts as.
pub fn outcome_of(error: &ApiError) -> Outcome {
    match error {
        ApiError::Coded(body) => Outcome::of(body.code),
        ApiError::BodyTooLarge { .. }
        | ApiError::TooManyRows { .. }
        | ApiError::RouteNotFound { .. }
        | ApiError::MethodNotAllowed { .. }
        | ApiError::Unauthenticated { .. } => Outcome::ClientError,
        ApiError::NotReady(_) => Outcome::Rejected,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    http_request_method: &'static str,
    http_route: &'static str,
    http_response_status_code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    http_request_method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    http_request_method: &'static str,
    http_route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    version: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

struct DispatcherMetrics {
    http_duration: TracedHistograms<HttpLabels>,
    http_active: Family<MethodLabels, Gauge>,
    http_request_size: Histograms<RouteLabels>,
    http_response_size: Histograms<RouteLabels>,
    requests: Family<OutcomeLabels, Counter>,
    request_duration: TracedHistograms<OutcomeLabels>,
    reply_wait: Histograms<ModelLabels>,
    mirrored: Family<OutcomeLabels, Counter>,
    /// Each model version's handles, by name then version (`""` for none).
    models: RwLock<HashMap<String, HashMap<String, Arc<ModelMetrics>>>>,
    /// Route templates as `'static` label values: a finite set, each leaked once.
    routes: RwLock<HashMap<String, &'static str>>,
}

static METRICS: LazyLock<DispatcherMetrics> = LazyLock::new(|| {
    let metrics = DispatcherMetrics {
        http_duration: traced_histograms(HTTP_DURATION_SECONDS),
        http_active: Family::default(),
        http_request_size: histograms(BODY_BYTES),
        http_response_size: histograms(BODY_BYTES),
        requests: Family::default(),
        request_duration: traced_histograms(PHASE_SECONDS),
        reply_wait: histograms(PHASE_SECONDS),
        mirrored: Family::default(),
        models: RwLock::default(),
        routes: RwLock::default(),
    };
    register_with_unit(
        "http_server_request_duration",
        "HTTP requests, from arrival to the response head, by method, route template and status",
        Unit::Seconds,
        metrics.http_duration.clone(),
    );
    register("http_server_active_requests", "HTTP requests being served now, by method", metrics.http_active.clone());
    register_with_unit(
        "http_server_request_body_size",
        "HTTP request body sizes, by method and route template",
        Unit::Bytes,
        metrics.http_request_size.clone(),
    );
    register_with_unit(
        "http_server_response_body_size",
        "HTTP response body sizes, by method and route template",
        Unit::Bytes,
        metrics.http_response_size.clone(),
    );
    register(
        "rfleet_requests",
        "Scoring requests by model, version and outcome (success, client_error, r_error, timeout, rejected, internal)",
        metrics.requests.clone(),
    );
    register_with_unit(
        "rfleet_request_duration",
        "Scoring in the dispatcher, from the request's arrival at the scoring call to its answer, by model, version and outcome",
        Unit::Seconds,
        metrics.request_duration.clone(),
    );
    register_with_unit(
        "rfleet_reply_wait",
        "From publishing a request until its reply arrived (the bus and the worker), by model and version",
        Unit::Seconds,
        metrics.reply_wait.clone(),
    );
    register(
        "rfleet_mirrored",
        "Mirrored (shadow) copies by model, shadow version and outcome (same, different, failed, dropped)",
        metrics.mirrored.clone(),
    );
    metrics
});

/// Registers the dispatcher's metrics, and the bus's it publishes through (idempotent), so
/// a scrape shows every family before the first request.
pub fn init() {
    LazyLock::force(&METRICS);
    phase_durations();
    bus::metrics::init();
}

/// The scoring metrics of one model version, kept once looked up.
pub struct ModelMetrics {
    requests: [Counter; 6],
    durations: [HistogramWithExemplars<TraceExemplar>; 6],
    reply_wait: Histogram,
    queue_wait: HistogramWithExemplars<TraceExemplar>,
}

/// The scoring metrics of `model` at `version`: a catalog's model version, never a name a
/// request asked for.
pub fn model(name: &str, version: Option<&str>) -> Arc<ModelMetrics> {
    let version = version.unwrap_or("");
    if let Some(found) = METRICS.models.read().get(name).and_then(|versions| versions.get(version)) {
        return found.clone();
    }
    let labels = |outcome: Outcome| OutcomeLabels {
        model: name.to_string(),
        version: version.to_string(),
        outcome: outcome.as_str(),
    };
    let model_labels = ModelLabels { model: name.to_string(), version: version.to_string() };
    let made = Arc::new(ModelMetrics {
        requests: Outcome::ALL.map(|o| METRICS.requests.get_or_create_owned(&labels(o))),
        durations: Outcome::ALL.map(|o| METRICS.request_duration.get_or_create_owned(&labels(o))),
        reply_wait: METRICS.reply_wait.get_or_create_owned(&model_labels),
        // One family with the worker's phases (`rfleet serve` registers both in one registry).
        queue_wait: phase_durations().get_or_create_owned(&PhaseLabels {
            model: name.into(),
            version: version.into(),
            phase: "queue_wait",
        }),
    });
    let mut models = METRICS.models.write();
    models.entry(name.to_string()).or_default().entry(version.to_string()).or_insert(made).clone()
}

impl ModelMetrics {
    /// One scoring request that ended as `outcome` after `took`, in the trace `trace`.
    pub fn request(&self, outcome: Outcome, took: Duration, trace: Option<&TraceParent>) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).expect("every outcome is in ALL");
        self.requests[index].inc();
        self.durations[index].observe(took.as_secs_f64(), trace.map(TraceParent::exemplar), None);
    }

    /// A reply that came `reply_wait` after publishing, of which the worker spent
    /// `worker_ms`: the rest was on the bus (`queue_wait`; never below 0, as the two are
    /// read on different clocks).
    pub fn replied(&self, reply_wait: Duration, worker_ms: f64, trace: Option<&TraceParent>) {
        let reply_wait = reply_wait.as_secs_f64();
        self.reply_wait.observe(reply_wait);
        let queue_wait = (reply_wait - worker_ms / 1000.0).max(0.0);
        self.queue_wait.observe(queue_wait, trace.map(TraceParent::exemplar), None);
    }
}

/// A mirrored copy of `model` to its shadow `version` that ended as `outcome` (`same`,
/// `different`, `failed`, `dropped`).
pub fn mirrored(model: &str, version: &str, outcome: &'static str) {
    let labels = OutcomeLabels { model: model.to_string(), version: version.to_string(), outcome };
    METRICS.mirrored.get_or_create(&labels).inc();
}

/// The `http_request_method` of `method`: the methods of HTTP, else `_OTHER` (as
/// OpenTelemetry says), so a made-up method cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// `template` (a matched route's) as a `'static` label value.
pub fn route_label(template: &str) -> &'static str {
    if let Some(route) = METRICS.routes.read().get(template) {
        return route;
    }
    let mut routes = METRICS.routes.write();
    routes.entry(template.to_string()).or_insert_with(|| Box::leak(template.to_string().into_boxed_str()))
}

/// One HTTP request's metrics while it is served: counted active until dropped.
pub struct HttpRequest {
    method: &'static str,
    route: &'static str,
    active: Gauge,
}

impl HttpRequest {
    pub fn start(method: &'static str, route: &'static str) -> HttpRequest {
        let active = METRICS.http_active.get_or_create_owned(&MethodLabels { http_request_method: method });
        active.inc();
        HttpRequest { method, route, active }
    }

    /// The response head is out, `took` after the request arrived.
    pub fn responded(&self, status: u16, took: Duration, trace: &TraceParent) {
        let labels =
            HttpLabels { http_request_method: self.method, http_route: self.route, http_response_status_code: status };
        METRICS.http_duration.get_or_create(&labels).observe(took.as_secs_f64(), Some(trace.exemplar()), None);
    }

    /// Where the request's body size goes (observed once it is known).
    pub fn request_size(&self) -> Histogram {
        METRICS.http_request_size.get_or_create_owned(&self.route_labels())
    }

    /// Where the response's body size goes.
    pub fn response_size(&self) -> Histogram {
        METRICS.http_response_size.get_or_create_owned(&self.route_labels())
    }

    fn route_labels(&self) -> RouteLabels {
        RouteLabels { http_request_method: self.method, http_route: self.route }
    }
}

impl Drop for HttpRequest {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use protocol::ErrorCode;

    use super::*;

    /// Every code has its outcome, and the contract's set is what comes out.
    #[test]
    fn every_error_code_has_its_outcome() {
        let check = |code: ErrorCode, expected: &str| {
            assert_eq!(Outcome::of(code).as_str(), expected, "{code:?}");
            assert_eq!(outcome_of(&ApiError::coded(code, "x")).as_str(), expected, "{code:?} as an ApiError");
        };
        let table = [
            (ErrorCode::BadRequest, "client_error"),
            (ErrorCode::UnsupportedVersion, "internal"),
            (ErrorCode::ModelNotFound, "client_error"),
            (ErrorCode::InvalidInput, "client_error"),
            (ErrorCode::RError, "r_error"),
            (ErrorCode::HostCrashed, "internal"),
            (ErrorCode::DeadlineExceeded, "timeout"),
            (ErrorCode::Overloaded, "rejected"),
            (ErrorCode::Unavailable, "rejected"),
            (ErrorCode::Internal, "internal"),
        ];
        for (code, expected) in table {
            check(code, expected);
        }
        // A new code does not compile here until it is in the table above.
        let in_table = |code: ErrorCode| match code {
            ErrorCode::BadRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::ModelNotFound
            | ErrorCode::InvalidInput
            | ErrorCode::RError
            | ErrorCode::HostCrashed
            | ErrorCode::DeadlineExceeded
            | ErrorCode::Overloaded
            | ErrorCode::Unavailable
            | ErrorCode::Internal => table.iter().any(|(c, _)| *c == code),
        };
        assert!(table.iter().all(|(code, _)| in_table(*code)));
        let check_api = |error: ApiError, expected: &str| assert_eq!(outcome_of(&error).as_str(), expected, "{error}");
        check_api(ApiError::BodyTooLarge { limit_bytes: 1 }, "client_error");
        check_api(ApiError::TooManyRows { rows: 2, limit_rows: 1 }, "client_error");
        check_api(ApiError::NotReady("x".into()), "rejected");
        check_api(ApiError::Unauthenticated { credential_sent: true }, "client_error");
        // Bus errors reach the outcome through their codes.
        check_api(ApiError::from_bus(bus::BusError::QueueFull("q".into()), 1), "rejected");
        check_api(ApiError::from_bus(bus::BusError::Unavailable("down".into()), 1), "rejected");
        check_api(
            ApiError::from_bus(bus::BusError::Unroutable { queue: "q".into(), reply_text: "NO_ROUTE".into() }, 1),
            "rejected",
        );
        check_api(ApiError::from_bus(bus::BusError::DeadlineExceeded, 1), "timeout");
        check_api(ApiError::from_bus(bus::BusError::DuplicateId("x".into()), 1), "internal");
    }

    #[test]
    fn methods_and_routes_are_bounded_labels() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "_OTHER");
        let route = route_label("/models/{name}/score");
        assert_eq!(route, "/models/{name}/score");
        assert!(std::ptr::eq(route, route_label("/models/{name}/score")), "a route is interned once");
    }
}
