//! The agent's Slurm hand-over and the controller's Slurm demand reader against a real Slurm
//! (Debian's slurm-wlm 22.05, one node on 127.0.0.1 with eight fake GPUs). One test function
//! with steps: only one Slurm may run at a time, and each step starts from the last one's state.
//!
//! Prints one `lever …` line per timed lever (run with `--nocapture`); docs/BENCHMARKS.md
//! records them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pivot_agent::workload::config::{AfterGrace, WorkloadConfig};
use pivot_agent::workload::slurm::Slurm;
use pivot_agent::workload::{Retry, Why, WorkloadActuator, WorkloadError, WorkloadManager};
use pivot_controller::demand::{DemandConfig, DemandReader};
use pivot_e2e::slurm::{NODE, PARTITION, SlurmCluster};
use pivot_proto::model::WorkloadState;

fn workload_config(cluster: &SlurmCluster, grace_s: f64, after: &str) -> WorkloadConfig {
    let text = format!(
        "manager = \"slurm\"\nnode_name = \"{NODE}\"\ngrace_s = {grace_s}\nconfirm_s = 30\npoll_s = 0.1\n\
         [slurm]\nafter_grace = \"{after}\"\nslurm_conf = \"{}\"\n",
        cluster.conf().display()
    );
    let c: WorkloadConfig = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    c
}

fn actuator(config: &WorkloadConfig, node: &str) -> Result<WorkloadActuator, WorkloadError> {
    let slurm = Slurm::new(node, config.slurm.clone().unwrap())?;
    Ok(WorkloadActuator::new(Arc::new(slurm), config))
}

fn why(reason: &str) -> Why {
    Why {
        reason: reason.to_owned(),
        power_w: Some(0),
    }
}

async fn demand(cluster: &SlurmCluster) -> (u64, u64) {
    let text = format!(
        "source = \"slurm\"\npartitions = [\"{PARTITION}\"]\n[slurm]\nslurm_conf = \"{}\"\n",
        cluster.conf().display()
    );
    let config: DemandConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    let d = DemandReader::connect(&config)
        .await
        .unwrap()
        .read()
        .await
        .unwrap();
    (d.gpus_pending, d.gpus_running)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Submits a job with `args`, releases the node and waits until the job runs.
async fn release_and_run(cluster: &SlurmCluster, act: &WorkloadActuator, args: &[&str]) -> u64 {
    let job = cluster.submit(args);
    act.apply(WorkloadState::Released, &why("plan: AI pays"))
        .await
        .unwrap();
    cluster
        .wait_until("the job to run", Duration::from_secs(30), || {
            cluster.job(job).0 == "RUNNING"
        })
        .await;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_node_is_drained_released_and_its_jobs_requeued_or_cancelled() {
    let cluster = SlurmCluster::start().await;
    let config = workload_config(&cluster, 2.0, "requeue");
    let act = actuator(&config, NODE).unwrap();

    // 1. Drain the idle node: DRAINED read back, with pivot's reason.
    let applied = act
        .apply(
            WorkloadState::Drained,
            &why("plan p1: hashprice above AI value"),
        )
        .await
        .unwrap();
    assert!(applied.status.drained(), "{:?}", applied.status);
    assert_eq!(applied.status.node_state, "IDLE+DRAIN");
    assert_eq!(cluster.node_state(), "drained");
    assert_eq!(
        cluster.node_reason(),
        "pivot: plan p1: hashprice above AI value"
    );
    let drain_lever = applied.levers[0].took;
    println!(
        "lever drain(idle node) -> DRAINED read back: {:.0} ms (scontrol update {:.0} ms, {} read-backs {:.0} ms)",
        ms(applied.elapsed),
        ms(drain_lever),
        applied.reads,
        ms(applied.read_time)
    );
    let reading = act.read().await;
    assert_eq!(
        (
            reading.node.as_str(),
            reading.node_state.as_str(),
            reading.schedulable
        ),
        (NODE, "IDLE+DRAIN", false)
    );
    assert!(reading.read_error.is_empty(), "{}", reading.read_error);
    // A second drain changes nothing and pulls no lever.
    let again = act
        .apply(WorkloadState::Drained, &why("again"))
        .await
        .unwrap();
    assert!(again.levers.is_empty(), "{:?}", again.levers);

    // 2. A GPU job submitted while drained stays pending, and the controller sees the demand.
    let job = cluster.submit(&["--gres=gpu:4"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (state, reason) = cluster.job(job);
    assert_eq!(state, "PENDING", "{reason}");
    assert!(
        reason.contains("ReqNodeNotAvail") || reason.contains("DRAINED"),
        "{reason}"
    );
    assert_eq!(demand(&cluster).await, (4, 0));

    // 3. Release: the node is schedulable, then the job runs and the demand moves to running.
    let started = Instant::now();
    let applied = act
        .apply(
            WorkloadState::Released,
            &why("plan p2: AI value above hashprice"),
        )
        .await
        .unwrap();
    assert!(applied.status.schedulable, "{:?}", applied.status);
    let released = started.elapsed();
    cluster
        .wait_until("the GPU job to run", Duration::from_secs(30), || {
            cluster.job(job).0 == "RUNNING"
        })
        .await;
    let running = started.elapsed();
    println!(
        "lever resume -> schedulable read back: {:.0} ms (scontrol update {:.0} ms); -> job RUNNING: {:.0} ms",
        ms(released),
        ms(applied.levers[0].took),
        ms(running)
    );
    assert_eq!(demand(&cluster).await, (0, 4));
    let reading = act.read().await;
    assert_eq!((reading.jobs_running, reading.gpus_allocated), (1, 4));
    assert!(reading.schedulable);

    // 4. Drain with the job running: it keeps running through the grace, then is requeued, and
    //    only then is the node DRAINED.
    let started = Instant::now();
    let apply = {
        let act = Arc::new(act);
        let a = Arc::clone(&act);
        (
            act,
            tokio::spawn(async move {
                a.apply(WorkloadState::Drained, &why("plan p3: back to mining"))
                    .await
            }),
        )
    };
    let (act, handle) = apply;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cluster.job(job).0,
        "RUNNING",
        "requeued before the grace was over"
    );
    assert_eq!(cluster.node_state(), "draining");
    let applied = handle.await.unwrap().unwrap();
    let total = started.elapsed();
    assert!(applied.status.drained(), "{:?}", applied.status);
    assert!(
        total >= Duration::from_secs(2),
        "grace not respected: {total:?}"
    );
    let (state, reason) = cluster.job(job);
    assert_eq!(state, "PENDING", "{reason}");
    let removal = applied
        .levers
        .iter()
        .find(|l| l.lever.as_str() == "remove_jobs")
        .unwrap();
    println!(
        "lever drain(running job, grace 2 s) -> DRAINED: {:.0} ms; requeue lever (squeue + scontrol requeue) {:.0} ms; requeue -> job out of RUNNING and node DRAINED read back: {:.0} ms",
        ms(total),
        ms(removal.took),
        ms(applied.elapsed.saturating_sub(removal.at))
    );
    assert_eq!(demand(&cluster).await, (4, 0));
    cluster.cancel_all();

    // 5. Cancel mode: after the grace the job is cancelled, not requeued.
    let cancel_config = workload_config(&cluster, 0.5, "cancel");
    assert_eq!(
        cancel_config.slurm.as_ref().unwrap().after_grace,
        AfterGrace::Cancel
    );
    let cancel_act = actuator(&cancel_config, NODE).unwrap();
    let job = release_and_run(&cluster, &cancel_act, &["--gres=gpu:2"]).await;
    let applied = cancel_act
        .apply(WorkloadState::Drained, &why("plan p5"))
        .await
        .unwrap();
    assert!(applied.status.drained());
    cluster
        .wait_until("the job to be cancelled", Duration::from_secs(10), || {
            cluster.job(job).0 == "CANCELLED"
        })
        .await;

    // 6. A job that cannot be requeued is a permanent error that names it; the node stays
    //    closed (draining), never reported drained.
    let job = release_and_run(&cluster, &act, &["--gres=gpu:1", "--no-requeue"]).await;
    let e = act
        .apply(WorkloadState::Drained, &why("plan p7"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, WorkloadError::NotRequeueable { job_id, .. } if job_id == job),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Permanent);
    assert!(e.to_string().contains("cancel"), "{e}");
    assert_eq!(cluster.node_state(), "draining");
    cluster.cancel_all();
    cluster
        .wait_until("the node to drain", Duration::from_secs(10), || {
            cluster.node_state() == "drained"
        })
        .await;

    // 7. Someone else's drain is not undone.
    let admin = cluster
        .command("scontrol")
        .args([
            "update",
            &format!("NodeName={NODE}"),
            "State=DRAIN",
            "Reason=disk swap",
        ])
        .status()
        .unwrap();
    assert!(admin.success());
    let e = act
        .apply(WorkloadState::Released, &why("plan p8"))
        .await
        .unwrap_err();
    assert!(matches!(e, WorkloadError::ClosedByOther { .. }), "{e}");
    assert!(e.to_string().contains("disk swap"), "{e}");
    assert_eq!(cluster.node_reason(), "disk swap");

    // 8. Bad node names: refused before any command, or named in the error; nothing changes.
    for bad in ["pivot-gpu[1-2]", "ALL", "gpu1,gpu2"] {
        let e = actuator(&config, bad).unwrap_err();
        assert!(matches!(e, WorkloadError::BadNodeName { .. }), "{e}");
    }
    let before = (cluster.node_state(), cluster.node_reason());
    let unknown = actuator(&config, "pivot-gpu9").unwrap();
    let e = unknown
        .apply(WorkloadState::Drained, &why("plan p9"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, WorkloadError::UnknownNode { .. }) && e.to_string().contains("pivot-gpu9"),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Permanent);
    let slurm = Slurm::new("pivot-gpu9", config.slurm.clone().unwrap()).unwrap();
    let e = slurm.drain(&why("x")).await.unwrap_err();
    assert!(
        matches!(e, WorkloadError::UnknownNode { .. }) && e.to_string().contains("pivot-gpu9"),
        "{e}"
    );
    assert_eq!((cluster.node_state(), cluster.node_reason()), before);
    let reading = unknown.read().await;
    assert!(
        reading.read_error.contains("pivot-gpu9"),
        "{}",
        reading.read_error
    );
    assert!(!reading.schedulable);
}
