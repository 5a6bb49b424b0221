//! The power caps pivot set, kept in the agent's state directory.
//!
//! NVML forgets power limits on reboot and driver reload, so the agent records each cap it sets
//! and re-applies them when it starts. Caps are keyed by GPU UUID: indices can change between
//! boots. The file is small JSON, written atomically (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GpuError;

/// The file's name inside the state directory.
pub const CAP_FILE: &str = "gpu-caps.json";

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
    /// When the file exists but cannot be read or parsed: a broken file is reported, never
    /// silently treated as "no caps".
    pub fn load(&self) -> Result<BTreeMap<String, PersistedCap>, GpuError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.error(e)),
        };
        let file: CapFile = serde_json::from_str(&text)
            .map_err(|e| self.error(format!("not a valid caps file ({e}); fix or remove it")))?;
        Ok(file.caps)
    }

    /// Records `watts` as the cap of the GPU `uuid`.
    pub fn record(&self, uuid: &str, index: u32, watts: f64) -> Result<(), GpuError> {
        let mut caps = self.load()?;
        caps.insert(
            uuid.to_string(),
            PersistedCap {
                watts,
                index,
                set_at: chrono::Utc::now().to_rfc3339(),
            },
        );
        self.save(caps)
    }

    /// Forgets the cap of `uuid` (the GPU goes back to its default at the next reboot).
    pub fn forget(&self, uuid: &str) -> Result<(), GpuError> {
        let mut caps = self.load()?;
        if caps.remove(uuid).is_some() {
            self.save(caps)?;
        }
        Ok(())
    }

    fn save(&self, caps: BTreeMap<String, PersistedCap>) -> Result<(), GpuError> {
        let text = serde_json::to_string_pretty(&CapFile { version: 1, caps })
            .map_err(|e| self.error(e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.error(e))?;
        }
        let mut tmp_name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = self.path.with_file_name(tmp_name);
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory entry is.
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<(), std::io::Error>(())
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.error(e)
        })
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
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CAP_FILE), "{not json").unwrap();
        let err = CapStore::in_dir(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("not a valid caps file"), "{err}");
    }
}
