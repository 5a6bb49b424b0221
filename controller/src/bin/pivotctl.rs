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

async fn connect(url: &str) -> anyhow::Result<FleetServiceClient<Channel>> {
    let endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| {
            format!("`{url}` is not a valid controller URL (e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
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
    let url = cli.controller.as_str();
    let mut client = connect(url).await?;
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
                let actor = std::env::var("USER").unwrap_or_else(|_| "pivotctl".into());
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
