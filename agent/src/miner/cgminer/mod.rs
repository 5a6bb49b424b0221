//! The cgminer-style API on TCP 4028 that Antminer, Braiins, LuxOS and Whatsminer v2 share:
//! requests, STATUS interpretation, and multi-command reads (one connection per poll).

pub mod parse;
pub mod typed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use super::MinerAddr;
use super::error::{MinerError, snippet};
use super::transport::{Framing, Timeouts, exchange_sized};

/// The STATUS block of a reply: array form (`[{"STATUS":"S","Code":11,"Msg":..}]`, cgminer) or
/// flat form (`"STATUS":"E","Code":135,"Msg":..`, Whatsminer's own commands).
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub letter: String,
    pub code: i64,
    pub msg: String,
}

impl Status {
    pub fn of(reply: &Value) -> Option<Status> {
        let (holder, letter) = match reply.get("STATUS")? {
            Value::Array(a) => {
                let first = a.first()?;
                (
                    first,
                    first.get("STATUS").and_then(Value::as_str)?.to_owned(),
                )
            }
            Value::String(s) => (reply, s.clone()),
            _ => return None,
        };
        let code = holder.get("Code").and_then(parse::number).unwrap_or(-1.0) as i64;
        let msg = match holder.get("Msg") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        Some(Status { letter, code, msg })
    }

    /// S (success) and I (informational) are successes; W, E, F and anything else are not.
    pub fn is_success(&self) -> bool {
        matches!(self.letter.as_str(), "S" | "I")
    }
}

/// A client for one miner's 4028-style port.
#[derive(Debug)]
pub struct CgClient {
    pub addr: MinerAddr,
    pub port: u16,
    pub timeouts: Timeouts,
    /// The size of the last poll's reply: the next one starts with a buffer that holds it.
    last_reply_len: AtomicUsize,
}

impl Clone for CgClient {
    fn clone(&self) -> Self {
        Self::new(self.addr.clone(), self.port, self.timeouts)
    }
}

impl CgClient {
    pub fn new(addr: MinerAddr, port: u16, timeouts: Timeouts) -> Self {
        Self {
            addr,
            port,
            timeouts,
            last_reply_len: AtomicUsize::new(0),
        }
    }

    /// Sends a raw payload and returns the parsed reply, without judging its STATUS.
    pub async fn raw(&self, payload: &[u8], command: &str) -> Result<Value, MinerError> {
        let bytes = self.fetch(payload, command, 4096).await?;
        parse::parse_reply(&bytes).map_err(|e| MinerError::Malformed {
            addr: self.addr.to_string(),
            command: command.to_owned(),
            problem: e.to_string(),
            snippet: snippet(&bytes),
        })
    }

    /// Sends `{"command":..,"parameter":..}` and returns the reply, or a typed error when its
    /// STATUS is not success.
    pub async fn command(
        &self,
        command: &str,
        parameter: Option<&str>,
    ) -> Result<Value, MinerError> {
        let mut req = json!({ "command": command });
        if let Some(p) = parameter {
            req["parameter"] = json!(p);
        }
        let reply = self.raw(req.to_string().as_bytes(), command).await?;
        self.check(command, reply)
    }

    /// Judges a reply's STATUS: a non-success becomes [`MinerError::Status`] (or `AuthRejected`
    /// for cgminer's code 45, access denied).
    pub fn check(&self, command: &str, reply: Value) -> Result<Value, MinerError> {
        match Status::of(&reply) {
            Some(s) if s.is_success() => Ok(reply),
            Some(s) if s.code == 45 => Err(MinerError::AuthRejected {
                addr: self.addr.to_string(),
                what: format!("`{command}`"),
                detail: format!("STATUS {} code 45: {}", s.letter, s.msg),
            }),
            Some(s) => Err(MinerError::Status {
                addr: self.addr.to_string(),
                command: command.to_owned(),
                letter: s.letter,
                code: s.code,
                message: s.msg,
            }),
            None => Err(MinerError::Malformed {
                addr: self.addr.to_string(),
                command: command.to_owned(),
                problem: "no STATUS in the reply".into(),
                snippet: snippet(reply.to_string().as_bytes()),
            }),
        }
    }

    /// Reads several commands, on one connection when the firmware accepts `a+b+c`, else one
    /// request each. Returns each command's own reply (the inner object of the multi reply).
    /// A command whose reply is missing or failed is absent from the map; the first error is
    /// returned only when nothing at all could be read.
    pub async fn multi(&self, commands: &[&str]) -> Result<HashMap<String, Value>, MinerError> {
        let joined = commands.join("+");
        match self
            .raw(json!({ "command": joined }).to_string().as_bytes(), &joined)
            .await
        {
            Ok(reply) => {
                let split = split_multi(&reply, commands);
                if !split.is_empty() {
                    return Ok(split);
                }
                // A firmware without `+` answers with one STATUS E (invalid command): fall back.
                tracing::debug!(miner = %self.addr, command = %joined, "multi-command refused; reading commands one by one");
            }
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => {
                tracing::debug!(miner = %self.addr, error = %e, "multi-command unreadable; reading commands one by one");
            }
        }
        let mut out = HashMap::new();
        let mut first_err = None;
        for c in commands {
            match self.command(c, None).await {
                Ok(v) => {
                    out.insert((*c).to_owned(), v);
                }
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (out.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }
}

/// The request bytes of a multi-command read, built once per driver rather than per poll.
pub fn multi_request(commands: &[&str]) -> Box<[u8]> {
    json!({ "command": commands.join("+") })
        .to_string()
        .into_bytes()
        .into_boxed_slice()
}

impl CgClient {
    /// The poll's read: `request` (from [`multi_request`] of `commands`) on one connection,
    /// its replies read by the typed reader and handed to `read`; when the firmware refuses
    /// `a+b` or its reply is unreadable, each command on its own connection. A command whose
    /// reply is missing or failed is absent; the first error is returned only when nothing at
    /// all could be read.
    pub async fn read_multi<T>(
        &self,
        commands: &[&str],
        request: &[u8],
        read: impl FnOnce(&typed::Multi<'_>) -> T,
    ) -> Result<T, MinerError> {
        let joined = || commands.join("+");
        let expect = self.last_reply_len.load(Ordering::Relaxed) + 256;
        match self.fetch(request, "poll", expect).await {
            Ok(bytes) => match typed::multi(&bytes, commands) {
                Ok(m) if m.any_success() => {
                    self.last_reply_len.store(bytes.len(), Ordering::Relaxed);
                    return Ok(read(&m));
                }
                Ok(_) => {
                    tracing::debug!(miner = %self.addr, command = %joined(), "multi-command refused; reading commands one by one");
                }
                Err(e) => {
                    tracing::debug!(miner = %self.addr, error = %e, "multi-command unreadable; reading commands one by one");
                }
            },
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => {
                tracing::debug!(miner = %self.addr, error = %e, "multi-command failed; reading commands one by one");
            }
        }
        let mut replies = Vec::with_capacity(commands.len());
        let mut first_err = None;
        for c in commands {
            let req = json!({ "command": c }).to_string();
            match self.fetch(req.as_bytes(), c, 4096).await {
                Ok(bytes) => replies.push((*c, bytes)),
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut m = typed::Multi::default();
        for (c, bytes) in &replies {
            match typed::single(bytes) {
                Ok(r) if r.is_success() => m.insert(c, r),
                Ok(r) => {
                    first_err.get_or_insert_with(|| MinerError::Status {
                        addr: self.addr.to_string(),
                        command: (*c).to_owned(),
                        letter: r.status.letter.owned().unwrap_or_default(),
                        code: r.status.code.get().or(r.code.get()).unwrap_or(-1.0) as i64,
                        message: r.status.msg.owned().unwrap_or_default(),
                    });
                }
                Err(e) => {
                    first_err.get_or_insert_with(|| MinerError::Malformed {
                        addr: self.addr.to_string(),
                        command: (*c).to_owned(),
                        problem: e.to_string(),
                        snippet: snippet(bytes),
                    });
                }
            }
        }
        match (m.any_success(), first_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(read(&m)),
        }
    }

    /// One exchange's raw reply bytes, read into a buffer of `expect` bytes to start with.
    async fn fetch(
        &self,
        payload: &[u8],
        command: &str,
        expect: usize,
    ) -> Result<Vec<u8>, MinerError> {
        exchange_sized(
            &self.addr,
            self.port,
            payload,
            Framing::NulOrEof,
            self.timeouts,
            command,
            expect,
        )
        .await
    }
}

/// The per-command replies inside a multi-command reply, keeping only successful ones.
pub fn split_multi(reply: &Value, commands: &[&str]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for c in commands {
        let inner = match reply.get(*c) {
            Some(Value::Array(a)) => a.first().cloned(),
            Some(v @ Value::Object(_)) => Some(v.clone()),
            _ => None,
        };
        if let Some(v) = inner
            && Status::of(&v).is_some_and(|s| s.is_success())
        {
            out.insert((*c).to_owned(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_array_and_flat_forms() {
        let a =
            parse::parse_text(r#"{"STATUS":[{"STATUS":"E","Code":14,"Msg":"Invalid command"}]}"#)
                .unwrap();
        assert_eq!(
            Status::of(&a),
            Some(Status {
                letter: "E".into(),
                code: 14,
                msg: "Invalid command".into()
            })
        );
        // Whatsminer v2 token error (pyasic rpc/btminer.py handles Code 135/136 this way).
        let w = parse::parse_text(
            r#"{"STATUS":"E","When":1,"Code":"135","Msg":"check token err","Description":""}"#,
        )
        .unwrap();
        let s = Status::of(&w).unwrap();
        assert_eq!((s.letter.as_str(), s.code), ("E", 135));
        assert!(!s.is_success());
    }

    #[test]
    fn splits_a_multi_command_reply() {
        // Shape from cgminer's API-README ("summary+pools" returns each reply in an array).
        let r = parse::parse_text(r#"{"summary":[{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"Elapsed":1}],"id":1}],"pools":[{"STATUS":[{"STATUS":"E","Code":14}],"id":1}],"id":1}"#).unwrap();
        let m = split_multi(&r, &["summary", "pools", "stats"]);
        assert!(m.contains_key("summary"));
        assert!(!m.contains_key("pools"));
        assert!(!m.contains_key("stats"));
    }
}
