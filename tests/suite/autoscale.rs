//! KEDA's metric for real, and an autoscaling simulation: the queue metric the chart's
//! ScaledObject asks for, read from the real broker's management API exactly as KEDA's
//! `rabbitmq` scaler reads it (`keda.rs`), and KEDA's and the HPA's scaling logic applied to
//! it every second, starting and stopping real `rfleet worker` processes under a load ramp.
//!
//! The model is `slow`: rf_reg's forest with a `predict_fn` that sleeps
//! [`SERVICE_SECONDS`] per row before R's `predict`, served one row per call
//! (`workers.max_batch_rows = 1`) by one R host per worker, so a worker's capacity is known
//! (about 1 / SERVICE_SECONDS calls a second) and answers are R's own for rf_reg's rows.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_same, case, client, fixtures, get, post, repo_root, target_dir, Fleet, Server, ServerOptions};

use crate::keda::{Autoscaler, HostUrl, QueueInfo, RabbitTrigger, ScaledObjectSpec};

/// The management URL the TriggerAuthentication's Secret holds (`host`, the values'
/// `broker.managementUrl`): the shared broker; the vhost comes from the trigger's `vhostName`.
const MANAGEMENT_HOST: &str = "http://guest:guest@127.0.0.1:15672/";
/// The chart's default `bus.queue_prefix`; the tests' fleets use prefixes of their own.
const CHART_PREFIX: &str = "rfleet.model.";
/// Seconds `slow`'s `predict_fn` sleeps per row.
const SERVICE_SECONDS: f64 = 0.2;
/// The dispatcher's request deadline (`server.request_timeout_ms`, its default).
const DEADLINE: Duration = Duration::from_secs(30);

/// The ScaledObject of model `slow` version 1, as the chart (`deploy/helm/rfleet`) renders
/// it with `tests/deploy/<values>` (`helm template`, YAML read by the tools venv's PyYAML).
fn scaled_object(values: &str) -> Value {
    let tools = repo_root().join(".rfleet/tools");
    let output = Command::new(tools.join("bin/helm"))
        .args(["template", "autoscale"])
        .arg(repo_root().join("deploy/helm/rfleet"))
        .arg("-f")
        .arg(repo_root().join("tests/deploy").join(values))
        .output()
        .expect("run helm (deploy/setup.sh test installs it under .rfleet/tools)");
    assert!(output.status.success(), "helm template failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut python = Command::new(tools.join("venv/bin/python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the tools venv's python");
    std::io::Write::write_all(&mut python.stdin.take().unwrap(), &output.stdout).unwrap();
    let converted = python.wait_with_output().unwrap();
    assert!(converted.status.success(), "the rendered chart is not YAML");
    let objects: Vec<Value> = serde_json::from_slice(&converted.stdout).unwrap();
    objects
        .into_iter()
        .find(|o| {
            o["kind"] == "ScaledObject"
                && o["spec"]["triggers"].as_array().is_some_and(|ts| {
                    ts.iter().any(|t| t["metadata"]["queueName"].as_str().is_some_and(|q| q.ends_with("slow@1")))
                })
        })
        .expect("the chart rendered no ScaledObject on the queue of slow@1")
}

/// The fleet's queue for a queue the chart names: the chart's prefix swapped for the
/// fleet's own (the names after it are the contract's `<name>` or `<name>@<version>`).
fn fleet_queue(rendered: &str, fleet: &Fleet) -> String {
    let rest = rendered
        .strip_prefix(CHART_PREFIX)
        .unwrap_or_else(|| panic!("the ScaledObject's queueName {rendered:?} lacks the prefix {CHART_PREFIX:?}"));
    assert!(rest == "slow@1" || rest == "slow", "the ScaledObject scales on {rendered:?}, not slow's queues");
    format!("{}{rest}", fleet.queue_prefix())
}

/// A models directory holding `slow` (see the module's comment) and R's answers for its
/// rows: rf_reg's case, computed by R with `predict`.
fn slow_model() -> (tempfile::TempDir, Vec<(String, Value)>) {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("slow");
    std::fs::create_dir(&package).unwrap();
    std::fs::copy(fixtures().join("models/rf_reg/model.rds"), package.join("model.rds")).unwrap();
    std::fs::write(package.join("model.toml"), "name = \"slow\"\nversion = \"1\"\n").unwrap();
    std::fs::write(
        package.join("score.R"),
        format!(
            "predict_fn <- function(model, newdata) {{\n  Sys.sleep({SERVICE_SECONDS} * nrow(newdata))\n  \
             predict(model, newdata)\n}}\n"
        ),
    )
    .unwrap();
    let rf = case(&fixtures(), "rf_reg");
    let rows = rf.rows.iter().zip(&rf.expected).map(|(row, expected)| (json!([row]).to_string(), json!([expected])));
    (dir, rows.collect())
}

fn worker(models: &Path, fleet: &Fleet, id: usize) -> ServerOptions {
    ServerOptions::fleet("worker", models, fleet)
        .hosts(1)
        .env("RFLEET_WORKERS__MAX_BATCH_ROWS", 1)
        .env("RFLEET_WORKERS__ID", format!("w{id}"))
}

async fn dispatcher(models: &Path, fleet: &Fleet, http: &reqwest::Client, env: &[(&str, &str)]) -> Server {
    let mut options = ServerOptions::fleet("dispatcher", models, fleet)
        .env("RFLEET_SERVER__REQUEST_TIMEOUT_MS", DEADLINE.as_millis());
    for (key, value) in env {
        options = options.env(key, value);
    }
    let server = options.start();
    let start = Instant::now();
    loop {
        let ready = get(http, &format!("{}/ready", server.url)).await;
        if ready.status == 200 {
            return server;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "dispatcher never ready: {}", ready.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One trigger of the ScaledObject, pointed at the fleet's queue, read as KEDA reads it.
struct Probe {
    trigger: RabbitTrigger,
    url: String,
    credentials: Option<(String, String)>,
}

/// One reading of a trigger: what the management API said and what KEDA makes of it.
#[derive(Debug, Clone)]
struct Reading {
    info: QueueInfo,
    metric: f64,
    active: bool,
}

impl Probe {
    fn all(spec: &ScaledObjectSpec, fleet: &Fleet) -> Vec<Probe> {
        spec.triggers
            .iter()
            .map(|metadata| {
                let mut metadata = metadata.clone();
                let queue = fleet_queue(metadata["queueName"].as_str().expect("trigger queueName"), fleet);
                metadata["queueName"] = Value::String(queue);
                let trigger = RabbitTrigger::from_metadata(&metadata, MANAGEMENT_HOST);
                Probe {
                    url: trigger.management_url(),
                    credentials: HostUrl::parse(&trigger.host).credentials(),
                    trigger,
                }
            })
            .collect()
    }

    /// `GetMetricsAndActivity` against the live broker. The URL in errors carries no
    /// credentials.
    async fn read(&self, http: &reqwest::Client) -> Result<Reading, String> {
        let mut request = http.get(&self.url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| format!("GET {}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {}: {status}", self.url));
        }
        let body: Value = response.json().await.map_err(|e| format!("GET {}: not JSON: {e}", self.url))?;
        let info = self.trigger.queue_info(&body);
        let (metric, active) = self.trigger.metric_and_activity(&info);
        Ok(Reading { info, metric, active })
    }

    fn is_version_queue(&self) -> bool {
        self.trigger.queue_name.ends_with("slow@1")
    }
}

/// Sends one row to the dispatcher and checks the answer is R's: `Ok(latency)`, or what
/// went wrong.
async fn score(http: &reqwest::Client, url: &str, row: &(String, Value)) -> Result<Duration, String> {
    let start = Instant::now();
    let answer = post(http, &format!("{url}/models/slow/score"), row.0.clone(), &[]).await;
    let latency = start.elapsed();
    if answer.status != 200 {
        return Err(format!("status {}: {}", answer.status, answer.text));
    }
    let got = answer.json();
    std::panic::catch_unwind(|| assert_same(&got, &row.1, "slow"))
        .map_err(|_| format!("answer {got} differs from R's {}", row.1))?;
    Ok(latency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_metric_counts_in_flight_and_is_zero_at_idle() {
    let spec = ScaledObjectSpec::parse(&scaled_object("autoscale-values.yaml"));
    let fleet = Fleet::new("keda-metric");
    fleet.delete_queues_of("slow", &["1"]);
    let (models, rows) = slow_model();
    let http = client();
    let _worker = worker(models.path(), &fleet, 1).start();
    let dispatcher = dispatcher(models.path(), &fleet, &http, &[]).await;
    let probes = Probe::all(&spec, &fleet);
    let probe = probes.iter().find(|p| p.is_version_queue()).expect("a trigger on the version queue slow@1");
    let value = probe.trigger.value;

    // A bounded burst: 60 requests at once, about 60 * SERVICE_SECONDS of work for one
    // worker, so that several of the management API's statistics samples (every 5 s by
    // default, `collect_statistics_interval`) fall within it.
    let n = 60;
    let rows = Arc::new(rows);
    let done = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for i in 0..n {
        let (http, url, rows, done) = (http.clone(), dispatcher.url.clone(), rows.clone(), done.clone());
        requests.push(tokio::spawn(async move {
            let result = score(&http, &url, &rows[i % rows.len()]).await;
            done.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }
    let mut under_load = Vec::new();
    while done.load(Ordering::SeqCst) < n {
        if let Ok(reading) = probe.read(&http).await {
            under_load.push(reading);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (i, request) in requests.into_iter().enumerate() {
        if let Err(e) = request.await.unwrap() {
            panic!("request {i}: {e}");
        }
    }
    let peak = under_load.iter().map(|r| r.metric).fold(0.0, f64::max);
    assert!(peak > value, "under load the metric never rose above the trigger's value {value}: {under_load:?}");
    // KEDA's metric is `messages`, ready and unacknowledged: the worker's deliveries (in R
    // and prefetched) count, which `protocol: amqp` (ready only) would miss.
    let in_flight = under_load
        .iter()
        .find(|r| r.info.messages_unacknowledged > 0 && r.metric > 0.0)
        .unwrap_or_else(|| panic!("no reading under load showed unacknowledged messages: {under_load:?}"));
    assert_eq!(
        in_flight.metric,
        (in_flight.info.messages_ready + in_flight.info.messages_unacknowledged) as f64,
        "the metric is not ready + unacknowledged: {in_flight:?}"
    );
    assert!(in_flight.metric > in_flight.info.messages_ready as f64, "{in_flight:?}");

    // Idle: back to zero and inactive, once the statistics catch up.
    let start = Instant::now();
    loop {
        let reading = probe.read(&http).await.expect("read the metric");
        if reading.metric == 0.0 && !reading.active {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the metric stayed {reading:?} at idle");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("keda metric: peak {peak} against value {value}; in flight {in_flight:?}");
}

/// The worker processes of the simulated Deployment: starting (R hosts coming up), running,
/// and draining (SIGTERM sent). `pods` are the first two, as a Deployment's status counts.
struct Deployment {
    models: std::path::PathBuf,
    fleet: Arc<Fleet>,
    starting: Vec<tokio::task::JoinHandle<Server>>,
    running: Vec<Server>,
    draining: Vec<tokio::task::JoinHandle<ExitStatus>>,
    /// Starting workers to stop as soon as they are up (scaled down meanwhile).
    unwanted: usize,
    next_id: usize,
}

impl Deployment {
    fn pods(&self) -> usize {
        self.starting.len() + self.running.len() - self.unwanted
    }

    /// Moves workers that came up to `running` (or straight to draining if unwanted).
    async fn settle(&mut self) {
        let mut still = Vec::new();
        for handle in std::mem::take(&mut self.starting) {
            if handle.is_finished() {
                let server = handle.await.expect("a worker failed to start");
                self.arrived(server);
            } else {
                still.push(handle);
            }
        }
        self.starting = still;
    }

    /// Waits until every worker being started is up (each start has its own deadline).
    async fn all_started(&mut self) {
        for handle in std::mem::take(&mut self.starting) {
            let server = handle.await.expect("a worker failed to start");
            self.arrived(server);
        }
    }

    /// A worker that has started: running, or stopped at once if scale-down wanted one
    /// fewer meanwhile.
    fn arrived(&mut self, server: Server) {
        if self.unwanted > 0 {
            self.unwanted -= 1;
            self.draining.push(tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(60))));
        } else {
            self.running.push(server);
        }
    }

    /// Starts or stops workers until there are `replicas` pods. Scale-down stops the newest
    /// running worker (SIGTERM: the drain), or a starting one once it is up.
    fn scale(&mut self, replicas: usize) {
        while self.pods() < replicas {
            if self.unwanted > 0 {
                self.unwanted -= 1;
                continue;
            }
            self.next_id += 1;
            let (models, fleet, id) = (self.models.clone(), self.fleet.clone(), self.next_id);
            self.starting.push(tokio::task::spawn_blocking(move || worker(&models, &fleet, id).start()));
        }
        while self.pods() > replicas {
            match self.running.pop() {
                Some(server) => {
                    self.draining.push(tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(60))))
                }
                None => self.unwanted += 1,
            }
        }
    }
}

/// A load and the ScaledObject it runs against.
struct Scenario {
    /// The values file (under `tests/deploy/`) the ScaledObject is rendered with.
    values: &'static str,
    /// Requests a second at time `t` (seconds since the start), 0 from `seconds` on.
    rate: fn(f64) -> f64,
    seconds: f64,
    /// The record's file name under `target/debug/`.
    record: &'static str,
    /// Extra dispatcher settings.
    dispatcher_env: &'static [(&'static str, &'static str)],
}

/// What a simulation measured.
struct Outcome {
    spec: ScaledObjectSpec,
    curve: Vec<Value>,
    /// Sorted latencies of every answer, seconds.
    latencies: Vec<f64>,
    /// (sent at, latency) of every answer.
    timed: Vec<(f64, f64)>,
    errors: Vec<String>,
    sent: usize,
    peak_replicas: i32,
}

/// Runs `scenario`: a fleet of `spec.minReplicaCount` workers (at least one, for the
/// dispatcher to learn the model from), the load, and every second KEDA's and the HPA's
/// decision on the live metric applied to the worker processes, until the load is over and
/// the fleet is back at its minimum. Checks the drained workers exited 0 and nothing was
/// dead-lettered; writes the record.
async fn simulate(scenario: Scenario) -> Outcome {
    let object = scaled_object(scenario.values);
    let spec = ScaledObjectSpec::parse(&object);
    assert!(spec.max_replica_count > spec.min_replica_count.max(1), "nothing to scale: {spec:?}");
    let fleet = Arc::new(Fleet::new("keda-sim"));
    fleet.delete_queues_of("slow", &["1"]);
    let (models, rows) = slow_model();
    let http = client();
    let mut deployment = Deployment {
        models: models.path().to_path_buf(),
        fleet: fleet.clone(),
        starting: Vec::new(),
        running: Vec::new(),
        draining: Vec::new(),
        unwanted: 0,
        next_id: 0,
    };
    let initial = spec.min_replica_count.max(1);
    deployment.scale(initial as usize);
    deployment.all_started().await;
    let dispatcher = dispatcher(models.path(), &fleet, &http, scenario.dispatcher_env).await;
    let probes = Probe::all(&spec, &fleet);

    // The load: an open loop, each request sent at its time whatever the others are doing.
    let timed: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let origin = Instant::now();
    let load = {
        let (http, url, rows) = (http.clone(), dispatcher.url.clone(), Arc::new(rows));
        let (timed, errors, sent) = (timed.clone(), errors.clone(), sent.clone());
        let (rate, seconds) = (scenario.rate, scenario.seconds);
        tokio::spawn(async move {
            let mut requests = Vec::new();
            let mut due = 0.0;
            let mut t = 0.0;
            while t < seconds {
                due += rate(t) * 0.01;
                while due >= 1.0 {
                    due -= 1.0;
                    let i = sent.fetch_add(1, Ordering::SeqCst);
                    let (http, url, rows, timed, errors) =
                        (http.clone(), url.clone(), rows.clone(), timed.clone(), errors.clone());
                    requests.push(tokio::spawn(async move {
                        let at = origin.elapsed().as_secs_f64();
                        match score(&http, &url, &rows[i % rows.len()]).await {
                            Ok(latency) => timed.lock().unwrap().push((at, latency.as_secs_f64())),
                            Err(e) => errors.lock().unwrap().push(format!("request {i}: {e}")),
                        }
                    }));
                }
                t += 0.01;
                tokio::time::sleep_until((origin + Duration::from_secs_f64(t)).into()).await;
            }
            for request in requests {
                request.await.expect("request task");
            }
        })
    };

    // Every second: read the live metric of each trigger, let KEDA (on its polling
    // interval) and the HPA (every second here; kube-controller-manager's
    // --horizontal-pod-autoscaler-sync-period is 15 s by default) decide, scale.
    let mut autoscaler = Autoscaler::new(spec.clone(), 0.0);
    let mut replicas = initial;
    let mut curve = Vec::new();
    let mut peak_replicas = replicas;
    let mut reported = 0;
    let limit = Duration::from_secs(170);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = origin.elapsed().as_secs_f64();
        deployment.settle().await;
        let mut readings = Vec::new();
        for probe in &probes {
            readings.push(probe.read(&http).await.unwrap_or_else(|e| panic!("KEDA's metric read failed: {e}")));
        }
        let metrics: Vec<_> =
            probes.iter().zip(&readings).map(|(p, r)| (p.trigger.metric_spec(r.metric), r.active)).collect();
        let desired = autoscaler.step(now, replicas, deployment.pods() as i32, &metrics);
        replicas = desired;
        deployment.scale(replicas as usize);
        peak_replicas = peak_replicas.max(replicas);

        // The answers that came in this second, by when they arrived.
        let mut second: Vec<f64> = {
            let timed = timed.lock().unwrap();
            let new: Vec<f64> = timed[reported..].iter().map(|(_, l)| *l).collect();
            reported = timed.len();
            new
        };
        second.sort_by(f64::total_cmp);
        let version = probes.iter().position(Probe::is_version_queue).unwrap_or(0);
        curve.push(json!({
            "t": (now * 10.0).round() / 10.0,
            "rate": (scenario.rate)(now),
            "metric": readings[version].metric,
            "ready": readings[version].info.messages_ready,
            "unacked": readings[version].info.messages_unacknowledged,
            "desired": desired,
            "pods": deployment.pods(),
            "running": deployment.running.len(),
            "answered": second.len(),
            "p50": percentile(&second, 0.5),
            "p99": percentile(&second, 0.99),
        }));
        if load.is_finished() && replicas == spec.min_replica_count && deployment.pods() == replicas as usize {
            break;
        }
        assert!(
            origin.elapsed() < limit,
            "the fleet did not shrink back to {} within {limit:?}: {:?}",
            spec.min_replica_count,
            curve.last()
        );
    }
    load.await.expect("load task");

    let timed = timed.lock().unwrap().clone();
    let mut latencies: Vec<f64> = timed.iter().map(|(_, l)| *l).collect();
    latencies.sort_by(f64::total_cmp);
    let trigger = &probes.iter().find(|p| p.is_version_queue()).unwrap_or(&probes[0]).trigger;
    let sent = sent.load(Ordering::SeqCst);
    // The record, for tests/deploy/plot_autoscale.py and docs/autoscaling.svg.
    let record = json!({
        "scaled_object": object,
        "scaled_object_name": spec.name,
        "scale_target": spec.target,
        "service_seconds": SERVICE_SECONDS,
        "hosts_per_worker": 1,
        "max_batch_rows": 1,
        "deadline_s": DEADLINE.as_secs_f64(),
        "value": trigger.value,
        "requests": sent,
        "answered": latencies.len(),
        "p50_s": percentile(&latencies, 0.5),
        "p99_s": percentile(&latencies, 0.99),
        "max_s": latencies.last().copied().unwrap_or(0.0),
        "peak_replicas": peak_replicas,
        "curve": curve,
    });
    let path = target_dir().join(scenario.record);
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    println!(
        "{}: {} requests, p50 {:.3} s, p99 {:.3} s, peak {peak_replicas} workers; curve in {}",
        scenario.record,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        path.display()
    );
    let plot = Command::new("python3")
        .arg(repo_root().join("tests/deploy/plot_autoscale.py"))
        .arg(&path)
        .arg(path.with_extension("svg"))
        .status()
        .expect("run plot_autoscale.py");
    assert!(plot.success(), "plot_autoscale.py failed on {}", path.display());

    // Every stopped worker drained and exited cleanly.
    for drained in std::mem::take(&mut deployment.draining) {
        let status = drained.await.expect("drain task");
        assert!(status.success(), "a worker stopped by the scale-down exited with {status}");
    }
    // Nothing went to the dead-letter queue (absent: nothing was ever dead-lettered).
    let url = format!("http://127.0.0.1:15672/api/queues/%2f/{}", fleet.dead_letter_queue());
    let dead = http.get(&url).basic_auth("guest", Some("guest")).send().await.expect("GET the dead-letter queue");
    if dead.status() != reqwest::StatusCode::NOT_FOUND {
        let dead: Value = dead.json().await.expect("the dead-letter queue as JSON");
        assert_eq!(dead["messages"].as_i64().unwrap_or(0), 0, "requests were dead-lettered: {dead}");
    }
    let errors = errors.lock().unwrap().clone();
    Outcome { spec, curve: record["curve"].as_array().unwrap().clone(), latencies, timed, errors, sent, peak_replicas }
}

impl Outcome {
    /// Every request answered with R's prediction, p99 within the deadline.
    fn check_answers(&self) {
        assert!(
            self.errors.is_empty(),
            "{} of {} requests failed, e.g. {:?}",
            self.errors.len(),
            self.sent,
            &self.errors[..self.errors.len().min(5)]
        );
        assert_eq!(self.latencies.len(), self.sent, "requests without an answer");
        let p99 = percentile(&self.latencies, 0.99);
        assert!(p99 < DEADLINE.as_secs_f64(), "p99 {p99:.3} s is beyond the deadline {DEADLINE:?}");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Up from 2/s to 14/s over 20 s, 14/s for 30 s, down to 0 over 15 s.
fn ramp(t: f64) -> f64 {
    const PEAK: f64 = 14.0;
    match t {
        t if t < 10.0 => 2.0,
        t if t < 30.0 => 2.0 + (PEAK - 2.0) * (t - 10.0) / 20.0,
        t if t < 60.0 => PEAK,
        t if t < 75.0 => PEAK * (75.0 - t) / 15.0,
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keda_autoscaling_simulation_under_a_load_ramp() {
    let outcome = simulate(Scenario {
        values: "autoscale-values.yaml",
        rate: ramp,
        seconds: 75.0,
        record: "autoscale.json",
        dispatcher_env: &[],
    })
    .await;
    outcome.check_answers();
    let min = outcome.spec.min_replica_count;
    assert!(outcome.peak_replicas > min.max(1), "the fleet never grew under load (peak {})", outcome.peak_replicas);
}

/// Nothing for 8 s (KEDA takes the fleet to zero), then 4 requests/s for 8 s.
fn wake(t: f64) -> f64 {
    if (8.0..16.0).contains(&t) {
        4.0
    } else {
        0.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keda_scale_to_zero_and_back() {
    // minReplicaCount 0 with the dispatcher keeping a version no worker serves
    // (models.keep_idle_ms, as the chart's values/scale-to-zero.yaml sets it): requests
    // sent while no worker runs wait in the version's queue, which activates KEDA.
    let outcome = simulate(Scenario {
        values: "autoscale-zero-values.yaml",
        rate: wake,
        seconds: 16.0,
        record: "autoscale-zero.json",
        dispatcher_env: &[("RFLEET_MODELS__KEEP_IDLE_MS", "600000")],
    })
    .await;
    assert_eq!(outcome.spec.min_replica_count, 0, "the zero scenario's values must render minReplicaCount 0");
    outcome.check_answers();
    // Zero workers when the first request went out: it was KEDA's activation that served it.
    let first = outcome.timed.iter().map(|(at, _)| *at).fold(f64::INFINITY, f64::min);
    let before: Vec<&Value> = outcome.curve.iter().filter(|p| p["t"].as_f64().unwrap() <= first).collect();
    let last = before.last().unwrap_or_else(|| panic!("no sample before the first request at {first:.1} s"));
    assert_eq!(last["pods"], 0, "the fleet was not at zero when the load began: {last}");
    assert!(outcome.peak_replicas >= 1, "KEDA never activated the fleet");
}
