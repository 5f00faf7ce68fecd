//! Recovery from a broker restart: calls fail fast during the outage, and the same
//! `AmqpBus` and consumer serve again after it.
//!
//! The broker restarted is a RabbitMQ node of this test's own (`amqp_support::node`), never
//! the shared one: other tests may use that at the same time, and nothing but this test
//! knows of its node.

mod amqp_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_support::node::BrokerNode;
use amqp_support::{wait_for, TestBroker};
use bus::{AmqpConfig, BusError, Consumer, ContentType, Outgoing, Requester};

fn request(queue: &str, id: &str) -> Outgoing {
    Outgoing {
        correlation_id: id.into(),
        queue: queue.into(),
        content_type: ContentType::MsgPack,
        body: id.as_bytes().to_vec(),
        expiration_ms: Some(2000),
        traceparent: None,
    }
}

/// A worker that keeps going through the outage: replies and acks may fail then.
fn spawn_tolerant_echo(mut consumer: bus::AmqpConsumer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let body = delivery.body.clone();
            if delivery.reply(ContentType::MsgPack, body).await.is_ok() {
                let _ = delivery.ack().await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_restart_recovers() {
    // `RUST_LOG=bus=debug cargo test -p bus --test amqp_broker_restart -- --nocapture` shows
    // the reconnect loop at work.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut node = BrokerNode::start("bus-restart");
    let broker = TestBroker::start(AmqpConfig { url: node.url().into(), ..amqp_support::config("restart") }).await;
    let bus = broker.bus.clone();
    let echo = broker.transport("echo").await;
    let idle = broker.transport("idle").await; // declared, never consumed
    let _worker = spawn_tolerant_echo(bus.consumer(std::slice::from_ref(&echo.model)).await.unwrap());
    let echo_queue = bus.queue_for(&echo.model, None);
    let idle_queue = bus.queue_for(&idle.model, None);
    assert_eq!(
        bus.call(request(&echo_queue, "before"), Instant::now() + Duration::from_secs(5)).await.unwrap(),
        b"before"
    );

    // A call that waits when the broker goes away must fail then, not at its deadline.
    let waiting = tokio::spawn({
        let (bus, queue) = (bus.clone(), idle_queue.clone());
        async move {
            let started = Instant::now();
            (bus.call(request(&queue, "waiting"), Instant::now() + Duration::from_secs(30)).await, started.elapsed())
        }
    });
    // A steady stream of calls through the outage.
    let answered = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let (bus, queue, answered) = (bus.clone(), echo_queue.clone(), answered.clone());
        async move {
            let mut outcomes = Vec::new();
            for i in 0..40 {
                let deadline = Instant::now() + Duration::from_millis(1500);
                let result = bus.call(request(&queue, &format!("during-{i}")), deadline).await;
                answered.fetch_add(usize::from(result.is_ok()), Ordering::Relaxed);
                outcomes.push((result, Instant::now().saturating_duration_since(deadline)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcomes
        }
    });

    // The outage must find both in flight: the waiting call in its queue, the stream flowing.
    wait_for(Duration::from_secs(10), "the calls to get going", async || {
        let going = broker.message_count(&idle_queue).await == Some(1) && answered.load(Ordering::Relaxed) > 0;
        going.then_some(())
    })
    .await;
    // Blocking for the seconds a node takes to stop: the bus's tasks run on the workers.
    tokio::task::block_in_place(|| node.stop());

    let (result, waited) = waiting.await.unwrap();
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(waited < Duration::from_secs(10), "a pending call waited {waited:?} for a dead connection");
    let started = Instant::now();
    let result = bus.call(request(&echo_queue, "down"), Instant::now() + Duration::from_secs(5)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "a call while down took {:?}", started.elapsed());
    assert!(!bus.is_ready());

    tokio::task::block_in_place(|| node.start_again());

    // The same bus and the same consumer serve again within seconds.
    let mut i = 0;
    wait_for(Duration::from_secs(30), "a call to succeed after the restart", async || {
        i += 1;
        let sent = format!("after-{i}");
        let body = bus.call(request(&echo_queue, &sent), Instant::now() + Duration::from_secs(2)).await.ok()?;
        assert_eq!(body, sent.as_bytes());
        Some(())
    })
    .await;
    assert!(bus.is_ready());

    for (result, overrun) in stream.await.unwrap() {
        assert!(
            matches!(result, Ok(_) | Err(BusError::Unavailable(_)) | Err(BusError::DeadlineExceeded)),
            "{result:?}"
        );
        assert!(overrun < Duration::from_millis(500), "a call ran {overrun:?} past its deadline");
    }
    // The idle queue survived the restart (durable) and can be consumed.
    assert_eq!(bus.consumer_count(&idle_queue).await, Ok(0));
    broker.cleanup().await;
}
