//! The site's controller, in this process through pivot-controller's library: the same parts
//! `pivot-controller serve` wires (SQLite store, gRPC API, executor, engine), with a
//! configuration for a simulated site and a market the composer replays from the trace.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pivot_controller::auth::{AuthConfig, AuthMode};
use pivot_controller::config::{AgentsConfig, Config, ListenConfig, SiteConfig, StoreConfig};
use pivot_controller::demand::source::WorkloadDemand;
use pivot_controller::engine::EngineConfig;
use pivot_controller::market::ai::AiDemandSourceConfig;
use pivot_controller::market::config::InputConfig;
use pivot_controller::market::source::{self, TraceReplay};
use pivot_controller::market::{
    Market, MarketConfig, MarketParts, PlausibleRanges, Sourced, Timing,
};
use pivot_controller::store::SqliteStore;
use pivot_controller::trace::Trace;
use pivot_controller::{Controller, api};
use tokio::sync::watch;

use crate::clock::SiteClock;

/// What a sleeping miner that measures (almost) nothing counts at, W: a control board and
/// fans. pivot-sim's miners draw 0.5 % of their nameplate asleep, 15 W for an S19j Pro.
pub const SLEEPING_MINER_W: f64 = 20.0;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("opening the store {path}: {source}")]
    Store {
        path: String,
        source: pivot_controller::store::StoreError,
    },
    #[error(
        "cannot listen on {addr}: {source} (another pivot controller or site running? pass --listen 127.0.0.1:0 for any free port)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The controller's configuration for the simulated site: real-time leases and timeouts (they
/// are wall-clock on a site too), telemetry every second, a sample of the history every
/// second, a plan at least every second; AI demand from `ai_demand` (the SIMULATED workload
/// manager's slurmrestd).
pub fn config(
    listen: SocketAddr,
    web: SocketAddr,
    store: &Path,
    cap_w: f64,
    reserve_w: f64,
    clock_speed: f64,
    ai_demand: InputConfig<AiDemandSourceConfig>,
) -> Config {
    // A failed move is remembered for ten minutes of trace time, at least two wall seconds; one
    // that keeps failing for up to six hours of it.
    let failure_memory_s = ((600.0 / clock_speed).round() as u64).max(2);
    let failure_memory_max_s = ((21_600.0 / clock_speed).round() as u64).max(failure_memory_s);
    Config {
        site: SiteConfig {
            id: "simulated-site".into(),
            cap_w,
            reserve_w,
        },
        listen: ListenConfig {
            grpc: listen,
            tls: None,
        },
        store: StoreConfig {
            path: store.to_owned(),
        },
        agents: AgentsConfig {
            telemetry_interval_s: 1,
            sleeping_miner_w: SLEEPING_MINER_W,
            lease_s: 60,
            ..AgentsConfig::default()
        },
        // A simulated site on loopback: anyone who reaches the port is an admin (as `dev`).
        auth: AuthConfig {
            mode: AuthMode::Open,
            ..AuthConfig::default()
        },
        market: MarketConfig {
            ai_demand,
            ..MarketConfig::default()
        },
        engine: EngineConfig {
            replan_s: 1,
            sample_s: 1,
            curtail_timeout_s: 30,
            gpu_timeout_s: 30,
            grant_timeout_s: 30,
            workload_timeout_s: 60,
            failure_memory_s,
            failure_memory_max_s,
            ..EngineConfig::default()
        },
        // The dashboard, as `dev` has it: the power stack, the plan and the decisions live.
        web: Some(pivot_controller::web::WebConfig::on(web)),
    }
}

/// A controller serving its API, its executor running; the engine waits for the market.
pub struct RunningController {
    pub ctl: Arc<Controller>,
    pub addr: SocketAddr,
    /// Where the dashboard listens, when the configuration has one.
    pub web: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), api::ServeError>>,
}

impl RunningController {
    pub async fn start(config: Config) -> Result<Self, ControllerError> {
        let path = config.store.path.clone();
        let store = SqliteStore::open(&path).map_err(|source| ControllerError::Store {
            path: path.display().to_string(),
            source,
        })?;
        let addr = config.listen.grpc;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ControllerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Bind { addr, source })?;
        let ctl =
            Controller::new(config, Arc::new(store)).map_err(|source| ControllerError::Store {
                path: path.display().to_string(),
                source,
            })?;
        tokio::spawn(pivot_controller::executor::run(Arc::clone(&ctl)));
        let (shutdown, mut stop) = watch::channel(false);
        let web = match ctl.config.web.clone() {
            Some(w) => {
                let listener = tokio::net::TcpListener::bind(w.listen)
                    .await
                    .map_err(|source| ControllerError::Bind {
                        addr: w.listen,
                        source,
                    })?;
                let at = listener
                    .local_addr()
                    .map_err(|source| ControllerError::Bind {
                        addr: w.listen,
                        source,
                    })?;
                let (ctl, mut stop) = (Arc::clone(&ctl), stop.clone());
                tokio::spawn(async move {
                    let until = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = pivot_controller::web::serve(ctl, &w, listener, until).await {
                        tracing::error!(error = %e, "The dashboard stopped");
                    }
                });
                Some(at)
            }
            None => None,
        };
        let server = tokio::spawn(api::serve(Arc::clone(&ctl), listener, None, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        Ok(Self {
            ctl,
            addr,
            web,
            shutdown,
            server,
        })
    }

    /// Starts the market replay and the control loop: from now on the site decides.
    pub async fn start_deciding(&self, trace: Arc<Trace>, trace_file: &Path, clock: &SiteClock) {
        let parts = trace_market(&trace, trace_file, clock, &self.ctl.config.market.ai_demand);
        let mut market = Market::new(parts);
        market.refresh_all(chrono::Utc::now()).await;
        let view = market.view();
        tokio::spawn(replay_rows(market, trace, clock.clone()));
        tokio::spawn(pivot_controller::engine::run(Arc::clone(&self.ctl), view));
    }

    /// Stops serving (in-flight calls finish).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

/// The market's prices as trace replays of one trace, on the site's clock; AI demand from the
/// workload manager `demand` names (the trace's column only where it names none).
fn trace_market(
    trace: &Arc<Trace>,
    file: &Path,
    clock: &SiteClock,
    demand: &InputConfig<AiDemandSourceConfig>,
) -> MarketParts {
    // The composer reads the market itself at every row (below); the sources' own schedule is
    // a fallback that never comes due first.
    let timing = Timing {
        refresh_s: 3_600,
        max_age_s: 3_600,
        timeout_s: 5,
    };
    let replay = clock.replay();
    MarketParts {
        hashprice: Sourced::new(
            TraceReplay::new(
                Arc::clone(trace),
                file,
                replay.clone(),
                source::hashprice_of,
            ),
            timing,
        ),
        energy: Sourced::new(
            TraceReplay::new(Arc::clone(trace), file, replay.clone(), source::energy_of),
            timing,
        ),
        ai_value: Sourced::new(
            TraceReplay::new(Arc::clone(trace), file, replay.clone(), source::ai_value_of),
            timing,
        ),
        ai_demand: match demand.source.workload() {
            Some(d) => Sourced::new(WorkloadDemand::new(d, None), demand.timing),
            None => Sourced::new(
                TraceReplay::new(Arc::clone(trace), file, replay, source::ai_demand_of),
                timing,
            ),
        },
        firm_contracts: Vec::new(),
        checks: PlausibleRanges::default(),
    }
}

/// Longest the market goes unread inside a long row, wall time.
const REFRESH_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

/// Reads the market as each trace row comes into force (a few milliseconds after, so the
/// replay is past the boundary), and once more when the trace has ended (the inputs then fail
/// and the planner holds). A fixed refresh interval would see a row late or skip it at
/// high speeds; this way the planner sees every row, as the backtest's does.
async fn replay_rows(mut market: Market, trace: Arc<Trace>, clock: SiteClock) {
    let boundaries = trace
        .rows()
        .iter()
        .map(|r| r.time)
        .skip(1)
        .chain(std::iter::once(trace.end()));
    for t in boundaries {
        let due = clock.wall_time(t) + chrono::Duration::milliseconds(5);
        loop {
            let now = chrono::Utc::now();
            let wait = (due - now).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait.min(REFRESH_AT_LEAST_EVERY)).await;
            if wait > REFRESH_AT_LEAST_EVERY {
                market.refresh_all(chrono::Utc::now()).await;
            }
        }
        market.refresh_all(chrono::Utc::now()).await;
    }
}
