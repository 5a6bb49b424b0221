//! The site the chaos run breaks: a real `pivot-controller serve` with its SQLite file, one real
//! `pivot-agent` per host reaching it through a [`Proxy`], pivot-sim miners in this process, and a
//! market feed file the run rewrites. Processes log to files in the run's directory (read at the
//! end for panics) and are killed with SIGKILL, never asked to stop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pivot_e2e::bin;
use pivot_proto::model::{Intent, Target};
use pivot_proto::v1;
use pivot_sim::miner::{Bind, Dialect, MinerHandle, MinerSpec, SimMiner, Snapshot, Timing, spawn};

use crate::check::{HeldIntent, MinerView};
use crate::proxy::Proxy;

/// The dialects hosts' miners cycle through: sleep that persists across a reboot (LuxOS,
/// Antminer) and sleep that does not (Braiins, Whatsminer), power targets and work modes.
const DIALECTS: [Dialect; 6] = [
    Dialect::Braiins,
    Dialect::Luxos,
    Dialect::WhatsminerV2,
    Dialect::WhatsminerV3,
    Dialect::Antminer,
    Dialect::Braiins,
];

/// Two miners per host.
pub const MINERS_PER_HOST: usize = 2;

/// The site cap and reserve: about half of what the miners could draw, so the planner always
/// has to choose.
pub const CAP_W: f64 = 12_000.0;
pub const RESERVE_W: f64 = 500.0;

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` with stderr appended to `log`, and waits for the stdout line starting with
/// `ready`.
fn start(binary: &str, args: &[&str], ready: &str, log: &Path) -> Process {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(bin(binary))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = ready.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&wanted) {
                let _ = tx.send(());
            }
        }
    });
    let process = Process { child };
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "{binary} did not print `{ready}` within 60 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    process
}

/// One host: its agent (when running), the proxy it reaches the controller through, its miners.
#[derive(Debug)]
pub struct Host {
    pub id: String,
    pub state_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pub proxy: Proxy,
    agent: Option<Process>,
    /// Device id (as the agent names it) and the emulated miner.
    pub miners: Vec<(String, SimMiner)>,
}

#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    pub port: u16,
    controller: Option<Process>,
    pub hosts: Vec<Host>,
}

/// What the sampler needs of the world, without the processes: cheap to clone into a task.
#[derive(Debug, Clone)]
pub struct Watch {
    pub db: PathBuf,
    /// Per host: its state directory and its miners (device id, handle).
    pub hosts: Vec<(PathBuf, Vec<(String, MinerHandle)>)>,
}

const POLICY: &str = r#"name = "chaos"
[economic]
min_margin_usd_per_mwh = 0.0
hysteresis_usd_per_mwh = 4.0
min_dwell_s = 0
ramp_limit_w_per_min = 0.0
ai_buffer_hosts = 0
ai_drain_delay_s = 0
shed_lead_s = 60
"#;

impl World {
    /// Starts the controller, `hosts` agents (fallback `curtail` on odd hosts, `hold` on even
    /// ones) each with two sleeping miners, and sets the policy.
    pub async fn start(hosts: usize) -> World {
        // PIVOT_CHAOS_KEEP=1 leaves the run's directory (logs, store, agents' state) behind.
        let dir = tempfile::Builder::new()
            .prefix("pivot-chaos-")
            .disable_cleanup(std::env::var_os("PIVOT_CHAOS_KEEP").is_some())
            .tempdir()
            .unwrap();
        eprintln!("chaos: run directory {}", dir.path().display());
        let port = pivot_e2e::free_port();
        let mut world = World {
            dir,
            port,
            controller: None,
            hosts: Vec::new(),
        };
        let d = world.dir.path().to_owned();
        std::fs::write(
            d.join("controller.toml"),
            format!(
                r#"[site]
id = "chaos"
cap_w = {CAP_W}
reserve_w = {RESERVE_W}
[listen]
grpc = "127.0.0.1:{port}"
[store]
path = "{db}"
[auth]
mode = "open"
[agents]
telemetry_interval_s = 1
lease_s = 8
[engine]
replan_s = 2
sample_s = 1
curtail_timeout_s = 10
grant_timeout_s = 10
[market.hashprice]
source = "fixed"
usd_per_ph_day = 45.0
[market.energy]
source = "feed"
file = "{energy}"
format = "json"
field = "value"
refresh_s = 1
max_age_s = 86400
"#,
                db = d.join("pivot.db").display(),
                energy = d.join("energy.json").display(),
            ),
        )
        .unwrap();
        world.energy(40.0);
        world.start_controller();
        std::fs::write(world.path("policy.toml"), POLICY).unwrap();
        let out = Command::new(bin("pivotctl"))
            .args(["--controller", &format!("http://127.0.0.1:{port}")])
            .args(["policy", "set", &world.path("policy.toml")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for h in 0..hosts {
            let id = format!("host-{h}");
            let proxy = Proxy::start(port).await.unwrap();
            let mut miners = Vec::new();
            let mut toml = format!(
                "host_id = \"{id}\"\nstate_dir = \"{}\"\nfallback = \"{}\"\n\
                 [controller]\nurl = \"http://127.0.0.1:{}\"\nreconnect_max_s = 1\n\
                 [poll]\nminer_interval_s = 0.5\ntimeout_ms = 500\nsettle_s = 3\nconfirm_s = 6\n\
                 rediscover_s = 1\npacing_s = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
                world.path(&format!("{id}-state")),
                if h % 2 == 1 { "curtail" } else { "hold" },
                proxy.port,
            );
            for k in 0..MINERS_PER_HOST {
                let dialect = DIALECTS[(h * MINERS_PER_HOST + k) % DIALECTS.len()];
                let m = spawn(
                    MinerSpec::new(dialect).timing(Timing::fast()).sleeping(),
                    Bind::localhost(),
                )
                .await
                .unwrap();
                let addr = match m.http_addr() {
                    Some(http) => format!("{},http={}", m.api_addr(), http.port()),
                    None => m.api_addr().to_string(),
                };
                toml.push_str(&format!(
                    "[[miners]]\naddr = \"{addr}\"\ndialect = \"{}\"\n",
                    dialect.name()
                ));
                miners.push((format!("miner/{addr}"), m));
            }
            let config = world.dir.path().join(format!("{id}.toml"));
            std::fs::write(&config, toml).unwrap();
            world.hosts.push(Host {
                state_dir: world.dir.path().join(format!("{id}-state")),
                log: world.dir.path().join(format!("{id}.log")),
                config,
                id,
                proxy,
                agent: None,
                miners,
            });
            world.start_agent(h);
        }
        world
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn watch(&self) -> Watch {
        Watch {
            db: self.dir.path().join("pivot.db"),
            hosts: self
                .hosts
                .iter()
                .map(|h| {
                    (
                        h.state_dir.clone(),
                        h.miners
                            .iter()
                            .map(|(id, m)| (id.clone(), m.handle()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// Writes the energy price the controller reads, whole (written aside and renamed).
    pub fn energy(&self, usd_per_mwh: f64) {
        let path = self.dir.path().join("energy.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{{\"value\": {usd_per_mwh}}}")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    pub fn start_controller(&mut self) {
        let config = self.path("controller.toml");
        let log = self.dir.path().join("controller.log");
        self.controller = Some(tokio::task::block_in_place(|| {
            start(
                "pivot-controller",
                &["serve", "--config", &config],
                "pivot-controller listening on ",
                &log,
            )
        }));
    }

    /// kill -9.
    pub fn kill_controller(&mut self) {
        self.controller = None;
    }

    pub fn start_agent(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let config = host.config.display().to_string();
        let log = host.log.clone();
        host.agent = Some(tokio::task::block_in_place(|| {
            start(
                "pivot-agent",
                &["run", "--config", &config],
                "pivot-agent metrics on ",
                &log,
            )
        }));
    }

    /// kill -9.
    pub fn kill_agent(&mut self, h: usize) {
        self.hosts[h].agent = None;
    }

    /// Hosts the controller has a live session with; `None` while it does not answer.
    pub async fn agents_connected(&self) -> Option<u32> {
        let mut client = v1::fleet_service_client::FleetServiceClient::connect(self.url())
            .await
            .ok()?;
        let status = client
            .get_site_status(v1::GetSiteStatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some(status.agents_connected)
    }

    /// Lines of the processes' logs that tell of a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        let logs = std::iter::once(self.dir.path().join("controller.log"))
            .chain(self.hosts.iter().map(|h| h.log.clone()));
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("{}: {l}", log.display())),
            );
        }
        out
    }
}

/// What pivot-sim says a miner does: its draw, and the setting it heads to (0 asleep; else its
/// power target, or its nameplate scaled by its Antminer work mode, as the emulator does).
pub fn miner_view(s: &Snapshot) -> MinerView {
    let nameplate = f64::from(s.model.nameplate_w);
    let setpoint_w = if s.sleep_requested {
        0.0
    } else {
        match (s.power_target_w, s.work_mode) {
            (Some(w), _) => f64::from(w),
            (None, 2) => nameplate * 1.1,
            (None, 3) => nameplate * 0.75,
            (None, _) => nameplate,
        }
    };
    MinerView {
        power_w: s.power_w,
        setpoint_w,
        reboots: s.reboots,
    }
}

#[derive(serde::Deserialize)]
struct IntentsFile {
    #[serde(default)]
    intents: Vec<Intent>,
    #[serde(default)]
    held: Vec<HeldRecord>,
}

#[derive(serde::Deserialize)]
struct HeldRecord {
    intent: Intent,
}

fn held(i: Intent) -> HeldIntent {
    HeldIntent {
        device_id: i.device_id,
        generation: i.generation,
        target: i.target,
        lease_expires_at: i.lease_expires_at,
    }
}

/// What an agent holds on disk (`intents.json`; nothing before its first intent).
pub fn agent_intents(state_dir: &Path) -> Result<Vec<HeldIntent>, String> {
    let path = state_dir.join("intents.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: IntentsFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file
        .intents
        .into_iter()
        .chain(file.held.into_iter().map(|r| r.intent))
        .map(held)
        .collect())
}

/// What the controller stored: each device's intent, with its host and whether the agent
/// answered that generation.
pub fn controller_intents(db: &Path) -> Result<Vec<(String, HeldIntent, bool)>, String> {
    use rusqlite::{Connection, OpenFlags};
    let err = |e: rusqlite::Error| format!("{}: {e}", db.display());
    if !db.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT device_id, host_id, generation, target_json, lease_expires_at, status_json \
             FROM device_intents",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (device_id, host, generation, target, lease, status) = row.map_err(err)?;
        let target: Target = serde_json::from_str(&target).map_err(|e| e.to_string())?;
        let lease_expires_at = chrono::DateTime::parse_from_rfc3339(&lease)
            .map_err(|e| e.to_string())?
            .with_timezone(&chrono::Utc);
        out.push((
            host,
            HeldIntent {
                device_id,
                generation: u64::try_from(generation).map_err(|e| e.to_string())?,
                target,
                lease_expires_at,
            },
            status.is_some(),
        ));
    }
    Ok(out)
}
