//! The models this host serves: loaded once through the prelude's `.rfleet_load()`, then
//! scored per request through the R closure it returned.

use std::collections::HashMap;

use extendr_api::prelude::*;
use extendr_api::Error;
use protocol::host::{HostOutput, ModelSpec};
use protocol::{ErrorBody, ErrorCode, Frame, Input, ModelInfo, ModelKind};

use crate::convert::{self, FrameCache};

/// One loaded model.
struct Model {
    info: ModelInfo,
    /// `function(newdata, type, n)` (or `function(data)` for Azure ML scripts) made by
    /// `.rfleet_scorer()`: it wraps the model call in `tryCatch` and converts the result,
    /// so a request costs one R call and never parses R source.
    scorer: Function,
    /// `info.predict_type` as an R string, or `NULL`, made once.
    default_type: Robj,
    cache: FrameCache,
}

/// The models by name.
pub struct Models {
    by_name: HashMap<String, Model>,
}

impl Models {
    /// Loads every model; the error names the model and carries R's message.
    pub fn load(specs: &[ModelSpec]) -> std::result::Result<Models, String> {
        let load = eval_string(".rfleet_load")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_load")?;
        let mut by_name = HashMap::new();
        for spec in specs {
            if by_name.contains_key(&spec.name) {
                return Err(format!("model '{}' is listed twice", spec.name));
            }
            let model = load_one(&load, spec)?;
            by_name.insert(spec.name.clone(), model);
        }
        Ok(Models { by_name })
    }

    pub fn infos(&self, specs: &[ModelSpec]) -> Vec<ModelInfo> {
        // In the order the supervisor listed them, which a HashMap forgets.
        specs.iter().filter_map(|s| self.by_name.get(&s.name)).map(|m| m.info.clone()).collect()
    }

    /// Scores one request. R errors, bad inputs and unknown models all come back as an
    /// [`ErrorBody`]; only a crash of R itself can stop the host here.
    pub fn score(&mut self, model: &str, input: &Input, predict_type: Option<&str>) -> std::result::Result<HostOutput, ErrorBody> {
        let Some(entry) = self.by_name.get_mut(model) else {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ErrorBody::new(
                ErrorCode::ModelNotFound,
                format!("model '{model}' is not loaded in this host (loaded: {})", known.join(", ")),
            ));
        };
        match (entry.info.kind, input) {
            (ModelKind::AzureMl, Input::Json(body)) => entry.score_json(body),
            (ModelKind::AzureMl, Input::Frame(_)) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("model '{model}' is an Azure ML entry script (score.R with init()) and takes the raw JSON body, not a frame"),
            )),
            (_, Input::Frame(frame)) => entry.score_frame(frame, predict_type),
            (_, Input::Json(_)) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("model '{model}' takes a frame; only Azure ML entry scripts (score.R with init()) take a raw JSON body"),
            )),
        }
    }
}

fn load_one(load: &Function, spec: &ModelSpec) -> std::result::Result<Model, String> {
    let name = &spec.name;
    let dir = std::path::absolute(&spec.dir).unwrap_or_else(|_| spec.dir.clone());
    let dir = dir.to_str().ok_or_else(|| format!("model '{name}': the package path {} is not UTF-8", dir.display()))?;
    let predict_type: Robj = spec.predict_type.as_deref().map_or_else(|| ().into(), Robj::from);
    let loaded = load
        .call(Pairlist::from_pairs([("", Robj::from(name.as_str())), ("", Robj::from(dir)), ("", predict_type)]))
        .map_err(|e| format!("model '{name}': loading failed in R: {e}"))?;
    if loaded.inherits("rfleet_error") {
        return Err(loaded.as_str().unwrap_or("loading failed").to_string());
    }
    let bad = |what: &str| format!("model '{name}': .rfleet_load answered no {what}");
    let fields = convert::fields(&loaded.as_list().ok_or_else(|| bad("list"))?);
    let field = |key: &str| fields.get(key).cloned().ok_or_else(|| bad(key));
    let kind = match field("kind")?.as_str() {
        Some("predict") => ModelKind::Predict,
        Some("predict_fn") => ModelKind::PredictFn,
        Some("azure_ml") => ModelKind::AzureMl,
        _ => return Err(bad("known kind")),
    };
    let scorer = field("scorer")?.as_function().ok_or_else(|| bad("scorer function"))?;
    let r_class = field("r_class")?.as_string_vector().unwrap_or_default();
    // A declared schema wins; the inferred one is only asked for when there is none.
    let schema = match &spec.schema {
        Some(schema) => Some(schema.clone()),
        None => convert::schema_from_r(&field("schema")?).map_err(|e| format!("model '{name}': {e}"))?,
    };
    let default_type = field("predict_type")?;
    let predict_type = default_type.as_str().map(str::to_string);
    Ok(Model {
        info: ModelInfo { name: name.clone(), version: spec.version.clone(), kind, r_class, schema, predict_type, forest: None },
        scorer,
        default_type,
        cache: FrameCache::default(),
    })
}

impl Model {
    fn score_frame(&mut self, frame: &Frame, predict_type: Option<&str>) -> std::result::Result<HostOutput, ErrorBody> {
        let name = &self.info.name;
        // Frames are conformed by the supervisor; this guards R against a malformed one
        // (a factor code beyond its levels, columns of different lengths).
        frame.validate().map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("model '{name}': {e}")))?;
        let internal = |e: Error| ErrorBody::new(ErrorCode::Internal, format!("model '{name}': {e}"));
        let n_rows = i32::try_from(frame.n_rows)
            .map_err(|_| ErrorBody::new(ErrorCode::BadRequest, format!("model '{name}': too many rows for R")))?;
        let newdata = convert::data_frame(frame, &mut self.cache).map_err(internal)?;
        let predict_type = match predict_type {
            Some(t) => Robj::from(t),
            None => self.default_type.clone(),
        };
        let result = self
            .scorer
            .call(Pairlist::from_pairs([("", newdata), ("", predict_type), ("", Robj::from(n_rows))]))
            .map_err(|_| escaped(name))?;
        if result.inherits("rfleet_error") {
            return Err(ErrorBody::new(ErrorCode::RError, result.as_str().unwrap_or("R failed").to_string()));
        }
        convert::frame_from_columns(&result, frame.n_rows)
            .map(HostOutput::Frame)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("model '{name}': {e}")))
    }

    fn score_json(&mut self, body: &str) -> std::result::Result<HostOutput, ErrorBody> {
        let name = &self.info.name;
        let result = self.scorer.call(Pairlist::from_pairs([("", Robj::from(body))])).map_err(|_| escaped(name))?;
        match result.as_str() {
            Some(message) if result.inherits("rfleet_error") => Err(ErrorBody::new(ErrorCode::RError, message.to_string())),
            Some(json) => Ok(HostOutput::Json(json.to_string())),
            None => Err(ErrorBody::new(ErrorCode::Internal, format!("model '{name}': the scorer answered no string"))),
        }
    }
}

/// The error for a call that jumped past the scorer's `tryCatch` to R's top level, as R
/// does after a C stack overflow it caught as a segfault, or on an `abort` restart. R is
/// still usable then. Such a jump carries no condition to read; what R knew it printed to
/// stderr, which the supervisor logs.
fn escaped(name: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::RError,
        format!("model '{name}': R aborted the call past its error handlers (see the host's log for R's output)"),
    )
}
