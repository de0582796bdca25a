//! The append-only store: one redb file, its entries keyed by id, with indexes by time, device
//! and user.
//!
//! Tables: `entries` (id → JSON [`Entry`]), `by_time` ((ms, id) → ()), `by_device` ((device,
//! id) → ()), `by_user` ((user, id) → ()) and `meta` (the next id and the last time, so that ids
//! never go back even once retention has emptied the trail). A batch of records is one write
//! transaction. Entry times never go back as ids grow (a record that waited in the queue is
//! stamped no earlier than the one written before it), so a time range is an id range and every
//! query walks one index backwards from its upper bound: newest first, with a cursor that is
//! the last id seen.
//!
//! After a failed write (a full disk, an I/O error) redb refuses every later transaction until
//! the file is closed and opened again: the writer then calls [`Store::reopen`], so that the
//! trail writes again once the disk does.
//!
//! Every method blocks on the disk: call them from a blocking thread
//! ([`tokio::task::spawn_blocking`]), as the writer, the retention task and the API do.

use crate::AuditError;
use crate::entry::{Entry, Record, from_millis, millis};
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const BY_TIME: TableDefinition<'_, (u64, u64), ()> = TableDefinition::new("by_time");
const BY_DEVICE: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("by_device");
const BY_USER: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("by_user");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const NEXT_ID: &str = "next_id";
const LAST_AT: &str = "last_at_ms";

/// Entries per page when a query names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// The largest page a query returns.
pub const MAX_LIMIT: usize = 1000;

/// Which entries, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this device's (any case).
    pub device: Option<String>,
    /// Only this user's (any case).
    pub user: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<SystemTime>,
    /// Only entries at or before this time.
    pub until: Option<SystemTime>,
    /// At most this many ([`DEFAULT_LIMIT`] when 0, at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only entries older than this id: the `next_cursor` of the page before.
    pub cursor: Option<u64>,
}

/// A page of entries, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The cursor of the next (older) page; `None` when this is the last.
    pub next_cursor: Option<u64>,
}

/// The store; cheap to clone, every clone shares the open file.
#[derive(Clone)]
pub struct Store {
    /// The open file; `None` between a close and a reopen that failed.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn store_error(path: &Path) -> impl Fn(redb::Error) -> AuditError + '_ {
    move |source| AuditError::Store {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

/// Any of redb's errors, as one.
fn db(error: impl Into<redb::Error>) -> redb::Error {
    error.into()
}

/// Opens (creating it when missing) the redb file at `path` with every table.
fn open_database(path: &Path) -> Result<Database, AuditError> {
    let fail = store_error(path);
    let database = Database::create(path).map_err(|e| fail(db(e)))?;
    let txn = database.begin_write().map_err(|e| fail(db(e)))?;
    txn.open_table(ENTRIES).map_err(|e| fail(db(e)))?;
    txn.open_table(BY_TIME).map_err(|e| fail(db(e)))?;
    txn.open_table(BY_DEVICE).map_err(|e| fail(db(e)))?;
    txn.open_table(BY_USER).map_err(|e| fail(db(e)))?;
    txn.open_table(META).map_err(|e| fail(db(e)))?;
    txn.commit().map_err(|e| fail(db(e)))?;
    Ok(database)
}

impl Store {
    /// Opens the store at `path`, creating it (not its directory) when missing.
    ///
    /// Fails when the file cannot be created or read, is not a redb file, or is held by
    /// another process.
    pub fn open(path: &Path) -> Result<Store, AuditError> {
        Ok(Store {
            db: Arc::new(RwLock::new(Some(Arc::new(open_database(path)?)))),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Closes the file and opens it again (redb repairs what a failed commit left): after a
    /// failed write redb refuses every transaction until then.
    ///
    /// Fails when the file cannot be opened now (the store then answers
    /// [`AuditError::Closed`] until a later call succeeds), or while a query still reads the
    /// old one (the store stays as it was).
    pub fn reopen(&self) -> Result<(), AuditError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = slot.take() {
            match Arc::try_unwrap(open) {
                // Its error is the one that made us reopen, already reported.
                Ok(database) => drop(database.close()),
                Err(shared) => {
                    *slot = Some(shared);
                    return Err(self.fail(redb::Error::DatabaseAlreadyOpen));
                }
            }
        }
        *slot = Some(Arc::new(open_database(&self.path)?));
        Ok(())
    }

    /// The open file, or [`AuditError::Closed`].
    fn database(&self) -> Result<Arc<Database>, AuditError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AuditError::Closed {
                path: self.path.as_ref().clone(),
            })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, error: impl Into<redb::Error>) -> AuditError {
        store_error(&self.path)(error.into())
    }

    /// Appends `records` in one transaction, as entries of `node`; returns them with their ids.
    pub fn append(&self, node: &str, records: Vec<Record>) -> Result<Vec<Entry>, AuditError> {
        let database = self.database()?;
        let txn = database.begin_write().map_err(|e| self.fail(e))?;
        let mut written = Vec::with_capacity(records.len());
        {
            let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.fail(e))?;
            let mut by_time = txn.open_table(BY_TIME).map_err(|e| self.fail(e))?;
            let mut by_device = txn.open_table(BY_DEVICE).map_err(|e| self.fail(e))?;
            let mut by_user = txn.open_table(BY_USER).map_err(|e| self.fail(e))?;
            let read = |meta: &redb::Table<'_, &str, u64>, key| {
                meta.get(key)
                    .map(|value| value.map_or(0, |v| v.value()))
                    .map_err(|e| self.fail(e))
            };
            let mut next_id = read(&meta, NEXT_ID)?.max(1);
            let mut last_at = read(&meta, LAST_AT)?;
            for record in records {
                let at = millis(record.at).max(last_at);
                let entry = Entry {
                    id: next_id,
                    at: from_millis(at),
                    node: node.to_owned(),
                    device: record.device,
                    user: record.user,
                    event: record.event,
                };
                let json = serde_json::to_vec(&entry).map_err(|source| AuditError::Encode {
                    id: entry.id,
                    source,
                })?;
                entries
                    .insert(entry.id, json.as_slice())
                    .map_err(|e| self.fail(e))?;
                by_time
                    .insert((at, entry.id), ())
                    .map_err(|e| self.fail(e))?;
                if let Some(device) = &entry.device {
                    by_device
                        .insert((device.as_str(), entry.id), ())
                        .map_err(|e| self.fail(e))?;
                }
                if let Some(user) = &entry.user {
                    by_user
                        .insert((user.as_str(), entry.id), ())
                        .map_err(|e| self.fail(e))?;
                }
                next_id += 1;
                last_at = at;
                written.push(entry);
            }
            meta.insert(NEXT_ID, next_id).map_err(|e| self.fail(e))?;
            meta.insert(LAST_AT, last_at).map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(written)
    }

    /// The entries `query` asks for, newest first, and the cursor of the next page.
    pub fn query(&self, query: &Query) -> Result<Page, AuditError> {
        let limit = match query.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let database = self.database()?;
        let txn = database.begin_read().map_err(|e| self.fail(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.fail(e))?;
        let by_time = txn.open_table(BY_TIME).map_err(|e| self.fail(e))?;
        // The id range: below the cursor, within the times.
        let mut hi = match query.cursor {
            Some(0) => return Ok(Page::default()),
            Some(cursor) => cursor - 1,
            None => u64::MAX,
        };
        let mut lo = 0;
        if let Some(until) = query.until {
            match by_time
                .range(..=(millis(until), u64::MAX))
                .map_err(|e| self.fail(e))?
                .next_back()
            {
                Some(found) => hi = hi.min(found.map_err(|e| self.fail(e))?.0.value().1),
                None => return Ok(Page::default()),
            }
        }
        if let Some(since) = query.since {
            match by_time
                .range((millis(since), 0)..)
                .map_err(|e| self.fail(e))?
                .next()
            {
                Some(found) => lo = found.map_err(|e| self.fail(e))?.0.value().1,
                None => return Ok(Page::default()),
            }
        }
        if lo > hi {
            return Ok(Page::default());
        }
        let device = query.device.as_deref().map(str::to_ascii_uppercase);
        let user = query.user.as_deref().map(str::to_ascii_lowercase);
        // One more than asked, to know whether there is a next page.
        let mut found: Vec<Entry> = Vec::with_capacity(limit + 1);
        let mut take = |id: u64| -> Result<bool, AuditError> {
            let Some(value) = entries.get(id).map_err(|e| self.fail(e))? else {
                return Ok(true); // purged between the index and here
            };
            let entry: Entry = serde_json::from_slice(value.value())
                .map_err(|source| AuditError::Damaged { id, source })?;
            if user.is_some() && entry.user != user {
                return Ok(true);
            }
            found.push(entry);
            Ok(found.len() <= limit)
        };
        if let Some(device) = &device {
            let index = txn.open_table(BY_DEVICE).map_err(|e| self.fail(e))?;
            let range = index
                .range((device.as_str(), lo)..=(device.as_str(), hi))
                .map_err(|e| self.fail(e))?;
            for key in range.rev() {
                if !take(key.map_err(|e| self.fail(e))?.0.value().1)? {
                    break;
                }
            }
        } else if let Some(user) = &user {
            let index = txn.open_table(BY_USER).map_err(|e| self.fail(e))?;
            let range = index
                .range((user.as_str(), lo)..=(user.as_str(), hi))
                .map_err(|e| self.fail(e))?;
            for key in range.rev() {
                if !take(key.map_err(|e| self.fail(e))?.0.value().1)? {
                    break;
                }
            }
        } else {
            let range = entries.range(lo..=hi).map_err(|e| self.fail(e))?;
            for key in range.rev() {
                if !take(key.map_err(|e| self.fail(e))?.0.value())? {
                    break;
                }
            }
        }
        let next_cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|entry| entry.id)
        } else {
            None
        };
        Ok(Page {
            entries: found,
            next_cursor,
        })
    }

    /// Deletes up to `batch` of the oldest entries from before `cutoff`, in one transaction;
    /// returns how many it deleted (fewer than `batch`: none older is left).
    pub fn purge_before(&self, cutoff: SystemTime, batch: usize) -> Result<usize, AuditError> {
        let database = self.database()?;
        let txn = database.begin_write().map_err(|e| self.fail(e))?;
        let mut purged = 0;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.fail(e))?;
            let mut by_time = txn.open_table(BY_TIME).map_err(|e| self.fail(e))?;
            let mut by_device = txn.open_table(BY_DEVICE).map_err(|e| self.fail(e))?;
            let mut by_user = txn.open_table(BY_USER).map_err(|e| self.fail(e))?;
            let old: Vec<(u64, u64)> = by_time
                .range(..(millis(cutoff), 0))
                .map_err(|e| self.fail(e))?
                .take(batch)
                .map(|key| key.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.fail(e))?;
            for (at, id) in old {
                by_time.remove((at, id)).map_err(|e| self.fail(e))?;
                let removed = entries.remove(id).map_err(|e| self.fail(e))?;
                let Some(value) = removed else { continue };
                // A damaged entry still goes; only its index keys may stay behind (harmless:
                // a query skips ids without an entry).
                if let Ok(entry) = serde_json::from_slice::<Entry>(value.value()) {
                    if let Some(device) = &entry.device {
                        by_device
                            .remove((device.as_str(), id))
                            .map_err(|e| self.fail(e))?;
                    }
                    if let Some(user) = &entry.user {
                        by_user
                            .remove((user.as_str(), id))
                            .map_err(|e| self.fail(e))?;
                    }
                }
                purged += 1;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(purged)
    }

    /// How many entries the trail holds.
    pub fn len(&self) -> Result<u64, AuditError> {
        let database = self.database()?;
        let txn = database.begin_read().map_err(|e| self.fail(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.fail(e))?;
        entries.len().map_err(|e| self.fail(e))
    }

    /// Whether the trail is empty.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }
}
