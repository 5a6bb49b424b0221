//! `pivot-agent run` as a site runs it: the real binary, emulated miners from pivot-sim over
//! real sockets, and a scripted fake controller.

use std::time::Duration;

use chrono::Utc;
use pivot_e2e::Running;
use pivot_e2e::fake_controller::FakeController;
use pivot_proto::model::{Intent, MinerTarget, Target};
use pivot_proto::v1;
use pivot_sim::miner::{Bind, Dialect, MinerSpec, RunState, SimMiner, Timing, spawn};

const WAIT: Duration = Duration::from_secs(20);

struct Site {
    dir: tempfile::TempDir,
    agent: Running,
    miners: Vec<SimMiner>,
    metrics: String,
}

impl Site {
    /// Stops (kills) the agent process.
    fn stop_agent(&mut self) {
        let _ = self.agent.child.kill();
        let _ = self.agent.child.wait();
    }

    /// Stops the agent process and starts it again on the same configuration and state.
    fn restart_agent(&mut self) {
        self.stop_agent();
        let path = self.dir.path().join("agent.toml");
        self.agent = run_agent(&path);
        self.metrics = format!("http://{}/metrics", self.agent.addr);
    }
}

fn run_agent(config: &std::path::Path) -> Running {
    pivot_e2e::start_and_wait(
        "pivot-agent",
        &["run", "--config", config.to_str().unwrap()],
        "pivot-agent metrics on ",
        WAIT,
    )
}

async fn miner(dialect: Dialect) -> SimMiner {
    spawn(
        MinerSpec::new(dialect).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap()
}

fn miner_addr(m: &SimMiner) -> String {
    match m.http_addr() {
        Some(h) => format!("{},http={}", m.api_addr(), h.port()),
        None => m.api_addr().to_string(),
    }
}

/// Starts the agent on `miners` against `controller`, with `extra` TOML appended.
fn start_agent(controller: &str, miners: Vec<SimMiner>, extra: &str) -> Site {
    start_agent_with(tempfile::tempdir().unwrap(), controller, miners, extra, "")
}

/// As [`start_agent`], in `dir`, with `tables` (TOML tables) after the controller's.
fn start_agent_with(
    dir: tempfile::TempDir,
    controller: &str,
    miners: Vec<SimMiner>,
    extra: &str,
    tables: &str,
) -> Site {
    let mut toml = format!(
        "host_id = \"rack-1\"\nstate_dir = \"{}\"\n{extra}\n{tables}\n[controller]\nurl = \"{controller}\"\nreconnect_max_s = 1\n\
         [poll]\nminer_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 10\nrediscover_s = 1\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("state").display()
    );
    for m in &miners {
        toml.push_str(&format!(
            "[[miners]]\naddr = \"{}\"\ndialect = \"{}\"\n",
            miner_addr(m),
            m.dialect().name()
        ));
    }
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    let agent = run_agent(&path);
    let metrics = format!("http://{}/metrics", agent.addr);
    Site {
        dir,
        agent,
        miners,
        metrics,
    }
}

fn intent(device: &str, generation: u64, target: Target, lease: Duration) -> v1::Intent {
    Intent {
        device_id: device.into(),
        generation,
        lease_expires_at: Utc::now() + chrono::Duration::from_std(lease).unwrap(),
        target,
        reason: "e2e".into(),
        phase: 0,
        plan_id: String::new(),
    }
    .to_proto()
}

async fn wait_for_state(m: &SimMiner, want: RunState, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = m.handle().snapshot();
        if s.state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "miner stayed {:?}, wanted {want:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SLEEP: Target = Target::Miner(MinerTarget::Sleep);
const RUN: Target = Target::Miner(MinerTarget::Run {
    power_target_w: None,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_intent_is_confirmed_and_a_rebooted_miner_is_curtailed_again() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(&ctl.url(), vec![miner(Dialect::Braiins).await], "");
    let hello = ctl.hello(WAIT).await;
    assert_eq!(hello.host_id, "rack-1");
    assert_eq!(hello.miners.len(), 1);
    let id = hello.miners[0].device_id.clone();
    assert_eq!(hello.miners[0].dialect, v1::MinerDialect::Braiins as i32);

    ctl.send_intents(vec![intent(&id, 1, SLEEP, Duration::from_secs(300))])
        .await;
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Pending).await;
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Applied).await;
    let confirmed = ctl.status(WAIT, &id, 1, v1::IntentPhase::Confirmed).await;
    assert!(
        confirmed.detail.contains("verified") || confirmed.detail.contains("already"),
        "{}",
        confirmed.detail
    );
    let m = &site.miners[0];
    wait_for_state(m, RunState::Sleeping, WAIT).await;

    // A reboot loses Braiins' pause: the agent puts it back to sleep at its next poll.
    m.handle().reboot();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(
        m.handle().snapshot().state,
        RunState::Mining | RunState::RampingUp
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the emulated miner did not come back from its reboot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(m, RunState::Sleeping, Duration::from_secs(10)).await;
    assert!(m.handle().snapshot().reboots >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_controller_the_agent_holds_then_applies_its_fallback() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(
        &ctl.url(),
        vec![miner(Dialect::Luxos).await],
        "fallback = \"curtail\"",
    );
    let id = ctl.hello(WAIT).await.miners[0].device_id.clone();
    let m = &site.miners[0];
    assert_eq!(m.handle().snapshot().state, RunState::Mining);

    ctl.send_intents(vec![intent(&id, 1, RUN, Duration::from_secs(4))])
        .await;
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Confirmed).await;
    ctl.stop().await;
    // The controller is gone: the agent holds the current intent while its lease runs ...
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        m.handle().snapshot().state,
        RunState::Mining,
        "held while the lease was valid"
    );
    // ... and when the lease expires its fallback (curtail) may only lower power.
    wait_for_state(m, RunState::Sleeping, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_hold_a_lost_controller_never_raises_but_curtailment_is_kept() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(
        &ctl.url(),
        vec![miner(Dialect::WhatsminerV3).await],
        "fallback = \"hold\"",
    );
    let id = ctl.hello(WAIT).await.miners[0].device_id.clone();
    let m = &site.miners[0];
    ctl.send_intents(vec![intent(&id, 1, SLEEP, Duration::from_secs(2))])
        .await;
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Confirmed).await;
    ctl.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the lease has expired
    // Something wakes the miner (a reboot, a technician): the agent puts it back to sleep —
    // lowering power needs no lease.
    m.handle().reboot();
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.handle().snapshot().state != RunState::Mining
        && m.handle().snapshot().state != RunState::RampingUp
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the emulated miner did not come back from its reboot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(m, RunState::Sleeping, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_out_of_range_intents_are_rejected_and_change_nothing() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(&ctl.url(), vec![miner(Dialect::Braiins).await], "");
    let id = ctl.hello(WAIT).await.miners[0].device_id.clone();
    let m = &site.miners[0];
    let before = m.handle().snapshot();

    let too_much = Target::Miner(MinerTarget::Run {
        power_target_w: Some(99_999),
    });
    let mut no_target = intent(&id, 3, SLEEP, Duration::from_secs(60));
    no_target.target = None;
    ctl.send_intents(vec![
        intent(&id, 1, too_much, Duration::from_secs(60)),
        intent("miner/10.9.9.9:4028", 2, SLEEP, Duration::from_secs(60)),
        no_target,
        intent(
            &id,
            4,
            Target::Gpu { power_cap_w: 300 },
            Duration::from_secs(60),
        ),
    ])
    .await;
    let r = ctl.status(WAIT, &id, 1, v1::IntentPhase::Rejected).await;
    assert!(
        r.detail.contains("99999") && r.detail.contains("range"),
        "{}",
        r.detail
    );
    let r = ctl
        .status(WAIT, "miner/10.9.9.9:4028", 2, v1::IntentPhase::Rejected)
        .await;
    assert!(r.detail.contains("no device"), "{}", r.detail);
    let r = ctl.status(WAIT, &id, 3, v1::IntentPhase::Rejected).await;
    assert!(r.detail.contains("target"), "{}", r.detail);
    let r = ctl.status(WAIT, &id, 4, v1::IntentPhase::Rejected).await;
    assert!(r.detail.contains("GPU"), "{}", r.detail);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = m.handle().snapshot();
    assert_eq!(after.state, before.state);
    assert_eq!(after.power_target_w, before.power_target_w);
    assert!(!after.sleep_requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_serves_miner_power() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "Prometheus not installed: scripts/test installs the Debian package `prometheus`"
    );
    let ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(
        &ctl.url(),
        vec![
            miner(Dialect::Luxos).await,
            miner(Dialect::WhatsminerV2).await,
        ],
        "",
    );
    let http = reqwest::Client::new();
    // The agent's own exposition first.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = http
            .get(&site.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.matches("pivot_miner_power_watts{").count() >= 2 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no miner power in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        text.contains("# TYPE pivot_miner_power_watts gauge"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = site.agent.addr.clone();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pivot-agent\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let mut prom = std::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=pivot_miner_power_watts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Ok(resp) = http.get(&url).send().await
            && let Ok(v) = resp.json::<serde_json::Value>().await
        {
            let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if series.len() == 2 {
                break series;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let _ = prom.kill();
            panic!("Prometheus did not return two pivot_miner_power_watts series within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = prom.kill();
    let _ = prom.wait();
    for s in &result {
        let watts: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(watts > 1000.0, "a mining miner draws kilowatts: {s}");
        assert_eq!(s["metric"]["Hostname"], "rack-1");
        assert!(
            s["metric"]["device"]
                .as_str()
                .unwrap()
                .starts_with("miner/127.0.0.1:")
        );
    }
}

/// Two fake H100s (pivot-fake-nvml, loaded through the real nvml-wrapper by the agent binary).
fn fake_gpus(dir: &std::path::Path) -> std::path::PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::copy(pivot_e2e::bin("libpivot_fake_nvml.so"), &lib).unwrap();
    std::fs::write(
        dir.join("fake-nvml.json"),
        serde_json::json!({ "count": 2, "power_demand_w": 650.0 }).to_string(),
    )
    .unwrap();
    lib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_caps_from_intents_are_confirmed_and_out_of_range_ones_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_gpus(dir.path());
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let tables = format!(
        "[gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\nmin_cap_w = 250\n",
        lib.display()
    );
    let site = start_agent_with(
        dir,
        &ctl.url(),
        vec![miner(Dialect::Bitaxe).await],
        "",
        &tables,
    );
    let hello = ctl.hello(WAIT).await;
    assert_eq!(hello.gpus.len(), 2);
    let gpu = hello.gpus[0].clone();
    assert!(gpu.device_id.starts_with("gpu/GPU-"), "{}", gpu.device_id);
    assert_eq!(
        gpu.power_cap_min_w, 250,
        "configured floor above the GPU's own minimum"
    );
    assert!(gpu.power_cap_max_w >= 650);

    ctl.send_intents(vec![
        intent(
            &gpu.device_id,
            1,
            Target::Gpu { power_cap_w: 300 },
            Duration::from_secs(60),
        ),
        intent(
            &hello.gpus[1].device_id,
            1,
            Target::Gpu { power_cap_w: 100 },
            Duration::from_secs(60),
        ),
    ])
    .await;
    let r = ctl
        .status(WAIT, &hello.gpus[1].device_id, 1, v1::IntentPhase::Rejected)
        .await;
    assert!(
        r.detail.contains("outside the allowed range 250-"),
        "{}",
        r.detail
    );
    let c = ctl
        .status(WAIT, &gpu.device_id, 1, v1::IntentPhase::Confirmed)
        .await;
    assert!(c.observed_power_w.unwrap() <= 300.0 * 1.05, "{c:?}");

    // Telemetry carries the enforced cap; /metrics serves dcgm-exporter's names.
    let reading = ctl
        .expect(WAIT, "GPU telemetry with the new cap", |m| match &m.msg {
            Some(v1::agent_message::Msg::Telemetry(t)) => t
                .gpus
                .iter()
                .find(|g| g.device_id == gpu.device_id && g.enforced_power_limit_w == Some(300.0))
                .cloned(),
            _ => None,
        })
        .await;
    assert!(reading.power_w.unwrap() <= 301.0);
    let text = reqwest::get(&site.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("DCGM_FI_DEV_POWER_USAGE{") && l.contains(&gpu.uuid))
        .unwrap_or_else(|| panic!("no DCGM power series for {}:\n{text}", gpu.uuid));
    assert!(
        line.contains("gpu=\"0\"")
            && line.contains("modelName=")
            && line.contains("Hostname=\"rack-1\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_re_applies_its_held_intents_without_a_controller() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let mut site = start_agent(&ctl.url(), vec![miner(Dialect::WhatsminerV2).await], "");
    let id = ctl.hello(WAIT).await.miners[0].device_id.clone();
    ctl.send_intents(vec![intent(&id, 7, SLEEP, Duration::from_secs(300))])
        .await;
    ctl.status(WAIT, &id, 7, v1::IntentPhase::Confirmed).await;
    ctl.stop().await;
    // While the agent is down, someone wakes the miner.
    site.stop_agent();
    let m = &site.miners[0];
    m.handle().wake();
    wait_for_state(m, RunState::Mining, WAIT).await;
    // The agent comes back with no controller to talk to: its held intent puts the miner to sleep.
    site.restart_agent();
    wait_for_state(&site.miners[0], RunState::Sleeping, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_miner_that_appears_later_is_found_and_reported() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let late = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A second, auto-detected miner is configured at an address where nothing listens yet.
    let tables = format!("[[miners]]\naddr = \"{late}\"\ndialect = \"auto\"\n");
    let dir = tempfile::tempdir().unwrap();
    let _site = start_agent_with(
        dir,
        &ctl.url(),
        vec![miner(Dialect::Luxos).await],
        "",
        &tables,
    );
    let first = ctl.hello(WAIT).await;
    assert_eq!(first.miners.len(), 1, "the late miner is not there yet");
    // It comes up: the agent finds it at its next rediscovery and says hello with it.
    let spec = MinerSpec::new(Dialect::Luxos).timing(Timing::fast());
    let _late = spawn(
        spec,
        Bind::Explicit {
            api: late,
            http: None,
        },
    )
    .await
    .unwrap();
    let hello = ctl.hello(WAIT).await;
    assert_eq!(hello.miners.len(), 2, "{hello:?}");
    assert!(
        hello
            .miners
            .iter()
            .any(|m| m.addr == late.to_string() && m.dialect == v1::MinerDialect::Luxos as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_controller_sees_the_agent_fleet_through_pivotctl() {
    let ctl = pivot_e2e::start_dev_controller(&[]);
    let miners = vec![
        miner(Dialect::Antminer).await,
        miner(Dialect::Luxos).await,
        miner(Dialect::Bitaxe).await,
    ];
    miners[2].handle().sleep();
    let _site = start_agent(&format!("http://{}", ctl.addr), miners, "");
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let out = std::process::Command::new(pivot_e2e::bin("pivotctl"))
            .args([
                "--controller",
                &format!("http://{}", ctl.addr),
                "status",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["miners_mining"] == 2 && status["miners_sleeping"] == 1 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller never saw the fleet: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["agents_connected"], 1);
    assert_eq!(status["miners_total"], 3);
    assert_eq!(status["miners_unreachable"], 0);
    // LuxOS and the Bitaxe measure their power; stock Antminer firmware does not.
    assert!(
        status["measured_power_w"].as_f64().unwrap() > 1000.0,
        "{status}"
    );
}
