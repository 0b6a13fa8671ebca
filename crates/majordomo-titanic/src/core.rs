//! Titanic's rules with no socket, no store and no clock: which requests are stored, queued,
//! in flight or answered, what each TSP service answers, and the dispatch policy.
//!
//! The driver writes what the core returns ([`Op`]) to the store and reports back: a request is
//! acknowledged (`200` and its UUID) only after [`Core::accept`], that is once its write is
//! durable; a reply is stored before [`Core::replied`] marks its request done. After a crash,
//! [`Core::restore`] rebuilds the same state from what the store holds: a request that was in
//! flight is queued again, so a request is executed at least once (workers should be
//! idempotent), and never lost.
//!
//! # Dispatch
//! Per service, up to `in_flight_per_service` requests are with the broker at once, oldest
//! first; services take turns. A service whose request failed (no reply after the client's
//! retries, or no worker at all) is not tried again before its backoff has passed (1 s doubling
//! to 30 s by default, reset by a reply); the other services go on meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

use crate::store::{Entry, Op};
use crate::tsp::{Status, Uuid};

/// Titanic's limits and dispatch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreConfig {
    /// Most requests and replies stored at once (default 1,000,000); past it
    /// `titanic.request` answers 500.
    pub max_stored: usize,
    /// Most requests of one service with the broker at once (default 16).
    pub in_flight_per_service: usize,
    /// How long a reply that nobody closes is kept (default 7 days).
    pub retention: Duration,
    /// First wait before a service whose request failed is tried again (default 1 s).
    pub backoff_initial: Duration,
    /// Longest such wait; it doubles up to it (default 30 s).
    pub backoff_max: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_stored: 1_000_000,
            in_flight_per_service: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl CoreConfig {
    /// Sets `max_stored`; the field says what it means and its default.
    pub fn max_stored(mut self, max_stored: usize) -> Self {
        self.max_stored = max_stored;
        self
    }

    /// Sets `in_flight_per_service`; the field says what it means and its default.
    pub fn in_flight_per_service(mut self, n: usize) -> Self {
        self.in_flight_per_service = n;
        self
    }

    /// Sets `retention`; the field says what it means and its default.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets `backoff_initial` and `backoff_max`; the fields say what they mean.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Being written; not acknowledged yet.
    Storing,
    /// Stored, waiting for its turn.
    Queued,
    /// Sent to the broker.
    InFlight,
    /// Its reply is stored.
    Done {
        /// When, in milliseconds since the Unix epoch.
        done_ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Request {
    service: Bytes,
    state: State,
}

#[derive(Debug, Default, Clone)]
struct Service {
    queue: VecDeque<Uuid>,
    in_flight: usize,
    failures: u32,
    retry_at_ms: u64,
}

/// Why `titanic.request` refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not `[service, body...]` with a service name.
    Malformed,
    /// `max_stored` requests and replies are stored.
    Full,
}

impl Refused {
    /// The reply frames: 500 with a reason ("The server cannot complete the request").
    pub fn reply(&self) -> Vec<Bytes> {
        vec![Bytes::from_static(match self {
            Self::Malformed => b"500 malformed request: expected service and body frames",
            Self::Full => b"500 store full",
        })]
    }
}

/// The state of a Titanic server; see the module docs.
#[derive(Debug, Clone)]
pub struct Core {
    config: CoreConfig,
    requests: HashMap<Uuid, Request>,
    services: BTreeMap<Bytes, Service>,
    /// Answered requests by the time of their reply, for retention.
    done: BTreeSet<(u64, Uuid)>,
    /// The service dispatched from last, so that services take turns.
    cursor: Option<Bytes>,
}

impl Core {
    /// An empty server.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            requests: HashMap::new(),
            services: BTreeMap::new(),
            done: BTreeSet::new(),
            cursor: None,
        }
    }

    /// The state after a restart, from every entry of the store: pending requests queued
    /// oldest first, replies kept.
    pub fn restore(config: CoreConfig, entries: Vec<(Uuid, Entry)>) -> Self {
        let mut core = Self::new(config);
        let mut pending = Vec::new();
        for (uuid, entry) in entries {
            match entry {
                Entry::Pending {
                    stored_ms, service, ..
                } => pending.push((stored_ms, uuid, service)),
                Entry::Done { done_ms, .. } => {
                    core.requests.insert(
                        uuid,
                        Request {
                            service: Bytes::new(),
                            state: State::Done { done_ms },
                        },
                    );
                    core.done.insert((done_ms, uuid));
                }
            }
        }
        pending.sort();
        for (_, uuid, service) in pending {
            core.services
                .entry(service.clone())
                .or_default()
                .queue
                .push_back(uuid);
            core.requests.insert(
                uuid,
                Request {
                    service,
                    state: State::Queued,
                },
            );
        }
        core
    }

    /// Requests and replies held (stored, or being stored).
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Where `uuid` is, if it is known.
    pub fn state(&self, uuid: &Uuid) -> Option<&State> {
        self.requests.get(uuid).map(|r| &r.state)
    }

    /// Requests waiting for their turn, over all services.
    pub fn queued(&self) -> usize {
        self.services.values().map(|s| s.queue.len()).sum()
    }

    /// Requests with the broker, over all services.
    pub fn in_flight(&self) -> usize {
        self.services.values().map(|s| s.in_flight).sum()
    }

    /// `titanic.request` with `frames` (`[service, body...]`) at `now_ms`, to be known as
    /// `uuid`: the write to make durable before [`Core::accept`], or why it is refused.
    pub fn submit(&mut self, now_ms: u64, uuid: Uuid, frames: &[Bytes]) -> Result<Op, Refused> {
        let [service, body @ ..] = frames else {
            return Err(Refused::Malformed);
        };
        // "It a multipart request message with 2 or more frames": a service and a body.
        if service.is_empty() || body.is_empty() {
            return Err(Refused::Malformed);
        }
        if self.requests.len() >= self.config.max_stored {
            return Err(Refused::Full);
        }
        // The index keeps its own copy of the name, one per service: a frame may share its
        // buffer with the whole message, body and all.
        let name = match self.services.get_key_value(service) {
            Some((name, _)) => name.clone(),
            None => Bytes::copy_from_slice(service),
        };
        self.requests.insert(
            uuid,
            Request {
                service: name,
                state: State::Storing,
            },
        );
        Ok(Op::Request(
            uuid,
            Entry::Pending {
                stored_ms: now_ms,
                service: service.clone(),
                body: body.to_vec(),
            },
        ))
    }

    /// The request's write is durable: queue it. Answer `[200, uuid]`.
    pub fn accept(&mut self, uuid: Uuid) {
        if let Some(request) = self.requests.get_mut(&uuid) {
            if request.state == State::Storing {
                request.state = State::Queued;
                let service = request.service.clone();
                self.services
                    .entry(service)
                    .or_default()
                    .queue
                    .push_back(uuid);
            }
        }
    }

    /// The request's write failed: forget it. Answer 500.
    pub fn abort(&mut self, uuid: Uuid) {
        if matches!(self.state(&uuid), Some(State::Storing)) {
            self.requests.remove(&uuid);
        }
    }

    /// What `titanic.reply` answers for `uuid`, short of the reply's body: [`Status::Ok`]
    /// means the body is in the store.
    pub fn reply_status(&self, uuid: &Uuid) -> Status {
        match self.state(uuid) {
            None | Some(State::Storing) => Status::Unknown,
            Some(State::Queued | State::InFlight) => Status::Pending,
            Some(State::Done { .. }) => Status::Ok,
        }
    }

    /// `titanic.close`: forgets `uuid` and returns the write that removes it (also for an
    /// unknown UUID: "MUST return 200 OK if the UUID is not known"). A request in flight is
    /// forgotten too; its reply, when it comes, is not stored.
    pub fn close(&mut self, uuid: Uuid) -> Op {
        if let Some(request) = self.requests.remove(&uuid) {
            match request.state {
                State::Queued => {
                    if let Some(service) = self.services.get_mut(&request.service) {
                        service.queue.retain(|u| *u != uuid);
                    }
                    self.tidy(&request.service);
                }
                State::InFlight => {
                    if let Some(service) = self.services.get_mut(&request.service) {
                        service.in_flight -= 1;
                    }
                    self.tidy(&request.service);
                }
                State::Done { done_ms } => {
                    self.done.remove(&(done_ms, uuid));
                }
                State::Storing => {}
            }
        }
        Op::Remove(uuid)
    }

    /// The next request to send to the broker at `now_ms`, if any may go: the oldest of the
    /// next service in turn that is under its in-flight limit and not backing off.
    pub fn next_dispatch(&mut self, now_ms: u64) -> Option<(Uuid, Bytes)> {
        let limit = self.config.in_flight_per_service;
        let ready =
            |s: &Service| !s.queue.is_empty() && s.in_flight < limit && s.retry_at_ms <= now_ms;
        let after = match &self.cursor {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        let name = self
            .services
            .range::<Bytes, _>((after, Bound::Unbounded))
            .chain(self.services.iter())
            .find(|(_, s)| ready(s))
            .map(|(name, _)| name.clone())?;
        let service = self.services.get_mut(&name).expect("found above");
        let uuid = service.queue.pop_front().expect("ready: not empty");
        service.in_flight += 1;
        self.requests
            .get_mut(&uuid)
            .expect("queued requests are known")
            .state = State::InFlight;
        self.cursor = Some(name.clone());
        Some((uuid, name))
    }

    /// When a service that backs off may be tried again, if one with queued requests does.
    pub fn next_retry_ms(&self, now_ms: u64) -> Option<u64> {
        self.services
            .values()
            .filter(|s| !s.queue.is_empty() && s.retry_at_ms > now_ms)
            .map(|s| s.retry_at_ms)
            .min()
    }

    /// The broker answered `uuid` with `body` at `now_ms`: the write that stores the reply,
    /// or `None` if the request was closed meanwhile. Call [`Core::replied`] once it is
    /// durable.
    pub fn answered(&mut self, now_ms: u64, uuid: Uuid, body: Vec<Bytes>) -> Option<Op> {
        match self.state(&uuid) {
            Some(State::InFlight) => Some(Op::Reply(
                uuid,
                Entry::Done {
                    done_ms: now_ms,
                    body,
                },
            )),
            _ => None,
        }
    }

    /// The reply of `uuid`, answered at `done_ms`, is durable: the request is done.
    pub fn replied(&mut self, uuid: Uuid, done_ms: u64) {
        let Some(request) = self.requests.get_mut(&uuid) else {
            return;
        };
        if request.state != State::InFlight {
            return;
        }
        request.state = State::Done { done_ms };
        let service = std::mem::take(&mut request.service);
        self.done.insert((done_ms, uuid));
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight -= 1;
            s.failures = 0;
            s.retry_at_ms = 0;
        }
        self.tidy(&service);
    }

    /// Forgets a service with nothing queued or in flight.
    fn tidy(&mut self, service: &Bytes) {
        if self
            .services
            .get(service)
            .is_some_and(|s| s.queue.is_empty() && s.in_flight == 0)
        {
            self.services.remove(service);
        }
    }

    /// `uuid` got no reply (or its reply could not be stored) at `now_ms`: it goes back to the
    /// front of its service's queue, and the service backs off.
    pub fn failed(&mut self, now_ms: u64, uuid: Uuid) {
        let Some(request) = self.requests.get_mut(&uuid) else {
            return;
        };
        if request.state != State::InFlight {
            return;
        }
        request.state = State::Queued;
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        let s = self
            .services
            .get_mut(&request.service)
            .expect("in flight: known");
        s.in_flight -= 1;
        s.queue.push_front(uuid);
        let delay = initial.saturating_mul(1u32 << s.failures.min(16)).min(max);
        s.failures = s.failures.saturating_add(1);
        s.retry_at_ms = now_ms + delay.as_millis() as u64;
    }

    /// The replies kept past the retention time at `now_ms`: forgotten, with the writes that
    /// remove them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Op> {
        let cutoff = now_ms.saturating_sub(self.config.retention.as_millis() as u64);
        let old: Vec<(u64, Uuid)> = self
            .done
            .iter()
            .take_while(|(done_ms, _)| *done_ms < cutoff)
            .copied()
            .collect();
        old.into_iter().map(|(_, uuid)| self.close(uuid)).collect()
    }
}
