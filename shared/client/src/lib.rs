//! Scoring through any bus, without HTTP: the one path that publishes a [`Request`] and
//! awaits its [`Reply`] by correlation id until the deadline. The dispatcher's scoring
//! call goes through [`publish_and_await`] and [`read_reply`]; Rust programs use
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

/// Publishes `body`, an encoded [`Request`] whose id is `correlation_id`, on the queue of
/// `model` (at `version`: that version's queue), and returns the reply's bytes once it
/// arrives, at the latest at `deadline`.
pub async fn publish_and_await(
    requester: &dyn Requester,
    model: &str,
    version: Option<&str>,
    correlation_id: &str,
    body: Vec<u8>,
    deadline: &Deadline,
    traceparent: Option<String>,
) -> Result<Vec<u8>, BusError> {
    let outgoing = Outgoing {
        correlation_id: correlation_id.to_string(),
        queue: requester.queue_for(model, version),
        content_type: ContentType::MsgPack,
        body,
        expiration_ms: Some(deadline.timeout_ms),
        traceparent,
    };
    requester.call(outgoing, deadline.at).await
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
        let request = Request {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            model: model.to_string(),
            model_version: None,
            deadline_ms: Some(deadline.epoch_ms),
            options,
            traceparent: None,
            request_id: None,
            input: Input::Frame(frame),
        };
        let body =
            publish_and_await(&self.requester, model, None, &id, protocol::encode(&request)?, &deadline, None).await?;
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
}
