//! The web listener over a real socket, against a controller with a real SQLite store: the JSON
//! API answers what FleetService answers, refuses what it refuses, and sessions, CSRF, metrics
//! and the event feed behave.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Web, router};
use crate::Controller;
use crate::auth::{Role, new_token};
use crate::config::{Config, NoEnv};
use crate::store::{NewAudit, SqliteStore, Store};

struct Site {
    _dir: tempfile::TempDir,
    ctl: Arc<Controller>,
    store: Arc<dyn Store>,
    url: String,
    http: reqwest::Client,
    viewer: String,
    operator: String,
    operator_id: String,
}

async fn site(auth: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pivot.db");
    let text = format!(
        "[site]\nid = \"web-test\"\ncap_w = 1000000\nreserve_w = 50000\n[store]\npath = \"{}\"\n{auth}\n",
        db.display()
    );
    let config = Config::parse(&text, std::path::Path::new("c.toml"), &NoEnv).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let (viewer, v) = new_token("vera", Role::Viewer, None, Utc::now());
    let (operator, o) = new_token("olive", Role::Operator, None, Utc::now());
    store.put_token(&v).unwrap();
    store.put_token(&o).unwrap();
    let ctl = Controller::new(config, Arc::clone(&store)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Web::new(Arc::clone(&ctl), Duration::from_secs(3600)));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Site {
        _dir: dir,
        ctl,
        store,
        url,
        http: reqwest::Client::new(),
        viewer,
        operator,
        operator_id: o.id,
    }
}

const ENFORCED: &str = "[auth]\nallow_plaintext_tokens = true\n";

impl Site {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::POST, path, token, headers, Some(body))
            .await;
        (s, v)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::GET, path, token, &[], None)
            .await;
        (s, v)
    }
}

fn without_time(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("as_of");
    v
}

#[tokio::test]
async fn the_json_api_answers_as_fleet_service_and_refuses_what_it_refuses() {
    let site = site(ENFORCED).await;
    let (status, body) = site.get("/api/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("no identity"),
        "{body}"
    );
    let (status, body) = site.get("/api/status", Some("pvt_wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, body) = site.get("/api/status", Some(&site.viewer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let direct = crate::views::status_json(&site.ctl.site_status().await.unwrap());
    assert_eq!(without_time(body.clone()), without_time(direct));
    assert_eq!(body["site_cap_w"], 1_000_000.0);
    assert_eq!(body["cap_in_force_w"], 950_000.0);

    // Before the first planning round there are no economics: GetEconomics' UNAVAILABLE.
    let (status, body) = site.get("/api/economics", Some(&site.viewer)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let curtail = json!({ "target": "miners", "pin": "sleep", "reason": "storm" });
    let csrf = [("x-pivot-csrf", "page")];
    let (status, body) = site
        .post("/api/overrides", Some(&site.viewer), &csrf, curtail.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("role `viewer`"),
        "{body}"
    );
    assert!(site.store.list_overrides(Utc::now()).unwrap().is_empty());

    let (status, body) = site
        .post("/api/overrides", Some(&site.operator), &[], curtail.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("x-pivot-csrf"),
        "{body}"
    );

    let (status, body) = site
        .post(
            "/api/overrides",
            Some(&site.operator),
            &csrf,
            json!({ "target": "miners", "pin": "sleep", "colour": "red" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");

    let (status, body) = site
        .post("/api/overrides", Some(&site.operator), &csrf, curtail)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["target"], "miners");
    assert_eq!(body["pin"], "sleep");
    let stored = site.store.list_overrides(Utc::now()).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].actor, "token:olive");
    let audit = site.store.list_audit(10, 0, "miners", "override").unwrap();
    assert_eq!(audit[0].actor, "token:olive");
    assert_eq!(audit[0].detail["client_actor"], "web dashboard");

    let (_, list) = site.get("/api/overrides", Some(&site.viewer)).await;
    assert_eq!(list[0]["target"], "miners");
    assert_eq!(list[0]["reason"], "storm");

    // The fleet check is FleetService's: a device nobody declared is refused, named.
    let (status, body) = site
        .post(
            "/api/overrides",
            Some(&site.operator),
            &csrf,
            json!({ "target": "host/nowhere", "pin": "drain" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );

    let (status, body) = site.post("/api/dr", Some(&site.operator), &csrf, json!({ "target_power_w": 400000.0, "within_s": 600, "duration_s": 3600, "event_id": "dr-web" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], "dr-web");
    let (_, events) = site.get("/api/dr", Some(&site.viewer)).await;
    assert_eq!(events[0]["event_id"], "dr-web");
    let (_, windows) = site.get("/api/windows", Some(&site.viewer)).await;
    assert_eq!(windows["demand_response"][0]["event_id"], "dr-web");
    let (_, decisions) = site.get("/api/decisions", Some(&site.viewer)).await;
    let kinds: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["demand_response", "override"]);

    let (status, _) = site.get("/api/history?minutes=0", Some(&site.viewer)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = site.get("/api/history", Some(&site.viewer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["site"].is_array() && body["market"].is_array());
}

fn session_cookie(headers: &reqwest::header::HeaderMap) -> String {
    let c = headers
        .get(reqwest::header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    c.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_acts_with_its_csrf_token_and_ends_with_its_token() {
    let site = site(ENFORCED).await;
    let (status, body) = site
        .post("/api/session", None, &[], json!({ "token": "pvt_nope" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(site.ctl.store.list_tokens().unwrap().len(), 2);

    let (status, who, headers) = site
        .call(
            reqwest::Method::POST,
            "/api/session",
            None,
            &[],
            Some(json!({ "token": site.operator })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["role"], "operator");
    assert_eq!(who["may_operate"], true);
    let cookie = session_cookie(&headers);
    let csrf = who["csrf"].as_str().unwrap().to_owned();

    let with_cookie = [("cookie", cookie.as_str())];
    let (status, who2, _) = site
        .call(
            reqwest::Method::GET,
            "/api/session",
            None,
            &with_cookie,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who2["name"], "token:olive");
    assert_eq!(who2["csrf"], csrf.as_str());

    let body = json!({ "target": "miners" });
    let (status, r) = site
        .post(
            "/api/overrides/clear",
            None,
            &[("cookie", cookie.as_str()), ("x-pivot-csrf", "guess")],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{r}");
    let (status, r) = site
        .post(
            "/api/overrides/clear",
            None,
            &[("cookie", cookie.as_str()), ("x-pivot-csrf", csrf.as_str())],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["cleared"], false);

    // Revoking the token ends what the session may do at once.
    assert!(
        site.store
            .revoke_token(&site.operator_id, Utc::now())
            .unwrap()
    );
    let (status, r, _) = site
        .call(
            reqwest::Method::GET,
            "/api/status",
            None,
            &with_cookie,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(r["error"].as_str().unwrap().contains("revoked"), "{r}");

    let (status, _, headers) = site
        .call(
            reqwest::Method::DELETE,
            "/api/session",
            None,
            &with_cookie,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers
            .get(reqwest::header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, r, _) = site
        .call(
            reqwest::Method::GET,
            "/api/status",
            None,
            &with_cookie,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(r["error"].as_str().unwrap().contains("session"), "{r}");
}

#[tokio::test]
async fn open_mode_needs_no_sign_in_but_still_the_csrf_header() {
    let site = site("[auth]\nmode = \"open\"\n").await;
    let (status, who) = site.get("/api/session", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["open"], true);
    assert_eq!(who["may_operate"], true);
    let body = json!({ "target": "miners", "pin": "sleep" });
    let (status, _) = site.post("/api/overrides", None, &[], body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, r) = site
        .post("/api/overrides", None, &[("x-pivot-csrf", "page")], body)
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
}

async fn metrics(site: &Site) -> String {
    let resp = site
        .http
        .get(format!("{}/metrics", site.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_show_the_site_and_count_decisions_and_intent_statuses() {
    let site = site(ENFORCED).await;
    let text = metrics(&site).await;
    for line in [
        "pivot_site_cap_watts 1000000.0",
        "pivot_site_reserve_watts 50000.0",
        "pivot_site_cap_in_force_watts 950000.0",
        "pivot_load_power_watts{class=\"mining\"} 0.0",
        "pivot_agents_connected 0",
        "pivot_demand_response_active 0",
        "pivot_miners{state=\"unreachable\"} 0",
        "pivot_controller_info{site=\"web-test\"",
        "# TYPE pivot_decisions counter",
        "pivot_decisions_total{action=\"wake\"} 0",
        "pivot_intent_statuses_total{phase=\"failed\"} 0",
        "# UNIT pivot_site_cap_watts watts",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    // Unknown before the first round: no sample rather than a made-up 0.
    assert!(
        !text.contains("\npivot_hashprice_usd_per_ph_day "),
        "{text}"
    );
    assert!(
        !text.contains("\npivot_demand_response_target_watts "),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));

    for (kind, reason, detail) in [
        (
            "decision",
            "energy 300 > 74: sleeping 3 S19",
            json!({ "action": "sleep" }),
        ),
        (
            "decision",
            "energy 300 > 74: sleeping 1 S21",
            json!({ "action": "sleep" }),
        ),
        (
            "decision",
            "warning: cannot reach the cap",
            json!({ "kind": "x" }),
        ),
        ("status", "curtailed", json!({ "phase": "confirmed" })),
        ("status", "no answer", json!({ "phase": "failed" })),
        ("status", "refused: unknown device", Value::Null),
        (
            "plan",
            "every phase confirmed",
            json!({ "state": "completed" }),
        ),
    ] {
        site.ctl
            .audit(NewAudit {
                kind,
                subject: "plan/p1".into(),
                actor: "controller".into(),
                reason: reason.into(),
                detail,
            })
            .await;
    }
    let want = [
        "pivot_decisions_total{action=\"sleep\"} 2",
        "pivot_decisions_total{action=\"warning\"} 1",
        "pivot_intent_statuses_total{phase=\"confirmed\"} 1",
        "pivot_intent_statuses_total{phase=\"failed\"} 1",
        "pivot_intent_statuses_total{phase=\"refused\"} 1",
        "pivot_plans_finished_total{outcome=\"completed\"} 1",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(&site).await;
        if want.iter().all(|w| text.contains(w)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters never reached {want:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_event_feed_sends_status_then_audit_records_as_they_are_written() {
    let site = site(ENFORCED).await;
    let (status, _) = site.get("/api/events", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut resp = site
        .http
        .get(format!("{}/api/events", site.url))
        .bearer_auth(&site.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    let mut audited = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: audit") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no audit event within 10 s:\n{seen}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("event: status") && !audited {
            audited = true;
            site.ctl
                .audit(NewAudit {
                    kind: "decision",
                    subject: "plan/p9".into(),
                    actor: "controller".into(),
                    reason: "energy 212 USD/MWh > S19j Pro breakeven 74".into(),
                    detail: json!({ "action": "sleep" }),
                })
                .await;
        }
    }
    assert!(seen.contains("\"site_id\":\"web-test\""), "{seen}");
    assert!(seen.contains("S19j Pro breakeven 74"), "{seen}");
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let site = site(ENFORCED).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let resp = site
            .http
            .get(format!("{}{path}", site.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert!(
            h[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(
            h[reqwest::header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
    }
    let (status, _) = site.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn a_web_section_with_a_mistake_is_refused_naming_the_key() {
    let base = "[site]\nid = \"s\"\ncap_w = 1000\n[store]\npath = \"/tmp/p.db\"\n";
    let parse = |web: &str| {
        Config::parse(
            &format!("{base}[web]\n{web}"),
            std::path::Path::new("/etc/pivot/c.toml"),
            &NoEnv,
        )
    };
    let c = parse("listen = \"0.0.0.0:8080\"\n").unwrap();
    assert_eq!(c.web.unwrap().session_idle_s, 43_200);
    for (web, key) in [
        (
            "listen = \"0.0.0.0:8080\"\nsession_idle_s = 5\n",
            "web.session_idle_s",
        ),
        ("listen = \"0.0.0.0:8080\"\nport = 80\n", "port"),
        ("listen = \"everywhere\"\n", "listen"),
        ("session_idle_s = 600\n", "listen"),
    ] {
        let e = parse(web).unwrap_err().to_string();
        assert!(
            e.contains("/etc/pivot/c.toml") && e.contains(key),
            "{web}: {e}"
        );
    }
    // Without the section there is no web listener (serve); dev turns it on.
    let c = Config::parse(base, std::path::Path::new("c.toml"), &NoEnv).unwrap();
    assert!(c.web.is_none());
}
