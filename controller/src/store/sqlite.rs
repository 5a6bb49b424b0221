//! SQLite store (rusqlite, bundled): one file, WAL mode, schema migrated on open.
//!
//! The schema's version is SQLite's `user_version`; each migration runs once, in a transaction,
//! in order. A file written by a newer controller is refused rather than misread.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use pivot_proto::model::{Intent, Target};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AuditRecord, DemandResponse, DeviceIntent, MarketSample, NewAudit, Override, PlanHeader,
    PlanState, SiteSample, StatusRecord, Store, StoreError, StoredPlan, StoredPolicy,
};

/// Migrations, in order; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit(subject, id);
CREATE TABLE IF NOT EXISTS overrides (
    target TEXT PRIMARY KEY,
    pin_json TEXT NOT NULL,
    expires_at TEXT,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    document TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS demand_response (
    event_id TEXT PRIMARY KEY,
    target_power_w REAL NOT NULL,
    deadline TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#;

const SCHEMA_V2: &str = r#"
ALTER TABLE demand_response ADD COLUMN cancelled_at TEXT;
CREATE TABLE device_intents (
    device_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    target_json TEXT NOT NULL,
    lease_expires_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    plan_phase INTEGER NOT NULL,
    issued_at TEXT NOT NULL,
    before_w REAL,
    status_json TEXT
);
CREATE TABLE plans (
    plan_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    current_phase INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    document_json TEXT NOT NULL
);
CREATE INDEX plans_state ON plans(state, created_at);
CREATE TABLE market_history (
    at TEXT NOT NULL,
    sample_json TEXT NOT NULL
);
CREATE INDEX market_history_at ON market_history(at);
CREATE TABLE site_history (
    at TEXT NOT NULL,
    sample_json TEXT NOT NULL
);
CREATE INDEX site_history_at ON site_history(at);
"#;

const SCHEMA_V3: &str = r#"
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    host TEXT,
    sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"#;

/// A plan's phase count and reason in columns of their own (filled from the documents already
/// kept), so the site status reads them without parsing the plan.
const SCHEMA_V4: &str = r#"
ALTER TABLE plans ADD COLUMN phases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE plans ADD COLUMN reason TEXT NOT NULL DEFAULT '';
UPDATE plans SET
    phases = coalesce(json_array_length(document_json, '$.exec.phases'), 0),
    reason = coalesce(json_extract(document_json, '$.reason'), '');
"#;

/// A miner's setting from before Pivot first trimmed it, kept with its intents
/// ([`DeviceIntent::setting_before_w`]).
const SCHEMA_V5: &str = r#"
ALTER TABLE device_intents ADD COLUMN setting_before_w REAL;
"#;

/// The embedded default store.
pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: display.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        migrate(&mut conn, &display)?;
        Ok(Self {
            path: display,
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means another thread panicked mid-call; SQLite's own
        // transactions keep the file consistent, so carry on with the connection.
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// Brings the schema to the newest version, one migration per transaction.
fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let mut version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported,
        });
    }
    // Files from before versioning have the first schema's tables and version 0; its
    // statements are all `IF NOT EXISTS`, so running it again is harmless.
    while version < supported {
        let step = MIGRATIONS
            .get(usize::try_from(version).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or_default();
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(step).map_err(err)?;
        version += 1;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

/// A plan row's creation time, state and current phase, checked; `what` names the plan.
fn plan_columns(
    what: &str,
    created_at: &str,
    state: &str,
    phase: i64,
) -> Result<(DateTime<Utc>, PlanState, u32), StoreError> {
    Ok((
        time(created_at, what)?,
        PlanState::parse(state).ok_or_else(|| corrupt(what, format!("unknown state `{state}`")))?,
        u32::try_from(phase).map_err(|e| corrupt(what, e))?,
    ))
}

fn corrupt(what: impl Into<String>, problem: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        problem: problem.to_string(),
    }
}

fn json<T: serde::Serialize>(v: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn time(s: &str, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            what: what.to_owned(),
            problem: e.to_string(),
        })
}

impl Store for SqliteStore {
    fn append_audits(&self, entries: Vec<NewAudit>) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = self.sql();
        let at = Utc::now();
        let stamp = at.to_rfc3339();
        self.with(|c| {
            let tx = c.transaction().map_err(&sql)?;
            let mut out = Vec::with_capacity(entries.len());
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO audit (at, kind, subject, actor, reason, detail_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(&sql)?;
                for entry in entries {
                    insert
                        .execute(params![
                            stamp,
                            entry.kind,
                            entry.subject,
                            entry.actor,
                            entry.reason,
                            entry.detail.to_string()
                        ])
                        .map_err(&sql)?;
                    out.push(AuditRecord {
                        id: u64::try_from(tx.last_insert_rowid()).unwrap_or(0),
                        at,
                        kind: entry.kind.to_owned(),
                        subject: entry.subject,
                        actor: entry.actor,
                        reason: entry.reason,
                        detail: entry.detail,
                    });
                }
            }
            tx.commit().map_err(&sql)?;
            Ok(out)
        })
    }

    fn list_audit(
        &self,
        limit: u32,
        before_id: u64,
        subject: &str,
        kind: &str,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = self.sql();
        let before = if before_id == 0 {
            i64::MAX
        } else {
            i64::try_from(before_id).unwrap_or(i64::MAX)
        };
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, at, kind, subject, actor, reason, detail_json FROM audit
                     WHERE id < ?1 AND (?2 = '' OR subject = ?2) AND (?4 = '' OR kind = ?4)
                     ORDER BY id DESC LIMIT ?3",
                )
                .map_err(&sql)?;
            let rows = stmt
                .query_map(params![before, subject, limit, kind], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                })
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, kind, subject, actor, reason, detail) = row.map_err(&sql)?;
                out.push(AuditRecord {
                    id: u64::try_from(id).unwrap_or(0),
                    at: time(&at, "audit.at")?,
                    kind,
                    subject,
                    actor,
                    reason,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                });
            }
            Ok(out)
        })
    }

    fn put_override(&self, o: &Override) -> Result<(), StoreError> {
        let sql = self.sql();
        let pin = serde_json::to_string(&o.pin).map_err(|e| StoreError::Corrupt {
            what: format!("override {}", o.target),
            problem: e.to_string(),
        })?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO overrides (target, pin_json, expires_at, reason, actor, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    o.target,
                    pin,
                    o.expires_at.map(|t| t.to_rfc3339()),
                    o.reason,
                    o.actor,
                    o.created_at.to_rfc3339()
                ],
            )
            .map_err(&sql)?;
            Ok(())
        })
    }

    fn clear_override(&self, target: &str) -> Result<bool, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            Ok(
                c.execute("DELETE FROM overrides WHERE target = ?1", params![target])
                    .map_err(&sql)?
                    > 0,
            )
        })
    }

    fn list_overrides(&self, now: DateTime<Utc>) -> Result<Vec<Override>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT target, pin_json, expires_at, reason, actor, created_at FROM overrides ORDER BY target",
                )
                .map_err(&sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (target, pin, expires, reason, actor, created) = row.map_err(&sql)?;
                let what = format!("override {target}");
                let expires_at = expires.as_deref().map(|t| time(t, &what)).transpose()?;
                if expires_at.is_some_and(|t| t <= now) {
                    continue;
                }
                out.push(Override {
                    pin: serde_json::from_str(&pin)
                        .map_err(|e| StoreError::Corrupt { what: what.clone(), problem: e.to_string() })?,
                    created_at: time(&created, &what)?,
                    target,
                    expires_at,
                    reason,
                    actor,
                });
            }
            Ok(out)
        })
    }

    fn get_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT name, document, revision, updated_at, actor FROM policy WHERE id = 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(&sql)?;
            row.map(|(name, document_toml, revision, updated_at, actor)| {
                Ok(StoredPolicy {
                    name,
                    document_toml,
                    revision: u64::try_from(revision).unwrap_or(0),
                    updated_at: time(&updated_at, "policy.updated_at")?,
                    actor,
                })
            })
            .transpose()
        })
    }

    fn set_policy(
        &self,
        name: &str,
        document_toml: &str,
        actor: &str,
        expected_revision: Option<u64>,
    ) -> Result<StoredPolicy, StoreError> {
        let sql = self.sql();
        let now = Utc::now();
        self.with(|c| {
            let tx = c.transaction().map_err(&sql)?;
            let current: u64 = tx
                .query_row("SELECT revision FROM policy WHERE id = 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map_err(&sql)?
                .map_or(0, |r| u64::try_from(r).unwrap_or(0));
            if let Some(expected) = expected_revision
                && expected != current
            {
                return Err(StoreError::RevisionConflict {
                    expected,
                    actual: current,
                });
            }
            let revision = current + 1;
            tx.execute(
                "INSERT OR REPLACE INTO policy (id, name, document, revision, updated_at, actor)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    document_toml,
                    i64::try_from(revision).unwrap_or(i64::MAX),
                    now.to_rfc3339(),
                    actor
                ],
            )
            .map_err(&sql)?;
            tx.commit().map_err(&sql)?;
            Ok(StoredPolicy {
                name: name.to_owned(),
                document_toml: document_toml.to_owned(),
                revision,
                updated_at: now,
                actor: actor.to_owned(),
            })
        })
    }

    fn put_demand_response(&self, e: &DemandResponse) -> Result<(), StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let inserted = c
                .execute(
                    "INSERT OR IGNORE INTO demand_response
                     (event_id, target_power_w, deadline, ends_at, actor, created_at, cancelled_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        e.event_id,
                        e.target_power_w,
                        e.deadline.to_rfc3339(),
                        e.ends_at.to_rfc3339(),
                        e.actor,
                        e.created_at.to_rfc3339(),
                        e.cancelled_at.map(|t| t.to_rfc3339()),
                    ],
                )
                .map_err(&sql)?;
            if inserted == 0 {
                return Err(StoreError::Exists {
                    what: format!("demand-response event `{}`", e.event_id),
                });
            }
            Ok(())
        })
    }

    fn cancel_demand_response(
        &self,
        event_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            Ok(c.execute(
                "UPDATE demand_response SET cancelled_at = ?2
                 WHERE event_id = ?1 AND cancelled_at IS NULL",
                params![event_id, at.to_rfc3339()],
            )
            .map_err(&sql)?
                > 0)
        })
    }

    fn demand_responses_in_force(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<DemandResponse>, StoreError> {
        // Times are stored as RFC 3339 in UTC, so they compare as text only when they have the
        // same shape; compare parsed values instead.
        let mut all = self.query_dr("ORDER BY created_at ASC", u32::MAX)?;
        all.retain(|e| e.in_force(now));
        Ok(all)
    }

    fn list_demand_responses(&self, limit: u32) -> Result<Vec<DemandResponse>, StoreError> {
        self.query_dr("ORDER BY created_at DESC", limit)
    }

    fn put_intents(&self, intents: &[DeviceIntent]) -> Result<(), StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let tx = c.transaction().map_err(&sql)?;
            {
                // Prepared once for the batch: a 10,000-move phase is 20,000 statements, and
                // parsing each again was most of what storing the phase cost.
                let mut generation_of = tx
                    .prepare_cached("SELECT generation FROM device_intents WHERE device_id = ?1")
                    .map_err(&sql)?;
                let mut put = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO device_intents
                         (device_id, host_id, generation, target_json, lease_expires_at, reason,
                          plan_id, plan_phase, issued_at, before_w, status_json, setting_before_w)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )
                    .map_err(&sql)?;
                for di in intents {
                    let i = &di.intent;
                    let stored: Option<i64> = generation_of
                        .query_row(params![i.device_id], |r| r.get(0))
                        .optional()
                        .map_err(&sql)?;
                    let stored = stored.map_or(0, |g| u64::try_from(g).unwrap_or(0));
                    if i.generation <= stored {
                        return Err(StoreError::StaleGeneration {
                            device_id: i.device_id.clone(),
                            generation: i.generation,
                            stored,
                        });
                    }
                    let what = format!("intent {}", i.device_id);
                    put.execute(params![
                        i.device_id,
                        di.host_id,
                        to_i64(i.generation),
                        json(&i.target, &what)?,
                        i.lease_expires_at.to_rfc3339(),
                        i.reason,
                        i.plan_id,
                        i.phase,
                        di.issued_at.to_rfc3339(),
                        di.before_w,
                        di.status.as_ref().map(|s| json(s, &what)).transpose()?,
                        di.setting_before_w,
                    ])
                    .map_err(&sql)?;
                }
            }
            tx.commit().map_err(&sql)?;
            Ok(())
        })
    }

    fn set_intent_statuses(
        &self,
        statuses: &[(&str, u64, &StatusRecord)],
    ) -> Result<usize, StoreError> {
        let sql = self.sql();
        let rows = statuses
            .iter()
            .map(|(device_id, generation, status)| {
                json(status, &format!("intent status {device_id}"))
                    .map(|j| (*device_id, to_i64(*generation), j))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with(|c| {
            let tx = c.transaction().map_err(&sql)?;
            let mut n = 0;
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE device_intents SET status_json = ?3 WHERE device_id = ?1 AND generation = ?2",
                    )
                    .map_err(&sql)?;
                for (device_id, generation, status) in &rows {
                    n += update
                        .execute(params![device_id, generation, status])
                        .map_err(&sql)?;
                }
            }
            tx.commit().map_err(&sql)?;
            Ok(n)
        })
    }

    fn list_intents(&self) -> Result<Vec<DeviceIntent>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT device_id, host_id, generation, target_json, lease_expires_at, reason,
                            plan_id, plan_phase, issued_at, before_w, status_json, setting_before_w
                     FROM device_intents ORDER BY device_id",
                )
                .map_err(&sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, Option<f64>>(9)?,
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, Option<f64>>(11)?,
                    ))
                })
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (
                    device_id,
                    host_id,
                    generation,
                    target,
                    lease,
                    reason,
                    plan_id,
                    plan_phase,
                    issued_at,
                    before_w,
                    status,
                    setting_before_w,
                ) = row.map_err(&sql)?;
                let what = format!("intent {device_id}");
                let target: Target = from_json(&target, &what)?;
                out.push(DeviceIntent {
                    host_id,
                    intent: Intent {
                        generation: u64::try_from(generation)
                            .map_err(|e| corrupt(what.clone(), e))?,
                        lease_expires_at: time(&lease, &what)?,
                        target,
                        reason,
                        phase: u32::try_from(plan_phase).map_err(|e| corrupt(what.clone(), e))?,
                        plan_id,
                        device_id,
                    },
                    issued_at: time(&issued_at, &what)?,
                    before_w,
                    status: status.map(|s| from_json(&s, &what)).transpose()?,
                    setting_before_w: setting_before_w.filter(|w| w.is_finite() && *w > 0.0),
                });
            }
            Ok(out)
        })
    }

    fn max_generation(&self, device_id: &str) -> Result<u64, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let g: Option<i64> = c
                .query_row(
                    "SELECT generation FROM device_intents WHERE device_id = ?1",
                    params![device_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&sql)?;
            Ok(g.map_or(0, |g| u64::try_from(g).unwrap_or(0)))
        })
    }

    fn put_plan(&self, plan: &StoredPlan) -> Result<(), StoreError> {
        let sql = self.sql();
        let header = plan.header();
        self.with(|c| {
            let inserted = c
                .execute(
                    "INSERT OR IGNORE INTO plans
                     (plan_id, created_at, state, current_phase, updated_at, document_json,
                      phases, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        plan.plan_id,
                        plan.created_at.to_rfc3339(),
                        plan.state.as_str(),
                        plan.current_phase,
                        plan.updated_at.to_rfc3339(),
                        plan.document.to_string(),
                        header.phases,
                        header.reason,
                    ],
                )
                .map_err(&sql)?;
            if inserted == 0 {
                return Err(StoreError::Exists {
                    what: format!("plan `{}`", plan.plan_id),
                });
            }
            Ok(())
        })
    }

    fn update_plan(
        &self,
        plan_id: &str,
        state: PlanState,
        current_phase: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = self.sql();
        self.with(|c| {
            c.execute(
                "UPDATE plans SET state = ?2, current_phase = ?3, updated_at = ?4 WHERE plan_id = ?1",
                params![plan_id, state.as_str(), current_phase, at.to_rfc3339()],
            )
            .map_err(&sql)?;
            Ok(())
        })
    }

    fn plan_in_flight(&self) -> Result<Option<StoredPlan>, StoreError> {
        Ok(self
            .query_plans(
                "WHERE state = 'executing' ORDER BY created_at DESC, rowid DESC",
                1,
            )?
            .pop())
    }

    fn list_plans(&self, limit: u32) -> Result<Vec<StoredPlan>, StoreError> {
        self.query_plans("ORDER BY created_at DESC, rowid DESC", limit)
    }

    fn latest_plan_header(&self) -> Result<Option<PlanHeader>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT plan_id, created_at, state, current_phase, phases, reason
                     FROM plans ORDER BY created_at DESC, rowid DESC LIMIT 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(&sql)?;
            let Some((plan_id, created_at, state, phase, phases, reason)) = row else {
                return Ok(None);
            };
            let what = format!("plan {plan_id}");
            let (created_at, state, current_phase) =
                plan_columns(&what, &created_at, &state, phase)?;
            Ok(Some(PlanHeader {
                created_at,
                state,
                current_phase,
                phases: u32::try_from(phases).map_err(|e| corrupt(what.clone(), e))?,
                reason,
                plan_id,
            }))
        })
    }

    fn append_market(&self, sample: &MarketSample) -> Result<(), StoreError> {
        self.append_sample("market_history", sample.at, &json(sample, "market sample")?)
    }

    fn append_site(&self, sample: &SiteSample) -> Result<(), StoreError> {
        self.append_sample("site_history", sample.at, &json(sample, "site sample")?)
    }

    fn market_history(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<MarketSample>, StoreError> {
        self.samples("market_history", since, limit)
    }

    fn site_history(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SiteSample>, StoreError> {
        self.samples("site_history", since, limit)
    }

    fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let sql = self.sql();
        let before = sample_key(before);
        self.with(|c| {
            let mut n = 0;
            for table in ["market_history", "site_history"] {
                n += c
                    .execute(
                        &format!("DELETE FROM {table} WHERE at < ?1"),
                        params![before],
                    )
                    .map_err(&sql)?;
            }
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn put_token(&self, t: &crate::auth::TokenRecord) -> Result<(), StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO tokens (id, name, role, host, sha256, created_at, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        t.id,
                        t.name,
                        t.role.as_str(),
                        t.host,
                        t.sha256_hex,
                        t.created_at.to_rfc3339(),
                        t.revoked_at.map(|x| x.to_rfc3339())
                    ],
                )
                .map_err(&sql)?;
            if n == 0 {
                return Err(StoreError::Exists {
                    what: format!("token `{}`", t.id),
                });
            }
            Ok(())
        })
    }

    fn token_by_hash(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<crate::auth::TokenRecord>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE sha256 = ?1"),
                params![sha256_hex],
                token_row,
            )
            .optional()
            .map_err(&sql)?
            .map(token_record)
            .transpose()
        })
    }

    fn list_tokens(&self) -> Result<Vec<crate::auth::TokenRecord>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at"
                ))
                .map_err(&sql)?;
            let rows = stmt.query_map([], token_row).map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(token_record(row.map_err(&sql)?)?);
            }
            Ok(out)
        })
    }

    fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            Ok(c.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at.to_rfc3339()],
            )
            .map_err(&sql)?
                > 0)
        })
    }
}

type TokenRow = (
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
);

fn token_record(row: TokenRow) -> Result<crate::auth::TokenRecord, StoreError> {
    let (id, name, role, host, sha256_hex, created_at, revoked_at) = row;
    let what = format!("token {id}");
    Ok(crate::auth::TokenRecord {
        role: crate::auth::Role::parse(&role)
            .ok_or_else(|| corrupt(what.clone(), format!("unknown role `{role}`")))?,
        created_at: time(&created_at, &what)?,
        revoked_at: revoked_at.as_deref().map(|t| time(t, &what)).transpose()?,
        id,
        name,
        host,
        sha256_hex,
    })
}

const TOKEN_COLUMNS: &str = "id, name, role, host, sha256, created_at, revoked_at";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

/// History samples are keyed by a fixed-width UTC time, so that text order is time order.
fn sample_key(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl SqliteStore {
    fn query_dr(&self, order: &str, limit: u32) -> Result<Vec<DemandResponse>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT event_id, target_power_w, deadline, ends_at, actor, created_at, cancelled_at
                     FROM demand_response {order} LIMIT ?1"
                ))
                .map_err(&sql)?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (event_id, target_power_w, deadline, ends_at, actor, created_at, cancelled) =
                    row.map_err(&sql)?;
                let what = format!("demand_response {event_id}");
                out.push(DemandResponse {
                    deadline: time(&deadline, &what)?,
                    ends_at: time(&ends_at, &what)?,
                    created_at: time(&created_at, &what)?,
                    cancelled_at: cancelled.as_deref().map(|t| time(t, &what)).transpose()?,
                    event_id,
                    target_power_w,
                    actor,
                });
            }
            Ok(out)
        })
    }

    fn query_plans(&self, clause: &str, limit: u32) -> Result<Vec<StoredPlan>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT plan_id, created_at, state, current_phase, updated_at, document_json
                     FROM plans {clause} LIMIT ?1"
                ))
                .map_err(&sql)?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (plan_id, created_at, state, phase, updated_at, doc) = row.map_err(&sql)?;
                let what = format!("plan {plan_id}");
                let (created_at, state, current_phase) =
                    plan_columns(&what, &created_at, &state, phase)?;
                out.push(StoredPlan {
                    created_at,
                    state,
                    current_phase,
                    updated_at: time(&updated_at, &what)?,
                    document: from_json(&doc, &what)?,
                    plan_id,
                });
            }
            Ok(out)
        })
    }

    fn append_sample(
        &self,
        table: &'static str,
        at: DateTime<Utc>,
        sample_json: &str,
    ) -> Result<(), StoreError> {
        let sql = self.sql();
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO {table} (at, sample_json) VALUES (?1, ?2)"),
                params![sample_key(at), sample_json],
            )
            .map_err(&sql)?;
            Ok(())
        })
    }

    fn samples<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<T>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT sample_json FROM {table} WHERE at >= ?1 ORDER BY at ASC LIMIT ?2"
                ))
                .map_err(&sql)?;
            let rows = stmt
                .query_map(params![sample_key(since), limit], |r| r.get::<_, String>(0))
                .map_err(&sql)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(from_json(&row.map_err(&sql)?, table)?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivot_proto::model::{IntentPhase, MinerTarget, Target};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("pivot.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn audit_pages_newest_first_and_filters() {
        let (_d, s) = store();
        for i in 0..5 {
            s.append_audits(vec![NewAudit {
                kind: "agent",
                subject: if i % 2 == 0 {
                    "host/a".into()
                } else {
                    "host/b".into()
                },
                actor: "test".into(),
                reason: format!("r{i}"),
                detail: serde_json::json!({ "i": i }),
            }])
            .unwrap();
        }
        let all = s.list_audit(10, 0, "", "").unwrap();
        assert_eq!(
            all.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            ["r4", "r3", "r2", "r1", "r0"]
        );
        let page = s.list_audit(2, all[1].id, "", "").unwrap();
        assert_eq!(
            page.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            ["r2", "r1"]
        );
        assert_eq!(s.list_audit(10, 0, "host/b", "").unwrap().len(), 2);
        assert_eq!(s.list_audit(10, 0, "", "agent").unwrap().len(), 5);
        assert!(s.list_audit(10, 0, "", "plan").unwrap().is_empty());
        assert_eq!(all[0].detail["i"], 4);
    }

    #[test]
    fn policy_revisions_are_checked() {
        let (_d, s) = store();
        assert!(s.get_policy().unwrap().is_none());
        let p1 = s
            .set_policy("economic", "name = \"economic\"", "op", Some(0))
            .unwrap();
        assert_eq!(p1.revision, 1);
        assert!(matches!(
            s.set_policy("x", "", "op", Some(5)),
            Err(StoreError::RevisionConflict {
                expected: 5,
                actual: 1
            })
        ));
        assert_eq!(s.set_policy("x", "", "op", Some(1)).unwrap().revision, 2);
        assert!(matches!(
            s.set_policy("y", "", "op", Some(0)),
            Err(StoreError::RevisionConflict {
                expected: 0,
                actual: 2
            })
        ));
        assert_eq!(s.set_policy("z", "", "op", None).unwrap().revision, 3);
        assert_eq!(s.get_policy().unwrap().unwrap().name, "z");
    }

    #[test]
    fn overrides_expire() {
        let (_d, s) = store();
        let now = Utc::now();
        let o = Override {
            target: "miner/a".into(),
            pin: Target::Miner(MinerTarget::Sleep),
            expires_at: Some(now + chrono::Duration::seconds(60)),
            reason: "maintenance".into(),
            actor: "op".into(),
            created_at: now,
        };
        s.put_override(&o).unwrap();
        assert_eq!(s.list_overrides(now).unwrap(), vec![o]);
        assert!(
            s.list_overrides(now + chrono::Duration::seconds(61))
                .unwrap()
                .is_empty()
        );
        assert!(s.clear_override("miner/a").unwrap());
        assert!(!s.clear_override("miner/a").unwrap());
    }

    fn intent(device: &str, generation: u64, target: Target) -> DeviceIntent {
        DeviceIntent {
            host_id: "h1".into(),
            intent: Intent {
                device_id: device.into(),
                generation,
                lease_expires_at: Utc::now() + chrono::Duration::seconds(60),
                target,
                reason: "test".into(),
                phase: 1,
                plan_id: "p1".into(),
            },
            issued_at: Utc::now(),
            before_w: Some(3000.0),
            setting_before_w: None,
            status: None,
        }
    }

    #[test]
    fn generations_never_go_down_and_a_batch_is_all_or_nothing() {
        let (_d, s) = store();
        let sleep = Target::Miner(MinerTarget::Sleep);
        s.put_intents(&[intent("m1", 3, sleep), intent("m2", 1, sleep)])
            .unwrap();
        assert_eq!(s.max_generation("m1").unwrap(), 3);
        assert_eq!(s.max_generation("nope").unwrap(), 0);
        // m3 is new but m1's generation 3 is not above the stored 3: nothing is stored.
        let err = s
            .put_intents(&[intent("m3", 1, sleep), intent("m1", 3, sleep)])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StaleGeneration { ref device_id, generation: 3, stored: 3 } if device_id == "m1"),
            "{err}"
        );
        assert_eq!(s.max_generation("m3").unwrap(), 0);
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        s.put_intents(&[intent("m1", 4, run)]).unwrap();
        let all = s.list_intents().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].intent.generation, 4);
        assert_eq!(all[0].intent.target, run);
        assert_eq!(all[0].intent.plan_id, "p1");
        assert_eq!(all[0].before_w, Some(3000.0));
    }

    #[test]
    fn statuses_land_only_on_the_generation_held() {
        let (_d, s) = store();
        s.put_intents(&[intent("m1", 2, Target::Miner(MinerTarget::Sleep))])
            .unwrap();
        let st = StatusRecord {
            phase: IntentPhase::Confirmed,
            detail: "asleep".into(),
            retrying: false,
            observed_power_w: Some(12.0),
            at: Utc::now(),
        };
        assert_eq!(s.set_intent_statuses(&[("m1", 1, &st)]).unwrap(), 0);
        assert!(s.list_intents().unwrap()[0].status.is_none());
        assert_eq!(s.set_intent_statuses(&[("m1", 2, &st)]).unwrap(), 1);
        assert_eq!(s.list_intents().unwrap()[0].status, Some(st));
    }

    #[test]
    fn a_batch_of_statuses_and_audits_lands_whole_and_in_order() {
        let (_d, s) = store();
        s.put_intents(&[
            intent("m1", 2, Target::Miner(MinerTarget::Sleep)),
            intent("m2", 1, Target::Miner(MinerTarget::Sleep)),
        ])
        .unwrap();
        let st = |detail: &str| StatusRecord {
            phase: IntentPhase::Confirmed,
            detail: detail.into(),
            retrying: false,
            observed_power_w: None,
            at: Utc::now(),
        };
        let (a, b, stale) = (st("a"), st("b"), st("stale"));
        // m1 twice (the later wins), m2 at a generation it does not hold (ignored).
        let n = s
            .set_intent_statuses(&[("m1", 2, &a), ("m2", 7, &stale), ("m1", 2, &b)])
            .unwrap();
        assert_eq!(n, 2);
        let held = s.list_intents().unwrap();
        let of = |id: &str| held.iter().find(|d| d.intent.device_id == id).unwrap();
        assert_eq!(of("m1").status, Some(b));
        assert!(of("m2").status.is_none());

        let records = s
            .append_audits(
                (0..3)
                    .map(|i| NewAudit {
                        kind: "status",
                        subject: format!("miner/{i}"),
                        actor: "agent".into(),
                        reason: format!("r{i}"),
                        detail: serde_json::Value::Null,
                    })
                    .collect(),
            )
            .unwrap();
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Newest first in the log.
        let listed: Vec<String> = s
            .list_audit(10, 0, "", "status")
            .unwrap()
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(listed, ["r2", "r1", "r0"]);
        assert!(s.append_audits(Vec::new()).unwrap().is_empty());
    }

    fn dr(id: &str, target: f64, ends_in_s: i64) -> DemandResponse {
        let now = Utc::now();
        DemandResponse {
            event_id: id.into(),
            target_power_w: target,
            deadline: now + chrono::Duration::seconds(10),
            ends_at: now + chrono::Duration::seconds(ends_in_s),
            actor: "op".into(),
            created_at: now,
            cancelled_at: None,
        }
    }

    #[test]
    fn demand_response_ids_cannot_collide_and_events_cancel() {
        let (_d, s) = store();
        s.put_demand_response(&dr("ecrs-1", 5e6, 600)).unwrap();
        let err = s.put_demand_response(&dr("ecrs-1", 1e6, 600)).unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err}");
        s.put_demand_response(&dr("ecrs-2", 3e6, 600)).unwrap();
        s.put_demand_response(&dr("old", 1e6, -1)).unwrap();
        let now = Utc::now();
        let in_force = s.demand_responses_in_force(now).unwrap();
        assert_eq!(
            in_force
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["ecrs-1", "ecrs-2"]
        );
        assert_eq!(
            in_force[0].target_power_w, 5e6,
            "the first event was not replaced"
        );
        assert!(s.cancel_demand_response("ecrs-2", now).unwrap());
        assert!(!s.cancel_demand_response("ecrs-2", now).unwrap());
        assert!(!s.cancel_demand_response("nope", now).unwrap());
        assert_eq!(s.demand_responses_in_force(now).unwrap().len(), 1);
        assert_eq!(s.list_demand_responses(10).unwrap().len(), 3);
    }

    #[test]
    fn plans_and_history_round_trip() {
        let (_d, s) = store();
        let now = Utc::now();
        let p = StoredPlan {
            plan_id: "p1".into(),
            created_at: now,
            state: PlanState::Executing,
            current_phase: 0,
            updated_at: now,
            document: serde_json::json!({"phases": []}),
        };
        s.put_plan(&p).unwrap();
        assert!(matches!(s.put_plan(&p), Err(StoreError::Exists { .. })));
        assert_eq!(s.plan_in_flight().unwrap(), Some(p.clone()));
        s.update_plan("p1", PlanState::Completed, 2, now).unwrap();
        assert_eq!(s.plan_in_flight().unwrap(), None);
        assert_eq!(s.list_plans(5).unwrap()[0].current_phase, 2);
        // The header, read without the document, is what the document says.
        let p2 = StoredPlan {
            plan_id: "p2".into(),
            created_at: now + chrono::Duration::seconds(1),
            document: serde_json::json!({
                "reason": "energy 212 USD/MWh",
                "exec": {"phases": [{"label": "curtail"}, {"label": "grant"}]},
            }),
            ..p
        };
        s.put_plan(&p2).unwrap();
        s.update_plan("p2", PlanState::Completed, 1, now).unwrap();
        let header = s.latest_plan_header().unwrap().unwrap();
        assert_eq!(header, s.list_plans(1).unwrap()[0].header());
        assert_eq!(
            (header.phases, header.reason.as_str()),
            (2, "energy 212 USD/MWh")
        );
        assert_eq!(
            (header.state, header.current_phase),
            (PlanState::Completed, 1)
        );

        for i in 0..5 {
            s.append_site(&SiteSample {
                at: now + chrono::Duration::seconds(i),
                cap_w: 1e6,
                committed_w: 9e5,
                measured_w: 8e5,
                mining_w: 5e5,
                ai_w: 3e5,
                margin_usd_per_h: Some(f64::from(i32::try_from(i).unwrap())),
            })
            .unwrap();
        }
        let h = s
            .site_history(now + chrono::Duration::seconds(2), 100)
            .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].margin_usd_per_h, Some(2.0));
        assert_eq!(
            s.prune_history(now + chrono::Duration::seconds(4)).unwrap(),
            4
        );
        assert_eq!(s.site_history(now, 100).unwrap().len(), 1);
    }

    #[test]
    fn plans_kept_before_their_headers_had_columns_get_them_from_their_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        let now = Utc::now();
        let plan = StoredPlan {
            plan_id: "old".into(),
            created_at: now,
            state: PlanState::Completed,
            current_phase: 2,
            updated_at: now,
            document: serde_json::json!({
                "reason": "DR event",
                "exec": {"phases": [{}, {}, {}]},
            }),
        };
        {
            let mut c = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..3] {
                c.execute_batch(step).unwrap();
            }
            c.pragma_update(None, "user_version", 3).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute(
                "INSERT INTO plans VALUES (?1, ?2, 'completed', 2, ?2, ?3)",
                params![plan.plan_id, now.to_rfc3339(), plan.document.to_string()],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let header = s.latest_plan_header().unwrap().unwrap();
        assert_eq!(header, plan.header());
        assert_eq!(header.phases, 3);
    }

    #[test]
    fn a_store_from_before_versioning_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute(
                "INSERT INTO demand_response VALUES ('e', 1.0, ?1, ?1, 'op', ?1)",
                params![Utc::now().to_rfc3339()],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.list_demand_responses(10).unwrap().len(), 1);
        drop(s);
        // Opening again runs nothing twice.
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.list_intents().unwrap().is_empty());
        drop(s);
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
    }
}
