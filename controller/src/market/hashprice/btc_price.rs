//! The BTC price a hashprice is computed with: mempool's `/api/v1/prices`, a fixed price, or
//! any JSON URL and the field that holds the USD price.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::market::error::SourceError;
use crate::market::feed::{JsonFeed, Location};
use crate::market::http::{self, HttpClient};

/// `[market.hashprice.btc_price]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum BtcPriceConfig {
    /// `GET {url}/api/v1/prices` → `{"time": 1703252411, "USD": 43753, ...}` (mempool's API
    /// docs, "GET Price").
    Mempool {
        url: String,
    },
    Fixed {
        usd: f64,
    },
    /// A JSON document with the price at `field` (dotted path, `data.0.price`) and, if
    /// `time_field` is set, its time there (Unix seconds or RFC 3339).
    Json {
        url: String,
        field: String,
        #[serde(default)]
        time_field: Option<String>,
    },
}

impl BtcPriceConfig {
    /// Checks what can be checked without I/O; `key` is this section's dotted key.
    pub fn validate(&self, key: &str) -> Result<(), (String, String)> {
        match self {
            BtcPriceConfig::Mempool { url } => {
                http::parse_url(url).map_err(|e| (format!("{key}.url"), e))?;
            }
            BtcPriceConfig::Fixed { usd } => {
                if !(usd.is_finite() && *usd > 0.0) {
                    return Err((
                        format!("{key}.usd"),
                        format!("must be a positive price, got {usd}"),
                    ));
                }
            }
            BtcPriceConfig::Json { url, field, .. } => {
                http::parse_url(url).map_err(|e| (format!("{key}.url"), e))?;
                if field.trim().is_empty() {
                    return Err((
                        format!("{key}.field"),
                        "must name the field that holds the price".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A configured BTC price source, ready to fetch.
#[derive(Debug, Clone)]
pub enum BtcPrice {
    Fixed { usd: f64 },
    Feed(JsonFeed),
}

impl BtcPrice {
    pub fn from_config(c: &BtcPriceConfig) -> Result<Self, String> {
        Ok(match c {
            BtcPriceConfig::Mempool { url } => {
                let base = http::parse_url(url)?;
                let url = http::endpoint(&base, "/api/v1/prices")?;
                BtcPrice::Feed(JsonFeed::new(
                    "mempool price",
                    Location::Url(url),
                    "USD".into(),
                    Some("time".into()),
                ))
            }
            BtcPriceConfig::Fixed { usd } => BtcPrice::Fixed { usd: *usd },
            BtcPriceConfig::Json {
                url,
                field,
                time_field,
            } => BtcPrice::Feed(JsonFeed::new(
                "price feed",
                Location::Url(http::parse_url(url)?),
                field.clone(),
                time_field.clone(),
            )),
        })
    }

    /// The price in USD and the time it describes (`now` when the source gives none).
    pub async fn fetch(
        &self,
        client: &HttpClient,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> Result<(f64, DateTime<Utc>), SourceError> {
        match self {
            BtcPrice::Fixed { usd } => Ok((*usd, now)),
            BtcPrice::Feed(feed) => feed.fetch(client, timeout, now).await,
        }
    }
}
