//! The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) over rfleet's scoring,
//! so clients such as Python's `tritonclient.http` work unchanged.
//!
//! A model's input is a table, so each input tensor is one column: its `name` is the
//! column's, its `data` the column's values (flat or nested), its `shape` `[n]` or `[n, 1]`.
//! A single `[n, k]` tensor is also accepted as the k schema columns in order (what a
//! client of an sklearn-style server sends). Each prediction column comes back as one
//! output tensor of shape `[n]`; a single prediction vector (rfleet's `.pred`) is named
//! `predict`, as KServe's own model servers name it. Factor and character predictions are
//! `BYTES`, R's `NA` is JSON `null`.
//!
//! Only the JSON encoding is spoken: the binary tensor extension and shared memory are
//! refused with a clear 400, and outputs are always sent as JSON (which `tritonclient`
//! reads whether or not it asked for binary). Errors answer `{"error": "..."}`, the
//! protocol's shape, with the status rfleet gives the same problem elsewhere.
//!
//! The version routes (`/v2/models/{name}/versions/{version}/...`) pin a version; the
//! others go by the routing rule. An answer's `model_version` is the version that answered
//! (the reply's, as the `x-rfleet-model-version` header says it).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::json::{column_to_json, frame_from_value};
use protocol::{ColumnData, ColumnType, Engine, Frame, Input, ModelInfo, ModelKind, Options, Schema, Timings};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::scoring::Target;
use crate::scoring::{self, checked_frame, json_error, Answer, CallHeaders, Failure, Parse, Parsed, ScoreCall, Scored};
use crate::AppState;

/// The tag of the protocol's operations in the OpenAPI document.
pub const OIP_TAG: &str = "open inference protocol";

/// The name of the output tensor holding a single prediction vector (rfleet's `.pred`).
pub const PREDICT_OUTPUT: &str = "predict";

/// Sent by clients that append binary tensor data after the JSON header.
const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// An error in the protocol's shape: `{"error": "..."}`, with the worker's timings as
/// headers when a worker answered.
#[derive(Debug)]
pub struct OipError {
    status: StatusCode,
    message: String,
    timings: Option<Box<Timings>>,
    model_version: Option<String>,
}

/// The body of every OIP error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": "model 'iris' is not served here (served: rf_reg)"}))]
pub struct OipErrorBody {
    pub error: String,
}

impl OipError {
    fn bad_request(message: impl Into<String>) -> Self {
        OipError::from(ApiError::bad_request(message))
    }
}

impl From<ApiError> for OipError {
    fn from(error: ApiError) -> Self {
        OipError { status: error.status(), message: error.to_string(), timings: None, model_version: None }
    }
}

impl From<Failure> for OipError {
    fn from(failure: Failure) -> Self {
        OipError { timings: failure.timings, model_version: failure.model_version, ..OipError::from(failure.error) }
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(OipErrorBody { error: self.message })).into_response();
        if let Some(timings) = &self.timings {
            scoring::insert_timings(response.headers_mut(), timings);
        }
        scoring::insert_model_version(response.headers_mut(), self.model_version.as_deref());
        response
    }
}

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<String>,
}

/// A tensor's description in model metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    /// `FP64`, `INT32`, `BOOL` or `BYTES`.
    pub datatype: &'static str,
    /// `[-1]`: any number of rows.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    /// The versions of this model that are served (empty for an unversioned model).
    pub versions: Vec<String>,
    /// Always `R`.
    pub platform: &'static str,
    /// One tensor per input column of the model's schema.
    pub inputs: Vec<TensorMetadata>,
    /// The default prediction: one vector named `predict`. Models answering a matrix or
    /// a data.frame return one tensor per column instead, named after it.
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2/health/ready`, `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    pub live: bool,
}

/// `POST /v2/models/{name}/infer`: the request.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "42",
    "inputs": [
        {"name": "x1", "datatype": "FP64", "shape": [2], "data": [0.5, 1.5]},
        {"name": "grp", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}
    ],
    "outputs": [{"name": "predict"}]
}))]
pub struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    pub id: Option<String>,
    /// `type` is passed to R's `predict`; `engine` (`auto`, `r`, `native`) picks the engine
    /// as `?engine=` does; other parameters are ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// One tensor per input column.
    #[schema(min_items = 1)]
    pub inputs: Vec<InputTensor>,
    /// Which outputs to return; all when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input column.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputTensor {
    pub name: String,
    /// `[n]` or `[n, 1]` for one column of n rows; `[n, k]` for the schema's k columns.
    #[schema(min_items = 1)]
    pub shape: Vec<i64>,
    /// `FP64`, `FP32`, `INT8`..`INT64`, `UINT8`..`UINT64`, `BOOL` or `BYTES` (strings).
    #[schema(schema_with = datatype_schema)]
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// The values, row-major, flat or nested. Required: only the JSON encoding is spoken.
    // Optional here so that its absence gets this module's message rather than serde's.
    #[serde(default)]
    #[schema(value_type = Value, required = true)]
    pub data: Option<Value>,
}

/// The input datatypes [`check_datatype`] accepts.
pub const INPUT_DATATYPES: &[&str] = &[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64", "BYTES",
];

fn datatype_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(INPUT_DATATYPES.iter().copied()))
        .build()
}

/// An output the caller wants back.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data` is accepted and ignored: outputs are always JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST /v2/models/{name}/infer`: the answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "model_name": "rf_reg", "id": "42",
    "outputs": [{"name": "predict", "datatype": "FP64", "shape": [2], "data": [10.25, 12.5]}]
}))]
pub struct InferResponse {
    pub model_name: String,
    /// The version that answered (absent for an unversioned model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub id: String,
    pub outputs: Vec<OutputTensor>,
}

/// One prediction column.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<Value>,
}

#[utoipa::path(get, path = "/v2", tag = OIP_TAG, summary = "Server metadata",
    responses((status = 200, body = ServerMetadata, example = json!({"name": "rfleet", "version": "0.1.0", "extensions": []}))))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata { name: "rfleet", version: env!("CARGO_PKG_VERSION"), extensions: Vec::new() })
}

#[utoipa::path(get, path = "/v2/health/live", operation_id = "v2_live", tag = OIP_TAG,
    summary = "Server liveness",
    responses((status = 200, body = Liveness)))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", operation_id = "v2_ready", tag = OIP_TAG,
    summary = "Server readiness",
    description = "Ready when models are loaded, an R host is up and the bus takes requests.",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    match crate::routes::ready(State(state)).await {
        Ok(_) => Json(Readiness { name: None, ready: true, error: None }).into_response(),
        Err(e) => {
            (e.status(), Json(Readiness { name: None, ready: false, error: Some(e.to_string()) })).into_response()
        }
    }
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = OIP_TAG, summary = "Model metadata",
    params(("name" = String, Path, description = "the model's name")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = OipErrorBody)))]
pub async fn model_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelMetadata>, OipError> {
    let Path(name) = path.map_err(path_error)?;
    metadata(&state, &name, None)
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = OIP_TAG,
    summary = "Model metadata of one version",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = OipErrorBody)))]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelMetadata>, OipError> {
    let Path((name, version)) = path.map_err(path_error)?;
    metadata(&state, &name, Some(&version))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Json<ModelMetadata>, OipError> {
    let info = state.find_model(name, version)?;
    // One entry per version, in version order already.
    let versions: Vec<String> =
        state.shared.catalog.snapshot().versions(&info.name).filter_map(|s| s.info.version.clone()).collect();
    Ok(Json(model_metadata_of(&info, versions)))
}

/// The protocol's description of `info`.
pub fn model_metadata_of(info: &ModelInfo, versions: Vec<String>) -> ModelMetadata {
    let inputs = info
        .schema
        .iter()
        .flat_map(|s| &s.columns)
        .map(|c| TensorMetadata { name: c.name.clone(), datatype: datatype_of(c.column_type), shape: vec![-1] })
        .collect();
    // Classification forests answer labels; for other models the default is a number.
    let classes = info.forest.as_ref().is_some_and(|f| f.classes.is_some());
    let output_type = if classes { "BYTES" } else { "FP64" };
    ModelMetadata {
        name: info.name.clone(),
        versions,
        platform: "R",
        inputs,
        outputs: vec![TensorMetadata { name: PREDICT_OUTPUT.into(), datatype: output_type, shape: vec![-1] }],
    }
}

/// The tensor datatype of an input column type.
pub fn datatype_of(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Numeric => "FP64",
        ColumnType::Integer => "INT32",
        ColumnType::Logical => "BOOL",
        ColumnType::Character | ColumnType::Factor | ColumnType::Ordered => "BYTES",
    }
}

#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = OIP_TAG, summary = "Model readiness",
    params(("name" = String, Path, description = "the model's name")),
    responses((status = 200, body = Readiness), (status = 404, body = OipErrorBody), (status = 503, body = Readiness)))]
pub async fn model_ready(State(state): State<AppState>, path: Result<Path<String>, PathRejection>) -> Response {
    match path.map_err(path_error) {
        Ok(Path(name)) => readiness(&state, &name, None),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = OIP_TAG,
    summary = "Model readiness of one version",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    responses((status = 200, body = Readiness), (status = 404, body = OipErrorBody), (status = 503, body = Readiness)))]
pub async fn model_version_ready(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match path.map_err(path_error) {
        Ok(Path((name, version))) => readiness(&state, &name, Some(&version)),
        Err(e) => e.into_response(),
    }
}

/// A served model (or version) is ready when an R host that holds it can score now.
fn readiness(state: &AppState, name: &str, version: Option<&str>) -> Response {
    let info = match state.find_model(name, version) {
        Ok(info) => info,
        Err(e) => return OipError::from(e).into_response(),
    };
    let shared = &state.shared;
    let snapshot = shared.catalog.snapshot();
    let live = match version {
        // A version kept while its fleet is scaled to zero takes requests: they wake it.
        Some(_) => snapshot.find(name, version).is_some_and(|s| s.live_hosts > 0 || s.idle),
        None => snapshot.versions(name).any(|s| s.live_hosts > 0 || s.idle),
    };
    if live && shared.requester.is_ready() {
        return Json(Readiness { name: Some(info.name), ready: true, error: None }).into_response();
    }
    let error = Some("no R host is running, or the message bus is not ready".to_string());
    (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { name: Some(info.name), ready: false, error })).into_response()
}

#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = OIP_TAG, summary = "Score with a model",
    params(("name" = String, Path, description = "the model's name")),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse)))]
pub async fn infer(
    State(state): State<AppState>,
    request_id: RequestId,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    let Path(name) = path.map_err(path_error)?;
    infer_with(&state, Target { name, version: None }, request_id, headers, body).await
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = OIP_TAG,
    summary = "Score with one version of a model",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse)))]
pub async fn infer_version(
    State(state): State<AppState>,
    request_id: RequestId,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    let Path((name, version)) = path.map_err(path_error)?;
    infer_with(&state, Target { name, version: Some(version) }, request_id, headers, body).await
}

async fn infer_with(
    state: &AppState,
    target: Target,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    if headers.contains_key(INFERENCE_HEADER_CONTENT_LENGTH) {
        return Err(OipError::bad_request(
            "the binary tensor extension is not supported: send tensors as JSON data (tritonclient: \
             set_data_from_numpy(..., binary_data=False))",
        ));
    }
    let call = ScoreCall {
        target,
        body,
        parse: Tensors,
        options: Options::default(),
        headers: CallHeaders::from_headers(&headers)?,
        request_id: request_id.clone(),
    };
    let Scored { model, answer, timings, extra: wanted } = scoring::execute(state, call).await?;
    let outputs = match answer {
        Answer::Predictions(frame) => outputs_from_frame(&frame),
        // An Azure ML entry script's own JSON: read as `POST /score` would answer it.
        Answer::Json(text) => serde_json::from_str(&text)
            .map_err(|e| format!("the model's answer is not JSON: {e}"))
            .and_then(|predictions| outputs_from_predictions(&predictions))
            .map_err(|message| OipError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
                timings: Some(Box::new(timings.clone())),
                model_version: timings.model_version.clone(),
            })?,
    };
    let outputs = select_outputs(outputs, wanted.outputs.as_deref()).map_err(|message| OipError {
        timings: Some(Box::new(timings.clone())),
        model_version: timings.model_version.clone(),
        ..OipError::bad_request(message)
    })?;
    let id = wanted.id.unwrap_or(request_id);
    // The version that answered, as the reply says (else the one published for).
    let model_version = timings.model_version.clone();
    let mut response =
        Json(InferResponse { model_name: model.name.clone(), model_version, id, outputs }).into_response();
    scoring::insert_timings(response.headers_mut(), &timings);
    Ok(response)
}

/// An inference request's body: its tensors become the input for the model's kind (a
/// frame; for an Azure ML entry script, the rows as JSON text, the body every scoring path
/// hands such a script); `parameters.type` is passed to `predict`, `parameters.engine`
/// picks the engine.
struct Tensors;

/// What the answer needs of the request: its `id` and the outputs it asked for.
struct Wanted {
    id: Option<String>,
    outputs: Option<Vec<RequestedOutput>>,
}

impl Parse for Tensors {
    type Extra = Wanted;

    fn parse(self, body: &[u8], info: &ModelInfo, max_rows: usize) -> Result<Parsed<Wanted>, ApiError> {
        let request: InferRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed inference request: {e}")))?;
        let rows =
            Value::Array(rows_from_inputs(&request.inputs, info.schema.as_ref()).map_err(ApiError::bad_request)?);
        let input = match info.kind {
            ModelKind::AzureMl => Input::Json(rows.to_string()),
            ModelKind::Predict | ModelKind::PredictFn => {
                Input::Frame(checked_frame(frame_from_value(&rows).map_err(json_error)?, info, max_rows)?)
            }
        };
        let parameter = |key: &str| request.parameters.as_ref().and_then(|p| p.get(key));
        let predict_type = parameter("type").and_then(Value::as_str);
        let engine = parameter("engine")
            .map(|engine| {
                Engine::deserialize(engine).map_err(|_| {
                    ApiError::bad_request(format!(
                        "parameters.engine is {engine}: it is one of \"auto\", \"r\", \"native\""
                    ))
                })
            })
            .transpose()?;
        Ok(Parsed {
            input,
            predict_type: predict_type.map(str::to_string),
            engine,
            extra: Wanted { id: request.id, outputs: request.outputs },
        })
    }
}

fn path_error(rejection: PathRejection) -> OipError {
    OipError::from(crate::routes::path_error(rejection))
}

/// Turns input tensors into row objects, the body every scoring path reads (Azure ML
/// entry scripts included). Checks what the protocol promises: shapes match the data,
/// values match the datatype, every column has the same number of rows.
pub fn rows_from_inputs(inputs: &[InputTensor], schema: Option<&Schema>) -> Result<Vec<Value>, String> {
    if inputs.is_empty() {
        return Err("no inputs: send one input tensor per column".into());
    }
    let mut columns: Vec<(String, Vec<Value>)> = Vec::new();
    for input in inputs {
        let name = &input.name;
        if let Some(parameters) = &input.parameters {
            if parameters.contains_key("binary_data_size") || parameters.contains_key("shared_memory_region") {
                return Err(format!(
                    "input '{name}': binary data and shared memory are not supported; send the values as JSON data"
                ));
            }
        }
        let data = input.data.as_ref().ok_or_else(|| format!("input '{name}' has no data"))?;
        let mut values = Vec::new();
        flatten(data, &mut values);
        for (i, value) in values.iter().enumerate() {
            check_datatype(name, &input.datatype, i, value)?;
        }
        let dims: Vec<usize> = input
            .shape
            .iter()
            .map(|d| {
                usize::try_from(*d).map_err(|_| format!("input '{name}': shape {:?} has a negative size", input.shape))
            })
            .collect::<Result<_, _>>()?;
        // Checked: a shape is the caller's to choose, and its product can overflow.
        let n_values = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        let n_values = n_values.ok_or_else(|| format!("input '{name}': shape {:?} is too large", input.shape))?;
        if dims.is_empty() || n_values != values.len() {
            return Err(format!(
                "input '{name}': shape {:?} holds {n_values} values but data has {}",
                input.shape,
                values.len()
            ));
        }
        match dims.as_slice() {
            [_] | [_, 1] => columns.push((name.clone(), values)),
            [n_rows, width] => {
                // One [n, k] tensor: the schema's k columns, in order.
                let schema_columns = schema.map(|s| s.columns.as_slice()).unwrap_or_default();
                if inputs.len() != 1 || schema_columns.is_empty() || schema_columns.len() != *width {
                    // Only a model with a schema has columns in an order.
                    let or_matrix = match schema_columns.len() {
                        0 => String::new(),
                        k => format!(", or one [n, {k}] input holding the model's columns in order"),
                    };
                    return Err(format!(
                        "input '{name}': shape {:?} is a matrix; send one input per column (shape [n] or [n, 1]){or_matrix}",
                        input.shape
                    ));
                }
                for (c, spec) in schema_columns.iter().enumerate() {
                    let column = (0..*n_rows).map(|r| values[r * width + c].clone()).collect();
                    columns.push((spec.name.clone(), column));
                }
            }
            _ => {
                return Err(format!(
                    "input '{name}': shape {:?} has more than two dimensions; send one input per column, shape [n]",
                    input.shape
                ))
            }
        }
    }
    let n_rows = columns[0].1.len();
    if let Some((name, values)) = columns.iter().find(|(_, v)| v.len() != n_rows) {
        return Err(format!(
            "input '{name}' has {} rows but input '{}' has {n_rows}; every input is one column of the same rows",
            values.len(),
            columns[0].0
        ));
    }
    Ok((0..n_rows)
        .map(|row| Value::Object(columns.iter().map(|(name, values)| (name.clone(), values[row].clone())).collect()))
        .collect())
}

fn flatten(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other.clone()),
    }
}

fn check_datatype(name: &str, datatype: &str, index: usize, value: &Value) -> Result<(), String> {
    let fits = match datatype {
        "BYTES" => value.is_string(),
        "BOOL" => value.is_boolean(),
        "FP16" | "FP32" | "FP64" => value.is_number(),
        "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => {
            value.is_i64() || value.is_u64()
        }
        other => {
            return Err(format!(
                "input '{name}': datatype '{other}' is not supported (use FP64, FP32, INT32, INT64, BOOL or BYTES)"
            ))
        }
    };
    // JSON null is R's NA in any column.
    if fits || value.is_null() {
        Ok(())
    } else {
        Err(format!("input '{name}': value {index} ({value}) is not {datatype}"))
    }
}

/// One tensor per prediction column, typed by the column; a single column is `predict`.
pub fn outputs_from_frame(frame: &Frame) -> Vec<OutputTensor> {
    let single = frame.columns.len() == 1;
    frame
        .columns
        .iter()
        .map(|column| OutputTensor {
            name: if single { PREDICT_OUTPUT.to_string() } else { column.name.clone() },
            datatype: match column.data {
                ColumnData::F64 { .. } => "FP64",
                ColumnData::I32 { .. } => "INT32",
                ColumnData::Bool { .. } => "BOOL",
                ColumnData::Str { .. } | ColumnData::Factor { .. } => "BYTES",
            },
            shape: vec![frame.n_rows],
            data: column_to_json(&column.data),
        })
        .collect()
}

/// Turns `POST /score`'s JSON (a plain array, or row objects) into one tensor per column:
/// what an Azure ML entry script answers.
pub fn outputs_from_predictions(predictions: &Value) -> Result<Vec<OutputTensor>, String> {
    let rows = predictions.as_array().ok_or("the model's answer is not an array of predictions")?;
    if !rows.iter().any(Value::is_object) {
        return Ok(vec![tensor(PREDICT_OUTPUT, rows.clone())?]);
    }
    let first = rows.iter().find_map(Value::as_object).into_iter().flat_map(|o| o.keys().cloned());
    let names: Vec<String> = first.collect();
    names
        .iter()
        .map(|name| tensor(name, rows.iter().map(|row| row.get(name).cloned().unwrap_or(Value::Null)).collect()))
        .collect()
}

fn tensor(name: &str, data: Vec<Value>) -> Result<OutputTensor, String> {
    let present = || data.iter().filter(|v| !v.is_null());
    let datatype = if present().next().is_none() {
        // Nothing but NA: numbers are the likeliest kind, and null reads as NaN in numpy.
        "FP64"
    } else if present().all(Value::is_string) {
        "BYTES"
    } else if present().all(Value::is_boolean) {
        "BOOL"
    } else if present().all(|v| v.as_i64().is_some_and(|i| i32::try_from(i).is_ok())) {
        "INT32"
    } else if present().all(|v| v.is_i64() || v.is_u64()) {
        "INT64"
    } else if present().all(Value::is_number) {
        "FP64"
    } else {
        return Err(format!("prediction column '{name}' mixes types and cannot be one tensor"));
    };
    Ok(OutputTensor { name: name.to_string(), datatype, shape: vec![data.len()], data })
}

/// Keeps the requested outputs, in the requested order; all of them when none are named.
pub fn select_outputs(
    outputs: Vec<OutputTensor>,
    requested: Option<&[RequestedOutput]>,
) -> Result<Vec<OutputTensor>, String> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else { return Ok(outputs) };
    requested
        .iter()
        .map(|wanted| {
            outputs.iter().find(|o| o.name == wanted.name).cloned().ok_or_else(|| {
                let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                format!("unknown output '{}' (this model's outputs: {})", wanted.name, names.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ColumnSpec;
    use serde_json::json;

    fn inputs(value: Value) -> Vec<InputTensor> {
        serde_json::from_value(value).unwrap()
    }

    fn check_rows(tensors: Value, schema: Option<&Schema>, expected: Result<Value, &str>) {
        match (rows_from_inputs(&inputs(tensors.clone()), schema), expected) {
            (Ok(rows), Ok(want)) => assert_eq!(Value::Array(rows), want, "{tensors}"),
            (Err(e), Err(want)) => assert_eq!(e, want, "{tensors}"),
            (got, want) => panic!("{tensors}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn inputs_become_rows() {
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [2], "data": [0.5, null]},
                   {"name": "g", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}]),
            None,
            Ok(json!([{"x": 0.5, "g": "a"}, {"x": null, "g": "b"}])),
        );
        let schema = Schema {
            columns: ["a", "b"]
                .iter()
                .map(|n| ColumnSpec { name: n.to_string(), column_type: ColumnType::Numeric, levels: None })
                .collect(),
        };
        check_rows(
            json!([{"name": "input-0", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]),
            Some(&schema),
            Ok(json!([{"a": 1, "b": 2}, {"a": 3, "b": 4}])),
        );
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [3], "data": [1.0, 2.0]}]),
            None,
            Err("input 'x': shape [3] holds 3 values but data has 2"),
        );
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [1], "data": ["a"]}]),
            None,
            Err("input 'x': value 0 (\"a\") is not FP64"),
        );
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]},
                   {"name": "y", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}]),
            None,
            Err("input 'y' has 2 rows but input 'x' has 1; every input is one column of the same rows"),
        );
        // Found by schemathesis: a shape whose product overflows, a matrix of no columns.
        check_rows(
            json!([{"name": "x", "datatype": "INT64", "shape": [3544, 1251432, 9223372036854775806u64], "data": []}]),
            None,
            Err("input 'x': shape [3544, 1251432, 9223372036854775806] is too large"),
        );
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [2, 0], "data": []}]),
            None,
            Err("input 'x': shape [2, 0] is a matrix; send one input per column (shape [n] or [n, 1])"),
        );
        check_rows(
            json!([{"name": "x", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}}]),
            None,
            Err("input 'x': binary data and shared memory are not supported; send the values as JSON data"),
        );
    }

    /// The documented datatypes are those accepted.
    #[test]
    fn documented_datatypes_are_accepted() {
        for datatype in INPUT_DATATYPES {
            assert_eq!(check_datatype("x", datatype, 0, &Value::Null), Ok(()), "{datatype}");
        }
        assert!(check_datatype("x", "FP8", 0, &Value::Null).is_err());
    }

    #[test]
    fn predictions_become_outputs() {
        let one = outputs_from_predictions(&json!([1.5, null])).unwrap();
        assert_eq!(
            one,
            [OutputTensor {
                name: "predict".into(),
                datatype: "FP64",
                shape: vec![2],
                data: vec![json!(1.5), Value::Null]
            }]
        );
        let labels = outputs_from_predictions(&json!(["setosa", "virginica"])).unwrap();
        assert_eq!((labels[0].datatype, labels[0].shape.as_slice()), ("BYTES", &[2][..]));
        let probs = outputs_from_predictions(&json!([{"a": 0.25, "b": 1}, {"a": 0.5, "b": 2}])).unwrap();
        let described: Vec<(&str, &str)> = probs.iter().map(|o| (o.name.as_str(), o.datatype)).collect();
        assert_eq!(described, [("a", "FP64"), ("b", "INT32")]);
        let requested: Vec<RequestedOutput> = serde_json::from_value(json!([{"name": "b"}])).unwrap();
        assert_eq!(select_outputs(probs.clone(), Some(&requested)).unwrap()[0].name, "b");
        let unknown: Vec<RequestedOutput> = serde_json::from_value(json!([{"name": "c"}])).unwrap();
        assert_eq!(
            select_outputs(probs, Some(&unknown)).unwrap_err(),
            "unknown output 'c' (this model's outputs: a, b)"
        );
    }
}
