//! A delivery whose handling panics the worker is retried, then answered `internal` and
//! dead-lettered with its reason, and the loop goes on serving: over every transport.
//!
//! Issue 8 (item 5): a panic used to drop the delivery unacknowledged, the broker
//! redelivered it, and it panicked again forever.

#[path = "../../../shared/bus/tests/amqp_support/mod.rs"]
mod amqp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Consumer, ContentType, Delivery, EmbeddedBus, Outgoing, Requester};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use protocol::{ErrorCode, Outcome, Reply, Timings, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;
use worker::{Answer, ConsumeConfig, Handler, MAX_PANICKING_ATTEMPTS};

/// The body that makes [`Brittle`] panic.
const POISON: &[u8] = b"poison";
const PANIC: &str = "brittle handler met poison";

/// A handler that panics on [`POISON`] and answers anything else with its body as JSON,
/// noting each delivery's correlation id and attempt.
#[derive(Clone, Default)]
struct Brittle {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
}

impl Handler for Brittle {
    fn answer<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Answer> {
        async move {
            let id = delivery.correlation_id.clone().unwrap_or_default();
            self.seen.lock().push((id.clone(), delivery.attempt));
            // Across an await, as the scoring handler's panics would be.
            tokio::task::yield_now().await;
            if delivery.body == POISON {
                panic!("{PANIC}");
            }
            let json = String::from_utf8_lossy(&delivery.body).into_owned();
            let reply =
                Reply { version: PROTOCOL_VERSION, id, outcome: Outcome::Json(json), timings: Timings::default() };
            Answer { reply, dead_letter: None, span: tracing::Span::none() }
        }
        .boxed()
    }
}

fn outgoing(queue: &str, correlation_id: &str, body: &[u8]) -> Outgoing {
    Outgoing {
        correlation_id: correlation_id.into(),
        queue: queue.into(),
        content_type: ContentType::MsgPack,
        body: body.to_vec(),
        expiration_ms: None,
        traceparent: None,
    }
}

async fn call(requester: &impl Requester, queue: &str, correlation_id: &str, body: &[u8]) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = requester.call(outgoing(queue, correlation_id, body), deadline).await.expect("a reply");
    protocol::decode(&reply).expect("a reply the protocol decodes")
}

/// Serves `consumer` with [`Brittle`], sends it the poison and then a good request through
/// `requester`, and checks the answers and the attempts the handler saw. The caller checks
/// the dead letter, where each transport keeps it.
async fn check(consumer: impl Consumer, requester: &impl Requester, queue: &str) {
    let handler = Brittle::default();
    let shutdown = CancellationToken::new();
    let config = ConsumeConfig { worker_id: "test".into(), max_in_flight: 4, drain_timeout: Duration::from_secs(2) };
    let serving = tokio::spawn(worker::serve(consumer, handler.clone(), config, shutdown.clone()));

    let reply = call(requester, queue, "poisoned", POISON).await;
    match &reply.outcome {
        Outcome::Error(error) => {
            assert_eq!(error.code, ErrorCode::Internal, "{}", error.message);
            assert!(error.message.contains(PANIC), "the reply names the panic: {}", error.message);
        }
        other => panic!("expected an internal error, got {other:?}"),
    }
    let attempts: Vec<(String, u32)> = (1..=MAX_PANICKING_ATTEMPTS).map(|n| ("poisoned".into(), n)).collect();
    assert_eq!(*handler.seen.lock(), attempts, "tried up to the limit, then given up on");

    // The loop survived its handler's panics and serves the next delivery.
    let reply = call(requester, queue, "next", b"[1]").await;
    assert!(matches!(&reply.outcome, Outcome::Json(json) if json == "[1]"), "{:?}", reply.outcome);
    assert_eq!(handler.seen.lock().last(), Some(&("next".to_string(), 1)));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), serving).await.expect("the loop drains").unwrap();
}

fn expected_reason() -> String {
    format!("handler panicked on attempt {MAX_PANICKING_ATTEMPTS}: {PANIC}")
}

#[tokio::test]
async fn embedded_panicking_delivery_is_dead_lettered_after_the_limit() {
    let bus = EmbeddedBus::new(16, "requests");
    check(bus.consumer("requests"), &bus, "requests").await;
    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].correlation_id.as_str(), dead[0].body.as_slice()), ("poisoned", POISON));
    assert_eq!(dead[0].reason, expected_reason());
    assert_eq!(bus.depth("requests"), 0, "nothing left to redeliver");
}

/// Over RabbitMQ, on both queue types: classic queues say only `redelivered`, quorum queues
/// count deliveries in `x-delivery-count`.
#[tokio::test]
async fn amqp_panicking_delivery_is_dead_lettered_after_the_limit() {
    for queue_type in [settings::QueueType::Classic, settings::QueueType::Quorum] {
        let broker = amqp_support::TestBroker::with_queue_type("panics", queue_type).await;
        let transport = broker.transport("brittle").await;
        let queue = transport.bus.queue_for(&transport.model, None);
        let consumer = transport.bus.consumer(std::slice::from_ref(&transport.model)).await.expect("a consumer");
        check(consumer, &transport.bus, &queue).await;
        // The dead letter is published before the request is acknowledged, after the reply:
        // wait for it to arrive, with a deadline.
        let dead = broker.wait_dead_letter(Duration::from_secs(5)).await;
        assert_eq!((dead.correlation_id.as_deref(), dead.body.as_slice()), (Some("poisoned"), POISON));
        assert_eq!(dead.header(bus::amqp::REASON_HEADER), Some(expected_reason()), "{queue_type:?}");
        assert_eq!(dead.header(bus::amqp::QUEUE_HEADER), Some(queue.clone()));
        assert!(broker.get_dead_letter().await.is_none(), "{queue_type:?}: dead-lettered once");
        broker.cleanup().await;
    }
}
