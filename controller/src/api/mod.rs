//! The controller's gRPC server: AgentService, FleetService, health and reflection on one port.

pub mod agent;
pub mod fleet;

use std::future::Future;
use std::sync::Arc;

use pivot_proto::v1::agent_service_server::AgentServiceServer;
use pivot_proto::v1::fleet_service_server::FleetServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::Controller;

/// Largest message the controller accepts from an agent (a hello from an agent with 10,000
/// miners fits), and the largest answer it sends.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Largest FleetService request: refused before anything is decoded, let alone stored.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the controller's gRPC API on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes.
pub async fn serve(
    ctl: Arc<Controller>,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<agent::AgentApi>>()
        .await;
    health
        .set_serving::<FleetServiceServer<fleet::FleetApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pivot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            AgentServiceServer::new(agent::AgentApi::new(Arc::clone(&ctl)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            FleetServiceServer::new(fleet::FleetApi::new(ctl))
                // Requests are small (the largest, a policy, is limited to 64 KiB); answers
                // about a large fleet are not.
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("TLS file {path}: {source}")]
pub struct TlsFileError {
    pub path: String,
    pub source: std::io::Error,
}

/// Reads the configured PEM files into a server TLS configuration.
pub fn server_tls(
    files: &crate::config::ServerTlsFiles,
) -> Result<tonic::transport::ServerTlsConfig, TlsFileError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TlsFileError {
            path: p.display().to_string(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&files.cert_file)?,
        read(&files.key_file)?,
    ));
    if let Some(ca) = &files.client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}
