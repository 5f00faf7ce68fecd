//! The HTTP conventions users already call: Azure ML's `/score`, probes, request ids,
//! JSON errors, a real third-party client (curl), and overload answered at once.

use serde_json::{json, Value};
use std::time::Duration;

use support::{assert_same, case, client, fixtures, get, post, wait_for, Hold, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_ml_conventions_and_probes() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    // One package served: `POST /score` needs no model name.
    let server = ServerOptions::new(fixtures.join("models/rf_reg")).hosts(1).start();
    let client = client();

    let root = get(&client, &format!("{}/", server.url)).await;
    assert_eq!((root.status, root.text.as_str()), (200, "Healthy"));
    assert_eq!(get(&client, &format!("{}/live", server.url)).await.status, 200);
    assert_eq!(get(&client, &format!("{}/ready", server.url)).await.status, 200);

    let body = Value::Array(rf.rows.clone()).to_string();
    let answer =
        post(&client, &format!("{}/score", server.url), body.clone(), &[("x-ms-client-request-id", "azure-7")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &Value::Array(rf.expected.clone()), "POST /score");
    assert_eq!(answer.header("x-ms-client-request-id"), Some("azure-7"));
    assert!(answer.header("x-rfleet-host-pid").is_some_and(|pid| server.host_pids().contains(&pid.parse().unwrap())));

    // Without an id, one is made up and returned.
    let answer = post(&client, &format!("{}/score", server.url), body.clone(), &[]).await;
    assert!(answer.header("x-request-id").is_some_and(|id| !id.is_empty()));

    // Errors are JSON with a message, including the framework's own.
    let missing = get(&client, &format!("{}/no/such/route", server.url)).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["message"].is_string(), "{}", missing.text);
    let wrong_method = get(&client, &format!("{}/score", server.url)).await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["message"].is_string(), "{}", wrong_method.text);

    // curl, as a user pastes it from the README.
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            &format!("{}/score", server.url),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ])
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let from_curl: Value = serde_json::from_slice(&output.stdout).expect("curl got JSON");
    assert_same(&from_curl, &Value::Array(rf.expected.clone()), "curl POST /score");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_need_a_name_or_a_default() {
    let fixtures = fixtures();
    let lm = case(&fixtures, "lm");
    let body = Value::Array(lm.rows.clone()).to_string();
    let server = ServerOptions::new(fixtures.join("models")).hosts(1).start();
    let client = client();
    let answer = post(&client, &format!("{}/score", server.url), body.clone(), &[]).await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    assert!(answer.json()["message"].as_str().unwrap().contains("/models/"), "{}", answer.text);
    drop(server);

    let server = ServerOptions::new(fixtures.join("models")).hosts(1).env("RFLEET_MODELS__DEFAULT", "lm").start();
    let answer = post(&client, &format!("{}/score", server.url), body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &Value::Array(lm.expected.clone()), "default model");
}

/// Flooded beyond `server.max_inflight`, the service refuses what is over the bound at once
/// (503, `Retry-After`, a message naming the limit), answers what it admitted correctly,
/// and serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_beyond_the_inflight_bound() {
    const MAX_INFLIGHT: usize = 2;
    let fixtures = fixtures();
    // `faulty` holds calls of x = Hold::X in R, and writes each call's row count here first.
    let hold = Hold::new();
    let counter = tempfile::NamedTempFile::new().unwrap();
    let rows_in_r = || -> usize {
        let text = std::fs::read_to_string(counter.path()).unwrap();
        text.split_whitespace().map(|n| n.parse::<usize>().unwrap()).sum()
    };
    let server = ServerOptions::new(fixtures.join("models/faulty"))
        .hosts(2)
        .env("RFLEET_SERVER__MAX_INFLIGHT", MAX_INFLIGHT)
        // Room for the held requests: neither the deadline nor the host timeout cuts them short.
        .env("RFLEET_SERVER__REQUEST_TIMEOUT_MS", 120_000)
        .env("RFLEET_WORKERS__HOST_TIMEOUT_MS", 120_000)
        .env("SCORE_COUNTER_FILE", counter.path().display())
        .env("SCORE_HOLD_FILE", hold.path().display())
        .start();
    let client = client();
    let url = format!("{}/score", server.url);
    let score = |x: i64| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { (x, post(&client, &url, json!([{ "x": x }]).to_string(), &[]).await) })
    };

    // Held requests take every in-flight permit and keep it while R holds them: once R has
    // their rows, the bound is full.
    let slow: Vec<_> = (0..MAX_INFLIGHT).map(|_| score(Hold::X)).collect();
    wait_for(Duration::from_secs(60), "the held requests in R", || rows_in_r() >= MAX_INFLIGHT).await;
    // A flood of concurrent requests beyond it: every one is refused at once, saying why and
    // when to retry.
    let flood: Vec<_> = (1..=16).map(score).collect();
    for request in flood {
        let (x, answer) = request.await.unwrap();
        assert_eq!(answer.status, 503, "x = {x}, with the bound full: {}", answer.text);
        assert_eq!(answer.header("retry-after"), Some("1"), "x = {x}: {:?}", answer.headers);
        let body = answer.json();
        assert_eq!(body["code"], "overloaded", "x = {x}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("too many requests in flight") && message.contains(&format!("limit {MAX_INFLIGHT}")),
            "x = {x}: {message:?} does not name the problem"
        );
    }
    // The held requests were admitted: released, they get their answers.
    hold.release();
    for request in slow {
        let (x, answer) = request.await.unwrap();
        assert_eq!(answer.status, 200, "x = {x} was admitted: {}", answer.text);
        assert_same(&answer.json(), &json!([2 * x]), &format!("x = {x}: admitted, so answered"));
    }

    // Afterwards, a normal request gets R's answer.
    let normal = case(&fixtures, "faulty");
    let answer = post(&client, &url, Value::Array(normal.rows.clone()).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &Value::Array(normal.expected.clone()), "a normal request after the flood");
}
