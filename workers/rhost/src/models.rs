//! The models this host serves, by [`ModelRef`] (name and version, so one host holds
//! several versions of a model): each loaded once through the prelude's `.rfleet_load()`,
//! then scored per request through the R closure it returned; forests also in parts,
//! through a sub-forest scorer made once per tree range by `.rfleet_part_scorer()`. Each
//! model's native forest is settled at load too (see [`crate::native`]).
//!
//! A model whose `model.toml` says `r_fallback = false` is checked against its native
//! forest as soon as it has loaded ([`Model::release_if_checked`]); if R and the engine
//! agree, the host lets go of its R objects and keeps only its info, and a request that
//! still reaches the host for it is refused naming the option.
//!
//! Each package loads on its own: one that fails becomes a [`LoadFailure`] and the others
//! load regardless. A model is registered only once every step of its load has succeeded,
//! on the Rust side as in R (the prelude keeps no registry of its own), so a failed load
//! leaves nothing a later request could reach.

use std::collections::HashMap;
use std::time::Instant;

use extendr_api::prelude::*;
use protocol::host::{HostOutput, ModelSpec, Phases, TreeRange};
use protocol::{
    compare_versions, ErrorBody, ErrorCode, ForestInfo, Frame, Input, LoadFailure, ModelInfo, ModelKind, ModelRef,
    NativeLoad, Schema, SelfCheck,
};

use crate::convert::{self, FrameCache};

/// One loaded model.
struct Model {
    info: ModelInfo,
    /// How messages name it: `model 'rf_reg'`, or `model 'rf_reg' version '2'`.
    label: String,
    /// How long the package took to load, in microseconds.
    load_us: u64,
    /// What became of its native forest at load.
    native: NativeLoad,
    /// What R holds of it; `None` once released (`r_fallback = false`, and the native
    /// forest agreed with R at load).
    r: Option<InR>,
}

/// A model's R objects: the closures that score it, and everything else that holds the
/// model. Dropping it (and R's `gc()`) frees the model in R.
struct InR {
    /// `function(newdata, type)` (or `function(data)` for Azure ML scripts) made by
    /// `.rfleet_scorer()`: the model's call in `tryCatch`, answering what the model
    /// answered; a request never parses R source.
    scorer: Function,
    /// `function(x, n)` (or `function(x)`): `scorer`'s answer converted to columns (or
    /// JSON), a second R call so that the model's time is measured apart from it.
    output: Function,
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

/// The loaded models, in the order the supervisor listed them.
pub struct Models {
    models: Vec<Model>,
    /// Index into `models` by name and version.
    by_ref: HashMap<ModelRef, usize>,
    /// The prelude's `.rfleet_part_scorer`.
    part_scorer: Function,
}

/// What scoring one request produced: the answer, where R's time went, and on an R error
/// its condition class.
pub struct Scoring {
    pub result: std::result::Result<HostOutput, ErrorBody>,
    pub phases: Phases,
    pub condition_class: Option<String>,
}

impl From<std::result::Result<HostOutput, ErrorBody>> for Scoring {
    /// An answer reached without R's work (a bad request, an unknown model).
    fn from(result: std::result::Result<HostOutput, ErrorBody>) -> Scoring {
        Scoring { result, phases: Phases::default(), condition_class: None }
    }
}

/// Microseconds since `start`.
fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// An R answer of class `rfleet_error` as an `r_error`: its message, and the condition
/// class the prelude noted, if R signalled a condition.
fn r_error(answer: &Robj, phases: Phases) -> Scoring {
    let condition_class = answer.get_attrib("condition_class").and_then(|c| c.as_str().map(str::to_string));
    let message = answer.as_str().unwrap_or("R failed").to_string();
    Scoring { result: Err(ErrorBody::new(ErrorCode::RError, message)), phases, condition_class }
}

/// Calls `function` with `args`, its time added to the phase `spent` picks: the R call's
/// answer, or what to answer instead (R's error, or a jump past the handlers).
fn timed_call(
    function: &Function,
    args: Pairlist,
    phases: &mut Phases,
    spent: fn(&mut Phases) -> &mut u64,
    label: &str,
) -> std::result::Result<Robj, Scoring> {
    let started = Instant::now();
    let answer = function.call(args);
    *spent(phases) += micros_since(started);
    match answer {
        Ok(answer) if answer.inherits("rfleet_error") => Err(r_error(&answer, *phases)),
        Ok(answer) => Ok(answer),
        Err(_) => Err(Scoring { phases: *phases, ..escaped(label) }),
    }
}

fn compute(phases: &mut Phases) -> &mut u64 {
    &mut phases.compute_us
}

fn output(phases: &mut Phases) -> &mut u64 {
    &mut phases.output_us
}

/// How messages name a model: `model 'rf_reg'` or `model 'rf_reg' version '2'`.
fn label(model: &ModelRef) -> String {
    match &model.version {
        Some(version) => format!("model '{}' version '{version}'", model.name),
        None => format!("model '{}'", model.name),
    }
}

impl Models {
    /// Loads every model it can, each on its own: those that fail come back as
    /// [`LoadFailure`]s naming the model, its version and R's error, in the order listed.
    /// A package listed a second time under the same name and version is a failure of the
    /// second. The error is for a host that cannot load anything: a prelude without its
    /// functions.
    pub fn load(specs: &[ModelSpec]) -> std::result::Result<(Models, Vec<LoadFailure>), String> {
        let load = eval_string(".rfleet_load")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_load")?;
        let part_scorer = eval_string(".rfleet_part_scorer")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_part_scorer")?;
        let extract = eval_string(".rfleet_native")
            .ok()
            .and_then(|f| f.as_function())
            .ok_or("the prelude does not define .rfleet_native")?;
        let mut loaded = Models { models: Vec::new(), by_ref: HashMap::new(), part_scorer };
        let mut failed = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let model_ref = spec.model_ref();
            let loaded_one = match specs[..i].iter().find(|earlier| earlier.model_ref() == model_ref) {
                Some(first) => Err(format!(
                    "{}: listed twice; the package in {} comes first, the one in {} is not loaded",
                    label(&model_ref),
                    first.dir.display(),
                    spec.dir.display()
                )),
                None => {
                    let started = Instant::now();
                    load_one(&load, &extract, spec).map(|mut model| {
                        // Checked once `load_one`'s handles on the R objects are gone, so
                        // that releasing the model leaves nothing holding it.
                        if !spec.r_fallback {
                            model.release_if_checked();
                        }
                        Model { load_us: micros_since(started), ..model }
                    })
                }
            };
            match loaded_one {
                Ok(model) => {
                    loaded.by_ref.insert(model_ref, loaded.models.len());
                    loaded.models.push(model);
                }
                Err(message) => {
                    failed.push(LoadFailure { name: spec.name.clone(), version: spec.version.clone(), message })
                }
            }
        }
        if loaded.models.iter().any(|m| m.r.is_none()) {
            release_memory();
        }
        Ok((loaded, failed))
    }

    /// The loaded models' infos, in the order they were listed.
    pub fn infos(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|m| m.info.clone()).collect()
    }

    /// What became of each loaded model's native forest, in [`Models::infos`] order.
    pub fn native(&self) -> Vec<NativeLoad> {
        self.models.iter().map(|m| m.native.clone()).collect()
    }

    /// How long each loaded model took to load, in microseconds, in [`Models::infos`] order.
    pub fn load_us(&self) -> Vec<u64> {
        self.models.iter().map(|m| m.load_us).collect()
    }

    /// Scores one request. R errors, bad inputs and unknown models all come back as an
    /// [`ErrorBody`]; only a crash of R itself can stop the host here.
    pub fn score(&mut self, model: &ModelRef, input: &Input, predict_type: Option<&str>) -> Scoring {
        let entry = match self.get(model) {
            Ok(entry) => entry,
            Err(error) => return Err(error).into(),
        };
        let label = &entry.label;
        let Some(r) = entry.r.as_mut() else { return Err(released(label)).into() };
        match (entry.info.kind, input) {
            (ModelKind::AzureMl, Input::Json(body)) => r.score_json(label, body),
            (ModelKind::AzureMl, Input::Frame(_)) => Scoring::from(Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{label} is an Azure ML entry script (score.R with init()) and takes the raw JSON body, not a frame"),
            ))),
            (_, Input::Frame(frame)) => r.score_frame(label, frame, predict_type),
            (_, Input::Json(_)) => Scoring::from(Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{label} takes a frame; only Azure ML entry scripts (score.R with init()) take a raw JSON body"),
            ))),
        }
    }

    /// Scores one request with trees `trees` of a forest model only, as a
    /// [`ForestPart`](protocol::host::ForestPart). A model without [`ModelInfo::forest`],
    /// a range outside the forest or a JSON input is a `bad_request`; R errors are
    /// `r_error`s as for [`Models::score`].
    pub fn score_trees(&mut self, model: &ModelRef, input: &Input, trees: TreeRange) -> Scoring {
        let part_scorer = self.part_scorer.clone();
        let entry = match self.get(model) {
            Ok(entry) => entry,
            Err(error) => return Err(error).into(),
        };
        let label = entry.label.clone();
        let Some(r) = entry.r.as_mut() else { return Err(released(&label)).into() };
        let bad =
            |message: String| Scoring::from(Err(ErrorBody::new(ErrorCode::BadRequest, format!("{label}: {message}"))));
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
        r.score_part(&label, &part_scorer, frame, trees, &forest)
    }

    /// The model a request addresses: the one of that name and version; for a request
    /// without a version, the unversioned model of that name, else the highest version
    /// held (by [`compare_versions`], the worker's rule for unpinned requests).
    fn get(&mut self, model: &ModelRef) -> std::result::Result<&mut Model, ErrorBody> {
        let index = self.by_ref.get(model).copied().or_else(|| match model.version {
            Some(_) => None,
            None => self
                .by_ref
                .iter()
                .filter(|(held, _)| held.name == model.name)
                .max_by(|(a, _), (b, _)| compare_versions(a.version.as_deref(), b.version.as_deref()))
                .map(|(_, &index)| index),
        });
        match index {
            Some(index) => Ok(&mut self.models[index]),
            None => {
                let mut held: Vec<&ModelRef> = self.by_ref.keys().collect();
                held.sort_by(|a, b| {
                    a.name.cmp(&b.name).then_with(|| compare_versions(a.version.as_deref(), b.version.as_deref()))
                });
                let held: Vec<String> = held.iter().map(|r| r.to_string()).collect();
                let held = if held.is_empty() { "none".to_string() } else { held.join(", ") };
                Err(ErrorBody::new(
                    ErrorCode::ModelNotFound,
                    format!("{} is not loaded in this host (loaded: {held})", label(model)),
                ))
            }
        }
    }
}

/// Loads one package; the error is its [`LoadFailure`] message, naming the model. Its
/// native forest is extracted (or found in the cache) through `extract`, the prelude's
/// `.rfleet_native`, which never fails the load.
fn load_one(load: &Function, extract: &Function, spec: &ModelSpec) -> std::result::Result<Model, String> {
    let label = label(&spec.model_ref());
    let dir = std::path::absolute(&spec.dir).unwrap_or_else(|_| spec.dir.clone());
    let dir = dir.to_str().ok_or_else(|| format!("{label}: the package path {} is not UTF-8", dir.display()))?;
    // R cannot make such a string: it would signal an error past every handler.
    if [label.as_str(), dir, spec.predict_type.as_deref().unwrap_or_default()].iter().any(|s| s.contains('\0')) {
        return Err(format!("{label}: its name, version, path or predict_type holds a NUL character"));
    }
    let predict_type: Robj = spec.predict_type.as_deref().map_or_else(|| ().into(), Robj::from);
    let loaded = load
        .call(Pairlist::from_pairs([("", Robj::from(label.as_str())), ("", Robj::from(dir)), ("", predict_type)]))
        .map_err(|e| format!("{label}: loading failed in R: {e}"))?;
    if loaded.inherits("rfleet_error") {
        return Err(loaded.as_str().unwrap_or("loading failed").to_string());
    }
    let bad = |what: &str| format!("{label}: .rfleet_load answered no {what}");
    let fields = convert::fields(&loaded.as_list().ok_or_else(|| bad("list"))?);
    let field = |key: &str| fields.get(key).cloned().ok_or_else(|| bad(key));
    let kind = match field("kind")?.as_str() {
        Some("predict") => ModelKind::Predict,
        Some("predict_fn") => ModelKind::PredictFn,
        Some("azure_ml") => ModelKind::AzureMl,
        _ => return Err(bad("known kind")),
    };
    let scorers = convert::fields(&field("scorer")?.as_list().ok_or_else(|| bad("scorer list"))?);
    let scorer_fn = |key: &str| scorers.get(key).and_then(|f| f.as_function()).ok_or_else(|| bad(key));
    let (scorer, output) = (scorer_fn("compute")?, scorer_fn("output")?);
    let r_class = field("r_class")?.as_string_vector().unwrap_or_default();
    // A declared schema wins; the inferred one is only asked for when there is none.
    let schema = match &spec.schema {
        Some(schema) => Some(schema.clone()),
        None => convert::schema_from_r(&field("schema")?).map_err(|e| format!("{label}: {e}"))?,
    };
    let default_type = field("predict_type")?;
    let predict_type = default_type.as_str().map(str::to_string);
    let forest_robj = field("forest")?;
    let (forest_info, forest) = if forest_robj.is_null() {
        (None, None)
    } else {
        (Some(forest_info(&forest_robj).map_err(|e| format!("{label}: {e}"))?), Some(forest_robj))
    };
    let native = crate::native::load(spec, kind, &field("model")?, schema.as_ref(), extract);
    Ok(Model {
        native,
        info: ModelInfo {
            name: spec.name.clone(),
            version: spec.version.clone(),
            kind,
            r_class,
            schema,
            predict_type,
            forest: forest_info,
            engine: None,
        },
        label,
        load_us: 0,
        r: Some(InR { scorer, output, default_type, cache: FrameCache::default(), forest, parts: Vec::new() }),
    })
}

/// R's garbage collector, then the C heap's free pages handed back to the system, so that
/// a released model leaves the host's resident memory (R frees a large vector to malloc,
/// which may keep the pages).
fn release_memory() {
    if let Err(e) = eval_string("invisible(gc(verbose = FALSE))") {
        eprintln!("rfleet-rhost: gc() failed after releasing a model: {e}");
    }
    // SAFETY: malloc_trim only gives back pages that malloc holds free; this is the only
    // thread, and no allocation is in progress.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The refusal of a request for a model this host released.
fn released(label: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::InvalidInput,
        format!(
            "{label} is served by the native engine only (model.toml says r_fallback = false): this r host released \
             it after its self-check passed and cannot score it"
        ),
    )
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
    /// The self-check of a model whose `model.toml` says `r_fallback = false`: its native
    /// forest (the cache file the worker will read, compiled) against its own R scorer,
    /// the path requests take, on the rows and `type`s the worker's self-check would use.
    /// If they agree bit for bit the model's R objects are dropped and R collects them;
    /// either way the check is reported in its [`NativeLoad::Ready`]. A model without a
    /// ready forest is left as it is: R serves it.
    fn release_if_checked(&mut self) {
        let (NativeLoad::Ready { path, .. }, Some(r)) = (&self.native, self.r.as_mut()) else { return };
        let check = match protocol::native::read_forest(path).and_then(|forest| {
            native::NativeModel::compile(&forest).map_err(|e| format!("the forest does not compile: {e}"))
        }) {
            Ok(compiled) => r.check_against(&self.label, self.info.schema.as_ref(), &compiled),
            Err(reason) => SelfCheck::failed(Vec::new(), reason),
        };
        let passed = check.passed;
        if passed {
            // Forest splitting scores a model's trees on R hosts: none hold them now. R
            // collects what the model held once every model has loaded (`release_memory`).
            self.info.forest = None;
            self.r = None;
        }
        if let NativeLoad::Ready { check: reported, released, .. } = &mut self.native {
            *reported = Some(check);
            *released = passed;
        }
    }
}

impl InR {
    /// [`native::NativeModel::self_check`] of `compiled`, R's answers from this scorer.
    fn check_against(&mut self, label: &str, schema: Option<&Schema>, compiled: &native::NativeModel) -> SelfCheck {
        let rows = match compiled.check_rows(schema) {
            Ok(rows) => rows,
            Err(failed) => return failed,
        };
        let answers = rows.types.iter().map(|predict_type| {
            native::check::r_answer(self.score_frame(label, &rows.frame, Some(predict_type)).result)
        });
        compiled.self_check(&rows, answers)
    }

    fn score_frame(&mut self, label: &str, frame: &Frame, predict_type: Option<&str>) -> Scoring {
        let mut phases = Phases::default();
        // Frames are conformed by the supervisor; this guards R against a malformed one
        // (a factor code beyond its levels, columns of different lengths).
        if let Err(e) = frame.validate() {
            return Err(ErrorBody::new(ErrorCode::BadRequest, format!("{label}: {e}"))).into();
        }
        let Ok(n_rows) = i32::try_from(frame.n_rows) else {
            return Err(ErrorBody::new(ErrorCode::BadRequest, format!("{label}: too many rows for R"))).into();
        };
        let internal = |e: String, phases| Scoring {
            result: Err(ErrorBody::new(ErrorCode::Internal, format!("{label}: {e}"))),
            phases,
            condition_class: None,
        };
        let started = Instant::now();
        let newdata = match convert::data_frame(frame, &mut self.cache) {
            Ok(newdata) => newdata,
            Err(e) => return internal(e.to_string(), phases),
        };
        let predict_type = match predict_type {
            Some(t) => Robj::from(t),
            None => self.default_type.clone(),
        };
        phases.input_us = micros_since(started);
        let args = Pairlist::from_pairs([("", newdata), ("", predict_type)]);
        let answer = match timed_call(&self.scorer, args, &mut phases, compute, label) {
            Ok(answer) => answer,
            Err(scoring) => return scoring,
        };
        let args = Pairlist::from_pairs([("", answer), ("", Robj::from(n_rows))]);
        let columns = match timed_call(&self.output, args, &mut phases, output, label) {
            Ok(columns) => columns,
            Err(scoring) => return scoring,
        };
        let started = Instant::now();
        let result = convert::frame_from_columns(&columns, frame.n_rows);
        phases.output_us += micros_since(started);
        match result {
            Ok(frame) => Scoring { result: Ok(HostOutput::Frame(frame)), phases, condition_class: None },
            Err(e) => internal(e, phases),
        }
    }

    fn score_part(
        &mut self,
        label: &str,
        part_scorer: &Function,
        frame: &Frame,
        trees: TreeRange,
        forest: &ForestInfo,
    ) -> Scoring {
        let mut phases = Phases::default();
        if let Err(e) = frame.validate() {
            return Err(ErrorBody::new(ErrorCode::BadRequest, format!("{label}: {e}"))).into();
        }
        let internal = |e: String, phases| Scoring {
            result: Err(ErrorBody::new(ErrorCode::Internal, format!("{label}: {e}"))),
            phases,
            condition_class: None,
        };
        let Ok(n_rows) = i32::try_from(frame.n_rows) else {
            return Err(ErrorBody::new(ErrorCode::BadRequest, format!("{label}: too many rows for R"))).into();
        };
        // Making a sub-forest (once per range) is part of the model's work: compute.
        let started = Instant::now();
        let scorer = match self.parts.iter().position(|(range, _)| *range == trees) {
            Some(i) => {
                let entry = self.parts.remove(i);
                let scorer = entry.1.clone();
                self.parts.insert(0, entry);
                scorer
            }
            None => {
                let Some(forest_robj) = self.forest.clone() else {
                    return internal("no R forest for a forest model".into(), phases);
                };
                let made = part_scorer.call(Pairlist::from_pairs([
                    ("", Robj::from(label)),
                    ("", forest_robj),
                    ("", Robj::from(f64::from(trees.start))),
                    ("", Robj::from(f64::from(trees.end))),
                ]));
                let made = match made {
                    Ok(made) if made.inherits("rfleet_error") => {
                        phases.compute_us = micros_since(started);
                        return r_error(&made, phases);
                    }
                    Ok(made) => made,
                    Err(_) => return Scoring { phases, ..escaped(label) },
                };
                let Some(scorer) = made.as_function() else {
                    return internal(".rfleet_part_scorer answered no function".into(), phases);
                };
                self.parts.insert(0, (trees, scorer.clone()));
                self.parts.truncate(MAX_PARTS);
                scorer
            }
        };
        let preparing_us = micros_since(started);
        let started = Instant::now();
        let newdata = match convert::data_frame(frame, &mut self.cache) {
            Ok(newdata) => newdata,
            Err(e) => return internal(e.to_string(), phases),
        };
        phases.input_us = micros_since(started);
        phases.compute_us = preparing_us;
        let args = Pairlist::from_pairs([("", newdata), ("", Robj::from(n_rows))]);
        let result = match timed_call(&scorer, args, &mut phases, compute, label) {
            Ok(result) => result,
            Err(scoring) => return scoring,
        };
        let started = Instant::now();
        let part = convert::forest_part(&result, frame.n_rows, trees.end - trees.start, forest.classes.as_deref());
        phases.output_us = micros_since(started);
        match part {
            Ok(part) => Scoring { result: Ok(HostOutput::ForestPart(part)), phases, condition_class: None },
            Err(e) => internal(e, phases),
        }
    }

    fn score_json(&mut self, label: &str, body: &str) -> Scoring {
        let mut phases = Phases::default();
        let started = Instant::now();
        let data = Robj::from(body);
        phases.input_us = micros_since(started);
        let answer = match timed_call(&self.scorer, Pairlist::from_pairs([("", data)]), &mut phases, compute, label) {
            Ok(answer) => answer,
            Err(scoring) => return scoring,
        };
        let json = match timed_call(&self.output, Pairlist::from_pairs([("", answer)]), &mut phases, output, label) {
            Ok(json) => json,
            Err(scoring) => return scoring,
        };
        match json.as_str() {
            Some(json) => Scoring { result: Ok(HostOutput::Json(json.to_string())), phases, condition_class: None },
            None => Scoring {
                result: Err(ErrorBody::new(ErrorCode::Internal, format!("{label}: the scorer answered no string"))),
                phases,
                condition_class: None,
            },
        }
    }
}

/// The error for a call that jumped past the scorer's `tryCatch` to R's top level, as R
/// does after a C stack overflow it caught as a segfault, or on an `abort` restart. R is
/// still usable then. Such a jump carries no condition to read; what R knew it printed to
/// stderr, which the supervisor logs.
fn escaped(label: &str) -> Scoring {
    Scoring::from(Err(ErrorBody::new(
        ErrorCode::RError,
        format!("{label}: R aborted the call past its error handlers (see the host's log for R's output)"),
    )))
}
