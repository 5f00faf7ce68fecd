//! The worker's metrics, read off the encoded registry after scoring known requests
//! through a real worker (embedded bus, real R hosts, the fixture models): exactly those
//! requests by outcome, rows, R calls, and a batch of queued requests counted as one R
//! call; and the worker's own listener answering `/metrics`, `/live` and `/ready` over a
//! real socket.
//!
//! Each test runs in a process of its own (nextest), so the process-wide registry holds
//! only what the test did.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod embedded;

use bus::{EmbeddedBus, Transport};
use protocol::{Column, ColumnData, ErrorCode, Frame, Input, Outcome, Reply, Request, PROTOCOL_VERSION};
use telemetry::metrics::Format;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use worker::Worker;

/// How long a condition in these tests may take to hold.
const WITHIN: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    support::fixtures().join("models").join(name)
}

fn settings(models: &Path, n_hosts: usize) -> settings::Settings {
    let mut settings = settings::Settings::default();
    settings.models.dir = models.to_path_buf();
    settings.workers.n_hosts = n_hosts;
    settings.workers.rhost_path = Some(support::binary("rfleet-rhost"));
    settings.workers.id = Some("metrics-test".into());
    // R's own predict: these tests count R calls and their spans (a self-check would add some).
    settings.workers.engine = protocol::Engine::R;
    settings.bus.announce_interval_ms = 200;
    settings
}

/// A worker serving on its own embedded bus.
struct Running {
    bus: EmbeddedBus,
    shutdown: CancellationToken,
    pool: worker::Pool,
    worker: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

impl Running {
    async fn start(models: &Path, n_hosts: usize) -> Running {
        worker::metrics::init();
        let bus = EmbeddedBus::new(256, "requests");
        let transport: Arc<dyn Transport> = Arc::new(bus.clone());
        let worker = Worker::start(&settings(models, n_hosts), transport).await.expect("the worker starts");
        let pool = worker.pool().clone();
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        embedded::subscribed(&bus).await;
        Running { bus, shutdown, pool, worker }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.worker).await;
        stopped.expect("the worker stops").unwrap().expect("the worker ran");
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Scores `frame` with `model`; the reply.
async fn score(bus: &EmbeddedBus, model: &str, frame: Frame) -> Reply {
    let id = format!("m{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let request = Request {
        version: PROTOCOL_VERSION,
        id: id.clone(),
        model: model.into(),
        model_version: None,
        deadline_ms: None,
        options: Default::default(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        request_id: None,
        input: Input::Frame(frame),
    };
    embedded::call(bus, &request, None).await
}

fn numbers(name: &str, values: &[f64]) -> Column {
    Column::new(name, ColumnData::F64 { values: values.iter().map(|v| Some(*v)).collect() })
}

/// `faulty`'s input: column `x`.
fn x(values: &[f64]) -> Frame {
    Frame::new(vec![numbers("x", values)]).unwrap()
}

fn expect_scored(reply: &Reply) {
    assert!(matches!(reply.outcome, Outcome::Predictions(_)), "{:?}", reply.outcome);
}

fn expect_error(reply: &Reply, code: ErrorCode) {
    match &reply.outcome {
        Outcome::Error(error) => assert_eq!(error.code, code, "{}", error.message),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// The value of the series `series` (name and labels as the text format writes them) in
/// `scrape`, if it is there.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts each series of `expected` has exactly its value.
fn check(scrape: &str, expected: &[(&str, f64)]) {
    for (series, want) in expected {
        assert_eq!(value(scrape, series), Some(*want), "{series} in:\n{scrape}");
    }
}

/// Waits until `series` reads `want` in a fresh scrape.
async fn wait_for(series: &str, want: f64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let scrape = telemetry::metrics::encode(Format::Text);
        if value(&scrape, series) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never read {want}:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Known requests, and exactly them in the metrics: one host held in R by a request while
/// four more queue behind it (the queue depth says 4), then released: the four are one
/// batch, one R call. An R error, a request that does not fit the schema and one for a
/// model not served are each counted by their outcome; numeric predictions and classes
/// land in their histograms and counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_is_counted_exactly() {
    let hold = support::Hold::new();
    // Set before the R hosts start: they inherit it.
    std::env::set_var("SCORE_HOLD_FILE", hold.path());
    let models = support::models_dir(&[&fixture("faulty"), &fixture("lm"), &fixture("rf_class")]);
    let running = Running::start(models.path(), 1).await;
    let bus = running.bus.clone();

    let held = tokio::spawn({
        let bus = bus.clone();
        async move { score(&bus, "faulty", x(&[support::Hold::X as f64])).await }
    });
    let deadline = Instant::now() + WITHIN;
    while hold.host_pid().is_none() {
        assert!(Instant::now() < deadline, "the held call never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued: Vec<_> = (1..=4)
        .map(|n| {
            let bus = bus.clone();
            let rows: Vec<f64> = (0..n).map(f64::from).collect();
            tokio::spawn(async move { score(&bus, "faulty", x(&rows)).await })
        })
        .collect();
    wait_for(r#"rfleet_queue_depth{model="faulty",version=""}"#, 4.0).await;
    hold.release();
    expect_scored(&held.await.unwrap());
    for reply in queued {
        let reply = reply.await.unwrap();
        expect_scored(&reply);
        assert_eq!(reply.timings.path.as_deref(), Some("batch:4"), "the queued four share one R call");
    }
    expect_error(&score(&bus, "faulty", x(&[-1.0])).await, ErrorCode::RError);
    let no_x = Frame::new(vec![numbers("y", &[1.0])]).unwrap();
    expect_error(&score(&bus, "faulty", no_x).await, ErrorCode::InvalidInput);
    expect_error(&score(&bus, "nope", x(&[1.0])).await, ErrorCode::ModelNotFound);

    let lm_case = support::case(&support::fixtures(), "lm");
    let (lm_rows, lm_predicted) = (lm_case.rows, lm_case.expected.iter().filter(|v| !v.is_null()).count());
    let lm_frame = protocol::json::frame_from_value(&serde_json::Value::Array(lm_rows.clone())).unwrap();
    expect_scored(&score(&bus, "lm", lm_frame).await);
    let class_rows = support::case(&support::fixtures(), "rf_class").rows;
    let class_frame = protocol::json::frame_from_value(&serde_json::Value::Array(class_rows.clone())).unwrap();
    expect_scored(&score(&bus, "rf_class", class_frame).await);

    let scrape = telemetry::metrics::encode(Format::Text);
    let faulty = r#"model="faulty",version="""#;
    let series = |name: &str, extra: &str| format!("{name}{{{faulty}{extra}}}");
    check(
        &scrape,
        &[
            (&series("rfleet_worker_requests_total", r#",outcome="success""#), 5.0),
            (&series("rfleet_worker_requests_total", r#",outcome="r_error""#), 1.0),
            (&series("rfleet_worker_requests_total", r#",outcome="client_error""#), 1.0),
            (&series("rfleet_worker_requests_total", r#",outcome="internal""#), 0.0),
            (r#"rfleet_worker_requests_total{model="",version="",outcome="client_error"}"#, 1.0),
            // The held call, the batch of four, the R error.
            (&series("rfleet_r_calls_total", ""), 3.0),
            (&series("rfleet_rows_scored_total", ""), 11.0),
            (&series("rfleet_batch_requests_count", ""), 3.0),
            (&series("rfleet_batch_requests_sum", ""), 6.0),
            (&series("rfleet_batch_rows_sum", ""), 12.0),
            (&series("rfleet_phase_duration_seconds_count", r#",phase="compute""#), 3.0),
            (&series("rfleet_phase_duration_seconds_count", r#",phase="input""#), 3.0),
            (&series("rfleet_phase_duration_seconds_count", r#",phase="output""#), 3.0),
            // Every request an R host took: five scored, one R error.
            (&series("rfleet_phase_duration_seconds_count", r#",phase="batch_wait""#), 6.0),
            // The batch's slices cut back once.
            (&series("rfleet_phase_duration_seconds_count", r#",phase="merge""#), 1.0),
            (&series("rfleet_queue_depth", ""), 0.0),
            (&series("rfleet_model_load_duration_seconds_count", ""), 1.0),
            (r#"rfleet_hosts{state="idle"}"#, 1.0),
            (r#"rfleet_hosts{state="busy"}"#, 0.0),
            (r#"rfleet_hosts{state="starting"}"#, 0.0),
            ("rfleet_hosts_configured", 1.0),
            (r#"rfleet_prediction_value_count{model="lm",version="1.0.0",output=".pred"}"#, lm_predicted as f64),
            (r#"rfleet_rows_scored_total{model="lm",version="1.0.0"}"#, lm_rows.len() as f64),
            (r#"rfleet_r_calls_total{model="rf_class",version=""}"#, 1.0),
        ],
    );
    // The classes add up to the rows, each a level of the model.
    let classes: f64 = scrape
        .lines()
        .filter(|line| line.starts_with(r#"rfleet_predicted_class_total{model="rf_class",version="",class=""#))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(classes, class_rows.len() as f64, "{scrape}");
    assert_eq!(running.pool.live_hosts(), 1);
    let host_pid = hold.host_pid().unwrap();
    let rss = value(&scrape, &format!(r#"rfleet_host_resident_memory_bytes{{host_pid="{host_pid}"}}"#));
    assert!(rss.is_some_and(|bytes| bytes > 1e6), "an R host holds megabytes: {rss:?}");
    assert!(scrape.contains(r#"rfleet_model_info{model="faulty",version="",r_class="list",r_version="4."#), "{scrape}");
    // OpenMetrics carries the trace of the requests as exemplars.
    let openmetrics = telemetry::metrics::encode(Format::OpenMetrics);
    assert!(
        openmetrics.lines().any(|line| line.starts_with("rfleet_phase_duration_seconds_bucket")
            && line.contains(r#"phase="batch_wait""#)
            && line.contains(r#"# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}"#)),
        "{openmetrics}"
    );
    running.stop().await;
}

/// A GET over a real socket: the status and the body.
async fn get(address: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// The worker's listener: `/metrics` in the format asked for, `/live` while the process
/// runs, `/ready` while there is a live host and no drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listener_serves_metrics_and_health() {
    let models = support::models_dir(&[&fixture("lm")]);
    let running = Running::start(models.path(), 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let draining = CancellationToken::new();
    let stop = CancellationToken::new();
    let health = worker::listen::Health::new(running.pool.clone(), draining.clone(), true);
    let served = tokio::spawn(worker::listen::serve(listener, health, stop.clone().cancelled_owned()));

    let (status, text) = get(address, "/metrics", "*/*").await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE rfleet_worker_requests_total counter"), "{text}");
    assert!(text.contains("rfleet_hosts_configured 1"), "{text}");
    assert!(!text.contains("# EOF"), "curl gets the text format: {text}");
    let (status, openmetrics) =
        get(address, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5").await;
    assert_eq!(status, 200);
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert_eq!(get(address, "/live", "*/*").await.0, 200);
    assert_eq!(get(address, "/ready", "*/*").await, (200, "ready\n".to_string()));
    assert_eq!(get(address, "/nothing", "*/*").await.0, 404);

    draining.cancel();
    assert_eq!(get(address, "/ready", "*/*").await, (503, "draining\n".to_string()));
    assert_eq!(get(address, "/live", "*/*").await.0, 200, "a draining worker is still alive");
    stop.cancel();
    served.await.unwrap().unwrap();
    running.stop().await;
}

/// `rfleet_bus_queue_messages` follows the bus: a worker that may hold one delivery at a
/// time (one host, no queue) and is held in R leaves the next requests on the bus, and
/// reads their number every announce interval; once released and done, none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_queue_depth_is_read() {
    let hold = support::Hold::new();
    std::env::set_var("SCORE_HOLD_FILE", hold.path());
    let models = support::models_dir(&[&fixture("faulty")]);
    let mut settings = settings(models.path(), 1);
    settings.workers.queue_capacity = 0;
    worker::metrics::init();
    let bus = EmbeddedBus::new(256, "requests");
    let transport: Arc<dyn Transport> = Arc::new(bus.clone());
    let worker = Worker::start(&settings, transport).await.expect("the worker starts");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    embedded::subscribed(&bus).await;

    let send = |x_value: f64| {
        let bus = bus.clone();
        tokio::spawn(async move { score(&bus, "faulty", x(&[x_value])).await })
    };
    // The held request first, alone: were the others sent with it, one of them could be
    // delivered (and answered) before it, and fewer than three would wait.
    let mut replies = vec![send(support::Hold::X as f64)];
    let deadline = Instant::now() + WITHIN;
    while hold.host_pid().is_none() {
        assert!(Instant::now() < deadline, "the held call never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replies.extend([1.0, 2.0, 3.0].map(send));
    wait_for(r#"rfleet_bus_queue_messages{model="faulty",version=""}"#, 3.0).await;
    hold.release();
    for reply in replies {
        expect_scored(&reply.await.unwrap());
    }
    wait_for(r#"rfleet_bus_queue_messages{model="faulty",version=""}"#, 0.0).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A request that kills its R host every time: the host restarts (`crashed`, twice: the
/// request is retried once on the replacement), the request is answered `host_crashed`,
/// counted `internal` and dead-lettered `host_crashes`; an undecodable body is answered,
/// counted under `model=""` and dead-lettered `undecodable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_dead_letters_are_counted() {
    let models = support::models_dir(&[&fixture("faulty")]);
    let running = Running::start(models.path(), 1).await;
    let bus = running.bus.clone();

    expect_error(&score(&bus, "faulty", x(&[666.0])).await, ErrorCode::HostCrashed);
    expect_error(&embedded::call_raw(&bus, "garbage", b"not msgpack".to_vec(), None).await, ErrorCode::BadRequest);
    // The second replacement starts in the background.
    wait_for(r#"rfleet_hosts{state="idle"}"#, 1.0).await;
    let scrape = telemetry::metrics::encode(Format::Text);
    check(
        &scrape,
        &[
            (r#"rfleet_host_restarts_total{reason="crashed"}"#, 2.0),
            (r#"rfleet_dead_letters_total{reason="host_crashes"}"#, 1.0),
            (r#"rfleet_dead_letters_total{reason="undecodable"}"#, 1.0),
            (r#"rfleet_worker_requests_total{model="faulty",version="",outcome="internal"}"#, 1.0),
            (r#"rfleet_worker_requests_total{model="",version="",outcome="client_error"}"#, 1.0),
            // Both tries were R calls, neither answered rows.
            (r#"rfleet_rows_scored_total{model="faulty",version=""}"#, 0.0),
        ],
    );
    assert!(!scrape.contains(r#"reason="timeout"}"#), "no host timed out: {scrape}");
    running.stop().await;
}
