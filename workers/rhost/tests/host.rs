//! The R host end to end: the real `rfleet-rhost` binary with real R, driven over its fd 3
//! channel exactly as the worker's supervisor drives it, against the fixture models that
//! `tests/fixtures/make_models.R` makes (and a few odd packages written here).

use std::io::{BufReader, BufWriter};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use protocol::host::{read_message, write_message, FromHost, HostOutput, ModelSpec, ToHost, HOST_FD};
use protocol::{ColumnData, ColumnType, ErrorBody, ErrorCode, Frame, Input, ModelInfo, ModelKind, Schema};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Support: fixtures, a host process, comparisons.

/// The fixture packages and cases, shared with the integration tests (made once per
/// fixture script version, under a lock, so parallel test processes never race).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(support::fixtures)
}

/// A package as the supervisor describes it: `model.toml` read the way the worker reads it.
fn spec(dir: &Path) -> ModelSpec {
    let manifest = settings::Manifest::read(dir).expect("read model.toml");
    ModelSpec {
        name: manifest.name.clone().unwrap_or_else(|| dir.file_name().unwrap().to_string_lossy().into_owned()),
        version: manifest.version.clone(),
        dir: dir.to_path_buf(),
        schema: manifest.schema(),
        predict_type: manifest.predict_type.clone(),
    }
}

fn fixture_specs() -> Vec<ModelSpec> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(fixtures().join("models")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs.iter().map(|d| spec(d)).collect()
}

/// A running `rfleet-rhost`, killed when dropped.
struct Host {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    next_id: u64,
}

impl Host {
    /// Starts a host with the channel on fd 3 and sends it `Load`; returns its answer.
    fn start(models: Vec<ModelSpec>) -> (Host, FromHost) {
        Host::start_with(models, Stdio::inherit())
    }

    /// [`Host::start`] with the host's stdout going to `stdout`; stdin is /dev/null and
    /// stderr this test's, as the supervisor sets them up (it pipes both to its log).
    fn start_with(models: Vec<ModelSpec>, stdout: Stdio) -> (Host, FromHost) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let their_fd = theirs.as_raw_fd();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rfleet-rhost"));
        command.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if their_fd == HOST_FD {
                    // dup2 onto itself keeps close-on-exec, so clear it by hand.
                    let flags = libc::fcntl(HOST_FD, libc::F_GETFD);
                    libc::fcntl(HOST_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(their_fd, HOST_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn rfleet-rhost");
        // The child holds its own copy; ours must close or we would never see its end.
        drop(theirs);
        let mut host = Host {
            child,
            reader: BufReader::new(ours.try_clone().unwrap()),
            writer: BufWriter::new(ours),
            next_id: 0,
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
        match Host::start_with(models, stdout) {
            (host, FromHost::Ready { pid, r_version, models }) => {
                assert_eq!(pid, host.child.id());
                assert!(r_version.starts_with("4."), "r_version {r_version:?}");
                (host, models)
            }
            (_, other) => panic!("host did not load: {other:?}"),
        }
    }

    /// Scores one request; `None` when the host died instead of answering.
    fn try_score(&mut self, model: &str, input: Input, predict_type: Option<&str>) -> Option<Result<HostOutput, ErrorBody>> {
        self.next_id += 1;
        let id = self.next_id;
        let request = ToHost::Score { id, model: model.into(), input, predict_type: predict_type.map(str::to_string) };
        write_message(&mut self.writer, &request).expect("send score");
        match read_message(&mut self.reader).expect("read score answer")? {
            FromHost::Scored { id: answered, result, r_us } => {
                assert_eq!(answered, id, "answer to another request");
                assert!(r_us < 60_000_000, "r_us {r_us} is not microseconds");
                Some(result)
            }
            other => panic!("expected scored, got {other:?}"),
        }
    }

    fn score(&mut self, model: &str, input: Input, predict_type: Option<&str>) -> Result<HostOutput, ErrorBody> {
        self.try_score(model, input, predict_type).expect("the host died")
    }

    fn frame(&mut self, model: &str, frame: Frame, predict_type: Option<&str>) -> Frame {
        match self.score(model, Input::Frame(frame), predict_type) {
            Ok(HostOutput::Frame(frame)) => frame,
            other => panic!("{model}: expected a frame, got {other:?}"),
        }
    }

    fn error(&mut self, model: &str, input: Input) -> ErrorBody {
        match self.score(model, input, None) {
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
        let answer = match host.score(&model.name, Input::Json(rows.to_string()), predict_type) {
            Ok(HostOutput::Json(json)) => json,
            other => panic!("{name}: expected JSON, got {other:?}"),
        };
        let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{name}: {e}: {answer}"));
        assert_same(&answer, expected, &name);
        return;
    }
    let got = host.frame(&model.name, frame_for(rows, model), predict_type);
    assert_same(&frame_json(&got), expected, &name);
    for (i, row) in rows.as_array().unwrap().iter().enumerate().take(3) {
        let got = host.frame(&model.name, frame_for(&json!([row]), model), predict_type);
        assert_same(&frame_json(&got), &json!([expected[i]]), &format!("{name} row {i} alone"));
    }
}

#[test]
fn every_fixture_case_matches_r() {
    let specs = fixture_specs();
    let (mut host, infos) = Host::ready(specs.clone());
    assert_eq!(infos.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());

    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures().join("cases")).unwrap().map(|e| e.unwrap().path()).collect();
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
        Some(Schema { columns: vec![protocol::ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None }] })
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
    let models = ["faulty", "azureml", "lm"].map(|name| spec(&fixtures().join("models").join(name))).to_vec();
    let (mut host, _) = Host::ready(models);

    let error = host.error("faulty", Input::Frame(x_frame(-1.0)));
    assert_eq!(error.code, ErrorCode::RError);
    assert_eq!(error.message, "model 'faulty': predict_fn failed: deliberate failure: x is negative");
    let good = host.frame("faulty", x_frame(21.0), None);
    assert_eq!(frame_json(&good), json!([42.0]), "the host still serves after an R error");

    let error = host.error("nope", Input::Frame(x_frame(1.0)));
    assert_eq!(error.code, ErrorCode::ModelNotFound);
    assert_eq!(error.message, "model 'nope' is not loaded in this host (loaded: azureml, faulty, lm)");

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
    assert!(error.message.starts_with("model 'lm': predict failed: ") && error.message.contains("cnt"), "{}", error.message);

    // An Azure ML script that fails on its input is an R error too.
    let error = host.error("azureml", Input::Json("{not json".into()));
    assert_eq!(error.code, ErrorCode::RError);
    assert!(error.message.starts_with("model 'azureml': the function returned by init() failed: "), "{}", error.message);
    let rows = json!([{ "wt": 2.62, "hp": 110, "qsec": 16.46 }]);
    assert!(matches!(host.score("azureml", Input::Json(rows.to_string()), None), Ok(HostOutput::Json(_))));

    // A frame that breaks its own invariants never reaches R.
    let broken = Frame { n_rows: 2, columns: vec![protocol::Column::new("x", ColumnData::F64 { values: vec![Some(1.0)] })] };
    assert_eq!(host.error("faulty", Input::Frame(broken)).code, ErrorCode::BadRequest);

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
    let (mut host, _) = Host::ready_with(vec![spec(&dir)], Stdio::piped());
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
    let (mut host, _) = Host::ready(vec![spec(&fixtures().join("models/faulty"))]);
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

#[test]
fn load_failures_name_the_model_and_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let good = spec(&fixtures().join("models/lm"));
    for (name, score, with_rds, needle) in [
        ("init_fails", "init <- function() stop(\"no weights here\")", false, "model 'init_fails': calling init() failed: no weights here"),
        ("init_not_fn", "init <- function() 42", false, "model 'init_not_fn': calling init() failed: init() returned a numeric"),
        ("no_rds", "predict_fn <- function(model, newdata) 1", false, "model 'no_rds': reading model.rds failed: there is no model.rds"),
        ("bad_syntax", "predict_fn <- function(model, newdata) {", true, "model 'bad_syntax': sourcing score.R failed: "),
    ] {
        let dir = write_package(root.path(), name, score, with_rds);
        let (mut host, answer) = Host::start(vec![good.clone(), spec(&dir)]);
        match answer {
            FromHost::LoadFailed { message } => assert!(message.starts_with(needle), "{name}: {message}"),
            other => panic!("{name}: expected load_failed, got {other:?}"),
        }
        let status = host.child.wait().unwrap();
        assert!(!status.success() && status.code().is_some(), "{name}: a failed load exits non-zero: {status}");
    }
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
    let (mut host, infos) = Host::ready(vec![spec(&dir)]);
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
        ColumnData::Factor { levels: vec!["a".into(), "b".into(), "zz".into()], values: vec![Some(1), Some(0), Some(1)], ordered: false }
    );
    assert_eq!(
        one(&frame("ordered")),
        ColumnData::Factor { levels: vec!["lo".into(), "hi".into()], values: vec![Some(0), Some(1), Some(0)], ordered: true }
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
        ColumnData::Factor { levels: vec!["u".into(), "v".into()], values: vec![Some(0), Some(1), None], ordered: false }
    );
    assert_eq!(
        df.columns[5].data,
        ColumnData::Str { values: vec![Some("2024-01-01".into()), Some("2024-01-02".into()), Some("2024-01-03".into())] }
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
        assert!(error.message.starts_with(&format!("model 'shapes': predict_fn {returned}; expected ")), "{what}: {}", error.message);
    }

    // Runaway recursion is an R error for that request, not a crash of the host.
    let error = match host.score("shapes", input("deep"), None) {
        Err(error) => error,
        other => panic!("deep: expected an error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::RError);
    assert!(error.message.starts_with("model 'shapes': predict_fn failed: "), "{}", error.message);
    assert!(error.message.contains("C stack usage") || error.message.contains("nested too deeply"), "{}", error.message);
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
    let (mut host, _) = Host::ready(vec![spec(&dir)]);
    let frame = Frame::new(vec![
        protocol::Column::new("f64", ColumnData::F64 { values: vec![Some(1.5), None, Some(-2.0), Some(0.25), Some(1e10)] }),
        protocol::Column::new("i32", ColumnData::I32 { values: vec![Some(7), None, Some(-1), Some(0), Some(i32::MAX)] }),
        protocol::Column::new("bool", ColumnData::Bool { values: vec![Some(true), None, Some(false), Some(true), Some(false)] }),
        protocol::Column::new(
            "str",
            ColumnData::Str { values: vec![Some("a".into()), None, Some("".into()), Some("NA".into()), Some("é ü".into())] },
        ),
        protocol::Column::new(
            "fct",
            ColumnData::Factor { levels: vec!["x".into(), "y".into()], values: vec![Some(1), None, Some(0), Some(1), Some(0)], ordered: false },
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
