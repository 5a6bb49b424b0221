//! The agent's state directory: the intents it holds, kept across restarts.
//!
//! Written atomically (temporary file, fsync, rename) so a crash leaves the old or the new
//! file, never half of one. A file that does not parse is an error naming it: the agent does not
//! start on state it cannot read rather than silently dropping the curtailments it holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pivot_proto::model::Intent;
use serde::{Deserialize, Serialize};

const INTENTS_FILE: &str = "intents.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({problem}); move it away to start without held intents")]
    Corrupt { path: PathBuf, problem: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IntentsFile {
    version: u32,
    intents: Vec<Intent>,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The intents held at the last save, by device id.
    pub fn load_intents(&self) -> Result<BTreeMap<String, Intent>, StateError> {
        let path = self.dir.join(INTENTS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let file: IntentsFile =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        Ok(file
            .intents
            .into_iter()
            .map(|i| (i.device_id.clone(), i))
            .collect())
    }

    /// Replaces the held intents on disk.
    pub fn save_intents<'a>(
        &self,
        intents: impl IntoIterator<Item = &'a Intent>,
    ) -> Result<(), StateError> {
        let file = IntentsFile {
            version: 1,
            intents: intents.into_iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Corrupt {
            path: self.dir.join(INTENTS_FILE),
            problem: e.to_string(),
        })?;
        write_atomic(&self.dir.join(INTENTS_FILE), &bytes)
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        // Persist the rename itself; failure to open a directory for fsync is not fatal.
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivot_proto::model::{MinerTarget, Target};

    #[test]
    fn intents_survive_a_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert!(s.load_intents().unwrap().is_empty());
        let i = Intent {
            device_id: "miner/a".into(),
            generation: 3,
            lease_expires_at: chrono::Utc::now(),
            target: Target::Miner(MinerTarget::Sleep),
            reason: "price spike".into(),
            phase: 0,
            plan_id: String::new(),
        };
        s.save_intents([&i]).unwrap();
        assert_eq!(s.load_intents().unwrap()["miner/a"], i);
        std::fs::write(dir.path().join(INTENTS_FILE), b"{not json").unwrap();
        let e = s.load_intents().unwrap_err().to_string();
        assert!(e.contains("intents.json"), "{e}");
    }
}
