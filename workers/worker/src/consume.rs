//! The worker loop: take requests off the bus, score them on the pool, reply, then ack.
//!
//! Every delivery ends with exactly one reply (predictions or an error) followed by an
//! acknowledgement; the reply goes first so a crash between the two causes a redelivery
//! (at-least-once), never a lost answer. Requests are checked before they reach R:
//! undecodable bytes, other protocol versions, unknown models, expired deadlines and
//! input that does not fit the schema are answered without an R call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{Consumer, ContentType, Delivery};
use protocol::host::HostOutput;
use protocol::{ErrorCode, Input, Outcome, Reply, Request, Timings, PROTOCOL_VERSION};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::pool::{Pool, PoolError, PoolRequest};

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// This worker's name in replies and logs.
    pub worker_id: String,
    /// Deliveries held at once (scoring plus waiting for a host); the rest stay queued on
    /// the bus, where other workers can take them.
    pub max_in_flight: usize,
    /// How long to wait for in-flight requests after shutdown is asked for.
    pub drain_timeout: Duration,
}

/// Consumes until `shutdown` fires or the bus closes, then drains in-flight work (at most
/// `drain_timeout`). Deliveries not yet taken stay on the bus.
pub async fn run(mut consumer: impl Consumer, pool: Pool, config: ConsumeConfig, shutdown: CancellationToken) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = consumer.next() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let (pool, config) = (pool.clone(), config.clone());
        tasks.spawn(async move {
            handle(delivery, &pool, &config).await;
            drop(permit);
        });
    }
    // No new deliveries; those prefetched but not taken go back to the queue.
    consumer.shutdown().await;
    tasks.close();
    if tokio::time::timeout(config.drain_timeout, tasks.wait()).await.is_err() {
        tracing::warn!(in_flight = tasks.len(), "drain timeout passed; unfinished requests return to the queue");
    }
}

/// Handles one delivery from receipt to acknowledgement.
async fn handle(delivery: Delivery, pool: &Pool, config: &ConsumeConfig) {
    let received = Instant::now();
    let (reply, span) = match decode(&delivery) {
        Ok(request) => {
            let span = tracing::info_span!("score", model = %request.model, request_id = request.request_id.as_deref().unwrap_or(""), id = %request.id);
            let reply = score(request, pool, config, received).instrument(span.clone()).await;
            (reply, span)
        }
        Err(reply) => (
            *reply,
            tracing::info_span!("undecodable", correlation_id = delivery.correlation_id.as_deref().unwrap_or("")),
        ),
    };
    // Requests that can never succeed are dead-lettered (after their error reply), so they
    // are kept for inspection and never retried.
    let dead_letter = match &reply.outcome {
        Outcome::Error(error) => match error.code {
            ErrorCode::BadRequest | ErrorCode::UnsupportedVersion | ErrorCode::HostCrashed => {
                Some(format!("{}: {}", error.code.as_str(), error.message))
            }
            _ => None,
        },
        _ => None,
    };
    // The span is attached to the future, never entered across an await: an entered span
    // held over `.await` leaks into whatever else runs on this thread meanwhile
    // (regression: over RabbitMQ the dispatcher's request spans nested inside these).
    settle(delivery, reply, dead_letter).instrument(span).await;
}

/// Replies, then acknowledges (or dead-letters) the delivery.
async fn settle(delivery: Delivery, reply: Reply, dead_letter: Option<String>) {
    let path = reply.timings.path.as_deref().unwrap_or("");
    match &reply.outcome {
        Outcome::Error(error) => tracing::info!(code = ?error.code, message = %error.message, path, "request failed"),
        _ => tracing::debug!(
            path,
            queue_ms = reply.timings.queue_ms,
            r_ms = reply.timings.r_ms,
            worker_ms = reply.timings.worker_ms,
            "request scored"
        ),
    }
    let body = match delivery.content_type {
        ContentType::MsgPack => protocol::encode(&reply).map_err(|e| e.to_string()),
        ContentType::Json => serde_json::to_vec(&reply).map_err(|e| e.to_string()),
    };
    let body = match body {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(error, "cannot encode reply");
            let fallback = Reply::error(reply.id.clone(), ErrorCode::Internal, format!("cannot encode reply: {error}"));
            protocol::encode(&fallback).unwrap_or_default()
        }
    };
    if let Err(error) = delivery.reply(delivery.content_type, body).await {
        // Without a reply the request must stay on the bus to be answered later.
        tracing::warn!(error = %error, "cannot publish reply; returning request to the queue");
        let _ = delivery.reject(true).await;
        return;
    }
    let settled = match dead_letter {
        Some(reason) => delivery.dead_letter(&reason).await,
        None => delivery.ack().await,
    };
    if let Err(error) = settled {
        tracing::warn!(error = %error, "cannot settle delivery");
    }
}

fn decode(delivery: &Delivery) -> Result<Request, Box<Reply>> {
    let id = delivery.correlation_id.clone().unwrap_or_default();
    let request: Request = match delivery.content_type {
        ContentType::MsgPack => protocol::decode(&delivery.body).map_err(|e| e.to_string()),
        ContentType::Json => {
            serde_json::from_slice(&delivery.body).map_err(|e| format!("cannot decode JSON request: {e}"))
        }
    }
    .map_err(|message| Box::new(Reply::error(id.clone(), ErrorCode::BadRequest, message)))?;
    if request.version != PROTOCOL_VERSION {
        return Err(Box::new(Reply::error(
            request.id,
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} is not supported (this worker speaks {PROTOCOL_VERSION})", request.version),
        )));
    }
    Ok(request)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn score(request: Request, pool: &Pool, config: &ConsumeConfig, received: Instant) -> Reply {
    let fail = |code, message: String| Reply::error(request.id.clone(), code, message);
    // The deadline as an Instant on this machine's clock.
    let deadline = match request.deadline_ms {
        Some(deadline_ms) => {
            let now = now_ms();
            if deadline_ms <= now {
                return fail(
                    ErrorCode::DeadlineExceeded,
                    format!("the deadline passed {} ms before scoring began", now - deadline_ms),
                );
            }
            Some(received + Duration::from_millis(deadline_ms - now))
        }
        None => None,
    };
    let Some(model) = pool.model(&request.model, request.model_version.as_deref()) else {
        let served: Vec<String> = pool.models().into_iter().map(|m| m.name).collect();
        let wanted = match &request.model_version {
            Some(version) => format!("'{}' version '{version}'", request.model),
            None => format!("'{}'", request.model),
        };
        return fail(
            ErrorCode::ModelNotFound,
            format!("model {wanted} is not served here (served: {})", served.join(", ")),
        );
    };
    let input = match request.input {
        Input::Frame(frame) => {
            if let Err(error) = frame.validate() {
                return fail(ErrorCode::BadRequest, error.to_string());
            }
            match &model.schema {
                Some(schema) => match protocol::conform(&frame, schema) {
                    Ok(frame) => Input::Frame(frame),
                    Err(error) => return fail(ErrorCode::InvalidInput, error.to_string()),
                },
                None => Input::Frame(frame),
            }
        }
        json => json,
    };
    let predict_type = request.options.predict_type.clone().or_else(|| model.predict_type.clone());
    let pool_request = PoolRequest {
        model: model.name.clone(),
        version: model.version.clone(),
        input,
        predict_type,
        split: request.options.split,
        deadline,
    };
    let scored = pool.score(pool_request).await;
    let worker_ms = received.elapsed().as_secs_f64() * 1e3;
    let mut timings = Timings { worker_ms, worker: config.worker_id.clone(), ..Timings::default() };
    let outcome = match scored {
        Ok(scored) => {
            timings.queue_ms = scored.wait.as_secs_f64() * 1e3;
            timings.r_ms = scored.r_us as f64 / 1e3;
            timings.host_pid = Some(scored.host_pid);
            timings.attempts = scored.attempts;
            timings.path = Some(scored.path);
            match scored.result {
                Ok(HostOutput::Frame(frame)) => Outcome::Predictions(frame),
                Ok(HostOutput::Json(json)) => Outcome::Json(json),
                // Only asked for by forest splitting, which combines parts itself.
                Ok(HostOutput::ForestPart(_)) => Outcome::Error(protocol::ErrorBody::new(
                    ErrorCode::Internal,
                    "an R host answered a whole request with a forest part",
                )),
                Err(error) => Outcome::Error(error),
            }
        }
        Err(error) => {
            let code = match &error {
                PoolError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                PoolError::ShuttingDown => ErrorCode::Unavailable,
                PoolError::Crashed { .. } => ErrorCode::HostCrashed,
                PoolError::UnknownModel(_) => ErrorCode::ModelNotFound,
                PoolError::Start(_) => ErrorCode::Internal,
            };
            Outcome::Error(protocol::ErrorBody::new(code, error.to_string()))
        }
    };
    Reply { version: PROTOCOL_VERSION, id: request.id, outcome, timings }
}
