//! The real Prometheus (Debian's `prometheus`, installed by scripts/test) scraping pivot's
//! daemons, and its query API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian installs it.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server on an ephemeral port with its own storage; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes each `(job, host:port)` every second.
    pub fn start(targets: &[(&str, &str)]) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "Prometheus not installed: scripts/test installs the Debian package `prometheus`"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let port = crate::free_port();
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap_or_else(|e| panic!("prometheus.yml: {e}"));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting Prometheus: {e}"));
        Self {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// `GET /api/v1/<path>`'s `data`, or `None` while Prometheus is not answering yet.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Option<serde_json::Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)
            .unwrap_or_else(|e| panic!("Prometheus API URL: {e}"));
        let resp = self.http.get(url).send().await.ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The series an instant query returns (empty while there are none).
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", q)])
            .await
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until `q` returns series that `done` accepts; panics with the last answer after
    /// `within`.
    pub async fn wait_for(
        &self,
        q: &str,
        within: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.query(q).await;
            if done(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus: `{q}` did not return what was wanted within {within:?}; last: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
