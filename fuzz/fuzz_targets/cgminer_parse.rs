//! Fuzzes the tolerant cgminer reply parser: any bytes must yield a value or an error, never a
//! panic, an overflow or a hang. Run with `cargo +nightly fuzz run cgminer_parse` from `fuzz/`.
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
