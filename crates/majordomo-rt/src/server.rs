//! The event loop of a ROUTER server (the Majordomo broker, the Pirate queues): one task owns a
//! sans-IO [`Machine`] and its sockets.
//!
//! Each turn waits for the first of: shutdown, a request from a [`ServerHandle`], a message on
//! any socket, the machine's next deadline. It then reads the clock once, handles up to
//! [`RECV_BATCH`] messages that are already waiting on that socket, runs the machine's timers if
//! their deadline has passed, and sends what the machine queued. The rules every server shares
//! live here once:
//! - **Fairness.** Sockets are polled in turn, starting after the one served last, so a flood on
//!   one socket (clients) cannot starve another (workers and their heartbeats).
//! - **Starvation.** zmq.rs's `recv` never returns Pending while a peer keeps sending, so after a
//!   full batch the loop yields to the runtime, letting zmq.rs's accept and writer tasks run.
//! - **Deadlines.** Under steady traffic the timer branch may never win, so the deadline is
//!   checked every turn, not only when the timer fires.
//! - **Sends.** Every send goes through [`send_bounded`]: a peer whose queue stays full past the
//!   send timeout is held ([`StuckPeers`]) and reported undeliverable to the machine, so the loop
//!   never waits on one peer.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use majordomo_proto::flow::StuckPeers;
use majordomo_proto::peer::Peer;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::clock;
use crate::idle::busy_wait;
use crate::timer::DeadlineTimer;
use crate::transport::{send_bounded, SendOutcome, Transport, TransportError};

/// Most messages handled from one socket before the loop sends what they caused. zmq.rs writes
/// a peer's queued messages with one flush, so batches make fewer, larger writes.
pub const RECV_BATCH: usize = 64;

/// A sans-IO server state machine, as the loop sees it. Sockets are numbered in the order they
/// were given to [`Server::new`].
pub trait Machine: Send {
    /// What [`ServerHandle::stats`] returns.
    type Stats: Send + 'static;

    /// A message arrived on socket `socket`; `frames[0]` is the sender's identity.
    fn handle_message(&mut self, now: Instant, socket: usize, frames: Vec<Bytes>);

    /// The deadline from [`Machine::poll_timeout`] has passed.
    fn handle_timeout(&mut self, now: Instant);

    /// When [`Machine::handle_timeout`] must be called next.
    fn poll_timeout(&self) -> Instant;

    /// The next message to send and its socket; `frames[0]` is the destination's identity.
    fn poll_transmit(&mut self) -> Option<(usize, Vec<Bytes>)>;

    /// The transport of socket `socket` learnt that the peer `identity` holds the CURVE key
    /// `key` (the front end proved it); by default ignored.
    fn handle_peer_key(&mut self, _socket: usize, _identity: &Bytes, _key: [u8; 32]) {}

    /// The transport of socket `socket` saw the connection of `identity` close.
    fn handle_disconnected(&mut self, _now: Instant, _socket: usize, _identity: &Bytes) {}

    /// A message to `identity` on `socket` could not be delivered (peer gone or stuck).
    fn handle_undeliverable(&mut self, now: Instant, socket: usize, identity: &Bytes);

    /// Current counters and gauges.
    fn stats(&self) -> Self::Stats;

    /// The server is stopping: queue whatever the protocol says on the way out.
    fn shutdown(&mut self);

    /// A socket read before the others at every turn that did not read it last, if any; by
    /// default none, and the sockets are read in turn.
    fn first_socket(&self) -> Option<usize> {
        None
    }

    /// Stop taking new work but finish what was taken (see [`ServerHandle::drain`]); by default
    /// nothing changes.
    fn drain(&mut self) {}

    /// Whether a drain has finished: asked to drain, the machine holds no work any more (see
    /// [`ServerHandle::drained`]). By default never, as a machine that does not drain keeps
    /// taking work until it stops.
    fn is_drained(&self) -> bool {
        false
    }
}

/// Driver settings shared by every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// How long one send may wait for room in a peer's queue (default 100 ms).
    pub send_timeout: Duration,
    /// How long a peer whose send timed out is skipped (default 5 s).
    pub stuck_hold: Duration,
    /// How long the loop keeps running after its final sends at shutdown, so the transport can
    /// flush them (default 200 ms; zmq.rs has no linger).
    pub linger: Duration,
    /// How long the loop keeps polling without sleeping after it last had work (default zero);
    /// see [`crate::idle`].
    pub busy_poll: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            send_timeout: Duration::from_millis(100),
            stuck_hold: majordomo_proto::flow::DEFAULT_HOLD,
            linger: Duration::from_millis(200),
            busy_poll: Duration::ZERO,
        }
    }
}

/// What a handle asks of the loop. The channel is unbounded: requests are rare, and a shutdown
/// must never wait for room.
enum Command<S> {
    Stats(oneshot::Sender<S>),
    Drain,
    Shutdown,
}

/// A cheap, cloneable handle on a running server: read its stats, drain it, stop it.
#[derive(Debug)]
pub struct ServerHandle<S> {
    commands: mpsc::UnboundedSender<Command<S>>,
    /// Set by the loop once a drain has finished; closed when the loop ends.
    drained: watch::Receiver<bool>,
}

impl<S> Clone for ServerHandle<S> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            drained: self.drained.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Command<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Stats(_) => "Stats",
            Command::Drain => "Drain",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl<S: Send + 'static> ServerHandle<S> {
    /// The server's counters and gauges now, read by its own loop between two turns; `None` once
    /// the server has stopped. Cancel-safe: a dropped question is answered to no one.
    pub async fn stats(&self) -> Option<S> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// Asks the server to drain: take no new work, finish what it holds, keep running until
    /// [`ServerHandle::shutdown`]. The broker then drops new client requests unanswered and
    /// serves what is queued and in flight; its stats show `draining` and what is left.
    pub fn drain(&self) {
        let _ = self.commands.send(Command::Drain);
    }

    /// Completes once the server has drained (after [`ServerHandle::drain`], it holds no work:
    /// the broker has nothing queued or in flight) or has stopped, whichever comes first. The
    /// loop says so at the end of the turn that finished the drain; nothing polls. Cancel-safe:
    /// it only watches; dropping it leaves the drain under way.
    pub async fn drained(&self) {
        let mut drained = self.drained.clone();
        // An error means the loop has ended, and with it any work the server held.
        let _ = drained.wait_for(|done| *done).await;
    }

    /// Asks the server to stop, as its shutdown future would; it stops after the turn under way.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Whether the server has stopped (its loop has ended).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }
}

/// A server loop: a machine, its sockets, and the handles' requests.
pub struct Server<M: Machine, T> {
    machine: M,
    sockets: Vec<T>,
    /// Sockets whose receive reported the transport closed for good.
    closed: Vec<bool>,
    options: ServerOptions,
    stuck: StuckPeers,
    commands: mpsc::UnboundedReceiver<Command<M::Stats>>,
    /// Where the next turn starts polling sockets.
    next_socket: usize,
    /// Whether a handle asked the machine to drain, and the drain has not finished yet.
    draining: bool,
    /// Tells the handles when the drain has finished.
    drained: watch::Sender<bool>,
}

impl<M: Machine, T> std::fmt::Debug for Server<M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sockets", &self.sockets.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What woke the loop.
enum Wake<S> {
    Shutdown,
    Command(Command<S>),
    Message(usize, Result<Vec<Bytes>, TransportError>),
    Disconnected(usize, Bytes),
    Timer,
}

/// What a socket had for the loop.
enum Inbound {
    Message(Result<Vec<Bytes>, TransportError>),
    Disconnected(Bytes),
}

impl<M: Machine, T: Transport> Server<M, T> {
    /// A server for `machine` on `sockets`, and a handle on it.
    pub fn new(
        machine: M,
        sockets: Vec<T>,
        options: ServerOptions,
    ) -> (Self, ServerHandle<M::Stats>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (drained, drained_rx) = watch::channel(false);
        let closed = vec![false; sockets.len()];
        (
            Self {
                machine,
                sockets,
                closed,
                stuck: StuckPeers::new(options.stuck_hold),
                options,
                commands: rx,
                next_socket: 0,
                draining: false,
                drained,
            },
            ServerHandle {
                commands: tx,
                drained: drained_rx,
            },
        )
    }

    /// The machine, for reading its state before the server runs.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Serves until `shutdown` completes or a handle asks it to stop; then lets the machine say
    /// goodbye, sends that, lingers, and returns the machine.
    ///
    /// Dropping the future drops the server at once, without the goodbye or the linger: stop
    /// it through `shutdown` or [`ServerHandle::shutdown`] instead.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> M {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut timer = DeadlineTimer::new(self.machine.poll_timeout());
        loop {
            timer.set(self.machine.poll_timeout());
            let start = self.next_socket;
            // The machine's first socket goes first only at a turn that did not read it last
            // (the last message's socket is the one before `next_socket`), so that a flood on it
            // cannot keep the others unread.
            let first = self
                .machine
                .first_socket()
                .filter(|&first| (first + 1) % self.sockets.len() != start);
            let wait = async {
                tokio::select! {
                    biased;
                    // Cancel-safe: a future that has not completed has no effect.
                    () = &mut shutdown => Wake::Shutdown,
                    // mpsc's recv is cancel-safe; with every handle dropped the branch is off.
                    Some(command) = self.commands.recv() => Wake::Command(command),
                    // Every socket's recv is cancel-safe (see `Transport::recv`).
                    (socket, inbound) = recv_any(&mut self.sockets, &self.closed, start, first) => match inbound {
                        Inbound::Message(msg) => Wake::Message(socket, msg),
                        Inbound::Disconnected(identity) => Wake::Disconnected(socket, identity),
                    },
                    // A timer: dropping it unfired loses nothing.
                    () = timer.wait() => Wake::Timer,
                }
            };
            let wake = busy_wait(wait, self.options.busy_poll).await;
            // One read of the clock per wake-up.
            let now = clock::now();
            let full_batch = match wake {
                Wake::Shutdown | Wake::Command(Command::Shutdown) => break,
                Wake::Command(Command::Stats(reply)) => {
                    let _ = reply.send(self.machine.stats());
                    false
                }
                Wake::Command(Command::Drain) => {
                    self.machine.drain();
                    self.draining = !*self.drained.borrow();
                    false
                }
                Wake::Message(socket, msg) => {
                    self.next_socket = (socket + 1) % self.sockets.len();
                    self.on_batch(now, socket, msg)
                }
                Wake::Disconnected(socket, identity) => {
                    self.machine.handle_disconnected(now, socket, &identity);
                    false
                }
                Wake::Timer => false,
            };
            if now >= self.machine.poll_timeout() {
                self.machine.handle_timeout(now);
            }
            self.flush(now).await;
            // Checked once the turn's work is done, and only while a drain is under way.
            if self.draining && self.machine.is_drained() {
                self.draining = false;
                self.drained.send_replace(true);
            }
            if full_batch {
                tokio::task::yield_now().await;
            }
        }
        self.machine.shutdown();
        self.flush(clock::now()).await;
        tokio::time::sleep(self.options.linger).await;
        for socket in &mut self.sockets {
            socket.close().await;
        }
        self.machine
    }

    /// Handles `msg`, then whatever else socket `socket` already has (up to a batch). Returns
    /// whether the batch was full, which means more is probably waiting.
    fn on_batch(
        &mut self,
        now: Instant,
        socket: usize,
        msg: Result<Vec<Bytes>, TransportError>,
    ) -> bool {
        self.on_recv(now, socket, msg);
        for _ in 1..RECV_BATCH {
            // Polled once: a pending receive is dropped, which a cancel-safe recv allows.
            match self.sockets[socket].recv().now_or_never() {
                Some(msg) => self.on_recv(now, socket, msg),
                None => return false,
            }
        }
        true
    }

    fn on_recv(&mut self, now: Instant, socket: usize, msg: Result<Vec<Bytes>, TransportError>) {
        // Keys learnt with this message's arrival go first: a peer's key is known before its
        // first message is handled.
        while let Some((identity, key)) = self.sockets[socket].take_peer_key() {
            self.machine.handle_peer_key(socket, &identity, key);
        }
        match msg {
            Ok(frames) => self.machine.handle_message(now, socket, frames),
            Err(TransportError::Closed) => {
                debug!(socket, "transport closed");
                self.closed[socket] = true;
            }
            Err(error) => debug!(socket, %error, "receive failed"),
        }
    }

    /// Sends everything the machine queued, never waiting longer than the send timeout on one
    /// peer.
    async fn flush(&mut self, mut now: Instant) {
        while let Some((socket, frames)) = self.machine.poll_transmit() {
            let Some(identity) = frames.first().cloned() else {
                continue;
            };
            if self.stuck.is_held(now, &identity) {
                debug!(peer = %Peer(&identity), "peer not reading, message dropped");
                self.machine.handle_undeliverable(now, socket, &identity);
                continue;
            }
            match send_bounded(&mut self.sockets[socket], frames, self.options.send_timeout).await {
                SendOutcome::Sent => {}
                SendOutcome::Failed(error) => {
                    debug!(peer = %Peer(&identity), %error, "send failed");
                    self.machine.handle_undeliverable(now, socket, &identity);
                }
                SendOutcome::TimedOut => {
                    // The send waited: time has moved.
                    now = clock::now();
                    warn!(
                        peer = %Peer(&identity),
                        hold_s = self.stuck.hold().as_secs(),
                        "peer queue full past the send timeout: dropping this and further messages to it"
                    );
                    self.stuck.stuck(now, identity.clone());
                    self.machine.handle_undeliverable(now, socket, &identity);
                }
            }
        }
    }
}

/// Takes from the first socket that has a message or a closed connection, polling `first` (if
/// any) and then the others in turn from `start`.
fn recv_any<'a, T: Transport>(
    sockets: &'a mut [T],
    closed: &'a [bool],
    start: usize,
    first: Option<usize>,
) -> impl Future<Output = (usize, Inbound)> + 'a {
    std::future::poll_fn(move |cx| {
        let n = sockets.len();
        let others = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| Some(i) != first);
        for i in first.into_iter().chain(others) {
            if closed[i] {
                continue;
            }
            {
                let recv = std::pin::pin!(sockets[i].recv());
                if let Poll::Ready(msg) = recv.poll(cx) {
                    return Poll::Ready((i, Inbound::Message(msg)));
                }
            }
            if let Poll::Ready(identity) = sockets[i].poll_disconnected(cx) {
                return Poll::Ready((i, Inbound::Disconnected(identity)));
            }
        }
        Poll::Pending
    })
}
