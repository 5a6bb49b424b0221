//! The SIMULATED workload manager through the real agents: the real `pivot-site` binary plays two
//! and a half hours of the bundled trace around its first night's AI-demand drop (Tue 19:30–22:00
//! in Texas: 64 GPUs wanted, then 24 from 20:00) at 480x with eight GPU hosts. The controller
//! releases the hosts through their agents' exec hook, then drains some when the demand falls.
//! Once every host is released and busy, the test drains one by hand, as an operator would for
//! maintenance (`pivotctl override set host/<node> --drain`): the host running the job that ends
//! last, so that job is certain to outlive the grace. The run's `workload.jsonl` must show every
//! job on a node its agent had released, that job requeued from its node after the grace (the
//! agent's second drain, `PIVOT_GRACE_OVER=1`), every drained node's jobs gone by the end, and
//! the fake GPUs' state files must carry the load of the jobs left on them.
//!
//! Which hosts the demand drop drains still hold a job is chance (which agent releases its host
//! first decides where the first jobs land): a drain by hand makes the requeue certain.
//!
//! A file of its own so that cargo runs it after `simulated_site.rs`, not beside it: both are
//! timed in wall seconds on a shared machine.

// A panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use common::{Site, pivotctl};

const GPU_HOSTS: usize = 8;

/// How long after the last event in the log the job drained by hand must still run, trace time:
/// the pin's way to the agent and the 10-minute grace at 480x fit in it many times.
const OUTLIVES_MIN: i64 = 40;

fn trace_time(e: &Value, key: &str) -> DateTime<Utc> {
    let s = e[key].as_str().unwrap_or_else(|| panic!("no {key} in {e}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|err| panic!("{key} {s}: {err}"))
        .with_timezone(&Utc)
}

/// From the queue's log so far: the running job that ends last, its node, and the trace time of
/// the log's last event.
fn job_ending_last(log: &Path) -> (u64, String, DateTime<Utc>, DateTime<Utc>) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut running: BTreeMap<u64, (String, DateTime<Utc>)> = BTreeMap::new();
    let mut now = None;
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        now = Some(trace_time(&e, "trace"));
        let job = e["job"].as_u64().unwrap_or_default();
        match e["event"].as_str().unwrap() {
            "started" => {
                let node = e["node"].as_str().unwrap().to_owned();
                running.insert(job, (node, trace_time(&e, "ends")));
            }
            "ended" | "requeued" => {
                running.remove(&job);
            }
            _ => {}
        }
    }
    let now = now.unwrap_or_else(|| panic!("nothing in {}", log.display()));
    let (job, (node, ends)) = running
        .into_iter()
        .max_by_key(|(job, (_, ends))| (*ends, *job))
        .unwrap_or_else(|| panic!("no job runs on a released host: {text}"));
    (job, node, ends, now)
}

#[test]
fn drained_nodes_lose_their_jobs_after_the_grace_and_released_ones_run_them() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("site");
    let hosts = GPU_HOSTS.to_string();
    let mut site = Site::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--web",
            "127.0.0.1:0",
            "--from",
            "2026-07-15T00:30:00Z",
            "--hours",
            "2.5",
            "--speed",
            "480",
            "--miners",
            "12",
            "--racks",
            "1",
            "--gpu-hosts",
            &hosts,
            "--no-hourly",
        ],
        &dir,
    );
    let deciding = site.wait_for("pivot-site: deciding", Duration::from_secs(120));
    let url = deciding
        .split("pivotctl --controller ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no controller address in `{deciding}`"))
        .to_owned();

    // Every host released; then the one running the job that ends last is drained by hand.
    site.wait_for_count("released by its agent", GPU_HOSTS, Duration::from_secs(60));
    let (pinned_job, pinned, ends, now) = job_ending_last(&dir.join("workload.jsonl"));
    assert!(
        ends >= now + chrono::Duration::minutes(OUTLIVES_MIN),
        "the job that ends last (job {pinned_job} on {pinned}) ends at {ends}, less than \
         {OUTLIVES_MIN} trace minutes after {now}: a drain could not outlast it"
    );
    pivotctl(
        &url,
        &[
            "override",
            "set",
            &format!("host/{pinned}"),
            "--drain",
            "--reason",
            "test: a busy host drained for maintenance",
        ],
    );
    println!("drained {pinned} by hand at trace {now}: job {pinned_job} runs until {ends}");

    let status = site.wait_exit(Duration::from_secs(180));
    let printed = site.output().join("\n");
    assert!(status.success(), "pivot-site failed: {status}");

    // Replay the queue's log: which node is open, which jobs run where.
    let log = std::fs::read_to_string(dir.join("workload.jsonl")).unwrap();
    let mut open: BTreeMap<String, bool> = BTreeMap::new();
    let mut on: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut closed = BTreeSet::new();
    let mut started = 0;
    let mut requeued = BTreeSet::new();
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
                on.entry(node.clone()).or_default().remove(&job);
                requeued.insert((job, node));
            }
            _ => {}
        }
    }
    assert!(started > 0, "no job ran: {log}");
    println!("{started} starts, requeued (job, node): {requeued:?}, drained: {closed:?}");
    assert!(
        closed.iter().any(|n| *n != pinned),
        "the demand drop drained no node beside {pinned}: {log}"
    );
    // The job on the host drained by hand outlived the grace: the agent's second drain, with
    // PIVOT_GRACE_OVER=1, sent it back to the queue. (A host the demand drop drained may hold
    // one too, or not: chance.)
    assert_eq!(
        open.get(&pinned),
        Some(&false),
        "{pinned}, pinned drained, is open at the end: {log}"
    );
    assert!(
        requeued.contains(&(pinned_job, pinned.clone())),
        "job {pinned_job} was not requeued from {pinned} after its grace: {log}"
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
