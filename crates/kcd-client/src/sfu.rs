//! The MS-SFU pre-authentication data that `rasn-kerberos` lacks: PA-FOR-USER (S4U2Self by
//! name, MS-SFU 2.2.1) and PA-S4U-X509-USER (MS-SFU 2.2.2).
//!
//! S4U2Self sends both, as MIT krb5's client does: PA-FOR-USER for KDCs that know only it
//! (Heimdal, hence Samba AD), PA-S4U-X509-USER for those that prefer it (Active Directory,
//! MIT). A KDC that reads PA-S4U-X509-USER answers with one of its own, echoing the nonce and
//! the user under a checksum keyed with the TGT session key;
//! [`PaS4uX509User::verify_reply`] checks that answer. The reply's `cname` itself is
//! outside every checksum and every encryption, so the signed echo is what proves that the
//! KDC issued the ticket for the user asked for.

use md4::{Digest as _, Md4};
use rasn::prelude::*;
use rasn_kerberos::{Checksum, KerberosString, PrincipalName, Realm};
use subtle::ConstantTimeEq as _;

use crate::asn1::{self, usage};
use crate::crypto::{self, EncType, Key};
use crate::{KcdError, UserName};

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
    /// Options, a 32-bit field ([`S4uUserId::option_bits`]): this crate sets
    /// [`S4U_OPTION_USE_REPLY_KEY_USAGE`], as MIT does.
    #[rasn(tag(explicit(4)))]
    pub options: Option<BitString>,
}

impl S4uUserId {
    /// The options as the 32-bit number MS-SFU gives their values in (`0x20000000` is
    /// [`S4U_OPTION_USE_REPLY_KEY_USAGE`]); 0 when absent. Bits beyond the 32nd are ignored.
    pub fn option_bits(&self) -> u32 {
        let Some(options) = &self.options else {
            return 0;
        };
        (0..32).fold(0u32, |value, bit| {
            let set = options.get(bit).is_some_and(|b| *b);
            value | (u32::from(set) << (31 - bit))
        })
    }
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

/// PA-S4U-X509-USER's padata type (MS-SFU 2.2.2).
pub const PA_S4U_X509_USER: i32 = 130;

/// Key usage of the request's PA-S4U-X509-USER checksum, and of the reply's when the KDC did not
/// take up [`S4U_OPTION_USE_REPLY_KEY_USAGE`] (MIT `KRB5_KEYUSAGE_PA_S4U_X509_USER_REQUEST`).
pub const KEY_USAGE_S4U_X509_USER_REQUEST: u32 = 26;

/// Key usage of the reply's PA-S4U-X509-USER checksum when the KDC took up
/// [`S4U_OPTION_USE_REPLY_KEY_USAGE`] (MIT `KRB5_KEYUSAGE_PA_S4U_X509_USER_REPLY`).
pub const KEY_USAGE_S4U_X509_USER_REPLY: u32 = 27;

/// `KERB_S4U_OPTIONS_use_reply_key_usage` (MS-SFU 2.2.2): asks the KDC to sign its answer with
/// key usage 27, so that a request cannot be reflected as a reply. A KDC that understands it
/// echoes it; one that does not signs with key usage 26 and leaves it out.
pub const S4U_OPTION_USE_REPLY_KEY_USAGE: u32 = 0x2000_0000;

/// rsa-md4 (RFC 3961 6.2.6), unkeyed: MS-SFU 2.2.2's checksum for an RC4 session key, which has
/// no mandatory keyed checksum of its own. MIT sends it too.
pub const CKSUMTYPE_RSA_MD4: i32 = 2;

/// The checksum type of PA-S4U-X509-USER for a session key of `etype` (MS-SFU 2.2.2): the
/// etype's mandatory checksum (hmac-sha1-96-aes256/128, hmac-sha384-192/sha256-128), and
/// [`CKSUMTYPE_RSA_MD4`] for RC4.
pub fn s4u_checksum_type(etype: EncType) -> i32 {
    match etype {
        EncType::Rc4Hmac => CKSUMTYPE_RSA_MD4,
        other => other.checksum_type(),
    }
}

/// What the KDC's answer to PA-S4U-X509-USER showed ([`PaS4uX509User::verify_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum S4uReply {
    /// The KDC answered with PA-S4U-X509-USER whose checksum verified with the session key,
    /// whose nonce is the request's and whose user is the one asked for: it vouches for this
    /// user.
    Verified {
        /// The user the KDC vouches for.
        cname: PrincipalName,
        /// The user's realm.
        crealm: Realm,
        /// Whether it signed with key usage 27 ([`S4U_OPTION_USE_REPLY_KEY_USAGE`] echoed).
        reply_key_usage: bool,
    },
    /// The reply carries no PA-S4U-X509-USER: a KDC that reads only PA-FOR-USER (Heimdal and
    /// Samba AD) answered. MIT's client takes this for a tampered reply with AES keys; this
    /// crate accepts it, as such a KDC's reply never has more protection than this.
    NotAnswered,
}

impl PaS4uX509User {
    /// PA-S4U-X509-USER for `user_name` in `user_realm` in a TGS-REQ whose body has `nonce`,
    /// with [`S4U_OPTION_USE_REPLY_KEY_USAGE`] set and its checksum (key usage 26,
    /// [`s4u_checksum_type`]) made with the session key of the service's TGT.
    ///
    /// `subject_certificate` is the user's certificate (DER) when the user is to be identified
    /// by it: MS-SFU's certificate-based S4U2Self. The gateway's own S4U2Self names the user and
    /// sends none: MIT's KDC refuses a certificate unless its database maps certificates.
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] if the realm cannot be a Kerberos string.
    pub fn new(
        user_name: PrincipalName,
        user_realm: &str,
        subject_certificate: Option<&[u8]>,
        nonce: u32,
        tgt_session_key: &Key,
    ) -> Result<Self, KcdError> {
        let user_id = S4uUserId {
            nonce,
            cname: Some(user_name),
            crealm: asn1::kstring(user_realm)?,
            subject_certificate: subject_certificate.map(OctetString::from_slice),
            options: Some(BitString::from_slice(
                &S4U_OPTION_USE_REPLY_KEY_USAGE.to_be_bytes(),
            )),
        };
        let der = asn1::encode(&user_id, "S4UUserID")?;
        let checksum = s4u_checksum(tgt_session_key, KEY_USAGE_S4U_X509_USER_REQUEST, &der);
        Ok(Self { user_id, checksum })
    }

    /// [`Self::new`] for `user` as S4U2Self names the user: an enterprise name in
    /// `service_realm` (the realm of the gateway's KDC, which resolves it), a principal name in
    /// its own realm.
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] if the name or realm cannot be Kerberos strings.
    pub fn for_user(
        user: &UserName,
        service_realm: &str,
        subject_certificate: Option<&[u8]>,
        nonce: u32,
        tgt_session_key: &Key,
    ) -> Result<Self, KcdError> {
        Self::new(
            user.principal_name()?,
            user.realm(service_realm),
            subject_certificate,
            nonce,
            tgt_session_key,
        )
    }

    /// Checks the KDC's answer to this request (`self`): `reply` is the value of the
    /// PA-S4U-X509-USER in the TGS-REP's padata, `encrypted` that of the one in the encrypted
    /// part's `encrypted-pa-data`, each if present. As MIT's `verify_s4u2self_reply`:
    ///
    /// - the reply's checksum must verify with the session key over the DER of its user id,
    ///   with key usage 27 if it sets [`S4U_OPTION_USE_REPLY_KEY_USAGE`], else 26; a keyed
    ///   checksum unless the session key is RC4;
    /// - its nonce must be the request's, and its user the one asked for (name components
    ///   exactly, realm without regard to case, which MS-SFU says is not case-sensitive);
    /// - with an RC4 session key, whose rsa-md4 checksum anyone can compute, the encrypted
    ///   copy must hold the request's checksum followed by the reply's (MS-SFU 2.2.2); a KDC
    ///   that took up key usage 27 must have sent it.
    ///
    /// No answer at all is [`S4uReply::NotAnswered`], unless the encrypted part shows that
    /// there was one (it was stripped on the way).
    ///
    /// # Errors
    ///
    /// [`KcdError::MalformedReply`] for an answer that does not decode, does not verify, or
    /// does not match the request: the reply was altered on its way, or is for another
    /// request.
    pub fn verify_reply(
        &self,
        tgt_session_key: &Key,
        reply: Option<&[u8]>,
        encrypted: Option<&[u8]>,
    ) -> Result<S4uReply, KcdError> {
        let Some(reply) = reply else {
            return match encrypted {
                Some(_) => Err(KcdError::malformed(
                    "the reply's encrypted part answers PA-S4U-X509-USER but its padata does not: the answer was stripped",
                )),
                None => Ok(S4uReply::NotAnswered),
            };
        };
        let answer: PaS4uX509User = asn1::decode(reply, "PA-S4U-X509-USER")?;
        let id = &answer.user_id;
        if id.nonce != self.user_id.nonce {
            return Err(KcdError::malformed(
                "the KDC's PA-S4U-X509-USER is for another request (nonce)",
            ));
        }
        let reply_key_usage = id.option_bits() & S4U_OPTION_USE_REPLY_KEY_USAGE != 0;
        let key_usage = if reply_key_usage {
            KEY_USAGE_S4U_X509_USER_REPLY
        } else {
            KEY_USAGE_S4U_X509_USER_REQUEST
        };
        // The checksum covers the user id as the KDC encoded it: the bytes as received first,
        // then (as MIT's KDC does for requests) rasn's DER of what they decoded to.
        let verified = user_id_der(reply).is_some_and(|der| {
            verify_s4u_checksum(tgt_session_key, key_usage, der, &answer.checksum)
        }) || asn1::encode(id, "S4UUserID").is_ok_and(|der| {
            verify_s4u_checksum(tgt_session_key, key_usage, &der, &answer.checksum)
        });
        if !verified {
            return Err(KcdError::malformed(
                "the checksum of the KDC's PA-S4U-X509-USER does not verify with the session key: the reply was altered",
            ));
        }
        let Some(cname) = id.cname.clone() else {
            return Err(KcdError::malformed(
                "the KDC's PA-S4U-X509-USER names no user",
            ));
        };
        let same_user = match &self.user_id.cname {
            Some(asked) => asn1::same_name(asked, &cname),
            // Identified by certificate alone: the KDC names whom it mapped the certificate to.
            None => true,
        };
        let same_realm = id
            .crealm
            .as_bytes()
            .eq_ignore_ascii_case(self.user_id.crealm.as_bytes());
        if !same_user || !same_realm {
            return Err(KcdError::malformed(format!(
                "the KDC's PA-S4U-X509-USER vouches for {}@{}, not for the user asked for",
                asn1::name_text(&cname),
                asn1::text(&id.crealm)
            )));
        }
        if tgt_session_key.etype() == EncType::Rc4Hmac {
            match encrypted {
                Some(both) => {
                    let expected = [
                        self.checksum.checksum.as_ref(),
                        answer.checksum.checksum.as_ref(),
                    ]
                    .concat();
                    if !bool::from(expected.ct_eq(both)) {
                        return Err(KcdError::malformed(
                            "the encrypted copy of the PA-S4U-X509-USER checksums does not match: the reply was altered",
                        ));
                    }
                }
                None if reply_key_usage => {
                    return Err(KcdError::malformed(
                        "the KDC signed PA-S4U-X509-USER with key usage 27 but sent no encrypted copy of the checksums, which an RC4 session key needs",
                    ));
                }
                None => {}
            }
        }
        Ok(S4uReply::Verified {
            cname,
            crealm: id.crealm.clone(),
            reply_key_usage,
        })
    }
}

/// PA-S4U-X509-USER's checksum of `data`: [`s4u_checksum_type`] of the key's etype.
fn s4u_checksum(key: &Key, usage: u32, data: &[u8]) -> Checksum {
    let checksum = match key.etype() {
        EncType::Rc4Hmac => crypto::Checksum {
            cksumtype: CKSUMTYPE_RSA_MD4,
            value: Md4::digest(data).to_vec(),
        },
        _ => key.checksum(usage, data),
    };
    Checksum {
        r#type: checksum.cksumtype,
        checksum: checksum.value.into(),
    }
}

/// Whether `checksum` is PA-S4U-X509-USER's checksum of `data`: a keyed checksum the key
/// verifies, or, with an RC4 key only, rsa-md4 (compared in constant time).
fn verify_s4u_checksum(key: &Key, usage: u32, data: &[u8], checksum: &Checksum) -> bool {
    if checksum.r#type == CKSUMTYPE_RSA_MD4 {
        return key.etype() == EncType::Rc4Hmac
            && bool::from(Md4::digest(data)[..].ct_eq(&checksum.checksum));
    }
    let checksum = crypto::Checksum {
        cksumtype: checksum.r#type,
        value: checksum.checksum.to_vec(),
    };
    key.verify_checksum(usage, data, &checksum).is_ok()
}

/// The DER of the user id (`[0]`) of an encoded PA-S4U-X509-USER, as received; `None` unless
/// it is a SEQUENCE whose first field is `[0]` holding exactly one SEQUENCE.
fn user_id_der(pa: &[u8]) -> Option<&[u8]> {
    let (0x30, fields, _) = tlv(pa)? else {
        return None;
    };
    let (0xa0, user_id, _) = tlv(fields)? else {
        return None;
    };
    match tlv(user_id)? {
        (0x30, _, len) if len == user_id.len() => Some(user_id),
        _ => None,
    }
}

/// The first DER element of `bytes`: its tag byte, its contents and its whole length; `None`
/// for a multi-byte tag, an indefinite or oversized length, or contents cut short.
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let tag = *bytes.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *bytes.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let len = bytes
            .get(2..2 + count)?
            .iter()
            .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
        (len, 2 + count)
    };
    let end = header.checked_add(len)?;
    Some((tag, bytes.get(header..end)?, end))
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

    use crate::crypto::test_util::hex;

    const NONCE: u32 = 0x1234_5678;

    fn aes_key() -> Key {
        Key::new(EncType::Aes256CtsHmacSha196, &[0x5a; 32]).unwrap()
    }

    fn request(key: &Key) -> PaS4uX509User {
        PaS4uX509User::new(alice(), "TEST.LOCAL", None, NONCE, key).unwrap()
    }

    /// The KDC's answer as MIT's `kdc_make_s4u2self_rep` makes it: the request's nonce and user,
    /// its options masked to use-reply-key-usage, a checksum of the request's type with usage
    /// 27 (26 without the option). `adjust` changes the user id before it is signed.
    fn answer(
        request: &PaS4uX509User,
        key: &Key,
        adjust: impl FnOnce(&mut S4uUserId),
    ) -> (PaS4uX509User, Vec<u8>) {
        let options = request.user_id.option_bits() & S4U_OPTION_USE_REPLY_KEY_USAGE;
        let mut user_id = S4uUserId {
            nonce: request.user_id.nonce,
            cname: request.user_id.cname.clone(),
            crealm: request.user_id.crealm.clone(),
            subject_certificate: None,
            options: (options != 0).then(|| BitString::from_slice(&options.to_be_bytes())),
        };
        adjust(&mut user_id);
        let usage = if user_id.option_bits() & S4U_OPTION_USE_REPLY_KEY_USAGE != 0 {
            KEY_USAGE_S4U_X509_USER_REPLY
        } else {
            KEY_USAGE_S4U_X509_USER_REQUEST
        };
        let der = rasn::der::encode(&user_id).unwrap();
        let answer = PaS4uX509User {
            user_id,
            checksum: s4u_checksum(key, usage, &der),
        };
        let encoded = rasn::der::encode(&answer).unwrap();
        (answer, encoded)
    }

    fn is_tampered(result: Result<S4uReply, KcdError>, what: &str) {
        match result {
            Err(KcdError::MalformedReply(reason)) => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected a malformed reply ({what}), got {other:?}"),
        }
    }

    #[test]
    fn the_user_id_is_encoded_as_mits_encoder_does() {
        let sent = request(&aes_key());

        // SEQUENCE { [0] INTEGER nonce, [1] PrincipalName, [2] Realm, [4] BIT STRING (32 bits) },
        // no [3] without a certificate (asn1_k_encode.c s4u_userid_optional).
        let expected = hex("3033 a006 0204 12345678
                  a112 3010 a003 020101 a109 3007 1b05 616c696365
                  a20c 1b0a 544553542e4c4f43414c
                  a407 0305 00 20000000");
        assert_eq!(rasn::der::encode(&sent.user_id).unwrap(), expected);
        assert_eq!(
            user_id_der(&rasn::der::encode(&sent).unwrap()),
            Some(&expected[..])
        );
    }

    #[test]
    fn the_request_checksum_is_the_session_keys_mandatory_one_with_key_usage_26() {
        for etype in [
            EncType::Aes128CtsHmacSha196,
            EncType::Aes256CtsHmacSha196,
            EncType::Aes128CtsHmacSha256128,
            EncType::Aes256CtsHmacSha384192,
        ] {
            let key = Key::random(etype);
            let sent = request(&key);
            let der = rasn::der::encode(&sent.user_id).unwrap();
            assert_eq!(sent.checksum.r#type, etype.checksum_type());
            let checksum = crypto::Checksum {
                cksumtype: sent.checksum.r#type,
                value: sent.checksum.checksum.to_vec(),
            };
            key.verify_checksum(26, &der, &checksum).unwrap();
            assert!(key.verify_checksum(27, &der, &checksum).is_err());
        }
    }

    #[test]
    fn with_an_rc4_session_key_the_request_checksum_is_rsa_md4() {
        let key = Key::random(EncType::Rc4Hmac);
        // RFC 1320's test vector.
        assert_eq!(
            s4u_checksum(&key, 26, b"abc").checksum.to_vec(),
            hex("a448017aaf21d8525fc10ae87aa6729d")
        );
        let sent = request(&key);
        let der = rasn::der::encode(&sent.user_id).unwrap();
        assert_eq!(sent.checksum.r#type, CKSUMTYPE_RSA_MD4);
        assert_eq!(sent.checksum.checksum.to_vec(), Md4::digest(&der).to_vec());
    }

    #[test]
    fn a_certificate_is_carried_as_subject_certificate() {
        let sent =
            PaS4uX509User::new(alice(), "TEST.LOCAL", Some(b"\x30\x00"), 1, &aes_key()).unwrap();
        assert_eq!(
            sent.user_id.subject_certificate.as_deref(),
            Some(&b"\x30\x00"[..])
        );
    }

    #[test]
    fn the_kdcs_signed_echo_verifies() {
        let key = aes_key();
        let sent = request(&key);
        let (_, reply) = answer(&sent, &key, |_| {});

        let verified = sent.verify_reply(&key, Some(&reply), None).unwrap();

        assert_eq!(
            verified,
            S4uReply::Verified {
                cname: alice(),
                crealm: asn1::kstring("TEST.LOCAL").unwrap(),
                reply_key_usage: true,
            }
        );
    }

    #[test]
    fn a_kdc_that_ignores_the_option_signs_with_key_usage_26_and_is_accepted() {
        let key = aes_key();
        let sent = request(&key);
        let (_, reply) = answer(&sent, &key, |id| id.options = None);

        let verified = sent.verify_reply(&key, Some(&reply), None).unwrap();

        assert!(matches!(
            verified,
            S4uReply::Verified {
                reply_key_usage: false,
                ..
            }
        ));
    }

    #[test]
    fn a_realm_in_another_case_is_the_same_realm() {
        let key = aes_key();
        let sent = request(&key);
        let (_, reply) = answer(&sent, &key, |id| {
            id.crealm = asn1::kstring("test.local").unwrap();
        });

        assert!(sent.verify_reply(&key, Some(&reply), None).is_ok());
    }

    #[test]
    fn an_altered_checksum_is_a_tampered_reply() {
        let key = aes_key();
        let sent = request(&key);
        let (_, mut reply) = answer(&sent, &key, |_| {});
        let last = reply.len() - 1;
        reply[last] ^= 1;

        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "does not verify",
        );
    }

    #[test]
    fn an_altered_user_id_is_a_tampered_reply() {
        let key = aes_key();
        let sent = request(&key);
        let (signed, _) = answer(&sent, &key, |_| {});
        // Bob's name under the checksum made for alice's.
        let mut forged = signed;
        forged.user_id.cname = Some(asn1::principal_name(1, &["bob"]).unwrap());
        let reply = rasn::der::encode(&forged).unwrap();

        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "does not verify",
        );
    }

    #[test]
    fn the_answer_of_another_key_or_usage_is_a_tampered_reply() {
        let key = aes_key();
        let sent = request(&key);
        let other = Key::new(EncType::Aes256CtsHmacSha196, &[0xa5; 32]).unwrap();
        let (_, reply) = answer(&sent, &other, |_| {});
        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "does not verify",
        );
        // The request reflected back: signed with usage 26 but claiming 27.
        let request_der = rasn::der::encode(&sent).unwrap();
        is_tampered(
            sent.verify_reply(&key, Some(&request_der), None),
            "does not verify",
        );
    }

    #[test]
    fn a_signed_answer_for_another_nonce_or_user_is_refused() {
        let key = aes_key();
        let sent = request(&key);
        let (_, other_nonce) = answer(&sent, &key, |id| id.nonce = NONCE + 1);
        is_tampered(sent.verify_reply(&key, Some(&other_nonce), None), "nonce");
        let (_, bob) = answer(&sent, &key, |id| {
            id.cname = Some(asn1::principal_name(1, &["bob"]).unwrap());
        });
        is_tampered(sent.verify_reply(&key, Some(&bob), None), "bob@TEST.LOCAL");
        let (_, other_realm) = answer(&sent, &key, |id| {
            id.crealm = asn1::kstring("EVIL.LOCAL").unwrap();
        });
        is_tampered(
            sent.verify_reply(&key, Some(&other_realm), None),
            "EVIL.LOCAL",
        );
        let (_, nobody) = answer(&sent, &key, |id| id.cname = None);
        is_tampered(
            sent.verify_reply(&key, Some(&nobody), None),
            "names no user",
        );
    }

    #[test]
    fn an_unkeyed_checksum_is_refused_with_an_aes_session_key() {
        let key = aes_key();
        let sent = request(&key);
        let (signed, _) = answer(&sent, &key, |_| {});
        let der = rasn::der::encode(&signed.user_id).unwrap();
        let forged = PaS4uX509User {
            checksum: Checksum {
                r#type: CKSUMTYPE_RSA_MD4,
                checksum: Md4::digest(&der).to_vec().into(),
            },
            ..signed
        };
        let reply = rasn::der::encode(&forged).unwrap();

        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "does not verify",
        );
    }

    #[test]
    fn no_answer_is_accepted_unless_the_encrypted_part_shows_one_was_stripped() {
        let key = aes_key();
        let sent = request(&key);

        assert_eq!(
            sent.verify_reply(&key, None, None).unwrap(),
            S4uReply::NotAnswered
        );
        is_tampered(sent.verify_reply(&key, None, Some(b"xx")), "stripped");
    }

    #[test]
    fn with_rc4_the_encrypted_copy_of_both_checksums_must_match() {
        let key = Key::random(EncType::Rc4Hmac);
        let sent = request(&key);
        let (signed, reply) = answer(&sent, &key, |_| {});
        let both = [
            sent.checksum.checksum.to_vec(),
            signed.checksum.checksum.to_vec(),
        ]
        .concat();

        assert!(matches!(
            sent.verify_reply(&key, Some(&reply), Some(&both)),
            Ok(S4uReply::Verified { .. })
        ));
        let mut altered = both.clone();
        altered[0] ^= 1;
        is_tampered(
            sent.verify_reply(&key, Some(&reply), Some(&altered)),
            "encrypted copy",
        );
        // rsa-md4 is unkeyed: without the encrypted copy, a man in the middle could have made
        // the answer; a KDC that took up key usage 27 always sends the copy.
        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "encrypted copy",
        );
    }

    #[test]
    fn a_user_id_with_a_field_this_crate_does_not_know_is_refused_not_a_panic() {
        // MS-SFU's S4UUserID is extensible, but `rasn`'s BER decoder refuses fields it does not
        // know; no KDC sends any (MIT and AD echo the fields above), so this is reported as a
        // malformed answer rather than ignored.
        let key = aes_key();
        let sent = request(&key);
        let (signed, _) = answer(&sent, &key, |_| {});
        let mut user_id = rasn::der::encode(&signed.user_id).unwrap();
        user_id.extend_from_slice(&[0xa5, 0x03, 0x02, 0x01, 0x01]);
        user_id[1] += 5;
        let checksum = s4u_checksum(&key, KEY_USAGE_S4U_X509_USER_REPLY, &user_id);
        let checksum = rasn::der::encode(&checksum).unwrap();
        let body = [
            &[0xa0, user_id.len() as u8][..],
            &user_id,
            &[0xa1, checksum.len() as u8],
            &checksum,
        ]
        .concat();
        let reply = [&[0x30, body.len() as u8][..], &body].concat();

        assert_eq!(user_id_der(&reply), Some(&user_id[..]));
        is_tampered(
            sent.verify_reply(&key, Some(&reply), None),
            "PA-S4U-X509-USER",
        );
    }

    #[test]
    fn garbage_and_truncated_answers_are_errors_not_panics() {
        let key = aes_key();
        let sent = request(&key);
        let (_, reply) = answer(&sent, &key, |_| {});
        for end in 0..reply.len() {
            assert!(sent.verify_reply(&key, Some(&reply[..end]), None).is_err());
        }
        for bytes in [
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x30, 0x80],
            &[0x1f; 8],
        ] {
            assert!(sent.verify_reply(&key, Some(bytes), None).is_err());
            assert_eq!(user_id_der(bytes), None);
        }
    }
}
