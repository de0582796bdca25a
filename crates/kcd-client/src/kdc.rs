//! One request to a KDC and its reply: building KDC-REQs, telling AS-REP, TGS-REP and
//! KRB-ERROR apart, decrypting and checking the encrypted part, and the TGS exchange that
//! S4U2Self and S4U2Proxy share.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rasn::types::Integer;
use rasn_kerberos::{
    AsRep, EncAsRepPart, EncKdcRepPart, EncTgsRepPart, KdcOptions, KdcRep, KdcReq, KdcReqBody,
    KrbError, PaData, PrincipalName, Realm, TgsRep, TgsReq, Ticket, TicketFlags,
};

use crate::KcdError;
use crate::ap_req::{self, AuthenticatorParts};
use crate::asn1::{self, msg_type, pa_type, usage};
use crate::crypto::{EncType, Key, SealingKey};

/// A ticket and what the KDC told its client about it.
#[derive(Clone)]
pub(crate) struct Credential {
    pub(crate) ticket: Ticket,
    /// `ticket`'s DER, encoded once for the AP-REQs that carry it ([`ap_req::encode_ticket`]).
    pub(crate) ticket_der: Vec<u8>,
    pub(crate) session_key: Key,
    pub(crate) crealm: Realm,
    pub(crate) cname: PrincipalName,
    pub(crate) srealm: Realm,
    pub(crate) sname: PrincipalName,
    pub(crate) flags: TicketFlags,
    /// When the ticket became valid (its start time, else its authentication time).
    pub(crate) start_time: SystemTime,
    pub(crate) end_time: SystemTime,
    /// `session_key` made ready for the first key usage it encrypted for; see
    /// [`Credential::sealing_key`].
    pub(crate) sealing_key: OnceLock<SealingKey>,
}

impl Credential {
    /// The session key made ready to encrypt for `usage`, made on the first call and kept: a
    /// credential encrypts for one usage (a TGT's authenticators in TGS requests, 7; a service
    /// ticket's in every Negotiate token, 11). Another usage is made ready afresh each time.
    pub(crate) fn sealing_key(&self, usage: u32) -> Cow<'_, SealingKey> {
        let kept = self
            .sealing_key
            .get_or_init(|| self.session_key.sealing_key(usage));
        if kept.usage() == usage {
            Cow::Borrowed(kept)
        } else {
            Cow::Owned(self.session_key.sealing_key(usage))
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session key stays out of logs.
        f.debug_struct("Credential")
            .field("cname", &asn1::name_text(&self.cname))
            .field("sname", &asn1::name_text(&self.sname))
            .field("end_time", &self.end_time)
            .finish_non_exhaustive()
    }
}

/// A KDC's answer.
pub(crate) enum Reply {
    /// An AS-REP or TGS-REP (the caller knows which it asked for).
    Rep(Box<KdcRep>),
    /// A KRB-ERROR.
    Error(Box<KrbError>),
}

/// Decodes a KDC reply: AS-REP (`[APPLICATION 11]`), TGS-REP (`[APPLICATION 13]`) or KRB-ERROR
/// (`[APPLICATION 30]`), by its first byte; `expect_as` says which REP is acceptable.
pub(crate) fn decode_reply(bytes: &[u8], expect_as: bool) -> Result<Reply, KcdError> {
    match (bytes.first(), expect_as) {
        (Some(0x7e), _) => Ok(Reply::Error(Box::new(asn1::decode::<KrbError>(
            bytes,
            "KRB-ERROR",
        )?))),
        (Some(0x6b), true) => Ok(Reply::Rep(Box::new(
            asn1::decode::<AsRep>(bytes, "AS-REP")?.0,
        ))),
        (Some(0x6d), false) => Ok(Reply::Rep(Box::new(
            asn1::decode::<TgsRep>(bytes, "TGS-REP")?.0,
        ))),
        (Some(tag), _) => Err(KcdError::malformed(format!(
            "unexpected message (first byte {tag:#04x})"
        ))),
        (None, _) => Err(KcdError::malformed("empty reply")),
    }
}

/// Decodes a KDC reply as the client does before decrypting anything: `Ok` for a well-formed
/// AS-REP (when `expect_as_rep`) or TGS-REP (otherwise), [`KcdError::KdcError`] with the code and
/// e-text of a KRB-ERROR, [`KcdError::MalformedReply`] for anything else.
///
/// Public so the decoders of what a KDC (or anyone on the path to it) sends can be fuzzed.
pub fn decode_kdc_reply(bytes: &[u8], expect_as_rep: bool) -> Result<(), KcdError> {
    match decode_reply(bytes, expect_as_rep)? {
        Reply::Rep(rep) => {
            let _ = (asn1::name_text(&rep.cname), asn1::text(&rep.crealm));
            Ok(())
        }
        Reply::Error(error) => Err(generic_error(&error)),
    }
}

/// A random nonce. Below 2^31 because some KDCs treat nonces as signed 32-bit integers.
pub(crate) fn nonce() -> u32 {
    rand::random::<u32>() & 0x7fff_ffff
}

/// The encryption types offered for session keys, strongest first.
pub(crate) fn offered_etypes() -> Vec<i32> {
    EncType::PREFERRED.iter().map(|e| e.as_i32()).collect()
}

/// The request lifetime: a day, which KDCs cap to their policy.
const REQUESTED_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A request body for `sname` in `realm`.
pub(crate) struct Body {
    pub(crate) options: Vec<usize>,
    pub(crate) cname: Option<PrincipalName>,
    pub(crate) realm: Realm,
    pub(crate) sname: PrincipalName,
    pub(crate) etypes: Vec<i32>,
    pub(crate) additional_tickets: Option<Vec<Ticket>>,
}

impl Body {
    pub(crate) fn build(self, now: SystemTime, nonce: u32) -> KdcReqBody {
        KdcReqBody {
            kdc_options: KdcOptions(asn1::flags(&self.options)),
            cname: self.cname,
            realm: self.realm,
            sname: Some(self.sname),
            from: None,
            till: asn1::kerberos_time(now + REQUESTED_LIFETIME),
            rtime: None,
            nonce,
            etype: self.etypes,
            addresses: None,
            enc_authorization_data: None,
            additional_tickets: self.additional_tickets,
        }
    }
}

/// A KDC-REQ of `msg_type` with `padata`.
pub(crate) fn request(msg_type: i32, padata: Vec<PaData>, body: KdcReqBody) -> KdcReq {
    KdcReq {
        pvno: Integer::from(5),
        msg_type: Integer::from(i64::from(msg_type)),
        padata: (!padata.is_empty()).then_some(padata),
        req_body: body,
    }
}

/// Decrypts and checks the encrypted part of an AS-REP or TGS-REP and returns the credential.
/// `integrity_error` makes the error for a part that does not decrypt (wrong key).
pub(crate) fn credential_from_rep(
    rep: KdcRep,
    key: &Key,
    key_usage: u32,
    nonce: u32,
    integrity_error: impl FnOnce(crate::crypto::CryptoError) -> KcdError,
) -> Result<Credential, KcdError> {
    let plaintext = key
        .decrypt(key_usage, &rep.enc_part.cipher)
        .map_err(integrity_error)?;
    // MIT and Heimdal accept either application tag for either reply; so do we.
    let part: EncKdcRepPart = match plaintext.first() {
        Some(0x79) => asn1::decode::<EncAsRepPart>(&plaintext, "EncASRepPart")?.0,
        Some(0x7a) => asn1::decode::<EncTgsRepPart>(&plaintext, "EncTGSRepPart")?.0,
        _ => {
            return Err(KcdError::malformed(
                "encrypted reply part has an unknown tag",
            ));
        }
    };
    if part.nonce != nonce {
        return Err(KcdError::malformed(
            "reply nonce does not match the request",
        ));
    }
    let etype = EncType::from_i32(part.key.r#type).ok_or_else(|| {
        KcdError::malformed(format!(
            "session key of unsupported type {}",
            part.key.r#type
        ))
    })?;
    let session_key = Key::new(etype, &part.key.value)
        .map_err(|e| KcdError::malformed(format!("session key: {e}")))?;
    Ok(Credential {
        ticket_der: ap_req::encode_ticket(&rep.ticket)?,
        ticket: rep.ticket,
        session_key,
        crealm: rep.crealm,
        cname: rep.cname,
        srealm: part.srealm,
        sname: part.sname,
        flags: part.flags,
        start_time: asn1::system_time(part.start_time.as_ref().unwrap_or(&part.auth_time)),
        end_time: asn1::system_time(&part.end_time),
        sealing_key: OnceLock::new(),
    })
}

/// The parts of a TGS-REQ beyond the TGT: the service asked for and the extras of S4U.
pub(crate) struct TgsParams {
    pub(crate) sname: PrincipalName,
    pub(crate) realm: Realm,
    pub(crate) options: Vec<usize>,
    pub(crate) extra_padata: Vec<PaData>,
    pub(crate) additional_tickets: Option<Vec<Ticket>>,
}

/// A TGS-REQ authenticated with `tgt`, and its nonce.
pub(crate) fn tgs_request(
    tgt: &Credential,
    params: TgsParams,
    now: SystemTime,
) -> Result<(Vec<u8>, u32), KcdError> {
    let nonce = nonce();
    let body = Body {
        options: params.options,
        cname: None,
        realm: params.realm,
        sname: params.sname,
        etypes: offered_etypes(),
        additional_tickets: params.additional_tickets,
    }
    .build(now, nonce);
    // The authenticator's checksum binds the body (RFC 4120 7.2.2, key usage 6).
    let body_der = asn1::encode(&body, "KDC-REQ-BODY")?;
    let checksum = tgt
        .session_key
        .checksum(usage::TGS_REQ_AUTH_CKSUM, &body_der);
    let ap_req = ap_req::build(
        &tgt.ticket_der,
        &tgt.sealing_key(usage::TGS_REQ_AUTHENTICATOR),
        AuthenticatorParts {
            crealm: &tgt.crealm,
            cname: &tgt.cname,
            cksum: Some(rasn_kerberos::Checksum {
                r#type: checksum.cksumtype,
                checksum: checksum.value.into(),
            }),
            seq_number: None,
        },
        now,
    )?;
    let mut padata = vec![PaData {
        r#type: pa_type::TGS_REQ,
        value: ap_req.into(),
    }];
    padata.extend(params.extra_padata);
    let request = TgsReq(request(msg_type::TGS_REQ, padata, body));
    Ok((asn1::encode(&request, "TGS-REQ")?, nonce))
}

/// The KDC's e-text, or nothing.
pub(crate) fn error_text(error: &KrbError) -> String {
    error.e_text.as_ref().map(asn1::text).unwrap_or_default()
}

/// The generic error for a KRB-ERROR no caller had a better variant for.
pub(crate) fn generic_error(error: &KrbError) -> KcdError {
    KcdError::KdcError {
        code: error.error_code,
        text: error_text(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncated_replies_are_errors_not_panics() {
        // A syntactically valid KRB-ERROR, then every prefix of it and random bytes.
        let error = KrbError {
            pvno: Integer::from(5),
            msg_type: Integer::from(30),
            ctime: None,
            cusec: None,
            stime: asn1::kerberos_time(SystemTime::now()),
            susec: Integer::from(0),
            error_code: 25,
            crealm: None,
            cname: None,
            realm: asn1::kstring("TEST.LOCAL").unwrap(),
            sname: asn1::principal_name(2, &["krbtgt", "TEST.LOCAL"]).unwrap(),
            e_text: None,
            e_data: Some(vec![0x30, 0x00].into()),
        };
        let der = rasn::der::encode(&error).unwrap();
        assert!(matches!(decode_reply(&der, true), Ok(Reply::Error(e)) if e.error_code == 25));
        for end in 0..der.len() {
            assert!(decode_reply(&der[..end], true).is_err(), "prefix {end}");
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 200) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|i| (state.rotate_left(i as u32 * 7) ^ i as u64) as u8)
                .collect();
            // Give half of them a plausible first byte so that the decoders get exercised.
            if let Some(first) = bytes.first_mut() {
                *first = [0x7e, 0x6b, 0x6d, *first][round % 4];
            }
            let _ = decode_reply(&bytes, round % 2 == 0);
            // Flip bytes of the valid error too.
            let mut mutated = der.clone();
            let at = (state as usize) % mutated.len();
            mutated[at] ^= (state >> 32) as u8 | 1;
            let _ = decode_reply(&mutated, true);
        }
    }
}
