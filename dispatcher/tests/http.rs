//! The dispatcher over real sockets: the real router and `EmbeddedBus`, a scripted worker
//! task on the queue, and `reqwest` as the client. Every case goes through one `check`.
//!
//! The scripted worker answers by model name (see [`scripted_reply`]), so each case picks
//! the worker behaviour it needs (echo, chosen error code, no reply, garbage) by the route.
//! `rf_reg` has versions: the catalog hears of them from several announced workers (the
//! embedded bus has one queue, which the scripted worker serves for all of them), and the
//! scripted worker answers as the version the request names (`model_version`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::embedded::EmbeddedConsumer;
use bus::{Consumer, ContentType, EmbeddedBus};
use dispatcher::{AppState, Catalog};
use protocol::{
    Announcement, Column, ColumnData, ColumnSpec, ColumnType, ErrorBody, ErrorCode, Frame, Input, LoadFailure,
    ModelInfo, ModelKind, Outcome, Reply, Request, Schema, Timings, PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use settings::ServerSettings;

const QUEUE: &str = "rfleet.requests";

/// What consumes the request queue.
#[derive(Clone, Copy, PartialEq)]
enum Worker {
    /// Answers as [`scripted_reply`] says.
    Scripted,
    /// Subscribed (so the bus counts as ready) but never takes a message.
    Stalled,
    /// Nobody consumes the queue.
    Absent,
}

struct Setup {
    server: ServerSettings,
    default_model: Option<&'static str>,
    worker: Worker,
    bus_capacity: usize,
    /// `models.traffic_file`.
    traffic_file: Option<std::path::PathBuf>,
    /// `metrics.enabled`.
    metrics_enabled: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            server: ServerSettings { max_body_bytes: 3 * 1024 * 1024, max_inflight: 64, ..ServerSettings::default() },
            default_model: Some("echo"),
            worker: Worker::Scripted,
            bus_capacity: 64,
            traffic_file: None,
            metrics_enabled: true,
        }
    }
}

/// A running dispatcher on `127.0.0.1:0`. Dropping it shuts the server down.
struct Service {
    base: String,
    client: reqwest::Client,
    bus: EmbeddedBus,
    catalog: Arc<Catalog>,
    state: AppState,
    /// Requests the scripted worker took and has not answered yet (models `hang`, `slow`).
    hung: Arc<AtomicUsize>,
    _stalled: Option<EmbeddedConsumer>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// One request and what must come back. `body_expected` is compared as JSON when it parses
/// as JSON (a `message` ending in `...` is a prefix), else as text.
struct Case {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    status: u16,
    body_expected: String,
    /// Response headers: `*` means present with any value, `-` means absent.
    headers_expected: Vec<(&'static str, &'static str)>,
}

fn case(method: &'static str, path: &'static str, body: &str, status: u16, body_expected: &str) -> Case {
    Case {
        method,
        path,
        headers: Vec::new(),
        body: body.to_string(),
        status,
        body_expected: body_expected.to_string(),
        headers_expected: Vec::new(),
    }
}

impl Case {
    fn with(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn expect(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers_expected.push((name, value));
        self
    }

    /// The reply timings the scripted worker sends, as response headers.
    fn expect_timings(self) -> Self {
        self.expect("x-rfleet-host-pid", "4242")
            .expect("x-rfleet-worker", "test-worker")
            .expect("x-rfleet-queue-ms", "1.500")
            .expect("x-rfleet-r-ms", "2.250")
            .expect("x-rfleet-attempts", "1")
    }
}

/// The scripted worker's announcement, as the dispatcher's catalog records it (valid for the
/// longest interval a worker may announce, so it outlasts the test).
fn announce(catalog: &Catalog, models: Vec<ModelInfo>, live_hosts: u32) {
    announce_as(catalog, models, live_hosts, false);
}

fn announce_as(catalog: &Catalog, models: Vec<ModelInfo>, live_hosts: u32, draining: bool) {
    announce_worker(catalog, "test-worker", models, live_hosts, draining, Vec::new());
}

/// Another worker's announcement (the scripted worker answers for every one of them).
fn announce_worker(
    catalog: &Catalog,
    worker: &str,
    models: Vec<ModelInfo>,
    live_hosts: u32,
    draining: bool,
    failed: Vec<LoadFailure>,
) {
    let announcement = Announcement {
        version: PROTOCOL_VERSION,
        worker: worker.into(),
        models,
        live_hosts,
        n_hosts: 1,
        interval_ms: *dispatcher::catalog::ANNOUNCE_INTERVAL_MS.end(),
        draining,
        failed,
    };
    catalog.record(announcement, std::time::Instant::now());
}

/// `rf_reg` at `version`: one numeric column `x`.
fn rf_reg(version: &str) -> ModelInfo {
    ModelInfo {
        name: "rf_reg".into(),
        version: Some(version.into()),
        kind: ModelKind::Predict,
        r_class: vec!["randomForest".into()],
        schema: Some(Schema {
            columns: vec![ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None }],
        }),
        predict_type: None,
        forest: None,
        engine: None,
    }
}

fn models() -> Vec<ModelInfo> {
    let model = |name: &str, version: Option<&str>, kind: ModelKind, schema: Option<Schema>| ModelInfo {
        name: name.into(),
        version: version.map(Into::into),
        kind,
        r_class: vec!["test".into()],
        schema,
        predict_type: None,
        forest: None,
        engine: None,
    };
    let iris = Schema {
        columns: vec![
            ColumnSpec { name: "Sepal.Length".into(), column_type: ColumnType::Numeric, levels: None },
            ColumnSpec {
                name: "Species".into(),
                column_type: ColumnType::Factor,
                levels: Some(vec!["setosa".into(), "versicolor".into()]),
            },
        ],
    };
    vec![
        model("echo", None, ModelKind::Predict, None),
        model("iris", Some("2"), ModelKind::Predict, Some(iris)),
        model("azure", None, ModelKind::AzureMl, None),
        model("options", None, ModelKind::PredictFn, None),
        model("errors", None, ModelKind::Predict, None),
        model("hang", None, ModelKind::Predict, None),
        model("garbage", None, ModelKind::Predict, None),
        model("wrongid", None, ModelKind::Predict, None),
        model("badframe", None, ModelKind::Predict, None),
        model("slow", None, ModelKind::Predict, None),
    ]
}

/// The served models as error messages list them: by name, then version.
const SERVED: &str = "azure, badframe, echo, errors, garbage, hang, iris 2, options, slow, wrongid";

impl Service {
    async fn start(setup: Setup) -> Service {
        let bus = EmbeddedBus::new(setup.bus_capacity, QUEUE);
        let catalog = Arc::new(Catalog::default());
        announce(&catalog, models(), 1);
        let hung = Arc::new(AtomicUsize::new(0));
        let mut stalled = None;
        match setup.worker {
            Worker::Scripted => {
                tokio::spawn(scripted_worker(bus.consumer(QUEUE), hung.clone()));
            }
            Worker::Stalled => stalled = Some(bus.consumer(QUEUE)),
            Worker::Absent => {}
        }
        let state =
            AppState::new(Arc::new(bus.clone()), catalog.clone(), setup.server, setup.default_model.map(Into::into))
                .with_traffic_file(setup.traffic_file.as_deref())
                .expect("the traffic file is valid")
                .with_metrics(&settings::MetricsSettings { enabled: setup.metrics_enabled, listen: None });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = dispatcher::listener::HttpListener::plain(listener);
        let server = tokio::spawn(dispatcher::serve(listener, state.clone(), async move {
            let _ = shutdown_rx.await;
        }));
        Service {
            base,
            client: reqwest::Client::new(),
            bus,
            catalog,
            state,
            hung,
            _stalled: stalled,
            shutdown: Some(shutdown_tx),
            server,
        }
    }

    async fn send(&self, case: &Case) -> (u16, reqwest::header::HeaderMap, String) {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{}", self.base, case.path));
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        if !case.body.is_empty() || case.method == "POST" {
            request = request.body(case.body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }

    async fn check(&self, case: &Case) {
        let (status, headers, body) = self.send(case).await;
        let what = format!("{} {} {:?}", case.method, case.path, truncate(&case.body));
        assert_eq!(status, case.status, "{what}: status (body {body})");
        match serde_json::from_str::<Value>(&case.body_expected) {
            Ok(expected) => {
                let got: Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
                assert_json_matches(&got, &expected, &what);
            }
            Err(_) => assert_eq!(body, case.body_expected, "{what}: body"),
        }
        // Every error is JSON, whoever produced it.
        if status >= 400 {
            assert_eq!(header(&headers, "content-type"), Some("application/json"), "{what}: error content type");
        }
        for (name, value) in &case.headers_expected {
            match *value {
                "*" => assert!(headers.contains_key(*name), "{what}: header {name} missing"),
                "-" => assert!(!headers.contains_key(*name), "{what}: header {name} present"),
                value => assert_eq!(header(&headers, name), Some(value), "{what}: header {name}"),
            }
        }
    }

    async fn check_all(&self, cases: &[Case]) {
        for case in cases {
            self.check(case).await;
        }
    }
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn truncate(body: &str) -> &str {
    &body[..body.len().min(60)]
}

fn assert_json_matches(got: &Value, expected: &Value, what: &str) {
    if let (Some(Value::String(message)), Some(Value::String(prefix))) = (got.get("message"), expected.get("message")) {
        if let Some(prefix) = prefix.strip_suffix("...") {
            assert!(message.starts_with(prefix), "{what}: message {message:?} does not start with {prefix:?}");
            let (mut got, mut expected) = (got.clone(), expected.clone());
            got["message"] = Value::Null;
            expected["message"] = Value::Null;
            assert_eq!(got, expected, "{what}: body");
            return;
        }
    }
    assert_eq!(got, expected, "{what}: body");
}

/// Takes requests off the queue and answers each by its model's name.
async fn scripted_worker(mut consumer: EmbeddedConsumer, hung: Arc<AtomicUsize>) {
    // Held, never settled: settling would answer, dropping would redeliver.
    let mut held = Vec::new();
    while let Some(delivery) = consumer.next().await {
        let request: Request = protocol::decode(&delivery.body).expect("the dispatcher sends valid requests");
        assert_eq!(delivery.correlation_id.as_deref(), Some(request.id.as_str()));
        let body = match request.model.as_str() {
            "hang" => {
                held.push(delivery);
                hung.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            // A shadow version that never answers.
            "rf_reg" if request.model_version.as_deref() == Some("9") => {
                held.push(delivery);
                hung.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            // Answers after a while, from a task of its own so other requests go on.
            "slow" => {
                hung.fetch_add(1, Ordering::SeqCst);
                let reply = protocol::encode(&scripted_reply(&request, delivery.traceparent.as_deref())).unwrap();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    delivery.reply(ContentType::MsgPack, reply).await.unwrap();
                    delivery.ack().await.unwrap();
                });
                continue;
            }
            "garbage" => vec![0xc1],
            "wrongid" => protocol::encode(&Reply::error("someone-else", ErrorCode::Internal, "x")).unwrap(),
            _ => protocol::encode(&scripted_reply(&request, delivery.traceparent.as_deref())).unwrap(),
        };
        delivery.reply(ContentType::MsgPack, body).await.unwrap();
        delivery.ack().await.unwrap();
    }
}

/// `header_traceparent`: the `traceparent` the message's headers carried.
fn scripted_reply(request: &Request, header_traceparent: Option<&str>) -> Reply {
    let frame = || match &request.input {
        Input::Frame(frame) => frame.clone(),
        Input::Json(_) => panic!("model {} got JSON instead of a frame", request.model),
    };
    let outcome = match request.model.as_str() {
        "azure" => match &request.input {
            Input::Json(text) => Outcome::Json(format!(r#"{{"echo":{text}}}"#)),
            Input::Frame(_) => panic!("an Azure ML model got a frame"),
        },
        // Reports what the request carried besides its frame.
        "options" => {
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            let deadline_in_ms = request.deadline_ms.unwrap().saturating_sub(now_ms);
            Outcome::Json(
                json!({
                    "type": request.options.predict_type,
                    "trace": describe_trace(request.traceparent.as_deref(), header_traceparent),
                    "request_id": request.request_id,
                    "model_version": request.model_version,
                    "deadline_in_s": (deadline_in_ms as f64 / 1000.0).round(),
                    "rows": frame().n_rows,
                })
                .to_string(),
            )
        }
        // The first row's `code` names the error to answer with.
        "errors" => {
            let frame = frame();
            let Some(ColumnData::Str { values }) = frame.column("code").map(|c| &c.data) else {
                panic!("errors needs a string column 'code'")
            };
            let code = values[0].clone().unwrap();
            let parsed: ErrorCode = serde_json::from_value(Value::String(code.clone())).unwrap();
            Outcome::Error(ErrorBody::new(parsed, format!("scripted {code}")))
        }
        // `x` back as `.pred`; version 3 answers one more (a shadow that disagrees).
        "rf_reg" => {
            let Some(ColumnData::F64 { values }) = frame().column("x").map(|c| c.data.clone()) else {
                panic!("rf_reg needs a numeric column 'x'")
            };
            let shift = if request.model_version.as_deref() == Some("3") { 1.0 } else { 0.0 };
            let values = values.into_iter().map(|v| v.map(|v| v + shift)).collect();
            Outcome::Predictions(Frame::new(vec![Column::new(".pred", ColumnData::F64 { values })]).unwrap())
        }
        "badframe" => Outcome::Predictions(Frame {
            n_rows: 1,
            columns: vec![Column::new(
                "p",
                ColumnData::Factor { levels: vec!["a".into()], values: vec![Some(5)], ordered: false },
            )],
        }),
        _ => Outcome::Predictions(frame()),
    };
    Reply {
        version: PROTOCOL_VERSION,
        id: request.id.clone(),
        outcome,
        timings: Timings {
            queue_ms: 1.5,
            r_ms: 2.25,
            worker_ms: 4.0,
            worker: "test-worker".into(),
            host_pid: Some(4242),
            attempts: 1,
            path: None,
            // The version that scored, as a worker says it; the other models leave it to
            // the dispatcher (as a worker older than the field does).
            model_version: request.model_version.clone().filter(|_| request.model == "rf_reg"),
        },
    }
}

/// The `traceparent` a test sends.
const CALLER_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the request's `traceparent` is, against [`CALLER_TRACEPARENT`]: its trace (the
/// caller's or a new one), its parent id (the dispatcher's own span: never the caller's),
/// and whether the message's headers carried the same.
fn describe_trace(body: Option<&str>, header: Option<&str>) -> Value {
    let Some(body) = body else { return Value::Null };
    let (caller, sent) = (CALLER_TRACEPARENT.split('-').collect::<Vec<_>>(), body.split('-').collect::<Vec<_>>());
    assert_eq!(sent.len(), 4, "{body}");
    json!({
        "trace_id": if sent[1] == caller[1] { "the caller's" } else { "new" },
        "parent_id": if sent[2] == caller[2] { "the caller's" } else { "new" },
        "sampled": sent[3] == "01",
        "in_the_headers": header == Some(body),
    })
}

/// Waits (bounded) for something another task does.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn error(code: &str, message: &str) -> String {
    json!({ "code": code, "message": message }).to_string()
}

fn plain_error(message: &str) -> String {
    json!({ "message": message }).to_string()
}

#[tokio::test]
async fn routes_probes_and_models() {
    let service = Service::start(Setup::default()).await;
    let iris = r#"{"name":"iris","version":"2","kind":"predict","r_class":["test"],"predict_type":null,
        "schema":{"columns":[{"name":"Sepal.Length","type":"numeric"},
                             {"name":"Species","type":"factor","levels":["setosa","versicolor"]}]},
        "state":"ready","live_hosts":1,"traffic":100.0}"#;
    // `GET /models` lists them by name, then version, whatever order workers announce,
    // each with how it is served.
    let mut sorted = models();
    sorted.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let listed: Vec<Value> = sorted
        .iter()
        .map(|m| {
            let mut entry = serde_json::to_value(m).unwrap();
            entry["state"] = json!("ready");
            entry["live_hosts"] = json!(1);
            entry["traffic"] = json!(100.0);
            entry
        })
        .collect();
    let all_models = serde_json::to_string(&listed).unwrap();
    service
        .check_all(&[
            case("GET", "/", "", 200, "Healthy").expect("content-type", "text/plain; charset=utf-8"),
            case("GET", "/live", "", 200, "live"),
            case("GET", "/ready", "", 200, "ready"),
            case("GET", "/models", "", 200, &all_models),
            case("GET", "/models/iris", "", 200, iris),
            case("GET", "/models/iris/versions/2", "", 200, iris),
            case(
                "GET",
                "/models/iris/versions/3",
                "",
                404,
                &error("model_not_found", "model 'iris' version '3' is not served here (live versions: 2)"),
            ),
            case(
                "GET",
                "/models/nope",
                "",
                404,
                &error("model_not_found", &format!("model 'nope' is not served here (served: {SERVED})")),
            ),
            // Axum's own failures answer in JSON too.
            case("GET", "/models/%FF", "", 400, &error("bad_request", "invalid path: ...")),
            case("GET", "/nowhere", "", 404, &plain_error("no route for GET /nowhere")),
            case("POST", "/models", "", 405, &plain_error("method POST is not allowed on /models")),
            case("GET", "/score", "", 405, &plain_error("method GET is not allowed on /score")),
            case("GET", "/models/iris/score", "", 405, &plain_error("method GET is not allowed on /models/iris/score")),
        ])
        .await;
}

#[tokio::test]
async fn scoring() {
    let service = Service::start(Setup::default()).await;
    let missing_species = error("invalid_input", "missing column 'Species' (the model needs: Sepal.Length, Species)");
    let unseen_level = error(
        "invalid_input",
        "column 'Species': unseen level 'virginica' in row 2 (known levels: setosa, versicolor)",
    );
    let traceparent = CALLER_TRACEPARENT;
    let mut cases = vec![
        // POST /score uses the default model when several are served.
        case(
            "POST",
            "/score",
            r#"[{"a":1,"b":"x"},{"a":2.5,"b":null}]"#,
            200,
            r#"[{"a":1.0,"b":"x"},{"a":2.5,"b":null}]"#,
        )
        .expect_timings(),
        case("POST", "/models/echo/score", r#"[{"a":1},{"a":2}]"#, 200, "[1,2]")
            .expect_timings()
            .expect("x-rfleet-model-version", "-"),
        case("POST", "/models/echo/score", r#"{"columns":["a"],"data":[[1],[2]]}"#, 200, "[1,2]"),
        case("POST", "/models/echo/score", r#"{"data":[{"a":true}]}"#, 200, "[true]"),
        // The schema orders and types the columns and drops extra ones before the bus.
        case(
            "POST",
            "/models/iris/score",
            r#"[{"x":0,"Species":"setosa","Sepal.Length":5}]"#,
            200,
            r#"[{"Sepal.Length":5.0,"Species":"setosa"}]"#,
        ),
        // A worker that does not say which version scored: the one published for.
        case(
            "POST",
            "/models/iris/versions/2/score",
            r#"[{"Species":"versicolor","Sepal.Length":6.5}]"#,
            200,
            r#"[{"Sepal.Length":6.5,"Species":"versicolor"}]"#,
        )
        .expect("x-rfleet-model-version", "2"),
        // The version whose schema refused the input is named too.
        case("POST", "/models/iris/score", r#"[{"Sepal.Length":5}]"#, 422, &missing_species)
            .expect("x-rfleet-model-version", "2"),
        case(
            "POST",
            "/models/iris/score",
            r#"[{"Sepal.Length":5,"Species":"setosa"},{"Sepal.Length":6,"Species":"virginica"}]"#,
            422,
            &unseen_level,
        ),
        case(
            "POST",
            "/models/iris/score",
            r#"[{"Sepal.Length":"long","Species":"setosa"}]"#,
            422,
            &error("invalid_input", r#"column 'Sepal.Length': expected a number, got a string in row 1: ..."#),
        ),
        case(
            "POST",
            "/models/iris/versions/3/score",
            "[{}]",
            404,
            &error("model_not_found", "model 'iris' version '3' is not served here (live versions: 2)"),
        )
        .expect("x-rfleet-model-version", "-"),
        case(
            "POST",
            "/models/nope/score",
            "[{}]",
            404,
            &error("model_not_found", &format!("model 'nope' is not served here (served: {SERVED})")),
        ),
        // Bodies that are not tables: syntax is 400, a table of the wrong shape 422.
        case(
            "POST",
            "/models/echo/score",
            r#"[{"a":"#,
            400,
            &error("bad_request", "malformed JSON: EOF while parsing a value at line 1 column 6"),
        ),
        case("POST", "/models/echo/score", "", 400, &error("bad_request", "the body is empty")),
        case(
            "POST",
            "/models/echo/score",
            "[]",
            422,
            &error("invalid_input", "no rows: the body holds an empty list of rows"),
        ),
        case(
            "POST",
            "/models/echo/score",
            r#"[{"a":1},{"a":"x"}]"#,
            422,
            &error("invalid_input", r#"column 'a': row 2 holds a string ("x") but earlier rows hold a number"#),
        ),
        // Azure ML entry scripts get the body as is and answer JSON that is passed back verbatim.
        case("POST", "/models/azure/score", r#"{"data": [1, 2]}"#, 200, r#"{"echo":{"data": [1, 2]}}"#)
            .expect("content-type", "application/json"),
        case(
            "POST",
            "/models/azure/score",
            "not json",
            400,
            &error("bad_request", "malformed JSON: expected ident at line 1 column 2"),
        ),
        case("POST", "/models/azure/score", " ", 400, &error("bad_request", "the body is empty")),
        // Options, trace context, request id and deadline travel with the request.
        case(
            "POST",
            "/models/options/score?type=prob",
            r#"[{"a":1}]"#,
            200,
            // The caller's trace, the dispatcher's span as the parent, in body and headers alike.
            &json!({
                "type": "prob", "request_id": "req-7",
                "trace": {"trace_id": "the caller's", "parent_id": "new", "sampled": true, "in_the_headers": true},
                "model_version": null, "deadline_in_s": 60.0, "rows": 1,
            })
            .to_string(),
        )
        .with("traceparent", traceparent)
        .with("x-request-id", "req-7")
        .with("x-rfleet-timeout-ms", "60000")
        .expect("x-request-id", "req-7")
        .expect("x-ms-client-request-id", "-"),
        case(
            "POST",
            "/models/options/score",
            r#"[{"a":1}]"#,
            200,
            // No traceparent sent: a new trace.
            &json!({
                "type": null, "request_id": "ms-1",
                "trace": {"trace_id": "new", "parent_id": "new", "sampled": true, "in_the_headers": true},
                "model_version": null, "deadline_in_s": 30.0, "rows": 1,
            })
            .to_string(),
        )
        .with("x-ms-client-request-id", "ms-1")
        .expect("x-ms-client-request-id", "ms-1")
        .expect("x-request-id", "-"),
        case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]")
            .with("x-ms-client-request-id", "ms-2")
            .with("x-request-id", "req-2")
            .expect("x-ms-client-request-id", "ms-2")
            .expect("x-request-id", "req-2"),
        case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]").expect("x-request-id", "*"),
        // Errors get request ids too.
        case("GET", "/nowhere", "", 404, &plain_error("no route for GET /nowhere")).expect("x-request-id", "*"),
        // Deadlines.
        case("POST", "/models/hang/score", r#"[{"a":1}]"#, 504, &error("deadline_exceeded", "no reply within 200 ms"))
            .with("x-rfleet-timeout-ms", "200"),
    ];
    for bad in ["soon", "0", "86400001"] {
        cases.push(
            case(
                "POST",
                "/models/echo/score",
                r#"[{"a":1}]"#,
                400,
                &error(
                    "bad_request",
                    &format!(
                        "invalid x-rfleet-timeout-ms header '{bad}': expected a whole number of milliseconds from 1 \
                         to 86400000"
                    ),
                ),
            )
            .with("x-rfleet-timeout-ms", bad),
        );
    }
    cases.extend([
        // Replies that are bugs somewhere: 500 with a message saying what broke.
        case(
            "POST",
            "/models/garbage/score",
            r#"[{"a":1}]"#,
            500,
            &error("internal", "the worker's reply is unreadable: cannot decode message: ..."),
        ),
        case(
            "POST",
            "/models/wrongid/score",
            r#"[{"a":1}]"#,
            500,
            &error("internal", "the worker's reply carries id 'someone-else' but the request's id is '..."),
        ),
        case(
            "POST",
            "/models/badframe/score",
            r#"[{"a":1}]"#,
            500,
            &error(
                "internal",
                // Prefix only: frame.rs numbers this row from 0, unlike every other message (reported).
                "the worker's reply holds an invalid frame: column 'p': factor code 5 in row ...",
            ),
        ),
        // `?type=` would reach R as "" (found by schemathesis).
        case(
            "POST",
            "/models/echo/score?type=",
            r#"[{"a":1}]"#,
            400,
            &error(
                "bad_request",
                "`type` is empty: leave it out for the model's default, or name a type its predict accepts (e.g. prob)",
            ),
        ),
        // R strings cannot hold NUL: one reaching R ended the host (found by schemathesis).
        case(
            "POST",
            "/models/echo/score?type=a%00b",
            r#"[{"a":1}]"#,
            400,
            &error("bad_request", "`type` holds a NUL character, which R strings cannot hold"),
        ),
        case(
            "POST",
            "/models/echo/score",
            r#"[{"s":"ok"},{"s":"a\u0000b"}]"#,
            422,
            &error("invalid_input", "column 's': a NUL character in row 2, which R strings cannot hold"),
        ),
        case(
            "POST",
            "/models/echo/score",
            r#"[{"a\u0000":1}]"#,
            422,
            &error("invalid_input", r#"column "a\0": its name holds a NUL character, which R strings cannot hold"#),
        ),
    ]);
    // Every error code a worker can answer with, and its status.
    for (code, status) in [
        ("bad_request", 400),
        ("unsupported_version", 502),
        ("model_not_found", 404),
        ("invalid_input", 422),
        ("r_error", 422),
        ("host_crashed", 500),
        ("deadline_exceeded", 504),
        ("overloaded", 503),
        ("unavailable", 503),
        ("internal", 500),
    ] {
        let body = format!(r#"[{{"code":"{code}"}}]"#);
        let retry_after = if code == "overloaded" { "1" } else { "-" };
        cases.push(
            case("POST", "/models/errors/score", &body, status, &error(code, &format!("scripted {code}")))
                .expect_timings()
                .expect("retry-after", retry_after),
        );
    }
    service.check_all(&cases).await;
}

/// Bodies above 1 MiB are parsed on the blocking pool, and axum's 2 MB default limit must
/// not apply: only `max_body_bytes` does.
#[tokio::test]
async fn large_bodies_pass_below_the_limit() {
    let service = Service::start(Setup::default()).await;
    let n_rows = 60_000;
    let rows: Vec<Value> = (0..n_rows).map(|i| json!({ "a": i, "s": "abcdefghijklmnopqrstuvwxyz" })).collect();
    let body = serde_json::to_string(&rows).unwrap();
    assert!(body.len() > 2_500_000 && body.len() < 3 * 1024 * 1024, "body is {} bytes", body.len());
    let (status, headers, text) = service.send(&case("POST", "/models/echo/score", &body, 200, "")).await;
    assert_eq!(status, 200, "{}", truncate(&text));
    assert_eq!(header(&headers, "x-rfleet-host-pid"), Some("4242"));
    let got: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(got.len(), n_rows);
    assert_eq!(got[n_rows - 1], json!({ "a": n_rows - 1, "s": "abcdefghijklmnopqrstuvwxyz" }));
}

#[tokio::test]
async fn body_limit_and_inflight_bound() {
    let server = ServerSettings { max_body_bytes: 100, max_inflight: 1, ..ServerSettings::default() };
    let service = Arc::new(Service::start(Setup { server, ..Setup::default() }).await);
    let exactly_100 = format!(r#"[{{"s":"{}"}}]"#, "x".repeat(90));
    assert_eq!(exactly_100.len(), 100);
    let too_large = plain_error("request body exceeds the limit of 100 bytes");
    service
        .check_all(&[
            case("POST", "/models/echo/score", &exactly_100, 200, &format!(r#"["{}"]"#, "x".repeat(90))),
            case("POST", "/models/echo/score", &format!("{exactly_100} "), 413, &too_large).expect("x-request-id", "*"),
        ])
        .await;

    // A chunked body has no Content-Length: the limit is enforced while reading, on every
    // scoring route (the Open Inference Protocol's in its own error shape).
    let oip_too_large = json!({"error": "request body exceeds the limit of 100 bytes"}).to_string();
    for (path, expected) in [("/models/echo/score", &too_large), ("/v2/models/echo/infer", &oip_too_large)] {
        let response = raw_chunked_post(&service.base, path, &"[".repeat(150)).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{path}: {response}");
        assert!(response.ends_with(expected.as_str()), "{path}: {response}");
    }
    service
        .check(
            &case("POST", "/v2/models/echo/infer", &"[".repeat(101), 413, &oip_too_large).expect("connection", "close"),
        )
        .await;

    // One request waits for a reply that never comes; the next finds no permit.
    let hanging = {
        let service = service.clone();
        tokio::spawn(async move {
            let hang = case("POST", "/models/hang/score", r#"[{"a":1}]"#, 0, "").with("x-rfleet-timeout-ms", "1500");
            service.send(&hang).await
        })
    };
    wait_until("the worker holds the hanging request", || service.hung.load(Ordering::SeqCst) == 1).await;
    service
        .check(
            &case(
                "POST",
                "/models/echo/score",
                r#"[{"a":1}]"#,
                503,
                &error("overloaded", "too many requests in flight (limit 1); retry later"),
            )
            .expect("retry-after", "1"),
        )
        .await;
    // Every protocol takes its permit before it reads a byte of the body: a request whose
    // body never arrives is refused at once, not read first (regression: the Open Inference
    // Protocol read up to `max_body_bytes` before asking for a permit).
    for (path, expected) in [
        ("/models/echo/score", error("overloaded", "too many requests in flight (limit 1); retry later")),
        ("/predict", error("overloaded", "too many requests in flight (limit 1); retry later")),
        ("/v2/models/echo/infer", json!({"error": "too many requests in flight (limit 1); retry later"}).to_string()),
    ] {
        let response = raw_post_unfinished_body(&service.base, path, 50, "{\"inputs\"").await;
        assert!(response.starts_with("HTTP/1.1 503"), "{path}: {response}");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        assert_eq!(serde_json::from_str::<Value>(body).ok(), serde_json::from_str::<Value>(&expected).ok(), "{path}");
    }
    let (status, _, body) = hanging.await.unwrap();
    assert_eq!(status, 504);
    assert_json_matches(
        &serde_json::from_str(&body).unwrap(),
        &serde_json::from_str(&error("deadline_exceeded", "no reply within 1500 ms")).unwrap(),
        "the hanging request",
    );
    // The permit came back with the answer.
    service.check(&case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]")).await;
}

/// The only worker this dispatcher has heard from drains while another, not heard from yet,
/// consumes the same queue (a dispatcher learns of a worker at its next announcement):
/// requests are still published and answered, though readiness drops (regression: every
/// request was refused "no worker has announced its models yet" until the next announcement).
#[tokio::test]
async fn a_draining_worker_leaves_its_models_known() {
    let service = Service::start(Setup::default()).await;
    announce_as(&service.catalog, models(), 1, true);
    service
        .check_all(&[
            case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]"),
            case("GET", "/ready", "", 503, &plain_error("not ready: no R host is running")),
        ])
        .await;
}

#[tokio::test]
async fn full_queue_is_503_with_retry_after() {
    let setup = Setup { worker: Worker::Stalled, bus_capacity: 1, ..Setup::default() };
    let service = Arc::new(Service::start(setup).await);
    let waiting = {
        let service = service.clone();
        tokio::spawn(async move {
            let first = case("POST", "/models/echo/score", r#"[{"a":1}]"#, 0, "").with("x-rfleet-timeout-ms", "1000");
            service.send(&first).await
        })
    };
    wait_until("the first request is queued", || service.bus.depth(QUEUE) == 1).await;
    service
        .check(
            &case(
                "POST",
                "/models/echo/score",
                r#"[{"a":1}]"#,
                503,
                &error("overloaded", &format!("the request queue '{QUEUE}' is full; retry later")),
            )
            .expect("retry-after", "1"),
        )
        .await;
    let (status, _, _) = waiting.await.unwrap();
    assert_eq!(status, 504);
}

#[tokio::test]
async fn without_workers_or_default_model() {
    let setup = Setup { worker: Worker::Absent, default_model: None, ..Setup::default() };
    let service = Service::start(setup).await;
    service
        .check_all(&[
            case("GET", "/live", "", 200, "live"),
            case("GET", "/ready", "", 503, &plain_error("not ready: the message bus is not ready")),
            case(
                "POST",
                "/score",
                r#"[{"a":1}]"#,
                404,
                &error(
                    "model_not_found",
                    "POST /score needs exactly one served model or a default model; 10 are served (azure, badframe, \
                 echo, errors, garbage, hang, iris, options, slow, wrongid) and none is the default: use POST \
                 /models/{name}/score",
                ),
            ),
            case(
                "POST",
                "/models/echo/score",
                r#"[{"a":1}]"#,
                503,
                &error("unavailable", &format!("the message bus is unavailable: no worker consumes '{QUEUE}'")),
            ),
        ])
        .await;

    // With one model served, POST /score means it: the schema check proves which was chosen.
    announce(&service.catalog, models().into_iter().filter(|m| m.name == "iris").collect(), 1);
    service
        .check(&case(
            "POST",
            "/score",
            r#"[{"Sepal.Length":5}]"#,
            422,
            &error("invalid_input", "missing column 'Species' (the model needs: Sepal.Length, Species)"),
        ))
        .await;

    announce(&service.catalog, Vec::new(), 0);
    service
        .check_all(&[
            case(
                "GET",
                "/ready",
                "",
                503,
                &plain_error("not ready: no model is loaded; no R host is running; the message bus is not ready"),
            ),
            case(
                "POST",
                "/score",
                "[{}]",
                404,
                &error("model_not_found", "POST /score needs a served model, and none is served yet"),
            ),
            case("GET", "/models", "", 200, "[]"),
        ])
        .await;
}

/// `serve`'s contract: after the shutdown signal no new connection is taken, and a request
/// already waiting for its reply still gets it.
#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut service = Service::start(Setup::default()).await;
    let url = format!("{}/models/slow/score", service.base);
    let slow = {
        let request = service.client.post(&url).body(r#"[{"a":1}]"#);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    wait_until("the worker holds the slow request", || service.hung.load(Ordering::SeqCst) == 1).await;
    service.shutdown.take().unwrap().send(()).unwrap();
    assert_eq!(slow.await.unwrap(), (200, "[1]".to_string()));
    let served = tokio::time::timeout(Duration::from_secs(5), &mut service.server).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "serve did not return cleanly: {served:?}");
    assert!(reqwest::Client::new().post(&url).body("[{}]").send().await.is_err(), "served after shutdown");
}

/// Sends a POST by hand that declares `content_length` bytes but sends only `sent`, and
/// returns the response, which must come without the rest of the body (within 10 s).
async fn raw_post_unfinished_body(base: &str, path: &str, content_length: usize, sent: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: \
         {content_length}\r\n\r\n{sent}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The connection stays open (the body is unfinished): read until the whole answer is in.
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            response.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&response);
            let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string));
                length.and_then(|l| l.trim().parse::<usize>().ok()).is_some_and(|l| body.len() >= l)
            });
            if n == 0 || complete {
                break;
            }
        }
    })
    .await;
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(read.is_ok(), "{path}: no answer while the body was unfinished (got {response:?})");
    response
}

/// Sends a chunked POST by hand (reqwest only streams bodies with an extra feature) and
/// returns the raw response.
async fn raw_chunked_post(base: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Sends `n` scoring requests (`headers` on each) to `path`, 50 at a time, and counts
/// them by the version that answered (`x-rfleet-model-version`), after checking that each
/// answer is the one every version of `rf_reg` but 3 gives.
async fn count_versions(service: &Service, path: &str, headers: &[(&str, &str)], n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let sent = chunk.iter().map(|i| {
            let mut request = service.client.post(format!("{}{path}", service.base)).body(format!(r#"[{{"x":{i}}}]"#));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let version = response.headers().get("x-rfleet-model-version").map(|v| v.to_str().unwrap().to_string());
                let body = response.text().await.unwrap();
                assert_eq!((status, body.as_str()), (200, format!("[{i}.0]").as_str()), "{path}");
                version.expect("x-rfleet-model-version")
            }
        });
        for version in futures::future::join_all(sent).await {
            *counts.entry(version).or_insert(0) += 1;
        }
    }
    counts
}

/// `counts` (of `n` requests) hold each version's share in percent within 4.5 standard
/// deviations of a binomial count; a version with no share got none.
fn assert_split(counts: &BTreeMap<String, usize>, n: usize, expected: &[(&str, f64)]) {
    let total: usize = counts.values().sum();
    assert_eq!(total, n, "{counts:?}");
    assert!(counts.keys().all(|v| expected.iter().any(|(e, _)| e == v)), "{counts:?} for {expected:?}");
    for (version, percent) in expected {
        let got = counts.get(*version).copied().unwrap_or(0) as f64;
        let p = percent / 100.0;
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!((got - mean).abs() <= 4.5 * sd, "version {version}: {counts:?} for {expected:?}");
    }
}

/// `GET /models`, once `condition` holds for it (bounded).
async fn listed_once(service: &Service, what: &str, condition: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = service.client.get(format!("{}/models", service.base)).send().await.unwrap();
        let listed = response.json::<Vec<Value>>().await.unwrap();
        if condition(&listed) {
            return listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}: GET /models says {listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entry of `rf_reg` at `version` in a `GET /models` list.
fn rf_entry<'a>(models: &'a [Value], version: &str) -> &'a Value {
    models.iter().find(|m| m["name"] == "rf_reg" && m["version"] == version).unwrap_or(&Value::Null)
}

/// A rolling update (v1 on three hosts, v2 on one), then a traffic file that says 90/10,
/// rewritten to 10/90 while the dispatcher runs: each split over 1,000 unpinned requests,
/// and `GET /models` shows each version's share and the file's table.
#[tokio::test]
async fn unpinned_traffic_follows_live_hosts_then_the_traffic_file() {
    let dir = tempfile::tempdir().unwrap();
    let traffic_file = dir.path().join("traffic.toml");
    std::fs::write(&traffic_file, "").unwrap();
    let service = Service::start(Setup { traffic_file: Some(traffic_file.clone()), ..Setup::default() }).await;
    announce_worker(&service.catalog, "v1-a", vec![rf_reg("1")], 2, false, Vec::new());
    announce_worker(&service.catalog, "v1-b", vec![rf_reg("1")], 1, false, Vec::new());
    announce_worker(&service.catalog, "v2-a", vec![rf_reg("2")], 1, false, Vec::new());
    // A draining worker's hosts do not count.
    announce_worker(&service.catalog, "v2-b", vec![rf_reg("2")], 8, true, Vec::new());
    let n = 1000;

    let models = listed_once(&service, "rf_reg is listed", |m| rf_entry(m, "1").is_object()).await;
    assert_eq!(
        (rf_entry(&models, "1")["live_hosts"].clone(), rf_entry(&models, "1")["traffic"].clone()),
        (json!(3), json!(75.0))
    );
    assert_eq!(
        (rf_entry(&models, "2")["live_hosts"].clone(), rf_entry(&models, "2")["traffic"].clone()),
        (json!(1), json!(25.0))
    );
    assert!(rf_entry(&models, "1").get("traffic_config").is_none());
    assert_split(&count_versions(&service, "/models/rf_reg/score", &[], n).await, n, &[("1", 75.0), ("2", 25.0)]);

    // The file changes: no restart, the split follows.
    std::fs::write(&traffic_file, "[rf_reg]\nweights = { \"1\" = 90, \"2\" = 10 }\n").unwrap();
    let models = listed_once(&service, "the weights apply", |m| rf_entry(m, "1")["traffic"] == json!(90.0)).await;
    assert_eq!(rf_entry(&models, "2")["traffic_config"], json!({"weights": {"1": 90, "2": 10}}));
    assert_split(&count_versions(&service, "/models/rf_reg/score", &[], n).await, n, &[("1", 90.0), ("2", 10.0)]);

    // An invalid file keeps the last good split; the next good one applies.
    std::fs::write(&traffic_file, "[rf_reg]\nweights = { \"1\" = -1 }\n").unwrap();
    std::fs::write(&traffic_file, "[rf_reg]\nwieghts = { \"1\" = 1 }\n").unwrap();
    // Once the dispatcher has read (and refused) the last of them, the split is unchanged.
    let refused = || service.state.traffic_file_refused().is_some_and(|e| e.contains("wieghts"));
    wait_until("the invalid traffic file is read and refused", refused).await;
    let models = listed_once(&service, "the last good weights stay", |_| true).await;
    assert_eq!(rf_entry(&models, "1")["traffic"], json!(90.0));
    std::fs::write(&traffic_file, "[rf_reg]\nweights = { \"1\" = 10, \"2\" = 90 }\n").unwrap();
    listed_once(&service, "the new weights apply", |m| rf_entry(m, "2")["traffic"] == json!(90.0)).await;
    assert_split(&count_versions(&service, "/models/rf_reg/score", &[], n).await, n, &[("1", 10.0), ("2", 90.0)]);

    // Weighted versions without live hosts: the default rule over the live ones.
    announce_worker(&service.catalog, "v2-a", vec![rf_reg("2")], 0, false, Vec::new());
    let models = listed_once(&service, "v2 has no live host", |m| rf_entry(m, "2")["live_hosts"] == json!(0)).await;
    assert_eq!(
        (rf_entry(&models, "1")["traffic"].clone(), rf_entry(&models, "2")["traffic"].clone()),
        (json!(100.0), json!(0.0))
    );
    assert_split(&count_versions(&service, "/models/rf_reg/score", &[], 200).await, 200, &[("1", 100.0)]);
}

/// Pinned requests (a version route, Azure ML's deployment header, the Open Inference
/// Protocol's version routes) reach only their version, which the worker sees as the
/// request's `model_version` and says in its reply; unknown and failed versions say why.
#[tokio::test]
async fn pinned_versions_and_failed_packages() {
    let service = Service::start(Setup { default_model: Some("rf_reg"), ..Setup::default() }).await;
    announce_worker(&service.catalog, "v1", vec![rf_reg("1")], 1, false, Vec::new());
    announce_worker(&service.catalog, "v2", vec![rf_reg("2")], 1, false, Vec::new());
    // v3 is known, from a draining worker only: not live.
    announce_worker(&service.catalog, "v3", vec![rf_reg("3")], 1, true, Vec::new());
    let failed = vec![
        LoadFailure { name: "rf_reg".into(), version: Some("4".into()), message: "cannot read model.rds".into() },
        LoadFailure { name: "broken".into(), version: None, message: "invalid model.toml: unknown field `nme`".into() },
    ];
    announce_worker(&service.catalog, "w-failed", Vec::new(), 1, false, failed);
    let n = 100;
    for (path, headers, version) in [
        ("/models/rf_reg/versions/1/score", vec![], "1"),
        ("/models/rf_reg/versions/2/score", vec![], "2"),
        ("/models/rf_reg/score", vec![("azureml-model-deployment", "2")], "2"),
        ("/models/rf_reg/score", vec![("azureml-model-deployment", "1")], "1"),
        ("/score", vec![("azureml-model-deployment", "1")], "1"),
        // A version route wins over the header.
        ("/models/rf_reg/versions/2/score", vec![("azureml-model-deployment", "1")], "2"),
    ] {
        let counts = count_versions(&service, path, &headers, n).await;
        assert_eq!(counts, BTreeMap::from([(version.to_string(), n)]), "{path} {headers:?}");
    }
    let not_served = error("model_not_found", "model 'rf_reg' version '7' is not served here (live versions: 1, 2)");
    let failed_rds = error("unavailable", "model 'rf_reg' version '4' failed to load: cannot read model.rds");
    let failed_toml = error("unavailable", "model 'broken' failed to load: invalid model.toml: unknown field `nme`");
    let row = r#"[{"x":1}]"#;
    let infer = r#"{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":[1.5]}]}"#;
    let inferred = |version: &str| {
        json!({"model_name": "rf_reg", "model_version": version, "id": "i-1",
               "outputs": [{"name": "predict", "datatype": "FP64", "shape": [1], "data": [1.5]}]})
        .to_string()
    };
    service
        .check_all(&[
            case("POST", "/models/rf_reg/versions/7/score", row, 404, &not_served),
            case("POST", "/models/rf_reg/score", row, 404, &not_served).with("azureml-model-deployment", "7"),
            case("POST", "/score", row, 404, &not_served).with("azureml-model-deployment", "7"),
            case(
                "POST",
                "/models/rf_reg/score",
                row,
                400,
                &error("bad_request", "invalid azureml-model-deployment header '': expected a version of the model"),
            )
            .with("azureml-model-deployment", " "),
            // Known but not live: published all the same (its queue holds it for a worker).
            case("POST", "/models/rf_reg/versions/3/score", row, 200, "[2.0]").expect("x-rfleet-model-version", "3"),
            case("POST", "/models/rf_reg/versions/4/score", row, 503, &failed_rds),
            case("POST", "/models/rf_reg/score", row, 503, &failed_rds).with("azureml-model-deployment", "4"),
            case("POST", "/models/broken/score", row, 503, &failed_toml),
            case(
                "POST",
                "/v2/models/broken/infer",
                infer,
                503,
                &json!({"error": "model 'broken' failed to load: invalid model.toml: unknown field `nme`"}).to_string(),
            ),
            case("POST", "/v2/models/rf_reg/versions/2/infer", infer, 200, &inferred("2"))
                .with("x-request-id", "i-1")
                .expect("x-rfleet-model-version", "2"),
            case("POST", "/v2/models/rf_reg/versions/1/infer", infer, 200, &inferred("1"))
                .with("x-request-id", "i-1")
                .expect("x-rfleet-model-version", "1"),
            case(
                "POST",
                "/v2/models/rf_reg/versions/7/infer",
                infer,
                404,
                &json!({"error": "model 'rf_reg' version '7' is not served here (live versions: 1, 2)"}).to_string(),
            ),
            case(
                "GET",
                "/models/broken",
                "",
                200,
                &json!({"name": "broken", "version": null, "state": "failed",
                        "error": "invalid model.toml: unknown field `nme`"})
                .to_string(),
            ),
            case(
                "GET",
                "/models/rf_reg/versions/4",
                "",
                200,
                &json!({"name": "rf_reg", "version": "4", "state": "failed", "error": "cannot read model.rds"})
                    .to_string(),
            ),
        ])
        .await;
    // Unpinned: only the live versions (half each by their hosts); the OIP body names the
    // version that answered, as the header does.
    let counts = count_versions(&service, "/models/rf_reg/score", &[], 400).await;
    assert_split(&counts, 400, &[("1", 50.0), ("2", 50.0)]);
    for _ in 0..10 {
        let response =
            service.client.post(format!("{}/v2/models/rf_reg/infer", service.base)).body(infer).send().await.unwrap();
        let header = response.headers()["x-rfleet-model-version"].to_str().unwrap().to_string();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model_version"], json!(header));
        assert!(header == "1" || header == "2", "{header}");
    }
    // `GET /models`: every version with its hosts and share, the failed packages last.
    let models = listed_once(&service, "listed", |_| true).await;
    let summary: Vec<(Value, Value, Value, Value)> = models
        .iter()
        .filter(|m| m["name"] == "rf_reg" || m["name"] == "broken")
        .map(|m| (m["version"].clone(), m["state"].clone(), m["live_hosts"].clone(), m["traffic"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("1"), json!("ready"), json!(1), json!(50.0)),
            (json!("2"), json!("ready"), json!(1), json!(50.0)),
            (json!("3"), json!("ready"), json!(0), json!(0.0)),
            (json!(null), json!("failed"), Value::Null, Value::Null),
            (json!("4"), json!("failed"), Value::Null, Value::Null),
        ]
    );
}

/// Mirrored requests: the client's answer is the primary's, never the shadow's; each copy
/// is compared and counted (a shadow that answers otherwise is `different`, one that
/// answers the same `equal`); pinned requests and bodies that do not parse are not copied;
/// copies beyond the bound are dropped.
#[tokio::test]
async fn mirrored_requests_never_change_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let traffic_file = dir.path().join("traffic.toml");
    let mirror_to = |version: &str| {
        let text =
            format!("[rf_reg]\nweights = {{ \"1\" = 1 }}\nmirror = {{ version = \"{version}\", percent = 100 }}\n");
        std::fs::write(&traffic_file, text).unwrap();
    };
    mirror_to("3");
    let service = Service::start(Setup { traffic_file: Some(traffic_file.clone()), ..Setup::default() }).await;
    for version in ["1", "2", "3", "9"] {
        announce_worker(&service.catalog, &format!("v{version}"), vec![rf_reg(version)], 1, false, Vec::new());
    }
    let mirrored = |models: &[Value]| rf_entry(models, "1")["mirrored"].clone();
    let counts = |sent: u64, equal: u64, different: u64, failed: u64, dropped: u64| json!({"sent": sent, "equal": equal, "different": different, "failed": failed, "dropped": dropped});

    // The shadow (v3) answers one more: every answer is still v1's, every copy `different`.
    let n = 20;
    assert_eq!(count_versions(&service, "/models/rf_reg/score", &[], n).await, BTreeMap::from([("1".into(), n)]));
    let models = listed_once(&service, "20 differences", |m| mirrored(m)["different"] == json!(20)).await;
    assert_eq!(mirrored(&models), counts(20, 0, 20, 0, 0));
    assert_eq!(
        rf_entry(&models, "3")["traffic_config"],
        json!({"weights": {"1": 1}, "mirror": {"version": "3", "percent": 100}})
    );
    // Neither pinned requests nor bodies that fail their checks are copied.
    service
        .check_all(&[
            case("POST", "/models/rf_reg/versions/1/score", r#"[{"x":1}]"#, 200, "[1.0]"),
            case("POST", "/models/rf_reg/score", r#"[{"x":1}]"#, 200, "[1.0]").with("azureml-model-deployment", "2"),
            case(
                "POST",
                "/models/rf_reg/score",
                r#"[{"y":1}]"#,
                422,
                &error("invalid_input", "missing column 'x' (the model needs: x)"),
            ),
        ])
        .await;

    // A shadow that agrees (v2): `equal`.
    mirror_to("2");
    listed_once(&service, "the mirror moves to v2", |m| rf_entry(m, "1")["traffic_config"]["mirror"]["version"] == "2")
        .await;
    assert_eq!(count_versions(&service, "/models/rf_reg/score", &[], n).await, BTreeMap::from([("1".into(), n)]));
    let models = listed_once(&service, "20 agreements", |m| mirrored(m)["equal"] == json!(20)).await;
    assert_eq!(mirrored(&models), counts(40, 20, 20, 0, 0));

    // A shadow that never answers (v9) holds its copies until their own deadline; beyond the
    // bound they are dropped, and the clients' answers do not wait for any of them.
    mirror_to("9");
    listed_once(&service, "the mirror moves to v9", |m| rf_entry(m, "1")["traffic_config"]["mirror"]["version"] == "9")
        .await;
    let bound = dispatcher::mirror::MAX_MIRRORS_IN_FLIGHT;
    let over = 8;
    assert_eq!(
        count_versions(&service, "/models/rf_reg/score", &[("x-rfleet-timeout-ms", "600000")], bound + over).await,
        BTreeMap::from([("1".into(), bound + over)])
    );
    let models = listed_once(&service, "copies dropped", |m| mirrored(m)["dropped"] == json!(over)).await;
    assert_eq!(mirrored(&models), counts(40 + bound as u64, 20, 20, 0, over as u64));
    // The same counts in `rfleet_mirrored_total`, by shadow version.
    let (_, _, text) = service.metrics(None).await;
    let copies = |version: &str, outcome: &str| {
        series(&text, &format!("rfleet_mirrored_total{{model=\"rf_reg\",version=\"{version}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(copies("3", "different"), Some(20.0), "{text}");
    assert_eq!(copies("2", "same"), Some(20.0), "{text}");
    assert_eq!(copies("9", "dropped"), Some(over as f64), "{text}");
}

/// The value of one series in the text format (`name{labels}` exactly as encoded).
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

impl Service {
    /// `GET /metrics` with `accept`: its content type and body.
    async fn metrics(&self, accept: Option<&str>) -> (u16, String, String) {
        let mut request = self.client.get(format!("{}/metrics", self.base));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = header(response.headers(), "content-type").unwrap_or_default().to_string();
        (status, content_type, response.text().await.unwrap())
    }
}

/// After requests of known outcomes, `GET /metrics` shows exactly those counts: scoring by
/// model, version and outcome (an unknown model not at all), the reply wait and the bus
/// time of the replies, and HTTP by method, route template and status (404s and routes
/// that do not exist included). Each test is a process of its own (nextest), so the counts
/// are this test's.
#[tokio::test]
async fn metrics_count_what_was_served() {
    let service = Service::start(Setup::default()).await;
    let r_error = error("r_error", "scripted r_error");
    let cases = [
        case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]"),
        case("POST", "/models/echo/score", r#"[{"a":2}]"#, 200, "[2]"),
        case("POST", "/score", r#"[{"a":3}]"#, 200, "[3]"),
        case("POST", "/models/echo/score", "[{", 400, &error("bad_request", "malformed JSON...")),
        case("POST", "/models/errors/score", r#"[{"code":"r_error"}]"#, 422, &r_error),
        case(
            "POST",
            "/models/errors/score",
            r#"[{"code":"overloaded"}]"#,
            503,
            &error("overloaded", "scripted overloaded"),
        ),
        case("POST", "/models/hang/score", r#"[{"a":1}]"#, 504, &error("deadline_exceeded", "no reply within 200 ms"))
            .with("x-rfleet-timeout-ms", "200"),
        case("POST", "/models/iris/score", r#"[{"Sepal.Length":5,"Species":"setosa"}]"#, 200, "[[5.0,\"setosa\"]]"),
        case(
            "POST",
            "/models/nope/score",
            r#"[{"a":1}]"#,
            404,
            &error("model_not_found", "model 'nope' is not served here..."),
        ),
        case("GET", "/nowhere/at/all", "", 404, &plain_error("no route for GET /nowhere/at/all")),
    ];
    for case in &cases {
        let (status, _, body) = service.send(case).await;
        assert_eq!(status, case.status, "{} {}: {body}", case.method, case.path);
    }
    let (status, content_type, text) = service.metrics(None).await;
    assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    let scoring = |model: &str, version: &str, outcome: &str| {
        format!("rfleet_requests_total{{model=\"{model}\",version=\"{version}\",outcome=\"{outcome}\"}}")
    };
    let http = |method: &str, route: &str, status: u16| {
        format!(
            "http_server_request_duration_seconds_count{{http_request_method=\"{method}\",http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
        )
    };
    let expected = [
        (scoring("echo", "", "success"), 3.0),
        (scoring("echo", "", "client_error"), 1.0),
        (scoring("errors", "", "r_error"), 1.0),
        (scoring("errors", "", "rejected"), 1.0),
        (scoring("hang", "", "timeout"), 1.0),
        (scoring("iris", "2", "success"), 1.0),
        (scoring("echo", "", "internal"), 0.0),
        ("rfleet_request_duration_seconds_count{model=\"echo\",version=\"\",outcome=\"success\"}".into(), 3.0),
        // Replies that came: the timed-out request has none, the refused one was never published.
        ("rfleet_reply_wait_seconds_count{model=\"echo\",version=\"\"}".into(), 3.0),
        ("rfleet_reply_wait_seconds_count{model=\"errors\",version=\"\"}".into(), 2.0),
        ("rfleet_phase_duration_seconds_count{model=\"echo\",version=\"\",phase=\"queue_wait\"}".into(), 3.0),
        (http("POST", "/models/{name}/score", 200), 3.0),
        (http("POST", "/score", 200), 1.0),
        (http("POST", "/models/{name}/score", 400), 1.0),
        (http("POST", "/models/{name}/score", 422), 1.0),
        (http("POST", "/models/{name}/score", 503), 1.0),
        (http("POST", "/models/{name}/score", 504), 1.0),
        (http("POST", "/models/{name}/score", 404), 1.0),
        (http("GET", "unmatched", 404), 1.0),
        ("http_server_request_body_size_bytes_count{http_request_method=\"POST\",http_route=\"/models/{name}/score\"}".into(), 8.0),
        ("http_server_active_requests{http_request_method=\"POST\"}".into(), 0.0),
        ("rfleet_bus_published_total{transport=\"embedded\",outcome=\"ok\"}".into(), 7.0),
    ];
    for (name, value) in expected {
        assert_eq!(series(&text, &name), Some(value), "{name} in\n{text}");
    }
    // A model nobody serves never becomes a label, nor does a path no route matched.
    assert!(!text.contains("nope") && !text.contains("nowhere"), "{text}");
    // The one GET /metrics in flight now.
    assert_eq!(series(&text, "http_server_active_requests{http_request_method=\"GET\"}"), Some(1.0));
}

/// The scraper's `Accept` picks the format: OpenMetrics (with the request's trace id as an
/// exemplar, ending in `# EOF`) for Prometheus, the text format 0.0.4 otherwise; with
/// `metrics.enabled = false` there is no `/metrics`.
#[tokio::test]
async fn metrics_negotiate_their_format() {
    let service = Service::start(Setup::default()).await;
    let traced = case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]").with("traceparent", CALLER_TRACEPARENT);
    service.check(&traced).await;
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, content_type, text) = service.metrics(Some(prometheus)).await;
    assert_eq!((status, content_type.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(text.ends_with("# EOF\n"), "{text}");
    let exemplar = "# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"}";
    let traced_bucket = |family: &str, label: &str| {
        text.lines().any(|line| {
            line.starts_with(&format!("{family}_bucket{{")) && line.contains(label) && line.contains(exemplar)
        })
    };
    assert!(traced_bucket("rfleet_request_duration_seconds", "model=\"echo\""), "no scoring exemplar:\n{text}");
    assert!(traced_bucket("http_server_request_duration_seconds", "http_route=\"/models/{name}/score\""), "{text}");
    assert!(traced_bucket("rfleet_phase_duration_seconds", "phase=\"queue_wait\""), "no queue_wait exemplar:\n{text}");

    let (status, content_type, text) = service.metrics(Some("text/plain")).await;
    assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    assert!(!text.contains("# EOF") && !text.contains("trace_id"), "{text}");

    let off = Service::start(Setup { metrics_enabled: false, ..Setup::default() }).await;
    off.check(&case("GET", "/metrics", "", 404, &plain_error("no route for GET /metrics"))).await;
}

/// Log lines written in memory, for the access log test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A request's log line names its trace (the caller's `traceparent`'s), in text and JSON
/// logs alike (telemetry's two formats), so a log line leads to its trace.
#[tokio::test]
async fn log_lines_name_the_trace() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    for json in [false, true] {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt::layer().with_writer(captured.clone()).with_ansi(false);
        let layer = if json { layer.json().flatten_event(true).boxed() } else { layer.boxed() };
        // This test's runtime has one thread, which serves the requests too.
        let _logging = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        let service = Service::start(Setup::default()).await;
        let traced =
            case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]").with("traceparent", CALLER_TRACEPARENT);
        service.check(&traced).await;
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|line| line.contains("request done") && line.contains("/models/echo/score"))
            .unwrap_or_else(|| panic!("no access log line for the request:\n{logs}"));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        if json {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
            assert_eq!(line["span"]["model"], "echo", "{line}");
        } else {
            assert!(line.contains(&format!("trace_id=\"{trace_id}\"")), "{line}");
        }
    }
}

/// With traces exported (OTLP over HTTP to a receiver of this test's), a request's SERVER
/// span and the PRODUCER span of its publish are exported in the caller's trace, named as
/// the contract says, and the `traceparent` the worker gets names the PRODUCER span: its
/// parent id is that span's id. The receiver keeps each export's protobuf body; span names,
/// attribute keys and values are plain bytes in it, and so are the ids.
#[test]
fn exported_spans_follow_the_contract() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exports = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let receiver = runtime.block_on(async {
        let exports = exports.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                exports.lock().unwrap().extend_from_slice(&body);
                ""
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    });
    // Read by the exporter when it is built (this test is a process of its own).
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"));
    let traces = settings::TraceSettings { exporter: settings::TraceExporter::Otlp, ..Default::default() };
    let log = settings::LogSettings { level: "warn".into(), ..Default::default() };
    let telemetry = telemetry::init(&log, &traces, "rfleet-dispatcher-test").unwrap();
    assert!(telemetry::trace::exporting());

    let sent = runtime.block_on(async {
        let service = Service::start(Setup { worker: Worker::Absent, ..Setup::default() }).await;
        let mut consumer = service.bus.consumer(QUEUE);
        let worker = tokio::spawn(async move {
            let delivery = consumer.next().await.unwrap();
            let request: Request = protocol::decode(&delivery.body).unwrap();
            let in_headers = delivery.traceparent.clone();
            let reply = protocol::encode(&scripted_reply(&request, None)).unwrap();
            delivery.reply(ContentType::MsgPack, reply).await.unwrap();
            delivery.ack().await.unwrap();
            (request.traceparent, in_headers)
        });
        let traced =
            case("POST", "/models/echo/score", r#"[{"a":1}]"#, 200, "[1]").with("traceparent", CALLER_TRACEPARENT);
        service.check(&traced).await;
        worker.await.unwrap()
    });
    let (in_body, in_headers) = sent;
    assert_eq!(in_body, in_headers, "the body and the headers carry one traceparent");
    let sent = in_body.expect("a traceparent");
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{sent}");
    assert_ne!(fields[2], "00f067aa0ba902b7", "{sent}");

    // Flushes what is batched.
    telemetry.shutdown();
    let exported = exports.lock().unwrap().clone();
    let holds = |bytes: &[u8]| exported.windows(bytes.len()).any(|window| window == bytes);
    let hex_bytes = |hex: &str| {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect::<Vec<u8>>()
    };
    for text in [
        "POST /models/{name}/score",
        "http.route",
        "http.response.status_code",
        "user_agent.original",
        "publish rfleet.requests",
        "rfleet_embedded",
        "messaging.destination.name",
        "messaging.message.body.size",
    ] {
        assert!(holds(text.as_bytes()), "{text:?} is not in the exported spans");
    }
    assert!(holds(&hex_bytes(fields[1])), "the caller's trace id is not in the exported spans");
    assert!(holds(&hex_bytes(fields[2])), "the PRODUCER span the worker's traceparent names was not exported");
    assert!(holds(&hex_bytes("00f067aa0ba902b7")), "the SERVER span's parent (the caller's span) was not exported");
    runtime.shutdown_background();
}
