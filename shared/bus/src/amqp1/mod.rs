//! The AMQP 1.0 transport (fe2o3-amqp): requests, replies, dead letters and catalog
//! announcements over one AMQP 1.0 connection, with the embedded bus's semantics. Two
//! dialects ([`Dialect`]): `broker`, a plain AMQP 1.0 broker (here RabbitMQ 3.10's
//! `rabbitmq_amqp1_0` plugin), and `servicebus`, Azure Service Bus (see "Service Bus
//! dialect" below).
//!
//! # Layout
//! - this file: [`Amqp1Bus`], [`Amqp1Config`], the state the parts share (`Inner`), the
//!   addresses of the broker dialect and the bound every operation runs under;
//! - `connection`: connecting (TCP, SASL PLAIN, open, begin), the loop that keeps one
//!   connection (sessions numbered by generation), and the sending links it caches;
//! - `message`: AMQP 1.0 messages to and from the bus's types;
//! - `publish`: the [`Requester`] side and routing replies to callers;
//! - `consume`: the worker side: one receiving link per request queue, following a set of
//!   queues, credit for free slots only, settling a delivery;
//! - `announcements`: catalog listeners (broker: a link per listener; Service Bus: peeking);
//! - `servicebus`: Service Bus's sign-in (CBS), `$management` operations, wire constants
//!   and entity names;
//! - `credentials`: connection strings and SAS tokens.
//!
//! # Addresses (broker dialect, RabbitMQ 3.x plugin)
//! - **Request queues** `<queue_prefix><model>[@version]` (the names [`crate::amqp`]
//!   uses), addressed `/queue/NAME`: attaching a link declares the queue when it does not
//!   exist, so a dispatcher's first request waits in the queue for the first worker, as on
//!   0-9-1. With [`Amqp1Config::declare_queues`] off they are addressed `/amq/queue/NAME`
//!   and must exist: that is how the bus shares queues the 0-9-1 transport declared (with
//!   `x-dead-letter-exchange`, which then dead-letters what is rejected or expires). Every link to a request queue has a durable terminus (see `is_queue_address`):
//!   the plugin declares the queue durable exactly when the terminus is.
//! - **Replies**: each [`Amqp1Bus`] receives on
//!   `/exchange/amq.direct/<reply_queue>.<uuid>`: the plugin declares a server-named
//!   `amq.gen-...` queue bound to `amq.direct` with that key. Requests carry the address as
//!   `reply-to`; a worker sends its reply to the request's `reply-to` as it is.
//! - **Catalog**: `/topic/<catalog>` (default `rfleet.catalog`) on `amq.topic`, which every
//!   RabbitMQ has: the plugin cannot declare exchanges, so a fanout exchange of our own
//!   (`/exchange/rfleet.catalog/`) would have to exist beforehand. Each listener's link
//!   gets its own `amq.gen-...` queue bound to the topic.
//! - **Dead letters**: `rejected`, with an error whose condition is
//!   [`DEAD_LETTER_CONDITION`] and whose description is the reason. RabbitMQ turns
//!   `rejected` into a reject without requeue; where the message goes then is the queue's
//!   policy (`dead-letter-exchange`), and the reason is not kept (the dead letter's
//!   `x-first-death-reason` says `rejected`). A request whose header `ttl` runs out is
//!   dead-lettered the same way (`expired`). Abandoning (requeue) is `released`.
//!
//! # What RabbitMQ 3.10.8's plugin does (measured)
//! - `/queue/NAME` declares `NAME` durable iff the attaching terminus is durable, never
//!   auto-delete or exclusive, without arguments; a later attach of other durability, or
//!   to a queue declared with arguments (the 0-9-1 transport's `x-dead-letter-exchange`),
//!   is refused with `PRECONDITION_FAILED` **and the whole AMQP session is ended**, as is
//!   an attach to `/exchange/X/...` where `X` does not exist (`NOT_FOUND`).
//!   `/amq/queue/NAME` uses an existing queue as it is.
//! - The `amq.gen-...` queues behind `/exchange/...` and `/topic/...` sources are neither
//!   exclusive nor auto-delete: they **outlive the link and the connection**. A closing
//!   detach of such a link does not delete its queue; it declares a fresh one. The bus
//!   therefore never detaches them (it closes the connection). After a reconnect, the
//!   earlier connection's reply queue stays bound to the bus's (unchanged) reply key and
//!   collects copies of its replies. A deployment therefore needs a policy that expires
//!   unused ones, e.g. `rabbitmqctl set_policy rfleet-amqp1-temp
//!   '^amq\.gen-' '{"expires":60000}' --apply-to queues` on rfleet's vhost.
//! - Outcomes offered: `accepted`, `rejected`, `released`. A `modified` disposition (even
//!   `delivery-failed`) ends the session with `invalid-field`; so abandon is `released`.
//! - A released message comes back with header `first-acquirer` = false and
//!   `delivery-count` = 0 (classic queues), so [`Delivery::attempt`] knows only that it is
//!   on its second attempt at least, as on 0-9-1 classic queues.
//! - Header `ttl` becomes the message's per-message TTL: it is dropped (or dead-lettered by
//!   policy) when it runs out in the queue.
//! - Manual link credit is honoured: a consumer with `prefetch` credit holds at most
//!   `prefetch` unsettled deliveries, the rest stay ready in the queue.
//! - The AMQP `open` hostname picks the vhost as `vhost:<name>`; any other (the host name)
//!   is the default vhost.
//!
//! [`Delivery::attempt`]: crate::Delivery::attempt
//!
//! # Properties
//! Requests carry `correlation-id` (a string), `reply-to`, `content-type`
//! (`application/msgpack` or `application/json`), the application property `traceparent`
//! when traced, header `ttl` = time left until the deadline, `durable` = false, and the
//! body as one `data` section. Replies carry the request's `correlation-id`.
//!
//! # Credit and settlement
//! A request queue's link is attached with manual credit and `prefetch` credit; each time
//! the worker settles a delivery the link's credit is set back to `prefetch` less the
//! deliveries still held, so the broker never sends more than the worker has free slots
//! for. Settling goes through the link's task (fe2o3's `Receiver` settles only through
//! itself), which also receives. Requests are accepted only after the reply was sent:
//! every send waits for the broker's outcome (`accepted`).
//!
//! # Recovery
//! As the 0-9-1 transport's: one connection per bus, one loop that keeps it, tries spaced
//! by jittered exponential backoff (`backon`, 100 ms to under 2 s); when the connection or
//! the reply link is lost (the plugin ends the session, say) the bus is marked down at
//! once (pending calls fail with `Unavailable`, new ones fail fast), and every consumer
//! link and catalog listener waits for the next session and attaches again. A sending
//! link whose send failed is forgotten and attached again on next use. Sending links are
//! cached per address for the session's life, so a worker keeps one per dispatcher it
//! replied to. At shutdown the consumer links are detached (bounded), then the connection
//! is closed. TCP has `TCP_NODELAY` on: every send waits for the peer's outcome, and
//! Nagle's algorithm made that tens of milliseconds each (measured: 200 calls took over
//! 5 s).
//!
//! # Service Bus dialect
//! - **Connecting**: TLS on 5671 to the namespace host (rustls with ring, the public web
//!   CAs of webpki-roots), or plain AMQP with a connection string's
//!   `UseDevelopmentEmulator=true`; SASL ANONYMOUS, then CBS (`servicebus`: "Signing in").
//! - **Request queues** are entities named by `servicebus::entity_name`
//!   (`<prefix><model>[/version]`), addressed by name; they must exist (Service Bus makes
//!   no entity on attach; `deploy/azure/main.bicep` makes them). Workers receive peek-lock
//!   (`snd-settle-mode` unsettled, `rcv-settle-mode` first: settling does not wait for an
//!   answer, as on the broker), with credit for free slots only, as above. Accept is
//!   complete; abandon (requeue) is `modified` with `delivery-failed` (delivery count +1);
//!   dead-letter is `rejected` with condition `com.microsoft:dead-letter` and info
//!   `DeadLetterReason` (the reason's code) and `DeadLetterErrorDescription`; Service Bus
//!   moves such a message, and one past the queue's `maxDeliveryCount`, to
//!   `<queue>/$DeadLetterQueue`. [`Delivery::attempt`] is the header's `delivery-count` + 1.
//! - **Locks**: a held request's lock (token: annotation `x-opt-lock-token`; expiry:
//!   `x-opt-locked-until`) is renewed halfway to its expiry through the queue's
//!   `$management` (`com.microsoft:renew-lock`) until the request settles or its time to
//!   live runs out. A lock that is lost anyway (the worker killed, a renewal failed) makes
//!   Service Bus deliver the request again when it expires: the worker that takes it
//!   answers again, and the dispatcher drops the second reply (at least once, as on
//!   RabbitMQ).
//! - **Replies**: one session-enabled queue (`reply_queue`, default `rfleet.replies`) for
//!   every dispatcher; each connection takes a session of its own (id
//!   `<connection_name>-<uuid>`) by a receiving link with source filter
//!   `com.microsoft:session-filter`, received and deleted (settled on send), and renews
//!   its session lock every `servicebus::RENEW_SESSION_LOCK_EVERY`. Requests carry
//!   `reply-to` = the reply queue and `reply-to-group-id` = the session; a worker's reply
//!   carries `group-id` = that session, and the request's `ttl`. Chosen over a reply queue
//!   per dispatcher because those must be made through the administration API (HTTPS,
//!   `Manage` rights for every dispatcher) and cleaned up after dispatchers that die; a
//!   session needs neither, and a dead dispatcher's session expires with its replies' TTL.
//! - **Catalog**: `announcements` (peeked, never taken; announcements live a few seconds).
//! - **Recovery**: Service Bus detaches links it finds idle for 10 minutes, and any link
//!   at will. A detached reply link loses the session, as on the broker (the supervisor
//!   connects again; an idle dispatcher has no call to fail); a request link detached
//!   alone is attached again on the same session. A token that cannot be renewed, or a reply session whose lock cannot
//!   be renewed, also loses the session: the supervisor connects again, and pending calls
//!   fail at once (`Unavailable`, 503) rather than at their deadlines.
//!
//! # Queue depth
//! [`Transport::queue_depth`] is `None`: AMQP 1.0 has no
//! "declare passive" and the plugin reports no `available` count that would say.

mod announcements;
mod connection;
mod consume;
pub mod credentials;
pub mod entra;
mod message;
mod publish;
pub mod servicebus;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{BusError, Consumer, Requester, Transport};
use connection::Session;

pub use consume::Amqp1Consumer;

/// How long shutdown waits for the links to detach before it closes the connection.
const DETACH_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// The error condition of a `rejected` outcome by which a worker dead-letters a request.
pub const DEAD_LETTER_CONDITION: &str = "rfleet:dead-letter";

/// Longest a single operation (attach, send until the broker's outcome, settle) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Which kind of AMQP 1.0 peer the bus talks to: the addresses and outcomes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// A plain AMQP 1.0 broker (RabbitMQ's `rabbitmq_amqp1_0` plugin).
    #[default]
    Broker,
    /// Azure Service Bus (module docs: "Service Bus dialect").
    ServiceBus,
}

/// How the bus authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// SASL PLAIN.
    Plain { username: String, password: String },
    /// SASL ANONYMOUS.
    Anonymous,
    /// Service Bus: SASL ANONYMOUS, then a token per entity put on `$cbs`, signed from the
    /// connection string's key (or its own signature). See `servicebus`.
    SharedAccess(credentials::ConnectionString),
    /// Service Bus: SASL ANONYMOUS, then Entra ID tokens (`jwt`) put on `$cbs`.
    EntraId(entra::EntraId),
}

impl PartialEq for Credentials {
    /// Shared access compares where it signs in and as whom, not the secret.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Credentials::Plain { username: a, password: p }, Credentials::Plain { username: b, password: q }) => {
                a == b && p == q
            }
            (Credentials::Anonymous, Credentials::Anonymous) => true,
            (Credentials::SharedAccess(a), Credentials::SharedAccess(b)) => format!("{a:?}") == format!("{b:?}"),
            (Credentials::EntraId(a), Credentials::EntraId(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Plain { username, .. } => write!(f, "Plain {{ username: {username:?}, password: *** }}"),
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::SharedAccess(access) => write!(f, "SharedAccess({access:?})"),
            Credentials::EntraId(credential) => write!(f, "{credential:?}"),
        }
    }
}

/// How to reach the peer and name things on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Amqp1Config {
    pub dialect: Dialect,
    /// `host:port` of the peer.
    pub endpoint: String,
    /// TLS to the peer (Service Bus on 5671), its certificate checked against the public
    /// web CAs built in (webpki-roots) and `ca_file`'s, for the endpoint's host name.
    pub tls: bool,
    /// A PEM file of more CA certificates to trust (TLS, and Entra ID's token requests).
    pub ca_file: Option<std::path::PathBuf>,
    /// The `hostname` of AMQP's `open`: `vhost:<name>` picks a RabbitMQ vhost; `None` is
    /// the default vhost.
    pub hostname: Option<String>,
    pub credentials: Credentials,
    pub queue_prefix: String,
    /// Service Bus: the session-enabled reply queue. Broker: the prefix of each bus's
    /// private reply key (`<reply_queue>.<uuid>`).
    pub reply_queue: String,
    /// The catalog's topic (broker: `/topic/<catalog>`).
    pub catalog: String,
    /// Broker dialect: whether request queues are declared by attaching to them
    /// (`/queue/NAME`, durable, no arguments) or must exist already (`/amq/queue/NAME`:
    /// queues declared by the operator or by the 0-9-1 transport, whose arguments the
    /// plugin's declaration would contradict, ending the session).
    pub declare_queues: bool,
    /// Deliveries a request queue's link may hold unsettled (its credit). At least 1.
    pub prefetch: u16,
    /// The `container-id` of AMQP's `open`, which the broker shows.
    pub connection_name: String,
    /// Service Bus: how long a SAS token signed here is valid (renewed a fifth of it before).
    pub token_lifetime: Duration,
}

impl Amqp1Config {
    /// `amqp://user:password@host:port[/vhost]`, as the 0-9-1 transport's URL.
    pub fn from_url(url: &str) -> Result<Amqp1Config, BusError> {
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| unavailable("amqp1 url must start with amqp:// (amqps is not wired yet)"))?;
        let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let credentials = match userinfo.and_then(|u| u.split_once(':')) {
            Some((username, password)) => {
                Credentials::Plain { username: percent_decode(username), password: percent_decode(password) }
            }
            None => Credentials::Anonymous,
        };
        let endpoint = if host.contains(':') { host.to_string() } else { format!("{host}:5672") };
        let vhost = percent_decode(vhost);
        Ok(Amqp1Config {
            dialect: Dialect::Broker,
            endpoint,
            tls: false,
            ca_file: None,
            hostname: (!vhost.is_empty() && vhost != "/").then(|| format!("vhost:{vhost}")),
            credentials,
            queue_prefix: "rfleet.model.".into(),
            reply_queue: "rfleet.reply".into(),
            catalog: "rfleet.catalog".into(),
            declare_queues: true,
            prefetch: 8,
            connection_name: "rfleet".into(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        })
    }

    /// Azure Service Bus from a connection string (see [`credentials`]): TLS on 5671, or
    /// plain AMQP on the endpoint's port (5672 by default) with `UseDevelopmentEmulator`.
    pub fn from_connection_string(text: &str) -> Result<Amqp1Config, BusError> {
        let access = credentials::ConnectionString::parse(text).map_err(unavailable)?;
        let tls = !access.development_emulator;
        let port = access.port.unwrap_or(if tls { 5671 } else { 5672 });
        let endpoint = format!("{}:{port}", access.host);
        Ok(Amqp1Config {
            tls,
            ..Amqp1Config::servicebus(endpoint, &access.host.clone(), Credentials::SharedAccess(access))
        })
    }

    /// Azure Service Bus at `namespace` (`NS.servicebus.windows.net`, or just `NS`), TLS on
    /// 5671, signed in with Entra ID.
    pub fn from_namespace(namespace: &str, credential: entra::EntraId) -> Amqp1Config {
        let host =
            if namespace.contains('.') { namespace.to_string() } else { format!("{namespace}.servicebus.windows.net") };
        Amqp1Config::servicebus(format!("{host}:5671"), &host, Credentials::EntraId(credential))
    }

    fn servicebus(endpoint: String, host: &str, credentials: Credentials) -> Amqp1Config {
        Amqp1Config {
            dialect: Dialect::ServiceBus,
            endpoint,
            tls: true,
            ca_file: None,
            hostname: Some(host.to_string()),
            credentials,
            queue_prefix: "rfleet.model.".into(),
            reply_queue: "rfleet.replies".into(),
            catalog: "rfleet.catalog".into(),
            declare_queues: false,
            prefetch: 8,
            connection_name: "rfleet".into(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        }
    }
}

/// A SAS token signed here lasts an hour, as Microsoft's SDKs sign them.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// `%XX` escapes decoded, as URLs carry user names, passwords and vhosts.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A handle to one AMQP 1.0 connection, shared by clones. See the module docs.
#[derive(Clone)]
pub struct Amqp1Bus {
    inner: Arc<Inner>,
}

struct Inner {
    config: Amqp1Config,
    shutdown: CancellationToken,
    /// Every task of the bus, the supervisor's included.
    tasks: TaskTracker,
    /// The tasks that hold links (reply, consumer and catalog links): at shutdown the
    /// supervisor lets them detach their links (closed) before it closes the connection,
    /// since the plugin deletes a link's temporary queue only on such a detach.
    links: TaskTracker,
    /// `Some` while connected; consumers and listeners watch it to follow new connections.
    session: watch::Sender<Option<Arc<Session>>>,
    /// This bus's reply address (the `reply-to` of its requests); fixed for its lifetime.
    reply_address: String,
    pending: crate::pending::Pending,
    /// Bumped each time the connection is lost.
    losses: AtomicU64,
}

impl Amqp1Bus {
    /// Returns at once; a background task connects and keeps the connection until
    /// `shutdown`. While not connected every operation fails fast with `Unavailable`.
    pub fn start(config: Amqp1Config, shutdown: CancellationToken) -> Amqp1Bus {
        crate::metrics::connection_up(crate::metrics::AMQP1, false);
        let (session, _) = watch::channel(None);
        let reply_address = match config.dialect {
            Dialect::Broker => format!("/exchange/amq.direct/{}.{}", config.reply_queue, uuid::Uuid::new_v4().simple()),
            // The one session-enabled reply queue; each connection takes its own session.
            Dialect::ServiceBus => config.reply_queue.clone(),
        };
        let inner = Arc::new(Inner {
            config,
            shutdown,
            tasks: TaskTracker::new(),
            links: TaskTracker::new(),
            session,
            reply_address,
            pending: crate::pending::Pending::default(),
            losses: AtomicU64::new(0),
        });
        inner.tasks.spawn(connection::supervise(inner.clone()));
        Amqp1Bus { inner }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().is_some()
    }

    /// Waits until connected or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut session = self.inner.session.subscribe();
        tokio::time::timeout(timeout, session.wait_for(Option::is_some)).await.is_ok_and(|r| r.is_ok())
    }

    /// This bus's reply address.
    pub fn reply_address(&self) -> &str {
        &self.inner.reply_address
    }

    /// Worker side: consumes the request queues named in `queues`, following the set.
    pub async fn consumer_following(&self, queues: watch::Receiver<Vec<String>>) -> Result<Amqp1Consumer, BusError> {
        consume::start(&self.inner, queues).await
    }

    /// Worker side: a consumer of a fixed set of queues.
    pub async fn consumer(&self, queues: &[String]) -> Result<Amqp1Consumer, BusError> {
        let (_, queues) = watch::channel(queues.to_vec());
        consume::start(&self.inner, queues).await
    }

    /// Sends one catalog announcement.
    pub async fn announce(&self, body: Vec<u8>) -> Result<(), BusError> {
        let session = self.inner.current()?;
        let address = self.inner.catalog_address();
        let ttl = match self.inner.config.dialect {
            Dialect::Broker => None,
            Dialect::ServiceBus => Some(announcements::ANNOUNCEMENT_TTL.as_millis() as u32),
        };
        let message = message::announcement(body, ttl);
        session.send(&address, message).await
    }

    /// Every announcement from now on, re-subscribed after reconnects.
    pub fn catalog(&self) -> mpsc::Receiver<Vec<u8>> {
        let (announcement_tx, announcement_rx) = mpsc::channel(64);
        self.inner.links.spawn(announcements::listen(self.inner.clone(), announcement_tx));
        announcement_rx
    }

    /// Waits until the bus has shut down (after `shutdown` was cancelled): its links
    /// detached and its connection closed, each within a bound.
    pub async fn closed(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    fn current(&self) -> Result<Arc<Session>, BusError> {
        self.session.borrow().clone().ok_or_else(not_connected)
    }

    /// The address a request queue is sent to and received from; see
    /// [`is_queue_address`].
    fn queue_address(&self, queue: &str) -> String {
        match self.config.dialect {
            Dialect::Broker if self.config.declare_queues => format!("/queue/{queue}"),
            Dialect::Broker => format!("/amq/queue/{queue}"),
            Dialect::ServiceBus => queue.to_string(),
        }
    }

    fn catalog_address(&self) -> String {
        match self.config.dialect {
            Dialect::Broker => format!("/topic/{}", self.config.catalog),
            Dialect::ServiceBus => self.config.catalog.clone(),
        }
    }

    /// The connection is gone: fail the pending calls now rather than at their deadlines.
    fn mark_down(&self, reason: &str) {
        let was_up = self.session.send_replace(None).is_some();
        self.losses.fetch_add(1, Ordering::SeqCst);
        let failed_calls = self.pending.fail_all(|| unavailable(format!("lost the amqp 1.0 connection ({reason})")));
        if was_up || failed_calls > 0 {
            tracing::warn!(reason, failed_calls, "amqp 1.0 connection down");
        }
    }
}

/// Whether links to `address` must be attached with a durable terminus: the 3.x plugin
/// declares a `/queue/NAME` queue durable exactly when the attaching terminus is durable,
/// and a later attach whose durability differs is refused with `PRECONDITION_FAILED`,
/// which ends the whole AMQP session (measured on 3.10.8). Request queues are durable, as
/// the 0-9-1 transport declares them.
fn is_queue_address(address: &str) -> bool {
    address.starts_with("/queue/") || address.starts_with("/amq/queue/")
}

fn unavailable(what: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(what.to_string())
}

fn not_connected() -> BusError {
    unavailable("not connected to the amqp 1.0 peer")
}

/// Runs an operation under [`OPERATION_TIMEOUT`], its error as `Unavailable`.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(format!("{what}: {error}"))),
        Err(_) => Err(unavailable(format!("{what}: no answer in {OPERATION_TIMEOUT:?}"))),
    }
}

#[async_trait]
impl Transport for Amqp1Bus {
    fn requester(&self) -> Arc<dyn Requester> {
        Arc::new(self.clone())
    }

    async fn consume(&self, queues: watch::Receiver<Vec<String>>) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(self.consumer_following(queues).await?))
    }

    async fn announce(&self, announcement: Vec<u8>) -> Result<(), BusError> {
        Amqp1Bus::announce(self, announcement).await
    }

    fn announcements(&self) -> mpsc::Receiver<Vec<u8>> {
        self.catalog()
    }

    fn in_process(&self) -> bool {
        false
    }

    fn messaging_system(&self) -> &'static str {
        Requester::messaging_system(self)
    }

    /// `None`: see the module docs, "Queue depth".
    async fn queue_depth(&self, _queue: &str) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_endpoints_credentials_and_vhosts() {
        let check = |url: &str, endpoint: &str, hostname: Option<&str>, credentials: Credentials| {
            let config = Amqp1Config::from_url(url).unwrap();
            assert_eq!(
                (config.endpoint.as_str(), config.hostname.as_deref(), config.credentials),
                (endpoint, hostname, credentials),
                "{url}"
            );
        };
        let plain = |u: &str, p: &str| Credentials::Plain { username: u.into(), password: p.into() };
        check("amqp://guest:guest@127.0.0.1:5672/%2f", "127.0.0.1:5672", None, plain("guest", "guest"));
        check("amqp://guest:guest@127.0.0.1:5672", "127.0.0.1:5672", None, plain("guest", "guest"));
        check("amqp://u:p%40ss@broker/prod", "broker:5672", Some("vhost:prod"), plain("u", "p@ss"));
        check("amqp://broker:5673", "broker:5673", None, Credentials::Anonymous);
        assert!(Amqp1Config::from_url("amqps://broker").is_err());
        assert!(!format!("{:?}", plain("u", "secret")).contains("secret"));
    }
}
