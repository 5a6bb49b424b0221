//! Hashprice from a mempool.space-compatible REST API (mempool.space itself, or an operator's
//! own instance).
//!
//! Shapes, from mempool's API documentation (frontend/src/app/docs/api-docs/api-docs-data.ts)
//! and backend (backend/src/api/mining/mining-routes.ts, repositories/BlocksRepository.ts):
//! - `GET /api/v1/blocks[/:startHeight]`: the 15 blocks up to the tip (or up to `startHeight`),
//!   each with `height`, `id`, `difficulty` and `extras.totalFees` / `extras.reward` (sats).
//! - `GET /api/v1/mining/reward-stats/:blockCount`: sums over the last `blockCount` blocks,
//!   `{"startBlock", "endBlock", "totalReward", "totalFee", "totalTx"}`, the sums as strings
//!   (MySQL DECIMAL).
//! - `GET /api/v1/mining/hashrate/3d`: `{"hashrates": [{"timestamp", "avgHashrate"}], ...,
//!   "currentHashrate", "currentDifficulty"}`, H/s.
//!
//! Fees over 144 blocks cost one request with `reward-stats/144` — the cheapest documented
//! way, and exact (every block, not per-timestamp averages as `blocks/fees/24h` gives for
//! longer spans). It needs the instance to index blocks (mempool's default); an instance
//! that does not can use `fees = "blocks"`: pages of `/api/v1/blocks`, ten requests once,
//! then one per refresh, because fees are kept per height.

use std::time::Duration;

use ::http::Method;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::btc_price::BtcPrice;
use super::fee_window::FeeWindow;
use super::formula::{self, BLOCKS_PER_DAY, SATS_PER_BTC};
use super::{NetworkHashrate, Parts, compose};
use crate::market::error::{Origin, SourceError};
use crate::market::http::{self, HttpClient};
use crate::market::json::{self, JsonProblem};
use crate::market::reading::{Hashprice, Reading};
use crate::market::source::MarketSource;

/// How fees over the last 144 blocks are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MempoolFees {
    /// `/api/v1/mining/reward-stats/144`: one request.
    #[default]
    RewardStats,
    /// Pages of `/api/v1/blocks/:height`, kept per height.
    Blocks,
}

/// Most pages of 15 blocks one refresh reads (144 blocks need 10).
const MAX_PAGES: usize = 12;

pub struct MempoolSource {
    base: Url,
    origin: Origin,
    fees: MempoolFees,
    hashrate: NetworkHashrate,
    price: BtcPrice,
    client: HttpClient,
    timeout: Duration,
    window: FeeWindow,
}

impl MempoolSource {
    pub fn new(
        base: Url,
        fees: MempoolFees,
        hashrate: NetworkHashrate,
        price: BtcPrice,
        client: HttpClient,
        timeout: Duration,
    ) -> Self {
        Self {
            origin: Origin::new("mempool", http::redact(&base)),
            base,
            fees,
            hashrate,
            price,
            client,
            timeout,
            window: FeeWindow::default(),
        }
    }

    async fn get_json(&self, path: &str) -> Result<(Value, String, Vec<u8>), SourceError> {
        let url = http::endpoint(&self.base, path)
            .map_err(|e| JsonProblem::field("url", e).into_error(&self.origin, path, &[]))?;
        let request = http::describe(&Method::GET, &url);
        let body = self.client.get_ok(&self.origin, &url, self.timeout).await?;
        let doc = json::parse(&body).map_err(|p| p.into_error(&self.origin, &request, &body))?;
        Ok((doc, request, body))
    }

    /// Blocks of one `/api/v1/blocks` page.
    async fn blocks_page(&self, path: &str) -> Result<Vec<Block>, SourceError> {
        let (doc, request, body) = self.get_json(path).await?;
        parse_blocks(&doc, self.fees == MempoolFees::Blocks)
            .map_err(|p| p.into_error(&self.origin, &request, &body))
    }

    /// Mean fees per block (BTC) and the number of blocks they were averaged over.
    async fn mean_fees(&mut self, tip: &Block, page: &[Block]) -> Result<(f64, u64), SourceError> {
        match self.fees {
            MempoolFees::RewardStats => {
                let path = format!("/api/v1/mining/reward-stats/{BLOCKS_PER_DAY}");
                let (doc, request, body) = self.get_json(&path).await?;
                reward_stats_mean(&doc).map_err(|p| p.into_error(&self.origin, &request, &body))
            }
            MempoolFees::Blocks => {
                self.window.advance(tip.height, &tip.id);
                self.keep(tip.height, page);
                for _ in 0..MAX_PAGES {
                    let Some(&newest_missing) = self.window.missing(tip.height).first() else {
                        break;
                    };
                    let path = format!("/api/v1/blocks/{newest_missing}");
                    let more = self.blocks_page(&path).await?;
                    let before = self.window.len();
                    self.keep(tip.height, &more);
                    if self.window.len() == before {
                        return Err(JsonProblem::field(
                            "height",
                            format!("the page for height {newest_missing} holds none of the missing blocks"),
                        )
                        .into_error(&self.origin, &format!("GET {path}"), &[]));
                    }
                }
                let n = FeeWindow::heights(tip.height).count() as u64;
                match self.window.mean_fees_btc(tip.height) {
                    Some(mean) => Ok((mean, n)),
                    None => Err(JsonProblem::field(
                        "extras.totalFees",
                        format!(
                            "fees of {} of the last {n} blocks are still missing after {MAX_PAGES} pages",
                            self.window.missing(tip.height).len()
                        ),
                    )
                    .into_error(&self.origin, "GET /api/v1/blocks", &[])),
                }
            }
        }
    }

    fn keep(&mut self, tip: u64, blocks: &[Block]) {
        let window = FeeWindow::heights(tip);
        for b in blocks {
            if let Some(fees) = b.total_fees_sats
                && window.contains(&b.height)
            {
                self.window.insert(b.height, fees, b.id.clone());
            }
        }
    }

    async fn network_hashrate_hs(&self, tip: &Block) -> Result<f64, SourceError> {
        match self.hashrate {
            NetworkHashrate::Difficulty => Ok(formula::hashrate_from_difficulty_hs(tip.difficulty)),
            NetworkHashrate::Measured => {
                let (doc, request, body) = self.get_json("/api/v1/mining/hashrate/3d").await?;
                measured_hashrate(&doc).map_err(|p| p.into_error(&self.origin, &request, &body))
            }
        }
    }
}

#[async_trait]
impl MarketSource<Hashprice> for MempoolSource {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<Hashprice>, SourceError> {
        let page = self.blocks_page("/api/v1/blocks").await?;
        let Some(tip) = page.iter().max_by_key(|b| b.height).cloned() else {
            return Err(JsonProblem::field("", "no blocks in the list").into_error(
                &self.origin,
                "GET /api/v1/blocks",
                b"[]",
            ));
        };
        let hashrate_hs = self.network_hashrate_hs(&tip).await?;
        let (mean_fees_btc, fee_blocks) = self.mean_fees(&tip, &page).await?;
        let (btc_usd, price_at) = self.price.fetch(&self.client, self.timeout, now).await?;
        Ok(compose(
            &self.origin,
            Parts {
                tip_height: tip.height,
                mean_fees_btc,
                fee_blocks,
                btc_usd,
                price_at,
                hashrate_hs,
            },
        ))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    height: u64,
    id: String,
    difficulty: f64,
    total_fees_sats: Option<u64>,
}

fn parse_blocks(doc: &Value, need_fees: bool) -> Result<Vec<Block>, JsonProblem> {
    let Value::Array(items) = doc else {
        return Err(JsonProblem::field("", "expected a list of blocks"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let height = json::whole(b, "height").map_err(|p| indexed(i, p))?;
            let id = match json::at(b, "id") {
                Ok(Value::String(s)) => s.clone(),
                _ => {
                    return Err(JsonProblem::field(
                        &format!("{i}.id"),
                        "missing or not a string",
                    ));
                }
            };
            let difficulty = json::number(b, "difficulty").map_err(|p| indexed(i, p))?;
            if difficulty <= 0.0 {
                return Err(JsonProblem::field(
                    &format!("{i}.difficulty"),
                    format!("{difficulty} is not a positive difficulty"),
                ));
            }
            let total_fees_sats = if need_fees {
                Some(json::whole(b, "extras.totalFees").map_err(|p| indexed(i, p))?)
            } else {
                None
            };
            Ok(Block {
                height,
                id,
                difficulty,
                total_fees_sats,
            })
        })
        .collect()
}

fn indexed(i: usize, p: JsonProblem) -> JsonProblem {
    JsonProblem {
        field: p.field.map(|f| format!("{i}.{f}")),
        problem: p.problem,
    }
}

fn reward_stats_mean(doc: &Value) -> Result<(f64, u64), JsonProblem> {
    let start = json::whole(doc, "startBlock")?;
    let end = json::whole(doc, "endBlock")?;
    let total_fee = json::whole(doc, "totalFee")?;
    let n = end
        .checked_sub(start)
        .map(|d| d + 1)
        .filter(|n| (1..=BLOCKS_PER_DAY).contains(n))
        .ok_or_else(|| {
            JsonProblem::field(
                "endBlock",
                format!("blocks {start} to {end} are not a window of 1 to {BLOCKS_PER_DAY} blocks"),
            )
        })?;
    Ok((total_fee as f64 / n as f64 / SATS_PER_BTC, n))
}

fn measured_hashrate(doc: &Value) -> Result<f64, JsonProblem> {
    let rates = match json::at(doc, "hashrates") {
        Ok(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, r)| json::number(r, "avgHashrate").map_err(|p| indexed(i, p)))
            .collect::<Result<Vec<f64>, _>>()?,
        _ => Vec::new(),
    };
    let hs = if rates.is_empty() {
        json::number(doc, "currentHashrate")?
    } else {
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    if hs > 0.0 {
        Ok(hs)
    } else {
        Err(JsonProblem::field(
            "hashrates",
            format!("{hs} H/s is not a hashrate"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_stats_give_the_mean_fee_per_block() {
        // mempool's documented example for 100 blocks.
        let doc = json::parse(
            br#"{"startBlock":736556,"endBlock":736655,"totalReward":"63811748254","totalFee":"1311748254","totalTx":"164216"}"#,
        )
        .unwrap();
        let (mean, n) = reward_stats_mean(&doc).unwrap();
        assert_eq!(n, 100);
        assert!((mean - 0.131_174_825_4).abs() < 1e-12, "{mean}");
        let doc = json::parse(br#"{"startBlock":10,"endBlock":5,"totalFee":"1"}"#).unwrap();
        assert_eq!(
            reward_stats_mean(&doc).unwrap_err().field.as_deref(),
            Some("endBlock")
        );
        let doc = json::parse(br#"{"startBlock":1,"endBlock":500,"totalFee":"1"}"#).unwrap();
        assert!(reward_stats_mean(&doc).is_err());
    }

    #[test]
    fn block_lists_name_the_bad_element() {
        let doc = json::parse(br#"[{"height":900000,"id":"a","difficulty":1.2e14,"extras":{"totalFees":100}},{"height":-1,"id":"b","difficulty":1}]"#).unwrap();
        let e = parse_blocks(&doc, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("1.height"), "{e:?}");
        let doc = json::parse(br#"[{"height":900000,"id":"a","difficulty":1.2e14}]"#).unwrap();
        assert_eq!(parse_blocks(&doc, false).unwrap()[0].total_fees_sats, None);
        assert_eq!(
            parse_blocks(&doc, true).unwrap_err().field.as_deref(),
            Some("0.extras.totalFees")
        );
        let doc = json::parse(br#"[{"height":1,"id":"a","difficulty":0}]"#).unwrap();
        assert!(parse_blocks(&doc, false).is_err());
        assert!(parse_blocks(&json::parse(b"{}").unwrap(), false).is_err());
    }

    #[test]
    fn measured_hashrate_is_the_mean_of_the_daily_averages() {
        let doc = json::parse(br#"{"hashrates":[{"timestamp":1,"avgHashrate":2e20},{"timestamp":2,"avgHashrate":4e20}],"currentHashrate":9e20}"#).unwrap();
        assert_eq!(measured_hashrate(&doc).unwrap(), 3e20);
        let doc = json::parse(br#"{"hashrates":[],"currentHashrate":9e20}"#).unwrap();
        assert_eq!(measured_hashrate(&doc).unwrap(), 9e20);
        let doc = json::parse(br#"{"hashrates":[{"avgHashrate":-1}]}"#).unwrap();
        assert!(measured_hashrate(&doc).is_err());
    }
}
