//! Read-back after control: a command counts as done only when the miner's own reading shows
//! it. Also the memory of each miner's mode before it slept, so wake restores that mode rather
//! than a guessed default.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
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
#[async_trait::async_trait]
pub trait ModeMemory: std::fmt::Debug + Send + Sync {
    /// Returns once the mode is kept (for [`FileModes`], on disk).
    async fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError>;
    /// The mode remembered; an error (never "nothing remembered") when the memory is unreadable.
    async fn recall(&self, miner: &str) -> Result<Option<String>, ModeError>;
    async fn forget(&self, miner: &str) -> Result<(), ModeError>;
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

#[async_trait::async_trait]
impl ModeMemory for InMemoryModes {
    async fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError> {
        self.map().insert(miner.to_owned(), mode.to_owned());
        Ok(())
    }
    async fn recall(&self, miner: &str) -> Result<Option<String>, ModeError> {
        Ok(self.map().get(miner).cloned())
    }
    async fn forget(&self, miner: &str) -> Result<(), ModeError> {
        self.map().remove(miner);
        Ok(())
    }
}

/// Memory in a small JSON file, so `pivot-agent miner sleep` and a later `wake` (separate
/// processes) and the daemon agree. Every change is a read-modify-write under a cross-process
/// lock, written with the agent's one atomic write; a file that does not parse is an error
/// naming it, never read as empty (and never overwritten: the modes it holds are kept).
///
/// Group commit, off the runtime: what is asked while the file is being read or written is done
/// together next, on one blocking thread — the changes in one read-modify-write, the recalls
/// answered from the map that write leaves (or from one read) — and each caller returns when
/// the write holding its change is on disk (or failed). A curtail that sleeps a thousand
/// Antminers at once costs a few writes, not a thousand flock–write–fsync rounds on the agent's
/// one runtime thread (18 % of an agent's CPU in a 10,000-miner curtail, and each fsync stalled
/// every other miner's exchange); a resume's thousand recalls, a few reads of the file.
#[derive(Debug)]
pub struct FileModes {
    path: PathBuf,
    batch: Arc<Mutex<Batch>>,
}

type Reply<T> = oneshot::Sender<Result<T, ModeError>>;

/// What waits for the worker, and who waits on it.
#[derive(Debug, Default)]
struct Batch {
    /// In the order asked: `Some(mode)` remembers, `None` forgets.
    changes: Vec<(String, Option<String>)>,
    changed: Vec<Reply<()>>,
    recalls: Vec<(String, Reply<Option<String>>)>,
    /// A worker is running (it takes whatever is here before it stops).
    working: bool,
    /// Writes made, for the tests.
    writes: u64,
}

fn lock(batch: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    batch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// If the worker unwinds, what waits fails (its senders drop) and the next call starts a new
/// worker.
struct WorkerGuard<'a>(&'a Mutex<Batch>);

impl Drop for WorkerGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut b = lock(self.0);
            b.working = false;
            b.changes.clear();
            b.changed.clear();
            b.recalls.clear();
        }
    }
}

impl FileModes {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            batch: Arc::default(),
        }
    }

    fn load(path: &Path) -> Result<BTreeMap<String, String>, StateError> {
        Ok(read_json(path)?.unwrap_or_default())
    }

    /// Queues `ask` and starts the worker if none runs; then waits for the answer.
    async fn ask<T>(&self, ask: impl FnOnce(&mut Batch, Reply<T>)) -> Result<T, ModeError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = lock(&self.batch);
            ask(&mut b, tx);
            !std::mem::replace(&mut b.working, true)
        };
        if start {
            let (path, batch) = (self.path.clone(), Arc::clone(&self.batch));
            tokio::task::spawn_blocking(move || Self::work(&path, &batch));
        }
        rx.await.unwrap_or_else(|_| {
            Err(ModeError {
                path: self.path.display().to_string(),
                problem: "the mode memory's worker stopped before answering".to_owned(),
            })
        })
    }

    /// Remembers `mode` for `miner`, or forgets it (`None`), once on disk.
    async fn change(&self, miner: &str, mode: Option<&str>) -> Result<(), ModeError> {
        self.ask(|b, tx| {
            b.changes.push((miner.to_owned(), mode.map(str::to_owned)));
            b.changed.push(tx);
        })
        .await
    }

    /// The worker: takes everything waiting, writes the changes in one read-modify-write and
    /// answers the recalls from the map it leaves (or from one read when nothing changes);
    /// stops when nothing is left (deciding so under the lock, so a call made meanwhile starts a
    /// new worker).
    fn work(path: &Path, batch: &Mutex<Batch>) {
        let _guard = WorkerGuard(batch);
        loop {
            let (changes, changed, recalls) = {
                let mut b = lock(batch);
                if b.changes.is_empty() && b.recalls.is_empty() {
                    b.working = false;
                    return;
                }
                if !b.changes.is_empty() {
                    b.writes += 1;
                }
                (
                    std::mem::take(&mut b.changes),
                    std::mem::take(&mut b.changed),
                    std::mem::take(&mut b.recalls),
                )
            };
            let answer = |m: &BTreeMap<String, String>| -> Vec<Option<String>> {
                recalls
                    .iter()
                    .map(|(miner, _)| m.get(miner).cloned())
                    .collect()
            };
            let mut answers = Vec::new();
            let result = if changes.is_empty() {
                Self::load(path).map(|m| answers = answer(&m))
            } else {
                update_json(
                    path,
                    || Self::load(path),
                    |m| {
                        let mut any = false;
                        for (miner, mode) in changes {
                            any |= match mode {
                                Some(mode) => m.insert(miner, mode.clone()) != Some(mode),
                                None => m.remove(&miner).is_some(),
                            };
                        }
                        answers = answer(m);
                        any
                    },
                )
            }
            .map_err(ModeError::from);
            for tx in changed {
                let _ = tx.send(result.clone());
            }
            let mut answers = answers.into_iter();
            for (_, tx) in recalls {
                let _ = tx.send(match &result {
                    Ok(()) => Ok(answers.next().flatten()),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }

    /// How many writes the changes so far took.
    #[cfg(test)]
    fn writes(&self) -> u64 {
        lock(&self.batch).writes
    }
}

#[async_trait::async_trait]
impl ModeMemory for FileModes {
    async fn remember(&self, miner: &str, mode: &str) -> Result<(), ModeError> {
        self.change(miner, Some(mode)).await
    }
    async fn recall(&self, miner: &str) -> Result<Option<String>, ModeError> {
        self.ask(|b, tx| b.recalls.push((miner.to_owned(), tx)))
            .await
    }
    async fn forget(&self, miner: &str) -> Result<(), ModeError> {
        self.change(miner, None).await
    }
}

/// A short pause (used between a write and its first read-back).
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_modes_survive_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modes.json");
        FileModes::new(path.clone())
            .remember("10.0.0.1", "3")
            .await
            .unwrap();
        assert_eq!(
            FileModes::new(path.clone())
                .recall("10.0.0.1")
                .await
                .unwrap()
                .as_deref(),
            Some("3")
        );
        FileModes::new(path.clone())
            .forget("10.0.0.1")
            .await
            .unwrap();
        assert_eq!(FileModes::new(path).recall("10.0.0.1").await.unwrap(), None);
    }

    /// Changes asked for together share writes, and each is on disk, as a new process would
    /// read it, when its call returns.
    #[tokio::test]
    async fn changes_asked_together_share_writes_and_are_on_disk_when_each_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modes.json");
        let modes = FileModes::new(path.clone());
        let miner = |i: usize| format!("antminer/10.0.{}.{}", i / 200, i % 200);
        let on_disk = |m: &str| {
            let all: BTreeMap<String, String> = read_json(&path).unwrap().unwrap();
            all.get(m).cloned()
        };
        // A curtail: 300 sleeps at once (each future asks before any write is done).
        futures::future::join_all((0..300).map(|i| {
            let (modes, miner, on_disk) = (&modes, miner(i), &on_disk);
            async move {
                let mode = (i % 3).to_string();
                modes.remember(&miner, &mode).await.unwrap();
                assert_eq!(
                    on_disk(&miner),
                    Some(mode),
                    "{miner} returned before its write"
                );
            }
        }))
        .await;
        let first = modes.writes();
        // A resume of a third of them: the wakes recall, then forget, together.
        futures::future::join_all((0..300).filter(|i| i % 3 == 2).map(|i| {
            let (modes, miner, on_disk) = (&modes, miner(i), &on_disk);
            async move {
                assert_eq!(modes.recall(&miner).await.unwrap().as_deref(), Some("2"));
                modes.forget(&miner).await.unwrap();
                assert_eq!(modes.recall(&miner).await.unwrap(), None, "{miner}");
                assert_eq!(on_disk(&miner), None, "{miner} returned before its write");
            }
        }))
        .await;
        let second = modes.writes() - first;
        let all: BTreeMap<String, String> = read_json(&path).unwrap().unwrap();
        assert_eq!(all.len(), 200);
        assert_eq!(all.get(&miner(0)).map(String::as_str), Some("0"));
        println!("{first} writes for 300 remembers, {second} for 100 forgets");
        // One write a change would be 300 and 100.
        assert!(
            first <= 20 && second <= 20,
            "{first} writes for 300 remembers, {second} for 100 forgets"
        );
    }
}

#[cfg(test)]
mod hole_tests {
    use super::*;

    #[tokio::test]
    async fn hole8_a_corrupt_modes_file_is_not_read_as_empty_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner-modes.json");
        std::fs::write(&path, b"{\"antminer/10.0.0.1\": \"2\", trunc").unwrap();
        let modes = FileModes::new(path.clone());
        let e = modes.remember("antminer/10.0.0.2", "0").await.unwrap_err();
        assert!(e.to_string().contains("miner-modes.json"), "{e}");
        let e = modes.recall("antminer/10.0.0.1").await.unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"antminer/10.0.0.1\": \"2\", trunc",
            "a corrupt file was overwritten, losing the first miner's mode"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hole8_processes_sharing_the_file_lose_no_update() {
        // Each FileModes stands for one process (the daemon, a `pivot-agent miner sleep`): they
        // share nothing but the file, and write from their own blocking threads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner-modes.json");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = path.clone();
                tokio::spawn(async move {
                    let modes = FileModes::new(path);
                    for i in 0..20 {
                        modes
                            .remember(&format!("antminer/10.0.{w}.{i}"), "2")
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
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
