//! The Redis commands of the shared view: the write script, reading the whole view
//! and the change log, and the leader lock.

use crate::RedisSettings;
use crate::connection::Connection;
use crate::wire::{Keys, Op, Write};
use compliance_policy::state::ChangeSource;
use redis::streams::StreamReadReply;
use redis::{RedisResult, Script};
use std::collections::HashMap;
use std::time::Duration;

/// Writes one change: its steps on the hashes and its log entry, atomically, under the next
/// version; answers `{version, held back}`.
///
/// - `ARGV[1]`: the log's approximate length limit.
/// - `ARGV[2]`, `ARGV[3]`: the log entry and `''`; or, for changes to some devices, the text
///   before and after the list of changes, which is filled with the changes made (`crs`, `crd`).
/// - `ARGV[4]`: `seed` to write only into an empty store (answering 0 otherwise), else empty
///   to write only into a store that is not (answering -1 otherwise: a change alone must not
///   become the whole view of a store that lost its data).
/// - `ARGV[5]`: the leader's fencing token for a sync's result, written only while the lock
///   `KEYS[6]` holds exactly that token (answering -2 otherwise: a leader that lost the lock
///   must not overwrite its successor's view), else empty.
/// - `ARGV[6]`: `event` for a change event: each device it changes is stamped with this
///   version in `KEYS[8]`. For a sync's result, the last version its leader had read when it
///   made it: a device stamped later was changed by an event the leader did not know of, and
///   keeps its record (the sync's change for it is held back, and left out of the entry).
///   Else empty.
/// - then the steps. A whole view too big for one call has its records staged in `KEYS[7]`
///   first: the step `rstaged <count>` puts them in place (and refuses an incomplete staging).
const WRITE: &str = r"
if ARGV[5] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[5] then
  return {-2, 0}
end
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[4] == 'seed' and exists then
  return {0, 0}
end
if ARGV[4] ~= 'seed' and not exists then
  return {-1, 0}
end
local version = redis.call('INCR', KEYS[1])
local event = ARGV[6] == 'event'
-- The devices an event changed after the sync's leader last read the log, and their records.
local kept = {}
if ARGV[6] ~= '' and not event then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '(' .. ARGV[6], '+inf')) do
    kept[id] = redis.call('HGET', KEYS[2], id)
  end
end
if ARGV[4] == 'seed' then
  -- Versions start again: stamps of an earlier store mean nothing.
  redis.call('DEL', KEYS[8])
end
local changes = {}
local held = 0
local replaced = false
local i = 7
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'rs' then
    if kept[ARGV[i + 1]] == nil then
      redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 3
  elseif op == 'crs' or op == 'crd' then
    local id = ARGV[i + 1]
    if kept[id] == nil then
      if op == 'crs' then
        redis.call('HSET', KEYS[2], id, ARGV[i + 2])
      else
        redis.call('HDEL', KEYS[2], id)
      end
      if event then
        redis.call('ZADD', KEYS[8], version, id)
      end
      changes[#changes + 1] = ARGV[op == 'crs' and i + 3 or i + 2]
    else
      held = held + 1
    end
    i = i + (op == 'crs' and 4 or 3)
  elseif op == 'os' then
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'od' then
    redis.call('HDEL', KEYS[3], ARGV[i + 1]); i = i + 2
  elseif op == 'rclear' then
    redis.call('DEL', KEYS[2]); replaced = true; i = i + 1
  elseif op == 'rstaged' then
    -- The records staged in KEYS[7] replace them, if all ARGV[i + 1] are there.
    if redis.call('HLEN', KEYS[7]) ~= tonumber(ARGV[i + 1]) then
      return redis.error_reply('STAGING the staged records are incomplete')
    end
    if redis.call('EXISTS', KEYS[7]) == 1 then
      redis.call('RENAME', KEYS[7], KEYS[2])
      redis.call('PERSIST', KEYS[2])
    else
      redis.call('DEL', KEYS[2])
    end
    replaced = true
    i = i + 2
  elseif op == 'oclear' then
    redis.call('DEL', KEYS[3]); i = i + 1
  elseif op == 'synced' then
    redis.call('SET', KEYS[5], ARGV[i + 1]); i = i + 2
  else
    return redis.error_reply('unknown step ' .. op)
  end
end
if replaced then
  -- A whole view replaced the records: the kept ones are put back as they were.
  for id, record in pairs(kept) do
    if record then
      redis.call('HSET', KEYS[2], id, record)
    else
      redis.call('HDEL', KEYS[2], id)
    end
    held = held + 1
  end
end
if event then
  -- A sync's leader further behind than the log is long reads everything again anyway.
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', version - tonumber(ARGV[1]))
end
local entry = ARGV[2]
if ARGV[3] ~= '' then
  entry = ARGV[2] .. table.concat(changes, ',') .. ARGV[3]
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], version .. '-0', 'e', entry)
return {version, held}
";

/// Takes the lock `KEYS[1]` for node `ARGV[1]` for `ARGV[2]` ms if nobody holds it, under the
/// next term of the counter `KEYS[2]`: the lock's value `<term> <node>` is the new leader's
/// fencing token. Answers the term, or 0 when the lock is held.
const TAKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], term .. ' ' .. ARGV[1], 'PX', ARGV[2])
return term
";

/// Extends the lock `KEYS[1]` by `ARGV[2]` ms if it still holds the token `ARGV[1]`.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lock `KEYS[1]` if it still holds the token `ARGV[1]`.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written under this version; for a sync's result, `held_back` of its changes were not
    /// made: their devices were changed by an event its leader had not read yet.
    Version {
        /// The version.
        version: u64,
        /// Changes held back.
        held_back: u64,
    },
    /// A seed, refused: the store is not empty.
    NotEmpty,
    /// A change, refused: the store is empty (new, or it lost its data); seed it instead.
    Empty,
    /// A sync's result, refused: the leader lock no longer holds this node's fencing token.
    Fenced,
}

/// How long a staging hash outlives its last batch: the staging of a node that died while
/// writing is removed by Redis.
const STAGING_TTL: Duration = Duration::from_secs(120);

/// Tells apart the stagings of one process's writes.
static STAGING_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What is written, for the write script's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    /// A whole view, written only into an empty store.
    Seed,
    /// A change made on this node other than a sync's result (an event, an override),
    /// written only into a store that is not empty.
    Change,
    /// A sync's result, written only while the leader lock holds `token`; it leaves alone the
    /// devices changed by an event written after the version `read` (the last one its leader
    /// had read when it made the result).
    SyncResult {
        /// The leader term's fencing token.
        token: &'a str,
        /// The last version the leader had read.
        read: u64,
    },
}

/// Writes `write` as `kind` says. A whole view of more than `settings.full_sync_batch`
/// records is staged in batches first (see [`WRITE`]); the step that puts it in place is
/// atomic and fenced like any other write.
pub(crate) async fn write(
    conn: &mut Connection,
    keys: &Keys,
    write: &Write,
    settings: &RedisSettings,
    kind: Kind<'_>,
) -> RedisResult<Written> {
    let (entry, entry_end) = write.entry_parts();
    let (seed, fence, stamp) = match kind {
        Kind::Seed => ("seed", "", String::new()),
        Kind::Change if write.entry.source == ChangeSource::ChangeEvent => {
            ("", "", "event".to_owned())
        }
        Kind::Change => ("", "", String::new()),
        Kind::SyncResult { token, read } => ("", token, read.to_string()),
    };
    let mut args = vec![
        settings.log_length.to_string(),
        entry,
        entry_end,
        seed.to_owned(),
        fence.to_owned(),
        stamp,
    ];
    let staging = keys.staging(
        &settings.node_name,
        STAGING_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    );
    let mut ops = write.ops.as_slice();
    let mut staged = false;
    let batch = settings.full_sync_batch.max(1);
    if let [Op::ClearRecords, rest @ ..] = ops {
        let records = rest
            .iter()
            .take_while(|op| matches!(op, Op::SetRecord(..)))
            .count();
        if records > batch {
            stage(conn, &staging, &rest[..records], batch).await?;
            args.extend(["rstaged".to_owned(), records.to_string()]);
            ops = &rest[records..];
            staged = true;
        }
    }
    for op in ops {
        op.push_args(&mut args);
    }
    let script = Script::new(WRITE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&keys.version)
        .key(&keys.records)
        .key(&keys.overrides)
        .key(&keys.log)
        .key(&keys.synced_at)
        .key(&keys.leader)
        .key(&staging)
        .key(&keys.event_versions);
    for arg in &args {
        invocation.arg(arg);
    }
    let written = invocation.invoke_async::<(i64, u64)>(conn).await;
    if staged && !matches!(written, Ok((version, _)) if version > 0) {
        // Refused (fenced, the store empty or not) or failed: a staging left behind is of no
        // use, gone now rather than at its expiry.
        let _: RedisResult<i64> = redis::cmd("DEL").arg(&staging).query_async(conn).await;
    }
    Ok(match written? {
        (0, _) => Written::NotEmpty,
        (-1, _) => Written::Empty,
        (-2, _) => Written::Fenced,
        (version, held_back) => Written::Version {
            version: version.unsigned_abs(),
            held_back,
        },
    })
}

/// Writes the records of `ops` (each a [`Op::SetRecord`]) into the hash `staging`, `batch` at a
/// time, each batch renewing its expiry.
async fn stage(conn: &mut Connection, staging: &str, ops: &[Op], batch: usize) -> RedisResult<()> {
    let ttl = u64::try_from(STAGING_TTL.as_millis()).unwrap_or(u64::MAX);
    for chunk in ops.chunks(batch) {
        let mut hset = redis::cmd("HSET");
        hset.arg(staging);
        for op in chunk {
            if let Op::SetRecord(field, value) = op {
                hset.arg(field).arg(value);
            }
        }
        redis::pipe()
            .add_command(hset)
            .ignore()
            .cmd("PEXPIRE")
            .arg(staging)
            .arg(ttl)
            .ignore()
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// The version of the last change the store holds; `None` for an empty store.
pub(crate) async fn stored_version(conn: &mut Connection, keys: &Keys) -> RedisResult<Option<u64>> {
    redis::cmd("GET").arg(&keys.version).query_async(conn).await
}

/// Everything the store holds, read atomically: records, overrides, version, last full sync.
pub(crate) type Loaded = (
    HashMap<String, String>,
    HashMap<String, String>,
    Option<u64>,
    Option<u64>,
);

/// See [`Loaded`].
pub(crate) async fn load(conn: &mut Connection, keys: &Keys) -> RedisResult<Loaded> {
    redis::pipe()
        .atomic()
        .hgetall(&keys.records)
        .hgetall(&keys.overrides)
        .get(&keys.version)
        .get(&keys.synced_at)
        .query_async(conn)
        .await
}

/// The log entries after version `after`, waiting up to `block` for one: `(id, entry JSON)`.
pub(crate) async fn read_log(
    conn: &mut Connection,
    keys: &Keys,
    after: u64,
    block: Duration,
    count: usize,
) -> RedisResult<Vec<(String, Option<String>)>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(&keys.log)
        .arg(format!("{after}-0"))
        .query_async(conn)
        .await?;
    Ok(reply
        .into_iter()
        .flat_map(|reply| reply.keys)
        .flat_map(|key| key.ids)
        .map(|entry| {
            let json = entry
                .map
                .get("e")
                .and_then(|value| redis::from_redis_value_ref::<String>(value).ok());
            (entry.id, json)
        })
        .collect())
}

/// Takes the lock for `node` for `ttl` if nobody holds it: the fencing token of the new term
/// (the lock's value), or `None`.
pub(crate) async fn try_lock(
    conn: &mut Connection,
    keys: &Keys,
    node: &str,
    ttl: Duration,
) -> RedisResult<Option<String>> {
    let term: u64 = Script::new(TAKE)
        .key(&keys.leader)
        .key(&keys.leader_term)
        .arg(node)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await?;
    Ok((term > 0).then(|| format!("{term} {node}")))
}

/// Extends the lock for `ttl` if it still holds `token`.
pub(crate) async fn renew(
    conn: &mut Connection,
    keys: &Keys,
    token: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let renewed: i64 = Script::new(RENEW)
        .key(&keys.leader)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

/// Releases the lock if it still holds `token`.
pub(crate) async fn release(conn: &mut Connection, keys: &Keys, token: &str) -> RedisResult<bool> {
    let released: i64 = Script::new(RELEASE)
        .key(&keys.leader)
        .arg(token)
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
