//! Constrained delegation (MS-SFU 3.1.5): S4U2Self, a ticket to the gateway itself for a user
//! who never authenticated to Kerberos, then S4U2Proxy, that ticket exchanged for one to the
//! target service.

use rasn_kerberos::{KrbError, PaData};

use crate::KcdError;
use crate::asn1::{self, error_code, kdc_option, pa_type, ticket_flag, usage};
use crate::clock::Clock;
use crate::kdc::{self, Credential, Reply, TgsParams};
use crate::name::{ServiceName, UserName};
use crate::sfu::PaForUser;
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
    match tgs_exchange(link, clock, tgt, &service_realm, params).await? {
        Ok(evidence) => {
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
    match tgs_exchange(link, clock, tgt, &target.realm, params).await? {
        Ok(ticket) => {
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

/// One TGS exchange authenticated with `tgt`; on `KRB_AP_ERR_SKEW` the KDC's time is adopted
/// and the request made once more. A KRB-ERROR is returned for the caller to name.
async fn tgs_exchange(
    link: &KdcLink,
    clock: &Clock,
    tgt: &Credential,
    realm: &str,
    params: impl Fn() -> TgsParams,
) -> Result<Result<Credential, Box<KrbError>>, KcdError> {
    let mut skew_retried = false;
    loop {
        let (request, nonce) = kdc::tgs_request(tgt, params(), clock.now())?;
        let reply = link.send(realm, &request).await?;
        match kdc::decode_reply(&reply, false)? {
            Reply::Rep(rep) => {
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
                return Ok(Ok(credential));
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
