//! The cgminer-style TCP API (port 4028) shared by Antminer, Braiins (BOSminer), LuxOS and
//! Whatsminer v2: one request per connection, a JSON reply ended by a NUL byte, then close.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::faults::{Fault, render};
use super::state::Core;

/// Longest request accepted; a client sending more is cut off.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send a complete request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A plain-text request (`summary`, `pools|0`) is complete after this much silence.
const PLAIN_IDLE: Duration = Duration::from_millis(150);

/// One decoded request.
#[derive(Debug)]
pub(crate) struct Request {
    /// The command as sent (one element of a `a+b` multi-command).
    pub command: String,
    /// `parameter` as a string (numbers and booleans rendered), if any.
    pub parameter: Option<String>,
    /// The whole request object (Whatsminer v2 puts its fields at the top level).
    pub raw: Value,
}

/// What a dialect answers to one command: the full reply object, without `"id"`.
pub(crate) type Handler = fn(&Core, &Request) -> Value;

/// Accept connections until the miner shuts down.
pub(crate) fn serve(listener: TcpListener, core: Arc<Core>, handler: Handler) {
    tokio::spawn(async move {
        let mut stop = core.shutdown_signal();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { break },
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(stream, Arc::clone(&core), handler));
                    }
                    // Out of file descriptors or a reset before accept: back off, keep serving.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
    });
}

async fn connection(mut stream: TcpStream, core: Arc<Core>, handler: Handler) {
    if core.is_rebooting() {
        return;
    }
    let faults = core.faults();
    if faults.contains(&Fault::CloseWithoutReply) {
        return;
    }
    let Some(bytes) = read_request(&mut stream).await else {
        return;
    };
    if faults.contains(&Fault::Hang) {
        hang(&core).await;
        return;
    }
    let reply = answer(&core, &bytes, &faults, handler);
    let (body, truncated) = render(reply, &faults);
    let mut out = body;
    if !truncated && !faults.contains(&Fault::NoNul) {
        out.push(0);
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Hold the connection open, answering nothing, until the miner shuts down.
pub(crate) async fn hang(core: &Core) {
    let mut stop = core.shutdown_signal();
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
}

/// Read one request: a complete JSON value, or plain text ended by a newline, silence or EOF.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let first = buf.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let plain = first.is_some_and(|b| b != b'{');
        let wait = if plain { PLAIN_IDLE } else { REQUEST_TIMEOUT };
        let until = deadline.min(tokio::time::Instant::now() + wait);
        match tokio::time::timeout_at(until, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return if buf.is_empty() { None } else { Some(buf) },
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REQUEST {
                    return None;
                }
                let trimmed = trim_nul(&buf);
                if trimmed.first() == Some(&b'{')
                    && serde_json::from_slice::<Value>(trimmed).is_ok()
                {
                    return Some(buf);
                }
                if plain && buf.contains(&b'\n') {
                    return Some(buf);
                }
            }
            Ok(Err(_)) => return None,
            Err(_) => return if plain { Some(buf) } else { None },
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace() && *c != 0)
        .map_or(0, |i| i + 1);
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(end)
        .min(end);
    &b[start..end]
}

/// Decode the request and build the reply object (with `"id":1`).
fn answer(core: &Core, bytes: &[u8], faults: &[Fault], handler: Handler) -> Value {
    let description = core.description();
    let Some((command, parameter, raw)) = parse(bytes) else {
        return with_id(json!({"STATUS": status("E", 23, "Invalid JSON", &description)}));
    };
    if let Some(code) = faults.iter().find_map(|f| match f {
        Fault::StatusError(c) => Some(*c),
        _ => None,
    }) {
        let msg = match code {
            14 => "Invalid command".to_owned(),
            45 => "Access denied to command".to_owned(),
            c => format!("Error {c}"),
        };
        return with_id(json!({"STATUS": status("E", code, &msg, &description)}));
    }
    if command.contains('+') {
        let mut map = serde_json::Map::new();
        for part in command.split('+').filter(|p| !p.is_empty()) {
            let req = Request {
                command: part.to_owned(),
                parameter: parameter.clone(),
                raw: raw.clone(),
            };
            map.insert(part.to_owned(), json!([handler(core, &req)]));
        }
        return with_id(Value::Object(map));
    }
    let req = Request {
        command,
        parameter,
        raw,
    };
    with_id(handler(core, &req))
}

fn with_id(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert("id".to_owned(), json!(1));
    }
    v
}

fn parse(bytes: &[u8]) -> Option<(String, Option<String>, Value)> {
    let text = String::from_utf8_lossy(trim_nul(bytes)).into_owned();
    if text.starts_with('{') {
        let raw: Value = serde_json::from_str(&text).ok()?;
        let command = raw
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned();
        let parameter = raw.get("parameter").and_then(|p| match p {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        });
        Some((command, parameter, raw))
    } else {
        let line = text.lines().next().unwrap_or("").trim().to_owned();
        let (command, parameter) = match line.split_once('|') {
            Some((c, p)) => (c.to_owned(), Some(p.to_owned())),
            None => (line, None),
        };
        Some((command, parameter, Value::Null))
    }
}

/// A one-element `STATUS` array.
pub(crate) fn status(letter: &str, code: u32, msg: &str, description: &str) -> Value {
    json!([{
        "STATUS": letter,
        "When": unix_now(),
        "Code": code,
        "Msg": msg,
        "Description": description,
    }])
}

/// The usual answer to a command the dialect does not know.
pub(crate) fn invalid_command(core: &Core) -> Value {
    json!({"STATUS": status("E", 14, "Invalid command", &core.description())})
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_plain_requests() {
        let (c, p, _) = parse(br#"{"command":"summary+pools","parameter":3}"#).unwrap();
        assert_eq!((c.as_str(), p.as_deref()), ("summary+pools", Some("3")));
        let (c, p, _) = parse(b"pools|0\n").unwrap();
        assert_eq!((c.as_str(), p.as_deref()), ("pools", Some("0")));
        assert!(parse(b"{nope").is_none());
    }
}
