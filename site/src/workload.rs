//! The SIMULATED workload manager on loopback: the queue (`scheduler.rs`) served over HTTP —
//! slurmrestd's jobs endpoint for the controller's own demand reader, and node release, drain and
//! status for the GPU hosts' agents through their exec hook (`pivot-site sim-workload-hook`) —
//! the fake GPUs' load written from the jobs running on them, and every event of the queue in
//! `workload.jsonl` beside the site's other files.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use pivot_controller::market::MarketConfig;
use pivot_controller::market::ai::AiDemandSourceConfig;
use pivot_controller::market::config::InputConfig;
use pivot_controller::trace::Trace;
use serde_json::json;

use crate::fleet::GPU_DEMAND_W;
use crate::narrator::TraceTimes;
use crate::scheduler::{Event, NodeStatus, QueueSummary, Scheduler, UnknownNode, What};

/// The Slurm user the controller reads the queue as.
pub const USER_NAME: &str = "pivot";

/// What an idle H100 draws, W (no job on it).
pub const IDLE_GPU_W: f64 = 70.0;

/// A busy GPU's utilization, percent.
const BUSY_UTILIZATION_PCT: u32 = 97;

/// slurmrestd's jobs path at the version the controller asks for by default.
pub const JOBS_PATH: &str = "/slurm/v0.0.38/jobs";

/// How often the queue is brought to the site's clock and the GPUs' load written, wall time.
const TICK: Duration = Duration::from_millis(100);

/// The hook's exit code for "this can never work here" (agent/src/workload/exec.rs).
const EXIT_PERMANENT: i32 = 78;

#[derive(Debug, thiserror::Error)]
pub enum WlmError {
    #[error("the SIMULATED workload manager: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the SIMULATED workload manager cannot listen on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    #[error("the SIMULATED workload manager's demand source for the controller: {0}")]
    DemandConfig(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WlmError {
    move |source| WlmError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One GPU node: its name (the agent's `workload.node_name`), GPUs and fake NVML state file.
#[derive(Debug, Clone)]
pub struct GpuNode {
    pub name: String,
    pub gpus: u32,
    pub nvml_state: PathBuf,
}

/// A checkpoint's grace for a drained node's jobs, trace seconds: ten minutes.
pub const GRACE_TRACE_S: f64 = 600.0;

/// How a GPU host's agent hands its node to the SIMULATED workload manager.
#[derive(Debug, Clone, PartialEq)]
pub struct HostWorkload {
    /// The exec hook ([`SimulatedWlm::write_hook`]).
    pub hook: PathBuf,
    /// The checkpoint grace in wall seconds ([`GRACE_TRACE_S`] at the site's speed).
    pub grace_s: f64,
}

impl HostWorkload {
    /// The agent's `[workload]` section for node `node`.
    pub fn section(&self, node: &str) -> String {
        format!(
            "# The SIMULATED workload manager, through pivot-site's exec hook.\n[workload]\n\
             manager = \"exec\"\nnode_name = \"{node}\"\ngrace_s = {:.3}\nconfirm_s = 30\npoll_s = 0.25\n\n\
             [workload.exec]\nhook = {}\ntimeout_s = 10\n",
            self.grace_s,
            toml::Value::String(self.hook.display().to_string()),
        )
    }
}

/// A queue event as `workload.jsonl` records it.
fn event_json(e: &Event, wall: DateTime<Utc>) -> serde_json::Value {
    let mut v = json!({ "wall": wall, "trace": e.at, "event": e.what.kind() });
    let fields = match &e.what {
        What::Submitted { job, gpus } | What::Withdrawn { job, gpus } => {
            json!({ "job": job, "gpus": gpus })
        }
        What::Started {
            job,
            gpus,
            node,
            ends_at,
        } => json!({ "job": job, "gpus": gpus, "node": node, "ends": ends_at }),
        What::Requeued { job, gpus, node } => {
            json!({ "job": job, "gpus": gpus, "node": node })
        }
        What::Ended {
            job,
            gpus,
            node,
            early,
        } => json!({ "job": job, "gpus": gpus, "node": node, "early": early }),
        What::Opened { node } | What::Closed { node } => {
            json!({ "node": node, "by": "pivot-agent exec hook" })
        }
    };
    if let (Some(v), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        v.extend(f.clone());
    }
    v
}

/// What the narrator says of an event, if anything (job churn is left to the hourly line).
fn said(e: &Event) -> Option<String> {
    match &e.what {
        What::Opened { node } => Some(format!(
            "SIMULATED workload manager: {node} released by its agent, open to AI jobs"
        )),
        What::Closed { node } => Some(format!(
            "SIMULATED workload manager: {node} drained by its agent, takes no new job; its jobs run on through the grace"
        )),
        What::Requeued { job, gpus, node } => Some(format!(
            "SIMULATED workload manager: grace over on {node}, job {job} ({gpus} GPUs) requeued"
        )),
        _ => None,
    }
}

struct Shared {
    sched: Mutex<Scheduler>,
    trace: Arc<Trace>,
    gpus_total: u32,
    clock: Mutex<Option<TraceTimes>>,
    token: String,
    log: Mutex<std::io::BufWriter<std::fs::File>>,
    log_path: PathBuf,
    /// Lines for the narrator, printed by the ticker.
    to_say: Mutex<Vec<(DateTime<Utc>, String)>>,
    nodes: Vec<GpuNode>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The trace time now: the trace's start until the site's clock starts.
    fn now(&self) -> DateTime<Utc> {
        match &*lock(&self.clock) {
            Some(t) => t.clock.trace_time(Utc::now()),
            None => self.trace.start(),
        }
    }

    /// The GPUs the trace's AI demand asks for at `t` (all of the site's when the row says
    /// all); before the trace its first row, after it its last.
    fn target(&self, t: DateTime<Utc>) -> u32 {
        let rows = self.trace.rows();
        let row = self.trace.at(t).or_else(|| {
            if t < self.trace.start() {
                rows.first()
            } else {
                rows.last()
            }
        });
        row.map_or(0, |r| r.ai_gpu_demand.unwrap_or(self.gpus_total))
    }

    /// Brings the queue to now, then applies `f`; every event is recorded.
    fn apply<R>(
        &self,
        f: impl FnOnce(&mut Scheduler, DateTime<Utc>) -> Result<(R, Vec<Event>), UnknownNode>,
    ) -> Result<R, UnknownNode> {
        let now = self.now();
        let target = self.target(now);
        let mut sched = lock(&self.sched);
        let mut events = sched.advance(now, target);
        let result = f(&mut sched, now);
        if let Ok((_, more)) = &result {
            events.extend(more.iter().cloned());
        }
        self.record(&events);
        drop(sched);
        result.map(|(r, _)| r)
    }

    fn record(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let wall = Utc::now();
        let mut log = lock(&self.log);
        for e in events {
            let _ = writeln!(log, "{}", event_json(e, wall));
        }
        if let Err(e) = log.flush() {
            tracing::warn!(path = %self.log_path.display(), error = %e, "Cannot write the SIMULATED workload manager's event log");
        }
        drop(log);
        lock(&self.to_say).extend(events.iter().filter_map(|e| Some((e.at, said(e)?))));
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        h("x-slurm-user-name") == Some(USER_NAME) && h("x-slurm-user-token") == Some(&self.token)
    }
}

/// A running SIMULATED workload manager.
pub struct SimulatedWlm {
    addr: SocketAddr,
    token_file: PathBuf,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimulatedWlm {
    /// Stops serving and leaves the fake GPUs with the load of the jobs as they stand.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        sync_loads(&self.shared, &mut BTreeMap::new());
    }
}

type Reply = (StatusCode, String);

fn node_reply(r: Result<NodeStatus, UnknownNode>) -> Reply {
    match r {
        Ok(s) => (StatusCode::OK, s.line()),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()),
    }
}

const UNAUTHORIZED: &str = "missing or wrong X-SLURM-USER-NAME / X-SLURM-USER-TOKEN";

async fn jobs(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Reply {
    if !s.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            json!({ "errors": [{ "error": UNAUTHORIZED, "error_number": 401 }], "jobs": [] })
                .to_string(),
        );
    }
    let body = s.apply(|sched, now| Ok((sched.squeue(now), Vec::new())));
    match body {
        Ok(v) => (StatusCode::OK, v.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A call of the agent's hook on a node: authorized, the queue brought to now, `act` applied,
/// the node's status line answered.
fn node_call(
    s: &Shared,
    headers: &HeaderMap,
    node: &str,
    act: impl FnOnce(&mut Scheduler, DateTime<Utc>) -> Result<Vec<Event>, UnknownNode>,
) -> Reply {
    if !s.authorized(headers) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORIZED.into());
    }
    node_reply(s.apply(|sched, now| {
        let events = act(sched, now)?;
        Ok((sched.status(node)?, events))
    }))
}

async fn status(
    State(s): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    headers: HeaderMap,
) -> Reply {
    node_call(&s, &headers, &node, |_, _| Ok(Vec::new()))
}

async fn release(
    State(s): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    headers: HeaderMap,
) -> Reply {
    node_call(&s, &headers, &node, |sched, now| sched.release(&node, now))
}

#[derive(serde::Deserialize)]
struct DrainQuery {
    #[serde(default)]
    grace_over: u8,
}

async fn drain(
    State(s): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    Query(q): Query<DrainQuery>,
    headers: HeaderMap,
) -> Reply {
    node_call(&s, &headers, &node, |sched, now| {
        sched.drain(&node, now, q.grace_over == 1)
    })
}

/// A token nobody guesses: the time and the process id, mixed.
fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut rng = pivot_controller::backtest::generate::Rng::new(
        (nanos as u64) ^ (u64::from(std::process::id()) << 32),
    );
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

impl SimulatedWlm {
    /// Starts the manager on a free port of 127.0.0.1, its files in `dir`: the token the
    /// controller reads the queue with (`slurmrestd.token`), the event log (`workload.jsonl`).
    pub async fn start(
        dir: &Path,
        nodes: Vec<GpuNode>,
        trace: Arc<Trace>,
        seed: u64,
    ) -> Result<Self, WlmError> {
        let token = new_token();
        let token_file = dir.join("slurmrestd.token");
        write_private(&token_file, &format!("{token}\n"))?;
        let log_path = dir.join("workload.jsonl");
        let log = std::fs::File::create(&log_path).map_err(io("creating", &log_path))?;
        let gpus_total = nodes.iter().map(|n| n.gpus).sum();
        let sched = Scheduler::new(
            &nodes
                .iter()
                .map(|n| (n.name.clone(), n.gpus))
                .collect::<Vec<_>>(),
            seed,
        );
        let shared = Arc::new(Shared {
            sched: Mutex::new(sched),
            trace,
            gpus_total,
            clock: Mutex::new(None),
            token,
            log: Mutex::new(std::io::BufWriter::new(log)),
            log_path,
            to_say: Mutex::new(Vec::new()),
            nodes,
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(WlmError::Bind)?;
        let addr = listener.local_addr().map_err(WlmError::Bind)?;
        let app = Router::new()
            .route(JOBS_PATH, get(jobs))
            .route("/simulated/nodes/{node}/status", get(status))
            .route("/simulated/nodes/{node}/release", post(release))
            .route("/simulated/nodes/{node}/drain", post(drain))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "The SIMULATED workload manager stopped serving");
            }
        });
        let ticker = tokio::spawn(tick(Arc::clone(&shared)));
        Ok(Self {
            addr,
            token_file,
            shared,
            tasks: vec![server, ticker],
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on the queue runs on the site's clock, and its node events are printed.
    pub fn start_clock(&self, times: TraceTimes) {
        *lock(&self.shared.clock) = Some(times);
    }

    pub fn summary(&self) -> QueueSummary {
        lock(&self.shared.sched).summary()
    }

    /// A handle the hourly line reads the queue through.
    pub fn view(&self) -> QueueView {
        QueueView(Arc::clone(&self.shared))
    }

    /// `[market.ai_demand]` for the controller: slurmrestd at this manager, through the market's
    /// own parser and checks, as an operator's file would say it.
    pub fn demand_config(&self) -> Result<InputConfig<AiDemandSourceConfig>, WlmError> {
        let path = toml::Value::String(self.token_file.display().to_string());
        let text = format!(
            "[ai_demand]\nsource = \"slurmrestd\"\nrefresh_s = 3600\nmax_age_s = 3600\ntimeout_s = 5\n\
             [ai_demand.slurmrestd]\nurl = \"{}\"\nuser_name = \"{USER_NAME}\"\ntoken_file = {path}\ntimeout_s = 5\n",
            self.url()
        );
        let market: MarketConfig =
            toml::from_str(&text).map_err(|e| WlmError::DemandConfig(e.to_string()))?;
        market
            .validate()
            .map_err(|e| WlmError::DemandConfig(e.to_string()))?;
        Ok(market.ai_demand)
    }

    /// Writes the exec hook to `hook` and says how the GPU hosts' agents use it at `speed`.
    pub fn host_workload(&self, hook: &Path, speed: f64) -> Result<HostWorkload, WlmError> {
        self.write_hook(hook)?;
        Ok(HostWorkload {
            hook: hook.to_owned(),
            grace_s: (GRACE_TRACE_S / speed).clamp(0.1, GRACE_TRACE_S),
        })
    }

    /// Writes the exec hook the GPU hosts' agents run: this very binary's hidden
    /// `sim-workload-hook` subcommand, pointed at this manager. (The agent runs a hook without
    /// arguments, so a one-line script carries them.)
    pub fn write_hook(&self, path: &Path) -> Result<(), WlmError> {
        let exe = std::env::current_exe().map_err(io("finding this executable for", path))?;
        let text = format!(
            "#!/bin/sh\n# The SIMULATED workload manager's exec hook, written by pivot-site: PIVOT_ACTION,\n\
             # PIVOT_NODE and PIVOT_GRACE_OVER (agent/src/workload/exec.rs) go to {}.\n\
             exec {} sim-workload-hook --scheduler {} --token-file {}\n",
            self.url(),
            sh_quote(&exe.display().to_string()),
            sh_quote(&self.url()),
            sh_quote(&self.token_file.display().to_string()),
        );
        std::fs::write(path, text).map_err(io("writing", path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(io("making executable", path))
    }
}

/// The queue, read for the hourly line.
#[derive(Clone)]
pub struct QueueView(Arc<Shared>);

impl QueueView {
    pub fn summary(&self) -> QueueSummary {
        self.0
            .apply(|sched, _| Ok((sched.summary(), Vec::new())))
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for QueueView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueView")
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_private(path: &Path, text: &str) -> Result<(), WlmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("writing", path))?;
    f.write_all(text.as_bytes()).map_err(io("writing", path))
}

/// Brings the queue to the clock, writes the GPUs' load, prints the node events.
async fn tick(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        every.tick().await;
        let _ = shared.apply(|_, _| Ok(((), Vec::new())));
        sync_loads(&shared, &mut warned);
        let times = lock(&shared.clock).clone();
        if let Some(times) = times {
            let lines = std::mem::take(&mut *lock(&shared.to_say));
            for (at, line) in lines {
                println!("{}  {line}", times.label(at));
            }
        }
    }
}

/// Writes every node's GPU load from the jobs on it; warns once per node while it fails.
fn sync_loads(shared: &Shared, warned: &mut BTreeMap<String, bool>) {
    let busy: Vec<(GpuNode, Vec<bool>)> = {
        let sched = lock(&shared.sched);
        shared
            .nodes
            .iter()
            .map(|n| (n.clone(), sched.busy(&n.name)))
            .collect()
    };
    for (node, busy) in busy {
        // Not written yet: the site writes each host's state file as it sets the host up.
        if !node.nvml_state.exists() {
            continue;
        }
        let result = set_gpu_load(&node.nvml_state, &busy);
        let failing = result.is_err();
        if let Err(e) = result
            && !warned.get(&node.name).copied().unwrap_or(false)
        {
            tracing::warn!(node = %node.name, error = %e, "Cannot set the fake GPUs' load from the SIMULATED jobs");
        }
        warned.insert(node.name, failing);
    }
}

/// Sets each fake GPU's power demand and utilization from whether a job holds it, keeping
/// everything else in the file (the power limits NVML wrote); written atomically, and only when
/// it changes. The fake library re-reads the file on every call.
pub fn set_gpu_load(state: &Path, busy: &[bool]) -> Result<bool, String> {
    // Held until the file is written back: the agent's fake NVML sets power limits in the same
    // file under the same lock, and neither write may undo the other.
    let _lock = pivot_fake_nvml::state::write_lock(state)?;
    let text = std::fs::read_to_string(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", state.display()))?;
    let gpus = v
        .as_object_mut()
        .ok_or_else(|| format!("{}: not a JSON object", state.display()))?
        .entry("gpus")
        .or_insert_with(|| json!({}));
    let gpus = gpus
        .as_object_mut()
        .ok_or_else(|| format!("{}: `gpus` is not an object", state.display()))?;
    let mut changed = false;
    for (i, b) in busy.iter().enumerate() {
        let (demand_w, util) = if *b {
            (GPU_DEMAND_W, BUSY_UTILIZATION_PCT)
        } else {
            (IDLE_GPU_W, 0)
        };
        let gpu = gpus.entry(i.to_string()).or_insert_with(|| json!({}));
        let Some(gpu) = gpu.as_object_mut() else {
            return Err(format!("{}: gpus.{i} is not an object", state.display()));
        };
        if gpu.get("power_demand_w").and_then(|d| d.as_f64()) != Some(demand_w) {
            gpu.insert("power_demand_w".into(), json!(demand_w));
            changed = true;
        }
        if gpu.get("utilization_gpu_pct").and_then(|d| d.as_u64()) != Some(u64::from(util)) {
            gpu.insert("utilization_gpu_pct".into(), json!(util));
            changed = true;
        }
    }
    if !changed {
        return Ok(false);
    }
    // Not the library's own temporary name (it uses the process id, the same in this process).
    let mut tmp_name = state.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".simulated-load.tmp");
    let tmp = state.with_file_name(tmp_name);
    std::fs::write(&tmp, v.to_string())
        .and_then(|()| std::fs::rename(&tmp, state))
        .map_err(|e| format!("{}: {e}", state.display()))?;
    Ok(true)
}

/// What the hook run says: its exit code and what it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl HookOutcome {
    fn permanent(why: String) -> Self {
        Self {
            code: EXIT_PERMANENT,
            stdout: String::new(),
            stderr: why,
        }
    }
}

/// The exec hook (`pivot-site sim-workload-hook`): reads the agent's `PIVOT_ACTION`,
/// `PIVOT_NODE` and `PIVOT_GRACE_OVER` from `env`, asks the manager at `scheduler`, and answers
/// with the node's status line; a wrong action, node or token is permanent (78), a manager that
/// does not answer transient (1).
pub async fn run_hook(
    scheduler: &str,
    token_file: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> HookOutcome {
    let action = env("PIVOT_ACTION").unwrap_or_default();
    let Some(node) = env("PIVOT_NODE").filter(|n| !n.is_empty()) else {
        return HookOutcome::permanent(
            "PIVOT_NODE is not set: run by pivot-agent's [workload.exec]".into(),
        );
    };
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.lines().next().unwrap_or_default().trim().to_owned(),
        Err(e) => {
            return HookOutcome::permanent(format!("--token-file {}: {e}", token_file.display()));
        }
    };
    let base = scheduler.trim_end_matches('/');
    let grace_over = env("PIVOT_GRACE_OVER").as_deref() == Some("1");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return HookOutcome::permanent(format!("cannot build an HTTP client: {e}")),
    };
    let at = |what: &str| format!("{base}/simulated/nodes/{node}/{what}");
    let request = match action.as_str() {
        "status" => client.get(at("status")),
        "release" => client.post(at("release")),
        "drain" => client.post(format!(
            "{}?grace_over={}",
            at("drain"),
            u8::from(grace_over)
        )),
        other => {
            return HookOutcome::permanent(format!(
                "PIVOT_ACTION `{other}`: expected release, drain or status"
            ));
        }
    };
    let reply = request
        .header("x-slurm-user-name", USER_NAME)
        .header("x-slurm-user-token", token)
        .send()
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            return HookOutcome {
                code: 1,
                stdout: String::new(),
                stderr: format!("the SIMULATED workload manager at {base} did not answer: {e}"),
            };
        }
    };
    let code = reply.status();
    let body = reply.text().await.unwrap_or_default();
    match code.as_u16() {
        200 => HookOutcome {
            code: 0,
            stdout: format!("{}\n", body.trim()),
            stderr: String::new(),
        },
        401 | 404 => HookOutcome::permanent(format!("{action} {node}: {}", body.trim())),
        _ => HookOutcome {
            code: 1,
            stdout: String::new(),
            stderr: format!("{action} {node}: HTTP {code}: {}", body.trim()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Arc<Trace> {
        let text = "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w\n\
            2026-07-14T18:00:00Z,45,40,2,12,\n2026-07-14T18:05:00Z,45,40,2,,\n";
        Arc::new(Trace::parse(text, "t.csv").unwrap())
    }

    fn node(dir: &Path, name: &str) -> GpuNode {
        let nvml_state = dir.join(format!("{name}.json"));
        std::fs::write(
            &nvml_state,
            r#"{"count": 8, "power_demand_w": 70, "gpus": {"0": {"uuid": "GPU-x", "power_limit_w": 200}}}"#,
        )
        .unwrap();
        GpuNode {
            name: name.into(),
            gpus: 8,
            nvml_state,
        }
    }

    /// The hook against the real server over loopback, and the controller's own slurmrestd reader.
    #[tokio::test]
    async fn the_hook_and_the_controllers_reader_talk_to_it_over_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = vec![
            node(dir.path(), "gpu-host-1"),
            node(dir.path(), "gpu-host-2"),
        ];
        let wlm = SimulatedWlm::start(dir.path(), nodes, trace(), 1)
            .await
            .unwrap();
        let token = dir.path().join("slurmrestd.token");
        let env = |action: &'static str, node: &'static str, grace: bool| {
            move |k: &str| match k {
                "PIVOT_ACTION" => Some(action.to_owned()),
                "PIVOT_NODE" => Some(node.to_owned()),
                "PIVOT_GRACE_OVER" if grace => Some("1".to_owned()),
                _ => None,
            }
        };
        let url = wlm.url();
        let s = run_hook(&url, &token, env("status", "gpu-host-1", false)).await;
        assert_eq!(s.code, 0, "{s:?}");
        let parsed = pivot_agent::workload::exec::parse_status(s.stdout.trim()).unwrap();
        assert!(!parsed.released() && parsed.drained(), "{s:?}");

        let r = run_hook(&url, &token, env("release", "gpu-host-1", false)).await;
        assert_eq!(r.code, 0, "{r:?}");
        let parsed = pivot_agent::workload::exec::parse_status(r.stdout.trim()).unwrap();
        assert!(parsed.released() && parsed.gpus_allocated == 8, "{r:?}");

        // The controller's reader, configured as the site configures it.
        let config = wlm.demand_config().unwrap().source.workload().unwrap();
        let reader = pivot_controller::demand::DemandReader::connect(&config)
            .await
            .unwrap();
        let d = reader.read().await.unwrap();
        assert_eq!((d.gpus_running, d.gpus_pending), (8, 4));

        let d1 = run_hook(&url, &token, env("drain", "gpu-host-1", false)).await;
        let parsed = pivot_agent::workload::exec::parse_status(d1.stdout.trim()).unwrap();
        assert!(parsed.closed && !parsed.drained(), "{d1:?}");
        let d2 = run_hook(&url, &token, env("drain", "gpu-host-1", true)).await;
        let parsed = pivot_agent::workload::exec::parse_status(d2.stdout.trim()).unwrap();
        assert!(parsed.drained(), "{d2:?}");
        let d = reader.read().await.unwrap();
        assert_eq!((d.gpus_running, d.gpus_pending), (0, 12));

        // Wrong node, action or token: permanent, named.
        let bad = run_hook(&url, &token, env("status", "gpu-host-9", false)).await;
        assert_eq!(bad.code, 78, "{bad:?}");
        assert!(bad.stderr.contains("gpu-host-9"), "{bad:?}");
        assert_eq!(
            run_hook(&url, &token, env("reboot", "gpu-host-1", false))
                .await
                .code,
            78
        );
        let wrong = dir.path().join("wrong.token");
        std::fs::write(&wrong, "nope\n").unwrap();
        assert_eq!(
            run_hook(&url, &wrong, env("status", "gpu-host-1", false))
                .await
                .code,
            78
        );
        // Nobody listening: transient.
        let gone = run_hook(
            "http://127.0.0.1:1",
            &token,
            env("status", "gpu-host-1", false),
        )
        .await;
        assert_eq!(gone.code, 1, "{gone:?}");

        // The event log has the release before the first start on the node.
        let log = std::fs::read_to_string(dir.path().join("workload.jsonl")).unwrap();
        let kinds: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let opened = kinds.iter().position(|e| e["event"] == "opened").unwrap();
        let started = kinds.iter().position(|e| e["event"] == "started").unwrap();
        assert!(opened < started, "{log}");
    }

    #[test]
    fn the_gpus_load_follows_the_jobs_and_keeps_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path(), "g");
        let mut busy = vec![false; 8];
        busy[0] = true;
        busy[3] = true;
        assert!(set_gpu_load(&n.nvml_state, &busy).unwrap());
        assert!(
            !set_gpu_load(&n.nvml_state, &busy).unwrap(),
            "unchanged: not rewritten"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&n.nvml_state).unwrap()).unwrap();
        assert_eq!(v["gpus"]["0"]["power_demand_w"], GPU_DEMAND_W);
        assert_eq!(v["gpus"]["0"]["power_limit_w"], 200);
        assert_eq!(v["gpus"]["0"]["uuid"], "GPU-x");
        assert_eq!(v["gpus"]["1"]["power_demand_w"], IDLE_GPU_W);
        assert_eq!(v["gpus"]["3"]["utilization_gpu_pct"], BUSY_UTILIZATION_PCT);
        std::fs::write(&n.nvml_state, "[1]").unwrap();
        assert!(
            set_gpu_load(&n.nvml_state, &busy)
                .unwrap_err()
                .contains("g.json")
        );
    }
}
