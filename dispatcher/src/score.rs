//! Azure ML's scoring routes: `POST /score` and `/models/{name}[/versions/{version}]/score`.
//! A parser of the URL in front of [`scoring::execute`], and the Azure ML renderer behind it.
//!
//! As on an Azure ML online endpoint, the `azureml-model-deployment` request header on
//! `/score` and `/models/{name}/score` selects a deployment: here the version it names,
//! pinned like a `/versions/{version}/` route (which needs no header and ignores it).

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bus::ContentType;
use protocol::json::predictions_to_json;
use protocol::message::SplitPolicy;
use protocol::{Engine, ErrorCode, Options};
use serde::Deserialize;

use crate::error::ApiError;
use crate::openapi::{Predictions, ScoringBody};
use crate::request_id::RequestId;
use crate::routes::path_error;
use crate::scoring::{self, Answer, CallHeaders, Failure, ScoreCall, Scored, Table, Target, AZUREML_MODEL_DEPLOYMENT};
use crate::AppState;

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
    /// `?engine=auto|r|native`: which engine scores it (default: the model's `engine`).
    pub engine: Option<Engine>,
}

impl ScoreQuery {
    /// The options a scoring URL sets.
    pub fn options(query: Result<Query<ScoreQuery>, QueryRejection>) -> Result<Options, ApiError> {
        let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
        Ok(Options { predict_type: query.predict_type, split: query.split, engine: query.engine })
    }
}

/// The [`ScoreCall`] of a route that takes a table body and `?type=` / `?split=`: every
/// rfleet and vetiver scoring route.
pub fn table_call(
    target: Target,
    request_id: RequestId,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<ScoreCall<Table>, ApiError> {
    Ok(ScoreCall {
        target,
        body,
        parse: Table,
        options: ScoreQuery::options(query)?,
        headers: CallHeaders::from_headers(headers)?,
        request_id: request_id.0,
    })
}

#[utoipa::path(post, path = "/score", tag = "scoring",
    summary = "Score rows with the served model (or `models.default`)",
    request_body = ScoringBody,
    responses((status = 200, body = Predictions, example = json!([21.4, 19.7]))))]
pub async fn score_default(
    State(state): State<AppState>,
    request_id: RequestId,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let target = Target { name: state.default_model_name()?, version: deployment(&headers)? };
    score(&state, table_call(target, request_id, query, &headers, body)?).await
}

#[utoipa::path(post, path = "/models/{name}/score", tag = "scoring", summary = "Score rows with one model",
    params(("name" = String, Path, description = "the model's name")),
    request_body = ScoringBody,
    responses((status = 200, body = Predictions)))]
pub async fn score_model(
    State(state): State<AppState>,
    request_id: RequestId,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let Path(name) = path.map_err(path_error)?;
    let target = Target { name, version: deployment(&headers)? };
    score(&state, table_call(target, request_id, query, &headers, body)?).await
}

#[utoipa::path(post, path = "/models/{name}/versions/{version}/score", tag = "scoring",
    summary = "Score rows with one version of a model",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    request_body = ScoringBody,
    responses((status = 200, body = Predictions)))]
pub async fn score_model_version(
    State(state): State<AppState>,
    request_id: RequestId,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let Path((name, version)) = path.map_err(path_error)?;
    score(&state, table_call(Target { name, version: Some(version) }, request_id, query, &headers, body)?).await
}

/// The version Azure ML's `azureml-model-deployment` header pins, when sent.
fn deployment(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(&AZUREML_MODEL_DEPLOYMENT) else { return Ok(None) };
    match value.to_str().map(str::trim) {
        Ok(version) if !version.is_empty() => Ok(Some(version.to_string())),
        _ => Err(ApiError::bad_request(format!(
            "invalid {AZUREML_MODEL_DEPLOYMENT} header '{}': expected a version of the model",
            String::from_utf8_lossy(value.as_bytes())
        ))),
    }
}

async fn score(state: &AppState, call: ScoreCall<Table>) -> Result<Response, Failure> {
    let scored = scoring::execute(state, call).await?;
    Ok(render(scored))
}

/// Azure ML's answer: the predictions as JSON (a plain array for one vector, row objects
/// for several columns), or an entry script's JSON byte for byte; timings and the version
/// that answered as headers.
fn render(Scored { answer, timings, .. }: Scored<()>) -> Response {
    let mut response = match answer {
        Answer::Predictions(frame) => Json(predictions_to_json(&frame)).into_response(),
        Answer::Json(text) => ([(header::CONTENT_TYPE, ContentType::JSON)], text).into_response(),
    };
    scoring::insert_timings(response.headers_mut(), &timings);
    response
}

impl AppState {
    /// The model `POST /score` means: the only one served, else the default, else a 404
    /// pointing at the named route.
    pub(crate) fn default_model_name(&self) -> Result<String, ApiError> {
        // Every `POST /score` asks: a snapshot shares the models rather than copying them.
        let snapshot = self.shared.catalog.snapshot();
        let mut names: Vec<&str> = snapshot.models().map(|m| m.name.as_str()).collect();
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
