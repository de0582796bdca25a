//! Prometheus metrics of the compliance side: decisions, syncs, transitions, change events, ENS
//! callbacks, and the view as it is at scrape time.
//!
//! There is no global registry: the binary creates a [`Registry`], builds the state with
//! [`Compliance::with_metrics`], and calls [`ComplianceMetrics::register`]. Everything that works
//! on that state then counts into it: the enforcement layer, the [`Syncer`](crate::sync::Syncer),
//! the change-event webhook of the [admin API](crate::admin), the
//! [`EnsNotifier`](crate::notify::EnsNotifier), and [`Compliance`] itself for transitions.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `seg_compliance_decisions_total` | counter | `result` (`allowed`\|`blocked`), `reason` (the reason code) |
//! | `seg_compliance_sync_total` | counter | `kind` (`full`\|`delta`), `outcome` (`success`\|`failure`) |
//! | `seg_compliance_last_full_sync_timestamp_seconds` | gauge | Unix time of this process's last successful full sync, `0` before it |
//! | `seg_compliance_sync_age_seconds` | gauge | age of the view's data (its last full sync, also from a saved view); absent until there is one |
//! | `seg_compliance_view_devices` | gauge | devices in the view |
//! | `seg_compliance_open_streams` | gauge | long-lived responses open now |
//! | `seg_compliance_transitions_total` | counter | `to` (`blocked`\|`allowed`), `source` (`full-sync`\|`delta-sync`\|`change-event`\|`override`\|`snapshot`) |
//! | `seg_compliance_webhook_events_total` | counter | `outcome` (`applied`\|`refused`\|`malformed`) |
//! | `seg_ens_callbacks_total` | counter | `outcome` (`delivered`\|`failed`) |
//! | `seg_compliance_snapshot_saves_total` | counter | `outcome` (`success`\|`failure`): saves of the view to `compliance.snapshot` |
//!
//! Counting a decision is on the path of every request, so it takes no lock, allocates nothing
//! and hashes nothing: every labelled counter is created up front in its [`Family`] (whose
//! `Counter`s share their value with the clones kept here), and a decision increments the clone
//! at its reason's [`index`](BlockReason::index) in a fixed array: one relaxed atomic add. The
//! family is read (under its lock) only when scraped. The view gauges are read at scrape time by
//! a [`Collector`], so they are never stale and cost nothing between scrapes.
//!
//! ```
//! use compliance_policy::metrics::ComplianceMetrics;
//! use compliance_policy::policy::{Override, PolicySettings};
//! use compliance_policy::state::{ChangeSource, Compliance};
//! use prometheus_client::registry::Registry;
//!
//! let metrics = ComplianceMetrics::new();
//! let mut registry = Registry::default();
//! metrics.register(&mut registry);
//! let compliance = Compliance::with_metrics(PolicySettings::default(), metrics);
//! compliance.replace_all(Vec::new(), ChangeSource::FullSync);
//! // The console does not know the lab phone; an administrator allows it.
//! compliance.set_device_override("LAB1", Some(Override::Allow));
//! assert!(compliance.decide(Some("LAB1"), None).is_allowed());
//!
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains(r#"seg_compliance_transitions_total{to="allowed",source="override"} 1"#));
//! assert!(text.contains("seg_compliance_view_devices 0"));
//! assert!(text.contains("seg_compliance_open_streams 0"));
//! ```

use crate::policy::{AllowReason, BlockReason, Decision};
use crate::state::{ChangeSource, Compliance, WeakCompliance};
use crate::sync::SyncKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// A label set known when the metrics are created.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Every change source, at the index [`source_index`] gives it.
const SOURCES: [ChangeSource; 5] = [
    ChangeSource::FullSync,
    ChangeSource::DeltaSync,
    ChangeSource::ChangeEvent,
    ChangeSource::Override,
    ChangeSource::Snapshot,
];

fn source_index(source: ChangeSource) -> usize {
    match source {
        ChangeSource::FullSync => 0,
        ChangeSource::DeltaSync => 1,
        ChangeSource::ChangeEvent => 2,
        ChangeSource::Override => 3,
        ChangeSource::Snapshot => 4,
    }
}

fn source_label(source: ChangeSource) -> &'static str {
    match source {
        ChangeSource::FullSync => "full-sync",
        ChangeSource::DeltaSync => "delta-sync",
        ChangeSource::ChangeEvent => "change-event",
        ChangeSource::Override => "override",
        ChangeSource::Snapshot => "snapshot",
    }
}

/// What became of a change event sent to the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WebhookOutcome {
    /// Parsed and applied to the view.
    Applied,
    /// Refused before parsing: no or wrong secret, bad signature, too large, unreadable.
    Refused,
    /// Authenticated, but the parser refused it.
    Malformed,
}

const WEBHOOK_OUTCOMES: [&str; 3] = ["applied", "refused", "malformed"];

/// The compliance metrics; see the [module docs](self). Cheap to clone: every clone counts into
/// the same counters.
#[derive(Clone)]
pub struct ComplianceMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    decisions: Family<Labels<2>, Counter>,
    allowed: [Counter; AllowReason::ALL.len()],
    blocked: [Counter; BlockReason::ALL.len()],
    syncs: Family<Labels<2>, Counter>,
    /// `[full, delta][success, failure]`.
    sync_outcomes: [[Counter; 2]; 2],
    last_full_sync: Gauge,
    transitions: Family<Labels<2>, Counter>,
    /// `[blocked, allowed][source]`.
    transition_counts: [[Counter; SOURCES.len()]; 2],
    webhook: Family<Labels<1>, Counter>,
    webhook_outcomes: [Counter; WEBHOOK_OUTCOMES.len()],
    ens: Family<Labels<1>, Counter>,
    /// `[delivered, failed]`.
    ens_outcomes: [Counter; 2],
    snapshot_saves: Family<Labels<1>, Counter>,
    /// `[success, failure]`.
    snapshot_outcomes: [Counter; 2],
    /// The state whose view the scrape-time gauges read; weak, as that state holds these metrics.
    view: OnceLock<WeakCompliance>,
}

impl Default for ComplianceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ComplianceMetrics {
    /// Metrics with every counter at zero, attached to no state yet.
    pub fn new() -> Self {
        let decisions = Family::<Labels<2>, Counter>::default();
        let allowed = std::array::from_fn(|i| {
            let reason = AllowReason::ALL[i].as_str();
            decisions
                .get_or_create(&[("result", "allowed"), ("reason", reason)])
                .clone()
        });
        let blocked = std::array::from_fn(|i| {
            let reason = BlockReason::ALL[i].as_str();
            decisions
                .get_or_create(&[("result", "blocked"), ("reason", reason)])
                .clone()
        });
        let syncs = Family::<Labels<2>, Counter>::default();
        let sync_outcomes = [("kind", "full"), ("kind", "delta")].map(|kind| {
            [("outcome", "success"), ("outcome", "failure")]
                .map(|outcome| syncs.get_or_create(&[kind, outcome]).clone())
        });
        let transitions = Family::<Labels<2>, Counter>::default();
        let transition_counts = ["blocked", "allowed"].map(|to| {
            SOURCES.map(|source| {
                transitions
                    .get_or_create(&[("to", to), ("source", source_label(source))])
                    .clone()
            })
        });
        let webhook = Family::<Labels<1>, Counter>::default();
        let webhook_outcomes =
            WEBHOOK_OUTCOMES.map(|outcome| webhook.get_or_create(&[("outcome", outcome)]).clone());
        let ens = Family::<Labels<1>, Counter>::default();
        let ens_outcomes = ["delivered", "failed"]
            .map(|outcome| ens.get_or_create(&[("outcome", outcome)]).clone());
        let snapshot_saves = Family::<Labels<1>, Counter>::default();
        let snapshot_outcomes = ["success", "failure"].map(|outcome| {
            snapshot_saves
                .get_or_create(&[("outcome", outcome)])
                .clone()
        });
        ComplianceMetrics {
            inner: Arc::new(Inner {
                decisions,
                allowed,
                blocked,
                syncs,
                sync_outcomes,
                last_full_sync: Gauge::default(),
                transitions,
                transition_counts,
                webhook,
                webhook_outcomes,
                ens,
                ens_outcomes,
                snapshot_saves,
                snapshot_outcomes,
                view: OnceLock::new(),
            }),
        }
    }

    /// Adds every metric of the [module docs](self) to `registry`. Register once per registry.
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "seg_compliance_decisions",
            "Requests decided by the compliance layer, by result and reason",
            inner.decisions.clone(),
        );
        registry.register(
            "seg_compliance_sync",
            "Syncs with the management console, by kind and outcome",
            inner.syncs.clone(),
        );
        registry.register_with_unit(
            "seg_compliance_last_full_sync_timestamp",
            "Unix time of the last successful full sync by this process (0: none yet)",
            Unit::Seconds,
            inner.last_full_sync.clone(),
        );
        registry.register(
            "seg_compliance_transitions",
            "Devices whose decision changed, by new state and cause",
            inner.transitions.clone(),
        );
        registry.register(
            "seg_compliance_webhook_events",
            "Change events received on the webhook, by outcome",
            inner.webhook.clone(),
        );
        registry.register(
            "seg_ens_callbacks",
            "Transitions told to ENS (delivered) or given up on or missed (failed)",
            inner.ens.clone(),
        );
        registry.register(
            "seg_compliance_snapshot_saves",
            "Saves of the view to the snapshot file, by outcome",
            inner.snapshot_saves.clone(),
        );
        registry.register_collector(Box::new(ViewGauges(self.inner.clone())));
    }

    /// Has the scrape-time gauges read `compliance`'s view. The first state attached stays.
    pub(crate) fn attach(&self, compliance: &Compliance) {
        if self.inner.view.set(compliance.downgrade()).is_err() {
            tracing::warn!(
                "compliance metrics attached to a second state; they keep reporting the first one's view"
            );
        }
    }

    /// Counts one decided request. The hot path: one relaxed atomic add.
    #[inline]
    pub(crate) fn decision(&self, decision: Decision) {
        let counter = match decision {
            Decision::Allow(reason) => self.inner.allowed.get(reason.index()),
            Decision::Block(reason) => self.inner.blocked.get(reason.index()),
        };
        if let Some(counter) = counter {
            counter.inc();
        }
    }

    /// Requests decided so far, allowed and blocked, every reason: the sum of
    /// `seg_compliance_decisions_total` (relaxed atomic reads, no lock), for rates such as the
    /// console's decisions per second.
    pub fn decisions_total(&self) -> u64 {
        self.inner
            .allowed
            .iter()
            .chain(self.inner.blocked.iter())
            .map(Counter::get)
            .sum()
    }

    /// Counts one save of the view to the snapshot file.
    pub(crate) fn snapshot_save(&self, success: bool) {
        self.inner.snapshot_outcomes[usize::from(!success)].inc();
    }

    /// Saves of the view counted so far that succeeded (`true`) or failed (`false`).
    pub fn snapshot_saves(&self, success: bool) -> u64 {
        self.inner.snapshot_outcomes[usize::from(!success)].get()
    }

    /// Counts one sync; a successful full sync also sets the last-full-sync time.
    pub(crate) fn sync(&self, kind: SyncKind, success: bool) {
        let kind_index = match kind {
            SyncKind::Full => 0,
            SyncKind::Delta => 1,
        };
        self.inner.sync_outcomes[kind_index][usize::from(!success)].inc();
        if success && kind == SyncKind::Full {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.inner.last_full_sync.set(now);
        }
    }

    /// Counts one transition to `after`, caused by `source`.
    pub(crate) fn transition(&self, after: &Decision, source: ChangeSource) {
        let to = usize::from(after.is_allowed());
        self.inner.transition_counts[to][source_index(source)].inc();
    }

    /// Counts one change event by what became of it.
    pub(crate) fn webhook_event(&self, outcome: WebhookOutcome) {
        let index = match outcome {
            WebhookOutcome::Applied => 0,
            WebhookOutcome::Refused => 1,
            WebhookOutcome::Malformed => 2,
        };
        self.inner.webhook_outcomes[index].inc();
    }

    /// Counts a transition told to ENS.
    pub(crate) fn ens_delivered(&self) {
        self.inner.ens_outcomes[0].inc();
    }

    /// Counts `count` transitions ENS was not told of (retries exhausted, or missed).
    pub(crate) fn ens_failed(&self, count: u64) {
        self.inner.ens_outcomes[1].inc_by(count);
    }
}

impl fmt::Debug for ComplianceMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComplianceMetrics")
            .field("attached", &self.inner.view.get().is_some())
            .finish_non_exhaustive()
    }
}

/// The gauges read from the view at scrape time.
struct ViewGauges(Arc<Inner>);

impl fmt::Debug for ViewGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ViewGauges")
    }
}

impl Collector for ViewGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // Nothing to report before a state is attached, or after it is gone.
        let Some(compliance) = self.0.view.get().and_then(WeakCompliance::upgrade) else {
            return Ok(());
        };
        let view = compliance.view();
        let devices = ConstGauge::new(i64::try_from(view.len()).unwrap_or(i64::MAX));
        devices.encode(encoder.encode_descriptor(
            "seg_compliance_view_devices",
            "Devices in the compliance view",
            None,
            devices.metric_type(),
        )?)?;
        let streams = ConstGauge::new(i64::try_from(compliance.open_streams()).unwrap_or(i64::MAX));
        streams.encode(encoder.encode_descriptor(
            "seg_compliance_open_streams",
            "Responses open now that a block cuts at once (streaming subscriptions, ActiveSync Ping and Sync, EWS requests of unknown operation)",
            None,
            streams.metric_type(),
        )?)?;
        if let Some(synced_at) = view.synced_at() {
            let age = SystemTime::now()
                .duration_since(synced_at)
                .map_or(0.0, |age| age.as_secs_f64());
            let age = ConstGauge::new(age);
            age.encode(encoder.encode_descriptor(
                "seg_compliance_sync_age",
                "Seconds since the view's data was last fully synced with the console",
                Some(&Unit::Seconds),
                age.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
    use crate::policy::{Override, PolicySettings};
    use crate::view::Change;

    fn registered() -> (ComplianceMetrics, Registry) {
        let metrics = ComplianceMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        (metrics, registry)
    }

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    /// The sample lines (no comments) whose value is not zero.
    fn nonzero(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.ends_with(" 0"))
            .collect();
        lines.sort_unstable();
        lines
    }

    fn phone(id: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some("alice@test.local".into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_decision_increments_exactly_its_counter() {
        let (metrics, registry) = registered();
        metrics.decision(Decision::Block(BlockReason::EnterpriseWiped));
        metrics.decision(Decision::Block(BlockReason::EnterpriseWiped));
        metrics.decision(Decision::Allow(AllowReason::Compliant));
        assert_eq!(
            nonzero(&encoded(&registry)),
            [
                r#"seg_compliance_decisions_total{result="allowed",reason="compliant"} 1"#,
                r#"seg_compliance_decisions_total{result="blocked",reason="enterprise-wiped"} 2"#,
            ]
        );
    }

    #[test]
    fn every_series_is_exposed_from_the_start_at_zero() {
        let (_metrics, registry) = registered();
        let text = encoded(&registry);
        for reason in BlockReason::ALL {
            let line = format!(
                r#"seg_compliance_decisions_total{{result="blocked",reason="{reason}"}} 0"#
            );
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        for line in [
            "# TYPE seg_compliance_decisions counter",
            r#"seg_compliance_decisions_total{result="allowed",reason="unknown-device-allowed"} 0"#,
            r#"seg_compliance_sync_total{kind="delta",outcome="failure"} 0"#,
            "# UNIT seg_compliance_last_full_sync_timestamp_seconds seconds",
            "seg_compliance_last_full_sync_timestamp_seconds 0",
            r#"seg_compliance_transitions_total{to="blocked",source="snapshot"} 0"#,
            r#"seg_compliance_webhook_events_total{outcome="malformed"} 0"#,
            r#"seg_ens_callbacks_total{outcome="failed"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // No state attached: no view gauges.
        assert!(!text.contains("seg_compliance_view_devices"), "{text}");
    }

    #[test]
    fn syncs_webhook_events_and_callbacks_are_counted_by_outcome() {
        let (metrics, registry) = registered();
        metrics.sync(SyncKind::Full, true);
        metrics.sync(SyncKind::Delta, false);
        metrics.webhook_event(WebhookOutcome::Refused);
        metrics.ens_delivered();
        metrics.ens_failed(3);
        let text = encoded(&registry);
        let lines = nonzero(&text);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("seg_compliance_last_full_sync_timestamp_seconds 1"));
        assert_eq!(
            lines[1..],
            [
                r#"seg_compliance_sync_total{kind="delta",outcome="failure"} 1"#,
                r#"seg_compliance_sync_total{kind="full",outcome="success"} 1"#,
                r#"seg_compliance_webhook_events_total{outcome="refused"} 1"#,
                r#"seg_ens_callbacks_total{outcome="delivered"} 1"#,
                r#"seg_ens_callbacks_total{outcome="failed"} 3"#,
            ]
        );
    }

    #[test]
    fn transitions_and_the_view_are_read_from_the_attached_state() {
        let (metrics, registry) = registered();
        let compliance = Compliance::with_metrics(PolicySettings::default(), metrics);
        compliance.replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
        let wiped = DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1")
        };
        compliance.apply(vec![Change::Upsert(wiped)], ChangeSource::ChangeEvent);
        compliance.set_device_override("A1", Some(Override::Allow));
        let _stream = compliance.register_stream(Some("A2"), None);

        let text = encoded(&registry);
        for line in [
            r#"seg_compliance_transitions_total{to="blocked",source="change-event"} 1"#,
            r#"seg_compliance_transitions_total{to="allowed",source="override"} 1"#,
            "seg_compliance_view_devices 2",
            "seg_compliance_open_streams 1",
            "# TYPE seg_compliance_sync_age_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("seg_compliance_sync_age_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..60.0).contains(&age), "{age}");

        drop(compliance);
        drop(_stream);
        assert!(
            !encoded(&registry).contains("seg_compliance_view_devices"),
            "a dropped state is not kept alive by its metrics"
        );
    }
}
