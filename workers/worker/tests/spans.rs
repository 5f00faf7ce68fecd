//! The worker's spans as a `tracing` subscriber sees them, through a real worker (embedded
//! bus, real R hosts, the `faulty` fixture): a CONSUMER span `process <queue>` per request
//! continuing its trace, a `batch` span per job whose parent is its first request's
//! CONSUMER span, and a `predict` span per R call under it naming the host, the shard and
//! the rows, marked failed on an R error. Export itself (OTLP, links, exception events) is
//! the integration tests'.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod embedded;

use bus::{EmbeddedBus, Transport};
use parking_lot::Mutex;
use protocol::message::{Options, SplitPolicy};
use protocol::{Column, ColumnData, Frame, Input, Outcome, Reply, Request, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use worker::Worker;

const WITHIN: Duration = Duration::from_secs(60);

/// A span as it was made and later recorded: its name, its fields, and its parent's name
/// and fields at the time (span ids are reused once a span closes, names and fields not).
#[derive(Debug, Clone, Default)]
struct Seen {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<(&'static str, BTreeMap<String, String>)>,
}

/// Records every span of the `worker` crate.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

/// Where a live span's record is in the recorder.
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !attrs.metadata().target().starts_with("worker") {
            return;
        }
        let mut seen = Seen { name: attrs.metadata().name(), ..Seen::default() };
        attrs.record(&mut Fields(&mut seen.fields));
        let parent = match attrs.parent() {
            Some(parent) => ctx.span(parent),
            None if attrs.is_contextual() => ctx.lookup_current(),
            None => None,
        };
        let mut spans = self.0.lock();
        seen.parent = parent.and_then(|parent| {
            let index = parent.extensions().get::<Index>().map(|i| i.0)?;
            Some((spans[index].name, spans[index].fields.clone()))
        });
        spans.push(seen);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(spans.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(index) = ctx.span(id).and_then(|span| span.extensions().get::<Index>().map(|i| i.0)) else { return };
        values.record(&mut Fields(&mut self.0.lock()[index].fields));
    }
}

fn settings(models: &Path) -> settings::Settings {
    let mut settings = settings::Settings::default();
    settings.models.dir = models.to_path_buf();
    settings.workers.n_hosts = 2;
    settings.workers.split_min_rows = 2;
    settings.workers.rhost_path = Some(support::binary("rfleet-rhost"));
    settings.workers.id = Some("spans-test".into());
    // R's own predict: these tests count R calls and their spans (a self-check would add some).
    settings.workers.engine = protocol::Engine::R;
    settings
}

/// A traceparent of trace `n`.
fn traceparent(n: u8) -> String {
    format!("00-{:032x}-00f067aa0ba902b7-01", u128::from(n) + 0x4bf9_0000)
}

async fn score(bus: &EmbeddedBus, id: &str, x: &[f64], split: Option<SplitPolicy>, trace: u8) -> Reply {
    let frame =
        Frame::new(vec![Column::new("x", ColumnData::F64 { values: x.iter().map(|v| Some(*v)).collect() })]).unwrap();
    let request = Request {
        version: PROTOCOL_VERSION,
        id: id.into(),
        model: "faulty".into(),
        model_version: None,
        deadline_ms: None,
        options: Options { predict_type: None, split, engine: None },
        traceparent: None,
        request_id: None,
        input: Input::Frame(frame),
    };
    // In the message's headers, as the dispatcher publishes it.
    embedded::call(bus, &request, Some(traceparent(trace))).await
}

fn field<'a>(seen: &'a Seen, key: &str) -> &'a str {
    seen.fields.get(key).map(String::as_str).unwrap_or_else(|| panic!("{} has no {key}: {seen:?}", seen.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_batches_and_r_calls_have_their_spans() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone())).unwrap();
    let models = support::models_dir(&[&support::fixtures().join("models").join("faulty")]);
    let bus = EmbeddedBus::new(256, "requests");
    let transport: Arc<dyn Transport> = Arc::new(bus.clone());
    let worker = Worker::start(&settings(models.path()), transport).await.expect("the worker starts");
    let pool = worker.pool().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    embedded::subscribed(&bus).await;
    let deadline = Instant::now() + WITHIN;
    while pool.live_hosts() < 2 {
        assert!(Instant::now() < deadline, "the second host never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let split = score(&bus, "split", &[1.0, 2.0, 3.0, 4.0], Some(SplitPolicy::Always), 1).await;
    assert_eq!(split.timings.path.as_deref(), Some("rows:2"), "{:?}", split.outcome);
    let failed = score(&bus, "failed", &[-1.0], None, 2).await;
    assert!(matches!(failed.outcome, Outcome::Error(_)), "{:?}", failed.outcome);
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let spans = recorder.0.lock().clone();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>();
    let consumers = named("process");
    assert_eq!(consumers.len(), 2, "{consumers:?}");
    for (consumer, (id, trace)) in consumers.iter().zip([("split", 1), ("failed", 2)]) {
        assert_eq!(field(consumer, "messaging.message.id"), id);
        assert_eq!(field(consumer, "otel.name"), "process requests");
        assert_eq!(field(consumer, "otel.kind"), "consumer");
        assert_eq!(field(consumer, "messaging.system"), "rfleet_embedded");
        assert_eq!(field(consumer, "messaging.operation.type"), "process");
        assert_eq!(field(consumer, "rfleet.model"), "faulty");
        assert_eq!(field(consumer, "rfleet.model_version"), "");
        // The trace of the message's header runs on.
        assert_eq!(field(consumer, "trace_id"), &traceparent(trace)[3..35]);
    }
    let batches = named("batch");
    assert_eq!(batches.len(), 2, "{batches:?}");
    for (batch, (id, rows, path)) in batches.iter().zip([("split", "4", "rows:2"), ("failed", "1", "whole")]) {
        let (parent, parent_fields) = batch.parent.as_ref().expect("a batch has a parent");
        assert_eq!((*parent, parent_fields["messaging.message.id"].as_str()), ("process", id));
        assert_eq!(field(batch, "otel.name"), "batch faulty");
        assert_eq!(field(batch, "otel.kind"), "internal");
        assert_eq!(field(batch, "rfleet.batch.requests"), "1");
        assert_eq!(field(batch, "rfleet.batch.rows"), rows);
        assert_eq!(field(batch, "rfleet.path"), path);
    }
    let calls = named("predict");
    let shards: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|c| {
            assert_eq!(c.parent.as_ref().map(|p| p.0), Some("batch"), "{c:?}");
            assert_eq!(field(c, "otel.name"), "predict faulty");
            assert!(field(c, "rfleet.host_pid").parse::<u32>().is_ok(), "{c:?}");
            (
                field(c, "rfleet.shard"),
                field(c, "rfleet.rows"),
                c.fields.get("otel.status_code").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(shards, [("rows 0..2", "2", ""), ("rows 2..4", "2", ""), ("whole", "1", "error")]);
    // The two halves of the split ran on two hosts.
    assert_ne!(field(&calls[0], "rfleet.host_pid"), field(&calls[1], "rfleet.host_pid"));
    // And the split is counted as one job over two hosts, merged once.
    let scrape = telemetry::metrics::encode(telemetry::metrics::Format::Text);
    for (series, value) in [
        (r#"rfleet_split_shards_count{model="faulty",version="",split="rows"}"#, "1"),
        (r#"rfleet_split_shards_sum{model="faulty",version="",split="rows"}"#, "2.0"),
        (r#"rfleet_r_calls_total{model="faulty",version=""}"#, "3"),
        (r#"rfleet_phase_duration_seconds_count{model="faulty",version="",phase="merge"}"#, "1"),
    ] {
        assert!(scrape.lines().any(|line| line == format!("{series} {value}")), "{series} {value} in:\n{scrape}");
    }
}
