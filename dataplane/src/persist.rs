//! The last good snapshot on disk, so that a dataplane restarted while the
//! controller is unreachable serves what it served before.
//!
//! One file, `snapshot.json` in the state directory, replaced atomically:
//! written to `snapshot.json.tmp` (mode 0600: it holds private keys),
//! fsynced, renamed over the old file, and the directory fsynced, so a crash
//! leaves either the old or the new snapshot, never a torn one. Whatever is
//! read back is checked like a snapshot from the network: its `hash` must
//! be its content hash.

use snapshot::Snapshot;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest state file read back (twice the stream's frame limit: JSON
/// on disk is written by us, but the disk is not trusted to be sane).
pub const MAX_STATE_BYTES: u64 = 128 * 1024 * 1024;

const FILE: &str = "snapshot.json";
const TEMP: &str = "snapshot.json.tmp";

/// Why a snapshot is not trustworthy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntegrityError {
    /// The snapshot carries no hash.
    #[error("snapshot version {version} has no hash")]
    MissingHash {
        /// Its version.
        version: u64,
    },
    /// The hash does not match the content.
    #[error(
        "snapshot version {version} says its hash is {claimed} but its content hashes to {actual}"
    )]
    HashMismatch {
        /// Its version.
        version: u64,
        /// The hash it carries.
        claimed: String,
        /// The hash of its content.
        actual: String,
    },
}

/// Checks that `snapshot.hash` is the hash of its content.
pub fn verify(snapshot: &Snapshot) -> Result<(), IntegrityError> {
    if snapshot.hash.is_empty() {
        return Err(IntegrityError::MissingHash {
            version: snapshot.version,
        });
    }
    let actual = snapshot.content_hash();
    if actual != snapshot.hash {
        return Err(IntegrityError::HashMismatch {
            version: snapshot.version,
            claimed: snapshot.hash.clone(),
            actual,
        });
    }
    Ok(())
}

/// Reading or writing the state directory failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file is larger than [`MAX_STATE_BYTES`].
    #[error("{path} is {len} bytes, over the {MAX_STATE_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The state file is not a snapshot.
    #[error("{path} is not a snapshot: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The state file's snapshot fails its hash check.
    #[error("{path}: {source}")]
    Integrity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: IntegrityError,
    },
}

/// The dataplane's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Uses `dir`, creating it (mode 0700) when missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateDir, PersistError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PersistError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
        Ok(StateDir { dir })
    }

    /// The snapshot file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The persisted snapshot, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Snapshot>, PersistError> {
        let path = self.path();
        let io = |action, source| PersistError::Io {
            action,
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io("opening", error)),
        };
        let len = file.metadata().map_err(|e| io("reading", e))?.len();
        if len > MAX_STATE_BYTES {
            return Err(PersistError::TooLarge { path, len });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(MAX_STATE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| io("reading", e))?;
        let snapshot: Snapshot =
            serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                path: path.clone(),
                source,
            })?;
        verify(&snapshot).map_err(|source| PersistError::Integrity { path, source })?;
        Ok(Some(snapshot))
    }

    /// Replaces the persisted snapshot with `snapshot`, atomically and
    /// durably.
    pub fn store(&self, snapshot: &Snapshot) -> Result<(), PersistError> {
        let temp = self.dir.join(TEMP);
        let path = self.path();
        let io = |action, path: &Path, source| PersistError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(snapshot).map_err(|source| PersistError::Corrupt {
            path: temp.clone(),
            source,
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io("creating", &temp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", &temp, e))?;
        drop(file);
        fs::rename(&temp, &path).map_err(|e| io("renaming", &temp, e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("syncing", &self.dir, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sealed(version: u64) -> Snapshot {
        let mut snapshot = Snapshot {
            version,
            ..Snapshot::default()
        };
        snapshot.generations.insert("ApiRoute/a/b".into(), 3);
        snapshot.seal();
        snapshot
    }

    #[test]
    fn stores_and_loads_privately() {
        let dir = std::env::temp_dir().join(format!("fg-persist-{}", std::process::id()));
        let state = StateDir::open(&dir).expect("open");
        assert!(state.load().expect("load").is_none());
        state.store(&sealed(4)).expect("store");
        state.store(&sealed(5)).expect("store again");
        let loaded = state.load().expect("load").expect("a snapshot");
        assert_eq!(loaded, sealed(5));
        let mode = fs::metadata(state.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join(TEMP).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tampered_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("fg-persist-bad-{}", std::process::id()));
        let state = StateDir::open(&dir).expect("open");
        let mut snapshot = sealed(1);
        snapshot.generations.insert("ApiRoute/a/c".into(), 1);
        fs::write(state.path(), serde_json::to_vec(&snapshot).expect("json")).expect("write");
        let error = state.load().expect_err("hash mismatch");
        assert!(error.to_string().contains("content hashes to"), "{error}");
        fs::write(state.path(), b"{not json").expect("write");
        assert!(matches!(state.load(), Err(PersistError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn verify_needs_a_hash() {
        assert!(matches!(
            verify(&Snapshot::default()),
            Err(IntegrityError::MissingHash { version: 0 })
        ));
        assert_eq!(verify(&sealed(2)), Ok(()));
    }
}
