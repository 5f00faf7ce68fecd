//! Azure Service Bus's dialect: signing in through CBS, the `$management` operations the
//! transport uses, and Service Bus's wire constants and entity names (module docs of
//! `amqp1`: "Service Bus dialect"). Constants are as Microsoft's SDKs send them
//! (azure-sdk-for-python's `azure-servicebus` 7.14 `_common/constants.py`).
//!
//! # Signing in (CBS)
//! The connection opens with SASL ANONYMOUS; before a link to an entity is attached, a
//! token for the entity's audience (`sb://HOST/ENTITY`) is put on the connection's `$cbs`
//! node ([`Cbs::authorize`]). Tokens signed here from a connection string's key last
//! [`super::Amqp1Config::token_lifetime`]; a connection string's own
//! `SharedAccessSignature` lasts until its `se`; an Entra ID token (`jwt`, see `entra`)
//! until its `expires_on`. [`maintain`] puts every audience's token
//! again a margin before it expires (a fifth of its life, at least one second), as Service
//! Bus detaches the links of an audience whose token ran out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Timestamp, Value};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::client::MgmtClient;
use fe2o3_amqp_management::error::Error as MgmtError;
use fe2o3_amqp_management::request::Request;
use fe2o3_amqp_management::response::Response;
use parking_lot::Mutex;
use secrecy::ExposeSecret;

use super::credentials::{ConnectionString, SharedAccess};
use super::entra::{EntraId, SCOPE};
use super::{bounded, connection::Session, unavailable, Inner};
use crate::BusError;

/// CBS token types (`put-token`'s `type` application property).
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
pub const JWT_TOKEN_TYPE: &str = "jwt";
/// The CBS node.
pub const CBS_NODE: &str = "$cbs";
/// The management node, under an entity: `<entity>/$management`.
pub const MANAGEMENT_NODE: &str = "$management";
/// A queue's dead-letter sub-queue: `<queue>/$DeadLetterQueue`.
pub const DEAD_LETTER_QUEUE: &str = "$DeadLetterQueue";
pub const RENEW_LOCK_OPERATION: &str = "com.microsoft:renew-lock";
pub const RENEW_SESSION_LOCK_OPERATION: &str = "com.microsoft:renew-session-lock";
pub const PEEK_MESSAGE_OPERATION: &str = "com.microsoft:peek-message";
pub const LOCK_TOKENS: &str = "lock-tokens";
pub const EXPIRATIONS: &str = "expirations";
pub const SESSION_ID: &str = "session-id";
pub const FROM_SEQUENCE_NUMBER: &str = "from-sequence-number";
pub const MESSAGE_COUNT: &str = "message-count";
/// The source filter that picks a session of a session-enabled queue.
pub const SESSION_FILTER: &str = "com.microsoft:session-filter";
pub const DEAD_LETTER_CONDITION: &str = "com.microsoft:dead-letter";
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
pub const DEAD_LETTER_DESCRIPTION: &str = "DeadLetterErrorDescription";
/// Message annotations Service Bus puts on what it delivers.
pub const LOCK_TOKEN_ANNOTATION: &str = "x-opt-lock-token";
pub const LOCKED_UNTIL_ANNOTATION: &str = "x-opt-locked-until";
pub const SEQUENCE_NUMBER_ANNOTATION: &str = "x-opt-sequence-number";
pub const ENQUEUED_TIME_ANNOTATION: &str = "x-opt-enqueued-time";
/// Service Bus's longest entity name.
pub const MAX_ENTITY_NAME_CHARS: usize = 260;
/// Service Bus keeps at most this many characters of a dead letter's description.
const MAX_DESCRIPTION_CHARS: usize = 4096;

/// How often the reply session's lock is renewed. Service Bus's session lock lasts the
/// queue's lock duration (30 s by default, the Bicep template's 1 minute): renewed at a
/// third of the shortest, a lost renewal has two more chances.
pub(super) const RENEW_SESSION_LOCK_EVERY: Duration = Duration::from_secs(10);

/// The queue of `model` (at `version`) on Service Bus: `<prefix><model>[/version]`. Entity
/// names take letters, digits, `.`, `-`, `_` and `/` only, so the `@` of RabbitMQ's version
/// queues becomes `/`, and any other character `_`.
pub fn entity_name(prefix: &str, model: &str, version: Option<&str>) -> String {
    let name = match version {
        Some(version) => format!("{prefix}{model}/{version}"),
        None => format!("{prefix}{model}"),
    };
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/') { c } else { '_' })
        .collect()
}

/// The entity an address belongs to: `Q/$management` and `Q/$DeadLetterQueue` are `Q`'s.
fn entity_of(address: &str) -> &str {
    [MANAGEMENT_NODE, DEAD_LETTER_QUEUE]
        .iter()
        .find_map(|node| address.strip_suffix(node).and_then(|rest| rest.strip_suffix('/')))
        .unwrap_or(address)
}

/// The dead-letter reason and description of one of rfleet's reasons (`code: text`).
pub(super) fn dead_letter_info(reason: &str) -> (String, String) {
    let (code, description) = reason.split_once(": ").unwrap_or((reason, reason));
    (code.to_string(), description.chars().take(MAX_DESCRIPTION_CHARS).collect())
}

/// Where a connection's tokens come from.
pub(super) enum Tokens {
    /// Signed here from a connection string's key, or its own signature: SAS tokens.
    SharedAccess(ConnectionString),
    /// Entra ID (`jwt`).
    EntraId(EntraId),
}

/// A token put for an audience: until when, and how long it lasted from when it was put.
#[derive(Debug, Clone, Copy)]
struct Put {
    expiry: SystemTime,
    lifetime: Duration,
}

/// One connection's CBS link and the audiences it has put tokens for.
pub(super) struct Cbs {
    client: tokio::sync::Mutex<CbsClient>,
    host: String,
    tokens: Tokens,
    /// How long a SAS token signed here lasts.
    lifetime: Duration,
    authorized: Mutex<HashMap<String, Put>>,
}

impl Cbs {
    pub(super) async fn attach(
        session: &mut SessionHandle<()>,
        host: String,
        tokens: Tokens,
        lifetime: Duration,
    ) -> Result<Cbs, BusError> {
        let client = bounded("attach the $cbs links", CbsClient::attach(session)).await?;
        Ok(Cbs { client: tokio::sync::Mutex::new(client), host, tokens, lifetime, authorized: Mutex::default() })
    }

    fn audience(&self, address: &str) -> String {
        format!("sb://{}/{}", self.host, entity_of(address))
    }

    /// Puts a token for `address`'s entity unless one is held that is not due for renewal.
    pub(super) async fn authorize(&self, address: &str) -> Result<(), BusError> {
        let audience = self.audience(address);
        let due = self.authorized.lock().get(&audience).is_none_or(|put| renewal_due(*put));
        if due {
            self.put_token(&audience).await?;
        }
        Ok(())
    }

    async fn put_token(&self, audience: &str) -> Result<(), BusError> {
        let (token, token_type, expiry) = self.token(audience).await?;
        let expires = Timestamp::from_milliseconds(unix_millis(expiry));
        let lifetime = expiry.duration_since(SystemTime::now()).unwrap_or_default();
        let mut client = self.client.lock().await;
        let put = client.put_token(audience, CbsToken::new(token.expose_secret(), token_type, expires));
        match tokio::time::timeout(super::OPERATION_TIMEOUT, put).await {
            Ok(Ok(())) => {}
            // The peer's status and description (401 "unauthorized", say): no token in it.
            Ok(Err(error)) => return Err(unavailable(format!("signing in for {audience} was refused: {error}"))),
            Err(_) => return Err(unavailable(format!("signing in for {audience}: no answer from $cbs"))),
        }
        self.authorized.lock().insert(audience.to_string(), Put { expiry, lifetime });
        tracing::debug!(%audience, "signed in");
        Ok(())
    }

    /// A token for `audience`, its CBS type and its expiry.
    async fn token(&self, audience: &str) -> Result<(secrecy::SecretString, &'static str, SystemTime), BusError> {
        let access = match &self.tokens {
            Tokens::SharedAccess(access) => access,
            Tokens::EntraId(EntraId(credential)) => {
                let getting = credential.get_token(&[SCOPE], None);
                let token = match tokio::time::timeout(super::OPERATION_TIMEOUT, getting).await {
                    Ok(Ok(token)) => token,
                    // azure_identity's errors name the credential and what failed, no secret.
                    Ok(Err(error)) => return Err(unavailable(format!("getting an Entra ID token: {error}"))),
                    Err(_) => return Err(unavailable("getting an Entra ID token: no answer")),
                };
                let expiry = SystemTime::from(token.expires_on);
                return Ok((token.token.secret().to_string().into(), JWT_TOKEN_TYPE, expiry));
            }
        };
        match &access.auth {
            SharedAccess::Key { .. } => {
                // The token says its expiry in whole seconds: that, not `now + lifetime`,
                // is when it runs out.
                let expiry_secs = unix_secs(SystemTime::now() + self.lifetime);
                let expiry = UNIX_EPOCH + Duration::from_secs(expiry_secs);
                Ok((access.token(audience, expiry_secs), SAS_TOKEN_TYPE, expiry))
            }
            SharedAccess::Signature(token) => {
                let expiry = signature_expiry(token.expose_secret())
                    .ok_or_else(|| unavailable("the connection string's SharedAccessSignature has no `se=` expiry"))?;
                if expiry <= SystemTime::now() {
                    return Err(unavailable("the connection string's SharedAccessSignature has expired"));
                }
                Ok((token.clone(), SAS_TOKEN_TYPE, expiry))
            }
        }
    }

    /// Puts again every token due for renewal; the earliest time one will next be due.
    async fn refresh(&self) -> Result<Option<SystemTime>, BusError> {
        let due: Vec<String> = self
            .authorized
            .lock()
            .iter()
            .filter(|(_, put)| renewal_due(**put))
            .map(|(audience, _)| audience.clone())
            .collect();
        for audience in due {
            self.put_token(&audience).await?;
        }
        Ok(self.authorized.lock().values().map(|put| renew_at(*put)).min())
    }
}

/// A token is renewed a fifth of its life before it expires (at least a second before).
fn renew_at(put: Put) -> SystemTime {
    put.expiry - (put.lifetime / 5).max(Duration::from_secs(1))
}

fn renewal_due(put: Put) -> bool {
    SystemTime::now() >= renew_at(put)
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The `se=` (expiry, Unix seconds) of a SAS token.
fn signature_expiry(token: &str) -> Option<SystemTime> {
    let fields = token.strip_prefix("SharedAccessSignature ").unwrap_or(token);
    let se = fields.split('&').find_map(|field| field.strip_prefix("se="))?;
    Some(UNIX_EPOCH + Duration::from_secs(se.parse().ok()?))
}

/// Keeps one session's sign-in and its reply session's lock until the session is lost:
/// tokens put again before they expire, the reply session renewed every
/// [`RENEW_SESSION_LOCK_EVERY`]. A failure loses the session (the supervisor connects
/// again), since links without a token or a session without its lock stop working.
pub(super) async fn maintain(inner: Arc<Inner>, session: Arc<Session>) {
    let Some(cbs) = session.cbs.as_ref() else { return };
    let mut management: Option<MgmtClient> = None;
    let mut next_session_renewal = tokio::time::Instant::now() + RENEW_SESSION_LOCK_EVERY;
    loop {
        let next_token = match cbs.refresh().await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "renewing a Service Bus token failed; connecting again");
                session.lost.cancel();
                return;
            }
        };
        let token_wait =
            next_token.and_then(|at| at.duration_since(SystemTime::now()).ok()).unwrap_or(RENEW_SESSION_LOCK_EVERY);
        let wake = (tokio::time::Instant::now() + token_wait).min(next_session_renewal);
        tokio::select! {
            _ = session.lost.cancelled() => return,
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() < next_session_renewal {
            continue;
        }
        next_session_renewal = tokio::time::Instant::now() + RENEW_SESSION_LOCK_EVERY;
        let Some(group) = session.reply_group.clone() else { continue };
        let renewed = renew_session_lock(&inner, &session, &mut management, &group).await;
        if let Err(error) = renewed {
            tracing::warn!(%error, "renewing the reply session's lock failed; connecting again");
            session.lost.cancel();
            return;
        }
    }
}

async fn renew_session_lock(
    inner: &Inner,
    session: &Session,
    management: &mut Option<MgmtClient>,
    group: &str,
) -> Result<(), BusError> {
    let entity = &inner.config.reply_queue;
    let client = match management {
        Some(client) => client,
        None => management.insert(session.management(entity).await?),
    };
    let request = Operation::new(RENEW_SESSION_LOCK_OPERATION, [(SESSION_ID, Value::String(group.to_string()))]);
    let renewing = client.call::<Operation, OperationResponse>(request);
    bounded("renew the reply session's lock", renewing).await.map(drop)
}

/// Renews the locks of `tokens` (lock tokens) on `entity`; the new expiries.
pub(super) async fn renew_locks(client: &mut MgmtClient, tokens: &[uuid::Uuid]) -> Result<Vec<SystemTime>, BusError> {
    let tokens = Array(tokens.iter().map(|token| Value::Uuid((*token).into())).collect());
    let request = Operation::new(RENEW_LOCK_OPERATION, [(LOCK_TOKENS, Value::Array(tokens))]);
    let response = bounded("renew message locks", client.call::<Operation, OperationResponse>(request)).await?;
    let expirations = match response.get(EXPIRATIONS) {
        Some(Value::Array(Array(values))) | Some(Value::List(values)) => values.clone(),
        _ => Vec::new(),
    };
    Ok(expirations
        .into_iter()
        .filter_map(|value| match value {
            Value::Timestamp(at) => Some(UNIX_EPOCH + Duration::from_millis(at.milliseconds().max(0) as u64)),
            _ => None,
        })
        .collect())
}

/// Up to `count` messages of `entity` from sequence number `from`, without locking or
/// removing them: each the encoded AMQP message. Empty when there are none (204).
pub(super) async fn peek(client: &mut MgmtClient, from: i64, count: i32) -> Result<Vec<Vec<u8>>, BusError> {
    let request = Operation::new(
        PEEK_MESSAGE_OPERATION,
        [(FROM_SEQUENCE_NUMBER, Value::Long(from)), (MESSAGE_COUNT, Value::Int(count))],
    );
    let response = match tokio::time::timeout(
        super::OPERATION_TIMEOUT,
        client.call::<Operation, OperationResponse>(request),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(MgmtError::Status(status))) if status.code.0.get() == 204 => return Ok(Vec::new()),
        Ok(Err(error)) => return Err(unavailable(format!("peek messages: {error}"))),
        Err(_) => return Err(unavailable("peek messages: no answer")),
    };
    let messages = match response.get("messages") {
        Some(Value::Array(Array(values))) | Some(Value::List(values)) => values.clone(),
        _ => Vec::new(),
    };
    Ok(messages
        .into_iter()
        .filter_map(|entry| match entry {
            Value::Map(map) => match map.get(&Value::String("message".into())) {
                Some(Value::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// Decodes a message `peek` returned.
pub(super) fn decode_message(bytes: &[u8]) -> Option<Message<Body<Value>>> {
    use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
    Body::<Value>::decode_message_from_reader(serde_amqp::read::SliceReader::new(bytes)).ok()
}

/// A `$management` request: its operation and a map body.
struct Operation {
    operation: &'static str,
    body: OrderedMap<Value, Value>,
}

impl Operation {
    fn new<const N: usize>(operation: &'static str, fields: [(&str, Value); N]) -> Operation {
        let body = fields.into_iter().map(|(key, value)| (Value::String(key.to_string()), value)).collect();
        Operation { operation, body }
    }
}

impl Request for Operation {
    /// Unused: `encode_application_properties` names the operation.
    const OPERATION: &'static str = "";
    type Response = OperationResponse;
    type Body = Value;

    fn encode_application_properties(&mut self) -> Option<fe2o3_amqp::types::messaging::ApplicationProperties> {
        Some(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert(fe2o3_amqp_management::constants::OPERATION, self.operation)
                .build(),
        )
    }

    fn encode_body(self) -> Value {
        Value::Map(self.body)
    }
}

/// A `$management` response's map body (status 200).
struct OperationResponse(OrderedMap<Value, Value>);

impl OperationResponse {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(&Value::String(key.to_string()))
    }
}

impl Response for OperationResponse {
    const STATUS_CODE: u16 = 200;
    type Body = Body<Value>;
    type Error = MgmtError;

    fn decode_message(message: Message<Body<Value>>) -> Result<Self, MgmtError> {
        match message.body {
            Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::Map(map))) => Ok(OperationResponse(map)),
            _ => Ok(OperationResponse(OrderedMap::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_keep_to_service_bus_characters() {
        let check = |model: &str, version: Option<&str>, expected: &str| {
            assert_eq!(entity_name("rfleet.model.", model, version), expected, "{model} {version:?}");
        };
        check("rf-reg", None, "rfleet.model.rf-reg");
        check("rf-reg", Some("2"), "rfleet.model.rf-reg/2");
        check("rf reg", Some("2024-01-31.b"), "rfleet.model.rf_reg/2024-01-31.b");
        check("m@x", None, "rfleet.model.m_x");
    }

    #[test]
    fn addresses_belong_to_their_entity() {
        assert_eq!(entity_of("rfleet.model.rf/2/$management"), "rfleet.model.rf/2");
        assert_eq!(entity_of("q/$DeadLetterQueue"), "q");
        assert_eq!(entity_of("rfleet.model.rf/2"), "rfleet.model.rf/2");
        assert_eq!(entity_of("$management"), "$management");
    }

    #[test]
    fn dead_letter_reasons_split_into_code_and_description() {
        assert_eq!(dead_letter_info("bad_request: no column x"), ("bad_request".into(), "no column x".into()));
        assert_eq!(dead_letter_info("expired"), ("expired".into(), "expired".into()));
        assert_eq!(dead_letter_info(&format!("x: {}", "y".repeat(5000))).1.len(), MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn signatures_say_when_they_expire_and_tokens_renew_before() {
        let token = "SharedAccessSignature sr=sb%3a%2f%2fns%2fq&sig=abc%3d&se=1700000000&skn=send";
        assert_eq!(signature_expiry(token), Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert_eq!(signature_expiry("SharedAccessSignature sr=x&sig=y"), None);
        let expiry = UNIX_EPOCH + Duration::from_secs(3600);
        let put = |lifetime| Put { expiry, lifetime: Duration::from_secs(lifetime) };
        assert_eq!(renew_at(put(3600)), UNIX_EPOCH + Duration::from_secs(2880));
        assert_eq!(renew_at(put(2)), UNIX_EPOCH + Duration::from_secs(3599));
    }
}
