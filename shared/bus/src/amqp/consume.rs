//! The worker's side: subscriptions to request queues (a channel each), the pump that
//! merges their deliveries into one [`AmqpConsumer`] and follows the bus to new
//! connections, and settling a delivery (reply, ack, reject, dead-letter).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connection::{subscribe_after, Session};
use super::publish::publish;
use super::{bounded, not_connected, topology, unavailable, Inner, DELIVERY_COUNT_HEADER, QUEUE_HEADER, REASON_HEADER};
use crate::{BusError, Consumer, ContentType, Delivery, DeliveryHandle};

/// Subscribes to `queues` on the current connection (failing at once when there is none)
/// and starts the pump that keeps the subscription across connections.
pub(super) async fn start(inner: &Arc<Inner>, queues: Vec<String>) -> Result<AmqpConsumer, BusError> {
    let session = inner.current()?;
    let subscriptions = subscribe(inner, &session, &queues).await?;
    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let stop = inner.shutdown.child_token();
    let pump = ConsumerPump { inner: inner.clone(), queues, delivery_tx, stop: stop.clone() };
    let done = inner.tasks.spawn(pump.run(session.generation, subscriptions));
    Ok(AmqpConsumer { delivery_rx, stop, done: Some(done) })
}

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
        topology::declare_request_queue(&channel, &inner.config, queue).await?;
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
/// subscribes again when the bus moved to a new connection.
struct ConsumerPump {
    inner: Arc<Inner>,
    queues: Vec<String>,
    delivery_tx: mpsc::UnboundedSender<Delivery>,
    stop: CancellationToken,
}

/// Why [`ConsumerPump::forward`] returned.
enum Forwarded {
    /// The consumer was shut down or dropped, or the bus is gone.
    Stopped,
    /// The subscriptions' connection is lost (or the broker cancelled every consumer):
    /// subscribe again on the next one.
    SessionLost,
}

impl ConsumerPump {
    async fn run(self, mut generation: u64, mut subscriptions: Vec<Subscription>) {
        let mut sessions = self.inner.session.subscribe();
        loop {
            match self.forward(&mut sessions, generation, &mut subscriptions).await {
                Forwarded::Stopped => {
                    self.cancel(subscriptions).await;
                    return;
                }
                Forwarded::SessionLost => {}
            }
            // The old channels went with their connection. Deliveries they had not settled
            // are redelivered by the broker; their handles' acks fail (at-least-once).
            subscriptions.clear();
            let subscribed = subscribe_after(&self.inner, generation, &self.stop, "request queues", |session| {
                let pump = &self;
                async move { subscribe(&pump.inner, &session, &pump.queues).await }
            })
            .await;
            let Some((fresh_generation, fresh)) = subscribed else { return };
            tracing::info!(queues = ?self.queues, generation = fresh_generation, "subscribed on a new broker connection");
            generation = fresh_generation;
            subscriptions = fresh;
        }
    }

    /// Forwards deliveries until stopped or the session `generation` is no longer the
    /// bus's current one.
    async fn forward(
        &self,
        sessions: &mut watch::Receiver<Option<Arc<Session>>>,
        generation: u64,
        subscriptions: &mut [Subscription],
    ) -> Forwarded {
        let streams = subscriptions.iter_mut().map(|s| {
            let queue = s.queue.clone();
            let channel = s.channel.clone();
            (&mut s.consumer).map(move |d| (queue.clone(), channel.clone(), d))
        });
        let mut merged = futures::stream::select_all(streams);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Forwarded::Stopped,
                changed = sessions.changed() => {
                    if changed.is_err() {
                        return Forwarded::Stopped;
                    }
                    let current = sessions.borrow_and_update().as_ref().map(|s| s.generation);
                    if current != Some(generation) {
                        return Forwarded::SessionLost;
                    }
                }
                item = merged.next() => match item {
                    Some((queue, channel, Ok(delivery))) => {
                        let delivery = to_delivery(&self.inner, queue, channel, delivery);
                        if self.delivery_tx.send(delivery).is_err() {
                            // The AmqpConsumer is gone; the delivery's drop requeues it.
                            return Forwarded::Stopped;
                        }
                    }
                    // A lost connection's error, reported before the consumer ends; the
                    // session's end is noticed through `sessions`.
                    Some((queue, _, Err(error))) => tracing::debug!(%queue, %error, "consumer interrupted"),
                    None => {
                        // Every consumer ended. On a session still current that is the
                        // broker cancelling them (queues deleted): wait for the next
                        // connection rather than spin on this one.
                        if sessions.borrow().as_ref().is_some_and(|s| s.generation == generation) {
                            tracing::warn!(queues = ?self.queues, "the broker cancelled the consumers");
                        }
                        return Forwarded::SessionLost;
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

    /// Fails when the delivery's channel is gone: the broker redelivers the message, so
    /// replying to it or dead-lettering it now would answer or bury it twice.
    fn ensure_channel(&self) -> Result<(), BusError> {
        if self.channel.status().connected() {
            Ok(())
        } else {
            Err(not_connected())
        }
    }
}

#[async_trait]
impl DeliveryHandle for AmqpHandle {
    async fn reply(&self, content_type: ContentType, body: Vec<u8>) -> Result<(), BusError> {
        let Some(reply_to) = self.properties.reply_to().as_ref() else {
            tracing::info!(queue = %self.queue, correlation_id = self.correlation_id(), "request has no reply_to; reply dropped");
            return Ok(());
        };
        self.ensure_channel()?;
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
        settle("basic.ack", acker.ack(BasicAckOptions::default())).await
    }

    async fn reject(&mut self, requeue: bool) -> Result<(), BusError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        settle("basic.nack", acker.nack(BasicNackOptions { requeue, multiple: false })).await
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), BusError> {
        if self.acker.is_none() {
            return Ok(());
        }
        // The copy goes out on the bus's publisher, possibly on a newer connection than the
        // delivery's: check the delivery can still be acknowledged first.
        self.ensure_channel()?;
        let session = self.inner.current()?;
        tracing::warn!(queue = %self.queue, correlation_id = self.correlation_id(), reason, "dead-lettering request");
        let properties = dead_letter_properties(&self.properties, reason, &self.queue);
        let exchange = self.inner.config.dead_letter_exchange.clone();
        publish(&session.publisher, &exchange, &self.queue, false, &self.body, properties).await?;
        self.ack().await
    }
}

/// Runs an acknowledgement under the operation bound. lapin answers `Ok(false)` for an
/// acker that was already used (never here: the handle gives its acker up once) or whose
/// channel died: then the broker redelivers the message, and the worker must hear that it
/// was not settled.
async fn settle(what: &str, settling: impl std::future::Future<Output = lapin::Result<bool>>) -> Result<(), BusError> {
    match bounded(what, settling).await? {
        true => Ok(()),
        false => Err(unavailable(format!("{what}: the delivery's channel is gone; the broker delivers it again"))),
    }
}

/// A dead letter's properties: the original's, less `expiration` (a dead letter must stay
/// to be read), persistent, with the reason and the queue it came from as headers.
fn dead_letter_properties(original: &BasicProperties, reason: &str, queue: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(QUEUE_HEADER.into(), AMQPValue::LongString(queue.into()));
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
    properties
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
            if let Err(error) = settle("basic.nack", acker.nack(BasicNackOptions { requeue: true, multiple: false })).await {
                tracing::debug!(%queue, %error, "requeueing a dropped delivery failed; the broker requeues it with its channel");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
