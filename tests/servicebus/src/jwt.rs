//! Entra ID tokens (`jwt` on `$cbs`), as far as the stand-in checks them: signed (HS256,
//! with a key the test's token endpoint shares; Entra's own are RS256 with Microsoft's keys),
//! for the audience `https://servicebus.azure.net`, not expired. Such a token covers the
//! whole namespace with Send and Listen (Azure Service Bus Data Sender and Data Receiver).

use crate::config::Rights;

/// The audience of Service Bus's Entra ID tokens.
pub const AUDIENCE: &str = "https://servicebus.azure.net";

/// What an Entra ID token grants: Send and Listen until `expiry_unix_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtGrant {
    pub expiry_unix_secs: u64,
    pub rights: Rights,
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    exp: u64,
}

/// Whether `token` looks like a JWT (three base64url parts) rather than a SAS token, which
/// Microsoft's Python SDK also sends with type `jwt`.
pub fn is_jwt(token: &str) -> bool {
    !token.starts_with("SharedAccessSignature ") && token.split('.').count() == 3
}

/// Checks `token` against each of `keys`; why it is refused otherwise (no token in it).
pub fn verify(token: &str, keys: &[Vec<u8>]) -> Result<JwtGrant, String> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.leeway = 0;
    let mut refusal = "no Entra ID key is configured".to_string();
    for key in keys {
        match jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(key), &validation) {
            Ok(data) => {
                let rights = Rights { send: true, listen: true, manage: false };
                return Ok(JwtGrant { expiry_unix_secs: data.claims.exp, rights });
            }
            Err(error) => refusal = format!("the Entra ID token is not valid: {error}"),
        }
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &[u8], audience: &str, exp: u64) -> String {
        let claims = serde_json::json!({"aud": audience, "exp": exp});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
    }

    #[test]
    fn tokens_are_checked_for_signature_audience_and_expiry() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let keys = vec![b"key".to_vec()];
        let good = token(b"key", AUDIENCE, now + 60);
        assert!(is_jwt(&good) && !is_jwt("SharedAccessSignature sr=a.b.c&sig=x"));
        assert_eq!(verify(&good, &keys).unwrap().expiry_unix_secs, now + 60);
        assert!(verify(&token(b"other", AUDIENCE, now + 60), &keys).unwrap_err().contains("InvalidSignature"));
        assert!(verify(&token(b"key", "https://storage.azure.com", now + 60), &keys)
            .unwrap_err()
            .contains("InvalidAudience"));
        assert!(verify(&token(b"key", AUDIENCE, now - 60), &keys).unwrap_err().contains("ExpiredSignature"));
        assert!(verify(&good, &[]).unwrap_err().contains("no Entra ID key"));
    }
}
