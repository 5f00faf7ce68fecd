//! Round trip of a small message through RabbitMQ and back at concurrency 1: the floor
//! under the "Bus overhead" figures in BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p bus --example rtt -- [bus|lapin] [requests] [work_ms]
//! ```
//! `bus` goes through this crate's `AmqpBus` (one connection shared by requester and
//! consumer, as in `rfleet serve --bus amqp://...`); `lapin` does the same with bare lapin
//! (a confirm-mode publisher channel, a consumer channel, a no-ack reply consumer).
//! `work_ms` makes the consumer block that long before replying, as an R host's scoring
//! does: every thread on the path then goes idle between messages, which is what a
//! request meets in the service. Reported latency excludes `work_ms`. The broker is
//! `RFLEET_RTT_URL` (default the local one); every queue and exchange the run declares is
//! named `rfleet-rtt-<pid>.*` and deleted at the end.
use std::time::{Duration, Instant};

use bus::{AmqpBus, AmqpConfig, Consumer, ContentType, Outgoing, Requester};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

const WARMUP: usize = 200;
const BODY: [u8; 200] = [0; 200];

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bus".into());
    let requests: usize = args.next().map_or(3000, |a| a.parse().expect("requests: a whole number"));
    let work = Duration::from_millis(args.next().map_or(0, |a| a.parse().expect("work_ms: a whole number")));
    let url = std::env::var("RFLEET_RTT_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = format!("rfleet-rtt-{}.", std::process::id());
    let mut times = match mode.as_str() {
        "bus" => through_bus(&url, &prefix, requests, work).await,
        "lapin" => through_lapin(&url, &prefix, requests, work).await,
        other => panic!("mode must be bus or lapin, not {other}"),
    };
    clean_up(&url, &prefix).await;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{mode}: {requests} round trips, work {} ms: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        work.as_millis(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

/// Keeps round trip `i`'s time less `work`, in ms, unless it was a warm-up one.
fn sample(times: &mut Vec<f64>, i: usize, started: Instant, work: Duration) {
    if i >= WARMUP {
        times.push(started.elapsed().saturating_sub(work).as_secs_f64() * 1e3);
    }
}

async fn through_bus(url: &str, prefix: &str, requests: usize, work: Duration) -> Vec<f64> {
    let config = AmqpConfig {
        url: url.into(),
        ca_file: None,
        queue_prefix: prefix.into(),
        queue_type: settings::QueueType::Classic,
        dead_letter_exchange: format!("{prefix}dead"),
        dead_letter_queue: format!("{prefix}dead"),
        catalog_exchange: format!("{prefix}catalog"),
        prefetch: 4,
        connection_name: "rfleet-rtt".into(),
    };
    let shutdown = CancellationToken::new();
    let bus = AmqpBus::start(config, shutdown.clone());
    assert!(bus.wait_connected(Duration::from_secs(10)).await, "no broker at {url}");
    let mut consumer = bus.consumer(&["echo".to_string()]).await.expect("consume");
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            std::thread::sleep(work);
            let body = delivery.body.clone();
            delivery.reply(ContentType::MsgPack, body).await.expect("reply");
            delivery.ack().await.expect("ack");
        }
    });
    let queue = bus.queue_for("echo", None);
    let mut times = Vec::with_capacity(requests);
    for i in 0..WARMUP + requests {
        let message = Outgoing {
            correlation_id: format!("c{i}"),
            queue: queue.clone(),
            content_type: ContentType::MsgPack,
            body: BODY.to_vec(),
            expiration_ms: Some(5000),
            traceparent: None,
        };
        let started = Instant::now();
        bus.call(message, started + Duration::from_secs(5)).await.expect("call");
        sample(&mut times, i, started, work);
    }
    shutdown.cancel();
    times
}

async fn through_lapin(url: &str, prefix: &str, requests: usize, work: Duration) -> Vec<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let (queue, reply_queue) = (format!("{prefix}echo"), format!("{prefix}reply"));
    let publisher = connection.create_channel().await.unwrap();
    publisher.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let worker = connection.create_channel().await.unwrap();
    worker.basic_qos(4, BasicQosOptions::default()).await.unwrap();
    worker.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let replies_channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions::exclusive().auto_delete();
    replies_channel.queue_declare(reply_queue.as_str().into(), exclusive, FieldTable::default()).await.unwrap();
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut replies = replies_channel
        .basic_consume(reply_queue.as_str().into(), "".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    let mut deliveries = worker
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            std::thread::sleep(work);
            let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
            let options = BasicPublishOptions::default();
            let properties = BasicProperties::default();
            worker
                .basic_publish("".into(), reply_to.as_str().into(), options, &delivery.data, properties)
                .await
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    let mut times = Vec::with_capacity(requests);
    for i in 0..WARMUP + requests {
        let properties = BasicProperties::default()
            .with_reply_to(reply_queue.as_str().into())
            .with_correlation_id(i.to_string().into());
        let options = BasicPublishOptions::default();
        let started = Instant::now();
        publisher
            .basic_publish("".into(), queue.as_str().into(), options, &BODY, properties)
            .await
            .unwrap()
            .await
            .unwrap();
        replies.next().await.expect("reply").expect("reply");
        sample(&mut times, i, started, work);
    }
    times
}

/// Deletes whatever the run declared on the broker.
async fn clean_up(url: &str, prefix: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = connection.create_channel().await.unwrap();
    for queue in ["echo", "dead"] {
        let _ = channel.queue_delete(format!("{prefix}{queue}").as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in ["dead", "catalog"] {
        let _ = channel
            .exchange_delete(format!("{prefix}{exchange}").as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
