//! The agent's local HTTP: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//!
//! Metrics are rendered from the latest observations at scrape time, so a miner that leaves the
//! inventory leaves `/metrics` too. Names follow Prometheus conventions (base units, `_total` for
//! counters); GPU series use dcgm-exporter's names and labels where they overlap, so existing
//! GPU dashboards read them unchanged.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pivot_proto::model::MinerState;

use crate::link::LinkState;
use std::collections::BTreeMap;

use crate::poll::{MinerStatus, Observations};

/// Series rendered by another part of the agent (GPUs, host).
pub type ExtraSeries = Arc<dyn Fn(&mut MetricsWriter) + Send + Sync>;

/// The device ids of configured miners no dialect answered for yet.
pub type Undetected = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the HTTP endpoints read.
#[derive(Clone)]
pub struct Exposition {
    pub host_id: String,
    pub obs: Arc<Observations>,
    pub link: Arc<LinkState>,
    /// Configured miners not found yet: `pivot_miner_up` 0 with dialect "unknown".
    pub undetected: Undetected,
    /// Extra series (GPUs, host), rendered by their owners.
    pub extra: Vec<ExtraSeries>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

/// Writes the Prometheus text format, one family at a time.
#[derive(Debug, Default)]
pub struct MetricsWriter {
    out: String,
}

impl MetricsWriter {
    /// Starts a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; non-finite values are skipped (an absent reading is no sample, never 0).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        // The text format has no escape for other control characters (a NUL
                        // from a miner's model name or a host id ends many parsers' lines).
                        c if c.is_control() => self.out.push(char::REPLACEMENT_CHARACTER),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

const STATES: [MinerState; 5] = [
    MinerState::Mining,
    MinerState::Sleeping,
    MinerState::Ramping,
    MinerState::Faulted,
    MinerState::Unknown,
];

/// Renders every series.
pub fn render(e: &Exposition) -> String {
    let mut w = MetricsWriter::default();
    let host = e.host_id.as_str();
    let undetected = (e.undetected)();
    e.obs
        .with_miners(|miners| render_miners(&mut w, host, miners, &undetected));

    let sweep = e.obs.sweep();
    w.family(
        "pivot_agent_sweep_duration_seconds",
        "gauge",
        "How long the last poll of every miner took.",
    );
    w.sample(
        "pivot_agent_sweep_duration_seconds",
        &[("Hostname", host)],
        sweep.duration.as_secs_f64(),
    );
    w.family(
        "pivot_agent_sweeps_total",
        "counter",
        "Polls of every miner completed.",
    );
    w.sample(
        "pivot_agent_sweeps_total",
        &[("Hostname", host)],
        sweep.sweeps_total as f64,
    );
    w.family(
        "pivot_agent_controller_connected",
        "gauge",
        "Whether a controller session is up.",
    );
    w.sample(
        "pivot_agent_controller_connected",
        &[("Hostname", host)],
        if e.link.connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    w.family(
        "pivot_agent_controller_sessions_total",
        "counter",
        "Controller sessions opened.",
    );
    w.sample(
        "pivot_agent_controller_sessions_total",
        &[("Hostname", host)],
        e.link.sessions_total.load(Ordering::Relaxed) as f64,
    );

    for f in &e.extra {
        f(&mut w);
    }
    w.finish()
}

/// The per-miner families, from the latest statuses (read under their lock, not copied).
fn render_miners(
    w: &mut MetricsWriter,
    host: &str,
    miners: &BTreeMap<String, MinerStatus>,
    undetected: &[String],
) {
    w.family(
        "pivot_miner_up",
        "gauge",
        "Whether the miner answered its last poll (1) or not (0); configured miners not found yet \
         are 0 with dialect \"unknown\".",
    );
    for (id, m) in miners {
        let ok = m.reading.reachable && m.reading.error.is_none();
        w.sample(
            "pivot_miner_up",
            &miner_labels(host, id, m),
            if ok { 1.0 } else { 0.0 },
        );
    }
    for id in undetected {
        w.sample(
            "pivot_miner_up",
            &[
                ("device", id.as_str()),
                ("dialect", "unknown"),
                ("model", ""),
                ("Hostname", host),
            ],
            0.0,
        );
    }
    w.family(
        "pivot_miner_power_watts",
        "gauge",
        "Power the miner measures; absent where its firmware reports none.",
    );
    for (id, m) in miners {
        if let Some(p) = m.reading.power_w {
            w.sample("pivot_miner_power_watts", &miner_labels(host, id, m), p);
        }
    }
    w.family(
        "pivot_miner_power_target_watts",
        "gauge",
        "Power target set on the miner.",
    );
    for (id, m) in miners {
        if let Some(p) = m.reading.power_target_w {
            w.sample(
                "pivot_miner_power_target_watts",
                &miner_labels(host, id, m),
                f64::from(p),
            );
        }
    }
    w.family(
        "pivot_miner_hashrate_hashes_per_second",
        "gauge",
        "Hashrate the miner reports.",
    );
    for (id, m) in miners {
        if let Some(h) = m.reading.hashrate_ths {
            w.sample(
                "pivot_miner_hashrate_hashes_per_second",
                &miner_labels(host, id, m),
                h * 1e12,
            );
        }
    }
    w.family(
        "pivot_miner_state",
        "gauge",
        "1 for the state the miner is in.",
    );
    for (id, m) in miners {
        let base = miner_labels(host, id, m);
        for s in STATES {
            let mut labels = base.clone();
            labels.push(("state", s.as_str()));
            w.sample(
                "pivot_miner_state",
                &labels,
                if m.reading.state == s { 1.0 } else { 0.0 },
            );
        }
    }
    w.family(
        "pivot_miner_board_temperature_celsius",
        "gauge",
        "Hashboard temperature.",
    );
    for (id, m) in miners {
        for b in &m.reading.boards {
            if let Some(t) = b.temperature_c {
                let idx = b.index.to_string();
                let mut labels = miner_labels(host, id, m);
                labels.push(("board", &idx));
                w.sample("pivot_miner_board_temperature_celsius", &labels, t);
            }
        }
    }
    w.family(
        "pivot_miner_consecutive_poll_failures",
        "gauge",
        "Polls in a row the miner did not answer.",
    );
    for (id, m) in miners {
        w.sample(
            "pivot_miner_consecutive_poll_failures",
            &miner_labels(host, id, m),
            f64::from(m.health.consecutive_failures),
        );
    }
    w.family(
        "pivot_miner_last_seen_timestamp_seconds",
        "gauge",
        "When the miner last answered (Unix time).",
    );
    for (id, m) in miners {
        if let Some(t) = m.health.last_seen {
            w.sample(
                "pivot_miner_last_seen_timestamp_seconds",
                &miner_labels(host, id, m),
                t.timestamp_millis() as f64 / 1000.0,
            );
        }
    }
}

fn miner_labels<'a>(host: &'a str, id: &'a str, m: &'a MinerStatus) -> Vec<(&'a str, &'a str)> {
    vec![
        ("device", id),
        ("dialect", m.reading.dialect.as_str()),
        ("model", m.model.as_deref().unwrap_or("")),
        ("Hostname", host),
    ]
}

async fn metrics(State(e): State<Exposition>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&e),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once a sweep has completed and a controller session is up.
async fn readyz(State(e): State<Exposition>) -> (StatusCode, String) {
    let swept = e.obs.sweep().sweeps_total > 0;
    let linked = e.link.connected.load(Ordering::Relaxed);
    let body = format!("sweep_done={swept} controller_connected={linked}\n");
    if swept && linked {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    e: Exposition,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(e);
    Ok((local, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_nan_is_skipped() {
        let mut w = MetricsWriter::default();
        w.family("x", "gauge", "h");
        w.sample("x", &[("model", "a\"b\\c\nd")], 1.5);
        w.sample("x", &[("model", "nan")], f64::NAN);
        let s = w.finish();
        assert!(s.contains("x{model=\"a\\\"b\\\\c\\nd\"} 1.5\n"), "{s}");
        assert!(!s.contains("nan\"}"), "{s}");
    }

    #[test]
    fn control_characters_never_reach_the_exposition() {
        let mut w = MetricsWriter::default();
        w.family("x", "gauge", "h");
        w.sample(
            "x",
            &[("Hostname", "rack\u{0}1"), ("model", "S21\u{7}\r")],
            1.0,
        );
        let s = w.finish();
        assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
        assert!(s.contains("rack\u{fffd}1"), "{s}");
    }
}
