//! The HTTP client market sources share: one connection pool, HTTPS with rustls (ring), a
//! timeout per request, a cap on body size, and errors that name the request but never the
//! credentials in a URL.

use std::time::Duration;

use reqwest::{Method, Url};

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
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

/// Basic-auth credentials for one request (bitcoind's cookie or user and password).
pub struct BasicAuth<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

impl HttpClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        // reqwest is built without its own crypto provider (it would bring aws-lc-rs and a C
        // toolchain); the process-wide default is ring, which tonic already uses. An Err only
        // says that a provider is installed already, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let inner = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("pivot-controller/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { inner })
    }

    /// GET `url`; any status comes back as a reply.
    pub async fn get(
        &self,
        origin: &Origin,
        url: &Url,
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        self.send(origin, Method::GET, url, None, None, timeout)
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
        self.send(origin, Method::POST, url, Some(body), auth, timeout)
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
        auth: Option<BasicAuth<'_>>,
        timeout: Duration,
    ) -> Result<HttpReply, SourceError> {
        let request = describe(&method, url);
        let fail = |kind| SourceError::new(origin, kind);
        let transport = |e: reqwest::Error| {
            // reqwest's message repeats the URL, query and credentials included; ours names
            // the request and the origin holds the redacted URL.
            let e = e.without_url();
            fail(if e.is_timeout() {
                SourceErrorKind::Timeout { after: timeout }
            } else if e.is_connect() || e.is_request() {
                SourceErrorKind::Connect {
                    request: request.clone(),
                    detail: error_chain(&e),
                }
            } else {
                SourceErrorKind::Body {
                    request: request.clone(),
                    field: None,
                    problem: format!("the reply was cut short or malformed: {}", error_chain(&e)),
                    excerpt: String::new(),
                }
            })
        };
        let mut builder = self
            .inner
            .request(method.clone(), url.clone())
            .timeout(timeout);
        if let Some(body) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        if let Some(auth) = auth {
            builder = builder.basic_auth(auth.user, Some(auth.password));
        }
        let mut response = builder.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(fail(SourceErrorKind::Body {
                    request,
                    field: None,
                    problem: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                    excerpt: excerpt(&body),
                }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpReply { status, body })
    }
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
    Url::parse(&joined).map_err(|e| format!("`{joined}` is not a URL: {e}"))
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

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
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
}
