//! The `rfleet` command line: settings layers, and configuration mistakes caught at start.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::binary;

/// Runs `rfleet config` with a config file, environment and flags; checks that it succeeds
/// or fails as `success` says and mentions `needle`, and returns its output.
fn check(file: &str, env: &[(&str, &str)], args: &[&str], success: bool, needle: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rfleet.toml"), file).unwrap();
    let mut command = Command::new(binary("rfleet"));
    command.arg("config").args(args).current_dir(dir.path()).env_clear().env("PATH", std::env::var("PATH").unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.success(), success, "rfleet config {args:?} with {file:?}: {text}");
    assert!(text.contains(needle), "output does not mention {needle:?}: {text}");
    text
}

#[test]
fn settings_layers_and_mistakes() {
    check("", &[], &[], true, "listen = \"127.0.0.1:8000\"");
    check("[server]\nlisten = \"0.0.0.0:9000\"\n", &[], &[], true, "listen = \"0.0.0.0:9000\"");
    check(
        "[server]\nlisten = \"0.0.0.0:9000\"\n",
        &[("RFLEET_SERVER__LISTEN", "127.0.0.1:9100")],
        &[],
        true,
        "127.0.0.1:9100",
    );
    check("", &[("RFLEET_SERVER__LISTEN", "127.0.0.1:9100")], &["--listen", "127.0.0.1:9200"], true, "127.0.0.1:9200");
    check("[server]\nlisten_addr = \"x\"\n", &[], &[], false, "unknown field `listen_addr`");
    check("", &[("RFLEET_WORKERS__HOSTS", "2")], &[], false, "unknown field `hosts`");
    check("", &[], &["--hosts", "many"], false, "invalid value 'many'");
}

#[test]
fn serve_refuses_a_missing_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary("rfleet"))
        .args(["serve", "--models", "/nonexistent/models", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/models"), "{stderr}");
}

/// Issue 8: `rfleet config` printed `bus.url` with its password. Whichever layer gives the
/// broker password or an auth key, the output shows the redacted form and never the
/// secret, and stays a config file that reads back to itself.
#[test]
fn config_never_prints_a_secret() {
    let url = |password: &str| format!("amqp://rfleet:{password}@broker.example:5672/%2f");
    let redacted = "url = \"amqp://rfleet:***@broker.example:5672/%2f\"";
    let file = format!(
        "[bus]\nkind = \"amqp\"\nurl = \"{}\"\n[auth]\nprimary_key = \"primary-key-in-file-5Jt\"\n",
        url("pw-in-file-5Jt")
    );
    let (env_url, flag_url) = (url("pw-in-env-5Jt"), url("pw-by-flag-5Jt"));
    let env = [("RFLEET_BUS__URL", env_url.as_str()), ("RFLEET_AUTH__SECONDARY_KEY", "secondary-key-in-env-5Jt")];
    let printed = [
        check(&file, &[], &[], true, redacted),
        check(&file, &env, &[], true, redacted),
        check(&file, &env, &["--bus", &flag_url], true, redacted),
    ];
    for text in &printed {
        for secret in ["pw-in-file", "pw-in-env", "pw-by-flag", "primary-key-in-file", "secondary-key-in-env"] {
            assert!(!text.contains(secret), "rfleet config printed {secret:?}: {text}");
        }
        assert!(text.starts_with("# effective settings; secrets are redacted"), "{text}");
        assert!(text.contains("primary_key = \"***\""), "{text}");
    }
    assert!(printed[1].contains("secondary_key = \"***\""), "{}", printed[1]);
    // Valid TOML that reads back as itself: the redacted form redacts to itself.
    assert_eq!(check(&printed[2], &[], &[], true, redacted), printed[2]);
}

/// Issue 8: a process that cannot reach its broker logs each failed attempt, at a level a
/// user debugging it would turn on; no line of it, stdout or stderr, may carry the
/// password. One broker refuses the connection (nothing listens on port 1), the real one
/// refuses the credentials.
#[test]
fn broker_failures_never_log_the_password() {
    let refused = "amqp://rfleet:refused-pw-8Hv@127.0.0.1:1/%2f";
    let denied = "amqp://guest:denied-pw-8Hv@127.0.0.1:5672/%2f";
    // `serve` given the URL by flag, `worker` by the environment; both at once, since each
    // waits out the start-up grace for its broker before it gives up on it.
    let serve = Logged::start(&["serve", "--bus", refused, "--listen", "127.0.0.1:0"], &[]);
    let worker = Logged::start(&["worker"], &[("RFLEET_BUS__KIND", "amqp"), ("RFLEET_BUS__URL", denied)]);
    let reported = "broker not reachable yet";
    let serve = serve.until(reported);
    let worker = worker.until(reported);
    assert!(serve.contains("url=amqp://rfleet:***@127.0.0.1:1/%2f"), "{serve}");
    assert!(worker.contains("url=amqp://guest:***@127.0.0.1:5672/%2f"), "{worker}");
    // The denied one did reach the broker and was turned away, and said so each time.
    assert!(worker.matches("cannot connect to the broker").count() >= 2, "{worker}");
    assert!(worker.contains("ACCESS_REFUSED"), "{worker}");
    // Not a URL lapin can parse, and its parse error would repeat the whole string: the
    // process refuses it before it tries, naming it redacted.
    let schemeless = Logged::start(&["worker", "--bus", "guest:schemeless-pw-8Hv@127.0.0.1:5672"], &[]);
    let schemeless = schemeless.until("is not an amqp:// or amqps:// URL");
    assert!(schemeless.contains("bus.url guest:***@127.0.0.1:5672"), "{schemeless}");
    for (text, password) in [(&serve, "refused-pw"), (&worker, "denied-pw"), (&schemeless, "schemeless-pw")] {
        assert!(!text.contains(password), "the password {password:?} was logged: {text}");
    }
}

/// A real `rfleet` process at `--log-level debug` whose stdout and stderr are collected.
struct Logged {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Logged {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Logged {
        let mut command = Command::new(binary("rfleet"));
        // No models: the process would stop at them, after it has given up on the broker.
        command.args(args).args(["--log-level", "debug", "--models", "/nonexistent/models"]);
        command.env_remove("RUST_LOG").envs(env.iter().copied());
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (line_tx, lines) = std::sync::mpsc::channel();
        let outputs: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let readers = outputs
            .into_iter()
            .map(|output| {
                let line_tx = line_tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(output).lines().map_while(Result::ok) {
                        let _ = line_tx.send(line);
                    }
                })
            })
            .collect();
        Logged { child, lines, readers }
    }

    /// Everything the process printed up to and including a line containing `needle`
    /// (within a minute), and the rest once it is killed.
    fn until(mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                    if line.contains(needle) {
                        break;
                    }
                }
                Err(_) => panic!("no line mentioned {needle:?} within a minute: {text}"),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        text.extend(self.lines.try_iter().map(|line| line + "\n"));
        text
    }
}
