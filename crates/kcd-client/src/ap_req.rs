//! The AP-REQ (RFC 4120 5.5.1): a ticket plus a fresh authenticator encrypted in the ticket's
//! session key. TGS requests carry one for the TGT; the GSS-API token carries one for the
//! target's ticket.

use std::time::{SystemTime, UNIX_EPOCH};

use rasn_kerberos::{Checksum, KerberosTime, PrincipalName, Realm};

use crate::KcdError;
use crate::asn1::{
    self, DerInteger, der_size, explicit_size, msg_type, push_der_header, push_explicit, tag,
};
use crate::crypto::SealingKey;

/// What an authenticator says besides its time.
pub(crate) struct AuthenticatorParts<'a> {
    /// The ticket's client realm and name, as the KDC reply named them.
    pub(crate) crealm: &'a Realm,
    pub(crate) cname: &'a PrincipalName,
    /// The checksum field (over the TGS request body, or the GSS 0x8003 checksum).
    pub(crate) cksum: Option<Checksum>,
    /// The initiator's sequence number, for GSS-API.
    pub(crate) seq_number: Option<u32>,
}

/// A ticket's DER, for [`build`]: made once when its credential is.
pub(crate) fn encode_ticket(ticket: &rasn_kerberos::Ticket) -> Result<Vec<u8>, KcdError> {
    asn1::encode(ticket, "ticket")
}

/// An AP-REQ (DER) for the ticket `ticket` (DER, see [`encode_ticket`]), its authenticator made
/// at `now` and encrypted with the ticket's session key made ready for its key usage (7 in a
/// TGS request, 11 in an application request).
pub(crate) fn build(
    ticket: &[u8],
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
) -> Result<Vec<u8>, KcdError> {
    Ok(build_timed(ticket, session_key, parts, now, &[])?.0)
}

/// As [`build`], with the AP options `ap_options` (bit numbers), and also returning the
/// authenticator's `ctime` and `cusec`, which a mutual-authentication reply echoes.
pub(crate) fn build_timed(
    ticket: &[u8],
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
    ap_options: &[usize],
) -> Result<(Vec<u8>, KerberosTime, u32), KcdError> {
    // Microseconds of the same instant as ctime, so that (ctime, cusec) is unique for replay
    // caches even when several tokens are made within one second.
    let cusec = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    let ctime = asn1::kerberos_time(now);
    let plaintext = encode_authenticator(&parts, cusec, &ctime);
    let ap_req = encode(
        ticket,
        asn1::flag_bytes(ap_options),
        session_key.etype().as_i32(),
        &session_key.encrypt(&plaintext),
    );
    Ok((ap_req, ctime, cusec))
}

/// An AP-REQ's first fields: pvno `[0] INTEGER 5`, msg-type `[1] INTEGER 14`, and the head of
/// ap-options `[2] BIT STRING` (32 bits, none unused) before its four bytes.
const PVNO_MSG_TYPE_AP_OPTIONS: [u8; 15] = [
    0xa0,
    0x03,
    0x02,
    0x01,
    0x05, // pvno
    0xa1,
    0x03,
    0x02,
    0x01,
    msg_type::AP_REQ as u8, // msg-type
    0xa2,
    0x07,
    0x03,
    0x05,
    0x00, // ap-options
];

/// The DER of `rasn_kerberos::ApReq` with the ticket `ticket` (DER) and an authenticator
/// `EncryptedData` without kvno, written by hand in one buffer: the ticket, most of a token's
/// ≈ 900 bytes, is copied once instead of being decoded, cloned and encoded again for each
/// message. A test checks it byte for byte against rasn.
///
/// ```text
/// AP-REQ ::= [APPLICATION 14] SEQUENCE {
///     pvno [0] INTEGER, msg-type [1] INTEGER, ap-options [2] APOptions,
///     ticket [3] Ticket, authenticator [4] EncryptedData }
/// EncryptedData ::= SEQUENCE { etype [0] Int32, kvno [1] UInt32 OPTIONAL, cipher [2] OCTET STRING }
/// ```
fn encode(ticket: &[u8], ap_options: [u8; 4], etype: i32, cipher: &[u8]) -> Vec<u8> {
    let etype = DerInteger::new(i64::from(etype));
    let etype = etype.contents();
    // Inside out: the EncryptedData's fields, the EncryptedData, then the AP-REQ's SEQUENCE.
    let encrypted_data = explicit_size(etype.len()) + explicit_size(cipher.len());
    let sequence = PVNO_MSG_TYPE_AP_OPTIONS.len()
        + ap_options.len()
        + der_size(ticket.len())
        + explicit_size(encrypted_data);
    let mut der = Vec::with_capacity(explicit_size(sequence));
    push_der_header(&mut der, 0x6e, der_size(sequence));
    push_der_header(&mut der, tag::SEQUENCE, sequence);
    der.extend_from_slice(&PVNO_MSG_TYPE_AP_OPTIONS);
    der.extend_from_slice(&ap_options);
    push_der_header(&mut der, 0xa3, ticket.len());
    der.extend_from_slice(ticket);
    push_der_header(&mut der, 0xa4, der_size(encrypted_data));
    push_der_header(&mut der, tag::SEQUENCE, encrypted_data);
    push_explicit(&mut der, 0, tag::INTEGER, etype);
    push_explicit(&mut der, 2, tag::OCTET_STRING, cipher);
    der
}

/// The authenticator's DER (`rasn_kerberos::Authenticator`, version 5, without subkey and
/// authorization data), written by hand in one buffer as the AP-REQ around it is: rasn's
/// encoder took more instructions than the rest of a token but its encryption. A test checks
/// it byte for byte against rasn.
fn encode_authenticator(
    parts: &AuthenticatorParts<'_>,
    cusec: u32,
    ctime: &KerberosTime,
) -> Vec<u8> {
    const VNO: [u8; 5] = [0xa0, 0x03, 0x02, 0x01, 0x05];
    let realm = parts.crealm.as_bytes();
    let name_type = DerInteger::new(i64::from(parts.cname.r#type));
    let strings: usize = parts
        .cname
        .string
        .iter()
        .map(|string| der_size(string.as_bytes().len()))
        .sum();
    let name = explicit_size(name_type.contents().len()) + explicit_size(strings);
    let checksum = parts.cksum.as_ref().map(|checksum| {
        let r#type = DerInteger::new(i64::from(checksum.r#type));
        let value: &[u8] = &checksum.checksum;
        let len = explicit_size(r#type.contents().len()) + explicit_size(value.len());
        (r#type, value, len)
    });
    let cusec = DerInteger::new(i64::from(cusec));
    let ctime = asn1::kerberos_time_digits(ctime);
    let seq_number = parts.seq_number.map(|seq| DerInteger::new(i64::from(seq)));
    let sequence = VNO.len()
        + explicit_size(realm.len())
        + explicit_size(name)
        + checksum.map_or(0, |(_, _, len)| explicit_size(len))
        + explicit_size(cusec.contents().len())
        + explicit_size(ctime.len())
        + seq_number.map_or(0, |seq| explicit_size(seq.contents().len()));
    let mut der = Vec::with_capacity(explicit_size(sequence));
    push_der_header(&mut der, 0x62, der_size(sequence));
    push_der_header(&mut der, tag::SEQUENCE, sequence);
    der.extend_from_slice(&VNO);
    push_explicit(&mut der, 1, tag::GENERAL_STRING, realm);
    push_der_header(&mut der, 0xa2, der_size(name));
    push_der_header(&mut der, tag::SEQUENCE, name);
    push_explicit(&mut der, 0, tag::INTEGER, name_type.contents());
    push_der_header(&mut der, 0xa1, der_size(strings));
    push_der_header(&mut der, tag::SEQUENCE, strings);
    for string in &parts.cname.string {
        push_der_header(&mut der, tag::GENERAL_STRING, string.as_bytes().len());
        der.extend_from_slice(string.as_bytes());
    }
    if let Some((r#type, value, len)) = checksum {
        push_der_header(&mut der, 0xa3, der_size(len));
        push_der_header(&mut der, tag::SEQUENCE, len);
        push_explicit(&mut der, 0, tag::INTEGER, r#type.contents());
        push_explicit(&mut der, 1, tag::OCTET_STRING, value);
    }
    push_explicit(&mut der, 4, tag::INTEGER, cusec.contents());
    push_explicit(&mut der, 5, tag::GENERALIZED_TIME, &ctime);
    if let Some(seq) = seq_number {
        push_explicit(&mut der, 7, tag::INTEGER, seq.contents());
    }
    der
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{EncType, Key};
    use rasn::prelude::*;
    use rasn_kerberos::{ApOptions, ApReq, Authenticator, EncryptedData, Ticket};

    #[test]
    fn the_hand_written_authenticator_is_rasns_own() {
        let realm = asn1::kstring("TEST.LOCAL").unwrap();
        let checksum = Checksum {
            r#type: 0x8003,
            checksum: vec![0x5a; 24].into(),
        };
        for (cname, cksum, seq_number, seconds) in [
            (
                asn1::principal_name(1, &["alice"]).unwrap(),
                None,
                None,
                1_700_000_000,
            ),
            (
                asn1::principal_name(10, &["alice@corp.example"]).unwrap(),
                Some(checksum.clone()),
                Some(0x3fff_ffff),
                0,
            ),
            (
                asn1::principal_name(2, &["HTTP", "exchange.test.local"]).unwrap(),
                Some(Checksum {
                    r#type: -138,
                    checksum: vec![1; 200].into(),
                }),
                Some(0),
                4_102_444_799,
            ),
            // Year 10000: the last time a KerberosTime can carry.
            (
                asn1::principal_name(1, &["bob"]).unwrap(),
                Some(checksum),
                Some(7),
                253_402_300_800,
            ),
        ] {
            let now = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            let ctime = asn1::kerberos_time(now);
            let parts = AuthenticatorParts {
                crealm: &realm,
                cname: &cname,
                cksum: cksum.clone(),
                seq_number,
            };
            let ours = encode_authenticator(&parts, 999_999, &ctime);
            let rasns = Authenticator {
                authenticator_vno: Integer::from(5),
                crealm: realm.clone(),
                cname: cname.clone(),
                cksum,
                cusec: Integer::from(999_999),
                ctime,
                subkey: None,
                seq_number,
                authorization_data: None,
            };
            assert!(
                ours == asn1::encode(&rasns, "authenticator").unwrap(),
                "{cname:?}"
            );
        }
    }

    #[test]
    fn the_hand_written_ap_req_is_rasns_own() {
        let realm = asn1::kstring("TEST.LOCAL").unwrap();
        let cname = asn1::principal_name(1, &["alice"]).unwrap();
        // Tickets whose length takes one, two and three bytes, and every etype.
        for (cipher_len, etype) in [
            (10, EncType::Aes256CtsHmacSha196),
            (800, EncType::Aes128CtsHmacSha196),
            (70_000, EncType::Aes256CtsHmacSha384192),
            (300, EncType::Rc4Hmac),
        ] {
            let ticket = Ticket {
                tkt_vno: Integer::from(5),
                realm: realm.clone(),
                sname: asn1::principal_name(2, &["HTTP", "exchange.test.local"]).unwrap(),
                enc_part: EncryptedData {
                    etype: 18,
                    kvno: Some(3),
                    cipher: vec![0x42; cipher_len].into(),
                },
            };
            let key = Key::random(etype).sealing_key(11);
            for options in [&[][..], &[2], &[1, 2]] {
                let parts = AuthenticatorParts {
                    crealm: &realm,
                    cname: &cname,
                    cksum: None,
                    seq_number: Some(7),
                };
                let (der, _, _) = build_timed(
                    &encode_ticket(&ticket).unwrap(),
                    &key,
                    parts,
                    SystemTime::now(),
                    options,
                )
                .unwrap();
                let decoded: ApReq = rasn::der::decode(&der).unwrap();
                assert_eq!(decoded.ticket, ticket);
                assert_eq!(decoded.ap_options, ApOptions(asn1::flags(options)));
                assert_eq!(decoded.authenticator.etype, etype.as_i32());
                assert_eq!(decoded.authenticator.kvno, None);
                // Byte for byte what rasn writes for the same AP-REQ.
                assert!(
                    der == asn1::encode(&decoded, "AP-REQ").unwrap(),
                    "{etype:?} {options:?}"
                );
            }
        }
    }
}
