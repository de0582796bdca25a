//! The GSS-API Kerberos initiator token (RFC 4121 4.1): an AP-REQ whose authenticator carries
//! the 0x8003 checksum with the channel bindings (RFC 5929 `tls-server-end-point` for
//! Exchange's Extended Protection).

use std::time::SystemTime;

use md5::{Digest as _, Md5};
use rasn::prelude::*;
use rasn_kerberos::Checksum;
use sha2::{Sha256, Sha384, Sha512};

use crate::KcdError;
use crate::ap_req::{self, AuthenticatorParts};
use crate::asn1::{ap_option, usage};
use crate::kdc::Credential;
use crate::mutual::TokenContext;
use crate::spnego;

/// The authenticator checksum type of the Kerberos GSS mechanism (RFC 4121 4.1.1).
pub const GSS_CHECKSUM_TYPE: i32 = 0x8003;
/// GSS_C_MUTUAL_FLAG.
pub const GSS_C_MUTUAL_FLAG: u32 = 2;
/// GSS_C_SEQUENCE_FLAG.
pub const GSS_C_SEQUENCE_FLAG: u32 = 8;
/// GSS_C_CONF_FLAG.
pub const GSS_C_CONF_FLAG: u32 = 16;
/// GSS_C_INTEG_FLAG.
pub const GSS_C_INTEG_FLAG: u32 = 32;
/// The flags the gateway asks for: mutual authentication, confidentiality, integrity and
/// sequencing, as Windows clients do for HTTP. With mutual authentication the server answers
/// with an AP-REP that proves it read the ticket ([`crate::verify_mutual`]).
pub const CONTEXT_FLAGS: u32 =
    GSS_C_MUTUAL_FLAG | GSS_C_CONF_FLAG | GSS_C_INTEG_FLAG | GSS_C_SEQUENCE_FLAG;

/// The prefix of RFC 5929's channel binding for the server's certificate.
const TLS_SERVER_END_POINT: &[u8] = b"tls-server-end-point:";

/// Channel bindings (RFC 2744 3.11 `gss_channel_bindings_struct`) with empty addresses, as
/// HTTP clients send them: only the application data is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelBindings {
    application_data: Vec<u8>,
}

impl ChannelBindings {
    /// Bindings whose application data is `application_data` as given.
    pub fn new(application_data: impl Into<Vec<u8>>) -> Self {
        Self {
            application_data: application_data.into(),
        }
    }

    /// RFC 5929's `tls-server-end-point` binding from the hash of the server certificate
    /// (see [`tls_server_end_point_hash`]): application data `tls-server-end-point:` + hash.
    pub fn tls_server_end_point(certificate_hash: &[u8]) -> Self {
        let mut data = TLS_SERVER_END_POINT.to_vec();
        data.extend_from_slice(certificate_hash);
        Self::new(data)
    }

    /// The `tls-server-end-point` binding of the server certificate `certificate_der`.
    ///
    /// # Errors
    ///
    /// As [`tls_server_end_point_hash`].
    pub fn from_server_certificate(certificate_der: &[u8]) -> Result<Self, KcdError> {
        Ok(Self::tls_server_end_point(&tls_server_end_point_hash(
            certificate_der,
        )?))
    }

    /// The application data.
    pub fn application_data(&self) -> &[u8] {
        &self.application_data
    }

    /// The 16-byte `Bnd` field of the 0x8003 checksum: MD5 over the initiator address type and
    /// address, the acceptor's, then the application data, each address and the data preceded
    /// by its length, all integers 4 bytes little-endian (as MIT's and Windows' GSS do).
    pub fn md5(&self) -> [u8; 16] {
        let mut hasher = Md5::new();
        // Initiator address type and empty address, acceptor address type and empty address.
        hasher.update([0u8; 16]);
        let len = u32::try_from(self.application_data.len()).unwrap_or(u32::MAX);
        hasher.update(len.to_le_bytes());
        hasher.update(&self.application_data);
        hasher.finalize().into()
    }
}

/// The hash of a server certificate for RFC 5929's `tls-server-end-point`: the certificate's
/// signature hash, with MD5 and SHA-1 replaced by SHA-256.
///
/// # Errors
///
/// [`KcdError::InvalidName`] (naming the certificate) if it is not a DER certificate or its
/// signature algorithm has no defined hash (RSASSA-PSS, EdDSA): compute the hash yourself and
/// use [`ChannelBindings::tls_server_end_point`].
pub fn tls_server_end_point_hash(certificate_der: &[u8]) -> Result<Vec<u8>, KcdError> {
    let refuse = |reason: String| KcdError::InvalidName {
        name: "server certificate".into(),
        reason,
    };
    let certificate = rasn::der::decode::<Certificate>(certificate_der)
        .map_err(|e| refuse(format!("not a DER certificate: {e}")))?;
    let arcs: &[u32] = &certificate.signature_algorithm.algorithm;
    const RSA: [u32; 6] = [1, 2, 840, 113_549, 1, 1];
    const ECDSA: [u32; 5] = [1, 2, 840, 10_045, 4];
    const DSA_SHA2: [u32; 8] = [2, 16, 840, 1, 101, 3, 4, 3];
    enum Hash {
        Sha256,
        Sha384,
        Sha512,
    }
    let hash = match arcs {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, sha224WithRSA
        [rsa @ .., 4 | 5 | 11 | 14] if rsa == RSA => Hash::Sha256,
        [rsa @ .., 12] if rsa == RSA => Hash::Sha384,
        [rsa @ .., 13] if rsa == RSA => Hash::Sha512,
        // ecdsa-with-SHA1, ecdsa-with-SHA224/256
        [ec @ .., 1] if ec == ECDSA => Hash::Sha256,
        [ec @ .., 3, 1 | 2] if ec == ECDSA => Hash::Sha256,
        [ec @ .., 3, 3] if ec == ECDSA => Hash::Sha384,
        [ec @ .., 3, 4] if ec == ECDSA => Hash::Sha512,
        // dsa-with-sha1
        [1, 2, 840, 10_040, 4, 3] => Hash::Sha256,
        [dsa @ .., 1 | 2] if dsa == DSA_SHA2 => Hash::Sha256,
        _ => {
            return Err(refuse(format!(
                "no tls-server-end-point hash for signature algorithm {arcs:?}"
            )));
        }
    };
    Ok(match hash {
        Hash::Sha256 => Sha256::digest(certificate_der).to_vec(),
        Hash::Sha384 => Sha384::digest(certificate_der).to_vec(),
        Hash::Sha512 => Sha512::digest(certificate_der).to_vec(),
    })
}

/// Just enough of X.509 to read the signature algorithm.
#[derive(AsnType, Decode, Encode, Debug)]
struct Certificate {
    tbs_certificate: Any,
    signature_algorithm: AlgorithmIdentifier,
    signature: BitString,
}

#[derive(AsnType, Decode, Encode, Debug)]
struct AlgorithmIdentifier {
    algorithm: ObjectIdentifier,
    parameters: Option<Any>,
}

/// The 0x8003 checksum value (RFC 4121 4.1.1): `Lgth` = 16, `Bnd`, `Flags`, all little-endian,
/// without delegation (the gateway never forwards the user's TGT).
pub fn gss_checksum(bindings: Option<&ChannelBindings>, flags: u32) -> Vec<u8> {
    let mut value = Vec::with_capacity(24);
    value.extend_from_slice(&16u32.to_le_bytes());
    // No bindings: 16 zero bytes, which acceptors treat as "none".
    value.extend_from_slice(&bindings.map(ChannelBindings::md5).unwrap_or([0; 16]));
    value.extend_from_slice(&flags.to_le_bytes());
    value
}

/// The Kerberos mechanism's initial context token (RFC 4121 4.1): framed with the Kerberos
/// OID, token id `01 00`, then the AP-REQ (mutual authentication required) whose
/// authenticator carries the 0x8003 checksum and `seq_number`; and what checks the server's
/// AP-REP to it; for the service ticket `credential`.
pub(crate) fn krb5_initial_token(
    credential: &Credential,
    bindings: Option<&ChannelBindings>,
    seq_number: u32,
    now: SystemTime,
) -> Result<(Vec<u8>, TokenContext), KcdError> {
    let (ap_req, ctime, cusec) = ap_req::build_timed(
        &credential.ticket_der,
        &credential.sealing_key(usage::AP_REQ_AUTHENTICATOR),
        AuthenticatorParts {
            crealm: &credential.crealm,
            cname: &credential.cname,
            cksum: Some(Checksum {
                r#type: GSS_CHECKSUM_TYPE,
                checksum: gss_checksum(bindings, CONTEXT_FLAGS).into(),
            }),
            seq_number: Some(seq_number),
        },
        now,
        &[ap_option::MUTUAL_REQUIRED],
    )?;
    let token = spnego::frame_krb5_ap_req(&ap_req);
    Ok((
        token,
        TokenContext::new(credential.session_key.clone(), ctime, cusec),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bindings_checksum_is_lgth_zeros_flags() {
        let value = gss_checksum(None, 0x38);
        let mut expected = vec![16, 0, 0, 0];
        expected.extend_from_slice(&[0; 16]);
        expected.extend_from_slice(&[0x38, 0, 0, 0]);
        assert_eq!(value, expected);
        // Mutual authentication too: 0x3a.
        assert_eq!(gss_checksum(None, CONTEXT_FLAGS)[20], 0x3a);
    }

    #[test]
    fn channel_binding_md5_matches_hand_computed_struct() {
        let hash = [0xabu8; 32];
        let bindings = ChannelBindings::tls_server_end_point(&hash);
        // The struct by hand: four zero u32 (two address types and two empty addresses),
        // the application data length 21 + 32 = 53 = 0x35, then the data.
        let mut by_hand = vec![0u8; 16];
        by_hand.extend_from_slice(&[0x35, 0, 0, 0]);
        by_hand.extend_from_slice(b"tls-server-end-point:");
        by_hand.extend_from_slice(&hash);
        let expected: [u8; 16] = Md5::digest(&by_hand).into();
        assert_eq!(bindings.md5(), expected);
        assert_eq!(&gss_checksum(Some(&bindings), 0)[4..20], &expected);
    }

    #[test]
    fn channel_binding_md5_of_empty_data_is_a_fixed_value() {
        // MD5 of 20 zero bytes, computed independently (`head -c 20 /dev/zero | md5sum`).
        let md5 = ChannelBindings::new(Vec::new()).md5();
        let hex: String = md5.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "441018525208457705bf09a8ee3c1093");
    }

    #[test]
    fn an_ecdsa_sha256_certificate_hashes_with_sha256() {
        let certified = rcgen::generate_simple_self_signed(vec!["exchange.test.local".into()])
            .expect("rcgen makes a certificate");
        let der = certified.cert.der().to_vec();
        let expected = Sha256::digest(&der).to_vec();
        assert_eq!(tls_server_end_point_hash(&der).unwrap(), expected);
        let bindings = ChannelBindings::from_server_certificate(&der).unwrap();
        assert_eq!(&bindings.application_data()[..21], b"tls-server-end-point:");
        assert_eq!(&bindings.application_data()[21..], &expected[..]);
    }

    #[test]
    fn a_certificate_that_is_not_der_is_refused() {
        assert!(tls_server_end_point_hash(b"not a certificate").is_err());
        assert!(tls_server_end_point_hash(&[]).is_err());
    }
}
