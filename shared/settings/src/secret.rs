//! Secret settings: values whose `Debug`, `Display` and `Serialize` never show them.
//!
//! A field that holds a secret is typed [`Secret`] (a key, a SAS key: shown as `***`) or
//! [`SecretUrl`] (a URL with credentials: shown with its password as `***`, so `rfleet
//! config` and logs still say which broker and user). Making a new setting secret is one
//! type annotation (`bus.servicebus.connection_string: Option<Secret>`, which carries a SAS
//! key: `rfleet config` prints `connection_string = "***"`). The value is read only through
//! `expose_secret()`, at the point of use (connecting, hashing), so every place that sees
//! it is found with one `git grep`. Both keep the value in a [`secrecy::SecretString`],
//! zeroed when dropped.
//!
//! Deserializing takes the plain string from a file, the environment or a flag, exactly as
//! a `String` field would. `rfleet config` output read back holds `***` where the secrets
//! were; `is_redacted()` lets the point of use say so, rather than fail as a wrong password.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret, or a URL's password, is shown as.
pub const REDACTED: &str = "***";

/// A secret string, shown only as [`REDACTED`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret itself: only where it is used, never to print.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether this is the redacted form itself, as `rfleet config` printed it.
    pub fn is_redacted(&self) -> bool {
        self.expose_secret() == REDACTED
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value.into())
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.into())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(REDACTED, f)
    }
}

/// In constant time, so that comparing settings can never become a timing oracle for a
/// key (authentication itself compares digests, in `dispatcher/src/auth.rs`).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq::constant_time_eq(self.expose_secret().as_bytes(), other.expose_secret().as_bytes())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::from)
    }
}

/// A URL that may carry a password (`amqp://user:password@host:port/vhost`), shown as
/// `amqp://user:***@host:port/vhost`.
#[derive(Clone)]
pub struct SecretUrl {
    url: SecretString,
    /// Worked out once: it is what every `Debug`, `Display` and `Serialize` shows.
    redacted: String,
}

impl SecretUrl {
    /// The URL with its password: only to connect with, never to print.
    pub fn expose_secret(&self) -> &str {
        self.url.expose_secret()
    }

    /// Whether the password is the redacted form itself, as `rfleet config` printed it.
    pub fn is_redacted(&self) -> bool {
        user_info(self.expose_secret()).and_then(|(_, _, password)| password) == Some(REDACTED)
    }
}

/// The URL's user info: the byte range it spans and the password in it, if any.
///
/// The user info runs from after `scheme://` (or the start, for a URL without one, e.g.
/// `guest:secret@host`) to the *last* `@`: a password written with a raw `@` or `/` in
/// it, which parsers disagree about, is then still hidden whole. Where an `@` stands
/// only in the path or query, this hides more than needed, never less.
fn user_info(url: &str) -> Option<(usize, usize, Option<&str>)> {
    let start = url.find("://").map_or(0, |scheme| scheme + 3);
    let end = url.rfind('@').filter(|&at| at >= start)?;
    let password = url[start..end].split_once(':').map(|(_, password)| password);
    Some((start, end, password))
}

/// `url` with its password replaced by [`REDACTED`]; a URL without a password (no user
/// info, or a user name alone) is shown as it is.
fn redact_url(url: &str) -> String {
    match user_info(url) {
        Some((start, end, Some(password))) => {
            let user = &url[start..end - password.len() - 1];
            format!("{}{user}:{REDACTED}{}", &url[..start], &url[end..])
        }
        _ => url.to_string(),
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        let redacted = redact_url(&url);
        SecretUrl { url: url.into(), redacted }
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl::from(url.to_string())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq::constant_time_eq(self.expose_secret().as_bytes(), other.expose_secret().as_bytes())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `url` is shown as exactly `redacted` by every rendering, and used as itself.
    fn check(url: &str, redacted: &str) {
        assert_eq!(redact_url(url), redacted, "{url}");
        let secret = SecretUrl::from(url);
        assert_eq!(secret.expose_secret(), url);
        assert_eq!(secret.to_string(), redacted);
        assert_eq!(format!("{secret:?}"), format!("{redacted:?}"));
        assert_eq!(toml::Value::try_from(&secret).unwrap(), toml::Value::String(redacted.into()));
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        check("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp://guest:***@127.0.0.1:5672/%2f");
        check("amqps://rfleet:s3cr%40t@broker.example/prod", "amqps://rfleet:***@broker.example/prod");
        check("amqp://user:@host", "amqp://user:***@host");
        // Raw `@`, `:` and `/` in a password (not valid, but typed): hidden whole.
        check("amqp://user:p@ss:w/rd@host:5672/v", "amqp://user:***@host:5672/v");
        // No scheme: lapin would repeat the whole string in its parse error.
        check("guest:hunter2@host:5672", "guest:***@host:5672");
        // Nothing secret to hide.
        check("amqp://127.0.0.1:5672/%2f", "amqp://127.0.0.1:5672/%2f");
        check("amqp://user@host/v", "amqp://user@host/v");
        check("", "");
    }

    #[test]
    fn keys_are_shown_as_redacted() {
        let key = Secret::from("p-0123456789abcdef");
        assert_eq!(key.expose_secret(), "p-0123456789abcdef");
        assert_eq!((key.to_string(), format!("{key:?}")), ("***".to_string(), "\"***\"".to_string()));
        assert_eq!(toml::Value::try_from(&key).unwrap(), toml::Value::String("***".into()));
        assert_eq!(format!("{:?}", Some(key.clone())), "Some(\"***\")");
        assert!(key == Secret::from("p-0123456789abcdef") && key != Secret::from("p-0123456789abcdeF"));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        key: Secret,
        url: SecretUrl,
    }

    #[test]
    fn read_as_given_and_read_back_as_redacted() {
        let given: Both = toml::from_str("key = \"k\"\nurl = \"amqp://u:p@h\"\n").unwrap();
        assert_eq!((given.key.expose_secret(), given.url.expose_secret()), ("k", "amqp://u:p@h"));
        assert!(!given.key.is_redacted() && !given.url.is_redacted());
        let printed = toml::to_string(&given).unwrap();
        assert_eq!(printed, "key = \"***\"\nurl = \"amqp://u:***@h\"\n");
        let read_back: Both = toml::from_str(&printed).unwrap();
        assert!(read_back.key.is_redacted() && read_back.url.is_redacted());
        assert_ne!(read_back, given);
    }
}
