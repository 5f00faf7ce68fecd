//! The broker's TLS settings: the CA file read and checked before each connection uses it.

use std::path::{Path, PathBuf};

use lapin::tcp::OwnedTLSConfig;

use super::AmqpConfig;

/// Why the broker's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerTlsError {
    #[error("bus.ca_file is set but bus.url is not amqps://: the CA would never be used")]
    NotAmqps,
    #[error("cannot read the broker CA file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the broker CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the broker CA file {path} holds a certificate that cannot be a trust anchor: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
}

impl AmqpConfig {
    /// The TLS settings for a connection: the CA certificates of `ca_file`, read now and
    /// checked, because lapin would silently skip a certificate it cannot parse and then
    /// fail every handshake with a less helpful error.
    pub fn tls_config(&self) -> Result<OwnedTLSConfig, BrokerTlsError> {
        let Some(path) = &self.ca_file else {
            return Ok(OwnedTLSConfig::default());
        };
        // A CA file for a plain connection is a mistake (a URL left at amqp://), not a no-op.
        if !self.url.expose_secret().starts_with("amqps://") {
            return Err(BrokerTlsError::NotAmqps);
        }
        let pem =
            std::fs::read_to_string(path).map_err(|source| BrokerTlsError::Read { path: path.clone(), source })?;
        check_ca_certificates(path, &pem)?;
        Ok(OwnedTLSConfig { identity: None, cert_chain: Some(pem) })
    }
}

/// Fails unless `pem` holds at least one certificate and every certificate in it can be a
/// trust anchor, which is what lapin's rustls connector will try to make of each.
fn check_ca_certificates(path: &Path, pem: &str) -> Result<(), BrokerTlsError> {
    trust_anchors(path, pem).map(drop)
}

/// The certificates of the PEM text `pem` (read from `path`) as trust anchors, each checked.
fn trust_anchors(path: &Path, pem: &str) -> Result<rustls::RootCertStore, BrokerTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let invalid = |reason: String| BrokerTlsError::InvalidCertificate { path: path.to_path_buf(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|e| invalid(e.to_string()))?;
        roots.add(certificate).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(BrokerTlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(roots)
}

/// A rustls client configuration (ring) trusting the public web CAs built in
/// (webpki-roots) and, if given, the CA certificates of the PEM file `ca_file`, read now.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, BrokerTlsError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(path)
            .map_err(|source| BrokerTlsError::Read { path: path.to_path_buf(), source })?;
        roots.roots.extend(trust_anchors(path, &pem)?.roots);
    }
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA certificate made now, as PEM.
    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    /// Builds the TLS settings for `url` with `ca` (PEM text written to a file, or no file)
    /// and compares them with `expected`: the CA text lapin gets, or a fragment of the error.
    /// No broker here listens on TLS, so this stops where lapin takes over.
    fn check(url: &str, ca: Option<&str>, expected: Result<Option<&str>, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.map(|text| {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, text).unwrap();
            path
        });
        let settings = settings::BusSettings { url: url.into(), ca_file, ..settings::BusSettings::default() };
        let config = AmqpConfig::from_settings(&settings, "test", 1);
        match (config.tls_config(), expected) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got.cert_chain.as_deref(), want, "{url} with {ca:?}");
                assert!(got.identity.is_none());
            }
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("{url} with {ca:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn tls_config_from_a_ca_file() {
        let ca = ca_pem();
        let two_cas = format!("{ca}{}", ca_pem());
        let amqps = "amqps://rfleet:secret@broker.example:5671/%2f";
        check("amqp://guest:guest@127.0.0.1:5672/%2f", None, Ok(None));
        check(amqps, None, Ok(None));
        check(amqps, Some(&ca), Ok(Some(&ca)));
        check(amqps, Some(&two_cas), Ok(Some(&two_cas)));
        check("amqp://guest:guest@127.0.0.1:5672/%2f", Some(&ca), Err("not amqps://"));
        check(amqps, Some(""), Err("holds no PEM certificate"));
        check(
            amqps,
            Some("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"),
            Err("cannot be a trust anchor"),
        );
        let missing =
            settings::BusSettings { url: amqps.into(), ca_file: Some("/no/such/ca.pem".into()), ..Default::default() };
        let error = AmqpConfig::from_settings(&missing, "test", 1).tls_config().unwrap_err();
        assert!(error.to_string().contains("cannot read the broker CA file /no/such/ca.pem"), "{error}");
    }
}
