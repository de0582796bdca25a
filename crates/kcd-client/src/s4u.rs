//! Constrained delegation (MS-SFU 3.1.5): S4U2Self, a ticket to the gateway itself for a user
//! who never authenticated to Kerberos, then S4U2Proxy, that ticket exchanged for one to the
//! target service.
//!
//! S4U2Self sends the user twice, as MIT's client does: in PA-FOR-USER and in
//! PA-S4U-X509-USER (MS-SFU 2.2.2), whose checksum also covers the request's nonce. A KDC that
//! reads the latter (MIT, Active Directory) answers with a PA-S4U-X509-USER of its own, which is
//! verified ([`PaS4uX509User::verify_reply`]) and must name the user the ticket is for; a KDC
//! that reads only PA-FOR-USER (Heimdal, Samba AD) answers without one, and that is accepted.

use rasn_kerberos::{EncAsRepPart, EncTgsRepPart, KdcRep, KrbError, PaData, TgsReq};

use crate::KcdError;
use crate::asn1::{self, error_code, kdc_option, pa_type, ticket_flag, usage};
use crate::clock::Clock;
use crate::crypto::Key;
use crate::kdc::{self, Credential, Reply, TgsParams};
use crate::name::{ServiceName, UserName};
use crate::sfu::{self, PaForUser, PaS4uX509User, S4uReply};
use crate::transport::KdcLink;

/// S4U2Self: a forwardable ticket for `user` to the gateway's own principal (the TGT's
/// client), with PA-FOR-USER naming the user.
///
/// # Errors
///
/// [`KcdError::UnknownUser`] if the KDC does not know the user;
/// [`KcdError::DelegationNotAllowed`] if the ticket is not forwardable (the gateway may not use
/// protocol transition).
pub(crate) async fn s4u2self(
    link: &KdcLink,
    clock: &Clock,
    tgt: &Credential,
    user: &UserName,
) -> Result<Credential, KcdError> {
    let service_realm = asn1::text(&tgt.crealm);
    let own_name = tgt.cname.clone();
    let pa_for_user = PaForUser::new(
        user.principal_name()?,
        user.realm(&service_realm),
        &tgt.session_key,
    )?;
    let padata = PaData {
        r#type: pa_type::FOR_USER,
        value: asn1::encode(&pa_for_user, "PA-FOR-USER")?.into(),
    };
    let params = || TgsParams {
        sname: own_name.clone(),
        realm: tgt.crealm.clone(),
        options: vec![kdc_option::FORWARDABLE],
        extra_padata: vec![padata.clone()],
        additional_tickets: None,
    };
    let own = || format!("{}@{service_realm}", asn1::name_text(&own_name));
    // The user is named, so no certificate: the place for one, should the gateway come to
    // identify users by certificate alone (MS-SFU 3.1.5.1.1), is `certificate` here.
    let x509_user = X509User {
        user,
        service_realm: &service_realm,
        certificate: None,
    };
    match tgs_exchange(link, clock, tgt, &service_realm, params, Some(&x509_user)).await? {
        Ok((evidence, s4u_reply)) => {
            if !asn1::same_name(&evidence.sname, &own_name) {
                return Err(KcdError::malformed(
                    "the S4U2Self ticket is not for the gateway",
                ));
            }
            if !asn1::has_flag(&evidence.flags.0, ticket_flag::FORWARDABLE) {
                return Err(KcdError::DelegationNotAllowed {
                    target: own(),
                    reason: "the S4U2Self ticket is not forwardable: the gateway may not use protocol transition (MIT ok_to_auth_as_delegate, AD TrustedToAuthForDelegation), or its TGT is not forwardable".into(),
                });
            }
            check_vouched_user(&evidence, s4u_reply, user)?;
            Ok(evidence)
        }
        Err(error) => Err(match error.error_code {
            error_code::C_PRINCIPAL_UNKNOWN => KcdError::UnknownUser {
                user: user.to_string(),
            },
            error_code::S_PRINCIPAL_UNKNOWN => KcdError::UnknownService { principal: own() },
            error_code::BADOPTION => KcdError::DelegationNotAllowed {
                target: own(),
                reason: format!(
                    "S4U2Self refused (KDC_ERR_BADOPTION) {}",
                    kdc::error_text(&error)
                ),
            },
            _ => kdc::generic_error(&error),
        }),
    }
}

/// S4U2Proxy: a ticket for the evidence ticket's client to `target`, with the evidence ticket
/// as additional ticket and `cname-in-addl-tkt`.
///
/// # Errors
///
/// [`KcdError::DelegationNotAllowed`] if the KDC refuses the delegation;
/// [`KcdError::UnknownService`] if it does not know the target.
pub(crate) async fn s4u2proxy(
    link: &KdcLink,
    clock: &Clock,
    tgt: &Credential,
    evidence: &Credential,
    target: &ServiceName,
) -> Result<Credential, KcdError> {
    let sname = target.principal_name()?;
    let realm = asn1::kstring(&target.realm)?;
    let params = || TgsParams {
        sname: sname.clone(),
        realm: realm.clone(),
        options: vec![kdc_option::FORWARDABLE, kdc_option::CNAME_IN_ADDL_TKT],
        extra_padata: Vec::new(),
        additional_tickets: Some(vec![evidence.ticket.clone()]),
    };
    match tgs_exchange(link, clock, tgt, &target.realm, params, None).await? {
        Ok((ticket, _)) => {
            if !asn1::same_name(&ticket.sname, &sname) {
                return Err(KcdError::malformed(format!(
                    "the S4U2Proxy ticket is for {}, not {target}",
                    asn1::name_text(&ticket.sname)
                )));
            }
            if !asn1::same_name(&ticket.cname, &evidence.cname) {
                return Err(KcdError::malformed(
                    "the S4U2Proxy ticket is not for the user",
                ));
            }
            Ok(ticket)
        }
        Err(error) => Err(match error.error_code {
            // MIT answers BADOPTION; AD may answer POLICY for accounts that are sensitive and
            // cannot be delegated.
            error_code::BADOPTION | error_code::POLICY => KcdError::DelegationNotAllowed {
                target: target.to_string(),
                reason: format!(
                    "the KDC refused S4U2Proxy (error {}){}",
                    error.error_code,
                    match kdc::error_text(&error) {
                        text if text.is_empty() => String::new(),
                        text => format!(": {text}"),
                    }
                ),
            },
            error_code::S_PRINCIPAL_UNKNOWN => KcdError::UnknownService {
                principal: target.to_string(),
            },
            _ => kdc::generic_error(&error),
        }),
    }
}

/// Whom S4U2Self's PA-S4U-X509-USER names.
struct X509User<'a> {
    user: &'a UserName,
    service_realm: &'a str,
    /// The user's certificate (DER), to identify the user by it.
    certificate: Option<&'a [u8]>,
}

/// The S4U2Self reply's client must be the user the KDC vouched for in its PA-S4U-X509-USER:
/// the reply's `cname` is covered by no checksum, the KDC's answer is (MIT's client makes the
/// same check).
fn check_vouched_user(
    evidence: &Credential,
    s4u_reply: Option<S4uReply>,
    user: &UserName,
) -> Result<(), KcdError> {
    match s4u_reply {
        Some(S4uReply::Verified {
            cname,
            crealm,
            reply_key_usage,
        }) => {
            let same_realm = evidence
                .crealm
                .as_bytes()
                .eq_ignore_ascii_case(crealm.as_bytes());
            if !asn1::same_name(&evidence.cname, &cname) || !same_realm {
                return Err(KcdError::malformed(format!(
                    "the S4U2Self reply names {}@{}, but the KDC's PA-S4U-X509-USER vouches for {}@{}",
                    asn1::name_text(&evidence.cname),
                    asn1::text(&evidence.crealm),
                    asn1::name_text(&cname),
                    asn1::text(&crealm)
                )));
            }
            tracing::debug!(
                %user,
                reply_key_usage,
                "S4U2Self: the KDC's PA-S4U-X509-USER verified"
            );
        }
        Some(S4uReply::NotAnswered) | None => {
            tracing::debug!(
                %user,
                "S4U2Self: the KDC did not answer PA-S4U-X509-USER (it reads PA-FOR-USER only)"
            );
        }
    }
    Ok(())
}

/// The TGS-REQ `request` with `extra` added to its padata. The authenticator's checksum covers
/// the request body only (RFC 4120 7.2.2), so padata that must carry the body's nonce is added
/// once the request is built, as MIT's client does in its `build_pa_s4u_x509_user` callback.
fn with_padata(request: &[u8], extra: PaData) -> Result<Vec<u8>, KcdError> {
    let mut request: TgsReq = asn1::decode(request, "TGS-REQ")?;
    request.0.padata.get_or_insert_with(Vec::new).push(extra);
    asn1::encode(&request, "TGS-REQ")
}

/// The value of the first padata of type `pa_type`, if any.
fn padata_value(padata: &[PaData], pa_type: i32) -> Option<&[u8]> {
    padata
        .iter()
        .find(|pa| pa.r#type == pa_type)
        .map(|pa| pa.value.as_ref())
}

/// The `encrypted-pa-data` of the reply's encrypted part (RFC 6806 appendix A); none if the
/// part does not decrypt or decode, which [`kdc::credential_from_rep`] then reports.
fn encrypted_padata(rep: &KdcRep, key: &Key) -> Vec<PaData> {
    let Ok(plaintext) = key.decrypt(usage::TGS_REP_ENC_PART, &rep.enc_part.cipher) else {
        return Vec::new();
    };
    let part = match plaintext.first() {
        Some(0x79) => asn1::decode::<EncAsRepPart>(&plaintext, "EncASRepPart").map(|p| p.0),
        Some(0x7a) => asn1::decode::<EncTgsRepPart>(&plaintext, "EncTGSRepPart").map(|p| p.0),
        _ => return Vec::new(),
    };
    part.ok()
        .and_then(|part| part.encrypted_pa_data)
        .unwrap_or_default()
}

/// One TGS exchange authenticated with `tgt`; on `KRB_AP_ERR_SKEW` the KDC's time is adopted
/// and the request made once more. A KRB-ERROR is returned for the caller to name.
///
/// With `x509_user`, the request carries PA-S4U-X509-USER for the request's nonce, and the
/// KDC's answer to it is checked and returned.
async fn tgs_exchange(
    link: &KdcLink,
    clock: &Clock,
    tgt: &Credential,
    realm: &str,
    params: impl Fn() -> TgsParams,
    x509_user: Option<&X509User<'_>>,
) -> Result<Result<(Credential, Option<S4uReply>), Box<KrbError>>, KcdError> {
    let mut skew_retried = false;
    loop {
        let (request, nonce) = kdc::tgs_request(tgt, params(), clock.now())?;
        let sent = match x509_user {
            Some(x509) => Some(PaS4uX509User::for_user(
                x509.user,
                x509.service_realm,
                x509.certificate,
                nonce,
                &tgt.session_key,
            )?),
            None => None,
        };
        let request = match &sent {
            Some(pa) => with_padata(
                &request,
                PaData {
                    r#type: sfu::PA_S4U_X509_USER,
                    value: asn1::encode(pa, "PA-S4U-X509-USER")?.into(),
                },
            )?,
            None => request,
        };
        let reply = link.send(realm, &request).await?;
        match kdc::decode_reply(&reply, false)? {
            Reply::Rep(rep) => {
                // Read before the credential takes the reply apart; reported after it, so
                // that a reply that does not decrypt says so first.
                let s4u_reply = sent.as_ref().map(|pa| {
                    let encrypted = encrypted_padata(&rep, &tgt.session_key);
                    pa.verify_reply(
                        &tgt.session_key,
                        rep.padata
                            .as_deref()
                            .and_then(|padata| padata_value(padata, sfu::PA_S4U_X509_USER)),
                        padata_value(&encrypted, sfu::PA_S4U_X509_USER),
                    )
                });
                let credential = kdc::credential_from_rep(
                    *rep,
                    &tgt.session_key,
                    usage::TGS_REP_ENC_PART,
                    nonce,
                    |e| {
                        KcdError::malformed(format!(
                            "the TGS reply does not decrypt with the session key: {e}"
                        ))
                    },
                )?;
                return Ok(Ok((credential, s4u_reply.transpose()?)));
            }
            Reply::Error(error) if error.error_code == error_code::AP_ERR_SKEW => {
                let skew = clock.adopt(&error);
                if skew_retried {
                    return Err(KcdError::ClockSkew { skew });
                }
                skew_retried = true;
            }
            Reply::Error(error) => return Ok(Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rasn::types::Integer;
    use rasn_kerberos::{EncryptedData, Ticket, TicketFlags};

    use super::*;
    use crate::crypto::{self, EncType};

    #[test]
    fn a_credential_keeps_its_session_key_ready_for_the_first_usage_only() {
        use std::borrow::Cow;
        let credential = credential("alice");
        assert!(matches!(credential.sealing_key(11), Cow::Borrowed(_)));
        assert!(matches!(credential.sealing_key(11), Cow::Borrowed(_)));
        let other = credential.sealing_key(7);
        assert!(matches!(other, Cow::Owned(_)));
        assert_eq!(other.usage(), 7);
        let sealed = credential.sealing_key(11).encrypt(b"authenticator");
        assert_eq!(
            credential.session_key.decrypt(11, &sealed).unwrap(),
            b"authenticator"
        );
    }

    fn credential(cname: &str) -> Credential {
        let realm = asn1::kstring("TEST.LOCAL").unwrap();
        let sname = asn1::principal_name(2, &["krbtgt", "TEST.LOCAL"]).unwrap();
        let ticket = Ticket {
            tkt_vno: Integer::from(5),
            realm: realm.clone(),
            sname: sname.clone(),
            enc_part: EncryptedData {
                etype: 18,
                kvno: Some(1),
                cipher: vec![0x42; 64].into(),
            },
        };
        Credential {
            ticket_der: crate::ap_req::encode_ticket(&ticket).unwrap(),
            ticket,
            session_key: Key::random(EncType::Aes256CtsHmacSha196),
            crealm: realm.clone(),
            cname: asn1::principal_name(1, &[cname]).unwrap(),
            srealm: realm,
            sname,
            flags: TicketFlags(asn1::flags(&[])),
            sealing_key: std::sync::OnceLock::new(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    #[test]
    fn padata_added_after_the_request_is_built_leaves_the_signed_body_alone() {
        let tgt = credential("HTTP/seg.test.local");
        let params = TgsParams {
            sname: tgt.cname.clone(),
            realm: tgt.crealm.clone(),
            options: vec![kdc_option::FORWARDABLE],
            extra_padata: Vec::new(),
            additional_tickets: None,
        };
        let (built, _) = kdc::tgs_request(&tgt, params, SystemTime::now()).unwrap();
        let extra = PaData {
            r#type: sfu::PA_S4U_X509_USER,
            value: vec![0x30, 0x00].into(),
        };

        let amended = with_padata(&built, extra.clone()).unwrap();

        let before: TgsReq = rasn::der::decode(&built).unwrap();
        let after: TgsReq = rasn::der::decode(&amended).unwrap();
        // The authenticator's checksum (key usage 6) is over the body's DER, unchanged.
        let body = rasn::der::encode(&after.0.req_body).unwrap();
        assert_eq!(body, rasn::der::encode(&before.0.req_body).unwrap());
        for request in [&built, &amended] {
            assert!(request.windows(body.len()).any(|w| w == body));
        }
        let ap_req: rasn_kerberos::ApReq =
            rasn::der::decode(&after.0.padata.as_ref().unwrap()[0].value).unwrap();
        let plain = tgt
            .session_key
            .decrypt(usage::TGS_REQ_AUTHENTICATOR, &ap_req.authenticator.cipher)
            .unwrap();
        let authenticator: rasn_kerberos::Authenticator = asn1::decode(&plain, "").unwrap();
        let cksum = authenticator.cksum.unwrap();
        let cksum = crypto::Checksum {
            cksumtype: cksum.r#type,
            value: cksum.checksum.to_vec(),
        };
        tgt.session_key
            .verify_checksum(usage::TGS_REQ_AUTH_CKSUM, &body, &cksum)
            .unwrap();
        let types: Vec<i32> = after.0.padata.iter().flatten().map(|p| p.r#type).collect();
        assert_eq!(types, [1, sfu::PA_S4U_X509_USER]);
        assert_eq!(after.0.padata.unwrap()[1], extra);
    }

    #[test]
    fn an_evidence_ticket_for_another_user_than_the_kdc_vouched_for_is_a_tampered_reply() {
        let evidence = credential("bob");
        let alice = UserName::principal("alice", "TEST.LOCAL").unwrap();
        let vouched = S4uReply::Verified {
            cname: asn1::principal_name(1, &["alice"]).unwrap(),
            crealm: asn1::kstring("test.local").unwrap(),
            reply_key_usage: true,
        };

        let error = check_vouched_user(&evidence, Some(vouched.clone()), &alice).unwrap_err();

        assert!(
            matches!(&error, KcdError::MalformedReply(reason) if reason.contains("names bob@TEST.LOCAL")),
            "{error:?}"
        );
        assert!(check_vouched_user(&credential("alice"), Some(vouched), &alice).is_ok());
        assert!(check_vouched_user(&evidence, Some(S4uReply::NotAnswered), &alice).is_ok());
    }
}
