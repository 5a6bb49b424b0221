//! Where the test peers live: the Python virtualenv and the asic-rs check binary that
//! `scripts/test` prepares.
//!
//! Tests that need a peer fail when it is missing: they never skip themselves into green.

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR of this crate is <root>/sim.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The Python interpreter of the test virtualenv: `$PIVOT_TEST_PYTHON`, else `<root>/.venv/bin/python`.
///
/// # Errors
/// When neither exists, with the command that creates it.
pub fn python() -> Result<PathBuf, String> {
    let path = std::env::var_os("PIVOT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "test Python {} not found: run scripts/test (it creates .venv with scripts/requirements-test.txt)",
            path.display()
        ))
    }
}

/// The asic-rs cross-check binary (tests/peers/asic-rs-check, its own Cargo project that
/// `scripts/test` builds): `$PIVOT_ASIC_RS_CHECK`, else `<root>/target/peers/release/asic-rs-check`.
///
/// # Errors
/// When it is not built, with the command that builds it.
pub fn asic_rs_check() -> Result<PathBuf, String> {
    let path = std::env::var_os("PIVOT_ASIC_RS_CHECK")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/peers/release/asic-rs-check"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "asic-rs check {} not built: run scripts/test, or cargo build --release --locked \
             --manifest-path tests/peers/asic-rs-check/Cargo.toml --target-dir target/peers",
            path.display()
        ))
    }
}
