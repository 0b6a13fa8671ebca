//! The Simple and Paranoid Pirate queues (the Guide's spqueue and ppqueue, 6/PPP) as a state
//! machine with no sockets and no clock.
//!
//! The queue has a frontend ROUTER for clients (REQ or Lazy Pirate clients) and a backend ROUTER
//! for workers. Workers announce READY (`0x01`); requests go to the least-recently-used idle
//! worker; the reply goes back to the client. With heartbeats configured (Paranoid Pirate), both
//! sides send HEARTBEAT (`0x02`) and the queue expires workers silent for `liveness` intervals.
//! Without (Simple Pirate), workers are REQ sockets that send only READY and replies.
//!
//! Beyond the Guide's queues: a worker that sends READY again is not counted twice (it restarted
//! its conversation: whatever it held goes back to the queue); the request held by a worker that
//! expired is re-queued for another worker; requests wait in a bounded queue with an expiry
//! instead of the frontend being left unread.
//!
//! Like the Guide's ppqueue, a Paranoid Pirate queue takes a worker it does not know back on its
//! HEARTBEAT, without waiting for READY: after a queue restart, a worker whose socket reconnected
//! by itself is served again at once instead of after its own liveness runs out. A reply from a
//! worker the queue does not know (it restarted, or expired the worker) is stale, not a protocol
//! error: it is counted and dropped.
//!
//! Calling order as for [`crate::broker::BrokerCore`]: `handle_*` with `now`, then drain
//! [`PirateQueue::poll_transmit`] and [`PirateQueue::poll_event`], and call [`PirateQueue::handle_timeout`] at
//! [`PirateQueue::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::drops::{DropLog, DropReason, ErrorLog};
use crate::event::Event;
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::peer::Peer;
use crate::ppp::{Envelope, PppMessage};
use crate::redelivery::{Deliveries, Redelivery};

/// How the queue's drops are named in their log summaries (it has no services).
const DROPS_KEY: Bytes = Bytes::from_static(b"(queue)");
use crate::{ConfigError, DecodeError, Limits};

/// Bytes each waiting request is counted for beyond its frames ([`crate::broker::frames_cost`],
/// which counts each frame's overhead and the slack zmq.rs keeps after a large one) and its
/// client's address: its entry in the queue and its client address's handle.
pub const QUEUED_REQUEST_OVERHEAD: usize = 192;

/// Queue behaviour and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// `Some` for a Paranoid Pirate queue (6/PPP reference: 1 s, liveness 3); `None` for a Simple
    /// Pirate queue, whose workers never heartbeat and are never expired.
    pub heartbeat: Option<HeartbeatConfig>,
    /// How long a request may wait for a worker before it is dropped (default 10 s). Checked at
    /// each heartbeat interval (each second without heartbeats), so a request may wait up to one
    /// interval longer.
    pub request_expiry: Duration,
    /// Most requests waiting for a worker (default 10,000); more are dropped and logged.
    pub max_queued: usize,
    /// Most bytes waiting for a worker (default 1 GiB): each request's frames
    /// ([`crate::broker::frames_cost`]), its client's address and [`QUEUED_REQUEST_OVERHEAD`]. Past it, new requests are dropped and logged; a
    /// request handed back by a worker that went away is taken back even past it.
    pub max_queued_bytes: usize,
    /// How many workers one request may be given to before it is dropped (default 3).
    pub max_deliveries: u32,
    /// Size limits; larger messages are dropped.
    pub limits: Limits,
}

impl QueueConfig {
    /// Sets `heartbeat`; the field says what it means and its default.
    pub fn heartbeat(mut self, heartbeat: Option<HeartbeatConfig>) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets `request_expiry`; the field says what it means and its default.
    pub fn request_expiry(mut self, request_expiry: Duration) -> Self {
        self.request_expiry = request_expiry;
        self
    }

    /// Sets `max_queued`; the field says what it means and its default.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Sets `max_queued_bytes`; the field says what it means and its default.
    pub fn max_queued_bytes(mut self, max_queued_bytes: usize) -> Self {
        self.max_queued_bytes = max_queued_bytes;
        self
    }

    /// Sets `max_deliveries`; the field says what it means and its default.
    pub fn max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// Sets `limits`; the field says what it means and its default.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

impl QueueConfig {
    /// A Paranoid Pirate queue with the 6/PPP reference heartbeat: 1 s interval, liveness 3.
    pub fn paranoid() -> Self {
        Self {
            heartbeat: Some(HeartbeatConfig {
                interval: Duration::from_secs(1),
                liveness: 3,
            }),
            ..Self::simple()
        }
    }

    /// A Simple Pirate queue: no heartbeats.
    pub fn simple() -> Self {
        Self {
            heartbeat: None,
            request_expiry: Duration::from_secs(10),
            max_queued: 10_000,
            max_queued_bytes: 1024 * 1024 * 1024,
            max_deliveries: 3,
            limits: Limits::default(),
        }
    }
}

impl QueueConfig {
    /// Checks the settings a queue cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(hb) = &self.heartbeat {
            hb.validate()?;
        }
        Ok(())
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self::paranoid()
    }
}

/// Which ROUTER socket a [`QueueTransmit`] leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The clients' socket.
    Frontend,
    /// The workers' socket.
    Backend,
}

/// A message to send; `frames[0]` is the destination's ROUTER identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTransmit {
    /// The socket to send on.
    pub side: Side,
    /// Identity first, then the frames.
    pub frames: Vec<Bytes>,
}

/// Counters and gauges of a queue.
///
/// Every request is accounted for: `requests == replies + lost_replies + queued + in_flight +
/// expired + rejected + abandoned + dropped_at_shutdown` holds between calls. A reply counts in `replies` when the queue
/// hands it to the driver, and moves to `lost_replies` when the driver reports that it could not
/// be sent ([`PirateQueue::handle_undeliverable`] on [`Side::Frontend`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Registered workers.
    pub workers: usize,
    /// Workers waiting for a request.
    pub idle_workers: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Bytes they are counted for (see [`QueueConfig::max_queued_bytes`]).
    pub queued_bytes: usize,
    /// Requests with a worker, not yet answered.
    pub in_flight: usize,
    /// Requests accepted from clients.
    pub requests: u64,
    /// Replies handed to the driver for their clients and not reported undeliverable.
    pub replies: u64,
    /// Replies the driver could not send to their client (the client is gone, or not reading).
    pub lost_replies: u64,
    /// Requests dropped after waiting past the expiry.
    pub expired: u64,
    /// Requests dropped at the queue bound.
    pub rejected: u64,
    /// Requests handed back to the queue after their worker went away or started over.
    pub requeued: u64,
    /// Requests dropped after `max_deliveries` workers went away holding them.
    pub abandoned: u64,
    /// Workers expired for silence.
    pub expired_workers: u64,
    /// Workers registered on a HEARTBEAT, without READY (Paranoid Pirate only): workers of an
    /// earlier queue on the same endpoint, or expired ones that were still alive.
    pub rejoined_workers: u64,
    /// Replies dropped because they answer nothing this queue gave the worker: from a worker it
    /// does not know, or the first reply of a rejoined worker that does not answer what it holds.
    /// Not protocol errors: the worker is late, not wrong.
    pub stale_replies: u64,
    /// Malformed or unexpected messages dropped.
    pub protocol_errors: u64,
    /// Messages the driver reported it could not deliver, to workers and clients.
    pub undeliverable: u64,
    /// Requests still queued or in flight when the queue stopped ([`PirateQueue::shutdown`]),
    /// dropped unanswered (`majordomo_dropped_requests_total{reason="drain"}`).
    pub dropped_at_shutdown: u64,
}

#[derive(Debug)]
struct Request {
    /// The client's ROUTER identity.
    client: Bytes,
    /// Whether the client put an empty delimiter before its body (REQ does).
    delimited: bool,
    body: Vec<Bytes>,
    /// Bytes counted against [`QueueConfig::max_queued_bytes`] while it waits.
    size: usize,
    expires_at: Instant,
    deliveries: Deliveries,
}

#[derive(Debug)]
struct Worker {
    /// REQ workers (Simple Pirate) put an empty frame before everything they send and expect one
    /// before everything they receive.
    req_socket: bool,
    heartbeat: Option<Heartbeat>,
    in_flight: Option<Request>,
    /// Registered on a HEARTBEAT rather than READY: it may still be finishing a request it got
    /// before (from an earlier queue, or before it was expired), so its first reply that does not
    /// answer what it holds is stale. Cleared by READY and by its first reply.
    rejoined: bool,
}

/// The Pirate queue's whole state.
#[derive(Debug)]
pub struct PirateQueue {
    config: QueueConfig,
    workers: HashMap<Bytes, Worker>,
    /// Idle workers, least recently used first; each at most once.
    idle: VecDeque<Bytes>,
    /// Requests waiting, oldest first (re-queued ones go to the front).
    queue: VecDeque<Request>,
    /// Bytes the waiting requests are counted for.
    queued_bytes: usize,
    next_tick: Instant,
    transmits: VecDeque<QueueTransmit>,
    stats: QueueStats,
    drops: DropLog,
    /// Rate-limited log of protocol errors, and their events.
    errors: ErrorLog,
}

impl PirateQueue {
    /// An empty queue, its clock starting at `now`.
    pub fn new(now: Instant, config: QueueConfig) -> Self {
        let tick = config
            .heartbeat
            .map_or(Duration::from_secs(1), |hb| hb.interval);
        Self {
            next_tick: now + tick,
            config,
            workers: HashMap::new(),
            idle: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            transmits: VecDeque::new(),
            stats: QueueStats::default(),
            drops: DropLog::default(),
            errors: ErrorLog::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            workers: self.workers.len(),
            idle_workers: self.idle.len(),
            queued: self.queue.len(),
            queued_bytes: self.queued_bytes,
            in_flight: self
                .workers
                .values()
                .filter(|w| w.in_flight.is_some())
                .count(),
            ..self.stats.clone()
        }
    }

    /// The queue is stopping: what is queued or in flight is dropped unanswered, counted in
    /// [`QueueStats::dropped_at_shutdown`], reported as one [`Event::DroppedMany`]
    /// ([`DropReason::Drain`]) and logged in one line. Workers stay registered (6/PPP has no
    /// goodbye).
    pub fn shutdown(&mut self) {
        let queued = self.queue.len();
        let mut in_flight = 0;
        for worker in self.workers.values_mut() {
            in_flight += usize::from(worker.in_flight.take().is_some());
        }
        self.queue.clear();
        self.queued_bytes = 0;
        let dropped = (queued + in_flight) as u64;
        if dropped > 0 {
            self.stats.dropped_at_shutdown += dropped;
            self.drops.record_many(DropReason::Drain, dropped);
            warn!(
                queued,
                in_flight, "stopping: requests still held are dropped unanswered"
            );
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<QueueTransmit> {
        self.transmits.pop_front()
    }

    /// The next thing that happened for the driver to count (drops and protocol errors); poll
    /// after each call.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.errors.poll_event().or_else(|| self.drops.poll_event())
    }

    /// When [`PirateQueue::handle_timeout`] must be called next: at each heartbeat interval (each
    /// second without heartbeats), which is also when waiting requests are checked for expiry.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// A message from the frontend: `[client identity, (empty,) body...]`.
    pub fn handle_frontend(&mut self, now: Instant, frames: &[Bytes]) -> Result<(), DecodeError> {
        let checked = self
            .config
            .limits
            .check(frames)
            .and_then(|()| match frames {
                [] => Err(DecodeError::Empty),
                [_] => Err(DecodeError::MissingIdentity),
                [client, first, body @ ..] if first.is_empty() => {
                    if body.is_empty() {
                        Err(DecodeError::MissingBody)
                    } else {
                        Ok((client.clone(), true, body.to_vec()))
                    }
                }
                [client, body @ ..] => Ok((client.clone(), false, body.to_vec())),
            });
        let (client, delimited, body) = match checked {
            Ok(parts) => parts,
            Err(error) => {
                self.stats.protocol_errors += 1;
                let peer = frames.first().cloned().unwrap_or_default();
                self.errors.record(
                    now,
                    &peer,
                    error.kind(),
                    "invalid client message dropped",
                    &error,
                );
                return Err(error);
            }
        };
        self.stats.requests += 1;
        let size = QUEUED_REQUEST_OVERHEAD + client.len() + crate::broker::frames_cost(&body);
        let bound = if self.queue.len() >= self.config.max_queued {
            Some(DropReason::TotalCount)
        } else if self.queued_bytes + size > self.config.max_queued_bytes {
            Some(DropReason::TotalBytes)
        } else {
            None
        };
        if let Some(reason) = bound {
            self.stats.rejected += 1;
            debug!(client = %Peer(&client), queued = self.queue.len(), queued_bytes = self.queued_bytes, %reason, "queue full, request dropped");
            self.drops.record(now, &DROPS_KEY, reason);
            return Ok(());
        }
        self.queued_bytes += size;
        self.queue.push_back(Request {
            client,
            delimited,
            body,
            size,
            expires_at: now + self.config.request_expiry,
            deliveries: Deliveries::default(),
        });
        self.dispatch(now);
        Ok(())
    }

    /// A message from the backend: `[worker identity, ...]`, a 6/PPP command or reply, preceded by
    /// an empty frame when the worker is a REQ socket.
    pub fn handle_backend(&mut self, now: Instant, frames: &[Bytes]) -> Result<(), DecodeError> {
        let (identity, rest) = match crate::mdp::split_identity(frames) {
            Ok(split) => split,
            Err(error) => {
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    &Bytes::new(),
                    error.kind(),
                    "invalid worker message dropped",
                    &error,
                );
                return Err(error);
            }
        };
        let (req_socket, rest) = match rest {
            [first, tail @ ..] if first.is_empty() && !tail.is_empty() => (true, tail),
            _ => (false, rest),
        };
        let message = match PppMessage::decode(rest, &self.config.limits) {
            Ok(message) => message,
            Err(error) => {
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    identity,
                    error.kind(),
                    "invalid worker message dropped",
                    &error,
                );
                return Err(error);
            }
        };
        let identity = identity.clone();
        if let Some(worker) = self.workers.get_mut(&identity) {
            if let Some(hb) = worker.heartbeat.as_mut() {
                hb.on_recv(now);
            }
        }
        match message {
            PppMessage::Ready => self.on_ready(now, identity, req_socket),
            PppMessage::Heartbeat => self.on_heartbeat(now, identity, req_socket),
            PppMessage::Payload(envelope) => self.on_reply(now, identity, envelope),
        }
        Ok(())
    }

    fn on_ready(&mut self, now: Instant, identity: Bytes, req_socket: bool) {
        if let Some(worker) = self.workers.get_mut(&identity) {
            // A known worker starting over: not a second worker. Whatever it held is lost to it.
            debug!(worker = %Peer(&identity), "worker sent READY again");
            worker.req_socket = req_socket;
            worker.rejoined = false;
            let lost = worker.in_flight.take();
            if let Some(request) = lost {
                self.requeue(now, request);
            }
            if !self.idle.contains(&identity) {
                self.idle.push_back(identity);
            }
        } else {
            info!(worker = %Peer(&identity), "worker ready");
            self.register(now, identity, req_socket, false);
        }
        self.dispatch(now);
    }

    fn on_heartbeat(&mut self, now: Instant, identity: Bytes, req_socket: bool) {
        if self.workers.contains_key(&identity) {
            return;
        }
        if self.config.heartbeat.is_none() {
            // Simple Pirate workers never heartbeat, and a worker registered here would never be
            // expired.
            debug!(worker = %Peer(&identity), "heartbeat from unknown worker ignored");
            return;
        }
        // Not registered: the queue restarted, or expired the worker while it was still alive.
        // As the Guide's ppqueue does, take it back now rather than when it gives up on us and
        // sends READY.
        info!(worker = %Peer(&identity), "heartbeat from unknown worker: taken back");
        self.stats.rejoined_workers += 1;
        self.register(now, identity, req_socket, true);
        self.dispatch(now);
    }

    fn on_reply(&mut self, now: Instant, identity: Bytes, envelope: Envelope) {
        let Envelope { address, body } = envelope;
        let Some(worker) = self.workers.get_mut(&identity) else {
            self.stats.stale_replies += 1;
            debug!(worker = %Peer(&identity), "reply from unknown worker dropped");
            return;
        };
        let rejoined = std::mem::take(&mut worker.rejoined);
        match worker.in_flight.take() {
            Some(request) if address.first() == Some(&request.client) => {
                let mut out = Vec::with_capacity(2 + body.len());
                out.push(request.client);
                if request.delimited {
                    out.push(Bytes::new());
                }
                out.extend(body);
                self.stats.replies += 1;
                self.transmits.push_back(QueueTransmit {
                    side: Side::Frontend,
                    frames: out,
                });
                self.idle.push_back(identity);
                self.dispatch(now);
            }
            held if rejoined => {
                // The answer to a request from before it rejoined. If we gave it one meanwhile, it
                // was busy then and may have dropped it (as `PppWorker` does): it goes to the next
                // worker rather than waiting for an answer that may never come.
                self.stats.stale_replies += 1;
                debug!(worker = %Peer(&identity), "reply from before the worker rejoined dropped");
                if let Some(request) = held {
                    self.idle.push_back(identity);
                    self.requeue(now, request);
                }
                self.dispatch(now);
            }
            held => {
                worker.in_flight = held;
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    &identity,
                    "reply_without_request",
                    "reply for no request in flight dropped",
                    &"no request in flight",
                );
            }
        }
    }

    fn register(&mut self, now: Instant, identity: Bytes, req_socket: bool, rejoined: bool) {
        self.workers.insert(
            identity.clone(),
            Worker {
                req_socket,
                heartbeat: self.config.heartbeat.map(|hb| Heartbeat::new(now, hb)),
                in_flight: None,
                rejoined,
            },
        );
        self.idle.push_back(identity);
    }

    /// Reports that a message the queue handed out could not be sent (the peer is gone, or its
    /// queue stayed full past the send timeout). A worker is dropped and its request re-queued.
    /// The queue sends clients nothing but replies, so a report on [`Side::Frontend`] is a reply
    /// lost: it moves from `replies` to `lost_replies` (the client retries on its own timeout).
    pub fn handle_undeliverable(&mut self, now: Instant, side: Side, identity: &Bytes) {
        self.stats.undeliverable += 1;
        match side {
            Side::Backend => {
                if self.workers.contains_key(identity) {
                    info!(worker = %Peer(identity), "worker unreachable, removing");
                    self.remove_worker(now, identity);
                }
            }
            Side::Frontend => {
                // Only a report with no reply counted could find none to move.
                if self.stats.replies > 0 {
                    self.stats.replies -= 1;
                    self.stats.lost_replies += 1;
                }
                debug!(client = %Peer(identity), "reply undeliverable, client gone");
            }
        }
    }

    /// Expires requests and, with heartbeats, heartbeats workers and expires silent ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        let before = self.queue.len();
        let mut freed = 0;
        self.queue.retain(|r| {
            let keep = r.expires_at > now;
            if !keep {
                freed += r.size;
            }
            keep
        });
        self.queued_bytes -= freed;
        let expired = before - self.queue.len();
        if expired > 0 {
            self.stats.expired += expired as u64;
            debug!(expired, "requests expired waiting for a worker");
            for _ in 0..expired {
                self.drops.record(now, &DROPS_KEY, DropReason::NoWorker);
            }
        }
        // Drop summaries are due at most a second apart; the tick is at most that far away.
        self.drops.handle_timeout(now);
        self.errors.handle_timeout(now);
        let Some(hb) = self.config.heartbeat else {
            self.next_tick = now + Duration::from_secs(1);
            return;
        };
        self.next_tick = now + hb.interval;
        let dead: Vec<Bytes> = self
            .workers
            .iter()
            .filter(|(_, w)| w.heartbeat.as_ref().is_some_and(|h| h.is_peer_dead(now)))
            .map(|(id, _)| id.clone())
            .collect();
        // Every expired worker leaves before any of their requests is re-queued: a request must
        // not be handed to another worker expiring in the same timeout.
        let mut lost = Vec::new();
        for identity in dead {
            self.stats.expired_workers += 1;
            warn!(worker = %Peer(&identity), "worker silent past liveness, expired");
            if let Some(worker) = self.workers.remove(&identity) {
                self.idle.retain(|w| w != &identity);
                lost.extend(worker.in_flight);
            }
        }
        for request in lost {
            self.requeue(now, request);
        }
        for (identity, worker) in &mut self.workers {
            if let Some(h) = worker.heartbeat.as_mut() {
                h.on_send(now);
                self.transmits.push_back(QueueTransmit {
                    side: Side::Backend,
                    frames: worker_frames(
                        identity,
                        worker.req_socket,
                        PppMessage::Heartbeat.encode(),
                    ),
                });
            }
        }
    }

    fn remove_worker(&mut self, now: Instant, identity: &Bytes) {
        if let Some(worker) = self.workers.remove(identity) {
            self.idle.retain(|w| w != identity);
            if let Some(request) = worker.in_flight {
                self.requeue(now, request);
            }
        }
    }

    fn requeue(&mut self, now: Instant, mut request: Request) {
        if request
            .deliveries
            .on_worker_lost(self.config.max_deliveries)
            == Redelivery::Abandon
        {
            self.stats.abandoned += 1;
            debug!(client = %Peer(&request.client), deliveries = request.deliveries.count(), "request abandoned: every worker that took it went away");
            self.drops.record(now, &DROPS_KEY, DropReason::Abandoned);
            return;
        }
        self.stats.requeued += 1;
        request.expires_at = now + self.config.request_expiry;
        self.queued_bytes += request.size;
        self.queue.push_front(request);
        self.dispatch(now);
    }

    fn dispatch(&mut self, now: Instant) {
        while !self.queue.is_empty() {
            let Some(identity) = self.idle.pop_front() else {
                break;
            };
            let Some(worker) = self.workers.get_mut(&identity) else {
                continue;
            };
            let mut request = self.queue.pop_front().expect("not empty");
            self.queued_bytes -= request.size;
            request.deliveries.hand_out();
            // 6/PPP REQUEST: the client's address, the null terminator, the content.
            let mut payload = Vec::with_capacity(2 + request.body.len());
            payload.push(request.client.clone());
            payload.push(Bytes::new());
            payload.extend(request.body.iter().cloned());
            if let Some(h) = worker.heartbeat.as_mut() {
                h.on_send(now);
            }
            self.transmits.push_back(QueueTransmit {
                side: Side::Backend,
                frames: worker_frames(&identity, worker.req_socket, payload),
            });
            worker.in_flight = Some(request);
        }
    }
}

fn worker_frames(identity: &Bytes, req_socket: bool, payload: Vec<Bytes>) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(2 + payload.len());
    frames.push(identity.clone());
    if req_socket {
        frames.push(Bytes::new());
    }
    frames.extend(payload);
    frames
}
