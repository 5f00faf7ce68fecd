//! A fleet over the real RabbitMQ broker at 127.0.0.1:5672: separate worker and
//! dispatcher processes, direct publishers (Python, pika), and faults: a killed worker,
//! SIGTERM, poison messages, expired requests, a broker restart. Each test runs its own
//! isolated fleet (queue prefix, dead-letter queue, catalog exchange); the broker restart
//! happens to a RabbitMQ node of that test's own.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    assert_same, case, client, fixtures, get, post, repo_root, wait_for, BrokerNode, Fleet, Server, ServerOptions,
};

/// (model, one-row body, R's answer) for rf_reg and lm.
pub(crate) fn single_rows() -> Vec<(String, String, Value)> {
    let fixtures = fixtures();
    let mut rows = Vec::new();
    for name in ["rf_reg", "lm"] {
        let case = case(&fixtures, name);
        for (row, expected) in case.rows.iter().zip(&case.expected) {
            rows.push((case.model.clone(), json!([row]).to_string(), json!([expected])));
        }
    }
    rows
}

pub(crate) fn worker(fleet: &Fleet) -> ServerOptions {
    ServerOptions::fleet("worker", fixtures().join("models"), fleet)
}

pub(crate) fn dispatcher(fleet: &Fleet) -> ServerOptions {
    ServerOptions::fleet("dispatcher", fixtures().join("models"), fleet)
}

pub(crate) async fn wait_ready(client: &reqwest::Client, server: &Server) {
    let start = Instant::now();
    loop {
        let ready = get(client, &format!("{}/ready", server.url)).await;
        if ready.status == 200 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "dispatcher never ready: {}", ready.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the example publisher (`deploy/examples/publish.py`) against the fleet, once a
/// worker consumes the queue it publishes to: a worker says it is ready once its R hosts
/// are, and subscribes just after, and a message published to a queue not yet declared is
/// dropped by the broker (regression: under CI's load the first publish was lost).
/// Unless `extra` sets `--timeout` or `--deadline-ms`, the request's deadline is 60 s, not
/// publish.py's 10 s: a request that follows a crash waits for the crashed R host's
/// replacement, and under CI's load one took 12 s to start, so a 10 s deadline was (rightly)
/// answered `deadline_exceeded` (regression: "after poison" failed so).
pub(crate) fn publish(fleet: &Fleet, model: &str, rows: &Value, extra: &[&str]) -> Value {
    let version = extra.iter().position(|a| *a == "--model-version").and_then(|i| extra.get(i + 1));
    let queue = match version {
        Some(version) => format!("{}{model}@{version}", fleet.queue_prefix()),
        None => format!("{}{model}", fleet.queue_prefix()),
    };
    fleet.await_consumer(&queue, Duration::from_secs(60));
    let rows = rows.to_string();
    let prefix = fleet.queue_prefix();
    let args = ["--url", &fleet.broker_url, "--model", model, "--queue-prefix", &prefix, "--rows", &rows];
    run_publisher("publish.py", &args, extra)
}

/// Runs the example publisher `deploy/examples/<script>` with `args`, then `extra`, and
/// returns the JSON it printed (`{"error": …}` when no reply came in time). Unless `extra` sets `--timeout` or `--deadline-ms`, the
/// request's deadline is 60 s (see [`publish`]).
pub(crate) fn run_publisher(script: &str, args: &[&str], extra: &[&str]) -> Value {
    let sets_deadline = extra.iter().any(|a| *a == "--timeout" || *a == "--deadline-ms");
    let output = Command::new("python3")
        .arg(repo_root().join("deploy/examples").join(script))
        .args(args)
        .args(extra)
        .args(if sets_deadline { &[][..] } else { &["--timeout", "60"][..] })
        .output()
        .unwrap_or_else(|e| panic!("run {script} (python3 with its packages): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Exit code 2: no reply in time, which the printed JSON says.
    let answered = output.status.success() || output.status.code() == Some(2);
    assert!(answered, "{script} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"))
}

/// Every message in the fleet's dead-letter queue: `{"reason": .., "queue": .., "bytes": ..}`.
pub(crate) fn dead_letters(fleet: &Fleet) -> Vec<Value> {
    let script = format!(
        "import json, pika\n\
         c = pika.BlockingConnection(pika.URLParameters('{url}'))\n\
         ch = c.channel()\n\
         out = []\n\
         while True:\n\
         \x20   m, p, body = ch.basic_get('{queue}', auto_ack=True)\n\
         \x20   if m is None: break\n\
         \x20   h = p.headers or {{}}\n\
         \x20   r = h.get('x-rfleet-reason'); q = h.get('x-rfleet-queue')\n\
         \x20   out.append({{'reason': r.decode() if isinstance(r, bytes) else r, 'queue': q.decode() if isinstance(q, bytes) else q, 'bytes': len(body)}})\n\
         print(json.dumps(out))\n",
        url = fleet.broker_url,
        queue = fleet.dead_letter_queue()
    );
    let output = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Vec<Value>>(&output.stdout).unwrap()
}

/// `clients` clients send `each` requests through the dispatchers in turn; every answer
/// must be R's for that row. Returns the workers that answered.
pub(crate) async fn load(
    urls: Vec<String>,
    clients: usize,
    each: usize,
    done: Arc<AtomicUsize>,
) -> std::collections::BTreeSet<String> {
    let rows = Arc::new(single_rows());
    let mut tasks = Vec::new();
    for client_no in 0..clients {
        let (rows, urls, done) = (rows.clone(), urls.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut workers = std::collections::BTreeSet::new();
            for i in 0..each {
                let (model, body, expected) = &rows[(client_no * 7 + i) % rows.len()];
                let url = &urls[(client_no + i) % urls.len()];
                let answer = post(&client, &format!("{url}/models/{model}/score"), body.clone(), &[]).await;
                assert_eq!(answer.status, 200, "client {client_no} request {i}: {}", answer.text);
                assert_same(&answer.json(), expected, &format!("client {client_no} request {i} ({model})"));
                workers.insert(answer.header("x-rfleet-worker").unwrap_or_default().to_string());
                done.fetch_add(1, Ordering::Relaxed);
            }
            workers
        }));
    }
    let mut workers = std::collections::BTreeSet::new();
    for task in tasks {
        workers.extend(task.await.expect("client task"));
    }
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_two_workers_two_dispatchers() {
    two_workers_two_dispatchers(&Fleet::new("e2e")).await;
}

/// A dispatcher, two workers, a second dispatcher on `fleet`: until a worker is heard from
/// the first dispatcher is not ready and says why; then both dispatchers learn the schemas
/// from the workers' announcements, and under load both workers serve, every answer R's.
pub(crate) async fn two_workers_two_dispatchers(fleet: &Fleet) {
    let first = dispatcher(fleet).start();
    let client = client();
    let ready = get(&client, &format!("{}/ready", first.url)).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    let _workers =
        [worker(fleet).env("RFLEET_WORKERS__ID", "w1").start(), worker(fleet).env("RFLEET_WORKERS__ID", "w2").start()];
    let second = dispatcher(fleet).start();
    wait_ready(&client, &first).await;
    wait_ready(&client, &second).await;
    let models = get(&client, &format!("{}/models", second.url)).await.json();
    let rf = models.as_array().unwrap().iter().find(|m| m["name"] == "rf_reg").expect("rf_reg listed");
    assert!(!rf["schema"]["columns"].as_array().unwrap().is_empty(), "{rf}");
    let workers = load(vec![first.url.clone(), second.url.clone()], 16, 12, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(workers, ["w1".to_string(), "w2".to_string()].into(), "both workers should have served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_direct_publishers_poison_and_expiry() {
    let fleet = Fleet::new("direct");
    let counter = tempfile::NamedTempFile::new().unwrap();
    let _worker = worker(&fleet).env("SCORE_COUNTER_FILE", counter.path().display()).start();
    let calls = || std::fs::read_to_string(counter.path()).unwrap().lines().count();
    let rf = case(&fixtures(), "rf_reg");
    let rows = Value::Array(rf.rows.clone());
    let expected = Value::Array(rf.expected.clone());

    for (content_type, extra) in [
        ("application/msgpack", vec![]),
        ("application/json", vec!["--content-type", "json"]),
        ("application/msgpack", vec!["--direct-reply-to"]),
    ] {
        let reply = publish(&fleet, "rf_reg", &rows, &extra);
        assert_eq!(reply["content_type"], content_type, "{reply}");
        let columns = &reply["reply"]["outcome"]["predictions"]["columns"];
        assert_eq!(columns[0]["name"], ".pred", "{reply}");
        assert_same(&columns[0]["values"], &expected, &format!("direct publisher {extra:?}"));
    }

    // Expired before it was taken: answered, never scored.
    let past =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() - 1000).to_string();
    let x = json!([{"x": 1.5}]);
    let reply = publish(&fleet, "faulty", &x, &["--deadline-ms", &past]);
    assert_eq!(reply["reply"]["outcome"]["error"]["code"], "deadline_exceeded", "{reply}");
    assert_eq!(calls(), 0, "an expired request reached R");
    let reply = publish(&fleet, "faulty", &x, &[]);
    assert_eq!(reply["reply"]["outcome"]["predictions"]["columns"][0]["values"], json!([3.0]), "{reply}");
    assert_eq!(calls(), 1);

    // Poison: garbage, another protocol version, a request that crashes R every time.
    let garbage = publish(&fleet, "faulty", &x, &["--raw-body", "\u{1}garbage"]);
    assert_eq!(garbage["reply"]["outcome"]["error"]["code"], "bad_request", "{garbage}");
    let version = publish(&fleet, "faulty", &x, &["--version", "99"]);
    assert_eq!(version["reply"]["outcome"]["error"]["code"], "unsupported_version", "{version}");
    let crash = publish(&fleet, "faulty", &json!([{"x": 666}]), &[]);
    assert_eq!(crash["reply"]["outcome"]["error"]["code"], "host_crashed", "{crash}");
    let dead = dead_letters(&fleet);
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap_or_default()).collect();
    assert_eq!(dead.len(), 3, "dead letters: {dead:?}");
    for (reason, code) in reasons.iter().zip(["bad_request", "unsupported_version", "host_crashed"]) {
        assert!(reason.starts_with(code), "reason {reason:?} should start with {code}");
    }
    assert!(dead.iter().all(|d| d["queue"] == format!("{}faulty", fleet.queue_prefix())), "{dead:?}");
    // And the worker keeps serving.
    let reply = publish(&fleet, "rf_reg", &rows, &[]);
    assert_same(&reply["reply"]["outcome"]["predictions"]["columns"][0]["values"], &expected, "after poison");
}

/// Two workers and a dispatcher under load (8 clients x 30 requests); once 30 requests are
/// answered, `fault` is done to the first worker. Every request must still be answered
/// correctly.
pub(crate) async fn fault_under_load(
    fleet: Fleet,
    first_worker: ServerOptions,
    fault: impl FnOnce(Server) + Send + 'static,
) {
    let victim = first_worker.env("RFLEET_WORKERS__ID", "victim").start();
    let _other = worker(&fleet).env("RFLEET_WORKERS__ID", "other").start();
    let front = dispatcher(&fleet).start();
    let client = client();
    wait_ready(&client, &front).await;
    // Ready means one worker was heard from. Both must serve before the fault, so the
    // fault hits a worker with work and the other one takes over.
    let (model, body, expected) = single_rows().remove(0);
    let mut served = std::collections::BTreeSet::new();
    let start = Instant::now();
    while served.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "only {served:?} served");
        let answer = post(&client, &format!("{}/models/{model}/score", front.url), body.clone(), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_same(&answer.json(), &expected, "before the fault");
        served.insert(answer.header("x-rfleet-worker").unwrap_or_default().to_string());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn(load(vec![front.url.clone()], 8, 30, done.clone()));
    wait_for(Duration::from_secs(60), "30 answers", || done.load(Ordering::Relaxed) >= 30).await;
    tokio::task::spawn_blocking(move || fault(victim)).await.unwrap();
    traffic.await.expect("every request answered correctly");
    assert_eq!(done.load(Ordering::Relaxed), 8 * 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_killed_worker_loses_no_request() {
    let fleet = Fleet::new("kill");
    let first = worker(&fleet);
    fault_under_load(fleet, first, Server::kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_sigterm_worker_drains() {
    let fleet = Fleet::new("sigterm");
    let leaving = worker(&fleet).env("RFLEET_WORKERS__DRAIN_TIMEOUT_MS", 10000);
    fault_under_load(fleet, leaving, |server| {
        let started = Instant::now();
        let status = server.terminate(Duration::from_secs(15));
        assert!(status.success(), "worker exited with {status}");
        assert!(started.elapsed() < Duration::from_secs(12), "worker took {:?} to drain", started.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_broker_restart_under_load() {
    let mut node = BrokerNode::start("fleet-restart");
    let fleet = Fleet::on("restart", &node.url());
    let _worker = worker(&fleet).start();
    let front = dispatcher(&fleet).start();
    let client = client();
    wait_ready(&client, &front).await;
    let rows = Arc::new(single_rows());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client_no in 0..4 {
        let (rows, url, stop, answered) = (rows.clone(), front.url.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let client = support::client();
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (model, body, expected) = &rows[(client_no * 5 + i) % rows.len()];
                let sent = Instant::now();
                let answer = post(
                    &client,
                    &format!("{url}/models/{model}/score"),
                    body.clone(),
                    &[("x-rfleet-timeout-ms", "3000")],
                )
                .await;
                // Never past its deadline (3 s) by more than a margin.
                assert!(sent.elapsed() < Duration::from_secs(6), "a request hung for {:?}", sent.elapsed());
                match answer.status {
                    200 => {
                        assert_same(&answer.json(), expected, "answer across a broker restart");
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    503 | 504 => assert!(answer.json()["message"].is_string()),
                    other => panic!("unexpected status {other}: {}", answer.text),
                }
                statuses.push(answer.status);
                i += 1;
                // Pacing: a steady stream, not a flood.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    // The broker goes away while the clients are being answered.
    wait_for(Duration::from_secs(60), "answers before the restart", || answered.load(Ordering::Relaxed) >= 8).await;
    // Blocking for the seconds a node takes to stop and boot: the clients run on the workers.
    tokio::task::block_in_place(|| {
        node.stop();
        node.start_again();
    });
    // Recovery on their own, within seconds.
    let recovered = Instant::now();
    let (model, body, expected) = single_rows().remove(0);
    loop {
        let answer = post(
            &client,
            &format!("{}/models/{model}/score", front.url),
            body.clone(),
            &[("x-rfleet-timeout-ms", "2000")],
        )
        .await;
        if answer.status == 200 {
            assert_same(&answer.json(), &expected, "first answer after recovery");
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(45), "no recovery: {} {}", answer.status, answer.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The clients themselves are answered again before they stop.
    let before = answered.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(30), "answers after the restart", || answered.load(Ordering::Relaxed) >= before + 8)
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.expect("client task"));
    }
    assert!(statuses.iter().any(|s| *s != 200), "the outage was not seen: {statuses:?}");
    // Load afterwards succeeds.
    load(vec![front.url.clone()], 4, 10, Arc::new(AtomicUsize::new(0))).await;
}

/// The Rust client (`shared/client`) scores through a worker directly, no HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_rust_client_scores_without_http() {
    let fleet = Fleet::new("client");
    let _worker = worker(&fleet).start();
    let env: std::collections::HashMap<String, String> = fleet.env().into_iter().collect();
    let settings = settings::Settings::load(&settings::Sources { env, ..Default::default() }).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bus =
        bus::AmqpBus::start(bus::AmqpConfig::from_settings(&settings.bus, "rfleet-test-client", 1), shutdown.clone());
    assert!(bus.wait_connected(Duration::from_secs(10)).await);
    let client = ::client::ScoringClient::new(bus);
    let rf = case(&fixtures(), "rf_reg");
    let frame = protocol::json::frame_from_value(&Value::Array(rf.rows.clone())).unwrap();
    let scored = client.score("rf_reg", frame, protocol::Options::default(), Duration::from_secs(30)).await.unwrap();
    let values = protocol::json::column_to_json(&scored.predictions.columns[0].data);
    assert_same(&Value::Array(values), &Value::Array(rf.expected.clone()), "rust client");
    assert!(scored.timings.r_ms > 0.0 && scored.timings.host_pid.is_some(), "{:?}", scored.timings);
    // Errors come back typed, with the worker's message.
    let bad =
        protocol::Frame::new(vec![protocol::Column::new("x", protocol::ColumnData::F64 { values: vec![Some(-1.0)] })])
            .unwrap();
    let error = client.score("faulty", bad, protocol::Options::default(), Duration::from_secs(30)).await.unwrap_err();
    assert!(error.to_string().starts_with("r_error: model 'faulty'"), "{error}");
    shutdown.cancel();
}

/// `messages` (ready + unacknowledged) of `queue` on the shared broker, from its management
/// API, as KEDA's RabbitMQ scaler reads it in `protocol: http` mode. The broker refreshes
/// these figures every few seconds (`collect_statistics_interval`).
async fn queue_messages(client: &reqwest::Client, queue: &str) -> u64 {
    support::management(client, &format!("queues/%2f/{queue}")).await["messages"].as_u64().unwrap_or(0)
}

/// Scaled to zero and back, as KEDA does with `minReplicaCount: 0`: with
/// `models.keep_idle_ms`, a dispatcher whose last worker for a model is gone keeps the
/// model (idle, no live host), stays ready, and publishes its requests, which wait in the
/// queue (what KEDA's activation sees) until a worker starts and answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_scale_to_zero_and_back() {
    let fleet = Fleet::new("zero");
    let first = worker(&fleet).start();
    let front = dispatcher(&fleet).env("RFLEET_MODELS__KEEP_IDLE_MS", 600_000).start();
    let client = client();
    wait_ready(&client, &front).await;
    let case = case(&fixtures(), "rf_reg");
    let body = json!([case.rows[0]]).to_string();
    let url = format!("{}/models/rf_reg/score", front.url);
    let answer = post(&client, &url, body.clone(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &json!([case.expected[0]]), "before scaling to zero");

    // Scaled to zero: the worker drains and goes; the dispatcher forgets it, not its models.
    let status = first.terminate(Duration::from_secs(30));
    assert!(status.success(), "worker exited with {status}");
    let models_url = format!("{}/models", front.url);
    let start = Instant::now();
    let idle = loop {
        let models = get(&client, &models_url).await.json();
        let rf = models.as_array().unwrap().iter().find(|m| m["name"] == "rf_reg").cloned();
        if let Some(rf) = rf.filter(|rf| rf["idle"] == true) {
            break rf;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "rf_reg never listed idle: {models}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(idle["live_hosts"], 0, "{idle}");
    assert!(!idle["schema"]["columns"].as_array().unwrap().is_empty(), "the schema is kept: {idle}");
    let ready = get(&client, &format!("{}/ready", front.url)).await;
    assert_eq!(ready.status, 200, "a dispatcher of a fleet at zero must stay ready: {}", ready.text);

    // A request now waits in the queue: the message KEDA's activation counts.
    let waiting = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { post(&client, &url, body, &[("x-rfleet-timeout-ms", "60000")]).await }
    });
    let queue = format!("{}rf_reg", fleet.queue_prefix());
    let start = Instant::now();
    while queue_messages(&client, &queue).await == 0 {
        assert!(!waiting.is_finished(), "the request was answered with no worker running");
        assert!(start.elapsed() < Duration::from_secs(30), "the request never reached {queue}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker KEDA would start answers it.
    let _second = worker(&fleet).start();
    let answer = waiting.await.expect("request task");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &json!([case.expected[0]]), "after scaling back from zero");
}
