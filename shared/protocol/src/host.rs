//! The private channel between a worker's supervisor and one R host child process.
//!
//! The channel is a Unix socket the child finds at file descriptor [`HOST_FD`], never its
//! stdout or stderr: R prints to those whenever a model or script says `print`, and such
//! text must not corrupt the channel (the supervisor logs it instead). Each message is a
//! 4-byte big-endian length followed by a named MessagePack map, the framing of
//! `tokio_util::codec::LengthDelimitedCodec`'s defaults.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::message::{ErrorBody, Input, LoadFailure, ModelInfo, ModelRef, WireError};
use crate::native::{Engine, NativeLoad};
use crate::{Frame, Schema};

/// The file descriptor of the supervisor channel in an R host process.
pub const HOST_FD: i32 = 3;

/// Largest message either side accepts (1 GiB), a guard against a corrupt length prefix.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// A model package to load, as the supervisor found it on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub version: Option<String>,
    /// The package directory (holds `model.rds`, maybe `score.R` and `model.toml`).
    pub dir: PathBuf,
    /// The schema `model.toml` declares; when absent the host infers one from the model.
    pub schema: Option<Schema>,
    /// `model.toml`'s `predict_type`.
    pub predict_type: Option<String>,
    /// `model.toml`'s `engine`: with `r` the host extracts no native forest.
    #[serde(default)]
    pub engine: Engine,
    /// `model.toml`'s `r_fallback`: with `false` the host checks the native forest against
    /// R at load and, if they agree, releases the model's R objects (see
    /// [`NativeLoad::Ready`]). `true` from supervisors older than the option.
    #[serde(default = "crate::message::r_fallback_default")]
    pub r_fallback: bool,
}

impl ModelSpec {
    pub fn model_ref(&self) -> ModelRef {
        ModelRef { name: self.name.clone(), version: self.version.clone() }
    }
}

/// Supervisor to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToHost {
    /// The first message: load these models, then answer [`FromHost::Ready`] with those
    /// that loaded and those that failed (several versions of one name are several models).
    Load { models: Vec<ModelSpec> },
    /// Score one request. The frame has already been conformed to the model's schema.
    Score { id: u64, model: ModelRef, input: Input, predict_type: Option<String> },
    /// Score a frame with a subset of a forest's trees (forest splitting). Only for models
    /// whose [`ModelInfo::forest`] is set; the answer is a [`HostOutput::ForestPart`].
    ScoreTrees { id: u64, model: ModelRef, input: Input, trees: TreeRange },
}

/// Trees `start..end` of a forest (0-based, end exclusive), in the model's own order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRange {
    pub start: u32,
    pub end: u32,
}

/// What a subset of a forest's trees says about each row, in a form that adds up: parts
/// over disjoint tree ranges covering the forest combine exactly into the forest's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForestPart {
    /// Regression: the mean of the part's trees per row (`None` where R says NA).
    Regression { n_trees: u32, mean: Vec<Option<f64>> },
    /// Classification: how many of the part's trees vote for each class, per row:
    /// `votes[class][row]`, classes in the model's level order.
    Votes { n_trees: u32, classes: Vec<String>, votes: Vec<Vec<u32>> },
}

/// Host to supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromHost {
    /// R is up: `models` loaded (in the order they were listed), `failed` did not, each
    /// with R's error; one broken package does not stop a host.
    Ready {
        pid: u32,
        r_version: String,
        models: Vec<ModelInfo>,
        #[serde(default)]
        failed: Vec<LoadFailure>,
        /// Microseconds each of `models` took to load, in the same order (empty from a
        /// host that does not say).
        #[serde(default)]
        load_us: Vec<u64>,
        /// What became of each of `models`' native forest, in the same order (empty from
        /// a host that does not say).
        #[serde(default)]
        native: Vec<NativeLoad>,
    },
    /// The host cannot serve at all (R did not start, the prelude failed).
    LoadFailed { message: String },
    /// One request's answer. `r_us` runs from receipt of the request to its result being
    /// ready; the phases are its parts that R's work is made of, so they sum to a little
    /// less than `r_us` (the rest is checking the input and picking the model). A host that
    /// does not measure them leaves them 0.
    Scored {
        id: u64,
        result: Result<HostOutput, ErrorBody>,
        r_us: u64,
        #[serde(default)]
        phases: Phases,
        /// On an R error, R's condition class (the condition's first class, e.g.
        /// `simpleError`); `None` for answers that are not R conditions.
        #[serde(default)]
        condition_class: Option<String>,
    },
}

/// Where one R call's time went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Phases {
    /// Building R's input: the `data.frame` (or the JSON string) from the frame.
    pub input_us: u64,
    /// The model's call in R: `predict`, `predict_fn`, an entry script's function, a
    /// forest part.
    pub compute_us: u64,
    /// Converting R's answer back: the columns checked in R and read into a frame, the
    /// JSON encoded, or the forest part read.
    pub output_us: u64,
}

/// What R produced for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutput {
    Frame(Frame),
    Json(String),
    ForestPart(ForestPart),
}

/// Writes one length-prefixed message (blocking; the R host's side).
pub fn write_message<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), ChannelError> {
    let bytes = crate::encode(message)?;
    writer.write_all(&(bytes.len() as u32).to_be_bytes())?;
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

/// Reads one length-prefixed message; `Ok(None)` at a clean end of stream.
pub fn read_message<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, ChannelError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(ChannelError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes)?;
    Ok(Some(crate::decode(&bytes)?))
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("host channel i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("host channel message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}
