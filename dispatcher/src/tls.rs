//! HTTPS for the HTTP front (`[tls]`): rustls on tokio, HTTP/1.1 and HTTP/2 chosen by ALPN,
//! and a certificate that is reloaded from its files while the server runs.
//!
//! - [`Tls::from_settings`] reads and checks the certificate and key once at start-up, so a
//!   bad pair stops the process before it announces its address.
//! - [`Tls::listener`] wraps the bound TCP listener in a [`TlsListener`], an
//!   [`axum::serve::Listener`] that yields connections whose handshake has finished and
//!   whose client has begun to send. Axum's own connection handling and graceful shutdown
//!   (stop accepting, let in-flight requests finish) therefore work as they do over plain
//!   TCP.
//! - At shutdown axum stops accepting and drops the listener, which still holds the
//!   connections it has not handed over yet: those in their handshake and those whose
//!   client has not sent its request yet. A client that finished its handshake counts as
//!   connected, so none of them is closed unanswered: each is answered `503 unavailable`
//!   ("shutting down; retry") by hyper, HTTP/1.1 with `Connection: close` or HTTP/2 with a
//!   GOAWAY, within [`HANDSHAKE_TIMEOUT`] and [`SHUTDOWN_ANSWER_TIMEOUT`]
//!   ([`TlsListener::shutdown_answers`] awaits them). A connection whose handshake fails is
//!   closed: its client sees a failed handshake, never a taken request.
//! - The listener owns a task that re-reads both files every [`RELOAD_POLL`] and swaps in
//!   the new pair for the handshakes that follow; connections already open keep the
//!   certificate they were made with. A pair that does not load is logged and the current
//!   one stays.
//!
//! The crypto provider is ring's, named explicitly rather than taken from rustls's process
//! default, so no other crate's choice of provider can change what the server offers.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Version};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use settings::tls::TlsSettings;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::error::{error_body, status_for_code, ApiError, RETRY_AFTER_SECONDS};

/// How often the certificate and key files are re-read. Renewals (cert-manager, ACME) come
/// days before expiry, so seconds of delay cost nothing; reading two small files is cheap.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// A client that has not finished its handshake and begun its first request by then is
/// dropped, so half-open and idle connections cannot pile up. Also how long a connection in
/// its handshake at shutdown may still take to get its 503.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection left in the listener at shutdown is served its 503s once its
/// client has begun to send: the request is on its way, so this is ample.
pub const SHUTDOWN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The message of the 503 that connections left in the listener at shutdown get.
pub const SHUTTING_DOWN_MESSAGE: &str = "the server is shutting down; retry";

/// How much of a request body a 503 at shutdown reads first: a socket closed with unread
/// data sends a reset, which can overtake the answer and hide it from the client.
const SHUTDOWN_BODY_LIMIT_BYTES: usize = 1 << 20;

/// The most read from a connection to learn that its client has begun its first request.
const FIRST_READ_BYTES: usize = 16 * 1024;

/// Handshakes in progress at once; beyond it the listener stops accepting until one ends,
/// which leaves further clients in the kernel's backlog instead of in memory here.
const MAX_HANDSHAKES: usize = 1024;

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

    /// Serves TLS on `tcp`; the certificate is reloaded for as long as the listener lives.
    pub fn listener(self, tcp: TcpListener) -> TlsListener {
        let reloading =
            tokio::spawn(reload_on_change(self.files, Arc::downgrade(&self.current), self.loaded, self.provider));
        TlsListener {
            tcp,
            acceptor: self.acceptor,
            handshakes: JoinSet::new(),
            shutdown_answers: TaskTracker::new(),
            _reloading: AbortOnDropHandle::new(reloading),
        }
    }
}

/// A TCP listener whose connections come out with their TLS handshake done and the first
/// bytes of a request read. Handshakes run in tasks of their own, so a slow or silent client
/// never holds up the next one.
///
/// Why wait for the first bytes: at graceful shutdown, axum's connection builder
/// (hyper-util's `auto`) closes without a word a connection on which it has not yet read
/// the bytes that tell HTTP/1.1 from HTTP/2. Over TLS that is a client whose handshake
/// finished, whose request is under way, and which gets an EOF: a request dropped. Held here
/// until it sends, such a connection is answered 503 when the listener is dropped instead;
/// handed to axum once it has sent, its request is served in full (only the moment between
/// axum's `accept` and its connection task's first poll remains, which axum alone can close).
///
/// Dropping the listener (axum does on shutdown) stops the reloads and hands every
/// connection it still holds to the shutdown answers.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsConnection, SocketAddr)>>,
    shutdown_answers: TaskTracker,
    _reloading: AbortOnDropHandle<()>,
}

/// The 503s that a [`TlsListener`] answers, once dropped, to the connections it still held.
pub struct ShutdownAnswers(TaskTracker);

impl ShutdownAnswers {
    /// Completes once the listener has been dropped and every connection it held has had
    /// its answer (or its time: [`HANDSHAKE_TIMEOUT`] and [`SHUTDOWN_ANSWER_TIMEOUT`]). A
    /// process awaits this after the server stops and before it exits, within its drain.
    pub async fn finished(self) {
        self.0.wait().await
    }
}

impl TlsListener {
    /// Awaits the answers the listener gives at shutdown; see [`ShutdownAnswers`].
    pub fn shutdown_answers(&self) -> ShutdownAnswers {
        ShutdownAnswers(self.shutdown_answers.clone())
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.handshakes);
        // Outside a runtime nothing could answer them; dropping them aborts the handshakes.
        if let (false, Ok(runtime)) = (held.is_empty(), tokio::runtime::Handle::try_current()) {
            tracing::info!(connections = held.len(), "answering the connections not yet served 503: shutting down");
            let tracker = self.shutdown_answers.clone();
            self.shutdown_answers.spawn_on(answer_held_at_shutdown(held, tracker), &runtime);
        }
        self.shutdown_answers.close();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    // Cancel-safe, as axum needs when shutdown interrupts it: `accept` and `join_next` are.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((stream, peer)) => {
                        self.handshakes.spawn(handshake(self.acceptor.clone(), stream, peer));
                    }
                    Err(error) => accept_failed(error).await,
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum's TCP listener does: a connection that went away before it was accepted is
/// nobody's problem; anything else (out of file descriptors) is logged and waited out.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A TLS connection as axum gets it: the stream, and the first bytes its client sent,
/// which the listener read (to know a request is coming) and which the first reads replay.
pub struct TlsConnection {
    tls: TlsStream<TcpStream>,
    unread: Vec<u8>,
}

impl TlsConnection {
    /// Whether ALPN chose HTTP/2 (else the client speaks HTTP/1.1).
    fn is_http2(&self) -> bool {
        self.tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice())
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_empty() {
            return Pin::new(&mut this.tls).poll_read(cx, buf);
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.drain(..n);
        if this.unread.is_empty() {
            // Frees the first read's buffer, sized for a request head, for the connection's life.
            this.unread = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// The TLS handshake of one connection and the first bytes of its first request, bounded by
/// [`HANDSHAKE_TIMEOUT`]. Failures are logged at debug level only: scanners and clients that
/// distrust the certificate cause them all day, and the client sees its own error.
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) -> Option<(TlsConnection, SocketAddr)> {
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        // A TLS client opens with a handshake record (byte 0x16), an HTTP/1 client with the
        // first letter of its method.
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
            refuse_plain_http(stream).await;
            tracing::debug!(%peer, "plain http on the https port refused");
            return Ok(None);
        }
        let mut tls = acceptor.accept(stream).await?;
        let mut unread = vec![0u8; FIRST_READ_BYTES];
        let n = tls.read(&mut unread).await?;
        if n == 0 {
            tracing::debug!(%peer, "tls connection closed before its first request");
            return Ok(None);
        }
        unread.truncate(n);
        Ok::<_, io::Error>(Some(TlsConnection { tls, unread }))
    })
    .await;
    match outcome {
        Ok(Ok(Some(connection))) => Some((connection, peer)),
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64, "tls handshake timed out");
            None
        }
    }
}

/// Answers, at shutdown, the connections the listener still held: as their handshakes (and
/// their clients' first bytes) come in, each gets [`answer_shutting_down`] in a task of its
/// own on `tracker`; a handshake that fails is closed. All bounded by [`HANDSHAKE_TIMEOUT`].
async fn answer_held_at_shutdown(mut held: JoinSet<Option<(TlsConnection, SocketAddr)>>, tracker: TaskTracker) {
    while let Some(done) = held.join_next().await {
        if let Ok(Some((connection, peer))) = done {
            tracker.spawn(answer_shutting_down(connection, peer));
        }
    }
}

/// Serves one connection only 503s, for at most [`SHUTDOWN_ANSWER_TIMEOUT`]: HTTP/1.1
/// answers its request and closes (`Connection: close`); HTTP/2 sends GOAWAY at once, which
/// still admits the streams the client opened before it saw it, answers them and closes. The
/// protocol is ALPN's choice, which both sides already agreed on, rather than guessed from
/// the first bytes (hyper-util's `auto` builder), so nothing here waits to find out.
async fn answer_shutting_down(connection: TlsConnection, peer: SocketAddr) {
    let http2 = connection.is_http2();
    let io = TokioIo::new(connection);
    let service = hyper::service::service_fn(shutting_down);
    let served = tokio::time::timeout(SHUTDOWN_ANSWER_TIMEOUT, async {
        if http2 {
            let mut connection = pin!(http2::Builder::new(TokioExecutor::new()).serve_connection(io, service));
            connection.as_mut().graceful_shutdown();
            connection.await
        } else {
            http1::Builder::new().keep_alive(false).serve_connection(io, service).await
        }
    })
    .await;
    match served {
        Ok(Ok(())) => tracing::debug!(%peer, "connection answered 503 at shutdown"),
        Ok(Err(error)) => tracing::debug!(%peer, %error, "connection closed while answered 503 at shutdown"),
        Err(_) => tracing::debug!(
            %peer,
            timeout_ms = SHUTDOWN_ANSWER_TIMEOUT.as_millis() as u64,
            "connection answered 503 at shutdown timed out"
        ),
    }
}

/// The answer to every request on a connection served at shutdown: 503 `unavailable`, in
/// the one error mapping (`crate::error`), with when to retry.
async fn shutting_down(request: Request<Incoming>) -> Result<Response, Infallible> {
    let http1 = request.version() < Version::HTTP_2;
    // A body not read whole is fine: what is read is what stops a reset from hiding the answer.
    let _ = axum::body::to_bytes(axum::body::Body::new(request.into_body()), SHUTDOWN_BODY_LIMIT_BYTES).await;
    let mut response = ApiError::coded(protocol::ErrorCode::Unavailable, SHUTTING_DOWN_MESSAGE).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    // HTTP/2 has no `Connection` header (its GOAWAY says it); HTTP/1.1 must not reuse this one.
    if http1 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
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
                let _ = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
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
        let request = Request::post("https://localhost/score").body(axum::body::Body::from("[]")).unwrap();
        let response = if alpn == b"h2" {
            let (mut send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            tokio::spawn(connection);
            send.send_request(request).await
        } else {
            let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            tokio::spawn(connection);
            send.send_request(request).await
        };
        let response = response.unwrap_or_else(|e| panic!("{case}: no answer: {e}"));
        assert_eq!(response.status(), 503, "{case}");
        assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECONDS, "{case}");
        let close = response.headers().get(header::CONNECTION).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(close.as_deref(), (alpn != b"h2").then_some("close"), "{case}");
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"code": "unavailable", "message": SHUTTING_DOWN_MESSAGE}), "{case}");
        tokio::time::timeout(SHUTDOWN_ANSWER_TIMEOUT, answers.finished())
            .await
            .unwrap_or_else(|_| panic!("{case}: the shutdown answers did not finish"));
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
