//! pivot-fake-nvml: a stand-in for NVIDIA's `libnvidia-ml.so.1`, so that pivot's real NVML code
//! path (nvml-wrapper), and NVIDIA's own Python bindings, run against simulated GPUs.
//!
//! This is the one crate in the workspace that uses `unsafe`: a C shared library has to export
//! `extern "C"` symbols and write through the raw out-pointers nvml.h's functions take. The
//! unsafe code is confined to `ffi` (and the loader lookup below); each block says why it holds.
//! No panic crosses the C boundary: every export runs inside `catch_unwind`.
//!
//! # Where the GPUs come from
//!
//! A JSON state file (see [`state::FakeState`]), found at `nvmlInit`:
//! 1. `$PIVOT_FAKE_NVML_STATE`, created with the defaults (one H100) if it does not exist yet;
//! 2. else `fake-nvml.json` in the folder this library was loaded from.
//!
//! The second lets tests run in parallel in one process: each copies the library and writes its
//! state into its own temporary folder (loading the same path twice would share one copy's state).
//! The file is re-read on every call and power limits set through NVML are written back to it, so
//! separate processes (the agent, its CLI, pynvml) loading the same file see the same GPUs.

mod codes;
mod ffi;
mod runtime;
pub mod state;

use std::ffi::{CStr, OsStr, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The environment variable naming the state file.
pub const STATE_ENV: &str = "PIVOT_FAKE_NVML_STATE";

/// The state file's name when it sits next to the library.
pub const SIBLING_STATE_FILE: &str = "fake-nvml.json";

/// Finds the state file (see the crate docs), creating it under `$PIVOT_FAKE_NVML_STATE`.
fn state_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(STATE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.exists() {
            state::FakeState::default().save(&path)?;
        }
        return Ok(path);
    }
    let library = own_path().ok_or("cannot tell where this library was loaded from")?;
    let sibling = library.with_file_name(SIBLING_STATE_FILE);
    if sibling.exists() {
        Ok(sibling)
    } else {
        Err(format!(
            "no GPU state: set {STATE_ENV} to a JSON file, or put {} next to {}",
            SIBLING_STATE_FILE,
            library.display()
        ))
    }
}

/// The path this shared library was loaded from, as the dynamic loader recorded it.
fn own_path() -> Option<PathBuf> {
    let address = own_path as fn() -> Option<PathBuf> as *const c_void;
    // SAFETY: `Dl_info` is a plain C struct of pointers and integers; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `address` is a function in this library and `info` a valid, writable `Dl_info`;
    // dladdr only reads the address and fills the struct.
    let found = unsafe { libc::dladdr(address, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded, so `dli_fname` is a NUL-terminated path owned by the loader, valid
    // while this library stays loaded (at least for this call).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}
