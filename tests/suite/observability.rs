//! Observability against real parts (docs/observability.md is the contract): Debian's
//! Prometheus scraping a real `rfleet serve` and a two-worker fleet over RabbitMQ, read
//! back through its HTTP API (exact counts of what was sent, exemplars that lead to a
//! trace), `promtool check metrics` on every `/metrics`, the dashboard's and the rules'
//! expressions run against that Prometheus; traces exported by OTLP to a receiver that
//! decodes them with the OpenTelemetry project's own protobuf classes; and Application
//! Insights' exporter sending to a stand-in of its ingestion endpoint.
//!
//! What is real in the Application Insights test: the exporter crate
//! (opentelemetry-application-insights, as rfleet ships it), its HTTPS (rustls, a CA made
//! here and trusted through `traces.ca_file`), its gzip and its envelope format. What
//! stands in: the ingestion endpoint (`tests/clients/appinsights_receiver.py`), which
//! accepts exactly what the crate's uploader sends (`POST /v2/track`, gzip-encoded JSON
//! array of envelopes) and answers what the uploader parses (`{"itemsReceived": n,
//! "itemsAccepted": n, "errors": []}`, the crate's `TrackResponse`); it refuses any other
//! shape with a 400, which the crate treats as fatal, so a change in the crate's request
//! shows up here as envelopes that never arrive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use support::observability::{by_label, free_port, promtool_check_metrics, Prometheus, Receiver, Sample};
use support::{
    assert_same, case, client, fixtures, get, models_dir, post, repo_root, Answer, Authority, Fleet, Hold, Server,
    ServerOptions, Versions,
};

/// How long a condition on Prometheus or a receiver may take to hold.
const WAIT: Duration = Duration::from_secs(60);
/// The route template scoring requests are sent to.
const SCORE_ROUTE: &str = "/models/{name}/score";
/// The `faulty` fixture's R error (`make_models.R`), for x < 0.
const R_ERROR: &str = "deliberate failure: x is negative";

/// `host:port` of a server's `http://host:port`.
fn address(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// A fresh random W3C trace id (`len` 32 hex digits) or span id (16), never all zeros.
fn hex_id(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has keys of its own: its hash of nothing is a random number.
    let random = || std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
    let text = format!("{:016x}{:016x}", random(), random());
    text[..len].to_string()
}

/// A client's trace context: the trace, its own span, and the `traceparent` it sends.
struct ClientTrace {
    trace_id: String,
    span_id: String,
}

impl ClientTrace {
    fn new() -> ClientTrace {
        ClientTrace { trace_id: hex_id(32), span_id: hex_id(16) }
    }

    /// Another span of the same client trace (a second call of one client operation).
    fn sibling(&self) -> ClientTrace {
        ClientTrace { trace_id: self.trace_id.clone(), span_id: hex_id(16) }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// R calls that a reply's `x-rfleet-path` stands for: one call per shard of its job
/// (`rows:K` / `trees:K`, else one), shared by the N requests of a batch (`batch:N`).
fn r_calls_of(path: &str) -> f64 {
    let mut requests = 1.0;
    let mut shards = 1.0;
    for part in path.split('+') {
        let number = |prefix: &str| part.strip_prefix(prefix).map(|n| n.parse::<f64>().expect("a count in the path"));
        if let Some(n) = number("batch:") {
            requests = n;
        } else if let Some(k) = number("rows:").or_else(|| number("trees:")) {
            shards = k;
        } else {
            assert_eq!(part, "whole", "unknown x-rfleet-path {path:?}");
        }
    }
    shards / requests
}

/// Sums of what was sent and answered, to compare with what rfleet counted.
#[derive(Default, Debug)]
struct Sent {
    /// Per (model, outcome): requests.
    outcomes: BTreeMap<(String, String), f64>,
    /// Per model: rows R scored for successful requests, and the R calls their paths imply.
    rows: BTreeMap<String, f64>,
    r_calls: BTreeMap<String, f64>,
    /// Per HTTP status of the scoring route: responses.
    statuses: BTreeMap<String, f64>,
    /// The paths of successful replies, for failure messages.
    paths: Vec<String>,
}

impl Sent {
    fn record(&mut self, model: &str, outcome: &str, answer: &Answer) {
        *self.outcomes.entry((model.into(), outcome.into())).or_default() += 1.0;
        *self.statuses.entry(answer.status.to_string()).or_default() += 1.0;
    }

    /// A successful answer to `rows` rows: counted with the R calls its path says it took.
    fn success(&mut self, model: &str, rows: usize, answer: &Answer) {
        self.record(model, "success", answer);
        let path = answer.header("x-rfleet-path").unwrap_or_else(|| panic!("no x-rfleet-path: {answer:?}"));
        *self.rows.entry(model.into()).or_default() += rows as f64;
        *self.r_calls.entry(model.into()).or_default() += r_calls_of(path);
        self.paths.push(path.to_string());
    }

    fn outcomes_of(&self, model: &str) -> BTreeMap<String, f64> {
        self.outcomes.iter().filter(|((m, _), _)| m == model).map(|((_, o), n)| (o.clone(), *n)).collect()
    }
}

/// Polls `promql` (a `sum by (label)`) until its non-zero samples, by `label`, are
/// `expected`; fails with the last result. Counters only grow and the test has stopped
/// sending, so waiting for equality is the exact comparison, not a lenient one: more than
/// expected never comes back down to it.
async fn expect_counts(prometheus: &Prometheus, promql: &str, label: &str, expected: &BTreeMap<String, f64>) {
    let nonzero = |samples: &[Sample]| -> BTreeMap<String, f64> {
        by_label(samples, label).into_iter().filter(|(_, v)| *v != 0.0).collect()
    };
    let what = format!("`{promql}` by {label} to be {expected:?}");
    prometheus.wait(promql, &what, Duration::from_secs(30), |samples| nonzero(samples) == *expected).await;
}

fn counts(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until the exemplars Prometheus stored for `selector` include `trace_id`.
async fn expect_exemplar(prometheus: &Prometheus, selector: &str, trace_id: &str, since: SystemTime) {
    let start = Instant::now();
    loop {
        let exemplars = prometheus.exemplars(selector, since).await;
        if exemplars.iter().any(|e| e.labels.get("trace_id").map(String::as_str) == Some(trace_id)) {
            return;
        }
        assert!(start.elapsed() < WAIT, "no exemplar of {selector} carries trace_id {trace_id}: {exemplars:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /metrics` as curl and promtool ask for it (no OpenMetrics in Accept): the text
/// format, which `promtool check metrics` must pass without a word.
async fn check_exposition(http: &reqwest::Client, base: &str, what: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(response.status(), 200, "{what}: GET /metrics");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{what}: /metrics answered {content_type} to curl's Accept");
    let body = response.text().await.unwrap();
    assert!(body.contains("rfleet_build_info"), "{what}: /metrics has no rfleet_build_info:\n{body}");
    if let Err(problems) = promtool_check_metrics(&body) {
        panic!("{what}: {problems}\n{body}");
    }
    body
}

/// Scores `rows` with `model` at the server `base`, within the client's `trace`.
async fn score_traced(http: &reqwest::Client, base: &str, model: &str, rows: Value, trace: &ClientTrace) -> Answer {
    let url = format!("{base}/models/{model}/score");
    post(http, &url, rows.to_string(), &[("traceparent", &trace.traceparent())]).await
}

/// Waits until the dispatcher at `url` says it is ready (a worker announced its models).
async fn wait_ready(http: &reqwest::Client, url: &str) {
    let start = Instant::now();
    loop {
        let ready = get(http, &format!("{url}/ready")).await;
        if ready.status == 200 {
            return;
        }
        assert!(start.elapsed() < WAIT, "{url} never ready: {}", ready.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The support code's own check, which needs no rfleet: Prometheus scrapes a target whose
/// exposition the test wrote (an OpenMetrics counter, gauge and histogram with an
/// exemplar), and the queries, the scrape wait, the exemplar query and promtool read back
/// exactly that; a wait whose condition never holds fails, naming what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_prometheus_reads_back_a_known_target() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = {
        let scrapes = scrapes.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let body = format!(
                        "# HELP demo_requests Requests by outcome.\n# TYPE demo_requests counter\n\
                         demo_requests_total{{outcome=\"success\"}} 7\ndemo_requests_total{{outcome=\"r_error\"}} 1\n\
                         # HELP demo_scrapes Scrapes answered.\n# TYPE demo_scrapes gauge\ndemo_scrapes {n}\n\
                         # HELP demo_duration_seconds Durations.\n# TYPE demo_duration_seconds histogram\n\
                         demo_duration_seconds_bucket{{le=\"0.1\"}} 1 # {{trace_id=\"{TRACE_ID}\"}} 0.05\n\
                         demo_duration_seconds_bucket{{le=\"+Inf\"}} 1\ndemo_duration_seconds_sum 0.05\n\
                         demo_duration_seconds_count 1\n# EOF\n"
                    );
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let started = SystemTime::now();
    let prometheus = Arc::new(Prometheus::start(&[("demo", target.clone())], &[]));
    prometheus.wait_scraped_after(started).await;
    let up = prometheus.query("up").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!((up[0].label("job"), up[0].label("instance"), up[0].value), ("demo", target.as_str(), 1.0));
    expect_counts(
        &prometheus,
        "sum by (outcome) (demo_requests_total)",
        "outcome",
        &counts(&[("success", 7.0), ("r_error", 1.0)]),
    )
    .await;
    let served = scrapes.load(Ordering::SeqCst) as f64;
    let seen = prometheus.query("demo_scrapes").await;
    assert!(seen.len() == 1 && seen[0].value >= 1.0 && seen[0].value <= served, "{seen:?} of {served} scrapes");
    expect_exemplar(&prometheus, "demo_duration_seconds_bucket", TRACE_ID, started).await;

    // A wait that cannot be met fails, with the last result in its message.
    let waiting = prometheus.clone();
    let failed = tokio::spawn(async move {
        waiting
            .wait("demo_scrapes", "a gauge of -1", Duration::from_secs(2), |s| s.iter().any(|s| s.value < 0.0))
            .await;
    })
    .await
    .expect_err("a wait for what never holds must fail");
    let message = failed.into_panic();
    let message = message.downcast_ref::<String>().expect("a panic message");
    assert!(message.contains("waiting for a gauge of -1") && message.contains("demo_scrapes"), "{message}");

    // promtool: quiet on a clean exposition, and it names the problems of a bad one.
    let clean = "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\ndemo_requests_total 3\n";
    assert_eq!(promtool_check_metrics(clean), Ok(()));
    let bad = promtool_check_metrics("# TYPE demo_requests counter\ndemo_requests 3\n").unwrap_err();
    assert!(bad.contains("no help text") && bad.contains("_total"), "{bad}");
}

/// The receivers' own checks: each answers a request of the shape its exporter sends as
/// the real service does, records it whole, and refuses what its exporter never sends.
#[test]
fn observability_receivers_pass_their_self_tests() {
    for script in ["otlp_receiver.py", "appinsights_receiver.py"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let output = Command::new("python3")
            .arg(repo_root().join("tests/clients").join(script))
            .arg("--out")
            .arg(&out)
            .arg("--self-test")
            .output()
            .expect("run python3");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "{script} --self-test ({}); deploy/setup.sh test installs what it needs:\n{said}",
            output.status
        );
        assert!(said.contains("self-test: ok"), "{script}: {said}");
    }
}

/// `rfleet serve` (one R host, so queued requests batch): known requests, then PromQL
/// through Prometheus says exactly what was sent, by outcome, rows, R calls (fewer than
/// requests: a batch), HTTP route and status; the last request's trace id is an exemplar.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observability_serve_counts_exactly_what_it_answered() {
    let fixtures = fixtures();
    let models = models_dir(&[&fixtures.join("models/lm"), &fixtures.join("models/faulty")]);
    let server = ServerOptions::new(models.path()).hosts(1).env("RFLEET_WORKERS__MAX_BATCH_WAIT_MS", 200).start();
    let started = SystemTime::now();
    let prometheus = Prometheus::start(&[("serve", address(&server.url))], &[]);
    let http = client();
    let url = format!("{}/models/lm/score", server.url);
    let lm = case(&fixtures, "lm");
    let mut sent = Sent::default();

    // K requests of all the case's rows, one at a time.
    let all_rows = Value::Array(lm.rows.clone()).to_string();
    for _ in 0..3 {
        let answer = post(&http, &url, all_rows.clone(), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_same(&answer.json(), &Value::Array(lm.expected.clone()), "lm, all rows");
        sent.success("lm", lm.rows.len(), &answer);
    }
    // M requests missing a column: the caller's fault, never an R call.
    let mut missing = lm.rows[0].clone();
    missing.as_object_mut().unwrap().remove("x1");
    for _ in 0..2 {
        let answer = post(&http, &url, json!([missing]).to_string(), &[]).await;
        assert!((400..500).contains(&answer.status), "a missing column: {} {}", answer.status, answer.text);
        assert!(answer.text.contains("x1"), "the message names the column: {}", answer.text);
        sent.record("lm", "client_error", &answer);
    }
    // One R error, alone (a failed batch would be retried request by request).
    let answer =
        post(&http, &format!("{}/models/faulty/score", server.url), json!([{ "x": -1 }]).to_string(), &[]).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert!(answer.text.contains(R_ERROR), "{}", answer.text);
    sent.record("faulty", "r_error", &answer);
    // A burst of single rows, which the one host's batch wait coalesces.
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let (row, expected) = (lm.rows[i % 6].clone(), lm.expected[i % 6].clone());
            tokio::spawn(async move {
                let answer = post(&http, &url, json!([row]).to_string(), &[]).await;
                assert_eq!(answer.status, 200, "{}", answer.text);
                assert_same(&answer.json(), &json!([expected]), "lm, one row of a burst");
                answer
            })
        })
        .collect();
    for answer in burst {
        sent.success("lm", 1, &answer.await.unwrap());
    }
    assert!(sent.paths.iter().any(|p| p.starts_with("batch:")), "the burst was not batched: {:?}", sent.paths);
    // Last and alone, so its buckets' exemplars are its own: a request in a client's trace.
    let trace = ClientTrace::new();
    let answer = score_traced(&http, &server.url, "lm", json!([lm.rows[0]]), &trace).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    sent.success("lm", 1, &answer);
    let done = SystemTime::now();

    prometheus.wait_scraped_after(done).await;
    let lm_requests = sent.outcomes_of("lm");
    expect_counts(&prometheus, r#"sum by (outcome) (rfleet_requests_total{model="lm"})"#, "outcome", &lm_requests)
        .await;
    let faulty = counts(&[("r_error", 1.0)]);
    expect_counts(&prometheus, r#"sum by (outcome) (rfleet_requests_total{model="faulty"})"#, "outcome", &faulty).await;
    // The worker never sees what the dispatcher refused.
    let lm_scored = counts(&[("success", lm_requests["success"])]);
    let worker_requests = r#"sum by (outcome) (rfleet_worker_requests_total{model="lm"})"#;
    expect_counts(&prometheus, worker_requests, "outcome", &lm_scored).await;
    expect_counts(
        &prometheus,
        r#"sum by (outcome) (rfleet_worker_requests_total{model="faulty"})"#,
        "outcome",
        &faulty,
    )
    .await;
    let rows = counts(&[("lm", sent.rows["lm"])]);
    expect_counts(&prometheus, r#"sum by (model) (rfleet_rows_scored_total{model="lm"})"#, "model", &rows).await;
    let calls = sent.r_calls["lm"];
    assert!((calls - calls.round()).abs() < 1e-9, "paths imply {calls} R calls: {:?}", sent.paths);
    assert!(calls < lm_requests["success"], "{calls} R calls for {} requests: no batching", lm_requests["success"]);
    let r_calls = counts(&[("lm", calls.round())]);
    expect_counts(&prometheus, r#"sum by (model) (rfleet_r_calls_total{model="lm"})"#, "model", &r_calls).await;
    // The R error was one call into R.
    let faulty_calls = counts(&[("faulty", 1.0)]);
    expect_counts(&prometheus, r#"sum by (model) (rfleet_r_calls_total{model="faulty"})"#, "model", &faulty_calls)
        .await;
    let http_requests = format!(
        "sum by (http_response_status_code) \
         (http_server_request_duration_seconds_count{{http_route=\"{SCORE_ROUTE}\", http_request_method=\"POST\"}})"
    );
    expect_counts(&prometheus, &http_requests, "http_response_status_code", &sent.statuses).await;

    // The trace of the last request, in the latency buckets it fell in.
    expect_exemplar(&prometheus, r#"rfleet_request_duration_seconds_bucket{model="lm"}"#, &trace.trace_id, started)
        .await;
    expect_exemplar(
        &prometheus,
        &format!(r#"http_server_request_duration_seconds_bucket{{http_route="{SCORE_ROUTE}"}}"#),
        &trace.trace_id,
        started,
    )
    .await;

    // What Prometheus is answered (OpenMetrics, exemplars) and what curl is (text, clean).
    let openmetrics = http
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    let content_type = openmetrics.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.ends_with("# EOF\n"), "not OpenMetrics:\n{openmetrics}");
    assert!(openmetrics.contains(&format!("trace_id=\"{}\"", trace.trace_id)), "no exemplar:\n{openmetrics}");
    let text = check_exposition(&http, &server.url, "rfleet serve").await;
    assert!(text.contains(r#"role="serve""#), "rfleet_build_info of serve:\n{text}");
}

/// One worker of a fleet, with its own metrics listener.
struct Worker {
    _server: Server,
    id: String,
    metrics: String,
}

fn fleet_worker(fleet: &Fleet, models: &Path, id: &str, hold: &Hold) -> Worker {
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = ServerOptions::fleet("worker", models, fleet)
        .hosts(2)
        .env("RFLEET_WORKERS__ID", id)
        .env("RFLEET_METRICS__LISTEN", &metrics)
        .env("SCORE_HOLD_FILE", hold.path().display())
        .start();
    Worker { _server: server, id: id.to_string(), metrics }
}

/// A dispatcher and two `rfleet worker`s over RabbitMQ, each scraped by Prometheus: what
/// each worker counted is what it answered (by `x-rfleet-worker`), their sum is what the
/// dispatcher counted and published, both workers' hosts show; `promtool check metrics`
/// passes on all three endpoints. Then traffic of every kind the dashboard and the rules
/// show (client and R errors, classes, a forest split, mirrored copies, a crashing host
/// and its dead letter, a timeout and its late reply), and every expression of both
/// returns a result against this Prometheus (`tests/deploy/check_expressions.py
/// --prometheus`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observability_fleet_counts_add_up_and_every_expression_has_data() {
    let fixtures = fixtures();
    let versions = Versions::load();
    let fixture = |name: &str| fixtures.join("models").join(name);
    let models = models_dir(&[
        &fixture("lm"),
        &fixture("faulty"),
        &fixture("rf_class"),
        &versions.package("1"),
        &versions.package("2"),
    ]);
    // Unpinned rf_reg goes to version 1, and a copy of each to version 2 (rfleet_mirrored_total).
    let traffic = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        traffic.path(),
        "[rf_reg]\nweights = { \"1\" = 100 }\nmirror = { version = \"2\", percent = 100 }\n",
    )
    .unwrap();
    let fleet = Fleet::new("observability");
    let hold = Hold::new();
    let workers = [fleet_worker(&fleet, models.path(), "w1", &hold), fleet_worker(&fleet, models.path(), "w2", &hold)];
    let dispatcher = ServerOptions::fleet("dispatcher", models.path(), &fleet)
        .env("RFLEET_MODELS__TRAFFIC_FILE", traffic.path().display())
        .start();
    let rules = repo_root().join("deploy/observability/rules.yaml");
    let rule_files: Vec<PathBuf> = [rules].into_iter().filter(|r| r.is_file()).collect();
    let mut targets = vec![("dispatcher", address(&dispatcher.url))];
    targets.extend(workers.iter().map(|w| ("worker", w.metrics.clone())));
    let prometheus = Prometheus::start(&targets, &rule_files);
    let http = client();
    wait_ready(&http, &dispatcher.url).await;

    // Single rows of lm from six clients at once, so both workers take some.
    let lm = case(&fixtures, "lm");
    let url = format!("{}/models/lm/score", dispatcher.url);
    let tasks: Vec<_> = (0..6)
        .map(|client_no| {
            let (http, url, lm) = (http.clone(), url.clone(), lm.clone());
            tokio::spawn(async move {
                let mut answered_by = Vec::new();
                for i in 0..8 {
                    let row = (client_no + i) % 6;
                    let answer = post(&http, &url, json!([lm.rows[row]]).to_string(), &[]).await;
                    assert_eq!(answer.status, 200, "{}", answer.text);
                    assert_same(&answer.json(), &json!([lm.expected[row]]), "lm over the fleet");
                    answered_by.push(answer.header("x-rfleet-worker").unwrap_or_default().to_string());
                }
                answered_by
            })
        })
        .collect();
    let mut by_worker: BTreeMap<String, f64> = BTreeMap::new();
    for task in tasks {
        for worker in task.await.unwrap() {
            *by_worker.entry(worker).or_default() += 1.0;
        }
    }
    let sent: f64 = by_worker.values().sum();
    let done = SystemTime::now();

    prometheus.wait_scraped_after(done).await;
    let dispatched = r#"sum by (outcome) (rfleet_requests_total{job="dispatcher", model="lm"})"#;
    expect_counts(&prometheus, dispatched, "outcome", &counts(&[("success", sent)])).await;
    // Each worker counted what it answered; the instance is its metrics listener.
    let per_instance: BTreeMap<String, f64> =
        workers.iter().filter_map(|w| by_worker.get(&w.id).map(|n| (w.metrics.clone(), *n))).collect();
    assert_eq!(per_instance.values().sum::<f64>(), sent, "answers from unknown workers: {by_worker:?}");
    let answered = r#"sum by (instance) (rfleet_worker_requests_total{job="worker", model="lm", outcome="success"})"#;
    expect_counts(&prometheus, answered, "instance", &per_instance).await;
    let published = r#"sum by (transport) (rfleet_bus_published_total{job="dispatcher", outcome="ok"})"#;
    expect_counts(&prometheus, published, "transport", &counts(&[("amqp", sent)])).await;
    // Both workers' R hosts, live.
    let hosts: BTreeMap<String, f64> = workers.iter().map(|w| (w.metrics.clone(), 2.0)).collect();
    let live = r#"sum by (instance) (rfleet_hosts{job="worker", state=~"idle|busy"})"#;
    expect_counts(&prometheus, live, "instance", &hosts).await;
    let configured = r#"sum by (instance) (rfleet_hosts_configured{job="worker"})"#;
    expect_counts(&prometheus, configured, "instance", &hosts).await;

    let text = check_exposition(&http, &dispatcher.url, "rfleet dispatcher").await;
    assert!(text.contains(r#"role="dispatcher""#), "rfleet_build_info of the dispatcher:\n{text}");
    for worker in &workers {
        let text = check_exposition(&http, &format!("http://{}", worker.metrics), &worker.id).await;
        assert!(text.contains(r#"role="worker""#), "rfleet_build_info of {}:\n{text}", worker.id);
    }

    // Traffic of every other kind the dashboard and the rules show.
    let mut missing = lm.rows[0].clone();
    missing.as_object_mut().unwrap().remove("x1");
    let bad = post(&http, &url, json!([missing]).to_string(), &[]).await;
    assert!((400..500).contains(&bad.status), "{}", bad.text);
    let faulty = format!("{}/models/faulty/score", dispatcher.url);
    let r_error = post(&http, &faulty, json!([{ "x": -1 }]).to_string(), &[]).await;
    assert_eq!(r_error.status, 422, "{}", r_error.text);
    // A forest's row alone on an idle worker is split by trees; labels are classes.
    let rf_class = case(&fixtures, "rf_class");
    let class_url = format!("{}/models/rf_class/score", dispatcher.url);
    for (row, expected) in rf_class.rows.iter().zip(&rf_class.expected) {
        let answer = post(&http, &class_url, json!([row]).to_string(), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_same(&answer.json(), &json!([expected]), "rf_class over the fleet");
    }
    let rf_reg = format!("{}/models/rf_reg/score", dispatcher.url);
    for (row, _) in versions.rows.iter().enumerate() {
        let answer = post(&http, &rf_reg, json!([versions.rows[row]]).to_string(), &[]).await;
        assert_eq!(versions.check(&answer, row, "rf_reg, mirrored"), "1");
    }
    // A request held in R past its deadline (every host is live and idle now, so it reaches
    // R at once): answered 504 (`timeout`); the worker's reply, once R lets go, is one
    // nobody awaits.
    let held = {
        let (http, faulty) = (http.clone(), faulty.clone());
        let body = json!([{ "x": Hold::X }]).to_string();
        tokio::spawn(async move { post(&http, &faulty, body, &[("x-rfleet-timeout-ms", "3000")]).await })
    };
    support::wait_for(WAIT, "the held request in R", || hold.host_pid().is_some()).await;
    let held = held.await.unwrap();
    assert_eq!(held.status, 504, "a request held in R past its deadline: {}", held.text);
    hold.release();
    prometheus
        .wait(r#"sum(rfleet_bus_replies_dropped_total{job="dispatcher"})"#, "the late reply dropped", WAIT, |s| {
            s.iter().any(|s| s.value >= 1.0)
        })
        .await;
    // A request that kills its host, and the replacement it is retried on: two host
    // restarts, then a dead letter.
    let crash = post(&http, &faulty, json!([{ "x": 666 }]).to_string(), &[]).await;
    assert!(crash.status >= 500, "a request that kills every host it runs on: {} {}", crash.status, crash.text);
    prometheus
        .wait(
            r#"sum(rfleet_dead_letters_total{reason="host_crashes"})"#,
            "the crashing request dead-lettered",
            WAIT,
            |s| s.iter().any(|s| s.value >= 1.0),
        )
        .await;
    prometheus
        .wait(r#"sum(rfleet_mirrored_total)"#, "mirrored copies counted", WAIT, |s| {
            s.iter().any(|s| s.value >= versions.rows.len() as f64)
        })
        .await;

    check_expressions(&prometheus).await;
}

/// Runs `tests/deploy/check_expressions.py --prometheus` until every expression of the
/// dashboard and the rules has data (rates need a few scrapes of the newest series), or
/// fails with its last report.
async fn check_expressions(prometheus: &Prometheus) {
    let script = repo_root().join("tests/deploy/check_expressions.py");
    let python = repo_root().join(".rfleet/tools/venv/bin/python");
    assert!(
        script.is_file(),
        "{} is missing: it checks deploy/observability's rules and dashboard, which come with it",
        script.display()
    );
    assert!(python.is_file(), "{} is missing: deploy/setup.sh test makes the deploy tools' venv", python.display());
    // Counters of broker faults this test does not cause (a lost connection, a delivery
    // returned to the queue unacknowledged) have no series until one happens: their panels
    // are allowed to be empty. (shared/bus's reconnect and redelivery tests cause them.)
    let allowed_empty = "rfleet_bus_reconnects_total|rfleet_bus_redeliveries_total";
    let start = Instant::now();
    loop {
        let (script, python, url) = (script.clone(), python.clone(), prometheus.url.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(["--prometheus", &url, "--allow-empty", allowed_empty])
                .env("PATH", format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()))
                .output()
                .expect("run check_expressions.py")
        })
        .await
        .unwrap();
        if output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stdout));
            return;
        }
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "check_expressions.py --prometheus {} failed ({}):\n{report}",
            prometheus.url,
            output.status
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Spans of one trace, as the OTLP receiver wrote them.
struct Spans(Vec<Value>);

impl Spans {
    fn of(records: &[Value], trace_id: &str) -> Spans {
        Spans(records.iter().filter(|s| s["trace_id"] == trace_id).cloned().collect())
    }

    fn find(&self, what: impl Fn(&Value) -> bool) -> Option<&Value> {
        self.0.iter().find(|s| what(s))
    }

    fn kind(&self, kind: &str) -> &Value {
        self.find(|s| s["kind"] == kind).unwrap_or_else(|| panic!("no {kind} span in {:#?}", self.0))
    }

    fn named(&self, prefix: &str) -> &Value {
        self.find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no span named {prefix}... in {:#?}", self.0))
    }

    /// Whether the trace has come in whole, from the HTTP server span to the R call.
    fn whole(&self) -> bool {
        let named = |p: &str| self.find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(p))).is_some();
        self.find(|s| s["kind"] == "SERVER").is_some()
            && ["publish ", "process ", "batch ", "predict "].iter().all(|p| named(p))
    }
}

/// The attribute `key` of a span, as text (numbers and strings alike).
fn attribute(span: &Value, key: &str) -> String {
    match &span["attributes"][key] {
        Value::String(s) => s.clone(),
        Value::Null => panic!("span {} has no attribute {key}: {span}", span["name"]),
        other => other.to_string(),
    }
}

fn assert_child(child: &Value, parent: &Value) {
    assert_eq!(
        child["parent_span_id"], parent["span_id"],
        "{} should be a child of {}:\n{child}\n{parent}",
        child["name"], parent["name"]
    );
}

/// Whether any object in `value` (at any depth) has `key` equal to `wanted`.
fn has_field(value: &Value, key: &str, wanted: &str) -> bool {
    match value {
        Value::Object(o) => o.iter().any(|(k, v)| (k == key && v == wanted) || has_field(v, key, wanted)),
        Value::Array(a) => a.iter().any(|v| has_field(v, key, wanted)),
        _ => false,
    }
}

/// One request's trace over RabbitMQ, exported by OTLP from the dispatcher and the worker:
/// every span shares the client's trace id, and the parent links run client → SERVER →
/// PRODUCER → CONSUMER → batch (which also links to it) → the R call, with HTTP and
/// messaging semantic-convention attributes; an R error is an `exception` event with R's
/// message; the dispatcher's log lines for a request carry its trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observability_traces_run_from_http_through_the_broker_to_r() {
    let fixtures = fixtures();
    let models = models_dir(&[&fixtures.join("models/lm"), &fixtures.join("models/faulty")]);
    let receiver = Receiver::start("otlp_receiver.py", &[]);
    let fleet = Fleet::new("otlp");
    let otlp = |options: ServerOptions| {
        options
            .env("RFLEET_TRACES__EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port))
            .env("OTEL_BSP_SCHEDULE_DELAY", 200)
    };
    let worker = otlp(ServerOptions::fleet("worker", models.path(), &fleet)).start();
    let dispatcher = otlp(ServerOptions::fleet("dispatcher", models.path(), &fleet))
        .env("RFLEET_LOG__FORMAT", "json")
        .capture_logs()
        .start();
    let http = client();
    wait_ready(&http, &dispatcher.url).await;

    let lm = case(&fixtures, "lm");
    let client_trace = ClientTrace::new();
    let answer = score_traced(&http, &dispatcher.url, "lm", json!([lm.rows[0]]), &client_trace).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &json!([lm.expected[0]]), "lm, traced");
    let trace_id = &client_trace.trace_id;
    let records = receiver
        .wait("the request's spans, from the HTTP server to the R call", WAIT, |r| Spans::of(r, trace_id).whole())
        .await;
    let spans = Spans::of(&records, trace_id);
    let server = spans.kind("SERVER");
    let producer = spans.named("publish ");
    let consumer = spans.named("process ");
    let batch = spans.named("batch ");
    let predict = spans.named("predict ");
    for (span, kind) in [(producer, "PRODUCER"), (consumer, "CONSUMER"), (batch, "INTERNAL"), (predict, "INTERNAL")] {
        assert_eq!(span["kind"], kind, "{span}");
    }
    assert_eq!(server["parent_span_id"], client_trace.span_id.as_str(), "SERVER's parent is the client's span");
    assert_child(producer, server);
    assert_child(consumer, producer);
    assert_child(batch, consumer);
    assert_child(predict, batch);
    assert!(
        batch["links"].as_array().unwrap().iter().any(|l| l["span_id"] == consumer["span_id"]),
        "the batch span links to the request's CONSUMER span: {batch}"
    );
    assert_eq!(server["name"], format!("POST {SCORE_ROUTE}"));
    assert_eq!(attribute(server, "http.request.method"), "POST");
    assert_eq!(attribute(server, "http.route"), SCORE_ROUTE);
    assert_eq!(attribute(server, "http.response.status_code"), "200");
    for span in [producer, consumer] {
        assert_eq!(attribute(span, "messaging.system"), "rabbitmq", "{span}");
        let queue = attribute(span, "messaging.destination.name");
        assert!(queue.starts_with(&fleet.queue_prefix()), "{queue} is not a queue of this fleet: {span}");
    }
    assert_eq!(
        attribute(producer, "messaging.destination.name"),
        attribute(consumer, "messaging.destination.name"),
        "published to the queue consumed from"
    );
    assert_eq!(attribute(predict, "rfleet.model"), "lm");
    let host_pid: u32 = attribute(predict, "rfleet.host_pid").parse().expect("rfleet.host_pid is a pid");
    assert!(worker.host_pids().contains(&host_pid), "rfleet.host_pid {host_pid} is none of {:?}", worker.host_pids());
    let (front, back) = (server["service_name"].as_str(), consumer["service_name"].as_str());
    assert!(front.is_some() && back.is_some() && front != back, "service.name: dispatcher {front:?}, worker {back:?}");
    assert_eq!(producer["service_name"], server["service_name"]);
    assert_eq!(predict["service_name"], consumer["service_name"]);

    // An R error: the R call's span carries R's condition as an exception event.
    let failing = client_trace.sibling();
    let answer = score_traced(&http, &dispatcher.url, "faulty", json!([{ "x": -1 }]), &failing).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let exception = |span: &Value| -> Option<Value> {
        span["events"].as_array()?.iter().find(|e| e["name"] == "exception").cloned()
    };
    let records = receiver
        .wait("the R error's exception event", WAIT, |r| {
            r.iter().any(|s| s["trace_id"] == trace_id.as_str() && exception(s).is_some())
        })
        .await;
    let failed = records.iter().find(|s| s["trace_id"] == trace_id.as_str() && exception(s).is_some()).unwrap();
    assert!(failed["name"].as_str().unwrap().starts_with("predict "), "the exception is on the R call: {failed}");
    let event = exception(failed).unwrap();
    let kind = event["attributes"]["exception.type"].as_str().unwrap_or_default();
    assert!(!kind.is_empty(), "exception.type (R's condition class): {event}");
    let message = event["attributes"]["exception.message"].as_str().unwrap_or_default();
    assert!(message.contains(R_ERROR), "exception.message is R's: {event}");

    // The dispatcher's JSON log lines name the trace of the requests they are about.
    let logs = dispatcher.logs();
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        lines.iter().any(|line| has_field(line, "trace_id", trace_id)),
        "no log line of the dispatcher carries trace_id {trace_id}:\n{logs}"
    );
}

/// `rfleet serve` exporting to Application Insights (see the module's doc for what stands
/// in): a request that succeeds and one that makes R raise, both in one client trace,
/// arrive as a Request, a RemoteDependency (the publish) and an Exception, all under that
/// trace's id as the operation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observability_application_insights_gets_requests_dependencies_and_exceptions() {
    const IKEY: &str = "00000000-0000-0000-0000-000000000000";
    let fixtures = fixtures();
    let models = models_dir(&[&fixtures.join("models/lm"), &fixtures.join("models/faulty")]);
    let tls = tempfile::tempdir().unwrap();
    let authority = Authority::new("application insights");
    let (cert, key) = (tls.path().join("cert.pem"), tls.path().join("key.pem"));
    std::fs::write(&cert, &authority.cert_pem).unwrap();
    std::fs::write(&key, &authority.key_pem).unwrap();
    let receiver = Receiver::start(
        "appinsights_receiver.py",
        &["--cert".into(), cert.display().to_string(), "--key".into(), key.display().to_string()],
    );
    // The crate makes https:// of this (its connection_string.rs): the receiver speaks TLS.
    let connection = format!("InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{}/", receiver.port);
    let server = ServerOptions::new(models.path())
        .hosts(1)
        .env("RFLEET_TRACES__EXPORTER", "azure_monitor")
        .env("APPLICATIONINSIGHTS_CONNECTION_STRING", connection)
        .env("RFLEET_TRACES__CA_FILE", authority.write_ca(tls.path(), "ca.pem").display())
        .env("OTEL_BSP_SCHEDULE_DELAY", 200)
        .start();
    let http = client();
    let lm = case(&fixtures, "lm");
    let operation = ClientTrace::new();
    let answer = score_traced(&http, &server.url, "lm", json!([lm.rows[0]]), &operation).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let failing = operation.sibling();
    let answer = score_traced(&http, &server.url, "faulty", json!([{ "x": -1 }]), &failing).await;
    assert_eq!(answer.status, 422, "{}", answer.text);

    let trace_id = operation.trace_id.as_str();
    let base_type = |e: &Value| e["data"]["baseType"].as_str().unwrap_or_default().to_string();
    let ours = |envelopes: &[Value]| -> Vec<Value> {
        envelopes.iter().filter(|e| e["tags"]["ai.operation.id"] == trace_id).cloned().collect()
    };
    let is_publish = |e: &Value| {
        base_type(e) == "RemoteDependencyData"
            && e["data"]["baseData"]["name"].as_str().is_some_and(|n| n.starts_with("publish "))
    };
    let is_r_error = |e: &Value| {
        base_type(e) == "ExceptionData"
            && e["data"]["baseData"]["exceptions"][0]["message"].as_str().is_some_and(|m| m.contains(R_ERROR))
    };
    let envelopes = receiver
        .wait("a Request, a RemoteDependency (publish) and an Exception of the operation", WAIT, |received| {
            let ours = ours(received);
            ours.iter().any(|e| base_type(e) == "RequestData")
                && ours.iter().any(&is_publish)
                && ours.iter().any(&is_r_error)
        })
        .await;
    let ours = ours(&envelopes);
    for envelope in &ours {
        assert_eq!(envelope["iKey"], IKEY, "{envelope}");
        // Everything sampled (traces.sample_ratio 1.0): each item stands for one, 100 %.
        assert_eq!(envelope["sampleRate"], 100.0, "{envelope}");
    }
    let request = ours
        .iter()
        .find(|e| base_type(e) == "RequestData" && e["data"]["baseData"]["name"] == format!("POST {SCORE_ROUTE}"))
        .unwrap_or_else(|| panic!("no Request of the HTTP server span among {ours:#?}"));
    assert_eq!(request["name"], "Microsoft.ApplicationInsights.Request");
    assert_eq!(request["data"]["baseData"]["responseCode"], "200", "{request}");
    let publish = ours.iter().find(|e| is_publish(e)).unwrap();
    assert_eq!(publish["name"], "Microsoft.ApplicationInsights.RemoteDependency");
    // The crate types a dependency by its messaging.system: the embedded bus's.
    assert_eq!(publish["data"]["baseData"]["type"], "rfleet_embedded", "{publish}");
    let exception = ours.iter().find(|e| is_r_error(e)).unwrap();
    assert_eq!(exception["name"], "Microsoft.ApplicationInsights.Exception");
    let type_name = exception["data"]["baseData"]["exceptions"][0]["typeName"].as_str().unwrap_or_default();
    assert!(!type_name.is_empty() && type_name != "<no type>", "R's condition class as the type: {exception}");
}
