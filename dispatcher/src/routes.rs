//! Probes, `GET /metrics`, the model list (`GET /models`: versions, live hosts, traffic, failed packages),
//! the not-found answers of models, and JSON answers for unknown routes and methods.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ErrorCode, ModelInfo};
use serde::Serialize;
use settings::traffic::ModelTraffic;
use telemetry::metrics::Format;

use crate::catalog::Snapshot;
use crate::error::ApiError;
use crate::mirror::MirrorCounts;
use crate::openapi::{ErrorMessage, ModelDescription};
use crate::routing::{self, Candidate};
use crate::AppState;

/// `GET /`: Azure ML's liveness answer, which its clients and load balancers look for.
#[utoipa::path(get, path = "/", tag = "probes", summary = "Azure ML liveness: `Healthy`",
    responses((status = 200, content_type = "text/plain", body = String, example = "Healthy")))]
pub async fn healthy() -> &'static str {
    "Healthy"
}

/// `GET /live`: the process answers, nothing more (a failing liveness probe restarts the pod).
#[utoipa::path(get, path = "/live", tag = "probes", summary = "Liveness",
    responses((status = 200, content_type = "text/plain", body = String, example = "live")))]
pub async fn live() -> &'static str {
    "live"
}

/// `GET /ready`: models are loaded, an R host is up and the bus takes requests.
#[utoipa::path(get, path = "/ready", tag = "probes", summary = "Readiness: models loaded, an R host up, the bus ready",
    responses((status = 200, content_type = "text/plain", body = String, example = "ready"),
              (status = 503, body = ErrorMessage)))]
pub async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let catalog = &state.shared.catalog;
    let requester = &state.shared.requester;
    if catalog.is_ready() && requester.is_ready() {
        return Ok("ready");
    }
    let mut missing = Vec::new();
    if catalog.models().is_empty() {
        missing.push("no model is loaded");
    }
    if catalog.live_hosts() == 0 {
        missing.push("no R host is running");
    }
    if !requester.is_ready() {
        missing.push("the message bus is not ready");
    }
    Err(ApiError::NotReady(missing.join("; ")))
}

/// `GET /metrics`: every metric of this process (the worker's too in `rfleet serve`), as
/// OpenMetrics with exemplars when the scraper accepts it (Prometheus does), else the
/// Prometheus text format; a 404 with `metrics.enabled = false`.
#[utoipa::path(get, path = "/metrics", tag = "probes", summary = "Prometheus metrics (OpenMetrics or the text format, as `Accept` asks)",
    responses((status = 200, description = "the metrics", content(
                  (String = "text/plain"), (String = "application/openmetrics-text"))),
              (status = 404, body = ErrorMessage, description = "metrics are off (`metrics.enabled = false`)")))]
pub async fn metrics(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.metrics_enabled {
        return Err(ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() });
    }
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // Encoding holds the registry's lock and takes a millisecond or so: off the async threads.
    let body = tokio::task::spawn_blocking(move || telemetry::metrics::encode(format))
        .await
        .map_err(|e| ApiError::internal(format!("encoding the metrics failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// `GET /models`: every served version of every model with its schema, how it is served
/// now, and the packages that failed to load.
#[utoipa::path(get, path = "/models", tag = "scoring",
    summary = "Served models (each version) with their input schemas, live hosts and traffic; packages that failed",
    responses((status = 200, body = Vec<ModelDescription>)))]
pub async fn list_models(State(state): State<AppState>) -> Json<Vec<ModelEntry>> {
    Json(state.model_entries(&state.shared.catalog.snapshot()))
}

/// `GET /models/{name}`: its highest served version, else its failed package.
#[utoipa::path(get, path = "/models/{name}", tag = "scoring", summary = "One served model (its highest version)",
    params(("name" = String, Path, description = "the model's name")),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
pub async fn get_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelEntry>, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    state.model_entry(&name, None).map(Json)
}

/// `GET /models/{name}/versions/{version}`.
#[utoipa::path(get, path = "/models/{name}/versions/{version}", tag = "scoring", summary = "One version of a served model",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
pub async fn get_model_version(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelEntry>, ApiError> {
    let Path((name, version)) = path.map_err(path_error)?;
    state.model_entry(&name, Some(&version)).map(Json)
}

/// One entry of `GET /models` (described in the document as `ModelDescription`); its
/// `state` says which: `ready`, or `failed` for a package that failed to load on every
/// worker that has it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
// Made per request and serialized at once: boxing the description would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ModelEntry {
    /// A served version: its description (`protocol::ModelInfo`'s fields) and how it is
    /// served now. `traffic_config` and `mirrored` are the model's, the same on each of
    /// its versions.
    Ready {
        #[serde(flatten)]
        info: ModelInfo,
        /// R hosts of the workers serving it that take new work.
        live_hosts: usize,
        /// No worker serves it now: it is kept while its fleet is scaled to zero
        /// (`models.keep_idle_ms`), and its requests wait in its queue for a worker.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        idle: bool,
        /// The share of the model's unpinned requests this version gets now, in percent,
        /// as the routing rule routes them.
        traffic: f64,
        /// The model's table in the traffic file (weights, mirror), when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        traffic_config: Option<ModelTraffic>,
        /// What mirroring the model's requests found, once a copy was made.
        #[serde(skip_serializing_if = "Option::is_none")]
        mirrored: Option<MirrorCounts>,
    },
    /// A package that failed to load, and that no worker serves.
    Failed { name: String, version: Option<String>, error: String },
}

impl ModelEntry {
    fn is(&self, wanted: &str, wanted_version: Option<&str>) -> bool {
        let (name, version) = match self {
            ModelEntry::Ready { info, .. } => (&info.name, &info.version),
            ModelEntry::Failed { name, version, .. } => (name, version),
        };
        name == wanted && wanted_version.is_none_or(|v| version.as_deref() == Some(v))
    }
}

/// Axum's own path rejections answer in plain text; ours answer in JSON like every error.
pub fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
}

pub async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}

impl AppState {
    /// Every entry of `GET /models`: the served versions (by name, then version), each
    /// with its share of traffic by the routing rule, then the packages that failed.
    pub(crate) fn model_entries(&self, snapshot: &Snapshot) -> Vec<ModelEntry> {
        let traffic = self.shared.traffic.current();
        let mut entries = Vec::new();
        let mut served = snapshot.served.as_slice();
        // `served` is ordered by name: one model's versions at a time.
        while let Some(first) = served.first() {
            let n = served.iter().take_while(|s| s.info.name == first.info.name).count();
            let (versions, rest) = served.split_at(n);
            served = rest;
            let name = &first.info.name;
            let config = traffic.model(name);
            let candidates: Vec<Candidate> = versions.iter().map(Candidate::from).collect();
            let shares = routing::shares(&candidates, config.and_then(|c| c.weights.as_ref()));
            let mirrored = self.shared.mirrors.counts(name);
            for (version, share) in versions.iter().zip(shares) {
                entries.push(ModelEntry::Ready {
                    info: (*version.info).clone(),
                    live_hosts: version.live_hosts,
                    idle: version.idle,
                    traffic: (share * 10_000.0).round() / 100.0,
                    traffic_config: config.cloned(),
                    mirrored,
                });
            }
        }
        entries.extend(snapshot.failed.iter().map(|f| ModelEntry::Failed {
            name: f.name.clone(),
            version: f.version.clone(),
            error: f.message.clone(),
        }));
        entries
    }

    /// The entry of `name` (at `version`; else its highest served version, else its failed
    /// package), or a 404 that lists what is served.
    fn model_entry(&self, name: &str, version: Option<&str>) -> Result<ModelEntry, ApiError> {
        let snapshot = self.shared.catalog.snapshot();
        let entries = self.model_entries(&snapshot);
        let served = entries.iter().rfind(|e| matches!(e, ModelEntry::Ready { .. }) && e.is(name, version));
        let failed = || entries.iter().find(|e| matches!(e, ModelEntry::Failed { .. }) && e.is(name, version));
        match served.or_else(failed) {
            Some(entry) => Ok(entry.clone()),
            None => Err(self.not_found(&snapshot, name, version)),
        }
    }

    /// The catalog's entry for `name` (at `version`, else its highest version), or why
    /// there is none: a 503 naming its load failure, else a 404 that lists what is served.
    pub(crate) fn find_model(&self, name: &str, version: Option<&str>) -> Result<ModelInfo, ApiError> {
        let snapshot = self.shared.catalog.snapshot();
        match snapshot.find(name, version) {
            Some(served) => Ok((*served.info).clone()),
            None => Err(self.not_served(&snapshot, name, version)),
        }
    }

    /// Why `name` (at `version`) cannot score: its package failed to load (503, the error),
    /// or as [`AppState::not_found`] says.
    pub(crate) fn not_served(&self, snapshot: &Snapshot, name: &str, version: Option<&str>) -> ApiError {
        match snapshot.failure(name, version) {
            Some(failure) => ApiError::coded(
                ErrorCode::Unavailable,
                format!("{} failed to load: {}", describe(name, failure.version.as_deref()), failure.message),
            ),
            None => self.not_found(snapshot, name, version),
        }
    }

    /// A 404 for `name` (at `version`) that lists what is served: for a pinned version of a
    /// served model, its live versions; a 503 while the catalog cannot know yet.
    fn not_found(&self, snapshot: &Snapshot, name: &str, version: Option<&str>) -> ApiError {
        // Over a broker the catalog is learned from workers' announcements: while the bus
        // is down or no worker has announced itself (yet, or again after a broker restart)
        // an unknown model means "try again shortly", not "no such model".
        if !self.shared.requester.is_ready() {
            return ApiError::coded(ErrorCode::Unavailable, "the message bus is unavailable; retry shortly");
        }
        if snapshot.served.is_empty() {
            return ApiError::coded(ErrorCode::Unavailable, "no worker has announced its models yet; retry shortly");
        }
        let wanted = describe(name, version);
        if version.is_some() && snapshot.versions(name).next().is_some() {
            let live: Vec<&str> = snapshot
                .versions(name)
                .filter(|s| s.live_hosts > 0)
                .map(|s| s.info.version.as_deref().unwrap_or("unversioned"))
                .collect();
            let live = if live.is_empty() { "none".to_string() } else { live.join(", ") };
            return ApiError::coded(
                ErrorCode::ModelNotFound,
                format!("{wanted} is not served here (live versions: {live})"),
            );
        }
        ApiError::coded(
            ErrorCode::ModelNotFound,
            format!("{wanted} is not served here (served: {})", served_models(snapshot)),
        )
    }
}

/// `model 'rf_reg'` or `model 'rf_reg' version '2'`, as messages name a model.
fn describe(name: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("model '{name}' version '{version}'"),
        None => format!("model '{name}'"),
    }
}

/// `iris 2, echo`: what is served, for error messages.
fn served_models(snapshot: &Snapshot) -> String {
    let models: Vec<String> = snapshot
        .models()
        .map(|m| match &m.version {
            Some(version) => format!("{} {version}", m.name),
            None => m.name.clone(),
        })
        .collect();
    if models.is_empty() {
        "none".into()
    } else {
        models.join(", ")
    }
}
