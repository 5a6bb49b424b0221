//! Braiins OS ≥ 25.07: BOSminer's cgminer API on 4028 and the public REST API on 80.
//!
//! Facts: 4028 `version` mentions BOSminer; `devs` reports MHS per chain and `tunerstatus` the
//! approximate power (`ApproximateMinerPowerConsumption`) and `PowerLimit`; the web root says
//! "Braiins OS". REST: `POST /api/v1/auth/login {"username","password"}` returns a token sent back in
//! `Authorization`; `PUT /api/v1/actions/pause|resume`; `PUT /api/v1/performance/power-target
//! {"watt":N}` within `GET /api/v1/configuration/constraints`; the reads are in `braiins_rest`.
//! A pause does not survive a reboot.
//!
//! What a real Braiins OS 25.x serves, and what this emulates:
//! - REST `/api/v1` on 80 (public since 25.07, OpenAPI document in asic-rs `meta/braiins/25.07`):
//!   served.
//! - GraphQL `POST /graphql` on 80: still queried by asic-rs 0.8.6 on 25.07 and 26.04 (model and
//!   version to identify, `events.appeals` for messages): served, for the fields clients query.
//! - cgminer API (BOSer) on 4028: served.
//! - gRPC "Public API" on 50051 (since 23.03; braiins/bos-plus-api): pyasic 0.79 reads serial
//!   numbers, MAC, hostname, firmware version, hashboards, power, fans, pools and the fault light
//!   only from it. Not served: Braiins' .proto files are GPL-3.0 and may not be copied into this
//!   Apache-2.0 project, and a gRPC server cannot be written without them. Clients see those
//!   fields missing (named in sim/tests/integration/pyasic.rs and docs/BENCHMARKS.md).

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::antminer;
use super::braiins_rest::{self, target_w};
use super::cgminer::{Request, invalid_command, status};
use super::faults::Fault;
use super::graphql::{self, OperationKind};
use super::http::{HttpRequest, HttpResponse, json as json_reply, text};
use super::readings::Reading;
use super::state::Core;

/// How long a REST token stays valid.
const TOKEN_TTL_S: u64 = 3600;

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    let desc = core.description();
    let r = Reading::of(core);
    let mhs = |x: f64| (x * 1e6).round() / 1e6;
    match req.command.as_str() {
        "version" => json!({
            "STATUS": status("S", 22, "BOSminer versions", &desc),
            "VERSION": [{"BOSminer": "bosminer-plus-tuner 1.0.0", "API": "3.7"}],
        }),
        "summary" => json!({
            "STATUS": status("S", 11, "Summary", &desc),
            "SUMMARY": [{
                "Elapsed": r.uptime_s, "MHS av": mhs(r.total_mhs()), "MHS 5s": mhs(r.total_mhs()),
                "MHS 1m": mhs(r.total_mhs()), "MHS 5m": mhs(r.total_mhs()), "MHS 15m": mhs(r.total_mhs()),
                "Found Blocks": 0, "Getworks": r.uptime_s / 30, "Accepted": r.accepted, "Rejected": 0,
                "Hardware Errors": 0, "Utility": 0.0, "Discarded": 0, "Stale": 0, "Get Failures": 0,
                "Local Work": 0, "Remote Failures": 0, "Network Blocks": 0, "Total MH": r.total_mhs() * r.uptime_s as f64,
                "Work Utility": 0.0, "Difficulty Accepted": r.accepted as f64 * 65536.0, "Difficulty Rejected": 0.0,
                "Difficulty Stale": 0.0, "Best Share": 1_000_000, "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Last getwork": 0,
            }],
        }),
        "devs" => json!({
            "STATUS": status("S", 9, &format!("{} ASC(s)", r.boards), &desc),
            "DEVS": (0..r.boards).map(|b| {
                let m = mhs(r.board_ghs() * 1000.0);
                json!({"ASC": b, "Name": "BC5", "ID": b + 1, "Enabled": "Y", "Status": "Alive",
                       "Temperature": r.board_temp(b), "MHS av": m, "MHS 5s": m, "MHS 1m": m, "MHS 5m": m,
                       "MHS 15m": m, "Nominal MHS": r.ideal_ghs() * 1000.0 / r.boards as f64,
                       "Accepted": r.accepted / r.boards as u64, "Rejected": 0, "Hardware Errors": 0,
                       "Device Elapsed": r.uptime_s})
            }).collect::<Vec<_>>(),
        }),
        "devdetails" => json!({
            "STATUS": status("S", 69, "Device Details", &desc),
            "DEVDETAILS": (0..r.boards).map(|b| json!({"DEVDETAILS": b, "Name": "BC5", "ID": b + 1,
                "Driver": "bitmain", "Kernel": "", "Model": format!("Bitmain {}", core.spec.model.name),
                "Chips": r.chips_per_board, "Frequency": 525.0, "Voltage": 13.2})).collect::<Vec<_>>(),
        }),
        "temps" => json!({
            "STATUS": status("S", 201, &format!("{} Temp(s)", r.boards), &desc),
            "TEMPS": (0..r.boards).map(|b| json!({"TEMP": b, "ID": b + 1, "Board": r.board_temp(b),
                "Chip": r.chip_temp(b)})).collect::<Vec<_>>(),
        }),
        "fans" => json!({
            "STATUS": status("S", 202, &format!("{} Fan(s)", r.fans), &desc),
            "FANS": (0..r.fans).map(|f| json!({"FAN": f, "ID": f, "RPM": r.fan_rpm(f), "Speed": 100}))
                .collect::<Vec<_>>(),
        }),
        "tunerstatus" => json!({
            "STATUS": status("S", 1, "Tuner Status", &desc),
            "TUNERSTATUS": [{
                "PowerLimit": target_w(core), "DynamicPowerScaling": "Disabled",
                "ApproximateChainPowerConsumption": r.watts().saturating_sub(r.watts() / 20),
                "ApproximateMinerPowerConsumption": r.watts(),
                "TunerChainStatus": (0..r.boards).map(|b| json!({"HashchainIndex": b, "Iteration": 0,
                    "LoadedProfile": true, "PowerLimit": target_w(core) / r.boards as u32,
                    "Status": "Stable"})).collect::<Vec<_>>(),
            }],
        }),
        "pools" => antminer::api(core, req),
        _ => invalid_command(core),
    }
}

pub(crate) fn web(core: Arc<Core>, req: HttpRequest) -> BoxFuture<'static, HttpResponse> {
    Box::pin(async move { route(&core, &req) })
}

fn error(status: StatusCode, msg: &str) -> HttpResponse {
    json_reply(status, &json!({"code": status.as_u16(), "message": msg}))
}

fn route(core: &Core, req: &HttpRequest) -> HttpResponse {
    let path = req.path.trim_end_matches('/');
    if path.is_empty() || path == "/index.html" {
        let mut resp = text(
            StatusCode::OK,
            "<!doctype html><html><head><title>Braiins OS</title></head><body>Braiins OS</body></html>",
        );
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html"),
        );
        return resp;
    }
    if path == "/graphql" {
        return if req.method == Method::POST {
            graphql(core, req)
        } else {
            error(StatusCode::METHOD_NOT_ALLOWED, "GraphQL takes POST")
        };
    }
    if req.method == Method::POST && path == "/api/v1/auth/login" {
        return login(core, req);
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    if !authorized(core, req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing or expired token",
        );
    }
    if req.method == Method::GET
        && let Some(reply) = braiins_rest::get(core, rest)
    {
        return json_reply(StatusCode::OK, &reply);
    }
    let (min_w, max_w) = core.spec.model.power_target_range_w();
    match (&req.method, rest) {
        (&Method::PUT, "actions/pause") => {
            core.set_awake(false);
            json_reply(StatusCode::OK, &json!({"paused": true}))
        }
        (&Method::PUT, "actions/resume") => {
            core.set_awake(true);
            json_reply(StatusCode::OK, &json!({"resumed": true}))
        }
        (&Method::PUT | &Method::POST, "actions/reboot") => {
            core.reboot();
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::PUT, "performance/power-target") => {
            let watt = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("watt").and_then(Value::as_u64));
            match watt.and_then(|w| u32::try_from(w).ok()) {
                Some(w) if (min_w..=max_w).contains(&w) => {
                    core.set_power_target(Some(w));
                    json_reply(StatusCode::OK, &json!({"watt": w}))
                }
                Some(w) => error(
                    StatusCode::BAD_REQUEST,
                    &format!("power target {w} W outside {min_w}..={max_w} W"),
                ),
                None => error(StatusCode::BAD_REQUEST, "expected {\"watt\": N}"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// `POST /graphql`: the model and version answer anyone (clients identify the miner before
/// they log in); every other query needs the `session_id` cookie the `auth.login` mutation
/// sets. Errors are GraphQL's own shape, `{"errors": [{"message": …}]}`, with HTTP 200.
fn graphql(core: &Core, req: &HttpRequest) -> HttpResponse {
    let gql_error = |msg: &str| json_reply(StatusCode::OK, &json!({"errors": [{"message": msg}]}));
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return gql_error(&format!("body is not JSON: {e}")),
    };
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return gql_error("no \"query\" in the body");
    };
    let variables = body.get("variables").cloned().unwrap_or(Value::Null);
    let op = match graphql::parse(query) {
        Ok(op) => op,
        Err(e) => return gql_error(&format!("Syntax Error: {e}")),
    };
    if op.kind == OperationKind::Mutation {
        return graphql_mutation(core, &op, &variables);
    }
    let public = op.roots().iter().all(|f| {
        f.alias.is_none()
            && matches!(f.name.as_str(), "bosminer" | "bos")
            && f.selection
                .iter()
                .all(|s| matches!(s, graphql::Selection::Field(c) if c.name == "info"))
    });
    if !public && !session_cookie(req).is_some_and(|t| token_valid(core, &t)) {
        return gql_error("Unauthorized: log in first (auth.login)");
    }
    match graphql::project(&braiins_rest::graphql_data(core), &op.selection) {
        Ok(data) => json_reply(StatusCode::OK, &json!({"data": data})),
        Err(e) => gql_error(&e),
    }
}

/// The one mutation clients send before reading: `auth { login(username, password) }`, which
/// answers a `VoidResult` and sets the session cookie.
fn graphql_mutation(core: &Core, op: &graphql::Operation, variables: &Value) -> HttpResponse {
    let gql_error = |msg: &str| json_reply(StatusCode::OK, &json!({"errors": [{"message": msg}]}));
    let Some(login) = op
        .roots()
        .into_iter()
        .find(|f| f.name == "auth")
        .and_then(|auth| auth.child("login"))
    else {
        return gql_error("this emulator answers only the auth.login mutation");
    };
    let (user, pass) = core.spec.login();
    let ok = login.arg_str("username", variables).as_deref() == Some(user.as_str())
        && login.arg_str("password", variables).as_deref() == Some(pass.as_str())
        && !core.has_fault(&Fault::WrongCredentials);
    if !ok {
        return gql_error("Invalid username or password");
    }
    let token = issue_token(core);
    let mut resp = json_reply(
        StatusCode::OK,
        &json!({"data": {"auth": {"login": {"void": null, "__typename": "VoidResult"}}}}),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!("session_id={token}; Path=/; HttpOnly")) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("session_id=").map(str::to_owned))
}

/// A fresh token (REST bearer or GraphQL session), remembered for [`TOKEN_TTL_S`].
fn issue_token(core: &Core) -> String {
    let token = format!(
        "{:016x}",
        u64::from(core.next_counter()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    let mut inner = core.lock();
    let now = Instant::now();
    inner
        .tokens
        .retain(|(_, t)| now.saturating_duration_since(*t).as_secs() < TOKEN_TTL_S);
    if inner.tokens.len() >= 32 {
        inner.tokens.remove(0);
    }
    inner.tokens.push((token.clone(), now));
    token
}

fn token_valid(core: &Core, token: &str) -> bool {
    let now = Instant::now();
    core.lock()
        .tokens
        .iter()
        .any(|(t, at)| t == token && now.saturating_duration_since(*at).as_secs() < TOKEN_TTL_S)
}

fn login(core: &Core, req: &HttpRequest) -> HttpResponse {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let (user, pass) = core.spec.login();
    let ok = body.get("username").and_then(Value::as_str) == Some(user.as_str())
        && body.get("password").and_then(Value::as_str) == Some(pass.as_str())
        && !core.has_fault(&Fault::WrongCredentials);
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "invalid username or password");
    }
    let token = issue_token(core);
    json_reply(
        StatusCode::OK,
        &json!({"token": token, "timeout_s": TOKEN_TTL_S}),
    )
}

fn authorized(core: &Core, req: &HttpRequest) -> bool {
    if core.has_fault(&Fault::WrongCredentials) {
        return false;
    }
    let Some(token) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    token_valid(core, token.strip_prefix("Bearer ").unwrap_or(token).trim())
}
