//! Test helpers: a forwarder that records what a driver sends to a 4028 API, and the driver
//! options the dialect tests use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::miner::{DriverOptions, Timeouts};

/// What the proxy saw: one name per request, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A forwarder to `to` that records each cgminer-style request it carries (one request per
/// connection, as the 4028 APIs take them) by its `command` or `cmd`, or as `enc` for a
/// Whatsminer encrypted write. Returns the port to send to.
pub async fn recording_proxy(to: SocketAddr) -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let name = loop {
                    let Ok(n) = inbound.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = request.strip_suffix(&[0]).unwrap_or(&request);
                    if let Ok(v) = serde_json::from_slice::<Value>(text) {
                        break ["command", "cmd"]
                            .iter()
                            .find_map(|k| v[*k].as_str())
                            .unwrap_or(if v.get("enc").is_some() { "enc" } else { "" })
                            .to_owned();
                    }
                };
                log.lock().unwrap().push(name);
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = out.write_all(&request).await;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, seen)
}

/// The requests seen whose names are in `names`, in order.
pub fn only(seen: &Seen, names: &[&str]) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|c| names.contains(&c.as_str()))
        .cloned()
        .collect()
}

/// Short timeouts and polls, as the integration tests use.
pub fn options() -> DriverOptions {
    DriverOptions {
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(1500),
        },
        settle: Duration::from_secs(4),
        poll_interval: Duration::from_millis(50),
        slow_request: Duration::from_secs(5),
    }
}
