//! Prometheus metrics of the trail: entries written, entries lost and why, entries purged.
//!
//! No global registry: the binary creates one and calls [`AuditMetrics::register`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `seg_audit_entries_written_total` | counter | |
//! | `seg_audit_entries_lost_total` | counter | `cause`: `queue-full` (the queue was full), `lagged` (the transition feed outran the trail), `closed` (recorded after the trail was closed), `write-failed` (the store refused a batch) |
//! | `seg_audit_entries_purged_total` | counter | (deleted by retention) |
//!
//! Counting a loss is one relaxed atomic add: every labelled counter is made up front.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Why an entry was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Loss {
    /// The queue to the writer was full.
    QueueFull,
    /// The compliance transition feed ran ahead of the trail's reader.
    Lagged,
    /// The trail was already closed.
    Closed,
    /// The store refused the batch it was in.
    WriteFailed,
}

impl Loss {
    const ALL: [Loss; 4] = [
        Loss::QueueFull,
        Loss::Lagged,
        Loss::Closed,
        Loss::WriteFailed,
    ];

    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::QueueFull => "queue-full",
            Loss::Lagged => "lagged",
            Loss::Closed => "closed",
            Loss::WriteFailed => "write-failed",
        }
    }

    fn index(self) -> usize {
        match self {
            Loss::QueueFull => 0,
            Loss::Lagged => 1,
            Loss::Closed => 2,
            Loss::WriteFailed => 3,
        }
    }
}

/// The trail's metrics; cheap to clone, every clone counts into the same counters.
#[derive(Clone, Debug, Default)]
pub struct AuditMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    written: Counter,
    lost_family: Family<[(&'static str, &'static str); 1], Counter>,
    lost: [Counter; 4],
    purged: Counter,
}

impl Default for Inner {
    fn default() -> Self {
        let lost_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let lost = Loss::ALL.map(|loss| {
            lost_family
                .get_or_create(&[("cause", loss.as_str())])
                .clone()
        });
        Inner {
            written: Counter::default(),
            lost_family,
            lost,
            purged: Counter::default(),
        }
    }
}

impl AuditMetrics {
    /// Metrics at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the metrics of the [module docs](self) to `registry`. Register once per registry.
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        registry.register(
            "seg_audit_entries_written",
            "Audit entries written to the store",
            inner.written.clone(),
        );
        registry.register(
            "seg_audit_entries_lost",
            "Audit entries lost, by cause",
            inner.lost_family.clone(),
        );
        registry.register(
            "seg_audit_entries_purged",
            "Audit entries deleted by retention",
            inner.purged.clone(),
        );
    }

    /// Entries written so far.
    pub fn written(&self) -> u64 {
        self.inner.written.get()
    }

    /// Entries lost so far for `cause`.
    pub fn lost(&self, cause: Loss) -> u64 {
        self.inner.lost[cause.index()].get()
    }

    /// Entries lost so far, all causes.
    pub fn lost_total(&self) -> u64 {
        self.inner.lost.iter().map(Counter::get).sum()
    }

    /// Entries purged so far.
    pub fn purged(&self) -> u64 {
        self.inner.purged.get()
    }

    pub(crate) fn count_written(&self, n: u64) {
        self.inner.written.inc_by(n);
    }

    pub(crate) fn count_lost(&self, cause: Loss, n: u64) {
        self.inner.lost[cause.index()].inc_by(n);
    }

    pub(crate) fn count_purged(&self, n: u64) {
        self.inner.purged.inc_by(n);
    }
}
