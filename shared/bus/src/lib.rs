//! Message bus transports behind one interface.
//!
//! # Layout
//! - [`Requester`]: the dispatcher's side: publish a request, await the reply with the same
//!   correlation id until a deadline. Late and duplicate replies are dropped here.
//! - [`Consumer`] and [`Delivery`]: the worker's side: take requests, reply, then
//!   acknowledge. A delivery dropped without an acknowledgement goes back to the queue.
//! - [`embedded`]: the in-process transport `rfleet serve` uses by default.
//! - [`amqp`]: RabbitMQ through lapin: per-model request queues, a reply queue per
//!   dispatcher, publisher confirms, dead-lettering, announcements, recovery.
//! - [`amqp1`]: AMQP 1.0 through fe2o3-amqp: a plain AMQP 1.0 broker (RabbitMQ's
//!   `rabbitmq_amqp1_0` plugin); Azure Service Bus to come.
//! - [`transport`]: [`Transport`], what the dispatcher and the worker need of a bus, over
//!   every transport, and [`connect`], which picks the transport the settings name.
//! - [`metrics`]: the `rfleet_bus_*` metrics, by transport: recorded by both transports'
//!   `call`, by [`Delivery`]'s settling methods (the one place deliveries are settled), and
//!   by the AMQP connection loop.
//!
//! **Invariant:** the transports move opaque bytes plus AMQP-like properties; only the
//! `protocol` crate knows what the bytes mean, so one conformance suite checks every
//! transport the same way.

pub mod amqp;
pub mod amqp1;
pub mod embedded;
pub mod metrics;
mod pending;
pub mod transport;

use std::time::Instant;

use async_trait::async_trait;

pub use amqp::{AmqpBus, AmqpConfig, AmqpConsumer};
pub use amqp1::{Amqp1Bus, Amqp1Config, Amqp1Consumer};
pub use embedded::{DeadLetter, EmbeddedBus};
pub use transport::{connect, ConnectError, ConnectOptions, Transport};

/// How a body is encoded, as AMQP's `content_type` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    #[default]
    MsgPack,
    Json,
}

impl ContentType {
    pub const MSGPACK: &'static str = "application/msgpack";
    pub const JSON: &'static str = "application/json";

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::MsgPack => Self::MSGPACK,
            ContentType::Json => Self::JSON,
        }
    }
}

/// A request about to be published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub correlation_id: String,
    /// The queue, as [`Requester::queue_for`] names it for the request's model.
    pub queue: String,
    pub content_type: ContentType,
    pub body: Vec<u8>,
    /// Time left until the request's deadline; brokers drop the message after it
    /// (AMQP `expiration`).
    pub expiration_ms: Option<u64>,
    /// The W3C trace context the consumer continues (the publishing span's): an AMQP
    /// header `traceparent`, carried alike by the embedded bus.
    pub traceparent: Option<String>,
}

/// The message header that carries the W3C trace context, as the W3C's AMQP binding names it.
pub const TRACEPARENT_HEADER: &str = "traceparent";

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BusError {
    /// The queue holds as much as it may; the caller should retry later (HTTP 503).
    #[error("the request queue '{0}' is full")]
    QueueFull(String),
    /// No transport connection, or nobody consumes the queue (HTTP 503).
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
    /// The broker returned a mandatory request: no queue is bound to its routing key (the
    /// queue was deleted, or the broker lost it since it was declared). A kind of
    /// unavailability (HTTP 503), typed so the publisher can forget the queue it declared.
    #[error(
        "the message bus is unavailable: the broker returned the message to '{queue}' as unroutable ({reply_text}): no such queue"
    )]
    Unroutable { queue: String, reply_text: String },
    /// No reply arrived before the deadline (HTTP 504).
    #[error("no reply before the deadline")]
    DeadlineExceeded,
    /// The same correlation id is already waiting for a reply.
    #[error("correlation id '{0}' is already in flight")]
    DuplicateId(String),
}

/// The dispatcher's side of a transport.
#[async_trait]
pub trait Requester: Send + Sync + 'static {
    /// Publishes `message` and waits for the reply carrying its correlation id, at most
    /// until `deadline`. Returns the reply's body.
    async fn call(&self, message: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError>;

    /// The queue requests for `model` are published to: its version's queue when
    /// `version` is given, else the model's name queue (unpinned requests of direct
    /// publishers, and unversioned models).
    fn queue_for(&self, model: &str, version: Option<&str>) -> String;

    /// Whether the transport can take requests now (connected, queue has consumers).
    fn is_ready(&self) -> bool;

    /// OpenTelemetry's `messaging.system` of the transport: `rabbitmq`, `rfleet_embedded`.
    fn messaging_system(&self) -> &'static str;
}

/// A shared requester is one: what `Transport::requester` returns serves wherever a
/// `Requester` is asked for (`client::ScoringClient`, batch jobs).
#[async_trait]
impl<T: Requester + ?Sized> Requester for std::sync::Arc<T> {
    async fn call(&self, message: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError> {
        (**self).call(message, deadline).await
    }

    fn queue_for(&self, model: &str, version: Option<&str>) -> String {
        (**self).queue_for(model, version)
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    fn messaging_system(&self) -> &'static str {
        (**self).messaging_system()
    }
}

/// The worker's side of a transport: a stream of deliveries.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery; `None` once the consumer was cancelled or the bus closed.
    async fn next(&mut self) -> Option<Delivery>;

    /// Stops deliveries (AMQP `basic.cancel`); deliveries not yet taken return to the
    /// queue. Called once when the worker drains.
    async fn shutdown(&mut self) {}
}

#[async_trait]
impl Consumer for Box<dyn Consumer> {
    async fn next(&mut self) -> Option<Delivery> {
        (**self).next().await
    }

    async fn shutdown(&mut self) {
        (**self).shutdown().await
    }
}

/// One request as a worker received it.
pub struct Delivery {
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub content_type: ContentType,
    /// True when the bus delivered this message before (a consumer died holding it, or
    /// gave it back).
    pub redelivered: bool,
    /// Which delivery of this message this is, from 1. The embedded bus counts exactly;
    /// AMQP reads `x-delivery-count` where the queue keeps one (quorum queues) and otherwise
    /// knows only that a redelivered message is on its second attempt at least. A worker
    /// gives up on a message that keeps failing at a bounded attempt, so nothing is retried
    /// forever.
    pub attempt: u32,
    /// The W3C trace context the publisher sent in the message's headers, if any.
    pub traceparent: Option<String>,
    /// The transport it came from, as the metrics label it ([`metrics::EMBEDDED`],
    /// [`metrics::AMQP`]).
    transport: &'static str,
    handle: Box<dyn DeliveryHandle>,
}

/// What a transport does when a worker replies to, acknowledges or rejects a delivery.
#[async_trait]
pub trait DeliveryHandle: Send + Sync + 'static {
    async fn reply(&self, content_type: ContentType, body: Vec<u8>) -> Result<(), BusError>;
    /// The message is done with; the bus forgets it.
    async fn ack(&mut self) -> Result<(), BusError>;
    /// Give the message back to the queue (`requeue`) or drop it (dead-letter where the
    /// transport has one).
    async fn reject(&mut self, requeue: bool) -> Result<(), BusError>;
    /// Moves the message to the dead-letter queue with the reason it cannot be served,
    /// then forgets it here.
    async fn dead_letter(&mut self, reason: &str) -> Result<(), BusError>;
}

impl Delivery {
    /// A delivery of `transport` (the metrics' label, [`metrics::EMBEDDED`] or
    /// [`metrics::AMQP`]); counted as a redelivery from its second attempt.
    pub fn new(
        transport: &'static str,
        body: Vec<u8>,
        correlation_id: Option<String>,
        reply_to: Option<String>,
        content_type: ContentType,
        attempt: u32,
        handle: Box<dyn DeliveryHandle>,
    ) -> Self {
        // Attempt 0 does not exist: a transport that cannot count says 1.
        let attempt = attempt.max(1);
        if attempt > 1 {
            metrics::redelivered(transport);
        }
        Delivery {
            body,
            correlation_id,
            reply_to,
            content_type,
            redelivered: attempt > 1,
            attempt,
            traceparent: None,
            transport,
            handle,
        }
    }

    /// The delivery with the trace context its message's headers carried.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// Publishes the reply to the delivery's `reply_to` with its correlation id.
    pub async fn reply(&self, content_type: ContentType, body: Vec<u8>) -> Result<(), BusError> {
        self.handle.reply(content_type, body).await
    }

    /// Acknowledges the delivery. Call only after [`Delivery::reply`] returned.
    pub async fn ack(mut self) -> Result<(), BusError> {
        let settled = self.handle.ack().await;
        self.count(&settled, "acked");
        settled
    }

    pub async fn reject(mut self, requeue: bool) -> Result<(), BusError> {
        let settled = self.handle.reject(requeue).await;
        self.count(&settled, if requeue { "requeued" } else { "rejected" });
        settled
    }

    /// Dead-letters the message with `reason`. Call after replying, when the request must
    /// never be retried (undecodable, wrong version, crashes hosts).
    pub async fn dead_letter(mut self, reason: &str) -> Result<(), BusError> {
        let settled = self.handle.dead_letter(reason).await;
        self.count(&settled, "dead_lettered");
        settled
    }

    /// Counts a settlement that took effect (one that failed leaves the message to the
    /// broker, which delivers it again).
    fn count(&self, settled: &Result<(), BusError>, outcome: &'static str) {
        if settled.is_ok() {
            metrics::consumed(self.transport, outcome);
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("correlation_id", &self.correlation_id)
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}
