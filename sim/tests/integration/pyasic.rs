//! Cross-check with a client no one here wrote: pyasic 0.79 identifies every pivot-sim dialect
//! on its own 127.x address with the real ports and reads it with one full `get_data()`, which
//! must not raise. Fails (never skips) without the venv.
//!
//! The only fields not read are those pyasic takes from Braiins OS' gRPC API alone (port 50051,
//! not served: Braiins' protos are GPL-3.0, see sim/src/miner/braiins.rs); the script names them
//! and this test pins the list. What pyasic reports differently from the firmware's replies is
//! pyasic's reading, not the emulator's (docs/BENCHMARKS.md, "What the two clients read"):
//! LuxOS MAC (`_get_mac` returns before it parses) and fault light (any `RedLed` but "off"
//! counts as on, so the firmware's "auto" reads as lit), Whatsminer v2 API version (read from
//! `rpc_ver`, which v2 firmware does not send), Whatsminer v3 pools (looked for in the summary).

use std::process::Command;

use serde_json::Value;

use super::cli::sim;

/// make, model, firmware, nameplate TH/s, watts pyasic reads (`None`: none over what pivot-sim
/// serves), hashboards, chips per board, fans.
type Expect = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    Option<u64>,
    usize,
    u64,
    usize,
);

const EXPECT: [Expect; 6] = [
    ("AntMiner", "S19j Pro", "Stock", 104.0, None, 3, 126, 4),
    ("AntMiner", "S21", "BOS+", 200.0, None, 3, 108, 4),
    ("AntMiner", "S21", "LuxOS", 200.0, Some(3500), 3, 108, 4),
    (
        "WhatsMiner",
        "M50S VH50",
        "Stock",
        126.0,
        Some(3276),
        3,
        135,
        2,
    ),
    (
        "WhatsMiner",
        "M60S VK30",
        "Stock",
        186.0,
        Some(3441),
        3,
        245,
        2,
    ),
    ("BitAxe", "Gamma", "Stock", 1.2, Some(17), 1, 1, 1),
];

/// pyasic 0.79 BOSer's data options with no source but gRPC.
const BRAIINS_GRPC_ONLY: [&str; 13] = [
    "serial_number",
    "psu_serial_number",
    "mac",
    "fw_ver",
    "hostname",
    "expected_hashrate",
    "hashboards",
    "wattage",
    "wattage_limit",
    "fans",
    "fault_light",
    "pools",
    "config",
];

#[test]
fn pyasic_reads_every_dialect_in_full_with_one_get_data() {
    let python = pivot_sim::testenv::python().unwrap();
    let (_child, listed) = sim(
        &[
            "--dialect",
            "mixed",
            "--count",
            "6",
            "--ip-range",
            "127.77.0.1",
            "--fast",
        ],
        6,
    );
    // The lines are addresses `pivot-agent` takes as they are printed.
    assert_eq!(listed[0], "antminer 127.77.0.1:4028,http=80");
    assert_eq!(listed[1], "braiins 127.77.0.2:4028,http=80");
    assert_eq!(listed[4], "whatsminer-v3 127.77.0.5:4433");
    let script = pivot_sim::testenv::workspace_root().join("sim/tests/peers/pyasic_read.py");
    let ips: Vec<String> = (1..=6).map(|i| format!("127.77.0.{i}")).collect();
    let out = Command::new(python)
        .arg(script)
        .args(&ips)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pyasic failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    for (row, (make, model, fw, ths, watts, boards, chips, fans)) in rows.iter().zip(EXPECT) {
        assert_eq!(row["found"], true, "{row}");
        assert!(row.get("raised").is_none(), "get_data() raised: {row}");
        assert_eq!(
            (
                row["make"].as_str(),
                row["model"].as_str(),
                row["firmware"].as_str()
            ),
            (Some(make), Some(model), Some(fw)),
            "{row}"
        );
        assert_eq!(row["is_mining"], true, "{row}");
        assert!(row["uptime"].as_u64().is_some(), "{row}");
        let got = row["hashrate_ths"].as_f64().unwrap_or(0.0);
        assert!((got - ths).abs() < ths * 0.01, "hashrate: {row}");
        assert_eq!(row["wattage"].as_u64(), watts, "wattage: {row}");
        let hashboards = row["hashboards"].as_array().unwrap();
        assert_eq!(hashboards.len(), boards, "{row}");
        if fw == "BOS+" {
            let excluded: Vec<&str> = row["excluded"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(excluded, BRAIINS_GRPC_ONLY, "{row}");
            continue;
        }
        assert_eq!(row["excluded"], serde_json::json!([]), "{row}");
        assert_eq!(row["config"], true, "{row}");
        assert_eq!(row["fans"].as_array().unwrap().len(), fans, "{row}");
        for b in hashboards {
            assert_eq!(b["missing"], false, "{row}");
            assert_eq!(b["chips"].as_u64(), Some(chips), "chips per board: {row}");
            assert_eq!(b["expected_chips"].as_u64(), Some(chips), "{row}");
            let per_board = b["hashrate_ths"].as_f64().unwrap_or(0.0);
            assert!(
                (per_board * boards as f64 - ths).abs() < ths * 0.01,
                "{row}"
            );
        }
    }
}
