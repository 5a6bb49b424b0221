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
