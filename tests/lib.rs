//! Support for rfleet's integration tests: fixture models made by R, a real `rfleet serve`
//! process on a free loopback port, and the comparison of answers with R's own `predict`.
//!
//! Everything here is real: R builds the fixture models and the expected predictions, the
//! server is the `rfleet` binary a user runs, and requests go over real sockets.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
    let script = repo_root().join("tests/fixtures/make_models.R");
    let text = std::fs::read(&script).expect("read make_models.R");
    // FNV-1a: a new script version gets a new directory.
    let hash = text.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    let root = target_dir().join("rfleet-fixtures");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(format!("{hash:016x}"));
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock fixtures");
    if !dir.join("done").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("Rscript").arg(&script).arg(&dir).status().expect("run Rscript (is R installed?)");
        assert!(status.success(), "make_models.R failed: {status}");
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
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<std::collections::BTreeSet<_>>();
            // jsonlite drops NA entries from row objects; rfleet writes them as null.
            let present = |o: &serde_json::Map<String, Value>| {
                o.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.clone()).collect::<std::collections::BTreeSet<_>>()
            };
            assert_eq!(present(a), keys(b), "{context}: columns differ");
            for (key, y) in b {
                assert_same(&a[key], y, &format!("{context}.{key}"));
            }
        }
        _ => assert_eq!(got, expected, "{context}"),
    }
}

/// A running `rfleet serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub n_hosts: usize,
    _dir: tempfile::TempDir,
}

/// How to start a server: models and settings as environment overrides.
pub struct ServerOptions {
    pub models: PathBuf,
    pub n_hosts: usize,
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn new(models: impl Into<PathBuf>) -> Self {
        ServerOptions { models: models.into(), n_hosts: 2, env: Vec::new() }
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn hosts(mut self, n: usize) -> Self {
        self.n_hosts = n;
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary("rfleet"));
        command
            .arg("serve")
            .arg("--models")
            .arg(&self.models)
            .args(["--listen", "127.0.0.1:0", "--hosts", &self.n_hosts.to_string()])
            .current_dir(dir.path())
            .env("RFLEET_LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start rfleet serve");
        let stdout = child.stdout.take().unwrap();
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(url) = line.strip_prefix("rfleet listening on ") {
                        let _ = url_tx.send(url.to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = url_rx.recv_timeout(Duration::from_secs(180)).expect("rfleet did not print its address in time");
        let server = Server { child, url, n_hosts: self.n_hosts, _dir: dir };
        server.wait_until(Duration::from_secs(180), "all R hosts up", |s| s.host_pids().len() == s.n_hosts);
        server
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
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

pub async fn post(client: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> Answer {
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
