//! The tokio driver of the Pirate queue: one task owns the state and both ROUTER sockets, on the
//! server loop of `majordomo-rt` (fair polling of frontend and backend, bounded sends, stats
//! through a [`QueueHandle`]).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::event::Event;
use majordomo_proto::pirate::{PirateQueue, QueueConfig, QueueStats, QueueTransmit, Side};
use majordomo_rt::server::{Machine, Server, ServerHandle, ServerOptions};
use majordomo_rt::transport::{BindError, Transport, ZmqRouter};
use majordomo_zmtp::guard::GuardStatsHandle;
use majordomo_zmtp::GuardConfig;
use tracing::{info, Instrument};

/// Why a queue could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Binding an endpoint failed.
    #[error("cannot bind {endpoint}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// What zmq.rs or the guard reported.
        #[source]
        source: BindError,
    },
    /// The configuration is unusable (the message says which setting).
    #[error(transparent)]
    Config(#[from] majordomo_proto::ConfigError),
}

/// A handle on a running queue: read its stats ([`ServerHandle::stats`]), drain it
/// ([`ServerHandle::drain`], [`ServerHandle::drained`]), stop it ([`ServerHandle::shutdown`]),
/// ask whether it has stopped ([`ServerHandle::is_stopped`]). Cheap to clone. The methods are
/// documented on [`ServerHandle`], which this names with the queue's [`QueueStats`].
pub type QueueHandle = ServerHandle<QueueStats>;

/// Socket numbers in the server loop.
const FRONTEND: usize = 0;
const BACKEND: usize = 1;

/// Builds a [`Queue`]: endpoints, protocol configuration, driver settings.
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    frontend: String,
    backend: String,
    config: QueueConfig,
    options: ServerOptions,
    guard: Option<GuardConfig>,
}

impl Default for QueueBuilder {
    fn default() -> Self {
        Self {
            frontend: "tcp://127.0.0.1:5555".to_owned(),
            backend: "tcp://127.0.0.1:5556".to_owned(),
            config: QueueConfig::default(),
            options: ServerOptions {
                linger: Duration::ZERO,
                ..ServerOptions::default()
            },
            guard: Some(GuardConfig::default()),
        }
    }
}

impl QueueBuilder {
    /// The client-facing endpoint (default `tcp://127.0.0.1:5555`).
    pub fn frontend(mut self, endpoint: impl Into<String>) -> Self {
        self.frontend = endpoint.into();
        self
    }

    /// The worker-facing endpoint (default `tcp://127.0.0.1:5556`).
    pub fn backend(mut self, endpoint: impl Into<String>) -> Self {
        self.backend = endpoint.into();
        self
    }

    /// The protocol configuration (default [`QueueConfig::paranoid`]).
    pub fn config(mut self, config: QueueConfig) -> Self {
        self.config = config;
        self
    }

    /// How long one send may wait for room in a peer's queue (default 100 ms); a peer that far
    /// behind is skipped for 5 s, and a worker is treated as gone.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.options.send_timeout = timeout;
        self
    }

    /// How long the queue keeps polling its sockets without sleeping after it last had work
    /// (default zero). As for the Majordomo broker: a window of 100-500 us saves a wake-up per
    /// message while traffic flows and keeps one core busy meanwhile; see
    /// [`majordomo_rt::idle`].
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.options.busy_poll = window;
        self
    }

    /// The limits of the ZMTP guard in front of `tcp://` endpoints (on by default, with
    /// [`GuardConfig::default`]); see `majordomo_zmtp`.
    pub fn guard(mut self, config: GuardConfig) -> Self {
        self.guard = Some(config);
        self
    }

    /// Binds `tcp://` endpoints without the guard, for trusted networks.
    pub fn no_guard(mut self) -> Self {
        self.guard = None;
        self
    }

    /// Binds both endpoints. Dropping the future before it completes drops the sockets bound
    /// so far; nothing has been served.
    pub async fn build(self) -> Result<Queue, QueueError> {
        self.config.validate()?;
        let (frontend, front_ep) = bind(&self.frontend, self.guard.as_ref()).await?;
        let (backend, back_ep) = bind(&self.backend, self.guard.as_ref()).await?;
        let guards = [&frontend, &backend]
            .iter()
            .flat_map(|s| s.guards())
            .collect();
        let mut queue = self.build_on(frontend, backend)?;
        queue.endpoints = (front_ep, back_ep);
        queue.guards = guards;
        Ok(queue)
    }

    /// Builds a queue on sockets the caller provides (any [`Transport`], such as the in-memory
    /// sockets of `majordomo_rt::memory`); the endpoints set here are ignored.
    pub fn build_on<T: Transport>(self, frontend: T, backend: T) -> Result<Queue<T>, QueueError> {
        self.config.validate()?;
        let machine = QueueMachine(PirateQueue::new(majordomo_rt::clock::now(), self.config));
        let (server, handle) = Server::new(machine, vec![frontend, backend], self.options);
        Ok(Queue {
            server,
            handle,
            endpoints: (String::new(), String::new()),
            guards: Vec::new(),
        })
    }
}

/// The Pirate queue core as the server loop drives it.
struct QueueMachine(PirateQueue);

impl QueueMachine {
    /// Counts what the core reports happened; called after every call into it.
    fn record_events(&mut self) {
        while let Some(event) = self.0.poll_event() {
            let (reason, count) = match event {
                Event::Dropped { reason } => (reason, 1),
                Event::DroppedMany { reason, count } => (reason, count),
                Event::ProtocolError { kind } => {
                    metrics::counter!("majordomo_protocol_errors_total", "kind" => kind)
                        .increment(1);
                    continue;
                }
                // Events a later core may add are not counted here yet.
                _ => continue,
            };
            metrics::counter!("majordomo_dropped_requests_total", "reason" => reason.label())
                .increment(count);
        }
    }
}

impl Machine for QueueMachine {
    type Stats = QueueStats;

    fn handle_message(&mut self, now: Instant, socket: usize, frames: Vec<Bytes>) {
        // Errors are logged and counted by the core.
        let _ = if socket == FRONTEND {
            self.0.handle_frontend(now, &frames)
        } else {
            self.0.handle_backend(now, &frames)
        };
        self.record_events();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
        self.record_events();
    }

    fn poll_timeout(&self) -> Instant {
        self.0.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<(usize, Vec<Bytes>)> {
        let QueueTransmit { side, frames } = self.0.poll_transmit()?;
        let socket = match side {
            Side::Frontend => FRONTEND,
            Side::Backend => BACKEND,
        };
        Some((socket, frames))
    }

    fn handle_undeliverable(&mut self, now: Instant, socket: usize, identity: &Bytes) {
        let side = if socket == FRONTEND {
            Side::Frontend
        } else {
            Side::Backend
        };
        self.0.handle_undeliverable(now, side, identity);
        self.record_events();
    }

    fn stats(&self) -> QueueStats {
        self.0.stats()
    }

    fn shutdown(&mut self) {
        self.0.shutdown();
        self.record_events();
    }
}

/// A Simple or Paranoid Pirate queue with its frontend (clients) and backend (workers) bound.
pub struct Queue<T = ZmqRouter> {
    server: Server<QueueMachine, T>,
    handle: QueueHandle,
    endpoints: (String, String),
    guards: Vec<GuardStatsHandle>,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

async fn bind(
    endpoint: &str,
    guard: Option<&GuardConfig>,
) -> Result<(ZmqRouter, String), QueueError> {
    let mut socket = ZmqRouter::new();
    let bound = socket
        .bind_guarded(endpoint, guard)
        .await
        .map_err(|source| QueueError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok((socket, bound))
}

impl Queue {
    /// A builder with the default endpoints and configuration.
    pub fn builder() -> QueueBuilder {
        QueueBuilder::default()
    }

    /// Binds the client-facing `frontend` and the worker-facing `backend` endpoints with
    /// `config`; the same as the builder with those three set, and as
    /// [`QueueBuilder::build`] if the future is dropped.
    pub async fn bind(
        frontend: &str,
        backend: &str,
        config: QueueConfig,
    ) -> Result<Self, QueueError> {
        Self::builder()
            .frontend(frontend)
            .backend(backend)
            .config(config)
            .build()
            .await
    }
}

impl<T: Transport> Queue<T> {
    /// The bound frontend endpoint, with an ephemeral port resolved.
    pub fn frontend(&self) -> &str {
        &self.endpoints.0
    }

    /// The bound backend endpoint, with an ephemeral port resolved.
    pub fn backend(&self) -> &str {
        &self.endpoints.1
    }

    /// The stats of the ZMTP guards in front of its `tcp://` endpoints.
    pub fn guards(&self) -> &[GuardStatsHandle] {
        &self.guards
    }

    /// A handle for reading the stats of the running queue and stopping it, from any task.
    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` completes or a handle stops it; returns the final counters.
    ///
    /// Not a way to stop it: dropping the future drops the queue at once, with its sockets and
    /// the requests it holds, without the shutdown of its loop. Complete `shutdown` (or call
    /// [`ServerHandle::shutdown`]) and await the future instead.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<QueueStats, QueueError> {
        info!(frontend = %self.endpoints.0, backend = %self.endpoints.1, "queue bound");
        let machine = self
            .server
            .run(shutdown)
            .instrument(tracing::info_span!("queue"))
            .await;
        Ok(machine.0.stats())
    }
}
