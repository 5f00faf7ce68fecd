//! The worker loop: take requests off the bus, score them on the pool, reply, then ack.
//!
//! Every delivery ends with exactly one reply (predictions or an error) followed by an
//! acknowledgement; the reply goes first so a crash between the two causes a redelivery
//! (at-least-once), never a lost answer. Requests are checked before they reach R:
//! undecodable bytes, other protocol versions, unknown models, expired deadlines and
//! input that does not fit the schema are answered without an R call.
//!
//! A request with `model_version` is scored by that version, or answered `model_not_found`
//! naming the versions of its model this worker holds; one without by the highest version
//! held (`protocol::compare_versions`). The reply's `timings.model_version` is the version
//! that scored.
//!
//! Each request is a CONSUMER span (`process <queue>`, OpenTelemetry's messaging
//! conventions) continuing the trace of the message's `traceparent` header, else of the
//! request's own `traceparent` (direct publishers), and is counted by its outcome
//! ([`crate::metrics::Outcome::of`]) under the model that scored it, with its wait for a
//! host and its predictions.
//!
//! The loop ([`serve`]) keeps apart what a delivery means (a [`Handler`]: for a worker,
//! decoding and scoring) and settling it (a guard: reply, then ack or dead-letter). A
//! handler that panics is a bug the guard contains: the delivery goes back to the queue for
//! another worker, and at its [`MAX_PANICKING_ATTEMPTS`]th delivery it is answered
//! `internal`, naming the panic, and dead-lettered, so a request that panics every worker
//! is not redelivered forever.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{Consumer, ContentType, Delivery, Transport};
use futures::future::BoxFuture;
use futures::FutureExt;
use protocol::host::HostOutput;
use protocol::{ErrorCode, Input, ModelInfo, Outcome, Reply, Request, Timings, PROTOCOL_VERSION};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::engine::{self, Choice};
use crate::metrics::{self, DeadLetter};
use crate::pool::Pool;
use crate::request::{PoolError, PoolRequest, ServedModel};

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

/// Deliveries of one message whose handling panics before it is dead-lettered. Two, as for
/// a request that crashes R hosts: one more try, perhaps on another worker, then a clear
/// error. The transports count deliveries ([`Delivery::attempt`]).
pub const MAX_PANICKING_ATTEMPTS: u32 = 2;

/// The longest a request's deadline is taken to be away. A deadline comes off the bus, and
/// one far in the future (a direct publisher's mistake) would overflow `Instant`; a day is
/// beyond any host timeout, so for scoring it is "no hurry".
const MAX_TIME_LEFT: Duration = Duration::from_secs(24 * 3600);

/// What a [`Handler`] made of a delivery: the reply and, for a request that must never be
/// retried, why it is dead-lettered rather than acknowledged.
pub struct Answer {
    pub reply: Reply,
    pub dead_letter: Option<String>,
    /// Where settling the delivery is logged.
    pub span: tracing::Span,
}

/// Turns one delivery into its [`Answer`]; [`serve`] settles the delivery around it.
pub trait Handler: Send + Sync + 'static {
    fn answer<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Answer>;
}

/// The worker's handler: decode, check, score on the pool.
struct Scoring {
    pool: Pool,
    worker_id: String,
    /// The bus the deliveries come from: what CONSUMER spans name.
    transport: Arc<dyn Transport>,
}

impl Handler for Scoring {
    fn answer<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Answer> {
        handle(delivery, self).boxed()
    }
}

/// Consumes until `shutdown` fires or the bus closes, scoring on `pool`, then drains
/// in-flight work (at most `drain_timeout`). Deliveries not yet taken stay on the bus;
/// `transport` is the bus `consumer` is of.
pub async fn run(
    consumer: impl Consumer,
    pool: Pool,
    transport: Arc<dyn Transport>,
    config: ConsumeConfig,
    shutdown: CancellationToken,
) {
    let handler = Scoring { pool, worker_id: config.worker_id.clone(), transport };
    serve(consumer, handler, config, shutdown).await;
}

/// [`run`] with any handler: each delivery is answered by `handler` and settled by
/// [`guard`], which also contains the handler's panics.
pub async fn serve(
    mut consumer: impl Consumer,
    handler: impl Handler,
    config: ConsumeConfig,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(handler);
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
        let handler = handler.clone();
        tasks.spawn(async move {
            guard(delivery, &*handler).await;
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

/// Answers one delivery with `handler`, then settles it: reply, then ack or dead-letter.
/// A panicking handler leaves the delivery here, unsettled: it is requeued for another try
/// below [`MAX_PANICKING_ATTEMPTS`], and answered `internal` and dead-lettered at it.
async fn guard(delivery: Delivery, handler: &dyn Handler) {
    let panic = match AssertUnwindSafe(handler.answer(&delivery)).catch_unwind().await {
        Ok(Answer { reply, dead_letter, span }) => {
            // The span is attached to the future, never entered across an await: an entered
            // span held over `.await` leaks into whatever else runs on this thread meanwhile
            // (regression: over RabbitMQ the dispatcher's request spans nested inside these).
            return settle(delivery, reply, dead_letter).instrument(span).await;
        }
        Err(panic) => crate::panic_message(&*panic),
    };
    let attempt = delivery.attempt;
    let span =
        tracing::error_span!("panicked", correlation_id = delivery.correlation_id.as_deref().unwrap_or(""), attempt);
    if attempt < MAX_PANICKING_ATTEMPTS {
        tracing::error!(parent: &span, panic = %panic, "handling a request panicked; returning it to the queue");
        if let Err(error) = delivery.reject(true).instrument(span.clone()).await {
            tracing::warn!(parent: &span, %error, "cannot requeue; the bus redelivers it with its channel");
        }
        return;
    }
    tracing::error!(parent: &span, panic = %panic, "handling a request panicked again; dead-lettering it");
    metrics::dead_lettered(DeadLetter::HandlerPanics);
    let id = delivery.correlation_id.clone().unwrap_or_default();
    let reply = Reply::error(id, ErrorCode::Internal, format!("the worker panicked handling this request: {panic}"));
    let reason = format!("handler panicked on attempt {attempt}: {panic}");
    settle(delivery, reply, Some(reason)).instrument(span).await;
}

/// What one delivery means for a worker: its reply, and whether it is dead-lettered. A
/// request gets its CONSUMER span (`process <queue>`), continuing the trace its message
/// headers carry (or, from a direct publisher, its body's `traceparent`).
async fn handle(delivery: &Delivery, scoring: &Scoring) -> Answer {
    let received = Instant::now();
    let (reply, span) = match decode(delivery) {
        Ok(request) => {
            let span = consumer_span(delivery, &request, &*scoring.transport);
            let incoming = delivery.traceparent.as_deref().or(request.traceparent.as_deref());
            let trace = telemetry::trace::continue_trace(&span, incoming);
            let reply = score(request, &scoring.pool, &scoring.worker_id, received, (span.clone(), trace))
                .instrument(span.clone())
                .await;
            (reply, span)
        }
        Err(reply) => {
            if let Outcome::Error(error) = &reply.outcome {
                metrics::unserved_request(metrics::Outcome::of(error.code));
            }
            (
                *reply,
                tracing::info_span!("undecodable", correlation_id = delivery.correlation_id.as_deref().unwrap_or("")),
            )
        }
    };
    // Requests that can never succeed are dead-lettered (after their error reply), so they
    // are kept for inspection and never retried.
    let dead_letter = match &reply.outcome {
        Outcome::Error(error) => DeadLetter::of(error.code).map(|reason| {
            metrics::dead_lettered(reason);
            format!("{}: {}", error.code.as_str(), error.message)
        }),
        _ => None,
    };
    Answer { reply, dead_letter, span }
}

/// The CONSUMER span of a request, after OpenTelemetry's messaging conventions; its
/// `trace_id` and `span_id` are recorded by `continue_trace`, `rfleet.model_version` once
/// the version that scores it is known.
fn consumer_span(delivery: &Delivery, request: &Request, transport: &dyn Transport) -> tracing::Span {
    let queue = transport.queue_for(&request.model, request.model_version.as_deref());
    // `rfleet_embedded`, `rabbitmq` or `servicebus`, as the transport says.
    let system = transport.messaging_system();
    tracing::info_span!(
        "process",
        "otel.name" = format!("process {queue}"),
        "otel.kind" = "consumer",
        "messaging.system" = system,
        "messaging.operation.type" = "process",
        "messaging.destination.name" = %queue,
        "messaging.message.id" = delivery.correlation_id.as_deref().unwrap_or(""),
        "rfleet.model" = %request.model,
        "rfleet.model_version" = tracing::field::Empty,
        "rfleet.engine" = tracing::field::Empty,
        model = %request.model,
        request_id = request.request_id.as_deref().unwrap_or(""),
        id = %request.id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    )
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
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request's deadline (`deadline_ms`, Unix milliseconds off the wire) as an `Instant` on
/// this machine's clock, `now_ms` being `received`; at most [`MAX_TIME_LEFT`] away. `Err`
/// with how many ms ago it passed.
fn deadline_at(deadline_ms: u64, now_ms: u64, received: Instant) -> Result<Instant, u64> {
    let Some(left_ms) = deadline_ms.checked_sub(now_ms).filter(|&left| left > 0) else {
        return Err(now_ms.saturating_sub(deadline_ms));
    };
    let left = Duration::from_millis(left_ms).min(MAX_TIME_LEFT);
    Ok(received.checked_add(left).unwrap_or(received))
}

/// Scores a request and counts what came of it: under its model when the worker serves
/// it, else under `model=""`.
async fn score(
    request: Request,
    pool: &Pool,
    worker_id: &str,
    received: Instant,
    (span, trace): (tracing::Span, telemetry::trace::TraceParent),
) -> Reply {
    let model = pool.model(&request.model, request.model_version.as_deref());
    if let Some(model) = &model {
        span.record("rfleet.model_version", model.info.version.as_deref().unwrap_or(""));
    }
    let (reply, wait) = score_on(request, model.clone(), pool, worker_id, received, (span, trace)).await;
    let outcome = match &reply.outcome {
        Outcome::Predictions(_) | Outcome::Json(_) => metrics::Outcome::Success,
        Outcome::Error(error) => metrics::Outcome::of(error.code),
    };
    match &model {
        Some(model) => {
            model.metrics.request(outcome);
            if let Some(wait) = wait {
                model.metrics.phase(metrics::Phase::BatchWait, wait, Some(&trace));
            }
            if let Outcome::Predictions(frame) = &reply.outcome {
                model.metrics.predictions(frame);
            }
        }
        None => metrics::unserved_request(outcome),
    }
    reply
}

/// The reply to a request for `model` (`None`: not served), and how long it waited for an
/// R host when one took it.
async fn score_on(
    request: Request,
    model: Option<Arc<ServedModel>>,
    pool: &Pool,
    worker_id: &str,
    received: Instant,
    (span, trace): (tracing::Span, telemetry::trace::TraceParent),
) -> (Reply, Option<Duration>) {
    let fail = |code, message: String| (Reply::error(request.id.clone(), code, message), None);
    let deadline = match request.deadline_ms.map(|deadline_ms| deadline_at(deadline_ms, now_ms(), received)) {
        Some(Ok(deadline)) => Some(deadline),
        Some(Err(passed_ms)) => {
            return fail(
                ErrorCode::DeadlineExceeded,
                format!("the deadline passed {passed_ms} ms before scoring began"),
            )
        }
        None => None,
    };
    let Some(model) = model else {
        let message = not_served(&request.model, request.model_version.as_deref(), &pool.models());
        return fail(ErrorCode::ModelNotFound, message);
    };
    let input = match request.input {
        Input::Frame(frame) => {
            if let Err(error) = frame.validate() {
                return fail(ErrorCode::BadRequest, error.to_string());
            }
            match &model.info.schema {
                Some(schema) => match protocol::conform(&frame, schema) {
                    Ok(frame) => Input::Frame(frame),
                    Err(error) => return fail(ErrorCode::InvalidInput, error.to_string()),
                },
                None => Input::Frame(frame),
            }
        }
        json => json,
    };
    let predict_type = request.options.predict_type.clone().or_else(|| model.info.predict_type.clone());
    let model_version = model.info.version.clone();
    if let Input::Frame(frame) = &input {
        let answered = match model.engine.choose(request.options.engine, predict_type.as_deref()) {
            Choice::R => None,
            Choice::Refused(reason) => return fail(ErrorCode::InvalidInput, reason),
            Choice::Native { refuse_declined } => match engine::predict(&model, frame, predict_type.as_deref()).await {
                Ok(prediction) => {
                    model.metrics.native(frame.n_rows);
                    Some(Outcome::Predictions(prediction.frame))
                }
                // What the native engine leaves to R (a missing value R refuses or drops),
                // unless the request asked for `native` or R does not hold the model.
                Err(declined) => refuse_declined.map(|why| {
                    Outcome::Error(protocol::ErrorBody::new(ErrorCode::InvalidInput, format!("{why}: {declined}")))
                }),
            },
        };
        if let Some(outcome) = answered {
            let timings = Timings {
                worker_ms: received.elapsed().as_secs_f64() * 1e3,
                worker: worker_id.to_string(),
                model_version,
                path: Some(NATIVE_PATH.to_string()),
                ..Timings::default()
            };
            span.record("rfleet.engine", "native");
            return (Reply { version: PROTOCOL_VERSION, id: request.id, outcome, timings }, None);
        }
    }
    let pool_request =
        PoolRequest { model, input, predict_type, split: request.options.split, deadline, span, trace: Some(trace) };
    let scored = pool.score(pool_request).await;
    let worker_ms = received.elapsed().as_secs_f64() * 1e3;
    let mut timings = Timings { worker_ms, worker: worker_id.to_string(), model_version, ..Timings::default() };
    let mut wait = None;
    let outcome = match scored {
        Ok(scored) => {
            wait = Some(scored.wait);
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
        Err(error) => Outcome::Error(protocol::ErrorBody::new(code_for(&error), error.to_string())),
    };
    (Reply { version: PROTOCOL_VERSION, id: request.id, outcome, timings }, wait)
}

/// `Timings::path` (`x-rfleet-path`) of a request the native engine answered.
pub const NATIVE_PATH: &str = "native";

/// Why `name` (at `version`) is not served, naming what this worker serves instead: the
/// versions of that name when it holds any, else every model.
fn not_served(name: &str, version: Option<&str>, served: &[ModelInfo]) -> String {
    let wanted = match version {
        Some(version) => format!("model '{name}' version '{version}'"),
        None => format!("model '{name}'"),
    };
    let mut same_name: Vec<Option<&str>> =
        served.iter().filter(|m| m.name == name).map(|m| m.version.as_deref()).collect();
    same_name.sort_by(|a, b| protocol::compare_versions(*a, *b));
    let serves = if same_name.is_empty() {
        let all: Vec<String> = served.iter().map(|m| m.model_ref().to_string()).collect();
        if all.is_empty() {
            "no models".to_string()
        } else {
            all.join(", ")
        }
    } else {
        let versions: Vec<&str> = same_name.iter().flatten().copied().collect();
        let unversioned = same_name.iter().any(Option::is_none).then(|| format!("{name} without a version"));
        let versioned = match versions.as_slice() {
            [] => None,
            [one] => Some(format!("{name} version {one}")),
            many => Some(format!("{name} versions {}", many.join(", "))),
        };
        [unversioned, versioned].into_iter().flatten().collect::<Vec<_>>().join(" and ")
    };
    format!("{wanted} is not served by this worker (it serves {serves})")
}

/// The protocol's code for each way the pool fails a request. Exhaustive on purpose: a new
/// failure does not compile until someone decides what the caller is told.
fn code_for(error: &PoolError) -> ErrorCode {
    match error {
        PoolError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        PoolError::ShuttingDown => ErrorCode::Unavailable,
        PoolError::Crashed { .. } => ErrorCode::HostCrashed,
        PoolError::UnknownModel(_) => ErrorCode::ModelNotFound,
        // A reload raced the request: it may be retried, and then finds the new package.
        PoolError::Replaced(_) => ErrorCode::Unavailable,
        // Bugs, not the caller's doing nor a passing condition.
        PoolError::Start(_) | PoolError::Load(_) | PoolError::Panicked(_) => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a pool job is a bug (500), not shutdown (503).
    #[test]
    fn pool_panics_are_internal() {
        for (error, code) in [
            (PoolError::Panicked("index out of bounds".into()), ErrorCode::Internal),
            (PoolError::ShuttingDown, ErrorCode::Unavailable),
            (PoolError::DeadlineExceeded, ErrorCode::DeadlineExceeded),
            (PoolError::Crashed { attempts: 2, last: "killed".into() }, ErrorCode::HostCrashed),
        ] {
            assert_eq!(code_for(&error), code, "{error}");
        }
    }

    /// A model that is not served is answered naming what is: the versions of its name
    /// when the worker holds any, else every model.
    #[test]
    fn not_served_names_what_is() {
        let info = |name: &str, version: Option<&str>| ModelInfo {
            name: name.into(),
            version: version.map(str::to_string),
            kind: protocol::ModelKind::Predict,
            r_class: Vec::new(),
            schema: None,
            predict_type: None,
            forest: None,
            engine: None,
        };
        let served = [info("rf_reg", Some("2")), info("rf_reg", Some("1")), info("cls", None), info("mixed", None)];
        let check = |name: &str, version: Option<&str>, served: &[ModelInfo], expected: &str| {
            assert_eq!(not_served(name, version, served), expected);
        };
        check(
            "rf_reg",
            Some("3"),
            &served,
            "model 'rf_reg' version '3' is not served by this worker (it serves rf_reg versions 1, 2)",
        );
        check(
            "cls",
            Some("1"),
            &served,
            "model 'cls' version '1' is not served by this worker (it serves cls without a version)",
        );
        check(
            "gone",
            None,
            &served,
            "model 'gone' is not served by this worker (it serves rf_reg version 2, rf_reg version 1, cls, mixed)",
        );
        check("gone", None, &[], "model 'gone' is not served by this worker (it serves no models)");
        let mixed = [info("mixed", None), info("mixed", Some("1"))];
        check(
            "mixed",
            Some("2"),
            &mixed,
            "model 'mixed' version '2' is not served by this worker (it serves mixed without a version and mixed version 1)",
        );
    }

    /// Deadlines off the wire at their extremes: never an overflow, never further than a day.
    #[test]
    fn deadlines_are_bounded() {
        let received = Instant::now();
        let check = |deadline_ms: u64, now_ms: u64, expected: Result<Duration, u64>| {
            let got = deadline_at(deadline_ms, now_ms, received).map(|at| at - received);
            assert_eq!(got, expected, "deadline {deadline_ms} at {now_ms}");
        };
        let now = 1_700_000_000_000;
        check(now + 250, now, Ok(Duration::from_millis(250)));
        check(now, now, Err(0));
        check(now - 40, now, Err(40));
        check(0, now, Err(now));
        check(0, u64::MAX, Err(u64::MAX));
        check(u64::MAX, now, Ok(MAX_TIME_LEFT));
        check(u64::MAX, 0, Ok(MAX_TIME_LEFT));
    }
}
