//! `pivotctl`: the operator's command line for a pivot controller.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "pivotctl", version, about = "Operate a pivot site controller")]
struct Cli {
    /// Controller gRPC address.
    #[arg(
        long,
        global = true,
        env = "PIVOT_CONTROLLER",
        default_value = "http://127.0.0.1:50051"
    )]
    controller: String,
    /// CA bundle (PEM) the controller's certificate must chain to (https:// controllers).
    #[arg(long, global = true, env = "PIVOT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) when the controller requires them.
    #[arg(long, global = true, env = "PIVOT_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, global = true, env = "PIVOT_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The site at a glance.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every device the controller knows.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only records about this device or host.
        #[arg(long, default_value = "")]
        subject: String,
        #[arg(long)]
        json: bool,
    },
    /// Show, check or replace the site policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Pin a device or host to a state, overriding the policies.
    Override {
        #[command(subcommand)]
        action: OverrideAction,
    },
    /// Demand response: bring the site's draw down to a target by a deadline.
    Dr {
        /// Site draw to reach, kW.
        #[arg(long)]
        target_kw: f64,
        /// Reach it within this long (e.g. 10m, 30s, 1h).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        within: std::time::Duration,
        /// Hold it this long after the deadline.
        #[arg(long, value_parser = parse_duration)]
        duration: std::time::Duration,
        /// The program's dispatch id, for the audit log.
        #[arg(long, default_value = "")]
        event_id: String,
    },
    /// Follow the controller's live events (audit records as they are written).
    Events,
}

#[derive(Subcommand)]
enum OverrideAction {
    /// Pin a target (`miner/...`, `gpu/...`, or `host/<host_id>`).
    Set {
        target: String,
        /// What to pin it to.
        #[command(flatten)]
        pin: PinArgs,
        /// Until then (e.g. 2h); until cleared when absent.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a pin.
    Clear { target: String },
    /// Every pin in force.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct PinArgs {
    /// Miner: asleep.
    #[arg(long)]
    sleep: bool,
    /// Miner: hashing at its own mode.
    #[arg(long)]
    run: bool,
    /// Miner: hashing at this power target, W.
    #[arg(long)]
    power_target_w: Option<u32>,
    /// GPU: this power cap, W.
    #[arg(long)]
    gpu_cap_w: Option<u32>,
    /// Host: drained of AI jobs.
    #[arg(long)]
    drain: bool,
    /// Host: released to AI jobs.
    #[arg(long)]
    release: bool,
}

impl PinArgs {
    fn to_proto(&self) -> v1::r#override::Pin {
        use v1::r#override::Pin;
        let miner = |mode: v1::MinerMode, power_target_w| {
            Pin::Miner(v1::MinerTarget {
                mode: mode as i32,
                power_target_w,
            })
        };
        let workload = |state: v1::WorkloadState| {
            Pin::Workload(v1::WorkloadTarget {
                state: state as i32,
            })
        };
        if self.sleep {
            miner(v1::MinerMode::Sleep, None)
        } else if let Some(w) = self.power_target_w {
            miner(v1::MinerMode::Run, Some(w))
        } else if let Some(w) = self.gpu_cap_w {
            Pin::Gpu(v1::GpuTarget { power_cap_w: w })
        } else if self.drain {
            workload(v1::WorkloadState::Drained)
        } else if self.release {
            workload(v1::WorkloadState::Released)
        } else {
            miner(v1::MinerMode::Run, None)
        }
    }
}

/// Parses durations such as `90s`, `10m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90s, 10m, 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn actor() -> String {
    std::env::var("USER").map_or_else(|_| "pivotctl".to_owned(), |u| format!("pivotctl:{u}"))
}

fn in_future(d: std::time::Duration) -> anyhow::Result<prost_types::Timestamp> {
    let d = chrono::Duration::from_std(d).context("duration too long")?;
    Ok(pivot_proto::model::timestamp_to_proto(
        chrono::Utc::now() + d,
    ))
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print the policy document in force.
    Get,
    /// Check a policy file without applying it.
    Validate { file: PathBuf },
    /// Replace the policy with a file.
    Set {
        file: PathBuf,
        /// Fail if the policy changed since this revision.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
}

fn ts(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(|t| pivot_proto::model::timestamp_from_proto(t, "t").ok())
        .map_or(serde_json::Value::Null, |t| json!(t.to_rfc3339()))
}

fn status_json(s: &v1::SiteStatus) -> serde_json::Value {
    json!({
        "site_id": s.site_id,
        "site_cap_w": s.site_cap_w,
        "reserve_w": s.reserve_w,
        "committed_power_w": s.committed_power_w,
        "measured_power_w": s.measured_power_w,
        "agents_connected": s.agents_connected,
        "miners_total": s.miners_total,
        "miners_mining": s.miners_mining,
        "miners_sleeping": s.miners_sleeping,
        "miners_unreachable": s.miners_unreachable,
        "gpus_total": s.gpus_total,
        "policy": s.policy,
        "demand_response": s.demand_response.as_ref().map(|d| json!({
            "event_id": d.event_id,
            "target_power_w": d.target_power_w,
            "deadline": ts(d.deadline.as_ref()),
            "ends_at": ts(d.ends_at.as_ref()),
        })),
        "as_of": ts(s.as_of.as_ref()),
        "controller_version": s.controller_version,
    })
}

fn mw(w: f64) -> String {
    format!("{:.3} MW", w / 1e6)
}

async fn connect(cli: &Cli) -> anyhow::Result<FleetServiceClient<Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let url = cli.controller.as_str();
    let mut endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| {
            format!("`{url}` is not a valid controller URL (e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(ca) = &cli.ca_file {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&cli.cert_file, &cli.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("controller TLS configuration")?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach the controller at {url} (is pivot-controller running?)")
    })?;
    Ok(FleetServiceClient::new(channel))
}

fn rpc_error<'a>(what: &str, url: &'a str) -> impl FnOnce(tonic::Status) -> anyhow::Error + 'a {
    let what = what.to_owned();
    move |s| anyhow::anyhow!("{what} at {url}: {} ({:?})", s.message(), s.code())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pivotctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli).await?;
    let url = cli.controller.as_str();
    match cli.command {
        Command::Status { json } => {
            let s = client
                .get_site_status(v1::GetSiteStatusRequest {})
                .await
                .map_err(rpc_error("site status", url))?
                .into_inner();
            if json {
                println!("{}", status_json(&s));
            } else {
                println!(
                    "site        {} (controller {})",
                    s.site_id, s.controller_version
                );
                println!(
                    "cap         {} (reserve {})",
                    mw(s.site_cap_w),
                    mw(s.reserve_w)
                );
                println!("committed   {}", mw(s.committed_power_w));
                println!("measured    {}", mw(s.measured_power_w));
                println!("agents      {} connected", s.agents_connected);
                println!(
                    "miners      {} total: {} mining, {} sleeping, {} unreachable",
                    s.miners_total, s.miners_mining, s.miners_sleeping, s.miners_unreachable
                );
                println!("gpus        {}", s.gpus_total);
                println!("policy      {}", s.policy);
                if let Some(d) = &s.demand_response {
                    println!("demand resp {} -> {}", d.event_id, mw(d.target_power_w));
                }
            }
        }
        Command::Devices { json } => {
            let list = client
                .list_devices(v1::ListDevicesRequest::default())
                .await
                .map_err(rpc_error("device list", url))?
                .into_inner();
            if json {
                let rows: Vec<_> = list.devices.iter().map(device_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<40} {:<16} {:<6} {:<10} {:>10}",
                    "DEVICE", "HOST", "KIND", "STATE", "POWER W"
                );
                for d in &list.devices {
                    let j = device_json(d);
                    println!(
                        "{:<40} {:<16} {:<6} {:<10} {:>10}",
                        d.device_id,
                        d.host_id,
                        j["kind"].as_str().unwrap_or("?"),
                        j["state"].as_str().unwrap_or("-"),
                        j["power_w"]
                            .as_f64()
                            .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}"))
                    );
                }
            }
        }
        Command::Audit {
            limit,
            subject,
            json,
        } => {
            let list = client
                .list_audit(v1::ListAuditRequest {
                    limit,
                    before_id: 0,
                    subject,
                })
                .await
                .map_err(rpc_error("audit log", url))?
                .into_inner();
            for r in &list.records {
                if json {
                    println!(
                        "{}",
                        json!({ "id": r.id, "at": ts(r.at.as_ref()), "kind": r.kind, "subject": r.subject,
                                "actor": r.actor, "reason": r.reason,
                                "detail": serde_json::from_str::<serde_json::Value>(&r.detail_json).unwrap_or_default() })
                    );
                } else {
                    println!(
                        "{:>6} {} {:<16} {:<28} {:<12} {}",
                        r.id,
                        ts(r.at.as_ref()).as_str().unwrap_or("-"),
                        r.kind,
                        r.subject,
                        r.actor,
                        r.reason
                    );
                }
            }
        }
        Command::Policy { action } => match action {
            PolicyAction::Get => {
                let p = client
                    .get_policy(v1::GetPolicyRequest {})
                    .await
                    .map_err(rpc_error("policy", url))?
                    .into_inner();
                println!("# policy `{}`, revision {}", p.name, p.revision);
                print!("{}", p.document_toml);
            }
            PolicyAction::Validate { file } => {
                let doc = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let r = client
                    .validate_policy(v1::ValidatePolicyRequest { document_toml: doc })
                    .await
                    .map_err(rpc_error("policy validation", url))?
                    .into_inner();
                if !r.valid {
                    anyhow::bail!(
                        "{}: invalid policy:\n  {}",
                        file.display(),
                        r.errors.join("\n  ")
                    );
                }
                println!("{}: valid", file.display());
            }
            PolicyAction::Set {
                file,
                expected_revision,
            } => {
                let doc = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let actor = actor();
                let p = client
                    .set_policy(v1::SetPolicyRequest {
                        document_toml: doc,
                        actor,
                        expected_revision,
                    })
                    .await
                    .map_err(rpc_error("setting the policy", url))?
                    .into_inner();
                println!("policy `{}` now at revision {}", p.name, p.revision);
            }
        },
        Command::Override { action } => match action {
            OverrideAction::Set {
                target,
                pin,
                expires_in,
                reason,
            } => {
                let o = v1::Override {
                    target,
                    pin: Some(pin.to_proto()),
                    expires_at: expires_in.map(in_future).transpose()?,
                    reason,
                    actor: actor(),
                    created_at: None,
                };
                let o = client
                    .set_override(v1::SetOverrideRequest {
                        r#override: Some(o),
                    })
                    .await
                    .map_err(rpc_error("setting the override", url))?
                    .into_inner();
                println!(
                    "{} pinned ({})",
                    o.target,
                    ts(o.expires_at.as_ref())
                        .as_str()
                        .map_or("until cleared".to_owned(), |t| format!("until {t}"))
                );
            }
            OverrideAction::Clear { target } => {
                let r = client
                    .clear_override(v1::ClearOverrideRequest {
                        target: target.clone(),
                        actor: actor(),
                    })
                    .await
                    .map_err(rpc_error("clearing the override", url))?
                    .into_inner();
                if !r.cleared {
                    anyhow::bail!("{target} had no override");
                }
                println!("{target}: override cleared");
            }
            OverrideAction::List { json } => {
                let list = client
                    .list_overrides(v1::ListOverridesRequest {})
                    .await
                    .map_err(rpc_error("override list", url))?
                    .into_inner();
                for o in &list.overrides {
                    let pin = format!("{:?}", o.pin);
                    if json {
                        println!(
                            "{}",
                            json!({ "target": o.target, "pin": pin, "expires_at": ts(o.expires_at.as_ref()), "reason": o.reason, "actor": o.actor })
                        );
                    } else {
                        println!(
                            "{:<40} {:<60} {} {}",
                            o.target,
                            pin,
                            ts(o.expires_at.as_ref()).as_str().unwrap_or("-"),
                            o.reason
                        );
                    }
                }
            }
        },
        Command::Dr {
            target_kw,
            within,
            duration,
            event_id,
        } => {
            let e = client
                .demand_response(v1::DemandResponseRequest {
                    target_power_w: target_kw * 1000.0,
                    deadline: Some(in_future(within)?),
                    duration: Some(pivot_proto::model::duration_to_proto(duration)),
                    event_id,
                    actor: actor(),
                })
                .await
                .map_err(rpc_error("demand response", url))?
                .into_inner();
            println!(
                "demand response {}: {} by {}, until {}",
                e.event_id,
                mw(e.target_power_w),
                ts(e.deadline.as_ref()).as_str().unwrap_or("-"),
                ts(e.ends_at.as_ref()).as_str().unwrap_or("-")
            );
        }
        Command::Events => {
            let mut stream = client
                .watch_events(v1::WatchEventsRequest {})
                .await
                .map_err(rpc_error("event stream", url))?
                .into_inner();
            while let Some(e) = stream
                .message()
                .await
                .map_err(rpc_error("event stream", url))?
            {
                if let Some(v1::event::Event::Audit(r)) = e.event {
                    println!(
                        "{} {:<16} {:<28} {:<12} {}",
                        ts(r.at.as_ref()).as_str().unwrap_or("-"),
                        r.kind,
                        r.subject,
                        r.actor,
                        r.reason
                    );
                }
            }
        }
    }
    Ok(())
}

fn device_json(d: &v1::Device) -> serde_json::Value {
    let kind = match v1::DeviceKind::try_from(d.kind) {
        Ok(v1::DeviceKind::Miner) => "miner",
        Ok(v1::DeviceKind::Gpu) => "gpu",
        Ok(v1::DeviceKind::Host) => "host",
        _ => "unknown",
    };
    let (state, power_w) = match &d.reading {
        Some(v1::device::Reading::MinerReading(r)) => (
            Some(
                pivot_proto::model::MinerState::from_proto(r.state)
                    .as_str()
                    .to_owned(),
            ),
            r.power_w,
        ),
        Some(v1::device::Reading::GpuReading(r)) => (None, r.power_w),
        _ => (None, None),
    };
    json!({
        "device_id": d.device_id,
        "host_id": d.host_id,
        "kind": kind,
        "state": state,
        "power_w": power_w,
        "last_seen": ts(d.last_seen.as_ref()),
    })
}
