//! The tokio driver of the Pirate queue: one task owns the state and both ROUTER sockets.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::idle::busy_wait;
use majordomo_proto::pirate::{PirateQueue, QueueConfig, QueueStats, QueueTransmit, Side};
use majordomo_proto::Hex;
use tracing::{debug, info, warn, Instrument};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Why a queue could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Binding an endpoint failed.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// What zmq.rs reported.
        #[source]
        source: zeromq::ZmqError,
    },
    /// The configuration is unusable (the message says which setting).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// A Simple or Paranoid Pirate queue with its frontend (clients) and backend (workers) bound.
pub struct Queue {
    core: PirateQueue,
    frontend: RouterSocket,
    backend: RouterSocket,
    endpoints: (String, String),
    send_timeout: Duration,
    busy_poll: Duration,
}

/// What woke the queue's loop.
enum Wake {
    Shutdown,
    Backend(zeromq::ZmqResult<ZmqMessage>),
    Frontend(zeromq::ZmqResult<ZmqMessage>),
    Timer,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

async fn bind(endpoint: &str) -> Result<(RouterSocket, String), QueueError> {
    let mut socket = RouterSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|source| QueueError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok((socket, bound.to_string()))
}

impl Queue {
    /// Binds the client-facing `frontend` and the worker-facing `backend` endpoints.
    pub async fn bind(
        frontend: &str,
        backend: &str,
        config: QueueConfig,
    ) -> Result<Self, QueueError> {
        if let Some(hb) = config.heartbeat {
            if hb.interval.is_zero() || hb.liveness == 0 {
                return Err(QueueError::Config(
                    "heartbeat interval and liveness must be positive",
                ));
            }
        }
        let (frontend, front_ep) = bind(frontend).await?;
        let (backend, back_ep) = bind(backend).await?;
        Ok(Self {
            core: PirateQueue::new(Instant::now(), config),
            frontend,
            backend,
            endpoints: (front_ep, back_ep),
            send_timeout: Duration::from_millis(100),
            busy_poll: Duration::ZERO,
        })
    }

    /// How long the queue keeps polling its sockets without sleeping after it last had work
    /// (default zero). As for the Majordomo broker: a window of 100-500 us saves a wake-up per
    /// message while traffic flows and keeps one core busy meanwhile; see
    /// [`majordomo_proto::idle`].
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// The bound frontend endpoint, with an ephemeral port resolved.
    pub fn frontend(&self) -> &str {
        &self.endpoints.0
    }

    /// The bound backend endpoint, with an ephemeral port resolved.
    pub fn backend(&self) -> &str {
        &self.endpoints.1
    }

    /// Serves until `shutdown` completes; returns the final counters.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<QueueStats, QueueError> {
        info!(frontend = %self.endpoints.0, backend = %self.endpoints.1, "queue bound");
        let span = tracing::info_span!("queue");
        async move {
            tokio::pin!(shutdown);
            // One timer, moved only when the core's deadline moves.
            let timer =
                tokio::time::sleep_until(tokio::time::Instant::from_std(self.core.poll_timeout()));
            tokio::pin!(timer);
            loop {
                let deadline = tokio::time::Instant::from_std(self.core.poll_timeout());
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                let wait = async {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => Wake::Shutdown,
                        // zmq.rs recv() is cancel-safe: a message is either returned or stays
                        // queued, so the select may be polled, and dropped, any number of times.
                        msg = self.backend.recv() => Wake::Backend(msg),
                        msg = self.frontend.recv() => Wake::Frontend(msg),
                        // A timer: dropping it unfired loses nothing.
                        () = &mut timer => Wake::Timer,
                    }
                };
                match busy_wait(wait, self.busy_poll, tokio::task::yield_now).await {
                    Wake::Shutdown => break,
                    Wake::Backend(Ok(msg)) => {
                        let _ = self.core.handle_backend(Instant::now(), &msg.into_vec());
                    }
                    Wake::Backend(Err(error)) => debug!(%error, "backend receive failed"),
                    Wake::Frontend(Ok(msg)) => {
                        let _ = self.core.handle_frontend(Instant::now(), &msg.into_vec());
                    }
                    Wake::Frontend(Err(error)) => debug!(%error, "frontend receive failed"),
                    Wake::Timer => self.core.handle_timeout(Instant::now()),
                }
                // The select is biased towards the sockets: under steady traffic the timer branch
                // may never be chosen, so the deadline is also checked here.
                let now = Instant::now();
                if now >= self.core.poll_timeout() {
                    self.core.handle_timeout(now);
                }
                self.flush().await;
                // Receives never return Pending while a peer keeps sending: give the accept loop
                // and the writer tasks their turn.
                tokio::task::coop::consume_budget().await;
            }
            Ok(self.core.stats())
        }
        .instrument(span)
        .await
    }

    /// Sends what the core queued; a send that cannot finish within the send timeout is dropped
    /// and the worker reported gone, so one stuck peer never stalls the queue.
    async fn flush(&mut self) {
        while let Some(QueueTransmit { side, frames }) = self.core.poll_transmit() {
            let identity: Bytes = frames[0].clone();
            let socket = match side {
                Side::Frontend => &mut self.frontend,
                Side::Backend => &mut self.backend,
            };
            let msg = ZmqMessage::try_from(frames).expect("transmits have frames");
            let ok = matches!(
                tokio::time::timeout(self.send_timeout, socket.send(msg)).await,
                Ok(Ok(()))
            );
            if !ok {
                warn!(peer = %Hex(&identity), ?side, "send failed, peer gone or stuck");
                self.core
                    .handle_undeliverable(Instant::now(), side, &identity);
            }
        }
    }
}
