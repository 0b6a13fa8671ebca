//! Majordomo workers for tokio applications, in 7/MDP (v0.1, the default) or 18/MDP (v0.2, in
//! RFC 18's or majortomo's dialect; [`WorkerConfig::version`]).
//!
//! A [`Worker`] connects to a broker, registers one service with READY, and hands each REQUEST to
//! a [`Handler`] (or a [`StreamHandler`]), one request at a time per logical worker. Heartbeats flow both ways while the
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
//! ```no_run
//! # async fn run() -> Result<(), majordomo_worker::WorkerError> {
//! use majordomo_worker::{handler_fn, Worker, WorkerConfig};
//!
//! // An echo service at the broker on port 5555, until Ctrl-C.
//! let worker = Worker::new("tcp://127.0.0.1:5555", "echo", WorkerConfig::default());
//! let echo = handler_fn(|request| async move { Ok(request) });
//! worker.run(echo, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Shutdown
//! [`Worker::run`] serves until its shutdown future completes; each logical worker then sends
//! DISCONNECT to its broker (after the reply of a handler that has finished; one still running
//! is dropped) and `run` returns. Dropping the `run` future stops them the same way, in the
//! background.
//!
//! # When a handler fails
//! A handler that returns `Err` or panics does not stop the worker. 7/MDP has no error reply, so
//! the worker does not invent one: it sends DISCONNECT, drops the request and registers again on a
//! new socket at once. A broker that re-queues the requests of departed workers (ours does, up to
//! its delivery limit) gives the request to another worker; other brokers drop it. Either way the
//! client sees no reply for that attempt and retries after its timeout. A handler that wants the
//! client to see an error should return it in the reply body.
//!
//! # Answers in parts
//! A [`StreamHandler`] gets a [`Responder`] with each request and may send parts of its answer
//! before returning the last one. In 18/MDP each part goes to the broker at once as a PARTIAL
//! and the returned answer as the FINAL; in 7/MDP, which has one REPLY per request, the parts'
//! frames are sent in front of the answer's in that REPLY. A handler that fails after sending
//! parts has still sent them: the client got a beginning and no end (see the broker's rule for
//! a request that already streamed).
//!
//! # Layout
//! - [`Worker`], [`WorkerConfig`]: run `concurrency` logical workers until shutdown.
//! - [`Handler`] and [`handler_fn`]: what serves a request.
//! - [`StreamHandler`], [`stream_handler_fn`] and [`Responder`]: what serves a request in parts.
//! - [`WorkerError`]: configuration errors.
#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The frames of requests and replies.
pub use bytes::Bytes;
/// The heartbeat interval and liveness ([`WorkerConfig::heartbeat`]).
pub use majordomo_proto::heartbeat::HeartbeatConfig;
pub use majordomo_proto::mdp2::{Dialect, Version};
use majordomo_proto::worker::WorkerSession;
/// Why a configuration cannot work.
pub use majordomo_proto::ConfigError;
/// Why frames did not decode, from [`Limits::check`].
pub use majordomo_proto::DecodeError;
use majordomo_proto::Hex;
/// Size limits applied to requests ([`WorkerConfig::limits`]).
pub use majordomo_proto::Limits;
use majordomo_rt::peer::{self, PeerOptions};
/// Size bounds on frames from a CURVE server ([`DealerConnector::curve_with_limits`]).
pub use majordomo_rt::transport::FrameLimits;
/// Why a connection failed.
pub use majordomo_rt::transport::TransportError;
/// How a worker opens its connections ([`Worker::with_connector`]), and what a connection is.
pub use majordomo_rt::transport::{Connector, Transport};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// What a [`Handler`] or [`StreamHandler`] fails with: any error, boxed.
pub use majordomo_rt::peer::BoxError;
/// What a [`StreamHandler`] sends parts with, and why a part could not be sent.
pub use majordomo_rt::peer::{RequestOver, Responder};
/// Where a worker connects: an endpoint, or a CURVE server ([`DealerConnector::curve`]).
pub use majordomo_rt::transport::DealerConnector;
/// CURVE keys, for [`DealerConnector::curve`].
pub use majordomo_rt::transport::{CurveKeyPair, CurvePublicKey, KeyError};

/// Serves requests: takes the request body frames, returns the reply body frames.
///
/// [`handler_fn`] makes one from an async closure. A type implements it with a plain `async fn`
/// (no macro needed); the future it returns must be `Send`, as the worker runs on tokio's
/// multi-threaded runtime:
///
/// ```
/// use majordomo_worker::{BoxError, Bytes, Handler};
///
/// /// Answers each request with its frames in reverse order.
/// struct Reverse;
///
/// impl Handler for Reverse {
///     async fn handle(&self, mut request: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError> {
///         request.reverse();
///         Ok(request)
///     }
/// }
/// # fn served(_: impl Handler) {}
/// # served(Reverse);
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one request. An `Err` (or a panic) sends no reply; see the crate docs.
    fn handle(
        &self,
        request: Vec<Bytes>,
    ) -> impl Future<Output = Result<Vec<Bytes>, BoxError>> + Send;
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

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Vec<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    fn handle(
        &self,
        request: Vec<Bytes>,
    ) -> impl Future<Output = Result<Vec<Bytes>, BoxError>> + Send {
        (self.0)(request)
    }
}

/// Serves requests in parts: sends parts of the answer through the [`Responder`], then returns
/// the last part. Implemented with a plain `async fn`, as [`Handler`] is.
pub trait StreamHandler: Send + Sync + 'static {
    /// Handles one request; see [`Handler::handle`] for what an `Err` does. Parts sent before
    /// an `Err` have gone out.
    fn handle(
        &self,
        request: Vec<Bytes>,
        responder: Responder,
    ) -> impl Future<Output = Result<Vec<Bytes>, BoxError>> + Send;
}

/// A [`StreamHandler`] made from an async closure; see [`stream_handler_fn`].
#[derive(Clone)]
pub struct StreamHandlerFn<F>(F);

impl<F> std::fmt::Debug for StreamHandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamHandlerFn")
    }
}

/// Wraps `f(request, responder) -> impl Future<Output = Result<last part, BoxError>>` as a
/// [`StreamHandler`].
pub fn stream_handler_fn<F, Fut>(f: F) -> StreamHandlerFn<F>
where
    F: Fn(Vec<Bytes>, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    StreamHandlerFn(f)
}

impl<F, Fut> StreamHandler for StreamHandlerFn<F>
where
    F: Fn(Vec<Bytes>, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    fn handle(
        &self,
        request: Vec<Bytes>,
        responder: Responder,
    ) -> impl Future<Output = Result<Vec<Bytes>, BoxError>> + Send {
        (self.0)(request, responder)
    }
}

/// A [`Handler`] served as a [`StreamHandler`] that sends no parts.
struct Whole<H>(H);

impl<H: Handler> StreamHandler for Whole<H> {
    fn handle(
        &self,
        request: Vec<Bytes>,
        _responder: Responder,
    ) -> impl Future<Output = Result<Vec<Bytes>, BoxError>> + Send {
        self.0.handle(request)
    }
}

/// Heartbeats, reconnect backoff and concurrency of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// [`majordomo_rt::idle`].
    pub busy_poll: Duration,
    /// The MDP spoken (default [`Version::V01`], 7/MDP); `Version::V02(dialect)` for 18/MDP in
    /// RFC 18's dialect or majortomo's (which majortomo's broker needs).
    pub version: Version,
    /// Past this many bytes of request and answer (payload, parts included), the logical
    /// worker says DISCONNECT once it has answered and registers again at once on a new
    /// connection (default `None`: it keeps its connection). zmq.rs keeps buffers as large as
    /// the largest message a connection carried for as long as it lives, so a worker that
    /// sometimes carries large messages holds one such buffer per connection; see
    /// [`PeerOptions::fresh_connection_above`].
    pub fresh_connection_above: Option<usize>,
}

impl WorkerConfig {
    /// Sets `version`; the field says what it means and its default.
    pub fn version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Sets `heartbeat`; the field says what it means and its default.
    pub fn heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets `reconnect_initial`; the field says what it means and its default.
    pub fn reconnect_initial(mut self, reconnect_initial: Duration) -> Self {
        self.reconnect_initial = reconnect_initial;
        self
    }

    /// Sets `reconnect_max`; the field says what it means and its default.
    pub fn reconnect_max(mut self, reconnect_max: Duration) -> Self {
        self.reconnect_max = reconnect_max;
        self
    }

    /// Sets `concurrency`; the field says what it means and its default.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets `limits`; the field says what it means and its default.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets `busy_poll`; the field says what it means and its default.
    pub fn busy_poll(mut self, busy_poll: Duration) -> Self {
        self.busy_poll = busy_poll;
        self
    }

    /// Sets `fresh_connection_above`; the field says what it means and its default.
    pub fn fresh_connection_above(mut self, bytes: Option<usize>) -> Self {
        self.fresh_connection_above = bytes;
        self
    }
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
            version: Version::V01,
            fresh_connection_above: None,
        }
    }
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is unusable (the message says which setting).
    #[error(transparent)]
    Config(#[from] majordomo_proto::ConfigError),
    /// The service name is empty or longer than [`Limits::max_service_name`].
    #[error("invalid service name {:?}: empty, or longer than the limits allow", String::from_utf8_lossy(.0))]
    InvalidService(Bytes),
    /// The service name is in the `mmi.` namespace, which 8/MMI reserves for the broker: "An
    /// MMI broker implementation MUST handle all services that start with "mmi." internally",
    /// so no worker can serve one.
    #[error("service name {:?} is in the mmi. namespace, which the broker answers itself (8/MMI): choose another", String::from_utf8_lossy(.0))]
    ReservedService(Bytes),
}

/// A Majordomo worker for one service, at one broker or at several.
///
/// With several brokers ([`Worker::with_endpoints`], [`Worker::with_connectors`]) the worker
/// holds [`WorkerConfig::concurrency`] connections to every broker, each with its own READY and
/// heartbeats, so that each broker can dispatch to it; at most `concurrency` handlers run at
/// once over all of them, and a request that arrives while they all run waits for one to finish
/// (its broker sees it in flight, and heartbeats go on).
#[derive(Debug, Clone)]
pub struct Worker<C = DealerConnector> {
    connectors: Arc<[C]>,
    service: Bytes,
    config: WorkerConfig,
}

impl Worker {
    /// A worker serving `service` at the broker `endpoint`.
    pub fn new(
        endpoint: impl Into<DealerConnector>,
        service: impl Into<Bytes>,
        config: WorkerConfig,
    ) -> Self {
        Self::with_connector(endpoint.into(), service, config)
    }

    /// A worker serving `service` at every broker of `endpoints` (see [`Worker`]). An empty
    /// list is a configuration error when the worker runs.
    pub fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        service: impl Into<Bytes>,
        config: WorkerConfig,
    ) -> Self {
        Self::with_connectors(endpoints.into_iter().map(Into::into), service, config)
    }
}

impl<C: Connector + 'static> Worker<C> {
    /// A worker that opens its connections through `connector` (for example the in-memory
    /// sockets of `majordomo_rt::memory`).
    pub fn with_connector(connector: C, service: impl Into<Bytes>, config: WorkerConfig) -> Self {
        Self::with_connectors([connector], service, config)
    }

    /// A worker of several brokers, each reached through its connector (see [`Worker`]). An
    /// empty list is a configuration error when the worker runs.
    pub fn with_connectors(
        connectors: impl IntoIterator<Item = C>,
        service: impl Into<Bytes>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            connectors: connectors.into_iter().collect(),
            service: service.into(),
            config,
        }
    }

    /// Runs [`WorkerConfig::concurrency`] logical workers until `shutdown` completes; each then
    /// sends DISCONNECT to the broker, after the reply of a handler that has finished (one still
    /// running is dropped). Connection failures are retried forever with backoff; only a bad
    /// configuration is an error.
    ///
    /// Cancel-safe: dropping the future stops the workers as `shutdown` does (each says
    /// DISCONNECT, in the background), rather than leaving them running.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        self.run_streaming(Whole(handler), shutdown).await
    }

    /// As [`Worker::run`], with a handler that may answer in parts; cancel-safe as that is.
    pub async fn run_streaming<H: StreamHandler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let config = self.config;
        config.heartbeat.validate()?;
        if config.concurrency == 0 {
            return Err(WorkerError::Config(majordomo_proto::ConfigError(
                "concurrency must be at least 1",
            )));
        }
        if self.connectors.is_empty() {
            return Err(WorkerError::Config(majordomo_proto::ConfigError(
                "a worker needs at least one broker",
            )));
        }
        if majordomo_proto::mmi::is_mmi(&self.service) {
            return Err(WorkerError::ReservedService(self.service));
        }
        if config.limits.check_service(&self.service).is_err() {
            return Err(WorkerError::InvalidService(self.service));
        }
        let options = PeerOptions {
            heartbeat: config.heartbeat,
            reconnect_initial: config.reconnect_initial,
            reconnect_max: config.reconnect_max,
            busy_poll: config.busy_poll,
            fresh_connection_above: config.fresh_connection_above,
            ..PeerOptions::default()
        };
        let handler = Arc::new(handler);
        let token = CancellationToken::new();
        // Dropping this future stops the workers as `shutdown` does: they say DISCONNECT.
        let _stop_when_dropped = token.clone().drop_guard();
        let tasks = TaskTracker::new();
        // With several brokers, `concurrency` handlers at once over all of them.
        let permits = (self.connectors.len() > 1)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.concurrency)));
        for broker in 0..self.connectors.len() {
            for index in 0..config.concurrency {
                let (connectors, service) = (self.connectors.clone(), self.service.clone());
                let (handler, token) = (handler.clone(), token.clone());
                let permits = permits.clone();
                let span =
                    tracing::info_span!("worker", service = %Hex(&self.service), broker, index);
                tasks.spawn(
                    async move {
                        peer::run(
                            &connectors[broker],
                            |now| {
                                WorkerSession::with_version(
                                    now,
                                    service.clone(),
                                    config.heartbeat,
                                    config.limits,
                                    config.version,
                                )
                            },
                            |body, responder| {
                                // The handler's future, held here without a box.
                                let handled = handler.handle(body, responder);
                                let permits = permits.clone();
                                async move {
                                    let _permit = match permits {
                                        // Never closed.
                                        Some(permits) => permits.acquire_owned().await.ok(),
                                        None => None,
                                    };
                                    handled.await
                                }
                            },
                            options,
                            &token,
                        )
                        .await;
                    }
                    .instrument(span),
                );
            }
        }
        tasks.close();
        shutdown.await;
        token.cancel();
        tasks.wait().await;
        Ok(())
    }
}
