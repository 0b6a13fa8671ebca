//! A model run of the Pirate queue state machine, Simple or Paranoid: client requests (REQ-style or
//! raw framing), worker READY (REQ or DEALER framing), replies for what a worker holds, wrong
//! replies, heartbeats, malformed frames, undeliverable reports (workers, and clients that went
//! away) and time steps, checked against a model of what the queue must do. After every step: no
//! panic; every request answered (the reply sent or lost), queued, in flight, expired, rejected or
//! abandoned; a reply goes only to the client that sent the request, in the framing it used, at
//! most once; a worker holds at most one request and requests go to the
//! least recently used idle worker; idle workers are registered and counted once; no request
//! waits while a worker is idle; new requests never queue past `max_queued` (re-queued ones may);
//! a worker silent for `liveness` intervals is expired at the next check and, while it lives, is
//! sent something at least every interval (Paranoid) or never a heartbeat (Simple).
//! Shared by the property test `pirate_model.rs` and the fuzz target `pirate_queue`.
//!
//! The rules the model holds the queue to, its documented behaviour made exact: a request waiting since `t` (accepted or
//! re-queued at `t`) is dropped by the first timeout handled at or after `t + request_expiry`; a
//! registered worker last heard from at `t` (any valid 6/PPP message, or READY) is expired by the
//! first timeout handled at or after `t + interval * liveness`; READY from a registered worker
//! starts it over, its request going back to the queue, and leaves an idle worker where it is in
//! the least-recently-used order; the request of a worker that goes away is re-queued, or
//! abandoned once it has been handed out `max_deliveries` times. A HEARTBEAT from a worker the
//! queue does not know registers it, idle and rejoined (Paranoid only; Simple ignores it). A reply
//! from a worker the queue does not know is stale; so is the first reply of a rejoined worker that
//! does not answer the request it holds, which then goes back to the queue as the worker becomes
//! idle; any other reply that does not answer the request its worker holds is a protocol error. A
//! reply the driver reports undeliverable moves from `replies` to `lost_replies`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::pirate::{PirateQueue, QueueConfig, QueueStats, Side};
use majordomo_proto::ppp::{Envelope, PppMessage};
use majordomo_proto::Limits;

const WORKERS: u8 = 5;
const CLIENTS: u8 = 4;
const HEARTBEAT: HeartbeatConfig = HeartbeatConfig::new(Duration::from_millis(100), 3);
/// Small enough that the malformed operations can exceed it with a few bytes.
fn limits() -> Limits {
    Limits::default()
        .max_message_size(64)
        .max_frames(8)
        .max_service_name(255)
}

/// Runs the operations encoded in `data` and panics on a broken invariant; returns the queue's
/// final counters. The first byte picks the queue (odd: Paranoid Pirate, even: Simple Pirate),
/// then every two bytes are one operation.
pub fn run(data: &[u8]) -> QueueStats {
    let Some((&mode, ops)) = data.split_first() else {
        return QueueStats::default();
    };
    let mut model = Model::new(mode % 2 == 1);
    for op in ops.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        match kind % 10 {
            0 | 1 => model.request(arg % CLIENTS, arg / CLIENTS % 2 == 1, arg / 8 % 3),
            2 => model.ready(arg % WORKERS, arg / WORKERS % 2 == 1),
            3 | 4 => model.reply(arg % WORKERS),
            5 => model.wrong_reply(arg % WORKERS, arg / WORKERS % 3),
            6 if arg % 8 == 7 => {
                for w in 0..WORKERS {
                    if model.peers[usize::from(w)].registered.is_some() {
                        model.heartbeat(w);
                    }
                }
            }
            6 => model.heartbeat(arg % WORKERS),
            7 => model.malformed(arg),
            8 => model.undeliverable(arg),
            _ => model.time(arg),
        }
        model.check();
    }
    model.queue.stats()
}

/// What became of one request, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// In the queue since this instant (accepted or re-queued then).
    Waiting(Instant),
    /// Handed to this worker, not answered yet.
    Held(usize),
    Replied,
    Rejected,
    Expired,
    Abandoned,
}

#[derive(Debug)]
struct Request {
    client: Bytes,
    delimited: bool,
    body: Vec<Bytes>,
    deliveries: u32,
    fate: Fate,
}

/// The queue's view of a registered worker.
#[derive(Debug)]
struct Registration {
    last_heard: Instant,
    last_sent: Instant,
    /// Registered on a HEARTBEAT, and no reply from it since.
    rejoined: bool,
}

/// One worker peer.
#[derive(Debug)]
struct Peer {
    identity: Bytes,
    /// Sends as a REQ socket: an empty frame before everything (as of its last READY).
    req: bool,
    /// The request it was handed and has not answered, as the peer sees it: kept after the queue
    /// dropped it, so it can send a late reply. A peer busy with one drops any other it is handed
    /// (as `PppWorker` does).
    holds: Option<usize>,
    /// `Some` while the queue has it registered.
    registered: Option<Registration>,
}

struct Model {
    queue: PirateQueue,
    config: QueueConfig,
    now: Instant,
    requests: Vec<Request>,
    peers: Vec<Peer>,
    /// Registered workers holding no request, least recently used first.
    idle: VecDeque<usize>,
    /// The counters the queue must show.
    expect: QueueStats,
    /// Messages the current step must send to clients, in order.
    replies_due: VecDeque<Vec<Bytes>>,
    /// Clients gone since their last request: the driver reports replies to them undeliverable.
    gone: [bool; CLIENTS as usize],
}

fn client_id(c: u8) -> Bytes {
    Bytes::from(vec![b'c', b'0' + c])
}

fn token_frame(token: usize) -> Bytes {
    Bytes::from(format!("r{token}"))
}

impl Model {
    fn new(paranoid: bool) -> Self {
        let base = if paranoid {
            QueueConfig::paranoid().heartbeat(Some(HEARTBEAT))
        } else {
            QueueConfig::simple()
        };
        let config = base
            .request_expiry(Duration::from_millis(700))
            .max_queued(4)
            .max_deliveries(2)
            .limits(limits());
        let now = Instant::now();
        Self {
            queue: PirateQueue::new(now, config.clone()),
            config,
            now,
            requests: Vec::new(),
            peers: (0..WORKERS)
                .map(|w| Peer {
                    identity: Bytes::from(vec![b'w', b'0' + w]),
                    req: false,
                    holds: None,
                    registered: None,
                })
                .collect(),
            idle: VecDeque::new(),
            expect: QueueStats::default(),
            replies_due: VecDeque::new(),
            gone: [false; CLIENTS as usize],
        }
    }

    /// The interval at which the queue checks its timers: the heartbeat, or a second without.
    fn tick(&self) -> Duration {
        self.config
            .heartbeat
            .map_or(Duration::from_secs(1), |hb| hb.interval)
    }

    fn held_by(&self, worker: usize) -> Option<usize> {
        self.requests
            .iter()
            .position(|r| r.fate == Fate::Held(worker))
    }

    fn waiting(&self) -> impl Iterator<Item = &Request> {
        self.requests
            .iter()
            .filter(|r| matches!(r.fate, Fate::Waiting(_)))
    }

    /// Frames a worker sends: its identity (as the ROUTER reads it), the REQ socket's empty frame,
    /// then `payload`.
    fn frames_from(&self, worker: usize, payload: Vec<Bytes>) -> Vec<Bytes> {
        let peer = &self.peers[worker];
        let mut frames = vec![peer.identity.clone()];
        if peer.req {
            frames.push(Bytes::new());
        }
        frames.extend(payload);
        frames
    }

    fn heard(&mut self, worker: usize) {
        if let Some(registration) = self.peers[worker].registered.as_mut() {
            registration.last_heard = self.now;
        }
    }

    fn register(&mut self, worker: usize, rejoined: bool) {
        self.peers[worker].registered = Some(Registration {
            last_heard: self.now,
            last_sent: self.now,
            rejoined,
        });
        self.idle.push_back(worker);
    }

    /// A reply from `worker` that answers no request it holds: stale from a worker the queue does
    /// not know or one that rejoined (whose request, if any, goes back as it becomes idle), else a
    /// protocol error.
    fn unanswering_reply(&mut self, worker: usize) {
        let Some(registration) = self.peers[worker].registered.as_mut() else {
            self.expect.stale_replies += 1;
            return;
        };
        registration.last_heard = self.now;
        if !std::mem::take(&mut registration.rejoined) {
            self.expect.protocol_errors += 1;
            return;
        }
        self.expect.stale_replies += 1;
        if let Some(token) = self.held_by(worker) {
            self.idle.push_back(worker);
            self.lose(token);
        }
    }

    /// The queue lost the worker holding `token`: the request goes back, or is given up on.
    fn lose(&mut self, token: usize) {
        let request = &mut self.requests[token];
        if request.deliveries >= self.config.max_deliveries {
            request.fate = Fate::Abandoned;
            self.expect.abandoned += 1;
        } else {
            request.fate = Fate::Waiting(self.now);
            self.expect.requeued += 1;
        }
    }

    fn unregister(&mut self, worker: usize) {
        self.peers[worker].registered = None;
        self.idle.retain(|&w| w != worker);
        if let Some(token) = self.held_by(worker) {
            self.lose(token);
        }
    }

    fn request(&mut self, client: u8, delimited: bool, shape: u8) {
        let token = self.requests.len();
        let body = match shape {
            0 => vec![token_frame(token)],
            1 => vec![token_frame(token), Bytes::from_static(b"more")],
            _ => vec![
                token_frame(token),
                Bytes::new(),
                Bytes::from_static(b"tail"),
            ],
        };
        self.gone[usize::from(client)] = false;
        let client = client_id(client);
        let mut frames = vec![client.clone()];
        if delimited {
            frames.push(Bytes::new());
        }
        frames.extend(body.iter().cloned());
        assert_eq!(
            self.queue.handle_frontend(self.now, &frames),
            Ok(()),
            "a well-formed request refused: {frames:?}"
        );
        self.expect.requests += 1;
        let fate = if self.waiting().count() >= self.config.max_queued {
            self.expect.rejected += 1;
            Fate::Rejected
        } else {
            Fate::Waiting(self.now)
        };
        self.requests.push(Request {
            client,
            delimited,
            body,
            deliveries: 0,
            fate,
        });
        self.drain();
    }

    fn ready(&mut self, w: u8, req: bool) {
        let worker = usize::from(w);
        self.peers[worker].req = req;
        // A worker that sends READY starts over: it no longer answers what it held.
        self.peers[worker].holds = None;
        let frames = self.frames_from(worker, PppMessage::Ready.encode());
        assert_eq!(self.queue.handle_backend(self.now, &frames), Ok(()));
        if let Some(registration) = self.peers[worker].registered.as_mut() {
            registration.last_heard = self.now;
            registration.rejoined = false;
            if let Some(token) = self.held_by(worker) {
                self.lose(token);
                self.idle.push_back(worker);
            }
        } else {
            self.register(worker, false);
        }
        self.drain();
    }

    fn reply(&mut self, w: u8) {
        let worker = usize::from(w);
        let Some(token) = self.peers[worker].holds else {
            // Nothing to answer: what it sends is a reply for no request.
            return self.wrong_reply(w, 0);
        };
        let request = &self.requests[token];
        let mut body = request.body.clone();
        body[0] = Bytes::from(format!("re:r{token}"));
        let mut payload = vec![request.client.clone(), Bytes::new()];
        payload.extend(body.iter().cloned());
        let frames = self.frames_from(worker, payload);
        assert_eq!(self.queue.handle_backend(self.now, &frames), Ok(()));
        self.peers[worker].holds = None;
        // The queue forwards the reply to the request it gave the worker, if addressed to that
        // request's client: `token` itself, or (from a rejoined worker) an earlier request of the
        // same client's.
        let answered = self
            .held_by(worker)
            .filter(|&held| self.requests[held].client == self.requests[token].client);
        match (answered, self.peers[worker].registered.as_mut()) {
            (Some(held), Some(registration)) => {
                registration.last_heard = self.now;
                registration.rejoined = false;
                let request = &mut self.requests[held];
                request.fate = Fate::Replied;
                let mut out = vec![request.client.clone()];
                if request.delimited {
                    out.push(Bytes::new());
                }
                out.extend(body);
                self.replies_due.push_back(out);
                self.expect.replies += 1;
                self.idle.push_back(worker);
            }
            // A late reply: from a worker the queue gave up on, or one that rejoined since it got
            // the request.
            _ => self.unanswering_reply(worker),
        }
        self.drain();
    }

    /// A reply the queue must not forward: to another client than the one whose request the
    /// worker holds (or any client, holding none), with no address, or behind a foreign address.
    fn wrong_reply(&mut self, w: u8, variant: u8) {
        let worker = usize::from(w);
        let rightful = self
            .held_by(worker)
            .map(|token| self.requests[token].client.clone());
        let other = match &rightful {
            Some(client) => client_id((client[1] - b'0' + 1) % CLIENTS),
            None => client_id(0),
        };
        let stray = Bytes::from_static(b"stray");
        let payload = match variant {
            0 => vec![other, Bytes::new(), stray],
            1 => vec![stray],
            _ => vec![
                Bytes::from_static(b"x"),
                rightful.unwrap_or(other),
                Bytes::new(),
                stray,
            ],
        };
        let frames = self.frames_from(worker, payload);
        assert_eq!(self.queue.handle_backend(self.now, &frames), Ok(()));
        self.unanswering_reply(worker);
        self.drain();
    }

    fn heartbeat(&mut self, w: u8) {
        let worker = usize::from(w);
        let frames = self.frames_from(worker, PppMessage::Heartbeat.encode());
        assert_eq!(self.queue.handle_backend(self.now, &frames), Ok(()));
        if self.peers[worker].registered.is_some() {
            self.heard(worker);
        } else if self.config.heartbeat.is_some() {
            // From a worker the queue does not know: taken back, idle, in the framing it used.
            self.register(worker, true);
            self.expect.rejoined_workers += 1;
        }
        self.drain();
    }

    /// Frames no decoder accepts, on either side; none of them counts as hearing from a worker.
    fn malformed(&mut self, arg: u8) {
        let x = || Bytes::from_static(b"x");
        let big = Bytes::from(vec![b'x'; limits().max_message_size + 1]);
        let empty = Bytes::new;
        let variant = arg / 2 % 8;
        let result = if arg.is_multiple_of(2) {
            let client = client_id(arg / 16 % CLIENTS);
            let frames = match variant % 5 {
                0 => vec![],
                1 => vec![client],
                2 => vec![client, empty()],
                3 => {
                    let mut frames = vec![client, empty()];
                    frames.resize(limits().max_frames + 1, x());
                    frames
                }
                _ => vec![client, big],
            };
            self.queue.handle_frontend(self.now, &frames)
        } else {
            let worker = self.peers[usize::from(arg / 16 % WORKERS)].identity.clone();
            let frames = match variant % 7 {
                0 => vec![],
                1 => vec![worker],
                2 => vec![worker, empty()],
                3 => vec![worker, empty(), empty()],
                4 => vec![worker, x(), empty()],
                5 => {
                    let mut frames = vec![worker];
                    frames.resize(limits().max_frames + 2, x());
                    frames
                }
                _ => vec![worker, big],
            };
            self.queue.handle_backend(self.now, &frames)
        };
        assert!(result.is_err(), "malformed frames accepted (op {arg})");
        self.expect.protocol_errors += 1;
        self.drain();
    }

    fn undeliverable(&mut self, arg: u8) {
        if arg % 4 == 3 {
            // The client goes away: the driver reports each reply to it undeliverable as it takes
            // it (see `drain`), until the client sends again.
            self.gone[usize::from(arg / 4 % CLIENTS)] = true;
        } else {
            self.expect.undeliverable += 1;
            let worker = usize::from(arg / 4 % WORKERS);
            let identity = self.peers[worker].identity.clone();
            self.queue
                .handle_undeliverable(self.now, Side::Backend, &identity);
            if self.peers[worker].registered.is_some() {
                self.unregister(worker);
            }
        }
        self.drain();
    }

    /// To the next deadline; or forward by an amount, handling each deadline on the way (a
    /// punctual driver); or forward by an amount and then once, late (a busy or sleepy one).
    fn time(&mut self, arg: u8) {
        let amount = Duration::from_millis(u64::from(arg / 3) * 10);
        match arg % 3 {
            0 => {
                self.now = self.now.max(self.queue.poll_timeout());
                self.timeout();
            }
            1 => {
                let until = self.now + amount;
                for _ in 0..10_000 {
                    let next = self.queue.poll_timeout();
                    if next > until {
                        break;
                    }
                    self.now = self.now.max(next);
                    self.timeout();
                }
                self.now = until;
            }
            _ => {
                self.now += amount;
                if self.now >= self.queue.poll_timeout() {
                    self.timeout();
                }
            }
        }
    }

    fn timeout(&mut self) {
        let now = self.now;
        let expiry = self.config.request_expiry;
        for request in &mut self.requests {
            if matches!(request.fate, Fate::Waiting(since) if since + expiry <= now) {
                request.fate = Fate::Expired;
                self.expect.expired += 1;
            }
        }
        if let Some(hb) = self.config.heartbeat {
            let silent: Vec<usize> = (0..self.peers.len())
                .filter(|&w| {
                    self.peers[w]
                        .registered
                        .as_ref()
                        .is_some_and(|r| r.last_heard + hb.expiry() <= now)
                })
                .collect();
            for worker in silent {
                self.expect.expired_workers += 1;
                self.unregister(worker);
            }
        }
        self.queue.handle_timeout(now);
        self.drain();
        assert!(
            self.queue.poll_timeout() > now,
            "the deadline did not move past a handled timeout"
        );
    }

    /// Takes everything the queue sends and checks it against the model.
    fn drain(&mut self) {
        while let Some(transmit) = self.queue.poll_transmit() {
            match transmit.side {
                Side::Frontend => {
                    let due = self
                        .replies_due
                        .pop_front()
                        .unwrap_or_else(|| panic!("unowed message to a client: {transmit:?}"));
                    assert_eq!(
                        transmit.frames, due,
                        "reply to the wrong client, in the wrong framing or with the wrong body"
                    );
                    let client = &transmit.frames[0];
                    if self.gone[usize::from(client[1] - b'0')] {
                        self.queue
                            .handle_undeliverable(self.now, Side::Frontend, client);
                        self.expect.replies -= 1;
                        self.expect.lost_replies += 1;
                        self.expect.undeliverable += 1;
                    }
                }
                Side::Backend => self.sent_to_worker(&transmit.frames),
            }
        }
        assert!(
            self.replies_due.is_empty(),
            "a reply was not forwarded: {:?}",
            self.replies_due
        );
    }

    fn sent_to_worker(&mut self, frames: &[Bytes]) {
        let worker = self
            .peers
            .iter()
            .position(|p| Some(&p.identity) == frames.first())
            .unwrap_or_else(|| panic!("sent to a worker that never spoke: {frames:?}"));
        assert!(
            self.peers[worker].registered.is_some(),
            "sent to an unregistered worker: {frames:?}"
        );
        let rest = if self.peers[worker].req {
            assert!(
                frames.len() > 2 && frames[1].is_empty(),
                "a REQ worker's message without its empty frame: {frames:?}"
            );
            &frames[2..]
        } else {
            &frames[1..]
        };
        let message = PppMessage::decode(rest, &Limits::default())
            .unwrap_or_else(|error| panic!("invalid 6/PPP to a worker ({error}): {frames:?}"));
        match message {
            PppMessage::Ready => panic!("the queue sent READY"),
            PppMessage::Heartbeat => {
                assert!(
                    self.config.heartbeat.is_some(),
                    "a Simple Pirate worker got a heartbeat"
                );
            }
            PppMessage::Payload(Envelope { address, body }) => {
                assert_eq!(
                    self.held_by(worker),
                    None,
                    "a second request to a busy worker"
                );
                assert_eq!(
                    self.idle.front(),
                    Some(&worker),
                    "a request not given to the least recently used idle worker"
                );
                self.idle.pop_front();
                let token = body
                    .first()
                    .and_then(|frame| std::str::from_utf8(frame.strip_prefix(b"r")?).ok())
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&token| token < self.requests.len())
                    .unwrap_or_else(|| panic!("a request nobody sent: {frames:?}"));
                let max_deliveries = self.config.max_deliveries;
                let request = &mut self.requests[token];
                assert!(
                    matches!(request.fate, Fate::Waiting(_)),
                    "request {token} handed out while {:?}",
                    request.fate
                );
                assert_eq!(
                    address,
                    std::slice::from_ref(&request.client),
                    "request {token}'s address"
                );
                assert_eq!(body, request.body, "request {token}'s body");
                request.deliveries += 1;
                assert!(request.deliveries <= max_deliveries, "handed out too often");
                request.fate = Fate::Held(worker);
                // A peer still busy with a request from before it rejoined drops this one.
                self.peers[worker].holds.get_or_insert(token);
            }
        }
        if let Some(registration) = self.peers[worker].registered.as_mut() {
            registration.last_sent = self.now;
        }
    }

    /// The invariants that hold between steps.
    fn check(&self) {
        let s = self.queue.stats();
        let in_flight = self
            .requests
            .iter()
            .filter(|r| matches!(r.fate, Fate::Held(_)))
            .count();
        assert_eq!(s.in_flight, in_flight, "requests in flight");
        assert_eq!(
            s.requests,
            s.replies
                + s.lost_replies
                + s.queued as u64
                + s.in_flight as u64
                + s.expired
                + s.rejected
                + s.abandoned,
            "a request went missing: {s:?}"
        );
        let counters = |s: &QueueStats| {
            (
                (s.requests, s.replies, s.lost_replies),
                (s.expired, s.rejected, s.requeued, s.abandoned),
                (s.expired_workers, s.rejoined_workers),
                (s.stale_replies, s.protocol_errors, s.undeliverable),
            )
        };
        assert_eq!(counters(&s), counters(&self.expect), "counters: {s:?}");

        let waiting = self.waiting().count();
        let requeued_waiting = self.waiting().filter(|r| r.deliveries > 0).count();
        assert_eq!(s.queued, waiting, "queued requests");
        assert!(
            waiting - requeued_waiting <= self.config.max_queued,
            "new requests queued past the bound"
        );
        assert!(
            s.queued <= self.config.max_queued + requeued_waiting,
            "queue bound broken: {s:?}"
        );
        assert!(
            waiting == 0 || self.idle.is_empty(),
            "a request waits while a worker is idle"
        );

        let registered = self.peers.iter().filter(|p| p.registered.is_some()).count();
        assert_eq!(s.workers, registered, "registered workers");
        assert_eq!(s.idle_workers, self.idle.len(), "idle workers");
        for (worker, peer) in self.peers.iter().enumerate() {
            let held = self
                .requests
                .iter()
                .filter(|r| r.fate == Fate::Held(worker))
                .count();
            assert!(held <= 1, "worker {worker} holds {held} requests");
            let listed = self.idle.iter().filter(|&&w| w == worker).count();
            match &peer.registered {
                None => assert_eq!((held, listed), (0, 0), "an unregistered worker in use"),
                // Registered: either busy or idle, and listed once when idle.
                Some(_) => assert_eq!(
                    held + listed,
                    1,
                    "worker {worker}: {held} held, idle x{listed}"
                ),
            }
        }

        let tick = self.tick();
        assert!(
            self.queue.poll_timeout() <= self.now + tick,
            "the queue's next check is more than an interval away"
        );
        if let Some(hb) = self.config.heartbeat {
            for registration in self.peers.iter().filter_map(|p| p.registered.as_ref()) {
                assert!(
                    self.now.duration_since(registration.last_heard) < hb.expiry() + hb.interval,
                    "a silent worker outlived its liveness"
                );
                assert!(
                    self.now.duration_since(registration.last_sent) <= hb.interval,
                    "a worker not heartbeated for an interval"
                );
            }
        }
    }
}
