//! SQLite store (rusqlite, bundled): one file, WAL mode, schema created on open.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{AuditRecord, DemandResponse, NewAudit, Override, Store, StoreError, StoredPolicy};

const SCHEMA: &str = r#"
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
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
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

fn time(s: &str, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            what: what.to_owned(),
            problem: e.to_string(),
        })
}

impl Store for SqliteStore {
    fn append_audit(&self, entry: NewAudit) -> Result<AuditRecord, StoreError> {
        let sql = self.sql();
        let at = Utc::now();
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, kind, subject, actor, reason, detail_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    at.to_rfc3339(),
                    entry.kind,
                    entry.subject,
                    entry.actor,
                    entry.reason,
                    entry.detail.to_string()
                ],
            )
            .map_err(&sql)?;
            Ok(AuditRecord {
                id: u64::try_from(c.last_insert_rowid()).unwrap_or(0),
                at,
                kind: entry.kind.to_owned(),
                subject: entry.subject,
                actor: entry.actor,
                reason: entry.reason,
                detail: entry.detail,
            })
        })
    }

    fn list_audit(
        &self,
        limit: u32,
        before_id: u64,
        subject: &str,
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
                     WHERE id < ?1 AND (?2 = '' OR subject = ?2) ORDER BY id DESC LIMIT ?3",
                )
                .map_err(&sql)?;
            let rows = stmt
                .query_map(params![before, subject, limit], |r| {
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
        expected_revision: u64,
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
            if expected_revision != 0 && expected_revision != current {
                return Err(StoreError::RevisionConflict {
                    expected: expected_revision,
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
            c.execute(
                "INSERT OR REPLACE INTO demand_response (event_id, target_power_w, deadline, ends_at, actor, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.event_id,
                    e.target_power_w,
                    e.deadline.to_rfc3339(),
                    e.ends_at.to_rfc3339(),
                    e.actor,
                    e.created_at.to_rfc3339()
                ],
            )
            .map_err(&sql)?;
            Ok(())
        })
    }

    fn active_demand_response(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DemandResponse>, StoreError> {
        let sql = self.sql();
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT event_id, target_power_w, deadline, ends_at, actor, created_at
                     FROM demand_response WHERE ends_at > ?1 ORDER BY created_at DESC LIMIT 1",
                    params![now.to_rfc3339()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, f64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(&sql)?;
            row.map(
                |(event_id, target_power_w, deadline, ends_at, actor, created_at)| {
                    let what = format!("demand_response {event_id}");
                    Ok(DemandResponse {
                        deadline: time(&deadline, &what)?,
                        ends_at: time(&ends_at, &what)?,
                        created_at: time(&created_at, &what)?,
                        event_id,
                        target_power_w,
                        actor,
                    })
                },
            )
            .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivot_proto::model::{MinerTarget, Target};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("pivot.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn audit_pages_newest_first_and_filters() {
        let (_d, s) = store();
        for i in 0..5 {
            s.append_audit(NewAudit {
                kind: "agent",
                subject: if i % 2 == 0 {
                    "host/a".into()
                } else {
                    "host/b".into()
                },
                actor: "test".into(),
                reason: format!("r{i}"),
                detail: serde_json::json!({ "i": i }),
            })
            .unwrap();
        }
        let all = s.list_audit(10, 0, "").unwrap();
        assert_eq!(
            all.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            ["r4", "r3", "r2", "r1", "r0"]
        );
        let page = s.list_audit(2, all[1].id, "").unwrap();
        assert_eq!(
            page.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            ["r2", "r1"]
        );
        assert_eq!(s.list_audit(10, 0, "host/b").unwrap().len(), 2);
        assert_eq!(all[0].detail["i"], 4);
    }

    #[test]
    fn policy_revisions_are_checked() {
        let (_d, s) = store();
        assert!(s.get_policy().unwrap().is_none());
        let p1 = s
            .set_policy("economic", "name = \"economic\"", "op", 0)
            .unwrap();
        assert_eq!(p1.revision, 1);
        assert!(matches!(
            s.set_policy("x", "", "op", 5),
            Err(StoreError::RevisionConflict {
                expected: 5,
                actual: 1
            })
        ));
        assert_eq!(s.set_policy("x", "", "op", 1).unwrap().revision, 2);
        assert_eq!(s.get_policy().unwrap().unwrap().name, "x");
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
}
