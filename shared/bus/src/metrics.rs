//! The bus's Prometheus metrics (docs/observability.md, "Bus"), by transport: what was
//! published and how long the broker took to confirm it, how deliveries were settled,
//! redeliveries, replies nobody awaited, and the broker connection.
//!
//! Registered in telemetry's one registry when first touched ([`init`] touches them at
//! start-up). Every label is a `&'static str` from a fixed set, so recording is a read
//! lock and an atomic add, with no allocation.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Unit;
use telemetry::metrics::{histograms, register, register_with_unit, Histograms, PHASE_SECONDS};

use crate::BusError;

/// `transport` of the embedded bus.
pub const EMBEDDED: &str = "embedded";
/// `transport` of RabbitMQ.
pub const AMQP: &str = "amqp";
/// `transport` of the AMQP 1.0 transport (a plain broker or Azure Service Bus).
pub const AMQP1: &str = "amqp1";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    transport: &'static str,
    outcome: &'static str,
}

struct BusMetrics {
    published: Family<OutcomeLabels, Counter>,
    publish_duration: Histograms<TransportLabels>,
    consumed: Family<OutcomeLabels, Counter>,
    redeliveries: Family<TransportLabels, Counter>,
    replies_dropped: Family<TransportLabels, Counter>,
    connection_up: Family<TransportLabels, Gauge>,
    reconnects: Family<TransportLabels, Counter>,
}

static METRICS: LazyLock<BusMetrics> = LazyLock::new(|| {
    let metrics = BusMetrics {
        published: Family::default(),
        publish_duration: histograms(PHASE_SECONDS),
        consumed: Family::default(),
        redeliveries: Family::default(),
        replies_dropped: Family::default(),
        connection_up: Family::default(),
        reconnects: Family::default(),
    };
    register(
        "rfleet_bus_published",
        "Requests published on the bus, by transport and outcome (ok, full, unroutable, unavailable)",
        metrics.published.clone(),
    );
    register_with_unit(
        "rfleet_bus_publish_duration",
        "Publishing one request, until the broker confirmed it (or refused it), by transport",
        Unit::Seconds,
        metrics.publish_duration.clone(),
    );
    register(
        "rfleet_bus_consumed",
        "Deliveries settled, by transport and outcome (acked, requeued, rejected, dead_lettered)",
        metrics.consumed.clone(),
    );
    register(
        "rfleet_bus_redeliveries",
        "Deliveries of messages the bus had delivered before, by transport",
        metrics.redeliveries.clone(),
    );
    register(
        "rfleet_bus_replies_dropped",
        "Late or duplicate replies nobody awaited, by transport",
        metrics.replies_dropped.clone(),
    );
    register(
        "rfleet_bus_connection_up",
        "1 while connected to the broker (always 1 on the embedded bus), by transport",
        metrics.connection_up.clone(),
    );
    register(
        "rfleet_bus_reconnects",
        "Broker connections re-established after a loss, by transport",
        metrics.reconnects.clone(),
    );
    metrics
});

/// Registers the bus's metrics (idempotent), so a scrape shows them before the first use.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// The `outcome` of a publish: `ok`, `full`, `unroutable`, or `unavailable` (no connection,
/// no consumer, or no confirm before the deadline; a duplicate correlation id, a bug, is
/// counted there too rather than in a label of its own).
pub fn publish_outcome<T>(published: &Result<T, BusError>) -> &'static str {
    match published {
        Ok(_) => "ok",
        Err(BusError::QueueFull(_)) => "full",
        Err(BusError::Unroutable { .. }) => "unroutable",
        Err(BusError::Unavailable(_) | BusError::DeadlineExceeded | BusError::DuplicateId(_)) => "unavailable",
    }
}

pub(crate) fn published<T>(transport: &'static str, published: &Result<T, BusError>, took: Duration) {
    let outcome = publish_outcome(published);
    METRICS.published.get_or_create(&OutcomeLabels { transport, outcome }).inc();
    METRICS.publish_duration.get_or_create(&TransportLabels { transport }).observe(took.as_secs_f64());
}

/// A delivery settled as `outcome` (`acked`, `requeued`, `rejected`, `dead_lettered`).
pub(crate) fn consumed(transport: &'static str, outcome: &'static str) {
    METRICS.consumed.get_or_create(&OutcomeLabels { transport, outcome }).inc();
}

pub(crate) fn redelivered(transport: &'static str) {
    METRICS.redeliveries.get_or_create(&TransportLabels { transport }).inc();
}

pub(crate) fn reply_dropped(transport: &'static str) {
    METRICS.replies_dropped.get_or_create(&TransportLabels { transport }).inc();
}

pub(crate) fn connection_up(transport: &'static str, up: bool) {
    METRICS.connection_up.get_or_create(&TransportLabels { transport }).set(i64::from(up));
}

pub(crate) fn reconnected(transport: &'static str) {
    METRICS.reconnects.get_or_create(&TransportLabels { transport }).inc();
}
