//! Bad input gets a clear 4xx that names the problem, and the service keeps serving.

use serde_json::{json, Value};
use support::{assert_same, case, client, fixtures, get, post, Server, ServerOptions};

/// Sends `body` to `path` and checks the status and that the JSON message mentions
/// `needle`; then checks the service still answers a good request correctly.
async fn check(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: impl Into<reqwest::Body>,
    status: u16,
    needle: &str,
) {
    let answer = post(client, &format!("{}{path}", server.url), body, &[]).await;
    assert_eq!(answer.status, status, "{path} expected {status} mentioning {needle:?}, got: {}", answer.text);
    let message =
        answer.json()["message"].as_str().unwrap_or_else(|| panic!("no message in {}", answer.text)).to_string();
    assert!(message.contains(needle), "{path}: message {message:?} does not mention {needle:?}");
    still_serving(client, server).await;
}

async fn still_serving(client: &reqwest::Client, server: &Server) {
    let good = case(&fixtures(), "rf_reg");
    let answer =
        post(client, &format!("{}/models/rf_reg/score", server.url), Value::Array(good.rows.clone()).to_string(), &[])
            .await;
    assert_eq!(answer.status, 200, "service stopped serving: {}", answer.text);
    assert_same(&answer.json(), &Value::Array(good.expected.clone()), "good request after a bad one");
}

/// A first row of the rf_reg case with one field changed (or removed, for `None`).
fn rf_row(field: impl Fn(&serde_json::Map<String, Value>) -> String, value: Option<Value>) -> (String, String) {
    let good = case(&fixtures(), "rf_reg");
    let mut row = good.rows[0].as_object().unwrap().clone();
    let name = field(&row);
    match value {
        Some(value) => row.insert(name.clone(), value),
        None => row.remove(&name),
    };
    (name, json!([row]).to_string())
}

fn numeric_field(row: &serde_json::Map<String, Value>) -> String {
    row.iter().find(|(_, v)| v.is_number()).map(|(k, _)| k.clone()).expect("rf_reg has a numeric column")
}

fn factor_field(row: &serde_json::Map<String, Value>) -> String {
    row.iter().find(|(_, v)| v.is_string()).map(|(k, _)| k.clone()).expect("rf_reg has a factor column")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_survived() {
    let fixtures = fixtures();
    let server = ServerOptions::new(fixtures.join("models"))
        .env("RFLEET_SERVER__MAX_BODY_BYTES", 65536)
        .env("RFLEET_WORKERS__HOST_TIMEOUT_MS", 4000)
        .start();
    let client = client();
    let score = "/models/rf_reg/score";

    check(&client, &server, score, "[{\"x\": 1,", 400, "malformed JSON").await;
    check(&client, &server, score, "", 400, "empty").await;
    check(&client, &server, score, "[]", 422, "no rows").await;
    check(&client, &server, score, "{\"rows\": 1}", 422, "expected an array of row objects").await;
    check(&client, &server, score, "[{\"a\": [1, 2]}]", 422, "column 'a'").await;

    let (missing, body) = rf_row(numeric_field, None);
    check(&client, &server, score, body, 422, &format!("missing column '{missing}'")).await;
    let (wrong, body) = rf_row(numeric_field, Some(json!("not a number")));
    check(&client, &server, score, body, 422, &format!("column '{wrong}': expected a number, got a string in row 1"))
        .await;
    let (factor, body) = rf_row(factor_field, Some(json!("no-such-level")));
    check(&client, &server, score, body, 422, &format!("column '{factor}': unseen level 'no-such-level' in row 1"))
        .await;

    // Every problem at once: a missing column and an unseen level in two rows.
    let good = case(&fixtures, "rf_reg");
    let mut rows: Vec<serde_json::Map<String, Value>> =
        good.rows[..2].iter().map(|r| r.as_object().unwrap().clone()).collect();
    let (numeric, factor) = (numeric_field(&rows[0]), factor_field(&rows[0]));
    for row in &mut rows {
        row.remove(&numeric);
        row.insert(factor.clone(), json!("no-such-level"));
    }
    let answer = post(&client, &format!("{}{score}", server.url), json!(rows).to_string(), &[]).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let message = answer.json()["message"].as_str().unwrap().to_string();
    for needle in [
        format!("missing column '{numeric}'"),
        "'no-such-level' in row 1".to_string(),
        "'no-such-level' in row 2".to_string(),
    ] {
        assert!(message.contains(&needle), "{message:?} does not mention {needle:?}");
    }

    check(&client, &server, "/models/no_such_model/score", "[{\"x\": 1}]", 404, "no_such_model").await;
    let huge = format!("[{}]", vec!["{\"x\": 1.0}"; 10_000].join(","));
    check(&client, &server, score, huge.clone(), 413, "65536").await;
    // The rest of a refused body is never read, so the connection is closed, and said to be.
    let refused = post(&client, &format!("{}{score}", server.url), huge, &[]).await;
    assert_eq!((refused.status, refused.header("connection")), (413, Some("close")), "{}", refused.text);
    check(&client, &server, "/models/azureml/score", "{not json", 400, "JSON").await;

    // An R error inside predict: R's message, the host survives.
    let hosts_before = server.host_pids();
    check(&client, &server, "/models/faulty/score", "[{\"x\": -1}]", 422, "deliberate failure: x is negative").await;
    assert_eq!(server.host_pids(), hosts_before, "an R error must not cost a host");

    // A request that kills its host is retried once, then answered with a clear error;
    // the pool is replenished.
    check(&client, &server, "/models/faulty/score", "[{\"x\": 666}]", 500, "each one was lost").await;
    server.wait_until(std::time::Duration::from_secs(120), "the pool to be back to 2 hosts", |s| {
        s.host_pids().len() == 2
    });
    // A request that hangs its host past the timeout: killed, retried once, clear error.
    check(&client, &server, "/models/faulty/score", "[{\"x\": 777}]", 500, "took longer than").await;
    server.wait_until(std::time::Duration::from_secs(120), "the pool to be back to 2 hosts", |s| {
        s.host_pids().len() == 2
    });
    let ready = get(&client, &format!("{}/ready", server.url)).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rows_is_413() {
    let fixtures = fixtures();
    let server = ServerOptions::new(fixtures.join("models/rf_reg")).hosts(1).env("RFLEET_SERVER__MAX_ROWS", 3).start();
    let client = client();
    let good = case(&fixtures, "rf_reg");
    let answer =
        post(&client, &format!("{}/score", server.url), Value::Array(good.rows[..4].to_vec()).to_string(), &[]).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(answer.json()["message"], "the request has 4 rows; the limit is 3 (server.max_rows)");
    let answer =
        post(&client, &format!("{}/score", server.url), Value::Array(good.rows[..3].to_vec()).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &Value::Array(good.expected[..3].to_vec()), "three rows under the limit");
}
