//! One HTTP/1.1 connection to a miner, for the requests of one read or one control call, closed
//! when dropped. A pooled keep-alive connection per REST miner (Braiins, Bitaxe) held its buffers
//! and task between polls — about 20 KiB a miner, the largest share of the agent's memory at
//! 10,000 miners — while a read of several requests on one fresh connection costs one connect,
//! as a cgminer read does. A control call keeps its connection for its command and the read-back
//! that proves it ([`super::Held`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use reqwest::Method;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{HttpReply, HttpRequest};
use crate::miner::MinerAddr;
use crate::miner::error::MinerError;
use crate::miner::transport::{MAX_REPLY, Timeouts};

/// An open connection to one miner's web port. Dropping it closes the connection.
pub struct Session {
    addr: MinerAddr,
    port: u16,
    host: String,
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    timeouts: Timeouts,
    /// Requests answered on it: a request on a connection that has answered one before may meet
    /// the server's keep-alive close, and goes again on a new connection if it was not sent.
    answered: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How a request on a session failed.
pub enum SendError {
    /// The connection was closed before any of the request was written: it may go again on a
    /// new connection, whatever its method.
    NotSent(MinerError),
    /// Written, or partly: whatever the miner did with it is unknown.
    Failed(MinerError),
}

impl SendError {
    pub fn into_error(self) -> MinerError {
        match self {
            SendError::NotSent(e) | SendError::Failed(e) => e,
        }
    }
}

impl Session {
    /// Connects to `addr` on `port` within the connect timeout.
    ///
    /// # Errors
    /// The connect error, typed as the cgminer transport types it.
    pub async fn open(addr: &MinerAddr, port: u16, timeouts: Timeouts) -> Result<Self, MinerError> {
        let socket = addr.socket(port);
        let stream = match tokio::time::timeout(timeouts.connect, TcpStream::connect(&socket)).await
        {
            Err(_) => {
                return Err(MinerError::ConnectTimeout {
                    addr: addr.to_string(),
                    port,
                    after: timeouts.connect,
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(MinerError::Refused {
                    addr: addr.to_string(),
                    port,
                });
            }
            Ok(Err(e)) => {
                return Err(MinerError::Connect {
                    addr: addr.to_string(),
                    port,
                    message: e.to_string(),
                });
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| MinerError::Connect {
                    addr: addr.to_string(),
                    port,
                    message: e.to_string(),
                })?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            addr: addr.clone(),
            port,
            host: socket,
            sender,
            driver,
            timeouts,
            answered: 0,
        })
    }

    /// The port this connection goes to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the miner (or the network) has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Whether a request has been answered on this connection.
    pub fn reused(&self) -> bool {
        self.answered > 0
    }

    /// `GET path` with `headers` on this connection; any status comes back as a reply.
    ///
    /// # Errors
    /// A timeout past the request timeout, or the connection failing.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<HttpReply, MinerError> {
        let mut req = HttpRequest::new(Method::GET, self.port, path);
        for (k, v) in headers {
            req = req.header(k, *v);
        }
        self.send(&req).await.map_err(SendError::into_error)
    }

    /// `req` on this connection (its port aside: the connection's own), within its timeout
    /// (the request timeout when it has none); any status comes back as a reply. A connection that has
    /// answered before and closes before this request is written (the server's keep-alive
    /// ended) is opened again once for it: nothing of the request had gone. A GET that such a
    /// connection closes on without an answer (the server's close crossed it) goes again too:
    /// a read changes nothing. Any other request whose answer was lost is the caller's to judge.
    ///
    /// # Errors
    /// [`SendError::NotSent`] when the connection closed before the request was written and
    /// could not be opened again, [`SendError::Failed`] for a timeout or a connection that
    /// failed after.
    pub async fn send(&mut self, req: &HttpRequest<'_>) -> Result<HttpReply, SendError> {
        if self.reused() && self.is_closed() {
            self.reopen().await.map_err(SendError::NotSent)?;
        }
        let read = req.method == Method::GET;
        match self.send_once(req).await {
            Err(SendError::NotSent(_)) if self.reused() => {
                self.reopen().await.map_err(SendError::NotSent)?;
                self.send_once(req).await
            }
            Err(SendError::Failed(MinerError::Reset { .. })) if read && self.reused() => {
                self.reopen().await.map_err(SendError::NotSent)?;
                self.send_once(req).await
            }
            other => other,
        }
    }

    async fn reopen(&mut self) -> Result<(), MinerError> {
        *self = Session::open(&self.addr, self.port, self.timeouts).await?;
        Ok(())
    }

    async fn send_once(&mut self, request: &HttpRequest<'_>) -> Result<HttpReply, SendError> {
        let total = request.timeout.unwrap_or(self.timeouts.request);
        let what = || request.describe();
        let mut req = http::Request::builder()
            .method(request.method.clone())
            .uri(request.path)
            .header(http::header::HOST, &self.host);
        for (k, v) in &request.headers {
            req = req.header(*k, v);
        }
        let body = request
            .body
            .as_deref()
            .map_or_else(Bytes::new, Bytes::copy_from_slice);
        let req = req.body(Full::new(body)).map_err(|e| {
            SendError::NotSent(MinerError::Other {
                addr: self.addr.to_string(),
                message: format!("{}: {e}", what()),
            })
        })?;
        let work = async {
            if self.sender.ready().await.is_err() {
                return Err(None);
            }
            let resp = match self.sender.try_send_request(req).await {
                Ok(resp) => resp,
                Err(mut e) => {
                    let sent = e.take_message().is_none();
                    let error: Box<dyn std::error::Error + Send + Sync> = e.into_error().into();
                    return Err(if sent { Some(error) } else { None });
                }
            };
            let status = resp.status().as_u16();
            let www_authenticate = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(Some)?;
            Ok((status, www_authenticate, body))
        };
        match tokio::time::timeout(total, work).await {
            Err(_) => Err(SendError::Failed(MinerError::Timeout {
                addr: self.addr.to_string(),
                during: format!("waiting for {}", what()),
                after: total,
            })),
            Ok(Err(None)) => Err(SendError::NotSent(MinerError::Reset {
                addr: self.addr.to_string(),
                during: format!(
                    "{} on port {} (the connection closed before the request went)",
                    what(),
                    self.port
                ),
            })),
            Ok(Err(Some(e))) => Err(SendError::Failed(MinerError::Reset {
                addr: self.addr.to_string(),
                during: format!(
                    "{} on port {} ({})",
                    what(),
                    self.port,
                    pivot_proto::report::error_chain(e.as_ref())
                ),
            })),
            Ok(Ok((status, www_authenticate, body))) => {
                self.answered += 1;
                Ok(HttpReply {
                    status,
                    www_authenticate,
                    body: body.to_bytes().to_vec(),
                })
            }
        }
    }
}
