//! The worker's Prometheus metrics (docs/observability.md: "Scoring, seen by the worker"
//! and "R hosts and models"), registered in the process's one registry
//! (`telemetry::metrics`) when first touched; [`init`] touches them at start-up so that a
//! scrape shows every family before the first request.
//!
//! Labels are bounded by construction: `model` and `version` come from packages an R host
//! loaded (a [`ModelMetrics`] is made per served package and caches its series, so a
//! request allocates no label), `output` from at most [`MAX_OUTPUTS`] numeric columns per
//! model, `class` from at most [`MAX_CLASSES`] levels per model, and `outcome`, `reason`,
//! `state` and `split` are the fixed sets of the enums here. Requests the worker cannot
//! attribute to a served model (undecodable, unknown model) count under `model=""`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Unit;
use protocol::{ColumnData, ErrorCode, Frame, ModelInfo};
use telemetry::metrics::{
    histograms, phase_durations, register, register_with_unit, Histograms, PhaseLabels, TraceExemplar, LOAD_SECONDS,
    REQUESTS, ROWS, SHARDS,
};
use telemetry::trace::TraceParent;

use crate::host::HostError;

/// Numeric output columns per model that get a prediction histogram.
pub const MAX_OUTPUTS: usize = 16;
/// Factor levels per model counted by `rfleet_predicted_class_total`; further levels are
/// not counted.
pub const MAX_CLASSES: usize = 100;

/// `rfleet_prediction_value`'s buckets when `model.toml` names none: a symmetric log scale,
/// ±0.001 … ±1e6 by decades, with 0 between.
pub const PREDICTION_BUCKETS: &[f64] = &[
    -1e6, -1e5, -1e4, -1e3, -100.0, -10.0, -1.0, -0.1, -0.01, -0.001, 0.0, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3,
    1e4, 1e5, 1e6,
];

pub use telemetry::metrics::Outcome;

/// Why a request was dead-lettered, as `reason` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetter {
    /// Not a request the worker can read (or not a valid one): `bad_request`.
    Undecodable,
    ProtocolVersion,
    /// It lost its R host on every try.
    HostCrashes,
    /// The worker's handler panicked on it at every try.
    HandlerPanics,
}

impl DeadLetter {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetter::Undecodable => "undecodable",
            DeadLetter::ProtocolVersion => "protocol_version",
            DeadLetter::HostCrashes => "host_crashes",
            DeadLetter::HandlerPanics => "handler_panics",
        }
    }

    /// Whether an error reply with `code` means the request can never succeed, and why:
    /// such requests are dead-lettered after their reply, never retried.
    pub fn of(code: ErrorCode) -> Option<DeadLetter> {
        match code {
            ErrorCode::BadRequest => Some(DeadLetter::Undecodable),
            ErrorCode::UnsupportedVersion => Some(DeadLetter::ProtocolVersion),
            ErrorCode::HostCrashed => Some(DeadLetter::HostCrashes),
            ErrorCode::ModelNotFound
            | ErrorCode::InvalidInput
            | ErrorCode::RError
            | ErrorCode::DeadlineExceeded
            | ErrorCode::Overloaded
            | ErrorCode::Unavailable
            | ErrorCode::Internal => None,
        }
    }
}

/// Why an R host was replaced, as `reason` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// It died, or broke the channel protocol.
    Crashed,
    /// One R call took longer than `host_timeout`: killed.
    Timeout,
    /// Recycled after `max_requests_per_host` R calls.
    MaxRequests,
    /// Recycled above `max_host_rss_mib`.
    MaxRss,
    /// A reload replaced it.
    Reload,
    /// A replacement did not start (counted per failed try).
    StartFailed,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Crashed => "crashed",
            Restart::Timeout => "timeout",
            Restart::MaxRequests => "max_requests",
            Restart::MaxRss => "max_rss",
            Restart::Reload => "reload",
            Restart::StartFailed => "start_failed",
        }
    }

    /// Why a host that failed with `error` is replaced. Exhaustive on purpose.
    pub fn of(error: &HostError) -> Restart {
        match error {
            HostError::Died { .. } | HostError::Protocol { .. } => Restart::Crashed,
            HostError::Timeout { .. } => Restart::Timeout,
            HostError::Spawn { .. } | HostError::LoadFailed(_) | HostError::StartTimeout(_) => Restart::StartFailed,
        }
    }
}

/// What an R host is doing, as `rfleet_hosts{state}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostState {
    Starting,
    Idle,
    Busy,
    Retiring,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Starting => "starting",
            HostState::Idle => "idle",
            HostState::Busy => "busy",
            HostState::Retiring => "retiring",
        }
    }
}

/// The phases the worker measures (`queue_wait` is the dispatcher's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    BatchWait,
    Input,
    Compute,
    Output,
    Merge,
}

const PHASES: [Phase; 5] = [Phase::BatchWait, Phase::Input, Phase::Compute, Phase::Output, Phase::Merge];

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::BatchWait => "batch_wait",
            Phase::Input => "input",
            Phase::Compute => "compute",
            Phase::Output => "output",
            Phase::Merge => "merge",
        }
    }
}

/// How a job was split over hosts, as `rfleet_split_shards{split}` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Rows,
    Trees,
}

/// A label value that is one of a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fixed(&'static str);

impl EncodeLabelValue for Fixed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: Arc<str>,
    version: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: Arc<str>,
    version: Arc<str>,
    outcome: Fixed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SplitLabels {
    model: Arc<str>,
    version: Arc<str>,
    split: Fixed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    model: Arc<str>,
    version: Arc<str>,
    output: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    model: Arc<str>,
    version: Arc<str>,
    class: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Fixed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: Fixed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    model: Arc<str>,
    version: Arc<str>,
    r_class: String,
    r_version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PidLabels {
    host_pid: u32,
}

/// Every family of the worker's.
struct Families {
    requests: Family<OutcomeLabels, Counter>,
    rows: Family<ModelLabels, Counter>,
    r_calls: Family<ModelLabels, Counter>,
    native_requests: Family<ModelLabels, Counter>,
    native_rows: Family<ModelLabels, Counter>,
    batch_rows: Histograms<ModelLabels>,
    batch_requests: Histograms<ModelLabels>,
    split_shards: Histograms<SplitLabels>,
    queue_depth: Family<ModelLabels, Gauge>,
    bus_queue: Family<ModelLabels, Gauge>,
    classes: Family<ClassLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    hosts: Family<StateLabels, Gauge>,
    hosts_configured: Gauge,
    restarts: Family<ReasonLabels, Counter>,
    busy_seconds: Counter<f64, AtomicU64>,
    load: Histograms<ModelLabels>,
    info: Family<InfoLabels, Gauge>,
    /// `rfleet_prediction_value`, a collector of its own: each model's buckets may differ.
    predictions: Arc<Predictions>,
    /// The pids of live R hosts, for `rfleet_host_resident_memory_bytes`.
    host_pids: Arc<Mutex<BTreeSet<u32>>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let families = Families {
        requests: Family::default(),
        rows: Family::default(),
        r_calls: Family::default(),
        native_requests: Family::default(),
        native_rows: Family::default(),
        batch_rows: histograms(ROWS),
        batch_requests: histograms(REQUESTS),
        split_shards: histograms(SHARDS),
        queue_depth: Family::default(),
        bus_queue: Family::default(),
        classes: Family::default(),
        dead_letters: Family::default(),
        hosts: Family::default(),
        hosts_configured: Gauge::default(),
        restarts: Family::default(),
        busy_seconds: Counter::default(),
        load: histograms(LOAD_SECONDS),
        info: Family::default(),
        predictions: Arc::default(),
        host_pids: Arc::default(),
    };
    let f = &families;
    register(
        "rfleet_worker_requests",
        "Requests the worker answered, by outcome (success, client_error, r_error, timeout, rejected, internal)",
        f.requests.clone(),
    );
    register("rfleet_rows_scored", "Rows scored by R", f.rows.clone());
    register("rfleet_r_calls", "Calls into R (rows / calls is the batching at work)", f.r_calls.clone());
    register("rfleet_native_requests", "Requests the native engine answered (no R call)", f.native_requests.clone());
    register("rfleet_native_rows", "Rows the native engine scored", f.native_rows.clone());
    register("rfleet_batch_rows", "Rows per job given to R hosts", f.batch_rows.clone());
    register("rfleet_batch_requests", "Requests per job given to R hosts", f.batch_requests.clone());
    register(
        "rfleet_split_shards",
        "Hosts one split job was spread over, by split (rows, trees)",
        f.split_shards.clone(),
    );
    register("rfleet_queue_depth", "Requests waiting in the worker for an R host", f.queue_depth.clone());
    register(
        "rfleet_bus_queue_messages",
        "Messages ready in the version's request queue on the bus, as the worker last read it",
        f.bus_queue.clone(),
    );
    register(
        "rfleet_predicted_class",
        "Predicted labels of classifiers, by factor level (at most 100 per model)",
        f.classes.clone(),
    );
    register(
        "rfleet_dead_letters",
        "Requests the worker dead-lettered, by reason (undecodable, protocol_version, host_crashes, handler_panics)",
        f.dead_letters.clone(),
    );
    register("rfleet_hosts", "R host processes by state (starting, idle, busy, retiring)", f.hosts.clone());
    register("rfleet_hosts_configured", "R hosts configured (workers.n_hosts)", f.hosts_configured.clone());
    register(
        "rfleet_host_restarts",
        "R hosts replaced, by reason (crashed, timeout, max_requests, max_rss, reload, start_failed)",
        f.restarts.clone(),
    );
    register_with_unit(
        "rfleet_host_busy",
        "Time R hosts spent in R calls, summed over hosts",
        Unit::Seconds,
        f.busy_seconds.clone(),
    );
    register_with_unit(
        "rfleet_model_load_duration",
        "Loading one model package into one R host",
        Unit::Seconds,
        f.load.clone(),
    );
    register("rfleet_model_info", "What each served model version is: its R class and R's version (1)", f.info.clone());
    telemetry::metrics::register_collector(Box::new(PredictionCollector(f.predictions.clone())));
    telemetry::metrics::register_collector(Box::new(HostMemory(f.host_pids.clone())));
    for state in [HostState::Starting, HostState::Idle, HostState::Busy, HostState::Retiring] {
        let _ = f.hosts.get_or_create(&StateLabels { state: Fixed(state.as_str()) });
    }
    families
});

/// Registers the worker's metrics (once; later calls do nothing), so that a scrape shows
/// them before the first request.
pub fn init() {
    LazyLock::force(&FAMILIES);
    LazyLock::force(&UNSERVED);
    phase_durations();
}

fn families() -> &'static Families {
    &FAMILIES
}

/// The model labels of requests no served model answers (undecodable, unknown model).
static UNSERVED: LazyLock<[Counter; 6]> = LazyLock::new(|| {
    let (model, version): (Arc<str>, Arc<str>) = (Arc::from(""), Arc::from(""));
    Outcome::ALL.map(|outcome| {
        families().requests.get_or_create_owned(&OutcomeLabels {
            model: model.clone(),
            version: version.clone(),
            outcome: Fixed(outcome.as_str()),
        })
    })
});

/// Counts a request the worker answered without a served model to name (undecodable,
/// another protocol version, a model it does not serve).
pub fn unserved_request(outcome: Outcome) {
    UNSERVED[outcome as usize].inc();
}

pub fn dead_lettered(reason: DeadLetter) {
    families().dead_letters.get_or_create(&ReasonLabels { reason: Fixed(reason.as_str()) }).inc();
}

pub fn host_restarted(reason: Restart) {
    families().restarts.get_or_create(&ReasonLabels { reason: Fixed(reason.as_str()) }).inc();
}

pub fn hosts_configured(n_hosts: usize) {
    families().hosts_configured.set(i64::try_from(n_hosts).unwrap_or(i64::MAX));
}

/// Time an R host spent in one R call.
pub fn host_busy(time: Duration) {
    families().busy_seconds.inc_by(time.as_secs_f64());
}

/// Counts a host in `state` until dropped.
pub struct InState(Gauge);

pub fn host_in(state: HostState) -> InState {
    let gauge = families().hosts.get_or_create_owned(&StateLabels { state: Fixed(state.as_str()) });
    gauge.inc();
    InState(gauge)
}

impl Drop for InState {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps a host's pid among those whose memory a scrape reads, until dropped.
pub struct LiveHost(u32);

pub fn live_host(pid: u32) -> LiveHost {
    families().host_pids.lock().insert(pid);
    LiveHost(pid)
}

impl Drop for LiveHost {
    fn drop(&mut self) {
        families().host_pids.lock().remove(&self.0);
    }
}

/// The trace an observation belongs to, as its exemplar.
fn exemplar(trace: Option<&TraceParent>) -> Option<TraceExemplar> {
    trace.map(TraceParent::exemplar)
}

/// One served model's series, made once per package as loaded: recording a request
/// allocates nothing but what is new (a first output column, a first class).
pub struct ModelMetrics {
    labels: ModelLabels,
    requests: [Counter; 6],
    rows: Counter,
    r_calls: Counter,
    native_requests: Counter,
    native_rows: Counter,
    phases: [HistogramWithExemplars<TraceExemplar>; 5],
    batch_rows: Histogram,
    batch_requests: Histogram,
    shards_rows: Histogram,
    shards_trees: Histogram,
    queue_depth: Gauge,
    bus_queue: Gauge,
    load: Histogram,
    buckets: Arc<[f64]>,
    /// Numeric output columns by name, at most [`MAX_OUTPUTS`].
    outputs: Mutex<Vec<(Arc<str>, Histogram)>>,
    /// Counters by class, at most [`MAX_CLASSES`].
    classes: Mutex<HashMap<Arc<str>, Counter>>,
}

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelMetrics({} {})", self.labels.model, self.labels.version)
    }
}

impl ModelMetrics {
    /// The series of `info`'s model; `buckets` are its `model.toml`
    /// `[metrics] prediction_buckets`, else [`PREDICTION_BUCKETS`].
    pub fn new(info: &ModelInfo, buckets: Option<&[f64]>) -> ModelMetrics {
        let f = families();
        let labels = ModelLabels {
            model: Arc::from(info.name.as_str()),
            version: Arc::from(info.version.as_deref().unwrap_or("")),
        };
        let (model, version) = (labels.model.clone(), labels.version.clone());
        let split = |split: &'static str| {
            f.split_shards.get_or_create_owned(&SplitLabels {
                model: model.clone(),
                version: version.clone(),
                split: Fixed(split),
            })
        };
        ModelMetrics {
            requests: Outcome::ALL.map(|outcome| {
                f.requests.get_or_create_owned(&OutcomeLabels {
                    model: model.clone(),
                    version: version.clone(),
                    outcome: Fixed(outcome.as_str()),
                })
            }),
            rows: f.rows.get_or_create_owned(&labels),
            r_calls: f.r_calls.get_or_create_owned(&labels),
            native_requests: f.native_requests.get_or_create_owned(&labels),
            native_rows: f.native_rows.get_or_create_owned(&labels),
            phases: PHASES.map(|phase| {
                phase_durations().get_or_create_owned(&PhaseLabels {
                    model: model.clone(),
                    version: version.clone(),
                    phase: phase.as_str(),
                })
            }),
            batch_rows: f.batch_rows.get_or_create_owned(&labels),
            batch_requests: f.batch_requests.get_or_create_owned(&labels),
            shards_rows: split("rows"),
            shards_trees: split("trees"),
            queue_depth: f.queue_depth.get_or_create_owned(&labels),
            bus_queue: f.bus_queue.get_or_create_owned(&labels),
            load: f.load.get_or_create_owned(&labels),
            buckets: Arc::from(buckets.unwrap_or(PREDICTION_BUCKETS)),
            outputs: Mutex::new(Vec::new()),
            classes: Mutex::new(HashMap::new()),
            labels,
        }
    }

    /// A request answered, by its outcome.
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    pub fn phase(&self, phase: Phase, time: Duration, trace: Option<&TraceParent>) {
        self.phases[phase as usize].observe(time.as_secs_f64(), exemplar(trace), None);
    }

    /// A request the native engine answered, of `rows` rows.
    pub fn native(&self, rows: usize) {
        self.native_requests.inc();
        self.native_rows.inc_by(rows as u64);
    }

    /// One R call, with where its time went.
    pub fn r_call(&self, phases: protocol::host::Phases, trace: Option<&TraceParent>) {
        self.r_calls.inc();
        self.phase(Phase::Input, Duration::from_micros(phases.input_us), trace);
        self.phase(Phase::Compute, Duration::from_micros(phases.compute_us), trace);
        self.phase(Phase::Output, Duration::from_micros(phases.output_us), trace);
    }

    /// A job given to R hosts: its rows and requests, and over how many hosts it was split.
    pub fn job(&self, n_rows: usize, n_requests: usize, split: Option<(Split, usize)>) {
        self.batch_rows.observe(n_rows as f64);
        self.batch_requests.observe(n_requests as f64);
        match split {
            Some((Split::Rows, k)) => self.shards_rows.observe(k as f64),
            Some((Split::Trees, k)) => self.shards_trees.observe(k as f64),
            None => {}
        }
    }

    /// Counts a request in the worker's queue until dropped.
    pub fn queued(&self) -> Queued {
        self.queue_depth.inc();
        Queued(self.queue_depth.clone())
    }

    /// The bus queue's depth as last read.
    pub fn bus_queue(&self, depth: u64) {
        self.bus_queue.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn loaded(&self, time: Duration) {
        self.load.observe(time.as_secs_f64());
    }

    /// `rfleet_model_info` = 1 for this model, its R class and R's version.
    pub fn info(&self, r_class: &[String], r_version: &str) {
        families().info.get_or_create(&self.info_labels(r_class, r_version)).set(1);
    }

    /// Removes `rfleet_model_info` of this model (no longer served).
    pub fn forget_info(&self, r_class: &[String], r_version: &str) {
        families().info.remove(&self.info_labels(r_class, r_version));
    }

    fn info_labels(&self, r_class: &[String], r_version: &str) -> InfoLabels {
        InfoLabels {
            model: self.labels.model.clone(),
            version: self.labels.version.clone(),
            r_class: r_class.join(","),
            r_version: r_version.to_string(),
        }
    }

    /// A successful answer: its rows scored, its numeric predictions and its classes.
    pub fn predictions(&self, frame: &Frame) {
        self.rows.inc_by(frame.n_rows as u64);
        for column in &frame.columns {
            match &column.data {
                ColumnData::F64 { values } => {
                    if let Some(histogram) = self.output(&column.name) {
                        values.iter().flatten().for_each(|v| histogram.observe(*v));
                    }
                }
                ColumnData::I32 { values } => {
                    if let Some(histogram) = self.output(&column.name) {
                        values.iter().flatten().for_each(|v| histogram.observe(f64::from(*v)));
                    }
                }
                ColumnData::Factor { levels, values, .. } => self.classes(levels, values),
                ColumnData::Bool { .. } | ColumnData::Str { .. } => {}
            }
        }
    }

    /// The histogram of output column `name`, made on first sight while fewer than
    /// [`MAX_OUTPUTS`] are.
    fn output(&self, name: &str) -> Option<Histogram> {
        let mut outputs = self.outputs.lock();
        if let Some((_, histogram)) = outputs.iter().find(|(output, _)| &**output == name) {
            return Some(histogram.clone());
        }
        if outputs.len() >= MAX_OUTPUTS {
            return None;
        }
        let labels = OutputLabels {
            model: self.labels.model.clone(),
            version: self.labels.version.clone(),
            output: Arc::from(name),
        };
        let histogram = families().predictions.series(labels.clone(), self.buckets.clone());
        outputs.push((labels.output, histogram.clone()));
        Some(histogram)
    }

    /// Counts each row's class (levels counted per code first, so a large answer takes
    /// one count per level, not per row).
    fn classes(&self, levels: &[String], values: &[Option<u32>]) {
        let mut per_level = vec![0u64; levels.len()];
        for code in values.iter().flatten() {
            if let Some(n) = per_level.get_mut(*code as usize) {
                *n += 1;
            }
        }
        let mut classes = self.classes.lock();
        for (level, n) in levels.iter().zip(per_level).filter(|(_, n)| *n > 0) {
            let counter = match classes.get(level.as_str()) {
                Some(counter) => counter,
                None if classes.len() >= MAX_CLASSES => continue,
                None => {
                    let class: Arc<str> = Arc::from(level.as_str());
                    let counter = families().classes.get_or_create_owned(&ClassLabels {
                        model: self.labels.model.clone(),
                        version: self.labels.version.clone(),
                        class: class.clone(),
                    });
                    classes.entry(class).or_insert(counter)
                }
            };
            counter.inc_by(n);
        }
    }
}

/// A request counted in `rfleet_queue_depth` while it waits; dropped when it leaves the
/// queue (started, expired, answered, or dropped at shutdown).
#[derive(Debug)]
pub struct Queued(Gauge);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `rfleet_prediction_value`: one histogram per model version and output column, each
/// with its model's buckets (which a `Family` cannot give: its histograms share one set).
#[derive(Debug, Default)]
struct Predictions {
    series: Mutex<Vec<PredictionSeries>>,
}

/// One model version's output column: its labels, its buckets and its histogram.
#[derive(Debug)]
struct PredictionSeries {
    labels: OutputLabels,
    buckets: Arc<[f64]>,
    histogram: Histogram,
}

impl Predictions {
    /// The histogram of `labels`: the one there is (a reload that kept the model's buckets
    /// keeps its counts), else a new one with `buckets`.
    fn series(&self, labels: OutputLabels, buckets: Arc<[f64]>) -> Histogram {
        let mut series = self.series.lock();
        if let Some(index) = series.iter().position(|s| s.labels == labels) {
            if series[index].buckets == buckets {
                return series[index].histogram.clone();
            }
            series.swap_remove(index);
        }
        let histogram = Histogram::new(buckets.iter().copied());
        series.push(PredictionSeries { labels, buckets, histogram: histogram.clone() });
        histogram
    }
}

#[derive(Debug)]
struct PredictionCollector(Arc<Predictions>);

impl Collector for PredictionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.0.series.lock();
        let mut metric = encoder.encode_descriptor(
            "rfleet_prediction_value",
            "Numeric predictions, per model version and output column (at most 16 per model); buckets from model.toml [metrics] prediction_buckets, else a symmetric log scale",
            None,
            MetricType::Histogram,
        )?;
        for series in series.iter() {
            series.histogram.encode(metric.encode_family(&series.labels)?)?;
        }
        Ok(())
    }
}

/// `rfleet_host_resident_memory_bytes{host_pid}`, read from /proc at each scrape.
#[derive(Debug)]
struct HostMemory(Arc<Mutex<BTreeSet<u32>>>);

impl Collector for HostMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pids: Vec<u32> = self.0.lock().iter().copied().collect();
        let mut metric = encoder.encode_descriptor(
            "rfleet_host_resident_memory",
            "Resident memory of each live R host process",
            Some(&Unit::Bytes),
            ConstGauge::<i64>::TYPE,
        )?;
        for pid in pids {
            if let Some(bytes) = telemetry::resident_memory_bytes(pid) {
                let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
                gauge.encode(metric.encode_family(&PidLabels { host_pid: pid })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error code counts as the outcome the contract gives it.
    #[test]
    fn error_codes_map_to_outcomes() {
        use ErrorCode::*;
        for (code, outcome, dead_letter) in [
            (BadRequest, Outcome::ClientError, Some(DeadLetter::Undecodable)),
            (UnsupportedVersion, Outcome::Internal, Some(DeadLetter::ProtocolVersion)),
            (ModelNotFound, Outcome::ClientError, None),
            (InvalidInput, Outcome::ClientError, None),
            (RError, Outcome::RError, None),
            (HostCrashed, Outcome::Internal, Some(DeadLetter::HostCrashes)),
            (DeadlineExceeded, Outcome::Timeout, None),
            (Overloaded, Outcome::Rejected, None),
            (Unavailable, Outcome::Rejected, None),
            (Internal, Outcome::Internal, None),
        ] {
            assert_eq!(Outcome::of(code), outcome, "{code:?}");
            assert_eq!(DeadLetter::of(code), dead_letter, "{code:?}");
        }
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names, ["success", "client_error", "r_error", "timeout", "rejected", "internal"]);
        // The array is indexed by the enum's discriminant.
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| *o as usize == i));
        assert!(PHASES.iter().enumerate().all(|(i, p)| *p as usize == i));
    }

    #[test]
    fn host_errors_map_to_restart_reasons() {
        let check = |error: HostError, expected: &str| assert_eq!(Restart::of(&error).as_str(), expected, "{error}");
        check(HostError::Died { pid: 1, status: "killed by signal 9".into() }, "crashed");
        check(HostError::Protocol { pid: 1, message: "garbage".into() }, "crashed");
        check(HostError::Timeout { pid: 1, timeout: Duration::from_secs(1) }, "timeout");
        check(HostError::StartTimeout(Duration::from_secs(1)), "start_failed");
        check(HostError::LoadFailed("no R".into()), "start_failed");
        check(
            HostError::Spawn { path: "rfleet-rhost".into(), source: std::io::ErrorKind::NotFound.into() },
            "start_failed",
        );
        for (reason, name) in
            [(Restart::MaxRequests, "max_requests"), (Restart::MaxRss, "max_rss"), (Restart::Reload, "reload")]
        {
            assert_eq!(reason.as_str(), name);
        }
    }

    /// The default prediction buckets: symmetric about 0, increasing, ±0.001 … ±1e6.
    #[test]
    fn prediction_buckets_are_a_symmetric_log_scale() {
        let b = PREDICTION_BUCKETS;
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        assert_eq!((b[0], b[b.len() - 1]), (-1e6, 1e6));
        assert!(b.iter().zip(b.iter().rev()).all(|(x, y)| *x == -*y), "{b:?}");
        assert_eq!(b[b.len() / 2], 0.0);
        let positive: Vec<f64> = b.iter().copied().filter(|x| *x > 0.0).collect();
        assert!(positive.windows(2).all(|w| (w[1] / w[0] - 10.0).abs() < 1e-9), "{positive:?}");
        assert_eq!(positive[0], 0.001);
    }
}
