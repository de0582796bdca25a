//! Samba's Active Directory domain controller on loopback: a second, AD-like KDC, in which
//! constrained delegation works the way Active Directory does it.
//!
//! MIT's KDC ([`crate::kdc`]) proves the Kerberos of a client, but not what only Active
//! Directory does: resolving an enterprise name (a UPN such as `alice@corp.example`, whose
//! suffix is not the realm) to its account, delegation rules kept on the account
//! (`msDS-AllowedToDelegateTo`, protocol transition as `TRUSTED_TO_AUTH_FOR_DELEGATION`), a PAC
//! in every ticket, and RC4 service tickets for accounts that do not say which encryption types
//! they support. Samba's DC does all of it, with the code Samba tests against Windows.
//!
//! [`SambaDc::start`] provisions a domain with `samba-tool domain provision` (no DNS, only the
//! KDC service, listening on 127.0.0.1 only), creates the accounts of the [`SambaConfig`] with
//! `samba-tool` (by default: users `alice`, whose UPN is `alice@`[`UPN_SUFFIX`], and `bob`; the
//! gateway's account [`GATEWAY_ACCOUNT`] with the SPN [`GATEWAY_SERVICE`], protocol transition
//! and the right to delegate to [`EXCHANGE_SERVICE`]; Exchange's account `exchange`; and
//! [`OTHER_SERVICE`]'s account `other`, to which the gateway may not delegate), exports their
//! keys with `samba-tool domain exportkeytab`, and runs `samba` as a child of this process on
//! a free port. Every file is in one directory, `smb.conf` included (`/etc/samba` and
//! `/etc/krb5.conf` are not read), and clients find the KDC through the directory's
//! `krb5.conf` (`KRB5_CONFIG`). The DC is killed when the [`RunningSambaDc`] is dropped.
//!
//! The programs come from Debian's `samba`, `samba-ad-provision` (the schema),
//! `samba-dsdb-modules` and `samba-vfs-modules` (`scripts/install-deps.sh` installs them).
//! Samba's DC runs as root only, as in CI.
//!
//! ```no_run
//! use seg_testbed::samba::{EXCHANGE_SERVICE, GATEWAY_ACCOUNT, SambaConfig, SambaDc};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The default domain, in a fresh temporary directory removed when `dc` is dropped.
//! let dc = SambaDc::start(SambaConfig::temporary())?;
//! let ccache = format!("FILE:{}", dc.dir().join("cc").display());
//! let gateway_keytab = dc.keytab(GATEWAY_ACCOUNT).ok_or("no gateway keytab")?;
//! // The gateway logs in as its account, then asks for a ticket to Exchange as alice, named
//! // by her UPN (an enterprise name, which only Active Directory resolves).
//! let kinit = dc
//!     .command("kinit")
//!     .env("KRB5CCNAME", &ccache)
//!     .args(["-k", "-t"])
//!     .arg(gateway_keytab)
//!     .arg(GATEWAY_ACCOUNT)
//!     .status()?;
//! let kvno = dc
//!     .command("kvno")
//!     .env("KRB5CCNAME", &ccache)
//!     .args(["-U", "alice@corp.example", "-P", EXCHANGE_SERVICE])
//!     .status()?;
//! assert!(kinit.success() && kvno.success());
//! # Ok(()) }
//! ```
//!
//! [`SambaDc::start`] blocks for the seconds the set-up takes (about 7 s on an idle machine,
//! half of it provisioning, most of that loading the AD schema); from async code, call it in
//! `tokio::task::spawn_blocking`, or share one DC between the tests of a process with
//! [`SambaDc::shared`] (under `cargo nextest`, which runs each test in a process of its own,
//! every test still starts its own).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kdc::files::client_krb5_conf;
use crate::kdc::process::{self, Daemon, Environment, find_program, run_step};
pub use crate::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, OTHER_SERVICE};
use crate::kdc::{create_dir, random_password, write_file};

/// The realm of the default configuration (the DNS domain `ad.test.local`).
pub const DEFAULT_REALM: &str = "AD.TEST.LOCAL";
/// The NetBIOS name of the default domain.
pub const DEFAULT_NETBIOS_DOMAIN: &str = "ADTEST";
/// The extra UPN suffix of the default domain (the forest's `uPNSuffixes`): alice's UPN is
/// `alice@corp.example`, which is not the realm.
pub const UPN_SUFFIX: &str = "corp.example";
/// The gateway's account (`sAMAccountName`) in the default configuration; it holds the SPN
/// [`GATEWAY_SERVICE`], and its keytab holds the keys of `svc-seg@<realm>`.
pub const GATEWAY_ACCOUNT: &str = "svc-seg";
/// The password of [`GATEWAY_ACCOUNT`] in the default configuration.
pub const GATEWAY_PASSWORD: &str = "Svc-seg-pw-1";

/// How many port pairs are tried when the ports are chosen automatically and another process
/// turns out to share one.
const PORT_ATTEMPTS: usize = 5;
/// The longest directory path: Samba's messaging sockets live in `<dir>/msg.sock/<pid>`, and a
/// socket path holds at most 107 bytes.
const MAX_DIR_LEN: usize = 90;

/// The names of the files the DC writes into its directory, besides what `samba-tool domain
/// provision --targetdir` creates there (`private/`, `state/`, `cache/`, `bind-dns/`, tdb files
/// and `msg.sock/`).
mod name {
    pub(super) const ETC: &str = "etc";
    pub(super) const SMB_CONF: &str = "etc/smb.conf";
    pub(super) const RUN: &str = "run";
    pub(super) const KRB5_CONF: &str = "krb5.conf";
    pub(super) const SAMBA_LOG: &str = "samba.log";
    /// What `samba-tool domain provision` leaves in the directory, removed before a new one.
    pub(super) const PROVISIONED: [&str; 9] = [
        "etc",
        "private",
        "state",
        "cache",
        "bind-dns",
        "run",
        "msg.sock",
        "msg.lock",
        "gencache.tdb",
    ];
}

/// A user of the test domain, who logs in with a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SambaUser {
    /// The account name (`sAMAccountName`): `alice`.
    pub name: String,
    /// The password; it must meet the domain's complexity rules (three of upper case, lower
    /// case, digits and symbols, at least seven characters).
    pub password: String,
    /// The user principal name if not the implicit `<name>@<dns domain>`: `alice@corp.example`.
    /// Its suffix must be the DNS domain or one of [`SambaConfig::upn_suffixes`].
    pub upn: Option<String>,
}

impl SambaUser {
    /// A user with a password and the implicit UPN.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
            upn: None,
        }
    }

    /// The user with an explicit UPN.
    pub fn with_upn(mut self, upn: impl Into<String>) -> Self {
        self.upn = Some(upn.into());
        self
    }
}

/// A service account of the test domain: a user account holding service principal names, as
/// an administrator creates one for a web service. Its keys for one principal are exported to
/// a keytab in the DC's directory.
///
/// It gets no `msDS-SupportedEncryptionTypes`, so that, as in Active Directory, tickets to its
/// SPNs are encrypted with RC4 (`rc4-hmac`, etype 23), and the keytab for an SPN holds only
/// that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SambaService {
    /// The account name (`sAMAccountName`): `svc-seg`.
    pub account: String,
    /// The account's password; `None` gives it a random one.
    pub password: Option<String>,
    /// Its service principal names, without the realm: `HTTP/seg.test.local`.
    pub spns: Vec<String>,
    /// The keytab's file name in the DC's directory (`svc-seg.keytab`).
    pub keytab: String,
    /// The principal whose keys the keytab holds, without the realm: the account name (its
    /// AES and RC4 keys, for logging in as the account) or one of the SPNs (the key tickets to
    /// it are encrypted with, for accepting them).
    pub keytab_principal: String,
    /// Whether the account may use protocol transition (S4U2Self tickets that S4U2Proxy
    /// accepts): `TRUSTED_TO_AUTH_FOR_DELEGATION` in its `userAccountControl`.
    pub trusted_to_auth_for_delegation: bool,
    /// The SPNs it may get tickets to on a user's behalf: `msDS-AllowedToDelegateTo`.
    pub allowed_to_delegate_to: Vec<String>,
}

impl SambaService {
    /// An account with a random password holding `spn`, whose keytab holds the SPN's key.
    pub fn new(
        account: impl Into<String>,
        spn: impl Into<String>,
        keytab: impl Into<String>,
    ) -> Self {
        let spn = spn.into();
        Self {
            account: account.into(),
            password: None,
            spns: vec![spn.clone()],
            keytab: keytab.into(),
            keytab_principal: spn,
            trusted_to_auth_for_delegation: false,
            allowed_to_delegate_to: Vec::new(),
        }
    }

    /// The account with protocol transition and the right to delegate to `targets`: what a
    /// gateway doing constrained delegation needs.
    pub fn delegating_to<T: Into<String>>(mut self, targets: impl IntoIterator<Item = T>) -> Self {
        self.trusted_to_auth_for_delegation = true;
        self.allowed_to_delegate_to = targets.into_iter().map(Into::into).collect();
        self
    }

    /// The account with a password instead of a random one.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The account whose keytab holds the account name's keys (`svc-seg@<realm>`), with which
    /// it logs in, instead of an SPN's.
    pub fn keytab_for_account(mut self) -> Self {
        self.keytab_principal = self.account.clone();
        self
    }
}

/// What [`SambaDc::start`] sets up. Plain data: change the fields of [`SambaConfig::new`]'s
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SambaConfig {
    /// The directory that holds every file of the DC: `etc/smb.conf`, the directory database,
    /// `krb5.conf`, the log, the keytabs. Created if missing; files of an earlier DC in it are
    /// replaced.
    pub dir: PathBuf,
    /// Whether the directory is removed, with everything in it, when the DC stops. A DC that
    /// fails to start leaves it in place, logs included, for inspection.
    pub remove_dir_on_stop: bool,
    /// The port on 127.0.0.1 the KDC serves on, over UDP and TCP; `None` picks a free one.
    /// (Samba's kpasswd service, which cannot be turned off, gets another free port.)
    pub port: Option<u16>,
    /// The realm: the DNS domain in capitals.
    pub realm: String,
    /// The NetBIOS name of the domain (at most 15 characters).
    pub netbios_domain: String,
    /// UPN suffixes besides the DNS domain (the forest's `uPNSuffixes`).
    pub upn_suffixes: Vec<String>,
    /// The users.
    pub users: Vec<SambaUser>,
    /// The service accounts.
    pub services: Vec<SambaService>,
    /// Samba's `log level` while it runs, for its log in the directory: by default the KDC's
    /// account of each request (`kerberos:3`, `auth_audit:3`) and little else; `10` shows the
    /// KDC's every decision.
    pub log_level: String,
    /// How long each step of the set-up (provisioning, a `samba-tool` command, the DC coming
    /// up) may take.
    pub step_deadline: Duration,
}

impl SambaConfig {
    /// The default domain in `dir`: realm [`DEFAULT_REALM`] (NetBIOS [`DEFAULT_NETBIOS_DOMAIN`])
    /// with the UPN suffix [`UPN_SUFFIX`]; users `alice` (`Alice-pw-1`, UPN
    /// `alice@corp.example`) and `bob` (`Bob-pw-12`, UPN `bob@ad.test.local`); the gateway's
    /// account [`GATEWAY_ACCOUNT`] ([`GATEWAY_PASSWORD`], SPN [`GATEWAY_SERVICE`], protocol
    /// transition, may delegate to [`EXCHANGE_SERVICE`]) whose keytab `svc-seg.keytab` holds
    /// the keys of `svc-seg@AD.TEST.LOCAL`; `exchange` holding [`EXCHANGE_SERVICE`]
    /// (`exchange.keytab`) and `other` holding [`OTHER_SERVICE`] (`other.keytab`), both with
    /// random passwords; a free port.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            remove_dir_on_stop: false,
            port: None,
            realm: DEFAULT_REALM.to_string(),
            netbios_domain: DEFAULT_NETBIOS_DOMAIN.to_string(),
            upn_suffixes: vec![UPN_SUFFIX.to_string()],
            users: vec![
                SambaUser::new("alice", "Alice-pw-1").with_upn(format!("alice@{UPN_SUFFIX}")),
                SambaUser::new("bob", "Bob-pw-12"),
            ],
            services: vec![
                SambaService::new(GATEWAY_ACCOUNT, GATEWAY_SERVICE, "svc-seg.keytab")
                    .with_password(GATEWAY_PASSWORD)
                    .delegating_to([EXCHANGE_SERVICE])
                    .keytab_for_account(),
                SambaService::new("exchange", EXCHANGE_SERVICE, "exchange.keytab"),
                SambaService::new("other", OTHER_SERVICE, "other.keytab"),
            ],
            log_level: "1 kerberos:3 auth_audit:3".to_string(),
            step_deadline: Duration::from_secs(120),
        }
    }

    /// The default domain (see [`SambaConfig::new`]) in a new directory under the system's
    /// temporary directory, removed when the DC stops: what tests want.
    pub fn temporary() -> Self {
        let unique = format!(
            "seg-samba-{}-{}",
            std::process::id(),
            random_password().get(..10).unwrap_or_default()
        );
        Self {
            remove_dir_on_stop: true,
            ..Self::new(std::env::temp_dir().join(unique))
        }
    }

    /// The DNS domain: the realm in lower case.
    fn dns_domain(&self) -> String {
        self.realm.to_ascii_lowercase()
    }

    /// Refuses names and passwords that would not survive the command lines and files.
    fn validate(&self) -> Result<()> {
        let invalid = |what: &str, value: &str| {
            Error::KdcConfig(format!(
                "{what} {value:?} is empty or contains whitespace, quotes, backslashes or ="
            ))
        };
        let plain = |value: &str| {
            !value.is_empty()
                && !value.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '\'' | '=')
                })
        };
        let dns_name = |value: &str| {
            !value.is_empty()
                && value.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if !dns_name(&self.realm)
            || !self.realm.contains('.')
            || self.realm != self.realm.to_ascii_uppercase()
        {
            return Err(Error::KdcConfig(format!(
                "the realm {:?} is not a DNS domain of at least two labels in capitals",
                self.realm
            )));
        }
        if self.netbios_domain.is_empty()
            || self.netbios_domain.len() > 15
            || !self
                .netbios_domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::KdcConfig(format!(
                "the NetBIOS domain {:?} is not 1 to 15 letters, digits or hyphens",
                self.netbios_domain
            )));
        }
        if let Some(suffix) = self.upn_suffixes.iter().find(|s| !dns_name(s)) {
            return Err(invalid("the UPN suffix", suffix));
        }
        for user in &self.users {
            if !plain(&user.name) || user.name.contains(['@', '/']) {
                return Err(invalid("the user name", &user.name));
            }
            if !plain(&user.password) {
                return Err(invalid("the password of user", &user.name));
            }
            if let Some(upn) = &user.upn
                && (!plain(upn) || !upn.contains('@'))
            {
                return Err(invalid("the UPN", upn));
            }
        }
        for service in &self.services {
            if !plain(&service.account) || service.account.contains(['@', '/']) {
                return Err(invalid("the account name", &service.account));
            }
            if service
                .password
                .as_deref()
                .is_some_and(|password| !plain(password))
            {
                return Err(invalid("the password of account", &service.account));
            }
            if let Some(spn) = service.spns.iter().find(|spn| !plain(spn)) {
                return Err(invalid("the SPN", spn));
            }
            if !plain(&service.keytab) || service.keytab.contains('/') {
                return Err(invalid("the keytab file name", &service.keytab));
            }
            if !plain(&service.keytab_principal) {
                return Err(invalid("the keytab principal", &service.keytab_principal));
            }
            if let Some(target) = service.allowed_to_delegate_to.iter().find(|t| !plain(t)) {
                return Err(invalid("the delegation target", target));
            }
        }
        if !plain(&self.log_level.replace(' ', "_")) {
            return Err(invalid("the log level", &self.log_level));
        }
        Ok(())
    }
}

/// Starts Samba AD domain controllers. See the [module documentation](self).
#[derive(Debug, Clone, Copy)]
pub struct SambaDc;

impl SambaDc {
    /// The DC the tests of one test binary share while any of them holds it: started by the
    /// first caller with `config()`, stopped when the last holder drops it (a plain static would
    /// never be dropped and would leave samba running after the tests). The first caller's
    /// configuration wins for the whole process. Runs the blocking start-up on tokio's
    /// blocking pool.
    ///
    /// # Errors
    ///
    /// Those of [`SambaDc::start`].
    pub async fn shared(config: fn() -> SambaConfig) -> Result<Arc<RunningSambaDc>> {
        static SHARED: Mutex<Weak<RunningSambaDc>> = Mutex::new(Weak::new());
        process::shared(&SHARED, move || SambaDc::start(config())).await
    }

    /// Provisions the domain of `config`, creates its accounts and keytabs, starts `samba` and
    /// waits until its KDC serves on its port. Blocks for the duration (seconds: see the
    /// [module documentation](self)).
    ///
    /// # Errors
    ///
    /// - [`Error::KdcConfig`] if a name or password in `config` cannot be used, or the
    ///   directory's path is too long for Samba's sockets in it;
    /// - [`Error::KdcToolMissing`] naming the Debian package if `samba` or `samba-tool` is
    ///   missing;
    /// - [`Error::KdcSetup`] naming the step that failed (provisioning, a `samba-tool` command,
    ///   starting samba, e.g. when not run as root) with the tool's own error output or the
    ///   end of samba's log;
    /// - [`Error::KdcPortInUse`] if `config.port` is given and another process serves on it;
    /// - [`Error::File`], [`Error::KdcSpawn`], [`Error::Connect`] for the files, programs and
    ///   sockets involved.
    pub fn start(config: SambaConfig) -> Result<RunningSambaDc> {
        let started = Instant::now();
        config.validate()?;
        let tools = Tools::find()?;
        let dir = prepare_dir(&config)?;
        if dir.as_os_str().len() > MAX_DIR_LEN {
            return Err(Error::KdcConfig(format!(
                "the directory {} is too long for Samba's sockets in it (at most {MAX_DIR_LEN} bytes)",
                dir.display()
            )));
        }
        let environment = Environment {
            vars: vec![("KRB5_CONFIG", dir.join(name::KRB5_CONF))],
        };
        let smb_conf = dir.join(name::SMB_CONF);
        let smb_conf_arg = smb_conf.to_string_lossy().into_owned();
        let (mut port, mut kpasswd_port) = ports(config.port)?;
        write_file(&dir.join(name::KRB5_CONF), &krb5_conf(&config, port))?;

        // The domain. An empty smb.conf of our own keeps samba-tool from reading
        // /etc/samba/smb.conf; provisioning writes the real one in its place.
        create_dir(&dir.join(name::ETC))?;
        create_dir(&dir.join(name::RUN))?;
        write_file(&smb_conf, "")?;
        let samba_tool = |step: &str, args: &[&str]| {
            let mut command = environment.command(&tools.samba_tool);
            command.args(args).args(["-s", &smb_conf_arg]);
            run_step(step, command, None, config.step_deadline)
        };
        let dir_arg = dir.to_string_lossy().into_owned();
        let admin_password = strong_password();
        let run_dir = format!("pid directory={}", dir.join(name::RUN).display());
        samba_tool(
            "provisioning the domain (samba-tool domain provision)",
            &[
                "domain",
                "provision",
                "--quiet",
                &format!("--targetdir={dir_arg}"),
                &format!("--realm={}", config.realm),
                &format!("--domain={}", config.netbios_domain),
                "--server-role=dc",
                "--dns-backend=NONE",
                "--host-name=dc1",
                "--host-ip=127.0.0.1",
                &format!("--adminpass={admin_password}"),
                "--option=interfaces=127.0.0.1",
                "--option=bind interfaces only=yes",
                // Only the KDC (with kpasswd, which comes with it): no SMB, LDAP, RPC,
                // NetBIOS or DNS servers, no replication.
                "--option=server services=kdc",
                &format!("--option={run_dir}"),
            ],
        )?;
        let provisioning_time = started.elapsed();

        // The accounts.
        if !config.upn_suffixes.is_empty() {
            // samba-tool sets uPNSuffixes only through a running DC's LSA service; this is
            // what it writes, with Samba's Python bindings, offline.
            let mut command = environment.command(&tools.python);
            command
                .args(["-c", ADD_UPN_SUFFIXES, &smb_conf_arg])
                .args(&config.upn_suffixes);
            run_step(
                "adding the UPN suffixes (uPNSuffixes)",
                command,
                None,
                config.step_deadline,
            )?;
        }
        for user in &config.users {
            samba_tool(
                &format!("creating user {} (samba-tool user create)", user.name),
                &["user", "create", &user.name, &user.password],
            )?;
            if let Some(upn) = &user.upn {
                samba_tool(
                    &format!("setting the UPN of {} (samba-tool user rename)", user.name),
                    &["user", "rename", &user.name, &format!("--upn={upn}")],
                )?;
            }
        }
        let mut keytabs = Vec::new();
        for service in &config.services {
            let account = &service.account;
            let password = service.password.clone().unwrap_or_else(strong_password);
            samba_tool(
                &format!("creating account {account} (samba-tool user create)"),
                &["user", "create", account, &password],
            )?;
            for spn in &service.spns {
                samba_tool(
                    &format!("adding SPN {spn} to {account} (samba-tool spn add)"),
                    &["spn", "add", spn, account],
                )?;
            }
            if service.trusted_to_auth_for_delegation {
                samba_tool(
                    &format!(
                        "allowing {account} protocol transition (samba-tool delegation for-any-protocol)"
                    ),
                    &["delegation", "for-any-protocol", account, "on"],
                )?;
            }
            for target in &service.allowed_to_delegate_to {
                samba_tool(
                    &format!(
                        "letting {account} delegate to {target} (samba-tool delegation add-service)"
                    ),
                    &["delegation", "add-service", account, target],
                )?;
            }
        }
        for service in &config.services {
            let keytab = dir.join(&service.keytab);
            let principal = qualified(&service.keytab_principal, &config.realm);
            samba_tool(
                &format!("exporting the keys of {principal} (samba-tool domain exportkeytab)"),
                &[
                    "domain",
                    "exportkeytab",
                    &keytab.to_string_lossy(),
                    &format!("--principal={principal}"),
                ],
            )?;
            keytabs.push(KeytabFile {
                account: service.account.clone(),
                principal: service.keytab_principal.clone(),
                qualified: principal,
                path: keytab,
            });
        }

        // The DC itself, on ports no other process shares.
        let mut attempts = 0;
        let samba = loop {
            attempts += 1;
            match start_samba(
                &tools,
                &environment,
                &dir,
                &config.log_level,
                (port, kpasswd_port),
                config.step_deadline,
            ) {
                Err(Error::KdcPortInUse { .. })
                    if config.port.is_none() && attempts < PORT_ATTEMPTS =>
                {
                    (port, kpasswd_port) = ports(None)?;
                    write_file(&dir.join(name::KRB5_CONF), &krb5_conf(&config, port))?;
                }
                other => break other?,
            }
        };
        let startup_time = started.elapsed();
        tracing::debug!(
            port,
            ?provisioning_time,
            ?startup_time,
            dir = %dir.display(),
            "test Samba DC started"
        );
        Ok(RunningSambaDc {
            realm: config.realm.clone(),
            dir,
            port,
            keytabs,
            environment,
            provisioning_time,
            startup_time,
            remove_dir_on_stop: config.remove_dir_on_stop,
            samba,
        })
    }
}

/// A keytab the DC wrote.
#[derive(Debug)]
struct KeytabFile {
    account: String,
    /// As configured, without the realm.
    principal: String,
    /// With the realm.
    qualified: String,
    path: PathBuf,
}

/// A running Samba DC. It is killed when this is dropped.
#[derive(Debug)]
pub struct RunningSambaDc {
    realm: String,
    dir: PathBuf,
    port: u16,
    keytabs: Vec<KeytabFile>,
    environment: Environment,
    provisioning_time: Duration,
    startup_time: Duration,
    remove_dir_on_stop: bool,
    samba: Daemon,
}

impl RunningSambaDc {
    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The port on 127.0.0.1 the KDC serves on, over UDP and TCP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The KDC's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory holding the DC's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The clients' `krb5.conf`, for `KRB5_CONFIG`: the realm's KDC at [`Self::addr`],
    /// forwardable tickets, no DNS lookups.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.join(name::KRB5_CONF)
    }

    /// The DC's `smb.conf`, for `samba-tool -s` (which then works on this domain's database).
    pub fn smb_conf(&self) -> PathBuf {
        self.dir.join(name::SMB_CONF)
    }

    /// Samba's log: at the default log level, among much else, one line per answered request
    /// (`Kerberos: AS-REQ SUCCESS …`, `Kerberos: TGS-REQ SUCCESS …`, or the error instead of
    /// `SUCCESS`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(name::SAMBA_LOG)
    }

    /// Samba's log as text (empty if nothing was logged yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The keytab of a service account, found by its account name (`svc-seg`) or by the
    /// principal whose keys it holds, with or without the realm (`HTTP/exchange.test.local`).
    pub fn keytab(&self, name: &str) -> Option<&Path> {
        self.keytabs
            .iter()
            .find(|k| k.account == name || k.principal == name || k.qualified == name)
            .map(|k| k.path.as_path())
    }

    /// How long provisioning the domain took (the first part of [`Self::startup_time`]).
    pub fn provisioning_time(&self) -> Duration {
        self.provisioning_time
    }

    /// How long [`SambaDc::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// A command for one of MIT's tools (`kinit`, `kvno`, `klist`, …) or Samba's with
    /// `KRB5_CONFIG` pointing at this DC's `krb5.conf`. Set `KRB5CCNAME` on it to keep the
    /// credential cache private; give Samba's tools `-s` [`Self::smb_conf`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.environment.command(program)
    }

    /// Checks that samba is still running.
    ///
    /// # Errors
    ///
    /// [`Error::KdcSetup`] with the end of samba's log if it stopped.
    pub fn check_alive(&mut self) -> Result<()> {
        if self.samba.exit_status().is_some() {
            return Err(self.samba.failure("running samba", "samba stopped"));
        }
        Ok(())
    }

    /// Stops samba; the files stay in the directory unless the configuration asked for its
    /// removal. Dropping does the same.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for RunningSambaDc {
    fn drop(&mut self) {
        self.samba.stop();
        if self.remove_dir_on_stop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Adds UPN suffixes to the forest's partitions container: `python3 -c ADD_UPN_SUFFIXES
/// <smb.conf> <suffix>…`, with the interpreter that runs samba-tool.
const ADD_UPN_SUFFIXES: &str = "\
import sys, ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
m = ldb.Message()
m.dn = ldb.Dn(db, 'CN=Partitions,' + str(db.get_config_basedn()))
m['uPNSuffixes'] = ldb.MessageElement(sys.argv[2:], ldb.FLAG_MOD_ADD, 'uPNSuffixes')
db.modify(m)
";

/// The programs the DC runs, found once.
#[derive(Debug, Clone)]
struct Tools {
    samba: PathBuf,
    samba_tool: PathBuf,
    /// The Python interpreter of samba-tool (its `#!` line), which has Samba's modules: the
    /// first `python3` on `PATH` may be another one.
    python: PathBuf,
}

impl Tools {
    fn find() -> Result<Self> {
        let samba = find_program("samba")?;
        let samba_tool = find_program("samba-tool")?;
        let script = std::fs::read_to_string(&samba_tool).map_err(|source| Error::File {
            path: samba_tool.clone(),
            source,
        })?;
        let python = script
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("#!"))
            .and_then(|line| line.split_whitespace().next())
            .map(PathBuf::from)
            .ok_or_else(|| Error::KdcSetup {
                step: "finding samba-tool's Python interpreter".into(),
                detail: format!("{} has no #! line", samba_tool.display()),
            })?;
        Ok(Self {
            samba,
            samba_tool,
            python,
        })
    }
}

/// Creates the directory (absolute from then on) and removes the files of an earlier DC in it.
fn prepare_dir(config: &SambaConfig) -> Result<PathBuf> {
    create_dir(&config.dir)?;
    let dir = config.dir.canonicalize().map_err(|source| Error::File {
        path: config.dir.clone(),
        source,
    })?;
    let stale = name::PROVISIONED
        .into_iter()
        .chain([name::KRB5_CONF, name::SAMBA_LOG])
        .map(String::from)
        .chain(config.services.iter().map(|service| service.keytab.clone()));
    for entry in stale {
        let path = dir.join(entry);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::File { path, source }),
        }
    }
    Ok(dir)
}

/// The KDC's port (as configured, or free) and a free one for kpasswd.
fn ports(port: Option<u16>) -> Result<(u16, u16)> {
    let port = match port {
        Some(port) => port,
        None => process::free_port()?,
    };
    loop {
        let kpasswd = process::free_port()?;
        if kpasswd != port {
            return Ok((port, kpasswd));
        }
    }
}

/// `name` qualified with `realm` unless it already names one.
fn qualified(name: &str, realm: &str) -> String {
    if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@{realm}")
    }
}

/// A random password that meets Active Directory's complexity rules.
fn strong_password() -> String {
    format!("Aa1-{}", random_password())
}

/// The clients' `krb5.conf` (see [`client_krb5_conf`]).
fn krb5_conf(config: &SambaConfig, port: u16) -> String {
    client_krb5_conf(
        "the test Samba DC",
        &config.realm,
        &config.dns_domain(),
        port,
        "",
    )
}

/// Starts samba on `ports` (the KDC's, kpasswd's) and waits until it holds the KDC's port over
/// UDP and TCP, alone, and is still alive then.
fn start_samba(
    tools: &Tools,
    environment: &Environment,
    dir: &Path,
    log_level: &str,
    (port, kpasswd_port): (u16, u16),
    deadline: Duration,
) -> Result<Daemon> {
    let mut command = environment.command(&tools.samba);
    command
        .arg("-s")
        .arg(dir.join(name::SMB_CONF))
        // One process (no forked workers to leave behind), in the foreground, in our process
        // group, logging to standard output (the log file). Not --interactive, which exits
        // when standard input closes.
        .args(["--model=single", "--foreground", "--no-process-group"])
        .arg("--debug-stdout")
        .arg(format!("--option=log level={log_level}"))
        .arg(format!("--option=krb5 port={port}"))
        .arg(format!("--option=kpasswd port={kpasswd_port}"));
    let mut samba = Daemon::spawn("samba", command, dir.join(name::SAMBA_LOG))?;
    let pid = samba.pid();
    let outcome = process::poll(deadline, || {
        if samba.exit_status().is_some() {
            return Some(Err(()));
        }
        let holders = process::port_holders(pid, port);
        let kpasswd = process::port_holders(pid, kpasswd_port);
        if holders.foreign {
            return Some(Ok(Some(port)));
        }
        if kpasswd.foreign {
            return Some(Ok(Some(kpasswd_port)));
        }
        (holders.tcp && holders.udp).then_some(Ok(None))
    });
    match outcome {
        // Alive after its ports opened?
        Some(Ok(None)) if samba.exit_status().is_none() => Ok(samba),
        Some(Ok(None)) | Some(Err(())) => Err(samba.failure("starting samba", "samba exited")),
        Some(Ok(Some(port))) => Err(Error::KdcPortInUse { port }),
        None => Err(samba.failure(
            "starting samba",
            &format!(
                "its KDC did not serve on 127.0.0.1:{port} over UDP and TCP within {deadline:?}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        SambaConfig::new("/tmp/x").validate().unwrap();
    }

    #[test]
    fn a_netbios_domain_over_fifteen_characters_is_refused() {
        let mut config = SambaConfig::new("/tmp/x");
        config.netbios_domain = "A".repeat(16);
        assert!(matches!(config.validate(), Err(Error::KdcConfig(_))));
    }

    #[test]
    fn a_password_with_a_space_is_refused() {
        let mut config = SambaConfig::new("/tmp/x");
        config.users[0].password = "Alice pw-1".into();
        assert!(matches!(config.validate(), Err(Error::KdcConfig(_))));
    }

    #[test]
    fn the_gateways_keytab_holds_its_account_and_exchanges_its_spn() {
        let config = SambaConfig::new("/tmp/x");
        let gateway = &config.services[0];
        assert_eq!(gateway.keytab_principal, GATEWAY_ACCOUNT);
        assert_eq!(
            qualified(&gateway.keytab_principal, &config.realm),
            "svc-seg@AD.TEST.LOCAL"
        );
        assert_eq!(config.services[1].keytab_principal, EXCHANGE_SERVICE);
    }
}
