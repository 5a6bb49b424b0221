//! What an operator looks at, against a real site: the controller (`serve`, mutual TLS for agents
//! and pivotctl, tokens for people), a real agent with pivot-sim's miners and fake-NVML GPUs, an
//! energy price feed the test rewrites — seen through headless Chromium, the real Prometheus, and
//! the deploy/ files that name their series.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use pivot_controller::auth::{Role, new_token};
use pivot_controller::store::{SqliteStore, Store};
use pivot_e2e::pki::Pki;
use pivot_e2e::prometheus::Prometheus;
use pivot_e2e::webdriver::{Browser, Chromedriver};
use pivot_e2e::{Running, bin, free_port, start_and_collect, start_and_wait};
use pivot_sim::miner::{Bind, Dialect, MinerSpec, SimMiner, Timing, spawn};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// Miners that measure their draw and sleep on command.
const DIALECTS: [Dialect; 4] = [
    Dialect::Luxos,
    Dialect::Braiins,
    Dialect::WhatsminerV2,
    Dialect::WhatsminerV3,
];

struct Site {
    pki: Pki,
    _controller: Running,
    agent: Running,
    _miners: Vec<SimMiner>,
    grpc: String,
    /// host:port of the web listener.
    web: String,
    feed: PathBuf,
    viewer: String,
    operator: String,
}

fn set_energy_price(feed: &Path, usd_per_mwh: f64) {
    // Written whole and renamed, so the controller never reads half a document.
    let tmp = feed.with_extension("tmp");
    std::fs::write(&tmp, json!({ "usd_per_mwh": usd_per_mwh }).to_string()).unwrap();
    std::fs::rename(&tmp, feed).unwrap();
}

impl Site {
    async fn start() -> Self {
        let pki = Pki::new(&["rack-1", "ops"]);
        let dir = pki.dir.path().to_owned();
        let mut miners = Vec::new();
        for d in DIALECTS {
            miners.push(
                spawn(MinerSpec::new(d).timing(Timing::fast()), Bind::localhost())
                    .await
                    .unwrap(),
            );
        }
        // People's tokens, as `pivot-controller token` stores them: only their hashes.
        let db = dir.join("pivot.db");
        let (viewer, operator) = {
            let store = SqliteStore::open(&db).unwrap();
            let (viewer, v) = new_token("vera", Role::Viewer, None, Utc::now());
            let (operator, o) = new_token("olive", Role::Operator, None, Utc::now());
            store.put_token(&v).unwrap();
            store.put_token(&o).unwrap();
            (viewer, operator)
        };
        let feed = dir.join("energy.json");
        set_energy_price(&feed, 30.0);
        let port = free_port();
        let controller_toml = dir.join("controller.toml");
        std::fs::write(
            &controller_toml,
            format!(
                "[site]\nid = \"e2e-site\"\ncap_w = 40000\nreserve_w = 2000\n\
                 [listen]\ngrpc = \"127.0.0.1:{port}\"\n\
                 [listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
                 [store]\npath = \"{}\"\n\
                 [web]\nlisten = \"127.0.0.1:0\"\n\
                 [auth]\nallow_plaintext_tokens = true\n\
                 [[auth.certificates]]\ncn = \"ops\"\nrole = \"admin\"\n\
                 [agents]\ntelemetry_interval_s = 1\n\
                 [engine]\nreplan_s = 5\nsample_s = 1\n\
                 [market.energy]\nsource = \"feed\"\nfile = \"{}\"\nformat = \"json\"\nfield = \"usd_per_mwh\"\nrefresh_s = 1\nmax_age_s = 600\n",
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
                db.display(),
                feed.display(),
            ),
        )
        .unwrap();
        let (controller, lines) = start_and_collect(
            "pivot-controller",
            &["serve", "--config", controller_toml.to_str().unwrap()],
            &[
                "pivot-controller listening on ",
                "pivot-controller web on http://",
            ],
            WAIT,
        );
        let web = lines[1].clone();

        std::fs::copy(bin("libpivot_fake_nvml.so"), dir.join("libnvidia-ml.so.1")).unwrap();
        std::fs::write(
            dir.join("fake-nvml.json"),
            json!({ "count": 2, "power_demand_w": 650.0 }).to_string(),
        )
        .unwrap();
        let mut agent_toml = format!(
            "host_id = \"rack-1\"\nstate_dir = \"{}\"\n\
             [controller]\nurl = \"https://localhost:{port}\"\nreconnect_max_s = 1\n\
             [controller.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [poll]\nminer_interval_s = 0.5\ntimeout_ms = 1000\nsettle_s = 10\nconfirm_s = 10\nrediscover_s = 1\npacing_s = 1\n\
             [gpus]\nenabled = true\nnvml_lib = \"{}\"\nconfirm_s = 2\nmin_cap_w = 250\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("agent-state").display(),
            pki.path("ca.pem"),
            pki.path("rack-1.pem"),
            pki.path("rack-1.key"),
            dir.join("libnvidia-ml.so.1").display(),
        );
        for m in &miners {
            let addr = match m.http_addr() {
                Some(h) => format!("{},http={}", m.api_addr(), h.port()),
                None => m.api_addr().to_string(),
            };
            agent_toml.push_str(&format!(
                "[[miners]]\naddr = \"{addr}\"\ndialect = \"{}\"\n",
                m.dialect().name()
            ));
        }
        std::fs::write(dir.join("agent.toml"), agent_toml).unwrap();
        let agent = start_and_wait(
            "pivot-agent",
            &["run", "--config", dir.join("agent.toml").to_str().unwrap()],
            "pivot-agent metrics on ",
            WAIT,
        );
        let site = Self {
            grpc: format!("https://localhost:{port}"),
            pki,
            _controller: controller,
            agent,
            _miners: miners,
            web,
            feed,
            viewer,
            operator,
        };
        // Moves follow the test's price at once (the default policy keeps a moved device put for
        // five minutes).
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "name = \"e2e\"\n[economic]\nmin_dwell_s = 0\n").unwrap();
        let out = site.pivotctl(&["policy", "set", policy.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Up: the agent connected, its miners and GPUs known, the market read, no plan moving.
        site.status_until(WAIT, "the site up and planned", |s| {
            s["agents_connected"] == 1
                && s["miners_total"] == 4
                && s["gpus_total"] == 2
                && !s["economics"].is_null()
                && s["plan"]["state"] != "executing"
        })
        .await;
        site
    }

    /// `pivotctl` as the site's admin certificate `ops`.
    fn pivotctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("pivotctl"))
            .args([
                "--controller",
                &self.grpc,
                "--ca-file",
                &self.pki.path("ca.pem"),
            ])
            .args(["--cert-file", &self.pki.path("ops.pem")])
            .args(["--key-file", &self.pki.path("ops.key")])
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        let out = self.pivotctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "pivotctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn status_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; status: {s}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn overrides(&self) -> String {
        let out = self.pivotctl(&["override", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Where the test's screenshots go (printed, kept after the run).
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every `[data-field]` of the page: its raw value.
async fn page_numbers(b: &Browser) -> Value {
    b.eval(
        "const o = {}; for (const el of document.querySelectorAll('[data-field]')) o[el.dataset.field] = el.dataset.value; return o;",
        json!([]),
    )
    .await
}

/// Whether the page shows the numbers of `cli` (`pivotctl status --json`).
fn same_numbers(page: &Value, cli: &Value) -> Result<(), String> {
    let num = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    for key in [
        "site_cap_w",
        "reserve_w",
        "cap_in_force_w",
        "committed_power_w",
        "mining_power_w",
        "ai_power_w",
        "agents_connected",
        "miners_total",
        "miners_mining",
        "miners_sleeping",
        "miners_unreachable",
        "gpus_total",
        "gpu_hosts.total",
        "gpu_hosts.serving",
    ] {
        let want = key
            .split('.')
            .fold(cli, |v, k| &v[k])
            .as_f64()
            .ok_or(format!("pivotctl has no number `{key}`"))?;
        let got = num(&page[key]).ok_or(format!("the page shows no `{key}`: {page}"))?;
        if (got - want).abs() > 1e-6 * want.abs().max(1.0) {
            return Err(format!("`{key}`: page {got}, pivotctl {want}"));
        }
    }
    // Measured power moves with every reading: within 5 %.
    let (got, want) = (
        num(&page["measured_power_w"]).unwrap_or(f64::NAN),
        cli["measured_power_w"].as_f64().unwrap_or(f64::NAN),
    );
    // NaN (a missing number) is never close.
    let close = (got - want).abs() <= 0.05 * want.abs().max(1.0);
    if !close {
        return Err(format!("measured: page {got}, pivotctl {want}"));
    }
    Ok(())
}

async fn sign_in(b: &Browser, token: &str) {
    let field = b.wait_for("#login input[name=token]", WAIT).await;
    b.type_text(&field, token).await;
    let ok = b.wait_for("#login-ok", WAIT).await;
    b.click(&ok).await;
    // Signed in once the page knows who it is and shows the site.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let who = b
            .eval(
                "return document.querySelector('#who').textContent",
                json!([]),
            )
            .await;
        let cap = b
            .eval(
                "return document.querySelector('[data-field=site_cap_w]').dataset.value || ''",
                json!([]),
            )
            .await;
        if who.as_str().is_some_and(|w| w.contains(" · "))
            && cap.as_str().is_some_and(|c| !c.is_empty())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sign-in did not complete: who {who}, cap {cap}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks `button`, then the confirmation dialog's Confirm, and returns the toast.
async fn act(b: &Browser, button: &str) -> String {
    // The answer to this action, not an earlier one's.
    b.eval("document.querySelector('#toast').hidden = true", json!([]))
        .await;
    let e = b.wait_for(button, WAIT).await;
    b.click(&e).await;
    let ok = b.wait_for("#confirm-ok", WAIT).await;
    b.click(&ok).await;
    let toast = b.wait_for("#toast", WAIT).await;
    b.text(&toast).await
}

async fn wait_js(b: &Browser, script: &str, within: Duration, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = b.eval(script, json!([])).await;
        if !v.is_null() && v != false {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_shows_the_site_live_and_acts_only_for_operators() {
    let started = Instant::now();
    let site = Site::start().await;
    let shots = screenshot_dir();
    let driver = Chromedriver::start().await;
    let b = driver.browser(1280, 1900).await;
    let url = format!("http://{}/", site.web);
    b.goto(&url).await;

    // Enforced auth: the page asks for a token first, and a wrong one is refused in place.
    let field = b.wait_for("#login input[name=token]", WAIT).await;
    b.type_text(&field, "pvt_wrong").await;
    b.click(&b.wait_for("#login-ok", WAIT).await).await;
    let err = wait_js(
        &b,
        "return document.querySelector('#login-error').textContent || null",
        WAIT,
        "the refusal of a wrong token",
    )
    .await;
    assert!(
        err.as_str().unwrap().contains("unknown bearer token"),
        "{err}"
    );
    b.eval(
        "document.querySelector('#login input[name=token]').value = ''",
        json!([]),
    )
    .await;

    // A viewer sees the site, read-only, with pivotctl's numbers.
    sign_in(&b, &site.viewer).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = page_numbers(&b).await;
        let cli = site.status();
        match same_numbers(&page, &cli) {
            Ok(()) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed pivotctl's numbers: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for action in ["#curtail-all", "#dr-form", "#pin-form"] {
        let e = b.find(action).await.unwrap();
        assert!(!b.displayed(&e).await, "a viewer sees no `{action}`");
    }
    b.wait_for("#read-only", WAIT).await;
    // The device table lists the four miners and two GPUs, sortable and filterable.
    let rows = wait_js(
        &b,
        "const n = document.querySelectorAll('#devices tbody tr').length; return n >= 7 ? n : null",
        WAIT,
        "the device table",
    )
    .await;
    assert!(rows.as_u64().unwrap() >= 7, "{rows}");
    b.eval("const f = document.querySelector('#device-kind'); f.value = 'gpu'; f.dispatchEvent(new Event('input'));", json!([])).await;
    let gpus = b
        .eval(
            "return document.querySelectorAll('#devices tbody tr').length",
            json!([]),
        )
        .await;
    assert_eq!(gpus, 2);
    b.eval("const f = document.querySelector('#device-kind'); f.value = ''; f.dispatchEvent(new Event('input'));", json!([])).await;
    // When the event stream says it dropped events (`missed`, a page that fell behind), the
    // page reads every panel again, the ones no event of this quiet site would refresh too.
    b.eval(
        "window.overridesRead = 0;
         const f = window.fetch;
         window.fetch = (path, init) => {
           if (String(path).startsWith('/api/overrides')) window.overridesRead += 1;
           return f(path, init);
         };
         window.pivotDashboard.events.dispatchEvent(new MessageEvent('missed', { data: '{\"count\": 3}' }));",
        json!([]),
    )
    .await;
    wait_js(
        &b,
        "return window.overridesRead > 0 || null",
        WAIT,
        "the overrides read again after missed events",
    )
    .await;
    // A status that says a dwell holds wakes back and a failed move holds a miner: the mode line
    // counts the notes and shows them on hover, as `pivotctl status` prints them.
    let mode = b
        .eval(
            "const st = Object.assign({}, window.pivotDashboard.status, {
               waiting: [\"S21: 2 miners (7 kW) would wake at today's prices but changed within the 300 s dwell; the first may move at 12:05:00 UTC\"],
               held: [{ device_id: 'miner/x', until: '2026-12-01T12:10:00Z', reason: 'failed: no mode' }] });
             window.pivotDashboard.events.dispatchEvent(new MessageEvent('status', { data: JSON.stringify(st) }));
             const m = document.querySelector('#mode');
             return { text: m.textContent, title: m.title };",
            json!([]),
        )
        .await;
    assert!(
        mode["text"]
            .as_str()
            .unwrap()
            .ends_with("· 2 notes (hover)"),
        "{mode}"
    );
    let title = mode["title"].as_str().unwrap();
    assert!(
        title.contains("waiting: S21: 2 miners") && title.contains("held miner/x until"),
        "{mode}"
    );
    // Even by hand, a viewer's action is refused by the controller.
    let refused = b
        .eval_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/overrides', { method: 'POST', credentials: 'same-origin',
               headers: { 'content-type': 'application/json', 'x-pivot-csrf': window.pivotDashboard.csrf },
               body: JSON.stringify({ target: 'miners', pin: 'sleep' }) })
               .then(async r => done({ status: r.status, body: await r.json() }));",
            json!([]),
        )
        .await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(
        refused["body"]["error"]
            .as_str()
            .unwrap()
            .contains("role `viewer`"),
        "{refused}"
    );
    assert!(
        !site.overrides().contains("\"miners\""),
        "nothing was stored"
    );
    b.eval("window.scrollTo(0, 0)", json!([])).await;
    let first = b.screenshot(&shots.join("dashboard-viewer.png")).await;

    // An operator curtails every miner from the page; the site follows.
    b.click(&b.wait_for("#sign-out", WAIT).await).await;
    sign_in(&b, &site.operator).await;
    let toast = act(&b, "#curtail-all").await;
    assert!(toast.contains("curtailed"), "{toast}");
    assert!(
        site.overrides().contains("\"target\":\"miners\""),
        "{}",
        site.overrides()
    );
    site.status_until(WAIT, "every miner asleep after the curtail", |s| {
        s["miners_sleeping"] == 4 && s["miners_mining"] == 0
    })
    .await;
    wait_js(
        &b,
        "return document.querySelector('[data-field=miners_sleeping]').dataset.value === '4' || null",
        WAIT,
        "the page showing the miners asleep",
    )
    .await;
    let toast = act(&b, "#resume-all").await;
    assert!(toast.contains("override cleared"), "{toast}");
    assert!(!site.overrides().contains("\"target\":\"miners\""));

    // A demand-response event from the form: shown in force and shaded on the power chart.
    b.eval(
        "const f = document.querySelector('#dr-form'); f.target_kw.value = '20'; f.within_min.value = '1'; f.duration_min.value = '30';",
        json!([]),
    )
    .await;
    let toast = act(&b, "#dr-form button[type=submit]").await;
    assert!(toast.contains("demand response"), "{toast}");
    wait_js(
        &b,
        "return document.querySelector('#dr-now [data-dr=target]')?.textContent === '20.0 kW' || null",
        WAIT,
        "the DR event in force on the page",
    )
    .await;
    wait_js(
        &b,
        "return document.querySelectorAll('#power-chart rect').length > 0 || null",
        WAIT,
        "the DR window shaded on the power chart",
    )
    .await;

    // A price spike in the feed shows in the chart within seconds, and the miners' breakeven
    // decides: the decisions say so in words.
    let spike = Instant::now();
    set_energy_price(&site.feed, 950.0);
    wait_js(
        &b,
        "return Number(document.querySelector('#price-chart').dataset.maxEnergy) >= 950 || null",
        Duration::from_secs(20),
        "the price spike on the chart",
    )
    .await;
    let seen_after = spike.elapsed();
    wait_js(
        &b,
        "return [...document.querySelectorAll('#decisions li')].some(li => /energy 950/.test(li.textContent)) || null",
        WAIT,
        "a decision naming the spike",
    )
    .await;
    b.set_window(1280, 2300).await;
    b.eval("window.scrollTo(0, 0)", json!([])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let desktop = b.screenshot(&shots.join("dashboard.png")).await;
    b.set_window(390, 844).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.eval("window.scrollTo(0, 0)", json!([])).await;
    let phone = b.screenshot(&shots.join("dashboard-phone.png")).await;
    b.quit().await;
    println!(
        "dashboard: price spike on the chart {:.1} s after the feed changed; whole test {:.1} s; screenshots: {}, {}, {}",
        seen_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        first.display(),
        desktop.display(),
        phone.display()
    );
}

/// Metric names a Grafana dashboard or a rules file uses: tokens `pivot_…` and `DCGM_…`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("pivot_") || t.starts_with("DCGM_"))
        .map(str::to_owned)
        .collect()
}

/// Every `expr`/`query` string in a Grafana dashboard.
fn grafana_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => grafana_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| grafana_queries(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_controller_and_the_deploy_files_name_only_exported_series() {
    let site = Site::start().await;
    // A DR event, so the DR series and decisions exist.
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/dr", site.web))
        .bearer_auth(&site.operator)
        .header("x-pivot-csrf", "test")
        .json(&json!({ "target_power_w": 20000.0, "within_s": 60, "duration_s": 1800 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let prom = Prometheus::start(&[
        ("pivot-controller", &site.web),
        ("pivot-agent", &site.agent.addr),
    ]);
    let cap = prom
        .wait_for("pivot_site_cap_watts", Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(cap[0]["value"][1], "40000");
    assert_eq!(cap[0]["metric"]["job"], "pivot-controller");
    let classes = prom
        .wait_for("pivot_load_power_watts", WAIT, |r| r.len() == 2)
        .await;
    assert!(classes.iter().any(|s| s["metric"]["class"] == "mining"));
    prom.wait_for("pivot_agent_connected{host=\"rack-1\"} == 1", WAIT, |r| {
        r.len() == 1
    })
    .await;
    prom.wait_for("pivot_demand_response_target_watts == 20000", WAIT, |r| {
        r.len() == 1
    })
    .await;
    prom.wait_for("pivot_hashprice_usd_per_ph_day > 0", WAIT, |r| r.len() == 1)
        .await;
    prom.wait_for("pivot_plans_finished_total", WAIT, |r| !r.is_empty())
        .await;
    prom.wait_for("pivot_decisions_total", WAIT, |r| !r.is_empty())
        .await;
    prom.wait_for("DCGM_FI_DEV_POWER_USAGE", WAIT, |r| r.len() == 2)
        .await;

    let exported: std::collections::BTreeSet<String> = prom
        .api("label/__name__/values", &[])
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let root = pivot_e2e::workspace_root();

    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/pivot-site.json")).unwrap(),
    )
    .expect("deploy/grafana/pivot-site.json is JSON");
    assert_eq!(grafana["uid"], "pivot-site");
    let mut queries = Vec::new();
    grafana_queries(&grafana, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let in_grafana: std::collections::BTreeSet<String> =
        queries.iter().flat_map(|q| metric_names(q)).collect();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/pivot-alerts.yml")).unwrap();
    let in_rules = metric_names(&rules);
    for (file, names) in [
        ("grafana/pivot-site.json", &in_grafana),
        ("prometheus/pivot-alerts.yml", &in_rules),
    ] {
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "deploy/{file} names series nobody exports: {missing:?} (exported: {exported:?})"
        );
    }
    // The dashboard covers what the issue asks for: the power stack, economics, fleet health and
    // GPU power under dcgm-exporter's names.
    for n in [
        "pivot_load_power_watts",
        "pivot_site_cap_in_force_watts",
        "pivot_energy_price_usd_per_mwh",
        "pivot_miner_class_breakeven_usd_per_mwh",
        "pivot_agent_connected",
        "DCGM_FI_DEV_POWER_USAGE",
    ] {
        assert!(
            in_grafana.contains(n),
            "the Grafana dashboard does not show {n}"
        );
    }
}

/// The lines of a YAML literal block `key: |`.
fn literal_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_config_maps_hold_configurations_the_binaries_accept() {
    // What the pods mount, under a temporary root: the TLS files of the Secrets (real PEM) at
    // /etc/pivot/tls, the state folders of the volumes under /var/lib.
    let pki = Pki::new(&["rack-1"]);
    let root = pki.dir.path().join("root");
    let tls = root.join("etc/pivot/tls");
    for d in [
        &tls,
        &root.join("var/lib/pivot"),
        &root.join("var/lib/pivot-agent"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    for (from, to) in [
        ("rack-1.pem", "tls.crt"),
        ("rack-1.key", "tls.key"),
        ("ca.pem", "ca.crt"),
    ] {
        std::fs::copy(pki.path(from), tls.join(to)).unwrap();
    }
    let workspace = pivot_e2e::workspace_root();
    for (manifest, key, binary) in [
        (
            "pivot-controller.yaml",
            "controller.toml",
            "pivot-controller",
        ),
        ("pivot-agent.yaml", "agent.toml", "pivot-agent"),
    ] {
        let yaml =
            std::fs::read_to_string(workspace.join("deploy/kubernetes").join(manifest)).unwrap();
        let text = literal_block(&yaml, key)
            .replace("\"/etc/pivot/", &format!("\"{}/etc/pivot/", root.display()))
            .replace("\"/var/lib/", &format!("\"{}/var/lib/", root.display()));
        assert!(
            !text.contains("\"/etc/") && !text.contains("\"/var/"),
            "{text}"
        );
        let file = pki.dir.path().join(key);
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(bin(binary))
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{manifest}: {key} is refused by `{binary} check-config`: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_dockerfile_builds_every_binary_it_ships_and_runs_them_as_non_root() {
    let root = pivot_e2e::workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    assert_eq!(stages, ["build", "runtime", "controller", "agent"]);
    let build = text
        .lines()
        .find(|l| l.contains("cargo build --release"))
        .unwrap();
    for (stage, binaries) in [
        ("controller", &["pivot-controller", "pivotctl"][..]),
        ("agent", &["pivot-agent"][..]),
    ] {
        let body: String = text
            .split(&format!(" AS {stage}\n"))
            .nth(1)
            .unwrap()
            .split("\nFROM ")
            .next()
            .unwrap()
            .to_owned();
        assert!(
            body.contains("USER 10001:10001"),
            "stage {stage} must not run as root"
        );
        for b in binaries {
            assert!(build.contains(&format!("--bin {b}")), "{b} is not built");
            assert!(
                body.contains(&format!("/out/{b}")),
                "stage {stage} does not ship {b}"
            );
            // The binary the image ships is one the workspace has.
            assert!(bin(b).exists());
        }
    }
}
