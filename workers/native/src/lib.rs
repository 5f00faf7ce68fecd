//! The native engine: a [`NativeForest`] extracted from an R model, compiled into a
//! [`NativeModel`] that scores frames exactly as R's `predict` does (the same trees walked
//! with the same comparisons, leaf values summed in the same order, the same arithmetic on
//! the sums), with no R call.
//!
//! **Invariant:** this crate does no I/O and never links R. It reads frames and forests
//! and answers frames; where it could not give R's answer (a missing value where R would
//! refuse or drop the row, a `type` it does not know), it declines and the caller asks R.

use protocol::{Frame, NativeForest, Schema};

/// A compiled forest, held once per worker process and shared by every thread.
pub struct NativeModel {}

/// Why a forest cannot be compiled (a malformed extraction: a child out of range, a set
/// index past the sets, inputs and trees that disagree).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Why the engine leaves a request to R, in words for logs and the 422 of `?engine=native`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Declined(pub String);

/// A native answer: the frame R would have answered, and the rows whose class was a tie of
/// votes (0-based), which R breaks at random, so that R's label there may differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub frame: Frame,
    pub ties: Vec<usize>,
}

/// What a compiled forest holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub trees: u32,
    pub nodes: u64,
    pub bytes: u64,
}

impl NativeModel {
    /// Checks and compiles an extracted forest.
    pub fn compile(forest: &NativeForest) -> Result<NativeModel, CompileError> {
        let _ = forest;
        Err(CompileError("the native engine is not built yet".into()))
    }

    /// The `type`s answered natively (`response`, `prob`, `vote`, `class`, `link`), the
    /// model's default (`None`) resolved by the caller first.
    pub fn types(&self) -> &[&'static str] {
        &[]
    }

    /// Scores `frame` (conformed to the model's schema) for `predict_type` as R would:
    /// one row on the calling thread, many in parallel on rayon's pool.
    pub fn predict(&self, frame: &Frame, predict_type: Option<&str>) -> Result<Prediction, Declined> {
        let _ = (frame, predict_type);
        Err(Declined("the native engine is not built yet".into()))
    }

    pub fn footprint(&self) -> Footprint {
        Footprint { trees: 0, nodes: 0, bytes: 0 }
    }

    /// `n` rows for the self-check, conforming to `schema`, deterministic for `seed`.
    pub fn sample(&self, schema: &Schema, n: usize, seed: u64) -> Frame {
        let _ = (schema, n, seed);
        Frame::default()
    }
}
