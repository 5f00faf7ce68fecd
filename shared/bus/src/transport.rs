//! One trait over every transport ([`Transport`]), and the one place that picks a transport
//! from settings ([`connect`]): the dispatcher, the worker and the CLI only ever hold an
//! `Arc<dyn Transport>`, so a new transport is a new implementation here and nothing else.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use settings::{AmqpDialect, BusKind, BusSettings, SecretUrl};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{AmqpBus, AmqpConfig, BrokerTlsError};
use crate::amqp1::{Amqp1Bus, Amqp1Config};
use crate::{BusError, Consumer, EmbeddedBus, Requester};

/// How long [`connect`] waits for a broker before it goes on connecting in the background,
/// so that a fleet started together is ready together.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(10);

/// What the dispatcher and the worker need of a bus, whichever it is.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The dispatcher's side: publish a request, await its reply.
    fn requester(&self) -> Arc<dyn Requester>;

    /// The worker's side: a consumer of the request queues named in `queues` (see
    /// [`Transport::queue_for`]), following the set as it changes while the worker runs.
    async fn consume(&self, queues: watch::Receiver<Vec<String>>) -> Result<Box<dyn Consumer>, BusError>;

    /// The queue requests for `model` (at `version`) go to; see [`Requester::queue_for`].
    fn queue_for(&self, model: &str, version: Option<&str>) -> String {
        self.requester().queue_for(model, version)
    }

    /// Tells every dispatcher what this worker serves (an encoded `protocol::Announcement`).
    async fn announce(&self, announcement: Vec<u8>) -> Result<(), BusError>;

    /// Every worker's announcements from now on, as they arrive, until the bus closes.
    fn announcements(&self) -> mpsc::Receiver<Vec<u8>>;

    /// Whether requests stay inside this process (a dispatcher and a worker in separate
    /// processes need a broker).
    fn in_process(&self) -> bool;

    /// OpenTelemetry's `messaging.system`, as its requester says it.
    fn messaging_system(&self) -> &'static str;

    /// Messages ready in `queue`, not yet delivered to a consumer, as the bus says now;
    /// `None` when it cannot say (not connected, no such queue). The embedded bus has one
    /// queue for every model, so its depth is that queue's.
    async fn queue_depth(&self, queue: &str) -> Option<u64>;
}

/// What [`connect`] needs besides the settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The connection's name as the broker shows it (`rfleet-worker-<host>-<pid>`).
    pub name: String,
    /// Unacknowledged deliveries a consumer may hold.
    pub prefetch: u16,
}

/// Settings that can never connect: refused at start-up rather than retried forever.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not `amqp://` or `amqps://`. For some such URLs (`guest:secret@host`) lapin's parse
    /// error repeats the whole URL, password and all, into every retry's log line.
    #[error("bus.url {0} is not an amqp:// or amqps:// URL")]
    Scheme(SecretUrl),
    #[error("bus.url {0} has the password `***` that `rfleet config` prints in place of the real one")]
    RedactedPassword(SecretUrl),
    /// Unlike a broker that is down, a CA file that does not load will not get better by
    /// retrying.
    #[error("cannot set up tls to the broker: {0}")]
    Tls(#[from] BrokerTlsError),
    /// The AMQP 1.0 transport cannot use these settings (its reason, without secrets).
    #[error("bus.kind = \"servicebus\": {0}")]
    Amqp1(String),
}

/// The transport `settings.kind` names. A broker is connected to in the background (it is
/// waited for a few seconds first; one that is down is retried, not fatal) until `shutdown`.
pub async fn connect(
    settings: &BusSettings,
    options: ConnectOptions,
    shutdown: CancellationToken,
) -> Result<Arc<dyn Transport>, ConnectError> {
    match settings.kind {
        BusKind::Embedded => Ok(Arc::new(EmbeddedBus::new(settings.capacity, settings.request_queue.clone()))),
        BusKind::Amqp => {
            check_broker_url(&settings.url)?;
            let config = AmqpConfig::from_settings(settings, &options.name, options.prefetch);
            config.tls_config()?;
            let bus = AmqpBus::start(config, shutdown);
            if !bus.wait_connected(FIRST_CONNECT_WAIT).await {
                tracing::warn!(url = %settings.url, "broker not reachable yet; retrying in the background");
            }
            Ok(Arc::new(bus))
        }
        BusKind::Servicebus => {
            let config = amqp1_config(settings, &options)?;
            let bus = Amqp1Bus::start(config, shutdown);
            if !bus.wait_connected(FIRST_CONNECT_WAIT).await {
                tracing::warn!(url = %settings.url, "AMQP 1.0 peer not reachable yet; retrying in the background");
            }
            Ok(Arc::new(bus))
        }
    }
}

/// The AMQP 1.0 transport's configuration from the settings.
fn amqp1_config(settings: &BusSettings, options: &ConnectOptions) -> Result<Amqp1Config, ConnectError> {
    match settings.servicebus.dialect {
        AmqpDialect::Broker => {
            check_broker_url(&settings.url)?;
            let mut config = Amqp1Config::from_url(settings.url.expose_secret())
                .map_err(|error| ConnectError::Amqp1(format!("bus.url {}: {error}", settings.url)))?;
            config.queue_prefix = settings.queue_prefix.clone();
            config.catalog = settings.catalog_exchange.clone();
            // Each bus's reply key is `<reply_queue>.<uuid>` on the broker.
            config.reply_queue = settings.servicebus.reply_queue.clone();
            config.prefetch = options.prefetch.max(1);
            config.connection_name = options.name.clone();
            Ok(config)
        }
        AmqpDialect::Servicebus => {
            let servicebus = &settings.servicebus;
            let mut config = match (&servicebus.connection_string, &servicebus.namespace) {
                // The parse error names the part that is wrong, never the key.
                (Some(connection_string), _) => Amqp1Config::from_connection_string(connection_string.expose_secret())
                    .map_err(|error| ConnectError::Amqp1(format!("bus.servicebus.connection_string: {error}")))?,
                (None, Some(namespace)) => {
                    let credential = crate::amqp1::entra::credential_from_environment(settings.ca_file.as_deref())
                        .map_err(|error| {
                            ConnectError::Amqp1(format!("signing in to {namespace} with Entra ID: {error}"))
                        })?;
                    Amqp1Config::from_namespace(namespace, credential)
                }
                (None, None) => return Err(ConnectError::Amqp1(
                    "set bus.servicebus.connection_string (Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…) \
                         or bus.servicebus.namespace (NS.servicebus.windows.net, signed in with Entra ID)"
                        .into(),
                )),
            };
            config.ca_file = settings.ca_file.clone();
            config.queue_prefix = settings.queue_prefix.clone();
            config.reply_queue = servicebus.reply_queue.clone();
            config.catalog = servicebus.catalog_queue.clone();
            config.prefetch = options.prefetch.max(1);
            config.connection_name = options.name.clone();
            Ok(config)
        }
    }
}

/// Refuses a broker URL that can never work, showing it redacted.
fn check_broker_url(url: &SecretUrl) -> Result<(), ConnectError> {
    let scheme = url.expose_secret().split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("amqp" | "amqps")) {
        return Err(ConnectError::Scheme(url.clone()));
    }
    if url.is_redacted() {
        return Err(ConnectError::RedactedPassword(url.clone()));
    }
    Ok(())
}

#[async_trait]
impl Transport for EmbeddedBus {
    fn requester(&self) -> Arc<dyn Requester> {
        Arc::new(self.clone())
    }

    /// Every model's requests share the one in-process queue, versions included, so
    /// there is no set of queues to follow: `queues` is not read, and a model loaded or
    /// removed needs nothing of the bus (the worker answers what it does not hold).
    async fn consume(&self, _queues: watch::Receiver<Vec<String>>) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(self.consumer(&self.request_queue())))
    }

    async fn announce(&self, announcement: Vec<u8>) -> Result<(), BusError> {
        self.publish_announcement(announcement);
        Ok(())
    }

    fn announcements(&self) -> mpsc::Receiver<Vec<u8>> {
        self.subscribe_announcements()
    }

    fn in_process(&self) -> bool {
        true
    }

    fn messaging_system(&self) -> &'static str {
        Requester::messaging_system(self)
    }

    async fn queue_depth(&self, _queue: &str) -> Option<u64> {
        Some(self.depth(&self.request_queue()) as u64)
    }
}

#[async_trait]
impl Transport for AmqpBus {
    fn requester(&self) -> Arc<dyn Requester> {
        Arc::new(self.clone())
    }

    async fn consume(&self, queues: watch::Receiver<Vec<String>>) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(self.consumer_following(queues).await?))
    }

    async fn announce(&self, announcement: Vec<u8>) -> Result<(), BusError> {
        AmqpBus::announce(self, announcement).await
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

    async fn queue_depth(&self, queue: &str) -> Option<u64> {
        self.declared(queue).await.ok().map(|declared| u64::from(declared.message_count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_can_never_work_are_refused_redacted() {
        let check = |url: &str| check_broker_url(&SecretUrl::from(url.to_string())).map_err(|e| e.to_string());
        assert_eq!(check("amqp://guest:secret@127.0.0.1:5672/%2f"), Ok(()));
        assert_eq!(check("AMQPS://guest:secret@broker:5671/%2f"), Ok(()));
        let error = check("guest:secret@127.0.0.1:5672").unwrap_err();
        assert!(error.contains("is not an amqp:// or amqps:// URL") && !error.contains("secret"), "{error}");
        let error = check("amqp://guest:***@127.0.0.1:5672/%2f").unwrap_err();
        assert!(error.contains("has the password `***`"), "{error}");
    }
}
