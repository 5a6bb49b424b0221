//! The HTTP client market sources share: one connection pool, HTTPS with rustls (ring) and the
//! system's CA roots, a timeout per request, a cap on body size, and errors that name the
//! request but never the credentials or query in a URL.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pivot_proto::report::error_chain;
use tracing::warn;
use url::Url;

use super::error::{Origin, SourceError, SourceErrorKind, excerpt};

/// Largest body a source may send. ERCOT's real-time price file for every settlement point of
/// one interval is about 100 kB; a day of them for one point is far less.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A reply that arrived whole, whatever its status.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The shared client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// Basic-auth credentials for one request (bitcoind's cookie or user and password).
pub struct BasicAuth<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// What a request carries besides its body: credentials for Basic auth, other headers.
#[derive(Default)]
struct Extras<'a> {
    auth: Option<BasicAuth<'a>>,
    headers: &'a [(&'static str, &'a str)],
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS: {0}")]
pub struct ClientError(String);

impl HttpClient {
    pub fn new() -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(Arc::clone(&provider)) {
            Ok(b) => b,
            Err(e) => {
                // Plain HTTP (a self-hosted mempool on the LAN, bitcoind) still works; HTTPS
                // will fail its handshake, naming the unknown issuer.
                warn!(error = %e, "No system CA certificates; HTTPS market sources will fail until they are installed");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ClientError(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = builder.https_or_http().enable_http1().wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self { inner })
    }

    /// GET `url`; any status comes back as a reply.
    pub async fn get(
        &self,
        origin: &Origin,
        url: &Url,
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        self.send(origin, Method::GET, url, None, Extras::default(), timeout)
            .await
    }

    /// GET `url` with extra request headers (an API's user and token); any status comes back
    /// as a reply. Header values never appear in errors.
    pub async fn get_with_headers(
        &self,
        origin: &Origin,
        url: &Url,
        headers: &[(&'static str, &str)],
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        let extras = Extras {
            auth: None,
            headers,
        };
        self.send(origin, Method::GET, url, None, extras, timeout)
            .await
    }

    /// POST a JSON body; any status comes back as a reply.
    pub async fn post_json(
        &self,
        origin: &Origin,
        url: &Url,
        body: Vec<u8>,
        auth: Option<BasicAuth<'_>>,
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        let extras = Extras { auth, headers: &[] };
        self.send(origin, Method::POST, url, Some(body), extras, timeout)
            .await
    }

    /// GET `url` and require a 2xx status.
    pub async fn get_ok(
        &self,
        origin: &Origin,
        url: &Url,
        timeout: Duration,
    ) -> Result<Vec<u8>, SourceError> {
        let reply = self.get(origin, url, timeout).await?;
        require_success(origin, &describe(&Method::GET, url), reply, "")
    }

    async fn send(
        &self,
        origin: &Origin,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
        extras: Extras<'_>,
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        let Extras { auth, headers } = extras;
        let request = describe(&method, url);
        let fail = |kind| SourceError::new(origin, kind);
        let connect = |detail: String| {
            fail(SourceErrorKind::Connect {
                request: request.clone(),
                detail,
            })
        };
        let cut_short = |detail: String, so_far: &[u8]| {
            fail(SourceErrorKind::Body {
                request: request.clone(),
                field: None,
                problem: format!("the reply was cut short or malformed: {detail}"),
                excerpt: excerpt(so_far),
            })
        };
        // Credentials travel in a header, never in the request line.
        let mut bare = url.clone();
        let url_user = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| percent_decode(s);
            (
                decode(url.username()),
                url.password().map(decode).unwrap_or_default(),
            )
        });
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        bare.set_fragment(None);
        let uri: http::Uri = bare
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| connect(format!("not a request URI: {e}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                header::USER_AGENT,
                concat!("pivot-controller/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "*/*");
        let basic = auth
            .map(|a| (a.user.to_owned(), a.password.to_owned()))
            .or(url_user);
        if let Some((user, password)) = basic {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            builder = builder.header(header::AUTHORIZATION, format!("Basic {token}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| connect(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .inner
                .request(req)
                .await
                .map_err(|e| connect(error_chain(&e)))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| cut_short(error_chain(&e), &out))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_BODY_BYTES {
                        return Err(fail(SourceErrorKind::Body {
                            request: request.clone(),
                            field: None,
                            problem: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                            excerpt: excerpt(&out),
                        }));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(HttpReply { status, body: out })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(fail(SourceErrorKind::Timeout { after: timeout })))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits make a byte: h, l < 16.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Turns a non-2xx reply into an error; `hint` is appended to the status (`; check ...`).
pub fn require_success(
    origin: &Origin,
    request: &str,
    reply: HttpReply,
    hint: &str,
) -> Result<Vec<u8>, SourceError> {
    if (200..300).contains(&reply.status) {
        return Ok(reply.body);
    }
    Err(SourceError::new(
        origin,
        SourceErrorKind::Status {
            request: request.to_owned(),
            status: reply.status,
            hint: hint.to_owned(),
            excerpt: excerpt(&reply.body),
        },
    ))
}

/// `GET /api/v1/prices`: the method and path, never the query (it may carry an API key).
pub fn describe(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

/// A URL fit for logs: no user, no password, query values and fragment removed.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    // Both only fail for URLs that cannot have credentials, which then have none to remove.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    if u.query().is_some() {
        let keys: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        u.set_query(None);
        let mut q = u.query_pairs_mut();
        for k in &keys {
            q.append_pair(k, "…");
        }
    }
    u.to_string()
}

/// `base` joined with an absolute API path; a base with a path prefix (a self-hosted mempool
/// behind `/mempool`) keeps it.
pub fn endpoint(base: &Url, path: &str) -> Result<Url, String> {
    let joined = format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    Url::parse(&joined).map_err(|e| format!("`{}` is not a URL: {e}", redact(base)))
}

/// Parses a configured URL: it must be http or https and name a host.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{}` must start with http:// or https://",
            redact(&url)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{}` names no host", redact(&url)));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_credentials_and_query_values() {
        let u =
            Url::parse("https://user:hunter2@prices.example/v1/btc?api_key=s3cret&x=1#f").unwrap();
        let r = redact(&u);
        assert!(
            !r.contains("hunter2") && !r.contains("user") && !r.contains("s3cret"),
            "{r}"
        );
        assert!(
            r.starts_with("https://prices.example/v1/btc?api_key="),
            "{r}"
        );
    }

    #[test]
    fn endpoints_keep_a_base_path() {
        let base = Url::parse("http://node.lan:8999/mempool/").unwrap();
        assert_eq!(
            endpoint(&base, "/api/v1/prices").unwrap().as_str(),
            "http://node.lan:8999/mempool/api/v1/prices"
        );
        let base = Url::parse("https://mempool.space").unwrap();
        assert_eq!(
            endpoint(&base, "/api/v1/blocks").unwrap().as_str(),
            "https://mempool.space/api/v1/blocks"
        );
    }

    #[test]
    fn configured_urls_need_a_web_scheme_and_a_host() {
        assert!(parse_url("https://mempool.space").is_ok());
        assert!(
            parse_url("mempool.space")
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(
            parse_url("ftp://x.example/")
                .unwrap_err()
                .contains("http://")
        );
        assert!(parse_url("file:///etc/passwd").is_err());
        let e = parse_url("ftp://bob:pw@x.example/").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn percent_escapes_in_url_credentials_are_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw0rd"), "p@ss:w0rd");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
