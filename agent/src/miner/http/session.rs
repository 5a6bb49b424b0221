//! One poll's HTTP/1.1 connection to a miner: opened for the requests of one read, closed when
//! the read is done. A pooled keep-alive connection per REST miner (Braiins, Bitaxe) held its
//! buffers and task between polls — about 20 KiB a miner, the largest share of the agent's
//! memory at 10,000 miners — while a read of several requests on one fresh connection costs one
//! connect, as a cgminer read does.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::HttpReply;
use crate::miner::MinerAddr;
use crate::miner::error::MinerError;
use crate::miner::transport::{MAX_REPLY, Timeouts};

/// An open connection for one poll's GET requests. Dropping it closes the connection.
pub struct Session<'a> {
    addr: &'a MinerAddr,
    port: u16,
    host: String,
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
    timeouts: Timeouts,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl<'a> Session<'a> {
    /// Connects to `addr` on `port` within the connect timeout.
    ///
    /// # Errors
    /// The connect error, typed as the cgminer transport types it.
    pub async fn open(
        addr: &'a MinerAddr,
        port: u16,
        timeouts: Timeouts,
    ) -> Result<Self, MinerError> {
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
            addr,
            port,
            host: socket,
            sender,
            driver,
            timeouts,
        })
    }

    /// `GET path` with `headers` on this connection; any status comes back as a reply.
    ///
    /// # Errors
    /// A timeout past the request timeout, or the connection failing.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, MinerError> {
        let total: Duration = self.timeouts.request;
        let what = || format!("GET {path}");
        let mut req = http::Request::get(path).header(http::header::HOST, &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).map_err(|e| MinerError::Other {
            addr: self.addr.to_string(),
            message: format!("{}: {e}", what()),
        })?;
        let work = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let www_authenticate = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_REPLY).collect().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, www_authenticate, body))
        };
        match tokio::time::timeout(total, work).await {
            Err(_) => Err(MinerError::Timeout {
                addr: self.addr.to_string(),
                during: format!("waiting for {}", what()),
                after: total,
            }),
            Ok(Err(e)) => Err(MinerError::Reset {
                addr: self.addr.to_string(),
                during: format!("{} on port {} ({e})", what(), self.port),
            }),
            Ok(Ok((status, www_authenticate, body))) => Ok(HttpReply {
                status,
                www_authenticate,
                body: body.map(|b| b.to_bytes().to_vec()).unwrap_or_default(),
            }),
        }
    }
}
