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
//! What every scoring operation shares (the deadline header, `type` and `split`, the error
//! statuses, the response headers saying who answered: [`ANSWER_HEADERS`], the version
//! among them) is added to each scoring operation (found by its tag) from one table ([`SCORING_ERRORS`]),
//! and with auth on [`secure`] adds the bearer scheme, `POST /token` and the requirement on
//! every operation that needs a credential, so the document never promises what the
//! server refuses.
//!
//! Swagger UI's assets are compiled into the binary (`utoipa-swagger-ui`'s `vendored`
//! feature): `/docs` works on a machine without internet access.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use protocol::message::SplitPolicy;
use protocol::{ColumnSpec, ColumnType, Engine, ModelInfo, ModelKind};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, PartialSchema, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::oip::{datatype_of, OIP_TAG};
use crate::scoring::{MAX_TIMEOUT_MS, X_RFLEET_TIMEOUT_MS};
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
    components(schemas(ScoringBody, Predictions, ErrorMessage, ModelDescription, crate::mirror::MirrorCounts)),
    tags(
        (name = "scoring", description = "Azure ML conventions: `POST /score` and named models"),
        (name = "probes", description = "liveness and readiness"),
        (name = "vetiver", description = "vetiver / plumber conventions"),
        (name = "open inference protocol", description = "KServe v2 / Triton HTTP (JSON tensors)"),
        (name = "documentation", description = "this document and Swagger UI"),
    )
)]
pub struct ApiDoc;

/// One value of a table: a number, a string, a boolean or `null` (R's `NA`). Written as
/// `anyOf` rather than a list of types, which means the same: schemathesis 4 crashes on
/// a list of types inside an array's items (its issue #3194, fixed for other places only).
fn cell() -> Value {
    json!({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"}]})
}

/// A string R can hold: without a NUL character.
const NO_NUL: &str = "^[^\\u0000]*$";

/// The tag of `POST /token`, documented only when auth is on (without it the route is not
/// served).
#[derive(OpenApi)]
#[openapi(
    tags((name = "authentication", description = "tokens for keys; every other operation but the probes needs a credential")),
)]
struct TokenDoc;

/// The name of the bearer security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

/// A scoring body: at least one row, as row objects or pandas' split orientation, or either
/// inside `{"data": ...}`. Written out by hand: `protocol::json` parses the body, so no Rust
/// type describes it to derive the schema from.
pub struct ScoringBody;

impl PartialSchema for ScoringBody {
    fn schema() -> RefOr<Schema> {
        let rows = json!({
            "type": "array", "minItems": 1,
            "description": "`[{\"col\": value, ...}, ...]`; `null` or an absent key is `NA`",
            "items": {"type": "object", "additionalProperties": cell()},
        });
        let split = json!({
            "type": "object", "required": ["columns", "data"],
            "description": "pandas' split orientation: `{\"columns\": [...], \"data\": [[...], ...]}`",
            "properties": {
                "columns": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "data": {"type": "array", "minItems": 1, "items": {"type": "array", "items": cell()}},
            },
        });
        let wrapped = json!({
            "type": "object", "required": ["data"],
            "description": "`{\"data\": <rows or split>}`",
            "properties": {"data": {"oneOf": [rows, split]}},
        });
        let schema = json!({
            "description": "rows as `jsonlite::toJSON(df)` writes them, pandas' split orientation, or either inside \
                            `{\"data\": ...}`",
            "oneOf": [rows, split, wrapped],
        });
        RefOr::T(serde_json::from_value(schema).expect("the scoring body schema is a schema"))
    }
}

impl ToSchema for ScoringBody {}

/// Predictions: a plain array for one vector, row objects for a matrix or data.frame. An
/// Azure ML entry script answers its own JSON: [`complete`] widens the schema to any JSON
/// when such a model is served.
pub struct Predictions;

impl PartialSchema for Predictions {
    fn schema() -> RefOr<Schema> {
        let schema = json!({
            "description": "one prediction vector as a plain array; a matrix or data.frame as one object per row",
            "anyOf": [
                {"type": "array", "items": cell()},
                {"type": "array", "items": {"type": "object", "additionalProperties": cell()}},
            ],
        });
        RefOr::T(serde_json::from_value(schema).expect("the predictions schema is a schema"))
    }
}

impl ToSchema for Predictions {}

/// Every error of rfleet's own routes.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"code": "invalid_input", "message": "column 'x1': expected a number, got a string in row 2: \"a\""}))]
pub struct ErrorMessage {
    pub message: String,
    /// A stable code (`bad_request`, `model_not_found`, `invalid_input`, `r_error`, ...), when there is one.
    pub code: Option<String>,
}

/// A model version, as `GET /models` lists it: when `state` is `ready`, a served version
/// (the wire type `protocol::ModelInfo`, and how it is served now: `live_hosts`,
/// `traffic`, the model's `traffic_config` and `mirrored` counts); when `failed`, a
/// package that failed to load (`name`, `version`, `error` only). See `routes::ModelEntry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDescription {
    pub name: String,
    pub version: Option<String>,
    /// `ready` (served) or `failed` (its package did not load).
    #[schema(value_type = String, pattern = "^(ready|failed)$")]
    pub state: String,
    /// Why the package failed to load (`failed` only).
    pub error: Option<String>,
    /// `predict`, `predict_fn` or `azure_ml`.
    pub kind: Option<String>,
    /// R's `class()` of the model.
    pub r_class: Option<Vec<String>>,
    /// `{"columns": [{"name", "type", "levels"?}]}`; `type` is numeric, integer, logical,
    /// character, factor or ordered.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    pub predict_type: Option<String>,
    /// `{"n_trees", "classes"}` for random forests.
    #[schema(value_type = Option<Object>)]
    pub forest: Option<Value>,
    /// Which engine scores it: `{"configured", "serving"}` (`auto`, `r` or `native`), the
    /// native forest `{"algorithm", "trees", "nodes", "bytes", "bytes_per_node", "types",
    /// "extracted"}`, the load's `self_check` `{"passed", "rows", "types", "mismatches",
    /// "ties", "message"?}`, the `reason` R serves it when it does, `r_fallback` (model.toml's)
    /// and `released` (the R hosts let go of it: only the native engine serves it).
    #[schema(value_type = Option<Object>)]
    pub engine: Option<Value>,
    /// R hosts up in the workers serving this version that take new work.
    pub live_hosts: Option<u64>,
    /// `true` when no worker serves it now and it is kept while its fleet is scaled to zero
    /// (`models.keep_idle_ms`): its requests wait in its queue for a worker to start.
    pub idle: Option<bool>,
    /// The share of the model's unpinned requests this version gets now, in percent (the
    /// routing rule: the traffic file's weights among live versions, else in proportion
    /// to live hosts, else all to the highest version).
    pub traffic: Option<f64>,
    /// The model's table in the traffic file, when it has one (the same on each version):
    /// `{"weights": {"<version>": <weight>}, "mirror": {"version", "percent"}}`.
    #[schema(value_type = Option<Object>)]
    pub traffic_config: Option<Value>,
    /// What mirroring the model's requests found, once a copy was made (the same on each
    /// version).
    pub mirrored: Option<crate::mirror::MirrorCounts>,
}

/// How a scoring operation answers errors: rfleet's `{"message", "code"}` or the Open
/// Inference Protocol's `{"error"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    Rfleet,
    Oip,
}

/// Whether an operation scores, and the shape of its errors: every `POST` of the scoring,
/// vetiver and Open Inference Protocol routes goes through `scoring::execute`, so each
/// takes the deadline header and answers the same statuses.
fn scoring_shape(method: &str, operation: &Value) -> Option<ErrorShape> {
    if method != "post" {
        return None;
    }
    let tags = operation["tags"].as_array()?;
    if tags.iter().any(|t| t == OIP_TAG) {
        Some(ErrorShape::Oip)
    } else if tags.iter().any(|t| t == "scoring" || t == "vetiver") {
        Some(ErrorShape::Rfleet)
    } else {
        None
    }
}

/// The scoring operations of `doc`: (path, its `POST` operation, the shape of its errors).
fn scoring_operations(doc: &mut Value) -> Vec<(String, &mut Value, ErrorShape)> {
    let Some(paths) = doc["paths"].as_object_mut() else { return Vec::new() };
    paths
        .iter_mut()
        .filter_map(|(path, item)| {
            let operation = item.get_mut("post")?;
            let shape = scoring_shape("post", operation)?;
            Some((path.clone(), operation, shape))
        })
        .collect()
}

/// What a scoring operation answers besides 200 (and 401 with auth on): README's table.
const SCORING_ERRORS: &[(&str, &str)] = &[
    ("400", "malformed JSON, an empty body, an invalid header or query parameter"),
    ("404", "an unknown model or version (naming the live versions), or none to score with"),
    ("413", "a body over `server.max_body_bytes`, or more rows than `server.max_rows`"),
    (
        "422",
        "input that does not fit the model (a missing column, a wrong type, an unseen factor level), or R's \
             `predict` signalled an error (R's message)",
    ),
    ("500", "the request crashed or hung R hosts on both attempts"),
    ("502", "the worker speaks another protocol version than the dispatcher (version skew in the fleet)"),
    (
        "503",
        "too many requests in flight (with `Retry-After`), no R host up, or the model's package failed to load (its \
             error)",
    ),
    (
        "504",
        "no answer before the deadline (`x-rfleet-timeout-ms`, else `server.request_timeout_ms`); a deadline \
             shorter than the model takes answers 504",
    ),
];

/// The response headers of a scoring answer (`scoring::insert_timings`), on its 200 and on
/// its errors: a worker's errors carry its timings, and every answer once a version was
/// chosen says which.
const ANSWER_HEADERS: &[(&str, &str, &str)] = &[
    ("x-rfleet-model-version", "string", "the version of the model that answered (absent for an unversioned model)"),
    ("x-rfleet-worker", "string", "the worker that answered"),
    ("x-rfleet-host-pid", "integer", "the R host process that scored"),
    ("x-rfleet-queue-ms", "number", "milliseconds from publishing until an R host took the request"),
    ("x-rfleet-r-ms", "number", "milliseconds inside R"),
    ("x-rfleet-attempts", "integer", "how many times the request was given to R"),
    (
        "x-rfleet-path",
        "string",
        "how the worker scored it: `native` (the native engine), or in R `whole`, `batch:N`, `rows:K`, `trees:K`",
    ),
];

/// The operations that take Azure ML's deployment header: those with a model but no version
/// in their path.
const DEPLOYMENT_HEADER_PATHS: &[&str] = &["/score", "/models/{name}/score"];

/// Adds the scoring operations' shared parameters and error answers to each of them.
fn scoring_conventions(doc: &mut Value) {
    let deadline = json!({
        "name": X_RFLEET_TIMEOUT_MS.as_str(), "in": "header", "required": false,
        "description": "this request's deadline in milliseconds (default `server.request_timeout_ms`)",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
    });
    let predict_type = json!({
        "name": "type", "in": "query", "required": false,
        "description": "passed to R's `predict` as `type` (e.g. `prob`); leave it out for the model's default",
        "schema": {"type": "string", "minLength": 1, "pattern": NO_NUL},
    });
    let splits: Vec<&str> =
        [SplitPolicy::Auto, SplitPolicy::Never, SplitPolicy::Always].map(SplitPolicy::as_str).into();
    let split = json!({
        "name": "split", "in": "query", "required": false,
        "description": "whether the worker may split this request across its R hosts (default: the model's policy)",
        "schema": {"type": "string", "enum": splits},
    });
    let engines: Vec<&str> = [Engine::Auto, Engine::R, Engine::Native].map(Engine::as_str).into();
    let engine = json!({
        "name": "engine", "in": "query", "required": false,
        "description": "which engine scores it: `r` (R's own `predict`), `native` (the native forest engine; \
                        a model or `type` it cannot serve is a 422) or `auto` (default: the model's `engine`)",
        "schema": {"type": "string", "enum": engines},
    });
    let deployment = json!({
        "name": crate::scoring::AZUREML_MODEL_DEPLOYMENT.as_str(), "in": "header", "required": false,
        "description": "Azure ML's deployment selector: the version of the model to score with (pinned, as \
                        `/versions/{version}/` routes are; a version not served is a 404 naming the live ones)",
        "schema": {"type": "string", "minLength": 1, "pattern": "^[\\x21-\\x7e]+$"},
    });
    let answer_headers: Map<String, Value> = ANSWER_HEADERS
        .iter()
        .map(|(name, kind, description)| {
            (name.to_string(), json!({"description": description, "schema": {"type": kind}}))
        })
        .collect();
    for (path, operation, shape) in scoring_operations(doc) {
        let mut parameters = vec![deadline.clone()];
        // The Open Inference Protocol passes `type` in the body's `parameters`.
        if shape == ErrorShape::Rfleet {
            parameters.extend([predict_type.clone(), split.clone(), engine.clone()]);
        }
        if DEPLOYMENT_HEADER_PATHS.contains(&path.as_str()) {
            parameters.push(deployment.clone());
        }
        if let Some(ok) = operation["responses"].get_mut("200") {
            ok["headers"] = Value::Object(answer_headers.clone());
        }
        match operation["parameters"].as_array_mut() {
            Some(declared) => declared.extend(parameters),
            None => operation["parameters"] = Value::Array(parameters),
        }
        let body = match shape {
            ErrorShape::Rfleet => "ErrorMessage",
            ErrorShape::Oip => "OipErrorBody",
        };
        for (status, description) in SCORING_ERRORS {
            let mut response = json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}},
            });
            response["headers"] = Value::Object(answer_headers.clone());
            if *status == "503" {
                response["headers"]["Retry-After"] = json!({
                    "description": "seconds to wait, when too many requests are in flight",
                    "schema": {"type": "integer"},
                });
            }
            operation["responses"][*status] = response;
        }
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "documentation", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>, Extension(base): Extension<BaseDocument>) -> Json<Value> {
    Json(document(&state, &base))
}

#[utoipa::path(get, path = "/swagger.json", tag = "documentation", summary = "This document, where Azure ML clients look",
    responses((status = 200, description = "OpenAPI 3.1, the same as `/openapi.json`", body = Object)))]
pub async fn swagger_json(State(state): State<AppState>, Extension(base): Extension<BaseDocument>) -> Json<Value> {
    Json(document(&state, &base))
}

/// Swagger UI's page, which `utoipa-swagger-ui` serves: documented here, routed there.
#[derive(OpenApi)]
#[openapi(paths(docs))]
pub struct DocsDoc;

#[utoipa::path(get, path = "/docs/", tag = "documentation", summary = "Swagger UI",
    responses((status = 200, content_type = "text/html", body = String)))]
#[allow(dead_code)]
fn docs() {}

/// Swagger UI at [`DOCS_PATH`], reading [`OPENAPI_PATH`], with "Try it out" switched on.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new(DOCS_PATH).config(Config::new([OPENAPI_PATH]).try_it_out_enabled(true))
}

/// The part of the document generated from the route table, the same for every fleet
/// with the same `[auth]`: made once with the router, handed to the document's handlers
/// as a request extension.
#[derive(Clone)]
pub struct BaseDocument(pub Arc<Value>);

/// The document for what is served now.
pub fn document(state: &AppState, base: &BaseDocument) -> Value {
    let models = state.shared.catalog.models();
    let default = state.default_model_name().ok().and_then(|name| models.iter().find(|m| m.name == name).cloned());
    complete(Value::clone(&base.0), &models, default.as_ref())
}

/// The generated part: `openapi` (the route table's paths and components), completed with
/// what every operation of a kind shares; with auth on, the bearer scheme and `POST
/// /token`, and the requirement on every path in `secured`.
pub fn base_document(mut openapi: utoipa::openapi::OpenApi, secured: &BTreeSet<String>, auth: bool) -> Value {
    if auth {
        openapi.merge(TokenDoc::openapi());
    }
    let mut doc = serde_json::to_value(openapi).expect("the OpenAPI document serializes");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    describe_responses(&mut doc);
    scoring_conventions(&mut doc);
    if auth {
        secure(&mut doc, secured);
    }
    doc
}

/// OpenAPI requires a description on every response; where an annotation gives none, the
/// status's reason phrase (`OK`, `Not Found`) says what it is.
fn describe_responses(doc: &mut Value) {
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for_each_operation(item, |operation| {
            for (status, response) in operation["responses"].as_object_mut().into_iter().flatten() {
                if response.get("description").is_none_or(|d| d == "") {
                    let reason = status.parse().ok().and_then(|s| StatusCode::from_u16(s).ok());
                    response["description"] = json!(reason.and_then(|s| s.canonical_reason()).unwrap_or(status));
                }
            }
        });
    }
}

/// With auth on, the document says how to authenticate: the bearer scheme, and on every
/// operation that needs a credential (all but the probes, and the documentation with
/// `auth.public_docs`) the requirement and its 401. Which ones is the route table's
/// decision (`secured`), the same the server takes. With auth off the document has none
/// of it: no credential is asked for, and `/token` is not served.
fn secure(doc: &mut Value, secured: &BTreeSet<String>) {
    doc["components"]["securitySchemes"][BEARER_SCHEME] = json!({
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <credential>`: the primary or the secondary key, a token from \
                        `POST /token`, or an access token of the OIDC issuer (`auth.oidc_issuer`)",
    });
    doc["components"]["responses"]["Unauthenticated"] = json!({
        "description": "no valid credential; the answer is the same whatever was wrong",
        "headers": {"WWW-Authenticate": {
            "description": "`Bearer realm=\"rfleet\"`, plus `error=\"invalid_token\"` when a credential was sent",
            "schema": {"type": "string"},
        }},
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorMessage"},
            "example": {"message": crate::error::UNAUTHENTICATED_MESSAGE},
        }},
    });
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for (_, item) in paths.iter_mut().filter(|(path, _)| secured.contains(path.as_str())) {
        for_each_operation(item, |operation| {
            operation["security"] = json!([{ BEARER_SCHEME: [] }]);
            operation["responses"]["401"] = json!({"$ref": "#/components/responses/Unauthenticated"});
        });
    }
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
    // An Azure ML entry script answers whatever JSON it makes.
    if models.iter().any(|m| m.kind == ModelKind::AzureMl) {
        if let Some(any_of) = doc["components"]["schemas"]["Predictions"]["anyOf"].as_array_mut() {
            any_of.push(json!({"description": "an Azure ML entry script's own JSON, as it returned it"}));
        }
    }
    if let Some(default) = default.filter(|d| d.schema.is_some()) {
        // In place of the generic example, whose columns fit no model: one that scores.
        doc["components"]["schemas"]["InferRequest"]["example"] = example_infer_request(default);
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
        "minItems": 1,
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
        ColumnType::Character => json!({"type": ["string", "null"], "pattern": NO_NUL}),
        ColumnType::Factor | ColumnType::Ordered => {
            let mut levels: Vec<Value> = spec.levels.iter().flatten().map(|l| json!(l)).collect();
            levels.push(Value::Null);
            json!({"type": ["string", "null"], "enum": levels})
        }
    }
}

/// A plausible value for a column, for prototypes and documented examples. The schema
/// knows types and levels, not ranges, so numbers are small and unremarkable.
pub fn example_value(spec: &ColumnSpec) -> Value {
    match spec.column_type {
        ColumnType::Numeric => json!(0.5),
        ColumnType::Integer => json!(1),
        ColumnType::Logical => json!(true),
        ColumnType::Character => json!("a"),
        ColumnType::Factor | ColumnType::Ordered => {
            spec.levels.as_ref().and_then(|l| l.first()).map_or(Value::Null, |l| json!(l))
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
            Some(levels) => format!("- `{}`: {} ({})", c.name, c.column_type.r_type(), levels.join(", ")),
            None => format!("- `{}`: {}", c.name, c.column_type.r_type()),
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

    use crate::auth::Auth;

    /// The generated document, as the router for this `[auth]` serves it.
    fn base(auth: Option<&Auth>) -> Value {
        crate::api::build(auth).document(auth.is_some())
    }

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
            engine: Some(protocol::EngineStatus {
                configured: Engine::Auto,
                serving: Engine::R,
                native: None,
                self_check: None,
                reason: Some("the self-check has not finished".into()),
                r_fallback: true,
                released: false,
            }),
        }
    }

    /// The documented model description has every field `GET /models` serializes, for a
    /// served version and a failed package, and requires only what both have.
    #[test]
    fn model_description_matches_model_entries() {
        use crate::routes::ModelEntry;
        let doc = base(None);
        let description = &doc["components"]["schemas"]["ModelDescription"];
        let documented = description["properties"].as_object().unwrap();
        let traffic = settings::traffic::Traffic::parse("[iris]\nweights = { 2 = 1 }\n", "t").unwrap();
        let entries = [
            ModelEntry::Ready {
                info: model(),
                live_hosts: 0,
                idle: true,
                traffic: 100.0,
                traffic_config: traffic.model("iris").cloned(),
                mirrored: Some(Default::default()),
            },
            ModelEntry::Failed { name: "bad".into(), version: Some("1".into()), error: "cannot read model.rds".into() },
        ];
        for entry in entries {
            let wire = serde_json::to_value(&entry).unwrap();
            let wire = wire.as_object().unwrap();
            for key in wire.keys() {
                assert!(documented.contains_key(key), "GET /models field '{key}' is not documented");
            }
            for required in description["required"].as_array().into_iter().flatten() {
                assert!(wire.contains_key(required.as_str().unwrap()), "{required} is required: {wire:?}");
            }
        }
        assert!(documented["mirrored"].to_string().contains("#/components/schemas/MirrorCounts"), "{documented:?}");
    }

    #[test]
    fn catalog_completes_the_document() {
        let info = model();
        let doc = complete(base(None), std::slice::from_ref(&info), Some(&info));
        let score = &doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"];
        assert_eq!(score["example"], json!([{"x1": 0.5, "grp": "a"}]));
        assert_eq!(score["schema"]["$ref"], "#/components/schemas/rows_iris_2");
        let rows = &doc["components"]["schemas"]["rows_iris_2"];
        assert_eq!(rows["items"]["required"], json!(["x1", "grp"]));
        let by_name = &doc["paths"]["/models/{name}/score"]["post"];
        assert!(by_name["description"].as_str().unwrap().contains("`grp`: factor (a, b)"), "{by_name}");
        assert_eq!(by_name["parameters"][0]["schema"]["enum"], json!(["iris"]));
        assert_eq!(
            doc["components"]["schemas"]["InferRequest"]["example"]["inputs"][1],
            json!({"name": "grp", "datatype": "BYTES", "shape": [1], "data": ["a"]})
        );
    }

    /// OpenAPI requires unique operation ids and a description on every response.
    #[test]
    fn operations_are_well_formed() {
        let doc = complete(base(None), &[model()], None);
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no id"));
                assert!(ids.insert(id.to_string()), "{method} {path}: operation id '{id}' is taken");
                for (status, response) in operation["responses"].as_object().unwrap() {
                    assert!(response["description"].as_str().is_some_and(|d| !d.is_empty()), "{path} {status}");
                }
            }
        }
    }

    /// The hand-written schemas survive utoipa's types unchanged.
    #[test]
    fn scoring_body_and_predictions_schemas() {
        let doc = base(None);
        let body = &doc["components"]["schemas"]["ScoringBody"];
        assert_eq!(body["oneOf"].as_array().map(Vec::len), Some(3), "{body}");
        assert_eq!(body["oneOf"][0]["minItems"], 1, "{body}");
        assert_eq!(body["oneOf"][1]["properties"]["data"]["minItems"], 1, "{body}");
        assert_eq!(body["oneOf"][2]["properties"]["data"]["oneOf"][0], body["oneOf"][0]);
        let predictions = &doc["components"]["schemas"]["Predictions"];
        assert_eq!(predictions["anyOf"].as_array().map(Vec::len), Some(2), "{predictions}");
        let azure = ModelInfo { kind: ModelKind::AzureMl, schema: None, ..model() };
        let doc = complete(doc, &[azure], None);
        assert_eq!(doc["components"]["schemas"]["Predictions"]["anyOf"].as_array().map(Vec::len), Some(3));
    }

    /// Every scoring operation takes the deadline header and documents every status,
    /// the 504 of a deadline too short included, in its own error shape.
    #[test]
    fn scoring_operations_share_parameters_and_statuses() {
        let mut doc = base(None);
        let operations = scoring_operations(&mut doc);
        // Found by their tags: every scoring route of README's tables.
        let mut paths: Vec<&str> = operations.iter().map(|(path, _, _)| path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/models/{name}/predict",
                "/models/{name}/score",
                "/models/{name}/versions/{version}/score",
                "/predict",
                "/score",
                "/v2/models/{name}/infer",
                "/v2/models/{name}/versions/{version}/infer",
            ]
        );
        for (path, operation, shape) in operations {
            let shape = &shape;
            let names: Vec<&str> =
                operation["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
            assert!(names.contains(&"x-rfleet-timeout-ms"), "{path}: {names:?}");
            assert_eq!(names.contains(&"type"), *shape == ErrorShape::Rfleet, "{path}: {names:?}");
            for (status, _) in SCORING_ERRORS {
                let schema = &operation["responses"][status]["content"]["application/json"]["schema"]["$ref"];
                assert!(schema.as_str().is_some_and(|s| s.ends_with("ErrorMessage") || s.ends_with("OipErrorBody")));
            }
        }
        let deadline = &doc["paths"]["/score"]["post"]["parameters"][0];
        assert_eq!(deadline["schema"], json!({"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS}));
    }

    /// Every scoring answer documents the headers saying who answered, the version among
    /// them; Azure ML's deployment header is taken where a path names no version.
    #[test]
    fn scoring_answers_say_which_version_answered() {
        let mut doc = base(None);
        for (path, operation, _) in scoring_operations(&mut doc) {
            for status in ["200", "422", "504"] {
                let headers = &operation["responses"][status]["headers"];
                assert_eq!(headers["x-rfleet-model-version"]["schema"]["type"], "string", "{path} {status}");
                assert!(headers["x-rfleet-worker"].is_object(), "{path} {status}");
            }
            assert!(operation["responses"]["503"]["headers"]["Retry-After"].is_object(), "{path}");
            let deployment = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "azureml-model-deployment" && p["in"] == "header");
            assert_eq!(deployment, DEPLOYMENT_HEADER_PATHS.contains(&path.as_str()), "{path}");
        }
    }

    #[tokio::test]
    async fn security_follows_auth() {
        let settings = |public_docs: bool| settings::auth::AuthSettings {
            enabled: true,
            primary_key: Some("primary-key-0123456789".into()),
            public_docs,
            ..Default::default()
        };
        let secured = |doc: &Value, method: &str, path: &str| {
            let operation = &doc["paths"][path][method];
            assert!(operation.is_object(), "{method} {path} is not documented");
            let required = operation["security"] == json!([{"bearer": []}]);
            assert_eq!(required, operation["responses"]["401"].is_object(), "{method} {path}");
            required
        };
        let auth = Auth::from_settings(&settings(false)).await.unwrap().unwrap();
        let doc = base(Some(&auth));
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["type"], "http");
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert!(doc["paths"]["/token"]["post"]["responses"]["200"].is_object());
        for (method, path) in [("post", "/token"), ("post", "/score"), ("get", "/models"), ("get", "/openapi.json")] {
            assert!(secured(&doc, method, path), "{method} {path} should need a credential");
        }
        for path in ["/", "/live", "/ready", "/ping", "/v2/health/live", "/v2/health/ready"] {
            assert!(!secured(&doc, "get", path), "{path} should be open");
        }

        let public_docs = Auth::from_settings(&settings(true)).await.unwrap().unwrap();
        let doc = base(Some(&public_docs));
        assert!(!secured(&doc, "get", "/openapi.json") && !secured(&doc, "get", "/docs/"));
        assert!(secured(&doc, "get", "/metadata"));

        let open = base(None);
        assert!(open["paths"]["/token"].is_null() && open["components"]["securitySchemes"].is_null());
        assert!(!open.to_string().contains("\"security\""));
    }
}
