//! One request for the pool and its answer: what [`crate::pool`] takes and returns and
//! what [`crate::schedule`] holds while a request waits, apart from both so that neither
//! module depends on the other for them.

use std::time::{Duration, Instant};

use protocol::host::HostOutput;
use protocol::message::SplitPolicy;
use protocol::{ErrorBody, Input};

use crate::host::HostError;

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
    #[error("model '{0}' is not loaded in this worker's R hosts")]
    UnknownModel(String),
    /// A bug: the pool panicked while finishing the request's job.
    #[error("the worker panicked while scoring the request: {0}")]
    Panicked(String),
}

/// One request for the pool.
#[derive(Debug, Clone)]
pub struct PoolRequest {
    pub model: String,
    pub version: Option<String>,
    /// Already validated and conformed to the model's schema.
    pub input: Input,
    pub predict_type: Option<String>,
    /// Overrides the model's split policy.
    pub split: Option<SplitPolicy>,
    pub deadline: Option<Instant>,
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
