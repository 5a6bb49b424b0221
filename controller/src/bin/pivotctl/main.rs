//! `pivotctl`: the operator's command line for a pivot controller.

/// `println!` that ends the program quietly when whoever reads its output has gone
/// (`pivotctl … | head`), where `std::println!` would panic on the closed pipe. Exits 141, as a
/// process killed by SIGPIPE would.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(&e);
        }
    }};
}

/// Where a write to stdout that failed ends the program.
#[doc(hidden)]
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("pivotctl: cannot write to standard output: {e}");
    std::process::exit(1);
}

mod render;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use pivot_controller::views::audit_json;
use render::{clean, mw, ts, ts_text};

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
    /// API token (from `pivot-controller token create`); sent as `authorization: Bearer`.
    #[arg(long, global = true, env = "PIVOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The site at a glance: power by load class against the cap, economics, the plan.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hashprice, energy price, AI value, each miner class's breakeven, and the inputs' health.
    Economics {
        #[arg(long)]
        json: bool,
    },
    /// The current plan and why: its phases, each move and where it stands.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// The controller's decisions over time (from the audit log), newest first.
    History {
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
        /// Only records of this kind (decision, plan, status, override, policy, agent, ...).
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long)]
        json: bool,
    },
    /// Curtail mining: site-wide, or one miner or host (an override: sleep).
    Curtail {
        /// `miners` (default: every miner), a miner id, or `host/<host_id>`.
        #[arg(default_value = "miners")]
        target: String,
        /// Until then (e.g. 2h); until `resume` when absent.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<std::time::Duration>,
        #[arg(long, default_value = "curtailed by an operator")]
        reason: String,
    },
    /// Undo `curtail`: the policies decide again.
    Resume {
        #[arg(default_value = "miners")]
        target: String,
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
        #[command(subcommand)]
        action: DrAction,
    },
    /// Agents' hosts.
    Hosts {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Follow the controller's live events (decisions, intents, confirmations, agents).
    #[command(alias = "events")]
    Watch,
}

#[derive(Subcommand)]
enum HostAction {
    /// Forget a host that is not connected, with its devices (they stop counting at their
    /// maximum): for a host that was decommissioned or moved.
    Forget {
        host_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum DrAction {
    /// Start an event.
    Start {
        /// Site draw to reach, kW.
        #[arg(long)]
        target_kw: f64,
        /// Reach it within this long (e.g. 10m, 30s, 1h).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        within: std::time::Duration,
        /// Hold it this long after the deadline.
        #[arg(long, value_parser = parse_duration)]
        duration: std::time::Duration,
        /// The program's dispatch id, for the audit log (made up when absent).
        #[arg(long, default_value = "")]
        event_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel an event.
    Stop { event_id: String },
    /// Events, newest first, with their state and the draw achieved.
    Status {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OverrideAction {
    /// Pin a target (`miner/...`, `gpu/...`, `host/<host_id>`, or `miners` for every miner).
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
        use pivot_controller::web::PinBody;
        let pin = if self.sleep {
            PinBody::Sleep
        } else if let Some(w) = self.power_target_w {
            PinBody::PowerTargetW(w)
        } else if let Some(w) = self.gpu_cap_w {
            PinBody::GpuCapW(w)
        } else if self.drain {
            PinBody::Drain
        } else if self.release {
            PinBody::Release
        } else {
            PinBody::Run
        };
        pin.to_proto()
    }
}

/// Parses durations such as `90s`, `10m`, `2h`, `1d` (a bare number is seconds), up to ten
/// years: anything longer is a typo, not an intention.
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
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}`: must be positive"));
    }
    if secs > 10.0 * 366.0 * 86_400.0 {
        return Err(format!("`{s}`: longer than ten years"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn actor() -> String {
    std::env::var("USER").map_or_else(|_| "pivotctl".to_owned(), |u| format!("pivotctl:{u}"))
}

fn in_future(d: std::time::Duration) -> anyhow::Result<prost_types::Timestamp> {
    let d = chrono::Duration::from_std(d).context("duration too long")?;
    let t = chrono::Utc::now()
        .checked_add_signed(d)
        .context("duration too long")?;
    Ok(pivot_proto::model::timestamp_to_proto(t))
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
        /// Fail if the policy in force is not this revision (0: if none was set yet).
        #[arg(long)]
        expected_revision: Option<u64>,
    },
}

/// The client: a channel to the controller, with the bearer token on every call.
type Client = FleetServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let url = cli.controller.as_str();
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        anyhow::bail!(
            "`{url}` has no scheme: use http://{url} (or https://{url} for a controller with TLS)"
        );
    }
    let mut endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| {
            format!("`{url}` is not a valid controller URL (e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    match (&cli.ca_file, https) {
        (Some(ca), true) => {
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
        (None, true) => anyhow::bail!(
            "`{url}` is https: give --ca-file (PIVOT_CA_FILE), the site CA that signed the controller's certificate"
        ),
        (Some(_), false) => anyhow::bail!(
            "--ca-file is for a TLS controller: use https:// in --controller (`{url}` is plaintext)"
        ),
        (None, false) => {}
    }
    let token = cli
        .token
        .as_deref()
        .map(|t| {
            tonic::metadata::MetadataValue::try_from(format!("Bearer {}", t.trim()))
                .context("--token is not a valid token (it must be printable ASCII)")
        })
        .transpose()?;
    if token.is_some() && !https {
        eprintln!(
            "pivotctl: warning: sending a token over plaintext to {url}; the controller refuses it unless it sits behind a TLS proxy"
        );
    }
    let channel = endpoint.connect().await.with_context(|| {
        if https {
            format!("cannot reach the controller at {url} (is pivot-controller running there with TLS? does --ca-file hold the CA that signed its certificate?)")
        } else {
            format!("cannot reach the controller at {url} (is pivot-controller running? if it uses TLS, use https:// with --ca-file)")
        }
    })?;
    // The controller answers with up to MAX_MESSAGE_BYTES (the audit record of a 10,000-move
    // phase alone is about 3 MB); tonic's default 4 MB would refuse a page of them.
    Ok(FleetServiceClient::with_interceptor(channel, Bearer(token))
        .max_decoding_message_size(pivot_controller::api::MAX_MESSAGE_BYTES))
}

/// An RPC error in words, with what to do about the common mistakes.
fn rpc_error<'a>(what: &str, url: &'a str) -> impl FnOnce(tonic::Status) -> anyhow::Error + 'a {
    let what = what.to_owned();
    move |s| {
        let m = s.message();
        let hint = if m.contains("grpc-status header missing") || m.contains("content-type") {
            format!(
                " — the server at {url} answered plain HTTP, not gRPC: is this the controller's gRPC port (default 50051)?"
            )
        } else if url.starts_with("http://")
            && (m.contains("h2 protocol error")
                || m.contains("broken pipe")
                || m.contains("connection reset")
                || m.contains("frame with invalid size"))
        {
            format!(
                " — {url} did not speak plaintext gRPC: if the controller uses TLS, use https:// with --ca-file"
            )
        } else {
            match s.code() {
                tonic::Code::Unauthenticated => {
                    " — give a token with --token or PIVOT_TOKEN (pivot-controller token create), or a client certificate".to_owned()
                }
                tonic::Code::DeadlineExceeded => " — the controller did not answer within 30 s".to_owned(),
                _ => String::new(),
            }
        };
        anyhow::anyhow!("{what} at {url}: {m} ({:?}){hint}", s.code())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pivotctl: {}", pivot_proto::report::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn pin_override(
    target: String,
    pin: v1::r#override::Pin,
    expires_in: Option<std::time::Duration>,
    reason: String,
) -> anyhow::Result<v1::SetOverrideRequest> {
    Ok(v1::SetOverrideRequest {
        r#override: Some(v1::Override {
            target,
            pin: Some(pin),
            expires_at: expires_in.map(in_future).transpose()?,
            reason,
            actor: actor(),
            created_at: None,
        }),
    })
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
                println!("{}", render::status_json(&s));
            } else {
                render::print_status(&s);
            }
        }
        Command::Economics { json } => {
            let e = client
                .get_economics(v1::GetEconomicsRequest {})
                .await
                .map_err(rpc_error("economics", url))?
                .into_inner();
            if json {
                println!("{}", render::economics_json(&e));
            } else {
                render::print_economics(&e);
            }
        }
        Command::Plan { json } => {
            let p = client
                .get_plan(v1::GetPlanRequest {})
                .await
                .map_err(rpc_error("plan", url))?
                .into_inner();
            if json {
                println!("{}", render::plan_json(&p));
            } else {
                render::print_plan(&p);
            }
        }
        Command::History { limit, json } => {
            let mut records = Vec::new();
            for kind in ["decision", "plan", "demand_response"] {
                records.extend(
                    client
                        .list_audit(v1::ListAuditRequest {
                            limit,
                            before_id: 0,
                            subject: String::new(),
                            kind: kind.into(),
                        })
                        .await
                        .map_err(rpc_error("history", url))?
                        .into_inner()
                        .records,
                );
            }
            records.sort_by_key(|r| std::cmp::Reverse(r.id));
            records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            if json {
                let rows: Vec<_> = records.iter().map(audit_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &records {
                    println!(
                        "{} {:<16} {}",
                        ts_text(r.at.as_ref()),
                        clean(&r.kind),
                        clean(&r.reason)
                    );
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
                let rows: Vec<_> = list.devices.iter().map(render::device_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                // J/TH: the figure the planner ranks a miner by (learned from its steady mining).
                // SET W: a miner's power target as it reads (a GPU's enforced cap); RESTORE W: the
                // owner's setting kept from before Pivot first trimmed it, which a restore sends.
                println!(
                    "{:<40} {:<16} {:<6} {:<10} {:>10} {:>6} {:>7} {:>9} {:<10}",
                    "DEVICE",
                    "HOST",
                    "KIND",
                    "STATE",
                    "POWER W",
                    "J/TH",
                    "SET W",
                    "RESTORE W",
                    "INTENT"
                );
                for d in &list.devices {
                    let j = render::device_json(d);
                    let figure = |v: &serde_json::Value, digits: usize| {
                        v.as_f64()
                            .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
                    };
                    println!(
                        "{:<40} {:<16} {:<6} {:<10} {:>10} {:>6} {:>7} {:>9} {:<10}",
                        clean(&d.device_id),
                        clean(&d.host_id),
                        j["kind"].as_str().unwrap_or("?"),
                        j["state"].as_str().unwrap_or("-"),
                        figure(&j["power_w"], 0),
                        figure(&j["efficiency_j_per_th"], 1),
                        figure(&j["power_cap_w"], 0),
                        figure(&j["setting_before_trim_w"], 0),
                        j["intent_status"]["phase"]
                            .as_str()
                            .map_or("-", |p| p.trim_start_matches("INTENT_PHASE_"))
                            .to_lowercase()
                    );
                }
            }
        }
        Command::Audit {
            limit,
            subject,
            kind,
            json,
        } => {
            let list = client
                .list_audit(v1::ListAuditRequest {
                    limit,
                    before_id: 0,
                    subject,
                    kind,
                })
                .await
                .map_err(rpc_error("audit log", url))?
                .into_inner();
            for r in &list.records {
                if json {
                    println!("{}", audit_json(r));
                } else {
                    println!(
                        "{:>6} {} {:<16} {:<28} {:<12} {}",
                        r.id,
                        ts_text(r.at.as_ref()),
                        clean(&r.kind),
                        clean(&r.subject),
                        clean(&r.actor),
                        clean(&r.reason)
                    );
                }
            }
        }
        Command::Curtail {
            target,
            expires_in,
            reason,
        } => {
            let pin = v1::r#override::Pin::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            });
            let o = client
                .set_override(pin_override(target, pin, expires_in, reason)?)
                .await
                .map_err(rpc_error("curtailing", url))?
                .into_inner();
            println!(
                "{}: curtailed ({})",
                clean(&o.target),
                ts(o.expires_at.as_ref())
                    .as_str()
                    .map_or("until resumed".to_owned(), |t| format!("until {t}"))
            );
        }
        Command::Resume { target } => {
            let r = client
                .clear_override(v1::ClearOverrideRequest {
                    target: target.clone(),
                    actor: actor(),
                })
                .await
                .map_err(rpc_error("resuming", url))?
                .into_inner();
            if !r.cleared {
                anyhow::bail!("{} was not curtailed by an operator", clean(&target));
            }
            println!("{}: resumed; the policies decide again", clean(&target));
        }
        Command::Policy { action } => match action {
            PolicyAction::Get => {
                let p = client
                    .get_policy(v1::GetPolicyRequest {})
                    .await
                    .map_err(rpc_error("policy", url))?
                    .into_inner();
                // The name is the document's own text: escaped, so it cannot forge this line.
                println!("# policy `{}`, revision {}", clean(&p.name), p.revision);
                {
                    use std::io::Write as _;
                    if let Err(e) = write!(std::io::stdout().lock(), "{}", p.document_toml) {
                        stdout_failed(&e);
                    }
                }
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
                let o = client
                    .set_override(pin_override(target, pin.to_proto(), expires_in, reason)?)
                    .await
                    .map_err(rpc_error("setting the override", url))?
                    .into_inner();
                println!(
                    "{} pinned to {} ({})",
                    clean(&o.target),
                    render::pin_words(o.pin.as_ref()),
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
                    anyhow::bail!("{} had no override", clean(&target));
                }
                println!("{}: override cleared", clean(&target));
            }
            OverrideAction::List { json } => {
                let list = client
                    .list_overrides(v1::ListOverridesRequest {})
                    .await
                    .map_err(rpc_error("override list", url))?
                    .into_inner();
                for o in &list.overrides {
                    let pin = render::pin_words(o.pin.as_ref());
                    if json {
                        println!("{}", pivot_controller::views::override_json(o));
                    } else {
                        println!(
                            "{:<40} {:<16} {:<26} {}",
                            clean(&o.target),
                            pin,
                            ts(o.expires_at.as_ref())
                                .as_str()
                                .unwrap_or("until cleared"),
                            clean(&o.reason)
                        );
                    }
                }
            }
        },
        Command::Dr { action } => match action {
            DrAction::Start {
                target_kw,
                within,
                duration,
                event_id,
                json,
            } => {
                if !(target_kw.is_finite() && target_kw >= 0.0) {
                    anyhow::bail!("--target-kw must be a number of kW >= 0, got {target_kw}");
                }
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
                if json {
                    println!("{}", render::dr_json(&e));
                } else {
                    println!(
                        "demand response {}: {} by {}, until {}",
                        clean(&e.event_id),
                        mw(e.target_power_w),
                        ts_text(e.deadline.as_ref()),
                        ts_text(e.ends_at.as_ref())
                    );
                    if !e.note.is_empty() {
                        println!("warning: {}", clean(&e.note));
                    }
                }
            }
            DrAction::Stop { event_id } => {
                let e = client
                    .cancel_demand_response(v1::CancelDemandResponseRequest {
                        event_id,
                        actor: actor(),
                    })
                    .await
                    .map_err(rpc_error("cancelling the demand response", url))?
                    .into_inner();
                println!("demand response {} cancelled", clean(&e.event_id));
            }
            DrAction::Status { limit, json } => {
                let list = client
                    .list_demand_responses(v1::ListDemandResponsesRequest { limit })
                    .await
                    .map_err(rpc_error("demand responses", url))?
                    .into_inner();
                if json {
                    let rows: Vec<_> = list.events.iter().map(render::dr_json).collect();
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    for e in &list.events {
                        println!(
                            "{:<24} {:<10} target {} by {} until {}{}{}",
                            clean(&e.event_id),
                            clean(&e.state),
                            mw(e.target_power_w),
                            ts_text(e.deadline.as_ref()),
                            ts_text(e.ends_at.as_ref()),
                            e.achieved_power_w
                                .map_or_else(String::new, |a| format!(", now {}", mw(a))),
                            if e.note.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", clean(&e.note))
                            }
                        );
                    }
                }
            }
        },
        Command::Hosts {
            action: HostAction::Forget { host_id, reason },
        } => {
            let r = client
                .forget_host(v1::ForgetHostRequest {
                    host_id: host_id.clone(),
                    reason,
                })
                .await
                .map_err(rpc_error("forgetting the host", url))?
                .into_inner();
            if !r.forgotten {
                anyhow::bail!("no host `{}` is known to the controller", clean(&host_id));
            }
            println!(
                "host {} forgotten with its {} devices",
                clean(&host_id),
                r.devices
            );
        }
        Command::Watch => {
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
                match e.event {
                    Some(v1::event::Event::Audit(r)) => println!(
                        "{} {:<16} {:<28} {:<12} {}",
                        ts_text(r.at.as_ref()),
                        clean(&r.kind),
                        clean(&r.subject),
                        clean(&r.actor),
                        clean(&r.reason)
                    ),
                    Some(v1::event::Event::Missed(m)) => println!(
                        "{} {:<16} {} events not shown: this watch fell behind; `pivotctl audit` lists them",
                        ts_text(e.at.as_ref()),
                        "missed",
                        m.count
                    ),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
