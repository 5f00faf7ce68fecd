//! `rfleet-rhost`: one embedded R that loads models once and scores requests for its
//! supervisor (the worker), one request at a time.
//!
//! # Layout
//! - `main.rs` (this file): the channel loop. Reads [`ToHost`] messages from file
//!   descriptor [`HOST_FD`], answers [`FromHost`] messages there.
//! - [`models`]: loading model packages (by name and version) and scoring one request.
//! - [`native`]: each model's forest for the native engine, extracted or found in its cache.
//! - [`convert`]: frames to `data.frame`s and R results back to frames.
//! - `prelude.R`: the R half, sourced once at start: `.rfleet_load`, the per-model scorer
//!   closures, schema inference, output normalization.
//!
//! # Lifecycle
//! The supervisor starts the host with the channel on fd 3, stdin on /dev/null and
//! stdout/stderr piped (R's own `print`, `cat`, `message` and warnings land there and are
//! logged; R flushes them per call). The first message is `Load`: R starts, then each
//! model package loads on its own, and the host answers `Ready` with the models that
//! loaded (`models`, in the order listed) and those that did not (`failed`: a
//! [`LoadFailure`](protocol::LoadFailure) per package, whose message names the model, its
//! version, the step and R's error, as in `model 'rf_reg' version '2': loading failed in
//! R: reading model.rds: unknown input format`). One broken package never costs the
//! others their host: a host whose every model failed still answers `Ready`, with no
//! models, and the supervisor decides what that means (a strict worker refuses to start).
//! `LoadFailed` is only for a host that cannot serve at all (the prelude did not source);
//! it then exits 1 (`Ready.load_us` says how long each model took to load). Then each
//! `Score` or `ScoreTrees` gets one `Scored`, whose `r_us` runs from receipt of the request
//! to its result being ready, and whose `phases` split R's part of it: `input` (the
//! `data.frame` built), `compute` (the model's call: one R call to the scorer closure) and
//! `output` (a second R call converting the answer, and reading it into a frame). On an R
//! error `condition_class` is the condition's first class (`simpleError`, ...). When the
//! supervisor closes the channel the host exits 0.
//!
//! # Versions
//! Models are addressed by [`ModelRef`](protocol::ModelRef): name and version. One host
//! may hold several versions of one name (two packages whose `model.toml` give the same
//! name and different versions): each has its own R environment, model and caches. A
//! request naming a version gets that version or `model_not_found` naming what the host
//! holds (`model 'rf_reg' version '3' is not loaded in this host (loaded: rf_reg version
//! 1, rf_reg version 2)`); a request without a version gets the unversioned model of that
//! name, else the highest version held (`protocol::compare_versions`), the worker's rule
//! for unpinned requests. The same name and version listed twice is a load failure of the
//! second package. Messages name a versioned model `model '<name>' version '<version>'`,
//! an unversioned one `model '<name>'`.
//!
//! # Model kinds
//! - `score.R` defines `init`: an Azure ML entry script ([`ModelKind::AzureMl`]). It is
//!   sourced and `init()` called with `AZUREML_MODEL_DIR` set to the package directory
//!   (also set during each call). `init()` returns `function(data)`; `data` is the raw
//!   request body as a JSON string. A character scalar result is the answer as is; any
//!   other result is encoded with `jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA)`
//!   (full precision). Only JSON input is accepted.
//! - `score.R` defines `predict_fn(model, newdata)`: [`ModelKind::PredictFn`]. A
//!   `predict_fn` that also declares `type` gets the request's predict type.
//! - Otherwise [`ModelKind::Predict`]: `predict(model, newdata = df, type = type)`, the
//!   `type` left out when there is none. A request's type wins over `model.toml`'s, which
//!   wins over the default: `"response"` for `glm` and `gbm`, else `predict`'s own. `gbm`
//!   always gets `n.trees = model$n.trees`; `ranger` is called with `data =` and one
//!   thread, and answers its `$predictions`.
//!
//! The package of the model's class (randomForest, ranger, gbm, caret, ...) is loaded
//! after `readRDS` so that `predict` dispatches to its method.
//!
//! # Forest splitting
//! A model of kind `Predict` that is a `randomForest` (regression or classification,
//! formula or x/y interface) or a `ranger` forest (regression, or classification of a
//! factor) has [`ModelInfo::forest`](protocol::ModelInfo::forest) set at load: its number
//! of trees and, for classification, its classes in the model's level order
//! (`model$classes`, ranger's `forest$levels`). ranger probability and survival forests, a
//! ranger classification of a numeric response, a randomForest with unequal `cutoff`s
//! (its label is not the plain majority of votes) and wrapped forests (caret `train`,
//! `predict_fn`) have none.
//!
//! `ScoreTrees` scores a frame with trees `start..end` only (0-based, end exclusive, in the
//! model's own order), through R's own `predict` on a sub-forest: the model with its
//! per-tree fields cut to those trees (randomForest: `nodestatus`, `bestvar`,
//! `xbestsplit`, `nodepred`, `leftDaughter`/`rightDaughter` or the 3-d `treemap`,
//! `ndbigtree`, `ntree`; ranger: `child.nodeIDs`, `split.varIDs`, `split.values`,
//! `terminal.class.counts`, `num.trees`). Each sub-forest is made on the first request for
//! its range and kept (the last 8 ranges per model), since a worker asks for the same few.
//! The answer is a [`ForestPart`](protocol::host::ForestPart):
//! - regression: the mean of the part's trees per row (`predict(sub, newdata)`; a
//!   bias-corrected randomForest answers `a + b * mean`, which still combines as a mean).
//!   Combined over parts as `Σ n_i · mean_i / Σ n_i`, it equals the whole forest's
//!   prediction up to rounding (about 1e-14).
//! - classification: per class and row, how many of the part's trees vote for it
//!   (randomForest `type = "vote", norm.votes = FALSE`; ranger: each tree's class from
//!   `predict.all = TRUE`, counted). Summed over parts, `votes / n_trees` equals R's
//!   `type = "prob"` exactly, and the class with most votes is R's label except where
//!   classes tie (R breaks ties at random).
//!
//! A row R predicts as `NA` (a missing value the formula interface drops) has a `None`
//! mean and no votes for any class. R errors are `r_error` as for `Score`, with
//! `predict failed (trees a..b): ` in the message; a model without `forest`, an empty or
//! out-of-range tree range and a JSON input are `bad_request`.
//!
//! # Native forests
//! Each model whose package's `engine` is not `r` gets a [`NativeLoad`](protocol::NativeLoad)
//! in `Ready.native` (in `models` order; `Off` for `engine = "r"`). A model called by
//! `predict` that is a randomForest (regression, classification), a ranger forest
//! (regression, classification of a factor, probability) or a gbm model (gaussian,
//! bernoulli, poisson) has its trees extracted by the prelude's `.rfleet_native()` into a
//! [`NativeForest`](protocol::NativeForest) and written to the cache file named by the
//! digest of its `model.rds` (`Ready { extracted: true }`); a later load finds that file
//! and calls no extractor (`extracted: false`). Any other model is `Unsupported`, with the
//! class or option that makes it so (`gbm distribution multinomial`, `ranger survival
//! forests`, `a randomForest without its forest (keep.forest = FALSE)`, a model called
//! through score.R), and an extraction that fails is `Failed`: neither fails the model's
//! load, which R serves either way. Inputs are listed in the order the trees count them,
//! with each factor's levels in the order of the model's codes: the model's own where it
//! stores them (randomForest's `xlevels`, ranger's `covariate.levels`, gbm's
//! `var.levels`), else the schema's, since a frame conformed to the schema gives R those
//! codes.
//!
//! A model whose `ModelSpec.r_fallback` is `false` is checked at load, in the host: the
//! forest of its cache file compiled by the `native` crate, the worker's self-check rows
//! (`native::SELF_CHECK_ROWS`, `native::SELF_CHECK_SEED`) scored by the model's own scorer
//! and natively for every `type` the engine answers, compared by `native::compare`. If
//! they agree, the host drops every R object of the model (its scorer closures, its forest
//! and part scorers), runs `gc()` and hands freed heap back (`malloc_trim`), keeps only its
//! `ModelInfo` (without `forest`: nothing to split), and says so in `Ready { check,
//! released: true }`; a `Score` or `ScoreTrees` for it is then `invalid_input` naming
//! `r_fallback = false`. If they disagree, R keeps the model, and `check` says why.
//!
//! # Schemas
//! A schema declared in `model.toml` is used as is. Otherwise `.rfleet_schema()` infers
//! one, first match wins: caret `train` (its `terms` when trained with a formula, else
//! `trainingData` without `.outcome`); objects with `terms` (right-hand-side variables
//! typed by `dataClasses`, levels from `xlevels`, rpart's `attr(, "xlevels")` or
//! randomForest's `forest$xlevels`; a variable used only inside a call such as `log(x)` is
//! taken as numeric); randomForest x/y (`forest$ncat`: 1 is numeric, else a factor with
//! `forest$xlevels`); ranger (`independent.variable.names`, factor levels from
//! `covariate.levels`, else numeric); gbm (`var.names`, `var.type`, `var.levels`). When
//! none applies the schema is `None` and columns reach R as they come. The response is
//! never part of a schema; Azure ML scripts have none unless declared.
//!
//! # Results
//! A double, integer, logical or character vector becomes one `.pred` column of that type
//! (names dropped); a factor a factor column (all levels kept, codes 0-based); a matrix one
//! column per matrix column, named by `colnames` (`V1..Vn` without, `.pred` for a single
//! unnamed one), integer matrices as doubles; a data.frame one column per column by the
//! vector rules (dates as ISO strings). `NA` and `NaN` both become missing. Anything else,
//! or a length that is not the number of input rows, is an `r_error` saying what came
//! back and what is accepted. R errors are `r_error` too, with R's message after
//! `model '<name>': predict failed: ` (or `predict_fn failed`, ...; `model '<name>'
//! version '<version>': ...` for a versioned model).
//!
//! **Invariant:** this is a plain synchronous program with one thread. R is not
//! thread-safe and cannot be restarted in a process; a host that crashes or hangs is
//! killed and replaced by the supervisor, never repaired in place.

mod convert;
mod models;
mod native;

use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use protocol::host::{read_message, write_message, FromHost, ToHost, HOST_FD};
#[cfg(doc)]
use protocol::ModelKind;

use crate::models::{Models, Scoring};

const PRELUDE: &str = include_str!("prelude.R");

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rfleet-rhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let channel = open_channel()?;
    let mut reader = BufReader::new(channel.try_clone().context("cannot clone the host channel")?);
    // One write(2) per message: write_message writes the length and the body separately.
    let mut writer = BufWriter::new(channel);

    let specs = match read_message::<ToHost>(&mut reader).context("cannot read the load message")? {
        Some(ToHost::Load { models }) => models,
        Some(ToHost::Score { .. } | ToHost::ScoreTrees { .. }) => bail!("the first message must be load, got score"),
        None => return Ok(()),
    };

    // Only a host that cannot load anything answers load_failed; a package that fails
    // is one of `Ready.failed`, and the rest serve.
    let (models, failed) = match start_r().and_then(|()| Models::load(&specs).map_err(anyhow::Error::msg)) {
        Ok(loaded) => loaded,
        Err(e) => {
            let message = format!("{e:#}");
            write_message(&mut writer, &FromHost::LoadFailed { message: message.clone() })
                .context("cannot send load_failed")?;
            bail!("{message}");
        }
    };
    let ready = FromHost::Ready {
        pid: std::process::id(),
        r_version: r_version(),
        models: models.infos(),
        failed,
        load_us: models.load_us(),
        native: models.native(),
    };
    write_message(&mut writer, &ready).context("cannot send ready")?;
    serve(models, &mut reader, &mut writer)
}

/// Answers score requests until the supervisor closes the channel.
fn serve(mut models: Models, reader: &mut impl std::io::Read, writer: &mut impl std::io::Write) -> anyhow::Result<()> {
    while let Some(message) = read_message::<ToHost>(reader).context("cannot read from the host channel")? {
        let received = Instant::now();
        let (id, scoring) = match message {
            ToHost::Score { id, model, input, predict_type } => (
                id,
                match convert::refuse_nul(&input, predict_type.as_deref()) {
                    Ok(()) => models.score(&model, &input, predict_type.as_deref()),
                    Err(refused) => Err(refused).into(),
                },
            ),
            ToHost::ScoreTrees { id, model, input, trees } => (
                id,
                match convert::refuse_nul(&input, None) {
                    Ok(()) => models.score_trees(&model, &input, trees),
                    Err(refused) => Err(refused).into(),
                },
            ),
            ToHost::Load { .. } => bail!("a second load message arrived; a host loads its models once"),
        };
        let r_us = received.elapsed().as_micros() as u64;
        let Scoring { result, phases, condition_class } = scoring;
        write_message(writer, &FromHost::Scored { id, result, r_us, phases, condition_class })
            .context("cannot send a result")?;
    }
    Ok(())
}

/// The supervisor's end of the channel, inherited as fd 3.
fn open_channel() -> anyhow::Result<UnixStream> {
    // SAFETY: fcntl on a plain integer fd has no memory effects; it only reports whether
    // the fd is open and sets its close-on-exec flag.
    unsafe {
        let flags = libc::fcntl(HOST_FD, libc::F_GETFD);
        if flags < 0 {
            bail!("file descriptor {HOST_FD} is not open: rfleet-rhost is started by a worker, with its channel there");
        }
        // R's system() and friends must not hand the channel to their children: one
        // that outlived the host would keep the supervisor from seeing the host's end.
        libc::fcntl(HOST_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    // SAFETY: the fd is open (checked above) and nothing else in this process owns it.
    Ok(unsafe { UnixStream::from_raw_fd(HOST_FD) })
}

extern "C" {
    /// libR's C stack limit in bytes; `usize::MAX` disables R's stack checking.
    static mut R_CStackLimit: usize;
}

/// Starts the embedded R and sources the prelude.
fn start_r() -> anyhow::Result<()> {
    extendr_engine::start_r();
    // SAFETY: both calls happen on the only thread, before any R code runs.
    unsafe {
        // R answers SIGPIPE by signalling an R error, which would unwind through Rust
        // frames if the supervisor went away mid-write; an ignored SIGPIPE makes that write
        // fail with EPIPE instead, and the host exits cleanly.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // extendr switches R's C stack check off because it cannot know which thread R
        // runs on. Here R runs on the main thread, whose stack R measured at start-up, so
        // the check is restored as R itself sets it (95% of the stack rlimit, leaving room
        // for the error handling): runaway recursion in a model then fails as an R error
        // for that request instead of a stack overflow of the host.
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_STACK, &mut limit) == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            R_CStackLimit = (limit.rlim_cur as f64 * 0.95) as usize;
        }
    }
    extendr_api::eval_string(PRELUDE).map_err(|e| anyhow::anyhow!("cannot source the R prelude: {e}"))?;
    Ok(())
}

fn r_version() -> String {
    extendr_api::eval_string(".rfleet_r_version()")
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
