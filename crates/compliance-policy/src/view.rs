//! The compliance view: an immutable snapshot of every device and override, read without locks.
//!
//! A view is a large base map (rebuilt by each full sync) plus a small overlay of the changes
//! since (delta syncs, change events). A change copies only the overlay, so applying one event
//! to a view of a million devices costs little, and readers never wait: they hold an `Arc` of
//! the view they loaded. When the overlay grows past a share of the base, the next change folds
//! it into a new base.
//!
//! The base is a device table laid out for the decision (one 64-byte slot per device holding
//! the id and what the policy decided from the record, in huge-page memory): a view
//! [prepared](View::prepared) for a policy decides on a known device with one memory access,
//! about 135 ns with a million devices on the reference machine (docs/benchmarks.md).

use crate::device::{DeviceId, DeviceRecord};
use crate::policy::{Asked, Decision, Overrides, PolicySettings};
use crate::table::{DeviceTable, IdKey, user_key};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// One change to the device set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built in batches and consumed at once; boxing buys nothing
pub enum Change {
    /// A device is new or changed.
    Upsert(DeviceRecord),
    /// The console no longer lists this device.
    Remove(DeviceId),
}

/// An immutable view of the devices and overrides.
#[derive(Clone, Debug, Default)]
pub struct View {
    base: Arc<DeviceTable>,
    /// The base's devices by user (UPN), for O(1) access by account.
    users: Arc<UserIndex>,
    overlay: Arc<HashMap<DeviceId, Option<Arc<DeviceRecord>>>>,
    overrides: Arc<Overrides>,
    /// [`user_key`]s of the users with an override, sorted: a decision reads a record's user
    /// (one more memory access) only when its key is among them.
    override_user_keys: Arc<[u64]>,
    loaded: bool,
    synced_at: Option<SystemTime>,
    len: usize,
}

/// The overlay is folded into the base once it holds more than this share of it.
const FOLD_RATIO: usize = 8;

impl View {
    /// A view of exactly `records`, marked loaded.
    pub fn from_records(
        records: impl IntoIterator<Item = DeviceRecord>,
        overrides: Overrides,
    ) -> Self {
        Self::from_shared_records(records.into_iter().map(Arc::new).collect(), overrides, None)
    }

    /// A view of exactly `records`, marked loaded, prepared for deciding by `policy` when given
    /// (see [`View::prepared`]).
    pub(crate) fn from_shared_records(
        records: Vec<Arc<DeviceRecord>>,
        overrides: Overrides,
        policy: Option<&Arc<PolicySettings>>,
    ) -> Self {
        let base = DeviceTable::build(records, policy);
        View {
            users: Arc::new(UserIndex::of(base.records())),
            len: base.len(),
            base: Arc::new(base),
            overlay: Arc::default(),
            override_user_keys: override_user_keys(&overrides),
            overrides: Arc::new(overrides),
            loaded: true,
            synced_at: None,
        }
    }

    /// This view with what `policy` decides from each record alone computed once, so that
    /// [`View::decide`] by `policy` reads one table slot per decision. A no-op when the view is
    /// prepared for this very policy (the same `Arc`) already; otherwise a pass over every
    /// record.
    pub fn prepared(self, policy: &Arc<PolicySettings>) -> View {
        if self.base.prepared_for(policy) {
            return self;
        }
        View {
            base: Arc::new(self.base.with_policy(policy)),
            ..self
        }
    }

    /// The decision of `policy` for a request from `device_id` (none: unknown) by `user` (when
    /// the authentication names one), at `now` (Unix seconds): what
    /// [`PolicySettings::decide_for`] says of this view's record, faster when the view is
    /// [prepared](View::prepared) for `policy`.
    #[inline]
    pub fn decide(
        &self,
        policy: &Arc<PolicySettings>,
        device_id: Option<&str>,
        user: Option<&str>,
        now: u64,
    ) -> Decision {
        self.decide_request(policy, device_id, user, None, now)
    }

    /// The decision for an ActiveSync `OPTIONS` that names no device (see
    /// [`PolicySettings::decide_discovery`]).
    pub fn decide_discovery(&self, policy: &PolicySettings, user: Option<&str>) -> Decision {
        policy.decide_discovery(user, &self.overrides)
    }

    /// [`View::decide`] for a request that also says its EAS device type (see
    /// [`PolicySettings::decide_request`]).
    #[inline]
    pub fn decide_request(
        &self,
        policy: &Arc<PolicySettings>,
        device_id: Option<&str>,
        user: Option<&str>,
        device_type: Option<&str>,
        now: u64,
    ) -> Decision {
        let Some(asked) = device_id else {
            return policy.decide_request(None, None, user, device_type, &self.overrides, now);
        };
        let key = IdKey::new(asked);
        // The id upper-cased as a string: the one asked when it has no lower case (most do).
        let id = if asked.bytes().any(|b| b.is_ascii_lowercase()) {
            key.as_str()
        } else {
            asked
        };
        let changed = !self.overlay.is_empty() && self.overlay.contains_key(id);
        if !changed
            && self.base.prepared_for(policy)
            && let IdKey::Inline { .. } = key
        {
            let slot = self.base.slot(&key);
            let known = slot.map(|slot| (slot.verdict(), slot.last_seen()));
            let record_user = || {
                let slot = slot?;
                self.override_user_keys
                    .binary_search(&slot.user_key())
                    .ok()?;
                self.base.record_of(slot).user.as_deref()
            };
            let request = Asked {
                user,
                device_type,
                discovery: false,
            };
            return policy.decide_from(Some(id), known, request, record_user, &self.overrides, now);
        }
        let record = self.lookup(&key).map(|r| &**r);
        policy.decide_request(Some(id), record, user, device_type, &self.overrides, now)
    }

    /// `record` in an `Arc`: this view's own when it holds an equal record, else a new one.
    /// A full sync mostly repeats the view; sharing the held records keeps one copy of each
    /// unchanged device, and lets the old view's drop free only what changed.
    pub fn share(&self, record: DeviceRecord) -> Arc<DeviceRecord> {
        match self.device(record.device_id.as_str()) {
            Some(held) if **held == record => held.clone(),
            _ => Arc::new(record),
        }
    }

    /// The record of a device, by EAS id in any case.
    #[inline]
    pub fn device(&self, id: &str) -> Option<&Arc<DeviceRecord>> {
        self.lookup(&IdKey::new(id))
    }

    #[inline]
    fn lookup(&self, key: &IdKey) -> Option<&Arc<DeviceRecord>> {
        if !self.overlay.is_empty()
            && let Some(entry) = self.overlay.get(key.as_str())
        {
            return entry.as_ref();
        }
        self.base.get(key)
    }

    /// The explicit overrides.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No device at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a complete view was ever loaded (a full sync or a saved snapshot): until then
    /// every device is unknown and the gateway is not ready.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// When the last successful full sync finished, if any.
    pub fn synced_at(&self) -> Option<SystemTime> {
        self.synced_at
    }

    /// Every device record, in no particular order.
    pub fn devices(&self) -> impl Iterator<Item = &Arc<DeviceRecord>> {
        let overlay = &self.overlay;
        self.base
            .records()
            .iter()
            .filter(move |record| overlay.is_empty() || !overlay.contains_key(&record.device_id))
            .chain(self.overlay.values().flatten())
    }

    /// Devices of a user (UPN or e-mail address, without case).
    ///
    /// By UPN through an index (O(1) plus the overlay of recent changes); an e-mail address
    /// that is not also a UPN falls back to a scan.
    pub fn devices_of_user(&self, user: &str) -> Vec<&Arc<DeviceRecord>> {
        let matches = |record: &DeviceRecord, by_email: bool| {
            let field = if by_email {
                &record.email
            } else {
                &record.user
            };
            field
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(user))
        };
        let overlay = &self.overlay;
        let records = self.base.records();
        let mut found: Vec<&Arc<DeviceRecord>> = self
            .users
            .get(user)
            .map(|at| &records[at])
            .filter(|record| !overlay.contains_key(&record.device_id))
            .filter(|record| matches(record, false))
            .collect();
        found.extend(
            overlay
                .values()
                .flatten()
                .filter(|record| matches(record, false)),
        );
        if found.is_empty() {
            found = self
                .devices()
                .filter(|record| matches(record, true))
                .collect();
        }
        found
    }

    /// This view with `changes` applied.
    pub fn with_changes(&self, changes: &[Change]) -> View {
        let mut overlay = (*self.overlay).clone();
        let mut len = self.len;
        for change in changes {
            let (id, entry) = match change {
                Change::Upsert(record) => {
                    (record.device_id.clone(), Some(Arc::new(record.clone())))
                }
                Change::Remove(id) => (id.clone(), None),
            };
            let existed = self.lookup_in(&overlay, &id);
            match (existed, entry.is_some()) {
                (false, true) => len += 1,
                (true, false) => len -= 1,
                _ => {}
            }
            overlay.insert(id, entry);
        }
        let view = View {
            overlay: Arc::new(overlay),
            len,
            ..self.clone()
        };
        if view.overlay.len() * FOLD_RATIO > view.base.len().max(1024) {
            view.folded()
        } else {
            view
        }
    }

    fn lookup_in(
        &self,
        overlay: &HashMap<DeviceId, Option<Arc<DeviceRecord>>>,
        id: &DeviceId,
    ) -> bool {
        match overlay.get(id) {
            Some(entry) => entry.is_some(),
            None => self.base.get(&IdKey::new(id.as_str())).is_some(),
        }
    }

    /// The same view with the overlay merged into a new base.
    fn folded(&self) -> View {
        let overlay = &self.overlay;
        let records: Vec<Arc<DeviceRecord>> = self
            .base
            .records()
            .iter()
            .filter(|record| !overlay.contains_key(&record.device_id))
            .chain(overlay.values().flatten())
            .cloned()
            .collect();
        let base = DeviceTable::build(records, self.base.policy());
        View {
            len: base.len(),
            users: Arc::new(UserIndex::of(base.records())),
            base: Arc::new(base),
            overlay: Arc::default(),
            ..self.clone()
        }
    }

    /// This view with other overrides.
    pub fn with_overrides(&self, overrides: Overrides) -> View {
        View {
            override_user_keys: override_user_keys(&overrides),
            overrides: Arc::new(overrides),
            ..self.clone()
        }
    }

    /// This view stamped as synced at `at`.
    pub fn synced(mut self, at: SystemTime) -> View {
        self.synced_at = Some(at);
        self
    }
}

/// The base's devices by user: pairs of a hash of the lower-cased UPN and the record's position
/// in the base table, sorted by hash (16 bytes a device, no allocation per user). A hash
/// collision only adds a device that [`View::devices_of_user`] then filters out by comparing the
/// name itself.
#[derive(Debug, Default)]
struct UserIndex(Box<[(u64, u32)]>);

impl UserIndex {
    fn of(records: &[Arc<DeviceRecord>]) -> Self {
        let mut entries: Vec<(u64, u32)> = records
            .iter()
            .enumerate()
            .filter_map(|(at, record)| Some((user_key(record.user.as_deref()?), at as u32)))
            .collect();
        entries.sort_unstable();
        UserIndex(entries.into_boxed_slice())
    }

    /// Positions in the base table of the records whose user may be `user`.
    fn get(&self, user: &str) -> impl Iterator<Item = usize> + '_ {
        let key = user_key(user);
        let start = self.0.partition_point(|&(k, _)| k < key);
        self.0[start..]
            .iter()
            .take_while(move |&&(k, _)| k == key)
            .map(|&(_, at)| at as usize)
    }
}

/// The sorted [`user_key`]s of the users `overrides` names.
fn override_user_keys(overrides: &Overrides) -> Arc<[u64]> {
    let mut keys: Vec<u64> = overrides.users.keys().map(|user| user_key(user)).collect();
    keys.sort_unstable();
    keys.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, user: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some(user.into()),
            ..Default::default()
        }
    }

    #[test]
    fn changes_are_seen_through_the_overlay_and_survive_folding() {
        let base: Vec<DeviceRecord> = (0..2000).map(|i| record(&format!("D{i}"), "u@x")).collect();
        let view = View::from_records(base, Overrides::default());
        let changed = view.with_changes(&[
            Change::Upsert(record("d1", "changed@x")),
            Change::Remove(DeviceId::new("D2")),
            Change::Upsert(record("NEW", "n@x")),
        ]);
        assert_eq!(changed.len(), 2000);
        assert_eq!(
            changed.device("D1").unwrap().user.as_deref(),
            Some("changed@x")
        );
        assert!(changed.device("d2").is_none());
        assert!(changed.device("new").is_some());
        assert_eq!(
            view.device("D1").unwrap().user.as_deref(),
            Some("u@x"),
            "the old view is untouched"
        );
        assert_eq!(changed.devices().count(), 2000);

        let many: Vec<Change> = (0..600)
            .map(|i| Change::Remove(DeviceId::new(&format!("D{i}"))))
            .collect();
        let folded = changed.with_changes(&many);
        assert!(
            folded.overlay.is_empty(),
            "a large overlay is folded into the base"
        );
        assert_eq!(folded.len(), 2000 - 599, "D2 was already gone");
        assert_eq!(folded.devices().count(), folded.len());
        assert_eq!(folded.device("D1"), None);
        assert_eq!(folded.device("NEW").unwrap().user.as_deref(), Some("n@x"));
    }

    #[test]
    fn devices_of_user_match_upn_or_email_without_case() {
        let mut phone = record("P1", "alice@test.local");
        phone.email = Some("Alice.Smith@corp.example".into());
        let view = View::from_records(
            [phone, record("P2", "bob@test.local")],
            Overrides::default(),
        );
        assert_eq!(view.devices_of_user("ALICE@test.local").len(), 1);
        assert_eq!(view.devices_of_user("alice.smith@corp.example").len(), 1);
        let moved = view.with_changes(&[
            Change::Upsert(record("P2", "alice@test.local")),
            Change::Upsert(record("P3", "Alice@Test.Local")),
        ]);
        let mut ids: Vec<&str> = moved
            .devices_of_user("alice@test.local")
            .iter()
            .map(|r| r.device_id.as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            ["P1", "P2", "P3"],
            "the overlay's changes count, the index's stale entry does not"
        );
        assert!(
            moved.devices_of_user("bob@test.local").is_empty(),
            "P2 moved to alice"
        );
    }
}
