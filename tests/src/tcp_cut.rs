//! A TCP forwarder that can cut its traffic: what a network partition between one
//! process and a server looks like to that process. While cut, every open connection is
//! dropped and new ones are closed at once; `restore` lets traffic through again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
}

/// Forwards `127.0.0.1:port()` to `target` until dropped.
pub struct TcpCut {
    port: u16,
    state: Arc<State>,
    accept: AbortHandle,
}

impl TcpCut {
    /// Listens on a free loopback port (call inside a tokio runtime).
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if st.cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let mut inbound = inbound;
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut conns = st.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(Self {
            port,
            state,
            accept,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for c in self
            .state
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Lets traffic through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
