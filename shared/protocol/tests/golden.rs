//! Golden bytes: the committed MessagePack examples in `golden/` are the wire contract.
//!
//! Each example is encoded and compared byte for byte with its file, and the file is
//! decoded and compared with the value, so any change to the wire format fails here.
//! Other languages check their encoders against the same files (see docs/protocol.md).
//! After a deliberate, versioned change: `RFLEET_BLESS=1 cargo test -p protocol --test golden`.

use std::path::PathBuf;

use protocol::host::{FromHost, HostOutput, ModelSpec, Phases, ToHost};
use protocol::native::{NativeInput, NativeOutput, NativeTree};
use protocol::{Algorithm, Engine, EngineStatus, NativeForest, NativeLoad, NativeSummary, SelfCheck};
use protocol::{
    Column, ColumnData, ColumnSpec, ColumnType, ErrorBody, ErrorCode, Frame, Input, LoadFailure, ModelInfo, ModelKind,
    ModelRef, Options, Outcome, Reply, Request, Schema, Timings, PROTOCOL_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};

fn input_frame() -> Frame {
    Frame::new(vec![
        Column::new("mpg", ColumnData::F64 { values: vec![Some(21.0), None] }),
        Column::new("cyl", ColumnData::I32 { values: vec![Some(6), Some(4)] }),
        Column::new("am", ColumnData::Bool { values: vec![Some(true), None] }),
        Column::new("name", ColumnData::Str { values: vec![Some("Mazda RX4".into()), None] }),
        Column::new(
            "gear",
            ColumnData::Factor {
                levels: vec!["3".into(), "4".into(), "5".into()],
                values: vec![Some(1), None],
                ordered: false,
            },
        ),
    ])
    .unwrap()
}

fn request() -> Request {
    Request {
        version: PROTOCOL_VERSION,
        id: "5f0c6d2e-8a1b-4c3d-9e7f-001122334455".into(),
        model: "mtcars".into(),
        model_version: Some("1".into()),
        deadline_ms: Some(1_790_000_000_000),
        options: Options { predict_type: Some("response".into()), split: None, engine: None },
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        request_id: Some("client-42".into()),
        input: Input::Frame(input_frame()),
    }
}

fn reply() -> Reply {
    Reply {
        version: PROTOCOL_VERSION,
        id: "5f0c6d2e-8a1b-4c3d-9e7f-001122334455".into(),
        outcome: Outcome::Predictions(
            Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: vec![Some(20.5), Some(26.25)] })]).unwrap(),
        ),
        timings: Timings {
            queue_ms: 0.25,
            r_ms: 7.5,
            worker_ms: 8.0,
            worker: "worker-1".into(),
            host_pid: Some(4242),
            attempts: 1,
            path: None,
            model_version: Some("1".into()),
        },
    }
}

fn error_reply() -> Reply {
    Reply::error(
        "5f0c6d2e-8a1b-4c3d-9e7f-001122334455",
        ErrorCode::InvalidInput,
        "column 'gear': unseen level '6' in row 1 (known levels: 3, 4, 5)",
    )
}

fn json_request() -> Request {
    Request { input: Input::Json(r#"[{"x":1}]"#.into()), options: Options::default(), model_version: None, ..request() }
}

fn model_info() -> ModelInfo {
    ModelInfo {
        name: "mtcars".into(),
        version: Some("1".into()),
        kind: ModelKind::Predict,
        r_class: vec!["randomForest.formula".into(), "randomForest".into()],
        schema: Some(Schema {
            columns: vec![
                ColumnSpec { name: "wt".into(), column_type: ColumnType::Numeric, levels: None },
                ColumnSpec {
                    name: "gear".into(),
                    column_type: ColumnType::Factor,
                    levels: Some(vec!["3".into(), "4".into(), "5".into()]),
                },
            ],
        }),
        predict_type: None,
        forest: None,
        engine: Some(EngineStatus {
            configured: Engine::Auto,
            serving: Engine::Native,
            native: Some(NativeSummary {
                algorithm: Algorithm::RandomForest,
                trees: 500,
                nodes: 41_250,
                bytes: 990_000,
                bytes_per_node: 24.0,
                types: vec!["response".into()],
                extracted: false,
            }),
            self_check: Some(self_check()),
            reason: None,
            r_fallback: false,
            released: true,
        }),
    }
}

fn self_check() -> SelfCheck {
    SelfCheck { passed: true, rows: 256, types: vec!["response".into()], mismatches: 0, ties: 0, message: None }
}

/// A two-tree gbm: a numeric split with a missing branch, a categorical split.
fn native_forest() -> NativeForest {
    NativeForest {
        format: protocol::native::NATIVE_FORMAT,
        algorithm: Algorithm::Gbm,
        package_version: "2.1.8.1".into(),
        inputs: vec![
            NativeInput { name: "wt".into(), levels: None, categorical: false, code_base: 0 },
            NativeInput {
                name: "gear".into(),
                levels: Some(vec!["3".into(), "4".into(), "5".into()]),
                categorical: true,
                code_base: 0,
            },
        ],
        trees: vec![
            NativeTree {
                var: vec![0, -1, -1, -1],
                split: vec![3.25, 0.0, 0.0, 0.0],
                left: vec![1, 0, 0, 0],
                right: vec![2, 0, 0, 0],
                missing: vec![3, 0, 0, 0],
                value: vec![0.0, 1.5, -0.5, 0.25],
                distribution: Vec::new(),
                sets: Vec::new(),
            },
            NativeTree {
                var: vec![1, -1, -1, -1],
                split: vec![0.0, 0.0, 0.0, 0.0],
                left: vec![1, 0, 0, 0],
                right: vec![2, 0, 0, 0],
                missing: vec![3, 0, 0, 0],
                value: vec![0.0, 0.125, -0.125, 0.0],
                distribution: Vec::new(),
                sets: vec![vec![-1, 1, 0]],
            },
        ],
        output: NativeOutput::Boosted { init: 20.0625, distribution: "gaussian".into() },
    }
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("{name}.msgpack"));
    let bytes = protocol::encode(&value).unwrap();
    if std::env::var_os("RFLEET_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (bless with RFLEET_BLESS=1)", path.display()));
    assert_eq!(hex::encode(&bytes), hex::encode(&golden), "{name}: encoding differs from golden/{name}.msgpack");
    let decoded: T = protocol::decode(&golden).unwrap();
    assert_eq!(decoded, value, "{name}: golden bytes decode to a different value");
}

#[test]
fn golden_vectors() {
    check("request", request());
    check("request_json_input", json_request());
    check("reply_predictions", reply());
    check("reply_error", error_reply());
    check("model_info", model_info());
    check("native_forest", native_forest());
    check(
        "announcement",
        protocol::Announcement {
            version: PROTOCOL_VERSION,
            worker: "worker-1".into(),
            models: vec![model_info()],
            live_hosts: 2,
            n_hosts: 2,
            interval_ms: 2000,
            draining: false,
            failed: vec![LoadFailure {
                name: "churn".into(),
                version: Some("3".into()),
                message: "model 'churn': loading failed in R: readRDS: unknown input format".into(),
            }],
        },
    );
    check(
        "host_score",
        ToHost::Score {
            id: 7,
            model: ModelRef::new("mtcars", Some("1".into())),
            input: Input::Frame(input_frame()),
            predict_type: None,
        },
    );
    check(
        "host_load",
        ToHost::Load {
            models: vec![ModelSpec {
                name: "mtcars".into(),
                version: None,
                dir: "/models/mtcars".into(),
                schema: None,
                predict_type: None,
                engine: Engine::Auto,
                r_fallback: false,
            }],
        },
    );
    check(
        "host_ready",
        FromHost::Ready {
            pid: 4242,
            r_version: "4.2.2".into(),
            models: vec![model_info()],
            failed: vec![LoadFailure {
                name: "churn".into(),
                version: None,
                message: "model 'churn': no model.rds".into(),
            }],
            load_us: vec![250_000],
            native: vec![NativeLoad::Ready {
                path: "/models/mtcars/.rfleet/native-0123abcd.msgpack".into(),
                extracted: true,
                check: Some(self_check()),
                released: true,
            }],
        },
    );
    check(
        "host_scored",
        FromHost::Scored {
            id: 7,
            result: Ok(HostOutput::Frame(
                Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: vec![Some(1.0)] })]).unwrap(),
            )),
            r_us: 1500,
            phases: Phases { input_us: 200, compute_us: 1100, output_us: 150 },
            condition_class: None,
        },
    );
    check(
        "host_scored_error",
        FromHost::Scored {
            id: 8,
            result: Err(ErrorBody::new(ErrorCode::RError, "object 'x' not found")),
            r_us: 10,
            phases: Phases { input_us: 2, compute_us: 6, output_us: 0 },
            condition_class: Some("simpleError".into()),
        },
    );
}

/// Publishers in other languages write the fields in any order, may leave optional ones
/// out and may add their own; a worker must still read the request.
#[test]
fn tolerant_decoding() {
    // {"input": {"frame": {"columns": [{"values": [1, 2.5], "type": "f64", "name": "x"}], "n_rows": 2}},
    //  "model": "m", "id": "a", "version": 1, "extra": true}
    #[derive(Serialize)]
    struct Col {
        values: (u8, f64),
        r#type: &'static str,
        name: &'static str,
    }
    #[derive(Serialize)]
    struct Fr {
        columns: Vec<Col>,
        n_rows: u8,
    }
    #[derive(Serialize)]
    struct In {
        frame: Fr,
    }
    #[derive(Serialize)]
    struct Req {
        input: In,
        model: &'static str,
        id: &'static str,
        version: u8,
        extra: bool,
    }
    let bytes = rmp_serde::to_vec_named(&Req {
        input: In { frame: Fr { columns: vec![Col { values: (1, 2.5), r#type: "f64", name: "x" }], n_rows: 2 } },
        model: "m",
        id: "a",
        version: 1,
        extra: true,
    })
    .unwrap();
    let request: Request = protocol::decode(&bytes).unwrap();
    assert_eq!(request.model, "m");
    assert_eq!(request.deadline_ms, None);
    assert_eq!(
        request.input,
        Input::Frame(Frame {
            n_rows: 2,
            columns: vec![Column::new("x", ColumnData::F64 { values: vec![Some(1.0), Some(2.5)] })]
        })
    );
}

/// `ErrorCode::as_str` spells each code as serde writes it.
#[test]
fn error_code_names_match_the_wire() {
    use ErrorCode::*;
    for code in [
        BadRequest,
        UnsupportedVersion,
        ModelNotFound,
        InvalidInput,
        RError,
        HostCrashed,
        DeadlineExceeded,
        Overloaded,
        Unavailable,
        Internal,
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
}

/// A host from before the phase timings (its `scored` and `ready` without `phases`,
/// `condition_class` and `load_us`, as golden/ held them then) still decodes: the new
/// fields take their defaults.
#[test]
fn older_hosts_still_decode() {
    let scored = hex::decode("81a673636f72656483a2696407a6726573756c7481a24f6b81a56672616d6582a66e5f726f777301a7636f6c756d6e739183a46e616d65a52e70726564a474797065a3663634a676616c75657391cb3ff0000000000000a4725f7573cd05dc").unwrap();
    match protocol::decode::<FromHost>(&scored).unwrap() {
        FromHost::Scored { id: 7, r_us: 1500, phases, condition_class: None, .. } => {
            assert_eq!(phases, Phases::default())
        }
        other => panic!("decoded {other:?}"),
    }
    let ready = hex::decode("81a5726561647983a3706964cd1092a9725f76657273696f6ea5342e322e32a66d6f64656c7390").unwrap();
    match protocol::decode::<FromHost>(&ready).unwrap() {
        FromHost::Ready { pid: 4242, load_us, failed, .. } => assert!(load_us.is_empty() && failed.is_empty()),
        other => panic!("decoded {other:?}"),
    }
}

/// Messages from before `r_fallback`: a supervisor's `load` (as golden/ held it then), a
/// host's ready forest and a worker's engine status without the new fields. R keeps the
/// model, no host check ran, nothing was released.
#[test]
fn messages_from_before_r_fallback_decode() {
    let load = hex::decode("81a46c6f616481a66d6f64656c739186a46e616d65a66d7463617273a776657273696f6ec0a3646972ae2f6d6f64656c732f6d7463617273a6736368656d61c0ac707265646963745f74797065c0a6656e67696e65a46175746f").unwrap();
    match protocol::decode::<ToHost>(&load).unwrap() {
        ToHost::Load { models } => assert!(models[0].r_fallback, "R keeps the model"),
        other => panic!("decoded {other:?}"),
    }
    #[derive(Serialize)]
    struct OldReady {
        state: &'static str,
        path: &'static str,
        extracted: bool,
    }
    let ready = rmp_serde::to_vec_named(&OldReady { state: "ready", path: "/m/.rfleet/f.msgpack", extracted: false });
    assert_eq!(
        protocol::decode::<NativeLoad>(&ready.unwrap()).unwrap(),
        NativeLoad::Ready { path: "/m/.rfleet/f.msgpack".into(), extracted: false, check: None, released: false }
    );
    #[derive(Serialize)]
    struct OldStatus {
        configured: &'static str,
        serving: &'static str,
    }
    let status = rmp_serde::to_vec_named(&OldStatus { configured: "auto", serving: "native" }).unwrap();
    let status: EngineStatus = protocol::decode(&status).unwrap();
    assert!(status.r_fallback && !status.released, "{status:?}");
}
