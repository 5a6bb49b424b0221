//! Hashprice arithmetic (DESIGN.md): USD per PH/s per day = (subsidy + mean fees per block) ×
//! 144 × BTC price ÷ network hashrate in PH/s, with hashrate ≈ difficulty × 2^32 ÷ 600 H/s.

/// Satoshis per bitcoin.
pub const SATS_PER_BTC: f64 = 100_000_000.0;
/// Blocks per day at the 600 s target; also Luxor's fee-averaging window.
pub const BLOCKS_PER_DAY: u64 = 144;
const HALVING_INTERVAL: u64 = 210_000;
const INITIAL_SUBSIDY_SATS: u64 = 50 * 100_000_000;

/// Block subsidy at `height`, satoshis: 50 BTC halved every 210,000 blocks (3.125 BTC from
/// 840,000), as Bitcoin Core's `GetBlockSubsidy` defines it — zero after 64 halvings.
pub fn subsidy_sats(height: u64) -> u64 {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        0
    } else {
        INITIAL_SUBSIDY_SATS >> halvings
    }
}

/// Network hashrate implied by a difficulty, H/s: on average difficulty × 2^32 hashes find a
/// block, and a block comes every 600 s.
pub fn hashrate_from_difficulty_hs(difficulty: f64) -> f64 {
    difficulty * 4_294_967_296.0 / 600.0
}

/// Hashprice in USD per PH/s per day.
pub fn hashprice_usd_per_ph_day(
    subsidy_btc: f64,
    mean_fees_btc: f64,
    btc_usd: f64,
    network_hashrate_hs: f64,
) -> f64 {
    let network_ph = network_hashrate_hs / 1e15;
    (subsidy_btc + mean_fees_btc) * BLOCKS_PER_DAY as f64 * btc_usd / network_ph
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subsidy_follows_the_halvings() {
        assert_eq!(subsidy_sats(0), 5_000_000_000);
        assert_eq!(subsidy_sats(209_999), 5_000_000_000);
        assert_eq!(subsidy_sats(210_000), 2_500_000_000);
        assert_eq!(subsidy_sats(839_999), 625_000_000);
        assert_eq!(subsidy_sats(840_000), 312_500_000);
        assert_eq!(subsidy_sats(1_050_000), 156_250_000);
        assert_eq!(subsidy_sats(64 * 210_000), 0);
        assert_eq!(subsidy_sats(u64::MAX), 0);
    }

    #[test]
    fn a_2026_network_gives_a_2026_hashprice() {
        // Difficulty 1.3e14 ≈ 930 EH/s; 3.125 BTC + 0.025 BTC fees at 100,000 USD.
        let hs = hashrate_from_difficulty_hs(1.3e14);
        assert!((hs / 1e18 - 930.6).abs() < 0.1, "{}", hs / 1e18);
        let hp = hashprice_usd_per_ph_day(3.125, 0.025, 100_000.0, hs);
        // 3.15 × 144 × 100,000 / 930,576 PH/s
        assert!((hp - 48.744).abs() < 0.01, "{hp}");
    }

    proptest! {
        #[test]
        fn hashprice_scales_with_price_and_inversely_with_hashrate(
            btc in 1_000.0f64..1e7, eh in 10.0f64..1e5, fees in 0.0f64..5.0, k in 1.5f64..4.0
        ) {
            let base = hashprice_usd_per_ph_day(3.125, fees, btc, eh * 1e18);
            let dearer = hashprice_usd_per_ph_day(3.125, fees, btc * k, eh * 1e18);
            let harder = hashprice_usd_per_ph_day(3.125, fees, btc, eh * k * 1e18);
            prop_assert!(base.is_finite() && base > 0.0);
            prop_assert!((dearer / base - k).abs() < 1e-9);
            prop_assert!((base / harder - k).abs() < 1e-9);
        }

        #[test]
        fn subsidy_never_grows_with_height(a in 0u64..20_000_000, b in 0u64..20_000_000) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(subsidy_sats(hi) <= subsidy_sats(lo));
        }
    }
}
