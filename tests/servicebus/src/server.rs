//! The stand-in as a whole: the listener, its connections, and what tests look at.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp_types::messaging::{Body, MessageId};
use fe2o3_amqp_types::primitives::SimpleValue;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Entity, Payload};
use crate::config::StandInConfig;
use crate::connection::{serve, Shared};
use crate::queue::Stored;
use crate::wire::AmqpMessage;

/// How long [`StandIn::shutdown`] waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running stand-in; dropping it without [`StandIn::shutdown`] stops it too.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A message as the queue holds it, for tests.
#[derive(Debug, Clone)]
pub struct MessageSnapshot {
    pub sequence_number: i64,
    /// The data sections concatenated, or a string value's bytes.
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub reply_to_group_id: Option<String>,
    /// The AMQP group id, which is the Service Bus session id.
    pub session_id: Option<String>,
    pub content_type: Option<String>,
    pub application_properties: Vec<(String, SimpleValue)>,
    /// The header's TTL in milliseconds, as sent.
    pub ttl_ms: Option<u32>,
    pub delivery_count: u32,
    pub dead_letter_reason: Option<String>,
    pub dead_letter_error_description: Option<String>,
    /// The whole message as sent.
    pub message: AmqpMessage,
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

impl From<Stored<Payload>> for MessageSnapshot {
    fn from(stored: Stored<Payload>) -> Self {
        let message = stored.payload.message;
        let properties = message.properties.clone().unwrap_or_default();
        let body = match &message.body {
            Body::Data(batch) => batch.iter().flat_map(|data| data.0.to_vec()).collect(),
            Body::Value(value) => match &value.0 {
                serde_amqp::Value::String(s) => s.clone().into_bytes(),
                serde_amqp::Value::Binary(b) => b.to_vec(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let (dead_letter_reason, dead_letter_error_description) = stored.dead_letter.unzip();
        MessageSnapshot {
            sequence_number: stored.sequence_number,
            body,
            message_id: properties.message_id.as_ref().map(id_text),
            correlation_id: properties.correlation_id.as_ref().map(id_text),
            reply_to: properties.reply_to,
            reply_to_group_id: properties.reply_to_group_id,
            session_id: properties.group_id,
            content_type: properties.content_type.map(|s| s.0),
            application_properties: message
                .application_properties
                .as_ref()
                .map(|p| p.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ttl_ms: message.header.as_ref().and_then(|h| h.ttl),
            delivery_count: stored.delivery_count,
            dead_letter_reason,
            dead_letter_error_description,
            message,
        }
    }
}

impl StandIn {
    /// Binds `127.0.0.1:config.port` and serves until [`StandIn::shutdown`].
    pub async fn start(config: StandInConfig) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            broker: Broker::new(&config.queues),
            config,
            detach_all: broadcast::channel(4).0,
            next_link_id: AtomicU64::new(1),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (accepting, connections) = (shutdown.clone(), tasks.clone());
        let serving = shared.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = accepting.cancelled() => break,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        tracing::debug!(%peer, "connection accepted");
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve(stream, serving.clone(), accepting.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "accept failed"),
                }
            }
        });
        Ok(StandIn { addr, shared, shutdown, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The emulator-style connection string for rule `key_name` (plain AMQP, no TLS).
    ///
    /// # Panics
    /// If no rule is called `key_name`.
    pub fn connection_string(&self, key_name: &str) -> String {
        let rule = self.shared.config.rules.iter().find(|r| r.key_name == key_name).expect("a configured key name");
        format!(
            "Endpoint=sb://{}:{}/;SharedAccessKeyName={};SharedAccessKey={};UseDevelopmentEmulator=true",
            self.shared.config.host,
            self.addr.port(),
            rule.key_name,
            rule.key
        )
    }

    /// Detaches every attached link with `amqp:link:detach-forced`.
    pub fn detach_all_links(&self) {
        let _ = self.shared.detach_all.send(());
    }

    /// The active messages of `queue` (available or locked), oldest first.
    pub fn messages(&self, queue: &str) -> Vec<MessageSnapshot> {
        let entity = Entity { queue: queue.into(), dead_letter: false };
        self.shared.broker.messages(&entity, Instant::now()).into_iter().map(Into::into).collect()
    }

    /// The messages of `queue`'s `$DeadLetterQueue`, oldest first.
    pub fn dead_letters(&self, queue: &str) -> Vec<MessageSnapshot> {
        let entity = Entity { queue: queue.into(), dead_letter: true };
        self.shared.broker.messages(&entity, Instant::now()).into_iter().map(Into::into).collect()
    }

    /// Closes every connection (`amqp:connection:forced`) and waits for them, bounded.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await.is_err() {
            tracing::warn!("connections outlived the shutdown grace");
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
