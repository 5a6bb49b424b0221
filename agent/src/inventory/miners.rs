//! Miners in the daemon: discovery into device slots, the actuator the reconciler drives, the
//! rediscovery of configured miners that were missing, and their shapes on the wire.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pivot_proto::model::{MinerDialect, MinerState, MinerTarget, Target};
use pivot_proto::v1;
use tracing::{debug, info, warn};

use crate::config::{Config, MinerTarget as ConfiguredMiner};
use crate::miner::nameplate::{self, Nameplate};
use crate::miner::verify::read_back_pauses;
use crate::miner::{
    Capabilities, Credentials, DriverContext, DriverOptions, Identity, MinerDriver, MinerError,
    Reading, Timeouts, detect, driver_for,
};
use crate::reconcile::{Actuator, ApplyError, Device, Limits, Observed, RaiseGuard, rules};

/// One miner this agent drives.
#[derive(Clone)]
pub struct MinerSlot {
    pub device_id: String,
    pub driver: Arc<dyn MinerDriver>,
    pub identity: Identity,
    /// From the configuration, else from the model it names (see [`nameplate`]).
    pub nameplate: Option<Nameplate>,
    /// The newest reading a control call took, which the next poll uses instead of reading the
    /// miner again.
    pub control_read: Arc<ControlRead>,
}

/// The reading a control call of one miner ended with (its read-back: a whole `read`, as a poll
/// takes it), kept for the next sweep. Right after a curtail every miner has just been read; a
/// sweep soon after read them all again, about two CPU-seconds of the agents and the miners at
/// 10,000 (docs/BENCHMARKS.md), for nothing a poll would not already know.
///
/// It also tells whether a control call is on the miner now: a sweep that meets one waits for
/// its read-back rather than reading the miner in the middle of the command (a poll then raced
/// the command — an Antminer CGI restarting cgminer failed it, a LuxOS one crossed the session
/// — and, a curtail and a sweep together, every miner was read twice).
#[derive(Debug, Default)]
pub struct ControlRead {
    kept: std::sync::Mutex<Option<(tokio::time::Instant, Reading)>>,
    calls: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

/// A control call on the miner, while alive.
pub struct CallGuard<'a>(&'a ControlRead);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0
            .calls
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl ControlRead {
    fn call(&self) -> CallGuard<'_> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        CallGuard(self)
    }

    /// Whether a control call is on the miner now.
    pub fn in_call(&self) -> bool {
        self.calls.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Waits until no control call is on the miner, `within` at most; returns at once when
    /// none is (a sweep asks this of every miner: no clock read, no lock, then).
    pub async fn calls_ended(&self, within: Duration) {
        if !self.in_call() {
            return;
        }
        let until = tokio::time::Instant::now() + within;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.in_call() || tokio::time::timeout_at(until, ended).await.is_err() {
                return;
            }
        }
    }

    fn put(&self, reading: Reading) {
        *self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((tokio::time::Instant::now(), reading));
    }

    /// The reading kept, with when it was taken, if that was less than `within` ago; each reading
    /// stands in for one poll at most.
    pub fn take_within(&self, within: Duration) -> Option<(Reading, tokio::time::Instant)> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        kept.filter(|(at, _)| at.elapsed() < within)
            .map(|(at, r)| (r, at))
    }
}

impl std::fmt::Debug for MinerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinerSlot")
            .field("device_id", &self.device_id)
            .field("identity", &self.identity)
            .field("nameplate", &self.nameplate)
            .finish()
    }
}

/// The device id of the miner at `addr`: stable as long as its configured address is.
pub fn miner_device_id(addr: &crate::miner::MinerAddr) -> String {
    format!("miner/{addr}")
}

/// How long between two control attempts on one miner of `dialect`: the stock Antminer CGI
/// restarts cgminer and answers after 20–60 s, so resending sooner only restarts it again.
pub fn pacing_for(dialect: MinerDialect) -> Duration {
    match dialect {
        MinerDialect::Antminer => Duration::from_secs(120),
        MinerDialect::Braiins => Duration::from_secs(30),
        _ => Duration::from_secs(15),
    }
}

/// Whether a control command of `dialect` can be sent again harmlessly when its reply was lost:
/// Braiins OS (`PUT /api/v1/actions/pause|resume`, `PUT …/performance/power-target`) and Bitaxe
/// (`POST /api/system/pause|resume`) set a state, so a second one changes nothing. Not a stock
/// Antminer (a CGI change restarts cgminer), nor LuxOS, whose curtail is a session-bound
/// command, nor Whatsminer, whose power-on restarts btminer: their pacing holds.
pub fn repeatable(dialect: MinerDialect) -> bool {
    matches!(dialect, MinerDialect::Braiins | MinerDialect::Bitaxe)
}

/// The driver options the configuration implies.
pub fn driver_options(config: &Config) -> DriverOptions {
    let t = config.poll.timeout();
    DriverOptions {
        timeouts: Timeouts {
            connect: t,
            request: t,
        },
        settle: Duration::from_secs_f64(config.poll.settle_s),
        ..DriverOptions::default()
    }
}

/// Credentials for a configured miner: its `[credentials.NAME]` table, else the dialect's default.
pub fn credentials_for(
    config: &Config,
    target: &ConfiguredMiner,
    dialect: MinerDialect,
) -> Result<Credentials, String> {
    let Some(name) = &target.credentials else {
        return Ok(Credentials::default_for(dialect));
    };
    let Some(entry) = config.credentials.get(name) else {
        return Err(format!("credentials `{name}` are not defined"));
    };
    let password = if let Some(var) = &entry.password_env {
        std::env::var(var)
            .map_err(|_| format!("credentials `{name}`: environment variable {var} is not set"))?
    } else if let Some(file) = &entry.password_file {
        std::fs::read_to_string(file)
            .map_err(|e| format!("credentials `{name}`: cannot read {}: {e}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    } else {
        entry.password.clone().unwrap_or_default()
    };
    Ok(Credentials::new(entry.username.clone(), password))
}

/// A miner that could not be added, and why.
#[derive(Debug, Clone)]
pub struct Missing {
    pub target: ConfiguredMiner,
    pub error: String,
}

/// Finds the configured miners: detects each one's dialect (unless configured) and reads its
/// identity, `concurrency` at a time. A miner with a configured dialect is added even when it
/// does not answer (it is unseen, so it counts at its maximum draw); one whose dialect must be
/// detected and that does not answer is returned as missing, to be looked for again later.
pub async fn discover_miners(
    config: &Config,
    state_dir: &Path,
    targets: Vec<ConfiguredMiner>,
) -> (Vec<MinerSlot>, Vec<Missing>) {
    let options = driver_options(config);
    let http = crate::miner::http::HttpClient::new(options.timeouts);
    let modes: Arc<dyn crate::miner::verify::ModeMemory> = Arc::new(
        crate::miner::verify::FileModes::new(state_dir.join("miner-modes.json")),
    );
    let results: Vec<_> = futures::stream::iter(targets)
        .map(|target| {
            let http = http.clone();
            let modes = Arc::clone(&modes);
            async move {
                let dialect = match target.dialect {
                    Some(d) => d,
                    None => match detect::detect(&target.addr, &http, options.timeouts).await {
                        Ok(d) => d,
                        Err(e) => return Err(Missing { error: e.to_string(), target }),
                    },
                };
                let credentials = credentials_for(config, &target, dialect).map_err(|error| Missing { error, target: target.clone() })?;
                let ctx = DriverContext { options, credentials, http, modes };
                let driver: Arc<dyn MinerDriver> = Arc::from(driver_for(dialect, target.addr.clone(), ctx, target.antminer_wake_mode));
                let identity = match driver.identify().await {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(miner = %target.addr, %dialect, error = %e, "Miner did not identify; added with its dialect's capabilities and counted at maximum draw until it answers");
                        fallback_identity(dialect)
                    }
                };
                let nameplate = nameplate::resolve(target.nameplate_power_w, target.nameplate_hashrate_ths, identity.model.as_deref());
                Ok(MinerSlot { device_id: miner_device_id(&target.addr), driver, identity, nameplate, control_read: Arc::default() })
            }
        })
        .buffer_unordered(config.poll.concurrency.max(1))
        .collect()
        .await;
    let mut slots = Vec::new();
    let mut missing = Vec::new();
    for r in results {
        match r {
            Ok(s) => slots.push(s),
            Err(m) => missing.push(m),
        }
    }
    slots.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    info!(
        found = slots.len(),
        missing = missing.len(),
        "Miner inventory"
    );
    (slots, missing)
}

/// What a miner of `dialect` is assumed to offer before it has identified itself.
fn fallback_identity(dialect: MinerDialect) -> Identity {
    Identity {
        dialect,
        model: None,
        firmware: None,
        serial: None,
        mac: None,
        capabilities: Capabilities {
            can_sleep: true,
            power_target: !matches!(dialect, MinerDialect::Antminer | MinerDialect::Bitaxe),
            power_target_min_w: None,
            power_target_max_w: None,
            power_target_steps_w: Vec::new(),
        },
    }
}

/// Applies miner targets through the driver; every call returns the driver's read-back.
///
/// A wake to a power target never runs the miner at the power it slept at: where the firmware
/// keeps a target while asleep it is set first; elsewhere the miner wakes and takes the target
/// at once, and is put back to sleep if the target fails. Every step that could raise power is
/// judged on a fresh read and asked of the [`RaiseGuard`] right before it runs.
pub struct MinerActuator {
    pub driver: Arc<dyn MinerDriver>,
    /// What the reconciler confirms against; `Some`: after a sleep or a wake the actuator keeps
    /// reading (briefly, [`SETTLE_READS`] reads) until the effect is physical by
    /// [`rules::satisfied`], so the reconciler can confirm on the call's own read-back instead of
    /// waiting for the next poll. A firmware that reports the state at once but the draw a moment
    /// later (Braiins' `paused` status) would otherwise wait a whole poll interval.
    pub limits: Option<Limits>,
    /// Where the reading a call ends with is kept for the next poll.
    pub control_read: Arc<ControlRead>,
}

/// Extra reads after a sleep or wake whose effect is not yet physical, at the read-back's
/// pauses capped at 2 s (250 ms, 500 ms, 1 s, then 2 s): 7.75 s in all, after which the
/// reconciler judges the next poll's reading as before.
const SETTLE_READS: usize = 6;
const SETTLE_PAUSE_CAP: Duration = Duration::from_secs(2);
/// After a command whose reply was lost: a read at once, then up to three more (250 ms, 500 ms,
/// 1 s), since the command has had its whole timeout to act.
const LOST_REPLY_READS: usize = 3;

impl MinerActuator {
    /// Reads again (a read never changes the miner) until `target` shows physically, the pauses
    /// of [`SETTLE_READS`] reads allow no more, or a read fails; returns the newest good reading.
    async fn settle(&self, target: &Target, reading: Reading) -> Reading {
        self.settle_within(target, reading, SETTLE_READS).await
    }

    async fn settle_within(&self, target: &Target, mut reading: Reading, reads: usize) -> Reading {
        let Some(limits) = &self.limits else {
            return reading;
        };
        for pause in read_back_pauses(SETTLE_PAUSE_CAP).take(reads) {
            if rules::satisfied(target, &observed_miner(&reading), limits, None) {
                break;
            }
            tokio::time::sleep(pause).await;
            match self.driver.read().await {
                Ok(r) => reading = r,
                Err(_) => break,
            }
        }
        reading
    }

    /// A command's result as it stands, or, when its reply was lost, the reading that proves it.
    async fn or_proven(
        &self,
        target: &Target,
        result: Result<Reading, MinerError>,
    ) -> Result<Reading, MinerError> {
        match result {
            Ok(r) => Ok(r),
            Err(e) => self.proven_despite(target, e).await,
        }
    }

    /// A command whose reply was lost — it timed out, or the connection closed on it — may have
    /// been carried out: the miner is read before the call is judged, as an answered command is
    /// read back. A read that shows `target` physically proves it, and the call succeeds on that
    /// reading without the command going again; anything else leaves the failure as it was (the
    /// reconciler's pacing and the polls take it from there). Before, the proof waited for the
    /// next poll — a whole interval after the timeout — and the controller meanwhile saw the
    /// move failed.
    async fn proven_despite(&self, target: &Target, e: MinerError) -> Result<Reading, MinerError> {
        let Some(limits) = &self.limits else {
            return Err(e);
        };
        if e.sent_nothing() || !e.is_unreachable() {
            return Err(e);
        }
        let Ok(first) = self.driver.read().await else {
            return Err(e);
        };
        let reading = self.settle_within(target, first, LOST_REPLY_READS).await;
        if rules::satisfied(target, &observed_miner(&reading), limits, None) {
            debug!(miner = %self.driver.addr(), error = %e, "The command's reply was lost; a read shows it carried out");
            Ok(reading)
        } else {
            self.control_read.put(reading.checked());
            Err(e)
        }
    }

    async fn wake_to_target(&self, watts: u32, guard: &RaiseGuard) -> Result<Reading, ApplyError> {
        if self.driver.target_while_asleep() {
            self.driver.set_power_target(watts).await?;
            guard.check("wake the miner")?;
            return Ok(self.driver.wake().await?);
        }
        guard.check("wake the miner")?;
        self.driver.wake().await?;
        match self.driver.set_power_target(watts).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // Awake at its pre-sleep power without the target asked for: back to sleep.
                warn!(miner = %self.driver.addr(), error = %e, "Power target failed after the wake; putting the miner back to sleep");
                if let Err(back) = self.driver.sleep().await {
                    warn!(miner = %self.driver.addr(), error = %back, "Could not put the miner back to sleep");
                }
                Err(e.into())
            }
        }
    }
}

#[async_trait]
impl Actuator for MinerActuator {
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError> {
        // Until the call's reading is kept (or the call fails), a sweep waits for it.
        let _call = self.control_read.call();
        let reading = match target {
            Target::Miner(MinerTarget::Sleep) => {
                // A reading that proved a lost reply already shows the target: no more reads.
                let r = self.or_proven(target, self.driver.sleep().await).await?;
                self.settle(target, r).await
            }
            Target::Miner(MinerTarget::Run { power_target_w }) => {
                // A read changes nothing: a failure here sent nothing.
                let now = self
                    .driver
                    .read()
                    .await
                    .map_err(crate::miner::MinerError::before_command)?;
                // Ramping may be a miner on its way to sleep: not hashing.
                let hashing = now.state == MinerState::Mining;
                match (power_target_w, hashing) {
                    (None, true) => now,
                    (None, false) => {
                        guard.check("wake the miner")?;
                        let r = self.or_proven(target, self.driver.wake().await).await?;
                        self.settle(target, r).await
                    }
                    (Some(w), true) => {
                        if now.power_target_w.is_none_or(|cur| *w > cur) {
                            guard.check("raise the power target")?;
                        }
                        self.or_proven(target, self.driver.set_power_target(*w).await)
                            .await?
                    }
                    (Some(w), false) => self.wake_to_target(*w, guard).await?,
                }
            }
            other => {
                return Err(ApplyError::WrongTarget {
                    device: "miner",
                    target: *other,
                });
            }
        };
        let observed = observed_miner(&reading);
        self.control_read.put(reading.checked());
        Ok(observed)
    }
}

/// A miner reading in the reconciler's terms.
pub fn observed_miner(r: &Reading) -> Observed {
    Observed::Miner {
        reachable: r.reachable && r.error.is_none(),
        state: r.state,
        power_w: r.power_w,
        hashrate_ths: r.hashrate_ths,
        power_target_w: r.power_target_w,
    }
}

/// The reconciler's view of a miner. `options` bound how long one driver call may take;
/// `pacing` replaces the firmware's default pacing (`poll.pacing_s`).
pub fn miner_device(slot: &MinerSlot, options: &DriverOptions, pacing: Option<Duration>) -> Device {
    let c = &slot.identity.capabilities;
    let limits = Limits::Miner {
        can_sleep: c.can_sleep,
        power_target: c.power_target,
        power_target_min_w: c.power_target_min_w,
        power_target_max_w: c.power_target_max_w,
        power_target_steps_w: c.power_target_steps_w.clone(),
        nameplate_power_w: slot.nameplate.map(|n| f64::from(n.power_w)),
        nameplate_hashrate_ths: slot.nameplate.and_then(|n| n.hashrate_ths),
    };
    Device {
        limits: limits.clone(),
        actuator: Arc::new(MinerActuator {
            driver: Arc::clone(&slot.driver),
            limits: Some(limits.clone()),
            control_read: Arc::clone(&slot.control_read),
        }),
        pacing: pacing.unwrap_or_else(|| pacing_for(slot.identity.dialect)),
        deadline: call_deadline(options),
        repeatable: repeatable(slot.identity.dialect),
    }
}

/// The longest one driver call may take: a wake to a target is up to three control steps (set,
/// wake, and a sleep back if the target fails), each a slow request and its read-back.
pub fn call_deadline(options: &DriverOptions) -> Duration {
    let step = options
        .slow_request
        .saturating_add(options.settle)
        .saturating_add(
            options
                .timeouts
                .connect
                .saturating_add(options.timeouts.request)
                * 2,
        );
    step.saturating_mul(3)
}

/// The miner's inventory entry for the controller.
pub fn miner_inventory(slot: &MinerSlot) -> v1::MinerInventory {
    let id = &slot.identity;
    v1::MinerInventory {
        device_id: slot.device_id.clone(),
        addr: slot.driver.addr().to_string(),
        dialect: id.dialect.to_proto() as i32,
        model: id.model.clone().unwrap_or_default(),
        firmware: id.firmware.clone().unwrap_or_default(),
        serial: id.serial.clone().unwrap_or_default(),
        mac: id.mac.clone().unwrap_or_default(),
        nameplate_power_w: slot.nameplate.map(|n| n.power_w),
        nameplate_hashrate_ths: slot.nameplate.and_then(|n| n.hashrate_ths),
        capabilities: Some(v1::MinerCapabilities {
            can_sleep: id.capabilities.can_sleep,
            power_target: id.capabilities.power_target,
            power_target_min_w: id.capabilities.power_target_min_w,
            power_target_max_w: id.capabilities.power_target_max_w,
            power_target_steps_w: id.capabilities.power_target_steps_w.clone(),
        }),
        nameplate_source: slot
            .nameplate
            .map(|n| n.source.as_str().to_owned())
            .unwrap_or_default(),
    }
}

/// The inventory entry of a configured miner that never answered, so its dialect and model are
/// unknown: the controller still hears of it (dialect unspecified) and counts it, unseen, at
/// its configured nameplate or its assumed maximum — an operator listed it, so it may be drawing.
pub fn missing_inventory(m: &Missing) -> v1::MinerInventory {
    let t = &m.target;
    v1::MinerInventory {
        device_id: miner_device_id(&t.addr),
        addr: t.addr.to_string(),
        dialect: t.dialect.map_or(v1::MinerDialect::Unspecified as i32, |d| {
            d.to_proto() as i32
        }),
        nameplate_power_w: t.nameplate_power_w,
        nameplate_hashrate_ths: t.nameplate_hashrate_ths,
        nameplate_source: if t.nameplate_power_w.is_some() {
            "config".to_owned()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// A miner reading for the controller.
pub fn miner_reading(
    device_id: &str,
    r: &Reading,
    at: chrono::DateTime<chrono::Utc>,
) -> v1::MinerReading {
    v1::MinerReading {
        device_id: device_id.to_owned(),
        reachable: r.reachable && r.error.is_none(),
        state: r.state.to_proto() as i32,
        hashrate_ths: r.hashrate_ths.filter(|v| v.is_finite()),
        power_w: r.power_w.filter(|v| v.is_finite()),
        power_target_w: r.power_target_w.map(f64::from),
        boards: r
            .boards
            .iter()
            .map(|b| v1::BoardReading {
                index: b.index,
                temperature_c: b.temperature_c.filter(|v| v.is_finite()),
                hashrate_ths: b.hashrate_ths.filter(|v| v.is_finite()),
            })
            .collect(),
        fan_rpm: r
            .fans
            .iter()
            .filter_map(|f| f.rpm)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v.min(f64::from(u32::MAX)) as u32)
            .collect(),
        active_pool: r.pool.clone().unwrap_or_default(),
        uptime: r
            .uptime_s
            .map(|s| pivot_proto::model::duration_to_proto(Duration::from_secs(s))),
        miner_errors: r.miner_errors.clone(),
        poll_error: r.error.clone().unwrap_or_default(),
        observed_at: Some(pivot_proto::model::timestamp_to_proto(at)),
    }
}

/// The miners the agent manages now. Grows when the rediscovery finds a configured miner that
/// was missing; `changes` ticks each time, so the link can say hello again with the new
/// inventory.
#[derive(Debug)]
pub struct MinerSet {
    slots: std::sync::RwLock<Arc<Vec<MinerSlot>>>,
    missing: std::sync::Mutex<Vec<Missing>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl MinerSet {
    pub fn new(slots: Vec<MinerSlot>, missing: Vec<Missing>) -> Self {
        Self {
            slots: std::sync::RwLock::new(Arc::new(slots)),
            missing: std::sync::Mutex::new(missing),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The current miners (a cheap snapshot).
    pub fn slots(&self) -> Arc<Vec<MinerSlot>> {
        Arc::clone(
            &self
                .slots
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Configured miners not found yet.
    pub fn missing(&self) -> Vec<Missing> {
        self.missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ticks when miners are added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Adds found miners and replaces the missing list.
    pub fn extend(&self, found: Vec<MinerSlot>, still_missing: Vec<Missing>) {
        *self
            .missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = still_missing;
        if found.is_empty() {
            return;
        }
        {
            let mut guard = self
                .slots
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut all: Vec<MinerSlot> = guard.as_ref().clone();
            all.extend(found);
            all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
            all.dedup_by(|a, b| a.device_id == b.device_id);
            *guard = Arc::new(all);
        }
        self.changes.send_modify(|v| *v += 1);
    }
}

/// Looks for the missing configured miners every `every`; adds those that answer to the set and
/// to the reconciler (which gives them back any intent saved for them).
pub async fn rediscover(
    config: Config,
    state_dir: std::path::PathBuf,
    set: Arc<MinerSet>,
    reconciler: Arc<crate::reconcile::Reconciler>,
    every: Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<ConfiguredMiner> = set.missing().into_iter().map(|m| m.target).collect();
        if targets.is_empty() {
            continue;
        }
        let (found, missing) = discover_miners(&config, &state_dir, targets).await;
        let options = driver_options(&config);
        for slot in &found {
            info!(miner = %slot.driver.addr(), dialect = %slot.identity.dialect, "Configured miner found");
            let pacing = config.poll.pacing_s.map(Duration::from_secs_f64);
            reconciler.add_device(slot.device_id.clone(), miner_device(slot, &options, pacing));
        }
        set.extend(found, missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::MinerAddr;
    use crate::reconcile::{ClockCheck, ClockTrust, WallClock};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A driver that records the order of its calls. `on_target` runs when a target is set.
    struct Recording {
        addr: MinerAddr,
        calls: Mutex<Vec<&'static str>>,
        asleep: Mutex<bool>,
        target_fails: bool,
        target_while_asleep: bool,
        on_target: Box<dyn Fn() + Send + Sync>,
    }

    impl Recording {
        fn reading(&self) -> Reading {
            let mut r = Reading::empty(&self.addr, MinerDialect::Braiins);
            let asleep = *self.asleep.lock().unwrap();
            r.state = if asleep {
                MinerState::Sleeping
            } else {
                MinerState::Mining
            };
            r.hashrate_ths = Some(if asleep { 0.0 } else { 200.0 });
            r
        }
    }

    #[async_trait]
    impl MinerDriver for Recording {
        fn dialect(&self) -> MinerDialect {
            MinerDialect::Braiins
        }
        fn addr(&self) -> &MinerAddr {
            &self.addr
        }
        async fn identify(&self) -> Result<Identity, MinerError> {
            Ok(fallback_identity(MinerDialect::Braiins))
        }
        async fn read(&self) -> Result<Reading, MinerError> {
            self.calls.lock().unwrap().push("read");
            Ok(self.reading())
        }
        async fn sleep(&self) -> Result<Reading, MinerError> {
            self.calls.lock().unwrap().push("sleep");
            *self.asleep.lock().unwrap() = true;
            Ok(self.reading())
        }
        async fn wake(&self) -> Result<Reading, MinerError> {
            self.calls.lock().unwrap().push("wake");
            *self.asleep.lock().unwrap() = false;
            Ok(self.reading())
        }
        async fn set_power_target(&self, _: u32) -> Result<Reading, MinerError> {
            self.calls.lock().unwrap().push("target");
            (self.on_target)();
            if self.target_fails {
                return Err(MinerError::Other {
                    addr: self.addr.to_string(),
                    message: "refused".into(),
                });
            }
            Ok(self.reading())
        }
        fn target_while_asleep(&self) -> bool {
            self.target_while_asleep
        }
    }

    fn recording(target_fails: bool, target_while_asleep: bool) -> Recording {
        Recording {
            addr: MinerAddr::new("10.0.0.1"),
            calls: Mutex::new(Vec::new()),
            asleep: Mutex::new(true),
            target_fails,
            target_while_asleep,
            on_target: Box::new(|| {}),
        }
    }

    /// A guard on a lease of `lease_s` seconds from now, on a clock the test moves.
    fn guard(lease_s: i64) -> (Arc<AtomicI64>, RaiseGuard) {
        let offset = Arc::new(AtomicI64::new(0));
        let o = Arc::clone(&offset);
        let start = chrono::Utc::now();
        let clock: WallClock =
            Arc::new(move || start + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
        let trust = Arc::new(ClockTrust::default());
        trust.set(ClockCheck::Within { skew_s: 0.0 });
        let lease = start + chrono::Duration::seconds(lease_s);
        (offset, RaiseGuard::new(Some(lease), clock, trust))
    }

    const RUN_2000: Target = Target::Miner(MinerTarget::Run {
        power_target_w: Some(2000),
    });

    /// Says "sleeping" at once; the draw falls on the third read after the command.
    struct FallsLate {
        addr: MinerAddr,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl FallsLate {
        fn reading(&self, w: f64) -> Reading {
            let mut r = Reading::empty(&self.addr, MinerDialect::Braiins);
            r.state = MinerState::Sleeping;
            r.power_w = Some(w);
            r.hashrate_ths = Some(0.0);
            r
        }
    }

    #[async_trait]
    impl MinerDriver for FallsLate {
        fn dialect(&self) -> MinerDialect {
            MinerDialect::Braiins
        }
        fn addr(&self) -> &MinerAddr {
            &self.addr
        }
        async fn identify(&self) -> Result<Identity, MinerError> {
            Ok(fallback_identity(MinerDialect::Braiins))
        }
        async fn read(&self) -> Result<Reading, MinerError> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(self.reading(if n >= 3 { 40.0 } else { 3000.0 }))
        }
        async fn sleep(&self) -> Result<Reading, MinerError> {
            Ok(self.reading(3000.0))
        }
        async fn wake(&self) -> Result<Reading, MinerError> {
            unreachable!("not woken in this test")
        }
        async fn set_power_target(&self, _: u32) -> Result<Reading, MinerError> {
            unreachable!("no target in this test")
        }
    }

    fn s21_limits() -> Limits {
        Limits::Miner {
            can_sleep: true,
            power_target: true,
            power_target_min_w: None,
            power_target_max_w: None,
            power_target_steps_w: Vec::new(),
            nameplate_power_w: Some(3500.0),
            nameplate_hashrate_ths: Some(200.0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_reads_on_until_the_draw_has_fallen_so_the_call_itself_confirms() {
        let d = Arc::new(FallsLate {
            addr: MinerAddr::new("10.0.0.2"),
            reads: Default::default(),
        });
        let sleep = Target::Miner(MinerTarget::Sleep);
        let a = MinerActuator {
            driver: d.clone(),
            limits: Some(s21_limits()),
            control_read: Arc::default(),
        };
        let started = tokio::time::Instant::now();
        let o = a.apply(&sleep, &guard(60).1).await.unwrap();
        assert_eq!(o.power_w(), Some(40.0));
        assert!(rules::satisfied(&sleep, &o, &s21_limits(), None));
        assert_eq!(d.reads.load(Ordering::SeqCst), 3);
        // 250 + 500 + 1000 ms of pauses, not a poll interval.
        assert_eq!(started.elapsed(), Duration::from_millis(1750));

        // Without limits (or when it never falls) the call returns the command's own read-back.
        let d = Arc::new(FallsLate {
            addr: MinerAddr::new("10.0.0.3"),
            reads: Default::default(),
        });
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        let o = a.apply(&sleep, &guard(60).1).await.unwrap();
        assert_eq!(o.power_w(), Some(3000.0));
        assert_eq!(d.reads.load(Ordering::SeqCst), 0);
    }

    /// A LuxOS S21's reading, asleep (40 W) or mining (3,500 W).
    fn luxos_reading(addr: &MinerAddr, asleep: bool) -> Reading {
        let mut r = Reading::empty(addr, MinerDialect::Luxos);
        r.state = if asleep {
            MinerState::Sleeping
        } else {
            MinerState::Mining
        };
        r.hashrate_ths = Some(if asleep { 0.0 } else { 200.0 });
        r.power_w = Some(if asleep { 40.0 } else { 3500.0 });
        r
    }

    /// How a [`TestLuxos`] answers a sleep or wake.
    enum Answer {
        /// Carries the command out (or not), then loses its reply as `error` says.
        Lost {
            carries_out: bool,
            error: fn(&MinerAddr) -> MinerError,
        },
        /// Carries it out and answers with a read of the miner, after this long.
        After(Duration),
    }

    /// A LuxOS miner for the actuator's tests, asleep or mining, answering commands as its
    /// [`Answer`] says; it counts the commands and the reads.
    struct TestLuxos {
        addr: MinerAddr,
        answer: Answer,
        asleep: Mutex<bool>,
        commands: std::sync::atomic::AtomicUsize,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl TestLuxos {
        fn new(host: &str, asleep: bool, answer: Answer) -> Self {
            Self {
                addr: MinerAddr::new(host),
                answer,
                asleep: Mutex::new(asleep),
                commands: Default::default(),
                reads: Default::default(),
            }
        }

        /// Carries out (or not) each command, then loses its reply as `error` says.
        fn lost(asleep: bool, carries_out: bool, error: fn(&MinerAddr) -> MinerError) -> Self {
            Self::new("10.0.0.9", asleep, Answer::Lost { carries_out, error })
        }

        async fn command(&self, asleep: bool) -> Result<Reading, MinerError> {
            self.commands.fetch_add(1, Ordering::SeqCst);
            match self.answer {
                Answer::Lost { carries_out, error } => {
                    if carries_out {
                        *self.asleep.lock().unwrap() = asleep;
                    }
                    Err(error(&self.addr))
                }
                Answer::After(after) => {
                    tokio::time::sleep(after).await;
                    *self.asleep.lock().unwrap() = asleep;
                    self.read().await
                }
            }
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.commands.load(Ordering::SeqCst),
                self.reads.load(Ordering::SeqCst),
            )
        }
    }

    #[async_trait]
    impl MinerDriver for TestLuxos {
        fn dialect(&self) -> MinerDialect {
            MinerDialect::Luxos
        }
        fn addr(&self) -> &MinerAddr {
            &self.addr
        }
        async fn identify(&self) -> Result<Identity, MinerError> {
            Ok(fallback_identity(MinerDialect::Luxos))
        }
        async fn read(&self) -> Result<Reading, MinerError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(luxos_reading(&self.addr, *self.asleep.lock().unwrap()))
        }
        async fn sleep(&self) -> Result<Reading, MinerError> {
            self.command(true).await
        }
        async fn wake(&self) -> Result<Reading, MinerError> {
            self.command(false).await
        }
        async fn set_power_target(&self, _: u32) -> Result<Reading, MinerError> {
            unreachable!("no target in these tests")
        }
    }

    fn timed_out(addr: &MinerAddr) -> MinerError {
        MinerError::Timeout {
            addr: addr.to_string(),
            during: "waiting for the reply to `curtail`".into(),
            after: Duration::from_secs(3),
        }
    }

    fn refused(addr: &MinerAddr) -> MinerError {
        MinerError::Refused {
            addr: addr.to_string(),
            port: 4028,
        }
    }

    fn answered_no(addr: &MinerAddr) -> MinerError {
        MinerError::Status {
            addr: addr.to_string(),
            command: "curtail".into(),
            letter: "E".into(),
            code: 45,
            message: "Access denied".into(),
        }
    }

    fn lost_reply_actuator(d: &Arc<TestLuxos>) -> MinerActuator {
        MinerActuator {
            driver: d.clone(),
            limits: Some(s21_limits()),
            control_read: Arc::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_whose_reply_was_lost_is_proven_by_a_read_not_sent_again() {
        let sleep = Target::Miner(MinerTarget::Sleep);
        // Carried out: one read proves it, at once, and the call succeeds on it.
        let d = Arc::new(TestLuxos::lost(false, true, timed_out));
        let started = tokio::time::Instant::now();
        let o = lost_reply_actuator(&d)
            .apply(&sleep, &guard(60).1)
            .await
            .unwrap();
        assert!(rules::satisfied(&sleep, &o, &s21_limits(), None), "{o:?}");
        assert_eq!(d.counts(), (1, 1));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A wake the same: raising needs the lease before the command, and nothing more is sent.
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        let d = Arc::new(TestLuxos::lost(true, true, timed_out));
        let o = lost_reply_actuator(&d)
            .apply(&run, &guard(60).1)
            .await
            .unwrap();
        assert!(rules::satisfied(&run, &o, &s21_limits(), None), "{o:?}");
        // The read before the wake, the wake, the read that proves it.
        assert_eq!(d.counts(), (1, 2));

        // Not carried out: the reads find it mining, the failure stands as it was (the pacing
        // decides when the command goes again), and the last read is kept for the next poll.
        let d = Arc::new(TestLuxos::lost(false, false, timed_out));
        let a = lost_reply_actuator(&d);
        let started = tokio::time::Instant::now();
        let e = a.apply(&sleep, &guard(60).1).await.unwrap_err();
        assert!(
            e.to_string().contains("waiting for the reply to `curtail`"),
            "{e}"
        );
        assert!(!e.sent_nothing(), "{e}");
        assert_eq!(d.counts(), (1, 1 + LOST_REPLY_READS));
        assert_eq!(started.elapsed(), Duration::from_millis(1750));
        let kept = a.control_read.take_within(Duration::from_secs(60)).unwrap();
        assert_eq!(kept.0.state, MinerState::Mining);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_never_sent_or_answered_no_is_not_read_for_proof() {
        let sleep = Target::Miner(MinerTarget::Sleep);
        for error in [refused as fn(&MinerAddr) -> MinerError, answered_no] {
            let d = Arc::new(TestLuxos::lost(false, true, error));
            let e = lost_reply_actuator(&d)
                .apply(&sleep, &guard(60).1)
                .await
                .unwrap_err();
            assert!(e.to_string().contains("10.0.0.9"), "{e}");
            assert_eq!(d.counts(), (1, 0), "{e}");
        }
    }

    #[tokio::test]
    async fn hole4_a_sleeping_miner_gets_its_target_before_it_wakes() {
        let d = Arc::new(recording(false, true));
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        a.apply(&RUN_2000, &guard(60).1).await.unwrap();
        assert_eq!(*d.calls.lock().unwrap(), ["read", "target", "wake"]);
    }

    #[tokio::test]
    async fn hole4_a_failed_target_after_a_wake_puts_the_miner_back_to_sleep() {
        let d = Arc::new(recording(true, false));
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        assert!(a.apply(&RUN_2000, &guard(60).1).await.is_err());
        assert_eq!(
            *d.calls.lock().unwrap(),
            ["read", "wake", "target", "sleep"]
        );
        assert!(*d.asleep.lock().unwrap());
    }

    #[tokio::test]
    async fn hole5_no_wake_once_the_lease_is_gone() {
        let d = Arc::new(recording(false, false));
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        let e = a.apply(&RUN_2000, &guard(-1).1).await.unwrap_err();
        assert!(matches!(e, ApplyError::RaiseRefused(_)), "{e}");
        assert_eq!(*d.calls.lock().unwrap(), ["read"]);
        assert!(*d.asleep.lock().unwrap());
    }

    #[tokio::test]
    async fn hole5_the_lease_is_checked_again_before_each_raising_step() {
        // The target takes so long that the lease ends before the wake: no wake.
        let (offset, g) = guard(30);
        let mut d = recording(false, true);
        d.on_target = Box::new(move || offset.store(31, Ordering::SeqCst));
        let d = Arc::new(d);
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        let e = a.apply(&RUN_2000, &g).await.unwrap_err();
        assert!(e.to_string().contains("wake the miner"), "{e}");
        assert_eq!(*d.calls.lock().unwrap(), ["read", "target"]);
        assert!(*d.asleep.lock().unwrap(), "woken after its lease ended");
    }

    #[tokio::test]
    async fn a_miner_already_hashing_is_not_woken_and_sleep_needs_no_lease() {
        let d = Arc::new(recording(false, false));
        *d.asleep.lock().unwrap() = false;
        let a = MinerActuator {
            driver: d.clone(),
            limits: None,
            control_read: Arc::default(),
        };
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        a.apply(&run, &guard(-1).1).await.unwrap();
        a.apply(
            &Target::Miner(MinerTarget::Sleep),
            &RaiseGuard::lowering_only(),
        )
        .await
        .unwrap();
        assert_eq!(*d.calls.lock().unwrap(), ["read", "sleep"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_soon_after_a_control_call_takes_its_read_back_instead_of_reading_again() {
        let d = Arc::new(recording(false, false));
        let slot = MinerSlot {
            device_id: "miner/10.0.0.1".into(),
            driver: d.clone(),
            identity: fallback_identity(MinerDialect::Braiins),
            nameplate: None,
            control_read: Arc::default(),
        };
        let device = miner_device(&slot, &DriverOptions::default(), None);
        let slots = Arc::new(vec![slot]);
        let reads = || {
            d.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| **c == "read")
                .count()
        };
        let fresh = Duration::from_secs(5);
        let sweep = || crate::poll::sweep(&slots, 4, Duration::from_secs(10), fresh);

        // Awake, then a wake call ends with the miner's reading.
        *d.asleep.lock().unwrap() = false;
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        device.actuator.apply(&run, &guard(60).1).await.unwrap();
        let before = reads();
        let polled = sweep().await;
        assert_eq!(
            reads(),
            before,
            "the miner was read again right after the call"
        );
        assert_eq!(polled.len(), 1);
        assert_eq!(polled[0].1.state, MinerState::Mining);
        // A reading stands in for one poll only: the next sweep reads the miner.
        sweep().await;
        assert_eq!(reads(), before + 1);

        // A call's reading older than `fresh` is not used: the miner is read.
        device
            .actuator
            .apply(&Target::Miner(MinerTarget::Sleep), &guard(60).1)
            .await
            .unwrap();
        tokio::time::advance(fresh).await;
        let before = reads();
        let polled = sweep().await;
        assert_eq!(
            reads(),
            before + 1,
            "a stale control reading stood in for a poll"
        );
        assert_eq!(polled[0].1.state, MinerState::Sleeping);

        // A failed call leaves nothing for the poll.
        *d.asleep.lock().unwrap() = false;
        let fails = Target::Miner(MinerTarget::Run {
            power_target_w: Some(2000),
        });
        let _ = device.actuator.apply(&fails, &guard(-1).1).await;
        let before = reads();
        sweep().await;
        assert_eq!(reads(), before + 1);
    }

    /// A sleep call running in a task.
    type Call = tokio::task::JoinHandle<Result<Observed, ApplyError>>;

    /// A slot on a mining miner at `host` whose sleep takes two seconds to answer, and a sleep
    /// started on it.
    fn slow_sleep_started(host: &str) -> (Arc<TestLuxos>, Arc<Vec<MinerSlot>>, Call) {
        let d = Arc::new(TestLuxos::new(
            host,
            false,
            Answer::After(Duration::from_secs(2)),
        ));
        let slot = MinerSlot {
            device_id: format!("miner/{host}"),
            driver: d.clone(),
            identity: fallback_identity(MinerDialect::Luxos),
            nameplate: None,
            control_read: Arc::default(),
        };
        let device = miner_device(&slot, &DriverOptions::default(), None);
        let call = tokio::spawn(async move {
            device
                .actuator
                .apply(&Target::Miner(MinerTarget::Sleep), &guard(60).1)
                .await
        });
        (d, Arc::new(vec![slot]), call)
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_waits_for_a_control_call_on_the_miner_and_takes_its_reading() {
        let (d, slots, call) = slow_sleep_started("10.0.0.4");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(slots[0].control_read.in_call());
        let started = tokio::time::Instant::now();
        let polled =
            crate::poll::sweep(&slots, 4, Duration::from_secs(10), Duration::from_secs(5)).await;
        // Not read in the middle of the command: the call's own read-back is the poll.
        assert_eq!(d.reads.load(Ordering::SeqCst), 1);
        assert_eq!(polled.len(), 1);
        assert_eq!(polled[0].1.state, MinerState::Sleeping);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        call.await.unwrap().unwrap();
        assert!(!slots[0].control_read.in_call());

        // A call that outlasts the read's deadline: the sweep reads the miner after the deadline.
        let (d, slots, call) = slow_sleep_started("10.0.0.5");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let polled = crate::poll::sweep(
            &slots,
            4,
            Duration::from_millis(500),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(d.reads.load(Ordering::SeqCst), 1);
        assert_eq!(polled[0].1.state, MinerState::Mining);
        call.await.unwrap().unwrap();
    }

    #[test]
    fn hole10_a_known_model_carries_its_nameplate_and_the_config_wins() {
        let identity = Identity {
            model: Some("Antminer S21".into()),
            ..fallback_identity(MinerDialect::Luxos)
        };
        let slot = MinerSlot {
            device_id: "miner/10.0.0.1".into(),
            driver: Arc::new(recording(false, false)),
            nameplate: nameplate::resolve(None, None, identity.model.as_deref()),
            identity: identity.clone(),
            control_read: Arc::default(),
        };
        let inv = miner_inventory(&slot);
        assert_eq!(inv.nameplate_power_w, Some(3500));
        assert_eq!(inv.nameplate_hashrate_ths, Some(200.0));
        assert_eq!(inv.nameplate_source, "model-table");
        let configured = MinerSlot {
            nameplate: nameplate::resolve(Some(3300), Some(190.0), identity.model.as_deref()),
            ..slot
        };
        let inv = miner_inventory(&configured);
        assert_eq!(inv.nameplate_power_w, Some(3300));
        assert_eq!(inv.nameplate_source, "config");
        match miner_device(&configured, &DriverOptions::default(), None).limits {
            Limits::Miner {
                nameplate_power_w, ..
            } => assert_eq!(nameplate_power_w, Some(3300.0)),
            other => panic!("{other:?}"),
        }
    }
}
