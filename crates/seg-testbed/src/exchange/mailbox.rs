//! Mailboxes: their well-known folders and the messages delivered to them.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;

/// The kind of a folder, which decides its element name in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FolderClass {
    /// `t:Folder`.
    Mail,
    /// `t:CalendarFolder`.
    Calendar,
    /// `t:ContactsFolder`.
    Contacts,
    /// `t:TasksFolder`.
    Tasks,
}

impl FolderClass {
    /// The EWS element name for folders of this class.
    pub fn element(self) -> &'static str {
        match self {
            FolderClass::Mail => "Folder",
            FolderClass::Calendar => "CalendarFolder",
            FolderClass::Contacts => "ContactsFolder",
            FolderClass::Tasks => "TasksFolder",
        }
    }
}

/// The folders every mailbox holds: (distinguished id, display name, class, parent index).
const FOLDERS: [(&str, &str, FolderClass, Option<usize>); 13] = [
    ("root", "", FolderClass::Mail, None),
    (
        "msgfolderroot",
        "Top of Information Store",
        FolderClass::Mail,
        Some(0),
    ),
    ("inbox", "Inbox", FolderClass::Mail, Some(1)),
    ("sentitems", "Sent Items", FolderClass::Mail, Some(1)),
    ("drafts", "Drafts", FolderClass::Mail, Some(1)),
    ("deleteditems", "Deleted Items", FolderClass::Mail, Some(1)),
    ("outbox", "Outbox", FolderClass::Mail, Some(1)),
    ("junkemail", "Junk Email", FolderClass::Mail, Some(1)),
    ("calendar", "Calendar", FolderClass::Calendar, Some(1)),
    ("contacts", "Contacts", FolderClass::Contacts, Some(1)),
    ("tasks", "Tasks", FolderClass::Tasks, Some(1)),
    ("notes", "Notes", FolderClass::Mail, Some(1)),
    ("journal", "Journal", FolderClass::Mail, Some(1)),
];

/// Distinguished folder ids the EWS schema allows but this stand-in does not hold: a request
/// naming one gets `ErrorFolderNotFound` rather than a schema fault.
pub(crate) const OTHER_DISTINGUISHED: [&str; 12] = [
    "publicfoldersroot",
    "searchfolders",
    "voicemail",
    "recoverableitemsroot",
    "recoverableitemsdeletions",
    "recoverableitemsversions",
    "recoverableitemspurges",
    "archiveroot",
    "archivemsgfolderroot",
    "archivedeleteditems",
    "archiveinbox",
    "syncissues",
];

/// Whether `id` is a distinguished folder id the EWS schema knows.
pub(crate) fn is_distinguished_name(id: &str) -> bool {
    FOLDERS.iter().any(|f| f.0 == id) || OTHER_DISTINGUISHED.contains(&id)
}

/// One folder of a mailbox.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    /// The distinguished id (`inbox`, `msgfolderroot`, …).
    pub distinguished: &'static str,
    /// The EWS folder id.
    pub id: String,
    /// The change key.
    pub change_key: String,
    /// The display name.
    pub display_name: &'static str,
    /// The folder class.
    pub class: FolderClass,
    /// The index of the parent folder.
    pub parent: Option<usize>,
}

/// One message.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// The EWS item id.
    pub id: String,
    /// The change key.
    pub change_key: String,
    /// The index of the folder holding it.
    pub folder: usize,
    /// The subject.
    pub subject: String,
    /// The sender's display name.
    pub from_name: String,
    /// The sender's SMTP address.
    pub from_address: String,
    /// The plain-text body.
    pub body: String,
    /// When it was delivered.
    pub received: SystemTime,
    /// Whether it was read.
    pub is_read: bool,
}

/// A mailbox: its folders, items and event counter.
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// The primary SMTP address.
    pub address: String,
    /// The folders, `root` first.
    pub folders: Vec<Folder>,
    /// The items of all folders.
    pub items: Vec<Item>,
    /// The watermark of the latest event raised on this mailbox.
    pub event_seq: u64,
}

impl Mailbox {
    /// A mailbox with the well-known folders and no items.
    pub fn new(address: &str) -> Self {
        let folders = FOLDERS
            .iter()
            .map(|(distinguished, display_name, class, parent)| Folder {
                distinguished,
                id: new_id(b'F'),
                change_key: new_change_key(),
                display_name,
                class: *class,
                parent: *parent,
            })
            .collect();
        Self {
            address: address.to_string(),
            folders,
            items: Vec::new(),
            event_seq: 0,
        }
    }

    /// The index of the folder with this distinguished id.
    pub fn distinguished(&self, id: &str) -> Option<usize> {
        self.folders.iter().position(|f| f.distinguished == id)
    }

    /// The index of the folder with this EWS id.
    pub fn folder_by_id(&self, id: &str) -> Option<usize> {
        self.folders.iter().position(|f| f.id == id)
    }

    /// The item with this EWS id.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    /// (total items, unread items, child folders) of a folder.
    pub fn counts(&self, folder: usize) -> (usize, usize, usize) {
        let items = self.items.iter().filter(|i| i.folder == folder);
        let total = items.clone().count();
        let unread = items.filter(|i| !i.is_read).count();
        let children = self
            .folders
            .iter()
            .filter(|f| f.parent == Some(folder))
            .count();
        (total, unread, children)
    }
}

/// A new opaque EWS id: base64 of random bytes behind the prefix that makes Exchange's ids
/// start with `AAMk`, then a kind byte.
pub(crate) fn new_id(kind: u8) -> String {
    let mut bytes = [0u8; 42];
    rand::rng().fill_bytes(&mut bytes);
    bytes[..3].copy_from_slice(&[0x00, 0x03, 0x24]);
    bytes[3] = kind;
    STANDARD.encode(bytes)
}

/// A new change key.
pub(crate) fn new_change_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes[..8].copy_from_slice(&[0x09, 0, 0, 0, 0x16, 0, 0, 0]);
    STANDARD.encode(bytes)
}

/// Whether `id` could be an EWS id at all (base64); used to tell malformed ids from unknown ones.
pub(crate) fn is_well_formed_id(id: &str) -> bool {
    !id.is_empty() && STANDARD.decode(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_mailbox_holds_the_well_known_folders_under_msgfolderroot() {
        let mailbox = Mailbox::new("alice@test.local");
        let root = mailbox.distinguished("msgfolderroot").unwrap();
        let inbox = mailbox.distinguished("inbox").unwrap();
        assert_eq!(mailbox.folders[inbox].parent, Some(root));
        assert_eq!(mailbox.counts(root).2, 11);
        assert_eq!(mailbox.counts(inbox), (0, 0, 0));
        assert_eq!(
            mailbox.folder_by_id(&mailbox.folders[inbox].id),
            Some(inbox)
        );
    }

    #[test]
    fn ids_are_distinct_base64() {
        let (a, b) = (new_id(b'I'), new_id(b'I'));
        assert_ne!(a, b);
        assert!(a.starts_with("AAMk"), "{a}");
        // Ten characters carry the fixed eight bytes exactly; the eleventh mixes in random bits.
        assert!(new_change_key().starts_with("CQAAABYAAA"));
        assert!(is_well_formed_id(&a));
        assert!(!is_well_formed_id("not base64!"));
    }
}
