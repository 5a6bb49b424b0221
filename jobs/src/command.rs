//! Runs a scheduler command or an operator's hook: no shell, a timeout that kills the whole
//! process group, stdout and stderr captured and named in every error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

/// Most of a command's stdout kept (a large cluster's `squeue --json` is tens of MB).
pub const MAX_STDOUT_BYTES: usize = 256 << 20;
/// Characters of stderr or stdout quoted in an error message.
const QUOTED_CHARS: usize = 400;

/// One command line, built from separate arguments (never a shell string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

impl CommandLine {
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout,
        }
    }

    #[must_use]
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    #[must_use]
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The command as an operator would type it, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// A command that ran to its end, whatever its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The last non-empty line of stdout, trimmed.
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}

/// Why a command gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}`: {source}; check the configured path and its permissions")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "`{command}` did not finish within {timeout:?}; killed it and its process group (stderr: {stderr})"
    )]
    TimedOut {
        command: String,
        timeout: Duration,
        stderr: String,
    },
    #[error("`{command}` exited with {}: {}", exit_name(*.exit_code), quote_output(.stderr, .stdout))]
    Failed {
        command: String,
        exit_code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` wrote more than {MAX_STDOUT_BYTES} bytes to stdout")]
    TooMuchOutput { command: String },
}

impl CommandError {
    /// Stderr (or, when empty, stdout) of a command that ran, for callers that classify it.
    pub fn output_text(&self) -> &str {
        match self {
            Self::Failed { stderr, stdout, .. } => {
                if stderr.trim().is_empty() {
                    stdout
                } else {
                    stderr
                }
            }
            Self::TimedOut { stderr, .. } => stderr,
            Self::Spawn { .. } | Self::TooMuchOutput { .. } => "",
        }
    }
}

fn exit_name(code: Option<i32>) -> String {
    code.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
}

fn quote_output(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let text = text.trim();
    if text.is_empty() {
        return "no output".to_owned();
    }
    quote(text)
}

/// At most [`QUOTED_CHARS`] characters of `text`, newlines folded.
pub fn quote(text: &str) -> String {
    let folded: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(QUOTED_CHARS)
        .collect();
    if text.trim().chars().count() > QUOTED_CHARS {
        format!("{folded}…")
    } else {
        folded
    }
}

/// Runs `line` to its end or its timeout. The child gets its own process group so a timeout
/// kills whatever it started too (a hook's `sleep`, an `ssh`), not only the process itself.
pub async fn run(line: &CommandLine) -> Result<Finished, CommandError> {
    let command = line.display();
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&line.program);
    cmd.args(&line.args)
        .envs(line.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    match tokio::time::timeout(line.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            if out.stdout.len() > MAX_STDOUT_BYTES {
                return Err(CommandError::TooMuchOutput { command });
            }
            Ok(Finished {
                exit_code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: started.elapsed(),
            })
        }
        Ok(Err(source)) => Err(CommandError::Spawn { command, source }),
        Err(_) => {
            if let Some(pgid) = pgid {
                // The group may already be gone; the error is the timeout either way.
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            Err(CommandError::TimedOut {
                command,
                timeout: line.timeout,
                stderr: String::new(),
            })
        }
    }
}

/// Runs `line` and requires exit code 0.
pub async fn run_ok(line: &CommandLine) -> Result<Finished, CommandError> {
    let done = run(line).await?;
    if done.exit_code == Some(0) {
        Ok(done)
    } else {
        Err(CommandError::Failed {
            command: line.display(),
            exit_code: done.exit_code,
            stdout: done.stdout,
            stderr: done.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> CommandLine {
        CommandLine::new("/bin/sh", Duration::from_millis(timeout_ms))
            .arg("-c")
            .arg(script)
    }

    #[tokio::test]
    async fn captures_stdout_stderr_and_code() {
        let done = run(&sh("echo one; echo two; echo oops >&2; exit 3", 5000))
            .await
            .unwrap();
        assert_eq!(done.exit_code, Some(3));
        assert_eq!(done.last_line(), "two");
        assert_eq!(done.stderr.trim(), "oops");
        let e = run_ok(&sh("echo oops >&2; exit 3", 5000))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("code 3") && e.contains("oops"), "{e}");
    }

    #[tokio::test]
    async fn arguments_never_reach_a_shell() {
        let done = run_ok(
            &CommandLine::new("/bin/echo", Duration::from_secs(5)).arg("a; touch /tmp/x $(id)"),
        )
        .await
        .unwrap();
        assert_eq!(done.stdout.trim(), "a; touch /tmp/x $(id)");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-alive");
        // The grandchild would write the marker after 1.5 s if it survived the kill.
        let script = format!("(sleep 1.5; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let e = run(&sh(&script, 300)).await.unwrap_err();
        assert!(matches!(e, CommandError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(!marker.exists(), "the grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn a_missing_program_names_itself() {
        let e = run(&CommandLine::new(
            "/nonexistent/scontrol",
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/scontrol"), "{e}");
    }
}
