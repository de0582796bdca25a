//! The compliance view: an immutable snapshot of every device and override, read without locks.
//!
//! A view is a large base map (rebuilt by each full sync) plus a small overlay of the changes
//! since (delta syncs, change events). A change copies only the overlay, so applying one event
//! to a view of a million devices costs little, and readers never wait: they hold an `Arc` of
//! the view they loaded. When the overlay grows past a share of the base, the next change folds
//! it into a new base.

use crate::device::{DeviceId, DeviceRecord};
use crate::policy::Overrides;
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
    base: Arc<HashMap<DeviceId, Arc<DeviceRecord>>>,
    /// The base's devices by user (UPN), for O(1) access by account.
    users: Arc<UserIndex>,
    overlay: Arc<HashMap<DeviceId, Option<Arc<DeviceRecord>>>>,
    overrides: Arc<Overrides>,
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
        let base: HashMap<DeviceId, Arc<DeviceRecord>> = records
            .into_iter()
            .map(|r| (r.device_id.clone(), Arc::new(r)))
            .collect();
        let len = base.len();
        View {
            users: Arc::new(UserIndex::of(&base)),
            base: Arc::new(base),
            overlay: Arc::default(),
            overrides: Arc::new(overrides),
            loaded: true,
            synced_at: None,
            len,
        }
    }

    /// The record of a device, by EAS id in any case.
    #[inline]
    pub fn device(&self, id: &str) -> Option<&Arc<DeviceRecord>> {
        if id.bytes().any(|b| b.is_ascii_lowercase()) {
            let upper = id.to_ascii_uppercase();
            return self.lookup(&upper);
        }
        self.lookup(id)
    }

    #[inline]
    fn lookup(&self, id: &str) -> Option<&Arc<DeviceRecord>> {
        if !self.overlay.is_empty()
            && let Some(entry) = self.overlay.get(id)
        {
            return entry.as_ref();
        }
        self.base.get(id)
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
            .iter()
            .filter(move |(id, _)| !overlay.contains_key(*id))
            .map(|(_, record)| record)
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
        let mut found: Vec<&Arc<DeviceRecord>> = self
            .users
            .get(user)
            .iter()
            .filter(|id| !overlay.contains_key(*id))
            .filter_map(|id| self.base.get(id))
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
            None => self.base.contains_key(id),
        }
    }

    /// The same view with the overlay merged into a new base.
    fn folded(&self) -> View {
        let mut base = (*self.base).clone();
        for (id, entry) in self.overlay.iter() {
            match entry {
                Some(record) => {
                    base.insert(id.clone(), record.clone());
                }
                None => {
                    base.remove(id);
                }
            }
        }
        View {
            len: base.len(),
            users: Arc::new(UserIndex::of(&base)),
            base: Arc::new(base),
            overlay: Arc::default(),
            ..self.clone()
        }
    }

    /// This view with other overrides.
    pub fn with_overrides(&self, overrides: Overrides) -> View {
        View {
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

/// Device ids by user, keyed by a hash of the lower-cased UPN so the index holds no copy of
/// the names. Most users have one device, kept inline (no allocation per entry: about 30 bytes
/// a device). A hash collision only adds a device that [`View::devices_of_user`] then filters out
/// by comparing the name itself.
#[derive(Debug, Default)]
struct UserIndex(HashMap<u64, UserDevices>);

#[derive(Debug)]
enum UserDevices {
    One(DeviceId),
    Many(Box<[DeviceId]>),
}

impl UserIndex {
    fn of(base: &HashMap<DeviceId, Arc<DeviceRecord>>) -> Self {
        let mut index: HashMap<u64, UserDevices> = HashMap::with_capacity(base.len());
        for record in base.values() {
            let Some(user) = record.user.as_deref() else {
                continue;
            };
            let id = record.device_id.clone();
            match index.entry(user_key(user)) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(UserDevices::One(id));
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let ids = match slot.get() {
                        UserDevices::One(first) => vec![first.clone(), id],
                        UserDevices::Many(ids) => ids.iter().cloned().chain([id]).collect(),
                    };
                    slot.insert(UserDevices::Many(ids.into_boxed_slice()));
                }
            }
        }
        UserIndex(index)
    }

    fn get(&self, user: &str) -> &[DeviceId] {
        match self.0.get(&user_key(user)) {
            Some(UserDevices::One(id)) => std::slice::from_ref(id),
            Some(UserDevices::Many(ids)) => ids,
            None => &[],
        }
    }
}

/// A stable hash of `user` lower-cased, computed without allocating.
fn user_key(user: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for byte in user.bytes() {
        hasher.write_u8(byte.to_ascii_lowercase());
    }
    hasher.finish()
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
