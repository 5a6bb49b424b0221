//! `GET /api/events`: the dashboard's live feed (server-sent events).
//!
//! Two kinds of event: `audit`, every record of WatchEvents as it is written (decisions, plans,
//! intent statuses, agents, overrides, DR), and `status`, the site status whenever it changed
//! (power, cap in force, economics move without an audit record); `missed` (`{"count": n}`) in
//! place of records a feed that fell behind was not sent. The caller is authenticated
//! again before each status, so a revoked token or an ended session closes the feed
//! (`signed_out`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_server::FleetService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::caller::authenticate;
use super::{Web, WebError};
use crate::views;

/// How often the feed looks at the site status.
const STATUS_EVERY: Duration = Duration::from_secs(2);

fn event(name: &str, data: &serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The status without its timestamp, to tell whether anything changed.
fn comparable(mut status: serde_json::Value) -> serde_json::Value {
    if let Some(m) = status.as_object_mut() {
        m.remove("as_of");
    }
    status
}

pub async fn handler(
    State(web): State<Web>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let caller = authenticate(&web, &headers)?;
    let mut audits = web
        .fleet
        .watch_events(caller.request(v1::WatchEventsRequest {}))
        .await?
        .into_inner();
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = serde_json::Value::Null;
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                e = audits.next() => match e {
                    Some(Ok(v1::Event { event: Some(v1::event::Event::Audit(r)), .. })) => {
                        Some(event("audit", &views::audit_json(&r)))
                    }
                    Some(Ok(v1::Event { event: Some(v1::event::Event::Missed(m)), .. })) => {
                        Some(event("missed", &serde_json::json!({ "count": m.count })))
                    }
                    Some(_) => None,
                    None => break,
                },
                _ = tick.tick() => match authenticate(&web, &headers) {
                    Err(e) => {
                        let _ = tx
                            .send(event("signed_out", &serde_json::json!({ "error": e.message })))
                            .await;
                        break;
                    }
                    Ok(caller) => {
                        match web.fleet.get_site_status(caller.request(v1::GetSiteStatusRequest {})).await {
                            Ok(s) => {
                                let now = views::status_json(s.get_ref());
                                let same = comparable(now.clone());
                                (same != last).then(|| {
                                    last = same;
                                    event("status", &now)
                                })
                            }
                            Err(e) => {
                                tracing::warn!(error = %e.message(), "Web event feed: site status failed");
                                None
                            }
                        }
                    }
                },
            };
            if let Some(e) = next
                && tx.send(e).await.is_err()
            {
                break;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default()))
}
