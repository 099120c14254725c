//! A stand-in coordinator for driving a real, enrolled agent process with commands the
//! real coordinator does not send yet (or not on demand): it serves `AgentSession` with
//! the real coordinator's server certificate (so the agent's pinned fleet CA accepts it)
//! on the real coordinator's address, after that one is stopped. The test reads the
//! agent's Hello and sends commands one at a time, getting each reply by request id.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_proto::v1::agent_message::Msg;
use certfleet_proto::v1::agent_session_server::{AgentSession, AgentSessionServer};
use certfleet_proto::v1::{
    coordinator_message::Cmd, reply, AgentMessage, CoordinatorMessage, Hello, Reply,
    RotateIdentityRequest, RotateIdentityResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[derive(Clone)]
struct Service {
    /// Where commands to the current session go.
    to_agent: Arc<Mutex<Option<mpsc::Sender<CoordinatorMessage>>>>,
    from_agent: mpsc::Sender<AgentMessage>,
}

#[tonic::async_trait]
impl AgentSession for Service {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<CoordinatorMessage>(16);
        *self.to_agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let from_agent = self.from_agent.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if from_agent.send(m).await.is_err() {
                    return;
                }
            }
        });
        let out =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }

    async fn rotate_identity(
        &self,
        _: Request<RotateIdentityRequest>,
    ) -> Result<Response<RotateIdentityResponse>, Status> {
        Err(Status::unimplemented(
            "the stand-in coordinator rotates nothing",
        ))
    }

    async fn leave(
        &self,
        _: Request<certfleet_proto::v1::LeaveRequest>,
    ) -> Result<Response<certfleet_proto::v1::LeaveResponse>, Status> {
        Err(Status::unimplemented(
            "the stand-in coordinator removes no host",
        ))
    }
}

/// See the module documentation. Stops serving when dropped.
pub struct FakeCoordinator {
    service: Service,
    from_agent: mpsc::Receiver<AgentMessage>,
    next_id: u64,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeCoordinator {
    /// Serves on `addr` with the coordinator's `server.pem` / `server.key` and the fleet
    /// CA (`fleet-ca.pem`) from its state directory `state`.
    pub async fn start(addr: SocketAddr, state: &Path) -> anyhow::Result<Self> {
        let cert = std::fs::read_to_string(state.join("server.pem"))?;
        let key = std::fs::read_to_string(state.join("server.key"))?;
        let ca = std::fs::read_to_string(state.join("fleet-ca.pem"))?;
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(format!("{cert}{ca}"), key));
        let (from_tx, from_rx) = mpsc::channel(64);
        let service = Service {
            to_agent: Arc::default(),
            from_agent: from_tx,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let router = Server::builder()
            .tls_config(tls)?
            .add_service(AgentSessionServer::new(service.clone()));
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Ok(Self {
            service,
            from_agent: from_rx,
            next_id: 0,
            _stop: stop_tx,
        })
    }

    /// The next Hello the agent sends (on connecting), within `timeout`.
    pub async fn hello(&mut self, timeout: Duration) -> anyhow::Result<Hello> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.from_agent.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no Hello from the agent within {timeout:?}"))?
                .ok_or_else(|| anyhow::anyhow!("the session ended"))?;
            if let Some(Msg::Hello(h)) = m.msg {
                return Ok(h);
            }
        }
    }

    /// Sends `cmd` under a fresh request id and waits for its reply.
    pub async fn request(&mut self, cmd: Cmd, timeout: Duration) -> anyhow::Result<reply::Result> {
        self.next_id += 1;
        let id = format!("fake-{}-{}", std::process::id(), self.next_id);
        let tx = self
            .service
            .to_agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no agent session yet"))?;
        tx.send(CoordinatorMessage {
            request_id: id.clone(),
            cmd: Some(cmd),
        })
        .await
        .map_err(|_| anyhow::anyhow!("the agent session ended"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.from_agent.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no reply to {id} within {timeout:?}"))?
                .ok_or_else(|| anyhow::anyhow!("the session ended"))?;
            if let Some(Msg::Reply(Reply {
                request_id,
                result: Some(result),
            })) = m.msg
            {
                if request_id == id {
                    return Ok(result);
                }
            }
        }
    }
}
