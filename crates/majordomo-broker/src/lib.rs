//! An asynchronous 7/MDP + 8/MMI Majordomo broker on tokio and zmq.rs.
//!
//! One task owns the broker state ([`majordomo_proto::broker::BrokerCore`]) and its ROUTER
//! sockets; nothing is shared behind a lock. The task waits on three things at once: a message on
//! any socket, the core's next deadline, and the shutdown future.
//!
//! ```no_run
//! # async fn run() -> Result<(), majordomo_broker::BrokerError> {
//! let broker = majordomo_broker::Broker::builder()
//!     .bind("tcp://127.0.0.1:5555")
//!     .build()
//!     .await?;
//! broker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Broker`] and [`BrokerBuilder`]: bind endpoints, then run until shutdown.
//! - [`BrokerError`]: what can stop a broker from starting.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use majordomo_proto::broker::{BrokerCore, Role, Transmit};
use majordomo_proto::idle::busy_wait;
use majordomo_proto::mdp::{ClientRequest, WorkerMessage};
use majordomo_proto::{mdp, Hex};
use tracing::{debug, info, warn, Instrument};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

pub use majordomo_proto::broker::{BrokerConfig, BrokerStats};
pub use majordomo_proto::heartbeat::HeartbeatConfig;
pub use majordomo_proto::Limits;

/// Why a broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Binding an endpoint failed: the address is in use, malformed, or of an unsupported
    /// transport.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// What zmq.rs reported.
        #[source]
        source: zeromq::ZmqError,
    },
    /// No endpoint was configured; call [`BrokerBuilder::bind`] at least once.
    #[error("no endpoint to bind")]
    NoEndpoint,
    /// The configuration is unusable (the message says which setting).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// Which peers an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointRole {
    /// Clients and workers on one ROUTER socket (7/MDP: "MDP is also designed to work over a
    /// single broker socket").
    Shared,
    /// Clients only (MDPC01).
    Clients,
    /// Workers only (MDPW01).
    Workers,
}

/// An endpoint the broker bound, with the port resolved if `:0` or `*` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundEndpoint {
    /// Which peers it serves.
    pub role: EndpointRole,
    /// The resolved endpoint, e.g. `tcp://127.0.0.1:40123`.
    pub endpoint: String,
}

/// Builds a [`Broker`]: endpoints, protocol configuration and driver settings.
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    config: BrokerConfig,
    endpoints: Vec<(EndpointRole, String)>,
    send_timeout: Duration,
    linger: Duration,
    busy_poll: Duration,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self {
            config: BrokerConfig::default(),
            endpoints: Vec::new(),
            send_timeout: Duration::from_millis(100),
            linger: Duration::from_millis(200),
            busy_poll: Duration::ZERO,
        }
    }
}

impl BrokerBuilder {
    /// Adds an endpoint serving clients and workers (`tcp://host:port` or `ipc:///path`). May be
    /// called several times; all shared endpoints are one ROUTER socket.
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push((EndpointRole::Shared, endpoint.into()));
        self
    }

    /// Adds an endpoint for clients only; worker commands arriving there are dropped.
    pub fn bind_clients(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints
            .push((EndpointRole::Clients, endpoint.into()));
        self
    }

    /// Adds an endpoint for workers only; client requests arriving there are dropped.
    pub fn bind_workers(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints
            .push((EndpointRole::Workers, endpoint.into()));
        self
    }

    /// Sets the protocol configuration (heartbeats, expiry, bounds, limits).
    pub fn config(mut self, config: BrokerConfig) -> Self {
        self.config = config;
        self
    }

    /// How long one send may wait for room in a peer's queue (default 100 ms). zmq.rs queues up to
    /// 100,000 messages per peer and then blocks the sender; a peer that far behind is treated as
    /// gone rather than stalling every other peer, and messages to it are dropped without waiting
    /// for the next 5 s.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How long the broker keeps running after sending DISCONNECT at shutdown, so the transport
    /// can flush it (default 200 ms; zmq.rs has no linger option).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How long the broker keeps polling its sockets without sleeping after it last had work
    /// (default zero: it sleeps as soon as nothing is ready).
    ///
    /// Waking a sleeping thread when a message arrives costs tens of microseconds on a virtual
    /// machine, and with 7/MDP's one request per worker at a time that wake-up is paid on every
    /// request. Polling for a short window (100-500 us) removes it while traffic flows, at the
    /// price of CPU: a broker whose messages arrive less than a window apart keeps one core busy.
    /// It stops polling, and sleeps, once a window passes with nothing to do.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Binds every endpoint and returns the broker, ready to [`Broker::run`].
    pub async fn build(self) -> Result<Broker, BrokerError> {
        if self.endpoints.is_empty() {
            return Err(BrokerError::NoEndpoint);
        }
        if self.config.heartbeat.interval.is_zero() || self.config.heartbeat.liveness == 0 {
            return Err(BrokerError::Config(
                "heartbeat interval and liveness must be positive",
            ));
        }
        let mut sockets: [Option<RouterSocket>; 3] = [None, None, None];
        let mut bound = Vec::new();
        for (role, endpoint) in &self.endpoints {
            let socket = sockets[*role as usize].get_or_insert_with(RouterSocket::new);
            let resolved = socket
                .bind(endpoint)
                .await
                .map_err(|source| BrokerError::Bind {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            bound.push(BoundEndpoint {
                role: *role,
                endpoint: resolved.to_string(),
            });
        }
        let [shared, clients, workers] = sockets;
        Ok(Broker {
            core: BrokerCore::new(Instant::now(), self.config),
            shared,
            clients,
            workers,
            bound,
            send_timeout: self.send_timeout,
            linger: self.linger,
            busy_poll: self.busy_poll,
            stuck: HashMap::new(),
        })
    }
}

/// A bound Majordomo broker. [`Broker::run`] serves until the shutdown future completes.
pub struct Broker {
    core: BrokerCore,
    shared: Option<RouterSocket>,
    clients: Option<RouterSocket>,
    workers: Option<RouterSocket>,
    bound: Vec<BoundEndpoint>,
    send_timeout: Duration,
    linger: Duration,
    busy_poll: Duration,
    /// Peers whose last send waited out the send timeout, and until when further sends to them
    /// are dropped without waiting: a peer that stopped reading must cost one timeout, not one
    /// per message.
    stuck: HashMap<Bytes, Instant>,
}

/// Most messages handled from one socket before the broker sends what they caused.
const RECV_BATCH: usize = 64;

/// How long a peer whose send timed out is skipped.
const STUCK_HOLD: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// What woke the broker loop.
enum Wake {
    Shutdown,
    Message(EndpointRole, zeromq::ZmqResult<ZmqMessage>),
    Timer,
}

/// Receives from an optional socket; a missing socket never yields.
async fn recv_from(socket: &mut Option<RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match socket {
        Some(socket) => socket.recv().await,
        None => std::future::pending().await,
    }
}

impl Broker {
    /// A builder with the default configuration and no endpoint.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The endpoints bound, with ephemeral ports resolved.
    pub fn endpoints(&self) -> &[BoundEndpoint] {
        &self.bound
    }

    /// Current counters and gauges of the broker core.
    pub fn stats(&self) -> BrokerStats {
        self.core.stats()
    }

    /// Serves until `shutdown` completes, then sends DISCONNECT to every worker and returns the
    /// final counters.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<BrokerStats, BrokerError> {
        for b in &self.bound {
            info!(endpoint = %b.endpoint, role = ?b.role, "broker bound");
        }
        let span = tracing::info_span!("broker");
        async move {
            tokio::pin!(shutdown);
            // One timer, moved only when the core's deadline moves: registering a fresh timer on
            // every message would cost more than routing the message.
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
                        // Cancel-safe: a future that has not completed has no effect.
                        () = &mut shutdown => Wake::Shutdown,
                        // zmq.rs recv() is cancel-safe: a message is either returned or stays
                        // queued, so the select may be polled, and dropped, any number of times.
                        msg = recv_from(&mut self.shared) => Wake::Message(EndpointRole::Shared, msg),
                        msg = recv_from(&mut self.clients) => Wake::Message(EndpointRole::Clients, msg),
                        msg = recv_from(&mut self.workers) => Wake::Message(EndpointRole::Workers, msg),
                        // A timer: dropping it unfired loses nothing.
                        () = &mut timer => Wake::Timer,
                    }
                };
                let full_batch = match busy_wait(wait, self.busy_poll, tokio::task::yield_now).await {
                    Wake::Shutdown => break,
                    Wake::Message(role, msg) => self.on_recv_batch(role, msg),
                    Wake::Timer => {
                        self.core.handle_timeout(Instant::now());
                        false
                    }
                };
                // The select is biased towards the sockets: under steady traffic the timer branch
                // may never be chosen, so deadlines are also checked here.
                let now = Instant::now();
                if now >= self.core.poll_timeout() {
                    self.core.handle_timeout(now);
                }
                self.flush().await;
                // zmq.rs's receive never returns Pending while a peer keeps sending, so a full
                // batch means more is waiting: yield, or on a single-threaded runtime the accept
                // loop and the per-peer writer tasks would starve under a flood.
                if full_batch {
                    tokio::task::yield_now().await;
                }
            }
            info!("shutting down: DISCONNECT to every worker");
            self.core.shutdown();
            self.flush().await;
            tokio::time::sleep(self.linger).await;
            Ok(self.core.stats())
        }
        .instrument(span)
        .await
    }

    /// Handles `msg`, then whatever else that socket already has ready (up to a batch), so that
    /// the replies and requests they cause leave in batches: zmq.rs writes a peer's queued
    /// messages with one flush.
    /// Returns whether the batch was full (more is probably waiting).
    fn on_recv_batch(&mut self, role: EndpointRole, msg: zeromq::ZmqResult<ZmqMessage>) -> bool {
        self.on_recv(role, msg);
        for _ in 1..RECV_BATCH {
            let socket = match role {
                EndpointRole::Shared => &mut self.shared,
                EndpointRole::Clients => &mut self.clients,
                EndpointRole::Workers => &mut self.workers,
            };
            // Polled once: a pending receive is dropped, which zmq.rs's recv() allows without
            // losing a message.
            match recv_from(socket).now_or_never() {
                Some(msg) => self.on_recv(role, msg),
                None => return false,
            }
        }
        true
    }

    fn on_recv(&mut self, role: EndpointRole, msg: zeromq::ZmqResult<ZmqMessage>) {
        let now = Instant::now();
        let msg = match msg {
            Ok(msg) => msg,
            Err(error) => {
                debug!(%error, "receive failed");
                return;
            }
        };
        let frames = msg.into_vec();
        let (identity, rest) = match mdp::split_identity(&frames) {
            Ok(split) => split,
            Err(error) => {
                warn!(%error, "message without identity");
                return;
            }
        };
        let limits = self.core.config().limits;
        match role {
            EndpointRole::Shared => {
                let _ = self.core.handle_message(now, identity, rest);
            }
            EndpointRole::Clients => match ClientRequest::decode(rest, &limits) {
                Ok(request) => self.core.handle_client(now, identity, request),
                Err(error) => self.core.handle_invalid(now, identity, &error),
            },
            EndpointRole::Workers => match WorkerMessage::decode(rest, &limits) {
                Ok(message) => self.core.handle_worker(now, identity, message),
                Err(error) => self.core.handle_invalid(now, identity, &error),
            },
        }
    }

    /// Sends everything the core has queued, never waiting longer than the send timeout on one
    /// peer: a full or dead peer is reported back to the core instead of stalling the loop.
    async fn flush(&mut self) {
        while let Some(transmit) = self.core.poll_transmit() {
            let Transmit { role, frames } = transmit;
            let identity: Bytes = frames[0].clone();
            let socket = match role {
                Role::Client => self.clients.as_mut().or(self.shared.as_mut()),
                Role::Worker => self.workers.as_mut().or(self.shared.as_mut()),
            };
            let Some(socket) = socket else { continue };
            if let Some(until) = self.stuck.get(&identity) {
                if *until > Instant::now() {
                    debug!(peer = %Hex(&identity), "peer not reading, message dropped");
                    self.core
                        .handle_undeliverable(Instant::now(), role, &identity);
                    continue;
                }
                self.stuck.remove(&identity);
            }
            let msg = ZmqMessage::try_from(frames).expect("transmits have frames");
            let send = socket.send(msg);
            tokio::pin!(send);
            // Almost every send completes at once (the peer's queue has room); only a send that
            // has to wait gets a timer.
            let outcome = match futures::poll!(&mut send) {
                std::task::Poll::Ready(result) => Ok(result),
                std::task::Poll::Pending => tokio::time::timeout(self.send_timeout, send).await,
            };
            let failed = match outcome {
                Ok(Ok(())) => false,
                Ok(Err(error)) => {
                    debug!(peer = %Hex(&identity), %error, "send failed");
                    true
                }
                Err(_) => {
                    warn!(
                        peer = %Hex(&identity),
                        hold_s = STUCK_HOLD.as_secs(),
                        "peer queue full past the send timeout: dropping this and further messages to it"
                    );
                    let now = Instant::now();
                    if self.stuck.len() >= 1024 {
                        self.stuck.retain(|_, until| *until > now);
                    }
                    self.stuck.insert(identity.clone(), now + STUCK_HOLD);
                    true
                }
            };
            if failed {
                self.core
                    .handle_undeliverable(Instant::now(), role, &identity);
            }
        }
    }
}
