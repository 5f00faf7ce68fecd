//! The HTTP conventions users already call: Azure ML's `/score`, probes, request ids,
//! JSON errors, and a real third-party client (curl).

use serde_json::Value;
use support::{assert_same, case, client, fixtures, get, post, ServerOptions};

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
