//! AMQP 1.0 messages to and from the bus's types (module docs: "Properties").

use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Header, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};

use crate::{ContentType, Outgoing, TRACEPARENT_HEADER};

/// A request as sent: see the module docs.
pub(super) fn request(message: &Outgoing, reply_to: &str) -> Message<Data> {
    let header = Header {
        durable: false,
        ttl: message.expiration_ms.map(|ms| ms.min(u64::from(u32::MAX)) as u32),
        ..Header::default()
    };
    let properties = Properties {
        correlation_id: Some(MessageId::String(message.correlation_id.clone())),
        reply_to: Some(reply_to.to_string()),
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

/// A reply to a request with `correlation_id`.
pub(super) fn reply(correlation_id: Option<MessageId>, content_type: ContentType, body: Vec<u8>) -> Message<Data> {
    let properties =
        Properties { correlation_id, content_type: Some(content_type.as_str().into()), ..Properties::default() };
    Message::builder()
        .header(Header { durable: false, ..Header::default() })
        .properties(properties)
        .data(Binary::from(body))
        .build()
}

pub(super) fn announcement(body: Vec<u8>) -> Message<Data> {
    let properties = Properties { content_type: Some(ContentType::MSGPACK.into()), ..Properties::default() };
    Message::builder().properties(properties).data(Binary::from(body)).build()
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
