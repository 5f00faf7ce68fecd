//! What the RabbitMQ tests share: a bus per test with its own queue prefix, dead-letter
//! queue and catalog exchange, a raw lapin connection to look behind the bus, and cleanup.
#![allow(dead_code)] // each test binary uses part of it

pub mod amqp1;
pub mod node;

use std::time::{Duration, Instant};

use bus::{AmqpBus, AmqpConfig, Requester};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// How often [`wait_for`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check` yields a value, looking again every few milliseconds; fails naming
/// `what` once `limit` has passed.
pub async fn wait_for<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// `queue` as the broker has it (a passive declare); `None` while it does not exist. A
/// passive declare of a missing queue closes its channel: one channel per question.
pub async fn passive_declare(raw: &Connection, queue: &str) -> Option<lapin::Queue> {
    let channel = raw.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
    let _ = channel.close(200, "done".into()).await;
    Some(declared)
}

/// The broker the tests use: the local one unless `RFLEET_TEST_AMQP_URL` says otherwise.
pub fn url() -> String {
    std::env::var("RFLEET_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A configuration whose every name is unique to this test run.
pub fn config(name: &str) -> AmqpConfig {
    let prefix = format!("rfleet.test.{name}.{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    AmqpConfig {
        url: url().into(),
        ca_file: None,
        queue_prefix: prefix.clone(),
        queue_type: settings::QueueType::Classic,
        dead_letter_exchange: format!("{prefix}dead"),
        dead_letter_queue: format!("{prefix}dead"),
        catalog_exchange: format!("{prefix}catalog"),
        prefetch: 8,
        connection_name: format!("rfleet-test-{name}"),
    }
}

/// One model's queue on a test broker, as the conformance suite's `Transport`.
#[derive(Clone)]
pub struct Amqp {
    pub bus: AmqpBus,
    pub model: String,
}

pub struct TestBroker {
    pub config: AmqpConfig,
    pub bus: AmqpBus,
    pub shutdown: CancellationToken,
    raw: Connection,
    queues: Mutex<Vec<String>>,
}

/// A message read back from the dead-letter queue.
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub headers: FieldTable,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

impl TestBroker {
    pub async fn new(name: &str) -> TestBroker {
        Self::start(config(name)).await
    }

    pub async fn with_queue_type(name: &str, queue_type: settings::QueueType) -> TestBroker {
        Self::start(AmqpConfig { queue_type, ..config(name) }).await
    }

    pub async fn start(config: AmqpConfig) -> TestBroker {
        let shutdown = CancellationToken::new();
        let bus = AmqpBus::start(config.clone(), shutdown.clone());
        assert!(bus.wait_connected(Duration::from_secs(10)).await, "no broker at {}", config.url);
        let raw = Connection::connect(config.url.expose_secret(), ConnectionProperties::default())
            .await
            .expect("raw connection");
        TestBroker { config, bus, shutdown, raw, queues: Mutex::default() }
    }

    pub async fn transport(&self, model: &str) -> Amqp {
        self.queues.lock().push(self.bus.queue_for(model, None));
        Amqp { bus: self.bus.clone(), model: model.into() }
    }

    /// The request queue of `model` (at `version`: its version queue), deleted at cleanup.
    pub fn queue(&self, model: &str, version: Option<&str>) -> String {
        let queue = self.bus.queue_for(model, version);
        self.queues.lock().push(queue.clone());
        queue
    }

    /// How many messages wait in `queue`, ready for a consumer (not those delivered and
    /// unacknowledged); `None` while nobody has declared it.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        Some(passive_declare(&self.raw, queue).await?.message_count())
    }

    /// Takes one message from the dead-letter queue, if any.
    /// The next dead letter, once one has arrived (at most `limit`).
    pub async fn wait_dead_letter(&self, limit: Duration) -> DeadLetter {
        wait_for(limit, "a dead letter", async || self.get_dead_letter().await).await
    }

    pub async fn get_dead_letter(&self) -> Option<DeadLetter> {
        let channel = self.raw.create_channel().await.unwrap();
        let options = BasicGetOptions { no_ack: true };
        let message = channel.basic_get(self.config.dead_letter_queue.as_str().into(), options).await.unwrap()?;
        let properties = &message.delivery.properties;
        Some(DeadLetter {
            body: message.delivery.data.clone(),
            correlation_id: properties.correlation_id().as_ref().map(|s| s.to_string()),
            headers: properties.headers().clone().unwrap_or_default(),
        })
    }

    /// Publishes a request as a non-rfleet client using RabbitMQ's direct reply-to would,
    /// and returns the reply's correlation id and body.
    pub async fn direct_reply_to_call(
        &self,
        queue: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> (Option<String>, Vec<u8>) {
        let channel = self.raw.create_channel().await.unwrap();
        // Direct reply-to requires consuming the pseudo-queue (no-ack) before publishing.
        let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut replies = channel
            .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), no_ack, FieldTable::default())
            .await
            .unwrap();
        let properties = BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_content_type("application/msgpack".into());
        channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties).await.unwrap();
        let reply =
            tokio::time::timeout(Duration::from_secs(5), replies.next()).await.expect("a reply").unwrap().unwrap();
        (reply.properties.correlation_id().as_ref().map(|s| s.to_string()), reply.data)
    }

    /// Deletes what this test declared, then stops its bus.
    pub async fn cleanup(self) {
        // A connection of its own: the raw one may have died with a broker restart.
        let connection =
            Connection::connect(self.config.url.expose_secret(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queues = self.queues.lock().clone();
        for queue in queues.iter().chain([&self.config.dead_letter_queue]) {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in [&self.config.dead_letter_exchange, &self.config.catalog_exchange] {
            let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
        self.shutdown.cancel();
        let _ = connection.close(200, "done".into()).await;
        let _ = self.raw.close(200, "done".into()).await;
    }
}
