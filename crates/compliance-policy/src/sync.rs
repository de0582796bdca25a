//! Keeping the view current: a full sync at start and on an interval, a delta sync on a short
//! interval, and a full sync on demand; the last good view saved after every change.
//!
//! A source that is down, slow or answers garbage never empties the view or opens the gate: the
//! failed sync changes nothing, is logged and counted, and is retried with backoff. A full sync
//! that returns no device at all while the view has some is refused as implausible (a console
//! answering an empty list is far likelier broken than emptied).
//!
//! Where several nodes share one view (see [`crate::replicate`]), only one of them syncs: the
//! syncer is given a leadership signal ([`Syncer::with_leadership`]) and runs only while it
//! says so. A node that becomes leader goes on from the shared view: a delta sync since its
//! last full sync at once, and a full sync when that one is due (at once if the view was never
//! fully synced).
//!
//! Each sync is counted, by kind and outcome, in the [metrics](crate::metrics) of the state it
//! keeps current (when that state has some).

use crate::device::DeviceRecord;
use crate::snapshot::Snapshot;
use crate::state::{ChangeSource, Compliance};
use crate::view::{Change, View};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, watch};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source could not be reached or did not answer in time.
    #[error("device source unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The source answered with an error status.
    #[error("device source answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// The answer could not be understood (not JSON, missing fields, truncated paging).
    #[error("device source answered garbage: {0}")]
    Garbage(String),
    /// The answer is well-formed but implausible (an empty device list, …).
    #[error("device source answer refused: {0}")]
    Implausible(String),
}

/// Where devices come from: the management console, or a shared store of the view.
pub trait DeviceSource: Send + Sync + 'static {
    /// Every device (each in its own `Arc`, so that a million of them become the view without
    /// being copied again).
    fn full(&self) -> impl Future<Output = Result<Vec<Arc<DeviceRecord>>, SourceError>> + Send;
    /// Every device, like [`DeviceSource::full`], giving back `held`'s own record for each
    /// device whose record is unchanged: a periodic full sync then never holds a second copy
    /// of the devices that did not change. By default, [`DeviceSource::full`].
    fn full_reusing(
        &self,
        held: Arc<View>,
    ) -> impl Future<Output = Result<Vec<Arc<DeviceRecord>>, SourceError>> + Send {
        let _ = held;
        self.full()
    }
    /// The devices changed since `since`.
    fn changed_since(
        &self,
        since: SystemTime,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, SourceError>> + Send;
}

/// How often to sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Between full syncs.
    #[serde(with = "humantime_serde")]
    pub full_sync_interval: Duration,
    /// Between delta syncs.
    #[serde(with = "humantime_serde")]
    pub delta_sync_interval: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest wait between retries.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            full_sync_interval: Duration::from_secs(3600),
            delta_sync_interval: Duration::from_secs(60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the last syncs did, for readiness, metrics and the admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    /// When the last full sync succeeded.
    pub last_full_sync: Option<SystemTime>,
    /// When the last delta sync succeeded.
    pub last_delta_sync: Option<SystemTime>,
    /// The last failure, if the last attempt failed, with its causes (`device source
    /// unreachable: no answer within 5s`).
    pub last_error: Option<String>,
    /// Successful syncs so far.
    pub successes: u64,
    /// Failed syncs so far.
    pub failures: u64,
}

/// A handle on a running [`Syncer`]: trigger a full sync, read its status.
#[derive(Clone, Debug, Default)]
pub struct SyncHandle {
    trigger: Arc<Notify>,
    status: Arc<Mutex<SyncStatus>>,
}

impl SyncHandle {
    /// Asks for a full sync as soon as possible.
    pub fn trigger_full_sync(&self) {
        self.trigger.notify_one();
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, result: Result<SyncKind, &SourceError>) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        match result {
            Ok(kind) => {
                status.successes += 1;
                status.last_error = None;
                match kind {
                    SyncKind::Full => status.last_full_sync = Some(SystemTime::now()),
                    SyncKind::Delta => status.last_delta_sync = Some(SystemTime::now()),
                }
            }
            Err(error) => {
                status.failures += 1;
                status.last_error = Some(with_causes(error));
            }
        }
    }
}

/// An error and each of its causes, joined by `: ` (the `Display` of each names only itself).
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Which sync ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncKind {
    /// Every device.
    Full,
    /// The devices changed since the last sync.
    Delta,
}

/// The sync loop; see the [module docs](self).
#[derive(Debug)]
pub struct Syncer<S> {
    compliance: Compliance,
    source: S,
    settings: SyncSettings,
    snapshot: Option<Snapshot>,
    handle: SyncHandle,
    leader: Option<watch::Receiver<bool>>,
}

impl<S: DeviceSource> Syncer<S> {
    /// A syncer keeping `compliance` current from `source`.
    pub fn new(compliance: Compliance, source: S, settings: SyncSettings) -> Self {
        Syncer {
            compliance,
            source,
            settings,
            snapshot: None,
            handle: SyncHandle::default(),
            leader: None,
        }
    }

    /// Syncs only while `leader` holds `true` (this node holds the shared view's leadership);
    /// see the [module docs](self). A full sync requested meanwhile runs once it leads.
    pub fn with_leadership(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Loads the view from `snapshot` at start and saves every change to it.
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// The handle to trigger syncs and read their status.
    pub fn handle(&self) -> SyncHandle {
        self.handle.clone()
    }

    /// Loads the saved view, if any (call before serving: the gate stays shut on a blocked
    /// device across restarts even while the console is down).
    pub fn load_snapshot(&self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        match snapshot.load() {
            Ok(Some(saved)) => {
                let devices = saved.devices.len();
                self.compliance.load_saved(saved);
                tracing::info!(path = %snapshot.path().display(), devices, "loaded the saved compliance view");
            }
            Ok(None) => {
                tracing::info!(path = %snapshot.path().display(), "no saved compliance view yet")
            }
            Err(error) => {
                tracing::error!(%error, "the saved compliance view is unusable; waiting for a full sync (unknown devices stay blocked)")
            }
        }
    }

    /// Runs until `shutdown` completes: full sync, then delta and full syncs on their intervals.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let saver = self.snapshot.clone().map(|snapshot| {
            // Subscribed here, before the task runs: no change made meanwhile is missed.
            let changes = self.compliance.watch_changes();
            tokio::spawn(save_on_change(self.compliance.clone(), changes, snapshot))
        });
        let mut backoff = self.settings.min_backoff;
        let mut next_full = tokio::time::Instant::now();
        let mut next_delta = next_full + self.settings.delta_sync_interval;
        let mut delta_since: Option<SystemTime> = None;
        let mut leader = self.leader.clone();
        // Whether the schedule is that of a leader already (with a leadership signal).
        let mut leading = false;
        loop {
            if !leading && let Some(leader) = leader.as_mut() {
                tokio::select! {
                    () = &mut shutdown => break,
                    gone = async { leader.wait_for(|leads| *leads).await.is_err() } => if gone {
                        // The leadership signal is gone: nobody will make this node lead.
                        shutdown.as_mut().await;
                        break;
                    },
                }
                leading = true;
                let now = tokio::time::Instant::now();
                // Go on from the shared view rather than syncing everything again.
                match self.compliance.view().synced_at() {
                    Some(at) => {
                        let age = SystemTime::now().duration_since(at).unwrap_or_default();
                        delta_since = Some(at - Duration::from_secs(1));
                        next_delta = now;
                        next_full = now + self.settings.full_sync_interval.saturating_sub(age);
                    }
                    None => next_full = now,
                }
                tracing::info!("leading the shared compliance view: running the syncs");
            }
            let full_due = tokio::time::sleep_until(next_full);
            let delta_due = tokio::time::sleep_until(next_delta);
            let lost = async {
                match leader.as_mut() {
                    Some(leader) => {
                        let gone = leader.wait_for(|leads| !*leads).await.is_err();
                        if gone {
                            // The signal is gone while leading: keep leading until shutdown.
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let kind = tokio::select! {
                () = &mut shutdown => break,
                () = lost => {
                    tracing::info!("no longer leading the shared compliance view: syncs stop");
                    leading = false;
                    continue;
                }
                () = full_due => SyncKind::Full,
                () = delta_due, if delta_since.is_some() => SyncKind::Delta,
                () = self.handle.trigger.notified() => SyncKind::Full,
            };
            let started = SystemTime::now();
            if let Some(leader) = leader.as_mut() {
                leader.borrow_and_update();
            }
            // A sync started under one leader term must not be applied (and written) under
            // another: any change of leadership while it fetches drops it, even a loss and a
            // retake too quick for `lost` to see.
            let changed = async {
                let dropped = match leader.as_mut() {
                    Some(leader) => leader.changed().await.is_err(),
                    None => true,
                };
                if dropped {
                    std::future::pending::<()>().await;
                }
            };
            let sync = async {
                match kind {
                    SyncKind::Full => self.full_sync().await,
                    SyncKind::Delta => self.delta_sync(delta_since.unwrap_or(started)).await,
                }
            };
            let result = tokio::select! {
                biased;
                () = changed => {
                    tracing::warn!(?kind, "leadership changed during a sync: its answer is dropped");
                    leading = false;
                    continue;
                }
                result = sync => result,
            };
            let now = tokio::time::Instant::now();
            match &result {
                Ok(()) => {
                    backoff = self.settings.min_backoff;
                    // Deltas start from when this sync started: a change made during it is
                    // fetched again rather than missed.
                    delta_since = Some(started - Duration::from_secs(1));
                    match kind {
                        SyncKind::Full => next_full = now + self.settings.full_sync_interval,
                        SyncKind::Delta => {}
                    }
                    next_delta = now + self.settings.delta_sync_interval;
                }
                Err(error) => {
                    let error = with_causes(error);
                    tracing::warn!(%error, ?kind, retry_in = ?backoff, "sync failed; keeping the last good view");
                    match kind {
                        SyncKind::Full => next_full = now + backoff,
                        SyncKind::Delta => next_delta = now + backoff,
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
            if let Some(metrics) = self.compliance.metrics() {
                metrics.sync(kind, result.is_ok());
            }
            self.handle.record(result.as_ref().map(|()| kind));
        }
        if let Some(saver) = saver {
            saver.abort();
        }
    }

    async fn full_sync(&self) -> Result<(), SourceError> {
        // A change event applied while the pages are fetched is newer than what they say of
        // its device (see `Compliance::replace_all_fetched`).
        let fetch_started = std::time::Instant::now();
        let records = self.source.full_reusing(self.compliance.view()).await?;
        let current = self.compliance.view();
        if records.is_empty() && !current.is_empty() {
            return Err(SourceError::Implausible(format!(
                "an empty device list, while the view holds {} devices",
                current.len()
            )));
        }
        let count = records.len();
        let transitions =
            self.compliance
                .replace_all_fetched(records, ChangeSource::FullSync, fetch_started);
        tracing::info!(
            devices = count,
            transitions = transitions.len(),
            "full sync done"
        );
        Ok(())
    }

    async fn delta_sync(&self, since: SystemTime) -> Result<(), SourceError> {
        let fetch_started = std::time::Instant::now();
        let records = self.source.changed_since(since).await?;
        let count = records.len();
        let changes = records.into_iter().map(Change::Upsert).collect();
        let transitions =
            self.compliance
                .apply_fetched(changes, ChangeSource::DeltaSync, fetch_started);
        tracing::debug!(
            changed = count,
            transitions = transitions.len(),
            "delta sync done"
        );
        Ok(())
    }
}

/// First wait before saving again after a failed save; doubles up to [`SAVE_RETRY_MAX`].
const SAVE_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts to save after failures.
const SAVE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Saves the view after each change, coalescing bursts: at most one save runs at a time, and a
/// change made during a save is saved right after it. A failed save (a full or read-only disk)
/// is counted and tried again with backoff even when nothing changes, so that the file on disk
/// catches up once the disk is back: a restart must not load a view older than the one served
/// (an administrator's block set meanwhile would be lost).
async fn save_on_change(
    compliance: Compliance,
    mut changes: watch::Receiver<u64>,
    snapshot: Snapshot,
) {
    let mut retry: Option<Duration> = None;
    loop {
        match retry {
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            Some(wait) => {
                // Whichever comes first: the backoff, or a change (saved at once).
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        changes.mark_unchanged();
        let view = compliance.view();
        let to = snapshot.clone();
        let saved = match tokio::task::spawn_blocking(move || to.save(&view)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot save the compliance view; serving from memory, trying again");
                false
            }
            Err(error) => {
                tracing::error!(%error, "the snapshot writer failed; trying again");
                false
            }
        };
        if let Some(metrics) = compliance.metrics() {
            metrics.snapshot_save(saved);
        }
        retry = match (saved, retry) {
            (true, _) => None,
            (false, None) => Some(SAVE_RETRY_MIN),
            (false, Some(wait)) => Some((wait * 2).min(SAVE_RETRY_MAX)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceId;
    use crate::policy::PolicySettings;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_failed_snapshot_save_is_counted_and_tried_again_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        // The snapshot's directory is a regular file: every save fails until it is a directory.
        let parent = dir.path().join("state");
        std::fs::write(&parent, b"not a directory").unwrap();
        let path = parent.join("view.json");
        let metrics = crate::metrics::ComplianceMetrics::new();
        let compliance = Compliance::with_metrics(PolicySettings::default(), metrics.clone());
        let changes = compliance.watch_changes();
        let saver = tokio::spawn(save_on_change(
            compliance.clone(),
            changes,
            Snapshot::new(&path),
        ));
        compliance.replace_all(
            vec![DeviceRecord {
                device_id: DeviceId::new("A1"),
                ..Default::default()
            }],
            ChangeSource::FullSync,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.snapshot_saves(false) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failed save counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!path.exists());
        // The disk comes back; nothing changes in the view, yet the file is written.
        std::fs::remove_file(&parent).unwrap();
        std::fs::create_dir(&parent).unwrap();
        while metrics.snapshot_saves(true) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never saved again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let saved = Snapshot::new(&path).load().unwrap().expect("a saved view");
        assert_eq!(saved.devices.len(), 1);
        saver.abort();
    }

    /// A console of one device, counting full and delta syncs.
    #[derive(Debug, Default, Clone)]
    struct Counting {
        full: Arc<AtomicUsize>,
        delta: Arc<AtomicUsize>,
    }

    impl DeviceSource for Counting {
        async fn full(&self) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
            self.full.fetch_add(1, Ordering::SeqCst);
            Ok(vec![Arc::new(DeviceRecord {
                device_id: DeviceId::new("A1"),
                ..Default::default()
            })])
        }

        async fn changed_since(&self, _: SystemTime) -> Result<Vec<DeviceRecord>, SourceError> {
            self.delta.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_failed_sync_is_recorded_with_its_causes() {
        let handle = SyncHandle::default();
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        handle.record(Err(&SourceError::Unreachable(Box::new(refused))));
        assert_eq!(
            handle.status().last_error.as_deref(),
            Some("device source unreachable: connection refused")
        );
        handle.record(Ok(SyncKind::Full));
        assert_eq!(handle.status().last_error, None);
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_syncs_only_once_it_leads_and_stops_when_it_no_longer_does() {
        let compliance = Compliance::new(PolicySettings::default());
        let console = Counting::default();
        let (leader, leadership) = watch::channel(false);
        let syncer = Syncer::new(compliance.clone(), console.clone(), SyncSettings::default())
            .with_leadership(leadership);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(syncer.run(async move {
            let _ = stopped.await;
        }));

        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(
            console.full.load(Ordering::SeqCst),
            0,
            "a follower never syncs"
        );

        leader.send_replace(true);
        settle().await;
        assert_eq!(
            console.full.load(Ordering::SeqCst),
            1,
            "the new leader's view was never synced"
        );
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(console.delta.load(Ordering::SeqCst), 1);

        leader.send_replace(false);
        settle().await;
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(
            console.full.load(Ordering::SeqCst),
            1,
            "no syncs once it no longer leads"
        );
        assert_eq!(console.delta.load(Ordering::SeqCst), 1);
        let _ = stop.send(());
        running.await.unwrap();
    }

    /// A console whose first full sync answers `A1` only when told to; later ones answer
    /// `A2` at once.
    #[derive(Debug, Clone)]
    struct Held {
        answer: Arc<tokio::sync::Notify>,
        asked: Arc<AtomicUsize>,
    }

    impl DeviceSource for Held {
        async fn full(&self) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
            let device = if self.asked.fetch_add(1, Ordering::SeqCst) == 0 {
                self.answer.notified().await;
                "A1"
            } else {
                "A2"
            };
            Ok(vec![Arc::new(DeviceRecord {
                device_id: DeviceId::new(device),
                ..Default::default()
            })])
        }

        async fn changed_since(&self, _: SystemTime) -> Result<Vec<DeviceRecord>, SourceError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_fetched_under_one_leader_term_is_dropped_when_leadership_changes() {
        let compliance = Compliance::new(PolicySettings::default());
        let console = Held {
            answer: Arc::new(tokio::sync::Notify::new()),
            asked: Arc::default(),
        };
        let (leader, leadership) = watch::channel(true);
        let syncer = Syncer::new(compliance.clone(), console.clone(), SyncSettings::default())
            .with_leadership(leadership);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(syncer.run(async move {
            let _ = stopped.await;
        }));
        settle().await;
        assert_eq!(console.asked.load(Ordering::SeqCst), 1);

        // Lost and taken again (a new term) while the console answers: the syncer sees only
        // `true`, and the first answer is ready, yet the old term's sync is never applied.
        leader.send_replace(false);
        leader.send_replace(true);
        console.answer.notify_one();
        settle().await;
        let view = compliance.view();
        assert!(
            view.device("A1").is_none(),
            "the old term's answer was applied"
        );
        assert!(view.device("A2").is_some(), "the new term synced again");
        let _ = stop.send(());
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_goes_on_from_a_synced_shared_view_with_a_delta() {
        let compliance = Compliance::new(PolicySettings::default());
        // As read from the shared store: fully synced a minute ago.
        compliance.apply_replicated(
            crate::replicate::Update::Full(Arc::new(
                crate::view::View::default().synced(SystemTime::now() - Duration::from_secs(60)),
            )),
            ChangeSource::Snapshot,
        );
        let console = Counting::default();
        let (_leader, leadership) = watch::channel(true);
        let syncer = Syncer::new(compliance, console.clone(), SyncSettings::default())
            .with_leadership(leadership);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(syncer.run(async move {
            let _ = stopped.await;
        }));
        settle().await;
        assert_eq!(console.delta.load(Ordering::SeqCst), 1, "a delta at once");
        assert_eq!(
            console.full.load(Ordering::SeqCst),
            0,
            "no full sync before it is due"
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            console.full.load(Ordering::SeqCst),
            1,
            "the full sync when due"
        );
        let _ = stop.send(());
        running.await.unwrap();
    }
}
