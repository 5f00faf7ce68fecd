//! Authentication: API keys, the short-lived tokens `POST /token` issues for them, and
//! optionally the access tokens of an OpenID Connect issuer (Entra ID and the like).
//!
//! Every request but the probes carries `Authorization: Bearer <credential>`, where the
//! credential is one of:
//! - a key, the primary or the secondary, from `auth.keys_file` (re-read when it changes,
//!   so keys rotate without a restart) or from `auth.primary_key` / `auth.secondary_key`;
//! - a token from `POST /token`: an HS256 JWT whose secret is derived from a key (see
//!   [`token_secret`]), so every dispatcher that shares the keys accepts it and removing a
//!   key revokes the tokens signed with it;
//! - an RS256 access token of `auth.oidc_issuer` for `auth.oidc_audience`, checked against
//!   the issuer's JWKS, which is fetched once and again whenever a token names a key id
//!   that is not in it (the issuer rotated its signing keys).
//!
//! Whatever is wrong, the answer is the same 401 with the same message
//! ([`ApiError::Unauthenticated`]): a caller never learns which part of a credential
//! failed. Operators see the reason ([`Refusal`]) at debug level.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use settings::auth::AuthSettings;

use crate::error::ApiError;
use crate::AppState;

/// `iss` and `aud` of the tokens `POST /token` issues; an OIDC token never carries them,
/// so neither kind of token passes for the other.
pub const TOKEN_ISSUER: &str = "rfleet";
pub const TOKEN_AUDIENCE: &str = "rfleet";

/// Keys shorter than this are refused at start-up: a key is the whole secret.
pub const MIN_KEY_BYTES: usize = 16;

/// A token naming an unknown key id refetches the JWKS at most this often, so a flood of
/// forged tokens cannot turn the dispatcher into a load generator against the issuer.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

/// Clock skew allowed on OIDC tokens' `exp` and `nbf` (the issuer's clock is not ours).
/// Tokens from `POST /token` get none: a dispatcher's clock issued them.
const OIDC_LEEWAY_S: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth is enabled but nothing can authenticate: set auth.keys_file, auth.primary_key or auth.oidc_issuer")]
    NothingConfigured,
    #[error("auth.keys_file and auth.primary_key / auth.secondary_key are exclusive: keep the keys in one place")]
    KeysInTwoPlaces,
    #[error("cannot read the keys file {path}: {source}")]
    ReadKeysFile { path: PathBuf, source: std::io::Error },
    #[error("invalid keys file {path}: {message}")]
    KeysFile { path: PathBuf, message: String },
    #[error("invalid keys: {0}")]
    Keys(String),
    #[error("auth.oidc_issuer needs auth.oidc_audience: without it, any token of the issuer would do")]
    OidcWithoutAudience,
    #[error("cannot build the HTTP client for the OIDC issuer: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// Who made an authenticated request; handlers find it among the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A key, directly.
    Key(KeySlot),
    /// A token from `POST /token`.
    Token,
    /// An access token of the OIDC issuer; `subject` is its `sub` claim.
    Oidc { subject: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    fn name(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }
}

/// The authenticator shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// Swapped whole when the keys file changes; requests read a snapshot.
    keys: RwLock<Arc<Keys>>,
    token_ttl_s: u64,
    public_docs: bool,
    oidc: Option<Oidc>,
}

/// The current keys, primary first when there is one.
#[derive(Default)]
struct Keys {
    keys: Vec<Key>,
}

struct Key {
    slot: KeySlot,
    /// SHA-256 of the key: comparing digests in constant time hides the key's length too.
    digest: [u8; 32],
    signing: EncodingKey,
    verifying: DecodingKey,
}

/// The keys file: `primary = "..."` and `secondary = "..."`, either may be missing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    primary: Option<String>,
    secondary: Option<String>,
}

/// The claims of the tokens `POST /token` issues.
#[derive(Debug, Serialize, Deserialize)]
struct TokenClaims {
    iss: String,
    aud: String,
    /// Which key the token was asked for with: `primary` or `secondary`.
    sub: String,
    iat: u64,
    exp: u64,
}

/// What `POST /token` answers (the OAuth 2.0 token response's fields).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The token, to send as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires (`auth.token_ttl_s`).
    #[schema(example = 3600)]
    pub expires_in: u64,
}

/// The HS256 secret of the tokens a key vouches for: HMAC-SHA256 keyed with the key, of a
/// fixed label. Derived rather than configured, so there is no second secret to deploy
/// and rotate; the label keeps the secret apart from any other use of the key.
pub fn token_secret(key: &str) -> [u8; 32] {
    let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&mac, b"rfleet/token-signing/v1");
    tag.as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("SHA-256 digests are 32 bytes")
}

impl Keys {
    fn new(primary: Option<&str>, secondary: Option<&str>) -> Result<Keys, String> {
        let mut keys = Vec::new();
        for (slot, key) in [(KeySlot::Primary, primary), (KeySlot::Secondary, secondary)] {
            let Some(key) = key else { continue };
            if key.len() < MIN_KEY_BYTES {
                return Err(format!("the {} key is shorter than {MIN_KEY_BYTES} bytes", slot.name()));
            }
            let secret = token_secret(key);
            keys.push(Key {
                slot,
                digest: sha256(key.as_bytes()),
                signing: EncodingKey::from_secret(&secret),
                verifying: DecodingKey::from_secret(&secret),
            });
        }
        Ok(Keys { keys })
    }

    fn parse_file(text: &[u8]) -> Result<Keys, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let file: KeysFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if file.primary.is_none() && file.secondary.is_none() {
            return Err("it sets neither `primary` nor `secondary`".into());
        }
        Keys::new(file.primary.as_deref(), file.secondary.as_deref())
    }

    /// The slot of the key `presented` is, comparing with every key in constant time.
    fn find(&self, presented: &str) -> Option<KeySlot> {
        let digest = sha256(presented.as_bytes());
        // No early return: the time taken does not depend on which key matched.
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq::constant_time_eq_32(&key.digest, &digest) {
                found = found.or(Some(key.slot));
            }
        }
        found
    }
}

impl Auth {
    /// The authenticator for `settings`, or `None` when auth is off. Reads the keys file
    /// and, while the returned value lives, re-reads it every second.
    pub async fn from_settings(settings: &AuthSettings) -> Result<Option<Auth>, AuthError> {
        if !settings.enabled {
            return Ok(None);
        }
        let env_keys = settings.primary_key.is_some() || settings.secondary_key.is_some();
        if settings.keys_file.is_some() && env_keys {
            return Err(AuthError::KeysInTwoPlaces);
        }
        if settings.keys_file.is_none() && !env_keys && settings.oidc_issuer.is_none() {
            return Err(AuthError::NothingConfigured);
        }
        let (keys, file_text) = match &settings.keys_file {
            Some(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|source| AuthError::ReadKeysFile { path: path.clone(), source })?;
                let keys =
                    Keys::parse_file(&text).map_err(|message| AuthError::KeysFile { path: path.clone(), message })?;
                (keys, Some(text))
            }
            None => (
                // The one place the configured keys are exposed: to be hashed.
                Keys::new(
                    settings.primary_key.as_ref().map(settings::Secret::expose_secret),
                    settings.secondary_key.as_ref().map(settings::Secret::expose_secret),
                )
                .map_err(AuthError::Keys)?,
                None,
            ),
        };
        let oidc = match &settings.oidc_issuer {
            Some(issuer) => {
                let audience = settings.oidc_audience.as_ref().ok_or(AuthError::OidcWithoutAudience)?;
                Some(Oidc::new(issuer, audience, settings.oidc_jwks_url.clone())?)
            }
            None => None,
        };
        let auth = Auth {
            inner: Arc::new(Inner {
                keys: RwLock::new(Arc::new(keys)),
                token_ttl_s: settings.token_ttl_s,
                public_docs: settings.public_docs,
                oidc,
            }),
        };
        if let (Some(path), Some(text)) = (&settings.keys_file, file_text) {
            // Holds only a weak reference: the task ends once the last `Auth` is dropped.
            let keys_file = path.clone();
            let reload = move |inner: &Inner, text: &[u8]| {
                let keys = Keys::parse_file(text)?;
                tracing::info!(keys_file = %keys_file.display(), n_keys = keys.keys.len(), "keys reloaded");
                *inner.keys.write() = Arc::new(keys);
                Ok(())
            };
            tokio::spawn(crate::reload::watch_file(
                path.clone(),
                "keys file",
                Arc::downgrade(&auth.inner),
                text,
                reload,
            ));
        }
        tracing::info!(
            keys_file = ?settings.keys_file,
            n_keys = auth.keys().keys.len(),
            oidc_issuer = ?settings.oidc_issuer,
            public_docs = settings.public_docs,
            "authentication on"
        );
        Ok(Some(auth))
    }

    fn keys(&self) -> Arc<Keys> {
        self.inner.keys.read().clone()
    }

    /// Whether the API's description and Swagger UI are served without credentials
    /// (`auth.public_docs`).
    pub fn public_docs(&self) -> bool {
        self.inner.public_docs
    }

    /// Who sent `headers`, or why not (the reason is for the log, never for the caller).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
        let credential = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credential)| credential.trim())
            .filter(|credential| !credential.is_empty())
            .ok_or(Refusal::Invalid("not a bearer credential".into()))?;
        if let Some(slot) = self.keys().find(credential) {
            return Ok(Caller::Key(slot));
        }
        let header = jsonwebtoken::decode_header(credential)
            .map_err(|_| Refusal::Invalid("neither a current key nor a token".into()))?;
        match header.alg {
            Algorithm::HS256 => self.verify_token(credential),
            Algorithm::RS256 => match &self.inner.oidc {
                Some(oidc) => oidc.verify(credential, header.kid.as_deref()).await,
                None => Err(Refusal::Invalid("an RS256 token, and no OIDC issuer is configured".into())),
            },
            alg => Err(Refusal::Invalid(format!("a token signed with {alg:?}"))),
        }
    }

    /// Checks a token from `POST /token` against the secret of every current key.
    fn verify_token(&self, token: &str) -> Result<Caller, Refusal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.leeway = 0;
        let keys = self.keys();
        let mut last_error = "no key to check it with".to_string();
        for key in &keys.keys {
            match jsonwebtoken::decode::<TokenClaims>(token, &key.verifying, &validation) {
                Ok(_) => return Ok(Caller::Token),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(Refusal::Invalid(format!("token: {last_error}")))
    }

    /// A token for a caller who presented the key in `slot`, signed with the primary key's
    /// secret (the secondary's when there is no primary).
    pub fn issue_token(&self, slot: KeySlot) -> Option<TokenResponse> {
        let keys = self.keys();
        let key = keys.keys.first()?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = TokenClaims {
            iss: TOKEN_ISSUER.into(),
            aud: TOKEN_AUDIENCE.into(),
            sub: slot.name().into(),
            iat: now,
            exp: now + self.inner.token_ttl_s,
        };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key.signing)
            .expect("HS256 signing cannot fail");
        Some(TokenResponse { access_token: token, token_type: "Bearer", expires_in: self.inner.token_ttl_s })
    }
}

/// Why a request was refused; only the log sees the reason.
#[derive(Debug)]
pub enum Refusal {
    /// No `Authorization` header at all.
    Missing,
    /// A credential that is not valid now.
    Invalid(String),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::Unauthenticated { credential_sent: matches!(refusal, Refusal::Invalid(_)) }
    }
}

/// Middleware on every route that needs a credential (the route table decides which):
/// lets the request through only with a valid credential, which it leaves in the request's
/// extensions as a [`Caller`].
pub async fn require(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    match auth.authenticate(request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::debug!(reason = ?refusal, "request refused");
            ApiError::from(refusal).into_response()
        }
    }
}

/// `POST /token`: a short-lived token for a caller who presented a key. A token cannot be
/// exchanged for another, or a leaked token would never expire.
#[utoipa::path(post, path = "/token", tag = "authentication",
    summary = "A short-lived token for a key",
    description = "Send a key (the primary or the secondary) as the bearer credential and no body; use the token \
                   in its place until it expires. Only a key is exchanged: a token or an OIDC access token gets 401.",
    responses((status = 200, body = TokenResponse,
        headers(("Cache-Control" = String, description = "`no-store`: a token response is never cached")))))]
pub async fn token(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let issued = match (caller, &state.auth) {
        (Some(Extension(Caller::Key(slot))), Some(auth)) => auth.issue_token(slot),
        _ => None,
    };
    match issued {
        // RFC 6749 §5.1: a token response must not be cached.
        Some(token) => ([(header::CACHE_CONTROL, "no-store")], Json(token)).into_response(),
        None => ApiError::from(Refusal::Invalid("only a key is exchanged for a token".into())).into_response(),
    }
}

/// An OpenID Connect issuer whose access tokens are accepted.
struct Oidc {
    issuer: String,
    validation: Validation,
    http: reqwest::Client,
    /// The issuer's RSA signing keys by key id.
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Serializes refreshes; holds the JWKS URL once known and the last fetch's time.
    refresh: tokio::sync::Mutex<JwksSource>,
}

struct JwksSource {
    url: Option<String>,
    fetched_at: Option<Instant>,
}

impl Oidc {
    fn new(issuer: &str, audience: &str, jwks_url: Option<String>) -> Result<Oidc, AuthError> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = OIDC_LEEWAY_S;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        Ok(Oidc {
            issuer: issuer.to_string(),
            validation,
            http,
            keys: RwLock::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(JwksSource { url: jwks_url, fetched_at: None }),
        })
    }

    async fn verify(&self, token: &str, kid: Option<&str>) -> Result<Caller, Refusal> {
        let kid = kid.ok_or_else(|| Refusal::Invalid("an RS256 token without a key id".into()))?;
        let key = match self.key(kid) {
            Some(key) => key,
            None => {
                self.refresh(kid).await;
                self.key(kid).ok_or_else(|| Refusal::Invalid(format!("no key '{kid}' in the issuer's JWKS")))?
            }
        };
        #[derive(Deserialize)]
        struct Claims {
            sub: Option<String>,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| Refusal::Invalid(format!("OIDC token: {e}")))?;
        Ok(Caller::Oidc { subject: data.claims.sub })
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().get(kid).cloned()
    }

    /// Refetches the JWKS unless another request just did (or fetched `kid` meanwhile).
    async fn refresh(&self, kid: &str) {
        let mut source = self.refresh.lock().await;
        if self.key(kid).is_some() || source.fetched_at.is_some_and(|at| at.elapsed() < JWKS_MIN_REFRESH) {
            return;
        }
        source.fetched_at = Some(Instant::now());
        match self.fetch(&mut source.url).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, n_keys = keys.len(), "oidc signing keys fetched");
                *self.keys.write() = keys;
            }
            // Tokens are refused until a fetch succeeds; the log says why.
            Err(error) => tracing::warn!(issuer = %self.issuer, %error, "cannot fetch the oidc signing keys"),
        }
    }

    /// The issuer's RSA keys; finds the JWKS URL through discovery the first time.
    async fn fetch(&self, url: &mut Option<String>) -> Result<HashMap<String, DecodingKey>, String> {
        if url.is_none() {
            let discovery = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
            let document = self.get_json(&discovery).await?;
            let jwks_uri = document["jwks_uri"].as_str().ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
            *url = Some(jwks_uri.to_string());
        }
        let jwks_url = url.as_deref().expect("set above");
        let jwks = self.get_json(jwks_url).await?;
        let listed = jwks["keys"].as_array().ok_or_else(|| format!("{jwks_url} has no keys"))?;
        // One key of a kind we do not use (EC, or a future type) must not hide the others;
        // only RSA keys are kept, so no token can make us verify with another algorithm.
        let keys = listed
            .iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value.clone()).ok())
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(&jwk).ok()?)))
            .collect();
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let response = self.http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let response = response.error_for_status().map_err(|e| format!("GET {url}: {e}"))?;
        response.json().await.map_err(|e| format!("GET {url}: not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const PRIMARY: &str = "primary-key-0123456789";
    const SECONDARY: &str = "secondary-key-0123456789";

    async fn auth(primary: Option<&str>, secondary: Option<&str>) -> Auth {
        let settings = AuthSettings {
            enabled: true,
            primary_key: primary.map(Into::into),
            secondary_key: secondary.map(Into::into),
            ..AuthSettings::default()
        };
        Auth::from_settings(&settings).await.unwrap().unwrap()
    }

    fn bearer(credential: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {credential}")).unwrap());
        headers
    }

    #[tokio::test]
    async fn keys_and_tokens() {
        let both = auth(Some(PRIMARY), Some(SECONDARY)).await;
        let check = |headers: HeaderMap, expected: Option<Caller>| {
            let both = both.clone();
            async move { assert_eq!(both.authenticate(&headers).await.ok(), expected) }
        };
        check(HeaderMap::new(), None).await;
        check(bearer(PRIMARY), Some(Caller::Key(KeySlot::Primary))).await;
        check(bearer(SECONDARY), Some(Caller::Key(KeySlot::Secondary))).await;
        check(bearer(&PRIMARY[..PRIMARY.len() - 1]), None).await;
        check(bearer(&format!("{PRIMARY}0")), None).await;
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {PRIMARY}")).unwrap());
        check(basic, None).await;

        let token = both.issue_token(KeySlot::Secondary).unwrap().access_token;
        check(bearer(&token), Some(Caller::Token)).await;
        // Another dispatcher with the same keys accepts it, in either order.
        let swapped = auth(Some(SECONDARY), Some(PRIMARY)).await;
        assert_eq!(swapped.authenticate(&bearer(&token)).await.ok(), Some(Caller::Token));
        // Removing the key that signed it revokes it.
        let rotated = auth(Some(SECONDARY), Some("a-brand-new-key-0123456789")).await;
        assert!(rotated.authenticate(&bearer(&token)).await.is_err());
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_refused() {
        let check = |settings: AuthSettings, expected: &'static str| async move {
            match Auth::from_settings(&settings).await {
                Err(e) => assert!(e.to_string().contains(expected), "{e} does not mention {expected}"),
                Ok(_) => panic!("{settings:?} was accepted"),
            }
        };
        let on = AuthSettings { enabled: true, ..AuthSettings::default() };
        check(on.clone(), "nothing can authenticate").await;
        check(AuthSettings { primary_key: Some("short".into()), ..on.clone() }, "shorter than 16 bytes").await;
        check(
            AuthSettings { primary_key: Some(PRIMARY.into()), keys_file: Some("keys.toml".into()), ..on.clone() },
            "exclusive",
        )
        .await;
        check(AuthSettings { oidc_issuer: Some("http://127.0.0.1:1".into()), ..on.clone() }, "oidc_audience").await;
        check(AuthSettings { keys_file: Some("/no/such/keys.toml".into()), ..on.clone() }, "/no/such/keys.toml").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "primary = \"x\"\nsecondry = \"y\"\n").unwrap();
        check(AuthSettings { keys_file: Some(path), ..on.clone() }, "unknown field `secondry`").await;
        assert!(Auth::from_settings(&AuthSettings::default()).await.unwrap().is_none());
    }
}
