//! Predictions through rfleet equal R's own `predict` on the same rows, for every kind of
//! model the fixtures make, in every body shape the API accepts.

use serde_json::{json, Map, Value};
use support::{assert_same, cases, client, fixtures, get, post, Case, Server, ServerOptions};

async fn check(client: &reqwest::Client, server: &Server, case: &Case, body: Value, what: &str) {
    let mut url = format!("{}/models/{}/score", server.url, case.model);
    if let Some(predict_type) = &case.predict_type {
        url.push_str(&format!("?type={predict_type}"));
    }
    let answer = post(client, &url, body.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{} ({what}): {}", case.name, answer.text);
    assert_same(&answer.json(), &Value::Array(case.expected.clone()), &format!("{} ({what})", case.name));
}

/// The same rows as pandas' split orientation: `{"columns": [...], "data": [[...]]}`.
fn split_orientation(rows: &[Value]) -> Value {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.as_object().unwrap().keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|row| Value::Array(columns.iter().map(|c| row.get(c).cloned().unwrap_or(Value::Null)).collect()))
        .collect();
    json!({ "columns": columns, "data": data })
}

/// Columns in reverse order, one extra column the model never saw, integral numbers
/// written as doubles (`6.0`) and doubles that are integral sent as integers.
fn reshuffled(rows: &[Value]) -> Value {
    let rows = rows
        .iter()
        .map(|row| {
            let mut object: Map<String, Value> = row
                .as_object()
                .unwrap()
                .iter()
                .rev()
                .map(|(k, v)| {
                    let v = match v.as_f64() {
                        Some(x) if v.is_i64() => json!(x),
                        Some(x) if x.fract() == 0.0 && x.abs() < 1e9 => json!(x as i64),
                        _ => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            object.insert("not_a_predictor".into(), json!("ignored"));
            Value::Object(object)
        })
        .collect();
    Value::Array(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_matches_r() {
    let fixtures = fixtures();
    let server = ServerOptions::new(fixtures.join("models")).start();
    let client = client();
    let cases = cases(&fixtures);
    for model in [
        "rf_reg",
        "rf_class",
        "rf_xy",
        "ranger_reg",
        "lm",
        "glm_binomial",
        "rpart",
        "gbm",
        "caret",
        "predict_fn",
        "azureml",
    ] {
        assert!(cases.iter().any(|c| c.model == model), "the fixtures have no case for {model}");
    }
    assert!(
        cases.iter().any(|c| c.model == "rf_class" && c.predict_type.as_deref() == Some("prob")),
        "no class probabilities case"
    );
    for case in cases.iter().filter(|c| c.model != "faulty") {
        check(&client, &server, case, Value::Array(case.rows.clone()), "row objects").await;
        if case.model == "azureml" {
            continue; // the entry script parses the body itself
        }
        check(&client, &server, case, split_orientation(&case.rows), "split orientation").await;
        check(&client, &server, case, json!({ "data": case.rows }), "data wrapper").await;
        check(&client, &server, case, reshuffled(&case.rows), "reordered columns, extra column, int/double").await;
        // one row at a time gives the same answers as the whole batch
        for (i, row) in case.rows.iter().enumerate().take(3) {
            let single = Case { rows: vec![row.clone()], expected: vec![case.expected[i].clone()], ..case.clone() };
            check(&client, &server, &single, json!([row]), &format!("row {i} alone")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_with_their_schemas() {
    let fixtures = fixtures();
    let server = ServerOptions::new(fixtures.join("models")).hosts(1).start();
    let client = client();
    let answer = get(&client, &format!("{}/models", server.url)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let models = answer.json();
    let by_name = |name: &str| -> Value {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {models}"))
    };
    // Inferred schemas list the predictors, never the response.
    let rf_class = by_name("rf_class");
    let columns: Vec<&str> =
        rf_class["schema"]["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width"]);
    assert!(rf_class["r_class"].as_array().unwrap().contains(&json!("randomForest")));
    assert_eq!(by_name("azureml")["kind"], "azure_ml");
    assert_eq!(by_name("predict_fn")["kind"], "predict_fn");
    // Every model with a case states which columns it needs, with factor levels.
    for name in ["rf_reg", "rf_xy", "ranger_reg", "lm", "glm_binomial", "rpart", "gbm", "caret"] {
        let schema = &by_name(name)["schema"]["columns"];
        assert!(schema.as_array().is_some_and(|c| !c.is_empty()), "{name} has no inferred schema: {}", by_name(name));
        for column in schema.as_array().unwrap() {
            if column["type"] == "factor" {
                assert!(column["levels"].as_array().is_some_and(|l| !l.is_empty()), "{name}: factor without levels");
            }
        }
    }
    let one = get(&client, &format!("{}/models/rf_class", server.url)).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["name"], "rf_class");
}
