//! Credentials for miners' write APIs: per miner, else per dialect, else the firmware default.
//! Secrets never reach a log: `Debug` redacts them, and nothing here implements `Display`.

use std::collections::HashMap;
use std::fmt;

use pivot_proto::model::MinerDialect;
use serde::Deserialize;

/// A password that prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password for one miner.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// The factory default of a dialect, as documented by its vendor (PROTOCOLS.md).
    pub fn default_for(dialect: MinerDialect) -> Self {
        match dialect {
            MinerDialect::Antminer | MinerDialect::Braiins => Self::new("root", "root"),
            MinerDialect::WhatsminerV2 => Self::new("admin", "admin"),
            MinerDialect::WhatsminerV3 => Self::new("super", "super"),
            // LuxOS's session and Bitaxe's REST API take no password.
            MinerDialect::Luxos | MinerDialect::Bitaxe => Self::new("", ""),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// Where credentials come from: a miner's own entry wins over its dialect's, which wins over the
/// firmware default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialStore {
    /// Keyed by the miner's address as configured (e.g. `10.0.0.7` or `127.0.0.1:14000`).
    #[serde(default)]
    pub per_miner: HashMap<String, Credentials>,
    #[serde(default)]
    pub per_dialect: HashMap<MinerDialect, Credentials>,
}

impl CredentialStore {
    pub fn for_miner(&self, addr: &str, dialect: MinerDialect) -> Credentials {
        self.per_miner
            .get(addr)
            .or_else(|| self.per_dialect.get(&dialect))
            .cloned()
            .unwrap_or_else(|| Credentials::default_for(dialect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::new("root", "hunter2");
        let s = format!("{c:?} {:?}", CredentialStore::default());
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn miner_entry_beats_dialect_beats_default() {
        let mut store = CredentialStore::default();
        assert_eq!(
            store.for_miner("a", MinerDialect::WhatsminerV3).username,
            "super"
        );
        store
            .per_dialect
            .insert(MinerDialect::Antminer, Credentials::new("op", "d"));
        store
            .per_miner
            .insert("a".into(), Credentials::new("me", "m"));
        assert_eq!(store.for_miner("a", MinerDialect::Antminer).username, "me");
        assert_eq!(store.for_miner("b", MinerDialect::Antminer).username, "op");
    }
}
