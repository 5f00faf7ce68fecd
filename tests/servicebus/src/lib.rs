//! A stand-in for Azure Service Bus, for tests: the rules a Service Bus queue enforces.
//!
//! # What is real and what stands in
//! Real: the SAS algorithm (HMAC-SHA256 over the percent-encoded URI and the expiry,
//! checked against Microsoft's documented vector) and the queue rules as Microsoft documents
//! them (peek-lock, lock duration, delivery count, `$DeadLetterQueue` with
//! `DeadLetterReason`/`DeadLetterErrorDescription`, `MaxDeliveryCountExceeded`, TTL).
//! Stand-in: everything else. This first increment has the rules only, sans I/O; the AMQP
//! 1.0 server over fe2o3-amqp's acceptors (CBS, `$management`, links) is not built yet.
//!
//! # Layout
//! - [`sas`]: verifying the token a CBS `put-token` carries, and which entities it covers.
//! - [`queue`]: one queue and its dead-letter sub-queue, with time as an argument.

pub mod queue;
pub mod sas;
