//! The transport conformance suite: the semantics every bus must keep, checked the same
//! way on each transport (today the embedded one; the broker transports join here).

use std::time::{Duration, Instant};

use bus::{BusError, Consumer, ContentType, EmbeddedBus, Outgoing, Requester};

const QUEUE: &str = "conformance.requests";

/// A transport under test: a requester and a way to open consumers on `QUEUE`.
trait Transport: Clone + Send + Sync + 'static {
    type Requester: Requester + Clone;
    type Consumer: Consumer;
    fn requester(&self) -> Self::Requester;
    fn consumer(&self) -> Self::Consumer;
}

#[derive(Clone)]
struct Embedded(EmbeddedBus);

impl Transport for Embedded {
    type Requester = EmbeddedBus;
    type Consumer = bus::embedded::EmbeddedConsumer;
    fn requester(&self) -> EmbeddedBus {
        self.0.clone()
    }
    fn consumer(&self) -> Self::Consumer {
        self.0.consumer(QUEUE)
    }
}

fn outgoing(id: &str, body: &[u8]) -> Outgoing {
    Outgoing {
        correlation_id: id.into(),
        queue: QUEUE.into(),
        content_type: ContentType::MsgPack,
        body: body.to_vec(),
        expiration_ms: None,
    }
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// Echo worker: replies with the request body reversed, then acks.
fn spawn_echo(mut consumer: impl Consumer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let mut body = delivery.body.clone();
            body.reverse();
            delivery.reply(delivery.content_type, body).await.unwrap();
            delivery.ack().await.unwrap();
        }
    })
}

async fn replies_match_requests<T: Transport>(transport: T) {
    let requester = transport.requester();
    let _worker = spawn_echo(transport.consumer());
    let _worker2 = spawn_echo(transport.consumer());
    let calls = (0..200).map(|i| {
        let requester = requester.clone();
        async move {
            let body = format!("request-{i}");
            let reply = requester.call(outgoing(&format!("id-{i}"), body.as_bytes()), soon(5000)).await.unwrap();
            let expected: Vec<u8> = body.bytes().rev().collect();
            assert_eq!(reply, expected, "reply to request {i} belongs to another request");
        }
    });
    futures_join_all(calls).await;
}

async fn deadline_passes_and_late_reply_is_dropped<T: Transport>(transport: T) {
    let requester = transport.requester();
    let mut consumer = transport.consumer();
    let started = Instant::now();
    let result = requester.call(outgoing("slow", b"x"), soon(100)).await;
    assert_eq!(result, Err(BusError::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(2), "the caller waited past its deadline");
    // The worker answers late: nothing breaks, the reply is dropped.
    let delivery = consumer.next().await.unwrap();
    delivery.reply(ContentType::MsgPack, b"late".to_vec()).await.unwrap();
    delivery.ack().await.unwrap();
    // The same id can be used again and gets its own reply, not the late one.
    let _worker = spawn_echo(consumer);
    assert_eq!(requester.call(outgoing("slow", b"ab"), soon(5000)).await.unwrap(), b"ba");
}

async fn unacknowledged_delivery_is_redelivered<T: Transport>(transport: T) {
    let requester = transport.requester();
    let mut first = transport.consumer();
    let call = tokio::spawn({
        let requester = requester.clone();
        async move { requester.call(outgoing("lost", b"abc"), soon(5000)).await }
    });
    let delivery = first.next().await.unwrap();
    assert!(!delivery.redelivered);
    drop(delivery); // the worker died holding it
    let again = first.next().await.unwrap();
    assert!(again.redelivered, "a lost delivery comes back marked redelivered");
    // An explicit requeue also redelivers.
    again.reject(true).await.unwrap();
    let third = first.next().await.unwrap();
    assert!(third.redelivered);
    third.reply(ContentType::MsgPack, b"cba".to_vec()).await.unwrap();
    third.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"cba");
}

async fn no_consumer_is_unavailable<T: Transport>(transport: T) {
    let requester = transport.requester();
    let result = requester.call(outgoing("nobody", b"x"), soon(1000)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(!requester.is_ready());
    let _consumer = transport.consumer();
    assert!(requester.is_ready());
}

/// A dead-lettered delivery is answered first, then never delivered again.
async fn dead_letters_keep_their_reason<T: Transport>(transport: T) {
    let requester = transport.requester();
    let mut consumer = transport.consumer();
    let call = tokio::spawn({
        let requester = requester.clone();
        async move { requester.call(outgoing("poison", b"garbage"), soon(5000)).await }
    });
    let delivery = consumer.next().await.unwrap();
    delivery.reply(ContentType::MsgPack, b"error".to_vec()).await.unwrap();
    delivery.dead_letter("cannot decode").await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"error");
    let next = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(next.is_err(), "a dead-lettered message came back");
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(futures: impl Iterator<Item = F>) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn embedded_conformance() {
    replies_match_requests(Embedded(EmbeddedBus::new(1024, QUEUE))).await;
    deadline_passes_and_late_reply_is_dropped(Embedded(EmbeddedBus::new(16, QUEUE))).await;
    unacknowledged_delivery_is_redelivered(Embedded(EmbeddedBus::new(16, QUEUE))).await;
    no_consumer_is_unavailable(Embedded(EmbeddedBus::new(16, QUEUE))).await;
    dead_letters_keep_their_reason(Embedded(EmbeddedBus::new(16, QUEUE))).await;
}

#[tokio::test]
async fn embedded_dead_letters_are_recorded() {
    let bus = EmbeddedBus::new(16, QUEUE);
    dead_letters_keep_their_reason(Embedded(bus.clone())).await;
    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].correlation_id.as_str(), dead[0].body.as_slice(), dead[0].reason.as_str()), ("poison", &b"garbage"[..], "cannot decode"));
}

#[tokio::test]
async fn embedded_queue_is_bounded() {
    let bus = EmbeddedBus::new(2, QUEUE);
    let _consumer = bus.consumer(QUEUE); // registered, never takes anything
    let mut waiting = Vec::new();
    for i in 0..2 {
        let bus = bus.clone();
        waiting.push(tokio::spawn(async move { bus.call(outgoing(&format!("q{i}"), b"x"), soon(300)).await }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(bus.depth(QUEUE), 2);
    assert_eq!(bus.call(outgoing("q2", b"x"), soon(300)).await, Err(BusError::QueueFull(QUEUE.into())));
    for call in waiting {
        assert_eq!(call.await.unwrap(), Err(BusError::DeadlineExceeded));
    }
}
