//! The text of the files the KDC runs from: slapd's configuration, MIT's `kdc.conf` and
//! `krb5.conf`, and the LDIF that sets up the directory and the delegation rules.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use super::KdcConfig;

/// The LDAP suffix of the private directory. It is independent of the realm: nothing but our
/// own KDC reads this directory.
pub(super) const SUFFIX: &str = "o=seg-testbed";
/// The DN slapd's root user binds as; the KDC and `kadmin.local` bind as it too.
pub(super) const ADMIN_DN: &str = "cn=admin,o=seg-testbed";
/// Where the Kerberos realm container lives.
pub(super) const CONTAINER_DN: &str = "cn=krbContainer,o=seg-testbed";

/// Where OpenLDAP's core schema is installed by Debian's `slapd`.
pub(super) const CORE_SCHEMA: &str = "/etc/ldap/schema/core.schema";
/// Where Debian's `krb5-kdc-ldap` installs MIT's Kerberos schema for OpenLDAP.
pub(super) const KERBEROS_SCHEMA_GZ: &str = "/usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz";
/// Where Debian installs slapd's loadable modules (`back_mdb`).
pub(super) const SLAPD_MODULES: &str = "/usr/lib/ldap";

/// The names of the files the KDC writes into its directory.
pub(super) mod name {
    pub(crate) const SLAPD_CONF: &str = "slapd.conf";
    pub(crate) const SLAPD_LOG: &str = "slapd.log";
    pub(crate) const SLAPD_PID: &str = "slapd.pid";
    pub(crate) const LDAP_DATA: &str = "ldap-data";
    pub(crate) const LDAPI: &str = "ldapi";
    pub(crate) const KERBEROS_SCHEMA: &str = "kerberos.schema";
    pub(crate) const LDAP_STASH: &str = "ldap.stash";
    pub(crate) const MASTER_STASH: &str = "master.stash";
    pub(crate) const KADM5_ACL: &str = "kadm5.acl";
    pub(crate) const KDC_CONF: &str = "kdc.conf";
    pub(crate) const KRB5_CONF: &str = "krb5.conf";
    pub(crate) const KDC_LOG: &str = "kdc.log";
    pub(crate) const KRB5KDC_OUT: &str = "krb5kdc.out";
    pub(crate) const KRB5KDC_PID: &str = "krb5kdc.pid";
    pub(crate) const KADMIN_LOG: &str = "kadmin.log";
    pub(crate) const KRB5LIB_LOG: &str = "krb5lib.log";
}

/// `slapd.conf` for a private slapd serving only the ldapi socket in `dir`.
pub(super) fn slapd_conf(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# Written by seg-testbed: a private slapd for the test KDC, on the ldapi socket only.\n\
         include {CORE_SCHEMA}\n\
         include {dir}/{schema}\n\
         pidfile {dir}/{pid}\n\
         modulepath {SLAPD_MODULES}\n\
         moduleload back_mdb\n\
         database mdb\n\
         maxsize 104857600\n\
         suffix \"{SUFFIX}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         directory {dir}/{data}\n\
         index objectClass eq\n\
         index krbPrincipalName eq,pres,sub\n",
        schema = name::KERBEROS_SCHEMA,
        pid = name::SLAPD_PID,
        data = name::LDAP_DATA,
    )
}

/// The `rootpw` line, kept out of [`slapd_conf`] so that the configuration can be shown without
/// it.
pub(super) fn slapd_rootpw(password: &str) -> String {
    format!("rootpw \"{password}\"\n")
}

/// The `ldapi://` URL of a unix socket path (the path percent-encoded, as OpenLDAP wants it).
pub(super) fn ldapi_url(socket: &Path) -> String {
    let mut url = String::from("ldapi://");
    for byte in socket.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(*byte));
        } else {
            let _ = write!(url, "%{byte:02X}");
        }
    }
    url
}

/// MIT's `kdc.conf`: the realm on the LDAP back end, the KDC on 127.0.0.1:`port` (UDP and TCP),
/// logs in `dir`.
pub(super) fn kdc_conf(config: &KdcConfig, dir: &Path, port: u16, ldapi: &str) -> String {
    let realm = &config.realm;
    let enctypes = config
        .enctypes
        .iter()
        .map(|enctype| format!("{enctype}:normal"))
        .collect::<Vec<_>>()
        .join(" ");
    let dir = dir.display();
    format!(
        "# Written by seg-testbed: the test KDC, on the OpenLDAP back end (delegation ACLs).\n\
         [kdcdefaults]\n\
         \x20kdc_listen = 127.0.0.1:{port}\n\
         \x20kdc_tcp_listen = 127.0.0.1:{port}\n\
         \n\
         [realms]\n\
         \x20{realm} = {{\n\
         \x20 database_module = ldap\n\
         \x20 kdc_listen = 127.0.0.1:{port}\n\
         \x20 kdc_tcp_listen = 127.0.0.1:{port}\n\
         \x20 acl_file = {dir}/{acl}\n\
         \x20 key_stash_file = {dir}/{master}\n\
         \x20 max_life = {max_life}s\n\
         \x20 max_renewable_life = 7d\n\
         \x20 supported_enctypes = {enctypes}\n\
         \x20}}\n\
         \n\
         [dbmodules]\n\
         \x20ldap = {{\n\
         \x20 db_library = kldap\n\
         \x20 ldap_kerberos_container_dn = {CONTAINER_DN}\n\
         \x20 ldap_kdc_dn = {ADMIN_DN}\n\
         \x20 ldap_kadmind_dn = {ADMIN_DN}\n\
         \x20 ldap_service_password_file = {dir}/{ldap_stash}\n\
         \x20 ldap_servers = {ldapi}\n\
         \x20 ldap_conns_per_server = 5\n\
         \x20}}\n\
         \n\
         [logging]\n\
         \x20kdc = FILE:{dir}/{kdc_log}\n\
         \x20admin_server = FILE:{dir}/{kadmin_log}\n\
         \x20default = FILE:{dir}/{lib_log}\n",
        max_life = config.max_ticket_life.as_secs(),
        acl = name::KADM5_ACL,
        master = name::MASTER_STASH,
        ldap_stash = name::LDAP_STASH,
        kdc_log = name::KDC_LOG,
        kadmin_log = name::KADMIN_LOG,
        lib_log = name::KRB5LIB_LOG,
    )
}

/// The clients' `krb5.conf` of the MIT KDC (see [`client_krb5_conf`]), every request over TCP
/// (`udp_preference_limit = 1`).
pub(super) fn krb5_conf(config: &KdcConfig, port: u16) -> String {
    let realm = &config.realm;
    client_krb5_conf(
        "the test KDC",
        realm,
        &realm.to_ascii_lowercase(),
        port,
        "udp_preference_limit = 1",
    )
}

/// A clients' `krb5.conf` for `realm` (DNS domain `domain`) served by `what` at
/// 127.0.0.1:`port`: forwardable tickets (protocol transition yields a forwardable evidence
/// ticket only from a forwardable TGT), no DNS, and `libdefaults` lines of its own.
pub(crate) fn client_krb5_conf(
    what: &str,
    realm: &str,
    domain: &str,
    port: u16,
    libdefaults: &str,
) -> String {
    let libdefaults: String = libdefaults
        .lines()
        .map(|line| format!(" {line}\n"))
        .collect();
    format!(
        "# Written by seg-testbed: clients of {what}. Use with KRB5_CONFIG=<this file>.\n\
         [libdefaults]\n\
         \x20default_realm = {realm}\n\
         \x20dns_lookup_kdc = false\n\
         \x20dns_lookup_realm = false\n\
         \x20dns_canonicalize_hostname = false\n\
         \x20rdns = false\n\
         \x20forwardable = true\n\
         {libdefaults}\
         \n\
         [realms]\n\
         \x20{realm} = {{\n\
         \x20 kdc = 127.0.0.1:{port}\n\
         \x20}}\n\
         \n\
         [domain_realm]\n\
         \x20.{domain} = {realm}\n\
         \x20{domain} = {realm}\n"
    )
}

/// The LDIF of the directory's root entry, added before the realm is created under it.
pub(super) fn base_ldif() -> String {
    format!("dn: {SUFFIX}\nobjectClass: organization\no: seg-testbed\n")
}

/// The LDIF that lets `principal` (fully qualified) delegate to `targets` (fully qualified).
pub(super) fn delegation_ldif(realm: &str, principal: &str, targets: &[String]) -> String {
    let mut ldif = format!(
        "dn: krbPrincipalName={},cn={},{CONTAINER_DN}\nchangetype: modify\nadd: krbAllowedToDelegateTo\n",
        escape_dn_value(principal),
        escape_dn_value(realm),
    );
    for target in targets {
        let _ = writeln!(ldif, "krbAllowedToDelegateTo: {target}");
    }
    ldif
}

/// Escapes an attribute value for use in a DN (RFC 4514, section 2.4).
fn escape_dn_value(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut escaped = String::with_capacity(value.len());
    for (index, character) in value.chars().enumerate() {
        let special = matches!(character, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (index == 0 && matches!(character, '#' | ' '))
            || (index == last && character == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldapi_url_percent_encodes_the_socket_path() {
        assert_eq!(
            ldapi_url(Path::new("/tmp/kdc dir/ldapi")),
            "ldapi://%2Ftmp%2Fkdc%20dir%2Fldapi"
        );
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(
            escape_dn_value("HTTP/seg.test.local@TEST.LOCAL"),
            "HTTP/seg.test.local@TEST.LOCAL"
        );
        assert_eq!(escape_dn_value("a,b=c "), "a\\,b\\=c\\ ");
        assert_eq!(escape_dn_value("#x"), "\\#x");
    }

    #[test]
    fn kdc_conf_caps_ticket_life_at_the_configured_maximum() {
        let mut config = KdcConfig::new("/tmp/kdc");
        let default = kdc_conf(&config, Path::new("/tmp/kdc"), 88, "ldapi://x");
        assert!(default.contains(" max_life = 36000s\n"), "{default}");
        config.max_ticket_life = std::time::Duration::from_secs(6);
        let short = kdc_conf(&config, Path::new("/tmp/kdc"), 88, "ldapi://x");
        assert!(short.contains(" max_life = 6s\n"), "{short}");
    }

    #[test]
    fn delegation_ldif_names_the_principal_entry_and_every_target() {
        let ldif = delegation_ldif(
            "TEST.LOCAL",
            "HTTP/seg.test.local@TEST.LOCAL",
            &["HTTP/exchange.test.local@TEST.LOCAL".to_string()],
        );
        assert_eq!(
            ldif,
            "dn: krbPrincipalName=HTTP/seg.test.local@TEST.LOCAL,cn=TEST.LOCAL,cn=krbContainer,o=seg-testbed\n\
             changetype: modify\n\
             add: krbAllowedToDelegateTo\n\
             krbAllowedToDelegateTo: HTTP/exchange.test.local@TEST.LOCAL\n"
        );
    }
}
