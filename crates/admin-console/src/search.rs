//! The device list's search over the compliance view, and the overview's blocked count.
//!
//! An exact EAS device id or UPN is looked up through the view's indexes ([`View::device`],
//! [`View::devices_of_user`]): no scan, whatever the view's size. Anything else (a part of an id,
//! a user, a model or a platform, or an empty search) walks the view once, keeping only the
//! devices up to the asked page in a bounded heap (ordered by device id), never a copy of every
//! match. The blocked count is a walk too, but the console keeps it until the view changes.

use crate::pages::DeviceRow;
use compliance_policy::device::DeviceRecord;
use compliance_policy::policy::{Decision, PolicySettings};
use compliance_policy::state::Compliance;
use compliance_policy::view::View;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the device list asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Search {
    /// The search text, trimmed; empty: every device.
    pub(crate) q: String,
    /// Only substring matches, even when `q` is an exact device id or UPN.
    pub(crate) contains: bool,
    /// `Some(true)`: allowed only; `Some(false)`: blocked only.
    pub(crate) filter: Option<bool>,
    /// From 1.
    pub(crate) page: usize,
    /// Devices per page.
    pub(crate) per_page: usize,
}

/// One page of the result.
#[derive(Default)]
pub(crate) struct Found {
    /// Devices matching in all.
    pub(crate) total: usize,
    /// The page's devices, by device id.
    pub(crate) rows: Vec<DeviceRow>,
    /// The search matched a device id or UPN exactly, through the view's indexes.
    pub(crate) exact: bool,
}

/// The clock the decisions are made at, as `Compliance::decide` reads it (only the inactivity
/// policy needs it).
pub(crate) fn now_for(policy: &PolicySettings) -> u64 {
    if policy.inactivity_days > 0 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    } else {
        0
    }
}

/// The decision for `record` in `view`, as the enforcement layer would make it now.
pub(crate) fn decide(
    view: &View,
    policy: &PolicySettings,
    now: u64,
    record: &DeviceRecord,
) -> Decision {
    policy.decide_for(
        Some(record.device_id.as_str()),
        Some(record),
        None,
        view.overrides(),
        now,
    )
}

/// A record ordered by its device id, for the bounded heap.
struct ById(Arc<DeviceRecord>, Option<Decision>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.device_id == other.0.device_id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.device_id.cmp(&other.0.device_id)
    }
}

/// Runs `search` over `view`, deciding with `policy` at `now`.
pub(crate) fn search(view: &View, policy: &PolicySettings, now: u64, search: &Search) -> Found {
    let page = search.page.max(1);
    let keep = page.saturating_mul(search.per_page);
    let wanted = |decision: &Decision| {
        search
            .filter
            .is_none_or(|allowed| decision.is_allowed() == allowed)
    };
    // Exact: a device id, or a user's UPN (only a name with an `@` is asked of the user index).
    if !search.contains && !search.q.is_empty() {
        let mut exact: Vec<&Arc<DeviceRecord>> = view.device(&search.q).into_iter().collect();
        if exact.is_empty() && search.q.contains('@') {
            exact = view.devices_of_user(&search.q);
        }
        if !exact.is_empty() {
            let mut rows: Vec<DeviceRow> = exact
                .into_iter()
                .map(|record| DeviceRow {
                    decision: decide(view, policy, now, record),
                    record: record.clone(),
                })
                .filter(|row| wanted(&row.decision))
                .collect();
            rows.sort_unstable_by(|a, b| a.record.device_id.cmp(&b.record.device_id));
            let total = rows.len();
            let rows = rows
                .into_iter()
                .skip((page - 1) * search.per_page)
                .take(search.per_page)
                .collect();
            return Found {
                total,
                rows,
                exact: true,
            };
        }
    }
    // A walk of the view, keeping the `keep` smallest device ids in a max-heap.
    let needle = search.q.to_lowercase();
    let contains = |value: Option<&str>| {
        value.is_some_and(|value| {
            // Most fields are ASCII: compare without allocating when they are.
            if needle.is_empty() {
                true
            } else if value.is_ascii() && needle.is_ascii() {
                value
                    .as_bytes()
                    .windows(needle.len())
                    .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
            } else {
                value.to_lowercase().contains(&needle)
            }
        })
    };
    let mut heap: BinaryHeap<ById> = BinaryHeap::with_capacity(keep.min(1 << 16) + 1);
    let mut total = 0;
    for record in view.devices() {
        let matches = needle.is_empty()
            || contains(Some(record.device_id.as_str()))
            || contains(record.user.as_deref())
            || contains(record.model.as_deref())
            || contains(record.platform.as_deref());
        if !matches {
            continue;
        }
        let decision = match search.filter {
            Some(_) => {
                let decision = decide(view, policy, now, record);
                if !wanted(&decision) {
                    continue;
                }
                Some(decision)
            }
            None => None,
        };
        total += 1;
        if heap.len() < keep {
            heap.push(ById(record.clone(), decision));
        } else if heap
            .peek()
            .is_some_and(|largest| record.device_id < largest.0.device_id)
        {
            heap.pop();
            heap.push(ById(record.clone(), decision));
        }
    }
    let rows = heap
        .into_sorted_vec()
        .into_iter()
        .skip((page - 1) * search.per_page)
        .map(|ById(record, decision)| DeviceRow {
            decision: decision.unwrap_or_else(|| decide(view, policy, now, &record)),
            record,
        })
        .collect();
    Found {
        total,
        rows,
        exact: false,
    }
}

/// How long a blocked count stays when decisions depend on the time (the inactivity policy).
const TIMED_COUNT_TTL: Duration = Duration::from_secs(60);

/// The overview's blocked count, kept until the view or the policy changes (and for at most
/// [`TIMED_COUNT_TTL`] when the inactivity policy makes decisions depend on the time). Cheap to
/// clone; clones share the count.
#[derive(Clone, Default)]
pub(crate) struct BlockedCount {
    cached: Arc<Mutex<Option<CachedCount>>>,
}

struct CachedCount {
    version: u64,
    policy: Arc<PolicySettings>,
    at: Instant,
    blocked: usize,
}

impl BlockedCount {
    /// The devices `compliance` blocks now: counted again only when its view or policy changed
    /// since the last count.
    pub(crate) fn get(&self, compliance: &Compliance) -> usize {
        // The version first: the view read after it is at least as new, so a count is never
        // kept under a version newer than its view.
        let version = *compliance.watch_changes().borrow();
        let policy = compliance.policy();
        {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cached) = cached.as_ref()
                && cached.version == version
                && Arc::ptr_eq(&cached.policy, &policy)
                && (policy.inactivity_days == 0 || cached.at.elapsed() < TIMED_COUNT_TTL)
            {
                return cached.blocked;
            }
        }
        let view = compliance.view();
        let blocked = blocked(&view, &policy, now_for(&policy));
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedCount {
            version,
            policy,
            at: Instant::now(),
            blocked,
        });
        blocked
    }
}

impl std::fmt::Debug for BlockedCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self
            .cached
            .lock()
            .map_or(None, |c| c.as_ref().map(|c| c.blocked));
        f.debug_struct("BlockedCount")
            .field("cached", &cached)
            .finish()
    }
}

/// The devices of `view` that `policy` blocks at `now`: one walk.
pub(crate) fn blocked(view: &View, policy: &PolicySettings, now: u64) -> usize {
    view.devices()
        .filter(|record| !decide(view, policy, now, record).is_allowed())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use compliance_policy::device::{ComplianceStatus, DeviceId, Enrollment};
    use compliance_policy::policy::Overrides;

    fn record(id: &str, user: &str, model: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some(user.into()),
            model: Some(model.into()),
            platform: Some("iOS".into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            ..DeviceRecord::default()
        }
    }

    /// `n` devices `DEV000000`…, two per user, every tenth wiped.
    fn view(n: usize) -> View {
        View::from_records(
            (0..n).map(|i| {
                let mut device = record(
                    &format!("DEV{i:06}"),
                    &format!("user{}@test.local", i / 2),
                    "Pixel",
                );
                if i % 10 == 0 {
                    device.enrollment = Enrollment::EnterpriseWiped;
                }
                device
            }),
            Overrides::default(),
        )
    }

    fn ask(view: &View, q: &str, contains: bool, filter: Option<bool>, page: usize) -> Found {
        search(
            view,
            &PolicySettings::default(),
            0,
            &Search {
                q: q.into(),
                contains,
                filter,
                page,
                per_page: 50,
            },
        )
    }

    fn ids(found: &Found) -> Vec<&str> {
        found
            .rows
            .iter()
            .map(|row| row.record.device_id.as_str())
            .collect()
    }

    #[test]
    fn an_exact_device_id_or_upn_is_looked_up_not_searched() {
        let view = view(1000);
        let found = ask(&view, "dev000012", false, None, 1);
        assert!(found.exact);
        assert_eq!((found.total, ids(&found)), (1, vec!["DEV000012"]));
        // Asked as a part: every id containing it.
        let found = ask(&view, "DEV00001", true, None, 1);
        assert!(!found.exact);
        assert_eq!(found.total, 10);
        let found = ask(&view, "User6@Test.Local", false, None, 1);
        assert!(found.exact);
        assert_eq!(ids(&found), ["DEV000012", "DEV000013"]);
        let found = ask(&view, "user5@test.local", false, Some(true), 1);
        assert_eq!(ids(&found), ["DEV000011"], "DEV000010 is wiped");
        // Not an exact id or user: a substring search.
        let found = ask(&view, "DEV00099", false, None, 1);
        assert!(!found.exact);
        assert_eq!(found.total, 10);
    }

    #[test]
    fn a_walk_pages_by_device_id_and_filters_by_decision() {
        let view = view(1000);
        let found = ask(&view, "", false, None, 3);
        assert_eq!(found.total, 1000);
        assert_eq!(found.rows.len(), 50);
        assert_eq!(ids(&found)[0], "DEV000100");
        assert_eq!(ids(&found)[49], "DEV000149");
        let found = ask(&view, "pixel", false, Some(false), 2);
        assert_eq!(found.total, 100);
        assert_eq!(ids(&found)[0], "DEV000500");
        assert!(found.rows.iter().all(|row| !row.decision.is_allowed()));
        let found = ask(&view, "", false, None, 21);
        assert_eq!((found.total, found.rows.len()), (1000, 0), "past the end");
        assert_eq!(blocked(&view, &PolicySettings::default(), 0), 100);
    }

    #[test]
    fn the_blocked_count_is_kept_until_the_view_changes() {
        use compliance_policy::state::ChangeSource;
        use compliance_policy::view::Change;
        let compliance = Compliance::new(PolicySettings::default());
        compliance.replace_all(
            vec![
                record("A", "a@test.local", "Pixel"),
                record("B", "b@test.local", "Pixel"),
            ],
            ChangeSource::FullSync,
        );
        let counts = BlockedCount::default();
        assert_eq!(counts.get(&compliance), 0);
        let mut wiped = record("A", "a@test.local", "Pixel");
        wiped.enrollment = Enrollment::EnterpriseWiped;
        compliance.apply(vec![Change::Upsert(wiped)], ChangeSource::ChangeEvent);
        assert_eq!(counts.get(&compliance), 1, "counted again after the change");
        compliance.set_device_override("B", Some(compliance_policy::policy::Override::Block));
        assert_eq!(
            counts.get(&compliance),
            2,
            "an override changes the view too"
        );
        // Unchanged: the kept count (a stale one put in its place shows it is not recounted).
        counts.cached.lock().unwrap().as_mut().unwrap().blocked = 7;
        assert_eq!(counts.get(&compliance), 7);
    }

    #[test]
    fn an_exact_search_in_a_large_view_is_a_lookup_and_a_part_is_a_walk() {
        // Which path answered is what `exact` says (the lookup returns before any walk); how
        // long each takes is for a benchmark, not a test.
        let view = view(200_000);
        for i in 0..100 {
            let found = ask(&view, &format!("DEV{:06}", i * 997), false, None, 1);
            assert!(found.exact && found.total == 1);
            let found = ask(
                &view,
                &format!("user{}@test.local", i * 499),
                false,
                None,
                1,
            );
            assert!(found.exact && found.total == 2);
        }
        let found = ask(&view, "DEV", true, None, 1);
        assert!(!found.exact);
        assert_eq!((found.total, found.rows.len()), (200_000, 50));
    }
}
