//! The HTTP front of rfleet: validates scoring requests, publishes them on the bus and
//! answers with the worker's reply.
//!
//! # Layout
//! - [`AppState`], [`router`] and [`serve`] (this file): what `main` wires together.
//! - [`api`]: the route table: every route once with its access level; the router, the
//!   OpenAPI document and the credential checks are made from it.
//! - [`scoring`]: the one scoring call ([`scoring::execute`]): the in-flight permit, the
//!   body limit, parsing and schema checks off the async threads, publishing, awaiting the
//!   reply until the deadline, typed predictions back.
//! - [`score`]: Azure ML's `POST /score` and `/models/{name}[/versions/{version}]/score`,
//!   a front and a renderer on [`scoring`].
//! - [`vetiver`]: vetiver / plumber's `POST /predict`, `/ping`, `/metadata`, `/prototype`.
//! - [`oip`]: the Open Inference Protocol (KServe v2, Triton) under `/v2`.
//! - [`routes`]: probes (`/`, `/live`, `/ready`), `GET /models`, and the JSON answers
//!   to unknown routes and methods.
//! - [`error`]: [`ApiError`], the one place errors become HTTP statuses.
//! - [`auth`]: keys, `POST /token` and OIDC tokens, checked on the routes that need a
//!   credential (`[auth]`, off by default).
//! - [`listener`]: the listener of plain HTTP and HTTPS alike: a connection goes to axum
//!   only once its client has begun to send, and those it still holds at shutdown are
//!   answered 503, never closed unanswered.
//! - [`tls`]: HTTPS (`[tls]`, off by default): the TLS handshake for that listener, and the
//!   certificate reloaded from its files.
//! - [`request_id`]: request ids (`x-request-id`, `x-ms-client-request-id`), the
//!   request's SERVER span in its trace (the caller's `traceparent` or a new one), the HTTP
//!   metrics and the access log, around every route.
//! - [`metrics`]: the dispatcher's Prometheus metrics (HTTP, scoring by model, version and
//!   outcome, mirrored copies), served by `GET /metrics` ([`routes`]).
//! - [`catalog`]: what the fleet serves, as this dispatcher knows it from announcements:
//!   per model version, its description and live R hosts, and the packages that failed.
//! - [`routing`]: which version an unpinned request goes to (the rule, without I/O);
//!   [`traffic`]: the traffic file's splits, kept current; [`mirror`]: shadow copies,
//!   compared with the primary's answers and counted.
//! - [`reload`]: files re-read when their contents change (keys, traffic).
//! - [`announcements`]: workers' announcements, over any transport, into the catalog.
//! - [`openapi`]: the OpenAPI document (`/openapi.json`, `/swagger.json`) completed from
//!   the catalog, and Swagger UI (`/docs`).
//!
//! **Architecture Invariant:** the dispatcher never touches R and never blocks the async
//! runtime: R runs in the workers' host processes, and parsing or encoding a large body
//! runs on tokio's blocking pool.

pub mod announcements;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod oip;
pub mod openapi;
pub mod reload;
pub mod request_id;
pub mod routes;
pub mod routing;
pub mod score;
pub mod scoring;
pub mod tls;
pub mod traffic;
pub mod vetiver;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bus::Requester;

pub use catalog::Catalog;
use settings::ServerSettings;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::{status_for_code, ApiError};

/// Everything a handler needs. Cheap to clone: handlers share one [`Shared`].
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
    /// `None` when auth is off.
    auth: Option<auth::Auth>,
    /// `metrics.enabled`: whether `GET /metrics` answers (metrics are recorded either way).
    metrics_enabled: bool,
}

struct Shared {
    requester: Arc<dyn Requester>,
    catalog: Arc<Catalog>,
    server: ServerSettings,
    /// The model `POST /score` uses when several are served.
    default_model: Option<String>,
    /// One permit per request awaiting a reply, `server.max_inflight` in all.
    inflight: Arc<Semaphore>,
    /// The traffic file's splits (`models.traffic_file`), kept current.
    traffic: Arc<traffic::TrafficSplits>,
    /// Shadow copies in flight and what they found.
    mirrors: Arc<mirror::Mirrors>,
}

impl AppState {
    pub fn new(
        requester: Arc<dyn Requester>,
        catalog: Arc<Catalog>,
        server: ServerSettings,
        default_model: Option<String>,
    ) -> Self {
        // A limit of 0 would refuse every request, and tokio panics above MAX_PERMITS.
        let permits = server.max_inflight.clamp(1, Semaphore::MAX_PERMITS);
        AppState {
            shared: Arc::new(Shared {
                requester,
                catalog,
                server,
                default_model,
                inflight: Arc::new(Semaphore::new(permits)),
                traffic: Arc::default(),
                mirrors: Arc::default(),
            }),
            auth: None,
            metrics_enabled: true,
        }
    }

    /// Serves `GET /metrics` as `[metrics]` says (on by default).
    pub fn with_metrics(mut self, settings: &settings::MetricsSettings) -> Self {
        self.metrics_enabled = settings.enabled;
        self
    }

    /// Routes by the traffic file `path` (`models.traffic_file`; no-op for `None`), re-read
    /// when it changes. Needs a tokio runtime.
    pub fn with_traffic_file(self, path: Option<&std::path::Path>) -> Result<Self, settings::traffic::TrafficError> {
        if let Some(path) = path {
            self.shared.traffic.follow_file(path)?;
        }
        Ok(self)
    }

    /// Why the traffic file's latest contents were refused (the last good splits stay in
    /// force meanwhile), if they were.
    pub fn traffic_file_refused(&self) -> Option<String> {
        self.shared.traffic.refused()
    }

    /// Turns authentication on as `[auth]` says (no-op when it is off); reads the keys file.
    pub async fn with_auth(mut self, settings: &settings::auth::AuthSettings) -> Result<Self, auth::AuthError> {
        self.auth = auth::Auth::from_settings(settings).await?;
        Ok(self)
    }
}

/// All routes of the route table ([`api`]), with the layers every response goes through.
pub fn router(state: AppState) -> Router {
    // Every family at zero from the first scrape.
    metrics::init();
    let api = api::build(state.auth.as_ref());
    let document = openapi::BaseDocument(Arc::new(api.document(state.auth.is_some())));
    let routes = api.router.layer(Extension(document)).with_state(state);
    with_layers(routes)
}

/// The layers, kept apart from the routes so tests can wrap a router of their own (e.g.
/// one that panics).
fn with_layers(routes: Router) -> Router {
    let routes = routes
        // Scoring reads the body itself under `max_body_bytes`; axum's default 2 MB limit
        // would otherwise cut in first with a plain-text answer.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::map_response(error::close_if_unread));
    // Outermost, so panics and fallbacks are logged and carry request ids too.
    request_id::track(routes)
}

/// A handler panicked: a bug. Answer 500 in the usual JSON shape and keep serving.
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    tracing::error!(panic = %detail, "handler panicked");
    ApiError::coded(protocol::ErrorCode::Internal, "internal error: the request handler panicked").into_response()
}

/// Serves `listener` until `shutdown` completes, then lets in-flight requests finish; the
/// connections the listener still holds are answered 503 (await them with
/// [`listener::HttpListener::shutdown_answers`]). `listener` is plain
/// ([`listener::HttpListener::plain`]) or a [`tls::TlsListener`].
pub async fn serve<H: listener::Handshake>(
    listener: listener::HttpListener<H>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = axum::serve::Listener::local_addr(&listener) {
        tracing::info!(%address, "dispatcher listening");
    }
    let shutdown = listener.graceful(shutdown);
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn panics_become_json_500() {
        let app = with_layers(Router::new().route("/boom", axum::routing::get(|| async { panic!("boom") as &str })));
        let response = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "internal", "message": "internal error: the request handler panicked"})
        );
    }
}
