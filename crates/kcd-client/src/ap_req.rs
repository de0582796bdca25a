//! The AP-REQ (RFC 4120 5.5.1): a ticket plus a fresh authenticator encrypted in the ticket's
//! session key. TGS requests carry one for the TGT; the GSS-API token carries one for the
//! target's ticket.

use std::time::{SystemTime, UNIX_EPOCH};

use rasn::types::Integer;
use rasn_kerberos::{
    ApOptions, ApReq, Authenticator, Checksum, EncryptedData, KerberosTime, PrincipalName, Realm,
    Ticket,
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

/// An AP-REQ for `ticket`, its authenticator made at `now` and encrypted with the ticket's
/// session key made ready for its key usage (7 in a TGS request, 11 in an application
/// request).
pub(crate) fn build(
    ticket: &Ticket,
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
) -> Result<ApReq, KcdError> {
    Ok(build_timed(ticket, session_key, parts, now, &[])?.0)
}

/// As [`build`], with the AP options `ap_options` (bit numbers), and also returning the
/// authenticator's `ctime` and `cusec`, which a mutual-authentication reply echoes.
pub(crate) fn build_timed(
    ticket: &Ticket,
    session_key: &SealingKey,
    parts: AuthenticatorParts<'_>,
    now: SystemTime,
    ap_options: &[usize],
) -> Result<(ApReq, KerberosTime, u32), KcdError> {
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
    let ap_req = ApReq {
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
