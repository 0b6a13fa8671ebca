//! The Majordomo broker as a state machine with no sockets and no clock.
//!
//! # Calling order
//! Feed every message a ROUTER socket receives to [`BrokerCore::handle_message`] (or, when clients
//! and workers have separate endpoints, to [`BrokerCore::handle_client`] and
//! [`BrokerCore::handle_worker`] after decoding). When the instant from
//! [`BrokerCore::poll_timeout`] passes, call [`BrokerCore::handle_timeout`]. After each call, drain
//! [`BrokerCore::poll_transmit`] and send every [`Transmit`]; when a send fails, report it with
//! [`BrokerCore::handle_undeliverable`]. Every input carries `now`. Drain
//! [`BrokerCore::poll_event`] after each call too: the core records no metrics, it reports drops,
//! decode errors and reply latencies as [`Event`]s for the driver to count. The driver also
//! encodes `mmi.stats` ([`BrokerCore::with_stats_encoder`]).
//!
//! # Rules beyond the Guide's broker
//! - Dead workers are purged whether idle or busy, and the request a worker held when it died,
//!   disconnected or broke the protocol goes back to the front of its client's queue for another
//!   worker of the same service, at most [`BrokerConfig::max_deliveries`] times in all. A request
//!   is held by exactly one worker at a time and its reply is only accepted from that worker, so a
//!   client never gets two replies to one request.
//! - A worker may say DISCONNECT right after its reply, and be handed the next request before
//!   that DISCONNECT arrives. A DISCONNECT before anything else since a worker got its request
//!   gives the request back: it is re-queued at the front, and that hand-out does not count
//!   against `max_deliveries` (see [`crate::redelivery`]).
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
//! - Drops are counted in the stats, logged as summaries ([`crate::drops`]) and reported as
//!   [`Event::Dropped`].
//! - A worker speaks the MDP version and dialect of its READY for its whole session: a command in
//!   another is a protocol error ([`DecodeError::VersionSwitch`]), answered with DISCONNECT.
//! - `mmi.service` without a body names no service: `404`.
//! - A service with neither workers nor queued requests is forgotten only after
//!   [`BrokerConfig::service_idle_grace`] (its deadline is part of [`BrokerCore::poll_timeout`]),
//!   so a service whose workers reconnect keeps its metric series; a new service that finds the
//!   table full takes the place of the one idle longest.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, trace, warn};

use crate::access::{Access, SharedAccess};
use crate::codec::{self, FromWorker, Inbound, Request as ClientCommand, ToWorker};
use crate::drops::{DropLog, DropReason, ErrorLog};
use crate::event::{Event, Events};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::mdp::{ClientRequest, WorkerMessage};
use crate::mdp2::{self, Dialect, Part, Sender, Version};
use crate::peer::Peer;
use crate::redelivery::{Deliveries, Redelivery};
use crate::{mmi, ConfigError, DecodeError, Hex, Limits};

/// Bytes each queued request is counted for beyond its frames ([`frames_cost`]), its service
/// name and its client's address: its entry in the queues, the expiry list and the request
/// table. Measured (`scripts/measure-bounds.py frames`): a broker holding 20,000 queued
/// requests of one 1-byte frame grew by 414 bytes per request; each counts 352 + 64 for its
/// frame + 12 for its name, address and body.
pub const REQUEST_OVERHEAD: usize = 352;

/// Bytes each known service is counted for beyond its name: its entry in the service table, its
/// queues and ring of clients, and what the driver keeps for it. Counted against
/// [`BrokerConfig::max_queued_bytes`] with the queued requests (as [`BrokerStats::service_bytes`]).
/// Measured (the `operations` integration test): a broker holding 20,000 services with one
/// small request queued each grew by about 1,150 bytes per service, request included, against
/// 1,375 counted for the service and its request.
pub const SERVICE_OVERHEAD: usize = 1024;

/// The kinds of protocol error the broker records besides [`crate::DecodeError::kind`]'s
/// (`kind` label of `majordomo_protocol_errors_total`).
pub mod error_kinds {
    /// A request or READY the access rules refuse.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// A worker's second READY.
    pub const SECOND_READY: &str = "second_ready";
    /// A PARTIAL from a worker holding no request.
    pub const PARTIAL_WITHOUT_REQUEST: &str = "partial_without_request";
    /// A REPLY or FINAL from a worker holding no request.
    pub const REPLY_WITHOUT_REQUEST: &str = "reply_without_request";
    /// A valid command out of place.
    pub const UNEXPECTED_COMMAND: &str = "unexpected_command";
    /// A HEARTBEAT from a worker purged for silence: the heartbeat settings differ.
    pub const HEARTBEAT_MISMATCH: &str = "heartbeat_mismatch";
    /// Every kind above.
    pub const ALL: [&str; 6] = [
        UNAUTHORIZED,
        SECOND_READY,
        PARTIAL_WITHOUT_REQUEST,
        REPLY_WITHOUT_REQUEST,
        UNEXPECTED_COMMAND,
        HEARTBEAT_MISMATCH,
    ];
}

/// Most services [`BrokerCore::stats`] lists in [`BrokerStats::per_service`]: the busiest (most
/// requests queued plus workers), the rest counted in [`BrokerStats::services_omitted`].
pub const STATS_TOP_SERVICES: usize = 100;

/// Most services one page of [`BrokerCore::stats_page`] lists.
pub const MAX_STATS_PAGE: usize = 1000;

/// Most workers one page of [`BrokerCore::workers_page`] lists. A worker's entry is at most
/// about 2.3 KB of JSON (an identity of 255 octets as hex, a service name of 255 octets
/// escaped), so a full page stays near 2.3 MB, under the default 16 MiB message limit.
pub const MAX_WORKERS_PAGE: usize = 1000;

/// Bytes each frame of a held message is counted for beyond its payload: its handle in the
/// message's list of frames and what the allocator adds to its bytes. Measured
/// (`scripts/measure-bounds.py frames`): requests of 50 frames grew a broker by 38 bytes per
/// frame more than requests of one frame; a flood of requests of many empty frames is then
/// bounded like one of large bodies.
pub const FRAME_OVERHEAD: usize = 64;

/// Frames longer than this cost [`LARGE_FRAME_SLACK`] more. zmq.rs reads a frame longer than
/// twice its largest read (64 KiB) into a buffer with room for one more read after it, and the
/// frame, split off that buffer, keeps all of it while it is held.
pub const LARGE_FRAME: usize = 128 * 1024;

/// What a frame longer than [`LARGE_FRAME`] costs beyond its payload and [`FRAME_OVERHEAD`]:
/// the room zmq.rs reserves after it (64 KiB). Measured (`scripts/measure-bounds.py
/// frames`): 1,000 requests of one 256 KiB frame held 36 KiB each beyond their payload
/// resident, of the 64 KiB reserved.
pub const LARGE_FRAME_SLACK: usize = 64 * 1024;

/// What `frames` cost held in memory: each frame's payload, [`FRAME_OVERHEAD`], and
/// [`LARGE_FRAME_SLACK`] for a frame longer than [`LARGE_FRAME`]. The broker and the Pirate
/// queues count every frame they hold this way against their byte bounds.
pub fn frames_cost(frames: &[Bytes]) -> usize {
    frames
        .iter()
        .map(|frame| {
            let slack = if frame.len() > LARGE_FRAME {
                LARGE_FRAME_SLACK
            } else {
                0
            };
            frame.len() + FRAME_OVERHEAD + slack
        })
        .sum()
}

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
    /// Most bytes queued for one service (default 256 MiB): the frames of each queued request
    /// ([`frames_cost`]), its service name and client address plus [`REQUEST_OVERHEAD`] for its
    /// bookkeeping (so about 600,000 small requests). Past it, new
    /// requests for that service are dropped; the client sees a timeout.
    pub max_queued_bytes_per_service: usize,
    /// Most bytes queued over all services (default 1 GiB), counted the same way, together with
    /// [`SERVICE_OVERHEAD`] and the name of each known service.
    pub max_queued_bytes: usize,
    /// Most services known at once (default 100,000). A request for a service not yet known is
    /// dropped past it ([`DropReason::Services`]) unless a service idle in its grace (see
    /// `service_idle_grace`) can be forgotten to make room; a worker's READY still registers it.
    pub max_services: usize,
    /// How long a service with neither workers nor queued requests is kept before it is
    /// forgotten with what the driver keeps for it (default 60 s; zero forgets it at once).
    /// While kept it counts against `max_services` and [`BrokerConfig::max_queued_bytes`] as
    /// any known service; when either bound would refuse a request, the service idle longest is
    /// forgotten first to make room. A worker that reconnects within the grace finds its service
    /// and its latency series as it left them.
    pub service_idle_grace: Duration,
    /// Most requests queued for one service (default: no limit; the byte bounds protect memory).
    pub max_queued_per_service: usize,
    /// Most requests queued over all services (default: no limit). All bounds apply to new
    /// requests: a request handed back because its worker went away was already accepted and is
    /// re-queued even at a bound, so a queue can exceed a bound by at most its workers' requests.
    pub max_queued_total: usize,
    /// How many times one request may be handed to a worker (default 3). A request whose workers
    /// keep dying is dropped after that, so a request that crashes workers cannot cycle forever.
    /// A hand-out to a worker that says DISCONNECT before anything else since does not count: it
    /// gives the request back (at most [`crate::redelivery::MAX_RETURNS`] times).
    pub max_deliveries: u32,
    /// Size limits for decoding; oversized messages are dropped.
    pub limits: Limits,
    /// Who may call and serve which services, by the CURVE key the front end proved for each
    /// peer ([`crate::access`]). Default: no rules, everything allowed. Shared, so that a reload
    /// applies at once.
    pub access: SharedAccess,
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

    /// Sets `max_services`; the field says what it means and its default.
    pub fn max_services(mut self, max_services: usize) -> Self {
        self.max_services = max_services;
        self
    }

    /// Sets `service_idle_grace`; the field says what it means and its default.
    pub fn service_idle_grace(mut self, grace: Duration) -> Self {
        self.service_idle_grace = grace;
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

    /// Sets `access`; the field says what it means and its default.
    pub fn access(mut self, access: SharedAccess) -> Self {
        self.access = access;
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
            max_services: 100_000,
            service_idle_grace: Duration::from_secs(60),
            max_queued_per_service: usize::MAX,
            max_queued_total: usize::MAX,
            max_deliveries: 3,
            limits: Limits::default(),
            access: SharedAccess::default(),
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

/// Counters and gauges, for logs, tests, benchmarks and the `mmi.stats` service (with the `serde`
/// feature, as JSON the driver encodes; it reads back into this type, fields it does not know
/// ignored and missing ones zero).
///
/// Every request is accounted for: `requests == replies + queued + in_flight + expired + rejected
/// + abandoned + dropped_at_shutdown` holds between calls, and after [`BrokerCore::shutdown`]
/// (which moves what was queued or in flight to `dropped_at_shutdown`). `mmi.*` requests, which
/// the broker answers itself, are counted apart in `mmi_requests` (so that watching a broker
/// with `majordomo status` or `majordomo top` does not show as client traffic); their replies
/// are not among `replies`, nor those refused by the access rules among `rejected`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct BrokerStats {
    /// Registered workers.
    pub workers: usize,
    /// Registered workers waiting for a request.
    pub idle_workers: usize,
    /// Services known: with workers or queued requests, or idle within their grace
    /// ([`BrokerConfig::service_idle_grace`]).
    pub services: usize,
    /// Bytes the known services are counted for ([`SERVICE_OVERHEAD`] and the name of each),
    /// bounded with `queued_bytes` by [`BrokerConfig::max_queued_bytes`].
    pub service_bytes: usize,
    /// Known services not listed in `per_service` (see [`BrokerCore::stats`] and
    /// [`BrokerCore::stats_page`]).
    pub services_omitted: usize,
    /// Requests queued, not yet with a worker.
    pub queued: usize,
    /// Bytes those requests are counted for (see [`BrokerConfig::max_queued_bytes`]).
    pub queued_bytes: usize,
    /// Requests with a worker, not yet answered.
    pub in_flight: usize,
    /// Draining: taking no new requests (see [`BrokerCore::drain`]).
    pub draining: bool,
    /// Requests received from clients for services (`mmi.*` not included: see
    /// `mmi_requests`).
    pub requests: u64,
    /// Replies sent to clients for services (answers to `mmi.*` not included).
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
    /// Requests still queued or in flight when the broker stopped ([`BrokerCore::shutdown`]),
    /// dropped unanswered (`majordomo_dropped_requests_total{reason="drain"}`).
    pub dropped_at_shutdown: u64,
    /// Requests and READYs refused by the access rules ([`BrokerConfig::access`]).
    pub unauthorized: u64,
    /// Workers purged for silence that then sent a HEARTBEAT: their heartbeat interval is
    /// longer than this broker's expiry (heartbeat x liveness). Each is logged with both.
    pub heartbeat_mismatch: u64,
    /// `mmi.*` requests (answered by the broker itself, or refused by the access rules and
    /// counted in `unauthorized` too), apart from `requests`. Brokers before this counter
    /// counted them among `requests` and their answers among `replies`; their stats read it as
    /// 0.
    pub mmi_requests: u64,
    /// Known services, sorted by name: the [`STATS_TOP_SERVICES`] busiest, or one page of
    /// [`BrokerCore::stats_page`]; `services_omitted` says how many more there are.
    pub per_service: Vec<ServiceStats>,
}

/// Gauges and counters of one service. The counters (`requests`, `replies`, `dropped`,
/// `rejected`) count from when the broker came to know the service: a service forgotten after
/// its idle grace ([`BrokerConfig::service_idle_grace`]) and known again starts from zero, so a
/// viewer computing rates from two snapshots takes a smaller value as a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct ServiceStats {
    /// The service name (in JSON as text, bytes that are not UTF-8 replaced).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "lossy_text", deserialize_with = "text_bytes")
    )]
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
    /// Requests accepted for it (queued: past the bounds and the access rules).
    pub requests: u64,
    /// Replies delivered to its clients.
    pub replies: u64,
    /// Accepted requests dropped unanswered: expired without a worker, waited past
    /// [`BrokerConfig::max_wait`], or abandoned after [`BrokerConfig::max_deliveries`] lost
    /// workers (or a lost worker that had streamed part of the reply).
    pub dropped: u64,
    /// Requests refused on arrival while it was known: at a queue bound or while draining.
    pub rejected: u64,
}

/// Whether a worker holds a request, in [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Activity {
    /// Waiting for a request.
    #[default]
    Idle,
    /// Holding one.
    Busy,
}

impl Activity {
    /// `idle` or `busy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Busy => "busy",
        }
    }
}

/// One registered worker, as `mmi.workers` lists it ([`BrokerCore::workers_page`]). The
/// broker knows workers by their ROUTER identity; the address they connect from is known when
/// the ZMTP guard gave that identity (it names the address: [`crate::peer::parse_assigned`]),
/// not when the worker chose its own or the endpoint has no guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct WorkerStats {
    /// The service it serves (in JSON as text, bytes that are not UTF-8 replaced).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "lossy_text", deserialize_with = "text_bytes")
    )]
    pub service: Bytes,
    /// Its ROUTER identity (in JSON as lower-case hex).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "hex_text", deserialize_with = "hex_bytes")
    )]
    pub identity: Bytes,
    /// Idle or busy.
    pub state: Activity,
    /// How long it has been in that state, in milliseconds: since it registered or answered
    /// its last request (idle), or since it was handed the request it holds (busy).
    pub state_ms: u64,
    /// How long since it registered (its READY), in milliseconds.
    pub registered_ms: u64,
    /// The address it connects from (`203.0.113.7:40122`), when its identity tells (see
    /// above); in JSON only then.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub address: Option<String>,
}

/// A page of the registered workers, the body of the `mmi.workers` reply
/// ([`BrokerCore::workers_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct WorkersPage {
    /// Registered workers, on the page or not.
    pub workers: usize,
    /// Registered workers not on the page (other services, or other pages).
    pub workers_omitted: usize,
    /// The page: workers of the services asked for, by service name then identity.
    pub per_worker: Vec<WorkerStats>,
}

#[cfg(feature = "serde")]
fn hex_text<S: serde::Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes.iter() {
        let _ = write!(text, "{byte:02x}");
    }
    serializer.serialize_str(&text)
}

#[cfg(feature = "serde")]
fn hex_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    let digit = |c: u8| (c as char).to_digit(16);
    let pairs = text.as_bytes().chunks(2);
    pairs
        .map(|pair| match pair {
            [high, low] => Some((digit(*high)? * 16 + digit(*low)?) as u8),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
        .ok_or_else(|| serde::de::Error::custom("identity: not hex"))
}

#[cfg(feature = "serde")]
fn lossy_text<S: serde::Serializer>(name: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(name))
}

#[cfg(feature = "serde")]
fn text_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    <String as serde::Deserialize>::deserialize(deserializer).map(Bytes::from)
}

/// Most frames of an extended reply envelope ([`split_route`]) the broker keeps for a request.
pub const MAX_ROUTE_FRAMES: usize = 8;
/// Longest frame of an extended reply envelope: a ZMTP routing identity's bound ("an identity
/// ... of 1 to 255 octets").
pub const MAX_ROUTE_FRAME: usize = 255;

/// Splits a client's extended reply envelope off a message (after its ROUTER identity): the
/// frames before the first empty one, when what follows from that empty frame is a client's
/// message with the empty delimiter (7/MDP, or 18/MDP in the majortomo dialect). This is what
/// a ROUTER returns in the Guide's chapter 3 (every frame up to the delimiter is the route
/// back), so that a client may tag each request with a frame of its own on one DEALER, and
/// requests through ROUTER-DEALER proxies carry every hop's identity. At most
/// [`MAX_ROUTE_FRAMES`] frames of at most [`MAX_ROUTE_FRAME`] bytes; otherwise `None`, and the
/// message is malformed as before. Workers see the client's identity as its address either
/// way; the route is the broker's record of the request, returned before each reply.
pub fn split_route(frames: &[Bytes]) -> Option<(&[Bytes], &[Bytes])> {
    let at = frames
        .iter()
        .take(MAX_ROUTE_FRAMES + 1)
        .position(Bytes::is_empty)?;
    let (route, rest) = frames.split_at(at);
    let client = matches!(
        mdp2::classify(rest),
        Some((
            Version::V01 | Version::V02(Dialect::Majortomo),
            Sender::Client
        ))
    );
    (at > 0 && client && route.iter().all(|f| f.len() <= MAX_ROUTE_FRAME)).then_some((route, rest))
}

/// The MDP frames of a message that arrived after its sender's identity: `frames` themselves,
/// or what follows a client's route ([`split_route`]) if it has one.
pub fn unrouted(frames: &[Bytes]) -> &[Bytes] {
    match mdp2::classify(frames) {
        Some(_) => frames,
        None => split_route(frames).map_or(frames, |(_, rest)| rest),
    }
}

/// `frames` (the destination's identity first) with `route` after the identity.
fn routed(mut frames: Vec<Bytes>, route: &[Bytes]) -> Vec<Bytes> {
    if !route.is_empty() {
        frames.splice(1..1, route.iter().cloned());
    }
    frames
}

/// A client's request, wherever it is: queued ([`Queued`]) or with a worker ([`InFlight`]).
#[derive(Debug)]
struct Request {
    /// The client's ROUTER identity: the client address its worker sees.
    client: Bytes,
    /// The frames between the identity and the empty delimiter (the extended reply envelope,
    /// see [`split_route`]), returned before every reply to the client; empty for most.
    route: Vec<Bytes>,
    service: Bytes,
    body: Vec<Bytes>,
    /// Bytes counted against the queue bounds.
    size: usize,
    /// When the broker received it.
    received: Instant,
    deliveries: Deliveries,
    /// The MDP version and dialect of its client: the form of every reply to it.
    form: Version,
}

/// A request waiting for a worker, with its deadlines.
#[derive(Debug)]
struct Queued {
    request: Request,
    /// When it expires if its service still has no worker; `None` while the service has workers.
    expires_at: Option<Instant>,
    /// When it has waited long enough (with [`BrokerConfig::max_wait`]).
    wait_until: Option<Instant>,
}

/// A request a worker holds, and where its reply stands.
#[derive(Debug)]
struct InFlight {
    request: Request,
    reply: ReplyState,
}

/// Why a state transition of a request or worker was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum StateError {
    /// The worker holds no request.
    #[error("the worker holds no request")]
    Idle,
    /// The worker holds a request, of another client than the reply names.
    #[error("the worker holds another client's request")]
    OtherClient,
    /// The worker already holds a request.
    #[error("the worker already holds a request")]
    Busy,
    /// The parts gathered for a v0.1 client passed the frame or message size limit.
    #[error("the reply's parts passed the frame or message size limit")]
    Overflowed,
    /// Parts of the reply reached the client: the request cannot go to another worker.
    #[error("parts of the reply reached the client")]
    Streamed,
    /// A PARTIAL for a request whose reply is in the other version's state.
    #[error("a part in a state of the other MDP version")]
    WrongVersion,
}

/// Where the reply to an in-flight request stands.
#[derive(Debug, Default, PartialEq, Eq)]
enum ReplyState {
    /// No part of it yet.
    #[default]
    Awaiting,
    /// PARTIALs went on to its v0.2 client: it is never replayed to another worker.
    Streaming,
    /// PARTIALs gathered for its v0.1 client, which takes one REPLY: sent with the FINAL.
    Gathering {
        /// The frames gathered so far, in order.
        parts: Vec<Bytes>,
        /// Their payload bytes, kept so each part costs only its own frames to check.
        size: usize,
    },
    /// The gathered parts passed the frame or size limit: the reply will be dropped.
    Overflowed,
}

/// Frames of a v0.1 REPLY to a client ahead of its body (empty delimiter, `MDPC01`, service):
/// a gathered reply's body may have the frame limit less these.
const REPLY_HEADER_FRAMES: usize = 3;

impl ReplyState {
    /// A PARTIAL of the reply to a client in `form`: returns the part to forward to a v0.2
    /// client, or gathers it for a v0.1 one (nothing to forward). The gathered reply is held to
    /// the limits of an inbound message (`max_frames` with its header, `max_message_size`):
    /// past them it is [`ReplyState::Overflowed`]. Each part costs only its own frames.
    fn on_partial(
        &mut self,
        form: Version,
        body: Vec<Bytes>,
        limits: &Limits,
    ) -> Result<Option<(Dialect, Vec<Bytes>)>, StateError> {
        match (form, &mut *self) {
            (Version::V02(dialect), Self::Awaiting | Self::Streaming) => {
                *self = Self::Streaming;
                Ok(Some((dialect, body)))
            }
            (Version::V01, Self::Awaiting) => {
                *self = Self::Gathering {
                    parts: Vec::new(),
                    size: 0,
                };
                self.gather(body, limits);
                Ok(None)
            }
            (Version::V01, Self::Gathering { .. }) => {
                self.gather(body, limits);
                Ok(None)
            }
            // Past the limit already: the rest is dropped too.
            (Version::V01, Self::Overflowed) => Ok(None),
            (Version::V01, Self::Streaming)
            | (Version::V02(_), Self::Gathering { .. } | Self::Overflowed) => {
                Err(StateError::WrongVersion)
            }
        }
    }

    /// Adds `body` to the parts being gathered, or overflows past the limits (dropping what was
    /// gathered). Linear in `body`'s frames.
    fn gather(&mut self, body: Vec<Bytes>, limits: &Limits) {
        let Self::Gathering { parts, size } = self else {
            return;
        };
        let max_frames = limits.max_frames.saturating_sub(REPLY_HEADER_FRAMES);
        let added = body.iter().map(Bytes::len).sum::<usize>();
        if parts.len() + body.len() > max_frames || *size + added > limits.max_message_size {
            *self = Self::Overflowed;
            return;
        }
        *size += added;
        parts.extend(body);
    }

    /// Whether the gathered parts passed the limits.
    fn is_overflowed(&self) -> bool {
        matches!(self, Self::Overflowed)
    }

    /// The FINAL's body, behind the parts gathered for a v0.1 client; refused past the limits
    /// (the FINAL's frames count too).
    fn into_body(mut self, body: Vec<Bytes>, limits: &Limits) -> Result<Vec<Bytes>, StateError> {
        if matches!(self, Self::Gathering { .. }) {
            self.gather(body, limits);
            return match self {
                Self::Gathering { parts, .. } => Ok(parts),
                _ => Err(StateError::Overflowed),
            };
        }
        match self {
            Self::Awaiting | Self::Streaming => Ok(body),
            Self::Gathering { .. } | Self::Overflowed => Err(StateError::Overflowed),
        }
    }

    /// The request goes to another worker: parts gathered from the lost one are not the next
    /// one's. Refused once parts reached the client, which would get them twice.
    fn restart(&mut self) -> Result<(), StateError> {
        match self {
            Self::Streaming => Err(StateError::Streamed),
            Self::Awaiting | Self::Gathering { .. } | Self::Overflowed => {
                *self = Self::Awaiting;
                Ok(())
            }
        }
    }
}

/// How a worker holding a request left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// It died, its connection closed, it broke the protocol, or it said DISCONNECT after
    /// sending something since it got the request: the hand-out counts against
    /// [`BrokerConfig::max_deliveries`].
    Lost,
    /// It said DISCONNECT before anything else since it got the request: it gives it back, and
    /// the hand-out does not count.
    Returned,
}

/// Whether a worker holds a request.
#[derive(Debug)]
enum WorkerState {
    /// Waiting for a request (in its service's idle list).
    Idle {
        /// Since when: it registered, or answered its last request.
        since: Instant,
    },
    /// Holding one.
    Busy {
        held: InFlight,
        /// When it was handed the request.
        since: Instant,
        /// Whether it has sent a HEARTBEAT well after that: then it is held to liveness while
        /// busy too.
        heartbeats: bool,
        /// Whether anything came from it since (a DISCONNECT before anything else gives the
        /// request back: see [`crate::redelivery`]).
        heard: bool,
    },
}

impl WorkerState {
    /// Hands `request` to an idle worker; a busy one refuses it, handing it back.
    fn assign(&mut self, now: Instant, request: Request) -> Result<(), (StateError, Box<Request>)> {
        match self {
            Self::Idle { .. } => {
                *self = Self::Busy {
                    held: InFlight {
                        request,
                        reply: ReplyState::Awaiting,
                    },
                    since: now,
                    heartbeats: false,
                    heard: false,
                };
                Ok(())
            }
            Self::Busy { .. } => Err((StateError::Busy, Box::new(request))),
        }
    }

    /// A HEARTBEAT at `now`: a busy worker heartbeating `margin` after it got its request is
    /// held to liveness from then on.
    fn on_heartbeat(&mut self, now: Instant, margin: Duration) {
        if let Self::Busy {
            since, heartbeats, ..
        } = self
        {
            if now >= *since + margin {
                *heartbeats = true;
            }
        }
    }

    /// The request it holds for `client`.
    fn in_flight_mut(&mut self, client: &Bytes) -> Result<&mut InFlight, StateError> {
        match self {
            Self::Idle { .. } => Err(StateError::Idle),
            Self::Busy { held, .. } if held.request.client == *client => Ok(held),
            Self::Busy { .. } => Err(StateError::OtherClient),
        }
    }

    /// The worker answered `client` finally at `now`: idle again, with the request it held.
    /// Refused (nothing changes) when it holds no request of `client`.
    fn finish(&mut self, now: Instant, client: &Bytes) -> Result<InFlight, StateError> {
        self.in_flight_mut(client)?;
        match std::mem::replace(self, Self::Idle { since: now }) {
            Self::Busy { held, .. } => Ok(held),
            Self::Idle { .. } => Err(StateError::Idle),
        }
    }

    /// Something other than DISCONNECT came from it.
    fn heard(&mut self) {
        if let Self::Busy { heard, .. } = self {
            *heard = true;
        }
    }

    /// Busy, and nothing came from it since it was handed its request.
    fn unstarted(&self) -> bool {
        matches!(self, Self::Busy { heard: false, .. })
    }

    /// What it holds, as it goes away.
    fn into_held(self) -> Option<InFlight> {
        match self {
            Self::Idle { .. } => None,
            Self::Busy { held, .. } => Some(held),
        }
    }

    fn is_busy(&self) -> bool {
        matches!(self, Self::Busy { .. })
    }

    /// Idle or busy, and since when.
    fn activity(&self) -> (Activity, Instant) {
        match self {
            Self::Idle { since } => (Activity::Idle, *since),
            Self::Busy { since, .. } => (Activity::Busy, *since),
        }
    }

    /// Busy and seen to heartbeat while busy.
    fn heartbeats_when_busy(&self) -> bool {
        matches!(
            self,
            Self::Busy {
                heartbeats: true,
                ..
            }
        )
    }
}

#[derive(Debug)]
struct Worker {
    service: Bytes,
    /// When it registered (its READY).
    registered: Instant,
    heartbeat: Heartbeat,
    state: WorkerState,
    /// The MDP version and dialect it registered in: the form of every command to it and from
    /// it.
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
    /// Workers that answered since the transmits were last taken: idle, but handed nothing
    /// until then, when they join `idle` (see [`BrokerCore::poll_transmit`]).
    resting: Vec<Bytes>,
    /// Registered workers, idle or busy.
    workers: usize,
    /// When it is forgotten: set while it has neither workers nor queued requests (its entry in
    /// [`BrokerCore`]'s idle set), `None` while it is in use.
    forget_at: Option<Instant>,
    /// Its counters, as [`ServiceStats`] reports them.
    counts: ServiceCounts,
}

/// What happened to one service's requests since it became known (see [`ServiceStats`]).
#[derive(Debug, Default, Clone, Copy)]
struct ServiceCounts {
    requests: u64,
    replies: u64,
    dropped: u64,
    rejected: u64,
}

impl Service {
    /// Workers not holding a request: idle, and resting until the transmits are next taken.
    fn idle_workers(&self) -> usize {
        self.idle.len() + self.resting.len()
    }

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
    fn pop(&mut self, requests: &mut HashMap<u64, Queued>) -> Option<(u64, Queued)> {
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
                self.queued_bytes -= request.request.size;
                return found;
            }
        }
        None
    }

    /// Drops leading ids of `client` whose requests are gone (expired).
    fn trim(&mut self, client: &Bytes, requests: &HashMap<u64, Queued>) {
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

/// Encodes the body of the `mmi.stats` reply (JSON, in the broker driver): the core serializes
/// nothing itself.
pub type StatsEncoder = fn(&BrokerStats) -> Bytes;

/// Encodes the body of the `mmi.workers` reply (JSON, in the broker driver).
pub type WorkersEncoder = fn(&WorkersPage) -> Bytes;

/// The broker's whole state: services, workers, queued requests, and what to send next.
#[derive(Debug)]
pub struct BrokerCore {
    config: BrokerConfig,
    services: HashMap<Bytes, Service>,
    workers: HashMap<Bytes, Worker>,
    /// Queued requests by id; a request with a worker lives in that worker's state.
    requests: HashMap<u64, Queued>,
    /// Expiry deadlines of queued requests in the order they were queued. Every request expires
    /// `request_expiry` after it was (re-)queued, so this order is also deadline order. Entries of
    /// requests that left the queue are dropped from the front as soon as they get there, which
    /// keeps this about as long as the queues themselves.
    expiries: VecDeque<(Instant, u64)>,
    /// Maximum-wait deadlines of queued requests, in the same order (with `max_wait` only).
    waits: VecDeque<(Instant, u64)>,
    /// Bytes queued over all services.
    queued_bytes: usize,
    /// Bytes the known services are counted for (see [`SERVICE_OVERHEAD`]).
    service_bytes: usize,
    /// Services with neither workers nor queued requests, by the instant each is forgotten:
    /// the first is the one idle longest. A service in use again leaves it.
    idle_services: BTreeSet<(Instant, Bytes)>,
    drops: DropLog,
    /// Rate-limited log of protocol errors, and their events.
    errors: ErrorLog,
    next_id: u64,
    next_tick: Instant,
    transmits: VecDeque<Transmit>,
    /// Services with resting workers, to dispatch before the next transmit is taken (see
    /// [`BrokerCore::poll_transmit`]), with the time of the first answer.
    pending_dispatch: VecDeque<(Instant, Bytes)>,
    /// What happened, for the driver's metrics.
    events: Events,
    /// Encodes the `mmi.stats` reply; without one, `mmi.stats` is not implemented (501).
    stats_encoder: Option<StatsEncoder>,
    /// Encodes the `mmi.workers` reply; without one, `mmi.workers` is not implemented (501).
    workers_encoder: Option<WorkersEncoder>,
    stats: BrokerStats,
    /// The latest `now` any call carried: what [`BrokerCore::stats`] measures ages against.
    now: Instant,
    /// Taking no new requests (see [`BrokerCore::drain`]).
    draining: bool,
    /// The CURVE key of each peer that has one, from the front end
    /// ([`BrokerCore::handle_peer_key`]); forgotten when the peer disconnects.
    peer_keys: HashMap<Bytes, [u8; 32]>,
    /// Workers recently purged for silence, with when they were last heard from: a HEARTBEAT
    /// from one then means mismatched heartbeat settings. At most [`PURGED_REMEMBERED`],
    /// each for [`PURGED_FOR`].
    purged: VecDeque<(Instant, Bytes, Instant)>,
}

/// Purged workers remembered, to explain a HEARTBEAT that comes after the purge.
const PURGED_REMEMBERED: usize = 1024;
/// How long a purged worker is remembered.
const PURGED_FOR: Duration = Duration::from_secs(60);

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
            service_bytes: 0,
            idle_services: BTreeSet::new(),
            drops: DropLog::default(),
            errors: ErrorLog::default(),
            next_id: 0,
            transmits: VecDeque::new(),
            pending_dispatch: VecDeque::new(),
            events: Events::default(),
            stats_encoder: None,
            workers_encoder: None,
            stats: BrokerStats::default(),
            now,
            draining: false,
            peer_keys: HashMap::new(),
            purged: VecDeque::new(),
        }
    }

    /// The front end proved that the peer `identity` holds the CURVE key `key` (its
    /// permanent public key); the access rules judge the peer by it until it disconnects.
    pub fn handle_peer_key(&mut self, identity: &Bytes, key: [u8; 32]) {
        self.peer_keys.insert(identity.clone(), key);
    }

    /// Whether the access rules let `identity` do `access` to `service`; logs a refusal at a
    /// bounded rate, with the key's first octets.
    fn allowed(&mut self, now: Instant, identity: &Bytes, access: Access, service: &Bytes) -> bool {
        let key = self.peer_keys.get(identity);
        if self.config.access.allows(key, access, service) {
            return true;
        }
        self.stats.unauthorized += 1;
        let who = key.map_or_else(
            || "a peer without a key".to_string(),
            |k| format!("key {}...", &z85::encode(k)[..8]),
        );
        let what = match access {
            Access::Call => "call",
            Access::Serve => "serve",
        };
        self.errors.record(
            now,
            identity,
            error_kinds::UNAUTHORIZED,
            "refused by the access rules",
            &format_args!("{who} may not {what} {}", Hex(service)),
        );
        false
    }

    /// Answers `mmi.stats` with `200` and what `encode` makes of the stats as of the request
    /// (the broker driver encodes them as JSON). Without an encoder, `mmi.stats` is answered as
    /// any unimplemented `mmi.*` service: `501`.
    pub fn with_stats_encoder(mut self, encode: StatsEncoder) -> Self {
        self.stats_encoder = Some(encode);
        self
    }

    /// Answers `mmi.workers` with `200` and what `encode` makes of a page of the registered
    /// workers ([`BrokerCore::workers_page`]; the broker driver encodes it as JSON). Without an
    /// encoder, `mmi.workers` is answered `501`.
    pub fn with_workers_encoder(mut self, encode: WorkersEncoder) -> Self {
        self.workers_encoder = Some(encode);
        self
    }

    /// The next thing that happened for the driver to count (drops, decode errors, reply
    /// latencies); poll after each call. At most [`crate::event::MAX_EVENTS`] are held.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events
            .pop()
            .or_else(|| self.errors.poll_event())
            .or_else(|| self.drops.poll_event())
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Current counters and gauges, with the [`STATS_TOP_SERVICES`] busiest services (most
    /// requests queued plus workers) in `per_service`, sorted by name. Linear in the services and
    /// workers known, whatever their number; [`BrokerCore::stats_page`] lists the rest.
    pub fn stats(&self) -> BrokerStats {
        let mut busiest: Vec<(&Bytes, &Service)> = self.services.iter().collect();
        let busyness = |s: &Service| s.queued + s.workers;
        if busiest.len() > STATS_TOP_SERVICES {
            busiest.select_nth_unstable_by(STATS_TOP_SERVICES - 1, |a, b| {
                busyness(b.1).cmp(&busyness(a.1)).then_with(|| a.0.cmp(b.0))
            });
            busiest.truncate(STATS_TOP_SERVICES);
        }
        self.stats_listing(busiest)
    }

    /// As [`BrokerCore::stats`], with `per_service` one page of the services whose name starts
    /// with `prefix`, in name order: skipping `offset`, at most `limit` (up to
    /// [`MAX_STATS_PAGE`]). `services_omitted` counts the known services not on the page.
    pub fn stats_page(&self, prefix: &[u8], offset: usize, limit: usize) -> BrokerStats {
        let mut matching: Vec<(&Bytes, &Service)> = self
            .services
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect();
        matching.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let page = matching
            .into_iter()
            .skip(offset)
            .take(limit.min(MAX_STATS_PAGE))
            .collect();
        self.stats_listing(page)
    }

    /// The totals, with `listed` as `per_service` (sorted by name).
    fn stats_listing(&self, listed: Vec<(&Bytes, &Service)>) -> BrokerStats {
        let mut heartbeating: HashMap<&Bytes, usize> = HashMap::new();
        for worker in self.workers.values() {
            if worker.state.heartbeats_when_busy() {
                *heartbeating.entry(&worker.service).or_default() += 1;
            }
        }
        let mut per_service: Vec<ServiceStats> = listed
            .into_iter()
            .map(|(name, s)| self.service_entry(name, s, heartbeating.get(name).copied()))
            .collect();
        per_service.sort_by(|a, b| a.name.cmp(&b.name));
        BrokerStats {
            workers: self.workers.len(),
            idle_workers: self.services.values().map(Service::idle_workers).sum(),
            services: self.services.len(),
            service_bytes: self.service_bytes,
            services_omitted: self.services.len() - per_service.len(),
            queued: self.requests.len(),
            queued_bytes: self.queued_bytes,
            in_flight: self.workers.values().filter(|w| w.state.is_busy()).count(),
            per_service,
            draining: self.draining,
            ..self.stats.clone()
        }
    }

    /// The registered workers of the services whose name starts with `prefix`, by service name
    /// then identity: skipping `offset`, at most `limit` (up to [`MAX_WORKERS_PAGE`]); ages as
    /// of the latest call's `now`. Sorts the matching workers: `O(w log w)` in their number.
    pub fn workers_page(&self, prefix: &[u8], offset: usize, limit: usize) -> WorkersPage {
        let mut matching: Vec<(&Bytes, &Worker)> = self
            .workers
            .iter()
            .filter(|(_, worker)| worker.service.starts_with(prefix))
            .collect();
        matching.sort_unstable_by(|a, b| (&a.1.service, a.0).cmp(&(&b.1.service, b.0)));
        let millis = |at: Instant| {
            let age = self.now.saturating_duration_since(at);
            u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
        };
        let per_worker: Vec<WorkerStats> = matching
            .into_iter()
            .skip(offset)
            .take(limit.min(MAX_WORKERS_PAGE))
            .map(|(identity, worker)| {
                let (state, since) = worker.state.activity();
                WorkerStats {
                    service: worker.service.clone(),
                    identity: identity.clone(),
                    state,
                    state_ms: millis(since),
                    registered_ms: millis(worker.registered),
                    address: crate::peer::parse_assigned(identity)
                        .map(|(address, _)| address.to_string()),
                }
            })
            .collect();
        WorkersPage {
            workers: self.workers.len(),
            workers_omitted: self.workers.len() - per_worker.len(),
            per_worker,
        }
    }

    /// Gauges of every known service, sorted by name; ages as of the latest call's `now`.
    pub fn service_stats(&self) -> Vec<ServiceStats> {
        let mut listing = self.stats_listing(self.services.iter().collect());
        std::mem::take(&mut listing.per_service)
    }

    fn service_entry(
        &self,
        name: &Bytes,
        s: &Service,
        heartbeating: Option<usize>,
    ) -> ServiceStats {
        ServiceStats {
            name: name.clone(),
            oldest_queued_ms: self.oldest_received(s).map_or(0, |at| {
                let age = self.now.saturating_duration_since(at);
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
            }),
            queued: s.queued,
            queued_bytes: s.queued_bytes,
            idle_workers: s.idle_workers(),
            busy_workers: s.workers - s.idle_workers(),
            busy_heartbeating: heartbeating.unwrap_or(0),
            requests: s.counts.requests,
            replies: s.counts.replies,
            dropped: s.counts.dropped,
            rejected: s.counts.rejected,
        }
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
            .map(|queued| queued.request.received)
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
    ///
    /// A worker that answered is handed its next request here, once what was queued before is
    /// taken, rather than as its answer is handled: a driver that handles what it has received
    /// before it sends then sees a DISCONNECT that came right after the answer first, and hands
    /// that worker nothing.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() && !self.pending_dispatch.is_empty() {
            self.dispatch_pending();
        }
        self.transmits.pop_front()
    }

    /// How many messages are queued to send; [`BrokerCore::poll_transmit`] returns these first,
    /// before any request for a worker that answered meanwhile.
    pub fn queued_transmits(&self) -> usize {
        self.transmits.len()
    }

    /// Makes the workers that answered since the last call idle, and dispatches their services.
    fn dispatch_pending(&mut self) {
        // `dispatch` adds nothing to the list.
        while let Some((at, service)) = self.pending_dispatch.pop_front() {
            if let Some(svc) = self.services.get_mut(&service) {
                svc.idle.extend(svc.resting.drain(..));
            }
            self.dispatch(at, &service);
        }
    }

    /// When [`BrokerCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.expiries.front().map(|(at, _)| *at),
            self.waits.front().map(|(at, _)| *at),
            self.idle_services.first().map(|(at, _)| *at),
            self.drops.poll_timeout(),
            self.errors.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_tick, Instant::min)
    }

    /// Handles one message from a shared ROUTER endpoint: `identity` is the ROUTER identity frame,
    /// `frames` what followed it. A malformed message is logged, counted and dropped; if it came
    /// from a registered worker, that worker is disconnected ("The broker SHOULD respond to invalid
    /// messages by dropping them and treating that peer as invalid"). A registered worker's
    /// commands are read in the version and dialect it registered in: one in another is a
    /// protocol error ([`DecodeError::VersionSwitch`]).
    pub fn handle_message(
        &mut self,
        now: Instant,
        identity: &Bytes,
        frames: &[Bytes],
    ) -> Result<(), DecodeError> {
        self.tick(now);
        if mdp2::classify(frames).is_none() {
            if let Some((route, rest)) = split_route(frames) {
                let decoded =
                    Inbound::decode_classified(rest, mdp2::classify(rest), &self.config.limits);
                return match decoded {
                    Ok((form, Inbound::Client(request))) => {
                        self.handle_client_in(now, identity, route.to_vec(), request, form);
                        Ok(())
                    }
                    // Not reached: `split_route` leaves only a client's message.
                    Ok((_, Inbound::Worker(_))) => {
                        Err(DecodeError::MissingEmptyFrame(frames[0].len()))
                    }
                    Err(error) => {
                        self.handle_invalid(now, identity, &error);
                        Err(error)
                    }
                };
            }
        }
        let classified = mdp2::classify(frames);
        // A registered worker's command is read in its READY's form, whatever its header says.
        let switched = match classified {
            Some((got, Sender::Worker)) => self
                .workers
                .get(identity)
                .filter(|worker| worker.form != got)
                .map(|worker| DecodeError::VersionSwitch {
                    registered: worker.form,
                    got,
                }),
            _ => None,
        };
        let decoded = match switched {
            Some(error) => Err(error),
            None => Inbound::decode_classified(frames, classified, &self.config.limits),
        };
        match decoded {
            Ok((form, Inbound::Client(request))) => {
                self.handle_client_in(now, identity, Vec::new(), request, form);
                Ok(())
            }
            Ok((form, Inbound::Worker(message))) => {
                self.handle_worker_in(now, identity, message, form);
                Ok(())
            }
            Err(error) => {
                self.handle_invalid(now, identity, &error);
                Err(error)
            }
        }
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
        // A client's request behind a route of its own is a client's request too.
        let message = unrouted(frames);
        match mdp2::classify(message) {
            Some((version, sender)) if sender != expected => {
                let header = match version {
                    Version::V02(Dialect::Majortomo) | Version::V01 => message[1].clone(),
                    Version::V02(Dialect::Rfc18) => message[0].clone(),
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

    /// Records a message that failed to decode from `identity`: logs it, and disconnects the peer
    /// if it is a registered worker.
    pub fn handle_invalid(&mut self, now: Instant, identity: &Bytes, error: &DecodeError) {
        self.tick(now);
        self.stats.protocol_errors += 1;
        self.errors.record(
            now,
            identity,
            error.kind(),
            "dropped invalid message",
            error,
        );
        if self.workers.contains_key(identity) {
            self.disconnect_worker(now, identity, true);
        }
    }

    /// Handles a decoded MDP/Client v0.1 REQUEST from the client `identity`.
    pub fn handle_client(&mut self, now: Instant, identity: &Bytes, request: ClientRequest) {
        let ClientRequest { service, body } = request;
        let request = ClientCommand { service, body };
        self.handle_client_in(now, identity, Vec::new(), request, Version::V01);
    }

    /// Handles a request from a client that speaks `form`; every reply to it is in that form,
    /// after `route` (its extended reply envelope).
    fn handle_client_in(
        &mut self,
        now: Instant,
        identity: &Bytes,
        route: Vec<Bytes>,
        request: ClientCommand,
        form: Version,
    ) {
        self.tick(now);
        // Probes of the broker itself are no client traffic: counted apart.
        let mmi = mmi::is_mmi(&request.service);
        if mmi {
            self.stats.mmi_requests += 1;
        } else {
            self.stats.requests += 1;
        }
        if !self.allowed(now, identity, Access::Call, &request.service) {
            // No reply, as for any dropped request: the client's retries are refused too.
            if !mmi {
                self.reject(&request.service);
            }
            self.drops
                .record(now, &request.service, DropReason::Unauthorized);
            return;
        }
        if mmi {
            self.handle_mmi(now, identity, &route, request, form);
            return;
        }
        if self.draining {
            debug!(client = %Peer(identity), service = %Hex(&request.service), "request dropped: draining");
            // No reply: the client's retry goes to another broker, or to this one restarted.
            self.reject(&request.service);
            self.drops
                .record(now, &request.service, DropReason::Draining);
            return;
        }
        let size = REQUEST_OVERHEAD
            + identity.len()
            + request.service.len()
            + frames_cost(&route)
            + frames_cost(&request.body);
        let mut bound = self.bound(&request.service, size);
        // Services idle in their grace give way to a request the table or the total refuses.
        while matches!(bound, Some(DropReason::Services | DropReason::TotalBytes))
            && self.forget_idle_service(&request.service)
        {
            bound = self.bound(&request.service, size);
        }
        if let Some(reason) = bound {
            self.reject(&request.service);
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
                route,
                service: request.service,
                body: request.body,
                size,
                received: now,
                deliveries: Deliveries::default(),
                form,
            },
            false,
        );
        if let Some(svc) = self.services.get_mut(&service) {
            svc.counts.requests += 1;
        }
        self.dispatch(now, &service);
    }

    /// The bound a request of `size` bytes for `service` would pass, if any.
    fn bound(&self, service: &Bytes, size: usize) -> Option<DropReason> {
        let known = self.services.get(service);
        let (service_queued, service_bytes) = known.map_or((0, 0), |s| (s.queued, s.queued_bytes));
        // A request for a service not yet known costs its entry too.
        let entry = match known {
            Some(_) => 0,
            None => SERVICE_OVERHEAD + service.len(),
        };
        let config = &self.config;
        if known.is_none() && self.services.len() >= config.max_services {
            Some(DropReason::Services)
        } else if self.queued_bytes + self.service_bytes + entry + size > config.max_queued_bytes {
            Some(DropReason::TotalBytes)
        } else if service_bytes + size > config.max_queued_bytes_per_service {
            Some(DropReason::ServiceBytes)
        } else if self.requests.len() >= config.max_queued_total {
            Some(DropReason::TotalCount)
        } else if service_queued >= config.max_queued_per_service {
            Some(DropReason::ServiceCount)
        } else {
            None
        }
    }

    fn handle_mmi(
        &mut self,
        now: Instant,
        identity: &Bytes,
        route: &[Bytes],
        request: ClientCommand,
        form: Version,
    ) {
        // "200" only for a live worker, and gauges without the dead: purge the silent first.
        self.purge_dead_workers(now);
        let reply = match (request.service.as_ref(), self.stats_encoder) {
            // The body names the service; a request with none (only possible through
            // `handle_client`: the decoders require a body frame) names no service a worker
            // could serve, so it is not found.
            (mmi::SERVICE, _) => vec![mmi::service_status(
                request
                    .body
                    .first()
                    .is_some_and(|name| self.has_worker(name)),
            )],
            (mmi::STATS, Some(encode)) => {
                // As of this request: counted among the requests, its reply not yet sent.
                let stats = match mmi::StatsQuery::parse(&request.body) {
                    Some(page) => self.stats_page(&page.prefix, page.offset, page.limit),
                    None => self.stats(),
                };
                vec![Bytes::from_static(mmi::OK), encode(&stats)]
            }
            (mmi::WORKERS, _) => match self.workers_encoder {
                Some(encode) => {
                    let page = mmi::StatsQuery::parse(&request.body).unwrap_or(mmi::StatsQuery {
                        limit: mmi::DEFAULT_PAGE,
                        ..mmi::StatsQuery::default()
                    });
                    let workers = self.workers_page(&page.prefix, page.offset, page.limit);
                    vec![Bytes::from_static(mmi::OK), encode(&workers)]
                }
                None => vec![Bytes::from_static(mmi::NOT_IMPLEMENTED)],
            },
            (mmi::ENVELOPE, _) => vec![Bytes::from_static(mmi::OK)],
            _ => vec![Bytes::from_static(mmi::NOT_IMPLEMENTED)],
        };
        debug!(client = %Peer(identity), service = %Hex(&request.service), status = %Hex(&reply[0]), "mmi");
        self.send_reply(identity, route, request.service, reply, form);
    }

    /// Handles a decoded MDP/Worker v0.1 command from the worker `identity`. A worker that
    /// registered in v0.2 is disconnected for it ([`DecodeError::VersionSwitch`]).
    pub fn handle_worker(&mut self, now: Instant, identity: &Bytes, message: WorkerMessage) {
        self.handle_worker_in(now, identity, message.into(), Version::V01);
    }

    /// Handles a worker's command in `form`. Before READY only READY (registering the worker in
    /// `form`) and DISCONNECT are valid; after it, every command must be in the form of the
    /// READY. A PARTIAL goes on to a v0.2 client at once and is gathered for a v0.1 one.
    fn handle_worker_in(
        &mut self,
        now: Instant,
        identity: &Bytes,
        message: FromWorker,
        form: Version,
    ) {
        self.tick(now);
        let Some(worker) = self.workers.get_mut(identity) else {
            match message {
                FromWorker::Ready { service } if mmi::is_mmi(&service) => {
                    // "It MUST disconnect any workers that attempt to register services in this
                    // namespace." (8/MMI)
                    self.protocol_violation(now, identity, "READY for an mmi.* service", form);
                }
                FromWorker::Ready { service }
                    if !self.allowed(now, identity, Access::Serve, &service) =>
                {
                    // Told DISCONNECT, as a worker whose READY is refused for any reason.
                    self.push_worker(identity, ToWorker::Disconnect, form);
                }
                FromWorker::Ready { service } => self.register(now, identity, service, form),
                // "The worker MAY send DISCONNECT at any time, including before READY."
                FromWorker::Disconnect => {}
                // Answered in the worker's own form.
                FromWorker::Reply { .. } => {
                    self.protocol_violation(now, identity, "reply before READY", form)
                }
                FromWorker::Heartbeat => match self.purged_silent(now, identity) {
                    Some(last_heard) => self.heartbeat_mismatch(now, identity, last_heard, form),
                    None => self.protocol_violation(now, identity, "HEARTBEAT before READY", form),
                },
            }
            return;
        };
        if worker.form != form {
            let error = DecodeError::VersionSwitch {
                registered: worker.form,
                got: form,
            };
            self.handle_invalid(now, identity, &error);
            return;
        }
        // "Any received command except DISCONNECT acts as a heartbeat."
        worker.heartbeat.on_recv(now);
        if !matches!(message, FromWorker::Disconnect) {
            worker.state.heard();
        }
        match message {
            FromWorker::Heartbeat => {
                // Only a heartbeat sent well after the request reached the worker shows that it
                // heartbeats while busy: a worker that sends nothing while busy may have sent one
                // just before the request arrived, and it lands just after the hand-out.
                let margin = self.config.heartbeat.interval / 2;
                worker.state.on_heartbeat(now, margin);
            }
            FromWorker::Ready { .. } => {
                // "The worker MUST NOT send a further READY."
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    identity,
                    error_kinds::SECOND_READY,
                    "worker disconnected",
                    &"a second READY",
                );
                self.disconnect_worker(now, identity, true);
            }
            FromWorker::Disconnect => {
                debug!(worker = %Peer(identity), "worker disconnected");
                // A DISCONNECT before anything else since the worker was handed a request: it
                // was leaving as the request reached it (it says DISCONNECT right after its last
                // reply), and gives it back.
                let departure = if worker.state.unstarted() {
                    Departure::Returned
                } else {
                    Departure::Lost
                };
                // "When the broker receives DISCONNECT from a worker it MUST send no further
                // commands to that worker."
                self.remove_worker(now, identity, false, departure);
            }
            FromWorker::Reply {
                part: Part::Partial,
                client,
                body,
            } => self.handle_partial(now, identity, client, body),
            FromWorker::Reply {
                part: Part::Final,
                client,
                body,
            } => self.handle_final(now, identity, client, body),
        }
    }

    /// A PARTIAL: forwarded to a v0.2 client as it comes, gathered for a v0.1 one.
    fn handle_partial(&mut self, now: Instant, identity: &Bytes, client: Bytes, body: Vec<Bytes>) {
        let limits = self.config.limits;
        let worker = self.workers.get_mut(identity).expect("registered");
        let held = match worker.state.in_flight_mut(&client) {
            Ok(held) => held,
            Err(error) => {
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    identity,
                    error_kinds::PARTIAL_WITHOUT_REQUEST,
                    "PARTIAL for no request in flight: worker disconnected",
                    &error,
                );
                self.disconnect_worker(now, identity, true);
                return;
            }
        };
        let InFlight { request, reply } = held;
        let was_overflowed = reply.is_overflowed();
        let outcome = reply.on_partial(request.form, body, &limits);
        if reply.is_overflowed() && !was_overflowed {
            // Counted as abandoned at the FINAL, with the worker idle again; logged once here.
            debug!(worker = %Peer(identity), client = %Peer(&client), max_frames = limits.max_frames, max_size = limits.max_message_size, "reply in parts past the frame or size limit for a v0.1 client: its parts are dropped");
        }
        match outcome {
            Ok(Some((dialect, body))) => {
                let frames = codec::v02_reply_frames(
                    Some(&client),
                    dialect,
                    Part::Partial,
                    &request.service,
                    &body,
                );
                self.transmits.push_back(Transmit {
                    role: Role::Client,
                    frames: routed(frames, &request.route),
                });
            }
            Ok(None) => {}
            Err(error) => {
                // Not reached: a request's reply state follows its client's version.
                warn!(worker = %Peer(identity), client = %Peer(&client), %error, "PARTIAL dropped");
            }
        }
    }

    /// A FINAL (or v0.1 REPLY): the reply goes to the client with what was gathered, and the
    /// worker is idle again.
    fn handle_final(&mut self, now: Instant, identity: &Bytes, client: Bytes, body: Vec<Bytes>) {
        let worker = self.workers.get_mut(identity).expect("registered");
        let InFlight { request, reply } = match worker.state.finish(now, &client) {
            Ok(held) => held,
            Err(error) => {
                // A reply the worker was not asked for (idle, or another client's address): the
                // worker is confused; what it held goes back to the queue.
                self.stats.protocol_errors += 1;
                self.errors.record(
                    now,
                    identity,
                    error_kinds::REPLY_WITHOUT_REQUEST,
                    "reply for no request in flight: worker disconnected",
                    &error,
                );
                self.disconnect_worker(now, identity, true);
                return;
            }
        };
        let service = worker.service.clone();
        worker.heartbeat.on_send(now);
        let received = request.received;
        match reply.into_body(body, &self.config.limits) {
            Ok(body) => {
                self.stats.replies += 1;
                if let Some(svc) = self.services.get_mut(&request.service) {
                    svc.counts.replies += 1;
                }
                self.send_reply(&client, &request.route, request.service, body, request.form);
            }
            Err(_) => {
                // Parts of a v0.2 worker past what a v0.1 client can take in one REPLY (the
                // limits of an inbound message): the client gets none and retries; the worker
                // goes on.
                self.stats.abandoned += 1;
                self.count_dropped(&request.service);
                debug!(worker = %Peer(identity), client = %Peer(&client), "reply in parts past the limits for a v0.1 client, dropped");
                self.drops
                    .record(now, &request.service, DropReason::Abandoned);
            }
        }
        if let Some(svc) = self.services.get_mut(&service) {
            // Handed its next request when the transmits are next taken (see `poll_transmit`);
            // the service is listed once for all its workers that rest.
            if svc.resting.is_empty() {
                self.pending_dispatch.push_back((now, service.clone()));
            }
            svc.resting.push(identity.clone());
            self.events.push(Event::Replied {
                service: service.clone(),
                latency: now.saturating_duration_since(received),
            });
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
        self.dispatch_pending();
        self.tick(now);
        while let Some((at, id)) = self.expiries.front().copied() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            let Some(queued) = self.requests.get_mut(&id) else {
                continue;
            };
            if queued.expires_at != Some(at) {
                continue;
            }
            if self
                .services
                .get(&queued.request.service)
                .is_some_and(|s| s.workers > 0)
            {
                // A worker registered since: the request waits for it, without an expiry.
                queued.expires_at = None;
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
        while self.idle_services.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, service)) = self.idle_services.pop_first() {
                self.forget_service(&service);
            }
        }
        self.drops.handle_timeout(now);
        self.errors.handle_timeout(now);
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
        self.peer_keys.remove(identity);
        let Some(worker) = self.workers.get(identity) else {
            return;
        };
        self.stats.disconnected += 1;
        let busy = worker.state.is_busy();
        info!(worker = %Peer(identity), service = %Hex(&worker.service), busy, "worker connection closed, removing");
        self.disconnect_worker(now, identity, false);
    }

    /// Removes the queued request `id`, counted and summarised as dropped for `reason`.
    fn drop_queued(&mut self, now: Instant, id: u64, reason: DropReason) {
        let Some(Queued { request, .. }) = self.requests.remove(&id) else {
            return;
        };
        self.stats.expired += 1;
        self.count_dropped(&request.service);
        self.queued_bytes -= request.size;
        debug!(client = %Peer(&request.client), service = %Hex(&request.service), %reason, "request dropped");
        self.drops.record(now, &request.service, reason);
        if let Some(svc) = self.services.get_mut(&request.service) {
            svc.queued -= 1;
            svc.queued_bytes -= request.size;
            svc.trim(&request.client, &self.requests);
        }
        self.on_maybe_unused(now, &request.service);
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
            && self.workers.values().all(|w| !w.state.is_busy())
    }

    /// Tells every worker DISCONNECT and forgets all workers and queued requests. What was
    /// queued or in flight is counted in [`BrokerStats::dropped_at_shutdown`], reported as one
    /// [`Event::DroppedMany`] ([`DropReason::Drain`]) and logged in one line.
    pub fn shutdown(&mut self) {
        // Nothing more is handed out: what is queued is dropped below.
        self.pending_dispatch.clear();
        let queued = self.requests.len();
        let in_flight = self.workers.values().filter(|w| w.state.is_busy()).count();
        let dropped = (queued + in_flight) as u64;
        if dropped > 0 {
            self.stats.dropped_at_shutdown += dropped;
            self.events.push(Event::DroppedMany {
                reason: DropReason::Drain,
                count: dropped,
            });
            warn!(
                queued,
                in_flight, "stopping: requests still held are dropped unanswered"
            );
        }
        let workers: Vec<(Bytes, Version)> = self
            .workers
            .iter()
            .map(|(id, w)| (id.clone(), w.form))
            .collect();
        for (identity, form) in workers {
            self.push_worker(&identity, ToWorker::Disconnect, form);
        }
        self.workers.clear();
        self.services.clear();
        self.idle_services.clear();
        self.service_bytes = 0;
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
                registered: now,
                heartbeat: Heartbeat::new(now, self.config.heartbeat),
                state: WorkerState::Idle { since: now },
                form,
            },
        );
        self.know_service(&service);
        let svc = self.services.entry(service.clone()).or_default();
        if let Some(at) = svc.forget_at.take() {
            self.idle_services.remove(&(at, service.clone()));
        }
        svc.workers += 1;
        svc.idle.push_back(identity.clone());
        self.dispatch(now, &service);
    }

    fn protocol_violation(
        &mut self,
        now: Instant,
        identity: &Bytes,
        what: &'static str,
        form: Version,
    ) {
        self.stats.protocol_errors += 1;
        self.errors.record(
            now,
            identity,
            error_kinds::UNEXPECTED_COMMAND,
            "unexpected command: DISCONNECT sent",
            &what,
        );
        // "The broker MUST respond to any valid but unexpected command by sending DISCONNECT and
        // then no further commands to that worker."
        self.push_worker(identity, ToWorker::Disconnect, form);
    }

    /// Removes a worker, optionally telling it DISCONNECT, and re-queues what it held.
    fn disconnect_worker(&mut self, now: Instant, identity: &Bytes, send: bool) {
        self.remove_worker(now, identity, send, Departure::Lost);
    }

    /// Removes a worker that left as `departure` says, optionally telling it DISCONNECT, and
    /// re-queues what it held.
    fn remove_worker(&mut self, now: Instant, identity: &Bytes, send: bool, departure: Departure) {
        let Some(worker) = self.workers.remove(identity) else {
            return;
        };
        if send {
            self.push_worker(identity, ToWorker::Disconnect, worker.form);
        }
        if let Some(svc) = self.services.get_mut(&worker.service) {
            svc.workers -= 1;
            svc.idle.retain(|w| w != identity);
            svc.resting.retain(|w| w != identity);
            if svc.workers == 0 {
                // No worker left: what waits for one now expires after `request_expiry`.
                let at = now + self.config.request_expiry;
                for id in svc.queues.values().flatten() {
                    if let Some(queued) = self.requests.get_mut(id) {
                        if queued.expires_at.is_none() {
                            queued.expires_at = Some(at);
                            self.expiries.push_back((at, *id));
                        }
                    }
                }
            }
        }
        if let Some(InFlight {
            mut request,
            mut reply,
        }) = worker.state.into_held()
        {
            let verdict = match departure {
                Departure::Lost => request
                    .deliveries
                    .on_worker_lost(self.config.max_deliveries),
                Departure::Returned => request.deliveries.on_returned(),
            };
            if let Err(error) = reply.restart() {
                // Its client already holds PARTIALs: replaying the request to another worker
                // would send it parts twice. It gets no FINAL, and retries.
                self.stats.abandoned += 1;
                self.count_dropped(&request.service);
                warn!(client = %Peer(&request.client), service = %Hex(&request.service), %error, "worker lost after streaming part of a reply: request abandoned, not replayed");
                self.drops
                    .record(now, &request.service, DropReason::Abandoned);
            } else if verdict == Redelivery::Abandon {
                self.stats.abandoned += 1;
                self.count_dropped(&request.service);
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
                debug!(client = %Peer(&request.client), service = %Hex(&request.service), ?departure, "re-queueing request of a departed worker");
                self.enqueue(now, request, true);
                self.dispatch(now, &worker.service);
            }
        }
        self.on_maybe_unused(now, &worker.service);
    }

    /// Queues `request` (at the front for a re-queued one), with an expiry if its service has no
    /// worker and a maximum wait if one is configured. Every entry is `now` plus a fixed delay,
    /// so pushing at the back keeps both lists in deadline order.
    fn enqueue(&mut self, now: Instant, request: Request, front: bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.know_service(&request.service);
        let svc = self.services.entry(request.service.clone()).or_default();
        if let Some(at) = svc.forget_at.take() {
            self.idle_services.remove(&(at, request.service.clone()));
        }
        let expires_at = (svc.workers == 0).then(|| now + self.config.request_expiry);
        if let Some(at) = expires_at {
            self.expiries.push_back((at, id));
        }
        let wait_until = self.config.max_wait.map(|wait| now + wait);
        if let Some(at) = wait_until {
            self.waits.push_back((at, id));
        }
        svc.push(&request.client, id, request.size, front);
        self.queued_bytes += request.size;
        self.requests.insert(
            id,
            Queued {
                request,
                expires_at,
                wait_until,
            },
        );
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
        while let Some(identity) = svc.idle.pop_front() {
            let Some((_, Queued { mut request, .. })) = svc.pop(&mut self.requests) else {
                svc.idle.push_front(identity);
                break;
            };
            self.queued_bytes -= request.size;
            let worker = self
                .workers
                .get_mut(&identity)
                .expect("idle workers are registered");
            request.deliveries.hand_out();
            worker.heartbeat.on_send(now);
            let frames =
                codec::request_frames(Some(&identity), worker.form, &request.client, &request.body);
            if let Err((error, request)) = worker.state.assign(now, request) {
                // Not reached: the idle list holds idle workers only. The request goes back.
                warn!(worker = %Peer(&identity), %error, "busy worker in the idle list");
                svc.push(&request.client, self.next_id, request.size, true);
                self.queued_bytes += request.size;
                self.requests.insert(
                    self.next_id,
                    Queued {
                        request: *request,
                        expires_at: None,
                        wait_until: None,
                    },
                );
                self.next_id += 1;
                continue;
            }
            self.transmits.push_back(Transmit {
                role: Role::Worker,
                frames,
            });
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
                let busy = w.state.is_busy();
                let dead = if busy && !w.state.heartbeats_when_busy() {
                    silent >= busy_timeout
                } else {
                    w.heartbeat.is_peer_dead(now)
                };
                dead.then(|| (id.clone(), busy, silent))
            })
            .collect();
        for (identity, busy, silent) in dead {
            self.stats.purged += 1;
            if !busy {
                if self.purged.len() >= PURGED_REMEMBERED {
                    self.purged.pop_front();
                }
                self.purged.push_back((now, identity.clone(), now - silent));
            }
            let silent_s = silent.as_secs_f64();
            if busy {
                warn!(worker = %Peer(&identity), silent_s, "worker silent while busy, purging; its request goes to another worker");
            } else {
                warn!(worker = %Peer(&identity), silent_s, "idle worker silent past liveness, purging");
            }
            self.disconnect_worker(now, &identity, false);
        }
    }

    /// When the worker `identity` was last heard from, if it was purged for silence lately.
    fn purged_silent(&mut self, now: Instant, identity: &Bytes) -> Option<Instant> {
        while self
            .purged
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > PURGED_FOR)
        {
            self.purged.pop_front();
        }
        let index = self.purged.iter().position(|(_, id, _)| id == identity)?;
        self.purged
            .remove(index)
            .map(|(_, _, last_heard)| last_heard)
    }

    /// A worker purged for silence sent a HEARTBEAT: its interval is longer than this broker
    /// allows. Told DISCONNECT (it registers again), counted, and logged with both figures.
    fn heartbeat_mismatch(
        &mut self,
        now: Instant,
        identity: &Bytes,
        last_heard: Instant,
        form: Version,
    ) {
        self.stats.heartbeat_mismatch += 1;
        let heartbeat = self.config.heartbeat;
        let gap = now.saturating_duration_since(last_heard);
        self.errors.record(
            now,
            identity,
            error_kinds::HEARTBEAT_MISMATCH,
            "a worker purged for silence sent HEARTBEAT: heartbeat settings differ",
            &format_args!(
                "its HEARTBEAT came {} ms after its last message, and this broker purges after {} ms ({} ms x liveness {}): give workers and broker the same heartbeat",
                gap.as_millis(),
                heartbeat.expiry().as_millis(),
                heartbeat.interval.as_millis(),
                heartbeat.liveness
            ),
        );
        self.push_worker(identity, ToWorker::Disconnect, form);
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
                    frames: ToWorker::Heartbeat.encode(Some(identity), worker.form),
                });
            }
        }
    }

    /// The one reply to a v0.1 client, or the FINAL to a v0.2 one, after its `route`.
    fn send_reply(
        &mut self,
        client: &Bytes,
        route: &[Bytes],
        service: Bytes,
        body: Vec<Bytes>,
        form: Version,
    ) {
        let frames = codec::final_frames(Some(client), form, &service, &body);
        self.transmits.push_back(Transmit {
            role: Role::Client,
            frames: routed(frames, route),
        });
    }

    /// Counts a request for `service` refused on arrival (in its service's counters too, if the
    /// service is known).
    fn reject(&mut self, service: &Bytes) {
        self.stats.rejected += 1;
        if let Some(svc) = self.services.get_mut(service) {
            svc.counts.rejected += 1;
        }
    }

    /// Counts an accepted request for `service` dropped unanswered in its service's counters.
    fn count_dropped(&mut self, service: &Bytes) {
        if let Some(svc) = self.services.get_mut(service) {
            svc.counts.dropped += 1;
        }
    }

    /// HEARTBEAT or DISCONNECT to a worker, in the form it speaks.
    fn push_worker(&mut self, identity: &Bytes, command: ToWorker, form: Version) {
        self.transmits.push_back(Transmit {
            role: Role::Worker,
            frames: command.encode(Some(identity), form),
        });
    }

    /// Counts the entry `service` is about to get if it is not known yet.
    fn know_service(&mut self, service: &Bytes) {
        if !self.services.contains_key(service) {
            self.service_bytes += SERVICE_OVERHEAD + service.len();
        }
    }

    /// A service that has just lost a worker or a queued request: if it has neither left, it
    /// is forgotten after [`BrokerConfig::service_idle_grace`] (at once with no grace). Its
    /// queues' storage is given back meanwhile.
    fn on_maybe_unused(&mut self, now: Instant, service: &Bytes) {
        let grace = self.config.service_idle_grace;
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        if !svc.is_unused() || svc.forget_at.is_some() {
            return;
        }
        if grace.is_zero() {
            self.forget_service(service);
            return;
        }
        let at = now + grace;
        *svc = Service {
            forget_at: Some(at),
            counts: svc.counts,
            ..Service::default()
        };
        self.idle_services.insert((at, service.clone()));
    }

    /// Forgets the service idle longest other than `keep`, to make room; false with none.
    fn forget_idle_service(&mut self, keep: &Bytes) -> bool {
        let Some(service) = self
            .idle_services
            .iter()
            .map(|(_, name)| name)
            .find(|name| *name != keep)
            .cloned()
        else {
            return false;
        };
        debug!(service = %Hex(&service), "idle service forgotten early to make room");
        self.forget_service(&service);
        true
    }

    /// Forgets an unused service, reporting it as [`Event::ServiceForgotten`] so the driver
    /// forgets what it keeps for it.
    fn forget_service(&mut self, service: &Bytes) {
        let Some(svc) = self.services.get(service) else {
            return;
        };
        if let Some(at) = svc.forget_at {
            self.idle_services.remove(&(at, service.clone()));
        }
        if !svc.is_unused() {
            return;
        }
        self.services.remove(service);
        self.service_bytes -= SERVICE_OVERHEAD + service.len();
        self.events.push(Event::ServiceForgotten {
            service: service.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: &'static [u8], form: Version) -> Request {
        Request {
            client: Bytes::from_static(client),
            route: Vec::new(),
            service: Bytes::from_static(b"echo"),
            body: vec![Bytes::from_static(b"q")],
            size: 0,
            received: Instant::now(),
            deliveries: Deliveries::default(),
            form,
        }
    }

    fn parts(frames: &[&'static [u8]]) -> Vec<Bytes> {
        frames.iter().map(|f| Bytes::from_static(f)).collect()
    }

    const V02: Version = Version::V02(Dialect::Rfc18);

    #[test]
    fn frames_cost_their_payload_an_overhead_each_and_the_slack_of_a_large_one() {
        assert_eq!(frames_cost(&[]), 0);
        // Empty frames are not free.
        assert_eq!(
            frames_cost(&[Bytes::new(), Bytes::new()]),
            2 * FRAME_OVERHEAD
        );
        let at_limit = Bytes::from(vec![0u8; LARGE_FRAME]);
        assert_eq!(frames_cost(&[at_limit]), LARGE_FRAME + FRAME_OVERHEAD);
        let large = Bytes::from(vec![0u8; LARGE_FRAME + 1]);
        assert_eq!(
            frames_cost(&[large, Bytes::from_static(b"x")]),
            LARGE_FRAME + 1 + LARGE_FRAME_SLACK + 1 + 2 * FRAME_OVERHEAD
        );
    }

    #[test]
    fn a_queued_request_counts_its_frames_as_frames_cost_does() {
        let t0 = Instant::now();
        let mut core = BrokerCore::new(t0, BrokerConfig::default());
        let body = vec![Bytes::from(vec![7u8; LARGE_FRAME * 2]), Bytes::new()];
        let frames =
            crate::mdp::ClientRequest::new(Bytes::from_static(b"svc"), body.clone()).encode();
        core.handle_message(t0, &Bytes::from_static(b"client"), &frames)
            .unwrap();
        assert_eq!(
            core.stats().queued_bytes,
            REQUEST_OVERHEAD + b"client".len() + b"svc".len() + frames_cost(&body)
        );
    }

    #[test]
    fn a_worker_is_idle_busy_then_idle_and_refuses_what_it_was_not_asked() {
        let t0 = Instant::now();
        let client = Bytes::from_static(b"c");
        let mut state = WorkerState::Idle { since: t0 };
        assert_eq!(state.finish(t0, &client).err(), Some(StateError::Idle));
        assert_eq!(state.in_flight_mut(&client).err(), Some(StateError::Idle));
        state.assign(t0, request(b"c", Version::V01)).unwrap();
        assert!(state.is_busy());
        // Busy: a second request is handed back.
        let (error, back) = state
            .assign(t0, request(b"d", Version::V01))
            .expect_err("busy");
        assert_eq!((error, back.client.as_ref()), (StateError::Busy, &b"d"[..]));
        // A reply for another client changes nothing.
        let other = Bytes::from_static(b"x");
        assert_eq!(
            state.finish(t0, &other).err(),
            Some(StateError::OtherClient)
        );
        assert!(state.is_busy());
        let held = state.finish(t0, &client).unwrap();
        assert_eq!(held.request.client, client);
        assert!(!state.is_busy());
        assert!(state.into_held().is_none());
    }

    #[test]
    fn only_a_heartbeat_well_after_the_hand_out_shows_a_worker_heartbeats_when_busy() {
        let t0 = Instant::now();
        let margin = Duration::from_millis(50);
        let mut state = WorkerState::Idle { since: t0 };
        state.on_heartbeat(t0 + margin * 4, margin);
        assert!(!state.heartbeats_when_busy());
        state.assign(t0, request(b"c", Version::V01)).unwrap();
        state.on_heartbeat(t0 + margin / 2, margin);
        assert!(!state.heartbeats_when_busy());
        state.on_heartbeat(t0 + margin, margin);
        assert!(state.heartbeats_when_busy());
        // Idle again, then busy with a new request: not yet seen to heartbeat.
        state.finish(t0, &Bytes::from_static(b"c")).unwrap();
        state
            .assign(t0 + margin * 2, request(b"c", Version::V01))
            .unwrap();
        assert!(!state.heartbeats_when_busy());
        assert!(state.into_held().is_some());
    }

    /// Limits of `size` bytes and `frames` body frames for a gathered reply.
    fn limits(size: usize, frames: usize) -> Limits {
        Limits::default()
            .max_message_size(size)
            .max_frames(frames + REPLY_HEADER_FRAMES)
    }

    fn gathering(frames: &[&'static [u8]]) -> ReplyState {
        let parts = parts(frames);
        let size = parts.iter().map(Bytes::len).sum();
        ReplyState::Gathering { parts, size }
    }

    #[test]
    fn parts_stream_to_a_v02_client_and_the_request_is_then_never_replayed() {
        let l = limits(10, 10);
        let mut reply = ReplyState::Awaiting;
        let got = reply.on_partial(V02, parts(&[b"1"]), &l).unwrap();
        assert_eq!(got, Some((Dialect::Rfc18, parts(&[b"1"]))));
        assert_eq!(reply, ReplyState::Streaming);
        assert!(reply.on_partial(V02, parts(&[b"2"]), &l).unwrap().is_some());
        assert_eq!(reply.restart(), Err(StateError::Streamed));
        assert_eq!(reply, ReplyState::Streaming);
        // A v0.1 client's request is never streaming.
        assert_eq!(
            reply.on_partial(Version::V01, parts(&[b"3"]), &l),
            Err(StateError::WrongVersion)
        );
        assert_eq!(reply.into_body(parts(&[b"f"]), &l), Ok(parts(&[b"f"])));
    }

    #[test]
    fn parts_are_gathered_for_a_v01_client_up_to_the_limit() {
        let l = limits(5, 10);
        let mut reply = ReplyState::Awaiting;
        assert_eq!(
            reply.on_partial(Version::V01, parts(&[b"ab"]), &l),
            Ok(None)
        );
        assert_eq!(
            reply.on_partial(Version::V01, parts(&[b"cd"]), &l),
            Ok(None)
        );
        assert_eq!(reply, gathering(&[b"ab", b"cd"]));
        // A v0.2 client's request is never gathering.
        assert_eq!(
            reply.on_partial(V02, parts(&[b"x"]), &l),
            Err(StateError::WrongVersion)
        );
        let mut replay = gathering(&[b"ab"]);
        assert_eq!(replay.restart(), Ok(()));
        assert_eq!(replay, ReplyState::Awaiting);
        assert_eq!(
            reply.into_body(parts(&[b"f"]), &l),
            Ok(parts(&[b"ab", b"cd", b"f"]))
        );
        // The FINAL counts too: one byte past the limit refuses the whole reply.
        assert_eq!(
            gathering(&[b"ab", b"cd"]).into_body(parts(&[b"fg"]), &l),
            Err(StateError::Overflowed)
        );
        // Past the limit: overflowed, the rest dropped, and the reply refused.
        let mut reply = gathering(&[b"ab"]);
        assert_eq!(
            reply.on_partial(Version::V01, parts(&[b"cdef"]), &l),
            Ok(None)
        );
        assert_eq!(reply, ReplyState::Overflowed);
        assert_eq!(reply.on_partial(Version::V01, parts(&[b"z"]), &l), Ok(None));
        assert_eq!(reply, ReplyState::Overflowed);
        assert_eq!(
            ReplyState::Overflowed.into_body(parts(&[b"f"]), &l),
            Err(StateError::Overflowed)
        );
        // Another worker starts over.
        assert_eq!(reply.restart(), Ok(()));
        assert_eq!(reply, ReplyState::Awaiting);
    }

    #[test]
    fn empty_frames_count_against_the_frame_limit_of_a_gathered_reply() {
        let l = limits(1 << 20, 4);
        let empty = || vec![Bytes::new(); 2];
        let mut reply = ReplyState::Awaiting;
        assert_eq!(reply.on_partial(Version::V01, empty(), &l), Ok(None));
        assert_eq!(reply.on_partial(Version::V01, empty(), &l), Ok(None));
        assert!(matches!(&reply, ReplyState::Gathering { parts, size: 0 } if parts.len() == 4));
        // The fifth frame, payload or not, is past the limit.
        assert_eq!(
            reply.on_partial(Version::V01, vec![Bytes::new()], &l),
            Ok(None)
        );
        assert_eq!(reply, ReplyState::Overflowed);
        // The FINAL's frames count too.
        let mut reply = ReplyState::Awaiting;
        reply.on_partial(Version::V01, empty(), &l).unwrap();
        assert_eq!(
            reply.into_body(vec![Bytes::new(); 3], &l),
            Err(StateError::Overflowed)
        );
    }
}
