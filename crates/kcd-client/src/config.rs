//! The client's configuration: plain data, as an operator enters it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::transport::TransportMode;

/// A realm and its KDCs: what SEG administrators enter as "domain + domain controller".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmConfig {
    /// The realm (`CORP.EXAMPLE`).
    pub realm: String,
    /// Its KDCs as `host` or `host:port` (port 88 by default), tried in order; `tcp/host:port`
    /// (as MIT's krb5.conf writes it) is reached over TCP only, `udp/host:port` as without
    /// the prefix.
    pub kdcs: Vec<String>,
}

impl RealmConfig {
    /// The realm of an Active Directory `domain` (its DNS name upper-cased, as AD names its
    /// realm) served by `kdcs`.
    pub fn new<K: Into<String>>(domain: &str, kdcs: impl IntoIterator<Item = K>) -> Self {
        Self {
            realm: domain.to_ascii_uppercase(),
            kdcs: kdcs.into_iter().map(Into::into).collect(),
        }
    }
}

/// How the gateway proves its identity to the KDC.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// An MIT keytab file holding the service principal's keys (read once, by
    /// [`crate::KcdClient::new`]).
    KeytabFile(PathBuf),
    /// The contents of such a file.
    KeytabBytes(Vec<u8>),
    /// The service account's password.
    Password(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        match self {
            Self::KeytabFile(path) => f.debug_tuple("KeytabFile").field(path).finish(),
            Self::KeytabBytes(_) => f.write_str("KeytabBytes(..)"),
            Self::Password(_) => f.write_str("Password(..)"),
        }
    }
}

/// What a [`crate::KcdClient`] needs. Build with [`KcdConfig::new`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcdConfig {
    /// The realms and their KDCs. The service principal's realm must be among them.
    pub realms: Vec<RealmConfig>,
    /// The gateway's principal: an SPN (`HTTP/seg.test.local`) or an account
    /// (`svc-seg@CORP.EXAMPLE`); without `@REALM`, the first configured realm.
    pub service_principal: String,
    /// The gateway's credentials.
    pub credentials: Credentials,
    /// UDP with TCP fallback (default) or TCP only.
    pub transport: TransportMode,
    /// How long one send to one KDC may take before the next is tried; also how long a
    /// request waits for one of the KDC's [`Self::max_in_flight_per_kdc`] slots.
    pub attempt_timeout: Duration,
    /// How long a UDP send waits for its reply before the request goes to the same KDC over
    /// TCP (at most [`Self::attempt_timeout`]); MIT's library waits 1 s too. A lost datagram
    /// costs this much.
    pub udp_timeout: Duration,
    /// How many requests may be in flight to one KDC at once; more wait for a slot. It keeps a
    /// burst (a thousand users logging in at once) from overflowing the KDC's UDP receive
    /// buffer, where datagrams are dropped silently. At least 1.
    pub max_in_flight_per_kdc: usize,
    /// The largest KDC reply accepted over TCP, in bytes.
    pub max_reply_size: usize,
    /// Requests longer than this go by TCP directly (MIT's `udp_preference_limit`).
    pub udp_preference_limit: usize,
    /// Tickets expiring within this are not reused; for tickets that live less than four
    /// times as long, a quarter of their lifetime is used instead.
    pub refresh_before_expiry: Duration,
    /// How many (user, target) tickets are kept at most before expired ones are dropped.
    pub max_cached_tickets: usize,
    /// A correction to the local clock in seconds, normally 0: the client learns the KDC's
    /// time by itself when the KDC reports skew.
    pub clock_offset_secs: i64,
    /// Whether the client adopts the KDC's time from a clock-skew error (its `stime`) and
    /// tries once more (default `true`). Off, a skew beyond the KDC's tolerance is
    /// [`crate::KcdError::ClockSkew`] naming it: for tests of that error against a real KDC,
    /// and for a site that wants its clock fixed rather than worked around.
    pub correct_clock_skew: bool,
}

impl KcdConfig {
    /// A configuration with defaults: UDP then TCP, 3 s per attempt and 1 s for a UDP reply,
    /// 32 requests in flight per KDC, replies up to 1 MiB, tickets renewed 5 minutes before
    /// expiry (or a quarter of their lifetime before, for shorter-lived tickets), 100 000
    /// cached tickets.
    pub fn new(
        realms: Vec<RealmConfig>,
        service_principal: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Self {
            realms,
            service_principal: service_principal.into(),
            credentials,
            transport: TransportMode::UdpThenTcp,
            attempt_timeout: Duration::from_secs(3),
            udp_timeout: crate::transport::DEFAULT_UDP_TIMEOUT,
            max_in_flight_per_kdc: crate::transport::DEFAULT_MAX_IN_FLIGHT,
            max_reply_size: 1 << 20,
            udp_preference_limit: 1465,
            refresh_before_expiry: Duration::from_secs(300),
            max_cached_tickets: 100_000,
            clock_offset_secs: 0,
            correct_clock_skew: true,
        }
    }
}
