//! Domain types shared by agent and controller, and their checked conversions from the wire.
//!
//! Conversions from `v1` messages return [`FieldError`] naming the offending field (as a dotted
//! path such as `intents[2].miner.mode`), which the gRPC layer turns into `InvalidArgument`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::v1;

/// A wire message that does not convert to a domain type: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {problem}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `intent.gpu.power_cap_w`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Prefixes the field path, for errors coming up from nested messages.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    fn missing(field: &str) -> Self {
        Self::new(field, "required but missing")
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The firmware family a miner speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum MinerDialect {
    Antminer,
    Braiins,
    Luxos,
    WhatsminerV2,
    WhatsminerV3,
    Bitaxe,
}

impl MinerDialect {
    pub const ALL: [MinerDialect; 6] = [
        MinerDialect::Antminer,
        MinerDialect::Braiins,
        MinerDialect::Luxos,
        MinerDialect::WhatsminerV2,
        MinerDialect::WhatsminerV3,
        MinerDialect::Bitaxe,
    ];

    /// The name used on command lines and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            MinerDialect::Antminer => "antminer",
            MinerDialect::Braiins => "braiins",
            MinerDialect::Luxos => "luxos",
            MinerDialect::WhatsminerV2 => "whatsminer-v2",
            MinerDialect::WhatsminerV3 => "whatsminer-v3",
            MinerDialect::Bitaxe => "bitaxe",
        }
    }

    pub fn to_proto(self) -> v1::MinerDialect {
        match self {
            MinerDialect::Antminer => v1::MinerDialect::Antminer,
            MinerDialect::Braiins => v1::MinerDialect::Braiins,
            MinerDialect::Luxos => v1::MinerDialect::Luxos,
            MinerDialect::WhatsminerV2 => v1::MinerDialect::WhatsminerV2,
            MinerDialect::WhatsminerV3 => v1::MinerDialect::WhatsminerV3,
            MinerDialect::Bitaxe => v1::MinerDialect::Bitaxe,
        }
    }

    pub fn from_proto(value: i32, field: &str) -> Result<Self, FieldError> {
        match v1::MinerDialect::try_from(value) {
            Ok(v1::MinerDialect::Antminer) => Ok(MinerDialect::Antminer),
            Ok(v1::MinerDialect::Braiins) => Ok(MinerDialect::Braiins),
            Ok(v1::MinerDialect::Luxos) => Ok(MinerDialect::Luxos),
            Ok(v1::MinerDialect::WhatsminerV2) => Ok(MinerDialect::WhatsminerV2),
            Ok(v1::MinerDialect::WhatsminerV3) => Ok(MinerDialect::WhatsminerV3),
            Ok(v1::MinerDialect::Bitaxe) => Ok(MinerDialect::Bitaxe),
            Ok(v1::MinerDialect::Unspecified) => Err(FieldError::missing(field)),
            Err(_) => Err(FieldError::new(
                field,
                format!("unknown miner dialect {value}"),
            )),
        }
    }
}

impl fmt::Display for MinerDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown dialect name.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown miner dialect `{0}` (expected one of antminer, braiins, luxos, whatsminer-v2, whatsminer-v3, bitaxe)"
)]
pub struct UnknownDialect(pub String);

impl FromStr for MinerDialect {
    type Err = UnknownDialect;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MinerDialect::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDialect(s.to_owned()))
    }
}

/// What a miner is doing, as read from it. Never guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MinerState {
    Mining,
    Sleeping,
    Ramping,
    Faulted,
    Unknown,
}

impl MinerState {
    pub fn as_str(self) -> &'static str {
        match self {
            MinerState::Mining => "mining",
            MinerState::Sleeping => "sleeping",
            MinerState::Ramping => "ramping",
            MinerState::Faulted => "faulted",
            MinerState::Unknown => "unknown",
        }
    }

    pub fn to_proto(self) -> v1::MinerState {
        match self {
            MinerState::Mining => v1::MinerState::Mining,
            MinerState::Sleeping => v1::MinerState::Sleeping,
            MinerState::Ramping => v1::MinerState::Ramping,
            MinerState::Faulted => v1::MinerState::Faulted,
            MinerState::Unknown => v1::MinerState::Unknown,
        }
    }

    /// Unknown and unspecified values map to `Unknown`: a reading is never upgraded to a guess.
    pub fn from_proto(value: i32) -> Self {
        match v1::MinerState::try_from(value) {
            Ok(v1::MinerState::Mining) => MinerState::Mining,
            Ok(v1::MinerState::Sleeping) => MinerState::Sleeping,
            Ok(v1::MinerState::Ramping) => MinerState::Ramping,
            Ok(v1::MinerState::Faulted) => MinerState::Faulted,
            _ => MinerState::Unknown,
        }
    }
}

impl fmt::Display for MinerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a host is handed to AI jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    Released,
    Drained,
}

impl WorkloadState {
    pub fn to_proto(self) -> v1::WorkloadState {
        match self {
            WorkloadState::Released => v1::WorkloadState::Released,
            WorkloadState::Drained => v1::WorkloadState::Drained,
        }
    }

    pub fn from_proto(value: i32, field: &str) -> Result<Self, FieldError> {
        match v1::WorkloadState::try_from(value) {
            Ok(v1::WorkloadState::Released) => Ok(WorkloadState::Released),
            Ok(v1::WorkloadState::Drained) => Ok(WorkloadState::Drained),
            Ok(v1::WorkloadState::Unspecified) => Err(FieldError::missing(field)),
            Err(_) => Err(FieldError::new(
                field,
                format!("unknown workload state {value}"),
            )),
        }
    }
}

/// What a miner should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum MinerTarget {
    /// Hash, at the given power target or at the mode it had before it slept.
    Run { power_target_w: Option<u32> },
    /// Hashboards off.
    Sleep,
}

impl MinerTarget {
    /// What a confirmed intent with this target made of the miner: asleep, or mining (at full
    /// power or at a power target).
    pub fn confirmed_state(self) -> MinerState {
        match self {
            MinerTarget::Sleep => MinerState::Sleeping,
            MinerTarget::Run { .. } => MinerState::Mining,
        }
    }

    pub fn to_proto(self) -> v1::MinerTarget {
        match self {
            MinerTarget::Run { power_target_w } => v1::MinerTarget {
                mode: v1::MinerMode::Run as i32,
                power_target_w,
            },
            MinerTarget::Sleep => v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            },
        }
    }

    pub fn from_proto(m: &v1::MinerTarget, field: &str) -> Result<Self, FieldError> {
        match v1::MinerMode::try_from(m.mode) {
            Ok(v1::MinerMode::Run) => {
                if m.power_target_w == Some(0) {
                    return Err(FieldError::new(
                        format!("{field}.power_target_w"),
                        "must be positive; use MINER_MODE_SLEEP to stop a miner",
                    ));
                }
                Ok(MinerTarget::Run {
                    power_target_w: m.power_target_w,
                })
            }
            Ok(v1::MinerMode::Sleep) => {
                if m.power_target_w.is_some() {
                    return Err(FieldError::new(
                        format!("{field}.power_target_w"),
                        "not allowed with MINER_MODE_SLEEP",
                    ));
                }
                Ok(MinerTarget::Sleep)
            }
            Ok(v1::MinerMode::Unspecified) => Err(FieldError::missing(&format!("{field}.mode"))),
            Err(_) => Err(FieldError::new(
                format!("{field}.mode"),
                format!("unknown miner mode {}", m.mode),
            )),
        }
    }
}

/// The state one device should be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    Miner(MinerTarget),
    Gpu { power_cap_w: u32 },
    Workload { state: WorkloadState },
}

/// Desired state of one device, with its generation and lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub device_id: String,
    pub generation: u64,
    pub lease_expires_at: DateTime<Utc>,
    pub target: Target,
    pub reason: String,
    pub phase: u32,
    /// The plan this intent belongs to; empty for intents from no plan.
    #[serde(default)]
    pub plan_id: String,
}

impl Intent {
    /// Whether the lease is still valid at `now`.
    pub fn lease_valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.lease_expires_at
    }

    pub fn to_proto(&self) -> v1::Intent {
        let target = match self.target {
            Target::Miner(m) => v1::intent::Target::Miner(m.to_proto()),
            Target::Gpu { power_cap_w } => v1::intent::Target::Gpu(v1::GpuTarget { power_cap_w }),
            Target::Workload { state } => v1::intent::Target::Workload(v1::WorkloadTarget {
                state: state.to_proto() as i32,
            }),
        };
        v1::Intent {
            device_id: self.device_id.clone(),
            generation: self.generation,
            lease_expires_at: Some(timestamp_to_proto(self.lease_expires_at)),
            target: Some(target),
            reason: self.reason.clone(),
            phase: self.phase,
            plan_id: self.plan_id.clone(),
        }
    }

    /// Checks an intent from the wire. `field` is the path of the message (e.g. `intents[3]`).
    pub fn from_proto(m: &v1::Intent, field: &str) -> Result<Self, FieldError> {
        let device_id = non_empty(&m.device_id, &format!("{field}.device_id"))?;
        if m.generation == 0 {
            return Err(FieldError::new(
                format!("{field}.generation"),
                "must be at least 1",
            ));
        }
        let lease_field = format!("{field}.lease_expires_at");
        let lease = m
            .lease_expires_at
            .as_ref()
            .ok_or_else(|| FieldError::missing(&lease_field))?;
        let lease_expires_at = timestamp_from_proto(lease, &lease_field)?;
        let target = match &m.target {
            None => return Err(FieldError::missing(&format!("{field}.target"))),
            Some(v1::intent::Target::Miner(t)) => {
                Target::Miner(MinerTarget::from_proto(t, &format!("{field}.miner"))?)
            }
            Some(v1::intent::Target::Gpu(g)) => {
                if g.power_cap_w == 0 {
                    return Err(FieldError::new(
                        format!("{field}.gpu.power_cap_w"),
                        "must be positive",
                    ));
                }
                Target::Gpu {
                    power_cap_w: g.power_cap_w,
                }
            }
            Some(v1::intent::Target::Workload(w)) => Target::Workload {
                state: WorkloadState::from_proto(w.state, &format!("{field}.workload.state"))?,
            },
        };
        Ok(Intent {
            device_id,
            generation: m.generation,
            lease_expires_at,
            target,
            reason: m.reason.clone(),
            phase: m.phase,
            plan_id: m.plan_id.clone(),
        })
    }
}

/// Where an intent is on its way to the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentPhase {
    Pending,
    Applied,
    Confirmed,
    Failed,
    Rejected,
}

impl IntentPhase {
    pub fn to_proto(self) -> v1::IntentPhase {
        match self {
            IntentPhase::Pending => v1::IntentPhase::Pending,
            IntentPhase::Applied => v1::IntentPhase::Applied,
            IntentPhase::Confirmed => v1::IntentPhase::Confirmed,
            IntentPhase::Failed => v1::IntentPhase::Failed,
            IntentPhase::Rejected => v1::IntentPhase::Rejected,
        }
    }

    pub fn from_proto(value: i32, field: &str) -> Result<Self, FieldError> {
        match v1::IntentPhase::try_from(value) {
            Ok(v1::IntentPhase::Pending) => Ok(IntentPhase::Pending),
            Ok(v1::IntentPhase::Applied) => Ok(IntentPhase::Applied),
            Ok(v1::IntentPhase::Confirmed) => Ok(IntentPhase::Confirmed),
            Ok(v1::IntentPhase::Failed) => Ok(IntentPhase::Failed),
            Ok(v1::IntentPhase::Rejected) => Ok(IntentPhase::Rejected),
            Ok(v1::IntentPhase::Unspecified) => Err(FieldError::missing(field)),
            Err(_) => Err(FieldError::new(
                field,
                format!("unknown intent phase {value}"),
            )),
        }
    }

    /// Whether no further status will follow for this generation.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            IntentPhase::Confirmed | IntentPhase::Failed | IntentPhase::Rejected
        )
    }
}

/// Requires a non-empty string field.
pub fn non_empty(value: &str, field: &str) -> Result<String, FieldError> {
    if value.trim().is_empty() {
        Err(FieldError::missing(field))
    } else {
        Ok(value.to_owned())
    }
}

/// Requires a finite number (no NaN or infinity) in an optional field.
pub fn finite(value: Option<f64>, field: &str) -> Result<Option<f64>, FieldError> {
    match value {
        Some(v) if !v.is_finite() => Err(FieldError::new(
            field,
            format!("{v} is not a finite number"),
        )),
        other => Ok(other),
    }
}

pub fn timestamp_to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn timestamp_from_proto(
    t: &prost_types::Timestamp,
    field: &str,
) -> Result<DateTime<Utc>, FieldError> {
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| FieldError::new(field, format!("nanos {} out of range", t.nanos)))?;
    DateTime::from_timestamp(t.seconds, nanos)
        .ok_or_else(|| FieldError::new(field, format!("seconds {} out of range", t.seconds)))
}

pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn duration_from_proto(d: &prost_types::Duration, field: &str) -> Result<Duration, FieldError> {
    let secs =
        u64::try_from(d.seconds).map_err(|_| FieldError::new(field, "must not be negative"))?;
    let nanos = u32::try_from(d.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| FieldError::new(field, format!("nanos {} out of range", d.nanos)))?;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease() -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }
    }

    #[test]
    fn intent_round_trips() {
        let i = Intent {
            device_id: "miner/127.0.0.1:4028".into(),
            generation: 7,
            lease_expires_at: DateTime::from_timestamp(1_800_000_000, 5).unwrap(),
            target: Target::Miner(MinerTarget::Run {
                power_target_w: Some(3200),
            }),
            reason: "economic".into(),
            phase: 2,
            plan_id: "plan-9".into(),
        };
        assert_eq!(Intent::from_proto(&i.to_proto(), "intent").unwrap(), i);
    }

    #[test]
    fn missing_target_names_the_field() {
        let m = v1::Intent {
            device_id: "gpu/0".into(),
            generation: 1,
            lease_expires_at: Some(lease()),
            ..Default::default()
        };
        let e = Intent::from_proto(&m, "intents[0]").unwrap_err();
        assert_eq!(e.field, "intents[0].target");
    }

    #[test]
    fn unknown_enum_value_names_the_field() {
        let m = v1::Intent {
            device_id: "miner/a".into(),
            generation: 1,
            lease_expires_at: Some(lease()),
            target: Some(v1::intent::Target::Miner(v1::MinerTarget {
                mode: 99,
                power_target_w: None,
            })),
            ..Default::default()
        };
        let e = Intent::from_proto(&m, "intent").unwrap_err();
        assert_eq!(e.field, "intent.miner.mode");
        assert!(e.problem.contains("99"));
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("intent.miner.mode"));
    }

    #[test]
    fn sleep_with_power_target_is_rejected() {
        let m = v1::MinerTarget {
            mode: v1::MinerMode::Sleep as i32,
            power_target_w: Some(100),
        };
        assert!(MinerTarget::from_proto(&m, "t").is_err());
    }

    #[test]
    fn dialect_names_parse() {
        for d in MinerDialect::ALL {
            assert_eq!(d.as_str().parse::<MinerDialect>().unwrap(), d);
            assert_eq!(
                MinerDialect::from_proto(d.to_proto() as i32, "d").unwrap(),
                d
            );
        }
        assert!("cgminer".parse::<MinerDialect>().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_intents_never_panic(
            device in ".{0,8}", generation in any::<u64>(), secs in any::<i64>(), nanos in any::<i32>(),
            which in 0u8..4, mode in any::<i32>(), watts in proptest::option::of(any::<u32>()),
        ) {
            let target = match which {
                0 => None,
                1 => Some(v1::intent::Target::Miner(v1::MinerTarget { mode, power_target_w: watts })),
                2 => Some(v1::intent::Target::Gpu(v1::GpuTarget { power_cap_w: watts.unwrap_or(0) })),
                _ => Some(v1::intent::Target::Workload(v1::WorkloadTarget { state: mode })),
            };
            let m = v1::Intent {
                device_id: device,
                generation,
                lease_expires_at: Some(prost_types::Timestamp { seconds: secs, nanos }),
                target,
                reason: String::new(),
                phase: 0,
                plan_id: String::new(),
            };
            if let Ok(i) = Intent::from_proto(&m, "i") {
                prop_assert_eq!(Intent::from_proto(&i.to_proto(), "i").unwrap(), i);
            }
        }
    }
}
