//! Service Bus credentials: connection strings, and the SAS tokens signed from their keys.
//!
//! A connection string is what the Azure portal shows under "Shared access policies":
//! `Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=NAME;SharedAccessKey=KEY`,
//! optionally with `EntityPath=QUEUE` (a policy scoped to one queue),
//! `SharedAccessSignature=…` (a token signed elsewhere, used as given) or
//! `UseDevelopmentEmulator=true` (Microsoft's local emulator: plain AMQP, no TLS). Keys are
//! matched without regard to case, as Microsoft's SDKs do; a value may itself hold `=`
//! (base64 padding). Nothing here puts a key or a signature into an error or a `Debug`.
//!
//! A SAS token is `SharedAccessSignature sr=URI&sig=SIG&se=EXPIRY&skn=NAME`, where `URI` is
//! the resource URI percent-encoded, `EXPIRY` seconds since the Unix epoch and `SIG` the
//! base64 of HMAC-SHA256, keyed with the key's text as given (not base64-decoded), over
//! `URI + "\n" + EXPIRY` ("Service Bus access control with Shared Access Signatures").

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// What Python's `urllib.parse.quote_plus` leaves as it is (Microsoft's samples and SDKs
/// encode with it): letters, digits and `_.-~`.
const QUOTE_PLUS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-').remove(b'~');

/// A parsed connection string. Its `Debug` shows the endpoint and key name only.
#[derive(Clone)]
pub struct ConnectionString {
    /// The namespace's host, `NS.servicebus.windows.net` (or `127.0.0.1` for an emulator).
    pub host: String,
    /// The port the endpoint names, if any (an emulator on a port of its own).
    pub port: Option<u16>,
    pub auth: SharedAccess,
    /// `EntityPath`: the one queue a policy scoped to it may use.
    pub entity_path: Option<String>,
    /// `UseDevelopmentEmulator=true`: plain AMQP on 5672 (or the endpoint's port), no TLS.
    pub development_emulator: bool,
}

/// How a connection string proves who it is.
#[derive(Clone)]
pub enum SharedAccess {
    /// A policy's name and key: tokens are signed here, for each audience, as they expire.
    Key { name: String, key: SecretString },
    /// A token signed elsewhere, sent as it is until it expires.
    Signature(SecretString),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("the Service Bus connection string has no `Endpoint=sb://…` part")]
    NoEndpoint,
    #[error("the Service Bus connection string's Endpoint `{0}` is not sb://HOST[:PORT][/]")]
    BadEndpoint(String),
    #[error(
        "the Service Bus connection string has neither SharedAccessKeyName with SharedAccessKey nor SharedAccessSignature"
    )]
    NoCredential,
    /// Shown by its length only: a part without `=` may be a key pasted on its own.
    #[error("a part of the Service Bus connection string ({0} characters) is not KEY=VALUE")]
    NotKeyValue(usize),
    #[error("the Service Bus connection string has `{0}` twice")]
    Repeated(String),
    #[error("the Service Bus connection string's UseDevelopmentEmulator is `{0}`, not true or false")]
    BadEmulatorFlag(String),
}

impl ConnectionString {
    /// Parses `text`. Errors name the part that is wrong, never a key's value.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut parts: Vec<(String, &str)> = Vec::new();
        for part in text.split(';').map(str::trim).filter(|part| !part.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(ConnectionStringError::NotKeyValue(part.chars().count()));
            };
            let key = key.trim().to_ascii_lowercase();
            if parts.iter().any(|(seen, _)| *seen == key) {
                return Err(ConnectionStringError::Repeated(key));
            }
            parts.push((key, value.trim()));
        }
        let get = |name: &str| parts.iter().find(|(key, _)| key == name).map(|(_, value)| *value);
        let endpoint = get("endpoint").ok_or(ConnectionStringError::NoEndpoint)?;
        let (host, port) = parse_endpoint(endpoint)?;
        let auth = match (get("sharedaccesskeyname"), get("sharedaccesskey"), get("sharedaccesssignature")) {
            (_, _, Some(signature)) if !signature.is_empty() => SharedAccess::Signature(signature.to_string().into()),
            (Some(name), Some(key), _) if !name.is_empty() && !key.is_empty() => {
                SharedAccess::Key { name: name.to_string(), key: key.to_string().into() }
            }
            _ => return Err(ConnectionStringError::NoCredential),
        };
        let development_emulator = match get("usedevelopmentemulator") {
            None => false,
            Some(flag) if flag.eq_ignore_ascii_case("true") => true,
            Some(flag) if flag.eq_ignore_ascii_case("false") => false,
            Some(flag) => return Err(ConnectionStringError::BadEmulatorFlag(flag.to_string())),
        };
        Ok(ConnectionString {
            host,
            port,
            auth,
            entity_path: get("entitypath").filter(|path| !path.is_empty()).map(str::to_string),
            development_emulator,
        })
    }

    /// A token for `audience` (a resource URI, `sb://HOST/QUEUE`) valid until
    /// `expiry_unix_secs`: signed here from the key, or the connection string's own token.
    pub fn token(&self, audience: &str, expiry_unix_secs: u64) -> SecretString {
        match &self.auth {
            SharedAccess::Key { name, key } => sas_token(audience, name, key.expose_secret(), expiry_unix_secs).into(),
            SharedAccess::Signature(token) => token.clone(),
        }
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_name = match &self.auth {
            SharedAccess::Key { name, .. } => name.as_str(),
            SharedAccess::Signature(_) => "(a shared access signature)",
        };
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("key_name", &key_name)
            .field("entity_path", &self.entity_path)
            .field("development_emulator", &self.development_emulator)
            .finish()
    }
}

/// `sb://HOST[:PORT][/]` into the host and port.
fn parse_endpoint(endpoint: &str) -> Result<(String, Option<u16>), ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(endpoint.to_string());
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("sb") {
        return Err(bad());
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?))),
        Some(_) => Err(bad()),
        None => Ok((authority.to_string(), None)),
    }
}

/// The SAS token for `resource_uri` signed with `key` of the policy `key_name`, valid
/// until `expiry_unix_secs`; see the module docs.
pub fn sas_token(resource_uri: &str, key_name: &str, key: &str, expiry_unix_secs: u64) -> String {
    let encoded_uri = quote_plus(resource_uri);
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{encoded_uri}\n{expiry_unix_secs}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={encoded_uri}&sig={}&se={expiry_unix_secs}&skn={}",
        quote_plus(&signature),
        quote_plus(key_name)
    )
}

fn quote_plus(text: &str) -> String {
    utf8_percent_encode(text, QUOTE_PLUS).to_string().replace("%20", "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token's `sig`, percent-decoded (encoders differ on `/`, which servers decode).
    fn signature(token: &str) -> String {
        let sig = token.split('&').find_map(|field| field.strip_prefix("sig=")).expect("a sig field");
        percent_encoding::percent_decode_str(sig).decode_utf8().unwrap().into_owned()
    }

    /// Vectors from Microsoft's documented Python sample ("Service Bus access control with
    /// Shared Access Signatures", `get_auth_token`), run on these inputs; it encodes the
    /// signature with `quote`, which leaves `/`, where the SDKs use `quote_plus`.
    #[test]
    fn sas_tokens_match_microsofts_documented_algorithm() {
        let token = sas_token(
            "https://contoso.servicebus.windows.net/orders",
            "RootManageSharedAccessKey",
            "dGhpcyBpcyBub3QgYSByZWFsIGtleQ==",
            1767225600,
        );
        assert_eq!(
            token,
            "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2Forders\
             &sig=FkxW9ixgfq6he5NC5NG4R61Z38HVOnspq6o1L7Oll3I%3D&se=1767225600&skn=RootManageSharedAccessKey"
        );
        let token = sas_token(
            "https://contoso.servicebus.windows.net/rfleet.model.iris@v2",
            "send",
            "c2Vjb25kIGtleSAvKz0=",
            4102444800,
        );
        assert!(
            token.starts_with(
                "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2Frfleet.model.iris%40v2&sig="
            ),
            "{token}"
        );
        assert!(token.ends_with("&se=4102444800&skn=send"), "{token}");
        assert_eq!(signature(&token), "NUJC0g16SGXxt/VhtfBAMAYwTgLJwWog3zVZNlXQ95k=");
    }

    const PORTAL: &str = "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=dGhpcyBpcyBub3QgYSByZWFsIGtleQ==";

    #[test]
    fn connection_strings_parse_as_the_portal_shows_them() {
        let parsed = ConnectionString::parse(PORTAL).unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("contoso.servicebus.windows.net", None));
        assert!(!parsed.development_emulator && parsed.entity_path.is_none());
        assert_eq!(
            parsed.token("https://contoso.servicebus.windows.net/orders", 1767225600).expose_secret(),
            "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2Forders\
             &sig=FkxW9ixgfq6he5NC5NG4R61Z38HVOnspq6o1L7Oll3I%3D&se=1767225600&skn=RootManageSharedAccessKey"
        );

        // Keys in any case and order, a trailing `;`, an entity path, an emulator on a port.
        let parsed = ConnectionString::parse(
            "sharedaccesskey=a2V5;ENDPOINT=sb://127.0.0.1:5673;SharedAccessKeyName=x;EntityPath=q;UseDevelopmentEmulator=True;",
        )
        .unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("127.0.0.1", Some(5673)));
        assert!(parsed.development_emulator);
        assert_eq!(parsed.entity_path.as_deref(), Some("q"));

        // A token signed elsewhere is used as given.
        let parsed = ConnectionString::parse(
            "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=a&sig=b&se=1&skn=c",
        )
        .unwrap();
        assert_eq!(parsed.token("ignored", 0).expose_secret(), "SharedAccessSignature sr=a&sig=b&se=1&skn=c");
    }

    #[test]
    fn bad_connection_strings_say_what_is_wrong_without_the_key() {
        let error = |text: &str| ConnectionString::parse(text).unwrap_err().to_string();
        assert!(error("SharedAccessKeyName=x;SharedAccessKey=s3cret").contains("no `Endpoint=sb://…`"));
        assert!(error("Endpoint=https://contoso.servicebus.windows.net/;SharedAccessKeyName=x;SharedAccessKey=s3cret")
            .contains("is not sb://HOST[:PORT][/]"));
        assert!(error("Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=x").contains("neither"));
        assert!(error("Endpoint=sb://h/;SharedAccessKeyName=x;SharedAccessKey=s3cret;UseDevelopmentEmulator=yes")
            .contains("UseDevelopmentEmulator is `yes`"));
        assert!(error("Endpoint=sb://h/;SharedAccessKey=a;sharedaccesskey=b").contains("`sharedaccesskey` twice"));
        for text in [
            "Endpoint=sb://h/;SharedAccessKeyName=x;s3cret",
            "Endpoint=sb://h:port/;SharedAccessKeyName=x;SharedAccessKey=s3cret",
        ] {
            assert!(!error(text).contains("s3cret"), "{}", error(text));
        }
        let parsed = ConnectionString::parse(PORTAL).unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("RootManageSharedAccessKey") && !shown.contains("dGhpcyBp"), "{shown}");
    }
}
