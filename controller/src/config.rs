//! The controller's configuration: one typed struct, loaded from a TOML file plus environment.
//!
//! Unknown keys and bad values are errors naming the file and the key; nothing falls back to a
//! silent default. Environment overrides go through [`EnvSource`] so they are unit-testable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything `pivot-controller serve` needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: SiteConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Identities and roles (`[auth]`); enforced unless `mode = "open"`.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Market inputs (`[market]`); fixed 2026 values when absent.
    #[serde(default)]
    pub market: crate::market::MarketConfig,
    /// The control loop (`[engine]`): cadence, phase timeouts, history.
    #[serde(default)]
    pub engine: crate::engine::EngineConfig,
    /// The dashboard, its JSON API and `/metrics` (`[web]`); off when absent.
    #[serde(default)]
    pub web: Option<crate::web::WebConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site identifier shown in status and the audit log.
    pub id: String,
    /// Contracted grid connection cap, watts.
    pub cap_w: f64,
    /// Power kept free below the cap, watts.
    #[serde(default)]
    pub reserve_w: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// gRPC listen address (AgentService, FleetService, health, reflection).
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// TLS for the gRPC port; plaintext when absent (dev, or behind a TLS proxy).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            tls: None,
        }
    }
}

/// PEM files for the controller's TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients (agents, pivotctl) must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file; created when missing.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// How often agents send telemetry, seconds.
    #[serde(default = "default_telemetry_interval_s")]
    pub telemetry_interval_s: u64,
    /// Maximum draw assumed for a miner whose firmware reports neither nameplate nor power
    /// range (stock Antminer), W. Counted whenever it is not asleep or cannot be seen.
    #[serde(default = "default_unknown_miner_max_w")]
    pub unknown_miner_max_w: f64,
    /// Draw assumed for a sleeping miner that measures none, W.
    #[serde(default = "default_sleeping_miner_w")]
    pub sleeping_miner_w: f64,
    /// How long an intent's lease runs, seconds; renewed every quarter of it while the
    /// controller lives and stands behind the intent. On controller loss an agent holds (never
    /// raises) once it runs out.
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
    /// The most devices one host may declare.
    #[serde(default = "default_max_devices_per_host")]
    pub max_devices_per_host: usize,
    /// The most power one host's inventory may declare (miners at maximum, GPUs at maximum
    /// caps, host base), W; default: twice the site cap.
    #[serde(default)]
    pub max_host_power_w: Option<f64>,
}

fn default_max_devices_per_host() -> usize {
    20_000
}

fn default_lease_s() -> u64 {
    120
}

fn default_unknown_miner_max_w() -> f64 {
    // An S21-class air-cooled miner at stock settings draws about 3.5 kW.
    3600.0
}

fn default_sleeping_miner_w() -> f64 {
    100.0
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            telemetry_interval_s: default_telemetry_interval_s(),
            unknown_miner_max_w: default_unknown_miner_max_w(),
            sleeping_miner_w: default_sleeping_miner_w(),
            lease_s: default_lease_s(),
            max_devices_per_host: default_max_devices_per_host(),
            max_host_power_w: None,
        }
    }
}

impl AgentsConfig {
    pub fn assumptions(&self) -> crate::fleet::Assumptions {
        crate::fleet::Assumptions {
            unknown_miner_max_w: self.unknown_miner_max_w,
            sleeping_miner_w: self.sleeping_miner_w,
        }
    }
}

fn default_telemetry_interval_s() -> u64 {
    10
}

/// A configuration that cannot be used: which file, which key, what was expected.
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

/// Where environment overrides come from (the process environment, or a map in tests).
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// No environment at all: for tests, which must not depend on the process's.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEnv;

impl EnvSource for NoEnv {
    fn get(&self, _key: &str) -> Option<String> {
        None
    }
}

/// The process environment.
#[derive(Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Config {
    /// Loads `path` and applies `PIVOT_*` overrides from `env`.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses a configuration document; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if let Some(v) = env.get("PIVOT_LISTEN_GRPC") {
            config.listen.grpc = v.parse().map_err(|e| ConfigError::Env {
                var: "PIVOT_LISTEN_GRPC".into(),
                problem: format!("`{v}` is not a socket address: {e}"),
            })?;
        }
        if let Some(v) = env.get("PIVOT_STORE_PATH") {
            config.store.path = PathBuf::from(v);
        }
        config.validate(path)?;
        Ok(config)
    }

    /// What `serve` will open, checked now: TLS files readable and PEM, the store's directory
    /// there and writable, the market's files and secrets present. `check-config` runs it; a
    /// bad one is an error naming the key and the file.
    pub fn check_files(&self, path: &Path, env: &dyn EnvSource) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if let Some(tls) = &self.listen.tls {
            for (key, file) in [
                ("listen.tls.cert_file", Some(&tls.cert_file)),
                ("listen.tls.key_file", Some(&tls.key_file)),
                ("listen.tls.client_ca_file", tls.client_ca_file.as_ref()),
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
        } else if self.auth.mode == crate::auth::AuthMode::Enforced
            && !self.auth.allow_plaintext_tokens
        {
            return Err(invalid(
                "listen.tls",
                "[auth] is enforced but the gRPC port has no TLS: no client could prove who it is \
                 (add [listen.tls], or allow_plaintext_tokens behind a TLS proxy, or mode = \"open\" for a lab)"
                    .into(),
            ));
        }
        let dir = self
            .store
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let meta = std::fs::metadata(dir).map_err(|e| {
            invalid(
                "store.path",
                format!("directory {} is not there: {e}", dir.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(invalid(
                "store.path",
                format!("{} is not a directory", dir.display()),
            ));
        }
        if meta.permissions().readonly() {
            return Err(invalid(
                "store.path",
                format!("directory {} is read-only", dir.display()),
            ));
        }
        if self.store.path.is_dir() {
            return Err(invalid(
                "store.path",
                format!(
                    "{} is a directory, not a database file",
                    self.store.path.display()
                ),
            ));
        }
        self.market
            .check(env)
            .map_err(|e| invalid(&e.key, e.problem))?;
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if self.site.id.trim().is_empty() {
            return Err(invalid("site.id", "must not be empty".into()));
        }
        if !(self.site.cap_w.is_finite() && self.site.cap_w > 0.0) {
            return Err(invalid(
                "site.cap_w",
                format!(
                    "must be a positive number of watts, got {}",
                    self.site.cap_w
                ),
            ));
        }
        if !(self.site.reserve_w.is_finite()
            && self.site.reserve_w >= 0.0
            && self.site.reserve_w < self.site.cap_w)
        {
            return Err(invalid(
                "site.reserve_w",
                format!(
                    "must be at least 0 and below site.cap_w ({}), got {}",
                    self.site.cap_w, self.site.reserve_w
                ),
            ));
        }
        for (key, v) in [
            (
                "agents.unknown_miner_max_w",
                self.agents.unknown_miner_max_w,
            ),
            ("agents.sleeping_miner_w", self.agents.sleeping_miner_w),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    key,
                    format!("must be a number of watts >= 0, got {v}"),
                ));
            }
        }
        if let Some(w) = self.agents.max_host_power_w
            && !(w.is_finite() && w > 0.0)
        {
            return Err(invalid(
                "agents.max_host_power_w",
                format!("must be a positive number of watts, got {w}"),
            ));
        }
        if !(8..=86_400).contains(&self.agents.lease_s) {
            return Err(invalid(
                "agents.lease_s",
                format!(
                    "must be between 8 and 86400 seconds, got {}",
                    self.agents.lease_s
                ),
            ));
        }
        if let Err(e) = self.market.validate() {
            return Err(invalid(&e.key, e.problem));
        }
        if let Err((key, problem)) = self.engine.validate() {
            return Err(invalid(&key, problem));
        }
        if let Some(Err((key, problem))) = self.web.as_ref().map(crate::web::WebConfig::validate) {
            return Err(invalid(&key, problem));
        }
        if self.agents.telemetry_interval_s == 0 {
            return Err(invalid(
                "agents.telemetry_interval_s",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
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
[site]
id = "tx-1"
cap_w = 20_000_000
reserve_w = 500_000
[store]
path = "/var/lib/pivot/pivot.db"
"#;

    #[test]
    fn parses_and_applies_env() {
        let env = MapEnv(HashMap::from([("PIVOT_LISTEN_GRPC", "0.0.0.0:6000")]));
        let c = Config::parse(GOOD, Path::new("c.toml"), &env).unwrap();
        assert_eq!(c.site.cap_w, 20_000_000.0);
        assert_eq!(c.listen.grpc.port(), 6000);
        assert_eq!(c.agents.telemetry_interval_s, 10);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = GOOD.replace("reserve_w", "reserv_w");
        let e = Config::parse(
            &text,
            Path::new("/etc/pivot/c.toml"),
            &MapEnv(HashMap::new()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/etc/pivot/c.toml"), "{e}");
        assert!(e.contains("reserv_w"), "{e}");
    }

    #[test]
    fn reserve_above_cap_is_rejected() {
        let text = GOOD.replace("500_000", "30_000_000");
        let e = Config::parse(&text, Path::new("c.toml"), &MapEnv(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("site.reserve_w"), "{e}");
    }

    #[test]
    fn a_failure_memory_ceiling_below_the_memory_is_rejected() {
        let text = format!("{GOOD}[engine]\nfailure_memory_s = 600\nfailure_memory_max_s = 60\n");
        let e = Config::parse(&text, Path::new("c.toml"), &MapEnv(HashMap::new())).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("engine.failure_memory_max_s"), "{e}");
        assert!(e.contains("at least failure_memory_s (600), got 60"), "{e}");
    }

    #[test]
    fn bad_env_names_the_variable() {
        let env = MapEnv(HashMap::from([("PIVOT_LISTEN_GRPC", "nope")]));
        let e = Config::parse(GOOD, Path::new("c.toml"), &env).unwrap_err();
        assert!(e.to_string().contains("PIVOT_LISTEN_GRPC"), "{e}");
    }
}
