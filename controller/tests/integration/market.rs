//! Market sources against a local HTTP server serving recorded mempool-, bitcoind- and
//! ERCOT-style replies (controller/testdata/market) and broken ones: garbage, HTML, a
//! truncated body, NaN, a negative hashrate, a price of 10^9, replies slower than the timeout,
//! HTTP errors. Each source is built from `[market]` TOML, as the controller builds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_controller::config::EnvSource;
use pivot_controller::market::{
    AiDemand, GpuWant, Health, Market, MarketConfig, MarketParts, MarketSnapshot, SourceErrorKind,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::fake_http::{
    FakeHttp, Generator, Reply, Request0, testdata, testdata_path, truncating_server,
};

#[derive(Deserialize)]
struct Doc {
    market: MarketConfig,
}

struct Env(HashMap<&'static str, &'static str>);

impl EnvSource for Env {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| (*v).to_owned())
    }
}

fn no_env() -> Env {
    Env(HashMap::new())
}

fn market_with(toml_text: &str, env: &Env) -> Market {
    let doc: Doc = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}\n{e}"));
    doc.market.validate().unwrap();
    Market::new(MarketParts::from_config(&doc.market, env, price_time()).unwrap())
}

/// The recorded price's time (mempool/prices.json).
fn price_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000, 0).unwrap()
}

fn now() -> DateTime<Utc> {
    price_time() + chrono::Duration::seconds(60)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Hashprice of the recorded chain: (3.125 + 0.025) × 144 × 100,000 ÷ (1.3e14 × 2^32 ÷ 600 / 1e15).
fn recorded_hashprice() -> f64 {
    let ph = 1.3e14 * 4_294_967_296.0 / 600.0 / 1e15;
    (3.125 + 0.025) * 144.0 * 100_000.0 / ph
}

fn block_id(height: u64, salt: u64) -> String {
    format!("{:064x}", 0xabc0_00000 + height + salt * 1_000_000_000)
}

/// `/api/v1/blocks/:h`: the 15 blocks up to `h`, each with 0.025 BTC of fees.
fn blocks_page(top: u64) -> Vec<u8> {
    let blocks: Vec<Value> = (top.saturating_sub(14)..=top)
        .rev()
        .map(|h| {
            json!({"id": block_id(h, 0), "height": h, "timestamp": 1_780_000_000u64 - (945_000 - h.min(945_000)) * 600,
                   "difficulty": 1.3e14, "tx_count": 3000,
                   "extras": {"totalFees": 2_500_000, "reward": 315_000_000}})
        })
        .collect();
    serde_json::to_vec(&blocks).unwrap()
}

fn mempool_generator() -> Generator {
    Arc::new(|r: &Request0| {
        let h: u64 = r.path.strip_prefix("/api/v1/blocks/")?.parse().ok()?;
        Some(Reply::json(blocks_page(h)))
    })
}

async fn mempool_fake() -> FakeHttp {
    let f = FakeHttp::start(Some(mempool_generator())).await;
    f.set(
        "/api/v1/blocks",
        Reply::json(testdata("mempool/blocks.json")),
    );
    f.set(
        "/api/v1/mining/reward-stats/144",
        Reply::json(testdata("mempool/reward-stats-144.json")),
    );
    f.set(
        "/api/v1/prices",
        Reply::json(testdata("mempool/prices.json")),
    );
    f.set(
        "/api/v1/mining/hashrate/3d",
        Reply::json(testdata("mempool/hashrate-3d.json")),
    );
    f
}

fn mempool_config(url: &str, extra: &str) -> String {
    format!("[market.hashprice]\nsource = \"mempool\"\nurl = \"{url}\"\ntimeout_s = 1\n{extra}")
}

fn failed(s: &MarketSnapshot) -> String {
    match &s.hashprice.health {
        Health::Failed(e) => e.to_string(),
        h => panic!("expected a failed refresh, got {h:?}"),
    }
}

#[tokio::test]
async fn mempool_hashprice_from_recorded_replies_in_three_requests() {
    let f = mempool_fake().await;
    let mut m = market_with(&mempool_config(&f.url(), ""), &no_env());
    m.refresh_all(now()).await;
    let s = m.snapshot(now());
    assert_eq!(s.hashprice.health, Health::Fresh);
    let r = s.hashprice.value.clone().unwrap();
    assert!(
        (r.value.usd_per_ph_day - recorded_hashprice()).abs() < 1e-9,
        "{}",
        r.value.usd_per_ph_day
    );
    assert!((r.value.usd_per_ph_day - 48.744).abs() < 0.001);
    assert_eq!(r.value.btc_usd, Some(100_000.0));
    assert_eq!(r.value.tip_height, Some(945_000));
    assert_eq!(r.value.subsidy_btc, Some(3.125));
    assert!((r.value.mean_fees_btc.unwrap() - 0.025).abs() < 1e-12);
    assert_eq!(r.value.fee_window_blocks, Some(144));
    assert!((r.value.network_hashrate_ehs.unwrap() - 930.576).abs() < 0.001);
    // As old as its oldest part: the price's own time.
    assert_eq!(r.at, price_time());
    assert_eq!(
        f.take_paths(),
        [
            "/api/v1/blocks",
            "/api/v1/mining/reward-stats/144",
            "/api/v1/prices"
        ]
    );
    let e = s.economics();
    assert_eq!(e.btc_usd, Some(100_000.0));
    assert_eq!(e.ai_gpu_demand, Some(GpuWant::All));
}

#[tokio::test]
async fn mempool_block_pages_are_read_once_and_then_only_new_blocks() {
    let f = mempool_fake().await;
    f.set("/api/v1/blocks", Reply::json(blocks_page(945_000)));
    let mut m = market_with(&mempool_config(&f.url(), "fees = \"blocks\"\n"), &no_env());
    m.refresh_all(now()).await;
    let first = f.take_paths();
    let pages = first
        .iter()
        .filter(|p| p.starts_with("/api/v1/blocks/"))
        .count();
    // 144 blocks: the tip page of 15 and 9 more pages, each asked for once.
    assert_eq!(pages, 9, "{first:?}");
    let r = m.snapshot(now()).hashprice.value.unwrap();
    assert!((r.value.usd_per_ph_day - recorded_hashprice()).abs() < 1e-9);

    // Two new blocks: the tip page holds them; no other page is read.
    f.set("/api/v1/blocks", Reply::json(blocks_page(945_002)));
    m.refresh_all(now()).await;
    assert_eq!(f.take_paths(), ["/api/v1/blocks", "/api/v1/prices"]);
    assert_eq!(
        m.snapshot(now()).hashprice.value.unwrap().value.tip_height,
        Some(945_002)
    );
}

#[tokio::test]
async fn mempool_measured_hashrate_is_the_three_day_mean() {
    let f = mempool_fake().await;
    let mut m = market_with(
        &mempool_config(&f.url(), "network_hashrate = \"measured\"\n"),
        &no_env(),
    );
    m.refresh_all(now()).await;
    let h = m.snapshot(now()).hashprice.value.unwrap().value;
    assert!((h.network_hashrate_ehs.unwrap() - 930.0).abs() < 1e-6);
    assert!(
        f.take_paths()
            .contains(&"/api/v1/mining/hashrate/3d".to_owned())
    );
}

#[tokio::test]
async fn broken_mempool_replies_are_refused_and_the_last_good_value_stays() {
    let truncated_blocks = testdata("mempool/blocks.json")[..300].to_vec();
    let cases: Vec<(&str, &str, Reply, &str)> = vec![
        (
            "",
            "/api/v1/prices",
            Reply::json(testdata("mempool/garbage.bin")),
            "not valid JSON",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::html(200, testdata("mempool/maintenance.html")),
            "an HTML or XML page",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::html(502, testdata("mempool/maintenance.html")),
            "answered HTTP 502",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::json(testdata("mempool/prices-nan.json")),
            "not valid JSON",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::json(testdata("mempool/prices-string.json")),
            "not a finite number",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::json(testdata("mempool/prices-1e9.json")),
            "BTC price (USD) = 1000000000 is outside",
        ),
        (
            "",
            "/api/v1/blocks",
            Reply::json(truncated_blocks),
            "not valid JSON",
        ),
        ("", "/api/v1/blocks", Reply::json("[]"), "no blocks"),
        (
            "",
            "/api/v1/mining/reward-stats/144",
            Reply::json("{}").status(500),
            "answered HTTP 500",
        ),
        (
            "",
            "/api/v1/mining/reward-stats/144",
            Reply::json(r#"{"startBlock":1,"endBlock":144,"totalFee":"-5"}"#),
            "`totalFee`",
        ),
        (
            "network_hashrate = \"measured\"\n",
            "/api/v1/mining/hashrate/3d",
            Reply::json(testdata("mempool/hashrate-negative.json")),
            "is not a hashrate",
        ),
        (
            "",
            "/api/v1/prices",
            Reply::json(testdata("mempool/prices.json")).delayed(Duration::from_secs(3)),
            "no complete reply within 1s",
        ),
    ];
    for (extra, path, reply, want) in cases {
        let f = mempool_fake().await;
        let mut m = market_with(&mempool_config(&f.url(), extra), &no_env());
        m.refresh_all(now()).await;
        let good = m.snapshot(now());
        assert_eq!(good.hashprice.health, Health::Fresh, "{path}");
        let good = good.hashprice.value.unwrap().value.usd_per_ph_day;
        f.set(path, reply);
        let later = now() + chrono::Duration::seconds(300);
        m.refresh_all(later).await;
        let s = m.snapshot(later);
        let e = failed(&s);
        assert!(e.contains(want), "{path}: {e}");
        assert!(
            e.starts_with(&format!("mempool http://{}", f.addr)) || e.contains(&f.addr.to_string()),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.len() < 600, "short: {e}");
        // The good reading holds until it is an hour old...
        let held = s
            .hashprice
            .value
            .as_ref()
            .expect("the last good value stays in force");
        assert_eq!(held.value.usd_per_ph_day, good, "{path}");
        // ...then the planner is told why it cannot plan.
        let aged = price_time() + chrono::Duration::seconds(3_601);
        let reasons = m.snapshot(aged).planner_inputs().unwrap_err();
        assert!(
            reasons[0].starts_with("hashprice: the last good reading"),
            "{reasons:?}"
        );
        assert!(reasons[0].contains(want), "{reasons:?}");
    }
}

#[tokio::test]
async fn credentials_and_keys_in_urls_never_reach_an_error() {
    let f = mempool_fake().await;
    f.set("/btc", Reply::json("{}").status(503));
    let text = mempool_config(
        &f.url(),
        &format!(
            "[market.hashprice.btc_price]\nsource = \"json\"\nurl = \"http://bob:s3cret@{}/btc?api_key=k3y\"\nfield = \"usd\"\n",
            f.addr
        ),
    );
    let mut m = market_with(&text, &no_env());
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(e.contains("answered HTTP 503"), "{e}");
    for secret in ["bob", "s3cret", "k3y"] {
        assert!(!e.contains(secret), "{secret}: {e}");
    }
    // The credentials were sent, though.
    let sent = f.take_log().into_iter().find(|r| r.path == "/btc").unwrap();
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Basic {}", base64(b"bob:s3cret")).as_str())
    );
}

#[tokio::test]
async fn a_body_larger_than_the_cap_is_refused() {
    let f = mempool_fake().await;
    let huge = vec![b' '; pivot_controller::market::http::MAX_BODY_BYTES + 1];
    f.set("/api/v1/prices", Reply::json(huge));
    let mut m = market_with(&mempool_config(&f.url(), ""), &no_env());
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(e.contains("the body is larger than 8388608 bytes"), "{e}");
}

#[tokio::test]
async fn a_body_cut_short_is_refused() {
    let addr = truncating_server(500, br#"{"time":1780000000,"USD":100"#).await;
    let f = mempool_fake().await;
    let text = mempool_config(
        &f.url(),
        &format!("[market.hashprice.btc_price]\nsource = \"mempool\"\nurl = \"http://{addr}\"\n"),
    );
    let mut m = market_with(&text, &no_env());
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(e.contains("cut short"), "{e}");
    assert!(
        e.contains(&format!("mempool price http://{addr}/api/v1/prices")),
        "{e}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_naming_the_address() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut m = market_with(&mempool_config(&format!("http://{closed}"), ""), &no_env());
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(
        e.contains("cannot connect (GET /api/v1/blocks)") && e.contains(&closed.to_string()),
        "{e}"
    );
}

#[tokio::test]
async fn https_to_a_server_that_speaks_no_tls_is_a_clear_error() {
    // The TLS stack (rustls with ring) runs; the handshake fails on a plain-HTTP server.
    let f = mempool_fake().await;
    let mut m = market_with(
        &mempool_config(&format!("https://{}", f.addr), ""),
        &no_env(),
    );
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(e.contains("cannot connect (GET /api/v1/blocks)"), "{e}");
    assert!(e.contains(&format!("https://{}", f.addr)), "{e}");
    assert!(!e.contains("error sending request for url"), "{e}");
}

/// A Bitcoin node's JSON-RPC: tip, hash salt (a reorg changes it), credentials, hashrate.
struct Node {
    tip: u64,
    /// Highest block it has stats for.
    stats_tip: u64,
    salt: u64,
    basic: String,
    networkhashps: f64,
    /// Methods per HTTP request.
    calls: Vec<Vec<String>>,
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn rpc_reply(node: &Node, call: &Value) -> Value {
    let id = call["id"].clone();
    let method = call["method"].as_str().unwrap_or_default();
    let ok = |result: Value| json!({"result": result, "error": null, "id": id});
    match method {
        "getblockchaininfo" => ok(
            json!({"chain": "main", "blocks": node.tip, "headers": node.tip,
            "bestblockhash": block_id(node.tip, node.salt), "difficulty": 1.3e14}),
        ),
        "getmininginfo" => ok(
            json!({"blocks": node.tip, "difficulty": 1.3e14, "networkhashps": node.networkhashps}),
        ),
        "getblockstats" => {
            let h = call["params"][0].as_u64().unwrap();
            assert_eq!(
                call["params"][1],
                json!(["height", "totalfee", "blockhash"])
            );
            if h > node.tip.min(node.stats_tip) {
                json!({"result": null, "error": {"code": -8, "message": format!("Target block height {h} after current tip {}", node.stats_tip)}, "id": id})
            } else {
                let salt = if h + 6 > node.tip { node.salt } else { 0 };
                ok(json!({"height": h, "totalfee": 2_500_000, "blockhash": block_id(h, salt)}))
            }
        }
        _ => {
            json!({"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": id})
        }
    }
}

async fn node_fake(node: Arc<Mutex<Node>>) -> FakeHttp {
    let generator: Generator = Arc::new(move |r: &Request0| {
        let mut n = node.lock().unwrap();
        if r.authorization.as_deref() != Some(n.basic.as_str()) {
            return Some(Reply::json("").status(401));
        }
        let body: Value = serde_json::from_slice(&r.body).ok()?;
        let (reply, methods) = match &body {
            Value::Array(calls) => (
                Value::Array(calls.iter().map(|c| rpc_reply(&n, c)).collect()),
                calls
                    .iter()
                    .map(|c| c["method"].as_str().unwrap().to_owned())
                    .collect(),
            ),
            c => (
                rpc_reply(&n, c),
                vec![c["method"].as_str().unwrap().to_owned()],
            ),
        };
        n.calls.push(methods);
        Some(Reply::json(reply.to_string()))
    });
    let f = FakeHttp::start(Some(generator)).await;
    f.set(
        "/api/v1/prices",
        Reply::json(testdata("mempool/prices.json")),
    );
    f
}

fn node(user: &str, password: &str) -> Arc<Mutex<Node>> {
    Arc::new(Mutex::new(Node {
        tip: 945_000,
        stats_tip: u64::MAX,
        salt: 0,
        basic: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
        networkhashps: 9.2e20,
        calls: Vec::new(),
    }))
}

fn bitcoind_config(url: &str, auth: &str, extra: &str) -> String {
    format!(
        "[market.hashprice]\nsource = \"bitcoind\"\nurl = \"{url}\"\ntimeout_s = 2\n{auth}{extra}\
         [market.hashprice.btc_price]\nsource = \"mempool\"\nurl = \"{url}\"\n"
    )
}

#[tokio::test]
async fn bitcoind_fees_come_in_one_batch_then_only_new_blocks_and_a_reorg_refetches_the_tip() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:c0ffee\n").unwrap();
    let n = node("__cookie__", "c0ffee");
    let f = node_fake(Arc::clone(&n)).await;
    let auth = format!("cookie_file = \"{}\"\n", cookie.display());
    let mut m = market_with(&bitcoind_config(&f.url(), &auth, ""), &no_env());
    m.refresh_all(now()).await;
    let s = m.snapshot(now());
    assert_eq!(
        s.hashprice.health,
        Health::Fresh,
        "{:?}",
        s.hashprice.health
    );
    let h = s.hashprice.value.unwrap().value;
    assert!(
        (h.usd_per_ph_day - recorded_hashprice()).abs() < 1e-9,
        "{}",
        h.usd_per_ph_day
    );
    let calls = std::mem::take(&mut n.lock().unwrap().calls);
    assert_eq!(calls.len(), 2, "info, then one batch");
    assert_eq!(calls[0], ["getblockchaininfo"]);
    assert_eq!(calls[1].len(), 144);

    // Two new blocks: two stats.
    n.lock().unwrap().tip = 945_002;
    m.refresh_all(now()).await;
    let calls = std::mem::take(&mut n.lock().unwrap().calls);
    assert_eq!(calls[1], ["getblockstats", "getblockstats"]);

    // Same height, another tip hash: the last six blocks are read again.
    n.lock().unwrap().salt = 7;
    m.refresh_all(now()).await;
    let calls = std::mem::take(&mut n.lock().unwrap().calls);
    assert_eq!(calls[1].len(), 6);
    assert_eq!(m.snapshot(now()).hashprice.health, Health::Fresh);

    // bitcoind restarted with a new cookie: read at each refresh, so it just works.
    std::fs::write(&cookie, "__cookie__:beef\n").unwrap();
    n.lock().unwrap().basic = format!("Basic {}", base64(b"__cookie__:beef"));
    m.refresh_all(now()).await;
    assert_eq!(m.snapshot(now()).hashprice.health, Health::Fresh);
}

#[tokio::test]
async fn bitcoind_refusals_and_bad_numbers_are_named_without_the_password() {
    let n = node("pivot", "hunter2");
    let f = node_fake(Arc::clone(&n)).await;
    let env = Env(HashMap::from([("PIVOT_BTC_RPC", "hunter2")]));
    let auth = "user = \"pivot\"\npassword_env = \"PIVOT_BTC_RPC\"\n";
    let mut m = market_with(
        &bitcoind_config(&f.url(), auth, "network_hashrate = \"measured\"\n"),
        &env,
    );
    m.refresh_all(now()).await;
    let h = m.snapshot(now()).hashprice.value.unwrap().value;
    assert!((h.network_hashrate_ehs.unwrap() - 920.0).abs() < 1e-9);

    // A negative measured hashrate.
    n.lock().unwrap().networkhashps = -9.2e20;
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(
        e.contains("network hashrate (EH/s) = -920 is outside"),
        "{e}"
    );

    // Wrong password.
    n.lock().unwrap().basic = "Basic nope".into();
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(
        e.contains("HTTP 401") && e.contains("check cookie_file, or user and the password"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    assert!(!format!("{m:?}").contains("hunter2"));
}

#[tokio::test]
async fn bitcoind_rpc_errors_inside_a_batch_are_reported() {
    // A node that reports a tip it cannot give stats for (mid-reorg, or a pruned node):
    // getblockstats fails inside the batch with JSON-RPC error -8, as recorded.
    let recorded: Value = serde_json::from_slice(&testdata("bitcoind/error-height.json")).unwrap();
    assert_eq!(recorded["error"]["code"], -8);
    let n = node("u", "p");
    n.lock().unwrap().tip = 945_010;
    n.lock().unwrap().stats_tip = 945_005;
    let f = node_fake(Arc::clone(&n)).await;
    let env = Env(HashMap::from([("PW", "p")]));
    let mut m = market_with(
        &bitcoind_config(&f.url(), "user = \"u\"\npassword_env = \"PW\"\n", ""),
        &env,
    );
    m.refresh_all(now()).await;
    let e = failed(&m.snapshot(now()));
    assert!(
        e.contains("RPC `getblockstats` failed (code -8)")
            && e.contains("after current tip 945005"),
        "{e}"
    );
}

fn ercot_config(location: &str, point: &str) -> String {
    format!(
        "[market.energy]\nsource = \"ercot\"\n{location}\nsettlement_point = \"{point}\"\ntimeout_s = 1\n"
    )
}

#[tokio::test]
async fn ercot_prices_over_http_follow_dst_and_negative_prices_are_accepted() {
    let f = FakeHttp::start(None).await;
    f.set(
        "/np6-905-cd.csv",
        Reply::csv(testdata("ercot/rtspp-2025-11-02.csv")),
    );
    let url = format!("url = \"{}/np6-905-cd.csv\"", f.url());
    let mut m = market_with(&ercot_config(&url, "HB_WEST"), &no_env());
    // 01:20 CST, the second pass of the repeated hour: interval 2 with DSTFlag Y.
    let t = utc("2025-11-02T07:20:00Z");
    m.refresh_all(t).await;
    let e = m.snapshot(t).energy.value.unwrap();
    assert_eq!(e.value.usd_per_mwh, -19.05);
    assert_eq!(e.at, utc("2025-11-02T07:15:00Z"));
    // The same wall-clock minute an hour earlier (CDT) is the first pass.
    let t = utc("2025-11-02T06:20:00Z");
    m.refresh_all(t).await;
    assert_eq!(
        m.snapshot(t).energy.value.unwrap().value.usd_per_mwh,
        -15.10
    );
    assert_eq!(
        m.snapshot(t).planner_inputs().unwrap().energy_usd_per_mwh,
        -15.10
    );

    // A feed that stopped updating: the newest interval is over 30 minutes old.
    let t = utc("2025-11-02T09:00:00Z");
    m.refresh_all(t).await;
    let s = m.snapshot(t);
    match &s.energy.health {
        Health::Failed(e) => assert!(matches!(e.kind, SourceErrorKind::Stale { .. }), "{e}"),
        h => panic!("{h:?}"),
    }
    assert!(s.energy.value.is_none());
}

#[tokio::test]
async fn ercot_files_with_spaced_headers_a_spike_to_the_cap_and_bad_rows() {
    let spaced = testdata_path("ercot/rtspp-summer-spaced.csv");
    let mut m = market_with(
        &ercot_config(&format!("file = \"{}\"", spaced.display()), "HB_NORTH"),
        &no_env(),
    );
    // 16:40 CDT is hour-ending 17, interval 3.
    let t = utc("2025-07-15T21:40:00Z");
    m.refresh_all(t).await;
    assert_eq!(
        m.snapshot(t).energy.value.unwrap().value.usd_per_mwh,
        5_000.0
    );

    let bad = testdata_path("ercot/rtspp-bad-row.csv");
    let mut m = market_with(
        &ercot_config(&format!("file = \"{}\"", bad.display()), "HB_NORTH"),
        &no_env(),
    );
    m.refresh_all(t).await;
    match &m.snapshot(t).energy.health {
        Health::Failed(e) => {
            let e = e.to_string();
            assert!(e.contains("row 3, column `SettlementPointPrice`"), "{e}");
            assert!(e.contains(&bad.display().to_string()), "{e}");
        }
        h => panic!("{h:?}"),
    }

    let f = FakeHttp::start(None).await;
    f.set(
        "/rt.csv",
        Reply::html(200, testdata("mempool/maintenance.html")),
    );
    let mut m = market_with(
        &ercot_config(&format!("url = \"{}/rt.csv\"", f.url()), "HB_NORTH"),
        &no_env(),
    );
    m.refresh_all(t).await;
    match &m.snapshot(t).energy.health {
        Health::Failed(e) => assert!(e.to_string().contains("HTML"), "{e}"),
        h => panic!("{h:?}"),
    }
}

#[tokio::test]
async fn an_ai_spot_price_feed_with_its_own_time() {
    let path = testdata_path("feeds/gpu-spot.json");
    let text = format!(
        "[market.ai_value]\nsource = \"feed\"\nfile = \"{}\"\nfield = \"data.0.usd_per_gpu_hour\"\ntime_field = \"data.0.updated\"\n",
        path.display()
    );
    let mut m = market_with(&text, &no_env());
    let t = utc("2026-05-28T20:25:00Z");
    m.refresh_all(t).await;
    let v = m.snapshot(t).ai_value.value.unwrap();
    assert_eq!(v.value.usd_per_gpu_hour, 2.15);
    assert_eq!(v.at, utc("2026-05-28T20:20:00Z"));
    assert_eq!(m.snapshot(t).economics().ai_usd_per_gpu_hour, Some(2.15));
}

/// slurmrestd (Slurm 22.05's v0.0.38 jobs endpoint) through the market's HTTP client: the path,
/// the user and the JWT (from a file, read again at every fetch so a rotated token is used), the
/// demand the recorded queue means, and a refused token named with the keys to check.
#[tokio::test]
async fn ai_demand_from_slurmrestd_sends_the_user_and_a_rotated_token_and_names_a_refusal() {
    let f = FakeHttp::start(None).await;
    f.set(
        "/slurm/v0.0.38/jobs",
        Reply::json(
            &include_bytes!("../../../jobs/src/slurm/testdata/squeue-22.05-running.json")[..],
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("slurm.jwt");
    std::fs::write(&token, "eyJ.first.token\n").unwrap();
    let config = format!(
        "[market.ai_demand]\nsource = \"slurmrestd\"\npartitions = []\n\
         [market.ai_demand.slurmrestd]\nurl = \"{}\"\nuser_name = \"pivot\"\ntoken_file = \"{}\"\n",
        f.url(),
        token.display()
    );
    let mut m = market_with(&config, &no_env());
    let t = Utc::now();
    m.refresh_all(t).await;
    let demand = m
        .snapshot(t)
        .ai_demand
        .value
        .unwrap_or_else(|| panic!("no demand: {:?}", m.snapshot(t).ai_demand.health));
    assert_eq!(demand.value, AiDemand::from_jobs(2, 6));
    let asked: Vec<Request0> = f
        .take_log()
        .into_iter()
        .filter(|r| r.path.starts_with("/slurm/"))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(asked[0].path, "/slurm/v0.0.38/jobs");
    assert_eq!(asked[0].header("x-slurm-user-name"), Some("pivot"));
    assert_eq!(
        asked[0].header("x-slurm-user-token"),
        Some("eyJ.first.token")
    );

    // The token is rotated on disk: the next fetch sends the new one, no restart.
    std::fs::write(&token, "eyJ.second.token\n").unwrap();
    let t = t + chrono::Duration::seconds(120);
    m.refresh_all(t).await;
    let asked = f.take_log();
    let last = asked
        .iter()
        .rfind(|r| r.path.starts_with("/slurm/"))
        .expect("a second fetch");
    assert_eq!(last.header("x-slurm-user-token"), Some("eyJ.second.token"));

    // slurmrestd refuses the token: unknown demand, with the keys to check named.
    f.set(
        "/slurm/v0.0.38/jobs",
        Reply::json("{\"errors\": [{\"error\": \"Authentication failure\"}]}").status(401),
    );
    let t = t + chrono::Duration::seconds(120);
    m.refresh_all(t).await;
    let s = m.snapshot(t);
    let Health::Failed(e) = &s.ai_demand.health else {
        panic!("a refused token is not a failure: {:?}", s.ai_demand.health)
    };
    let text = e.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("user_name"), "{text}");
}
