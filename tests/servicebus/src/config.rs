//! The stand-in's configuration: the namespace, its SAS rules and its queues.

use std::time::Duration;

/// What a SAS rule allows (Service Bus's `Send`, `Listen`, `Manage`; `Manage` implies both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    pub send: bool,
    pub listen: bool,
    pub manage: bool,
}

impl Rights {
    pub const SEND: Rights = Rights { send: true, listen: false, manage: false };
    pub const LISTEN: Rights = Rights { send: false, listen: true, manage: false };
    pub const ALL: Rights = Rights { send: true, listen: true, manage: true };

    /// Whether these rights include `right`.
    pub fn allow(self, right: Right) -> bool {
        self.manage
            || match right {
                Right::Send => self.send,
                Right::Listen => self.listen,
            }
    }
}

/// The right a link needs: `Send` to send to an entity, `Listen` to receive from it or to
/// use its `$management` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Send,
    Listen,
}

/// A shared access policy: the key name a token's `skn` names, and its key.
#[derive(Debug, Clone)]
pub struct SasRule {
    pub key_name: String,
    pub key: String,
    pub rights: Rights,
}

/// A queue to create, with Service Bus's defaults from [`QueueConfig::new`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub name: String,
    pub requires_session: bool,
    /// Peek-lock duration of a message, and of a session.
    pub lock_duration: Duration,
    pub max_delivery_count: u32,
    /// Time-to-live of messages whose header carries none.
    pub default_ttl: Option<Duration>,
    /// Expired messages go to the dead-letter sub-queue (`TTLExpiredException`) rather
    /// than being dropped.
    pub dead_letter_on_expiry: bool,
}

impl QueueConfig {
    /// A queue as Service Bus creates one by default (30 s locks, 10 deliveries).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            requires_session: false,
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 10,
            default_ttl: None,
            dead_letter_on_expiry: false,
        }
    }
}

/// Everything [`crate::StandIn::start`] needs.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// The host name tokens' resources must name (`127.0.0.1` for the emulator's strings).
    pub host: String,
    /// 0 for any free port.
    pub port: u16,
    pub rules: Vec<SasRule>,
    /// Keys Entra ID tokens (`jwt`) are signed with (see `jwt`): a token one of them signed
    /// covers the namespace with Send and Listen.
    pub jwt_keys: Vec<Vec<u8>>,
    pub queues: Vec<QueueConfig>,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 0, rules: Vec::new(), jwt_keys: Vec::new(), queues: Vec::new() }
    }
}
