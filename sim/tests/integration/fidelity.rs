//! What third-party clients read, command by command, without the clients: each reply the
//! pyasic and asic-rs cross-checks depend on has the shape of the real firmware's (sources in
//! the emulator's modules), so a regression shows here with the command named.

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use pivot_sim::miner::{Bind, Dialect, MinerSpec, Timing, spawn};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::dialects::{cgminer, json_of};

async fn cg(addr: SocketAddr, command: &str, parameter: Option<&str>) -> Value {
    let mut req = json!({ "command": command });
    if let Some(p) = parameter {
        req["parameter"] = json!(p);
    }
    json_of(&cgminer(addr, &req.to_string()).await)
}

fn ok(v: &Value) -> bool {
    v["STATUS"][0]["STATUS"] == "S"
}

#[tokio::test]
async fn luxos_answers_every_read_pyasic_and_asic_rs_send() {
    let m = spawn(
        MinerSpec::new(Dialect::Luxos).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // past the first ramp
    let api = m.api_addr();
    for (command, parameter, section) in [
        ("groups", None, "GROUPS"),
        ("tempctrl", None, "TEMPCTRL"),
        ("events", None, "EVENTS"),
        ("voltageget", Some("2"), "VOLTAGE"),
        ("healthchipget", Some("0"), "CHIPS"),
        ("atm", None, "ATM"),
        ("temps", None, "METADATA"),
        ("fans", None, "FANCTRL"),
    ] {
        let v = cg(api, command, parameter).await;
        assert!(ok(&v) && v[section].is_array(), "{command}: {v}");
    }
    let v = cg(api, "voltageget", Some("3")).await;
    assert_eq!(
        v["STATUS"][0]["STATUS"], "E",
        "an S21 has no fourth board: {v}"
    );
    let chips = cg(api, "healthchipget", Some("1")).await;
    assert_eq!(chips["CHIPS"].as_array().unwrap().len(), 108);

    let pools = cg(api, "pools", None).await;
    assert_eq!(pools["POOLS"][0]["GROUP"], 0, "{pools}");
    let devs = cg(api, "devs", None).await;
    let nominal_ths: f64 = devs["DEVS"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Nominal MHS"].as_f64().unwrap() / 1e6)
        .sum();
    assert!((nominal_ths - 200.0).abs() < 0.01, "{devs}");

    let conf = cg(api, "config", None).await;
    let c = &conf["CONFIG"][0];
    assert_eq!(
        c.as_object().unwrap().len(),
        43,
        "the capture's 43 keys: {c}"
    );
    assert_eq!(c["RedLed"], "auto");
    assert_eq!(c["Profile"], "default");

    let profiles = cg(api, "profiles", None).await;
    let names: Vec<&str> = profiles["PROFILES"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Profile Name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 25);
    assert_eq!(names.iter().filter(|n| **n == "default").count(), 1);
    assert!(
        names.iter().all(|n| *n == "default" || n.ends_with("MHz")),
        "{names:?}"
    );
    let stats = cg(api, "stats", None).await;
    assert_eq!(stats["STATS"][1]["chain_acn1"], 108);
    assert!(
        stats["STATS"][1]["temp_chip1"]
            .as_str()
            .unwrap()
            .contains('-')
    );

    // pyasic's config read is one multi-command: every part answers.
    let multi = cg(api, "tempctrl+fans+pools+groups+config+profiles", None).await;
    for part in ["tempctrl", "fans", "pools", "groups", "config", "profiles"] {
        assert!(ok(&multi[part][0]), "{part}: {multi}");
    }
}

#[tokio::test]
async fn chips_per_board_follow_the_model() {
    for (dialect, command, pointer, chips) in [
        (Dialect::Antminer, "stats", "/STATS/1/chain_acn1", 126),
        (Dialect::Luxos, "stats", "/STATS/1/chain_acn2", 108),
        (Dialect::Braiins, "devdetails", "/DEVDETAILS/0/Chips", 108),
        (
            Dialect::WhatsminerV2,
            "devs",
            "/DEVS/0/Effective Chips",
            135,
        ),
    ] {
        let m = spawn(
            MinerSpec::new(dialect).timing(Timing::fast()),
            Bind::localhost(),
        )
        .await
        .unwrap();
        let v = cg(m.api_addr(), command, None).await;
        assert_eq!(v.pointer(pointer), Some(&json!(chips)), "{dialect}: {v}");
    }
}

/// One HTTP request on a fresh connection; status line and body.
async fn http(addr: SocketAddr, head: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (headers.to_owned(), body.to_owned())
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

#[tokio::test]
async fn antminer_miner_type_cgi_names_model_and_control_board() {
    let m = spawn(
        MinerSpec::new(Dialect::Antminer).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let web = m.http_addr().unwrap();
    let path = "/cgi-bin/miner_type.cgi";
    let (challenge, _) = http(web, &format!("GET {path} HTTP/1.1"), "").await;
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    // RFC 2617 with qop=auth, as every client of this CGI answers it.
    let ha1 = md5_hex("root:antMiner Configuration:root");
    let ha2 = md5_hex(&format!("GET:{path}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"root\", realm=\"antMiner Configuration\", \
         nonce=\"{nonce}\", uri=\"{path}\", qop=auth, nc=00000001, cnonce=\"abc\", \
         response=\"{response}\""
    );
    let (head, body) = http(web, &format!("GET {path} HTTP/1.1\r\n{auth}"), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["miner_type"], "Antminer S19j Pro", "{v}");
    assert!(v["subtype"].is_string(), "{v}");
}

#[tokio::test]
async fn braiins_graphql_identifies_without_login_and_reads_after_it() {
    let m = spawn(
        MinerSpec::new(Dialect::Braiins).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let web = m.http_addr().unwrap();
    let post = |q: Value, cookie: Option<String>| async move {
        let head = match cookie {
            Some(c) => format!("POST /graphql HTTP/1.1\r\nCookie: {c}"),
            None => "POST /graphql HTTP/1.1".to_owned(),
        };
        let (h, b) = http(web, &head, &q.to_string()).await;
        (h, serde_json::from_str::<Value>(&b).unwrap())
    };
    let (_, v) = post(
        json!({"query": "{ bosminer { info { modelName } } }"}),
        None,
    )
    .await;
    assert_eq!(
        v["data"]["bosminer"]["info"]["modelName"], "Antminer S21",
        "{v}"
    );
    let (_, v) = post(
        json!({"query": "{ bos { info { version { full } } } }"}),
        None,
    )
    .await;
    assert!(
        v["data"]["bos"]["info"]["version"]["full"]
            .as_str()
            .unwrap()
            .contains("25.07")
    );
    let events = json!({"query": "{ events { appeals { id kind message timestamp } } }"});
    let (_, v) = post(events.clone(), None).await;
    assert!(
        v["errors"][0]["message"].is_string(),
        "needs a session: {v}"
    );

    let login = json!({
        "query": "mutation ($username: String!, $password: String!) { auth { login(username: \
                  $username, password: $password) { ... on VoidResult { void } } } }",
        "variables": {"username": "root", "password": "wrong"},
    });
    let (head, v) = post(login.clone(), None).await;
    assert!(
        v["errors"].is_array() && !head.contains("session_id="),
        "{head} {v}"
    );
    let mut login = login;
    login["variables"]["password"] = json!("root");
    let (head, v) = post(login, None).await;
    assert!(v["data"]["auth"]["login"].is_object(), "{v}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let (_, v) = post(events, Some(cookie)).await;
    assert_eq!(v["data"]["events"]["appeals"], json!([]), "{v}");
}

#[tokio::test]
async fn whatsminer_v3_firmware_still_answers_reads_on_4028_but_no_writes() {
    let m = spawn(
        MinerSpec::new(Dialect::WhatsminerV3).timing(Timing::fast()),
        Bind::localhost(),
    )
    .await
    .unwrap();
    let legacy = m.legacy_api_addr().unwrap();
    let v = cg(legacy, "get_version", None).await;
    assert!(
        v["Msg"]["fw_ver"].as_str().unwrap().starts_with("2025"),
        "{v}"
    );
    let v = cg(legacy, "devdetails", None).await;
    assert_eq!(v["DEVDETAILS"][0]["Model"], "M60S_VK30");
    assert_eq!(v["DEVDETAILS"][0]["Driver"], "bitmicro");
    let v = cg(legacy, "get_token", None).await;
    assert_eq!(v["STATUS"], "E", "writes go to 4433 now: {v}");
}
