//! Ticket caches with single flight: a credential is reused until shortly before it expires,
//! and concurrent requests for one key wait for one fetch instead of each asking the KDC.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::KcdError;
use crate::kdc::Credential;

/// One key's slot: the async lock is what makes concurrent fetches single-flight.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Credential>>>>;

/// Credentials by key.
#[derive(Debug)]
pub(crate) struct TicketCache<K> {
    slots: Mutex<HashMap<K, Slot>>,
    /// A credential expiring sooner than this is fetched anew.
    refresh_before: Duration,
    /// Beyond this many keys, expired and idle entries are dropped on insert.
    max_entries: usize,
}

impl<K: Hash + Eq + Clone> TicketCache<K> {
    pub(crate) fn new(refresh_before: Duration, max_entries: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            refresh_before,
            max_entries,
        }
    }

    /// The cached credential for `key` if it is still fresh at `now`, else the one `fetch`
    /// gets (cached for the next callers). Callers for the same key wait for one another, so
    /// only the first of many concurrent callers fetches. Errors are not cached: the next
    /// caller tries again.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: &K,
        now: impl Fn() -> SystemTime,
        fetch: F,
    ) -> Result<Arc<Credential>, KcdError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Credential, KcdError>>,
    {
        let slot = self.slot(key, &now);
        let mut cached = slot.lock().await;
        if let Some(credential) = cached.as_ref()
            && self.is_fresh(credential, now())
        {
            return Ok(Arc::clone(credential));
        }
        let credential = Arc::new(fetch().await?);
        *cached = Some(Arc::clone(&credential));
        Ok(credential)
    }

    /// Forgets `key`'s credential, so that the next request fetches a new one.
    pub(crate) fn invalidate(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Forgets every credential.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn slot(&self, key: &K, now: &impl Fn() -> SystemTime) -> Slot {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key) {
            return Arc::clone(slot);
        }
        if slots.len() >= self.max_entries {
            let now = now();
            // Keep slots in use (locked) and fresh credentials; drop the rest.
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(cached) => cached.as_ref().is_some_and(|c| self.is_fresh(c, now)),
                Err(_) => true,
            });
        }
        Arc::clone(slots.entry(key.clone()).or_default())
    }

    /// Whether `credential` may still be used at `now`: it has more than the refresh margin
    /// left, the margin being the configured one or, for a ticket that lives less than four
    /// times as long, a quarter of its lifetime (so that short-lived tickets, which some
    /// policies issue, are reused at all).
    fn is_fresh(&self, credential: &Credential, now: SystemTime) -> bool {
        let lifetime = credential
            .end_time
            .duration_since(credential.start_time)
            .unwrap_or_default();
        let margin = self.refresh_before.min(lifetime / 4);
        credential
            .end_time
            .duration_since(now)
            .is_ok_and(|left| left > margin)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot>> {
        // The map holds no invariant a panicking holder could break.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
