//! The SIMULATED workload manager through the real agents: the real `pivot-site` binary plays two
//! and a half hours of the bundled trace around its first night's AI-demand drop (Tue 19:30–22:00
//! in Texas: 64 GPUs wanted, then 24 from 20:00) at 480x with eight GPU hosts. The controller releases the
//! hosts through their agents' exec hook, then drains some when the demand falls; the run's
//! `workload.jsonl` must show every job on a node its agent had released, every drained node's
//! jobs gone (ended or requeued after the grace, `PIVOT_GRACE_OVER=1`) by the end, and the fake
//! GPUs' state files must carry the load of the jobs left on them.
//!
//! A file of its own so that cargo runs it after `simulated_site.rs`, not beside it: both are
//! timed in wall seconds on a shared machine.

// A panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const GPU_HOSTS: usize = 8;

#[test]
fn drained_nodes_lose_their_jobs_after_the_grace_and_released_ones_run_them() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("site");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pivot-site"))
        .args(["--listen", "127.0.0.1:0", "--web", "127.0.0.1:0"])
        .args(["--from", "2026-07-15T00:30:00Z", "--hours", "2.5"])
        .args(["--speed", "480", "--miners", "12", "--racks", "1"])
        .args(["--gpu-hosts", &GPU_HOSTS.to_string(), "--no-hourly"])
        .arg("--out-dir")
        .arg(&dir)
        .env_remove("PIVOT_FAKE_NVML_LIB")
        .env_remove("PIVOT_FAKE_NVML_STATE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting pivot-site: {e}"));
    // stdout closes when the site exits.
    let mut stdout = child.stdout.take().unwrap();
    let (done, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        let _ = done.send(text);
    });
    let Ok(printed) = printed.recv_timeout(Duration::from_secs(180)) else {
        let _ = child.kill();
        panic!("pivot-site did not finish within 180 s");
    };
    let status = child.wait().unwrap();
    for line in printed.lines() {
        println!("pivot-site| {line}");
    }
    assert!(status.success(), "pivot-site failed: {status}");

    // Replay the queue's log: which node is open, which jobs run where.
    let log = std::fs::read_to_string(dir.join("workload.jsonl")).unwrap();
    let mut open: BTreeMap<String, bool> = BTreeMap::new();
    let mut on: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut closed = BTreeSet::new();
    let (mut started, mut requeued) = (0, 0);
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        let node = e["node"].as_str().unwrap_or_default().to_owned();
        let job = e["job"].as_u64().unwrap_or_default();
        match e["event"].as_str().unwrap() {
            "opened" => {
                open.insert(node, true);
            }
            "closed" => {
                closed.insert(node.clone());
                open.insert(node, false);
            }
            "started" => {
                assert_eq!(
                    open.get(&node),
                    Some(&true),
                    "started on a node not released: {e}"
                );
                on.entry(node)
                    .or_default()
                    .insert(job, e["gpus"].as_u64().unwrap());
                started += 1;
            }
            "ended" => {
                on.entry(node).or_default().remove(&job);
            }
            "requeued" => {
                assert_eq!(
                    open.get(&node),
                    Some(&false),
                    "requeued from an open node: {e}"
                );
                on.entry(node).or_default().remove(&job);
                requeued += 1;
            }
            _ => {}
        }
    }
    assert!(started > 0, "no job ran: {log}");
    assert!(
        !closed.is_empty(),
        "the demand drop drained no node; the checks below check nothing: {log}"
    );
    println!("{started} starts, {requeued} requeues, drained: {closed:?}");
    // In this window a drained host still runs a job when its grace ends (an 8-GPU job the
    // demand drop left running there): the agent's second drain, with PIVOT_GRACE_OVER=1,
    // requeues it. The window starts half an hour before the drop so that the jobs placed at
    // the start have most of their run time left when the hosts are drained (starting at the
    // hour left one ending minutes before its host's drain, and the requeue to chance).
    assert!(
        requeued > 0,
        "no job was requeued from a drained node after its grace: {log}"
    );

    // A node still closed at the end was drained to the end: no job left on it.
    for (node, is_open) in &open {
        let left: u64 = on.get(node).map_or(0, |j| j.values().sum());
        if !is_open {
            assert_eq!(
                left, 0,
                "{node} was drained but still runs {left} GPUs: {log}"
            );
        }
        // The fake GPUs draw what their jobs ask: as many at full demand as the jobs hold.
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("hosts/{node}/nvml/fake-nvml.json")))
                .unwrap(),
        )
        .unwrap();
        let busy = (0..8)
            .filter(|i| state["gpus"][i.to_string()]["power_demand_w"].as_f64() == Some(700.0))
            .count() as u64;
        assert_eq!(
            busy, left,
            "{node}: {busy} GPUs busy in its fake NVML state, {left} held by jobs: {state}"
        );
    }
    // What the narrator said of it.
    for node in &closed {
        assert!(
            printed.lines().any(|l| l.contains(&format!(
                "SIMULATED workload manager: {node} drained by its agent"
            ))),
            "no line for {node}'s drain"
        );
    }
}
