//! An asynchronous 7/MDP + 8/MMI Majordomo broker on tokio and zmq.rs.
//!
//! One task owns the broker state ([`majordomo_proto::broker::BrokerCore`]) and its ROUTER
//! sockets; nothing is shared behind a lock. It runs on the server loop of `majordomo-rt`, which
//! waits on a message on any socket (polled in turn, so a flood of clients on one endpoint cannot
//! starve the workers on another), the core's next deadline, a [`BrokerHandle`]'s request, and
//! the shutdown future.
//!
//! ```no_run
//! # async fn run() -> Result<(), majordomo_broker::BrokerError> {
//! let broker = majordomo_broker::Broker::builder()
//!     .bind("tcp://127.0.0.1:5555")
//!     .build()
//!     .await?;
//! let handle = broker.handle();
//! tokio::spawn(async move {
//!     if let Some(stats) = handle.stats().await {
//!         println!("{} requests so far", stats.requests);
//!     }
//! });
//! broker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Shutdown
//! [`Broker::run`] returns when its shutdown future completes or a handle calls
//! [`ServerHandle::shutdown`]; either way the broker first sends DISCONNECT to every worker.
//! To finish the work in hand first, call [`ServerHandle::drain`], await
//! [`ServerHandle::drained`], then shut down.
//!
//! # Layout
//! - [`Broker`] and [`BrokerBuilder`]: bind endpoints, then run until shutdown.
//! - [`BrokerHandle`]: stats, drain (and the wait until drained) and shutdown of a running
//!   broker, from any task.
//! - [`BrokerError`]: what can stop a broker from starting.
//! - [`pair`]: the broker as one server of a Binary Star pair ([`BrokerBuilder::binary_star`]).
#![warn(missing_docs)]

pub mod pair;

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::collections::HashMap;

use majordomo_proto::broker::{BrokerCore, Role, Transmit};
use majordomo_proto::event::Event;
use majordomo_proto::mdp;
use majordomo_proto::mdp2::Sender;
/// A protocol version (7/MDP or 18/MDP, in a dialect), as a [`DecodeError`] names it.
pub use majordomo_proto::mdp2::{Dialect, Version};
/// Why a configuration cannot work.
pub use majordomo_proto::ConfigError;
/// Why frames did not decode, from [`Limits::check`].
pub use majordomo_proto::DecodeError;
/// The Binary Star state link of a [`BrokerSocket`], for [`BrokerBuilder::build_pair_on`].
pub use majordomo_rt::pair::StateLink;
/// What [`BrokerHandle`] is: its methods (`stats`, `drain`, `drained`, `shutdown`,
/// `is_stopped`) are there.
pub use majordomo_rt::server::ServerHandle;
use majordomo_rt::server::{Machine, Server, ServerOptions};
/// Why binding an endpoint failed, inside [`BrokerError::Bind`].
pub use majordomo_rt::transport::BindError;
/// Size bounds on frames, from [`GuardConfig::frame_limits`].
pub use majordomo_rt::transport::FrameLimits;
/// Why a socket operation failed ([`Transport`]).
pub use majordomo_rt::transport::TransportError;
/// The sockets a broker runs on: [`BrokerBuilder::build_on`] takes any [`Transport`];
/// [`BrokerSocket`] is a [`ZmqRouter`] or a [`StateLink`], one [`Either`] of the two.
pub use majordomo_rt::transport::{Either, Transport, ZmqRouter};
/// CURVE keys, for [`CurveSecurity`].
pub use majordomo_zmtp::curve::{CurveKeyPair, CurvePublicKey, KeyError};
/// Why a guard could not start, inside [`BindError`].
pub use majordomo_zmtp::guard::GuardError;
/// What the ZMTP guards have counted ([`Broker::guards`]).
pub use majordomo_zmtp::guard::{GuardStats, GuardStatsHandle};
/// Size bounds on a guard's link, from [`GuardConfig::link_limits`].
pub use majordomo_zmtp::mux::link::LinkLimits;
/// CURVE on the guarded endpoints ([`GuardConfig::curve`]).
pub use majordomo_zmtp::mux::secure::{ClientFilter, CurveSecurity};
/// The limits of the ZMTP guard ([`BrokerBuilder::guard`]).
pub use majordomo_zmtp::GuardConfig;
/// Why a guard's limits cannot work, from [`GuardConfig::validate`].
pub use majordomo_zmtp::GuardConfigError;
/// The rules a guard enforces, as [`GuardStats::count`] counts them.
pub use majordomo_zmtp::Rule;
use pair::{Admit, PairDriver, PairOptions, PairStatus};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

pub use majordomo_proto::access::{Access, AccessRule, AccessRules, Pattern, SharedAccess};
/// The kinds of protocol error the broker counts besides [`DecodeError::kind`]'s.
pub use majordomo_proto::broker::error_kinds;
pub use majordomo_proto::broker::{
    Activity, BrokerConfig, BrokerStats, ServiceStats, WorkerStats, WorkersPage, MAX_STATS_PAGE,
    MAX_WORKERS_PAGE,
};
/// Why a Binary Star state message did not decode.
pub use majordomo_proto::bstar::StateDecodeError;
pub use majordomo_proto::bstar::{
    BinaryStarConfig, Fatal as PairFatal, Role as PairRole, State as PairState,
};
/// Why a request was dropped: the `reason` of `majordomo_dropped_requests_total`.
pub use majordomo_proto::drops::DropReason;
pub use majordomo_proto::heartbeat::HeartbeatConfig;
pub use majordomo_proto::mmi::{StatsQuery, DEFAULT_PAGE};
pub use majordomo_proto::Limits;

/// Why a broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Binding an endpoint failed: the address is in use, malformed, or of an unsupported
    /// transport.
    #[error("cannot bind {endpoint}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// What zmq.rs or the guard reported.
        #[source]
        source: BindError,
    },
    /// No endpoint was configured; call [`BrokerBuilder::bind`] at least once.
    #[error("no endpoint to bind")]
    NoEndpoint,
    /// The configuration is unusable (the message says which setting).
    #[error(transparent)]
    Config(#[from] majordomo_proto::ConfigError),
    /// The Binary Star pair reached a state it must never be in (both active, both passive,
    /// or both configured in one role); the broker stopped, as the Guide's server aborts.
    /// Check which server is active and that each names the other's state endpoint, then
    /// restart them (see the operations guide).
    #[error(transparent)]
    Pair(#[from] PairFatal),
    /// A Binary Star pair needs its state link: build it with [`BrokerBuilder::build`] or
    /// [`BrokerBuilder::build_pair_on`], not [`BrokerBuilder::build_on`].
    #[error("a Binary Star pair needs a state link (build or build_pair_on, not build_on)")]
    PairNeedsSockets,
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

/// A handle on a running broker: read its stats ([`ServerHandle::stats`]), drain it
/// ([`ServerHandle::drain`]) and wait until it has drained ([`ServerHandle::drained`]), stop it
/// ([`ServerHandle::shutdown`]), ask whether it has stopped ([`ServerHandle::is_stopped`]).
/// Cheap to clone. The methods are documented on [`ServerHandle`], which this names with the
/// broker's [`BrokerStats`].
pub type BrokerHandle = ServerHandle<BrokerStats>;

/// The sockets of a broker built with [`BrokerBuilder::build`]: its ROUTER sockets and, in a
/// Binary Star pair, its state link.
pub type BrokerSocket = Either<ZmqRouter, StateLink>;

/// Builds a [`Broker`]: endpoints, protocol configuration and driver settings.
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    config: BrokerConfig,
    endpoints: Vec<(EndpointRole, String)>,
    options: ServerOptions,
    guard: Option<GuardConfig>,
    pair: Option<PairOptions>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self {
            config: BrokerConfig::default(),
            endpoints: Vec::new(),
            options: ServerOptions::default(),
            guard: Some(GuardConfig::default()),
            pair: None,
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
        self.options.send_timeout = timeout;
        self
    }

    /// How long the broker keeps running after sending DISCONNECT at shutdown, so the transport
    /// can flush it (default 200 ms; zmq.rs has no linger option).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.options.linger = linger;
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
        self.options.busy_poll = window;
        self
    }

    /// The limits of the ZMTP guard in front of every `tcp://` endpoint (on by default, with
    /// [`GuardConfig::default`]). The guard keeps any peer from crashing or exhausting the
    /// broker through zmq.rs: see `majordomo_zmtp`.
    pub fn guard(mut self, config: GuardConfig) -> Self {
        self.guard = Some(config);
        self
    }

    /// Binds `tcp://` endpoints without the guard, for trusted networks: zmq.rs then faces peers
    /// directly (a peer announcing a huge frame aborts the process, see the README).
    pub fn no_guard(mut self) -> Self {
        self.guard = None;
        self
    }

    /// Makes the broker one server of a Binary Star pair (the Guide's chapter 4): it publishes
    /// its state on `bind` (PUB), subscribes to the peer's on `peer` (SUB), and serves clients
    /// only while it is active; see [`pair`]. The heartbeat is 1 s unless
    /// [`BrokerBuilder::binary_star_config`] says otherwise; the peer expires after two.
    pub fn binary_star(
        mut self,
        role: PairRole,
        bind: impl Into<String>,
        peer: impl Into<String>,
    ) -> Self {
        let config = self.pair.take().map(|p| p.config).unwrap_or_default();
        self.pair = Some(PairOptions {
            role,
            bind: bind.into(),
            peer: peer.into(),
            config,
        });
        self
    }

    /// The Binary Star timing (default [`BinaryStarConfig::default`]: 1 s heartbeat), which
    /// both servers must share. Without [`BrokerBuilder::binary_star`] it has no effect.
    pub fn binary_star_config(mut self, config: BinaryStarConfig) -> Self {
        if let Some(pair) = &mut self.pair {
            pair.config = config;
        }
        self
    }

    /// Binds every endpoint (and the Binary Star state link) and returns the broker, ready to
    /// [`Broker::run`].
    ///
    /// Dropping the future before it completes drops the sockets bound so far; nothing has
    /// been served.
    pub async fn build(self) -> Result<Broker, BrokerError> {
        if self.endpoints.is_empty() {
            return Err(BrokerError::NoEndpoint);
        }
        self.config.validate()?;
        if let Some(pair) = &self.pair {
            pair.config.validate()?;
        }
        // One ROUTER socket per role, in the order the roles are first named.
        let mut sockets: Vec<(EndpointRole, ZmqRouter)> = Vec::new();
        let mut bound = Vec::new();
        for (role, endpoint) in &self.endpoints {
            let index = match sockets.iter().position(|(r, _)| r == role) {
                Some(index) => index,
                None => {
                    sockets.push((*role, ZmqRouter::new()));
                    sockets.len() - 1
                }
            };
            let resolved = sockets[index]
                .1
                .bind_guarded(endpoint, self.guard.as_ref())
                .await
                .map_err(|source| BrokerError::Bind {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            bound.push(BoundEndpoint {
                role: *role,
                endpoint: resolved,
            });
        }
        let guards = sockets.iter().flat_map(|(_, s)| s.guards()).collect();
        let mut sockets: Vec<(EndpointRole, BrokerSocket)> = sockets
            .into_iter()
            .map(|(role, socket)| (role, Either::Left(socket)))
            .collect();
        let mut link = None;
        if let Some(pair) = &self.pair {
            let state_link = StateLink::bind(&pair.bind, &pair.peer, pair.config.peer_expiry())
                .await
                .map_err(|source| BrokerError::Bind {
                    endpoint: pair.bind.clone(),
                    source,
                })?;
            link = Some((pair.clone(), state_link.endpoint().to_owned()));
            // Its role is never read: the machine knows the link by its index.
            sockets.push((EndpointRole::Shared, Either::Right(state_link)));
        }
        let mut broker = self.build_machine(sockets, link.as_ref().map(|(p, _)| p))?;
        broker.bound = bound;
        broker.guards = guards;
        broker.pair_endpoint = link.map(|(_, endpoint)| endpoint);
        Ok(broker)
    }

    /// Builds a broker on sockets the caller provides, each serving one role: any
    /// [`Transport`], such as the in-memory sockets of `majordomo_rt::memory` for tests. The
    /// endpoints added with `bind*` are ignored.
    ///
    /// A Binary Star pair needs [`BrokerBuilder::build`] or [`BrokerBuilder::build_pair_on`]:
    /// with one configured, this fails with [`BrokerError::PairNeedsSockets`].
    pub fn build_on<T: Transport>(
        self,
        sockets: Vec<(EndpointRole, T)>,
    ) -> Result<Broker<T>, BrokerError> {
        if self.pair.is_some() {
            return Err(BrokerError::PairNeedsSockets);
        }
        self.build_machine(sockets, None)
    }

    /// Builds one server of a Binary Star pair on sockets the caller provides, as
    /// [`BrokerBuilder::build_on`] does, with `link` as its state link (e.g. one end of
    /// `majordomo_rt::memory::link`, for tests on paused time). Needs
    /// [`BrokerBuilder::binary_star`], whose endpoints are then ignored; without it this fails
    /// with [`BrokerError::Config`].
    pub fn build_pair_on<T: Transport>(
        self,
        mut sockets: Vec<(EndpointRole, T)>,
        link: T,
    ) -> Result<Broker<T>, BrokerError> {
        let Some(pair) = self.pair.clone() else {
            return Err(majordomo_proto::ConfigError(
                "build_pair_on needs binary_star to say the broker's role",
            )
            .into());
        };
        pair.config.validate()?;
        if sockets.is_empty() {
            return Err(BrokerError::NoEndpoint);
        }
        sockets.push((EndpointRole::Shared, link));
        self.build_machine(sockets, Some(&pair))
    }

    /// The broker on `sockets`; with `pair`, the last socket is its state link.
    fn build_machine<T: Transport>(
        self,
        mut sockets: Vec<(EndpointRole, T)>,
        pair: Option<&PairOptions>,
    ) -> Result<Broker<T>, BrokerError> {
        if sockets.len() <= usize::from(pair.is_some()) {
            return Err(BrokerError::NoEndpoint);
        }
        self.config.validate()?;
        let now = majordomo_rt::clock::now();
        let (pair, pair_status) = match pair {
            Some(options) => {
                let (driver, status) = PairDriver::new(now, options, sockets.len() - 1);
                (Some(driver), Some(status))
            }
            None => (None, None),
        };
        let link = pair.as_ref().map(|_| sockets.pop());
        let roles: Vec<EndpointRole> = sockets.iter().map(|(role, _)| *role).collect();
        sockets.extend(link.flatten());
        let find = |wanted: EndpointRole| roles.iter().position(|r| *r == wanted);
        let shared = find(EndpointRole::Shared);
        let machine = BrokerMachine {
            core: BrokerCore::new(now, self.config)
                .with_stats_encoder(encode_stats)
                .with_workers_encoder(encode_workers),
            pair,
            pending: VecDeque::new(),
            latency: HashMap::new(),
            other_latency: None,
            client_socket: find(EndpointRole::Clients).or(shared),
            worker_socket: find(EndpointRole::Workers).or(shared),
            roles,
        };
        let sockets = sockets.into_iter().map(|(_, socket)| socket).collect();
        let (server, handle) = Server::new(machine, sockets, self.options);
        Ok(Broker {
            server,
            handle,
            bound: Vec::new(),
            guards: Vec::new(),
            pair_status,
            pair_endpoint: None,
        })
    }
}

/// The `mmi.stats` reply body: the stats as JSON.
fn encode_stats(stats: &BrokerStats) -> Bytes {
    // Serializing plain counters, strings and vectors to memory cannot fail.
    Bytes::from(serde_json::to_vec(stats).unwrap_or_default())
}

/// The `mmi.workers` reply body: the page of workers as JSON.
fn encode_workers(page: &WorkersPage) -> Bytes {
    // As for the stats: plain numbers, strings and vectors to memory.
    Bytes::from(serde_json::to_vec(page).unwrap_or_default())
}

/// Most services with a latency series of their own
/// (`majordomo_request_duration_seconds{service}`): the first services to be answered take the
/// slots and keep them until the broker forgets them; replies of other services are recorded
/// under [`OTHER_SERVICES`]. Bounds the metric state and the `/metrics` page whatever the names.
pub const MAX_SERVICE_SERIES: usize = 100;

/// The `service` label of the latency of services past [`MAX_SERVICE_SERIES`].
pub const OTHER_SERVICES: &str = "(other)";

/// How long a histogram handle is used before it is looked up again: a recorder that forgets
/// idle series (the binary's forgets them after five minutes) then gets the series back at the
/// next reply instead of the handle recording into a series it forgot.
const HANDLE_REFRESH: Duration = Duration::from_secs(60);

/// The broker core as the server loop drives it: which socket serves which role.
struct BrokerMachine {
    core: BrokerCore,
    /// The Binary Star state machine, in a pair.
    pair: Option<PairDriver>,
    /// Messages taken from the core ahead of [`Machine::poll_transmit`] (a `mmi.stats` reply
    /// given the pair's status), sent before the core's next.
    pending: VecDeque<(usize, Vec<Bytes>)>,
    /// `majordomo_request_duration_seconds{service}` of up to [`MAX_SERVICE_SERIES`] services,
    /// with when each handle was looked up, recorded to without building its label again.
    latency: HashMap<Bytes, (metrics::Histogram, Instant)>,
    /// The series of the services past them.
    other_latency: Option<(metrics::Histogram, Instant)>,
    roles: Vec<EndpointRole>,
    client_socket: Option<usize>,
    worker_socket: Option<usize>,
}

/// `handle` if it was looked up less than [`HANDLE_REFRESH`] before `now`, otherwise a new one
/// from `register`.
fn fresh(
    handle: &mut Option<(metrics::Histogram, Instant)>,
    now: Instant,
    register: impl FnOnce() -> metrics::Histogram,
) -> &metrics::Histogram {
    if handle
        .as_ref()
        .is_none_or(|(_, at)| now.saturating_duration_since(*at) >= HANDLE_REFRESH)
    {
        *handle = Some((register(), now));
    }
    &handle.as_ref().expect("set above").0
}

impl BrokerMachine {
    /// Adds the pair's status to the `mmi.stats` reply the core has just queued: the messages
    /// the core had queued move to `pending`, the reply (the last of them, as the core answers
    /// MMI at once; requests for workers that answered meanwhile come after them) with its JSON
    /// body extended.
    fn add_pair_status(&mut self, now: Instant) {
        let Some(pair) = &self.pair else {
            return;
        };
        let status = pair.status(now);
        // Whether the last of them went to `pending` (not dropped for want of an endpoint).
        let mut last_kept = false;
        for _ in 0..self.core.queued_transmits() {
            let Some(transmit) = self.core.poll_transmit() else {
                break;
            };
            last_kept = match self.route(transmit) {
                Some(message) => {
                    self.pending.push_back(message);
                    true
                }
                None => false,
            };
        }
        if !last_kept {
            return;
        }
        let Some((socket, frames)) = self.pending.back_mut() else {
            return;
        };
        if Some(*socket) != self.client_socket {
            return;
        }
        if let Some(body) = frames.last_mut() {
            if let Some(patched) = pair::with_pair_status(body, &status) {
                *body = patched;
            }
        }
    }

    /// The core's next message and its socket.
    fn poll_core_transmit(&mut self) -> Option<(usize, Vec<Bytes>)> {
        loop {
            let transmit = self.core.poll_transmit()?;
            if let Some(message) = self.route(transmit) {
                return Some(message);
            }
        }
    }

    /// The socket a message of the core goes out on, with it; `None` (the message dropped)
    /// when no endpoint serves its role (only possible with a client-only or worker-only
    /// broker, whose other peers cannot reach it anyway).
    fn route(&self, Transmit { role, frames }: Transmit) -> Option<(usize, Vec<Bytes>)> {
        let socket = match role {
            Role::Client => self.client_socket,
            Role::Worker => self.worker_socket,
        };
        if socket.is_none() {
            debug!(?role, "no endpoint for this role, message dropped");
        }
        Some((socket?, frames))
    }

    /// Records what the core reports happened as metrics; called after every call into it.
    fn record_events(&mut self, now: Instant) {
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::Dropped { reason } => {
                    metrics::counter!("majordomo_dropped_requests_total", "reason" => reason.label())
                        .increment(1);
                }
                Event::DroppedMany { reason, count } => {
                    metrics::counter!("majordomo_dropped_requests_total", "reason" => reason.label())
                        .increment(count);
                }
                Event::ProtocolError { kind } => {
                    metrics::counter!("majordomo_protocol_errors_total", "kind" => kind)
                        .increment(1);
                }
                Event::ServiceForgotten { service } => {
                    // Its slot goes to the next service answered; the recorder forgets the
                    // series once it is idle.
                    self.latency.remove(&service);
                }
                Event::Replied { service, latency } => {
                    let seconds = latency.as_secs_f64();
                    let labelled = self.latency.len() < MAX_SERVICE_SERIES
                        || self.latency.contains_key(&service);
                    if !labelled {
                        fresh(&mut self.other_latency, now, || {
                            metrics::histogram!("majordomo_request_duration_seconds", "service" => OTHER_SERVICES)
                        })
                        .record(seconds);
                        continue;
                    }
                    let mut slot = self.latency.remove(&service);
                    fresh(&mut slot, now, || {
                        let name = String::from_utf8_lossy(&service).into_owned();
                        metrics::histogram!("majordomo_request_duration_seconds", "service" => name)
                    })
                    .record(seconds);
                    if let Some(slot) = slot {
                        self.latency.insert(service, slot);
                    }
                }
                // Events a later core may add are not counted here yet.
                _ => {}
            }
        }
    }
}

impl Machine for BrokerMachine {
    type Stats = BrokerStats;

    fn handle_peer_key(&mut self, _socket: usize, identity: &Bytes, key: [u8; 32]) {
        self.core.handle_peer_key(identity, key);
    }

    fn handle_message(&mut self, now: Instant, socket: usize, frames: Vec<Bytes>) {
        let mut stats_request = false;
        if let Some(pair) = &mut self.pair {
            if socket == pair.socket {
                pair.handle_peer_message(now, &frames);
                return;
            }
            if self.roles[socket] != EndpointRole::Workers {
                if let Some(service) = frames.get(1..).and_then(pair::client_service) {
                    if let Admit::Drop = pair.admit(now, service) {
                        return;
                    }
                    stats_request = service.as_ref() == majordomo_proto::mmi::STATS;
                }
            }
        }
        let (identity, rest) = match mdp::split_identity(&frames) {
            Ok(split) => split,
            Err(error) => {
                // Counted and logged at a bounded rate by the core, as any invalid message.
                self.core.handle_invalid(now, &Bytes::new(), &error);
                self.record_events(now);
                return;
            }
        };
        match self.roles[socket] {
            EndpointRole::Shared => {
                let _ = self.core.handle_message(now, identity, rest);
            }
            EndpointRole::Clients => {
                let _ = self
                    .core
                    .handle_message_from(now, identity, rest, Sender::Client);
            }
            EndpointRole::Workers => {
                let _ = self
                    .core
                    .handle_message_from(now, identity, rest, Sender::Worker);
            }
        }
        if stats_request {
            self.add_pair_status(now);
        }
        self.record_events(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        if let Some(pair) = &mut self.pair {
            pair.handle_timeout(now);
        }
        self.record_events(now);
    }

    fn poll_timeout(&self) -> Instant {
        let core = self.core.poll_timeout();
        match &self.pair {
            Some(pair) => core.min(pair.poll_timeout()),
            None => core,
        }
    }

    /// The state link: what the peer said is known before anything is served or published in
    /// the same turn (after a pause longer than the peer's expiry, the peer's "active" is read
    /// before this broker, active too, serves or says so).
    fn first_socket(&self) -> Option<usize> {
        self.pair.as_ref().map(|pair| pair.socket)
    }

    fn poll_transmit(&mut self) -> Option<(usize, Vec<Bytes>)> {
        if let Some(pair) = &mut self.pair {
            if let Some(message) = pair.poll_publish() {
                return Some((pair.socket, message));
            }
        }
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        self.poll_core_transmit()
    }

    fn handle_disconnected(&mut self, now: Instant, socket: usize, identity: &Bytes) {
        if self.pair.as_ref().is_some_and(|p| p.socket == socket) {
            return;
        }
        if self.roles[socket] != EndpointRole::Clients {
            self.core.handle_disconnected(now, identity);
            self.record_events(now);
        }
    }

    fn handle_undeliverable(&mut self, now: Instant, socket: usize, identity: &Bytes) {
        if self.pair.as_ref().is_some_and(|p| p.socket == socket) {
            // A state message that did not go out: the next heartbeat repeats it.
            return;
        }
        let role = match self.roles[socket] {
            EndpointRole::Workers => Role::Worker,
            EndpointRole::Clients => Role::Client,
            EndpointRole::Shared if self.core.is_worker(identity) => Role::Worker,
            EndpointRole::Shared => Role::Client,
        };
        self.core.handle_undeliverable(now, role, identity);
        self.record_events(now);
    }

    fn stats(&self) -> BrokerStats {
        self.core.stats()
    }

    fn shutdown(&mut self) {
        info!("shutting down: DISCONNECT to every worker");
        self.core.shutdown();
        self.record_events(majordomo_rt::clock::now());
    }

    fn drain(&mut self) {
        if let Some(pair) = &mut self.pair {
            pair.leave();
        }
        if !self.core.is_draining() {
            let stats = self.core.stats();
            info!(
                queued = stats.queued,
                in_flight = stats.in_flight,
                "draining: new requests dropped, queued and in-flight ones served"
            );
        }
        self.core.drain();
    }

    /// Drained, and on a pair settled: an active broker waits to hand over to its peer (see
    /// `PairDriver::leave`).
    fn is_drained(&self) -> bool {
        self.core.is_drained() && self.pair.as_ref().is_none_or(PairDriver::settled)
    }
}

/// A bound Majordomo broker. [`Broker::run`] serves until the shutdown future completes.
pub struct Broker<T = BrokerSocket> {
    server: Server<BrokerMachine, T>,
    handle: BrokerHandle,
    bound: Vec<BoundEndpoint>,
    guards: Vec<GuardStatsHandle>,
    pair_status: Option<watch::Receiver<PairStatus>>,
    pair_endpoint: Option<String>,
}

impl<T> std::fmt::Debug for Broker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A builder with the default configuration and no endpoint.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }
}

impl<T: Transport> Broker<T> {
    /// The endpoints bound, with ephemeral ports resolved (empty for [`BrokerBuilder::build_on`]).
    pub fn endpoints(&self) -> &[BoundEndpoint] {
        &self.bound
    }

    /// The stats of the ZMTP guards in front of the `tcp://` endpoints, one handle per guarded
    /// endpoint (none with [`BrokerBuilder::no_guard`] or [`BrokerBuilder::build_on`]); they
    /// stay readable while the broker runs.
    pub fn guards(&self) -> &[GuardStatsHandle] {
        &self.guards
    }

    /// In a Binary Star pair, the pair's status as the broker's loop last saw it: a watch that
    /// changes with the state, the peer's state and the requests dropped while not active.
    pub fn pair_status(&self) -> Option<watch::Receiver<PairStatus>> {
        self.pair_status.clone()
    }

    /// In a Binary Star pair, the endpoint the state link's publisher bound, with an ephemeral
    /// port resolved.
    pub fn pair_endpoint(&self) -> Option<&str> {
        self.pair_endpoint.as_deref()
    }

    /// Counters and gauges before the broker runs; once it runs, ask a [`Broker::handle`].
    pub fn stats(&self) -> BrokerStats {
        self.server.machine().core.stats()
    }

    /// A handle for reading the stats of the running broker and stopping it, from any task.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` completes or a handle calls [`BrokerHandle::shutdown`], then sends
    /// DISCONNECT to every worker and returns the final counters. In a Binary Star pair, it
    /// also stops when the pair reaches a fatal state, and returns [`BrokerError::Pair`].
    ///
    /// Not a way to stop it: dropping the future drops the broker at once, its sockets and
    /// what it holds, without the DISCONNECT to workers or the linger. Complete `shutdown` (or
    /// call [`ServerHandle::shutdown`]) and await the future instead.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<BrokerStats, BrokerError> {
        for b in &self.bound {
            let guarded = b.endpoint.starts_with("tcp://") && !self.guards.is_empty();
            info!(endpoint = %b.endpoint, role = ?b.role, guarded, "broker bound");
        }
        if let (Some(endpoint), Some(status)) = (&self.pair_endpoint, &self.pair_status) {
            let role = status.borrow().role.label();
            info!(%endpoint, role, "binary star: state published");
        }
        let mut pair_status = self.pair_status.clone();
        let stop = async move {
            let fatal = async {
                match &mut pair_status {
                    // An error means the loop has ended: nothing left to stop.
                    Some(status) => {
                        let _ = status.wait_for(|s| s.fatal.is_some()).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => {}
                () = fatal => {}
            }
        };
        let machine = self
            .server
            .run(stop)
            .instrument(tracing::info_span!("broker"))
            .await;
        if let Some(fatal) = machine
            .pair
            .as_ref()
            .and_then(|p| p.status(majordomo_rt::clock::now()).fatal)
        {
            return Err(BrokerError::Pair(fatal));
        }
        Ok(machine.core.stats())
    }
}

#[cfg(test)]
mod tests {
    use majordomo_proto::broker::ServiceStats;

    use super::*;

    #[test]
    fn mmi_stats_json_has_every_counter_and_service_names_as_text() {
        let stats = BrokerStats {
            workers: 1,
            requests: 2,
            queued: 1,
            per_service: vec![
                ServiceStats {
                    name: Bytes::from_static(b"echo"),
                    idle_workers: 1,
                    ..ServiceStats::default()
                },
                ServiceStats {
                    name: Bytes::from_static(b"n\xffobody"),
                    queued: 1,
                    ..ServiceStats::default()
                },
            ],
            ..BrokerStats::default()
        };
        let json = encode_stats(&stats);
        assert_eq!(
            std::str::from_utf8(&json).expect("UTF-8"),
            concat!(
                r#"{"workers":1,"idle_workers":0,"services":0,"service_bytes":0,"#,
                r#""services_omitted":0,"queued":1,"queued_bytes":0,"#,
                r#""in_flight":0,"draining":false,"requests":2,"replies":0,"expired":0,"#,
                r#""rejected":0,"requeued":0,"abandoned":0,"purged":0,"disconnected":0,"#,
                r#""protocol_errors":0,"undeliverable":0,"dropped_at_shutdown":0,"unauthorized":0,"#,
                r#""heartbeat_mismatch":0,"mmi_requests":0,"#,
                r#""per_service":["#,
                r#"{"name":"echo","queued":0,"queued_bytes":0,"idle_workers":1,"#,
                r#""busy_workers":0,"oldest_queued_ms":0,"busy_heartbeating":0,"#,
                r#""requests":0,"replies":0,"dropped":0,"rejected":0},"#,
                r#"{"name":"n�obody","queued":1,"queued_bytes":0,"idle_workers":0,"#,
                r#""busy_workers":0,"oldest_queued_ms":0,"busy_heartbeating":0,"#,
                r#""requests":0,"replies":0,"dropped":0,"rejected":0}]}"#
            )
        );
        // It reads back, the name as its lossy text.
        let back: BrokerStats = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(
            back.per_service[1].name.as_ref(),
            "n\u{fffd}obody".as_bytes()
        );
        assert_eq!((back.workers, back.requests, back.queued), (1, 2, 1));
        // Stats of a broker before the per-service counters and `mmi_requests` read as zero.
        let old: BrokerStats = serde_json::from_str(
            r#"{"requests":3,"per_service":[{"name":"echo","queued":1,"busy_heartbeating":0}]}"#,
        )
        .expect("old JSON");
        assert_eq!((old.requests, old.mmi_requests), (3, 0));
        assert_eq!(
            (old.per_service[0].queued, old.per_service[0].replies),
            (1, 0)
        );
    }

    #[test]
    fn mmi_workers_json_has_identities_as_hex_and_reads_back() {
        let page = WorkersPage {
            workers: 2,
            workers_omitted: 1,
            per_worker: vec![WorkerStats {
                service: Bytes::from_static(b"echo"),
                identity: Bytes::from_static(b"\x00\x80\xffw"),
                state: Activity::Busy,
                state_ms: 5,
                registered_ms: 40,
                address: None,
            }],
        };
        let json = encode_workers(&page);
        assert_eq!(
            std::str::from_utf8(&json).expect("UTF-8"),
            concat!(
                r#"{"workers":2,"workers_omitted":1,"per_worker":[{"service":"echo","#,
                r#""identity":"0080ff77","state":"busy","state_ms":5,"registered_ms":40}]}"#
            )
        );
        let back: WorkersPage = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(back, page);
        assert!(
            serde_json::from_str::<WorkersPage>(r#"{"per_worker":[{"identity":"0g"}]}"#).is_err()
        );
    }
}
