//! A fleet over the AMQP 1.0 transport (`bus.kind = "servicebus"`), end to end: separate
//! dispatcher and worker processes, answers checked against R's own `predict`.
//!
//! What is real: rfleet's binaries, R, and, for the `broker` dialect, RabbitMQ at
//! 127.0.0.1:5672 with its `rabbitmq_amqp1_0` plugin (enabled by `deploy/setup.sh test`), a
//! third-party AMQP 1.0 peer. Azure Service Bus itself cannot run here: the `servicebus_*`
//! fleets run on the stand-in (the `servicebus-standin` crate, started in the test's
//! process on a port of its own), which keeps Service Bus's rules (CBS sign-in, peek-lock,
//! lock expiry, sessions, `$management`) and which Microsoft's Python client checks in
//! turn.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use servicebus_standin::{QueueConfig, Rights, SasRule, StandIn, StandInConfig};
use support::{assert_same, case, fixtures, Fleet, Server};

use crate::amqp::{fault_under_load, run_publisher, two_workers_two_dispatchers, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp1_broker_two_workers_two_dispatchers() {
    two_workers_two_dispatchers(&Fleet::amqp1("amqp1-e2e")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp1_broker_killed_worker_loses_no_request() {
    let fleet = Fleet::amqp1("amqp1-kill");
    let first = worker(&fleet);
    fault_under_load(fleet, first, Server::kill).await;
}

/// The Service Bus stand-in with the queues a fleet of the fixture models uses (requests
/// locked `lock` at a time), the reply and catalog queues, and one key that may do all.
async fn namespace(prefix: &str, lock: Duration) -> (StandIn, String) {
    // As deploy/azure/main.bicep makes them: expired requests are dead-lettered. `nobody`
    // is a queue no worker consumes.
    let mut queues: Vec<QueueConfig> = Fleet::servicebus_queues(prefix)
        .into_iter()
        .chain([format!("{prefix}nobody")])
        .map(|name| QueueConfig { lock_duration: lock, dead_letter_on_expiry: true, ..QueueConfig::new(name) })
        .collect();
    queues.push(QueueConfig { requires_session: true, ..QueueConfig::new("rfleet.replies") });
    queues.push(QueueConfig::new("rfleet.catalog"));
    let key = base64::engine::general_purpose::STANDARD.encode(uuid_bytes());
    let rules = vec![SasRule { key_name: "rfleet".into(), key, rights: Rights::ALL }];
    let standin = StandIn::start(StandInConfig { rules, queues, ..StandInConfig::default() })
        .await
        .expect("start the Service Bus stand-in");
    let connection_string = standin.connection_string("rfleet");
    (standin, connection_string)
}

fn uuid_bytes() -> Vec<u8> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (nanos ^ u128::from(std::process::id())).to_le_bytes().to_vec()
}

/// A fleet on the Service Bus stand-in, through the Service Bus dialect: two workers and
/// two dispatchers signed in with a connection string, schemas learnt by peeking the
/// catalog queue, replies on the dispatchers' sessions of the one reply queue, and every
/// answer R's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servicebus_two_workers_two_dispatchers() {
    let mut fleet = Fleet::new("sb-e2e");
    let (standin, connection_string) = namespace(&fleet.queue_prefix(), Duration::from_secs(30)).await;
    fleet.use_servicebus(connection_string);
    two_workers_two_dispatchers(&fleet).await;
    standin.shutdown().await;
}

/// A worker killed (SIGKILL) under load loses nothing on Service Bus: the requests it had
/// locked come back when their locks run out (2 s here), delivery count one more, and the
/// other worker answers them; a reply that comes twice is dropped by the dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servicebus_killed_worker_loses_no_request() {
    let mut fleet = Fleet::new("sb-kill");
    let (standin, connection_string) = namespace(&fleet.queue_prefix(), Duration::from_secs(2)).await;
    fleet.use_servicebus(connection_string);
    let first = worker(&fleet);
    fault_under_load(fleet, first, Server::kill).await;
    standin.shutdown().await;
}

/// Runs `deploy/examples/publish_servicebus.py` (Microsoft's azure-servicebus client)
/// against the stand-in: `model`'s queue of `fleet`, with `rows` and `extra` options.
fn publish(fleet: &Fleet, model: &str, rows: &Value, extra: &[&str]) -> Value {
    let connection_string = fleet.servicebus.clone().expect("a fleet on the stand-in");
    let (rows, prefix) = (rows.to_string(), fleet.queue_prefix());
    let args =
        ["--connection-string", &connection_string, "--model", model, "--queue-prefix", &prefix, "--rows", &rows];
    run_publisher("publish_servicebus.py", &args, extra)
}

/// Direct publishers on Service Bus (Microsoft's client, replies on a session of their
/// own) are answered as R answers; poison is answered, then dead-lettered by the worker
/// with `DeadLetterReason` and `DeadLetterErrorDescription`; a request that expires in its
/// queue is dead-lettered by Service Bus (`TTLExpiredException`); the worker keeps serving,
/// and its log never shows the connection string's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servicebus_direct_publishers_poison_and_expiry() {
    let mut fleet = Fleet::new("sb-direct");
    let (standin, connection_string) = namespace(&fleet.queue_prefix(), Duration::from_secs(30)).await;
    let key =
        connection_string.split("SharedAccessKey=").nth(1).and_then(|rest| rest.split(';').next()).unwrap().to_string();
    fleet.use_servicebus(connection_string);
    let counter = tempfile::NamedTempFile::new().unwrap();
    let worker = worker(&fleet).env("SCORE_COUNTER_FILE", counter.path().display()).capture_logs().start();
    let calls = || std::fs::read_to_string(counter.path()).unwrap().lines().count();
    let rf = case(&fixtures(), "rf_reg");
    let rows = Value::Array(rf.rows.clone());
    let expected = Value::Array(rf.expected.clone());
    for (content_type, extra) in [("application/msgpack", vec![]), ("application/json", vec!["--content-type", "json"])]
    {
        let reply = tokio::task::block_in_place(|| publish(&fleet, "rf_reg", &rows, &extra));
        assert_eq!(reply["content_type"], content_type, "{reply}");
        let columns = &reply["reply"]["outcome"]["predictions"]["columns"];
        assert_same(&columns[0]["values"], &expected, &format!("direct publisher {extra:?}"));
    }

    let x = json!([{"x": 1.5}]);
    let reply = tokio::task::block_in_place(|| publish(&fleet, "faulty", &x, &[]));
    assert_eq!(reply["reply"]["outcome"]["predictions"]["columns"][0]["values"], json!([3.0]), "{reply}");
    assert_eq!(calls(), 1);
    let garbage = tokio::task::block_in_place(|| publish(&fleet, "faulty", &x, &["--raw-body", "\u{1}garbage"]));
    assert_eq!(garbage["reply"]["outcome"]["error"]["code"], "bad_request", "{garbage}");
    let version = tokio::task::block_in_place(|| publish(&fleet, "faulty", &x, &["--version", "99"]));
    assert_eq!(version["reply"]["outcome"]["error"]["code"], "unsupported_version", "{version}");
    let crash = tokio::task::block_in_place(|| publish(&fleet, "faulty", &json!([{"x": 666}]), &[]));
    assert_eq!(crash["reply"]["outcome"]["error"]["code"], "host_crashed", "{crash}");
    let dead = standin.dead_letters(&format!("{}faulty", fleet.queue_prefix()));
    let reasons: Vec<_> = dead.iter().map(|d| d.dead_letter_reason.as_deref().unwrap_or_default()).collect();
    assert_eq!(reasons, ["bad_request", "unsupported_version", "host_crashed"], "{dead:?}");
    assert!(dead.iter().all(|d| d.dead_letter_error_description.as_ref().is_some_and(|d| !d.is_empty())), "{dead:?}");
    assert_eq!(calls(), 3, "the crashing request reached two R hosts, the poison none");

    // Expired in a queue nobody consumes: Service Bus dead-letters it, nobody answers.
    let past =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() - 1000).to_string();
    let expired =
        tokio::task::block_in_place(|| publish(&fleet, "nobody", &x, &["--deadline-ms", &past, "--timeout", "1"]));
    assert!(expired["error"].as_str().is_some_and(|e| e.starts_with("no reply")), "{expired}");
    let dead = standin.dead_letters(&format!("{}nobody", fleet.queue_prefix()));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].dead_letter_reason.as_deref(), Some("TTLExpiredException"));

    let reply = tokio::task::block_in_place(|| publish(&fleet, "rf_reg", &rows, &[]));
    assert_same(&reply["reply"]["outcome"]["predictions"]["columns"][0]["values"], &expected, "after poison");
    assert!(
        !worker.logs().is_empty() && !worker.logs().contains(&key),
        "the worker's log shows the connection string's key"
    );
    drop(worker);
    standin.shutdown().await;
}
