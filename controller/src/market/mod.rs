//! Market inputs: hashprice, energy price, AI value and AI demand — each read through a
//! [`MarketSource`] (a real source, a fixed value, or a trace replay), checked the same way
//! (plausible range, age, clock), and kept by [`Market`], which the planner sees only as a
//! [`MarketSnapshot`].
//!
//! The controller builds it with [`MarketParts::from_config`] and [`Market::new`], runs
//! [`Market::run`] in a task, and reads [`MarketView::snapshot`]; the snapshot's
//! [`MarketSnapshot::planner_inputs`] says whether the planner may run and, if not, why, and
//! [`MarketSnapshot::economics`] gives the figures `GetEconomics` reports.

pub mod ai;
mod build;
pub mod checks;
pub mod config;
pub mod energy;
pub mod engine;
pub mod error;
pub mod feed;
pub mod hashprice;
pub mod http;
pub mod json;
pub mod reading;
pub mod snapshot;
pub mod source;

pub use ai::FirmContract;
pub use checks::PlausibleRanges;
pub use config::{MarketConfig, MarketConfigError, Timing};
pub use engine::{Market, MarketParts, MarketView, Sourced};
pub use error::{Origin, SourceError, SourceErrorKind};
pub use reading::{AiDemand, AiValue, EnergyPrice, GpuWant, Hashprice, Input, Reading};
pub use snapshot::{Economics, Health, InputSnapshot, MarketSnapshot, PlannerInputs};
pub use source::MarketSource;
