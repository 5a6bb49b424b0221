//! A scripted fake controller for agent tests: a real tonic AgentService on a real socket whose
//! every received message the test reads, and whose every sent message the test writes — in
//! the manner of linkerd2-proxy's integration fakes.
//!
//! It is strict: every hello and intent status the agent sends must be one the test expects, in
//! order, or the test fails naming the message. Telemetry is the agent's heartbeat and is kept
//! aside (a test reads it with [`FakeController::telemetry`]). [`FakeController::quiet`] asserts
//! that nothing else arrives for a while, and dropping the fake fails the test if a message
//! nobody expected is still waiting: a test can say "and nothing else happened".

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Down = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;
/// The sender of the current session's downstream, if a session is up.
type Session = Arc<Mutex<Option<mpsc::Sender<Result<v1::ControllerMessage, Status>>>>>;

/// The controller's clock: real time shifted by an offset the test sets.
#[derive(Clone, Debug)]
struct Clock(Arc<Mutex<chrono::Duration>>);

impl Clock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn proto(&self) -> Option<prost_types::Timestamp> {
        Some(pivot_proto::model::timestamp_to_proto(self.now()))
    }
}

#[derive(Clone)]
struct Service {
    up: mpsc::UnboundedSender<v1::AgentMessage>,
    down: Session,
    telemetry_interval: Duration,
    clock: Clock,
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for Service {
    type SessionStream = Down;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Down>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let welcome = v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Welcome(v1::Welcome {
                controller_id: "fake".into(),
                telemetry_interval: Some(pivot_proto::model::duration_to_proto(
                    self.telemetry_interval,
                )),
                controller_time: self.clock.proto(),
                stale_after: None,
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        *self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        let up = self.up.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if up.send(m).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Down))
    }
}

/// A running fake controller.
pub struct FakeController {
    pub addr: SocketAddr,
    up: mpsc::UnboundedReceiver<v1::AgentMessage>,
    /// Telemetry received while waiting for something else, oldest first.
    telemetry: Vec<v1::TelemetrySnapshot>,
    down: Session,
    clock: Clock,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeController")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A short description of a message for failure output.
fn describe(m: &v1::AgentMessage) -> String {
    match &m.msg {
        Some(Up::Hello(h)) => format!(
            "hello from {} ({} miners, {} GPUs, {} held intents)",
            h.host_id,
            h.miners.len(),
            h.gpus.len(),
            h.held_intents.len()
        ),
        Some(Up::IntentStatus(s)) => format!(
            "{:?} status of {} generation {} ({})",
            v1::IntentPhase::try_from(s.phase).unwrap_or(v1::IntentPhase::Unspecified),
            s.device_id,
            s.generation,
            s.detail
        ),
        Some(Up::Telemetry(_)) => "telemetry".into(),
        None => "an empty message".into(),
    }
}

impl FakeController {
    /// Listens on an ephemeral port of 127.0.0.1; its clock is real time.
    pub async fn start(telemetry_interval: Duration) -> Self {
        Self::start_with_clock(telemetry_interval, chrono::Duration::zero()).await
    }

    /// As [`FakeController::start`], with a clock `offset` ahead of real time (negative:
    /// behind), as a controller on a host whose time is wrong.
    pub async fn start_with_clock(telemetry_interval: Duration, offset: chrono::Duration) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", crate::free_port()))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (up_tx, up) = mpsc::unbounded_channel();
        let down = Arc::new(Mutex::new(None));
        let clock = Clock(Arc::new(Mutex::new(offset)));
        let svc = Service {
            up: up_tx,
            down: Arc::clone(&down),
            telemetry_interval,
            clock: clock.clone(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(v1::agent_service_server::AgentServiceServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Self {
            addr,
            up,
            telemetry: Vec::new(),
            down,
            clock,
            stop: Some(stop_tx),
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The controller's clock now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Moves the controller's clock to `offset` from real time (for messages sent from now on).
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        *self
            .clock
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = offset;
    }

    /// Sends a message on the current session.
    pub async fn send(&self, msg: v1::controller_message::Msg) {
        let tx = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let tx = tx.unwrap_or_else(|| panic!("no agent session to send on"));
        tx.send(Ok(v1::ControllerMessage { msg: Some(msg) }))
            .await
            .unwrap_or_else(|_| panic!("session closed"));
    }

    /// Sends intents, stamped with the controller's clock.
    pub async fn send_intents(&self, intents: Vec<v1::Intent>) {
        self.send(v1::controller_message::Msg::Intents(v1::IntentBatch {
            intents,
            controller_time: self.clock.proto(),
        }))
        .await;
    }

    /// Renews the leases of the intents named by (device, generation) until `until`.
    pub async fn renew(&self, until: chrono::DateTime<chrono::Utc>, intents: &[(&str, u64)]) {
        self.send(v1::controller_message::Msg::Lease(v1::LeaseRenewal {
            lease_expires_at: Some(pivot_proto::model::timestamp_to_proto(until)),
            intents: intents
                .iter()
                .map(|(d, g)| v1::IntentRef {
                    device_id: (*d).to_owned(),
                    generation: *g,
                })
                .collect(),
            controller_time: self.clock.proto(),
        }))
        .await;
    }

    /// The next message that is not telemetry (telemetry is kept aside meanwhile).
    pub async fn next(&mut self, within: Duration, what: &str) -> v1::AgentMessage {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.up.recv()).await {
                Ok(Some(v1::AgentMessage {
                    msg: Some(Up::Telemetry(t)),
                })) => self.telemetry.push(t),
                Ok(Some(m)) => return m,
                Ok(None) => panic!("fake controller: channel closed while waiting for {what}"),
                Err(_) => panic!("fake controller: no {what} within {within:?}"),
            }
        }
    }

    /// The agent's hello, which must be the next message.
    pub async fn hello(&mut self, within: Duration) -> v1::Hello {
        let m = self.next(within, "hello").await;
        match m.msg {
            Some(Up::Hello(h)) => h,
            _ => panic!("fake controller: expected a hello, got {}", describe(&m)),
        }
    }

    /// A status of `device` at `generation` in `phase`, which must be the next message.
    pub async fn status(
        &mut self,
        within: Duration,
        device: &str,
        generation: u64,
        phase: v1::IntentPhase,
    ) -> v1::IntentStatus {
        self.status_in(within, device, generation, &[phase]).await
    }

    /// A status of `device` at `generation` in one of `phases`, which must be the next message.
    async fn status_in(
        &mut self,
        within: Duration,
        device: &str,
        generation: u64,
        phases: &[v1::IntentPhase],
    ) -> v1::IntentStatus {
        let names: Vec<String> = phases.iter().map(|p| format!("{p:?}")).collect();
        let what = format!(
            "{} status of {device} generation {generation}",
            names.join(" or ")
        );
        let m = self.next(within, &what).await;
        match m.msg {
            Some(Up::IntentStatus(s))
                if s.device_id == device
                    && s.generation == generation
                    && phases.iter().any(|p| s.phase == *p as i32) =>
            {
                s
            }
            _ => panic!("fake controller: expected the {what}, got {}", describe(&m)),
        }
    }

    /// Statuses of one device and generation, in this order, as the next messages; returns the
    /// last. An `Applied` followed by `Confirmed` in `phases` may come as the `Confirmed` alone:
    /// the agent reports a call whose own read-back shows the effect once, as confirmed.
    pub async fn statuses(
        &mut self,
        within: Duration,
        device: &str,
        generation: u64,
        phases: &[v1::IntentPhase],
    ) -> v1::IntentStatus {
        use v1::IntentPhase::{Applied, Confirmed};
        let mut last = None;
        let mut rest = phases;
        while let Some((&p, after)) = rest.split_first() {
            let foldable = p == Applied && after.first() == Some(&Confirmed);
            let accepted: &[v1::IntentPhase] = if foldable {
                &[Applied, Confirmed]
            } else {
                &[p]
            };
            let s = self.status_in(within, device, generation, accepted).await;
            // Confirmed at once: the Applied was folded into it.
            rest = if foldable && s.phase == Confirmed as i32 {
                &after[1..]
            } else {
                after
            };
            last = Some(s);
        }
        last.unwrap_or_else(|| panic!("fake controller: no phases given"))
    }

    /// Waits for a telemetry snapshot `pick` accepts; any message other than telemetry arriving
    /// meanwhile fails the test.
    pub async fn telemetry<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&v1::TelemetrySnapshot) -> Option<T>,
    ) -> T {
        if let Some(t) = self.telemetry.drain(..).find_map(|t| pick(&t)) {
            return t;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.up.recv()).await {
                Ok(Some(v1::AgentMessage {
                    msg: Some(Up::Telemetry(t)),
                })) => {
                    if let Some(found) = pick(&t) {
                        return found;
                    }
                }
                Ok(Some(m)) => panic!(
                    "fake controller: waiting for {what}, got unexpected {}",
                    describe(&m)
                ),
                Ok(None) => panic!("fake controller: channel closed while waiting for {what}"),
                Err(_) => panic!("fake controller: no {what} within {within:?}"),
            }
        }
    }

    /// Asserts that nothing but telemetry arrives for `period`.
    pub async fn quiet(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        loop {
            match tokio::time::timeout_at(deadline, self.up.recv()).await {
                Ok(Some(v1::AgentMessage {
                    msg: Some(Up::Telemetry(t)),
                })) => self.telemetry.push(t),
                Ok(Some(m)) => panic!(
                    "fake controller: expected nothing else, got {}",
                    describe(&m)
                ),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Stops serving: the agent's session breaks and redials find nobody.
    pub async fn stop(&mut self) {
        self.down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
            let _ = h.await;
        }
    }
}

impl Drop for FakeController {
    /// A message the test did not expect, still waiting, fails the test (unless it is failing
    /// already).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let mut unexpected = Vec::new();
        while let Ok(m) = self.up.try_recv() {
            if !matches!(m.msg, Some(Up::Telemetry(_))) {
                unexpected.push(describe(&m));
            }
        }
        assert!(
            unexpected.is_empty(),
            "fake controller: messages no test step expected: {unexpected:#?}"
        );
    }
}
