//! A device's credentials for EWS, as registered: Basic, an OAuth token, or a client certificate.
//! Held in memory only while the device's subscription runs; stored sealed (see
//! [`crate::seal`]); never logged (`Debug` shows the kind only).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

/// The credentials a device registered with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DeviceAuth {
    /// `Authorization: Basic`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer`.
    Oauth {
        /// The access token.
        token: String,
    },
    /// A client certificate presented on the TLS connection to the gateway (which then
    /// authenticates to Exchange by Kerberos constrained delegation).
    Certificate {
        /// The certificate chain, PEM.
        cert_pem: String,
        /// The private key, PEM.
        key_pem: String,
    },
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceAuth::Basic { .. } => "Basic(..)",
            DeviceAuth::Oauth { .. } => "Oauth(..)",
            DeviceAuth::Certificate { .. } => "Certificate(..)",
        })
    }
}

impl DeviceAuth {
    /// The `Authorization` header value, for the kinds that use one.
    pub fn authorization(&self) -> Option<HeaderValue> {
        let value = match self {
            DeviceAuth::Basic { user, password } => {
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
            }
            DeviceAuth::Oauth { token } => format!("Bearer {token}"),
            DeviceAuth::Certificate { .. } => return None,
        };
        let mut value = HeaderValue::try_from(value).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Why these credentials cannot be used, if they cannot.
    pub fn problem(&self) -> Option<&'static str> {
        match self {
            DeviceAuth::Basic { user, .. } if user.is_empty() || user.contains(':') => {
                Some("auth.basic.user must be non-empty and without ':'")
            }
            DeviceAuth::Oauth { token } if token.is_empty() => {
                Some("auth.oauth.token must be non-empty")
            }
            DeviceAuth::Certificate { cert_pem, key_pem }
                if !cert_pem.contains("-----BEGIN") || !key_pem.contains("-----BEGIN") =>
            {
                Some("auth.certificate needs cert_pem and key_pem in PEM")
            }
            _ if self.authorization().is_none()
                && !matches!(self, DeviceAuth::Certificate { .. }) =>
            {
                Some("auth contains characters not allowed in an HTTP header")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let auth = DeviceAuth::Basic {
            user: "alice".into(),
            password: "alicepw".into(),
        };
        assert_eq!(format!("{auth:?}"), "Basic(..)");
        assert_eq!(auth.authorization().unwrap(), "Basic YWxpY2U6YWxpY2Vwdw==");
        assert!(auth.authorization().unwrap().is_sensitive());
    }

    #[test]
    fn unusable_credentials_are_named() {
        let bad = DeviceAuth::Oauth {
            token: "a\nb".into(),
        };
        assert!(bad.problem().is_some());
        let json: DeviceAuth =
            serde_json::from_str(r#"{"basic":{"user":"alice","password":"pw"}}"#).unwrap();
        assert!(json.problem().is_none());
    }
}
