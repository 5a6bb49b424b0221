//! The agent's Kubernetes hand-over and the controller's Kubernetes demand reader against a
//! scripted fake API server that asserts the exact writes (cordon/label/taint patch, evictions,
//! a PodDisruptionBudget's 429) and fails on any request it did not expect.

use std::sync::Arc;

use pivot_agent::workload::config::WorkloadConfig;
use pivot_agent::workload::kubernetes::Kubernetes;
use pivot_agent::workload::{Retry, Why, WorkloadActuator, WorkloadError};
use pivot_controller::demand::config::KubeDemandConfig;
use pivot_controller::demand::kubernetes::KubeDemand;
use pivot_e2e::fake_kube::{Expect, FakeKube};
use pivot_proto::model::WorkloadState;
use serde_json::{Value, json};

const NODE_READ: &str = "/api/v1/nodes/gpu-01";
const PODS_READ: &str = "/api/v1/pods?&fieldSelector=spec.nodeName%3Dgpu-01";
const DEMAND_READ: &str =
    "/api/v1/pods?&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed";

fn node(unschedulable: bool, taints: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-01", "resourceVersion": "1", "labels": {"kubernetes.io/hostname": "gpu-01"}},
        "spec": {"unschedulable": unschedulable, "taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn gpu_taint() -> Value {
    json!({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
}

fn pod(ns: &str, name: &str, node: Option<&str>, phase: &str, gpus: u32, daemon: bool) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]},
        "status": {"phase": phase},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    if daemon {
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "dcgm", "uid": "u1"}]);
    }
    p
}

fn pods() -> Vec<Value> {
    vec![
        pod("ai", "train-0", Some("gpu-01"), "Running", 2, false),
        pod("kube-system", "dcgm-x", Some("gpu-01"), "Running", 1, true),
        pod("monitoring", "probe", Some("gpu-01"), "Running", 0, false),
        pod("ai", "queued-0", None, "Pending", 4, false),
        pod("ai", "done-0", Some("gpu-01"), "Succeeded", 8, false),
    ]
}

async fn actuator(
    fake: &FakeKube,
    dir: &std::path::Path,
    node: &str,
) -> Result<WorkloadActuator, WorkloadError> {
    let text = format!(
        "manager = \"kubernetes\"\nnode_name = \"{node}\"\ngrace_s = 0.3\nconfirm_s = 5\npoll_s = 0.05\n\
         [kubernetes]\nkubeconfig = \"{}\"\nrequest_timeout_s = 5\n",
        fake.kubeconfig(dir).display()
    );
    let config: WorkloadConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    let k = Kubernetes::connect(node, config.kubernetes.as_ref().unwrap()).await?;
    Ok(WorkloadActuator::new(Arc::new(k), &config))
}

fn why(reason: &str) -> Why {
    Why {
        reason: reason.to_owned(),
        power_w: None,
    }
}

#[tokio::test]
async fn kubernetes_node_is_cordoned_tainted_evicted_through_its_pdb_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(
        node(false, json!([gpu_taint()])),
        pods(),
        &[NODE_READ, PODS_READ, DEMAND_READ],
    )
    .await;

    // The controller's demand: a pending 4-GPU pod, a running 2-GPU pod (the DaemonSet's GPU
    // counts too: it holds it), finished pods excluded by the server's field selector.
    let demand = KubeDemand::connect(&KubeDemandConfig {
        kubeconfig: Some(fake.kubeconfig(dir.path())),
        ..KubeDemandConfig::default()
    })
    .await
    .unwrap()
    .read()
    .await
    .unwrap();
    assert_eq!((demand.gpus_pending, demand.gpus_running), (4, 3));

    let act = actuator(&fake, dir.path(), "gpu-01").await.unwrap();

    // Drain: one conditional patch (cordon, label, pivot's taint beside the GPU taint); after
    // the grace, an eviction the PDB refuses: a transient failure naming the pod.
    fake.expect(Expect::NodePatch {
        body: json!({
            "metadata": {"labels": {"pivot.dev/power": "mining"}, "resourceVersion": "1"},
            "spec": {"unschedulable": true, "taints": [
                gpu_taint(),
                {"key": "pivot.dev/power", "value": "mining", "effect": "NoSchedule"},
            ]},
        }),
        status: 200,
    });
    fake.expect(Expect::Evict {
        namespace: "ai".into(),
        pod: "train-0".into(),
        status: 429,
    });
    let e = act
        .apply(WorkloadState::Drained, &why("plan 7: mining pays"))
        .await
        .unwrap_err();
    assert_eq!(e.retry(), Retry::Transient, "{e}");
    assert!(
        e.to_string().contains("ai/train-0") && e.to_string().contains("disruption budget"),
        "{e}"
    );
    let reading = act.read().await;
    assert_eq!(
        (
            reading.node_state.as_str(),
            reading.schedulable,
            reading.jobs_running,
            reading.gpus_allocated
        ),
        ("Ready,SchedulingDisabled", false, 1, 2)
    );

    // The retry evicts it (the grace already ran) and the node is DRAINED.
    fake.expect(Expect::Evict {
        namespace: "ai".into(),
        pod: "train-0".into(),
        status: 201,
    });
    let applied = act
        .apply(WorkloadState::Drained, &why("plan 7: mining pays"))
        .await
        .unwrap();
    assert!(applied.status.drained(), "{:?}", applied.status);
    let n = fake.node();
    assert_eq!(n["metadata"]["labels"]["pivot.dev/power"], "mining");
    assert_eq!(n["spec"]["unschedulable"], true);
    let left: Vec<String> = fake
        .pods()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(left, ["dcgm-x", "probe", "queued-0", "done-0"]);

    // Release: uncordon, label ai, pivot's taint gone and the GPU taint kept.
    fake.expect(Expect::NodePatch {
        body: json!({
            "metadata": {"labels": {"pivot.dev/power": "ai"}, "resourceVersion": "2"},
            "spec": {"unschedulable": false, "taints": [gpu_taint()]},
        }),
        status: 200,
    });
    let applied = act
        .apply(WorkloadState::Released, &why("plan 8: AI pays"))
        .await
        .unwrap();
    assert!(applied.status.schedulable);
    assert_eq!(fake.node()["spec"]["taints"], json!([gpu_taint()]));
    let reading = act.read().await;
    assert_eq!(
        (reading.node_state.as_str(), reading.schedulable),
        ("Ready", true)
    );

    let seen = fake.finish();
    assert!(seen.iter().all(|r| !r.starts_with("DELETE")), "{seen:?}");
}

#[tokio::test]
async fn kubernetes_refuses_unknown_nodes_and_someone_elses_cordon() {
    let dir = tempfile::tempdir().unwrap();
    // A node cordoned by an operator (no pivot taint): pivot does not uncordon it.
    let fake = FakeKube::start(
        node(true, json!([])),
        vec![],
        &[
            NODE_READ,
            PODS_READ,
            "/api/v1/nodes/gpu-02",
            "/api/v1/pods?&fieldSelector=spec.nodeName%3Dgpu-02",
        ],
    )
    .await;
    let act = actuator(&fake, dir.path(), "gpu-01").await.unwrap();
    let e = act
        .apply(WorkloadState::Released, &why("plan 9"))
        .await
        .unwrap_err();
    assert!(matches!(e, WorkloadError::ClosedByOther { .. }), "{e}");
    assert_eq!(e.retry(), Retry::Permanent);

    let unknown = actuator(&fake, dir.path(), "gpu-02").await.unwrap();
    let e = unknown
        .apply(WorkloadState::Drained, &why("plan 10"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, WorkloadError::UnknownNode { .. }) && e.to_string().contains("gpu-02"),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Permanent);
    let config = pivot_agent::workload::config::KubernetesConfig {
        kubeconfig: Some(fake.kubeconfig(dir.path())),
        ..Default::default()
    };
    assert!(matches!(
        Kubernetes::connect("GPU_01", &config).await,
        Err(WorkloadError::BadNodeName { .. })
    ));
    // No write reached the server.
    fake.finish();
    assert_eq!(fake.node()["spec"]["unschedulable"], true);
}
