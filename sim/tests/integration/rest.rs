//! The HTTP dialects by hand: Braiins OS's REST flow (login, pause, resume, power target within
//! the constraints), and the Whatsminer v2 write path's refusals as raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use pivot_sim::miner::{Bind, Dialect, Fault, MinerSpec, RunState, Timing, spawn};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request (`Connection: close`); returns the status code and the body as JSON
/// (`Null` when it is not JSON).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(payload).unwrap_or(Value::Null))
}

#[tokio::test]
async fn braiins_rest_login_pause_resume_and_power_target_within_constraints() {
    let m = spawn(
        MinerSpec::new(Dialect::Braiins).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let web = m.http_addr().unwrap();

    // Everything under /api/v1 but the login wants the token.
    let (code, _) = request(web, "GET", "/api/v1/miner/details", None, None).await;
    assert_eq!(code, 401);
    let (code, _) = request(
        web,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "root", "password": "nope"})),
    )
    .await;
    assert_eq!(code, 401);
    let (code, v) = request(
        web,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "root", "password": "root"})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let t = Some(token.as_str());

    let (code, c) = request(web, "GET", "/api/v1/configuration/constraints", t, None).await;
    assert_eq!(code, 200, "{c}");
    let min = c["tuner_constraints"]["power_target"]["min"]["watt"]
        .as_u64()
        .unwrap();
    let max = c["tuner_constraints"]["power_target"]["max"]["watt"]
        .as_u64()
        .unwrap();
    assert!(min < max && max >= 3500, "{c}");

    let (code, _) = request(web, "PUT", "/api/v1/actions/pause", t, None).await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.handle().snapshot().state, RunState::Sleeping);
    let (code, _) = request(web, "PUT", "/api/v1/actions/resume", t, None).await;
    assert_eq!(code, 200);
    assert!(!m.handle().snapshot().sleep_requested);

    let want = min + (max - min) / 2;
    let (code, v) = request(
        web,
        "PUT",
        "/api/v1/performance/power-target",
        t,
        Some(json!({"watt": want})),
    )
    .await;
    assert_eq!((code, v["watt"].as_u64()), (200, Some(want)), "{v}");
    assert_eq!(
        m.handle().snapshot().power_target_w.map(u64::from),
        Some(want)
    );
    let (code, v) = request(web, "GET", "/api/v1/performance/tuner-state", t, None).await;
    assert_eq!(code, 200);
    assert_eq!(
        v["mode_state"]["powertargetmodestate"]["current_target"]["watt"].as_u64(),
        Some(want),
        "{v}"
    );
    let (code, _) = request(
        web,
        "PUT",
        "/api/v1/performance/power-target",
        t,
        Some(json!({"watt": max + 1})),
    )
    .await;
    assert_eq!(code, 400, "outside the constraints");

    // wrong-credentials: even the right password is refused, and so is a token issued before.
    m.handle().set_faults(vec![Fault::WrongCredentials]);
    let (code, _) = request(
        web,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "root", "password": "root"})),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = request(web, "PUT", "/api/v1/actions/pause", t, None).await;
    assert_eq!(code, 401);
    assert!(!m.handle().snapshot().sleep_requested);
}

#[tokio::test]
async fn bitaxe_info_names_the_chip_and_board_and_asic_names_the_device() {
    let m = spawn(
        MinerSpec::new(Dialect::Bitaxe).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let (code, info) = request(m.api_addr(), "GET", "/api/system/info", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(info["ASICModel"], "BM1370");
    assert_eq!(info["boardVersion"], "601");
    let (code, asic) = request(m.api_addr(), "GET", "/api/system/asic", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(asic["deviceModel"], "Gamma");
}

/// Send raw bytes to a 4028 port; the reply as JSON (it must end with NUL).
async fn cgminer(addr: SocketAddr, request: &str) -> Value {
    crate::dialects::json_of(&crate::dialects::cgminer(addr, request).await)
}

#[tokio::test]
async fn whatsminer_v2_token_and_encrypted_write_refusals() {
    let m = spawn(
        MinerSpec::new(Dialect::WhatsminerV2).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let t = cgminer(m.api_addr(), r#"{"command":"get_token"}"#).await;
    assert_eq!(
        (t["STATUS"].as_str(), t["Code"].as_u64()),
        (Some("S"), Some(134)),
        "{t}"
    );
    for k in ["time", "salt", "newsalt"] {
        assert!(t["Msg"][k].is_string(), "{t}");
    }
    // Data that does not decrypt with the miner's key: plain (unencrypted) 135.
    let v = cgminer(
        m.api_addr(),
        r#"{"enc":1,"data":"AAAAAAAAAAAAAAAAAAAAAA=="}"#,
    )
    .await;
    assert_eq!(
        (v["STATUS"].as_str(), v["Code"].as_u64()),
        (Some("E"), Some(135)),
        "{v}"
    );
    // devdetails names the model code, get_version the firmware.
    let v = cgminer(m.api_addr(), r#"{"command":"devdetails"}"#).await;
    assert_eq!(v["DEVDETAILS"][0]["Model"], "M50S_VH50");
    let v = cgminer(m.api_addr(), r#"{"command":"get_version"}"#).await;
    assert!(v["Msg"]["fw_ver"].is_string(), "{v}");
    assert!(!m.handle().snapshot().sleep_requested);
}

#[tokio::test]
async fn luxos_expired_session_is_dropped_and_a_new_logon_works() {
    let m = spawn(
        MinerSpec::new(Dialect::Luxos)
            .timing(Timing::fast())
            .faults(vec![Fault::LuxosSessionExpired]),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let v = cgminer(m.api_addr(), r#"{"command":"logon"}"#).await;
    let sid = v["SESSION"][0]["SessionID"].as_str().unwrap().to_owned();
    let v = cgminer(
        m.api_addr(),
        &format!(r#"{{"command":"curtail","parameter":"{sid},sleep"}}"#),
    )
    .await;
    assert_eq!(v["STATUS"][0]["STATUS"], "E", "{v}");
    let v = cgminer(m.api_addr(), r#"{"command":"session"}"#).await;
    assert_eq!(
        v["SESSION"][0]["SessionID"], "",
        "the expired session is gone"
    );
    let v = cgminer(m.api_addr(), r#"{"command":"logon"}"#).await;
    assert_eq!(v["STATUS"][0]["STATUS"], "S", "no 402 after expiry: {v}");
    assert!(!m.handle().snapshot().sleep_requested);
}
