//! ASIC miners: one [`MinerDriver`] trait, one module per firmware dialect behind it, dialect
//! auto-detection, and the transports they share (cgminer's 4028 API, HTTP with Digest auth).
//!
//! Every control call (sleep, wake, power target) returns only after the miner's own read-back
//! shows the change, or with a typed [`MinerError`] that carries what the miner answered —
//! including the firmware that reports success and changes nothing.

pub mod addr;
pub mod cgminer;
pub mod cli;
pub mod credentials;
pub mod detect;
pub mod dialects;
pub mod error;
pub mod http;
pub mod nameplate;
pub mod transport;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use serde::Serialize;

pub use addr::MinerAddr;
pub use credentials::{CredentialStore, Credentials, Secret};
pub use error::MinerError;
pub use transport::Timeouts;

/// What a miner is and what it can do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    pub dialect: MinerDialect,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub serial: Option<String>,
    pub mac: Option<String>,
    pub capabilities: Capabilities,
}

/// The levers a miner offers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub can_sleep: bool,
    /// Whether it takes a power target in watts (Antminer stock firmware has work modes only).
    pub power_target: bool,
    /// The range the firmware accepts, when it says.
    pub power_target_min_w: Option<u32>,
    pub power_target_max_w: Option<u32>,
    /// The targets the firmware can express, ascending, where it has steps (LuxOS profiles); a
    /// request lands on the highest step at or below it. Empty: any watt value in the range.
    pub power_target_steps_w: Vec<u32>,
}

/// One hashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardReading {
    pub index: u32,
    pub hashrate_ths: Option<f64>,
    pub temperature_c: Option<f64>,
}

/// One fan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanReading {
    pub index: u32,
    pub rpm: Option<f64>,
}

/// One reading of a miner. Values a miner did not report are `None`: never estimated, and the
/// state is never guessed (`unknown` when the firmware does not tell).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub addr: String,
    pub dialect: MinerDialect,
    pub reachable: bool,
    pub state: MinerState,
    pub model: Option<String>,
    pub hashrate_ths: Option<f64>,
    /// Measured (or reported by the firmware's own power meter); absent when the firmware
    /// reports none.
    pub power_w: Option<f64>,
    pub power_target_w: Option<u32>,
    pub boards: Vec<BoardReading>,
    pub fans: Vec<FanReading>,
    pub pool: Option<String>,
    pub uptime_s: Option<u64>,
    /// Errors the miner itself reports.
    pub miner_errors: Vec<String>,
    /// Why this reading is incomplete, when it is (unreachable, malformed reply, ...).
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
}

impl Reading {
    /// An empty reading: nothing known yet.
    pub fn empty(addr: &MinerAddr, dialect: MinerDialect) -> Self {
        Self {
            addr: addr.to_string(),
            dialect,
            reachable: true,
            state: MinerState::Unknown,
            model: None,
            hashrate_ths: None,
            power_w: None,
            power_target_w: None,
            boards: Vec::new(),
            fans: Vec::new(),
            pool: None,
            uptime_s: None,
            miner_errors: Vec::new(),
            error: None,
            error_kind: None,
        }
    }

    /// The reading of a miner that could not be read: state unknown, with the reason.
    pub fn failed(addr: &MinerAddr, dialect: MinerDialect, e: &MinerError) -> Self {
        Self {
            reachable: !e.is_unreachable(),
            error: Some(e.to_string()),
            error_kind: Some(e.kind()),
            ..Self::empty(addr, dialect)
        }
    }

    /// The reading as far as it can be believed. A reply that parsed but carried no hashrate
    /// at all (a truncated reply, a reply of the wrong shape) says nothing about whether the
    /// miner hashes; a state a dialect inferred without it ("faulted", "ramping") would be a
    /// guess. Such a reading is unknown, with the reason, so the miner counts as unseen.
    #[must_use]
    pub fn checked(mut self) -> Self {
        if self.error.is_none() && self.hashrate_ths.is_none() {
            self.error = Some(format!(
                "miner {}: the reply carried no hashrate (truncated or not a miner's reply); \
                 state unknown",
                self.addr
            ));
            self.error_kind = Some("incomplete");
            self.state = MinerState::Unknown;
        }
        self
    }

    /// A one-line summary for error messages.
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_owned(), |x| format!("{x:.1}"));
        format!(
            "state {}, {} TH/s, {} W, target {} W",
            self.state,
            f(self.hashrate_ths),
            f(self.power_w),
            self.power_target_w
                .map_or("?".to_owned(), |t| t.to_string()),
        )
    }
}

/// Timing for control calls and their read-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverOptions {
    pub timeouts: Timeouts,
    /// How long a control call waits for the read-back to show the change.
    pub settle: Duration,
    /// Pause between read-backs.
    pub poll_interval: Duration,
    /// Timeout of slow web endpoints (the Antminer CGI restarts cgminer before it answers).
    pub slow_request: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            settle: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            slow_request: Duration::from_secs(90),
        }
    }
}

/// One miner, whatever its firmware. Object-safe: fleets hold `Box<dyn MinerDriver>`.
#[async_trait]
pub trait MinerDriver: Send + Sync {
    fn dialect(&self) -> MinerDialect;
    fn addr(&self) -> &MinerAddr;

    /// Model, firmware, serial/MAC when offered, and capabilities.
    async fn identify(&self) -> Result<Identity, MinerError>;

    /// One reading. An error means nothing usable came back; see [`poll`] for a reading that
    /// records the failure instead.
    async fn read(&self) -> Result<Reading, MinerError>;

    /// Stops hashing; returns the read-back that shows the miner asleep.
    async fn sleep(&self) -> Result<Reading, MinerError>;

    /// Resumes hashing in the mode the miner had before it slept; returns the read-back.
    async fn wake(&self) -> Result<Reading, MinerError>;

    /// Sets the power target; returns the read-back that shows it.
    async fn set_power_target(&self, watts: u32) -> Result<Reading, MinerError>;

    /// Whether the firmware takes a power target while asleep and keeps it for the wake, so a
    /// wake to a target can set the target first and never run at the power it slept at.
    fn target_while_asleep(&self) -> bool {
        false
    }
}

/// A reading that never fails: an unreachable or unreadable miner yields a reading that says so
/// (and an incomplete reply one that says it is unknown, see [`Reading::checked`]).
pub async fn poll(driver: &dyn MinerDriver) -> Reading {
    match driver.read().await {
        Ok(r) => r.checked(),
        Err(e) => Reading::failed(driver.addr(), driver.dialect(), &e),
    }
}

/// Shared context a driver is built with.
#[derive(Debug, Clone)]
pub struct DriverContext {
    pub options: DriverOptions,
    pub credentials: Credentials,
    pub http: http::HttpClient,
    /// Remembers each miner's mode before sleep, for a faithful wake.
    pub modes: Arc<dyn verify::ModeMemory>,
}

impl DriverContext {
    pub fn new(options: DriverOptions, credentials: Credentials) -> Self {
        Self {
            options,
            credentials,
            http: http::HttpClient::new(options.timeouts),
            modes: Arc::new(verify::InMemoryModes::default()),
        }
    }
}

/// The driver for `dialect` at `addr`; a stock Antminer wakes into `antminer_wake_mode` when
/// the mode it had before sleeping is not known (other dialects resume as they were).
pub fn driver_for(
    dialect: MinerDialect,
    addr: MinerAddr,
    ctx: DriverContext,
    antminer_wake_mode: Option<u8>,
) -> Box<dyn MinerDriver> {
    use dialects::*;
    match dialect {
        MinerDialect::Antminer => {
            let mut a = antminer::Antminer::new(addr, ctx);
            a.wake_mode = antminer_wake_mode;
            Box::new(a)
        }
        MinerDialect::Braiins => Box::new(braiins::Braiins::new(addr, ctx)),
        MinerDialect::Luxos => Box::new(luxos::Luxos::new(addr, ctx)),
        MinerDialect::WhatsminerV2 => Box::new(whatsminer_v2::WhatsminerV2::new(addr, ctx)),
        MinerDialect::WhatsminerV3 => Box::new(whatsminer_v3::WhatsminerV3::new(addr, ctx)),
        MinerDialect::Bitaxe => Box::new(bitaxe::Bitaxe::new(addr, ctx)),
    }
}
