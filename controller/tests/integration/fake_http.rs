//! A local HTTP server for market sources: replies by path (status, body, content type, delay),
//! a JSON-RPC node, and a log of every request so a test can say "nothing else was asked".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A canned reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn csv(body: impl Into<Vec<u8>>) -> Self {
        Self {
            content_type: "text/csv",
            ..Self::json(body)
        }
    }

    pub fn html(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: "text/html",
            ..Self::json(body)
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A recorded reply from controller/testdata/market.
pub fn testdata(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/market")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn testdata_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/market")
        .join(name)
}

/// Makes a reply for paths no fixed reply covers (generated pages); `None` is a 404.
pub type Generator = Arc<dyn Fn(&Request0) -> Option<Reply> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    generator: Option<Generator>,
    log: Arc<Mutex<Vec<Request0>>>,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request0 {
    #[allow(dead_code)] // shown in a failing test's Debug output
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// Every header, names lower-case (for sources that authenticate with their own headers).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request0 {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeHttp {
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeHttp {
    pub async fn start(generator: Option<Generator>) -> Self {
        let shared = Shared {
            replies: Arc::default(),
            generator,
            log: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.shared
            .replies
            .lock()
            .unwrap()
            .insert(path.to_owned(), reply);
    }

    /// Every request since the last call, and forgets them.
    pub fn take_log(&self) -> Vec<Request0> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }

    pub fn take_paths(&self) -> Vec<String> {
        self.take_log().into_iter().map(|r| r.path).collect()
    }
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let request = Request0 {
        method,
        path: path.clone(),
        authorization,
        headers,
        body,
    };
    s.log.lock().unwrap().push(request.clone());
    let fixed = s.replies.lock().unwrap().get(&path).cloned();
    let reply = fixed.or_else(|| s.generator.as_ref().and_then(|g| g(&request)));
    let Some(r) = reply else {
        return (StatusCode::NOT_FOUND, "no such path in this fake").into_response();
    };
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    Response::builder()
        .status(r.status)
        .header(header::CONTENT_TYPE, r.content_type)
        .body(Body::from(r.body))
        .unwrap()
}

/// A server that promises `declared` bytes, sends `sent`, and hangs up: a truncated body.
pub async fn truncating_server(declared: usize, sent: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(sent).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}
