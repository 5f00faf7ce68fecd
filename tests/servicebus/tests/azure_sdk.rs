//! The check against the real client: `check_with_azure_sdk.py` drives Microsoft's
//! `azure-servicebus` 7.14.2 against the stand-in and prints its verdict.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{stand_in_locked, KEY_NAME};

/// The locks of `orders` and `sessions` here. The script renews a lock once half of it is
/// spent, and the SDK opens its `$management` link for that on first use (about a second on
/// an idle machine): 6 s leaves the renewal room under CI's load, where 2 s did not.
const LOCK: Duration = Duration::from_secs(6);

/// The script's checks; the verdict must name each, so a check that did not run fails.
const CHECKS: &[&str] = &[
    "send_receive_complete",
    "abandon",
    "dead_letter",
    "renew_message_lock",
    "lock_expiry",
    "max_delivery_count",
    "sessions",
    "ttl",
    "peek_and_receive_and_delete",
    "settle_via_management",
    "wrong_key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_sdk_accepts_the_stand_in() {
    let stand_in = stand_in_locked(LOCK).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/check_with_azure_sdk.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(stand_in.connection_string(KEY_NAME))
        .arg(LOCK.as_secs_f64().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    // About 50 s on an idle machine (the SDK opens a connection per sender and receiver);
    // the bound is for a hung script, and leaves room for CI's load.
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the script finishes within 300 s")
        .expect("python3 runs (pip install -r tests/servicebus/requirements.txt)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the script failed: {stderr}");
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the verdict is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(verdict["sdk"], "7.14.2", "the checker is the SDK version the stand-in was written against");
    let failed: Vec<String> = CHECKS
        .iter()
        .filter(|check| verdict["checks"][**check] != "ok")
        .map(|check| format!("{check}: {}", verdict["checks"][*check]))
        .collect();
    assert!(failed.is_empty(), "checks failed:\n{}", failed.join("\n"));
    stand_in.shutdown().await;
}
