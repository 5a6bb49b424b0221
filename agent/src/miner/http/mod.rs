//! HTTP to miners' web APIs (Antminer CGI, Braiins REST, Bitaxe AxeOS): one shared client with a
//! connection pool, per-request timeouts, and errors that name the miner.

pub mod digest;
pub mod held;
pub mod session;

pub use held::Held;
pub use session::Session;

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::MinerAddr;
use super::cgminer::parse;
use super::error::{MinerError, snippet};
use super::transport::{MAX_REPLY, Timeouts};

/// A shared HTTP client; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    timeouts: Timeouts,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as JSON (read tolerantly: miners' web servers share their API's habits).
    pub fn json(&self, addr: &MinerAddr, request: &str) -> Result<Value, MinerError> {
        if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
            return Ok(v);
        }
        parse::parse_reply(&self.body).map_err(|e| MinerError::Malformed {
            addr: addr.to_string(),
            command: request.to_owned(),
            problem: e.to_string(),
            snippet: snippet(&self.body),
        })
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: Method,
    pub port: u16,
    pub path: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    /// Overrides the client's total timeout (slow CGIs).
    pub timeout: Option<Duration>,
}

impl<'a> HttpRequest<'a> {
    pub fn new(method: Method, port: u16, path: &'a str) -> Self {
        Self {
            method,
            port,
            path,
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    #[must_use]
    pub fn json_body(mut self, v: &Value) -> Self {
        self.body = Some(v.to_string().into_bytes());
        self.headers
            .push(("content-type", "application/json".into()));
        self
    }

    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl HttpClient {
    pub fn new(timeouts: Timeouts) -> Self {
        // No idle connection is kept: what goes through this client is rare per miner (detection,
        // identify), while an idle pooled connection holds its buffers and task — about 25 KiB
        // each — for every REST miner identified at start, some 80 MiB at 10,000 miners
        // (heaptrack, issue 12). Polls use a `Session` of their own, control calls the one they
        // hold while they run (`Held`).
        let inner = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { inner, timeouts }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A connection for one poll's requests, closed when dropped (see [`Session`]).
    ///
    /// # Errors
    /// When the miner cannot be connected to.
    pub async fn session(&self, addr: &MinerAddr, port: u16) -> Result<Session, MinerError> {
        Session::open(addr, port, self.timeouts).await
    }

    /// Sends one request; any HTTP status comes back as a reply (callers judge it).
    pub async fn send(
        &self,
        addr: &MinerAddr,
        req: HttpRequest<'_>,
    ) -> Result<HttpReply, MinerError> {
        let url = format!("{}{}", addr.http_base(req.port), req.path);
        let what = req.describe();
        let total = req.timeout.unwrap_or(self.timeouts.request);
        let mut b = self.inner.request(req.method.clone(), &url).timeout(total);
        for (k, v) in &req.headers {
            b = b.header(*k, v);
        }
        if let Some(body) = req.body {
            b = b.body(body);
        }
        let resp = b
            .send()
            .await
            .map_err(|e| map_error(addr, req.port, &what, total, &e))?;
        let status = resp.status().as_u16();
        let www_authenticate = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| map_error(addr, req.port, &what, total, &e))?;
        let mut body = body.to_vec();
        body.truncate(MAX_REPLY);
        Ok(HttpReply {
            status,
            www_authenticate,
            body,
        })
    }

    /// Sends and requires a 2xx; 401/403 become `AuthRejected`, others `Http`.
    pub async fn send_ok(
        &self,
        addr: &MinerAddr,
        req: HttpRequest<'_>,
    ) -> Result<HttpReply, MinerError> {
        let what = req.describe();
        let reply = self.send(addr, req).await?;
        check_status(addr, &what, reply)
    }
}

/// Maps a non-2xx reply to a typed error.
pub fn check_status(
    addr: &MinerAddr,
    what: &str,
    reply: HttpReply,
) -> Result<HttpReply, MinerError> {
    match reply.status {
        200..=299 => Ok(reply),
        401 | 403 => Err(MinerError::AuthRejected {
            addr: addr.to_string(),
            what: what.to_owned(),
            detail: format!("HTTP {}: {}", reply.status, snippet(&reply.body)),
        }),
        s => Err(MinerError::Http {
            addr: addr.to_string(),
            request: what.to_owned(),
            status: s,
            snippet: snippet(&reply.body),
        }),
    }
}

fn map_error(
    addr: &MinerAddr,
    port: u16,
    what: &str,
    total: Duration,
    e: &reqwest::Error,
) -> MinerError {
    // The error and its causes, lower case, for matching.
    let chain = pivot_proto::report::error_chain(e).to_ascii_lowercase();
    if e.is_timeout() {
        MinerError::Timeout {
            addr: addr.to_string(),
            during: format!("waiting for {what}"),
            after: total,
        }
    } else if e.is_connect() {
        if chain.contains("refused") {
            MinerError::Refused {
                addr: addr.to_string(),
                port,
            }
        } else if chain.contains("timed out") {
            MinerError::ConnectTimeout {
                addr: addr.to_string(),
                port,
                after: total,
            }
        } else {
            MinerError::Connect {
                addr: addr.to_string(),
                port,
                message: chain,
            }
        }
    } else if chain.contains("reset") || chain.contains("closed") || chain.contains("incomplete") {
        MinerError::Reset {
            addr: addr.to_string(),
            during: format!("{what} ({chain})"),
        }
    } else {
        MinerError::Other {
            addr: addr.to_string(),
            message: format!("{what}: {chain}"),
        }
    }
}
