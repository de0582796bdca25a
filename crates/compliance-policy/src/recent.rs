//! The last requests the enforcement layer decided, for diagnostics: which operations a device
//! sent lately and what the gateway answered (the console's device page shows them).
//!
//! A ring of the last [`RecentRequests::CAPACITY`] decisions across every device, kept in fixed
//! slots (id and operation inline, no allocation per request). Recording takes a lock only if
//! it is free: a request never waits for diagnostics, and one recorded while another thread
//! holds the ring is skipped (counted in [`RecentRequests::skipped`]).
//!
//! A request like the newest kept one (same device, operation and decision, within the same
//! second) is counted in it ([`RecentRequest::count`]) instead of taking a slot of its own: a
//! device in a retry loop would otherwise push every other device out of the ring within a
//! fraction of a second, and the newest slot is the one still in the CPU's cache, where the
//! next free slot, last written 4096 decisions ago, is not (writing it was ≈ 1.5% of the
//! gateway's CPU per request with every layer on, perf, 2026-12-06).

use crate::policy::{AllowReason, BlockReason, Decision};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Longest device id kept, in bytes; a longer one is cut (these are diagnostics).
const DEVICE: usize = 32;
/// Longest operation name kept: the longest in the EWS schema, `GetPasswordExpirationDate`, is 25.
const OPERATION: usize = 25;

/// One decision, in one cache line: a slot is cold by the time the ring comes round to it
/// again, and one of 84 bytes straddled two or three lines, whose stores the ring's unlock then
/// waited for. Hence the time to the second (what the console shows), the decision in a byte
/// and names zero-padded instead of a length.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Slot {
    /// Seconds since the Unix epoch.
    at: u32,
    /// Requests it stands for, from 1.
    count: u16,
    /// [`decision_code`].
    decision: u8,
    device: [u8; DEVICE],
    operation: [u8; OPERATION],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// `text` cut to at most `N` bytes on a character boundary, and before a NUL (ids and names
/// hold none; a hostile one is cut there), zero-padded.
fn inline<const N: usize>(text: &str) -> [u8; N] {
    let text = text.split('\0').next().unwrap_or_default();
    let len = text.floor_char_boundary(N);
    let mut bytes = [0u8; N];
    bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
    bytes
}

/// A decision in a byte: allowed reasons from 0, blocked ones from 128.
fn decision_code(decision: Decision) -> u8 {
    // Both lists fit below 128 (checked at compile time just below), so neither cast cuts.
    match decision {
        Decision::Allow(reason) => reason.index() as u8,
        Decision::Block(reason) => 128 | reason.index() as u8,
    }
}

const _: () = assert!(AllowReason::ALL.len() <= 128 && BlockReason::ALL.len() <= 128);

/// The decision [`decision_code`] encoded.
fn decision_from_code(code: u8) -> Option<Decision> {
    let index = usize::from(code & 127);
    if code < 128 {
        AllowReason::ALL.get(index).copied().map(Decision::Allow)
    } else {
        BlockReason::ALL.get(index).copied().map(Decision::Block)
    }
}

/// The text [`inline`] kept.
fn text(bytes: &[u8]) -> &str {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..len]).unwrap_or_default()
}

/// One decided request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentRequest {
    /// When it was decided.
    pub at: SystemTime,
    /// The device id it named, as sent.
    pub device_id: String,
    /// The EWS operation (`GetItem`…) or ActiveSync command (`Sync`…), when known.
    pub operation: String,
    /// The decision.
    pub decision: Decision,
    /// The requests it stands for: repeats within the same second count in one entry.
    pub count: u32,
}

/// The ring of recent decisions; see the [module docs](self).
pub struct RecentRequests {
    ring: Mutex<Ring>,
    skipped: AtomicU64,
}

struct Ring {
    slots: Vec<Slot>,
    /// Where the next decision goes once `slots` is full.
    next: usize,
}

impl Default for RecentRequests {
    fn default() -> Self {
        RecentRequests {
            ring: Mutex::new(Ring {
                slots: Vec::new(),
                next: 0,
            }),
            skipped: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests")
            .field("skipped", &self.skipped())
            .finish_non_exhaustive()
    }
}

impl RecentRequests {
    /// How many decisions are kept (64 bytes each).
    pub const CAPACITY: usize = 4096;

    /// Keeps a decision, unless another thread is recording at this very moment.
    pub fn record(&self, device_id: &str, operation: &str, decision: Decision) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
            });
        self.record_at(at, device_id, operation, decision);
    }

    /// [`record`](Self::record) at `at` seconds since the Unix epoch.
    fn record_at(&self, at: u32, device_id: &str, operation: &str, decision: Decision) {
        let Ok(mut ring) = self.ring.try_lock() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let slot = Slot {
            at,
            count: 1,
            decision: decision_code(decision),
            device: inline(device_id),
            operation: inline(operation),
        };
        // Just before `next`, or the last slot while the ring fills (`next` stays 0) and right
        // after it wrapped; none while it is empty.
        let newest = ring
            .next
            .checked_sub(1)
            .unwrap_or(ring.slots.len().wrapping_sub(1));
        if let Some(kept) = ring.slots.get_mut(newest)
            && kept.count < u16::MAX
            && *kept
                == (Slot {
                    count: kept.count,
                    ..slot
                })
        {
            kept.count += 1;
            return;
        }
        if ring.slots.len() < Self::CAPACITY {
            ring.slots.push(slot);
        } else {
            let next = ring.next;
            ring.slots[next] = slot;
            ring.next = (next + 1) % Self::CAPACITY;
        }
    }

    /// The kept decisions on `device_id` (compared without ASCII case), newest first, at most
    /// `limit`.
    pub fn for_device(&self, device_id: &str, limit: usize) -> Vec<RecentRequest> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first: from just before `next` back to the start, then from the end back to
        // `next` (once the ring has wrapped, `next` is the oldest).
        let (newest, oldest) = ring.slots.split_at(ring.next.min(ring.slots.len()));
        newest
            .iter()
            .rev()
            .chain(oldest.iter().rev())
            .filter(|slot| text(&slot.device).eq_ignore_ascii_case(device_id))
            .take(limit)
            .filter_map(|slot| {
                Some(RecentRequest {
                    at: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(slot.at)),
                    device_id: text(&slot.device).to_owned(),
                    operation: text(&slot.operation).to_owned(),
                    decision: decision_from_code(slot.decision)?,
                    count: u32::from(slot.count),
                })
            })
            .collect()
    }

    /// Decisions not kept because the ring was busy.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AllowReason, BlockReason};

    #[test]
    fn a_devices_requests_come_back_newest_first_across_the_wrap() {
        let recent = RecentRequests::default();
        let allowed = Decision::Allow(AllowReason::Compliant);
        recent.record("EASDEV1", "GetFolder", allowed);
        for i in 0..RecentRequests::CAPACITY - 2 {
            recent.record(&format!("OTHER{i}"), "GetItem", allowed);
        }
        recent.record("easdev1", "Subscribe", allowed);
        recent.record(
            "EASDEV1",
            "GetStreamingEvents",
            Decision::Block(BlockReason::EnterpriseWiped),
        );
        // The ring is full and wrapped once: the first GetFolder is gone.
        let found = recent.for_device("EasDev1", 10);
        let operations: Vec<&str> = found.iter().map(|r| r.operation.as_str()).collect();
        assert_eq!(operations, ["GetStreamingEvents", "Subscribe"]);
        assert_eq!(
            found[0].decision,
            Decision::Block(BlockReason::EnterpriseWiped)
        );
        assert_eq!(recent.for_device("EASDEV1", 1).len(), 1);
        assert!(recent.for_device("NOBODY", 10).is_empty());
    }

    fn allowed() -> Decision {
        Decision::Allow(AllowReason::Compliant)
    }

    #[test]
    fn repeats_within_a_second_count_in_one_entry() {
        let recent = RecentRequests::default();
        let blocked = Decision::Block(BlockReason::NonCompliant);
        for (at, device, operation, decision) in [
            (100, "EASDEV1", "GetItem", allowed()),
            (100, "EASDEV1", "GetItem", allowed()),
            (100, "EASDEV1", "GetItem", allowed()),
            (100, "EASDEV1", "GetItem", blocked), // another decision
            (100, "EASDEV1", "GetItem", blocked),
            (100, "EASDEV2", "GetItem", blocked), // another device in between
            (100, "EASDEV1", "GetItem", blocked),
            (101, "EASDEV1", "GetItem", blocked), // the next second
            (101, "EASDEV1", "FindItem", blocked), // another operation
        ] {
            recent.record_at(at, device, operation, decision);
        }
        let found = recent.for_device("EASDEV1", 10);
        let kept: Vec<(u64, &str, Decision, u32)> = found
            .iter()
            .map(|r| {
                let at =
                    r.at.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                (at, r.operation.as_str(), r.decision, r.count)
            })
            .collect();
        assert_eq!(
            kept,
            [
                (101, "FindItem", blocked, 1),
                (101, "GetItem", blocked, 1),
                (100, "GetItem", blocked, 1),
                (100, "GetItem", blocked, 2),
                (100, "GetItem", allowed(), 3),
            ]
        );
    }

    #[test]
    fn repeats_are_counted_across_the_wrap_and_every_decision_comes_back() {
        let recent = RecentRequests::default();
        for i in 0..RecentRequests::CAPACITY {
            recent.record_at(7, &format!("OTHER{i}"), "GetItem", allowed());
        }
        // The ring is full; the newest slot is the last one, then the first once overwritten.
        recent.record_at(
            7,
            &format!("OTHER{}", RecentRequests::CAPACITY - 1),
            "GetItem",
            allowed(),
        );
        let reasons = AllowReason::ALL.map(Decision::Allow).into_iter();
        for decision in reasons.chain(BlockReason::ALL.map(Decision::Block)) {
            recent.record_at(8, "EASDEV1", "GetItem", decision);
            recent.record_at(8, "EASDEV1", "GetItem", decision);
        }
        let last = format!("OTHER{}", RecentRequests::CAPACITY - 1);
        assert_eq!(recent.for_device(&last, 10)[0].count, 2);
        let kept = recent.for_device("EASDEV1", 100);
        let decisions: Vec<Decision> = kept.iter().rev().map(|r| r.decision).collect();
        let expected: Vec<Decision> = AllowReason::ALL
            .map(Decision::Allow)
            .into_iter()
            .chain(BlockReason::ALL.map(Decision::Block))
            .collect();
        assert_eq!(decisions, expected);
        assert!(kept.iter().all(|r| r.count == 2));
    }

    #[test]
    fn a_nul_cuts_a_name_and_the_time_is_kept_to_the_second() {
        let recent = RecentRequests::default();
        let before = SystemTime::now();
        recent.record("EASDEV1\0HIDDEN", "GetItem\0", allowed());
        let kept = &recent.for_device("EASDEV1", 1)[0];
        assert_eq!(
            (kept.device_id.as_str(), kept.operation.as_str()),
            ("EASDEV1", "GetItem")
        );
        let lag = before.duration_since(kept.at).expect("not after the call");
        assert!(lag < Duration::from_secs(1), "{lag:?}");
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let recent = RecentRequests::default();
        let long = format!("{}é", "D".repeat(DEVICE - 1));
        recent.record(&long, "GetPasswordExpirationDate", allowed());
        let kept = &recent.for_device(&"D".repeat(DEVICE - 1), 1)[0];
        assert_eq!(kept.device_id, "D".repeat(DEVICE - 1));
        assert_eq!(kept.operation, "GetPasswordExpirationDate");
    }
}
