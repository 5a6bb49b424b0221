//! pivot-jobs: what AI job schedulers say, read the same way by the agent (handing its node over)
//! and the controller (reading AI demand): Slurm's commands and their JSON, Kubernetes pods' GPU
//! requests, and a child-process runner with a timeout and no shell.

pub mod command;
pub mod kube_client;
pub mod kube_pods;
pub mod names;
pub mod slurm;
