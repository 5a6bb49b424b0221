//! What can go wrong talking to a miner. Every variant names the miner's address, so a log line
//! alone tells an operator which device, which command, and what it answered.

use std::time::Duration;

use pivot_proto::model::MinerDialect;

/// A failed exchange with one miner.
#[derive(Debug, thiserror::Error)]
pub enum MinerError {
    #[error("miner {addr}: timed out after {after:?} while {during}")]
    Timeout {
        addr: String,
        during: String,
        after: Duration,
    },

    #[error("miner {addr}: timed out after {after:?} while connecting to port {port}")]
    ConnectTimeout {
        addr: String,
        port: u16,
        after: Duration,
    },

    #[error("miner {addr}: connection refused on port {port}")]
    Refused { addr: String, port: u16 },

    #[error("miner {addr}: connection reset while {during}")]
    Reset { addr: String, during: String },

    #[error("miner {addr}: cannot connect to port {port}: {message}")]
    Connect {
        addr: String,
        port: u16,
        message: String,
    },

    #[error("miner {addr}: closed the connection without answering `{command}`")]
    NoReply { addr: String, command: String },

    #[error("miner {addr}: malformed reply to `{command}` ({problem}); reply began {snippet:?}")]
    Malformed {
        addr: String,
        command: String,
        problem: String,
        snippet: String,
    },

    #[error("miner {addr}: `{command}` answered STATUS {letter} code {code}: {message}")]
    Status {
        addr: String,
        command: String,
        letter: String,
        code: i64,
        message: String,
    },

    #[error("miner {addr}: credentials rejected by {what} ({detail})")]
    AuthRejected {
        addr: String,
        what: String,
        detail: String,
    },

    #[error("miner {addr}: HTTP {status} from {request}: {snippet:?}")]
    Http {
        addr: String,
        request: String,
        status: u16,
        snippet: String,
    },

    #[error(
        "miner {addr}: {action} was answered {answered:?} but nothing changed: read back {observed} after {waited:?}"
    )]
    NotApplied {
        addr: String,
        action: String,
        answered: String,
        observed: String,
        waited: Duration,
    },

    #[error("miner {addr}: {dialect} firmware does not support {what}")]
    Unsupported {
        addr: String,
        dialect: MinerDialect,
        what: String,
    },

    #[error("miner {addr}: power target {requested} W is outside what it accepts ({min}–{max} W)")]
    OutOfRange {
        addr: String,
        requested: u32,
        min: u32,
        max: u32,
    },

    #[error(
        "miner {addr}: cannot wake: the work mode it had before sleeping is not known here (it slept before this agent saw it); set `antminer_wake_mode` (0 normal, 2 high, 3 low) in its [[miners]] entry of the agent's configuration, or wake it once by hand: pivot-agent miner wake --work-mode N ADDR"
    )]
    WakeModeUnknown { addr: String },

    #[error(
        "miner {addr}: the file of modes before sleep, {path}, cannot be used ({problem}); fix or \
         move it away"
    )]
    ModeMemory {
        addr: String,
        path: String,
        problem: String,
    },

    #[error("miner {addr}: no known miner dialect answered ({tried})")]
    NotDetected { addr: String, tried: String },

    #[error("miner {addr}: {message}")]
    Other { addr: String, message: String },

    /// A step before the command failed (a login, a token, reading the config the command sends
    /// back): nothing that changes the miner was sent. Kept apart so a retry need not wait out
    /// the pacing meant for a command the firmware may still be carrying out.
    #[error("{0}; no command was sent")]
    BeforeCommand(Box<MinerError>),
}

impl MinerError {
    /// Marks a failure of a step before the command ([`MinerError::BeforeCommand`]).
    pub fn before_command(self) -> Self {
        match self {
            e @ MinerError::BeforeCommand(_) => e,
            e => MinerError::BeforeCommand(Box::new(e)),
        }
    }

    /// Whether the miner could not be reached and nothing was sent that could have changed it:
    /// a step before the command went unanswered, or the command's own connection was never
    /// made. A reply to the command that did not come in time is not one of these (the
    /// firmware may have carried the command out), nor is a definite answer before it (a login
    /// refused: trying again soon would only risk a lockout).
    pub fn sent_nothing(&self) -> bool {
        match self {
            MinerError::BeforeCommand(e) => e.is_unreachable(),
            MinerError::Refused { .. }
            | MinerError::Connect { .. }
            | MinerError::ConnectTimeout { .. } => true,
            _ => false,
        }
    }

    /// The failure itself, with a [`MinerError::BeforeCommand`] mark taken off.
    pub fn inner(&self) -> &MinerError {
        match self {
            MinerError::BeforeCommand(e) => e.inner(),
            e => e,
        }
    }

    /// Whether the miner could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.inner(),
            MinerError::Timeout { .. }
                | MinerError::ConnectTimeout { .. }
                | MinerError::Refused { .. }
                | MinerError::Reset { .. }
                | MinerError::Connect { .. }
                | MinerError::NoReply { .. }
                | MinerError::NotDetected { .. }
        )
    }

    /// A short machine-friendly name of the kind of failure, for JSON output and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self.inner() {
            MinerError::Timeout { .. } | MinerError::ConnectTimeout { .. } => "timeout",
            MinerError::Refused { .. } => "refused",
            MinerError::Reset { .. } => "reset",
            MinerError::Connect { .. } => "connect",
            MinerError::NoReply { .. } => "no_reply",
            MinerError::Malformed { .. } => "malformed",
            MinerError::Status { .. } => "status",
            MinerError::AuthRejected { .. } => "auth_rejected",
            MinerError::Http { .. } => "http",
            MinerError::NotApplied { .. } => "not_applied",
            MinerError::Unsupported { .. } => "unsupported",
            MinerError::OutOfRange { .. } => "out_of_range",
            MinerError::WakeModeUnknown { .. } => "wake_mode_unknown",
            MinerError::ModeMemory { .. } => "mode_memory",
            MinerError::NotDetected { .. } => "not_detected",
            MinerError::Other { .. } => "other",
            MinerError::BeforeCommand(e) => e.kind(),
        }
    }
}

/// The first bytes of a reply, printable, for error messages.
pub fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { '·' } else { c })
        .collect();
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}
