//! The RabbitMQ transport (AMQP 0-9-1 through lapin): requests, replies, dead letters and
//! catalog announcements on a broker, with the embedded bus's semantics.
//!
//! # Layout
//! - this file: [`AmqpBus`] (the handle every side holds), [`AmqpConfig`], the state the
//!   parts share (`Inner`) and the bound every broker operation runs under (`bounded`);
//! - `connection`: connecting, and the one loop that keeps a connection (sessions and
//!   their generations);
//! - `topology`: what is declared on the broker, with which arguments;
//! - `publish`: publishing with confirms, the [`Requester`] side, routing replies to callers;
//! - `consume`: the worker side: subscriptions that follow a set of queues,
//!   [`AmqpConsumer`], settling a delivery;
//! - `announcements`: following the catalog exchange;
//! - `tls`: the broker's TLS settings, checked before they are used.
//!
//! # Topology
//! Everything is declared idempotently, with the same arguments by every side, so whichever
//! side comes first creates it and the others' declarations are no-ops.
//! - **Request queues**: per model, its *name queue* `<queue_prefix><model>` (default
//!   `rfleet.model.<model>`), and per version of a versioned model its *version queue*
//!   `<queue_prefix><model>@<version>` ([`queue_name`]; names over RabbitMQ's 255 bytes are
//!   refused before they reach the broker, [`check_queue_name`]). All durable, with
//!   arguments `x-queue-type` = `classic` | `quorum` and `x-dead-letter-exchange` = the
//!   dead-letter exchange, so messages the broker expires (`expiration`) or that are
//!   rejected without requeue land there too. Workers declare the queues of what they hold
//!   when they start consuming them (a version queue and the name queue for each versioned
//!   model); a dispatcher declares a queue lazily, once per queue and connection, before
//!   its first publish to it, so a request published before any worker started waits in
//!   the queue. Requests are published through the default exchange with routing key =
//!   queue name: a direct publisher only needs the queue name.
//! - **Dead letters**: a durable fanout exchange (`dead_letter_exchange`, default
//!   `rfleet.dead`) bound to a durable queue (`dead_letter_queue`, default `rfleet.dead`).
//!   A worker dead-letters a request by publishing a copy there with the original
//!   properties (without `expiration`) plus headers `x-rfleet-reason` (why) and
//!   `x-rfleet-queue` (where it came from), then acknowledging the original. Messages the
//!   broker dead-letters itself carry RabbitMQ's `x-death` header instead.
//! - **Replies**: each [`AmqpBus`] owns one exclusive, auto-delete reply queue named
//!   `rfleet.reply.<uuid>`, consumed without acknowledgements; replies are matched to
//!   callers by `correlation_id`. The name is chosen by the client, once for the bus's
//!   lifetime, so every connection declares and consumes the same queue and the
//!   `reply_to` of requests never changes. Workers reply to any `reply_to` through the
//!   default exchange, so RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) works as well.
//! - **Catalog**: a durable fanout exchange (`catalog_exchange`, default `rfleet.catalog`);
//!   each listener binds its own exclusive, auto-delete `<catalog_exchange>.listener.<uuid>`
//!   queue, named by the client for the same reason as reply queues.
//!
//! # Properties
//! Requests carry `correlation_id`, `reply_to`, `content_type` (`application/msgpack` or
//! `application/json`), `expiration` (ms left until the deadline, as a string) and
//! `delivery_mode` 1 (transient: see `call`); an `expiration` beyond RabbitMQ's limit
//! (2^32 - 1 ms) is sent as the limit. Requests are published `mandatory` on a channel in
//! confirm mode: the call fails with [`BusError::Unavailable`] when the broker nacks it and
//! with [`BusError::Unroutable`] when it returns it (the queue is gone: it is declared again
//! before the next publish). Replies carry the request's `correlation_id` and the reply's
//! content type; a worker publishes each reply on the channel its request was delivered on
//! and acknowledges the request right after, on the same channel, without waiting for a
//! confirm (the broker handles one channel's methods in order, so the reply is routed
//! before the ack takes effect).
//!
//! # Recovery
//! One connection per [`AmqpBus`] at a time, and one loop that keeps it (lapin's own
//! auto-recovery is off, so nothing else reconnects or replays behind the bus's back):
//! 1. Connect: each try bounded (10 s for TCP, TLS and the AMQP handshake), tries spaced by
//!    jittered exponential backoff (`backon`, 100 ms to under 2 s, never giving up), so a
//!    fleet that lost its broker together does not come back in step. Then declare the
//!    shared topology, open the publisher channel (confirm mode) and declare and consume
//!    the reply queue. The result is a *session*, numbered by a generation that grows with
//!    every connection.
//! 2. Watch the session until it is lost: lapin reports a connection error, the connection
//!    or the publisher or reply channel leaves the connected state (the broker closed it),
//!    or the reply consumer ends (the broker cancelled it).
//! 3. At once, mark the bus down: every pending call fails with `Unavailable` (a reply
//!    sent meanwhile is lost with the exclusive reply queue), new operations fail fast
//!    with `Unavailable`, and the request queues declared so far are forgotten, to be
//!    declared again lazily. Close the old connection (bounded) and go back to 1 with a
//!    fresh backoff: a broker back after an outage is used again within a second or two.
//!
//! Each [`AmqpConsumer`] and catalog listener follows the generation: when its session is
//! lost it waits for the next one and subscribes again on it (channel, QoS, declaration,
//! consumer), retrying with the same backoff when that fails; a consumer subscribes its
//! set of queues as it is by then. Between reconnects a consumer follows its set on the
//! current connection (`consume`'s docs: what becomes of the deliveries of a queue taken
//! out of it). Every broker operation runs
//! under a bound (5 s), so nothing waits on a connection that stopped answering; one that
//! died without a reset is noticed by the AMQP heartbeat (the broker's, or a shorter
//! `heartbeat=<seconds>` in the URL).
//!
//! Deliveries whose channel died before they were acknowledged are redelivered by the
//! broker (`redelivered = true`); their `reply`, `ack` and dead-lettering fail. That is the
//! at-least-once contract. [`Delivery::attempt`] counts deliveries from `x-delivery-count`
//! (quorum queues) or, on classic queues, knows only that a redelivered message is on its
//! second attempt at least.
//!
//! # TLS
//! An `amqps://` URL connects over TLS (rustls with the ring provider, port 5671 by
//! default). The broker's certificate must chain to one of the public web CAs built in
//! (webpki-root-certs, so no system trust store is needed) or to a CA in `ca_file`, and
//! name the URL's host. The CA file is read and checked before every connection
//! ([`AmqpConfig::tls_config`]), so a renewed CA is picked up by the next reconnection.
//!
//! [`Delivery::attempt`]: crate::Delivery::attempt

mod announcements;
mod connection;
pub(crate) use connection::reconnect_backoff;
mod consume;
mod publish;
#[cfg(test)]
mod reconnect_tests;
pub(crate) mod tls;
mod topology;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{BusError, ContentType, Requester};
use connection::Session;

pub use consume::AmqpConsumer;
pub use tls::BrokerTlsError;

/// Header naming why a worker dead-lettered a request.
pub const REASON_HEADER: &str = "x-rfleet-reason";
/// Header naming the request queue a dead-lettered request came from.
pub const QUEUE_HEADER: &str = "x-rfleet-queue";
/// Header in which quorum queues count a message's earlier, returned deliveries.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Longest a single broker operation (declare, publish confirm, ack) may take before it is
/// reported as `Unavailable`: nothing here may hang on a broker that stopped answering.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the broker and name things on it.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`, or `amqps://...` for TLS. Its `Debug` and
    /// `Display` hide the password: only connecting exposes it.
    pub url: settings::SecretUrl,
    /// With `amqps://`: PEM CA certificates trusted for the broker, besides the built-in
    /// public CAs.
    pub ca_file: Option<PathBuf>,
    pub queue_prefix: String,
    pub queue_type: settings::QueueType,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub catalog_exchange: String,
    /// Unacknowledged deliveries per request queue a consumer holds (`basic.qos`, per
    /// channel; one channel per model). 0 would mean "unlimited" to AMQP, so it is taken as 1.
    pub prefetch: u16,
    /// Shown in the broker's management UI (`rfleet-dispatcher@host`, `rfleet-worker@host`).
    pub connection_name: String,
}

impl AmqpConfig {
    pub fn from_settings(bus: &settings::BusSettings, connection_name: &str, prefetch: u16) -> Self {
        AmqpConfig {
            url: bus.url.clone(),
            ca_file: bus.ca_file.clone(),
            queue_prefix: bus.queue_prefix.clone(),
            queue_type: bus.queue_type,
            dead_letter_exchange: bus.dead_letter_exchange.clone(),
            dead_letter_queue: bus.dead_letter_queue.clone(),
            catalog_exchange: bus.catalog_exchange.clone(),
            prefetch,
            connection_name: connection_name.to_string(),
        }
    }
}

/// A handle to one broker connection, shared by clones. See the module docs.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

/// What the parts of the transport share; one per [`AmqpBus`] and its clones.
struct Inner {
    config: AmqpConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// `Some` while the connection and its channels are usable; every operation reads it
    /// and fails fast with `Unavailable` on `None`. Consumers and listeners watch it to
    /// follow the bus to a new connection.
    session: watch::Sender<Option<Arc<Session>>>,
    /// This bus's reply queue; fixed for its lifetime (see the module docs on naming).
    reply_queue: String,
    /// Callers waiting for a reply, by correlation id.
    pending: crate::pending::Pending,
    /// Request queues declared on the current connection (the dispatcher's lazy declare).
    declared: Mutex<HashSet<String>>,
    /// Bumped each time the connection is lost, so a call that published just before can
    /// tell its reply may have gone with the old reply queue.
    losses: AtomicU64,
}

impl AmqpBus {
    /// Returns at once; a background task connects, declares the shared topology and keeps
    /// the connection alive until `shutdown` is cancelled. While not connected every
    /// operation fails fast with [`BusError::Unavailable`].
    pub fn start(config: AmqpConfig, shutdown: CancellationToken) -> AmqpBus {
        // Down until the first session is up: a scrape before it shows 0, not nothing.
        crate::metrics::connection_up(crate::metrics::AMQP, false);
        let (session, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            config,
            shutdown,
            tasks: TaskTracker::new(),
            session,
            reply_queue: format!("rfleet.reply.{}", uuid::Uuid::new_v4().simple()),
            pending: crate::pending::Pending::default(),
            declared: Mutex::default(),
            losses: AtomicU64::new(0),
        });
        inner.tasks.spawn(connection::supervise(inner.clone()));
        AmqpBus { inner }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().is_some()
    }

    /// Waits until connected or `timeout` passes (for start-up and tests).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut session = self.inner.session.subscribe();
        tokio::time::timeout(timeout, session.wait_for(Option::is_some)).await.is_ok_and(|r| r.is_ok())
    }

    /// This bus's reply queue (the `reply_to` of its requests).
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    /// Worker side: declares (idempotently) and consumes the name queues `<prefix><model>`
    /// of these models, merged into one stream; a set that never changes.
    pub async fn consumer(&self, models: &[String]) -> Result<AmqpConsumer, BusError> {
        // The sender goes at once: the consumer keeps the set it was given.
        let (_, queues) = watch::channel(models.iter().map(|m| self.queue_for(m, None)).collect());
        consume::start(&self.inner, queues).await
    }

    /// Worker side: consumes the request queues named in `queues` (name queues and version
    /// queues alike, see [`queue_name`]), following the set as it changes: an added queue
    /// is declared and consumed on the current connection, a removed one is cancelled
    /// (`basic.cancel`), and after a reconnect the set as it is then is subscribed. Fails
    /// only when not connected or the first set cannot be subscribed. Names the broker
    /// would refuse ([`check_queue_name`]) are logged as errors and not consumed; the rest
    /// are. When the sender is dropped the consumer keeps the last set. See `consume` on
    /// deliveries of a queue taken out of the set.
    pub async fn consumer_following(&self, queues: watch::Receiver<Vec<String>>) -> Result<AmqpConsumer, BusError> {
        consume::start(&self.inner, queues).await
    }

    /// Publishes one catalog announcement (opaque bytes) to the catalog fanout exchange.
    pub async fn announce(&self, body: Vec<u8>) -> Result<(), BusError> {
        let session = self.inner.current()?;
        let properties = BasicProperties::default().with_content_type(ContentType::MSGPACK.into());
        let exchange = self.inner.config.catalog_exchange.as_str();
        publish::publish(&session.publisher, exchange, "", false, &body, properties).await
    }

    /// A stream of catalog announcements (an exclusive, auto-delete queue bound to the
    /// fanout), re-subscribed after reconnects. Announcements the receiver does not keep up
    /// with are dropped: they are periodic.
    pub fn catalog(&self) -> mpsc::Receiver<Vec<u8>> {
        let (announcement_tx, announcement_rx) = mpsc::channel(64);
        self.inner.tasks.spawn(announcements::listen(self.inner.clone(), announcement_tx));
        announcement_rx
    }

    /// Consumers on a request queue (passive declare), for readiness; `Err` when not
    /// connected or the queue does not exist.
    pub async fn consumer_count(&self, queue: &str) -> Result<u32, BusError> {
        Ok(self.declared(queue).await?.consumer_count())
    }

    /// A request queue as the broker has it (a passive declare: its message and consumer
    /// counts); `Err` when not connected or the queue does not exist.
    pub async fn declared(&self, queue: &str) -> Result<lapin::Queue, BusError> {
        check_queue_name(queue)?;
        let session = self.inner.current()?;
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = bounded("open channel", session.connection.create_channel()).await?;
        let declared = bounded(
            &format!("queue '{queue}'"),
            channel.queue_declare(queue.into(), QueueDeclareOptions::default().passive(), FieldTable::default()),
        )
        .await;
        close_quietly(channel).await;
        declared
    }

    /// Declares a request queue (what both sides do before using it).
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BusError> {
        check_queue_name(queue)?;
        let session = self.inner.current()?;
        self.inner.declare_request_queue(&session, queue).await
    }
}

/// The request queue of `model` (its name queue), or of one of its versions:
/// `<prefix><model>` and `<prefix><model>@<version>` (docs/protocol.md). The name is not
/// checked here; every operation that sends one to the broker checks it first
/// ([`check_queue_name`]).
pub fn queue_name(prefix: &str, model: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("{prefix}{model}@{version}"),
        None => format!("{prefix}{model}"),
    }
}

/// The longest queue name RabbitMQ takes: an AMQP short string, 255 bytes of UTF-8.
pub const MAX_QUEUE_NAME_BYTES: usize = 255;

/// A request queue name the broker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueNameError {
    #[error(
        "the queue name '{queue}' is {bytes} bytes long, and RabbitMQ takes at most {MAX_QUEUE_NAME_BYTES}: shorten bus.queue_prefix, the model's name or its version"
    )]
    TooLong { queue: String, bytes: usize },
    #[error("a request queue needs a name (an empty one asks the broker to make one up)")]
    Empty,
    #[error("the queue name '{queue}' starts with 'amq.', which RabbitMQ keeps for itself")]
    Reserved { queue: String },
}

/// Checks a request queue name before it goes to the broker. A name over the limit would
/// not merely be refused: AMQP writes a short string's length in one byte, so lapin would
/// send a malformed frame and the broker would close the whole connection.
pub fn check_queue_name(queue: &str) -> Result<(), QueueNameError> {
    if queue.is_empty() {
        Err(QueueNameError::Empty)
    } else if queue.len() > MAX_QUEUE_NAME_BYTES {
        Err(QueueNameError::TooLong { queue: queue.to_string(), bytes: queue.len() })
    } else if queue.starts_with("amq.") {
        Err(QueueNameError::Reserved { queue: queue.to_string() })
    } else {
        Ok(())
    }
}

/// A call to a queue the broker would refuse can never be published: no worker consumes
/// such a queue either, so it is unavailable, with the reason.
impl From<QueueNameError> for BusError {
    fn from(error: QueueNameError) -> Self {
        unavailable(error)
    }
}

impl Inner {
    /// The session operations run on, or `Unavailable` at once while there is none.
    fn current(&self) -> Result<Arc<Session>, BusError> {
        self.session.borrow().clone().ok_or_else(not_connected)
    }

    /// The connection is gone (or going): nobody will see the replies pending calls wait
    /// for, so fail them now rather than at their deadlines.
    fn mark_down(&self, reason: &str) {
        let was_up = self.session.send_replace(None).is_some();
        self.losses.fetch_add(1, Ordering::SeqCst);
        self.declared.lock().clear();
        let failed_calls = self.pending.fail_all(|| unavailable(format!("lost the broker connection ({reason})")));
        if was_up || failed_calls > 0 {
            tracing::warn!(reason, failed_calls, "broker connection down");
        }
    }
}

fn unavailable(what: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(what.to_string())
}

fn not_connected() -> BusError {
    unavailable("not connected to the broker")
}

/// Runs a broker operation with a bound, turning lapin's errors into `Unavailable`.
async fn bounded<T>(what: &str, operation: impl std::future::Future<Output = lapin::Result<T>>) -> Result<T, BusError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(format!("{what}: {error}"))),
        Err(_) => Err(unavailable(format!("{what}: the broker did not answer in {OPERATION_TIMEOUT:?}"))),
    }
}

/// Closes a channel the bus is done with, within the operation bound; a channel that is
/// already gone needs nothing.
async fn close_quietly(channel: Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(OPERATION_TIMEOUT, channel.close(200, "done".into())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name queues and version queues, and the names the broker would refuse.
    #[test]
    fn queue_names_and_the_ones_the_broker_refuses() {
        let check = |prefix: &str, model: &str, version: Option<&str>, expected: Result<&str, QueueNameError>| {
            let queue = queue_name(prefix, model, version);
            assert_eq!(check_queue_name(&queue).map(|()| queue.as_str()), expected, "{prefix} {model} {version:?}");
        };
        check("rfleet.model.", "rf-reg", None, Ok("rfleet.model.rf-reg"));
        check("rfleet.model.", "rf-reg", Some("2"), Ok("rfleet.model.rf-reg@2"));
        check("rfleet.model.", "rf-reg", Some("2024-01-31.b"), Ok("rfleet.model.rf-reg@2024-01-31.b"));
        // The limit counts bytes, not characters.
        let at_limit = "é".repeat(121); // 242 bytes, 13 more for the prefix
        check("rfleet.model.", &at_limit, None, Ok(&format!("rfleet.model.{at_limit}")));
        let over = format!("{at_limit}x");
        check(
            "rfleet.model.",
            &over,
            None,
            Err(QueueNameError::TooLong { queue: format!("rfleet.model.{over}"), bytes: 256 }),
        );
        check(
            "p.",
            "m",
            Some(&"9".repeat(253)),
            Err(QueueNameError::TooLong { queue: format!("p.m@{}", "9".repeat(253)), bytes: 257 }),
        );
        check("", "", None, Err(QueueNameError::Empty));
        check("amq.", "m", None, Err(QueueNameError::Reserved { queue: "amq.m".into() }));
        let message = check_queue_name(&"q".repeat(300)).unwrap_err().to_string();
        assert!(message.contains("is 300 bytes long, and RabbitMQ takes at most 255"), "{message}");
    }
}
