//! Helpers for pivot's end-to-end tests: find the built binaries, start them, stop them.
//!
//! The binaries are those of the workspace's own build (`scripts/test` builds them first);
//! a missing one is a test failure with the command that builds it, never a skip.

// Test support: a panic here is a failed test with its message.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use pivot_sim::testenv::{python, workspace_root};

/// Path of a workspace binary: `$PIVOT_BIN_DIR/<name>`, else next to the test executable's
/// `deps/` folder (the same profile's target directory).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PIVOT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap_or_default();
            // target/<profile>/deps/e2e-xxxx -> target/<profile>
            exe.parent()
                .and_then(|p| p.parent())
                .map(PathBuf::from)
                .unwrap_or_default()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A running process that is killed when dropped.
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    /// The address it printed it listens on.
    pub addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pivot-controller dev` on an ephemeral port and waits for its listening line.
pub fn start_dev_controller(extra: &[&str]) -> Running {
    let mut child = Command::new(bin("pivot-controller"))
        .args(["dev", "--web", "127.0.0.1:0", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting pivot-controller: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("pivot-controller listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|_| {
            panic!("pivot-controller dev did not report its listening address within 30 s")
        });
    Running { child, addr }
}

pub mod exec_hook;
pub mod fake_controller;
pub mod fake_kube;
pub mod slurm;

/// Starts a binary with arguments and waits for the stdout line that starts with `prefix`;
/// returns the rest of that line.
pub fn start_and_wait(binary: &str, args: &[&str], prefix: &str, within: Duration) -> Running {
    let (mut running, mut rest) = start_and_collect(binary, args, &[prefix], within);
    running.addr = rest.pop().unwrap_or_default();
    running
}

/// Starts a binary with arguments and waits for a stdout line starting with each of `prefixes`
/// (in any order); returns the rest of each line, in the order of `prefixes`. `addr` is the
/// first one's.
pub fn start_and_collect(
    binary: &str,
    args: &[&str],
    prefixes: &[&str],
    within: Duration,
) -> (Running, Vec<String>) {
    let mut child = Command::new(bin(binary))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for (i, p) in wanted.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(p.as_str()) {
                    let _ = tx.send((i, rest.trim().to_owned()));
                }
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    while found.iter().any(Option::is_none) {
        let (i, rest) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("{binary} did not print {prefixes:?} within {within:?} (got {found:?})")
            });
        found[i] = Some(rest);
    }
    let found: Vec<String> = found.into_iter().flatten().collect();
    let addr = found.first().cloned().unwrap_or_default();
    (Running { child, addr }, found)
}

/// Writes `text` to `path` whole and by rename, as a feed publisher should: the controller
/// never reads half a file.
pub fn write_whole(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// A port nothing listens on now, for a controller (or anything agents dial) whose address a
/// test names. Chosen below the kernel's ephemeral range (32768 and up on Linux) and never twice
/// in one test process: an agent left dialling the port of a controller its test killed must
/// never reach another test's controller, as it could if that one were given the same port by
/// `bind(:0)` — with open auth it would join that site and count its miners there.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A small xorshift seeded from the clock and pid: processes running side by side (test
    // binaries) start at different places in the range.
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

pub mod pki;
pub mod prometheus;
pub mod webdriver;
