//! The transport conformance suite: the semantics every bus must keep, checked the same
//! way on each transport: the embedded one and RabbitMQ (a real broker on
//! 127.0.0.1:5672, `RFLEET_TEST_AMQP_URL` to point elsewhere). Each AMQP test uses its
//! own queue prefix and dead-letter queue and deletes them at the end. The embedded bus has
//! one queue for everything, so following a set of queues is checked on RabbitMQ only.
//! The AMQP 1.0 transport's broker dialect runs on the same broker through its
//! `rabbitmq_amqp1_0` plugin, which must be enabled (`rabbitmq-plugins enable
//! rabbitmq_amqp1_0`).

mod amqp_support;
#[path = "amqp_support/entra.rs"]
mod entra_support;
#[path = "amqp_support/servicebus.rs"]
mod servicebus_support;

use std::future::Future;
use std::time::{Duration, Instant};

use amqp_support::amqp1::{Amqp1, Amqp1Broker};
use amqp_support::{wait_for, Amqp, TestBroker};
use bus::{BusError, Consumer, ContentType, EmbeddedBus, Outgoing, Requester};
use servicebus_standin::QueueConfig;
use servicebus_support::{request_queue, Namespace, ServiceBus};
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "conformance.requests";

/// A transport under test: a requester and a way to open consumers on its test queue.
trait Transport: Clone + Send + Sync + 'static {
    type Requester: Requester + Clone;
    type Consumer: Consumer;
    /// Whether a request published while no worker consumes waits in the queue (a broker
    /// with durable queues) rather than failing at once (the embedded bus, whose queues
    /// live only while someone consumes them).
    const QUEUES_WAIT_FOR_WORKERS: bool;
    fn requester(&self) -> Self::Requester;
    fn consumer(&self) -> impl Future<Output = Self::Consumer> + Send;
    /// The queue requests are published to.
    fn queue(&self) -> String;
}

#[derive(Clone)]
struct Embedded(EmbeddedBus);

impl Transport for Embedded {
    type Requester = EmbeddedBus;
    type Consumer = bus::embedded::EmbeddedConsumer;
    const QUEUES_WAIT_FOR_WORKERS: bool = false;
    fn requester(&self) -> EmbeddedBus {
        self.0.clone()
    }
    async fn consumer(&self) -> Self::Consumer {
        self.0.consumer(QUEUE)
    }
    fn queue(&self) -> String {
        QUEUE.into()
    }
}

impl Transport for Amqp {
    type Requester = bus::AmqpBus;
    type Consumer = bus::AmqpConsumer;
    const QUEUES_WAIT_FOR_WORKERS: bool = true;
    fn requester(&self) -> bus::AmqpBus {
        self.bus.clone()
    }
    async fn consumer(&self) -> Self::Consumer {
        self.bus.consumer(std::slice::from_ref(&self.model)).await.expect("consume the test queue")
    }
    fn queue(&self) -> String {
        self.bus.queue_for(&self.model, None)
    }
}

impl Transport for Amqp1 {
    type Requester = bus::Amqp1Bus;
    type Consumer = bus::Amqp1Consumer;
    const QUEUES_WAIT_FOR_WORKERS: bool = true;
    fn requester(&self) -> bus::Amqp1Bus {
        self.bus.clone()
    }
    async fn consumer(&self) -> Self::Consumer {
        self.bus.consumer(std::slice::from_ref(&self.queue)).await.expect("consume the test queue")
    }
    fn queue(&self) -> String {
        self.queue.clone()
    }
}

fn outgoing(queue: &str, id: &str, body: &[u8]) -> Outgoing {
    Outgoing {
        correlation_id: id.into(),
        queue: queue.into(),
        content_type: ContentType::MsgPack,
        body: body.to_vec(),
        expiration_ms: None,
        traceparent: None,
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
    let queue = transport.queue();
    let _worker = spawn_echo(transport.consumer().await);
    let _worker2 = spawn_echo(transport.consumer().await);
    let calls = (0..200).map(|i| {
        let requester = requester.clone();
        let queue = queue.clone();
        async move {
            let body = format!("request-{i}");
            let reply =
                requester.call(outgoing(&queue, &format!("id-{i}"), body.as_bytes()), soon(5000)).await.unwrap();
            let expected: Vec<u8> = body.bytes().rev().collect();
            assert_eq!(reply, expected, "reply to request {i} belongs to another request");
        }
    });
    futures_join_all(calls).await;
}

async fn deadline_passes_and_late_reply_is_dropped<T: Transport>(transport: T) {
    let requester = transport.requester();
    let queue = transport.queue();
    let mut consumer = transport.consumer().await;
    let started = Instant::now();
    let result = requester.call(outgoing(&queue, "slow", b"x"), soon(100)).await;
    assert_eq!(result, Err(BusError::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(2), "the caller waited past its deadline");
    // The worker answers late: nothing breaks, the reply is dropped.
    let delivery = consumer.next().await.unwrap();
    delivery.reply(ContentType::MsgPack, b"late".to_vec()).await.unwrap();
    delivery.ack().await.unwrap();
    // The late reply finds nobody waiting and is dropped: the next call gets its own.
    // (Correlation ids are unique per request; re-using one while a late reply to it may
    // still be in flight would be ambiguous on any networked transport.)
    let _worker = spawn_echo(consumer);
    assert_eq!(requester.call(outgoing(&queue, "after-slow", b"ab"), soon(5000)).await.unwrap(), b"ba");
}

async fn unacknowledged_delivery_is_redelivered<T: Transport>(transport: T) {
    let requester = transport.requester();
    let queue = transport.queue();
    let mut first = transport.consumer().await;
    let call = tokio::spawn({
        let requester = requester.clone();
        async move { requester.call(outgoing(&queue, "lost", b"abc"), soon(5000)).await }
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

/// Without a worker, the embedded bus refuses a request at once (its queues exist only
/// while consumed), while a broker keeps it in the durable queue the dispatcher declared,
/// for the first worker that comes: the caller then sees its deadline pass, and readiness
/// means "connected", not "has consumers" (readiness probes ask `consumer_count`).
async fn no_consumer_is_unavailable<T: Transport>(transport: T) {
    let requester = transport.requester();
    let queue = transport.queue();
    let result = requester.call(outgoing(&queue, "nobody", b"x"), soon(300)).await;
    if T::QUEUES_WAIT_FOR_WORKERS {
        assert_eq!(result, Err(BusError::DeadlineExceeded));
        assert!(requester.is_ready());
        let mut consumer = transport.consumer().await;
        let waited = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        assert_eq!((waited.correlation_id.as_deref(), waited.body.as_slice()), (Some("nobody"), &b"x"[..]));
        waited.ack().await.unwrap();
    } else {
        assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
        assert!(!requester.is_ready());
        let _consumer = transport.consumer().await;
        assert!(requester.is_ready());
    }
}

/// A dead-lettered delivery is answered first, then never delivered again.
async fn dead_letters_keep_their_reason<T: Transport>(transport: T) {
    let requester = transport.requester();
    let queue = transport.queue();
    let mut consumer = transport.consumer().await;
    let call = tokio::spawn({
        let requester = requester.clone();
        async move { requester.call(outgoing(&queue, "poison", b"garbage"), soon(5000)).await }
    });
    let delivery = consumer.next().await.unwrap();
    delivery.reply(ContentType::MsgPack, b"error".to_vec()).await.unwrap();
    delivery.dead_letter("cannot decode").await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"error");
    let next = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(next.is_err(), "a dead-lettered message came back");
}

/// The W3C trace context a publisher sets reaches the consumer as it was sent (an AMQP
/// header over RabbitMQ, alike in-process), and a message without one arrives without.
async fn traceparent_reaches_the_consumer<T: Transport>(transport: T) {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let requester = transport.requester();
    let queue = transport.queue();
    let mut consumer = transport.consumer().await;
    for (id, traceparent) in [("traced", Some(TRACEPARENT)), ("untraced", None)] {
        let call = tokio::spawn({
            let (requester, queue) = (requester.clone(), queue.clone());
            async move {
                let message = Outgoing { traceparent: traceparent.map(str::to_string), ..outgoing(&queue, id, b"t") };
                requester.call(message, soon(5000)).await
            }
        });
        let delivery = consumer.next().await.unwrap();
        assert_eq!(delivery.correlation_id.as_deref(), Some(id));
        assert_eq!(delivery.traceparent.as_deref(), traceparent, "{id}");
        delivery.reply(ContentType::MsgPack, b"ok".to_vec()).await.unwrap();
        delivery.ack().await.unwrap();
        assert_eq!(call.await.unwrap().unwrap(), b"ok");
    }
}

/// The `rfleet_bus_*` metrics count what happened, labelled with the transport: two
/// requests published; one requeued, redelivered and acked; one answered after its caller
/// gave up (a dropped reply) and dead-lettered. Each test runs in a process of its own
/// (nextest), so the counts are this test's.
async fn bus_metrics_count_what_happened<T: Transport>(transport: T, label: &str) {
    let requester = transport.requester();
    let queue = transport.queue();
    let mut consumer = transport.consumer().await;
    let call = tokio::spawn({
        let (requester, queue) = (requester.clone(), queue.clone());
        async move { requester.call(outgoing(&queue, "requeued", b"a"), soon(5000)).await }
    });
    consumer.next().await.unwrap().reject(true).await.unwrap();
    let again = consumer.next().await.unwrap();
    assert!(again.attempt > 1);
    again.reply(ContentType::MsgPack, b"a".to_vec()).await.unwrap();
    again.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"a");

    let late = tokio::spawn(async move { requester.call(outgoing(&queue, "late", b"b"), soon(300)).await });
    let delivery = consumer.next().await.unwrap();
    assert_eq!(late.await.unwrap(), Err(BusError::DeadlineExceeded));
    delivery.reply(ContentType::MsgPack, b"b".to_vec()).await.unwrap();
    delivery.dead_letter("test").await.unwrap();

    let value = |name: &str| -> Option<f64> {
        let text = telemetry::metrics::encode(telemetry::metrics::Format::Text);
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let transport = format!("transport=\"{label}\"");
    // Over RabbitMQ the late reply is dropped by the reply consumer, after `reply` returned.
    let dropped = format!("rfleet_bus_replies_dropped_total{{{transport}}}");
    wait_for(Duration::from_secs(5), "the late reply counted", async || value(&dropped).filter(|n| *n == 1.0)).await;
    let expected = [
        (format!("rfleet_bus_published_total{{{transport},outcome=\"ok\"}}"), 2.0),
        (format!("rfleet_bus_publish_duration_seconds_count{{{transport}}}"), 2.0),
        (format!("rfleet_bus_consumed_total{{{transport},outcome=\"requeued\"}}"), 1.0),
        (format!("rfleet_bus_consumed_total{{{transport},outcome=\"acked\"}}"), 1.0),
        (format!("rfleet_bus_consumed_total{{{transport},outcome=\"dead_lettered\"}}"), 1.0),
        (format!("rfleet_bus_redeliveries_total{{{transport}}}"), 1.0),
        (format!("rfleet_bus_connection_up{{{transport}}}"), 1.0),
    ];
    for (series, count) in expected {
        assert_eq!(value(&series), Some(count), "{series}");
    }
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
    traceparent_reaches_the_consumer(Embedded(EmbeddedBus::new(16, QUEUE))).await;
}

#[tokio::test]
async fn embedded_metrics() {
    bus_metrics_count_what_happened(Embedded(EmbeddedBus::new(16, QUEUE)), "embedded").await;
}

#[tokio::test]
async fn embedded_dead_letters_are_recorded() {
    let bus = EmbeddedBus::new(16, QUEUE);
    dead_letters_keep_their_reason(Embedded(bus.clone())).await;
    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].correlation_id.as_str(), dead[0].body.as_slice(), dead[0].reason.as_str()),
        ("poison", &b"garbage"[..], "cannot decode")
    );
}

#[tokio::test]
async fn embedded_queue_is_bounded() {
    let bus = EmbeddedBus::new(2, QUEUE);
    let _consumer = bus.consumer(QUEUE); // registered, never takes anything
    let mut waiting = Vec::new();
    for i in 0..2 {
        let bus = bus.clone();
        waiting.push(tokio::spawn(async move { bus.call(outgoing(QUEUE, &format!("q{i}"), b"x"), soon(2000)).await }));
    }
    // Full once both calls are queued (their deadline is well past this wait).
    let start = Instant::now();
    while bus.depth(QUEUE) < 2 {
        assert!(start.elapsed() < Duration::from_secs(1), "depth {} after 1 s", bus.depth(QUEUE));
        tokio::task::yield_now().await;
    }
    assert_eq!(bus.depth(QUEUE), 2);
    assert_eq!(bus.call(outgoing(QUEUE, "q2", b"x"), soon(300)).await, Err(BusError::QueueFull(QUEUE.into())));
    for call in waiting {
        assert_eq!(call.await.unwrap(), Err(BusError::DeadlineExceeded));
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

#[tokio::test]
async fn amqp_replies_match_requests() {
    let broker = TestBroker::new("replies").await;
    replies_match_requests(broker.transport("echo").await).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_replies_match_requests_on_quorum_queues() {
    let broker = TestBroker::with_queue_type("quorum", settings::QueueType::Quorum).await;
    replies_match_requests(broker.transport("echo").await).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_deadline_passes_and_late_reply_is_dropped() {
    let broker = TestBroker::new("deadline").await;
    deadline_passes_and_late_reply_is_dropped(broker.transport("slow").await).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_unacknowledged_delivery_is_redelivered() {
    let broker = TestBroker::new("redeliver").await;
    unacknowledged_delivery_is_redelivered(broker.transport("lost").await).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_traceparent_reaches_the_consumer() {
    let broker = TestBroker::new("traceparent").await;
    traceparent_reaches_the_consumer(broker.transport("traced").await).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_metrics() {
    let broker = TestBroker::new("metrics").await;
    bus_metrics_count_what_happened(broker.transport("counted").await, "amqp").await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp_request_waits_for_first_worker() {
    let broker = TestBroker::new("noworker").await;
    no_consumer_is_unavailable(broker.transport("nobody").await).await;
    broker.cleanup().await;
}

/// Beyond the generic check: the copy in the dead-letter queue carries the reason, the
/// original queue and the original body and correlation id.
#[tokio::test]
async fn amqp_dead_letters_keep_their_reason() {
    let broker = TestBroker::new("dead").await;
    let transport = broker.transport("poison").await;
    dead_letters_keep_their_reason(transport.clone()).await;
    let dead = broker.get_dead_letter().await.expect("a message in the dead-letter queue");
    assert_eq!(dead.body, b"garbage");
    assert_eq!(dead.correlation_id.as_deref(), Some("poison"));
    assert_eq!(dead.header(bus::amqp::REASON_HEADER).as_deref(), Some("cannot decode"));
    assert_eq!(dead.header(bus::amqp::QUEUE_HEADER), Some(transport.queue()));
    assert!(broker.get_dead_letter().await.is_none(), "dead-lettered twice");
    broker.cleanup().await;
}

/// A request nobody takes before its `expiration` is dead-lettered by the broker itself
/// (the request queue's `x-dead-letter-exchange`).
#[tokio::test]
async fn amqp_expired_request_is_dead_lettered() {
    let broker = TestBroker::new("expire").await;
    let transport = broker.transport("late").await;
    let queue = transport.queue();
    let mut message = outgoing(&queue, "expires", b"too late");
    message.expiration_ms = Some(100);
    assert_eq!(transport.bus.call(message, soon(300)).await, Err(BusError::DeadlineExceeded));
    let dead = broker.wait_dead_letter(Duration::from_secs(5)).await;
    assert_eq!((dead.correlation_id.as_deref(), dead.body.as_slice()), (Some("expires"), &b"too late"[..]));
    assert!(dead.has_header("x-death"), "the broker records why it dead-lettered");
    broker.cleanup().await;
}

/// With no broker, every operation fails at once with `Unavailable`, never hangs.
#[tokio::test]
async fn amqp_broker_down_is_unavailable_fast() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = amqp_support::config("down");
    config.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let bus = bus::AmqpBus::start(config, shutdown.clone());
    let started = Instant::now();
    let result = bus.call(outgoing(&bus.queue_for("m", None), "x", b"x"), soon(5000)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(matches!(bus.consumer(&["m".to_string()]).await, Err(BusError::Unavailable(_))));
    assert!(matches!(bus.announce(b"hi".to_vec()).await, Err(BusError::Unavailable(_))));
    assert!(bus.consumer_count("anything").await.is_err());
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    assert!(!bus.is_ready() && !bus.is_connected());
    assert!(!bus.wait_connected(Duration::from_millis(300)).await);
    shutdown.cancel();
}

/// A publisher using RabbitMQ's direct reply-to gets the worker's reply on its own channel.
#[tokio::test]
async fn amqp_direct_reply_to() {
    let broker = TestBroker::new("direct").await;
    let transport = broker.transport("echo").await;
    let _worker = spawn_echo(transport.consumer().await);
    let reply = broker.direct_reply_to_call(&transport.queue(), "direct-1", b"hello").await;
    assert_eq!(reply, (Some("direct-1".to_string()), b"olleh".to_vec()));
    broker.cleanup().await;
}

/// Consumer shutdown cancels the consumers and requeues what was prefetched but not taken.
#[tokio::test]
async fn amqp_consumer_shutdown_requeues_prefetched() {
    let broker = TestBroker::new("drain").await;
    let transport = broker.transport("drain").await;
    let queue = transport.queue();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let bus = transport.bus.clone();
            let queue = queue.clone();
            tokio::spawn(async move { bus.call(outgoing(&queue, &format!("d{i}"), b"x"), soon(10_000)).await })
        })
        .collect();
    // All three wait in the queue before anyone consumes; then the consumer's prefetch (8)
    // takes them all: one in hand, two prefetched, none left ready in the queue.
    wait_for_count(&broker, &queue, 3).await;
    let mut consumer = transport.consumer().await;
    let taken = consumer.next().await.unwrap();
    wait_for_count(&broker, &queue, 0).await;
    consumer.shutdown().await;
    assert_eq!(transport.bus.consumer_count(&queue).await, Ok(0));
    // The delivery in hand still settles after shutdown.
    taken.reply(ContentType::MsgPack, b"done".to_vec()).await.unwrap();
    taken.ack().await.unwrap();
    // The other two went back to the queue and a new worker answers them.
    let _worker = spawn_echo(transport.consumer().await);
    let mut replies: Vec<_> = Vec::new();
    for call in calls {
        replies.push(call.await.unwrap().unwrap());
    }
    replies.sort();
    assert_eq!(replies, vec![b"done".to_vec(), b"x".to_vec(), b"x".to_vec()]);
    broker.cleanup().await;
}

/// Waits until `count` messages are ready in `queue`, for at most 10 s.
async fn wait_for_count(broker: &TestBroker, queue: &str, count: u32) {
    let what = format!("{count} messages ready in {queue}");
    wait_for(Duration::from_secs(10), &what, async || (broker.message_count(queue).await == Some(count)).then_some(()))
        .await;
}

/// Catalog announcements reach every listener.
#[tokio::test]
async fn amqp_catalog_announcements_fan_out() {
    let broker = TestBroker::new("catalog").await;
    let transport = broker.transport("m").await;
    let mut first = transport.bus.catalog();
    let mut second = transport.bus.catalog();
    // Listeners subscribe in the background: announce until both heard something (an
    // announcement before a listener is bound reaches nobody, as on any fanout exchange).
    let mut heard = (None, None);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        transport.bus.announce(b"worker-1".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if heard.0.is_none() {
            heard.0 = first.try_recv().ok();
        }
        if heard.1.is_none() {
            heard.1 = second.try_recv().ok();
        }
        if heard.0.is_some() && heard.1.is_some() {
            break;
        }
    }
    assert_eq!(heard, (Some(b"worker-1".to_vec()), Some(b"worker-1".to_vec())));
    broker.cleanup().await;
}

/// A consumer that follows a set of queues, on version queues and name queues alike:
/// after each change of the set, a request published to every queue of the test reaches
/// the follower when its queue is in the set, and otherwise stays in its queue for another
/// consumer. A name the broker would refuse is left out and the rest are served.
#[tokio::test]
async fn amqp_consumer_follows_its_queue_set() {
    let broker = TestBroker::new("follow").await;
    let bus = &broker.bus;
    let name = broker.queue("m", None);
    let v2 = broker.queue("m", Some("2"));
    let other = broker.queue("n", None);
    assert_eq!(v2, format!("{}m@2", broker.config.queue_prefix), "queue_for names the version queue");
    let too_long = bus.queue_for(&"x".repeat(300), None);
    let all = [name.clone(), v2.clone(), other.clone()];
    for queue in &all {
        bus.declare_queue(queue).await.unwrap(); // so that its consumers can be counted
    }
    let (set_tx, set) = tokio::sync::watch::channel(vec![name.clone(), too_long.clone()]);
    let mut follower = bus.consumer_following(set).await.expect("consume the first set");
    let mut check = async |step: &str, set: &[&String]| {
        set_tx.send_replace(set.iter().map(|q| q.to_string()).chain([too_long.clone()]).collect());
        for queue in &all {
            let expected = u32::from(set.contains(&queue));
            let what = format!("{expected} consumers on {queue} at step '{step}'");
            wait_for(Duration::from_secs(10), &what, async || {
                (bus.consumer_count(queue).await == Ok(expected)).then_some(())
            })
            .await;
        }
        let calls: Vec<_> = all
            .iter()
            .map(|queue| {
                let (bus, id) = (bus.clone(), format!("{step}:{queue}"));
                let queue = queue.clone();
                tokio::spawn(async move { bus.call(outgoing(&queue, &id, id.as_bytes()), soon(20_000)).await })
            })
            .collect();
        let mut expected: Vec<String> =
            all.iter().filter(|q| set.contains(q)).map(|queue| format!("{step}:{queue}")).collect();
        while !expected.is_empty() {
            let delivery = tokio::time::timeout(Duration::from_secs(10), follower.next())
                .await
                .unwrap_or_else(|_| panic!("step '{step}': the follower never got {expected:?}"))
                .expect("the follower's stream ended");
            let id = delivery.correlation_id.clone().unwrap_or_default();
            assert!(expected.contains(&id), "step '{step}': the follower got {id}, published outside its set");
            expected.retain(|e| *e != id);
            delivery.reply(ContentType::MsgPack, b"follower".to_vec()).await.unwrap();
            delivery.ack().await.unwrap();
        }
        // What went to a queue outside the set waits there: a consumer of that queue gets it.
        for queue in all.iter().filter(|q| !set.contains(q)) {
            let (_, fixed) = tokio::sync::watch::channel(vec![queue.clone()]);
            let mut another = bus.consumer_following(fixed).await.unwrap();
            let delivery = tokio::time::timeout(Duration::from_secs(10), another.next())
                .await
                .unwrap_or_else(|_| panic!("step '{step}': the request to {queue} did not stay in it"))
                .unwrap();
            assert_eq!(delivery.correlation_id, Some(format!("{step}:{queue}")));
            delivery.reply(ContentType::MsgPack, b"another".to_vec()).await.unwrap();
            delivery.ack().await.unwrap();
            another.shutdown().await;
        }
        for (queue, call) in all.iter().zip(calls) {
            let answered_by: &[u8] = if set.contains(&queue) { b"follower" } else { b"another" };
            assert_eq!(call.await.unwrap().as_deref(), Ok(answered_by), "step '{step}', {queue}");
        }
    };
    check("name queue only", &[&name]).await;
    check("version queue added", &[&name, &v2]).await;
    check("name queue removed, another added", &[&v2, &other]).await;
    check("nothing", &[]).await;
    check("all again", &[&name, &v2, &other]).await;
    // A call to a queue the broker would refuse fails at once, naming why, and the
    // connection it would have broken is still up.
    let refused = bus.call(outgoing(&too_long, "too-long", b"x"), soon(5000)).await;
    assert!(
        matches!(&refused, Err(BusError::Unavailable(message)) if message.contains("RabbitMQ takes at most 255")),
        "{refused:?}"
    );
    assert!(bus.is_ready());
    follower.shutdown().await;
    broker.cleanup().await;
}

/// Taking a queue out of the set: the delivery the worker holds still settles on its
/// channel, the ones the consumer received but had not handed out go back to the queue
/// for another consumer, and the queues left in the set go on.
#[tokio::test]
async fn amqp_removed_queue_gives_back_what_the_consumer_holds() {
    let broker = TestBroker::new("remove").await;
    let bus = &broker.bus;
    let (removed, kept) = (broker.queue("m", Some("1")), broker.queue("m", None));
    let (set_tx, set) = tokio::sync::watch::channel(vec![removed.clone(), kept.clone()]);
    let mut follower = bus.consumer_following(set).await.unwrap();
    let call = |queue: &String, id: &str| {
        let (bus, queue, id) = (bus.clone(), queue.clone(), id.to_string());
        tokio::spawn(async move { bus.call(outgoing(&queue, &id, b"x"), soon(20_000)).await })
    };
    let held_calls: Vec<_> = (0..3).map(|i| call(&removed, &format!("r{i}"))).collect();
    // All three are delivered to the follower (prefetch 8): one taken, two buffered.
    let held = follower.next().await.unwrap();
    wait_for_count(&broker, &removed, 0).await;
    set_tx.send_replace(vec![kept.clone()]);
    wait_for(Duration::from_secs(10), "the removed queue's consumer cancelled", async || {
        (bus.consumer_count(&removed).await == Ok(0)).then_some(())
    })
    .await;
    let kept_call = call(&kept, "k");
    let next = tokio::time::timeout(Duration::from_secs(10), follower.next()).await.unwrap().unwrap();
    assert_eq!(next.correlation_id.as_deref(), Some("k"), "a delivery of the removed queue was handed out");
    next.reply(ContentType::MsgPack, b"kept".to_vec()).await.unwrap();
    next.ack().await.unwrap();
    assert_eq!(kept_call.await.unwrap().as_deref(), Ok(&b"kept"[..]));
    // The held delivery's channel outlived its consumer.
    held.reply(ContentType::MsgPack, b"held".to_vec()).await.unwrap();
    held.ack().await.unwrap();
    // The two buffered ones went back and wait in the queue for another consumer.
    wait_for_count(&broker, &removed, 2).await;
    let _another = spawn_echo(bus.consumer(&["m@1".to_string()]).await.unwrap());
    let mut replies = Vec::new();
    for call in held_calls {
        replies.push(call.await.unwrap().unwrap());
    }
    replies.sort();
    assert_eq!(replies, [b"held".to_vec(), b"x".to_vec(), b"x".to_vec()]);
    follower.shutdown().await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// AMQP 1.0, broker dialect (RabbitMQ's rabbitmq_amqp1_0 plugin)

#[tokio::test]
async fn amqp1_replies_match_requests() {
    let broker = Amqp1Broker::new("replies").await;
    replies_match_requests(broker.transport("echo")).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_deadline_passes_and_late_reply_is_dropped() {
    let broker = Amqp1Broker::new("deadline").await;
    deadline_passes_and_late_reply_is_dropped(broker.transport("slow")).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_unacknowledged_delivery_is_redelivered() {
    let broker = Amqp1Broker::new("redeliver").await;
    unacknowledged_delivery_is_redelivered(broker.transport("lost")).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_traceparent_reaches_the_consumer() {
    let broker = Amqp1Broker::new("traceparent").await;
    traceparent_reaches_the_consumer(broker.transport("traced")).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_metrics() {
    let broker = Amqp1Broker::new("metrics").await;
    bus_metrics_count_what_happened(broker.transport("counted"), "amqp1").await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_request_waits_for_first_worker() {
    let broker = Amqp1Broker::new("noworker").await;
    no_consumer_is_unavailable(broker.transport("nobody")).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn amqp1_dead_letters_keep_their_reason() {
    let broker = Amqp1Broker::new("dead").await;
    dead_letters_keep_their_reason(broker.transport("poison")).await;
    broker.cleanup().await;
}

/// Dead-lettering is `rejected`: where the message goes then is the queue's RabbitMQ
/// policy (`dead-letter-exchange`); the broker records `rejected` as the reason, and the
/// message keeps its body and correlation id. A request that expires (header `ttl`) is
/// dead-lettered the same way, as `expired`.
#[tokio::test]
async fn amqp1_dead_letters_go_where_the_policy_says() {
    let broker = Amqp1Broker::new("deadpolicy").await;
    let dead = broker.declare_dead_letters("dead").await;
    broker.set_policy(&format!(r#"{{"dead-letter-exchange":"{dead}"}}"#));
    let transport = broker.transport("poison");
    dead_letters_keep_their_reason(transport.clone()).await;
    let letter = wait_for(Duration::from_secs(10), "a dead letter", async || broker.get(&dead).await).await;
    assert_eq!((letter.correlation_id.as_deref(), letter.body.as_slice()), (Some("poison"), &b"garbage"[..]));
    assert_eq!(letter.header("x-first-death-reason").as_deref(), Some("rejected"));

    let mut message = outgoing(&transport.queue, "expires", b"too late");
    message.expiration_ms = Some(100);
    assert_eq!(transport.bus.call(message, soon(300)).await, Err(BusError::DeadlineExceeded));
    let letter = wait_for(Duration::from_secs(10), "an expired request", async || broker.get(&dead).await).await;
    assert_eq!((letter.correlation_id.as_deref(), letter.body.as_slice()), (Some("expires"), &b"too late"[..]));
    assert_eq!(letter.header("x-first-death-reason").as_deref(), Some("expired"));
    broker.cleanup().await;
}

/// The broker sends a consumer no more requests than it has free slots for (`prefetch`):
/// the rest wait in the queue until one is settled.
#[tokio::test]
async fn amqp1_credit_only_for_free_slots() {
    let broker = Amqp1Broker::with_prefetch("credit", 2).await;
    let transport = broker.transport("busy");
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let (bus, queue) = (transport.bus.clone(), transport.queue.clone());
            tokio::spawn(async move { bus.call(outgoing(&queue, &format!("c{i}"), b"x"), soon(20_000)).await })
        })
        .collect();
    let ready = async |count: u32| {
        let what = format!("{count} requests ready in the queue");
        wait_for(Duration::from_secs(10), &what, async || {
            (broker.message_count(&transport.queue).await == Some(count)).then_some(())
        })
        .await
    };
    ready(5).await;
    let mut consumer = transport.consumer().await;
    let first = consumer.next().await.unwrap();
    ready(3).await;
    first.reply(ContentType::MsgPack, b"x".to_vec()).await.unwrap();
    first.ack().await.unwrap();
    ready(2).await;
    let _worker = spawn_echo(consumer);
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(b"x".to_vec()));
    }
    broker.cleanup().await;
}

/// Catalog announcements reach every listener (each its own queue on the catalog topic).
#[tokio::test]
async fn amqp1_catalog_announcements_fan_out() {
    let broker = Amqp1Broker::new("catalog").await;
    let bus = &broker.bus;
    let mut first = bus.catalog();
    let mut second = bus.catalog();
    // Listeners attach in the background: announce until both heard something.
    let mut heard = (None, None);
    wait_for(Duration::from_secs(10), "both listeners hear an announcement", async || {
        bus.announce(b"worker-1".to_vec()).await.unwrap();
        heard.0 = heard.0.take().or_else(|| first.try_recv().ok());
        heard.1 = heard.1.take().or_else(|| second.try_recv().ok());
        (heard.0.is_some() && heard.1.is_some()).then_some(())
    })
    .await;
    assert_eq!(heard, (Some(b"worker-1".to_vec()), Some(b"worker-1".to_vec())));
    broker.cleanup().await;
}

/// With no broker, every operation fails at once with `Unavailable`, never hangs.
#[tokio::test]
async fn amqp1_broker_down_is_unavailable_fast() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = bus::Amqp1Config::from_url("amqp://guest:guest@127.0.0.1:1").unwrap();
    let bus = bus::Amqp1Bus::start(config, shutdown.clone());
    let started = Instant::now();
    let result = bus.call(outgoing(&bus.queue_for("m", None), "x", b"x"), soon(5000)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(matches!(bus.consumer(&["m".to_string()]).await, Err(BusError::Unavailable(_))));
    assert!(matches!(bus.announce(b"hi".to_vec()).await, Err(BusError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    assert!(!bus.is_ready() && !bus.is_connected());
    shutdown.cancel();
}

/// A consumer follows its set of queues: a request to a queue in the set reaches it, one
/// to a queue taken out of it stays in its queue for another consumer.
#[tokio::test]
async fn amqp1_consumer_follows_its_queue_set() {
    let broker = Amqp1Broker::new("follow").await;
    let bus = &broker.bus;
    let (name, v2) = (broker.queue("m", None), broker.queue("m", Some("2")));
    let (set_tx, set) = tokio::sync::watch::channel(vec![name.clone()]);
    let mut follower = bus.consumer_following(set).await.expect("consume the first set");
    let call = |queue: &String, id: &str| {
        let (bus, queue, id) = (bus.clone(), queue.clone(), id.to_string());
        tokio::spawn(async move { bus.call(outgoing(&queue, &id, b"x"), soon(20_000)).await })
    };
    let answer = async |consumer: &mut bus::Amqp1Consumer, expected: &str| {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("never got {expected}"))
            .unwrap();
        assert_eq!(delivery.correlation_id.as_deref(), Some(expected));
        delivery.reply(ContentType::MsgPack, expected.as_bytes().to_vec()).await.unwrap();
        delivery.ack().await.unwrap();
    };
    let first = call(&name, "name-1");
    answer(&mut follower, "name-1").await;
    assert_eq!(first.await.unwrap(), Ok(b"name-1".to_vec()));
    set_tx.send_replace(vec![v2.clone()]);
    // The version queue's link attaches in the background: its request waits for it.
    let second = call(&v2, "v2-1");
    answer(&mut follower, "v2-1").await;
    assert_eq!(second.await.unwrap(), Ok(b"v2-1".to_vec()));
    // The name queue left the set: its request waits there for another consumer.
    let third = call(&name, "name-2");
    let mut another = bus.consumer(std::slice::from_ref(&name)).await.unwrap();
    answer(&mut another, "name-2").await;
    assert_eq!(third.await.unwrap(), Ok(b"name-2".to_vec()));
    follower.shutdown().await;
    another.shutdown().await;
    broker.cleanup().await;
}

/// Sharing the queues the 0-9-1 transport declared (`declare_queues` off: `/amq/queue/`):
/// a request sent over AMQP 1.0 is answered, and, dead-lettered, lands in the 0-9-1
/// transport's dead-letter queue through the queue's `x-dead-letter-exchange`.
#[tokio::test]
async fn amqp1_shares_the_queues_the_amqp_transport_declared() {
    let broker = TestBroker::new("amqp1-shared").await;
    let queue = broker.queue("shared", None);
    broker.bus.declare_queue(&queue).await.unwrap();
    let mut config = bus::Amqp1Config::from_url(&amqp_support::url()).unwrap();
    config.queue_prefix = broker.config.queue_prefix.clone();
    config.declare_queues = false;
    config.reply_queue = format!("{}reply", broker.config.queue_prefix);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let amqp1 = bus::Amqp1Bus::start(config, shutdown.clone());
    assert!(amqp1.wait_connected(Duration::from_secs(10)).await);
    let transport = Amqp1 { bus: amqp1.clone(), queue };
    dead_letters_keep_their_reason(transport).await;
    let dead = broker.wait_dead_letter(Duration::from_secs(5)).await;
    assert_eq!((dead.correlation_id.as_deref(), dead.body.as_slice()), (Some("poison"), &b"garbage"[..]));
    assert_eq!(dead.header("x-first-death-reason").as_deref(), Some("rejected"));
    let temporary = amqp_support::amqp1::temporary_queues(&broker.config.queue_prefix);
    shutdown.cancel();
    amqp1.closed().await;
    amqp_support::amqp1::delete_queues(&temporary);
    broker.cleanup().await;
}

/// When the peer ends the session (here: attaching `/queue/NAME` to a queue declared with
/// other arguments, which the plugin refuses by ending the whole session), the bus is
/// marked down at once, the call fails with `Unavailable`, and the bus reconnects in the
/// background; its consumers attach again and calls are answered.
#[tokio::test]
async fn amqp1_reconnects_after_the_peer_ends_the_session() {
    let broker = Amqp1Broker::new("reconnect").await;
    let transport = broker.transport("echo");
    let _worker = spawn_echo(transport.consumer().await);
    let answered = transport.bus.call(outgoing(&transport.queue, "before", b"ab"), soon(5000)).await;
    assert_eq!(answered, Ok(b"ba".to_vec()));
    let refused = broker.declare_with_arguments("refused").await;
    let result = transport.bus.call(outgoing(&refused, "refused", b"x"), soon(5000)).await;
    assert!(matches!(&result, Err(BusError::Unavailable(m)) if m.contains("PRECONDITION_FAILED")), "{result:?}");
    // Back in the background: the worker's link attaches again and answers.
    let answered = wait_for(Duration::from_secs(10), "an answer after reconnecting", async || {
        transport.bus.call(outgoing(&transport.queue, &uuid::Uuid::new_v4().to_string(), b"cd"), soon(1000)).await.ok()
    })
    .await;
    assert_eq!(answered, b"dc");
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// AMQP 1.0, Service Bus dialect, against the Service Bus stand-in (see
// `amqp_support::servicebus` for what is real and what stands in).

#[tokio::test]
async fn servicebus_conformance() {
    let lock = Duration::from_secs(30);
    for check in 0..6 {
        let namespace = Namespace::new(vec![request_queue("q", lock)]).await.connected().await;
        let transport = namespace.transport("q");
        match check {
            0 => replies_match_requests(transport).await,
            1 => deadline_passes_and_late_reply_is_dropped(transport).await,
            2 => unacknowledged_delivery_is_redelivered(transport).await,
            3 => no_consumer_is_unavailable(transport).await,
            4 => dead_letters_keep_their_reason(transport).await,
            _ => traceparent_reaches_the_consumer(transport).await,
        }
        namespace.close().await;
    }
}

#[tokio::test]
async fn servicebus_metrics() {
    let namespace = Namespace::new(vec![request_queue("counted", Duration::from_secs(30))]).await.connected().await;
    bus_metrics_count_what_happened(namespace.transport("counted"), "amqp1").await;
    namespace.close().await;
}

/// A dead letter lands in the queue's `$DeadLetterQueue` with `DeadLetterReason` (the
/// reason's code) and `DeadLetterErrorDescription`; abandoning counts a delivery.
#[tokio::test]
async fn servicebus_dead_letters_and_abandons_as_service_bus_does() {
    let namespace = Namespace::new(vec![request_queue("q", Duration::from_secs(30))]).await.connected().await;
    let transport = namespace.transport("q");
    let mut consumer = transport.consumer().await;
    let call = tokio::spawn({
        let (bus, queue) = (transport.bus.clone(), transport.queue.clone());
        async move { bus.call(outgoing(&queue, "poison", b"garbage"), soon(5000)).await }
    });
    let first = consumer.next().await.unwrap();
    assert_eq!(first.attempt, 1);
    first.reject(true).await.unwrap();
    let second = consumer.next().await.unwrap();
    assert_eq!(second.attempt, 2, "an abandoned delivery comes back with its delivery count one more");
    second.reply(ContentType::MsgPack, b"error".to_vec()).await.unwrap();
    second.dead_letter("bad_request: no column `x`").await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"error");
    let dead = wait_for(Duration::from_secs(5), "the dead letter", async || {
        namespace.standin.dead_letters("q").into_iter().next()
    })
    .await;
    assert_eq!((dead.correlation_id.as_deref(), dead.body.as_slice()), (Some("poison"), &b"garbage"[..]));
    assert_eq!(dead.dead_letter_reason.as_deref(), Some("bad_request"));
    assert_eq!(dead.dead_letter_error_description.as_deref(), Some("no column `x`"));
    assert!(namespace.standin.messages("q").is_empty());
    namespace.close().await;
}

/// A request that scores for longer than the queue's lock lasts stays locked (the worker
/// renews its lock through `$management`): another consumer does not get it meanwhile.
#[tokio::test]
async fn servicebus_locks_are_renewed_while_a_request_scores() {
    let namespace = Namespace::new(vec![request_queue("slow", Duration::from_secs(2))]).await.connected().await;
    let transport = namespace.transport("slow");
    let mut holder = transport.consumer().await;
    let mut other = transport.consumer().await;
    let call = tokio::spawn({
        let (bus, queue) = (transport.bus.clone(), transport.queue.clone());
        async move { bus.call(outgoing(&queue, "long", b"x"), soon(20_000)).await }
    });
    let (delivery, waiting) = tokio::select! {
        delivery = holder.next() => (delivery.unwrap(), &mut other),
        delivery = other.next() => (delivery.unwrap(), &mut holder),
    };
    // Three lock durations: without renewal the request would be delivered again.
    let again = tokio::time::timeout(Duration::from_secs(6), waiting.next()).await;
    assert!(again.is_err(), "the lock ran out while the request was scoring");
    delivery.reply(ContentType::MsgPack, b"done".to_vec()).await.unwrap();
    delivery.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"done");
    // Completed (settling does not wait for the peer), the request leaves the queue.
    wait_for(Duration::from_secs(5), "the request completed", async || {
        namespace.standin.messages("slow").is_empty().then_some(())
    })
    .await;
    namespace.close().await;
}

/// A worker that goes away holding a request (its connection gone) loses nothing: the
/// request comes back to another worker, its delivery count one more, and is answered.
#[tokio::test]
async fn servicebus_a_request_held_by_a_lost_worker_is_answered_by_another() {
    let namespace = Namespace::new(vec![request_queue("q", Duration::from_secs(2))]).await.connected().await;
    let transport = namespace.transport("q");
    let lost = CancellationToken::new();
    let worker = bus::Amqp1Bus::start(namespace.config.clone(), lost.clone());
    assert!(worker.wait_connected(Duration::from_secs(10)).await);
    let mut lost_consumer = worker.consumer(std::slice::from_ref(&transport.queue)).await.unwrap();
    let call = tokio::spawn({
        let (bus, queue) = (transport.bus.clone(), transport.queue.clone());
        async move { bus.call(outgoing(&queue, "held", b"abc"), soon(20_000)).await }
    });
    let held = lost_consumer.next().await.unwrap();
    lost.cancel();
    worker.closed().await;
    drop(held);
    let mut survivor = transport.consumer().await;
    let again = tokio::time::timeout(Duration::from_secs(10), survivor.next()).await.expect("redelivered").unwrap();
    assert_eq!(again.correlation_id.as_deref(), Some("held"));
    assert!(again.attempt >= 2, "attempt {}", again.attempt);
    again.reply(ContentType::MsgPack, b"cba".to_vec()).await.unwrap();
    again.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), b"cba");
    namespace.close().await;
}

/// Service Bus detaches links (idle ones after 10 minutes; here all at once): the bus
/// connects again, its worker attaches again, and calls are answered.
#[tokio::test]
async fn servicebus_forced_detach_is_recovered() {
    let namespace = Namespace::new(vec![request_queue("echo", Duration::from_secs(30))]).await.connected().await;
    let transport = namespace.transport("echo");
    let _worker = spawn_echo(transport.consumer().await);
    assert_eq!(transport.bus.call(outgoing(&transport.queue, "before", b"ab"), soon(5000)).await, Ok(b"ba".to_vec()));
    namespace.standin.detach_all_links();
    let answered = wait_for(Duration::from_secs(15), "an answer after the forced detach", async || {
        let id = uuid::Uuid::new_v4().to_string();
        transport.bus.call(outgoing(&transport.queue, &id, b"cd"), soon(1000)).await.ok()
    })
    .await;
    assert_eq!(answered, b"dc");
    namespace.close().await;
}

/// Tokens are put again before they expire (the stand-in detaches the links of an
/// audience whose token ran out): over several token lifetimes every call is answered.
#[tokio::test]
async fn servicebus_tokens_are_renewed_before_they_expire() {
    let lifetime = Duration::from_secs(2);
    let queues = vec![request_queue("echo", Duration::from_secs(30))];
    let namespace = Namespace::with(queues, |config| config.token_lifetime = lifetime).await.connected().await;
    let transport = namespace.transport("echo");
    let _worker = spawn_echo(transport.consumer().await);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < lifetime * 3 {
        let id = format!("call-{calls}");
        let answer = transport.bus.call(outgoing(&transport.queue, &id, b"ab"), soon(5000)).await;
        assert_eq!(answer, Ok(b"ba".to_vec()), "{id} after {:?}", started.elapsed());
        calls += 1;
    }
    namespace.close().await;
}

/// A wrong key never signs in: every operation fails at once, naming what was refused.
#[tokio::test]
async fn servicebus_a_wrong_key_is_refused() {
    let namespace = Namespace::new(vec![request_queue("q", Duration::from_secs(30))]).await.connected().await;
    let text = namespace.standin.connection_string(servicebus_support::KEY_NAME);
    let (before, _) = text.split_once("SharedAccessKey=").unwrap();
    let wrong = format!("{before}SharedAccessKey=d3JvbmcgYnV0IHdlbGwgZm9ybWVk;UseDevelopmentEmulator=true");
    let shutdown = CancellationToken::new();
    let bus = bus::Amqp1Bus::start(bus::Amqp1Config::from_connection_string(&wrong).unwrap(), shutdown.clone());
    assert!(!bus.wait_connected(Duration::from_secs(2)).await, "signed in with a wrong key");
    let result = bus.call(outgoing("q", "x", b"x"), soon(5000)).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    shutdown.cancel();
    namespace.close().await;
}

/// Every catalog listener hears every announcement: they peek the catalog queue, and
/// nobody takes announcements off it (they expire).
#[tokio::test]
async fn servicebus_catalog_announcements_reach_every_listener() {
    let namespace = Namespace::new(Vec::new()).await.connected().await;
    let bus = &namespace.bus;
    let (mut first, mut second) = (bus.catalog(), bus.catalog());
    bus.announce(b"worker-1".to_vec()).await.unwrap();
    let heard = |rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>| {
        let rx = std::mem::replace(rx, tokio::sync::mpsc::channel(1).1);
        async move {
            let mut rx = rx;
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.ok().flatten()
        }
    };
    let (a, b) = tokio::join!(heard(&mut first), heard(&mut second));
    assert_eq!((a, b), (Some(b"worker-1".to_vec()), Some(b"worker-1".to_vec())));
    assert_eq!(namespace.standin.messages(servicebus_support::CATALOG_QUEUE).len(), 1, "peeked, not taken");
    namespace.close().await;
}

/// A request whose time to live runs out in the queue is dead-lettered by Service Bus
/// (on a queue that dead-letters on expiry) and never reaches a worker.
#[tokio::test]
async fn servicebus_expired_request_is_dead_lettered() {
    let queue = QueueConfig { dead_letter_on_expiry: true, ..request_queue("q", Duration::from_secs(30)) };
    let namespace = Namespace::new(vec![queue]).await.connected().await;
    let transport = namespace.transport("q");
    let mut message = outgoing(&transport.queue, "expires", b"too late");
    message.expiration_ms = Some(100);
    assert_eq!(transport.bus.call(message, soon(300)).await, Err(BusError::DeadlineExceeded));
    let dead = wait_for(Duration::from_secs(10), "the expired request", async || {
        namespace.standin.dead_letters("q").into_iter().next()
    })
    .await;
    assert_eq!(dead.correlation_id.as_deref(), Some("expires"));
    assert_eq!(dead.dead_letter_reason.as_deref(), Some("TTLExpiredException"));
    namespace.close().await;
}

/// Against a real Azure Service Bus namespace, when `RFLEET_TEST_SERVICEBUS` holds a
/// connection string (a policy with Send and Listen on the queues below); skipped, saying
/// so, otherwise. The namespace needs the queue `RFLEET_TEST_SERVICEBUS_QUEUE` (default
/// `rfleet.test`, made by hand), and the session-enabled `rfleet.replies` and
/// `rfleet.catalog` that `deploy/azure/main.bicep` makes. What it checks: signing in with SAS over TLS, requests and
/// replies by session, abandon with the delivery count, and the catalog by peeking.
#[tokio::test]
async fn servicebus_live_namespace() {
    let Ok(connection_string) = std::env::var("RFLEET_TEST_SERVICEBUS") else {
        eprintln!("skipped: RFLEET_TEST_SERVICEBUS (a Service Bus connection string) is not set");
        return;
    };
    let queue = std::env::var("RFLEET_TEST_SERVICEBUS_QUEUE").unwrap_or_else(|_| "rfleet.test".into());
    let mut config = bus::Amqp1Config::from_connection_string(&connection_string).expect("RFLEET_TEST_SERVICEBUS");
    config.queue_prefix = String::new();
    config.connection_name = format!("rfleet-live-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let shutdown = CancellationToken::new();
    let bus = bus::Amqp1Bus::start(config, shutdown.clone());
    assert!(bus.wait_connected(Duration::from_secs(30)).await, "could not sign in to the namespace");
    let transport = Amqp1 { bus: bus.clone(), queue };
    replies_match_requests(transport.clone()).await;
    unacknowledged_delivery_is_redelivered(transport).await;
    let mut catalog = bus.catalog();
    let heard = wait_for(Duration::from_secs(30), "an announcement peeked", async || {
        bus.announce(b"live-test".to_vec()).await.unwrap();
        catalog.try_recv().ok()
    })
    .await;
    assert_eq!(heard, b"live-test");
    shutdown.cancel();
    bus.closed().await;
}

/// With a namespace and no connection string the bus signs in with Entra ID: Microsoft's
/// `azure_identity` trades the workload's federated token for an access token at the
/// (stand-in) token endpoint over HTTPS, and the bus puts it on CBS as a `jwt`, which the
/// Service Bus stand-in verifies. A federated token the endpoint refuses never signs in.
#[tokio::test]
async fn servicebus_signs_in_with_entra_id() {
    use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
    use azure_core::http::ClientOptions;
    use azure_identity::{
        ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
    };

    const FEDERATED: &str = "eyJhbGciOiJSUzI1NiJ9.a-kubernetes-service-account-token.signature";
    let key = b"a key the token endpoint and the namespace share";
    let namespace = Namespace::with_entra(vec![request_queue("q", Duration::from_secs(30))], key).await;
    let endpoint = entra_support::TokenEndpoint::start(FEDERATED, key, 3600).await;
    let bus_for = |federated: &str| {
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), federated).unwrap();
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = endpoint.url.clone();
        let transport = bus::amqp1::entra::http_transport(Some(endpoint.ca_file.path())).unwrap();
        let client_options = ClientOptions {
            transport: Some(transport),
            cloud: Some(std::sync::Arc::new(CloudConfiguration::from(cloud))),
            ..ClientOptions::default()
        };
        let options = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options },
            client_id: Some("00000000-0000-0000-0000-00000000000a".into()),
            tenant_id: Some("tenant".into()),
            token_file_path: Some(token_file.path().to_path_buf()),
        };
        let credential = WorkloadIdentityCredential::new(Some(options)).unwrap();
        let mut config = bus::Amqp1Config::from_namespace("127.0.0.1", bus::amqp1::entra::EntraId(credential));
        // The stand-in speaks plain AMQP on a port of its own.
        config.endpoint = namespace.standin.addr().to_string();
        config.tls = false;
        config.queue_prefix = String::new();
        let shutdown = CancellationToken::new();
        (bus::Amqp1Bus::start(config, shutdown.clone()), shutdown, token_file)
    };
    let (bus, shutdown, _token_file) = bus_for(FEDERATED);
    assert!(bus.wait_connected(Duration::from_secs(10)).await, "did not sign in with Entra ID");
    let _worker = spawn_echo(bus.consumer(&["q".to_string()]).await.unwrap());
    assert_eq!(bus.call(outgoing("q", "entra", b"ab"), soon(5000)).await, Ok(b"ba".to_vec()));
    let grants = endpoint.grants.lock().clone();
    assert!(
        !grants.is_empty() && grants.iter().all(|form| form.contains("client_id=00000000-0000-0000-0000-00000000000a")),
        "{grants:?}"
    );
    shutdown.cancel();
    bus.closed().await;

    let (refused, shutdown, _token_file) = bus_for("not-the-workload's-token");
    assert!(!refused.wait_connected(Duration::from_secs(2)).await, "signed in with a refused federated token");
    assert!(matches!(refused.call(outgoing("q", "x", b"x"), soon(5000)).await, Err(BusError::Unavailable(_))));
    shutdown.cancel();
    namespace.close().await;
}

/// A worker asked to consume a queue the namespace lacks (Service Bus makes none on use)
/// still serves its other queues, and a dispatcher's request to the missing queue fails at
/// once, naming it, rather than waiting for its deadline.
#[tokio::test]
async fn servicebus_a_missing_queue_does_not_stop_the_others() {
    let namespace = Namespace::new(vec![request_queue("present", Duration::from_secs(30))]).await.connected().await;
    let bus = &namespace.bus;
    let consumer =
        bus.consumer_following(tokio::sync::watch::channel(vec!["missing".into(), "present".into()]).1).await;
    // The first attach of the set fails on the missing queue: the consumer is refused at once.
    assert!(
        matches!(&consumer, Err(BusError::Unavailable(m)) if m.contains("missing")),
        "{:?}",
        consumer.as_ref().err()
    );
    let (_set, queues) = tokio::sync::watch::channel(vec!["present".to_string()]);
    let _worker = spawn_echo(bus.consumer_following(queues).await.expect("consume the queue that exists"));
    let answered = wait_for(Duration::from_secs(10), "an answer from the queue that exists", async || {
        bus.call(outgoing("present", &uuid::Uuid::new_v4().to_string(), b"ab"), soon(2000)).await.ok()
    })
    .await;
    assert_eq!(answered, b"ba");
    // A minute's deadline: an answer before the test's own bound is one that did not wait.
    let missing =
        tokio::time::timeout(Duration::from_secs(20), bus.call(outgoing("missing", "to-nowhere", b"x"), soon(60_000)))
            .await
            .expect("a request to a missing queue waited for its deadline");
    assert!(matches!(&missing, Err(BusError::Unavailable(m)) if m.contains("missing")), "{missing:?}");
    namespace.close().await;
}

/// Over TLS (as to Service Bus on 5671): the bus checks the peer's certificate against its
/// CAs (here `ca_file`'s, made now, in front of the stand-in) for the host it dials, and
/// requests and replies flow as in plain AMQP. A CA that did not sign the certificate is
/// refused: the bus never connects.
#[tokio::test]
async fn servicebus_over_tls() {
    let namespace = Namespace::new(vec![request_queue("q", Duration::from_secs(30))]).await.connected().await;
    let (proxy, ca_file) = entra_support::tls_proxy(namespace.standin.addr()).await;
    let over_tls = |ca: &std::path::Path| {
        let mut config = namespace.config.clone();
        config.endpoint = proxy.to_string();
        config.tls = true;
        config.ca_file = Some(ca.to_path_buf());
        let shutdown = CancellationToken::new();
        (bus::Amqp1Bus::start(config, shutdown.clone()), shutdown)
    };
    let (bus, shutdown) = over_tls(ca_file.path());
    assert!(bus.wait_connected(Duration::from_secs(10)).await, "did not connect over TLS");
    replies_match_requests(ServiceBus { bus: bus.clone(), queue: "q".into() }).await;
    shutdown.cancel();
    bus.closed().await;

    let (other_ca, _) = entra_support::loopback_tls();
    let (untrusting, shutdown) = over_tls(other_ca.path());
    assert!(!untrusting.wait_connected(Duration::from_secs(2)).await, "trusted a certificate no CA of it signed");
    shutdown.cancel();
    namespace.close().await;
}
