//! Who is calling, and what they may do.
//!
//! Every FleetService call and every agent session has an authenticated identity: the client
//! certificate's common name under mutual TLS, or a bearer token (`authorization: Bearer …`,
//! stored only as its SHA-256) — over TLS, or over plaintext only where the operator says a
//! TLS-terminating proxy is in front. Each identity has one role:
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read: status, devices, economics, plan, history, audit, policy, events |
//! | `operator` | also overrides, curtail/resume, demand response, forget a host |
//! | `admin` | also set the policy (tokens are made with `pivot-controller token`) |
//! | `agent` | only AgentService, and only for the host its identity is bound to |
//!
//! `pivot-controller dev` runs open (every caller an admin, agents for any host) and says so
//! when it starts; `serve` is open only with `[auth] mode = "open"`, which it logs loudly.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::store::{Store, StoreError};

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "agent" => Role::Agent,
            _ => return None,
        })
    }

    /// Whether the role carries `right`.
    pub fn allows(self, right: Right) -> bool {
        match right {
            Right::AgentSession => self == Role::Agent,
            Right::Read => matches!(self, Role::Viewer | Role::Operator | Role::Admin),
            Right::Operate => matches!(self, Role::Operator | Role::Admin),
            Right::Administer => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Read the site's state.
    Read,
    /// Change what runs: overrides, curtail/resume, demand response, forget a host.
    Operate,
    /// Change the policy.
    Administer,
    /// Be an agent session.
    AgentSession,
}

impl Right {
    fn words(self) -> &'static str {
        match self {
            Right::Read => "read the site (viewer)",
            Right::Operate => "operate the site: overrides, curtail, demand response (operator)",
            Right::Administer => "administer the site: policy (admin)",
            Right::AgentSession => "open an agent session (agent)",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How the audit log names it: `token:<name>`, `cert:<common name>`, or `dev`.
    pub name: String,
    pub role: Role,
    /// For an agent: the only host it may speak for. `None` with `Role::Agent` never happens
    /// outside open mode.
    pub host: Option<String>,
    /// Open mode: checks that bind an agent to a host are off.
    pub open: bool,
}

impl Principal {
    /// Whether this principal may open a session for `host_id`.
    pub fn may_be_host(&self, host_id: &str) -> bool {
        self.open || self.host.as_deref() == Some(host_id)
    }
}

/// How the controller authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every call needs an identity (the default).
    #[default]
    Enforced,
    /// No identity needed: every caller is an admin and agents may be any host. For a lab.
    Open,
}

/// A certificate identity the configuration names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateIdentity {
    /// The client certificate's subject common name.
    pub cn: String,
    pub role: Role,
    /// With `role = "agent"`: the host it speaks for (default: its common name).
    #[serde(default)]
    pub host: Option<String>,
}

/// `[auth]` in the controller's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Accept bearer tokens on plaintext connections: only behind a proxy that terminates TLS.
    #[serde(default)]
    pub allow_plaintext_tokens: bool,
    /// A client certificate whose common name is not listed in `certificates` is an agent for
    /// the host of that name (the usual way to enrol many agents: one certificate per host).
    #[serde(default = "yes")]
    pub agent_certificates: bool,
    #[serde(default)]
    pub certificates: Vec<CertificateIdentity>,
}

fn yes() -> bool {
    true
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Enforced,
            allow_plaintext_tokens: false,
            agent_certificates: true,
            certificates: Vec::new(),
        }
    }
}

/// A stored token: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Short public id (for list and revoke).
    pub id: String,
    pub name: String,
    pub role: Role,
    pub host: Option<String>,
    pub sha256_hex: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The SHA-256 of a token, hex. Tokens are 256 random bits: a fast hash is the right one (there
/// is nothing to brute-force), and it makes the lookup a plain index.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token and its record. The token is shown once and never stored.
pub fn new_token(
    name: &str,
    role: Role,
    host: Option<String>,
    now: DateTime<Utc>,
) -> (String, TokenRecord) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("pvt_{}", hex::encode(secret));
    let hash = token_hash(&token);
    let record = TokenRecord {
        id: hash[..12].to_owned(),
        name: name.to_owned(),
        role,
        host,
        sha256_hex: hash,
        created_at: now,
        revoked_at: None,
    };
    (token, record)
}

/// The identity in a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub bearer: Option<String>,
    /// Common name of the verified client certificate, if any.
    pub cert_cn: Option<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Credentials {
    /// Reads the bearer token and the verified client certificate of a gRPC request.
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        let bearer = match req.metadata().get("authorization") {
            None => None,
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    Status::unauthenticated("authorization: not a readable header value")
                })?;
                let token = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("authorization: expected `Bearer <token>`")
                    })?;
                Some(token.trim().to_owned())
            }
        };
        let certs = req.peer_certs();
        let cert_cn = match certs.as_ref().and_then(|c| c.first()) {
            Some(der) => Some(common_name(der.as_ref()).ok_or_else(|| {
                Status::unauthenticated("client certificate has no subject common name")
            })?),
            None => None,
        };
        // tonic only gives peer certificates on TLS connections; the connection info tells
        // whether this one is TLS even without a client certificate.
        let tls =
            certs.is_some()
                || req
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .is_some();
        Ok(Self {
            bearer,
            cert_cn,
            tls,
        })
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// A principal that another front door of this process (the web listener) authenticated,
/// carried by a gRPC request built in-process so that the request goes through the same
/// FleetService code and the same [`check`]. Nothing from the wire can set it: tonic gives a
/// request only the extensions its own server layers insert.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// Decides who a caller is.
pub struct Authenticator {
    config: AuthConfig,
    store: Arc<dyn Store>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: AuthConfig, store: Arc<dyn Store>) -> Self {
        Self { config, store }
    }

    pub fn is_open(&self) -> bool {
        self.config.mode == AuthMode::Open
    }

    /// Who presents `creds`. A bearer token wins over a certificate (a person's token through an
    /// agent host's certificate acts as the person).
    pub fn authenticate(&self, creds: &Credentials) -> Result<Principal, Status> {
        if self.is_open() {
            return Ok(Principal {
                name: "dev".into(),
                role: Role::Admin,
                host: None,
                open: true,
            });
        }
        if let Some(token) = &creds.bearer {
            if !creds.tls && !self.config.allow_plaintext_tokens {
                return Err(Status::unauthenticated(
                    "bearer tokens are accepted only over TLS (set [auth] allow_plaintext_tokens behind a TLS proxy)",
                ));
            }
            let found = self
                .store
                .token_by_hash(&token_hash(token))
                .map_err(|e: StoreError| Status::internal(e.to_string()))?;
            return match found {
                Some(t) if t.revoked_at.is_none() => Ok(Principal {
                    name: format!("token:{}", t.name),
                    role: t.role,
                    host: t.host,
                    open: false,
                }),
                Some(t) => Err(Status::unauthenticated(format!(
                    "token {} was revoked",
                    t.id
                ))),
                None => Err(Status::unauthenticated("unknown bearer token")),
            };
        }
        if let Some(cn) = &creds.cert_cn {
            if let Some(c) = self.config.certificates.iter().find(|c| &c.cn == cn) {
                return Ok(Principal {
                    name: format!("cert:{cn}"),
                    role: c.role,
                    host: (c.role == Role::Agent)
                        .then(|| c.host.clone().unwrap_or_else(|| cn.clone())),
                    open: false,
                });
            }
            if self.config.agent_certificates {
                return Ok(Principal {
                    name: format!("cert:{cn}"),
                    role: Role::Agent,
                    host: Some(cn.clone()),
                    open: false,
                });
            }
            return Err(Status::unauthenticated(format!(
                "client certificate `{cn}` is not enrolled ([[auth.certificates]])"
            )));
        }
        Err(Status::unauthenticated(
            "no identity: present a client certificate or `authorization: Bearer <token>` (pivotctl --token / PIVOT_TOKEN)",
        ))
    }

    /// Who is calling, if they may do `right`.
    pub fn authorize<T>(&self, req: &Request<T>, right: Right) -> Result<Principal, Status> {
        let p = match req.extensions().get::<Authenticated>() {
            Some(Authenticated(p)) => p.clone(),
            None => self.authenticate(&Credentials::of(req)?)?,
        };
        check(&p, right)?;
        Ok(p)
    }
}

/// PERMISSION_DENIED naming the role and the right, unless `p` has it.
pub fn check(p: &Principal, right: Right) -> Result<(), Status> {
    if p.open || p.role.allows(right) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{} has role `{}`, which may not {}",
            p.name,
            p.role,
            right.words()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn auth(config: AuthConfig) -> (tempfile::TempDir, Arc<dyn Store>, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
        let a = Authenticator::new(config, Arc::clone(&store));
        (dir, store, a)
    }

    fn creds(bearer: Option<&str>, cn: Option<&str>, tls: bool) -> Credentials {
        Credentials {
            bearer: bearer.map(str::to_owned),
            cert_cn: cn.map(str::to_owned),
            tls,
        }
    }

    #[test]
    fn roles_carry_their_rights_and_nothing_else() {
        use Right::*;
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::Operator, [true, true, false, false]),
            (Role::Admin, [true, true, true, false]),
            (Role::Agent, [false, false, false, true]),
        ];
        for (role, want) in table {
            for (right, w) in [Read, Operate, Administer, AgentSession]
                .into_iter()
                .zip(want)
            {
                assert_eq!(role.allows(right), w, "{role} {right:?}");
            }
        }
        let p = Principal {
            name: "token:bob".into(),
            role: Role::Viewer,
            host: None,
            open: false,
        };
        let e = check(&p, Right::Operate).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("role `viewer`"), "{}", e.message());
        assert!(e.message().contains("operate"), "{}", e.message());
    }

    #[test]
    fn tokens_are_found_by_hash_refused_when_revoked_and_only_over_tls() {
        let (_d, store, a) = auth(AuthConfig::default());
        let (token, rec) = new_token("alice", Role::Operator, None, Utc::now());
        store.put_token(&rec).unwrap();
        assert!(
            !store
                .list_tokens()
                .unwrap()
                .iter()
                .any(|t| t.sha256_hex.contains(&token))
        );
        let p = a.authenticate(&creds(Some(&token), None, true)).unwrap();
        assert_eq!(p.name, "token:alice");
        assert_eq!(p.role, Role::Operator);
        let e = a
            .authenticate(&creds(Some(&token), None, false))
            .unwrap_err();
        assert!(e.message().contains("only over TLS"), "{}", e.message());
        assert_eq!(
            a.authenticate(&creds(Some("pvt_nope"), None, true))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(store.revoke_token(&rec.id, Utc::now()).unwrap());
        let e = a
            .authenticate(&creds(Some(&token), None, true))
            .unwrap_err();
        assert!(e.message().contains("revoked"), "{}", e.message());
    }

    #[test]
    fn certificates_map_to_roles_and_unlisted_ones_to_their_host() {
        let config = AuthConfig {
            certificates: vec![CertificateIdentity {
                cn: "ops-console".into(),
                role: Role::Operator,
                host: None,
            }],
            ..AuthConfig::default()
        };
        let (_d, _s, a) = auth(config.clone());
        let p = a
            .authenticate(&creds(None, Some("ops-console"), true))
            .unwrap();
        assert_eq!((p.role, p.host), (Role::Operator, None));
        let p = a.authenticate(&creds(None, Some("rack-7"), true)).unwrap();
        assert_eq!(p.role, Role::Agent);
        assert!(p.may_be_host("rack-7"));
        assert!(!p.may_be_host("rack-8"));
        let (_d, _s, a) = auth(AuthConfig {
            agent_certificates: false,
            ..config
        });
        assert!(a.authenticate(&creds(None, Some("rack-7"), true)).is_err());
        assert!(a.authenticate(&creds(None, None, false)).is_err());
    }

    #[test]
    fn open_mode_is_an_admin_for_any_host() {
        let (_d, _s, a) = auth(AuthConfig {
            mode: AuthMode::Open,
            ..AuthConfig::default()
        });
        let p = a.authenticate(&creds(None, None, false)).unwrap();
        assert_eq!(p.role, Role::Admin);
        assert!(p.may_be_host("anything"));
    }
}
