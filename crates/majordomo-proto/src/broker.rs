//! The Majordomo broker as a state machine with no sockets and no clock.
//!
//! # Calling order
//! Feed every message a ROUTER socket receives to [`BrokerCore::handle_message`] (or, when clients
//! and workers have separate endpoints, to [`BrokerCore::handle_client`] and
//! [`BrokerCore::handle_worker`] after decoding). When the instant from
//! [`BrokerCore::poll_timeout`] passes, call [`BrokerCore::handle_timeout`]. After each call, drain
//! [`BrokerCore::poll_transmit`] and send every [`Transmit`]; when a send fails, report it with
//! [`BrokerCore::handle_undeliverable`]. Every input carries `now`.
//!
//! # Rules beyond the Guide's broker
//! - Dead workers are purged whether idle or busy, and the request a worker held when it died,
//!   disconnected or broke the protocol goes back to the front of its client's queue for another
//!   worker of the same service, at most [`BrokerConfig::max_deliveries`] times in all. A request
//!   is held by exactly one worker at a time and its reply is only accepted from that worker, so a
//!   client never gets two replies to one request.
//! - Clients are served round-robin within a service, so one client with many requests in flight
//!   cannot starve the others.
//! - Queues are bounded per service and in total; requests waiting longer than
//!   [`BrokerConfig::request_expiry`] are dropped.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, trace, warn};

use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::mdp::{BrokerInbound, BrokerMessage, ClientReply, ClientRequest, WorkerMessage};
use crate::redelivery::{Deliveries, Redelivery};
use crate::{mmi, ConfigError, DecodeError, Hex, Limits};

/// Broker behaviour and resource bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// Heartbeat interval sent to workers and the liveness after which a silent worker is purged
    /// (default 2500 ms, 3). Must match the workers' settings: "The heartbeat rate must be set to
    /// similar values in broker and worker, or false disconnections will occur."
    pub heartbeat: HeartbeatConfig,
    /// How long a request may wait in a queue for a worker before it is dropped (default 10 s).
    /// Clients retry on their own timeout, so a request older than a client's patience only wastes
    /// a worker. A request re-queued after its worker died gets a fresh expiry.
    pub request_expiry: Duration,
    /// Most requests queued for one service (default 10,000). Past it, new requests for that
    /// service are dropped and logged; the client sees a timeout.
    pub max_queued_per_service: usize,
    /// Most requests queued over all services (default 100,000). Past it, new requests are dropped
    /// and logged. Both bounds apply to new requests: a request handed back because its worker went
    /// away was already accepted and is re-queued even at a bound, so a queue can exceed its bound
    /// by at most the number of workers.
    pub max_queued_total: usize,
    /// How many times one request may be handed to a worker (default 3). A request whose workers
    /// keep dying is dropped after that, so a request that crashes workers cannot cycle forever.
    pub max_deliveries: u32,
    /// Size limits for decoding; oversized messages are dropped.
    pub limits: Limits,
}

impl BrokerConfig {
    /// Sets `heartbeat`; the field says what it means and its default.
    pub fn heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets `request_expiry`; the field says what it means and its default.
    pub fn request_expiry(mut self, request_expiry: Duration) -> Self {
        self.request_expiry = request_expiry;
        self
    }

    /// Sets `max_queued_per_service`; the field says what it means and its default.
    pub fn max_queued_per_service(mut self, max_queued_per_service: usize) -> Self {
        self.max_queued_per_service = max_queued_per_service;
        self
    }

    /// Sets `max_queued_total`; the field says what it means and its default.
    pub fn max_queued_total(mut self, max_queued_total: usize) -> Self {
        self.max_queued_total = max_queued_total;
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

impl BrokerConfig {
    /// Checks the settings a broker cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.heartbeat.validate()?;
        Ok(())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            request_expiry: Duration::from_secs(10),
            max_queued_per_service: 10_000,
            max_queued_total: 100_000,
            max_deliveries: 3,
            limits: Limits::default(),
        }
    }
}

/// Which kind of peer a [`Transmit`] goes to, for brokers with separate client and worker sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An MDP/Client peer.
    Client,
    /// An MDP/Worker peer.
    Worker,
}

/// A message the driver must send on its ROUTER socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Whether the destination is a client or a worker.
    pub role: Role,
    /// The frames, with the destination's ROUTER identity first.
    pub frames: Vec<Bytes>,
}

impl Transmit {
    /// The destination's ROUTER identity.
    pub fn identity(&self) -> &Bytes {
        &self.frames[0]
    }
}

/// Counters and gauges, for logs, tests, benchmarks and the `mmi.stats` service (as JSON).
///
/// Every request is accounted for: `requests == replies + queued + in_flight + expired + rejected
/// + abandoned` holds between calls (until [`BrokerCore::shutdown`], which forgets everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BrokerStats {
    /// Registered workers.
    pub workers: usize,
    /// Registered workers waiting for a request.
    pub idle_workers: usize,
    /// Services known (with workers or queued requests).
    pub services: usize,
    /// Requests queued, not yet with a worker.
    pub queued: usize,
    /// Requests with a worker, not yet answered.
    pub in_flight: usize,
    /// Requests accepted from clients (MMI included).
    pub requests: u64,
    /// Replies sent to clients (MMI included).
    pub replies: u64,
    /// Requests dropped because they waited longer than the expiry.
    pub expired: u64,
    /// Requests dropped at a queue bound.
    pub rejected: u64,
    /// Requests handed back to the queue after their worker went away.
    pub requeued: u64,
    /// Requests dropped after `max_deliveries` workers went away holding them.
    pub abandoned: u64,
    /// Workers purged for silence.
    pub purged: u64,
    /// Messages dropped as malformed, and valid but unexpected commands.
    pub protocol_errors: u64,
    /// Messages the driver could not deliver (peer gone, or its queue full past the send
    /// timeout, or held after that).
    pub undeliverable: u64,
    /// Each known service, sorted by name.
    pub per_service: Vec<ServiceStats>,
}

/// Gauges of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStats {
    /// The service name (in JSON as text, bytes that are not UTF-8 replaced).
    #[serde(serialize_with = "lossy_text")]
    pub name: Bytes,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Registered workers waiting for a request.
    pub idle_workers: usize,
    /// Registered workers holding a request.
    pub busy_workers: usize,
}

fn lossy_text<S: serde::Serializer>(name: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(name))
}

#[derive(Debug)]
struct Request {
    client: Bytes,
    service: Bytes,
    body: Vec<Bytes>,
    expires_at: Instant,
    deliveries: Deliveries,
}

#[derive(Debug)]
struct Worker {
    service: Bytes,
    heartbeat: Heartbeat,
    in_flight: Option<Request>,
}

#[derive(Debug, Default)]
struct Service {
    /// Request ids per client, oldest first. Ids whose request expired are skipped lazily.
    queues: HashMap<Bytes, VecDeque<u64>>,
    /// Clients with queued requests, in round-robin order; a client is here iff it is in `queues`.
    ring: VecDeque<Bytes>,
    /// Live requests in `queues`.
    queued: usize,
    /// Idle workers, least recently used first.
    idle: VecDeque<Bytes>,
    /// Registered workers, idle or busy.
    workers: usize,
}

impl Service {
    fn push(&mut self, client: &Bytes, id: u64, front: bool) {
        let queue = self.queues.entry(client.clone()).or_insert_with(|| {
            if front {
                self.ring.push_front(client.clone());
            } else {
                self.ring.push_back(client.clone());
            }
            VecDeque::new()
        });
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
        self.queued += 1;
    }

    /// Takes the oldest request of the next client in round-robin order.
    fn pop(&mut self, requests: &mut HashMap<u64, Request>) -> Option<(u64, Request)> {
        while let Some(client) = self.ring.pop_front() {
            let Some(queue) = self.queues.get_mut(&client) else {
                continue;
            };
            let mut found = None;
            while let Some(id) = queue.pop_front() {
                if let Some(request) = requests.remove(&id) {
                    found = Some((id, request));
                    break;
                }
            }
            if queue.is_empty() {
                self.queues.remove(&client);
            } else {
                self.ring.push_back(client);
            }
            if found.is_some() {
                self.queued -= 1;
                return found;
            }
        }
        None
    }

    /// Drops leading ids of `client` whose requests are gone (expired).
    fn trim(&mut self, client: &Bytes, requests: &HashMap<u64, Request>) {
        let Some(queue) = self.queues.get_mut(client) else {
            return;
        };
        while queue.front().is_some_and(|id| !requests.contains_key(id)) {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.queues.remove(client);
            self.ring.retain(|c| c != client);
        }
    }

    fn is_unused(&self) -> bool {
        self.workers == 0 && self.queued == 0
    }
}

/// The broker's whole state: services, workers, queued requests, and what to send next.
#[derive(Debug)]
pub struct BrokerCore {
    config: BrokerConfig,
    services: HashMap<Bytes, Service>,
    workers: HashMap<Bytes, Worker>,
    /// Queued requests by id; a request with a worker lives in that worker's `in_flight`.
    requests: HashMap<u64, Request>,
    /// Expiry deadlines of queued requests in the order they were queued. Every request expires
    /// `request_expiry` after it was (re-)queued, so this order is also deadline order. Entries of
    /// requests that left the queue are dropped from the front as soon as they get there, which
    /// keeps this about as long as the queues themselves.
    expiries: VecDeque<(Instant, u64)>,
    next_id: u64,
    next_tick: Instant,
    transmits: VecDeque<Transmit>,
    stats: BrokerStats,
}

impl BrokerCore {
    /// A broker with no peers, starting its heartbeat clock at `now`.
    pub fn new(now: Instant, config: BrokerConfig) -> Self {
        Self {
            next_tick: now + config.heartbeat.interval,
            config,
            services: HashMap::new(),
            workers: HashMap::new(),
            requests: HashMap::new(),
            expiries: VecDeque::new(),
            next_id: 0,
            transmits: VecDeque::new(),
            stats: BrokerStats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            workers: self.workers.len(),
            idle_workers: self.services.values().map(|s| s.idle.len()).sum(),
            services: self.services.len(),
            queued: self.requests.len(),
            in_flight: self
                .workers
                .values()
                .filter(|w| w.in_flight.is_some())
                .count(),
            per_service: self.service_stats(),
            ..self.stats.clone()
        }
    }

    /// Gauges of every known service, sorted by name.
    pub fn service_stats(&self) -> Vec<ServiceStats> {
        let mut services: Vec<ServiceStats> = self
            .services
            .iter()
            .map(|(name, s)| ServiceStats {
                name: name.clone(),
                queued: s.queued,
                idle_workers: s.idle.len(),
                busy_workers: s.workers - s.idle.len(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    /// Whether `identity` is a registered worker.
    pub fn is_worker(&self, identity: &[u8]) -> bool {
        self.workers.contains_key(identity)
    }

    /// Whether a live (registered, not yet purged) worker serves `service`.
    pub fn has_worker(&self, service: &[u8]) -> bool {
        self.services.get(service).is_some_and(|s| s.workers > 0)
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`BrokerCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.expiries.front() {
            Some((at, _)) => self.next_tick.min(*at),
            None => self.next_tick,
        }
    }

    /// Handles one message from a shared ROUTER endpoint: `identity` is the ROUTER identity frame,
    /// `frames` what followed it. A malformed message is logged, counted and dropped; if it came
    /// from a registered worker, that worker is disconnected ("The broker SHOULD respond to invalid
    /// messages by dropping them and treating that peer as invalid").
    pub fn handle_message(
        &mut self,
        now: Instant,
        identity: &Bytes,
        frames: &[Bytes],
    ) -> Result<(), DecodeError> {
        match BrokerInbound::decode(frames, &self.config.limits) {
            Ok(BrokerInbound::Client(request)) => {
                self.handle_client(now, identity, request);
                Ok(())
            }
            Ok(BrokerInbound::Worker(message)) => {
                self.handle_worker(now, identity, message);
                Ok(())
            }
            Err(error) => {
                self.handle_invalid(now, identity, &error);
                Err(error)
            }
        }
    }

    /// Records a message that failed to decode from `identity`: logs it, and disconnects the peer
    /// if it is a registered worker.
    pub fn handle_invalid(&mut self, now: Instant, identity: &Bytes, error: &DecodeError) {
        self.stats.protocol_errors += 1;
        warn!(peer = %Hex(identity), %error, "dropped invalid message");
        if self.workers.contains_key(identity) {
            self.disconnect_worker(now, identity, true);
        }
    }

    /// Handles a decoded MDP/Client REQUEST from the client `identity`.
    pub fn handle_client(&mut self, now: Instant, identity: &Bytes, request: ClientRequest) {
        self.stats.requests += 1;
        if mmi::is_mmi(&request.service) {
            self.handle_mmi(now, identity, request);
            return;
        }
        let service_queued = self.services.get(&request.service).map_or(0, |s| s.queued);
        if self.requests.len() >= self.config.max_queued_total
            || service_queued >= self.config.max_queued_per_service
        {
            self.stats.rejected += 1;
            warn!(
                client = %Hex(identity),
                service = %Hex(&request.service),
                queued_total = self.requests.len(),
                queued_service = service_queued,
                "queue bound reached, request dropped"
            );
            return;
        }
        trace!(client = %Hex(identity), service = %Hex(&request.service), "request");
        let service = request.service.clone();
        self.enqueue(
            Request {
                client: identity.clone(),
                service: request.service,
                body: request.body,
                expires_at: now + self.config.request_expiry,
                deliveries: Deliveries::default(),
            },
            false,
        );
        self.dispatch(now, &service);
    }

    fn handle_mmi(&mut self, now: Instant, identity: &Bytes, request: ClientRequest) {
        // "200" only for a live worker, and gauges without the dead: purge the silent first.
        self.purge_dead_workers(now);
        let reply = match request.service.as_ref() {
            mmi::SERVICE => vec![mmi::service_status(self.has_worker(&request.body[0]))],
            mmi::STATS => {
                // As of this request: counted among the requests, its reply not yet sent.
                let json = serde_json::to_vec(&self.stats()).expect("stats serialize");
                vec![Bytes::from_static(mmi::OK), Bytes::from(json)]
            }
            _ => vec![Bytes::from_static(mmi::NOT_IMPLEMENTED)],
        };
        debug!(client = %Hex(identity), service = %Hex(&request.service), status = %Hex(&reply[0]), "mmi");
        self.send_reply(identity, request.service, reply);
    }

    /// Handles a decoded MDP/Worker command from the worker `identity`.
    pub fn handle_worker(&mut self, now: Instant, identity: &Bytes, message: WorkerMessage) {
        let Some(worker) = self.workers.get_mut(identity) else {
            match message {
                WorkerMessage::Ready { service } if mmi::is_mmi(&service) => {
                    // "It MUST disconnect any workers that attempt to register services in this
                    // namespace." (8/MMI)
                    self.protocol_violation(identity, "READY for an mmi.* service");
                }
                WorkerMessage::Ready { service } => self.register(now, identity, service),
                // "The worker MAY send DISCONNECT at any time, including before READY."
                WorkerMessage::Disconnect => {}
                WorkerMessage::Reply { .. } => {
                    self.protocol_violation(identity, "REPLY before READY")
                }
                WorkerMessage::Heartbeat => {
                    self.protocol_violation(identity, "HEARTBEAT before READY")
                }
            }
            return;
        };
        // "Any received command except DISCONNECT acts as a heartbeat."
        worker.heartbeat.on_recv(now);
        match message {
            WorkerMessage::Heartbeat => {}
            WorkerMessage::Ready { .. } => {
                // "The worker MUST NOT send a further READY."
                self.stats.protocol_errors += 1;
                warn!(worker = %Hex(identity), "second READY, disconnecting");
                self.disconnect_worker(now, identity, true);
            }
            WorkerMessage::Disconnect => {
                debug!(worker = %Hex(identity), "worker disconnected");
                // "When the broker receives DISCONNECT from a worker it MUST send no further
                // commands to that worker."
                self.disconnect_worker(now, identity, false);
            }
            WorkerMessage::Reply { client, body } => {
                match worker.in_flight.take() {
                    Some(request) if request.client == client => {
                        let service = worker.service.clone();
                        worker.heartbeat.on_send(now);
                        self.send_reply(&client, request.service, body);
                        if let Some(svc) = self.services.get_mut(&service) {
                            svc.idle.push_back(identity.clone());
                        }
                        self.dispatch(now, &service);
                    }
                    other => {
                        // A reply the worker was not asked for (idle, or another client's
                        // address): the worker is confused; put back what it held.
                        worker.in_flight = other;
                        self.stats.protocol_errors += 1;
                        warn!(worker = %Hex(identity), client = %Hex(&client), "REPLY for no request in flight, disconnecting");
                        self.disconnect_worker(now, identity, true);
                    }
                }
            }
        }
    }

    /// Reports that a message to `identity` could not be sent (the peer is gone, or its queue is
    /// full). A worker is dropped and its request re-queued; a lost client reply is only logged,
    /// since the client retries on its own timeout.
    pub fn handle_undeliverable(&mut self, now: Instant, role: Role, identity: &Bytes) {
        self.stats.undeliverable += 1;
        match role {
            Role::Worker => {
                if self.workers.contains_key(identity) {
                    info!(worker = %Hex(identity), "worker unreachable, removing");
                    self.disconnect_worker(now, identity, false);
                }
            }
            Role::Client => {
                debug!(client = %Hex(identity), "reply undeliverable, client gone");
            }
        }
    }

    /// Expires requests and, at each heartbeat interval, heartbeats workers and purges dead ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.expiries.front().copied() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            match self.requests.get(&id) {
                Some(request) if request.expires_at == at => {
                    let request = self.requests.remove(&id).expect("present");
                    self.stats.expired += 1;
                    debug!(client = %Hex(&request.client), service = %Hex(&request.service), "request expired");
                    if let Some(svc) = self.services.get_mut(&request.service) {
                        svc.queued -= 1;
                        svc.trim(&request.client, &self.requests);
                    }
                    self.drop_service_if_unused(&request.service);
                }
                _ => {}
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + self.config.heartbeat.interval;
            self.purge_dead_workers(now);
            self.heartbeat_workers(now);
        }
    }

    /// Tells every worker DISCONNECT and forgets all workers and queued requests.
    pub fn shutdown(&mut self) {
        let identities: Vec<Bytes> = self.workers.keys().cloned().collect();
        for identity in identities {
            self.push_worker(&identity, BrokerMessage::Disconnect);
        }
        self.workers.clear();
        self.services.clear();
        self.requests.clear();
        self.expiries.clear();
    }

    fn register(&mut self, now: Instant, identity: &Bytes, service: Bytes) {
        info!(worker = %Hex(identity), service = %Hex(&service), "worker ready");
        self.workers.insert(
            identity.clone(),
            Worker {
                service: service.clone(),
                heartbeat: Heartbeat::new(now, self.config.heartbeat),
                in_flight: None,
            },
        );
        let svc = self.services.entry(service.clone()).or_default();
        svc.workers += 1;
        svc.idle.push_back(identity.clone());
        self.dispatch(now, &service);
    }

    fn protocol_violation(&mut self, identity: &Bytes, what: &'static str) {
        self.stats.protocol_errors += 1;
        warn!(peer = %Hex(identity), what, "unexpected command, sending DISCONNECT");
        // "The broker MUST respond to any valid but unexpected command by sending DISCONNECT and
        // then no further commands to that worker."
        self.push_worker(identity, BrokerMessage::Disconnect);
    }

    /// Removes a worker, optionally telling it DISCONNECT, and re-queues what it held.
    fn disconnect_worker(&mut self, now: Instant, identity: &Bytes, send: bool) {
        let Some(worker) = self.workers.remove(identity) else {
            return;
        };
        if send {
            self.push_worker(identity, BrokerMessage::Disconnect);
        }
        if let Some(svc) = self.services.get_mut(&worker.service) {
            svc.workers -= 1;
            svc.idle.retain(|w| w != identity);
        }
        if let Some(mut request) = worker.in_flight {
            if request
                .deliveries
                .on_worker_lost(self.config.max_deliveries)
                == Redelivery::Abandon
            {
                self.stats.abandoned += 1;
                warn!(
                    client = %Hex(&request.client),
                    service = %Hex(&request.service),
                    deliveries = request.deliveries.count(),
                    "request abandoned: every worker that took it went away"
                );
            } else {
                self.stats.requeued += 1;
                debug!(client = %Hex(&request.client), service = %Hex(&request.service), "re-queueing request of lost worker");
                request.expires_at = now + self.config.request_expiry;
                self.enqueue(request, true);
                self.dispatch(now, &worker.service);
            }
        }
        self.drop_service_if_unused(&worker.service);
    }

    fn enqueue(&mut self, request: Request, front: bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.expiries.push_back((request.expires_at, id));
        self.services
            .entry(request.service.clone())
            .or_default()
            .push(&request.client, id, front);
        self.requests.insert(id, request);
    }

    /// Drops expiry entries of requests that are no longer queued from the front.
    fn trim_expiries(&mut self) {
        while let Some((_, id)) = self.expiries.front() {
            if self.requests.contains_key(id) {
                break;
            }
            self.expiries.pop_front();
        }
    }

    /// Hands queued requests of `service` to its idle workers, least recently used first.
    fn dispatch(&mut self, now: Instant, service: &Bytes) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        while !svc.idle.is_empty() {
            let Some((_, mut request)) = svc.pop(&mut self.requests) else {
                break;
            };
            let identity = svc.idle.pop_front().expect("not empty");
            let worker = self
                .workers
                .get_mut(&identity)
                .expect("idle workers are registered");
            request.deliveries.hand_out();
            worker.heartbeat.on_send(now);
            self.transmits.push_back(Transmit {
                role: Role::Worker,
                frames: BrokerMessage::request_routed(&identity, &request.client, &request.body),
            });
            worker.in_flight = Some(request);
        }
        self.trim_expiries();
    }

    fn purge_dead_workers(&mut self, now: Instant) {
        let dead: Vec<Bytes> = self
            .workers
            .iter()
            .filter(|(_, w)| w.heartbeat.is_peer_dead(now))
            .map(|(id, _)| id.clone())
            .collect();
        for identity in dead {
            self.stats.purged += 1;
            warn!(worker = %Hex(&identity), "worker silent past liveness, purging");
            self.disconnect_worker(now, &identity, false);
        }
    }

    fn heartbeat_workers(&mut self, now: Instant) {
        // Workers sent something within the last half interval skip this round, so the gap
        // between two commands to a worker stays under 1.5 intervals.
        let half = self.config.heartbeat.interval / 2;
        for (identity, worker) in &mut self.workers {
            if now + half >= worker.heartbeat.send_at() {
                worker.heartbeat.on_send(now);
                self.transmits.push_back(Transmit {
                    role: Role::Worker,
                    frames: BrokerMessage::Heartbeat.encode_routed(identity),
                });
            }
        }
    }

    fn send_reply(&mut self, client: &Bytes, service: Bytes, body: Vec<Bytes>) {
        self.stats.replies += 1;
        self.transmits.push_back(Transmit {
            role: Role::Client,
            frames: ClientReply { service, body }.encode_routed(client),
        });
    }

    fn push_worker(&mut self, identity: &Bytes, message: BrokerMessage) {
        self.transmits.push_back(Transmit {
            role: Role::Worker,
            frames: message.encode_routed(identity),
        });
    }

    fn drop_service_if_unused(&mut self, service: &Bytes) {
        if self.services.get(service).is_some_and(Service::is_unused) {
            self.services.remove(service);
        }
    }
}
