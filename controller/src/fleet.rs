//! The registry of agents and their devices, and the observed state the controller plans from.
//!
//! Everything here was validated at the gRPC edge (`api::agent`); the registry trusts it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use pivot_proto::model::{MinerDialect, MinerState};
use pivot_proto::v1;

/// A miner as its agent identified it.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerInfo {
    pub device_id: String,
    pub dialect: MinerDialect,
    pub nameplate_power_w: Option<f64>,
    pub power_target_max_w: Option<f64>,
    /// The validated inventory message, for display.
    pub inventory: v1::MinerInventory,
}

/// A miner's last reading.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerObservation {
    pub reachable: bool,
    pub state: MinerState,
    pub power_w: Option<f64>,
    pub power_target_w: Option<f64>,
    pub observed_at: DateTime<Utc>,
    pub reading: v1::MinerReading,
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
    pub reading: v1::GpuReading,
}

/// One agent and what it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEntry {
    pub host_id: String,
    pub agent_version: String,
    pub connected: bool,
    pub connected_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub host: v1::HostInventory,
    pub host_reading: Option<v1::HostReading>,
    pub miners: BTreeMap<String, (MinerInfo, Option<MinerObservation>)>,
    pub gpus: BTreeMap<String, (GpuInfo, Option<GpuObservation>)>,
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

/// All agents known to this controller.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<BTreeMap<String, AgentEntry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentEntry>> {
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers (or re-registers) an agent from its hello; keeps observations of devices it still has.
    pub fn connect(&self, entry: AgentEntry) {
        let mut agents = self.lock();
        let mut entry = entry;
        if let Some(old) = agents.remove(&entry.host_id) {
            for (id, (_, obs)) in old.miners {
                if let Some(slot) = entry.miners.get_mut(&id) {
                    slot.1 = obs;
                }
            }
            for (id, (_, obs)) in old.gpus {
                if let Some(slot) = entry.gpus.get_mut(&id) {
                    slot.1 = obs;
                }
            }
        }
        agents.insert(entry.host_id.clone(), entry);
    }

    pub fn disconnect(&self, host_id: &str) {
        if let Some(a) = self.lock().get_mut(host_id) {
            a.connected = false;
        }
    }

    /// Records a telemetry snapshot. Readings for devices not in the agent's inventory are
    /// returned by id and otherwise ignored.
    pub fn observe(
        &self,
        host_id: &str,
        miners: Vec<MinerObservation>,
        gpus: Vec<GpuObservation>,
        host: Option<v1::HostReading>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let mut unknown = Vec::new();
        let mut agents = self.lock();
        let Some(agent) = agents.get_mut(host_id) else {
            return miners.into_iter().map(|m| m.reading.device_id).collect();
        };
        agent.last_seen = now;
        if host.is_some() {
            agent.host_reading = host;
        }
        for m in miners {
            match agent.miners.get_mut(&m.reading.device_id) {
                Some(slot) => slot.1 = Some(m),
                None => unknown.push(m.reading.device_id),
            }
        }
        for g in gpus {
            match agent.gpus.get_mut(&g.reading.device_id) {
                Some(slot) => slot.1 = Some(g),
                None => unknown.push(g.reading.device_id),
            }
        }
        unknown
    }

    pub fn agents(&self) -> Vec<AgentEntry> {
        self.lock().values().cloned().collect()
    }

    pub fn summary(&self, assume: &Assumptions) -> FleetSummary {
        let agents = self.lock();
        let mut s = FleetSummary::default();
        for a in agents.values() {
            if a.connected {
                s.agents_connected += 1;
            }
            for (info, obs) in a.miners.values() {
                s.miners_total += 1;
                // What the miner may draw at most: its nameplate or top power target, and where
                // the firmware says neither, the site's assumption (never zero).
                let max = max_of(info.nameplate_power_w, info.power_target_max_w)
                    .or(Some(assume.unknown_miner_max_w));
                let seen = obs.as_ref().filter(|o| a.connected && o.reachable);
                match seen {
                    None => {
                        s.miners_unreachable += 1;
                        s.committed_power_w += max.unwrap_or(0.0);
                    }
                    Some(o) => {
                        match o.state {
                            MinerState::Mining => s.miners_mining += 1,
                            MinerState::Sleeping => s.miners_sleeping += 1,
                            _ => {}
                        }
                        s.measured_power_w += o.power_w.unwrap_or(0.0);
                        // A sleeping miner is committed at what it draws (or the site's assumption
                        // for an asleep miner that measures nothing); any other state may draw up
                        // to its maximum.
                        let committed = if o.state == MinerState::Sleeping {
                            o.power_w.or(Some(assume.sleeping_miner_w))
                        } else {
                            max_of(max_of(max, o.power_w), o.power_target_w)
                        };
                        s.committed_power_w += committed.unwrap_or(0.0);
                    }
                }
            }
            for (info, obs) in a.gpus.values() {
                s.gpus_total += 1;
                match obs.as_ref().filter(|_| a.connected) {
                    Some(o) => {
                        s.measured_power_w += o.power_w.unwrap_or(0.0);
                        s.committed_power_w +=
                            o.enforced_power_limit_w.unwrap_or(info.power_cap_max_w);
                    }
                    None => s.committed_power_w += info.power_cap_max_w,
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner(id: &str, nameplate: f64) -> (String, (MinerInfo, Option<MinerObservation>)) {
        (
            id.to_owned(),
            (
                MinerInfo {
                    device_id: id.to_owned(),
                    dialect: MinerDialect::Antminer,
                    nameplate_power_w: Some(nameplate),
                    power_target_max_w: None,
                    inventory: v1::MinerInventory::default(),
                },
                None,
            ),
        )
    }

    fn agent(miners: Vec<(String, (MinerInfo, Option<MinerObservation>))>) -> AgentEntry {
        let now = Utc::now();
        AgentEntry {
            host_id: "h1".into(),
            agent_version: "0.1.0".into(),
            connected: true,
            connected_at: now,
            last_seen: now,
            host: v1::HostInventory::default(),
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
            power_target_w: None,
            observed_at: Utc::now(),
            reading: v1::MinerReading {
                device_id: id.into(),
                ..Default::default()
            },
        }
    }

    const ASSUME: Assumptions = Assumptions {
        unknown_miner_max_w: 3600.0,
        sleeping_miner_w: 100.0,
    };

    #[test]
    fn a_miner_that_tells_nothing_counts_at_the_assumptions() {
        let r = Registry::default();
        let mut m = miner("a", 0.0);
        m.1.0.nameplate_power_w = None;
        r.connect(agent(vec![m]));
        assert_eq!(r.summary(&ASSUME).committed_power_w, 3600.0);
        let mut o = obs("a", MinerState::Sleeping, 0.0);
        o.power_w = None;
        r.observe("h1", vec![o], vec![], None, Utc::now());
        assert_eq!(r.summary(&ASSUME).committed_power_w, 100.0);
    }

    #[test]
    fn unseen_devices_count_at_their_maximum() {
        let r = Registry::default();
        r.connect(agent(vec![miner("a", 3500.0), miner("b", 3000.0)]));
        let s = r.summary(&ASSUME);
        assert_eq!(s.miners_unreachable, 2);
        assert_eq!(s.committed_power_w, 6500.0);
        r.observe(
            "h1",
            vec![obs("a", MinerState::Sleeping, 40.0)],
            vec![],
            None,
            Utc::now(),
        );
        let s = r.summary(&ASSUME);
        assert_eq!(s.miners_sleeping, 1);
        assert_eq!(s.committed_power_w, 3040.0);
        assert_eq!(s.measured_power_w, 40.0);
        r.disconnect("h1");
        assert_eq!(r.summary(&ASSUME).committed_power_w, 6500.0);
    }

    #[test]
    fn readings_for_unknown_devices_are_reported() {
        let r = Registry::default();
        r.connect(agent(vec![miner("a", 3500.0)]));
        let unknown = r.observe(
            "h1",
            vec![obs("zzz", MinerState::Mining, 1.0)],
            vec![],
            None,
            Utc::now(),
        );
        assert_eq!(unknown, vec!["zzz".to_owned()]);
    }
}
