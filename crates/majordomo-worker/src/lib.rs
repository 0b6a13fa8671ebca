//! Majordomo (7/MDP) workers for tokio applications.
//!
//! A [`Worker`] connects to a broker, registers one service with READY, and hands each REQUEST to
//! a [`Handler`], one request at a time per logical worker. Heartbeats flow both ways while the
//! handler's future runs (it is polled next to the socket and the heartbeat timer), so a long
//! request does not look like a dead worker. A handler that computes for a long time without
//! awaiting should move that work to `tokio::task::spawn_blocking`, or it holds up its worker's
//! heartbeats like any code that blocks an async task.
//! When the broker is silent for `liveness` intervals, or sends DISCONNECT, the worker closes its
//! socket, waits (1 s doubling to 32 s by default, reset once the broker answers), opens a new
//! socket and sends READY again: zmq.rs does not reconnect a DEALER socket by itself, and 7/MDP
//! says "When the worker receives DISCONNECT ... it MUST close its socket, and reconnect to the
//! broker on a new socket."
//!
//! # When a handler fails
//! A handler that returns `Err` or panics does not stop the worker. 7/MDP has no error reply, so
//! the worker does not invent one: it sends DISCONNECT, drops the request and registers again on a
//! new socket at once. A broker that re-queues the requests of departed workers (ours does, up to
//! its delivery limit) gives the request to another worker; other brokers drop it. Either way the
//! client sees no reply for that attempt and retries after its timeout. A handler that wants the
//! client to see an error should return it in the reply body.
//!
//! # Layout
//! - [`Worker`], [`WorkerConfig`]: run `concurrency` logical workers until shutdown.
//! - [`Handler`] and [`handler_fn`]: what serves a request.
//! - [`WorkerError`]: configuration errors.
#![warn(missing_docs)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use majordomo_proto::heartbeat::{Backoff, HeartbeatConfig};
use majordomo_proto::idle::busy_wait;
use majordomo_proto::worker::{SessionEnd, WorkerEvent, WorkerSession};
use majordomo_proto::{Hex, Limits};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// The error type handlers return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Serves requests: takes the request body frames, returns the reply body frames.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one request. An `Err` (or a panic) sends no reply; see the crate docs.
    async fn handle(&self, request: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError>;
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F>(F);

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Wraps `f(request) -> impl Future<Output = Result<reply, BoxError>>` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Vec<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    HandlerFn(f)
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Vec<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    async fn handle(&self, request: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError> {
        (self.0)(request).await
    }
}

/// Heartbeats, reconnect backoff and concurrency of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Heartbeat interval and liveness (default 2500 ms, 3). Must match the broker's.
    pub heartbeat: HeartbeatConfig,
    /// First delay before reconnecting after the broker went silent (default 1 s).
    pub reconnect_initial: Duration,
    /// Largest reconnect delay; the delay doubles up to it (default 32 s).
    pub reconnect_max: Duration,
    /// Logical workers run on one handler, each with its own connection (default 1).
    pub concurrency: usize,
    /// Size limits applied to requests.
    pub limits: Limits,
    /// How long each logical worker keeps polling its socket without sleeping after its last
    /// message (default zero: it sleeps as soon as nothing is ready). A window of 100-200 us
    /// saves the wake-up that 7/MDP's one request at a time otherwise costs on every request, and
    /// keeps a core busy while requests keep coming; it pays off when the worker has a core to
    /// itself (on a runtime shared with other busy tasks it takes their time). See
    /// [`majordomo_proto::idle`].
    pub busy_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            concurrency: 1,
            limits: Limits::default(),
            busy_poll: Duration::ZERO,
        }
    }
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is unusable (the message says which setting).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The service name is empty, too long, or in the broker's reserved `mmi.` namespace.
    #[error("invalid service name {0:?}")]
    InvalidService(Bytes),
}

/// A Majordomo worker for one service.
#[derive(Debug, Clone)]
pub struct Worker {
    endpoint: String,
    service: Bytes,
    config: WorkerConfig,
}

impl Worker {
    /// A worker serving `service` at the broker `endpoint`.
    pub fn new(
        endpoint: impl Into<String>,
        service: impl Into<Bytes>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            service: service.into(),
            config,
        }
    }

    /// Runs [`WorkerConfig::concurrency`] logical workers until `shutdown` completes; each then
    /// sends DISCONNECT to the broker. Connection failures are retried forever with backoff; only
    /// a bad configuration is an error.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let config = self.config;
        if config.heartbeat.interval.is_zero() || config.heartbeat.liveness == 0 {
            return Err(WorkerError::Config(
                "heartbeat interval and liveness must be positive",
            ));
        }
        if config.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1"));
        }
        if config.limits.check_service(&self.service).is_err()
            || majordomo_proto::mmi::is_mmi(&self.service)
        {
            return Err(WorkerError::InvalidService(self.service));
        }
        let handler = Arc::new(handler);
        let token = CancellationToken::new();
        let mut tasks = Vec::with_capacity(config.concurrency);
        for index in 0..config.concurrency {
            let session = Session {
                endpoint: self.endpoint.clone(),
                service: self.service.clone(),
                config,
                handler: handler.clone(),
                token: token.clone(),
            };
            let span = tracing::info_span!("worker", service = %Hex(&self.service), index);
            tasks.push(tokio::spawn(session.run().instrument(span)));
        }
        shutdown.await;
        token.cancel();
        for task in tasks {
            if let Err(error) = task.await {
                warn!(%error, "worker task failed");
            }
        }
        Ok(())
    }
}

/// What a handler's future gives: its result, or the panic it raised.
type JobOutput = std::thread::Result<Result<Vec<Bytes>, BoxError>>;

/// A request being handled. It is polled inside the session's `select!`, next to the socket and
/// the heartbeat timer, so heartbeats keep flowing while it runs without the cost of a task per
/// request; a panic is caught and reported like an error.
type Job = Pin<Box<dyn Future<Output = JobOutput> + Send>>;

/// What woke a logical worker's loop.
enum Wake {
    Cancelled,
    Message(zeromq::ZmqResult<ZmqMessage>),
    Job(JobOutput),
    Timer,
}

struct Session<H> {
    endpoint: String,
    service: Bytes,
    config: WorkerConfig,
    handler: Arc<H>,
    token: CancellationToken,
}

async fn send(socket: &mut DealerSocket, frames: Vec<Bytes>, timeout: Duration) -> bool {
    let msg = ZmqMessage::try_from(frames).expect("commands have frames");
    matches!(
        tokio::time::timeout(timeout, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

impl<H: Handler> Session<H> {
    async fn run(self) {
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        while !self.token.is_cancelled() {
            let end = match self.connect().await {
                Some(mut socket) => self.serve(&mut socket, &mut backoff).await,
                None => SessionEnd::BrokerSilent,
            };
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::HandlerFailed => continue,
                SessionEnd::BrokerSilent | SessionEnd::Disconnected => {
                    let delay = backoff.next_delay();
                    info!(
                        delay_ms = delay.as_millis() as u64,
                        "reconnecting to broker"
                    );
                    tokio::select! {
                        () = self.token.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        debug!("worker stopped");
    }

    /// Opens a socket and connects it within one liveness period.
    async fn connect(&self) -> Option<DealerSocket> {
        let timeout = self.config.heartbeat.expiry();
        let mut options = SocketOptions::default();
        options.connect_timeout(timeout);
        let mut socket = DealerSocket::with_options(options);
        let connected = tokio::select! {
            () = self.token.cancelled() => return None,
            result = tokio::time::timeout(timeout, socket.connect(&self.endpoint)) => result,
        };
        match connected {
            Ok(Ok(())) => Some(socket),
            Ok(Err(error)) => {
                warn!(endpoint = %self.endpoint, %error, "cannot connect to broker");
                None
            }
            Err(_) => {
                warn!(endpoint = %self.endpoint, "connect to broker timed out");
                None
            }
        }
    }

    /// Runs one session on a connected socket until it ends.
    async fn serve(&self, socket: &mut DealerSocket, backoff: &mut Backoff) -> SessionEnd {
        let mut session = WorkerSession::new(
            Instant::now(),
            self.service.clone(),
            self.config.heartbeat,
            self.config.limits,
        );
        let mut job: Option<Job> = None;
        let mut registered = false;
        // One timer, moved when the session's deadline moves: a fresh timer per request would be
        // registered with, and removed from, the runtime's timer wheel on every message.
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(session.poll_timeout()));
        tokio::pin!(timer);
        let end = loop {
            if !self.flush(socket, &mut session).await {
                warn!("connection to broker lost while sending");
                break SessionEnd::BrokerSilent;
            }
            if !registered {
                registered = true;
                info!(endpoint = %self.endpoint, "registered with broker");
            }
            if let Some(end) = session.ended() {
                break end;
            }
            let deadline = tokio::time::Instant::from_std(session.poll_timeout());
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let wait = async {
                tokio::select! {
                    // Cancellation and timers are cancel-safe.
                    () = self.token.cancelled() => Wake::Cancelled,
                    // zmq.rs recv() is cancel-safe: a message is either returned or stays queued,
                    // so this select may be polled, and dropped, any number of times.
                    msg = socket.recv() => Wake::Message(msg),
                    // The job is polled by reference, so an unfinished handler survives the
                    // other branches winning.
                    result = async { job.as_mut().expect("guarded").as_mut().await }, if job.is_some() => Wake::Job(result),
                    () = &mut timer => Wake::Timer,
                }
            };
            let event = match busy_wait(wait, self.config.busy_poll, tokio::task::yield_now).await {
                Wake::Cancelled => session.shutdown(),
                Wake::Message(Ok(msg)) => {
                    backoff.reset();
                    session.handle_message(Instant::now(), &msg.into_vec())
                }
                Wake::Message(Err(error)) => {
                    warn!(%error, "connection to broker lost");
                    break SessionEnd::BrokerSilent;
                }
                Wake::Job(result) => {
                    job = None;
                    match result {
                        Ok(Ok(body)) => {
                            session.handle_reply(Instant::now(), body);
                            None
                        }
                        Ok(Err(error)) => {
                            warn!(%error, "handler failed; request dropped, re-registering");
                            session.handle_failure()
                        }
                        Err(_) => {
                            warn!("handler panicked; request dropped, re-registering");
                            session.handle_failure()
                        }
                    }
                }
                Wake::Timer => session.handle_timeout(Instant::now()),
            };
            if let Some(WorkerEvent::Request(body)) = event {
                let handler = self.handler.clone();
                let work = AssertUnwindSafe(async move { handler.handle(body).await });
                job = Some(Box::pin(work.catch_unwind()));
            }
        };
        // Dropping an unfinished job cancels the handler.
        drop(job);
        if matches!(end, SessionEnd::Shutdown | SessionEnd::HandlerFailed) {
            // zmq.rs has no linger: give the writer task a moment to flush the DISCONNECT.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        end
    }

    /// Sends what the session queued; false if the connection failed.
    async fn flush(&self, socket: &mut DealerSocket, session: &mut WorkerSession) -> bool {
        while let Some(frames) = session.poll_transmit() {
            if !send(socket, frames, self.config.heartbeat.interval).await {
                return false;
            }
        }
        true
    }
}
