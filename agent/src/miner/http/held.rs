//! The connection a control call keeps: its command, and the reads that prove it, go over one
//! keep-alive connection instead of one connection each (an Antminer sleep was four: the CGI
//! config read, the config write, the cgminer read-back and its config read; a Braiins pause
//! two). Held only while a call runs ([`Held::hold`]); between calls nothing is kept, so an idle
//! fleet holds no connection and no buffers. A miner that closes the connection after each
//! answer (no keep-alive) costs what it did before: the next request opens another.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{HttpClient, HttpReply, HttpRequest, Session};
use crate::miner::MinerAddr;
use crate::miner::error::MinerError;

/// One miner's held connection (web port) and how many calls hold it.
#[derive(Default)]
pub struct Held {
    slot: Mutex<Option<Session>>,
    holders: AtomicUsize,
}

/// While alive, connections put back are kept; when the last guard drops, the kept connection
/// is closed.
pub struct HoldGuard<'a>(&'a Held);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        if self.0.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            drop(self.0.lock().take());
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("holders", &self.holders.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the connections of the requests made until the guard drops.
    pub fn hold(&self) -> HoldGuard<'_> {
        self.holders.fetch_add(1, Ordering::AcqRel);
        HoldGuard(self)
    }

    /// Whether a call holds connections now.
    pub fn is_held(&self) -> bool {
        self.holders.load(Ordering::Acquire) > 0
    }

    /// A connection to `port`: the one kept, if it is to that port and still open, else a new
    /// one. Give it back with [`Held::put_back`] once its requests are done.
    ///
    /// # Errors
    /// When a new connection cannot be made.
    pub async fn session(
        &self,
        client: &HttpClient,
        addr: &MinerAddr,
        port: u16,
    ) -> Result<Session, MinerError> {
        let kept = self.lock().take();
        match kept {
            Some(s) if s.port() == port && !s.is_closed() => Ok(s),
            _ => client.session(addr, port).await,
        }
    }

    /// Keeps `session` for the next request while a call holds; closes it otherwise (or when
    /// one is kept already: a poll and a call that overlapped).
    pub fn put_back(&self, session: Session) {
        if self.is_held() && !session.is_closed() {
            let mut slot = self.lock();
            if slot.is_none() {
                *slot = Some(session);
            }
        }
    }

    /// Sends `req` on the kept connection or a new one; any HTTP status comes back as a reply.
    ///
    /// # Errors
    /// The connection's failure, typed as [`Session::send`] types it.
    pub async fn send(
        &self,
        client: &HttpClient,
        addr: &MinerAddr,
        req: HttpRequest<'_>,
    ) -> Result<HttpReply, MinerError> {
        let mut session = self.session(client, addr, req.port).await?;
        let reply = session
            .send(&req)
            .await
            .map_err(super::session::SendError::into_error)?;
        self.put_back(session);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use reqwest::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::miner::transport::Timeouts;

    /// How the test server treats the requests on one connection.
    #[derive(Clone, Copy)]
    enum Server {
        /// Answers each request and keeps the connection.
        KeepAlive,
        /// Answers with `Connection: close` and closes.
        CloseEach,
        /// Answers the first request, then closes without a word.
        CloseAfterFirst,
        /// Answers the first request; reads the second and closes without answering it.
        DropSecond,
    }

    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: AtomicUsize,
        posts: AtomicUsize,
    }

    async fn read_request(s: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        loop {
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&b[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while got.len() < end + 4 + length {
                    let n = s.read(&mut b).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    got.extend_from_slice(&b[..n]);
                }
                return Some(head);
            }
        }
    }

    async fn server(kind: Server) -> (MinerAddr, u16, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counts.connections.fetch_add(1, Ordering::SeqCst);
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(head) = read_request(&mut s).await {
                        n += 1;
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        if head.starts_with("POST ") {
                            counts.posts.fetch_add(1, Ordering::SeqCst);
                        }
                        if matches!(kind, Server::DropSecond) && n == 2 {
                            return;
                        }
                        let close = if matches!(kind, Server::CloseEach) {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let reply =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{close}\r\nok");
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        if matches!(kind, Server::CloseEach | Server::CloseAfterFirst) {
                            return;
                        }
                    }
                });
            }
        });
        (MinerAddr::new("127.0.0.1"), port, seen)
    }

    fn client() -> HttpClient {
        HttpClient::new(Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(2),
        })
    }

    fn get(port: u16) -> HttpRequest<'static> {
        HttpRequest::new(Method::GET, port, "/conf")
    }

    fn post(port: u16) -> HttpRequest<'static> {
        HttpRequest::new(Method::POST, port, "/set").json_body(&serde_json::json!({"mode": 1}))
    }

    fn counts(seen: &Seen) -> (usize, usize, usize) {
        (
            seen.connections.load(Ordering::SeqCst),
            seen.requests.load(Ordering::SeqCst),
            seen.posts.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn a_held_call_keeps_one_connection_and_nothing_is_kept_after_it() {
        let (addr, port, seen) = server(Server::KeepAlive).await;
        let (http, held) = (client(), Held::default());
        {
            let _call = held.hold();
            for req in [get(port), post(port), get(port)] {
                assert_eq!(held.send(&http, &addr, req).await.unwrap().body, b"ok");
            }
            assert_eq!(counts(&seen), (1, 3, 1));
        }
        assert!(held.lock().is_none(), "the connection outlived the call");
        // Without a call holding, each request has a connection of its own.
        held.send(&http, &addr, get(port)).await.unwrap();
        held.send(&http, &addr, get(port)).await.unwrap();
        assert_eq!(counts(&seen), (3, 5, 1));
    }

    #[tokio::test]
    async fn a_server_that_closes_after_each_answer_costs_a_connection_a_request() {
        let (addr, port, seen) = server(Server::CloseEach).await;
        let (http, held) = (client(), Held::default());
        let _call = held.hold();
        for req in [get(port), post(port), get(port), get(port)] {
            assert_eq!(held.send(&http, &addr, req).await.unwrap().body, b"ok");
            // The server's close reaches the kept connection before the next request, or the
            // request finds it closed on the way: either way the request goes on a new one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts(&seen), (4, 4, 1));
    }

    #[tokio::test]
    async fn a_kept_connection_closed_between_requests_is_opened_again_and_the_write_sent_once() {
        let (addr, port, seen) = server(Server::CloseAfterFirst).await;
        let (http, held) = (client(), Held::default());
        let _call = held.hold();
        held.send(&http, &addr, get(port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            held.send(&http, &addr, post(port)).await.unwrap().body,
            b"ok"
        );
        assert_eq!(counts(&seen), (2, 2, 1));
    }

    #[tokio::test]
    async fn a_read_the_server_closes_on_goes_again_but_a_write_is_not_repeated() {
        let (addr, port, seen) = server(Server::DropSecond).await;
        let (http, held) = (client(), Held::default());
        let _call = held.hold();
        held.send(&http, &addr, get(port)).await.unwrap();
        // The second request on the connection is read and dropped: a GET goes again, on a
        // new connection, and is answered there.
        assert_eq!(
            held.send(&http, &addr, get(port)).await.unwrap().body,
            b"ok"
        );
        assert_eq!(counts(&seen), (2, 3, 0));
        // A POST the server read and dropped may have been carried out: not sent again, and
        // the error names the miner.
        let e = held.send(&http, &addr, post(port)).await.unwrap_err();
        assert!(matches!(e, MinerError::Reset { .. }), "{e}");
        assert!(!e.sent_nothing(), "{e}");
        assert!(
            e.to_string().contains("127.0.0.1") && e.to_string().contains("POST /set"),
            "{e}"
        );
        assert_eq!(counts(&seen), (2, 4, 1));
    }

    #[tokio::test]
    async fn a_miner_that_refuses_is_reported_as_sent_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let held = Held::default();
        let _call = held.hold();
        let e = held
            .send(&client(), &MinerAddr::new("127.0.0.1"), post(port))
            .await
            .unwrap_err();
        assert!(e.sent_nothing(), "{e}");
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }
}
