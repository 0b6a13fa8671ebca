//! The Freelance client (10/FLP) under simulated time: servers dying, freezing, coming back and
//! replying late, with no socket.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::freelance::{
    FreelanceConfig, FreelanceCore, FreelanceError, FreelanceEvent, PING, PONG,
};

const A: &str = "tcp://a:5555";
const B: &str = "tcp://b:5555";
const C: &str = "tcp://c:5555";

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

struct Sim {
    core: FreelanceCore,
    now: Instant,
}

impl Sim {
    fn new(config: FreelanceConfig, servers: &[&str]) -> Self {
        let now = Instant::now();
        Self {
            core: FreelanceCore::new(now, config, servers.iter().map(|s| b(s))),
            now,
        }
    }

    /// What the core sends now, as (server, first frame, all frames).
    fn sent(&mut self) -> Vec<(String, Vec<Bytes>)> {
        std::iter::from_fn(|| self.core.poll_transmit())
            .map(|(to, frames)| (String::from_utf8_lossy(&to).into_owned(), frames))
            .collect()
    }

    /// Requests sent now (pings left out): (server, control frame).
    fn requests(&mut self) -> Vec<(String, String)> {
        self.sent()
            .into_iter()
            .filter(|(_, f)| f[0][..] != *PING)
            .map(|(to, f)| (to, String::from_utf8_lossy(&f[0]).into_owned()))
            .collect()
    }

    fn pong(&mut self, server: &str) {
        let pong = Bytes::from_static(PONG);
        self.core
            .handle_message(self.now, server.as_bytes(), vec![pong]);
    }

    fn reply(&mut self, server: &str, control: &str, body: &str) {
        self.core
            .handle_message(self.now, server.as_bytes(), vec![b(control), b(body)]);
    }

    fn events(&mut self) -> Vec<FreelanceEvent> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    /// Steps time to each deadline up to `by` later; servers in `alive` answer every ping.
    fn advance(&mut self, by: Duration, alive: &[&str]) -> Vec<(String, String)> {
        let until = self.now + by;
        let mut requests = Vec::new();
        for _ in 0..10_000 {
            for (to, frames) in self.sent() {
                if frames[0][..] == *PING {
                    if alive.contains(&to.as_str()) {
                        self.core
                            .handle_message(self.now, to.as_bytes(), vec![b("PONG")]);
                    }
                } else {
                    requests.push((to, String::from_utf8_lossy(&frames[0]).into_owned()));
                }
            }
            let next = self.core.poll_timeout();
            if next > until {
                break;
            }
            self.now = next.max(self.now);
            self.core.handle_timeout(self.now);
        }
        self.now = until;
        requests
    }
}

fn done(events: &[FreelanceEvent]) -> Vec<(u64, Result<Vec<Bytes>, FreelanceError>)> {
    events
        .iter()
        .map(|FreelanceEvent::Done { id, result }| (*id, result.clone()))
        .collect()
}

#[test]
fn every_server_is_pinged_at_once_and_then_each_interval_on_one_timer() {
    let config = FreelanceConfig::default();
    let mut s = Sim::new(config, &[A, B]);
    let pings = s.sent();
    assert_eq!(pings.len(), 2);
    assert!(pings.iter().all(|(_, f)| f == &[b("PING")]));
    assert_eq!(s.core.poll_timeout(), s.now + config.ping_interval);
    s.now += config.ping_interval;
    s.core.handle_timeout(s.now);
    assert_eq!(s.sent().len(), 2, "pinged again, once each");
    assert_eq!(s.sent().len(), 0);
}

#[test]
fn a_request_waits_for_a_live_server_and_goes_to_the_first_one_heard() {
    let mut s = Sim::new(FreelanceConfig::default(), &[A, B]);
    s.sent();
    let id = s.core.request(s.now, vec![b("hello")]);
    assert_eq!(s.requests(), [], "no server is known alive yet");
    s.now += Duration::from_millis(10);
    s.pong(B);
    assert_eq!(s.requests(), [(B.into(), id.to_string())]);
    s.reply(B, &id.to_string(), "world");
    assert_eq!(done(&s.events()), [(id, Ok(vec![b("world")]))]);
    assert_eq!(s.core.in_flight(), 0);
}

#[test]
fn a_silent_server_loses_the_request_after_the_attempt_timeout_whatever_its_ttl() {
    // The Guide's flcliapi: a TTL over the request timeout made every request fail while the
    // first server was dead and not yet expired. Here the attempt moves on after 1 s.
    let config = FreelanceConfig::default()
        .server_ttl(Duration::from_secs(6))
        .timeout(Duration::from_secs(3));
    let mut s = Sim::new(config, &[A, B]);
    s.sent();
    s.pong(A);
    s.pong(B);
    let id = s.core.request(s.now, vec![b("x")]);
    assert_eq!(s.requests(), [(A.into(), id.to_string())]);
    // A is frozen: it answers nothing, not even pings, but its TTL has not passed.
    let moved = s.advance(config.attempt_timeout, &[B]);
    assert_eq!(moved, [(B.into(), id.to_string())]);
    s.reply(B, &id.to_string(), "from b");
    // A wakes and answers the same request late: dropped, counted.
    s.reply(A, &id.to_string(), "from a");
    assert_eq!(done(&s.events()), [(id, Ok(vec![b("from b")]))]);
    let stats = s.core.stats(s.now);
    assert_eq!((stats.stale, stats.failovers, stats.attempts), (1, 1, 2));
}

#[test]
fn a_server_declared_dead_hands_its_requests_on_at_once() {
    let config = FreelanceConfig::default()
        .attempt_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let mut s = Sim::new(config, &[A, B]);
    s.sent();
    s.pong(A);
    s.now += Duration::from_millis(500);
    s.pong(B);
    let id = s.core.request(s.now, vec![b("x")]);
    assert_eq!(s.requests(), [(A.into(), id.to_string())]);
    // A stops answering pings; B answers. A's TTL runs out 3 s after its PONG, before the
    // attempt's 3 s from the request: the request moves then.
    let requests = s.advance(Duration::from_millis(2600), &[B]);
    assert_eq!(requests, [(B.into(), id.to_string())]);
    assert_eq!(s.core.stats(s.now).alive, 1);
}

#[test]
fn with_every_server_dead_a_request_fails_cleanly_at_its_timeout() {
    let config = FreelanceConfig::default();
    let mut s = Sim::new(config, &[A, B, C]);
    let id = s.core.request(s.now, vec![b("x")]);
    // Not before its timeout...
    let requests = s.advance(config.timeout - Duration::from_millis(1), &[]);
    assert_eq!(requests, []);
    assert!(s.events().is_empty());
    // ...and at it.
    s.advance(Duration::from_millis(1), &[]);
    let events = s.events();
    assert!(matches!(
        done(&events)[..],
        [(got, Err(FreelanceError::NoReply { attempts: 0, alive: 0, .. }))] if got == id
    ));
    assert_eq!(s.core.stats(s.now).failed, 1);
}

#[test]
fn a_server_back_from_the_dead_is_used_again() {
    let config = FreelanceConfig::default();
    let mut s = Sim::new(config, &[A]);
    s.sent();
    s.pong(A);
    s.advance(Duration::from_secs(5), &[]);
    assert_eq!(s.core.stats(s.now).alive, 0, "A expired");
    s.core.handle_server_lost(s.now, A.as_bytes());
    // Restarted: it answers the next ping.
    s.advance(Duration::from_secs(1), &[A]);
    assert_eq!(s.core.stats(s.now).alive, 1);
    let id = s.core.request(s.now, vec![b("again")]);
    assert_eq!(s.requests(), [(A.into(), id.to_string())]);
}

#[test]
fn many_requests_in_flight_are_matched_by_control_frame_in_any_order() {
    let mut s = Sim::new(FreelanceConfig::default(), &[A, B]);
    s.sent();
    s.pong(A);
    let ids: Vec<u64> = (0..5)
        .map(|i| s.core.request(s.now, vec![b(&format!("req {i}"))]))
        .collect();
    assert_eq!(s.requests().len(), 5);
    for &id in ids.iter().rev() {
        s.reply(A, &id.to_string(), &format!("rep {id}"));
    }
    let mut got = done(&s.events());
    got.sort_by_key(|(id, _)| *id);
    let want: Vec<_> = ids
        .iter()
        .map(|&id| (id, Ok(vec![b(&format!("rep {id}"))])))
        .collect();
    assert_eq!(got, want);
    // A reply naming nothing in flight, a control frame that is not a number, and a message
    // that is neither a PONG nor a reply: dropped and counted.
    s.reply(A, "999", "nobody asked");
    s.reply(A, "PONG", "x");
    s.core.handle_message(s.now, A.as_bytes(), vec![b("hi")]);
    s.core
        .handle_message(s.now, b"tcp://unknown:1", vec![b("PONG")]);
    let stats = s.core.stats(s.now);
    assert_eq!((stats.replies, stats.stale, stats.malformed), (5, 2, 2));
    assert!(s.events().is_empty());
}

#[test]
fn a_cancelled_request_is_never_delivered_and_an_empty_one_is_refused() {
    let mut s = Sim::new(FreelanceConfig::default(), &[A]);
    s.sent();
    s.pong(A);
    let id = s.core.request(s.now, vec![b("x")]);
    s.core.cancel(id);
    s.reply(A, &id.to_string(), "late");
    assert!(s.events().is_empty());
    assert_eq!(s.core.stats(s.now).stale, 1);
    let empty = s.core.request(s.now, vec![]);
    assert_eq!(
        done(&s.events()),
        [(empty, Err(FreelanceError::EmptyRequest))]
    );
}

#[test]
fn a_pong_is_never_taken_for_a_reply() {
    // flcliapi compared atoi("PONG") == 0 with sequence 0; here a PONG is one frame and a
    // reply at least two, and ids start at 1.
    let mut s = Sim::new(FreelanceConfig::default(), &[A]);
    s.sent();
    s.pong(A);
    let id = s.core.request(s.now, vec![b("x")]);
    assert!(id > 0);
    s.pong(A);
    assert!(s.events().is_empty());
    assert_eq!(s.core.in_flight(), 1);
}

#[test]
fn a_server_connected_again_is_pinged_at_once() {
    let config = FreelanceConfig::default();
    let mut s = Sim::new(config, &[A, B]);
    s.sent();
    s.now += config.ping_interval / 4;
    s.core.handle_server_connected(s.now, B.as_bytes());
    assert_eq!(s.sent(), [(B.into(), vec![b("PING")])]);
    // And then at its interval from then, A at its own.
    assert_eq!(
        s.core.poll_timeout(),
        s.now - config.ping_interval / 4 + config.ping_interval
    );
}

#[test]
fn a_frozen_server_costs_one_attempt_timeout_not_one_per_request() {
    let config = FreelanceConfig::default().server_ttl(Duration::from_secs(6));
    let mut s = Sim::new(config, &[A, B]);
    s.sent();
    s.pong(A);
    s.pong(B);
    let first = s.core.request(s.now, vec![b("1")]);
    assert_eq!(s.requests(), [(A.into(), first.to_string())]);
    // A freezes (alive for its TTL still); the request moves to B after one attempt timeout.
    let moved = s.advance(config.attempt_timeout, &[B]);
    assert_eq!(moved, [(B.into(), first.to_string())]);
    s.reply(B, &first.to_string(), "1");
    // The next requests go straight to B while A is suspect...
    for i in 2..5 {
        let id = s.core.request(s.now, vec![b(&i.to_string())]);
        assert_eq!(s.requests(), [(B.into(), id.to_string())]);
        s.reply(B, &id.to_string(), "r");
    }
    // ...and back to A, the first given, once A is heard from again.
    s.pong(A);
    let id = s.core.request(s.now, vec![b("5")]);
    assert_eq!(s.requests(), [(A.into(), id.to_string())]);
}
