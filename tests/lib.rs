//! Support for rfleet's integration tests: fixture models made by R, a real `rfleet serve`
//! process on a free loopback port, and the comparison of answers with R's own `predict`.
//!
//! Everything here is real: R builds the fixture models and the expected predictions, the
//! server is the `rfleet` binary a user runs, and requests go over real sockets.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::task::JoinHandle;

use serde_json::Value;

// The RabbitMQ node of a test's own, shared with the bus crate's broker tests.
#[path = "../shared/bus/tests/amqp_support/node.rs"]
mod broker_node;
pub use broker_node::BrokerNode;

// A private Docker daemon, and images built and run with it (tests/suite/images.rs).
#[path = "docker.rs"]
pub mod docker;

// Prometheus, the telemetry receivers and promtool (tests/suite/observability.rs).
#[path = "observability.rs"]
pub mod observability;

/// `target/debug` (or wherever cargo put this test binary's siblings).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/tests-<hash> -> target/debug
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// A binary of this workspace, which the test command builds before running tests.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace --bins` before the tests", path.display());
    path
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The fixture models and cases, made once per script version by
/// `tests/fixtures/make_models.R` and shared by every test process (under a file lock).
pub fn fixtures() -> PathBuf {
    made_by("tests/fixtures/make_models.R", "rfleet-fixtures")
}

/// The native engine's own models (`tests/fixtures/make_native_models.R`): forests of each
/// kind and option the engine covers, and some it does not, under `models/`.
pub fn native_fixtures() -> PathBuf {
    made_by("tests/fixtures/make_native_models.R", "rfleet-native-fixtures")
}

/// What the R script `script` (relative to the repository) writes, made once per version
/// of the script under `target/<root>/`, under a lock, so that concurrent tests share it.
fn made_by(script: &str, root: &str) -> PathBuf {
    let script = repo_root().join(script);
    let text = std::fs::read(&script).unwrap_or_else(|e| panic!("read {}: {e}", script.display()));
    // FNV-1a: a new script version gets a new directory.
    let hash = text.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    let root = target_dir().join(root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(format!("{hash:016x}"));
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock fixtures");
    if !dir.join("done").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("Rscript").arg(&script).arg(&dir).status().expect("run Rscript (is R installed?)");
        assert!(status.success(), "{} failed: {status}", script.display());
        std::fs::write(dir.join("done"), b"").unwrap();
    }
    drop(lock);
    dir
}

/// One test case written by the fixture script.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub model: String,
    pub predict_type: Option<String>,
    pub rows: Vec<Value>,
    pub expected: Vec<Value>,
}

/// Every case file, sorted by name.
pub fn cases(fixtures: &Path) -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures.join("cases"))
        .expect("cases dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                model: value["model"].as_str().expect("case model").to_string(),
                predict_type: value["type"].as_str().map(str::to_string),
                rows: value["rows"].as_array().expect("case rows").clone(),
                expected: value["expected"].as_array().expect("case expected").clone(),
            }
        })
        .collect()
}

pub fn case(fixtures: &Path, name: &str) -> Case {
    cases(fixtures).into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

/// Three versions of one model, `rf_reg` versions 1, 2 and 3 (`<fixtures>/versions/rf_reg_v<k>`,
/// see `make_models.R`), and R's answer of each version for a few rows.
pub struct Versions {
    pub dir: PathBuf,
    /// Row objects, each sent alone.
    pub rows: Vec<Value>,
    /// By version: R's prediction for each row.
    pub expected: std::collections::BTreeMap<String, Vec<f64>>,
}

impl Versions {
    pub fn load() -> Versions {
        let dir = fixtures().join("versions");
        let value: Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
        let rows = value["rows"].as_array().expect("version rows").clone();
        let expected = value["expected"]
            .as_object()
            .expect("expected by version")
            .iter()
            .map(|(v, p)| (v.clone(), p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()))
            .collect();
        Versions { dir, rows, expected }
    }

    /// The package of `version`.
    pub fn package(&self, version: &str) -> PathBuf {
        self.dir.join(format!("rf_reg_v{version}"))
    }

    /// Checks one answer to row `row`: 200, the version named in `x-rfleet-model-version`,
    /// and R's prediction of that version; returns the version.
    pub fn check(&self, answer: &Answer, row: usize, context: &str) -> String {
        assert_eq!(answer.status, 200, "{context}: {}", answer.text);
        let version = answer.header("x-rfleet-model-version").unwrap_or_else(|| panic!("{context}: no version header"));
        let expected = self.expected.get(version).unwrap_or_else(|| panic!("{context}: unknown version {version}"));
        assert_same(
            &answer.json(),
            &serde_json::json!([expected[row]]),
            &format!("{context} (version {version}, row {row})"),
        );
        version.to_string()
    }
}

/// A models directory of its own holding copies of `packages` (each a package directory,
/// copied under its own name), for tests that add to it or break it.
pub fn models_dir(packages: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for package in packages {
        copy_package(package, &dir.path().join(package.file_name().unwrap()));
    }
    dir
}

/// Copies a package directory (plain files only) to `to`, atomically: written beside it,
/// then renamed into place, so a worker polling the parent never sees half a package.
pub fn copy_package(from: &Path, to: &Path) {
    let staging = to.with_file_name(format!(".{}.partial", to.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&staging).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        // Directories (an R host's `.rfleet/` cache of the native forest) stay behind.
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), staging.join(entry.file_name())).unwrap();
        }
    }
    std::fs::rename(&staging, to).unwrap();
}

/// Asserts `got` equals R's answer: numbers within 1e-9, everything else identical.
pub fn assert_same(got: &Value, expected: &Value, context: &str) {
    match (got, expected) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9, "{context}: got {a}, R says {b}");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{context}: got {} values, R has {}", a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{context}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys =
                |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<std::collections::BTreeSet<_>>();
            // jsonlite drops NA entries from row objects; rfleet writes them as null.
            let present = |o: &serde_json::Map<String, Value>| {
                o.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, _)| k.clone())
                    .collect::<std::collections::BTreeSet<_>>()
            };
            assert_eq!(present(a), keys(b), "{context}: columns differ");
            for (key, y) in b {
                assert_same(&a[key], y, &format!("{context}.{key}"));
            }
        }
        _ => assert_eq!(got, expected, "{context}"),
    }
}

/// A running `rfleet` process (`serve`, `dispatcher` or `worker`), stopped (SIGTERM,
/// then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// What the process wrote to stderr (its log), when started with `capture_logs`.
    logs: Option<Arc<parking_lot::Mutex<String>>>,
    /// `http://127.0.0.1:PORT` for `serve` and `dispatcher` (`https://` with `[tls]`, as
    /// the server prints it); empty for a worker.
    pub url: String,
    pub n_hosts: usize,
    _dir: tempfile::TempDir,
}

/// How to start a process: its subcommand, models and settings as environment overrides.
pub struct ServerOptions {
    pub command: &'static str,
    pub models: PathBuf,
    pub n_hosts: usize,
    pub env: Vec<(String, String)>,
    /// Keep what the process logs (its stderr) for `Server::logs`, besides printing it.
    pub capture_logs: bool,
}

impl ServerOptions {
    /// `rfleet serve` on the embedded bus.
    pub fn new(models: impl Into<PathBuf>) -> Self {
        ServerOptions { command: "serve", models: models.into(), n_hosts: 2, env: Vec::new(), capture_logs: false }
    }

    /// `rfleet worker` or `rfleet dispatcher` on the broker of `fleet`.
    pub fn fleet(command: &'static str, models: impl Into<PathBuf>, fleet: &Fleet) -> Self {
        let mut options =
            ServerOptions { command, models: models.into(), n_hosts: 1, env: Vec::new(), capture_logs: false };
        options.env.extend(fleet.env());
        options
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn hosts(mut self, n: usize) -> Self {
        self.n_hosts = n;
        self
    }

    /// Keeps the process's log lines for [`Server::logs`] (they are still printed).
    pub fn capture_logs(mut self) -> Self {
        self.capture_logs = true;
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary("rfleet"));
        command
            .arg(self.command)
            .arg("--models")
            .arg(&self.models)
            .args(["--listen", "127.0.0.1:0", "--hosts", &self.n_hosts.to_string()])
            .current_dir(dir.path())
            .env("RFLEET_LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.capture_logs { Stdio::piped() } else { Stdio::inherit() });
        // R's own `predict` unless a test asks for the native engine: the suites check what
        // R does (its batches, splits, hosts and metrics); `suite/native.rs` checks the
        // native engine against it.
        if !self.env.iter().any(|(key, _)| key == "RFLEET_WORKERS__ENGINE") {
            command.env("RFLEET_WORKERS__ENGINE", "r");
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start rfleet");
        let logs = child.stderr.take().map(|stderr| {
            let logs = Arc::new(parking_lot::Mutex::new(String::new()));
            let kept = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut kept = kept.lock();
                    kept.push_str(&line);
                    kept.push('\n');
                }
            });
            logs
        });
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("rfleet ") {
                    let _ = line_tx.send(line);
                    sent = true;
                }
            }
        });
        let line = line_rx.recv_timeout(Duration::from_secs(180)).expect("rfleet did not report its start in time");
        let url = line.strip_prefix("rfleet listening on ").unwrap_or_default().to_string();
        let n_hosts = if self.command == "dispatcher" { 0 } else { self.n_hosts };
        let server = Server { child, logs, url, n_hosts, _dir: dir };
        server.wait_until(Duration::from_secs(180), "all R hosts up", |s| s.host_pids().len() == s.n_hosts);
        server
    }
}

/// A test certificate authority and a server certificate it signed for this machine.
pub struct Authority {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, format!("rfleet test CA {name}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        // Both names a client may use for a server on loopback.
        let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = server.signed_by(&key, &ca).unwrap();
        Authority { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Writes the CA certificate to `dir/name`; returns its path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// A hold on the `faulty` fixture's calls of x = 888 (see `make_models.R`): while it lasts,
/// such a call stays in R and its host's pid is known, so a test can act on a host that is
/// running a request. Released when dropped.
pub struct Hold {
    dir: tempfile::TempDir,
}

impl Hold {
    /// The value of x that `faulty` holds.
    pub const X: i64 = 888;

    pub fn new() -> Hold {
        let hold = Hold { dir: tempfile::tempdir().unwrap() };
        std::fs::write(hold.path(), b"").unwrap();
        hold
    }

    /// The file to pass as `SCORE_HOLD_FILE`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("hold")
    }

    /// The pid of the host that last began a held call, once it has written it whole.
    pub fn host_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("hold.pid")).ok()?.trim().parse().ok()
    }

    /// Lets held calls (and any later one) go on.
    pub fn release(&self) {
        let _ = std::fs::remove_file(self.path());
    }
}

impl Default for Hold {
    fn default() -> Self {
        Hold::new()
    }
}

/// One isolated fleet on a RabbitMQ broker (the shared one unless a test brings its own
/// node): its own queue prefix, dead-letter queue and catalog exchange, so tests running at
/// once never see each other's messages.
pub struct Fleet {
    pub name: String,
    pub broker_url: String,
    /// `None`: AMQP 0-9-1 (`bus.kind = "amqp"`); `Some(dialect)`: the AMQP 1.0 transport
    /// (`bus.kind = "servicebus"`) in that dialect, on the same broker.
    pub amqp1_dialect: Option<&'static str>,
    /// The Service Bus stand-in's connection string, for a fleet on it
    /// ([`Fleet::servicebus`]): the AMQP 1.0 transport in its Service Bus dialect.
    pub servicebus: Option<String>,
    /// Queues of the test's own models (beyond the fixtures'), deleted with the fleet.
    extra_queues: std::sync::Mutex<Vec<String>>,
}

pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The management API of the broker at [`BROKER_URL`] (HTTP, user guest).
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672/api";

/// `GET <MANAGEMENT_URL>/<path>` as JSON; fails the test unless it answers 2xx.
pub async fn management(client: &reqwest::Client, path: &str) -> Value {
    let response =
        client.get(format!("{MANAGEMENT_URL}/{path}")).basic_auth("guest", Some("guest")).send().await.unwrap_or_else(
            |e| panic!("RabbitMQ's management API ({MANAGEMENT_URL}; deploy/setup.sh test enables it): {e}"),
        );
    assert!(response.status().is_success(), "GET {MANAGEMENT_URL}/{path}: {}", response.status());
    response.json().await.unwrap()
}

impl Fleet {
    /// A fleet on the shared broker at [`BROKER_URL`].
    pub fn new(test: &str) -> Fleet {
        Fleet::on(test, BROKER_URL)
    }

    /// A fleet on the broker at `broker_url` (e.g. a [`BrokerNode`] of the test's own).
    pub fn on(test: &str, broker_url: &str) -> Fleet {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Fleet {
            name: format!("rfleet-test-{test}-{}-{nanos}", std::process::id()),
            broker_url: broker_url.to_string(),
            amqp1_dialect: None,
            servicebus: None,
            extra_queues: Default::default(),
        }
    }

    /// A fleet on the shared broker whose dispatchers and workers speak AMQP 1.0 to
    /// RabbitMQ's `rabbitmq_amqp1_0` plugin (`bus.kind = "servicebus"`, dialect `broker`);
    /// direct publishers and the test's own checks still use AMQP 0-9-1 on the same queues.
    pub fn amqp1(test: &str) -> Fleet {
        let mut fleet = Fleet::new(test);
        fleet.amqp1_dialect = Some("broker");
        fleet
    }

    /// Moves the fleet onto the Service Bus stand-in whose connection string is
    /// `connection_string` (`bus.kind = "servicebus"`, dialect `servicebus`); its queues
    /// must be [`Fleet::servicebus_queues`] of the fleet's [`Fleet::queue_prefix`].
    pub fn use_servicebus(&mut self, connection_string: String) {
        self.amqp1_dialect = Some("servicebus");
        self.servicebus = Some(connection_string);
    }

    /// The Service Bus queues the fixture models' workers consume: each model's name queue
    /// and, for a model with a version, its version queue (as `bus::amqp1::servicebus::
    /// entity_name` names them). Service Bus has no queues but those made beforehand.
    pub fn servicebus_queues(prefix: &str) -> Vec<String> {
        fixture_models()
            .into_iter()
            .flat_map(|(name, version)| {
                let versioned = version.map(|v| bus::amqp1::servicebus::entity_name(prefix, &name, Some(&v)));
                [Some(bus::amqp1::servicebus::entity_name(prefix, &name, None)), versioned].into_iter().flatten()
            })
            .collect()
    }

    pub fn queue_prefix(&self) -> String {
        format!("{}.model.", self.name)
    }

    /// Waits until `queue` exists on the fleet's broker with a consumer (a passive declare,
    /// through pika), at most `limit`; fails the test otherwise.
    pub fn await_consumer(&self, queue: &str, limit: Duration) {
        self.await_consumers(queue, 1, limit);
    }

    /// Waits until `queue` exists on the fleet's broker with at least `n` consumers, at
    /// most `limit`; fails the test otherwise.
    pub fn await_consumers(&self, queue: &str, n: u32, limit: Duration) {
        let script = format!(
            "import pika, sys\n\
             c = pika.BlockingConnection(pika.URLParameters('{url}'))\n\
             try:\n    n = c.channel().queue_declare('{queue}', passive=True).method.consumer_count\n\
             except pika.exceptions.ChannelClosedByBroker:\n    n = 0\n\
             sys.exit(0 if n >= {n} else 1)\n",
            url = self.broker_url
        );
        let consumed = poll_until(limit, || {
            Command::new("python3").args(["-c", &script]).status().is_ok_and(|status| status.success())
        });
        assert!(consumed, "fewer than {n} consumers on '{queue}' within {limit:?}");
    }

    /// Deletes the request queues of model `name` (the name queue and the given versions'
    /// queues) with the fleet too: for models a test makes itself.
    pub fn delete_queues_of(&self, name: &str, versions: &[&str]) {
        let mut queues = self.extra_queues.lock().unwrap();
        queues.push(format!("{}{name}", self.queue_prefix()));
        queues.extend(versions.iter().map(|v| format!("{}{name}@{v}", self.queue_prefix())));
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.name)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let kind = if self.amqp1_dialect.is_some() { "servicebus" } else { "amqp" };
        let amqp1 = self.amqp1_dialect.into_iter().flat_map(|dialect| {
            let reply_queue = match &self.servicebus {
                // The stand-in's one session-enabled reply queue (the settings' default).
                Some(_) => "rfleet.replies".to_string(),
                None => format!("{}.reply", self.name),
            };
            [
                ("RFLEET_BUS__SERVICEBUS__DIALECT", dialect.to_string()),
                ("RFLEET_BUS__SERVICEBUS__REPLY_QUEUE", reply_queue),
            ]
        });
        let servicebus = self.servicebus.iter().map(|text| ("RFLEET_BUS__SERVICEBUS__CONNECTION_STRING", text.clone()));
        [
            ("RFLEET_BUS__KIND", kind.to_string()),
            ("RFLEET_BUS__URL", self.broker_url.clone()),
            ("RFLEET_BUS__QUEUE_PREFIX", self.queue_prefix()),
            ("RFLEET_BUS__DEAD_LETTER_EXCHANGE", format!("{}.dead", self.name)),
            ("RFLEET_BUS__DEAD_LETTER_QUEUE", self.dead_letter_queue()),
            ("RFLEET_BUS__CATALOG_EXCHANGE", format!("{}.catalog", self.name)),
            ("RFLEET_BUS__ANNOUNCE_INTERVAL_MS", "500".to_string()),
        ]
        .into_iter()
        .chain(amqp1)
        .chain(servicebus)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Fleet {
    /// Deletes the fleet's queues and exchanges from the broker (best effort): those named
    /// after the fixture models, and on the shared broker every queue with the fleet's
    /// prefix that its management API lists (version queues, `<model>@<version>`, too),
    /// and the `amq.gen-*` queues RabbitMQ's AMQP 1.0 plugin made for the fleet's replies and
    /// catalog, which outlive their links (bound with keys `<fleet>.reply.*`, `<fleet>.catalog`).
    fn drop(&mut self) {
        if self.servicebus.is_some() {
            // Its queues live in the test's own stand-in, gone with it.
            return;
        }
        let listed = if self.broker_url == BROKER_URL {
            format!(
                "try:\n    import base64, json, urllib.request\n    r = urllib.request.Request('{MANAGEMENT_URL}/queues/%2f?columns=name', headers={{'Authorization': 'Basic ' + base64.b64encode(b'guest:guest').decode()}})\n\
                 \x20   names += [q['name'] for q in json.load(urllib.request.urlopen(r, timeout=10)) if q['name'].startswith('{prefix}')]\n\
                 \x20   r = urllib.request.Request('{MANAGEMENT_URL}/bindings/%2f', headers={{'Authorization': 'Basic ' + base64.b64encode(b'guest:guest').decode()}})\n\
                 \x20   names += [b['destination'] for b in json.load(urllib.request.urlopen(r, timeout=10)) if b['destination'].startswith('amq.gen-') and b['routing_key'].startswith('{name}.')]\n\
                 except Exception: pass\n",
                prefix = self.queue_prefix(),
                name = self.name
            )
        } else {
            String::new()
        };
        let script = format!(
            "import pika\nnames = {names:?}\n{listed}c = pika.BlockingConnection(pika.URLParameters('{url}'))\n\
             for name in set(names):\n    ch = c.channel()\n    try: ch.queue_delete(name)\n    except Exception: pass\n\
             for name in {exchanges:?}:\n    ch = c.channel()\n    try: ch.exchange_delete(name)\n    except Exception: pass\nc.close()\n",
            url = self.broker_url,
            names = self.queues(),
            exchanges = [format!("{}.dead", self.name), format!("{}.catalog", self.name)],
        );
        let _ = Command::new("python3").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

impl Fleet {
    /// The request queues of the fixture models and the dead-letter queue.
    fn queues(&self) -> Vec<String> {
        let prefix = self.queue_prefix();
        let mut queues: Vec<String> = fixture_models()
            .into_iter()
            .flat_map(|(name, version)| {
                let versioned = version.map(|v| bus::amqp::queue_name(&prefix, &name, Some(&v)));
                [Some(bus::amqp::queue_name(&prefix, &name, None)), versioned].into_iter().flatten()
            })
            .collect();
        // The version queues of `Versions`' rf_reg.
        queues.extend((1..=3).map(|v| format!("{}rf_reg@{v}", self.queue_prefix())));
        queues.extend(self.extra_queues.lock().unwrap().iter().cloned());
        queues.push(self.dead_letter_queue());
        queues
    }
}

/// The fixture models' names and versions, from their `model.toml` (a package without a
/// `name` is named after its directory).
fn fixture_models() -> Vec<(String, Option<String>)> {
    let Ok(entries) = std::fs::read_dir(fixtures().join("models")) else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| {
            let toml = std::fs::read_to_string(entry.path().join("model.toml")).unwrap_or_default();
            let field = |key: &str| {
                toml.lines().find_map(|line| {
                    let value = line.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
                    Some(value.trim_matches('"').to_string())
                })
            };
            (field("name").unwrap_or_else(|| entry.file_name().to_string_lossy().into_owned()), field("version"))
        })
        .collect()
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line the process has logged so far (started with `capture_logs`).
    pub fn logs(&self) -> String {
        self.logs.as_ref().expect("started without capture_logs").lock().clone()
    }

    /// The server's R host processes, read from `/proc`.
    pub fn host_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else { return pids };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                // A zombie awaiting its reaper is not a live host.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
                if comm.trim() == "rfleet-rhost" && !zombie {
                    pids.push(pid);
                }
            }
        }
        pids.sort_unstable();
        pids
    }

    pub fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&Server) -> bool) {
        assert!(poll_until(limit, || done(self)), "timed out after {limit:?} waiting for {what}");
    }

    /// Sends SIGKILL to the process (its R hosts die with it).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(limit)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0, "signal rfleet");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < limit, "rfleet did not exit within {limit:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = client.post(url).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer { status, headers, text: response.text().await.unwrap() }
}

pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    let response = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer { status, headers, text: response.text().await.unwrap() }
}

/// Runs one of the Python clients in `tests/clients/` and returns its JSON output.
pub fn run_client(script: &str, args: &[&str]) -> Value {
    let path = repo_root().join("tests/clients").join(script);
    let output = Command::new("python3").arg(&path).args(args).output().expect("run python3");
    assert!(
        output.status.success(),
        "{script} failed ({}); deploy/setup.sh test installs what it needs:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

/// Blocks until `done()` holds, checking every 100 ms, for at most `limit`; whether it held.
/// The blocking counterpart of [`wait_for`], for code outside a runtime (process and daemon
/// lifetimes).
pub fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `done()` holds, checking every few milliseconds; fails naming `what` once
/// `limit` has passed.
pub async fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The connections waiting in the kernel's accept queue of the socket that listens on
/// `port` of this machine, or `None` when none listens there (`/proc/net/tcp`, where a
/// listening socket's `rx_queue` is its accept queue). Zero once the server has accepted
/// every connection made to it: it holds them, the kernel no longer does.
pub fn accept_queue(port: u16) -> Option<usize> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("cannot read {table}: {e}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address (hex address:port), rem_address, st (0A: LISTEN), tx:rx queues.
            let [_, local, _, state, queues, ..] = fields[..] else { continue };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if state == "0A" && local_port == Some(port) {
                let rx = queues.split(':').nth(1).unwrap_or_else(|| panic!("{table}: queues {queues:?}"));
                return Some(usize::from_str_radix(rx, 16).unwrap_or_else(|e| panic!("{table}: rx_queue {rx}: {e}")));
            }
        }
    }
    None
}

/// The port of a server's `url` (`http://127.0.0.1:PORT`, or https).
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {url}"))
}

/// Waits until no socket listens on `port` any more: the server stopped accepting.
pub async fn wait_until_closed(port: u16) {
    wait_for(Duration::from_secs(30), &format!("the listener on port {port} to close"), || {
        accept_queue(port).is_none()
    })
    .await;
}

/// The 503 that a connection the server held at SIGTERM, before its request, is answered
/// (the dispatcher's `listener::SHUTTING_DOWN_MESSAGE`).
pub fn shutting_down() -> Value {
    serde_json::json!({"code": "unavailable", "message": "the server is shutting down; retry"})
}

/// Checks that `answer`, to a request sent during the drain, is a full answer: R's scores
/// (`expected`), or the 503 that says the server is shutting down (the connection was one
/// the listener still held) with when to retry. Anything else fails, naming `what`.
/// Whether it was the 503.
pub fn answered_in_full(answer: &Answer, expected: &Value, what: &str) -> bool {
    let json: Value =
        serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", answer.text));
    match answer.status {
        200 => assert_same(&json, expected, what),
        503 => {
            assert_eq!(json, shutting_down(), "{what}");
            assert_eq!(answer.header("retry-after"), Some("1"), "{what}: {}", answer.text);
            return true;
        }
        status => panic!("{what}: status {status}: {}", answer.text),
    }
    false
}

/// Sends `rows` to `POST /score` as one HTTP/1.1 request with `Connection: close` on `io`,
/// a connection made earlier, and reads the answer to the end. Fails, naming `what`, when
/// the connection ends in anything but a whole response: an EOF or reset (over TLS, an end
/// without the server's close_notify) means a request the server took was dropped.
pub async fn score_on<IO>(mut io: IO, rows: &str, what: &str) -> Answer
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /score HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{rows}",
        rows.len()
    );
    io.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{what}: cannot send the request: {e}"));
    let mut response = Vec::new();
    io.read_to_end(&mut response).await.unwrap_or_else(|e| panic!("{what}: the request was dropped: {e}"));
    let response = String::from_utf8(response).unwrap_or_else(|e| panic!("{what}: not an HTTP/1.1 response: {e}"));
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        panic!("{what}: the request was dropped: no response head in {response:?}")
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("{what}: status line {status_line:?}"));
    let mut headers = reqwest::header::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("{what}: header line {line:?}"));
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap();
        headers.append(name, value.trim().parse().unwrap());
    }
    Answer { status, headers, text: body.to_string() }
}

/// Clients sending requests to a server while it shuts down, and what became of them.
#[derive(Default)]
pub struct Drain {
    answered: AtomicUsize,
}

impl Drain {
    /// Sends `request`: `None` when the server never took it, because the connection was
    /// refused (the listener had closed) or reset with the request unread. A request the
    /// server read must be answered in full: any other failure is a taken request that was
    /// dropped, and fails the test.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Option<Answer> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() || reset_unread(&e) => return None,
            Err(e) => panic!("a request the server took was dropped: {e:?}"),
        };
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text().await.unwrap_or_else(|e| panic!("a taken request was cut off: {e:?}"));
        self.answered.fetch_add(1, Ordering::SeqCst);
        Some(Answer { status, headers, text })
    }
}

/// Whether the server closed the connection with our request unread: a socket closed with
/// data still unread in it answers with a reset (RFC 1122 4.2.2.13, as Linux does), so a
/// reset before any response means the request's bytes were thrown away, never read. This
/// is what a connection accepted just as the server began to shut down gets. A server that
/// read the request and then went away ends the connection cleanly, without an answer.
fn reset_unread(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe);
        }
        source = cause.source();
    }
    false
}

/// Sends SIGTERM to `server` while a request is in R and the `clients`, sending through
/// `drain`, are being answered: once they have had `after` answers, `send_held` sends a
/// request of `faulty` that `hold` keeps in R (the server serves `faulty` under some
/// route), and the signal comes when R has it. Checks that the held request, in flight at
/// the signal, is answered in full after it, and that the server exits 0.
pub async fn terminate_under_load(
    server: Server,
    drain: Arc<Drain>,
    clients: Vec<JoinHandle<()>>,
    after: usize,
    hold: &Hold,
    send_held: impl FnOnce() -> JoinHandle<Answer>,
) {
    wait_for(Duration::from_secs(120), "answers before SIGTERM", || drain.answered.load(Ordering::SeqCst) >= after)
        .await;
    let held = send_held();
    wait_for(Duration::from_secs(60), "the held request in R", || hold.host_pid().is_some()).await;
    server.signal(libc::SIGTERM);
    hold.release();
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert!(status.success(), "rfleet exited with {status} after SIGTERM");
    let held = held.await.expect("the held request");
    assert_eq!(held.status, 200, "the request in R at SIGTERM: {}", held.text);
    assert_same(&held.json(), &serde_json::json!([2 * Hold::X]), "the request in R at SIGTERM");
    for client in clients {
        client.await.expect("client task");
    }
}
