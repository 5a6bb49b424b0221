//! Feeds: a document at a URL or in a file, and the JSON feed that reads one number (and
//! optionally its time) out of it — BTC prices, AI spot prices, energy prices.

use std::path::PathBuf;
use std::time::Duration;

use ::http::Method;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use url::Url;

use super::error::{Origin, SourceError, SourceErrorKind};
use super::http::{self, HttpClient};
use super::json;
use super::reading::Reading;
use super::source::MarketSource;

/// Where a feed is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Url(Url),
    File(PathBuf),
}

impl Location {
    /// Exactly one of `url` and `file`; errors name the key under `key`.
    pub fn from_config(
        url: Option<&str>,
        file: Option<&PathBuf>,
        key: &str,
    ) -> Result<Self, (String, String)> {
        match (url, file) {
            (Some(u), None) => http::parse_url(u)
                .map(Location::Url)
                .map_err(|e| (format!("{key}.url"), e)),
            (None, Some(f)) => Ok(Location::File(f.clone())),
            (Some(_), Some(_)) => Err((key.to_owned(), "set `url` or `file`, not both".to_owned())),
            (None, None) => Err((key.to_owned(), "needs `url` or `file`".to_owned())),
        }
    }

    /// For logs: the URL without credentials, or the path.
    pub fn display(&self) -> String {
        match self {
            Location::Url(u) => http::redact(u),
            Location::File(p) => p.display().to_string(),
        }
    }

    /// Fetches or reads the whole document; the first value describes the request for errors.
    pub async fn read(
        &self,
        client: &HttpClient,
        origin: &Origin,
        timeout: Duration,
    ) -> Result<(String, Vec<u8>), SourceError> {
        match self {
            Location::Url(url) => {
                let body = client.get_ok(origin, url, timeout).await?;
                Ok((http::describe(&Method::GET, url), body))
            }
            Location::File(path) => {
                let body = tokio::fs::read(path).await.map_err(|e| {
                    SourceError::new(
                        origin,
                        SourceErrorKind::Read {
                            detail: format!("{}: {e}", path.display()),
                        },
                    )
                })?;
                Ok((format!("read {}", path.display()), body))
            }
        }
    }
}

/// One number out of a JSON document, with its time if the document has one.
#[derive(Debug, Clone)]
pub struct JsonFeed {
    pub location: Location,
    /// Dotted path (`data.0.price`).
    pub field: String,
    pub time_field: Option<String>,
    pub origin: Origin,
}

impl JsonFeed {
    pub fn new(name: &str, location: Location, field: String, time_field: Option<String>) -> Self {
        Self {
            origin: Origin::new(name, location.display()),
            location,
            field,
            time_field,
        }
    }

    /// The number, and the time it describes (`now` when the feed gives none).
    pub async fn fetch(
        &self,
        client: &HttpClient,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> Result<(f64, DateTime<Utc>), SourceError> {
        let (request, body) = self.location.read(client, &self.origin, timeout).await?;
        let bad = |p: json::JsonProblem| p.into_error(&self.origin, &request, &body);
        let doc = json::parse(&body).map_err(bad)?;
        let value = json::number(&doc, &self.field).map_err(bad)?;
        let at = match &self.time_field {
            Some(f) => json::time(&doc, f).map_err(bad)?,
            None => now,
        };
        Ok((value, at))
    }
}

/// A market input read as one number from a JSON feed (energy price, AI value).
pub struct JsonNumberSource<V> {
    feed: JsonFeed,
    client: HttpClient,
    timeout: Duration,
    make: fn(f64) -> V,
}

impl<V> JsonNumberSource<V> {
    pub fn new(feed: JsonFeed, client: HttpClient, timeout: Duration, make: fn(f64) -> V) -> Self {
        Self {
            feed,
            client,
            timeout,
            make,
        }
    }
}

#[async_trait]
impl<V: Send> MarketSource<V> for JsonNumberSource<V> {
    fn origin(&self) -> &Origin {
        &self.feed.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<V>, SourceError> {
        let (n, at) = self.feed.fetch(&self.client, self.timeout, now).await?;
        Ok(Reading {
            value: (self.make)(n),
            at,
            source: self.feed.origin.to_string(),
        })
    }
}
