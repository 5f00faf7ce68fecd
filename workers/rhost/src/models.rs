//! The models this host serves: loaded once through the prelude's `.rfleet_load()`, then
//! scored per request through the R closure it returned; forests also in parts, through
//! a sub-forest scorer made once per tree range by `.rfleet_part_scorer()`.

use std::collections::HashMap;

use extendr_api::prelude::*;
use extendr_api::Error;
use protocol::host::{HostOutput, ModelSpec, TreeRange};
use protocol::{ErrorBody, ErrorCode, ForestInfo, Frame, Input, ModelInfo, ModelKind};

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
    /// `.rfleet_forest()`'s answer when `info.forest` is set: what makes part scorers.
    forest: Option<Robj>,
    /// Part scorers by tree range, most recently used first, at most [`MAX_PARTS`].
    parts: Vec<(TreeRange, Function)>,
}

/// Sub-forests kept per model. A worker asks for the same few ranges (its split of the
/// forest over its hosts); each sub-forest holds a copy of its trees, so a worker that
/// changed its split must not make the host keep every range it ever saw.
const MAX_PARTS: usize = 8;

/// The models by name.
pub struct Models {
    by_name: HashMap<String, Model>,
    /// The prelude's `.rfleet_part_scorer`.
    part_scorer: Function,
}

impl Models {
    /// Loads every model; the error names the model and carries R's message.
    pub fn load(specs: &[ModelSpec]) -> std::result::Result<Models, String> {
        let load = eval_string(".rfleet_load")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_load")?;
        let part_scorer = eval_string(".rfleet_part_scorer")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_part_scorer")?;
        let mut by_name = HashMap::new();
        for spec in specs {
            if by_name.contains_key(&spec.name) {
                return Err(format!("model '{}' is listed twice", spec.name));
            }
            let model = load_one(&load, spec)?;
            by_name.insert(spec.name.clone(), model);
        }
        Ok(Models { by_name, part_scorer })
    }

    pub fn infos(&self, specs: &[ModelSpec]) -> Vec<ModelInfo> {
        // In the order the supervisor listed them, which a HashMap forgets.
        specs.iter().filter_map(|s| self.by_name.get(&s.name)).map(|m| m.info.clone()).collect()
    }

    /// Scores one request. R errors, bad inputs and unknown models all come back as an
    /// [`ErrorBody`]; only a crash of R itself can stop the host here.
    pub fn score(
        &mut self,
        model: &str,
        input: &Input,
        predict_type: Option<&str>,
    ) -> std::result::Result<HostOutput, ErrorBody> {
        let entry = self.get(model)?;
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

    /// Scores one request with trees `trees` of a forest model only, as a
    /// [`ForestPart`](protocol::host::ForestPart). A model without [`ModelInfo::forest`],
    /// a range outside the forest or a JSON input is a `bad_request`; R errors are
    /// `r_error`s as for [`Models::score`].
    pub fn score_trees(
        &mut self,
        model: &str,
        input: &Input,
        trees: TreeRange,
    ) -> std::result::Result<HostOutput, ErrorBody> {
        let part_scorer = self.part_scorer.clone();
        let entry = self.get(model)?;
        let bad = |message: String| Err(ErrorBody::new(ErrorCode::BadRequest, format!("model '{model}': {message}")));
        let Some(forest) = entry.info.forest.clone() else {
            return bad(format!(
                "cannot score a range of trees: it is not a forest that can be split (only randomForest and ranger \
                 regression and classification forests called by predict can; r_class {:?})",
                entry.info.r_class
            ));
        };
        if trees.start >= trees.end || trees.end > forest.n_trees {
            return bad(format!(
                "trees {}..{} is not a non-empty range within the forest's {} trees",
                trees.start, trees.end, forest.n_trees
            ));
        }
        let Input::Frame(frame) = input else {
            return bad("a range of trees is scored on a frame, not a raw JSON body".into());
        };
        entry.score_part(&part_scorer, frame, trees, &forest)
    }

    fn get(&mut self, model: &str) -> std::result::Result<&mut Model, ErrorBody> {
        if !self.by_name.contains_key(model) {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ErrorBody::new(
                ErrorCode::ModelNotFound,
                format!("model '{model}' is not loaded in this host (loaded: {})", known.join(", ")),
            ));
        }
        Ok(self.by_name.get_mut(model).expect("checked above"))
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
    let forest_robj = field("forest")?;
    let (forest_info, forest) = if forest_robj.is_null() {
        (None, None)
    } else {
        (Some(forest_info(&forest_robj).map_err(|e| format!("model '{name}': {e}"))?), Some(forest_robj))
    };
    Ok(Model {
        info: ModelInfo {
            name: name.clone(),
            version: spec.version.clone(),
            kind,
            r_class,
            schema,
            predict_type,
            forest: forest_info,
        },
        scorer,
        default_type,
        cache: FrameCache::default(),
        forest,
        parts: Vec::new(),
    })
}

/// Reads `list(n_trees, classes, part)` from `.rfleet_forest()`.
fn forest_info(forest: &Robj) -> std::result::Result<ForestInfo, String> {
    let fields = convert::fields(&forest.as_list().ok_or("the forest description is not a list")?);
    let n_trees = fields
        .get("n_trees")
        .and_then(|n| n.as_integer())
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or("the forest description has no number of trees")?;
    let classes = match fields.get("classes") {
        None => None,
        Some(c) if c.is_null() => None,
        Some(c) => Some(c.as_string_vector().filter(|c| !c.is_empty()).ok_or("the forest's classes are not strings")?),
    };
    if fields.get("part").and_then(|p| p.as_function()).is_none() {
        return Err("the forest description has no part function".into());
    }
    Ok(ForestInfo { n_trees, classes })
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

    fn score_part(
        &mut self,
        part_scorer: &Function,
        frame: &Frame,
        trees: TreeRange,
        forest: &ForestInfo,
    ) -> std::result::Result<HostOutput, ErrorBody> {
        let name = &self.info.name;
        frame.validate().map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("model '{name}': {e}")))?;
        let internal = |e: String| ErrorBody::new(ErrorCode::Internal, format!("model '{name}': {e}"));
        let n_rows = i32::try_from(frame.n_rows)
            .map_err(|_| ErrorBody::new(ErrorCode::BadRequest, format!("model '{name}': too many rows for R")))?;
        let scorer = match self.parts.iter().position(|(range, _)| *range == trees) {
            Some(i) => {
                let entry = self.parts.remove(i);
                let scorer = entry.1.clone();
                self.parts.insert(0, entry);
                scorer
            }
            None => {
                let forest_robj =
                    self.forest.clone().ok_or_else(|| internal("no R forest for a forest model".into()))?;
                let made = part_scorer
                    .call(Pairlist::from_pairs([
                        ("", Robj::from(name.as_str())),
                        ("", forest_robj),
                        ("", Robj::from(f64::from(trees.start))),
                        ("", Robj::from(f64::from(trees.end))),
                    ]))
                    .map_err(|_| escaped(name))?;
                if made.inherits("rfleet_error") {
                    return Err(ErrorBody::new(ErrorCode::RError, made.as_str().unwrap_or("R failed").to_string()));
                }
                let scorer =
                    made.as_function().ok_or_else(|| internal(".rfleet_part_scorer answered no function".into()))?;
                self.parts.insert(0, (trees, scorer.clone()));
                self.parts.truncate(MAX_PARTS);
                scorer
            }
        };
        let newdata = convert::data_frame(frame, &mut self.cache).map_err(|e| internal(e.to_string()))?;
        let result =
            scorer.call(Pairlist::from_pairs([("", newdata), ("", Robj::from(n_rows))])).map_err(|_| escaped(name))?;
        if result.inherits("rfleet_error") {
            return Err(ErrorBody::new(ErrorCode::RError, result.as_str().unwrap_or("R failed").to_string()));
        }
        convert::forest_part(&result, frame.n_rows, trees.end - trees.start, forest.classes.as_deref())
            .map(HostOutput::ForestPart)
            .map_err(internal)
    }

    fn score_json(&mut self, body: &str) -> std::result::Result<HostOutput, ErrorBody> {
        let name = &self.info.name;
        let result = self.scorer.call(Pairlist::from_pairs([("", Robj::from(body))])).map_err(|_| escaped(name))?;
        match result.as_str() {
            Some(message) if result.inherits("rfleet_error") => {
                Err(ErrorBody::new(ErrorCode::RError, message.to_string()))
            }
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
