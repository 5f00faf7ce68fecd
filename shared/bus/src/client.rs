//! A small client for Rust programs that score through the bus directly, without HTTP:
//! build a frame, call [`ScoringClient::score`], read the predictions.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use bus::{AmqpBus, AmqpConfig, ScoringClient};
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

use protocol::{ErrorBody, Frame, Input, Options, Outcome, Reply, Request, Timings, WireError, PROTOCOL_VERSION};

use crate::{BusError, ContentType, Outgoing, Requester};

/// How long a call waits at most when asked to wait longer than an `Instant` can say.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
    /// The worker answered with an error (its stable code and message).
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Scoring(ErrorBody),
    #[error("the reply belongs to request '{got}', not '{sent}'")]
    Mismatch { sent: String, got: String },
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
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis);
        let timeout_ms = millis(timeout);
        let request = Request {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            model: model.to_string(),
            model_version: None,
            deadline_ms: Some(now_ms.saturating_add(timeout_ms)),
            options,
            traceparent: None,
            request_id: None,
            input: Input::Frame(frame),
        };
        let outgoing = Outgoing {
            correlation_id: id.clone(),
            queue: self.requester.queue_for(model),
            content_type: ContentType::MsgPack,
            body: protocol::encode(&request)?,
            expiration_ms: Some(timeout_ms),
        };
        // A timeout beyond what an `Instant` holds waits as long as one can.
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + MAX_WAIT);
        let body = self.requester.call(outgoing, deadline).await?;
        let reply: Reply = protocol::decode(&body)?;
        if reply.id != id {
            return Err(ClientError::Mismatch { sent: id, got: reply.id });
        }
        match reply.outcome {
            Outcome::Predictions(predictions) => Ok(Scored { predictions, timings: reply.timings }),
            Outcome::Error(error) => Err(ClientError::Scoring(error)),
            Outcome::Json(json) => Err(ClientError::Json(json)),
        }
    }
}
