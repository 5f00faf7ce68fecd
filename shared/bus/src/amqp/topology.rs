//! What the transport declares on the broker, and with which arguments (see the module
//! docs' "Topology"): the shared exchanges and queues, request queues, private queues.

use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

use super::{bounded, close_quietly, AmqpConfig, Inner, Session};
use crate::BusError;

impl AmqpConfig {
    /// The arguments every declaration of a request queue carries; they must be identical
    /// on every side or the broker refuses the later declaration (`PRECONDITION_FAILED`).
    fn request_queue_arguments(&self) -> FieldTable {
        let queue_type = match self.queue_type {
            settings::QueueType::Classic => "classic",
            settings::QueueType::Quorum => "quorum",
        };
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(queue_type)));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        arguments
    }
}

/// Declares what every side relies on before it publishes or consumes: the dead-letter
/// exchange, its queue and binding, and the catalog exchange. On a channel of its own, so
/// a refused declaration (other arguments than the broker has) cannot take a channel the
/// bus keeps with it.
pub(super) async fn declare_shared(connection: &Connection, config: &AmqpConfig) -> Result<(), BusError> {
    let setup = bounded("open channel", connection.create_channel()).await?;
    declare_fanout(&setup, &config.dead_letter_exchange).await?;
    bounded(
        &format!("declare queue '{}'", config.dead_letter_queue),
        setup.queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ),
    )
    .await?;
    bind(&setup, &config.dead_letter_queue, &config.dead_letter_exchange).await?;
    declare_fanout(&setup, &config.catalog_exchange).await?;
    close_quietly(setup).await;
    Ok(())
}

/// Declares a durable fanout exchange (the dead-letter and the catalog exchanges).
async fn declare_fanout(channel: &Channel, exchange: &str) -> Result<(), BusError> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    bounded(
        &format!("declare exchange '{exchange}'"),
        channel.exchange_declare(exchange.into(), ExchangeKind::Fanout, durable, FieldTable::default()),
    )
    .await
}

/// Binds `queue` to a fanout `exchange` (no routing key: fanouts ignore it).
async fn bind(channel: &Channel, queue: &str, exchange: &str) -> Result<(), BusError> {
    bounded(
        &format!("bind queue '{queue}' to '{exchange}'"),
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// Declares a request queue on `channel` with the arguments every side uses.
pub(super) async fn declare_request_queue(channel: &Channel, config: &AmqpConfig, queue: &str) -> Result<(), BusError> {
    bounded(
        &format!("declare queue '{queue}'"),
        channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), config.request_queue_arguments()),
    )
    .await
    .map(drop)
}

impl Inner {
    /// The dispatcher's lazy declaration: once per queue and connection (the set is
    /// cleared whenever the connection is lost), before the first publish to it.
    pub(super) async fn declare_request_queue(&self, session: &Session, queue: &str) -> Result<(), BusError> {
        if self.declared.lock().contains(queue) {
            return Ok(());
        }
        // A declaration with other arguments than the queue has fails its channel
        // (PRECONDITION_FAILED): never risk the shared publisher channel on it.
        let channel = bounded("open channel", session.connection.create_channel()).await?;
        let declared = declare_request_queue(&channel, &self.config, queue).await;
        close_quietly(channel).await;
        declared?;
        self.declared.lock().insert(queue.to_string());
        Ok(())
    }
}

/// Declares one of this bus's private queues (exclusive to the connection, deleted with
/// it), binds it to `exchange` if given, and consumes it without acknowledgements: the
/// reply queue and the catalog listeners' queues. Named by the client, so the same name is
/// declared again on every connection.
pub(super) async fn consume_private_queue(
    channel: &Channel,
    queue: &str,
    exchange: Option<&str>,
) -> Result<lapin::Consumer, BusError> {
    let exclusive = QueueDeclareOptions::exclusive().auto_delete();
    bounded(&format!("declare queue '{queue}'"), channel.queue_declare(queue.into(), exclusive, FieldTable::default()))
        .await?;
    if let Some(exchange) = exchange {
        bind(channel, queue, exchange).await?;
    }
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    bounded(
        &format!("consume queue '{queue}'"),
        channel.basic_consume(queue.into(), "".into(), no_ack, FieldTable::default()),
    )
    .await
}
