//! Cross-check with a second client no one here wrote: the asic-rs crate (0.8.6, through
//! tests/peers/asic-rs-check) finds every pivot-sim dialect on its own 127.x address with the
//! real ports, names make, model and firmware, and reads hashrate, power, hashboards and fans
//! with no command failing. Fails (never skips) when the check binary is not built.
//!
//! Where asic-rs and pyasic read the same miner differently, the difference is the clients'
//! (docs/BENCHMARKS.md, "What the two clients read").

use std::process::Command;

use serde_json::Value;

use super::cli::sim;

/// make, model, firmware as asic-rs names them; nameplate TH/s; watts (`None`: stock Antminer
/// firmware reports none); hashboards, chips per board, fans.
type Expect = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    Option<f64>,
    usize,
    u64,
    usize,
);

const EXPECT: [Expect; 6] = [
    (
        "Antminer",
        "S19jPro",
        "AntMiner Stock",
        104.0,
        None,
        3,
        126,
        4,
    ),
    ("Antminer", "S21", "Braiins", 200.0, Some(3500.0), 3, 108, 4),
    ("Antminer", "S21", "LuxOS", 200.0, Some(3500.0), 3, 108, 4),
    (
        "Whatsminer",
        "M50SVH50",
        "WhatsMiner Stock",
        126.0,
        Some(3276.0),
        3,
        135,
        2,
    ),
    (
        "Whatsminer",
        "M60SVK30",
        "WhatsMiner Stock",
        186.0,
        Some(3441.0),
        3,
        245,
        2,
    ),
    ("Bitaxe", "Gamma", "Bitaxe Stock", 1.2, Some(17.0), 1, 1, 1),
];

fn ths(v: &Value) -> f64 {
    assert_eq!(v["unit"], "TeraHash", "{v}");
    v["value"].as_f64().unwrap()
}

#[test]
fn asic_rs_identifies_every_dialect_and_reads_it_with_no_failing_command() {
    let check = pivot_sim::testenv::asic_rs_check().unwrap();
    let (_child, listed) = sim(
        &[
            "--dialect",
            "mixed",
            "--count",
            "6",
            "--ip-range",
            "127.78.0.1",
            "--fast",
        ],
        6,
    );
    assert_eq!(listed.len(), 6);
    let ips: Vec<String> = (1..=6).map(|i| format!("127.78.0.{i}")).collect();
    let out = Command::new(check).args(&ips).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "asic-rs-check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    for (row, (make, model, fw, nameplate, watts, boards, chips, fans)) in rows.iter().zip(EXPECT) {
        assert_eq!(row["found"], true, "{row}");
        assert_eq!(
            (
                row["make"].as_str(),
                row["model"].as_str(),
                row["firmware"].as_str()
            ),
            (Some(make), Some(model), Some(fw)),
            "{row}"
        );
        assert!(row["commands"].as_u64().unwrap_or(0) > 0, "{row}");
        assert_eq!(
            row["failed"],
            serde_json::json!([]),
            "failing commands: {row}"
        );
        let data = &row["data"];
        assert!(
            (ths(&data["hashrate"]) - nameplate).abs() < nameplate * 0.01,
            "{row}"
        );
        assert!(
            (ths(&data["expected_hashrate"]) - nameplate).abs() < nameplate * 0.01,
            "{row}"
        );
        assert_eq!(data["wattage"].as_f64(), watts, "wattage: {row}");
        assert_eq!(data["is_mining"], true, "{row}");
        assert_eq!(data["fans"].as_array().unwrap().len(), fans, "fans: {row}");
        let hashboards = data["hashboards"].as_array().unwrap();
        assert_eq!(hashboards.len(), boards, "{row}");
        for b in hashboards {
            assert_eq!(b["expected_chips"].as_u64(), Some(chips), "{row}");
            assert_eq!(b["working_chips"].as_u64(), Some(chips), "{row}");
            assert_eq!(b["active"], true, "{row}");
            let per_board = ths(&b["hashrate"]);
            assert!(
                (per_board * boards as f64 - nameplate).abs() < nameplate * 0.01,
                "{row}"
            );
        }
        // LuxOS: RedLed "auto" is the light off, as asic-rs reads the real firmware's.
        if fw == "LuxOS" {
            assert_eq!(data["light_flashing"], false, "{row}");
        }
    }
}
