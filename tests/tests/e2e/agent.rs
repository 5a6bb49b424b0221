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
         [poll]\nminer_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 10\nrediscover_s = 1\npacing_s = 1\n\
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

/// An intent's whole way: accepted, applied, its effect seen.
const ALL_THE_WAY: [v1::IntentPhase; 3] = [
    v1::IntentPhase::Pending,
    v1::IntentPhase::Applied,
    v1::IntentPhase::Confirmed,
];
/// A re-apply (after drift or a renewal): applied, its effect seen.
const AGAIN: [v1::IntentPhase; 2] = [v1::IntentPhase::Applied, v1::IntentPhase::Confirmed];

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

    let mut sleep = intent(&id, 1, SLEEP, Duration::from_secs(300));
    sleep.plan_id = "plan-42".into();
    sleep.phase = 1;
    ctl.send_intents(vec![sleep]).await;
    let pending = ctl.status(WAIT, &id, 1, v1::IntentPhase::Pending).await;
    assert_eq!(
        (pending.plan_id.as_str(), pending.plan_phase),
        ("plan-42", 1)
    );
    let confirmed = ctl.statuses(WAIT, &id, 1, &AGAIN).await;
    assert!(
        confirmed.detail.contains("verified"),
        "{}",
        confirmed.detail
    );
    assert_eq!(confirmed.plan_id, "plan-42");
    let m = &site.miners[0];
    wait_for_state(m, RunState::Sleeping, WAIT).await;
    // A re-send of the same generation repeats nothing: it is answered with where it stands.
    ctl.send_intents(vec![intent(&id, 1, SLEEP, Duration::from_secs(300))])
        .await;
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Confirmed).await;
    ctl.quiet(Duration::from_secs(1)).await;

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
    // The re-apply is reported; nothing else happens.
    ctl.statuses(WAIT, &id, 1, &AGAIN).await;
    ctl.quiet(Duration::from_secs(1)).await;
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
    // Once the agent has read it mining ...
    ctl.telemetry(WAIT, "the miner read mining", |t| {
        t.miners
            .iter()
            .find(|r| r.device_id == id && r.state == v1::MinerState::Mining as i32)
            .cloned()
    })
    .await;
    ctl.send_intents(vec![intent(&id, 1, RUN, Duration::from_secs(4))])
        .await;
    // Mining already: nothing to do, and nothing done.
    ctl.status(WAIT, &id, 1, v1::IntentPhase::Pending).await;
    let c = ctl.status(WAIT, &id, 1, v1::IntentPhase::Confirmed).await;
    assert!(c.detail.contains("already"), "{}", c.detail);
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
    ctl.statuses(WAIT, &id, 1, &ALL_THE_WAY).await;
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
    ctl.quiet(Duration::from_secs(1)).await;
    let after = m.handle().snapshot();
    assert_eq!(after.state, before.state);
    assert_eq!(after.power_target_w, before.power_target_w);
    assert!(!after.sleep_requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_serves_miner_power() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(
        &ctl.url(),
        vec![
            miner(Dialect::Luxos).await,
            miner(Dialect::WhatsminerV2).await,
        ],
        "",
    );
    ctl.hello(WAIT).await;
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

    let prom = pivot_e2e::prometheus::Prometheus::start(&[("pivot-agent", &site.agent.addr)]);
    let result = prom
        .wait_for("pivot_miner_power_watts", Duration::from_secs(60), |r| {
            r.len() == 2
        })
        .await;
    drop(prom);
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
    let c = ctl.statuses(WAIT, &gpu.device_id, 1, &ALL_THE_WAY).await;
    assert!(c.observed_power_w.unwrap() <= 300.0 * 1.05, "{c:?}");

    // Telemetry carries the enforced cap; /metrics serves dcgm-exporter's names.
    let reading = ctl
        .telemetry(WAIT, "GPU telemetry with the new cap", |t| {
            t.gpus
                .iter()
                .find(|g| g.device_id == gpu.device_id && g.enforced_power_limit_w == Some(300.0))
                .cloned()
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
    ctl.statuses(WAIT, &id, 7, &ALL_THE_WAY).await;
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
    // Not found yet, it is still declared (dialect unknown) so the controller counts it at its
    // maximum instead of not at all.
    assert_eq!(first.miners.len(), 2, "{first:?}");
    let undetected = first
        .miners
        .iter()
        .find(|m| m.addr == late.to_string())
        .expect("the configured miner is in the hello before it answers");
    assert_eq!(undetected.dialect, v1::MinerDialect::Unspecified as i32);
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

/// Text of the agent's `/metrics`.
async fn scrape(site: &Site) -> String {
    reqwest::get(&site.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `/metrics` has a line starting with `prefix` and ending in `value`.
async fn wait_for_series(site: &Site, prefix: &str, value: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(site).await;
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with(prefix) && l.ends_with(value))
        {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{prefix}… {value}` in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sleeping_miner(dialect: Dialect) -> SimMiner {
    spawn(
        MinerSpec::new(dialect).timing(Timing::fast()).sleeping(),
        Bind::localhost(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewal_renews_only_the_intents_it_names() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(&ctl.url(), vec![sleeping_miner(Dialect::Luxos).await], "");
    let id = ctl.hello(WAIT).await.miners[0].device_id.clone();
    let m = &site.miners[0];
    // Woken under a short lease.
    ctl.send_intents(vec![intent(&id, 1, RUN, Duration::from_secs(3))])
        .await;
    ctl.statuses(WAIT, &id, 1, &ALL_THE_WAY).await;
    wait_for_state(m, RunState::Mining, WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the lease ends
    // Thermal protection puts it to sleep: without a lease, the agent leaves it there.
    m.handle().sleep();
    let held = ctl.status(WAIT, &id, 1, v1::IntentPhase::Pending).await;
    assert!(held.detail.contains("lease expired"), "{}", held.detail);
    // A controller renewing what it did not issue (another generation, another device) re-arms
    // nothing.
    let later = Utc::now() + chrono::Duration::seconds(300);
    ctl.renew(later, &[(&id, 2), ("miner/10.9.9.9:4028", 1)])
        .await;
    ctl.renew(later, &[]).await;
    ctl.quiet(Duration::from_secs(2)).await;
    assert_eq!(m.handle().snapshot().state, RunState::Sleeping);
    // Named at the generation held, the intent is in force again.
    ctl.renew(later, &[(&id, 1)]).await;
    ctl.statuses(WAIT, &id, 1, &AGAIN).await;
    wait_for_state(m, RunState::Mining, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_controllers_clock_far_off_the_agent_lowers_but_never_raises() {
    let mut ctl =
        FakeController::start_with_clock(Duration::from_millis(500), chrono::Duration::seconds(90))
            .await;
    let site = start_agent(
        &ctl.url(),
        vec![
            sleeping_miner(Dialect::Braiins).await,
            miner(Dialect::WhatsminerV3).await,
        ],
        "",
    );
    let hello = ctl.hello(WAIT).await;
    let (asleep, mining) = {
        let port = |i: usize| site.miners[i].api_addr().port();
        let by_port = |p: u16| {
            hello
                .miners
                .iter()
                .find(|m| m.addr.ends_with(&format!(":{p}")) || m.addr.contains(&format!(":{p},")))
                .unwrap_or_else(|| panic!("no miner on port {p}: {hello:?}"))
                .device_id
                .clone()
        };
        (by_port(port(0)), by_port(port(1)))
    };
    // The lease is valid on the controller's clock, but the agent cannot tell: 90 s apart.
    let lease = ctl.now() + chrono::Duration::seconds(300);
    let mut wake = intent(&asleep, 1, RUN, Duration::from_secs(0));
    wake.lease_expires_at = Some(pivot_proto::model::timestamp_to_proto(lease));
    ctl.send_intents(vec![wake]).await;
    ctl.status(WAIT, &asleep, 1, v1::IntentPhase::Pending).await;
    let held = ctl.status(WAIT, &asleep, 1, v1::IntentPhase::Pending).await;
    assert!(held.detail.contains("clock"), "{}", held.detail);
    // Lowering needs no lease and no clock.
    let mut sleep = intent(&mining, 1, SLEEP, Duration::from_secs(0));
    sleep.lease_expires_at = Some(pivot_proto::model::timestamp_to_proto(lease));
    ctl.send_intents(vec![sleep]).await;
    ctl.statuses(WAIT, &mining, 1, &ALL_THE_WAY).await;
    ctl.quiet(Duration::from_secs(2)).await;
    assert_eq!(site.miners[0].handle().snapshot().state, RunState::Sleeping);
    assert_eq!(site.miners[1].handle().snapshot().state, RunState::Sleeping);
    // The controller's clock is fixed: its next message brings the agent's trust back.
    ctl.set_clock_offset(chrono::Duration::zero());
    ctl.renew(Utc::now() + chrono::Duration::seconds(300), &[(&asleep, 1)])
        .await;
    ctl.statuses(WAIT, &asleep, 1, &AGAIN).await;
    wait_for_state(&site.miners[0], RunState::Mining, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_carries_nameplates_power_target_steps_and_the_hosts_power() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let s19 = spawn(
        MinerSpec::new(Dialect::WhatsminerV2).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let tables = format!(
        "[host]\nbase_power_w = 1800\nmax_power_w = 12000\n[[miners]]\naddr = \"{}\"\ndialect = \"whatsminer-v2\"\nnameplate_power_w = 3300\nnameplate_hashrate_ths = 120.0\n",
        miner_addr(&s19)
    );
    let _site = start_agent_with(
        tempfile::tempdir().unwrap(),
        &ctl.url(),
        vec![miner(Dialect::Luxos).await],
        "",
        &tables,
    );
    let hello = ctl.hello(WAIT).await;
    let host = hello.host.unwrap();
    assert_eq!(
        (host.base_power_w, host.max_power_w),
        (Some(1800), Some(12000))
    );
    let luxos = hello
        .miners
        .iter()
        .find(|m| m.dialect == v1::MinerDialect::Luxos as i32)
        .unwrap();
    // The LuxOS S21 is in the model table; its profiles are the steps a target lands on.
    assert_eq!(luxos.nameplate_power_w, Some(3500), "{luxos:?}");
    assert_eq!(luxos.nameplate_hashrate_ths, Some(200.0));
    assert_eq!(luxos.nameplate_source, "model-table");
    let caps = luxos.capabilities.as_ref().unwrap();
    assert!(caps.power_target_steps_w.len() > 2, "{caps:?}");
    assert!(caps.power_target_steps_w.windows(2).all(|w| w[0] < w[1]));
    let wm = hello
        .miners
        .iter()
        .find(|m| m.dialect == v1::MinerDialect::WhatsminerV2 as i32)
        .unwrap();
    assert_eq!(
        wm.nameplate_power_w,
        Some(3300),
        "the operator's figure wins"
    );
    assert_eq!(wm.nameplate_source, "config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_is_refused_naming_the_first() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let site = start_agent(&ctl.url(), vec![miner(Dialect::Bitaxe).await], "");
    ctl.hello(WAIT).await;
    let out = std::process::Command::new(pivot_e2e::bin("pivot-agent"))
        .args([
            "run",
            "--config",
            site.dir.path().join("agent.toml").to_str().unwrap(),
        ])
        .env("PIVOT_AGENT_METRICS_LISTEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = site.agent.child.id();
    assert!(
        err.contains("in use by another pivot-agent") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    // The first one is unaffected and nothing reached the controller from the second.
    ctl.quiet(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_intents_are_checked_when_read_back_and_a_corrupt_caps_file_stops_the_agent() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let m = miner(Dialect::Braiins).await;
    let id = format!("miner/{}", miner_addr(&m));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let record = |device: &str, generation: u64, target: Target| {
        serde_json::json!({
            "intent": Intent {
                device_id: device.into(),
                generation,
                lease_expires_at: Utc::now() + chrono::Duration::seconds(300),
                target,
                reason: "saved".into(),
                phase: 0,
                plan_id: String::new(),
            }
        })
    };
    let four_gw = Target::Miner(MinerTarget::Run {
        power_target_w: Some(4_000_000_000),
    });
    std::fs::write(
        state.join("intents.json"),
        serde_json::json!({ "version": 2, "held": [record(&id, 9, four_gw)] }).to_string(),
    )
    .unwrap();
    let site = start_agent_with(dir, &ctl.url(), vec![m], "", "");
    let hello = ctl.hello(WAIT).await;
    assert!(hello.held_intents.is_empty(), "{hello:?}");
    let refused = ctl.status(WAIT, &id, 9, v1::IntentPhase::Rejected).await;
    assert!(
        refused.detail.contains("intents.json") && refused.detail.contains("4000000000"),
        "{}",
        refused.detail
    );
    ctl.quiet(Duration::from_secs(1)).await;
    assert_eq!(site.miners[0].handle().snapshot().power_target_w, None);

    // A caps file with one impossible cap: the agent does not start on it, and says which.
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_gpus(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("gpu-caps.json"),
        r#"{"version":1,"caps":{"GPU-x":{"watts":-5.0,"index":0,"set_at":"2026-01-01T00:00:00Z"}}}"#,
    )
    .unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "host_id = \"rack-2\"\nstate_dir = \"{}\"\n[controller]\nurl = \"{}\"\n[gpus]\nenabled = true\nnvml_lib = \"{}\"\n[metrics]\nlisten = \"\"\n",
            state.display(),
            ctl.url(),
            lib.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(pivot_e2e::bin("pivot-agent"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpu-caps.json") && err.contains("GPU-x"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_at_start_is_reported_and_the_rest_are_driven() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_gpus(dir.path());
    std::fs::write(
        dir.path().join("fake-nvml.json"),
        serde_json::json!({ "count": 2, "power_demand_w": 650.0, "faults": { "lost_gpus": [1] } })
            .to_string(),
    )
    .unwrap();
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let tables = format!(
        "[gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\n",
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
    assert_eq!(hello.gpus.len(), 1, "{hello:?}");
    let line = wait_for_series(&site, "pivot_gpu_up{gpu=\"1\"", " 0").await;
    assert!(line.contains("Hostname=\"rack-1\""), "{line}");
    wait_for_series(&site, "pivot_gpu_up{gpu=\"0\"", " 1").await;
    // The healthy GPU takes intents.
    let gpu = hello.gpus[0].device_id.clone();
    ctl.send_intents(vec![intent(
        &gpu,
        1,
        Target::Gpu { power_cap_w: 300 },
        Duration::from_secs(60),
    )])
    .await;
    ctl.statuses(WAIT, &gpu, 1, &ALL_THE_WAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_miners_that_never_answer_are_reported_unseen() {
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let hung = spawn(
        MinerSpec::new(Dialect::Luxos)
            .timing(Timing::fast())
            .faults(vec![pivot_sim::miner::Fault::Hang]),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let undetected = spawn(
        MinerSpec::new(Dialect::Luxos)
            .timing(Timing::fast())
            .faults(vec![pivot_sim::miner::Fault::Hang]),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let tables = format!(
        "[[miners]]\naddr = \"{}\"\ndialect = \"auto\"\n",
        undetected.api_addr()
    );
    // One hangs with its dialect configured, one with "auto".
    let site = start_agent_with(
        tempfile::tempdir().unwrap(),
        &ctl.url(),
        vec![hung],
        "",
        &tables,
    );
    let hello = ctl.hello(WAIT).await;
    // Both are reported, unseen (the controller counts them at their maximum): the configured
    // dialect is known; nothing says what the "auto" one is, so its dialect is unspecified.
    assert_eq!(hello.miners.len(), 2, "{hello:?}");
    let undetected_id = format!("miner/{}", undetected.api_addr());
    let auto = hello
        .miners
        .iter()
        .find(|m| m.device_id == undetected_id)
        .unwrap_or_else(|| panic!("the undetected miner is not in {hello:?}"));
    assert_eq!(auto.dialect, v1::MinerDialect::Unspecified as i32);
    let id = hello
        .miners
        .iter()
        .find(|m| m.device_id != undetected_id)
        .unwrap()
        .device_id
        .clone();
    let reading = ctl
        .telemetry(WAIT, "the hung miner's reading", |t| {
            t.miners.iter().find(|m| m.device_id == id).cloned()
        })
        .await;
    assert!(!reading.reachable, "{reading:?}");
    assert_eq!(reading.state, v1::MinerState::Unknown as i32);
    wait_for_series(&site, &format!("pivot_miner_up{{device=\"{id}\""), " 0").await;
    let line = wait_for_series(
        &site,
        &format!("pivot_miner_up{{device=\"{undetected_id}\""),
        " 0",
    )
    .await;
    assert!(line.contains("dialect=\"unknown\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miner_commands_follow_the_daemons_rules() {
    let m = miner(Dialect::WhatsminerV3).await;
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(pivot_e2e::bin("pivot-agent"))
            .arg("miner")
            .args(args)
            .env("PIVOT_MINER_STATE_FILE", state.path().join("modes.json"))
            .output()
            .unwrap()
    };
    let addr = miner_addr(&m);
    // No range from the firmware: refused above nameplate (M60S, 3441 W), as the daemon does.
    let out = run(&["--dialect", "whatsminer-v3", "power-target", &addr, "99999"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("99999") && err.contains("nameplate"), "{err}");
    assert_eq!(
        m.handle().snapshot().power_target_w,
        None,
        "nothing changed"
    );
    let out = run(&["--dialect", "whatsminer-v3", "power-target", &addr, "3000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.handle().snapshot().power_target_w, Some(3000));
    // Nothing answers at an address: no dialect is named for it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = run(&[
        "--timeout",
        "1s",
        "--connect-timeout",
        "1s",
        "probe",
        &dead.to_string(),
        "--json",
    ]);
    assert!(!out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["addr"], dead.to_string());
    assert!(rows[0].get("dialect").is_none(), "{rows}");
    let out = run(&[
        "--timeout",
        "1s",
        "--connect-timeout",
        "1s",
        "probe",
        &dead.to_string(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("undetected") && !table.contains("antminer"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_held_below_its_cap_by_another_limit_is_confirmed_once() {
    // A BMC holds GPU 0 at 280 W: a 400 W cap is in place as asked, and the GPU enforces the
    // lower limit. That is the cap confirmed, not a cap that failed (and was set again, forever).
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_gpus(dir.path());
    std::fs::write(
        dir.path().join("fake-nvml.json"),
        serde_json::json!({
            "count": 1,
            "power_demand_w": 650.0,
            "gpus": { "0": { "external_limit_w": 280.0 } }
        })
        .to_string(),
    )
    .unwrap();
    let mut ctl = FakeController::start(Duration::from_millis(500)).await;
    let tables = format!(
        "[gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\n",
        lib.display()
    );
    let _site = start_agent_with(dir, &ctl.url(), vec![], "", &tables);
    let gpu = ctl.hello(WAIT).await.gpus[0].device_id.clone();
    ctl.send_intents(vec![intent(
        &gpu,
        1,
        Target::Gpu { power_cap_w: 400 },
        Duration::from_secs(60),
    )])
    .await;
    let c = ctl.statuses(WAIT, &gpu, 1, &ALL_THE_WAY).await;
    assert!(c.observed_power_w.unwrap() <= 280.0 * 1.05, "{c:?}");
    ctl.quiet(Duration::from_secs(3)).await;
}
