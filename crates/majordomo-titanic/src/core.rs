//! Titanic's rules with no socket, no store and no clock: which requests are stored, queued,
//! in flight or answered, what each TSP service answers, and the dispatch policy.
//!
//! Time is an input: every call that depends on it takes `now` (an [`Instant`]), and
//! [`Core::poll_timeout`] says when [`Core::handle_timeout`] is due next. The wall clock is read
//! once by the caller, at start ([`Core::new`], [`Core::restore`]), so that what is stored
//! carries dates that survive a restart (a reply's retention counts from when it was stored).
//!
//! The driver writes what the core returns ([`Op`]) to the store and reports back: a request is
//! acknowledged (`200` and its UUID) only after [`Core::accept`], that is once its write is
//! durable; a reply is stored before [`Core::replied`] marks its request done. A request whose
//! body is in memory may be dispatched while its write is being made, so that the service's
//! work overlaps the store's: its reply is written after the request (the driver commits in
//! order), and if the request's write fails ([`Core::abort`]) the request is forgotten and its
//! reply, when it comes, is not stored. After a crash,
//! [`Core::restore`] rebuilds the same state from what the store holds: a request that was in
//! flight is queued again, so a request is executed at least once (workers should be
//! idempotent), and never lost.
//!
//! # Dispatch
//! Per service, up to `in_flight_per_service` requests are with the broker at once, oldest
//! first; services take turns. A service whose request failed (no reply after the client's
//! retries, or no worker at all) is not tried again before its backoff has passed (1 s doubling
//! to 30 s by default, [`Backoff`], reset by a reply); the other services go on meanwhile.
//!
//! # Bodies in memory
//! The body of a pending request, and then its reply's, stays in memory next to its index
//! entry while the bodies held stay under [`CoreConfig::max_body_bytes`]; a dispatch or a
//! `titanic.reply` then needs no read of the store. Past the bound (and for what
//! [`Core::restore`] could not keep) the store has the only copy, and the driver reads it.
//! The bodies of the dispatches under way (read from the store, or kept) have a bound of the
//! same size: a request whose body would pass it waits for its turn until a dispatch ends
//! (one dispatch may always be under way, so that a body larger than the bound still goes).
//! The bodies Titanic holds, at most twice the bound and one body, are thus bounded whatever
//! the store holds.
//!
//! # Space in the store
//! Each entry counts what it costs in the file ([`stored_cost_of`]); `titanic.request`
//! answers `500 store full` when a request would take the store past
//! [`CoreConfig::max_stored_bytes`], as past [`CoreConfig::max_stored`] entries. A reply is
//! always stored, also past the bound: its request was accepted, 9/TSP has no way to refuse a
//! reply, and holding it back would run the request again and again. The store may thus pass
//! the bound by what replies weigh more than their requests; new requests are refused until
//! closes and retention bring it back under.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::Backoff;

use crate::store::{stored_cost, stored_cost_of, Entry, Op};
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
    /// Most bytes of request and reply bodies kept in memory (default 32 MiB), counted with
    /// [`body_cost`]; past it a body is kept in the store only, and read from it when needed.
    /// Zero keeps none. The bodies of the dispatches under way have a bound of the same size
    /// (but for one dispatch, which may always go).
    pub max_body_bytes: usize,
    /// Most bytes the stored requests and replies may take in the store's file (default
    /// 4 GiB), counted with [`stored_cost_of`]; a request that would pass it is answered 500.
    pub max_stored_bytes: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_stored: 1_000_000,
            in_flight_per_service: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_body_bytes: 32 << 20,
            // Room for the default `max_stored` of requests of about a kilobyte (3 KB each
            // in the file), and a bound any server's disk has; 60 requests of 15 MiB fit.
            max_stored_bytes: 4 << 30,
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

    /// Sets `max_body_bytes`; the field says what it means and its default.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets `max_stored_bytes`; the field says what it means and its default.
    pub fn max_stored_bytes(mut self, bytes: u64) -> Self {
        self.max_stored_bytes = bytes;
        self
    }
}

/// What a body kept in memory counts against [`CoreConfig::max_body_bytes`]: its bytes, and the
/// `Vec` and each frame's `Bytes` handle.
pub fn body_cost(body: &[Bytes]) -> usize {
    std::mem::size_of::<Vec<Bytes>>()
        + body
            .iter()
            .map(|f| f.len() + std::mem::size_of::<Bytes>())
            .sum::<usize>()
}

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for its turn (stored, or being written: see [`Core::is_acknowledged`]).
    Queued,
    /// Sent to the broker.
    InFlight,
    /// Its reply is stored.
    Done {
        /// When the reply is forgotten unless closed before ([`CoreConfig::retention`]).
        expires: Instant,
    },
}

#[derive(Debug, Clone)]
struct Request {
    service: Bytes,
    state: State,
    /// The request's body while it is pending, its reply's once done; `None` when the store
    /// has the only copy.
    body: Option<Vec<Bytes>>,
    /// When it was submitted (or restored).
    since: Instant,
    /// What its entry costs in the store ([`stored_cost_of`]).
    cost: u64,
    /// The bytes of its body while it is pending.
    len: usize,
    /// While it is dispatched: its body's bytes.
    reading: usize,
    /// Its write is durable ([`Core::accept`]); until then its UUID is unknown to clients.
    acknowledged: bool,
}

#[derive(Debug, Clone)]
struct Service {
    queue: VecDeque<Uuid>,
    in_flight: usize,
    backoff: Backoff,
    /// Not dispatched from before this, after a failure.
    retry_at: Option<Instant>,
}

/// Why `titanic.request` refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not `[service, body...]` with a service name.
    Malformed,
    /// `max_stored` requests and replies are stored, or it would take the store past
    /// `max_stored_bytes`.
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

/// A request to send to the broker, from [`Core::next_dispatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The request.
    pub uuid: Uuid,
    /// Its service.
    pub service: Bytes,
    /// Its body, or `None` if only the store has it.
    pub body: Option<Vec<Bytes>>,
    /// When it was submitted (or restored, after a restart).
    pub submitted: Instant,
}

/// The wall clock at one instant: turns instants into the dates the store keeps.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    fn ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at).as_millis();
        self.unix_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// The state of a Titanic server; see the module docs.
#[derive(Debug, Clone)]
pub struct Core {
    config: CoreConfig,
    wall: WallClock,
    requests: HashMap<Uuid, Request>,
    services: BTreeMap<Bytes, Service>,
    /// Answered requests by the end of their retention.
    expiry: BTreeSet<(Instant, Uuid)>,
    /// The service dispatched from last, so that services take turns.
    cursor: Option<Bytes>,
    /// What the bodies kept in memory count ([`body_cost`]).
    body_bytes: usize,
    /// The bytes of the bodies of the dispatches under way.
    reading_bytes: usize,
    /// What the entries cost in the store ([`stored_cost_of`]).
    stored_bytes: u64,
}

impl Core {
    /// An empty server at `now`, when the wall clock says `unix_ms` (milliseconds since the
    /// Unix epoch).
    pub fn new(config: CoreConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            config,
            wall: WallClock { at: now, unix_ms },
            requests: HashMap::new(),
            services: BTreeMap::new(),
            expiry: BTreeSet::new(),
            cursor: None,
            body_bytes: 0,
            reading_bytes: 0,
            stored_bytes: 0,
        }
    }

    /// The state after a restart at `now` (`unix_ms` on the wall clock), from every entry of
    /// the store: pending requests queued oldest first, replies kept for what is left of
    /// their retention.
    pub fn restore(
        config: CoreConfig,
        now: Instant,
        unix_ms: u64,
        entries: Vec<(Uuid, Entry)>,
    ) -> Self {
        let mut restoring = Restoring::new(config, now, unix_ms);
        for (uuid, entry) in entries {
            restoring.entry(uuid, entry);
        }
        restoring.finish()
    }

    /// `body`, if it fits under the bound of bodies in memory (and is then counted).
    fn keep(&mut self, body: Vec<Bytes>) -> Option<Vec<Bytes>> {
        let cost = body_cost(&body);
        if self.body_bytes + cost > self.config.max_body_bytes {
            return None;
        }
        self.body_bytes += cost;
        Some(body)
    }

    /// Forgets a body kept in memory.
    fn drop_body(&mut self, body: Option<Vec<Bytes>>) {
        if let Some(body) = body {
            self.body_bytes -= body_cost(&body);
        }
    }

    /// The entry of `service`, made if new.
    fn service(&mut self, service: &Bytes) -> &mut Service {
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        self.services
            .entry(service.clone())
            .or_insert_with(|| Service {
                queue: VecDeque::new(),
                in_flight: 0,
                backoff: Backoff::new(initial, max),
                retry_at: None,
            })
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

    /// Whether `uuid` is known and its request's write is durable ([`Core::accept`]).
    pub fn is_acknowledged(&self, uuid: &Uuid) -> bool {
        self.requests.get(uuid).is_some_and(|r| r.acknowledged)
    }

    /// Requests waiting for their turn, over all services.
    pub fn queued(&self) -> usize {
        self.services.values().map(|s| s.queue.len()).sum()
    }

    /// Requests with the broker, over all services.
    pub fn in_flight(&self) -> usize {
        self.services.values().map(|s| s.in_flight).sum()
    }

    /// What the bodies kept in memory count ([`body_cost`]), at most
    /// [`CoreConfig::max_body_bytes`].
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// The bytes of the bodies of the dispatches under way: at most
    /// [`CoreConfig::max_body_bytes`], or one body past it.
    pub fn reading_bytes(&self) -> usize {
        self.reading_bytes
    }

    /// What the entries cost in the store ([`stored_cost_of`]).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Forgets a request's entry and the bytes it counts.
    fn forget(&mut self, request: Request) {
        self.stored_bytes -= request.cost;
        self.reading_bytes -= request.reading;
        self.drop_body(request.body);
    }

    /// `titanic.request` with `frames` (`[service, body...]`) at `now`, to be known as `uuid`:
    /// the write to make durable before [`Core::accept`], or why it is refused. The request is
    /// queued at once; it is dispatched before it is durable only if its body is kept in
    /// memory (the store has no copy to read yet).
    pub fn submit(&mut self, now: Instant, uuid: Uuid, frames: &[Bytes]) -> Result<Op, Refused> {
        let [service, body @ ..] = frames else {
            return Err(Refused::Malformed);
        };
        // "It a multipart request message with 2 or more frames": a service and a body.
        if service.is_empty() || body.is_empty() {
            return Err(Refused::Malformed);
        }
        let cost = stored_cost_of(Some(service), body);
        if self.requests.len() >= self.config.max_stored
            || self.stored_bytes + cost > self.config.max_stored_bytes
        {
            return Err(Refused::Full);
        }
        // The index keeps its own copy of the name, one per service: a frame may share its
        // buffer with the whole message, body and all.
        let name = match self.services.get_key_value(service) {
            Some((name, _)) => name.clone(),
            None => Bytes::copy_from_slice(service),
        };
        let kept = self.keep(body.to_vec());
        self.stored_bytes += cost;
        self.requests.insert(
            uuid,
            Request {
                service: name.clone(),
                state: State::Queued,
                body: kept,
                since: now,
                cost,
                len: body.iter().map(Bytes::len).sum(),
                reading: 0,
                acknowledged: false,
            },
        );
        self.service(&name).queue.push_back(uuid);
        Ok(Op::Request(
            uuid,
            Entry::Pending {
                stored_ms: self.wall.ms(now),
                service: service.clone(),
                body: body.to_vec(),
            },
        ))
    }

    /// The request's write is durable. Answer `[200, uuid]`.
    pub fn accept(&mut self, uuid: Uuid) {
        if let Some(request) = self.requests.get_mut(&uuid) {
            request.acknowledged = true;
        }
    }

    /// The request's write failed: forget it, also if it is being dispatched (its reply is
    /// then not stored). Answer 500.
    pub fn abort(&mut self, uuid: Uuid) {
        if self.requests.get(&uuid).is_some_and(|r| !r.acknowledged) {
            // Nothing is in the store to remove.
            let _ = self.close(uuid);
        }
    }

    /// What `titanic.reply` answers for `uuid`, short of the reply's body: [`Status::Ok`]
    /// means the body is in the store ([`Core::reply_body`] has it if it is in memory too).
    pub fn reply_status(&self, uuid: &Uuid) -> Status {
        match self.requests.get(uuid) {
            Some(r) if !r.acknowledged => Status::Unknown,
            None => Status::Unknown,
            Some(r) => match r.state {
                State::Queued | State::InFlight => Status::Pending,
                State::Done { .. } => Status::Ok,
            },
        }
    }

    /// The reply of `uuid` if it is done and its body is kept in memory.
    pub fn reply_body(&self, uuid: &Uuid) -> Option<&[Bytes]> {
        let request = self.requests.get(uuid)?;
        match request.state {
            State::Done { .. } => request.body.as_deref(),
            _ => None,
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
                State::Done { expires } => {
                    self.expiry.remove(&(expires, uuid));
                }
            }
            self.forget(request);
        }
        Op::Remove(uuid)
    }

    /// The next request to send to the broker at `now`, if any may go: the oldest of the next
    /// service in turn that is under its in-flight limit, not backing off, and whose body is
    /// in memory or fits under [`CoreConfig::max_body_bytes`] (see the module docs).
    pub fn next_dispatch(&mut self, now: Instant) -> Option<Dispatch> {
        let limit = self.config.in_flight_per_service;
        let (requests, reading) = (&self.requests, self.reading_bytes);
        let max = self.config.max_body_bytes;
        // A request not yet durable goes only with its body in memory: the store has no copy.
        let fits = |uuid: &Uuid| {
            requests.get(uuid).is_none_or(|r| {
                (r.acknowledged || r.body.is_some()) && (reading == 0 || reading + r.len <= max)
            })
        };
        let ready = |s: &Service| {
            s.queue.front().is_some_and(fits)
                && s.in_flight < limit
                && s.retry_at.is_none_or(|at| at <= now)
        };
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
        service.retry_at = None;
        let request = self
            .requests
            .get_mut(&uuid)
            .expect("queued requests are known");
        request.state = State::InFlight;
        request.reading = request.len;
        self.reading_bytes += request.len;
        let (body, submitted) = (request.body.clone(), request.since);
        self.cursor = Some(name.clone());
        Some(Dispatch {
            uuid,
            service: name,
            body,
            submitted,
        })
    }

    /// The broker answered `uuid` with `body` at `now`: the write that stores the reply, or
    /// `None` if the request was closed meanwhile. Call [`Core::replied`] once it is durable.
    pub fn answered(&mut self, now: Instant, uuid: Uuid, body: Vec<Bytes>) -> Option<Op> {
        match self.state(&uuid) {
            Some(State::InFlight) => Some(Op::Reply(
                uuid,
                Entry::Done {
                    done_ms: self.wall.ms(now),
                    body,
                },
            )),
            _ => None,
        }
    }

    /// The reply of `uuid`, `body`, is durable at `now`: the request is done, and kept for
    /// [`CoreConfig::retention`]. Returns whether it was in flight (false if it was closed
    /// meanwhile).
    pub fn replied(&mut self, now: Instant, uuid: Uuid, body: Vec<Bytes>) -> bool {
        let Some(request) = self.requests.get_mut(&uuid) else {
            return false;
        };
        if request.state != State::InFlight {
            return false;
        }
        let expires = now + self.config.retention;
        request.state = State::Done { expires };
        let service = std::mem::take(&mut request.service);
        let old = request.body.take();
        let cost = stored_cost_of(None, &body);
        self.stored_bytes = self.stored_bytes - request.cost + cost;
        request.cost = cost;
        self.reading_bytes -= std::mem::take(&mut request.reading);
        self.drop_body(old);
        let kept = self.keep(body);
        self.requests.get_mut(&uuid).expect("known").body = kept;
        self.expiry.insert((expires, uuid));
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight -= 1;
            s.backoff.reset();
            s.retry_at = None;
        }
        self.tidy(&service);
        true
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

    /// `uuid` got no reply (or its reply could not be stored) at `now`: it goes back to the
    /// front of its service's queue, and the service backs off.
    pub fn failed(&mut self, now: Instant, uuid: Uuid) {
        let Some(request) = self.requests.get_mut(&uuid) else {
            return;
        };
        if request.state != State::InFlight {
            return;
        }
        request.state = State::Queued;
        self.reading_bytes -= std::mem::take(&mut request.reading);
        let s = self
            .services
            .get_mut(&request.service)
            .expect("in flight: known");
        s.in_flight -= 1;
        s.queue.push_front(uuid);
        s.retry_at = Some(now + s.backoff.next_delay());
    }

    /// When [`Core::handle_timeout`] is due: the end of a backoff with requests waiting, or of
    /// a reply's retention; `None` when nothing waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self
            .services
            .values()
            .filter(|s| !s.queue.is_empty())
            .filter_map(|s| s.retry_at)
            .min();
        let expiry = self.expiry.first().map(|(at, _)| *at);
        retry.into_iter().chain(expiry).min()
    }

    /// Time has come to `now`: backoffs that have passed end, and replies past their
    /// retention are forgotten. Returns the writes that remove those replies.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Op> {
        for service in self.services.values_mut() {
            if service.retry_at.is_some_and(|at| at <= now) {
                service.retry_at = None;
            }
        }
        self.expire(now)
    }

    /// The replies whose retention has ended at `now`: forgotten, with the writes that remove
    /// them.
    pub fn expire(&mut self, now: Instant) -> Vec<Op> {
        let old: Vec<Uuid> = self
            .expiry
            .iter()
            .take_while(|(expires, _)| *expires <= now)
            .map(|(_, uuid)| *uuid)
            .collect();
        old.into_iter().map(|uuid| self.close(uuid)).collect()
    }
}

/// A [`Core`] being rebuilt from the store's entries, one at a time, so that the bodies it
/// does not keep are dropped as they come (the store may hold far more than memory does).
#[derive(Debug)]
pub struct Restoring {
    core: Core,
    now: Instant,
    unix_ms: u64,
    pending: Vec<(u64, Uuid)>,
}

impl Restoring {
    /// Starts rebuilding at `now`, when the wall clock says `unix_ms`.
    pub fn new(config: CoreConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            core: Core::new(config, now, unix_ms),
            now,
            unix_ms,
            pending: Vec::new(),
        }
    }

    /// One entry of the store.
    pub fn entry(&mut self, uuid: Uuid, entry: Entry) {
        let (core, now) = (&mut self.core, self.now);
        let cost = stored_cost(&entry);
        core.stored_bytes += cost;
        match entry {
            Entry::Pending {
                stored_ms,
                service,
                body,
            } => {
                let len = body.iter().map(Bytes::len).sum();
                let body = core.keep(body);
                self.pending.push((stored_ms, uuid));
                core.requests.insert(
                    uuid,
                    Request {
                        service,
                        state: State::Queued,
                        body,
                        since: now,
                        cost,
                        len,
                        reading: 0,
                        acknowledged: true,
                    },
                );
            }
            Entry::Done { done_ms, body } => {
                let age = Duration::from_millis(self.unix_ms.saturating_sub(done_ms));
                let expires = now + core.config.retention.saturating_sub(age);
                let body = core.keep(body);
                core.requests.insert(
                    uuid,
                    Request {
                        service: Bytes::new(),
                        state: State::Done { expires },
                        body,
                        since: now,
                        cost,
                        len: 0,
                        reading: 0,
                        acknowledged: true,
                    },
                );
                core.expiry.insert((expires, uuid));
            }
        }
    }

    /// The rebuilt core: pending requests queued oldest first.
    pub fn finish(mut self) -> Core {
        self.pending.sort_unstable();
        let mut core = self.core;
        for (_, uuid) in self.pending {
            let service = core.requests[&uuid].service.clone();
            // One copy of each name, as `submit` keeps.
            let name = match core.services.get_key_value(&service) {
                Some((name, _)) => name.clone(),
                None => Bytes::copy_from_slice(&service),
            };
            core.requests.get_mut(&uuid).expect("restored").service = name.clone();
            core.service(&name).queue.push_back(uuid);
        }
        core
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(service: &'static [u8], body: &'static [u8]) -> Vec<Bytes> {
        vec![Bytes::from_static(service), Bytes::from_static(body)]
    }

    #[test]
    fn bodies_are_kept_in_memory_up_to_the_bound_and_counted_back_down() {
        let t0 = Instant::now();
        let one = body_cost(&[Bytes::from_static(b"0123456789")]);
        let config = CoreConfig::default().max_body_bytes(one * 2);
        let mut core = Core::new(config, t0, 0);
        let uuids: Vec<Uuid> = (0..3u8).map(|i| Uuid([i; 16])).collect();
        for uuid in &uuids {
            core.submit(t0, *uuid, &frames(b"svc", b"0123456789"))
                .unwrap();
            core.accept(*uuid);
        }
        assert_eq!(core.body_bytes(), one * 2, "the third is past the bound");
        let sent: Vec<Dispatch> = std::iter::from_fn(|| core.next_dispatch(t0)).collect();
        assert_eq!(sent.len(), 3);
        assert!(sent[0].body.is_some() && sent[1].body.is_some());
        assert_eq!(sent[2].body, None, "read from the store");
        // A reply replaces its request's body; closing forgets it.
        let reply = vec![Bytes::from_static(b"r")];
        core.answered(t0, uuids[0], reply.clone()).unwrap();
        assert!(core.replied(t0, uuids[0], reply.clone()));
        assert_eq!(core.reply_body(&uuids[0]), Some(&reply[..]));
        assert_eq!(core.body_bytes(), one + body_cost(&reply));
        for uuid in &uuids {
            core.close(*uuid);
        }
        assert_eq!(core.body_bytes(), 0);
    }

    #[test]
    fn a_request_not_yet_durable_goes_only_with_its_body_and_an_abort_forgets_it() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default().max_body_bytes(200), t0, 0);
        let (kept, unkept, failed) = (Uuid([1; 16]), Uuid([2; 16]), Uuid([3; 16]));
        core.submit(t0, kept, &frames(b"a", b"small")).unwrap();
        // Past the memory bound: only the store will have it.
        core.submit(t0, unkept, &frames(b"b", &[0; 200])).unwrap();
        core.submit(t0, failed, &frames(b"c", b"lost")).unwrap();
        for uuid in [kept, unkept, failed] {
            assert_eq!(
                core.reply_status(&uuid),
                Status::Unknown,
                "not acknowledged"
            );
        }
        let sent: Vec<Uuid> = std::iter::from_fn(|| core.next_dispatch(t0))
            .map(|d| d.uuid)
            .collect();
        assert_eq!(
            sent,
            [kept, failed],
            "the one without a body waits for its write"
        );
        // Its write fails while it is in flight: forgotten, and its reply is not written.
        core.abort(failed);
        assert_eq!(core.state(&failed), None);
        assert_eq!(core.answered(t0, failed, vec![]), None);
        assert_eq!((core.in_flight(), core.len()), (1, 2));
        core.accept(kept);
        core.accept(unkept);
        assert_eq!(core.reply_status(&kept), Status::Pending);
        // An abort after the acknowledgement changes nothing.
        core.abort(kept);
        assert_eq!(core.state(&kept), Some(&State::InFlight));
        // Once the body in flight is answered, the large one goes, read from the store.
        assert_eq!(
            core.next_dispatch(t0),
            None,
            "over the bound of bodies in flight"
        );
        core.answered(t0, kept, vec![]).unwrap();
        assert!(core.replied(t0, kept, vec![]));
        let large = core.next_dispatch(t0).unwrap();
        assert_eq!((large.uuid, large.body), (unkept, None));
    }

    #[test]
    fn the_next_deadline_is_the_end_of_a_backoff_or_of_a_retention() {
        let t0 = Instant::now();
        let config = CoreConfig::default()
            .backoff(Duration::from_secs(1), Duration::from_secs(4))
            .retention(Duration::from_secs(60));
        let mut core = Core::new(config, t0, 0);
        assert_eq!(core.poll_timeout(), None);
        let uuid = Uuid([1; 16]);
        core.submit(t0, uuid, &frames(b"svc", b"x")).unwrap();
        core.accept(uuid);
        let mut now = t0;
        for wait in [1, 2, 4, 4] {
            let sent = core.next_dispatch(now).unwrap();
            core.failed(now, sent.uuid);
            let due = now + Duration::from_secs(wait);
            assert_eq!(core.poll_timeout(), Some(due));
            assert_eq!(core.next_dispatch(due - Duration::from_millis(1)), None);
            now = due;
            assert!(core.handle_timeout(now).is_empty());
            assert_eq!(core.poll_timeout(), None, "no deadline in the past");
        }
        core.next_dispatch(now).unwrap();
        core.answered(now, uuid, vec![]).unwrap();
        core.replied(now, uuid, vec![]);
        let expires = now + Duration::from_secs(60);
        assert_eq!(core.poll_timeout(), Some(expires));
        assert_eq!(core.handle_timeout(expires), [Op::Remove(uuid)]);
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn a_restored_reply_keeps_what_is_left_of_its_retention() {
        let t0 = Instant::now();
        let config = CoreConfig::default().retention(Duration::from_secs(100));
        let entries = vec![
            (
                Uuid([1; 16]),
                Entry::Done {
                    done_ms: 1_000_000 - 40_000,
                    body: vec![],
                },
            ),
            (
                Uuid([2; 16]),
                Entry::Done {
                    done_ms: 1_000_000 - 400_000,
                    body: vec![],
                },
            ),
        ];
        let mut core = Core::restore(config, t0, 1_000_000, entries);
        assert_eq!(core.poll_timeout(), Some(t0), "the older one is past it");
        assert_eq!(core.handle_timeout(t0), [Op::Remove(Uuid([2; 16]))]);
        assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn past_max_stored_bytes_a_request_is_refused_and_a_reply_is_stored_and_counted() {
        let t0 = Instant::now();
        let one = stored_cost_of(
            Some(&Bytes::from_static(b"svc")),
            &[Bytes::from(vec![0; 100])],
        );
        let config = CoreConfig::default().max_stored_bytes(one * 2);
        let mut core = Core::new(config, t0, 0);
        let body = Bytes::from(vec![0; 100]);
        let submit = |core: &mut Core, i: u8| {
            core.submit(
                t0,
                Uuid([i; 16]),
                &[Bytes::from_static(b"svc"), body.clone()],
            )
        };
        submit(&mut core, 1).unwrap();
        core.accept(Uuid([1; 16]));
        submit(&mut core, 2).unwrap();
        core.accept(Uuid([2; 16]));
        assert_eq!(core.stored_bytes(), one * 2);
        assert_eq!(submit(&mut core, 3), Err(Refused::Full));
        assert_eq!(
            Refused::Full.reply(),
            [Bytes::from_static(b"500 store full")]
        );
        // A reply larger than its request is stored all the same, and counted.
        let uuid = core.next_dispatch(t0).unwrap().uuid;
        let reply = vec![Bytes::from(vec![1; 10_000])];
        core.answered(t0, uuid, reply.clone()).unwrap();
        assert!(core.replied(t0, uuid, reply.clone()));
        assert_eq!(core.stored_bytes(), one + stored_cost_of(None, &reply));
        assert!(core.stored_bytes() > one * 2);
        assert_eq!(submit(&mut core, 3), Err(Refused::Full));
        // Closing gives its bytes back.
        core.close(uuid);
        assert_eq!(core.stored_bytes(), one);
        submit(&mut core, 3).unwrap();
        assert_eq!(core.stored_bytes(), one * 2);
    }

    #[test]
    fn bodies_being_dispatched_are_bounded_but_one_always_goes() {
        let t0 = Instant::now();
        let len = 1000;
        // No body is kept in memory; bodies read for dispatch: two and a half.
        let config = CoreConfig::default().max_body_bytes(len * 5 / 2);
        let mut core = Core::new(config.max_body_bytes(len * 5 / 2), t0, 0);
        let mut kept = Core::new(config, t0, 0);
        let big = Bytes::from(vec![0; len * 3]);
        kept.submit(t0, Uuid([9; 16]), &[Bytes::from_static(b"a"), big.clone()])
            .unwrap();
        assert_eq!(kept.body_bytes(), 0, "larger than the bound: not kept");
        kept.accept(Uuid([9; 16]));
        let sent = kept.next_dispatch(t0).unwrap();
        assert_eq!(sent.body, None);
        assert_eq!(kept.reading_bytes(), len * 3, "one may always go");
        kept.failed(t0, sent.uuid);
        assert_eq!(kept.reading_bytes(), 0);
        // One body of twice `len` (kept in memory, filling it), then three of `len` for three
        // services: each dispatch counts its body, kept or read from the store.
        let filler = Bytes::from(vec![0; len * 2]);
        core.submit(t0, Uuid([0; 16]), &[Bytes::from_static(b"z"), filler])
            .unwrap();
        core.accept(Uuid([0; 16]));
        let body = Bytes::from(vec![0; len]);
        for (i, service) in [b"a", b"b", b"c"].into_iter().enumerate() {
            let uuid = Uuid([i as u8 + 1; 16]);
            core.submit(t0, uuid, &[Bytes::from_static(service), body.clone()])
                .unwrap();
            core.accept(uuid);
        }
        let read: Vec<Dispatch> = std::iter::from_fn(|| core.next_dispatch(t0)).collect();
        let services: Vec<&[u8]> = read.iter().map(|d| &d.service[..]).collect();
        assert_eq!(services, [b"a", b"b"], "the third waits");
        assert_eq!(core.reading_bytes(), 2 * len);
        assert_eq!(core.queued(), 2);
        let reply = vec![Bytes::from_static(b"r")];
        core.answered(t0, read[0].uuid, reply.clone()).unwrap();
        core.replied(t0, read[0].uuid, reply);
        assert_eq!(core.reading_bytes(), len);
        let third = core.next_dispatch(t0).expect("room again");
        assert_eq!(&third.service[..], b"c");
        core.close(third.uuid);
        core.close(read[1].uuid);
        assert_eq!(core.reading_bytes(), 0);
    }
}
