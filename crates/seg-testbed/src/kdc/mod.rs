//! A real MIT Kerberos KDC on loopback, in which S4U2Self and S4U2Proxy (constrained
//! delegation, MS-SFU) work.
//!
//! [`Kdc::start`] brings up, as children of this process and with all their files in one
//! directory, a private OpenLDAP `slapd` (on a unix socket in that directory, with MIT's
//! Kerberos schema) and MIT's `krb5kdc` on its LDAP back end: MIT's default DB2 back end does
//! protocol transition but has no delegation rules, so it refuses every S4U2Proxy request. The
//! realm gets the users and services of the [`KdcConfig`]; by default that is realm
//! [`DEFAULT_REALM`], users `alice`/`alicepw` and `bob`/`bobpw`, the gateway's
//! [`GATEWAY_SERVICE`] (`ok_to_auth_as_delegate`, allowed to delegate to [`EXCHANGE_SERVICE`]),
//! and [`OTHER_SERVICE`], to which it may not delegate. Each service's keys are written to a
//! keytab in the directory, and clients find the KDC through the directory's `krb5.conf`
//! (`KRB5_CONFIG`). Nothing outside the directory is written, and neither `/etc/krb5.conf` nor
//! `/etc/ldap/ldap.conf` is read. The processes are killed when the [`RunningKdc`] is dropped.
//!
//! The programs come from Debian's `krb5-kdc`, `krb5-admin-server`, `krb5-kdc-ldap`, `slapd`
//! and `ldap-utils` (`scripts/install-deps.sh` installs them); MIT's client tools, used to
//! prove the set-up, from `krb5-user`.
//!
//! ```no_run
//! use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The default realm, in a fresh temporary directory removed when `kdc` is dropped.
//! let kdc = Kdc::start(KdcConfig::temporary())?;
//! let ccache = format!("FILE:{}", kdc.dir().join("cc").display());
//! let gateway_keytab = kdc.keytab(GATEWAY_SERVICE).ok_or("no gateway keytab")?;
//! // The gateway logs in with its keytab, then asks for a ticket to Exchange as alice.
//! let kinit = kdc
//!     .command("kinit")
//!     .env("KRB5CCNAME", &ccache)
//!     .args(["-k", "-t"])
//!     .arg(gateway_keytab)
//!     .arg(GATEWAY_SERVICE)
//!     .status()?;
//! let kvno = kdc
//!     .command("kvno")
//!     .env("KRB5CCNAME", &ccache)
//!     .args(["-U", "alice", "-P", EXCHANGE_SERVICE])
//!     .status()?;
//! assert!(kinit.success() && kvno.success());
//! # Ok(()) }
//! ```
//!
//! [`Kdc::start`] blocks for the fraction of a second the set-up takes; from async code, call it
//! in `tokio::task::spawn_blocking`.

pub(crate) mod files;
pub(crate) mod process;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use files::name;
use process::{Daemon, Environment, find_program, run_step};

/// The realm of the default configuration.
pub const DEFAULT_REALM: &str = "TEST.LOCAL";
/// The gateway's service principal in the default configuration.
pub const GATEWAY_SERVICE: &str = "HTTP/seg.test.local";
/// Exchange's service principal in the default configuration; the gateway may delegate to it.
pub const EXCHANGE_SERVICE: &str = "HTTP/exchange.test.local";
/// A service the gateway may not delegate to, in the default configuration.
pub const OTHER_SERVICE: &str = "HTTP/other.test.local";

/// How many ports are tried when the port is chosen automatically and another process turns
/// out to share it.
const PORT_ATTEMPTS: usize = 5;

/// A user of the test realm, who logs in with a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcUser {
    /// The principal name without the realm (`alice`).
    pub name: String,
    /// The password.
    pub password: String,
}

impl KdcUser {
    /// A user with a password.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
        }
    }
}

/// A service of the test realm, whose keys are written to a keytab in the KDC's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcService {
    /// The principal name without the realm (`HTTP/seg.test.local`).
    pub principal: String,
    /// The keytab's file name in the KDC's directory (`seg.keytab`).
    pub keytab: String,
    /// The service's password, for services that log in the way an administrator enters a
    /// service account; `None` gives it random keys. The keytab holds the keys either way.
    pub password: Option<String>,
    /// Whether the service may use protocol transition (S4U2Self) to get forwardable tickets
    /// for any user to itself: MIT's `ok_to_auth_as_delegate` flag.
    pub ok_to_auth_as_delegate: bool,
    /// The services (principal names, with or without the realm) it may get tickets to on a
    /// user's behalf by S4U2Proxy: the LDAP attribute `krbAllowedToDelegateTo`.
    pub allowed_to_delegate_to: Vec<String>,
}

impl KdcService {
    /// A service with random keys and no delegation rights.
    pub fn new(principal: impl Into<String>, keytab: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            keytab: keytab.into(),
            password: None,
            ok_to_auth_as_delegate: false,
            allowed_to_delegate_to: Vec::new(),
        }
    }

    /// The service with protocol transition and the right to delegate to `targets`: what a
    /// gateway doing constrained delegation needs.
    pub fn delegating_to<T: Into<String>>(mut self, targets: impl IntoIterator<Item = T>) -> Self {
        self.ok_to_auth_as_delegate = true;
        self.allowed_to_delegate_to = targets.into_iter().map(Into::into).collect();
        self
    }

    /// The service with a password instead of random keys.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

/// What [`Kdc::start`] sets up. Plain data: change the fields of [`KdcConfig::new`]'s default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcConfig {
    /// The directory that holds every file of the KDC: configuration, database, logs, keytabs.
    /// Created if missing; files of an earlier KDC in it are replaced.
    pub dir: PathBuf,
    /// Whether the directory is removed, with everything in it, when the KDC stops. A KDC that
    /// fails to start leaves it in place, logs included, for inspection.
    pub remove_dir_on_stop: bool,
    /// The port on 127.0.0.1 the KDC serves on, over UDP and TCP; `None` picks a free one.
    pub port: Option<u16>,
    /// The realm.
    pub realm: String,
    /// The users.
    pub users: Vec<KdcUser>,
    /// The services.
    pub services: Vec<KdcService>,
    /// Whether every principal requires pre-authentication (PA-ENC-TIMESTAMP), as Active
    /// Directory does.
    pub require_preauth: bool,
    /// The encryption types of the principals' keys, strongest first, as MIT names them.
    pub enctypes: Vec<String>,
    /// The longest life of any ticket the KDC issues (the realm's `max_life` in `kdc.conf`,
    /// whole seconds, at least one): 10 hours by default; a few seconds lets tests see
    /// tickets, the TGT included, really expire.
    pub max_ticket_life: Duration,
    /// How long each step of the set-up (a tool, a daemon coming up) may take.
    pub step_deadline: Duration,
}

impl KdcConfig {
    /// The default realm in `dir`: realm [`DEFAULT_REALM`], users `alice` (`alicepw`) and `bob`
    /// (`bobpw`), [`GATEWAY_SERVICE`] in `seg.keytab` allowed to delegate to
    /// [`EXCHANGE_SERVICE`] (`exchange.keytab`), [`OTHER_SERVICE`] (`other.keytab`), a free port,
    /// pre-authentication required, AES keys (`aes256-cts-hmac-sha1-96`,
    /// `aes128-cts-hmac-sha1-96`), tickets living at most 10 hours.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            remove_dir_on_stop: false,
            port: None,
            realm: DEFAULT_REALM.to_string(),
            users: vec![
                KdcUser::new("alice", "alicepw"),
                KdcUser::new("bob", "bobpw"),
            ],
            services: vec![
                KdcService::new(GATEWAY_SERVICE, "seg.keytab").delegating_to([EXCHANGE_SERVICE]),
                KdcService::new(EXCHANGE_SERVICE, "exchange.keytab"),
                KdcService::new(OTHER_SERVICE, "other.keytab"),
            ],
            require_preauth: true,
            enctypes: vec![
                "aes256-cts-hmac-sha1-96".to_string(),
                "aes128-cts-hmac-sha1-96".to_string(),
            ],
            max_ticket_life: Duration::from_secs(10 * 3600),
            step_deadline: Duration::from_secs(20),
        }
    }

    /// The default realm (see [`KdcConfig::new`]) in a new directory under the system's
    /// temporary directory, removed when the KDC stops: what tests want.
    pub fn temporary() -> Self {
        let unique = format!(
            "seg-kdc-{}-{}",
            std::process::id(),
            random_password().get(..10).unwrap_or_default()
        );
        Self {
            remove_dir_on_stop: true,
            ..Self::new(std::env::temp_dir().join(unique))
        }
    }

    /// `name` qualified with the realm unless it already names one.
    fn qualified(&self, name: &str) -> String {
        if name.contains('@') {
            name.to_string()
        } else {
            format!("{name}@{}", self.realm)
        }
    }

    /// Refuses names and passwords that would not survive `kadmin.local`'s command line or the
    /// configuration files.
    fn validate(&self) -> Result<()> {
        let invalid = |what: &str, value: &str| {
            Error::KdcConfig(format!(
                "{what} {value:?} is empty or contains whitespace, quotes or backslashes"
            ))
        };
        let plain = |value: &str| {
            !value.is_empty()
                && !value
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '\''))
        };
        if !plain(&self.realm) || self.realm.contains(['{', '}', '=', '@', '/']) {
            return Err(invalid("the realm", &self.realm));
        }
        for user in &self.users {
            if !plain(&user.name) {
                return Err(invalid("the user name", &user.name));
            }
            if !plain(&user.password) {
                return Err(invalid("the password of user", &user.name));
            }
        }
        for service in &self.services {
            if !plain(&service.principal) {
                return Err(invalid("the service principal", &service.principal));
            }
            if service
                .password
                .as_deref()
                .is_some_and(|password| !plain(password))
            {
                return Err(invalid("the password of service", &service.principal));
            }
            if !plain(&service.keytab) || service.keytab.contains('/') {
                return Err(invalid("the keytab file name", &service.keytab));
            }
            if let Some(target) = service.allowed_to_delegate_to.iter().find(|t| !plain(t)) {
                return Err(invalid("the delegation target", target));
            }
        }
        if self.max_ticket_life.as_secs() == 0 {
            return Err(Error::KdcConfig(
                "the maximum ticket life is under one second".into(),
            ));
        }
        if self.enctypes.is_empty() || !self.enctypes.iter().all(|e| plain(e)) {
            return Err(Error::KdcConfig(
                "the encryption types are empty or malformed".into(),
            ));
        }
        Ok(())
    }
}

/// Starts MIT Kerberos KDCs. See the [module documentation](self).
#[derive(Debug, Clone, Copy)]
pub struct Kdc;

impl Kdc {
    /// The KDC the tests of one test binary share while any of them holds it: started by the
    /// first caller with `config()`, stopped when the last holder drops it (a plain static would
    /// never be dropped and would leave slapd and krb5kdc running after the tests). The first
    /// caller's configuration wins for the whole process. Runs the blocking start-up on tokio's
    /// blocking pool.
    ///
    /// # Errors
    ///
    /// Those of [`Kdc::start`].
    pub async fn shared(config: fn() -> KdcConfig) -> Result<Arc<RunningKdc>> {
        static SHARED: Mutex<Weak<RunningKdc>> = Mutex::new(Weak::new());
        process::shared(&SHARED, move || Kdc::start(config())).await
    }

    /// Brings up slapd and krb5kdc for `config` and waits until the KDC serves on its port.
    /// Blocks for the duration (typically well under a second).
    ///
    /// # Errors
    ///
    /// - [`Error::KdcConfig`] if a name or password in `config` cannot be used;
    /// - [`Error::KdcToolMissing`] naming the Debian package if a program or schema file is
    ///   missing;
    /// - [`Error::KdcSetup`] naming the step that failed (starting slapd, creating the realm,
    ///   adding a principal, writing a keytab, the delegation rules, starting krb5kdc) with the
    ///   tool's own error output or the end of the daemon's log;
    /// - [`Error::KdcPortInUse`] if `config.port` is given and another process serves on it;
    /// - [`Error::File`], [`Error::KdcSpawn`], [`Error::Connect`] for the files, programs and
    ///   sockets involved.
    pub fn start(config: KdcConfig) -> Result<RunningKdc> {
        let started = Instant::now();
        config.validate()?;
        let tools = Tools::find()?;
        let dir = prepare_dir(&config)?;
        let ldapi_socket = dir.join(name::LDAPI);
        // sun_path holds 108 bytes, the terminating NUL included.
        if ldapi_socket.as_os_str().len() > 100 {
            return Err(Error::KdcConfig(format!(
                "the directory {} is too long for slapd's unix socket in it (at most 100 bytes with /{})",
                dir.display(),
                name::LDAPI
            )));
        }
        let ldapi = files::ldapi_url(&ldapi_socket);
        let environment = Environment {
            vars: vec![
                ("KRB5_CONFIG", dir.join(name::KRB5_CONF)),
                ("KRB5_KDC_PROFILE", dir.join(name::KDC_CONF)),
            ],
        };
        let ldap_password = random_password();
        let master_password = random_password();

        // The directory: a private slapd with MIT's schema, serving only the socket in `dir`.
        let schema = run_step(
            "unpacking MIT's Kerberos LDAP schema",
            {
                let mut command = Command::new(&tools.gzip);
                command.arg("-dc").arg(files::KERBEROS_SCHEMA_GZ);
                command
            },
            None,
            config.step_deadline,
        )?;
        write_file(&dir.join(name::KERBEROS_SCHEMA), &schema.stdout)?;
        write_file(
            &dir.join(name::SLAPD_CONF),
            &(files::slapd_conf(&dir) + &files::slapd_rootpw(&ldap_password)),
        )?;
        create_dir(&dir.join(name::LDAP_DATA))?;
        let mut slapd = Daemon::spawn(
            "slapd",
            {
                let mut command = environment.command(&tools.slapd);
                command
                    // `stats`: one line per connection and operation, so that a step that
                    // hangs can be matched to what slapd last did for it.
                    .args(["-d", "stats", "-f"])
                    .arg(dir.join(name::SLAPD_CONF))
                    .arg("-h")
                    .arg(&ldapi);
                command
            },
            dir.join(name::SLAPD_LOG),
        )?;
        wait_for_slapd(&mut slapd, &ldapi_socket, config.step_deadline)?;
        let slapd_log = dir.join(name::SLAPD_LOG);
        let with_slapd_log = |error| with_log_tail(error, &slapd_log);
        let ldap_modify = |step: &str, ldif: String, add: bool| {
            let mut command = environment.command(&tools.ldapmodify);
            command
                .args([
                    "-x",
                    "-H",
                    &ldapi,
                    "-D",
                    files::ADMIN_DN,
                    "-w",
                    &ldap_password,
                ])
                .args(add.then_some("-a"));
            run_step(step, command, Some(&ldif), config.step_deadline).map_err(with_slapd_log)
        };
        ldap_modify(
            "adding the directory's root entry",
            files::base_ldif(),
            true,
        )?;

        // The realm in the directory, with the KDC's configuration pointing at it.
        let mut port = match config.port {
            Some(port) => port,
            None => process::free_port()?,
        };
        write_kerberos_conf(&config, &dir, port, &ldapi)?;
        write_file(
            &dir.join(name::KADM5_ACL),
            &format!("*/admin@{} *\n", config.realm),
        )?;
        let kdb5_ldap_util = |step: &str, args: &[&str], stdin: Option<&str>| {
            let mut command = environment.command(&tools.kdb5_ldap_util);
            command
                .args(["-D", files::ADMIN_DN, "-w", &ldap_password, "-H", &ldapi])
                .args(args);
            run_step(step, command, stdin, config.step_deadline).map_err(with_slapd_log)
        };
        let ldap_stash = dir.join(name::LDAP_STASH);
        let ldap_stash = ldap_stash.to_string_lossy();
        kdb5_ldap_util(
            "stashing the LDAP bind password (kdb5_ldap_util stashsrvpw)",
            &["stashsrvpw", "-f", &ldap_stash, files::ADMIN_DN],
            Some(&format!("{ldap_password}\n{ldap_password}\n")),
        )?;
        kdb5_ldap_util(
            "creating the realm in LDAP (kdb5_ldap_util create)",
            &[
                "create",
                "-subtrees",
                files::SUFFIX,
                "-r",
                &config.realm,
                "-s",
                "-P",
                &master_password,
            ],
            None,
        )?;

        // Principals, keytabs, delegation rules.
        let kadmin = |query: String| {
            let mut command = environment.command(&tools.kadmin_local);
            command.args(["-r", &config.realm, "-q", &query]);
            kadmin_step(command, &query, config.step_deadline).map_err(with_slapd_log)
        };
        let preauth = if config.require_preauth {
            " +requires_preauth"
        } else {
            ""
        };
        for user in &config.users {
            kadmin(format!(
                "addprinc{preauth} -pw \"{}\" \"{}\"",
                user.password,
                config.qualified(&user.name)
            ))?;
        }
        let mut keytabs = Vec::new();
        for service in &config.services {
            let principal = config.qualified(&service.principal);
            let delegate = if service.ok_to_auth_as_delegate {
                " +ok_to_auth_as_delegate"
            } else {
                ""
            };
            let keys = match &service.password {
                Some(password) => format!("-pw \"{password}\""),
                None => "-randkey".to_string(),
            };
            kadmin(format!(
                "addprinc{preauth}{delegate} {keys} \"{principal}\""
            ))?;
            let keytab = dir.join(&service.keytab);
            // -norandkey keeps a password's keys; random keys are fine either way.
            kadmin(format!(
                "ktadd -k \"{}\" -norandkey \"{principal}\"",
                keytab.display()
            ))?;
            if !service.allowed_to_delegate_to.is_empty() {
                let targets: Vec<String> = service
                    .allowed_to_delegate_to
                    .iter()
                    .map(|target| config.qualified(target))
                    .collect();
                ldap_modify(
                    &format!("adding krbAllowedToDelegateTo to {principal}"),
                    files::delegation_ldif(&config.realm, &principal, &targets),
                    false,
                )?;
            }
            keytabs.push((service.principal.clone(), principal, keytab));
        }

        // The KDC itself, on a port no other process shares.
        let mut attempts = 0;
        let krb5kdc = loop {
            attempts += 1;
            match start_krb5kdc(&tools, &environment, &dir, port, config.step_deadline) {
                Err(Error::KdcPortInUse { .. })
                    if config.port.is_none() && attempts < PORT_ATTEMPTS =>
                {
                    port = process::free_port()?;
                    write_kerberos_conf(&config, &dir, port, &ldapi)?;
                }
                other => break other?,
            }
        };
        // Check once more that slapd, which the KDC needs for every request, is still alive.
        if slapd.exit_status().is_some() {
            return Err(slapd.failure("starting krb5kdc", "slapd stopped"));
        }
        let startup_time = started.elapsed();
        tracing::debug!(port, ?startup_time, dir = %dir.display(), "test KDC started");
        Ok(RunningKdc {
            realm: config.realm.clone(),
            dir,
            port,
            keytabs,
            environment,
            tools,
            step_deadline: config.step_deadline,
            startup_time,
            remove_dir_on_stop: config.remove_dir_on_stop,
            krb5kdc: Some(krb5kdc),
            slapd,
        })
    }
}

/// A running KDC and its directory server. Both are killed when this is dropped.
#[derive(Debug)]
pub struct RunningKdc {
    realm: String,
    dir: PathBuf,
    port: u16,
    /// (name as configured, qualified name, keytab)
    keytabs: Vec<(String, String, PathBuf)>,
    environment: Environment,
    tools: Tools,
    step_deadline: Duration,
    startup_time: Duration,
    remove_dir_on_stop: bool,
    // Declared before `slapd` so that it is dropped first.
    krb5kdc: Option<Daemon>,
    slapd: Daemon,
}

impl RunningKdc {
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

    /// The directory holding the KDC's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The clients' `krb5.conf`, for `KRB5_CONFIG`: the realm's KDC at [`Self::addr`],
    /// forwardable tickets, no DNS lookups.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.join(name::KRB5_CONF)
    }

    /// The KDC's `kdc.conf`, for `KRB5_KDC_PROFILE`.
    pub fn kdc_conf(&self) -> PathBuf {
        self.dir.join(name::KDC_CONF)
    }

    /// The KDC's log: one line per request (`AS_REQ`, `TGS_REQ`, with S4U details on the next
    /// line), for counting the requests a client made.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(name::KDC_LOG)
    }

    /// The KDC's log as text (empty if nothing was logged yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The keytab of a service, named as configured or with its realm (`HTTP/seg.test.local`).
    pub fn keytab(&self, principal: &str) -> Option<&Path> {
        self.keytabs
            .iter()
            .find(|(configured, qualified, _)| configured == principal || qualified == principal)
            .map(|(_, _, keytab)| keytab.as_path())
    }

    /// How long [`Kdc::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// A command for one of MIT's tools (`kinit`, `kvno`, `klist`, …) with `KRB5_CONFIG` and
    /// `KRB5_KDC_PROFILE` pointing at this KDC's files. Set `KRB5CCNAME` on it to keep the
    /// credential cache private.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.environment.command(program)
    }

    /// Whether krb5kdc is running (it is not between [`Self::stop_kdc`] and
    /// [`Self::restart_kdc`]).
    pub fn is_serving(&mut self) -> bool {
        self.krb5kdc
            .as_mut()
            .is_some_and(|krb5kdc| krb5kdc.exit_status().is_none())
    }

    /// Checks that slapd and krb5kdc (unless stopped on purpose) are still running.
    ///
    /// # Errors
    ///
    /// [`Error::KdcSetup`] naming the daemon that stopped, with the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(krb5kdc) = self.krb5kdc.as_mut()
            && krb5kdc.exit_status().is_some()
        {
            return Err(krb5kdc.failure("running krb5kdc", "krb5kdc stopped"));
        }
        if self.slapd.exit_status().is_some() {
            return Err(self.slapd.failure("running slapd", "slapd stopped"));
        }
        Ok(())
    }

    /// Stops krb5kdc, leaving the realm in place: clients see the KDC unreachable until
    /// [`Self::restart_kdc`].
    pub fn stop_kdc(&mut self) {
        if let Some(mut krb5kdc) = self.krb5kdc.take() {
            krb5kdc.stop();
        }
    }

    /// Starts krb5kdc again on the same port after [`Self::stop_kdc`] (a no-op if it is
    /// running) and waits until it serves.
    ///
    /// # Errors
    ///
    /// [`Error::KdcPortInUse`] if another process took the port meanwhile; [`Error::KdcSetup`]
    /// if krb5kdc does not come up, with the end of its log.
    pub fn restart_kdc(&mut self) -> Result<()> {
        if self.is_serving() {
            return Ok(());
        }
        self.krb5kdc = Some(start_krb5kdc(
            &self.tools,
            &self.environment,
            &self.dir,
            self.port,
            self.step_deadline,
        )?);
        Ok(())
    }

    /// Stops krb5kdc and slapd; the files stay in the directory unless the configuration
    /// asked for its removal. Dropping does the same.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for RunningKdc {
    fn drop(&mut self) {
        self.stop_kdc();
        self.slapd.stop();
        if self.remove_dir_on_stop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The programs the KDC runs, found once.
#[derive(Debug, Clone)]
struct Tools {
    slapd: PathBuf,
    ldapmodify: PathBuf,
    kdb5_ldap_util: PathBuf,
    kadmin_local: PathBuf,
    krb5kdc: PathBuf,
    gzip: PathBuf,
}

impl Tools {
    fn find() -> Result<Self> {
        let tools = Self {
            slapd: find_program("slapd")?,
            ldapmodify: find_program("ldapmodify")?,
            kdb5_ldap_util: find_program("kdb5_ldap_util")?,
            kadmin_local: find_program("kadmin.local")?,
            krb5kdc: find_program("krb5kdc")?,
            gzip: find_program("gzip")?,
        };
        process::require_file(files::CORE_SCHEMA, "slapd")?;
        process::require_file(files::KERBEROS_SCHEMA_GZ, "krb5-kdc-ldap")?;
        Ok(tools)
    }
}

/// Creates the directory (absolute from then on) and removes the files of an earlier KDC in it.
fn prepare_dir(config: &KdcConfig) -> Result<PathBuf> {
    create_dir(&config.dir)?;
    let dir = config.dir.canonicalize().map_err(|source| Error::File {
        path: config.dir.clone(),
        source,
    })?;
    let data = dir.join(name::LDAP_DATA);
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|source| Error::File {
            path: data.clone(),
            source,
        })?;
    }
    let stale = [
        name::LDAPI,
        name::LDAP_STASH,
        name::MASTER_STASH,
        name::KDC_LOG,
        name::SLAPD_LOG,
        name::KRB5KDC_OUT,
        name::KADMIN_LOG,
        name::KRB5LIB_LOG,
    ]
    .into_iter()
    .map(String::from)
    .chain(config.services.iter().map(|service| service.keytab.clone()));
    for file in stale {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::File { path, source }),
        }
    }
    Ok(dir)
}

pub(crate) fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write_kerberos_conf(config: &KdcConfig, dir: &Path, port: u16, ldapi: &str) -> Result<()> {
    write_file(
        &dir.join(name::KDC_CONF),
        &files::kdc_conf(config, dir, port, ldapi),
    )?;
    write_file(&dir.join(name::KRB5_CONF), &files::krb5_conf(config, port))
}

/// A random password for the LDAP root and the master key (never shown; tests do not need
/// them).
pub(crate) fn random_password() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Waits until slapd accepts connections on its socket (the socket file appears before slapd
/// listens on it).
fn wait_for_slapd(slapd: &mut Daemon, socket: &Path, deadline: Duration) -> Result<()> {
    let outcome = process::poll(deadline, || {
        if slapd.exit_status().is_some() {
            return Some(false);
        }
        std::os::unix::net::UnixStream::connect(socket)
            .is_ok()
            .then_some(true)
    });
    match outcome {
        Some(true) => Ok(()),
        Some(false) => Err(slapd.failure("starting slapd", "slapd exited")),
        None => Err(slapd.failure(
            "starting slapd",
            &format!(
                "{} did not accept connections within {deadline:?}",
                socket.display()
            ),
        )),
    }
}

/// Runs one `kadmin.local -q` query. kadmin.local exits 0 even when the query fails, so its
/// standard error is the verdict: anything beyond its usual notices is a failure.
fn kadmin_step(command: Command, query: &str, deadline: Duration) -> Result<()> {
    let step = format!("kadmin.local -q '{query}'");
    let output = run_step(&step, command, None, deadline)?;
    let complaints: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| {
            let line = line.trim();
            !(line.is_empty()
                || line.starts_with("Authenticating as principal")
                || line.starts_with("No policy specified for")
                || line.starts_with("WARNING: no policy specified"))
        })
        .collect();
    if complaints.is_empty() {
        Ok(())
    } else {
        Err(Error::KdcSetup {
            step,
            detail: complaints.join("\n"),
        })
    }
}

/// `error` with the end of `log` added, if it is a failed setup step: for the steps that work
/// through slapd, whose log then shows what it last did for them.
fn with_log_tail(error: Error, log: &Path) -> Error {
    match error {
        Error::KdcSetup { step, detail } => Error::KdcSetup {
            step,
            detail: format!(
                "{detail}\nthe end of {}:\n{}",
                log.display(),
                process::log_tail(log, 20)
            ),
        },
        other => other,
    }
}

/// Starts krb5kdc on `port` and waits until it holds the port over UDP and TCP, alone.
fn start_krb5kdc(
    tools: &Tools,
    environment: &Environment,
    dir: &Path,
    port: u16,
    deadline: Duration,
) -> Result<Daemon> {
    let mut command = environment.command(&tools.krb5kdc);
    command.arg("-n").arg("-P").arg(dir.join(name::KRB5KDC_PID));
    let mut krb5kdc = Daemon::spawn("krb5kdc", command, dir.join(name::KRB5KDC_OUT))?;
    let log = dir.join(name::KDC_LOG);
    let pid = krb5kdc.pid();
    let outcome = process::poll(deadline, || {
        if krb5kdc.exit_status().is_some() {
            return Some(Err(()));
        }
        let holders = process::port_holders(pid, port);
        if holders.foreign {
            return Some(Ok(false));
        }
        (holders.tcp && holders.udp).then_some(Ok(true))
    });
    let failure = |krb5kdc: &mut Daemon, what: &str| {
        let mut error = krb5kdc.failure("starting krb5kdc", what);
        if let Error::KdcSetup { detail, .. } = &mut error {
            detail.push_str(&format!(
                "\nthe end of {}:\n{}",
                log.display(),
                process::log_tail(&log, 20)
            ));
        }
        error
    };
    match outcome {
        // Alive after its ports opened?
        Some(Ok(true)) if krb5kdc.exit_status().is_none() => Ok(krb5kdc),
        Some(Ok(true)) | Some(Err(())) => Err(failure(&mut krb5kdc, "krb5kdc exited")),
        Some(Ok(false)) => Err(Error::KdcPortInUse { port }),
        None => Err(failure(
            &mut krb5kdc,
            &format!("it did not serve on 127.0.0.1:{port} over UDP and TCP within {deadline:?}"),
        )),
    }
}
