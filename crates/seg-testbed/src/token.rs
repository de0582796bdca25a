//! A test OAuth token issuer (ES256 JWTs) and the verifier the Exchange stand-in uses.
//!
//! ```
//! use std::time::Duration;
//! use seg_testbed::token::TokenIssuer;
//!
//! let issuer = TokenIssuer::generate("https://exchange.test.local")?;
//! let token = issuer.issue("alice@test.local", Duration::from_secs(600))?;
//! assert_eq!(issuer.verifier().verify(&token)?, "alice@test.local");
//! # Ok::<(), seg_testbed::Error>(())
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The audience tokens are issued for and checked against unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "https://exchange.test.local";
/// The `iss` claim of issued tokens.
pub const ISSUER: &str = "https://sts.test.local";

/// Issues ES256-signed JWTs for a fixed audience.
pub struct TokenIssuer {
    private_key_pem: String,
    public_key_pem: String,
    encoding: EncodingKey,
    verifier: TokenVerifier,
    audience: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Generates a fresh P-256 key pair.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if key generation fails.
    pub fn generate(audience: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Certificate)?;
        Self::from_key_pair(&key, audience)
    }

    /// Loads a P-256 private key from PKCS#8 PEM.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if the PEM is not a P-256 private key.
    pub fn from_private_key_pem(pem: &str, audience: &str) -> Result<Self> {
        let key = KeyPair::from_pem(pem).map_err(Error::Certificate)?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(Error::InvalidPem("the key is not a P-256 key".into()));
        }
        Self::from_key_pair(&key, audience)
    }

    fn from_key_pair(key: &KeyPair, audience: &str) -> Result<Self> {
        let private_key_pem = key.serialize_pem();
        let encoding =
            EncodingKey::from_ec_pem(private_key_pem.as_bytes()).map_err(Error::TokenSigning)?;
        let public_key_pem = key.public_key_pem();
        let verifier = TokenVerifier::from_public_key_pem(&public_key_pem, audience)?;
        Ok(Self {
            public_key_pem,
            private_key_pem,
            encoding,
            verifier,
            audience: audience.to_string(),
        })
    }

    /// Issues a token for `upn`, valid for `ttl`, with claims `upn`, `aud`, `iss`, `iat`, `nbf`
    /// and `exp`.
    ///
    /// # Errors
    ///
    /// [`Error::TokenSigning`] if signing fails.
    pub fn issue(&self, upn: &str, ttl: Duration) -> Result<String> {
        let now = unix_now();
        self.issue_claims(&json!({
            "aud": self.audience,
            "iss": ISSUER,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
            "upn": upn,
        }))
    }

    /// Signs arbitrary claims, e.g. an expired token or one for another audience.
    ///
    /// # Errors
    ///
    /// [`Error::TokenSigning`] if signing fails.
    pub fn issue_claims(&self, claims: &Value) -> Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .map_err(Error::TokenSigning)
    }

    /// The audience of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// Writes the public key PEM to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be written.
    pub fn write_public_key(&self, path: &Path) -> Result<()> {
        write(path, &self.public_key_pem)
    }

    /// The public key as a JSON Web Key Set (`{"keys": [{"kty": "EC", "crv": "P-256", ...}]}`,
    /// RFC 7517), as an issuer publishes it; the key has no `kid`, as issued tokens have none.
    ///
    /// # Errors
    ///
    /// [`Error::TokenSigning`] if the key cannot be expressed as a JWK.
    pub fn jwks(&self) -> Result<String> {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, Algorithm::ES256)
            .map_err(Error::TokenSigning)?;
        Ok(json!({ "keys": [jwk] }).to_string())
    }

    /// Writes the private key PEM to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be written.
    pub fn write_private_key(&self, path: &Path) -> Result<()> {
        write(path, &self.private_key_pem)
    }

    /// The verifier matching this issuer.
    pub fn verifier(&self) -> TokenVerifier {
        self.verifier.clone()
    }
}

/// Verifies ES256 JWTs against one public key and one audience, as the Exchange stand-in does
/// for `Authorization: Bearer`.
#[derive(Clone)]
pub struct TokenVerifier {
    decoding: DecodingKey,
    audience: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for the P-256 public key in `pem` (SubjectPublicKeyInfo).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPem`] if the PEM is not an EC public key.
    pub fn from_public_key_pem(pem: &str, audience: &str) -> Result<Self> {
        let decoding = DecodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| Error::InvalidPem(format!("not an EC public key: {e}")))?;
        Ok(Self {
            decoding,
            audience: audience.to_string(),
        })
    }

    /// Reads the public key from a PEM file.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be read, otherwise as
    /// [`TokenVerifier::from_public_key_pem`].
    pub fn from_public_key_file(path: &Path, audience: &str) -> Result<Self> {
        Self::from_public_key_pem(&crate::pki::read(path)?, audience)
    }

    /// Checks the signature (ES256 only), `exp`, `nbf` and `aud`, and returns the user named by
    /// the `upn` claim, or else `preferred_username`.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] saying why.
    pub fn verify(&self, token: &str) -> Result<String> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map_err(|e| Error::TokenRejected(e.to_string()))?;
        ["upn", "preferred_username"]
            .iter()
            .find_map(|claim| data.claims.get(*claim).and_then(Value::as_str))
            .filter(|upn| !upn.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Error::TokenRejected("no upn or preferred_username claim".into()))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_and_names_its_user() {
        let issuer = TokenIssuer::generate(DEFAULT_AUDIENCE).unwrap();
        let token = issuer
            .issue("alice@test.local", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            issuer.verifier().verify(&token).unwrap(),
            "alice@test.local"
        );
    }

    #[test]
    fn preferred_username_is_accepted_when_upn_is_absent() {
        let issuer = TokenIssuer::generate(DEFAULT_AUDIENCE).unwrap();
        let now = unix_now();
        let token = issuer
            .issue_claims(&json!({"aud": DEFAULT_AUDIENCE, "exp": now + 60, "preferred_username": "bob@test.local"}))
            .unwrap();
        assert_eq!(issuer.verifier().verify(&token).unwrap(), "bob@test.local");
    }

    #[test]
    fn expired_foreign_or_wrong_audience_tokens_are_rejected() {
        let issuer = TokenIssuer::generate(DEFAULT_AUDIENCE).unwrap();
        let other = TokenIssuer::generate(DEFAULT_AUDIENCE).unwrap();
        let now = unix_now();
        let expired = issuer
            .issue_claims(&json!({"aud": DEFAULT_AUDIENCE, "exp": now - 3600, "upn": "a@b"}))
            .unwrap();
        let wrong_audience = issuer
            .issue_claims(&json!({"aud": "https://elsewhere", "exp": now + 60, "upn": "a@b"}))
            .unwrap();
        let foreign = other.issue("a@b", Duration::from_secs(60)).unwrap();
        let no_user = issuer
            .issue_claims(&json!({"aud": DEFAULT_AUDIENCE, "exp": now + 60}))
            .unwrap();
        for token in [
            expired,
            wrong_audience,
            foreign,
            no_user,
            "not.a.jwt".into(),
        ] {
            assert!(matches!(
                issuer.verifier().verify(&token),
                Err(Error::TokenRejected(_))
            ));
        }
    }

    #[test]
    fn a_key_survives_a_pem_round_trip() {
        let issuer = TokenIssuer::generate(DEFAULT_AUDIENCE).unwrap();
        let again =
            TokenIssuer::from_private_key_pem(issuer.private_key_pem(), DEFAULT_AUDIENCE).unwrap();
        assert_eq!(again.public_key_pem(), issuer.public_key_pem());
        let token = again.issue("a@b", Duration::from_secs(60)).unwrap();
        assert!(issuer.verifier().verify(&token).is_ok());
    }
}
