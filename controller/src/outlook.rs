//! What the latest planning round saw and decided, in the terms status, economics and the
//! dashboard show: the cap in force and why, the mode (economic or a safe policy), the economics,
//! power by load class, the margin, and the lowest draw the site can reach.

use chrono::{DateTime, Utc};
use pivot_proto::v1;

/// The site as the latest planning round saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outlook {
    /// When the round ran; `None` before the first.
    pub at: Option<DateTime<Utc>>,
    /// The cap the planner worked under, W, and why.
    pub cap_in_force_w: Option<f64>,
    pub cap_reason: String,
    /// "economic", or the safe policy in force and why.
    pub mode: String,
    pub economics: Option<v1::Economics>,
    /// Committed power by load class, W.
    pub mining_w: f64,
    pub ai_w: f64,
    pub committed_w: f64,
    pub margin_usd_per_h: Option<f64>,
    /// The lowest draw the controllable load can reach, W (for demand response).
    pub min_reachable_w: Option<f64>,
    pub gpu_hosts_total: u32,
    pub gpu_hosts_serving: u32,
    /// The plan's reason, in one line.
    pub reason: String,
    /// Moves today's prices ask for that a dwell holds back, one line per model and action.
    pub waiting: Vec<String>,
}
