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
    exchanges: Mutex<Vec<String>>,
    policy: Mutex<bool>,
}

impl Amqp1Broker {
    pub async fn new(name: &str) -> Amqp1Broker {
        Self::with_prefetch(name, 8).await
    }

    pub async fn with_prefetch(name: &str, prefetch: u16) -> Amqp1Broker {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("rfleet.test.amqp1.{name}.{unique}.");
        let config = Amqp1Config {
            queue_prefix: prefix.clone(),
            catalog: format!("{prefix}catalog"),
            reply_queue: format!("{prefix}reply"),
            connection_name: format!("rfleet-test-amqp1-{name}"),
            prefetch,
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
        Amqp1Broker {
            config,
            bus,
            shutdown,
            raw,
            queues: Mutex::default(),
            exchanges: Mutex::default(),
            policy: Mutex::default(),
        }
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
        Some(super::passive_declare(&self.raw, queue).await?.message_count())
    }

    /// Consumers of `queue`; `None` while it does not exist.
    pub async fn consumer_count(&self, queue: &str) -> Option<u32> {
        Some(super::passive_declare(&self.raw, queue).await?.consumer_count())
    }

    /// Sets a RabbitMQ policy on this test's queues (`rabbitmqctl`: AMQP cannot), cleared
    /// at cleanup: `definition` is the policy's JSON.
    pub fn set_policy(&self, definition: &str) {
        let pattern = format!("^{}", self.config.queue_prefix.replace('.', "\\."));
        rabbitmqctl(&["set_policy", &self.policy_name(), &pattern, definition, "--apply-to", "queues"]);
        *self.policy.lock() = true;
    }

    fn policy_name(&self) -> String {
        format!("{}policy", self.config.queue_prefix)
    }

    /// A queue of this test's, declared (durable, as the plugin's `/queue/` links need it)
    /// and bound to a fanout exchange of the same name, both deleted at cleanup.
    pub async fn declare_dead_letters(&self, name: &str) -> String {
        let name = format!("{}{name}", self.config.queue_prefix);
        let channel = self.raw.create_channel().await.unwrap();
        let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(name.as_str().into(), lapin::ExchangeKind::Fanout, durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.queues.lock().push(name.clone());
        self.exchanges.lock().push(name.clone());
        name
    }

    /// A queue of this test's declared through 0-9-1 with an argument (`x-max-length`) the
    /// plugin's `/queue/` declaration would contradict; deleted at cleanup.
    pub async fn declare_with_arguments(&self, model: &str) -> String {
        let queue = self.queue(model, None);
        let channel = self.raw.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1000));
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), arguments).await.unwrap();
        queue
    }

    /// Takes one message from `queue` through 0-9-1, if any.
    pub async fn get(&self, queue: &str) -> Option<super::DeadLetter> {
        let channel = self.raw.create_channel().await.unwrap();
        let options = lapin::options::BasicGetOptions { no_ack: true };
        let message = channel.basic_get(queue.into(), options).await.unwrap()?;
        let properties = &message.delivery.properties;
        Some(super::DeadLetter {
            body: message.delivery.data.clone(),
            correlation_id: properties.correlation_id().as_ref().map(|s| s.to_string()),
            headers: properties.headers().clone().unwrap_or_default(),
        })
    }

    /// Deletes the queues the plugin declared for this test, then stops its bus.
    pub async fn cleanup(self) {
        // The plugin's queues behind `/exchange/...` and `/topic/...` links (the reply link,
        // catalog listeners) are named `amq.gen-...` and outlive their links (measured on
        // 3.10.8): find them by their bindings, with this test's unique routing keys.
        let temporary = bound_queues(&self.config.queue_prefix);
        self.shutdown.cancel();
        // Its links detached closed, so the plugin deletes their temporary queues.
        tokio::time::timeout(Duration::from_secs(10), self.bus.closed()).await.expect("the bus shuts down");
        if *self.policy.lock() {
            rabbitmqctl(&["clear_policy", &self.policy_name()]);
        }
        let channel = self.raw.create_channel().await.unwrap();
        let queues = self.queues.lock().clone();
        for queue in queues.iter().chain(&temporary) {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let exchanges = self.exchanges.lock().clone();
        for exchange in &exchanges {
            let _ = channel.exchange_delete(exchange.as_str().into(), Default::default()).await;
        }
        let _ = self.raw.close(200, "done".into()).await;
    }
}

/// The plugin's temporary queues of the buses whose reply and catalog keys start with
/// `prefix` (see `cleanup`): found while those buses are up, deleted with
/// [`delete_queues`] once they are down.
pub fn temporary_queues(prefix: &str) -> Vec<String> {
    bound_queues(prefix)
}

pub fn delete_queues(queues: &[String]) {
    for queue in queues {
        rabbitmqctl(&["delete_queue", queue]);
    }
}

/// The queues bound to `amq.direct` or `amq.topic` with a routing key that starts with
/// `prefix`.
fn bound_queues(prefix: &str) -> Vec<String> {
    let listing = rabbitmqctl(&[
        "list_bindings",
        "--quiet",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (source, queue, key) = (fields.next()?, fields.next()?, fields.next()?);
            (matches!(source, "amq.direct" | "amq.topic") && key.starts_with(prefix)).then(|| queue.to_string())
        })
        .collect()
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
