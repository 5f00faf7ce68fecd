//! TLS on loopback for the Service Bus dialect's tests (a module of `conformance.rs` only):
//! a TLS proxy in front of the stand-in, and a stand-in for Entra ID's token endpoint, HTTPS on loopback with a certificate made at test
//! time (its CA is the bus's `ca_file`), answering `POST /{tenant}/oauth2/v2.0/token` as
//! Entra ID answers a workload identity's client-assertion grant, with access tokens the
//! Service Bus stand-in verifies (HS256 with a key the two share; Entra's are RS256).
//!
//! What is real: Microsoft's `azure_identity` (`WorkloadIdentityCredential`), its request,
//! rfleet's reqwest client and TLS to the endpoint. What stands in: Entra ID.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The audience of a Service Bus token.
pub const SERVICE_BUS_AUDIENCE: &str = "https://servicebus.azure.net";

pub struct TokenEndpoint {
    /// `https://127.0.0.1:PORT`: the authority host.
    pub url: String,
    /// The CA that signed the endpoint's certificate, as a PEM file.
    pub ca_file: tempfile::NamedTempFile,
    /// Each grant's form, as received.
    pub grants: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl TokenEndpoint {
    /// Issues tokens signed with `key`, lasting `lifetime_secs`, to whoever presents
    /// `assertion` (the federated token); refuses anyone else as Entra ID does (400).
    pub async fn start(assertion: &str, key: &[u8], lifetime_secs: u64) -> TokenEndpoint {
        let (ca_file, acceptor) = loopback_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let grants = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (assertion, key, seen, stopped) = (assertion.to_string(), key.to_vec(), grants.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(accepted) => accepted, Err(_) => continue },
                };
                let (acceptor, assertion, key, seen) = (acceptor.clone(), assertion.clone(), key.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(stream).await else { return };
                    let Some(form) = read_form(&mut stream).await else { return };
                    seen.lock().push(form.clone());
                    let (status, body) = answer(&form, &assertion, &key, lifetime_secs);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TokenEndpoint { url, ca_file, grants, stop }
    }
}

/// A CA made now (as a PEM file) and a TLS acceptor with a certificate it signed for
/// `127.0.0.1`.
pub fn loopback_tls() -> (tempfile::NamedTempFile, tokio_rustls::TlsAcceptor) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server = server_params.signed_by(&server_key, &ca).unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(ca.pem().as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// TLS on loopback in front of `upstream` (the Service Bus stand-in speaks plain AMQP):
/// each connection's TLS is ended here and its bytes copied both ways. Its address, and
/// the CA file that trusts it.
pub async fn tls_proxy(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, tempfile::NamedTempFile) {
    let (ca_file, acceptor) = loopback_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca_file)
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The body of one HTTP request (headers up to the blank line, then `content-length`).
async fn read_form(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            })?;
            if body.len() >= length {
                return Some(body[..length].to_string());
            }
        }
    }
}

/// Entra ID's answer to a client-assertion grant `form`.
fn answer(form: &str, assertion: &str, key: &[u8], lifetime_secs: u64) -> (&'static str, String) {
    let field = |name: &str| {
        form.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).unwrap_or_default().to_string()
    };
    let wanted = field("grant_type") == "client_credentials"
        && field("client_assertion_type") == "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        && field("scope") == "https%3A%2F%2Fservicebus.azure.net%2F.default";
    if !wanted || field("client_assertion") != assertion {
        let error = r#"{"error":"invalid_client","error_description":"AADSTS700211: the assertion is not valid"}"#;
        return ("400 Bad Request", error.to_string());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "aud": SERVICE_BUS_AUDIENCE,
        "iss": "https://sts.windows.net/tenant/",
        "sub": field("client_id"),
        "iat": now,
        "exp": now + lifetime_secs,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap();
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime_secs,
        "ext_expires_in": lifetime_secs,
        "access_token": token,
    });
    ("200 OK", body.to_string())
}
