//! Connecting to the broker and the one loop that keeps a connection: a session per
//! connection, numbered by a generation, lost and replaced as a whole (module docs:
//! "Recovery").

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio_util::sync::CancellationToken;

use super::{bounded, publish, topology, unavailable, Inner};
use crate::{metrics, BusError};

/// Longest one try to connect (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the states of the connection and the bus's channels:
/// a channel the broker closes raises no connection event.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// Longest closing a lost connection may take before the supervisor moves on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One usable connection and the channels the bus itself keeps on it. Replaced, never
/// repaired: when any part of it fails the whole session is dropped.
pub(super) struct Session {
    /// Grows with every connection: consumers and listeners re-subscribe when it changes.
    pub(super) generation: u64,
    pub(super) connection: Connection,
    /// Confirm mode; carries requests, dead letters and announcements.
    pub(super) publisher: Channel,
    reply_channel: Channel,
    /// Cancelled when the reply consumer ends: without it no call can be answered.
    replies_ended: CancellationToken,
}

impl Session {
    pub(super) fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.reply_channel.status().connected()
            && !self.replies_ended.is_cancelled()
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("shutting down")]
    Shutdown,
    #[error("{0}")]
    ConnectionError(lapin::Error),
    #[error("the connection or one of the bus's channels closed")]
    Closed,
    #[error("the reply consumer ended")]
    RepliesEnded,
}

/// The one reconnect loop: connect (retrying with backoff), publish the session, watch it
/// until it is lost, mark the bus down, close what is left, and start over; until shutdown.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let mut generation = 0;
    loop {
        // A fresh backoff for each connection: a broker back after an outage is used again
        // within a second or two, whatever happened before.
        let connecting = (|| open_session(&inner, generation + 1)).retry(reconnect_backoff()).notify(|error, delay| {
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
        // Counted before the session is published: whoever sees the bus up sees it counted.
        metrics::connection_up(metrics::AMQP, true);
        if generation > 1 {
            metrics::reconnected(metrics::AMQP);
        }
        inner.session.send_replace(Some(session.clone()));
        let end = until_lost(&inner, &session).await;
        metrics::connection_up(metrics::AMQP, false);
        inner.mark_down(&end.to_string());
        // Whatever still works on the old connection (a channel the broker did not close)
        // must not outlive the session: its consumers would take deliveries nobody reads.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.connection.close(200, "reconnecting".into())).await;
        if matches!(end, SessionEnd::Shutdown) || inner.shutdown.is_cancelled() {
            break;
        }
    }
    inner.mark_down("shutting down");
}

/// Waits between tries to connect or to subscribe: exponential from 100 ms, jittered so
/// that a fleet that lost its broker together does not come back in step, and under 2 s
/// (backon's jitter adds up to the delay again, so the cap is 1 s). It never gives up.
pub(crate) fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
}

/// One try at a usable session: the TLS settings, the connection (bounded), the shared
/// topology, the publisher, the reply queue and its consumer.
async fn open_session(inner: &Arc<Inner>, generation: u64) -> Result<Session, BusError> {
    // Checked at start-up too; here it can only be a CA file broken since then.
    let tls = inner.config.tls_config().map_err(unavailable)?;
    let connecting = async {
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
    match set_up(inner, &connection).await {
        Ok((publisher, reply_channel, replies_ended)) => {
            Ok(Session { generation, connection, publisher, reply_channel, replies_ended })
        }
        Err(error) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "setup failed".into())).await;
            Err(error)
        }
    }
}

fn connection_properties(config: &super::AmqpConfig) -> ConnectionProperties {
    // lapin's auto-recovery stays off (the default): the supervisor replaces a lost
    // connection as a whole, so there is one place that decides, and one backoff.
    ConnectionProperties::default().with_connection_name(config.connection_name.as_str().into())
}

/// Declares the shared topology, opens the publisher channel, and declares and consumes
/// the reply queue, routing its replies from now on.
async fn set_up(
    inner: &Arc<Inner>,
    connection: &Connection,
) -> Result<(Channel, Channel, CancellationToken), BusError> {
    topology::declare_shared(connection, &inner.config).await?;
    let publisher = bounded("open channel", connection.create_channel()).await?;
    bounded("enable publisher confirms", publisher.confirm_select(ConfirmSelectOptions::default())).await?;
    let reply_channel = bounded("open channel", connection.create_channel()).await?;
    let replies = topology::consume_private_queue(&reply_channel, &inner.reply_queue, None).await?;
    let replies_ended = CancellationToken::new();
    inner.tasks.spawn(publish::route_replies(Arc::downgrade(inner), replies, replies_ended.clone()));
    Ok((publisher, reply_channel, replies_ended))
}

/// Follows one session until it is lost (or shutdown). lapin reports a lost connection as
/// an event; a channel the broker closed shows only in its status, hence the polling.
async fn until_lost(inner: &Inner, session: &Session) -> SessionEnd {
    let mut events = session.connection.events_listener();
    let mut poll = tokio::time::interval(STATUS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return SessionEnd::Shutdown,
            _ = session.replies_ended.cancelled() => return SessionEnd::RepliesEnded,
            event = events.next() => match event {
                Some(Event::Error(error)) => return SessionEnd::ConnectionError(error),
                // The connection dropped its events: it is gone.
                None => return SessionEnd::Closed,
                Some(_) => {}
            },
            _ = poll.tick() => {
                if !session.healthy() {
                    return SessionEnd::Closed;
                }
            }
        }
    }
}

/// Waits for a session newer than generation `after` and runs `subscribe` on it; when that
/// fails, tries again after the reconnect backoff, on whichever session is current by then.
/// Returns the session's generation and what `subscribe` made; `None` once `stop` is
/// cancelled or the bus is gone. What consumers and catalog listeners do to follow the bus
/// to a new connection.
pub(super) async fn subscribe_after<T, F, Fut>(
    inner: &Inner,
    after: u64,
    stop: &CancellationToken,
    what: &str,
    mut subscribe: F,
) -> Option<(u64, T)>
where
    F: FnMut(Arc<Session>) -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut sessions = inner.session.subscribe();
    let mut delays = reconnect_backoff().build();
    loop {
        let session = tokio::select! {
            _ = stop.cancelled() => return None,
            session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.generation > after)) => session.ok()?.clone()?,
        };
        let generation = session.generation;
        match subscribe(session).await {
            Ok(subscribed) => return Some((generation, subscribed)),
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                tracing::warn!(%error, what, generation, retry_in_ms = delay.as_millis() as u64, "subscribing failed");
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
