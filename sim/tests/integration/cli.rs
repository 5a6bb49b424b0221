//! `pivot-sim miners --port-base`: consecutive ports on one address, one line per miner, each
//! miner speaking its dialect there; `--fault` reaches every miner.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A child process killed when the test ends, pass or fail.
pub(crate) struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `pivot-sim miners` with `args`, return the process and its `count` printed lines.
pub(crate) fn sim(args: &[&str], count: usize) -> (Kill, Vec<String>) {
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_pivot-sim"))
            .arg("miners")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let listed = (0..count).map(|_| lines.next().unwrap().unwrap()).collect();
    (child, listed)
}

async fn exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn cg_json(mut raw: Vec<u8>) -> serde_json::Value {
    assert_eq!(raw.pop(), Some(0), "NUL-terminated");
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test]
async fn port_base_mode_lists_and_serves_each_dialect() {
    // Its own loopback address, so no other test's ports collide.
    let (_child, listed) = sim(
        &[
            "--dialect",
            "mixed",
            "--count",
            "6",
            "--port-base",
            "127.88.0.1:14000",
            "--fast",
        ],
        6,
    );
    assert_eq!(
        listed,
        [
            "antminer 127.88.0.1:14000,http=14001",
            "braiins 127.88.0.1:14002,http=14003",
            "luxos 127.88.0.1:14004",
            "whatsminer-v2 127.88.0.1:14005",
            "whatsminer-v3 127.88.0.1:14006",
            "bitaxe 127.88.0.1:14007",
        ]
    );
    let v = cg_json(exchange("127.88.0.1:14000", br#"{"command":"version"}"#).await);
    assert_eq!(v["VERSION"][0]["Type"], "Antminer S19j Pro");
    let web = String::from_utf8(
        exchange(
            "127.88.0.1:14001",
            b"GET /cgi-bin/get_miner_conf.cgi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(web.starts_with("HTTP/1.1 401"), "{web}");
    let v = cg_json(exchange("127.88.0.1:14002", br#"{"command":"version"}"#).await);
    assert!(v.to_string().contains("BOSminer"), "{v}");
    let v = cg_json(exchange("127.88.0.1:14004", br#"{"command":"version"}"#).await);
    assert!(v["VERSION"][0]["LUXminer"].is_string(), "{v}");
    let v = cg_json(exchange("127.88.0.1:14005", br#"{"command":"devdetails"}"#).await);
    assert_eq!(v["DEVDETAILS"][0]["Model"], "M50S_VH50");
    let req = br#"{"cmd":"get.device.info"}"#;
    let mut framed = (req.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(req);
    // Whatsminer v3 keeps the connection open: read one length-prefixed reply.
    let mut s = TcpStream::connect("127.88.0.1:14006").await.unwrap();
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["msg"]["miner"]["type"], "M60S_VK30");
    let web = String::from_utf8(
        exchange(
            "127.88.0.1:14007",
            b"GET /api/system/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(web.contains("\"ASICModel\":\"BM1370\""), "{web}");
}

#[tokio::test]
async fn port_base_mode_with_a_fault_for_every_miner() {
    let (_child, listed) = sim(
        &[
            "--dialect",
            "luxos",
            "--count",
            "2",
            "--port-base",
            "127.88.1.1:14000",
            "--fast",
            "--fault",
            "status-14,luxos-402",
        ],
        2,
    );
    assert_eq!(listed, ["luxos 127.88.1.1:14000", "luxos 127.88.1.1:14001"]);
    for addr in ["127.88.1.1:14000", "127.88.1.1:14001"] {
        let v = cg_json(exchange(addr, br#"{"command":"summary"}"#).await);
        assert_eq!(v["STATUS"][0]["Code"], 14, "{addr}: {v}");
    }
}

/// One HTTP/1.1 request on its own connection; the whole answer (head and body) as text.
async fn http(addr: &str, request: String) -> String {
    String::from_utf8(exchange(addr, request.as_bytes()).await).unwrap()
}

/// The `nonce` of a Digest challenge in a 401 answer.
fn challenge_nonce(answer: &str) -> String {
    let at = answer.find("nonce=\"").expect("a Digest challenge") + 7;
    answer[at..].split('"').next().unwrap().to_owned()
}

/// A GET of `uri` answering the challenge `nonce` as root/root (RFC 2617, no qop).
fn digest_get(uri: &str, nonce: &str) -> String {
    use md5::{Digest as _, Md5};
    let hex = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let realm = "antMiner Configuration";
    let response = hex(format!(
        "{}:{nonce}:{}",
        hex(format!("root:{realm}:root")),
        hex(format!("GET:{uri}"))
    ));
    format!(
        "GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Digest username=\"root\", \
         realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\"\r\n\r\n"
    )
}

#[tokio::test]
async fn sigusr1_ages_the_sessions_and_nonces_that_lapse_between_commands() {
    let (child, _) = sim(
        &[
            "--dialect",
            "mixed",
            "--count",
            "3",
            "--port-base",
            "127.88.0.3:14200",
            "--fast",
        ],
        3,
    );
    let (antminer_web, braiins_web, luxos) =
        ("127.88.0.3:14201", "127.88.0.3:14203", "127.88.0.3:14204");
    let conf = "/cgi-bin/get_miner_conf.cgi";

    // Before: a LuxOS session, a Braiins OS token and an Antminer nonce that each work.
    let v = cg_json(exchange(luxos, br#"{"command":"logon"}"#).await);
    let sid = v["SESSION"][0]["SessionID"].as_str().unwrap().to_owned();
    let v = cg_json(exchange(luxos, br#"{"command":"session"}"#).await);
    assert_eq!(v["SESSION"][0]["SessionID"], sid.as_str());
    let body = r#"{"username":"root","password":"root"}"#;
    let login = http(
        braiins_web,
        format!(
            "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let token_json = &login[login.find("\r\n\r\n").unwrap() + 4..];
    let token = serde_json::from_str::<serde_json::Value>(token_json).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let braiins_get = format!(
        "GET /api/v1/miner/details HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {token}\r\n\r\n"
    );
    let answer = http(braiins_web, braiins_get.clone()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let nonce = challenge_nonce(
        &http(
            antminer_web,
            format!("GET {conf} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await,
    );
    let answer = http(antminer_web, digest_get(conf, &nonce)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let pid = rustix::process::Pid::from_child(&child.0);
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).unwrap();
    // The signal is taken by the serving loop; wait until LuxOS no longer reports the session.
    let mut gone = false;
    for _ in 0..50 {
        let v = cg_json(exchange(luxos, br#"{"command":"session"}"#).await);
        if v["SESSION"][0]["SessionID"] != sid.as_str() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the LuxOS session outlived SIGUSR1");

    // After: the session and the nonce are refused as lapsed, and fresh ones work; the Braiins
    // token, which a polling agent renews, still works (it keeps the real clock).
    let v = cg_json(
        exchange(
            luxos,
            format!(r#"{{"command":"curtail","parameter":"{sid},sleep"}}"#).as_bytes(),
        )
        .await,
    );
    assert_eq!(v["STATUS"][0]["Code"], 401, "{v}");
    let v = cg_json(exchange(luxos, br#"{"command":"logon"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 300, "a new logon: {v}");
    let answer = http(braiins_web, braiins_get).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = http(antminer_web, digest_get(conf, &nonce)).await;
    assert!(
        answer.starts_with("HTTP/1.1 401") && answer.contains("stale=true"),
        "{answer}"
    );
    let answer = http(antminer_web, digest_get(conf, &challenge_nonce(&answer))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
