//! Authentication against a real `rfleet serve`: keys from a file that is rotated while the
//! server runs, tokens from `POST /token`, OIDC access tokens checked against the JWKS of an
//! issuer served here, open probes, and curl with a bearer key.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::{assert_same, case, client, fixtures, run_client, target_dir, Answer, ServerOptions};

const PRIMARY: &str = "primary-0123456789abcdef";
const SECONDARY: &str = "secondary-0123456789abcdef";
const NEW_KEY: &str = "rotated-in-0123456789abcdef";
const AUDIENCE: &str = "api://rfleet-test";
const TOKEN_TTL_S: u64 = 3;

/// Requests to one server, each checked for its status; every 401 looks the same.
struct Target {
    client: reqwest::Client,
    url: String,
    rows: String,
}

impl Target {
    /// Sends `request` ("METHOD /path", then words for the failure message) with `headers`
    /// and asserts the status. A 401 must carry the bearer challenge and the one message,
    /// whatever was wrong.
    async fn check(&self, headers: &[(&str, &str)], request: &str, expected: u16) -> Answer {
        let mut words = request.splitn(3, ' ');
        let (method, path) = (words.next().unwrap(), words.next().expect("METHOD /path"));
        let url = format!("{}{path}", self.url);
        let mut builder = match method {
            "GET" => self.client.get(&url),
            "POST" => self.client.post(&url).header("content-type", "application/json").body(self.rows.clone()),
            _ => panic!("method {method}"),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = builder.send().await.unwrap_or_else(|e| panic!("{request}: {e}"));
        let answer = Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        };
        assert_eq!(answer.status, expected, "{request} with {headers:?}: {}", answer.text);
        if expected == 401 {
            let challenge =
                answer.header("www-authenticate").unwrap_or_else(|| panic!("{request}: no WWW-Authenticate"));
            let sent_credentials = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
            let want = if sent_credentials {
                r#"Bearer realm="rfleet", error="invalid_token""#
            } else {
                r#"Bearer realm="rfleet""#
            };
            assert_eq!(challenge, want, "{request} with {headers:?}");
            assert_eq!(answer.json(), json!({"message": "authentication required"}), "{request} with {headers:?}");
        }
        answer
    }

    /// Polls until `request` answers `expected` (a change the server picks up by itself).
    async fn eventually(&self, headers: &[(&str, &str)], request: &str, expected: u16, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut builder = self.client.get(format!("{}{}", self.url, request.trim_start_matches("GET ")));
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if builder.send().await.unwrap().status().as_u16() == expected {
                return;
            }
            assert!(start.elapsed() < limit, "{request} did not answer {expected} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn bearer(credential: &str) -> String {
    format!("Bearer {credential}")
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Writes the keys file as Kubernetes and careful scripts do: whole, then renamed into place.
fn write_keys(path: &Path, primary: &str, secondary: &str) {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, format!("primary = \"{primary}\"\nsecondary = \"{secondary}\"\n")).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// An RSA key made by openssl now: its PEM (to sign) and its JWK (to publish).
fn rsa_key(dir: &Path, kid: &str) -> (EncodingKey, Value) {
    let pem = dir.join(format!("{kid}.pem"));
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&pem)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl genrsa failed");
    let output =
        Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().expect("run openssl");
    let modulus = String::from_utf8(output.stdout).unwrap();
    let modulus = hex::decode(modulus.trim().strip_prefix("Modulus=").expect("openssl prints Modulus=")).unwrap();
    let jwk = json!({
        "kty": "RSA", "use": "sig", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(modulus),
        // 65537, openssl's public exponent.
        "e": "AQAB",
    });
    (EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(), jwk)
}

/// A minimal OpenID Connect issuer on loopback: discovery and a JWKS that the test can
/// change, as an issuer rotating its signing keys does.
async fn start_issuer(jwks: Arc<Mutex<Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/keys") });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || std::future::ready(axum::Json(discovery.clone()))),
        )
        .route("/keys", axum::routing::get(move || std::future::ready(axum::Json(jwks.lock().clone()))));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    issuer
}

fn oidc_token(key: &EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_keys_tokens_oidc_and_rotation() {
    let fixtures = fixtures();
    let rf = case(&fixtures, "rf_reg");
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    write_keys(&keys_file, PRIMARY, SECONDARY);

    let (issuer_key, issuer_jwk) = rsa_key(dir.path(), "issuer-1");
    let (rotated_issuer_key, rotated_issuer_jwk) = rsa_key(dir.path(), "issuer-2");
    let jwks = Arc::new(Mutex::new(json!({ "keys": [issuer_jwk] })));
    let issuer = start_issuer(jwks.clone()).await;

    let server = ServerOptions::new(fixtures.join("models/rf_reg"))
        .hosts(1)
        .env("RFLEET_AUTH__ENABLED", "true")
        .env("RFLEET_AUTH__KEYS_FILE", keys_file.display())
        .env("RFLEET_AUTH__TOKEN_TTL_S", TOKEN_TTL_S)
        .env("RFLEET_AUTH__OIDC_ISSUER", &issuer)
        .env("RFLEET_AUTH__OIDC_AUDIENCE", AUDIENCE)
        .start();
    let target = Target { client: client(), url: server.url.clone(), rows: Value::Array(rf.rows.clone()).to_string() };
    let expected = Value::Array(rf.expected.clone());

    // Probes stay open; everything else, documentation and unknown routes included, does not.
    for probe in ["/", "/live", "/ready", "/ping", "/v2/health/live", "/v2/health/ready"] {
        target.check(&[], &format!("GET {probe}"), 200).await;
    }
    for request in [
        "POST /score",
        "GET /models",
        "GET /v2",
        "GET /openapi.json",
        "GET /docs/",
        "GET /no/such/route",
        "POST /token",
    ] {
        target.check(&[], request, 401).await;
    }

    // Keys: the primary and the secondary; nothing near them.
    let answer = target.check(&[("authorization", &bearer(PRIMARY))], "POST /score", 200).await;
    assert_same(&answer.json(), &expected, "scored with the primary key");
    target.check(&[("authorization", &bearer(SECONDARY))], "GET /models", 200).await;
    target.check(&[("authorization", &bearer(&SECONDARY.to_uppercase()))], "GET /models", 401).await;
    target.check(&[("authorization", &bearer(&PRIMARY[1..]))], "POST /score", 401).await;
    target.check(&[("authorization", &bearer("wrong-key-0123456789abcdef"))], "POST /score", 401).await;
    target.check(&[("authorization", &format!("Basic {PRIMARY}"))], "POST /score", 401).await;
    target.check(&[("authorization", PRIMARY)], "POST /score", 401).await;
    target.check(&[("x-api-key", PRIMARY)], "POST /score", 401).await;

    // Tokens: issued for a key, accepted in its place, never exchanged for another.
    let issued = target.check(&[("authorization", &bearer(PRIMARY))], "POST /token", 200).await;
    assert_eq!(issued.header("cache-control"), Some("no-store"));
    let issued = issued.json();
    assert_eq!((issued["token_type"].as_str(), issued["expires_in"].as_u64()), (Some("Bearer"), Some(TOKEN_TTL_S)));
    let token = issued["access_token"].as_str().expect("access_token").to_string();
    let answer = target.check(&[("authorization", &bearer(&token))], "POST /score", 200).await;
    assert_same(&answer.json(), &expected, "scored with a token");
    target.check(&[("authorization", &bearer(&token))], "POST /token", 401).await;

    // Tokens it did not sign: another secret, or no signature at all.
    let claims = json!({"iss": "rfleet", "aud": "rfleet", "sub": "primary", "iat": now_s(), "exp": now_s() + 600});
    let forged =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"another secret"))
            .unwrap();
    target.check(&[("authorization", &bearer(&forged))], "POST /score", 401).await;
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    target.check(&[("authorization", &bearer(&unsigned))], "POST /score", 401).await;

    // OIDC: the issuer's tokens for our audience, and nothing else.
    let oidc = |key: &EncodingKey, kid: &str, changes: Value| {
        let mut claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "alice", "iat": now_s(), "exp": now_s() + 600});
        claims.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
        oidc_token(key, kid, claims)
    };
    let valid = oidc(&issuer_key, "issuer-1", json!({}));
    let answer = target.check(&[("authorization", &bearer(&valid))], "POST /score", 200).await;
    assert_same(&answer.json(), &expected, "scored with an OIDC token");
    for (what, token) in [
        ("wrong audience", oidc(&issuer_key, "issuer-1", json!({"aud": "api://another-app"}))),
        ("wrong issuer", oidc(&issuer_key, "issuer-1", json!({"iss": "http://127.0.0.1:1"}))),
        // Beyond the 60 s allowed for clock skew.
        ("expired", oidc(&issuer_key, "issuer-1", json!({"exp": now_s() - 300}))),
        ("another key, same key id", oidc(&rotated_issuer_key, "issuer-1", json!({}))),
        ("unknown key id", oidc(&rotated_issuer_key, "issuer-2", json!({}))),
    ] {
        target.check(&[("authorization", &bearer(&token))], &format!("POST /score {what}"), 401).await;
    }
    target.check(&[("authorization", &bearer(&valid))], "POST /token", 401).await;

    // A real third-party client with a bearer key, as the README shows it.
    let output = Command::new("curl")
        .args(["-sS", "-X", "POST", &format!("{}/score", server.url), "-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {PRIMARY}"), "-d", &target.rows])
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let from_curl: Value = serde_json::from_slice(&output.stdout).expect("curl got JSON");
    assert_same(&from_curl, &expected, "curl POST /score with a key");

    // The token from POST /token expires.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL_S + 1)).await;
    target.check(&[("authorization", &bearer(&token))], "POST /score", 401).await;

    // Rotation without a restart: the secondary becomes the primary, a new secondary comes
    // in, and the old primary is refused from then on.
    write_keys(&keys_file, SECONDARY, NEW_KEY);
    target.eventually(&[("authorization", &bearer(NEW_KEY))], "GET /models", 200, Duration::from_secs(5)).await;
    target.check(&[("authorization", &bearer(PRIMARY))], "POST /score", 401).await;
    target.check(&[("authorization", &bearer(SECONDARY))], "POST /score", 200).await;
    target.check(&[("authorization", &bearer(NEW_KEY))], "POST /score", 200).await;

    // The issuer rotates its signing keys: a token naming the new key id makes the server
    // fetch the JWKS again (at most every 10 s, so this may wait out the last fetch).
    *jwks.lock() = json!({ "keys": [rotated_issuer_jwk] });
    let rotated = oidc(&rotated_issuer_key, "issuer-2", json!({}));
    target.eventually(&[("authorization", &bearer(&rotated))], "GET /models", 200, Duration::from_secs(15)).await;
    target.check(&[("authorization", &bearer(&rotated))], "POST /score", 200).await;
    target.check(&[("authorization", &bearer(&valid))], "POST /score retired issuer key", 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_keys_from_the_environment_and_public_docs() {
    let server = ServerOptions::new(fixtures().join("models/rf_reg"))
        .hosts(1)
        .env("RFLEET_AUTH__ENABLED", "true")
        .env("RFLEET_AUTH__PRIMARY_KEY", PRIMARY)
        .env("RFLEET_AUTH__PUBLIC_DOCS", "true")
        .start();
    let target = Target { client: client(), url: server.url.clone(), rows: "[]".into() };
    // Azure ML's choice, on request: the API's description is open, the API is not.
    for request in ["GET /openapi.json", "GET /swagger.json", "GET /docs/", "GET /ping"] {
        target.check(&[], request, 200).await;
    }
    for request in ["GET /models", "GET /metadata", "GET /docsx", "POST /predict"] {
        target.check(&[], request, 401).await;
    }
    target.check(&[("authorization", &bearer(PRIMARY))], "GET /models", 200).await;
    target.check(&[("authorization", &bearer(SECONDARY))], "GET /models", 401).await;

    // The document says how to authenticate: the bearer scheme, `POST /token`, and which
    // operations need a credential, as the server decides it.
    let doc = target.check(&[], "GET /openapi.json", 200).await.json();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!((&scheme["type"], &scheme["scheme"]), (&json!("http"), &json!("bearer")), "{scheme}");
    let token = &doc["paths"]["/token"]["post"];
    assert_eq!(
        token["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TokenResponse"
    );
    let secured = |method: &str, path: &str| {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let required = operation["security"] == json!([{"bearer": []}]);
        assert_eq!(required, operation["responses"]["401"].is_object(), "{method} {path}: 401 documented or not");
        required
    };
    for (method, path) in [
        ("post", "/token"),
        ("post", "/score"),
        ("get", "/models"),
        ("get", "/metadata"),
        ("post", "/v2/models/{name}/infer"),
    ] {
        assert!(secured(method, path), "{method} {path} needs a credential");
    }
    for path in ["/", "/live", "/ready", "/ping", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs/"] {
        assert!(!secured("get", path), "GET {path} is open");
    }

    // Swagger UI's "Authorize" takes the key; "Try it out" then scores with it.
    let artifacts = target_dir().parent().expect("target").join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("swagger-ui-authorize.png");
    let shown = run_client("swagger_try_it_out.py", &[&server.url, screenshot.to_str().unwrap(), PRIMARY]);
    assert_eq!(shown["status"], 200, "{shown}");
    let body: Value = serde_json::from_str(shown["body"].as_str().unwrap()).expect("the page shows JSON");
    assert!(body.as_array().is_some_and(|p| p.len() == 1 && p[0].is_f64()), "not one prediction: {body}");

    // Keys never reach `rfleet config`'s output.
    let output = Command::new(support::binary("rfleet"))
        .arg("config")
        .env("RFLEET_AUTH__PRIMARY_KEY", PRIMARY)
        .output()
        .expect("run rfleet config");
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("[auth]") && !printed.contains(PRIMARY), "{printed}");
}
