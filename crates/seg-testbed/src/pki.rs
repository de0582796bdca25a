//! Test certificates: a private CA and a server certificate it signs, written as PEM files;
//! client certificates for certificate-based authentication, good and bad
//! ([`TestPki::issue_client_cert`]), and revocation lists ([`TestPki::crl_pem`]).
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("pki-doc-{}", uuid::Uuid::new_v4()));
//! let pki = seg_testbed::pki::TestPki::generate(&dir)?;
//! assert!(pki.files().expect("written").ca.exists());
//! let _server_config = pki.server_config()?;
//! let _roots = pki.root_store();
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), seg_testbed::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, OtherNameValue, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::client::provider;
use crate::error::{Error, Result};

/// The names every test server certificate carries.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "exchange.test.local"];

/// The paths of the PEM files a [`TestPki`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// The CA certificate, `ca.pem`.
    pub ca: PathBuf,
    /// The server certificate, `server.pem`.
    pub server_cert: PathBuf,
    /// The server's PKCS#8 private key, `server.key`.
    pub server_key: PathBuf,
}

/// A private test CA and a server certificate signed by it.
pub struct TestPki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    files: Option<PkiFiles>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// Generates a CA and a server certificate for [`DEFAULT_SERVER_NAMES`] and writes `ca.pem`,
    /// `server.pem` and `server.key` into `dir` (created if missing).
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if generation fails, [`Error::File`] if a file cannot be written.
    pub fn generate(dir: &Path) -> Result<Self> {
        Self::generate_with_names(dir, &[])
    }

    /// Like [`TestPki::generate`], with extra DNS names or IP addresses on the server certificate.
    ///
    /// # Errors
    ///
    /// As [`TestPki::generate`].
    pub fn generate_with_names(dir: &Path, extra_names: &[&str]) -> Result<Self> {
        let mut pki = Self::in_memory(extra_names)?;
        pki.write_to(dir)?;
        Ok(pki)
    }

    /// Generates the CA and server certificate without writing any file.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if an extra name is not a valid DNS name or address.
    pub fn in_memory(extra_names: &[&str]) -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(Error::Certificate)?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(Error::Certificate)?;
        ca_params.distinguished_name = name("SEG Testbed CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(Error::Certificate)?;

        let names: Vec<String> = DEFAULT_SERVER_NAMES
            .iter()
            .chain(extra_names)
            .map(|n| n.to_string())
            .collect();
        let (server_cert_pem, server_key_pem) = {
            let issuer = Issuer::from_params(&ca_params, &ca_key);
            leaf(&names, "exchange.test.local", |params, key| {
                params.signed_by(key, &issuer)
            })?
        };
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_key,
            ca_params,
            server_cert_pem,
            server_key_pem,
            files: None,
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`, creating it if needed.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the directory or a file cannot be written.
    pub fn write_to(&mut self, dir: &Path) -> Result<&PkiFiles> {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        write(&files.ca, &self.ca_pem)?;
        write(&files.server_cert, &self.server_cert_pem)?;
        write(&files.server_key, &self.server_key_pem)?;
        Ok(self.files.insert(files))
    }

    /// The files written by [`TestPki::generate`] or [`TestPki::write_to`], if any.
    pub fn files(&self) -> Option<&PkiFiles> {
        self.files.as_ref()
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate as PEM.
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// The server's private key as PKCS#8 PEM.
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    /// Issues another certificate signed by this CA, for other servers of a test (a proxy, a
    /// callback endpoint). Returns (certificate PEM, private key PEM).
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if a name is not a valid DNS name or address.
    pub fn issue_server_cert(&self, names: &[&str]) -> Result<(String, String)> {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let common = names.first().cloned().unwrap_or_else(|| "server".into());
        leaf(&names, &common, |params, key| {
            params.signed_by(key, &issuer)
        })
    }

    /// A rustls server configuration presenting the server certificate, offering ALPN `h2` and
    /// `http/1.1`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if rustls refuses the key (it should not).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        server_config_from_pem(&self.server_cert_pem, &self.server_key_pem)
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()).flatten() {
            // The CA was generated above; adding it cannot fail.
            let _ = roots.add(cert);
        }
        roots
    }
}

/// The OID of Microsoft's user principal name `otherName`, as rcgen spells it.
const UPN_OID: [u64; 10] = [1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

/// When a test client certificate is valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096.
    #[default]
    Current,
    /// During 2000 only.
    Expired,
    /// From 2090.
    NotYetValid,
}

/// What a test client certificate may be used for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientUsage {
    /// Key usage `digitalSignature`, extended key usage `clientAuth`: a proper client
    /// certificate.
    #[default]
    ClientAuth,
    /// Extended key usage `serverAuth` only.
    ServerAuthOnly,
    /// Key usage `keyEncipherment` only (no `digitalSignature`), extended key usage
    /// `clientAuth`.
    NoDigitalSignature,
}

/// How to make a test client certificate; [`ClientCertSpec::upn`] for a good one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCertSpec {
    /// The subject's common name.
    pub common_name: String,
    /// A UPN `otherName` in the subject alternative names.
    pub upn: Option<String>,
    /// An `rfc822Name` in the subject alternative names.
    pub email: Option<String>,
    /// Instead of `upn` and `email`: a subject alternative names extension whose one name is a
    /// UPN `otherName` with these bytes after its OID, verbatim (for hostile certificates).
    pub raw_upn_value: Option<Vec<u8>>,
    /// When it is valid.
    pub validity: Validity,
    /// What it may be used for.
    pub usage: ClientUsage,
}

impl ClientCertSpec {
    /// A proper client certificate naming `upn` in a UPN `otherName` (and as common name).
    pub fn upn(upn: &str) -> Self {
        ClientCertSpec {
            common_name: upn.to_owned(),
            upn: Some(upn.to_owned()),
            ..ClientCertSpec::default()
        }
    }
}

/// A client certificate issued by a [`TestPki`].
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate as PEM.
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate's serial number, for [`TestPki::crl_pem`].
    pub serial: u64,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// A rustls client configuration presenting this certificate and trusting `roots`, for
    /// [`crate::client::HttpClient::with_config`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPem`] or [`Error::Tls`] if rustls refuses the certificate or key.
    pub fn client_config(&self, roots: RootCertStore) -> Result<Arc<ClientConfig>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::InvalidPem(format!("unreadable certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::InvalidPem(format!("no private key in the PEM: {e}")))?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(Error::Tls)?;
        Ok(Arc::new(config))
    }
}

impl TestPki {
    /// Issues a client certificate as `spec` says, signed by this CA.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if rcgen refuses the names.
    pub fn issue_client_cert(&self, spec: &ClientCertSpec) -> Result<ClientCert> {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let key = KeyPair::generate().map_err(Error::Certificate)?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(Error::Certificate)?;
        params.distinguished_name = name(&spec.common_name);
        // Positive, below 2^63, so that it encodes the same way in the certificate and the CRL.
        let serial = rand::random::<u64>() >> 1;
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some(upn) = &spec.upn {
            params.subject_alt_names.push(SanType::OtherName((
                UPN_OID.to_vec(),
                OtherNameValue::Utf8String(upn.clone()),
            )));
        }
        if let Some(email) = &spec.email {
            let email = email.as_str().try_into().map_err(Error::Certificate)?;
            params.subject_alt_names.push(SanType::Rfc822Name(email));
        }
        if let Some(value) = &spec.raw_upn_value {
            params.subject_alt_names.clear();
            params.custom_extensions.push(raw_upn_san(value));
        }
        match spec.validity {
            Validity::Current => {}
            Validity::Expired => {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(2001, 1, 1);
            }
            Validity::NotYetValid => {
                params.not_before = date_time_ymd(2090, 1, 1);
                params.not_after = date_time_ymd(2100, 1, 1);
            }
        }
        let (key_usages, extended) = match spec.usage {
            ClientUsage::ClientAuth => (
                vec![KeyUsagePurpose::DigitalSignature],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            ClientUsage::ServerAuthOnly => (
                vec![KeyUsagePurpose::DigitalSignature],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            ClientUsage::NoDigitalSignature => (
                vec![KeyUsagePurpose::KeyEncipherment],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        };
        params.key_usages = key_usages;
        params.extended_key_usages = vec![extended];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(Error::Certificate)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A CRL signed by this CA revoking the certificates with `serials`, as PEM; valid from a
    /// day ago for a year.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if rcgen cannot sign it.
    pub fn crl_pem(&self, serials: &[u64]) -> Result<String> {
        self.crl(serials)?.pem().map_err(Error::Certificate)
    }

    /// [`TestPki::crl_pem`] as DER.
    ///
    /// # Errors
    ///
    /// As [`TestPki::crl_pem`].
    pub fn crl_der(&self, serials: &[u64]) -> Result<Vec<u8>> {
        Ok(self.crl(serials)?.der().to_vec())
    }

    fn crl(&self, serials: &[u64]) -> Result<rcgen::CertificateRevocationList> {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let this_update = (now - day).into();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: (now + 365 * day).into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&issuer).map_err(Error::Certificate)
    }
}

/// A subject alternative names extension holding one UPN `otherName` with `value` (what follows
/// the OID: normally `[0] EXPLICIT UTF8String`) verbatim.
fn raw_upn_san(value: &[u8]) -> CustomExtension {
    // DER of OID 1.3.6.1.4.1.311.20.2.3.
    const OID: [u8; 12] = [
        0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x14, 0x02, 0x03,
    ];
    let other_name = der_tlv(0xa0, &[&OID[..], value].concat());
    CustomExtension::from_oid_content(&[2, 5, 29, 17], der_tlv(0x30, &other_name))
}

/// A DER tag-length-value with a definite length.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A self-signed certificate not issued by any [`TestPki`], to play an untrusted upstream.
pub struct SelfSigned {
    /// The certificate as PEM.
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned").finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// A rustls server configuration presenting this certificate.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if rustls refuses the key (it should not).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        server_config_from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// Generates a self-signed server certificate for `names`.
///
/// # Errors
///
/// [`Error::Certificate`] if a name is not a valid DNS name or address.
pub fn self_signed(names: &[&str]) -> Result<SelfSigned> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let common = names
        .first()
        .cloned()
        .unwrap_or_else(|| "self-signed".into());
    let (cert_pem, key_pem) = leaf(&names, &common, |params, key| params.self_signed(key))?;
    Ok(SelfSigned { cert_pem, key_pem })
}

/// Builds a rustls server configuration from a PEM certificate chain and a PEM private key,
/// offering ALPN `h2` and `http/1.1`.
///
/// # Errors
///
/// [`Error::InvalidPem`] if either holds nothing usable, [`Error::Tls`] if rustls refuses them.
pub fn server_config_from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidPem(format!("unreadable certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidPem("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::InvalidPem(format!("no private key in the PEM: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a certificate chain and key from PEM files and builds a server configuration.
///
/// # Errors
///
/// [`Error::File`] if a file cannot be read, otherwise as [`server_config_from_pem`].
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    server_config_from_pem(&read(cert)?, &read(key)?)
}

fn leaf(
    names: &[String],
    common_name: &str,
    sign: impl FnOnce(
        &CertificateParams,
        &KeyPair,
    ) -> std::result::Result<rcgen::Certificate, rcgen::Error>,
) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(Error::Certificate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(Error::Certificate)?;
    params.distinguished_name = name(common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = sign(&params, &key).map_err(Error::Certificate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "SEG Testbed");
    dn
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_the_three_pem_files() {
        let dir = std::env::temp_dir().join(format!("seg-testbed-pki-{}", uuid::Uuid::new_v4()));
        let pki = TestPki::generate(&dir).unwrap();
        let files = pki.files().unwrap().clone();
        assert_eq!(read(&files.ca).unwrap(), pki.ca_pem());
        assert!(
            read(&files.server_cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(
            read(&files.server_key)
                .unwrap()
                .contains("BEGIN PRIVATE KEY")
        );
        assert!(server_config_from_files(&files.server_cert, &files.server_key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_root_store_holds_exactly_the_ca() {
        let pki = TestPki::in_memory(&["proxy.test.local"]).unwrap();
        assert_eq!(pki.root_store().len(), 1);
        assert!(pki.server_config().is_ok());
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        assert!(matches!(
            server_config_from_pem("nonsense", "nonsense"),
            Err(Error::InvalidPem(_))
        ));
        let untrusted = self_signed(&["untrusted.test.local"]).unwrap();
        assert!(untrusted.server_config().is_ok());
    }
}
