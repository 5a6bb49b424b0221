//! The hand-off, whole: a real `pivot-controller serve` reads AI demand from a real Slurm (one
//! node, eight fake GPUs) and an AI value from a feed file the test rewrites; a real `pivot-agent`
//! drives two emulated Antminers (pivot-sim), eight fake-NVML GPUs and the same Slurm node
//! (`[workload] manager = "slurm"`). The test moves the market and checks, in the controller's
//! audit log, that every step happens in the safe order; it prints each step's time
//! (docs/BENCHMARKS.md):
//!
//! `cargo test -p pivot-e2e --test e2e handoff::slurm -- --nocapture` (root, Slurm installed).
//!
//! A second test makes the curtailment fail (an Antminer that says yes and keeps mining) and
//! checks the move stops before any power is granted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pivot_e2e::exec_hook::ExecHook;
use pivot_e2e::slurm::{NODE, PARTITION, SlurmCluster};
use pivot_e2e::{Running, bin, free_port, start_and_wait, write_whole};
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use pivot_sim::miner::{Bind, Dialect, Fault, MinerSpec, RunState, SimMiner, Timing, spawn};
use serde_json::Value;
use tonic::transport::Channel;

const HOST: &str = "gpu-host-1";
const HOST_DEVICE: &str = "host/gpu-host-1";
const GRACE_S: f64 = 3.0;
const GPU_MIN_W: f64 = 200.0;
const GPU_MAX_W: f64 = 700.0;
/// AI value that loses to mining and one that wins. The planner values a host on the power it
/// adds when serving (its GPUs from 200 to 700 W: 4 kW; drained, it still draws its base and
/// minimum caps): at 0.01 USD/GPU-hour even all 8 GPUs earn 20 USD/MWh, below the energy price
/// (40) and the Antminers' ~64; at 3 USD/GPU-hour 4 GPUs earn 3,000 USD/MWh.
const AI_LOW: f64 = 0.01;
const AI_HIGH: f64 = 3.0;

/// The site's cap: the two miners and a drained GPU host fit (9.7 kW), a serving host and
/// one miner do not (10.6 kW), so AI power comes from curtailing both miners.
const CAP_W: u32 = 10_000;

const POLICY: &str = r#"name = "handoff-test"
[economic]
enabled = true
min_margin_usd_per_mwh = 0.0
hysteresis_usd_per_mwh = 4.0
# Every move at once (the test moves the market back and forth within minutes).
min_dwell_s = 0
ramp_limit_w_per_min = 0.0
ai_spot_price_usd_per_gpu_hour = 2.0
# No buffer host and no drain delay: an empty queue drains the node at once.
ai_buffer_hosts = 0
ai_drain_delay_s = 0
unknown_miner_j_per_th = 38.0
shed_lead_s = 600
[market_failure]
action = "hold"
"#;

fn set_ai_value(feed: &Path, usd_per_gpu_hour: f64) {
    write_whole(
        feed,
        &serde_json::json!({ "usd_per_gpu_hour": usd_per_gpu_hour }).to_string(),
    );
}

/// Eight fake H100s for the agent (its own copy of the library and state file).
fn fake_gpus(dir: &Path) -> (PathBuf, PathBuf) {
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::copy(bin("libpivot_fake_nvml.so"), &lib).unwrap();
    let state = dir.join("fake-nvml.json");
    std::fs::write(
        &state,
        serde_json::json!({
            "count": 8,
            "power_demand_w": 650.0,
            "power_limit_min_w": GPU_MIN_W,
            "power_limit_max_w": GPU_MAX_W,
            "power_limit_default_w": GPU_MAX_W,
        })
        .to_string(),
    )
    .unwrap();
    (lib, state)
}

/// Every fake GPU's power limit, W (the default where none was set).
fn gpu_limits(state: &Path) -> Vec<f64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    (0..8)
        .map(|i| {
            v["gpus"][i.to_string()]["power_limit_w"]
                .as_f64()
                .unwrap_or(GPU_MAX_W)
        })
        .collect()
}

async fn antminer() -> SimMiner {
    spawn(
        MinerSpec::new(Dialect::Antminer).timing(Timing::fast()),
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

fn ts(t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.unwrap();
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap()).unwrap()
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

/// The audit log of `kind`, oldest first.
async fn audit(fleet: &mut FleetServiceClient<Channel>, kind: &str) -> Vec<v1::AuditRecord> {
    let mut out = Vec::new();
    let mut before_id = 0;
    loop {
        let page = fleet
            .list_audit(v1::ListAuditRequest {
                limit: 1000,
                before_id,
                subject: String::new(),
                kind: kind.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let Some(last) = page.last() else { break };
        before_id = last.id;
        let full = page.len() == 1000;
        out.extend(page);
        if !full {
            break;
        }
    }
    out.reverse();
    out
}

fn detail(r: &v1::AuditRecord) -> Value {
    serde_json::from_str(&r.detail_json).unwrap_or(Value::Null)
}

/// One device's move in a plan, as the audit log tells it.
#[derive(Debug, Clone)]
struct MoveSeen {
    device: String,
    plan_phase: u64,
    /// When the controller heard the agent had taken it (PENDING) and that it was done.
    pending: DateTime<Utc>,
    confirmed: DateTime<Utc>,
}

/// One phase of a plan, from the executor's timing record.
#[derive(Debug, Clone)]
struct PhaseSeen {
    label: String,
    issued: DateTime<Utc>,
    settled: DateTime<Utc>,
}

/// A plan that ran to completion, read back from the audit log.
#[derive(Debug)]
struct MoveRecord {
    plan_id: String,
    decided: DateTime<Utc>,
    phases: Vec<PhaseSeen>,
    moves: Vec<MoveSeen>,
}

impl MoveRecord {
    /// The moves of devices whose id starts with `prefix`.
    fn of(&self, prefix: &str) -> Vec<&MoveSeen> {
        self.moves
            .iter()
            .filter(|m| m.device.starts_with(prefix))
            .collect()
    }

    fn phase_of(&self, prefix: &str) -> &PhaseSeen {
        let m = self.of(prefix);
        let n = usize::try_from(m[0].plan_phase).unwrap();
        assert!(
            m.iter().all(|x| x.plan_phase == m[0].plan_phase),
            "{prefix} moved in more than one phase: {m:?}"
        );
        &self.phases[n]
    }

    fn last_confirmed(&self, prefix: &str) -> DateTime<Utc> {
        self.of(prefix).iter().map(|m| m.confirmed).max().unwrap()
    }

    fn first_pending(&self, prefix: &str) -> DateTime<Utc> {
        self.of(prefix).iter().map(|m| m.pending).min().unwrap()
    }

    /// The longest any one device of `prefix` took between taking its intent and confirming it.
    fn device_time_ms(&self, prefix: &str) -> f64 {
        self.of(prefix)
            .iter()
            .map(|m| ms(m.pending, m.confirmed))
            .fold(0.0, f64::max)
    }
}

/// Reads plan `plan_id` back from the audit log: its decisions, each phase's timing, and each
/// device's PENDING and CONFIRMED statuses.
async fn read_move(fleet: &mut FleetServiceClient<Channel>, plan_id: &str) -> MoveRecord {
    let subject = format!("plan/{plan_id}");
    let decided = audit(fleet, "decision")
        .await
        .iter()
        .filter(|r| r.subject == subject)
        .map(|r| ts(r.at.as_ref()))
        .min()
        .unwrap_or_else(|| panic!("no decision recorded for {subject}"));
    let mut phases = BTreeMap::new();
    for r in audit(fleet, "plan").await {
        let d = detail(&r);
        if r.subject != subject || d["phase_outcome"] != "confirmed" {
            continue;
        }
        let t = &d["timing"];
        let at = |k: &str| {
            DateTime::parse_from_rfc3339(t[k].as_str().unwrap_or_else(|| panic!("{k} in {t}")))
                .unwrap()
                .with_timezone(&Utc)
        };
        phases.insert(
            t["phase"].as_u64().unwrap(),
            PhaseSeen {
                label: t["label"].as_str().unwrap().to_owned(),
                issued: at("issued_at"),
                settled: at("settled_at"),
            },
        );
    }
    let phases: Vec<PhaseSeen> = phases.into_values().collect();
    let mut pending: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut moves = Vec::new();
    for r in audit(fleet, "status").await {
        let d = detail(&r);
        if d["plan_id"] != plan_id {
            continue;
        }
        let at = ts(r.at.as_ref());
        match d["phase"].as_str() {
            Some("pending") => {
                pending.entry(r.subject.clone()).or_insert(at);
            }
            Some("confirmed") => moves.push(MoveSeen {
                device: r.subject.clone(),
                plan_phase: d["plan_phase"].as_u64().unwrap(),
                pending: pending.get(&r.subject).copied().unwrap_or(at),
                confirmed: at,
            }),
            Some("failed") if d["retrying"] == true => {}
            Some("failed" | "rejected") => {
                panic!("plan {plan_id}: {} {d}: {}", r.subject, r.reason)
            }
            _ => {}
        }
    }
    MoveRecord {
        plan_id: plan_id.to_owned(),
        decided,
        phases,
        moves,
    }
}

/// Waits until the controller's plan is one made after `after` that completed; returns its id.
async fn completed_plan_after(
    fleet: &mut FleetServiceClient<Channel>,
    after: DateTime<Utc>,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let p = fleet
            .get_plan(v1::GetPlanRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(s) = p.summary.as_ref()
            && ts(s.created_at.as_ref()) > after
        {
            assert!(
                s.state != "stopped" && s.state != "superseded",
                "plan {} {}: {:#?}",
                s.plan_id,
                s.state,
                p.phases
            );
            if s.state == "completed" {
                return s.plan_id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no plan made after {after} completed within {within:?}; the plan now: {p:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until(what: &str, within: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pivotctl(url: &str, args: &[&str]) -> String {
    let out = Command::new(bin("pivotctl"))
        .arg("--controller")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pivotctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Site {
    dir: tempfile::TempDir,
    feed: PathBuf,
    nvml_state: PathBuf,
    miners: Vec<SimMiner>,
    _controller: Running,
    agent: Running,
    url: String,
    fleet: FleetServiceClient<Channel>,
}

/// What differs between the sites of these tests.
struct SiteSpec {
    /// `[market.ai_demand]` and its tables.
    demand: String,
    /// The agent's `[workload]` tables.
    workload: String,
    /// Extra `[engine]` keys.
    engine: String,
}

impl SiteSpec {
    fn slurm(slurm: &SlurmCluster) -> Self {
        let conf = slurm.conf().display().to_string();
        Self {
            demand: format!(
                "[market.ai_demand]\nsource = \"slurm\"\npartitions = [\"{PARTITION}\"]\nrefresh_s = 1\nmax_age_s = 30\n\
                 [market.ai_demand.slurm]\nslurm_conf = \"{conf}\"\n"
            ),
            workload: format!(
                "[workload]\nmanager = \"slurm\"\nnode_name = \"{NODE}\"\ngrace_s = {GRACE_S}\nconfirm_s = 30\npoll_s = 0.1\n\
                 [workload.slurm]\nslurm_conf = \"{conf}\"\n"
            ),
            engine: String::new(),
        }
    }
}

async fn start_site(spec: &SiteSpec, dir: tempfile::TempDir) -> Site {
    let root = dir.path();
    let feed = root.join("ai-value.json");
    set_ai_value(&feed, AI_LOW);
    let port = free_port();
    let controller_toml = root.join("controller.toml");
    std::fs::write(
        &controller_toml,
        format!(
            "[site]\nid = \"handoff\"\ncap_w = {CAP_W}\n[listen]\ngrpc = \"127.0.0.1:{port}\"\n\
             [store]\npath = \"{db}\"\n[auth]\nmode = \"open\"\n\
             [agents]\ntelemetry_interval_s = 1\nmax_host_power_w = 50000\n\
             [engine]\nreplan_s = 5\n{engine}\
             [market.hashprice]\nsource = \"fixed\"\nusd_per_ph_day = 45\n\
             [market.energy]\nsource = \"fixed\"\nusd_per_mwh = 40\n\
             [market.ai_value]\nsource = \"feed\"\nfile = \"{feed}\"\nfield = \"usd_per_gpu_hour\"\nrefresh_s = 1\nmax_age_s = 60\n\
             {demand}",
            db = root.join("pivot.db").display(),
            feed = feed.display(),
            engine = spec.engine,
            demand = spec.demand,
        ),
    )
    .unwrap();
    let out = Command::new(bin("pivot-controller"))
        .arg("check-config")
        .arg(&controller_toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let controller = start_and_wait(
        "pivot-controller",
        &["serve", "--config", controller_toml.to_str().unwrap()],
        "pivot-controller listening on ",
        Duration::from_secs(30),
    );
    let url = format!("http://127.0.0.1:{port}");
    let fleet = FleetServiceClient::connect(url.clone()).await.unwrap();
    // The policy first: the agent's first plan must already run under it.
    let policy = root.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    pivotctl(&url, &["policy", "set", policy.to_str().unwrap()]);

    let miners = vec![antminer().await, antminer().await];
    let (lib, nvml_state) = fake_gpus(root);
    let agent_toml = root.join("agent.toml");
    let mut text = format!(
        "host_id = \"{HOST}\"\nstate_dir = \"{state}\"\n\
         [controller]\nurl = \"{url}\"\nreconnect_max_s = 1\n\
         [poll]\nminer_interval_s = 0.5\ngpu_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 30\nrediscover_s = 1\n\
         [host]\nbase_power_w = 2000\nmax_power_w = 8000\n\
         [gpus]\nenabled = true\nnvml_lib = \"{lib}\"\nconfirm_s = 1\n\
         {workload}\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        state = root.join("agent-state").display(),
        lib = lib.display(),
        workload = spec.workload,
    );
    for m in &miners {
        text.push_str(&format!(
            "[[miners]]\naddr = \"{}\"\ndialect = \"antminer\"\nnameplate_power_w = 3068\nnameplate_hashrate_ths = 104.0\n",
            miner_addr(m)
        ));
    }
    std::fs::write(&agent_toml, text).unwrap();
    let agent = start_and_wait(
        "pivot-agent",
        &["run", "--config", agent_toml.to_str().unwrap()],
        "pivot-agent metrics on ",
        Duration::from_secs(30),
    );
    Site {
        dir,
        feed,
        nvml_state,
        miners,
        _controller: controller,
        agent,
        url,
        fleet,
    }
}

fn miners_in(site: &Site, want: RunState) -> bool {
    site.miners
        .iter()
        .all(|m| m.handle().snapshot().state == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_power_moves_from_mining_to_an_ai_job_and_back_in_safe_order() {
    let slurm = SlurmCluster::start().await;
    let mut site = start_site(&SiteSpec::slurm(&slurm), tempfile::tempdir().unwrap()).await;
    let wait = Duration::from_secs(90);

    // 1. With AI worth less than mining and no job queued, the first plan drains the idle node
    //    and caps the GPUs low; the miners keep mining.
    until(
        "the node drained and the GPUs capped low",
        wait,
        async || {
            slurm.node_state() == "drained"
                && gpu_limits(&site.nvml_state).iter().all(|w| *w == GPU_MIN_W)
        },
    )
    .await;
    // The miners mine (one still coming up from the emulator's start counts). Both were seen
    // asleep at this point once ([Sleeping, Sleeping], in a full-suite run): most likely a plan
    // made before the agent's first GPU readings, which counts the host at its max_power_w
    // (8 kW) and must sleep both miners to keep the 10 kW cap — the safe choice; the next plan,
    // with the host seen, wakes them (no dwell in this policy).
    until("both miners mining", wait, async || {
        site.miners.iter().all(|m| {
            matches!(
                m.handle().snapshot().state,
                RunState::Mining | RunState::RampingUp
            )
        })
    })
    .await;
    assert!(
        slurm.node_reason().starts_with("pivot: plan "),
        "{}",
        slurm.node_reason()
    );

    // 2. A GPU job submitted to the drained node stays pending, and the controller sees it.
    let job = slurm.submit(&["--gres=gpu:4"]);
    let fleet = &mut site.fleet;
    until("the controller to see 4 GPUs of demand", wait, async || {
        let e = fleet
            .get_economics(v1::GetEconomicsRequest {})
            .await
            .map(tonic::Response::into_inner);
        e.is_ok_and(|e| e.ai_gpu_demand == Some(4))
    })
    .await;
    let (state, reason) = slurm.job(job);
    assert_eq!(state, "PENDING", "{reason}");
    assert!(
        reason.contains("ReqNodeNotAvail") || reason.contains("DRAINED"),
        "{reason}"
    );
    // Demand alone moves nothing while AI is worth less than mining.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(slurm.job(job).0, "PENDING");
    assert!(miners_in(&site, RunState::Mining));

    // 3. AI value beats hashprice: the miners sleep (confirmed), the GPU caps rise, the node is
    //    released, and the job runs, in that order.
    let to_ai_at = Utc::now();
    set_ai_value(&site.feed, AI_HIGH);
    let mut job_running = None;
    until("the job to run", wait, async || {
        if slurm.job(job).0 == "RUNNING" {
            job_running = Some(Utc::now());
        }
        job_running.is_some()
    })
    .await;
    let job_running = job_running.unwrap();
    let plan = completed_plan_after(&mut site.fleet, to_ai_at, wait).await;
    let to_ai = read_move(&mut site.fleet, &plan).await;
    assert!(miners_in(&site, RunState::Sleeping));
    assert!(gpu_limits(&site.nvml_state).iter().all(|w| *w == GPU_MAX_W));
    assert_eq!(to_ai.of("miner/").len(), 2, "{to_ai:#?}");
    assert_eq!(to_ai.of("gpu/").len(), 8, "{to_ai:#?}");
    assert_eq!(to_ai.of(HOST_DEVICE).len(), 1, "{to_ai:#?}");
    let (curtail, caps, release) = (
        to_ai.phase_of("miner/"),
        to_ai.phase_of("gpu/"),
        to_ai.phase_of(HOST_DEVICE),
    );
    // Release before grant: every miner confirmed asleep before any cap was raised, every cap
    // confirmed before the node was opened, and the job ran only once the node was opened. (Not
    // "after the agent confirmed the node": slurmctld may start the job on the resumed node
    // before the agent's read-back sees it, which then reads MIXED and confirms.)
    assert!(to_ai.last_confirmed("miner/") <= caps.issued, "{to_ai:#?}");
    assert!(to_ai.last_confirmed("gpu/") <= release.issued, "{to_ai:#?}");
    assert!(release.issued <= job_running, "{to_ai:#?}");
    assert!(
        to_ai.last_confirmed(HOST_DEVICE) >= release.issued,
        "{to_ai:#?}"
    );
    assert!(curtail.issued < caps.issued && caps.issued < release.issued);

    // The stagger: a grant waits a minute after the last (the planner's ramp clock); let it
    // pass so the way back measures pivot, not the policy.
    let ramp_over = to_ai.decided + chrono::Duration::seconds(61);
    while Utc::now() < ramp_over {
        assert_eq!(slurm.job(job).0, "RUNNING");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 4. Hashprice is back above AI value: the node drains, the running job is requeued after
    //    its grace, the GPUs are capped low, and the miners wake, in that order.
    let to_mining_at = Utc::now();
    set_ai_value(&site.feed, AI_LOW);
    // The job left between the last time the test saw it running and the first time it did not.
    let mut last_running = to_mining_at;
    let mut requeued = None;
    until("the job to leave the node", wait, async || {
        let seen_at = Utc::now();
        if slurm.job(job).0 == "RUNNING" {
            last_running = seen_at;
        } else {
            requeued = Some(Utc::now());
        }
        requeued.is_some()
    })
    .await;
    let requeued = requeued.unwrap();
    let plan = completed_plan_after(&mut site.fleet, to_mining_at, wait).await;
    let to_mining = read_move(&mut site.fleet, &plan).await;
    let (state, reason) = slurm.job(job);
    assert_eq!(state, "PENDING", "requeued, not ended: {reason}");
    assert_eq!(slurm.node_state(), "drained");
    assert!(gpu_limits(&site.nvml_state).iter().all(|w| *w == GPU_MIN_W));
    until("the miners to mine", wait, async || {
        miners_in(&site, RunState::Mining)
    })
    .await;
    let (drain, caps_low, wake) = (
        to_mining.phase_of(HOST_DEVICE),
        to_mining.phase_of("gpu/"),
        to_mining.phase_of("miner/"),
    );
    // The job kept running through the grace (seen running until its last poll interval), left
    // after it, and only then was the node confirmed drained.
    assert!(
        (requeued - drain.issued).as_seconds_f64() >= GRACE_S
            && (last_running - drain.issued).as_seconds_f64() >= GRACE_S - 0.5,
        "job seen running until {last_running}, gone at {requeued}; drain issued {}",
        drain.issued
    );
    assert!(last_running < to_mining.last_confirmed(HOST_DEVICE));
    assert!(to_mining.last_confirmed(HOST_DEVICE) <= caps_low.issued);
    assert!(to_mining.last_confirmed("gpu/") <= wake.issued);
    assert!(drain.issued < caps_low.issued && caps_low.issued < wake.issued);

    // 5. The whole move is visible: `pivotctl plan` shows the last one phase by phase, and
    //    `pivotctl history` each phase with its time.
    let plan_json: Value = serde_json::from_str(&pivotctl(&site.url, &["plan", "--json"])).unwrap();
    assert_eq!(plan_json["summary"]["plan_id"], to_mining.plan_id);
    let states: Vec<&str> = plan_json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert!(states.iter().all(|s| *s == "done"), "{plan_json:#}");
    let history = pivotctl(&site.url, &["history", "--limit", "200"]);
    for p in to_ai.phases.iter().chain(&to_mining.phases) {
        assert!(
            history.contains(&format!("({}) confirmed", p.label)),
            "{history}"
        );
    }

    // 6. The anchor: one `scontrol requeue` on this machine, with the agent stopped (it would
    //    drain the node again: it holds DRAINED).
    //    A requeued job waits out Slurm's begin-time delay: a fresh one is timed.
    let _ = site.agent.child.kill();
    let _ = site.agent.child.wait();
    slurm.cancel_all();
    assert!(
        slurm
            .command("scontrol")
            .args(["update", &format!("NodeName={NODE}"), "State=RESUME"])
            .status()
            .unwrap()
            .success()
    );
    let job = slurm.submit(&["--gres=gpu:4"]);
    slurm
        .wait_until("a fresh job to run", Duration::from_secs(30), || {
            slurm.job(job).0 == "RUNNING"
        })
        .await;
    let t = Instant::now();
    assert!(
        slurm
            .command("scontrol")
            .args(["requeue", &job.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let requeue_anchor_ms = t.elapsed().as_secs_f64() * 1000.0;
    slurm.cancel_all();

    report(
        &to_ai,
        &to_mining,
        to_ai_at,
        to_mining_at,
        job_running,
        requeued,
        requeue_anchor_ms,
    );
}

/// One row of the step table: the step's wall time, the part spent inside the device call
/// (from the agent taking its intent to its confirmation) and the rest, pivot's own.
fn row(step: &str, from: DateTime<Utc>, to: DateTime<Utc>, device_ms: f64, note: &str) {
    let wall = ms(from, to);
    println!(
        "handoff | {step:<34} | {wall:>8.0} | {device_ms:>8.0} | {:>8.0} | {note}",
        wall - device_ms
    );
}

fn report(
    to_ai: &MoveRecord,
    back: &MoveRecord,
    to_ai_at: DateTime<Utc>,
    to_mining_at: DateTime<Utc>,
    job_running: DateTime<Utc>,
    requeued: DateTime<Utc>,
    requeue_anchor_ms: f64,
) {
    println!(
        "handoff | step                               |  wall ms | device ms|  pivot ms | what the device time is"
    );
    row(
        "feed changed -> plan decided",
        to_ai_at,
        to_ai.decided,
        0.0,
        "market refresh (refresh_s = 1) and the engine's round",
    );
    row(
        "decided -> miners confirmed asleep",
        to_ai.decided,
        to_ai.last_confirmed("miner/"),
        to_ai.device_time_ms("miner/"),
        "Antminer CGI sleep + read-back (pivot-sim, fast timing)",
    );
    row(
        "-> GPU caps raised (confirmed)",
        to_ai.last_confirmed("miner/"),
        to_ai.last_confirmed("gpu/"),
        to_ai.device_time_ms("gpu/"),
        "NVML set + enforced limit + draw (fake NVML), 8 GPUs",
    );
    row(
        "-> node released (confirmed)",
        to_ai.last_confirmed("gpu/"),
        to_ai.last_confirmed(HOST_DEVICE),
        to_ai.device_time_ms(HOST_DEVICE),
        "scontrol update RESUME + sinfo/squeue --json read-back",
    );
    row(
        "-> job running",
        to_ai.last_confirmed(HOST_DEVICE),
        job_running,
        ms(to_ai.last_confirmed(HOST_DEVICE), job_running),
        "Slurm's scheduler pass (test polls squeue every 20 ms)",
    );
    row(
        "decided -> job running (whole move)",
        to_ai.decided,
        job_running,
        0.0,
        "",
    );
    row(
        "feed changed -> plan decided",
        to_mining_at,
        back.decided,
        0.0,
        "market refresh and the engine's round",
    );
    row(
        "decided -> job requeued",
        back.decided,
        requeued,
        ms(back.first_pending(HOST_DEVICE), requeued),
        &format!("drain, the {GRACE_S} s grace, scontrol requeue"),
    );
    row(
        "-> node drained (confirmed)",
        requeued,
        back.last_confirmed(HOST_DEVICE),
        ms(requeued, back.last_confirmed(HOST_DEVICE)),
        "job leaves; DRAINED read back",
    );
    row(
        "-> GPU caps low (confirmed)",
        back.last_confirmed(HOST_DEVICE),
        back.last_confirmed("gpu/"),
        back.device_time_ms("gpu/"),
        "NVML set + enforced limit + draw under it",
    );
    row(
        "-> miners awake (confirmed)",
        back.last_confirmed("gpu/"),
        back.last_confirmed("miner/"),
        back.device_time_ms("miner/"),
        "Antminer CGI wake + hashing read back (fast timing)",
    );
    row(
        "decided -> miners awake (whole move)",
        back.decided,
        back.last_confirmed("miner/"),
        0.0,
        "",
    );
    println!("handoff | anchor: scontrol requeue here: {requeue_anchor_ms:.0} ms");
    for (name, m) in [("to AI", to_ai), ("back", back)] {
        for (i, p) in m.phases.iter().enumerate() {
            println!(
                "handoff | {name} phase {i} ({}): issued {:+.0} ms after the decision, settled after {:.0} ms",
                p.label,
                ms(m.decided, p.issued),
                ms(p.issued, p.settled)
            );
        }
    }
}

/// The first audit record of `kind` after `after` that `pick` accepts, waited for.
async fn audited(
    fleet: &mut FleetServiceClient<Channel>,
    kind: &str,
    after: DateTime<Utc>,
    within: Duration,
    pick: impl Fn(&v1::AuditRecord) -> bool,
) -> v1::AuditRecord {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = audit(fleet, kind)
            .await
            .into_iter()
            .find(|r| ts(r.at.as_ref()) > after && pick(r))
        {
            return r;
        }
        if Instant::now() >= deadline {
            let all: Vec<String> = audit(fleet, "")
                .await
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r.at.as_ref().map_or(0, |t| t.seconds),
                        r.kind,
                        r.subject,
                        r.reason
                    )
                })
                .collect();
            panic!(
                "no such `{kind}` record within {within:?}; audit:\n{}",
                all.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A step that fails stops the move where no power has been granted: one Antminer answers its
/// sleep with success and keeps mining (`M000`), so the curtail phase is never confirmed. The
/// plan stops there (no GPU cap raised, the node not released), and the next plan works around
/// the failure: the miner that failed counts at its full draw, AI gets no power it has no room
/// for, and the miner that did sleep is woken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_curtailment_stops_the_move_before_any_power_is_granted() {
    let hook = ExecHook::new(true, 0);
    let spec = SiteSpec {
        demand: "[market.ai_demand]\nsource = \"fixed\"\ngpus = 8\n".into(),
        workload: format!(
            "[workload]\nmanager = \"exec\"\nnode_name = \"gpu-07\"\ngrace_s = 0.5\nconfirm_s = 5\npoll_s = 0.1\n\
             [workload.exec]\nhook = \"{}\"\ntimeout_s = 5\n",
            hook.path().display()
        ),
        engine: "curtail_timeout_s = 5\n".into(),
    };
    let mut site = start_site(&spec, tempfile::tempdir().unwrap()).await;
    let wait = Duration::from_secs(60);
    // The fault is turned on once the site has settled with both miners mining: a first plan
    // made before the agent reported its node may sleep both miners to keep the cap, and a
    // failure there would be the failure of another move than the one this test makes.
    until(
        "the node drained, the GPUs capped low and both miners mining",
        wait,
        async || {
            !hook.node_open()
                && gpu_limits(&site.nvml_state).iter().all(|w| *w == GPU_MIN_W)
                && miners_in(&site, RunState::Mining)
        },
    )
    .await;
    site.miners[0]
        .handle()
        .set_faults(vec![Fault::AntminerNoop]);
    hook.take_calls();

    let to_ai_at = Utc::now();
    set_ai_value(&site.feed, AI_HIGH);
    let stop = audited(&mut site.fleet, "plan", to_ai_at, wait, |r| {
        detail(r)["phase_outcome"] == "stopped"
    })
    .await;
    let timing = &detail(&stop)["timing"];
    let plan_id = timing["plan_id"].as_str().unwrap().to_owned();
    assert_eq!(timing["phase"], 0, "{timing}");
    assert!(
        timing["label"].as_str().unwrap().starts_with("curtail"),
        "{timing}"
    );
    // The failure names the miner, the plan and why.
    let faulty_port = format!(":{}", site.miners[0].api_addr().port());
    let failed = audited(&mut site.fleet, "plan", to_ai_at, wait, |r| {
        r.reason.starts_with("move failed")
    })
    .await;
    assert!(
        failed.subject.starts_with("miner/") && failed.subject.contains(&faulty_port),
        "{failed:?}"
    );
    assert!(
        failed.reason.contains(&plan_id) && failed.reason.contains("not confirmed within 5 s"),
        "{}",
        failed.reason
    );
    // Nothing was granted: no cap raised, the node never released.
    assert!(gpu_limits(&site.nvml_state).iter().all(|w| *w == GPU_MIN_W));
    assert!(!hook.node_open());
    assert!(
        hook.take_calls().iter().all(|c| !c.starts_with("release")),
        "the node was released"
    );
    assert_eq!(
        site.miners[0].handle().snapshot().state,
        RunState::Mining,
        "the faulty miner kept mining"
    );

    // The next plan works around it: it gives AI nothing and wakes the miner that slept.
    let next = audited(
        &mut site.fleet,
        "decision",
        ts(stop.at.as_ref()),
        wait,
        |r| r.subject != format!("plan/{plan_id}"),
    )
    .await;
    let plan: Value = serde_json::from_str(&pivotctl(&site.url, &["plan", "--json"])).unwrap();
    assert_eq!(
        format!("plan/{}", plan["summary"]["plan_id"].as_str().unwrap()),
        next.subject,
        "{plan:#}"
    );
    let moved: Vec<(&str, &str)> = plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["moves"].as_array().unwrap())
        .map(|m| (m["device_id"].as_str().unwrap(), m["to"].as_str().unwrap()))
        .collect();
    assert!(
        moved.iter().all(|(d, _)| d.starts_with("miner/")),
        "{moved:?}"
    );
    assert!(
        moved.iter().any(|(d, _)| !d.contains(&faulty_port)),
        "the miner that slept is not woken: {moved:?}"
    );
    assert!(
        moved.iter().all(|(d, _)| !d.contains(&faulty_port)),
        "the failed miner is moved again: {moved:?}"
    );
    // `pivotctl history` shows the stopped phase and the failure.
    let history = pivotctl(&site.url, &["history", "--limit", "100"]);
    assert!(
        history.contains("(curtail: 2 devices) stopped"),
        "{history}"
    );
    assert!(history.contains("move failed"), "{history}");
    drop(site.dir);
}
