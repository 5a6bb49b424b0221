//! What the end-to-end tests of `pivot-site` share: the site as a child process with its stdout
//! collected line by line, and the workspace's `pivotctl` of the same build (`pivot_e2e::bin`).

// A panic is a failed test with its message; not every test file uses every helper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs the workspace's `pivotctl` against the controller at `url`; its stdout.
pub fn pivotctl(url: &str, args: &[&str]) -> String {
    let out = Command::new(pivot_e2e::bin("pivotctl"))
        .arg("--controller")
        .arg(url)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running pivotctl: {e}"));
    assert!(
        out.status.success(),
        "pivotctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The site, killed when the test ends; its stdout collected line by line.
pub struct Site {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// A tick per line, to wait on; closed when the site's stdout closes.
    arrived: std::sync::mpsc::Receiver<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    /// Starts `pivot-site` with `args` and its files in `out_dir` (the fake NVML library found
    /// beside the binary, as built with it).
    pub fn start(args: &[&str], out_dir: &Path) -> Site {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pivot-site"))
            .args(args)
            .arg("--out-dir")
            .arg(out_dir)
            .env_remove("PIVOT_FAKE_NVML_LIB")
            .env_remove("PIVOT_FAKE_NVML_STATE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting pivot-site: {e}"));
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let (tick, arrived) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("pivot-site| {line}");
                sink.lock().unwrap().push(line);
                let _ = tick.send(());
            }
        });
        Site {
            child,
            lines,
            arrived,
        }
    }

    /// Waits until `found` finds what it looks for in the lines printed so far; `what` says
    /// what was awaited, for the failure.
    fn wait_until<T>(
        &mut self,
        what: &str,
        within: Duration,
        found: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = found(&self.lines.lock().unwrap()) {
                return t;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pivot-site exited ({status}) before printing {what}");
            }
            assert!(
                Instant::now() < deadline,
                "pivot-site did not print {what} within {within:?}"
            );
            let _ = self.arrived.recv_timeout(Duration::from_millis(100));
        }
    }

    /// Waits until `n` lines contain `needle`.
    pub fn wait_for_count(&mut self, needle: &str, n: usize, within: Duration) {
        self.wait_until(&format!("{n} lines saying `{needle}`"), within, |lines| {
            (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(())
        });
    }

    /// Waits for the line starting with `prefix`; returns the rest.
    pub fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        self.wait_until(&format!("`{prefix}`"), within, |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|rest| rest.trim().to_owned())
        })
    }

    /// Waits for the site to close its stdout (every line read) and exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.arrived.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("pivot-site did not finish within {within:?}")
                }
            }
        }
    }

    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
