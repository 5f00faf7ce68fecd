//! Prometheus metrics: the process's one registry, what every crate registers its metrics
//! in, and the `/metrics` answer in the format the scraper asked for.
//!
//! Each crate keeps its metrics in a `LazyLock` of its own that registers them here when
//! first touched; the binaries touch them at start-up (`init` functions), so a scrape shows
//! every family, at zero, before the first request. Labels are bounded by construction:
//! model names and versions come from packages a worker loaded, never from a request.

use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use protocol::ErrorCode;

use crate::process::ProcessCollector;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    Mutex::new(registry)
});

/// Registers `metric` as `name` (counters without `_total`: the encoders add it).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY.lock().register(name, help, metric);
}

/// Registers `metric` as `name` followed by its unit (`_seconds`, `_bytes`).
pub fn register_with_unit(name: &str, help: &str, unit: Unit, metric: impl Metric) {
    REGISTRY.lock().register_with_unit(name, help, unit, metric);
}

/// Registers a collector, asked for its metrics at every scrape (R hosts' memory, ...).
pub fn register_collector(collector: Box<dyn Collector>) {
    REGISTRY.lock().register_collector(collector);
}

/// The exposition formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, with exemplars: what Prometheus asks for.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: for everything else (curl, `promtool check metrics`).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it is accepted at least as
    /// much as plain text, else the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts.filter_map(|p| p.strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Every registered metric, encoded as `format`.
pub fn encode(format: Format) -> String {
    let registry = REGISTRY.lock();
    let mut out = String::with_capacity(16 * 1024);
    let encoded = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
    };
    // Writing to a String fails only when a metric's own encoding does, which is a bug.
    encoded.expect("metrics encode into a string");
    out
}

/// How a scoring request ended, as the `outcome` label says (docs/observability.md): one
/// set and one mapping, for the dispatcher's and the worker's counts alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    /// The caller's fault: bad input, unknown model or version, a body too large.
    ClientError,
    /// R raised an error.
    RError,
    /// The deadline passed.
    Timeout,
    /// Not taken: queue full, in-flight limit, no worker, shutting down.
    Rejected,
    /// A bug, a request that crashed its hosts, or the fleet's protocol version skew.
    Internal,
}

impl Outcome {
    /// Every outcome, in discriminant order (arrays of series are indexed by it).
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::RError,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::RError => "r_error",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::Internal => "internal",
        }
    }

    /// The outcome of an error reply (bus errors arrive as codes too: a full queue is
    /// `Overloaded`, no connection `Unavailable`, no reply `DeadlineExceeded`). Exhaustive
    /// on purpose, like the dispatcher's `status_for_code`: a new code does not compile
    /// until someone decides how it counts.
    pub fn of(code: ErrorCode) -> Outcome {
        match code {
            ErrorCode::BadRequest | ErrorCode::InvalidInput | ErrorCode::ModelNotFound => Outcome::ClientError,
            ErrorCode::RError => Outcome::RError,
            ErrorCode::DeadlineExceeded => Outcome::Timeout,
            ErrorCode::Overloaded | ErrorCode::Unavailable => Outcome::Rejected,
            // Another protocol version is the fleet's version skew (a 502 over HTTP), not the
            // caller's fault.
            ErrorCode::UnsupportedVersion | ErrorCode::HostCrashed | ErrorCode::Internal => Outcome::Internal,
        }
    }
}

/// An exemplar's labels: the trace that an observation belongs to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// Histogram bucket bounds; builds the histograms of a [`Family`].
#[derive(Debug, Clone, Copy)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl MetricConstructor<HistogramWithExemplars<TraceExemplar>> for Buckets {
    fn new_metric(&self) -> HistogramWithExemplars<TraceExemplar> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Histograms by label set.
pub type Histograms<L> = Family<L, Histogram, Buckets>;
/// Histograms by label set whose buckets remember the trace of their latest observation.
pub type TracedHistograms<L> = Family<L, HistogramWithExemplars<TraceExemplar>, Buckets>;

pub fn histograms<L: EncodeLabelSet + Clone + std::hash::Hash + Eq>(buckets: &'static [f64]) -> Histograms<L> {
    Family::new_with_constructor(Buckets(buckets))
}

pub fn traced_histograms<L: EncodeLabelSet + Clone + std::hash::Hash + Eq>(
    buckets: &'static [f64],
) -> TracedHistograms<L> {
    Family::new_with_constructor(Buckets(buckets))
}

/// OpenTelemetry's buckets for `http.server.request.duration` (seconds).
pub const HTTP_DURATION_SECONDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Scoring phases and scoring as a whole: from 50 µs (a batch's wait, a small R call) to 30 s.
pub const PHASE_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];
/// Loading a model package into R: 10 ms to 5 minutes.
pub const LOAD_SECONDS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Body sizes: 64 B to 64 MiB, ×4.
pub const BODY_BYTES: &[f64] =
    &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];
/// Rows in one job: 1 to 65536, ×2.
pub const ROWS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    65536.0,
];
/// Requests in one job: 1 to 256, ×2.
pub const REQUESTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Hosts one job was split over: 1 to 64, ×2.
pub const SHARDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// `rfleet_phase_duration_seconds`'s labels: the model version and the phase
/// (docs/observability.md: `queue_wait`, `batch_wait`, `input`, `compute`, `output`,
/// `merge`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub phase: &'static str,
}

static PHASES: LazyLock<TracedHistograms<PhaseLabels>> = LazyLock::new(|| {
    let family = traced_histograms(PHASE_SECONDS);
    register_with_unit(
        "rfleet_phase_duration",
        "Time of one scoring phase: queue_wait (on the bus), batch_wait (in the worker until an R host took it), input, compute and output (of an R call), merge (split parts or batch slices combined)",
        Unit::Seconds,
        family.clone(),
    );
    family
});

/// `rfleet_phase_duration_seconds`, one family for the dispatcher's phase and the
/// worker's: `rfleet serve` holds both sides in one registry, where a name is registered
/// once. Registered when first used.
pub fn phase_durations() -> &'static TracedHistograms<PhaseLabels> {
    &PHASES
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    role: &'static str,
}

/// Registers `rfleet_build_info{version, role}` = 1; once per process, by its binary.
pub fn init_build_info(role: &'static str) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION"), role }).set(1);
    register("rfleet_build_info", "What is running: rfleet's version and this process's role (always 1)", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_negotiated() {
        let check =
            |accept: Option<&str>, expected: Format| assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        // What Prometheus 2.42 sends.
        check(
            Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics,
        );
        // Prometheus 3 with its default scrape protocols, text preferred.
        check(Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"), Format::Text);
        check(Some("*/*"), Format::Text);
        check(Some("application/openmetrics-text; q=0"), Format::Text);
        check(None, Format::Text);
    }

    #[test]
    fn both_formats_carry_what_was_registered() {
        let family = traced_histograms::<BuildLabels>(PHASE_SECONDS);
        family.get_or_create(&BuildLabels { version: "t", role: "test" }).observe(
            0.002,
            Some(TraceExemplar { trace_id: "0af7651916cd43dd8448eb211c80319c".into() }),
            None,
        );
        register_with_unit("telemetry_test_duration", "A test histogram", Unit::Seconds, family);
        let text = encode(Format::Text);
        assert!(text.contains("# TYPE telemetry_test_duration_seconds histogram"), "{text}");
        assert!(
            text.contains("telemetry_test_duration_seconds_bucket{version=\"t\",role=\"test\",le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(!text.contains("trace_id"), "the text format has no exemplars: {text}");
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        let openmetrics = encode(Format::OpenMetrics);
        assert!(openmetrics.contains("# {trace_id=\"0af7651916cd43dd8448eb211c80319c\"} 0.002"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    }
}
