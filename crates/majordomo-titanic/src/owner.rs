//! The task that owns a Titanic server's state: the [`Core`], the held `titanic.reply`
//! questions, the writes waiting for the store and the dispatches under way.
//!
//! The TSP service handlers and the [`crate::TitanicHandle`] send it [`Command`]s over a
//! bounded channel, each with a oneshot for its answer. It commits one batch of writes at a
//! time, on tokio's blocking pool: every write that arrives while a batch is being committed
//! goes into the next one, so concurrent submits and replies share an fsync (group commit); the
//! commit reports back as [`Committed`], and only then are its requests acknowledged. A batch
//! of removals only (closes, expired replies) is committed without waiting for the disk
//! ([`Store::commit_deferred`]): a close is answered at once, and its removal is durable with
//! the next durable commit, at the latest [`SYNC_WITHIN`] later or when the server stops. (A
//! blocking task rather than a thread of its own: tokio's paused test clock waits for it, and
//! does not jump ahead while a commit is under way.) Dispatches run as tasks of its own
//! [`JoinSet`], each through the [`Dispatch`] seam.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use majordomo_rt::clock;
use majordomo_rt::timer::DeadlineTimer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::{Core, Refused};
use crate::dispatch::{BoxError, Dispatch};
use crate::stats::{Histogram, TitanicStats};
use crate::store::{Entry, Op, Store, StoreError};
use crate::tsp::{self, Status, Uuid};

/// What `titanic.reply` hears from the owner.
#[derive(Debug)]
pub(crate) enum ReplyAnswer {
    /// The answer's frames.
    Frames(Vec<Bytes>),
    /// The reply is stored but not in memory: read it from the store.
    ReadStore,
}

/// How long a removal may stay not durable: a batch of removals only is committed without
/// waiting for the disk, and a durable commit follows within this time if no other does.
pub(crate) const SYNC_WITHIN: Duration = Duration::from_secs(1);

/// What the owner is asked.
#[derive(Debug)]
pub(crate) enum Command {
    /// `titanic.request`: store `frames` as `uuid`, answer once durable.
    Submit {
        uuid: Uuid,
        frames: Vec<Bytes>,
        answer: oneshot::Sender<Vec<Bytes>>,
    },
    /// `titanic.reply` about `uuid`.
    Reply {
        uuid: Uuid,
        answer: oneshot::Sender<ReplyAnswer>,
    },
    /// `titanic.close` of `uuid`, answered at once (the removal is written after).
    Close {
        uuid: Uuid,
        answer: oneshot::Sender<Vec<Bytes>>,
    },
    /// The stats now.
    Stats(oneshot::Sender<TitanicStats>),
    /// The server is stopping: answer every held question 300, and hold no more.
    Release,
}

/// A commit's report on one batch.
#[derive(Debug)]
struct Committed {
    /// Which batch.
    batch: u64,
    /// The writes it carried, or why none is durable.
    result: Result<usize, StoreError>,
}

/// Commits `ops`, batch `batch`, in one transaction, durable when it returns or not.
fn commit<S: Store>(store: &S, batch: u64, ops: &[Op], durable: bool) -> Committed {
    let result = if durable {
        store.commit(ops)
    } else {
        store.commit_deferred(ops)
    };
    Committed {
        batch,
        result: result.map(|()| ops.len()),
    }
}

/// What follows from a write once its batch is committed (or has failed).
#[derive(Debug)]
enum Effect {
    /// A submit: acknowledge it, or forget it and answer 500.
    Accept {
        uuid: Uuid,
        answer: oneshot::Sender<Vec<Bytes>>,
        since: Instant,
    },

    /// A reply: the request is done and its held questions get the body; or it is sent again.
    Reply {
        uuid: Uuid,
        body: Vec<Bytes>,
        since: Instant,
    },
    /// Closed requests and replies past their retention, removed; nobody waits on it.
    Removed(usize),
    /// Nothing to write: makes the removals before it durable.
    Sync,
}

impl Effect {
    /// Whether someone waits for its write to be durable.
    fn durable(&self) -> bool {
        !matches!(self, Self::Removed(_))
    }
}

/// `[200, body...]`.
pub(crate) fn ok_with(body: Vec<Bytes>) -> Vec<Bytes> {
    let mut answer = Vec::with_capacity(body.len() + 1);
    answer.push(Status::Ok.frame());
    answer.extend(body);
    answer
}

/// The `titanic.reply` questions held until their request's reply is stored or `reply_wait`
/// passes.
#[derive(Debug, Default)]
struct Held {
    /// Each question's id, answer and when it was asked.
    by_uuid: HashMap<Uuid, Vec<(u64, oneshot::Sender<ReplyAnswer>, Instant)>>,
    /// When each question is answered 300, in order (every question waits as long).
    deadlines: VecDeque<(Instant, Uuid, u64)>,
    /// Questions held now.
    count: usize,
    next_id: u64,
}

impl Held {
    fn hold(
        &mut self,
        now: Instant,
        wait: Duration,
        uuid: Uuid,
        answer: oneshot::Sender<ReplyAnswer>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.by_uuid
            .entry(uuid)
            .or_default()
            .push((id, answer, now));
        self.deadlines.push_back((now + wait, uuid, id));
        self.count += 1;
    }

    /// Takes every question about `uuid`, with when each was asked.
    fn take(&mut self, uuid: &Uuid) -> Vec<(oneshot::Sender<ReplyAnswer>, Instant)> {
        let taken = self.by_uuid.remove(uuid).unwrap_or_default();
        self.count -= taken.len();
        self.compact();
        taken.into_iter().map(|(_, s, asked)| (s, asked)).collect()
    }

    /// Drops the deadlines of questions answered early once they outnumber the questions held,
    /// so that the deadlines grow with the questions held, not with the questions answered.
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.count + 64 {
            return;
        }
        let by_uuid = &self.by_uuid;
        self.deadlines.retain(|(_, uuid, id)| {
            by_uuid
                .get(uuid)
                .is_some_and(|held| held.iter().any(|(i, ..)| i == id))
        });
    }

    /// Forgets questions whose asker has gone (its connection stopped); returns how many are
    /// held after that.
    fn sweep(&mut self) -> usize {
        let mut gone = 0;
        self.by_uuid.retain(|_, senders| {
            let before = senders.len();
            senders.retain(|(_, s, _)| !s.is_closed());
            gone += before - senders.len();
            !senders.is_empty()
        });
        self.count -= gone;
        self.compact();
        self.count
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, ..)| *at)
    }

    /// The questions whose wait has ended at `now`, with when each was asked.
    fn expired(&mut self, now: Instant) -> Vec<(oneshot::Sender<ReplyAnswer>, Instant)> {
        let mut out = Vec::new();
        while let Some(&(at, uuid, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            // Already answered (reply stored, closed) when it is gone.
            let Some(senders) = self.by_uuid.get_mut(&uuid) else {
                continue;
            };
            if let Some(i) = senders.iter().position(|(i, ..)| *i == id) {
                let (_, sender, asked) = senders.swap_remove(i);
                self.count -= 1;
                out.push((sender, asked));
            }
            if senders.is_empty() {
                self.by_uuid.remove(&uuid);
            }
        }
        out
    }

    /// Answers every question held 300 (pending), as Titanic stops.
    fn answer_all_pending(&mut self) {
        for held in self.drain() {
            let _ = held.send(ReplyAnswer::Frames(tsp::status_only(Status::Pending)));
        }
    }

    /// Every question, at shutdown.
    fn drain(&mut self) -> Vec<oneshot::Sender<ReplyAnswer>> {
        self.deadlines.clear();
        self.count = 0;
        self.by_uuid
            .drain()
            .flat_map(|(_, v)| v.into_iter().map(|(_, s, _)| s))
            .collect()
    }
}

/// How a dispatch ended.
enum Outcome {
    /// The service answered.
    Reply(Vec<Bytes>),
    /// The store has no pending entry for it any more (closed meanwhile).
    Gone,
    /// No reply, or the request could not be read.
    Failed(BoxError),
}

/// What the owner needs besides its core.
pub(crate) struct OwnerParts<S> {
    pub core: Core,
    pub store: Arc<S>,
    pub dispatch: Arc<dyn Dispatch>,
    pub commands: mpsc::Receiver<Command>,
    pub reply_wait: Duration,
    pub max_held: usize,
}

/// The owner task's state.
pub(crate) struct Owner<S> {
    core: Core,
    store: Arc<S>,
    dispatch: Arc<dyn Dispatch>,
    commands: mpsc::Receiver<Command>,
    /// The commit under way.
    commit: Option<tokio::task::JoinHandle<Committed>>,
    /// The batch being committed, and what follows from each of its writes.
    committing: Option<(u64, Vec<Effect>)>,
    /// When a durable commit is due, after one that was not ([`SYNC_WITHIN`]).
    sync_at: Option<Instant>,
    /// The writes for the next batch.
    next_ops: Vec<Op>,
    next_effects: Vec<Effect>,
    next_batch: u64,
    jobs: JoinSet<(Uuid, Outcome)>,
    /// Which request each dispatch task serves, and since when.
    job_ids: HashMap<tokio::task::Id, (Uuid, Bytes, Instant)>,
    /// Failed dispatches are logged at most once a second, with how many were not.
    failure_log: FailureLog,
    held: Held,
    reply_wait: Duration,
    max_held: usize,
    releasing: bool,
    stats: TitanicStats,
    submit_latency: Histogram,
    queued_latency: Histogram,
    dispatch_latency: Histogram,
    reply_latency: Histogram,
    close_latency: Histogram,
}

/// A commit's report, also when its task panicked (nothing is durable then).
fn joined_commit(joined: Result<Committed, tokio::task::JoinError>) -> Committed {
    joined.unwrap_or_else(|error| {
        warn!(%error, "store commit task failed");
        Committed {
            batch: u64::MAX,
            result: Err(StoreError::CommitAborted),
        }
    })
}

/// The wall clock, for the dates the store keeps.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// At most one log line a second for failed dispatches, whatever the services: a line says how
/// many failures went unlogged before it.
#[derive(Debug, Default)]
struct FailureLog {
    next_at: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    /// `Some(failures not logged since the last line)` when this one may be logged.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.next_at.is_some_and(|at| now < at) {
            self.suppressed += 1;
            return None;
        }
        self.next_at = Some(now + Duration::from_secs(1));
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A timer for "no deadline": far enough never to fire in a run.
fn never(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

impl<S: Store> Owner<S> {
    pub(crate) fn new(parts: OwnerParts<S>) -> Self {
        Self {
            core: parts.core,
            store: parts.store,
            dispatch: parts.dispatch,
            commands: parts.commands,
            commit: None,
            committing: None,
            sync_at: None,
            next_ops: Vec::new(),
            next_effects: Vec::new(),
            next_batch: 0,
            jobs: JoinSet::new(),
            job_ids: HashMap::new(),
            failure_log: FailureLog::default(),
            held: Held::default(),
            reply_wait: parts.reply_wait,
            max_held: parts.max_held,
            releasing: false,
            stats: TitanicStats::default(),
            submit_latency: Histogram::default(),
            queued_latency: Histogram::default(),
            dispatch_latency: Histogram::default(),
            reply_latency: Histogram::default(),
            close_latency: Histogram::default(),
        }
    }

    /// Serves until `stop` is cancelled; then dispatches under way are dropped (their requests
    /// stay pending in the store, sent again at the next start), the writes waiting are
    /// committed, and the final stats returned.
    pub(crate) async fn run(mut self, stop: CancellationToken) -> TitanicStats {
        let mut now = clock::now();
        // One far deadline for "none", so that the timer is not re-armed every turn.
        let mut far = never(now);
        let mut timer = DeadlineTimer::new(far);
        loop {
            self.dispatch_ready(now);
            self.flush();
            if far <= now {
                // A run as long as "never": a deadline in the past would fire on every turn.
                far = never(now);
            }
            timer.set(self.deadline().unwrap_or(far));
            let commit = &mut self.commit;
            tokio::select! {
                biased;
                // Cancel-safe: a token's future has no effect until it completes.
                () = stop.cancelled() => break,
                // A JoinHandle polled by reference is cancel-safe: the result waits in it.
                // Commits come first: they free what waits on them.
                committed = async { commit.as_mut().expect("guarded").await }, if commit.is_some() => {
                    now = clock::now();
                    self.commit = None;
                    self.on_committed(now, joined_commit(committed));
                }
                // join_next is cancel-safe: a task that ends stays in the set until taken.
                Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    now = clock::now();
                    self.on_joined(now, joined);
                }
                // mpsc's recv is cancel-safe: a message not taken stays queued.
                Some(command) = self.commands.recv() => {
                    now = clock::now();
                    self.on_command(now, command);
                    // What is already waiting is taken in the same turn, so that its writes
                    // share the next batch.
                    for _ in 0..256 {
                        let Ok(command) = self.commands.try_recv() else { break };
                        self.on_command(now, command);
                    }
                }
                // A timer: dropping it unfired loses nothing.
                () = timer.wait() => now = clock::now(),
            }
            // Checked every turn: under steady traffic the timer branch may never win.
            if self.deadline().is_some_and(|at| at <= now) {
                self.on_timeout(now);
            }
        }
        self.stop().await
    }

    /// The earliest of the core's deadline, the held questions' and the next durable
    /// commit's.
    fn deadline(&self) -> Option<Instant> {
        self.core
            .poll_timeout()
            .into_iter()
            .chain(self.held.next_deadline())
            .chain(self.sync_at)
            .min()
    }

    fn on_timeout(&mut self, now: Instant) {
        let removed = self.core.handle_timeout(now);
        if !removed.is_empty() {
            info!(
                replies = removed.len(),
                "replies past their retention forgotten"
            );
            let n = removed.len();
            self.write(removed, Effect::Removed(n));
        }
        if self.sync_at.is_some_and(|at| at <= now) {
            self.sync_at = None;
            self.write(Vec::new(), Effect::Sync);
        }
        for (answer, asked) in self.held.expired(now) {
            self.reply_latency.record(now - asked);
            let _ = answer.send(ReplyAnswer::Frames(tsp::status_only(Status::Pending)));
        }
    }

    /// Queues `ops` for the next batch, with what follows from them.
    fn write(&mut self, ops: Vec<Op>, effect: Effect) {
        self.next_ops.extend(ops);
        self.next_effects.push(effect);
    }

    /// Hands the next batch to the writer if none is being committed.
    fn flush(&mut self) {
        if self.committing.is_some() || self.next_effects.is_empty() {
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let ops = std::mem::take(&mut self.next_ops);
        let effects = std::mem::take(&mut self.next_effects);
        let durable = effects.iter().any(Effect::durable);
        let store = self.store.clone();
        self.commit = Some(tokio::task::spawn_blocking(move || {
            commit(&*store, batch, &ops, durable)
        }));
        self.committing = Some((batch, effects));
    }

    fn on_committed(&mut self, now: Instant, committed: Committed) {
        let Some((batch, effects)) = self.committing.take() else {
            return;
        };
        debug_assert!(committed.batch == batch || committed.batch == u64::MAX);
        let ok = match committed.result {
            Ok(writes) => {
                self.stats.commits += 1;
                self.stats.writes += writes as u64;
                if effects.iter().any(Effect::durable) {
                    // Durable: so is every commit before it.
                    self.sync_at = None;
                } else {
                    self.sync_at.get_or_insert(now + SYNC_WITHIN);
                }
                true
            }
            Err(error) => {
                warn!(%error, effects = effects.len(), "store commit failed");
                false
            }
        };
        for effect in effects {
            self.on_effect(now, effect, ok);
        }
    }

    fn on_effect(&mut self, now: Instant, effect: Effect, ok: bool) {
        match effect {
            Effect::Accept {
                uuid,
                answer,
                since,
            } => {
                let frames = if ok {
                    self.core.accept(uuid);
                    self.stats.accepted += 1;
                    vec![Status::Ok.frame(), uuid.frame()]
                } else {
                    self.core.abort(uuid);
                    self.stats.refused += 1;
                    tsp::status_only(Status::Error)
                };
                self.submit_latency.record(now - since);
                let _ = answer.send(frames);
            }
            Effect::Reply { uuid, body, since } => {
                if !ok {
                    warn!(%uuid, "reply not stored; the request will be sent again");
                    self.stats.failed += 1;
                    self.core.failed(now, uuid);
                    return;
                }
                for (answer, asked) in self.held.take(&uuid) {
                    self.reply_latency.record(now - asked);
                    let _ = answer.send(ReplyAnswer::Frames(ok_with(body.clone())));
                }
                if self.core.replied(now, uuid, body) {
                    self.stats.replied += 1;
                    self.dispatch_latency.record(now - since);
                }
            }
            Effect::Removed(n) => {
                if !ok {
                    warn!(
                        entries = n,
                        "closed or expired entries not removed from the store: they are \
                         removed again after the next start"
                    );
                }
            }
            Effect::Sync => {
                if !ok {
                    warn!("store sync failed: removals may not be durable");
                }
            }
        }
    }

    fn on_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Submit {
                uuid,
                frames,
                answer,
            } => match self.core.submit(now, uuid, &frames) {
                Ok(op) => self.write(
                    vec![op],
                    Effect::Accept {
                        uuid,
                        answer,
                        since: now,
                    },
                ),
                Err(refused) => {
                    if refused == Refused::Full {
                        warn!("store full: request refused with 500");
                    }
                    self.stats.refused += 1;
                    let _ = answer.send(refused.reply());
                }
            },
            Command::Reply { uuid, answer } => self.on_reply(now, uuid, answer),
            Command::Close { uuid, answer } => {
                // Its held questions hear it is gone.
                for (held, asked) in self.held.take(&uuid) {
                    self.reply_latency.record(now - asked);
                    let _ = held.send(ReplyAnswer::Frames(tsp::status_only(Status::Unknown)));
                }
                // Answered at once: a client does nothing after a close that depends on its
                // removal being durable. After a crash before it is, the entry comes back (a
                // reply is kept until its retention ends, a pending request is sent again);
                // a close again removes it.
                let op = self.core.close(uuid);
                self.write(vec![op], Effect::Removed(1));
                self.stats.closed += 1;
                self.close_latency.record(Duration::ZERO);
                let _ = answer.send(tsp::status_only(Status::Ok));
            }
            Command::Stats(answer) => {
                let _ = answer.send(self.stats());
            }
            Command::Release => {
                self.releasing = true;
                self.held.answer_all_pending();
            }
        }
    }

    fn on_reply(&mut self, now: Instant, uuid: Uuid, answer: oneshot::Sender<ReplyAnswer>) {
        let status = self.core.reply_status(&uuid);
        let reply = match status {
            Status::Ok => match self.core.reply_body(&uuid) {
                Some(body) => ReplyAnswer::Frames(ok_with(body.to_vec())),
                None => ReplyAnswer::ReadStore,
            },
            Status::Pending
                if !self.reply_wait.is_zero()
                    && !self.releasing
                    && (self.held.count < self.max_held || self.held.sweep() < self.max_held) =>
            {
                self.held.hold(now, self.reply_wait, uuid, answer);
                return;
            }
            other => ReplyAnswer::Frames(tsp::status_only(other)),
        };
        self.reply_latency.record(Duration::ZERO);
        let _ = answer.send(reply);
    }

    /// Starts every dispatch the core allows now.
    fn dispatch_ready(&mut self, now: Instant) {
        while let Some(next) = self.core.next_dispatch(now) {
            self.stats.dispatched += 1;
            self.queued_latency
                .record(now.saturating_duration_since(next.submitted));
            let (uuid, service) = (next.uuid, next.service);
            let job_service = service.clone();
            let (dispatch, store) = (self.dispatch.clone(), self.store.clone());
            let body = next.body;
            let task = self.jobs.spawn(async move {
                let body = match body {
                    Some(body) => body,
                    None => match store.get(&uuid) {
                        Ok(Some(Entry::Pending { body, .. })) => body,
                        Ok(_) => return (uuid, Outcome::Gone),
                        Err(error) => return (uuid, Outcome::Failed(error.into())),
                    },
                };
                match dispatch.request(service, body).await {
                    Ok(reply) => (uuid, Outcome::Reply(reply)),
                    Err(error) => (uuid, Outcome::Failed(error)),
                }
            });
            self.job_ids.insert(task.id(), (uuid, job_service, now));
        }
    }

    fn on_joined(
        &mut self,
        now: Instant,
        joined: Result<(tokio::task::Id, (Uuid, Outcome)), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match joined {
            Ok((id, (_, outcome))) => (id, outcome),
            Err(error) => (
                error.id(),
                Outcome::Failed(format!("dispatch task ended: {error}").into()),
            ),
        };
        let Some((uuid, service, since)) = self.job_ids.remove(&id) else {
            return;
        };
        match outcome {
            Outcome::Reply(body) => {
                if let Some(op) = self.core.answered(now, uuid, body.clone()) {
                    self.write(vec![op], Effect::Reply { uuid, body, since });
                }
            }
            Outcome::Gone => {
                if let Some(suppressed) = self.failure_log.admit(now) {
                    warn!(%uuid, service = %String::from_utf8_lossy(&service), suppressed,
                        "request pending in memory but not in the store; sent again later");
                }
                self.core.failed(now, uuid);
            }
            Outcome::Failed(error) => {
                if let Some(suppressed) = self.failure_log.admit(now) {
                    warn!(%error, %uuid, service = %String::from_utf8_lossy(&service), suppressed,
                        "request not served; its service backs off");
                }
                self.stats.failed += 1;
                self.core.failed(now, uuid);
            }
        }
    }

    fn stats(&mut self) -> TitanicStats {
        let mut stats = self.stats;
        stats.stored = self.core.len();
        stats.queued = self.core.queued();
        stats.in_flight = self.core.in_flight();
        stats.held = self.held.count;
        stats.body_bytes = self.core.body_bytes();
        stats.reading_bytes = self.core.reading_bytes();
        stats.stored_bytes = self.core.stored_bytes();
        stats.submit = self.submit_latency.summary();
        stats.queue_wait = self.queued_latency.summary();
        stats.dispatch = self.dispatch_latency.summary();
        stats.reply = self.reply_latency.summary();
        stats.close = self.close_latency.summary();
        stats
    }

    /// Drops the dispatches under way, commits what waits, lets the writer end.
    async fn stop(mut self) -> TitanicStats {
        // Requests in flight stay stored as pending: sent again at the next start.
        self.jobs.shutdown().await;
        self.held.answer_all_pending();
        let mut synced = false;
        loop {
            if self.committing.is_none() && self.next_effects.is_empty() {
                // Removals not yet durable are made so, once.
                if synced || self.sync_at.take().is_none() {
                    break;
                }
                synced = true;
                self.write(Vec::new(), Effect::Sync);
            }
            self.flush();
            if let Some(commit) = self.commit.take() {
                let committed = joined_commit(commit.await);
                self.on_committed(clock::now(), committed);
            }
        }
        self.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_deadlines_grow_with_the_questions_held_not_with_those_answered() {
        let (mut held, now) = (Held::default(), Instant::now());
        let wait = Duration::from_secs(60);
        let mut receivers = Vec::new();
        // A long hold, and every question answered early: 10,000 questions in all.
        for _ in 0..10_000 {
            let uuid = Uuid::new_v4();
            let (answer, receiver) = oneshot::channel();
            receivers.push(receiver);
            held.hold(now, wait, uuid, answer);
            assert_eq!(held.take(&uuid).len(), 1);
        }
        assert_eq!(held.count, 0);
        assert!(
            held.deadlines.len() <= 64,
            "{} deadlines kept",
            held.deadlines.len()
        );
        // One still held keeps its deadline and is answered 300 at it.
        let uuid = Uuid::new_v4();
        let (answer, _receiver) = oneshot::channel();
        held.hold(now, wait, uuid, answer);
        for _ in 0..1_000 {
            let other = Uuid::new_v4();
            let (answer, _r) = oneshot::channel();
            held.hold(now, wait, other, answer);
            held.take(&other);
        }
        assert_eq!(held.expired(now + wait).len(), 1);
        assert_eq!(held.count, 0);
    }

    #[test]
    fn failures_are_logged_at_most_once_a_second_with_the_count_left_out() {
        let (mut log, start) = (FailureLog::default(), Instant::now());
        assert_eq!(log.admit(start), Some(0));
        for n in 1..=50 {
            assert_eq!(log.admit(start + Duration::from_millis(n * 10)), None);
        }
        assert_eq!(log.admit(start + Duration::from_secs(1)), Some(50));
        assert_eq!(log.admit(start + Duration::from_millis(1500)), None);
    }
}
