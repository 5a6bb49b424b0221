//! The agent daemon hands its host over through each workload manager it speaks, driven by a
//! scripted fake controller: Kubernetes against the scripted fake API server (the exact
//! cordon/label/taint patches and evictions, a PodDisruptionBudget's refusal), and an
//! operator's exec hook that records every call and fails on demand (`pivot_e2e::exec_hook`). Each intent for device
//! `host` goes pending → applied → confirmed, or fails as the manager said (retrying or not).

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use pivot_e2e::exec_hook::ExecHook;
use pivot_e2e::fake_controller::FakeController;
use pivot_e2e::fake_kube::{Expect, FakeKube};
use pivot_e2e::{Running, start_and_wait};
use pivot_proto::model::{Intent, Target, WorkloadState};
use pivot_proto::v1;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const RELEASED: Target = Target::Workload {
    state: WorkloadState::Released,
};
const DRAINED: Target = Target::Workload {
    state: WorkloadState::Drained,
};
const ALL_THE_WAY: [v1::IntentPhase; 3] = [
    v1::IntentPhase::Pending,
    v1::IntentPhase::Applied,
    v1::IntentPhase::Confirmed,
];

fn intent(generation: u64, target: Target, lease_s: i64, plan: &str, reason: &str) -> v1::Intent {
    Intent {
        device_id: "host".into(),
        generation,
        lease_expires_at: Utc::now() + chrono::Duration::seconds(lease_s),
        target,
        reason: reason.into(),
        phase: 0,
        plan_id: plan.into(),
    }
    .to_proto()
}

/// Starts the agent with `workload` (the `[workload]` tables) and no miners or GPUs.
fn start_agent(dir: &Path, controller: &str, host_id: &str, workload: &str) -> Running {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "host_id = \"{host_id}\"\nstate_dir = \"{}\"\n\
             [controller]\nurl = \"{controller}\"\nreconnect_max_s = 1\n\
             [poll]\ngpu_interval_s = 0.3\n\
             {workload}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    start_and_wait(
        "pivot-agent",
        &["run", "--config", path.to_str().unwrap()],
        "pivot-agent metrics on ",
        WAIT,
    )
}

/// The host's workload reading in a telemetry snapshot, when it shows `node_state`.
fn node_reading(t: &v1::TelemetrySnapshot, node_state: &str) -> Option<v1::HostReading> {
    let h = t.host.as_ref()?;
    (h.workload.as_ref()?.node_state == node_state).then(|| h.clone())
}

fn k8s_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-01", "resourceVersion": "1"},
        "spec": {"unschedulable": false},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn training_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "train-0", "namespace": "ai"},
        "spec": {"nodeName": "gpu-01", "containers": [{"name": "main",
            "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
        "status": {"phase": "Running"},
    })
}

fn pivot_taint() -> Value {
    json!({"key": "pivot.dev/power", "value": "mining", "effect": "NoSchedule"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_daemon_hands_a_kubernetes_node_over_through_its_pdb() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(
        k8s_node(),
        vec![training_pod()],
        &[
            "/api/v1/nodes/gpu-01",
            "/api/v1/pods?&fieldSelector=spec.nodeName%3Dgpu-01",
        ],
    )
    .await;
    let mut ctl = FakeController::start(Duration::from_millis(300)).await;
    let workload = format!(
        "[workload]\nmanager = \"kubernetes\"\nnode_name = \"gpu-01\"\ngrace_s = 0.5\nconfirm_s = 5\npoll_s = 0.05\n\
         [workload.kubernetes]\nkubeconfig = \"{}\"\nrequest_timeout_s = 5\n",
        fake.kubeconfig(dir.path()).display()
    );
    let _agent = start_agent(dir.path(), &ctl.url(), "k8s-host-1", &workload);

    let hello = ctl.hello(WAIT).await;
    let host = hello.host.unwrap();
    assert_eq!(
        host.workload_managers,
        [v1::WorkloadManagerKind::Kubernetes as i32]
    );
    assert_eq!(host.workload_node_name, "gpu-01");
    let seen = ctl
        .telemetry(WAIT, "the node in telemetry", |t| node_reading(t, "Ready"))
        .await;
    let w = seen.workload.unwrap();
    assert!(w.schedulable && w.read_error.is_empty(), "{w:?}");
    assert_eq!((w.jobs_running, w.gpus_allocated), (1, 4));
    assert_eq!(seen.workload_state, v1::WorkloadState::Released as i32);

    // Opening a node needs a valid lease: refused, nothing written.
    ctl.send_intents(vec![intent(1, RELEASED, -5, "plan-k0", "late")])
        .await;
    let r = ctl.status(WAIT, "host", 1, v1::IntentPhase::Rejected).await;
    assert!(r.detail.contains("lease expired"), "{}", r.detail);

    // Drain: one conditional patch (cordon, label, pivot's taint), then after the grace an
    // eviction the PodDisruptionBudget refuses (transient), retried after the pacing.
    fake.expect(Expect::NodePatch {
        body: json!({
            "metadata": {"labels": {"pivot.dev/power": "mining"}, "resourceVersion": "1"},
            "spec": {"unschedulable": true, "taints": [pivot_taint()]},
        }),
        status: 200,
    });
    fake.expect(Expect::Evict {
        namespace: "ai".into(),
        pod: "train-0".into(),
        status: 429,
    });
    fake.expect(Expect::Evict {
        namespace: "ai".into(),
        pod: "train-0".into(),
        status: 201,
    });
    ctl.send_intents(vec![intent(2, DRAINED, 300, "plan-k1", "mining pays")])
        .await;
    ctl.status(WAIT, "host", 2, v1::IntentPhase::Pending).await;
    let failed = ctl.status(WAIT, "host", 2, v1::IntentPhase::Failed).await;
    assert!(failed.retrying, "{failed:?}");
    assert!(
        failed.detail.contains("ai/train-0") && failed.detail.contains("disruption budget"),
        "{}",
        failed.detail
    );
    assert_eq!(failed.plan_id, "plan-k1");
    ctl.statuses(
        WAIT,
        "host",
        2,
        &[v1::IntentPhase::Applied, v1::IntentPhase::Confirmed],
    )
    .await;
    let n = fake.node();
    assert_eq!(n["spec"]["unschedulable"], true);
    assert_eq!(n["metadata"]["labels"]["pivot.dev/power"], "mining");
    assert!(fake.pods().is_empty());
    // Telemetry shows it drained (snapshots from inside the grace show it closed, not drained).
    let seen = ctl
        .telemetry(WAIT, "the drained node", |t| {
            node_reading(t, "Ready,SchedulingDisabled")
                .filter(|h| h.workload_state == v1::WorkloadState::Drained as i32)
        })
        .await;
    let w = seen.workload.unwrap();
    assert_eq!(
        (w.schedulable, w.jobs_running, w.gpus_allocated),
        (false, 0, 0)
    );

    // Release: uncordon, label `ai`, pivot's taint gone.
    fake.expect(Expect::NodePatch {
        body: json!({
            "metadata": {"labels": {"pivot.dev/power": "ai"}, "resourceVersion": "2"},
            "spec": {"unschedulable": false, "taints": []},
        }),
        status: 200,
    });
    ctl.send_intents(vec![intent(3, RELEASED, 300, "plan-k2", "AI pays")])
        .await;
    ctl.statuses(WAIT, "host", 3, &ALL_THE_WAY).await;
    assert_eq!(fake.node()["spec"]["unschedulable"], false);
    assert_eq!(fake.node()["metadata"]["labels"]["pivot.dev/power"], "ai");
    ctl.quiet(Duration::from_secs(1)).await;
    let seen = fake.finish();
    assert!(seen.iter().all(|r| !r.starts_with("DELETE")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_daemon_hands_its_host_over_through_an_exec_hook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = ExecHook::new(true, 1);
    let mut ctl = FakeController::start(Duration::from_millis(300)).await;
    let workload = format!(
        "[workload]\nmanager = \"exec\"\nnode_name = \"gpu-07\"\ngrace_s = 0.5\nconfirm_s = 5\npoll_s = 0.05\n\
         [workload.exec]\nhook = \"{}\"\ntimeout_s = 5\n",
        hook.path().display()
    );
    let _agent = start_agent(dir.path(), &ctl.url(), "rack-3-host-7", &workload);
    let hello = ctl.hello(WAIT).await;
    let host = hello.host.unwrap();
    assert_eq!(
        host.workload_managers,
        [v1::WorkloadManagerKind::Exec as i32]
    );
    assert_eq!(host.workload_node_name, "gpu-07");
    let seen = ctl
        .telemetry(WAIT, "the node in telemetry", |t| node_reading(t, "open"))
        .await;
    assert_eq!(seen.workload.unwrap().jobs_running, 1);

    // Drain, with the plan and reason in PIVOT_REASON; after the grace the hook is called
    // again to clear the node.
    ctl.send_intents(vec![intent(
        1,
        DRAINED,
        300,
        "plan-e1",
        "hashprice above AI value",
    )])
    .await;
    ctl.statuses(WAIT, "host", 1, &ALL_THE_WAY).await;
    let calls = hook.take_calls();
    assert_eq!(
        calls,
        [
            "drain host=rack-3-host-7 node=gpu-07 grace_over=0 reason=plan plan-e1: hashprice above AI value",
            "drain host=rack-3-host-7 node=gpu-07 grace_over=1 reason=plan plan-e1: hashprice above AI value",
        ]
    );

    // Release.
    ctl.send_intents(vec![intent(2, RELEASED, 300, "plan-e2", "AI pays")])
        .await;
    ctl.statuses(WAIT, "host", 2, &ALL_THE_WAY).await;
    assert_eq!(
        hook.take_calls(),
        ["release host=rack-3-host-7 node=gpu-07 grace_over=0 reason=plan plan-e2: AI pays"]
    );

    // The hook says "never" (exit 78): failed for good, not tried again.
    hook.fail_with(Some(78));
    ctl.send_intents(vec![intent(3, DRAINED, 300, "plan-e3", "x")])
        .await;
    ctl.status(WAIT, "host", 3, v1::IntentPhase::Pending).await;
    let failed = ctl.status(WAIT, "host", 3, v1::IntentPhase::Failed).await;
    assert!(!failed.retrying, "{failed:?}");
    assert!(failed.detail.contains("code 78"), "{}", failed.detail);
    ctl.quiet(Duration::from_secs(6)).await;
    assert_eq!(hook.take_calls().len(), 1);

    // A passing failure (exit 1) is retried after the pacing, and then succeeds.
    hook.fail_with(Some(1));
    ctl.send_intents(vec![intent(4, DRAINED, 300, "plan-e4", "y")])
        .await;
    ctl.status(WAIT, "host", 4, v1::IntentPhase::Pending).await;
    let failed = ctl.status(WAIT, "host", 4, v1::IntentPhase::Failed).await;
    assert!(failed.retrying, "{failed:?}");
    hook.fail_with(None);
    ctl.statuses(
        WAIT,
        "host",
        4,
        &[v1::IntentPhase::Applied, v1::IntentPhase::Confirmed],
    )
    .await;
    assert!(!hook.node_open());
}
