//! The client's idea of the KDC's time: the local clock plus an offset learned from the KDC
//! when it complains of skew (per client, never process-wide).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rasn_kerberos::KrbError;

use crate::asn1;

/// The local clock corrected by an offset in seconds.
#[derive(Debug)]
pub(crate) struct Clock {
    offset_secs: AtomicI64,
    /// Whether [`Clock::adopt`] takes the KDC's time. Off, a skew is measured and reported but
    /// the clock is left as it is, so the caller's retry meets the same skew and fails with it.
    corrects: AtomicBool,
}

impl Default for Clock {
    fn default() -> Self {
        Self::with_offset(0)
    }
}

impl Clock {
    /// A clock that starts `offset_secs` ahead of the local one (negative: behind), adopting
    /// the KDC's time when it reports skew.
    pub(crate) fn with_offset(offset_secs: i64) -> Self {
        Self {
            offset_secs: AtomicI64::new(offset_secs),
            corrects: AtomicBool::new(true),
        }
    }

    /// This clock, adopting the KDC's time on a skew error only if `corrects`.
    pub(crate) fn correcting(self, corrects: bool) -> Self {
        self.corrects.store(corrects, Ordering::Relaxed);
        self
    }

    /// Now, corrected.
    pub(crate) fn now(&self) -> SystemTime {
        let offset = self.offset_secs.load(Ordering::Relaxed);
        let local = SystemTime::now();
        let magnitude = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            local.checked_add(magnitude).unwrap_or(local)
        } else {
            local.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
        }
    }

    /// Adopts the KDC's time from a KRB-ERROR (its `stime`), unless this clock does not
    /// correct, and returns the difference between the KDC's time and this clock's (the skew).
    pub(crate) fn adopt(&self, error: &KrbError) -> Duration {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let offset = asn1::unix_seconds(&error.stime).saturating_sub(local);
        let previous = if self.corrects.load(Ordering::Relaxed) {
            self.offset_secs.swap(offset, Ordering::Relaxed)
        } else {
            self.offset_secs.load(Ordering::Relaxed)
        };
        Duration::from_secs(offset.saturating_sub(previous).unsigned_abs())
    }
}
