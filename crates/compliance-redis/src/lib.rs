//! Many gateway nodes sharing one compliance view through Redis.
//!
//! Behind a load balancer, a change event from the console reaches one node, and so does an
//! administrator's override; a device blocked there must be blocked on every node at once.
//! This crate shares the [`Compliance`] view of every node through Redis, while each node
//! keeps deciding from its own in-memory view (no Redis round trip per request).
//!
//! # Design
//! - **The store.** Redis holds every device record (a hash, device id → JSON record), every
//!   override (a hash, `device:<ID>` / `user:<upn>` → `allow` | `block`), the time of the last
//!   full sync, a version counter, and the **change log**: a stream with one entry per change,
//!   its id `<version>-0`. A Lua script writes a change's hash fields, bumps the version and
//!   appends the entry atomically, so the log's order is the order of the store. The keys share
//!   one hash tag (`{seg:compliance}:records`, …), so that one script may touch them all on a
//!   Redis Cluster too.
//! - **Writing.** A change made on a node (a change event on its webhook, an override on its
//!   admin API, a sync it runs as leader) is applied to its view at once, then queued (through
//!   [`compliance_policy::replicate::Replicator`]) and written in order. While Redis is down the
//!   queue keeps them; they are written when it returns. A full sync writes every record and
//!   a log entry telling the other nodes to read the view again.
//! - **Reading.** Each node reads the whole view at start (a node started while Redis holds
//!   the view is ready once it has read it, with no sync of its own), then follows the log
//!   (`XREAD BLOCK` from the last version it applied) and applies each entry with
//!   [`Compliance::apply_replicated`], which does not publish it again. Its own entries come
//!   back too and are applied again (a no-op), so every node ends in the log's order. After a
//!   disconnection it goes on from its last version; if the log was trimmed past it (the
//!   next entry is not `last + 1`), or Redis went back in time (its version is lower), it reads
//!   the whole view again. An empty store (new, or restarted without its data) is seeded
//!   with the view of the first node that finds it so.
//! - **Leader.** One node, holder of a lock with an expiry (taken only when free by a script
//!   that also counts the term, renewed every third of the ttl by a compare-and-set script,
//!   released at shutdown), runs the UEM
//!   full and delta syncs ([`leadership`](SharedView::leadership) drives
//!   [`Syncer::with_leadership`](compliance_policy::sync::Syncer::with_leadership)). When the
//!   leader dies, the lock expires and another node takes it within one ttl and a third; it
//!   goes on from the shared view (a delta sync since the last full sync). A leader that
//!   cannot renew steps down before its lock could expire.
//! - **Fencing.** Each take of the lock is a new term, and the lock's value (`<term> <node>`)
//!   is the leader's fencing token. A sync's result is written only while the lock still holds
//!   the token of the term it was made in: a leader paused past its lock's expiry cannot
//!   overwrite its successor's view when it wakes. Its write is refused, logged and counted
//!   (`seg_compliance_redis_fenced_total`); it steps down and reads the shared view again.
//!   Change events and overrides are any node's to write, leader or not.
//! - **Events in flight.** A change event's write stamps its devices with its version; a
//!   sync's result carries the last version its leader had applied, and the write script
//!   keeps the record of every device stamped later (counted in
//!   `seg_compliance_redis_held_back_total`): an event another node wrote while the leader's
//!   sync was fetching is not undone by that sync's older answer.
//! - **Redis down.** Nodes keep deciding from their last view: nothing opens the gate. The
//!   outage is logged once, counted ([`RedisMetrics`]: `seg_compliance_redis_up`,
//!   `…_errors_total`, `…_queued`), and retried with backoff; on return each node writes its
//!   queued changes first, then catches up from its version.
//!
//! # Why redis-rs
//! `redis` (redis-rs) is the maintained client with the smallest footprint for this: tokio
//! multiplexed connections, streams and scripts, each a feature, nothing else compiled in.
//! `fred` does as much but brings its own connection management and more dependencies.
//! `rediss://` (TLS) is its `tokio-rustls-comp` feature, with the workspace's rustls; its
//! Sentinel and Cluster clients are the features `sentinel` and `cluster-async`. They have no
//! URL of their own: this crate reads `redis+sentinel://s1,s2/master[/db]` and
//! `redis+cluster://n1,n2` URLs into them, so that the topology is configuration (see
//! `docs/scale-out.md`, "Redis deployments").
//!
//! # Example
//! ```no_run
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::Compliance;
//! use compliance_redis::{RedisMetrics, RedisSettings, SharedView};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), compliance_redis::RedisError> {
//! let compliance = Compliance::new(PolicySettings::default());
//! let mut settings = RedisSettings::new("redis://127.0.0.1:6379/");
//! settings.node_name = "gateway-1".into();
//! let shared = SharedView::new(compliance.clone(), settings, RedisMetrics::new())?;
//! let leadership = shared.leadership(); // give it to the Syncer: only the leader syncs
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(shared.run(async move {
//!     let _ = stopped.await;
//! }));
//! // … serve, deciding with `compliance.decide(…)` …
//! # drop(leadership);
//! let _ = stop.send(());
//! running.await.ok();
//! # Ok(())
//! # }
//! ```

mod connection;
mod metrics;
mod node;
mod store;
mod wire;

pub use metrics::RedisMetrics;

use compliance_policy::replicate::AlreadyReplicated;
use compliance_policy::state::Compliance;
use std::future::Future;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why the shared view cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The Redis URL is not one this client can use.
    #[error("redis url refused")]
    Url(#[source] redis::RedisError),
    /// The lock's expiry is too short to be renewed in time.
    #[error("the leader lock ttl must be at least 300ms, not {0:?}")]
    LockTtl(Duration),
    /// No Redis URL was given.
    #[error("no redis url")]
    MissingUrl,
    /// The compliance state is already shared (it has a replicator).
    #[error("the compliance state is already shared")]
    AlreadyShared(#[source] AlreadyReplicated),
    /// The trust store for Redis's certificate cannot be read.
    #[error("cannot read the redis trust store {path}")]
    TrustStore {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A trust store was given for a URL without TLS (`redis://`, not `rediss://`).
    #[error("a redis trust store needs a rediss:// url")]
    TrustStoreWithoutTls,
}

/// Where the view is shared and how this node takes part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS, the certificate verified
    /// against the system's roots or [`trust_store`](Self::trust_store)), or
    /// `redis+unix:///path`. Secret when it holds a password (logged with it hidden).
    pub url: String,
    /// With `rediss://`: the CA certificates (PEM) that Redis's certificate must chain to,
    /// instead of the system's roots. Read when the view is shared (and by
    /// [`validate`](Self::validate)).
    pub trust_store: Option<PathBuf>,
    /// The prefix of every key (the hash tag of all of them): several gateways' views may
    /// share one Redis under different prefixes.
    pub key_prefix: String,
    /// This node's name in the leader lock and the change log; unique among the nodes.
    pub node_name: String,
    /// The leader lock's expiry: a dead leader is replaced within it and a third.
    pub lock_ttl: Duration,
    /// About how many change-log entries Redis keeps (`XADD MAXLEN ~`); a node that was away
    /// for more reads the whole view again.
    pub log_length: usize,
    /// How many device records a whole view (a full sync, a seed) is written in at a time.
    /// A bigger view goes to a staging hash in batches of this many, then takes the records'
    /// place in one atomic step: Redis is never blocked for the whole of a view of hundreds of
    /// thousands of devices, and no node ever reads half of one.
    pub full_sync_batch: usize,
}

impl RedisSettings {
    /// The settings for `url`: prefix `seg:compliance`, a random node name, a lock ttl of
    /// 10 s, 10,000 log entries, and whole views written 5,000 records at a time.
    pub fn new(url: impl Into<String>) -> Self {
        let random =
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
        RedisSettings {
            url: url.into(),
            trust_store: None,
            key_prefix: "seg:compliance".into(),
            node_name: format!("seg-{random:016x}"),
            lock_ttl: Duration::from_secs(10),
            log_length: 10_000,
            full_sync_batch: 5_000,
        }
    }

    /// Checks the settings as [`SharedView::new`] does, without sharing anything (for a
    /// configuration check at start).
    ///
    /// # Errors
    ///
    /// As [`SharedView::new`]: [`RedisError::Url`], [`RedisError::LockTtl`],
    /// [`RedisError::TrustStore`] or [`RedisError::TrustStoreWithoutTls`].
    pub fn validate(&self) -> Result<(), RedisError> {
        self.client().map(drop)
    }

    fn client(&self) -> Result<connection::Connector, RedisError> {
        let root_cert = match &self.trust_store {
            None => None,
            Some(_) if !connection::is_tls(&self.url) => {
                return Err(RedisError::TrustStoreWithoutTls);
            }
            Some(path) => Some(
                std::fs::read(path).map_err(|source| RedisError::TrustStore {
                    path: path.clone(),
                    source,
                })?,
            ),
        };
        let connector =
            connection::Connector::new(&self.url, root_cert).map_err(RedisError::Url)?;
        if self.lock_ttl < Duration::from_millis(300) {
            return Err(RedisError::LockTtl(self.lock_ttl));
        }
        Ok(connector)
    }

    /// The URL with its password hidden, for logs.
    pub fn redacted_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        // The credentials end at the last `@` before the path (a master's name or a database),
        // whatever the number of servers named.
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        match authority.rsplit_once('@') {
            Some((userinfo, _)) => {
                let user = userinfo.split_once(':').map_or("", |(user, _)| user);
                format!("{scheme}://{user}:***@{}", &rest[userinfo.len() + 1..])
            }
            None => self.url.clone(),
        }
    }
}

/// What a node of the shared view knows of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedStatus {
    /// Redis answered the last command.
    pub redis_up: bool,
    /// This node holds the leader lock.
    pub leader: bool,
    /// The version of the last change applied from Redis.
    pub version: u64,
    /// This node's changes not yet written to Redis.
    pub queued: usize,
}

/// One node's part in the shared view; see the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct SharedView {
    node: Arc<node::Node>,
}

impl SharedView {
    /// Shares `compliance` through Redis at `settings.url`, counted in `metrics`: from now on
    /// every change made to it is queued for Redis. Connects only when [run](Self::run).
    ///
    /// # Errors
    ///
    /// [`RedisError::Url`] for a URL the client cannot use (or a trust store that holds no
    /// certificate), [`RedisError::LockTtl`] for a ttl under 300 ms, [`RedisError::TrustStore`]
    /// or [`RedisError::TrustStoreWithoutTls`] for a trust store that cannot be used,
    /// [`RedisError::AlreadyShared`] if `compliance` is shared already.
    pub fn new(
        compliance: Compliance,
        settings: RedisSettings,
        metrics: RedisMetrics,
    ) -> Result<Self, RedisError> {
        let client = settings.client()?;
        let outbox = Arc::new(node::Outbox::new(metrics.clone()));
        compliance
            .replicate_to(outbox.clone())
            .map_err(RedisError::AlreadyShared)?;
        Ok(SharedView {
            node: Arc::new(node::Node {
                compliance,
                keys: wire::Keys::new(&settings.key_prefix),
                settings,
                connector: client,
                metrics,
                outbox,
                leader: watch::Sender::new(false),
                caught_up: watch::Sender::new(false),
                redis: Default::default(),
                stale: Default::default(),
            }),
        })
    }

    /// `true` while this node holds the leader lock (and so should run the syncs).
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.node.leader.subscribe()
    }

    /// This node's state now.
    pub fn status(&self) -> SharedStatus {
        SharedStatus {
            redis_up: self.node.is_up(),
            leader: *self.node.leader.borrow(),
            version: self.node.outbox.applied(),
            queued: self.node.queued(),
        }
    }

    /// Writes this node's changes, follows the others', and takes part in the leader
    /// election, until `shutdown` completes; then writes what is queued (for at most a second)
    /// and releases the leader lock.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let node = self.node;
        let mut writer = std::pin::pin!(node.clone().write_loop());
        let reader = node.clone().read_loop();
        let leader = node.clone().lead_loop();
        tokio::select! {
            () = shutdown => {}
            () = &mut writer => {}
            () = reader => {}
            () = leader => {}
        }
        tokio::select! {
            () = &mut writer => {}
            () = node.outbox.drained(Duration::from_secs(1)) => {}
        }
        node.finish().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_hidden_in_logs() {
        let settings = RedisSettings::new("redis://seg:s3cret@10.0.0.5:6379/2");
        assert_eq!(settings.redacted_url(), "redis://seg:***@10.0.0.5:6379/2");
        let plain = RedisSettings::new("redis://127.0.0.1:6379/");
        assert_eq!(plain.redacted_url(), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn nodes_get_distinct_names_by_default() {
        assert_ne!(
            RedisSettings::new("redis://a/").node_name,
            RedisSettings::new("redis://a/").node_name
        );
    }

    #[test]
    fn a_trust_store_needs_tls_and_a_readable_file() {
        let mut settings = RedisSettings::new("redis://127.0.0.1:6379/");
        settings.trust_store = Some("/nonexistent/redis-ca.pem".into());
        assert!(matches!(
            settings.validate(),
            Err(RedisError::TrustStoreWithoutTls)
        ));
        settings.url = "rediss://redis.corp.example:6380/".into();
        assert!(matches!(
            settings.validate(),
            Err(RedisError::TrustStore { .. })
        ));
        settings.trust_store = None;
        settings
            .validate()
            .expect("rediss:// with the system's roots");
    }

    #[test]
    fn a_url_of_another_scheme_is_refused() {
        let compliance = Compliance::new(Default::default());
        let error = SharedView::new(
            compliance,
            RedisSettings::new("http://127.0.0.1/"),
            RedisMetrics::new(),
        )
        .unwrap_err();
        assert!(matches!(error, RedisError::Url(_)), "{error}");
    }
}
