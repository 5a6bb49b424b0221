//! `pivot-agent miner ...`: probe, sleep, wake and set power targets from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use pivot_proto::model::MinerDialect;

use super::detect::detect;
use super::transport::Timeouts;
use super::verify::FileModes;
use super::{
    Credentials, DriverContext, DriverOptions, MinerAddr, MinerDriver, MinerError, Reading,
    driver_for, poll,
};

/// How many miners are talked to at once.
const CONCURRENCY: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct MinerArgs {
    #[command(subcommand)]
    command: MinerCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Firmware dialect: auto, antminer, braiins, luxos, whatsminer-v2, whatsminer-v3, bitaxe.
    #[arg(long, global = true, default_value = "auto")]
    dialect: String,
    /// Total time for one request (e.g. 5s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Time to establish a connection.
    #[arg(long, global = true, default_value = "3s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long a control command waits for the miner's read-back to show the change.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_duration)]
    settle: Duration,
    /// Pause between read-backs.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// User for the miner's write API (default: the firmware's factory user).
    #[arg(long, global = true, env = "PIVOT_MINER_USERNAME")]
    username: Option<String>,
    /// Password for the miner's write API (default: the firmware's factory password).
    #[arg(
        long,
        global = true,
        env = "PIVOT_MINER_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Where miners' work modes before sleep are kept, so `wake` restores them.
    #[arg(long, global = true, env = "PIVOT_MINER_STATE_FILE")]
    state_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum MinerCommand {
    /// Read miners once: state, hashrate, power, power target.
    Probe {
        /// HOST[:PORT][,http=PORT]
        #[arg(required = true)]
        addrs: Vec<MinerAddr>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put miners to sleep (hashboards off) and confirm by read-back.
    Sleep {
        #[arg(required = true)]
        addrs: Vec<MinerAddr>,
    },
    /// Wake miners into the mode they had before sleeping and confirm by read-back.
    Wake {
        #[arg(required = true)]
        addrs: Vec<MinerAddr>,
        /// Antminer work mode to wake into when the one before sleep is not known
        /// (0 normal, 2 high, 3 low).
        #[arg(long, value_parser = wake_mode)]
        work_mode: Option<u8>,
    },
    /// Set a miner's power target in watts and confirm by read-back.
    PowerTarget { addr: MinerAddr, watts: u32 },
}

/// Parses `500ms`, `5s`, `2m` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 5s, 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

struct Fleet {
    common: Common,
    options: DriverOptions,
    dialect: Option<MinerDialect>,
    modes: Arc<dyn super::verify::ModeMemory>,
    http: super::http::HttpClient,
}

impl Fleet {
    fn new(common: Common) -> anyhow::Result<Self> {
        let dialect = match common.dialect.as_str() {
            "auto" => None,
            name => Some(name.parse::<MinerDialect>()?),
        };
        let timeouts = Timeouts {
            connect: common.connect_timeout,
            request: common.timeout,
        };
        let options = DriverOptions {
            timeouts,
            settle: common.settle,
            poll_interval: common.poll_interval,
            slow_request: common.settle.max(common.timeout),
        };
        let path = common.state_file.clone().or_else(default_state_file);
        let modes: Arc<dyn super::verify::ModeMemory> = match path {
            Some(p) => Arc::new(FileModes::new(p)),
            None => Arc::new(super::verify::InMemoryModes::default()),
        };
        Ok(Self {
            http: super::http::HttpClient::new(timeouts),
            common,
            options,
            dialect,
            modes,
        })
    }

    fn credentials(&self, dialect: MinerDialect) -> Credentials {
        let d = Credentials::default_for(dialect);
        Credentials::new(
            self.common.username.clone().unwrap_or(d.username),
            self.common
                .password
                .clone()
                .unwrap_or_else(|| d.password.expose().to_owned()),
        )
    }

    /// The driver for `addr`; a stock Antminer wakes into `wake_mode` when the mode it had
    /// before sleeping is not known.
    async fn driver(
        &self,
        addr: &MinerAddr,
        wake_mode: Option<u8>,
    ) -> Result<Box<dyn MinerDriver>, (MinerDialect, MinerError)> {
        let dialect = match self.dialect {
            Some(d) => d,
            None => detect(addr, &self.http, self.options.timeouts)
                .await
                .map_err(|e| (MinerDialect::Antminer, e))?,
        };
        let ctx = DriverContext {
            options: self.options,
            credentials: self.credentials(dialect),
            http: self.http.clone(),
            modes: Arc::clone(&self.modes),
        };
        Ok(driver_for(dialect, addr.clone(), ctx, wake_mode))
    }
}

fn wake_mode(s: &str) -> Result<u8, String> {
    s.parse::<u8>()
        .ok()
        .filter(|m| super::dialects::antminer::WAKE_MODES.contains(m))
        .ok_or_else(|| {
            format!("`{s}` is not a work mode a stock Antminer mines in: 0 normal, 2 high or 3 low")
        })
}

fn default_state_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("pivot/miner-modes.json"))
}

/// One address probed: a reading, or nothing that answered as a known miner (no dialect is
/// named for it: nothing said which it is).
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Probed {
    Read(Reading),
    Undetected { addr: String, error: String },
}

impl Probed {
    fn ok(&self) -> bool {
        matches!(self, Probed::Read(r) if r.reachable && r.error.is_none())
    }

    fn line(&self) -> String {
        match self {
            Probed::Read(r) => table_line(r),
            Probed::Undetected { addr, error } => {
                format!("{addr:<28} {:<14} error: {error}", "undetected")
            }
        }
    }
}

fn table_line(r: &Reading) -> String {
    let f = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |x| format!("{x:.2} {unit}"));
    let mut line = format!(
        "{:<28} {:<14} {:<22} {:<9} {:>14} {:>12} target {:>8}",
        r.addr,
        r.dialect,
        r.model.as_deref().unwrap_or("-"),
        if r.reachable {
            r.state.as_str()
        } else {
            "unreachable"
        },
        f(r.hashrate_ths, "TH/s"),
        f(r.power_w, "W"),
        r.power_target_w
            .map_or("-".to_owned(), |t| format!("{t} W")),
    );
    if let Some(e) = &r.error {
        line.push_str(&format!("  error: {e}"));
    }
    line
}

pub async fn run(args: MinerArgs) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::new(args.common)?;
    match args.command {
        MinerCommand::Probe { addrs, json } => {
            let rows: Vec<Probed> = futures::stream::iter(addrs)
                .map(|a| {
                    let fleet = &fleet;
                    async move {
                        match fleet.driver(&a, None).await {
                            Ok(d) => Probed::Read(poll(d.as_ref()).await),
                            Err((_, e)) => Probed::Undetected {
                                addr: a.to_string(),
                                error: e.to_string(),
                            },
                        }
                    }
                })
                .buffered(CONCURRENCY)
                .collect()
                .await;
            let failed = rows.iter().filter(|r| !r.ok()).count();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).context("rendering readings")?
                );
            } else {
                for r in &rows {
                    println!("{}", r.line());
                }
            }
            if failed > 0 {
                eprintln!(
                    "pivot-agent: {failed} of {} miners could not be read",
                    rows.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        MinerCommand::Sleep { addrs } => control(&fleet, addrs, Action::Sleep).await,
        MinerCommand::Wake { addrs, work_mode } => {
            control(&fleet, addrs, Action::Wake(work_mode)).await
        }
        MinerCommand::PowerTarget { addr, watts } => {
            control(&fleet, vec![addr], Action::PowerTarget(watts)).await
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Sleep,
    Wake(Option<u8>),
    PowerTarget(u32),
}

async fn control(fleet: &Fleet, addrs: Vec<MinerAddr>, action: Action) -> anyhow::Result<ExitCode> {
    let results: Vec<(MinerAddr, Result<Reading, MinerError>)> = futures::stream::iter(addrs)
        .map(|a| async move {
            let result = async {
                let wake_mode = match action {
                    Action::Wake(mode) => mode,
                    _ => None,
                };
                let driver = fleet.driver(&a, wake_mode).await.map_err(|(_, e)| e)?;
                match action {
                    Action::Sleep => driver.sleep().await,
                    Action::Wake(_) => driver.wake().await,
                    Action::PowerTarget(w) => {
                        // The daemon's rule: refused outside the firmware's range, or above
                        // nameplate where it reports none; steps land at or below the ask.
                        let id = driver.identify().await?;
                        let nameplate = super::nameplate::resolve(None, None, id.model.as_deref());
                        let c = &id.capabilities;
                        let caps = crate::reconcile::TargetCaps {
                            power_target: c.power_target,
                            min_w: c.power_target_min_w,
                            max_w: c.power_target_max_w,
                            steps_w: &c.power_target_steps_w,
                            nameplate_power_w: nameplate.map(|n| f64::from(n.power_w)),
                        };
                        let landing =
                            crate::reconcile::power_target_landing(w, &caps).map_err(|e| {
                                MinerError::Other {
                                    addr: a.to_string(),
                                    message: format!("{e}; nothing was changed"),
                                }
                            })?;
                        driver.set_power_target(landing).await
                    }
                }
            }
            .await;
            (a, result)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut failed = 0;
    for (a, r) in &results {
        match r {
            Ok(reading) => println!("{a}: ok, {}", reading.summary()),
            Err(e) => {
                failed += 1;
                eprintln!("pivot-agent: {e}");
                let _ = a;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
