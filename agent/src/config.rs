//! The agent's configuration: one typed struct from a TOML file plus `PIVOT_AGENT_*` environment
//! overrides. Unknown keys and bad values are errors naming the file, the key and what was
//! expected; `pivot-agent check-config FILE` reports them without starting anything.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::miner::MinerAddr;
use pivot_proto::model::MinerDialect;

/// Largest address range one `[[miners]]` entry may expand to.
pub const MAX_RANGE_ADDRESSES: u32 = 65_536;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable host identity reported to the controller.
    pub host_id: String,
    /// Where the agent keeps the intents it holds and the GPU caps to re-apply.
    pub state_dir: PathBuf,
    pub controller: ControllerConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub miners: Vec<MinerEntry>,
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialEntry>,
    #[serde(default)]
    pub gpus: GpuConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default)]
    pub host: HostConfig,
    /// The workload manager that hands this host to AI jobs (`[workload]`); none when absent,
    /// and workload intents are then refused.
    #[serde(default)]
    pub workload: Option<crate::workload::WorkloadConfig>,
}

/// The host itself, for the controller's accounting of a GPU host (base draw plus GPU caps).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's own draw without its GPUs (CPUs, memory, NICs, fans) at full load, W.
    pub base_power_w: Option<u32>,
    /// The most the whole host can draw, GPUs at their maximum caps included, W.
    pub max_power_w: Option<u32>,
}

/// The largest draw one host may be configured with, W (a rack of GPU servers is ~130 kW).
pub const MAX_HOST_POWER_W: u32 = 1_000_000;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// e.g. "http://controller.site:50051" or "https://…" with `tls`.
    pub url: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Longest wait between reconnection attempts, seconds.
    #[serde(default = "default_backoff_max_s")]
    pub reconnect_max_s: u64,
    /// Largest difference between this host's clock and the controller's, seconds, at which the
    /// agent still trusts leases (absolute times on the controller's clock) to raise power.
    #[serde(default = "default_max_clock_skew_s")]
    pub max_clock_skew_s: f64,
}

fn default_backoff_max_s() -> u64 {
    30
}

fn default_max_clock_skew_s() -> f64 {
    5.0
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle (PEM) the controller's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Server name to verify, when it differs from the URL's host.
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Miner poll interval, seconds.
    #[serde(default = "default_miner_interval")]
    pub miner_interval_s: f64,
    /// GPU and host poll interval, seconds.
    #[serde(default = "default_gpu_interval")]
    pub gpu_interval_s: f64,
    /// Miners read at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-request timeout for one miner, milliseconds (connect and reply each).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a control call waits for the miner's read-back, seconds.
    #[serde(default = "default_settle_s")]
    pub settle_s: f64,
    /// How long after an intent is applied its physical effect must show, seconds.
    #[serde(default = "default_confirm_s")]
    pub confirm_s: f64,
    /// How often configured miners that were not found are looked for again, seconds.
    #[serde(default = "default_rediscover_s")]
    pub rediscover_s: f64,
    /// Least time between two tries of the same target on one miner (a retry after a failure,
    /// a re-apply after the miner drifted), seconds. By default per firmware: stock Antminer 120
    /// (its CGI restarts cgminer), Braiins 30, the others 15.
    pub pacing_s: Option<f64>,
}

fn default_rediscover_s() -> f64 {
    300.0
}

fn default_miner_interval() -> f64 {
    10.0
}
fn default_gpu_interval() -> f64 {
    5.0
}
fn default_concurrency() -> usize {
    1024
}
fn default_timeout_ms() -> u64 {
    3000
}
fn default_settle_s() -> f64 {
    120.0
}
fn default_confirm_s() -> f64 {
    180.0
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            miner_interval_s: default_miner_interval(),
            gpu_interval_s: default_gpu_interval(),
            concurrency: default_concurrency(),
            timeout_ms: default_timeout_ms(),
            settle_s: default_settle_s(),
            confirm_s: default_confirm_s(),
            rediscover_s: default_rediscover_s(),
            pacing_s: None,
        }
    }
}

impl PollConfig {
    pub fn miner_interval(&self) -> Duration {
        Duration::from_secs_f64(self.miner_interval_s)
    }
    pub fn gpu_interval(&self) -> Duration {
        Duration::from_secs_f64(self.gpu_interval_s)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Miners at one address or a range of addresses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MinerEntry {
    /// One miner: `HOST[:PORT][,http=PORT]`.
    pub addr: Option<String>,
    /// Many: an IPv4 CIDR ("10.1.0.0/24") or an inclusive range ("10.1.0.10-10.1.0.99").
    pub range: Option<String>,
    /// "auto" (default) or a dialect name.
    #[serde(default = "auto")]
    pub dialect: String,
    /// Name of a `[credentials.NAME]` table; the dialect's default account otherwise.
    pub credentials: Option<String>,
    /// Primary API port for every address of a range.
    pub port: Option<u16>,
    /// Web API port for every address of a range.
    pub http_port: Option<u16>,
    /// Nameplate draw at the wall, W, for every miner of the entry; wins over the agent's table
    /// of models.
    pub nameplate_power_w: Option<u32>,
    /// Nameplate hashrate, TH/s.
    pub nameplate_hashrate_ths: Option<f64>,
    /// Stock Antminer: the work mode (0 normal, 2 high, 3 low) to wake into when the one it had
    /// before sleeping is not known — it was asleep before this agent first saw it. Without it
    /// such a wake fails for good (the agent does not guess a mode, which sets the draw).
    pub antminer_wake_mode: Option<u8>,
}

fn auto() -> String {
    "auto".to_owned()
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    pub username: String,
    /// Read from this environment variable (preferred) ...
    pub password_env: Option<String>,
    /// ... or from this file (first line) ...
    pub password_file: Option<PathBuf>,
    /// ... or given inline (discouraged: config files get copied around).
    pub password: Option<String>,
}

impl std::fmt::Debug for CredentialEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialEntry")
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    #[serde(default)]
    pub enabled: bool,
    /// NVML library to load; the system's libnvidia-ml.so.1 when absent.
    pub nvml_lib: Option<PathBuf>,
    /// Caps the controller may ask for are clamped to the GPU's constraints and to this range.
    pub min_cap_w: Option<u32>,
    pub max_cap_w: Option<u32>,
    /// How long a new cap must show on the measured draw, seconds.
    #[serde(default = "default_gpu_confirm")]
    pub confirm_s: f64,
}

fn default_gpu_confirm() -> f64 {
    3.0
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nvml_lib: None,
            min_cap_w: None,
            max_cap_w: None,
            confirm_s: default_gpu_confirm(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz`, `/readyz`. Empty string disables.
    #[serde(default = "default_metrics")]
    pub listen: String,
}

fn default_metrics() -> String {
    "127.0.0.1:9102".to_owned()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics(),
        }
    }
}

/// What the agent does when its intents' lease expires without word from the controller.
/// It may only hold or lower power.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fallback {
    /// Keep devices as they are; never raise power.
    #[default]
    Hold,
    /// Sleep every miner and set every GPU to its minimum cap.
    Curtail,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("environment variable {var}: {problem}")]
    Env { var: String, problem: String },
}

/// Where environment overrides come from.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

#[derive(Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// One miner the configuration names, with its dialect hint and credentials reference.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerTarget {
    pub addr: MinerAddr,
    /// `None` for auto-detection.
    pub dialect: Option<MinerDialect>,
    pub credentials: Option<String>,
    pub nameplate_power_w: Option<u32>,
    pub nameplate_hashrate_ths: Option<f64>,
    /// Stock Antminer: the work mode to wake into when the one before sleep is not known.
    pub antminer_wake_mode: Option<u8>,
}

impl Config {
    /// The polls this agent runs, with their configuration keys: what the controller's reading
    /// window is checked against (`link::unseen_between_polls`).
    pub fn polls(&self) -> Vec<(&'static str, Duration)> {
        let mut polls = Vec::new();
        if !self.miners.is_empty() {
            polls.push(("poll.miner_interval_s", self.poll.miner_interval()));
        }
        if self.gpus.enabled {
            polls.push(("poll.gpu_interval_s", self.poll.gpu_interval()));
        }
        polls
    }

    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    pub fn parse(text: &str, path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if let Some(v) = env.get("PIVOT_AGENT_CONTROLLER_URL") {
            c.controller.url = v;
        }
        if let Some(v) = env.get("PIVOT_AGENT_HOST_ID") {
            c.host_id = v;
        }
        if let Some(v) = env.get("PIVOT_AGENT_STATE_DIR") {
            c.state_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("PIVOT_AGENT_METRICS_LISTEN") {
            c.metrics.listen = v;
        }
        c.validate(path, env)?;
        Ok(c)
    }

    fn validate(&self, path: &Path, env: &dyn EnvSource) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };
        if self.host_id.trim().is_empty() {
            return Err(invalid("host_id".into(), "must not be empty".into()));
        }
        if let Some(c) = self.host_id.chars().find(|c| c.is_control()) {
            // It labels every metric series and every audit record: a NUL or a newline in it
            // breaks both.
            return Err(invalid(
                "host_id".into(),
                format!("must not contain control characters (found {c:?})"),
            ));
        }
        let skew = self.controller.max_clock_skew_s;
        if !(skew.is_finite() && skew > 0.0 && skew <= 3600.0) {
            return Err(invalid(
                "controller.max_clock_skew_s".into(),
                format!("must be a number of seconds in (0, 3600], got {skew}"),
            ));
        }
        let h = &self.host;
        for (key, v) in [
            ("host.base_power_w", h.base_power_w),
            ("host.max_power_w", h.max_power_w),
        ] {
            if v.is_some_and(|w| w == 0 || w > MAX_HOST_POWER_W) {
                return Err(invalid(
                    key.into(),
                    format!("must be a draw in watts in 1-{MAX_HOST_POWER_W}"),
                ));
            }
        }
        if let (Some(base), Some(max)) = (h.base_power_w, h.max_power_w)
            && base > max
        {
            return Err(invalid(
                "host.base_power_w".into(),
                format!("{base} W is above host.max_power_w {max} W"),
            ));
        }
        let url = &self.controller.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "controller.url".into(),
                format!("`{url}` must start with http:// or https://"),
            ));
        }
        let authority = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|p| p > 0);
        let host_ok = if let Some(v6) = authority.strip_prefix('[') {
            v6.split_once(']').is_some_and(|(h, rest)| {
                !h.is_empty() && (rest.is_empty() || rest.strip_prefix(':').is_some_and(port_ok))
            })
        } else {
            match authority.split_once(':') {
                Some((h, p)) => !h.is_empty() && port_ok(p),
                None => !authority.is_empty(),
            }
        };
        if !host_ok {
            return Err(invalid(
                "controller.url".into(),
                format!("`{url}` names no host (and port), e.g. https://controller.site:50051"),
            ));
        }
        if url.starts_with("http://") && self.controller.tls.is_some() {
            // Silently ignoring [controller.tls] would send the session in the clear while the
            // operator believes it is protected.
            return Err(invalid(
                "controller.tls".into(),
                format!(
                    "[controller.tls] is set but controller.url `{url}` is plain http://; use https://"
                ),
            ));
        }
        if url.starts_with("https://") && self.controller.tls.is_none() {
            return Err(invalid(
                "controller.tls".into(),
                "an https:// controller needs [controller.tls] with ca_file".into(),
            ));
        }
        if let Some(tls) = &self.controller.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(invalid(
                "controller.tls".into(),
                "cert_file and key_file go together".into(),
            ));
        }
        let p = &self.poll;
        for (key, v) in [
            ("poll.miner_interval_s", p.miner_interval_s),
            ("poll.gpu_interval_s", p.gpu_interval_s),
            ("poll.settle_s", p.settle_s),
            ("poll.confirm_s", p.confirm_s),
            ("poll.rediscover_s", p.rediscover_s),
            ("poll.pacing_s", p.pacing_s.unwrap_or(1.0)),
            ("gpus.confirm_s", self.gpus.confirm_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 86_400.0) {
                return Err(invalid(
                    key.into(),
                    format!("must be a number of seconds in (0, 86400), got {v}"),
                ));
            }
        }
        if p.concurrency == 0 {
            return Err(invalid(
                "poll.concurrency".into(),
                "must be at least 1".into(),
            ));
        }
        if p.timeout_ms == 0 {
            return Err(invalid(
                "poll.timeout_ms".into(),
                "must be at least 1".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.gpus.min_cap_w, self.gpus.max_cap_w)
            && lo > hi
        {
            return Err(invalid(
                "gpus.min_cap_w".into(),
                format!("{lo} is above gpus.max_cap_w {hi}"),
            ));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen".into(),
                format!(
                    "`{}` is not an address such as 127.0.0.1:9102",
                    self.metrics.listen
                ),
            ));
        }
        for (name, c) in &self.credentials {
            let key = format!("credentials.{name}");
            let sources = [
                c.password_env.is_some(),
                c.password_file.is_some(),
                c.password.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                return Err(invalid(
                    key,
                    "give exactly one of password_env, password_file, password".into(),
                ));
            }
            if let Some(var) = &c.password_env
                && env.get(var).is_none()
            {
                return Err(invalid(
                    format!("{key}.password_env"),
                    format!("environment variable {var} is not set"),
                ));
            }
        }
        if let Some(w) = &self.workload {
            w.validate().map_err(|e| invalid(e.key, e.problem))?;
        }
        let targets = self.miner_targets(path)?;
        let mut seen: std::collections::HashMap<(&str, Option<u16>), usize> =
            std::collections::HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            if let Some(first) = seen.insert((t.addr.host.as_str(), t.addr.port), i) {
                // Two entries for one miner would poll it twice and drive it from two slots.
                return Err(invalid(
                    "miners".into(),
                    format!(
                        "miner {} is listed twice (addresses {} and {} in the expanded list)",
                        t.addr,
                        first + 1,
                        i + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What `run` will open, proven now: the TLS files are readable PEM, password files are
    /// readable, the NVML library named exists, the state directory is a directory (or can be
    /// made under an existing one). `check-config` and `run` both call it.
    pub fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if let Some(tls) = &self.controller.tls {
            for (key, file) in [
                ("controller.tls.ca_file", Some(&tls.ca_file)),
                ("controller.tls.cert_file", tls.cert_file.as_ref()),
                ("controller.tls.key_file", tls.key_file.as_ref()),
            ] {
                let Some(file) = file else { continue };
                let text = std::fs::read_to_string(file)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", file.display())))?;
                if !text.contains("-----BEGIN ") {
                    return Err(invalid(
                        key,
                        format!("{} is not a PEM file", file.display()),
                    ));
                }
            }
        }
        for (name, c) in &self.credentials {
            if let Some(file) = &c.password_file {
                std::fs::read(file).map_err(|e| {
                    invalid(
                        &format!("credentials.{name}.password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
            }
        }
        if self.gpus.enabled
            && let Some(lib) = &self.gpus.nvml_lib
            && !lib.is_file()
        {
            return Err(invalid(
                "gpus.nvml_lib",
                format!("{} is not a file", lib.display()),
            ));
        }
        let dir = &self.state_dir;
        if dir.exists() {
            if !dir.is_dir() {
                return Err(invalid(
                    "state_dir",
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
        } else if let Some(parent) = dir.ancestors().skip(1).find(|a| a.exists())
            && !parent.is_dir()
        {
            return Err(invalid(
                "state_dir",
                format!(
                    "{} cannot be made: {} is not a directory",
                    dir.display(),
                    parent.display()
                ),
            ));
        }
        Ok(())
    }

    /// Every miner the configuration names, ranges expanded.
    pub fn miner_targets(&self, path: &Path) -> Result<Vec<MinerTarget>, ConfigError> {
        let mut out = Vec::new();
        for (i, m) in self.miners.iter().enumerate() {
            let key = |k: &str| format!("miners[{i}].{k}");
            let invalid = |key: String, problem: String| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            };
            if m.nameplate_power_w
                .is_some_and(|w| w == 0 || w > MAX_HOST_POWER_W)
            {
                return Err(invalid(
                    key("nameplate_power_w"),
                    format!("must be a draw in watts in 1-{MAX_HOST_POWER_W}"),
                ));
            }
            if m.nameplate_hashrate_ths
                .is_some_and(|h| !(h.is_finite() && h > 0.0 && h < 1e6))
            {
                return Err(invalid(
                    key("nameplate_hashrate_ths"),
                    "must be a positive number of TH/s".into(),
                ));
            }
            if m.nameplate_hashrate_ths.is_some() && m.nameplate_power_w.is_none() {
                return Err(invalid(
                    key("nameplate_hashrate_ths"),
                    "give nameplate_power_w with it".into(),
                ));
            }
            let dialect = if m.dialect == "auto" {
                None
            } else {
                Some(
                    m.dialect
                        .parse::<MinerDialect>()
                        .map_err(|e| invalid(key("dialect"), e.to_string()))?,
                )
            };
            if let Some(mode) = m.antminer_wake_mode {
                if !crate::miner::dialects::antminer::WAKE_MODES.contains(&mode) {
                    return Err(invalid(
                        key("antminer_wake_mode"),
                        format!(
                            "must be a stock Antminer work mode: 0 normal, 2 high or 3 low, got {mode}"
                        ),
                    ));
                }
                if dialect.is_some_and(|d| d != MinerDialect::Antminer) {
                    return Err(invalid(
                        key("antminer_wake_mode"),
                        format!("only for stock Antminers, not dialect `{}`", m.dialect),
                    ));
                }
            }
            if let Some(name) = &m.credentials
                && !self.credentials.contains_key(name)
            {
                return Err(invalid(
                    key("credentials"),
                    format!("no [credentials.{name}] table"),
                ));
            }
            match (&m.addr, &m.range) {
                (Some(a), None) => {
                    if m.port.is_some() || m.http_port.is_some() {
                        return Err(invalid(
                            key("port"),
                            "with `addr`, give ports inside it: HOST:PORT,http=PORT".into(),
                        ));
                    }
                    let addr = a
                        .parse::<MinerAddr>()
                        .map_err(|e| invalid(key("addr"), e.to_string()))?;
                    out.push(MinerTarget {
                        addr,
                        dialect,
                        credentials: m.credentials.clone(),
                        nameplate_power_w: m.nameplate_power_w,
                        nameplate_hashrate_ths: m.nameplate_hashrate_ths,
                        antminer_wake_mode: m.antminer_wake_mode,
                    });
                }
                (None, Some(r)) => {
                    for ip in expand_range(r).map_err(|p| invalid(key("range"), p))? {
                        let mut addr = MinerAddr::new(ip.to_string());
                        addr.port = m.port;
                        addr.http_port = m.http_port;
                        out.push(MinerTarget {
                            addr,
                            dialect,
                            credentials: m.credentials.clone(),
                            nameplate_power_w: m.nameplate_power_w,
                            nameplate_hashrate_ths: m.nameplate_hashrate_ths,
                            antminer_wake_mode: m.antminer_wake_mode,
                        });
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("miners[{i}]"),
                        "give exactly one of `addr` or `range`".into(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Expands "a.b.c.d/len" or "a.b.c.d-e.f.g.h" into addresses (a CIDR skips its network and
/// broadcast addresses when it is /30 or larger).
pub fn expand_range(r: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (start, end) = if let Some((ip, len)) = r.split_once('/') {
        let ip: Ipv4Addr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{ip}` is not an IPv4 address"))?;
        let len: u32 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("`/{len}` is not a prefix length 0-32"))?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = u32::from(ip) & mask;
        let last = net | !mask;
        if len <= 30 {
            (net + 1, last - 1)
        } else {
            (net, last)
        }
    } else if let Some((a, b)) = r.split_once('-') {
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("`{b}` is not an IPv4 address"))?;
        if u32::from(a) > u32::from(b) {
            return Err(format!("range `{r}` ends before it starts"));
        }
        (u32::from(a), u32::from(b))
    } else {
        return Err(format!(
            "`{r}` is neither a CIDR (10.1.0.0/24) nor a range (10.1.0.10-10.1.0.99)"
        ));
    };
    let count = end - start + 1;
    if count > MAX_RANGE_ADDRESSES {
        return Err(format!(
            "`{r}` holds {count} addresses; at most {MAX_RANGE_ADDRESSES} per entry"
        ));
    }
    Ok((start..=end).map(Ipv4Addr::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl EnvSource for MapEnv {
        fn get(&self, key: &str) -> Option<String> {
            self.0.get(key).map(|v| (*v).to_owned())
        }
    }

    const GOOD: &str = r#"
host_id = "rack-1"
state_dir = "/var/lib/pivot-agent"
[controller]
url = "http://10.0.0.1:50051"
[[miners]]
range = "10.1.0.0/30"
dialect = "luxos"
credentials = "lux"
[[miners]]
addr = "10.1.1.5:4028,http=8080"
[credentials.lux]
username = "root"
password_env = "LUX_PW"
"#;

    fn env() -> MapEnv {
        MapEnv(HashMap::from([("LUX_PW", "secret")]))
    }

    #[test]
    fn parses_and_expands() {
        let c = Config::parse(GOOD, Path::new("a.toml"), &env()).unwrap();
        let t = c.miner_targets(Path::new("a.toml")).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].addr.host, "10.1.0.1");
        assert_eq!(t[1].addr.host, "10.1.0.2");
        assert_eq!(t[0].dialect, Some(MinerDialect::Luxos));
        assert_eq!(t[2].addr.http_port, Some(8080));
        assert_eq!(t[2].dialect, None);
        assert_eq!(t[2].antminer_wake_mode, None);
        assert_eq!(c.fallback, Fallback::Hold);
        let text = GOOD.replace(
            "addr = \"10.1.1.5:4028,http=8080\"",
            "addr = \"10.1.1.5\"\ndialect = \"antminer\"\nantminer_wake_mode = 3",
        );
        let c = Config::parse(&text, Path::new("a.toml"), &env()).unwrap();
        let t = c.miner_targets(Path::new("a.toml")).unwrap();
        assert_eq!(t[2].antminer_wake_mode, Some(3));
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            (
                GOOD.replace("dialect = \"luxos\"", "dialect = \"luxor\""),
                "miners[0].dialect",
            ),
            (
                GOOD.replace("password_env = \"LUX_PW\"", "password_env = \"NOPE\""),
                "credentials.lux.password_env",
            ),
            (
                GOOD.replace("10.1.0.0/30", "10.1.0.0/33"),
                "miners[0].range",
            ),
            (GOOD.replace("http://10", "ftp://10"), "controller.url"),
            (GOOD.replace("state_dir", "statedir"), "statedir"),
            (
                format!("{GOOD}\n[poll]\nminer_interval_s = -1\n"),
                "poll.miner_interval_s",
            ),
            (format!("{GOOD}\n[fallback]\n"), "fallback"),
            (GOOD.replace("rack-1", "rack\u{0}1"), "host_id"),
            (
                format!("{GOOD}\n[host]\nbase_power_w = 2000\nmax_power_w = 1500\n"),
                "host.base_power_w",
            ),
            (
                format!("{GOOD}\n[host]\nmax_power_w = 0\n"),
                "host.max_power_w",
            ),
            (
                GOOD.replace(
                    "url = \"http://10.0.0.1:50051\"",
                    "url = \"http://10.0.0.1:50051\"\nmax_clock_skew_s = -1",
                ),
                "controller.max_clock_skew_s",
            ),
            (
                GOOD.replace(
                    "addr = \"10.1.1.5:4028,http=8080\"",
                    "addr = \"10.1.1.5\"\nnameplate_hashrate_ths = 100.0",
                ),
                "miners[1].nameplate_hashrate_ths",
            ),
            // issue 11: a URL with no host, TLS configured for a plain-http URL, one miner twice.
            (GOOD.replace("http://10.0.0.1:50051", "http://"), "controller.url"),
            (GOOD.replace("http://10.0.0.1:50051", "http://:50051"), "controller.url"),
            (GOOD.replace("10.0.0.1:50051", "10.0.0.1:99999"), "controller.url"),
            (
                GOOD.replace(
                    "url = \"http://10.0.0.1:50051\"",
                    "url = \"http://10.0.0.1:50051\"\n[controller.tls]\nca_file = \"/etc/pivot/ca.pem\"",
                ),
                "controller.tls",
            ),
            (
                format!("{GOOD}\n[[miners]]\naddr = \"10.1.0.2\"\n"),
                "listed twice",
            ),
            // A wake mode that is the sleep mode, or on a miner that is no stock Antminer.
            (
                GOOD.replace(
                    "addr = \"10.1.1.5:4028,http=8080\"",
                    "addr = \"10.1.1.5\"\nantminer_wake_mode = 1",
                ),
                "miners[1].antminer_wake_mode",
            ),
            (
                GOOD.replace(
                    "credentials = \"lux\"",
                    "credentials = \"lux\"\nantminer_wake_mode = 0",
                ),
                "miners[0].antminer_wake_mode",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, Path::new("/etc/pivot/agent.toml"), &env())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/pivot/agent.toml") && e.contains(key),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn ipv6_and_https_controllers_parse() {
        for url in [
            "http://[fd00::1]:50051",
            "http://controller.site",
            "http://[fd00::1]",
        ] {
            let text = GOOD.replace("http://10.0.0.1:50051", url);
            Config::parse(&text, Path::new("a.toml"), &env())
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    /// `check_files` proves what `run` will open: a missing CA, a file that is not PEM, an
    /// unreadable password file, a missing NVML library, a state_dir that is a file.
    #[test]
    fn check_files_names_what_run_could_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pem = d.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(d.join("not.pem"), "hello").unwrap();
        std::fs::write(d.join("pw"), "secret").unwrap();
        std::fs::write(d.join("a-file"), "").unwrap();
        let base = |tls_ca: &str, pw: &str, nvml: &str, state: &str| {
            format!(
                "host_id = \"rack-1\"\nstate_dir = \"{state}\"\n[controller]\nurl = \"https://10.0.0.1:50051\"\n\
                 [controller.tls]\nca_file = \"{tls_ca}\"\n[gpus]\nenabled = true\nnvml_lib = \"{nvml}\"\n\
                 [[miners]]\naddr = \"10.1.1.5\"\ncredentials = \"lux\"\n[credentials.lux]\nusername = \"root\"\npassword_file = \"{pw}\"\n"
            )
        };
        let p = |name: &str| d.join(name).display().to_string();
        let good = base(&p("ca.pem"), &p("pw"), &p("pw"), &p("state/new"));
        let c = Config::parse(&good, Path::new("a.toml"), &env()).unwrap();
        c.check_files(Path::new("a.toml")).unwrap();
        for (text, key) in [
            (
                base(&p("nope.pem"), &p("pw"), &p("pw"), &p("state")),
                "controller.tls.ca_file",
            ),
            (
                base(&p("not.pem"), &p("pw"), &p("pw"), &p("state")),
                "controller.tls.ca_file",
            ),
            (
                base(&p("ca.pem"), &p("nope"), &p("pw"), &p("state")),
                "credentials.lux.password_file",
            ),
            (
                base(&p("ca.pem"), &p("pw"), &p("nope.so"), &p("state")),
                "gpus.nvml_lib",
            ),
            (
                base(&p("ca.pem"), &p("pw"), &p("pw"), &p("a-file")),
                "state_dir",
            ),
            (
                base(&p("ca.pem"), &p("pw"), &p("pw"), &p("a-file/sub")),
                "state_dir",
            ),
        ] {
            let c = Config::parse(&text, Path::new("a.toml"), &env()).unwrap();
            let e = c.check_files(Path::new("a.toml")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("a.toml"), "{key}: {e}");
        }
    }

    #[test]
    fn host_and_nameplates_parse() {
        let text = GOOD.replace(
            "addr = \"10.1.1.5:4028,http=8080\"",
            "addr = \"10.1.1.5:4028,http=8080\"\nnameplate_power_w = 3250\nnameplate_hashrate_ths = 95.0",
        ) + "\n[host]\nbase_power_w = 1800\nmax_power_w = 12000\n";
        let c = Config::parse(&text, Path::new("a.toml"), &env()).unwrap();
        assert_eq!(c.host.base_power_w, Some(1800));
        assert_eq!(c.host.max_power_w, Some(12000));
        assert_eq!(c.controller.max_clock_skew_s, 5.0);
        let t = c.miner_targets(Path::new("a.toml")).unwrap();
        assert_eq!(t[2].nameplate_power_w, Some(3250));
        assert_eq!(t[2].nameplate_hashrate_ths, Some(95.0));
    }

    #[test]
    fn workload_section_parses_and_its_errors_name_the_key() {
        let text = format!(
            "{GOOD}\n[workload]\nmanager = \"slurm\"\nnode_name = \"gpu-01\"\ngrace_s = 60\n[workload.slurm]\nafter_grace = \"cancel\"\n"
        );
        let c = Config::parse(&text, Path::new("a.toml"), &env()).unwrap();
        let w = c.workload.unwrap();
        assert_eq!(w.node_name.as_deref(), Some("gpu-01"));
        assert_eq!(w.grace_s, 60.0);
        assert!(
            Config::parse(GOOD, Path::new("a.toml"), &env())
                .unwrap()
                .workload
                .is_none()
        );
        for (tail, key) in [
            (
                "manager = \"slurm\"\nnode_name = \"gpu[1-2]\"\n",
                "workload.node_name",
            ),
            ("manager = \"exec\"\n", "workload.exec"),
            ("manager = \"slurm\"\ngrace_s = -5\n", "workload.grace_s"),
            ("manager = \"slurm\"\ngrace = 5\n", "grace"),
        ] {
            let text = format!("{GOOD}\n[workload]\n{tail}");
            let e = Config::parse(&text, Path::new("/etc/pivot/agent.toml"), &env())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/pivot/agent.toml") && e.contains(key),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn fallback_parses() {
        let text = format!("fallback = \"curtail\"\n{GOOD}");
        let c = Config::parse(&text, Path::new("a.toml"), &env()).unwrap();
        assert_eq!(c.fallback, Fallback::Curtail);
    }

    #[test]
    fn ranges() {
        assert_eq!(expand_range("10.0.0.5-10.0.0.7").unwrap().len(), 3);
        assert_eq!(expand_range("10.0.0.9/32").unwrap().len(), 1);
        assert_eq!(expand_range("10.0.0.0/24").unwrap().len(), 254);
        assert!(expand_range("10.0.0.0/8").is_err());
        assert!(expand_range("10.0.0.9-10.0.0.1").is_err());
    }
}
