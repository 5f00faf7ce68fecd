//! Catalog listeners, one per [`Amqp1Bus::catalog`] stream, following new sessions.
//! Broker: a receiving link, on its own queue bound to the catalog topic. Service Bus: a
//! queue's messages go to one receiver only, and topics need a subscription per listener
//! (made through the administration API, which needs more rights), so every listener
//! *peeks* the catalog queue (`$management` `peek-message`), from the start and then past
//! the last sequence number it saw, every [`PEEK_EVERY`]; announcements live
//! [`ANNOUNCEMENT_TTL`] and nobody takes them off the queue.
//!
//! [`Amqp1Bus::catalog`]: super::Amqp1Bus::catalog

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use tokio::sync::mpsc;

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::primitives::Symbol;

use super::connection::{sleep_or_cancel, subscribe_after};
use super::{bounded, message, servicebus, Dialect, Inner};

/// Service Bus: how long an announcement stays on the catalog queue. Longer than the
/// default announce interval (2 s) so every listener peeks each at least once; a listener
/// that starts sees the last few seconds' announcements at once.
pub(super) const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(5);
/// Service Bus: how often a listener peeks the catalog queue.
const PEEK_EVERY: Duration = Duration::from_millis(500);
/// Service Bus may still show a message that expired: peeked announcements enqueued longer
/// ago than this are skipped (generous, as the namespace's clock is not ours).
const STALE_AFTER: Duration = Duration::from_secs(60);
/// At most this many announcements per peek.
const PEEK_COUNT: i32 = 64;

pub(super) async fn listen(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    match inner.config.dialect {
        Dialect::Broker => receive(inner, announcement_tx).await,
        Dialect::ServiceBus => peek(inner, announcement_tx).await,
    }
}

async fn peek(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    let stop = inner.shutdown.child_token();
    let _stop = stop.clone().drop_guard();
    let address = inner.catalog_address();
    // Sequence numbers are the queue's: they survive our reconnects.
    let mut next: i64 = 0;
    let mut after = 0;
    loop {
        let attached = tokio::select! {
            _ = announcement_tx.closed() => return,
            attached = subscribe_after(&inner, after, &stop, "catalog", |session| {
                let address = &address;
                async move { session.management(address).await }
            }) => attached,
        };
        let Some((session, mut client)) = attached else { return };
        loop {
            let peeked = tokio::select! {
                _ = announcement_tx.closed() => return,
                _ = stop.cancelled() => return,
                _ = session.lost.cancelled() => break,
                peeked = servicebus::peek(&mut client, next, PEEK_COUNT) => peeked,
            };
            let messages = match peeked {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::debug!(%error, "peeking the catalog failed");
                    break;
                }
            };
            let got = messages.len();
            for bytes in messages {
                let Some(message) = servicebus::decode_message(&bytes) else { continue };
                let annotation = |name: &str| {
                    message.message_annotations.as_ref()?.0.get(&OwnedKey::from(Symbol::from(name))).cloned()
                };
                if let Some(Value::Long(sequence)) = annotation(servicebus::SEQUENCE_NUMBER_ANNOTATION) {
                    next = next.max(sequence + 1);
                }
                let stale = match annotation(servicebus::ENQUEUED_TIME_ANNOTATION) {
                    Some(Value::Timestamp(at)) => {
                        UNIX_EPOCH + Duration::from_millis(at.milliseconds().max(0) as u64) + STALE_AFTER
                            < SystemTime::now()
                    }
                    _ => false,
                };
                if !stale && announcement_tx.try_send(message::body_bytes(message.body)).is_err() {
                    tracing::debug!("catalog listener lags; announcement dropped");
                }
            }
            if got < PEEK_COUNT as usize {
                sleep_or_cancel(&stop, PEEK_EVERY).await;
            }
        }
        after = if session.lost.is_cancelled() { session.generation } else { session.generation - 1 };
    }
}

async fn receive(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    let stop = inner.shutdown.child_token();
    let _stop = stop.clone().drop_guard();
    let address = inner.catalog_address();
    let mut after = 0;
    loop {
        let attached = tokio::select! {
            _ = announcement_tx.closed() => return,
            attached = subscribe_after(&inner, after, &stop, "catalog", |session| {
                let address = &address;
                async move {
                    let mut handle = session.session.lock().await;
                    let name = format!("rfleet-catalog-{}", uuid::Uuid::new_v4().simple());
                    bounded("attach the catalog link", Receiver::attach(&mut handle, name, address.as_str())).await
                }
            }) => attached,
        };
        let Some((session, mut receiver)) = attached else { return };
        loop {
            let received = tokio::select! {
                _ = announcement_tx.closed() => return,
                // Not detached: see `route_replies`.
                _ = stop.cancelled() => return,
                _ = session.lost.cancelled() => break,
                received = receiver.recv::<Body<Value>>() => received,
            };
            match received {
                Ok(announcement) => {
                    let _ = receiver.accept(&announcement).await;
                    if announcement_tx.try_send(message::body_bytes(announcement.into_body())).is_err() {
                        tracing::debug!("catalog listener lags; announcement dropped");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "catalog link ended");
                    break;
                }
            }
        }
        after = if session.lost.is_cancelled() { session.generation } else { session.generation - 1 };
    }
}
