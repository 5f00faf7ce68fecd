//! One client connection: SASL, sessions, links, CBS `put-token`, `$management`, and the
//! deliveries of peek-lock and receive-and-delete receivers.
//!
//! Everything a connection does happens in one task: frames arrive from a reader task,
//! and time (lock, session and token expiry), the broker's `changed` signal and the
//! stand-in's forced detaches are events of the same loop. Output is collected in `out`
//! and written after each event, so the state never crosses an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fe2o3_amqp_types::definitions::{DeliveryNumber, Fields, Handle, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, Body, DeliveryState, Header, MessageAnnotations, Modified, Properties,
    Rejected, TargetArchetype,
};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp_types::primitives::SimpleValue;
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use serde_amqp::primitives::{Array, OrderedMap, Symbol, Timestamp};
use serde_amqp::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{unix_millis, wall_clock, Broker, Entity, Payload, SessionRefusal};
use crate::config::{Right, Rights, StandInConfig};
use crate::queue::{Lock, Settle, Stored};
use crate::sas;
use crate::wire::*;

/// What all connections share.
pub(crate) struct Shared {
    pub broker: Broker,
    pub config: StandInConfig,
    pub detach_all: broadcast::Sender<()>,
    pub next_link_id: AtomicU64,
}

/// Credit the stand-in gives a client's sender, topped up at half.
const LINK_CREDIT: u32 = 100;
/// Session windows: fixed, re-advertised in every flow.
const WINDOW: u32 = 65536;
/// Service Bus Standard's largest message.
const MAX_MESSAGE_SIZE: u64 = 256 * 1024;
/// Links per session.
const HANDLE_MAX: u32 = 65535;
/// The idle time-out Service Bus announces in its open.
const IDLE_TIMEOUT_MS: u32 = 240_000;
/// How often time is applied (lock, session and token expiry).
const TICK: Duration = Duration::from_millis(50);

pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Err(error) = run(stream, shared, shutdown).await {
        tracing::debug!(%error, "connection ended");
    }
}

async fn run(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), WireError> {
    let (mut reader, mut writer) = stream.into_split();
    let mut conn = Conn::new(shared.clone());
    let mut header = [0u8; 8];
    reader.read_exact(&mut header).await?;
    if header == SASL_HEADER {
        writer.write_all(&SASL_HEADER).await?;
        let mechanisms = ["ANONYMOUS", "PLAIN"].map(Symbol::from).to_vec();
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_SASL, 0, &SaslMechanisms { sasl_server_mechanisms: Array(mechanisms) }, &[]);
        writer.write_all(&out).await?;
        let frame = read_frame(&mut reader).await?;
        let code = conn.sasl(serde_amqp::from_slice(&frame.body)?);
        out.clear();
        put_frame(&mut out, FRAME_SASL, 0, &SaslOutcome { code: code.clone(), additional_data: None }, &[]);
        writer.write_all(&out).await?;
        if code != SaslCode::Ok {
            return Ok(());
        }
        reader.read_exact(&mut header).await?;
    }
    writer.write_all(&AMQP_HEADER).await?;
    if header != AMQP_HEADER {
        return Err(WireError::Header(header));
    }
    let (frames_tx, mut frames_rx) = mpsc::channel(64);
    let reading = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut reader).await;
            let failed = frame.is_err();
            if frames_tx.send(frame).await.is_err() || failed {
                break;
            }
        }
    });
    let _stop_reading = AbortOnDrop(reading);
    let mut tick = tokio::time::interval(TICK);
    let mut detach_all = shared.detach_all.subscribe();
    let result = loop {
        let changed = shared.broker.changed.notified();
        tokio::select! {
            frame = frames_rx.recv() => match frame {
                Some(Ok(frame)) => if let Err(error) = conn.on_frame(frame) { break Err(error) },
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            },
            _ = tick.tick() => conn.on_tick(),
            _ = changed => conn.pump(),
            forced = detach_all.recv() => if forced.is_ok() { conn.detach_all() },
            _ = shutdown.cancelled() => {
                let error = error("amqp:connection:forced", "the stand-in is shutting down");
                put_frame(&mut conn.out, FRAME_AMQP, 0, &Close { error: Some(error) }, &[]);
                conn.closed = true;
            }
        }
        if !conn.out.is_empty() {
            writer.write_all(&conn.out).await?;
            conn.out.clear();
        }
        if conn.closed {
            break Ok(());
        }
    };
    conn.release_all();
    result
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A token `put-token` accepted.
struct Grant {
    resource_uri: String,
    expiry_unix_secs: u64,
    rights: Rights,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Client → `$cbs`: put-token requests.
    Cbs,
    /// Client → `ENTITY/$management`: management requests.
    Management(Entity),
    /// Stand-in → client: responses of the node (`$cbs` or `ENTITY/$management`).
    Reply(String),
    /// Client → queue: messages to enqueue.
    Send(Entity),
    /// Queue → client.
    Receive { entity: Entity, session: Option<String>, receive_and_delete: bool },
}

impl Kind {
    /// The entity whose token the link needs, and the right.
    fn needs(&self) -> Option<(String, Right)> {
        match self {
            Kind::Cbs => None,
            Kind::Reply(node) if node == CBS_NODE => None,
            Kind::Reply(node) => Some((node.trim_end_matches(MANAGEMENT_SUFFIX).into(), Right::Listen)),
            Kind::Management(entity) => Some((entity.path(), Right::Listen)),
            Kind::Send(entity) => Some((entity.path(), Right::Send)),
            Kind::Receive { entity, .. } => Some((entity.path(), Right::Listen)),
        }
    }
}

struct Link {
    id: u64,
    /// The stand-in's handle for the link (the client's handle is the key of `links`).
    output_handle: u32,
    kind: Kind,
    target_address: Option<String>,
    /// Stand-in as sender: credit left and deliveries sent (the link's delivery-count).
    credit: u32,
    delivery_count: u32,
    drain: bool,
    replies: VecDeque<AmqpMessage>,
    /// Stand-in as receiver: credit given, and the transfer being reassembled.
    incoming_credit: u32,
    incoming_delivery_count: u32,
    partial: Vec<u8>,
    /// The delivery id, whether settled, and the message format of the transfer's first frame.
    partial_delivery: Option<(DeliveryNumber, bool, u32)>,
}

struct Sess {
    next_incoming_id: u32,
    next_outgoing_id: u32,
    next_delivery_id: u32,
    /// The stand-in's next link handle: its own numbers, as Service Bus allocates them,
    /// never reused within the session (fe2o3 routes a reused handle to the old link).
    next_output_handle: u32,
    links: BTreeMap<u32, Link>,
    /// Unsettled peek-lock deliveries: delivery id -> (entity, lock token).
    unsettled: HashMap<DeliveryNumber, (Entity, Uuid)>,
}

struct Conn {
    shared: Arc<Shared>,
    out: Vec<u8>,
    peer_max_frame: usize,
    sessions: BTreeMap<u16, Sess>,
    grants: Vec<Grant>,
    /// Rights from SASL PLAIN (key name and key), for every entity.
    sasl_rights: Rights,
    closed: bool,
}

fn now_unix_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The entity path of a link address: `Q`, `sb://host/Q`, `amqps://host:5671/Q/$management`.
fn entity_path(address: &str) -> &str {
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    path.trim_matches('/')
}

fn timestamp(at: SystemTime) -> Value {
    Value::Timestamp(Timestamp::from_milliseconds(unix_millis(at)))
}

fn symbol_key(key: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(key))
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Symbol(s) => Some(&s.0),
        _ => None,
    }
}

fn simple_text(value: &SimpleValue) -> Option<&str> {
    match value {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(&s.0),
        _ => None,
    }
}

fn app_property<'m>(message: &'m AmqpMessage, key: &str) -> Option<&'m str> {
    message.application_properties.as_ref()?.0.get(key).and_then(simple_text)
}

fn body_map(message: &AmqpMessage) -> Option<&OrderedMap<Value, Value>> {
    match &message.body {
        Body::Value(AmqpValue(Value::Map(map))) => Some(map),
        _ => None,
    }
}

fn uuids(value: Option<&Value>) -> Vec<Uuid> {
    let items = match value {
        Some(Value::Array(array)) => array.0.as_slice(),
        Some(Value::List(list)) => list.as_slice(),
        _ => &[],
    };
    items
        .iter()
        .filter_map(|v| match v {
            Value::Uuid(u) => Some(Uuid::from_bytes(*u.as_inner())),
            _ => None,
        })
        .collect()
}

/// A request's outcome as a management response: status, and on failure the condition.
struct Status {
    code: i32,
    description: String,
    condition: Option<&'static str>,
    body: OrderedMap<Value, Value>,
}

impl Status {
    fn ok(code: i32, body: OrderedMap<Value, Value>) -> Self {
        Status { code, description: "OK".into(), condition: None, body }
    }

    fn failed(code: i32, condition: &'static str, description: impl Into<String>) -> Self {
        Status { code, description: description.into(), condition: Some(condition), body: OrderedMap::new() }
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> OrderedMap<Value, Value> {
    entries.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect()
}

impl Conn {
    fn new(shared: Arc<Shared>) -> Self {
        Conn {
            shared,
            out: Vec::new(),
            peer_max_frame: 512,
            sessions: BTreeMap::new(),
            grants: Vec::new(),
            sasl_rights: Rights::default(),
            closed: false,
        }
    }

    /// ANONYMOUS signs in without rights (CBS brings them); PLAIN with a key name and its
    /// key brings that rule's rights for every entity.
    fn sasl(&mut self, init: SaslInit) -> SaslCode {
        match init.mechanism.0.as_str() {
            "ANONYMOUS" => SaslCode::Ok,
            "PLAIN" => {
                let response = init.initial_response.map(|b| b.into_vec()).unwrap_or_default();
                let mut parts = response.split(|b| *b == 0).skip(1);
                let (user, password) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                let rule = self
                    .shared
                    .config
                    .rules
                    .iter()
                    .find(|rule| rule.key_name.as_bytes() == user && rule.key.as_bytes() == password);
                match rule {
                    Some(rule) => {
                        self.sasl_rights = rule.rights;
                        SaslCode::Ok
                    }
                    None => SaslCode::Auth,
                }
            }
            _ => SaslCode::Auth,
        }
    }

    fn authorized(&self, entity: &str, right: Right) -> bool {
        let now = now_unix_secs();
        self.sasl_rights.allow(right)
            || self
                .grants
                .iter()
                .any(|g| g.expiry_unix_secs > now && g.rights.allow(right) && sas::covers(&g.resource_uri, entity))
    }

    fn on_frame(&mut self, frame: RawFrame) -> Result<(), WireError> {
        let Some((performative, payload)) = decode_performative(&frame.body)? else { return Ok(()) };
        let channel = frame.channel;
        match performative {
            Performative::Open(open) => {
                self.peer_max_frame = (open.max_frame_size.0 as usize).clamp(512, MAX_FRAME_SIZE as usize);
                let reply = Open {
                    container_id: "servicebus-standin".into(),
                    hostname: None,
                    max_frame_size: MAX_FRAME_SIZE.into(),
                    channel_max: 4999.into(),
                    // Not enforced; announced as Service Bus does (pyamqp heartbeats at half).
                    idle_time_out: Some(IDLE_TIMEOUT_MS),
                    outgoing_locales: None,
                    incoming_locales: None,
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                };
                put_frame(&mut self.out, FRAME_AMQP, 0, &reply, &[]);
            }
            Performative::Begin(begin) => {
                let sess = Sess {
                    next_incoming_id: begin.next_outgoing_id,
                    next_outgoing_id: 0,
                    next_delivery_id: 0,
                    next_output_handle: 0,
                    links: BTreeMap::new(),
                    unsettled: HashMap::new(),
                };
                self.sessions.insert(channel, sess);
                let reply = Begin {
                    remote_channel: Some(channel),
                    next_outgoing_id: 0,
                    incoming_window: WINDOW,
                    outgoing_window: WINDOW,
                    // Not the default (u32::MAX), which serde_amqp leaves out as null, and
                    // pyamqp compares with a number.
                    handle_max: Handle(HANDLE_MAX),
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                };
                put_frame(&mut self.out, FRAME_AMQP, channel, &reply, &[]);
            }
            Performative::Attach(attach) => self.on_attach(channel, attach),
            Performative::Flow(flow) => self.on_flow(channel, flow),
            Performative::Transfer(transfer) => self.on_transfer(channel, transfer, payload),
            Performative::Disposition(disposition) => self.on_disposition(channel, disposition),
            Performative::Detach(detach) => {
                let Some(sess) = self.sessions.get_mut(&channel) else { return Ok(()) };
                // A detach for a link the stand-in detached already answers that detach.
                if let Some(link) = sess.links.remove(&detach.handle.0) {
                    self.release(&link);
                    let reply = Detach { handle: Handle(link.output_handle), closed: detach.closed, error: None };
                    put_frame(&mut self.out, FRAME_AMQP, channel, &reply, &[]);
                }
            }
            Performative::End(_) => {
                if let Some(sess) = self.sessions.remove(&channel) {
                    sess.links.values().for_each(|link| self.release(link));
                }
                put_frame(&mut self.out, FRAME_AMQP, channel, &End { error: None }, &[]);
            }
            Performative::Close(_) => {
                put_frame(&mut self.out, FRAME_AMQP, 0, &Close { error: None }, &[]);
                self.closed = true;
            }
        }
        Ok(())
    }

    /// Ends what a link held: its session lock.
    fn release(&self, link: &Link) {
        if let Kind::Receive { entity, session: Some(session), .. } = &link.kind {
            self.shared.broker.release_session(&entity.queue, session, link.id);
        }
    }

    fn release_all(&mut self) {
        for sess in self.sessions.values() {
            sess.links.values().for_each(|link| self.release(link));
        }
    }

    /// Answers an attach the stand-in refuses as Service Bus does: an attach without the
    /// terminus, then a detach carrying the error.
    fn refuse(&mut self, channel: u16, attach: Attach, condition: &str, description: String) {
        tracing::debug!(link = %attach.name, condition, %description, "attach refused");
        let handle = Handle(self.allocate_handle(channel));
        let client_sends = attach.role == Role::Sender;
        let reply = Attach {
            handle: handle.clone(),
            role: if client_sends { Role::Receiver } else { Role::Sender },
            source: if client_sends { attach.source } else { None },
            target: if client_sends { None } else { attach.target },
            unsettled: None,
            initial_delivery_count: if client_sends { None } else { Some(0) },
            properties: None,
            ..attach
        };
        put_frame(&mut self.out, FRAME_AMQP, channel, &reply, &[]);
        let detach = Detach { handle, closed: true, error: Some(error(condition, description)) };
        put_frame(&mut self.out, FRAME_AMQP, channel, &detach, &[]);
    }

    fn on_attach(&mut self, channel: u16, mut attach: Attach) {
        if !self.sessions.contains_key(&channel) {
            return;
        }
        let client_sends = attach.role == Role::Sender;
        let target_address = attach.target.as_deref().and_then(|t| match t {
            TargetArchetype::Target(t) => t.address.clone(),
            #[allow(unreachable_patterns)]
            _ => None,
        });
        let source_address = attach.source.as_ref().and_then(|s| s.address.clone());
        let address = if client_sends { target_address.clone() } else { source_address.clone() };
        let path = entity_path(address.as_deref().unwrap_or_default()).to_owned();
        let broker = &self.shared.broker;
        let known = |entity: &Entity| broker.config(&entity.queue).is_some();
        let kind = if path == CBS_NODE {
            if client_sends {
                Kind::Cbs
            } else {
                Kind::Reply(path.clone())
            }
        } else if let Some(entity_path) = path.strip_suffix(MANAGEMENT_SUFFIX) {
            let entity = Entity::parse(entity_path);
            if !known(&entity) {
                return self.refuse(
                    channel,
                    attach,
                    NOT_FOUND,
                    format!("the messaging entity '{entity_path}' could not be found"),
                );
            }
            if client_sends {
                Kind::Management(entity)
            } else {
                Kind::Reply(path.clone())
            }
        } else {
            let entity = Entity::parse(&path);
            if !known(&entity) {
                return self.refuse(
                    channel,
                    attach,
                    NOT_FOUND,
                    format!("the messaging entity '{path}' could not be found"),
                );
            }
            if client_sends {
                if entity.dead_letter {
                    return self.refuse(channel, attach, NOT_ALLOWED, "a dead-letter queue cannot be sent to".into());
                }
                Kind::Send(entity)
            } else {
                let receive_and_delete = attach.snd_settle_mode == SenderSettleMode::Settled;
                Kind::Receive { entity, session: None, receive_and_delete }
            }
        };
        if let Some((entity, right)) = kind.needs() {
            if !self.authorized(&entity, right) {
                let description = format!("unauthorized access: '{right:?}' claim is required to access '{entity}'");
                return self.refuse(channel, attach, UNAUTHORIZED, description);
            }
        }
        let link_id = self.shared.next_link_id.fetch_add(1, Ordering::Relaxed);
        let mut kind = kind;
        let mut properties: Option<Fields> = None;
        if let Kind::Receive { entity, session, .. } = &mut kind {
            let config = broker.config(&entity.queue).expect("known above");
            if config.requires_session && !entity.dead_letter {
                let filter = attach.source.as_ref().and_then(|s| s.filter.as_ref());
                let Some(wanted) = filter.and_then(|f| f.get(&Symbol::from(SESSION_FILTER))) else {
                    let description = format!("'{}' requires sessions: a receiver must name one", entity.queue);
                    return self.refuse(channel, attach, NOT_ALLOWED, description);
                };
                let wanted = text(wanted).map(str::to_owned);
                match broker.lock_session(&entity.queue, wanted.as_deref(), link_id, Instant::now()) {
                    Ok((id, locked_until)) => {
                        let source = attach.source.as_mut().expect("has a filter");
                        let filter = source.filter.get_or_insert_with(OrderedMap::new);
                        filter.insert(Symbol::from(SESSION_FILTER), Value::String(id.clone()));
                        let ticks = DATETIMEOFFSET_EPOCH_TICKS + unix_millis(wall_clock(locked_until)) * 10_000;
                        let mut fields = Fields::new();
                        fields.insert(Symbol::from(LOCKED_UNTIL_UTC), Value::Long(ticks));
                        properties = Some(fields);
                        *session = Some(id);
                    }
                    Err(SessionRefusal::Locked(id)) => {
                        let description = format!("the session '{id}' is locked by another receiver");
                        return self.refuse(channel, attach, SESSION_CANNOT_BE_LOCKED, description);
                    }
                    Err(SessionRefusal::NoneAvailable) => {
                        let description = "no unlocked session with messages is available".to_owned();
                        return self.refuse(channel, attach, TIMEOUT, description);
                    }
                }
            }
        }
        let handle = attach.handle.0;
        let output_handle = self.allocate_handle(channel);
        let incoming_delivery_count = attach.initial_delivery_count.unwrap_or(0);
        let reply = Attach {
            handle: Handle(output_handle),
            role: if client_sends { Role::Receiver } else { Role::Sender },
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if client_sends { None } else { Some(0) },
            max_message_size: Some(MAX_MESSAGE_SIZE),
            offered_capabilities: None,
            desired_capabilities: None,
            properties,
            ..attach
        };
        put_frame(&mut self.out, FRAME_AMQP, channel, &reply, &[]);
        let link = Link {
            id: link_id,
            output_handle,
            kind,
            target_address,
            credit: 0,
            delivery_count: 0,
            drain: false,
            replies: VecDeque::new(),
            incoming_credit: if client_sends { LINK_CREDIT } else { 0 },
            incoming_delivery_count,
            partial: Vec::new(),
            partial_delivery: None,
        };
        let sess = self.sessions.get_mut(&channel).expect("checked above");
        sess.links.insert(handle, link);
        if client_sends {
            self.send_flow(channel, handle, false);
        }
    }

    fn allocate_handle(&mut self, channel: u16) -> u32 {
        let sess = self.sessions.get_mut(&channel).expect("the attach's session exists");
        let handle = sess.next_output_handle;
        sess.next_output_handle += 1;
        handle
    }

    /// A flow for link `handle` (the client's) with its current state.
    fn send_flow(&mut self, channel: u16, handle: u32, drain: bool) {
        let Some(sess) = self.sessions.get(&channel) else { return };
        let Some(link) = sess.links.get(&handle) else { return };
        let stand_in_sends = matches!(link.kind, Kind::Reply(_) | Kind::Receive { .. });
        let (delivery_count, credit) = if stand_in_sends {
            (link.delivery_count, link.credit)
        } else {
            (link.incoming_delivery_count, link.incoming_credit)
        };
        let flow = Flow {
            next_incoming_id: Some(sess.next_incoming_id),
            incoming_window: WINDOW,
            next_outgoing_id: sess.next_outgoing_id,
            outgoing_window: WINDOW,
            handle: Some(Handle(link.output_handle)),
            delivery_count: Some(delivery_count),
            link_credit: Some(credit),
            available: None,
            drain,
            echo: false,
            properties: None,
        };
        put_frame(&mut self.out, FRAME_AMQP, channel, &flow, &[]);
    }

    fn on_flow(&mut self, channel: u16, flow: Flow) {
        let Some(handle) = flow.handle.as_ref().map(|h| h.0) else { return };
        let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.get_mut(&handle)) else { return };
        if matches!(link.kind, Kind::Reply(_) | Kind::Receive { .. }) {
            // credit = receiver's delivery-count + its link-credit - the sender's delivery-count
            let receiver_count = flow.delivery_count.unwrap_or(0);
            let credit = flow.link_credit.unwrap_or(0);
            link.credit = receiver_count.wrapping_add(credit).wrapping_sub(link.delivery_count);
            link.drain = flow.drain;
        }
        if flow.echo {
            self.send_flow(channel, handle, false);
        }
        self.pump();
    }

    fn on_transfer(&mut self, channel: u16, transfer: Transfer, payload: Vec<u8>) {
        let Some(sess) = self.sessions.get_mut(&channel) else { return };
        sess.next_incoming_id = sess.next_incoming_id.wrapping_add(1);
        let Some(link) = sess.links.get_mut(&transfer.handle.0) else { return };
        if let Some(delivery_id) = transfer.delivery_id {
            let format = transfer.message_format.unwrap_or(0);
            link.partial_delivery = Some((delivery_id, transfer.settled.unwrap_or(false), format));
        }
        link.partial.extend_from_slice(&payload);
        if transfer.more {
            return;
        }
        let bytes = std::mem::take(&mut link.partial);
        let Some((delivery_id, settled, format)) = link.partial_delivery.take() else { return };
        link.incoming_delivery_count = link.incoming_delivery_count.wrapping_add(1);
        link.incoming_credit = link.incoming_credit.saturating_sub(1);
        let top_up = link.incoming_credit < LINK_CREDIT / 2;
        if top_up {
            link.incoming_credit = LINK_CREDIT;
        }
        let kind = link.kind.clone();
        let outcome = match decode_message(&bytes) {
            Err(e) => DeliveryState::Rejected(Rejected { error: Some(error("amqp:decode-error", e.to_string())) }),
            Ok(message) => match kind {
                Kind::Send(entity) => match batched(format, message) {
                    Ok(messages) => {
                        for message in messages {
                            self.shared.broker.enqueue(&entity.queue, message, Instant::now());
                        }
                        DeliveryState::Accepted(Accepted {})
                    }
                    Err(e) => {
                        DeliveryState::Rejected(Rejected { error: Some(error("amqp:decode-error", e.to_string())) })
                    }
                },
                Kind::Cbs => {
                    let response = self.put_token(&message);
                    self.reply(CBS_NODE, message, response);
                    DeliveryState::Accepted(Accepted {})
                }
                Kind::Management(entity) => {
                    let status = self.management(channel, &entity, &message);
                    let node = format!("{}{MANAGEMENT_SUFFIX}", entity.path());
                    let response = AmqpMessage {
                        header: None,
                        delivery_annotations: None,
                        message_annotations: None,
                        properties: None,
                        application_properties: Some(ApplicationProperties(
                            [
                                Some(("statusCode".to_owned(), SimpleValue::Int(status.code))),
                                Some(("statusDescription".to_owned(), SimpleValue::String(status.description))),
                                status.condition.map(|c| ("errorCondition".to_owned(), SimpleValue::Symbol(c.into()))),
                            ]
                            .into_iter()
                            .flatten()
                            .collect(),
                        )),
                        body: Body::Value(AmqpValue(Value::Map(status.body))),
                        footer: None,
                    };
                    self.reply(&node, message, response);
                    DeliveryState::Accepted(Accepted {})
                }
                Kind::Reply(_) | Kind::Receive { .. } => DeliveryState::Rejected(Rejected {
                    error: Some(error(NOT_ALLOWED, "this link sends, it does not receive")),
                }),
            },
        };
        if !settled {
            let disposition = Disposition {
                role: Role::Receiver,
                first: delivery_id,
                last: None,
                settled: true,
                state: Some(outcome),
                batchable: false,
            };
            put_frame(&mut self.out, FRAME_AMQP, channel, &disposition, &[]);
        }
        if top_up {
            self.send_flow(channel, transfer.handle.0, false);
        }
        self.pump();
    }

    /// Queues `response` to `request` on the reply link of `node` (the one whose target is
    /// the request's reply-to, else any of that node), correlated by the request's id.
    fn reply(&mut self, node: &str, request: AmqpMessage, mut response: AmqpMessage) {
        let request_properties = request.properties.unwrap_or_default();
        let reply_to = request_properties.reply_to.clone();
        response.properties = Some(Properties {
            correlation_id: request_properties.message_id,
            to: reply_to.clone(),
            ..Default::default()
        });
        let mut chosen: Option<&mut Link> = None;
        for link in self.sessions.values_mut().flat_map(|s| s.links.values_mut()) {
            if link.kind != Kind::Reply(node.to_owned()) {
                continue;
            }
            let exact = reply_to.is_some() && link.target_address == reply_to;
            if exact || chosen.is_none() {
                chosen = Some(link);
                if exact {
                    break;
                }
            }
        }
        match chosen {
            Some(link) => link.replies.push_back(response),
            None => tracing::debug!(node, "response dropped: no reply link"),
        }
    }

    /// CBS `put-token`: verifies the SAS token against the rules and records the grant.
    fn put_token(&mut self, request: &AmqpMessage) -> AmqpMessage {
        let (code, description) = self.check_token(request);
        AmqpMessage {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: None,
            application_properties: Some(ApplicationProperties(
                [
                    ("status-code".to_owned(), SimpleValue::Int(code)),
                    ("status-description".to_owned(), SimpleValue::String(description)),
                ]
                .into_iter()
                .collect(),
            )),
            body: Body::Value(AmqpValue(Value::Null)),
            footer: None,
        }
    }

    fn check_token(&mut self, request: &AmqpMessage) -> (i32, String) {
        if app_property(request, "operation") != Some("put-token") {
            return (400, "the only $cbs operation is put-token".into());
        }
        let (Some(audience), Some(token_type)) = (app_property(request, "name"), app_property(request, "type")) else {
            return (400, "put-token needs the properties name and type".into());
        };
        if !matches!(token_type, "servicebus.windows.net:sastoken" | "jwt") {
            return (400, format!("unknown token type '{token_type}'"));
        }
        let token = match &request.body {
            Body::Value(AmqpValue(Value::String(token))) => token.clone(),
            Body::Value(AmqpValue(Value::Binary(token))) => String::from_utf8_lossy(token).into_owned(),
            _ => return (400, "the token must be the body's value".into()),
        };
        let now = now_unix_secs();
        if crate::jwt::is_jwt(&token) {
            return match crate::jwt::verify(&token, &self.shared.config.jwt_keys) {
                Ok(grant) => {
                    let resource_uri = format!("sb://{}/", self.shared.config.host);
                    self.grants.push(Grant {
                        resource_uri,
                        expiry_unix_secs: grant.expiry_unix_secs,
                        rights: grant.rights,
                    });
                    (202, "Accepted".into())
                }
                Err(refusal) => (401, refusal),
            };
        }
        let mut refusal = "the token names no configured key".to_owned();
        for rule in &self.shared.config.rules {
            match sas::verify(&token, &rule.key_name, &rule.key, now) {
                Ok(grant) => {
                    let host = grant.resource_uri.split_once("://").map_or(grant.resource_uri.as_str(), |(_, r)| r);
                    let host = host.split(['/', ':']).next().unwrap_or_default();
                    if !host.eq_ignore_ascii_case(&self.shared.config.host) {
                        return (401, format!("the token is for host '{host}', not '{}'", self.shared.config.host));
                    }
                    let entity = entity_path(audience);
                    if !sas::covers(&grant.resource_uri, entity) {
                        return (401, format!("the token's resource does not cover the audience '{audience}'"));
                    }
                    self.grants.push(Grant {
                        resource_uri: grant.resource_uri,
                        expiry_unix_secs: grant.expiry_unix_secs,
                        rights: rule.rights,
                    });
                    return (202, "Accepted".into());
                }
                Err(sas::SasError::UnknownKeyName(_)) => continue,
                Err(e) => refusal = e.to_string(),
            }
        }
        (401, refusal)
    }

    fn management(&mut self, channel: u16, entity: &Entity, request: &AmqpMessage) -> Status {
        let broker = &self.shared.broker;
        let now = Instant::now();
        let empty = OrderedMap::new();
        let body = body_map(request).unwrap_or(&empty);
        let operation = app_property(request, "operation").unwrap_or_default();
        let lost = |token: Uuid| {
            Status::failed(410, MESSAGE_LOCK_LOST, format!("the lock {token} is lost: expired, settled or never held"))
        };
        match operation {
            "com.microsoft:renew-lock" => {
                let mut expirations = Vec::new();
                for token in uuids(map_get(body, "lock-tokens")) {
                    match broker.renew(entity, token, now) {
                        Ok(until) => expirations.push(timestamp(wall_clock(until))),
                        Err(_) => return lost(token),
                    }
                }
                Status::ok(200, map([("expirations", Value::Array(Array(expirations)))]))
            }
            "com.microsoft:renew-session-lock" => {
                let Some(session) = map_get(body, "session-id").and_then(text) else {
                    return Status::failed(400, "com.microsoft:argument-error", "session-id is missing");
                };
                let owners: Vec<u64> = self.sessions.values().flat_map(|s| s.links.values()).map(|l| l.id).collect();
                match broker.renew_session(&entity.queue, session, &owners, now) {
                    Some(until) => Status::ok(200, map([("expiration", timestamp(wall_clock(until)))])),
                    None => Status::failed(410, SESSION_LOCK_LOST, format!("the session lock on '{session}' is lost")),
                }
            }
            "com.microsoft:update-disposition" => {
                let status = map_get(body, "disposition-status").and_then(text).unwrap_or_default();
                let reason = map_get(body, "deadletter-reason").and_then(text).unwrap_or_default();
                let description = map_get(body, "deadletter-description").and_then(text).unwrap_or_default();
                let settle = match status {
                    "completed" => Settle::Complete,
                    "abandoned" => Settle::Abandon,
                    "suspended" => Settle::DeadLetter { reason: reason.into(), description: description.into() },
                    other => {
                        return Status::failed(400, NOT_IMPLEMENTED, format!("disposition '{other}' is not supported"))
                    }
                };
                for token in uuids(map_get(body, "lock-tokens")) {
                    if broker.settle(entity, token, settle.clone(), now).is_err() {
                        return lost(token);
                    }
                    // The delivery is settled now: a later link disposition must not find it.
                    if let Some(sess) = self.sessions.get_mut(&channel) {
                        sess.unsettled.retain(|_, (_, t)| *t != token);
                    }
                }
                Status::ok(200, OrderedMap::new())
            }
            "com.microsoft:peek-message" => {
                let from = match map_get(body, "from-sequence-number") {
                    Some(Value::Long(n)) => *n,
                    _ => 1,
                };
                let count = match map_get(body, "message-count") {
                    Some(Value::Int(n)) => (*n).max(0) as usize,
                    _ => 1,
                };
                let peeked = broker.peek(entity, from, count, now);
                if peeked.is_empty() {
                    return Status::ok(204, OrderedMap::new());
                }
                let messages = peeked
                    .iter()
                    .map(|m| {
                        let bytes = encode_message(&delivered(entity, None, m));
                        Value::Map(map([("message", Value::Binary(bytes.into()))]))
                    })
                    .collect();
                Status::ok(200, map([("messages", Value::List(messages))]))
            }
            other => Status::failed(400, NOT_IMPLEMENTED, format!("the operation '{other}' is not supported")),
        }
    }

    fn on_disposition(&mut self, channel: u16, disposition: Disposition) {
        if disposition.role != Role::Receiver {
            return; // the stand-in settles what it receives at once
        }
        let Some(sess) = self.sessions.get_mut(&channel) else { return };
        let last = disposition.last.unwrap_or(disposition.first);
        let settle = match &disposition.state {
            Some(DeliveryState::Accepted(_)) => Settle::Complete,
            Some(DeliveryState::Modified(Modified { delivery_failed: Some(true), .. })) => Settle::Abandon,
            Some(DeliveryState::Rejected(Rejected { error: Some(e) })) => {
                let info = e.info.as_deref();
                let field = |key: &str| info.and_then(|i| i.get(&Symbol::from(key))).and_then(text).map(str::to_owned);
                let condition = condition_text(&e.condition);
                if condition == DEAD_LETTER {
                    Settle::DeadLetter {
                        reason: field(DEAD_LETTER_REASON).unwrap_or_default(),
                        description: field(DEAD_LETTER_DESCRIPTION).or(e.description.clone()).unwrap_or_default(),
                    }
                } else {
                    Settle::DeadLetter { reason: condition, description: e.description.clone().unwrap_or_default() }
                }
            }
            Some(DeliveryState::Rejected(Rejected { error: None })) => {
                Settle::DeadLetter { reason: String::new(), description: String::new() }
            }
            _ => Settle::Release,
        };
        let mut replies = Vec::new();
        for delivery_id in disposition.first..=last {
            let Some((entity, token)) = sess.unsettled.remove(&delivery_id) else { continue };
            let settled = self.shared.broker.settle(&entity, token, settle.clone(), Instant::now());
            if !disposition.settled {
                let state = match settled {
                    Ok(()) => disposition.state.clone(),
                    Err(e) => {
                        Some(DeliveryState::Rejected(Rejected { error: Some(error(MESSAGE_LOCK_LOST, e.to_string())) }))
                    }
                };
                replies.push(Disposition {
                    role: Role::Sender,
                    first: delivery_id,
                    last: None,
                    settled: true,
                    state,
                    batchable: false,
                });
            }
        }
        for reply in replies {
            put_frame(&mut self.out, FRAME_AMQP, channel, &reply, &[]);
        }
        self.pump();
    }

    /// Sends what links have credit for: replies, and messages locked (or taken) for
    /// receivers. Never more transfers than credit.
    fn pump(&mut self) {
        let channels: Vec<u16> = self.sessions.keys().copied().collect();
        for channel in channels {
            let handles: Vec<u32> = self.sessions[&channel].links.keys().copied().collect();
            for handle in handles {
                self.pump_link(channel, handle);
            }
        }
    }

    fn pump_link(&mut self, channel: u16, handle: u32) {
        let now = Instant::now();
        loop {
            let sess = self.sessions.get_mut(&channel).expect("listed by pump");
            let link = sess.links.get_mut(&handle).expect("listed by pump");
            if link.credit == 0 {
                break;
            }
            let (payload, tag, settled) = match &link.kind {
                Kind::Reply(_) => match link.replies.pop_front() {
                    Some(reply) => (encode_message(&reply), Uuid::new_v4(), true),
                    None => break,
                },
                Kind::Receive { entity, session, receive_and_delete } => {
                    let Some((lock, stored)) = self.shared.broker.lock_next(entity, session.as_deref(), now) else {
                        break;
                    };
                    let bytes = if *receive_and_delete {
                        let _ = self.shared.broker.settle(entity, lock.token, Settle::Complete, now);
                        encode_message(&delivered(entity, None, &stored))
                    } else {
                        sess.unsettled.insert(sess.next_delivery_id, (entity.clone(), lock.token));
                        encode_message(&delivered(entity, Some(&lock), &stored))
                    };
                    (bytes, lock.token, *receive_and_delete)
                }
                _ => break,
            };
            link.credit -= 1;
            link.delivery_count = link.delivery_count.wrapping_add(1);
            // The tag is the lock token in .NET's byte order (the SDK reads it with
            // `uuid.UUID(bytes_le=tag)`).
            let tag = tag.to_bytes_le().to_vec();
            self.send_transfer(channel, handle, tag, settled, &payload);
        }
        let sess = self.sessions.get_mut(&channel).expect("listed by pump");
        let link = sess.links.get_mut(&handle).expect("listed by pump");
        if link.drain && link.credit > 0 {
            link.delivery_count = link.delivery_count.wrapping_add(link.credit);
            link.credit = 0;
            link.drain = false;
            self.send_flow(channel, handle, true);
        }
    }

    /// One delivery, split into frames of the peer's maximum size.
    fn send_transfer(&mut self, channel: u16, handle: u32, tag: Vec<u8>, settled: bool, payload: &[u8]) {
        let sess = self.sessions.get_mut(&channel).expect("caller checked");
        let output_handle = sess.links[&handle].output_handle;
        let delivery_id = sess.next_delivery_id;
        sess.next_delivery_id = sess.next_delivery_id.wrapping_add(1);
        let first = Transfer {
            handle: Handle(output_handle),
            delivery_id: Some(delivery_id),
            delivery_tag: Some(tag.into()),
            message_format: Some(0),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let overhead = 8 + serde_amqp::to_vec(&Transfer { more: true, ..first.clone() }).map_or(64, |b| b.len());
        let chunk = self.peer_max_frame.saturating_sub(overhead).max(1);
        let mut chunks = payload.chunks(chunk).peekable();
        let mut transfer = first;
        loop {
            let part = chunks.next().unwrap_or_default();
            transfer.more = chunks.peek().is_some();
            put_frame(&mut self.out, FRAME_AMQP, channel, &transfer, part);
            sess.next_outgoing_id = sess.next_outgoing_id.wrapping_add(1);
            if !transfer.more {
                break;
            }
            transfer =
                Transfer { delivery_id: None, delivery_tag: None, message_format: None, settled: None, ..transfer };
        }
    }

    /// Applies time: session locks that lapsed and tokens that expired end their links,
    /// as Service Bus detaches them; then delivers what became available again.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        for (&channel, sess) in &self.sessions {
            for (&handle, link) in &sess.links {
                if let Kind::Receive { entity, session: Some(session), .. } = &link.kind {
                    if self.shared.broker.session_locked_until(&entity.queue, session, link.id, now).is_none() {
                        let description = format!("the session lock on '{session}' has expired");
                        ended.push((channel, handle, SESSION_LOCK_LOST, description));
                        continue;
                    }
                }
                if let Some((entity, right)) = link.kind.needs() {
                    if !self.authorized(&entity, right) {
                        let description = format!("the token for '{entity}' has expired");
                        ended.push((channel, handle, UNAUTHORIZED, description));
                    }
                }
            }
        }
        for (channel, handle, condition, description) in ended {
            self.detach(channel, handle, condition, description);
        }
        self.pump();
    }

    fn detach(&mut self, channel: u16, handle: u32, condition: &str, description: String) {
        let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.remove(&handle)) else { return };
        tracing::debug!(link = link.id, condition, %description, "detaching");
        self.release(&link);
        let detach =
            Detach { handle: Handle(link.output_handle), closed: true, error: Some(error(condition, description)) };
        put_frame(&mut self.out, FRAME_AMQP, channel, &detach, &[]);
    }

    /// Detaches every link with `amqp:link:detach-forced`, as Service Bus does to links
    /// idle for 10 minutes.
    fn detach_all(&mut self) {
        let links: Vec<(u16, u32)> =
            self.sessions.iter().flat_map(|(&c, s)| s.links.keys().map(move |&h| (c, h))).collect();
        for (channel, handle) in links {
            let description = "the link was idle and is force detached (as Service Bus does after 10 minutes)";
            self.detach(channel, handle, DETACH_FORCED, description.into());
        }
    }
}

/// The messages a transfer carries: itself, or for Microsoft's batch format
/// (`0x80013700`, what the SDK's `send_messages([...])` sends) each data section's
/// encoded message, which Service Bus enqueues one by one.
fn batched(format: u32, message: AmqpMessage) -> Result<Vec<AmqpMessage>, WireError> {
    match (format, message.body) {
        (BATCH_MESSAGE_FORMAT, Body::Data(sections)) => sections.iter().map(|data| decode_message(&data.0)).collect(),
        (_, body) => Ok(vec![AmqpMessage { body, ..message }]),
    }
}

/// A stored message as Service Bus delivers it: the header's delivery count, and the
/// broker's annotations (sequence number, enqueued time, and the lock for peek-lock);
/// a dead letter carries its reason and description as application properties.
pub(crate) fn delivered(entity: &Entity, lock: Option<&Lock>, stored: &Stored<Payload>) -> AmqpMessage {
    let mut message = stored.payload.message.clone();
    let header = message.header.get_or_insert_with(Header::default);
    header.delivery_count = stored.delivery_count;
    header.first_acquirer = stored.delivery_count == 0;
    let annotations = &mut message.message_annotations.get_or_insert_with(|| MessageAnnotations(OrderedMap::new())).0;
    annotations.insert(symbol_key(X_OPT_SEQUENCE_NUMBER), Value::Long(stored.sequence_number));
    annotations.insert(symbol_key(X_OPT_ENQUEUED_TIME), timestamp(stored.payload.enqueued_at));
    if let Some(lock) = lock {
        annotations.insert(symbol_key(X_OPT_LOCK_TOKEN), Value::Uuid((*lock.token.as_bytes()).into()));
        annotations.insert(symbol_key(X_OPT_LOCKED_UNTIL), timestamp(wall_clock(lock.locked_until)));
    }
    if let Some((reason, description)) = &stored.dead_letter {
        annotations.insert(symbol_key(X_OPT_DEADLETTER_SOURCE), Value::String(entity.queue.clone()));
        let properties =
            &mut message.application_properties.get_or_insert_with(|| ApplicationProperties(OrderedMap::new())).0;
        properties.insert(DEAD_LETTER_REASON.into(), SimpleValue::String(reason.clone()));
        properties.insert(DEAD_LETTER_DESCRIPTION.into(), SimpleValue::String(description.clone()));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_name_their_entity_with_or_without_the_namespace() {
        for (address, path, entity) in [
            ("orders", "orders", Entity { queue: "orders".into(), dead_letter: false }),
            ("amqps://127.0.0.1:5671/orders", "orders", Entity { queue: "orders".into(), dead_letter: false }),
            ("sb://ns.servicebus.windows.net/orders/", "orders", Entity { queue: "orders".into(), dead_letter: false }),
            (
                "sb://127.0.0.1/orders/$deadletterqueue",
                "orders/$deadletterqueue",
                Entity { queue: "orders".into(), dead_letter: true },
            ),
            ("sb://127.0.0.1/", "", Entity { queue: "".into(), dead_letter: false }),
        ] {
            assert_eq!(entity_path(address), path, "{address}");
            assert_eq!(Entity::parse(path), entity, "{address}");
        }
    }
}
