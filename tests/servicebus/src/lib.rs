//! A stand-in for Azure Service Bus, for tests: an AMQP 1.0 server on plain TCP (as
//! Microsoft's emulator serves) with Service Bus's queues, CBS and `$management`.
//!
//! # What is real and what stands in
//! Real: the AMQP 1.0 encoding (fe2o3-amqp's types and `serde_amqp` codec); the SAS
//! algorithm (checked against Microsoft's documented vector); and the checkers: the Rust
//! tests speak through fe2o3-amqp's client (the transport's library), and
//! `check_with_azure_sdk.py` through Microsoft's Python `azure-servicebus` 7.14.2, whose
//! source gave every wire name used here (`_common/constants.py`, `_pyamqp`).
//! Stand-in: the server's Service Bus semantics, written from Microsoft's documentation
//! and that SDK: SASL ANONYMOUS (then CBS `put-token` with a SAS token) or PLAIN (key name
//! and key); peek-lock with the 16-byte lock token as delivery tag and `x-opt-lock-token`,
//! `x-opt-locked-until`, `x-opt-sequence-number`, `x-opt-enqueued-time`; dispositions
//! (accepted = complete, modified = abandon, released, rejected with
//! `com.microsoft:dead-letter`); lock expiry and `MaxDeliveryCountExceeded`; TTL; the
//! `$DeadLetterQueue` sub-queue; sessions by `com.microsoft:session-filter`;
//! `$management` `renew-lock`, `renew-session-lock`, `update-disposition`, `peek-message`.
//!
//! # What it does not do
//! TLS (port 5671), topics and subscriptions (and their filters), scheduled and deferred
//! messages, session state, transactions, partitioning, duplicate detection, auto-forward,
//! message batches' size limits beyond 256 KiB per message, Entra ID tokens signed as
//! Entra signs them (it takes HS256 tokens of configured keys instead: `jwt`), waiting for a next-available session (it refuses at once with `com.microsoft:timeout`),
//! link recovery of unsettled deliveries, and persistence: everything lives in memory.
//! A deferral (`modified` with `undeliverable-here`) is taken as an abandon, and
//! `update-disposition` refuses `defered`. Session windows are fixed (65536), not tracked;
//! the announced idle time-out (240 s) is not enforced. Locks are timed by the stand-in's clock
//! (`lock_duration` per queue, e.g. 2 s in tests), never expired on request.
//!
//! # Layout
//! - [`server`]: [`StandIn`]: the listener, connection strings, snapshots for tests.
//! - `connection`: one connection's frames, links, CBS and `$management`.
//! - `broker`: queues, dead-letter sub-queues and session locks shared by connections.
//! - [`wire`]: framing over fe2o3's types, and Service Bus's names on the wire.
//! - [`config`]: the namespace's SAS rules and queues.
//! - [`sas`]: verifying the token a CBS `put-token` carries, and which entities it covers.
//! - [`jwt`]: verifying an Entra ID token (`jwt`) instead.
//! - [`queue`]: one queue's rules, sans I/O, with time as an argument.

mod broker;
pub mod config;
mod connection;
pub mod jwt;
pub mod queue;
pub mod sas;
pub mod server;
pub mod wire;

pub use config::{QueueConfig, Rights, SasRule, StandInConfig};
pub use server::{MessageSnapshot, StandIn};
