//! A tree ensemble as R's own packages hold it, in a form any language can evaluate: what an
//! R host extracts from a randomForest, ranger or gbm model when it loads the package, what
//! the cache beside the model keeps (keyed by the digest of `model.rds`), and what the
//! worker's native engine (`workers/native`) compiles and scores with.
//!
//! The layout stays close to R's: one tree is a set of parallel arrays indexed by node, node
//! 0 the root, as randomForest's `forest` matrices, ranger's `forest` lists and gbm's
//! `trees` hold them. What each package does differently is named here once, so the
//! evaluator needs no knowledge of R:
//! - a numeric split sends `x <= split` left in randomForest and ranger, `x < split` left
//!   in gbm ([`Algorithm::numeric_left`]);
//! - a categorical split is a direction per level ([`NativeTree::sets`]); randomForest's
//!   packed bits, ranger's partition bits and gbm's `c.splits` are all unpacked into it;
//! - a missing value goes to the node's `missing` child in gbm; randomForest and ranger
//!   have none (R refuses or drops such rows, and the native engine leaves them to R);
//! - how leaf values become the answer of each `type` is the [`NativeOutput`].
//!
//! Bumping [`NATIVE_FORMAT`] makes every cached extraction stale: hosts extract again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::message::SelfCheck;

/// The version of this layout that this build writes and reads.
pub const NATIVE_FORMAT: u32 = 1;

/// Reads the cache file `path`: the forest it holds, or why it cannot be used (unreadable,
/// undecodable, or of another [`NATIVE_FORMAT`]).
pub fn read_forest(path: &Path) -> Result<NativeForest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let forest: NativeForest = crate::decode(&bytes).map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    if forest.format != NATIVE_FORMAT {
        return Err(format!("{} holds format {}, this build reads {NATIVE_FORMAT}", path.display(), forest.format));
    }
    Ok(forest)
}

/// One model's trees, inputs and output rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeForest {
    /// [`NATIVE_FORMAT`] when it was extracted.
    pub format: u32,
    pub algorithm: Algorithm,
    /// The version of the R package (`randomForest`, `ranger`, `gbm`) the model was
    /// extracted under, as `packageVersion()` prints it.
    pub package_version: String,
    /// The columns the trees read, in the order [`NativeTree::var`] counts them.
    pub inputs: Vec<NativeInput>,
    /// In the model's own order, which is the order R sums them in.
    pub trees: Vec<NativeTree>,
    pub output: NativeOutput,
}

/// The R package whose `predict` the forest reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RandomForest,
    Ranger,
    Gbm,
}

impl Algorithm {
    /// Whether a numeric split sends `x` left: `x <= split` (randomForest's C code,
    /// ranger's C++), `x < split` (gbm's `gbm_pred`). A NaN goes right in all three.
    pub fn numeric_left(self, x: f64, split: f64) -> bool {
        match self {
            Algorithm::RandomForest | Algorithm::Ranger => x <= split,
            Algorithm::Gbm => x < split,
        }
    }

    /// The R package's name.
    pub fn package(self) -> &'static str {
        match self {
            Algorithm::RandomForest => "randomForest",
            Algorithm::Ranger => "ranger",
            Algorithm::Gbm => "gbm",
        }
    }
}

/// One column the trees read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeInput {
    pub name: String,
    /// For a factor, its levels in the order the model's codes count them (which need not
    /// be the order a request's frame lists them in: the engine maps levels by name);
    /// `None` for a number (double, integer or logical, read as a double as R's
    /// `data.matrix` does).
    #[serde(default)]
    pub levels: Option<Vec<String>>,
    /// Whether the trees split this factor by sets of levels (randomForest's `ncat > 1`,
    /// ranger's unordered factors, gbm's `var.type > 0`). A factor that is not categorical
    /// is split by threshold on its code, which counts from [`NativeInput::code_base`].
    #[serde(default)]
    pub categorical: bool,
    /// The number R gives a factor's first level when it compares codes with thresholds:
    /// 1 after `data.matrix` (randomForest, ranger), 0 in gbm (`as.numeric(f) - 1`).
    #[serde(default)]
    pub code_base: u32,
}

/// One tree as parallel arrays indexed by node; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NativeTree {
    /// The input each node splits on (an index into [`NativeForest::inputs`]), or -1 for
    /// a leaf.
    pub var: Vec<i32>,
    /// A numeric split's threshold; for a categorical split, the index into
    /// [`NativeTree::sets`] of its directions (a whole number); 0 at leaves.
    pub split: Vec<f64>,
    /// The children (node indices of this tree); 0 at leaves.
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// gbm only: where a missing value (and a level the split has no direction for) goes.
    /// Empty for packages that have no missing branch.
    #[serde(default)]
    pub missing: Vec<u32>,
    /// Each leaf's value (0 at splits): the mean of a regression leaf, the class of a
    /// classification leaf (its 1-based index into the output's classes), gbm's
    /// prediction.
    pub value: Vec<f64>,
    /// ranger probability forests only: each leaf's class fractions, in the output's class
    /// order (empty at splits). Empty for other forests.
    #[serde(default)]
    pub distribution: Vec<Vec<f64>>,
    /// Categorical splits' directions by level code (0-based, in the input's `levels`
    /// order): -1 left, 1 right, 0 the missing branch.
    #[serde(default)]
    pub sets: Vec<Vec<i8>>,
}

/// How the trees' leaf values become `predict`'s answer, per `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NativeOutput {
    /// Regression (randomForest, ranger): the leaf values summed in tree order and divided
    /// by the number of trees; with randomForest's `corr.bias`, `bias[0] + bias[1] * mean`.
    /// Answers `type = "response"` (and no type) as one double column.
    Mean {
        #[serde(default)]
        bias: Option<[f64; 2]>,
    },
    /// randomForest classification: each tree votes for its leaf's class. `"response"`
    /// (and `"class"`, and no type) is the class with the most `votes / n_trees / cutoff`,
    /// a tie broken at random in R; `"prob"` and `"vote"` are `votes / n_trees` per class.
    Votes { classes: Vec<String>, cutoff: Vec<f64> },
    /// ranger classification: the class most trees vote for, a tie broken at random in
    /// ranger. Answers `"response"` (and no type) as a factor of `classes`.
    Majority { classes: Vec<String> },
    /// ranger probability forests: each class's leaf fractions summed in tree order and
    /// divided by the number of trees, one double column per class, in `classes` order.
    Distribution { classes: Vec<String> },
    /// gbm: `init` plus the leaf values of every tree in order (`"link"`); `"response"`
    /// applies the inverse link of `distribution` (`gaussian`: none, `bernoulli`:
    /// `1 / (1 + exp(-f))`, `poisson`: `exp(f)`).
    Boosted { init: f64, distribution: String },
}

/// What the R host did about a model's native forest when it loaded the package, sent in
/// [`crate::host::FromHost::Ready`] beside each model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NativeLoad {
    /// The package's `engine` is `r`: nothing was extracted.
    Off,
    /// The model is not one the native engine knows (its class, its type, an option), and
    /// why; it is served by R.
    Unsupported { reason: String },
    /// The forest is in the cache file `path` (MessagePack of a [`NativeForest`]):
    /// extracted by this load (`extracted`), or found there from an earlier one.
    ///
    /// With `r_fallback = false` ([`crate::host::ModelSpec::r_fallback`]) the host ran the
    /// self-check itself (`check`: that file's forest against the model's own R scorer);
    /// `released` says it passed and the host let go of the model's R objects, so that the
    /// host answers no request for it. Both default (`None`, `false`) for other models and
    /// for hosts older than the option.
    Ready {
        path: std::path::PathBuf,
        extracted: bool,
        #[serde(default)]
        check: Option<SelfCheck>,
        #[serde(default)]
        released: bool,
    },
    /// Extraction failed (an R error, a file that could not be written), and why.
    Failed { reason: String },
}

/// Which engine scores a request, or a model: `model.toml`'s `engine`, and a request's
/// `?engine=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Native once the model's self-check at load has passed, R until then and for what
    /// the native engine does not cover.
    #[default]
    Auto,
    /// Always R's own `predict`.
    R,
    /// The native engine; a request it cannot serve is refused rather than sent to R.
    Native,
}

impl Engine {
    /// As written in `model.toml`, queries and `GET /models` (`auto`, `r`, `native`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::R => "r",
            Engine::Native => "native",
        }
    }
}
