//! What the AMQP 1.0 (broker dialect) tests share: an [`Amqp1Bus`] per test on RabbitMQ's
//! `rabbitmq_amqp1_0` plugin with its own queue prefix and catalog topic, and cleanup of
//! the queues the plugin declared, through AMQP 0-9-1 (AMQP 1.0 cannot delete a queue).

use std::time::Duration;

use bus::{Amqp1Bus, Amqp1Config, Requester};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// One queue on a test broker, as the conformance suite's `Transport`.
#[derive(Clone)]
pub struct Amqp1 {
    pub bus: Amqp1Bus,
    pub queue: String,
}

pub struct Amqp1Broker {
    pub config: Amqp1Config,
    pub bus: Amqp1Bus,
    pub shutdown: CancellationToken,
    raw: Connection,
    queues: Mutex<Vec<String>>,
}

impl Amqp1Broker {
    pub async fn new(name: &str) -> Amqp1Broker {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("rfleet.test.amqp1.{name}.{unique}.");
        let config = Amqp1Config {
            queue_prefix: prefix.clone(),
            catalog: format!("{prefix}catalog"),
            reply_queue: format!("{prefix}reply"),
            connection_name: format!("rfleet-test-amqp1-{name}"),
            ..Amqp1Config::from_url(&super::url()).expect("the test broker's url")
        };
        let shutdown = CancellationToken::new();
        let bus = Amqp1Bus::start(config.clone(), shutdown.clone());
        assert!(
            bus.wait_connected(Duration::from_secs(10)).await,
            "no AMQP 1.0 broker at {} (is the rabbitmq_amqp1_0 plugin enabled?)",
            config.endpoint
        );
        let raw = Connection::connect(&super::url(), ConnectionProperties::default()).await.expect("raw connection");
        Amqp1Broker { config, bus, shutdown, raw, queues: Mutex::default() }
    }

    /// The request queue of `model` (at `version`), deleted at cleanup.
    pub fn queue(&self, model: &str, version: Option<&str>) -> String {
        let queue = self.bus.queue_for(model, version);
        self.queues.lock().push(queue.clone());
        queue
    }

    pub fn transport(&self, model: &str) -> Amqp1 {
        Amqp1 { bus: self.bus.clone(), queue: self.queue(model, None) }
    }

    /// Messages ready in `queue`; `None` while it does not exist.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        let channel = self.raw.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
        let _ = channel.close(200, "done".into()).await;
        Some(declared.message_count())
    }

    /// Consumers of `queue`; `None` while it does not exist.
    pub async fn consumer_count(&self, queue: &str) -> Option<u32> {
        let channel = self.raw.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
        let _ = channel.close(200, "done".into()).await;
        Some(declared.consumer_count())
    }

    /// Deletes the queues the plugin declared for this test, then stops its bus.
    pub async fn cleanup(self) {
        self.shutdown.cancel();
        let channel = self.raw.create_channel().await.unwrap();
        let queues = self.queues.lock().clone();
        for queue in &queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let _ = self.raw.close(200, "done".into()).await;
    }
}
