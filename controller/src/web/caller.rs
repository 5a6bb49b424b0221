//! Who calls the web listener: a bearer token in `Authorization`, or a session cookie made from
//! one, authenticated by the controller's own `Authenticator` on every request.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::time::Instant;

use super::session::{SessionAccess, same_secret};
use super::{Web, WebError};
use crate::auth::{Authenticated, Credentials, Principal, Right};

/// The session cookie's name.
pub const COOKIE: &str = "pivot_session";
/// The header a changing call must carry: the session's CSRF token, or (without a session) any
/// value — a page on another origin cannot set a custom header without a CORS preflight, which
/// this listener never grants.
pub const CSRF_HEADER: &str = "x-pivot-csrf";

/// An authenticated caller of the web listener.
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Principal,
    /// The session the caller came with, if it came with a cookie.
    pub session: Option<SessionAccess>,
}

impl Caller {
    /// A gRPC request carrying this caller, for the FleetService methods.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.extensions_mut().insert(Authenticated(self.who.clone()));
        r
    }

    /// Refuses a changing call that does not prove it comes from the page (see [`CSRF_HEADER`]).
    pub fn check_csrf(&self, headers: &HeaderMap) -> Result<(), WebError> {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match (&self.session, sent) {
            (_, None) => Err(WebError::bad_request(format!(
                "a changing call needs the `{CSRF_HEADER}` header (the dashboard sends it)"
            ))),
            (Some(s), Some(v)) if !same_secret(&s.csrf, v) => Err(WebError {
                status: StatusCode::FORBIDDEN,
                code: tonic::Code::PermissionDenied,
                message: format!("`{CSRF_HEADER}` does not match this session; reload the page"),
            }),
            _ => Ok(()),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn unauthenticated(message: impl Into<String>) -> WebError {
    WebError::from(tonic::Status::unauthenticated(message.into()))
}

/// The bearer token in `Authorization`, read as the gRPC listener reads it.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, WebError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| unauthenticated("authorization: not a readable header value"))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| unauthenticated("authorization: expected `Bearer <token>`"))?;
    Ok(Some(token.trim().to_owned()))
}

/// Authenticates the request's token or session with the controller's authenticator.
pub fn authenticate(web: &Web, headers: &HeaderMap) -> Result<Caller, WebError> {
    let (token, session) = match bearer(headers)? {
        Some(t) => (Some(t), None),
        None => match cookie(headers, COOKIE) {
            Some(id) => {
                let s = web.sessions.get(id, Instant::now()).ok_or_else(|| {
                    unauthenticated("your session ended: sign in again with your token")
                })?;
                (Some(s.token.clone()), Some(s))
            }
            None => (None, None),
        },
    };
    let creds = Credentials {
        bearer: token,
        cert_cn: None,
        // The web listener is plain HTTP: tokens on it follow `allow_plaintext_tokens`.
        tls: false,
    };
    let who = web.ctl.auth.authenticate(&creds)?;
    Ok(Caller { who, session })
}

impl FromRequestParts<Web> for Caller {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        authenticate(web, &parts.headers)
    }
}

fn whoami_json(c: &Caller) -> serde_json::Value {
    serde_json::json!({
        "name": c.who.name,
        "role": c.who.role.as_str(),
        "open": c.who.open,
        "may_read": crate::auth::check(&c.who, Right::Read).is_ok(),
        "may_operate": crate::auth::check(&c.who, Right::Operate).is_ok(),
        "csrf": c.session.as_ref().map(|s| s.csrf.clone()),
    })
}

/// `GET /api/session`: who the page is signed in as.
pub async fn whoami(caller: Caller) -> Json<serde_json::Value> {
    Json(whoami_json(&caller))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

fn session_cookie(value: &str, max_age_s: u64, headers: &HeaderMap) -> Option<HeaderValue> {
    // Behind a TLS proxy the cookie is for HTTPS only.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    ))
    .ok()
}

/// `POST /api/session {"token": …}`: a session cookie for a valid token.
pub async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Response, WebError> {
    let creds = Credentials {
        bearer: Some(body.token.trim().to_owned()),
        cert_cn: None,
        tls: false,
    };
    let who = web.ctl.auth.authenticate(&creds)?;
    let (id, csrf) = web
        .sessions
        .create(creds.bearer.as_deref().unwrap_or_default(), Instant::now());
    tracing::info!(who = %who.name, role = %who.role, "Web session started");
    let caller = Caller {
        who,
        session: Some(SessionAccess {
            token: String::new(),
            csrf,
        }),
    };
    let max_age = web.sessions.idle().as_secs();
    let mut response = Json(whoami_json(&caller)).into_response();
    if let Some(c) = session_cookie(&id, max_age, &headers) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(response)
}

/// `DELETE /api/session`: ends the session and clears its cookie.
pub async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.end(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = session_cookie("", 0, &headers) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; pivot_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "pivot"), None);
    }

    #[test]
    fn authorization_is_read_as_grpc_reads_it() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer pvt_x "),
        );
        assert_eq!(bearer(&h).unwrap().as_deref(), Some("pvt_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        let e = bearer(&h).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(e.message.contains("Bearer"), "{}", e.message);
    }
}
