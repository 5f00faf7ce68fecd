//! `[tls]`: HTTPS on the dispatcher's `server.listen`, from a PEM certificate and key that
//! are reloaded when they change.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// HTTPS for the HTTP front; off while both files are unset. With them set, `server.listen`
/// serves HTTPS only (HTTP/1.1 and HTTP/2, chosen by ALPN): there is no plain-HTTP port
/// beside it, so a probe must speak HTTPS too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The certificate chain, PEM: the server's certificate first, then any intermediates.
    /// Re-read when it changes (a renewed certificate, a rotated Kubernetes secret).
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1), unencrypted: the process
    /// must read it unattended. Re-read with the certificate.
    pub key_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether HTTPS is asked for: either file set (only one set is an error at start-up,
    /// reported by the dispatcher, rather than a silent fall-back to plain HTTP).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Settings, Sources};

    fn check(env: &[(&str, &str)], expected: Result<TlsSettings, &str>) {
        let sources =
            Sources { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Sources::default() };
        match (Settings::load(&sources), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.tls, want),
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn tls_from_the_environment() {
        check(&[], Ok(TlsSettings::default()));
        assert!(!TlsSettings::default().enabled());
        let on =
            TlsSettings { cert_file: Some("/etc/rfleet/tls.crt".into()), key_file: Some("/etc/rfleet/tls.key".into()) };
        assert!(on.enabled());
        let env = [("RFLEET_TLS__CERT_FILE", "/etc/rfleet/tls.crt"), ("RFLEET_TLS__KEY_FILE", "/etc/rfleet/tls.key")];
        check(&env, Ok(on));
        // Half set parses; the dispatcher refuses it at start-up (tested there).
        let half = TlsSettings { cert_file: Some("/etc/rfleet/tls.crt".into()), key_file: None };
        assert!(half.enabled());
        check(&env[..1], Ok(half));
        check(&[("RFLEET_TLS__CERT", "x")], Err("unknown field `cert`"));
    }
}
