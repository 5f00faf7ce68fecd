//! SAS token verification: what Service Bus checks in a CBS `put-token` request.
//!
//! A token is `SharedAccessSignature sr=URI&sig=SIG&se=EXPIRY&skn=NAME` (fields in any
//! order), `SIG` the base64 of HMAC-SHA256, keyed with the key's text as given, over
//! `URI + "\n" + EXPIRY` where `URI` is the field as sent (still percent-encoded). This is
//! the algorithm Microsoft documents ("Service Bus access control with Shared Access
//! Signatures"); the stand-in refuses a wrong key name, a wrong signature and an expired
//! token, each with its own error, and grants the audience the token's `sr` covers.

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

/// Why a token is refused (CBS status 401 for all of them, as Service Bus answers).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the token is not `SharedAccessSignature sr=…&sig=…&se=…&skn=…`")]
    Malformed,
    #[error("the token names key `{0}`, which is not configured")]
    UnknownKeyName(String),
    #[error("the token's signature does not match the configured key")]
    BadSignature,
    #[error("the token expired at {expiry_unix_secs} (now {now_unix_secs})")]
    Expired { expiry_unix_secs: u64, now_unix_secs: u64 },
}

/// A verified token: the resource it grants (percent-decoded) and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub resource_uri: String,
    pub expiry_unix_secs: u64,
}

/// Verifies `token` against the policy `key_name` with `key` at `now_unix_secs`.
pub fn verify(token: &str, key_name: &str, key: &str, now_unix_secs: u64) -> Result<Grant, SasError> {
    let fields = token.strip_prefix("SharedAccessSignature ").ok_or(SasError::Malformed)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for field in fields.split('&') {
        let (name, value) = field.split_once('=').ok_or(SasError::Malformed)?;
        match name {
            "sr" => sr = Some(value),
            "sig" => sig = Some(value),
            "se" => se = Some(value),
            "skn" => skn = Some(value),
            _ => {}
        }
    }
    let (sr, sig, se, skn) = match (sr, sig, se, skn) {
        (Some(sr), Some(sig), Some(se), Some(skn)) => (sr, sig, se, skn),
        _ => return Err(SasError::Malformed),
    };
    let decode = |text: &str| percent_decode_str(&text.replace('+', " ")).decode_utf8().map(|s| s.into_owned());
    let skn = decode(skn).map_err(|_| SasError::Malformed)?;
    if skn != key_name {
        return Err(SasError::UnknownKeyName(skn));
    }
    let sig = decode(sig).map_err(|_| SasError::Malformed)?;
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).map_err(|_| SasError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{sr}\n{se}").as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).map_err(|_| SasError::BadSignature)?;
    let expiry_unix_secs: u64 = se.parse().map_err(|_| SasError::Malformed)?;
    if expiry_unix_secs <= now_unix_secs {
        return Err(SasError::Expired { expiry_unix_secs, now_unix_secs });
    }
    Ok(Grant { resource_uri: decode(sr).map_err(|_| SasError::Malformed)?, expiry_unix_secs })
}

/// Signs a token for `resource_uri` (as a client does; the checks sign their own tokens):
/// `sr` is the URI percent-encoded, `sig` the HMAC-SHA256 of `sr + "\n" + expiry`.
pub fn sign(resource_uri: &str, key_name: &str, key: &str, expiry_unix_secs: u64) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let sr = utf8_percent_encode(resource_uri, NON_ALPHANUMERIC).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{sr}\n{expiry_unix_secs}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sig = utf8_percent_encode(&sig, NON_ALPHANUMERIC);
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry_unix_secs}&skn={key_name}")
}

/// Whether a grant for `resource_uri` covers `entity` (`QUEUE` or `QUEUE/$DeadLetterQueue`)
/// on `host`: a token for the namespace covers every entity, one for a queue that queue
/// and its sub-queues. Schemes (`sb://`, `amqp://`, `https://`) are not compared.
pub fn covers(resource_uri: &str, entity: &str) -> bool {
    let path = resource_uri.split_once("://").map_or(resource_uri, |(_, rest)| rest);
    let path = path.split_once('/').map_or("", |(_, path)| path).trim_end_matches('/');
    path.is_empty() || entity == path || entity.starts_with(&format!("{path}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's documented vector (the Python sample of "Service Bus access control with
    /// Shared Access Signatures", run on these inputs; the same vector as
    /// `bus::amqp1::credentials`' signer test).
    const TOKEN: &str = "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2Forders\
        &sig=FkxW9ixgfq6he5NC5NG4R61Z38HVOnspq6o1L7Oll3I%3D&se=1767225600&skn=RootManageSharedAccessKey";
    const KEY: &str = "dGhpcyBpcyBub3QgYSByZWFsIGtleQ==";

    fn check(token: &str, key_name: &str, key: &str, now: u64, expected: Result<Grant, SasError>) {
        assert_eq!(verify(token, key_name, key, now), expected, "{token}");
    }

    #[test]
    fn tokens_are_verified_as_service_bus_does() {
        let grant = Grant {
            resource_uri: "https://contoso.servicebus.windows.net/orders".into(),
            expiry_unix_secs: 1767225600,
        };
        check(TOKEN, "RootManageSharedAccessKey", KEY, 1767225599, Ok(grant));
        check(TOKEN, "RootManageSharedAccessKey", "d3Jvbmcga2V5", 0, Err(SasError::BadSignature));
        check(TOKEN, "send", KEY, 0, Err(SasError::UnknownKeyName("RootManageSharedAccessKey".into())));
        check(
            TOKEN,
            "RootManageSharedAccessKey",
            KEY,
            1767225600,
            Err(SasError::Expired { expiry_unix_secs: 1767225600, now_unix_secs: 1767225600 }),
        );
        let moved = TOKEN.replace("se=1767225600", "se=1767225601");
        check(&moved, "RootManageSharedAccessKey", KEY, 0, Err(SasError::BadSignature));
        check("Bearer abc", "k", KEY, 0, Err(SasError::Malformed));
    }

    #[test]
    fn signed_tokens_verify() {
        let token = sign("sb://127.0.0.1:5672/orders", "send", KEY, 100);
        let grant = Grant { resource_uri: "sb://127.0.0.1:5672/orders".into(), expiry_unix_secs: 100 };
        check(&token, "send", KEY, 99, Ok(grant));
    }

    #[test]
    fn grants_cover_their_entity_and_its_sub_queues() {
        let ns = "sb://127.0.0.1/";
        let queue = "sb://127.0.0.1:5672/orders";
        for (uri, entity, expected) in [
            (ns, "orders", true),
            (queue, "orders", true),
            (queue, "orders/$DeadLetterQueue", true),
            (queue, "orders2", false),
            (queue, "invoices", false),
        ] {
            assert_eq!(covers(uri, entity), expected, "{uri} covers {entity}");
        }
    }
}
