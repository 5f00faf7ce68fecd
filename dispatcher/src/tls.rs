//! HTTPS for the HTTP front (`[tls]`): rustls on tokio, HTTP/1.1 and HTTP/2 chosen by ALPN,
//! and a certificate that is reloaded from its files while the server runs.
//!
//! - [`Tls::from_settings`] reads and checks the certificate and key once at start-up, so a
//!   bad pair stops the process before it announces its address.
//! - [`Tls::listener`] wraps the bound TCP listener in a [`TlsListener`]: the HTTP front's
//!   [`HttpListener`] with the TLS handshake ([`TlsHandshake`]) as the step before the
//!   client's first bytes. That listener hands axum only connections whose client has
//!   begun to send, and answers 503 those it still holds at shutdown, as it does for plain
//!   HTTP ([`crate::listener`]): a client that finished its handshake counts as connected.
//!   A connection whose handshake fails is closed: its client sees a failed handshake,
//!   never a taken request. Plain HTTP on this port is answered 400, saying why.
//! - The listener owns a task that re-reads both files every [`RELOAD_POLL`] and swaps in
//!   the new pair for the handshakes that follow; connections already open keep the
//!   certificate they were made with. A pair that does not load is logged and the current
//!   one stays.
//!
//! The crypto provider is ring's, named explicitly rather than taken from rustls's process
//! default, so no other crate's choice of provider can change what the server offers.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use settings::tls::TlsSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{error_body, status_for_code};
use crate::listener::{Handshake, HttpListener, Protocol};

/// How often the certificate and key files are re-read. Renewals (cert-manager, ACME) come
/// days before expiry, so seconds of delay cost nothing; reading two small files is cheap.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Offered in this order: HTTP/2 when the client speaks it, else HTTP/1.1.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS cannot be set up, or a new certificate pair not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file and tls.key_file go together: set both, or neither for plain HTTP")]
    Incomplete,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path} holds a certificate that cannot be parsed: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no usable PEM private key: {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not go with the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// Where the certificate and its key are read from.
#[derive(Debug, Clone)]
struct PairFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// The contents of both files at one read. Compared whole rather than by modification
/// time, which a copy or a Kubernetes secret update (a symlink swapped to a new directory)
/// need not change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PairContents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl PairFiles {
    async fn read(&self) -> Result<PairContents, TlsError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path).await.map_err(|source| TlsError::Read { path, source })
        };
        Ok(PairContents { cert: read(self.cert.clone()).await?, key: read(self.key.clone()).await? })
    }

    /// Parses a pair and checks that the key is the certificate's.
    fn load(&self, contents: &PairContents, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let invalid_certificate = |reason: String| TlsError::InvalidCertificate { path: self.cert.clone(), reason };
        let chain = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid_certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|e| TlsError::InvalidKey { path: self.key.clone(), reason: e.to_string() })?;
        // Matching the key to the certificate parses the certificate, so a PEM block with
        // something else inside fails here.
        CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone(), reason: e.to_string() }
            }
            rustls::Error::InvalidCertificate(_) => invalid_certificate(e.to_string()),
            // The provider could not load the key at all (an unsupported algorithm).
            _ => TlsError::InvalidKey { path: self.key.clone(), reason: e.to_string() },
        })
    }
}

/// The certificate every new handshake gets; replaced whole on reload.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// HTTPS set up from `[tls]`, ready to wrap the listener.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCertificate>,
    files: PairFiles,
    loaded: PairContents,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// `None` when `[tls]` is off; an error when it is half set or the pair does not load.
    pub async fn from_settings(settings: &TlsSettings) -> Result<Option<Tls>, TlsError> {
        let (cert, key) = match (&settings.cert_file, &settings.key_file) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => return Err(TlsError::Incomplete),
        };
        let files = PairFiles { cert, key };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = files.read().await?;
        let certified = files.load(&loaded, &provider)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        tracing::info!(cert_file = %files.cert.display(), key_file = %files.key.display(), "tls on");
        Ok(Some(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), current, files, loaded, provider }))
    }

    /// Serves TLS on `tcp`; the certificate is reloaded for as long as the listener lives
    /// (and the handshakes it holds at shutdown).
    pub fn listener(self, tcp: TcpListener) -> TlsListener {
        let reloading =
            tokio::spawn(reload_on_change(self.files, Arc::downgrade(&self.current), self.loaded, self.provider));
        HttpListener::new(
            tcp,
            TlsHandshake { acceptor: self.acceptor, _reloading: Arc::new(AbortOnDropHandle::new(reloading)) },
        )
    }
}

/// The HTTPS listener: connections come out with their TLS handshake done and the first
/// bytes of a request read, so a connection whose handshake finished before shutdown is
/// answered, never closed with an EOF ([`crate::listener`]).
pub type TlsListener = HttpListener<TlsHandshake>;

/// The TLS handshake of each connection, with the certificate current at its start; plain
/// HTTP on this port is answered 400.
#[derive(Clone)]
pub struct TlsHandshake {
    acceptor: TlsAcceptor,
    /// The certificate reloads, which stop once the listener and its handshakes are gone.
    _reloading: Arc<AbortOnDropHandle<()>>,
}

impl Handshake for TlsHandshake {
    type Stream = TlsStream<TcpStream>;

    async fn handshake(self, tcp: TcpStream, peer: SocketAddr) -> io::Result<Option<Self::Stream>> {
        // A TLS client opens with a handshake record (byte 0x16), an HTTP/1 client with the
        // first letter of its method.
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
            refuse_plain_http(tcp).await;
            tracing::debug!(%peer, "plain http on the https port refused");
            return Ok(None);
        }
        Ok(Some(self.acceptor.accept(tcp).await?))
    }

    /// ALPN's choice, which both sides already agreed on, whatever the first bytes.
    fn protocol(stream: &Self::Stream, _first: &[u8]) -> Option<Protocol> {
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        Some(if http2 { Protocol::Http2 } else { Protocol::Http1 })
    }
}

/// Answers a plain-HTTP request on the HTTPS port with a 400 that says why, in the usual
/// JSON error shape, rather than an empty reply that leaves the caller guessing. This is
/// below HTTP (no hyper here), so the response is written by hand.
async fn refuse_plain_http(mut stream: TcpStream) {
    let code = protocol::ErrorCode::BadRequest;
    let body = error_body("this port serves https only: use https://", Some(code)).to_string();
    let status = status_for_code(code);
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    );
    // Read the request head first: closing a socket with unread data makes the kernel send a
    // reset, which can reach the client before the response does and hide it.
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // A body may follow the head: drain a little of it, briefly, for the same reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut drained = 0;
        while drained < 1 << 20 {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Re-reads the pair every [`RELOAD_POLL`] and swaps it in when the contents changed and
/// load. A pair that does not load keeps the current certificate; it is warned about once
/// it has stayed the same for a poll, so the moment between writing the certificate and
/// writing its key (two files cannot change at once) is not reported as a problem.
async fn reload_on_change(
    files: PairFiles,
    current: Weak<CurrentCertificate>,
    mut loaded: PairContents,
    provider: Arc<CryptoProvider>,
) {
    // What failed to load last (`None`: a file could not be read) and whether it was warned of.
    let mut failing: Option<(Option<PairContents>, bool)> = None;
    let mut poll = tokio::time::interval(RELOAD_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let Some(current) = current.upgrade() else { return };
        let (seen, error) = match files.read().await {
            Ok(contents) if contents == loaded => {
                failing = None;
                continue;
            }
            Ok(contents) => match files.load(&contents, &provider) {
                Ok(certified) => {
                    *current.0.write() = Arc::new(certified);
                    loaded = contents;
                    failing = None;
                    tracing::info!(
                        cert_file = %files.cert.display(),
                        key_file = %files.key.display(),
                        "tls certificate reloaded"
                    );
                    continue;
                }
                Err(error) => (Some(contents), error),
            },
            // A missing file is usually a moment in a non-atomic replacement, too.
            Err(error) => (None, error),
        };
        failing = match failing.take() {
            Some((before, warned)) if before == seen => {
                if !warned {
                    tracing::warn!(%error, "tls certificate not reloaded; keeping the current one");
                }
                Some((before, true))
            }
            _ => Some((seen, false)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    /// A self-signed certificate for localhost and its key, as PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Loads `cert` and `key` (PEM text) as `[tls]` files and compares the outcome with
    /// `expected`: `Ok(())`, or a fragment of the error message.
    async fn check(cert: Option<&str>, key: Option<&str>, expected: Result<(), &str>) {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: Option<&str>| {
            text.map(|text| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).unwrap();
                path
            })
        };
        let settings = TlsSettings { cert_file: write("tls.crt", cert), key_file: write("tls.key", key) };
        match (Tls::from_settings(&settings).await, expected) {
            (Ok(Some(_)), Ok(())) => {}
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("cert {cert:?} key {key:?}: got {:?}, want {want:?}", got.map(|t| t.is_some())),
        }
    }

    /// How far a connection had got when the listener was dropped.
    #[derive(Debug, Clone, Copy)]
    enum HeldAt {
        /// Accepted, its handshake not begun.
        Handshake,
        /// Handshake finished, request not sent.
        FirstRequest,
    }

    /// Drops a listener that holds one connection, `held_at` that point, as axum does at
    /// shutdown, then sends a request on it over `alpn`: it must be answered the shutdown
    /// 503, and the answers must finish.
    async fn check_answered_at_shutdown(alpn: &[u8], held_at: HeldAt) {
        let case = format!("{} held at {held_at:?}", String::from_utf8_lossy(alpn));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let settings =
            TlsSettings { cert_file: Some(dir.path().join("tls.crt")), key_file: Some(dir.path().join("tls.key")) };
        std::fs::write(settings.cert_file.as_ref().unwrap(), &cert).unwrap();
        std::fs::write(settings.key_file.as_ref().unwrap(), &key).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener = Tls::from_settings(&settings).await.unwrap().unwrap().listener(tcp);
        let answers = listener.shutdown_answers();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

        // The listener hands nothing over before the client sends: `accept` never returns here.
        let tcp = TcpStream::connect(address).await.unwrap();
        let tls = match held_at {
            HeldAt::Handshake => {
                crate::listener::testing::held(&mut listener, &case).await;
                drop(listener);
                connector.connect(server_name, tcp).await.unwrap()
            }
            HeldAt::FirstRequest => {
                let tls = tokio::select! {
                    _ = listener.accept() => panic!("{case}: handed over before its request"),
                    tls = connector.connect(server_name, tcp) => tls.unwrap(),
                };
                drop(listener);
                tls
            }
        };
        crate::listener::testing::expect_shutdown_answer(tls, alpn == b"h2", answers, &case).await;
    }

    #[tokio::test]
    async fn connections_held_at_shutdown_are_answered_503() {
        for alpn in [b"h2".as_slice(), b"http/1.1"] {
            for held_at in [HeldAt::Handshake, HeldAt::FirstRequest] {
                check_answered_at_shutdown(alpn, held_at).await;
            }
        }
    }

    #[tokio::test]
    async fn pairs_that_load_and_pairs_that_do_not() {
        assert!(Tls::from_settings(&TlsSettings::default()).await.unwrap().is_none(), "off by default");
        let (cert, key) = pair();
        let (other_cert, other_key) = pair();
        check(Some(&cert), Some(&key), Ok(())).await;
        check(Some(&other_cert), Some(&other_key), Ok(())).await;
        check(Some(&cert), None, Err("go together")).await;
        check(None, Some(&key), Err("go together")).await;
        check(Some(&cert), Some(&other_key), Err("does not go with the certificate")).await;
        check(Some(&key), Some(&key), Err("holds no PEM certificate")).await;
        check(Some("not pem"), Some(&key), Err("holds no PEM certificate")).await;
        let not_a_certificate = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        check(Some(not_a_certificate), Some(&key), Err("holds a certificate that cannot be parsed")).await;
        check(Some(&cert), Some(&cert), Err("holds no usable PEM private key")).await;
        check(Some(&cert), Some(""), Err("holds no usable PEM private key")).await;
    }
}
