//! The Titanic core against a model, with crashes: any sequence of submits, dispatches,
//! replies, failures, closes, crashes (the core rebuilt from the store) and time steps keeps
//! every acknowledged request answered with its own reply or pending, never lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_titanic::core::{Core, CoreConfig, State};
use majordomo_titanic::store::{Entry, MemoryStore, Store};
use majordomo_titanic::tsp::{Status, Uuid};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Submit(u8),
    /// Submit whose write is made but the process dies before the acknowledgement.
    SubmitThenCrash(u8),
    Dispatch,
    /// Answer the n-th request in flight.
    Answer(usize),
    Fail(usize),
    Close(usize),
    Crash,
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3).prop_map(Step::Submit),
        1 => (0u8..3).prop_map(Step::SubmitThenCrash),
        4 => Just(Step::Dispatch),
        4 => (0usize..8).prop_map(Step::Answer),
        1 => (0usize..8).prop_map(Step::Fail),
        2 => (0usize..16).prop_map(Step::Close),
        1 => Just(Step::Crash),
        2 => (0u16..5000).prop_map(Step::Wait),
    ]
}

fn config() -> CoreConfig {
    CoreConfig::default()
        .max_stored(10)
        .in_flight_per_service(2)
        .backoff(Duration::from_millis(100), Duration::from_millis(800))
        .retention(Duration::from_secs(3600))
}

/// What the worker answers: the body with a mark, so each reply is its request's own.
fn answer_of(body: &[Bytes]) -> Vec<Bytes> {
    let mut out = vec![Bytes::from_static(b"re")];
    out.extend(body.iter().cloned());
    out
}

struct World {
    core: Core,
    store: MemoryStore,
    t0: Instant,
    now: Instant,
    in_flight: Vec<(Uuid, Bytes)>,
    /// Acknowledged and not closed: the body each was submitted with.
    acked: BTreeMap<Uuid, Vec<Bytes>>,
    next: u64,
}

impl World {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            core: Core::new(config(), t0, 1_000),
            store: MemoryStore::default(),
            t0,
            now: t0,
            in_flight: Vec::new(),
            acked: BTreeMap::new(),
            next: 0,
        }
    }

    fn uuid(&mut self) -> Uuid {
        self.next += 1;
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&self.next.to_be_bytes());
        Uuid(bytes)
    }

    fn submit(&mut self, service: u8, crash: bool) {
        let uuid = self.uuid();
        let body = vec![Bytes::from(format!("body {}", self.next))];
        let mut frames = vec![Bytes::from(format!("svc{service}"))];
        frames.extend(body.iter().cloned());
        match self.core.submit(self.now, uuid, &frames) {
            Ok(op) => {
                self.store.commit(&[op]).unwrap();
                if crash {
                    self.crash();
                } else {
                    self.core.accept(uuid);
                    self.acked.insert(uuid, body);
                }
            }
            Err(_) => assert!(self.core.len() >= 10, "refused below the bound"),
        }
    }

    /// The wall clock, in milliseconds, at `now`.
    fn unix_ms(&self) -> u64 {
        1_000 + (self.now - self.t0).as_millis() as u64
    }

    fn crash(&mut self) {
        self.in_flight.clear();
        self.core = Core::restore(
            config(),
            self.now,
            self.unix_ms(),
            self.store.load().unwrap(),
        );
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Submit(s) => self.submit(s, false),
            Step::SubmitThenCrash(s) => self.submit(s, true),
            Step::Dispatch => {
                while let Some(sent) = self.core.next_dispatch(self.now) {
                    // A body the core kept in memory is the stored one.
                    if let Some(body) = &sent.body {
                        let Some(Entry::Pending { body: stored, .. }) =
                            self.store.get(&sent.uuid).unwrap()
                        else {
                            panic!("{}: dispatched, not pending in the store", sent.uuid);
                        };
                        assert_eq!(body, &stored);
                    }
                    self.in_flight.push((sent.uuid, sent.service));
                }
            }
            Step::Answer(n) if n < self.in_flight.len() => {
                let (uuid, _) = self.in_flight.remove(n);
                let Some(Entry::Pending { body, .. }) = self.store.get(&uuid).unwrap() else {
                    // Closed while in flight.
                    assert!(self.core.answered(self.now, uuid, vec![]).is_none());
                    return;
                };
                if let Some(op) = self.core.answered(self.now, uuid, answer_of(&body)) {
                    self.store.commit(&[op]).unwrap();
                    assert!(self.core.replied(self.now, uuid, answer_of(&body)));
                    assert_eq!(
                        self.core.reply_body(&uuid),
                        Some(&answer_of(&body)[..]),
                        "kept in memory"
                    );
                }
            }
            Step::Fail(n) if n < self.in_flight.len() => {
                let (uuid, _) = self.in_flight.remove(n);
                self.core.failed(self.now, uuid);
            }
            Step::Close(n) => {
                let Some(&uuid) = self.acked.keys().nth(n) else {
                    return;
                };
                let op = self.core.close(uuid);
                self.store.commit(&[op]).unwrap();
                self.acked.remove(&uuid);
                assert_eq!(self.core.reply_status(&uuid), Status::Unknown);
            }
            Step::Crash => self.crash(),
            Step::Wait(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                for op in self.core.handle_timeout(self.now) {
                    self.store.commit(&[op]).unwrap();
                }
            }
            Step::Answer(_) | Step::Fail(_) => {}
        }
    }

    fn check(&self) {
        for (uuid, body) in &self.acked {
            let stored = self.store.get(uuid).unwrap();
            match (self.core.state(uuid), stored) {
                (Some(State::Queued | State::InFlight), Some(Entry::Pending { body: b, .. })) => {
                    assert_eq!(&b, body);
                    assert_eq!(self.core.reply_status(uuid), Status::Pending);
                }
                (Some(State::Done { .. }), Some(Entry::Done { body: reply, .. })) => {
                    assert_eq!(reply, answer_of(body), "another request's reply");
                    assert_eq!(self.core.reply_status(uuid), Status::Ok);
                }
                (state, stored) => panic!("{uuid}: core {state:?}, store {stored:?}"),
            }
        }
        // Nothing is held that the store does not have, nor the other way round.
        assert_eq!(self.core.len(), self.store.load().unwrap().len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn acknowledged_requests_are_answered_with_their_own_reply_or_pending(
        steps in proptest::collection::vec(step(), 1..120)
    ) {
        let mut world = World::new();
        for step in steps {
            world.step(step);
            world.check();
        }
        // Then everything is served: each acknowledged request gets its own reply.
        for _ in 0..200 {
            world.now += Duration::from_secs(1);
            world.step(Step::Dispatch);
            while !world.in_flight.is_empty() {
                world.step(Step::Answer(0));
            }
            world.check();
        }
        for uuid in world.acked.keys() {
            prop_assert_eq!(world.core.reply_status(uuid), Status::Ok);
        }
    }
}

#[test]
fn a_service_that_fails_backs_off_without_holding_up_the_others() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut core = Core::new(config(), t0, 0);
    let store = MemoryStore::default();
    let body = |s: &str| vec![Bytes::from(s.to_owned()), Bytes::from_static(b"x")];
    for (i, service) in ["down", "up"].iter().enumerate() {
        let uuid = Uuid([i as u8; 16]);
        store
            .commit(&[core.submit(t0, uuid, &body(service)).unwrap()])
            .unwrap();
        core.accept(uuid);
    }
    let down = core.next_dispatch(t0).unwrap().uuid;
    let up = core.next_dispatch(t0).unwrap().uuid;
    assert_eq!((down, up), (Uuid([0; 16]), Uuid([1; 16])));
    core.failed(t0, down);
    // Backing off: not before 100 ms.
    assert_eq!(core.next_dispatch(at(50)), None);
    assert_eq!(core.poll_timeout(), Some(at(100)));
    let again = core.next_dispatch(at(100)).unwrap();
    assert_eq!(
        (again.uuid, again.service),
        (down, Bytes::from_static(b"down"))
    );
    core.failed(at(100), down);
    assert_eq!(core.poll_timeout(), Some(at(300)), "the wait doubles");
    // The other service is served meanwhile.
    let op = core
        .answered(at(120), up, vec![Bytes::from_static(b"ok")])
        .unwrap();
    store.commit(&[op]).unwrap();
    core.replied(at(120), up, vec![Bytes::from_static(b"ok")]);
    assert_eq!(core.reply_status(&up), Status::Ok);
}

#[test]
fn malformed_and_excess_submits_are_refused_and_old_replies_expire() {
    use majordomo_titanic::core::Refused;
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut core = Core::new(
        config().max_stored(1).retention(Duration::from_secs(1)),
        t0,
        0,
    );
    let uuid = Uuid([9; 16]);
    assert_eq!(
        core.submit(t0, uuid, &[Bytes::from_static(b"svc")]),
        Err(Refused::Malformed)
    );
    assert_eq!(core.submit(t0, uuid, &[]), Err(Refused::Malformed));
    let frames = [Bytes::from_static(b"svc"), Bytes::from_static(b"b")];
    core.submit(t0, uuid, &frames).unwrap();
    core.accept(uuid);
    assert_eq!(core.submit(t0, Uuid([8; 16]), &frames), Err(Refused::Full));
    let sent = core.next_dispatch(t0).unwrap().uuid;
    core.answered(at(10), sent, vec![]).unwrap();
    core.replied(at(10), sent, vec![]);
    assert!(core.expire(at(500)).is_empty());
    assert_eq!(core.expire(at(1_011)).len(), 1);
    assert_eq!(core.reply_status(&uuid), Status::Unknown);
    assert!(core.is_empty());
}
