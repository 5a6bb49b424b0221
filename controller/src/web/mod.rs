//! The controller's web listener: the dashboard, its JSON API, live events and `/metrics`.
//!
//! The JSON API is a second door to FleetService, not a second implementation: every endpoint
//! authenticates the caller with the controller's [`Authenticator`](crate::auth::Authenticator)
//! (a bearer token, or a session cookie made from one), then calls the same FleetService method
//! gRPC callers reach, with the caller attached ([`Authenticated`](crate::auth::Authenticated)),
//! and renders the answer with [`views`](crate::views), the rendering `pivotctl --json` prints.
//! So the page shows the numbers `pivotctl status --json` shows, and is refused what the caller's
//! role may not do, by the same check.

mod actions;
mod api;
mod caller;
mod error;
mod events;
pub mod metrics;
mod session;
mod windows;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::Controller;
use crate::api::fleet::FleetApi;

pub use actions::PinBody;
pub use error::WebError;
pub use session::Sessions;

/// `[web]` in the controller's configuration: where the dashboard listens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address of the dashboard, its JSON API and `/metrics` (plain HTTP: bearer tokens are
    /// accepted on it only with `[auth] allow_plaintext_tokens`, behind a TLS-terminating proxy).
    pub listen: SocketAddr,
    /// A browser session made from a token ends after this long unused, seconds.
    #[serde(default = "default_session_idle_s")]
    pub session_idle_s: u64,
}

fn default_session_idle_s() -> u64 {
    12 * 3600
}

impl WebConfig {
    /// A listener on `listen` with the defaults.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            session_idle_s: default_session_idle_s(),
        }
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(60..=30 * 86_400).contains(&self.session_idle_s) {
            return Err((
                "web.session_idle_s".into(),
                format!(
                    "must be between 60 and 2592000 seconds, got {}",
                    self.session_idle_s
                ),
            ));
        }
        Ok(())
    }
}

/// What every handler reads.
#[derive(Debug, Clone)]
pub struct Web {
    pub ctl: Arc<Controller>,
    pub fleet: FleetApi,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<metrics::Metrics>,
}

impl Web {
    /// The web state for `ctl`; starts counting its events for `/metrics` at once.
    pub fn new(ctl: Arc<Controller>, session_idle: Duration) -> Self {
        let metrics = Arc::new(metrics::Metrics::new());
        metrics::count_events(Arc::clone(&metrics), ctl.subscribe());
        Self {
            fleet: FleetApi::new(Arc::clone(&ctl)),
            ctl,
            sessions: Arc::new(Sessions::new(session_idle)),
            metrics,
        }
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // One binary, one version of the page: no stale script after an upgrade.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The routes of the web listener.
pub fn router(web: Web) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/metrics", get(metrics::handler))
        .route(
            "/api/session",
            get(caller::whoami)
                .post(caller::login)
                .delete(caller::logout),
        )
        .route("/api/status", get(api::status))
        .route("/api/economics", get(api::economics))
        .route("/api/plan", get(api::plan))
        .route("/api/devices", get(api::devices))
        .route("/api/history", get(api::history))
        .route(
            "/api/overrides",
            get(api::overrides).post(actions::set_override),
        )
        .route("/api/overrides/clear", post(actions::clear_override))
        .route(
            "/api/dr",
            get(api::demand_responses).post(actions::start_dr),
        )
        .route("/api/dr/cancel", post(actions::cancel_dr))
        .route("/api/decisions", get(api::decisions))
        .route("/api/windows", get(windows::handler))
        .route("/api/events", get(events::handler))
        .with_state(web)
}

/// Serves the web listener until `shutdown` completes.
pub async fn serve(
    ctl: Arc<Controller>,
    config: &WebConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let web = Web::new(ctl, Duration::from_secs(config.session_idle_s));
    axum::serve(listener, router(web))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests;
