//! Emulated ASIC miners that speak the real wire formats of six firmware dialects.
//!
//! Each emulated miner is a small shared state (one [`MinerHandle`]) plus one tokio listener task per
//! port it serves; nothing runs between requests. Power and hashrate are computed from the time the
//! last ramp started, so 10,000 miners in one process cost memory, not CPU.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pivot_sim::miner::SimError> {
//! use pivot_sim::miner::{spawn, Bind, Dialect, MinerSpec, Timing};
//! let miner = spawn(MinerSpec::new(Dialect::Luxos).timing(Timing::fast()), Bind::localhost()).await?;
//! let addr = miner.api_addr(); // talk cgminer JSON to it
//! let now = miner.handle().snapshot(); // what the "hardware" is doing
//! # let _ = (addr, now); Ok(()) }
//! ```
//!
//! The emulator shares no code with pivot's drivers: every reply here is written from the protocol
//! facts in `shared/PROTOCOLS.md` and the public clients (pyasic, asic-rs, luxos-tooling), so a
//! misunderstanding in a driver shows up as a failed test instead of hiding in both halves.

mod antminer;
pub mod auth_clock;
mod bitaxe;
mod braiins;
mod braiins_rest;
mod cgminer;
mod crypto;
mod faults;
mod graphql;
mod http;
mod luxos;
mod luxos_status;
mod readings;
mod state;
mod whatsminer_v2;
mod whatsminer_v3;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use faults::{Fault, HashUnit, JsonQuirk};
pub use state::{MinerHandle, RunState, Snapshot};

/// A firmware dialect: which APIs a miner serves and how it sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Stock Bitmain firmware: cgminer API on 4028, Digest-auth CGI on 80.
    Antminer,
    /// Braiins OS ≥ 25.07: REST `/api/v1` on 80, cgminer API (BOSminer) on 4028.
    Braiins,
    /// LuxOS: cgminer API on 4028 with sessions, `curtail`, `profileset`.
    Luxos,
    /// Whatsminer API v2: 4028, plaintext reads, AES-encrypted token writes.
    WhatsminerV2,
    /// Whatsminer API v3: 4433, 4-byte little-endian length prefix + JSON.
    WhatsminerV3,
    /// Bitaxe AxeOS: HTTP REST on 80, no auth.
    Bitaxe,
}

impl Dialect {
    /// Every dialect, in the order `mixed` fleets cycle through them.
    pub const ALL: [Dialect; 6] = [
        Dialect::Antminer,
        Dialect::Braiins,
        Dialect::Luxos,
        Dialect::WhatsminerV2,
        Dialect::WhatsminerV3,
        Dialect::Bitaxe,
    ];

    /// The name used on the command line and in `pivot-sim miners` output.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Antminer => "antminer",
            Dialect::Braiins => "braiins",
            Dialect::Luxos => "luxos",
            Dialect::WhatsminerV2 => "whatsminer-v2",
            Dialect::WhatsminerV3 => "whatsminer-v3",
            Dialect::Bitaxe => "bitaxe",
        }
    }

    /// The real firmware's primary API port (the one `pivot-sim miners` prints first).
    pub fn api_port(self) -> u16 {
        match self {
            Dialect::WhatsminerV3 => 4433,
            Dialect::Bitaxe => 80,
            _ => 4028,
        }
    }

    /// The port of the older API a firmware still answers besides its primary one: Whatsminer v3
    /// firmware's plaintext reads on 4028 (see `whatsminer_v3`). Served where miners have their
    /// real ports or ephemeral ones, not in `--port-base` layouts (pivot never uses it).
    pub fn legacy_api_port(self) -> Option<u16> {
        match self {
            Dialect::WhatsminerV3 => Some(4028),
            _ => None,
        }
    }

    /// The real firmware's second (HTTP) port, where it has one besides the primary API.
    pub fn http_port(self) -> Option<u16> {
        match self {
            Dialect::Antminer | Dialect::Braiins => Some(80),
            _ => None,
        }
    }

    /// Whether a sleep survives a reboot. LuxOS' `curtail sleep` and the Antminer's
    /// `miner-mode` (written to its config file) persist; a Braiins pause, a Whatsminer
    /// `power_off` / service stop and a Bitaxe pause are lost when the miner restarts.
    pub fn sleep_persists(self) -> bool {
        matches!(self, Dialect::Luxos | Dialect::Antminer)
    }

    /// Whether the dialect accepts a power target in watts (Antminer has work modes only,
    /// Bitaxe none).
    pub fn has_power_target(self) -> bool {
        matches!(
            self,
            Dialect::Braiins | Dialect::Luxos | Dialect::WhatsminerV2 | Dialect::WhatsminerV3
        )
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| SimError::UnknownDialect(s.to_owned()))
    }
}

/// A miner model: what the hardware draws and hashes at its nameplate (stock) setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    /// Marketing name, e.g. `"Antminer S19j Pro"`, `"Whatsminer M50S"`, `"Bitaxe Gamma"`.
    pub name: &'static str,
    /// Nameplate power at the wall, watts.
    pub nameplate_w: u32,
    /// Nameplate hashrate, TH/s.
    pub nameplate_ths: f64,
    /// Hashboards (chains) the model has; readings are split across them.
    pub boards: u8,
    /// ASIC chips on each hashboard (what `chain_acnN`, `Chips`, `Effective Chips` report).
    /// Counts as pyasic 0.79 (`miners/device/models`) and asic-rs 0.8.6 (`makes/*/hardware.rs`)
    /// both list them for the model.
    pub chips_per_board: u16,
    /// Cooling fans (hashboard fans; a Whatsminer's PSU fan is reported apart).
    pub fans: u8,
}

impl Model {
    /// Antminer S19j Pro 104 TH: 3068 W.
    pub const ANTMINER_S19J_PRO: Model = Model {
        name: "Antminer S19j Pro",
        nameplate_w: 3068,
        nameplate_ths: 104.0,
        boards: 3,
        chips_per_board: 126,
        fans: 4,
    };
    /// Antminer S21 200 TH: 3500 W.
    pub const ANTMINER_S21: Model = Model {
        name: "Antminer S21",
        nameplate_w: 3500,
        nameplate_ths: 200.0,
        boards: 3,
        chips_per_board: 108,
        fans: 4,
    };
    /// Whatsminer M50S 126 TH: 3276 W.
    pub const WHATSMINER_M50S: Model = Model {
        name: "Whatsminer M50S",
        nameplate_w: 3276,
        nameplate_ths: 126.0,
        boards: 3,
        chips_per_board: 135,
        fans: 2,
    };
    /// Whatsminer M60S 186 TH: 3441 W.
    pub const WHATSMINER_M60S: Model = Model {
        name: "Whatsminer M60S",
        nameplate_w: 3441,
        nameplate_ths: 186.0,
        boards: 3,
        chips_per_board: 245,
        fans: 2,
    };
    /// Bitaxe Gamma (BM1370) 1.2 TH: 17 W.
    pub const BITAXE_GAMMA: Model = Model {
        name: "Bitaxe Gamma",
        nameplate_w: 17,
        nameplate_ths: 1.2,
        boards: 1,
        chips_per_board: 1,
        fans: 1,
    };

    /// The model a dialect gets unless the spec names another.
    pub fn default_for(dialect: Dialect) -> Model {
        match dialect {
            Dialect::Antminer => Model::ANTMINER_S19J_PRO,
            Dialect::Braiins | Dialect::Luxos => Model::ANTMINER_S21,
            Dialect::WhatsminerV2 => Model::WHATSMINER_M50S,
            Dialect::WhatsminerV3 => Model::WHATSMINER_M60S,
            Dialect::Bitaxe => Model::BITAXE_GAMMA,
        }
    }

    /// Efficiency at nameplate, J/TH.
    pub fn efficiency_j_per_th(&self) -> f64 {
        if self.nameplate_ths > 0.0 {
            f64::from(self.nameplate_w) / self.nameplate_ths
        } else {
            0.0
        }
    }

    /// The power-target range the firmware accepts, watts: half the nameplate to 110 % of it.
    pub fn power_target_range_w(&self) -> (u32, u32) {
        (
            self.nameplate_w / 2,
            self.nameplate_w + self.nameplate_w / 10,
        )
    }

    /// The model name without the make (`"S19j Pro"` for `"Antminer S19j Pro"`).
    pub fn short_name(&self) -> &'static str {
        self.name
            .split_once(' ')
            .map_or(self.name, |(_, rest)| rest)
    }
}

/// How long the emulated hardware takes to do things.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Power and hashrate ramp from sleep (or a lower target) up to the target.
    pub ramp_up: Duration,
    /// Ramp down to sleep or a lower target.
    pub ramp_down: Duration,
    /// How long the Antminer's `set_miner_conf.cgi` takes to answer (it restarts cgminer).
    pub cgi_reply: Duration,
    /// How long a reboot keeps the miner off the network.
    pub reboot: Duration,
    /// LuxOS session idle expiry.
    pub session_idle: Duration,
    /// How long an Antminer web server takes a Digest nonce it issued: an older one is answered
    /// 401 with `stale=true` and a fresh challenge (lighttpd's nonces carry their issue time).
    pub digest_nonce_ttl: Duration,
}

impl Timing {
    /// Values seen on real hardware: ramps of tens of seconds, a 30 s CGI reply, a 90 s reboot.
    pub fn realistic() -> Timing {
        Timing {
            ramp_up: Duration::from_secs(45),
            ramp_down: Duration::from_secs(8),
            cgi_reply: Duration::from_secs(30),
            reboot: Duration::from_secs(90),
            session_idle: Duration::from_secs(60),
            digest_nonce_ttl: Duration::from_secs(600),
        }
    }

    /// Everything short enough for tests (LuxOS sessions still expire after 60 s idle).
    pub fn fast() -> Timing {
        Timing {
            ramp_up: Duration::from_millis(300),
            ramp_down: Duration::from_millis(150),
            cgi_reply: Duration::from_millis(200),
            reboot: Duration::from_millis(300),
            session_idle: Duration::from_secs(60),
            digest_nonce_ttl: Duration::from_secs(600),
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::realistic()
    }
}

/// Everything that defines one emulated miner before it starts.
#[derive(Clone, Debug)]
pub struct MinerSpec {
    /// Firmware dialect.
    pub dialect: Dialect,
    /// Hardware model.
    pub model: Model,
    /// Delays.
    pub timing: Timing,
    /// Faults active from the start (change them later with [`MinerHandle::set_faults`]).
    pub faults: Vec<Fault>,
    /// Start asleep instead of mining.
    pub start_sleeping: bool,
    /// Login the miner accepts: (user, password). Defaults: Antminer root/root, Braiins root/root,
    /// Whatsminer v2 admin/admin, v3 super/super; LuxOS and Bitaxe have no password.
    pub credentials: Option<(String, String)>,
    /// Serial number / MAC seed; distinct miners should get distinct values.
    pub serial: u32,
}

impl MinerSpec {
    /// A miner of the dialect's default model, realistic timing, no faults, mining.
    pub fn new(dialect: Dialect) -> MinerSpec {
        MinerSpec {
            dialect,
            model: Model::default_for(dialect),
            timing: Timing::realistic(),
            faults: Vec::new(),
            start_sleeping: false,
            credentials: None,
            serial: 1,
        }
    }

    /// Use another model.
    pub fn model(mut self, model: Model) -> MinerSpec {
        self.model = model;
        self
    }

    /// Use other delays ([`Timing::fast`] in tests).
    pub fn timing(mut self, timing: Timing) -> MinerSpec {
        self.timing = timing;
        self
    }

    /// Start with these faults.
    pub fn faults(mut self, faults: Vec<Fault>) -> MinerSpec {
        self.faults = faults;
        self
    }

    /// Start asleep.
    pub fn sleeping(mut self) -> MinerSpec {
        self.start_sleeping = true;
        self
    }

    /// Accept this user and password instead of the dialect's default.
    pub fn credentials(mut self, user: &str, password: &str) -> MinerSpec {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Set the serial seed (also used for the MAC address).
    pub fn serial(mut self, serial: u32) -> MinerSpec {
        self.serial = serial;
        self
    }

    /// The (user, password) the miner accepts.
    pub fn login(&self) -> (String, String) {
        if let Some((u, p)) = &self.credentials {
            return (u.clone(), p.clone());
        }
        let (u, p) = match self.dialect {
            Dialect::Antminer | Dialect::Braiins => ("root", "root"),
            Dialect::WhatsminerV2 => ("admin", "admin"),
            Dialect::WhatsminerV3 => ("super", "super"),
            Dialect::Luxos | Dialect::Bitaxe => ("", ""),
        };
        (u.to_owned(), p.to_owned())
    }
}

/// Where one miner listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Ephemeral ports (port 0) on this address: what tests want.
    Ephemeral(IpAddr),
    /// The dialect's real ports (4028, 80, 4433) on this address: what pyasic expects.
    RealPorts(IpAddr),
    /// Explicit addresses: the primary API, and the HTTP API where the dialect has one
    /// (ignored otherwise; an ephemeral port on the API's address when `None`).
    Explicit {
        /// The primary API (4028-style, 4433-style for Whatsminer v3, HTTP for Bitaxe).
        api: SocketAddr,
        /// The HTTP API (Antminer CGI, Braiins REST).
        http: Option<SocketAddr>,
    },
}

impl Bind {
    /// Ephemeral ports on 127.0.0.1.
    pub fn localhost() -> Bind {
        Bind::Ephemeral(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

/// How a fleet is laid out on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// Every miner on ephemeral ports of this address.
    Ephemeral(IpAddr),
    /// Consecutive ports from this one: the primary API, then the HTTP port where the dialect has
    /// one, then the next miner.
    PortBase(SocketAddr),
    /// Each miner on its own IPv4 address from this one upwards (127.1.0.1, 127.1.0.2, ...),
    /// with its dialect's real ports.
    IpRange(Ipv4Addr),
}

/// Errors of the emulator, each naming the miner or address concerned.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A dialect name that is not one of [`Dialect::ALL`] (or `mixed` where a fleet is asked for).
    #[error(
        "unknown miner dialect {0:?}: expected antminer, braiins, luxos, whatsminer-v2, whatsminer-v3 or bitaxe"
    )]
    UnknownDialect(String),
    /// A fault name that `--fault` does not know.
    #[error("unknown fault {0:?}: see `pivot-sim miners --help` for the list")]
    UnknownFault(String),
    /// A listener could not bind.
    #[error(
        "{dialect} miner: cannot listen on {addr}: {source} (port 80 needs root; IP ranges need 127.x addresses)"
    )]
    Bind {
        /// The dialect being started.
        dialect: Dialect,
        /// The address it asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An address range or port range ran past its end.
    #[error("address range starting at {start} has no room for {count} miners")]
    RangeExhausted {
        /// First address or port.
        start: String,
        /// Miners asked for.
        count: usize,
    },
}

/// A running emulated miner. Dropping it stops its listeners.
#[derive(Debug)]
pub struct SimMiner {
    api: SocketAddr,
    http: Option<SocketAddr>,
    legacy_api: Option<SocketAddr>,
    handle: MinerHandle,
}

impl SimMiner {
    /// The primary API address (4028-style, 4433 for Whatsminer v3, HTTP for Bitaxe).
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// The HTTP API address where the dialect has one besides the primary API (Antminer, Braiins).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The older API the firmware still answers, where it has one and it is served
    /// ([`Dialect::legacy_api_port`]).
    pub fn legacy_api_addr(&self) -> Option<SocketAddr> {
        self.legacy_api
    }

    /// The address in the syntax `pivot-agent` takes (`HOST:PORT[,http=PORT]`, see the agent's
    /// `miner::addr`), which `pivot-sim miners` prints.
    pub fn agent_addr(&self) -> String {
        match self.http {
            Some(http) => format!("{},http={}", self.api, http.port()),
            None => self.api.to_string(),
        }
    }

    /// A cloneable handle to read and steer the miner.
    pub fn handle(&self) -> MinerHandle {
        self.handle.clone()
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.handle.dialect()
    }
}

impl Drop for SimMiner {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Start one emulated miner. Must be called inside a tokio runtime.
///
/// # Errors
/// [`SimError::Bind`] when a port cannot be bound.
pub async fn spawn(spec: MinerSpec, bind: Bind) -> Result<SimMiner, SimError> {
    let dialect = spec.dialect;
    let (api_want, http_want) = match bind {
        Bind::Ephemeral(ip) => (
            SocketAddr::new(ip, 0),
            dialect.http_port().map(|_| SocketAddr::new(ip, 0)),
        ),
        Bind::RealPorts(ip) => (
            SocketAddr::new(ip, dialect.api_port()),
            dialect.http_port().map(|p| SocketAddr::new(ip, p)),
        ),
        Bind::Explicit { api, http } => (
            api,
            dialect
                .http_port()
                .map(|_| http.unwrap_or_else(|| SocketAddr::new(api.ip(), 0))),
        ),
    };
    let legacy_want = match bind {
        Bind::Ephemeral(ip) => dialect.legacy_api_port().map(|_| SocketAddr::new(ip, 0)),
        Bind::RealPorts(ip) => dialect.legacy_api_port().map(|p| SocketAddr::new(ip, p)),
        Bind::Explicit { .. } => None,
    };
    let handle = MinerHandle::new(spec);
    let api_listener = listen(dialect, api_want).await?;
    let http_listener = match http_want {
        Some(addr) => Some(listen(dialect, addr).await?),
        None => None,
    };
    let api = local_addr(dialect, &api_listener, api_want)?;
    let http = match &http_listener {
        Some(l) => Some(local_addr(dialect, l, http_want.unwrap_or(api_want))?),
        None => None,
    };
    let legacy_listener = match legacy_want {
        Some(addr) => Some(listen(dialect, addr).await?),
        None => None,
    };
    let legacy_api = match (&legacy_listener, legacy_want) {
        (Some(l), Some(want)) => Some(local_addr(dialect, l, want)?),
        _ => None,
    };
    let core = Arc::clone(handle.core());
    if let Some(l) = legacy_listener {
        cgminer::serve(l, Arc::clone(&core), whatsminer_v3::legacy_api);
    }
    match dialect {
        Dialect::Antminer => {
            cgminer::serve(api_listener, Arc::clone(&core), antminer::api);
            if let Some(l) = http_listener {
                http::serve(l, core, antminer::web);
            }
        }
        Dialect::Braiins => {
            cgminer::serve(api_listener, Arc::clone(&core), braiins::api);
            if let Some(l) = http_listener {
                http::serve(l, core, braiins::web);
            }
        }
        Dialect::Luxos => cgminer::serve(api_listener, core, luxos::api),
        Dialect::WhatsminerV2 => cgminer::serve(api_listener, core, whatsminer_v2::api),
        Dialect::WhatsminerV3 => whatsminer_v3::serve(api_listener, core),
        Dialect::Bitaxe => http::serve(api_listener, core, bitaxe::web),
    }
    Ok(SimMiner {
        api,
        http,
        legacy_api,
        handle,
    })
}

/// Start a fleet: one miner per spec, laid out by `addressing`.
///
/// # Errors
/// The first miner that cannot start; the ones started before it are stopped.
pub async fn spawn_fleet(
    specs: Vec<MinerSpec>,
    addressing: Addressing,
) -> Result<Vec<SimMiner>, SimError> {
    let count = specs.len();
    let mut miners = Vec::with_capacity(count);
    let mut next_port: u32 = match addressing {
        Addressing::PortBase(a) => u32::from(a.port()),
        _ => 0,
    };
    for (i, spec) in specs.into_iter().enumerate() {
        let bind = match addressing {
            Addressing::Ephemeral(ip) => Bind::Ephemeral(ip),
            Addressing::IpRange(start) => {
                let ip = u32::from(start)
                    .checked_add(u32::try_from(i).unwrap_or(u32::MAX))
                    .ok_or_else(|| SimError::RangeExhausted {
                        start: start.to_string(),
                        count,
                    })?;
                Bind::RealPorts(IpAddr::V4(Ipv4Addr::from(ip)))
            }
            Addressing::PortBase(base) => {
                let need = if spec.dialect.http_port().is_some() {
                    2
                } else {
                    1
                };
                let exhausted = || SimError::RangeExhausted {
                    start: base.to_string(),
                    count,
                };
                let api_port = u16::try_from(next_port).map_err(|_| exhausted())?;
                let http_port = u16::try_from(next_port + 1).ok();
                next_port += need;
                if next_port > 65536 {
                    return Err(exhausted());
                }
                Bind::Explicit {
                    api: SocketAddr::new(base.ip(), api_port),
                    http: http_port.map(|p| SocketAddr::new(base.ip(), p)),
                }
            }
        };
        miners.push(spawn(spec, bind).await?);
    }
    Ok(miners)
}

async fn listen(dialect: Dialect, addr: SocketAddr) -> Result<tokio::net::TcpListener, SimError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|source| SimError::Bind {
        dialect,
        addr,
        source,
    })?;
    // SO_REUSEADDR so a test that restarts a fleet on the same real ports does not wait out TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(|source| SimError::Bind {
            dialect,
            addr,
            source,
        })?;
    socket.bind(addr).map_err(|source| SimError::Bind {
        dialect,
        addr,
        source,
    })?;
    socket.listen(1024).map_err(|source| SimError::Bind {
        dialect,
        addr,
        source,
    })
}

fn local_addr(
    dialect: Dialect,
    listener: &tokio::net::TcpListener,
    wanted: SocketAddr,
) -> Result<SocketAddr, SimError> {
    listener.local_addr().map_err(|source| SimError::Bind {
        dialect,
        addr: wanted,
        source,
    })
}
