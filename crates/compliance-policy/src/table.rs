//! The base view's devices in one open-addressing table, laid out for the decision's hot path.
//!
//! A decision on a known device reads one 64-byte slot: the device id (inline, up to 32 bytes,
//! as Exchange ActiveSync ids are), what the policy decided from the record alone, `last_seen`
//! and a hash of the record's user. The record itself (kept beside the table) is read only when
//! a user override may apply. With a million devices the table is far larger than the CPU's
//! caches, so a lookup is one memory access; large tables live in memory mapped with
//! transparent huge pages, so that it is not also a TLB miss with a page walk (on a 4 KiB-page
//! VM, that walk cost more than the access itself: see docs/benchmarks.md).
//!
//! Dependencies: `memmap2` maps the anonymous, huge-page-advised memory without `unsafe` here;
//! `foldhash` hashes the short ids (SipHash would cost more than the rest of a decision), with a
//! seed chosen per table.

use crate::device::{DeviceId, DeviceRecord};
use crate::policy::{BlockReason, PolicySettings, RecordVerdict};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The longest id kept inline in a slot; longer ids (not valid EAS ids, which have at most 32
/// characters, but still served) go to a side map.
pub(crate) const INLINE_ID: usize = 32;

const SLOT: usize = 64;

/// Tables whose slots take more than this go to huge-page-advised mapped memory.
const MAP_ABOVE: usize = 2 << 20;

/// A device id upper-cased, on the stack when it fits in a slot.
pub(crate) enum IdKey {
    Inline { bytes: [u8; INLINE_ID], len: u8 },
    Long(String),
}

impl IdKey {
    /// `id` upper-cased.
    #[inline]
    pub(crate) fn new(id: &str) -> Self {
        match id.len() {
            1..=INLINE_ID => {
                let mut bytes = [0u8; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                bytes[..id.len()].make_ascii_uppercase();
                IdKey::Inline {
                    bytes,
                    len: id.len() as u8,
                }
            }
            _ => IdKey::Long(id.to_ascii_uppercase()),
        }
    }

    /// The upper-cased id.
    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Upper-casing ASCII bytes keeps valid UTF-8 valid; the fallback is unreachable.
            IdKey::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            IdKey::Long(id) => id,
        }
    }
}

/// A slot found for an id: what a decision reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot<'a>(&'a [u8; SLOT]);

impl Slot<'_> {
    /// Whether this slot holds `key` (zero-padded) of length `len`: one fixed-size compare.
    #[inline]
    fn holds(&self, key: &[u8; INLINE_ID], len: u8) -> bool {
        self.0[32] == len && self.0[..INLINE_ID] == key[..]
    }

    /// The policy's verdict on the record, if the table was built with one.
    #[inline]
    pub(crate) fn verdict(&self) -> RecordVerdict {
        RecordVerdict {
            before_inactivity: decode_reason(self.0[33]),
            mail_client: decode_reason(self.0[34]),
            after_user: decode_reason(self.0[35]),
            record_user_passes: self.0[36] & FLAG_USER_PASSES != 0,
            record_type_passes: (self.0[36] & FLAG_HAS_TYPE != 0)
                .then_some(self.0[36] & FLAG_TYPE_PASSES != 0),
        }
    }

    /// The record's `last_seen`.
    #[inline]
    pub(crate) fn last_seen(&self) -> Option<u64> {
        (self.0[36] & FLAG_LAST_SEEN != 0).then(|| u64_at(self.0, 48))
    }

    /// A hash of the record's user, lower-cased ([`user_key`]); 0 without a user.
    #[inline]
    pub(crate) fn user_key(&self) -> u64 {
        u64_at(self.0, 56)
    }

    fn record(&self) -> usize {
        u32::from_le_bytes([self.0[40], self.0[41], self.0[42], self.0[43]]) as usize
    }
}

const FLAG_USER_PASSES: u8 = 1;
const FLAG_LAST_SEEN: u8 = 2;
const FLAG_HAS_TYPE: u8 = 4;
const FLAG_TYPE_PASSES: u8 = 8;

fn u64_at(slot: &[u8; SLOT], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&slot[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn encode_reason(reason: Option<BlockReason>) -> u8 {
    reason.map_or(0, |reason| reason.index() as u8 + 1)
}

fn decode_reason(code: u8) -> Option<BlockReason> {
    BlockReason::ALL
        .get(usize::from(code).checked_sub(1)?)
        .copied()
}

/// Zeroed memory for the table: on the heap when small, else mapped with huge pages advised.
enum Memory {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

impl Memory {
    fn zeroed(bytes: usize) -> Memory {
        if bytes > MAP_ABOVE
            && let Ok(mut map) = memmap2::MmapMut::map_anon(bytes)
        {
            // Only advice: without transparent huge pages the table works the same, slower.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            let _ = &mut map;
            return Memory::Mapped(map);
        }
        Memory::Heap(vec![0u8; bytes])
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Memory::Heap(bytes) => bytes,
            Memory::Mapped(map) => map,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Memory::Heap(bytes) => bytes,
            Memory::Mapped(map) => map,
        }
    }
}

/// The slots, and beside them one tag byte per slot (0: empty; else 7 bits of the id's hash),
/// so that a probe reads a slot (a memory access of its own in a large table) only when its
/// tag matches: an unknown id usually costs no slot at all, and the tags of a million devices
/// (2 MiB) mostly stay in the CPU's cache.
///
/// Both live in one block of memory (slots first, then tags), so that the tags are on huge
/// pages too.
struct Slots {
    memory: Memory,
    count: usize,
}

impl Slots {
    fn zeroed(count: usize) -> Slots {
        Slots {
            memory: Memory::zeroed(count * (SLOT + 1)),
            count,
        }
    }

    #[inline]
    fn slots(&self) -> &[[u8; SLOT]] {
        self.memory.bytes()[..self.count * SLOT]
            .as_chunks::<SLOT>()
            .0
    }

    #[inline]
    fn tags(&self) -> &[u8] {
        &self.memory.bytes()[self.count * SLOT..]
    }

    fn set(&mut self, at: usize, tag: u8, slot: [u8; SLOT]) {
        let (slots, tags) = self.memory.bytes_mut().split_at_mut(self.count * SLOT);
        slots.as_chunks_mut::<SLOT>().0[at] = slot;
        tags[at] = tag;
    }
}

/// The tag of a hash: its low 7 bits (the slot comes from the high bits), with the high bit set
/// so that it is never 0 (empty).
#[inline]
fn tag_of(hash: u64) -> u8 {
    hash as u8 | 0x80
}

/// Every device of a base view, by id.
pub(crate) struct DeviceTable {
    slots: Slots,
    /// Number of slots.
    count: usize,
    hasher: foldhash::fast::RandomState,
    /// The records, each once; slots point into it.
    records: Vec<Arc<DeviceRecord>>,
    /// Ids longer than [`INLINE_ID`], by id: index into `records`.
    long_ids: HashMap<DeviceId, u32>,
    /// The policy whose verdicts the slots hold, if any.
    policy: Option<Arc<PolicySettings>>,
}

impl std::fmt::Debug for DeviceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTable")
            .field("devices", &self.records.len())
            .field("slots", &self.count)
            .field("prepared", &self.policy.is_some())
            .finish()
    }
}

impl Default for DeviceTable {
    fn default() -> Self {
        DeviceTable::build(Vec::new(), None)
    }
}

impl DeviceTable {
    /// A table of `records` (a later record replaces an earlier one with the same id), with the
    /// verdicts of `policy` when given.
    pub(crate) fn build(
        records: Vec<Arc<DeviceRecord>>,
        policy: Option<&Arc<PolicySettings>>,
    ) -> DeviceTable {
        // At most 4/5 full: probe sequences stay short (with the tags, an unknown id reads about
        // a dozen tag bytes, one cache line), and the table is 1.25 slots a device rather than
        // up to 2.3 with a power-of-two size.
        let count = (records.len() + records.len() / 4).max(16);
        let mut table = DeviceTable {
            slots: Slots::zeroed(count),
            count,
            hasher: foldhash::fast::RandomState::default(),
            records: Vec::with_capacity(records.len()),
            long_ids: HashMap::new(),
            policy: policy.cloned(),
        };
        for record in records {
            table.insert(record);
        }
        table
    }

    /// The same devices with the verdicts of `policy` (a pass over the records).
    pub(crate) fn with_policy(&self, policy: &Arc<PolicySettings>) -> DeviceTable {
        DeviceTable::build(self.records.clone(), Some(policy))
    }

    /// Whether the slots hold the verdicts of exactly this policy.
    #[inline]
    pub(crate) fn prepared_for(&self, policy: &Arc<PolicySettings>) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|own| Arc::ptr_eq(own, policy))
    }

    /// The policy whose verdicts the slots hold.
    pub(crate) fn policy(&self) -> Option<&Arc<PolicySettings>> {
        self.policy.as_ref()
    }

    fn insert(&mut self, record: Arc<DeviceRecord>) {
        let key = IdKey::new(record.device_id.as_str());
        let IdKey::Inline { bytes, len } = key else {
            match self.long_ids.get(&record.device_id) {
                Some(&at) => self.records[at as usize] = record,
                None => {
                    self.long_ids
                        .insert(record.device_id.clone(), self.records.len() as u32);
                    self.records.push(record);
                }
            }
            return;
        };
        let hash = self.hasher.hash_one(bytes);
        let tag = tag_of(hash);
        let mut at = self.home(hash);
        let index = loop {
            let slot = Slot(&self.slots.slots()[at]);
            if self.slots.tags()[at] == 0 {
                let index = self.records.len();
                self.records.push(record.clone());
                break index;
            }
            if slot.holds(&bytes, len) {
                let index = slot.record();
                self.records[index] = record.clone();
                break index;
            }
            at = self.next(at);
        };
        let mut slot = [0u8; SLOT];
        slot[..INLINE_ID].copy_from_slice(&bytes);
        slot[32] = len;
        if let Some(policy) = &self.policy {
            let verdict = policy.record_verdict(&record);
            slot[33] = encode_reason(verdict.before_inactivity);
            slot[34] = encode_reason(verdict.mail_client);
            slot[35] = encode_reason(verdict.after_user);
            if verdict.record_user_passes {
                slot[36] |= FLAG_USER_PASSES;
            }
            match verdict.record_type_passes {
                Some(true) => slot[36] |= FLAG_HAS_TYPE | FLAG_TYPE_PASSES,
                Some(false) => slot[36] |= FLAG_HAS_TYPE,
                None => {}
            }
        }
        if let Some(seen) = record.last_seen {
            slot[36] |= FLAG_LAST_SEEN;
            slot[48..56].copy_from_slice(&seen.to_le_bytes());
        }
        slot[40..44].copy_from_slice(&(index as u32).to_le_bytes());
        let user = record.user.as_deref().map_or(0, user_key);
        slot[56..64].copy_from_slice(&user.to_le_bytes());
        self.slots.set(at, tag, slot);
    }

    /// The first slot to probe for `hash`: the high bits of `hash` scaled to the slot count.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.count as u128) >> 64) as usize
    }

    /// The slot after `at`, wrapping around.
    #[inline]
    fn next(&self, at: usize) -> usize {
        if at + 1 == self.count { 0 } else { at + 1 }
    }

    /// The slot of an id, and the record's position; `None` for a long id (see [`Self::get`]).
    #[inline]
    fn find(&self, key: &IdKey) -> Option<(Slot<'_>, usize)> {
        let IdKey::Inline { bytes, len } = key else {
            return None;
        };
        let hash = self.hasher.hash_one(bytes);
        let tag = tag_of(hash);
        let (slots, tags) = (self.slots.slots(), self.slots.tags());
        let mut at = self.home(hash);
        // The home slot (where most devices are) is read together with its tag (`&`, not
        // `&&`): both loads are in flight at once, so a device found there costs one memory
        // round trip rather than two in a row.
        let home = Slot(&slots[at]);
        if (tags[at] == tag) & (home.0[32] == *len) && home.holds(bytes, *len) {
            return Some((home, home.record()));
        }
        loop {
            match tags[at] {
                0 => return None,
                found if found == tag => {
                    let slot = Slot(&slots[at]);
                    if slot.holds(bytes, *len) {
                        return Some((slot, slot.record()));
                    }
                }
                _ => {}
            }
            at = self.next(at);
        }
    }

    /// The slot of a device, if the table has it inline (a long id has none: see
    /// [`Self::get`]).
    #[inline]
    pub(crate) fn slot(&self, key: &IdKey) -> Option<Slot<'_>> {
        self.find(key).map(|(slot, _)| slot)
    }

    /// The record of a device.
    #[inline]
    pub(crate) fn get(&self, key: &IdKey) -> Option<&Arc<DeviceRecord>> {
        match key {
            IdKey::Inline { .. } => self.find(key).map(|(_, index)| &self.records[index]),
            IdKey::Long(id) => self
                .long_ids
                .get(id.as_str())
                .map(|&index| &self.records[index as usize]),
        }
    }

    /// The record a slot points to.
    #[inline]
    pub(crate) fn record_of(&self, slot: Slot<'_>) -> &Arc<DeviceRecord> {
        &self.records[slot.record()]
    }

    /// Every record, each once, in no particular order.
    pub(crate) fn records(&self) -> &[Arc<DeviceRecord>] {
        &self.records
    }

    /// Number of devices.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// A hash of `user` lower-cased, the same for the process's life; never 0 (0 means "no user" in
/// a slot). Lower-cased on the stack when short enough.
pub(crate) fn user_key(user: &str) -> u64 {
    use std::hash::BuildHasher;
    // Fixed, so that keys from different views compare; only the process sees them.
    const SEED: u64 = 0x5e9_c0de_u64;
    let hasher = foldhash::fast::FixedState::with_seed(SEED);
    let mut buffer = [0u8; 128];
    let key = match buffer.get_mut(..user.len()) {
        Some(lower) => {
            lower.copy_from_slice(user.as_bytes());
            lower.make_ascii_lowercase();
            hasher.hash_one(&*lower)
        }
        None => hasher.hash_one(user.to_ascii_lowercase().as_bytes()),
    };
    key.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ComplianceStatus, Enrollment};

    fn record(id: &str, user: &str) -> Arc<DeviceRecord> {
        Arc::new(DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some(user.into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::NonCompliant,
            managed: true,
            last_seen: Some(1234),
            ..Default::default()
        })
    }

    #[test]
    fn finds_every_device_in_any_case_and_nothing_else() {
        let long = "L".repeat(INLINE_ID + 5);
        let mut records: Vec<_> = (0..5000)
            .map(|i| record(&format!("dev{i}"), "u@x"))
            .collect();
        records.push(record(&long, "long@x"));
        records.push(record("DEV7", "replaced@x"));
        let table = DeviceTable::build(records, None);
        assert_eq!(table.len(), 5001, "the repeated id replaced its record");
        for i in 0..5000 {
            let id = format!("Dev{i}");
            let found = table.get(&IdKey::new(&id)).expect("every device is found");
            assert_eq!(found.device_id.as_str(), id.to_ascii_uppercase());
        }
        assert_eq!(
            table.get(&IdKey::new("dev7")).unwrap().user.as_deref(),
            Some("replaced@x")
        );
        assert!(table.get(&IdKey::new(&long.to_lowercase())).is_some());
        assert!(
            table.slot(&IdKey::new(&long)).is_none(),
            "long ids have no slot"
        );
        assert!(table.get(&IdKey::new("DEV5000")).is_none());
        assert!(table.get(&IdKey::new("")).is_none());
        assert!(table.get(&IdKey::new("DEV")).is_none());
    }

    #[test]
    fn slots_hold_the_policy_verdict_and_the_fields_a_decision_reads() {
        let policy = Arc::new(PolicySettings::default());
        let table = DeviceTable::build(vec![record("A1", "Alice@X")], Some(&policy));
        assert!(table.prepared_for(&policy));
        assert!(!table.prepared_for(&Arc::new(PolicySettings::default())));
        let slot = table.slot(&IdKey::new("a1")).unwrap();
        assert_eq!(
            slot.verdict(),
            policy.record_verdict(&record("A1", "Alice@X"))
        );
        assert_eq!(
            slot.verdict().before_inactivity,
            Some(BlockReason::NonCompliant)
        );
        assert_eq!(slot.last_seen(), Some(1234));
        assert_eq!(slot.user_key(), user_key("alice@x"));
        assert_eq!(table.record_of(slot).device_id.as_str(), "A1");
    }

    #[test]
    fn large_tables_are_mapped() {
        let records: Vec<_> = (0..40_000)
            .map(|i| record(&format!("D{i}"), "u@x"))
            .collect();
        let table = DeviceTable::build(records, None);
        assert!(matches!(table.slots.memory, Memory::Mapped(_)));
        assert!(table.get(&IdKey::new("d39999")).is_some());
    }
}
