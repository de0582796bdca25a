//! Reading the realms and KDCs out of an MIT `krb5.conf`, for operators who already have one
//! (the `seg-proxy kcd-token` check command, deployments moving from a system Kerberos set-up).
//!
//! Only what [`crate::KcdConfig`] needs is read: `[libdefaults] default_realm` and, per realm in
//! `[realms]`, its `kdc` lines in order. Everything else (including `include` directives and
//! DNS lookups) is ignored; the client never reads the system's configuration by itself.
//!
//! ```
//! let text = "[libdefaults]\n default_realm = TEST.LOCAL\n[realms]\n TEST.LOCAL = {\n  kdc = 127.0.0.1:8800\n }\n";
//! let conf = kcd_client::krb5_conf::Krb5Conf::parse(text).unwrap();
//! assert_eq!(conf.default_realm.as_deref(), Some("TEST.LOCAL"));
//! assert_eq!(conf.realms[0].kdcs, ["127.0.0.1:8800"]);
//! ```

use crate::config::RealmConfig;
use crate::error::KcdError;
use std::path::Path;

/// What a `krb5.conf` says about realms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krb5Conf {
    /// `[libdefaults] default_realm`.
    pub default_realm: Option<String>,
    /// The realms of `[realms]` that name at least one KDC, in file order.
    pub realms: Vec<RealmConfig>,
}

impl Krb5Conf {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    ///
    /// [`KcdError::Config`] naming the file when it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Krb5Conf, KcdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KcdError::Config(format!("{}: {e}", path.display())))?;
        Krb5Conf::parse(&text).map_err(|e| match e {
            KcdError::Config(message) => KcdError::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Parses `krb5.conf` text.
    ///
    /// # Errors
    ///
    /// [`KcdError::Config`] with the line number of an unbalanced brace or a realm block
    /// outside `[realms]`'s syntax.
    pub fn parse(text: &str) -> Result<Krb5Conf, KcdError> {
        let mut conf = Krb5Conf::default();
        let mut section = String::new();
        // The realm whose `{ … }` block we are in, and how deep in nested blocks.
        let mut realm: Option<RealmConfig> = None;
        let mut depth = 0usize;
        for (number, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let error = |message: &str| KcdError::Config(format!("line {}: {message}", number + 1));
            if depth == 0 && line.starts_with('[') {
                section = line
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .to_owned();
                continue;
            }
            if line == "}" {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| error("'}' without '{'"))?;
                if depth == 0
                    && let Some(done) = realm.take()
                    && !done.kdcs.is_empty()
                {
                    conf.realms.push(done);
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if value == "{" {
                if depth == 0 && section == "realms" {
                    realm = Some(RealmConfig {
                        realm: key.to_owned(),
                        kdcs: Vec::new(),
                    });
                }
                depth += 1;
                continue;
            }
            match (section.as_str(), depth, key) {
                ("libdefaults", 0, "default_realm") => conf.default_realm = Some(value.to_owned()),
                ("realms", 1, "kdc") => {
                    if let Some(realm) = realm.as_mut() {
                        realm.kdcs.push(value.to_owned());
                    }
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(KcdError::Config("unclosed '{' at the end".into()));
        }
        Ok(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_kdcs_and_default_realm_are_read_in_order() {
        let text = "\
# comment
[libdefaults]
  default_realm = CORP.EXAMPLE
  forwardable = true
[realms]
  CORP.EXAMPLE = {
    kdc = dc1.corp.example
    kdc = dc2.corp.example:88
    admin_server = dc1.corp.example
    auth_to_local = {
      kdc = not-a-kdc
    }
  }
  EMPTY.EXAMPLE = {
  }
  TEST.LOCAL = {
    kdc = 127.0.0.1:8800
  }
[domain_realm]
  .corp.example = CORP.EXAMPLE
";
        let conf = Krb5Conf::parse(text).unwrap();
        assert_eq!(conf.default_realm.as_deref(), Some("CORP.EXAMPLE"));
        assert_eq!(
            conf.realms,
            [
                RealmConfig {
                    realm: "CORP.EXAMPLE".into(),
                    kdcs: vec!["dc1.corp.example".into(), "dc2.corp.example:88".into()],
                },
                RealmConfig {
                    realm: "TEST.LOCAL".into(),
                    kdcs: vec!["127.0.0.1:8800".into()],
                },
            ]
        );
    }

    #[test]
    fn unbalanced_braces_are_errors_with_the_line() {
        let error = Krb5Conf::parse("[realms]\n}\n").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(Krb5Conf::parse("[realms]\n A = {\n kdc = x\n").is_err());
    }
}
