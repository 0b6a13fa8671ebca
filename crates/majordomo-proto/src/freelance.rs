//! The Freelance client (10/FLP, the Guide's model 3) as a state machine with no socket and no
//! clock: brokerless request-reply over several equivalent servers.
//!
//! The client talks to each server by its identity, which is the server's public endpoint
//! (RFC 10: "Server identities are their *public endpoints*"). It pings every server every
//! [`FreelanceConfig::ping_interval`] (a single frame `PING`, answered `PONG`); any message from
//! a server keeps it alive for [`FreelanceConfig::server_ttl`]. A request is a control frame,
//! here the request's sequence number in ASCII, then the body (RFC 10: "The server MUST return
//! the CCF unmodified, followed by one or more frames of reply body"). It goes to the first live
//! server in the order the servers were given; if no reply comes within
//! [`FreelanceConfig::attempt_timeout`], or that server is declared dead, it goes to the next
//! live one, round the list, until [`FreelanceConfig::timeout`] from the request has passed. A
//! reply whose control frame names no request in flight (late, duplicate, or malformed) is
//! dropped and counted, never delivered.
//!
//! What the Guide's `flcliapi` got wrong, and this does not: a server's TTL may exceed the
//! request timeout (the request moves on after `attempt_timeout`, whatever the TTL); requests
//! are re-sent only when an attempt times out, never on every wake-up; every request has its
//! own sequence number, so a stale reply never reaches the caller; a PONG is never read as a
//! reply (it is one frame, a reply at least two); any number of clients and requests.
//!
//! A driver feeds [`FreelanceCore::handle_message`] (frames after the server's identity) and
//! [`FreelanceCore::handle_timeout`] at [`FreelanceCore::poll_timeout`], sends what
//! [`FreelanceCore::poll_transmit`] gives to the server it names, and hands each
//! [`FreelanceEvent`] to its caller.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The ping command (RFC 10: "a single frame containing the four characters "PING"").
pub const PING: &[u8] = b"PING";
/// The ping's answer.
pub const PONG: &[u8] = b"PONG";

/// The client's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FreelanceConfig {
    /// How often each server is pinged. Default 1 s.
    pub ping_interval: Duration,
    /// How long a server stays alive after its last message. Default 3 s (RFC 10: "if no
    /// "pong" arrives within some multiple of that interval (usually 2-3)").
    pub server_ttl: Duration,
    /// How long a request waits for a server's reply before it goes to the next live server.
    /// Default 1 s.
    pub attempt_timeout: Duration,
    /// How long a request may take in all, over every server. Default 3 s.
    pub timeout: Duration,
}

impl Default for FreelanceConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(1),
            server_ttl: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

impl FreelanceConfig {
    /// Sets `ping_interval`; the field says what it means and its default.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets `server_ttl`; the field says what it means and its default.
    pub fn server_ttl(mut self, ttl: Duration) -> Self {
        self.server_ttl = ttl;
        self
    }

    /// Sets `attempt_timeout`; the field says what it means and its default.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets `timeout`; the field says what it means and its default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the settings a client cannot run with.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let zero = [
            self.ping_interval.is_zero(),
            self.server_ttl.is_zero(),
            self.attempt_timeout.is_zero(),
            self.timeout.is_zero(),
        ];
        if zero.contains(&true) {
            return Err(crate::ConfigError(
                "the Freelance intervals and timeouts must be positive",
            ));
        }
        if self.server_ttl < self.ping_interval {
            return Err(crate::ConfigError(
                "the server TTL must be at least the ping interval",
            ));
        }
        Ok(())
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreelanceError {
    /// No server answered within [`FreelanceConfig::timeout`].
    #[error("no server answered within {timeout:?} ({attempts} attempts, {alive} servers alive)")]
    NoReply {
        /// The timeout.
        timeout: Duration,
        /// Servers the request was sent to, counting repeats.
        attempts: u32,
        /// Servers alive when it failed.
        alive: usize,
    },
    /// A request needs at least one frame of body.
    #[error("a request needs at least one frame")]
    EmptyRequest,
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreelanceEvent {
    /// The request `id` is over: its reply (the frames after the control frame), or why not.
    Done {
        /// The id [`FreelanceCore::request`] gave.
        id: u64,
        /// The outcome.
        result: Result<Vec<Bytes>, FreelanceError>,
    },
}

/// What the client has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreelanceStats {
    /// Requests answered.
    pub replies: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Attempts sent, first ones included.
    pub attempts: u64,
    /// Attempts that moved a request to another server.
    pub failovers: u64,
    /// Replies dropped: their control frame named no request in flight.
    pub stale: u64,
    /// Messages from servers that were neither a PONG nor a reply.
    pub malformed: u64,
    /// Servers alive now.
    pub alive: usize,
}

#[derive(Debug)]
struct Server {
    identity: Bytes,
    /// Alive until then; `None` until it is first heard from.
    expires: Option<Instant>,
    next_ping: Instant,
    /// An attempt timed out on it and it has not been heard from since: new requests go to
    /// other live servers first (a frozen server stays alive for its TTL, and without this
    /// every new request would wait an attempt timeout on it).
    suspect: bool,
}

#[derive(Debug)]
struct Pending {
    body: Vec<Bytes>,
    /// Where the last attempt went, and when it gives up on that server.
    server: Option<usize>,
    attempt_deadline: Instant,
    deadline: Instant,
    attempts: u32,
}

/// The Freelance client's state. See the module documentation.
#[derive(Debug)]
pub struct FreelanceCore {
    config: FreelanceConfig,
    servers: Vec<Server>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    transmits: VecDeque<(Bytes, Vec<Bytes>)>,
    events: VecDeque<FreelanceEvent>,
    stats: FreelanceStats,
}

impl FreelanceCore {
    /// A client of the servers whose identities (public endpoints) are `servers`, in order of
    /// preference; the first pings go out at `now`.
    pub fn new(
        now: Instant,
        config: FreelanceConfig,
        servers: impl IntoIterator<Item = Bytes>,
    ) -> Self {
        let servers = servers
            .into_iter()
            .map(|identity| Server {
                identity,
                expires: None,
                next_ping: now,
                suspect: false,
            })
            .collect();
        let mut core = Self {
            config,
            servers,
            pending: BTreeMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: FreelanceStats::default(),
        };
        core.handle_timeout(now);
        core
    }

    /// The servers' identities, in the order given.
    pub fn servers(&self) -> impl Iterator<Item = &Bytes> {
        self.servers.iter().map(|s| &s.identity)
    }

    /// Starts a request of `body` (one frame or more); returns its id, which its
    /// [`FreelanceEvent::Done`] carries.
    pub fn request(&mut self, now: Instant, body: Vec<Bytes>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if body.is_empty() {
            self.stats.failed += 1;
            self.events.push_back(FreelanceEvent::Done {
                id,
                result: Err(FreelanceError::EmptyRequest),
            });
            return id;
        }
        self.pending.insert(
            id,
            Pending {
                body,
                server: None,
                attempt_deadline: now,
                deadline: now + self.config.timeout,
                attempts: 0,
            },
        );
        self.attempt(now, id);
        id
    }

    /// Forgets the request `id` (its caller went away): a reply to it will count as stale.
    pub fn cancel(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// A message from the server `identity`: `frames` after its identity.
    pub fn handle_message(&mut self, now: Instant, identity: &[u8], frames: Vec<Bytes>) {
        let Some(index) = self
            .servers
            .iter()
            .position(|s| s.identity[..] == *identity)
        else {
            self.stats.malformed += 1;
            return;
        };
        // Any traffic keeps a server alive (RFC 10: clients consider a server disconnected if
        // nothing arrives within a multiple of the ping interval).
        let was_dead = !self.is_alive(index, now);
        self.servers[index].expires = Some(now + self.config.server_ttl);
        self.servers[index].suspect = false;
        if was_dead {
            // Requests waiting for a live server go now.
            let waiting: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.server.is_none())
                .map(|(&id, _)| id)
                .collect();
            for id in waiting {
                self.attempt(now, id);
            }
        }
        match &frames[..] {
            [pong] if pong[..] == *PONG => {}
            [control, _, ..] => {
                let id = std::str::from_utf8(control)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match id.and_then(|id| self.pending.remove(&id).map(|p| (id, p))) {
                    Some((id, _)) => {
                        self.stats.replies += 1;
                        self.events.push_back(FreelanceEvent::Done {
                            id,
                            result: Ok(frames[1..].to_vec()),
                        });
                    }
                    None => self.stats.stale += 1,
                }
            }
            _ => self.stats.malformed += 1,
        }
    }

    /// A connection to the server `identity` was (re)made: it is pinged at once rather than at
    /// its next interval, so that a server back from the dead is in use within a round trip.
    pub fn handle_server_connected(&mut self, now: Instant, identity: &[u8]) {
        if let Some(server) = self
            .servers
            .iter_mut()
            .find(|s| s.identity[..] == *identity)
        {
            server.next_ping = now;
            self.handle_timeout(now);
        }
    }

    /// The connection to the server `identity` failed: it is dead until it is heard from again.
    pub fn handle_server_lost(&mut self, now: Instant, identity: &[u8]) {
        if let Some(index) = self
            .servers
            .iter()
            .position(|s| s.identity[..] == *identity)
        {
            self.servers[index].expires = None;
            self.fail_over(now, index);
        }
    }

    /// Whatever is due at `now`: pings, servers declared dead, attempts moved on, requests
    /// failed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            if now >= server.next_ping {
                server.next_ping = now + self.config.ping_interval;
                self.transmits
                    .push_back((server.identity.clone(), vec![Bytes::from_static(PING)]));
            }
            if server.expires.is_some_and(|at| now >= at) {
                server.expires = None;
                self.fail_over(now, index);
            }
        }
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline || now >= p.attempt_deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            // The server it waited on did not answer in time: suspect until heard from.
            if let Some(server) = self.pending.get(&id).and_then(|p| p.server) {
                self.servers[server].suspect = true;
            }
            self.attempt(now, id);
        }
    }

    /// When [`FreelanceCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let servers = self
            .servers
            .iter()
            .flat_map(|s| [Some(s.next_ping), s.expires])
            .flatten();
        let requests = self
            .pending
            .values()
            .map(|p| p.deadline.min(p.attempt_deadline));
        servers
            .chain(requests)
            .min()
            .unwrap_or_else(|| Instant::now() + self.config.ping_interval)
    }

    /// The next message to send: the server's identity, and the frames after it.
    pub fn poll_transmit(&mut self) -> Option<(Bytes, Vec<Bytes>)> {
        self.transmits.pop_front()
    }

    /// The next outcome for a caller.
    pub fn poll_event(&mut self) -> Option<FreelanceEvent> {
        self.events.pop_front()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// What the client has seen.
    pub fn stats(&self, now: Instant) -> FreelanceStats {
        FreelanceStats {
            alive: (0..self.servers.len())
                .filter(|&i| self.is_alive(i, now))
                .count(),
            ..self.stats
        }
    }

    fn is_alive(&self, index: usize, now: Instant) -> bool {
        self.servers[index].expires.is_some_and(|at| now < at)
    }

    /// Requests on the server `index`, just declared dead, move on at once.
    fn fail_over(&mut self, now: Instant, index: usize) {
        let on_it: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.server == Some(index))
            .map(|(&id, _)| id)
            .collect();
        for id in on_it {
            self.attempt(now, id);
        }
    }

    /// Sends the request `id` to the next live server after the one it last went to, fails it
    /// past its deadline, or leaves it waiting for a live server.
    fn attempt(&mut self, now: Instant, id: u64) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        if now >= pending.deadline {
            let attempts = pending.attempts;
            self.pending.remove(&id);
            self.stats.failed += 1;
            let alive = (0..self.servers.len())
                .filter(|&i| self.is_alive(i, now))
                .count();
            self.events.push_back(FreelanceEvent::Done {
                id,
                result: Err(FreelanceError::NoReply {
                    timeout: self.config.timeout,
                    attempts,
                    alive,
                }),
            });
            return;
        }
        let count = self.servers.len();
        // The first live server after the last one tried, round the list (a first attempt
        // starts from the first server given), one not suspect if there is one.
        let start = pending.server.map_or(0, |s| s + 1);
        let order = || (0..count).map(|k| (start + k) % count);
        let next = order()
            .find(|&i| self.is_alive(i, now) && !self.servers[i].suspect)
            .or_else(|| order().find(|&i| self.is_alive(i, now)));
        let deadline = pending.deadline;
        let previous = pending.server;
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        match next {
            Some(index) => {
                if previous.is_some() {
                    self.stats.failovers += 1;
                }
                pending.server = Some(index);
                pending.attempts += 1;
                pending.attempt_deadline = (now + self.config.attempt_timeout).min(deadline);
                self.stats.attempts += 1;
                let mut frames = Vec::with_capacity(pending.body.len() + 1);
                frames.push(Bytes::from(id.to_string()));
                frames.extend(pending.body.iter().cloned());
                self.transmits
                    .push_back((self.servers[index].identity.clone(), frames));
            }
            None => {
                // No live server: wait for one to be heard from, or for the deadline.
                pending.server = None;
                pending.attempt_deadline = deadline;
            }
        }
    }
}
