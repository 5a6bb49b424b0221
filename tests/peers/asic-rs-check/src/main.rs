//! asic-rs-check: identify and read miners with the asic-rs crate (a client no one on Pivot
//! wrote) and print one JSON object per address on stdout.
//!
//!     asic-rs-check IP [IP ...]
//!
//! For each address: `MinerFactory::get_miner` (asic-rs' own discovery over every firmware it
//! knows), then every command the backend's `get_data` would send — found through the
//! backend's own data locations, one call each, so a command the emulator refuses is named
//! instead of silently leaving a field empty — then `get_data` itself. `sim/tests/integration/
//! asic_rs.rs` runs this against `pivot-sim miners --ip-range` and asserts on the output.
//!
//! Built by `scripts/test` as its own Cargo project (its own lock file, outside the workspace),
//! so the workspace's default build never compiles asic-rs and its dependencies.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::ExitCode;

use asic_rs::MinerFactory;
use asic_rs::core::data::collector::DataField;
use asic_rs::core::data::command::MinerCommand;
use asic_rs::core::traits::miner::Miner;
use serde_json::{Value, json};
use strum::IntoEnumIterator;

/// A command as one line of text, for the report.
fn describe(command: &MinerCommand) -> String {
    match command {
        MinerCommand::RPC {
            command,
            parameters,
        } => match parameters {
            Some(p) => format!("rpc {command} {p}"),
            None => format!("rpc {command}"),
        },
        MinerCommand::WebAPI {
            command,
            parameters,
        } => match parameters {
            Some(p) => format!("web {command} {p}"),
            None => format!("web {command}"),
        },
        MinerCommand::GraphQL { command } => {
            format!("graphql {}", command.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        MinerCommand::GRPC { command } => format!("grpc {command}"),
        MinerCommand::SSH { command } => format!("ssh {command}"),
    }
}

/// Every command `get_data` sends, each tried once; the ones that fail with their error.
async fn failing_commands(miner: &dyn Miner) -> (usize, Vec<String>) {
    let mut seen = BTreeSet::new();
    let mut commands = Vec::new();
    for field in DataField::iter() {
        for (command, _) in miner.get_locations(field) {
            if seen.insert(describe(&command)) {
                commands.push(command);
            }
        }
    }
    let mut failed = Vec::new();
    for command in &commands {
        if let Err(e) = miner.get_api_result(command).await {
            failed.push(format!("{}: {e:#}", describe(command)));
        }
    }
    (commands.len(), failed)
}

async fn check(ip: IpAddr) -> Value {
    let miner = match MinerFactory::new().get_miner(ip).await {
        Ok(Some(m)) => m,
        Ok(None) => return json!({"ip": ip.to_string(), "found": false}),
        Err(e) => {
            return json!({"ip": ip.to_string(), "found": false, "error": format!("{e:#}")});
        }
    };
    let info = miner.get_device_info();
    let (commands, failed) = failing_commands(miner.as_ref()).await;
    let mut data = match serde_json::to_value(miner.get_data().await) {
        Ok(v) => v,
        Err(e) => json!({"serialize_error": e.to_string()}),
    };
    // Per-chip rows are long and nobody asserts on them here.
    if let Some(Value::Array(boards)) = data.get_mut("hashboards") {
        for b in boards.iter_mut().filter_map(Value::as_object_mut) {
            let chips = b.remove("chips").map_or(0, |c| c.as_array().map_or(0, Vec::len));
            b.insert("chip_rows".into(), json!(chips));
        }
    }
    json!({
        "ip": ip.to_string(),
        "found": true,
        "make": info.make,
        "model": info.model,
        "firmware": info.firmware,
        "commands": commands,
        "failed": failed,
        "data": data,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut ips = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(e) => {
                eprintln!("asic-rs-check: `{arg}` is not an IP address: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if ips.is_empty() {
        eprintln!("usage: asic-rs-check IP [IP ...]");
        return ExitCode::from(2);
    }
    let rows = futures_join(ips).await;
    for row in rows {
        println!("{row}");
    }
    ExitCode::SUCCESS
}

/// Checks every address at once, results in the order given.
async fn futures_join(ips: Vec<IpAddr>) -> Vec<Value> {
    let tasks: Vec<_> = ips.into_iter().map(|ip| tokio::spawn(check(ip))).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| json!({"found": false, "error": e.to_string()})));
    }
    out
}
