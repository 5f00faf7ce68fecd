//! The worker's own HTTP listener (`metrics.listen`, e.g. `0.0.0.0:9464`), for a worker
//! that runs without a dispatcher beside it (`rfleet worker`): `GET /metrics` (the
//! process's registry, OpenMetrics or the text format as the scraper asks), `GET /live`
//! (200 while the process runs) and `GET /ready` (200 while the worker has a live R host
//! and is not draining, else 503), what a Kubernetes probe and a PodMonitor need.

use std::future::Future;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use telemetry::metrics::Format;
use tokio_util::sync::CancellationToken;

use crate::Pool;

/// What `/ready` and `/metrics` answer from.
#[derive(Clone)]
pub struct Health {
    pool: Pool,
    /// Cancelled once the worker drains (SIGTERM): it stops being ready.
    draining: CancellationToken,
    /// `metrics.enabled`: `/metrics` answers 404 when off.
    metrics: bool,
}

impl Health {
    pub fn new(pool: Pool, draining: CancellationToken, metrics: bool) -> Health {
        Health { pool, draining, metrics }
    }

    /// Ready: an R host is up and the worker is not draining.
    pub fn ready(&self) -> bool {
        self.pool.live_hosts() > 0 && !self.draining.is_cancelled()
    }
}

/// The listener's routes.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(health)
}

/// Serves `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health)).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(health): State<Health>, headers: HeaderMap) -> Response {
    if !health.metrics {
        return (StatusCode::NOT_FOUND, "metrics are off (metrics.enabled = false)\n").into_response();
    }
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // The encoding reads every family under the registry's lock and the hosts' /proc
    // files: a blocking thread's work, not the runtime's.
    match tokio::task::spawn_blocking(move || telemetry::metrics::encode(format)).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response(),
    }
}

async fn ready(State(health): State<Health>) -> Response {
    if health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if health.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no live r host\n").into_response()
    }
}
