//! The producers' side: [`AuditSink`], a cheap handle that queues records without ever waiting.

use crate::entry::Record;
use crate::metrics::{AuditMetrics, Loss};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often, at most, a loss is logged (every loss is counted).
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where producers hand records to the trail. Cheap to clone; every clone feeds the same queue.
///
/// [`record`](Self::record) never waits: when the queue is full the record is dropped, counted
/// in `seg_audit_entries_lost_total{cause="queue-full"}` and logged (at most once every ten
/// seconds), so that a slow disk never slows a request.
#[derive(Clone, Debug)]
pub struct AuditSink {
    queue: mpsc::Sender<Record>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    metrics: AuditMetrics,
    /// When the trail started, the origin of `last_warned`.
    started: Instant,
    /// Milliseconds after `started` of the last loss logged, plus one (0: never).
    last_warned: AtomicU64,
}

impl AuditSink {
    /// A sink feeding a queue of `capacity` records, and that queue's receiving end.
    pub(crate) fn channel(
        capacity: usize,
        metrics: AuditMetrics,
    ) -> (Self, mpsc::Receiver<Record>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let sink = AuditSink {
            queue,
            shared: Arc::new(Shared {
                metrics,
                started: Instant::now(),
                last_warned: AtomicU64::new(0),
            }),
        };
        (sink, receiver)
    }

    /// Queues `record` for writing; `false` when it was lost (queue full, trail closed).
    /// Never waits.
    pub fn record(&self, record: Record) -> bool {
        match self.queue.try_send(record) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(record)) => {
                self.lost(Loss::QueueFull, 1, record.event.kind());
                false
            }
            Err(mpsc::error::TrySendError::Closed(record)) => {
                self.lost(Loss::Closed, 1, record.event.kind());
                false
            }
        }
    }

    /// The trail's metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.shared.metrics
    }

    /// Counts `n` entries lost for `cause`, and logs it unless a loss was logged in the last
    /// ten seconds.
    pub(crate) fn lost(&self, cause: Loss, n: u64, kind: &str) {
        let metrics = &self.shared.metrics;
        metrics.count_lost(cause, n);
        let now = u64::try_from(self.shared.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.shared.last_warned.load(Ordering::Relaxed);
        let quiet = u64::try_from(LOSS_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= quiet)
            && self
                .shared
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                cause = cause.as_str(),
                kind,
                lost = n,
                lost_total = metrics.lost_total(),
                "audit entries lost (logged at most every 10 s; counted in seg_audit_entries_lost_total)"
            );
        }
    }
}
