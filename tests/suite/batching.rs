//! Throughput: queued requests batched into one R call, requests split across hosts by
//! rows or by a forest's trees, and the policy that chooses. Whatever path a request
//! takes (the `x-rfleet-path` header says which), its answer is R's own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_same, cases, client, fixtures, get, post, Answer, Case, Server, ServerOptions};

/// A tiny deterministic generator (xorshift64), so a failing mix can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n as u64) as usize
    }
}

/// One request: some consecutive rows of a fixture case, and R's answer for them.
#[derive(Clone)]
struct Probe {
    name: String,
    url: String,
    body: String,
    expected: Value,
}

impl Probe {
    fn new(server: &Server, case: &Case, rows: std::ops::Range<usize>, query: &[&str]) -> Probe {
        let mut params: Vec<String> = case.predict_type.iter().map(|t| format!("type={t}")).collect();
        params.extend(query.iter().map(|q| q.to_string()));
        let mut url = format!("{}/models/{}/score", server.url, case.model);
        if !params.is_empty() {
            url = format!("{url}?{}", params.join("&"));
        }
        Probe {
            name: format!("{} rows {rows:?}", case.name),
            url,
            body: Value::Array(case.rows[rows.clone()].to_vec()).to_string(),
            expected: Value::Array(case.expected[rows].to_vec()),
        }
    }

    /// Sends the request and checks R's answer; returns the path it took.
    async fn check(&self, client: &reqwest::Client) -> String {
        let answer = post(client, &self.url, self.body.clone(), &[]).await;
        assert_eq!(answer.status, 200, "{}: {}", self.name, answer.text);
        assert_same(&answer.json(), &self.expected, &self.name);
        path(&answer)
    }
}

fn path(answer: &Answer) -> String {
    answer
        .header("x-rfleet-path")
        .unwrap_or_else(|| panic!("no x-rfleet-path header: {:?}", answer.headers))
        .to_string()
}

fn is_split(path: &str) -> bool {
    path.contains("rows:") || path.contains("trees:")
}

/// Sends every probe, `concurrency` at a time, checking each answer; returns the paths.
async fn run_all(probes: Vec<Probe>, concurrency: usize) -> Vec<String> {
    let probes = Arc::new(probes);
    let mut clients = Vec::new();
    for client_no in 0..concurrency {
        let probes = probes.clone();
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut paths = Vec::new();
            for probe in probes.iter().skip(client_no).step_by(concurrency) {
                paths.push(probe.check(&client).await);
            }
            paths
        }));
    }
    let mut paths = Vec::new();
    for client in clients {
        paths.extend(client.await.expect("client task"));
    }
    paths
}

/// The served models that can be split by trees, with what `/models` says of each forest.
async fn forests(server: &Server) -> BTreeMap<String, Value> {
    let models = get(&client(), &format!("{}/models", server.url)).await.json();
    models
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["forest"].is_null())
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["forest"].clone()))
        .collect()
}

/// The fixtures' forests (`make_models.R`) among `names`: every randomForest and ranger
/// model, with its trees and, for a classification, its classes in level order. gbm's
/// boosted trees are no forest: they add up, they are not averaged.
fn fixture_forests(names: &[&str]) -> BTreeMap<String, Value> {
    let iris = json!(["setosa", "versicolor", "virginica"]);
    [
        ("rf_reg", json!({ "n_trees": 200, "classes": null })),
        ("rf_class", json!({ "n_trees": 200, "classes": iris })),
        ("rf_xy", json!({ "n_trees": 200, "classes": null })),
        ("ranger_reg", json!({ "n_trees": 100, "classes": null })),
        ("ranger_class", json!({ "n_trees": 500, "classes": iris })),
    ]
    .into_iter()
    .filter(|(name, _)| names.contains(name))
    .map(|(name, forest)| (name.to_string(), forest))
    .collect()
}

/// Every fixture model's name.
fn all_models(fixtures: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures.join("models"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn counts(paths: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for path in paths {
        *counts.entry(path.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_mixes_batched_and_split_match_r() {
    let fixtures = fixtures();
    let server = ServerOptions::new(fixtures.join("models"))
        .env("RFLEET_WORKERS__MAX_BATCH_ROWS", 16)
        .env("RFLEET_WORKERS__MAX_BATCH_WAIT_MS", 20)
        .env("RFLEET_WORKERS__SPLIT", "always")
        .env("RFLEET_WORKERS__SPLIT_MIN_ROWS", 10)
        .start();
    let cases: Vec<Case> = cases(&fixtures).into_iter().filter(|c| c.model != "faulty").collect();
    assert!(cases.len() >= 8, "too few fixture cases");
    // Forest detection is checked, not trusted: the tree-splitting checks below run over
    // the fixtures' known forests.
    let names = all_models(&fixtures);
    let expected_forests = fixture_forests(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(expected_forests.len(), 5, "the fixtures' forests: {names:?}");
    let forests = forests(&server).await;
    assert_eq!(forests, expected_forests, "forests listed by /models");
    let client = client();

    // Alone, `always` splits many rows of any model by rows, across every live host. The
    // hosts' processes exist before R has loaded the models: wait until both take part.
    let lm = cases.iter().find(|c| c.name == "lm").expect("lm case");
    let many_rows = Case {
        rows: [lm.rows.clone(), lm.rows.clone()].concat(),
        expected: [lm.expected.clone(), lm.expected.clone()].concat(),
        ..lm.clone()
    };
    let lone = Probe::new(&server, &many_rows, 0..many_rows.rows.len(), &[]);
    let started = Instant::now();
    while lone.check(&client).await != "rows:2" {
        assert!(started.elapsed() < Duration::from_secs(120), "{} rows of lm alone never split", many_rows.rows.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Random slices of random cases, sent by many clients at once.
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let mut probes: Vec<Probe> = (0..96)
        .map(|_| {
            let case = &cases[rng.below(cases.len())];
            let n = case.rows.len();
            let start = rng.below(n);
            let len = 1 + rng.below(n - start);
            Probe::new(&server, case, start..start + len, &[])
        })
        .collect();
    // A burst of single rows for one model, which the batch wait coalesces.
    let rf_reg = cases.iter().find(|c| c.name == "rf_reg").expect("rf_reg case");
    probes.extend((0..16).map(|i| Probe::new(&server, rf_reg, i % 6..i % 6 + 1, &[])));
    let mut paths = run_all(probes, 16).await;

    // Alone, a few rows of a forest are split by trees.
    let forest_cases: Vec<&Case> = cases.iter().filter(|c| expected_forests.contains_key(&c.model)).collect();
    assert_eq!(forest_cases.len(), 6, "cases of the forests (rf_class twice: labels and prob)");
    for case in forest_cases {
        let lone = Probe::new(&server, case, 0..1, &[]).check(&client).await;
        assert_eq!(lone, "trees:2", "one row of {} alone", case.name);
        paths.push(lone);
    }

    let counts = counts(&paths);
    eprintln!("forests: {forests:?}; paths: {counts:?}");
    assert!(paths.iter().any(|p| p.starts_with("batch:")), "no request was batched: {counts:?}");
    assert!(paths.iter().any(|p| p.starts_with("batch:") && is_split(p)), "no batch was split: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_fails_alone_in_its_batch() {
    let counter = tempfile::NamedTempFile::new().unwrap();
    // One host and a batch wait: the requests sent together share one R call.
    let server = ServerOptions::new(fixtures().join("models"))
        .hosts(1)
        .env("RFLEET_WORKERS__MAX_BATCH_WAIT_MS", 300)
        .env("SCORE_COUNTER_FILE", counter.path().display())
        .start();
    let url = format!("{}/models/faulty/score", server.url);
    let xs = [1.0, 2.5, -1.0, 4.0, 0.0, 7.0];
    let mut requests = Vec::new();
    for x in xs {
        let url = url.clone();
        requests
            .push(tokio::spawn(async move { (x, post(&client(), &url, json!([{ "x": x }]).to_string(), &[]).await) }));
    }
    for request in requests {
        let (x, answer) = request.await.unwrap();
        if x < 0.0 {
            assert_eq!(answer.status, 422, "x = {x}: {}", answer.text);
            assert!(answer.text.contains("deliberate failure: x is negative"), "{}", answer.text);
        } else {
            assert_eq!(answer.status, 200, "x = {x}: {}", answer.text);
            assert_same(&answer.json(), &json!([x * 2.0]), &format!("x = {x}"));
        }
    }
    // The predict_fn writes each call's row count: one call held several requests.
    let calls = std::fs::read_to_string(counter.path()).unwrap();
    let rows: Vec<usize> = calls.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(rows.iter().any(|&n| n > 1), "no R call held more than one request: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_beat_batch_waits() {
    let counter = tempfile::NamedTempFile::new().unwrap();
    let server = ServerOptions::new(fixtures().join("models"))
        .hosts(1)
        .env("RFLEET_WORKERS__MAX_BATCH_WAIT_MS", 2000)
        .env("RFLEET_WORKERS__HOST_TIMEOUT_MS", 2000)
        .env("SCORE_COUNTER_FILE", counter.path().display())
        .start();
    let client = client();
    let url = format!("{}/models/faulty/score", server.url);

    // Alone, a request waits for companions at most half its time to deadline, not the
    // two seconds the batch wait allows.
    let sent = Instant::now();
    let answer = post(&client, &url, json!([{ "x": 1 }]).to_string(), &[("x-rfleet-timeout-ms", "300")]).await;
    assert!(answer.status == 200 || answer.status == 504, "{}", answer.text);
    assert!(sent.elapsed() < Duration::from_millis(2000), "held {:?}, past its deadline", sent.elapsed());
    if answer.status == 200 {
        assert_eq!(answer.header("x-rfleet-path"), Some("whole"));
    }

    // Queued behind a request that hangs the only host, a request whose deadline passes is
    // answered 504 and never scored (it has 3 rows: no R call of 3 rows may appear).
    let calls = || std::fs::read_to_string(counter.path()).unwrap().split_whitespace().count();
    let before = calls();
    let hang = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { post(&client, &url, json!([{ "x": 777 }]).to_string(), &[]).await })
    };
    // The predict_fn counts the call before it hangs: then the host is busy.
    server.wait_until(Duration::from_secs(30), "the hanging call", |_| calls() > before);
    let rows = json!([{ "x": 1 }, { "x": 2 }, { "x": 3 }]).to_string();
    let late = post(&client, &url, rows, &[("x-rfleet-timeout-ms", "300")]).await;
    assert_eq!(late.status, 504, "{}", late.text);
    let hang = hang.await.unwrap();
    assert_eq!(hang.status, 500, "{}", hang.text);
    server.wait_until(Duration::from_secs(120), "a replacement host", |s| s.host_pids().len() == 1);
    let good = post(&client, &url, json!([{ "x": 5 }]).to_string(), &[]).await;
    assert_eq!(good.status, 200, "{}", good.text);
    let calls = std::fs::read_to_string(counter.path()).unwrap();
    assert!(!calls.split_whitespace().any(|n| n == "3"), "the expired request was scored: calls {calls:?}");
}

/// A models directory with copies of some fixture packages, and `extra` packages made of a
/// fixture's `model.rds` with the given `model.toml`.
fn models_dir(fixtures: &Path, copies: &[&str], extra: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| support::copy_package(&fixtures.join("models").join(from), &dir.path().join(to));
    for name in copies {
        copy(name, name);
    }
    for (name, from, toml) in extra {
        copy(from, name);
        std::fs::write(dir.path().join(name).join("model.toml"), toml).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_when_idle_whole_under_load() {
    let fixtures = fixtures();
    let models = models_dir(&fixtures, &["rf_reg", "lm"], &[("lm_never", "lm", "split = \"never\"\n")]);
    let server = ServerOptions::new(models.path()).env("RFLEET_WORKERS__SPLIT_MIN_ROWS", 4).start();
    let client = client();
    assert_eq!(forests(&server).await, fixture_forests(&["rf_reg"]), "forests listed by /models");
    let rf_reg = support::case(&fixtures, "rf_reg");
    let lm = support::case(&fixtures, "lm");
    let lm_never = Case { model: "lm_never".into(), ..lm.clone() };

    // A lone request on an idle server splits: by rows when it has enough of them, by
    // trees for a forest; unless the request or its model says never. (The first waits
    // until both hosts are ready: their processes exist before R has loaded the models.)
    let lone = Probe::new(&server, &lm, 0..8, &[]);
    let started = Instant::now();
    while lone.check(&client).await != "rows:2" {
        assert!(started.elapsed() < Duration::from_secs(120), "a lone request never split");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Probe::new(&server, &lm, 0..3, &[]).check(&client).await, "whole");
    assert_eq!(Probe::new(&server, &lm, 0..8, &["split=never"]).check(&client).await, "whole");
    assert_eq!(Probe::new(&server, &lm_never, 0..8, &[]).check(&client).await, "whole");
    assert_eq!(Probe::new(&server, &lm_never, 0..8, &["split=always"]).check(&client).await, "rows:2");
    assert_eq!(Probe::new(&server, &rf_reg, 0..1, &[]).check(&client).await, "trees:2");
    let bad = post(&client, &format!("{}/models/lm/score?split=sometimes", server.url), "[{}]", &[]).await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    // Many clients at once: requests queue, and queued requests go whole (or batched).
    let probes: Vec<Probe> = (0..240)
        .map(|i| {
            if i % 2 == 0 {
                Probe::new(&server, &rf_reg, i % 6..i % 6 + 1, &[])
            } else {
                Probe::new(&server, &lm, i % 8..i % 8 + 1, &[])
            }
        })
        .collect();
    let total = probes.len();
    let paths = run_all(probes, 24).await;
    let counts = counts(&paths);
    eprintln!("paths under load: {counts:?}");
    let split = paths.iter().filter(|p| is_split(p)).count();
    // Only a request that finds both hosts idle and nothing queued splits: the first of the
    // burst, and some of the last ones as the clients finish.
    assert!(split * 5 < total, "{split} of {total} requests were split under load: {counts:?}");
    assert!(paths.iter().any(|p| p.starts_with("batch:")), "no request was batched under load: {counts:?}");
}
