//! Where held intents are kept: `intents.json` in the state directory, written before anything
//! is applied, and checked when it is read back exactly as an intent from the wire is checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pivot_proto::model::Intent;
use serde::{Deserialize, Serialize};

use super::held::HeldRecord;
use crate::state::{StateDir, StateError, read_json, write_atomic};

/// The file's name in the state directory.
pub const INTENTS_FILE: &str = "intents.json";

/// The highest generation the agent takes: the controller keeps generations in SQLite integers
/// (i64), so a larger one cannot come from it — and one that large would lock every later
/// intent out.
pub const MAX_GENERATION: u64 = i64::MAX as u64;

/// Keeps held intents across restarts.
pub trait IntentStore: Send + Sync {
    /// The records saved last, by device id, unchecked (see [`validate_record`]).
    fn load(&self) -> Result<BTreeMap<String, HeldRecord>, StateError>;
    /// Replaces everything saved with `records`. Nothing is applied unless this succeeded.
    fn save(&self, records: &[&HeldRecord]) -> Result<(), StateError>;
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentsFile {
    version: u32,
    /// Version 1 kept the intents alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    intents: Vec<Intent>,
    #[serde(default)]
    held: Vec<HeldRecord>,
}

/// `intents.json` in the state directory.
#[derive(Debug, Clone)]
pub struct DiskStore {
    path: PathBuf,
}

impl DiskStore {
    pub fn new(dir: &StateDir) -> Self {
        Self {
            path: dir.file(INTENTS_FILE),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl IntentStore for DiskStore {
    fn load(&self) -> Result<BTreeMap<String, HeldRecord>, StateError> {
        let Some(file) = read_json::<IntentsFile>(&self.path)? else {
            return Ok(BTreeMap::new());
        };
        let corrupt = |problem: String| StateError::Corrupt {
            path: self.path.clone(),
            problem,
        };
        if !matches!(file.version, 1 | 2) {
            return Err(corrupt(format!(
                "version {} is not one this agent reads (1 or 2)",
                file.version
            )));
        }
        let mut out = BTreeMap::new();
        let records = file
            .intents
            .into_iter()
            .map(HeldRecord::new)
            .chain(file.held);
        for r in records {
            let id = r.intent.device_id.clone();
            if out.insert(id.clone(), r).is_some() {
                return Err(corrupt(format!("device `{id}` is held twice")));
            }
        }
        Ok(out)
    }

    fn save(&self, records: &[&HeldRecord]) -> Result<(), StateError> {
        let file = IntentsFile {
            version: 2,
            intents: Vec::new(),
            held: records.iter().map(|r| (*r).clone()).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            problem: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)
    }
}

/// Checks a record read back from disk as the wire checks an intent (the same conversion, the
/// same generation bound); the device's limits are checked by the caller, which knows them.
pub fn validate_record(r: &HeldRecord) -> Result<(), String> {
    let wire = r.intent.to_proto();
    Intent::from_proto(&wire, "intent").map_err(|e| e.to_string())?;
    check_generation(r.intent.generation)?;
    if let Some(b) = &r.before
        && [b.power_w, b.hashrate_ths]
            .iter()
            .flatten()
            .any(|v| !v.is_finite() || *v < 0.0)
    {
        return Err("`before` holds a reading that is not a non-negative number".into());
    }
    Ok(())
}

/// Refuses generations no controller could have sent.
pub fn check_generation(generation: u64) -> Result<(), String> {
    if generation > MAX_GENERATION {
        Err(format!(
            "generation {generation} is above {MAX_GENERATION}, the largest a controller issues"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::held::Before;
    use pivot_proto::model::{MinerTarget, Target};

    fn intent(generation: u64) -> Intent {
        Intent {
            device_id: "miner/a".into(),
            generation,
            lease_expires_at: chrono::Utc::now(),
            target: Target::Miner(MinerTarget::Sleep),
            reason: "price spike".into(),
            phase: 0,
            plan_id: "plan-1".into(),
        }
    }

    #[test]
    fn records_survive_a_round_trip_with_their_fallback_and_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(&StateDir::open(dir.path()).unwrap());
        assert!(store.load().unwrap().is_empty());
        let r = HeldRecord {
            intent: intent(3),
            fallback: Some(Target::Miner(MinerTarget::Sleep)),
            before: Some(Before {
                power_w: Some(3010.0),
                hashrate_ths: Some(101.0),
                hashing: true,
            }),
            given_up: vec![crate::reconcile::GivenUp {
                target: Target::Miner(MinerTarget::Run {
                    power_target_w: Some(3000),
                }),
                why: "unsupported".into(),
            }],
        };
        store.save(&[&r]).unwrap();
        assert_eq!(store.load().unwrap()["miner/a"], r);
    }

    #[test]
    fn version_1_files_are_read_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(&StateDir::open(dir.path()).unwrap());
        let v1 = serde_json::json!({ "version": 1, "intents": [intent(2)] });
        std::fs::write(store.path(), v1.to_string()).unwrap();
        assert_eq!(store.load().unwrap()["miner/a"].intent.generation, 2);
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("intents.json"), "{e}");
        let twice = serde_json::json!({ "version": 1, "intents": [intent(2), intent(3)] });
        std::fs::write(store.path(), twice.to_string()).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("held twice"), "{e}");
    }

    #[test]
    fn records_are_checked_as_the_wire_checks_intents() {
        assert!(validate_record(&HeldRecord::new(intent(3))).is_ok());
        let e = validate_record(&HeldRecord::new(intent(u64::MAX))).unwrap_err();
        assert!(e.contains("generation"), "{e}");
        assert!(validate_record(&HeldRecord::new(intent(0))).is_err());
        let zero = Intent {
            target: Target::Miner(MinerTarget::Run {
                power_target_w: Some(0),
            }),
            ..intent(1)
        };
        assert!(validate_record(&HeldRecord::new(zero)).is_err());
    }
}
