//! Property: whatever well-formed AgentService and FleetService messages authenticated callers
//! send (proptest over the prost types: ids colliding with honest hosts' devices, readings of
//! 1e30 W or NaN, far-future expiries, huge generations, policies of any text, each role), the
//! controller never panics, never answers INTERNAL/UNKNOWN, never corrupts its store (every later
//! read succeeds, through the API and on the SQLite file), and the honest agents' devices stay as
//! they reported them: the site's committed power never goes below what it was for them.
//!
//! The controller runs in process (`Controller` and `api::serve` over a real socket, its SQLite
//! store in a temporary directory); callers are tonic clients with bearer tokens. Cases:
//! `PIVOT_HOSTILE_CASES` (default 48); `PIVOT_HOSTILE_VERBOSE=1` prints every refusal.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use pivot_controller::Controller;
use pivot_controller::auth::{Role, new_token};
use pivot_controller::config::{Config, NoEnv};
use pivot_controller::store::{SqliteStore, Store};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tonic::transport::Channel;

/// Panics on the controller's threads (named `hostile-ctl`), counted by a process-wide hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// What the hostile calls got, for the report (a run where everything was refused at the door
/// would prove little).
static ACCEPTED_CALLS: AtomicUsize = AtomicUsize::new(0);
static REFUSED_CALLS: AtomicUsize = AtomicUsize::new(0);
static WELCOMED_SESSIONS: AtomicUsize = AtomicUsize::new(0);
static REFUSED_SESSIONS: AtomicUsize = AtomicUsize::new(0);

const HONEST: [&str; 2] = ["honest-1", "honest-2"];
const EVIL: [&str; 2] = ["evil-1", "evil-2"];
/// Device ids the strategies draw from: the honest hosts', the evil hosts', and nobody's.
const IDS: [&str; 10] = [
    "miner/h1-a",
    "miner/h1-b",
    "gpu/h1-0",
    "miner/h2-a",
    "host/honest-1",
    "miner/e-1",
    "miner/e-2",
    "gpu/e-0",
    "miners",
    "host/evil-1",
];

/// Who makes a FleetService call.
#[derive(Debug, Clone, Copy)]
enum Who {
    Admin,
    Operator,
    Viewer,
    /// An agent's token (host evil-1): may call nothing here.
    Agent,
    Nobody,
}

#[derive(Debug, Clone)]
enum FleetCall {
    SetOverride(v1::SetOverrideRequest),
    ClearOverride(v1::ClearOverrideRequest),
    DemandResponse(v1::DemandResponseRequest),
    CancelDemandResponse(v1::CancelDemandResponseRequest),
    SetPolicy(v1::SetPolicyRequest),
    ValidatePolicy(v1::ValidatePolicyRequest),
    ForgetHost(v1::ForgetHostRequest),
    ListAudit(v1::ListAuditRequest),
    ListDevices(v1::ListDevicesRequest),
    GetHistory(v1::GetHistoryRequest),
    ListDemandResponses(v1::ListDemandResponsesRequest),
}

#[derive(Debug, Clone)]
enum Action {
    Fleet(Who, FleetCall),
    /// One agent session from an evil host's identity: these messages, then the end.
    Session(usize, Vec<v1::AgentMessage>),
}

// ---------------------------------------------------------------- strategies over the prost types

fn id() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(&IDS[..]).prop_map(str::to_owned),
        1 => "[a-z0-9/:._-]{1,16}",
        1 => Just("miner/\u{1b}[2J\nforged\0".to_owned()),
        1 => Just("x".repeat(200)),
        1 => Just(String::new()),
    ]
    .boxed()
}

/// Ids an evil host would declare: mostly its own, sometimes an honest host's.
fn own_id() -> BoxedStrategy<String> {
    prop_oneof![
        6 => proptest::sample::select(&["miner/e-1", "miner/e-2", "miner/e-3", "gpu/e-0", "gpu/e-1"][..])
            .prop_map(str::to_owned),
        1 => proptest::sample::select(&IDS[..4]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => ".{0,24}",
        1 => Just("ok\n    1 2026-01-01T00:00:00+00:00 override miners cert:admin forged\u{1b}[31m\0".to_owned()),
        1 => Just("y".repeat(5000)),
    ]
    .boxed()
}

fn num() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => 0.0..5000.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(1e30),
        1 => Just(-5000.0),
        1 => Just(-100.0),
        1 => Just(200.0),
        1 => any::<f64>(),
    ]
    .boxed()
}

fn watts() -> BoxedStrategy<u32> {
    prop_oneof![4 => 0..5000u32, 1 => Just(u32::MAX), 1 => any::<u32>()].boxed()
}

fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![8 => 0..6i32, 1 => Just(-1), 1 => Just(i32::MAX)].boxed()
}

fn timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    prop_oneof![
        2 => Just(None),
        4 => (-86_400i64..40 * 366 * 86_400, 0..1_000_000_000i32)
            .prop_map(move |(s, n)| Some(prost_types::Timestamp { seconds: now + s, nanos: n })),
        1 => (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        1 => Just(Some(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 })),
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<Option<prost_types::Duration>> {
    prop_oneof![
        1 => Just(None),
        4 => (0i64..400 * 86_400, 0..1_000_000_000i32)
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
        1 => Just(Some(prost_types::Duration { seconds: 99_999_999_999 * 86_400, nanos: 0 })),
        1 => (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ]
    .boxed()
}

fn generation() -> BoxedStrategy<u64> {
    prop_oneof![4 => 0..10u64, 1 => Just(i64::MAX as u64), 1 => Just(u64::MAX), 1 => any::<u64>()]
        .boxed()
}

fn miner_target() -> impl Strategy<Value = v1::MinerTarget> {
    (enum_value(), proptest::option::of(watts())).prop_map(|(mode, power_target_w)| {
        v1::MinerTarget {
            mode,
            power_target_w,
        }
    })
}

fn intent_target() -> impl Strategy<Value = Option<v1::intent::Target>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            miner_target().prop_map(v1::intent::Target::Miner),
            watts().prop_map(|power_cap_w| v1::intent::Target::Gpu(v1::GpuTarget { power_cap_w })),
            enum_value()
                .prop_map(|state| v1::intent::Target::Workload(v1::WorkloadTarget { state })),
        ],
    )
}

fn intent() -> impl Strategy<Value = v1::Intent> {
    (
        id(),
        generation(),
        timestamp(),
        intent_target(),
        text(),
        0..4u32,
        text(),
    )
        .prop_map(
            |(device_id, generation, lease_expires_at, target, reason, phase, plan_id)| {
                v1::Intent {
                    device_id,
                    generation,
                    lease_expires_at,
                    target,
                    reason,
                    phase,
                    plan_id,
                }
            },
        )
}

fn miner_inventory() -> impl Strategy<Value = v1::MinerInventory> {
    (
        id(),
        enum_value(),
        text(),
        proptest::option::of(watts()),
        proptest::option::of(num()),
        proptest::option::of((
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(watts()),
            proptest::option::of(watts()),
            proptest::collection::vec(watts(), 0..3),
        )),
    )
        .prop_map(
            |(device_id, dialect, model, nameplate, ths, caps)| v1::MinerInventory {
                device_id,
                addr: "10.0.0.1:4028".into(),
                dialect,
                model,
                nameplate_power_w: nameplate,
                nameplate_hashrate_ths: ths,
                capabilities: caps.map(|(can_sleep, power_target, lo, hi, steps)| {
                    v1::MinerCapabilities {
                        can_sleep,
                        power_target,
                        power_target_min_w: lo,
                        power_target_max_w: hi,
                        power_target_steps_w: steps,
                    }
                }),
                ..Default::default()
            },
        )
}

fn gpu_inventory() -> impl Strategy<Value = v1::GpuInventory> {
    (id(), watts(), watts(), watts(), text()).prop_map(|(device_id, lo, hi, default, name)| {
        v1::GpuInventory {
            device_id,
            name,
            power_cap_min_w: lo,
            power_cap_max_w: hi,
            power_cap_default_w: default,
            ..Default::default()
        }
    })
}

/// A hello that mostly passes the edge's checks, with hostile values where they are allowed:
/// nameplates and declared power of any size, colliding ids, held intents at any generation.
fn plausible_hello(own: &'static str) -> impl Strategy<Value = v1::Hello> {
    let miner = (
        own_id(),
        1..=6i32,
        1..8000u32,
        0.1..500.0f64,
        any::<bool>(),
        100..4000u32,
    )
        .prop_map(
            |(device_id, dialect, w, ths, power_target, lo)| v1::MinerInventory {
                device_id,
                addr: "10.0.0.2:4028".into(),
                dialect,
                model: "Whatsminer M30S".into(),
                nameplate_power_w: Some(w),
                nameplate_hashrate_ths: Some(ths),
                capabilities: Some(v1::MinerCapabilities {
                    can_sleep: true,
                    power_target,
                    power_target_min_w: Some(lo.min(w)),
                    power_target_max_w: Some(w),
                    power_target_steps_w: vec![],
                }),
                ..Default::default()
            },
        );
    let gpu =
        (own_id(), 100..300u32, 300..1000u32).prop_map(|(device_id, lo, hi)| v1::GpuInventory {
            device_id,
            power_cap_min_w: lo,
            power_cap_max_w: hi,
            power_cap_default_w: hi,
            ..Default::default()
        });
    let now = Utc::now();
    (
        proptest::collection::vec(miner, 0..4),
        proptest::collection::vec(gpu, 0..2),
        proptest::collection::vec((generation(), 0..3usize, 1..3i32), 0..2),
    )
        .prop_map(move |(miners, gpus, held)| {
            let ids: Vec<String> = miners
                .iter()
                .map(|m| m.device_id.clone())
                .chain(gpus.iter().map(|g| g.device_id.clone()))
                .collect();
            let held_intents = held
                .into_iter()
                .filter_map(|(generation, i, mode)| {
                    let device_id = ids.get(i)?.clone();
                    Some(v1::Intent {
                        target: Some(if device_id.starts_with("gpu/") {
                            v1::intent::Target::Gpu(v1::GpuTarget { power_cap_w: 300 })
                        } else {
                            v1::intent::Target::Miner(v1::MinerTarget {
                                mode,
                                power_target_w: None,
                            })
                        }),
                        device_id,
                        generation,
                        lease_expires_at: Some(pivot_proto::model::timestamp_to_proto(
                            now + chrono::Duration::seconds(60),
                        )),
                        ..Default::default()
                    })
                })
                .collect();
            v1::Hello {
                host_id: own.to_owned(),
                agent_version: "0.1.0".into(),
                host: None,
                miners,
                gpus,
                held_intents,
            }
        })
}

/// A hello of anything.
fn hello(own: &'static str) -> impl Strategy<Value = v1::Hello> {
    (
        prop_oneof![4 => Just(own.to_owned()), 1 => id()],
        proptest::collection::vec(miner_inventory(), 0..4),
        proptest::collection::vec(gpu_inventory(), 0..3),
        proptest::collection::vec(intent(), 0..3),
        proptest::option::of((proptest::option::of(watts()), proptest::option::of(watts()))),
    )
        .prop_map(|(host_id, miners, gpus, held_intents, host)| v1::Hello {
            host_id,
            agent_version: "0.0.0-hostile".into(),
            host: host.map(|(base_power_w, max_power_w)| v1::HostInventory {
                base_power_w,
                max_power_w,
                ..Default::default()
            }),
            miners,
            gpus,
            held_intents,
        })
}

fn miner_reading() -> impl Strategy<Value = v1::MinerReading> {
    (
        prop_oneof![3 => own_id(), 1 => id()],
        any::<bool>(),
        enum_value(),
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::collection::vec(
            (proptest::option::of(num()), proptest::option::of(num())),
            0..3,
        ),
        timestamp(),
    )
        .prop_map(
            |(device_id, reachable, state, hashrate, power, target, boards, observed_at)| {
                v1::MinerReading {
                    device_id,
                    reachable,
                    state,
                    hashrate_ths: hashrate,
                    power_w: power,
                    power_target_w: target,
                    boards: boards
                        .into_iter()
                        .enumerate()
                        .map(|(i, (t, h))| v1::BoardReading {
                            index: u32::try_from(i).unwrap_or(0),
                            temperature_c: t,
                            hashrate_ths: h,
                        })
                        .collect(),
                    observed_at,
                    ..Default::default()
                }
            },
        )
}

fn gpu_reading() -> impl Strategy<Value = v1::GpuReading> {
    (
        prop_oneof![3 => own_id(), 1 => id()],
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::option::of(num()),
        timestamp(),
    )
        .prop_map(
            |(device_id, power_w, temperature_c, utilization_pct, limit, energy_j, observed_at)| {
                v1::GpuReading {
                    device_id,
                    power_w,
                    energy_j,
                    temperature_c,
                    utilization_pct,
                    enforced_power_limit_w: limit,
                    power_cap_w: limit,
                    observed_at,
                    ..Default::default()
                }
            },
        )
}

fn agent_message(own: &'static str) -> impl Strategy<Value = v1::AgentMessage> {
    let telemetry = (
        timestamp(),
        proptest::collection::vec(miner_reading(), 0..4),
        proptest::collection::vec(gpu_reading(), 0..2),
        proptest::option::of((proptest::option::of(num()), proptest::option::of(num()))),
    )
        .prop_map(|(taken_at, miners, gpus, host)| {
            Up::Telemetry(v1::TelemetrySnapshot {
                taken_at,
                miners,
                gpus,
                host: host.map(|(power_w, temperature_c)| v1::HostReading {
                    power_w,
                    temperature_c,
                    ..Default::default()
                }),
            })
        });
    let status = (
        id(),
        generation(),
        enum_value(),
        text(),
        proptest::option::of(num()),
        timestamp(),
        any::<bool>(),
    )
        .prop_map(
            |(device_id, generation, phase, detail, observed_power_w, at, retrying)| {
                Up::IntentStatus(v1::IntentStatus {
                    device_id,
                    generation,
                    phase,
                    detail,
                    observed_power_w,
                    at,
                    plan_id: String::new(),
                    plan_phase: 0,
                    retrying,
                })
            },
        );
    proptest::option::weighted(
        0.95,
        prop_oneof![4 => telemetry, 2 => status, 1 => hello(own).prop_map(Up::Hello)],
    )
    .prop_map(|msg| v1::AgentMessage { msg })
}

fn session() -> impl Strategy<Value = Action> {
    (0..EVIL.len()).prop_flat_map(|i| {
        let own = EVIL[i];
        (
            proptest::option::weighted(
                0.95,
                prop_oneof![3 => plausible_hello(own).boxed(), 1 => hello(own).boxed()],
            ),
            proptest::collection::vec(agent_message(own), 0..5),
        )
            .prop_map(move |(first, rest)| {
                let mut msgs: Vec<v1::AgentMessage> = first
                    .map(|h| v1::AgentMessage {
                        msg: Some(Up::Hello(h)),
                    })
                    .into_iter()
                    .collect();
                msgs.extend(rest);
                Action::Session(i, msgs)
            })
    })
}

fn policy_document() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (any::<u64>(), num(), "[a-z]{1,8}").prop_map(|(dwell, margin, name)| format!(
            "name = \"{name}\"\n[economic]\nmin_dwell_s = {}\nmin_margin_usd_per_mwh = {margin:?}\n",
            dwell % 1_000_000
        )),
        1 => Just("name = \"w\"\n[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nstart = \"15:00\"\nend = \"17:30\"\ncurtail_mining = true\n".to_owned()),
        1 => Just("name = \"evil\\n\\u001b[2J# policy `x`, revision 99\"\n".to_owned()),
        1 => ".{0,64}",
        1 => Just(format!("name = \"big\"\n# {}\n", "z".repeat(70 * 1024))),
    ]
    .boxed()
}

fn fleet_calls() -> impl Strategy<Value = FleetCall> {
    let pin = proptest::option::weighted(
        0.9,
        prop_oneof![
            miner_target().prop_map(v1::r#override::Pin::Miner),
            watts().prop_map(|power_cap_w| v1::r#override::Pin::Gpu(v1::GpuTarget { power_cap_w })),
            enum_value()
                .prop_map(|state| v1::r#override::Pin::Workload(v1::WorkloadTarget { state })),
        ],
    );
    let set_override = (id(), pin, timestamp(), text(), text()).prop_map(
        |(target, pin, expires_at, reason, actor)| {
            FleetCall::SetOverride(v1::SetOverrideRequest {
                r#override: Some(v1::Override {
                    target,
                    pin,
                    expires_at,
                    reason,
                    actor,
                    created_at: None,
                }),
            })
        },
    );
    let dr = (
        num(),
        timestamp(),
        duration(),
        prop_oneof![id(), text()],
        text(),
    )
        .prop_map(|(target_power_w, deadline, duration, event_id, actor)| {
            FleetCall::DemandResponse(v1::DemandResponseRequest {
                target_power_w,
                deadline,
                duration,
                event_id,
                actor,
            })
        });
    let now = Utc::now();
    let plausible_override = (
        proptest::sample::select(&IDS[..]),
        prop_oneof![
            (1..=2i32).prop_map(|mode| v1::r#override::Pin::Miner(v1::MinerTarget {
                mode,
                power_target_w: None
            })),
            (200..=700u32)
                .prop_map(|power_cap_w| v1::r#override::Pin::Gpu(v1::GpuTarget { power_cap_w })),
            (1..=2i32)
                .prop_map(|state| v1::r#override::Pin::Workload(v1::WorkloadTarget { state })),
        ],
        proptest::option::of(60..400_000_000i64),
        text(),
    )
        .prop_map(move |(target, pin, expires_in_s, reason)| {
            FleetCall::SetOverride(v1::SetOverrideRequest {
                r#override: Some(v1::Override {
                    target: target.to_owned(),
                    pin: Some(pin),
                    expires_at: expires_in_s.map(|s| {
                        pivot_proto::model::timestamp_to_proto(now + chrono::Duration::seconds(s))
                    }),
                    reason,
                    actor: "hostile".into(),
                    created_at: None,
                }),
            })
        });
    let plausible_dr = (
        0.0..200_000.0f64,
        60..86_400i64,
        60..366 * 86_400i64,
        "[a-z0-9-]{1,12}",
    )
        .prop_map(move |(target_power_w, lead_s, hold_s, event_id)| {
            FleetCall::DemandResponse(v1::DemandResponseRequest {
                target_power_w,
                deadline: Some(pivot_proto::model::timestamp_to_proto(
                    now + chrono::Duration::seconds(lead_s),
                )),
                duration: Some(prost_types::Duration {
                    seconds: hold_s,
                    nanos: 0,
                }),
                event_id,
                actor: "hostile".into(),
            })
        });
    prop_oneof![
        3 => plausible_override,
        2 => plausible_dr,
        3 => set_override,
        1 => (id(), text()).prop_map(|(target, actor)| FleetCall::ClearOverride(
            v1::ClearOverrideRequest { target, actor }
        )),
        2 => dr,
        1 => (prop_oneof![id(), text()], text()).prop_map(|(event_id, actor)| {
            FleetCall::CancelDemandResponse(v1::CancelDemandResponseRequest { event_id, actor })
        }),
        2 => (policy_document(), text(), proptest::option::of(0..4u64)).prop_map(
            |(document_toml, actor, expected_revision)| FleetCall::SetPolicy(v1::SetPolicyRequest {
                document_toml,
                actor,
                expected_revision,
            })
        ),
        1 => policy_document().prop_map(|document_toml| FleetCall::ValidatePolicy(
            v1::ValidatePolicyRequest { document_toml }
        )),
        2 => (
            prop_oneof![
                proptest::sample::select(&HONEST[..]).prop_map(str::to_owned),
                proptest::sample::select(&EVIL[..]).prop_map(str::to_owned),
                id()
            ],
            text()
        )
            .prop_map(|(host_id, reason)| FleetCall::ForgetHost(v1::ForgetHostRequest {
                host_id,
                reason
            })),
        1 => (any::<u32>(), any::<u64>(), id(), text()).prop_map(|(limit, before_id, subject, kind)| {
            FleetCall::ListAudit(v1::ListAuditRequest { limit, before_id, subject, kind })
        }),
        1 => (enum_value(), id()).prop_map(|(kind, host_id)| FleetCall::ListDevices(
            v1::ListDevicesRequest { kind, host_id }
        )),
        1 => (timestamp(), any::<u32>()).prop_map(|(since, limit)| FleetCall::GetHistory(
            v1::GetHistoryRequest { since, limit }
        )),
        1 => any::<u32>().prop_map(|limit| FleetCall::ListDemandResponses(
            v1::ListDemandResponsesRequest { limit }
        )),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        4 => Just(Who::Admin),
        3 => Just(Who::Operator),
        1 => Just(Who::Viewer),
        1 => Just(Who::Agent),
        1 => Just(Who::Nobody),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (who(), fleet_calls()).prop_map(|(w, c)| Action::Fleet(w, c)),
            2 => session(),
        ],
        1..12,
    )
}

// ---------------------------------------------------------------- the controller under attack

struct Site {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    ctl: Arc<Controller>,
    addr: SocketAddr,
    tokens: std::collections::HashMap<&'static str, String>,
    /// The honest agents' open sessions (kept open for the whole case).
    _honest: Vec<tokio::sync::mpsc::Sender<v1::AgentMessage>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn bearer(token: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {token}").parse().unwrap()
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", bearer(t));
    }
    r
}

fn honest_hello(host: &str) -> v1::Hello {
    let miner = |id: &str, nameplate_power_w| v1::MinerInventory {
        device_id: id.into(),
        addr: "10.1.0.1:4028".into(),
        dialect: v1::MinerDialect::Luxos as i32,
        model: "Antminer S21".into(),
        nameplate_power_w: Some(nameplate_power_w),
        nameplate_hashrate_ths: Some(200.0),
        capabilities: Some(v1::MinerCapabilities {
            can_sleep: true,
            power_target: true,
            power_target_min_w: Some(1750),
            power_target_max_w: Some(3850),
            power_target_steps_w: vec![],
        }),
        ..Default::default()
    };
    let (miners, gpus) = if host == HONEST[0] {
        (
            vec![miner("miner/h1-a", 3500), miner("miner/h1-b", 3500)],
            vec![v1::GpuInventory {
                device_id: "gpu/h1-0".into(),
                power_cap_min_w: 200,
                power_cap_max_w: 700,
                power_cap_default_w: 700,
                ..Default::default()
            }],
        )
    } else {
        (vec![miner("miner/h2-a", 3500)], vec![])
    };
    v1::Hello {
        host_id: host.into(),
        agent_version: "0.1.0".into(),
        host: Some(v1::HostInventory {
            base_power_w: Some(500),
            max_power_w: Some(2000),
            ..Default::default()
        }),
        miners,
        gpus,
        held_intents: vec![],
    }
}

fn honest_telemetry(host: &str) -> v1::TelemetrySnapshot {
    let reading = |id: &str, state: v1::MinerState, power_w: f64, ths: f64| v1::MinerReading {
        device_id: id.into(),
        reachable: true,
        state: state as i32,
        power_w: Some(power_w),
        hashrate_ths: Some(ths),
        ..Default::default()
    };
    if host == HONEST[0] {
        v1::TelemetrySnapshot {
            miners: vec![
                reading("miner/h1-a", v1::MinerState::Mining, 3400.0, 195.0),
                reading("miner/h1-b", v1::MinerState::Sleeping, 30.0, 0.0),
            ],
            gpus: vec![v1::GpuReading {
                device_id: "gpu/h1-0".into(),
                power_w: Some(250.0),
                enforced_power_limit_w: Some(300.0),
                power_cap_w: Some(300.0),
                temperature_c: Some(55.0),
                ..Default::default()
            }],
            ..Default::default()
        }
    } else {
        v1::TelemetrySnapshot {
            miners: vec![reading("miner/h2-a", v1::MinerState::Sleeping, 25.0, 0.0)],
            ..Default::default()
        }
    }
}

async fn start_site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pivot.db");
    let toml = format!(
        "[site]\nid = \"hostile\"\ncap_w = 100000\n[store]\npath = \"{}\"\n\
         [agents]\ntelemetry_interval_s = 1\nmax_devices_per_host = 6\nmax_host_power_w = 50000\n\
         [auth]\nallow_plaintext_tokens = true\n",
        db.display()
    );
    let config = Config::parse(&toml, Path::new("hostile.toml"), &NoEnv).unwrap();
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let mut tokens = std::collections::HashMap::new();
    let now = Utc::now();
    for (name, role, host) in [
        ("admin", Role::Admin, None),
        ("operator", Role::Operator, None),
        ("viewer", Role::Viewer, None),
        (HONEST[0], Role::Agent, Some(HONEST[0])),
        (HONEST[1], Role::Agent, Some(HONEST[1])),
        (EVIL[0], Role::Agent, Some(EVIL[0])),
        (EVIL[1], Role::Agent, Some(EVIL[1])),
    ] {
        let (secret, record) = new_token(name, role, host.map(str::to_owned), now);
        store.put_token(&record).unwrap();
        tokens.insert(name, secret);
    }
    let ctl = Controller::new(config, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pivot_controller::api::serve(
        Arc::clone(&ctl),
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let mut site = Site {
        _dir: dir,
        db,
        ctl,
        addr,
        tokens,
        _honest: Vec::new(),
        stop: Some(stop),
    };
    for host in HONEST {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(v1::AgentMessage {
            msg: Some(Up::Hello(honest_hello(host))),
        })
        .await
        .unwrap();
        tx.send(v1::AgentMessage {
            msg: Some(Up::Telemetry(honest_telemetry(host))),
        })
        .await
        .unwrap();
        let mut client = v1::agent_service_client::AgentServiceClient::new(site.channel().await);
        let mut down = client
            .session(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                Some(&site.tokens[host]),
            ))
            .await
            .unwrap()
            .into_inner();
        // Keep reading the honest session's downlink for as long as it lives.
        tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
        site._honest.push(tx);
    }
    // Both honest agents connected and their readings believed.
    for _ in 0..500 {
        let s = site.ctl.site_status().await.unwrap();
        if s.agents_connected == 2 && s.miners_mining == 1 && s.miners_sleeping == 2 {
            return site;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the honest agents never showed: {:?}",
        site.ctl.site_status().await
    )
}

impl Site {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn token(&self, who: Who) -> Option<&str> {
        let name = match who {
            Who::Admin => "admin",
            Who::Operator => "operator",
            Who::Viewer => "viewer",
            Who::Agent => EVIL[0],
            Who::Nobody => return None,
        };
        Some(&self.tokens[name])
    }

    /// What the honest agents' devices look like to a viewer.
    async fn honest_devices(&self, fleet: &mut Fleet) -> Vec<v1::Device> {
        let mut out = Vec::new();
        for host in HONEST {
            let r = fleet
                .list_devices(with_token(
                    v1::ListDevicesRequest {
                        kind: 0,
                        host_id: host.into(),
                    },
                    Some(&self.tokens["viewer"]),
                ))
                .await
                .unwrap()
                .into_inner();
            out.extend(r.devices);
        }
        out
    }
}

type Fleet = v1::fleet_service_client::FleetServiceClient<Channel>;

/// A status a hostile call may get: anything the caller caused, never the controller's failure.
fn acceptable(r: Result<(), tonic::Status>, what: &str) -> Result<(), TestCaseError> {
    if let Err(s) = r {
        prop_assert!(
            !matches!(
                s.code(),
                tonic::Code::Internal
                    | tonic::Code::Unknown
                    | tonic::Code::DataLoss
                    | tonic::Code::Unavailable
            ),
            "{what}: {:?} {}",
            s.code(),
            s.message()
        );
    }
    Ok(())
}

async fn fleet_call(
    site: &Site,
    fleet: &mut Fleet,
    who: Who,
    call: FleetCall,
) -> Result<(), TestCaseError> {
    let t = site.token(who);
    let r = match call.clone() {
        FleetCall::SetOverride(m) => fleet.set_override(with_token(m, t)).await.map(drop),
        FleetCall::ClearOverride(m) => fleet.clear_override(with_token(m, t)).await.map(drop),
        FleetCall::DemandResponse(m) => fleet.demand_response(with_token(m, t)).await.map(drop),
        FleetCall::CancelDemandResponse(m) => fleet
            .cancel_demand_response(with_token(m, t))
            .await
            .map(drop),
        FleetCall::SetPolicy(m) => fleet.set_policy(with_token(m, t)).await.map(drop),
        FleetCall::ValidatePolicy(m) => fleet.validate_policy(with_token(m, t)).await.map(drop),
        FleetCall::ForgetHost(m) => fleet.forget_host(with_token(m, t)).await.map(drop),
        FleetCall::ListAudit(m) => fleet.list_audit(with_token(m, t)).await.map(drop),
        FleetCall::ListDevices(m) => fleet.list_devices(with_token(m, t)).await.map(drop),
        FleetCall::GetHistory(m) => fleet.get_history(with_token(m, t)).await.map(drop),
        FleetCall::ListDemandResponses(m) => fleet
            .list_demand_responses(with_token(m, t))
            .await
            .map(drop),
    };
    let read = matches!(
        call,
        FleetCall::ListAudit(_)
            | FleetCall::ListDevices(_)
            | FleetCall::GetHistory(_)
            | FleetCall::ListDemandResponses(_)
            | FleetCall::ValidatePolicy(_)
    );
    // An agent's identity and no identity may call nothing here; a viewer only reads.
    if matches!(who, Who::Agent | Who::Nobody) || (matches!(who, Who::Viewer) && !read) {
        prop_assert!(r.is_err(), "{who:?} was allowed {call:?}");
    }
    if std::env::var_os("PIVOT_HOSTILE_VERBOSE").is_some()
        && let Err(e) = &r
    {
        eprintln!(
            "refused {who:?}: {:?} {}",
            e.code(),
            e.message().chars().take(120).collect::<String>()
        );
    }
    let counter = if r.is_ok() {
        &ACCEPTED_CALLS
    } else {
        &REFUSED_CALLS
    };
    counter.fetch_add(1, Ordering::Relaxed);
    acceptable(r, &format!("{who:?} {call:?}"))
}

async fn agent_session(
    site: &Site,
    host: usize,
    msgs: Vec<v1::AgentMessage>,
) -> Result<(), TestCaseError> {
    let mut client = v1::agent_service_client::AgentServiceClient::new(site.channel().await);
    let r = client
        .session(with_token(
            tokio_stream::iter(msgs.clone()),
            Some(&site.tokens[EVIL[host]]),
        ))
        .await;
    let what = format!("session of {} with {msgs:?}", EVIL[host]);
    match r {
        Err(s) => {
            REFUSED_SESSIONS.fetch_add(1, Ordering::Relaxed);
            acceptable(Err(s), &what)
        }
        Ok(down) => {
            WELCOMED_SESSIONS.fetch_add(1, Ordering::Relaxed);
            // The uplink ended with the last message; the controller ends the downlink once it
            // processed everything (or refused something).
            let mut down = down.into_inner();
            let read = async {
                loop {
                    match down.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return Ok(()),
                        Err(s) => return Err(s),
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(r) => acceptable(r, &what),
                Err(_) => Err(TestCaseError::fail(format!("{what}: never ended"))),
            }
        }
    }
}

/// Every read a viewer or the store itself can make succeeds.
async fn everything_reads(site: &Site, fleet: &mut Fleet) -> Result<(), TestCaseError> {
    let t = Some(site.tokens["viewer"].as_str());
    let reads: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "status",
            fleet
                .get_site_status(with_token(v1::GetSiteStatusRequest {}, t))
                .await
                .map(drop),
        ),
        (
            "devices",
            fleet
                .list_devices(with_token(v1::ListDevicesRequest::default(), t))
                .await
                .map(drop),
        ),
        (
            "overrides",
            fleet
                .list_overrides(with_token(v1::ListOverridesRequest {}, t))
                .await
                .map(drop),
        ),
        (
            "policy",
            fleet
                .get_policy(with_token(v1::GetPolicyRequest {}, t))
                .await
                .map(drop),
        ),
        (
            "demand responses",
            fleet
                .list_demand_responses(with_token(
                    v1::ListDemandResponsesRequest { limit: 1000 },
                    t,
                ))
                .await
                .map(drop),
        ),
        (
            "audit",
            fleet
                .list_audit(with_token(
                    v1::ListAuditRequest {
                        limit: 1000,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
        ),
        (
            "plan",
            fleet
                .get_plan(with_token(v1::GetPlanRequest {}, t))
                .await
                .map(drop),
        ),
        (
            "history",
            fleet
                .get_history(with_token(
                    v1::GetHistoryRequest {
                        since: Some(prost_types::Timestamp {
                            seconds: 0,
                            nanos: 0,
                        }),
                        limit: 10_000,
                    },
                    t,
                ))
                .await
                .map(drop),
        ),
    ];
    for (what, r) in reads {
        prop_assert!(r.is_ok(), "reading {what} failed: {r:?}");
    }
    // And straight from the file, as a restarted controller would read it.
    let store = SqliteStore::open(&site.db).unwrap();
    let now = Utc::now();
    let checks: Vec<(&str, Result<(), pivot_controller::store::StoreError>)> = vec![
        ("audit", store.list_audit(100_000, 0, "", "").map(drop)),
        ("overrides", store.list_overrides(now).map(drop)),
        ("policy", store.get_policy().map(drop)),
        (
            "demand responses",
            store.list_demand_responses(100_000).map(drop),
        ),
        ("intents", store.list_intents().map(drop)),
        ("plans", store.list_plans(1000).map(drop)),
        (
            "history",
            store
                .site_history(chrono::DateTime::<Utc>::MIN_UTC, 100_000)
                .map(drop),
        ),
        ("tokens", store.list_tokens().map(drop)),
    ];
    for (what, r) in checks {
        prop_assert!(r.is_ok(), "the store's {what} cannot be read back: {r:?}");
    }
    prop_assert!(
        Controller::new(site.ctl.config.clone(), Arc::new(store)).is_ok(),
        "a controller restarted on this store could not load its desired state"
    );
    Ok(())
}

async fn run_case(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let site = start_site().await;
    let mut fleet = Fleet::new(site.channel().await);
    let baseline = site.ctl.site_status().await.unwrap();
    let honest = site.honest_devices(&mut fleet).await;
    prop_assert_eq!(baseline.agents_connected, 2);
    for action in actions {
        match action {
            Action::Fleet(who, call) => fleet_call(&site, &mut fleet, who, call).await?,
            Action::Session(host, msgs) => agent_session(&site, host, msgs).await?,
        }
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the controller panicked");
        let now = site.ctl.site_status().await.unwrap();
        prop_assert!(
            now.committed_power_w >= baseline.committed_power_w,
            "committed power fell below the honest agents' {} W: {} W",
            baseline.committed_power_w,
            now.committed_power_w
        );
        prop_assert!(now.committed_power_w.is_finite());
        let devices = site.honest_devices(&mut fleet).await;
        prop_assert_eq!(&devices, &honest, "an honest host's devices changed");
    }
    everything_reads(&site, &mut fleet).await
}

#[test]
fn hostile_messages_change_nothing_for_the_honest_agents_and_never_corrupt_the_store() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("hostile-ctl"))
        {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hostile-ctl")
        .enable_all()
        .build()
        .unwrap();
    let cases = std::env::var("PIVOT_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&actions(), |actions| runtime.block_on(run_case(actions)));
    if let Err(e) = result {
        panic!("{e}");
    }
    let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    eprintln!(
        "hostile: {cases} cases: {} FleetService calls accepted, {} refused; {} agent sessions \
         welcomed, {} refused",
        count(&ACCEPTED_CALLS),
        count(&REFUSED_CALLS),
        count(&WELCOMED_SESSIONS),
        count(&REFUSED_SESSIONS),
    );
    assert!(
        count(&ACCEPTED_CALLS) > 0 && count(&WELCOMED_SESSIONS) > 0,
        "nothing hostile got through the door: the run proved nothing"
    );
}
