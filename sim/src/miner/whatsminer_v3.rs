//! Whatsminer API v3 (being written).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::state::Core;

pub(crate) fn serve(listener: TcpListener, core: Arc<Core>) {
    drop((listener, core));
}
