//! LuxOS (LUXminer): the cgminer API on 4028 plus sessions, `curtail`, `profileset` and `atmset`.
//!
//! Facts: `version` has `"LUXminer"` and `"Type":"Antminer <model>"`; one session at a time
//! (`logon` → `SESSION[0].SessionID`; a second `logon` while one is live gets Code 402); sessions
//! expire after 60 s idle; `curtail <sid>,sleep|wakeup` turns the hashboards (and PSU) off and on
//! and persists across restarts; profiles are named by frequency (`290MHz`, the stock one
//! `default`: asic-rs' LuxOS capture), `profileset` picks one; `power` reports watts. What only
//! reads is in `luxos_status`.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::auth_clock;
use super::cgminer::{Request, invalid_command, status};
use super::faults::Fault;
use super::luxos_status;
use super::state::{Core, Session};

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    if let Some(reply) = luxos_status::read(core, &req.command, req.parameter.as_deref()) {
        return reply;
    }
    let desc = core.description();
    match req.command.as_str() {
        "session" => {
            let now = Instant::now();
            let mut inner = core.lock();
            core.settle(&mut inner, now);
            let sid = inner
                .session
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default();
            json!({"STATUS": status("S", 302, "Session", &desc), "SESSION": [{"SessionID": sid}]})
        }
        "logon" => logon(core, &desc),
        "logoff" => match check_session(core, req, &desc) {
            Err(e) => e,
            Ok(_) => {
                core.lock().session = None;
                json!({"STATUS": status("S", 303, "Session closed", &desc)})
            }
        },
        "curtail" => with_session(core, req, &desc, |arg| match arg {
            "sleep" => {
                core.set_awake(false);
                Ok(json!({"STATUS": status("S", 335, "Curtail sleep", &desc)}))
            }
            "wakeup" => {
                core.set_awake(true);
                Ok(json!({"STATUS": status("S", 335, "Curtail wakeup", &desc)}))
            }
            other => Err(format!("invalid curtail mode {other:?}")),
        }),
        "profileset" => with_session(core, req, &desc, |arg| {
            let Some(p) = luxos_status::select_profile(core, arg) else {
                return Err(format!("profile {arg:?} not found"));
            };
            Ok(json!({"STATUS": status("S", 337, "Profile set", &desc),
                      "PROFILE": [{"Profile": p.name, "Result": "success"}]}))
        }),
        "atmset" => with_session(core, req, &desc, |arg| {
            let enabled = match arg.strip_prefix("enabled=") {
                Some("true") => true,
                Some("false") => false,
                _ => return Err(format!("invalid atmset argument {arg:?}")),
            };
            core.lock().atm_enabled = enabled;
            Ok(json!({"STATUS": status("S", 339, "ATM set", &desc), "ATM": [{"Enabled": enabled}]}))
        }),
        "rebootdevice" | "resetminer" => with_session(core, req, &desc, |_| {
            core.reboot();
            Ok(json!({"STATUS": status("S", 341, "Rebooting", &desc)}))
        }),
        _ => invalid_command(core),
    }
}

fn logon(core: &Core, desc: &str) -> Value {
    let now = Instant::now();
    let id = format!("{:08x}", core.next_counter().wrapping_mul(2_654_435_761));
    let mut inner = core.lock();
    core.settle(&mut inner, now);
    if inner.session.is_some() || inner.faults.contains(&Fault::LuxosSessionBusy) {
        return json!({"STATUS": status("E", 402, "Another session is active", desc)});
    }
    inner.session = Some(Session {
        id: id.clone(),
        last_used: auth_clock::instant(),
    });
    json!({"STATUS": status("S", 300, "Session created", desc), "SESSION": [{"SessionID": id}]})
}

/// Validate `<sid>[,arg]`; on success refresh the session and return the argument.
fn check_session(core: &Core, req: &Request, desc: &str) -> Result<String, Value> {
    let param = req.parameter.clone().unwrap_or_default();
    let (sid, arg) = param.split_once(',').unwrap_or((param.as_str(), ""));
    let now = Instant::now();
    let mut inner = core.lock();
    core.settle(&mut inner, now);
    // luxos-expired: the session is gone by the time it is used, as after 60 s idle — dropped
    // (so `session` reports none and a new `logon` succeeds), and this use is refused.
    let expired = inner.faults.contains(&Fault::LuxosSessionExpired);
    if expired {
        inner.session = None;
    }
    match &mut inner.session {
        Some(s) if s.id == sid.trim() && !expired => {
            s.last_used = auth_clock::instant();
            Ok(arg.trim().to_owned())
        }
        _ => Err(json!({"STATUS": status("E", 401, "Invalid session id", desc)})),
    }
}

fn with_session(
    core: &Core,
    req: &Request,
    desc: &str,
    act: impl FnOnce(&str) -> Result<Value, String>,
) -> Value {
    match check_session(core, req, desc) {
        Err(e) => e,
        Ok(arg) => act(&arg).unwrap_or_else(|msg| json!({"STATUS": status("E", 14, &msg, desc)})),
    }
}
