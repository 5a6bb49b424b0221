//! Fuzzes the tolerant cgminer reply parser: any bytes must yield a value or an error, never a
//! panic, an overflow or a hang. Run with `cargo +nightly fuzz run cgminer_parse` from `fuzz/`.
//!
//! Without cargo-fuzz, stable Rust builds it too (coverage-guided, no sanitizer), from `fuzz/`:
//! ```sh
//! RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
//!   -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
//!   -Cllvm-args=-sanitizer-coverage-trace-compares" \
//! CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
//!   cargo build --release --target x86_64-unknown-linux-gnu --bin cgminer_parse
//! scripts/capture-corpus.py          # seed corpus: pivot-sim's 4028 replies, every quirk
//! target/x86_64-unknown-linux-gnu/release/cgminer_parse corpus/cgminer_parse -max_total_time=60
//! ```
//! (`--target` keeps the instrumentation flags off build scripts.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use pivot_agent::miner::cgminer::parse::{hashrate_ths, parse_reply};
use pivot_agent::miner::cgminer::{Status, split_multi};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_reply(data) {
        let _ = Status::of(&v);
        let _ = split_multi(&v, &["summary", "stats", "pools"]);
        if let Some(s) = v.get("SUMMARY").and_then(|s| s.get(0)) {
            let _ = hashrate_ths(s);
        }
    }
});
