//! The site's hosts: pivot-sim miners on loopback, the rack agents that drive them, and GPU
//! hosts (an agent each, on its own copy of the fake NVML library with its own eight H100s,
//! handing its node to the SIMULATED workload manager through its `[workload.exec]` hook) —
//! every agent the real daemon (`pivot_agent::daemon::run`), in this process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use pivot_agent::config::{Config as AgentConfig, EnvSource};
use pivot_sim::miner::{Bind, MinerHandle, SimMiner, spawn};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::fleet::{FleetLayout, GPU_MAX_W, GPU_MIN_W, GPUS_PER_HOST, HOST_BASE_W};
use crate::workload::{GpuNode, HostWorkload, IDLE_GPU_W};

/// The environment variable that names the fake NVML library to load.
pub const FAKE_NVML_ENV: &str = "PIVOT_FAKE_NVML_LIB";

/// The fake NVML library's file name as cargo writes it.
pub const FAKE_NVML_FILE: &str = "libpivot_fake_nvml.so";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("starting emulated miner {index} ({dialect}): {source}")]
    Miner {
        index: usize,
        dialect: &'static str,
        source: pivot_sim::miner::SimError,
    },
    #[error(
        "the fake NVML library was not found (looked for {looked}); build it with `cargo build --release -p pivot-fake-nvml` (or `cargo build --release`), or set {FAKE_NVML_ENV}, or run with --gpu-hosts 0"
    )]
    NoFakeNvml { looked: String },
    #[error(
        "PIVOT_FAKE_NVML_STATE is set: every fake GPU would read that one file; unset it (each simulated GPU host keeps its own state next to its copy of the library)"
    )]
    SharedNvmlState,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording the work mode of {miner} before its sleep: {problem}")]
    WorkMode { miner: String, problem: String },
    #[error("agent {host}: {source}")]
    Config {
        host: String,
        source: pivot_agent::config::ConfigError,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostsError {
    move |source| HostsError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The in-process agents read no `PIVOT_AGENT_*` overrides: the process environment would
/// point every one of them at the same host id or state directory.
struct NoEnv;

impl EnvSource for NoEnv {
    fn get(&self, _key: &str) -> Option<String> {
        None
    }
}

/// Finds the fake NVML library: `$PIVOT_FAKE_NVML_LIB`, else next to this executable (the
/// same cargo profile's output), else `deps/` beside it.
pub fn find_fake_nvml() -> Result<PathBuf, HostsError> {
    if std::env::var_os("PIVOT_FAKE_NVML_STATE").is_some_and(|v| !v.is_empty()) {
        return Err(HostsError::SharedNvmlState);
    }
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os(FAKE_NVML_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        for p in [
            dir.join(FAKE_NVML_FILE),
            dir.join("deps").join(FAKE_NVML_FILE),
        ] {
            if p.is_file() {
                return Ok(p);
            }
            looked.push(p);
        }
    }
    Err(HostsError::NoFakeNvml {
        looked: looked
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Timing of the agents' loops: fast enough that a move is confirmed within about a second of
/// wall time, which is minutes of trace time at the default speed.
const POLL: &str = "[poll]\nminer_interval_s = 0.5\ngpu_interval_s = 0.5\ntimeout_ms = 5000\n\
                    settle_s = 10\nconfirm_s = 15\nrediscover_s = 2\npacing_s = 1\n";

fn agent_header(host_id: &str, dir: &Path, controller_url: &str) -> String {
    format!(
        "# Written by pivot-site for one of its in-process agents.\nhost_id = \"{host_id}\"\n\
         state_dir = \"{}\"\n\n[controller]\nurl = \"{controller_url}\"\nreconnect_max_s = 1\n\n\
         {POLL}\n[metrics]\nlisten = \"\"\n",
        dir.join("state").display()
    )
}

/// The emulated miners, by the address the agent knows each by (`miner/<addr>` is its device
/// id).
pub struct Miners {
    pub miners: Vec<SimMiner>,
}

impl Miners {
    /// Starts every miner of `layout` on ephemeral ports of 127.0.0.1.
    pub async fn start(layout: &FleetLayout) -> Result<Self, HostsError> {
        let mut miners = Vec::with_capacity(layout.miners.len());
        for (index, m) in layout.miners.iter().enumerate() {
            let miner = spawn(
                m.spec.clone(),
                Bind::Ephemeral(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
            .await
            .map_err(|source| HostsError::Miner {
                index,
                dialect: m.spec.dialect.name(),
                source,
            })?;
            miners.push(miner);
        }
        Ok(Self { miners })
    }

    /// Each miner's handle by the controller's device id for it.
    pub fn by_device_id(&self) -> BTreeMap<String, MinerHandle> {
        self.miners
            .iter()
            .map(|m| (format!("miner/{}", m.agent_addr()), m.handle()))
            .collect()
    }
}

/// Records a stock Antminer's work mode in its rack agent's state directory before the site
/// puts it to sleep behind the agent's back, as `pivot-agent miner sleep` does: stock firmware
/// has no wake command, only "the mode it had", and an agent that never saw the mode rightly
/// refuses to guess it. Other dialects wake without it; nothing is recorded for them.
pub async fn remember_work_mode(
    root: &Path,
    layout: &FleetLayout,
    miners: &Miners,
    device_id: &str,
) -> Result<(), HostsError> {
    use pivot_agent::miner::verify::{FileModes, ModeMemory};
    let found = layout
        .miners
        .iter()
        .zip(&miners.miners)
        .find(|(_, sim)| format!("miner/{}", sim.agent_addr()) == device_id);
    let Some((m, sim)) = found else {
        return Ok(());
    };
    if sim.dialect() != pivot_sim::miner::Dialect::Antminer {
        return Ok(());
    }
    let modes = FileModes::new(
        root.join(FleetLayout::rack_id(m.rack))
            .join("state")
            .join("miner-modes.json"),
    );
    modes
        .remember(
            &format!("antminer/{}", sim.agent_addr()),
            &sim.handle().snapshot().work_mode.to_string(),
        )
        .await
        .map_err(|e| HostsError::WorkMode {
            miner: device_id.to_owned(),
            problem: e.to_string(),
        })
}

/// The GPU hosts as nodes of the SIMULATED workload manager: each named by its host id, with
/// its fake NVML state file (written by [`write_agent_configs`]).
pub fn gpu_nodes(root: &Path, layout: &FleetLayout) -> Vec<GpuNode> {
    (0..layout.gpu_hosts)
        .map(|host| {
            let name = FleetLayout::gpu_host_id(host);
            GpuNode {
                nvml_state: root.join(&name).join("nvml").join("fake-nvml.json"),
                name,
                gpus: GPUS_PER_HOST,
            }
        })
        .collect()
}

/// The agents' configuration files, one directory per host under `root`. The GPU hosts start
/// drained — their GPUs at the lowest cap, their nodes closed in the SIMULATED workload manager —
/// and hand their node over through `workload`'s exec hook.
pub fn write_agent_configs(
    root: &Path,
    layout: &FleetLayout,
    miners: &Miners,
    controller_url: &str,
    fake_nvml: Option<&Path>,
    workload: &HostWorkload,
) -> Result<Vec<(String, PathBuf)>, HostsError> {
    let mut out = Vec::new();
    for rack in 0..layout.racks {
        let host_id = FleetLayout::rack_id(rack);
        let dir = root.join(&host_id);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let mut text = agent_header(&host_id, &dir, controller_url);
        for (m, sim) in layout.miners.iter().zip(&miners.miners) {
            if m.rack == rack {
                text.push_str(&format!(
                    "\n[[miners]]\naddr = \"{}\"\ndialect = \"{}\"\n",
                    sim.agent_addr(),
                    m.spec.dialect.name()
                ));
            }
        }
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).map_err(io("writing", &path))?;
        out.push((host_id, path));
    }
    for (host, node) in gpu_nodes(root, layout).iter().enumerate() {
        let Some(library) = fake_nvml else { break };
        let host_id = &node.name;
        let dir = root.join(host_id);
        let nvml = dir.join("nvml");
        std::fs::create_dir_all(&nvml).map_err(io("creating", &nvml))?;
        // A copy per host: loading one path twice would share one library's GPUs, and the
        // library keeps its GPUs in the state file beside it.
        let lib = nvml.join("libnvidia-ml.so.1");
        std::fs::copy(library, &lib).map_err(io("copying the fake NVML library to", &lib))?;
        let state = &node.nvml_state;
        // Each host's GPUs their own UUIDs (the library's default is the same on every host,
        // and the controller refuses a device that another host already holds), idle, at the
        // lowest cap: drained until the controller serves AI on them.
        let uuids: serde_json::Map<String, serde_json::Value> = (0..GPUS_PER_HOST)
            .map(|i| {
                let uuid = format!("GPU-5173e000-{:04x}-4000-8000-{i:012x}", host + 1);
                (
                    i.to_string(),
                    serde_json::json!({ "uuid": uuid, "power_limit_w": GPU_MIN_W }),
                )
            })
            .collect();
        let gpus = serde_json::json!({
            "count": GPUS_PER_HOST,
            "power_demand_w": IDLE_GPU_W,
            "gpus": uuids,
        });
        std::fs::write(state, gpus.to_string()).map_err(io("writing", state))?;
        let full_w = HOST_BASE_W + GPUS_PER_HOST * GPU_MAX_W;
        let text = format!(
            "{}\n[host]\nbase_power_w = {HOST_BASE_W}\nmax_power_w = {full_w}\n\n\
             [gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\n\n{}",
            agent_header(host_id, &dir, controller_url),
            lib.display(),
            workload.section(host_id)
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).map_err(io("writing", &path))?;
        out.push((host_id.clone(), path));
    }
    Ok(out)
}

/// The agents, running until [`Agents::stop`].
pub struct Agents {
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    shutdown: watch::Sender<bool>,
}

impl Agents {
    /// Starts one daemon per configuration file.
    pub fn start(configs: &[(String, PathBuf)]) -> Result<Self, HostsError> {
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (host, path) in configs {
            let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
            let config =
                AgentConfig::parse(&text, path, &NoEnv).map_err(|source| HostsError::Config {
                    host: host.clone(),
                    source,
                })?;
            let (host, path, mut stop) = (host.clone(), path.clone(), stop.clone());
            tasks.spawn(async move {
                let result = pivot_agent::daemon::run(config, &path, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
                (host, result)
            });
        }
        Ok(Self { tasks, shutdown })
    }

    /// The first agent to stop on its own, with why (an agent stops only on an error).
    pub async fn first_exit(&mut self) -> (String, String) {
        match self.tasks.join_next().await {
            Some(Ok((host, Ok(())))) => (host, "stopped".into()),
            Some(Ok((host, Err(e)))) => (host, pivot_proto::report::error_chain(e.as_ref())),
            Some(Err(e)) => ("an agent".into(), format!("task failed: {e}")),
            None => {
                std::future::pending::<()>().await;
                (String::new(), String::new())
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
