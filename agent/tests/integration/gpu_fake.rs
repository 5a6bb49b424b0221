//! A private copy of pivot's fake NVML library per test, with its own state file.
//!
//! Loading one path twice in a process shares the library's state, so each test copies the
//! built `libpivot_fake_nvml.so` into its own temporary folder, next to its `fake-nvml.json`.

// Test code: a panic here is a failed test with its message (clippy's in-test allowance does
// not reach helpers outside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use pivot_agent::gpu::NvmlGpus;
use serde_json::Value;

/// Overrides where the built fake library is looked for.
const LIB_ENV: &str = "PIVOT_FAKE_NVML_LIB";
const LIB_NAME: &str = "libpivot_fake_nvml.so";

pub struct FakeNvml {
    dir: tempfile::TempDir,
}

impl FakeNvml {
    /// A fresh copy of the library whose GPUs are described by `state` (see pivot-fake-nvml).
    pub fn new(state: Value) -> Self {
        assert!(
            std::env::var_os("PIVOT_FAKE_NVML_STATE").is_none(),
            "unset PIVOT_FAKE_NVML_STATE: it would make every test's copy share one state file"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(built_library(), dir.path().join("libnvidia-ml.so.1")).unwrap();
        let fake = Self { dir };
        fake.write_state(&state);
        fake
    }

    pub fn lib(&self) -> PathBuf {
        self.dir.path().join("libnvidia-ml.so.1")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn open(&self) -> NvmlGpus {
        NvmlGpus::open(Some(&self.lib())).unwrap()
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    /// Changes the simulated hardware, as the fake library does: atomically.
    pub fn update(&self, f: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        f(&mut state);
        self.write_state(&state);
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("fake-nvml.json")
    }

    fn write_state(&self, state: &Value) {
        let tmp = self.dir.path().join("fake-nvml.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap()).unwrap();
        std::fs::rename(&tmp, self.state_path()).unwrap();
    }
}

/// The fake library `cargo build -p pivot-fake-nvml` wrote: `$PIVOT_FAKE_NVML_LIB`, else the
/// target folder this test binary runs from (target/<profile>/deps/integration-… → ../..).
fn built_library() -> PathBuf {
    if let Some(path) = std::env::var_os(LIB_ENV) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [
        deps.parent().map(|p| p.join(LIB_NAME)),
        Some(deps.join(LIB_NAME)),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{LIB_NAME} not found next to {} (nor ${LIB_ENV}): build it first with \
             `cargo build -p pivot-fake-nvml` (scripts/test does)",
                exe.display()
            )
        });
    assert_fresh(&found);
    found
}

/// Fails when the fake library is older than its sources: a stale library tests the wrong code.
fn assert_fresh(library: &Path) {
    let built = std::fs::metadata(library)
        .and_then(|m| m.modified())
        .unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/fake-nvml/src");
    let Ok(entries) = std::fs::read_dir(&src) else {
        return;
    };
    for entry in entries.flatten() {
        let changed = entry.metadata().and_then(|m| m.modified()).unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: rebuild it with `cargo build -p pivot-fake-nvml`",
            library.display(),
            entry.path().display()
        );
    }
}
