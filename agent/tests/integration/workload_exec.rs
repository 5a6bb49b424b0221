//! The exec-hook workload manager with a real hook: a shell script that records every call with
//! its environment, keeps the node's state in files, and fails or hangs on demand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pivot_agent::workload::config::WorkloadConfig;
use pivot_agent::workload::{Retry, Why, WorkloadActuator, WorkloadError};
use pivot_proto::model::WorkloadState;

const HOOK: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$PIVOT_ACTION host=$PIVOT_HOST node=$PIVOT_NODE power=$PIVOT_POWER_W grace_over=${PIVOT_GRACE_OVER:-0} reason=$PIVOT_REASON" >> "$dir/calls.log"
printf '%s\n' "$@" > "$dir/args"
if [ -f "$dir/fail" ]; then echo "hook failing on purpose"; exit "$(cat "$dir/fail")"; fi
if [ -f "$dir/hang" ]; then (sleep 1.5; touch "$dir/survived") & sleep 30; fi
case "$PIVOT_ACTION" in
  release) echo open > "$dir/node" ;;
  drain) echo closed > "$dir/node"
         if [ "${PIVOT_GRACE_OVER:-0}" = 1 ]; then echo 0 > "$dir/jobs"; fi ;;
  status) n=$(cat "$dir/node"); j=$(cat "$dir/jobs")
          if [ "$n" = open ]; then echo "state=open schedulable=true closed=false jobs=$j gpus=$((j*4))"
          else echo "state=closed schedulable=false closed=true jobs=$j gpus=$((j*4))"; fi ;;
esac
"#;

struct Hook {
    dir: tempfile::TempDir,
}

impl Hook {
    fn new(node: &str, jobs: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.sh");
        std::fs::write(&path, HOOK).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(dir.path().join("node"), format!("{node}\n")).unwrap();
        std::fs::write(dir.path().join("jobs"), format!("{jobs}\n")).unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("hook.sh")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The calls so far, one line each, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        let log = self.file("calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }

    async fn actuator(&self, grace_s: f64, timeout_s: f64) -> WorkloadActuator {
        self.actuator_with(grace_s, timeout_s, "").await
    }

    /// [`Hook::actuator`] with `extra` added to `[exec]`.
    async fn actuator_with(&self, grace_s: f64, timeout_s: f64, extra: &str) -> WorkloadActuator {
        let text = format!(
            "manager = \"exec\"\nnode_name = \"gpu-07\"\ngrace_s = {grace_s}\nconfirm_s = 5\npoll_s = 0.05\n\
             [exec]\nhook = \"{}\"\ntimeout_s = {timeout_s}\n{extra}",
            self.path().display()
        );
        let config: WorkloadConfig = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        pivot_agent::workload::connect("rack-3-host-7", &config)
            .await
            .unwrap()
    }
}

fn why(reason: &str, power_w: u32) -> Why {
    Why {
        reason: reason.to_owned(),
        power_w: Some(power_w),
    }
}

fn actions(calls: &[String]) -> Vec<&str> {
    calls
        .iter()
        .map(|c| c.split_whitespace().next().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn hook_releases_then_drains_and_clears_jobs_after_the_grace() {
    let hook = Hook::new("closed", 0);
    let act = hook.actuator(0.3, 5.0).await;

    let applied = act
        .apply(WorkloadState::Released, &why("plan 12: AI pays", 10200))
        .await
        .unwrap();
    assert!(applied.status.released());
    let calls = hook.take_calls();
    assert_eq!(actions(&calls), ["status", "release", "status"]);
    assert_eq!(
        calls[1],
        "release host=rack-3-host-7 node=gpu-07 power=10200 grace_over=0 reason=plan 12: AI pays"
    );

    // Two jobs start; a drain closes the node, waits the grace, then asks the hook to clear it.
    std::fs::write(hook.file("jobs"), "2\n").unwrap();
    let started = std::time::Instant::now();
    let applied = act
        .apply(WorkloadState::Drained, &why("plan 13: mining pays", 0))
        .await
        .unwrap();
    assert!(applied.status.drained(), "{:?}", applied.status);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let calls = hook.take_calls();
    let acts = actions(&calls);
    assert_eq!(acts.first(), Some(&"status"));
    assert_eq!(acts.get(1), Some(&"drain"));
    assert!(calls[1].contains("grace_over=0"), "{}", calls[1]);
    let clears: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains("grace_over=1"))
        .collect();
    assert_eq!(clears.len(), 1, "{calls:?}");
    assert_eq!(acts.last(), Some(&"status"));

    let reading = act.read().await;
    assert_eq!(
        (
            reading.node.as_str(),
            reading.node_state.as_str(),
            reading.schedulable,
            reading.jobs_running
        ),
        ("gpu-07", "closed", false, 0)
    );
}

/// The configured arguments reach the hook one by one, as written: no shell splits the one with
/// a space or expands the one with `$` and `;`.
#[tokio::test]
async fn the_hook_gets_its_configured_arguments_as_they_are() {
    let hook = Hook::new("closed", 0);
    let act = hook
        .actuator_with(
            0.0,
            5.0,
            "args = [\"--cluster\", \"gpu a\", \"$HOME;false\"]\n",
        )
        .await;
    act.apply(WorkloadState::Released, &why("plan 1", 100))
        .await
        .unwrap();
    let args = std::fs::read_to_string(hook.file("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["--cluster", "gpu a", "$HOME;false"]
    );
}

#[tokio::test]
async fn hook_failures_say_transient_or_permanent_and_name_the_hook() {
    let hook = Hook::new("closed", 0);
    let act = hook.actuator(0.0, 5.0).await;
    std::fs::write(hook.file("fail"), "1").unwrap();
    let e = act
        .apply(WorkloadState::Released, &why("x", 1))
        .await
        .unwrap_err();
    assert_eq!(e.retry(), Retry::Transient, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("hook failing on purpose")
            && text.contains("hook.sh")
            && text.contains("gpu-07"),
        "{text}"
    );
    std::fs::write(hook.file("fail"), "78").unwrap();
    let e = act
        .apply(WorkloadState::Released, &why("x", 1))
        .await
        .unwrap_err();
    assert_eq!(e.retry(), Retry::Permanent, "{e}");
    // A failed status read is reported as the reading's error, never as a schedulable node.
    let reading = act.read().await;
    assert!(
        !reading.schedulable && reading.read_error.contains("code 78"),
        "{reading:?}"
    );
    std::fs::remove_file(hook.file("fail")).unwrap();
    let calls = hook.take_calls();
    assert!(calls.iter().all(|c| c.starts_with("status")), "{calls:?}");
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_its_children() {
    let hook = Hook::new("open", 0);
    let act = hook.actuator(0.0, 0.5).await;
    std::fs::write(hook.file("hang"), "").unwrap();
    let started = std::time::Instant::now();
    let e = act
        .apply(WorkloadState::Released, &why("x", 1))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(e, WorkloadError::Hook { .. }), "{e}");
    assert_eq!(e.retry(), Retry::Transient);
    assert!(e.to_string().contains("did not finish"), "{e}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        !Path::new(&hook.file("survived")).exists(),
        "the hook's child outlived the timeout"
    );
}
