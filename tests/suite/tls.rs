//! TLS with a real `rfleet serve`, with certificate authorities made here by rcgen:
//! - HTTPS (`[tls]`): scoring over HTTP/2 and HTTP/1.1 with clients that trust only the test
//!   CA, plain HTTP refused, curl, the certificate replaced while the server runs, and the
//!   SIGTERM drain over TLS (a connection that finished its handshake before the signal is
//!   answered, never closed with an EOF);
//! - the broker over `amqps://` with `bus.ca_file`, through a TLS-terminating proxy in front
//!   of the local RabbitMQ (which has no TLS listener of its own).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Version;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use support::{assert_same, case, fixtures, Authority, Fleet, ServerOptions};

/// Writes a file as cert-manager and careful scripts do: whole, then renamed into place.
fn replace(path: &Path, text: &str) {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// A client that trusts `ca_pem` and nothing else, with no pooled connections, so that every
/// request makes a new TLS handshake and sees the certificate served now.
fn trusting(ca_pem: &str, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// POSTs the case's rows to `/score` and checks R's predictions came back over `version`.
async fn check_scores(client: &reqwest::Client, url: &str, rows: &str, expected: &Value, version: Version) {
    let response = client
        .post(format!("{url}/score"))
        .header("content-type", "application/json")
        .body(rows.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}/score over {version:?}: {e:?}"));
    assert_eq!(response.version(), version, "protocol chosen by ALPN");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_same(&answer, expected, &format!("scores over https ({version:?})"));
}

/// An HTTPS connection to `port` over HTTP/1.1 whose TLS handshake has finished, on which
/// nothing has been sent yet.
async fn handshaken(ca_pem: &str, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls handshake")
}

/// Regression test for the TLS drain dropping connections: the listener held connections
/// whose handshake had finished until axum accepted them, and axum, at SIGTERM, dropped the
/// listener with them (or closed those on which nothing had arrived yet), so their clients
/// got `peer closed connection without sending TLS close_notify` for a request they sent.
/// Waits until the listener has closed, then sends one request on `tls`, whose handshake
/// finished before the signal, and returns its answer, which must end with the server's
/// TLS close_notify, never an EOF.
async fn send_after_the_listener_closed(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    port: u16,
    rows: &str,
) -> support::Answer {
    support::wait_until_closed(port).await;
    support::score_on(tls, rows, "a request sent after SIGTERM on a connection made before it").await
}

/// Whether a new connection from a client trusting only `ca_pem` gets an answer.
async fn trusted_by(ca_pem: &str, url: &str) -> bool {
    trusting(ca_pem, false).get(format!("{url}/ready")).send().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_reloads_its_certificate_and_drains() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    let rows = Value::Array(rf.rows.clone()).to_string();
    let expected = Value::Array(rf.expected.clone());
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = Authority::new("first");
    replace(&cert_file, &first.cert_pem);
    replace(&key_file, &first.key_pem);

    // rf_reg answers `/score`; `faulty` is there for the drain's held request.
    let hold = support::Hold::new();
    let server = ServerOptions::new(fixtures.join("models"))
        .hosts(1)
        .env("RFLEET_MODELS__DEFAULT", "rf_reg")
        .env("SCORE_HOLD_FILE", hold.path().display())
        .env("RFLEET_TLS__CERT_FILE", cert_file.display())
        .env("RFLEET_TLS__KEY_FILE", key_file.display())
        .start();
    let url = server.url.clone();
    let port = url.strip_prefix("https://127.0.0.1:").unwrap_or_else(|| panic!("not an https address: {url}"));
    let port_number: u16 = port.parse().unwrap();

    // HTTPS, with HTTP/2 when the client offers it (ALPN) and HTTP/1.1 when it does not.
    check_scores(&trusting(&first.ca_pem, false), &url, &rows, &expected, Version::HTTP_2).await;
    check_scores(&trusting(&first.ca_pem, true), &url, &rows, &expected, Version::HTTP_11).await;

    // Plain HTTP on the HTTPS port scores nothing; it is told why.
    let plain = support::post(&support::client(), &url.replacen("https://", "http://", 1), rows.clone(), &[]).await;
    assert_eq!(plain.status, 400, "{}", plain.text);
    assert_eq!(plain.json(), json!({"code": "bad_request", "message": "this port serves https only: use https://"}));

    // curl, by name, trusting the CA; and refusing the server without it.
    let ca_file = first.write_ca(dir.path(), "first-ca.pem");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "-X", "POST", &format!("https://localhost:{port}/score")])
            .args(["-H", "Content-Type: application/json", "-d", &rows])
            .args(extra)
            .output()
            .expect("run curl")
    };
    let output = curl(&["--cacert", ca_file.to_str().unwrap()]);
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_same(&serde_json::from_slice(&output.stdout).expect("curl got JSON"), &expected, "curl over https");
    let output = curl(&[]);
    // 60: curl could not verify the server's certificate against its own CAs.
    assert_eq!(output.status.code(), Some(60), "curl trusted a test CA: {}", String::from_utf8_lossy(&output.stderr));

    // A broken pair (a certificate with another's key) is not taken: the current one stays.
    let second = Authority::new("second");
    replace(&cert_file, &second.cert_pem);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(trusted_by(&first.ca_pem, &url).await, "a broken pair replaced the working one");
    assert!(!trusted_by(&second.ca_pem, &url).await, "a certificate without its key was served");

    // The pair completed: within seconds, new connections get the new certificate, without
    // a restart, and the old CA no longer vouches for the server.
    replace(&key_file, &second.key_pem);
    let start = Instant::now();
    while !trusted_by(&second.ca_pem, &url).await {
        assert!(start.elapsed() < Duration::from_secs(10), "the new certificate was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!trusted_by(&first.ca_pem, &url).await, "the old certificate is still served");
    check_scores(&trusting(&second.ca_pem, false), &url, &rows, &expected, Version::HTTP_2).await;

    // SIGTERM while clients (HTTP/2 and HTTP/1.1) keep sending: every request the server took
    // is answered in full (scores, or the 503 of a connection the listener still held), then
    // it exits cleanly. One more client finishes its handshake before the signal and sends
    // its request only once the listener has closed: it gets the 503, never an EOF.
    let drain = Arc::new(support::Drain::default());
    let mut clients = Vec::new();
    for http1_only in [false, true] {
        let (client, url, rows, expected, drain) =
            (trusting(&second.ca_pem, http1_only), url.clone(), rows.clone(), expected.clone(), drain.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..200 {
                // Refused once the listener has closed; every request taken is answered.
                let request = client.post(format!("{url}/score")).header("content-type", "application/json");
                let Some(answer) = drain.send(request.body(rows.clone())).await else { break };
                if support::answered_in_full(&answer, &expected, "answer during shutdown") {
                    break;
                }
            }
        }));
    }
    let (sent_late_tx, sent_late) = tokio::sync::oneshot::channel();
    let held = {
        let (client, url) = (trusting(&second.ca_pem, false), format!("{url}/models/faulty/score"));
        let (ca_pem, rows) = (second.ca_pem.clone(), rows.clone());
        move || {
            tokio::spawn(async move {
                // Handshake first: the signal follows the held request, which follows this.
                let tls = handshaken(&ca_pem, port_number).await;
                let late = tokio::spawn(async move { send_after_the_listener_closed(tls, port_number, &rows).await });
                let _ = sent_late_tx.send(late);
                let body = json!([{ "x": support::Hold::X }]).to_string();
                support::post(&client, &url, body, &[]).await
            })
        }
    };
    support::terminate_under_load(server, drain, clients, 10, &hold, held).await;
    let late = sent_late.await.expect("the late client started").await.expect("the late client");
    support::answered_in_full(&late, &expected, "a request sent after SIGTERM on a connection made before it");
}

/// A TLS-terminating proxy on loopback in front of the local RabbitMQ, serving `authority`'s
/// certificate: to rfleet it is a broker that speaks amqps. Counts finished handshakes, so
/// the test knows the traffic went through it.
async fn amqps_proxy(authority: &Authority, handshakes: Arc<AtomicUsize>) -> u16 {
    let chain = CertificateDer::pem_slice_iter(authority.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(authority.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let broker = support::BROKER_URL.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, broker, handshakes) = (acceptor.clone(), broker.clone(), handshakes.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                handshakes.fetch_add(1, Ordering::Relaxed);
                let Ok(mut plain) = tokio::net::TcpStream::connect(&broker).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_broker_with_a_private_ca() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("broker");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let port = amqps_proxy(&authority, handshakes.clone()).await;

    let fleet = Fleet::new("tls");
    let mut options = ServerOptions::new(fixtures.join("models/rf_reg")).hosts(1);
    options.env.extend(fleet.env());
    // Later entries win: the fleet's names, this broker address.
    let server = options
        .env("RFLEET_BUS__URL", format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
        .env("RFLEET_BUS__CA_FILE", authority.write_ca(dir.path(), "broker-ca.pem").display())
        .start();
    let rows = Value::Array(rf.rows.clone()).to_string();
    let answer = support::post(&support::client(), &format!("{}/score", server.url), rows, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_same(&answer.json(), &Value::Array(rf.expected.clone()), "scored over a broker reached by amqps");
    assert!(handshakes.load(Ordering::Relaxed) >= 1, "rfleet did not go through the TLS proxy");
}
