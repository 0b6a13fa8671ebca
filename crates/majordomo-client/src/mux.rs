//! [`MuxClient`]: many requests on one connection, each tagged with a frame of its own.
//!
//! 7/MDP has no request id, so [`Client`] keeps one connection per request in flight. A broker
//! that routes extended reply envelopes (ours: `mmi.envelope` answers `200`) returns a client's
//! frames before the empty delimiter before every reply, so a request sent as
//! `[tag, empty, MDPC01, service, body...]` comes back as `[tag, empty, MDPC01, service,
//! reply...]`: one connection carries any number of requests, and each reply finds its request
//! by its tag, in any order.
//!
//! Callers send their tagged requests themselves, on the sending half of a broker's connection,
//! and leave each request with the one task that reads every connection, matches each reply to
//! its request and answers it, and times requests out: a request costs its caller no hand-over
//! to that task. A request made while no broker's connection is up goes to the task over a
//! channel, and waits there for one. Each connection has a task of its own that opens
//! it and asks `mmi.envelope` first, untagged, because a broker that does not route extended
//! envelopes must never be sent one (the Guide's Python broker asserts on it): a broker that
//! answers anything but `200`, or nothing within the timeout, is not sent tagged requests for
//! the life of the `MuxClient`; when no broker multiplexes, requests go through a [`Client`]
//! and its pool of connections instead.
//!
//! # Several brokers
//!
//! [`MuxClient::with_endpoints`] (or [`MuxClient::with_connectors`]) takes several brokers,
//! every one serving the same services (each worker registered with all of them). The client
//! holds one connection to each broker that is up and sends each request to the one with the
//! fewest requests under way. A broker that let a request time out and has sent nothing since
//! is suspect: it gets requests only while no other broker is up, so the passive server of a
//! Binary Star pair (which drops client requests) costs one timeout, not one per request. A broker whose connection fails or stays silent for a whole
//! timeout while a request waits on it is dropped and connected again after a backoff (from a
//! tenth of the timeout, doubling up to the timeout); its requests go to the other brokers.
//!
//! Each request follows the Lazy Pirate strategy of [`Client`]: no reply within
//! [`ClientConfig::timeout`] and it is sent again, with a new tag, to another broker when one is
//! up, up to [`ClientConfig::attempts`] times. A reply to an old tag is stale: dropped, counted
//! in [`MuxStats::stale`], never delivered, so a caller gets at most one reply. The request
//! itself is delivered at least once: a broker that dies (or a reply that is late) after it
//! dispatched a request means the retry may run it a second time.
//!
//! Requests are sent in 7/MDP (v0.1) form whatever [`ClientConfig::version`] says; a client
//! configured for 18/MDP is served by the pool.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::Backoff;
use majordomo_proto::mdp::{ClientReply, ClientRequest};
use majordomo_proto::mmi;
use majordomo_rt::clock;
use majordomo_rt::timer::DeadlineTimer;
use majordomo_rt::transport::{
    Connector, DealerConnector, RecvHalf, SendHalf, Split, Transport, TransportError,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, warn};

use crate::{Client, ClientConfig, ClientError, Version};

/// Requests a [`MuxClient`]'s task holds in its channel before callers wait to hand theirs; also
/// the messages a connection's task holds for it.
const CHANNEL: usize = 1024;

/// What a [`MuxClient`]'s task has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MuxStats {
    /// Connections opened (each asked `mmi.envelope`), to every broker.
    pub connections: u64,
    /// Requests sent, each attempt counted.
    pub sent: u64,
    /// Replies delivered to their callers.
    pub replies: u64,
    /// Replies to a tag no request holds any more (answered late, after a retry): dropped.
    pub stale: u64,
    /// Attempts sent to another broker than the request's previous attempt.
    pub failovers: u64,
    /// Requests under way now.
    pub in_flight: usize,
    /// Brokers with a connection that carries tagged requests now.
    pub brokers_up: usize,
    /// Whether a broker routes tagged requests: `Some(true)` once one has answered
    /// `mmi.envelope` with `200`, `Some(false)` when every broker has answered otherwise,
    /// `None` until then.
    pub multiplexed: Option<bool>,
}

/// A request's answer from the task.
enum Answer {
    Reply(Result<Vec<Bytes>, ClientError>),
    /// No broker routes extended envelopes: the caller uses this broker's pool.
    Unsupported(usize, Bytes, Vec<Bytes>),
}

enum Command {
    Request {
        service: Bytes,
        body: Vec<Bytes>,
        answer: oneshot::Sender<Answer>,
    },
    Stats(oneshot::Sender<MuxStats>),
}

/// A 7/MDP client that multiplexes its requests on one connection to each broker (see the
/// module docs); clones share the connections. Made inside a tokio runtime: it spawns the task
/// that reads the replies and times the requests out, which ends when the last clone is
/// dropped.
pub struct MuxClient<C: Connector + Clone = DealerConnector> {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// One pool per broker, for brokers that do not multiplex.
    pools: Arc<[Client<C>]>,
}

impl<C: Connector + Clone> Clone for MuxClient<C> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            pools: self.pools.clone(),
        }
    }
}

/// A connection's sending half, whatever its transport.
trait SendFrames: Send + Sync {
    fn send_frames(
        &self,
        frames: Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send + '_>>;
}

impl<S: SendHalf> SendFrames for S {
    fn send_frames(
        &self,
        frames: Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send + '_>> {
        Box::pin(SendHalf::send(self, frames))
    }
}

/// What the callers and the task share: where a request may go, and the requests sent that the
/// task has not taken in yet.
struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a request was sent while it had no deadline to wait for, or a send failed.
    wake: Notify,
    next_tag: AtomicU64,
    /// Only 7/MDP requests are tagged; other versions go through the pools.
    v01: bool,
    timeout: Duration,
    attempts: u32,
}

struct State {
    /// One per broker, in the order of the connectors.
    routes: Vec<Route>,
    /// Requests callers sent, with their tags, that the task has not taken in yet.
    arrived: Vec<(u64, Pending)>,
    /// Whether the task waits with a timer armed, and so takes `arrived` in without being woken:
    /// a new request's deadline is never earlier than the one the timer is armed for.
    watching: bool,
    /// Brokers whose send failed, each with the generation of its connection then.
    failed: Vec<(usize, u64)>,
    /// Tags of callers' requests never handed to their connection: the caller stopped waiting.
    withdrawn: Vec<u64>,
    sent: u64,
    failovers: u64,
}

/// A broker as the callers see it.
struct Route {
    /// The connection's sending half, while it carries tagged requests.
    sender: Option<Arc<dyn SendFrames>>,
    /// The generation of the connection `sender` belongs to.
    generation: u64,
    /// Requests whose last attempt went here.
    in_flight: usize,
    /// A request sent here went unanswered for a whole timeout, and nothing has arrived from
    /// it since: it is sent requests only while no other broker is up. The passive server of a
    /// Binary Star pair, which drops client requests, is one.
    suspect: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Routes a caller's new request under `tag` and leaves it for the task to take in, waking
    /// the task if it waits for no deadline; gives it back when no broker's connection is up.
    fn leave(
        &self,
        tag: u64,
        service: Bytes,
        body: Vec<Bytes>,
        answer: oneshot::Sender<Answer>,
    ) -> Result<Routed, Unrouted> {
        let mut state = self.state();
        // Read under the lock: a caller held up before it would otherwise leave a deadline
        // earlier than the one the task's timer is armed for.
        let now = clock::now();
        let Some((index, generation, sender)) = state.route(None) else {
            return Err((service, body, answer));
        };
        state.arrived.push((
            tag,
            Pending {
                service,
                body,
                answer,
                left: self.attempts.saturating_sub(1),
                deadline: now + self.timeout,
                sent_at: now,
                broker: Some(index),
            },
        ));
        let wake = !std::mem::replace(&mut state.watching, true);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok((index, generation, sender))
    }

    /// Sends a caller's request under `tag` on the connection it was routed to. A send that
    /// fails is reported to the task, which lets the connection go and retries the request at
    /// once; a send dropped before it completes withdraws the request, which was never sent.
    async fn send(&self, tag: u64, routed: Routed, frames: Vec<Bytes>) {
        let (index, generation, sender) = routed;
        let mut unsent = Withdraw {
            shared: self,
            tag: Some(tag),
        };
        let sent = sender.send_frames(frames).await;
        unsent.tag = None;
        if sent.is_err() {
            self.failed(index, generation);
        }
    }

    /// Reports a send that failed on broker `index`'s connection of `generation`: the task lets
    /// that connection go and retries what was sent on it.
    fn failed(&self, index: usize, generation: u64) {
        self.state().failed.push((index, generation));
        self.wake.notify_one();
    }
}

/// Withdraws its request from the task when dropped with a tag: the caller stopped waiting
/// before the request was handed to the connection.
struct Withdraw<'a> {
    shared: &'a Shared,
    tag: Option<u64>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(tag) = self.tag {
            // Taken in before the request's deadline is looked at; no need to wake the task.
            self.shared.state().withdrawn.push(tag);
        }
    }
}

impl State {
    /// The broker up with the fewest requests under way, one that is not suspect and is not
    /// `previous` (the request's last attempt) first; the attempt is counted there.
    fn route(&mut self, previous: Option<usize>) -> Option<Routed> {
        let (index, route) = self
            .routes
            .iter_mut()
            .enumerate()
            .filter(|(_, r)| r.sender.is_some())
            .min_by_key(|(i, r)| (r.suspect, Some(*i) == previous, r.in_flight))?;
        let sender = route.sender.clone()?;
        route.in_flight += 1;
        self.sent += 1;
        if previous.is_some_and(|p| p != index) {
            self.failovers += 1;
        }
        Some((index, route.generation, sender))
    }
}

/// Where an attempt went: the broker, its connection's generation, and that connection's
/// sending half.
type Routed = (usize, u64, Arc<dyn SendFrames>);

/// A new request that no broker's connection can take: its service, body and answer.
type Unrouted = (Bytes, Vec<Bytes>, oneshot::Sender<Answer>);

/// A request's frames under `tag`: `[tag, empty, MDPC01, service, body...]`.
fn tagged(tag: u64, service: &Bytes, body: &[Bytes]) -> Vec<Bytes> {
    let mut frames = vec![Bytes::copy_from_slice(&tag.to_be_bytes())];
    frames.extend(ClientRequest::new(service.clone(), body.to_vec()).encode());
    frames
}

impl<C: Connector + Clone> std::fmt::Debug for MuxClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl MuxClient {
    /// A client for the broker at `endpoint`. Nothing connects until the first request.
    pub fn new(endpoint: impl Into<DealerConnector>, config: ClientConfig) -> Self {
        Self::with_connector(endpoint.into(), config)
    }

    /// A client for the brokers at `endpoints`, each serving the same services. Nothing
    /// connects until the first request.
    ///
    /// # Panics
    ///
    /// If `endpoints` is empty.
    pub fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        config: ClientConfig,
    ) -> Self {
        Self::with_connectors(endpoints.into_iter().map(Into::into), config)
    }
}

impl<C> MuxClient<C>
where
    C: Connector + Clone + 'static,
    C::Conn: 'static,
{
    /// A client whose connection (and pool, if the broker does not multiplex) opens through
    /// `connector`.
    pub fn with_connector(connector: C, config: ClientConfig) -> Self
    where
        C::Conn: Split,
    {
        Self::with_connectors([connector], config)
    }

    /// A client of several brokers, each reached through its connector.
    ///
    /// # Panics
    ///
    /// If `connectors` is empty.
    pub fn with_connectors(connectors: impl IntoIterator<Item = C>, config: ClientConfig) -> Self
    where
        C::Conn: Split,
    {
        let connectors: Vec<C> = connectors.into_iter().collect();
        assert!(
            !connectors.is_empty(),
            "a MuxClient needs at least one broker"
        );
        let (commands, receiver) = mpsc::channel(CHANNEL);
        let (events_in, events) = mpsc::channel(CHANNEL);
        let pools = connectors
            .iter()
            .map(|c| Client::with_connector(c.clone(), config))
            .collect();
        // Reconnects start at a tenth of the timeout and double up to the timeout.
        let backoff = || Backoff::new(config.timeout / 10, config.timeout);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                routes: connectors
                    .iter()
                    .map(|_| Route {
                        sender: None,
                        generation: 0,
                        in_flight: 0,
                        suspect: false,
                    })
                    .collect(),
                arrived: Vec::new(),
                watching: false,
                failed: Vec::new(),
                withdrawn: Vec::new(),
                sent: 0,
                failovers: 0,
            }),
            wake: Notify::new(),
            next_tag: AtomicU64::new(0),
            v01: config.version == Version::V01,
            timeout: config.timeout,
            attempts: config.attempts,
        });
        let task = Task {
            shared: shared.clone(),
            brokers: connectors
                .into_iter()
                .map(|connector| Broker {
                    connector,
                    link: Link::Idle,
                    retry_at: None,
                    backoff: backoff(),
                    generation: 0,
                })
                .collect(),
            config,
            commands: receiver,
            events,
            events_in,
            next_pool: 0,
            pending: HashMap::new(),
            unsent: BTreeSet::new(),
            first_read: 0,
            deadlines: BTreeSet::new(),
            stats: MuxStats {
                multiplexed: (config.version != Version::V01).then_some(false),
                ..MuxStats::default()
            },
        };
        tokio::spawn(task.run());
        Self {
            commands,
            shared,
            pools,
        }
    }
}

impl<C: Connector + Clone> MuxClient<C> {
    /// Sends `body` to `service` and waits for the reply body, retried per [`ClientConfig`]
    /// with a new tag each time; through a pool if no broker multiplexes.
    ///
    /// Cancel-safe: a request whose future is dropped before it was handed to its connection
    /// is withdrawn; one dropped after that is forgotten at its next deadline, and its reply,
    /// if one comes, is dropped as stale.
    pub async fn request(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, ClientError> {
        let service = service.into();
        let (answer, mut answered) = oneshot::channel();
        let shared = &*self.shared;
        let unrouted = if shared.v01 {
            let tag = shared.tag();
            let frames = tagged(tag, &service, &body);
            match shared.leave(tag, service, body, answer) {
                Ok(routed) => {
                    let send = shared.send(tag, routed, frames);
                    tokio::pin!(send);
                    tokio::select! {
                        biased;
                        () = &mut send => None,
                        // The send still waits and the task has given the request up or
                        // answered it from another broker: the answer is what counts.
                        answer = &mut answered => return self.answered(answer).await,
                    }
                }
                Err(unrouted) => Some(unrouted),
            }
        } else {
            Some((service, body, answer))
        };
        if let Some((service, body, answer)) = unrouted {
            // No broker's connection is up (or requests are not tagged): the task keeps it.
            let command = Command::Request {
                service,
                body,
                answer,
            };
            if self.commands.send(command).await.is_err() {
                return Err(ClientError::Transport(TransportError::Closed));
            }
        }
        self.answered(answered.await).await
    }

    /// What the task answered.
    async fn answered(
        &self,
        answer: Result<Answer, oneshot::error::RecvError>,
    ) -> Result<Vec<Bytes>, ClientError> {
        match answer {
            Ok(Answer::Reply(result)) => result,
            Ok(Answer::Unsupported(broker, service, body)) => {
                self.pools[broker].request(service, body).await
            }
            Err(_) => Err(ClientError::Transport(TransportError::Closed)),
        }
    }

    /// What the task has seen so far. Cancel-safe: a dropped question is answered to no one.
    pub async fn stats(&self) -> MuxStats {
        let (answer, answered) = oneshot::channel();
        if self.commands.send(Command::Stats(answer)).await.is_err() {
            return MuxStats::default();
        }
        answered.await.unwrap_or_default()
    }
}

/// A request under way.
struct Pending {
    service: Bytes,
    body: Vec<Bytes>,
    answer: oneshot::Sender<Answer>,
    /// Attempts left after this one.
    left: u32,
    deadline: Instant,
    /// When it was last sent.
    sent_at: Instant,
    /// The broker its last attempt went to; `None` while it waits for one to come up.
    broker: Option<usize>,
}

/// A broker's connection, as the owning task sees it.
enum Link<T> {
    /// None, and none being opened.
    Idle,
    /// A task of its own opens it and asks `mmi.envelope`.
    Connecting,
    /// It carries tagged requests.
    Up {
        socket: T,
        /// When something last arrived on it.
        heard: Instant,
    },
    /// The broker does not route extended envelopes: never sent a tagged request again.
    Plain,
}

struct Broker<C: Connector>
where
    C::Conn: Split,
{
    connector: C,
    /// Its receiving half while up; the sending half is the route's.
    link: Link<<C::Conn as Split>::Receiver>,
    /// No new connection before this, after one failed.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Counts this broker's connections, so that a closed one's late reports are told apart.
    generation: u64,
}

/// What a connecting task reports.
enum Event<T> {
    /// Open, and it routes tagged requests.
    Up(T),
    /// Open, and the broker does not route extended envelopes.
    Plain,
    /// It could not open.
    Down,
}

/// An [`Event`] of a broker's connection attempt of one generation.
struct Report<T> {
    broker: usize,
    generation: u64,
    event: Event<T>,
}

struct Task<C: Connector>
where
    C::Conn: Split,
{
    shared: Arc<Shared>,
    brokers: Vec<Broker<C>>,
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Receiver<Report<C::Conn>>,
    /// Cloned into each connecting task.
    events_in: mpsc::Sender<Report<C::Conn>>,
    /// The broker whose connection is read first at the next wake-up, in turn, so that one
    /// that keeps sending does not starve the others.
    first_read: usize,
    /// The pool the next untagged request goes through, round robin.
    next_pool: usize,
    pending: HashMap<u64, Pending>,
    /// Tags of requests waiting for a broker to come up, oldest first (tags only grow).
    unsent: BTreeSet<u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    stats: MuxStats,
}

/// Opens one connection and asks it `mmi.envelope`; reports the connection, or why not.
async fn connect<C: Connector>(
    connector: C,
    timeout: Duration,
    limits: majordomo_proto::Limits,
    broker: usize,
    generation: u64,
    events: mpsc::Sender<Report<C::Conn>>,
) {
    let report = |event| Report {
        broker,
        generation,
        event,
    };
    let mut socket = match connector.connect(timeout).await {
        Ok(socket) => socket,
        Err(error) => {
            debug!(%error, broker = %connector.describe(), "cannot connect to the broker");
            let _ = events.send(report(Event::Down)).await;
            return;
        }
    };
    let probe = ClientRequest::new(Bytes::from_static(mmi::ENVELOPE), vec![]).encode();
    // On a new connection only the probe's answer can come.
    let answer = match socket.send(probe).await {
        Ok(()) => tokio::time::timeout(timeout, socket.recv()).await,
        Err(error) => Ok(Err(error)),
    };
    let event = match answer {
        Ok(Ok(frames)) => {
            let supported = ClientReply::decode(&frames, &limits).is_ok_and(|reply| {
                reply.service.as_ref() == mmi::ENVELOPE
                    && reply.body.first().is_some_and(|s| s.as_ref() == mmi::OK)
            });
            if supported {
                Event::Up(socket)
            } else {
                Event::Plain
            }
        }
        Ok(Err(_)) => Event::Down,
        Err(_) => Event::Plain,
    };
    let _ = events.send(report(event)).await;
}

/// The next message from any connection that is up, read from `first` on in turn, with the
/// broker it came from. Pending while none is up.
async fn recv_any<C: Connector>(
    brokers: &mut [Broker<C>],
    first: usize,
) -> (usize, Result<Vec<Bytes>, TransportError>)
where
    C::Conn: Split,
{
    std::future::poll_fn(|cx| {
        let count = brokers.len();
        for i in 0..count {
            let index = (first + i) % count;
            if let Link::Up { socket, .. } = &mut brokers[index].link {
                // Made afresh at each poll and dropped if not ready: `recv` is cancel-safe (the
                // RecvHalf contract) and registers the waker each time.
                let received = std::pin::pin!(socket.recv());
                if let std::task::Poll::Ready(result) = std::future::Future::poll(received, cx) {
                    return std::task::Poll::Ready((index, result));
                }
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl<C> Task<C>
where
    C: Connector + Clone + 'static,
    C::Conn: Split + 'static,
{
    async fn run(mut self) {
        // Armed at the earliest deadline, and moved only when one comes earlier: a timer that
        // fires early finds nothing due and is armed again, which costs less than moving it at
        // every reply.
        let mut timer = DeadlineTimer::new(clock::now());
        let mut armed: Option<Instant> = None;
        loop {
            if let Some(at) = self.next_wakeup() {
                if armed.is_none_or(|armed| at < armed) {
                    timer.set(at);
                    armed = Some(at);
                }
            }
            // Whether the next request must wake it is decided here, where the task goes to
            // wait: what it took in since it last waited may have removed its last deadline.
            if self.take_in_or_wait(Some(armed.is_some())) {
                // Its deadlines changed: the timer is looked at again.
                continue;
            }
            let first = self.first_read;
            tokio::select! {
                // mpsc's recv is cancel-safe; so is `recv_any`.
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone, and with it every caller.
                    None => return,
                },
                report = self.events.recv() => {
                    // The task holds a sender itself, so the channel never closes.
                    if let Some(report) = report {
                        self.on_report(report);
                    }
                }
                (index, received) = recv_any(&mut self.brokers, first) => {
                    self.first_read = (index + 1) % self.brokers.len();
                    match received {
                        Ok(frames) => {
                            if let Link::Up { heard, .. } = &mut self.brokers[index].link {
                                *heard = clock::now();
                            }
                            self.on_frames(index, frames);
                        }
                        Err(error) => {
                            debug!(%error, broker = %self.brokers[index].connector.describe(), "connection to the broker failed");
                            self.down(index, clock::now());
                        }
                    }
                }
                () = timer.wait(), if armed.is_some() => {
                    armed = None;
                    self.on_timeout(clock::now());
                }
                // What woke it is taken in at the top of the loop.
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Takes in the requests callers sent, the ones they withdrew and the sends that failed.
    fn take_in(&mut self) {
        self.take_in_or_wait(None);
    }

    /// As [`Task::take_in`]; for a task about to wait (`waiting`: whether its timer is armed),
    /// with nothing to take in, the callers are told whether it wakes by itself or must be
    /// woken by the next request. Returns whether it took anything in.
    fn take_in_or_wait(&mut self, waiting: Option<bool>) -> bool {
        let mut state = self.shared.state();
        let arrived = std::mem::take(&mut state.arrived);
        let failed = std::mem::take(&mut state.failed);
        let withdrawn = std::mem::take(&mut state.withdrawn);
        if arrived.is_empty() && failed.is_empty() && withdrawn.is_empty() {
            if let Some(timer_armed) = waiting {
                state.watching = timer_armed;
            }
            return false;
        }
        drop(state);
        let now = clock::now();
        if !arrived.is_empty() {
            // Requests sent on the connections that are up: brokers whose connection was let go
            // are connected again once their backoff has passed, as a request through the task
            // would.
            self.connect_idle(now);
        }
        self.admit(arrived);
        for tag in withdrawn {
            // Still here unless the task has answered it meanwhile.
            let Some(pending) = self.pending.remove(&tag) else {
                continue;
            };
            self.deadlines.remove(&(pending.deadline, tag));
            if let Some(index) = pending.broker {
                self.shared.state().routes[index].in_flight -= 1;
            }
        }
        for (index, generation) in failed {
            self.send_failed(index, generation, now);
        }
        true
    }

    /// Holds callers' requests, taken from [`State::arrived`], to their deadlines.
    fn admit(&mut self, arrived: Vec<(u64, Pending)>) {
        for (tag, pending) in arrived {
            self.deadlines.insert((pending.deadline, tag));
            self.pending.insert(tag, pending);
        }
    }

    /// The next deadline, or the next time a broker may be connected again while requests wait
    /// for one.
    fn next_wakeup(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        let retry = if self.unsent.is_empty() {
            None
        } else {
            self.brokers
                .iter()
                .filter(|b| matches!(b.link, Link::Idle))
                .filter_map(|b| b.retry_at)
                .min()
        };
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Stats(answer) => {
                self.take_in();
                let mut stats = self.stats;
                {
                    let state = self.shared.state();
                    stats.sent = state.sent;
                    stats.failovers = state.failovers;
                }
                stats.in_flight = self.pending.len();
                stats.brokers_up = self
                    .brokers
                    .iter()
                    .filter(|b| matches!(b.link, Link::Up { .. }))
                    .count();
                let _ = answer.send(stats);
            }
            Command::Request {
                service,
                body,
                answer,
            } => {
                if let Some(broker) = self.plain_broker() {
                    let _ = answer.send(Answer::Unsupported(broker, service, body));
                    return;
                }
                let now = clock::now();
                let pending = Pending {
                    service,
                    body,
                    answer,
                    left: self.config.attempts.saturating_sub(1),
                    deadline: now,
                    sent_at: now,
                    broker: None,
                };
                let tag = self.shared.tag();
                self.send(now, tag, pending);
            }
        }
    }

    /// When no request can be tagged (another MDP version, or no broker multiplexes), the
    /// broker whose pool serves them.
    fn plain_broker(&mut self) -> Option<usize> {
        if self.shared.v01 && !self.brokers.iter().all(|b| matches!(b.link, Link::Plain)) {
            return None;
        }
        let index = self.next_pool % self.brokers.len();
        self.next_pool = self.next_pool.wrapping_add(1);
        Some(index)
    }

    /// Sends `pending` under `tag` to the broker up with the fewest requests under way (another
    /// than its last attempt's if there is one), or keeps it until a broker comes up.
    fn send(&mut self, now: Instant, tag: u64, mut pending: Pending) {
        self.connect_idle(now);
        pending.deadline = now + self.config.timeout;
        pending.sent_at = now;
        let routed = self.shared.state().route(pending.broker);
        pending.broker = routed.as_ref().map(|(index, ..)| *index);
        self.deadlines.insert((pending.deadline, tag));
        let Some((index, generation, sender)) = routed else {
            self.unsent.insert(tag);
            self.pending.insert(tag, pending);
            return;
        };
        let frames = tagged(tag, &pending.service, &pending.body);
        self.pending.insert(tag, pending);
        // In a task of its own: a connection whose sends wait (its queue full) must not hold up
        // this one, which reads every connection and keeps the deadlines. A send that fails, or
        // still waits after a whole timeout, lets the connection go (through `failed`), and the
        // request is retried at once, like a lost one at its deadline.
        let shared = self.shared.clone();
        let timeout = self.config.timeout;
        tokio::spawn(async move {
            let sent = tokio::time::timeout(timeout, sender.send_frames(frames)).await;
            if !matches!(sent, Ok(Ok(()))) {
                shared.failed(index, generation);
            }
        });
    }

    /// A send to broker `index` on its connection of `generation` failed: that connection, if
    /// still up, is let go.
    fn send_failed(&mut self, index: usize, generation: u64, now: Instant) {
        let broker = &self.brokers[index];
        if generation == broker.generation && matches!(broker.link, Link::Up { .. }) {
            debug!(broker = %broker.connector.describe(), "send to the broker failed");
            self.down(index, now);
        }
    }

    /// Starts a connection to every broker that has none and may be tried again.
    fn connect_idle(&mut self, now: Instant) {
        for (index, broker) in self.brokers.iter_mut().enumerate() {
            if !matches!(broker.link, Link::Idle) || broker.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            broker.link = Link::Connecting;
            broker.generation += 1;
            self.stats.connections += 1;
            tokio::spawn(connect(
                broker.connector.clone(),
                self.config.timeout,
                self.config.limits,
                index,
                broker.generation,
                self.events_in.clone(),
            ));
        }
    }

    fn on_report(&mut self, report: Report<C::Conn>) {
        let Report {
            broker: index,
            generation,
            event,
        } = report;
        let now = clock::now();
        let broker = &mut self.brokers[index];
        if generation != broker.generation {
            // A connection already let go.
            return;
        }
        match event {
            Event::Up(socket) => {
                let (sender, receiver) = socket.split();
                broker.link = Link::Up {
                    socket: receiver,
                    heard: now,
                };
                {
                    let mut state = self.shared.state();
                    let route = &mut state.routes[index];
                    route.sender = Some(Arc::new(sender));
                    route.generation = generation;
                }
                broker.backoff.reset();
                broker.retry_at = None;
                self.stats.multiplexed = Some(true);
                // Requests that waited for a broker go now.
                for tag in std::mem::take(&mut self.unsent) {
                    if let Some(pending) = self.pending.remove(&tag) {
                        self.deadlines.remove(&(pending.deadline, tag));
                        self.send(now, tag, pending);
                    }
                }
            }
            Event::Plain => {
                warn!(broker = %broker.connector.describe(), "the broker does not route tagged requests (mmi.envelope): it is sent none");
                broker.link = Link::Plain;
                if self.brokers.iter().all(|b| matches!(b.link, Link::Plain)) {
                    self.stats.multiplexed = Some(false);
                    // Nobody multiplexes: what waited goes through the pools.
                    for tag in std::mem::take(&mut self.unsent) {
                        if let Some(pending) = self.pending.remove(&tag) {
                            self.deadlines.remove(&(pending.deadline, tag));
                            let _ = pending.answer.send(Answer::Unsupported(
                                index,
                                pending.service,
                                pending.body,
                            ));
                        }
                    }
                }
            }
            Event::Down => self.down(index, now),
        }
    }

    /// Lets broker `index`'s connection go: connected again after a backoff; the requests sent
    /// on it are retried at once.
    fn down(&mut self, index: usize, now: Instant) {
        let broker = &mut self.brokers[index];
        if matches!(broker.link, Link::Plain) {
            return;
        }
        broker.link = Link::Idle;
        broker.retry_at = Some(now + broker.backoff.next_delay());
        // No caller sends here from now on; what they sent before is taken in, so that it is
        // retried with the rest.
        let arrived = {
            let mut state = self.shared.state();
            state.routes[index].sender = None;
            std::mem::take(&mut state.arrived)
        };
        self.admit(arrived);
        let stranded: Vec<(Instant, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.broker == Some(index))
            .map(|(tag, p)| (p.deadline, *tag))
            .collect();
        for (deadline, tag) in stranded {
            self.deadlines.remove(&(deadline, tag));
            if let Some(pending) = self.pending.get_mut(&tag) {
                pending.deadline = now;
            }
            self.deadlines.insert((now, tag));
        }
    }

    /// A message from broker `from`.
    fn on_frames(&mut self, from: usize, frames: Vec<Bytes>) {
        let tag = frames
            .first()
            .and_then(|f| <[u8; 8]>::try_from(f.as_ref()).ok())
            .map(u64::from_be_bytes);
        let mut pending = tag.and_then(|tag| self.pending.remove(&tag));
        if pending.is_none() && tag.is_some() {
            // A caller's request, answered before the task took it in.
            self.take_in();
            pending = tag.and_then(|tag| self.pending.remove(&tag));
        }
        let mut state = self.shared.state();
        state.routes[from].suspect = false;
        let (Some(tag), Some(pending)) = (tag, pending) else {
            drop(state);
            self.stats.stale += 1;
            return;
        };
        if let Some(index) = pending.broker {
            state.routes[index].in_flight -= 1;
        }
        drop(state);
        self.deadlines.remove(&(pending.deadline, tag));
        let result = match ClientReply::decode(&frames[1..], &self.config.limits) {
            Ok(reply) if reply.service == pending.service => Ok(reply.body),
            Ok(reply) => Err(ClientError::WrongService {
                expected: pending.service,
                got: reply.service,
            }),
            Err(error) => Err(ClientError::Malformed(error)),
        };
        self.stats.replies += u64::from(result.is_ok());
        let _ = pending.answer.send(Answer::Reply(result));
    }

    /// Requests past their deadline: sent again under a new tag, or failed; and brokers whose
    /// backoff has passed connected again while requests wait.
    fn on_timeout(&mut self, now: Instant) {
        self.take_in();
        while let Some(&(at, tag)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(mut pending) = self.pending.remove(&tag) else {
                continue;
            };
            self.unsent.remove(&tag);
            if let Some(index) = pending.broker {
                {
                    let mut state = self.shared.state();
                    state.routes[index].in_flight -= 1;
                    state.routes[index].suspect = true;
                }
                // Nothing heard since this request went: the connection is taken as dead.
                if let Link::Up { heard, .. } = self.brokers[index].link {
                    if heard < pending.sent_at {
                        debug!(broker = %self.brokers[index].connector.describe(), "no message from the broker for a whole timeout: reconnecting");
                        self.down(index, now);
                    }
                }
            }
            if pending.answer.is_closed() {
                continue;
            }
            if pending.left == 0 {
                let result = Err(ClientError::NoReply {
                    attempts: self.config.attempts,
                    service: pending.service,
                    body: pending.body,
                });
                let _ = pending.answer.send(Answer::Reply(result));
                continue;
            }
            pending.left -= 1;
            let tag = self.shared.tag();
            self.send(now, tag, pending);
        }
        if !self.unsent.is_empty() {
            self.connect_idle(now);
        }
    }
}
