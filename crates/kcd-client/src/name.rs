//! Names: the user a ticket is asked for ([`UserName`]) and service principals.

use std::fmt;
use std::sync::Arc;

use rasn_kerberos::PrincipalName;

use crate::KcdError;
use crate::asn1::{self, name_type};

/// The user on whose behalf the gateway asks for a ticket.
///
/// Two forms, because directories resolve names differently:
///
/// - an *enterprise* name ([`UserName::enterprise`]): a UPN such as `alice@corp.example`, sent
///   whole as one component of type NT-ENTERPRISE (10). Active Directory resolves it to the
///   account even when the UPN suffix is not the realm. MIT Kerberos does not resolve
///   enterprise names.
/// - a *principal* name ([`UserName::principal`]): `alice` in realm `TEST.LOCAL`, sent as
///   NT-PRINCIPAL (1). Every KDC understands it; in AD it must be the account name.
///
/// [`UserName::parse`] picks the form from text; see there for the rule.
///
/// Cloning is cheap (a reference count): a name goes with every request the gateway
/// authenticates and keys the ticket cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName {
    form: Arc<Form>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Form {
    Enterprise(String),
    Principal {
        components: Vec<String>,
        realm: String,
    },
}

impl UserName {
    /// An enterprise name (NT-ENTERPRISE): a UPN such as `alice@corp.example`.
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] if `upn` is empty or contains control characters.
    pub fn enterprise(upn: &str) -> Result<Self, KcdError> {
        check_text(upn)?;
        Ok(Self {
            form: Arc::new(Form::Enterprise(upn.to_string())),
        })
    }

    /// A principal name (NT-PRINCIPAL): `name` (components separated by `/`) in `realm`.
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] if the name or realm is empty, has an empty component, or
    /// contains `@` or control characters.
    pub fn principal(name: &str, realm: &str) -> Result<Self, KcdError> {
        check_text(name)?;
        check_text(realm)?;
        if name.contains('@') || realm.contains('@') || name.split('/').any(str::is_empty) {
            return Err(KcdError::InvalidName {
                name: format!("{name}@{realm}"),
                reason: "a principal name has non-empty components and no '@'".into(),
            });
        }
        Ok(Self {
            form: Arc::new(Form::Principal {
                components: name.split('/').map(String::from).collect(),
                realm: realm.to_string(),
            }),
        })
    }

    /// Reads a user name the way an operator or a certificate gives it:
    ///
    /// - `alice` (no `@`) is the principal `alice` in `default_realm`;
    /// - `alice@TEST.LOCAL`, whose suffix is spelled exactly like `default_realm` (realms are
    ///   case-sensitive and conventionally upper case), is the principal `alice` in that
    ///   realm;
    /// - anything else with an `@` (`alice@corp.example`) is an enterprise name (UPN), for
    ///   the KDC to resolve.
    ///
    /// # Errors
    ///
    /// [`KcdError::InvalidName`] for an empty name, an empty part around the `@`, or control
    /// characters.
    pub fn parse(text: &str, default_realm: &str) -> Result<Self, KcdError> {
        match text.rsplit_once('@') {
            None => Self::principal(text, default_realm),
            Some((name, realm)) if realm == default_realm => Self::principal(name, realm),
            Some((name, suffix)) if name.is_empty() || suffix.is_empty() => {
                Err(KcdError::InvalidName {
                    name: text.to_string(),
                    reason: "empty name or suffix around '@'".into(),
                })
            }
            Some(_) => Self::enterprise(text),
        }
    }

    /// Whether this is an enterprise name.
    pub fn is_enterprise(&self) -> bool {
        matches!(*self.form, Form::Enterprise(_))
    }

    /// The realm the user is asked for in: the principal's realm, or `service_realm` for an
    /// enterprise name (the KDC of the gateway's realm resolves it).
    pub(crate) fn realm<'a>(&'a self, service_realm: &'a str) -> &'a str {
        match &*self.form {
            Form::Enterprise(_) => service_realm,
            Form::Principal { realm, .. } => realm,
        }
    }

    /// The name as a Kerberos principal name.
    pub(crate) fn principal_name(&self) -> Result<PrincipalName, KcdError> {
        match &*self.form {
            Form::Enterprise(upn) => asn1::principal_name(name_type::ENTERPRISE, &[upn]),
            Form::Principal { components, .. } => {
                let parts: Vec<&str> = components.iter().map(String::as_str).collect();
                asn1::principal_name(name_type::PRINCIPAL, &parts)
            }
        }
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.form {
            Form::Enterprise(upn) => f.write_str(upn),
            Form::Principal { components, realm } => {
                write!(f, "{}@{realm}", components.join("/"))
            }
        }
    }
}

/// A service principal: components and realm.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServiceName {
    pub(crate) components: Vec<String>,
    pub(crate) realm: String,
}

impl ServiceName {
    /// Reads `HTTP/host[@REALM]` or `account@REALM`; without a realm, `default_realm`.
    pub(crate) fn parse(text: &str, default_realm: &str) -> Result<Self, KcdError> {
        check_text(text)?;
        let (name, realm) = text.rsplit_once('@').unwrap_or((text, default_realm));
        if name.is_empty() || realm.is_empty() || name.split('/').any(str::is_empty) {
            return Err(KcdError::InvalidName {
                name: text.to_string(),
                reason: "expected service/host[@REALM] or account@REALM".into(),
            });
        }
        Ok(Self {
            components: name.split('/').map(String::from).collect(),
            realm: realm.to_string(),
        })
    }

    /// What [`ServiceName::parse`] of `text` displays as, for any `text` it accepts, without
    /// reading the name: `text` when it names a realm, else `text@default_realm`. The ticket
    /// cache's key, spelt for every request without parsing the name again.
    pub(crate) fn canonical(text: &str, default_realm: &str) -> String {
        if text.contains('@') {
            return text.to_owned();
        }
        let mut name = String::with_capacity(text.len() + 1 + default_realm.len());
        name.push_str(text);
        name.push('@');
        name.push_str(default_realm);
        name
    }

    /// As a principal name: NT-SRV-INST for `service/host`, NT-PRINCIPAL for an account.
    pub(crate) fn principal_name(&self) -> Result<PrincipalName, KcdError> {
        let parts: Vec<&str> = self.components.iter().map(String::as_str).collect();
        let name_type = if parts.len() > 1 {
            name_type::SRV_INST
        } else {
            name_type::PRINCIPAL
        };
        asn1::principal_name(name_type, &parts)
    }

    /// `krbtgt/REALM@REALM`.
    pub(crate) fn krbtgt(realm: &str) -> Self {
        Self {
            components: vec!["krbtgt".into(), realm.to_string()],
            realm: realm.to_string(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.components.join("/"), self.realm)
    }
}

fn check_text(text: &str) -> Result<(), KcdError> {
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(KcdError::InvalidName {
            name: text.to_string(),
            reason: "empty or contains control characters".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_picks_the_form_by_the_suffix() {
        let realm = "TEST.LOCAL";
        assert_eq!(
            UserName::parse("alice", realm).unwrap(),
            UserName::principal("alice", realm).unwrap()
        );
        assert_eq!(
            UserName::parse("alice@TEST.LOCAL", realm).unwrap(),
            UserName::principal("alice", realm).unwrap()
        );
        let upn = UserName::parse("alice@corp.example", realm).unwrap();
        assert!(upn.is_enterprise());
        let name = upn.principal_name().unwrap();
        assert_eq!(name.r#type, 10);
        assert_eq!(name.string.len(), 1);
        assert_eq!(upn.to_string(), "alice@corp.example");
        assert!(UserName::parse("@corp.example", realm).is_err());
        assert!(UserName::parse("", realm).is_err());
    }

    #[test]
    fn service_names_read_with_or_without_realm() {
        let s = ServiceName::parse("HTTP/exchange.test.local", "TEST.LOCAL").unwrap();
        assert_eq!(s.to_string(), "HTTP/exchange.test.local@TEST.LOCAL");
        assert_eq!(s.principal_name().unwrap().r#type, 2);
        let a = ServiceName::parse("svc-seg@CORP.EXAMPLE", "X").unwrap();
        assert_eq!(a.realm, "CORP.EXAMPLE");
        assert_eq!(a.principal_name().unwrap().r#type, 1);
        assert!(ServiceName::parse("HTTP//x", "X").is_err());
    }

    #[test]
    fn the_canonical_spelling_is_the_parsed_names_display() {
        for text in [
            "HTTP/exchange.test.local",
            "HTTP/exchange.test.local@TEST.LOCAL",
            "HTTP/exchange.test.local@OTHER.REALM",
            "svc-seg@CORP.EXAMPLE",
            "svc-seg",
            "a@b@TEST.LOCAL",
            "HTTP/x/y",
        ] {
            let parsed = ServiceName::parse(text, "TEST.LOCAL").unwrap();
            assert_eq!(
                ServiceName::canonical(text, "TEST.LOCAL"),
                parsed.to_string(),
                "{text}"
            );
        }
    }
}
