//! An operator's exec hook for tests: a shell script that keeps its node's state in files beside
//! it, records every call but `status` with the environment pivot gave it, and fails on demand
//! (the exit code in a `fail` file: 78 says "never", anything else "try again").

use std::path::{Path, PathBuf};

const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
if [ "$PIVOT_ACTION" != status ]; then
  echo "$PIVOT_ACTION host=$PIVOT_HOST node=$PIVOT_NODE grace_over=${PIVOT_GRACE_OVER:-0} reason=$PIVOT_REASON" >> "$dir/calls.log"
  if [ -f "$dir/fail" ]; then echo "hook failing on purpose"; exit "$(cat "$dir/fail")"; fi
fi
case "$PIVOT_ACTION" in
  release) echo open > "$dir/node" ;;
  drain) echo closed > "$dir/node"
         if [ "${PIVOT_GRACE_OVER:-0}" = 1 ]; then echo 0 > "$dir/jobs"; fi ;;
  status) n=$(cat "$dir/node"); j=$(cat "$dir/jobs")
          if [ "$n" = open ]; then echo "state=open schedulable=true closed=false jobs=$j gpus=$((j*4))"
          else echo "state=closed schedulable=false closed=true jobs=$j gpus=$((j*4))"; fi ;;
esac
"#;

#[derive(Debug)]
pub struct ExecHook {
    dir: tempfile::TempDir,
}

impl ExecHook {
    /// A hook whose node starts open or closed, with `jobs` AI jobs on it.
    pub fn new(open: bool, jobs: u32) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("hook.sh");
        std::fs::write(&path, SCRIPT).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let hook = Self { dir };
        hook.write("node", if open { "open\n" } else { "closed\n" });
        hook.write("jobs", &format!("{jobs}\n"));
        hook
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("hook.sh")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every `release` and `drain` call from now on exits with `code`; `None` ends that.
    pub fn fail_with(&self, code: Option<i32>) {
        let path = self.dir.path().join("fail");
        match code {
            Some(c) => self.write("fail", &c.to_string()),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Whether the node is open to AI jobs now.
    pub fn node_open(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("node")).is_ok_and(|s| s.trim() == "open")
    }

    /// The calls other than `status` so far, one line each (`ACTION host=… node=… grace_over=…
    /// reason=…`), and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        let log = self.dir.path().join("calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }
}
