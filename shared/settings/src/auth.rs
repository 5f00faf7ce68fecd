//! `[auth]`: who may call the dispatcher — API keys, the tokens `POST /token` issues for
//! them, and optionally an OpenID Connect issuer's access tokens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// Authentication of HTTP requests; off unless `enabled`. Probes (`/`, `/live`, `/ready`,
/// `/ping`, `/v2/health/*`) are always open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Every other route needs `Authorization: Bearer <key or token>`.
    pub enabled: bool,
    /// A TOML file with `primary = "..."` and `secondary = "..."`, re-read when it changes
    /// (a mounted Kubernetes secret); exclusive with `primary_key` / `secondary_key`.
    pub keys_file: Option<PathBuf>,
    /// Keys given directly, usually as `RFLEET_AUTH__PRIMARY_KEY`; changing them needs a
    /// restart. Printed and logged as `***`.
    pub primary_key: Option<Secret>,
    pub secondary_key: Option<Secret>,
    /// Lifetime of the tokens `POST /token` issues.
    pub token_ttl_s: u64,
    /// Serve `/docs`, `/openapi.json` and `/swagger.json` without credentials, as Azure ML
    /// does; off by default because the document names every model and its columns.
    pub public_docs: bool,
    /// An OpenID Connect issuer (e.g. `https://login.microsoftonline.com/<tenant>/v2.0`)
    /// whose RS256 access tokens are accepted; its `iss` claim must equal this.
    pub oidc_issuer: Option<String>,
    /// The `aud` claim those tokens must carry; required with `oidc_issuer`.
    pub oidc_audience: Option<String>,
    /// The issuer's JWKS; by default found through `<issuer>/.well-known/openid-configuration`.
    pub oidc_jwks_url: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: false,
            keys_file: None,
            primary_key: None,
            secondary_key: None,
            token_ttl_s: 3600,
            public_docs: false,
            oidc_issuer: None,
            oidc_audience: None,
            oidc_jwks_url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Settings, Sources};

    fn check(env: &[(&str, &str)], expected: Result<AuthSettings, &str>) {
        let sources =
            Sources { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Sources::default() };
        match (Settings::load(&sources), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.auth, want),
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn auth_from_the_environment() {
        check(&[], Ok(AuthSettings::default()));
        let keys = AuthSettings {
            enabled: true,
            primary_key: Some("p-0123456789abcdef".into()),
            secondary_key: Some("s-0123456789abcdef".into()),
            token_ttl_s: 60,
            ..AuthSettings::default()
        };
        check(
            &[
                ("RFLEET_AUTH__ENABLED", "true"),
                ("RFLEET_AUTH__PRIMARY_KEY", "p-0123456789abcdef"),
                ("RFLEET_AUTH__SECONDARY_KEY", "s-0123456789abcdef"),
                ("RFLEET_AUTH__TOKEN_TTL_S", "60"),
            ],
            Ok(keys),
        );
        check(&[("RFLEET_AUTH__PRIMARYKEY", "x")], Err("unknown field `primarykey`"));
    }

    #[test]
    fn keys_are_neither_printed_nor_logged() {
        let settings = Settings {
            auth: AuthSettings { primary_key: Some("very-secret-key".into()), ..AuthSettings::default() },
            ..Settings::default()
        };
        assert!(!toml::to_string(&settings).unwrap().contains("very-secret-key"));
        assert!(!format!("{settings:?}").contains("very-secret-key"));
    }
}
