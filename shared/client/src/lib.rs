//! Scoring through any bus, without HTTP: the one path that publishes a [`Request`] and
//! awaits its [`Reply`] by correlation id until the deadline, within a PRODUCER span whose
//! trace context the request carries ([`Publication`]). The dispatcher's scoring call and
//! its mirror go through [`Publication`] and [`read_reply`]; Rust programs use
//! [`ScoringClient`], built on the same two.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use bus::{AmqpBus, AmqpConfig};
//! use client::ScoringClient;
//! use protocol::{Column, ColumnData, Frame, Options};
//!
//! let settings = settings::BusSettings::default();
//! let bus = AmqpBus::start(AmqpConfig::from_settings(&settings, "my-app", 1), Default::default());
//! let client = ScoringClient::new(bus);
//! let frame = Frame::new(vec![Column::new("wt", ColumnData::F64 { values: vec![Some(2.62)] })])?;
//! let predictions = client.score("mtcars", frame, Options::default(), Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{BusError, ContentType, Outgoing, Requester};
use protocol::{ErrorBody, Frame, Input, Options, Outcome, Reply, Request, Timings, WireError, PROTOCOL_VERSION};
pub use telemetry::trace::TraceParent;
use tracing::field::Empty;
use tracing::{Instrument, Span};

/// How long a call waits at most when asked to wait longer than an `Instant` can say.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a request's caller gives up, on both clocks it is read by, taken at one moment so
/// they agree: the bus waits for the `Instant`; the request carries the wall-clock time
/// (ms since the Unix epoch) so that no worker scores it later; the broker drops it from
/// its queue after `timeout_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub epoch_ms: u64,
    pub timeout_ms: u64,
}

impl Deadline {
    /// `timeout_ms` from now; `None` when that is beyond what either clock can say.
    pub fn after_ms(timeout_ms: u64) -> Option<Deadline> {
        let now = Instant::now();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis);
        Some(Deadline {
            at: now.checked_add(Duration::from_millis(timeout_ms))?,
            epoch_ms: now_ms.checked_add(timeout_ms)?,
            timeout_ms,
        })
    }

    /// `timeout` from now, waiting as long as an `Instant` can say when it cannot say that.
    pub fn after(timeout: Duration) -> Deadline {
        let timeout_ms = millis(timeout);
        Deadline::after_ms(timeout_ms).unwrap_or_else(|| {
            let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis);
            Deadline { at: Instant::now() + MAX_WAIT, epoch_ms: epoch_ms.saturating_add(timeout_ms), timeout_ms }
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One request about to be published, with its PRODUCER span (OpenTelemetry's messaging
/// conventions: `publish <queue>`) and the W3C trace context its consumer continues.
///
/// Made before the request is encoded, so the `traceparent` in its body
/// ([`Publication::traceparent`]) is the one the message's headers carry; then
/// [`Publication::send`] publishes the encoded body within the span and awaits the reply.
/// The span is a real one only while traces are exported: otherwise a publish costs no
/// span, only a fresh parent id in the same trace.
pub struct Publication {
    span: Span,
    traceparent: String,
    queue: String,
    correlation_id: String,
}

impl Publication {
    /// A publication of the request `correlation_id` for `model` (at `version`: that
    /// version's queue), within the current span, whose trace is `current` (the caller's
    /// own context; `None` starts a new trace).
    pub fn new(
        requester: &dyn Requester,
        model: &str,
        version: Option<&str>,
        correlation_id: String,
        current: Option<&TraceParent>,
    ) -> Publication {
        let queue = requester.queue_for(model, version);
        let span = if telemetry::trace::exporting() {
            tracing::info_span!(
                "publish",
                otel.name = %format_args!("publish {queue}"),
                otel.kind = "producer",
                otel.status_code = Empty,
                messaging.system = requester.messaging_system(),
                "messaging.operation.type" = "send",
                messaging.destination.name = %queue,
                messaging.message.id = %correlation_id,
                messaging.message.body.size = Empty,
                "error.type" = Empty,
            )
        } else {
            Span::none()
        };
        let current = current.copied().unwrap_or_else(|| TraceParent::new_root(true));
        let traceparent = telemetry::trace::traceparent_for(&span, &current).to_string();
        Publication { span, traceparent, queue, correlation_id }
    }

    /// The `traceparent` the request's body carries (`Request::traceparent`), the same
    /// the message's headers will.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Publishes `body` (the encoded request) and returns the reply's bytes once it
    /// arrives, at the latest at `deadline`; the outcome is recorded on the span.
    pub async fn send(
        self,
        requester: &dyn Requester,
        body: Vec<u8>,
        deadline: &Deadline,
    ) -> Result<Vec<u8>, BusError> {
        let Publication { span, traceparent, queue, correlation_id } = self;
        span.record("messaging.message.body.size", body.len());
        let outgoing = Outgoing {
            correlation_id,
            queue,
            content_type: ContentType::MsgPack,
            body,
            expiration_ms: Some(deadline.timeout_ms),
            traceparent: Some(traceparent),
        };
        let replied = requester.call(outgoing, deadline.at).instrument(span.clone()).await;
        if let Err(error) = &replied {
            span.record("otel.status_code", "error");
            span.record("error.type", error_type(error));
        }
        replied
    }
}

/// OpenTelemetry's `error.type` of a failed call: a low-cardinality name of what went wrong.
fn error_type(error: &BusError) -> &'static str {
    match error {
        BusError::QueueFull(_) => "queue_full",
        BusError::Unavailable(_) => "unavailable",
        BusError::Unroutable { .. } => "unroutable",
        BusError::DeadlineExceeded => "timeout",
        BusError::DuplicateId(_) => "duplicate_id",
    }
}

/// Why a reply cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("the worker's reply is unreadable: {0}")]
    Wire(#[from] WireError),
    /// The bus routes by correlation id, so a mismatch is a transport or worker bug.
    #[error("the worker's reply carries id '{got}' but the request's id is '{sent}'")]
    Mismatch { sent: String, got: String },
}

/// Decodes the reply to the request `correlation_id`.
pub fn read_reply(bytes: &[u8], correlation_id: &str) -> Result<Reply, ReplyError> {
    let reply: Reply = protocol::decode(bytes)?;
    if reply.id != correlation_id {
        return Err(ReplyError::Mismatch { sent: correlation_id.to_string(), got: reply.id });
    }
    Ok(reply)
}

/// Scores frames through any transport's [`Requester`].
pub struct ScoringClient<R> {
    requester: R,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// The worker answered with an error (its stable code and message).
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Scoring(ErrorBody),
    #[error("the model answered JSON, not a frame: {0}")]
    Json(String),
}

/// Predictions and where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub predictions: Frame,
    pub timings: Timings,
}

impl<R: Requester> ScoringClient<R> {
    pub fn new(requester: R) -> Self {
        ScoringClient { requester }
    }

    /// Scores `frame` with `model`, waiting at most `timeout` (also the request's deadline,
    /// so no worker scores it after the caller gave up).
    pub async fn score(
        &self,
        model: &str,
        frame: Frame,
        options: Options,
        timeout: Duration,
    ) -> Result<Scored, ClientError> {
        let id = uuid::Uuid::new_v4().to_string();
        let deadline = Deadline::after(timeout);
        let publication = Publication::new(&self.requester, model, None, id.clone(), None);
        let request = Request {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            model: model.to_string(),
            model_version: None,
            deadline_ms: Some(deadline.epoch_ms),
            options,
            traceparent: Some(publication.traceparent().to_string()),
            request_id: None,
            input: Input::Frame(frame),
        };
        let body = publication.send(&self.requester, protocol::encode(&request)?, &deadline).await?;
        let reply = read_reply(&body, &id)?;
        match reply.outcome {
            Outcome::Predictions(predictions) => Ok(Scored { predictions, timings: reply.timings }),
            Outcome::Error(error) => Err(ClientError::Scoring(error)),
            Outcome::Json(json) => Err(ClientError::Json(json)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clocks of a deadline move by the same timeout; one too far for an `Instant`
    /// still waits (as long as one can) rather than panicking or failing.
    #[test]
    fn deadlines_agree_and_never_overflow() {
        let deadline = Deadline::after_ms(1_500).unwrap();
        let left = deadline.at.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(1_500) && left > Duration::from_millis(500), "{left:?}");
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis);
        assert!(deadline.epoch_ms > now_ms && deadline.epoch_ms <= now_ms + 1_500);
        assert!(Deadline::after_ms(u64::MAX).is_none());
        let far = Deadline::after(Duration::MAX);
        assert_eq!(far.timeout_ms, u64::MAX);
        assert_eq!(far.epoch_ms, u64::MAX);
        assert!(far.at > Instant::now() + Duration::from_secs(3600));
    }

    /// What a consumer gets: the `traceparent` in the request's body is the one in the
    /// message's headers, in the caller's trace with a parent id of its own.
    #[tokio::test]
    async fn the_body_and_the_headers_carry_one_traceparent() {
        use bus::{Consumer, EmbeddedBus};
        let bus = EmbeddedBus::new(4, "requests");
        let mut consumer = bus.consumer("requests");
        let current = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let publication = Publication::new(&bus, "m", None, "id-1".into(), Some(&current));
        let request = Request {
            version: PROTOCOL_VERSION,
            id: "id-1".into(),
            model: "m".into(),
            model_version: None,
            deadline_ms: None,
            options: Options::default(),
            traceparent: Some(publication.traceparent().to_string()),
            request_id: None,
            input: Input::Json("{}".into()),
        };
        let body = protocol::encode(&request).unwrap();
        let deadline = Deadline::after(Duration::from_secs(5));
        let call = tokio::spawn({
            let bus = bus.clone();
            async move { publication.send(&bus, body, &deadline).await }
        });
        let delivery = consumer.next().await.unwrap();
        let received: Request = protocol::decode(&delivery.body).unwrap();
        let header = delivery.traceparent.clone().expect("a traceparent header");
        assert_eq!(received.traceparent.as_deref(), Some(header.as_str()));
        let sent = TraceParent::parse(&header).unwrap();
        assert_eq!(sent.trace_id, current.trace_id);
        assert_ne!(sent.parent_id, current.parent_id);
        delivery.reply(ContentType::MsgPack, b"done".to_vec()).await.unwrap();
        delivery.ack().await.unwrap();
        assert_eq!(call.await.unwrap().unwrap(), b"done");
    }
}
