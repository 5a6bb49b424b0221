//! LuxOS (LUXminer): the cgminer API on 4028 plus sessions, `curtail`, `profileset` and `atmset`.
//!
//! Facts: `version` has `"LUXminer"` and `"Type":"Antminer <model>"`; one session at a time
//! (`logon` → `SESSION[0].SessionID`; a second `logon` while one is live gets Code 402); sessions
//! expire after 60 s idle; `curtail <sid>,sleep|wakeup` turns the hashboards (and PSU) off and on
//! and persists across restarts; profiles are named by watts (`3200W`); `power` reports watts.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::antminer;
use super::cgminer::{Request, invalid_command, status};
use super::faults::Fault;
use super::readings::Reading;
use super::state::{Core, Session};

/// The profiles this miner offers: `default` (nameplate) and one per 10 % step of nameplate.
fn profiles(core: &Core) -> Vec<(String, u32)> {
    let np = core.spec.model.nameplate_w;
    let mut out = vec![("default".to_owned(), np)];
    for pct in [60u32, 70, 80, 90, 110] {
        let w = np * pct / 100 / 10 * 10;
        out.push((format!("{w}W"), w));
    }
    out
}

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    let desc = core.description();
    let r = Reading::of(core);
    let model = core.spec.model;
    match req.command.as_str() {
        "version" => json!({
            "STATUS": status("S", 22, "LUXminer versions", &desc),
            "VERSION": [{"API": "3.7", "LUXminer": "2025.1.10.143624-6d7a4e4d", "Miner": "2025.1.10.143624",
                         "Type": model.name}],
        }),
        "summary" | "pools" | "devs" => antminer::api(core, req),
        "stats" => {
            let mut v = antminer::api(core, req);
            if let Some(first) = v.pointer_mut("/STATS/0").and_then(Value::as_object_mut) {
                first.remove("BMMiner");
                first.insert("LUXminer".to_owned(), json!("2025.1.10.143624"));
            }
            v
        }
        "power" => json!({
            "STATUS": status("S", 335, "Power", &desc),
            "POWER": [{"PSU": !core.snapshot().sleep_requested, "Watts": r.watts()}],
        }),
        "temps" => json!({
            "STATUS": status("S", 201, "Temps", &desc),
            "TEMPS": (0..r.boards).map(|b| json!({"TEMP": b, "ID": b, "Board": r.board_temp(b),
                "Chip": r.chip_temp(b), "TopLeft": r.chip_temp(b), "TopRight": r.chip_temp(b),
                "BottomLeft": r.board_temp(b), "BottomRight": r.board_temp(b)})).collect::<Vec<_>>(),
        }),
        "fans" => json!({
            "STATUS": status("S", 202, "4 Fan(s)", &desc),
            "FANS": (0..4).map(|f| json!({"FAN": f, "ID": f, "RPM": r.fan_rpm(f), "Speed": 100}))
                .collect::<Vec<_>>(),
        }),
        "config" => {
            let inner = core.lock();
            json!({
                "STATUS": status("S", 33, "LUXminer config", &desc),
                "CONFIG": [{"Profile": inner.profile, "IsAtmEnabled": inner.atm_enabled, "RedLed": "off",
                            "MACAddr": r.mac(), "Hostname": "luxos", "CurtailMode": if inner.awake { "None" } else { "Sleep" },
                            "IsPowerSupplyOn": inner.awake}],
            })
        }
        "profiles" => json!({
            "STATUS": status("S", 34, "LUXminer profiles", &desc),
            "PROFILES": profiles(core).into_iter().map(|(name, w)| {
                let ths = model.nameplate_ths * (f64::from(w) / f64::from(model.nameplate_w)).powf(0.9);
                json!({"Profile Name": name, "Watts": w, "Hashrate": (ths * 100.0).round() / 100.0,
                       "IsTuned": true, "IsDynamic": false, "Frequency": 500, "Voltage": 13.2, "Step": "0"})
            }).collect::<Vec<_>>(),
        }),
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
            let Some((name, w)) = profiles(core).into_iter().find(|(n, _)| n == arg) else {
                return Err(format!("profile {arg:?} not found"));
            };
            core.lock().profile = name.clone();
            core.set_power_target(if name == "default" { None } else { Some(w) });
            Ok(json!({"STATUS": status("S", 337, "Profile set", &desc),
                      "PROFILE": [{"Profile": name, "Result": "success"}]}))
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
        "atm" => {
            json!({"STATUS": status("S", 338, "ATM", &desc), "ATM": [{"Enabled": core.lock().atm_enabled}]})
        }
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
        last_used: now,
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
            s.last_used = now;
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
