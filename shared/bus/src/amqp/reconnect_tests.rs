//! The reconnect loop against the real broker, through a TCP proxy these tests cut: each
//! loses only its own connections, so they run beside every other broker test. What comes
//! back after a cut: the bus as a whole, and a consumer with the set of queues it follows
//! by then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::uri::AMQPUri;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::{AmqpBus, AmqpConfig};
use crate::{BusError, Consumer, ContentType, Outgoing, Requester};

/// The broker the tests use, as the integration tests find it.
fn broker_url() -> String {
    std::env::var("RFLEET_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The value of one series of this process's metrics (each test is a process of its own).
fn metric(series: &str) -> Option<f64> {
    let text = telemetry::metrics::encode(telemetry::metrics::Format::Text);
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Forwards TCP connections to the broker until told to cut them all and refuse new ones.
struct Proxy {
    address: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: AbortHandle,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let (up, links) = (up.clone(), links.clone());
            async move {
                loop {
                    let (mut inbound, _) = listener.accept().await.unwrap();
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the handshake sees the connection close
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        let mut outbound = TcpStream::connect(upstream).await?;
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                    });
                    links.lock().push(link.abort_handle());
                }
            }
        });
        Proxy { address, up, links, accepting: accepting.abort_handle() }
    }

    /// Closes every forwarded connection (both ends see it close) and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

fn request(queue: &str, id: &str, expiration_ms: u64) -> Outgoing {
    Outgoing {
        correlation_id: id.into(),
        queue: queue.into(),
        content_type: ContentType::MsgPack,
        body: id.as_bytes().to_vec(),
        expiration_ms: Some(expiration_ms),
        traceparent: None,
    }
}

/// Waits for `condition`, polling, at most `within`.
async fn eventually(within: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition().await
}

/// Announces `body` until the catalog listener hears it (announcements made before the
/// listener was bound are lost, as they are meant to be), at most for 10 s.
async fn hear(bus: &AmqpBus, announcements: &mut tokio::sync::mpsc::Receiver<Vec<u8>>, body: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the catalog listener never heard {body:?}");
        bus.announce(body.to_vec()).await.unwrap();
        while let Ok(Some(heard)) = tokio::time::timeout(Duration::from_millis(200), announcements.recv()).await {
            if heard == body {
                return;
            }
        }
    }
}

/// A bus whose every connection goes through a [`Proxy`], under names of its own.
struct Proxied {
    proxy: Proxy,
    config: AmqpConfig,
    bus: AmqpBus,
    shutdown: CancellationToken,
}

impl Proxied {
    async fn start(name: &str) -> Proxied {
        let broker: AMQPUri = broker_url().parse().unwrap();
        let proxy = Proxy::start((broker.authority.host.clone(), broker.authority.port)).await;
        let user = &broker.authority.userinfo;
        let vhost = broker.vhost.replace('/', "%2f");
        let proxied = format!("amqp://{}:{}@{}/{vhost}", user.username, user.password, proxy.address);
        let prefix = format!("rfleet.test.{name}.{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let config = AmqpConfig {
            url: proxied.as_str().into(),
            ca_file: None,
            queue_prefix: prefix.clone(),
            queue_type: settings::QueueType::Classic,
            dead_letter_exchange: format!("{prefix}dead"),
            dead_letter_queue: format!("{prefix}dead"),
            catalog_exchange: format!("{prefix}catalog"),
            prefetch: 4,
            connection_name: format!("rfleet-test-{name}"),
        };
        let shutdown = CancellationToken::new();
        let bus = AmqpBus::start(config.clone(), shutdown.clone());
        assert!(bus.wait_connected(Duration::from_secs(10)).await, "no broker behind the proxy at {}", broker_url());
        Proxied { proxy, config, bus, shutdown }
    }
}

/// Deletes a test's queues, its dead-letter queue and its exchanges, over a connection of
/// its own (the bus's may be cut).
async fn clean_up(config: &AmqpConfig, queues: &[&String]) {
    let cleanup = lapin::Connection::connect(&broker_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = cleanup.create_channel().await.unwrap();
    for queue in queues.iter().copied().chain([&config.dead_letter_queue]) {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&config.dead_letter_exchange, &config.catalog_exchange] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = cleanup.close(200, "done".into()).await;
}

/// A lost connection: the pending call fails at once, new calls fail fast, the delivery a
/// worker held comes back redelivered (its ack fails), and the same bus, consumer and
/// catalog listener serve again on the new connection, the reply queue included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_as_a_whole() {
    let Proxied { proxy, config, bus, shutdown } = Proxied::start("reconnect").await;
    let queue = bus.queue_for("m", None);
    let mut consumer = bus.consumer(&["m".to_string()]).await.unwrap();
    let mut announcements = bus.catalog();
    // The listener subscribes in the background: hearing an announcement means it is bound.
    hear(&bus, &mut announcements, b"before").await;

    // A call whose request a worker holds, unanswered, when the connection goes.
    let waiting = tokio::spawn({
        let (bus, queue) = (bus.clone(), queue.clone());
        async move {
            let started = Instant::now();
            (
                bus.call(request(&queue, "held", 60_000), Instant::now() + Duration::from_secs(30)).await,
                started.elapsed(),
            )
        }
    });
    let held = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
    assert_eq!((held.body.as_slice(), held.attempt), (b"held".as_slice(), 1));

    proxy.cut();
    let (result, waited) = waiting.await.unwrap();
    assert!(matches!(result, Err(BusError::Unavailable(_))), "{result:?}");
    assert!(waited < Duration::from_secs(10), "a pending call waited {waited:?} for a lost connection");
    assert!(eventually(Duration::from_secs(5), async || !bus.is_connected()).await, "the bus never noticed the cut");
    assert_eq!(metric("rfleet_bus_connection_up{transport=\"amqp\"}"), Some(0.0));
    let started = Instant::now();
    let down = bus.call(request(&queue, "down", 5_000), Instant::now() + Duration::from_secs(5)).await;
    assert!(matches!(down, Err(BusError::Unavailable(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "a call while down took {:?}", started.elapsed());
    assert!(!bus.is_ready());

    proxy.restore();
    assert!(bus.wait_connected(Duration::from_secs(15)).await, "the bus did not reconnect");
    assert_eq!(metric("rfleet_bus_connection_up{transport=\"amqp\"}"), Some(1.0));
    assert_eq!(metric("rfleet_bus_reconnects_total{transport=\"amqp\"}"), Some(1.0));
    // The held delivery went with its channel: the broker delivers it again, on the
    // consumer's new subscription, and the old handle can no longer settle it.
    let again = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap();
    assert_eq!((again.body.as_slice(), again.redelivered, again.attempt), (b"held".as_slice(), true, 2));
    assert!(held.ack().await.is_err(), "acknowledged a delivery on a dead channel");
    again.ack().await.unwrap();

    // A call answered over the new connection: request queue re-declared, reply queue
    // re-declared and consumed again.
    let after = tokio::spawn({
        let (bus, queue) = (bus.clone(), queue.clone());
        async move { bus.call(request(&queue, "after", 5_000), Instant::now() + Duration::from_secs(5)).await }
    });
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
    assert_eq!(delivery.body, b"after");
    delivery.reply(ContentType::MsgPack, b"answered".to_vec()).await.unwrap();
    delivery.ack().await.unwrap();
    assert_eq!(after.await.unwrap().unwrap(), b"answered");
    assert!(bus.is_ready());

    // The catalog listener subscribed again too.
    hear(&bus, &mut announcements, b"after").await;

    consumer.shutdown().await;
    shutdown.cancel();
    clean_up(&config, &[&queue]).await;
}

/// A consumer whose set changed while its connection was down subscribes the set as it is
/// at the reconnect: the queue added meanwhile is served, the one removed is not (its
/// request stays in it for another consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_subscribes_the_current_set() {
    let Proxied { proxy, config, bus, shutdown } = Proxied::start("reconnect-set").await;
    let (before, after) = (bus.queue_for("m", None), bus.queue_for("m", Some("2")));
    let (set_tx, set) = tokio::sync::watch::channel(vec![before.clone()]);
    let mut consumer = bus.consumer_following(set).await.unwrap();
    bus.declare_queue(&after).await.unwrap();
    let consumers = async |queue: &str| bus.consumer_count(queue).await.ok();
    assert_eq!((consumers(&before).await, consumers(&after).await), (Some(1), Some(0)));

    proxy.cut();
    assert!(eventually(Duration::from_secs(5), async || !bus.is_connected()).await, "the bus never noticed the cut");
    set_tx.send_replace(vec![after.clone()]);
    proxy.restore();
    assert!(bus.wait_connected(Duration::from_secs(15)).await, "the bus did not reconnect");

    let subscribed = eventually(Duration::from_secs(10), async || {
        (consumers(&before).await, consumers(&after).await) == (Some(0), Some(1))
    });
    assert!(subscribed.await, "the consumer did not subscribe its current set");
    let call = |queue: &String, id: &str| {
        let (bus, request) = (bus.clone(), request(queue, id, 10_000));
        tokio::spawn(async move { bus.call(request, Instant::now() + Duration::from_secs(10)).await })
    };
    let (to_before, to_after) = (call(&before, "to-before"), call(&after, "to-after"));
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
    assert_eq!(delivery.body, b"to-after", "the consumer got a request of the queue removed while it was down");
    delivery.reply(ContentType::MsgPack, b"follower".to_vec()).await.unwrap();
    delivery.ack().await.unwrap();
    assert_eq!(to_after.await.unwrap().as_deref(), Ok(&b"follower"[..]));
    let mut another = bus.consumer(&["m".to_string()]).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), another.next()).await.unwrap().unwrap();
    assert_eq!(waited.body, b"to-before");
    waited.reply(ContentType::MsgPack, b"another".to_vec()).await.unwrap();
    waited.ack().await.unwrap();
    assert_eq!(to_before.await.unwrap().as_deref(), Ok(&b"another"[..]));

    another.shutdown().await;
    consumer.shutdown().await;
    shutdown.cancel();
    clean_up(&config, &[&before, &after]).await;
}
