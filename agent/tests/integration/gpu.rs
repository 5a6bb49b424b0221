//! The GPU module through the real nvml-wrapper, against pivot's fake NVML library; and that
//! library checked against NVIDIA's own Python bindings.

// Test code: a panic here is a failed test with its message (clippy's in-test allowance does
// not reach helpers outside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "gpu_fake.rs"]
mod fake;

use std::process::Command;
use std::time::Duration;

use fake::FakeNvml;
use pivot_agent::gpu::{
    CapStore, ConfirmPolicy, GpuError, GpuManager, NvmlGpus, PowerCapper, ReapplyOutcome, read_all,
};
use serde_json::{Value, json};

const UUID_0: &str = "GPU-fa4e0000-0000-4000-8000-000000000000";
const UUID_1: &str = "GPU-fa4e0000-0000-4000-8000-000000000001";

/// Two H100s: GPU 0 busy at 650 W with a process, GPU 1 idle at 90 W.
fn two_h100s() -> Value {
    json!({
        "count": 2,
        "power_demand_w": 650.0,
        "utilization_gpu_pct": 97,
        "utilization_memory_pct": 41,
        "memory_used_bytes": 40_000_000_000_u64,
        "gpus": {
            "0": {"temperature_c": 71, "processes": [{"pid": 4242, "used_memory_bytes": 39_000_000_000_u64}]},
            "1": {"power_demand_w": 90.0, "utilization_gpu_pct": 0, "memory_used_bytes": 0}
        }
    })
}

fn quick() -> ConfirmPolicy {
    ConfirmPolicy {
        window: Duration::from_millis(1500),
        interval: Duration::from_millis(50),
        ..Default::default()
    }
}

fn limit_in_file(fake: &FakeNvml, index: u32) -> Value {
    fake.state()["gpus"][index.to_string()]["power_limit_w"].clone()
}

#[tokio::test]
async fn readings_come_through_nvml_wrapper() {
    let fake = FakeNvml::new(two_h100s());
    let gpus = fake.open();
    assert_eq!(gpus.driver_version().unwrap(), "550.54.15");
    assert_eq!(gpus.count().unwrap(), 2);

    let id = gpus.identity(0).unwrap();
    assert_eq!(
        (id.index, id.uuid.as_str(), id.name.as_str()),
        (0, UUID_0, "NVIDIA H100 80GB HBM3")
    );
    assert_eq!(id.pci_bus_id, "00000000:17:00.0");
    assert_eq!(gpus.index_of_uuid(UUID_1).unwrap(), 1);
    assert!(matches!(
        gpus.index_of_uuid("GPU-nope"),
        Err(GpuError::NoSuchGpu { .. })
    ));

    let busy = gpus.telemetry(0).unwrap();
    assert_eq!(busy.power_w, 650.0);
    assert_eq!(busy.temperature_c, Some(71));
    assert_eq!(
        (busy.utilization_gpu_pct, busy.utilization_memory_pct),
        (Some(97), Some(41))
    );
    assert_eq!(
        (busy.memory_used_bytes, busy.memory_total_bytes),
        (40_000_000_000, 85_520_809_984)
    );
    assert_eq!(
        (busy.sm_clock_mhz, busy.memory_clock_mhz),
        (Some(1980), Some(2619))
    );
    assert!(
        busy.throttle_reasons.names().is_empty(),
        "{:?}",
        busy.throttle_reasons
    );
    let l = busy.limits;
    assert_eq!(
        (l.limit_w, l.enforced_w, l.min_w, l.max_w, l.default_w),
        (700.0, 700.0, 200.0, 700.0, 700.0)
    );
    assert_eq!(busy.processes.len(), 1);
    assert_eq!(
        (busy.processes[0].pid, busy.processes[0].used_memory_bytes),
        (4242, Some(39_000_000_000))
    );

    let idle = gpus.telemetry(1).unwrap();
    assert_eq!(idle.power_w, 90.0);
    assert_eq!(idle.throttle_reasons.names(), vec!["gpu_idle"]);
    assert!(idle.processes.is_empty());

    // Energy integrates the draw over time: 650 W for at least the 200 ms slept, at most the
    // time the two readings took.
    let started = std::time::Instant::now();
    let before = gpus.telemetry(0).unwrap().energy_j.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = gpus.telemetry(0).unwrap().energy_j.unwrap();
    let most = 650.0 * started.elapsed().as_secs_f64() + 0.01;
    let joules = after - before;
    assert!(
        (130.0..=most).contains(&joules),
        "650 W for 0.2 s or a bit more, got {joules} J"
    );
}

#[tokio::test]
async fn a_cap_is_applied_read_back_confirmed_and_seen_by_a_new_session() {
    let fake = FakeNvml::new(two_h100s());
    let gpus = fake.open();
    let report = PowerCapper::new(&gpus, quick())
        .set(0, 300.0)
        .await
        .unwrap();
    assert_eq!((report.index, report.uuid.as_str()), (0, UUID_0));
    assert_eq!(
        (report.previous_limit_w, report.limit_w, report.enforced_w),
        (700.0, 300.0, 300.0)
    );
    assert_eq!(report.draw_w, 300.0);
    assert!(!report.persisted);

    let t = gpus.telemetry(0).unwrap();
    assert_eq!(t.power_w, 300.0);
    assert!(t.throttle_reasons.power_capped());
    assert!(t.sm_clock_mhz.unwrap() < 1980, "a capped GPU clocks down");
    assert_eq!(
        gpus.telemetry(1).unwrap().limits.limit_w,
        700.0,
        "GPU 1 untouched"
    );
    assert_eq!(limit_in_file(&fake, 0), json!(300.0));

    drop(gpus);
    let again = fake.open();
    assert_eq!(again.power_limits(0).unwrap().enforced_w, 300.0);
}

#[tokio::test]
async fn a_cap_on_a_lagging_draw_waits_for_it() {
    let mut state = two_h100s();
    state["power_lag_ms"] = json!(400);
    let fake = FakeNvml::new(state);
    let gpus = fake.open();
    let report = PowerCapper::new(&gpus, quick())
        .set(0, 250.0)
        .await
        .unwrap();
    assert!(report.enforced_after_ms < 100, "{report:?}");
    assert!(
        (400..1500).contains(&report.draw_confirmed_after_ms),
        "{report:?}"
    );

    let too_short = ConfirmPolicy {
        window: Duration::from_millis(100),
        ..quick()
    };
    let err = PowerCapper::new(&gpus, too_short)
        .set(0, 200.0)
        .await
        .unwrap_err();
    assert!(matches!(err, GpuError::DrawAboveCap { .. }), "{err}");
    assert!(err.to_string().contains("GPU 0"), "{err}");
    assert_eq!(
        gpus.power_limits(0).unwrap().limit_w,
        200.0,
        "an unconfirmed cap stays applied"
    );
}

#[tokio::test]
async fn an_out_of_range_cap_is_rejected_and_nothing_changes() {
    let fake = FakeNvml::new(two_h100s());
    let gpus = fake.open();
    let capper = PowerCapper::new(&gpus, quick());
    for watts in [150.0, 700.5, -1.0, f64::NAN] {
        let err = capper.set_many(&[0, 1], watts).await.unwrap_err();
        let GpuError::CapOutOfRange { min_w, max_w, .. } = err else {
            panic!("{watts}: {err}")
        };
        assert_eq!((min_w, max_w), (200.0, 700.0));
        assert!(err.to_string().contains("nothing was changed"), "{err}");
    }
    for index in 0..2 {
        assert_eq!(gpus.power_limits(index).unwrap().limit_w, 700.0);
        assert_eq!(limit_in_file(&fake, index), Value::Null);
    }
}

#[tokio::test]
async fn init_failures_name_the_cause_and_the_fix() {
    let missing = std::env::temp_dir().join("pivot-no-such-dir/libnvidia-ml.so.1");
    let err = NvmlGpus::open(Some(&missing)).unwrap_err();
    assert!(matches!(err, GpuError::LibraryNotFound { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("install the NVIDIA driver"), "{message}");

    let fake = FakeNvml::new(json!({"faults": {"driver_not_loaded": true}}));
    let err = NvmlGpus::open(Some(&fake.lib())).unwrap_err();
    assert!(matches!(err, GpuError::DriverNotLoaded { .. }), "{err}");
    assert!(err.to_string().contains("modprobe nvidia"), "{err}");

    let fake = FakeNvml::new(json!({"faults": {"init_no_permission": true}}));
    let err = NvmlGpus::open(Some(&fake.lib())).unwrap_err();
    assert!(matches!(err, GpuError::InitNoPermission { .. }), "{err}");
    assert!(err.to_string().contains("/dev/nvidia"), "{err}");
}

#[tokio::test]
async fn a_non_root_agent_is_told_to_run_as_root_and_nothing_changes() {
    let mut state = two_h100s();
    state["faults"] = json!({"not_root": true});
    let fake = FakeNvml::new(state);
    let gpus = fake.open();
    let err = PowerCapper::new(&gpus, quick())
        .set(1, 300.0)
        .await
        .unwrap_err();
    assert!(matches!(err, GpuError::NoPermission { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no permission to set the power limit on GPU 1: NVML needs root for this; run pivot-agent as root"
    );
    assert_eq!(gpus.power_limits(1).unwrap().limit_w, 700.0);
}

#[tokio::test]
async fn a_lost_gpu_is_named_and_does_not_hide_the_others() {
    let fake = FakeNvml::new(two_h100s());
    let gpus = fake.open();
    fake.update(|s| s["faults"] = json!({"lost_gpus": [1]}));

    let err = gpus.telemetry(1).unwrap_err();
    assert!(err.is_gpu_lost(), "{err}");
    assert!(err.to_string().starts_with("GPU 1 is lost"), "{err}");
    assert!(err.to_string().contains("Xid"), "{err}");
    let all = read_all(&gpus).unwrap();
    assert!(all[0].1.is_ok());
    assert!(all[1].1.as_ref().is_err_and(GpuError::is_gpu_lost));

    let err = PowerCapper::new(&gpus, quick())
        .set(1, 300.0)
        .await
        .unwrap_err();
    assert!(err.is_gpu_lost(), "{err}");
}

#[tokio::test]
async fn persisted_caps_are_reapplied_after_a_driver_reload() {
    let fake = FakeNvml::new(two_h100s());
    let state_dir = fake.dir().join("agent-state");
    let gpus = fake.open();
    let capper = PowerCapper::new(&gpus, quick()).with_store(CapStore::in_dir(&state_dir));
    assert!(capper.set(0, 320.0).await.unwrap().persisted);
    assert!(capper.set(1, 410.0).await.unwrap().persisted);
    let recorded = CapStore::in_dir(&state_dir).load().unwrap();
    assert_eq!(recorded.get(UUID_0).map(|c| c.watts), Some(320.0));
    drop(capper);
    drop(gpus);

    // The driver reloads and GPU 0 forgets its cap; GPU 1's is still there.
    fake.update(|s| {
        s["gpus"]["0"]
            .as_object_mut()
            .unwrap()
            .remove("power_limit_w");
    });
    let gpus = fake.open();
    assert_eq!(gpus.power_limits(0).unwrap().limit_w, 700.0);
    let done = PowerCapper::new(&gpus, quick())
        .with_store(CapStore::in_dir(&state_dir))
        .reapply()
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    let outcome = |uuid: &str| &done.iter().find(|r| r.uuid == uuid).unwrap().outcome;
    assert!(
        matches!(outcome(UUID_0), ReapplyOutcome::Applied(r) if r.enforced_w == 320.0),
        "{done:?}"
    );
    assert!(
        matches!(outcome(UUID_1), ReapplyOutcome::AlreadyInPlace { .. }),
        "{done:?}"
    );
    assert_eq!(gpus.power_limits(0).unwrap().enforced_w, 320.0);
    assert_eq!(limit_in_file(&fake, 0), json!(320.0));
}

fn agent(fake: &FakeNvml, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pivot-agent"))
        .arg("gpu")
        .args(args)
        .arg("--nvml-lib")
        .arg(fake.lib())
        .env_remove("PIVOT_FAKE_NVML_STATE")
        .env_remove("PIVOT_NVML_LIB")
        .output()
        .unwrap()
}

#[test]
fn the_cli_lists_gpus_as_json_and_sets_caps() {
    let fake = FakeNvml::new(two_h100s());
    let out = agent(&fake, &["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let gpu0 = &list[0];
    for (key, want) in [
        ("index", json!(0)),
        ("uuid", json!(UUID_0)),
        ("name", json!("NVIDIA H100 80GB HBM3")),
        ("pci_bus_id", json!("00000000:17:00.0")),
        ("power_w", json!(650.0)),
        ("power_cap_w", json!(700.0)),
        ("power_cap_min_w", json!(200.0)),
        ("power_cap_max_w", json!(700.0)),
        ("temperature_c", json!(71)),
        ("utilization_pct", json!(97)),
        ("memory_used_bytes", json!(40_000_000_000_u64)),
        ("memory_total_bytes", json!(85_520_809_984_u64)),
    ] {
        assert_eq!(gpu0[key], want, "{key} in {gpu0}");
    }
    assert_eq!(list[1]["throttle_reasons"], json!(["gpu_idle"]));

    let out = agent(&fake, &["cap", UUID_1, "250", "--confirm-ms", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GPU 1") && text.contains("cap 250 W (was 700 W)"),
        "{text}"
    );
    assert_eq!(limit_in_file(&fake, 1), json!(250.0));

    let out = agent(&fake, &["cap", "all", "100"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("out of range") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(limit_in_file(&fake, 0), Value::Null);
    assert_eq!(limit_in_file(&fake, 1), json!(250.0));

    let out = agent(&fake, &["cap", "7", "300"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no GPU with index 7"));
}

#[test]
fn the_cli_reports_a_missing_library_plainly() {
    let out = Command::new(env!("CARGO_BIN_EXE_pivot-agent"))
        .args([
            "gpu",
            "list",
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/libnvidia-ml.so.1") && err.contains("--nvml-lib"),
        "{err}"
    );
}

/// NVIDIA's Python bindings (nvidia-ml-py) read the same fake library, and see what pivot sees.
#[tokio::test]
async fn nvidias_python_bindings_see_what_pivot_sees() {
    let mut state = two_h100s();
    state["count"] = json!(3);
    state["faults"] = json!({"lost_gpus": [2]});
    let fake = FakeNvml::new(state);
    let gpus = fake.open();
    PowerCapper::new(&gpus, quick())
        .set(0, 480.0)
        .await
        .unwrap();

    // Python sets GPU 1's limit; pivot must read it back from the shared state.
    let python = pivot_sim::testenv::python().unwrap_or_else(|e| panic!("{e}"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/nvml_read.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(fake.lib())
        .args(["--set-limit", "1", "260000"])
        .env_remove("PIVOT_FAKE_NVML_STATE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nvml_read.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(py["driver_version"], json!(gpus.driver_version().unwrap()));
    assert_eq!(py["count"], json!(gpus.count().unwrap()));
    assert_eq!(py["lost"], json!([2]));
    assert!(gpus.telemetry(2).unwrap_err().is_gpu_lost());
    assert_eq!(py["missing_uuid_error"], json!("NVMLError_NotFound"));

    let py_gpus = py["gpus"].as_array().unwrap();
    assert_eq!(py_gpus.len(), 2);
    for p in py_gpus {
        let index = u32::try_from(p["index"].as_u64().unwrap()).unwrap();
        let id = gpus.identity(index).unwrap();
        let t = gpus.telemetry(index).unwrap();
        let mw = |w: f64| json!((w * 1000.0).round() as u64);
        assert_eq!(p["index_by_uuid"], json!(index));
        assert_eq!(p["name"], json!(id.name));
        assert_eq!(p["uuid"], json!(id.uuid));
        assert_eq!(p["pci_bus_id"], json!(id.pci_bus_id));
        assert_eq!(
            p["pci_bus_id_legacy"],
            json!(format!("0000:{}", &id.pci_bus_id[9..]))
        );
        assert_eq!(p["power_mw"], mw(t.power_w), "GPU {index}");
        assert_eq!(p["temperature_c"], json!(t.temperature_c.unwrap()));
        assert_eq!(
            p["utilization_gpu_pct"],
            json!(t.utilization_gpu_pct.unwrap())
        );
        assert_eq!(
            p["utilization_memory_pct"],
            json!(t.utilization_memory_pct.unwrap())
        );
        let (total, used) = (t.memory_total_bytes, t.memory_used_bytes);
        let v2 = p["memory_v2"].as_array().unwrap();
        assert_eq!((v2[0].as_u64(), v2[3].as_u64()), (Some(total), Some(used)));
        assert_eq!(
            v2[0].as_u64().unwrap(),
            v2.iter().skip(1).map(|v| v.as_u64().unwrap()).sum::<u64>()
        );
        assert_eq!(p["memory_v1"], json!([total, total - used, used]));
        assert_eq!(p["sm_clock_mhz"], json!(t.sm_clock_mhz.unwrap()));
        assert_eq!(p["memory_clock_mhz"], json!(t.memory_clock_mhz.unwrap()));
        assert_eq!(p["throttle_reasons"], json!(t.throttle_reasons.0));
        assert_eq!(p["event_reasons"], json!(t.throttle_reasons.0));
        assert_eq!(p["limit_mw"], mw(t.limits.limit_w));
        assert_eq!(p["enforced_limit_mw"], mw(t.limits.enforced_w));
        assert_eq!(p["default_limit_mw"], mw(t.limits.default_w));
        assert_eq!(
            (&p["min_limit_mw"], &p["max_limit_mw"]),
            (&mw(t.limits.min_w), &mw(t.limits.max_w))
        );
        let processes: Vec<Value> = t
            .processes
            .iter()
            .map(|p| json!({"pid": p.pid, "used_memory_bytes": p.used_memory_bytes}))
            .collect();
        assert_eq!(p["processes"], json!(processes));
        let energy = p["energy_mj"].as_array().unwrap();
        assert!(
            energy[1].as_u64() > energy[0].as_u64(),
            "energy grows: {energy:?}"
        );
        assert_eq!(p["set_below_min_error"], json!("NVMLError_InvalidArgument"));
    }
    // Each side's cap, seen by the other.
    assert_eq!(py_gpus[0]["limit_mw"], json!(480_000));
    assert_eq!(py_gpus[1]["limit_mw"], json!(260_000));
    assert_eq!(gpus.power_limits(1).unwrap().enforced_w, 260.0);
}
