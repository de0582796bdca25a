//! Long-lived responses (EWS streaming notifications, ActiveSync `Ping` and hanging `Sync`) by
//! device and user, so that a block cuts them at once instead of at their next request.

use crate::device::DeviceId;
use crate::policy::{BlockReason, Decision};
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Context;

/// The signal shared by a registered response and the registry, with whom the response is for.
#[derive(Debug, Default)]
pub(crate) struct CutSignal {
    cut: AtomicBool,
    /// Why it was cut; set before `cut`.
    reason: OnceLock<BlockReason>,
    waker: AtomicWaker,
    device: Option<DeviceId>,
    user: Option<String>,
}

impl CutSignal {
    /// Cuts for `reason`; true if it was not cut before.
    fn cut(&self, reason: BlockReason) -> bool {
        let _ = self.reason.set(reason);
        let first = !self.cut.swap(true, Ordering::AcqRel);
        self.waker.wake();
        first
    }
}

#[derive(Debug, Default)]
struct Entries {
    by_device: HashMap<DeviceId, Vec<Arc<CutSignal>>>,
    by_user: HashMap<String, Vec<Arc<CutSignal>>>,
    len: usize,
}

/// Registered long-lived responses.
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    entries: Arc<Mutex<Entries>>,
}

impl StreamRegistry {
    pub(crate) fn register(&self, device: Option<DeviceId>, user: Option<String>) -> StreamGuard {
        let signal = Arc::new(CutSignal {
            device: device.clone(),
            user: user.clone(),
            ..CutSignal::default()
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = &device {
            entries
                .by_device
                .entry(device.clone())
                .or_default()
                .push(signal.clone());
        }
        if let Some(user) = &user {
            entries
                .by_user
                .entry(user.clone())
                .or_default()
                .push(signal.clone());
        }
        entries.len += 1;
        StreamGuard {
            signal,
            device,
            user,
            entries: self.entries.clone(),
        }
    }

    /// Cuts the responses of `device` or of `user` for which `decide(device, user)` (the
    /// decision for whom each is, now) blocks; returns how many were cut now. Re-deciding, not
    /// cutting every response of the user: one of her devices blocked leaves her others'
    /// responses alone, and a response without a device follows the user's own decision.
    pub(crate) fn cut(
        &self,
        device: &DeviceId,
        user: Option<&str>,
        decide: impl Fn(Option<&str>, Option<&str>) -> Decision,
    ) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let by_device = entries.by_device.get(device).into_iter().flatten();
        let user = user.map(str::to_ascii_lowercase);
        let by_user = user
            .and_then(|u| entries.by_user.get(&u))
            .into_iter()
            .flatten();
        by_device
            .chain(by_user)
            .filter(|signal| {
                match decide(
                    signal.device.as_ref().map(DeviceId::as_str),
                    signal.user.as_deref(),
                ) {
                    Decision::Block(reason) => signal.cut(reason),
                    Decision::Allow(_) => false,
                }
            })
            .count()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len).unwrap_or(0)
    }
}

/// A registered long-lived response; unregisters when dropped.
#[derive(Debug)]
pub struct StreamGuard {
    signal: Arc<CutSignal>,
    device: Option<DeviceId>,
    user: Option<String>,
    entries: Arc<Mutex<Entries>>,
}

impl StreamGuard {
    /// Whether the response has been cut; registers `cx` to be woken when it is.
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> bool {
        if self.signal.cut.load(Ordering::Acquire) {
            return true;
        }
        self.signal.waker.register(cx.waker());
        self.signal.cut.load(Ordering::Acquire)
    }

    /// Whether the response has been cut.
    pub fn is_cut(&self) -> bool {
        self.signal.cut.load(Ordering::Acquire)
    }

    /// Why the response was cut: the decision that blocked its device or user; `None` while
    /// it is not cut.
    pub fn cut_reason(&self) -> Option<BlockReason> {
        if self.is_cut() {
            self.signal.reason.get().copied()
        } else {
            None
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let remove =
            |list: &mut Vec<Arc<CutSignal>>| list.retain(|s| !Arc::ptr_eq(s, &self.signal));
        if let Some(device) = &self.device
            && let Some(list) = entries.by_device.get_mut(device)
        {
            remove(list);
            if list.is_empty() {
                entries.by_device.remove(device);
            }
        }
        if let Some(user) = &self.user
            && let Some(list) = entries.by_user.get_mut(user)
        {
            remove(list);
            if list.is_empty() {
                entries.by_user.remove(user);
            }
        }
        entries.len -= 1;
    }
}
