//! Read-back after control: a command counts as done only when the miner's own reading shows
//! it. Also the memory of each miner's mode before it slept, so wake restores that mode rather
//! than a guessed default.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::error::MinerError;
use super::{DriverOptions, MinerDriver, Reading};
use crate::state::{StateError, read_json, update_json};

/// The first pause between read-backs; each next one doubles, up to `options.poll_interval`.
/// A change that lands in a fraction of a second (a sleep, a pause) is seen then, not a whole
/// poll interval later; one that takes minutes (a tuner's ramp) costs a handful more reads.
const FIRST_READ_BACK_PAUSE: Duration = Duration::from_millis(250);

/// The pauses between read-backs: [`FIRST_READ_BACK_PAUSE`], doubling, each at most `cap`.
pub fn read_back_pauses(cap: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_READ_BACK_PAUSE.min(cap)), move |p| {
        Some(p.saturating_mul(2).min(cap))
    })
}

/// Polls `driver.read()` until `done` holds or `options.settle` passes, the pauses growing from
/// [`FIRST_READ_BACK_PAUSE`] to `options.poll_interval`. The first read comes after the first
/// pause, not at once: no firmware's draw has changed the instant it answered a command, and a
/// read then was one more exchange per move that never confirmed a sleep (at 10,000 miners,
/// 10,000 reads that both the agent and the miners paid for). Read errors while waiting are
/// tolerated (firmwares restart their API to apply a change) and reported if the deadline
/// passes without a good reading.
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
    let mut pauses = read_back_pauses(options.poll_interval);
    if let Some(first) = pauses.next() {
        tokio::time::sleep(first.min(options.settle)).await;
    }
    loop {
        match driver.read().await {
            Ok(r) if done(&r) => return Ok(r),
            Ok(r) => last = Some(r),
            Err(e) => last_err = Some(e),
        }
        let pause = pauses.next().unwrap_or(options.poll_interval);
        if start.elapsed() + pause > options.settle {
            break;
        }
        tokio::time::sleep(pause).await;
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

/// The file of modes before sleep cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ModeError {
    pub path: String,
    pub problem: String,
}

impl From<StateError> for ModeError {
    fn from(e: StateError) -> Self {
        let path = match &e {
            StateError::Io { path, .. }
            | StateError::Corrupt { path, .. }
            | StateError::InUse { path, .. } => path.display().to_string(),
        };
        Self {
            path,
            problem: e.to_string(),
        }
    }
}

impl ModeError {
    /// As the miner error of the miner at `addr`.
    pub fn for_miner(self, addr: &str) -> MinerError {
        MinerError::ModeMemory {
            addr: addr.to_owned(),
            path: self.path,
            problem: self.problem,
        }
    }
}

/// Where each miner's pre-sleep mode is remembered (keyed by address).
pub trait ModeMemory: std::fmt::Debug + Send + Sync {
    fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError>;
    /// The mode remembered; an error (never "nothing remembered") when the memory is unreadable.
    fn recall(&self, miner: &str) -> Result<Option<String>, ModeError>;
    fn forget(&self, miner: &str) -> Result<(), ModeError>;
}

/// Memory that lasts as long as the process.
#[derive(Debug, Default)]
pub struct InMemoryModes(Mutex<HashMap<String, String>>);

impl InMemoryModes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ModeMemory for InMemoryModes {
    fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError> {
        self.map().insert(miner.to_owned(), mode.to_owned());
        Ok(())
    }
    fn recall(&self, miner: &str) -> Result<Option<String>, ModeError> {
        Ok(self.map().get(miner).cloned())
    }
    fn forget(&self, miner: &str) -> Result<(), ModeError> {
        self.map().remove(miner);
        Ok(())
    }
}

/// Memory in a small JSON file, so `pivot-agent miner sleep` and a later `wake` (separate
/// processes) and the daemon agree. Every change is a read-modify-write under a cross-process
/// lock, written with the agent's one atomic write; a file that does not parse is an error
/// naming it, never read as empty (and never overwritten: the modes it holds are kept).
#[derive(Debug)]
pub struct FileModes {
    path: PathBuf,
}

impl FileModes {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn load(&self) -> Result<BTreeMap<String, String>, StateError> {
        Ok(read_json(&self.path)?.unwrap_or_default())
    }

    /// Changes the map under the lock; writes only when `change` says it changed something.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<(), ModeError> {
        update_json(&self.path, || self.load(), change).map_err(ModeError::from)
    }
}

impl ModeMemory for FileModes {
    fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError> {
        self.update(|m| m.insert(miner.to_owned(), mode.to_owned()).as_deref() != Some(mode))
    }
    fn recall(&self, miner: &str) -> Result<Option<String>, ModeError> {
        Ok(self.load()?.get(miner).cloned())
    }
    fn forget(&self, miner: &str) -> Result<(), ModeError> {
        self.update(|m| m.remove(miner).is_some())
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
        FileModes::new(path.clone())
            .remember("10.0.0.1", "3")
            .unwrap();
        assert_eq!(
            FileModes::new(path.clone())
                .recall("10.0.0.1")
                .unwrap()
                .as_deref(),
            Some("3")
        );
        FileModes::new(path.clone()).forget("10.0.0.1").unwrap();
        assert_eq!(FileModes::new(path).recall("10.0.0.1").unwrap(), None);
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
        let e = modes.remember("antminer/10.0.0.2", "0").unwrap_err();
        assert!(e.to_string().contains("miner-modes.json"), "{e}");
        let e = modes.recall("antminer/10.0.0.1").unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"antminer/10.0.0.1\": \"2\", trunc",
            "a corrupt file was overwritten, losing the first miner's mode"
        );
    }

    #[test]
    fn hole8_processes_sharing_the_file_lose_no_update() {
        // Each FileModes stands for one process (the daemon, a `pivot-agent miner sleep`): they
        // share nothing but the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner-modes.json");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let modes = FileModes::new(path);
                    for i in 0..20 {
                        modes
                            .remember(&format!("antminer/10.0.{w}.{i}"), "2")
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let all: BTreeMap<String, String> = read_json(&path).unwrap().unwrap();
        assert_eq!(all.len(), 160);
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
