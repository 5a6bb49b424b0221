//! What this agent drives: the miners its configuration names (ranges expanded, dialects
//! detected, identities read) and its GPUs, each with a stable device id, the limits intents are
//! checked against, and the actuator that applies them.

pub mod gpus;
mod miners;

pub use miners::*;
