//! Publishing (with publisher confirms where the channel has them) and the dispatcher's
//! side: calls waiting for replies, and the reply consumer that hands replies to them.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio_util::sync::CancellationToken;

use super::{bounded, unavailable, AmqpBus, Inner};
use crate::{metrics, BusError, Outgoing, Requester, TRACEPARENT_HEADER};

/// The longest `expiration` RabbitMQ takes (its `MAX_EXPIRY_TIMER`, 2^32 - 1 ms, about 49
/// days): a longer one is refused by closing the channel, the shared publisher's included.
/// A deadline further away than that is sent as that.
const MAX_EXPIRATION_MS: u64 = u32::MAX as u64;

/// Publishes on `channel`; on a channel in confirm mode (the session's publisher), waits for
/// the broker's confirm.
pub(super) async fn publish(
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

#[async_trait]
impl Requester for AmqpBus {
    async fn call(&self, message: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError> {
        let inner = &self.inner;
        super::check_queue_name(&message.queue)?;
        let session = inner.current()?;
        let losses = inner.losses.load(Ordering::SeqCst);
        let correlation_id = message.correlation_id;
        let queue = message.queue;
        let registered = inner.pending.register(&correlation_id)?;
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
            if let Some(traceparent) = &message.traceparent {
                let mut headers = lapin::types::FieldTable::default();
                headers.insert(
                    TRACEPARENT_HEADER.into(),
                    lapin::types::AMQPValue::LongString(traceparent.as_str().into()),
                );
                properties = properties.with_headers(headers);
            }
            let published = publish(&session.publisher, "", &queue, true, &message.body, properties).await;
            if let Err(BusError::Unroutable { .. }) = &published {
                // The queue vanished since we declared it (deleted, or a broker without
                // its data): declare it again next time.
                inner.declared.lock().remove(&queue);
            }
            published
        };
        // The connection dropped between our look at it and the confirm: the reply, if
        // any, went to a reply queue that no longer exists.
        let lost = || {
            (inner.losses.load(Ordering::SeqCst) != losses)
                .then(|| unavailable("lost the broker connection while publishing"))
        };
        registered.publish_and_await(metrics::AMQP, &queue, deadline, publishing, lost).await
    }

    fn queue_for(&self, model: &str, version: Option<&str>) -> String {
        super::queue_name(&self.inner.config.queue_prefix, model, version)
    }

    fn is_ready(&self) -> bool {
        self.inner.current().is_ok_and(|session| session.healthy())
    }

    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }
}

/// Hands each reply to the caller waiting for its correlation id, until the reply consumer
/// ends: its connection is gone, or the broker cancelled it. Either way the session is
/// lost (`replies_ended`), so the bus reconnects and consumes the reply queue anew.
pub(super) async fn route_replies(inner: Weak<Inner>, mut replies: lapin::Consumer, replies_ended: CancellationToken) {
    let _ended = replies_ended.drop_guard();
    while let Some(reply) = replies.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let reply = match reply {
            Ok(reply) => reply,
            // The connection's error, reported before the stream ends; the supervisor
            // fails the pending calls.
            Err(error) => {
                tracing::debug!(%error, "reply consumer interrupted");
                continue;
            }
        };
        let Some(correlation_id) = reply.properties.correlation_id().as_ref().map(ShortString::to_string) else {
            metrics::reply_dropped(metrics::AMQP);
            tracing::debug!("dropping reply without correlation id");
            continue;
        };
        let waiter = inner.pending.take(&correlation_id);
        match waiter {
            Some(reply_tx) => {
                let _ = reply_tx.send(Ok(reply.data));
            }
            None => {
                metrics::reply_dropped(metrics::AMQP);
                tracing::debug!(%correlation_id, "dropping late or duplicate reply");
            }
        }
    }
}
