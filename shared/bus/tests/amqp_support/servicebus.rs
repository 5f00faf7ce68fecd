//! What the Service Bus dialect's tests share (a module of `conformance.rs` only: other
//! test crates include `amqp_support` without the stand-in): the stand-in (`servicebus-standin`, in this
//! process, on a port of its own) with the queues a test needs, and an [`Amqp1Bus`] signed
//! in to it with a connection string.
//!
//! What is real: the transport's code, fe2o3's AMQP 1.0 client, the TCP connection, the
//! SAS tokens and their CBS exchange. What stands in: Service Bus itself. The stand-in
//! enforces Service Bus's rules as Microsoft documents them and as Microsoft's own
//! `azure-servicebus` SDK expects them (its crate checks that against the SDK): CBS tokens
//! with expiry, peek-lock with lock expiry and delivery counts, `$DeadLetterQueue` with
//! reasons, `$management` (renew-lock, renew-session-lock, peek), sessions, forced detach.

use std::time::Duration;

use bus::{Amqp1Bus, Amqp1Config, Requester};
use servicebus_standin::{QueueConfig, Rights, SasRule, StandIn, StandInConfig};
use tokio_util::sync::CancellationToken;

pub const KEY_NAME: &str = "RootManageSharedAccessKey";
pub const REPLY_QUEUE: &str = "rfleet.replies";
pub const CATALOG_QUEUE: &str = "rfleet.catalog";

/// One queue on the stand-in, as the conformance suite's `Transport`.
pub use crate::amqp_support::amqp1::Amqp1 as ServiceBus;

pub struct Namespace {
    pub standin: StandIn,
    pub config: Amqp1Config,
    pub bus: Amqp1Bus,
    pub shutdown: CancellationToken,
}

/// A request queue as a test makes it: Service Bus's defaults, with `lock` locks.
pub fn request_queue(name: &str, lock: Duration) -> QueueConfig {
    QueueConfig { lock_duration: lock, ..QueueConfig::new(name) }
}

impl Namespace {
    /// The stand-in with `queues` (besides the reply and catalog queues) and a bus on it.
    pub async fn new(queues: Vec<QueueConfig>) -> Namespace {
        Self::with(queues, |_| {}).await
    }

    /// As [`Namespace::new`], the bus's configuration changed by `change` first.
    pub async fn with(queues: Vec<QueueConfig>, change: impl FnOnce(&mut Amqp1Config)) -> Namespace {
        Self::configured(queues, change, |_| {}).await
    }

    async fn configured(
        mut queues: Vec<QueueConfig>,
        change: impl FnOnce(&mut Amqp1Config),
        namespace: impl FnOnce(&mut StandInConfig),
    ) -> Namespace {
        queues.push(QueueConfig { requires_session: true, ..QueueConfig::new(REPLY_QUEUE) });
        queues.push(QueueConfig::new(CATALOG_QUEUE));
        let key = base64_key();
        let rules = vec![SasRule { key_name: KEY_NAME.into(), key, rights: Rights::ALL }];
        let mut standin_config = StandInConfig { rules, queues, ..StandInConfig::default() };
        namespace(&mut standin_config);
        let standin = StandIn::start(standin_config).await.expect("start the Service Bus stand-in");
        let mut config = Amqp1Config::from_connection_string(&standin.connection_string(KEY_NAME))
            .expect("the stand-in's connection string");
        config.queue_prefix = String::new();
        config.connection_name = "rfleet-test-servicebus".into();
        change(&mut config);
        let shutdown = CancellationToken::new();
        let bus = Amqp1Bus::start(config.clone(), shutdown.clone());
        Namespace { standin, config, bus, shutdown }
    }

    /// The stand-in with `queues` that also takes Entra ID tokens signed with `key` (its
    /// bus still signs in with the connection string).
    pub async fn with_entra(queues: Vec<QueueConfig>, key: &[u8]) -> Namespace {
        let key = key.to_vec();
        Self::configured(queues, |_| {}, move |config| config.jwt_keys.push(key)).await
    }

    pub async fn connected(self) -> Namespace {
        assert!(self.bus.wait_connected(Duration::from_secs(10)).await, "the bus did not sign in to the stand-in");
        self
    }

    pub fn transport(&self, queue: &str) -> ServiceBus {
        ServiceBus { bus: self.bus.clone(), queue: self.bus.queue_for(queue, None) }
    }

    pub async fn close(self) {
        self.shutdown.cancel();
        self.bus.closed().await;
        self.standin.shutdown().await;
    }
}

/// A random key, as the portal makes them (44 characters of base64).
fn base64_key() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..2).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(&bytes)
}
