//! The power caps pivot set, kept in the agent's state directory.
//!
//! NVML forgets power limits on reboot and driver reload, so the agent records each cap it sets
//! and re-applies them when it starts. Caps are keyed by GPU UUID: indices can change between
//! boots. The file is small JSON, changed under a cross-process lock (the daemon and
//! `pivot-agent gpu cap --state-dir` share it) and written with the agent's one atomic write.
//! It is checked as a whole when read: a file with one impossible cap is refused by name, never
//! half re-applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GpuError;
use crate::state::{StateError, read_json, update_json};

/// The file's name inside the state directory.
pub const CAP_FILE: &str = "gpu-caps.json";

/// No GPU takes a cap above this, W (the largest accelerators are around 1.2 kW).
pub const MAX_CAP_W: f64 = 10_000.0;

/// One recorded cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedCap {
    pub watts: f64,
    /// The index the GPU had when the cap was set; for operators reading the file.
    pub index: u32,
    /// RFC 3339.
    pub set_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapFile {
    version: u32,
    caps: BTreeMap<String, PersistedCap>,
}

/// The caps file of one agent.
#[derive(Debug, Clone)]
pub struct CapStore {
    path: PathBuf,
}

impl CapStore {
    /// The store in `state_dir` (created on first write).
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(CAP_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, detail: impl std::fmt::Display) -> GpuError {
        GpuError::CapStore {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// The recorded caps by UUID; empty when nothing was recorded yet.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed, or any entry is not a cap a GPU could
    /// take: a broken file is reported, never silently treated as "no caps" or half read.
    pub fn load(&self) -> Result<BTreeMap<String, PersistedCap>, GpuError> {
        self.read().map_err(|e| self.error(e))
    }

    fn read(&self) -> Result<BTreeMap<String, PersistedCap>, StateError> {
        let Some(file) = read_json::<CapFile>(&self.path)? else {
            return Ok(BTreeMap::new());
        };
        let corrupt = |problem: String| StateError::Corrupt {
            path: self.path.clone(),
            problem,
        };
        if file.version != 1 {
            return Err(corrupt(format!("version {} is not 1", file.version)));
        }
        for (uuid, cap) in &file.caps {
            if uuid.trim().is_empty() {
                return Err(corrupt("a cap without a GPU UUID".into()));
            }
            if !(cap.watts.is_finite() && cap.watts > 0.0 && cap.watts <= MAX_CAP_W) {
                return Err(corrupt(format!(
                    "cap of {uuid} is {} W, not a cap any GPU takes (0-{MAX_CAP_W} W)",
                    cap.watts
                )));
            }
        }
        Ok(file.caps)
    }

    /// Records `watts` as the cap of the GPU `uuid`.
    pub fn record(&self, uuid: &str, index: u32, watts: f64) -> Result<(), GpuError> {
        self.update(|caps| {
            caps.insert(
                uuid.to_string(),
                PersistedCap {
                    watts,
                    index,
                    set_at: chrono::Utc::now().to_rfc3339(),
                },
            );
            true
        })
    }

    /// Forgets the cap of `uuid` (the GPU goes back to its default at the next reboot).
    pub fn forget(&self, uuid: &str) -> Result<(), GpuError> {
        self.update(|caps| caps.remove(uuid).is_some())
    }

    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, PersistedCap>) -> bool,
    ) -> Result<(), GpuError> {
        update_json(
            &self.path,
            || self.read().map(|caps| CapFile { version: 1, caps }),
            |file| change(&mut file.caps),
        )
        .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_load_forget() {
        let dir = tempfile::tempdir().unwrap();
        let store = CapStore::in_dir(&dir.path().join("state"));
        assert!(store.load().unwrap().is_empty());
        store.record("GPU-a", 0, 300.0).unwrap();
        store.record("GPU-b", 1, 250.5).unwrap();
        store.record("GPU-a", 0, 310.0).unwrap();
        let caps = store.load().unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(caps.get("GPU-a").map(|c| c.watts), Some(310.0));
        store.forget("GPU-a").unwrap();
        assert_eq!(
            store.load().unwrap().keys().collect::<Vec<_>>(),
            vec!["GPU-b"]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CAP_FILE), "{not json").unwrap();
        let err = CapStore::in_dir(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("gpu-caps.json"), "{err}");
    }

    #[test]
    fn a_file_with_one_impossible_cap_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"version":1,"caps":{
            "GPU-a":{"watts":300.0,"index":0,"set_at":"2026-01-01T00:00:00Z"},
            "GPU-b":{"watts":4000000000.0,"index":1,"set_at":"2026-01-01T00:00:00Z"}}}"#;
        std::fs::write(dir.path().join(CAP_FILE), text).unwrap();
        let err = CapStore::in_dir(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("GPU-b") && err.contains(CAP_FILE), "{err}");
        // Nothing is recorded over it either.
        assert!(
            CapStore::in_dir(dir.path())
                .record("GPU-c", 2, 250.0)
                .is_err()
        );
    }
}
