//! Server state: mailboxes, subscriptions and their event queues.
//!
//! Every event raised on a mailbox takes the mailbox's next watermark (a counter, sent to
//! clients as an opaque base64 string) and is queued on each subscription watching its folder
//! and event type. Pull subscriptions drop events once a later `GetEvents` acknowledges their
//! watermark; streaming subscriptions drop them once written to the stream; push subscriptions
//! once the callback answers `OK`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

use super::mailbox::{self, Item, Mailbox};
use super::soap::{EventType, SubscriptionKind};
use super::{ItemId, NewMessage};

/// The most events kept per subscription; older ones are dropped.
const MAX_QUEUE: usize = 10_000;

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedEvent {
    /// The event type.
    pub kind: EventType,
    /// Its watermark.
    pub seq: u64,
    /// When it happened.
    pub timestamp: SystemTime,
    /// The item.
    pub item: ItemId,
    /// The folder holding the item.
    pub parent: ItemId,
}

/// Who to wake when events are queued: a push task or the streaming connection that owns the
/// subscription.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    /// Identifies the owner, so a replaced owner can notice.
    pub token: u64,
    /// Notified on every queued event and when the subscription ends or changes hands.
    pub notify: Arc<Notify>,
}

/// One subscription.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The key of the watched mailbox.
    pub mailbox: String,
    /// Pull, push or streaming, with their settings.
    pub kind: SubscriptionKind,
    /// When the pull client last called `GetEvents` (or subscribed).
    pub last_poll: Instant,
    /// Whether every folder is watched.
    pub all_folders: bool,
    /// The watched folders' ids.
    pub folders: Vec<String>,
    /// The watched event types.
    pub event_types: Vec<EventType>,
    /// Events not yet acknowledged.
    pub queue: VecDeque<QueuedEvent>,
    /// The latest watermark the client has acknowledged (or was given).
    pub acked: u64,
    /// The `X-BackEndOverrideCookie` value later requests must carry, if made with affinity.
    pub affinity: Option<String>,
    /// Who to wake on new events.
    pub waker: Option<Waker>,
}

impl Subscription {
    fn watches(&self, folder_id: &str, kind: EventType) -> bool {
        (self.all_folders || self.folders.iter().any(|f| f == folder_id))
            && self.event_types.contains(&kind)
    }

    /// Queues an event if this subscription watches it, waking its owner.
    fn offer(&mut self, event: &QueuedEvent) {
        if !self.watches(&event.parent.id, event.kind) {
            return;
        }
        if self.queue.len() >= MAX_QUEUE {
            self.queue.pop_front();
        }
        self.queue.push_back(event.clone());
        if let Some(waker) = &self.waker {
            waker.notify.notify_one();
        }
    }

    /// Drops the events up to and including `watermark`.
    pub fn acknowledge(&mut self, watermark: u64) {
        while self.queue.front().is_some_and(|e| e.seq <= watermark) {
            self.queue.pop_front();
        }
        self.acked = self.acked.max(watermark);
    }

    /// Wakes the owner so it notices the subscription ended or changed hands.
    pub fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.notify.notify_one();
        }
    }
}

/// All mutable server state, behind one mutex never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Mailboxes by lower-case address.
    pub mailboxes: HashMap<String, Mailbox>,
    /// Subscriptions by id.
    pub subscriptions: HashMap<String, Subscription>,
}

/// The key under which a mailbox address is stored.
pub(crate) fn mailbox_key(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

impl Store {
    /// Delivers a message to the Inbox of `mailbox` and raises `NewMailEvent` and `CreatedEvent`.
    /// Returns `None` if there is no such mailbox.
    pub fn deliver(&mut self, mailbox: &str, message: NewMessage) -> Option<ItemId> {
        let key = mailbox_key(mailbox);
        let target = self.mailboxes.get_mut(&key)?;
        let inbox = target.distinguished("inbox")?;
        let item = Item {
            id: mailbox::new_id(b'I'),
            change_key: mailbox::new_change_key(),
            folder: inbox,
            subject: message.subject,
            from_name: message.from_name,
            from_address: message.from_address,
            body: message.body,
            received: SystemTime::now(),
            is_read: false,
        };
        let item_id = ItemId {
            id: item.id.clone(),
            change_key: item.change_key.clone(),
        };
        let parent = ItemId {
            id: target.folders[inbox].id.clone(),
            change_key: target.folders[inbox].change_key.clone(),
        };
        target.items.push(item);
        let mut events = Vec::new();
        for kind in [EventType::NewMail, EventType::Created] {
            target.event_seq += 1;
            events.push(QueuedEvent {
                kind,
                seq: target.event_seq,
                timestamp: SystemTime::now(),
                item: item_id.clone(),
                parent: parent.clone(),
            });
        }
        for subscription in self.subscriptions.values_mut() {
            if subscription.mailbox == key {
                for event in &events {
                    subscription.offer(event);
                }
            }
        }
        Some(item_id)
    }

    /// Removes a subscription, waking its owner so a stream or push task ends.
    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        let removed = self.subscriptions.remove(id);
        if let Some(subscription) = &removed {
            subscription.wake();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(kind_folders: Vec<String>, types: Vec<EventType>) -> (Store, String) {
        let mut store = Store::default();
        let mailbox = Mailbox::new("alice@test.local");
        let folders = if kind_folders.is_empty() {
            vec![
                mailbox.folders[mailbox.distinguished("inbox").unwrap()]
                    .id
                    .clone(),
            ]
        } else {
            kind_folders
        };
        store.mailboxes.insert("alice@test.local".into(), mailbox);
        store.subscriptions.insert(
            "s1".into(),
            Subscription {
                mailbox: "alice@test.local".into(),
                kind: SubscriptionKind::Streaming,
                last_poll: Instant::now(),
                all_folders: false,
                folders,
                event_types: types,
                queue: VecDeque::new(),
                acked: 0,
                affinity: None,
                waker: None,
            },
        );
        (store, "s1".into())
    }

    fn message(subject: &str) -> NewMessage {
        NewMessage::new(subject)
    }

    #[test]
    fn delivery_queues_new_mail_and_created_events_on_inbox_watchers() {
        let (mut store, id) = store_with(vec![], vec![EventType::NewMail, EventType::Created]);
        let item = store.deliver("Alice@Test.Local", message("hi")).unwrap();
        let queue = &store.subscriptions[&id].queue;
        assert_eq!(
            queue.iter().map(|e| (e.kind, e.seq)).collect::<Vec<_>>(),
            vec![(EventType::NewMail, 1), (EventType::Created, 2)]
        );
        assert!(queue.iter().all(|e| e.item == item));
    }

    #[test]
    fn events_of_unwatched_types_or_folders_are_not_queued() {
        let (mut store, id) = store_with(vec!["elsewhere".into()], vec![EventType::NewMail]);
        store.deliver("alice@test.local", message("hi")).unwrap();
        assert!(store.subscriptions[&id].queue.is_empty());
        let (mut store, id) = store_with(vec![], vec![EventType::Deleted]);
        store.deliver("alice@test.local", message("hi")).unwrap();
        assert!(store.subscriptions[&id].queue.is_empty());
    }

    #[test]
    fn acknowledging_drops_events_up_to_the_watermark() {
        let (mut store, id) = store_with(vec![], vec![EventType::NewMail, EventType::Created]);
        store.deliver("alice@test.local", message("a")).unwrap();
        let subscription = store.subscriptions.get_mut(&id).unwrap();
        subscription.acknowledge(1);
        assert_eq!(subscription.queue.len(), 1);
        assert_eq!(subscription.acked, 1);
    }

    #[test]
    fn delivery_to_an_unknown_mailbox_is_refused() {
        let (mut store, _) = store_with(vec![], vec![EventType::NewMail]);
        assert!(store.deliver("nobody@test.local", message("x")).is_none());
    }
}
