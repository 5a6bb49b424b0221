//! pivot-controller's integration tests: one binary (each file under tests/ would link the
//! crate again), one module per area.

// Helpers outside #[test] functions are test code too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod failed_moves;
mod fake_http;
mod hostile;
mod market;
mod status_burst;
mod watch_lag;

use std::sync::Arc;

use pivot_controller::Controller;
use tonic::transport::Channel;

/// Serves `ctl`'s gRPC API on a loopback port of its own and connects a channel to it.
async fn serve(ctl: &Arc<Controller>) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pivot_controller::api::serve(
        Arc::clone(ctl),
        listener,
        None,
        std::future::pending(),
    ));
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}
