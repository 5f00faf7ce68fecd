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
//! - `model.toml`'s `r_fallback = false`: the R hosts check the forest against R
//!   themselves at load and, if they agree, let go of the model (`NativeLoad::Ready {
//!   released }`). Such a model takes the hosts' check as its self-check (the pool could
//!   not run one: R no longer holds the model), is served natively, and what would need R
//!   (`?engine=r`, a `type` the engine does not answer, rows it declines) is refused, never
//!   sent to a host. A model whose hosts' check failed stays in R and is served as under
//!   `auto`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use native::{NativeModel, Prediction};
use parking_lot::Mutex;
use protocol::message::SplitPolicy;
use protocol::{Engine, EngineStatus, Frame, Input, NativeLoad, NativeSummary, SelfCheck};

use crate::pool::Pool;
use crate::request::{PoolRequest, ServedModel};

/// Rows from which a native request is scored off the async runtime's threads (on the
/// blocking pool, where the engine spreads them over rayon's threads); fewer are scored
/// on the calling thread, which takes microseconds.
const BLOCKING_ROWS: usize = 64;

/// How long the self-check waits for R's answers (a host may still be starting).
const SELF_CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// A model's engines as its worker serves it.
#[derive(Debug)]
pub struct ModelEngine {
    /// `model.toml`'s `engine`.
    pub configured: Engine,
    /// `model.toml`'s `r_fallback`.
    r_fallback: bool,
    /// Whether the R hosts let go of the model (`r_fallback = false`, their check passed):
    /// nothing of it may go to R.
    released: bool,
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

/// How [`ModelEngine::refusal`]s of a released model begin.
const RELEASED: &str = "this model is served by the native engine only (model.toml says r_fallback = false)";

/// Which engine a request gets.
pub enum Choice {
    R,
    /// `refuse_declined`: rows the native engine declines are refused, with this before the
    /// reason (the request asked for `native`, or R does not hold the model); `None`: they
    /// go to R.
    Native {
        refuse_declined: Option<&'static str>,
    },
    /// `?engine=native` for what the native engine cannot serve, or what would need R for a
    /// model R does not hold: the reason.
    Refused(String),
}

impl ModelEngine {
    /// A model without a native forest (an Azure ML script, a host that says nothing).
    pub fn r_only(configured: Engine, why: impl Into<String>) -> ModelEngine {
        ModelEngine {
            configured,
            r_fallback: true,
            released: false,
            native: None,
            absent: Some(why.into()),
            check: Mutex::new(None),
            check_started: AtomicBool::new(false),
        }
    }

    /// The engines of a model whose host reported `load`: the forest read from its cache
    /// file and compiled, or why there is none (logged when it is a failure). A check the
    /// host ran (`r_fallback = false`) is the model's self-check.
    pub fn load(model: &str, configured: Engine, r_fallback: bool, load: Option<&NativeLoad>) -> ModelEngine {
        let engine = ModelEngine::load_forest(model, configured, load);
        let Some(NativeLoad::Ready { check, released, .. }) = load else {
            return ModelEngine { r_fallback, ..engine };
        };
        if *released && engine.native.is_none() {
            tracing::error!(
                model,
                reason = engine.absent.as_deref().unwrap_or_default(),
                "the r hosts released the model (r_fallback = false) but this worker cannot use its native forest; \
                 its requests are refused"
            );
        }
        if let Some(check) = check {
            if *released {
                tracing::info!(
                    model,
                    rows = check.rows,
                    types = ?check.types,
                    "the r host's self-check passed; R released the model (r_fallback = false), the native engine serves it"
                );
            } else {
                tracing::warn!(
                    model,
                    mismatches = check.mismatches,
                    reason = check.message.as_deref().unwrap_or_default(),
                    "native engine self-check failed in the r host; R keeps the model (r_fallback = false)"
                );
            }
            engine.record_check(check.clone());
            engine.check_started.store(true, Ordering::Relaxed);
        }
        ModelEngine { r_fallback, released: *released, ..engine }
    }

    fn load_forest(model: &str, configured: Engine, load: Option<&NativeLoad>) -> ModelEngine {
        let (path, extracted) = match load {
            None => return ModelEngine::r_only(configured, "the r host did not say whether it extracted a forest"),
            Some(NativeLoad::Off) => return ModelEngine::r_only(configured, "model.toml says engine = \"r\""),
            Some(NativeLoad::Unsupported { reason }) => return ModelEngine::r_only(configured, reason.clone()),
            Some(NativeLoad::Failed { reason }) => {
                tracing::warn!(model, reason = %reason, "the r host could not extract a native forest; R serves the model");
                return ModelEngine::r_only(configured, format!("extracting the forest failed: {reason}"));
            }
            Some(NativeLoad::Ready { path, extracted, .. }) => (path, *extracted),
        };
        match protocol::native::read_forest(path).and_then(|forest| {
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
                    r_fallback: true,
                    released: false,
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

    /// Whether the R hosts let go of the model: nothing of it may go to R.
    pub fn released(&self) -> bool {
        self.released
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
            _ if self.released => Some(format!(
                "the r hosts released the model (r_fallback = false) but this worker cannot use its native forest: {}",
                self.absent.as_deref().unwrap_or("none was loaded")
            )),
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
            r_fallback: self.r_fallback,
            released: self.released,
        }
    }

    /// The engine for a request that asked for `requested` (`None`: the model's choice)
    /// with `predict_type` (the model's default already applied).
    pub fn choose(&self, requested: Option<Engine>, predict_type: Option<&str>) -> Choice {
        let native = self.native().filter(|n| covers(n, predict_type));
        match (requested.unwrap_or(Engine::Auto), native) {
            (Engine::R, _) if self.released => {
                Choice::Refused(format!("engine=r: {RELEASED}: the r hosts hold no copy of it"))
            }
            (_, Some(_)) if self.released => Choice::Native { refuse_declined: Some(RELEASED) },
            (_, None) if self.released => Choice::Refused(self.refusal(predict_type)),
            (Engine::R, _) => Choice::R,
            (Engine::Native, Some(_)) => Choice::Native { refuse_declined: Some("engine=native") },
            (Engine::Native, None) => Choice::Refused(self.refusal(predict_type)),
            (Engine::Auto, Some(_)) if self.serving() == Engine::Native => Choice::Native { refuse_declined: None },
            (Engine::Auto, _) => Choice::R,
        }
    }

    fn refusal(&self, predict_type: Option<&str>) -> String {
        match (&self.native, self.configured) {
            (Some(native), _) if self.released => format!(
                "{RELEASED}, which does not answer type '{}' (it answers: {})",
                predict_type.unwrap_or("(none)"),
                native.summary.types.join(", ")
            ),
            (None, _) if self.released => format!(
                "{RELEASED}, and this worker cannot use its native forest ({})",
                self.absent.as_deref().unwrap_or("none was loaded")
            ),
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

/// The self-check of `model` ([`native::check`]): [`native::SELF_CHECK_ROWS`] rows made
/// from its schema and its trees' thresholds, scored by R on the pool and natively for
/// every `type` the native engine answers, compared bit for bit. Its result is recorded on the model (and decides
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
    let Some(native) = model.engine.native() else {
        return SelfCheck::failed(Vec::new(), "there is no native forest".into());
    };
    let rows = match native.check_rows(model.info.schema.as_ref()) {
        Ok(rows) => rows,
        Err(failed) => return failed,
    };
    // R's answers are asked for first (the pool is async, the comparison is not), and no
    // further once R fails one: the check stops there.
    let mut answers = Vec::new();
    for predict_type in &rows.types {
        let request = PoolRequest {
            model: model.clone(),
            input: Input::Frame(rows.frame.clone()),
            predict_type: Some(predict_type.clone()),
            // R's own answer is one call on the whole sample: a forest split by trees
            // combines its parts' means, which need not round as R's one sum does.
            split: Some(SplitPolicy::Never),
            deadline: Some(Instant::now() + SELF_CHECK_DEADLINE),
            span: tracing::Span::none(),
            trace: None,
        };
        let answer = match pool.score(request).await {
            Ok(scored) => native::check::r_answer(scored.result),
            Err(error) => Err(format!("R could not score the sample: {error}")),
        };
        let failed = answer.is_err();
        answers.push(answer);
        if failed {
            break;
        }
    }
    native.self_check(&rows, answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model without a native forest: R serves it, `?engine=native` is refused with the
    /// reason, and `GET /models` says why.
    #[test]
    fn without_a_forest_r_serves_and_native_is_refused() {
        let engine = ModelEngine::load(
            "m",
            Engine::Auto,
            true,
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

        let off = ModelEngine::load("m", Engine::R, true, Some(&NativeLoad::Off));
        assert_eq!(off.status().reason.as_deref(), Some("model.toml says engine = \"r\""));
        let missing = ModelEngine::load(
            "m",
            Engine::Auto,
            true,
            Some(&NativeLoad::Ready {
                path: "/nonexistent/forest.msgpack".into(),
                extracted: false,
                check: None,
                released: false,
            }),
        );
        assert!(missing.native().is_none());
        assert!(missing.status().reason.unwrap().contains("cannot read /nonexistent/forest.msgpack"));
    }

    /// A model its hosts released (`r_fallback = false`, their check passed): the host's
    /// check is its self-check, it is served natively, and nothing of it goes to R.
    #[test]
    fn a_released_model_never_goes_to_r() {
        use protocol::native::{NativeInput, NativeOutput, NativeTree, NATIVE_FORMAT};
        let forest = protocol::NativeForest {
            format: NATIVE_FORMAT,
            algorithm: protocol::Algorithm::RandomForest,
            package_version: "test".into(),
            inputs: vec![NativeInput { name: "x".into(), levels: None, categorical: false, code_base: 0 }],
            trees: vec![NativeTree {
                var: vec![0, -1, -1],
                split: vec![0.5, 0.0, 0.0],
                left: vec![1, 0, 0],
                right: vec![2, 0, 0],
                value: vec![0.0, 1.0, 2.0],
                ..NativeTree::default()
            }],
            output: NativeOutput::Mean { bias: None },
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forest.msgpack");
        std::fs::write(&path, protocol::encode(&forest).unwrap()).unwrap();
        let host_check = SelfCheck {
            passed: true,
            rows: 256,
            types: vec!["response".into()],
            mismatches: 0,
            ties: 0,
            message: None,
        };
        let load = |released: bool, check: SelfCheck| {
            let load = NativeLoad::Ready { path: path.clone(), extracted: false, check: Some(check), released };
            ModelEngine::load("m", Engine::Auto, false, Some(&load))
        };
        let engine = load(true, host_check.clone());
        assert!(!engine.begin_check(), "no pool self-check: R does not hold the model");
        let status = engine.status();
        assert_eq!((status.serving, status.r_fallback, status.released), (Engine::Native, false, true));
        assert_eq!(status.self_check.as_ref(), Some(&host_check));
        assert!(matches!(engine.choose(None, None), Choice::Native { refuse_declined: Some(RELEASED) }));
        assert!(matches!(engine.choose(Some(Engine::Native), Some("response")), Choice::Native { .. }));
        let refused = |choice: Choice| match choice {
            Choice::Refused(reason) => reason,
            _ => panic!("a released model must refuse what needs R"),
        };
        let r = refused(engine.choose(Some(Engine::R), None));
        assert!(r.starts_with("engine=r: ") && r.contains("r_fallback = false"), "{r}");
        let prob = refused(engine.choose(None, Some("prob")));
        assert!(prob.contains("r_fallback = false") && prob.contains("type 'prob'"), "{prob}");

        // The hosts' check failed: R keeps the model, which is served by R as under auto.
        let failed = SelfCheck { passed: false, mismatches: 3, message: Some("row 1".into()), ..host_check };
        let kept = load(false, failed);
        assert!(!kept.begin_check(), "the hosts' check is the self-check");
        let status = kept.status();
        assert_eq!((status.serving, status.r_fallback, status.released), (Engine::R, false, false));
        assert!(status.reason.unwrap().contains("self-check failed: row 1"));
        assert!(matches!(kept.choose(None, None), Choice::R));
        assert!(matches!(kept.choose(Some(Engine::R), None), Choice::R));
    }
}
