//! Recovery from a broker restart (`rabbitmqctl stop_app` / `start_app`): calls fail fast
//! during the outage, and the same `AmqpBus` and consumer serve again after it.
//!
//! A test binary of its own, so no other test of this crate runs against the broker while
//! it is down; in a shared CI run, put every test named `*broker_restart*` in a serial group.

mod amqp_support;

use std::time::{Duration, Instant};

use amqp_support::TestBroker;
use bus::{BusError, Consumer, ContentType, Outgoing, Requester};

/// Restarts the broker's application if the test ends (or panics) while it is stopped:
/// other tests share the broker.
struct StartAppGuard {
    armed: bool,
}

impl Drop for StartAppGuard {
    fn drop(&mut self) {
        if self.armed {
            rabbitmqctl("start_app");
        }
    }
}

fn rabbitmqctl(command: &str) {
    let status = std::process::Command::new("rabbitmqctl").arg(command).output().expect("run rabbitmqctl");
    assert!(status.status.success(), "rabbitmqctl {command}: {}", String::from_utf8_lossy(&status.stderr));
}

fn request(queue: &str, id: &str) -> Outgoing {
    Outgoing {
        correlation_id: id.into(),
        queue: queue.into(),
        content_type: ContentType::MsgPack,
        body: id.as_bytes().to_vec(),
        expiration_ms: Some(2000),
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
    // which recovery path ran.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let broker = TestBroker::new("restart").await;
    let bus = broker.bus.clone();
    let echo = broker.transport("echo").await;
    let idle = broker.transport("idle").await; // declared, never consumed
    let _worker = spawn_tolerant_echo(bus.consumer(std::slice::from_ref(&echo.model)).await.unwrap());
    let echo_queue = bus.queue_for(&echo.model);
    assert_eq!(
        bus.call(request(&echo_queue, "before"), Instant::now() + Duration::from_secs(5)).await.unwrap(),
        b"before"
    );

    // A call that waits when the broker goes away must fail then, not at its deadline.
    let waiting = tokio::spawn({
        let bus = bus.clone();
        let queue = bus.queue_for(&idle.model);
        async move {
            let started = Instant::now();
            (bus.call(request(&queue, "waiting"), Instant::now() + Duration::from_secs(30)).await, started.elapsed())
        }
    });
    // A steady stream of calls through the outage.
    let stream = tokio::spawn({
        let bus = bus.clone();
        let queue = echo_queue.clone();
        async move {
            let mut outcomes = Vec::new();
            for i in 0..40 {
                let deadline = Instant::now() + Duration::from_millis(1500);
                let result = bus.call(request(&queue, &format!("during-{i}")), deadline).await;
                outcomes.push((result, Instant::now().saturating_duration_since(deadline)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcomes
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut guard = StartAppGuard { armed: true };
    tokio::task::spawn_blocking(|| rabbitmqctl("stop_app")).await.unwrap();
    let stopped_at = Instant::now();

    let (result, waited) = waiting.await.unwrap();
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(waited < Duration::from_secs(10), "a pending call waited {waited:?} for a dead connection");
    let started = Instant::now();
    let result = bus.call(request(&echo_queue, "down"), Instant::now() + Duration::from_secs(5)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "a call while down took {:?}", started.elapsed());
    assert!(!bus.is_ready());

    tokio::time::sleep(Duration::from_secs(1).saturating_sub(stopped_at.elapsed())).await;
    tokio::task::spawn_blocking(|| rabbitmqctl("start_app")).await.unwrap();
    guard.armed = false;
    let restarted_at = Instant::now();

    // The same bus and the same consumer serve again within seconds.
    let mut recovered = None;
    for i in 0..100 {
        let result =
            bus.call(request(&echo_queue, &format!("after-{i}")), Instant::now() + Duration::from_secs(2)).await;
        if let Ok(body) = result {
            assert_eq!(body, format!("after-{i}").as_bytes());
            recovered = Some(restarted_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = recovered.expect("no call succeeded within 20 s of start_app");
    assert!(bus.is_ready());
    eprintln!("recovered {recovered:?} after start_app");

    for (result, overrun) in stream.await.unwrap() {
        assert!(
            matches!(result, Ok(_) | Err(BusError::Unavailable(_)) | Err(BusError::DeadlineExceeded)),
            "{result:?}"
        );
        assert!(overrun < Duration::from_millis(500), "a call ran {overrun:?} past its deadline");
    }
    // The idle queue survived the restart (durable) and can be consumed.
    assert_eq!(bus.consumer_count(&bus.queue_for(&idle.model)).await, Ok(0));
    broker.cleanup().await;
}
