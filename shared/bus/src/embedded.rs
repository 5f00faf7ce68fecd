//! The embedded transport: in-process queues with the broker's semantics.
//!
//! It behaves as the broker transports do, so code tested on it holds on them: bounded
//! queues (publishing to a full one fails at once), replies routed by correlation id,
//! late or duplicate replies dropped, and a delivery dropped unacknowledged (its worker
//! task died) redelivered with `redelivered = true`. It counts every delivery of a message
//! exactly ([`Delivery::attempt`]).
//!
//! One queue carries every model's requests, every version's included ([`Requester::queue_for`]
//! names it whatever the model and version), so a worker has no set of queues to follow
//! as it loads and removes models: it takes everything and answers what it does not hold.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::{metrics, BusError, Consumer, ContentType, Delivery, DeliveryHandle, Outgoing, Requester};

/// An in-process bus. Cloning gives another handle to the same queues.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    /// Every model's requests share this queue in-process.
    request_queue: String,
    dead_letters: Mutex<Vec<DeadLetter>>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    /// Workers' announcements, to every dispatcher subscribed when one is sent.
    announcements: broadcast::Sender<Vec<u8>>,
}

/// Announcements a slow subscriber may fall behind by before it misses some (the next
/// periodic announcement repeats what it missed).
const ANNOUNCEMENTS_BUFFERED: usize = 64;

#[derive(Default)]
struct Queue {
    messages: Mutex<VecDeque<Message>>,
    notify: Notify,
    consumers: Mutex<usize>,
}

/// A message a worker gave up on, with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub correlation_id: String,
    pub body: Vec<u8>,
    pub reason: String,
}

#[derive(Clone)]
struct Message {
    correlation_id: String,
    content_type: ContentType,
    body: Vec<u8>,
    traceparent: Option<String>,
    /// Deliveries so far: 0 while never delivered.
    deliveries: u32,
}

impl EmbeddedBus {
    /// A bus whose queues each hold at most `capacity` messages; requests for every model
    /// go to `request_queue`.
    pub fn new(capacity: usize, request_queue: impl Into<String>) -> Self {
        // In-process: connected for as long as the process runs.
        metrics::connection_up(metrics::EMBEDDED, true);
        EmbeddedBus {
            inner: Arc::new(Inner {
                capacity,
                request_queue: request_queue.into(),
                dead_letters: Mutex::default(),
                queues: Mutex::default(),
                pending: Mutex::default(),
                announcements: broadcast::channel(ANNOUNCEMENTS_BUFFERED).0,
            }),
        }
    }

    /// Messages dead-lettered so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.lock().clone()
    }

    /// Starts consuming `queue` (created if needed). Several consumers share a queue.
    pub fn consumer(&self, queue: &str) -> EmbeddedConsumer {
        let queue = self.inner.queue(queue);
        *queue.consumers.lock() += 1;
        EmbeddedConsumer { queue, bus: self.inner.clone() }
    }

    /// The queue every model's requests go to.
    pub fn request_queue(&self) -> String {
        self.inner.request_queue.clone()
    }

    /// Sends a worker's announcement to every current subscriber (none: nobody listens yet).
    pub fn publish_announcement(&self, announcement: Vec<u8>) {
        let _ = self.inner.announcements.send(announcement);
    }

    /// Announcements from now on, until the bus is dropped. Needs a tokio runtime: a task
    /// forwards them, as the broker transport's listener does.
    pub fn subscribe_announcements(&self) -> mpsc::Receiver<Vec<u8>> {
        let mut subscription = self.inner.announcements.subscribe();
        let (announcement_tx, announcement_rx) = mpsc::channel(ANNOUNCEMENTS_BUFFERED);
        tokio::spawn(async move {
            loop {
                let announcement = match subscription.recv().await {
                    Ok(announcement) => announcement,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "announcement subscriber fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if announcement_tx.send(announcement).await.is_err() {
                    return;
                }
            }
        });
        announcement_rx
    }

    /// Messages waiting in `queue`, not yet delivered.
    pub fn depth(&self, queue: &str) -> usize {
        self.inner.queue(queue).messages.lock().len()
    }
}

impl Inner {
    fn queue(&self, name: &str) -> Arc<Queue> {
        self.queues.lock().entry(name.to_string()).or_default().clone()
    }
}

impl Queue {
    fn push(&self, message: Message, front: bool) {
        let mut messages = self.messages.lock();
        if front {
            messages.push_front(message);
        } else {
            messages.push_back(message);
        }
        drop(messages);
        self.notify.notify_one();
    }
}

/// Removes the pending entry when the caller stops waiting (deadline or cancellation), so
/// a reply that comes later finds nobody and is dropped.
struct PendingGuard<'a> {
    inner: &'a Inner,
    correlation_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(&self.correlation_id);
    }
}

#[async_trait]
impl Requester for EmbeddedBus {
    async fn call(&self, message: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError> {
        let started = Instant::now();
        let queue = self.inner.queue(&message.queue);
        let published = self.enqueue(&queue, message);
        metrics::published(metrics::EMBEDDED, &published, started.elapsed());
        // Held until the reply came or the caller gave up: a later reply is dropped.
        let (_guard, reply_rx) = published?;
        match tokio::time::timeout_at(deadline.into(), reply_rx).await {
            Ok(Ok(body)) => Ok(body),
            // The sender is only dropped with the bus itself.
            Ok(Err(_)) => Err(BusError::Unavailable("the embedded bus shut down".into())),
            Err(_) => Err(BusError::DeadlineExceeded),
        }
    }

    fn queue_for(&self, _model: &str, _version: Option<&str>) -> String {
        self.inner.request_queue.clone()
    }

    fn is_ready(&self) -> bool {
        self.inner.queues.lock().values().any(|q| *q.consumers.lock() > 0)
    }

    fn messaging_system(&self) -> &'static str {
        "rfleet_embedded"
    }
}

impl EmbeddedBus {
    /// Puts `message` in `queue` and registers its caller: the publish half of a call.
    fn enqueue(
        &self,
        queue: &Queue,
        message: Outgoing,
    ) -> Result<(PendingGuard<'_>, oneshot::Receiver<Vec<u8>>), BusError> {
        if *queue.consumers.lock() == 0 {
            return Err(BusError::Unavailable(format!("no worker consumes '{}'", message.queue)));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock();
            if pending.contains_key(&message.correlation_id) {
                return Err(BusError::DuplicateId(message.correlation_id));
            }
            pending.insert(message.correlation_id.clone(), reply_tx);
        }
        let guard = PendingGuard { inner: &self.inner, correlation_id: message.correlation_id.clone() };
        {
            let mut messages = queue.messages.lock();
            if messages.len() >= self.inner.capacity {
                return Err(BusError::QueueFull(message.queue));
            }
            messages.push_back(Message {
                correlation_id: message.correlation_id,
                content_type: message.content_type,
                body: message.body,
                traceparent: message.traceparent,
                deliveries: 0,
            });
        }
        queue.notify.notify_one();
        Ok((guard, reply_rx))
    }
}

/// A worker's subscription to one embedded queue.
pub struct EmbeddedConsumer {
    queue: Arc<Queue>,
    bus: Arc<Inner>,
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        *self.queue.consumers.lock() -= 1;
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // Register interest before looking, so a push between the look and the wait
            // is not missed.
            let notified = self.queue.notify.notified();
            let popped = self.queue.messages.lock().pop_front();
            if let Some(mut message) = popped {
                message.deliveries = message.deliveries.saturating_add(1);
                // Pass the wake-up on: other consumers may have work too.
                if !self.queue.messages.lock().is_empty() {
                    self.queue.notify.notify_one();
                }
                let handle =
                    EmbeddedHandle { queue: self.queue.clone(), message: Some(message.clone()), bus: self.bus.clone() };
                return Some(
                    Delivery::new(
                        metrics::EMBEDDED,
                        message.body,
                        Some(message.correlation_id),
                        Some("embedded".into()),
                        message.content_type,
                        message.deliveries,
                        Box::new(handle),
                    )
                    .with_traceparent(message.traceparent),
                );
            }
            notified.await;
        }
    }
}

struct EmbeddedHandle {
    queue: Arc<Queue>,
    /// The message as delivered, kept until settled so it can be redelivered.
    message: Option<Message>,
    bus: Arc<Inner>,
}

#[async_trait]
impl DeliveryHandle for EmbeddedHandle {
    async fn reply(&self, _content_type: ContentType, body: Vec<u8>) -> Result<(), BusError> {
        let bus = &self.bus;
        let Some(message) = &self.message else { return Ok(()) };
        let waiter = bus.pending.lock().remove(&message.correlation_id);
        match waiter {
            // The caller may have given up between the lookup and the send: that reply is late.
            Some(reply_tx) => {
                let _ = reply_tx.send(body);
            }
            None => {
                metrics::reply_dropped(metrics::EMBEDDED);
                tracing::debug!(correlation_id = %message.correlation_id, "dropping reply nobody awaits");
            }
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        self.message = None;
        Ok(())
    }

    async fn reject(&mut self, requeue: bool) -> Result<(), BusError> {
        if let Some(message) = self.message.take() {
            if requeue {
                self.queue.push(message, true);
            }
        }
        Ok(())
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), BusError> {
        if let Some(message) = self.message.take() {
            tracing::warn!(correlation_id = %message.correlation_id, reason, "dead-lettering request");
            self.bus.dead_letters.lock().push(DeadLetter {
                correlation_id: message.correlation_id,
                body: message.body,
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}

impl Drop for EmbeddedHandle {
    fn drop(&mut self) {
        // Unsettled: the worker lost it (task died or shut down). Redeliver, as a broker
        // does when a consumer's channel closes with unacknowledged messages.
        if let Some(message) = self.message.take() {
            self.queue.push(message, true);
        }
    }
}
