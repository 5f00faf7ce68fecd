//! W3C trace context across HTTP and the bus, and OpenTelemetry spans from `tracing` ones.
//!
//! A span that starts a hop (the dispatcher's request span, the worker's CONSUMER span)
//! declares `trace_id` and `span_id` as empty fields and calls [`continue_trace`] with the
//! `traceparent` it received: the span then belongs to that trace (or a new one), and every
//! log line inside it names the trace. What it publishes carries [`traceparent_for`] the
//! publishing span, so the next hop is its child.
//!
//! With traces exported (`traces.exporter`), the ids are OpenTelemetry's own, from
//! `tracing-opentelemetry`; without, the trace id still runs through (incoming, or new at
//! the dispatcher) and each hop gets a fresh parent id, so logs correlate either way and
//! nothing OpenTelemetry does is paid for.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::TraceExemplar;

static EXPORTING: AtomicBool = AtomicBool::new(false);
/// `traces.sample_ratio` as f64 bits (1.0 until `init` says otherwise).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

pub(crate) fn set_sample_ratio(ratio: f64) {
    SAMPLE_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
}

/// Whether a new trace is sampled: decided where the trace starts, so a process that
/// exports nothing (a dispatcher without an exporter) still tells the next hop, whose
/// sampler follows its parent, what `sample_ratio` says.
fn sample_new_trace() -> bool {
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || fastrand::f64() < ratio
}

pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A W3C `traceparent`: the trace, the span that is the parent of the next hop, and whether
/// the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<trace id>-<parent id>-<flags>`. Per the W3C spec, a later version is read
    /// by its first four fields, version `ff` and all-zero ids are invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut fields = value.splitn(5, '-');
        let version = u8::from_str_radix(fields.next().filter(|v| v.len() == 2)?, 16).ok()?;
        let trace = fields.next().filter(|t| t.len() == 32)?;
        let parent = fields.next().filter(|p| p.len() == 16)?;
        let flags = fields.next().filter(|f| f.len() == 2)?;
        if version == 0xff || (version == 0 && fields.next().is_some()) {
            return None;
        }
        let (mut trace_id, mut parent_id) = ([0u8; 16], [0u8; 8]);
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] || !is_lower_hex(trace) || !is_lower_hex(parent) {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
    }

    /// A new trace.
    pub fn new_root(sampled: bool) -> TraceParent {
        let trace_id = fastrand::u128(1..).to_be_bytes();
        TraceParent { trace_id, parent_id: new_span_id(), sampled }
    }

    /// The same trace with a fresh parent id: the next hop.
    pub fn next_hop(&self) -> TraceParent {
        TraceParent { parent_id: new_span_id(), ..*self }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn exemplar(&self) -> TraceExemplar {
        TraceExemplar { trace_id: self.trace_id_hex() }
    }

    fn span_context(&self) -> SpanContext {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            flags,
            true,
            TraceState::default(),
        )
    }

    fn of(context: &SpanContext) -> Option<TraceParent> {
        context.is_valid().then(|| TraceParent {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            sampled: context.is_sampled(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.parent_id), u8::from(self.sampled))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Makes `span` continue the trace that `incoming` (a received `traceparent`) names, as its
/// remote child, or start a new trace; records `trace_id` (and, when exporting, `span_id`)
/// on it. Returns the context of `span` itself: what a message published within it
/// carries, through [`traceparent_for`]. Call before the span is first entered.
pub fn continue_trace(span: &Span, incoming: Option<&str>) -> TraceParent {
    let parent = incoming.and_then(TraceParent::parse);
    let own = if exporting() {
        if let Some(parent) = parent {
            let _ = span.set_parent(Context::new().with_remote_span_context(parent.span_context()));
        }
        let context = span.context();
        TraceParent::of(context.span().span_context())
    } else {
        None
    };
    let own = own.unwrap_or_else(|| match parent {
        Some(parent) => parent.next_hop(),
        None => TraceParent::new_root(sample_new_trace()),
    });
    span.record("trace_id", own.trace_id_hex());
    if exporting() {
        span.record("span_id", hex::encode(own.parent_id));
    }
    own
}

/// The `traceparent` a message published within `span` carries, so its consumer is the
/// span's child: the span's own context when exporting, else the trace of `current` with a
/// fresh parent id.
pub fn traceparent_for(span: &Span, current: &TraceParent) -> TraceParent {
    if exporting() {
        if let Some(own) = TraceParent::of(span.context().span().span_context()) {
            return own;
        }
    }
    current.next_hop()
}

/// Links `span` to the span `to` names (a batch to each request it serves).
pub fn link(span: &Span, to: &TraceParent) {
    if exporting() {
        span.add_link(to.span_context());
    }
}

/// Records an exception event on `span` (OpenTelemetry's `exception` event: Application
/// Insights shows it as an Exception), e.g. an R error with R's condition class.
pub fn exception(span: &Span, kind: &str, message: &str) {
    if exporting() {
        span.add_event(
            "exception",
            vec![
                KeyValue::new("exception.type", kind.to_string()),
                KeyValue::new("exception.message", message.to_string()),
            ],
        );
    }
}

/// Sets an OpenTelemetry attribute on `span` (for dynamic keys `tracing` fields cannot name).
pub fn attribute(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if exporting() {
        span.set_attribute(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_as_the_spec_says() {
        let check = |value: &str, expected: Option<(&str, &str, bool)>| {
            let parsed =
                TraceParent::parse(value).map(|t| (hex::encode(t.trace_id), hex::encode(t.parent_id), t.sampled));
            let expected = expected.map(|(t, p, s)| (t.to_string(), p.to_string(), s));
            assert_eq!(parsed, expected, "{value}");
        };
        let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some((trace, parent, true)));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", Some((trace, parent, false)));
        // A later version: its first four fields, whatever follows.
        check("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-ever", Some((trace, parent, true)));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None);
        check("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
        check("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None);
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None);
        check("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None);
        check("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None);
        check("garbage", None);
        let root = TraceParent::new_root(true);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        let next = root.next_hop();
        assert_eq!((next.trace_id, next.sampled), (root.trace_id, true));
        assert_ne!(next.parent_id, root.parent_id);
    }

    #[test]
    fn without_export_the_trace_id_runs_through() {
        let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
        let own = continue_trace(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(own.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(hex::encode(own.parent_id), "00f067aa0ba902b7");
        let next = traceparent_for(&span, &own);
        assert_eq!(next.trace_id, own.trace_id);
        let fresh = continue_trace(&span, Some("not a traceparent"));
        assert_ne!(fresh.trace_id, own.trace_id);
    }
}
