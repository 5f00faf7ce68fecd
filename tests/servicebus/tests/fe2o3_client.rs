//! fe2o3-amqp's client (the transport's library) against the stand-in's server: CBS,
//! credit, dispositions, `$management`, sessions, and the detaches Service Bus makes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{LinkStateError, ReceiverAttachError, RecvError, SenderAttachError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, ReceiverSettleMode};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Header, Message, MessageId, Modified, Properties, Source,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Delivery, Receiver, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use servicebus_standin::wire::{condition_text, SESSION_FILTER};
use servicebus_standin::{sas, StandIn};
use uuid::Uuid;

use crate::support::{stand_in, KEY, KEY_NAME, LISTEN_KEY_NAME, LOCK};

/// How long a test waits for something the stand-in does by its clock (lock and token
/// expiry are at most 2 s away, ticked every 50 ms).
const DEADLINE: Duration = Duration::from_secs(6);

struct Client {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
}

impl Client {
    async fn open(stand_in: &StandIn, sasl: SaslProfile) -> Result<Client, fe2o3_amqp::connection::OpenError> {
        let url = format!("amqp://{}", stand_in.addr());
        let mut connection =
            Connection::builder().container_id("fe2o3-check").sasl_profile(sasl).open(url.as_str()).await?;
        let session = Session::begin(&mut connection).await.expect("a session begins");
        Ok(Client { connection, session })
    }

    /// Signs in anonymously and puts a token for `path` (`""`: the namespace).
    async fn signed_in(stand_in: &StandIn, key_name: &str, key: &str, path: &str) -> Client {
        let mut client = Client::open(stand_in, SaslProfile::Anonymous).await.expect("the connection opens");
        let token = token(stand_in, path, key_name, key, unix_now() + 3600);
        client.put_token(stand_in, path, &token).await.expect("the token is accepted");
        client
    }

    async fn put_token(&mut self, stand_in: &StandIn, audience_path: &str, token: &str) -> Result<(), String> {
        let mut cbs = CbsClient::attach(&mut self.session).await.expect("the $cbs links attach");
        let audience = format!("sb://127.0.0.1:{}/{audience_path}", stand_in.addr().port());
        let put = cbs.put_token(audience, CbsToken::new(token, "servicebus.windows.net:sastoken", None)).await;
        cbs.close().await.expect("the $cbs links detach");
        put.map_err(|e| format!("{e:?}"))
    }

    async fn sender(&mut self, address: &str) -> Result<Sender, SenderAttachError> {
        Sender::attach(&mut self.session, format!("sender-{}", Uuid::new_v4()), address).await
    }

    /// A peek-lock receiver (`rcv-settle-mode` second, as the SDK attaches) granting
    /// credit only when told.
    async fn receiver(&mut self, source: impl Into<Source>) -> Result<Receiver, ReceiverAttachError> {
        Receiver::builder()
            .name(format!("receiver-{}", Uuid::new_v4()))
            .source(source)
            .receiver_settle_mode(ReceiverSettleMode::Second)
            .credit_mode(CreditMode::Manual)
            .attach(&mut self.session)
            .await
    }

    /// The condition a receiver attach is refused with, tried on a session of its own:
    /// with fe2o3 0.18.4, the next attach on a session that saw a refusal can fail locally
    /// (`IllegalState`, the attach never sent), a client quirk, not the server's.
    async fn refused_receiver(&mut self, source: impl Into<Source>) -> String {
        let mut session = Session::begin(&mut self.connection).await.expect("a session begins");
        let attached = Receiver::builder()
            .name(format!("refused-{}", Uuid::new_v4()))
            .source(source)
            .receiver_settle_mode(ReceiverSettleMode::Second)
            .attach(&mut session)
            .await;
        let refusal = attach_refusal(attached);
        session.end().await.expect("the session ends");
        refusal
    }

    async fn close(mut self) {
        self.session.end().await.expect("the session ends");
        self.connection.close().await.expect("the connection closes");
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn token(stand_in: &StandIn, path: &str, key_name: &str, key: &str, expiry_unix_secs: u64) -> String {
    sas::sign(&format!("sb://127.0.0.1:{}/{path}", stand_in.addr().port()), key_name, key, expiry_unix_secs)
}

fn session_filter(queue: &str, session: Option<&str>) -> Source {
    let session = session.map_or(Value::Null, |s| Value::String(s.into()));
    Source::builder().address(queue).add_to_filter_using_legacy_format(SESSION_FILTER, session).build()
}

/// The condition of the error a refused attach or a detached link carries.
fn attach_refusal<T: std::fmt::Debug>(attached: Result<T, impl Into<Refusal>>) -> String {
    match attached {
        Ok(link) => panic!("the attach was accepted: {link:?}"),
        Err(e) => e.into().0,
    }
}

struct Refusal(String);

fn error_condition(error: &definitions::Error) -> String {
    condition_text(&error.condition)
}

impl From<SenderAttachError> for Refusal {
    fn from(e: SenderAttachError) -> Self {
        match e {
            SenderAttachError::RemoteClosedWithError(error) => Refusal(error_condition(&error)),
            other => panic!("refused without an error: {other:?}"),
        }
    }
}

impl From<ReceiverAttachError> for Refusal {
    fn from(e: ReceiverAttachError) -> Self {
        match e {
            ReceiverAttachError::RemoteClosedWithError(error) => Refusal(error_condition(&error)),
            other => panic!("refused without an error: {other:?}"),
        }
    }
}

/// Waits (bounded) for the link to be detached; the condition of the detach's error.
async fn detached_with(receiver: &mut Receiver) -> String {
    receiver.set_credit(1).await.expect("credit is granted");
    let received = tokio::time::timeout(DEADLINE, receiver.recv::<Body<Value>>()).await.expect("detached in time");
    match received {
        Err(RecvError::LinkStateError(
            LinkStateError::RemoteClosedWithError(error) | LinkStateError::RemoteDetachedWithError(error),
        )) => error_condition(&error),
        other => panic!("expected a detach with an error, got {other:?}"),
    }
}

/// Waits (bounded) until `observe` returns `expected`.
async fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, observe: impl Fn() -> T, expected: T) {
    let started = Instant::now();
    loop {
        let observed = observe();
        if observed == expected {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{what}: {observed:?} after {DEADLINE:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(receiver: &mut Receiver) -> Delivery<Body<Value>> {
    tokio::time::timeout(DEADLINE, receiver.recv()).await.expect("a delivery in time").expect("a delivery")
}

fn annotation<'d>(delivery: &'d Delivery<Body<Value>>, key: &str) -> Option<&'d Value> {
    delivery.message().message_annotations.as_ref()?.0.get(&OwnedKey::Symbol(Symbol::from(key)))
}

/// The session id (AMQP group id) of a delivery.
fn session_of(delivery: &Delivery<Body<Value>>) -> Option<&str> {
    delivery.message().properties.as_ref()?.group_id.as_deref()
}

fn text_message(text: &str) -> Message<Body<Value>> {
    Message::builder().body(Body::Value(AmqpValue(Value::String(text.into())))).build()
}

/// One sign-in: a token put for an audience, then one attach.
struct SignIn {
    what: &'static str,
    audience: &'static str,
    token: String,
    /// CBS answers 202 (else 401).
    accepted: bool,
    address: &'static str,
    send: bool,
    refusal: Option<&'static str>,
}

async fn check(stand_in: &StandIn, case: SignIn) {
    let what = case.what;
    let mut client = Client::open(stand_in, SaslProfile::Anonymous).await.expect("the connection opens");
    let put = client.put_token(stand_in, case.audience, &case.token).await;
    assert_eq!(put.is_ok(), case.accepted, "{what}: put-token {put:?}");
    let address = format!("sb://127.0.0.1:{}/{}", stand_in.addr().port(), case.address);
    let refusal = if case.send {
        client.sender(&address).await.err().map(|e| Refusal::from(e).0)
    } else {
        client.receiver(address.as_str()).await.err().map(|e| Refusal::from(e).0)
    };
    assert_eq!(refusal.as_deref(), case.refusal, "{what}");
    client.close().await;
}

#[tokio::test]
async fn cbs_grants_what_a_token_covers() {
    let stand_in = stand_in().await;
    let (later, expired) = (unix_now() + 3600, unix_now() - 1);
    let signed = |path: &str, key_name: &str, key: &str, expiry: u64| token(&stand_in, path, key_name, key, expiry);
    let unauthorized = Some("amqp:unauthorized-access");
    let cases = [
        SignIn {
            what: "a namespace token sends",
            audience: "",
            token: signed("", KEY_NAME, KEY, later),
            accepted: true,
            address: "orders",
            send: true,
            refusal: None,
        },
        SignIn {
            what: "a queue token receives from its dead-letter queue",
            audience: "orders",
            token: signed("orders", KEY_NAME, KEY, later),
            accepted: true,
            address: "orders/$DeadLetterQueue",
            send: false,
            refusal: None,
        },
        SignIn {
            what: "an unknown entity",
            audience: "",
            token: signed("", KEY_NAME, KEY, later),
            accepted: true,
            address: "nowhere",
            send: true,
            refusal: Some("amqp:not-found"),
        },
        SignIn {
            what: "a wrong key",
            audience: "",
            token: signed("", KEY_NAME, "d3Jvbmc=", later),
            accepted: false,
            address: "orders",
            send: true,
            refusal: unauthorized,
        },
        SignIn {
            what: "an expired token",
            audience: "",
            token: signed("", KEY_NAME, KEY, expired),
            accepted: false,
            address: "orders",
            send: true,
            refusal: unauthorized,
        },
        SignIn {
            what: "a token for another audience",
            audience: "orders",
            token: signed("retries", KEY_NAME, KEY, later),
            accepted: false,
            address: "orders",
            send: true,
            refusal: unauthorized,
        },
        SignIn {
            what: "another queue's token",
            audience: "retries",
            token: signed("retries", KEY_NAME, KEY, later),
            accepted: true,
            address: "orders",
            send: true,
            refusal: unauthorized,
        },
        SignIn {
            what: "a listen-only key sends",
            audience: "",
            token: signed("", LISTEN_KEY_NAME, "bGlzdGVu", later),
            accepted: true,
            address: "orders",
            send: true,
            refusal: unauthorized,
        },
        SignIn {
            what: "a listen-only key receives",
            audience: "",
            token: signed("", LISTEN_KEY_NAME, "bGlzdGVu", later),
            accepted: true,
            address: "orders",
            send: false,
            refusal: None,
        },
    ];
    for case in cases {
        check(&stand_in, case).await;
    }
    stand_in.shutdown().await;
}

#[tokio::test]
async fn peek_lock_honours_credit_and_settles_as_dispositions_say() {
    let stand_in = stand_in().await;
    let mut client = Client::signed_in(&stand_in, KEY_NAME, KEY, "").await;
    let mut sender = client.sender("orders").await.expect("the sender attaches");
    for n in 1..=3 {
        let message = Message::builder()
            .header(Header { ttl: Some(60_000), ..Default::default() })
            .properties(Properties {
                message_id: Some(MessageId::String(format!("m-{n}"))),
                correlation_id: Some(MessageId::String("c-1".into())),
                reply_to: Some("replies".into()),
                reply_to_group_id: Some("r-1".into()),
                content_type: Some(Symbol::from("text/plain")),
                ..Default::default()
            })
            .application_properties(ApplicationProperties::builder().insert("n", n).build())
            .body(Body::Value(AmqpValue(Value::String(format!("body-{n}")))))
            .build();
        sender.send(message).await.expect("the message is accepted");
    }
    let stored = stand_in.messages("orders");
    assert_eq!(stored.len(), 3);
    let first = &stored[0];
    assert_eq!(
        (first.body.as_slice(), first.message_id.as_deref(), first.correlation_id.as_deref()),
        (&b"body-1"[..], Some("m-1"), Some("c-1"))
    );
    assert_eq!((first.reply_to.as_deref(), first.reply_to_group_id.as_deref()), (Some("replies"), Some("r-1")));
    assert_eq!((first.content_type.as_deref(), first.ttl_ms), (Some("text/plain"), Some(60_000)));
    assert_eq!(first.application_properties, vec![("n".to_owned(), SimpleValue::Int(1))]);

    let mut receiver = client.receiver("orders").await.expect("the receiver attaches");
    receiver.set_credit(2).await.expect("credit is granted");
    let (one, two) = (recv(&mut receiver).await, recv(&mut receiver).await);
    for delivery in [&one, &two] {
        let tag: [u8; 16] = delivery.delivery_tag().as_slice().try_into().expect("the tag is 16 bytes");
        let lock_token = match annotation(delivery, "x-opt-lock-token") {
            Some(Value::Uuid(u)) => Uuid::from_bytes(*u.as_inner()),
            other => panic!("x-opt-lock-token is {other:?}"),
        };
        assert_eq!(Uuid::from_bytes_le(tag), lock_token, "the tag is the lock token, .NET byte order");
        assert!(matches!(annotation(delivery, "x-opt-locked-until"), Some(Value::Timestamp(_))));
        assert!(matches!(annotation(delivery, "x-opt-enqueued-time"), Some(Value::Timestamp(_))));
    }
    assert_eq!(annotation(&two, "x-opt-sequence-number"), Some(&Value::Long(2)));
    let third = tokio::time::timeout(Duration::from_millis(300), receiver.recv::<Body<Value>>()).await;
    assert!(third.is_err(), "a delivery beyond the credit: {third:?}");

    receiver.accept(&one).await.expect("completed");
    let abandon = Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: None };
    receiver.modify(&two, abandon).await.expect("abandoned");
    receiver.set_credit(2).await.expect("credit is granted");
    let (two_again, three) = (recv(&mut receiver).await, recv(&mut receiver).await);
    let sequence_number = annotation(&two_again, "x-opt-sequence-number");
    assert_eq!(sequence_number, Some(&Value::Long(2)), "an abandoned message keeps its place");
    assert_eq!(two_again.message().header.as_ref().map(|h| h.delivery_count), Some(1), "an abandon counts");
    let mut info = OrderedMap::new();
    info.insert(Symbol::from("DeadLetterReason"), Value::String("bad-input".into()));
    info.insert(Symbol::from("DeadLetterErrorDescription"), Value::String("no column x".into()));
    let dead_letter = definitions::Error {
        condition: definitions::ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter")),
        description: None,
        info: Some(Box::new(info)),
    };
    receiver.reject(&three, Some(dead_letter)).await.expect("dead-lettered");
    receiver.release(&two_again).await.expect("released");

    // fe2o3 returns once a disposition is queued, not once the stand-in applied it.
    let settled = || {
        let remaining: Vec<_> =
            stand_in.messages("orders").into_iter().map(|m| (m.message_id, m.delivery_count)).collect();
        let dead: Vec<_> = stand_in
            .dead_letters("orders")
            .into_iter()
            .map(|m| (m.message_id, m.dead_letter_reason, m.dead_letter_error_description))
            .collect();
        (remaining, dead)
    };
    let expected = (
        vec![(Some("m-2".to_owned()), 1)],
        vec![(Some("m-3".to_owned()), Some("bad-input".to_owned()), Some("no column x".to_owned()))],
    );
    eventually("a release does not count; the rejected message is dead-lettered", settled, expected).await;
    client.close().await;
    stand_in.shutdown().await;
}

/// `$management` of an entity, over a request link and a reply link.
struct Management {
    requests: Sender,
    replies: Receiver,
}

impl Management {
    async fn attach(client: &mut Client, entity: &str) -> Management {
        let node = format!("{entity}/$management");
        let requests = client.sender(&node).await.expect("the request link attaches");
        let mut replies = Receiver::builder()
            .name(format!("replies-{}", Uuid::new_v4()))
            .source(node.as_str())
            .target("management-client")
            .attach(&mut client.session)
            .await
            .expect("the reply link attaches");
        replies.set_credit(10).await.expect("credit is granted");
        Management { requests, replies }
    }

    /// (statusCode, errorCondition, body) of one request.
    async fn call(&mut self, operation: &str, body: Vec<(&str, Value)>) -> (i32, Option<String>, Value) {
        let id = Uuid::new_v4().to_string();
        let body: OrderedMap<Value, Value> = body.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect();
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(id.clone())),
                reply_to: Some("management-client".into()),
                ..Default::default()
            })
            .application_properties(ApplicationProperties::builder().insert("operation", operation).build())
            .body(Body::Value(AmqpValue(Value::Map(body))))
            .build();
        self.requests.send(request).await.expect("the request is accepted");
        let response = recv(&mut self.replies).await;
        self.replies.accept(&response).await.expect("accepted");
        let message = response.into_message();
        let correlation = message.properties.as_ref().and_then(|p| p.correlation_id.clone());
        assert_eq!(correlation, Some(MessageId::String(id)), "the response is correlated by the request's id");
        let properties = message.application_properties.expect("a status").0;
        let status = match properties.get("statusCode") {
            Some(SimpleValue::Int(code)) => *code,
            other => panic!("statusCode {other:?}"),
        };
        let condition = match properties.get("errorCondition") {
            Some(SimpleValue::Symbol(s)) => Some(s.0.clone()),
            _ => None,
        };
        let body = match message.body {
            Body::Value(value) => value.0,
            other => panic!("body {other:?}"),
        };
        (status, condition, body)
    }
}

fn lock_token(delivery: &Delivery<Body<Value>>) -> Value {
    let tag: [u8; 16] = delivery.delivery_tag().as_slice().try_into().expect("16 bytes");
    Value::Uuid((*Uuid::from_bytes_le(tag).as_bytes()).into())
}

#[tokio::test]
async fn management_renews_and_settles_by_lock_token_and_a_lapsed_lock_is_lost() {
    let stand_in = stand_in().await;
    let mut client = Client::signed_in(&stand_in, KEY_NAME, KEY, "orders").await;
    let mut sender = client.sender("orders").await.expect("the sender attaches");
    for text in ["renewed", "lapsed"] {
        sender.send(text_message(text)).await.expect("accepted");
    }
    let mut receiver = client.receiver("orders").await.expect("the receiver attaches");
    receiver.set_credit(2).await.expect("credit is granted");
    let (renewed, lapsed) = (recv(&mut receiver).await, recv(&mut receiver).await);
    let mut management = Management::attach(&mut client, "orders").await;

    let first_until = match annotation(&renewed, "x-opt-locked-until") {
        Some(Value::Timestamp(t)) => t.milliseconds(),
        other => panic!("x-opt-locked-until {other:?}"),
    };
    let tokens = |d: &Delivery<Body<Value>>| Value::Array(vec![lock_token(d)].into());
    let (status, _, body) = management.call("com.microsoft:renew-lock", vec![("lock-tokens", tokens(&renewed))]).await;
    assert_eq!(status, 200, "renew-lock: {body:?}");
    let renewed_until = match &body {
        Value::Map(map) => match map.get(&Value::String("expirations".into())) {
            Some(Value::Array(array)) => match array.0.as_slice() {
                [Value::Timestamp(t)] => t.milliseconds(),
                other => panic!("expirations {other:?}"),
            },
            other => panic!("expirations {other:?}"),
        },
        other => panic!("body {other:?}"),
    };
    assert!(renewed_until >= first_until, "renewed until {renewed_until}, first lock until {first_until}");

    // The other lock lapses by the stand-in's clock: the message is available again with
    // one more delivery, and the old lock is lost.
    // Renewing the first lock all along keeps it past its first expiry.
    let started = Instant::now();
    while stand_in.messages("orders").iter().all(|m| m.delivery_count == 0) {
        assert!(started.elapsed() < DEADLINE, "the lock did not lapse within {DEADLINE:?} (lock {LOCK:?})");
        let (status, _, _) = management.call("com.microsoft:renew-lock", vec![("lock-tokens", tokens(&renewed))]).await;
        assert_eq!(status, 200, "renewing a held lock");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let complete = |d: &Delivery<Body<Value>>| {
        vec![("disposition-status", Value::String("completed".into())), ("lock-tokens", tokens(d))]
    };
    let (status, condition, _) = management.call("com.microsoft:update-disposition", complete(&lapsed)).await;
    assert_eq!((status, condition.as_deref()), (410, Some("com.microsoft:message-lock-lost")));
    let (status, _, _) = management.call("com.microsoft:update-disposition", complete(&renewed)).await;
    assert_eq!(status, 200);
    let left: Vec<_> = stand_in.messages("orders").into_iter().map(|m| (m.body, m.delivery_count)).collect();
    assert_eq!(left, [(b"lapsed".to_vec(), 1)], "management settled the renewed message");
    client.close().await;
    stand_in.shutdown().await;
}

#[tokio::test]
async fn a_session_goes_to_one_receiver_until_its_lock_lapses() {
    let stand_in = stand_in().await;
    let mut client = Client::signed_in(&stand_in, KEY_NAME, KEY, "").await;
    let mut sender = client.sender("sessions").await.expect("the sender attaches");
    for (session, text) in [("s1", "s1-a"), ("s2", "s2-a")] {
        let mut message = text_message(text);
        message.properties = Some(Properties { group_id: Some(session.into()), ..Default::default() });
        sender.send(message).await.expect("accepted");
    }
    let refusal = client.refused_receiver("sessions").await;
    assert_eq!(refusal, "amqp:not-allowed", "a sessionful queue needs a session filter");
    let mut s1 = client.receiver(session_filter("sessions", Some("s1"))).await.expect("s1 is locked");
    let refusal = client.refused_receiver(session_filter("sessions", Some("s1"))).await;
    assert_eq!(refusal, "com.microsoft:session-cannot-be-locked");
    let mut next = client.receiver(session_filter("sessions", None)).await.expect("the next session is locked");
    next.set_credit(5).await.expect("credit is granted");
    let delivery = recv(&mut next).await;
    assert_eq!(session_of(&delivery), Some("s2"), "the next available session is the unlocked one");
    let refusal = client.refused_receiver(session_filter("sessions", None)).await;
    assert_eq!(refusal, "com.microsoft:timeout", "no unlocked session has messages");
    s1.set_credit(1).await.expect("credit is granted");
    assert_eq!(session_of(&recv(&mut s1).await), Some("s1"));
    // Nobody renews s1's lock: the stand-in detaches its receiver when it lapses.
    assert_eq!(detached_with(&mut s1).await, "com.microsoft:session-lock-lost");
    client.close().await;
    stand_in.shutdown().await;
}

#[tokio::test]
async fn links_are_detached_when_forced_and_when_their_token_expires() {
    let stand_in = stand_in().await;
    let mut client = Client::signed_in(&stand_in, KEY_NAME, KEY, "").await;
    let mut receiver = client.receiver("orders").await.expect("the receiver attaches");
    stand_in.detach_all_links();
    assert_eq!(detached_with(&mut receiver).await, "amqp:link:detach-forced");

    let mut short_lived = Client::open(&stand_in, SaslProfile::Anonymous).await.expect("the connection opens");
    let token = token(&stand_in, "retries", KEY_NAME, KEY, unix_now() + 2);
    short_lived.put_token(&stand_in, "retries", &token).await.expect("accepted");
    let mut receiver = short_lived.receiver("retries").await.expect("attached while the token is valid");
    assert_eq!(detached_with(&mut receiver).await, "amqp:unauthorized-access");
    short_lived.close().await;
    client.close().await;
    stand_in.shutdown().await;
}

#[tokio::test]
async fn sasl_plain_signs_in_with_a_key_name_and_its_key() {
    let stand_in = stand_in().await;
    let plain = SaslProfile::Plain { username: KEY_NAME.into(), password: KEY.into() };
    let mut client = Client::open(&stand_in, plain).await.expect("the key signs in");
    let mut sender = client.sender("orders").await.expect("no CBS token is needed");
    sender.send(text_message("plain")).await.expect("accepted");
    assert_eq!(stand_in.messages("orders")[0].body, b"plain");
    client.close().await;
    let wrong = SaslProfile::Plain { username: KEY_NAME.into(), password: "d3Jvbmc=".into() };
    assert!(Client::open(&stand_in, wrong).await.is_err(), "a wrong key signs in");
    stand_in.shutdown().await;
}
