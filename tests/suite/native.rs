//! The native engine against R, through the whole service: the same rows sent to one
//! `rfleet serve` with `?engine=native` and with `?engine=r` must come back with the same
//! JSON, number for number (serde_json writes the shortest text that reads back as the same
//! `f64`, so equal text is equal bits), for every forest kind the engine covers, on random
//! rows (proptest's generators: extreme values, every factor level, missing values where
//! gbm takes them) and on the fixtures' own cases, whose answers R computed when it made
//! them. Also: which engine `auto` picks and when (`GET /models`), what `?engine=native`
//! refuses, the cache of extracted forests, and a tampered cache that the self-check
//! catches, so that R keeps serving the model; `r_fallback = false`, under which the R
//! hosts check a forest themselves and let go of it (and the memory that frees).
//!
//! Real parts: R, the R hosts, the `rfleet` binary, HTTP. Labels of a tied vote are the one
//! place two answers may differ: R breaks such ties at random (and two R calls may differ
//! there too); randomForest's ties are recomputed from its votes and excused exactly,
//! ranger's are bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};
use support::{assert_same, cases, client, copy_package, fixtures, get, native_fixtures, post, Server, ServerOptions};

/// The main fixtures' forests, served beside the native fixtures'.
const FIXTURE_FORESTS: [&str; 6] = ["rf_reg", "rf_class", "rf_xy", "ranger_reg", "ranger_class", "gbm"];

/// Models the native engine covers, from both fixture sets.
const NATIVE: [&str; 14] = [
    "rf_reg",
    "rf_class",
    "rf_xy",
    "ranger_reg",
    "ranger_class",
    "gbm",
    "rf_bias",
    "rf_cutoff",
    "rf_ties",
    "ranger_partition",
    "ranger_class_votes",
    "ranger_prob",
    "gbm_bernoulli",
    "gbm_poisson",
];

/// How long a worker may take to load, extract and self-check every model.
const READY: Duration = Duration::from_secs(180);

/// A models directory with the named packages of `root/models`, renamed where asked.
fn packages(root: &Path, names: &[(&str, &str)], into: &Path) {
    for (from, to) in names {
        copy_package(&root.join("models").join(from), &into.join(to));
    }
}

/// Both fixture sets' forests in one directory (the native set's `ranger_class` renamed,
/// since the main set has one of that name), and lm, which has no forest.
fn all_forests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut main: Vec<(&str, &str)> = FIXTURE_FORESTS.iter().map(|m| (*m, *m)).collect();
    main.push(("lm", "lm"));
    packages(&fixtures(), &main, dir.path());
    let native = native_fixtures();
    for entry in std::fs::read_dir(native.join("models")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let to = if name == "ranger_class" { "ranger_class_votes".to_string() } else { name.clone() };
        packages(&native, &[(&name, &to)], dir.path());
    }
    dir
}

fn native_server(models: &Path, hosts: usize) -> Server {
    ServerOptions::new(models).env("RFLEET_WORKERS__ENGINE", "auto").hosts(hosts).capture_logs().start()
}

/// `GET /models`, by name.
async fn models(client: &reqwest::Client, server: &Server) -> HashMap<String, Value> {
    let answer = get(client, &format!("{}/models", server.url)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let list = answer.json();
    list.as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap().to_string(), m.clone())).collect()
}

/// Waits until every model in `names` has a settled engine (a self-check result, or no
/// native forest and a reason), and returns `GET /models` then.
async fn settled(client: &reqwest::Client, server: &Server, names: &[&str]) -> HashMap<String, Value> {
    let start = Instant::now();
    loop {
        let listed = models(client, server).await;
        let done = |m: &Value| {
            let engine = &m["engine"];
            !engine["self_check"].is_null() || (engine["native"].is_null() && !engine["reason"].is_null())
        };
        let waiting: Vec<&&str> = names.iter().filter(|n| !listed.get(**n).is_some_and(done)).collect();
        if waiting.is_empty() {
            return listed;
        }
        assert!(start.elapsed() < READY, "engines not settled after {READY:?}: {waiting:?}; GET /models: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Values of one column: what a client may send, from R's ordinary to the extremes a
/// threshold comparison must get right; `null` where the model takes missing values.
fn column_values(spec: &Value, missing: bool) -> BoxedStrategy<Value> {
    let levels: Vec<String> = spec["levels"]
        .as_array()
        .map(|l| l.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let values = match spec["type"].as_str().unwrap() {
        "factor" | "ordered" => proptest::sample::select(levels).prop_map(Value::from).boxed(),
        "integer" => prop_oneof![8 => -3i64..40, 1 => Just(i64::from(i32::MAX)), 1 => Just(-i64::from(i32::MAX))]
            .prop_map(Value::from)
            .boxed(),
        "logical" => any::<bool>().prop_map(Value::from).boxed(),
        _ => prop_oneof![
            12 => (-8.0f64..20.0).prop_map(|x| (x * 1000.0).round() / 1000.0),
            4 => -8.0f64..20.0,
            1 => Just(0.0),
            1 => Just(-0.0),
            1 => Just(1e300),
            1 => Just(-1e300),
            1 => Just(f64::MIN_POSITIVE),
            1 => Just(-2.2250738585072014e-308),
        ]
        .prop_map(|x| json!(x))
        .boxed(),
    };
    if missing {
        prop_oneof![9 => values, 1 => Just(Value::Null)].boxed()
    } else {
        values
    }
}

/// Random batches of rows for a model's schema: 1 to 40 rows each.
fn rows_for(schema: &Value, missing: bool) -> BoxedStrategy<Vec<Value>> {
    let columns: Vec<(String, BoxedStrategy<Value>)> = schema["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), column_values(c, missing)))
        .collect();
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let row = columns
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .prop_map(move |values| Value::Object(names.iter().cloned().zip(values).collect::<Map<String, Value>>()));
    proptest::collection::vec(row, 1..40).boxed()
}

async fn score(client: &reqwest::Client, server: &Server, model: &str, query: &str, rows: &Value) -> support::Answer {
    post(client, &format!("{}/models/{model}/score?{query}", server.url), rows.to_string(), &[]).await
}

/// Rows (0-based) whose highest `votes[i] / cutoff[i]` is shared by two classes: where
/// randomForest draws its label at random.
fn tied_rows(votes: &Value, cutoff: &[f64]) -> Vec<usize> {
    let rows = votes.as_array().unwrap();
    let mut tied = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let crit: Vec<f64> =
            row.as_object().unwrap().values().zip(cutoff).map(|(v, c)| v.as_f64().unwrap() / c).collect();
        let max = crit.iter().cloned().fold(f64::MIN, f64::max);
        if crit.iter().filter(|&&c| c == max).count() > 1 {
            tied.push(i);
        }
    }
    tied
}

/// The cutoffs of the test's randomForest classifications (randomForest's default is equal
/// cutoffs: any vector of equal values ties the same rows).
fn cutoff(model: &str, classes: usize) -> Vec<f64> {
    match model {
        "rf_cutoff" => vec![0.2, 0.3, 0.5],
        _ => vec![1.0; classes],
    }
}

/// Where two label answers differ: the row numbers (0-based).
fn differing_rows(a: &Value, b: &Value) -> Vec<usize> {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "as many labels as rows");
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn native_matches_r_bit_for_bit() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = all_forests();
        let server = native_server(dir.path(), 2);
        let client = client();
        let mut names: Vec<&str> = NATIVE.to_vec();
        names.extend(["gbm_multinomial", "lm"]);
        let listed = settled(&client, &server, &names).await;

        // What R alone serves, and why.
        for (model, why) in [("gbm_multinomial", "multinomial"), ("lm", "")] {
            let engine = &listed[model]["engine"];
            assert_eq!(engine["serving"], "r", "{model}: {engine}");
            assert!(engine["native"].is_null(), "{model}: {engine}");
            assert!(engine["reason"].as_str().unwrap().contains(why), "{model}: {engine}");
        }

        // Seeded: the same rows every run, so a difference found is found again.
        let mut runner = TestRunner::deterministic();
        let mut ranger_differences = (0usize, 0usize);
        for model in NATIVE {
            let entry = &listed[model];
            let engine = &entry["engine"];
            assert_eq!(engine["serving"], "native", "{model}: {engine}");
            let check = &engine["self_check"];
            assert_eq!(check["passed"], true, "{model}: {check}");
            assert_eq!(check["mismatches"], 0, "{model}: {check}");
            assert!(check["rows"].as_u64().unwrap() >= 100, "{model}: {check}");
            let native = &engine["native"];
            assert!(
                native["nodes"].as_u64().unwrap() > 0 && native["bytes"].as_u64().unwrap() > 0,
                "{model}: {native}"
            );
            let types: Vec<String> =
                native["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            let gbm = native["algorithm"] == "gbm";
            let randomforest = native["algorithm"] == "random_forest";
            let strategy = rows_for(&entry["schema"], gbm);
            for case in 0..24 {
                let rows = Value::Array(strategy.new_tree(&mut runner).unwrap().current());
                for predict_type in &types {
                    // R's own answer is one predict call: `split=never`, since a forest split
                    // by trees combines its parts' means, which need not round as one sum.
                    let query = |engine: &str| format!("engine={engine}&type={predict_type}&split=never");
                    let ours = score(&client, &server, model, &query("native"), &rows).await;
                    let theirs = score(&client, &server, model, &query("r"), &rows).await;
                    let what = format!("{model} type={predict_type} case {case}: {rows}");
                    assert_eq!(ours.status, 200, "{what}: {}", ours.text);
                    assert_eq!(theirs.status, 200, "{what}: {}", theirs.text);
                    assert_eq!(ours.header("x-rfleet-path"), Some("native"), "{what}");
                    assert_ne!(theirs.header("x-rfleet-path"), Some("native"), "{what}");
                    let (ours, theirs) = (ours.json(), theirs.json());
                    let labels = ours.as_array().unwrap().first().is_some_and(Value::is_string);
                    if !labels {
                        assert_eq!(ours, theirs, "{what}");
                        continue;
                    }
                    let differ = differing_rows(&ours, &theirs);
                    if randomforest {
                        let votes = score(&client, &server, model, "engine=native&type=vote", &rows).await.json();
                        let classes = votes[0].as_object().unwrap().len();
                        let tied = tied_rows(&votes, &cutoff(model, classes));
                        assert!(
                            differ.iter().all(|r| tied.contains(r)),
                            "{what}: rows {differ:?} differ, ties are {tied:?}"
                        );
                    } else {
                        ranger_differences.0 += differ.len();
                        ranger_differences.1 += ours.as_array().unwrap().len();
                    }
                }
            }
        }
        // ranger breaks ties at random too; a handful of rows of a thousand or so at most.
        let (differ, rows) = ranger_differences;
        assert!(differ * 20 <= rows, "ranger labels differ on {differ} of {rows} rows: more than ties explain");

        // The fixtures' own cases, whose answers R computed when it made the models: the
        // native engine gives them too (NA rows go to R under auto).
        for case in cases(&fixtures()).into_iter().filter(|c| FIXTURE_FORESTS.contains(&c.model.as_str())) {
            let mut query = String::from("engine=auto");
            if let Some(t) = &case.predict_type {
                query.push_str(&format!("&type={t}"));
            }
            let answer = score(&client, &server, &case.model, &query, &Value::Array(case.rows.clone())).await;
            assert_eq!(answer.status, 200, "{}: {}", case.name, answer.text);
            assert_same(&answer.json(), &Value::Array(case.expected.clone()), &case.name);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_choice_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    packages(&fixtures(), &[("rf_reg", "rf_reg"), ("lm", "lm"), ("gbm", "gbm")], dir.path());
    packages(&fixtures(), &[("rf_reg", "rf_r")], dir.path());
    std::fs::write(dir.path().join("rf_r/model.toml"), "engine = \"r\"\n").unwrap();
    let server = native_server(dir.path(), 1);
    let client = client();
    let listed = settled(&client, &server, &["rf_reg", "lm", "gbm", "rf_r"]).await;
    assert_eq!(listed["rf_r"]["engine"]["configured"], "r", "{}", listed["rf_r"]);
    assert_eq!(listed["rf_r"]["engine"]["serving"], "r");
    assert!(listed["rf_r"]["engine"]["native"].is_null(), "engine = \"r\": nothing extracted");

    let row = json!([{"x1": 5.0, "x2": 0.5, "grp": "beta", "cnt": 3}]);
    let auto = score(&client, &server, "rf_reg", "", &row).await;
    assert_eq!(auto.status, 200, "{}", auto.text);
    assert_eq!(auto.header("x-rfleet-path"), Some("native"), "auto serves a checked forest natively");
    let r = score(&client, &server, "rf_reg", "engine=r&split=never", &row).await;
    assert_eq!(r.header("x-rfleet-path"), Some("whole"));
    assert_eq!(auto.json(), r.json(), "native and R agree");
    let pinned = score(&client, &server, "rf_r", "", &row).await;
    assert_ne!(pinned.header("x-rfleet-path"), Some("native"), "engine = \"r\" in model.toml");

    // Refusals name their reason, and the service keeps serving.
    let refused = |answer: &support::Answer, needle: &str| {
        assert_eq!(answer.status, 422, "{}", answer.text);
        assert!(answer.text.contains(needle), "{needle:?} not in {}", answer.text);
    };
    refused(&score(&client, &server, "lm", "engine=native", &row).await, "no native forest");
    refused(&score(&client, &server, "rf_r", "engine=native", &row).await, "engine = \\\"r\\\"");
    refused(&score(&client, &server, "rf_reg", "engine=native&type=prob", &row).await, "does not answer type 'prob'");
    let with_na = json!([{"x1": 5.0, "x2": null, "grp": "beta", "cnt": 3}]);
    refused(&score(&client, &server, "rf_reg", "engine=native", &with_na).await, "engine=native");
    let na_auto = score(&client, &server, "rf_reg", "", &with_na).await;
    assert_eq!(na_auto.status, 200, "auto leaves a missing value to R: {}", na_auto.text);
    assert_eq!(na_auto.json(), json!([null]), "R answers NA for a row with a missing predictor");
    assert_ne!(na_auto.header("x-rfleet-path"), Some("native"));
    // gbm takes missing values: natively too, equal to R.
    let gbm_na = score(&client, &server, "gbm", "engine=native", &with_na).await;
    assert_eq!(gbm_na.status, 200, "{}", gbm_na.text);
    assert_eq!(gbm_na.json(), score(&client, &server, "gbm", "engine=r&split=never", &with_na).await.json());
    // Bad input is refused before either engine, with the same message.
    let unseen = json!([{"x1": 5.0, "x2": 0.5, "grp": "omega", "cnt": 3}]);
    let (native, r) = (
        score(&client, &server, "rf_reg", "engine=native", &unseen).await,
        score(&client, &server, "rf_reg", "engine=r", &unseen).await,
    );
    assert_eq!((native.status, r.status), (422, 422), "{} / {}", native.text, r.text);
    assert_eq!(native.text, r.text);
    assert!(native.text.contains("unseen level 'omega'"), "{}", native.text);
    let bad_engine = score(&client, &server, "rf_reg", "engine=fast", &row).await;
    assert_eq!(bad_engine.status, 400, "{}", bad_engine.text);
    assert_eq!(score(&client, &server, "rf_reg", "", &row).await.status, 200, "still serving");
    // Two of rf_reg's answers were native: the first and the last.
    let metrics = get(&client, &format!("{}/metrics", server.url)).await.text;
    for family in ["rfleet_native_requests_total", "rfleet_native_rows_total"] {
        let series = format!("{family}{{model=\"rf_reg\",version=\"\"}} 2");
        assert!(metrics.lines().any(|l| l == series), "{series} not in /metrics:\n{metrics}");
    }

    // The Open Inference Protocol picks the engine with `parameters.engine`.
    let infer = |engine: Value| {
        let body = json!({
            "parameters": {"engine": engine},
            "inputs": [
                {"name": "x1", "shape": [1], "datatype": "FP64", "data": [5.0]},
                {"name": "x2", "shape": [1], "datatype": "FP64", "data": [0.5]},
                {"name": "grp", "shape": [1], "datatype": "BYTES", "data": ["beta"]},
                {"name": "cnt", "shape": [1], "datatype": "INT32", "data": [3]},
            ]
        });
        let (client, url) = (client.clone(), format!("{}/v2/models/rf_reg/infer", server.url));
        async move { post(&client, &url, body.to_string(), &[]).await }
    };
    let (native, r) = (infer(json!("native")).await, infer(json!("r")).await);
    assert_eq!((native.status, r.status), (200, 200), "{} / {}", native.text, r.text);
    assert_eq!(native.header("x-rfleet-path"), Some("native"));
    assert_ne!(r.header("x-rfleet-path"), Some("native"));
    assert_eq!(native.json()["outputs"][0]["data"], auto.json(), "the same answer as POST /score");
    assert_eq!(native.json()["outputs"], r.json()["outputs"]);
    let bad = infer(json!("fast")).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("parameters.engine"), "{}", bad.text);

    // Concurrent few-row requests each get their own rows' answer, as R gives it (one with
    // a missing value among them is refused alone).
    let bodies: Vec<Value> = (0..32)
        .map(|i| {
            let row = |j: usize| {
                let x2 = if i == 13 && j == 1 { Value::Null } else { json!(0.25 * (i % 9) as f64 - 1.0) };
                let grp = ["alpha", "beta", "gamma"][(i + j) % 3];
                json!({"x1": 0.37 * (i + j) as f64, "x2": x2, "grp": grp, "cnt": (i * j) % 7})
            };
            Value::Array((0..1 + i % 3).map(row).collect())
        })
        .collect();
    let url = format!("{}/models/rf_reg/score?engine=native", server.url);
    let sent: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (client, url, body) = (client.clone(), url.clone(), body.to_string());
            tokio::spawn(async move { post(&client, &url, body, &[]).await })
        })
        .collect();
    let mut together = Vec::new();
    for answer in sent {
        together.push(answer.await.unwrap());
    }
    for (i, (body, answer)) in bodies.iter().zip(&together).enumerate() {
        let alone = score(&client, &server, "rf_reg", "engine=r&split=never", body).await;
        if i == 13 {
            refused(answer, "engine=native");
            continue;
        }
        assert_eq!((answer.status, answer.header("x-rfleet-path")), (200, Some("native")), "{i}: {}", answer.text);
        assert_eq!(answer.json(), alone.json(), "request {i} answered with its own rows, as R answers them");
    }
}

/// The cache file of the one model in `package`.
fn cache_file(package: &Path) -> PathBuf {
    let dir = package.join(".rfleet");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msgpack"))
        .collect();
    assert_eq!(files.len(), 1, "one cached forest in {}: {files:?}", dir.display());
    files.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_and_a_self_check_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    packages(&native_fixtures(), &[("rf_bias", "forest")], dir.path());
    let package = dir.path().join("forest");
    let client = client();
    let engine_of = |listed: &HashMap<String, Value>| listed["forest"]["engine"].clone();
    let row = json!([{"x1": 1.5, "x2": 9.0, "shop": "delta", "size": "M", "cnt": 4}]);

    // First start: extracted, checked, native.
    let server = native_server(dir.path(), 1);
    let engine = engine_of(&settled(&client, &server, &["forest"]).await);
    assert_eq!(engine["native"]["extracted"], true, "{engine}");
    assert_eq!(engine["serving"], "native", "{engine}");
    let before = score(&client, &server, "forest", "", &row).await;
    assert_eq!(before.header("x-rfleet-path"), Some("native"));
    drop(server);

    // Second start: the cache, not the extractor.
    let server = native_server(dir.path(), 1);
    let engine = engine_of(&settled(&client, &server, &["forest"]).await);
    assert_eq!(engine["native"]["extracted"], false, "{engine}");
    assert_eq!(engine["serving"], "native", "{engine}");
    drop(server);

    // A cached forest altered after extraction (every leaf of the first tree moved): the
    // self-check finds R disagreeing, and R serves the model.
    let cache = cache_file(&package);
    let mut forest: protocol::NativeForest = protocol::decode(&std::fs::read(&cache).unwrap()).unwrap();
    for value in &mut forest.trees[0].value {
        *value += 1.0;
    }
    std::fs::write(&cache, protocol::encode(&forest).unwrap()).unwrap();
    let server = native_server(dir.path(), 1);
    let engine = engine_of(&settled(&client, &server, &["forest"]).await);
    assert_eq!(engine["native"]["extracted"], false, "{engine}");
    assert_eq!(engine["self_check"]["passed"], false, "{engine}");
    assert!(engine["self_check"]["mismatches"].as_u64().unwrap() > 0, "{engine}");
    assert_eq!(engine["serving"], "r", "{engine}");
    assert!(engine["reason"].as_str().unwrap().contains("self-check failed"), "{engine}");
    let after = score(&client, &server, "forest", "", &row).await;
    assert_ne!(after.header("x-rfleet-path"), Some("native"), "R serves a model whose self-check failed");
    assert_eq!(after.json(), before.json(), "R's answer is the checked native one");
    assert!(server.logs().contains("native engine self-check failed"), "the log says why");
    drop(server);

    // A new model.rds: a new digest, extracted again (and the altered file left unused).
    std::fs::copy(native_fixtures().join("models/rf_cutoff/model.rds"), package.join("model.rds")).unwrap();
    let server = native_server(dir.path(), 1);
    let engine = engine_of(&settled(&client, &server, &["forest"]).await);
    assert_eq!(engine["native"]["extracted"], true, "{engine}");
    assert_eq!(engine["self_check"]["passed"], true, "{engine}");
}

/// `r_fallback = false` in `model.toml`: the package `released`, beside a copy of the same
/// model that R alone serves (`engine = "r"`), and a copy of another forest whose cache is
/// altered on the second start.
fn fallback_packages() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    packages(&fixtures(), &[("rf_reg", "released"), ("rf_reg", "in_r")], dir.path());
    packages(&native_fixtures(), &[("rf_bias", "kept")], dir.path());
    for (package, line) in
        [("released", "r_fallback = false"), ("in_r", "engine = \"r\""), ("kept", "r_fallback = false")]
    {
        let toml = dir.path().join(package).join("model.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap_or_default();
        text.push_str(&format!("\n{line}\n"));
        std::fs::write(&toml, text).unwrap();
    }
    dir
}

/// Issue 13, item 4: with `r_fallback = false` the R host checks the forest against R at
/// load and lets go of the model; the worker serves it natively, bit for bit R's answer
/// (R's own `predict` of the same `model.rds`, through the copy that R serves), and refuses
/// what would need R, naming the option. A model whose check fails stays in R.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_fallback_false_releases_a_checked_forest_from_r() {
    let dir = fallback_packages();
    let client = client();
    let server = native_server(dir.path(), 2);
    let listed = settled(&client, &server, &["released", "in_r", "kept"]).await;
    for model in ["released", "kept"] {
        let engine = &listed[model]["engine"];
        assert_eq!(engine["r_fallback"], false, "{model}: {engine}");
        assert_eq!(engine["released"], true, "{model}: {engine}");
        assert_eq!(engine["serving"], "native", "{model}: {engine}");
        let check = &engine["self_check"];
        assert_eq!(check["passed"], true, "{model}: {check}");
        assert_eq!(check["mismatches"], 0, "{model}: {check}");
        assert_eq!(check["rows"], 256, "{model}: the worker's rows: {check}");
        assert!(listed[model]["forest"].is_null(), "{model}: a released forest is not split over R hosts");
    }
    assert_eq!(listed["in_r"]["engine"]["r_fallback"], true, "the default: {}", listed["in_r"]);
    assert_eq!(listed["in_r"]["engine"]["released"], false);
    assert!(server.logs().contains("R released the model"), "the log says so");

    // Natively, and R's answer bit for bit (equal JSON text is equal doubles), on random
    // rows (seeded) and the fixture's own cases; one request of many rows, split over
    // nothing since no R host holds the model.
    let mut runner = TestRunner::deterministic();
    let strategy = rows_for(&listed["released"]["schema"], false);
    for case in 0..16 {
        let rows = Value::Array(strategy.new_tree(&mut runner).unwrap().current());
        let ours = score(&client, &server, "released", "", &rows).await;
        let theirs = score(&client, &server, "in_r", "split=never", &rows).await;
        assert_eq!((ours.status, theirs.status), (200, 200), "case {case}: {} / {}", ours.text, theirs.text);
        assert_eq!(ours.header("x-rfleet-path"), Some("native"), "case {case}");
        assert_ne!(theirs.header("x-rfleet-path"), Some("native"), "case {case}");
        assert_eq!(ours.text, theirs.text, "case {case}: {rows}");
    }
    let many: Vec<Value> =
        (0..500).flat_map(|_| strategy.new_tree(&mut runner).unwrap().current()).take(2000).collect();
    let (ours, theirs) = (
        score(&client, &server, "released", "", &Value::Array(many.clone())).await,
        score(&client, &server, "in_r", "split=never", &Value::Array(many)).await,
    );
    assert_eq!(ours.header("x-rfleet-path"), Some("native"));
    assert_eq!(ours.text, theirs.text, "2,000 rows at once");
    for case in cases(&fixtures()).into_iter().filter(|c| c.model == "rf_reg") {
        let rows = Value::Array(case.rows.clone());
        let ours = score(&client, &server, "released", "", &rows).await;
        if ours.status == 422 {
            // A missing value: R would drop the row, and R does not hold the model.
            assert!(ours.text.contains("r_fallback = false"), "{}: {}", case.name, ours.text);
            continue;
        }
        assert_eq!(ours.status, 200, "{}: {}", case.name, ours.text);
        assert_eq!(ours.text, score(&client, &server, "in_r", "split=never", &rows).await.text, "{}", case.name);
    }

    // What would need R is refused, naming the option, and the service keeps serving.
    let row = json!([{"x1": 5.0, "x2": 0.5, "grp": "beta", "cnt": 3}]);
    let with_na = json!([{"x1": 5.0, "x2": null, "grp": "beta", "cnt": 3}]);
    for (query, rows, why) in [
        ("engine=r", &row, "engine=r"),
        ("type=prob", &row, "does not answer type 'prob'"),
        ("engine=native&type=prob", &row, "does not answer type 'prob'"),
        ("", &with_na, "missing"),
    ] {
        let refused = score(&client, &server, "released", query, rows).await;
        assert_eq!(refused.status, 422, "{query}: {}", refused.text);
        assert!(refused.text.contains("r_fallback = false"), "{query}: {}", refused.text);
        assert!(refused.text.contains(why), "{query}: {why:?} not in {}", refused.text);
    }
    assert_eq!(score(&client, &server, "in_r", "", &with_na).await.json(), json!([null]), "R serves its copy");
    let still = score(&client, &server, "released", "", &row).await;
    assert_eq!((still.status, still.header("x-rfleet-path")), (200, Some("native")), "{}", still.text);
    drop(server);

    // `kept`'s cached forest altered after its extraction: the hosts' check finds R
    // disagreeing, so R keeps the model and serves it (as under auto), and says why.
    let cache = cache_file(&dir.path().join("kept"));
    let mut forest: protocol::NativeForest = protocol::decode(&std::fs::read(&cache).unwrap()).unwrap();
    for value in &mut forest.trees[0].value {
        *value += 1.0;
    }
    std::fs::write(&cache, protocol::encode(&forest).unwrap()).unwrap();
    let server = native_server(dir.path(), 1);
    let listed = settled(&client, &server, &["released", "kept"]).await;
    let engine = &listed["kept"]["engine"];
    assert_eq!((engine["r_fallback"].clone(), engine["released"].clone()), (json!(false), json!(false)), "{engine}");
    assert_eq!(engine["self_check"]["passed"], false, "{engine}");
    assert!(engine["self_check"]["mismatches"].as_u64().unwrap() > 0, "{engine}");
    assert_eq!(engine["serving"], "r", "{engine}");
    assert!(engine["reason"].as_str().unwrap().contains("self-check failed"), "{engine}");
    assert!(server.logs().contains("R keeps the model"), "the log says why");
    let kept_row = json!([{"x1": 1.5, "x2": 9.0, "shop": "delta", "size": "M", "cnt": 4}]);
    let answer = score(&client, &server, "kept", "", &kept_row).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_ne!(answer.header("x-rfleet-path"), Some("native"), "R serves a model whose check failed");
    let by_r = score(&client, &server, "kept", "engine=r&split=never", &kept_row).await;
    assert_eq!(answer.text, by_r.text);
    assert_eq!(listed["released"]["engine"]["released"], true, "every start checks again");
}

/// A 500-tree randomForest regression on 2,000 rows (about 21 MB in R, `object.size`),
/// saved as `dir/model.rds` by R.
fn big_forest(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = "suppressMessages(library(randomForest)); set.seed(13); n <- 2000; \
        d <- data.frame(x1 = runif(n), x2 = runif(n), x3 = rnorm(n)); \
        d$y <- sin(6 * d$x1) + d$x2 * d$x3 + rnorm(n, sd = 0.1); \
        saveRDS(randomForest(y ~ x1 + x2 + x3, data = d, ntree = 500), commandArgs(TRUE)[1])";
    let status = std::process::Command::new("Rscript")
        .args(["-e", script, dir.join("model.rds").to_str().unwrap()])
        .status()
        .expect("run Rscript (is R installed?)");
    assert!(status.success(), "making the 500-tree forest failed: {status}");
}

/// The R hosts' resident memory (`rfleet_host_resident_memory_bytes`) with a 500-tree
/// forest held by R and released: printed, and every releasing host smaller than every
/// holding one by 16 MiB, under the forest's 21 MB in R (measured apart: about 50 MiB, 68
/// against 120, and 154 for the holding host that also ran the worker's self-check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_model_leaves_the_hosts_memory() {
    let client = client();
    let models = tempfile::tempdir().unwrap();
    big_forest(&models.path().join("forest"));
    let mut resident = Vec::new();
    for r_fallback in [true, false] {
        std::fs::write(models.path().join("forest/model.toml"), format!("r_fallback = {r_fallback}\n")).unwrap();
        let server = native_server(models.path(), 2);
        let listed = settled(&client, &server, &["forest"]).await;
        assert_eq!(listed["forest"]["engine"]["released"], !r_fallback, "{}", listed["forest"]);
        // The second host starts after the first has loaded: both, once both are up.
        let start = Instant::now();
        let hosts: Vec<f64> = loop {
            let metrics = get(&client, &format!("{}/metrics", server.url)).await.text;
            let hosts: Vec<f64> = metrics
                .lines()
                .filter(|l| l.starts_with("rfleet_host_resident_memory_bytes{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() / f64::from(1 << 20))
                .collect();
            if hosts.len() == 2 {
                break hosts;
            }
            assert!(start.elapsed() < READY, "not two hosts' resident memory in /metrics after {READY:?}:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("r_fallback = {r_fallback}: the R hosts' resident memory {hosts:.1?} MiB");
        resident.push(hosts);
    }
    let held = resident[0].iter().cloned().fold(f64::MAX, f64::min);
    let released = resident[1].iter().cloned().fold(0.0, f64::max);
    println!("smallest holding host {held:.1} MiB, largest releasing host {released:.1} MiB");
    assert!(released + 16.0 < held, "released hosts {:.1?} MiB, holding ones {:.1?} MiB", resident[1], resident[0]);
}
