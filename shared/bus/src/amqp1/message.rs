//! AMQP 1.0 messages to and from the bus's types (module docs: "Properties").

use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Header, Message, MessageId, Properties};
use std::time::{Duration, UNIX_EPOCH};

use fe2o3_amqp::types::definitions::DeliveryTag;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};

use super::servicebus;

use crate::{ContentType, Outgoing, TRACEPARENT_HEADER};

/// A request as sent: see the module docs.
/// `reply_group` (Service Bus) is the reply session the reply must go to.
pub(super) fn request(message: &Outgoing, reply_to: &str, reply_group: Option<&str>) -> Message<Data> {
    let header = Header {
        durable: false,
        ttl: message.expiration_ms.map(|ms| ms.min(u64::from(u32::MAX)) as u32),
        ..Header::default()
    };
    let properties = Properties {
        correlation_id: Some(MessageId::String(message.correlation_id.clone())),
        reply_to: Some(reply_to.to_string()),
        reply_to_group_id: reply_group.map(str::to_string),
        content_type: Some(message.content_type.as_str().into()),
        ..Properties::default()
    };
    let mut builder = Message::builder().header(header).properties(properties);
    if let Some(traceparent) = &message.traceparent {
        builder = builder.application_properties(
            ApplicationProperties::builder()
                .insert(TRACEPARENT_HEADER, SimpleValue::String(traceparent.clone()))
                .build(),
        );
    }
    builder.data(Binary::from(message.body.clone())).build()
}

/// A reply to a request with `correlation_id`, into the session `group` (the request's
/// `reply-to-group-id`) when there is one, living `ttl` ms (the request's own) if known.
pub(super) fn reply(
    correlation_id: Option<MessageId>,
    group: Option<String>,
    ttl: Option<u32>,
    content_type: ContentType,
    body: Vec<u8>,
) -> Message<Data> {
    let properties = Properties {
        correlation_id,
        group_id: group,
        content_type: Some(content_type.as_str().into()),
        ..Properties::default()
    };
    Message::builder()
        .header(Header { durable: false, ttl, ..Header::default() })
        .properties(properties)
        .data(Binary::from(body))
        .build()
}

/// An announcement, living `ttl` ms when given (Service Bus: until the catalog queue drops it).
pub(super) fn announcement(body: Vec<u8>, ttl: Option<u32>) -> Message<Data> {
    let properties = Properties { content_type: Some(ContentType::MSGPACK.into()), ..Properties::default() };
    let header = Header { durable: false, ttl, ..Header::default() };
    Message::builder().header(header).properties(properties).data(Binary::from(body)).build()
}

/// The body's bytes: every `data` section, or a binary `amqp-value`.
pub(super) fn body_bytes(body: Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(sections) => sections.into_iter().flat_map(|Data(bytes)| bytes.into_vec()).collect(),
        Body::Value(value) => match value.0 {
            Value::Binary(bytes) => bytes.into_vec(),
            Value::String(text) => text.into_bytes(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

pub(super) fn correlation_id(properties: Option<&Properties>) -> Option<String> {
    Some(match properties?.correlation_id.as_ref()? {
        MessageId::String(id) => id.clone(),
        MessageId::Ulong(id) => id.to_string(),
        MessageId::Uuid(id) => format!("{id:?}"),
        MessageId::Binary(id) => String::from_utf8_lossy(id).into_owned(),
    })
}

pub(super) fn content_type(properties: Option<&Properties>) -> ContentType {
    match properties.and_then(|p| p.content_type.as_ref()).map(|s| s.as_str()) {
        Some(ContentType::JSON) => ContentType::Json,
        _ => ContentType::MsgPack,
    }
}

pub(super) fn traceparent(application_properties: Option<&ApplicationProperties>) -> Option<String> {
    match application_properties?.0.get(TRACEPARENT_HEADER)? {
        SimpleValue::String(traceparent) => Some(traceparent.clone()),
        _ => None,
    }
}

/// Which delivery of the message this is, from 1: the header's `delivery-count` counts
/// earlier failed deliveries; a message not `first-acquirer` is on its second at least.
pub(super) fn attempt(header: Option<&Header>) -> u32 {
    let Some(header) = header else { return 1 };
    let counted = header.delivery_count.saturating_add(1);
    if header.first_acquirer {
        counted
    } else {
        counted.max(2)
    }
}

/// A Service Bus delivery's lock: its token (annotation `x-opt-lock-token`, else the
/// delivery tag, which Service Bus makes the token's bytes in .NET's little-endian order)
/// and until when it holds (`x-opt-locked-until`). `None` without an expiry to renew by.
pub(super) fn lock<B>(message: &Message<B>, tag: &DeliveryTag) -> Option<super::consume::Lock> {
    let annotation = |name: &str| message.message_annotations.as_ref()?.0.get(&OwnedKey::from(Symbol::from(name)));
    let locked_until = match annotation(servicebus::LOCKED_UNTIL_ANNOTATION)? {
        Value::Timestamp(at) => UNIX_EPOCH + Duration::from_millis(at.milliseconds().max(0) as u64),
        _ => return None,
    };
    let token = match annotation(servicebus::LOCK_TOKEN_ANNOTATION) {
        Some(Value::Uuid(token)) => uuid::Uuid::from(token.clone()),
        _ => uuid::Uuid::from_slice_le(tag).ok()?,
    };
    let ttl = message.header.as_ref().and_then(|header| header.ttl).map(|ms| Duration::from_millis(u64::from(ms)));
    Some(super::consume::Lock::new(tag.clone(), token, locked_until, ttl))
}
