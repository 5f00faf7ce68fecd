//! The worker's side: subscriptions to request queues (a channel each) that follow a set
//! of queue names as it changes, the pump that merges their deliveries into one
//! [`AmqpConsumer`] and follows the bus to new connections, and settling a delivery (reply,
//! ack, reject, dead-letter).
//!
//! # Following a set of queues
//! The worker hands [`start`] a `watch` of queue names (name queues and version queues;
//! it changes them as models are loaded or removed). The pump keeps one subscription
//! (channel with `basic.qos(prefetch)`, declaration, `basic.consume`) per name in the set
//! on the bus's current connection:
//! - a name added to the set is subscribed on the current connection; one that cannot be
//!   (say its declaration is refused) is tried again with the reconnect backoff, the rest
//!   are served meanwhile;
//! - a name taken out of the set is cancelled (`basic.cancel`): the broker sends that
//!   consumer nothing more, and what waits in the queue stays there for other consumers;
//! - after a reconnect the set as it is then is subscribed (`subscribe_after`: the pump
//!   never connects, it follows the one reconnect loop's generations);
//! - a name the broker would refuse (`check_queue_name`) is logged as an error and left
//!   out; a sender that is dropped leaves the last set in place.
//!
//! Deliveries of a queue taken out of the set:
//! - those [`AmqpConsumer::next`] already returned stay the worker's to settle. Each holds
//!   its channel open (lapin closes a channel with its last handle), so reply, ack and
//!   dead-letter work after the cancel; the channel closes once its consumer has ended and
//!   the last of them is settled. If the connection goes first, the broker requeues them
//!   (at-least-once, as always) and their acks fail.
//! - those received but not yet returned by `next` (prefetched, or sent by the broker
//!   before its cancel-ok) are given back at once (`basic.nack` with requeue), never handed
//!   to the worker: once the worker has sent the new set, `next` returns no delivery of a
//!   removed queue. A message given back counts as a delivery (`redelivered`, and
//!   `x-delivery-count` on quorum queues, toward their `delivery-limit`). One given back
//!   before the broker saw the cancel may come back once to the same consumer, and is then
//!   given back again, after the cancel.
//!
//! A worker that removes a model should therefore take its queues out of the set before it
//! stops being able to score it, and still answer the deliveries `next` returned earlier.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use backon::BackoffBuilder;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connection::{reconnect_backoff, subscribe_after, Session};
use super::publish::publish;
use super::{
    bounded, check_queue_name, not_connected, topology, unavailable, Inner, DELIVERY_COUNT_HEADER, OPERATION_TIMEOUT,
    QUEUE_HEADER, REASON_HEADER,
};
use crate::{BusError, Consumer, ContentType, Delivery, DeliveryHandle, TRACEPARENT_HEADER};

/// Subscribes to the set `queues` holds now on the current connection (failing at once when
/// there is none, or when one of them cannot be subscribed) and starts the pump that
/// follows the set and the bus's connections.
pub(super) async fn start(inner: &Arc<Inner>, queues: watch::Receiver<Vec<String>>) -> Result<AmqpConsumer, BusError> {
    let session = inner.current()?;
    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let stop = inner.shutdown.child_token();
    let mut pump = ConsumerPump {
        inner: inner.clone(),
        queues: queues.clone(),
        set_fixed: false,
        delivery_tx,
        stop: stop.clone(),
        subscribed: HashMap::new(),
        streams: SelectAll::new(),
        next_id: 0,
        retry: None,
        retry_delays: reconnect_backoff().build(),
    };
    let wanted = wanted(&mut pump.queues);
    for opened in subscribe(inner, &session, &wanted).await? {
        pump.install(opened);
    }
    let done = inner.tasks.spawn(pump.run(session));
    Ok(AmqpConsumer { delivery_rx, queues, stop, done: Some(done) })
}

/// The set's names as the pump subscribes them: each once, in order, without the ones the
/// broker would refuse (logged: no worker can serve such a queue).
fn wanted(queues: &mut watch::Receiver<Vec<String>>) -> Vec<String> {
    let mut seen = HashSet::new();
    let set = queues.borrow_and_update().clone();
    set.into_iter()
        .filter(|queue| seen.insert(queue.clone()))
        .filter(|queue| match check_queue_name(queue) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "not consuming a request queue the broker would refuse");
                false
            }
        })
        .collect()
}

/// A request queue's channel and consumer, just subscribed.
struct Opened {
    queue: String,
    channel: Channel,
    consumer: lapin::Consumer,
}

/// Opens a channel with `basic.qos(prefetch)`, declares the queue and starts consuming it.
/// On failure what was opened is dropped, and lapin cancels and closes it.
async fn subscribe_one(inner: &Inner, session: &Session, queue: &str) -> Result<Opened, BusError> {
    let channel = bounded("open channel", session.connection.create_channel()).await?;
    // Per channel (global = false): quorum queues refuse consumers on a channel with a
    // global limit. One channel per queue, so each queue gets `prefetch`.
    bounded("basic.qos", channel.basic_qos(inner.config.prefetch.max(1), BasicQosOptions { global: false })).await?;
    topology::declare_request_queue(&channel, &inner.config, queue).await?;
    let consumer = bounded(
        &format!("consume queue '{queue}'"),
        channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await?;
    tracing::debug!(%queue, "consuming");
    Ok(Opened { queue: queue.to_string(), channel, consumer })
}

/// Subscribes every queue in `queues`, or none: the first failure drops what was opened.
async fn subscribe(inner: &Inner, session: &Session, queues: &[String]) -> Result<Vec<Opened>, BusError> {
    let mut opened = Vec::with_capacity(queues.len());
    for queue in queues {
        opened.push(subscribe_one(inner, session, queue).await?);
    }
    Ok(opened)
}

/// A queue the pump consumes on the current connection. Its deliveries come through the
/// pump's `streams`, tagged with `id`.
struct Subscription {
    /// Tells this subscription's stream from an earlier one of the same queue that is still
    /// draining after its cancel.
    id: u64,
    channel: Channel,
    consumer_tag: ShortString,
}

/// What one subscription's stream yields: its deliveries, then `Ended` once its consumer
/// is (after our cancel-ok, the broker's cancel, or the connection's end).
enum Event {
    /// Boxed: a delivery is large, and the pump moves events by value.
    Delivery(Box<lapin::Result<lapin::message::Delivery>>),
    Ended,
}

struct Item {
    id: u64,
    queue: String,
    channel: Channel,
    event: Event,
}

/// Moves deliveries from the broker's consumers into the [`AmqpConsumer`]'s stream,
/// follows the set of queues, and subscribes again when the bus moved to a new connection.
struct ConsumerPump {
    inner: Arc<Inner>,
    queues: watch::Receiver<Vec<String>>,
    /// The set's sender is gone: the set stays as it is.
    set_fixed: bool,
    delivery_tx: mpsc::UnboundedSender<(String, Delivery)>,
    stop: CancellationToken,
    /// By queue name: what is consumed on the current connection.
    subscribed: HashMap<String, Subscription>,
    /// Every subscription's stream, cancelled ones until they end.
    streams: SelectAll<BoxStream<'static, Item>>,
    next_id: u64,
    /// Set while a queue of the set could not be subscribed: when to try again.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    retry_delays: backon::ExponentialBackoff,
}

/// Why [`ConsumerPump::forward`] returned.
enum Forwarded {
    /// The consumer was shut down or dropped, or the bus is gone.
    Stopped,
    /// The subscriptions' connection is lost: subscribe again on the next one.
    SessionLost,
}

/// What woke the pump.
enum Wake {
    Stop,
    SessionChanged,
    /// `false`: the set's sender is gone.
    SetChanged(bool),
    Retry,
    Item(Item),
}

impl ConsumerPump {
    async fn run(mut self, mut session: Arc<Session>) {
        let mut sessions = self.inner.session.subscribe();
        loop {
            match self.forward(&mut sessions, &session).await {
                Forwarded::Stopped => {
                    self.cancel_all().await;
                    return;
                }
                Forwarded::SessionLost => {}
            }
            // The old channels went with their connection. Deliveries they had not settled
            // are redelivered by the broker; their handles' acks fail (at-least-once).
            self.subscribed.clear();
            self.streams = SelectAll::new();
            self.retry = None;
            let inner = self.inner.clone();
            let queues = &mut self.queues;
            let subscribed = subscribe_after(&inner, session.generation, &self.stop, "request queues", |fresh| {
                // The set as it is now, at every try.
                let wanted = wanted(queues);
                let inner = inner.clone();
                async move {
                    let opened = subscribe(&inner, &fresh, &wanted).await?;
                    Ok((fresh, opened))
                }
            })
            .await;
            let Some((generation, (fresh, opened))) = subscribed else { return };
            let queues: Vec<_> = opened.iter().map(|o| o.queue.clone()).collect();
            tracing::info!(?queues, generation, "subscribed on a new broker connection");
            for opened in opened {
                self.install(opened);
            }
            session = fresh;
        }
    }

    /// Forwards deliveries and follows the set until stopped or `session` is no longer the
    /// bus's current one.
    async fn forward(
        &mut self,
        sessions: &mut watch::Receiver<Option<Arc<Session>>>,
        session: &Arc<Session>,
    ) -> Forwarded {
        loop {
            match self.wake(sessions).await {
                Wake::Stop => return Forwarded::Stopped,
                Wake::SessionChanged => {
                    let current = sessions.borrow_and_update().as_ref().map(|s| s.generation);
                    if current != Some(session.generation) {
                        return Forwarded::SessionLost;
                    }
                }
                Wake::SetChanged(true) => self.sync(session).await,
                Wake::SetChanged(false) => self.set_fixed = true,
                Wake::Retry => {
                    self.retry = None;
                    self.sync(session).await;
                }
                Wake::Item(item) => {
                    if let Some(forwarded) = self.handle(item, session).await {
                        return forwarded;
                    }
                }
            }
        }
    }

    async fn wake(&mut self, sessions: &mut watch::Receiver<Option<Arc<Session>>>) -> Wake {
        let ConsumerPump { stop, queues, set_fixed, retry, streams, .. } = self;
        let retry_due = async {
            match retry.as_mut() {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => Wake::Stop,
            changed = sessions.changed() => if changed.is_ok() { Wake::SessionChanged } else { Wake::Stop },
            changed = queues.changed(), if !*set_fixed => Wake::SetChanged(changed.is_ok()),
            _ = retry_due => Wake::Retry,
            // `SelectAll` ends when empty: only polled while it has streams.
            Some(item) = streams.next(), if !streams.is_empty() => Wake::Item(item),
        }
    }

    /// Brings the subscriptions on `session` in line with the set: cancels the queues taken
    /// out, subscribes the ones added (trying those that fail again later).
    async fn sync(&mut self, session: &Session) {
        let wanted = wanted(&mut self.queues);
        let removed: Vec<String> = self.subscribed.keys().filter(|queue| !wanted.contains(queue)).cloned().collect();
        for queue in removed {
            if let Some(subscription) = self.subscribed.remove(&queue) {
                cancel(&queue, &subscription).await;
                tracing::info!(%queue, "stopped consuming a request queue taken out of the set");
            }
        }
        let added: Vec<String> = wanted.into_iter().filter(|queue| !self.subscribed.contains_key(queue)).collect();
        let mut failed = false;
        for queue in added {
            match subscribe_one(&self.inner, session, &queue).await {
                Ok(opened) => {
                    tracing::info!(%queue, "consuming a request queue added to the set");
                    self.install(opened);
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, "cannot consume a request queue added to the set; trying again");
                    failed = true;
                }
            }
        }
        if failed {
            let delay = self.retry_delays.next().unwrap_or(OPERATION_TIMEOUT);
            self.retry = Some(Box::pin(tokio::time::sleep(delay)));
        } else {
            self.retry = None;
            self.retry_delays = reconnect_backoff().build();
        }
    }

    /// Keeps a new subscription and merges its deliveries into the pump's streams.
    fn install(&mut self, opened: Opened) {
        self.next_id += 1;
        let id = self.next_id;
        let Opened { queue, channel, consumer } = opened;
        let subscription = Subscription { id, channel: channel.clone(), consumer_tag: consumer.tag() };
        self.subscribed.insert(queue.clone(), subscription);
        let stream = consumer
            .map(|delivery| Event::Delivery(Box::new(delivery)))
            .chain(futures::stream::once(std::future::ready(Event::Ended)))
            .map(move |event| Item { id, queue: queue.clone(), channel: channel.clone(), event });
        self.streams.push(stream.boxed());
    }

    /// One item of a subscription's stream; `Some` when the pump must stop.
    async fn handle(&mut self, item: Item, session: &Session) -> Option<Forwarded> {
        let Item { id, queue, channel, event } = item;
        let delivery = match event {
            Event::Delivery(delivery) => *delivery,
            Event::Ended => {
                let ours = self.subscribed.get(&queue).is_some_and(|s| s.id == id);
                let current = self.inner.session.borrow().as_ref().is_some_and(|s| s.generation == session.generation);
                if ours && current && session.connection.status().connected() {
                    // The queue was deleted. Declaring it again at once could fight
                    // whoever deleted it: it is subscribed again on the next connection,
                    // or when the set takes it out and puts it back.
                    tracing::warn!(%queue, "the broker cancelled the consumer of a request queue (deleted?)");
                }
                return None;
            }
        };
        match delivery {
            Ok(delivery) => {
                let delivery = to_delivery(&self.inner, queue.clone(), channel, delivery);
                if !self.subscribed.contains_key(&queue) {
                    // Sent before the broker saw our cancel: for another consumer.
                    requeue(delivery).await;
                } else if let Err(unsent) = self.delivery_tx.send((queue, delivery)) {
                    // The AmqpConsumer is gone: give the delivery back now.
                    requeue(unsent.0 .1).await;
                    return Some(Forwarded::Stopped);
                }
            }
            // A lost connection's error, reported before the consumer ends; the session's
            // end is noticed through `sessions`.
            Err(error) => tracing::debug!(%queue, %error, "consumer interrupted"),
        }
        None
    }

    /// `basic.cancel` every consumer so no new deliveries arrive, then gives back what the
    /// broker sent before its cancel-ok (bounded: a dead channel's stream ends with its
    /// connection).
    async fn cancel_all(mut self) {
        for (queue, subscription) in std::mem::take(&mut self.subscribed) {
            cancel(&queue, &subscription).await;
        }
        let drain = async {
            while let Some(item) = self.streams.next().await {
                if let Event::Delivery(delivery) = item.event {
                    if let Ok(delivery) = *delivery {
                        requeue(to_delivery(&self.inner, item.queue, item.channel, delivery)).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(OPERATION_TIMEOUT, drain).await;
    }
}

/// Cancels a subscription's consumer. Its stream goes on until the broker's cancel-ok and
/// then ends; its channel stays open while deliveries taken from it are unsettled.
async fn cancel(queue: &str, subscription: &Subscription) {
    let cancelling =
        subscription.channel.basic_cancel(subscription.consumer_tag.clone(), BasicCancelOptions::default());
    if let Err(error) = bounded("basic.cancel", cancelling).await {
        tracing::debug!(%queue, %error, "cancelling consumer failed");
    }
}

/// Gives a delivery back to its queue for another consumer.
async fn requeue(delivery: Delivery) {
    if let Err(error) = delivery.reject(true).await {
        tracing::debug!(%error, "requeueing a delivery failed; the broker requeues it with its channel");
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
    let traceparent = traceparent_of(properties.headers().as_ref());
    let handle = AmqpHandle {
        inner: inner.clone(),
        acker: Some(delivery.acker),
        channel,
        queue,
        properties,
        body: delivery.data.clone(),
    };
    Delivery::new(
        crate::metrics::AMQP,
        delivery.data,
        correlation_id,
        reply_to,
        content_type,
        attempt,
        Box::new(handle),
    )
    .with_traceparent(traceparent)
}

/// The `traceparent` header of a message, as a string whichever AMQP string type the
/// publisher used (pika sends short strings as long ones).
fn traceparent_of(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get(TRACEPARENT_HEADER)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_string()),
        _ => None,
    }
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

/// The worker's subscription to its request queues, one merged stream; see the module docs.
pub struct AmqpConsumer {
    /// Each delivery with the queue it came from.
    delivery_rx: mpsc::UnboundedReceiver<(String, Delivery)>,
    /// The set as the worker last sent it: what `next` may still hand out.
    queues: watch::Receiver<Vec<String>>,
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
        loop {
            let (queue, delivery) = self.delivery_rx.recv().await?;
            if self.queues.borrow().contains(&queue) {
                return Some(delivery);
            }
            // Its queue left the set after the pump received it: not the worker's any more.
            requeue(delivery).await;
        }
    }

    async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        // Prefetched but never taken: give them back now, not when the channel closes.
        self.delivery_rx.close();
        while let Some((_, delivery)) = self.delivery_rx.recv().await {
            requeue(delivery).await;
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
