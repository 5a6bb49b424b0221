//! One run of the simulated site, start to end: size the site, fit the trace to it, start the
//! controller, the miners, the GPU hosts and the agents, wait until the controller sees every
//! device, put the site in its static start, then let the market replay and the controller
//! decide, printing each decision; at the trace's end, read back what it earned.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pivot_controller::Controller;
use pivot_controller::backtest::Options;
use pivot_controller::engine::units::{self, UnitSettings};
use pivot_controller::trace::Trace;
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use pivot_sim::miner::Timing;
use tonic::transport::Channel;

use crate::clock::SiteClock;
use crate::controller::{self, RunningController};
use crate::fleet::{FleetLayout, GPUS_PER_HOST, site_cap_w};
use crate::hosts::{self, Agents, Miners};
use crate::narrator::{self, TraceTimes};
use crate::policy::{self, SitePolicy};
use crate::scenario::{self, Reference};
use crate::sitemodel::{self, SiteModel, Transitions};
use crate::summary::{self, Modelled, Realised};
use crate::utility;

/// Everything `pivot-site` is asked to do.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    pub listen: SocketAddr,
    /// The dashboard's address.
    pub web: SocketAddr,
    pub speed: f64,
    pub miners: usize,
    pub racks: usize,
    pub gpu_hosts: usize,
    /// TRACE.csv; `None` = the bundled trace.
    pub trace: Option<PathBuf>,
    pub from: Option<DateTime<Utc>>,
    pub hours: Option<f64>,
    /// Policy document; `None` = the controller's default policy.
    pub policy: Option<PathBuf>,
    /// How long before a trace cap the grid announces it, trace time.
    pub dr_notice: chrono::Duration,
    pub zone: Tz,
    /// Where the site's files go (SITE.toml, the trace played, the policies, the store, the
    /// agents' state, summary.json); a temporary directory when `None`.
    pub out_dir: Option<PathBuf>,
    /// Keep serving after the trace ends, until interrupted.
    pub keep_running: bool,
    pub hourly: bool,
    /// The modelled transition times written into SITE.toml, trace seconds.
    pub model_transitions: Transitions,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] pivot_controller::trace::TraceError),
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Speed(#[from] crate::clock::SpeedError),
    #[error(transparent)]
    Controller(#[from] controller::ControllerError),
    #[error(transparent)]
    Hosts(#[from] hosts::HostsError),
    #[error(transparent)]
    Model(#[from] sitemodel::ModelError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WlmError),
    #[error("--miners 0 and --gpu-hosts 0: a site needs something to run")]
    Empty,
    #[error(
        "--miners {miners}: about {needed} open files needed (the emulated miners' listeners and \
         the agents' connections to them), the limit is {limit} (`ulimit -n`; raise it, or split \
         a larger fleet across processes as site/bench/curtail-fleet.sh does)"
    )]
    TooManyMiners {
        miners: usize,
        needed: u64,
        limit: u64,
    },
    #[error("the site did not come up within {within:?}: {waiting}")]
    NotReady { within: Duration, waiting: String },
    #[error("agent {host} stopped: {reason}")]
    AgentStopped { host: String, reason: String },
    #[error("the controller's API at {url}: {message}")]
    Api { url: String, message: String },
    #[error("interrupted")]
    Interrupted,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SiteError {
    move |source| SiteError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, text: &str) -> Result<(), SiteError> {
    std::fs::write(path, text).map_err(io("writing", path))
}

/// Open files one emulated miner costs while the site starts: its listeners (two for the web
/// dialects) and, while the agents read it, both ends of their connection. A 2,000-miner site
/// held 5,623 descriptors at its peak (2.8 a miner with the rest of the site).
const FILES_PER_MINER: u64 = 3;
/// Open files the rest of the site holds, with room to spare: the controller, its store and web
/// server, the agents' links, the GPU hosts' fake NVML and the workload manager (a site of 6
/// miners and 8 GPU hosts held 69 at its peak).
const FILES_BASE: u64 = 256;
const FILES_PER_GPU_HOST: u64 = 8;

/// Refuses, before anything starts, a fleet this process cannot open the files for: without it a
/// site too large for the limit fails part way up with `Too many open files` (and a huge
/// `--miners` fills memory first).
fn fits_open_files(miners: usize, gpu_hosts: usize, limit: u64) -> Result<(), SiteError> {
    let needed = (miners as u64)
        .saturating_mul(FILES_PER_MINER)
        .saturating_add((gpu_hosts as u64).saturating_mul(FILES_PER_GPU_HOST))
        .saturating_add(FILES_BASE);
    if needed > limit {
        return Err(SiteError::TooManyMiners {
            miners,
            needed,
            limit,
        });
    }
    Ok(())
}

/// How long the fleet may take to be seen whole by the controller.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The trace to play: its text and name.
fn trace_text(path: Option<&Path>) -> Result<(String, String), SiteError> {
    match path {
        None => Ok((
            crate::BUNDLED_TRACE.to_owned(),
            format!("{} (bundled)", crate::BUNDLED_TRACE_PATH),
        )),
        Some(p) => Ok((
            std::fs::read_to_string(p).map_err(io("reading the trace", p))?,
            p.display().to_string(),
        )),
    }
}

/// Waits until `ok` holds of the controller's fleet summary, or fails naming what is missing.
async fn until_fleet(
    ctl: &Controller,
    agents: &mut Agents,
    what: impl Fn(&pivot_controller::fleet::FleetSummary) -> Option<String>,
) -> Result<(), SiteError> {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        let s = ctl.registry.summary(
            &ctl.config.agents.assumptions(),
            ctl.config.engine.unknown_host_base_w_per_gpu,
        );
        let Some(waiting) = what(&s) else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(SiteError::NotReady {
                within: READY_WITHIN,
                waiting,
            });
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            (host, reason) = agents.first_exit() => return Err(SiteError::AgentStopped { host, reason }),
        }
    }
}

/// The controller's units of the fleet as it sees it now (what its planner would plan on).
fn fleet_units(ctl: &Controller) -> units::Units {
    let intents = ctl
        .ledger
        .all()
        .into_iter()
        .map(|d| (d.intent.device_id.clone(), d))
        .collect();
    let settings = UnitSettings {
        now: Utc::now(),
        stale_after: ctl.stale_after(),
        full_service_cap_w: ctl.config.engine.gpu_full_service_cap_w,
        unknown_base_w_per_gpu: ctl.config.engine.unknown_host_base_w_per_gpu,
        firm: &[],
    };
    ctl.registry
        .with_agents(|a| units::units(a, &intents, &[], &BTreeSet::new(), &settings))
}

/// Where the run's files live; removed at the end when temporary.
enum OutDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl OutDir {
    fn path(&self) -> &Path {
        match self {
            OutDir::Kept(p) => p,
            OutDir::Temporary(t) => t.path(),
        }
    }
}

async fn interrupted() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the site; returns what the run earned.
pub async fn run(opts: SiteOptions) -> Result<(Realised, Modelled), SiteError> {
    if opts.miners == 0 && opts.gpu_hosts == 0 {
        return Err(SiteError::Empty);
    }
    // Fails early on a bad speed, before anything starts (the policy is scaled by it).
    crate::clock::SiteClock::check_speed(opts.speed)?;
    fits_open_files(
        opts.miners,
        opts.gpu_hosts,
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX),
    )?;
    let out = match &opts.out_dir {
        Some(p) => {
            std::fs::create_dir_all(p).map_err(io("creating", p))?;
            OutDir::Kept(p.clone())
        }
        None => OutDir::Temporary(
            tempfile::Builder::new()
                .prefix("pivot-site-")
                .tempdir()
                .map_err(io(
                    "creating a temporary directory in",
                    &std::env::temp_dir(),
                ))?,
        ),
    };
    let dir = out.path().to_owned();

    // The site and the trace fitted to it.
    let layout = FleetLayout::new(opts.miners, opts.racks, opts.gpu_hosts, Timing::fast());
    let (cap_w, reserve_w) = site_cap_w(&layout);
    let gpus = u32::try_from(opts.gpu_hosts)
        .unwrap_or(u32::MAX)
        .saturating_mul(GPUS_PER_HOST);
    let (text, trace_name) = trace_text(opts.trace.as_deref())?;
    let reference: Option<Reference> = scenario::reference(&text, &trace_name)?;
    let full = Trace::parse(&text, &trace_name)?;
    let window = scenario::window(&full, opts.from, opts.hours)?;
    let trace = Arc::new(scenario::fit(&window, reference.as_ref(), cap_w, gpus));
    let trace_file = dir.join("trace.csv");
    write(&trace_file, &scenario::to_csv(&trace))?;
    let (policy_text, policy_name) = match &opts.policy {
        Some(p) => (
            std::fs::read_to_string(p).map_err(io("reading the policy", p))?,
            p.display().to_string(),
        ),
        None => (
            pivot_controller::policy::DEFAULT_POLICY.to_owned(),
            "the built-in policy".to_owned(),
        ),
    };
    let site_policy: SitePolicy = policy::scale(&policy_text, &policy_name, opts.speed)?;
    write(&dir.join("policy.toml"), &site_policy.text)?;
    write(&dir.join("policy.scaled.toml"), &site_policy.scaled_text)?;
    let fake_nvml = if opts.gpu_hosts > 0 {
        Some(hosts::find_fake_nvml()?)
    } else {
        None
    };

    // The SIMULATED workload manager, the controller, the miners, the agents.
    let wlm = crate::workload::SimulatedWlm::start(
        &dir,
        hosts::gpu_nodes(&dir.join("hosts"), &layout),
        Arc::clone(&trace),
        crate::BUNDLED_SEED,
    )
    .await?;
    let running = RunningController::start(controller::config(
        opts.listen,
        opts.web,
        &dir.join("pivot.db"),
        cap_w,
        reserve_w,
        opts.speed,
        wlm.demand_config()?,
    ))
    .await?;
    let url = format!("http://{}", running.addr);
    let miners = Miners::start(&layout).await?;
    let configs = hosts::write_agent_configs(
        &dir.join("hosts"),
        &layout,
        &miners,
        &url,
        fake_nvml.as_deref(),
        &wlm.host_workload(&dir.join("sim-workload-hook"), opts.speed)?,
    )?;
    let mut agents = Agents::start(&configs)?;
    let ctl = Arc::clone(&running.ctl);
    let (n_agents, n_miners) = (
        u32::try_from(configs.len()).unwrap_or(u32::MAX),
        u32::try_from(opts.miners).unwrap_or(u32::MAX),
    );
    until_fleet(&ctl, &mut agents, |s| {
        (s.agents_connected < n_agents || s.miners_mining + s.miners_sleeping < n_miners || s.gpus_total < gpus)
            .then(|| {
                format!(
                    "{} of {n_agents} agents connected, {} of {n_miners} miners read, {} of {gpus} GPUs",
                    s.agents_connected,
                    s.miners_mining + s.miners_sleeping,
                    s.gpus_total
                )
            })
    })
    .await?;

    // The static start, on the controller's own view of the fleet.
    let fleet = fleet_units(&ctl);
    let model: SiteModel = sitemodel::site_model(
        &fleet.miners,
        &fleet.gpu_hosts,
        &ctl.config.agents.assumptions(),
        site_policy.document.economic.unknown_miner_j_per_th,
        cap_w,
        reserve_w,
        opts.model_transitions,
    )?;
    write(&dir.join("site.toml"), &model.toml)?;
    let first_cap = trace
        .rows()
        .first()
        .and_then(|r| r.cap_w)
        .unwrap_or(cap_w)
        .min(cap_w);
    let mining = sitemodel::static_start(&model.site, first_cap - reserve_w);
    let handles = miners.by_device_id();
    let mut asleep = 0u32;
    for (ids, keep) in model.miner_groups.iter().zip(&mining) {
        for id in ids
            .iter()
            .skip(usize::try_from(*keep).unwrap_or(usize::MAX))
        {
            if let Some(h) = handles.get(id) {
                hosts::remember_work_mode(&dir.join("hosts"), &layout, &miners, id).await?;
                h.sleep();
                asleep += 1;
            }
        }
    }
    until_fleet(&ctl, &mut agents, |s| {
        (s.miners_sleeping != asleep || s.miners_mining + asleep != n_miners).then(|| {
            format!(
                "the static start: {} of {asleep} miners asleep, {} mining",
                s.miners_sleeping, s.miners_mining
            )
        })
    })
    .await?;

    // The policy, then the clock starts.
    let mut client = FleetServiceClient::connect(url.clone())
        .await
        .map_err(|e| SiteError::Api {
            url: url.clone(),
            message: e.to_string(),
        })?
        .max_decoding_message_size(pivot_controller::api::MAX_MESSAGE_BYTES);
    client
        .set_policy(v1::SetPolicyRequest {
            document_toml: site_policy.scaled_text.clone(),
            actor: "pivot-site".into(),
            expected_revision: None,
        })
        .await
        .map_err(|e| SiteError::Api {
            url: url.clone(),
            message: format!("setting the policy: {}", e.message()),
        })?;
    let clock = SiteClock::new(Utc::now(), trace.start(), opts.speed)?;
    let notice = policy::announce_notice(opts.dr_notice, opts.speed);
    if notice > opts.dr_notice {
        println!(
            "pivot-site: trace caps announced {} min ahead, not {} min: at {}x that is {:.0} wall seconds, what the agents need to confirm a shed in real time (the backtest gets the same notice)",
            notice.num_minutes(),
            opts.dr_notice.num_minutes(),
            opts.speed,
            policy::MIN_WALL_NOTICE_S
        );
    }
    let times = TraceTimes {
        clock: clock.clone(),
        zone: opts.zone,
    };
    write(
        &dir.join("site.json"),
        &serde_json::json!({
            "controller": url,
            "wall_start": clock.wall_start(),
            "trace_start": clock.trace_start(),
            "trace_end": trace.end(),
            "speed": clock.speed(),
            "site_cap_w": cap_w,
            "reserve_w": reserve_w,
            "dr_notice_s": notice.num_seconds(),
            "files": {
                "site": dir.join("site.toml"),
                "trace": trace_file,
                "policy": dir.join("policy.toml"),
                "policy_scaled": dir.join("policy.scaled.toml"),
            },
        })
        .to_string(),
    )?;
    wlm.start_clock(times.clone());
    running
        .start_deciding(Arc::clone(&trace), &trace_file, &clock)
        .await;
    tokio::spawn(narrator::decisions(client.clone(), times.clone()));
    if opts.hourly {
        tokio::spawn(narrator::hourly(
            client.clone(),
            times.clone(),
            trace.end(),
            Some(wlm.view()),
        ));
    }
    tokio::spawn(utility::announce(
        client.clone(),
        scenario::cap_windows(&trace),
        times.clone(),
        notice,
    ));
    let wall_end = clock.wall_time(trace.end());
    let played = (wall_end - clock.wall_start()).to_std().unwrap_or_default();
    println!(
        "pivot-site: deciding — {:.1} h of trace ({} to {}, {}) at {}x: {} of wall time; {} miners on {} rack agents, {} GPU hosts; cap {} (reserve {}); pivotctl --controller {url} status",
        (trace.end() - trace.start()).num_minutes() as f64 / 60.0,
        times.label(trace.start()),
        times.label(trace.end()),
        opts.zone,
        opts.speed,
        humantime(played),
        opts.miners,
        layout.racks,
        opts.gpu_hosts,
        narrator::power(cap_w),
        narrator::power(reserve_w),
    );
    if let Some(web) = running.web {
        println!("pivot-site: dashboard on http://{web}/");
    }
    println!("pivot-site: files in {}", dir.display());

    let wait = (wall_end - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        (host, reason) = agents.first_exit() => return Err(SiteError::AgentStopped { host, reason }),
        () = interrupted() => return Err(SiteError::Interrupted),
    }

    let (realised, modelled) = read_back(
        &mut client,
        &url,
        &clock,
        &trace,
        cap_w,
        &model,
        &site_policy,
        notice,
    )
    .await?;
    print_summary(&realised, &modelled, &times, &trace, &dir, notice);
    write(
        &dir.join("summary.json"),
        &serde_json::json!({ "realised": realised, "modelled": modelled }).to_string(),
    )?;
    if opts.keep_running {
        println!(
            "pivot-site: still serving at {url} (the market has ended: the controller holds); Ctrl-C to stop"
        );
        tokio::select! {
            (host, reason) = agents.first_exit() => return Err(SiteError::AgentStopped { host, reason }),
            () = interrupted() => {}
        }
    }
    agents.stop().await;
    running.stop().await;
    drop(miners);
    if matches!(out, OutDir::Temporary(_)) {
        println!("pivot-site: removing {}", dir.display());
    }
    Ok((realised, modelled))
}

#[allow(clippy::too_many_arguments)]
async fn read_back(
    client: &mut FleetServiceClient<Channel>,
    url: &str,
    clock: &SiteClock,
    trace: &Trace,
    cap_w: f64,
    model: &SiteModel,
    policy: &SitePolicy,
    dr_notice: chrono::Duration,
) -> Result<(Realised, Modelled), SiteError> {
    let history = client
        .get_history(v1::GetHistoryRequest {
            since: Some(pivot_proto::model::timestamp_to_proto(
                clock.wall_start() - chrono::Duration::seconds(1),
            )),
            limit: 10_000,
        })
        .await
        .map_err(|e| SiteError::Api {
            url: url.to_owned(),
            message: format!("reading the history: {}", e.message()),
        })?
        .into_inner();
    let realised = summary::realised(&history.site, clock, trace, cap_w);
    let options = Options {
        policy: policy.document.clone(),
        dr_notice,
        replan_every: chrono::Duration::seconds(60),
        ..Options::default()
    };
    Ok((realised, summary::modelled(&model.site, trace, &options)))
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn print_summary(
    r: &Realised,
    m: &Modelled,
    times: &TraceTimes,
    trace: &Trace,
    dir: &Path,
    dr_notice: chrono::Duration,
) {
    let b = &m.backtest;
    println!(
        "pivot-site: trace ended at {} — {:.1} h of trace read back from the controller's history ({} samples)",
        times.label(trace.end()),
        r.hours,
        r.samples
    );
    println!(
        "  realised margin (GetHistory, integrated in trace time): {:>10.0} USD",
        r.margin_usd
    );
    println!(
        "  pivot-controller backtest, same site, trace and policy: {:>10.0} USD ({:+.1} %)",
        b.margin_usd,
        summary::percent_off(r.margin_usd, b.margin_usd)
    );
    println!(
        "  static site (no decisions): {:.0} USD; hindsight bound: {:.0} USD; backtest cap violations: {}",
        m.static_site.margin_usd, m.hindsight_bound.margin_usd, b.cap_violations
    );
    println!(
        "  samples above the cap in force: {} measured, {} committed (of {})",
        r.measured_above_cap, r.committed_above_cap, r.samples
    );
    println!(
        "  reproduce the model: pivot-controller backtest --site {} --trace {} --policy {} --dr-notice {}s",
        dir.join("site.toml").display(),
        dir.join("trace.csv").display(),
        dir.join("policy.toml").display(),
        dr_notice.num_seconds()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(miners: usize, speed: f64) -> SiteOptions {
        SiteOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            web: "127.0.0.1:0".parse().unwrap(),
            speed,
            miners,
            racks: 4,
            gpu_hosts: 8,
            trace: None,
            from: None,
            hours: None,
            policy: None,
            dr_notice: chrono::Duration::minutes(30),
            zone: chrono_tz::America::Chicago,
            out_dir: None,
            keep_running: false,
            hourly: false,
            model_transitions: Transitions {
                miner_s: 120,
                host_s: 300,
            },
        }
    }

    #[test]
    fn a_fleet_past_the_open_file_limit_is_refused_naming_both() {
        // 2,000 miners held 5,623 descriptors at their peak and 6,200 started under 20,000:
        // both fit, and 6,600 is past what the estimate lets through. The site test's 60 miners
        // and 8 GPU hosts fit under the common soft limit of 1,024.
        assert!(fits_open_files(2_000, 8, 20_000).is_ok());
        assert!(fits_open_files(6_200, 8, 20_000).is_ok());
        assert!(fits_open_files(60, 8, 1_024).is_ok());
        let e = fits_open_files(6_600, 8, 20_000).unwrap_err();
        let said = e.to_string();
        assert!(matches!(
            e,
            SiteError::TooManyMiners {
                miners: 6_600,
                limit: 20_000,
                ..
            }
        ));
        assert!(
            said.starts_with("--miners 6600: about 20120 open files"),
            "{said}"
        );
        assert!(said.contains("the limit is 20000"), "{said}");
        // No overflow on absurd sizes.
        assert!(matches!(
            fits_open_files(usize::MAX, usize::MAX, u64::MAX - 1),
            Err(SiteError::TooManyMiners {
                needed: u64::MAX,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_bad_size_or_speed_is_refused_before_anything_starts() {
        // A trillion miners (more descriptors than Linux allows a process): refused at once
        // instead of filling memory building the fleet.
        let e = run(options(1_000_000_000_000, 288.0)).await.unwrap_err();
        assert!(matches!(e, SiteError::TooManyMiners { .. }), "{e}");
        // --speed 0 is named as the speed, not as the policy it would have scaled to nonsense.
        for speed in [0.0, -1.0, f64::NAN] {
            let e = run(options(10, speed)).await.unwrap_err();
            assert!(matches!(e, SiteError::Speed(_)), "{speed}: {e}");
            assert!(e.to_string().starts_with("--speed "), "{e}");
        }
    }
}
