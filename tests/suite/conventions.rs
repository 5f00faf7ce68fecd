//! Drop-in conventions beyond Azure ML's, each exercised by the client its users already
//! have: vetiver-style `/predict`, NVIDIA's `tritonclient` over the Open Inference
//! Protocol, the OpenAPI document, and Swagger UI's "Try it out" in headless Chromium.
//!
//! Every server here serves one package (`models/rf_reg`), so the routes without a model
//! name have an unambiguous default.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use support::{
    assert_same, case, client, fixtures, get, post, repo_root, run_client, target_dir, Answer, ServerOptions,
};

fn rf_reg_server() -> support::Server {
    ServerOptions::new(fixtures().join("models/rf_reg")).hosts(1).start()
}

/// Asserts an answer's status and returns its JSON, naming the request on failure.
fn check(answer: Answer, status: u16, what: &str) -> Value {
    assert_eq!(answer.status, status, "{what}: {}", answer.text);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vetiver_routes_answer_like_vetiver() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    let server = rf_reg_server();
    let client = client();
    let rows = Value::Array(rf.rows.clone()).to_string();

    // A vetiver client posts rows and reads `.pred`; R's own predictions, NA rows included.
    for path in ["/predict", "/models/rf_reg/predict"] {
        let answer = check(post(&client, &format!("{}{path}", server.url), rows.clone(), &[]).await, 200, path);
        assert_same(&answer, &json!({ ".pred": rf.expected }), path);
    }
    // Other body shapes work as for /score.
    let wrapped = json!({ "data": rf.rows }).to_string();
    let answer = check(post(&client, &format!("{}/predict", server.url), wrapped, &[]).await, 200, "data wrapper");
    assert_same(&answer, &json!({ ".pred": rf.expected }), "/predict with {\"data\": ...}");

    let ping = check(get(&client, &format!("{}/ping", server.url)).await, 200, "/ping");
    assert_eq!(ping["status"], "online");
    assert!(ping["time"].as_str().is_some_and(|t| t.len() == 19), "{ping}");

    let metadata = check(get(&client, &format!("{}/metadata", server.url)).await, 200, "/metadata");
    assert_eq!(metadata, json!({"user": {}, "version": null, "url": null, "required_pkgs": ["randomForest"]}));

    let prototype = check(get(&client, &format!("{}/prototype", server.url)).await, 200, "/prototype");
    let columns: Vec<&str> = prototype.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(columns, ["x1", "x2", "grp", "cnt"]);
    assert_eq!(prototype["x1"]["type"], "double");
    assert_eq!(
        prototype["grp"],
        json!({"type": "factor", "example": "alpha", "details": {"levels": ["alpha", "beta", "gamma"]}})
    );

    // The prototype's examples make a row the model scores.
    let example: serde_json::Map<String, Value> =
        prototype.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["example"].clone())).collect();
    let answer = check(
        post(&client, &format!("{}/predict", server.url), json!([example]).to_string(), &[]).await,
        200,
        "prototype row",
    );
    assert!(answer[".pred"][0].is_f64(), "{answer}");

    // Bad input keeps rfleet's message naming the problem.
    let bad = json!([{"x1": 1, "x2": 1, "grp": "zeta", "cnt": 1}]).to_string();
    let answer = check(post(&client, &format!("{}/predict", server.url), bad, &[]).await, 422, "unseen level");
    assert!(answer["message"].as_str().unwrap().contains("unseen level 'zeta'"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_scores_over_the_open_inference_protocol() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    let server = rf_reg_server();
    let address = server.url.trim_start_matches("http://").to_string();
    let case_path = fixtures.join("cases/rf_reg.json");

    let got = run_client("triton_client.py", &[&address, "rf_reg", case_path.to_str().unwrap()]);
    assert_eq!(
        (&got["server_live"], &got["server_ready"], &got["model_ready"]),
        (&json!(true), &json!(true), &json!(true))
    );
    assert_eq!(
        got["server_metadata"],
        json!({"name": "rfleet", "version": env!("CARGO_PKG_VERSION"), "extensions": []})
    );
    let metadata = &got["metadata"];
    assert_eq!(metadata["platform"], "R");
    let inputs: Vec<(&str, &str)> = metadata["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["datatype"].as_str().unwrap()))
        .collect();
    assert_eq!(inputs, [("x1", "FP64"), ("x2", "FP64"), ("grp", "BYTES"), ("cnt", "FP64")]);
    assert_eq!(got["id"], "triton-1");
    // The client sends the rows without NA (JSON tensors cannot hold numpy's NaN).
    let sent: Vec<usize> = got["sent"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
    assert!(sent.len() >= 4, "too few complete rows: {sent:?}");
    let expected: Vec<Value> = sent.iter().map(|&i| rf.expected[i].clone()).collect();
    assert_same(&got["predict"], &Value::Array(expected), "tritonclient predict");

    // Errors in the protocol's shape, with the status rfleet gives the same problem.
    let client = client();
    let infer = |model: &str| format!("{}/v2/models/{model}/infer", server.url);
    let tensor = |name: &str, datatype: &str, data: Value| json!({"name": name, "datatype": datatype, "shape": [1], "data": data});
    let good = vec![
        tensor("x1", "FP64", json!([1.0])),
        tensor("x2", "FP64", json!([0.5])),
        tensor("cnt", "FP64", json!([3.0])),
    ];
    let with_grp = |level: &str| [good.clone(), vec![tensor("grp", "BYTES", json!([level]))]].concat();
    let cases: Vec<(String, Value, u16, &str)> = vec![
        (infer("nope"), json!({"inputs": good}), 404, "model 'nope' is not served here"),
        (
            infer("rf_reg"),
            json!({"inputs": [json!({"name": "x1", "datatype": "FP64", "shape": [2], "data": [1.0]})]}),
            400,
            "holds 2 values but data has 1",
        ),
        (infer("rf_reg"), json!({"inputs": good}), 422, "missing column 'grp'"),
        (infer("rf_reg"), json!({"inputs": with_grp("zeta")}), 422, "unseen level 'zeta'"),
        (
            infer("rf_reg"),
            json!({"inputs": with_grp("beta"), "outputs": [{"name": "prob"}]}),
            400,
            "unknown output 'prob' (this model's outputs: predict)",
        ),
    ];
    for (url, body, status, message) in cases {
        let answer = check(post(&client, &url, body.to_string(), &[]).await, status, message);
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(message)), "want '{message}' in {answer}");
    }
    let unknown =
        check(get(&client, &format!("{}/v2/models/nope/ready", server.url)).await, 404, "unknown model ready");
    assert!(unknown["error"].is_string(), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route() {
    let server = rf_reg_server();
    let client = client();
    let doc = check(get(&client, &format!("{}/openapi.json", server.url)).await, 200, "/openapi.json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let routes = [
        ("get", "/"),
        ("get", "/live"),
        ("get", "/ready"),
        ("get", "/metrics"),
        ("get", "/models"),
        ("get", "/models/{name}"),
        ("get", "/models/{name}/versions/{version}"),
        ("post", "/score"),
        ("post", "/models/{name}/score"),
        ("post", "/models/{name}/versions/{version}/score"),
        ("post", "/predict"),
        ("post", "/models/{name}/predict"),
        ("get", "/ping"),
        ("get", "/metadata"),
        ("get", "/prototype"),
        ("get", "/v2"),
        ("get", "/v2/health/live"),
        ("get", "/v2/health/ready"),
        ("get", "/v2/models/{name}"),
        ("get", "/v2/models/{name}/versions/{version}"),
        ("get", "/v2/models/{name}/ready"),
        ("get", "/v2/models/{name}/versions/{version}/ready"),
        ("post", "/v2/models/{name}/infer"),
        ("post", "/v2/models/{name}/versions/{version}/infer"),
        ("get", "/openapi.json"),
        ("get", "/swagger.json"),
        ("get", "/docs/"),
    ];
    for (method, path) in routes {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(operation["responses"]["200"].is_object(), "{method} {path} documents no 200 answer");
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        routes.iter().map(|(_, p)| p).collect::<std::collections::BTreeSet<_>>().len()
    );

    // Auth is off: nothing asks for a credential, and there is no `/token` (it is not served).
    assert!(doc["components"]["securitySchemes"].is_null(), "{}", doc["components"]);
    assert!(!doc.to_string().contains("\"security\""), "an operation asks for a credential with auth off");
    let token = post(&client, &format!("{}/token", server.url), "", &[]).await;
    assert_eq!(token.status, 404, "{}", token.text);

    // Every scoring operation (every POST) takes the deadline header and documents the 504 of
    // a deadline shorter than scoring takes; `type`, where it is a parameter, cannot be empty.
    for (_, path) in routes.iter().filter(|(method, _)| *method == "post") {
        let operation = &doc["paths"][path]["post"];
        let parameter =
            |name: &str| operation["parameters"].as_array().into_iter().flatten().find(|p| p["name"] == name).cloned();
        assert!(operation["responses"]["504"].is_object(), "POST {path} does not document 504");
        let deadline = parameter("x-rfleet-timeout-ms").unwrap_or_else(|| panic!("POST {path}: no deadline header"));
        assert_eq!(deadline["schema"]["minimum"], 1, "POST {path}");
        if let Some(predict_type) = parameter("type") {
            assert_eq!(predict_type["schema"]["minLength"], 1, "POST {path}");
        }
    }

    // Completed from the catalog: the default model's columns and a body that scores.
    let score = &doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"];
    let example = score["example"].clone();
    assert_eq!(
        example[0].as_object().map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["x1".into(), "x2".into(), "grp".into(), "cnt".into()])
    );
    let answer = check(
        post(&client, &format!("{}/score", server.url), example.to_string(), &[]).await,
        200,
        "documented example",
    );
    assert!(answer[0].is_f64(), "{answer}");
    assert_eq!(
        doc["components"]["schemas"]["rows_rf_reg"]["items"]["properties"]["grp"]["enum"],
        json!(["alpha", "beta", "gamma", null])
    );
    assert!(doc["paths"]["/models/{name}/score"]["post"]["description"]
        .as_str()
        .unwrap()
        .contains("`grp`: factor (alpha, beta, gamma)"));

    let swagger = check(get(&client, &format!("{}/swagger.json", server.url)).await, 200, "/swagger.json");
    assert_eq!(swagger, doc);

    let page = get(&client, &format!("{}/docs/", server.url)).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{:?}", page.headers);
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    let config = get(&client, &format!("{}/docs/swagger-initializer.js", server.url)).await;
    assert!(config.text.contains("\"/openapi.json\""), "{}", config.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_try_it_out_scores_a_row_in_chromium() {
    let server = rf_reg_server();
    let artifacts: PathBuf = target_dir().parent().expect("target").join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("swagger-ui-try-it-out.png");
    let _ = std::fs::remove_file(&screenshot);

    let shown = run_client("swagger_try_it_out.py", &[&server.url, screenshot.to_str().unwrap()]);
    assert_eq!(shown["status"], 200, "{shown}");
    let body: Value = serde_json::from_str(shown["body"].as_str().unwrap()).expect("the page shows JSON");
    assert!(body.as_array().is_some_and(|p| p.len() == 1 && p[0].is_f64()), "not one prediction: {body}");

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a screenshot",
        screenshot.display()
    );
}

/// schemathesis generates requests from the document and checks every answer against it:
/// no server error, documented statuses, content types, bodies and headers that fit their
/// schemas, schema-invalid requests refused (`tests/clients/schemathesis.toml` says which
/// checks and why). Once with auth off, once with it on, where it also checks that no
/// operation the document secures answers without a credential.
#[test]
fn schemathesis_finds_nothing() {
    let server = rf_reg_server();
    run_schemathesis(&server.url, None);
    drop(server);

    const KEY: &str = "schemathesis-0123456789abcdef";
    let server = ServerOptions::new(fixtures().join("models/rf_reg"))
        .hosts(1)
        .env("RFLEET_AUTH__ENABLED", "true")
        .env("RFLEET_AUTH__PRIMARY_KEY", KEY)
        .start();
    run_schemathesis(&server.url, Some(KEY));
}

/// Runs schemathesis on the document at `url` (sending `key` as the bearer credential) and
/// asserts it found nothing, printing its report otherwise.
fn run_schemathesis(url: &str, key: Option<&str>) {
    let config = repo_root().join("tests/clients/schemathesis.toml");
    // What it writes (reports, caches) goes to its working directory.
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("python3");
    // The console script, run by the python3 that `deploy/setup.sh test` installs it for.
    command.args(["-c", "from schemathesis.cli import schemathesis; schemathesis()", "--config-file"]);
    command.arg(&config).args(["run", "--no-color"]);
    if let Some(key) = key {
        command.args(["--header", &format!("Authorization: Bearer {key}")]);
    }
    let output = command.arg(format!("{url}/openapi.json")).current_dir(dir.path()).output().expect("run python3");
    assert!(
        output.status.success(),
        "schemathesis failed ({}; deploy/setup.sh test installs it):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
