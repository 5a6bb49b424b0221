//! The session with the controller: the agent dials (never the reverse), says hello, streams
//! telemetry and intent statuses up, takes intents and lease renewals down, and redials with
//! jittered exponential backoff when the session breaks. While it is down the reconciler keeps
//! holding the current intents (and never raises power past their lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pivot_proto::model;
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use pivot_proto::v1::controller_message::Msg as Down;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::config::ControllerConfig;
use crate::reconcile::{Reconciler, Renewal};

/// What the link needs from the rest of the agent.
pub trait Source: Send + Sync {
    /// The hello of a new session (inventory, held intents).
    fn hello(&self) -> v1::Hello;
    /// A telemetry snapshot of the latest readings.
    fn telemetry(&self) -> v1::TelemetrySnapshot;
    /// Ticks when the inventory changes: the session then starts again with a new hello.
    fn inventory_changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Whether a session is up, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    pub sessions_total: std::sync::atomic::AtomicU64,
    /// This agent's poll intervals with their configuration keys (empty: nothing polled), set
    /// once before the link runs: checked against how old a reading the controller believes.
    pub polls: Vec<(&'static str, Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("controller URL `{url}`: {problem}")]
    Url { url: String, problem: String },
    #[error("controller TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("controller TLS: {0}")]
    Tls(tonic::transport::Error),
}

/// Builds the endpoint for the controller, with TLS material when configured.
pub fn endpoint(config: &ControllerConfig) -> Result<Endpoint, LinkError> {
    let mut ep = Endpoint::from_shared(config.url.clone())
        .map_err(|e| LinkError::Url {
            url: config.url.clone(),
            problem: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| LinkError::TlsFile {
                path: p.display().to_string(),
                source,
            })
        };
        let mut t =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(d) = &tls.domain {
            t = t.domain_name(d.clone());
        }
        ep = ep.tls_config(t).map_err(LinkError::Tls)?;
    }
    Ok(ep)
}

/// The wait before redial `attempt` (0-based): exponential from 0.5 s up to `max`, with the
/// upper half jittered so a site's agents do not all redial at once after a controller restart.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << attempt.min(16))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Runs the link until the task is dropped.
pub async fn run(
    config: ControllerConfig,
    source: Arc<dyn Source>,
    reconciler: Arc<Reconciler>,
    state: Arc<LinkState>,
) {
    let endpoint = match endpoint(&config) {
        Ok(e) => e,
        Err(e) => {
            // The configuration was validated; a TLS file that vanished since is all that is left.
            warn!(error = %e, "Cannot build the controller endpoint; holding intents without a controller");
            return;
        }
    };
    let max = Duration::from_secs(config.reconnect_max_s.max(1));
    let mut attempt = 0u32;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let welcomed = session(channel, &source, &reconciler, &state).await;
                state.connected.store(false, Ordering::SeqCst);
                match welcomed {
                    Ok(()) => {
                        info!(controller = %config.url, "Controller closed the session; redialling");
                        attempt = 0;
                    }
                    Err(e) => {
                        warn!(controller = %config.url, error = %e, "Controller session ended; holding current intents and redialling")
                    }
                }
            }
            Err(e) => {
                warn!(controller = %config.url, error = %e, attempt, "Cannot reach the controller; holding current intents")
            }
        }
        let wait = backoff(attempt, max);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

/// The telemetry interval a controller asks for when it names none (and its default).
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(10);

/// How old a reading a controller believes when its welcome does not say: its default, three
/// telemetry intervals.
pub fn default_stale_after(telemetry: Duration) -> Duration {
    telemetry * 3
}

/// What the controller will not see of this agent's devices: for each poll whose reading can
/// be older than the controller believes by the time it is judged (the poll's interval plus the
/// telemetry interval that carries it), one line naming the key and both figures. The
/// controller counts such a device unseen between polls: at its maximum draw, and moved by no
/// plan — an operator's curtail leaves it as it is.
pub fn unseen_between_polls(
    polls: &[(&'static str, Duration)],
    telemetry: Duration,
    stale_after: Duration,
) -> Vec<String> {
    polls
        .iter()
        .filter(|(_, every)| *every + telemetry > stale_after)
        .map(|(key, every)| {
            format!(
                "{key} is {} s: with telemetry every {} s a reading can be {} s old when the controller judges it, and it believes readings for {} s. Between polls it counts these devices unseen (at their maximum draw, even once a curtail has slept them) and no plan wakes them or moves them on economics; poll more often, or raise the controller's [engine] stale_after_s",
                secs(*every),
                secs(telemetry),
                secs(*every + telemetry),
                secs(stale_after)
            )
        })
        .collect()
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

async fn session(
    channel: Channel,
    source: &Arc<dyn Source>,
    reconciler: &Arc<Reconciler>,
    state: &LinkState,
) -> Result<(), tonic::Status> {
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(32 * 1024 * 1024)
        .max_encoding_message_size(32 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    // Subscribed before the hello is built, so no inventory change falls between them.
    let mut changes = source.inventory_changes();
    changes.mark_unchanged();
    tx.send(v1::AgentMessage {
        msg: Some(Up::Hello(source.hello())),
    })
    .await
    .map_err(|_| tonic::Status::cancelled("session closed"))?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("controller closed before welcome"))?;
    let interval = match first.msg {
        Some(Down::Welcome(w)) => {
            if let Some(t) = controller_time(w.controller_time.as_ref(), "welcome.controller_time")
            {
                reconciler.note_controller_time(t);
            }
            let interval = w
                .telemetry_interval
                .as_ref()
                .and_then(|d| model::duration_from_proto(d, "telemetry_interval").ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_TELEMETRY_INTERVAL);
            let stale_after = w
                .stale_after
                .as_ref()
                .and_then(|d| model::duration_from_proto(d, "stale_after").ok())
                .filter(|d| !d.is_zero())
                .unwrap_or_else(|| default_stale_after(interval));
            for problem in unseen_between_polls(&state.polls, interval, stale_after) {
                warn!("{problem}");
            }
            interval
        }
        _ => {
            return Err(tonic::Status::invalid_argument(
                "controller's first message was not welcome",
            ));
        }
    };
    state.connected.store(true, Ordering::SeqCst);
    state.sessions_total.fetch_add(1, Ordering::Relaxed);
    info!(?interval, "Controller session up");
    // Where every held intent stands, so the controller resumes without repeating effects.
    for s in reconciler.statuses() {
        send(&tx, Up::IntentStatus(s)).await?;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => send(&tx, Up::Telemetry(source.telemetry())).await?,
            Ok(()) = changes.changed() => {
                info!("Inventory changed; starting a new session to say hello again");
                return Ok(());
            }
            () = reconciler.reports.ready() => {
                for s in reconciler.reports.drain() {
                    send(&tx, Up::IntentStatus(s)).await?;
                }
            }
            msg = inbound.message() => match msg? {
                None => return Ok(()),
                Some(v1::ControllerMessage { msg: Some(Down::Intents(batch)) }) => {
                    let at = controller_time(batch.controller_time.as_ref(), "intents.controller_time");
                    reconciler.receive(&batch.intents, at);
                }
                Some(v1::ControllerMessage { msg: Some(Down::Lease(l)) }) => match renewal(&l) {
                    Ok(r) => reconciler.renew(&r),
                    Err(e) => warn!(error = %e, "Ignored a malformed lease renewal; nothing changed"),
                },
                Some(v1::ControllerMessage { msg: Some(Down::Welcome(_)) }) => {}
                Some(v1::ControllerMessage { msg: None }) => warn!("Ignored an empty controller message"),
            },
        }
    }
}

/// The controller's clock from a message, when it carries a valid one.
fn controller_time(
    t: Option<&prost_types::Timestamp>,
    field: &str,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match t.map(|t| model::timestamp_from_proto(t, field)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            warn!(error = %e, "Ignored a malformed controller time");
            None
        }
        None => None,
    }
}

/// A lease renewal from the wire, checked: a lease, and the intents it names.
pub fn renewal(l: &v1::LeaseRenewal) -> Result<Renewal, model::FieldError> {
    let until = l
        .lease_expires_at
        .as_ref()
        .ok_or_else(|| model::FieldError::new("lease.lease_expires_at", "required but missing"))
        .and_then(|t| model::timestamp_from_proto(t, "lease.lease_expires_at"))?;
    let mut intents = Vec::with_capacity(l.intents.len());
    for (i, r) in l.intents.iter().enumerate() {
        let id = model::non_empty(&r.device_id, &format!("lease.intents[{i}].device_id"))?;
        if r.generation == 0 {
            return Err(model::FieldError::new(
                format!("lease.intents[{i}].generation"),
                "must be at least 1",
            ));
        }
        intents.push((id, r.generation));
    }
    let controller_time = l
        .controller_time
        .as_ref()
        .map(|t| model::timestamp_from_proto(t, "lease.controller_time"))
        .transpose()?;
    Ok(Renewal {
        until,
        intents,
        controller_time,
    })
}

async fn send(tx: &mpsc::Sender<v1::AgentMessage>, msg: Up) -> Result<(), tonic::Status> {
    tx.send(v1::AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| tonic::Status::cancelled("session closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_further_apart_than_the_controller_believes_are_named() {
        let s = Duration::from_secs;
        let polls = [
            ("poll.miner_interval_s", s(60)),
            ("poll.gpu_interval_s", Duration::from_millis(2500)),
        ];
        // The defaults (10 s telemetry, readings believed for 30 s): a 60 s miner poll is not.
        let lines = unseen_between_polls(&polls, s(10), s(30));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "poll.miner_interval_s is 60 s: with telemetry every 10 s a reading can be 70 s old when the controller judges it, and it believes readings for 30 s."
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("[engine] stale_after_s"), "{}", lines[0]);
        // A controller that believes readings for 90 s sees both.
        assert!(unseen_between_polls(&polls, s(10), s(90)).is_empty());
        // The sum counts: 20 s polls with 10 s telemetry are at the edge of 30 s, not over it.
        assert!(unseen_between_polls(&[("poll.miner_interval_s", s(20))], s(10), s(30)).is_empty());
        assert_eq!(
            unseen_between_polls(&[("poll.miner_interval_s", s(21))], s(10), s(30)).len(),
            1
        );
        // Fractions are shown as such.
        let l = unseen_between_polls(
            &[("poll.gpu_interval_s", Duration::from_millis(2500))],
            s(1),
            s(3),
        );
        assert!(l[0].starts_with("poll.gpu_interval_s is 2.5 s"), "{}", l[0]);
    }

    #[test]
    fn renewals_name_what_they_renew_and_malformed_ones_are_refused() {
        let ts = |s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        let l = v1::LeaseRenewal {
            lease_expires_at: Some(ts(1_800_000_000)),
            intents: vec![v1::IntentRef {
                device_id: "miner/a".into(),
                generation: 4,
            }],
            controller_time: Some(ts(1_799_999_000)),
        };
        let r = renewal(&l).unwrap();
        assert_eq!(r.intents, [("miner/a".to_owned(), 4)]);
        assert!(r.controller_time.is_some());
        let mut bad = l.clone();
        bad.intents[0].generation = 0;
        assert!(renewal(&bad).unwrap_err().field.contains("generation"));
        let mut bad = l.clone();
        bad.lease_expires_at = None;
        assert!(renewal(&bad).is_err());
        let mut bad = l;
        bad.intents[0].device_id = String::new();
        assert!(renewal(&bad).unwrap_err().field.contains("device_id"));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let max = Duration::from_secs(30);
        for attempt in 0..40 {
            let b = backoff(attempt, max);
            let base = Duration::from_millis(500)
                .saturating_mul(1u32 << attempt.min(16))
                .min(max);
            assert!(b >= base / 2 && b <= base, "attempt {attempt}: {b:?}");
        }
        assert!(backoff(0, max) <= Duration::from_millis(500));
    }
}
