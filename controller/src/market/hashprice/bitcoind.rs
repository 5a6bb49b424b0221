//! Hashprice from a Bitcoin node over JSON-RPC, with a configured BTC price.
//!
//! Calls (Bitcoin Core RPC help): `getblockchaininfo` → `blocks`, `bestblockhash`,
//! `difficulty`; `getblockstats <height> ["height","totalfee","blockhash"]` → fees in sats
//! (batched: the first refresh asks for 144 blocks in one HTTP request, later ones only for new
//! blocks); `getmininginfo` → `networkhashps` when the measured hashrate is configured.
//! Authentication is HTTP basic, from the cookie file (`__cookie__:<password>`) or a user and a
//! password from the environment. Errors come as HTTP 401/403 with an empty body, or as a
//! JSON-RPC `error` object (HTTP 500 for single legacy calls, HTTP 200 inside a batch).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use url::Url;

use super::btc_price::BtcPrice;
use super::fee_window::FeeWindow;
use super::formula::{self, BLOCKS_PER_DAY};
use super::{NetworkHashrate, Parts, compose};
use crate::market::error::{Origin, SourceError, SourceErrorKind, excerpt};
use crate::market::http::{self, BasicAuth, HttpClient};
use crate::market::json::{self, JsonProblem};
use crate::market::reading::{Hashprice, Reading};
use crate::market::source::MarketSource;

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the node is authenticated to.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcAuth {
    Cookie(PathBuf),
    Password { user: String, password: Secret },
}

pub struct BitcoindSource {
    url: Url,
    origin: Origin,
    auth: RpcAuth,
    hashrate: NetworkHashrate,
    price: BtcPrice,
    client: HttpClient,
    timeout: Duration,
    window: FeeWindow,
    next_id: u64,
}

impl BitcoindSource {
    pub fn new(
        url: Url,
        auth: RpcAuth,
        hashrate: NetworkHashrate,
        price: BtcPrice,
        client: HttpClient,
        timeout: Duration,
    ) -> Self {
        Self {
            origin: Origin::new("bitcoind", http::redact(&url)),
            url,
            auth,
            hashrate,
            price,
            client,
            timeout,
            window: FeeWindow::default(),
            next_id: 1,
        }
    }

    async fn credentials(&self) -> Result<(String, String), SourceError> {
        match &self.auth {
            RpcAuth::Password { user, password } => Ok((user.clone(), password.0.clone())),
            RpcAuth::Cookie(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    self.fail(SourceErrorKind::Read {
                        detail: format!(
                            "cookie file {}: {e}; is bitcoind running, and may pivot read its data directory?",
                            path.display()
                        ),
                    })
                })?;
                let (user, password) = text.trim().split_once(':').ok_or_else(|| {
                    self.fail(SourceErrorKind::Read {
                        detail: format!("cookie file {} is not `user:password`", path.display()),
                    })
                })?;
                Ok((user.to_owned(), password.to_owned()))
            }
        }
    }

    fn fail(&self, kind: SourceErrorKind) -> SourceError {
        SourceError::new(&self.origin, kind)
    }

    /// Calls, batched when more than one; results in the order asked.
    async fn call(&mut self, calls: &[(&str, Value)]) -> Result<Vec<Value>, SourceError> {
        let first_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(calls.len() as u64);
        let requests: Vec<Value> = calls
            .iter()
            .zip(first_id..)
            .map(|((method, params), id)| {
                json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params})
            })
            .collect();
        let what = match calls {
            [(m, _)] => (*m).to_owned(),
            [(m, _), ..] => format!("{m} ×{}", calls.len()),
            [] => return Ok(Vec::new()),
        };
        let request = format!("POST {what}");
        let body = if requests.len() == 1 {
            requests[0].to_string()
        } else {
            Value::Array(requests).to_string()
        };
        let (user, password) = self.credentials().await?;
        let auth = BasicAuth {
            user: &user,
            password: &password,
        };
        let reply = self
            .client
            .post_json(
                &self.origin,
                &self.url,
                body.into_bytes(),
                Some(auth),
                self.timeout,
            )
            .await?;
        let bad = |p: JsonProblem, body: &[u8]| p.into_error(&self.origin, &request, body);
        if !(200..300).contains(&reply.status) {
            // Legacy single calls report RPC errors with HTTP 500 and a JSON body.
            if let Ok(doc) = json::parse(&reply.body)
                && let Some(e) = rpc_error(&doc, &what)
            {
                return Err(self.fail(e));
            }
            let hint = match reply.status {
                401 => {
                    "; bitcoind refused the credentials: check cookie_file, or user and the password in password_env"
                }
                403 => "; bitcoind refused this client (rpcallowip)",
                _ => "",
            };
            return Err(self.fail(SourceErrorKind::Status {
                request,
                status: reply.status,
                hint: hint.to_owned(),
                excerpt: excerpt(&reply.body),
            }));
        }
        let doc = json::parse(&reply.body).map_err(|p| bad(p, &reply.body))?;
        let replies: Vec<&Value> = match (&doc, calls.len()) {
            (Value::Array(items), n) if n > 1 => items.iter().collect(),
            (Value::Object(_), 1) => vec![&doc],
            _ => {
                return Err(bad(
                    JsonProblem::field("", format!("expected {} JSON-RPC replies", calls.len())),
                    &reply.body,
                ));
            }
        };
        let mut out = Vec::with_capacity(calls.len());
        for ((method, _), id) in calls.iter().zip(first_id..) {
            let r = replies
                .iter()
                .find(|r| r.get("id").and_then(Value::as_u64) == Some(id))
                .ok_or_else(|| {
                    bad(
                        JsonProblem::field("id", format!("no reply with id {id} ({method})")),
                        &reply.body,
                    )
                })?;
            if let Some(e) = rpc_error(r, method) {
                return Err(self.fail(e));
            }
            match r.get("result") {
                Some(v) if !v.is_null() => out.push(v.clone()),
                _ => {
                    return Err(bad(
                        JsonProblem::field("result", format!("missing in the reply to {method}")),
                        &reply.body,
                    ));
                }
            }
        }
        Ok(out)
    }

    fn body_error(&self, method: &str, result: &Value, p: JsonProblem) -> SourceError {
        p.into_error(
            &self.origin,
            &format!("POST {method}"),
            result.to_string().as_bytes(),
        )
    }

    async fn fill_fee_window(&mut self, tip: u64) -> Result<(), SourceError> {
        let missing = self.window.missing(tip);
        for chunk in missing.chunks(BLOCKS_PER_DAY as usize) {
            let calls: Vec<(&str, Value)> = chunk
                .iter()
                .map(|h| {
                    (
                        "getblockstats",
                        json!([h, ["height", "totalfee", "blockhash"]]),
                    )
                })
                .collect();
            let results = self.call(&calls).await?;
            for (h, stats) in chunk.iter().zip(&results) {
                let parsed = (|| {
                    let height = json::whole(stats, "height")?;
                    if height != *h {
                        return Err(JsonProblem::field(
                            "height",
                            format!("asked for block {h}, got {height}"),
                        ));
                    }
                    let fees = json::whole(stats, "totalfee")?;
                    let hash = json::at(stats, "blockhash")?
                        .as_str()
                        .ok_or_else(|| JsonProblem::field("blockhash", "not a string"))?
                        .to_owned();
                    Ok((fees, hash))
                })();
                let (fees, hash) =
                    parsed.map_err(|p| self.body_error("getblockstats", stats, p))?;
                self.window.insert(*h, fees, hash);
            }
        }
        Ok(())
    }
}

/// The RPC error in a reply, if it carries one.
fn rpc_error(reply: &Value, method: &str) -> Option<SourceErrorKind> {
    let e = reply.get("error").filter(|e| !e.is_null())?;
    Some(SourceErrorKind::Rpc {
        method: method.to_owned(),
        code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
        message: e.get("message").and_then(Value::as_str).map_or_else(
            || excerpt(e.to_string().as_bytes()),
            |m| excerpt(m.as_bytes()),
        ),
    })
}

#[async_trait]
impl MarketSource<Hashprice> for BitcoindSource {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<Hashprice>, SourceError> {
        let info = self
            .call(&[("getblockchaininfo", json!([]))])
            .await?
            .remove(0);
        let parsed = (|| {
            let tip = json::whole(&info, "blocks")?;
            let hash = json::at(&info, "bestblockhash")?
                .as_str()
                .ok_or_else(|| JsonProblem::field("bestblockhash", "not a string"))?
                .to_owned();
            let difficulty = json::number(&info, "difficulty")?;
            if difficulty <= 0.0 {
                return Err(JsonProblem::field(
                    "difficulty",
                    format!("{difficulty} is not a positive difficulty"),
                ));
            }
            Ok((tip, hash, difficulty))
        })();
        let (tip, tip_hash, difficulty) =
            parsed.map_err(|p| self.body_error("getblockchaininfo", &info, p))?;
        self.window.advance(tip, &tip_hash);
        self.fill_fee_window(tip).await?;
        let hashrate_hs = match self.hashrate {
            NetworkHashrate::Difficulty => formula::hashrate_from_difficulty_hs(difficulty),
            NetworkHashrate::Measured => {
                let mining = self.call(&[("getmininginfo", json!([]))]).await?.remove(0);
                json::number(&mining, "networkhashps")
                    .map_err(|p| self.body_error("getmininginfo", &mining, p))?
            }
        };
        let mean_fees_btc = self.window.mean_fees_btc(tip).ok_or_else(|| {
            self.fail(SourceErrorKind::NoValue {
                detail: format!(
                    "fees of {} of the last {BLOCKS_PER_DAY} blocks are missing",
                    self.window.missing(tip).len()
                ),
            })
        })?;
        let (btc_usd, price_at) = self.price.fetch(&self.client, self.timeout, now).await?;
        Ok(compose(
            &self.origin,
            Parts {
                tip_height: tip,
                mean_fees_btc,
                fee_blocks: FeeWindow::heights(tip).count() as u64,
                btc_usd,
                price_at,
                hashrate_hs,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_are_read_from_the_reply() {
        let r = json::parse(br#"{"result":null,"error":{"code":-8,"message":"Target block height 900001 after current tip 900000"},"id":3}"#).unwrap();
        let e = rpc_error(&r, "getblockstats").unwrap().to_string();
        assert!(
            e.contains("getblockstats") && e.contains("-8") && e.contains("after current tip"),
            "{e}"
        );
        let ok = json::parse(br#"{"result":{"blocks":1},"error":null,"id":1}"#).unwrap();
        assert!(rpc_error(&ok, "x").is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        let a = RpcAuth::Password {
            user: "pivot".into(),
            password: Secret::new("hunter2".into()),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
