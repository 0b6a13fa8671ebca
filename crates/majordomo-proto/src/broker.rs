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
//! - A busy worker that has been seen to heartbeat while busy (more than half an interval after
//!   it was handed a request) is held to liveness like an idle one; a busy worker never seen to (the Guide's single-threaded worker API sends nothing while
//!   its handler runs) gets [`BrokerConfig::busy_timeout`] instead, so a long request on a live
//!   worker of any library is delivered. A worker whose connection closes is removed at once
//!   ([`BrokerCore::handle_disconnected`]), busy or not, so a killed worker's request goes to
//!   another worker without waiting for either timeout.
//! - Queues are bounded by bytes, per service and in total. A request for a service with no
//!   registered worker expires after [`BrokerConfig::request_expiry`] ("SHOULD expire these
//!   requests after a reasonable and configurable time if no service has been registered");
//!   requests for a service with workers wait for them, up to [`BrokerConfig::max_wait`] if set.
//! - Drops are counted in the stats and logged as summaries ([`crate::drops`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, trace, warn};

use crate::drops::{DropLog, DropReason};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::mdp::{BrokerInbound, BrokerMessage, ClientReply, ClientRequest, WorkerMessage};
use crate::mdp2::{self, Dialect, Part, Sender, Version};
use crate::peer::Peer;
use crate::redelivery::{Deliveries, Redelivery};
use crate::{mmi, ConfigError, DecodeError, Hex, Limits};

/// Bytes each queued request is counted for beyond its frames: its entry in the queues, the
/// expiry list and the request table, and the transport's buffers. Measured: a broker holding
/// 100,000 queued requests of 11-byte bodies grew by 327 bytes per request, 310 beyond the frames.
pub const REQUEST_OVERHEAD: usize = 320;

/// Broker behaviour and resource bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// Heartbeat interval sent to workers and the liveness after which a silent worker is purged
    /// (default 2500 ms, 3). Must match the workers' settings: "The heartbeat rate must be set to
    /// similar values in broker and worker, or false disconnections will occur."
    pub heartbeat: HeartbeatConfig,
    /// How long a request for a service with no registered worker waits for one before it is
    /// dropped (default 10 s): "The broker SHOULD queue client requests for which no service has
    /// been registered and SHOULD expire these requests after a reasonable and configurable time if
    /// no service has been registered." Requests for a service that has workers are not expired
    /// (see [`BrokerConfig::max_wait`]); when a service loses its last worker, its queued requests
    /// get this long from then.
    pub request_expiry: Duration,
    /// How long a request may wait in a queue even while its service has workers (default `None`:
    /// no limit; the workers work through the queue). A request re-queued after its worker went
    /// away gets a fresh wait.
    pub max_wait: Option<Duration>,
    /// How long a busy worker that has never been seen to heartbeat while busy may stay silent
    /// before it is purged (default 900 s). Workers that heartbeat while busy (ours do) are held
    /// to `heartbeat.liveness` intervals, busy or idle; a worker whose connection closes is
    /// removed at once either way.
    pub busy_timeout: Duration,
    /// Most bytes queued for one service (default 256 MiB): the bodies, service name and client
    /// address of each queued request plus [`REQUEST_OVERHEAD`] for its bookkeeping (so about
    /// 800,000 small requests). Past it, new
    /// requests for that service are dropped; the client sees a timeout.
    pub max_queued_bytes_per_service: usize,
    /// Most bytes queued over all services (default 1 GiB), counted the same way.
    pub max_queued_bytes: usize,
    /// Most requests queued for one service (default: no limit; the byte bounds protect memory).
    pub max_queued_per_service: usize,
    /// Most requests queued over all services (default: no limit). All bounds apply to new
    /// requests: a request handed back because its worker went away was already accepted and is
    /// re-queued even at a bound, so a queue can exceed a bound by at most its workers' requests.
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

    /// Sets `max_wait`; the field says what it means and its default.
    pub fn max_wait(mut self, max_wait: Option<Duration>) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets `busy_timeout`; the field says what it means and its default.
    pub fn busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Sets `max_queued_bytes_per_service`; the field says what it means and its default.
    pub fn max_queued_bytes_per_service(mut self, bytes: usize) -> Self {
        self.max_queued_bytes_per_service = bytes;
        self
    }

    /// Sets `max_queued_bytes`; the field says what it means and its default.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
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
        if self.busy_timeout.is_zero() {
            return Err(ConfigError("busy_timeout must be positive"));
        }
        Ok(())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            request_expiry: Duration::from_secs(10),
            max_wait: None,
            busy_timeout: Duration::from_secs(900),
            max_queued_bytes_per_service: 256 * 1024 * 1024,
            max_queued_bytes: 1024 * 1024 * 1024,
            max_queued_per_service: usize::MAX,
            max_queued_total: usize::MAX,
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

/// Counters and gauges, for logs, tests, benchmarks and the `mmi.stats` service (as JSON; it
/// reads back into this type, fields it does not know ignored and missing ones zero).
///
/// Every request is accounted for: `requests == replies + queued + in_flight + expired + rejected
/// + abandoned` holds between calls (until [`BrokerCore::shutdown`], which forgets everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BrokerStats {
    /// Registered workers.
    pub workers: usize,
    /// Registered workers waiting for a request.
    pub idle_workers: usize,
    /// Services known (with workers or queued requests).
    pub services: usize,
    /// Requests queued, not yet with a worker.
    pub queued: usize,
    /// Bytes those requests are counted for (see [`BrokerConfig::max_queued_bytes`]).
    pub queued_bytes: usize,
    /// Requests with a worker, not yet answered.
    pub in_flight: usize,
    /// Draining: taking no new requests (see [`BrokerCore::drain`]).
    pub draining: bool,
    /// Requests accepted from clients (MMI included).
    pub requests: u64,
    /// Replies sent to clients (MMI included).
    pub replies: u64,
    /// Requests dropped because no worker registered for their service within the expiry, or
    /// (with [`BrokerConfig::max_wait`]) because they waited longer than that.
    pub expired: u64,
    /// Requests dropped at a queue bound (bytes or count, per service or in total).
    pub rejected: u64,
    /// Requests handed back to the queue after their worker went away.
    pub requeued: u64,
    /// Requests dropped after `max_deliveries` workers went away holding them.
    pub abandoned: u64,
    /// Workers purged for silence (past liveness, or past the busy timeout).
    pub purged: u64,
    /// Workers removed because their connection closed.
    pub disconnected: u64,
    /// Messages dropped as malformed, and valid but unexpected commands.
    pub protocol_errors: u64,
    /// Messages the driver could not deliver (peer gone, or its queue full past the send
    /// timeout, or held after that).
    pub undeliverable: u64,
    /// Each known service, sorted by name.
    pub per_service: Vec<ServiceStats>,
}

/// Gauges of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServiceStats {
    /// The service name (in JSON as text, bytes that are not UTF-8 replaced).
    #[serde(serialize_with = "lossy_text", deserialize_with = "text_bytes")]
    pub name: Bytes,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Bytes those requests are counted for.
    pub queued_bytes: usize,
    /// Registered workers waiting for a request.
    pub idle_workers: usize,
    /// Registered workers holding a request.
    pub busy_workers: usize,
    /// How long the oldest queued request has waited, in milliseconds (0 with none queued).
    pub oldest_queued_ms: u64,
    /// Of those, the ones seen heartbeating while busy, held to liveness (the others get the
    /// busy timeout).
    pub busy_heartbeating: usize,
}

fn lossy_text<S: serde::Serializer>(name: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(name))
}

fn text_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    <String as serde::Deserialize>::deserialize(deserializer).map(Bytes::from)
}

#[derive(Debug)]
struct Request {
    client: Bytes,
    service: Bytes,
    body: Vec<Bytes>,
    /// Bytes counted against the queue bounds.
    size: usize,
    /// When it expires if its service still has no worker; `None` while the service has workers.
    expires_at: Option<Instant>,
    /// When it has waited long enough (with [`BrokerConfig::max_wait`]).
    wait_until: Option<Instant>,
    /// When the broker received it.
    received: Instant,
    deliveries: Deliveries,
    /// The MDP version and dialect of its client: the form of every reply to it.
    form: Version,
    /// A PARTIAL of it reached its (v0.2) client: it is never replayed to another worker.
    streamed: bool,
    /// PARTIALs gathered for a v0.1 client, which takes one REPLY: sent with the FINAL.
    gathered: Vec<Bytes>,
    /// Whether the gathered parts passed the message size limit (the reply is then dropped).
    overflowed: bool,
}

#[derive(Debug)]
struct Worker {
    service: Bytes,
    heartbeat: Heartbeat,
    in_flight: Option<Request>,
    /// Whether it has sent a HEARTBEAT while holding a request: then it is held to liveness
    /// when busy too.
    heartbeats_when_busy: bool,
    /// When it was handed the request it holds.
    busy_since: Instant,
    /// The MDP version and dialect it registered in: the form of every command to it.
    form: Version,
}

#[derive(Debug, Default)]
struct Service {
    /// Request ids per client, oldest first. Ids whose request expired are skipped lazily.
    queues: HashMap<Bytes, VecDeque<u64>>,
    /// Clients with queued requests, in round-robin order; a client is here iff it is in `queues`.
    ring: VecDeque<Bytes>,
    /// Live requests in `queues`.
    queued: usize,
    /// Bytes they are counted for.
    queued_bytes: usize,
    /// Idle workers, least recently used first.
    idle: VecDeque<Bytes>,
    /// Registered workers, idle or busy.
    workers: usize,
    /// `majordomo_request_duration_seconds{service}`: receipt to reply forwarded. Registered
    /// with the metrics recorder at the service's first reply, then recorded to without lookups.
    latency: Option<metrics::Histogram>,
}

impl Service {
    fn push(&mut self, client: &Bytes, id: u64, size: usize, front: bool) {
        self.queued_bytes += size;
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
            if let Some((_, request)) = &found {
                self.queued -= 1;
                self.queued_bytes -= request.size;
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
    /// Maximum-wait deadlines of queued requests, in the same order (with `max_wait` only).
    waits: VecDeque<(Instant, u64)>,
    /// Bytes queued over all services.
    queued_bytes: usize,
    drops: DropLog,
    next_id: u64,
    next_tick: Instant,
    transmits: VecDeque<Transmit>,
    stats: BrokerStats,
    /// The latest `now` any call carried: what [`BrokerCore::stats`] measures ages against.
    now: Instant,
    /// Taking no new requests (see [`BrokerCore::drain`]).
    draining: bool,
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
            waits: VecDeque::new(),
            queued_bytes: 0,
            drops: DropLog::default(),
            next_id: 0,
            transmits: VecDeque::new(),
            stats: BrokerStats::default(),
            now,
            draining: false,
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
            queued_bytes: self.queued_bytes,
            in_flight: self
                .workers
                .values()
                .filter(|w| w.in_flight.is_some())
                .count(),
            per_service: self.service_stats(),
            draining: self.draining,
            ..self.stats.clone()
        }
    }

    /// Gauges of every known service, sorted by name; ages as of the latest call's `now`.
    pub fn service_stats(&self) -> Vec<ServiceStats> {
        let mut services: Vec<ServiceStats> = self
            .services
            .iter()
            .map(|(name, s)| ServiceStats {
                name: name.clone(),
                oldest_queued_ms: self.oldest_received(s).map_or(0, |at| {
                    let age = self.now.saturating_duration_since(at);
                    u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
                }),
                queued: s.queued,
                queued_bytes: s.queued_bytes,
                idle_workers: s.idle.len(),
                busy_workers: s.workers - s.idle.len(),
                busy_heartbeating: self
                    .workers
                    .values()
                    .filter(|w| {
                        w.service == name && w.in_flight.is_some() && w.heartbeats_when_busy
                    })
                    .count(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    /// Keeps the latest `now` seen (calls may come with the same instant, never an earlier one
    /// that matters).
    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// When the oldest request queued for `service` arrived. Each client's queue is oldest
    /// first, so only its first live request counts (ids of expired requests are skipped, as
    /// dispatch skips them).
    fn oldest_received(&self, service: &Service) -> Option<Instant> {
        service
            .queues
            .values()
            .filter_map(|ids| ids.iter().find_map(|id| self.requests.get(id)))
            .map(|request| request.received)
            .min()
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
        [
            self.expiries.front().map(|(at, _)| *at),
            self.waits.front().map(|(at, _)| *at),
            self.drops.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_tick, Instant::min)
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
        self.tick(now);
        let limits = self.config.limits;
        let v02 = match mdp2::classify(frames) {
            Some((Version::V02(dialect), Sender::Client)) => {
                mdp2::ClientRequest::decode(frames, dialect, &limits).map(|request| {
                    let request = ClientRequest::new(request.service, request.body);
                    self.handle_client_in(now, identity, request, Version::V02(dialect));
                })
            }
            Some((Version::V02(dialect), Sender::Worker)) => {
                mdp2::WorkerMessage::decode(frames, dialect, &limits)
                    .map(|message| self.handle_worker_v02(now, identity, message, dialect))
            }
            _ => return self.handle_message_v01(now, identity, frames),
        };
        if let Err(error) = &v02 {
            self.handle_invalid(now, identity, error);
        }
        v02
    }

    /// As [`BrokerCore::handle_message`], for an endpoint that serves only clients or only
    /// workers (`expected`): a message of the other sub-protocol, in any version, is an error.
    pub fn handle_message_from(
        &mut self,
        now: Instant,
        identity: &Bytes,
        frames: &[Bytes],
        expected: Sender,
    ) -> Result<(), DecodeError> {
        match mdp2::classify(frames) {
            Some((version, sender)) if sender != expected => {
                let header = match version {
                    Version::V02(Dialect::Majortomo) | Version::V01 => frames[1].clone(),
                    Version::V02(Dialect::Rfc18) => frames[0].clone(),
                };
                let error = DecodeError::UnexpectedHeader {
                    expected: match expected {
                        Sender::Client => "MDPC01 or MDPC02",
                        Sender::Worker => "MDPW01 or MDPW02",
                    },
                    got: header,
                };
                self.tick(now);
                self.handle_invalid(now, identity, &error);
                Err(error)
            }
            _ => self.handle_message(now, identity, frames),
        }
    }

    fn handle_message_v01(
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
        self.tick(now);
        self.stats.protocol_errors += 1;
        metrics::counter!("majordomo_protocol_errors_total", "kind" => error.kind()).increment(1);
        warn!(peer = %Peer(identity), %error, "dropped invalid message");
        if self.workers.contains_key(identity) {
            self.disconnect_worker(now, identity, true);
        }
    }

    /// Handles a decoded MDP/Client REQUEST from the client `identity`.
    pub fn handle_client(&mut self, now: Instant, identity: &Bytes, request: ClientRequest) {
        self.handle_client_in(now, identity, request, Version::V01);
    }

    /// Handles a request from a client that speaks `form`; every reply to it is in that form.
    fn handle_client_in(
        &mut self,
        now: Instant,
        identity: &Bytes,
        request: ClientRequest,
        form: Version,
    ) {
        self.tick(now);
        self.stats.requests += 1;
        if mmi::is_mmi(&request.service) {
            self.handle_mmi(now, identity, request, form);
            return;
        }
        if self.draining {
            debug!(client = %Peer(identity), service = %Hex(&request.service), "request dropped: draining");
            // No reply: the client's retry goes to another broker, or to this one restarted.
            self.stats.rejected += 1;
            self.drops
                .record(now, &request.service, DropReason::Draining);
            return;
        }
        let size = REQUEST_OVERHEAD
            + identity.len()
            + request.service.len()
            + request.body.iter().map(Bytes::len).sum::<usize>();
        let (service_queued, service_bytes) = self
            .services
            .get(&request.service)
            .map_or((0, 0), |s| (s.queued, s.queued_bytes));
        let config = &self.config;
        let bound = if self.queued_bytes + size > config.max_queued_bytes {
            Some(DropReason::TotalBytes)
        } else if service_bytes + size > config.max_queued_bytes_per_service {
            Some(DropReason::ServiceBytes)
        } else if self.requests.len() >= config.max_queued_total {
            Some(DropReason::TotalCount)
        } else if service_queued >= config.max_queued_per_service {
            Some(DropReason::ServiceCount)
        } else {
            None
        };
        if let Some(reason) = bound {
            self.stats.rejected += 1;
            debug!(client = %Peer(identity), service = %Hex(&request.service), %reason, "request dropped");
            self.drops.record(now, &request.service, reason);
            return;
        }
        trace!(client = %Peer(identity), service = %Hex(&request.service), "request");
        let service = request.service.clone();
        self.enqueue(
            now,
            Request {
                client: identity.clone(),
                service: request.service,
                body: request.body,
                size,
                expires_at: None,
                wait_until: None,
                received: now,
                deliveries: Deliveries::default(),
                form,
                streamed: false,
                gathered: Vec::new(),
                overflowed: false,
            },
            false,
        );
        self.dispatch(now, &service);
    }

    fn handle_mmi(
        &mut self,
        now: Instant,
        identity: &Bytes,
        request: ClientRequest,
        form: Version,
    ) {
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
        debug!(client = %Peer(identity), service = %Hex(&request.service), status = %Hex(&reply[0]), "mmi");
        self.send_reply(identity, request.service, reply, form);
    }

    /// Handles a decoded MDP/Worker v0.2 command from the worker `identity`: READY registers it
    /// in `dialect`, PARTIAL goes on to the client (or is gathered for a v0.1 client), and FINAL,
    /// HEARTBEAT and DISCONNECT follow the v0.1 rules of REPLY, HEARTBEAT and DISCONNECT.
    fn handle_worker_v02(
        &mut self,
        now: Instant,
        identity: &Bytes,
        message: mdp2::WorkerMessage,
        dialect: Dialect,
    ) {
        let form = Version::V02(dialect);
        let registered = self.workers.contains_key(identity);
        let message = match message {
            mdp2::WorkerMessage::Ready { service } if !registered => {
                if mmi::is_mmi(&service) {
                    self.protocol_violation(identity, "READY for an mmi.* service", form);
                } else {
                    self.register(now, identity, service, form);
                }
                return;
            }
            mdp2::WorkerMessage::Ready { service } => WorkerMessage::Ready { service },
            mdp2::WorkerMessage::Heartbeat => WorkerMessage::Heartbeat,
            mdp2::WorkerMessage::Disconnect => WorkerMessage::Disconnect,
            mdp2::WorkerMessage::Reply {
                part: Part::Partial,
                client,
                body,
            } if registered => {
                self.handle_partial(now, identity, client, body);
                return;
            }
            mdp2::WorkerMessage::Reply { client, body, .. } => {
                WorkerMessage::Reply { client, body }
            }
        };
        if !registered {
            // Before READY: answered in the worker's own form.
            match message {
                WorkerMessage::Disconnect => {}
                WorkerMessage::Heartbeat => {
                    self.protocol_violation(identity, "HEARTBEAT before READY", form)
                }
                _ => self.protocol_violation(identity, "PARTIAL or FINAL before READY", form),
            }
            return;
        }
        self.handle_worker(now, identity, message);
    }

    /// A v0.2 worker's PARTIAL: forwarded to a v0.2 client as it comes, gathered for a v0.1 one.
    fn handle_partial(&mut self, now: Instant, identity: &Bytes, client: Bytes, body: Vec<Bytes>) {
        self.tick(now);
        let max = self.config.limits.max_message_size;
        let worker = self.workers.get_mut(identity).expect("registered");
        // "Any received command except DISCONNECT acts as a heartbeat."
        worker.heartbeat.on_recv(now);
        let Some(request) = worker.in_flight.as_mut().filter(|r| r.client == client) else {
            self.stats.protocol_errors += 1;
            warn!(worker = %Peer(identity), client = %Peer(&client), "PARTIAL for no request in flight, disconnecting");
            self.disconnect_worker(now, identity, true);
            return;
        };
        match request.form {
            Version::V02(dialect) => {
                request.streamed = true;
                let reply = mdp2::ClientReply {
                    part: Part::Partial,
                    service: request.service.clone(),
                    body,
                };
                self.transmits.push_back(Transmit {
                    role: Role::Client,
                    frames: reply.encode_routed(&client, dialect),
                });
            }
            Version::V01 => {
                // A v0.1 client takes one REPLY: the parts go with the FINAL, up to the message
                // size limit.
                let size = request
                    .gathered
                    .iter()
                    .chain(&body)
                    .map(Bytes::len)
                    .sum::<usize>();
                if size > max {
                    request.overflowed = true;
                    request.gathered.clear();
                } else if !request.overflowed {
                    request.gathered.extend(body);
                }
            }
        }
    }

    /// Handles a decoded MDP/Worker command from the worker `identity`.
    pub fn handle_worker(&mut self, now: Instant, identity: &Bytes, message: WorkerMessage) {
        self.tick(now);
        let Some(worker) = self.workers.get_mut(identity) else {
            match message {
                WorkerMessage::Ready { service } if mmi::is_mmi(&service) => {
                    // "It MUST disconnect any workers that attempt to register services in this
                    // namespace." (8/MMI)
                    self.protocol_violation(identity, "READY for an mmi.* service", Version::V01);
                }
                WorkerMessage::Ready { service } => {
                    self.register(now, identity, service, Version::V01)
                }
                // "The worker MAY send DISCONNECT at any time, including before READY."
                WorkerMessage::Disconnect => {}
                WorkerMessage::Reply { .. } => {
                    self.protocol_violation(identity, "REPLY before READY", Version::V01)
                }
                WorkerMessage::Heartbeat => {
                    self.protocol_violation(identity, "HEARTBEAT before READY", Version::V01)
                }
            }
            return;
        };
        // "Any received command except DISCONNECT acts as a heartbeat."
        worker.heartbeat.on_recv(now);
        match message {
            WorkerMessage::Heartbeat => {
                // Only a heartbeat sent well after the request reached the worker shows that it
                // heartbeats while busy: a worker that sends nothing while busy may have sent one
                // just before the request arrived, and it lands just after the hand-out.
                let margin = self.config.heartbeat.interval / 2;
                if worker.in_flight.is_some() && now >= worker.busy_since + margin {
                    worker.heartbeats_when_busy = true;
                }
            }
            WorkerMessage::Ready { .. } => {
                // "The worker MUST NOT send a further READY."
                self.stats.protocol_errors += 1;
                warn!(worker = %Peer(identity), "second READY, disconnecting");
                self.disconnect_worker(now, identity, true);
            }
            WorkerMessage::Disconnect => {
                debug!(worker = %Peer(identity), "worker disconnected");
                // "When the broker receives DISCONNECT from a worker it MUST send no further
                // commands to that worker."
                self.disconnect_worker(now, identity, false);
            }
            WorkerMessage::Reply { client, body } => {
                match worker.in_flight.take() {
                    Some(request) if request.client == client => {
                        let service = worker.service.clone();
                        worker.heartbeat.on_send(now);
                        let received = request.received;
                        if request.overflowed {
                            // Parts of a v0.2 worker past what a v0.1 client can take in one
                            // REPLY: the client gets none and retries; the worker goes on.
                            self.stats.abandoned += 1;
                            warn!(worker = %Peer(identity), client = %Peer(&client), max = self.config.limits.max_message_size, "reply in parts larger than the message size limit for a v0.1 client, dropped");
                        } else {
                            let mut parts = request.gathered;
                            let body = if parts.is_empty() {
                                body
                            } else {
                                parts.extend(body);
                                parts
                            };
                            self.send_reply(&client, request.service, body, request.form);
                        }
                        if let Some(svc) = self.services.get_mut(&service) {
                            svc.idle.push_back(identity.clone());
                            svc.latency
                                .get_or_insert_with(|| {
                                    let name = String::from_utf8_lossy(&service).into_owned();
                                    metrics::histogram!("majordomo_request_duration_seconds", "service" => name)
                                })
                                .record(now.saturating_duration_since(received).as_secs_f64());
                        }
                        self.dispatch(now, &service);
                    }
                    other => {
                        // A reply the worker was not asked for (idle, or another client's
                        // address): the worker is confused; put back what it held.
                        worker.in_flight = other;
                        self.stats.protocol_errors += 1;
                        warn!(worker = %Peer(identity), client = %Peer(&client), "REPLY for no request in flight, disconnecting");
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
                    info!(worker = %Peer(identity), "worker unreachable, removing");
                    self.disconnect_worker(now, identity, false);
                }
            }
            Role::Client => {
                debug!(client = %Peer(identity), "reply undeliverable, client gone");
            }
        }
    }

    /// Expires requests and, at each heartbeat interval, heartbeats workers and purges dead ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        while let Some((at, id)) = self.expiries.front().copied() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            let Some(request) = self.requests.get_mut(&id) else {
                continue;
            };
            if request.expires_at != Some(at) {
                continue;
            }
            if self
                .services
                .get(&request.service)
                .is_some_and(|s| s.workers > 0)
            {
                // A worker registered since: the request waits for it, without an expiry.
                request.expires_at = None;
                continue;
            }
            self.drop_queued(now, id, DropReason::NoWorker);
        }
        while let Some((at, id)) = self.waits.front().copied() {
            if at > now {
                break;
            }
            self.waits.pop_front();
            if self
                .requests
                .get(&id)
                .is_some_and(|r| r.wait_until == Some(at))
            {
                self.drop_queued(now, id, DropReason::WaitedTooLong);
            }
        }
        self.drops.handle_timeout(now);
        if now >= self.next_tick {
            self.next_tick = now + self.config.heartbeat.interval;
            self.purge_dead_workers(now);
            self.heartbeat_workers(now);
        }
    }

    /// Reports that the connection of peer `identity` closed (the transport saw it go). A
    /// registered worker is removed at once and what it held re-queued, whatever its heartbeat
    /// policy: a killed worker's request need not wait for liveness or the busy timeout.
    pub fn handle_disconnected(&mut self, now: Instant, identity: &Bytes) {
        self.tick(now);
        let Some(worker) = self.workers.get(identity) else {
            return;
        };
        self.stats.disconnected += 1;
        let busy = worker.in_flight.is_some();
        info!(worker = %Peer(identity), service = %Hex(&worker.service), busy, "worker connection closed, removing");
        self.disconnect_worker(now, identity, false);
    }

    /// Removes the queued request `id`, counted and summarised as dropped for `reason`.
    fn drop_queued(&mut self, now: Instant, id: u64, reason: DropReason) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        self.stats.expired += 1;
        self.queued_bytes -= request.size;
        debug!(client = %Peer(&request.client), service = %Hex(&request.service), %reason, "request dropped");
        self.drops.record(now, &request.service, reason);
        if let Some(svc) = self.services.get_mut(&request.service) {
            svc.queued -= 1;
            svc.queued_bytes -= request.size;
            svc.trim(&request.client, &self.requests);
        }
        self.drop_service_if_unused(&request.service);
    }

    /// Stops taking new requests: from now on a client request (other than `mmi.*`) is dropped
    /// unanswered and counted as rejected, so the client retries elsewhere. What is queued or in
    /// flight is still served; workers keep working. [`BrokerCore::is_drained`] tells when
    /// nothing is left; [`BrokerCore::shutdown`] ends it.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether [`BrokerCore::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Draining, with no request queued or in flight.
    pub fn is_drained(&self) -> bool {
        self.draining
            && self.requests.is_empty()
            && self.workers.values().all(|w| w.in_flight.is_none())
    }

    /// Tells every worker DISCONNECT and forgets all workers and queued requests.
    pub fn shutdown(&mut self) {
        let workers: Vec<(Bytes, Version)> = self
            .workers
            .iter()
            .map(|(id, w)| (id.clone(), w.form))
            .collect();
        for (identity, form) in workers {
            self.push_worker(&identity, BrokerMessage::Disconnect, form);
        }
        self.workers.clear();
        self.services.clear();
        self.requests.clear();
        self.expiries.clear();
        self.waits.clear();
        self.queued_bytes = 0;
    }

    fn register(&mut self, now: Instant, identity: &Bytes, service: Bytes, form: Version) {
        info!(worker = %Peer(identity), service = %Hex(&service), "worker ready");
        self.workers.insert(
            identity.clone(),
            Worker {
                service: service.clone(),
                heartbeat: Heartbeat::new(now, self.config.heartbeat),
                in_flight: None,
                heartbeats_when_busy: false,
                busy_since: now,
                form,
            },
        );
        let svc = self.services.entry(service.clone()).or_default();
        svc.workers += 1;
        svc.idle.push_back(identity.clone());
        self.dispatch(now, &service);
    }

    fn protocol_violation(&mut self, identity: &Bytes, what: &'static str, form: Version) {
        self.stats.protocol_errors += 1;
        warn!(peer = %Peer(identity), what, "unexpected command, sending DISCONNECT");
        // "The broker MUST respond to any valid but unexpected command by sending DISCONNECT and
        // then no further commands to that worker."
        self.push_worker(identity, BrokerMessage::Disconnect, form);
    }

    /// Removes a worker, optionally telling it DISCONNECT, and re-queues what it held.
    fn disconnect_worker(&mut self, now: Instant, identity: &Bytes, send: bool) {
        let Some(worker) = self.workers.remove(identity) else {
            return;
        };
        if send {
            self.push_worker(identity, BrokerMessage::Disconnect, worker.form);
        }
        if let Some(svc) = self.services.get_mut(&worker.service) {
            svc.workers -= 1;
            svc.idle.retain(|w| w != identity);
            if svc.workers == 0 {
                // No worker left: what waits for one now expires after `request_expiry`.
                let at = now + self.config.request_expiry;
                for id in svc.queues.values().flatten() {
                    if let Some(request) = self.requests.get_mut(id) {
                        if request.expires_at.is_none() {
                            request.expires_at = Some(at);
                            self.expiries.push_back((at, *id));
                        }
                    }
                }
            }
        }
        if let Some(mut request) = worker.in_flight {
            if request.streamed {
                // Its client already holds PARTIALs: replaying the request to another worker
                // would send it parts twice. It gets no FINAL, and retries.
                self.stats.abandoned += 1;
                warn!(client = %Peer(&request.client), service = %Hex(&request.service), "worker lost after streaming part of a reply: request abandoned, not replayed");
                self.drops
                    .record(now, &request.service, DropReason::Abandoned);
            } else if request
                .deliveries
                .on_worker_lost(self.config.max_deliveries)
                == Redelivery::Abandon
            {
                self.stats.abandoned += 1;
                debug!(
                    client = %Peer(&request.client),
                    service = %Hex(&request.service),
                    deliveries = request.deliveries.count(),
                    "request abandoned: every worker that took it went away"
                );
                self.drops
                    .record(now, &request.service, DropReason::Abandoned);
            } else {
                self.stats.requeued += 1;
                debug!(client = %Peer(&request.client), service = %Hex(&request.service), "re-queueing request of lost worker");
                // Parts gathered from the lost worker are not the next worker's.
                request.gathered.clear();
                request.overflowed = false;
                self.enqueue(now, request, true);
                self.dispatch(now, &worker.service);
            }
        }
        self.drop_service_if_unused(&worker.service);
    }

    /// Queues `request` (at the front for a re-queued one), with an expiry if its service has no
    /// worker and a maximum wait if one is configured. Every entry is `now` plus a fixed delay,
    /// so pushing at the back keeps both lists in deadline order.
    fn enqueue(&mut self, now: Instant, mut request: Request, front: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let svc = self.services.entry(request.service.clone()).or_default();
        request.expires_at = (svc.workers == 0).then(|| now + self.config.request_expiry);
        if let Some(at) = request.expires_at {
            self.expiries.push_back((at, id));
        }
        request.wait_until = self.config.max_wait.map(|wait| now + wait);
        if let Some(at) = request.wait_until {
            self.waits.push_back((at, id));
        }
        svc.push(&request.client, id, request.size, front);
        self.queued_bytes += request.size;
        self.requests.insert(id, request);
    }

    /// Drops entries of requests that are no longer queued from the front of the deadline
    /// lists.
    fn trim_expiries(&mut self) {
        for list in [&mut self.expiries, &mut self.waits] {
            while let Some((_, id)) = list.front() {
                if self.requests.contains_key(id) {
                    break;
                }
                list.pop_front();
            }
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
            self.queued_bytes -= request.size;
            let identity = svc.idle.pop_front().expect("not empty");
            let worker = self
                .workers
                .get_mut(&identity)
                .expect("idle workers are registered");
            request.deliveries.hand_out();
            worker.heartbeat.on_send(now);
            worker.busy_since = now;
            let frames = match worker.form {
                Version::V01 => {
                    BrokerMessage::request_routed(&identity, &request.client, &request.body)
                }
                Version::V02(dialect) => mdp2::BrokerMessage::Request {
                    client: request.client.clone(),
                    body: request.body.clone(),
                }
                .encode_routed(&identity, dialect),
            };
            self.transmits.push_back(Transmit {
                role: Role::Worker,
                frames,
            });
            worker.in_flight = Some(request);
        }
        self.trim_expiries();
    }

    /// Purges workers silent past their limit: liveness when idle or when known to heartbeat
    /// while busy, the busy timeout for a busy worker never seen to.
    fn purge_dead_workers(&mut self, now: Instant) {
        let busy_timeout = self.config.busy_timeout;
        let dead: Vec<(Bytes, bool, Duration)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| {
                let silent = now.saturating_duration_since(w.heartbeat.last_heard());
                let busy = w.in_flight.is_some();
                let dead = if busy && !w.heartbeats_when_busy {
                    silent >= busy_timeout
                } else {
                    w.heartbeat.is_peer_dead(now)
                };
                dead.then(|| (id.clone(), busy, silent))
            })
            .collect();
        for (identity, busy, silent) in dead {
            self.stats.purged += 1;
            let silent_s = silent.as_secs_f64();
            if busy {
                warn!(worker = %Peer(&identity), silent_s, "worker silent while busy, purging; its request goes to another worker");
            } else {
                warn!(worker = %Peer(&identity), silent_s, "idle worker silent past liveness, purging");
            }
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
                    frames: match worker.form {
                        Version::V01 => BrokerMessage::Heartbeat.encode_routed(identity),
                        Version::V02(dialect) => {
                            mdp2::BrokerMessage::Heartbeat.encode_routed(identity, dialect)
                        }
                    },
                });
            }
        }
    }

    /// The one reply to a v0.1 client, or the FINAL to a v0.2 one.
    fn send_reply(&mut self, client: &Bytes, service: Bytes, body: Vec<Bytes>, form: Version) {
        self.stats.replies += 1;
        let frames = match form {
            Version::V01 => ClientReply { service, body }.encode_routed(client),
            Version::V02(dialect) => mdp2::ClientReply {
                part: Part::Final,
                service,
                body,
            }
            .encode_routed(client, dialect),
        };
        self.transmits.push_back(Transmit {
            role: Role::Client,
            frames,
        });
    }

    /// HEARTBEAT or DISCONNECT to a worker, in the form it speaks.
    fn push_worker(&mut self, identity: &Bytes, message: BrokerMessage, form: Version) {
        let frames = match (form, message) {
            (Version::V01, message) => message.encode_routed(identity),
            (Version::V02(dialect), BrokerMessage::Disconnect) => {
                mdp2::BrokerMessage::Disconnect.encode_routed(identity, dialect)
            }
            (Version::V02(dialect), _) => {
                mdp2::BrokerMessage::Heartbeat.encode_routed(identity, dialect)
            }
        };
        self.transmits.push_back(Transmit {
            role: Role::Worker,
            frames,
        });
    }

    fn drop_service_if_unused(&mut self, service: &Bytes) {
        if self.services.get(service).is_some_and(Service::is_unused) {
            self.services.remove(service);
        }
    }
}
