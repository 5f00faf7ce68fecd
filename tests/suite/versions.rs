//! Model versions end to end (issue 9), with real R and, for the fleet, the real broker:
//! a rolling update of the workers under load, pinned requests, traffic splits and
//! mirrors from a traffic file changed without a restart, several versions in one R host,
//! packages dropped into (and removed from) a running worker, and a corrupt package beside
//! good ones. Every answer is checked against R's own `predict` of the version that the
//! `x-rfleet-model-version` header names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use support::{
    client, copy_package, fixtures, get, models_dir, post, wait_for, Answer, Fleet, Server, ServerOptions, Versions,
};

/// One answered request: which row, when it was sent, and the answer.
struct Sent {
    row: usize,
    sent: Instant,
    answer: Answer,
}

/// Clients that send one row each to `url` in a loop until stopped, keeping every answer.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Sent>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, rows: Vec<Value>, n_clients: usize, headers: Vec<(&'static str, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..n_clients)
            .map(|c| {
                let (url, rows, stop, answers, headers) =
                    (url.clone(), rows.clone(), stop.clone(), answers.clone(), headers.clone());
                tokio::spawn(async move {
                    let http = client();
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let mut i = c;
                    while !stop.load(Ordering::SeqCst) {
                        let row = i % rows.len();
                        let sent = Instant::now();
                        let answer = post(&http, &url, json!([rows[row]]).to_string(), &headers).await;
                        answers.lock().push(Sent { row, sent, answer });
                        i += n_clients;
                    }
                })
            })
            .collect();
        Load { stop, answers, clients }
    }

    fn count(&self) -> usize {
        self.answers.lock().len()
    }

    /// Answers so far by the version that answered (any answer without the header counts
    /// under "").
    fn by_version(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for sent in self.answers.lock().iter() {
            *counts.entry(sent.answer.header("x-rfleet-model-version").unwrap_or("").to_string()).or_default() += 1;
        }
        counts
    }

    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.await.expect("client task");
        }
        Arc::try_unwrap(self.answers).ok().expect("clients done").into_inner()
    }
}

async fn wait_ready(http: &reqwest::Client, server: &Server) {
    let url = format!("{}/ready", server.url);
    let start = Instant::now();
    while get(http, &url).await.status != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `GET /models` entries of `name`.
async fn entries(http: &reqwest::Client, server: &Server, name: &str) -> Vec<Value> {
    let models = get(http, &format!("{}/models", server.url)).await;
    assert_eq!(models.status, 200, "{}", models.text);
    models.json().as_array().expect("a list").iter().filter(|m| m["name"] == name).cloned().collect()
}

/// Waits until `GET /models` lists `name` at `version` with live R hosts.
async fn wait_live(http: &reqwest::Client, server: &Server, name: &str, version: &str) {
    let start = Instant::now();
    loop {
        let live = entries(http, server, name)
            .await
            .iter()
            .any(|m| m["version"] == version && m["live_hosts"].as_u64().unwrap_or(0) > 0);
        if live {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{name} version {version} never became live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario of issue 9 over RabbitMQ: v1 workers under load from 8 clients, a v2
/// worker started, the v1 workers stopped with SIGTERM one by one. No client sees an
/// error, every answer is R's for the version that answered, traffic moves to v2 while
/// v1 is still up, and what is sent after the last v1 worker has gone is answered by v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_of_the_workers_is_invisible_to_clients() {
    let versions = Versions::load();
    let fleet = Fleet::new("rolling");
    let (v1, v2) = (models_dir(&[&versions.package("1")]), models_dir(&[&versions.package("2")]));
    let old: Vec<Server> = (0..2).map(|_| ServerOptions::fleet("worker", v1.path(), &fleet).start()).collect();
    let dispatcher = ServerOptions::fleet("dispatcher", v1.path(), &fleet).start();
    let http = client();
    wait_ready(&http, &dispatcher).await;
    wait_live(&http, &dispatcher, "rf_reg", "1").await;

    let load = Load::start(format!("{}/models/rf_reg/score", dispatcher.url), versions.rows.clone(), 8, Vec::new());
    wait_for(Duration::from_secs(60), "answers from v1", || load.count() >= 40).await;
    let new = ServerOptions::fleet("worker", v2.path(), &fleet).start();
    // Unpinned traffic follows the live hosts: v2 takes a share while v1 still serves.
    wait_for(Duration::from_secs(60), "answers from v2 beside v1", || {
        load.by_version().get("2").copied().unwrap_or(0) >= 10
    })
    .await;
    for worker in old {
        let status = tokio::task::spawn_blocking(move || worker.terminate(Duration::from_secs(60))).await.unwrap();
        assert!(status.success(), "a v1 worker exited with {status} after SIGTERM");
    }
    let v1_gone = Instant::now();
    let answered = load.count();
    wait_for(Duration::from_secs(60), "answers after the last v1 worker left", || load.count() >= answered + 40).await;
    let answers = load.stop().await;

    let mut counts = BTreeMap::<String, usize>::new();
    for (i, sent) in answers.iter().enumerate() {
        let version = versions.check(&sent.answer, sent.row, &format!("request {i}"));
        if sent.sent > v1_gone {
            assert_eq!(version, "2", "request {i} was sent after every v1 worker had gone");
        }
        *counts.entry(version).or_default() += 1;
    }
    assert!(counts.get("1").copied().unwrap_or(0) >= 40 && counts.get("2").copied().unwrap_or(0) >= 50, "{counts:?}");
    drop(new);
}

/// One worker with one R host holding versions 1 and 2: pinned requests (route, OIP,
/// Azure ML's deployment header) reach their version only; unpinned ones the highest it
/// holds; an unknown version is a 404 naming the live ones.
#[tokio::test]
async fn one_r_host_serves_two_versions_and_pins_reach_theirs() {
    let versions = Versions::load();
    let dir = models_dir(&[&versions.package("1"), &versions.package("2")]);
    let server = ServerOptions::new(dir.path()).hosts(1).start();
    assert_eq!(server.host_pids().len(), 1);
    let http = client();
    let listed: Vec<Value> = entries(&http, &server, "rf_reg").await.iter().map(|m| m["version"].clone()).collect();
    assert_eq!(listed, [json!("1"), json!("2")]);

    for (row, body) in versions.rows.iter().enumerate() {
        let body = json!([body]).to_string();
        for version in ["1", "2"] {
            let pinned =
                post(&http, &format!("{}/models/rf_reg/versions/{version}/score", server.url), body.clone(), &[]).await;
            assert_eq!(versions.check(&pinned, row, "the version route"), version);
            let deployment = post(
                &http,
                &format!("{}/models/rf_reg/score", server.url),
                body.clone(),
                &[("azureml-model-deployment", version)],
            )
            .await;
            assert_eq!(versions.check(&deployment, row, "azureml-model-deployment"), version);
        }
        let unpinned = post(&http, &format!("{}/models/rf_reg/score", server.url), body.clone(), &[]).await;
        assert_eq!(
            versions.check(&unpinned, row, "unpinned"),
            "2",
            "unpinned requests go to the highest version a worker holds"
        );
    }

    // The Open Inference Protocol's version route, and its model_version field.
    let row = &versions.rows[0];
    let inputs: Vec<Value> = ["x1", "x2", "grp", "cnt"]
        .iter()
        .map(|name| {
            let (datatype, data) = match &row[name] {
                Value::String(s) => ("BYTES", json!([s])),
                value => ("FP64", json!([value])),
            };
            json!({"name": name, "shape": [1], "datatype": datatype, "data": data})
        })
        .collect();
    let infer = post(
        &http,
        &format!("{}/v2/models/rf_reg/versions/1/infer", server.url),
        json!({"inputs": inputs}).to_string(),
        &[],
    )
    .await;
    assert_eq!(infer.status, 200, "{}", infer.text);
    let infer = infer.json();
    assert_eq!(infer["model_version"], "1");
    support::assert_same(&infer["outputs"][0]["data"], &json!([versions.expected["1"][0]]), "OIP version 1");

    let unknown =
        post(&http, &format!("{}/models/rf_reg/versions/9/score", server.url), json!([row]).to_string(), &[]).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    let message = unknown.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("version '9'") && message.contains("1, 2"), "{message}");
    let header = post(
        &http,
        &format!("{}/models/rf_reg/score", server.url),
        json!([row]).to_string(),
        &[("azureml-model-deployment", "9")],
    )
    .await;
    assert_eq!(header.status, 404, "{}", header.text);
}

/// A traffic file splits unpinned traffic 90/10 between versions 1 and 2 and mirrors a
/// share to version 3, whose answers are compared and counted but never returned; a new
/// traffic file takes effect without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_splits_and_mirrors_follow_the_traffic_file() {
    let versions = Versions::load();
    let dir = models_dir(&[&versions.package("1"), &versions.package("2"), &versions.package("3")]);
    let traffic = tempfile::tempdir().unwrap();
    let traffic_file = traffic.path().join("traffic.toml");
    write_traffic(
        &traffic_file,
        "[rf_reg]\nweights = { \"1\" = 90, \"2\" = 10 }\nmirror = { version = \"3\", percent = 20 }\n",
    );
    let server = ServerOptions::new(dir.path()).env("RFLEET_MODELS__TRAFFIC_FILE", traffic_file.display()).start();
    let http = client();

    let url = format!("{}/models/rf_reg/score", server.url);
    let n = 1000;
    let mut counts = BTreeMap::<String, usize>::new();
    // Eight clients, each sending its share one request at a time.
    let n_clients = 8;
    let tasks: Vec<_> = (0..n_clients)
        .map(|c| {
            let (http, url, rows) = (http.clone(), url.clone(), versions.rows.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in (c..n).step_by(n_clients) {
                    let row = i % rows.len();
                    answers.push((row, post(&http, &url, json!([rows[row]]).to_string(), &[]).await));
                }
                answers
            })
        })
        .collect();
    let mut answers: Vec<(usize, Answer)> = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("client task"));
    }
    for (i, (row, answer)) in answers.iter().enumerate() {
        *counts.entry(versions.check(answer, *row, &format!("request {i}"))).or_default() += 1;
    }
    // Binomial(1000, 0.1): mean 100, standard deviation 9.5; 4.5 of them either side.
    let v2 = counts.get("2").copied().unwrap_or(0);
    assert!((57..=143).contains(&v2), "version 2 answered {v2} of {n} under a 10 % weight: {counts:?}");
    assert_eq!(counts.get("3"), None, "the mirror's answers are never returned: {counts:?}");

    // Every copy sent is accounted for, and version 3 answers differently from 1 and 2.
    let start = Instant::now();
    let mirrored = loop {
        let entry = entries(&http, &server, "rf_reg").await;
        let mirrored = entry.iter().find_map(|m| m.get("mirrored").filter(|m| !m.is_null()).cloned());
        let mirrored = mirrored.expect("mirror counts in GET /models");
        let count = |key: &str| mirrored[key].as_u64().unwrap_or(0);
        // A dropped copy was never sent: every sent one ends equal, different or failed.
        let settled = count("equal") + count("different") + count("failed");
        if count("sent") > 0 && settled == count("sent") {
            break mirrored;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "mirror copies never settled: {mirrored}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sent = mirrored["sent"].as_u64().unwrap();
    assert!((100..=300).contains(&sent), "20 % of {n} requests mirrored: {mirrored}");
    assert!(mirrored["different"].as_u64().unwrap() > 0, "version 3 differs from 1 and 2: {mirrored}");
    assert_eq!(mirrored["failed"], 0, "{mirrored}");

    // Blue/green: everything to version 2, without a restart.
    write_traffic(&traffic_file, "[rf_reg]\nweights = { \"2\" = 100 }\n");
    let body = json!([versions.rows[0]]).to_string();
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 30 {
        let answer = post(&http, &url, body.clone(), &[]).await;
        in_a_row = if versions.check(&answer, 0, "after the switch") == "2" { in_a_row + 1 } else { 0 };
        assert!(start.elapsed() < Duration::from_secs(20), "the new traffic file was not followed");
    }
}

/// Replaces the traffic file atomically (as Kubernetes updates a mounted ConfigMap).
fn write_traffic(path: &Path, text: &str) {
    let staging = path.with_extension("partial");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// A package dropped into a running worker's directory is served within 10 s while other
/// traffic goes on without an error; one changed in place is served anew; a removed one is
/// answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packages_are_loaded_and_forgotten_without_a_restart() {
    let versions = Versions::load();
    let lm = support::case(&fixtures(), "lm");
    let dir = models_dir(&[&fixtures().join("models/lm"), &versions.package("1")]);
    let server = ServerOptions::new(dir.path()).env("RFLEET_MODELS__POLL_INTERVAL_MS", 200).start();
    let http = client();
    let others = Load::start(format!("{}/models/lm/score", server.url), lm.rows.clone(), 2, Vec::new());
    wait_for(Duration::from_secs(30), "lm answers", || others.count() >= 10).await;

    copy_package(&versions.package("2"), &dir.path().join("rf_reg_v2"));
    let dropped = Instant::now();
    let pinned = |version: &str| format!("{}/models/rf_reg/versions/{version}/score", server.url);
    let body = json!([versions.rows[1]]).to_string();
    loop {
        let answer = post(&http, &pinned("2"), body.clone(), &[]).await;
        if answer.status == 200 {
            assert_eq!(versions.check(&answer, 1, "the dropped-in version"), "2");
            break;
        }
        assert_eq!(answer.status, 404, "before it is loaded, version 2 is unknown: {}", answer.text);
        assert!(dropped.elapsed() < Duration::from_secs(10), "version 2 not served within 10 s of being dropped in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Changed in place: version 2's model.rds retrained (here: version 3's forest) is
    // picked up without a restart, under the same version.
    let retrained = dir.path().join("rf_reg_v2/.model.rds.partial");
    std::fs::copy(versions.package("3").join("model.rds"), &retrained).unwrap();
    std::fs::rename(&retrained, dir.path().join("rf_reg_v2/model.rds")).unwrap();
    let changed = Instant::now();
    loop {
        let answer = post(&http, &pinned("2"), body.clone(), &[]).await;
        assert_eq!(answer.status, 200, "version 2 while its package changes: {}", answer.text);
        assert_eq!(answer.header("x-rfleet-model-version"), Some("2"));
        let value = answer.json()[0].as_f64().expect("a prediction");
        if (value - versions.expected["3"][1]).abs() <= 1e-9 {
            break;
        }
        support::assert_same(&answer.json(), &json!([versions.expected["2"][1]]), "version 2 until it is reloaded");
        assert!(changed.elapsed() < Duration::from_secs(10), "the changed package not served within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::remove_dir_all(dir.path().join("rf_reg_v1")).unwrap();
    let removed = Instant::now();
    loop {
        let answer = post(&http, &pinned("1"), body.clone(), &[]).await;
        if answer.status == 404 {
            break;
        }
        assert_eq!(versions.check(&answer, 1, "version 1 until it is forgotten"), "1");
        assert!(removed.elapsed() < Duration::from_secs(10), "version 1 still served 10 s after its removal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unpinned = post(&http, &format!("{}/models/rf_reg/score", server.url), body, &[]).await;
    assert_eq!(unpinned.status, 200, "{}", unpinned.text);
    assert_eq!(unpinned.header("x-rfleet-model-version"), Some("2"), "unpinned after the removal");

    let answers = others.stop().await;
    for (i, sent) in answers.iter().enumerate() {
        assert_eq!(sent.answer.status, 200, "lm request {i} during the reloads: {}", sent.answer.text);
        support::assert_same(&sent.answer.json(), &json!([lm.expected[sent.row]]), &format!("lm request {i}"));
    }
}

/// One corrupt `model.rds` beside two good packages: the good ones serve, the corrupt
/// one is listed with R's error and its route answers 503 naming it; with
/// `models.strict` the service refuses to start, with that error.
#[tokio::test]
async fn a_corrupt_package_is_reported_and_the_others_serve() {
    let versions = Versions::load();
    let lm = support::case(&fixtures(), "lm");
    let dir = models_dir(&[&fixtures().join("models/lm"), &versions.package("1")]);
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("model.rds"), b"this is not an R data file\n").unwrap();

    let server = ServerOptions::new(dir.path()).start();
    let http = client();
    let answer =
        post(&http, &format!("{}/models/rf_reg/score", server.url), json!([versions.rows[0]]).to_string(), &[]).await;
    versions.check(&answer, 0, "a good package beside a corrupt one");
    let answer = post(&http, &format!("{}/models/lm/score", server.url), json!(lm.rows).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    support::assert_same(&answer.json(), &Value::Array(lm.expected.clone()), "lm beside a corrupt package");

    let listed = entries(&http, &server, "broken").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "failed", "{listed:?}");
    let error = listed[0]["error"].as_str().expect("the load error").to_string();
    // R's own readRDS message for a file that is not an R data file.
    assert!(error.contains("model 'broken'") && error.contains("unknown input format"), "{error}");
    let refused = post(&http, &format!("{}/models/broken/score", server.url), json!([{"x": 1}]).to_string(), &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    let message = refused.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("failed to load") && message.contains("unknown input format"), "{message}");
    drop(server);

    let strict = std::process::Command::new(support::binary("rfleet"))
        .args(["serve", "--models"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--hosts", "1"])
        .env("RFLEET_MODELS__STRICT", "true")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rfleet serve");
    assert!(!strict.status.success(), "strict start-up with a corrupt package must fail");
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(
        stderr.contains("model 'broken'") && stderr.contains("unknown input format"),
        "the start-up error names the package and R's error: {stderr}"
    );
}

/// Direct publishers over RabbitMQ (`deploy/examples/publish.py`, pika): a request pinned
/// to a version goes to that version's queue and is scored by it; an unpinned one on the
/// name queue, as publishers sent before versions had queues, is scored by the highest
/// version the worker holds. The reply says which.
#[test]
fn direct_publishers_reach_version_queues_and_the_name_queue() {
    let versions = Versions::load();
    let fleet = Fleet::new("version-queues");
    let dir = models_dir(&[&versions.package("1"), &versions.package("2")]);
    let worker = ServerOptions::fleet("worker", dir.path(), &fleet).start();
    let rows = json!([versions.rows[2]]);
    for (pin, version) in [(Some("1"), "1"), (Some("2"), "2"), (None, "2")] {
        let extra: Vec<&str> = pin.map(|v| vec!["--model-version", v]).unwrap_or_default();
        let reply = crate::amqp::publish(&fleet, "rf_reg", &rows, &extra);
        let queue = match pin {
            Some(v) => format!("{}rf_reg@{v}", fleet.queue_prefix()),
            None => format!("{}rf_reg", fleet.queue_prefix()),
        };
        assert_eq!(reply["queue"], queue, "{reply}");
        assert_eq!(reply["model_version"], version, "{reply}");
        let values = &reply["reply"]["outcome"]["predictions"]["columns"][0]["values"];
        support::assert_same(values, &json!([versions.expected[version][2]]), &format!("pinned {pin:?}"));
    }
    drop(worker);
}
