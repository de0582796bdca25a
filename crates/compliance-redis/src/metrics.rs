//! What the shared view counts: whether Redis answers, its errors, the changes written and
//! read, the full reloads, the changes waiting to be written, whether this node leads, and the
//! sync results refused because it no longer did.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `seg_compliance_redis_up` | gauge | 1 while Redis answers, 0 while it does not |
//! | `seg_compliance_redis_errors_total` | counter | failed Redis commands or connections |
//! | `seg_compliance_redis_written_total` | counter | this node's changes written to Redis |
//! | `seg_compliance_redis_applied_total` | counter | log entries applied from Redis |
//! | `seg_compliance_redis_reloads_total` | counter | whole views read from Redis |
//! | `seg_compliance_redis_queued` | gauge | this node's changes not written yet |
//! | `seg_compliance_redis_leader` | gauge | 1 while this node leads (runs the syncs) |
//! | `seg_compliance_redis_fenced_total` | counter | this node's sync results refused: it no longer held the leader lock |
//! | `seg_compliance_redis_held_back_total` | counter | devices a sync result of this node left alone: another node's change event, newer than the sync's view, stands |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The shared view's metrics; cheap to clone, every clone counts into the same metrics.
#[derive(Clone, Debug, Default)]
pub struct RedisMetrics {
    pub(crate) up: Gauge,
    pub(crate) errors: Counter,
    pub(crate) written: Counter,
    pub(crate) applied: Counter,
    pub(crate) reloads: Counter,
    pub(crate) queued: Gauge,
    pub(crate) leader: Gauge,
    pub(crate) fenced: Counter,
    pub(crate) held_back: Counter,
}

impl RedisMetrics {
    /// Metrics at zero, registered nowhere yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every metric of the [module docs](self) to `registry`. Register once per registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "seg_compliance_redis_up",
            "1 while Redis answers, 0 while it does not",
            self.up.clone(),
        );
        registry.register(
            "seg_compliance_redis_errors",
            "Failed Redis commands or connections",
            self.errors.clone(),
        );
        registry.register(
            "seg_compliance_redis_written",
            "Changes made on this node written to Redis",
            self.written.clone(),
        );
        registry.register(
            "seg_compliance_redis_applied",
            "Change-log entries applied from Redis",
            self.applied.clone(),
        );
        registry.register(
            "seg_compliance_redis_reloads",
            "Whole views read from Redis",
            self.reloads.clone(),
        );
        registry.register(
            "seg_compliance_redis_queued",
            "Changes made on this node not written to Redis yet",
            self.queued.clone(),
        );
        registry.register(
            "seg_compliance_redis_leader",
            "1 while this node leads the shared view (runs the syncs)",
            self.leader.clone(),
        );
        registry.register(
            "seg_compliance_redis_fenced",
            "Sync results of this node refused because it no longer held the leader lock",
            self.fenced.clone(),
        );
        registry.register(
            "seg_compliance_redis_held_back",
            "Devices a sync result of this node left alone: another node's change event, newer than the sync's view, stands",
            self.held_back.clone(),
        );
    }
}
