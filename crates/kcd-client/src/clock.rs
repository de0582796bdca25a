//! The client's idea of the KDC's time: the local clock plus an offset learned from the KDC
//! when it complains of skew (per client, never process-wide).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rasn_kerberos::KrbError;

use crate::asn1;

/// The local clock corrected by an offset in seconds.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    /// A clock that starts `offset_secs` ahead of the local one (negative: behind).
    pub(crate) fn with_offset(offset_secs: i64) -> Self {
        Self {
            offset_secs: AtomicI64::new(offset_secs),
        }
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

    /// Adopts the KDC's time from a KRB-ERROR (its `stime`), and returns the difference that
    /// was corrected.
    pub(crate) fn adopt(&self, error: &KrbError) -> Duration {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let offset = asn1::unix_seconds(&error.stime).saturating_sub(local);
        let previous = self.offset_secs.swap(offset, Ordering::Relaxed);
        Duration::from_secs(offset.saturating_sub(previous).unsigned_abs())
    }
}
