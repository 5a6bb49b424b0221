//! A watcher of the event stream that falls behind is told how many events it missed, in their
//! place, over a real gRPC stream: what it was sent and what it was told it missed add up to what
//! the controller wrote, and the controller did not wait for it.

use std::path::Path;
use std::sync::Arc;

use pivot_controller::Controller;
use pivot_controller::config::{Config, NoEnv};
use pivot_controller::store::{NewAudit, SqliteStore, Store};
use pivot_proto::v1;

/// More than the controller keeps for a watcher (16,384) and what the HTTP/2 windows hold between
/// it and the watcher (a few MiB, at 500 bytes a record), written while the watcher reads nothing.
const WRITTEN: usize = 40_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_is_told_how_many_events_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pivot.db");
    let toml = format!(
        "[site]\nid = \"lag\"\ncap_w = 1000000\n[store]\npath = \"{}\"\n[auth]\nmode = \"open\"\n",
        db.display()
    );
    let config = Config::parse(&toml, Path::new("lag.toml"), &NoEnv).unwrap();
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let ctl = Controller::new(config, Arc::clone(&store) as Arc<dyn Store>).unwrap();
    let mut watch = v1::fleet_service_client::FleetServiceClient::new(crate::serve(&ctl).await)
        .watch_events(v1::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    // Written in bursts, as agents' statuses are, while the watcher reads nothing.
    for burst in 0..WRITTEN / 1000 {
        let entries = (0..1000)
            .map(|i| NewAudit {
                kind: "intent",
                subject: format!("miner/m{:05}", burst * 1000 + i),
                actor: "rack-1".into(),
                reason: format!("confirmed {}", "x".repeat(500)),
                detail: serde_json::Value::Null,
            })
            .collect();
        assert_eq!(ctl.audit_all(entries).await.len(), 1000);
    }
    let last = format!("miner/m{:05}", WRITTEN - 1);

    let (mut sent, mut missed, mut told) = (0usize, 0u64, 0usize);
    let mut previous = None::<usize>;
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), watch.message())
            .await
            .expect("the stream went quiet before the last record")
            .unwrap()
            .expect("the stream ended");
        match e.event {
            Some(v1::event::Event::Audit(r)) => {
                let n: usize = r.subject["miner/m".len()..].parse().unwrap();
                // In order, and a gap only where the watcher was told of one.
                if let Some(p) = previous {
                    assert!(n > p, "{n} after {p}");
                }
                previous = Some(n);
                sent += 1;
                if r.subject == last {
                    break;
                }
            }
            Some(v1::event::Event::Missed(m)) => {
                assert!(m.count > 0);
                assert!(e.at.is_some());
                missed += m.count;
                told += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(
        told >= 1,
        "a watcher {WRITTEN} events behind was not told it missed any"
    );
    assert_eq!(
        sent as u64 + missed,
        WRITTEN as u64,
        "sent {sent}, missed {missed}"
    );
    // What it missed is in the audit log: the oldest records are the ones a lagging watcher loses.
    assert_eq!(previous, Some(WRITTEN - 1));
    let first = store.list_audit(10, 0, "miner/m00000", "intent").unwrap();
    assert_eq!(first.len(), 1);
}
