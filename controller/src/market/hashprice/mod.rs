//! Hashprice sources: a mempool.space-compatible REST API, bitcoind's JSON-RPC (each with a BTC
//! price source), a fixed value, or a trace.

pub mod bitcoind;
pub mod btc_price;
pub mod fee_window;
pub mod formula;
pub mod mempool;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::Origin;
use super::reading::{Hashprice, Reading};
use super::source::TraceConfig;
use btc_price::BtcPriceConfig;
use mempool::MempoolFees;

/// `[market.hashprice]`, by `source`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum HashpriceSourceConfig {
    Mempool {
        /// Base URL of the instance (`https://mempool.space`, `http://umbrel.local:3006`).
        url: String,
        #[serde(default)]
        fees: MempoolFees,
        #[serde(default)]
        network_hashrate: NetworkHashrate,
        /// Defaults to the same instance's `/api/v1/prices`.
        #[serde(default)]
        btc_price: Option<BtcPriceConfig>,
    },
    Bitcoind {
        /// RPC endpoint, `http://127.0.0.1:8332`.
        url: String,
        /// bitcoind's `.cookie` (`__cookie__:<password>`), read at each refresh because
        /// bitcoind writes a new one when it restarts.
        #[serde(default)]
        cookie_file: Option<PathBuf>,
        /// `rpcuser`/`rpcauth` user; the password comes from the environment variable named by
        /// `password_env`, never from this file.
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password_env: Option<String>,
        #[serde(default)]
        network_hashrate: NetworkHashrate,
        btc_price: BtcPriceConfig,
    },
    Fixed {
        usd_per_ph_day: f64,
    },
    Trace(TraceConfig),
}

/// Where the network hashrate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkHashrate {
    /// difficulty × 2^32 ÷ 600 — what the current difficulty pays for.
    #[default]
    Difficulty,
    /// A measured mean: mempool's 3-day `/api/v1/mining/hashrate/3d`, bitcoind's
    /// `getmininginfo.networkhashps` (120 blocks).
    Measured,
}

/// What a chain-reading source measured, before it becomes a hashprice.
#[derive(Debug, Clone, PartialEq)]
pub struct Parts {
    pub tip_height: u64,
    pub mean_fees_btc: f64,
    pub fee_blocks: u64,
    pub btc_usd: f64,
    /// When the price was observed; the reading is as old as its oldest part.
    pub price_at: DateTime<Utc>,
    pub hashrate_hs: f64,
}

/// The hashprice of the next block: its subsidy plus the mean fees, at the price and hashrate
/// measured.
pub fn compose(origin: &Origin, p: Parts) -> Reading<Hashprice> {
    let subsidy_btc =
        formula::subsidy_sats(p.tip_height.saturating_add(1)) as f64 / formula::SATS_PER_BTC;
    let usd_per_ph_day =
        formula::hashprice_usd_per_ph_day(subsidy_btc, p.mean_fees_btc, p.btc_usd, p.hashrate_hs);
    Reading {
        value: Hashprice {
            usd_per_ph_day,
            btc_usd: Some(p.btc_usd),
            network_hashrate_ehs: Some(p.hashrate_hs / 1e18),
            tip_height: Some(p.tip_height),
            subsidy_btc: Some(subsidy_btc),
            mean_fees_btc: Some(p.mean_fees_btc),
            fee_window_blocks: Some(p.fee_blocks),
        },
        at: p.price_at,
        source: origin.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_block_after_a_halving_height_earns_the_halved_subsidy() {
        let p = Parts {
            tip_height: 839_999,
            mean_fees_btc: 0.0,
            fee_blocks: 144,
            btc_usd: 64_000.0,
            price_at: DateTime::UNIX_EPOCH,
            hashrate_hs: 600e18,
        };
        let r = compose(&Origin::new("t", "x"), p.clone());
        assert_eq!(r.value.subsidy_btc, Some(3.125));
        let before = compose(
            &Origin::new("t", "x"),
            Parts {
                tip_height: 839_998,
                ..p
            },
        );
        assert_eq!(before.value.subsidy_btc, Some(6.25));
        assert!((before.value.usd_per_ph_day / r.value.usd_per_ph_day - 2.0).abs() < 1e-12);
        assert_eq!(r.value.network_hashrate_ehs, Some(600.0));
    }
}
