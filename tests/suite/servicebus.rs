//! A fleet over the AMQP 1.0 transport (`bus.kind = "servicebus"`), end to end: separate
//! dispatcher and worker processes, answers checked against R's own `predict`.
//!
//! What is real: rfleet's binaries, R, and the broker: RabbitMQ at 127.0.0.1:5672 with its
//! `rabbitmq_amqp1_0` plugin (enabled by `deploy/setup.sh test`), a third-party AMQP 1.0
//! peer the transport speaks to in its `broker` dialect. Azure Service Bus itself cannot
//! run here; the Service Bus dialect's own rules are checked against the stand-in (see the
//! `servicebus-standin` crate), which Microsoft's Python client checks in turn.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

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
