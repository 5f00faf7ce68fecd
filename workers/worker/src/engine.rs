//! Which engine scores a model's requests: R's own `predict` on the pool's hosts, or the
//! native engine (`native::NativeModel`, the model's forest as its R host extracted it,
//! compiled once per worker process and shared by every request).
//!
//! - `model.toml`'s `engine` is the model's choice: `auto` (the default) serves natively
//!   only once the self-check at load has passed ([`self_check`]: sample rows scored by R
//!   and natively must agree bit for bit), `native` serves natively at once, `r` never.
//! - A request's `?engine=` overrides it: `r` always goes to R; `native` is scored natively
//!   or refused (`invalid_input`) with the reason, never sent to R behind the caller's back.
//! - What the native engine does not cover (a `type` it does not answer, a missing value
//!   where R would refuse or drop the row) goes to R unchanged, unless the request asked
//!   for `native`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use native::{NativeModel, Prediction};
use parking_lot::Mutex;
use protocol::message::SplitPolicy;
use protocol::{ColumnData, Engine, EngineStatus, Frame, Input, NativeForest, NativeLoad, NativeSummary, SelfCheck};

use crate::pool::Pool;
use crate::request::{PoolRequest, ServedModel};

/// Rows from which a native request is scored off the async runtime's threads (on the
/// blocking pool, where the engine spreads them over rayon's threads); fewer are scored
/// on the calling thread, which takes microseconds.
const BLOCKING_ROWS: usize = 64;

/// Rows the self-check scores with each `type`.
pub const SELF_CHECK_ROWS: usize = 256;

/// How long the self-check waits for R's answers (a host may still be starting).
const SELF_CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// A model's engines as its worker serves it.
#[derive(Debug)]
pub struct ModelEngine {
    /// `model.toml`'s `engine`.
    pub configured: Engine,
    native: Option<Native>,
    /// Why there is no native forest, when there is none.
    absent: Option<String>,
    /// The self-check's result, once it has run.
    check: Mutex<Option<SelfCheck>>,
    /// Whether the self-check has been started.
    check_started: AtomicBool,
}

struct Native {
    model: NativeModel,
    summary: NativeSummary,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").field("summary", &self.summary).finish_non_exhaustive()
    }
}

/// Which engine a request gets.
pub enum Choice {
    R,
    /// `explicit`: the request asked for it, so a decline is its answer.
    Native {
        explicit: bool,
    },
    /// `?engine=native` for what the native engine cannot serve: the reason.
    Refused(String),
}

impl ModelEngine {
    /// A model without a native forest (an Azure ML script, a host that says nothing).
    pub fn r_only(configured: Engine, why: impl Into<String>) -> ModelEngine {
        ModelEngine {
            configured,
            native: None,
            absent: Some(why.into()),
            check: Mutex::new(None),
            check_started: AtomicBool::new(false),
        }
    }

    /// The engines of a model whose host reported `load`: the forest read from its cache
    /// file and compiled, or why there is none (logged when it is a failure).
    pub fn load(model: &str, configured: Engine, load: Option<&NativeLoad>) -> ModelEngine {
        let (path, extracted) = match load {
            None => return ModelEngine::r_only(configured, "the r host did not say whether it extracted a forest"),
            Some(NativeLoad::Off) => return ModelEngine::r_only(configured, "model.toml says engine = \"r\""),
            Some(NativeLoad::Unsupported { reason }) => return ModelEngine::r_only(configured, reason.clone()),
            Some(NativeLoad::Failed { reason }) => {
                tracing::warn!(model, reason = %reason, "the r host could not extract a native forest; R serves the model");
                return ModelEngine::r_only(configured, format!("extracting the forest failed: {reason}"));
            }
            Some(NativeLoad::Ready { path, extracted }) => (path, *extracted),
        };
        match read_forest(path).and_then(|forest| {
            let model = NativeModel::compile(&forest).map_err(|e| format!("the forest does not compile: {e}"))?;
            Ok((forest, model))
        }) {
            Ok((forest, compiled)) => {
                let footprint = compiled.footprint();
                let summary = NativeSummary {
                    algorithm: forest.algorithm,
                    trees: footprint.trees,
                    nodes: footprint.nodes,
                    bytes: footprint.bytes,
                    bytes_per_node: footprint.bytes as f64 / footprint.nodes.max(1) as f64,
                    types: compiled.types().iter().map(|t| t.to_string()).collect(),
                    extracted,
                };
                tracing::info!(
                    model,
                    trees = summary.trees,
                    nodes = summary.nodes,
                    bytes = summary.bytes,
                    extracted,
                    "native forest compiled"
                );
                ModelEngine {
                    configured,
                    native: Some(Native { model: compiled, summary }),
                    absent: None,
                    check: Mutex::new(None),
                    check_started: AtomicBool::new(false),
                }
            }
            Err(reason) => {
                tracing::warn!(model, path = %path.display(), reason = %reason, "cannot use the native forest; R serves the model");
                ModelEngine::r_only(configured, reason)
            }
        }
    }

    /// The compiled forest, when there is one.
    pub fn native(&self) -> Option<&NativeModel> {
        self.native.as_ref().map(|n| &n.model)
    }

    /// Whether a self-check is due (a native forest that `auto` or `native` would use, not
    /// checked yet), marking it started: true once per model.
    pub fn begin_check(&self) -> bool {
        self.native.is_some() && self.configured != Engine::R && !self.check_started.swap(true, Ordering::Relaxed)
    }

    pub fn record_check(&self, check: SelfCheck) {
        *self.check.lock() = Some(check);
    }

    /// What a request without `?engine=` gets now (for a `type` the native engine answers).
    pub fn serving(&self) -> Engine {
        let passed = self.check.lock().as_ref().is_some_and(|c| c.passed);
        match (self.configured, &self.native) {
            (Engine::R, _) | (_, None) => Engine::R,
            (Engine::Native, Some(_)) => Engine::Native,
            (Engine::Auto, Some(_)) if passed => Engine::Native,
            (Engine::Auto, Some(_)) => Engine::R,
        }
    }

    /// For `GET /models`: the choice, the forest, the self-check, and why R serves it.
    pub fn status(&self) -> EngineStatus {
        let check = self.check.lock().clone();
        let serving = self.serving();
        let reason = match (serving, &check) {
            (Engine::Native, _) => None,
            _ if self.configured == Engine::R => Some("model.toml says engine = \"r\"".to_string()),
            _ if self.native.is_none() => self.absent.clone(),
            (_, None) => Some("the self-check has not finished".to_string()),
            (_, Some(check)) => Some(format!(
                "the self-check failed: {}",
                check.message.as_deref().unwrap_or("R and the native engine disagree")
            )),
        };
        EngineStatus {
            configured: self.configured,
            serving,
            native: self.native.as_ref().map(|n| n.summary.clone()),
            self_check: check,
            reason,
        }
    }

    /// The engine for a request that asked for `requested` (`None`: the model's choice)
    /// with `predict_type` (the model's default already applied).
    pub fn choose(&self, requested: Option<Engine>, predict_type: Option<&str>) -> Choice {
        let native = self.native().filter(|n| covers(n, predict_type));
        match (requested.unwrap_or(Engine::Auto), native) {
            (Engine::R, _) => Choice::R,
            (Engine::Native, Some(_)) => Choice::Native { explicit: true },
            (Engine::Native, None) => Choice::Refused(self.refusal(predict_type)),
            (Engine::Auto, Some(_)) if self.serving() == Engine::Native => Choice::Native { explicit: false },
            (Engine::Auto, _) => Choice::R,
        }
    }

    fn refusal(&self, predict_type: Option<&str>) -> String {
        match (&self.native, self.configured) {
            (Some(native), _) => format!(
                "engine=native: the native engine does not answer type '{}' for this model (it answers: {})",
                predict_type.unwrap_or("(none)"),
                native.summary.types.join(", ")
            ),
            (None, Engine::R) => {
                "engine=native: this model is served by R only (model.toml says engine = \"r\")".into()
            }
            (None, _) => format!(
                "engine=native: this model has no native forest ({})",
                self.absent.as_deref().unwrap_or("none was extracted")
            ),
        }
    }
}

/// Whether the native engine answers `predict_type` (`None`: no type given to R).
fn covers(model: &NativeModel, predict_type: Option<&str>) -> bool {
    predict_type.is_none_or(|t| model.types().contains(&t))
}

fn read_forest(path: &Path) -> Result<NativeForest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let forest: NativeForest =
        protocol::decode(&bytes).map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    if forest.format != protocol::native::NATIVE_FORMAT {
        return Err(format!(
            "{} holds format {}, this worker reads {}",
            path.display(),
            forest.format,
            protocol::native::NATIVE_FORMAT
        ));
    }
    Ok(forest)
}

/// Scores `frame` with `native` (the forest of `model`): a few rows on this thread, many
/// on the blocking pool.
pub async fn predict(
    model: &Arc<ServedModel>,
    frame: &Frame,
    predict_type: Option<&str>,
) -> Result<Prediction, native::Declined> {
    let run = |model: &ServedModel, frame: &Frame, predict_type: Option<&str>| match model.engine.native() {
        Some(native) => native.predict(frame, predict_type),
        None => Err(native::Declined("the model has no native forest".into())),
    };
    if frame.n_rows < BLOCKING_ROWS {
        return run(model, frame, predict_type);
    }
    let (model, frame, predict_type) = (model.clone(), frame.clone(), predict_type.map(str::to_string));
    tokio::task::spawn_blocking(move || run(&model, &frame, predict_type.as_deref()))
        .await
        .unwrap_or_else(|e| Err(native::Declined(format!("the native engine panicked: {e}"))))
}

/// What the self-check found comparing one `type`'s answers.
#[derive(Debug, Default, PartialEq)]
pub struct Agreement {
    /// Values that differ (a label differing on a tied row excepted).
    pub mismatches: u32,
    /// Rows whose class was a tie of votes.
    pub ties: u32,
    /// The first difference, in words.
    pub first: Option<String>,
}

/// Compares the native answer with R's, value by value: doubles by their bits, labels by
/// name. A label that differs on a row the native engine reports tied is not a mismatch:
/// R broke that tie at random.
pub fn compare(native: &Prediction, r: &Frame) -> Agreement {
    let mut agreement = Agreement { ties: native.ties.len() as u32, ..Agreement::default() };
    let mut differ = |what: String| {
        agreement.mismatches += 1;
        agreement.first.get_or_insert(what);
    };
    let names = |f: &Frame| f.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(&native.frame) != names(r) || native.frame.n_rows != r.n_rows {
        differ(format!(
            "R answered columns {:?} for {} rows, the native engine {:?} for {}",
            names(r),
            r.n_rows,
            names(&native.frame),
            native.frame.n_rows
        ));
        return agreement;
    }
    for (ours, theirs) in native.frame.columns.iter().zip(&r.columns) {
        let column = &ours.name;
        match (&ours.data, &theirs.data) {
            (ColumnData::F64 { values: a }, ColumnData::F64 { values: b }) => {
                for (row, (x, y)) in a.iter().zip(b).enumerate() {
                    if x.map(f64::to_bits) != y.map(f64::to_bits) {
                        differ(format!("column '{column}' row {}: R {y:?}, native {x:?}", row + 1));
                    }
                }
            }
            (ColumnData::Factor { levels: la, values: a, .. }, ColumnData::Factor { levels: lb, values: b, .. }) => {
                for (row, (x, y)) in a.iter().zip(b).enumerate() {
                    let x = x.map(|c| la[c as usize].as_str());
                    let y = y.map(|c| lb[c as usize].as_str());
                    if x != y && !native.ties.contains(&row) {
                        differ(format!("column '{column}' row {}: R {y:?}, native {x:?}", row + 1));
                    }
                }
            }
            (a, b) => {
                differ(format!("column '{column}': R answered {}, the native engine {}", b.type_name(), a.type_name()))
            }
        }
    }
    agreement
}

/// The self-check of `model`: [`SELF_CHECK_ROWS`] rows made from its schema and its
/// trees' thresholds, scored by R on the pool and natively for every `type` the native
/// engine answers, compared bit for bit. Its result is recorded on the model (and decides
/// `auto`), logged, and the pool told so that the worker announces it.
pub async fn self_check(pool: &Pool, model: Arc<ServedModel>) {
    let label = model.info.model_ref().to_string();
    let check = run_check(pool, &model).await;
    if check.passed {
        tracing::info!(model = %label, rows = check.rows, types = ?check.types, ties = check.ties, "native engine self-check passed");
    } else {
        tracing::warn!(
            model = %label,
            rows = check.rows,
            mismatches = check.mismatches,
            reason = check.message.as_deref().unwrap_or_default(),
            "native engine self-check failed; R serves the model"
        );
    }
    model.engine.record_check(check);
    pool.engines_changed();
}

async fn run_check(pool: &Pool, model: &Arc<ServedModel>) -> SelfCheck {
    let failed = |types: Vec<String>, message: String| SelfCheck {
        passed: false,
        rows: 0,
        types,
        mismatches: 0,
        ties: 0,
        message: Some(message),
    };
    let Some(native) = model.engine.native() else {
        return failed(Vec::new(), "there is no native forest".into());
    };
    let types: Vec<String> = native.types().iter().map(|t| t.to_string()).collect();
    let Some(schema) = &model.info.schema else {
        return failed(types, "the model has no input schema to make sample rows from".into());
    };
    let sample = native.sample(schema, SELF_CHECK_ROWS, 0x5eed);
    let sample = match protocol::conform(&sample, schema) {
        Ok(sample) => sample,
        Err(e) => return failed(types, format!("the sample rows do not fit the schema: {e}")),
    };
    let mut check = SelfCheck {
        passed: true,
        rows: sample.n_rows as u32,
        types: types.clone(),
        mismatches: 0,
        ties: 0,
        message: None,
    };
    for predict_type in types.clone() {
        let mine = match native.predict(&sample, Some(&predict_type)) {
            Ok(prediction) => prediction,
            Err(declined) => {
                return failed(types, format!("type '{predict_type}': the native engine declined: {declined}"))
            }
        };
        let request = PoolRequest {
            model: model.clone(),
            input: Input::Frame(sample.clone()),
            predict_type: Some(predict_type.clone()),
            // R's own answer is one call on the whole sample: a forest split by trees
            // combines its parts' means, which need not round as R's one sum does.
            split: Some(SplitPolicy::Never),
            deadline: Some(Instant::now() + SELF_CHECK_DEADLINE),
            span: tracing::Span::none(),
            trace: None,
        };
        let theirs = match pool.score(request).await.map(|scored| scored.result) {
            Ok(Ok(protocol::host::HostOutput::Frame(frame))) => frame,
            Ok(Ok(other)) => return failed(types, format!("type '{predict_type}': R answered {other:?}, not a frame")),
            Ok(Err(error)) => {
                return failed(types, format!("type '{predict_type}': R refused the sample: {}", error.message))
            }
            Err(error) => {
                return failed(types, format!("type '{predict_type}': R could not score the sample: {error}"))
            }
        };
        let agreement = compare(&mine, &theirs);
        check.mismatches += agreement.mismatches;
        check.ties = check.ties.max(agreement.ties);
        if let Some(first) = agreement.first {
            check.passed = false;
            check.message.get_or_insert(format!("type '{predict_type}': {first}"));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Column;

    fn doubles(values: &[f64]) -> Frame {
        Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: values.iter().copied().map(Some).collect() })])
            .unwrap()
    }

    fn labels(levels: &[&str], codes: &[u32]) -> Frame {
        let levels = levels.iter().map(|l| l.to_string()).collect();
        let values = codes.iter().copied().map(Some).collect();
        Frame::new(vec![Column::new(".pred", ColumnData::Factor { levels, values, ordered: false })]).unwrap()
    }

    /// Doubles compare by their bits: one ulp apart, or 0.0 against -0.0, is a mismatch.
    #[test]
    fn doubles_agree_only_bit_for_bit() {
        let native = |values: &[f64]| Prediction { frame: doubles(values), ties: Vec::new() };
        assert_eq!(compare(&native(&[1.5, 2.0]), &doubles(&[1.5, 2.0])), Agreement::default());
        let next = f64::from_bits(2.0f64.to_bits() + 1);
        let agreement = compare(&native(&[1.5, next]), &doubles(&[1.5, 2.0]));
        assert_eq!(agreement.mismatches, 1);
        assert!(agreement.first.unwrap().contains("row 2"));
        assert_eq!(compare(&native(&[0.0]), &doubles(&[-0.0])).mismatches, 1);
    }

    /// Labels compare by name (the levels may be listed apart), and a tied row may differ.
    #[test]
    fn labels_agree_by_name_and_ties_are_excused() {
        let r = labels(&["a", "b", "c"], &[0, 1, 2]);
        let same = Prediction { frame: labels(&["a", "b", "c"], &[0, 1, 2]), ties: Vec::new() };
        assert_eq!(compare(&same, &r), Agreement::default());
        let tie = Prediction { frame: labels(&["a", "b", "c"], &[0, 2, 2]), ties: vec![1] };
        assert_eq!(compare(&tie, &r), Agreement { mismatches: 0, ties: 1, first: None });
        let wrong = Prediction { frame: labels(&["a", "b", "c"], &[1, 1, 2]), ties: vec![1] };
        let agreement = compare(&wrong, &r);
        assert_eq!((agreement.mismatches, agreement.ties), (1, 1));
        assert!(agreement.first.unwrap().contains("row 1: R Some(\"a\"), native Some(\"b\")"));
    }

    #[test]
    fn shapes_that_differ_are_one_mismatch() {
        let native = Prediction { frame: doubles(&[1.0]), ties: Vec::new() };
        let agreement = compare(&native, &labels(&["a"], &[0]));
        assert_eq!(agreement.mismatches, 1);
        assert!(agreement.first.unwrap().contains("R answered factor, the native engine f64"));
        let agreement = compare(&native, &doubles(&[1.0, 2.0]));
        assert!(agreement.first.unwrap().contains("for 2 rows"));
    }

    /// A model without a native forest: R serves it, `?engine=native` is refused with the
    /// reason, and `GET /models` says why.
    #[test]
    fn without_a_forest_r_serves_and_native_is_refused() {
        let engine = ModelEngine::load(
            "m",
            Engine::Auto,
            Some(&NativeLoad::Unsupported { reason: "gbm distribution multinomial".into() }),
        );
        assert!(matches!(engine.choose(None, None), Choice::R));
        assert!(matches!(engine.choose(Some(Engine::R), None), Choice::R));
        match engine.choose(Some(Engine::Native), None) {
            Choice::Refused(reason) => {
                assert!(reason.contains("no native forest (gbm distribution multinomial)"), "{reason}")
            }
            _ => panic!("engine=native without a forest must be refused"),
        }
        let status = engine.status();
        assert_eq!((status.configured, status.serving), (Engine::Auto, Engine::R));
        assert_eq!(status.reason.as_deref(), Some("gbm distribution multinomial"));
        assert!(!engine.begin_check(), "nothing to check");

        let off = ModelEngine::load("m", Engine::R, Some(&NativeLoad::Off));
        assert_eq!(off.status().reason.as_deref(), Some("model.toml says engine = \"r\""));
        let missing = ModelEngine::load(
            "m",
            Engine::Auto,
            Some(&NativeLoad::Ready { path: "/nonexistent/forest.msgpack".into(), extracted: false }),
        );
        assert!(missing.native().is_none());
        assert!(missing.status().reason.unwrap().contains("cannot read /nonexistent/forest.msgpack"));
    }
}
