//! The event loop of a worker-side peer (the 7/MDP worker, the 6/PPP worker): connect, drive a
//! [`Session`] and its handler, reconnect with backoff.
//!
//! [`run`] opens a connection, creates a session on it (which queues READY) and serves until the
//! session ends; then, unless it was shutting down, opens a new connection: at once after a
//! failed handler ([`SessionEnd::HandlerFailed`]), after a backoff otherwise (1 s doubling to
//! 32 s by default, reset whenever the other side is heard from). The handler's future is polled
//! in the loop next to the socket and the heartbeat timer, so heartbeats keep flowing while it
//! runs without a task per request; a panic in it is caught and reported as a failure.
//!
//! A handler gets a [`Responder`] with its request, to send parts of its answer before the last
//! one; the loop hands them to the session in order, before the answer.
//!
//! zmq.rs keeps, per connection, buffers as large as the largest message it carried. With
//! [`PeerOptions::fresh_connection_above`], a request whose request and answer together pass
//! that size ends its session once answered (the session says goodbye as at shutdown) and the
//! peer registers again at once on a new connection, so those buffers go with the old one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{Fuse, FusedFuture};
use futures::FutureExt;
use majordomo_proto::heartbeat::{Backoff, HeartbeatConfig};
use majordomo_proto::session::{Session, SessionEnd, WorkerEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock;
use crate::idle::busy_wait;
use crate::timer::DeadlineTimer;
use crate::transport::{send_bounded, Connector, SendOutcome, Transport, TransportError};

/// The error type handlers return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Driver settings of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOptions {
    /// The session's heartbeat: connecting may take one liveness period (`interval *
    /// liveness`), one send one interval.
    pub heartbeat: HeartbeatConfig,
    /// First reconnect delay (default 1 s).
    pub reconnect_initial: Duration,
    /// Largest reconnect delay (default 32 s).
    pub reconnect_max: Duration,
    /// Busy-poll window (default zero); see [`crate::idle`].
    pub busy_poll: Duration,
    /// How long to keep a connection open after the last message of a session that said goodbye
    /// (default 50 ms; zmq.rs has no linger).
    pub linger: Duration,
    /// Past this many bytes of request and answer (frames' payload, parts included), the
    /// session ends once the answer is sent and a new connection is opened at once (default
    /// `None`: connections are kept). zmq.rs keeps a read and a write buffer as large as the
    /// largest message a connection carried, for as long as it lives: a peer that sometimes
    /// carries large messages on many connections otherwise holds one such buffer per
    /// connection.
    pub fresh_connection_above: Option<usize>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            busy_poll: Duration::ZERO,
            linger: Duration::from_millis(50),
            fresh_connection_above: None,
        }
    }
}

/// How many parts a handler may have sent that the loop has not taken yet; a handler that
/// sends faster than the connection carries waits in [`Responder::send`].
const PARTS_IN_FLIGHT: usize = 16;

/// Sends parts of an answer before the last one (18/MDP's PARTIALs), for the request it came
/// with. A session that has one reply per request (7/MDP, 6/PPP) sends the parts' frames in
/// front of the answer's.
#[derive(Debug)]
pub struct Responder {
    request: u64,
    current: Arc<AtomicU64>,
    parts: mpsc::Sender<(u64, Vec<Bytes>)>,
}

/// The request a [`Responder`] was for is over (answered, failed, or its connection ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request is over; the part was not sent")]
pub struct RequestOver;

impl Responder {
    /// Sends `body` as the next part, in order. Waits while the connection is behind (at most
    /// a few parts are held); fails once the request is over. Cancel-safe: dropped before it
    /// completes, the part was not sent.
    pub async fn send(&mut self, body: Vec<Bytes>) -> Result<(), RequestOver> {
        if !self.is_current() {
            return Err(RequestOver);
        }
        self.parts
            .send((self.request, body))
            .await
            .map_err(|_| RequestOver)?;
        // Taken after the request ended, the part is dropped: say so.
        if self.is_current() {
            Ok(())
        } else {
            Err(RequestOver)
        }
    }

    /// Whether the request is still in flight.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire) == self.request
    }
}

/// The parts channel of a peer, shared by its sessions: one per [`run`], so a request costs no
/// allocation for it. Parts carry their request's number; the number of the request in flight
/// is in `current` (zero between requests), and parts of any other are dropped.
struct Parts {
    next: u64,
    /// Payload bytes of the parts handed to the session for the request in flight.
    bytes: usize,
    current: Arc<AtomicU64>,
    tx: mpsc::Sender<(u64, Vec<Bytes>)>,
    rx: mpsc::Receiver<(u64, Vec<Bytes>)>,
}

impl Parts {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(PARTS_IN_FLIGHT);
        Self {
            next: 0,
            bytes: 0,
            current: Arc::new(AtomicU64::new(0)),
            tx,
            rx,
        }
    }

    /// A responder for a new request, now the one in flight.
    fn start(&mut self) -> Responder {
        self.next += 1;
        self.bytes = 0;
        self.current.store(self.next, Ordering::Release);
        Responder {
            request: self.next,
            current: self.current.clone(),
            parts: self.tx.clone(),
        }
    }

    /// The request in flight is over: its responder's later parts are refused.
    fn finish(&mut self) {
        self.current.store(0, Ordering::Release);
    }

    /// Hands the parts already sent for the request in flight to the session, in order.
    fn drain<S: Session>(&mut self, now: Instant, session: &mut S) {
        while let Ok((request, body)) = self.rx.try_recv() {
            self.hand(now, session, request, body);
        }
    }

    /// Hands one part to the session if it is of the request in flight (a part of an earlier
    /// request, sent after that request was over, is dropped).
    fn hand<S: Session>(&mut self, now: Instant, session: &mut S, request: u64, body: Vec<Bytes>) {
        if request == self.next {
            self.bytes += payload(&body);
            session.handle_partial(now, body);
        }
    }
}

/// Payload bytes of a message's frames.
fn payload(frames: &[Bytes]) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// How a session's connection was left.
enum Served {
    /// The session ended.
    Ended(SessionEnd),
    /// It carried more than [`PeerOptions::fresh_connection_above`]: it said goodbye, and the
    /// peer goes on at once on a new connection.
    Fresh,
}

/// What woke a session's loop.
enum Wake<J> {
    Cancelled,
    Message(Result<Vec<Bytes>, TransportError>),
    Part(Option<(u64, Vec<Bytes>)>),
    Job(J),
    Timer,
}

/// Connects through `connector` and serves sessions made by `make_session` until `cancel` is
/// cancelled; `start` turns each request body and its [`Responder`] into the handler's future.
pub async fn run<C, S, MK, F, Fut>(
    connector: &C,
    mut make_session: MK,
    mut start: F,
    options: PeerOptions,
    cancel: &CancellationToken,
) where
    C: Connector,
    S: Session,
    MK: FnMut(Instant) -> S,
    F: FnMut(Vec<Bytes>, Responder) -> Fut,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>>,
{
    let mut parts = Parts::new();
    let mut backoff = Backoff::new(options.reconnect_initial, options.reconnect_max);
    while !cancel.is_cancelled() {
        let connected = tokio::select! {
            () = cancel.cancelled() => break,
            result = connector.connect(options.heartbeat.expiry()) => result,
        };
        let end = match connected {
            Ok(mut conn) => {
                info!(endpoint = %connector.describe(), "connected");
                let mut session = make_session(clock::now());
                let served = serve(
                    &mut conn,
                    &mut session,
                    &mut start,
                    &mut parts,
                    &options,
                    cancel,
                    &mut backoff,
                )
                .await;
                match served {
                    Served::Ended(end) => end,
                    Served::Fresh => {
                        // Dropped here: zmq.rs still writes what was queued on it, then frees
                        // its buffers.
                        debug!("large request answered: registering again on a new connection");
                        continue;
                    }
                }
            }
            Err(error) => {
                warn!(endpoint = %connector.describe(), %error, "cannot connect");
                SessionEnd::BrokerSilent
            }
        };
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::HandlerFailed => continue,
            SessionEnd::BrokerSilent | SessionEnd::Disconnected => {
                let delay = backoff.next_delay();
                info!(delay_ms = delay.as_millis() as u64, "reconnecting");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    debug!("peer stopped");
}

/// Serves one session on one connection until it ends.
async fn serve<T, S, F, Fut>(
    conn: &mut T,
    session: &mut S,
    start: &mut F,
    parts: &mut Parts,
    options: &PeerOptions,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Served
where
    T: Transport,
    S: Session,
    F: FnMut(Vec<Bytes>, Responder) -> Fut,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>>,
{
    let mut job = std::pin::pin!(Fuse::terminated());
    let mut timer = DeadlineTimer::new(session.poll_timeout());
    // Payload bytes of the request in flight and its answer so far.
    let mut carried = 0;
    let mut fresh = false;
    let end = loop {
        if !flush(conn, session, options.heartbeat.interval).await {
            warn!("connection lost while sending");
            break SessionEnd::BrokerSilent;
        }
        if let Some(end) = session.ended() {
            break end;
        }
        if fresh {
            // The answer is queued: say goodbye after it, as at shutdown.
            session.shutdown();
            continue;
        }
        timer.set(session.poll_timeout());
        let wait = async {
            tokio::select! {
                // Cancellation and timers are cancel-safe.
                () = cancel.cancelled() => Wake::Cancelled,
                // `Transport::recv` is cancel-safe: a message is returned or stays queued.
                msg = conn.recv() => Wake::Message(msg),
                // `mpsc::Receiver::recv` is cancel-safe.
                part = parts.rx.recv(), if !job.is_terminated() => Wake::Part(part),
                // Polled by reference, so an unfinished handler survives the other branches.
                out = job.as_mut(), if !job.is_terminated() => Wake::Job(out),
                () = timer.wait() => Wake::Timer,
            }
        };
        let wake = busy_wait(wait, options.busy_poll).await;
        // One read of the clock per wake-up.
        let now = clock::now();
        let event = match wake {
            Wake::Cancelled => {
                // A handler that has finished is answered before the goodbye.
                if !job.is_terminated() {
                    if let Some(outcome) = job.as_mut().now_or_never() {
                        let _ = finish(now, session, parts, outcome);
                    }
                }
                session.shutdown()
            }
            Wake::Message(Ok(frames)) => {
                backoff.reset();
                session.handle_message(now, &frames)
            }
            Wake::Message(Err(error)) => {
                warn!(%error, "connection lost");
                break SessionEnd::BrokerSilent;
            }
            Wake::Part(Some((request, body))) => {
                parts.hand(now, session, request, body);
                None
            }
            // The peer holds a sender: never closed.
            Wake::Part(None) => None,
            Wake::Job(outcome) => {
                if let Ok(Ok(body)) = &outcome {
                    carried += payload(body);
                }
                let event = finish(now, session, parts, outcome);
                carried += parts.bytes;
                fresh = options
                    .fresh_connection_above
                    .is_some_and(|above| carried > above)
                    && session.ended().is_none();
                event
            }
            Wake::Timer => session.handle_timeout(now),
        };
        if let Some(WorkerEvent::Request(body)) = event {
            carried = payload(&body);
            let responder = parts.start();
            job.set(
                AssertUnwindSafe(start(body, responder))
                    .catch_unwind()
                    .fuse(),
            );
        }
    };
    // Dropping an unfinished job cancels the handler.
    job.set(Fuse::terminated());
    parts.finish();
    if matches!(end, SessionEnd::Shutdown | SessionEnd::HandlerFailed) {
        // Flush the goodbye, then give the transport a moment to write it.
        let _ = flush(conn, session, options.heartbeat.interval).await;
        tokio::time::sleep(options.linger).await;
    }
    if fresh && end == SessionEnd::Shutdown && !cancel.is_cancelled() {
        return Served::Fresh;
    }
    Served::Ended(end)
}

/// What a handler's future ended with: its answer, its error, or its panic.
type Outcome = Result<Result<Vec<Bytes>, BoxError>, Box<dyn std::any::Any + Send>>;

/// Hands a finished handler's outcome to the session: the parts it sent first, then its answer.
fn finish<S: Session>(
    now: Instant,
    session: &mut S,
    parts: &mut Parts,
    outcome: Outcome,
) -> Option<WorkerEvent> {
    parts.drain(now, session);
    parts.finish();
    match outcome {
        Ok(Ok(body)) => {
            session.handle_reply(now, body);
            None
        }
        Ok(Err(error)) => {
            warn!(%error, "handler failed; request dropped");
            session.handle_failure(now)
        }
        Err(_) => {
            warn!("handler panicked; request dropped");
            session.handle_failure(now)
        }
    }
}

/// Sends what the session queued; false if the connection failed.
async fn flush<T: Transport, S: Session>(conn: &mut T, session: &mut S, timeout: Duration) -> bool {
    while let Some(frames) = session.poll_transmit() {
        if !matches!(send_bounded(conn, frames, timeout).await, SendOutcome::Sent) {
            return false;
        }
    }
    true
}
