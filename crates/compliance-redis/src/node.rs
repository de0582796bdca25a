//! The tasks of one node: writing its changes, reading the others', and the leader lock.

use crate::RedisSettings;
use crate::connection::{Connection, Connector};
use crate::metrics::RedisMetrics;
use crate::store;
use crate::wire::{self, Apply, CatchUp, Keys};
use compliance_policy::replicate::{Replicator, Update};
use compliance_policy::state::{ChangeSource, Compliance};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How long a read of the log waits for an entry before asking again.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read at once.
const BATCH: usize = 512;
/// First wait after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a reload waits for this node's queued changes to be written first.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long commands other than the blocking read may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The fencing token of a sync's result made while this node did not lead: no lock holds it
/// (a lock's value is `<term> <node>`), so the result is refused.
const NOT_LEADING: &str = "-";

/// One of this node's changes, queued: the change, its cause, and, for a sync's result, the
/// fencing token of the leader term it was made in and the last version read when it was made.
type Queued = (Update, ChangeSource, Option<(String, u64)>);

/// This node's changes waiting to be written, in order.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// The fencing token (the leader lock's value) while this node leads.
    term: Mutex<Option<String>>,
    notify: Notify,
    /// Queued plus the one being written.
    pending: watch::Sender<usize>,
    /// The version of the last log entry (or whole view) this node has applied.
    applied: AtomicU64,
    metrics: RedisMetrics,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// [`Outbox::next`] handed one out that is not written yet.
    in_flight: bool,
}

impl Queue {
    fn pending(&self) -> usize {
        self.items.len() + usize::from(self.in_flight)
    }
}

impl Outbox {
    pub(crate) fn new(metrics: RedisMetrics) -> Self {
        Outbox {
            queue: Mutex::default(),
            term: Mutex::default(),
            notify: Notify::new(),
            pending: watch::Sender::new(0),
            applied: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, queue: &Queue) {
        let pending = queue.pending();
        self.pending.send_replace(pending);
        self.metrics
            .queued
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// This node's fencing token while it leads.
    fn term(&self) -> Option<String> {
        self.term
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_term(&self, term: Option<String>) {
        *self
            .term
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = term;
    }

    /// The next change to write (it counts as pending until [`Outbox::written`]).
    async fn next(&self) -> Queued {
        loop {
            let notified = self.notify.notified();
            {
                let mut queue = self.lock();
                if let Some(item) = queue.items.pop_front() {
                    queue.in_flight = true;
                    self.count(&queue);
                    return item;
                }
            }
            notified.await;
        }
    }

    /// The change taken by [`Outbox::next`] is written.
    fn written(&self) {
        let mut queue = self.lock();
        queue.in_flight = false;
        self.count(&queue);
    }

    /// Waits (at most `deadline`) until every queued change is written.
    pub(crate) async fn drained(&self, deadline: Duration) {
        let mut pending = self.pending.subscribe();
        let _ = tokio::time::timeout(deadline, pending.wait_for(|n| *n == 0)).await;
    }

    fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// The version of the last change this node has applied.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Everything up to `version` is applied to this node's view (stored after applying: a
    /// sync's result made meanwhile counts only what its leader had seen as known).
    fn set_applied(&self, version: u64) {
        self.applied.store(version, Ordering::Release);
    }
}

impl Replicator for Outbox {
    fn publish(&self, update: Update, source: ChangeSource) {
        // Only the leader syncs: a sync's result is written only under its leader term.
        // Published while applied (under the view's lock): every version up to `applied` is
        // in the view the result was made from, later events are not.
        let fence = matches!(source, ChangeSource::FullSync | ChangeSource::DeltaSync).then(|| {
            (
                self.term().unwrap_or_else(|| NOT_LEADING.to_owned()),
                self.applied(),
            )
        });
        let mut queue = self.lock();
        if matches!(update, Update::Full(_)) {
            // A new full view holds every device change queued before it: only overrides
            // (kept in their own hash) still need writing.
            queue.items.retain(|(queued, _, _)| {
                matches!(
                    queued,
                    Update::DeviceOverride { .. } | Update::UserOverride { .. }
                )
            });
        }
        queue.items.push_back((update, source, fence));
        self.count(&queue);
        drop(queue);
        self.notify.notify_one();
    }
}

// 0: not known yet (nothing tried).
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One node of the shared view.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) compliance: Compliance,
    pub(crate) settings: RedisSettings,
    pub(crate) connector: Connector,
    pub(crate) keys: Keys,
    pub(crate) metrics: RedisMetrics,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) leader: watch::Sender<bool>,
    /// The first catch-up with the store is done (loaded, or found it empty).
    pub(crate) caught_up: watch::Sender<bool>,
    pub(crate) redis: AtomicU8,
    /// A sync's result of this node was refused: its view must be read again from the store.
    pub(crate) stale: AtomicBool,
}

impl Node {
    pub(crate) fn is_up(&self) -> bool {
        self.redis.load(Ordering::Relaxed) == UP
    }

    pub(crate) fn queued(&self) -> usize {
        self.outbox.pending()
    }

    fn up(&self) {
        self.metrics.up.set(1);
        if self.redis.swap(UP, Ordering::Relaxed) != UP {
            tracing::info!(url = %self.settings.redacted_url(), "redis reachable: sharing the compliance view");
        }
    }

    fn down(&self, what: &str, error: &redis::RedisError) {
        self.metrics.errors.inc();
        self.metrics.up.set(0);
        if self.redis.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(%error, what, url = %self.settings.redacted_url(), queued = self.queued(), "redis unreachable: serving from the last compliance view; this node's changes are queued");
        } else {
            tracing::debug!(%error, what, "redis still unreachable");
        }
    }

    async fn connect(&self, timeout: Duration) -> Option<Connection> {
        match self.connector.connect(timeout).await {
            Ok(conn) => Some(conn),
            Err(error) => {
                self.down("connect", &error);
                None
            }
        }
    }

    /// Writes this node's changes, in order, retrying each until Redis takes it.
    pub(crate) async fn write_loop(self: Arc<Self>) {
        let mut conn: Option<Connection> = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let (update, source, fence) = self.outbox.next().await;
            let write = wire::encode(&update, source, &self.settings.node_name);
            loop {
                if conn.is_none() {
                    conn = self.connect(COMMAND_TIMEOUT).await;
                }
                if let Some(c) = conn.as_mut() {
                    let kind = match &fence {
                        Some((token, read)) => store::Kind::SyncResult { token, read: *read },
                        None => store::Kind::Change,
                    };
                    let written = store::write(c, &self.keys, &write, &self.settings, kind).await;
                    match written {
                        Ok(store::Written::Empty) => {
                            // This node's view holds the change already: it becomes the store's.
                            let view = self.compliance.view();
                            let seed = wire::encode_seed(&view, &self.settings.node_name);
                            match store::write(
                                c,
                                &self.keys,
                                &seed,
                                &self.settings,
                                store::Kind::Seed,
                            )
                            .await
                            {
                                Ok(_) => {
                                    tracing::warn!(
                                        devices = view.len(),
                                        "redis held no compliance view: seeded it with this node's"
                                    );
                                    self.metrics.written.inc();
                                    self.up();
                                    backoff = MIN_BACKOFF;
                                    break;
                                }
                                Err(error) => {
                                    self.down("seed", &error);
                                    conn = None;
                                }
                            }
                        }
                        Ok(store::Written::Fenced) => {
                            // Paused past the lock's expiry, or stepped down meanwhile: the
                            // new leader's view stands, and this node reads it again.
                            tracing::warn!(
                                ?source,
                                node = %self.settings.node_name,
                                "refused this node's sync result: it no longer holds the leader lock; reading the shared view again"
                            );
                            self.metrics.fenced.inc();
                            self.stale.store(true, Ordering::Relaxed);
                            self.step_down_if(fence.as_ref().map(|(token, _)| token.as_str()));
                            self.up();
                            backoff = MIN_BACKOFF;
                            break;
                        }
                        Ok(written) => {
                            self.metrics.written.inc();
                            self.up();
                            if let store::Written::Version {
                                version,
                                held_back: held_back @ 1..,
                            } = written
                            {
                                // Another node's event, newer than the view this result was
                                // made from, stands; this node reads it from the log.
                                tracing::info!(
                                    version,
                                    held_back,
                                    ?source,
                                    "kept devices changed by an event since this sync's view: their sync changes were not written"
                                );
                                self.metrics.held_back.inc_by(held_back);
                            }
                            tracing::debug!(?written, ?source, "wrote a change to redis");
                            backoff = MIN_BACKOFF;
                            break;
                        }
                        Err(error) => {
                            self.down("write", &error);
                            conn = None;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            self.outbox.written();
        }
    }

    /// Reads the other nodes' changes: everything at first, then the log, catching up after a
    /// disconnection from the last version applied.
    pub(crate) async fn read_loop(self: Arc<Self>) {
        let mut last: Option<u64> = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            if let Some(mut conn) = self.connect(BLOCK + COMMAND_TIMEOUT).await {
                loop {
                    if let Err(error) = self.catch_up(&mut conn, &mut last).await {
                        self.down("catch up", &error);
                        break;
                    }
                    self.up();
                    backoff = MIN_BACKOFF;
                    self.caught_up.send_replace(true);
                    // Back here when the store went back in time under a live connection.
                    if let Err(error) = self.follow(&mut conn, &mut last).await {
                        self.down("read", &error);
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn catch_up(
        &self,
        conn: &mut Connection,
        last: &mut Option<u64>,
    ) -> redis::RedisResult<()> {
        let stored = store::stored_version(conn, &self.keys).await?;
        match wire::catch_up(*last, stored) {
            CatchUp::FromLog => Ok(()),
            CatchUp::Reload => self.reload(conn, last).await,
            CatchUp::Seed => {
                let view = self.compliance.view();
                if view.is_loaded() {
                    let seed = wire::encode_seed(&view, &self.settings.node_name);
                    if let store::Written::Version { version, .. } =
                        store::write(conn, &self.keys, &seed, &self.settings, store::Kind::Seed)
                            .await?
                    {
                        tracing::warn!(
                            version,
                            devices = view.len(),
                            "redis held no compliance view: seeded it with this node's"
                        );
                    }
                    self.reload(conn, last).await
                } else {
                    tracing::info!(
                        "redis holds no compliance view yet: waiting for the leader's first full sync"
                    );
                    Ok(())
                }
            }
        }
    }

    /// Reads the whole view again, once this node's queued changes are written (so that the
    /// view read holds them and a change made here is never undone, not even for a moment).
    async fn reload(
        &self,
        conn: &mut Connection,
        last: &mut Option<u64>,
    ) -> redis::RedisResult<()> {
        self.outbox.drained(DRAIN_WAIT).await;
        let (records, overrides, version, synced_at) = store::load(conn, &self.keys).await?;
        let Some(version) = version else {
            return Ok(());
        };
        match wire::decode_view(records, overrides, synced_at) {
            Ok(view) => {
                let devices = view.len();
                let transitions = self
                    .compliance
                    .apply_replicated(Update::Full(Arc::new(view)), ChangeSource::Snapshot);
                self.metrics.reloads.inc();
                tracing::info!(
                    version,
                    devices,
                    transitions = transitions.len(),
                    "read the compliance view from redis"
                );
            }
            Err(error) => {
                tracing::error!(%error, version, "the compliance view in redis is malformed; keeping the last view");
            }
        }
        *last = Some(version);
        self.outbox.set_applied(version);
        Ok(())
    }

    async fn follow(
        &self,
        conn: &mut Connection,
        last: &mut Option<u64>,
    ) -> redis::RedisResult<()> {
        loop {
            if self.stale.swap(false, Ordering::Relaxed) {
                self.reload(conn, last).await?;
            }
            let entries =
                store::read_log(conn, &self.keys, last.unwrap_or(0), BLOCK, BATCH).await?;
            if entries.is_empty() {
                // Quiet for a while: was the store emptied or replaced under this connection
                // (its new entries would then sort before `last` and never be read)?
                // Or was the log trimmed past entries this node never read?
                let Some(seen) = *last else { continue };
                match store::stored_version(conn, &self.keys).await? {
                    Some(stored) if stored == seen => {}
                    Some(stored) if stored > seen => {
                        tracing::warn!(
                            seen,
                            stored,
                            "change-log entries are missing: reading everything again"
                        );
                        self.reload(conn, last).await?;
                    }
                    stored => {
                        tracing::warn!(seen, ?stored, "redis went back in time: catching up again");
                        return Ok(());
                    }
                }
                continue;
            }
            for (id, json) in entries {
                let Some(version) = wire::entry_version(&id) else {
                    tracing::error!(
                        id,
                        "a change-log entry with an unexpected id; reading everything again"
                    );
                    self.reload(conn, last).await?;
                    continue;
                };
                let seen = last.unwrap_or(0);
                if version <= seen {
                    continue;
                }
                if !wire::follows(seen, version) {
                    tracing::warn!(
                        after = seen,
                        next = version,
                        "the change log was trimmed past this node's last version; reading everything again"
                    );
                    self.reload(conn, last).await?;
                    continue;
                }
                let entry = json
                    .as_deref()
                    .map(serde_json::from_str::<wire::Entry>)
                    .transpose();
                match entry {
                    Ok(Some(entry)) => match entry.into_apply() {
                        Apply::Update(update, source) => {
                            self.compliance.apply_replicated(update, source);
                            *last = Some(version);
                            self.outbox.set_applied(version);
                            self.metrics.applied.inc();
                        }
                        Apply::Reload => self.reload(conn, last).await?,
                    },
                    Ok(None) | Err(_) => {
                        tracing::error!(
                            id,
                            "a malformed change-log entry; reading everything again"
                        );
                        self.reload(conn, last).await?;
                    }
                }
            }
        }
    }

    /// Takes the leader lock when free (after the first catch-up: a node leads from the
    /// shared view, not from nothing), renews it while holding it, and steps down before it
    /// could expire unrenewed. Each take is a new term; its fencing token (the lock's value)
    /// goes with every sync result written meanwhile.
    pub(crate) async fn lead_loop(self: Arc<Self>) {
        let mut caught_up = self.caught_up.subscribe();
        let _ = caught_up.wait_for(|done| *done).await;
        let ttl = self.settings.lock_ttl;
        let period = ttl / 3;
        let node = self.settings.node_name.as_str();
        let mut conn: Option<Connection> = None;
        let mut renewed_at: Option<Instant> = None;
        loop {
            let term = self.outbox.term();
            if conn.is_none() {
                conn = self.connect(period.max(Duration::from_millis(50))).await;
            }
            if let Some(c) = conn.as_mut() {
                let result = match &term {
                    Some(token) => store::renew(c, &self.keys, token, ttl)
                        .await
                        .map(|renewed| renewed.then(|| token.clone())),
                    None => store::try_lock(c, &self.keys, node, ttl).await,
                };
                match result {
                    Ok(Some(token)) => {
                        renewed_at = Some(Instant::now());
                        if term.is_none() {
                            tracing::info!(
                                node,
                                %token,
                                ?ttl,
                                "took the leader lock: this node runs the syncs"
                            );
                            self.set_leader(Some(token));
                        }
                    }
                    Ok(None) if term.is_some() => {
                        tracing::warn!(node, "lost the leader lock: another node runs the syncs");
                        self.step_down_if(term.as_deref());
                    }
                    Ok(None) => {}
                    Err(error) => {
                        self.down("leader lock", &error);
                        conn = None;
                    }
                }
            }
            // Unrenewed, the lock may expire before the next attempt: stop leading first.
            if term.is_some()
                && self.outbox.term() == term
                && renewed_at.is_none_or(|at| at.elapsed() + period >= ttl)
            {
                tracing::warn!(node, "cannot renew the leader lock: stepping down");
                self.step_down_if(term.as_deref());
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Leads under the fencing token `term`, or (`None`) not at all. The token is set before
    /// the syncer is told to run and cleared before it is told to stop: a sync result published
    /// after this node stepped down carries no token the lock could hold.
    fn set_leader(&self, term: Option<String>) {
        let leading = term.is_some();
        self.outbox.set_term(term);
        self.leader.send_replace(leading);
        self.metrics.leader.set(i64::from(leading));
    }

    /// Stops leading if this node still leads under `term` (a later term of its own stays).
    pub(crate) fn step_down_if(&self, term: Option<&str>) {
        if term.is_some() && self.outbox.term().as_deref() == term {
            self.set_leader(None);
        }
    }

    /// At shutdown: writes what is still queued (briefly) and gives up the leader lock.
    pub(crate) async fn finish(&self) {
        if self.queued() > 0 {
            tracing::warn!(
                queued = self.queued(),
                "shutting down with changes not yet written to redis"
            );
        }
        if let Some(token) = self.outbox.term() {
            self.set_leader(None);
            if let Some(mut conn) = self.connect(Duration::from_millis(500)).await {
                match store::release(&mut conn, &self.keys, &token).await {
                    Ok(_) => tracing::info!("released the leader lock"),
                    Err(error) => self.down("release the leader lock", &error),
                }
            }
        }
    }
}
