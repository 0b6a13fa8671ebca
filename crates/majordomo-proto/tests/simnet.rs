//! A simulated network wiring the sans-IO cores together: one [`BrokerCore`], 7/MDP
//! [`WorkerSession`]s with handlers that take time, and client [`Call`]s with Lazy Pirate retries,
//! exchanging frames with a fixed latency on a simulated clock. Whole scenarios (workers dying,
//! freezing, the broker restarting) play out deterministically in microseconds, and every client
//! must end with exactly the reply to its own request.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::broker::{BrokerConfig, BrokerCore};
use majordomo_proto::client::{Call, CallError, CallEvent};
use majordomo_proto::heartbeat::{Backoff, HeartbeatConfig};
use majordomo_proto::worker::{Session, SessionEnd, WorkerEvent, WorkerSession};
use majordomo_proto::Limits;

const LATENCY: Duration = Duration::from_micros(200);
const SERVICE: &[u8] = b"echo";
/// Steps a scenario may take; a bound on any loop that stops making progress.
const MAX_STEPS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum To {
    /// To the broker, from this identity.
    Broker(Bytes),
    /// To the peer with this identity (a worker connection or a client connection).
    Peer(Bytes),
}

struct Packet {
    at: Instant,
    to: To,
    frames: Vec<Bytes>,
}

/// A worker process: one connection at a time, a handler that takes `work` per request.
struct SimWorker {
    name: u32,
    connection: u32,
    session: Option<WorkerSession>,
    /// When the handler finishes, and the reply body.
    job: Option<(Instant, Vec<Bytes>)>,
    work: Duration,
    /// Reconnect after a backoff, at this instant.
    reconnect_at: Option<Instant>,
    backoff: Backoff,
    /// A dead worker's process is gone: nothing it had is delivered and it never comes back.
    dead: bool,
    /// A frozen worker receives nothing and sends nothing until it thaws.
    frozen_until: Option<Instant>,
}

impl SimWorker {
    fn identity(&self) -> Bytes {
        Bytes::from(format!("w{}.{}", self.name, self.connection))
    }
}

struct SimClient {
    name: u32,
    connection: u32,
    call: Call,
    outcome: Option<Result<Vec<Bytes>, CallError>>,
}

impl SimClient {
    fn identity(&self) -> Bytes {
        Bytes::from(format!("c{}.{}", self.name, self.connection))
    }
}

struct Net {
    now: Instant,
    broker: BrokerCore,
    broker_config: BrokerConfig,
    heartbeat: HeartbeatConfig,
    workers: Vec<SimWorker>,
    clients: Vec<SimClient>,
    wire: VecDeque<Packet>,
    /// Replies each client identity received, to catch duplicates.
    delivered: BTreeMap<Bytes, u32>,
}

impl Net {
    fn new(workers: u32, work: Duration) -> Self {
        let now = Instant::now();
        let heartbeat = HeartbeatConfig::default();
        let broker_config = BrokerConfig::default();
        let mut net = Self {
            now,
            broker: BrokerCore::new(now, broker_config.clone()),
            broker_config,
            heartbeat,
            workers: Vec::new(),
            clients: Vec::new(),
            wire: VecDeque::new(),
            delivered: BTreeMap::new(),
        };
        for name in 0..workers {
            net.workers.push(SimWorker {
                name,
                connection: 0,
                session: None,
                job: None,
                work,
                reconnect_at: Some(now),
                backoff: Backoff::default(),
                dead: false,
                frozen_until: None,
            });
        }
        net
    }

    fn add_client(&mut self, body: &str) {
        let name = self.clients.len() as u32;
        let call = Call::new(
            self.now,
            Bytes::from_static(SERVICE),
            vec![Bytes::from(body.to_owned())],
            Duration::from_millis(2500),
            3,
            Limits::default(),
        )
        .expect("valid service");
        let client = SimClient {
            name,
            connection: 0,
            call,
            outcome: None,
        };
        let frames = client.call.request().to_vec();
        let from = client.identity();
        self.clients.push(client);
        self.send(To::Broker(from), frames);
    }

    fn send(&mut self, to: To, frames: Vec<Bytes>) {
        self.wire.push_back(Packet {
            at: self.now + LATENCY,
            to,
            frames,
        });
    }

    fn flush_broker(&mut self) {
        while let Some(t) = self.broker.poll_transmit() {
            let mut frames = t.frames;
            let to = frames.remove(0);
            self.send(To::Peer(to), frames);
        }
    }

    fn flush_worker(&mut self, w: usize) {
        let identity = self.workers[w].identity();
        let Some(session) = self.workers[w].session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(frames) = session.poll_transmit() {
            out.push(frames);
        }
        for frames in out {
            self.send(To::Broker(identity.clone()), frames);
        }
    }

    fn is_frozen(&self, w: usize) -> bool {
        self.workers[w].frozen_until.is_some_and(|t| t > self.now)
    }

    /// The next instant anything happens, if anything will.
    fn next_event(&self) -> Option<Instant> {
        let mut at = vec![self.broker.poll_timeout()];
        at.extend(self.wire.front().map(|p| p.at));
        for w in &self.workers {
            if w.dead {
                continue;
            }
            at.extend(w.frozen_until.filter(|t| *t > self.now));
            at.extend(w.reconnect_at);
            if w.frozen_until.is_some_and(|t| t > self.now) {
                continue;
            }
            at.extend(w.session.as_ref().map(Session::poll_timeout));
            at.extend(w.job.as_ref().map(|(t, _)| *t));
        }
        for c in &self.clients {
            at.extend(c.call.poll_timeout());
        }
        at.into_iter().min()
    }

    fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.outcome.is_some())
    }

    /// Runs until every client has its outcome, or `limit` of simulated time passes.
    fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        for _ in 0..MAX_STEPS {
            if self.all_done() {
                return;
            }
            let Some(next) = self.next_event() else {
                return;
            };
            assert!(next <= end, "clients still waiting after {limit:?}");
            self.now = self.now.max(next);
            self.step();
        }
        panic!("no outcome after {MAX_STEPS} steps");
    }

    /// Lets `d` of simulated time pass, handling everything due meanwhile.
    fn settle(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..MAX_STEPS {
            match self.next_event() {
                Some(next) if next <= until => {
                    self.now = self.now.max(next);
                    self.step();
                }
                _ => {
                    self.now = until;
                    self.step();
                    return;
                }
            }
        }
        panic!("time stopped moving");
    }

    fn step(&mut self) {
        let now = self.now;
        // Deliver what has arrived.
        while self.wire.front().is_some_and(|p| p.at <= now) {
            let p = self.wire.pop_front().expect("checked");
            self.deliver(p);
        }
        if now >= self.broker.poll_timeout() {
            self.broker.handle_timeout(now);
            self.flush_broker();
        }
        for w in 0..self.workers.len() {
            self.step_worker(w);
        }
        for c in 0..self.clients.len() {
            if self.clients[c].outcome.is_some() {
                continue;
            }
            if let Some(event) = self.clients[c].call.handle_timeout(now) {
                self.on_call_event(c, event);
            }
        }
    }

    fn step_worker(&mut self, w: usize) {
        let now = self.now;
        if self.workers[w].dead || self.is_frozen(w) {
            return;
        }
        if self.workers[w].reconnect_at.is_some_and(|t| t <= now) {
            let worker = &mut self.workers[w];
            worker.reconnect_at = None;
            worker.connection += 1;
            worker.job = None;
            worker.session = Some(WorkerSession::new(
                now,
                Bytes::from_static(SERVICE),
                self.heartbeat,
                Limits::default(),
            ));
            self.flush_worker(w);
        }
        let worker = &mut self.workers[w];
        let Some(session) = worker.session.as_mut() else {
            return;
        };
        let mut event = None;
        if let Some((at, body)) = worker.job.take() {
            if at <= now {
                session.handle_reply(now, body);
            } else {
                worker.job = Some((at, body));
            }
        }
        if now >= session.poll_timeout() {
            event = session.handle_timeout(now);
        }
        self.on_worker_event(w, event);
    }

    fn on_worker_event(&mut self, w: usize, event: Option<WorkerEvent>) {
        let now = self.now;
        self.flush_worker(w);
        let worker = &mut self.workers[w];
        match event {
            Some(WorkerEvent::Request(body)) => worker.job = Some((now + worker.work, body)),
            Some(WorkerEvent::Ended(end)) => {
                worker.session = None;
                worker.job = None;
                worker.reconnect_at = Some(match end {
                    SessionEnd::HandlerFailed => now,
                    _ => now + worker.backoff.next_delay(),
                });
            }
            None => {}
        }
    }

    fn on_call_event(&mut self, c: usize, event: CallEvent) {
        match event {
            CallEvent::Resend { .. } => {
                // A new socket, a new identity: replies to the old one are lost with it.
                let client = &mut self.clients[c];
                client.connection += 1;
                let (to, frames) = (client.identity(), client.call.request().to_vec());
                self.send(To::Broker(to), frames);
            }
            CallEvent::Done(result) => self.clients[c].outcome = Some(result),
            CallEvent::Part(_) => unreachable!("7/MDP calls have no parts"),
        }
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        match p.to {
            To::Broker(from) => {
                if let Some(w) = self.worker_by_identity(&from) {
                    if self.workers[w].dead {
                        return;
                    }
                }
                let _ = self.broker.handle_message(now, &from, &p.frames);
                self.flush_broker();
            }
            To::Peer(identity) => {
                if let Some(w) = self.worker_by_identity(&identity) {
                    if self.workers[w].dead || self.is_frozen(w) {
                        return;
                    }
                    let Some(session) = self.workers[w].session.as_mut() else {
                        return;
                    };
                    let event = session.handle_message(now, &p.frames);
                    if let Some(WorkerEvent::Request(_)) = &event {
                        assert!(self.workers[w].job.is_none(), "a worker got two requests");
                    }
                    self.on_worker_event(w, event);
                } else if let Some(c) = self.clients.iter().position(|c| c.identity() == identity) {
                    *self.delivered.entry(identity).or_default() += 1;
                    if self.clients[c].outcome.is_none() {
                        if let Some(event) = self.clients[c].call.handle_reply(&p.frames) {
                            self.on_call_event(c, event);
                        }
                    }
                }
                // Anything else went to a closed socket.
            }
        }
    }

    /// The worker whose current connection has this identity.
    fn worker_by_identity(&self, identity: &Bytes) -> Option<usize> {
        self.workers.iter().position(|w| w.identity() == identity)
    }

    /// Kills worker `w`'s process: its connection closes, which the broker's transport reports.
    fn kill(&mut self, w: usize) {
        self.workers[w].dead = true;
        let identity = self.workers[w].identity();
        self.broker
            .handle_disconnected(self.now + LATENCY, &identity);
        self.flush_broker();
    }

    fn restart_broker(&mut self) {
        self.broker = BrokerCore::new(self.now, self.broker_config.clone());
        self.wire.retain(|p| !matches!(p.to, To::Broker(_)));
    }

    fn assert_every_client_got_its_own_reply(&self) {
        for c in &self.clients {
            let expected = c.call.body().to_vec();
            match &c.outcome {
                Some(Ok(body)) => {
                    assert_eq!(body, &expected, "client c{} got another's reply", c.name)
                }
                other => panic!("client c{} ended with {other:?}", c.name),
            }
        }
        for (identity, n) in &self.delivered {
            assert_eq!(*n, 1, "{identity:?} got {n} replies on one connection");
        }
    }
}

#[test]
fn every_client_gets_its_reply_from_two_workers() {
    let mut net = Net::new(2, Duration::from_millis(5));
    net.settle(Duration::from_secs(1));
    for i in 0..50 {
        net.add_client(&format!("request {i}"));
    }
    net.run(Duration::from_secs(10));
    net.assert_every_client_got_its_own_reply();
    let stats = net.broker.stats();
    assert_eq!((stats.requests, stats.replies, stats.requeued), (50, 50, 0));
}

#[test]
fn a_killed_worker_holding_a_request_is_removed_and_the_request_served_elsewhere() {
    let mut net = Net::new(2, Duration::from_millis(200));
    net.settle(Duration::from_secs(1));
    net.add_client("first");
    net.add_client("second");
    // Let both requests reach the workers, then kill one of them.
    net.settle(Duration::from_millis(50));
    let busy = net
        .workers
        .iter()
        .position(|w| w.job.is_some())
        .expect("a worker is busy");
    net.kill(busy);
    net.run(Duration::from_secs(60));
    net.assert_every_client_got_its_own_reply();
    let stats = net.broker.stats();
    assert_eq!((stats.disconnected, stats.purged), (1, 0));
    assert!(stats.requeued >= 1);
}

#[test]
fn a_frozen_worker_is_expired_and_rejoins_after_it_thaws() {
    // Frozen before it was ever seen heartbeating while busy, the worker is judged by the busy
    // timeout once it holds a request.
    let mut net = Net::new(2, Duration::from_millis(10));
    net.broker_config = net
        .broker_config
        .clone()
        .busy_timeout(Duration::from_secs(10));
    net.restart_broker();
    net.settle(Duration::from_secs(5));
    net.workers[0].frozen_until = Some(net.now + Duration::from_secs(20));
    for i in 0..10 {
        net.add_client(&format!("during {i}"));
    }
    net.run(Duration::from_secs(30));
    net.assert_every_client_got_its_own_reply();
    net.settle(Duration::from_secs(10) + net.heartbeat.interval);
    assert_eq!(net.broker.stats().purged, 1, "the frozen worker was purged");
    assert_eq!(net.broker.stats().workers, 1);
    // After thawing, it notices the broker forgot it and registers again.
    net.settle(Duration::from_secs(60));
    assert_eq!(net.broker.stats().workers, 2);
}

#[test]
fn clients_and_workers_recover_from_a_broker_restart() {
    let mut net = Net::new(2, Duration::from_millis(10));
    net.settle(Duration::from_secs(1));
    for i in 0..5 {
        net.add_client(&format!("before {i}"));
    }
    // The broker restarts before it sees the requests: it forgets every worker.
    net.restart_broker();
    net.run(Duration::from_secs(60));
    net.assert_every_client_got_its_own_reply();
    let stats = net.broker.stats();
    assert_eq!(
        stats.workers, 2,
        "both workers registered with the new broker"
    );
}
