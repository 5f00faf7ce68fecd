//! Scoring requests sent to a worker over the embedded bus, as a dispatcher publishes
//! them, shared by the worker's tests.

// Each test binary uses what it needs of this.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bus::{ContentType, EmbeddedBus, Outgoing, Requester};

use protocol::{Reply, Request};

/// How long a reply may take.
pub const REPLY_WITHIN: Duration = Duration::from_secs(60);

/// Publishes `request` (with `traceparent` in the message's headers) and awaits its reply.
pub async fn call(bus: &EmbeddedBus, request: &Request, traceparent: Option<String>) -> Reply {
    call_raw(bus, &request.id, protocol::encode(request).unwrap(), traceparent).await
}

/// Publishes `body` as a request (whatever it holds) and awaits its reply.
pub async fn call_raw(bus: &EmbeddedBus, id: &str, body: Vec<u8>, traceparent: Option<String>) -> Reply {
    let outgoing = Outgoing {
        correlation_id: id.to_string(),
        queue: bus.request_queue(),
        content_type: ContentType::MsgPack,
        body,
        expiration_ms: None,
        traceparent,
    };
    let reply = bus.call(outgoing, Instant::now() + REPLY_WITHIN).await.expect("a reply");
    protocol::decode(&reply).expect("a reply the protocol decodes")
}

/// Waits until a worker consumes `bus`: its consumer subscribes in the worker's own task,
/// and a request published before that finds nobody consuming (regression: a metrics test
/// failed 4 times in 6 so).
pub async fn subscribed(bus: &EmbeddedBus) {
    let deadline = Instant::now() + REPLY_WITHIN;
    while !bus.is_ready() {
        assert!(Instant::now() < deadline, "no worker consumed the bus within {REPLY_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
