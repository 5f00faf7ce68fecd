//! The OpenAPI 3.1 document (`GET /openapi.json`, and `GET /swagger.json` where Azure ML
//! clients look for it) and Swagger UI at `/docs`.
//!
//! The document is generated from the handlers' `#[utoipa::path]` annotations and the
//! types they exchange ([`ApiDoc`]), then completed on each request from the catalog: the
//! served model names, one request schema per model built from its input schema, and
//! example bodies from the default model's columns, so "Try it out" in Swagger UI scores
//! a row as it stands. The catalog can change (workers announce models over a broker), so
//! nothing of it is cached.
//!
//! Swagger UI's assets are compiled into the binary (`utoipa-swagger-ui`'s `vendored`
//! feature): `/docs` works on a machine without internet access.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use protocol::{ColumnSpec, ColumnType, ModelInfo};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::oip::{self, datatype_of};
use crate::vetiver::{self, example_value};
use crate::AppState;

/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";
/// Where the UI reads the document from.
pub const OPENAPI_PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rfleet",
        description = "Real-time scoring of R models. Bodies for the scoring routes: an array of row objects \
                       (as `jsonlite::toJSON(df)` writes them), pandas' split orientation, or either inside \
                       `{\"data\": ...}`. Also spoken: vetiver's `/predict` and the Open Inference Protocol (`/v2`)."
    ),
    paths(
        healthy, live, ready, list_models, get_model, get_model_version,
        score_default, score_model, score_model_version,
        vetiver::predict_default, vetiver::predict_model, vetiver::ping, vetiver::metadata, vetiver::prototype,
        oip::server_metadata, oip::live, oip::ready, oip::model_metadata, oip::model_version_metadata,
        oip::model_ready, oip::model_version_ready, oip::infer, oip::infer_version,
        openapi_json, swagger_json, docs,
    ),
    components(schemas(ScoringBody, Predictions, ErrorMessage, ModelDescription)),
    tags(
        (name = "scoring", description = "Azure ML conventions: `POST /score` and named models"),
        (name = "probes", description = "liveness and readiness"),
        (name = "vetiver", description = "vetiver / plumber conventions"),
        (name = "open inference protocol", description = "KServe v2 / Triton HTTP (JSON tensors)"),
        (name = "documentation", description = "this document and Swagger UI"),
    )
)]
pub struct ApiDoc;

/// A scoring body: rows, pandas' split orientation, or either inside `{"data": ...}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ScoringBody {
    /// `[{"col": value, ...}, ...]`; `null` or an absent key is `NA`.
    Rows(Vec<HashMap<String, Value>>),
    /// `{"columns": [...], "data": [[...], ...]}`.
    Split { columns: Vec<String>, data: Vec<Vec<Value>> },
    /// `{"data": <rows or split>}`.
    Wrapped {
        #[schema(value_type = Value)]
        data: Value,
    },
}

/// Predictions: a plain array for one vector, row objects for a matrix or data.frame, or
/// an Azure ML entry script's own JSON.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Predictions {
    Vector(Vec<Value>),
    Rows(Vec<HashMap<String, Value>>),
}

/// Every error of rfleet's own routes.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"code": "invalid_input", "message": "column 'x1': expected a number, got a string in row 2: \"a\""}))]
pub struct ErrorMessage {
    pub message: String,
    /// A stable code (`bad_request`, `model_not_found`, `invalid_input`, `r_error`, ...), when there is one.
    pub code: Option<String>,
}

/// A served model, as `GET /models` lists it (the wire type `protocol::ModelInfo`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDescription {
    pub name: String,
    pub version: Option<String>,
    /// `predict`, `predict_fn` or `azure_ml`.
    pub kind: String,
    /// R's `class()` of the model.
    pub r_class: Vec<String>,
    /// `{"columns": [{"name", "type", "levels"?}]}`; `type` is numeric, integer, logical,
    /// character, factor or ordered.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    pub predict_type: Option<String>,
    /// `{"n_trees", "classes"}` for random forests.
    #[schema(value_type = Option<Object>)]
    pub forest: Option<Value>,
}

// The handlers of `routes.rs` and `score.rs`, documented here so this module is the one
// place that knows OpenAPI; the stand-ins are never called.

#[utoipa::path(get, path = "/", tag = "probes", summary = "Azure ML liveness: `Healthy`",
    responses((status = 200, content_type = "text/plain", body = String, example = "Healthy")))]
#[allow(dead_code)]
fn healthy() {}

#[utoipa::path(get, path = "/live", tag = "probes", summary = "Liveness",
    responses((status = 200, content_type = "text/plain", body = String, example = "live")))]
#[allow(dead_code)]
fn live() {}

#[utoipa::path(get, path = "/ready", tag = "probes", summary = "Readiness: models loaded, an R host up, the bus ready",
    responses((status = 200, content_type = "text/plain", body = String, example = "ready"),
              (status = 503, body = ErrorMessage)))]
#[allow(dead_code)]
fn ready() {}

#[utoipa::path(get, path = "/models", tag = "scoring", summary = "Served models with their input schemas",
    responses((status = 200, body = Vec<ModelDescription>)))]
#[allow(dead_code)]
fn list_models() {}

#[utoipa::path(get, path = "/models/{name}", tag = "scoring", summary = "One served model",
    params(("name" = String, Path, description = "the model's name")),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
#[allow(dead_code)]
fn get_model() {}

#[utoipa::path(get, path = "/models/{name}/versions/{version}", tag = "scoring", summary = "One version of a served model",
    params(("name" = String, Path, description = "the model's name"), ("version" = String, Path)),
    responses((status = 200, body = ModelDescription), (status = 404, body = ErrorMessage)))]
#[allow(dead_code)]
fn get_model_version() {}

#[utoipa::path(post, path = "/score", tag = "scoring",
    summary = "Score rows with the served model (or `models.default`)",
    params(
        ("type" = Option<String>, Query, description = "passed to R's `predict` as `type` (e.g. `prob`)"),
        ("x-rfleet-timeout-ms" = Option<u64>, Header, description = "this request's deadline"),
    ),
    request_body = ScoringBody,
    responses(
        (status = 200, body = Predictions, example = json!([21.4, 19.7])),
        (status = 400, description = "malformed JSON, empty body, bad header", body = ErrorMessage),
        (status = 404, description = "no model to score with", body = ErrorMessage),
        (status = 413, description = "body over `server.max_body_bytes`", body = ErrorMessage),
        (status = 422, description = "input does not fit the model, or R signalled an error", body = ErrorMessage),
        (status = 500, description = "R hosts crashed on every attempt", body = ErrorMessage),
        (status = 503, description = "overloaded (`Retry-After`) or no R host up", body = ErrorMessage),
        (status = 504, description = "no answer before the deadline", body = ErrorMessage),
    ))]
#[allow(dead_code)]
fn score_default() {}

#[utoipa::path(post, path = "/models/{name}/score", tag = "scoring", summary = "Score rows with one model",
    params(
        ("name" = String, Path, description = "the model's name"),
        ("type" = Option<String>, Query, description = "passed to R's `predict` as `type` (e.g. `prob`)"),
        ("x-rfleet-timeout-ms" = Option<u64>, Header, description = "this request's deadline"),
    ),
    request_body = ScoringBody,
    responses(
        (status = 200, body = Predictions),
        (status = "4XX", description = "bad body, unknown model, input that does not fit", body = ErrorMessage),
        (status = "5XX", description = "R hosts down or crashing, deadline passed", body = ErrorMessage),
    ))]
#[allow(dead_code)]
fn score_model() {}

#[utoipa::path(post, path = "/models/{name}/versions/{version}/score", tag = "scoring",
    summary = "Score rows with one version of a model",
    params(
        ("name" = String, Path, description = "the model's name"),
        ("version" = String, Path),
        ("type" = Option<String>, Query, description = "passed to R's `predict` as `type` (e.g. `prob`)"),
    ),
    request_body = ScoringBody,
    responses(
        (status = 200, body = Predictions),
        (status = "4XX", description = "bad body, unknown model, input that does not fit", body = ErrorMessage),
        (status = "5XX", description = "R hosts down or crashing, deadline passed", body = ErrorMessage),
    ))]
#[allow(dead_code)]
fn score_model_version() {}

#[utoipa::path(get, path = "/openapi.json", tag = "documentation", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state))
}

#[utoipa::path(get, path = "/swagger.json", tag = "documentation", summary = "This document, where Azure ML clients look",
    responses((status = 200, description = "OpenAPI 3.1, the same as `/openapi.json`", body = Object)))]
pub async fn swagger_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state))
}

#[utoipa::path(get, path = "/docs/", tag = "documentation", summary = "Swagger UI",
    responses((status = 200, content_type = "text/html", body = String)))]
#[allow(dead_code)]
fn docs() {}

/// Swagger UI at [`DOCS_PATH`], reading [`OPENAPI_PATH`], with "Try it out" switched on.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new(DOCS_PATH).config(Config::new([OPENAPI_PATH]).try_it_out_enabled(true))
}

/// The document for what is served now.
pub fn document(state: &AppState) -> Value {
    let models = state.shared.catalog.models();
    let default = state.default_model_name().ok().and_then(|name| models.iter().find(|m| m.name == name).cloned());
    complete(base_document(), &models, default.as_ref())
}

/// The part generated from the code, the same for every fleet.
pub fn base_document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc
}

/// Adds what the catalog knows: model names, per-model row schemas and examples.
pub fn complete(mut doc: Value, models: &[ModelInfo], default: Option<&ModelInfo>) -> Value {
    let mut names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();

    let mut per_model = Vec::new();
    for info in models.iter().filter(|m| m.schema.is_some()) {
        let key = schema_key(info);
        doc["components"]["schemas"][&key] = rows_schema(info);
        per_model.push((info, key));
    }

    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        // Model names as a choice list wherever a path names a model.
        if path.contains("{name}") && !names.is_empty() {
            for_each_operation(item, |operation| {
                for parameter in operation["parameters"].as_array_mut().into_iter().flatten() {
                    if parameter["name"] == "name" && parameter["in"] == "path" {
                        parameter["schema"]["enum"] = json!(names);
                    }
                }
            });
        }
    }
    let columns_text = describe_models(models);
    if let Some(item) = paths.get_mut("/models/{name}/score") {
        let operation = &mut item["post"];
        operation["description"] = json!(format!("Each model's input columns:\n\n{columns_text}"));
        if !per_model.is_empty() {
            let body = &mut operation["requestBody"]["content"]["application/json"];
            let mut examples = Map::new();
            for (info, key) in &per_model {
                examples.insert(key.clone(), json!({"summary": info.name, "value": example_rows(info)}));
            }
            body["examples"] = Value::Object(examples);
        }
    }
    if let Some(default) = default.filter(|d| d.schema.is_some()) {
        let key = schema_key(default);
        for (path, method) in [("/score", "post"), ("/predict", "post")] {
            if let Some(item) = paths.get_mut(path) {
                let operation = &mut item[method];
                operation["description"] = json!(format!(
                    "The default model is `{}`; its input columns:\n\n{}",
                    default.name,
                    describe_columns(default)
                ));
                let body = &mut operation["requestBody"]["content"]["application/json"];
                body["schema"] = json!({"$ref": format!("#/components/schemas/{key}")});
                // Swagger UI fills "Try it out" from this: a body that scores as it stands.
                body["example"] = example_rows(default);
            }
        }
        for path in ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"] {
            if let Some(item) = paths.get_mut(path) {
                item["post"]["requestBody"]["content"]["application/json"]["example"] = example_infer_request(default);
            }
        }
    }
    doc
}

fn for_each_operation(item: &mut Value, mut f: impl FnMut(&mut Value)) {
    for method in ["get", "post", "put", "delete", "patch"] {
        if let Some(operation) = item.get_mut(method) {
            f(operation);
        }
    }
}

/// `rows_iris` or `rows_iris_2` (version 2): a component name OpenAPI accepts.
fn schema_key(info: &ModelInfo) -> String {
    let mut key = format!("rows_{}", info.name);
    if let Some(version) = &info.version {
        key.push('_');
        key.push_str(version);
    }
    key.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' }).collect()
}

/// The JSON schema of an array of rows for `info`'s input columns. Every column is
/// nullable: `null` is R's `NA`.
fn rows_schema(info: &ModelInfo) -> Value {
    let columns = info.schema.iter().flat_map(|s| &s.columns);
    let properties: Map<String, Value> = columns.clone().map(|c| (c.name.clone(), column_schema(c))).collect();
    let required: Vec<&str> = columns.map(|c| c.name.as_str()).collect();
    json!({
        "type": "array",
        "description": format!("rows for model `{}`", info.name),
        "items": {"type": "object", "properties": properties, "required": required},
        "example": example_rows(info),
    })
}

fn column_schema(spec: &ColumnSpec) -> Value {
    match spec.column_type {
        ColumnType::Numeric => json!({"type": ["number", "null"]}),
        ColumnType::Integer => json!({"type": ["integer", "null"]}),
        ColumnType::Logical => json!({"type": ["boolean", "null"]}),
        ColumnType::Character => json!({"type": ["string", "null"]}),
        ColumnType::Factor | ColumnType::Ordered => {
            let mut levels: Vec<Value> = spec.levels.iter().flatten().map(|l| json!(l)).collect();
            levels.push(Value::Null);
            json!({"type": ["string", "null"], "enum": levels})
        }
    }
}

/// One row of plausible values for `info`'s columns.
pub fn example_rows(info: &ModelInfo) -> Value {
    let row: Map<String, Value> =
        info.schema.iter().flat_map(|s| &s.columns).map(|c| (c.name.clone(), example_value(c))).collect();
    json!([row])
}

fn example_infer_request(info: &ModelInfo) -> Value {
    let inputs: Vec<Value> = info
        .schema
        .iter()
        .flat_map(|s| &s.columns)
        .map(|c| json!({"name": c.name, "datatype": datatype_of(c.column_type), "shape": [1], "data": [example_value(c)]}))
        .collect();
    json!({"id": "1", "inputs": inputs})
}

/// `- x1: numeric` lines, for descriptions.
fn describe_columns(info: &ModelInfo) -> String {
    let Some(schema) = &info.schema else {
        return "- (no declared schema: columns are passed to R as they come)".into();
    };
    schema
        .columns
        .iter()
        .map(|c| match &c.levels {
            Some(levels) => format!("- `{}`: {} ({})", c.name, vetiver::r_type(c.column_type), levels.join(", ")),
            None => format!("- `{}`: {}", c.name, vetiver::r_type(c.column_type)),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_models(models: &[ModelInfo]) -> String {
    if models.is_empty() {
        return "(no model is served yet)".into();
    }
    models
        .iter()
        .map(|m| {
            let title = match &m.version {
                Some(v) => format!("**{}** (version {v})", m.name),
                None => format!("**{}**", m.name),
            };
            format!("{title}\n\n{}", describe_columns(m))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ForestInfo, ModelKind, Schema};

    fn model() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            version: Some("2".into()),
            kind: ModelKind::Predict,
            r_class: vec!["randomForest".into()],
            schema: Some(Schema {
                columns: vec![
                    ColumnSpec { name: "x1".into(), column_type: ColumnType::Numeric, levels: None },
                    ColumnSpec {
                        name: "grp".into(),
                        column_type: ColumnType::Factor,
                        levels: Some(vec!["a".into(), "b".into()]),
                    },
                ],
            }),
            predict_type: Some("response".into()),
            forest: Some(ForestInfo { n_trees: 10, classes: None }),
        }
    }

    /// The documented model description has every field the wire type serializes.
    #[test]
    fn model_description_matches_model_info() {
        let doc = base_document();
        let documented = doc["components"]["schemas"]["ModelDescription"]["properties"].as_object().unwrap();
        let wire = serde_json::to_value(model()).unwrap();
        for key in wire.as_object().unwrap().keys() {
            assert!(documented.contains_key(key), "ModelInfo field '{key}' is not documented");
        }
    }

    #[test]
    fn catalog_completes_the_document() {
        let info = model();
        let doc = complete(base_document(), std::slice::from_ref(&info), Some(&info));
        let score = &doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"];
        assert_eq!(score["example"], json!([{"x1": 0.5, "grp": "a"}]));
        assert_eq!(score["schema"]["$ref"], "#/components/schemas/rows_iris_2");
        let rows = &doc["components"]["schemas"]["rows_iris_2"];
        assert_eq!(rows["items"]["required"], json!(["x1", "grp"]));
        let by_name = &doc["paths"]["/models/{name}/score"]["post"];
        assert!(by_name["description"].as_str().unwrap().contains("`grp`: factor (a, b)"), "{by_name}");
        assert_eq!(by_name["parameters"][0]["schema"]["enum"], json!(["iris"]));
        let infer = &doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"];
        assert_eq!(
            infer["example"]["inputs"][1],
            json!({"name": "grp", "datatype": "BYTES", "shape": [1], "data": ["a"]})
        );
    }
}
