//! The gateway's own login (AS exchange, RFC 4120 3.1) with a keytab or a password: first
//! without pre-authentication, to learn salt and encryption type from the KDC's
//! `KDC_ERR_PREAUTH_REQUIRED`, then with PA-ENC-TIMESTAMP.

use std::time::UNIX_EPOCH;

use rasn::types::Integer;
use rasn_kerberos::{
    AsReq, EncryptedData, EtypeInfo2, EtypeInfo2Entry, MethodData, PaData, PaEncTsEnc,
};

use crate::KcdError;
use crate::asn1::{self, error_code, kdc_option, msg_type, pa_type, usage};
use crate::clock::Clock;
use crate::crypto::{EncType, Key};
use crate::kdc::{self, Body, Credential, Reply};
use crate::keytab::{Keytab, Principal};
use crate::name::ServiceName;
use crate::transport::KdcLink;

/// What the gateway proves its identity with.
pub(crate) enum Secret {
    /// Long-term keys from a keytab.
    Keytab(Keytab),
    /// A password, from which keys are derived with the KDC's salt.
    Password(String),
}

/// Logs `principal` in and returns its TGT (forwardable, as S4U2Self needs).
pub(crate) async fn login(
    link: &KdcLink,
    clock: &Clock,
    principal: &ServiceName,
    secret: &Secret,
) -> Result<Credential, KcdError> {
    let bad = |reason: &str| KcdError::BadCredentials {
        principal: principal.to_string(),
        reason: reason.to_string(),
    };
    let realm = asn1::kstring(&principal.realm)?;
    let parts: Vec<&str> = principal.components.iter().map(String::as_str).collect();
    // Clients name themselves NT-PRINCIPAL in AS requests, services included (as kinit does).
    let cname = asn1::principal_name(asn1::name_type::PRINCIPAL, &parts)?;
    let krbtgt = ServiceName::krbtgt(&principal.realm).principal_name()?;
    let etypes: Vec<i32> = match secret {
        Secret::Keytab(keytab) => {
            let owner = keytab_principal(principal);
            let etypes: Vec<i32> = EncType::PREFERRED
                .iter()
                .filter(|etype| keytab.key_for(&owner, **etype).is_some())
                .map(|etype| etype.as_i32())
                .collect();
            if etypes.is_empty() {
                return Err(bad("the keytab holds no key of a supported type for it"));
            }
            etypes
        }
        Secret::Password(_) => kdc::offered_etypes(),
    };

    let mut preauth: Option<(Key, Option<PaData>)> = None;
    let mut skew_retried = false;
    let mut preauth_tried = false;
    loop {
        let now = clock.now();
        let mut padata = Vec::new();
        if let Some((key, cookie)) = &preauth {
            padata.push(encrypted_timestamp(key, now)?);
            padata.extend(cookie.clone());
        }
        let nonce = kdc::nonce();
        let body = Body {
            options: vec![kdc_option::FORWARDABLE],
            cname: Some(cname.clone()),
            realm: realm.clone(),
            sname: krbtgt.clone(),
            etypes: etypes.clone(),
            additional_tickets: None,
        }
        .build(now, nonce);
        let request = AsReq(kdc::request(msg_type::AS_REQ, padata, body));
        let reply = link
            .send(&principal.realm, &asn1::encode(&request, "AS-REQ")?)
            .await?;
        match kdc::decode_reply(&reply, true)? {
            Reply::Rep(rep) => {
                let key = match preauth {
                    Some((key, _)) if key.etype().as_i32() == rep.enc_part.etype => key,
                    _ => {
                        // No pre-authentication was asked for: the reply's ETYPE-INFO2 (if
                        // any) carries the salt.
                        let info = rep
                            .padata
                            .as_deref()
                            .and_then(|padata| etype_info2(padata).ok())
                            .unwrap_or_default();
                        let entry = info
                            .into_iter()
                            .find(|e| e.etype == rep.enc_part.etype)
                            .unwrap_or(EtypeInfo2Entry {
                                etype: rep.enc_part.etype,
                                salt: None,
                                s2kparams: None,
                            });
                        long_term_key(secret, principal, &entry).map_err(|e| bad(&e))?
                    }
                };
                let credential = kdc::credential_from_rep(
                    *rep,
                    &key,
                    usage::AS_REP_ENC_PART,
                    nonce,
                    |_| {
                        bad(
                            "the KDC's reply does not decrypt with its key: wrong password or keytab",
                        )
                    },
                )?;
                if !asn1::same_name(&credential.sname, &krbtgt) {
                    return Err(KcdError::malformed("the AS reply is not for krbtgt"));
                }
                return Ok(credential);
            }
            Reply::Error(error) => match error.error_code {
                error_code::PREAUTH_REQUIRED if !preauth_tried => {
                    preauth_tried = true;
                    let methods: MethodData = asn1::decode(
                        error.e_data.as_deref().unwrap_or_default(),
                        "METHOD-DATA of PREAUTH_REQUIRED",
                    )?;
                    let info = etype_info2(&methods)?;
                    let entry = info
                        .into_iter()
                        .find(|entry| etypes.contains(&entry.etype))
                        .ok_or_else(|| bad("no encryption type in common with the KDC"))?;
                    let key = long_term_key(secret, principal, &entry).map_err(|e| bad(&e))?;
                    // RFC 6113 5.2: a cookie the KDC sent is returned unchanged.
                    let cookie = methods.into_iter().find(|p| p.r#type == pa_type::FX_COOKIE);
                    preauth = Some((key, cookie));
                }
                error_code::AP_ERR_SKEW if !skew_retried => {
                    skew_retried = true;
                    let corrected = clock.adopt(&error);
                    tracing::info!(
                        ?corrected,
                        "adopted the KDC's time after a clock-skew error"
                    );
                }
                error_code::AP_ERR_SKEW => {
                    return Err(KcdError::ClockSkew {
                        skew: clock.adopt(&error),
                    });
                }
                error_code::PREAUTH_FAILED => {
                    return Err(bad("pre-authentication failed: wrong password or keytab"));
                }
                error_code::C_PRINCIPAL_UNKNOWN => {
                    return Err(bad("the KDC does not know the principal"));
                }
                error_code::ETYPE_NOSUPP => {
                    return Err(bad("no encryption type in common with the KDC"));
                }
                _ => return Err(kdc::generic_error(&error)),
            },
        }
    }
}

/// The keytab's name for the principal.
fn keytab_principal(principal: &ServiceName) -> Principal {
    Principal {
        realm: principal.realm.clone(),
        components: principal.components.clone(),
        name_type: asn1::name_type::PRINCIPAL,
    }
}

/// The ETYPE-INFO2 in `padata` (RFC 4120 5.2.7.5).
fn etype_info2(padata: &[PaData]) -> Result<EtypeInfo2, KcdError> {
    let value = padata
        .iter()
        .find(|p| p.r#type == pa_type::ETYPE_INFO2)
        .ok_or_else(|| KcdError::malformed("the KDC sent no ETYPE-INFO2"))?;
    asn1::decode(&value.value, "ETYPE-INFO2")
}

/// The long-term key for `entry`'s encryption type: from the keytab, or derived from the
/// password with the entry's salt (default: realm then components, RFC 4120 4).
fn long_term_key(
    secret: &Secret,
    principal: &ServiceName,
    entry: &EtypeInfo2Entry,
) -> Result<Key, String> {
    let etype = EncType::from_i32(entry.etype)
        .ok_or_else(|| format!("the KDC chose unsupported encryption type {}", entry.etype))?;
    match secret {
        Secret::Keytab(keytab) => keytab
            .key_for(&keytab_principal(principal), etype)
            .map(|entry| entry.key.clone())
            .ok_or_else(|| format!("the keytab holds no key of type {}", entry.etype)),
        Secret::Password(password) => {
            let salt = match &entry.salt {
                Some(salt) => asn1::text(salt),
                None => format!("{}{}", principal.realm, principal.components.concat()),
            };
            Key::from_password(etype, password, &salt, entry.s2kparams.as_deref())
                .map_err(|e| format!("deriving the key from the password failed: {e}"))
        }
    }
}

/// PA-ENC-TIMESTAMP: the time, encrypted in the long-term key (key usage 1).
fn encrypted_timestamp(key: &Key, now: std::time::SystemTime) -> Result<PaData, KcdError> {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    let timestamp = PaEncTsEnc {
        patimestamp: asn1::kerberos_time(now),
        pausec: Some(Integer::from(i64::from(micros))),
    };
    let plaintext = asn1::encode(&timestamp, "PA-ENC-TS-ENC")?;
    let encrypted = EncryptedData {
        etype: key.etype().as_i32(),
        kvno: None,
        cipher: key.encrypt(usage::PA_ENC_TIMESTAMP, &plaintext).into(),
    };
    Ok(PaData {
        r#type: pa_type::ENC_TIMESTAMP,
        value: asn1::encode(&encrypted, "PA-ENC-TIMESTAMP")?.into(),
    })
}
