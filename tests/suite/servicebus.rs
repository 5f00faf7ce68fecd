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

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use servicebus_standin::{QueueConfig, Rights, SasRule, StandIn, StandInConfig};
use support::{client, get, Fleet, Server};

use crate::amqp::{dispatcher, fault_under_load, load, wait_ready, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp1_broker_two_workers_two_dispatchers() {
    let fleet = Fleet::amqp1("amqp1-e2e");
    let first = dispatcher(&fleet).start();
    let client = client();
    let _workers = [
        worker(&fleet).env("RFLEET_WORKERS__ID", "w1").start(),
        worker(&fleet).env("RFLEET_WORKERS__ID", "w2").start(),
    ];
    let second = dispatcher(&fleet).start();
    wait_ready(&client, &first).await;
    wait_ready(&client, &second).await;
    // Schemas come from the workers' announcements, over AMQP 1.0 too.
    let models = get(&client, &format!("{}/models", second.url)).await.json();
    let rf = models.as_array().unwrap().iter().find(|m| m["name"] == "rf_reg").expect("rf_reg listed");
    assert!(!rf["schema"]["columns"].as_array().unwrap().is_empty(), "{rf}");
    let workers = load(vec![first.url.clone(), second.url.clone()], 16, 12, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(workers, ["w1".to_string(), "w2".to_string()].into(), "both workers should have served");
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
    let mut queues: Vec<QueueConfig> = Fleet::servicebus_queues(prefix)
        .into_iter()
        .map(|name| QueueConfig { lock_duration: lock, ..QueueConfig::new(name) })
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
    let first = dispatcher(&fleet).start();
    let client = client();
    let _workers = [
        worker(&fleet).env("RFLEET_WORKERS__ID", "w1").start(),
        worker(&fleet).env("RFLEET_WORKERS__ID", "w2").start(),
    ];
    let second = dispatcher(&fleet).start();
    wait_ready(&client, &first).await;
    wait_ready(&client, &second).await;
    let models = get(&client, &format!("{}/models", second.url)).await.json();
    let rf = models.as_array().unwrap().iter().find(|m| m["name"] == "rf_reg").expect("rf_reg listed");
    assert!(!rf["schema"]["columns"].as_array().unwrap().is_empty(), "{rf}");
    let workers = load(vec![first.url.clone(), second.url.clone()], 16, 12, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(workers, ["w1".to_string(), "w2".to_string()].into(), "both workers should have served");
    drop((first, second, _workers));
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
