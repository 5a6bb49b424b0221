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
use std::ops::Bound;

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

/// Renders every series at once (what a scrape streams, see [`Scrape`]).
pub fn render(e: &Exposition) -> String {
    let mut scrape = Scrape::new(e.clone());
    let mut out = String::new();
    while let Some(chunk) = scrape.next_chunk(MINERS_PER_CHUNK) {
        out.push_str(&chunk);
    }
    out
}

/// Miners rendered per chunk of a scrape: about 100 KiB of text.
const MINERS_PER_CHUNK: usize = 512;

/// One per-miner family: name, type, help, and how a miner's samples come out of its status.
struct MinerFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Samples,
}

/// A family's samples for one miner.
enum Samples {
    /// One sample with the miner's labels, when the status has a value.
    One(fn(&MinerStatus) -> Option<f64>),
    /// Samples with a label of their own (per state, per board).
    Labelled(fn(&mut MetricsWriter, &'static str, &[(&str, &str)], &MinerStatus)),
}

impl MinerFamily {
    fn render(&self, w: &mut MetricsWriter, labels: &[(&str, &str)], m: &MinerStatus) {
        match self.samples {
            Samples::One(value) => {
                if let Some(v) = value(m) {
                    w.sample(self.name, labels, v);
                }
            }
            Samples::Labelled(samples) => samples(w, self.name, labels, m),
        }
    }
}

const MINER_FAMILIES: [MinerFamily; 8] = [
    MinerFamily {
        name: "pivot_miner_up",
        kind: "gauge",
        help: "Whether the miner answered its last poll (1) or not (0); configured miners not \
               found yet are 0 with dialect \"unknown\".",
        samples: Samples::One(|m| {
            let ok = m.reading.reachable && m.reading.error.is_none();
            Some(if ok { 1.0 } else { 0.0 })
        }),
    },
    MinerFamily {
        name: "pivot_miner_power_watts",
        kind: "gauge",
        help: "Power the miner measures; absent where its firmware reports none.",
        samples: Samples::One(|m| m.reading.power_w),
    },
    MinerFamily {
        name: "pivot_miner_power_target_watts",
        kind: "gauge",
        help: "Power target set on the miner.",
        samples: Samples::One(|m| m.reading.power_target_w.map(f64::from)),
    },
    MinerFamily {
        name: "pivot_miner_hashrate_hashes_per_second",
        kind: "gauge",
        help: "Hashrate the miner reports.",
        samples: Samples::One(|m| m.reading.hashrate_ths.map(|h| h * 1e12)),
    },
    MinerFamily {
        name: "pivot_miner_state",
        kind: "gauge",
        help: "1 for the state the miner is in.",
        samples: Samples::Labelled(|w, name, labels, m| {
            for s in STATES {
                let mut labels = labels.to_vec();
                labels.push(("state", s.as_str()));
                w.sample(name, &labels, if m.reading.state == s { 1.0 } else { 0.0 });
            }
        }),
    },
    MinerFamily {
        name: "pivot_miner_board_temperature_celsius",
        kind: "gauge",
        help: "Hashboard temperature.",
        samples: Samples::Labelled(|w, name, labels, m| {
            for b in &m.reading.boards {
                if let Some(t) = b.temperature_c {
                    let idx = b.index.to_string();
                    let mut labels = labels.to_vec();
                    labels.push(("board", &idx));
                    w.sample(name, &labels, t);
                }
            }
        }),
    },
    MinerFamily {
        name: "pivot_miner_consecutive_poll_failures",
        kind: "gauge",
        help: "Polls in a row the miner did not answer.",
        samples: Samples::One(|m| Some(f64::from(m.health.consecutive_failures))),
    },
    MinerFamily {
        name: "pivot_miner_last_seen_timestamp_seconds",
        kind: "gauge",
        help: "When the miner last answered (Unix time).",
        samples: Samples::One(|m| {
            m.health
                .last_seen
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
        }),
    },
];

/// A scrape in progress: `/metrics` rendered a chunk of miners at a time, each chunk under the
/// observations' lock, so a scrape never holds the whole text. At 10,000 miners that text is
/// about 19 MB, which a scrape rendered at once added to the agent's peak memory (issue 12).
/// Between chunks a sweep may land, so one scrape can mix two sweeps' values (never within a
/// sample), as a scrape that came a moment later would show.
pub struct Scrape {
    e: Exposition,
    /// The family being rendered; past the last one, the agent's own series, then done.
    family: usize,
    /// The last miner rendered in this family, when it is under way.
    after: Option<String>,
}

impl Scrape {
    pub fn new(e: Exposition) -> Self {
        Self {
            e,
            family: 0,
            after: None,
        }
    }

    /// The next piece of the exposition, about `miners` miners' worth; `None` when done.
    pub fn next_chunk(&mut self, miners: usize) -> Option<String> {
        let host = self.e.host_id.clone();
        let mut w = MetricsWriter::default();
        let Some(f) = MINER_FAMILIES.get(self.family) else {
            if self.family > MINER_FAMILIES.len() {
                return None;
            }
            self.family += 1;
            self.agent_series(&mut w, &host);
            return Some(w.finish());
        };
        if self.after.is_none() {
            w.family(f.name, f.kind, f.help);
        }
        let after = self.after.take();
        let (last, more) = self.e.obs.with_miners(|all| {
            let range = match &after {
                Some(a) => all.range::<str, _>((Bound::Excluded(a.as_str()), Bound::Unbounded)),
                None => all.range::<str, _>(..),
            };
            let mut last = None;
            let mut more = false;
            for (i, (id, m)) in range.enumerate() {
                if i == miners.max(1) {
                    more = true;
                    break;
                }
                f.render(&mut w, &miner_labels(&host, id, m), m);
                last = Some(id);
            }
            (last.cloned(), more)
        });
        if more {
            self.after = last;
        } else {
            if self.family == 0 {
                for id in (self.e.undetected)() {
                    w.sample(
                        f.name,
                        &[
                            ("device", id.as_str()),
                            ("dialect", "unknown"),
                            ("model", ""),
                            ("Hostname", &host),
                        ],
                        0.0,
                    );
                }
            }
            self.family += 1;
        }
        Some(w.finish())
    }

    /// The agent's own series and those of its other parts (GPUs, host).
    fn agent_series(&self, w: &mut MetricsWriter, host: &str) {
        let e = &self.e;
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
            f(w);
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
    let chunks = futures::stream::unfold(Scrape::new(e), |mut scrape| async move {
        let chunk = scrape.next_chunk(MINERS_PER_CHUNK)?;
        Some((Ok::<_, std::convert::Infallible>(chunk), scrape))
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(chunks),
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

    /// A scrape in chunks of any size renders what one chunk of everything renders: every
    /// family once, its samples in device order, the undetected miners after the last `up`.
    #[test]
    fn a_scrape_in_chunks_is_the_whole_exposition() {
        use crate::miner::{BoardReading, MinerAddr, Reading};
        use pivot_proto::model::MinerDialect;
        let obs = Arc::new(Observations::default());
        {
            let mut m = obs.miners.write().unwrap();
            for i in 0..7 {
                let addr = MinerAddr::new(format!("10.0.0.{i}"));
                let mut reading = Reading::empty(&addr, MinerDialect::Luxos);
                reading.state = MinerState::Mining;
                reading.power_w = (i % 2 == 0).then_some(3000.0 + f64::from(i));
                reading.hashrate_ths = Some(200.0);
                reading.boards = vec![BoardReading {
                    index: 0,
                    hashrate_ths: Some(66.0),
                    temperature_c: Some(70.0),
                }];
                m.insert(
                    format!("miner/10.0.0.{i}"),
                    MinerStatus {
                        reading,
                        at: chrono::Utc::now(),
                        health: crate::poll::Health::default(),
                        model: Some("Antminer S21".into()),
                    },
                );
            }
        }
        let e = Exposition {
            host_id: "rack-1".into(),
            obs,
            link: Arc::new(LinkState::default()),
            undetected: Arc::new(|| vec!["miner/10.0.1.1".to_owned()]),
            extra: Vec::new(),
        };
        let whole = {
            let mut scrape = Scrape::new(e.clone());
            let mut out = String::new();
            while let Some(c) = scrape.next_chunk(1000) {
                out.push_str(&c);
            }
            out
        };
        for size in [0, 1, 2, 3, 6, 7] {
            let mut scrape = Scrape::new(e.clone());
            let mut out = String::new();
            while let Some(c) = scrape.next_chunk(size) {
                out.push_str(&c);
            }
            assert_eq!(out, whole, "chunks of {size}");
        }
        assert_eq!(whole.matches("# TYPE pivot_miner_up gauge").count(), 1);
        assert_eq!(whole.matches("pivot_miner_up{").count(), 8, "{whole}");
        assert_eq!(whole.matches("pivot_miner_power_watts{").count(), 4);
        assert_eq!(whole.matches("pivot_miner_state{").count(), 35);
        let up = whole.rfind("pivot_miner_up{").unwrap();
        assert!(
            whole[up..].starts_with("pivot_miner_up{device=\"miner/10.0.1.1\",dialect=\"unknown\""),
            "{whole}"
        );
        assert!(up < whole.find("# TYPE pivot_miner_power_watts").unwrap());
        assert!(
            whole.ends_with("pivot_agent_controller_sessions_total{Hostname=\"rack-1\"} 0\n"),
            "{whole}"
        );
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
