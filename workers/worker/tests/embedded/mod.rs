//! Scoring requests sent to a worker over the embedded bus, as a dispatcher publishes
//! them, shared by the worker's tests.

use std::time::{Duration, Instant};

use bus::{ContentType, EmbeddedBus, Outgoing, Requester};
use protocol::{Reply, Request};

/// How long a reply may take.
pub const REPLY_WITHIN: Duration = Duration::from_secs(60);

/// Publishes `request` (with `traceparent` in the message's headers) and awaits its reply.
pub async fn call(bus: &EmbeddedBus, request: &Request, traceparent: Option<String>) -> Reply {
    let outgoing = Outgoing {
        correlation_id: request.id.clone(),
        queue: bus.request_queue(),
        content_type: ContentType::MsgPack,
        body: protocol::encode(request).unwrap(),
        expiration_ms: None,
        traceparent,
    };
    let reply = bus.call(outgoing, Instant::now() + REPLY_WITHIN).await.expect("a reply");
    protocol::decode(&reply).expect("a reply the protocol decodes")
}
