//! Probes, the model list, and JSON answers for unknown routes and methods.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::Json;
use protocol::{ErrorCode, ModelInfo};

use crate::error::ApiError;
use crate::openapi::{ErrorMessage, ModelDescription};
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

/// `GET /models`: every served model with its schema.
#[utoipa::path(get, path = "/models", tag = "scoring", summary = "Served models with their input schemas",
    responses((status = 200, body = Vec<ModelDescription>)))]
pub async fn list_models(State(state): State<AppState>) -> Json<Vec<ModelInfo>> {
    Json(state.shared.catalog.models())
}

/// `GET /models/{name}`.
#[utoipa::path(get, path = "/models/{name}", tag = "scoring", summary = "One served model",
    params(("name" = String, Path, description = "the model's name")),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
pub async fn get_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelInfo>, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    state.find_model(&name, None).map(Json)
}

/// `GET /models/{name}/versions/{version}`.
#[utoipa::path(get, path = "/models/{name}/versions/{version}", tag = "scoring", summary = "One version of a served model",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
pub async fn get_model_version(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelInfo>, ApiError> {
    let Path((name, version)) = path.map_err(path_error)?;
    state.find_model(&name, Some(&version)).map(Json)
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
    /// The catalog's entry for `name` (at `version`), or a 404 that lists what is served.
    pub(crate) fn find_model(&self, name: &str, version: Option<&str>) -> Result<ModelInfo, ApiError> {
        if let Some(info) = self.shared.catalog.model(name, version) {
            return Ok(info);
        }
        // Over a broker the catalog is learned from workers' announcements: while the bus
        // is down or no worker has announced itself (yet, or again after a broker restart)
        // an unknown model means "try again shortly", not "no such model".
        if !self.shared.requester.is_ready() {
            return Err(ApiError::coded(ErrorCode::Unavailable, "the message bus is unavailable; retry shortly"));
        }
        if self.shared.catalog.models().is_empty() {
            return Err(ApiError::coded(
                ErrorCode::Unavailable,
                "no worker has announced its models yet; retry shortly",
            ));
        }
        let wanted = match version {
            Some(version) => format!("model '{name}' version '{version}'"),
            None => format!("model '{name}'"),
        };
        Err(ApiError::coded(
            ErrorCode::ModelNotFound,
            format!("{wanted} is not served here (served: {})", self.served_models()),
        ))
    }

    /// `iris 2, echo`: what is served, for error messages.
    pub(crate) fn served_models(&self) -> String {
        let models = self.shared.catalog.models();
        if models.is_empty() {
            return "none".into();
        }
        models
            .iter()
            .map(|m| match &m.version {
                Some(version) => format!("{} {version}", m.name),
                None => m.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
