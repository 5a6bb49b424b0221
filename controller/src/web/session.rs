//! Browser sessions made from a bearer token.
//!
//! A browser cannot put a token on an `EventSource` or a link, so a person gives the page their
//! token once and gets a session cookie. The session keeps the token (in memory only, never on
//! disk) and every request authenticates it again, so a revoked token stops working at once and
//! a session never holds more than its token does. Each session has its own CSRF token, which
//! changing calls must echo in a header: a cookie alone cannot make the page act.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::RngCore;
use tokio::time::Instant;

/// The most sessions kept by default; past it the least recently used one ends.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
struct Session {
    token: String,
    csrf: String,
    last_used: Instant,
}

/// What a live session gives a request.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionAccess {
    pub token: String,
    pub csrf: String,
}

// Secrets stay out of logs: a session shows neither its token nor its CSRF token.
impl std::fmt::Debug for SessionAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionAccess { .. }")
    }
}

/// The live sessions of this controller process.
pub struct Sessions {
    idle: Duration,
    max: usize,
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Self::with_limit(idle, MAX_SESSIONS)
    }

    /// Sessions that end after `idle` unused, at most `max` of them.
    pub fn with_limit(idle: Duration, max: usize) -> Self {
        Self {
            idle,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lives unused.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for `token` (already authenticated by the caller): its id and CSRF token.
    pub fn create(&self, token: &str, now: Instant) -> (String, String) {
        let mut map = self.map();
        map.retain(|_, s| now.saturating_duration_since(s.last_used) < self.idle);
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        let (id, csrf) = (random_hex(), random_hex());
        map.insert(
            id.clone(),
            Session {
                token: token.to_owned(),
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The session `id`, if it is live; using it keeps it alive.
    pub fn get(&self, id: &str, now: Instant) -> Option<SessionAccess> {
        let mut map = self.map();
        let s = map.get_mut(id)?;
        if now.saturating_duration_since(s.last_used) >= self.idle {
            map.remove(id);
            return None;
        }
        s.last_used = now;
        Some(SessionAccess {
            token: s.token.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Ends the session `id`; whether it was live.
    pub fn end(&self, id: &str) -> bool {
        self.map().remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compares two secrets in time that does not depend on where they first differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_lives_while_used_and_ends_when_idle_or_ended() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (id, csrf) = s.create("pvt_a", t0);
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let got = s.get(&id, t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(got.token, "pvt_a");
        assert_eq!(got.csrf, csrf);
        // Used at 59 s: alive until 119 s.
        assert!(s.get(&id, t0 + Duration::from_secs(118)).is_some());
        assert!(s.get(&id, t0 + Duration::from_secs(178)).is_none());
        assert!(s.is_empty());
        let (id, _) = s.create("pvt_b", t0);
        assert!(s.end(&id));
        assert!(!s.end(&id));
        assert!(s.get(&id, t0).is_none());
        assert!(s.get("not-a-session", t0).is_none());
        let (id, _) = s.create("pvt_secret", t0);
        let shown = format!("{s:?} {:?}", s.get(&id, t0).unwrap());
        assert!(
            !shown.contains("pvt_secret") && !shown.contains(&id),
            "{shown}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_bounded_and_the_least_recently_used_goes_first() {
        let s = Sessions::with_limit(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        let (first, _) = s.create("pvt_0", t0);
        let (second, _) = s.create("pvt_1", t0 + Duration::from_millis(1));
        let (third, _) = s.create("pvt_2", t0 + Duration::from_millis(2));
        // The first is used again: the second is now the least recently used.
        assert!(s.get(&first, t0 + Duration::from_millis(3)).is_some());
        s.create("pvt_new", t0 + Duration::from_secs(1));
        assert_eq!(s.len(), 3);
        assert!(s.get(&second, t0 + Duration::from_secs(1)).is_none());
        assert!(s.get(&first, t0 + Duration::from_secs(1)).is_some());
        assert!(s.get(&third, t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}
