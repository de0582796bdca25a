//! The gateway's audit trail: every change that matters, who made it and when, kept
//! append-only in an embedded store and queried through the admin API.
//!
//! Recorded: each block/unblock [transition](compliance_policy::state::Transition) of a device
//! (old and new decision, reason, source), each override set or cleared through the admin API
//! (by whom, with the reason given), each sync outcome, and the gateway's start, stop and
//! configuration reloads; see [`entry::Event`]. Each entry carries the name of the node that
//! wrote it.
//!
//! Writing never holds up a request: producers hand [`Record`]s to an
//! [`AuditSink`], which queues them without waiting (a full queue drops the record and counts
//! the loss in [`metrics`]); one writer task stores each batch in one transaction
//! ([`store`]). A retention task deletes entries older than [`AuditSettings::retention`] in
//! batches. [`api::router`] serves the queries, behind the admin API's token.
//!
//! ```
//! use audit_trail::entry::{Event, Record};
//! use audit_trail::metrics::AuditMetrics;
//! use audit_trail::store::Query;
//! use audit_trail::{AuditSettings, AuditTrail};
//! use compliance_policy::policy::{Override, PolicySettings};
//! use compliance_policy::state::{ChangeSource, Compliance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), audit_trail::AuditError> {
//! let dir = tempfile::tempdir().unwrap();
//! let settings = AuditSettings::new(dir.path().join("audit.redb"));
//! let mut trail = AuditTrail::open(&settings, "seg-1", AuditMetrics::new())?;
//!
//! // Follow the compliance state: each transition becomes an entry.
//! let compliance = Compliance::new(PolicySettings::default());
//! compliance.replace_all(Vec::new(), ChangeSource::FullSync);
//! trail.follow_transitions(&compliance);
//! trail.sink().record(Record::now(Event::GatewayStarted { version: "1.0".into() }));
//! compliance.set_device_override("LAB1", Some(Override::Allow));
//!
//! // Closing writes whatever is still queued.
//! let store = trail.store().clone();
//! trail.close().await;
//! let page = store.query(&Query { device: Some("lab1".into()), ..Query::default() })?;
//! assert_eq!(page.entries.len(), 1);
//! assert_eq!(page.entries[0].event.kind(), "transition");
//! assert_eq!(page.entries[0].node, "seg-1");
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod entry;
pub mod metrics;
mod sink;
pub mod store;

pub use sink::AuditSink;

use compliance_policy::state::Compliance;
use compliance_policy::sync::{SyncHandle, SyncStatus};
use entry::{Event, Record};
use metrics::{AuditMetrics, Loss};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::Store;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

/// Records the writer stores in one transaction, at most.
const WRITE_BATCH: usize = 512;

/// Entries retention deletes in one transaction, at most.
const PURGE_BATCH: usize = 1000;

/// Why the trail failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store could not be opened, read or written (I/O, a damaged file, another process
    /// holding it).
    #[error("audit store {path} failed")]
    Store {
        /// The store's file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored entry does not decode.
    #[error("audit entry {id} is damaged")]
    Damaged {
        /// Its id.
        id: u64,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// An entry could not be encoded.
    #[error("audit entry {id} cannot be encoded")]
    Encode {
        /// Its id.
        id: u64,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The store's file was closed after a failed write and could not be opened again yet;
    /// the writer tries again with its next batch.
    #[error("audit store {path} is closed after a failure and not open again yet")]
    Closed {
        /// The store's file.
        path: PathBuf,
    },
    /// The blocking task reading or writing the store died.
    #[error("audit store task failed: {0}")]
    Task(String),
}

/// The error and its causes, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `[audit]`: where the trail is kept and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The store's file (created when missing; its directory must exist).
    pub path: PathBuf,
    /// How long entries are kept, e.g. `90d`.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How many records may wait for the writer; past it, records are lost (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How often retention looks for old entries.
    #[serde(default = "default_purge_interval", with = "humantime_serde")]
    pub purge_interval: Duration,
}

fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_queue() -> usize {
    10_000
}

fn default_purge_interval() -> Duration {
    Duration::from_secs(3600)
}

impl AuditSettings {
    /// The defaults (`90d`, a queue of 10,000, retention hourly) with the store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditSettings {
            path: path.into(),
            retention: default_retention(),
            queue: default_queue(),
            purge_interval: default_purge_interval(),
        }
    }
}

/// A running trail: the store, its writer and its retention, and the feeds it follows.
///
/// [`close`](Self::close) it to write what is still queued; dropping it stops its tasks too,
/// losing what was queued.
#[derive(Debug)]
pub struct AuditTrail {
    store: Store,
    sink: AuditSink,
    /// Stops the feeds and retention.
    stop_feeds: watch::Sender<bool>,
    feeds: JoinSet<()>,
    /// Stops the writer, once the feeds are stopped.
    stop_writer: watch::Sender<bool>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl AuditTrail {
    /// Opens the store of `settings` and starts its writer and retention, writing entries as
    /// node `node`. Call within a tokio runtime.
    ///
    /// Fails when the store cannot be opened (see [`Store::open`]).
    pub fn open(
        settings: &AuditSettings,
        node: impl Into<Arc<str>>,
        metrics: AuditMetrics,
    ) -> Result<Self, AuditError> {
        let store = Store::open(&settings.path)?;
        let (sink, queue) = AuditSink::channel(settings.queue, metrics);
        let (stop_feeds, _) = watch::channel(false);
        let (stop_writer, _) = watch::channel(false);
        let writer = tokio::spawn(write(
            queue,
            store.clone(),
            node.into(),
            sink.clone(),
            stop_writer.subscribe(),
        ));
        let mut feeds = JoinSet::new();
        feeds.spawn(retain(
            store.clone(),
            settings.retention,
            settings.purge_interval,
            sink.metrics().clone(),
            stop_feeds.subscribe(),
        ));
        tracing::info!(path = %settings.path.display(), retention = ?settings.retention, queue = settings.queue, "audit trail open");
        Ok(AuditTrail {
            store,
            sink,
            stop_feeds,
            feeds,
            stop_writer,
            writer: Some(writer),
        })
    }

    /// The sink producers record into.
    pub fn sink(&self) -> AuditSink {
        self.sink.clone()
    }

    /// The store, for queries.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records every transition of `compliance` from now on. A transition the trail falls too
    /// far behind to read is counted as lost (`cause="lagged"`).
    pub fn follow_transitions(&mut self, compliance: &Compliance) {
        let transitions = compliance.subscribe();
        let sink = self.sink.clone();
        let stop = self.stop_feeds.subscribe();
        self.feeds
            .spawn(follow_transitions(transitions, sink, stop));
    }

    /// Records the outcomes of `sync`'s syncs since it was made, looking every `every` (a sync
    /// recorded after another of its kind in the same look is counted in that entry). `compliance` gives the
    /// view's size after a success.
    pub fn follow_sync(&mut self, sync: SyncHandle, compliance: Compliance, every: Duration) {
        let sink = self.sink.clone();
        let stop = self.stop_feeds.subscribe();
        self.feeds
            .spawn(follow_sync(sync, compliance, sink, every, stop));
    }

    /// Stops following, writes every record still queued, and returns once written.
    pub async fn close(mut self) {
        let _ = self.stop_feeds.send(true);
        while let Some(done) = self.feeds.join_next().await {
            if let Err(error) = done {
                tracing::error!(%error, "an audit task failed");
            }
        }
        let _ = self.stop_writer.send(true);
        if let Some(writer) = self.writer.take()
            && let Err(error) = writer.await
        {
            tracing::error!(%error, "the audit writer failed");
        }
    }
}

/// Resolves once `stop` is set, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The writer: stores what the queue holds, a batch per transaction, until stopped; then
/// stores what is left and ends.
async fn write(
    mut queue: mpsc::Receiver<Record>,
    store: Store,
    node: Arc<str>,
    sink: AuditSink,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, WRITE_BATCH) => {
                if received == 0 {
                    return; // every sink is gone
                }
                store_batch(&store, &node, &sink, &mut batch).await;
            }
            () = stopped(&mut stop) => break,
        }
    }
    queue.close();
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        store_batch(&store, &node, &sink, &mut batch).await;
    }
}

async fn store_batch(store: &Store, node: &Arc<str>, sink: &AuditSink, batch: &mut Vec<Record>) {
    let records = std::mem::take(batch);
    let count = records.len() as u64;
    let (writer, node) = (store.clone(), node.clone());
    let written = tokio::task::spawn_blocking(move || writer.append(&node, records))
        .await
        .map_err(|error| AuditError::Task(error.to_string()))
        .and_then(|result| result);
    match written {
        Ok(entries) => sink.metrics().count_written(entries.len() as u64),
        Err(error) => {
            tracing::error!(error = %error_chain(&error), records = count, "audit batch not written");
            sink.lost(Loss::WriteFailed, count, "batch");
            if matches!(error, AuditError::Store { .. } | AuditError::Closed { .. }) {
                reopen(store.clone()).await;
            }
        }
    }
}

/// Closes and opens the store again after a failed write (redb refuses every transaction
/// after an I/O error until then), so that the next batch is written once the disk is back.
async fn reopen(store: Store) {
    let path = store.path().to_owned();
    match tokio::task::spawn_blocking(move || store.reopen()).await {
        Ok(Ok(())) => {
            tracing::info!(path = %path.display(), "audit store opened again after a failed write")
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %error_chain(&error), "audit store not opened again yet; trying with the next batch")
        }
        Err(error) => tracing::error!(%error, "the audit store's reopen task failed"),
    }
}

/// Retention: every `interval`, deletes the entries older than `retention`, a batch per
/// transaction.
async fn retain(
    store: Store,
    retention: Duration,
    interval: Duration,
    metrics: AuditMetrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        loop {
            let store = store.clone();
            let purged =
                tokio::task::spawn_blocking(move || store.purge_before(cutoff, PURGE_BATCH)).await;
            match purged {
                Ok(Ok(purged)) => {
                    metrics.count_purged(purged as u64);
                    if purged > 0 {
                        tracing::debug!(purged, "old audit entries deleted");
                    }
                    if purged < PURGE_BATCH || *stop.borrow() {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(error = %error_chain(&error), "audit retention failed; retrying at the next interval");
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "audit retention task failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

async fn follow_transitions(
    mut transitions: broadcast::Receiver<compliance_policy::state::Transition>,
    sink: AuditSink,
    mut stop: watch::Receiver<bool>,
) {
    let take = |received| match received {
        Ok(transition) => {
            sink.record(Record::transition(&transition));
            true
        }
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            sink.lost(Loss::Lagged, missed, "transition");
            true
        }
        Err(broadcast::error::RecvError::Closed) => false,
    };
    loop {
        tokio::select! {
            received = transitions.recv() => if !take(received) { return },
            () = stopped(&mut stop) => break,
        }
    }
    // What was announced before the stop is still recorded.
    loop {
        let received = match transitions.try_recv() {
            Ok(transition) => Ok(transition),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Err(broadcast::error::RecvError::Lagged(missed))
            }
            Err(_) => return,
        };
        take(received);
    }
}

async fn follow_sync(
    sync: SyncHandle,
    compliance: Compliance,
    sink: AuditSink,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Every outcome since the handle was made: the first sync may end before this task runs.
    let mut seen = SyncStatus::default();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stopped(&mut stop) => true,
        };
        let now = sync.status();
        for record in sync_records(&seen, &now, compliance.view().len()) {
            sink.record(record);
        }
        seen = now;
        if last {
            return;
        }
    }
}

/// The entries for what changed between two looks at a sync status.
fn sync_records(before: &SyncStatus, now: &SyncStatus, devices: usize) -> Vec<Record> {
    let mut records = Vec::new();
    let successes = now.successes.saturating_sub(before.successes);
    let full = now.last_full_sync.is_some() && now.last_full_sync != before.last_full_sync;
    let delta = now.last_delta_sync.is_some() && now.last_delta_sync != before.last_delta_sync;
    let devices = devices as u64;
    let succeeded = |sync: &str, count: u64| {
        Record::now(Event::SyncSucceeded {
            sync: sync.into(),
            count,
            devices,
        })
    };
    match (full, delta) {
        (true, true) => {
            records.push(succeeded("full", 1));
            records.push(succeeded("delta", successes.saturating_sub(1).max(1)));
        }
        (true, false) => records.push(succeeded("full", successes.max(1))),
        (false, true) => records.push(succeeded("delta", successes.max(1))),
        (false, false) => {}
    }
    let failures = now.failures.saturating_sub(before.failures);
    if failures > 0 {
        records.push(Record::now(Event::SyncFailed {
            cause: now
                .last_error
                .clone()
                .unwrap_or_else(|| "unknown (a later sync succeeded)".into()),
            count: failures,
        }));
    }
    records
}

#[cfg(test)]
mod tests;
