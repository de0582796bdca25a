//! `Authorization: Negotiate` as IIS accepts it, with the system GSSAPI (MIT krb5 through
//! `libgssapi`) and the Exchange keytab: an implementation of SPNEGO and Kerberos independent of
//! the gateway's own, so that a token the gateway builds is proven by someone else's reading.
//!
//! The token is accepted with the SPNEGO mechanism (`gss_accept_sec_context` on credentials
//! acquired for SPNEGO from the keytab, for any principal in it) in one leg; the initiator's name
//! (`alice@TEST.LOCAL`) is then mapped to a user by [`super::auth`]. MIT's replay cache refuses a
//! token seen before.
//!
//! Extended Protection (channel bindings, RFC 5929 `tls-server-end-point`): when required, the
//! acceptor passes the bindings of the server's TLS certificate (`tls-server-end-point:` + the
//! certificate's hash) as `input_chan_bindings`. MIT then refuses a token whose authenticator
//! carries other bindings (`GSS_S_BAD_BINDINGS`), but accepts one whose bindings are all zero,
//! i.e. absent (`process_checksum` in MIT's `accept_sec_context.c`); only when the bindings were
//! present and matched does it set `GSS_C_CHANNEL_BOUND_FLAG` (0x800, MIT 1.19 and later) in the
//! context flags. Requiring that flag is what makes the requirement real: a token without
//! bindings is refused like one with wrong bindings, as IIS does with Extended Protection set to
//! Require.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use libgssapi::context::{SecurityContext as _, ServerCtx};
use libgssapi::credential::Cred;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::gss_cred;
use crate::error::{Error, Result};

/// `GSS_C_CHANNEL_BOUND_FLAG` of MIT's `gssapi_ext.h`: set by the acceptor when the initiator's
/// channel bindings were present and matched the acceptor's. `libgssapi` has no name for it but
/// keeps the bit.
const GSS_C_CHANNEL_BOUND_FLAG: u32 = 0x800;

/// The prefix of RFC 5929's `tls-server-end-point` channel binding.
const TLS_SERVER_END_POINT: &[u8] = b"tls-server-end-point:";

/// How the server accepts `Authorization: Negotiate`; plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateConfig {
    /// The keytab holding the keys of the server's service principals (e.g.
    /// `HTTP/exchange.test.local`); a ticket for any principal in it is accepted.
    pub keytab: PathBuf,
    /// Extended Protection for Authentication set to Require: only tokens bound to the TLS
    /// connection (RFC 5929 `tls-server-end-point` of the server's certificate) are accepted.
    /// Off, channel bindings are not checked at all.
    pub require_channel_binding: bool,
}

impl NegotiateConfig {
    /// Accepts tickets for the principals of `keytab`, without requiring channel bindings.
    pub fn new(keytab: impl Into<PathBuf>) -> Self {
        Self {
            keytab: keytab.into(),
            require_channel_binding: false,
        }
    }

    /// The same, requiring channel bindings (Extended Protection).
    pub fn requiring_channel_binding(mut self) -> Self {
        self.require_channel_binding = true;
        self
    }
}

/// A context the acceptor established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// The initiator's principal, as GSSAPI displays it (`alice@TEST.LOCAL`).
    pub client: String,
    /// The token for the client, if the mechanism produced one (the AP-REP of mutual
    /// authentication, in SPNEGO), sent back in `WWW-Authenticate: Negotiate` on success.
    pub reply: Option<Vec<u8>>,
}

/// The acceptor of one server: credentials from the keytab and the channel-binding policy.
pub(crate) struct Acceptor {
    cred: Cred,
    require_channel_binding: bool,
    certificate: Option<Arc<ServedCertificate>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("require_channel_binding", &self.require_channel_binding)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Acquires acceptor credentials from the configured keytab. `certificate` records the
    /// certificate the server's TLS presents (`None` without TLS).
    pub(crate) fn new(
        config: &NegotiateConfig,
        certificate: Option<Arc<ServedCertificate>>,
    ) -> Result<Self> {
        let cred = gss_cred::acceptor_from_keytab(&config.keytab).map_err(|error| Error::File {
            path: config.keytab.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
        })?;
        Ok(Self {
            cred,
            require_channel_binding: config.require_channel_binding,
            certificate,
        })
    }

    /// Accepts a decoded Negotiate token. Runs the GSSAPI on the blocking pool: accepting reads
    /// the keytab and writes the replay cache.
    pub(crate) async fn accept(&self, token: Vec<u8>) -> std::result::Result<Accepted, String> {
        let bindings = if self.require_channel_binding {
            Some(self.channel_bindings()?)
        } else {
            None
        };
        let cred = self.cred.clone();
        let require = self.require_channel_binding;
        tokio::task::spawn_blocking(move || accept(cred, &token, bindings.as_deref(), require))
            .await
            .map_err(|error| format!("the acceptor task failed: {error}"))?
    }

    /// The `tls-server-end-point` application data of the certificate the server presents.
    fn channel_bindings(&self) -> std::result::Result<Vec<u8>, String> {
        let certificate = self.certificate.as_ref().ok_or_else(|| {
            "channel binding is required but the server does not use TLS".to_string()
        })?;
        let der = certificate.current()?;
        let hash = tls_server_end_point_hash(&der)?;
        let mut data = TLS_SERVER_END_POINT.to_vec();
        data.extend_from_slice(&hash);
        Ok(data)
    }
}

fn accept(
    cred: Cred,
    token: &[u8],
    bindings: Option<&[u8]>,
    require_channel_binding: bool,
) -> std::result::Result<Accepted, String> {
    let mut context = ServerCtx::new(Some(cred));
    let reply = context
        .step(token, bindings)
        .map_err(|error| format!("GSSAPI refused the token: {error}"))?;
    if !context.is_complete() {
        // IIS keeps a half-open context per connection; this stand-in serves single-leg tokens
        // only, which is what Kerberos clients (and the gateway) send.
        return Err("the token needs another leg, which this stand-in does not support".into());
    }
    if require_channel_binding {
        let flags = context
            .flags()
            .map_err(|error| format!("could not read the context flags: {error}"))?;
        if flags.bits() & GSS_C_CHANNEL_BOUND_FLAG == 0 {
            return Err(
                "the token carries no channel bindings and Extended Protection requires them"
                    .into(),
            );
        }
    }
    let client = context
        .source_name()
        .map_err(|error| format!("could not read the client name: {error}"))?
        .to_string();
    Ok(Accepted {
        client,
        reply: reply.map(|buffer| buffer.to_vec()),
    })
}

/// The certificate hash of RFC 5929 `tls-server-end-point`: the certificate's signature hash,
/// SHA-256 in place of MD5 and SHA-1.
pub(crate) fn tls_server_end_point_hash(der: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| format!("the server certificate does not parse: {error}"))?;
    let algorithm = certificate.signature_algorithm.algorithm.to_id_string();
    let hash = match algorithm.as_str() {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, dsa-with-SHA1: SHA-256 by RFC 5929 4.1.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3" => Sha256::digest(der).to_vec(),
        // sha256WithRSA, ecdsa-with-SHA256.
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" => Sha256::digest(der).to_vec(),
        // sha384WithRSA, ecdsa-with-SHA384.
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        // sha512WithRSA, ecdsa-with-SHA512.
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        other => {
            return Err(format!(
                "the server certificate's signature algorithm {other} has no tls-server-end-point hash"
            ));
        }
    };
    Ok(hash)
}

/// Records the certificate the server's TLS configuration presents, by wrapping its resolver.
///
/// The handler of a request does not see the connection it arrived on, so the binding is taken
/// from the certificate the server presented: exact for the usual single-certificate
/// configuration. Should the configuration ever present different certificates (by SNI), the
/// binding would be ambiguous, and bound tokens are refused rather than checked against a guess.
#[derive(Debug)]
pub(crate) struct ServedCertificate {
    inner: Arc<dyn ResolvesServerCert>,
    served: Mutex<Served>,
}

#[derive(Debug)]
enum Served {
    Nothing,
    One(Vec<u8>),
    Several,
}

impl ServedCertificate {
    /// Wraps `inner`, the configuration's own resolver.
    pub(crate) fn wrapping(inner: Arc<dyn ResolvesServerCert>) -> Self {
        Self {
            inner,
            served: Mutex::new(Served::Nothing),
        }
    }

    /// The DER of the certificate presented so far.
    fn current(&self) -> std::result::Result<Vec<u8>, String> {
        match &*super::lock(&self.served) {
            Served::One(der) => Ok(der.clone()),
            Served::Nothing => Err("no TLS handshake has presented a certificate yet".into()),
            Served::Several => Err(
                "the server presents several certificates, so the connection's binding is unknown"
                    .into(),
            ),
        }
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.inner.resolve(client_hello)?;
        if let Some(leaf) = key.cert.first() {
            let mut served = super::lock(&self.served);
            match &*served {
                Served::Nothing => *served = Served::One(leaf.to_vec()),
                Served::One(der) if der.as_slice() == leaf.as_ref() => {}
                _ => *served = Served::Several,
            }
        }
        Some(key)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn the_end_point_hash_of_an_ecdsa_sha256_certificate_is_its_sha256() {
        let pki = crate::pki::TestPki::in_memory(&[]).unwrap();
        let der = CertificateDer::from_pem_slice(pki.server_cert_pem().as_bytes()).unwrap();
        assert_eq!(
            tls_server_end_point_hash(&der).unwrap(),
            Sha256::digest(&der).to_vec()
        );
        assert!(tls_server_end_point_hash(b"not a certificate").is_err());
    }
}
