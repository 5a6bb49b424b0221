//! braiins dialect (being written).

use serde_json::Value;

use super::cgminer::{Request, invalid_command};
use super::state::Core;

pub(crate) fn api(core: &Core, _req: &Request) -> Value {
    invalid_command(core)
}

pub(crate) fn web(
    _core: std::sync::Arc<Core>,
    _req: super::http::HttpRequest,
) -> futures::future::BoxFuture<'static, super::http::HttpResponse> {
    Box::pin(async { super::http::text(http::StatusCode::NOT_FOUND, "not found") })
}
