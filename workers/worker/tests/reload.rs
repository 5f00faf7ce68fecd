//! A worker on the embedded bus with real R hosts (the `rfleet-rhost` binary) and models
//! made by R: several versions of one model in one worker, each answering as R's own
//! `predict` does; packages dropped into and removed from its directory while it serves
//! other traffic; a corrupt package beside good ones; and `models.strict`.
//!
//! Issue 9: one corrupt `model.rds` of three stopped the worker from starting, one worker
//! could not hold two versions of a model, and a new package needed a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod embedded;

use bus::{EmbeddedBus, Transport};
use protocol::{Announcement, Column, ColumnData, ErrorCode, Frame, Input, Outcome, Reply, Request, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use worker::Worker;

/// How long a package dropped into the directory may take to be served (the issue's bound).
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// The rows every model scores: `wt` and `hp` as in `mtcars`.
const WT: [f64; 3] = [2.5, 3.1, 4.0];
const HP: [f64; 3] = [110.0, 150.0, 230.0];

/// `target/debug`, where cargo put this test binary's sibling binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

fn rhost() -> PathBuf {
    let path = target_dir().join("rfleet-rhost");
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace --bins` before the tests", path.display());
    path
}

/// Packages made by R under `stage` (one directory each, and `<name>.expected`: R's own
/// predictions for the rows above), to be moved into a worker's directory.
struct Stage {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

const MAKE_MODELS: &str = r#"
root <- commandArgs(TRUE)[1]
rows <- data.frame(wt = c(2.5, 3.1, 4.0), hp = c(110, 150, 230))
package <- function(dir, model, toml = NULL) {
  dir.create(file.path(root, dir))
  saveRDS(model, file.path(root, dir, "model.rds"))
  if (!is.null(toml)) writeLines(toml, file.path(root, dir, "model.toml"))
  writeLines(sprintf("%.17g", predict(model, rows)), file.path(root, paste0(dir, ".expected")))
}
package("reg_v1", lm(mpg ~ wt, mtcars), c('name = "reg"', 'version = "1"'))
package("reg_v2", lm(mpg ~ wt + hp, mtcars), c('name = "reg"', 'version = "2"'))
package("other", lm(mpg ~ hp, mtcars))
package("added", lm(qsec ~ wt + hp, mtcars))
"#;

impl Stage {
    fn new() -> Stage {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("stage");
        std::fs::create_dir(&root).unwrap();
        let status = Command::new("Rscript")
            .args(["-e", MAKE_MODELS, root.to_str().unwrap()])
            .status()
            .expect("run Rscript (is R installed?)");
        assert!(status.success(), "making the models failed: {status}");
        Stage { _dir: dir, root }
    }

    fn expected(&self, package: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(self.root.join(format!("{package}.expected"))).unwrap();
        text.lines().map(|line| line.parse().unwrap()).collect()
    }

    /// A models directory beside the stage, holding `packages` (moved in).
    fn models_dir(&self, packages: &[&str]) -> PathBuf {
        let dir = self.root.parent().unwrap().join("models");
        std::fs::create_dir(&dir).unwrap();
        for package in packages {
            self.move_in(package, &dir);
        }
        dir
    }

    /// Moves a package into `dir` at once (a rename), as a deployment would.
    fn move_in(&self, package: &str, dir: &Path) {
        std::fs::rename(self.root.join(package), dir.join(package)).unwrap();
    }
}

/// A package whose `model.rds` R cannot read.
fn corrupt_package(dir: &Path, name: &str) {
    std::fs::create_dir(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("model.rds"), b"this is not an rds file").unwrap();
}

fn settings(models: &Path, strict: bool) -> settings::Settings {
    let mut settings = settings::Settings::default();
    settings.models.dir = models.to_path_buf();
    settings.models.strict = strict;
    settings.models.poll_interval_ms = 200;
    settings.workers.n_hosts = 2;
    settings.workers.rhost_path = Some(rhost());
    settings.workers.id = Some("reload-test".into());
    // R's own predict: these tests count R calls and their spans (a self-check would add some).
    settings.workers.engine = protocol::Engine::R;
    settings.bus.announce_interval_ms = 200;
    settings
}

/// A worker serving on its own embedded bus.
struct Running {
    bus: EmbeddedBus,
    announcements: mpsc::Receiver<Vec<u8>>,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

impl Running {
    async fn start(models: &Path) -> Running {
        let bus = EmbeddedBus::new(256, "requests");
        let transport: Arc<dyn Transport> = Arc::new(bus.clone());
        // Subscribed first, so the worker's first announcement is heard.
        let announcements = transport.announcements();
        let worker = Worker::start(&settings(models, false), transport).await.expect("the worker starts");
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        Running { bus, announcements, shutdown, worker }
    }

    /// The next announcement that satisfies `wanted`, within `within`.
    async fn announced(&mut self, within: Duration, wanted: impl Fn(&Announcement) -> bool) -> Announcement {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let body = tokio::time::timeout_at(deadline, self.announcements.recv())
                .await
                .expect("no such announcement in time")
                .expect("announcements go on");
            let announcement: Announcement = protocol::decode(&body).unwrap();
            if wanted(&announcement) {
                return announcement;
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.worker).await;
        stopped.expect("the worker stops").unwrap().expect("the worker ran");
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Scores the rows with `model` (at `version`) and returns the reply.
async fn score(bus: &EmbeddedBus, model: &str, version: Option<&str>) -> Reply {
    let f64s = |values: &[f64]| ColumnData::F64 { values: values.iter().map(|v| Some(*v)).collect() };
    let frame = Frame::new(vec![Column::new("wt", f64s(&WT)), Column::new("hp", f64s(&HP))]).unwrap();
    let id = format!("r{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let request = Request {
        version: PROTOCOL_VERSION,
        id: id.clone(),
        model: model.into(),
        model_version: version.map(str::to_string),
        deadline_ms: None,
        options: Default::default(),
        traceparent: None,
        request_id: None,
        input: Input::Frame(frame),
    };
    embedded::call(bus, &request, None).await
}

/// What a reply should be: predictions equal to R's (and the version that scored), or an
/// error with its code and a part of its message.
enum Expected<'a> {
    Scored { predictions: Vec<f64>, version: Option<&'a str> },
    Failed(ErrorCode, &'a str),
}

fn check(reply: &Reply, expected: &Expected<'_>) {
    match (&reply.outcome, expected) {
        (Outcome::Predictions(frame), Expected::Scored { predictions, version }) => {
            let ColumnData::F64 { values } = &frame.columns[0].data else {
                panic!("predictions are not numbers: {frame:?}")
            };
            let got: Vec<f64> = values.iter().map(|v| v.expect("a prediction")).collect();
            assert_eq!(got.len(), predictions.len());
            for (got, want) in got.iter().zip(predictions) {
                assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "predicted {got}, R says {want}");
            }
            assert_eq!(reply.timings.model_version.as_deref(), *version, "the version that scored");
        }
        (Outcome::Error(error), Expected::Failed(code, message)) => {
            assert_eq!(error.code, *code, "{}", error.message);
            assert!(error.message.contains(message), "{:?} does not say {message:?}", error.message);
        }
        (outcome, _) => panic!("unexpected reply {outcome:?}"),
    }
}

/// Waits until `condition` holds of a fresh reply for `model`, within `within`.
async fn wait_for_reply(
    bus: &EmbeddedBus,
    model: &str,
    version: Option<&str>,
    within: Duration,
    condition: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let reply = score(bus, model, version).await;
        if condition(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "no such reply for {model} within {within:?}; last {:?}", reply.outcome);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_reloads_and_broken_packages() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let stage = Stage::new();
    let models = stage.models_dir(&["reg_v1", "reg_v2", "other"]);
    corrupt_package(&models, "broken");
    let mut running = Running::start(&models).await;

    // The corrupt package is reported beside the good ones, which serve.
    let first = running.announced(Duration::from_secs(10), |_| true).await;
    let served: Vec<String> = first.models.iter().map(|m| m.model_ref().to_string()).collect();
    assert_eq!(served, ["other", "reg version 1", "reg version 2"]);
    assert_eq!(first.failed.len(), 1, "{:?}", first.failed);
    assert_eq!((first.failed[0].name.as_str(), first.failed[0].version.as_deref()), ("broken", None));
    assert!(!first.failed[0].message.is_empty());

    // Two versions of one model in one worker, each its own; unpinned is the highest.
    let scored = |package: &str, version| Expected::Scored { predictions: stage.expected(package), version };
    let cases = [
        ("reg", Some("1"), scored("reg_v1", Some("1"))),
        ("reg", Some("2"), scored("reg_v2", Some("2"))),
        ("reg", None, scored("reg_v2", Some("2"))),
        ("other", None, scored("other", None)),
        (
            "reg",
            Some("3"),
            Expected::Failed(
                ErrorCode::ModelNotFound,
                "model 'reg' version '3' is not served by this worker (it serves reg versions 1, 2)",
            ),
        ),
        ("broken", None, Expected::Failed(ErrorCode::ModelNotFound, "model 'broken' is not served by this worker")),
    ];
    for (model, version, expected) in &cases {
        check(&score(&running.bus, model, *version).await, expected);
    }

    // Other traffic goes on while packages come and go, every request answered right.
    let traffic_stop = CancellationToken::new();
    let traffic = {
        let (bus, stop, expected) = (running.bus.clone(), traffic_stop.clone(), scored("other", None));
        tokio::spawn(async move {
            let mut answered = 0;
            while !stop.is_cancelled() {
                check(&score(&bus, "other", None).await, &expected);
                answered += 1;
            }
            answered
        })
    };

    // A package dropped into the directory is served within the bound, and announced.
    stage.move_in("added", &models);
    let added = |r: &Reply| matches!(r.outcome, Outcome::Predictions(_));
    let reply = wait_for_reply(&running.bus, "added", None, RELOAD_BOUND, added).await;
    check(&reply, &scored("added", None));
    running.announced(RELOAD_BOUND, |a| a.models.iter().any(|m| m.name == "added")).await;

    // A removed one is answered model_not_found, naming what is left.
    std::fs::remove_dir_all(models.join("reg_v1")).unwrap();
    let gone = |r: &Reply| matches!(&r.outcome, Outcome::Error(e) if e.code == ErrorCode::ModelNotFound);
    let reply = wait_for_reply(&running.bus, "reg", Some("1"), RELOAD_BOUND, gone).await;
    check(&reply, &Expected::Failed(ErrorCode::ModelNotFound, "(it serves reg version 2)"));
    check(&score(&running.bus, "reg", Some("2")).await, &scored("reg_v2", Some("2")));
    let after = running.announced(RELOAD_BOUND, |a| !a.models.iter().any(|m| m.version.as_deref() == Some("1"))).await;
    assert_eq!(after.failed.len(), 1, "the broken package is still reported: {:?}", after.failed);

    traffic_stop.cancel();
    let answered = traffic.await.expect("every request of the other traffic was answered right");
    assert!(answered > 0, "the other traffic ran");
    running.stop().await;
}

#[tokio::test]
async fn strict_refuses_to_start_naming_the_broken_package() {
    let stage = Stage::new();
    let models = stage.models_dir(&["other"]);
    corrupt_package(&models, "broken");
    let transport: Arc<dyn Transport> = Arc::new(EmbeddedBus::new(16, "requests"));
    let refused = match Worker::start(&settings(&models, true), transport).await {
        Ok(_) => panic!("a strict worker started with a corrupt package"),
        Err(error) => error.to_string(),
    };
    assert!(refused.contains("broken") && refused.contains("models.strict"), "{refused}");
}
