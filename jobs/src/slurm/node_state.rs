//! A Slurm node's state as `sinfo --json` prints it (22.05: `"state": "idle"` plus
//! `"state_flags": ["DRAIN"]`; 23.02 on: `"state": ["IDLE", "DRAIN"]`), and what it means for
//! handing the node over.

use std::fmt;

/// Base states; everything else in the list is a flag.
const BASE_STATES: [&str; 7] = [
    "IDLE",
    "ALLOCATED",
    "MIXED",
    "DOWN",
    "ERROR",
    "FUTURE",
    "UNKNOWN",
];

/// Flags that leave a node open to new jobs. Anything else (DRAIN, FAIL, NOT_RESPONDING,
/// MAINTENANCE, RESERVED, POWERED_DOWN, a flag a later Slurm adds) counts as closed: pivot must
/// prove a node open before it says so.
const OPEN_FLAGS: [&str; 4] = ["COMPLETING", "PLANNED", "CLOUD", "DYNAMIC_NORM"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Uppercase base state, e.g. `IDLE`; `UNKNOWN` when none was given.
    pub base: String,
    /// Uppercase flags in the order Slurm printed them, e.g. `DRAIN`.
    pub flags: Vec<String>,
}

impl NodeState {
    /// From the words Slurm printed, in any case, base state and flags mixed.
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let mut base = None;
        let mut flags = Vec::new();
        for w in words {
            let w = w.trim().to_ascii_uppercase();
            if w.is_empty() {
                continue;
            }
            if base.is_none() && BASE_STATES.contains(&w.as_str()) {
                base = Some(w);
            } else if !flags.contains(&w) {
                flags.push(w);
            }
        }
        Self {
            base: base.unwrap_or_else(|| "UNKNOWN".to_owned()),
            flags,
        }
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Jobs hold resources on the node (or are still finishing there).
    pub fn busy(&self) -> bool {
        matches!(self.base.as_str(), "ALLOCATED" | "MIXED") || self.has_flag("COMPLETING")
    }

    /// Slurm's DRAINED: marked to drain and nothing left on it.
    pub fn drained(&self) -> bool {
        self.has_flag("DRAIN") && !self.busy()
    }

    /// Slurm's DRAINING: marked to drain, jobs still on it.
    pub fn draining(&self) -> bool {
        self.has_flag("DRAIN") && self.busy()
    }

    /// New jobs can start on the node.
    pub fn schedulable(&self) -> bool {
        matches!(self.base.as_str(), "IDLE" | "MIXED" | "ALLOCATED")
            && self.flags.iter().all(|f| OPEN_FLAGS.contains(&f.as_str()))
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        for flag in &self.flags {
            write!(f, "+{flag}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(words: &[&str]) -> NodeState {
        NodeState::from_words(words.iter().copied())
    }

    #[test]
    fn drain_states() {
        let drained = st(&["idle", "DRAIN"]);
        assert!(drained.drained() && !drained.draining() && !drained.schedulable());
        assert_eq!(drained.to_string(), "IDLE+DRAIN");
        let draining = st(&["ALLOCATED", "DRAIN"]);
        assert!(draining.draining() && !draining.drained());
        assert!(st(&["idle", "DRAIN", "COMPLETING"]).draining());
        assert!(st(&["down", "DRAIN"]).drained());
    }

    #[test]
    fn schedulable_only_when_open() {
        assert!(st(&["idle"]).schedulable());
        assert!(st(&["MIXED"]).schedulable());
        assert!(st(&["allocated", "COMPLETING"]).schedulable());
        for closed in [
            &["idle", "NOT_RESPONDING"][..],
            &["down"],
            &["idle", "MAINTENANCE"],
            &["idle", "SOME_NEW_FLAG"],
            &[],
        ] {
            assert!(!st(closed).schedulable(), "{closed:?}");
        }
    }
}
