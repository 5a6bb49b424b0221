//! An operator's hook as the workload manager: an executable run without a shell (with the
//! `args` its configuration gives, unchanged), told what to do through its environment, judged by
//! its exit code and the last line of its stdout.
//!
//! Environment: `PIVOT_ACTION` (`release`, `drain` or `status`), `PIVOT_HOST` (the agent's host
//! id), `PIVOT_NODE`, `PIVOT_POWER_W` (empty when the controller gave none), `PIVOT_REASON`, and
//! `PIVOT_GRACE_OVER=1` on the `drain` that follows the checkpoint grace (the hook should make the
//! remaining jobs leave then).
//!
//! Exit 0: done. Exit 78 (EX_CONFIG): this can never work here; pivot reports it and does not
//! retry the intent. Any other code, or a run past the timeout (its whole process group is
//! killed): transient, retried after the pacing.
//!
//! `status` prints, as its last line, `key=value` words: `schedulable=true|false` and
//! `jobs=N` are required; `gpus=N`, `closed=true|false` (default: not schedulable) and
//! `state=WORD` (the manager's own word) are optional. For example:
//! `state=drained schedulable=false closed=true jobs=0 gpus=0`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use pivot_jobs::command::{self, CommandError, CommandLine, Finished};
use tracing::info;

use super::config::{ExecConfig, secs};
use super::{ManagerKind, NodeStatus, Retry, Why, WorkloadError, WorkloadManager};

/// The exit code by which a hook says "never": sysexits' EX_CONFIG.
pub const EXIT_PERMANENT: i32 = 78;

#[derive(Debug)]
pub struct ExecHook {
    hook: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    host: String,
    node: String,
}

impl ExecHook {
    pub fn new(host: &str, node: &str, config: &ExecConfig) -> Self {
        Self {
            hook: config.hook.clone(),
            args: config.args.clone(),
            timeout: secs(config.timeout_s),
            host: host.to_owned(),
            node: node.to_owned(),
        }
    }

    fn error(&self, action: &'static str, retry: Retry, problem: String) -> WorkloadError {
        WorkloadError::Hook {
            hook: self.hook.display().to_string(),
            action,
            node: self.node.clone(),
            retry,
            problem,
        }
    }

    async fn call(
        &self,
        action: &'static str,
        why: &Why,
        grace_over: bool,
    ) -> Result<Finished, WorkloadError> {
        let mut line = CommandLine::new(&self.hook, self.timeout);
        for a in &self.args {
            line = line.arg(a);
        }
        let mut line = line
            .env("PIVOT_ACTION", action)
            .env("PIVOT_HOST", &self.host)
            .env("PIVOT_NODE", &self.node)
            .env(
                "PIVOT_POWER_W",
                why.power_w.map(|w| w.to_string()).unwrap_or_default(),
            )
            .env("PIVOT_REASON", pivot_jobs::names::reason_text(&why.reason));
        if grace_over {
            line = line.env("PIVOT_GRACE_OVER", "1");
        }
        let done = command::run(&line).await.map_err(|e| {
            let retry = match e {
                CommandError::TimedOut { .. } => Retry::Transient,
                _ => Retry::Permanent,
            };
            self.error(action, retry, e.to_string())
        })?;
        match done.exit_code {
            Some(0) => Ok(done),
            code => {
                let retry = if code == Some(EXIT_PERMANENT) {
                    Retry::Permanent
                } else {
                    Retry::Transient
                };
                let said = if done.last_line().is_empty() {
                    command::quote(&done.stderr)
                } else {
                    command::quote(done.last_line())
                };
                Err(self.error(
                    action,
                    retry,
                    format!(
                        "exited with {}: {said}",
                        code.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
                    ),
                ))
            }
        }
    }
}

/// Reads the `status` line; the error says which word is wrong.
pub fn parse_status(line: &str) -> Result<NodeStatus, String> {
    let mut schedulable = None;
    let mut jobs = None;
    let mut gpus = 0u32;
    let mut closed = None;
    let mut state = None;
    let flag = |k: &str, v: &str| match v {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("`{k}={v}`: expected true or false")),
    };
    let count = |k: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("`{k}={v}`: expected a whole number"))
    };
    for word in line.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        match k {
            "schedulable" => schedulable = Some(flag(k, v)?),
            "jobs" => jobs = Some(count(k, v)?),
            "gpus" => gpus = count(k, v)?,
            "closed" => closed = Some(flag(k, v)?),
            "state" => state = Some(command::quote(v)),
            _ => return Err(format!("unknown key `{k}`")),
        }
    }
    let schedulable = schedulable.ok_or("`schedulable=` is missing")?;
    let jobs_running = jobs.ok_or("`jobs=` is missing")?;
    Ok(NodeStatus {
        node_state: state
            .unwrap_or_else(|| if schedulable { "schedulable" } else { "closed" }.to_owned()),
        schedulable,
        closed: closed.unwrap_or(!schedulable),
        closed_by_other: None,
        jobs_running,
        gpus_allocated: gpus,
        busy_without_jobs: false,
    })
}

#[async_trait]
impl WorkloadManager for ExecHook {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Exec
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn release(&self, why: &Why) -> Result<(), WorkloadError> {
        info!(node = %self.node, hook = %self.hook.display(), "Releasing node through the exec hook");
        self.call("release", why, false).await.map(drop)
    }

    async fn drain(&self, why: &Why) -> Result<(), WorkloadError> {
        info!(node = %self.node, hook = %self.hook.display(), "Draining node through the exec hook");
        self.call("drain", why, false).await.map(drop)
    }

    async fn remove_jobs(&self, why: &Why) -> Result<u32, WorkloadError> {
        info!(node = %self.node, hook = %self.hook.display(), "Grace over: asking the exec hook to clear the node");
        self.call("drain", why, true).await.map(|_| 1)
    }

    async fn status(&self) -> Result<NodeStatus, WorkloadError> {
        let done = self.call("status", &Why::default(), false).await?;
        parse_status(done.last_line()).map_err(|p| {
            self.error(
                "status",
                Retry::Transient,
                format!("last line `{}`: {p}", command::quote(done.last_line())),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_lines() {
        let s = parse_status("state=drained schedulable=false closed=true jobs=0 gpus=0").unwrap();
        assert!(s.drained() && !s.released());
        let s = parse_status("schedulable=true jobs=3 gpus=8").unwrap();
        assert!(s.released() && !s.closed && s.gpus_allocated == 8);
        for bad in [
            "",
            "jobs=1",
            "schedulable=maybe jobs=0",
            "schedulable=true jobs=-1",
            "schedulable=true jobs=0 colour=red",
            "drained",
        ] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }
}
