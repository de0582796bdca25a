//! The last requests the enforcement layer decided, for diagnostics: which operations a device
//! sent lately and what the gateway answered (the console's device page shows them).
//!
//! A ring of the last [`RecentRequests::CAPACITY`] decisions across every device, kept in fixed
//! slots (id and operation inline, no allocation per request). Recording takes a lock only if
//! it is free: a request never waits for diagnostics, and one recorded while another thread
//! holds the ring is skipped (counted in [`RecentRequests::skipped`]).

use crate::policy::Decision;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Longest device id and operation name kept; longer ones are cut (these are diagnostics).
const NAME: usize = 32;

/// A short string kept inline.
#[derive(Clone, Copy)]
struct Inline {
    bytes: [u8; NAME],
    len: u8,
}

impl Inline {
    fn new(text: &str) -> Self {
        // Cut on a character boundary.
        let mut len = text.len().min(NAME);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; NAME];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Inline {
            bytes,
            len: len as u8,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
struct Slot {
    at: SystemTime,
    device: Inline,
    operation: Inline,
    decision: Decision,
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
    /// How many decisions are kept (about 100 bytes each).
    pub const CAPACITY: usize = 4096;

    /// Keeps a decision, unless another thread is recording at this very moment.
    pub fn record(&self, device_id: &str, operation: &str, decision: Decision) {
        let Ok(mut ring) = self.ring.try_lock() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let slot = Slot {
            at: SystemTime::now(),
            device: Inline::new(device_id),
            operation: Inline::new(operation),
            decision,
        };
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
            .filter(|slot| slot.device.as_str().eq_ignore_ascii_case(device_id))
            .take(limit)
            .map(|slot| RecentRequest {
                at: slot.at,
                device_id: slot.device.as_str().to_owned(),
                operation: slot.operation.as_str().to_owned(),
                decision: slot.decision,
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

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let recent = RecentRequests::default();
        let long = format!("{}é", "D".repeat(NAME - 1));
        recent.record(&long, "Op", Decision::Allow(AllowReason::Compliant));
        let kept = &recent.for_device(&"D".repeat(NAME - 1), 1)[0];
        assert_eq!(kept.device_id, "D".repeat(NAME - 1));
    }
}
