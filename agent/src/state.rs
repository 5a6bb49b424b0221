//! The agent's state directory and the one way the agent writes files in it.
//!
//! Every file the agent keeps (held intents, GPU caps, miners' modes before sleep) is written by
//! [`write_atomic`]: a temporary file with a unique name in the same directory, fsync, rename
//! over the old file, fsync of the directory. A crash leaves the old or the new file, never half
//! of one, and two writers never share a temporary file. A file that does not parse is an error
//! naming it ([`read_json`]): the agent does not run on state it cannot read rather than
//! silently dropping what it held.
//!
//! Two locks: [`StateLock`] makes the daemon the only one running on a state directory (a second
//! agent is refused with the first one's process id), and [`with_file_lock`] serialises the
//! read-modify-write of a file that several processes share (the daemon and `pivot-agent miner`
//! both keep `miner-modes.json`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;

/// The lock file the daemon holds for as long as it runs.
pub const LOCK_FILE: &str = "agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({problem}); fix it or move it away")]
    Corrupt { path: PathBuf, problem: String },
    #[error(
        "state directory {path} is in use by another pivot-agent ({holder}); stop that one first, \
         or give this one its own state_dir"
    )]
    InUse { path: PathBuf, holder: String },
}

impl StateError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(StateError::io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Tells temporary files of one process apart.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that a crash leaves the old or the new content: a temporary file
/// with a name no other writer uses, fsync, rename, fsync of the directory (without which the
/// rename itself may not survive a power cut).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = StateError::io(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name =
        path.file_name()
            .map(|n| n.to_os_string())
            .ok_or_else(|| StateError::Corrupt {
                path: path.to_owned(),
                problem: "not a file path".into(),
            })?;
    name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(name);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Reads and parses a JSON state file; `None` when it does not exist. A file that exists but
/// cannot be read or parsed is an error naming it, never "empty".
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            problem: e.to_string(),
        })
}

/// Runs `f` while holding an exclusive lock on `<path>.lock`, so processes that share `path`
/// (the daemon and the `pivot-agent miner` commands) read, change and write it one at a time.
/// The lock is held for the read-modify-write only: milliseconds.
pub fn with_file_lock<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StateError>,
) -> Result<T, StateError> {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(StateError::io(dir))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StateError::io(&lock_path))?;
    file.lock().map_err(StateError::io(&lock_path))?;
    let result = f();
    // Closing the file releases the lock; unlocking first makes that explicit.
    let _ = file.unlock();
    result
}

/// Changes a JSON state file shared between processes: under [`with_file_lock`], `load` reads
/// it (checking it as the caller does), `change` edits it, and it is written back with
/// [`write_atomic`] only when `change` says it changed something.
pub fn update_json<T: serde::Serialize>(
    path: &Path,
    load: impl FnOnce() -> Result<T, StateError>,
    change: impl FnOnce(&mut T) -> bool,
) -> Result<(), StateError> {
    with_file_lock(path, || {
        let mut value = load()?;
        if !change(&mut value) {
            return Ok(());
        }
        let mut bytes = serde_json::to_vec_pretty(&value).map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    })
}

/// The daemon's exclusive hold on its state directory, released when dropped (or when the
/// process dies: the kernel drops the lock with the file).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(dir: &StateDir) -> Result<Self, StateError> {
        let path = dir.file(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StateError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StateError::InUse {
                    path: dir.path().to_owned(),
                    holder: if holder.is_empty() {
                        "process id not recorded".into()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StateError::io(&path)(e)),
        }
        let me = format!("pid {}", std::process::id());
        let write = (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(me.as_bytes())?;
            file.sync_all()
        })();
        write.map_err(StateError::io(&path))?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"{\"a\":1}").unwrap();
        write_atomic(&path, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":2}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the rename fails.
        let path = dir.path().join("x.json");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        let e = write_atomic(&path, b"{}").unwrap_err().to_string();
        assert!(e.contains("x.json"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_json_is_an_error_naming_the_file_and_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.json");
        assert_eq!(read_json::<serde_json::Value>(&path).unwrap(), None);
        std::fs::write(&path, b"{not json").unwrap();
        let e = read_json::<serde_json::Value>(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.json") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn a_second_agent_on_the_same_state_dir_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let first = StateLock::acquire(&state).unwrap();
        let e = StateLock::acquire(&state).unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        StateLock::acquire(&state).unwrap();
    }

    #[test]
    fn file_locks_serialise_read_modify_write_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("counter.json"));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        with_file_lock(&path, || {
                            let n: u64 = read_json(&path)?.unwrap_or(0);
                            write_atomic(&path, (n + 1).to_string().as_bytes())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read_json::<u64>(&path).unwrap(), Some(200));
    }

    use std::sync::Arc;
}
