//! One request for the pool and its answer: what [`crate::pool`] takes and returns and
//! what [`crate::schedule`] holds while a request waits, apart from both so that neither
//! module depends on the other for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::host::HostOutput;
use protocol::message::SplitPolicy;
use protocol::{ErrorBody, Input, LoadFailure, ModelInfo, ModelRef};

use telemetry::trace::TraceParent;

use crate::engine::ModelEngine;
use crate::host::HostError;
use crate::metrics::ModelMetrics;
use crate::policy::Throughput;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Start(#[from] HostError),
    #[error("the deadline passed before an R host could take the request")]
    DeadlineExceeded,
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("the request was given to {attempts} R hosts and each one was lost ({last}); it is not retried further")]
    Crashed { attempts: u32, last: String },
    #[error("model {0} is not loaded in this worker's R hosts")]
    UnknownModel(ModelRef),
    /// The request's package changed (a reload) while it was on its way to the pool, its
    /// schema with it, and no R host holds the old package any more.
    #[error("the package of model {0} was replaced while the request was queued; retry")]
    Replaced(ModelRef),
    /// `models.strict`: packages that failed to load stop the worker from starting.
    #[error("model packages failed to load (models.strict refuses to start): {}", describe_failures(.0))]
    Load(Vec<LoadFailure>),
    /// A bug: the pool panicked while finishing the request's job.
    #[error("the worker panicked while scoring the request: {0}")]
    Panicked(String),
}

/// `rf-reg version 2 (model.rds is corrupt); rf-cls (...)`, for logs and errors.
pub fn describe_failures(failures: &[LoadFailure]) -> String {
    let described: Vec<String> = failures
        .iter()
        .map(|f| format!("{} ({})", ModelRef::new(f.name.clone(), f.version.clone()), f.message))
        .collect();
    described.join("; ")
}

/// A model as the pool serves it: what the hosts said about it, and its throughput
/// settings. One `Arc` is one package as loaded: a reload that leaves a package alone
/// keeps its `Arc`, one that changes it makes a new one, and an R host takes a request
/// only for an `Arc` it holds.
#[derive(Debug)]
pub struct ServedModel {
    pub info: ModelInfo,
    pub throughput: Throughput,
    /// Its metric series, made once.
    pub metrics: ModelMetrics,
    /// R or the native engine, and the native forest if there is one.
    pub engine: ModelEngine,
}

impl ServedModel {
    /// `prediction_buckets`: `model.toml`'s `[metrics] prediction_buckets`. Served by R
    /// alone until [`ServedModel::with_engine`] says otherwise.
    pub fn new(info: ModelInfo, throughput: Throughput, prediction_buckets: Option<&[f64]>) -> ServedModel {
        let metrics = ModelMetrics::new(&info, prediction_buckets);
        let engine = ModelEngine::r_only(protocol::Engine::Auto, "no native forest was loaded");
        ServedModel { info, throughput, metrics, engine }
    }

    pub fn with_engine(self, engine: ModelEngine) -> ServedModel {
        ServedModel { engine, ..self }
    }

    /// Its [`ModelInfo`] as the worker announces it now: with its engines' status.
    pub fn info_now(&self) -> ModelInfo {
        ModelInfo { engine: Some(self.engine.status()), ..self.info.clone() }
    }
}

/// One request for the pool.
#[derive(Debug, Clone)]
pub struct PoolRequest {
    /// The model (one package as loaded, from [`crate::Pool::model`]) that scores it.
    pub model: Arc<ServedModel>,
    /// Already validated and conformed to the model's schema.
    pub input: Input,
    pub predict_type: Option<String>,
    /// Overrides the model's split policy.
    pub split: Option<SplitPolicy>,
    pub deadline: Option<Instant>,
    /// The request's CONSUMER span: a job it leads is a child of it.
    pub span: tracing::Span,
    /// The request's trace context, which the batch span links to.
    pub trace: Option<TraceParent>,
}

/// What the pool returns for one request.
#[derive(Debug)]
pub struct PoolScored {
    pub result: Result<HostOutput, ErrorBody>,
    /// Time inside R (the longest part, for a split).
    pub r_us: u64,
    /// The host that scored it (the first part's, for a split).
    pub host_pid: u32,
    /// R calls the request took part in.
    pub attempts: u32,
    /// Time from queueing to the start of its last R call.
    pub wait: Duration,
    /// How it was scored: `whole`, `batch:N`, `rows:K`, `trees:K`, `batch:N+trees:K`.
    pub path: String,
}
