//! The gateway's configuration: plain data, loaded once by figment and validated once at start.
//!
//! Sources, each overriding the one before:
//! 1. built-in defaults;
//! 2. the TOML file given with `--config`;
//! 3. an existing SEG V2 `application-override.properties` given with `--properties`
//!    (see [`crate::properties`]);
//! 4. environment variables `SEG_<SECTION>__<KEY>`, e.g. `SEG_EXCHANGE__URL`.
//!
//! Every error names the key and the source (file, environment) it came from.

use crate::properties::PropertiesFile;
use auth_negotiation::client_cert::UpnFallback;
use compliance_policy::policy::{ActiveSyncDiscovery, PolicySettings, UnknownDevice};
use ews_proxy_core::server::ServerSettings;
use ews_proxy_core::tls::{ClientAuth, ClientCertMode};
use ews_proxy_core::upstream::PoolSettings;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use seg_config::{check_http_url as check_url, describe, error_chain, origin};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of a gateway process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens.
    pub listen: Listen,
    /// The listener's certificate, for `listen.https`.
    pub tls: Option<TlsFiles>,
    /// Where Exchange is and how to reach it.
    pub exchange: Exchange,
    /// EWS proxying.
    pub ews: Ews,
    /// ActiveSync proxying.
    pub activesync: ActiveSync,
    /// Limits and timeouts of the listeners.
    pub server: ServerSettings,
    /// Limits per device.
    pub limits: Limits,
    /// Logging.
    pub log: Log,
    /// Device compliance; without this section the gateway is a plain EWS proxy.
    pub compliance: Option<ComplianceConfig>,
    /// The admin listener (health, readiness, metrics, device lookup, overrides, UEM webhook).
    pub admin: Admin,
    /// Telling ENS about blocks and unblocks.
    pub ens: Ens,
    /// How clients authenticate.
    pub auth: Auth,
    /// `[audit]`: the audit trail; without this section nothing is recorded. Needs
    /// `[compliance]`.
    pub audit: Option<audit_trail::AuditSettings>,
    /// This gateway's name in the audit trail (and wherever nodes must be told apart); the
    /// host name when absent (see [`Config::node_name`]).
    pub node: Option<String>,
}

/// `[auth]`: how clients authenticate to the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// The ways clients authenticate: `basic`, `oauth`, `cba-kcd`; default `["basic", "oauth"]`.
    /// Basic and Bearer credentials pass through to Exchange; `cba-kcd` answers a request that
    /// has a valid client certificate and no credentials with Kerberos from `[auth.kcd]`.
    pub modes: Vec<AuthMode>,
    /// `off` (default), `optional` or `required`: whether `listen.https` asks clients for a
    /// certificate. In `optional` mode a client without a valid certificate still connects,
    /// without a certificate identity; in `required` mode its handshake fails.
    pub client_cert: ClientCertMode,
    /// The CA bundle (PEM) client certificates must chain to; needed unless `client_cert` is
    /// `off`.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER files); a certificate listed in one is not valid.
    pub crl: Vec<PathBuf>,
    /// `none` (default), `rfc822` or `cn`: where the user comes from when a client certificate
    /// has no UPN `otherName`. A certificate that names no user is not valid.
    pub upn_fallback: UpnFallback,
    /// `[auth.kcd]`: the Kerberos constrained delegation of `cba-kcd`.
    pub kcd: Option<Kcd>,
    /// `[auth.oauth]`: verifying bearer tokens; without it they pass unverified (Exchange
    /// verifies them).
    pub oauth: Option<OAuth>,
}

/// `[auth.oauth]`: the gateway verifies bearer tokens itself, refusing (`401`) a token whose
/// signature or claims do not verify before it reaches Exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuth {
    /// A JSON Web Key Set file with the issuer's public keys (chosen by the token's `kid`).
    pub jwks: Option<PathBuf>,
    /// A PEM file with one more public key (RSA, EC or Ed25519), for any `kid`.
    pub public_key: Option<PathBuf>,
    /// The `iss` tokens must carry; any when absent.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry; any when absent.
    pub audience: Option<String>,
}

/// A key file of `[auth.oauth]` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {}", path.display())]
pub struct OAuthKeyError {
    /// The configuration key naming the file.
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    #[source]
    pub source: auth_negotiation::bearer::BearerKeyError,
}

impl OAuth {
    /// The keys and claims of this section, read from its files; the error names the key
    /// (`auth.oauth.jwks`, `auth.oauth.public_key`) and the file that could not be used.
    pub fn keys(&self) -> Result<auth_negotiation::bearer::BearerKeys, OAuthKeyError> {
        use auth_negotiation::bearer::BearerKeys;
        let load = |key: &'static str,
                    path: &Option<PathBuf>,
                    read: fn(&Path) -> Result<BearerKeys, _>| {
            path.as_deref()
                .map(|path| {
                    read(path).map_err(|source| OAuthKeyError {
                        key,
                        path: path.to_owned(),
                        source,
                    })
                })
                .transpose()
        };
        let jwks = load("auth.oauth.jwks", &self.jwks, BearerKeys::read_jwks)?;
        let pem = load(
            "auth.oauth.public_key",
            &self.public_key,
            BearerKeys::read_pem,
        )?;
        let mut keys = match (jwks, pem) {
            (Some(jwks), Some(pem)) => jwks.and(pem),
            (Some(keys), None) | (None, Some(keys)) => keys,
            (None, None) => BearerKeys::default(),
        };
        if let Some(issuer) = &self.issuer {
            keys = keys.with_issuer(issuer.clone());
        }
        if let Some(audience) = &self.audience {
            keys = keys.with_audience(audience.clone());
        }
        Ok(keys)
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            modes: vec![AuthMode::Basic, AuthMode::Oauth],
            client_cert: ClientCertMode::Off,
            client_ca: None,
            crl: Vec::new(),
            upn_fallback: UpnFallback::None,
            kcd: None,
            oauth: None,
        }
    }
}

impl Auth {
    /// Whether `auth.modes` contains `cba-kcd`.
    pub fn cba_kcd(&self) -> bool {
        self.modes.contains(&AuthMode::CbaKcd)
    }
}

/// One way clients authenticate, in `auth.modes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `Authorization: Basic`, passed through untouched.
    Basic,
    /// `Authorization: Bearer`, passed through untouched.
    Oauth,
    /// A client certificate, answered with Kerberos constrained delegation (`[auth.kcd]`).
    CbaKcd,
}

/// `[auth.kcd]`: how the gateway gets Kerberos tickets to Exchange for certificate users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kcd {
    /// The `krb5.conf` naming the realms and their KDCs; its default realm comes first.
    pub krb5_conf: PathBuf,
    /// The keytab holding the gateway's keys.
    pub keytab: PathBuf,
    /// The gateway's principal in the keytab, e.g. `HTTP/seg.corp.example` (without `@REALM`,
    /// krb5.conf's default realm).
    pub service_principal: String,
    /// Exchange's SPN; `HTTP/<host of exchange.ews_url, else exchange.url>` when absent.
    #[serde(default)]
    pub target_spn: Option<String>,
    /// The ActiveSync host's SPN (for `activesync.enable_proxy`); when absent, `target_spn`'s
    /// value when EWS and ActiveSync share a host (no `exchange.ews_url`), else
    /// `HTTP/<host of exchange.url>`.
    #[serde(default)]
    pub activesync_target_spn: Option<String>,
    /// Extended Protection: bind tokens to the `tls-server-end-point` of the certificate
    /// Exchange presented on the gateway's latest connection to it (read at start, and followed
    /// when it is renewed).
    #[serde(default)]
    pub channel_binding: bool,
    /// How long getting one token from the KDC may take; `503` (`kcd-timeout`) beyond.
    #[serde(default = "default_kcd_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How many requests may be in flight to one KDC at once (more wait for a slot); at least 1.
    #[serde(default = "default_kcd_max_in_flight_per_kdc")]
    pub max_in_flight_per_kdc: usize,
    /// How long a UDP send waits for the KDC's reply before the request goes to the same KDC
    /// over TCP.
    #[serde(default = "default_kcd_udp_timeout", with = "humantime_serde")]
    pub udp_timeout: Duration,
    /// Mutual authentication: Exchange's answers must prove with an AP-REP that it read the
    /// ticket, else they are not passed on.
    #[serde(default)]
    pub mutual_auth: bool,
}

impl Kcd {
    /// `[auth.kcd]` with the three keys that have no default, every other key at its default
    /// (as a TOML file naming only those three would load): set the others on the result.
    pub fn new(
        krb5_conf: impl Into<PathBuf>,
        keytab: impl Into<PathBuf>,
        service_principal: impl Into<String>,
    ) -> Self {
        Kcd {
            krb5_conf: krb5_conf.into(),
            keytab: keytab.into(),
            service_principal: service_principal.into(),
            target_spn: None,
            activesync_target_spn: None,
            channel_binding: false,
            timeout: default_kcd_timeout(),
            max_in_flight_per_kdc: default_kcd_max_in_flight_per_kdc(),
            udp_timeout: default_kcd_udp_timeout(),
            mutual_auth: false,
        }
    }
}

fn default_kcd_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_kcd_max_in_flight_per_kdc() -> usize {
    kcd_client::DEFAULT_MAX_IN_FLIGHT
}

fn default_kcd_udp_timeout() -> Duration {
    kcd_client::DEFAULT_UDP_TIMEOUT
}

impl Config {
    /// `node`, else the host name (`/proc/sys/kernel/hostname`, `/etc/hostname`), else
    /// `seg-proxy`.
    pub fn node_name(&self) -> String {
        if let Some(node) = self
            .node
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            return node.to_owned();
        }
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|name| name.trim().to_owned())
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| "seg-proxy".into())
    }

    /// The EWS host's URL: `exchange.ews_url`, else `exchange.url`.
    pub fn ews_url(&self) -> &str {
        self.exchange
            .ews_url
            .as_deref()
            .unwrap_or(&self.exchange.url)
    }

    /// Exchange's SPN for `cba-kcd`: `auth.kcd.target_spn`, else `HTTP/<EWS host>`; `None`
    /// without `[auth.kcd]` or when the EWS URL has no host.
    pub fn kcd_target_spn(&self) -> Option<String> {
        let kcd = self.auth.kcd.as_ref()?;
        if let Some(spn) = &kcd.target_spn {
            return Some(spn.clone());
        }
        http_spn(self.ews_url())
    }

    /// The ActiveSync host's SPN for `cba-kcd`: `auth.kcd.activesync_target_spn`, else the EWS
    /// SPN ([`Config::kcd_target_spn`]) when EWS has no host of its own, else
    /// `HTTP/<host of exchange.url>`; `None` without `[auth.kcd]` or when the URL has no host.
    pub fn kcd_activesync_target_spn(&self) -> Option<String> {
        let kcd = self.auth.kcd.as_ref()?;
        if let Some(spn) = &kcd.activesync_target_spn {
            return Some(spn.clone());
        }
        match &self.exchange.ews_url {
            None => self.kcd_target_spn(),
            Some(_) => http_spn(&self.exchange.url),
        }
    }
}

/// `HTTP/<host of url>`; `None` when `url` does not parse or names no host.
fn http_spn(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    uri.host()
        .map(|host| format!("HTTP/{}", host.trim_matches(['[', ']'])))
}

/// `[compliance]`: where device compliance comes from and how it is enforced. Its `Debug`
/// hides the secrets (tenant code, password, webhook secret, Redis password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// The UEM API base, e.g. `https://as123.awmdm.com`.
    pub uem_url: String,
    /// The UEM `aw-tenant-code` API key. Secret.
    pub uem_tenant_code: String,
    /// The UEM API user.
    pub uem_user: String,
    /// The UEM API user's password. Secret.
    pub uem_password: String,
    /// The UEM organization group to search; the API user's own when absent.
    #[serde(default)]
    pub uem_organization_group_id: Option<u64>,
    /// Extra trust anchors (PEM) for the UEM server's certificate.
    #[serde(default)]
    pub uem_trust_store: Option<PathBuf>,
    /// Devices per page of the UEM search.
    #[serde(default = "default_page_size")]
    pub uem_page_size: u32,
    /// How long one UEM page may take.
    #[serde(default = "default_uem_timeout", with = "humantime_serde")]
    pub uem_timeout: Duration,
    /// The header carrying the EAS device id on EWS requests.
    #[serde(default = "default_device_header")]
    pub device_id_header: String,
    /// Where the last good view is kept across restarts; none keeps it in memory only.
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// Between full syncs.
    #[serde(default = "default_full_sync", with = "humantime_serde")]
    pub full_sync_interval: Duration,
    /// Between delta syncs.
    #[serde(default = "default_delta_sync", with = "humantime_serde")]
    pub delta_sync_interval: Duration,
    /// The shared secret UEM change events must carry (`POST /events/compliance` on the admin
    /// listener); without it the webhook refuses every event. Secret.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// `block` (default, fail closed) or `allow` (fail open, logged) for unknown devices.
    #[serde(default)]
    pub unknown_device: UnknownDevice,
    /// `allow` (default) or `decide`: an ActiveSync `OPTIONS` naming no device (every EAS
    /// client's protocol discovery) passes unless its user is blocked, or is decided as an
    /// unknown device.
    #[serde(default)]
    pub activesync_discovery: ActiveSyncDiscovery,
    /// The MEM policies.
    #[serde(default)]
    pub policy: PolicySettings,
    /// `memory` (default): this process's own view. `redis`: the view shared with the other
    /// gateway nodes through Redis at `redis_url` (see `docs/scale-out.md`).
    #[serde(default)]
    pub backend: ComplianceBackend,
    /// With `backend = "redis"`: `redis://[user:password@]host:port[/db]`, `rediss://…`
    /// (TLS), or `redis+unix:///path`. Secret when it holds a password.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// With a `rediss://` `redis_url`: the CA certificates (PEM) Redis's certificate must chain
    /// to, instead of the system's roots.
    #[serde(default)]
    pub redis_trust_store: Option<PathBuf>,
    /// With `backend = "redis"`: the leader lock's expiry; a dead leader's syncs are taken
    /// over within it and a third. At least 300ms.
    #[serde(default = "default_redis_lock_ttl", with = "humantime_serde")]
    pub redis_lock_ttl: Duration,
    /// With `backend = "redis"`: the prefix of the view's keys, so that several gateways'
    /// views may share one Redis.
    #[serde(default = "default_redis_key_prefix")]
    pub redis_key_prefix: String,
    /// With `backend = "redis"`: a full sync of more devices than this is written to Redis in
    /// batches of this many, then put in place at once, so that Redis is never blocked for
    /// the whole view. At least 1.
    #[serde(default = "default_redis_full_sync_batch")]
    pub redis_full_sync_batch: usize,
    /// With `backend = "redis"`: `/readyz` answers `503` while Redis does not answer, so that
    /// the load balancer sends requests to the nodes that follow the shared view. Default
    /// `false`: a node stays ready, deciding from its last view.
    #[serde(default)]
    pub redis_not_ready_when_down: bool,
}

/// What `Debug` and `check-config` show in place of a secret.
const REDACTED: &str = "<redacted>";

/// `url` with the password of its user part (`redis://user:password@host`) hidden.
fn redacted_redis_url(url: &str) -> String {
    compliance_redis::RedisSettings::new(url).redacted_url()
}

// By hand, not derived: a derived `Debug` would print the secrets into any log line or panic
// message that shows the configuration.
impl std::fmt::Debug for ComplianceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComplianceConfig")
            .field("uem_url", &self.uem_url)
            .field("uem_tenant_code", &REDACTED)
            .field("uem_user", &self.uem_user)
            .field("uem_password", &REDACTED)
            .field("uem_organization_group_id", &self.uem_organization_group_id)
            .field("uem_trust_store", &self.uem_trust_store)
            .field("uem_page_size", &self.uem_page_size)
            .field("uem_timeout", &self.uem_timeout)
            .field("device_id_header", &self.device_id_header)
            .field("snapshot", &self.snapshot)
            .field("full_sync_interval", &self.full_sync_interval)
            .field("delta_sync_interval", &self.delta_sync_interval)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| REDACTED),
            )
            .field("unknown_device", &self.unknown_device)
            .field("activesync_discovery", &self.activesync_discovery)
            .field("policy", &self.policy)
            .field("backend", &self.backend)
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(redacted_redis_url),
            )
            .field("redis_trust_store", &self.redis_trust_store)
            .field("redis_lock_ttl", &self.redis_lock_ttl)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_full_sync_batch", &self.redis_full_sync_batch)
            .field("redis_not_ready_when_down", &self.redis_not_ready_when_down)
            .finish()
    }
}

/// Where the compliance view lives (`compliance.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComplianceBackend {
    /// In this process, saved to `compliance.snapshot`: one gateway node.
    #[default]
    Memory,
    /// Shared through Redis by every gateway node (`compliance.redis_url`).
    Redis,
}

fn default_redis_lock_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_redis_key_prefix() -> String {
    "seg:compliance".into()
}
fn default_redis_full_sync_batch() -> usize {
    compliance_redis::RedisSettings::new("redis://localhost").full_sync_batch
}

fn default_page_size() -> u32 {
    500
}
fn default_uem_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_device_header() -> String {
    "X-Device-Id".into()
}
fn default_full_sync() -> Duration {
    Duration::from_secs(3600)
}
fn default_delta_sync() -> Duration {
    Duration::from_secs(60)
}

/// `[admin]`: the admin listener. Its `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener (plain HTTP; keep it on a management network).
    pub listen: Option<SocketAddr>,
    /// The bearer token every endpoint that reads device data or changes state requires.
    /// Secret. Without it those endpoints refuse everyone.
    pub token: Option<String>,
    /// Named operators who may sign in to the admin console (`/ui/`) with their own token; the
    /// audit trail names them as the actors of their overrides.
    pub operators: Vec<AdminOperator>,
    /// How long an admin console session lasts from sign-in (default `8h`).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the console's session cookie `Secure` (only sent over HTTPS). The admin listener is
    /// plain HTTP, so leave it off unless a TLS proxy fronts the console.
    pub secure_cookies: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: None,
            token: None,
            operators: Vec::new(),
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookies: false,
        }
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("operators", &self.operators)
            .field("session_ttl", &self.session_ttl)
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

/// `[[admin.operators]]`: an operator of the admin console.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminOperator {
    /// The name the console and the audit trail show.
    pub name: String,
    /// The token the operator signs in with (at least 16 characters). Secret.
    pub token: String,
}

impl std::fmt::Debug for AdminOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOperator")
            .field("name", &self.name)
            .field("token", &REDACTED)
            .finish()
    }
}

/// `[ens]`: the ENS side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ens {
    /// Where block and unblock transitions are POSTed.
    pub callback_url: Option<String>,
}

/// `[listen]`: the gateway's listeners. At least one is required.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// TLS listener address, e.g. `0.0.0.0:443`; needs `[tls]`.
    pub https: Option<SocketAddr>,
    /// Plain HTTP listener address, for deployments behind a TLS-terminating load balancer.
    pub http: Option<SocketAddr>,
}

/// `[tls]`: the listener's certificate chain and private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[exchange]`: the upstream. EWS may live on its own host (`ews_url`) and then uses the
/// same timeout and trust settings as the ActiveSync server (`url`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exchange {
    /// The Exchange (ActiveSync) server, e.g. `https://mail.corp.example`. Required.
    pub url: String,
    /// A separate EWS host, e.g. `https://ews.corp.example`; `url` when absent.
    pub ews_url: Option<String>,
    /// Extra trust anchors (PEM) for a private-CA or self-signed Exchange certificate.
    pub trust_store: Option<PathBuf>,
    /// `ignoreSslErrorsWithExch`: do not verify Exchange's certificate. Insecure; logged.
    pub ignore_ssl_errors: bool,
    /// How long to wait for Exchange's response headers (not for a streaming body).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to wait for the answer to an ActiveSync `Ping` or `Sync`, which Exchange holds
    /// back until the mailbox changes or the device's heartbeat (up to 59 minutes) ends.
    #[serde(with = "humantime_serde")]
    pub hanging_timeout: Duration,
    /// Connection pool to Exchange.
    pub pool: PoolSettings,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            url: String::new(),
            ews_url: None,
            trust_store: None,
            ignore_ssl_errors: false,
            timeout: Duration::from_secs(120),
            hanging_timeout: ews_proxy_core::proxy::DEFAULT_HANGING_TIMEOUT,
            pool: PoolSettings::default(),
        }
    }
}

/// `[ews]`: EWS proxying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ews {
    /// `enable.boxer.ens.ews.proxy`: serve `/EWS` (any case). Off by default: `/EWS` gets 404.
    pub enable_proxy: bool,
    /// `remove.unsupported.auth.for.ews`: remove `NTLM` challenges from EWS responses, and
    /// `Negotiate` when the client presented no valid certificate.
    pub remove_unsupported_auth: bool,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_body_size: usize,
    /// Refuse (400) a POST whose body is not a SOAP request.
    pub require_soap: bool,
    /// How much of a body is read to find the EWS operation, in bytes.
    pub sniff_limit: usize,
}

impl Default for Ews {
    fn default() -> Self {
        Ews {
            enable_proxy: false,
            remove_unsupported_auth: false,
            max_body_size: 16 * 1024 * 1024,
            require_soap: false,
            sniff_limit: 64 * 1024,
        }
    }
}

/// `[limits]`: what one device may hold at the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests one device (EWS: `compliance.device_id_header`; ActiveSync: `DeviceId`) may
    /// have in flight at once, open `GetStreamingEvents` and `Ping` responses included; beyond
    /// it `503` with `ErrorServerBusy` and `Retry-After`. `0` (the default): no cap. Exchange's
    /// own throttling policy allows 27 concurrent EWS requests per user.
    pub max_requests_per_device: u32,
}

/// `[activesync]`: ActiveSync proxying to `exchange.url`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActiveSync {
    /// Serve `/Microsoft-Server-ActiveSync` (any case).
    pub enable_proxy: bool,
    /// `remove.unsupported.auth.for.ews` for ActiveSync: remove every `NTLM` challenge from
    /// ActiveSync responses, and the `Negotiate` challenge when the client has no valid
    /// certificate.
    pub remove_unsupported_auth: bool,
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,ews_proxy_core=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("{}", describe(.0))]
    Load(#[from] Box<figment::Error>),
    /// The properties file could not be imported.
    #[error(transparent)]
    Properties(#[from] crate::properties::PropertiesError),
    /// A value has the right type but cannot work.
    #[error("{key} (from {origin}): {message}")]
    Invalid {
        /// The key, e.g. `exchange.url`.
        key: &'static str,
        /// Where the value came from: a file, the environment, or the defaults.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// A loaded configuration, with the warnings seen while loading it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth telling the operator that do not stop the gateway (unknown properties…).
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads and validates from the TOML file, the optional properties file and the environment.
    pub fn load(toml: Option<&Path>, properties: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_from(toml, properties, Env::prefixed("SEG_").split("__"))
    }

    /// [`Config::load`] with the environment provider given, for tests and embedders.
    pub fn load_from(
        toml: Option<&Path>,
        properties: Option<&Path>,
        env: Env,
    ) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = toml {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    origin: "the command line".into(),
                    message: format!("{} is not a readable file", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut warnings = Vec::new();
        if let Some(path) = properties {
            let file = PropertiesFile::read(path)?;
            warnings.extend(file.warnings().iter().cloned());
            figment = figment.merge(file);
        }
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate(&figment)?;
        if config.auth.client_cert == ClientCertMode::Off && config.auth.client_ca.is_some() {
            warnings.push(
                "auth.client_ca is set but auth.client_cert is off: no client certificate is asked for"
                    .into(),
            );
        }
        if config.exchange.ignore_ssl_errors {
            warnings.push(
                "exchange.ignore_ssl_errors is on: Exchange's certificate is not verified".into(),
            );
        }
        Ok(Loaded { config, warnings })
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            key,
            origin: origin(figment.find_metadata(key)),
            message,
        };
        if self.exchange.url.is_empty() {
            return Err(invalid(
                "exchange.url",
                "is required, e.g. https://mail.corp.example".into(),
            ));
        }
        check_url(&self.exchange.url).map_err(|m| invalid("exchange.url", m))?;
        if let Some(url) = &self.exchange.ews_url {
            check_url(url).map_err(|m| invalid("exchange.ews_url", m))?;
        }
        if self.listen.https.is_none() && self.listen.http.is_none() {
            return Err(invalid(
                "listen",
                "set listen.https or listen.http (or both)".into(),
            ));
        }
        if self.listen.https.is_some() && self.tls.is_none() {
            return Err(invalid("listen.https", "needs [tls] cert and key".into()));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    return Err(invalid(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if let Some(path) = self.exchange.trust_store.as_ref().filter(|p| !p.is_file()) {
            return Err(invalid(
                "exchange.trust_store",
                format!("{} is not a readable file", path.display()),
            ));
        }
        self.validate_auth(&invalid)?;
        if self.exchange.timeout.is_zero() {
            return Err(invalid("exchange.timeout", "must be more than zero".into()));
        }
        let keepalive = self.exchange.pool.tcp_keepalive;
        if !keepalive.is_zero() && keepalive < Duration::from_secs(1) {
            return Err(invalid(
                "exchange.pool.tcp_keepalive",
                "must be 0s (off) or at least 1s: TCP counts keep-alive in whole seconds".into(),
            ));
        }
        if self.exchange.hanging_timeout < self.exchange.timeout {
            return Err(invalid(
                "exchange.hanging_timeout",
                "must be at least exchange.timeout: a Ping or Sync waits for as long as the \
                 device's heartbeat"
                    .into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1".into(),
            ));
        }
        if let Some(compliance) = &self.compliance {
            check_url(&compliance.uem_url).map_err(|m| invalid("compliance.uem_url", m))?;
            if http::HeaderName::from_bytes(compliance.device_id_header.as_bytes()).is_err() {
                return Err(invalid(
                    "compliance.device_id_header",
                    "is not a header name".into(),
                ));
            }
            if compliance.delta_sync_interval.is_zero() || compliance.full_sync_interval.is_zero() {
                return Err(invalid(
                    "compliance.delta_sync_interval",
                    "sync intervals must be more than zero".into(),
                ));
            }
            if compliance.uem_page_size == 0 {
                return Err(invalid(
                    "compliance.uem_page_size",
                    "must be at least 1".into(),
                ));
            }
            if let Some(path) = compliance.uem_trust_store.as_ref().filter(|p| !p.is_file()) {
                return Err(invalid(
                    "compliance.uem_trust_store",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            validate_redis(compliance, &invalid)?;
        }
        if let Some(url) = &self.ens.callback_url {
            check_url(url).map_err(|m| invalid("ens.callback_url", m))?;
        }
        self.validate_audit(&invalid)?;
        if self.admin.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "admin.token",
                "must be at least 16 characters".into(),
            ));
        }
        self.validate_operators(&invalid)?;
        if self.ews.sniff_limit < 512 {
            return Err(invalid(
                "ews.sniff_limit",
                "must be at least 512 bytes".into(),
            ));
        }
        Ok(())
    }

    /// `admin.operators`: named, each name once (and not the admin token's), tokens of at least
    /// 16 characters and none shared; `admin.session_ttl` of a minute or more.
    fn validate_operators(
        &self,
        invalid: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        if let Some(token) = &self.admin.token {
            tokens.insert(token.as_str());
        }
        for operator in &self.admin.operators {
            let name = operator.name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(invalid(
                    "admin.operators",
                    "every operator needs a name of 1 to 64 characters".into(),
                ));
            }
            if name == "admin-token" || !names.insert(name) {
                return Err(invalid(
                    "admin.operators",
                    format!("the operator name {name:?} is taken"),
                ));
            }
            if operator.token.len() < 16 {
                return Err(invalid(
                    "admin.operators",
                    format!("the token of {name:?} must be at least 16 characters"),
                ));
            }
            if !tokens.insert(operator.token.as_str()) {
                return Err(invalid(
                    "admin.operators",
                    format!("the token of {name:?} is also another's"),
                ));
            }
        }
        if self.admin.session_ttl < Duration::from_secs(60) {
            return Err(invalid("admin.session_ttl", "must be at least 1m".into()));
        }
        Ok(())
    }

    /// `[audit]`: needs `[compliance]` (else there is nothing to record), a directory for its
    /// file, a queue and a retention.
    fn validate_audit(
        &self,
        invalid: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        if self.compliance.is_none() {
            return Err(invalid(
                "audit",
                "needs [compliance]: without it there is nothing to audit".into(),
            ));
        }
        let dir = match audit.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if audit.path.as_os_str().is_empty() || !dir.is_dir() {
            return Err(invalid(
                "audit.path",
                format!("{}: its directory does not exist", audit.path.display()),
            ));
        }
        if audit.queue == 0 {
            return Err(invalid("audit.queue", "must be at least 1".into()));
        }
        if audit.retention.is_zero() {
            return Err(invalid("audit.retention", "must be more than zero".into()));
        }
        if audit.purge_interval.is_zero() {
            return Err(invalid(
                "audit.purge_interval",
                "must be more than zero".into(),
            ));
        }
        Ok(())
    }

    /// `[auth]`: the client CA and CRL files must load, and a client certificate mode other
    /// than `off` needs a CA and a TLS listener.
    fn validate_auth(
        &self,
        invalid: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.modes.is_empty() {
            return Err(invalid(
                "auth.modes",
                "is empty: name at least one of basic, oauth, cba-kcd".into(),
            ));
        }
        if auth.cba_kcd() {
            self.validate_kcd(invalid)?;
        }
        if let Some(oauth) = &auth.oauth {
            if !auth.modes.contains(&AuthMode::Oauth) {
                return Err(invalid(
                    "auth.oauth",
                    "is set but auth.modes has no oauth: bearer tokens are refused anyway".into(),
                ));
            }
            if oauth.jwks.is_none() && oauth.public_key.is_none() {
                return Err(invalid(
                    "auth.oauth",
                    "needs auth.oauth.jwks or auth.oauth.public_key to verify tokens with".into(),
                ));
            }
            oauth.keys().map_err(|error| {
                invalid(
                    error.key,
                    format!("{}: {}", error.path.display(), error_chain(&error.source)),
                )
            })?;
        }
        if auth.client_cert == ClientCertMode::Off {
            return Ok(());
        }
        if self.listen.https.is_none() {
            return Err(invalid(
                "auth.client_cert",
                "asks for client certificates, which needs listen.https".into(),
            ));
        }
        let Some(ca) = &auth.client_ca else {
            return Err(invalid(
                "auth.client_ca",
                "is required when auth.client_cert is optional or required".into(),
            ));
        };
        ClientAuth::load(auth.client_cert, ca, &[])
            .map_err(|error| invalid("auth.client_ca", error_chain(&error)))?;
        for crl in &auth.crl {
            ClientAuth::load(auth.client_cert, ca, std::slice::from_ref(crl))
                .map_err(|error| invalid("auth.crl", error_chain(&error)))?;
        }
        Ok(())
    }

    /// `cba-kcd`: client certificates asked for, and `[auth.kcd]` with a readable krb5.conf
    /// naming a realm and a keytab the gateway can log in with (the CA is checked with the
    /// other client certificate settings).
    fn validate_kcd(
        &self,
        invalid: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.auth.client_cert == ClientCertMode::Off {
            return Err(invalid(
                "auth.modes",
                "cba-kcd needs auth.client_cert optional or required".into(),
            ));
        }
        let Some(kcd) = &self.auth.kcd else {
            return Err(invalid(
                "auth.kcd",
                "is required when auth.modes contains cba-kcd".into(),
            ));
        };
        if kcd.max_in_flight_per_kdc == 0 {
            return Err(invalid(
                "auth.kcd.max_in_flight_per_kdc",
                "must be at least 1".into(),
            ));
        }
        if kcd.udp_timeout.is_zero() {
            return Err(invalid(
                "auth.kcd.udp_timeout",
                "must be more than zero".into(),
            ));
        }
        let conf = kcd_client::krb5_conf::Krb5Conf::read(&kcd.krb5_conf)
            .map_err(|error| invalid("auth.kcd.krb5_conf", error_chain(&error)))?;
        if conf.realms.is_empty() {
            return Err(invalid(
                "auth.kcd.krb5_conf",
                format!(
                    "{}: no realm in [realms] names a kdc",
                    kcd.krb5_conf.display()
                ),
            ));
        }
        kcd_client::keytab::Keytab::read(&kcd.keytab).map_err(|error| {
            invalid(
                "auth.kcd.keytab",
                format!("{}: {}", kcd.keytab.display(), error_chain(&error)),
            )
        })?;
        crate::kcd_client(kcd).map_err(|error| {
            invalid(
                "auth.kcd.service_principal",
                format!(
                    "{} with {} and {}: {}",
                    kcd.service_principal,
                    kcd.krb5_conf.display(),
                    kcd.keytab.display(),
                    error_chain(&error)
                ),
            )
        })?;
        if self.kcd_target_spn().is_none_or(|spn| spn.is_empty()) {
            return Err(invalid(
                "auth.kcd.target_spn",
                "is empty and the EWS URL names no host".into(),
            ));
        }
        if self.activesync.enable_proxy
            && self
                .kcd_activesync_target_spn()
                .is_none_or(|spn| spn.is_empty())
        {
            return Err(invalid(
                "auth.kcd.activesync_target_spn",
                "is empty and exchange.url names no host".into(),
            ));
        }
        if kcd.timeout.is_zero() {
            return Err(invalid("auth.kcd.timeout", "must be more than zero".into()));
        }
        Ok(())
    }

    /// The configuration as TOML, with every secret replaced by `"<redacted>"`, for
    /// `check-config`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let redact = |secret: &mut String| *secret = REDACTED.into();
        if let Some(compliance) = &mut shown.compliance {
            redact(&mut compliance.uem_tenant_code);
            redact(&mut compliance.uem_password);
            compliance.webhook_secret.as_mut().map(redact);
            if let Some(url) = compliance.redis_url.as_mut() {
                *url = redacted_redis_url(url);
            }
        }
        shown.admin.token.as_mut().map(redact);
        for operator in &mut shown.admin.operators {
            redact(&mut operator.token);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
    }
}

/// `[compliance]`'s Redis settings: `redis_url` required (and usable) with `backend = "redis"`,
/// and only then; a lock ttl the leader can renew in time.
fn validate_redis(
    compliance: &ComplianceConfig,
    invalid: &impl Fn(&'static str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match (compliance.backend, &compliance.redis_url) {
        (ComplianceBackend::Memory, _) if compliance.redis_not_ready_when_down => Err(invalid(
            "compliance.redis_not_ready_when_down",
            "is true, but compliance.backend is memory: there is no Redis to wait for".into(),
        )),
        (ComplianceBackend::Memory, None) => Ok(()),
        (ComplianceBackend::Memory, Some(_)) => Err(invalid(
            "compliance.backend",
            "is memory, but compliance.redis_url is set: say backend = \"redis\" to share the view"
                .into(),
        )),
        (ComplianceBackend::Redis, None) => Err(invalid(
            "compliance.redis_url",
            "is required with backend = \"redis\"".into(),
        )),
        (ComplianceBackend::Redis, Some(url)) => {
            let mut settings = compliance_redis::RedisSettings::new(url.as_str());
            settings.lock_ttl = compliance.redis_lock_ttl;
            settings.trust_store = compliance.redis_trust_store.clone();
            match settings.validate() {
                Err(compliance_redis::RedisError::LockTtl(_)) => Err(invalid(
                    "compliance.redis_lock_ttl",
                    "must be at least 300ms".into(),
                )),
                Err(
                    error @ (compliance_redis::RedisError::TrustStore { .. }
                    | compliance_redis::RedisError::TrustStoreWithoutTls),
                ) => Err(invalid("compliance.redis_trust_store", error_chain(&error))),
                Err(error) => Err(invalid(
                    "compliance.redis_url",
                    format!("{}: {}", settings.redacted_url(), error_chain(&error)),
                )),
                Ok(()) if compliance.redis_key_prefix.is_empty() => Err(invalid(
                    "compliance.redis_key_prefix",
                    "must not be empty".into(),
                )),
                Ok(()) if compliance.redis_full_sync_batch == 0 => Err(invalid(
                    "compliance.redis_full_sync_batch",
                    "must be at least 1".into(),
                )),
                Ok(()) => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn no_env() -> Env {
        Env::prefixed("SEG_TEST_NOTHING_")
    }

    #[test]
    fn hand_written_toml_with_the_documented_keys_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(&dir, "ca.pem", "");
        let toml = write(
            &dir,
            "seg.toml",
            &format!(
                r#"
                [listen]
                http = "127.0.0.1:8080"
                [exchange]
                url = "https://mail.corp.example"
                ews_url = "https://ews.corp.example"
                trust_store = "{}"
                ignore_ssl_errors = false
                timeout = "90s"
                [ews]
                enable_proxy = true
                remove_unsupported_auth = true
                "#,
                ca.display()
            ),
        );
        let loaded = Config::load_from(Some(&toml), None, no_env()).unwrap();
        let config = loaded.config;
        assert_eq!(config.listen.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            config.exchange.ews_url.as_deref(),
            Some("https://ews.corp.example")
        );
        assert_eq!(config.exchange.timeout, Duration::from_secs(90));
        assert!(config.ews.enable_proxy && config.ews.remove_unsupported_auth);
        assert!(loaded.warnings.is_empty());
    }

    /// A TOML file with TLS on `listen.https` and `auth_section` as `[auth]`, next to a
    /// generated test PKI (`ca.pem`, `server.pem`, `server.key`) in `dir`.
    fn with_auth(dir: &tempfile::TempDir, auth_section: &str) -> PathBuf {
        let pki = seg_testbed::pki::TestPki::generate(dir.path()).unwrap();
        let files = pki.files().unwrap();
        write(
            dir,
            "seg.toml",
            &format!(
                "[listen]\nhttps = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
                 [exchange]\nurl = \"https://mail.corp.example\"\n[auth]\n{auth_section}\n",
                files.server_cert.display(),
                files.server_key.display()
            ),
        )
    }

    #[test]
    fn client_certificate_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let pki = seg_testbed::pki::TestPki::in_memory(&[]).unwrap();
        let crl = dir.path().join("revoked.crl");
        std::fs::write(&crl, pki.crl_der(&[7]).unwrap()).unwrap();
        let toml = with_auth(
            &dir,
            &format!(
                "client_cert = \"required\"\nclient_ca = \"{}\"\ncrl = [\"{}\"]\n\
                 upn_fallback = \"rfc822\"",
                dir.path().join("ca.pem").display(),
                crl.display()
            ),
        );
        let auth = Config::load_from(Some(&toml), None, no_env())
            .unwrap()
            .config
            .auth;
        assert_eq!(auth.client_cert, ClientCertMode::Required);
        assert_eq!(auth.client_ca, Some(dir.path().join("ca.pem")));
        assert_eq!(auth.crl, vec![crl]);
        assert_eq!(auth.upn_fallback, UpnFallback::Rfc822);
    }

    #[test]
    fn client_certificates_are_off_by_default() {
        let auth = Config::default().auth;
        assert_eq!(auth.client_cert, ClientCertMode::Off);
        assert_eq!(auth.upn_fallback, UpnFallback::None);
    }

    #[test]
    fn client_certificates_without_a_ca_name_the_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let toml = with_auth(&dir, "client_cert = \"optional\"");
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.client_ca "), "{error}");
    }

    #[test]
    fn unusable_client_ca_or_crl_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(&dir, "garbage.pem", "not a certificate\n");
        let cases = [
            (
                format!("client_ca = \"{}\"", garbage.display()),
                "auth.client_ca",
            ),
            (
                format!(
                    "client_ca = \"{}\"",
                    dir.path().join("missing.pem").display()
                ),
                "auth.client_ca",
            ),
            (
                format!(
                    "client_ca = \"{}\"\ncrl = [\"{}\"]",
                    dir.path().join("ca.pem").display(),
                    garbage.display()
                ),
                "auth.crl",
            ),
        ];
        for (keys, key) in cases {
            let toml = with_auth(&dir, &format!("client_cert = \"optional\"\n{keys}"));
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(key), "{keys}: {error}");
            assert!(error.contains("seg.toml"), "{keys}: {error}");
            let file = if keys.contains("missing") {
                "missing.pem"
            } else {
                "garbage.pem"
            };
            assert!(error.contains(file), "{keys}: {error}");
        }
    }

    #[test]
    fn client_certificates_need_the_tls_listener() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:0\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
             [auth]\nclient_cert = \"optional\"\nclient_ca = \"/nonexistent/ca.pem\"\n",
        );
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.client_cert "), "{error}");
    }

    #[test]
    fn auth_modes_are_basic_and_oauth_by_default() {
        let auth = Config::default().auth;
        assert_eq!(auth.modes, vec![AuthMode::Basic, AuthMode::Oauth]);
        assert!(!auth.cba_kcd() && auth.kcd.is_none());
    }

    #[test]
    fn cba_kcd_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let krb5_conf = write(
            &dir,
            "krb5.conf",
            "[libdefaults]\n default_realm = TEST.LOCAL\n[realms]\n TEST.LOCAL = {\n  kdc = 127.0.0.1:88\n }\n",
        );
        let no_realm = write(&dir, "empty-krb5.conf", "[libdefaults]\n");
        let garbage = write(&dir, "garbage.keytab", "not a keytab");
        let client_cert = format!(
            "client_cert = \"optional\"\nclient_ca = \"{}\"\n",
            dir.path().join("ca.pem").display()
        );
        let kcd = |conf: &Path, keytab: &Path| {
            format!(
                "[auth.kcd]\nkrb5_conf = \"{}\"\nkeytab = \"{}\"\nservice_principal = \"HTTP/seg.test.local\"\n",
                conf.display(),
                keytab.display()
            )
        };
        let modes = "modes = [\"basic\", \"cba-kcd\"]\n";
        let cases = [
            (
                format!("{modes}{}", kcd(&krb5_conf, &garbage)),
                "auth.modes",
                "cba-kcd",
            ),
            (format!("{modes}{client_cert}"), "auth.kcd", "cba-kcd"),
            (
                format!(
                    "{modes}{client_cert}{}",
                    kcd(&dir.path().join("missing.conf"), &garbage)
                ),
                "auth.kcd.krb5_conf",
                "missing.conf",
            ),
            (
                format!("{modes}{client_cert}{}", kcd(&no_realm, &garbage)),
                "auth.kcd.krb5_conf",
                "empty-krb5.conf",
            ),
            (
                format!("{modes}{client_cert}{}", kcd(&krb5_conf, &garbage)),
                "auth.kcd.keytab",
                "garbage.keytab",
            ),
        ];
        for (section, key, names) in cases {
            let toml = with_auth(&dir, &section);
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&format!("{key} ")), "{section}: {error}");
            // A missing table has no file of its own; the others name the file that set them.
            if key != "auth.kcd" {
                assert!(error.contains("seg.toml"), "{section}: {error}");
            }
            assert!(error.contains(names), "{section}: {error}");
        }
    }

    /// `[auth]` with `cba-kcd` and `[auth.kcd]` whose files do not exist, plus `extra` keys.
    fn kcd_section(dir: &tempfile::TempDir, extra: &str) -> String {
        format!(
            "modes = [\"basic\", \"cba-kcd\"]\nclient_cert = \"optional\"\nclient_ca = \"{}\"\n\
             [auth.kcd]\nkrb5_conf = \"/nonexistent/krb5.conf\"\nkeytab = \"/nonexistent/seg.keytab\"\n\
             service_principal = \"HTTP/seg.test.local\"\n{extra}",
            dir.path().join("ca.pem").display()
        )
    }

    #[test]
    fn kcd_tuning_keys_default_to_the_client_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:0\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
             [auth.kcd]\nkrb5_conf = \"/etc/krb5.conf\"\nkeytab = \"/etc/seg.keytab\"\n\
             service_principal = \"HTTP/seg.test.local\"\n",
        );
        let config = Config::load_from(Some(&toml), None, no_env()).unwrap();
        let kcd = config.config.auth.kcd.unwrap();
        assert_eq!(kcd.max_in_flight_per_kdc, kcd_client::DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(kcd.udp_timeout, kcd_client::DEFAULT_UDP_TIMEOUT);
        assert_eq!(kcd.udp_timeout, Duration::from_secs(1));
        assert!(!kcd.mutual_auth);
    }

    #[test]
    fn kcd_tuning_keys_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:0\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
             [auth.kcd]\nkrb5_conf = \"/etc/krb5.conf\"\nkeytab = \"/etc/seg.keytab\"\n\
             service_principal = \"HTTP/seg.test.local\"\nmax_in_flight_per_kdc = 4\n\
             udp_timeout = \"250ms\"\nmutual_auth = true\n",
        );
        let config = Config::load_from(Some(&toml), None, no_env()).unwrap();
        let kcd = config.config.auth.kcd.unwrap();
        assert_eq!(kcd.max_in_flight_per_kdc, 4);
        assert_eq!(kcd.udp_timeout, Duration::from_millis(250));
        assert!(kcd.mutual_auth);
    }

    #[test]
    fn kcd_tuning_keys_out_of_range_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "max_in_flight_per_kdc = 0\n",
                "auth.kcd.max_in_flight_per_kdc",
            ),
            ("udp_timeout = \"0s\"\n", "auth.kcd.udp_timeout"),
        ];
        for (extra, key) in cases {
            let toml = with_auth(&dir, &kcd_section(&dir, extra));
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&format!("{key} ")), "{extra}: {error}");
            assert!(error.contains("seg.toml"), "{extra}: {error}");
        }
    }

    #[test]
    fn kcd_mutual_auth_of_the_wrong_type_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let toml = with_auth(&dir, &kcd_section(&dir, "mutual_auth = \"yes\"\n"));
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("mutual_auth"), "{error}");
        assert!(error.contains("seg.toml"), "{error}");
    }

    #[test]
    fn empty_auth_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let toml = with_auth(&dir, "modes = []\n");
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.modes "), "{error}");
        assert!(error.contains("seg.toml"), "{error}");
    }

    #[test]
    fn oauth_key_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = write(&dir, "issuer.jwks", "{\"keys\": 42}");
        let toml = with_auth(
            &dir,
            &format!("[auth.oauth]\njwks = \"{}\"\n", jwks.display()),
        );
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.oauth.jwks "), "{error}");
        assert!(error.contains("issuer.jwks"), "{error}");
        assert!(error.contains("json web key set"), "{error}");

        let toml = with_auth(
            &dir,
            "[auth.oauth]\npublic_key = \"/nonexistent/issuer.pem\"\n",
        );
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.oauth.public_key "), "{error}");
        assert!(
            error.contains("/nonexistent/issuer.pem: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn kcd_target_spn_defaults_to_the_ews_host() {
        let mut config = Config::default();
        config.exchange.url = "https://mail.corp.example".into();
        config.exchange.ews_url = Some("https://ews.corp.example:8443".into());
        config.auth.kcd = Some(Kcd {
            krb5_conf: "/etc/krb5.conf".into(),
            keytab: "/etc/seg.keytab".into(),
            service_principal: "HTTP/seg.corp.example".into(),
            target_spn: None,
            activesync_target_spn: None,
            channel_binding: false,
            timeout: default_kcd_timeout(),
            max_in_flight_per_kdc: default_kcd_max_in_flight_per_kdc(),
            udp_timeout: default_kcd_udp_timeout(),
            mutual_auth: false,
        });
        assert_eq!(
            config.kcd_target_spn().as_deref(),
            Some("HTTP/ews.corp.example")
        );
        let printed = config.to_redacted_toml();
        assert!(printed.contains("[auth.kcd]"), "{printed}");
        assert!(printed.contains("timeout = \"10s\""), "{printed}");
    }

    #[test]
    fn kcd_activesync_target_spn_is_the_activesync_host_s_unless_ews_shares_it() {
        let mut config = Config::default();
        config.exchange.url = "https://mail.corp.example".into();
        let mut kcd = Kcd::new("/etc/krb5.conf", "/etc/seg.keytab", "HTTP/seg.corp.example");
        kcd.target_spn = Some("HTTP/exchange-farm.corp.example".into());
        config.auth.kcd = Some(kcd);
        // One host for both: the one SPN configured for it.
        assert_eq!(
            config.kcd_activesync_target_spn().as_deref(),
            Some("HTTP/exchange-farm.corp.example")
        );
        // EWS on a host of its own: target_spn is EWS's, ActiveSync keeps exchange.url's host.
        config.exchange.ews_url = Some("https://ews.corp.example".into());
        assert_eq!(
            config.kcd_activesync_target_spn().as_deref(),
            Some("HTTP/mail.corp.example")
        );
        if let Some(kcd) = config.auth.kcd.as_mut() {
            kcd.activesync_target_spn = Some("HTTP/eas.corp.example".into());
        }
        assert_eq!(
            config.kcd_activesync_target_spn().as_deref(),
            Some("HTTP/eas.corp.example")
        );
    }

    #[test]
    fn admin_operators_are_validated_and_their_tokens_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"https://mail\"\n\
             [admin]\nsession_ttl = \"30m\"\n\
             [[admin.operators]]\nname = \"carol\"\ntoken = \"carols-own-token-0001\"\n",
        );
        let loaded = Config::load_from(Some(&toml), None, no_env()).unwrap();
        let config = &loaded.config;
        assert_eq!(config.admin.session_ttl, Duration::from_secs(1800));
        assert_eq!(config.admin.operators[0].name, "carol");
        assert!(!config.admin.secure_cookies);
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("carols-own-token"), "{printed}");
        assert!(!format!("{config:?}").contains("carols-own-token"));

        let short = toml_with(&dir, "name = \"dave\"\ntoken = \"short\"");
        let error = Config::load_from(Some(&short), None, no_env()).unwrap_err();
        assert!(error.to_string().contains("admin.operators"), "{error}");
        let taken = toml_with(
            &dir,
            "name = \"admin-token\"\ntoken = \"a-long-enough-token-01\"",
        );
        assert!(Config::load_from(Some(&taken), None, no_env()).is_err());
    }

    /// A configuration with one operator of `fields`.
    fn toml_with(dir: &tempfile::TempDir, fields: &str) -> PathBuf {
        write(
            dir,
            "operator.toml",
            &format!(
                "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"https://mail\"\n\
                 [[admin.operators]]\n{fields}\n"
            ),
        )
    }

    #[test]
    fn ews_proxy_is_off_by_default() {
        assert!(!Config::default().ews.enable_proxy);
    }

    #[test]
    fn invalid_value_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"ftp://mail\"\n",
        );
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("exchange.url"), "{error}");
        assert!(error.contains("seg.toml"), "{error}");
    }

    #[test]
    fn heartbeat_timeout_and_keepalive_out_of_range_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        for (exchange, key) in [
            (
                "timeout = \"120s\"\nhanging_timeout = \"60s\"",
                "exchange.hanging_timeout",
            ),
            (
                "[exchange.pool]\ntcp_keepalive = \"500ms\"",
                "exchange.pool.tcp_keepalive",
            ),
        ] {
            let toml = write(
                &dir,
                "seg.toml",
                &format!(
                    "[listen]\nhttp = \"127.0.0.1:1\"\n[ews]\nenable_proxy = true\n[exchange]\nurl = \"https://mail\"\n{exchange}\n"
                ),
            );
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{error}");
            assert!(error.contains("seg.toml"), "{error}");
        }
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(&dir, "bad.toml", "[ews]\nenable_proxy = \"maybe\"\n");
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("enable_proxy"), "{error}");
        assert!(error.contains("bad.toml"), "{error}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(&dir, "typo.toml", "[exchange]\nulr = \"https://x\"\n");
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("ulr"), "{error}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "seg.toml",
                "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"https://a.example\"\n",
            )?;
            jail.set_env("SEG_EXCHANGE__URL", "https://b.example");
            jail.set_env("SEG_EWS__ENABLE_PROXY", "true");
            let loaded =
                Config::load(Some(Path::new("seg.toml")), None).map_err(|e| e.to_string())?;
            assert_eq!(loaded.config.exchange.url, "https://b.example");
            assert!(loaded.config.ews.enable_proxy);
            Ok(())
        });
    }

    /// A TOML file with a plain listener, `[compliance]` when `with_compliance`, and `audit`.
    fn with_audit(dir: &tempfile::TempDir, with_compliance: bool, audit: &str) -> PathBuf {
        let compliance = if with_compliance {
            "[compliance]\nuem_url = \"https://uem.corp.example\"\nuem_tenant_code = \"t\"\n\
             uem_user = \"u\"\nuem_password = \"p\"\n"
        } else {
            ""
        };
        write(
            dir,
            "seg.toml",
            &format!(
                "node = \"seg-7\"\n[listen]\nhttp = \"127.0.0.1:1\"\n\
                 [exchange]\nurl = \"https://mail.corp.example\"\n{compliance}[audit]\n{audit}\n"
            ),
        )
    }

    #[test]
    fn the_audit_section_loads_with_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let toml = with_audit(&dir, true, &format!("path = \"{}\"", path.display()));
        let config = Config::load_from(Some(&toml), None, no_env())
            .unwrap()
            .config;
        let audit = config.audit.as_ref().unwrap();
        assert_eq!(audit, &audit_trail::AuditSettings::new(path));
        assert_eq!(audit.retention, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(audit.queue, 10_000);
        assert_eq!(config.node_name(), "seg-7");
        assert!(!Config::default().node_name().is_empty());
    }

    #[test]
    fn unusable_audit_settings_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let cases = [
            (false, format!("path = \"{}\"", path.display()), "audit "),
            (
                true,
                "path = \"/nonexistent/dir/audit.redb\"".to_owned(),
                "audit.path ",
            ),
            (
                true,
                format!("path = \"{}\"\nqueue = 0", path.display()),
                "audit.queue ",
            ),
            (
                true,
                format!("path = \"{}\"\nretention = \"0s\"", path.display()),
                "audit.retention ",
            ),
        ];
        for (with_compliance, audit, key) in cases {
            let toml = with_audit(&dir, with_compliance, &audit);
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(key), "{audit}: {error}");
        }
        let toml = with_audit(
            &dir,
            true,
            &format!("path = \"{}\"\nretention = \"soon\"", path.display()),
        );
        let error = Config::load_from(Some(&toml), None, no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("retention"), "{error}");
    }

    fn with_compliance_backend(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
        write(
            dir,
            "seg.toml",
            &format!(
                "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
                 [compliance]\nuem_url = \"https://uem.corp.example\"\nuem_tenant_code = \"t\"\n\
                 uem_user = \"u\"\nuem_password = \"p\"\n{extra}\n"
            ),
        )
    }

    #[test]
    fn the_redis_backend_loads_and_unusable_settings_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let toml = with_compliance_backend(
            &dir,
            "backend = \"redis\"\nredis_url = \"redis://seg:s3cret@10.0.0.5:6379/\"\nredis_lock_ttl = \"2s\"",
        );
        let loaded = Config::load_from(Some(&toml), None, no_env()).unwrap();
        let compliance = loaded.config.compliance.as_ref().unwrap();
        assert_eq!(compliance.backend, ComplianceBackend::Redis);
        assert_eq!(compliance.redis_lock_ttl, Duration::from_secs(2));
        assert_eq!(compliance.redis_key_prefix, "seg:compliance");
        assert_eq!(compliance.redis_full_sync_batch, 5_000);
        assert!(
            !compliance.redis_not_ready_when_down,
            "ready while redis is down by default"
        );
        let default = with_compliance_backend(&dir, "");
        let default = Config::load_from(Some(&default), None, no_env()).unwrap();
        assert_eq!(
            default.config.compliance.unwrap().backend,
            ComplianceBackend::Memory
        );
        let cases = [
            ("backend = \"redis\"", "compliance.redis_url "),
            ("redis_url = \"redis://127.0.0.1/\"", "compliance.backend "),
            (
                "backend = \"redis\"\nredis_url = \"http://127.0.0.1/\"",
                "compliance.redis_url ",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://127.0.0.1/\"\nredis_lock_ttl = \"100ms\"",
                "compliance.redis_lock_ttl ",
            ),
            ("backend = \"disk\"", "compliance.backend"),
            (
                "backend = \"redis\"\nredis_url = \"redis://127.0.0.1/\"\nredis_full_sync_batch = 0",
                "compliance.redis_full_sync_batch ",
            ),
            (
                "redis_not_ready_when_down = true",
                "compliance.redis_not_ready_when_down ",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://127.0.0.1/\"\nredis_trust_store = \"/etc/ssl/redis-ca.pem\"",
                "compliance.redis_trust_store ",
            ),
        ];
        for (extra, key) in cases {
            let toml = with_compliance_backend(&dir, extra);
            let error = Config::load_from(Some(&toml), None, no_env())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(key), "{extra}: {error}");
        }
    }

    #[test]
    fn debug_and_check_config_output_hide_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "seg.toml",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
             [compliance]\nuem_url = \"https://uem.corp.example\"\n\
             uem_tenant_code = \"tenant-code-S3CR3T\"\nuem_user = \"api-user\"\n\
             uem_password = \"uem-password-S3CR3T\"\nwebhook_secret = \"webhook-S3CR3T\"\n\
             backend = \"redis\"\nredis_url = \"redis://seg:redis-password-S3CR3T@10.0.0.5:6379/\"\n\
             [admin]\ntoken = \"admin-token-S3CR3T-0001\"\n\
             [[admin.operators]]\nname = \"carol\"\ntoken = \"operator-token-S3CR3T-01\"\n",
        );
        let config = Config::load_from(Some(&toml), None, no_env())
            .unwrap()
            .config;
        let compliance = config.compliance.as_ref().unwrap();
        assert_eq!(compliance.uem_password, "uem-password-S3CR3T", "loaded");

        let whole = [
            ("Debug", format!("{config:?}")),
            ("Debug, pretty", format!("{config:#?}")),
            ("check-config", config.to_redacted_toml()),
        ];
        for (what, shown) in &whole {
            assert!(!shown.contains("S3CR3T"), "{what} shows a secret:\n{shown}");
            // What is not secret is still there, and the secrets' places are marked.
            for kept in ["api-user", "<redacted>", "seg:***@10.0.0.5:6379", "carol"] {
                assert!(shown.contains(kept), "{what} lacks {kept}:\n{shown}");
            }
        }
        for (what, shown) in [
            ("Debug of [compliance]", format!("{compliance:?}")),
            ("Debug of [admin]", format!("{:?}", config.admin)),
        ] {
            assert!(!shown.contains("S3CR3T"), "{what} shows a secret:\n{shown}");
            assert!(shown.contains("<redacted>"), "{what}:\n{shown}");
        }
    }
}
