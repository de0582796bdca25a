//! The MS-SFU pre-authentication data that `rasn-kerberos` lacks: PA-FOR-USER (S4U2Self by
//! name, MS-SFU 2.2.1) and PA-S4U-X509-USER (MS-SFU 2.2.2).

use rasn::prelude::*;
use rasn_kerberos::{Checksum, KerberosString, PrincipalName, Realm};

use crate::KcdError;
use crate::asn1::{self, usage};
use crate::crypto::{self, Key};

/// The authentication package PA-FOR-USER names: always `Kerberos`.
pub const AUTH_PACKAGE: &str = "Kerberos";

/// PA-FOR-USER (padata-type 129): the user a service asks a ticket to itself for (S4U2Self).
///
/// ```text
/// PA-FOR-USER ::= SEQUENCE {
///    userName        [0] PrincipalName,
///    userRealm       [1] Realm,
///    cksum           [2] Checksum,
///    auth-package    [3] KerberosString }
/// ```
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
pub struct PaForUser {
    /// The user.
    #[rasn(tag(explicit(0)))]
    pub user_name: PrincipalName,
    /// The user's realm.
    #[rasn(tag(explicit(1)))]
    pub user_realm: Realm,
    /// HMAC-MD5 (`-138`) over [`pa_for_user_checksum_input`], keyed with the TGT session key.
    #[rasn(tag(explicit(2)))]
    pub cksum: Checksum,
    /// [`AUTH_PACKAGE`].
    #[rasn(tag(explicit(3)))]
    pub auth_package: KerberosString,
}

impl PaForUser {
    /// PA-FOR-USER for `user_name` in `user_realm`, with its checksum made with the session key
    /// of the service's TGT (key usage 17).
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] if the realm cannot be a Kerberos string.
    pub fn new(
        user_name: PrincipalName,
        user_realm: &str,
        tgt_session_key: &Key,
    ) -> Result<Self, KcdError> {
        let input = pa_for_user_checksum_input(&user_name, user_realm, AUTH_PACKAGE);
        let checksum = crypto::hmac_md5_checksum(tgt_session_key, usage::PA_FOR_USER_CKSUM, &input);
        Ok(Self {
            user_name,
            user_realm: asn1::kstring(user_realm)?,
            cksum: Checksum {
                r#type: checksum.cksumtype,
                checksum: checksum.value.into(),
            },
            auth_package: asn1::kstring(AUTH_PACKAGE)?,
        })
    }
}

/// What PA-FOR-USER's checksum covers (MS-SFU 2.2.1): the name type as four little-endian
/// bytes, then each name component, the realm and the auth package, all concatenated without
/// separators or lengths.
pub fn pa_for_user_checksum_input(
    user_name: &PrincipalName,
    user_realm: &str,
    auth_package: &str,
) -> Vec<u8> {
    let mut input = Vec::with_capacity(64);
    input.extend_from_slice(&user_name.r#type.to_le_bytes());
    for component in &user_name.string {
        input.extend_from_slice(component.as_bytes());
    }
    input.extend_from_slice(user_realm.as_bytes());
    input.extend_from_slice(auth_package.as_bytes());
    input
}

/// S4UUserID (MS-SFU 2.2.2): whom PA-S4U-X509-USER asks for.
///
/// ```text
/// S4UUserID ::= SEQUENCE {
///    nonce [0] UInt32,              -- the nonce in KDC-REQ-BODY
///    cname [1] PrincipalName OPTIONAL,
///    crealm [2] Realm,
///    subject-certificate [3] OCTET STRING OPTIONAL,
///    options [4] BIT STRING OPTIONAL,
///    ... }
/// ```
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
#[non_exhaustive]
pub struct S4uUserId {
    /// The nonce of the request body this is sent in.
    #[rasn(tag(explicit(0)))]
    pub nonce: u32,
    /// The user, when named.
    #[rasn(tag(explicit(1)))]
    pub cname: Option<PrincipalName>,
    /// The user's realm.
    #[rasn(tag(explicit(2)))]
    pub crealm: Realm,
    /// The user's certificate (DER), when the user is identified by it.
    #[rasn(tag(explicit(3)))]
    pub subject_certificate: Option<OctetString>,
    /// Options (bit 1: sign the reply; bit 2: the UPN is the user's).
    #[rasn(tag(explicit(4)))]
    pub options: Option<BitString>,
}

/// PA-S4U-X509-USER (padata-type 130, MS-SFU 2.2.2).
///
/// ```text
/// PA-S4U-X509-USER ::= SEQUENCE {
///    user-id [0] S4UUserID,
///    checksum [1] Checksum }
/// ```
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
pub struct PaS4uX509User {
    /// Whom the request is for.
    #[rasn(tag(explicit(0)))]
    pub user_id: S4uUserId,
    /// The checksum of the DER of `user_id` with the TGT session key (key usage 26).
    #[rasn(tag(explicit(1)))]
    pub checksum: Checksum,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> PrincipalName {
        asn1::principal_name(1, &["alice"]).unwrap()
    }

    #[test]
    fn checksum_input_is_le_name_type_then_concatenated_strings() {
        let input = pa_for_user_checksum_input(&alice(), "TEST.LOCAL", "Kerberos");
        assert_eq!(input, b"\x01\x00\x00\x00aliceTEST.LOCALKerberos");
        let upn = asn1::principal_name(10, &["alice@corp.example"]).unwrap();
        let input = pa_for_user_checksum_input(&upn, "CORP.EXAMPLE", "Kerberos");
        assert_eq!(
            input,
            b"\x0a\x00\x00\x00alice@corp.exampleCORP.EXAMPLEKerberos"
        );
    }

    #[test]
    fn pa_for_user_round_trips_with_explicit_context_tags() {
        let value = PaForUser {
            user_name: alice(),
            user_realm: asn1::kstring("TEST.LOCAL").unwrap(),
            cksum: Checksum {
                r#type: -138,
                checksum: vec![7u8; 16].into(),
            },
            auth_package: asn1::kstring("Kerberos").unwrap(),
        };
        let der = rasn::der::encode(&value).unwrap();
        // SEQUENCE, then [0] { SEQUENCE { [0] INTEGER 1, [1] SEQUENCE OF GeneralString } }.
        assert_eq!(&der[..4], &[0x30, der[1], 0xa0, der[3]]);
        assert_eq!(&der[4..9], &[0x30, der[5], 0xa0, 0x03, 0x02]);
        let checksum_tlv = [0xa2u8, 0x1c, 0x30, 0x1a, 0xa0, 0x04, 0x02, 0x02, 0xff, 0x76];
        assert!(der.windows(checksum_tlv.len()).any(|w| w == checksum_tlv));
        assert_eq!(rasn::der::decode::<PaForUser>(&der).unwrap(), value);
    }

    #[test]
    fn s4u_user_id_round_trips() {
        let value = PaS4uX509User {
            user_id: S4uUserId {
                nonce: 42,
                cname: Some(alice()),
                crealm: asn1::kstring("TEST.LOCAL").unwrap(),
                subject_certificate: None,
                options: Some(BitString::from_slice(&[0x20, 0, 0, 0])),
            },
            checksum: Checksum {
                r#type: 16,
                checksum: vec![1u8; 12].into(),
            },
        };
        let der = rasn::der::encode(&value).unwrap();
        assert_eq!(rasn::der::decode::<PaS4uX509User>(&der).unwrap(), value);
    }
}
