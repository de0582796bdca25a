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

    /// Why these credentials cannot be used, if they cannot. A certificate's PEM is parsed and
    /// its key checked to fit it (see [`crate::tls::check_identity`]).
    pub fn problem(&self) -> Option<String> {
        match self {
            DeviceAuth::Basic { user, .. } if user.is_empty() || user.contains(':') => {
                Some("auth.basic.user must be non-empty and without ':'".into())
            }
            DeviceAuth::Oauth { token } if token.is_empty() => {
                Some("auth.oauth.token must be non-empty".into())
            }
            DeviceAuth::Certificate { cert_pem, key_pem } => {
                crate::tls::check_identity(cert_pem, key_pem)
                    .err()
                    .map(|error| seg_config::error_chain(&error))
            }
            _ if self.authorization().is_none() => {
                Some("auth contains characters not allowed in an HTTP header".into())
            }
            _ => None,
        }
    }

    /// The client certificate and key a certificate device presents to the gateway.
    pub fn certificate(&self) -> Option<(&str, &str)> {
        match self {
            DeviceAuth::Certificate { cert_pem, key_pem } => Some((cert_pem, key_pem)),
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

    #[test]
    fn a_certificate_device_sends_no_authorization_and_its_pem_is_checked() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["alice".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let auth = DeviceAuth::Certificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        assert_eq!(format!("{auth:?}"), "Certificate(..)");
        assert!(auth.authorization().is_none());
        assert_eq!(auth.problem(), None);
        let garbled = DeviceAuth::Certificate {
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: key.serialize_pem(),
        };
        assert_eq!(
            garbled.problem().as_deref(),
            Some("auth.certificate.cert_pem holds no PEM certificate")
        );
    }
}
