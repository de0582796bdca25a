//! How the view is written in Redis: the keys, a device record and an override as hash
//! fields, and a change-log entry as one JSON document.

use compliance_policy::device::{DeviceId, DeviceRecord};
use compliance_policy::policy::{Override, Overrides};
use compliance_policy::replicate::Update;
use compliance_policy::state::ChangeSource;
use compliance_policy::view::Change;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The Redis keys of one shared view. All share the `{prefix}` hash tag, so that on a Redis
/// Cluster they live in one slot and one script may touch them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// Hash: device id → JSON device record.
    pub(crate) records: String,
    /// Hash: `device:<ID>` or `user:<upn>` → `allow` | `block`.
    pub(crate) overrides: String,
    /// Integer: the version of the last change written (the last log entry's id is `<version>-0`).
    pub(crate) version: String,
    /// Stream: the change log, one entry per change, id `<version>-0`.
    pub(crate) log: String,
    /// Integer: when the devices were last fully synced, Unix seconds.
    pub(crate) synced_at: String,
    /// String: the leader's fencing token `<term> <node name>`, with an expiry.
    pub(crate) leader: String,
    /// Integer: the last leader term handed out (each take of the lock is a new term).
    pub(crate) leader_term: String,
    /// Sorted set: device id → the version of the last change event written for it. A sync's
    /// result leaves alone the devices changed by an event its leader had not read yet.
    pub(crate) event_versions: String,
    /// The prefix of the staging hashes a whole view is written into before it replaces
    /// [`records`](Self::records) (see [`Keys::staging`]).
    staging: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            records: key("records"),
            overrides: key("overrides"),
            version: key("version"),
            log: key("log"),
            synced_at: key("synced-at"),
            leader: key("leader"),
            leader_term: key("leader-term"),
            event_versions: key("event-versions"),
            staging: key("staging"),
        }
    }

    /// A staging hash of its own for one write of a whole view by `node` (`id` tells apart
    /// the writes of one node): in the view's slot, so that the write script may rename it.
    pub(crate) fn staging(&self, node: &str, id: u64) -> String {
        format!("{}:{node}:{id}", self.staging)
    }
}

/// One entry of the change log as written: who made the change, why, and what it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The node that made the change.
    pub(crate) node: String,
    /// What caused it on that node.
    pub(crate) source: ChangeSource,
    /// The change.
    #[serde(flatten)]
    pub(crate) body: Body,
}

/// The change an [`Entry`] carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Body {
    /// Changes to some devices, in order.
    Changes {
        /// The changes.
        changes: Vec<WireChange>,
    },
    /// Every device (and, for a seed, every override) was replaced: read them all again.
    Full,
    /// A device's override.
    DeviceOverride {
        /// The device.
        device_id: DeviceId,
        /// Set or cleared.
        action: Option<Override>,
    },
    /// A user's override.
    UserOverride {
        /// The user (lower-case UPN).
        user: String,
        /// Set or cleared.
        action: Option<Override>,
    },
}

/// A [`Change`] as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // as `Change`: built in batches and consumed at once
pub(crate) enum WireChange {
    /// New or changed.
    Upsert(DeviceRecord),
    /// Gone.
    Remove(DeviceId),
}

/// One step of the write script (see `store::WRITE`): set or delete a record or an override,
/// clear the records (and the overrides, for a seed), record the full sync's time. A step of
/// a change to some devices carries the change as written in the log entry (its JSON), so
/// that the script can leave out of the entry a change it does not make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    SetRecord(String, String),
    /// Device id, record, the change's JSON.
    ChangeRecord(String, String, String),
    /// Device id, the change's JSON.
    RemoveRecord(String, String),
    SetOverride(String, String),
    DeleteOverride(String),
    ClearRecords,
    ClearOverrides,
    SyncedAt(u64),
}

impl Op {
    /// The script's arguments for this step.
    pub(crate) fn push_args(&self, args: &mut Vec<String>) {
        match self {
            Op::SetRecord(field, value) => args.extend(["rs".into(), field.clone(), value.clone()]),
            Op::ChangeRecord(field, value, change) => {
                args.extend(["crs".into(), field.clone(), value.clone(), change.clone()])
            }
            Op::RemoveRecord(field, change) => {
                args.extend(["crd".into(), field.clone(), change.clone()])
            }
            Op::SetOverride(field, value) => {
                args.extend(["os".into(), field.clone(), value.clone()])
            }
            Op::DeleteOverride(field) => args.extend(["od".into(), field.clone()]),
            Op::ClearRecords => args.push("rclear".into()),
            Op::ClearOverrides => args.push("oclear".into()),
            Op::SyncedAt(at) => args.extend(["synced".into(), at.to_string()]),
        }
    }
}

/// What writing one local change takes: the steps on the hashes, and the log entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Write {
    pub(crate) ops: Vec<Op>,
    pub(crate) entry: Entry,
}

impl Write {
    /// The log entry as the write script takes it: the whole entry and `""`; or, for changes
    /// to some devices, the text before and after the list of changes, which the script fills
    /// with the JSON of the changes it makes (see [`Op::ChangeRecord`]).
    pub(crate) fn entry_parts(&self) -> (String, String) {
        // Plain data (strings, numbers, booleans): it always serializes.
        match &self.entry.body {
            Body::Changes { .. } => {
                let empty = Entry {
                    body: Body::Changes {
                        changes: Vec::new(),
                    },
                    ..self.entry.clone()
                };
                let json = serde_json::to_string(&empty).unwrap_or_default();
                // The list is the entry's last field: `..."changes":[]}`.
                match json.rfind("[]") {
                    Some(at) => (json[..=at].to_owned(), json[at + 1..].to_owned()),
                    None => (json, String::new()),
                }
            }
            _ => (
                serde_json::to_string(&self.entry).unwrap_or_default(),
                String::new(),
            ),
        }
    }
}

fn change_json(change: &WireChange) -> String {
    serde_json::to_string(change).unwrap_or_default()
}

pub(crate) fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn record_json(record: &DeviceRecord) -> String {
    // A record is plain data (strings, numbers, booleans): it always serializes.
    serde_json::to_string(record).unwrap_or_default()
}

fn override_name(action: Override) -> &'static str {
    match action {
        Override::Allow => "allow",
        Override::Block => "block",
    }
}

fn device_field(id: &DeviceId) -> String {
    format!("device:{id}")
}

fn user_field(user: &str) -> String {
    format!("user:{user}")
}

/// The write of a change this node made.
pub(crate) fn encode(update: &Update, source: ChangeSource, node: &str) -> Write {
    let entry = |body| Entry {
        node: node.to_owned(),
        source,
        body,
    };
    match update {
        Update::Changes(changes) => {
            let changes: Vec<WireChange> = changes
                .iter()
                .map(|change| match change {
                    Change::Upsert(record) => WireChange::Upsert(record.clone()),
                    Change::Remove(id) => WireChange::Remove(id.clone()),
                })
                .collect();
            Write {
                ops: changes
                    .iter()
                    .map(|change| match change {
                        WireChange::Upsert(record) => Op::ChangeRecord(
                            record.device_id.to_string(),
                            record_json(record),
                            change_json(change),
                        ),
                        WireChange::Remove(id) => {
                            Op::RemoveRecord(id.to_string(), change_json(change))
                        }
                    })
                    .collect(),
                entry: entry(Body::Changes { changes }),
            }
        }
        Update::Full(view) => {
            let mut ops = Vec::with_capacity(view.len() + 2);
            ops.push(Op::ClearRecords);
            ops.extend(
                view.devices()
                    .map(|record| Op::SetRecord(record.device_id.to_string(), record_json(record))),
            );
            if let Some(at) = view.synced_at() {
                ops.push(Op::SyncedAt(unix(at)));
            }
            Write {
                ops,
                entry: entry(Body::Full),
            }
        }
        Update::DeviceOverride { device_id, action } => Write {
            ops: vec![match action {
                Some(action) => {
                    Op::SetOverride(device_field(device_id), override_name(*action).into())
                }
                None => Op::DeleteOverride(device_field(device_id)),
            }],
            entry: entry(Body::DeviceOverride {
                device_id: device_id.clone(),
                action: *action,
            }),
        },
        Update::UserOverride { user, action } => Write {
            ops: vec![match action {
                Some(action) => Op::SetOverride(user_field(user), override_name(*action).into()),
                None => Op::DeleteOverride(user_field(user)),
            }],
            entry: entry(Body::UserOverride {
                user: user.clone(),
                action: *action,
            }),
        },
    }
}

/// The write that seeds an empty store with a whole view: every record and every override.
pub(crate) fn encode_seed(view: &compliance_policy::view::View, node: &str) -> Write {
    let mut write = encode(
        &Update::Full(std::sync::Arc::new(view.clone())),
        ChangeSource::Snapshot,
        node,
    );
    write.ops.push(Op::ClearOverrides);
    let overrides = view.overrides();
    write.ops.extend(
        overrides
            .devices
            .iter()
            .map(|(id, action)| Op::SetOverride(device_field(id), override_name(*action).into())),
    );
    write.ops.extend(
        overrides
            .users
            .iter()
            .map(|(user, action)| Op::SetOverride(user_field(user), override_name(*action).into())),
    );
    write
}

/// What an entry read from the log asks of this node.
#[derive(Clone, Debug)]
pub(crate) enum Apply {
    /// Apply this update.
    Update(Update, ChangeSource),
    /// Read everything again.
    Reload,
}

impl Entry {
    /// What applying this entry takes.
    pub(crate) fn into_apply(self) -> Apply {
        let update = match self.body {
            Body::Full => return Apply::Reload,
            Body::Changes { changes } => Update::Changes(
                changes
                    .into_iter()
                    .map(|change| match change {
                        WireChange::Upsert(record) => Change::Upsert(record),
                        WireChange::Remove(id) => Change::Remove(id),
                    })
                    .collect(),
            ),
            Body::DeviceOverride { device_id, action } => {
                Update::DeviceOverride { device_id, action }
            }
            Body::UserOverride { user, action } => Update::UserOverride { user, action },
        };
        Apply::Update(update, self.source)
    }
}

/// The version of a log entry id `<version>-0`.
pub(crate) fn entry_version(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// Why something read from Redis is not a view.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub(crate) String);

/// The view of what [`crate::store`] read: records and overrides, as the hashes hold them.
pub(crate) fn decode_view(
    records: HashMap<String, String>,
    overrides: HashMap<String, String>,
    synced_at: Option<u64>,
) -> Result<compliance_policy::view::View, Malformed> {
    let devices = records
        .into_iter()
        .map(|(id, json)| {
            serde_json::from_str::<DeviceRecord>(&json)
                .map_err(|e| Malformed(format!("record {id}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut decoded = Overrides::default();
    for (field, action) in overrides {
        let action = match action.as_str() {
            "allow" => Override::Allow,
            "block" => Override::Block,
            other => return Err(Malformed(format!("override {field}: {other:?}"))),
        };
        if let Some(id) = field.strip_prefix("device:") {
            decoded.devices.insert(DeviceId::new(id), action);
        } else if let Some(user) = field.strip_prefix("user:") {
            decoded.users.insert(user.to_ascii_lowercase(), action);
        } else {
            return Err(Malformed(format!("override field {field:?}")));
        }
    }
    let view = compliance_policy::view::View::from_records(devices, decoded);
    Ok(match synced_at {
        Some(at) => view.synced(UNIX_EPOCH + Duration::from_secs(at)),
        None => view,
    })
}

/// How a node reading the log from `last` (the last version it applied) goes on, given the
/// version the store holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// The store is empty (new, or lost its data): seed it from this node's view, if loaded.
    Seed,
    /// Read everything again (first load, or the store went back in time).
    Reload,
    /// Read the log after `last`.
    FromLog,
}

/// See [`CatchUp`].
pub(crate) fn catch_up(last: Option<u64>, stored: Option<u64>) -> CatchUp {
    match (last, stored) {
        (_, None) => CatchUp::Seed,
        (None, Some(_)) => CatchUp::Reload,
        (Some(last), Some(stored)) if stored < last => CatchUp::Reload,
        (Some(_), Some(_)) => CatchUp::FromLog,
    }
}

/// Whether the entry with `version` follows `last` directly: if not, the log was trimmed past
/// what this node saw, and it must read everything again.
pub(crate) fn follows(last: u64, version: u64) -> bool {
    version == last + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use compliance_policy::device::Enrollment;
    use compliance_policy::view::View;

    fn wiped(id: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some("alice@test.local".into()),
            enrollment: Enrollment::EnterpriseWiped,
            ..Default::default()
        }
    }

    #[test]
    fn keys_share_one_cluster_hash_tag() {
        let keys = Keys::new("seg:compliance");
        assert_eq!(keys.records, "{seg:compliance}:records");
        assert_eq!(keys.log, "{seg:compliance}:log");
        assert_eq!(keys.leader, "{seg:compliance}:leader");
    }

    #[test]
    fn a_change_event_is_written_to_the_hash_and_logged_in_order() {
        let update = Update::Changes(vec![
            Change::Upsert(wiped("a1")),
            Change::Remove(DeviceId::new("b1")),
        ]);
        let write = encode(&update, ChangeSource::ChangeEvent, "node-1");
        assert_eq!(write.ops.len(), 2);
        assert!(
            matches!(&write.ops[0], Op::ChangeRecord(id, json, _) if id == "A1" && json.contains("enterprise_wiped"))
        );
        assert!(matches!(&write.ops[1], Op::RemoveRecord(id, _) if id == "B1"));
        let json = serde_json::to_string(&write.entry).unwrap();
        // The script joins the entry from its parts and the changes it makes.
        let (before, after) = write.entry_parts();
        let made: Vec<&str> = write
            .ops
            .iter()
            .map(|op| match op {
                Op::ChangeRecord(_, _, change) | Op::RemoveRecord(_, change) => change.as_str(),
                other => panic!("not a change: {other:?}"),
            })
            .collect();
        assert_eq!(format!("{before}{}{after}", made.join(",")), json);
        let (before, after) = write.entry_parts();
        let none: Entry = serde_json::from_str(&format!("{before}{after}")).unwrap();
        assert_eq!(
            none.body,
            Body::Changes {
                changes: Vec::new()
            }
        );
        assert!(json.contains(r#""kind":"changes""#), "{json}");
        assert!(json.contains(r#""source":"change-event""#), "{json}");
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, write.entry);
        let Apply::Update(Update::Changes(changes), source) = back.into_apply() else {
            panic!("not changes");
        };
        assert_eq!(source, ChangeSource::ChangeEvent);
        assert_eq!(
            changes,
            [
                Change::Upsert(wiped("A1")),
                Change::Remove(DeviceId::new("B1"))
            ]
        );
    }

    #[test]
    fn an_override_round_trips_and_a_cleared_one_deletes_its_field() {
        let set = encode(
            &Update::UserOverride {
                user: "bob@test.local".into(),
                action: Some(Override::Block),
            },
            ChangeSource::Override,
            "n",
        );
        assert_eq!(
            set.ops,
            [Op::SetOverride(
                "user:bob@test.local".into(),
                "block".into()
            )]
        );
        let cleared = encode(
            &Update::DeviceOverride {
                device_id: DeviceId::new("lab1"),
                action: None,
            },
            ChangeSource::Override,
            "n",
        );
        assert_eq!(cleared.ops, [Op::DeleteOverride("device:LAB1".into())]);
        let json = serde_json::to_string(&cleared.entry).unwrap();
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back.into_apply(),
            Apply::Update(
                Update::DeviceOverride { action: None, .. },
                ChangeSource::Override
            )
        ));
    }

    #[test]
    fn a_full_sync_replaces_the_records_and_asks_for_a_reload() {
        let view = View::from_records([wiped("A1"), wiped("A2")], Overrides::default())
            .synced(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let write = encode(
            &Update::Full(std::sync::Arc::new(view)),
            ChangeSource::FullSync,
            "n",
        );
        assert_eq!(write.ops[0], Op::ClearRecords);
        assert_eq!(write.ops.len(), 4);
        assert_eq!(write.ops[3], Op::SyncedAt(1_700_000_000));
        assert!(matches!(write.entry.clone().into_apply(), Apply::Reload));
    }

    #[test]
    fn what_is_written_decodes_back_to_the_same_view() {
        let mut overrides = Overrides::default();
        overrides
            .devices
            .insert(DeviceId::new("LAB1"), Override::Allow);
        overrides
            .users
            .insert("bob@test.local".into(), Override::Block);
        let view = View::from_records([wiped("A1")], overrides.clone());
        let write = encode_seed(&view, "n");
        let (mut records, mut stored) = (HashMap::new(), HashMap::new());
        for op in write.ops {
            match op {
                Op::SetRecord(k, v) => drop(records.insert(k, v)),
                Op::SetOverride(k, v) => drop(stored.insert(k, v)),
                Op::ClearRecords | Op::ClearOverrides | Op::SyncedAt(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let back = decode_view(records, stored, Some(5)).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(**back.device("a1").unwrap(), wiped("A1"));
        assert_eq!(back.overrides(), &overrides);
        assert_eq!(back.synced_at(), Some(UNIX_EPOCH + Duration::from_secs(5)));
    }

    #[test]
    fn a_malformed_record_is_refused_naming_it() {
        let records = HashMap::from([("X1".to_string(), "not json".to_string())]);
        let error = decode_view(records, HashMap::new(), None).unwrap_err();
        assert!(error.to_string().starts_with("record X1"), "{error}");
    }

    #[test]
    fn catch_up_reads_the_log_unless_the_store_is_new_empty_or_went_back() {
        assert_eq!(catch_up(None, None), CatchUp::Seed);
        assert_eq!(catch_up(Some(7), None), CatchUp::Seed);
        assert_eq!(catch_up(None, Some(3)), CatchUp::Reload);
        assert_eq!(catch_up(Some(7), Some(3)), CatchUp::Reload);
        assert_eq!(catch_up(Some(7), Some(7)), CatchUp::FromLog);
        assert_eq!(catch_up(Some(7), Some(9)), CatchUp::FromLog);
    }

    #[test]
    fn a_gap_in_the_log_is_detected() {
        assert_eq!(entry_version("42-0"), Some(42));
        assert_eq!(entry_version("42-1"), None);
        assert!(follows(41, 42));
        assert!(!follows(40, 42), "entry 41 was trimmed away");
        assert!(!follows(42, 42));
    }
}
