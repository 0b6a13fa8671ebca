//! The Paranoid Pirate (6/PPP) worker.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::{Backoff, Heartbeat, HeartbeatAction, HeartbeatConfig};
use majordomo_proto::ppp::{Envelope, PppMessage};
use majordomo_proto::Limits;
use majordomo_worker::{BoxError, Handler};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// Heartbeat and reconnect settings of a [`PppWorker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PppWorkerConfig {
    /// Heartbeat interval and liveness (default 1 s and 3, the Guide's Paranoid Pirate values).
    pub heartbeat: HeartbeatConfig,
    /// First reconnect delay (default 1 s); it doubles on each failure up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay (default 32 s).
    pub reconnect_max: Duration,
    /// Size limits applied to requests.
    pub limits: Limits,
}

impl Default for PppWorkerConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig {
                interval: Duration::from_secs(1),
                liveness: 3,
            },
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            limits: Limits::default(),
        }
    }
}

/// Why a PPP worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PppWorkerError {
    /// The configuration is unusable (the message says which setting).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// A 6/PPP worker: READY, then requests served one at a time by a [`Handler`], heartbeats both
/// ways, and a new socket with READY after the queue goes silent ("If the worker detects that the
/// client has disconnected, it MUST send READY again to start a new conversation").
///
/// A handler that fails or panics drops its request; the worker then sends READY again on the
/// same connection, which our queue takes as the worker starting over (the request goes to
/// another worker).
#[derive(Debug, Clone)]
pub struct PppWorker {
    endpoint: String,
    config: PppWorkerConfig,
}

type Job = JoinHandle<Result<Vec<Bytes>, BoxError>>;

enum End {
    Shutdown,
    Lost,
}

async fn send(socket: &mut DealerSocket, frames: Vec<Bytes>, timeout: Duration) -> bool {
    let msg = ZmqMessage::try_from(frames).expect("frames");
    matches!(
        tokio::time::timeout(timeout, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

impl PppWorker {
    /// A worker for the queue backend at `endpoint`.
    pub fn new(endpoint: impl Into<String>, config: PppWorkerConfig) -> Self {
        Self {
            endpoint: endpoint.into(),
            config,
        }
    }

    /// Serves until `shutdown` completes. Connection failures are retried forever with backoff.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PppWorkerError> {
        if self.config.heartbeat.interval.is_zero() || self.config.heartbeat.liveness == 0 {
            return Err(PppWorkerError::Config(
                "heartbeat interval and liveness must be positive",
            ));
        }
        let token = CancellationToken::new();
        let handler = Arc::new(handler);
        let task = tokio::spawn(
            self.clone()
                .sessions(handler, token.clone())
                .instrument(tracing::info_span!("ppp_worker")),
        );
        shutdown.await;
        token.cancel();
        if let Err(error) = task.await {
            warn!(%error, "worker task failed");
        }
        Ok(())
    }

    async fn sessions<H: Handler>(self, handler: Arc<H>, token: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        loop {
            if let Some(mut socket) = self.connect(&token).await {
                if let End::Shutdown = self
                    .serve(&mut socket, &handler, &token, &mut backoff)
                    .await
                {
                    return;
                }
            }
            let delay = backoff.next_delay();
            warn!(
                delay_ms = delay.as_millis() as u64,
                "heartbeat failure, can't reach queue; reconnecting"
            );
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, token: &CancellationToken) -> Option<DealerSocket> {
        let timeout = self.config.heartbeat.expiry();
        let mut options = SocketOptions::default();
        options.connect_timeout(timeout);
        let mut socket = DealerSocket::with_options(options);
        let connected = tokio::select! {
            () = token.cancelled() => return None,
            result = tokio::time::timeout(timeout, socket.connect(&self.endpoint)) => result,
        };
        if !matches!(connected, Ok(Ok(()))) {
            return None;
        }
        // "The first message in any conversation MUST be W:READY."
        if !send(&mut socket, PppMessage::Ready.encode(), timeout).await {
            return None;
        }
        info!(endpoint = %self.endpoint, "worker ready");
        Some(socket)
    }

    async fn serve<H: Handler>(
        &self,
        socket: &mut DealerSocket,
        handler: &Arc<H>,
        token: &CancellationToken,
        backoff: &mut Backoff,
    ) -> End {
        let send_timeout = self.config.heartbeat.interval;
        let mut heartbeat = Heartbeat::new(Instant::now(), self.config.heartbeat);
        let mut job: Option<(Vec<Bytes>, Job)> = None;
        let end = loop {
            let deadline = tokio::time::Instant::from_std(heartbeat.next_deadline());
            tokio::select! {
                () = token.cancelled() => break End::Shutdown,
                // zmq.rs recv() is cancel-safe.
                msg = socket.recv() => {
                    let Ok(msg) = msg else { break End::Lost };
                    heartbeat.on_recv(Instant::now());
                    backoff.reset();
                    match PppMessage::decode(&msg.into_vec(), &self.config.limits) {
                        Ok(PppMessage::Payload(Envelope { address, body })) if job.is_none() => {
                            let handler = handler.clone();
                            job = Some((address, tokio::spawn(async move { handler.handle(body).await })));
                        }
                        Ok(PppMessage::Payload(_)) => warn!("request while busy dropped"),
                        Ok(PppMessage::Heartbeat) => {}
                        Ok(PppMessage::Ready) => warn!("READY from the queue ignored"),
                        Err(error) => warn!(%error, "invalid message from queue dropped"),
                    }
                }
                // Polled by reference: an unfinished handler survives other branches winning.
                result = async { (&mut job.as_mut().expect("guarded").1).await }, if job.is_some() => {
                    let (address, _) = job.take().expect("guarded");
                    let frames = match result {
                        Ok(Ok(body)) => PppMessage::Payload(Envelope { address, body }).encode(),
                        Ok(Err(error)) => {
                            warn!(%error, "handler failed; request dropped, sending READY again");
                            PppMessage::Ready.encode()
                        }
                        Err(error) => {
                            warn!(%error, "handler panicked; request dropped, sending READY again");
                            PppMessage::Ready.encode()
                        }
                    };
                    if !send(socket, frames, send_timeout).await {
                        break End::Lost;
                    }
                    heartbeat.on_send(Instant::now());
                }
                () = tokio::time::sleep_until(deadline) => match heartbeat.poll(Instant::now()) {
                    HeartbeatAction::PeerDead => break End::Lost,
                    HeartbeatAction::Send => {
                        if !send(socket, PppMessage::Heartbeat.encode(), send_timeout).await {
                            break End::Lost;
                        }
                    }
                    HeartbeatAction::Wait => {}
                },
            }
        };
        if let Some((_, task)) = job {
            task.abort();
        }
        end
    }
}
