//! Reading the realms and KDCs out of an MIT `krb5.conf`, for operators who already have one
//! (the `seg-proxy kcd-token` check command, deployments moving from a system Kerberos set-up).
//!
//! Only what [`crate::KcdConfig`] needs is read: `[libdefaults] default_realm` and
//! `udp_preference_limit`, and, per realm in `[realms]`, its `kdc` lines in order, each
//! `host[:port]` optionally prefixed `tcp/` (that KDC is reached over TCP only) or `udp/` (the
//! default: UDP first), as MIT writes them. Everything else (including `include` directives
//! and DNS lookups) is ignored; the client never reads the system's configuration by itself.
//! [`Krb5Conf::kcd_config`] makes the client's configuration from it.
//!
//! ```
//! let text = "[libdefaults]\n default_realm = TEST.LOCAL\n[realms]\n TEST.LOCAL = {\n  kdc = 127.0.0.1:8800\n }\n";
//! let conf = kcd_client::krb5_conf::Krb5Conf::parse(text).unwrap();
//! assert_eq!(conf.default_realm.as_deref(), Some("TEST.LOCAL"));
//! assert_eq!(conf.realms[0].kdcs, ["127.0.0.1:8800"]);
//! ```

use crate::config::{Credentials, KcdConfig, RealmConfig};
use crate::error::KcdError;
use std::path::Path;

/// What a `krb5.conf` says about realms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krb5Conf {
    /// `[libdefaults] default_realm`.
    pub default_realm: Option<String>,
    /// `[libdefaults] udp_preference_limit`: requests longer than this many bytes go to the
    /// KDC over TCP (`1`: always TCP); `None` when the file does not set it.
    pub udp_preference_limit: Option<usize>,
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
                ("libdefaults", 0, "udp_preference_limit") => {
                    let limit = value.parse().map_err(|_| {
                        error(&format!(
                            "udp_preference_limit {value:?} is not a number of bytes"
                        ))
                    })?;
                    conf.udp_preference_limit = Some(limit);
                }
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

    /// The client's configuration for `service_principal` with `credentials` and these realms
    /// (the default realm first: a principal without `@REALM` belongs to it), with
    /// `udp_preference_limit` when the file sets it; the rest is [`KcdConfig::new`]'s defaults.
    pub fn kcd_config(
        self,
        service_principal: impl Into<String>,
        credentials: Credentials,
    ) -> KcdConfig {
        let limit = self.udp_preference_limit;
        let mut config =
            KcdConfig::new(self.realms_default_first(), service_principal, credentials);
        if let Some(limit) = limit {
            config.udp_preference_limit = limit;
        }
        config
    }
}

impl Krb5Conf {
    /// The realms, the default realm's first (a principal without `@REALM` belongs to it), the
    /// others in file order.
    pub fn realms_default_first(self) -> Vec<RealmConfig> {
        let mut realms = self.realms;
        if let Some(default) = &self.default_realm
            && let Some(index) = realms.iter().position(|r| &r.realm == default)
        {
            let realm = realms.remove(index);
            realms.insert(0, realm);
        }
        realms
    }
}

/// The `host:port` to connect to for a `kdc` value: without its `tcp/` or `udp/` prefix, and
/// with port 88 when it names none (`host`, `[v6]`, or a bare IPv6 address, which gets its
/// brackets).
pub fn kdc_socket_address(kdc: &str) -> String {
    let kdc = kdc_address(kdc);
    if kdc.parse::<std::net::SocketAddr>().is_ok() {
        return kdc.to_owned();
    }
    if let Ok(ip) = kdc.parse::<std::net::Ipv6Addr>() {
        return format!("[{ip}]:{KDC_PORT}");
    }
    match kdc.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => kdc.to_owned(),
        _ => format!("{kdc}:{KDC_PORT}"),
    }
}

/// The KDC port when a `kdc` value names none.
const KDC_PORT: u16 = 88;

/// The `host[:port]` of a `kdc` value, without its `tcp/` or `udp/` prefix (any case).
pub fn kdc_address(kdc: &str) -> &str {
    transport_prefix(kdc).1
}

/// Whether a `kdc` value asks for TCP only (`tcp/host`), and its `host[:port]`.
pub(crate) fn transport_prefix(kdc: &str) -> (bool, &str) {
    let kdc = kdc.trim();
    match kdc.get(..4).map(str::to_ascii_lowercase).as_deref() {
        Some("tcp/") => (true, &kdc[4..]),
        Some("udp/") => (false, &kdc[4..]),
        _ => (false, kdc),
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
    fn udp_preference_limit_and_transport_prefixes_are_read() {
        let text = "[libdefaults]\n default_realm = B\n udp_preference_limit = 1\n[realms]\n A = {\n  kdc = a:88\n }\n B = {\n  kdc = tcp/127.0.0.1:8800\n  kdc = UDP/b2\n }\n";
        let conf = Krb5Conf::parse(text).unwrap();
        assert_eq!(conf.udp_preference_limit, Some(1));
        assert_eq!(conf.realms[1].kdcs, ["tcp/127.0.0.1:8800", "UDP/b2"]);
        assert_eq!(kdc_address(&conf.realms[1].kdcs[0]), "127.0.0.1:8800");
        assert_eq!(
            transport_prefix("tcp/127.0.0.1:8800"),
            (true, "127.0.0.1:8800")
        );
        assert_eq!(transport_prefix("UDP/b2"), (false, "b2"));
        assert_eq!(
            transport_prefix("kdc.tcp.example"),
            (false, "kdc.tcp.example")
        );
        let config = conf.kcd_config("HTTP/seg", Credentials::Password("x".into()));
        assert_eq!(config.udp_preference_limit, 1);
        assert_eq!(config.realms[0].realm, "B", "the default realm first");
        let unset = Krb5Conf::parse("[realms]\n A = {\n  kdc = a\n }\n").unwrap();
        assert_eq!(unset.udp_preference_limit, None);
        assert_eq!(
            unset
                .kcd_config("HTTP/seg", Credentials::Password("x".into()))
                .udp_preference_limit,
            1465
        );
        assert!(Krb5Conf::parse("[libdefaults]\n udp_preference_limit = lots\n").is_err());
    }

    #[test]
    fn unbalanced_braces_are_errors_with_the_line() {
        let error = Krb5Conf::parse("[realms]\n}\n").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(Krb5Conf::parse("[realms]\n A = {\n kdc = x\n").is_err());
    }
}
