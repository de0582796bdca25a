//! The last good view, kept on disk so that a restart never opens the gate for a blocked device,
//! and the gateway serves while the console is down.
//!
//! One file: a header line `seg-compliance-view 1 <sha256 of the body, hex> <body length>` and a
//! JSON body with every device and override. It is written to a temporary file beside the target,
//! synced, and renamed over it, so the file on disk is always the previous good view or the new
//! good one, never a mix. A file whose checksum does not match is refused, not half-read.
//!
//! ```
//! use compliance_policy::snapshot::Snapshot;
//! use compliance_policy::view::View;
//!
//! # fn main() -> Result<(), compliance_policy::snapshot::SnapshotError> {
//! let dir = tempfile::tempdir().unwrap();
//! let file = Snapshot::new(dir.path().join("view.snapshot"));
//! assert!(file.load()?.is_none(), "nothing saved yet");
//! file.save(&View::default())?;
//! let saved = file.load()?.expect("saved");
//! assert!(saved.devices.is_empty());
//! # Ok(())
//! # }
//! ```

use crate::device::DeviceRecord;
use crate::policy::Overrides;
use crate::view::View;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &str = "seg-compliance-view";
const FORMAT: u32 = 1;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file could not be read, written or renamed.
    #[error("snapshot file {path}: {action} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot of this format, or its checksum does not match its body.
    #[error("snapshot file {path} is corrupt: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// What a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// When it was saved, seconds since the Unix epoch.
    pub saved_at: u64,
    /// When the view it holds was last fully synced, seconds since the Unix epoch.
    pub synced_at: Option<u64>,
    /// Every device.
    pub devices: Vec<DeviceRecord>,
    /// Every override.
    pub overrides: Overrides,
}

/// A snapshot file.
#[derive(Clone, Debug)]
pub struct Snapshot {
    path: PathBuf,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Snapshot {
    /// The snapshot at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Snapshot { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `view`, atomically.
    pub fn save(&self, view: &View) -> Result<(), SnapshotError> {
        let saved = Saved {
            saved_at: unix(SystemTime::now()),
            synced_at: view.synced_at().map(unix),
            devices: view.devices().map(|record| (**record).clone()).collect(),
            overrides: view.overrides().clone(),
        };
        let body = serde_json::to_vec(&saved).map_err(|e| SnapshotError::Corrupt {
            path: self.path.clone(),
            problem: format!("cannot encode: {e}"),
        })?;
        let digest = hex(&Sha256::digest(&body));
        let io = |action: &'static str| {
            let path = self.path.clone();
            move |source| SnapshotError::Io {
                path,
                action,
                source,
            }
        };
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(io("create"))?;
        writeln!(file, "{MAGIC} {FORMAT} {digest} {}", body.len()).map_err(io("write"))?;
        file.write_all(&body).map_err(io("write"))?;
        file.sync_all().map_err(io("sync"))?;
        drop(file);
        std::fs::rename(&temporary, &self.path).map_err(io("rename"))?;
        // The rename is durable only once the directory entry is.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Reads the file: `None` when there is none, an error when it is unreadable or corrupt.
    pub fn load(&self) -> Result<Option<Saved>, SnapshotError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: self.path.clone(),
                    action: "read",
                    source,
                });
            }
        };
        let corrupt = |problem: String| SnapshotError::Corrupt {
            path: self.path.clone(),
            problem,
        };
        let newline = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let header = std::str::from_utf8(&bytes[..newline])
            .map_err(|_| corrupt("header is not text".into()))?;
        let body = &bytes[newline + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        let [magic, format, digest, length] = fields[..] else {
            return Err(corrupt(format!("unexpected header {header:?}")));
        };
        if magic != MAGIC || format != FORMAT.to_string() {
            return Err(corrupt(format!(
                "not a version {FORMAT} snapshot: {header:?}"
            )));
        }
        if length.parse::<usize>().ok() != Some(body.len()) {
            return Err(corrupt(format!(
                "body is {} bytes, header says {length}",
                body.len()
            )));
        }
        if hex(&Sha256::digest(body)) != digest {
            return Err(corrupt("checksum does not match".into()));
        }
        let saved: Saved =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("body: {e}")))?;
        Ok(Some(saved))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceId, Enrollment};
    use crate::policy::Override;

    fn view() -> View {
        let wiped = DeviceRecord {
            device_id: DeviceId::new("W1"),
            enrollment: Enrollment::EnterpriseWiped,
            ..Default::default()
        };
        let mut overrides = Overrides::default();
        overrides
            .users
            .insert("bob@test.local".into(), Override::Block);
        View::from_records([wiped], overrides)
    }

    #[test]
    fn saved_view_loads_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        let file = Snapshot::new(dir.path().join("view.snapshot"));
        file.save(&view()).unwrap();
        let saved = file.load().unwrap().unwrap();
        assert_eq!(saved.devices.len(), 1);
        assert_eq!(saved.devices[0].enrollment, Enrollment::EnterpriseWiped);
        assert_eq!(saved.overrides.users["bob@test.local"], Override::Block);
        assert!(
            !dir.path().join("view.tmp").exists(),
            "the temporary file is renamed away"
        );
    }

    #[test]
    fn a_flipped_byte_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = Snapshot::new(dir.path().join("view.snapshot"));
        file.save(&view()).unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        std::fs::write(file.path(), &bytes).unwrap();
        let error = file.load().unwrap_err();
        assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("checksum"), "{error}");
    }

    #[test]
    fn a_truncated_file_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = Snapshot::new(dir.path().join("view.snapshot"));
        file.save(&view()).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        std::fs::write(file.path(), &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            file.load().unwrap_err(),
            SnapshotError::Corrupt { .. }
        ));
        std::fs::write(file.path(), b"garbage").unwrap();
        assert!(matches!(
            file.load().unwrap_err(),
            SnapshotError::Corrupt { .. }
        ));
    }
}
