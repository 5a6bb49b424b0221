//! Each dialect over real sockets, with hand-written raw requests.

use std::net::SocketAddr;
use std::time::Duration;

use pivot_sim::miner::{Bind, Dialect, Fault, JsonQuirk, MinerSpec, RunState, Timing, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send one cgminer request and read until EOF (a reset counts as an empty reply).
pub async fn cgminer(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap();
    out
}

pub fn json_of(raw: &[u8]) -> serde_json::Value {
    assert_eq!(raw.last(), Some(&0), "reply must end with NUL");
    serde_json::from_slice(&raw[..raw.len() - 1]).unwrap()
}

async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn antminer_version_names_the_model_and_ends_with_nul() {
    let m = spawn(
        MinerSpec::new(Dialect::Antminer).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let v = json_of(&cgminer(m.api_addr(), r#"{"command":"version"}"#).await);
    assert_eq!(v["VERSION"][0]["Type"], "Antminer S19j Pro");
    let v = json_of(&cgminer(m.api_addr(), r#"{"command":"summary+pools"}"#).await);
    assert!(v["summary"][0]["SUMMARY"][0]["GHS 5s"].as_f64().unwrap() > 100_000.0);
    assert_eq!(v["pools"][0]["STATUS"][0]["STATUS"], "S");
    // the web UI wants Digest auth
    let resp = http(
        m.http_addr().unwrap(),
        "GET /cgi-bin/get_miner_conf.cgi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        resp.contains("Digest realm=\"antMiner Configuration\""),
        "{resp}"
    );
}

#[tokio::test]
async fn luxos_second_logon_gets_402_and_curtail_sleeps() {
    let m = spawn(
        MinerSpec::new(Dialect::Luxos).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let v = json_of(&cgminer(m.api_addr(), r#"{"command":"logon"}"#).await);
    let sid = v["SESSION"][0]["SessionID"].as_str().unwrap().to_owned();
    let v = json_of(&cgminer(m.api_addr(), r#"{"command":"logon"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 402);
    let v = json_of(
        &cgminer(
            m.api_addr(),
            &format!(r#"{{"command":"curtail","parameter":"{sid},sleep"}}"#),
        )
        .await,
    );
    assert_eq!(v["STATUS"][0]["STATUS"], "S");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = m.handle().snapshot();
    assert_eq!(s.state, RunState::Sleeping);
    assert_eq!(s.hashrate_ths, 0.0);
    // a curtail sleep survives a reboot
    m.handle().reboot();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(m.handle().snapshot().state, RunState::Sleeping);
    let bad = json_of(
        &cgminer(
            m.api_addr(),
            r#"{"command":"curtail","parameter":"nope,wakeup"}"#,
        )
        .await,
    );
    assert_eq!(bad["STATUS"][0]["STATUS"], "E");
}

#[tokio::test]
async fn whatsminer_v3_is_length_prefixed_json() {
    let m = spawn(
        MinerSpec::new(Dialect::WhatsminerV3).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let mut s = TcpStream::connect(m.api_addr()).await.unwrap();
    let req = br#"{"cmd":"get.device.info"}"#;
    s.write_all(&(req.len() as u32).to_le_bytes())
        .await
        .unwrap();
    s.write_all(req).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["msg"]["miner"]["type"], "M60S_VK30");
    assert!(v["msg"]["salt"].is_string());
}

#[tokio::test]
async fn bitaxe_pause_and_resume() {
    let m = spawn(
        MinerSpec::new(Dialect::Bitaxe).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let resp = http(m.api_addr(), "POST /api/system/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = http(
        m.api_addr(),
        "GET /api/system/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.contains("\"miningPaused\":true"), "{resp}");
}

#[tokio::test]
async fn faults_hang_close_no_nul_quirks_and_status_errors() {
    let m = spawn(
        MinerSpec::new(Dialect::Antminer).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let h = m.handle();
    h.set_faults(vec![Fault::CloseWithoutReply]);
    assert!(
        cgminer(m.api_addr(), r#"{"command":"summary"}"#)
            .await
            .is_empty()
    );
    h.set_faults(vec![Fault::NoNul]);
    let raw = cgminer(m.api_addr(), r#"{"command":"summary"}"#).await;
    assert_ne!(raw.last(), Some(&0));
    h.set_faults(vec![Fault::Quirk(JsonQuirk::MissingComma)]);
    let raw = cgminer(m.api_addr(), r#"{"command":"stats"}"#).await;
    assert!(String::from_utf8_lossy(&raw).contains("}{"));
    h.set_faults(vec![Fault::StatusError(45)]);
    let v = json_of(&cgminer(m.api_addr(), r#"{"command":"summary"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 45);
    h.set_faults(vec![Fault::Hang]);
    let mut s = TcpStream::connect(m.api_addr()).await.unwrap();
    s.write_all(br#"{"command":"summary"}"#).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
            .await
            .is_err(),
        "must hang"
    );
    h.set_faults(vec![]);
    assert!(json_of(&cgminer(m.api_addr(), "summary").await)["SUMMARY"].is_array());
}
