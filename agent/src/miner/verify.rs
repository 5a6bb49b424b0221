//! Read-back after control: a command counts as done only when the miner's own reading shows
//! it. Also the memory of each miner's mode before it slept, so wake restores that mode rather
//! than a guessed default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::error::MinerError;
use super::{DriverOptions, MinerDriver, Reading};

/// Polls `driver.read()` until `done` holds or `options.settle` passes. Read errors while
/// waiting are tolerated (firmwares restart their API to apply a change) and reported if the
/// deadline passes without a good reading.
pub async fn read_back(
    driver: &dyn MinerDriver,
    options: &DriverOptions,
    action: &str,
    answered: &str,
    done: impl Fn(&Reading) -> bool + Send,
) -> Result<Reading, MinerError> {
    let start = Instant::now();
    let mut last: Option<Reading> = None;
    let mut last_err: Option<MinerError> = None;
    loop {
        match driver.read().await {
            Ok(r) if done(&r) => return Ok(r),
            Ok(r) => last = Some(r),
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() + options.poll_interval > options.settle {
            break;
        }
        tokio::time::sleep(options.poll_interval).await;
    }
    let observed = match (last, last_err) {
        (Some(r), _) => r.summary(),
        (None, Some(e)) => format!("no reading ({e})"),
        (None, None) => "no reading".to_owned(),
    };
    Err(MinerError::NotApplied {
        addr: driver.addr().to_string(),
        action: action.to_owned(),
        answered: answered.to_owned(),
        observed,
        waited: start.elapsed(),
    })
}

/// Where each miner's pre-sleep mode is remembered (keyed by address).
pub trait ModeMemory: std::fmt::Debug + Send + Sync {
    fn remember(&self, miner: &str, mode: &str);
    fn recall(&self, miner: &str) -> Option<String>;
    fn forget(&self, miner: &str);
}

/// Memory that lasts as long as the process.
#[derive(Debug, Default)]
pub struct InMemoryModes(Mutex<HashMap<String, String>>);

impl ModeMemory for InMemoryModes {
    fn remember(&self, miner: &str, mode: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(miner.to_owned(), mode.to_owned());
        }
    }
    fn recall(&self, miner: &str) -> Option<String> {
        self.0.lock().ok()?.get(miner).cloned()
    }
    fn forget(&self, miner: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(miner);
        }
    }
}

/// Memory in a small JSON file, so `pivot-agent miner sleep` and a later `wake` (separate
/// processes) agree. Failures to write are logged, not fatal: the miner was still put to sleep.
#[derive(Debug)]
pub struct FileModes {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileModes {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    fn load(&self) -> HashMap<String, String> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn store(&self, map: &HashMap<String, String>) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(map).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save miners' pre-sleep modes");
        }
    }
}

impl ModeMemory for FileModes {
    fn remember(&self, miner: &str, mode: &str) {
        let _g = self.lock.lock();
        let mut m = self.load();
        m.insert(miner.to_owned(), mode.to_owned());
        self.store(&m);
    }
    fn recall(&self, miner: &str) -> Option<String> {
        let _g = self.lock.lock();
        self.load().get(miner).cloned()
    }
    fn forget(&self, miner: &str) {
        let _g = self.lock.lock();
        let mut m = self.load();
        if m.remove(miner).is_some() {
            self.store(&m);
        }
    }
}

/// A short pause (used between a write and its first read-back).
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_modes_survive_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modes.json");
        FileModes::new(path.clone()).remember("10.0.0.1", "3");
        assert_eq!(
            FileModes::new(path.clone()).recall("10.0.0.1").as_deref(),
            Some("3")
        );
        FileModes::new(path.clone()).forget("10.0.0.1");
        assert_eq!(FileModes::new(path).recall("10.0.0.1"), None);
    }
}

#[cfg(test)]
mod hole_tests {
    use super::*;

    #[test]
    fn hole8_a_corrupt_modes_file_is_not_read_as_empty_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner-modes.json");
        std::fs::write(&path, b"{\"antminer/10.0.0.1\": \"2\", trunc").unwrap();
        let modes = FileModes::new(path.clone());
        modes.remember("antminer/10.0.0.2", "0");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"antminer/10.0.0.1\": \"2\", trunc",
            "a corrupt file was overwritten, losing the first miner's mode"
        );
    }
}
