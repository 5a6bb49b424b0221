//! The controller with many agent sessions (issue 9's benchmark): the real `pivot-controller
//! serve` (SQLite file, open auth, a market whose energy feed this run moves) and N fake agents
//! in this process, each a real gRPC session over a socket declaring `MINERS` miners, sending
//! telemetry at the controller's interval and answering every intent as an agent whose hardware
//! obeys at once (applied, then confirmed, then telemetry that shows it).
//!
//! Per size, in one run: the controller's CPU (utime + stime from /proc) and RSS over a quiet
//! window with every session streaming telemetry; then the energy price is raised above every
//! miner's breakeven, and the time from the plan's creation to the last agent holding its sleep
//! intent ("delivered") and to the plan completed (every move confirmed). Sizes are compared
//! with the smallest, run first in the same process.
//!
//!   cargo build --release --bin pivot-controller
//!   cargo bench -p pivot-e2e --bench sessions                 # SIZES="10 100 1000" MINERS=10
//!
//! The fake agents share the machine's cores with the controller; the bench prints the load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_e2e::{Running, free_port, start_and_wait, write_whole};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use pivot_proto::v1::controller_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const POLICY: &str = r#"name = "bench"
[economic]
min_margin_usd_per_mwh = 0.0
hysteresis_usd_per_mwh = 4.0
min_dwell_s = 0
ramp_limit_w_per_min = 0.0
ai_buffer_hosts = 0
ai_drain_delay_s = 0
shed_lead_s = 60
"#;

/// An S19j Pro: 3,068 W and 104 TH/s (29.5 J/TH), breakeven about 64 USD/MWh at 45 USD/PH/day.
const NAMEPLATE_W: u32 = 3068;
const HASHRATE_THS: f64 = 104.0;
const SLEEP_W: f64 = 20.0;
const CHEAP_USD_PER_MWH: f64 = 20.0;
const SPIKE_USD_PER_MWH: f64 = 400.0;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{name}: {s}: {e}")))
        .collect()
}

fn write_feed(path: &Path, value: f64) {
    write_whole(path, &serde_json::json!({ "value": value }).to_string());
}

/// CPU seconds (user + system) and resident/peak memory (KiB) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    (ticks / 100.0, kib("VmRSS:"), kib("VmHWM:"))
}

struct Controller {
    dir: tempfile::TempDir,
    running: Running,
    url: String,
}

fn start_controller(agents: usize, miners: usize) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    write_feed(&d.join("energy.json"), CHEAP_USD_PER_MWH);
    // Room for every miner at full power: the cap decides nothing here, the price does.
    let cap_w = (agents * miners) as f64 * f64::from(NAMEPLATE_W) * 2.0 + 1e6;
    std::fs::write(
        d.join("controller.toml"),
        format!(
            r#"[site]
id = "bench"
cap_w = {cap_w}
[listen]
grpc = "127.0.0.1:{port}"
[store]
path = "{db}"
[auth]
mode = "open"
[agents]
telemetry_interval_s = 5
lease_s = 120
max_devices_per_host = 5000
[engine]
replan_s = 30
curtail_timeout_s = 120
[market.hashprice]
source = "fixed"
usd_per_ph_day = 45.0
[market.energy]
source = "feed"
file = "{energy}"
format = "json"
field = "value"
refresh_s = 1
max_age_s = 3600
[market.ai_value]
source = "fixed"
usd_per_gpu_hour = 2.0
[market.ai_demand]
source = "fixed"
gpus = 0
"#,
            db = d.join("pivot.db").display(),
            energy = d.join("energy.json").display(),
        ),
    )
    .unwrap();
    let running = start_and_wait(
        "pivot-controller",
        &[
            "serve",
            "--config",
            d.join("controller.toml").to_str().unwrap(),
        ],
        "pivot-controller listening on ",
        Duration::from_secs(60),
    );
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(d.join("policy.toml"), POLICY).unwrap();
    let out = std::process::Command::new(pivot_e2e::bin("pivotctl"))
        .args(["--controller", &url, "policy", "set"])
        .arg(d.join("policy.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Controller { dir, running, url }
}

fn inventory(host: usize, i: usize) -> v1::MinerInventory {
    v1::MinerInventory {
        device_id: format!("miner/10.{}.{}.{i}:4028", host / 250, host % 250),
        addr: format!("10.{}.{}.{i}:4028", host / 250, host % 250),
        dialect: v1::MinerDialect::Antminer as i32,
        model: "Antminer S19j Pro".into(),
        nameplate_power_w: Some(NAMEPLATE_W),
        nameplate_hashrate_ths: Some(HASHRATE_THS),
        nameplate_source: "model-table".into(),
        capabilities: Some(v1::MinerCapabilities {
            can_sleep: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reading(id: &str, mining: bool) -> v1::MinerReading {
    v1::MinerReading {
        device_id: id.into(),
        reachable: true,
        state: if mining {
            v1::MinerState::Mining
        } else {
            v1::MinerState::Sleeping
        } as i32,
        power_w: Some(if mining {
            f64::from(NAMEPLATE_W)
        } else {
            SLEEP_W
        }),
        hashrate_ths: Some(if mining { HASHRATE_THS } else { 0.0 }),
        ..Default::default()
    }
}

fn now_proto() -> prost_types::Timestamp {
    let t = Utc::now();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// When each agent first received an intent of a plan, and how many intents in all.
#[derive(Default)]
struct Deliveries {
    first: Vec<Option<DateTime<Utc>>>,
    intents: usize,
}

/// Sessions that had to be tried again (refused or reset while opening).
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

type Session = (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::ControllerMessage>,
    Duration,
);

/// Connects, says hello and waits for the welcome.
async fn open(url: &str, host: usize, miners: usize) -> Result<Session, String> {
    let channel = Channel::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    tx.send(v1::AgentMessage {
        msg: Some(Up::Hello(v1::Hello {
            host_id: format!("rack-{host:04}"),
            agent_version: "bench".into(),
            host: Some(v1::HostInventory {
                base_power_w: Some(0),
                ..Default::default()
            }),
            miners: (0..miners).map(|i| inventory(host, i)).collect(),
            gpus: vec![],
            held_intents: vec![],
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut down = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match down.message().await.map_err(|e| e.to_string())? {
        Some(v1::ControllerMessage {
            msg: Some(Down::Welcome(w)),
        }) => {
            let interval = w.telemetry_interval.map_or(Duration::from_secs(5), |d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(5),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            });
            Ok((tx, down, interval))
        }
        other => Err(format!("expected a welcome, got {other:?}")),
    }
}

/// One fake agent: hello, telemetry at the controller's interval, intents obeyed at once.
async fn agent(url: String, host: usize, miners: usize, seen: Arc<Mutex<Deliveries>>) {
    let ids: Vec<String> = (0..miners).map(|i| inventory(host, i).device_id).collect();
    let mut mining = vec![true; miners];
    // As a real agent does: a refused or reset connection is tried again, with backoff.
    let mut attempt = 0u32;
    let (tx, mut down, interval) = loop {
        match open(&url, host, miners).await {
            Ok(session) => break session,
            Err(e) => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                attempt += 1;
                assert!(
                    attempt < 30,
                    "rack-{host:04}: no session after {attempt} tries: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
        }
    };
    let telemetry = |mining: &[bool]| v1::AgentMessage {
        msg: Some(Up::Telemetry(v1::TelemetrySnapshot {
            taken_at: Some(now_proto()),
            miners: ids
                .iter()
                .zip(mining)
                .map(|(id, m)| reading(id, *m))
                .collect(),
            gpus: vec![],
            host: None,
        })),
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(telemetry(&mining)).await.is_err() {
                    return;
                }
            }
            m = down.message() => {
                let Ok(Some(m)) = m else { return };
                let Some(Down::Intents(batch)) = m.msg else { continue };
                let at = Utc::now();
                {
                    let mut s = seen.lock().unwrap();
                    s.first[host].get_or_insert(at);
                    s.intents += batch.intents.len();
                }
                for intent in batch.intents {
                    let Some(v1::intent::Target::Miner(t)) = intent.target else { continue };
                    let Some(i) = ids.iter().position(|id| *id == intent.device_id) else { continue };
                    mining[i] = t.mode != v1::MinerMode::Sleep as i32;
                    for phase in [v1::IntentPhase::Applied, v1::IntentPhase::Confirmed] {
                        let status = v1::IntentStatus {
                            device_id: intent.device_id.clone(),
                            generation: intent.generation,
                            phase: phase as i32,
                            detail: "bench".into(),
                            observed_power_w: Some(reading(&intent.device_id, mining[i]).power_w.unwrap_or(0.0)),
                            at: Some(now_proto()),
                            plan_id: intent.plan_id.clone(),
                            plan_phase: intent.phase,
                            retrying: false,
                        };
                        if tx.send(v1::AgentMessage { msg: Some(Up::IntentStatus(status)) }).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.send(telemetry(&mining)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn plan(url: &str) -> v1::PlanView {
    let mut fleet = v1::fleet_service_client::FleetServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    fleet
        .get_plan(v1::GetPlanRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn status(url: &str) -> v1::SiteStatus {
    let mut fleet = v1::fleet_service_client::FleetServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    fleet
        .get_site_status(v1::GetSiteStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn ts(t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.unwrap();
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap()).unwrap()
}

struct Row {
    agents: usize,
    devices: usize,
    cpu_pct: f64,
    rss_mib: f64,
    hwm_mib: f64,
    delivered_ms: f64,
    completed_ms: f64,
    /// The controller's CPU from the spike to the plan seen completed (the planning, the
    /// intents, every status and its audit record; and this bench's polls of the plan).
    phase_cpu_s: f64,
}

async fn run(agents: usize, miners: usize, window: Duration) -> Row {
    let ctl = start_controller(agents, miners);
    let seen = Arc::new(Mutex::new(Deliveries {
        first: vec![None; agents],
        intents: 0,
    }));
    let mut tasks = Vec::new();
    for host in 0..agents {
        tasks.push(tokio::spawn(agent(
            ctl.url.clone(),
            host,
            miners,
            Arc::clone(&seen),
        )));
        // Hosts come up over a second or so, not in one instant.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let want = u32::try_from(agents * miners).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let s = status(&ctl.url).await;
        if s.agents_connected as usize == agents && s.miners_mining == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agents} agents: only {} connected, {} of {want} miners mining",
            s.agents_connected,
            s.miners_mining
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Quiet: every session streams telemetry, nothing to decide.
    let pid = ctl.running.child.id();
    println!("sessions: {agents} agents connected, controller pid {pid}");
    let (cpu0, _, _) = usage(pid);
    let t0 = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let (cpu1, rss, _) = usage(pid);
    let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    assert_eq!(seen.lock().unwrap().intents, 0, "intents before the spike");

    // The spike: every miner is now worth sleeping.
    let before = status(&ctl.url).await.plan.map(|p| p.plan_id);
    let (cpu_spike, _, _) = usage(pid);
    write_feed(&ctl.dir.path().join("energy.json"), SPIKE_USD_PER_MWH);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    // Waits on the plan's header in the site status; the whole plan (every move) is read once,
    // after: reading it ten times a second cost the controller more than the phase itself.
    loop {
        let p = status(&ctl.url).await.plan;
        if let Some(p) = &p
            && Some(&p.plan_id) != before.as_ref()
            && p.state == "completed"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agents} agents: the plan did not complete: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed_at = Utc::now();
    let (cpu_done, _, _) = usage(pid);
    let view = plan(&ctl.url).await;
    let summary = view.summary.unwrap();
    let created = ts(summary.created_at.as_ref());
    let s = seen.lock().unwrap();
    assert!(
        s.first.iter().all(Option::is_some),
        "an agent received nothing"
    );
    let last = s.first.iter().flatten().max().copied().unwrap();
    let moves: usize = view.phases.iter().map(|p| p.moves.len()).sum();
    assert_eq!(moves, agents * miners, "every miner sleeps");
    let (_, _, hwm) = usage(pid);
    drop(s);
    for t in tasks {
        t.abort();
    }
    Row {
        agents,
        devices: agents * miners,
        cpu_pct,
        rss_mib: rss as f64 / 1024.0,
        hwm_mib: hwm as f64 / 1024.0,
        delivered_ms: (last - created).num_microseconds().unwrap() as f64 / 1000.0,
        // Polled every 100 ms: an upper bound.
        completed_ms: (completed_at - created).num_microseconds().unwrap() as f64 / 1000.0,
        phase_cpu_s: cpu_done - cpu_spike,
    }
}

#[tokio::main]
async fn main() {
    let sizes = env_list("SIZES", "10 100 1000");
    let miners = env_list("MINERS", "10")[0];
    let window = Duration::from_secs(env_list("WINDOW_S", "20")[0] as u64);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("sessions: load average before: {}", load.trim());
    let mut rows = Vec::new();
    for n in sizes {
        let row = run(n, miners, window).await;
        println!(
            "sessions: {n} agents done (cpu {:.1} %, delivered {:.0} ms, sessions retried so far {})",
            row.cpu_pct,
            row.delivered_ms,
            RETRIES.load(std::sync::atomic::Ordering::Relaxed)
        );
        rows.push(row);
    }
    let base = &rows[0];
    println!(
        "| agents | devices | controller CPU % of a core (quiet, telemetry every 5 s) | × | RSS MiB | peak RSS MiB | plan created → every agent holds its intents, ms | × | → plan completed (all confirmed), ms | controller CPU over it, s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} |",
            r.agents,
            r.devices,
            r.cpu_pct,
            r.cpu_pct / base.cpu_pct.max(0.01),
            r.rss_mib,
            r.hwm_mib,
            r.delivered_ms,
            r.delivered_ms / base.delivered_ms.max(0.001),
            r.completed_ms,
            r.phase_cpu_s,
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("sessions: load average after: {}", load.trim());
}
