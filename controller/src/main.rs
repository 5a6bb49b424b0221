//! `pivot-controller`: the site controller daemon.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pivot_controller::config::{self, Config, ProcessEnv};
use pivot_controller::market::{Market, MarketParts};
use pivot_controller::store::SqliteStore;
use pivot_controller::{Controller, api};
use tracing::info;

#[derive(Parser)]
#[command(name = "pivot-controller", version, about = "Pivot site controller")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a development controller: 127.0.0.1:50051, SQLite store in a temporary directory.
    Dev {
        /// gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// Site cap in watts for the dev site.
        #[arg(long, default_value_t = 5_000_000.0)]
        site_cap_w: f64,
        /// Web dashboard and /metrics listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        web: std::net::SocketAddr,
    },
    /// Run the production controller from a configuration file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and everything `serve` will need from it, and exit.
    CheckConfig { config: PathBuf },
    /// API tokens for pivotctl, automation and agents (stored hashed in the controller's store).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Run the planner over a price trace against a modelled site (docs/formats.md).
    Backtest {
        /// The modelled fleet (SITE.toml).
        #[arg(long)]
        site: PathBuf,
        /// One row per interval (TRACE.csv).
        #[arg(long)]
        trace: PathBuf,
        /// Policy document (default: the built-in policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// How long ahead the planner hears of a trace's lower cap (e.g. 10m, 600s, 1h).
        #[arg(long, default_value = "10m", value_parser = pivot_controller::backtest::parse_duration)]
        dr_notice: chrono::Duration,
        /// Replanning timer besides every trace row.
        #[arg(long, default_value = "60s", value_parser = pivot_controller::backtest::parse_duration)]
        replan_every: chrono::Duration,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token; it is printed once and never stored.
    Create {
        #[arg(long, short)]
        config: PathBuf,
        /// Who or what it is for (shown in the audit log as `token:<name>`).
        #[arg(long)]
        name: String,
        /// viewer, operator, admin or agent.
        #[arg(long)]
        role: String,
        /// With `--role agent`: the only host it may speak for.
        #[arg(long)]
        host: Option<String>,
    },
    /// Every token, revoked or not.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Revoke a token by its id (from `list`): every later call with it is refused.
    Revoke {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
}

fn open_store(config: &std::path::Path) -> anyhow::Result<SqliteStore> {
    let c = Config::load(config, &ProcessEnv)?;
    SqliteStore::open(&c.store.path)
        .with_context(|| format!("opening store {}", c.store.path.display()))
}

fn token(action: TokenAction) -> anyhow::Result<()> {
    use pivot_controller::auth::{self, Role};
    use pivot_controller::store::Store;
    match action {
        TokenAction::Create {
            config,
            name,
            role,
            host,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role `{role}`: use viewer, operator, admin or agent")
            })?;
            pivot_controller::api::fleet::check_id(&name, "--name")?;
            match (role, &host) {
                (Role::Agent, None) => {
                    anyhow::bail!("--role agent needs --host (the host it speaks for)")
                }
                (Role::Agent, Some(h)) => {
                    pivot_controller::api::fleet::check_id(h, "--host")?;
                }
                (_, Some(_)) => anyhow::bail!("--host is only for --role agent"),
                (_, None) => {}
            }
            let store = open_store(&config)?;
            let (secret, record) = auth::new_token(&name, role, host, chrono::Utc::now());
            store.put_token(&record)?;
            eprintln!(
                "token {} for {} (role {}) — shown once; keep it in a secret store",
                record.id, record.name, record.role
            );
            println!("{secret}");
            Ok(())
        }
        TokenAction::List { config } => {
            let store = open_store(&config)?;
            println!(
                "{:<14} {:<24} {:<9} {:<16} {:<26} REVOKED",
                "ID", "NAME", "ROLE", "HOST", "CREATED"
            );
            for t in store.list_tokens()? {
                println!(
                    "{:<14} {:<24} {:<9} {:<16} {:<26} {}",
                    t.id,
                    t.name,
                    t.role,
                    t.host.as_deref().unwrap_or("-"),
                    t.created_at.to_rfc3339(),
                    t.revoked_at
                        .map_or_else(|| "-".to_owned(), |r| r.to_rfc3339())
                );
            }
            Ok(())
        }
        TokenAction::Revoke { config, id } => {
            let store = open_store(&config)?;
            if !store.revoke_token(&id, chrono::Utc::now())? {
                anyhow::bail!("no token `{id}` that is not already revoked (see `token list`)");
            }
            println!("token {id} revoked");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, () = term => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    info!("Shutting down");
}

async fn run(config: Config) -> anyhow::Result<()> {
    let store = SqliteStore::open(&config.store.path)
        .with_context(|| format!("opening store {}", config.store.path.display()))?;
    let addr = config.listen.grpc;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding gRPC listener on {addr}"))?;
    let tls = config
        .listen
        .tls
        .as_ref()
        .map(api::server_tls)
        .transpose()?;
    if config.auth.mode == pivot_controller::auth::AuthMode::Open {
        tracing::warn!(
            "[auth] mode = \"open\": every caller is an admin and agents may speak for any host"
        );
    }
    let market = Market::new(
        MarketParts::from_config(&config.market, &ProcessEnv, chrono::Utc::now())
            .map_err(|e| anyhow::anyhow!("market: key `{}`: {}", e.key, e.problem))?,
    );
    let feed = market.view();
    let ctl = Controller::new(config, Arc::new(store)).context("loading the desired state")?;
    tokio::spawn(market.run(chrono::Utc::now));
    tokio::spawn(pivot_controller::executor::run(Arc::clone(&ctl)));
    tokio::spawn(pivot_controller::engine::run(Arc::clone(&ctl), feed));
    if let Some(web) = ctl.config.web.clone() {
        let listener = tokio::net::TcpListener::bind(web.listen)
            .await
            .with_context(|| {
                format!("binding the web listener on {} ([web] listen)", web.listen)
            })?;
        let web_addr = listener.local_addr()?;
        info!(addr = %web_addr, "pivot-controller web dashboard and /metrics listening");
        // The line tests and scripts wait for (printed before the gRPC line).
        println!("pivot-controller web on http://{web_addr}");
        let ctl = Arc::clone(&ctl);
        tokio::spawn(async move {
            if let Err(e) =
                pivot_controller::web::serve(ctl, &web, listener, std::future::pending()).await
            {
                tracing::error!(error = %e, "The web listener stopped");
            }
        });
    }
    info!(%addr, site = %ctl.config.site.id, "pivot-controller listening");
    // The line tests and scripts wait for.
    println!("pivot-controller listening on {}", listener.local_addr()?);
    api::serve(ctl, listener, tls, shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIVOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Dev {
            listen,
            site_cap_w,
            web,
        } => dev(listen, site_cap_w, web).await,
        Command::Serve { config } => match Config::load(&config, &ProcessEnv)
            .and_then(|c| c.check_files(&config, &ProcessEnv).map(|()| c))
        {
            Ok(c) => run(c).await,
            Err(e) => Err(e.into()),
        },
        Command::CheckConfig { config } => Config::load(&config, &ProcessEnv)
            .and_then(|c| c.check_files(&config, &ProcessEnv).map(|()| c))
            .map(|c| {
                println!(
                    "{}: ok (site {}, cap {} W, listen {}, auth {:?})",
                    config.display(),
                    c.site.id,
                    c.site.cap_w,
                    c.listen.grpc,
                    c.auth.mode
                );
            })
            .map_err(Into::into),
        Command::Token { action } => token(action),
        Command::Backtest {
            site,
            trace,
            policy,
            json,
            dr_notice,
            replan_every,
        } => backtest(
            &site,
            &trace,
            policy.as_deref(),
            json,
            dr_notice,
            replan_every,
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "pivot-controller: {}",
                pivot_proto::report::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dev(
    listen: std::net::SocketAddr,
    site_cap_w: f64,
    web: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("pivot-dev-")
        .tempdir()
        .context("creating temporary directory")?;
    let config = Config {
        site: config::SiteConfig {
            id: "dev".into(),
            cap_w: site_cap_w,
            reserve_w: site_cap_w * 0.02,
        },
        listen: config::ListenConfig {
            grpc: listen,
            tls: None,
        },
        store: config::StoreConfig {
            path: dir.path().join("pivot.db"),
        },
        agents: config::AgentsConfig::default(),
        market: pivot_controller::market::MarketConfig::default(),
        engine: pivot_controller::engine::EngineConfig::default(),
        web: Some(pivot_controller::web::WebConfig::on(web)),
        // A development controller on a laptop: anyone who reaches the port is an admin.
        auth: pivot_controller::auth::AuthConfig {
            mode: pivot_controller::auth::AuthMode::Open,
            ..Default::default()
        },
    };
    eprintln!(
        "pivot-controller dev: authentication is OFF (every caller is an admin and agents may speak for any host); use `serve` with [auth] for a real site"
    );
    eprintln!(
        "pivot-controller dev: store {}",
        config.store.path.display()
    );
    run(config).await
}

fn backtest(
    site: &std::path::Path,
    trace: &std::path::Path,
    policy: Option<&std::path::Path>,
    json: bool,
    dr_notice: chrono::Duration,
    replan_every: chrono::Duration,
) -> anyhow::Result<()> {
    use pivot_controller::backtest::{self, baseline};
    let site = backtest::Site::load(site)?;
    let trace = pivot_controller::trace::Trace::load(trace)?;
    let policy = match policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading policy {}", path.display()))?;
            pivot_controller::policy::validate(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.join("; ")))?
        }
        None => pivot_controller::policy::validate(pivot_controller::policy::DEFAULT_POLICY)
            .map_err(|e| anyhow::anyhow!("built-in policy: {}", e.join("; ")))?,
    };
    let options = backtest::Options {
        policy,
        dr_notice,
        replan_every,
        ..backtest::Options::default()
    };
    let report = backtest::run(&site, &trace, &options);
    let static_site = baseline::static_site(&site, &trace);
    let bound = baseline::hindsight_bound(&site, &trace);
    if json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "baselines".into(),
                serde_json::json!({ "static_site": static_site, "hindsight_bound": bound }),
            );
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", report.summary(&trace, &static_site, &bound));
    }
    Ok(())
}
