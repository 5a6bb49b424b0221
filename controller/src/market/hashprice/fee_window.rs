//! Fees of the last 144 blocks, kept by height so that each refresh fetches only new blocks: a
//! block's fees never change, but a reorganisation replaces blocks at the tip.

use std::collections::BTreeMap;

use super::formula::{BLOCKS_PER_DAY, SATS_PER_BTC};

/// Blocks re-fetched when the tip's hash shows a reorganisation. Deeper ones have not
/// happened on mainnet since 2013.
pub const REORG_DEPTH: u64 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockFees {
    fees_sats: u64,
    hash: String,
}

/// The fee window ending at the tip.
#[derive(Debug, Clone, Default)]
pub struct FeeWindow {
    blocks: BTreeMap<u64, BlockFees>,
}

impl FeeWindow {
    /// Heights of the window ending at `tip`, oldest first.
    pub fn heights(tip: u64) -> std::ops::RangeInclusive<u64> {
        tip.saturating_sub(BLOCKS_PER_DAY - 1)..=tip
    }

    /// Moves the window to `tip` (hash `tip_hash`): drops blocks outside it, and the last
    /// [`REORG_DEPTH`] blocks when the block held at `tip` has another hash.
    pub fn advance(&mut self, tip: u64, tip_hash: &str) {
        if self.blocks.get(&tip).is_some_and(|b| b.hash != tip_hash) {
            let from = tip.saturating_sub(REORG_DEPTH - 1);
            self.blocks.retain(|h, _| *h < from);
        }
        let window = Self::heights(tip);
        self.blocks.retain(|h, _| window.contains(h));
    }

    /// Heights in the window ending at `tip` not held yet, newest first (the most useful when a
    /// refresh is cut short).
    pub fn missing(&self, tip: u64) -> Vec<u64> {
        Self::heights(tip)
            .rev()
            .filter(|h| !self.blocks.contains_key(h))
            .collect()
    }

    pub fn insert(&mut self, height: u64, fees_sats: u64, hash: String) {
        self.blocks.insert(height, BlockFees { fees_sats, hash });
    }

    /// Mean fees per block over the window ending at `tip`, BTC, once every block is held.
    pub fn mean_fees_btc(&self, tip: u64) -> Option<f64> {
        let window = Self::heights(tip);
        let n = window.clone().count();
        let mut sum: u64 = 0;
        for h in window {
            sum = sum.saturating_add(self.blocks.get(&h)?.fees_sats);
        }
        Some(sum as f64 / n as f64 / SATS_PER_BTC)
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(w: &mut FeeWindow, tip: u64, fees: u64) {
        for h in w.missing(tip) {
            w.insert(h, fees, format!("h{h}"));
        }
    }

    #[test]
    fn only_new_blocks_are_missing_after_the_tip_moves() {
        let mut w = FeeWindow::default();
        w.advance(900_000, "h900000");
        assert_eq!(w.missing(900_000).len(), 144);
        assert_eq!(w.mean_fees_btc(900_000), None);
        fill(&mut w, 900_000, 2_000_000);
        assert_eq!(w.mean_fees_btc(900_000), Some(0.02));
        w.advance(900_002, "h900002");
        assert_eq!(w.missing(900_002), vec![900_002, 900_001]);
        assert_eq!(w.len(), 142);
        w.insert(900_001, 2_000_000 + 144, "h900001".into());
        w.insert(900_002, 2_000_000 + 144, "h900002".into());
        let mean = w.mean_fees_btc(900_002).unwrap();
        assert!((mean - (0.02 + 2.0 / SATS_PER_BTC)).abs() < 1e-12, "{mean}");
    }

    #[test]
    fn a_new_hash_at_the_tip_refetches_the_last_blocks() {
        let mut w = FeeWindow::default();
        w.advance(1_000, "h1000");
        fill(&mut w, 1_000, 10);
        w.advance(1_000, "other");
        assert_eq!(w.missing(1_000), (995..=1_000).rev().collect::<Vec<_>>());
        // A shorter chain drops what is above the tip.
        fill(&mut w, 1_000, 10);
        w.advance(998, "h998");
        assert_eq!(w.missing(998), vec![856, 855]);
        assert_eq!(w.len(), 142);
    }

    #[test]
    fn early_chains_have_shorter_windows() {
        let mut w = FeeWindow::default();
        w.advance(5, "h5");
        assert_eq!(w.missing(5).len(), 6);
        fill(&mut w, 5, 600);
        assert_eq!(w.mean_fees_btc(5), Some(600.0 / SATS_PER_BTC));
    }
}
