//! The worker's side: one receiving link per request queue, attached with manual credit
//! (`prefetch` less what the worker holds), following a set of queue names and the bus's
//! connections; settling a delivery (reply, accept, release, reject).
//!
//! # Following a set of queues
//! A queue added to the set gets a link task on the current session; one taken out stops
//! asking for more (credit 0) and detaches once the worker has settled every delivery it
//! holds of that queue, so deliveries [`Amqp1Consumer::next`] returned before still settle.
//! Deliveries received but not yet returned by `next` when their queue left the set are
//! released back to the queue, never handed out. After a reconnect each link task attaches
//! again on the new session; a link that fails to attach is tried again with the backoff.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{Body, MessageId, Source, TerminusDurability};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use fe2o3_amqp::types::definitions::{DeliveryTag, Fields, ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::Modified;
use fe2o3_amqp_management::client::MgmtClient;

use super::connection::{subscribe_after, Session};
use super::{bounded, message, servicebus, unavailable, Dialect, Inner, DEAD_LETTER_CONDITION};
use crate::{metrics, BusError, Consumer, ContentType, Delivery, DeliveryHandle};

/// What a worker's settlement asks of the link its delivery came on.
enum Outcome {
    Accept,
    Release,
    Reject(Option<AmqpError>),
}

struct Settle {
    info: DeliveryInfo,
    outcome: Outcome,
    done: Option<oneshot::Sender<Result<(), BusError>>>,
}

/// Attaches the first set on the current session (failing at once when not connected or
/// one cannot be attached) and starts following the set.
pub(super) async fn start(
    inner: &Arc<Inner>,
    mut queues: watch::Receiver<Vec<String>>,
) -> Result<Amqp1Consumer, BusError> {
    let session = inner.current()?;
    let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
    let stop = inner.shutdown.child_token();
    let wanted = wanted(&mut queues);
    let mut links = HashMap::new();
    let mut attached = Vec::new();
    for queue in &wanted {
        attached.push((queue.clone(), attach(inner, &session, queue).await?));
    }
    for (queue, receiver) in attached {
        let link_stop = stop.child_token();
        inner.links.spawn(follow_link(
            inner.clone(),
            queue.clone(),
            Some((session.clone(), receiver)),
            link_stop.clone(),
            delivery_tx.clone(),
        ));
        links.insert(queue, link_stop);
    }
    inner.links.spawn(follow_set(inner.clone(), queues.clone(), links, stop.clone(), delivery_tx));
    Ok(Amqp1Consumer { delivery_rx, queues, stop })
}

fn wanted(queues: &mut watch::Receiver<Vec<String>>) -> Vec<String> {
    let mut seen = HashSet::new();
    let set = queues.borrow_and_update().clone();
    set.into_iter()
        .filter(|queue| seen.insert(queue.clone()))
        .filter(|queue| match crate::amqp::check_queue_name(queue) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "not consuming a request queue the broker would refuse");
                false
            }
        })
        .collect()
}

async fn attach(inner: &Inner, session: &Session, queue: &str) -> Result<Receiver, BusError> {
    let address = inner.queue_address(queue);
    session.authorize(&address).await?;
    let mut handle = session.session.lock().await;
    let name = format!("rfleet-consumer-{}", uuid::Uuid::new_v4().simple());
    let builder = Receiver::builder().name(name).credit_mode(CreditMode::Manual);
    let attaching = match inner.config.dialect {
        // Durable: see `is_queue_address`.
        Dialect::Broker => builder
            .source(Source::builder().address(address.clone()).durable(TerminusDurability::Configuration).build())
            .attach(&mut handle),
        // Peek-lock: Service Bus locks what it sends until we settle it (or the lock expires).
        Dialect::ServiceBus => builder
            .source(Source::builder().address(address.clone()).build())
            .sender_settle_mode(SenderSettleMode::Unsettled)
            .receiver_settle_mode(ReceiverSettleMode::First)
            .attach(&mut handle),
    };
    let mut receiver = bounded(&format!("attach a receiver to '{address}'"), attaching).await?;
    let prefetch = u32::from(inner.config.prefetch.max(1));
    bounded("issue credit", receiver.set_credit(prefetch)).await?;
    tracing::debug!(%queue, "consuming");
    Ok(receiver)
}

/// Keeps one link task per queue of the set until stopped.
async fn follow_set(
    inner: Arc<Inner>,
    mut queues: watch::Receiver<Vec<String>>,
    mut links: HashMap<String, CancellationToken>,
    stop: CancellationToken,
    delivery_tx: mpsc::UnboundedSender<(String, Delivery)>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = queues.changed() => if changed.is_err() { return },
        }
        let wanted = wanted(&mut queues);
        links.retain(|queue, link_stop| {
            let keep = wanted.contains(queue);
            if !keep {
                tracing::info!(%queue, "stopped consuming a request queue taken out of the set");
                link_stop.cancel();
            }
            keep
        });
        for queue in wanted {
            if let Entry::Vacant(entry) = links.entry(queue.clone()) {
                tracing::info!(%queue, "consuming a request queue added to the set");
                let link_stop = entry.insert(stop.child_token()).clone();
                inner.links.spawn(follow_link(inner.clone(), queue, None, link_stop, delivery_tx.clone()));
            }
        }
    }
}

/// Why [`run_link`] returned.
enum LinkEnd {
    Stopped,
    /// The link or its session is gone: attach again (on the same session if it lives).
    Lost,
}

/// One queue's link, attached again on every new session until `stop`.
async fn follow_link(
    inner: Arc<Inner>,
    queue: String,
    mut first: Option<(Arc<Session>, Receiver)>,
    stop: CancellationToken,
    delivery_tx: mpsc::UnboundedSender<(String, Delivery)>,
) {
    let mut after = 0;
    loop {
        let (session, receiver) = match first.take() {
            Some(attached) => attached,
            None => {
                let attached = subscribe_after(&inner, after, &stop, "request queue", |session| {
                    let (inner, queue) = (&inner, &queue);
                    async move { attach(inner, &session, queue).await }
                })
                .await;
                match attached {
                    Some(attached) => attached,
                    None => return,
                }
            }
        };
        match run_link(&inner, &session, receiver, &queue, &stop, &delivery_tx).await {
            LinkEnd::Stopped => return,
            LinkEnd::Lost if session.lost.is_cancelled() => after = session.generation,
            // The link alone detached (the queue was deleted, say): the same session will do.
            LinkEnd::Lost => after = session.generation - 1,
        }
    }
}

async fn run_link(
    inner: &Arc<Inner>,
    session: &Session,
    mut receiver: Receiver,
    queue: &str,
    stop: &CancellationToken,
    delivery_tx: &mpsc::UnboundedSender<(String, Delivery)>,
) -> LinkEnd {
    let prefetch = u32::from(inner.config.prefetch.max(1));
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<Settle>();
    let mut held: u32 = 0;
    let mut stopping = false;
    // Service Bus: the locks of the deliveries held, renewed while they score.
    let mut locks = Locks::default();
    let mut management = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(locks.next_renewal()), if !locks.is_empty() => {
                let due = locks.due();
                if due.is_empty() {
                    continue;
                }
                match renew(session, queue, &mut management, &due).await {
                    Ok(expirations) => locks.renewed(&due, &expirations),
                    Err(error) => {
                        // The lock runs out: Service Bus delivers the request again, and
                        // the dispatcher drops the second reply.
                        tracing::warn!(%queue, %error, "renewing message locks failed");
                        locks.forget(&due);
                        management = None;
                    }
                }
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                let _ = bounded("stop credit", receiver.set_credit(0)).await;
                if held == 0 {
                    let _ = bounded("detach", receiver.close()).await;
                    return LinkEnd::Stopped;
                }
            }
            _ = session.lost.cancelled() => return LinkEnd::Lost,
            Some(settle) = settle_rx.recv() => {
                let what = match settle.outcome {
                    Outcome::Accept => "accept",
                    Outcome::Release => "release",
                    Outcome::Reject(_) => "reject",
                };
                locks.remove(settle.info.delivery_tag());
                let settled = match (settle.outcome, inner.config.dialect) {
                    (Outcome::Accept, _) => bounded(what, receiver.accept(settle.info)).await,
                    (Outcome::Release, Dialect::Broker) => bounded(what, receiver.release(settle.info)).await,
                    // Abandon: available again at once, its delivery count one more.
                    (Outcome::Release, Dialect::ServiceBus) => {
                        let modified = Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: None };
                        bounded(what, receiver.modify(settle.info, modified)).await
                    }
                    (Outcome::Reject(error), _) => bounded(what, receiver.reject(settle.info, error)).await,
                };
                held = held.saturating_sub(1);
                let failed = settled.is_err();
                if let Some(done) = settle.done {
                    let _ = done.send(settled);
                }
                if failed {
                    return LinkEnd::Lost;
                }
                if stopping {
                    if held == 0 {
                        let _ = bounded("detach", receiver.close()).await;
                        return LinkEnd::Stopped;
                    }
                } else if bounded("issue credit", receiver.set_credit(prefetch.saturating_sub(held))).await.is_err() {
                    return LinkEnd::Lost;
                }
            }
            received = receiver.recv::<Body<Value>>(), if !stopping => {
                let received = match received {
                    Ok(received) => received,
                    Err(error) => {
                        tracing::warn!(%queue, %error, "request queue link ended");
                        return LinkEnd::Lost;
                    }
                };
                held += 1;
                let info = DeliveryInfo::from(&received);
                let message = received.into_message();
                if inner.config.dialect == Dialect::ServiceBus {
                    locks.hold(info.delivery_tag(), message::lock(&message, info.delivery_tag()));
                }
                let properties = message.properties.as_ref();
                let handle = Amqp1Handle {
                    inner: inner.clone(),
                    queue: queue.to_string(),
                    settle_tx: settle_tx.clone(),
                    info: Some(info),
                    correlation_id: properties.and_then(|p| p.correlation_id.clone()),
                    reply_to: properties.and_then(|p| p.reply_to.clone()),
                    reply_group: properties.and_then(|p| p.reply_to_group_id.clone()),
                    ttl: message.header.as_ref().and_then(|h| h.ttl),
                };
                let delivery = Delivery::new(
                    metrics::AMQP1,
                    Vec::new(),
                    message::correlation_id(properties),
                    properties.and_then(|p| p.reply_to.clone()),
                    message::content_type(properties),
                    message::attempt(message.header.as_ref()),
                    Box::new(handle),
                )
                .with_traceparent(message::traceparent(message.application_properties.as_ref()));
                let delivery = Delivery { body: message::body_bytes(message.body), ..delivery };
                // A consumer gone: the delivery is dropped, and so released.
                let _ = delivery_tx.send((queue.to_string(), delivery));
            }
        }
    }
}

/// The worker's end: deliveries of every queue in the set, merged.
pub struct Amqp1Consumer {
    delivery_rx: mpsc::UnboundedReceiver<(String, Delivery)>,
    queues: watch::Receiver<Vec<String>>,
    stop: CancellationToken,
}

#[async_trait]
impl Consumer for Amqp1Consumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let (queue, delivery) = self.delivery_rx.recv().await?;
            if self.queues.borrow().contains(&queue) {
                return Some(delivery);
            }
            // Its queue left the set since: dropped, the delivery is released.
            drop(delivery);
        }
    }

    async fn shutdown(&mut self) {
        self.stop.cancel();
        // What was received but not taken goes back (dropped: released).
        while let Ok((_, delivery)) = self.delivery_rx.try_recv() {
            drop(delivery);
        }
    }
}

impl Drop for Amqp1Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Amqp1Handle {
    inner: Arc<Inner>,
    queue: String,
    settle_tx: mpsc::UnboundedSender<Settle>,
    /// `None` once settled.
    info: Option<DeliveryInfo>,
    correlation_id: Option<MessageId>,
    reply_to: Option<String>,
    /// Service Bus: the reply session (`reply-to-group-id`).
    reply_group: Option<String>,
    /// The request's time to live: its reply lives no longer.
    ttl: Option<u32>,
}

impl Amqp1Handle {
    async fn settle(&mut self, outcome: Outcome) -> Result<(), BusError> {
        let Some(info) = self.info.take() else { return Ok(()) };
        let (done, settled) = oneshot::channel();
        let gone = || unavailable("the delivery's link is gone; the broker delivers it again");
        self.settle_tx.send(Settle { info, outcome, done: Some(done) }).map_err(|_| gone())?;
        settled.await.map_err(|_| gone())?
    }
}

#[async_trait]
impl DeliveryHandle for Amqp1Handle {
    async fn reply(&self, content_type: ContentType, body: Vec<u8>) -> Result<(), BusError> {
        let Some(reply_to) = &self.reply_to else {
            tracing::info!(queue = %self.queue, "request has no reply-to; reply dropped");
            return Ok(());
        };
        let session = self.inner.current()?;
        let reply = message::reply(self.correlation_id.clone(), self.reply_group.clone(), self.ttl, content_type, body);
        session.send(reply_to, reply).await
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        self.settle(Outcome::Accept).await
    }

    /// Requeue is `released` (broker: RabbitMQ requeues it, marked redelivered) or
    /// `modified` with `delivery-failed` (Service Bus: abandoned, its delivery count one
    /// more). Without requeue it is `rejected`: dead-lettered where the queue's policy says
    /// (broker), or into the queue's `$DeadLetterQueue` (Service Bus).
    async fn reject(&mut self, requeue: bool) -> Result<(), BusError> {
        if requeue {
            return self.settle(Outcome::Release).await;
        }
        let error = match self.inner.config.dialect {
            Dialect::Broker => None,
            Dialect::ServiceBus => Some(dead_letter_error(Dialect::ServiceBus, "rejected")),
        };
        self.settle(Outcome::Reject(error)).await
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), BusError> {
        tracing::warn!(queue = %self.queue, reason, "dead-lettering request");
        self.settle(Outcome::Reject(Some(dead_letter_error(self.inner.config.dialect, reason)))).await
    }
}

impl Drop for Amqp1Handle {
    fn drop(&mut self) {
        // Unsettled: the worker lost it. Released now so another consumer gets it at once.
        if let Some(info) = self.info.take() {
            let _ = self.settle_tx.send(Settle { info, outcome: Outcome::Release, done: None });
        }
    }
}

/// The error of the `rejected` outcome that dead-letters a request for `reason`. Service
/// Bus keeps `DeadLetterReason` (the reason's code) and `DeadLetterErrorDescription` on the
/// dead letter; a broker gets them as the error's description only.
fn dead_letter_error(dialect: Dialect, reason: &str) -> AmqpError {
    match dialect {
        Dialect::Broker => {
            AmqpError::new(ErrorCondition::Custom(DEAD_LETTER_CONDITION.into()), Some(reason.to_string()), None)
        }
        Dialect::ServiceBus => {
            let (code, description) = servicebus::dead_letter_info(reason);
            let mut info = Fields::new();
            info.insert(servicebus::DEAD_LETTER_REASON.into(), Value::String(code));
            info.insert(servicebus::DEAD_LETTER_DESCRIPTION.into(), Value::String(description.clone()));
            AmqpError::new(ErrorCondition::Custom(servicebus::DEAD_LETTER_CONDITION.into()), Some(description), info)
        }
    }
}

/// Renews the locks of `due` on `queue`'s `$management` (attached on first use).
async fn renew(
    session: &Session,
    queue: &str,
    management: &mut Option<MgmtClient>,
    due: &[Lock],
) -> Result<Vec<std::time::SystemTime>, BusError> {
    let client = match management {
        Some(client) => client,
        None => management.insert(session.management(queue).await?),
    };
    let tokens: Vec<uuid::Uuid> = due.iter().map(|lock| lock.token).collect();
    servicebus::renew_locks(client, &tokens).await
}

/// A held delivery's Service Bus lock.
#[derive(Debug, Clone)]
pub(super) struct Lock {
    pub(super) tag: DeliveryTag,
    pub(super) token: uuid::Uuid,
    /// When it is renewed: halfway to its expiry.
    renew_at: tokio::time::Instant,
    /// When the request's time to live runs out: its reply is no use after, so its lock is
    /// not renewed past it (a worker that hangs does not hold a request for ever).
    until: Option<tokio::time::Instant>,
}

impl Lock {
    pub(super) fn new(
        tag: DeliveryTag,
        token: uuid::Uuid,
        locked_until: std::time::SystemTime,
        ttl: Option<Duration>,
    ) -> Lock {
        let until = ttl.map(|ttl| tokio::time::Instant::now() + ttl);
        Lock { tag, token, renew_at: halfway_to(locked_until), until }
    }
}

fn halfway_to(expiry: std::time::SystemTime) -> tokio::time::Instant {
    let left = expiry.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::Instant::now() + left / 2
}

/// The locks of the deliveries a link holds, by delivery tag.
#[derive(Default)]
struct Locks(HashMap<DeliveryTag, Lock>);

impl Locks {
    fn hold(&mut self, tag: &DeliveryTag, lock: Option<Lock>) {
        if let Some(lock) = lock {
            self.0.insert(tag.clone(), lock);
        }
    }

    fn remove(&mut self, tag: &DeliveryTag) {
        self.0.remove(tag);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn next_renewal(&self) -> tokio::time::Instant {
        self.0.values().map(|lock| lock.renew_at).min().unwrap_or_else(tokio::time::Instant::now)
    }

    /// The locks to renew now; those whose request has run out of time are let go.
    fn due(&mut self) -> Vec<Lock> {
        let now = tokio::time::Instant::now();
        self.0.retain(|_, lock| lock.until.is_none_or(|until| until > now));
        self.0.values().filter(|lock| lock.renew_at <= now).cloned().collect()
    }

    /// Service Bus answers the new expiries in the order of the tokens.
    fn renewed(&mut self, due: &[Lock], expirations: &[std::time::SystemTime]) {
        for (lock, expiry) in due.iter().zip(expirations) {
            if let Some(held) = self.0.get_mut(&lock.tag) {
                held.renew_at = halfway_to(*expiry);
            }
        }
        if expirations.len() < due.len() {
            self.forget(&due[expirations.len()..]);
        }
    }

    fn forget(&mut self, due: &[Lock]) {
        for lock in due {
            self.0.remove(&lock.tag);
        }
    }
}
