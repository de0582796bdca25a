//! Mutual authentication (RFC 4121 4.1, RFC 4120 5.5.2): the acceptor proves it could read the
//! ticket by answering with an AP-REP whose encrypted part, in the ticket's session key, echoes
//! the time of the gateway's authenticator. IIS (and the test Exchange's GSSAPI) send it back
//! in `WWW-Authenticate: Negotiate <SPNEGO NegTokenResp>` with the `200`.

use std::sync::Arc;

use rasn_kerberos::{ApRep, EncApRepPart, KerberosTime, KrbError};

use crate::KcdError;
use crate::asn1::{self, usage};
use crate::crypto::Key;
use crate::spnego::{self, NegState, NegotiationToken};

/// The GSS-API token id of an AP-REP (RFC 4121 4.1).
const TOK_ID_AP_REP: [u8; 2] = [0x02, 0x00];
/// The GSS-API token id of a KRB-ERROR (RFC 4121 4.1).
const TOK_ID_ERROR: [u8; 2] = [0x03, 0x00];
/// The message type of an AP-REP (RFC 4120 7.5.7).
const AP_REP: i64 = 15;

/// What the gateway remembers of a Negotiate token to check the server's answer to it: the
/// ticket's session key and the authenticator's time. Kept with the [`crate::NegotiateToken`]
/// it belongs to ([`crate::NegotiateToken::context`]); the key never reaches logs.
#[derive(Clone)]
pub struct TokenContext {
    inner: Arc<Inner>,
}

struct Inner {
    session_key: Key,
    ctime: KerberosTime,
    cusec: u32,
}

impl std::fmt::Debug for TokenContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenContext")
            .field("ctime", &self.inner.ctime.0)
            .field("cusec", &self.inner.cusec)
            .finish_non_exhaustive()
    }
}

impl TokenContext {
    /// The context of an authenticator made at `ctime`.`cusec` with the ticket's
    /// `session_key`.
    pub(crate) fn new(session_key: Key, ctime: KerberosTime, cusec: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                session_key,
                ctime,
                cusec,
            }),
        }
    }
}

/// Checks the server's answer to a Negotiate token: `reply` is the decoded token of its
/// `WWW-Authenticate: Negotiate <base64>` (an SPNEGO NegTokenResp, or a bare Kerberos token).
/// It must carry an AP-REP that decrypts with the ticket's session key and echoes the
/// authenticator's `ctime` and `cusec`: only a holder of the service's key could make it.
///
/// # Errors
///
/// [`KcdError::MutualAuthentication`] if the reply is not such a proof: not SPNEGO or Kerberos,
/// a rejection, no AP-REP, a Kerberos error token, an AP-REP that does not decrypt or echoes
/// another time.
pub fn verify_mutual(context: &TokenContext, reply: &[u8]) -> Result<(), KcdError> {
    let failed = |reason: String| KcdError::MutualAuthentication { reason };
    let mech_token = if reply.first() == Some(&0x60)
        && spnego::parse_initial_token(reply)
            .is_ok_and(|(oid, _)| &*oid == spnego::KRB5_OID || &*oid == spnego::MS_KRB5_OID)
    {
        // A bare Kerberos token, without SPNEGO around it.
        reply.to_vec()
    } else {
        let token = spnego::parse_negotiation_token(reply)
            .map_err(|e| failed(format!("the reply is not an SPNEGO token: {e}")))?;
        let NegotiationToken::Resp(resp) = token else {
            return Err(failed("the reply is a NegTokenInit, not an answer".into()));
        };
        match resp.neg_state {
            Some(NegState::AcceptCompleted) | None => {}
            Some(state) => return Err(failed(format!("the server answered {state:?}"))),
        }
        if let Some(mech) = &resp.supported_mech
            && &**mech != spnego::KRB5_OID
            && &**mech != spnego::MS_KRB5_OID
        {
            return Err(failed(format!("the server chose mechanism {mech:?}")));
        }
        resp.response_token
            .ok_or_else(|| failed("the reply carries no AP-REP".into()))?
            .to_vec()
    };
    let (oid, inner) = spnego::parse_initial_token(&mech_token)
        .map_err(|e| failed(format!("the Kerberos token: {e}")))?;
    if &*oid != spnego::KRB5_OID && &*oid != spnego::MS_KRB5_OID {
        return Err(failed(format!("the mechanism token is for {oid:?}")));
    }
    let (tok_id, message) = inner.split_at_checked(2).unwrap_or((inner, &[]));
    if tok_id == TOK_ID_ERROR {
        let error = asn1::decode::<KrbError>(message, "KRB-ERROR")
            .map_err(|e| failed(format!("an unreadable Kerberos error token: {e}")))?;
        return Err(failed(format!(
            "the server answered Kerberos error {}",
            error.error_code
        )));
    }
    if tok_id != TOK_ID_AP_REP {
        return Err(failed(format!("token id {tok_id:02x?} is not an AP-REP's")));
    }
    let ap_rep = asn1::decode::<ApRep>(message, "AP-REP").map_err(|e| failed(e.to_string()))?;
    if ap_rep.msg_type != AP_REP.into() {
        return Err(failed("the AP-REP has the wrong message type".into()));
    }
    let key = &context.inner.session_key;
    if ap_rep.enc_part.etype != key.etype().as_i32() {
        return Err(failed(format!(
            "the AP-REP is encrypted with etype {}, not the session key's",
            ap_rep.enc_part.etype
        )));
    }
    let plain = key
        .decrypt(usage::AP_REP_ENC_PART, &ap_rep.enc_part.cipher)
        .map_err(|e| {
            failed(format!(
                "the AP-REP does not decrypt with the session key: {e}"
            ))
        })?;
    let part =
        asn1::decode::<EncApRepPart>(&plain, "EncAPRepPart").map_err(|e| failed(e.to_string()))?;
    let echoed = asn1::unix_seconds(&part.ctime) == asn1::unix_seconds(&context.inner.ctime)
        && part.cusec == i64::from(context.inner.cusec).into();
    if !echoed {
        return Err(failed(
            "the AP-REP does not echo the authenticator's time".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rasn::types::{Integer, ObjectIdentifier};
    use rasn_kerberos::EncryptedData;

    use super::*;
    use crate::crypto::EncType;
    use crate::spnego::NegTokenResp;

    fn key(byte: u8) -> Key {
        Key::new(EncType::Aes256CtsHmacSha196, &[byte; 32]).unwrap()
    }

    const CTIME: u64 = 1_700_000_000;
    const CUSEC: u32 = 123_456;

    fn context() -> TokenContext {
        TokenContext::new(
            key(7),
            asn1::kerberos_time(UNIX_EPOCH + Duration::from_secs(CTIME)),
            CUSEC,
        )
    }

    /// An AP-REP in the acceptor's framing, made with `key` and echoing `ctime`.`cusec`.
    fn ap_rep_token(key: &Key, ctime: u64, cusec: u32) -> Vec<u8> {
        let part = EncApRepPart {
            ctime: asn1::kerberos_time(UNIX_EPOCH + Duration::from_secs(ctime)),
            cusec: Integer::from(i64::from(cusec)),
            subkey: None,
            seq_number: Some(42),
        };
        let ap_rep = ApRep {
            pvno: Integer::from(5),
            msg_type: Integer::from(AP_REP),
            enc_part: EncryptedData {
                etype: key.etype().as_i32(),
                kvno: None,
                cipher: key
                    .encrypt(usage::AP_REP_ENC_PART, &rasn::der::encode(&part).unwrap())
                    .into(),
            },
        };
        let mut inner = TOK_ID_AP_REP.to_vec();
        inner.extend(rasn::der::encode(&ap_rep).unwrap());
        spnego::frame_initial_token(spnego::KRB5_OID, &inner).unwrap()
    }

    fn resp(state: Option<NegState>, token: Option<Vec<u8>>) -> Vec<u8> {
        rasn::der::encode(&NegotiationToken::Resp(NegTokenResp {
            neg_state: state,
            supported_mech: Some(ObjectIdentifier::new(spnego::KRB5_OID.to_vec()).unwrap()),
            response_token: token.map(Into::into),
            mech_list_mic: None,
        }))
        .unwrap()
    }

    #[test]
    fn an_ap_rep_echoing_the_authenticator_time_in_the_session_key_is_accepted() {
        let token = ap_rep_token(&key(7), CTIME, CUSEC);
        verify_mutual(
            &context(),
            &resp(Some(NegState::AcceptCompleted), Some(token.clone())),
        )
        .unwrap();
        // The bare Kerberos token too.
        verify_mutual(&context(), &token).unwrap();
    }

    #[test]
    fn another_time_another_key_or_no_ap_rep_is_refused() {
        let refused = |reply: Vec<u8>| {
            let error = verify_mutual(&context(), &reply).unwrap_err();
            assert!(
                matches!(error, KcdError::MutualAuthentication { .. }),
                "{error:?}"
            );
            error.to_string()
        };
        let completed = |token| resp(Some(NegState::AcceptCompleted), Some(token));
        assert!(refused(completed(ap_rep_token(&key(7), CTIME, CUSEC + 1))).contains("echo"));
        assert!(refused(completed(ap_rep_token(&key(7), CTIME + 1, CUSEC))).contains("echo"));
        assert!(refused(completed(ap_rep_token(&key(8), CTIME, CUSEC))).contains("decrypt"));
        assert!(refused(resp(Some(NegState::AcceptCompleted), None)).contains("no AP-REP"));
        let token = ap_rep_token(&key(7), CTIME, CUSEC);
        assert!(refused(resp(Some(NegState::Reject), Some(token))).contains("Reject"));
        assert!(refused(b"not a token".to_vec()).contains("SPNEGO"));
        // A Kerberos error token instead of an AP-REP.
        let error = KrbError {
            pvno: Integer::from(5),
            msg_type: Integer::from(30),
            ctime: None,
            cusec: None,
            stime: asn1::kerberos_time(SystemTime::now()),
            susec: Integer::from(0),
            error_code: 41,
            crealm: None,
            cname: None,
            realm: asn1::kstring("TEST.LOCAL").unwrap(),
            sname: asn1::principal_name(2, &["HTTP", "exchange.test.local"]).unwrap(),
            e_text: None,
            e_data: None,
        };
        let mut inner = TOK_ID_ERROR.to_vec();
        inner.extend(rasn::der::encode(&error).unwrap());
        let token = spnego::frame_initial_token(spnego::KRB5_OID, &inner).unwrap();
        assert!(refused(completed(token)).contains("error 41"));
    }

    #[test]
    fn every_truncation_of_a_good_reply_is_refused_without_panic() {
        let reply = resp(
            Some(NegState::AcceptCompleted),
            Some(ap_rep_token(&key(7), CTIME, CUSEC)),
        );
        for end in 0..reply.len() {
            assert!(
                verify_mutual(&context(), &reply[..end]).is_err(),
                "prefix {end}"
            );
        }
    }
}
