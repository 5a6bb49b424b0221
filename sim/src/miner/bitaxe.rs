//! Bitaxe AxeOS (being written).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::http::{HttpRequest, HttpResponse, text};
use super::state::Core;

pub(crate) fn web(_core: Arc<Core>, _req: HttpRequest) -> BoxFuture<'static, HttpResponse> {
    Box::pin(async { text(http::StatusCode::NOT_FOUND, "not found") })
}
