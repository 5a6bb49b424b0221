//! A move an agent gives up on, over a real session: the controller holds the device for the
//! failure memory whichever plan issued it, longer with each failure in a row (up to the
//! ceiling), forgets the run on a confirmed move, after a restart holds a device whose stored
//! intent failed for good from when it failed (not tried again at once), and never from a time
//! ahead of its own clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_controller::Controller;
use pivot_controller::config::{Config, NoEnv};
use pivot_controller::intents::NewIntent;
use pivot_controller::store::{SqliteStore, Store};
use pivot_proto::model::{IntentPhase, MinerTarget, Target};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;

const HOST: &str = "rack-1";
const MINER: &str = "miner/m0";
const MEMORY_S: i64 = 600;
const MAX_S: i64 = 1500;

fn controller(db: &Path) -> Arc<Controller> {
    let toml = format!(
        "[site]\nid = \"failures\"\ncap_w = 1000000\n[store]\npath = \"{}\"\n\
         [auth]\nmode = \"open\"\n\
         [engine]\nfailure_memory_s = {MEMORY_S}\nfailure_memory_max_s = {MAX_S}\n",
        db.display()
    );
    let config = Config::parse(&toml, Path::new("failures.toml"), &NoEnv).unwrap();
    let store = Arc::new(SqliteStore::open(db).unwrap());
    Controller::new(config, store as Arc<dyn Store>).unwrap()
}

fn hello() -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(Up::Hello(v1::Hello {
            host_id: HOST.into(),
            agent_version: "0.1.0".into(),
            miners: vec![v1::MinerInventory {
                device_id: MINER.into(),
                addr: "10.1.0.1:4028".into(),
                dialect: v1::MinerDialect::Antminer as i32,
                model: "Antminer S19j Pro".into(),
                nameplate_power_w: Some(3050),
                nameplate_hashrate_ths: Some(104.0),
                capabilities: Some(v1::MinerCapabilities {
                    can_sleep: true,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// Issues a wake of the miner (the next generation) and returns its generation.
fn issue_wake(ctl: &Controller, plan: &str) -> u64 {
    let now = Utc::now();
    let issued = ctl
        .ledger
        .issue(
            vec![NewIntent {
                host_id: HOST.into(),
                device_id: MINER.into(),
                target: Target::Miner(MinerTarget::Run {
                    power_target_w: None,
                }),
                reason: "test".into(),
                plan_id: plan.into(),
                phase: 0,
                before_w: Some(20.0),
                setting_before_w: None,
            }],
            now + chrono::Duration::minutes(5),
            now,
        )
        .unwrap();
    issued[0].intent.generation
}

fn status(
    generation: u64,
    phase: IntentPhase,
    retrying: bool,
    detail: &str,
    at: DateTime<Utc>,
) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(Up::IntentStatus(v1::IntentStatus {
            device_id: MINER.into(),
            generation,
            phase: phase.to_proto() as i32,
            detail: detail.into(),
            observed_power_w: Some(20.0),
            at: Some(pivot_proto::model::timestamp_to_proto(at)),
            plan_id: "not-executing".into(),
            plan_phase: 0,
            retrying,
        })),
    }
}

/// One agent session that says hello, sends `statuses` and ends; returns once the controller
/// has closed it (every status taken).
async fn session(ctl: &Arc<Controller>, statuses: Vec<v1::AgentMessage>) {
    let channel = crate::serve(ctl).await;
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    let mut msgs = vec![hello()];
    msgs.extend(statuses);
    let mut down = client
        .session(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = down.message().await {}
    })
    .await
    .expect("the session never ended");
}

/// The one held device: its reason, and how long it is held from `at`.
fn held_for(ctl: &Controller, at: DateTime<Utc>) -> Option<(String, i64)> {
    let held = ctl.recent_failures();
    assert!(held.len() <= 1, "{held:?}");
    held.into_iter().next().map(|(d, reason, until)| {
        assert_eq!(d, MINER);
        (reason, (until - at).num_seconds())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_refused_for_good_holds_the_device_longer_each_time_until_one_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pivot.db");
    let ctl = controller(&db);
    let refused = "stock firmware: the mode to wake into is not known";

    // A failure the agent retries holds nothing: the agent is still at it.
    let g1 = issue_wake(&ctl, "p1");
    let t1 = Utc::now();
    session(
        &ctl,
        vec![status(g1, IntentPhase::Failed, true, "timeout", t1)],
    )
    .await;
    assert_eq!(held_for(&ctl, t1), None);
    // Failed for good, by an intent of a plan that is not executing: held for the memory.
    session(
        &ctl,
        vec![status(g1, IntentPhase::Failed, false, refused, t1)],
    )
    .await;
    let (reason, secs) = held_for(&ctl, t1).expect("the failed wake holds the miner");
    assert!(
        reason.starts_with("failed: ") && reason.contains(refused),
        "{reason}"
    );
    assert_eq!(secs, MEMORY_S);
    // The same generation reported again is the same failure, not a second one.
    session(
        &ctl,
        vec![status(g1, IntentPhase::Failed, false, refused, t1)],
    )
    .await;
    assert_eq!(held_for(&ctl, t1).map(|h| h.1), Some(MEMORY_S));

    // A new generation refused again: twice as long; a third: up to the ceiling.
    let g2 = issue_wake(&ctl, "p2");
    let t2 = Utc::now();
    session(
        &ctl,
        vec![status(g2, IntentPhase::Failed, false, refused, t2)],
    )
    .await;
    assert_eq!(held_for(&ctl, t2).map(|h| h.1), Some(2 * MEMORY_S));
    let g3 = issue_wake(&ctl, "p3");
    let t3 = Utc::now();
    session(
        &ctl,
        vec![status(
            g3,
            IntentPhase::Rejected,
            false,
            "no such device",
            t3,
        )],
    )
    .await;
    let (reason, secs) = held_for(&ctl, t3).unwrap();
    assert!(reason.starts_with("rejected: no such device"), "{reason}");
    assert_eq!(secs, MAX_S);

    // A restart holds it from when the stored failure happened (the run of failures is not
    // stored: it starts again at one).
    drop(ctl);
    let ctl = controller(&db);
    let (reason, secs) = held_for(&ctl, t3).expect("held after a restart");
    assert!(reason.starts_with("rejected: "), "{reason}");
    assert_eq!(secs, MEMORY_S);

    // A confirmed move ends the run: nothing held, and the next failure counts from one.
    let g4 = issue_wake(&ctl, "p4");
    let t4 = Utc::now();
    session(
        &ctl,
        vec![status(g4, IntentPhase::Confirmed, false, "mining", t4)],
    )
    .await;
    assert_eq!(held_for(&ctl, t4), None);
    let g5 = issue_wake(&ctl, "p5");
    let t5 = Utc::now();
    session(
        &ctl,
        vec![status(g5, IntentPhase::Failed, false, refused, t5)],
    )
    .await;
    assert_eq!(held_for(&ctl, t5).map(|h| h.1), Some(MEMORY_S));

    // An agent whose clock runs an hour ahead cannot hold the device an hour longer: the hold
    // counts from the controller's now at the latest (second in a row: twice the memory).
    let g6 = issue_wake(&ctl, "p6");
    let before = Utc::now();
    let ahead = before + chrono::Duration::hours(1);
    session(
        &ctl,
        vec![status(g6, IntentPhase::Failed, false, refused, ahead)],
    )
    .await;
    let (_, secs) = held_for(&ctl, before).unwrap();
    assert!(
        (2 * MEMORY_S..2 * MEMORY_S + 30).contains(&secs),
        "held {secs} s from before the status"
    );
}
