//! Connecting (TCP, SASL, `open`, `begin`) and the one loop that keeps a connection: a
//! session per connection, numbered by a generation, lost and replaced as a whole (module
//! docs: "Recovery"); and the sending links a session caches, one per address.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, Retryable};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Data, Message, Outcome, Target, TerminusDurability};
use fe2o3_amqp::{Connection, Sender, Session as AmqpSession};
use fe2o3_amqp_management::client::MgmtClient;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::servicebus::{self, Cbs};
use super::{bounded, publish, unavailable, Credentials, Inner};
// The 0-9-1 transport's: exponential from 100 ms, jittered, under 2 s, never giving up.
use crate::amqp::reconnect_backoff;
use crate::{metrics, BusError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One usable connection's AMQP session and the sending links attached on it. Replaced,
/// never repaired.
pub(super) struct Session {
    pub(super) generation: u64,
    /// Links are attached through it (`&mut`), one at a time.
    pub(super) session: tokio::sync::Mutex<SessionHandle<()>>,
    /// Sending links by address; a link whose send failed is dropped from here and
    /// attached again on next use.
    senders: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Sender>>>>,
    /// Cancelled when the session is lost (the reply link ended, the connection closed).
    pub(super) lost: CancellationToken,
    /// Service Bus: the connection's CBS link, which signs in for each entity.
    pub(super) cbs: Option<Cbs>,
    /// Service Bus: this connection's session of the reply queue (`reply-to-group-id`).
    pub(super) reply_group: Option<String>,
}

impl Session {
    /// Sends `message` to `address` and waits for the peer's outcome: `accepted` is sent.
    pub(super) async fn send(&self, address: &str, message: Message<Data>) -> Result<(), BusError> {
        let sender = self.sender(address).await?;
        let mut sender = sender.lock().await;
        let sent = bounded(&format!("send to '{address}'"), sender.send(message)).await;
        match sent {
            Ok(Outcome::Accepted(_)) => Ok(()),
            Ok(outcome) => Err(unavailable(format!("the peer did not accept the message to '{address}': {outcome:?}"))),
            Err(error) => {
                self.senders.lock().remove(address);
                Err(error)
            }
        }
    }

    async fn sender(&self, address: &str) -> Result<Arc<tokio::sync::Mutex<Sender>>, BusError> {
        if let Some(sender) = self.senders.lock().get(address) {
            return Ok(sender.clone());
        }
        let mut session = self.session.lock().await;
        // Another caller may have attached it while we waited for the session.
        if let Some(sender) = self.senders.lock().get(address) {
            return Ok(sender.clone());
        }
        self.authorize(address).await?;
        let name = format!("rfleet-sender-{}", uuid::Uuid::new_v4().simple());
        let mut target = Target::builder().address(address.to_string());
        if super::is_queue_address(address) {
            target = target.durable(TerminusDurability::Configuration);
        }
        let attaching = Sender::builder().name(name).target(target.build()).attach(&mut session);
        let sender = bounded(&format!("attach a sender to '{address}'"), attaching).await?;
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        self.senders.lock().insert(address.to_string(), sender.clone());
        Ok(sender)
    }
}

impl Session {
    /// Service Bus: signs in for `address`'s entity (once per token life). Broker: nothing.
    pub(super) async fn authorize(&self, address: &str) -> Result<(), BusError> {
        match &self.cbs {
            Some(cbs) => cbs.authorize(address).await,
            None => Ok(()),
        }
    }

    /// A `$management` client of `entity` (Service Bus), signed in for it.
    pub(super) async fn management(&self, entity: &str) -> Result<MgmtClient, BusError> {
        self.authorize(entity).await?;
        let mut session = self.session.lock().await;
        let attaching = MgmtClient::builder()
            .management_node_address(format!("{entity}/{}", servicebus::MANAGEMENT_NODE))
            .client_node_addr(format!("rfleet-management-{}", uuid::Uuid::new_v4().simple()))
            .attach(&mut session);
        bounded(&format!("attach to {entity}/$management"), attaching).await
    }
}

/// The one reconnect loop, as the 0-9-1 transport's `supervise`.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let mut generation = 0;
    loop {
        let connecting = (|| open_session(&inner, generation + 1)).retry(reconnect_backoff()).notify(|error, delay| {
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot connect to the amqp 1.0 peer");
        });
        let (mut connection, session) = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            opened = connecting => match opened {
                Ok(opened) => opened,
                Err(_) => continue,
            },
        };
        let session = Arc::new(session);
        generation = session.generation;
        tracing::info!(generation, reply_address = %inner.reply_address, "connected to the amqp 1.0 peer");
        metrics::connection_up(metrics::AMQP1, true);
        if generation > 1 {
            metrics::reconnected(metrics::AMQP1);
        }
        if session.cbs.is_some() {
            inner.links.spawn(servicebus::maintain(inner.clone(), session.clone()));
        }
        inner.session.send_replace(Some(session.clone()));
        let reason = tokio::select! {
            _ = inner.shutdown.cancelled() => "shutting down".to_string(),
            _ = session.lost.cancelled() => "the reply link ended".to_string(),
            closed = connection.on_close() => match closed {
                Ok(()) => "the peer closed the connection".to_string(),
                Err(error) => format!("connection error: {error}"),
            },
        };
        metrics::connection_up(metrics::AMQP1, false);
        if inner.shutdown.is_cancelled() {
            // The link tasks saw the shutdown too and detach their links: wait for them
            // (bounded), so the plugin deletes their temporary queues.
            inner.links.close();
            let _ = tokio::time::timeout(super::DETACH_ON_SHUTDOWN, inner.links.wait()).await;
        }
        session.lost.cancel();
        inner.mark_down(&reason);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
        if inner.shutdown.is_cancelled() {
            break;
        }
    }
    inner.mark_down("shutting down");
}

/// One try: TCP, SASL, `open`, `begin`, and the reply link with its router.
async fn open_session(inner: &Arc<Inner>, generation: u64) -> Result<(ConnectionHandle<()>, Session), BusError> {
    let config = &inner.config;
    let connecting = async {
        let stream = tokio::net::TcpStream::connect(&config.endpoint).await.map_err(|e| e.to_string())?;
        // Every send waits for the peer's outcome: Nagle's algorithm would hold each small
        // frame back for the delayed ACK of the one before (tens of ms per request).
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let host = config.endpoint.rsplit_once(':').map_or(config.endpoint.as_str(), |(host, _)| host);
        if config.tls {
            let server_name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
            let tls = crate::amqp::tls::client_config(config.ca_file.as_deref()).map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let stream = connector.connect(server_name, stream).await.map_err(|e| format!("tls: {e}"))?;
            open(config, host, stream).await
        } else {
            open(config, host, stream).await
        }
    };
    let mut connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Err(unavailable(format!("connecting to {}: {error}", config.endpoint))),
        Err(_) => return Err(unavailable(format!("connecting timed out after {CONNECT_TIMEOUT:?}"))),
    };
    match set_up(inner, &mut connection, generation).await {
        Ok(session) => Ok((connection, session)),
        Err(error) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
            Err(error)
        }
    }
}

/// AMQP's `open` on `stream` (TCP, or TLS over it), signing in by SASL.
async fn open<Io>(config: &super::Amqp1Config, host: &str, stream: Io) -> Result<ConnectionHandle<()>, String>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let sasl = match &config.credentials {
        Credentials::Plain { username, password } => {
            SaslProfile::Plain { username: username.clone(), password: password.clone() }
        }
        // Service Bus signs in per entity through CBS, after SASL ANONYMOUS.
        Credentials::Anonymous | Credentials::SharedAccess(_) | Credentials::EntraId(_) => SaslProfile::Anonymous,
    };
    Connection::builder()
        .container_id(config.connection_name.clone())
        .hostname(config.hostname.as_deref().or(Some(host)))
        .sasl_profile(sasl)
        .open_with_stream(stream)
        .await
        .map_err(|e| e.to_string())
}

async fn set_up(
    inner: &Arc<Inner>,
    connection: &mut ConnectionHandle<()>,
    generation: u64,
) -> Result<Session, BusError> {
    let mut session = bounded("begin a session", AmqpSession::begin(connection)).await?;
    let tokens = match &inner.config.credentials {
        Credentials::SharedAccess(access) => Some(servicebus::Tokens::SharedAccess(access.clone())),
        Credentials::EntraId(credential) => Some(servicebus::Tokens::EntraId(credential.clone())),
        Credentials::Plain { .. } | Credentials::Anonymous => None,
    };
    let cbs = match tokens {
        Some(tokens) => {
            let host = inner.config.hostname.clone().unwrap_or_default();
            let cbs = Cbs::attach(&mut session, host, tokens, inner.config.token_lifetime).await?;
            cbs.authorize(&inner.reply_address).await?;
            Some(cbs)
        }
        None => None,
    };
    let reply_group = (inner.config.dialect == super::Dialect::ServiceBus)
        .then(|| format!("{}-{}", inner.config.connection_name, uuid::Uuid::new_v4().simple()));
    let replies = publish::attach_replies(inner, &mut session, reply_group.as_deref()).await?;
    let lost = CancellationToken::new();
    inner.links.spawn(publish::route_replies(Arc::downgrade(inner), replies, lost.clone()));
    Ok(Session {
        generation,
        session: tokio::sync::Mutex::new(session),
        senders: Mutex::default(),
        lost,
        cbs,
        reply_group,
    })
}

/// Waits for a session newer than generation `after` and runs `subscribe` on it, trying
/// again after the backoff when it fails. `None` once `stop` is cancelled or the bus gone.
pub(super) async fn subscribe_after<T, F, Fut>(
    inner: &Inner,
    after: u64,
    stop: &CancellationToken,
    what: &str,
    mut subscribe: F,
) -> Option<(Arc<Session>, T)>
where
    F: FnMut(Arc<Session>) -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut sessions = inner.session.subscribe();
    let mut delays = reconnect_backoff().build();
    let mut after = after;
    loop {
        let session = tokio::select! {
            _ = stop.cancelled() => return None,
            session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.generation > after)) => session.ok()?.clone()?,
        };
        match subscribe(session.clone()).await {
            Ok(subscribed) => return Some((session, subscribed)),
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                tracing::warn!(%error, what, generation = session.generation, retry_in_ms = delay.as_millis() as u64, "attaching failed");
                // The same session may do after the pause (the failure was the link's).
                after = session.generation - 1;
                sleep_or_cancel(stop, delay).await;
            }
        }
    }
}

pub(super) async fn sleep_or_cancel(stop: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
