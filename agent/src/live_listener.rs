//! Listening only while a challenge is live: the one shape both of the agent's own
//! responders (HTTP-01 standalone/proxy, TLS-ALPN-01 standalone/loopback) share. A
//! [`Responder`] says how one connection is answered and how a failed bind is explained;
//! [`LiveListeners`] binds all of its addresses or none, runs an accept loop per address
//! with a bound on connections at once and on each connection's time, stops listening
//! when asked (open connections finish), and waits for stopped loops to let go of the
//! port before binding again — so a clear followed at once by a present (of this type or
//! of the other type on the same port) never finds the agent's own socket in the way.
//!
//! Accept loops and connections are tasks on the listeners' own tracker;
//! [`LiveListeners::close`] (at agent shutdown) ends them all and waits for them.

use crate::error::AgentFailure;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections answered at once per listener set; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One challenge type's way of answering a connection.
pub(crate) trait Responder: Clone + Send + Sync + 'static {
    /// For logs: "HTTP-01", "TLS-ALPN-01".
    const WHAT: &'static str;
    /// A connection that takes longer is cut.
    const CONN_TIMEOUT: Duration;

    /// Answers one connection (on a clone of the responder).
    fn answer(self, stream: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> + Send;

    /// The operator's message when `addr` cannot be bound: what holds it and the fix.
    fn bind_error(&self, addr: SocketAddr, e: &std::io::Error) -> String;
}

pub(crate) struct LiveListeners<R: Responder> {
    addrs: Vec<SocketAddr>,
    responder: R,
    /// One bind at a time: two concurrent `present`s must not both bind the port.
    bind: tokio::sync::Mutex<()>,
    /// Cancels the listeners; `Some` while listening.
    cancel: Mutex<Option<CancellationToken>>,
    /// The accept loops, so a new bind can wait until stopped ones let go of the port.
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Cancelled by [`LiveListeners::close`]: every listener and connection ends, no new
    /// one starts.
    closed: CancellationToken,
    /// Every accept loop and connection.
    tasks: TaskTracker,
}

impl<R: Responder> LiveListeners<R> {
    pub(crate) fn new(addrs: Vec<SocketAddr>, responder: R) -> Self {
        Self {
            addrs,
            responder,
            bind: tokio::sync::Mutex::new(()),
            cancel: Mutex::new(None),
            loops: Mutex::new(Vec::new()),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub(crate) fn is_listening(&self) -> bool {
        lock(&self.cancel).is_some()
    }

    /// Starts listening on every address unless already listening (all or none).
    pub(crate) async fn ensure(&self) -> Result<(), AgentFailure> {
        let _one_bind = self.bind.lock().await;
        if self.closed.is_cancelled() {
            return Err(AgentFailure::new(
                "internal",
                "the agent is stopping; the challenge is presented again once it is back",
            ));
        }
        if self.is_listening() {
            return Ok(());
        }
        self.join_stopped().await;
        let mut listeners = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                AgentFailure::new("bind_failed", self.responder.bind_error(*addr, &e))
            })?;
            listeners.push(l);
        }
        let cancel = self.closed.child_token();
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut loops = lock(&self.loops);
        for l in listeners {
            loops.push(self.tasks.spawn(accept_loop(
                l,
                self.responder.clone(),
                cancel.clone(),
                limit.clone(),
                self.tasks.clone(),
                self.closed.clone(),
            )));
        }
        drop(loops);
        if let Some(old) = lock(&self.cancel).replace(cancel) {
            old.cancel();
        }
        tracing::debug!(addrs = ?self.addrs, "{} responder listening", R::WHAT);
        Ok(())
    }

    /// Stops listening (connections already open finish). The sockets close when the
    /// accept loops next run; [`LiveListeners::wait_stopped`] waits for that.
    pub(crate) fn stop(&self) {
        if let Some(cancel) = lock(&self.cancel).take() {
            cancel.cancel();
            tracing::debug!("{} responder stopped", R::WHAT);
        }
    }

    /// When not listening: waits until the stopped accept loops have closed their sockets.
    pub(crate) async fn wait_stopped(&self) {
        let _one_bind = self.bind.lock().await;
        if !self.is_listening() {
            self.join_stopped().await;
        }
    }

    async fn join_stopped(&self) {
        let stopped: Vec<_> = std::mem::take(&mut *lock(&self.loops));
        for t in stopped {
            let _ = t.await;
        }
    }

    /// Stops listening for good: ends every listener and open connection and waits for
    /// them (at most `within`).
    pub(crate) async fn close(&self, within: Duration) {
        self.closed.cancel();
        self.stop();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "{} connections still open after {} s; stopping anyway",
                R::WHAT,
                within.as_secs()
            );
        }
    }
}

/// Accepts until `cancel`; each connection runs on `tasks` with a permit of `limit`, cut
/// after [`Responder::CONN_TIMEOUT`] or when the listeners close (`closed`).
async fn accept_loop<R: Responder>(
    listener: TcpListener,
    responder: R,
    cancel: CancellationToken,
    limit: Arc<tokio::sync::Semaphore>,
    tasks: TaskTracker,
    closed: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "{} accept failed", R::WHAT);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let conn = responder.clone().answer(stream, peer);
        let closed = closed.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = tokio::time::timeout(R::CONN_TIMEOUT, conn) => {}
                _ = closed.cancelled() => {}
            }
        });
    }
}
