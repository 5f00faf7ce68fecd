//! The RabbitMQ transport (AMQP 0-9-1 through lapin): requests, replies, dead letters and
//! catalog announcements on a broker, with the embedded bus's semantics.
//!
//! # Topology
//! Everything is declared idempotently, with the same arguments by every side, so whichever
//! side comes first creates it and the others' declarations are no-ops.
//! - **Request queue per model**: `<queue_prefix><model>` (default `rfleet.model.<model>`),
//!   durable, with arguments `x-queue-type` = `classic` | `quorum` and
//!   `x-dead-letter-exchange` = the dead-letter exchange, so messages the broker expires
//!   (`expiration`) or that are rejected without requeue land there too. Workers declare it
//!   when they start consuming; a dispatcher declares it lazily, once per model and
//!   connection, before its first publish to it, so a request published before any worker
//!   started waits in the queue. Requests are published through the default exchange
//!   with routing key = queue name: a direct publisher only needs the queue name.
//! - **Dead letters**: a durable fanout exchange (`dead_letter_exchange`, default
//!   `rfleet.dead`) bound to a durable queue (`dead_letter_queue`, default `rfleet.dead`).
//!   A worker dead-letters a request by publishing a copy there with the original
//!   properties (without `expiration`) plus headers `x-rfleet-reason` (why) and
//!   `x-rfleet-queue` (where it came from), then acknowledging the original. Messages the
//!   broker dead-letters itself carry RabbitMQ's `x-death` header instead.
//! - **Replies**: each [`AmqpBus`] owns one exclusive, auto-delete reply queue named
//!   `rfleet.reply.<uuid>`, consumed without acknowledgements; replies are matched to
//!   callers by `correlation_id`. The name is chosen by the client, not the server, on
//!   purpose: lapin's recovery re-declares the queues a channel declared *by the name the
//!   broker returned*, and RabbitMQ refuses to declare `amq.gen-*` names
//!   (`ACCESS_REFUSED`), which would fail the reply channel's recovery and abort lapin's
//!   replay of the channels after it. Workers reply to any `reply_to` through the default
//!   exchange, so RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) works as well.
//! - **Catalog**: a durable fanout exchange (`catalog_exchange`, default `rfleet.catalog`);
//!   each listener binds its own exclusive, auto-delete `<catalog_exchange>.listener.<uuid>`
//!   queue (client-named for the same reason as reply queues).
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
//! One connection per [`AmqpBus`], opened by a background task, with lapin's
//! `enable_auto_recover()`: on a lost connection lapin reconnects (short exponential
//! backoff, at most 1 s between attempts) and replays each channel's confirm mode, QoS,
//! queues, bindings and consumers, so worker consumers and the reply consumer resume on
//! their own channels with the same queue names. On top of that the bus
//! - fails every pending call at once with `Unavailable` when the connection drops (a reply
//!   sent to the reply queue meanwhile is lost with it), and fails new operations fast
//!   until the connection and its channels are back;
//! - re-declares request queues lazily after each reconnect;
//! - if lapin gives up (its retries are exhausted, or a channel's replay fails) or stalls
//!   (the broker accepts TCP connections again for 3 s and lapin has not reconnected, which
//!   lapin 4.12 does now and then after a reset), drops the connection and opens a new
//!   one (tries spaced by jittered exponential backoff, 100 ms to under 2 s), and every
//!   [`AmqpConsumer`] and catalog listener re-subscribes on it by itself (its own
//!   re-subscription, keyed by a connection generation).
//!
//! Deliveries whose channel died before they were acknowledged are redelivered by the
//! broker (`redelivered = true`); their `ack` fails. That is the at-least-once contract.
//! [`Delivery::attempt`] counts deliveries from `x-delivery-count` (quorum queues) or, on
//! classic queues, knows only that a redelivered message is on its second attempt at least.
//!
//! # TLS
//! An `amqps://` URL connects over TLS (rustls with the ring provider, port 5671 by
//! default). The broker's certificate must chain to one of the public web CAs built in
//! (webpki-root-certs, so no system trust store is needed) or to a CA in `ca_file`, and
//! name the URL's host. The CA file is read and checked before every new connection
//! ([`AmqpConfig::tls_config`]), so a renewed CA is picked up by the next reconnection;
//! lapin's own recoveries reuse the configuration the connection was opened with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{BusError, Consumer, ContentType, Delivery, DeliveryHandle, Outgoing, Requester};

/// Header naming why a worker dead-lettered a request.
pub const REASON_HEADER: &str = "x-rfleet-reason";
/// Header naming the request queue a dead-lettered request came from.
pub const QUEUE_HEADER: &str = "x-rfleet-queue";
/// Header in which quorum queues count a message's earlier, returned deliveries.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// The longest `expiration` RabbitMQ takes (its `MAX_EXPIRY_TIMER`, 2^32 - 1 ms, about 49
/// days): a longer one is refused by closing the channel, the shared publisher's included.
/// A deadline further away than that is sent as that.
const MAX_EXPIRATION_MS: u64 = u32::MAX as u64;

/// Longest a single broker operation (declare, publish confirm, ack) may take before it is
/// reported as `Unavailable`: nothing here may hang on a broker that stopped answering.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one try to connect (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest lapin may spend re-establishing a lost connection before this transport drops it
/// and opens a new one itself.
const RECOVERY_WINDOW: Duration = Duration::from_secs(45);
/// Longest the broker may accept connections again while lapin has not reconnected to it
/// before this transport opens a new connection itself. lapin waits at most 1 s between
/// attempts, so a recovery that has not happened by then is stuck (it is, now and then,
/// after a reset that arrives before the broker's `connection.close`).
const STALLED_RECOVERY: Duration = Duration::from_secs(3);

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

    /// The TLS settings for a connection: the CA certificates of `ca_file`, read now and
    /// checked, because lapin would silently skip a certificate it cannot parse and then
    /// fail every handshake with a less helpful error.
    pub fn tls_config(&self) -> Result<OwnedTLSConfig, BrokerTlsError> {
        let Some(path) = &self.ca_file else {
            return Ok(OwnedTLSConfig::default());
        };
        // A CA file for a plain connection is a mistake (a URL left at amqp://), not a no-op.
        if !self.url.expose_secret().starts_with("amqps://") {
            return Err(BrokerTlsError::NotAmqps);
        }
        let pem =
            std::fs::read_to_string(path).map_err(|source| BrokerTlsError::Read { path: path.clone(), source })?;
        check_ca_certificates(path, &pem)?;
        Ok(OwnedTLSConfig { identity: None, cert_chain: Some(pem) })
    }

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

/// Why the broker's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerTlsError {
    #[error("bus.ca_file is set but bus.url is not amqps://: the CA would never be used")]
    NotAmqps,
    #[error("cannot read the broker CA file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the broker CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the broker CA file {path} holds a certificate that cannot be a trust anchor: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
}

/// Fails unless `pem` holds at least one certificate and every certificate in it can be a
/// trust anchor, which is what lapin's rustls connector will try to make of each.
fn check_ca_certificates(path: &Path, pem: &str) -> Result<(), BrokerTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let invalid = |reason: String| BrokerTlsError::InvalidCertificate { path: path.to_path_buf(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|e| invalid(e.to_string()))?;
        roots.add(certificate).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(BrokerTlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(())
}

/// Where a waiting caller's reply (or the reason it will never come) goes.
type ReplyTx = oneshot::Sender<Result<Vec<u8>, BusError>>;

/// A handle to one broker connection, shared by clones. See the module docs.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// `Some` while the connection and its channels are usable; every operation reads it
    /// and fails fast with `Unavailable` on `None`.
    session: watch::Sender<Option<Arc<Session>>>,
    /// This bus's reply queue; fixed for its lifetime (see the module docs on naming).
    reply_queue: String,
    /// Callers waiting for a reply, by correlation id.
    pending: Mutex<HashMap<String, ReplyTx>>,
    /// Request queues declared on the current connection (the dispatcher's lazy declare).
    declared: Mutex<HashSet<String>>,
    /// Bumped each time the connection is lost, so a call that published just before can
    /// tell its reply may have gone with the old reply queue.
    losses: AtomicU64,
}

/// One usable connection and the channels the bus itself keeps on it.
struct Session {
    /// Bumped for every new connection (not for lapin's recoveries of the same one):
    /// consumers re-subscribe when it changes.
    generation: u64,
    connection: Connection,
    /// Confirm mode; carries requests, replies, dead letters and announcements.
    publisher: Channel,
    reply_channel: Channel,
}

impl Session {
    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.reply_channel.status().connected()
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

impl AmqpBus {
    /// Returns at once; a background task connects, declares the shared topology and keeps
    /// the connection alive until `shutdown` is cancelled. While not connected every
    /// operation fails fast with [`BusError::Unavailable`].
    pub fn start(config: AmqpConfig, shutdown: CancellationToken) -> AmqpBus {
        let (session, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            config,
            shutdown,
            tasks: TaskTracker::new(),
            session,
            reply_queue: format!("rfleet.reply.{}", uuid::Uuid::new_v4().simple()),
            pending: Mutex::default(),
            declared: Mutex::default(),
            losses: AtomicU64::new(0),
        });
        inner.tasks.spawn(supervise(inner.clone()));
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

    /// Worker side: declares (idempotently) and consumes the request queues
    /// `<prefix><model>` for these models, merged into one stream.
    pub async fn consumer(&self, models: &[String]) -> Result<AmqpConsumer, BusError> {
        let session = self.inner.current().ok_or_else(not_connected)?;
        let queues: Vec<String> = models.iter().map(|m| self.queue_for(m)).collect();
        let subscriptions = subscribe(&self.inner, &session, &queues).await?;
        let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
        let stop = self.inner.shutdown.child_token();
        let pump = ConsumerPump { inner: self.inner.clone(), queues, delivery_tx, stop: stop.clone() };
        let done = self.inner.tasks.spawn(pump.run(session.generation, subscriptions));
        Ok(AmqpConsumer { delivery_rx, stop, done: Some(done) })
    }

    /// Publishes one catalog announcement (opaque bytes) to the catalog fanout exchange.
    pub async fn announce(&self, body: Vec<u8>) -> Result<(), BusError> {
        let session = self.inner.current().ok_or_else(not_connected)?;
        let properties = BasicProperties::default().with_content_type(ContentType::MSGPACK.into());
        let exchange = self.inner.config.catalog_exchange.as_str();
        publish(&session.publisher, exchange, "", false, &body, properties).await
    }

    /// A stream of catalog announcements (an exclusive, auto-delete queue bound to the
    /// fanout), re-subscribed after reconnects. Announcements the receiver does not keep up
    /// with are dropped: they are periodic.
    pub fn catalog(&self) -> mpsc::Receiver<Vec<u8>> {
        let (announcement_tx, announcement_rx) = mpsc::channel(64);
        self.inner.tasks.spawn(listen_catalog(self.inner.clone(), announcement_tx));
        announcement_rx
    }

    /// Consumers on a request queue (passive declare), for readiness; `Err` when not
    /// connected or the queue does not exist.
    pub async fn consumer_count(&self, queue: &str) -> Result<u32, BusError> {
        let session = self.inner.current().ok_or_else(not_connected)?;
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = bounded("open channel", session.connection.create_channel()).await?;
        let declared = bounded(
            &format!("queue '{queue}'"),
            channel.queue_declare(queue.into(), QueueDeclareOptions::default().passive(), FieldTable::default()),
        )
        .await;
        close_quietly(channel).await;
        Ok(declared?.consumer_count())
    }

    /// Declares a request queue (what both sides do before using it).
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BusError> {
        let session = self.inner.current().ok_or_else(not_connected)?;
        self.inner.declare_request_queue(&session, queue).await
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone()
    }

    /// The connection is gone (or going): nobody will see the replies pending calls wait
    /// for, so fail them now rather than at their deadlines.
    fn mark_down(&self, reason: &str) {
        let was_up = self.session.send_replace(None).is_some();
        self.losses.fetch_add(1, Ordering::SeqCst);
        self.declared.lock().clear();
        let pending: Vec<_> = self.pending.lock().drain().collect();
        if was_up || !pending.is_empty() {
            tracing::warn!(reason, failed_calls = pending.len(), "broker connection down");
        }
        for (_, reply_tx) in pending {
            let _ = reply_tx.send(Err(unavailable(format!("lost the broker connection ({reason})"))));
        }
    }

    async fn declare_request_queue(&self, session: &Session, queue: &str) -> Result<(), BusError> {
        if self.declared.lock().contains(queue) {
            return Ok(());
        }
        // A declaration with other arguments than the queue has fails its channel
        // (PRECONDITION_FAILED): never risk the shared publisher channel on it.
        let channel = bounded("open channel", session.connection.create_channel()).await?;
        let declared = bounded(
            &format!("declare queue '{queue}'"),
            channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), self.config.request_queue_arguments()),
        )
        .await;
        close_quietly(channel).await;
        declared?;
        self.declared.lock().insert(queue.to_string());
        Ok(())
    }
}

async fn close_quietly(channel: Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(OPERATION_TIMEOUT, channel.close(200, "done".into())).await;
    }
}

/// Publishes on `channel`; on a channel in confirm mode (the session's publisher), waits for
/// the broker's confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BusError> {
    let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
    let confirmation = bounded(&format!("publish to '{routing_key}'"), async {
        channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?.await
    })
    .await?;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => {
            Err(BusError::Unroutable { queue: routing_key.to_string(), reply_text: returned.reply_text.to_string() })
        }
        Confirmation::Nack(_) => {
            Err(unavailable(format!("the broker refused (nacked) the message to '{routing_key}'")))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connection supervision

async fn supervise(inner: Arc<Inner>) {
    let mut generation = 0;
    loop {
        // A fresh backoff for each connection: a broker back after an outage is used again
        // within a second or two, whatever happened before.
        let connect = || connect(&inner, generation + 1);
        let connecting = connect.retry(reconnect_backoff()).notify(|error, delay| {
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
        });
        let session = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            session = connecting => match session {
                Ok(session) => Arc::new(session),
                // The backoff never runs out; this is for the types' sake.
                Err(_) => continue,
            },
        };
        generation = session.generation;
        tracing::info!(generation, reply_queue = %inner.reply_queue, "connected to the broker");
        inner.declared.lock().clear();
        inner.session.send_replace(Some(session.clone()));
        watch_session(&inner, &session).await;
        inner.mark_down("connection abandoned");
        let _ = tokio::time::timeout(Duration::from_secs(1), session.connection.close(200, "bye".into())).await;
        if inner.shutdown.is_cancelled() {
            break;
        }
    }
    inner.mark_down("shutting down");
}

/// Waits between tries to connect: exponential from 100 ms, jittered so that a fleet that
/// lost its broker together does not reconnect in step, and under 2 s (backon's jitter adds
/// up to the delay again, so the cap is 1 s).
fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
}

/// One try at a usable connection: the TLS settings, the connection (bounded), the topology.
async fn connect(inner: &Arc<Inner>, generation: u64) -> Result<Session, BusError> {
    // Checked at start-up too; here it can only be a CA file broken since then.
    let tls = inner.config.tls_config().map_err(unavailable)?;
    let connecting = async {
        // The captured TLS settings are what lapin's recoveries of this connection use.
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(
            inner.config.url.expose_secret(),
            connection_properties(&inner.config),
            tls,
            runtime,
        )
        .await
    };
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Err(unavailable(error)),
        Err(_) => return Err(unavailable(format!("connecting timed out after {CONNECT_TIMEOUT:?}"))),
    };
    match open_session(inner, connection, generation).await {
        Ok(session) => Ok(session),
        Err((connection, error)) => {
            let _ = tokio::time::timeout(OPERATION_TIMEOUT, connection.close(200, "setup failed".into())).await;
            Err(error)
        }
    }
}

fn connection_properties(config: &AmqpConfig) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(config.connection_name.as_str().into())
        .enable_auto_recover()
        // lapin's default waits up to a minute between attempts; a restarted broker
        // should be used again within a second or two.
        .configure_backoff(|backoff| {
            backoff.with_min_delay(Duration::from_millis(100)).with_max_delay(Duration::from_secs(1)).with_max_times(40)
        })
}

async fn sleep_or_cancel(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Declares the shared topology, the reply queue and consumer, and the publisher channel.
async fn open_session(
    inner: &Arc<Inner>,
    connection: Connection,
    generation: u64,
) -> Result<Session, (Connection, BusError)> {
    match try_open_session(inner, &connection).await {
        Ok((publisher, reply_channel)) => Ok(Session { generation, connection, publisher, reply_channel }),
        Err(error) => Err((connection, error)),
    }
}

async fn try_open_session(inner: &Arc<Inner>, connection: &Connection) -> Result<(Channel, Channel), BusError> {
    let config = &inner.config;
    let setup = bounded("open channel", connection.create_channel()).await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    bounded(
        "declare the dead-letter exchange",
        setup.exchange_declare(
            config.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        ),
    )
    .await?;
    bounded(
        "declare the dead-letter queue",
        setup.queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ),
    )
    .await?;
    bounded(
        "bind the dead-letter queue",
        setup.queue_bind(
            config.dead_letter_queue.as_str().into(),
            config.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    bounded(
        "declare the catalog exchange",
        setup.exchange_declare(
            config.catalog_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        ),
    )
    .await?;
    close_quietly(setup).await;

    let publisher = bounded("open channel", connection.create_channel()).await?;
    bounded("enable publisher confirms", publisher.confirm_select(ConfirmSelectOptions::default())).await?;

    let reply_channel = bounded("open channel", connection.create_channel()).await?;
    let exclusive = QueueDeclareOptions::exclusive().auto_delete();
    bounded(
        "declare the reply queue",
        reply_channel.queue_declare(inner.reply_queue.as_str().into(), exclusive, FieldTable::default()),
    )
    .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let replies = bounded(
        "consume the reply queue",
        reply_channel.basic_consume(inner.reply_queue.as_str().into(), "".into(), no_ack, FieldTable::default()),
    )
    .await?;
    inner.tasks.spawn(route_replies(Arc::downgrade(inner), replies));
    Ok((publisher, reply_channel))
}

/// Hands each reply to the caller waiting for its correlation id.
async fn route_replies(inner: std::sync::Weak<Inner>, mut replies: lapin::Consumer) {
    while let Some(reply) = replies.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let reply = match reply {
            Ok(reply) => reply,
            // lapin recovers the consumer; the supervisor fails the pending calls.
            Err(error) => {
                tracing::debug!(%error, "reply consumer interrupted");
                continue;
            }
        };
        let Some(correlation_id) = reply.properties.correlation_id().as_ref().map(ShortString::to_string) else {
            tracing::debug!("dropping reply without correlation id");
            continue;
        };
        let waiter = inner.pending.lock().remove(&correlation_id);
        match waiter {
            Some(reply_tx) => {
                let _ = reply_tx.send(Ok(reply.data));
            }
            None => tracing::debug!(%correlation_id, "dropping late or duplicate reply"),
        }
    }
}

/// Follows one connection until it is beyond lapin's recovery (or shutdown), marking the
/// bus down and up as the connection and its channels fail and come back.
async fn watch_session(inner: &Inner, session: &Arc<Session>) {
    let mut events = session.connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut down_since: Option<Instant> = None;
    let mut reconnected_at: Option<Instant> = None;
    let mut reachable_since: Option<Instant> = None;
    let broker = broker_address(inner.config.url.expose_secret());
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            event = events.next() => match event {
                None => return,
                Some(Event::Error(error)) => {
                    tracing::debug!(%error, "broker connection error");
                    if down_since.is_none() && !session.healthy() {
                        inner.mark_down(&error.to_string());
                        down_since = Some(Instant::now());
                    }
                }
                Some(Event::Connected) => {
                    tracing::info!("broker connection re-established; waiting for channel recovery");
                    reconnected_at = Some(Instant::now());
                }
                Some(_) => {}
            },
            _ = tick.tick() => {
                let status = session.connection.status();
                if status.errored() || status.closed() {
                    tracing::warn!("lapin could not recover the broker connection; reconnecting from scratch");
                    return;
                }
                let healthy = session.healthy();
                match (down_since, healthy) {
                    (None, false) => {
                        inner.mark_down("connection or channel lost");
                        down_since = Some(Instant::now());
                    }
                    (Some(_), true) => {
                        tracing::info!(generation = session.generation, "broker connection recovered");
                        down_since = None;
                        reconnected_at = None;
                        reachable_since = None;
                        inner.session.send_replace(Some(session.clone()));
                    }
                    (Some(since), false) => {
                        // The connection is back but a channel's replay failed: lapin will
                        // not retry it, so start over on a new connection.
                        let replay_failed = status.connected()
                            && reconnected_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5));
                        if replay_failed || since.elapsed() > RECOVERY_WINDOW {
                            tracing::warn!("lapin did not recover the broker channels; reconnecting from scratch");
                            return;
                        }
                        // The broker is back but lapin is not reconnecting to it. Probed
                        // until it answers once, so the broker sees one extra connection.
                        if reconnected_at.is_none() && since.elapsed() > Duration::from_secs(1) {
                            if reachable_since.is_none() && broker_accepts_connections(broker.as_ref()).await {
                                reachable_since = Some(Instant::now());
                            }
                            if reachable_since.is_some_and(|at| at.elapsed() > STALLED_RECOVERY) {
                                tracing::warn!(
                                    ?status,
                                    "lapin is not reconnecting to a reachable broker; reconnecting from scratch"
                                );
                                return;
                            }
                        }
                    }
                    (None, true) => {}
                }
            }
        }
    }
}

/// The broker's host and port, from its URL.
fn broker_address(url: &str) -> Option<(String, u16)> {
    let uri = url.parse::<lapin::uri::AMQPUri>().ok()?;
    Some((uri.authority.host, uri.authority.port))
}

/// Whether the broker accepts TCP connections (within a short bound).
async fn broker_accepts_connections(address: Option<&(String, u16)>) -> bool {
    let Some((host, port)) = address else { return false };
    let connecting = tokio::net::TcpStream::connect((host.as_str(), *port));
    matches!(tokio::time::timeout(Duration::from_millis(300), connecting).await, Ok(Ok(_)))
}

/// Removes the pending entry when the caller stops waiting (deadline, error or
/// cancellation), so a reply that comes later finds nobody and is dropped.
struct PendingGuard<'a> {
    inner: &'a Inner,
    correlation_id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(self.correlation_id);
    }
}

#[async_trait]
impl Requester for AmqpBus {
    async fn call(&self, message: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError> {
        let inner = &self.inner;
        let session = inner.current().ok_or_else(not_connected)?;
        let losses = inner.losses.load(Ordering::SeqCst);
        let correlation_id = message.correlation_id;
        let queue = message.queue;
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = inner.pending.lock();
            if pending.contains_key(&correlation_id) {
                return Err(BusError::DuplicateId(correlation_id));
            }
            pending.insert(correlation_id.clone(), reply_tx);
        }
        let _guard = PendingGuard { inner, correlation_id: &correlation_id };
        let publishing = async {
            inner.declare_request_queue(&session, &queue).await?;
            let mut properties = BasicProperties::default()
                .with_correlation_id(correlation_id.as_str().into())
                .with_reply_to(inner.reply_queue.as_str().into())
                .with_content_type(message.content_type.as_str().into())
                // Transient: a request outlives a broker restart only to be answered into a
                // reply queue that is gone (its caller already got 503), so persisting it
                // buys nothing and costs a disk write on the latency path.
                .with_delivery_mode(1);
            if let Some(expiration_ms) = message.expiration_ms {
                properties = properties.with_expiration(expiration_ms.min(MAX_EXPIRATION_MS).to_string().into());
            }
            let published = publish(&session.publisher, "", &queue, true, &message.body, properties).await;
            if let Err(BusError::Unroutable { .. }) = &published {
                // The queue vanished since we declared it (deleted, or a broker without
                // its data): declare it again next time.
                inner.declared.lock().remove(&queue);
            }
            published
        };
        match tokio::time::timeout_at(deadline.into(), publishing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%queue, %correlation_id, %error, "publishing request failed");
                return Err(error);
            }
            Err(_) => return Err(BusError::DeadlineExceeded),
        }
        // The connection dropped between our look at it and the confirm: the reply, if
        // any, went to a reply queue that no longer exists.
        if inner.losses.load(Ordering::SeqCst) != losses {
            return Err(unavailable("lost the broker connection while publishing"));
        }
        match tokio::time::timeout_at(deadline.into(), reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the bus shut down")),
            Err(_) => Err(BusError::DeadlineExceeded),
        }
    }

    fn queue_for(&self, model: &str) -> String {
        format!("{}{model}", self.inner.config.queue_prefix)
    }

    fn is_ready(&self) -> bool {
        self.inner.current().is_some_and(|session| session.healthy())
    }
}

// ---------------------------------------------------------------------------------------
// Worker side

/// One request queue's channel and consumer.
struct Subscription {
    queue: String,
    channel: Channel,
    consumer: lapin::Consumer,
}

/// Opens one channel per request queue with `basic.qos(prefetch)`, declares the queue and
/// starts consuming it.
async fn subscribe(inner: &Inner, session: &Session, queues: &[String]) -> Result<Vec<Subscription>, BusError> {
    let mut subscriptions = Vec::with_capacity(queues.len());
    for queue in queues {
        let channel = bounded("open channel", session.connection.create_channel()).await?;
        // Per channel (global = false): quorum queues refuse consumers on a channel with a
        // global limit. One channel per queue, so each queue gets `prefetch`.
        bounded("basic.qos", channel.basic_qos(inner.config.prefetch.max(1), BasicQosOptions { global: false }))
            .await?;
        bounded(
            &format!("declare queue '{queue}'"),
            channel.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                inner.config.request_queue_arguments(),
            ),
        )
        .await?;
        let consumer = bounded(
            &format!("consume queue '{queue}'"),
            channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        tracing::debug!(%queue, "consuming");
        subscriptions.push(Subscription { queue: queue.clone(), channel, consumer });
    }
    Ok(subscriptions)
}

/// Moves deliveries from the broker's consumers into the [`AmqpConsumer`]'s stream, and
/// re-subscribes when the bus had to open a new connection.
struct ConsumerPump {
    inner: Arc<Inner>,
    queues: Vec<String>,
    delivery_tx: mpsc::UnboundedSender<Delivery>,
    stop: CancellationToken,
}

impl ConsumerPump {
    async fn run(self, mut generation: u64, mut subscriptions: Vec<Subscription>) {
        let mut sessions = self.inner.session.subscribe();
        loop {
            if self.forward(&mut sessions, generation, &mut subscriptions).await {
                self.cancel(subscriptions).await;
                return;
            }
            // A new connection: the old channels are gone with the old one.
            loop {
                let session = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.generation != generation)) => match session {
                        Ok(session) => session.clone().expect("waited for a session"),
                        Err(_) => return,
                    },
                };
                match subscribe(&self.inner, &session, &self.queues).await {
                    Ok(fresh) => {
                        tracing::info!(queues = ?self.queues, "re-subscribed after a new broker connection");
                        generation = session.generation;
                        subscriptions = fresh;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "re-subscribing failed; retrying");
                        sleep_or_cancel(&self.stop, Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    /// Forwards deliveries until stopped (returns true) or the bus moved to a new
    /// connection (returns false).
    async fn forward(
        &self,
        sessions: &mut watch::Receiver<Option<Arc<Session>>>,
        generation: u64,
        subscriptions: &mut [Subscription],
    ) -> bool {
        let streams = subscriptions.iter_mut().map(|s| {
            let queue = s.queue.clone();
            let channel = s.channel.clone();
            (&mut s.consumer).map(move |d| (queue.clone(), channel.clone(), d))
        });
        let mut merged = futures::stream::select_all(streams);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return true,
                changed = sessions.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                    let moved = sessions.borrow_and_update().as_ref().is_some_and(|s| s.generation != generation);
                    if moved {
                        return false;
                    }
                }
                item = merged.next() => match item {
                    Some((queue, channel, Ok(delivery))) => {
                        let delivery = to_delivery(&self.inner, queue, channel, delivery);
                        if self.delivery_tx.send(delivery).is_err() {
                            // The AmqpConsumer is gone; the delivery's drop requeues it.
                            return true;
                        }
                    }
                    // lapin replays the consumer after a reconnect; nothing to do here.
                    Some((queue, _, Err(error))) => tracing::debug!(%queue, %error, "consumer interrupted"),
                    None => {
                        // Every consumer was cancelled by the broker (queue deleted): wait
                        // for a new connection generation rather than spin.
                        tracing::warn!(queues = ?self.queues, "the broker cancelled the consumers");
                        tokio::select! {
                            _ = self.stop.cancelled() => return true,
                            _ = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.generation != generation)) => return false,
                        }
                    }
                }
            }
        }
    }

    /// `basic.cancel` every consumer so no new deliveries arrive; deliveries the broker
    /// sent before its cancel-ok still reach the stream and are requeued there.
    async fn cancel(self, subscriptions: Vec<Subscription>) {
        for subscription in subscriptions {
            let tag = subscription.consumer.tag();
            if let Err(error) =
                bounded("basic.cancel", subscription.channel.basic_cancel(tag, BasicCancelOptions::default())).await
            {
                tracing::debug!(queue = %subscription.queue, %error, "cancelling consumer failed");
            }
            let mut consumer = subscription.consumer;
            // After cancel-ok the stream ends; what it still yields was prefetched.
            while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                if let Ok(delivery) = item {
                    let _ = self.delivery_tx.send(to_delivery(
                        &self.inner,
                        subscription.queue.clone(),
                        subscription.channel.clone(),
                        delivery,
                    ));
                }
            }
        }
    }
}

fn to_delivery(inner: &Arc<Inner>, queue: String, channel: Channel, delivery: lapin::message::Delivery) -> Delivery {
    let properties = delivery.properties;
    let content_type = match properties.content_type().as_ref().map(ShortString::as_str) {
        Some(ContentType::JSON) => ContentType::Json,
        _ => ContentType::MsgPack,
    };
    let correlation_id = properties.correlation_id().as_ref().map(ShortString::to_string);
    let reply_to = properties.reply_to().as_ref().map(ShortString::to_string);
    let attempt = attempt_of(delivery.redelivered, properties.headers().as_ref());
    let handle = AmqpHandle {
        inner: inner.clone(),
        acker: Some(delivery.acker),
        channel,
        queue,
        properties,
        body: delivery.data.clone(),
    };
    Delivery::new(delivery.data, correlation_id, reply_to, content_type, attempt, Box::new(handle))
}

/// Which delivery of a message this is (see [`Delivery::attempt`]). Quorum queues count the
/// earlier deliveries that came back in `x-delivery-count` (absent, or 0, on the first);
/// classic queues say only `redelivered`, which means the second attempt at least. The
/// header comes off the wire: any integer type is taken, negatives as 0, and the count is
/// saturated rather than trusted.
fn attempt_of(redelivered: bool, headers: Option<&FieldTable>) -> u32 {
    let at_least = if redelivered { 2 } else { 1 };
    let returned = headers.and_then(|headers| headers.inner().get(DELIVERY_COUNT_HEADER)).and_then(|value| {
        let count: i64 = match *value {
            AMQPValue::ShortShortInt(n) => n.into(),
            AMQPValue::ShortShortUInt(n) => n.into(),
            AMQPValue::ShortInt(n) => n.into(),
            AMQPValue::ShortUInt(n) => n.into(),
            AMQPValue::LongInt(n) => n.into(),
            AMQPValue::LongUInt(n) => n.into(),
            AMQPValue::LongLongInt(n) => n,
            _ => return None,
        };
        Some(u32::try_from(count.max(0)).unwrap_or(u32::MAX))
    });
    returned.map_or(at_least, |count| count.saturating_add(1).max(at_least))
}

/// The worker's subscription to its models' request queues, one merged stream.
pub struct AmqpConsumer {
    delivery_rx: mpsc::UnboundedReceiver<Delivery>,
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        // Deliveries still buffered here are requeued by their own drops.
        self.stop.cancel();
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        self.delivery_rx.recv().await
    }

    async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        // Prefetched but never taken: give them back now, not when the channel closes.
        self.delivery_rx.close();
        while let Some(delivery) = self.delivery_rx.recv().await {
            if let Err(error) = delivery.reject(true).await {
                tracing::debug!(%error, "requeueing a prefetched delivery failed; the broker requeues it with its channel");
            }
        }
    }
}

struct AmqpHandle {
    inner: Arc<Inner>,
    /// `Some` until settled; an unsettled drop requeues.
    acker: Option<lapin::Acker>,
    /// The delivery's channel, kept open until the delivery is settled (a closed channel
    /// would requeue it and make the ack fail); replies are published on it.
    channel: Channel,
    queue: String,
    properties: BasicProperties,
    /// A copy of the body for dead-lettering.
    body: Vec<u8>,
}

impl AmqpHandle {
    fn correlation_id(&self) -> &str {
        self.properties.correlation_id().as_ref().map_or("", ShortString::as_str)
    }
}

#[async_trait]
impl DeliveryHandle for AmqpHandle {
    async fn reply(&self, content_type: ContentType, body: Vec<u8>) -> Result<(), BusError> {
        let Some(reply_to) = self.properties.reply_to().as_ref() else {
            tracing::info!(queue = %self.queue, correlation_id = self.correlation_id(), "request has no reply_to; reply dropped");
            return Ok(());
        };
        if !self.channel.status().connected() {
            return Err(not_connected());
        }
        let mut properties = BasicProperties::default().with_content_type(content_type.as_str().into());
        if let Some(correlation_id) = self.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        // Not mandatory: a caller that is gone (its reply queue with it) is no error for
        // the worker; the reply is dropped, as late replies are.
        //
        // On the delivery's own channel, which is not in confirm mode, so nothing waits for
        // the broker here: AMQP has a channel's methods processed in order, so the broker
        // routes this reply before it sees the `basic.ack` that follows on the same channel,
        // and a connection lost in between loses the ack too (the request is redelivered).
        // Reply-before-ack holds without the confirm's round trip on every request.
        publish(&self.channel, "", reply_to.as_str(), false, &body, properties).await
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        bounded("basic.ack", acker.ack(BasicAckOptions::default())).await.map(drop)
    }

    async fn reject(&mut self, requeue: bool) -> Result<(), BusError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        bounded("basic.nack", acker.nack(BasicNackOptions { requeue, multiple: false })).await.map(drop)
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), BusError> {
        if self.acker.is_none() {
            return Ok(());
        }
        let session = self.inner.current().ok_or_else(not_connected)?;
        tracing::warn!(queue = %self.queue, correlation_id = self.correlation_id(), reason, "dead-lettering request");
        let original = &self.properties;
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        headers.insert(QUEUE_HEADER.into(), AMQPValue::LongString(self.queue.as_str().into()));
        // The original properties, less `expiration`: a dead letter must stay to be read.
        let mut properties = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
        if let Some(v) = original.content_type() {
            properties = properties.with_content_type(v.clone());
        }
        if let Some(v) = original.content_encoding() {
            properties = properties.with_content_encoding(v.clone());
        }
        if let Some(v) = original.correlation_id() {
            properties = properties.with_correlation_id(v.clone());
        }
        if let Some(v) = original.reply_to() {
            properties = properties.with_reply_to(v.clone());
        }
        if let Some(v) = original.message_id() {
            properties = properties.with_message_id(v.clone());
        }
        if let Some(v) = original.timestamp() {
            properties = properties.with_timestamp(*v);
        }
        if let Some(v) = original.kind() {
            properties = properties.with_type(v.clone());
        }
        if let Some(v) = original.app_id() {
            properties = properties.with_app_id(v.clone());
        }
        if let Some(v) = original.priority() {
            properties = properties.with_priority(*v);
        }
        let exchange = self.inner.config.dead_letter_exchange.clone();
        publish(&session.publisher, &exchange, &self.queue, false, &self.body, properties).await?;
        self.ack().await
    }
}

impl Drop for AmqpHandle {
    fn drop(&mut self) {
        // Unsettled: the worker lost it (its task died). Requeue now rather than when the
        // channel closes, so another consumer gets it at once.
        let Some(acker) = self.acker.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let queue = std::mem::take(&mut self.queue);
        runtime.spawn(async move {
            if let Err(error) = bounded("basic.nack", acker.nack(BasicNackOptions { requeue: true, multiple: false })).await {
                tracing::debug!(%queue, %error, "requeueing a dropped delivery failed; the broker requeues it with its channel");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Catalog

async fn listen_catalog(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    let queue = format!("{}.listener.{}", inner.config.catalog_exchange, uuid::Uuid::new_v4().simple());
    let mut sessions = inner.session.subscribe();
    let mut generation = 0;
    loop {
        let session = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = announcement_tx.closed() => return,
            session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.generation != generation)) => match session {
                Ok(session) => session.clone().expect("waited for a session"),
                Err(_) => return,
            },
        };
        let (channel, mut announcements) = match subscribe_catalog(&inner, &session, &queue).await {
            Ok(subscribed) => subscribed,
            Err(error) => {
                tracing::warn!(%queue, %error, "subscribing to the catalog failed; retrying");
                sleep_or_cancel(&inner.shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        generation = session.generation;
        drop(session);
        loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = announcement_tx.closed() => {
                    close_quietly(channel).await;
                    return;
                }
                changed = sessions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if sessions.borrow_and_update().as_ref().is_some_and(|s| s.generation != generation) {
                        break;
                    }
                }
                item = announcements.next() => match item {
                    Some(Ok(announcement)) => {
                        if announcement_tx.try_send(announcement.data).is_err() {
                            tracing::debug!(%queue, "catalog listener lags; announcement dropped");
                        }
                    }
                    Some(Err(error)) => tracing::debug!(%queue, %error, "catalog consumer interrupted"),
                    None => {
                        // Cancelled by the broker: subscribe again on the next connection.
                        generation = 0;
                        sleep_or_cancel(&inner.shutdown, Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }
}

async fn subscribe_catalog(
    inner: &Inner,
    session: &Session,
    queue: &str,
) -> Result<(Channel, lapin::Consumer), BusError> {
    let channel = bounded("open channel", session.connection.create_channel()).await?;
    let exclusive = QueueDeclareOptions::exclusive().auto_delete();
    bounded("declare catalog queue", channel.queue_declare(queue.into(), exclusive, FieldTable::default())).await?;
    bounded(
        "bind catalog queue",
        channel.queue_bind(
            queue.into(),
            inner.config.catalog_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let consumer =
        bounded("consume catalog queue", channel.basic_consume(queue.into(), "".into(), no_ack, FieldTable::default()))
            .await?;
    Ok((channel, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA certificate made now, as PEM.
    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    /// Builds the TLS settings for `url` with `ca` (PEM text written to a file, or no file)
    /// and compares them with `expected`: the CA text lapin gets, or a fragment of the error.
    /// No broker here listens on TLS, so this stops where lapin takes over.
    fn check(url: &str, ca: Option<&str>, expected: Result<Option<&str>, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.map(|text| {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, text).unwrap();
            path
        });
        let settings = settings::BusSettings { url: url.into(), ca_file, ..settings::BusSettings::default() };
        let config = AmqpConfig::from_settings(&settings, "test", 1);
        match (config.tls_config(), expected) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got.cert_chain.as_deref(), want, "{url} with {ca:?}");
                assert!(got.identity.is_none());
            }
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("{url} with {ca:?}: got {got:?}, want {want:?}"),
        }
    }

    /// The attempt number read off a delivery, for every shape the header can come in.
    #[test]
    fn attempts_from_redelivered_and_the_delivery_count() {
        let check = |redelivered: bool, count: Option<AMQPValue>, expected: u32| {
            let headers = count.clone().map(|count| {
                let mut headers = FieldTable::default();
                headers.insert(DELIVERY_COUNT_HEADER.into(), count);
                headers
            });
            assert_eq!(attempt_of(redelivered, headers.as_ref()), expected, "{redelivered} {count:?}");
        };
        check(false, None, 1);
        check(true, None, 2);
        check(false, Some(AMQPValue::LongLongInt(0)), 1);
        check(true, Some(AMQPValue::LongLongInt(0)), 2);
        check(true, Some(AMQPValue::LongLongInt(1)), 2);
        check(true, Some(AMQPValue::LongLongInt(4)), 5);
        check(true, Some(AMQPValue::ShortShortUInt(2)), 3);
        check(true, Some(AMQPValue::LongUInt(u32::MAX)), u32::MAX);
        check(true, Some(AMQPValue::LongLongInt(i64::MAX)), u32::MAX);
        check(false, Some(AMQPValue::LongLongInt(i64::MIN)), 1);
        check(true, Some(AMQPValue::LongString("3".into())), 2);
    }

    #[test]
    fn tls_config_from_a_ca_file() {
        let ca = ca_pem();
        let two_cas = format!("{ca}{}", ca_pem());
        let amqps = "amqps://rfleet:secret@broker.example:5671/%2f";
        check("amqp://guest:guest@127.0.0.1:5672/%2f", None, Ok(None));
        check(amqps, None, Ok(None));
        check(amqps, Some(&ca), Ok(Some(&ca)));
        check(amqps, Some(&two_cas), Ok(Some(&two_cas)));
        check("amqp://guest:guest@127.0.0.1:5672/%2f", Some(&ca), Err("not amqps://"));
        check(amqps, Some(""), Err("holds no PEM certificate"));
        check(
            amqps,
            Some("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"),
            Err("cannot be a trust anchor"),
        );
        let missing =
            settings::BusSettings { url: amqps.into(), ca_file: Some("/no/such/ca.pem".into()), ..Default::default() };
        let error = AmqpConfig::from_settings(&missing, "test", 1).tls_config().unwrap_err();
        assert!(error.to_string().contains("cannot read the broker CA file /no/such/ca.pem"), "{error}");
    }
}
