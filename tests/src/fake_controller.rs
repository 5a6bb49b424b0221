//! A scripted fake controller for agent tests: a real tonic AgentService on a real socket whose
//! every received message the test reads, and whose every sent message the test writes — in
//! the manner of linkerd2-proxy's integration fakes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pivot_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Down = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;
/// The sender of the current session's downstream, if a session is up.
type Session = Arc<Mutex<Option<mpsc::Sender<Result<v1::ControllerMessage, Status>>>>>;

#[derive(Clone)]
struct Service {
    up: mpsc::UnboundedSender<v1::AgentMessage>,
    down: Session,
    telemetry_interval: Duration,
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
                controller_time: Some(pivot_proto::model::timestamp_to_proto(chrono::Utc::now())),
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
    down: Session,
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

impl FakeController {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start(telemetry_interval: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (up_tx, up) = mpsc::unbounded_channel();
        let down = Arc::new(Mutex::new(None));
        let svc = Service {
            up: up_tx,
            down: Arc::clone(&down),
            telemetry_interval,
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
            down,
            stop: Some(stop_tx),
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Sends intents.
    pub async fn send_intents(&self, intents: Vec<v1::Intent>) {
        self.send(v1::controller_message::Msg::Intents(v1::IntentBatch {
            intents,
            controller_time: Some(pivot_proto::model::timestamp_to_proto(chrono::Utc::now())),
        }))
        .await;
    }

    /// Waits for the first received message `pick` accepts, skipping others.
    pub async fn expect<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&v1::AgentMessage) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.up.recv()).await {
                Ok(Some(m)) => {
                    if let Some(t) = pick(&m) {
                        return t;
                    }
                }
                Ok(None) => panic!("fake controller: channel closed while waiting for {what}"),
                Err(_) => panic!("fake controller: no {what} within {within:?}"),
            }
        }
    }

    /// Waits for the agent's hello.
    pub async fn hello(&mut self, within: Duration) -> v1::Hello {
        self.expect(within, "hello", |m| match &m.msg {
            Some(v1::agent_message::Msg::Hello(h)) => Some(h.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a status of `device` at `generation` in `phase`; returns its detail.
    pub async fn status(
        &mut self,
        within: Duration,
        device: &str,
        generation: u64,
        phase: v1::IntentPhase,
    ) -> v1::IntentStatus {
        let what = format!("{phase:?} status of {device} generation {generation}");
        self.expect(within, &what, |m| match &m.msg {
            Some(v1::agent_message::Msg::IntentStatus(s))
                if s.device_id == device
                    && s.generation == generation
                    && s.phase == phase as i32 =>
            {
                Some(s.clone())
            }
            _ => None,
        })
        .await
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
