//! The Titanic server on tokio: a 7/MDP worker for the three TSP services and a dispatcher of
//! the stored requests (a 7/MDP client by default, any [`Dispatch`]), over a [`Store`].
//!
//! One task owns the state: the [`Core`](crate::core::Core), the held questions, the writes waiting and the
//! dispatches under way. The services' handlers ask it over a bounded channel and wait for its
//! answer; a [`TitanicHandle`] reads its stats the same way. It commits one batch of writes at
//! a time, with every write that arrived during the previous commit: concurrent submits share
//! one fsync (group commit), and each is acknowledged only once its transaction is durable. A
//! request whose body is in memory is dispatched while its transaction is being written; a
//! close is answered at once and its removal made durable by the next durable commit.
//!
//! A `titanic.reply` about a pending request is held until its reply is stored (then answered
//! from memory) or until [`TitanicConfig::reply_wait`] has passed (then 300), so that a polling
//! client asks once per request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use majordomo_client::{Client, ClientConfig};
use majordomo_rt::clock;
use majordomo_rt::round_robin::RoundRobin;
use majordomo_rt::transport::{Connector, DealerConnector};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::core::{CoreConfig, Restoring};
use crate::dispatch::Dispatch;
use crate::owner::{self, Command, Owner, OwnerParts, ReplyAnswer};
use crate::stats::TitanicStats;
use crate::store::{Entry, Store, StoreError};
use crate::tsp::{self, Status, Uuid};

/// Above this many bytes, a request or reply goes over a connection of its own, closed after
/// it: the default [`WorkerConfig::fresh_connection_above`] and
/// [`ClientConfig::fresh_connection_above`] of [`TitanicConfig`]. zmq.rs keeps buffers as large
/// as the largest message a connection carried, and Titanic has many connections (64 per
/// service and its dispatch pool): without it, 60 requests of 15 MiB left a 15 MiB buffer on
/// most of them (a peak near 1.2 GB).
pub const FRESH_CONNECTION_ABOVE: usize = 256 * 1024;

/// Settings of a Titanic server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TitanicConfig {
    /// Limits and dispatch.
    pub core: CoreConfig,
    /// The workers of the three services (heartbeats, reconnects); `concurrency` is the number
    /// of connections of each service (default 64: a connection takes one request at a time,
    /// and concurrent submits and closes share a commit). A request or reply past
    /// [`FRESH_CONNECTION_ABOVE`] is followed by a new connection.
    pub worker: WorkerConfig,
    /// The client that dispatches requests (timeout and attempts per request), when
    /// [`Titanic::new`] makes it. A request or reply past [`FRESH_CONNECTION_ABOVE`] goes over
    /// a connection of its own.
    pub client: ClientConfig,
    /// How long `titanic.reply` holds a question about a pending request, answering as soon
    /// as its reply is stored, before it answers 300 (default 1 s, under the 2.5 s timeout of
    /// the Guide's clients; zero answers at once). All but an eighth of the service's
    /// connections may hold at once; past that, questions are answered at once.
    pub reply_wait: Duration,
}

impl Default for TitanicConfig {
    fn default() -> Self {
        Self {
            core: CoreConfig::default(),
            worker: WorkerConfig::default()
                .concurrency(64)
                .fresh_connection_above(Some(FRESH_CONNECTION_ABOVE)),
            client: ClientConfig::default().fresh_connection_above(Some(FRESH_CONNECTION_ABOVE)),
            reply_wait: Duration::from_secs(1),
        }
    }
}

impl TitanicConfig {
    /// Sets `core`; the field says what it means.
    pub fn core(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }

    /// Sets `worker`; the field says what it means.
    pub fn worker(mut self, worker: WorkerConfig) -> Self {
        self.worker = worker;
        self
    }

    /// Sets `client`; the field says what it means.
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// Sets `reply_wait`; the field says what it means and its default.
    pub fn reply_wait(mut self, reply_wait: Duration) -> Self {
        self.reply_wait = reply_wait;
        self
    }
}

/// Why a Titanic server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TitanicError {
    /// The store failed to load.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker's configuration is unusable.
    #[error(transparent)]
    Worker(#[from] majordomo_worker::WorkerError),
}

/// The three TSP services.
#[derive(Debug, Clone, Copy)]
enum Service {
    Request,
    Reply,
    Close,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Request => tsp::REQUEST_SERVICE,
            Self::Reply => tsp::REPLY_SERVICE,
            Self::Close => tsp::CLOSE_SERVICE,
        }
    }
}

/// How many of `connections` may hold a question at once: all but an eighth (at least one),
/// which stay free for questions whose reply is stored.
fn max_held(connections: usize) -> usize {
    connections - (connections / 8).max(1).min(connections)
}

/// Most commands waiting for the owner. Each handler call sends one and waits for its answer,
/// so the services' connections bound them long before this does.
const COMMANDS: usize = 1024;

/// A handle on a running Titanic server: read its stats, stop it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TitanicHandle {
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
}

impl TitanicHandle {
    /// The server's counters, gauges and latencies now, read by the task that owns its state
    /// (asked before [`Titanic::run`], it answers once the server runs); `None` once the server
    /// has stopped, or if it was dropped without running. Cancel-safe: a dropped question is
    /// answered to no one.
    pub async fn stats(&self) -> Option<TitanicStats> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks the server to stop, as its shutdown future would.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Whether the server has stopped (the task that owns its state has ended).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }
}

/// What the services' handlers share: where to ask, where to read stored replies, and the
/// calls under way (waited for at shutdown).
struct Services<S> {
    commands: mpsc::Sender<Command>,
    store: Arc<S>,
    calls: TaskTracker,
}

impl<S: Store> Services<S> {
    /// What `service` answers to `frames`.
    async fn answer(&self, service: Service, frames: Vec<Bytes>) -> Vec<Bytes> {
        let _call = self.calls.token();
        match service {
            Service::Request => self.request(frames).await,
            Service::Reply => self.reply(&frames).await,
            Service::Close => self.close(&frames).await,
        }
    }

    /// Sends a command made with `answer` and waits for the owner's answer; 500 if the server
    /// stopped meanwhile.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).await.ok()?;
        rx.await.ok()
    }

    async fn request(&self, frames: Vec<Bytes>) -> Vec<Bytes> {
        // A time-ordered UUID: the store's keys follow the order of submission.
        let uuid = Uuid::new_v7();
        self.ask(|answer| Command::Submit {
            uuid,
            frames,
            answer,
        })
        .await
        .unwrap_or_else(|| tsp::status_only(Status::Error))
    }

    async fn reply(&self, frames: &[Bytes]) -> Vec<Bytes> {
        let Some(uuid) = tsp::parse_uuid_request(frames) else {
            return tsp::status_only(Status::Unknown);
        };
        match self.ask(|answer| Command::Reply { uuid, answer }).await {
            Some(ReplyAnswer::Frames(frames)) => frames,
            Some(ReplyAnswer::ReadStore) => self.stored_reply(uuid),
            None => tsp::status_only(Status::Error),
        }
    }

    /// `titanic.reply` for a request whose reply is stored and not kept in memory.
    fn stored_reply(&self, uuid: Uuid) -> Vec<Bytes> {
        match self.store.get(&uuid) {
            Ok(Some(Entry::Done { body, .. })) => owner::ok_with(body),
            // Closed since the status was read.
            Ok(_) => tsp::status_only(Status::Unknown),
            Err(error) => {
                warn!(%error, %uuid, "reply not read: 500");
                tsp::status_only(Status::Error)
            }
        }
    }

    async fn close(&self, frames: &[Bytes]) -> Vec<Bytes> {
        let Some(uuid) = tsp::parse_uuid_request(frames) else {
            return tsp::status_only(Status::Unknown);
        };
        self.ask(|answer| Command::Close { uuid, answer })
            .await
            .unwrap_or_else(|| tsp::status_only(Status::Error))
    }
}

/// A Titanic server: its three services' workers connect through `C` (zmq.rs DEALER sockets to
/// the broker by default), its requests go out through a [`Dispatch`], over a [`Store`].
pub struct Titanic<S, C = DealerConnector> {
    /// One per broker: the services register with every one.
    connectors: Vec<C>,
    store: Arc<S>,
    dispatch: Arc<dyn Dispatch>,
    config: TitanicConfig,
    handle: TitanicHandle,
    commands: mpsc::Receiver<Command>,
}

impl<S, C: Connector> std::fmt::Debug for Titanic<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Titanic")
            .field(
                "brokers",
                &self
                    .connectors
                    .iter()
                    .map(Connector::describe)
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Titanic<S> {
    /// A server of the broker at `endpoint` keeping its requests in `store`, dispatching them
    /// with a 7/MDP client of the same broker ([`TitanicConfig::client`]).
    pub fn new(endpoint: impl Into<DealerConnector>, store: S, config: TitanicConfig) -> Self {
        let endpoint = endpoint.into();
        let client = Client::new(endpoint.clone(), config.client);
        Self::with_connector(endpoint, store, client, config)
    }

    /// A server of several brokers that serve the same services: its three services register
    /// with every one, and it dispatches with a 7/MDP client that opens each connection to the
    /// next broker in turn ([`RoundRobin`]), so that a dispatch that timed out on one broker is
    /// retried on another.
    ///
    /// # Panics
    ///
    /// If `endpoints` is empty.
    pub fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        store: S,
        config: TitanicConfig,
    ) -> Self {
        let connectors: Vec<DealerConnector> = endpoints.into_iter().map(Into::into).collect();
        let client = Client::with_connector(RoundRobin::new(connectors.clone()), config.client);
        Self::with_connectors(connectors, store, client, config)
    }
}

/// How long a stop waits for the services' calls under way (held questions answered 300,
/// submits and closes being written) before the workers say DISCONNECT.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

impl<S: Store, C: Connector + Clone + 'static> Titanic<S, C> {
    /// A server whose three services' workers connect through `connector` (such as the
    /// in-memory sockets of `majordomo_rt::memory`), sending its requests through `dispatch`;
    /// [`TitanicConfig::client`] is not used.
    pub fn with_connector(
        connector: C,
        store: S,
        dispatch: impl Dispatch,
        config: TitanicConfig,
    ) -> Self {
        Self::with_connectors([connector], store, dispatch, config)
    }

    /// A server whose three services' workers register with every broker of `connectors`,
    /// sending its requests through `dispatch`; [`TitanicConfig::client`] is not used. An empty
    /// list is a configuration error when it runs.
    pub fn with_connectors(
        connectors: impl IntoIterator<Item = C>,
        store: S,
        dispatch: impl Dispatch,
        config: TitanicConfig,
    ) -> Self {
        let (commands, rx) = mpsc::channel(COMMANDS);
        Self {
            connectors: connectors.into_iter().collect(),
            store: Arc::new(store),
            dispatch: Arc::new(dispatch),
            config,
            handle: TitanicHandle {
                commands,
                stop: CancellationToken::new(),
            },
            commands: rx,
        }
    }

    /// A handle for reading the stats of the running server and stopping it, from any task.
    pub fn handle(&self) -> TitanicHandle {
        self.handle.clone()
    }

    /// Loads the store, registers the three services and dispatches until `shutdown`
    /// completes or a handle calls [`TitanicHandle::shutdown`]; then held questions are
    /// answered 300, the calls under way finish (for a moment at most), the workers say
    /// DISCONNECT, and requests in flight are left for the next start (they are sent again
    /// then). Returns the final stats.
    ///
    /// Dropping the future stops the server too, less gently than `shutdown`: the three
    /// services' workers say DISCONNECT in the background without waiting for held questions
    /// or calls under way, and the task that owns the state stops (what it has acknowledged is
    /// already in the store). Stop it through `shutdown` or [`TitanicHandle::shutdown`] and
    /// await the future to have its last questions answered and its stats.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<TitanicStats, TitanicError> {
        let Self {
            connectors,
            store,
            dispatch,
            config,
            handle,
            commands,
        } = self;
        // Entry by entry: the bodies the core does not keep are dropped as they are read.
        let mut restoring = Restoring::new(config.core, clock::now(), owner::unix_ms());
        store.load_each(&mut |uuid, entry| restoring.entry(uuid, entry))?;
        let core = restoring.finish();
        info!(
            stored = core.len(),
            queued = core.queued(),
            stored_bytes = core.stored_bytes(),
            "titanic store loaded"
        );
        let owner = Owner::new(OwnerParts {
            core,
            store: store.clone(),
            dispatch,
            commands,
            reply_wait: config.reply_wait,
            max_held: max_held(config.worker.concurrency),
        });
        let owner_stop = CancellationToken::new();
        let owner = tokio::spawn(
            owner
                .run(owner_stop.clone())
                .instrument(tracing::info_span!("titanic")),
        );
        // Dropping this future stops the owner as well as the workers (whose `JoinSet` aborts
        // them, and each says DISCONNECT as it goes).
        let _stop_owner_when_dropped = owner_stop.clone().drop_guard();
        let services = Arc::new(Services {
            commands: handle.commands.clone(),
            store,
            calls: TaskTracker::new(),
        });
        let workers_stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        for service in [Service::Request, Service::Reply, Service::Close] {
            let s = services.clone();
            let handler = handler_fn(move |frames: Vec<Bytes>| {
                let s = s.clone();
                async move { Ok::<_, majordomo_worker::BoxError>(s.answer(service, frames).await) }
            });
            let worker = Worker::with_connectors(connectors.clone(), service.name(), config.worker);
            let stop = workers_stop.clone();
            workers.spawn(async move { worker.run(handler, stop.cancelled_owned()).await });
        }
        let mut failure = None;
        tokio::select! {
            () = shutdown => {}
            () = handle.stop.cancelled() => {}
            // A worker ends early only when its configuration is unusable.
            Some(ended) = workers.join_next() => {
                if let Ok(Err(error)) = ended {
                    failure = Some(TitanicError::from(error));
                }
            }
        }
        // Held questions are answered, and calls under way finish, before the workers say
        // goodbye (for a moment at most).
        let _ = handle.commands.send(Command::Release).await;
        services.calls.close();
        let _ = tokio::time::timeout(RELEASE_WAIT, services.calls.wait()).await;
        workers_stop.cancel();
        while let Some(ended) = workers.join_next().await {
            if let Ok(Err(error)) = ended {
                failure.get_or_insert(error.into());
            }
        }
        owner_stop.cancel();
        let stats = owner.await.unwrap_or_default();
        info!(?stats, "titanic stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(stats),
        }
    }
}
