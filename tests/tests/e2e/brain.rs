//! The controller deciding, end to end: the real `pivot-controller serve` with a market the test
//! moves (JSON feed files it rewrites), the real `pivot-agent` driving pivot-sim miners of four
//! efficiencies and two fake-NVML GPUs over real sockets, and `pivotctl` reading the result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pivot_e2e::{Running, bin, free_port, start_and_wait, write_whole};
use pivot_sim::miner::{Bind, Dialect, MinerSpec, RunState, SimMiner, Timing, spawn};

const WAIT: Duration = Duration::from_secs(60);

/// Test policy: no dwell, no AI host buffer or drain delay, so each move shows within seconds.
const POLICY: &str = r#"name = "e2e"
[economic]
min_margin_usd_per_mwh = 0.0
hysteresis_usd_per_mwh = 4.0
min_dwell_s = 0
ramp_limit_w_per_min = 0.0
ai_buffer_hosts = 0
ai_drain_delay_s = 0
shed_lead_s = 60
"#;

struct Site {
    dir: tempfile::TempDir,
    controller: Option<Running>,
    _agent: Option<Running>,
    miners: Vec<SimMiner>,
    port: u16,
}

fn write_feed(path: &Path, value: f64) {
    write_whole(path, &serde_json::json!({ "value": value }).to_string());
}

impl Site {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn energy(&self, usd_per_mwh: f64) {
        write_feed(&self.dir.path().join("energy.json"), usd_per_mwh);
    }

    fn ai_value(&self, usd_per_gpu_hour: f64) {
        write_feed(&self.dir.path().join("ai.json"), usd_per_gpu_hour);
    }

    /// Starts `bin` with `command --config <config in the site's directory>` and waits for the
    /// line that says it is up.
    fn start(&self, bin: &str, command: &str, config: &str, up: &str) -> Running {
        let config = self.dir.path().join(config);
        start_and_wait(
            bin,
            &[command, "--config", config.to_str().unwrap()],
            up,
            WAIT,
        )
    }

    fn start_controller(&mut self) {
        self.controller = Some(self.start(
            "pivot-controller",
            "serve",
            "controller.toml",
            "pivot-controller listening on ",
        ));
    }

    /// Kills the controller the hard way: no shutdown, nothing flushed.
    fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }

    fn pivotctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(bin("pivotctl"))
            .args(["--controller", &self.url()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pivotctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.pivotctl(args)).unwrap()
    }

    /// One device as `pivotctl devices --json` shows it (null when it is not listed).
    fn device(&self, id: &str) -> serde_json::Value {
        self.json(&["devices", "--json"])
            .as_array()
            .and_then(|a| a.iter().find(|d| d["device_id"] == id).cloned())
            .unwrap_or_default()
    }

    /// Every audit record, oldest first.
    fn audit(&self) -> Vec<serde_json::Value> {
        let mut rows: Vec<serde_json::Value> = self
            .pivotctl(&["audit", "--limit", "1000", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        rows.reverse();
        rows
    }

    fn miner(&self, dialect: Dialect) -> &SimMiner {
        self.miners.iter().find(|m| m.dialect() == dialect).unwrap()
    }
}

async fn miner(dialect: Dialect, timing: Timing) -> SimMiner {
    spawn(MinerSpec::new(dialect).timing(timing), Bind::localhost())
        .await
        .unwrap()
}

fn miner_addr(m: &SimMiner) -> String {
    match m.http_addr() {
        Some(h) => format!("{},http={}", m.api_addr(), h.port()),
        None => m.api_addr().to_string(),
    }
}

fn fake_gpus(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::copy(bin("libpivot_fake_nvml.so"), &lib).unwrap();
    std::fs::write(
        dir.join("fake-nvml.json"),
        serde_json::json!({ "count": 2, "power_demand_w": 650.0 }).to_string(),
    )
    .unwrap();
    lib
}

/// A site: a controller (cap `cap_w`), one agent with the four large pivot-sim miners (S19j Pro
/// 29.5 J/TH, M50S 26, M60S 18.5, S21 17.5) and two fake GPUs on a host of 1,150 W base.
async fn site(cap_w: f64, energy: f64, ai: f64, antminer_timing: Timing) -> Site {
    let antminer = MinerSpec::new(Dialect::Antminer).timing(antminer_timing);
    site_with(cap_w, energy, ai, antminer, "").await
}

/// [`site`] with the Antminer as `antminer` says and `engine` added to `[engine]`.
async fn site_with(cap_w: f64, energy: f64, ai: f64, antminer: MinerSpec, engine: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let miners = vec![
        spawn(antminer, Bind::localhost()).await.unwrap(),
        miner(Dialect::WhatsminerV2, Timing::fast()).await,
        miner(Dialect::WhatsminerV3, Timing::fast()).await,
        miner(Dialect::Luxos, Timing::fast()).await,
    ];
    let mut s = Site {
        dir,
        controller: None,
        _agent: None,
        miners,
        port,
    };
    s.energy(energy);
    s.ai_value(ai);
    let d = s.dir.path().to_owned();
    let d = d.as_path();
    std::fs::write(
        d.join("controller.toml"),
        format!(
            r#"[site]
id = "e2e"
cap_w = {cap_w}
[listen]
grpc = "127.0.0.1:{port}"
[store]
path = "{db}"
[auth]
mode = "open"
[agents]
telemetry_interval_s = 1
lease_s = 60
[engine]
replan_s = 2
sample_s = 1
curtail_timeout_s = 60
{engine}
[market.hashprice]
source = "fixed"
usd_per_ph_day = 45.0
[market.energy]
source = "feed"
file = "{energy}"
format = "json"
field = "value"
refresh_s = 1
max_age_s = 600
[market.ai_value]
source = "feed"
file = "{ai}"
field = "value"
refresh_s = 1
max_age_s = 600
[market.ai_demand]
source = "fixed"
gpus = "all"
"#,
            db = d.join("pivot.db").display(),
            energy = d.join("energy.json").display(),
            ai = d.join("ai.json").display(),
        ),
    )
    .unwrap();
    s.start_controller();
    std::fs::write(d.join("policy.toml"), POLICY).unwrap();
    s.pivotctl(&["policy", "set", d.join("policy.toml").to_str().unwrap()]);

    let lib = fake_gpus(d);
    let mut agent = format!(
        "host_id = \"rack-1\"\nstate_dir = \"{}\"\n[host]\nbase_power_w = 1150\n\
         [controller]\nurl = \"{}\"\nreconnect_max_s = 1\n\
         [poll]\nminer_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 20\nrediscover_s = 1\npacing_s = 1\n\
         [gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        d.join("state").display(),
        s.url(),
        lib.display(),
    );
    for m in &s.miners {
        agent.push_str(&format!(
            "[[miners]]\naddr = \"{}\"\ndialect = \"{}\"\n",
            miner_addr(m),
            m.dialect().name()
        ));
    }
    std::fs::write(d.join("agent.toml"), agent).unwrap();
    s.start_agent();
    s
}

impl Site {
    /// (Re)starts the agent on `agent.toml`; the one running, if any, is killed first.
    fn start_agent(&mut self) {
        self._agent = None;
        self._agent = Some(self.start(
            "pivot-agent",
            "run",
            "agent.toml",
            "pivot-agent metrics on ",
        ));
    }

    /// Waits for `ok`; on timeout fails with what the controller says of the site.
    async fn until(&self, what: &str, mut ok: impl FnMut(&Site) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !ok(self) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out: {what}\n--- status\n{}\n--- plan\n{}\n--- devices\n{}\n--- history\n{}",
                    self.pivotctl(&["status"]),
                    self.pivotctl(&["plan"]),
                    self.pivotctl(&["devices"]),
                    self.pivotctl(&["audit", "--limit", "60"]),
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn state(m: &SimMiner) -> RunState {
    m.handle().snapshot().state
}

fn mining(m: &SimMiner) -> bool {
    state(m) == RunState::Mining
}

fn asleep(m: &SimMiner) -> bool {
    state(m) == RunState::Sleeping
}

/// The caps the two fake GPUs enforce, from the state file the fake keeps.
fn gpu_caps(s: &Site) -> Vec<f64> {
    let text = std::fs::read_to_string(s.dir.path().join("fake-nvml.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (0..2)
        .map(|i: u32| {
            v["gpus"][i.to_string()]["power_limit_w"]
                .as_f64()
                .unwrap_or(700.0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_energy_spike_sleeps_the_least_efficient_miners_first_and_gpus_keep_their_caps() {
    let s = site(100_000.0, 40.0, 2.0, Timing::fast()).await;
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;
    s.until("the agent reported", |s| {
        s.json(&["status", "--json"])["miners"]["total"] == 4
    })
    .await;

    // 68 USD/MWh: above the S19j Pro's breakeven (45 × 1000 / (24 × 29.5) = 63.6) by more
    // than half the band, below the M50S's (72.1) by more than half the band.
    s.energy(68.0);
    s.until("the S19j Pro asleep", |s| {
        asleep(s.miner(Dialect::Antminer))
    })
    .await;
    assert!(mining(s.miner(Dialect::WhatsminerV2)), "M50S still mining");
    assert!(mining(s.miner(Dialect::WhatsminerV3)));
    assert!(mining(s.miner(Dialect::Luxos)));

    // 85: the M50S goes too; the M60S (101) and S21 (107) keep mining.
    s.energy(85.0);
    s.until("the M50S asleep", |s| {
        asleep(s.miner(Dialect::WhatsminerV2))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(mining(s.miner(Dialect::WhatsminerV3)));
    assert!(mining(s.miner(Dialect::Luxos)));
    assert!(asleep(s.miner(Dialect::Antminer)));

    // The GPUs, worth far more than energy, kept their caps: no GPU intent was sent.
    assert_eq!(gpu_caps(&s), [700.0, 700.0]);
    let audit = s.audit();
    assert!(
        !audit
            .iter()
            .any(|r| r["kind"] == "status" && r["subject"].as_str().unwrap().starts_with("gpu/")),
        "a GPU was moved during an energy spike"
    );
    // The decisions say why, in figures.
    let decisions: Vec<&str> = audit
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    let s19 = decisions
        .iter()
        .position(|d| d.contains("S19j Pro") && d.contains("sleeping"))
        .unwrap_or_else(|| panic!("no S19j Pro decision in {decisions:?}"));
    let m50 = decisions
        .iter()
        .position(|d| d.contains("M50S") && d.contains("sleeping"))
        .unwrap_or_else(|| panic!("no M50S decision in {decisions:?}"));
    assert!(s19 < m50, "the least efficient went first: {decisions:?}");
    assert!(decisions[s19].contains("energy 68"), "{}", decisions[s19]);

    // Energy back down: they wake.
    s.energy(40.0);
    s.until("every miner mining again", |s| s.miners.iter().all(mining))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_ai_is_worth_more_miners_sleep_first_and_gpu_caps_rise_only_after() {
    // The planner counts each mining miner at its nameplate, or at the power target it reports
    // it is set to when that is more (the LuxOS S21 at its stock profile's 3,500 W, not the
    // 5,590 W of its top one): 13,285 W for the four. With the GPU host drained (base 1,150 W +
    // 2 × 200 W) that fits under 15.1 kW; with it serving (+1 kW) it does not, so AI worth more
    // sleeps a miner first.
    let s = site(15_100.0, 40.0, 0.0, Timing::fast()).await;
    s.until("the GPUs capped low (AI worth nothing)", |s| {
        gpu_caps(s) == [200.0, 200.0]
    })
    .await;
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;

    // AI at 2 USD per GPU-hour: 4 USD/h on 2.55 kW = 1,569 USD/MWh, far above any miner.
    s.ai_value(2.0);
    s.until("the GPUs at full service", |s| {
        gpu_caps(s) == [700.0, 700.0]
    })
    .await;
    assert!(
        asleep(s.miner(Dialect::Antminer)),
        "the least efficient miner made room"
    );
    assert!(mining(s.miner(Dialect::Luxos)));

    // In the audit log, the miner's sleep was confirmed before the GPUs' raise was accepted.
    let audit = s.audit();
    let id = |r: &serde_json::Value| r["id"].as_u64().unwrap();
    let antminer = format!("miner/{}", miner_addr(s.miner(Dialect::Antminer)));
    let confirmed = audit
        .iter()
        .filter(|r| r["kind"] == "status" && r["subject"] == antminer.as_str())
        .find(|r| r["detail"]["phase"] == "confirmed")
        .map(id)
        .unwrap_or_else(|| panic!("no confirmation for {antminer}"));
    let gpu = |r: &&serde_json::Value| {
        r["kind"] == "status" && r["subject"].as_str().unwrap().starts_with("gpu/")
    };
    // The raise is each GPU's newest generation (the first capped it low).
    let newest = audit
        .iter()
        .filter(gpu)
        .filter_map(|r| r["detail"]["generation"].as_u64())
        .max()
        .unwrap();
    let raise: Vec<u64> = audit
        .iter()
        .filter(gpu)
        .filter(|r| r["detail"]["generation"].as_u64() == Some(newest))
        .map(id)
        .collect();
    assert!(!raise.is_empty());
    assert!(
        raise.iter().all(|i| *i > confirmed),
        "GPU caps were raised (statuses {raise:?}) before the miner's sleep was confirmed ({confirmed})"
    );
    let status = s.json(&["status", "--json"]);
    assert!(
        status["committed_power_w"].as_f64().unwrap() <= 15_100.0,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_response_event_reaches_its_target_by_its_deadline() {
    let s = site(100_000.0, 40.0, 2.0, Timing::fast()).await;
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;
    s.until("the agent reported", |s| {
        s.json(&["status", "--json"])["committed_power_w"]
            .as_f64()
            .unwrap()
            > 13_000.0
    })
    .await;
    let e = s.json(&[
        "dr",
        "start",
        "--target-kw",
        "9",
        "--within",
        "30s",
        "--duration",
        "10m",
        "--event-id",
        "ecrs-e2e-1",
        "--json",
    ]);
    assert_eq!(e["state"], "shedding");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.json(&["status", "--json"]);
        let committed = st["committed_power_w"].as_f64().unwrap();
        if committed <= 9_000.0 && st["cap_in_force_w"].as_f64().unwrap() <= 9_000.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "DR target not reached by its deadline: {st}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = s.json(&["dr", "status", "--json"]);
    assert_eq!(events[0]["event_id"], "ecrs-e2e-1");
    assert!(events[0]["achieved_power_w"].as_f64().unwrap() <= 9_000.0);
    // A second event with the same id is refused, never replaces the first.
    let out = std::process::Command::new(bin("pivotctl"))
        .args(["--controller", &s.url(), "dr", "start", "--target-kw", "1"])
        .args(["--duration", "1m", "--event-id", "ecrs-e2e-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // Cancelled: the site goes back to its policy and the miners wake.
    s.pivotctl(&["dr", "stop", "ecrs-e2e-1"]);
    s.until("every miner mining after the event", |s| {
        s.miners.iter().all(mining)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_transition_completes_it_on_restart_without_repeating() {
    // The stock Antminer's CGI answers only after 4 s (it restarts cgminer): time to kill the
    // controller while its sleep is on the way.
    let slow = Timing {
        cgi_reply: Duration::from_secs(4),
        ..Timing::fast()
    };
    let mut s = site(100_000.0, 40.0, 2.0, slow).await;
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;
    s.until("the agent reported", |s| {
        s.json(&["status", "--json"])["miners"]["total"] == 4
    })
    .await;
    // Each miner read mining with its draw carries the J/TH the planner ranks it by, learned
    // from that steady mining (through the real gRPC `ListDevices`).
    s.until("the miners' efficiencies learned", |s| {
        let devices = s.json(&["devices", "--json"]);
        let measured: Vec<_> = devices
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "miner" && d["state"] == "mining" && d["power_w"].is_number())
            .collect();
        !measured.is_empty()
            && measured.iter().all(|d| {
                d["efficiency_j_per_th"]
                    .as_f64()
                    .is_some_and(|e| (5.0..60.0).contains(&e))
            })
    })
    .await;
    // The table form shows it in its J/TH column, for every miner read mining with its draw.
    let table = s.pivotctl(&["devices"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("J/TH")),
        "{table}"
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|c: &Vec<&str>| c.len() == 9 && c[2] == "miner" && c[3] == "mining" && c[4] != "-")
        .collect();
    assert!(!rows.is_empty(), "{table}");
    for c in &rows {
        assert!(
            c[5].parse::<f64>().is_ok_and(|e| (5.0..60.0).contains(&e)),
            "{table}"
        );
    }
    let antminer = format!("miner/{}", miner_addr(s.miner(Dialect::Antminer)));
    s.energy(68.0);
    let issued = |s: &Site| s.device(&antminer)["intent"]["generation"].as_u64();
    s.until("the sleep intent issued", |s| issued(s).is_some())
        .await;
    let generation = issued(&s).unwrap();
    let plan = s.json(&["plan", "--json"]);
    let plan_id = plan["summary"]["plan_id"].as_str().unwrap().to_owned();
    assert_eq!(plan["summary"]["state"], "executing", "{plan}");
    s.kill_controller();
    assert!(
        !asleep(s.miner(Dialect::Antminer)),
        "killed too late to test anything"
    );

    s.start_controller();
    s.until("the miner asleep", |s| asleep(s.miner(Dialect::Antminer)))
        .await;
    s.until("the plan completed", |s| {
        let p = s.json(&["plan", "--json"]);
        p["summary"]["plan_id"] == plan_id.as_str() && p["summary"]["state"] == "completed"
            || p["summary"]["plan_id"] != plan_id.as_str()
    })
    .await;
    // The restarted controller resumed the same intent: same generation, never re-issued.
    assert_eq!(issued(&s), Some(generation));
    let issues = s
        .audit()
        .iter()
        .filter(|r| r["kind"] == "status" && r["subject"] == antminer.as_str())
        .filter(|r| r["detail"]["phase"] == "pending")
        .map(|r| r["detail"]["generation"].as_u64().unwrap())
        .collect::<Vec<_>>();
    assert!(
        issues.iter().all(|g| *g == generation),
        "a generation other than {generation} was sent: {issues:?}"
    );
}

/// A wake the firmware refuses for good does not strand the miner: a stock Antminer put to sleep
/// outside pivot cannot be woken by an agent that does not know its work mode from before (the
/// agent fails that generation for good, naming the miner). The controller holds the miner for
/// the failure memory, then issues a new wake, and holds it twice as long after the second
/// refusal — a new generation each time, never a retry of the same one, and never every round.
/// `pivotctl status` names it held and why; once the operator gives the agent the mode to wake
/// into, the next wake after the hold succeeds and the hold is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_refused_for_good_is_tried_again_after_a_hold_that_doubles_until_fixed() {
    let antminer = MinerSpec::new(Dialect::Antminer)
        .timing(Timing::fast())
        .sleeping();
    let s = site_with(
        100_000.0,
        30.0,
        0.5,
        antminer,
        "failure_memory_s = 3\nfailure_memory_max_s = 12\n",
    )
    .await;
    let port = format!(":{}", s.miner(Dialect::Antminer).api_addr().port());
    // The Antminer's statuses that failed for good: (generation, at, detail).
    let refusals = |s: &Site| -> Vec<(u64, chrono::DateTime<chrono::Utc>, String)> {
        s.audit()
            .into_iter()
            .filter(|r| {
                r["kind"] == "status"
                    && r["subject"].as_str().unwrap_or("").contains(&port)
                    && r["detail"]["phase"] == "failed"
                    && r["detail"]["retrying"] == false
            })
            .map(|r| {
                (
                    r["detail"]["generation"].as_u64().unwrap(),
                    r["at"].as_str().unwrap().parse().unwrap(),
                    r["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    s.until("three wakes of the Antminer refused for good", |s| {
        refusals(s).len() >= 3
    })
    .await;
    let r = refusals(&s);
    assert!(
        r[0].2
            .contains("work mode it had before sleeping is not known"),
        "{r:?}"
    );
    // A new generation each time.
    assert!(r[0].0 < r[1].0 && r[1].0 < r[2].0, "{r:?}");
    // Held 3 s after the first refusal, 6 s after the second.
    let gap = |a: usize, b: usize| (r[b].1 - r[a].1).num_milliseconds();
    assert!(
        gap(0, 1) >= 3_000,
        "retried {} ms after the first: {r:?}",
        gap(0, 1)
    );
    assert!(
        gap(1, 2) >= 6_000,
        "retried {} ms after the second: {r:?}",
        gap(1, 2)
    );
    // Still asleep (nothing else woke it), and the operator sees why on the device.
    assert!(asleep(s.miner(Dialect::Antminer)));
    let devices = s.json(&["devices", "--json"]);
    let am = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"].as_str().unwrap_or("").contains(&port))
        .unwrap();
    assert_eq!(
        am["intent_status"]["phase"], "INTENT_PHASE_FAILED",
        "{am:#}"
    );
    assert_eq!(am["intent_status"]["retrying"], false, "{am:#}");
    // The site status names it held, why and until when (12 s after the third refusal and any
    // later one: the ceiling).
    s.until("the status names the Antminer held", |s| {
        let st = s.json(&["status", "--json"]);
        st["held_total"] == 1
            && st["held"][0]["device_id"]
                .as_str()
                .is_some_and(|d| d.contains(&port))
            && st["held"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("failed: ") && r.contains("work mode"))
            && st["held"][0]["until"].is_string()
    })
    .await;
    let text = s.pivotctl(&["status"]);
    assert!(
        text.contains("held        1 device after a failed move"),
        "{text}"
    );

    // The operator gives the mode to wake into, as the error says, and restarts the agent: the
    // next wake, once the hold ends, wakes it; the confirmed move ends the hold.
    let mut s = s;
    let config = s.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "dialect = \"antminer\"\n",
        "dialect = \"antminer\"\nantminer_wake_mode = 0\n",
        1,
    );
    assert!(text.contains("antminer_wake_mode = 0"), "{text}");
    std::fs::write(&config, text).unwrap();
    s.start_agent();
    s.until("the Antminer mining after the hold", |s| {
        mining(s.miner(Dialect::Antminer))
    })
    .await;
    assert_eq!(s.miner(Dialect::Antminer).handle().snapshot().work_mode, 0);
    s.until("nothing held once the wake is confirmed", |s| {
        s.json(&["status", "--json"])["held_total"] == 0
    })
    .await;
}

/// After `pivotctl resume` the miners that slept minutes ago stay asleep until the policy's dwell
/// has passed, and the status says so in words (which model, how many, until when) instead of
/// leaving the operator to guess; then they wake by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resume_the_status_says_what_the_dwell_holds_back_until_when() {
    let s = site(100_000.0, 30.0, 0.5, Timing::fast()).await;
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;
    let policy = s.dir.path().join("dwell.toml");
    std::fs::write(
        &policy,
        POLICY.replace("min_dwell_s = 0", "min_dwell_s = 30"),
    )
    .unwrap();
    s.pivotctl(&["policy", "set", policy.to_str().unwrap()]);
    s.pivotctl(&["curtail"]);
    s.until("every miner asleep", |s| s.miners.iter().all(asleep))
        .await;
    s.pivotctl(&["resume"]);
    let mut waiting = Vec::new();
    s.until("the status saying the dwell holds the wakes back", |s| {
        let st = s.json(&["status", "--json"]);
        waiting = st["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect();
        waiting.iter().any(|w| w.contains("would wake"))
    })
    .await;
    // One line per model, each saying the dwell and when the first may move.
    assert!(
        waiting
            .iter()
            .all(|w| w.contains("within the 30 s dwell; the first may move at ")),
        "{waiting:?}"
    );
    let woken: u32 = waiting
        .iter()
        .filter_map(|w| w.split(": ").nth(1)?.split(' ').next()?.parse::<u32>().ok())
        .sum();
    assert_eq!(woken, 4, "{waiting:?}");
    assert!(s.miners.iter().all(asleep), "woken inside the dwell");
    let text = s.pivotctl(&["status"]);
    assert!(text.contains("waiting     "), "{text}");
    // The dwell passes: they wake, and nothing waits.
    s.until("every miner mining after the dwell", |s| {
        s.miners.iter().all(mining)
    })
    .await;
    s.until("nothing waiting", |s| {
        s.json(&["status", "--json"])["waiting"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
}

/// The LuxOS miner's owner runs it at a profile below stock (450 MHz). Pinned to 2,000 W, Pivot
/// trims it; the controller is killed and restarted while the trim stands; the pin cleared, the
/// restore sends the owner's profile back — not the stock one, not the top of the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_miner_comes_back_to_its_owners_setting_across_a_controller_restart() {
    let mut s = site(100_000.0, 40.0, 2.0, Timing::fast()).await;
    let lux = s.miner(Dialect::Luxos);
    assert!(lux.handle().set_profile("450MHz"));
    let id = format!("miner/{}", miner_addr(lux));
    let profile = |s: &Site| s.miner(Dialect::Luxos).handle().profile();
    s.until("every miner mining", |s| s.miners.iter().all(mining))
        .await;
    s.until("the owner's setting read", |s| {
        s.device(&id)["power_w"]
            .as_f64()
            .is_some_and(|w| w > 2500.0 && w < 3200.0)
    })
    .await;
    s.pivotctl(&[
        "override",
        "set",
        &id,
        "--power-target-w",
        "2000",
        "--reason",
        "e2e",
    ]);
    s.until("trimmed to 2,000 W", |s| {
        let p = profile(s);
        p != "450MHz" && p != "default"
    })
    .await;
    let trimmed = profile(&s);
    // What a restore will send is on show while the trim stands.
    assert_eq!(
        s.device(&id)["setting_before_trim_w"],
        serde_json::json!(2954.0)
    );
    let table = s.pivotctl(&["devices"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&id))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("RESTORE W")),
        "{table}"
    );
    assert_eq!(row.get(7), Some(&"2954"), "{table}");
    s.kill_controller();
    s.start_controller();
    s.pivotctl(&["override", "clear", &id]);
    s.until("back at the owner's profile", |s| profile(s) != trimmed)
        .await;
    assert_eq!(profile(&s), "450MHz");
    // And it stays there: nothing later takes it to stock.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(profile(&s), "450MHz");
    assert!(s.miners.iter().all(mining));
}
