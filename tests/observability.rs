//! Support for the observability tests (`suite/observability.rs`): a real Prometheus of the
//! test's own, the telemetry receivers of `tests/clients/` as processes, and `promtool
//! check metrics`.
//!
//! Prometheus is Debian's `/usr/bin/prometheus` (deploy/setup.sh installs it), run in a
//! temporary directory on a port of its own with a generated configuration: 1 s scrapes of
//! the given targets, one job per role, exemplar storage on. Everything is read back
//! through its HTTP API, as Grafana and the alerting rules read it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::repo_root;

/// Where Debian's prometheus package puts its binaries.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// A port that was free on loopback a moment ago (for a process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// Samples keyed by the value of one label (`""` where it is absent), for comparing a
/// `sum by (label) (...)` with the counts a test expects.
pub fn by_label(samples: &[Sample], label: &str) -> BTreeMap<String, f64> {
    samples.iter().map(|s| (s.label(label).to_string(), s.value)).collect()
}

/// One exemplar Prometheus stored: the labels of its series and its own (`trace_id`).
#[derive(Debug, Clone)]
pub struct Exemplar {
    pub series: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A `prometheus` process of the test's own, killed (and its data removed) when dropped.
pub struct Prometheus {
    child: Child,
    pub url: String,
    http: reqwest::Client,
    /// How many targets it scrapes.
    n_targets: usize,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`(job, "127.0.0.1:PORT")`; a job may have
    /// several) every second, evaluating `rule_files` every second; returns once it is
    /// ready. The port is picked free just before the start; a start that loses it to
    /// another process is tried again on another.
    pub fn start(targets: &[(&str, String)], rule_files: &[PathBuf]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: deploy/setup.sh test installs Debian's prometheus package"
        );
        let mut dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets, rule_files)).unwrap();
        let log_path = dir.path().join("prometheus.log");
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // Exemplars are kept only with this feature (2.42: still a feature flag).
                .arg("--enable-feature=exemplar-storage")
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {PROMETHEUS}: {e}"));
            let mut prometheus = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
                n_targets: targets.len(),
                dir,
            };
            if prometheus.wait_ready(Duration::from_secs(60)) {
                return prometheus;
            }
            let _ = prometheus.child.kill();
            let _ = prometheus.child.wait();
            dir = std::mem::replace(&mut prometheus.dir, tempfile::tempdir().unwrap());
        }
        panic!("prometheus did not start:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    }

    /// Whether `/-/ready` answered 200 within `limit` (false at once if the process exited:
    /// its port was taken).
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let address = self.url.trim_start_matches("http://").to_string();
        crate::poll_until(limit, || {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            http_get_ok(&address, "/-/ready")
        }) && self.child.try_wait().ok().flatten().is_none()
    }

    /// What Prometheus logged (warnings and errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let response = self.http.get(&url).query(params).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("GET {url} {params:?}: not JSON: {e}"));
        assert!(
            status.is_success() && body["status"] == "success",
            "Prometheus refused {path} {params:?} ({status}): {body}"
        );
        body["data"].clone()
    }

    /// The instant vector (or scalar, as one unlabelled sample) `promql` evaluates to now.
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let data = self.api("query", &[("query", promql.to_string())]).await;
        let number = |v: &Value| -> f64 {
            let text = v.as_str().unwrap_or_else(|| panic!("not a sample value: {v}"));
            text.parse().unwrap_or_else(|_| panic!("not a number: {text}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| Sample { labels: labels(&r["metric"]), value: number(&r["value"][1]) })
                .collect(),
            Some("scalar") => vec![Sample { labels: BTreeMap::new(), value: number(&data["result"][1]) }],
            other => panic!("{promql}: a {other:?} result, not an instant vector: {data}"),
        }
    }

    /// Polls `promql` until `done` holds for its result; fails with the last result (and
    /// Prometheus's log) once `limit` has passed.
    pub async fn wait(
        &self,
        promql: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let start = Instant::now();
        loop {
            let samples = self.query(promql).await;
            if done(&samples) {
                return samples;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; `{promql}` is {samples:#?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every target is up and was last scraped after `since`: from then on,
    /// what Prometheus holds includes everything the targets had counted at `since`. Fails
    /// with the targets' state (their last scrape errors) once a minute has passed.
    pub async fn wait_scraped_after(&self, since: SystemTime) {
        let since = unix_seconds(since);
        let start = Instant::now();
        loop {
            let samples = self.query("timestamp(up) * up").await;
            if samples.len() == self.n_targets && samples.iter().all(|s| s.value > since) {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "timed out waiting for a scrape of all {} targets after {since:.3}, each up: {samples:?}\n\
                     targets: {:#}\nprometheus log:\n{}",
                    self.n_targets,
                    self.targets().await,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The exemplars stored for series matching `selector` since `since`.
    pub async fn exemplars(&self, selector: &str, since: SystemTime) -> Vec<Exemplar> {
        let now = unix_seconds(SystemTime::now()) + 1.0;
        let params = [
            ("query", selector.to_string()),
            ("start", format!("{:.3}", unix_seconds(since) - 1.0)),
            ("end", format!("{now:.3}")),
        ];
        let data = self.api("query_exemplars", &params).await;
        let mut out = Vec::new();
        for series in data.as_array().cloned().unwrap_or_default() {
            for exemplar in series["exemplars"].as_array().cloned().unwrap_or_default() {
                out.push(Exemplar {
                    series: labels(&series["seriesLabels"]),
                    labels: labels(&exemplar["labels"]),
                    value: exemplar["value"].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
                });
            }
        }
        out
    }

    /// The scrape targets as Prometheus sees them (`/api/v1/targets`), for failure messages.
    pub async fn targets(&self) -> Value {
        self.api("targets", &[]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it close its TSDB.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !crate::poll_until(Duration::from_secs(10), || self.child.try_wait().ok().flatten().is_some()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Prometheus's configuration: 1 s scrapes and rule evaluations, one job per role.
fn config_yaml(targets: &[(&str, String)], rule_files: &[PathBuf]) -> String {
    let mut jobs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (job, address) in targets {
        jobs.entry(job).or_default().push(address);
    }
    // JSON is YAML: every string quoted, nothing for YAML to reinterpret.
    let quoted = |s: &str| Value::String(s.to_string()).to_string();
    let mut yaml =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n");
    for file in rule_files {
        yaml += &format!("  - {}\n", quoted(&file.display().to_string()));
    }
    yaml += "scrape_configs:\n";
    for (job, addresses) in jobs {
        let list: Vec<String> = addresses.iter().map(|a| quoted(a)).collect();
        yaml +=
            &format!("  - job_name: {}\n    static_configs:\n      - targets: [{}]\n", quoted(job), list.join(", "));
    }
    yaml
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// A blocking `GET path` on `address`: whether it answered 200 (used before any runtime).
fn http_get_ok(address: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// `promtool check metrics` on an exposition (what `GET /metrics` answered): `Err` with
/// what promtool said unless it exits 0 having said nothing (it prints each lint problem,
/// e.g. a counter without `_total` or a metric without HELP, and exits non-zero).
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {PROMTOOL} (Debian's prometheus package): {e}"));
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {said}", output.status))
    }
}

/// One of the telemetry receivers of `tests/clients/` (`otlp_receiver.py`,
/// `appinsights_receiver.py`) on a loopback port of its own, appending what it receives
/// to a JSON-lines file; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts `script` with `--out` and `args`; returns once it has printed its port.
    pub fn start(script: &str, args: &[String]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let path = repo_root().join("tests/clients").join(script);
        let mut child = Command::new("python3")
            .arg(&path)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().parse().unwrap_or_else(|_| {
            let status = child.wait().unwrap();
            panic!("{script} printed {first:?}, not its port ({status}); deploy/setup.sh test installs what it needs")
        });
        Receiver { child, port, out, _dir: dir }
    }

    /// Everything received so far, one JSON value per record.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))).collect()
    }

    /// Polls the records until `done` holds for them; fails naming `what`, with the records
    /// received, once `limit` has passed.
    pub async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; received:\n{}",
                records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
