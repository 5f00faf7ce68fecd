//! rfleet's wire types: every byte that crosses a process or bus boundary is defined here.
//!
//! # Layout
//! - [`frame`]: typed columnar frames ([`Frame`], [`Column`], [`ColumnData`]).
//! - [`message`]: the bus contract, [`Request`] and [`Reply`], encoded as MessagePack maps.
//! - [`schema`]: a model's input schema ([`Schema`]) and [`conform`], which checks a frame
//!   against it and names the column, row and value of every problem.
//! - [`json`]: JSON bodies (row objects, pandas split orientation) to and from frames.
//! - [`host`]: the private channel between a worker's supervisor and its R host children.
//! - [`native`]: tree ensembles extracted from R models ([`native::NativeForest`]) for the
//!   worker's native engine, and which engine scores a request ([`Engine`]).
//! - [`r_packages`]: the R package each known model class comes from (not a wire type, but
//!   read from `ModelInfo::r_class` by the dispatcher and by `rfleet package` alike).
//!
//! **Invariant:** only this crate defines types that are serialized across a boundary.
//! Every such type is named-field MessagePack (`rmp_serde::to_vec_named`), ignores
//! unknown fields (forward compatible) and is covered by golden bytes in `golden/`.

pub mod frame;
pub mod host;
pub mod json;
pub mod message;
pub mod native;
pub mod r_packages;
pub mod schema;

pub use frame::{Column, ColumnData, Frame, FrameError, NulAt, NUL_IN_R};
pub use message::{
    compare_versions, decode, encode, Announcement, EngineStatus, ErrorBody, ErrorCode, ForestInfo, Input, LoadFailure,
    ModelInfo, ModelKind, ModelRef, NativeSummary, Options, Outcome, Reply, Request, SelfCheck, Timings, WireError,
    PROTOCOL_VERSION,
};
pub use native::{Algorithm, Engine, NativeForest, NativeLoad};
pub use schema::{conform, ColumnSpec, ColumnType, InputError, InputErrors, Schema};
