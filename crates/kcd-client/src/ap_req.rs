//! The AP-REQ (RFC 4120 5.5.1): a ticket plus a fresh authenticator encrypted in the ticket's
//! session key. TGS requests carry one for the TGT; the GSS-API token carries one for the
//! target's ticket.

use std::time::{SystemTime, UNIX_EPOCH};

use rasn::prelude::*;
use rasn_kerberos::{
    ApOptions, Authenticator, Checksum, EncryptedData, KerberosTime, PrincipalName, Realm,
};

use crate::KcdError;
use crate::asn1::{self, msg_type};
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

/// An AP-REQ whose ticket is already DER: `rasn_kerberos::ApReq`'s fields and tags, the
/// ticket spliced in as it was encoded once for its credential ([`encode_ticket`]) instead of
/// cloned and encoded again for each message (most of a token's 922 bytes are the ticket).
/// Decodes as an `ApReq`.
#[derive(AsnType, Encode, Debug)]
#[rasn(tag(explicit(application, 14)))]
pub(crate) struct EncodedApReq {
    #[rasn(tag(explicit(0)))]
    pvno: Integer,
    #[rasn(tag(explicit(1)))]
    msg_type: Integer,
    #[rasn(tag(explicit(2)))]
    ap_options: ApOptions,
    #[rasn(tag(explicit(3)))]
    ticket: Any,
    #[rasn(tag(explicit(4)))]
    authenticator: EncryptedData,
}

/// A ticket's DER, for [`build`]: made once when its credential is.
pub(crate) fn encode_ticket(ticket: &rasn_kerberos::Ticket) -> Result<Any, KcdError> {
    Ok(Any::new(asn1::encode(ticket, "ticket")?))
}

/// An AP-REQ for the ticket `ticket` (DER, see [`encode_ticket`]), its authenticator made at
/// `now` and encrypted with the ticket's session key made ready for its key usage (7 in a TGS
/// request, 11 in an application request).
pub(crate) fn build(
    ticket: &Any,
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
) -> Result<EncodedApReq, KcdError> {
    Ok(build_timed(ticket, session_key, parts, now, &[])?.0)
}

/// As [`build`], with the AP options `ap_options` (bit numbers), and also returning the
/// authenticator's `ctime` and `cusec`, which a mutual-authentication reply echoes.
pub(crate) fn build_timed(
    ticket: &Any,
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
    ap_options: &[usize],
) -> Result<(EncodedApReq, KerberosTime, u32), KcdError> {
    // Microseconds of the same instant as ctime, so that (ctime, cusec) is unique for replay
    // caches even when several tokens are made within one second.
    let cusec = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    let ctime = asn1::kerberos_time(now);
    let authenticator = Authenticator {
        authenticator_vno: Integer::from(5),
        crealm: parts.crealm.clone(),
        cname: parts.cname.clone(),
        cksum: parts.cksum,
        cusec: Integer::from(i64::from(cusec)),
        ctime: ctime.clone(),
        subkey: None,
        seq_number: parts.seq_number,
        authorization_data: None,
    };
    let plaintext = asn1::encode(&authenticator, "authenticator")?;
    let ap_req = EncodedApReq {
        pvno: Integer::from(5),
        msg_type: Integer::from(i64::from(msg_type::AP_REQ)),
        ap_options: ApOptions(asn1::flags(ap_options)),
        ticket: ticket.clone(),
        authenticator: EncryptedData {
            etype: session_key.etype().as_i32(),
            kvno: None,
            cipher: session_key.encrypt(&plaintext).into(),
        },
    };
    Ok((ap_req, ctime, cusec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{EncType, Key};
    use rasn_kerberos::{ApReq, Ticket};

    #[test]
    fn the_spliced_ticket_encodes_as_rasns_own_ap_req() {
        let realm = asn1::kstring("TEST.LOCAL").unwrap();
        let ticket = Ticket {
            tkt_vno: Integer::from(5),
            realm: realm.clone(),
            sname: asn1::principal_name(2, &["HTTP", "exchange.test.local"]).unwrap(),
            enc_part: EncryptedData {
                etype: 18,
                kvno: Some(3),
                // Long enough that its length takes two bytes.
                cipher: vec![0x42; 800].into(),
            },
        };
        let key = Key::random(EncType::Aes256CtsHmacSha196).sealing_key(11);
        let cname = asn1::principal_name(1, &["alice"]).unwrap();
        let parts = AuthenticatorParts {
            crealm: &realm,
            cname: &cname,
            cksum: None,
            seq_number: Some(7),
        };
        let (spliced, _, _) = build_timed(
            &encode_ticket(&ticket).unwrap(),
            &key,
            parts,
            SystemTime::now(),
            &[2],
        )
        .unwrap();
        let der = asn1::encode(&spliced, "AP-REQ").unwrap();
        let decoded: ApReq = rasn::der::decode(&der).unwrap();
        assert_eq!(decoded.ticket, ticket);
        assert_eq!(decoded.ap_options, spliced.ap_options);
        assert_eq!(decoded.authenticator, spliced.authenticator);
        // Byte for byte what rasn writes for the same AP-REQ.
        let own = ApReq {
            pvno: Integer::from(5),
            msg_type: Integer::from(i64::from(msg_type::AP_REQ)),
            ap_options: spliced.ap_options.clone(),
            ticket,
            authenticator: spliced.authenticator.clone(),
        };
        assert_eq!(der, asn1::encode(&own, "AP-REQ").unwrap());
    }
}
