//! A burst of agent statuses over a real session: the controller takes the statuses an agent
//! has already sent together (one store transaction for the lot), and what it records must be
//! what it would record taking them one at a time: every change, in the order sent, a message
//! of another kind in the middle handled in its place, and a status that does not validate
//! ending the session only after the ones before it are taken. A watcher of the event stream
//! sees every one of them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pivot_controller::Controller;
use pivot_controller::config::{Config, NoEnv};
use pivot_controller::intents::NewIntent;
use pivot_controller::store::{SqliteStore, Store};
use pivot_proto::model::{IntentPhase, MinerTarget, Target};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;

const HOST: &str = "rack-1";
const MINERS: usize = 1000;

fn id(i: usize) -> String {
    format!("miner/m{i:03}")
}

fn hello() -> v1::Hello {
    v1::Hello {
        host_id: HOST.into(),
        agent_version: "0.1.0".into(),
        miners: (0..MINERS)
            .map(|i| v1::MinerInventory {
                device_id: id(i),
                addr: format!("10.1.{}.{}:4028", i / 250, i % 250 + 1),
                dialect: v1::MinerDialect::Luxos as i32,
                model: "Antminer S21".into(),
                nameplate_power_w: Some(3500),
                nameplate_hashrate_ths: Some(200.0),
                capabilities: Some(v1::MinerCapabilities {
                    can_sleep: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// What status `phase` of miner `i` says: one is long, so that the burst it is in is split by
/// size.
fn detail(i: usize, phase: IntentPhase) -> String {
    if i == 500 && phase == IntentPhase::Applied {
        format!("{phase:?} {i} {}", "x".repeat(700_000))
    } else {
        format!("{phase:?} {i}")
    }
}

fn status(i: usize, phase: IntentPhase) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(Up::IntentStatus(v1::IntentStatus {
            device_id: id(i),
            generation: 1,
            phase: phase.to_proto() as i32,
            detail: detail(i, phase),
            observed_power_w: Some(if phase == IntentPhase::Confirmed {
                20.0
            } else {
                3400.0
            }),
            at: Some(pivot_proto::model::timestamp_to_proto(Utc::now())),
            plan_id: "plan-burst".into(),
            plan_phase: 0,
            retrying: false,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_statuses_is_recorded_whole_in_order_up_to_the_one_that_does_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pivot.db");
    let toml = format!(
        "[site]\nid = \"burst\"\ncap_w = 10000000\n[store]\npath = \"{}\"\n\
         [agents]\nmax_devices_per_host = {MINERS}\n[auth]\nmode = \"open\"\n",
        db.display()
    );
    let config = Config::parse(&toml, Path::new("burst.toml"), &NoEnv).unwrap();
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let ctl = Controller::new(config, Arc::clone(&store) as Arc<dyn Store>).unwrap();
    let now = Utc::now();
    ctl.ledger
        .issue(
            (0..MINERS)
                .map(|i| NewIntent {
                    host_id: HOST.into(),
                    device_id: id(i),
                    target: Target::Miner(MinerTarget::Sleep),
                    reason: "burst".into(),
                    plan_id: "plan-burst".into(),
                    phase: 0,
                    before_w: Some(3400.0),
                    setting_before_w: None,
                })
                .collect(),
            now + chrono::Duration::minutes(5),
            now,
        )
        .unwrap();
    // A watcher, as `pivotctl watch`, from before the first status.
    let channel = crate::serve(&ctl).await;
    let mut watch = v1::fleet_service_client::FleetServiceClient::new(channel.clone())
        .watch_events(v1::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    // Everything is queued before the session opens: applied for all, a telemetry snapshot,
    // confirmed for all, then a status whose phase is no phase.
    let mut msgs = vec![v1::AgentMessage {
        msg: Some(Up::Hello(hello())),
    }];
    msgs.extend((0..MINERS).map(|i| status(i, IntentPhase::Applied)));
    msgs.push(v1::AgentMessage {
        msg: Some(Up::Telemetry(v1::TelemetrySnapshot {
            miners: vec![v1::MinerReading {
                device_id: id(0),
                reachable: true,
                state: v1::MinerState::Sleeping as i32,
                power_w: Some(21.0),
                hashrate_ths: Some(0.0),
                ..Default::default()
            }],
            ..Default::default()
        })),
    });
    msgs.extend((0..MINERS).map(|i| status(i, IntentPhase::Confirmed)));
    let mut bad = status(0, IntentPhase::Failed);
    if let Some(Up::IntentStatus(s)) = &mut bad.msg {
        s.phase = 99;
    }
    msgs.push(bad);
    msgs.push(status(1, IntentPhase::Failed));

    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    let mut down = client
        .session(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    // The welcome names how old a reading the controller believes: three telemetry intervals
    // when `[engine] stale_after_s` is not set (the agent checks its polls against it).
    let first = down.message().await.unwrap().unwrap();
    let Some(v1::controller_message::Msg::Welcome(w)) = first.msg else {
        panic!("the first message was not the welcome: {first:?}");
    };
    assert_eq!(
        (w.telemetry_interval, w.stale_after),
        (
            Some(prost_types::Duration {
                seconds: 10,
                nanos: 0
            }),
            Some(prost_types::Duration {
                seconds: 30,
                nanos: 0
            })
        )
    );
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match down.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("the session never ended");
    let end = end.expect("the session ended without refusing the bad status");
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("intent_status.phase"), "{end:?}");

    // Every device confirmed, in the ledger and in the store; the status after the bad one was
    // not taken.
    for i in 0..MINERS {
        let held = ctl.ledger.get(&id(i)).unwrap();
        let s = held.status.as_ref().unwrap();
        assert_eq!(s.phase, IntentPhase::Confirmed, "{}", id(i));
        assert_eq!(s.detail, format!("Confirmed {i}"));
    }
    let stored = store.list_intents().unwrap();
    assert_eq!(stored.len(), MINERS);
    assert!(
        stored
            .iter()
            .all(|d| d.status.as_ref().map(|s| s.phase) == Some(IntentPhase::Confirmed)),
    );
    // The audit log holds one record per change, in the order sent.
    let mut records = Vec::new();
    let mut before_id = 0;
    loop {
        let page = store.list_audit(1000, before_id, "", "status").unwrap();
        let Some(last) = page.last() else { break };
        before_id = last.id;
        records.extend(page);
    }
    records.reverse();
    let got: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r.subject, r.reason))
        .collect();
    let want: Vec<String> = [IntentPhase::Applied, IntentPhase::Confirmed]
        .into_iter()
        .flat_map(|p| (0..MINERS).map(move |i| format!("{} {}", id(i), detail(i, p))))
        .collect();
    assert_eq!(got, want);
    // The watcher saw every status record, in the same order.
    let mut watched = Vec::new();
    while watched.len() < want.len() {
        let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(10), watch.message()).await
        else {
            break;
        };
        if let Some(v1::event::Event::Audit(r)) = e.event
            && r.kind == "status"
        {
            watched.push(format!("{} {}", r.subject, r.reason));
        }
    }
    assert_eq!(
        watched.len(),
        want.len(),
        "the watcher missed status events"
    );
    assert!(watched == want, "the watcher saw the statuses out of order");
    // The telemetry between the two halves was taken too.
    let power = ctl
        .registry
        .with_agents(|a| a[HOST].miners[&id(0)].obs.as_ref().and_then(|o| o.power_w));
    assert_eq!(power, Some(21.0));
}
