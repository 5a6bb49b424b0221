//! A small HTTP/1.1 server (hyper) for the dialects with a web API: Antminer CGI, Braiins REST,
//! Bitaxe AxeOS. Faults `hang` and `close` apply here as on the TCP API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::cgminer::hang;
use super::faults::Fault;
use super::state::Core;

/// Largest request body accepted (the Antminer config is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// One request, body collected.
#[derive(Debug)]
pub(crate) struct HttpRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A response with a full body.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// A dialect's web API.
pub(crate) type WebHandler = fn(Arc<Core>, HttpRequest) -> BoxFuture<'static, HttpResponse>;

/// Accept connections until the miner shuts down.
pub(crate) fn serve(listener: TcpListener, core: Arc<Core>, handler: WebHandler) {
    tokio::spawn(async move {
        let mut stop = core.shutdown_signal();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { break },
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(stream, Arc::clone(&core), handler));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
    });
}

async fn connection(stream: TcpStream, core: Arc<Core>, handler: WebHandler) {
    if core.is_rebooting() || core.has_fault(&Fault::CloseWithoutReply) {
        return;
    }
    let service_core = Arc::clone(&core);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let core = Arc::clone(&service_core);
        async move {
            if core.has_fault(&Fault::Hang) {
                hang(&core).await;
            }
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok::<_, Infallible>(text(StatusCode::PAYLOAD_TOO_LARGE, "too large"));
                }
            };
            let request = HttpRequest {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body,
            };
            Ok(handler(core, request).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut stop = core.shutdown_signal();
    tokio::select! {
        _ = conn => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
