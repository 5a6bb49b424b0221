#![allow(clippy::unwrap_used)]

use super::*;

const DRAINED: &str = include_str!("testdata/squeue-22.05-drained.json");
const RUNNING: &str = include_str!("testdata/squeue-22.05-running.json");
const SINFO: &str = include_str!("testdata/sinfo-22.05-drained.json");

#[test]
fn squeue_22_05_while_the_node_is_drained() {
    let jobs = parse_squeue(DRAINED).unwrap();
    assert_eq!(jobs.len(), 4);
    let pending: Vec<_> = jobs.iter().filter(|j| j.pending()).collect();
    assert_eq!(pending.len(), 4);
    assert_eq!(jobs[1].state_reason, "ReqNodeNotAvail");
    // --gres=gpu:4, --gpus=2, --gpus-per-task=1 with 2 tasks, no GPU at all.
    let gpus: Vec<u64> = jobs.iter().map(|j| j.gpus_requested().unwrap()).collect();
    assert_eq!(gpus, [4, 2, 2, 0]);
    assert!(jobs.iter().all(|j| !j.on_node("pivot-node1").unwrap()));
}

#[test]
fn squeue_22_05_with_jobs_running_lists_finished_ones_too() {
    let jobs = parse_squeue(RUNNING).unwrap();
    let running: Vec<_> = jobs.iter().filter(|j| j.occupies_nodes()).collect();
    assert_eq!(running.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1, 2]);
    assert!(running.iter().all(|j| j.on_node("pivot-node1").unwrap()));
    let held: u64 = running.iter().map(|j| j.gpus_allocated().unwrap()).sum();
    assert_eq!(held, 6);
    let cancelled = jobs.iter().find(|j| j.job_id == 4).unwrap();
    assert!(!cancelled.pending() && !cancelled.occupies_nodes());
}

#[test]
fn sinfo_22_05_drained_node() {
    let nodes = parse_sinfo(SINFO).unwrap();
    let n = &nodes[0];
    assert_eq!(n.name, "pivot-node1");
    assert!(n.state.drained(), "{}", n.state);
    assert_eq!(n.gres, "gpu:8");
    assert_eq!(n.gpus_used().unwrap(), 0);
}

/// The shapes Slurm 23.02 and later print: state lists and wrapped numbers.
#[test]
fn later_shapes() {
    let squeue = r#"{"jobs":[{"job_id":7,"job_state":["PENDING","REQUEUED"],"partition":"ai,spot",
        "nodes":"","node_count":{"set":true,"infinite":false,"number":2},
        "tasks":{"set":true,"infinite":false,"number":16},"tres_per_node":"gres/gpu:8",
        "tres_per_job":null,"gres_detail":[]}],"errors":[],"warnings":[]}"#;
    let jobs = parse_squeue(squeue).unwrap();
    assert!(jobs[0].pending());
    assert_eq!(jobs[0].gpus_requested().unwrap(), 16);
    assert!(jobs[0].in_partitions(&["spot".to_owned()]));
    assert!(!jobs[0].in_partitions(&["cpu".to_owned()]));
    let sinfo = r#"{"nodes":[{"name":"gpu01","state":["MIXED","DRAIN"],"gres_used":"gpu:a100:3(IDX:0-2)"}],"errors":[]}"#;
    let nodes = parse_sinfo(sinfo).unwrap();
    assert!(nodes[0].state.draining());
    assert_eq!(nodes[0].gpus_used().unwrap(), 3);
}

#[test]
fn errors_name_the_command_and_the_job() {
    let e = parse_squeue("{\"jobs\": [").unwrap_err().to_string();
    assert!(e.contains("squeue --json"), "{e}");
    let e = parse_squeue(
        r#"{"jobs":[],"errors":[{"error":"Unable to contact slurm controller","error_number":1}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Unable to contact slurm controller"), "{e}");
    let bad = r#"{"jobs":[{"job_id":9,"job_state":"PENDING","tres_per_node":"gres:gpu:lots:x"}]}"#;
    let e = parse_squeue(bad)
        .unwrap()
        .remove(0)
        .gpus_requested()
        .unwrap_err()
        .to_string();
    assert!(e.contains("job 9") && e.contains("tres_per_node"), "{e}");
    let e = parse_sinfo(r#"{"sinfo":[],"errors":[]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `nodes` list"), "{e}");
}
