//! Fuzzes the policy document parser and checker, and the schedule it yields: any text must give
//! a policy or a list of problems (never a panic, an overflow or a hang), and a valid policy's
//! schedule must be answerable at any instant of two centuries.
//!
//! Seeds: `scripts/seed-corpus.sh`. Build and run on stable as `cgminer_parse.rs` says
//! (`--bin policy_parse`); docs/fuzzing.md has the commands and the last results.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use pivot_controller::policy;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes pick an instant between 1970 and 2170; the rest is the document.
    let (when, text) = data.split_at(data.len().min(8));
    let mut seconds = [0u8; 8];
    seconds[..when.len()].copy_from_slice(when);
    let span = 200 * 366 * 86_400;
    let at = i64::try_from(u64::from_le_bytes(seconds) % span).unwrap_or(0);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match policy::validate(text) {
        Ok(doc) => {
            if let Some(t) = DateTime::<Utc>::from_timestamp(at, 0) {
                let _ = doc.schedule_at(t);
            }
        }
        Err(problems) => assert!(!problems.is_empty(), "refused without a reason"),
    }
});
