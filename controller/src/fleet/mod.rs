//! The registry of agents and their devices, and the observed state the controller plans from.
//!
//! Everything here was validated at the gRPC edge (`api::agent`); the registry trusts it. Each
//! agent has at most one live session: a new session for a host supersedes the old one, which is
//! closed, and nothing the superseded session does afterwards (telemetry, its end) changes the
//! host's state.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use pivot_proto::model::{IntentPhase, MinerDialect, MinerState, Target};
use pivot_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

mod bounds;

/// What the controller sends down one agent's session.
pub type Downlink = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

/// One agent session: its id (unique in this controller's life) and the way down to it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    tx: Downlink,
}

impl SessionHandle {
    pub fn new(id: u64, tx: Downlink) -> Self {
        Self { id, tx }
    }

    /// Ends the session from the controller's side: the agent's stream gets `status`.
    pub fn close(&self, status: Status) {
        // A full queue or a gone agent both end the session anyway.
        let _ = self.tx.try_send(Err(status));
    }
}

/// Why a message could not be handed to an agent's session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("agent {host_id} is not connected")]
    NotConnected { host_id: String },
    #[error("agent {host_id} is not reading its session (queue full); will retry")]
    Full { host_id: String },
}

/// A miner as its agent identified it.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerInfo {
    pub device_id: String,
    /// `None` for a configured miner its agent has not identified yet (it never answered): it
    /// still counts, at its maximum, while unseen.
    pub dialect: Option<MinerDialect>,
    pub nameplate_power_w: Option<f64>,
    pub power_target_max_w: Option<f64>,
    /// The validated inventory message, for display.
    pub inventory: v1::MinerInventory,
}

impl MinerInfo {
    /// The power targets the firmware accepts, `(lowest, highest)` in watts (its steps where it
    /// has them, LuxOS's profiles): `None` unless it takes a power target and the range is a
    /// range. The planner trims within it; a miner with one runs at the setting it reports.
    pub fn power_target_range_w(&self) -> Option<(f64, f64)> {
        let caps = self.inventory.capabilities.as_ref()?;
        if !caps.power_target {
            return None;
        }
        let min = caps
            .power_target_steps_w
            .first()
            .copied()
            .or(caps.power_target_min_w)?;
        let max = caps
            .power_target_steps_w
            .last()
            .copied()
            .or(caps.power_target_max_w)?;
        (min < max).then_some((f64::from(min), f64::from(max)))
    }
}

/// A miner's last reading.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerObservation {
    pub reachable: bool,
    pub state: MinerState,
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    pub power_target_w: Option<f64>,
    pub observed_at: DateTime<Utc>,
    /// Kept from an earlier session: shown, but not believed until a new reading arrives.
    pub restored: bool,
    pub reading: v1::MinerReading,
}

impl MinerObservation {
    /// J/TH while mining, when both power and hashrate are measured and plausible.
    pub fn mining_j_per_th(&self) -> Option<f64> {
        match (self.state, self.power_w, self.hashrate_ths) {
            (MinerState::Mining, Some(p), Some(h)) if p > 0.0 && h > 0.1 => {
                Some(p / h).filter(|e| e.is_finite() && *e > 1.0 && *e < 500.0)
            }
            _ => None,
        }
    }

    /// The J/TH to learn from this reading for a miner whose nameplate is `nameplate_w` for
    /// `nameplate_ths` (when both are known): only a reading of steady mining. A miner ramping up
    /// or down reads a sliver of its hashrate at a draw that has not followed yet — 20 W for
    /// 0.19 TH/s is 110 J/TH — and a miner believed that inefficient is ranked last and not woken
    /// again at any usual price (one believed far better than it is, kept awake at any price).
    /// So, against a known nameplate: at least half its hashrate, and between half and twice its
    /// J/TH (a tuned-down miner does better than its nameplate; one hashboard of three lost is
    /// 1.5 times worse). Nor a miner trimmed below nine tenths of its nameplate: it hashes more
    /// efficiently there than at full power, which the planner ranks it by, and a trimmed miner
    /// that looks the best of its model is restored at the next plan while another is trimmed
    /// in its place — a swap every dwell. Without a nameplate the reading's own bounds are all
    /// there is.
    pub fn steady_j_per_th(
        &self,
        nameplate_w: Option<f64>,
        nameplate_ths: Option<f64>,
    ) -> Option<f64> {
        let e = self.mining_j_per_th()?;
        let known = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0);
        let (Some(w), Some(ths)) = (known(nameplate_w), known(nameplate_ths)) else {
            return Some(e);
        };
        let rated = w / ths;
        let hashrate = self.hashrate_ths.unwrap_or(0.0);
        let trimmed = self.power_target_w.is_some_and(|t| t < w * 0.9);
        (!trimmed && hashrate >= ths / 2.0 && e >= rated / 2.0 && e <= rated * 2.0).then_some(e)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub device_id: String,
    pub power_cap_max_w: f64,
    pub inventory: v1::GpuInventory,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuObservation {
    pub power_w: Option<f64>,
    pub enforced_power_limit_w: Option<f64>,
    pub observed_at: DateTime<Utc>,
    /// Kept from an earlier session: shown, but not believed until a new reading arrives.
    pub restored: bool,
    pub reading: v1::GpuReading,
}

/// A miner in the registry: what its agent said it is, its last reading, and its efficiency when
/// it last mined (kept while it sleeps: sleeping miners are the ones the planner ranks for waking).
#[derive(Debug, Clone, PartialEq)]
pub struct MinerSlot {
    pub info: MinerInfo,
    pub obs: Option<MinerObservation>,
    pub last_mining_j_per_th: Option<f64>,
    /// What it drew when last read asleep (kept while it mines: its next sleep saves its full
    /// draw less this). The planner's assumption stands in until it has been read asleep.
    pub last_sleeping_w: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSlot {
    pub info: GpuInfo,
    pub obs: Option<GpuObservation>,
}

/// The host's own draw, from its agent's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPower {
    /// Draw without the GPUs (CPUs, memory, NICs, fans) at full load, W.
    pub base_w: Option<f64>,
    /// The most the whole host can draw, W.
    pub max_w: Option<f64>,
}

/// What a telemetry snapshot did not record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Devices not in the agent's inventory.
    pub unknown: Vec<String>,
    /// Readings refused as physically implausible, with why; the device counts as unseen.
    pub refused: Vec<(String, String)>,
    /// Readings recorded but worth an operator's look (a "sleeping" miner drawing its nameplate).
    pub flagged: Vec<(String, String)>,
}

/// One telemetry snapshot, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    pub miners: Vec<MinerObservation>,
    pub gpus: Vec<GpuObservation>,
    pub host: Option<v1::HostReading>,
}

/// One agent and what it reported.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub host_id: String,
    pub agent_version: String,
    pub connected: bool,
    /// The live session; `None` once disconnected.
    pub session: Option<SessionHandle>,
    pub connected_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub host: v1::HostInventory,
    pub host_power: HostPower,
    pub host_reading: Option<v1::HostReading>,
    pub miners: BTreeMap<String, MinerSlot>,
    pub gpus: BTreeMap<String, GpuSlot>,
}

/// An agent's confirmation of a miner's intent, as the summary counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confirmation {
    /// The agent's time of the CONFIRMED status.
    pub at: DateTime<Utc>,
    /// What the intent made of the miner.
    pub state: MinerState,
    /// What the confirming read-back measured.
    pub power_w: Option<f64>,
}

impl Confirmation {
    /// The agent's confirmation of a miner intent in the ledger, if it has one.
    pub fn of(d: &crate::store::DeviceIntent) -> Option<Self> {
        let st = d
            .status
            .as_ref()
            .filter(|st| st.phase == IntentPhase::Confirmed)?;
        let Target::Miner(target) = d.intent.target else {
            return None;
        };
        let state = target.confirmed_state();
        Some(Self {
            at: st.at,
            state,
            power_w: st.observed_power_w,
        })
    }
}

/// Counts and power sums over the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSummary {
    pub agents_connected: u32,
    pub miners_total: u32,
    pub miners_mining: u32,
    pub miners_sleeping: u32,
    pub miners_unreachable: u32,
    pub gpus_total: u32,
    pub measured_power_w: f64,
    /// Committed power: each device at the most it may draw given what is known of it; a device
    /// that cannot be seen counts at its maximum draw (DESIGN.md invariant 3).
    pub committed_power_w: f64,
}

/// The larger of two optional values; `None` only when both are.
fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// What the controller assumes where a miner's firmware tells nothing (stock Antminer firmware
/// measures no power and reports no nameplate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assumptions {
    /// Maximum draw of a miner whose maximum is unknown, W.
    pub unknown_miner_max_w: f64,
    /// Draw of a sleeping miner that measures nothing (control board and fans), W.
    pub sleeping_miner_w: f64,
}

/// What one host may declare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostLimits {
    pub max_devices: usize,
    pub max_power_w: f64,
}

/// The most a host's inventory says it can draw: every miner at its maximum (the assumption
/// where it tells none), every GPU at its maximum cap, and the host's own base (or its declared
/// maximum, where that is higher).
pub fn declared_max_w(entry: &AgentEntry, assume: &Assumptions) -> f64 {
    let miners: f64 = entry
        .miners
        .values()
        .map(|m| {
            max_of(m.info.nameplate_power_w, m.info.power_target_max_w)
                .unwrap_or(assume.unknown_miner_max_w)
        })
        .sum();
    let gpus: f64 = entry.gpus.values().map(|g| g.info.power_cap_max_w).sum();
    let host = entry.host_power.base_w.unwrap_or(0.0) + gpus;
    miners + host.max(entry.host_power.max_w.unwrap_or(0.0))
}

/// All agents known to this controller.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<BTreeMap<String, AgentEntry>>,
    next_session: AtomicU64,
}

/// What `connect` did.
#[derive(Debug)]
pub struct Connected {
    /// The new session's id; the session passes it to every later call.
    pub session_id: u64,
    /// The session it superseded, to be closed by the caller.
    pub superseded: Option<SessionHandle>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentEntry>> {
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an agent from its hello with the session's downlink. A host that already has a
    /// session is taken over by the new one (the old one is returned, to be closed). Readings of
    /// devices it still has are kept for display, marked restored: not believed until new ones
    /// arrive; so is each miner's last mining efficiency.
    pub fn connect(&self, mut entry: AgentEntry, downlink: Downlink) -> Connected {
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let mut agents = self.lock();
        let mut superseded = None;
        if let Some(old) = agents.remove(&entry.host_id) {
            superseded = old.session;
            for (id, slot) in old.miners {
                if let Some(new) = entry.miners.get_mut(&id) {
                    new.obs = slot.obs.map(|o| MinerObservation {
                        restored: true,
                        ..o
                    });
                    new.last_mining_j_per_th = slot.last_mining_j_per_th;
                    new.last_sleeping_w = slot.last_sleeping_w;
                }
            }
            for (id, slot) in old.gpus {
                if let Some(new) = entry.gpus.get_mut(&id) {
                    new.obs = slot.obs.map(|o| GpuObservation {
                        restored: true,
                        ..o
                    });
                }
            }
        }
        entry.connected = true;
        entry.session = Some(SessionHandle::new(session_id, downlink));
        agents.insert(entry.host_id.clone(), entry);
        Connected {
            session_id,
            superseded,
        }
    }

    /// Marks the host disconnected, if `session_id` is still its live session (a superseded
    /// session ending changes nothing). Whether it did.
    pub fn disconnect(&self, host_id: &str, session_id: u64) -> bool {
        let mut agents = self.lock();
        match agents.get_mut(host_id) {
            Some(a) if a.session.as_ref().is_some_and(|s| s.id == session_id) => {
                a.connected = false;
                a.session = None;
                true
            }
            _ => false,
        }
    }

    /// Whether `session_id` is the host's live session.
    pub fn is_live(&self, host_id: &str, session_id: u64) -> bool {
        self.lock()
            .get(host_id)
            .and_then(|a| a.session.as_ref())
            .is_some_and(|s| s.id == session_id)
    }

    /// Hands a message to the host's live session without waiting.
    pub fn send(&self, host_id: &str, msg: v1::ControllerMessage) -> Result<(), SendError> {
        let tx = self
            .lock()
            .get(host_id)
            .and_then(|a| a.session.as_ref())
            .map(|s| s.tx.clone())
            .ok_or_else(|| SendError::NotConnected {
                host_id: host_id.to_owned(),
            })?;
        tx.try_send(Ok(msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full {
                host_id: host_id.to_owned(),
            },
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected {
                host_id: host_id.to_owned(),
            },
        })
    }

    /// Whether a host may join with this inventory: no device another host declared, and no
    /// more devices or declared maximum power than one host is allowed (so a fake or broken
    /// agent cannot push the site's committed power past its cap by declaring a fleet).
    pub fn admit(
        &self,
        entry: &AgentEntry,
        limits: &HostLimits,
        assume: &Assumptions,
    ) -> Result<(), Status> {
        let devices = entry.miners.len() + entry.gpus.len();
        if devices > limits.max_devices {
            return Err(Status::resource_exhausted(format!(
                "hello: host `{}` declares {devices} devices; at most {} are allowed per host (agents.max_devices_per_host)",
                entry.host_id, limits.max_devices
            )));
        }
        let declared = declared_max_w(entry, assume);
        if declared > limits.max_power_w {
            return Err(Status::resource_exhausted(format!(
                "hello: host `{}` declares up to {declared:.0} W; at most {:.0} W is allowed per host (agents.max_host_power_w)",
                entry.host_id, limits.max_power_w
            )));
        }
        let agents = self.lock();
        for other in agents.values().filter(|a| a.host_id != entry.host_id) {
            if let Some(id) = entry
                .miners
                .keys()
                .chain(entry.gpus.keys())
                .find(|id| other.miners.contains_key(*id) || other.gpus.contains_key(*id))
            {
                return Err(Status::already_exists(format!(
                    "hello: device `{id}` belongs to host `{}`, not `{}` (forget that host first if it moved: pivotctl hosts forget {})",
                    other.host_id, entry.host_id, other.host_id
                )));
            }
        }
        Ok(())
    }

    /// Adds, disconnected, every host the stored intents name that the registry does not know,
    /// with the devices those intents are for. A restarted controller otherwise plans as if the
    /// hosts that have not reconnected yet drew nothing, and grants their power to others while
    /// their miners still run (found by the chaos run: site draw above the cap after a controller
    /// kill). Restored devices are unseen, so they count at their maximum (DESIGN.md invariant
    /// 3) until their agent says hello or an operator forgets the host. What they are is unknown:
    /// a miner counts at its intent's power target or the unknown-miner assumption, a GPU at the
    /// cap of its intent.
    pub fn restore<'a>(&self, intents: impl IntoIterator<Item = &'a crate::store::DeviceIntent>) {
        use pivot_proto::model::{MinerTarget, Target};
        let mut agents = self.lock();
        let known: Vec<String> = agents.keys().cloned().collect();
        for di in intents {
            if known.contains(&di.host_id) {
                continue;
            }
            let now = di.issued_at;
            let entry = agents
                .entry(di.host_id.clone())
                .or_insert_with(|| AgentEntry {
                    host_id: di.host_id.clone(),
                    agent_version: String::new(),
                    connected: false,
                    session: None,
                    connected_at: now,
                    last_seen: now,
                    host: v1::HostInventory::default(),
                    host_power: HostPower::default(),
                    host_reading: None,
                    miners: BTreeMap::new(),
                    gpus: BTreeMap::new(),
                });
            let id = di.intent.device_id.clone();
            match di.intent.target {
                Target::Miner(t) => {
                    let target_w = match t {
                        MinerTarget::Run { power_target_w } => power_target_w.map(f64::from),
                        MinerTarget::Sleep => None,
                    };
                    entry.miners.insert(
                        id.clone(),
                        MinerSlot {
                            info: MinerInfo {
                                device_id: id.clone(),
                                dialect: None,
                                nameplate_power_w: None,
                                power_target_max_w: target_w,
                                inventory: v1::MinerInventory {
                                    device_id: id,
                                    ..Default::default()
                                },
                            },
                            obs: None,
                            last_mining_j_per_th: None,
                            last_sleeping_w: None,
                        },
                    );
                }
                Target::Gpu { power_cap_w } => {
                    entry.gpus.insert(
                        id.clone(),
                        GpuSlot {
                            info: GpuInfo {
                                device_id: id.clone(),
                                power_cap_max_w: f64::from(power_cap_w),
                                inventory: v1::GpuInventory {
                                    device_id: id,
                                    ..Default::default()
                                },
                            },
                            obs: None,
                        },
                    );
                }
                // A host's workload is not a device: the host itself is now known.
                Target::Workload { .. } => {}
            }
        }
    }

    /// Removes a host that is not connected, with its devices. Whether it was known.
    pub fn forget(&self, host_id: &str) -> Result<bool, Status> {
        let mut agents = self.lock();
        match agents.get(host_id) {
            None => Ok(false),
            Some(a) if a.session.is_some() => Err(Status::failed_precondition(format!(
                "host `{host_id}` is connected; stop its agent first"
            ))),
            Some(_) => {
                agents.remove(host_id);
                Ok(true)
            }
        }
    }

    /// Hosts with a live session.
    pub fn connected_hosts(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|a| a.session.is_some())
            .map(|a| a.host_id.clone())
            .collect()
    }

    /// The host a device belongs to, if any agent declared it.
    pub fn host_of(&self, device_id: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|a| a.miners.contains_key(device_id) || a.gpus.contains_key(device_id))
            .map(|a| a.host_id.clone())
    }

    /// Records a telemetry snapshot from the host's live session; from any other session it is
    /// ignored (`None`). Readings for devices not in the agent's inventory, and readings outside
    /// physical bounds (which leave the device unseen, counted at its maximum), are returned and
    /// otherwise ignored.
    pub fn observe(
        &self,
        host_id: &str,
        session_id: u64,
        t: Telemetry,
        now: DateTime<Utc>,
        assume: &Assumptions,
    ) -> Option<Observed> {
        let mut agents = self.lock();
        let agent = agents
            .get_mut(host_id)
            .filter(|a| a.session.as_ref().is_some_and(|s| s.id == session_id))?;
        let mut out = Observed::default();
        agent.last_seen = now;
        if let Some(h) = t.host {
            match bounds::host(&h, &agent.host_power) {
                Ok(()) => agent.host_reading = Some(h),
                Err(why) => {
                    agent.host_reading = None;
                    out.refused.push((format!("host/{host_id}"), why));
                }
            }
        }
        for m in t.miners {
            match agent.miners.get_mut(&m.reading.device_id) {
                Some(slot) => match bounds::miner(&m, &slot.info, assume) {
                    Ok(flag) => {
                        let flagged = flag.is_some();
                        if let Some(f) = flag {
                            out.flagged.push((m.reading.device_id.clone(), f));
                        }
                        if let Some(e) = m.steady_j_per_th(
                            slot.info.nameplate_power_w,
                            slot.info.inventory.nameplate_hashrate_ths,
                        ) {
                            slot.last_mining_j_per_th = Some(e);
                        }
                        // Asleep and not flagged as drawing like a miner that is not: its
                        // standby draw.
                        if m.state == MinerState::Sleeping
                            && !flagged
                            && let Some(p) = m.power_w.filter(|p| p.is_finite() && *p >= 0.0)
                        {
                            slot.last_sleeping_w = Some(p);
                        }
                        slot.obs = Some(m);
                    }
                    Err(why) => {
                        slot.obs = None;
                        out.refused.push((m.reading.device_id, why));
                    }
                },
                None => out.unknown.push(m.reading.device_id),
            }
        }
        for g in t.gpus {
            match agent.gpus.get_mut(&g.reading.device_id) {
                Some(slot) => match bounds::gpu(&g, &slot.info) {
                    Ok(()) => slot.obs = Some(g),
                    Err(why) => {
                        slot.obs = None;
                        out.refused.push((g.reading.device_id, why));
                    }
                },
                None => out.unknown.push(g.reading.device_id),
            }
        }
        Some(out)
    }

    pub fn agents(&self) -> Vec<AgentEntry> {
        self.lock().values().cloned().collect()
    }

    /// Runs `f` over the agents without copying them.
    pub fn with_agents<T>(&self, f: impl FnOnce(&BTreeMap<String, AgentEntry>) -> T) -> T {
        f(&self.lock())
    }

    /// Counts and power sums; a GPU host counts at its base draw (or `base_w_per_gpu` per GPU where
    /// its agent declares none) plus its GPU caps, never at the caps alone.
    pub fn summary(&self, assume: &Assumptions, base_w_per_gpu: f64) -> FleetSummary {
        self.summary_with(assume, base_w_per_gpu, |_, _| None)
    }

    /// As [`Registry::summary`], with the agents' confirmations: a miner whose intent was
    /// confirmed after its last telemetry counts as the confirmation shows it (asleep at the
    /// power the read-back measured), as the planner counts it (`engine::units`). An agent
    /// confirms on the control call's own read-back, which can be seconds newer than its
    /// telemetry; counting the older reading would show a miner put to sleep as still drawing.
    pub fn summary_with(
        &self,
        assume: &Assumptions,
        base_w_per_gpu: f64,
        confirmed: impl Fn(&str, &str) -> Option<Confirmation>,
    ) -> FleetSummary {
        let agents = self.lock();
        let mut s = FleetSummary::default();
        for a in agents.values() {
            if a.connected {
                s.agents_connected += 1;
            }
            if !a.gpus.is_empty() {
                s.committed_power_w += a
                    .host_power
                    .base_w
                    .unwrap_or(base_w_per_gpu * a.gpus.len() as f64);
            }
            for slot in a.miners.values() {
                let info = &slot.info;
                s.miners_total += 1;
                // What the miner may draw at most: its nameplate or top power target, and where
                // the firmware says neither, the site's assumption (never zero).
                let max = max_of(info.nameplate_power_w, info.power_target_max_w)
                    .or(Some(assume.unknown_miner_max_w));
                let seen = slot
                    .obs
                    .as_ref()
                    .filter(|o| a.connected && o.reachable && !o.restored);
                match seen {
                    None => {
                        s.miners_unreachable += 1;
                        s.committed_power_w += max.unwrap_or(0.0);
                    }
                    Some(o) => {
                        s.measured_power_w += o.power_w.unwrap_or(0.0);
                        let (state, power_w) = match confirmed(&a.host_id, &info.device_id)
                            .filter(|c| c.at > o.observed_at)
                        {
                            Some(c) => (c.state, c.power_w.or(o.power_w)),
                            None => (o.state, o.power_w),
                        };
                        match state {
                            MinerState::Mining => s.miners_mining += 1,
                            MinerState::Sleeping => s.miners_sleeping += 1,
                            _ => {}
                        }
                        // A sleeping miner is committed at what it draws (or the site's assumption
                        // for an asleep miner that measures nothing). A miner with a power-target
                        // range that reports its setting runs at that setting, as the planner
                        // counts it (`planner::loads`): the top of a range is an overclock
                        // (LuxOS's highest profile is 1.6 times the stock one) it is not set to.
                        // Any other may draw up to its maximum.
                        let committed = match (state, info.power_target_range_w(), o.power_target_w)
                        {
                            (MinerState::Sleeping, _, _) => {
                                power_w.or(Some(assume.sleeping_miner_w))
                            }
                            (_, Some((min_w, _)), Some(set_w)) if set_w > 0.0 => {
                                max_of(Some(set_w.max(min_w)), power_w)
                            }
                            _ => max_of(max_of(max, power_w), o.power_target_w),
                        };
                        s.committed_power_w += committed.unwrap_or(0.0);
                    }
                }
            }
            for slot in a.gpus.values() {
                s.gpus_total += 1;
                match slot.obs.as_ref().filter(|o| a.connected && !o.restored) {
                    Some(o) => {
                        s.measured_power_w += o.power_w.unwrap_or(0.0);
                        s.committed_power_w += o
                            .enforced_power_limit_w
                            .unwrap_or(slot.info.power_cap_max_w);
                    }
                    None => s.committed_power_w += slot.info.power_cap_max_w,
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner(id: &str, nameplate: f64) -> (String, MinerSlot) {
        (
            id.to_owned(),
            MinerSlot {
                info: MinerInfo {
                    device_id: id.to_owned(),
                    dialect: Some(MinerDialect::Antminer),
                    nameplate_power_w: Some(nameplate),
                    power_target_max_w: None,
                    inventory: v1::MinerInventory::default(),
                },
                obs: None,
                last_mining_j_per_th: None,
                last_sleeping_w: None,
            },
        )
    }

    fn agent(miners: Vec<(String, MinerSlot)>) -> AgentEntry {
        let now = Utc::now();
        AgentEntry {
            host_id: "h1".into(),
            agent_version: "0.1.0".into(),
            connected: true,
            session: None,
            connected_at: now,
            last_seen: now,
            host: v1::HostInventory::default(),
            host_power: HostPower::default(),
            host_reading: None,
            miners: miners.into_iter().collect(),
            gpus: BTreeMap::new(),
        }
    }

    fn obs(id: &str, state: MinerState, power: f64) -> MinerObservation {
        MinerObservation {
            reachable: true,
            state,
            power_w: Some(power),
            hashrate_ths: Some(if state == MinerState::Mining {
                100.0
            } else {
                0.0
            }),
            power_target_w: None,
            observed_at: Utc::now(),
            restored: false,
            reading: v1::MinerReading {
                device_id: id.into(),
                ..Default::default()
            },
        }
    }

    fn downlink() -> (
        Downlink,
        mpsc::Receiver<Result<v1::ControllerMessage, Status>>,
    ) {
        mpsc::channel(4)
    }

    const ASSUME: Assumptions = Assumptions {
        unknown_miner_max_w: 3600.0,
        sleeping_miner_w: 100.0,
    };

    fn observe(r: &Registry, session: u64, o: Vec<MinerObservation>) -> bool {
        let t = Telemetry {
            miners: o,
            ..Default::default()
        };
        r.observe("h1", session, t, Utc::now(), &ASSUME).is_some()
    }

    #[test]
    fn a_miner_read_asleep_keeps_its_standby_draw_while_it_mines_again() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3000.0)]), tx);
        let sleeping_w = || r.with_agents(|a| a["h1"].miners["a"].last_sleeping_w);
        assert!(observe(
            &r,
            c.session_id,
            vec![obs("a", MinerState::Mining, 2950.0)]
        ));
        assert_eq!(sleeping_w(), None);
        assert!(observe(
            &r,
            c.session_id,
            vec![obs("a", MinerState::Sleeping, 14.0)]
        ));
        assert_eq!(sleeping_w(), Some(14.0));
        assert!(observe(
            &r,
            c.session_id,
            vec![obs("a", MinerState::Mining, 2950.0)]
        ));
        assert_eq!(sleeping_w(), Some(14.0), "kept while it mines");
        // "Asleep" drawing half its nameplate is flagged, not learned.
        assert!(observe(
            &r,
            c.session_id,
            vec![obs("a", MinerState::Sleeping, 1600.0)]
        ));
        assert_eq!(sleeping_w(), Some(14.0));
    }

    #[test]
    fn a_miner_with_a_power_target_range_is_committed_at_its_setting_not_the_range_top() {
        // A LuxOS S21: profiles from 1,500 to 5,590 W, running its 3,500 W stock profile. The
        // planner counts it at 3,500 W; the site status counted 5,590 W, so on pivot-site's
        // 240 miners `pivotctl status` showed 0.939 MW committed against a 0.830 MW cap that
        // the plan (0.828 MW) kept.
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let (id, mut slot) = miner("lux", 3500.0);
        slot.info.nameplate_power_w = None;
        slot.info.power_target_max_w = Some(5590.0);
        slot.info.inventory.capabilities = Some(v1::MinerCapabilities {
            can_sleep: true,
            power_target: true,
            power_target_min_w: Some(1500),
            power_target_max_w: Some(5590),
            power_target_steps_w: vec![1500, 2950, 3500, 4300, 5590],
        });
        assert_eq!(slot.info.power_target_range_w(), Some((1500.0, 5590.0)));
        let c = r.connect(agent(vec![(id, slot)]), tx);
        let committed = |set: Option<f64>, power: f64| {
            let mut o = obs("lux", MinerState::Mining, power);
            o.power_target_w = set;
            assert!(observe(&r, c.session_id, vec![o]));
            r.summary(&ASSUME, 575.0).committed_power_w
        };
        assert_eq!(committed(Some(3500.0), 3420.0), 3500.0);
        // A reading above the setting is believed.
        assert_eq!(committed(Some(3500.0), 3610.0), 3610.0);
        // Trimmed to 2,950 W: committed there.
        assert_eq!(committed(Some(2950.0), 2900.0), 2950.0);
        // No setting reported: the top of the range, as before.
        assert_eq!(committed(None, 3420.0), 5590.0);
    }

    #[test]
    fn a_confirmation_newer_than_the_telemetry_counts_and_an_older_one_does_not() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3000.0)]), tx);
        assert!(observe(
            &r,
            c.session_id,
            vec![obs("a", MinerState::Mining, 2950.0)]
        ));
        let seen_at = r.agents()[0].miners["a"].obs.as_ref().unwrap().observed_at;
        let asleep = |at| {
            move |host: &str, device: &str| {
                (host == "h1" && device == "a").then_some(Confirmation {
                    at,
                    state: MinerState::Sleeping,
                    power_w: Some(40.0),
                })
            }
        };
        let newer = r.summary_with(
            &ASSUME,
            575.0,
            asleep(seen_at + chrono::Duration::seconds(2)),
        );
        assert_eq!((newer.miners_sleeping, newer.miners_mining), (1, 0));
        assert_eq!(newer.committed_power_w, 40.0);
        // What was measured stays what telemetry measured.
        assert_eq!(newer.measured_power_w, 2950.0);
        let older = r.summary_with(
            &ASSUME,
            575.0,
            asleep(seen_at - chrono::Duration::seconds(2)),
        );
        assert_eq!((older.miners_sleeping, older.miners_mining), (0, 1));
        assert_eq!(older.committed_power_w, 3000.0);
        assert_eq!(r.summary(&ASSUME, 575.0), older);
    }

    #[test]
    fn a_miner_that_tells_nothing_counts_at_the_assumptions() {
        let r = Registry::default();
        let mut m = miner("a", 0.0);
        m.1.info.nameplate_power_w = None;
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![m]), tx);
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 3600.0);
        let mut o = obs("a", MinerState::Sleeping, 0.0);
        o.power_w = None;
        assert!(observe(&r, c.session_id, vec![o]));
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 100.0);
    }

    #[test]
    fn unseen_devices_count_at_their_maximum() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3500.0), miner("b", 3000.0)]), tx);
        let s = r.summary(&ASSUME, 575.0);
        assert_eq!(s.miners_unreachable, 2);
        assert_eq!(s.committed_power_w, 6500.0);
        observe(&r, c.session_id, vec![obs("a", MinerState::Sleeping, 40.0)]);
        let s = r.summary(&ASSUME, 575.0);
        assert_eq!(s.miners_sleeping, 1);
        assert_eq!(s.committed_power_w, 3040.0);
        assert_eq!(s.measured_power_w, 40.0);
        assert!(r.disconnect("h1", c.session_id));
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 6500.0);
    }

    #[test]
    fn readings_for_unknown_devices_are_reported() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3500.0)]), tx);
        let t = Telemetry {
            miners: vec![obs("zzz", MinerState::Mining, 1.0)],
            ..Default::default()
        };
        let seen = r
            .observe("h1", c.session_id, t, Utc::now(), &ASSUME)
            .unwrap();
        assert_eq!(seen.unknown, vec!["zzz".to_owned()]);
    }

    #[test]
    fn a_new_session_supersedes_the_old_which_then_changes_nothing() {
        let r = Registry::default();
        let (tx1, mut rx1) = downlink();
        let first = r.connect(agent(vec![miner("a", 3500.0)]), tx1);
        observe(
            &r,
            first.session_id,
            vec![obs("a", MinerState::Sleeping, 30.0)],
        );
        let (tx2, mut rx2) = downlink();
        let second = r.connect(agent(vec![miner("a", 3500.0)]), tx2);
        assert_eq!(
            second.superseded.as_ref().map(|s| s.id),
            Some(first.session_id)
        );
        // The reading from the old session is kept for display but not believed.
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 3500.0);
        // The old session's telemetry and its end change nothing.
        assert!(!observe(
            &r,
            first.session_id,
            vec![obs("a", MinerState::Sleeping, 30.0)]
        ));
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 3500.0);
        assert!(!r.disconnect("h1", first.session_id));
        assert_eq!(r.connected_hosts(), ["h1"]);
        // Messages go to the live session only.
        r.send("h1", v1::ControllerMessage::default()).unwrap();
        assert!(rx2.try_recv().is_ok());
        assert!(rx1.try_recv().is_err());
        assert!(observe(
            &r,
            second.session_id,
            vec![obs("a", MinerState::Sleeping, 30.0)]
        ));
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 30.0);
        assert!(r.disconnect("h1", second.session_id));
        assert!(matches!(
            r.send("h1", v1::ControllerMessage::default()),
            Err(SendError::NotConnected { .. })
        ));
    }

    #[test]
    fn absurd_readings_are_refused_and_the_device_counts_unseen() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3500.0), miner("b", 3500.0)]), tx);
        let mut huge = obs("a", MinerState::Mining, 1e30);
        huge.hashrate_ths = Some(100.0);
        let mut negative = obs("b", MinerState::Mining, 3000.0);
        negative.hashrate_ths = Some(-100.0);
        let t = Telemetry {
            miners: vec![huge, negative],
            ..Default::default()
        };
        let seen = r
            .observe("h1", c.session_id, t, Utc::now(), &ASSUME)
            .unwrap();
        assert_eq!(seen.refused.len(), 2, "{seen:?}");
        assert!(seen.refused[0].1.contains("power"), "{seen:?}");
        assert!(seen.refused[1].1.contains("hashrate"), "{seen:?}");
        // Both count at their maximum, never at 1e30 W.
        assert_eq!(r.summary(&ASSUME, 575.0).committed_power_w, 7000.0);
        let mut loud = obs("a", MinerState::Sleeping, 3400.0);
        loud.hashrate_ths = Some(0.0);
        let t = Telemetry {
            miners: vec![loud],
            ..Default::default()
        };
        let seen = r
            .observe("h1", c.session_id, t, Utc::now(), &ASSUME)
            .unwrap();
        assert_eq!(seen.flagged.len(), 1, "{seen:?}");
    }

    /// A miner read while ramping (a sliver of hashrate at a draw that has not followed) must
    /// not teach the planner that it is hopelessly inefficient, nor far better than its rating.
    #[test]
    fn a_miners_efficiency_is_learned_from_steady_mining_only() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let mut m = miner("a", 3500.0);
        m.1.info.inventory.nameplate_hashrate_ths = Some(200.0);
        let c = r.connect(agent(vec![m]), tx);
        let reading = |power: f64, ths: f64| {
            let mut o = obs("a", MinerState::Mining, power);
            o.hashrate_ths = Some(ths);
            o
        };
        let learned = || r.with_agents(|a| a["h1"].miners["a"].last_mining_j_per_th);
        // Ramping up: 20 W for 0.19 TH/s, then 600 W for 20 TH/s — a tenth of its nameplate.
        observe(&r, c.session_id, vec![reading(20.0, 0.19)]);
        observe(&r, c.session_id, vec![reading(600.0, 20.0)]);
        assert_eq!(learned(), None);
        observe(&r, c.session_id, vec![reading(3400.0, 200.0)]);
        assert_eq!(learned(), Some(17.0));
        // Past half its hashrate but at more than twice its rated 17.5 J/TH (a draw that lags a
        // ramp down), or at less than half of it (one that lags a ramp up): not believed.
        observe(&r, c.session_id, vec![reading(3600.0, 100.0)]);
        observe(&r, c.session_id, vec![reading(1500.0, 190.0)]);
        assert_eq!(learned(), Some(17.0));
        // A hashboard of three lost (1.5 times) is.
        observe(&r, c.session_id, vec![reading(3400.0, 133.0)]);
        assert!(learned().is_some_and(|e| (e - 3400.0 / 133.0).abs() < 1e-9));
        // Trimmed to 2,200 W it hashes at 16 J/TH, better than at full power: not learned. At
        // its own setting of 3,400 W, or with no setting reported, it is.
        let mut trimmed = reading(2200.0, 137.5);
        trimmed.power_target_w = Some(2200.0);
        observe(&r, c.session_id, vec![trimmed]);
        assert!(learned().is_some_and(|e| (e - 3400.0 / 133.0).abs() < 1e-9));
        let mut full = reading(3400.0, 200.0);
        full.power_target_w = Some(3400.0);
        observe(&r, c.session_id, vec![full]);
        assert_eq!(learned(), Some(17.0));
    }

    #[test]
    fn a_miners_efficiency_survives_its_sleep_and_a_reconnect() {
        let r = Registry::default();
        let (tx, _rx) = downlink();
        let c = r.connect(agent(vec![miner("a", 3500.0)]), tx);
        observe(&r, c.session_id, vec![obs("a", MinerState::Mining, 3000.0)]);
        observe(&r, c.session_id, vec![obs("a", MinerState::Sleeping, 30.0)]);
        let (tx, _rx) = downlink();
        r.connect(agent(vec![miner("a", 3500.0)]), tx);
        let e = r.with_agents(|a| a["h1"].miners["a"].last_mining_j_per_th);
        assert_eq!(e, Some(30.0));
    }

    /// Found by the chaos run (tests/tests/chaos): a controller killed and restarted granted a
    /// reconnected host's miners while another host, not back yet, still ran its own.
    #[test]
    fn a_restarted_controller_counts_hosts_not_back_yet_at_their_maximum() {
        use crate::config::{Config, NoEnv};
        use crate::intents::{Ledger, NewIntent};
        use crate::store::{SqliteStore, Store};
        use pivot_proto::model::{MinerTarget, Target};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
        let now = Utc::now();
        let intent = |device: &str, target: Target| NewIntent {
            host_id: "h0".into(),
            device_id: device.into(),
            target,
            reason: "test".into(),
            plan_id: "p1".into(),
            phase: 0,
            before_w: None,
            setting_before_w: None,
        };
        Ledger::load(Arc::clone(&store))
            .unwrap()
            .issue(
                vec![
                    intent(
                        "miner/a",
                        Target::Miner(MinerTarget::Run {
                            power_target_w: Some(5589),
                        }),
                    ),
                    intent("miner/b", Target::Miner(MinerTarget::Sleep)),
                    intent("gpu/g", Target::Gpu { power_cap_w: 700 }),
                ],
                now + chrono::Duration::seconds(30),
                now,
            )
            .unwrap();
        let text = format!(
            "[site]\nid = \"t\"\ncap_w = 100000\nreserve_w = 0\n[store]\npath = \"{}\"\n",
            db.display()
        );
        let config = Config::parse(&text, std::path::Path::new("c.toml"), &NoEnv).unwrap();
        let assume = config.agents.assumptions();
        let ctl = crate::Controller::new(config, store).unwrap();
        let s = ctl.registry.summary(&assume, 0.0);
        assert_eq!(s.agents_connected, 0);
        assert_eq!((s.miners_total, s.gpus_total), (2, 1), "{s:?}");
        // Unseen: the running miner at its power target, the sleeping one at the assumption.
        assert!(
            s.committed_power_w >= 5589.0 + assume.unknown_miner_max_w,
            "{s:?}"
        );
        // Until its agent is back or an operator forgets it.
        assert!(ctl.registry.forget("h0").unwrap());
        assert_eq!(ctl.registry.summary(&assume, 0.0).committed_power_w, 0.0);
    }

    /// Found by the chaos run: a Braiins S21 (200 TH/s, 3500 W) the planner ran at a 5589 W
    /// power target hashed 305 TH/s, above 1.5 × its nameplate hashrate, and every reading was
    /// refused while it ran there.
    #[test]
    fn a_miner_run_at_a_target_above_nameplate_may_hash_above_it() {
        let mut info = miner("m", 3500.0).1.info;
        info.inventory.nameplate_hashrate_ths = Some(200.0);
        let reading = |ths: f64| MinerObservation {
            reachable: true,
            state: MinerState::Mining,
            // Within 1.5 × the nameplate either way: only the hashrate is in question.
            power_w: Some(5000.0),
            hashrate_ths: Some(ths),
            power_target_w: Some(5000.0),
            observed_at: Utc::now(),
            restored: false,
            reading: v1::MinerReading::default(),
        };
        let assume = Assumptions {
            unknown_miner_max_w: 3500.0,
            sleeping_miner_w: 20.0,
        };
        info.power_target_max_w = Some(5600.0);
        assert!(bounds::miner(&reading(304.8), &info, &assume).is_ok());
        assert!(bounds::miner(&reading(1e6), &info, &assume).is_err());
        // Without a target above the nameplate, the nameplate bound holds.
        info.power_target_max_w = None;
        let e = bounds::miner(&reading(304.8), &info, &assume).unwrap_err();
        assert!(e.contains("hashrate"), "{e}");
    }
}
