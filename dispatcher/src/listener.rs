//! The listener of the HTTP front, plain HTTP and HTTPS alike: an [`axum::serve::Listener`]
//! that hands a connection to axum only once its client has begun to send, and that answers
//! `503 unavailable` the connections it still holds when axum drops it at shutdown.
//!
//! Why wait for the first bytes: at graceful shutdown, axum's connection builder
//! (hyper-util's `auto`) closes without a word a connection on which it has not yet read the
//! bytes that tell HTTP/1.1 from HTTP/2. That is a client whose connection was accepted,
//! whose request is under way, and which gets an EOF: a request dropped at SIGTERM. Held
//! here until it sends, such a connection is answered 503 when the listener is dropped
//! instead; handed to axum once it has sent, its request is served in full, because the
//! first poll of axum's connection task reads the replayed bytes and so leaves that state.
//! That leaves the moment between axum's `accept` and that first poll: a shutdown signalled
//! to axum then lets the task's `select!` take the shutdown first and cancel that read. So
//! the shutdown reaches axum through [`HttpListener::graceful`], which first stops handing
//! connections over (they stay held, and are answered 503) and then waits until axum has
//! read from every connection it was handed, for at most [`FIRST_READ_TIMEOUT`]; only a
//! connection task not polled within it can still be closed unanswered.
//!
//! - [`HttpListener`] runs, per connection and in a task of its own so that a slow or
//!   silent client never holds up the next one, its [`Handshake`] (TLS: [`crate::tls`];
//!   plain TCP: [`Plain`], none) and then reads the client's first bytes, until they tell
//!   HTTP/1.1 from HTTP/2 as hyper-util's `auto` builder reads them (the HTTP/2 preface,
//!   `PRI * HTTP/2.0`, or not). All within [`HANDSHAKE_TIMEOUT`]. The protocol a held
//!   connection is answered in is ALPN's over TLS, the preface's over plain TCP.
//! - At shutdown axum stops accepting and drops the listener, which still holds the
//!   connections it has not handed over yet: those in their handshake and those whose
//!   client has not sent its request yet. None of them is closed unanswered: each is
//!   answered `503 unavailable` ("shutting down; retry") by hyper, HTTP/1.1 with
//!   `Connection: close` or HTTP/2 with a GOAWAY, within [`HANDSHAKE_TIMEOUT`] and
//!   [`SHUTDOWN_ANSWER_TIMEOUT`] ([`HttpListener::shutdown_answers`] awaits them). A
//!   connection whose handshake fails, or that closes before it sends, is closed: its
//!   client never sent a request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Version};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::error::{ApiError, RETRY_AFTER_SECONDS};

/// A client that has not finished its handshake and begun its first request by then is
/// dropped, so half-open and idle connections cannot pile up. Also how long a connection in
/// its handshake at shutdown may still take to get its 503.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection left in the listener at shutdown is served its 503s once its
/// client has begun to send: the request is on its way, so this is ample.
pub const SHUTDOWN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shutdown waits for axum to read from the connections it was handed before it
/// tells axum to shut down: a spawned task's first poll, normally microseconds away.
pub const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The message of the 503 that connections left in the listener at shutdown get.
pub const SHUTTING_DOWN_MESSAGE: &str = "the server is shutting down; retry";

/// How much of a request body a 503 at shutdown reads first: a socket closed with unread
/// data sends a reset, which can overtake the answer and hide it from the client.
const SHUTDOWN_BODY_LIMIT_BYTES: usize = 1 << 20;

/// The most read from a connection to learn that its client has begun its first request.
const FIRST_READ_BYTES: usize = 16 * 1024;

/// Connections in their handshake or awaiting their first bytes at once; beyond it the
/// listener stops accepting until one ends, which leaves further clients in the kernel's
/// backlog instead of in memory here.
const MAX_HANDSHAKES: usize = 1024;

/// What an HTTP/2 client sends first when it speaks HTTP/2 without TLS ("prior knowledge").
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// What turns an accepted TCP connection into one that HTTP is read from: TLS's handshake,
/// or nothing ([`Plain`]).
pub trait Handshake: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Makes the connection from `peer` ready for HTTP. `Ok(None)` when this has dealt with
    /// the connection itself (answered and closed it). Bounded by [`HANDSHAKE_TIMEOUT`]
    /// together with the read of the first bytes.
    fn handshake(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<Option<Self::Stream>>> + Send;

    /// The protocol of `stream`, whose client has sent `first` (never empty) so far; `None`
    /// while those bytes cannot tell yet.
    fn protocol(stream: &Self::Stream, first: &[u8]) -> Option<Protocol>;
}

/// Plain HTTP: no handshake; HTTP/2 when the client opens with the HTTP/2 preface, as
/// hyper-util's `auto` builder decides too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;

    async fn handshake(self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<Option<TcpStream>> {
        Ok(Some(tcp))
    }

    fn protocol(_stream: &TcpStream, first: &[u8]) -> Option<Protocol> {
        Plain::protocol_of(first)
    }
}

impl Plain {
    /// HTTP/2 once `first` holds the whole preface, HTTP/1.1 once it departs from it.
    fn protocol_of(first: &[u8]) -> Option<Protocol> {
        if first.starts_with(HTTP2_PREFACE) {
            Some(Protocol::Http2)
        } else if HTTP2_PREFACE.starts_with(first) {
            None
        } else {
            Some(Protocol::Http1)
        }
    }
}

/// A TCP listener whose connections come out with their handshake done and the first bytes
/// of a request read (see the module's documentation).
///
/// Dropping the listener (axum does on shutdown) hands every connection it still holds to
/// the shutdown answers.
pub struct HttpListener<H: Handshake> {
    tcp: TcpListener,
    handshake: H,
    held: JoinSet<Option<(Connection<H::Stream>, SocketAddr)>>,
    /// Connections ready for axum once the hand-over had stopped: held too.
    ready: Vec<(Connection<H::Stream>, SocketAddr)>,
    hand_over: HandOver,
    shutdown_answers: TaskTracker,
}

/// The hand-over of connections to axum, as [`HttpListener::graceful`] stops it.
#[derive(Clone, Default)]
struct HandOver {
    stopped: CancellationToken,
    /// A token per connection handed over that axum has not read from yet.
    unread: TaskTracker,
}

impl HttpListener<Plain> {
    /// Serves plain HTTP on `tcp`.
    pub fn plain(tcp: TcpListener) -> Self {
        HttpListener::new(tcp, Plain)
    }
}

impl<H: Handshake> HttpListener<H> {
    /// Serves HTTP on `tcp`, each connection made ready by `handshake`.
    pub fn new(tcp: TcpListener, handshake: H) -> Self {
        HttpListener {
            tcp,
            handshake,
            held: JoinSet::new(),
            ready: Vec::new(),
            hand_over: HandOver::default(),
            shutdown_answers: TaskTracker::new(),
        }
    }

    /// The shutdown signal to give axum for this listener: completes once `shutdown` has,
    /// the listener has stopped handing connections over, and axum has read from each one
    /// it was handed (or [`FIRST_READ_TIMEOUT`] has passed), so that none is still at the
    /// point where axum's graceful shutdown would close it unanswered.
    pub fn graceful<F>(&self, shutdown: F) -> impl Future<Output = ()> + Send + use<H, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let hand_over = self.hand_over.clone();
        async move {
            shutdown.await;
            hand_over.stopped.cancel();
            hand_over.unread.close();
            if tokio::time::timeout(FIRST_READ_TIMEOUT, hand_over.unread.wait()).await.is_err() {
                tracing::warn!(
                    connections = hand_over.unread.len(),
                    "shutting down before axum read from every connection it was handed"
                );
            }
        }
    }

    /// Awaits the answers the listener gives at shutdown; see [`ShutdownAnswers`].
    pub fn shutdown_answers(&self) -> ShutdownAnswers {
        ShutdownAnswers(self.shutdown_answers.clone())
    }
}

/// The 503s that an [`HttpListener`] answers, once dropped, to the connections it still held.
pub struct ShutdownAnswers(TaskTracker);

impl ShutdownAnswers {
    /// Completes once the listener has been dropped and every connection it held has had
    /// its answer (or its time: [`HANDSHAKE_TIMEOUT`] and [`SHUTDOWN_ANSWER_TIMEOUT`]). A
    /// process awaits this after the server stops and before it exits, within its drain.
    pub async fn finished(self) {
        self.0.wait().await
    }
}

impl<H: Handshake> Drop for HttpListener<H> {
    fn drop(&mut self) {
        let (held, ready) = (std::mem::take(&mut self.held), std::mem::take(&mut self.ready));
        let connections = held.len() + ready.len();
        // Outside a runtime nothing could answer them; dropping them aborts the handshakes.
        if let (true, Ok(runtime)) = (connections > 0, tokio::runtime::Handle::try_current()) {
            tracing::info!(connections, "answering the connections not yet served 503: shutting down");
            let tracker = self.shutdown_answers.clone();
            self.shutdown_answers.spawn_on(answer_held_at_shutdown(held, ready, tracker), &runtime);
        }
        self.shutdown_answers.close();
    }
}

impl<H: Handshake> axum::serve::Listener for HttpListener<H> {
    type Io = Connection<H::Stream>;
    type Addr = SocketAddr;

    // Cancel-safe, as axum needs when shutdown interrupts it: `accept`, `join_next` and
    // `cancelled` are, and what follows them does not await.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if self.hand_over.stopped.is_cancelled() {
                // Axum's shutdown follows; what comes in meanwhile stays held.
                return std::future::pending().await;
            }
            tokio::select! {
                accepted = self.tcp.accept(), if self.held.len() < MAX_HANDSHAKES => match accepted {
                    Ok((tcp, peer)) => {
                        self.held.spawn(first_bytes(self.handshake.clone(), tcp, peer));
                    }
                    Err(error) => accept_failed(error).await,
                },
                Some(done) = self.held.join_next() => {
                    if let Ok(Some((mut connection, peer))) = done {
                        // The token first, then the check: `graceful` either waits for this
                        // token or has stopped the hand-over before the check.
                        connection.first_read = Some(self.hand_over.unread.token());
                        if !self.hand_over.stopped.is_cancelled() {
                            return (connection, peer);
                        }
                        connection.first_read = None;
                        self.ready.push((connection, peer));
                    }
                }
                _ = self.hand_over.stopped.cancelled() => {}
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

/// A connection as axum gets it: the stream, its protocol, and the first bytes its client
/// sent, which the listener read (to know a request is coming) and which the first reads
/// replay.
pub struct Connection<S> {
    stream: S,
    protocol: Protocol,
    unread: Vec<u8>,
    /// Held from the hand-over to axum's first read ([`HttpListener::graceful`]).
    first_read: Option<TaskTrackerToken>,
}

impl<S> Connection<S> {
    /// The stream below, e.g. for what its TLS handshake agreed.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Axum reads: its connection task is past the point where a shutdown closes it.
        this.first_read = None;
        if this.unread.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The handshake of one connection and the first bytes of its first request, up to where
/// they tell HTTP/1.1 from HTTP/2, bounded by [`HANDSHAKE_TIMEOUT`]. Failures are logged at debug
/// level only: scanners, probes and clients that distrust the certificate cause them all
/// day, and the client sees its own error.
async fn first_bytes<H: Handshake>(
    handshake: H,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(Connection<H::Stream>, SocketAddr)> {
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let Some(mut stream) = handshake.handshake(tcp, peer).await? else { return Ok(None) };
        let mut unread = Vec::with_capacity(FIRST_READ_BYTES);
        loop {
            if stream.read_buf(&mut unread).await? == 0 {
                tracing::debug!(%peer, "connection closed before its first request");
                return Ok(None);
            }
            // Until hyper-util's `auto` builder, too, can tell from these bytes alone, so that
            // its first poll decides without waiting (see `HttpListener::graceful`).
            if let (Some(protocol), Some(_)) = (H::protocol(&stream, &unread), Plain::protocol_of(&unread)) {
                return Ok::<_, io::Error>(Some(Connection { stream, protocol, unread, first_read: None }));
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(connection)) => connection.map(|connection| (connection, peer)),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection failed before its first request");
            None
        }
        Err(_) => {
            tracing::debug!(
                %peer,
                timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                "connection timed out before its first request"
            );
            None
        }
    }
}

/// Answers, at shutdown, the connections the listener still held: as their handshakes (and
/// their clients' first bytes) come in, each gets [`answer_shutting_down`] in a task of its
/// own on `tracker`; one whose handshake fails is closed. All bounded by
/// [`HANDSHAKE_TIMEOUT`].
async fn answer_held_at_shutdown<S>(
    mut held: JoinSet<Option<(Connection<S>, SocketAddr)>>,
    ready: Vec<(Connection<S>, SocketAddr)>,
    tracker: TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for (connection, peer) in ready {
        tracker.spawn(answer_shutting_down(connection, peer));
    }
    while let Some(done) = held.join_next().await {
        if let Ok(Some((connection, peer))) = done {
            tracker.spawn(answer_shutting_down(connection, peer));
        }
    }
}

/// Serves one connection only 503s, for at most [`SHUTDOWN_ANSWER_TIMEOUT`]: HTTP/1.1
/// answers its request and closes (`Connection: close`); HTTP/2 sends GOAWAY at once, which
/// still admits the streams the client opened before it saw it, answers them and closes.
/// The protocol is the one the listener found before it held the connection, so nothing
/// here waits to find out.
async fn answer_shutting_down<S>(connection: Connection<S>, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = connection.protocol;
    let io = TokioIo::new(connection);
    let service = hyper::service::service_fn(shutting_down);
    let served = tokio::time::timeout(SHUTDOWN_ANSWER_TIMEOUT, async {
        match protocol {
            Protocol::Http2 => {
                let mut connection = pin!(http2::Builder::new(TokioExecutor::new()).serve_connection(io, service));
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            Protocol::Http1 => http1::Builder::new().keep_alive(false).serve_connection(io, service).await,
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

/// What the tests of this listener and of [`crate::tls`] check a held connection with.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use axum::serve::Listener;

    /// Waits until `listener` has accepted a connection from the kernel's backlog and holds
    /// it, failing if it hands one over meanwhile (its client has not sent enough for that).
    pub(crate) async fn held<H: Handshake>(listener: &mut HttpListener<H>, case: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while listener.held.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "{case}: not accepted within 10 s");
            // `accept` is cancel-safe: interrupting it keeps what it accepted in `held`.
            tokio::select! {
                _ = listener.accept() => panic!("{case}: handed over before its protocol was known"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    /// Sends a request on `io`, a connection the listener held when it was dropped, over
    /// HTTP/2 (`http2`) or HTTP/1.1: it must be answered the shutdown 503, and `answers`
    /// must finish. `case` names the check in failures.
    pub(crate) async fn expect_shutdown_answer<IO>(io: IO, http2: bool, answers: ShutdownAnswers, case: &str)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let request = Request::post("http://localhost/score").body(axum::body::Body::from("[]")).unwrap();
        let response = if http2 {
            let (mut send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            tokio::spawn(connection);
            send.send_request(request).await
        } else {
            let (mut send, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap_or_else(|e| panic!("{case}: {e}"));
            tokio::spawn(connection);
            send.send_request(request).await
        };
        let response = response.unwrap_or_else(|e| panic!("{case}: no answer: {e}"));
        assert_eq!(response.status(), 503, "{case}");
        assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECONDS, "{case}");
        let close = response.headers().get(header::CONNECTION).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(close.as_deref(), (!http2).then_some("close"), "{case}");
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"code": "unavailable", "message": SHUTTING_DOWN_MESSAGE}), "{case}");
        tokio::time::timeout(SHUTDOWN_ANSWER_TIMEOUT, answers.finished())
            .await
            .unwrap_or_else(|_| panic!("{case}: the shutdown answers did not finish"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::AsyncWriteExt;

    /// A plain listener on a free port of loopback, and its address.
    async fn plain() -> (HttpListener<Plain>, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        (HttpListener::plain(tcp), address)
    }

    /// Regression test for `faults::sigterm_finishes_in_flight_requests`, which failed with
    /// `IncompleteMessage` once over plain HTTP: axum closed, at shutdown, connections it
    /// had accepted before their client sent anything. A connection the listener has
    /// accepted, whose client has sent nothing or only part of the HTTP/2 preface, when the
    /// listener is dropped (as axum does at shutdown) must be answered the shutdown 503
    /// over the protocol its client then speaks.
    #[tokio::test]
    async fn plain_connections_held_at_shutdown_are_answered_503() {
        // (HTTP/2, bytes of the preface sent before the shutdown): an HTTP/1.1 request can
        // begin with its "P" only.
        for (http2, sent) in [(false, 0), (false, 1), (true, 0), (true, 3), (true, HTTP2_PREFACE.len() - 1)] {
            let case = format!("http2 {http2}, {sent} bytes of the preface sent before the shutdown");
            let (mut listener, address) = plain().await;
            let answers = listener.shutdown_answers();
            let mut tcp = TcpStream::connect(address).await.unwrap();
            tcp.write_all(&HTTP2_PREFACE[..sent]).await.unwrap();
            testing::held(&mut listener, &case).await;
            drop(listener);
            let io = Resent { tcp, skip: sent };
            testing::expect_shutdown_answer(io, http2, answers, &case).await;
        }
    }

    #[tokio::test]
    async fn plain_connections_are_handed_over_with_their_protocol_and_bytes() {
        let (mut listener, address) = plain().await;
        let request = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n".as_slice();
        for (first, protocol) in [(request, Protocol::Http1), (HTTP2_PREFACE, Protocol::Http2)] {
            let case = format!("{protocol:?}");
            let mut tcp = TcpStream::connect(address).await.unwrap();
            // All but the last byte: the preface is not whole yet, so the listener holds on.
            tcp.write_all(&first[..first.len() - 1]).await.unwrap();
            if protocol == Protocol::Http2 {
                testing::held(&mut listener, &case).await;
            }
            tcp.write_all(&first[first.len() - 1..]).await.unwrap();
            let (mut connection, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .unwrap_or_else(|_| panic!("{case}: not handed over"));
            assert_eq!(connection.protocol, protocol, "{case}");
            let mut replayed = vec![0u8; first.len()];
            connection.read_exact(&mut replayed).await.unwrap();
            assert_eq!(replayed, first, "{case}: the first bytes are replayed to axum");
        }
    }

    /// The rest of the race behind `faults::sigterm_finishes_in_flight_requests`: a
    /// connection handed to axum whose task has not run yet. The shutdown must not reach
    /// axum before axum has read from it.
    #[tokio::test]
    async fn graceful_waits_until_axum_has_read_what_it_was_handed() {
        let (mut listener, address) = plain().await;
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
        let (mut handed, _) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.expect("handed over");
        let mut graceful = pin!(listener.graceful(async {}));
        assert!(futures::poll!(graceful.as_mut()).is_pending(), "shut down before axum read what it was handed");
        handed.read_exact(&mut [0u8; 1]).await.unwrap();
        assert!(futures::poll!(graceful.as_mut()).is_ready(), "still waiting once axum has read");
        drop(listener);
    }

    #[test]
    fn plain_protocol_from_the_first_bytes() {
        for n in 1..HTTP2_PREFACE.len() {
            assert_eq!(Plain::protocol_of(&HTTP2_PREFACE[..n]), None, "{n} bytes of the preface");
        }
        assert_eq!(Plain::protocol_of(HTTP2_PREFACE), Some(Protocol::Http2));
        assert_eq!(Plain::protocol_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Some(Protocol::Http2));
        for first in [b"P".as_slice(), b"POST /score HTTP/1.1\r\n", b"PUT", b"GET / HTTP/1.0\r\n", b"\x16\x03\x01"] {
            let expected = if first == b"P" { None } else { Some(Protocol::Http1) };
            assert_eq!(Plain::protocol_of(first), expected, "{:?}", String::from_utf8_lossy(first));
        }
    }

    /// A client's TCP stream whose first `skip` bytes written were sent already (before the
    /// shutdown): the client's own HTTP/2 preface, written again by hyper, is not repeated.
    struct Resent {
        tcp: TcpStream,
        skip: usize,
    }

    impl AsyncRead for Resent {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Resent {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.skip > 0 {
                let n = this.skip.min(buf.len());
                this.skip -= n;
                return Poll::Ready(Ok(n));
            }
            Pin::new(&mut this.tcp).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
        }
    }
}
