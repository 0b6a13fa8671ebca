//! The Titanic server on tokio: a 7/MDP worker for the three TSP services and a 7/MDP client
//! that dispatches the stored requests, over a [`Store`].
//!
//! Writes go to one writer thread, which takes every write waiting when it starts a
//! transaction and commits them together: concurrent submits share one fsync (group commit),
//! and each is acknowledged only once its transaction is durable.
//!
//! A `titanic.reply` about a pending request is held until its reply is stored (then answered
//! from memory) or until [`TitanicConfig::reply_wait`] has passed (then 300), so that a polling
//! client asks once per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use majordomo_client::{Client, ClientConfig, ClientError};
use majordomo_worker::{handler_fn, BoxError, Worker, WorkerConfig};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::core::{Core, CoreConfig, Refused};
use crate::store::{Entry, Op, Store, StoreError};
use crate::tsp::{self, Status, Uuid};

/// Settings of a Titanic server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TitanicConfig {
    /// Limits and dispatch.
    pub core: CoreConfig,
    /// The workers of the three services (heartbeats, reconnects); `concurrency` is the number
    /// of connections of each service (default 64: a connection takes one request at a time,
    /// and concurrent submits and closes share a commit).
    pub worker: WorkerConfig,
    /// The client that dispatches requests (timeout and attempts per request).
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
            worker: WorkerConfig::default().concurrency(64),
            client: ClientConfig::default(),
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

/// What a Titanic server did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TitanicStats {
    /// Requests stored and acknowledged.
    pub accepted: u64,
    /// Replies stored.
    pub replied: u64,
    /// Requests and replies held when it stopped.
    pub stored: usize,
    /// Transactions committed to the store.
    pub commits: u64,
    /// Writes (requests, replies, removals) in those transactions: `writes / commits` is how
    /// many writes shared an fsync, on average.
    pub writes: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Done = oneshot::Sender<Result<(), String>>;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// The writer thread: commits every write waiting, in one transaction, then answers each.
/// Returns the transactions committed and the writes in them.
fn writer<S: Store>(store: Arc<S>, mut rx: mpsc::UnboundedReceiver<(Vec<Op>, Done)>) -> (u64, u64) {
    let (mut commits, mut writes) = (0, 0);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = batch
            .iter_mut()
            .flat_map(|(ops, _)| std::mem::take(ops))
            .collect();
        let result = store.commit(&ops).map_err(|e| e.to_string());
        match &result {
            Ok(()) => {
                commits += 1;
                writes += ops.len() as u64;
            }
            Err(error) => warn!(%error, writes = ops.len(), "store commit failed"),
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
    (commits, writes)
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

/// The `titanic.reply` questions held until their request's reply is stored.
#[derive(Default)]
struct Held {
    by_uuid: HashMap<Uuid, Vec<oneshot::Sender<Vec<Bytes>>>>,
    /// Questions held now.
    count: usize,
}

/// How many of `connections` may hold a question at once: all but an eighth (at least one),
/// which stay free for questions whose reply is stored.
fn max_held(connections: usize) -> usize {
    connections - (connections / 8).max(1).min(connections)
}

/// [`Held`], and a signal for the last question leaving it.
#[derive(Default)]
struct Holds {
    held: Mutex<Held>,
    none: Notify,
}

impl Holds {
    /// Returns once no question is held.
    async fn emptied(&self) {
        loop {
            // Made before the count is read, so that a notification in between is kept.
            let notified = self.none.notified();
            if lock(&self.held).count == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One held question: leaves [`Held`] when dropped, whatever ended the wait.
struct Holding<'a> {
    holds: &'a Holds,
    uuid: Uuid,
    reply: Option<oneshot::Receiver<Vec<Bytes>>>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        // Closed first, so that this question's sender is seen closed below.
        drop(self.reply.take());
        let mut held = lock(&self.holds.held);
        held.count -= 1;
        if let Some(senders) = held.by_uuid.get_mut(&self.uuid) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                held.by_uuid.remove(&self.uuid);
            }
        }
        if held.count == 0 {
            self.holds.none.notify_waiters();
        }
    }
}

/// `[200, body...]`.
fn ok_with(body: Vec<Bytes>) -> Vec<Bytes> {
    let mut answer = Vec::with_capacity(body.len() + 1);
    answer.push(Status::Ok.frame());
    answer.extend(body);
    answer
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared<S> {
    core: Mutex<Core>,
    store: Arc<S>,
    writes: mpsc::UnboundedSender<(Vec<Op>, Done)>,
    wake: Notify,
    accepted: std::sync::atomic::AtomicU64,
    replied: std::sync::atomic::AtomicU64,
    /// Lock order: `core`, then `holds.held`.
    holds: Holds,
    reply_wait: Duration,
    max_held: usize,
    /// Cancelled first at shutdown: held questions are answered 300.
    release: tokio_util::sync::CancellationToken,
}

impl<S: Store> Shared<S> {
    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Commits `ops` durably (grouped with other writes).
    async fn write(&self, ops: Vec<Op>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send((ops, done))
            .map_err(|_| "the writer has stopped".to_owned())?;
        wait.await
            .map_err(|_| "the writer has stopped".to_owned())?
    }

    /// What `service` answers to `frames`.
    async fn answer(&self, service: Service, frames: Vec<Bytes>) -> Vec<Bytes> {
        match service {
            Service::Request => self.request(frames).await,
            Service::Reply => self.reply(&frames).await,
            Service::Close => self.close(&frames).await,
        }
    }

    async fn request(&self, frames: Vec<Bytes>) -> Vec<Bytes> {
        let uuid = Uuid::new_v7();
        let submitted = self.core().submit(now_ms(), uuid, &frames);
        let op = match submitted {
            Ok(op) => op,
            Err(refused) => {
                if refused == Refused::Full {
                    warn!("store full: request refused with 500");
                }
                return refused.reply();
            }
        };
        match self.write(vec![op]).await {
            Ok(()) => {
                self.core().accept(uuid);
                self.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.wake.notify_one();
                vec![Status::Ok.frame(), uuid.frame()]
            }
            Err(error) => {
                warn!(%error, "request not stored: 500");
                self.core().abort(uuid);
                tsp::status_only(Status::Error)
            }
        }
    }

    async fn reply(&self, frames: &[Bytes]) -> Vec<Bytes> {
        let Some(uuid) = tsp::parse_uuid_request(frames) else {
            return tsp::status_only(Status::Unknown);
        };
        let holding = {
            let core = self.core();
            let status = core.reply_status(&uuid);
            if status == Status::Pending && !self.reply_wait.is_zero() {
                // Held under the core's lock: a reply stored after the status was read finds
                // this question.
                let mut held = lock(&self.holds.held);
                if held.count >= self.max_held {
                    return tsp::status_only(status);
                }
                held.count += 1;
                let (send, reply) = oneshot::channel();
                held.by_uuid.entry(uuid).or_default().push(send);
                Some(Holding {
                    holds: &self.holds,
                    uuid,
                    reply: Some(reply),
                })
            } else if status != Status::Ok {
                return tsp::status_only(status);
            } else {
                None
            }
        };
        match holding {
            Some(holding) => self.hold(holding).await,
            None => self.stored_reply(uuid),
        }
    }

    /// Waits for a held question's reply, up to `reply_wait`.
    async fn hold(&self, mut holding: Holding<'_>) -> Vec<Bytes> {
        let reply = holding.reply.as_mut().expect("set when held");
        tokio::select! {
            body = reply => match body {
                Ok(body) => ok_with(body),
                // Closed meanwhile.
                Err(_) => tsp::status_only(self.core().reply_status(&holding.uuid)),
            },
            () = tokio::time::sleep(self.reply_wait) => tsp::status_only(Status::Pending),
            () = self.release.cancelled() => tsp::status_only(Status::Pending),
        }
    }

    /// `titanic.reply` for a request whose reply is stored.
    fn stored_reply(&self, uuid: Uuid) -> Vec<Bytes> {
        match self.store.get(&uuid) {
            Ok(Some(Entry::Done { body, .. })) => ok_with(body),
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
        let op = {
            let mut core = self.core();
            // Its held questions see it gone.
            lock(&self.holds.held).by_uuid.remove(&uuid);
            core.close(uuid)
        };
        match self.write(vec![op]).await {
            Ok(()) => tsp::status_only(Status::Ok),
            Err(error) => {
                warn!(%error, %uuid, "close not stored: 500");
                tsp::status_only(Status::Error)
            }
        }
    }

    /// Sends one stored request to the broker and stores its reply.
    async fn dispatch(&self, client: &Client, uuid: Uuid, service: Bytes) {
        let body = match self.store.get(&uuid) {
            Ok(Some(Entry::Pending { body, .. })) => body,
            // Closed meanwhile.
            Ok(_) => return,
            Err(error) => {
                warn!(%error, %uuid, "request not read");
                self.core().failed(now_ms(), uuid);
                return;
            }
        };
        match client.request(service.clone(), body).await {
            Ok(reply) => {
                let done_ms = now_ms();
                let body = reply.clone();
                let op = self.core().answered(done_ms, uuid, reply);
                let Some(op) = op else { return };
                match self.write(vec![op]).await {
                    Ok(()) => {
                        self.core().replied(uuid, done_ms);
                        let waiting = lock(&self.holds.held).by_uuid.remove(&uuid);
                        for send in waiting.into_iter().flatten() {
                            let _ = send.send(body.clone());
                        }
                        self.replied
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(error) => {
                        warn!(%error, %uuid, "reply not stored; the request will be sent again");
                        self.core().failed(now_ms(), uuid);
                    }
                }
            }
            Err(error) => {
                let why = match &error {
                    ClientError::NoReply { .. } => "no reply",
                    _ => "error",
                };
                warn!(%error, service = %String::from_utf8_lossy(&service), %uuid, why, "request not served; the service backs off");
                self.core().failed(now_ms(), uuid);
            }
        }
    }
}

/// A Titanic server for the broker at `endpoint`, over `store`.
pub struct Titanic<S> {
    endpoint: String,
    store: Arc<S>,
    config: TitanicConfig,
}

impl<S> std::fmt::Debug for Titanic<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Titanic")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Titanic<S> {
    /// A server of the broker at `endpoint` keeping its requests in `store`.
    pub fn new(endpoint: impl Into<String>, store: S, config: TitanicConfig) -> Self {
        Self {
            endpoint: endpoint.into(),
            store: Arc::new(store),
            config,
        }
    }

    /// Loads the store, registers the three services and dispatches until `shutdown`
    /// completes; then the workers say DISCONNECT and requests in flight are left for the next
    /// start (they are sent again then).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<TitanicStats, TitanicError> {
        let entries = self.store.load()?;
        let core = Core::restore(self.config.core, entries);
        info!(
            stored = core.len(),
            queued = core.queued(),
            "titanic store loaded"
        );
        let (writes, rx) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let writer = std::thread::Builder::new()
            .name("titanic-writer".into())
            .spawn(move || writer(store, rx))
            .expect("a thread can be started");
        let stop = tokio_util::sync::CancellationToken::new();
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            store: self.store.clone(),
            writes,
            wake: Notify::new(),
            accepted: Default::default(),
            replied: Default::default(),
            holds: Holds::default(),
            reply_wait: self.config.reply_wait,
            max_held: max_held(self.config.worker.concurrency),
            release: tokio_util::sync::CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        let worker_config = self.config.worker;
        let serve =
            |service: &'static str| Worker::new(self.endpoint.clone(), service, worker_config);
        for service in [Service::Request, Service::Reply, Service::Close] {
            let s = shared.clone();
            let handler = handler_fn(move |frames: Vec<Bytes>| {
                let s = s.clone();
                async move { Ok::<_, BoxError>(s.answer(service, frames).await) }
            });
            let (worker, stop) = (serve(service.name()), stop.clone());
            tasks.spawn(async move { worker.run(handler, stop.cancelled_owned()).await });
        }
        let client = Client::new(self.endpoint.clone(), self.config.client);
        let dispatcher = dispatch_loop(shared.clone(), client, stop.clone());
        let mut dispatcher = std::pin::pin!(dispatcher);
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            () = &mut dispatcher => {}
            () = &mut shutdown => {}
        }
        // Held questions are answered before the workers say goodbye (for a moment at most).
        shared.release.cancel();
        let _ = tokio::time::timeout(RELEASE_WAIT, shared.holds.emptied()).await;
        stop.cancel();
        dispatcher.await;
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(error)) = ended {
                return Err(error.into());
            }
        }
        let mut stats = TitanicStats {
            accepted: shared.accepted.load(std::sync::atomic::Ordering::Relaxed),
            replied: shared.replied.load(std::sync::atomic::Ordering::Relaxed),
            stored: shared.core().len(),
            ..TitanicStats::default()
        };
        // The writer ends once every sender is gone.
        drop(shared);
        if let Ok(Ok((commits, writes))) = tokio::task::spawn_blocking(move || writer.join()).await
        {
            (stats.commits, stats.writes) = (commits, writes);
        }
        info!(?stats, "titanic stopped");
        Ok(stats)
    }
}

/// How long a stop waits for held questions to be answered.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// How often replies past their retention time are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

async fn dispatch_loop<S: Store>(
    shared: Arc<Shared<S>>,
    client: Client,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut jobs = JoinSet::new();
    let mut next_expiry = tokio::time::Instant::now();
    loop {
        let now = now_ms();
        let (ready, retry_ms) = {
            let mut core = shared.core();
            let ready: Vec<_> = std::iter::from_fn(|| core.next_dispatch(now)).collect();
            (ready, core.next_retry_ms(now))
        };
        for (uuid, service) in ready {
            let (s, c) = (shared.clone(), client.clone());
            jobs.spawn(async move { s.dispatch(&c, uuid, service).await });
        }
        if tokio::time::Instant::now() >= next_expiry {
            let ops = shared.core().expire(now);
            if !ops.is_empty() {
                info!(
                    replies = ops.len(),
                    "replies past their retention forgotten"
                );
                if let Err(error) = shared.write(ops).await {
                    warn!(%error, "expired replies not removed from the store");
                }
            }
            next_expiry = tokio::time::Instant::now() + EXPIRY_EVERY;
        }
        let retry = retry_ms.map_or(next_expiry, |at| {
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
        });
        tokio::select! {
            () = stop.cancelled() => break,
            () = shared.wake.notified() => {}
            Some(_) = jobs.join_next() => {}
            () = tokio::time::sleep_until(retry.min(next_expiry)) => {}
        }
    }
    // Requests in flight stay stored as pending: sent again at the next start.
    jobs.shutdown().await;
}
