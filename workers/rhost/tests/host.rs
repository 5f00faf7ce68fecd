//! The R host end to end: the real `rfleet-rhost` binary with real R, driven over its fd 3
//! channel exactly as the worker's supervisor drives it, against the fixture models that
//! `tests/fixtures/make_models.R` makes (and a few odd packages written here).

use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use protocol::host::{read_message, write_message, FromHost, HostOutput, ModelSpec, Phases, ToHost};
use protocol::{
    ColumnData, ColumnType, ErrorBody, ErrorCode, Frame, Input, LoadFailure, ModelInfo, ModelKind, ModelRef, Schema,
};
use serde_json::{json, Value};

mod channel;

// ---------------------------------------------------------------------------------------
// Support: fixtures, a host process, comparisons.

/// The fixture packages and cases, shared with the integration tests (made once per
/// fixture script version, under a lock, so parallel test processes never race).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(support::fixtures)
}

fn fixture_specs() -> Vec<ModelSpec> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(fixtures().join("models")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs.iter().map(|d| channel::package_spec(d)).collect()
}

/// A running `rfleet-rhost`, killed when dropped.
struct Host {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    next_id: u64,
    /// The last answer's `r_us`, phases and condition class.
    last: Option<(u64, Phases, Option<String>)>,
}

impl Host {
    /// Starts a host with the channel on fd 3 and sends it `Load`; returns its answer.
    /// The host's stdout goes to `stdout`; stdin is /dev/null and stderr this test's, as
    /// the supervisor sets them up (it pipes both to its log).
    fn start_with(models: Vec<ModelSpec>, stdout: Stdio) -> (Host, FromHost) {
        let (child, ours) = channel::spawn(stdout, |_| {});
        let mut host = Host {
            child,
            reader: BufReader::new(ours.try_clone().unwrap()),
            writer: BufWriter::new(ours),
            next_id: 0,
            last: None,
        };
        write_message(&mut host.writer, &ToHost::Load { models }).expect("send load");
        let answer = read_message(&mut host.reader).expect("read load answer").expect("host closed the channel");
        (host, answer)
    }

    /// Starts a host that must load every model; returns it with the models' infos.
    fn ready(models: Vec<ModelSpec>) -> (Host, Vec<ModelInfo>) {
        Host::ready_with(models, Stdio::inherit())
    }

    fn ready_with(models: Vec<ModelSpec>, stdout: Stdio) -> (Host, Vec<ModelInfo>) {
        match Host::start_some(models, stdout) {
            (host, models, failed) if failed.is_empty() => (host, models),
            (_, _, failed) => panic!("models failed to load: {failed:?}"),
        }
    }

    /// Starts a host that answers ready; returns it with the models that loaded and those
    /// that failed.
    fn start_some(models: Vec<ModelSpec>, stdout: Stdio) -> (Host, Vec<ModelInfo>, Vec<LoadFailure>) {
        match Host::start_with(models, stdout) {
            (host, FromHost::Ready { pid, r_version, models, failed, load_us, .. }) => {
                assert_eq!(pid, host.child.id());
                assert_eq!(load_us.len(), models.len(), "a load time per model loaded");
                assert!(r_version.starts_with("4."), "r_version {r_version:?}");
                (host, models, failed)
            }
            (_, other) => panic!("host did not answer ready: {other:?}"),
        }
    }

    /// Scores one request (a `&str` addresses a model by name only); `None` when the host
    /// died instead of answering.
    fn try_score(
        &mut self,
        model: impl Into<ModelRef>,
        input: Input,
        predict_type: Option<&str>,
    ) -> Option<Result<HostOutput, ErrorBody>> {
        self.next_id += 1;
        let id = self.next_id;
        let request = ToHost::Score { id, model: model.into(), input, predict_type: predict_type.map(str::to_string) };
        write_message(&mut self.writer, &request).expect("send score");
        match read_message(&mut self.reader).expect("read score answer")? {
            FromHost::Scored { id: answered, result, r_us, phases, condition_class } => {
                assert_eq!(answered, id, "answer to another request");
                assert!(r_us < 60_000_000, "r_us {r_us} is not microseconds");
                check_phases(r_us, phases);
                self.last = Some((r_us, phases, condition_class));
                Some(result)
            }
            other => panic!("expected scored, got {other:?}"),
        }
    }

    fn score(
        &mut self,
        model: impl Into<ModelRef>,
        input: Input,
        predict_type: Option<&str>,
    ) -> Result<HostOutput, ErrorBody> {
        self.try_score(model, input, predict_type).expect("the host died")
    }

    fn frame(&mut self, model: impl Into<ModelRef>, frame: Frame, predict_type: Option<&str>) -> Frame {
        let model = model.into();
        match self.score(model.clone(), Input::Frame(frame), predict_type) {
            Ok(HostOutput::Frame(frame)) => frame,
            other => panic!("{model}: expected a frame, got {other:?}"),
        }
    }

    fn error(&mut self, model: impl Into<ModelRef>, input: Input) -> ErrorBody {
        let model = model.into();
        match self.score(model.clone(), input, None) {
            Err(error) => error,
            other => panic!("{model}: expected an error, got {other:?}"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The phases are parts of `r_us`: together never more than it.
fn check_phases(r_us: u64, phases: Phases) {
    let sum = phases.input_us + phases.compute_us + phases.output_us;
    assert!(sum <= r_us, "phases {phases:?} add up to {sum} µs, more than r_us {r_us}");
}

/// Rows as a client sends them, made into the frame a supervisor hands the host:
/// parsed like the HTTP front parses them, then conformed to the model's schema.
fn frame_for(rows: &Value, info: &ModelInfo) -> Frame {
    let frame = protocol::json::frame_from_value(rows).expect("rows make a frame");
    match &info.schema {
        Some(schema) => protocol::conform(&frame, schema).expect("rows fit the schema"),
        None => frame,
    }
}

/// A frame as the HTTP API answers it: a plain array for one column, else row objects.
fn frame_json(frame: &Frame) -> Value {
    let cell = |data: &ColumnData, row: usize| -> Value {
        match data {
            ColumnData::F64 { values } => json!(values[row]),
            ColumnData::I32 { values } => json!(values[row]),
            ColumnData::Bool { values } => json!(values[row]),
            ColumnData::Str { values } => json!(values[row]),
            ColumnData::Factor { levels, values, .. } => json!(values[row].map(|c| &levels[c as usize])),
        }
    };
    if let [column] = frame.columns.as_slice() {
        return (0..frame.n_rows).map(|row| cell(&column.data, row)).collect();
    }
    (0..frame.n_rows)
        .map(|row| {
            // jsonlite leaves NA out of row objects, and so does this.
            let object: serde_json::Map<String, Value> = frame
                .columns
                .iter()
                .map(|c| (c.name.clone(), cell(&c.data, row)))
                .filter(|(_, v)| !v.is_null())
                .collect();
            Value::Object(object)
        })
        .collect()
}

/// Numbers within 1e-9 of R's, everything else identical.
fn assert_same(got: &Value, expected: &Value, context: &str) {
    match (got, expected) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9, "{context}: got {a}, R says {b}");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{context}: got {got}, R says {expected}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{context}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "{context}: columns differ");
            for (key, y) in b {
                assert_same(&a[key], y, &format!("{context}.{key}"));
            }
        }
        _ => assert_eq!(got, expected, "{context}"),
    }
}

fn info<'a>(infos: &'a [ModelInfo], name: &str) -> &'a ModelInfo {
    infos.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} is not in ready"))
}

fn column_names(frame: &Frame) -> Vec<&str> {
    frame.columns.iter().map(|c| c.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Predictions equal R's own.

/// One fixture case: scored as a batch, then its first rows one at a time.
fn check(host: &mut Host, infos: &[ModelInfo], case_path: &Path) {
    let case: Value = serde_json::from_slice(&std::fs::read(case_path).unwrap()).unwrap();
    let name = case_path.file_stem().unwrap().to_string_lossy();
    let model = info(infos, case["model"].as_str().unwrap());
    let predict_type = case["type"].as_str();
    let (rows, expected) = (&case["rows"], &case["expected"]);
    if model.kind == ModelKind::AzureMl {
        // The entry script gets the body as the client sent it and answers JSON itself.
        let answer = match host.score(model.model_ref(), Input::Json(rows.to_string()), predict_type) {
            Ok(HostOutput::Json(json)) => json,
            other => panic!("{name}: expected JSON, got {other:?}"),
        };
        let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{name}: {e}: {answer}"));
        assert_same(&answer, expected, &name);
        return;
    }
    let got = host.frame(model.model_ref(), frame_for(rows, model), predict_type);
    assert_same(&frame_json(&got), expected, &name);
    for (i, row) in rows.as_array().unwrap().iter().enumerate().take(3) {
        let got = host.frame(model.model_ref(), frame_for(&json!([row]), model), predict_type);
        assert_same(&frame_json(&got), &json!([expected[i]]), &format!("{name} row {i} alone"));
    }
}

#[test]
fn every_fixture_case_matches_r() {
    let specs = fixture_specs();
    let (mut host, infos) = Host::ready(specs.clone());
    assert_eq!(
        infos.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    );

    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(fixtures().join("cases")).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(cases.len() >= 13, "too few cases: {cases:?}");
    for case in &cases {
        check(&mut host, &infos, case);
    }
}

#[test]
fn ready_describes_each_model() {
    let (_host, infos) = Host::ready(fixture_specs());
    let columns = |name: &str| -> Vec<(String, ColumnType, Option<Vec<String>>)> {
        let schema = info(&infos, name).schema.as_ref().unwrap_or_else(|| panic!("{name} has no schema"));
        schema.columns.iter().map(|c| (c.name.clone(), c.column_type, c.levels.clone())).collect()
    };
    let grp = || Some(vec!["alpha".to_string(), "beta".into(), "gamma".into()]);
    let numeric = |name: &str| (name.to_string(), ColumnType::Numeric, None);
    let factor = |name: &str, levels| (name.to_string(), ColumnType::Factor, levels);
    let x1_x2_grp_cnt = vec![numeric("x1"), numeric("x2"), factor("grp", grp()), numeric("cnt")];
    let iris = vec![numeric("Sepal.Length"), numeric("Sepal.Width"), numeric("Petal.Length"), numeric("Petal.Width")];

    // Inferred, every route: terms, randomForest's forest, ranger, gbm, caret. The
    // response never appears.
    assert_eq!(columns("rf_reg"), x1_x2_grp_cnt, "randomForest with a formula");
    assert_eq!(columns("lm"), x1_x2_grp_cnt, "lm");
    assert_eq!(columns("gbm"), x1_x2_grp_cnt, "gbm");
    assert_eq!(columns("rf_class"), iris, "randomForest classification");
    assert_eq!(columns("rpart"), iris, "rpart");
    assert_eq!(columns("rf_xy"), vec![numeric("x1"), numeric("x2"), numeric("cnt")], "randomForest x/y");
    assert_eq!(columns("glm_binomial"), vec![numeric("x1"), numeric("x2"), factor("grp", grp())], "glm");
    assert_eq!(columns("caret"), vec![numeric("x1"), numeric("x2"), factor("grp", grp())], "caret train");
    assert_eq!(columns("predict_fn"), vec![numeric("x1"), numeric("x2"), factor("grp", grp())], "predict_fn's model");
    // ranger keeps the order it sorted the levels in; the set is what matters.
    let ranger = columns("ranger_reg");
    assert_eq!(ranger.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["x1", "x2", "grp", "cnt"]);
    let mut levels = ranger[2].2.clone().expect("ranger's factor levels");
    levels.sort();
    assert_eq!((ranger[2].1, Some(levels)), (ColumnType::Factor, grp()));

    // Declared in model.toml: passed through as declared.
    assert_eq!(
        info(&infos, "faulty").schema,
        Some(Schema {
            columns: vec![protocol::ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None }]
        })
    );
    assert_eq!(info(&infos, "azureml").schema, None, "an entry script parses its own input");

    let kinds: Vec<(&str, ModelKind)> = infos.iter().map(|m| (m.name.as_str(), m.kind)).collect();
    for (name, kind) in kinds {
        let want = match name {
            "azureml" => ModelKind::AzureMl,
            "predict_fn" | "faulty" => ModelKind::PredictFn,
            _ => ModelKind::Predict,
        };
        assert_eq!(kind, want, "{name}");
    }
    assert_eq!(info(&infos, "rf_reg").r_class, ["randomForest.formula", "randomForest"]);
    assert_eq!(info(&infos, "glm_binomial").r_class, ["glm", "lm"]);
    assert_eq!(info(&infos, "caret").r_class, ["train", "train.formula"]);
    assert_eq!(info(&infos, "azureml").r_class, ["lm"], "read once to load its methods, then dropped");
    // Defaults that make predict answer on the response scale, and model.toml's own.
    assert_eq!(info(&infos, "glm_binomial").predict_type.as_deref(), Some("response"));
    assert_eq!(info(&infos, "gbm").predict_type.as_deref(), Some("response"));
    assert_eq!(info(&infos, "rf_reg").predict_type, None);
    let lm = info(&infos, "lm");
    assert_eq!((lm.version.as_deref(), lm.predict_type.as_deref()), (Some("1.0.0"), Some("response")));
}

// ---------------------------------------------------------------------------------------
// Errors come back as answers and the host keeps serving.

fn x_frame(x: f64) -> Frame {
    Frame::new(vec![protocol::Column::new("x", ColumnData::F64 { values: vec![Some(x)] })]).unwrap()
}

#[test]
fn errors_are_answers_and_the_host_survives_them() {
    let models =
        ["faulty", "azureml", "lm"].map(|name| channel::package_spec(&fixtures().join("models").join(name))).to_vec();
    let (mut host, _) = Host::ready(models);

    let error = host.error("faulty", Input::Frame(x_frame(-1.0)));
    assert_eq!(error.code, ErrorCode::RError);
    assert_eq!(error.message, "model 'faulty': predict_fn failed: deliberate failure: x is negative");
    let good = host.frame("faulty", x_frame(21.0), None);
    assert_eq!(frame_json(&good), json!([42.0]), "the host still serves after an R error");

    let error = host.error("nope", Input::Frame(x_frame(1.0)));
    assert_eq!(error.code, ErrorCode::ModelNotFound);
    assert_eq!(error.message, "model 'nope' is not loaded in this host (loaded: azureml, faulty, lm version 1.0.0)");

    let error = host.error("azureml", Input::Frame(x_frame(1.0)));
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("takes the raw JSON body"), "{}", error.message);
    let error = host.error("lm", Input::Json("[]".into()));
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("takes a frame"), "{}", error.message);

    // R's error from inside predict itself, here a column the model needs but did not get.
    let partial = json!([{ "x1": 1.0, "x2": 2.0, "grp": "beta" }]);
    let error = host.error("lm", Input::Frame(protocol::json::frame_from_value(&partial).unwrap()));
    assert_eq!(error.code, ErrorCode::RError);
    assert!(
        error.message.starts_with("model 'lm' version '1.0.0': predict failed: ") && error.message.contains("cnt"),
        "{}",
        error.message
    );

    // An Azure ML script that fails on its input is an R error too.
    let error = host.error("azureml", Input::Json("{not json".into()));
    assert_eq!(error.code, ErrorCode::RError);
    assert!(
        error.message.starts_with("model 'azureml': the function returned by init() failed: "),
        "{}",
        error.message
    );
    let rows = json!([{ "wt": 2.62, "hp": 110, "qsec": 16.46 }]);
    assert!(matches!(host.score("azureml", Input::Json(rows.to_string()), None), Ok(HostOutput::Json(_))));

    // A frame that breaks its own invariants never reaches R.
    let broken =
        Frame { n_rows: 2, columns: vec![protocol::Column::new("x", ColumnData::F64 { values: vec![Some(1.0)] })] };
    assert_eq!(host.error("faulty", Input::Frame(broken)).code, ErrorCode::BadRequest);

    // A NUL character R would have to put in a string is refused, and the host lives on
    // (making such a string used to end it).
    let with_nul = json!([{ "x1": 1.0, "x2": 2.0, "grp": "be\0ta", "cnt": 3 }]);
    let error = host.error("lm", Input::Frame(protocol::json::frame_from_value(&with_nul).unwrap()));
    assert_eq!(error.code, ErrorCode::InvalidInput);
    assert_eq!(error.message, "column 'grp', row 1 holds a NUL character, which R strings cannot hold");
    let named = json!([{ "x\0": 1.0 }]);
    let error = host.error("faulty", Input::Frame(protocol::json::frame_from_value(&named).unwrap()));
    assert!(error.message.starts_with("column name \"x\\0\" holds a NUL character"), "{}", error.message);
    let error = host.score("faulty", Input::Frame(x_frame(2.0)), Some("resp\0onse")).unwrap_err();
    assert_eq!(error.message, "the predict type holds a NUL character, which R strings cannot hold");
    assert_eq!(frame_json(&host.frame("faulty", x_frame(21.0), None)), json!([42.0]), "still serving");

    // A model that kills its own process: no answer, the channel closes, SIGKILL is seen.
    assert!(host.try_score("faulty", Input::Frame(x_frame(666.0)), None).is_none(), "a dead host cannot answer");
    let status = host.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

#[test]
fn r_printing_goes_to_stdout_never_the_channel() {
    let root = tempfile::tempdir().unwrap();
    let score = r#"predict_fn <- function(model, newdata) {
      print(summary(newdata$x))
      cat("scored", nrow(newdata), "rows\n")
      message("a note on stderr")
      warning("a warning on stderr")
      newdata$x + 1
    }"#;
    let dir = write_package(root.path(), "chatty", score, true);
    let (mut host, _) = Host::ready_with(vec![channel::package_spec(&dir)], Stdio::piped());
    let stdout = host.child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    for x in [1.0, 2.0] {
        let got = host.frame("chatty", x_frame(x), None);
        assert_eq!(frame_json(&got), json!([x + 1.0]), "the channel carries only the answer");
        // R flushes its console output per call, so each line arrives while the host is
        // still running (the supervisor logs it as it comes).
        let line = std::iter::from_fn(|| line_rx.recv_timeout(std::time::Duration::from_secs(10)).ok())
            .find(|l| l.starts_with("scored"))
            .expect("R's cat() output on stdout");
        assert_eq!(line, "scored 1 rows");
    }
}

#[test]
fn end_of_channel_ends_the_host_cleanly() {
    let (mut host, _) = Host::ready(vec![channel::package_spec(&fixtures().join("models/faulty"))]);
    host.writer.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let status = host.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------------------
// Loading failures name the model and R's reason.

/// Writes a package with this score.R (and a model.rds when asked) under a fresh dir.
fn write_package(root: &Path, name: &str, score: &str, with_rds: bool) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("score.R"), score).unwrap();
    if with_rds {
        // Any R object will do for a predict_fn that ignores its model.
        std::fs::copy(fixtures().join("models/faulty/model.rds"), dir.join("model.rds")).unwrap();
    }
    dir
}

/// A package's `model.toml`, naming it and giving it a version.
fn write_manifest(dir: &Path, name: &str, version: &str) {
    std::fs::write(dir.join("model.toml"), format!("name = \"{name}\"\nversion = \"{version}\"\n")).unwrap();
}

/// One package per way a load fails, among good ones: the host answers ready with the
/// good ones, and a failure per bad package in the order listed, whose message names the
/// model, its version, the step and R's error (`needle` is how it starts, `also` what
/// else it holds). A failed package is not reachable, and the others serve.
#[test]
fn load_failures_are_reported_and_the_rest_serve() {
    let root = tempfile::tempdir().unwrap();
    let (lm, faulty) = (
        channel::package_spec(&fixtures().join("models/lm")),
        channel::package_spec(&fixtures().join("models/faulty")),
    );
    let lm_dir = lm.dir.display().to_string();
    let bad: Vec<(ModelSpec, String, &str)> = [
        (
            "init_fails",
            "init <- function() stop(\"no weights here\")",
            false,
            None,
            "calling init(): no weights here",
            "",
        ),
        ("init_not_fn", "init <- function() 42", false, None, "calling init(): init() returned a numeric", ""),
        (
            "no_rds",
            "predict_fn <- function(model, newdata) 1",
            false,
            Some("2"),
            "reading model.rds: there is no model.rds",
            "",
        ),
        (
            "bad_syntax",
            "predict_fn <- function(model, newdata) {",
            true,
            None,
            "sourcing score.R: ",
            "unexpected end of input",
        ),
        (
            "missing_package",
            "library(rfleetNoSuchPackage)\npredict_fn <- function(model, newdata) 1",
            true,
            Some("1.0"),
            "sourcing score.R: there is no package called ",
            "rfleetNoSuchPackage",
        ),
    ]
    .into_iter()
    .map(|(name, score, with_rds, version, step, also)| {
        let dir = write_package(root.path(), name, score, with_rds);
        let label = match version {
            Some(version) => {
                write_manifest(&dir, name, version);
                format!("model '{name}' version '{version}'")
            }
            None => format!("model '{name}'"),
        };
        (channel::package_spec(&dir), format!("{label}: loading failed in R: {step}"), also)
    })
    .collect();
    // The same name and version twice: the second is a failure, the first serves.
    let duplicate = (
        lm.clone(),
        format!("model 'lm' version '1.0.0': listed twice; the package in {lm_dir} comes first, the one in {lm_dir} is not loaded"),
        "",
    );

    let mut specs = vec![lm.clone()];
    specs.extend(bad[..3].iter().map(|(s, ..)| s.clone()));
    specs.push(faulty.clone());
    specs.extend(bad[3..].iter().map(|(s, ..)| s.clone()));
    specs.push(duplicate.0.clone());
    let (mut host, models, failed) = Host::start_some(specs, Stdio::inherit());
    let refs: Vec<ModelRef> = models.iter().map(ModelInfo::model_ref).collect();
    assert_eq!(refs, [lm.model_ref(), faulty.model_ref()], "the good ones, in the order listed");
    let expected: Vec<_> = bad.iter().chain([&duplicate]).collect();
    assert_eq!(failed.len(), expected.len(), "{failed:#?}");
    for (failure, (spec, needle, also)) in failed.iter().zip(expected) {
        assert_eq!((&failure.name, &failure.version), (&spec.name, &spec.version));
        assert!(failure.message.starts_with(needle.as_str()) && failure.message.contains(also), "{}", failure.message);
    }

    // Nothing of a failed package is left to reach; the good ones serve.
    for (spec, ..) in &bad {
        let error = host.error(spec.model_ref(), Input::Frame(x_frame(1.0)));
        assert_eq!(error.code, ErrorCode::ModelNotFound, "{}", error.message);
        assert!(
            error.message.ends_with("is not loaded in this host (loaded: faulty, lm version 1.0.0)"),
            "{}",
            error.message
        );
    }
    check(&mut host, &models, &fixtures().join("cases/lm.json"));
    check(&mut host, &models, &fixtures().join("cases/faulty.json"));

    // A host whose every package failed still answers ready, with nothing loaded.
    let (mut host, models, failed) = Host::start_some(vec![bad[0].0.clone()], Stdio::inherit());
    assert_eq!((models, failed.len()), (vec![], 1), "{failed:?}");
    let error = host.error("init_fails", Input::Frame(x_frame(1.0)));
    assert_eq!(error.message, "model 'init_fails' is not loaded in this host (loaded: none)");
}

/// The issue's case: one corrupt `model.rds` beside two good packages. The corrupt one is
/// a newer version of one of them, so its failure must also leave the older one in charge
/// of unpinned requests.
#[test]
fn a_corrupt_package_beside_good_ones_is_reported_and_they_serve() {
    let root = tempfile::tempdir().unwrap();
    let broken = root.path().join("lm_2");
    std::fs::create_dir_all(&broken).unwrap();
    let mut rng = Rng(9);
    let bytes: Vec<u8> = (0..4096).map(|_| (rng.unit() * 256.0) as u8).collect();
    std::fs::write(broken.join("model.rds"), bytes).unwrap();
    write_manifest(&broken, "lm", "2.0.0");
    // R's own error for those bytes.
    let output = Command::new("Rscript")
        .args(["-e", "tryCatch(readRDS(commandArgs(TRUE)[1]), error = function(e) cat(conditionMessage(e)))"])
        .arg(broken.join("model.rds"))
        .output()
        .expect("run Rscript");
    let r_error = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success() && !r_error.is_empty(), "readRDS read random bytes? {output:?}");

    let (lm, rf_reg) = (
        channel::package_spec(&fixtures().join("models/lm")),
        channel::package_spec(&fixtures().join("models/rf_reg")),
    );
    let (mut host, models, failed) =
        Host::start_some(vec![lm.clone(), channel::package_spec(&broken), rf_reg.clone()], Stdio::inherit());
    let refs: Vec<ModelRef> = models.iter().map(ModelInfo::model_ref).collect();
    assert_eq!(refs, [lm.model_ref(), rf_reg.model_ref()]);
    assert_eq!(
        failed,
        [LoadFailure {
            name: "lm".into(),
            version: Some("2.0.0".into()),
            message: format!("model 'lm' version '2.0.0': loading failed in R: reading model.rds: {r_error}"),
        }]
    );

    for case in ["lm", "rf_reg"] {
        check(&mut host, &models, &fixtures().join(format!("cases/{case}.json")));
    }
    // Unpinned, lm is the version that loaded; pinned to the broken one, it is not there.
    let case: Value = serde_json::from_slice(&std::fs::read(fixtures().join("cases/lm.json")).unwrap()).unwrap();
    let got = host.frame("lm", frame_for(&case["rows"], info(&models, "lm")), None);
    assert_same(&frame_json(&got), &case["expected"], "lm unpinned");
    let error = host.error(ModelRef::new("lm", Some("2.0.0".into())), Input::Frame(x_frame(1.0)));
    assert_eq!(error.code, ErrorCode::ModelNotFound);
    assert_eq!(
        error.message,
        "model 'lm' version '2.0.0' is not loaded in this host (loaded: lm version 1.0.0, rf_reg)"
    );
}

// ---------------------------------------------------------------------------------------
// Several versions of one model in one host.

/// Two versions each of an `lm` and a randomForest regression, fitted on different data
/// (so that the versions answer differently), and R's own answers for each version:
/// `predict` on the rows, and for the forests the mean of trees 10..30 (0-based, end
/// exclusive) from `predict.all`. Packages `<name>_<version>` under `root`, the answers in
/// `root/expected.json`.
fn versioned_packages(root: &Path) -> Value {
    let code = r#"
      suppressPackageStartupMessages({ library(randomForest); library(jsonlite) })
      out <- Sys.getenv("OUT")
      fit <- function(seed, slope) {
        set.seed(seed)
        n <- 200
        d <- data.frame(x1 = runif(n, 0, 10), x2 = rnorm(n), grp = factor(sample(c("a", "b", "c"), n, TRUE)))
        d$y <- slope * d$x1 - 2 * d$x2 + as.integer(d$grp) + rnorm(n, sd = 0.5)
        list(lm = lm(y ~ x1 + x2 + grp, data = d), rf = randomForest(y ~ x1 + x2 + grp, data = d, ntree = 40))
      }
      set.seed(99)
      rows <- data.frame(x1 = round(runif(6, 0, 10), 2), x2 = round(rnorm(6), 2), grp = sample(c("a", "b", "c"), 6, TRUE))
      rows_json <- toJSON(rows, digits = NA)
      newdata <- fromJSON(rows_json)
      newdata$grp <- factor(newdata$grp, levels = c("a", "b", "c"))
      expected <- list()
      for (version in c("1", "2")) {
        models <- fit(as.integer(version), if (version == "1") 0.5 else 1.5)
        for (name in c("lm", "rf")) {
          dir <- file.path(out, paste0("v", name, "_", version))
          dir.create(dir)
          saveRDS(models[[name]], file.path(dir, "model.rds"))
          writeLines(c(sprintf('name = "v%s"', name), sprintf('version = "%s"', version)), file.path(dir, "model.toml"))
          expected[[paste0("v", name, "_", version)]] <- unname(predict(models[[name]], newdata = newdata))
        }
        trees <- predict(models$rf, newdata = newdata, predict.all = TRUE)$individual
        expected[[paste0("vrf_", version, "_trees_10_30")]] <- unname(rowMeans(trees[, 11:30, drop = FALSE]))
      }
      expected$rows <- newdata
      write(toJSON(expected, digits = NA, auto_unbox = FALSE), file.path(out, "expected.json"))
    "#;
    let status = Command::new("Rscript").arg("-e").arg(code).env("OUT", root).status().expect("run Rscript");
    assert!(status.success(), "making the versioned packages failed: {status}");
    serde_json::from_slice(&std::fs::read(root.join("expected.json")).unwrap()).unwrap()
}

#[test]
fn one_host_serves_two_versions_of_a_model() {
    let root = tempfile::tempdir().unwrap();
    let expected = versioned_packages(root.path());
    // Version 2 listed first: which one is highest must not depend on the order.
    let dirs = ["vlm_2", "vlm_1", "vrf_1", "vrf_2"];
    let (mut host, models) = Host::ready(dirs.iter().map(|d| channel::package_spec(&root.path().join(d))).collect());
    let refs: Vec<String> = models.iter().map(|m| m.model_ref().to_string()).collect();
    assert_eq!(refs, ["vlm version 2", "vlm version 1", "vrf version 1", "vrf version 2"]);
    let version = |name: &str, version: &str| ModelRef::new(name, Some(version.to_string()));
    let frame = |model: &ModelRef| {
        let info = models.iter().find(|m| m.model_ref() == *model).unwrap_or(&models[0]);
        frame_for(&expected["rows"], info)
    };

    // Each version answers R's own predict for that version; a request by name alone
    // gets the highest version.
    for (model, answer) in [
        (version("vlm", "1"), "vlm_1"),
        (version("vlm", "2"), "vlm_2"),
        (version("vrf", "1"), "vrf_1"),
        (version("vrf", "2"), "vrf_2"),
        (ModelRef::from("vlm"), "vlm_2"),
        (ModelRef::from("vrf"), "vrf_2"),
    ] {
        let got = host.frame(model.clone(), frame(&model), None);
        assert_same(&frame_json(&got), &expected[answer], &model.to_string());
    }
    // The versions do answer differently, or the above would not tell them apart.
    for name in ["vlm", "vrf"] {
        let (one, two) = (&expected[format!("{name}_1")], &expected[format!("{name}_2")]);
        let apart = one
            .as_array()
            .unwrap()
            .iter()
            .zip(two.as_array().unwrap())
            .all(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() > 1e-3);
        assert!(apart, "{name}: versions 1 and 2 answer alike: {one} vs {two}");
    }

    // A range of trees of one version is that version's trees.
    for v in ["1", "2"] {
        let model = version("vrf", v);
        match host.part(model.clone(), &frame(&model), 10, 30) {
            protocol::host::ForestPart::Regression { n_trees: 20, mean } => {
                let mean: Vec<Value> = mean.into_iter().map(|m| json!(m)).collect();
                assert_same(
                    &Value::Array(mean),
                    &expected[format!("vrf_{v}_trees_10_30")],
                    &format!("{model} trees 10..30"),
                );
            }
            other => panic!("{model}: {other:?}"),
        }
    }

    // A version the host does not hold: the error names those it does.
    let error = host.error(version("vlm", "3"), Input::Frame(frame(&version("vlm", "1"))));
    assert_eq!(error.code, ErrorCode::ModelNotFound);
    assert_eq!(
        error.message,
        "model 'vlm' version '3' is not loaded in this host \
         (loaded: vlm version 1, vlm version 2, vrf version 1, vrf version 2)"
    );
    let error = host.score_trees(version("vrf", "3"), Input::Frame(frame(&version("vrf", "1"))), 0, 10).0.unwrap_err();
    assert_eq!(error.code, ErrorCode::ModelNotFound, "{}", error.message);
    assert!(error.message.starts_with("model 'vrf' version '3' is not loaded in this host"), "{}", error.message);
}

// ---------------------------------------------------------------------------------------
// Output conversion: every shape predict_fn may return.

/// A predict_fn that answers whatever shape `newdata$what[1]` names.
const SHAPES: &str = r#"
predict_fn <- function(model, newdata) {
  x <- newdata$x
  n <- length(x)
  switch(newdata$what[1],
    double = setNames(x * 1.5, paste0("row", seq_len(n))),
    nan = c(NaN, NA, x[-(1:2)]),
    integer = seq_len(n),
    logical = x > 1,
    character = paste0("r", seq_len(n)),
    factor = factor(c("b", "a", "b")[seq_len(n)], levels = c("a", "b", "zz")),
    ordered = factor(c("lo", "hi", "lo")[seq_len(n)], levels = c("lo", "hi"), ordered = TRUE),
    matrix_named = cbind(low = x - 1, high = x + 1),
    matrix_bare = matrix(c(x, -x, 2 * x), ncol = 3),
    matrix_one = matrix(x, ncol = 1),
    matrix_int = matrix(seq_len(2 * n), ncol = 2, dimnames = list(NULL, c("a", "b"))),
    frame = data.frame(
      num = x, int = seq_len(n), lgl = c(TRUE, NA, FALSE)[seq_len(n)],
      chr = c("p", NA, "q")[seq_len(n)], fct = factor(c("u", "v", NA)[seq_len(n)]),
      day = as.Date("2024-01-01") + seq_len(n) - 1),
    list = list(a = x),
    short = x[-1],
    frame_list = { d <- data.frame(num = x); d$l <- as.list(x); d },
    deep = { f <- function(i) f(i + 1); f(0) },
    abort = invokeRestart("abort"),
    echo = x)
}
"#;

#[test]
fn results_convert_to_frames_by_type() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_package(root.path(), "shapes", SHAPES, true);
    let (mut host, infos) = Host::ready(vec![channel::package_spec(&dir)]);
    assert_eq!(info(&infos, "shapes").schema, None, "a list has no schema: columns pass as they come");
    let input = |what: &str| {
        let n = 3;
        Input::Frame(
            Frame::new(vec![
                protocol::Column::new("x", ColumnData::F64 { values: vec![Some(1.0), Some(2.0), Some(3.0)] }),
                protocol::Column::new("what", ColumnData::Str { values: vec![Some(what.to_string()); n] }),
            ])
            .unwrap(),
        )
    };
    let mut frame = |what: &str| match host.score("shapes", input(what), None) {
        Ok(HostOutput::Frame(frame)) => frame,
        other => panic!("{what}: expected a frame, got {other:?}"),
    };
    let one = |frame: &Frame| -> ColumnData {
        assert_eq!(column_names(frame), [".pred"]);
        frame.columns[0].data.clone()
    };

    // Vectors: one `.pred` column of the vector's type, names dropped, NaN and NA missing.
    assert_eq!(one(&frame("double")), ColumnData::F64 { values: vec![Some(1.5), Some(3.0), Some(4.5)] });
    assert_eq!(one(&frame("nan")), ColumnData::F64 { values: vec![None, None, Some(3.0)] });
    assert_eq!(one(&frame("integer")), ColumnData::I32 { values: vec![Some(1), Some(2), Some(3)] });
    assert_eq!(one(&frame("logical")), ColumnData::Bool { values: vec![Some(false), Some(true), Some(true)] });
    assert_eq!(
        one(&frame("character")),
        ColumnData::Str { values: vec![Some("r1".into()), Some("r2".into()), Some("r3".into())] }
    );
    // Factors keep all their levels, unused ones included; codes become 0-based.
    assert_eq!(
        one(&frame("factor")),
        ColumnData::Factor {
            levels: vec!["a".into(), "b".into(), "zz".into()],
            values: vec![Some(1), Some(0), Some(1)],
            ordered: false
        }
    );
    assert_eq!(
        one(&frame("ordered")),
        ColumnData::Factor {
            levels: vec!["lo".into(), "hi".into()],
            values: vec![Some(0), Some(1), Some(0)],
            ordered: true
        }
    );

    // Matrices: a double column per matrix column, named by colnames, V1..Vn without.
    let named = frame("matrix_named");
    assert_eq!(column_names(&named), ["low", "high"]);
    assert_eq!(named.columns[1].data, ColumnData::F64 { values: vec![Some(2.0), Some(3.0), Some(4.0)] });
    let bare = frame("matrix_bare");
    assert_eq!(column_names(&bare), ["V1", "V2", "V3"]);
    assert_eq!(bare.columns[1].data, ColumnData::F64 { values: vec![Some(-1.0), Some(-2.0), Some(-3.0)] });
    assert_eq!(one(&frame("matrix_one")), ColumnData::F64 { values: vec![Some(1.0), Some(2.0), Some(3.0)] });
    let ints = frame("matrix_int");
    assert_eq!(ints.columns[1].data, ColumnData::F64 { values: vec![Some(4.0), Some(5.0), Some(6.0)] });

    // data.frames: a column per column, each by the vector rules; dates as ISO strings.
    let df = frame("frame");
    assert_eq!(column_names(&df), ["num", "int", "lgl", "chr", "fct", "day"]);
    assert_eq!(df.n_rows, 3);
    assert_eq!(df.columns[1].data, ColumnData::I32 { values: vec![Some(1), Some(2), Some(3)] });
    assert_eq!(df.columns[2].data, ColumnData::Bool { values: vec![Some(true), None, Some(false)] });
    assert_eq!(df.columns[3].data, ColumnData::Str { values: vec![Some("p".into()), None, Some("q".into())] });
    assert_eq!(
        df.columns[4].data,
        ColumnData::Factor {
            levels: vec!["u".into(), "v".into()],
            values: vec![Some(0), Some(1), None],
            ordered: false
        }
    );
    assert_eq!(
        df.columns[5].data,
        ColumnData::Str {
            values: vec![Some("2024-01-01".into()), Some("2024-01-02".into()), Some("2024-01-03".into())]
        }
    );

    // Anything else is an R error that says what came back and what would do.
    for (what, returned) in [
        ("list", "returned a list (list) of length 1"),
        ("short", "returned a numeric (double) of length 2 for 3 input rows"),
        ("frame_list", "returned a data.frame (list) of dim 3 x 2 with a column of an unsupported type"),
    ] {
        let error = match host.score("shapes", input(what), None) {
            Err(error) => error,
            other => panic!("{what}: expected an error, got {other:?}"),
        };
        assert_eq!(error.code, ErrorCode::RError, "{what}");
        assert!(
            error.message.starts_with(&format!("model 'shapes': predict_fn {returned}; expected ")),
            "{what}: {}",
            error.message
        );
    }

    // Runaway recursion is an R error for that request, not a crash of the host.
    let error = match host.score("shapes", input("deep"), None) {
        Err(error) => error,
        other => panic!("deep: expected an error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::RError);
    assert!(error.message.starts_with("model 'shapes': predict_fn failed: "), "{}", error.message);
    assert!(
        error.message.contains("C stack usage") || error.message.contains("nested too deeply"),
        "{}",
        error.message
    );
    // A jump straight to R's top level, past every handler, still ends as an answer.
    let error = match host.score("shapes", input("abort"), None) {
        Err(error) => error,
        other => panic!("abort: expected an error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::RError);
    assert!(error.message.starts_with("model 'shapes': R aborted the call"), "{}", error.message);
    let echo = match host.score("shapes", input("echo"), None) {
        Ok(HostOutput::Frame(frame)) => frame,
        other => panic!("echo: {other:?}"),
    };
    assert_eq!(echo.columns[0].data, ColumnData::F64 { values: vec![Some(1.0), Some(2.0), Some(3.0)] });
}

#[test]
fn input_columns_reach_r_with_their_types() {
    // A predict_fn that describes what it got, one string per column.
    let root = tempfile::tempdir().unwrap();
    let score = r#"predict_fn <- function(model, newdata) {
      stopifnot(is.data.frame(newdata), identical(attr(newdata, "row.names"), seq_len(nrow(newdata))))
      describe <- function(v) paste(class(v)[1], typeof(v), paste(levels(v), collapse = "/"),
        paste(ifelse(is.na(v), "<NA>", as.character(v)), collapse = ","), sep = ";")
      unname(vapply(newdata, describe, ""))
    }"#;
    let dir = write_package(root.path(), "describe", score, true);
    let (mut host, _) = Host::ready(vec![channel::package_spec(&dir)]);
    let frame = Frame::new(vec![
        protocol::Column::new(
            "f64",
            ColumnData::F64 { values: vec![Some(1.5), None, Some(-2.0), Some(0.25), Some(1e10)] },
        ),
        protocol::Column::new(
            "i32",
            ColumnData::I32 { values: vec![Some(7), None, Some(-1), Some(0), Some(i32::MAX)] },
        ),
        protocol::Column::new(
            "bool",
            ColumnData::Bool { values: vec![Some(true), None, Some(false), Some(true), Some(false)] },
        ),
        protocol::Column::new(
            "str",
            ColumnData::Str {
                values: vec![Some("a".into()), None, Some("".into()), Some("NA".into()), Some("é ü".into())],
            },
        ),
        protocol::Column::new(
            "fct",
            ColumnData::Factor {
                levels: vec!["x".into(), "y".into()],
                values: vec![Some(1), None, Some(0), Some(1), Some(0)],
                ordered: false,
            },
        ),
    ])
    .unwrap();
    let got = host.frame("describe", frame.clone(), None);
    let ColumnData::Str { values } = &got.columns[0].data else { panic!("{got:?}") };
    let values: Vec<&str> = values.iter().map(|v| v.as_deref().unwrap()).collect();
    assert_eq!(
        values,
        [
            "numeric;double;;1.5,<NA>,-2,0.25,1e+10",
            "integer;integer;;7,<NA>,-1,0,2147483647",
            "logical;logical;;TRUE,<NA>,FALSE,TRUE,FALSE",
            "character;character;;a,<NA>,,NA,é ü",
            "factor;integer;x/y;y,<NA>,x,y,x",
        ]
    );
    // The same frame again reuses cached names and levels; the answer must not change.
    let again = host.frame("describe", frame, None);
    assert_eq!(again, got);
}

// ---------------------------------------------------------------------------------------
// Forest splitting: parts over tree ranges combine exactly into R's whole-forest answer.

/// The splittable fixture forests: name, trees, classes (None for regression).
fn fixture_forests() -> Vec<(&'static str, u32, Option<Vec<String>>)> {
    let iris = || Some(vec!["setosa".to_string(), "versicolor".into(), "virginica".into()]);
    vec![
        ("rf_reg", 200, None),
        ("rf_class", 200, iris()),
        ("rf_xy", 200, None),
        ("ranger_reg", 100, None),
        ("ranger_class", 500, iris()),
    ]
}

impl Host {
    /// Scores trees `start..end`; the answer and the host's `r_us`.
    fn score_trees(
        &mut self,
        model: impl Into<ModelRef>,
        input: Input,
        start: u32,
        end: u32,
    ) -> (Result<HostOutput, ErrorBody>, u64) {
        self.next_id += 1;
        let id = self.next_id;
        let trees = protocol::host::TreeRange { start, end };
        write_message(&mut self.writer, &ToHost::ScoreTrees { id, model: model.into(), input, trees })
            .expect("send score_trees");
        match read_message(&mut self.reader).expect("read score_trees answer").expect("the host died") {
            FromHost::Scored { id: answered, result, r_us, phases, condition_class } => {
                assert_eq!(answered, id, "answer to another request");
                check_phases(r_us, phases);
                self.last = Some((r_us, phases, condition_class));
                (result, r_us)
            }
            other => panic!("expected scored, got {other:?}"),
        }
    }

    /// Scores a frame the ordinary way; the host's `r_us`.
    fn score_r_us(&mut self, model: &str, frame: &Frame) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let request = ToHost::Score { id, model: model.into(), input: Input::Frame(frame.clone()), predict_type: None };
        write_message(&mut self.writer, &request).expect("send score");
        match read_message(&mut self.reader).expect("read score answer").expect("the host died") {
            FromHost::Scored { id: answered, result: Ok(_), r_us, phases, .. } if answered == id => {
                check_phases(r_us, phases);
                r_us
            }
            other => panic!("expected scored, got {other:?}"),
        }
    }

    fn part(&mut self, model: impl Into<ModelRef>, frame: &Frame, start: u32, end: u32) -> protocol::host::ForestPart {
        let model = model.into();
        match self.score_trees(model.clone(), Input::Frame(frame.clone()), start, end).0 {
            Ok(HostOutput::ForestPart(part)) => part,
            other => panic!("{model} trees {start}..{end}: expected a forest part, got {other:?}"),
        }
    }
}

/// A small deterministic generator (xorshift64*), for rows that are not training rows.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rows for a forest: its fixture case's rows, then `extra` rows drawn over the cases'
/// range of each numeric column (a little wider) and over each factor's levels, so that
/// trees disagree on some of them. Rounded to 2 decimals: exact through JSON.
fn forest_rows(model: &ModelInfo, extra: usize, seed: u64) -> Vec<Value> {
    let case: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases").join(format!("{}.json", model.name))).unwrap())
            .unwrap();
    let mut rows = case["rows"].as_array().unwrap().clone();
    let schema = model.schema.as_ref().expect("a forest's schema");
    let mut rng = Rng(seed);
    for _ in 0..extra {
        let mut row = serde_json::Map::new();
        for column in &schema.columns {
            let value = match &column.levels {
                Some(levels) => json!(levels[(rng.unit() * levels.len() as f64) as usize % levels.len()]),
                None => {
                    let seen: Vec<f64> = rows.iter().filter_map(|r| r[&column.name].as_f64()).collect();
                    let (lo, hi) = seen.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    let pad = (hi - lo) * 0.1;
                    json!(((lo - pad + rng.unit() * (hi - lo + 2.0 * pad)) * 100.0).round() / 100.0)
                }
            };
            row.insert(column.name.clone(), value);
        }
        rows.push(Value::Object(row));
    }
    rows
}

fn f64_column(frame: &Frame, name: &str) -> Vec<Option<f64>> {
    let column = frame
        .columns
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", column_names(frame)));
    match &column.data {
        ColumnData::F64 { values } => values.clone(),
        other => panic!("column {name} is not doubles: {other:?}"),
    }
}

fn label_column(frame: &Frame) -> Vec<Option<String>> {
    match &frame.columns[0].data {
        ColumnData::Factor { levels, values, .. } => {
            values.iter().map(|v| v.map(|c| levels[c as usize].clone())).collect()
        }
        other => panic!("labels are not a factor: {other:?}"),
    }
}

/// The ways a forest of `n` trees is split in the tests: whole, two parts at several
/// points (one tree alone, odd sizes, halves), three parts and five uneven parts.
fn splits(n: u32) -> Vec<Vec<u32>> {
    let mut splits = vec![
        vec![0, n],
        vec![0, 1, n],
        vec![0, n - 1, n],
        vec![0, 73, n],
        vec![0, n / 2, n],
        vec![0, n / 3, 2 * n / 3, n],
    ];
    splits.push(vec![0, 7, 19, n / 2, n - 2, n]);
    splits
}

/// Parts over the ranges `cuts` of one model, combined exactly as the worker does.
enum Combined {
    Mean(Vec<Option<f64>>),
    Votes(Vec<Vec<u32>>),
}

fn combine(host: &mut Host, model: &str, frame: &Frame, cuts: &[u32], classes: Option<&Vec<String>>) -> Combined {
    let n_rows = frame.n_rows;
    let mut weighted = vec![Some(0.0); n_rows];
    let mut votes = vec![vec![0u32; n_rows]; classes.map_or(0, Vec::len)];
    let mut total = 0u32;
    for range in cuts.windows(2) {
        let (start, end) = (range[0], range[1]);
        match host.part(model, frame, start, end) {
            protocol::host::ForestPart::Regression { n_trees, mean } => {
                assert!(classes.is_none(), "{model}: a regression part from a classification forest");
                assert_eq!((n_trees, mean.len()), (end - start, n_rows), "{model} trees {start}..{end}");
                for (sum, m) in weighted.iter_mut().zip(&mean) {
                    *sum = sum.zip(*m).map(|(s, m)| s + f64::from(n_trees) * m);
                }
                total += n_trees;
            }
            protocol::host::ForestPart::Votes { n_trees, classes: part_classes, votes: part_votes } => {
                assert_eq!(Some(&part_classes), classes, "{model}: classes in the model's level order");
                assert_eq!(
                    (n_trees, part_votes.len()),
                    (end - start, part_classes.len()),
                    "{model} trees {start}..{end}"
                );
                for (row, _) in part_votes[0].iter().enumerate() {
                    let sum: u32 = part_votes.iter().map(|class| class[row]).sum();
                    assert!(
                        sum == n_trees || sum == 0,
                        "{model} trees {start}..{end} row {row}: {sum} votes from {n_trees} trees"
                    );
                }
                for (all, part) in votes.iter_mut().zip(&part_votes) {
                    assert_eq!(part.len(), n_rows);
                    for (a, p) in all.iter_mut().zip(part) {
                        *a += p;
                    }
                }
                total += n_trees;
            }
        }
    }
    assert_eq!(total, *cuts.last().unwrap());
    match classes {
        None => Combined::Mean(weighted.into_iter().map(|s| s.map(|s| s / f64::from(total))).collect()),
        Some(_) => Combined::Votes(votes),
    }
}

/// A predict_fn for ranger_class's model: R's own whole-forest vote fractions, the
/// per-class tallies of `predict.all = TRUE` over the trees, one column per class (a
/// randomForest answers them itself with `type = "prob"`).
const RANGER_TALLY: &str = r#"
predict_fn <- function(model, newdata) {
  p <- predict(model, data = newdata, predict.all = TRUE, num.threads = 1)$predictions
  p <- matrix(p, nrow = nrow(newdata))
  levels <- model$forest$levels
  v <- sapply(seq_along(levels), function(j) rowSums(p == j))
  v <- matrix(v, nrow = nrow(newdata), dimnames = list(NULL, levels))
  v / model$num.trees
}
"#;

#[test]
fn forest_parts_combine_into_the_whole_forest_exactly() {
    let root = tempfile::tempdir().unwrap();
    let tally = write_package(root.path(), "ranger_class_tally", RANGER_TALLY, false);
    std::fs::copy(fixtures().join("models/ranger_class/model.rds"), tally.join("model.rds")).unwrap();
    let mut specs = fixture_specs();
    specs.push(channel::package_spec(&tally));
    let (mut host, infos) = Host::ready(specs);

    let mut seed = 1;
    for (name, n_trees, classes) in fixture_forests() {
        let model = info(&infos, name).clone();
        assert_eq!(model.forest, Some(protocol::ForestInfo { n_trees, classes: classes.clone() }), "{name}");
        seed += 1;
        let mut rows = forest_rows(&model, 60, seed);
        if model.r_class.iter().any(|c| c == "randomForest.formula") {
            // The formula interface drops a row with a missing value: NA from R.
            let mut row = rows[0].clone();
            let first = &model.schema.as_ref().unwrap().columns[0].name;
            row[first] = Value::Null;
            rows.push(row);
        }
        let frame = frame_for(&Value::Array(rows), &model);
        let n_rows = frame.n_rows;
        // R's whole forest, from the ordinary scoring path (itself checked against the
        // fixture cases): predictions, labels, vote fractions.
        let whole = host.frame(name, frame.clone(), None);
        let fractions = match (name, &classes) {
            (_, None) => None,
            ("ranger_class", Some(_)) => Some(host.frame("ranger_class_tally", frame.clone(), None)),
            (_, Some(_)) => Some(host.frame(name, frame.clone(), Some("prob"))),
        };
        let (mut n_na, mut n_ties) = (0, 0);
        for cuts in splits(n_trees) {
            let context = format!("{name} split {cuts:?}");
            match combine(&mut host, name, &frame, &cuts, classes.as_ref()) {
                Combined::Mean(mean) => {
                    let expected = f64_column(&whole, ".pred");
                    for (row, (got, want)) in mean.iter().zip(&expected).enumerate() {
                        match (got, want) {
                            (Some(got), Some(want)) => {
                                assert!((got - want).abs() <= 1e-9, "{context} row {row}: {got} vs R's {want}")
                            }
                            (None, None) => n_na += 1,
                            _ => panic!("{context} row {row}: {got:?} vs R's {want:?}"),
                        }
                    }
                }
                Combined::Votes(votes) => {
                    let classes = classes.as_ref().unwrap();
                    let fractions = fractions.as_ref().unwrap();
                    let labels = label_column(&whole);
                    for row in 0..n_rows {
                        let row_votes: Vec<u32> = votes.iter().map(|class| class[row]).collect();
                        let total: u32 = row_votes.iter().sum();
                        if labels[row].is_none() {
                            assert_eq!(total, 0, "{context} row {row}: an NA row has no votes");
                            for class in classes {
                                assert_eq!(f64_column(fractions, class)[row], None, "{context} row {row}");
                            }
                            n_na += 1;
                            continue;
                        }
                        assert_eq!(total, n_trees, "{context} row {row}: every tree votes once");
                        for (j, class) in classes.iter().enumerate() {
                            // Exactly: the same integer division R does.
                            let probability = f64::from(row_votes[j]) / f64::from(total);
                            assert_eq!(
                                Some(probability),
                                f64_column(fractions, class)[row],
                                "{context} row {row} {class}"
                            );
                        }
                        let best = *row_votes.iter().max().unwrap();
                        let winners: Vec<&String> =
                            classes.iter().zip(&row_votes).filter(|(_, &v)| v == best).map(|(c, _)| c).collect();
                        if let [winner] = winners.as_slice() {
                            assert_eq!(Some(*winner), labels[row].as_ref(), "{context} row {row}: votes {row_votes:?}");
                        } else {
                            n_ties += 1;
                            assert!(
                                winners.contains(&labels[row].as_ref().unwrap()),
                                "{context} row {row}: R's label is not among the tied"
                            );
                        }
                    }
                }
            }
        }
        let n_splits = splits(n_trees).len();
        eprintln!(
            "{name}: {n_rows} rows, {n_splits} splits, NA rows {}, tied rows {}",
            n_na / n_splits,
            n_ties / n_splits
        );
        if name == "rf_reg" || name == "rf_class" {
            assert!(n_na > 0, "{name}: the rows should include an NA row");
        }
    }
}

#[test]
fn ready_reports_forests_and_score_trees_refuses_other_models() {
    let (mut host, infos) = Host::ready(fixture_specs());
    let forests = fixture_forests();
    for model in &infos {
        let want = forests
            .iter()
            .find(|(name, ..)| *name == model.name)
            .map(|(_, n_trees, classes)| protocol::ForestInfo { n_trees: *n_trees, classes: classes.clone() });
        assert_eq!(model.forest, want, "{}", model.name);
    }
    assert!(info(&infos, "caret").forest.is_none(), "a forest wrapped by caret stays whole");

    let label = |name: &str| match &info(&infos, name).version {
        Some(version) => format!("model '{name}' version '{version}'"),
        None => format!("model '{name}'"),
    };
    let lm_rows = frame_for(&json!([{ "x1": 1.0, "x2": 2.0, "grp": "beta", "cnt": 3.0 }]), info(&infos, "lm"));
    for model in ["lm", "caret", "gbm", "predict_fn", "rpart"] {
        let (result, _) = host.score_trees(model, Input::Frame(lm_rows.clone()), 0, 1);
        let error = result.expect_err(model);
        assert_eq!(error.code, ErrorCode::BadRequest, "{model}: {}", error.message);
        assert!(
            error.message.starts_with(&format!("{}: cannot score a range of trees: it is not a forest", label(model))),
            "{}",
            error.message
        );
    }
    let rf_rows = frame_for(&json!([{ "x1": 1.0, "x2": 2.0, "grp": "beta", "cnt": 3.0 }]), info(&infos, "rf_reg"));
    for (start, end) in [(0, 0), (5, 3), (0, 201), (200, 201)] {
        let error = host.score_trees("rf_reg", Input::Frame(rf_rows.clone()), start, end).0.expect_err("a bad range");
        assert_eq!(error.code, ErrorCode::BadRequest, "{start}..{end}");
        let needle = format!("trees {start}..{end} is not a non-empty range within the forest's 200 trees");
        assert!(error.message.contains(&needle), "{}", error.message);
    }
    let error = host.score_trees("rf_reg", Input::Json("[]".into()), 0, 10).0.expect_err("JSON");
    assert_eq!(error.code, ErrorCode::BadRequest);
    let error = host.score_trees("nope", Input::Frame(rf_rows.clone()), 0, 10).0.expect_err("unknown model");
    assert_eq!(error.code, ErrorCode::ModelNotFound);
    // R's own error from a part is an r_error naming the trees, and the host goes on.
    let partial = protocol::json::frame_from_value(&json!([{ "x1": 1.0, "x2": 2.0, "grp": "beta" }])).unwrap();
    let error = host.score_trees("ranger_reg", Input::Frame(partial), 10, 20).0.expect_err("a missing column");
    assert_eq!(error.code, ErrorCode::RError);
    assert!(error.message.starts_with("model 'ranger_reg': predict failed (trees 10..20): "), "{}", error.message);
    assert!(error.message.contains("not found"), "{}", error.message);
    match host.part("rf_reg", &rf_rows, 0, 200) {
        protocol::host::ForestPart::Regression { n_trees: 200, mean } => assert!(mean[0].is_some()),
        other => panic!("{other:?}"),
    }
}

/// Packages made by R here rather than in the fixtures: forests that must stay whole,
/// and 500-tree randomForests for timings.
fn r_packages(root: &Path) {
    let code = r#"
      suppressPackageStartupMessages({ library(randomForest); library(ranger) })
      out <- Sys.getenv("OUT")
      save <- function(name, model) { dir.create(file.path(out, name)); saveRDS(model, file.path(out, name, "model.rds")) }
      set.seed(11)
      n <- 300
      d <- data.frame(x1 = runif(n, 0, 10), x2 = rnorm(n), grp = factor(sample(c("a", "b", "c"), n, TRUE)),
                      cnt = as.numeric(sample(0:20, n, TRUE)))
      d$y <- 3 + 0.5 * d$x1 - 2 * d$x2 + as.integer(d$grp) + 0.1 * d$cnt + rnorm(n, sd = 0.5)
      d$time <- rexp(n, exp(-d$y / 5)); d$status <- rbinom(n, 1, 0.7)
      save("ranger_prob", ranger(Species ~ ., data = iris, num.trees = 20, probability = TRUE, num.threads = 1, seed = 1))
      save("ranger_surv", ranger(dependent.variable.name = "time", status.variable.name = "status",
                                 data = d[c("x1", "x2", "cnt", "time", "status")], num.trees = 20, num.threads = 1, seed = 1))
      save("ranger_numeric_class", ranger(x = iris[1:4], y = as.integer(iris$Species == "setosa"), classification = TRUE,
                                          num.trees = 20, num.threads = 1, seed = 1))
      save("rf_cutoff", randomForest(Species ~ ., data = iris, ntree = 20, cutoff = c(0.5, 0.3, 0.2)))
      save("rf_bias", randomForest(y ~ x1 + x2 + grp + cnt, data = d, ntree = 50, corr.bias = TRUE))
      save("rf_big_reg", randomForest(y ~ x1 + x2 + grp + cnt, data = d, ntree = 500))
      save("rf_big_class", randomForest(Species ~ ., data = iris, ntree = 500))
    "#;
    let status = Command::new("Rscript").arg("-e").arg(code).env("OUT", root).status().expect("run Rscript");
    assert!(status.success(), "making the R packages failed: {status}");
}

#[test]
fn forests_that_cannot_be_split_stay_whole() {
    let root = tempfile::tempdir().unwrap();
    r_packages(root.path());
    let names = ["ranger_prob", "ranger_surv", "ranger_numeric_class", "rf_cutoff", "rf_bias"];
    let (mut host, infos) = Host::ready(names.iter().map(|n| channel::package_spec(&root.path().join(n))).collect());
    for name in &names[..4] {
        assert_eq!(info(&infos, name).forest, None, "{name}");
    }
    // A bias-corrected randomForest answers a + b * mean, which still combines as a mean.
    let model = info(&infos, "rf_bias").clone();
    assert_eq!(model.forest, Some(protocol::ForestInfo { n_trees: 50, classes: None }));
    let rows =
        json!([{ "x1": 1.5, "x2": 0.3, "grp": "b", "cnt": 4.0 }, { "x1": 8.25, "x2": -1.0, "grp": "c", "cnt": 17.0 }]);
    let frame = frame_for(&rows, &model);
    let whole = f64_column(&host.frame("rf_bias", frame.clone(), None), ".pred");
    let Combined::Mean(mean) = combine(&mut host, "rf_bias", &frame, &[0, 13, 50], None) else { unreachable!() };
    for (got, want) in mean.iter().zip(&whole) {
        assert!((got.unwrap() - want.unwrap()).abs() <= 1e-9, "{got:?} vs R's {want:?}");
    }
}

/// Not a check: how long one row takes with half of a 500-tree forest against the whole
/// forest (`cargo test -p rhost --test host forest_timings -- --nocapture` shows it).
#[test]
fn forest_timings() {
    let root = tempfile::tempdir().unwrap();
    r_packages(root.path());
    let mut specs: Vec<ModelSpec> =
        ["rf_big_reg", "rf_big_class"].iter().map(|n| channel::package_spec(&root.path().join(n))).collect();
    specs.push(channel::package_spec(&fixtures().join("models/ranger_class")));
    let (mut host, infos) = Host::ready(specs);
    let rows = [
        ("rf_big_reg", json!([{ "x1": 4.2, "x2": 0.5, "grp": "b", "cnt": 7.0 }])),
        ("rf_big_class", json!([{ "Sepal.Length": 6.1, "Sepal.Width": 2.8, "Petal.Length": 4.9, "Petal.Width": 1.6 }])),
        ("ranger_class", json!([{ "Sepal.Length": 6.1, "Sepal.Width": 2.8, "Petal.Length": 4.9, "Petal.Width": 1.6 }])),
    ];
    const REPS: usize = 40;
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    for (name, row) in rows {
        let model = info(&infos, name).clone();
        assert_eq!(model.forest.as_ref().map(|f| f.n_trees), Some(500), "{name}");
        // The first call for a range makes its sub-forest.
        let frame = frame_for(&row, &model);
        let first_half = host.score_trees(name, Input::Frame(frame.clone()), 250, 500).1;
        let first_whole = host.score_trees(name, Input::Frame(frame.clone()), 0, 500).1;
        eprintln!("{name}: first call of a range (makes the sub-forest), 1 row: 250..500 {first_half} µs, 0..500 {first_whole} µs");
        for n_rows in [1, 32] {
            let frame = frame_for(&Value::Array(vec![row[0].clone(); n_rows]), &model);
            let (mut whole, mut half, mut all_trees) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..REPS {
                whole.push(host.score_r_us(name, &frame));
                let (result, r_us) = host.score_trees(name, Input::Frame(frame.clone()), 250, 500);
                assert!(result.is_ok());
                half.push(r_us);
                let (result, r_us) = host.score_trees(name, Input::Frame(frame.clone()), 0, 500);
                assert!(result.is_ok());
                all_trees.push(r_us);
            }
            eprintln!(
                "{name}, {n_rows} row(s), r_us median of {REPS}: score (whole forest) {} µs; \
                 score_trees 250..500 {} µs; score_trees 0..500 {} µs",
                median(whole),
                median(half),
                median(all_trees)
            );
        }
    }
}

/// Each answer says where R's time went (input, compute, output: parts of `r_us`, the
/// model's own call never free) and, for an R error, R's condition class: `simpleError`
/// for `stop("...")`, a package's own class for its own conditions, none for an answer R
/// did not signal (a result of the wrong shape).
#[test]
fn answers_carry_phases_and_condition_classes() {
    let root = tempfile::tempdir().unwrap();
    let custom = write_package(
        root.path(),
        "custom_condition",
        "predict_fn <- function(model, newdata) stop(structure(class = c(\"model_refused\", \"error\", \"condition\"), list(message = \"refused\", call = NULL)))\n",
        true,
    );
    let shape = write_package(root.path(), "wrong_shape", "predict_fn <- function(model, newdata) list(1, 2)\n", true);
    let mut specs = ["faulty", "azureml", "lm", "rf_reg"]
        .map(|name| channel::package_spec(&fixtures().join("models").join(name)))
        .to_vec();
    specs.extend([channel::package_spec(&custom), channel::package_spec(&shape)]);
    let (mut host, infos) = Host::ready(specs);
    let last = |host: &Host| host.last.clone().expect("an answer");

    host.frame("faulty", x_frame(2.0), None);
    let (r_us, phases, condition) = last(&host);
    assert!(phases.compute_us > 0, "the model's call took no time: {phases:?} of {r_us} µs");
    assert_eq!(condition, None);

    let error = host.error("faulty", Input::Frame(x_frame(-1.0)));
    assert_eq!(error.code, ErrorCode::RError);
    assert_eq!(last(&host).2.as_deref(), Some("simpleError"), "{}", error.message);

    let error = host.error("custom_condition", Input::Frame(x_frame(1.0)));
    assert_eq!(
        (error.code, error.message.as_str()),
        (ErrorCode::RError, "model 'custom_condition': predict_fn failed: refused")
    );
    assert_eq!(last(&host).2.as_deref(), Some("model_refused"));

    let error = host.error("wrong_shape", Input::Frame(x_frame(1.0)));
    assert_eq!(error.code, ErrorCode::RError, "{}", error.message);
    assert_eq!(last(&host).2, None, "an answer of the wrong shape is no R condition");

    let lm = info(&infos, "lm").clone();
    let rows = Value::Array(support::case(fixtures(), "lm").rows);
    host.frame(lm.model_ref(), frame_for(&rows, &lm), None);
    assert!(last(&host).1.compute_us > 0);

    let rows = Value::Array(support::case(fixtures(), "azureml").rows);
    let json = host.score("azureml", Input::Json(rows.to_string()), None);
    assert!(matches!(json, Ok(HostOutput::Json(_))), "{json:?}");
    assert!(last(&host).1.compute_us > 0);

    let rf = info(&infos, "rf_reg").clone();
    let rows = Value::Array(forest_rows(&rf, 0, 1));
    let frame = frame_for(&rows, &rf);
    let (part, _) = host.score_trees("rf_reg", Input::Frame(frame), 0, 2);
    assert!(matches!(part, Ok(HostOutput::ForestPart(_))), "{part:?}");
    assert!(last(&host).1.compute_us > 0);
}
