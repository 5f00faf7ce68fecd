//! The `rfleet` command line: settings layers, and configuration mistakes caught at start.

use std::process::Command;

use support::binary;

/// Runs `rfleet config` with a config file and environment; returns (success, output).
fn check(file: &str, env: &[(&str, &str)], args: &[&str], success: bool, needle: &str) {
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
