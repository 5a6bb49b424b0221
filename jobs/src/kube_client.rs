//! A Kubernetes client from a kubeconfig file or the pod's in-cluster account, with a timeout on
//! every request and kube's own retries off: the caller decides what a 429 means (a
//! PodDisruptionBudget saying "not now" is a result to report, not to hide in a retry loop).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no kubeconfig configured and not running in a cluster: {source}; set the kubeconfig path"
    )]
    InCluster {
        source: kube::config::InClusterError,
    },
    #[error("cannot build a Kubernetes client: {source}")]
    Client { source: kube::Error },
}

/// A client for `kubeconfig` (its `context`, or its current one), or for the in-cluster service
/// account when no file is given.
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    timeout: Duration,
) -> Result<kube::Client, KubeSetupError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc_err = |source| KubeSetupError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kc_err)?;
            let options = KubeConfigOptions {
                context: context.map(str::to_owned),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(kc_err)?
        }
        None => kube::Config::incluster().map_err(|source| KubeSetupError::InCluster { source })?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|source| KubeSetupError::Client { source })
}

/// Whether a failed API call may succeed if tried again later: throttling and PDB refusals
/// (429), conflicts (409), server trouble (5xx), and the network. Not: not found, forbidden,
/// invalid.
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => matches!(status.code, 409 | 429) || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The HTTP code of an API refusal, if it was one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
