//! vetiver / plumber conventions: `POST /predict`, `GET /ping`, `GET /metadata`,
//! `GET /prototype`, so clients written for a `vetiver_api()` server work unchanged.
//!
//! `/predict` takes every body `POST /score` takes and answers as vetiver does: a single
//! prediction vector as `{".pred": [...]}`, a matrix or data.frame as an array of row
//! objects. The routes without a model name use the same model as `POST /score`.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::json::predictions_to_json;
use protocol::r_packages::required_pkgs;
use protocol::{ErrorCode, ModelInfo};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::{example_value, ErrorMessage, ScoringBody};
use crate::request_id::RequestId;
use crate::routes::path_error;
use crate::score::{table_call, ScoreQuery};
use crate::scoring::{self, Answer, Failure, ScoreCall, Scored, Table, Target};
use crate::AppState;

/// `GET /ping`: vetiver's health answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "online", "time": "2025-01-31 12:00:00"}))]
pub struct Ping {
    /// Always `online`.
    pub status: &'static str,
    /// The server's clock, UTC, as R prints `Sys.time()`.
    pub time: String,
}

/// `GET /metadata`: what `vetiver_model()` stores as `metadata`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VetiverMetadata {
    /// Free-form metadata; rfleet stores none.
    #[schema(value_type = Object)]
    pub user: Map<String, Value>,
    /// The model's version (`model.toml`), if it has one.
    pub version: Option<String>,
    /// Where the model is pinned; rfleet serves files, not pins.
    pub url: Option<String>,
    /// R packages the model needs, inferred from its classes.
    pub required_pkgs: Vec<String>,
}

/// One column of `GET /prototype`, in the shape `cereal::cereal_encode()` gives it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrototypeColumn {
    /// R's type: `double`, `integer`, `logical`, `character`, `factor` or `ordered`.
    #[serde(rename = "type")]
    pub column_type: &'static str,
    /// A value of that type (for factors the first level).
    #[schema(value_type = Value)]
    pub example: Value,
    /// `levels` for factors; empty otherwise.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

#[utoipa::path(
    post,
    path = "/predict",
    tag = "vetiver",
    summary = "Score rows with the default model, answered as vetiver does",
    request_body(content = ScoringBody, description = "rows, as for `POST /score`"),
    responses(
        (status = 200, description = "`{\".pred\": [...]}` for one prediction vector; an array of row objects for a \
         matrix or data.frame", body = Value, example = json!({".pred": [21.4, 19.7]})),
    )
)]
pub async fn predict_default(
    State(state): State<AppState>,
    request_id: RequestId,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let target = Target { name: state.default_model_name()?, version: None };
    predict(&state, table_call(target, request_id, query, &headers, body)?).await
}

#[utoipa::path(
    post,
    path = "/models/{name}/predict",
    tag = "vetiver",
    summary = "Score rows with one model, answered as vetiver does",
    params(("name" = String, Path, description = "the model's name")),
    request_body(content = ScoringBody, description = "rows, as for `POST /score`"),
    responses(
        (status = 200, description = "`{\".pred\": [...]}` or an array of row objects", body = Value,
         example = json!({".pred": [21.4, 19.7]})),
    )
)]
pub async fn predict_model(
    State(state): State<AppState>,
    request_id: RequestId,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let Path(name) = path.map_err(path_error)?;
    predict(&state, table_call(Target { name, version: None }, request_id, query, &headers, body)?).await
}

async fn predict(state: &AppState, call: ScoreCall<Table>) -> Result<Response, Failure> {
    let Scored { answer, timings, .. } = scoring::execute(state, call).await?;
    let predictions = match answer {
        Answer::Predictions(frame) => predictions_to_json(&frame),
        // An Azure ML entry script's own JSON, reshaped like any prediction.
        Answer::Json(text) => serde_json::from_str(&text).map_err(|e| {
            Failure::answered(
                ApiError::coded(ErrorCode::RError, format!("the model's answer is not JSON: {e}")),
                &timings,
            )
        })?,
    };
    let mut response = Json(vetiver_shape(predictions)).into_response();
    scoring::insert_timings(response.headers_mut(), &timings);
    Ok(response)
}

/// vetiver answers a prediction vector as `{".pred": [...]}`; rows (a matrix or a
/// data.frame, one object per row) and anything else stay as they are.
pub fn vetiver_shape(predictions: Value) -> Value {
    match predictions {
        Value::Array(values) if !values.iter().any(Value::is_object) => json!({ ".pred": values }),
        other => other,
    }
}

#[utoipa::path(
    get,
    path = "/ping",
    tag = "vetiver",
    summary = "vetiver's health check",
    responses((status = 200, body = Ping))
)]
pub async fn ping() -> Json<Ping> {
    Json(Ping { status: "online", time: r_timestamp(time::OffsetDateTime::now_utc()) })
}

#[utoipa::path(
    get,
    path = "/metadata",
    tag = "vetiver",
    summary = "The default model's metadata, as vetiver serves it",
    responses(
        (status = 200, body = VetiverMetadata,
         example = json!({"user": {}, "version": "1.0.0", "url": null, "required_pkgs": ["randomForest"]})),
        (status = 404, description = "no default model", body = ErrorMessage),
    )
)]
pub async fn metadata(State(state): State<AppState>) -> Response {
    match default_model(&state) {
        Ok(info) => Json(VetiverMetadata {
            user: Map::new(),
            version: info.version.clone(),
            url: None,
            required_pkgs: required_pkgs(&info.r_class),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/prototype",
    tag = "vetiver",
    summary = "The default model's input columns with their types, as vetiver's prototype",
    description = "One entry per input column, in the order R sees them. `{}` when the model declares no \
                   schema (its columns are then passed to R as they come).",
    responses(
        (status = 200, body = HashMap<String, PrototypeColumn>,
         example = json!({"x1": {"type": "double", "example": 0.5, "details": {}},
                          "grp": {"type": "factor", "example": "a", "details": {"levels": ["a", "b"]}}})),
        (status = 404, description = "no default model", body = ErrorMessage),
    )
)]
pub async fn prototype(State(state): State<AppState>) -> Response {
    match default_model(&state) {
        Ok(info) => Json(prototype_of(&info)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn default_model(state: &AppState) -> Result<ModelInfo, ApiError> {
    let name = state.default_model_name()?;
    state.find_model(&name, None)
}

/// The prototype of `info`'s input columns, keyed by column name in schema order.
pub fn prototype_of(info: &ModelInfo) -> Map<String, Value> {
    let Some(schema) = &info.schema else { return Map::new() };
    schema
        .columns
        .iter()
        .map(|spec| {
            let mut details = Map::new();
            if let Some(levels) = &spec.levels {
                details.insert("levels".into(), json!(levels));
            }
            let column =
                PrototypeColumn { column_type: spec.column_type.r_type(), example: example_value(spec), details };
            (spec.name.clone(), serde_json::to_value(column).expect("a prototype column serializes"))
        })
        .collect()
}

/// `2025-01-31 12:00:00` (UTC), as R prints a time.
const R_TIME: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

fn r_timestamp(at: time::OffsetDateTime) -> String {
    at.format(R_TIME).expect("a UTC time formats as year, month, day and time")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names() {
        assert_eq!(vetiver_shape(json!([1.5, null])), json!({".pred": [1.5, null]}));
        assert_eq!(vetiver_shape(json!(["setosa"])), json!({".pred": ["setosa"]}));
        let rows = json!([{"a": 0.25, "b": 0.75}]);
        assert_eq!(vetiver_shape(rows.clone()), rows);
        let at = |seconds| r_timestamp(time::OffsetDateTime::from_unix_timestamp(seconds).unwrap());
        assert_eq!(at(0), "1970-01-01 00:00:00");
        assert_eq!(at(951_782_400 + 3_661), "2000-02-29 01:01:01");
        assert_eq!(at(1_738_324_800), "2025-01-31 12:00:00");
    }
}
