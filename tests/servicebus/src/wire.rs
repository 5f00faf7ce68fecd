//! AMQP 1.0 framing over fe2o3's types, and the Service Bus names seen on the wire.
//!
//! A frame is `size:u32 doff:u8 type:u8 channel:u16`, then the performative (a described
//! list, encoded by fe2o3's `serde_amqp`) and, for a transfer, the message bytes.

use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::performatives::Performative;
use serde::{Deserialize, Serialize};
use serde_amqp::primitives::{OrderedMap, Symbol};
use serde_amqp::read::IoReader;
use serde_amqp::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A message as stored and delivered: any body (data, sequence or value).
pub type AmqpMessage = Message<Body<Value>>;

pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
pub const FRAME_AMQP: u8 = 0;
pub const FRAME_SASL: u8 = 1;
/// The largest frame the stand-in accepts (and advertises).
pub const MAX_FRAME_SIZE: u32 = 65536;

// Service Bus's names (azure-servicebus `_common/constants.py`).
pub const SESSION_FILTER: &str = "com.microsoft:session-filter";
pub const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
pub const DEAD_LETTER: &str = "com.microsoft:dead-letter";
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
pub const DEAD_LETTER_DESCRIPTION: &str = "DeadLetterErrorDescription";
pub const MESSAGE_LOCK_LOST: &str = "com.microsoft:message-lock-lost";
pub const SESSION_LOCK_LOST: &str = "com.microsoft:session-lock-lost";
pub const SESSION_CANNOT_BE_LOCKED: &str = "com.microsoft:session-cannot-be-locked";
pub const TIMEOUT: &str = "com.microsoft:timeout";
pub const UNAUTHORIZED: &str = "amqp:unauthorized-access";
pub const NOT_FOUND: &str = "amqp:not-found";
pub const NOT_ALLOWED: &str = "amqp:not-allowed";
pub const NOT_IMPLEMENTED: &str = "amqp:not-implemented";
pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
pub const X_OPT_LOCK_TOKEN: &str = "x-opt-lock-token";
pub const X_OPT_LOCKED_UNTIL: &str = "x-opt-locked-until";
pub const X_OPT_SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
pub const X_OPT_ENQUEUED_TIME: &str = "x-opt-enqueued-time";
pub const X_OPT_DEADLETTER_SOURCE: &str = "x-opt-deadletter-source";
pub const DEAD_LETTER_QUEUE_SUFFIX: &str = "/$DeadLetterQueue";
pub const MANAGEMENT_SUFFIX: &str = "/$management";
pub const CBS_NODE: &str = "$cbs";
/// The message format of a batch: data sections that each hold an encoded message.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// .NET ticks (100 ns) at the Unix epoch: `com.microsoft:locked-until-utc` is in ticks.
pub const DATETIMEOFFSET_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("amqp codec: {0}")]
    Codec(#[from] serde_amqp::Error),
    #[error("frame of {0} bytes is outside 8..={MAX_FRAME_SIZE}")]
    FrameSize(u32),
    #[error("unexpected protocol header {0:?}")]
    Header([u8; 8]),
}

/// One frame as read: its type, channel and body (after the extended header).
pub struct RawFrame {
    pub frame_type: u8,
    pub channel: u16,
    pub body: Vec<u8>,
}

pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> Result<RawFrame, WireError> {
    let size = reader.read_u32().await?;
    if !(8..=MAX_FRAME_SIZE).contains(&size) {
        return Err(WireError::FrameSize(size));
    }
    let mut rest = vec![0; size as usize - 4];
    reader.read_exact(&mut rest).await?;
    let doff = usize::from(rest[0]).max(2) * 4 - 4;
    let (frame_type, channel) = (rest[1], u16::from_be_bytes([rest[2], rest[3]]));
    let body = rest.get(doff..).unwrap_or_default().to_vec();
    Ok(RawFrame { frame_type, channel, body })
}

/// Decodes an AMQP frame's body: its performative (`None` for a heartbeat) and payload.
pub fn decode_performative(body: &[u8]) -> Result<Option<(Performative, Vec<u8>)>, WireError> {
    if body.is_empty() {
        return Ok(None);
    }
    let mut rest = body;
    let performative = Performative::deserialize(&mut serde_amqp::de::Deserializer::new(IoReader::new(&mut rest)))?;
    Ok(Some((performative, rest.to_vec())))
}

/// The number of fields of a performative (by descriptor code).
fn arity(code: u64) -> usize {
    match code {
        0x10 => 10,       // open
        0x11 => 8,        // begin
        0x12 => 14,       // attach
        0x13 => 11,       // flow
        0x14 => 11,       // transfer
        0x15 => 6,        // disposition
        0x16 => 3,        // detach
        0x17 | 0x18 => 1, // end, close
        0x40 => 1,        // sasl-mechanisms
        0x44 => 2,        // sasl-outcome
        _ => 0,
    }
}

/// Encodes a performative with every field present: `serde_amqp` leaves trailing nulls
/// out (as the spec allows), but Microsoft's `_pyamqp` indexes the fields of a frame by
/// position (`frame[4]` of an open, `frame[11]` of a transfer is its payload), so it
/// needs them all, as Service Bus sends them.
fn encode_performative(body: &impl Serialize) -> Vec<u8> {
    use serde_amqp::descriptor::Descriptor;
    let encoded = serde_amqp::to_vec(body).expect("performatives always encode");
    let Ok(Value::Described(mut described)) = serde_amqp::from_slice::<Value>(&encoded) else { return encoded };
    let Descriptor::Code(code) = described.descriptor else { return encoded };
    let Value::List(fields) = &mut described.value else { return encoded };
    if fields.len() >= arity(code) {
        return encoded;
    }
    fields.resize(arity(code), Value::Null);
    serde_amqp::to_vec(&Value::Described(described)).expect("a decoded value encodes again")
}

/// Appends one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, frame_type: u8, channel: u16, body: &impl Serialize, payload: &[u8]) {
    let body = encode_performative(body);
    let size = (8 + body.len() + payload.len()) as u32;
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[2, frame_type]);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(payload);
}

/// Encodes a message; its header with every field present, since `serde_amqp` leaves
/// default values out and pyamqp reads an absent `delivery-count` as `None` (Service Bus
/// always sends it).
pub fn encode_message(message: &AmqpMessage) -> Vec<u8> {
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;
    let mut rest = message.clone();
    let mut out = Vec::new();
    if let Some(header) = rest.header.take() {
        let fields = vec![
            Value::Bool(header.durable),
            Value::Ubyte(header.priority.0),
            header.ttl.map_or(Value::Null, Value::Uint),
            Value::Bool(header.first_acquirer),
            Value::Uint(header.delivery_count),
        ];
        let described = Described { descriptor: Descriptor::Code(0x70), value: Value::List(fields) };
        out = serde_amqp::to_vec(&Value::Described(Box::new(described))).expect("a header encodes");
    }
    out.extend(serde_amqp::to_vec(&Serializable(rest)).expect("a decoded message encodes again"));
    out
}

pub fn decode_message(bytes: &[u8]) -> Result<AmqpMessage, WireError> {
    let Deserializable(message) = serde_amqp::from_slice::<Deserializable<AmqpMessage>>(bytes)?;
    Ok(message)
}

/// An entry of a map keyed by strings or symbols (request bodies use either).
pub fn map_get<'m>(map: &'m OrderedMap<Value, Value>, key: &str) -> Option<&'m Value> {
    map.get(&Value::String(key.into())).or_else(|| map.get(&Value::Symbol(Symbol::from(key))))
}

pub fn error(condition: &str, description: impl Into<String>) -> fe2o3_amqp_types::definitions::Error {
    use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, LinkError};
    // fe2o3 decodes the spec's own conditions into their variants; keep them so.
    let condition = match condition {
        UNAUTHORIZED => ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
        NOT_FOUND => ErrorCondition::AmqpError(AmqpError::NotFound),
        NOT_ALLOWED => ErrorCondition::AmqpError(AmqpError::NotAllowed),
        NOT_IMPLEMENTED => ErrorCondition::AmqpError(AmqpError::NotImplemented),
        DETACH_FORCED => ErrorCondition::LinkError(LinkError::DetachForced),
        other => ErrorCondition::Custom(Symbol::from(other)),
    };
    fe2o3_amqp_types::definitions::Error { condition, description: Some(description.into()), info: None }
}

/// The text of an error condition, whichever variant fe2o3 decoded it into.
pub fn condition_text(condition: &fe2o3_amqp_types::definitions::ErrorCondition) -> String {
    let value = serde_amqp::to_value(condition).unwrap_or(Value::Null);
    match value {
        Value::Symbol(symbol) => symbol.0,
        Value::String(text) => text,
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::messaging::Header;
    use fe2o3_amqp_types::performatives::{Begin, Open};

    use super::*;

    /// The fields of the performative in a frame `put_frame` wrote.
    fn fields_of(frame: &[u8]) -> Vec<Value> {
        match serde_amqp::from_slice::<Value>(&frame[8..]).expect("a described list") {
            Value::Described(described) => match described.value {
                Value::List(fields) => fields,
                other => panic!("not a list: {other:?}"),
            },
            other => panic!("not described: {other:?}"),
        }
    }

    #[test]
    fn performatives_carry_every_field_as_pyamqp_indexes_them() {
        let open = Open {
            container_id: "c".into(),
            hostname: None,
            max_frame_size: MAX_FRAME_SIZE.into(),
            channel_max: 4999.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let begin = Begin {
            remote_channel: Some(0),
            next_outgoing_id: 0,
            incoming_window: 1,
            outgoing_window: 1,
            handle_max: fe2o3_amqp_types::definitions::Handle(65535),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_AMQP, 0, &open, &[]);
        assert_eq!(fields_of(&out).len(), 10, "open");
        out.clear();
        put_frame(&mut out, FRAME_AMQP, 0, &begin, &[]);
        let fields = fields_of(&out);
        assert_eq!((fields.len(), &fields[4]), (8, &Value::Uint(65535)), "begin");
        assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, out.len(), "the frame's size");
    }

    #[test]
    fn a_header_is_encoded_in_full_with_its_delivery_count() {
        let message = AmqpMessage {
            header: Some(Header::default()),
            delivery_annotations: None,
            message_annotations: None,
            properties: None,
            application_properties: None,
            body: Body::Value(fe2o3_amqp_types::messaging::AmqpValue(Value::Null)),
            footer: None,
        };
        let bytes = encode_message(&message);
        // described(0x70) list of 5: false, ubyte 4, null, false, uint 0
        let header = [0x00, 0x53, 0x70, 0xc0, 0x07, 0x05, 0x42, 0x50, 0x04, 0x40, 0x42, 0x43];
        assert_eq!(&bytes[..header.len()], &header, "{bytes:02x?}");
        let decoded = decode_message(&bytes).expect("the message decodes again");
        assert_eq!(decoded.header.map(|h| h.delivery_count), Some(0));
    }
}
