//! The clock the emulated firmwares judge the credentials that lapse between commands by: LuxOS
//! sessions (60 s idle), Whatsminer v2 tokens (30 min) and stock Antminer Digest nonces (600 s).
//! It is the real clock plus however far the process was told to move it on ([`skip`];
//! `pivot-sim miners` does so on SIGUSR1), so a bench can curtail a fleet whose credentials have
//! lapsed — as a demand-response event hours after the last command finds it — without waiting
//! those hours. Ramps, readings and everything else keep the real clock, and so do Braiins OS
//! REST tokens: an agent's polls use and renew those, so a polled miner's never lapses.
//!
//! One clock per process: a skip ages the credentials of every miner the process serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

static SKIPPED_S: AtomicU64 = AtomicU64::new(0);

/// Moves the credentials' clock on by `by` (whole seconds).
pub fn skip(by: Duration) {
    SKIPPED_S.fetch_add(by.as_secs(), Ordering::Relaxed);
}

fn skipped() -> Duration {
    Duration::from_secs(SKIPPED_S.load(Ordering::Relaxed))
}

/// Now, for stamping and judging a session or token.
pub(crate) fn instant() -> Instant {
    Instant::now() + skipped()
}

/// Unix seconds, for stamping and judging a Digest nonce.
pub(crate) fn unix() -> u64 {
    super::cgminer::unix_now().saturating_add(skipped().as_secs())
}
