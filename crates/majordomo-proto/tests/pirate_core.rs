//! The Pirate queue state machine under simulated time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::drops::DropReason;
use majordomo_proto::event::Event;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::pirate::{PirateQueue, QueueConfig, QueueStats, QueueTransmit, Side};

const HB: Duration = Duration::from_millis(100);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn f(parts: &[&str]) -> Vec<Bytes> {
    parts.iter().map(|p| b(p)).collect()
}

fn paranoid_config() -> QueueConfig {
    QueueConfig::paranoid().heartbeat(Some(HeartbeatConfig::new(HB, 3)))
}

struct Sim {
    q: PirateQueue,
    now: Instant,
}

impl Sim {
    fn paranoid() -> Self {
        Self::with(paranoid_config())
    }

    fn with(config: QueueConfig) -> Self {
        let now = Instant::now();
        Self {
            q: PirateQueue::new(now, config),
            now,
        }
    }

    fn ready(&mut self, w: &str) {
        self.q
            .handle_backend(self.now, &[b(w), Bytes::from_static(&[1])])
            .unwrap();
    }

    fn heartbeat(&mut self, w: &str) {
        self.q
            .handle_backend(self.now, &[b(w), Bytes::from_static(&[2])])
            .unwrap();
    }

    fn request(&mut self, client: &str, body: &str) {
        self.q
            .handle_frontend(self.now, &f(&[client, "", body]))
            .unwrap();
    }

    fn reply(&mut self, w: &str, client: &str, body: &str) {
        self.q
            .handle_backend(self.now, &f(&[w, client, "", body]))
            .unwrap();
    }

    fn drain(&mut self) -> Vec<QueueTransmit> {
        std::iter::from_fn(|| self.q.poll_transmit()).collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<QueueTransmit> {
        let until = self.now + by;
        let mut out = self.drain();
        for _ in 0..10_000 {
            let next = self.q.poll_timeout();
            if next > until {
                break;
            }
            self.now = next.max(self.now);
            self.q.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = until;
        out
    }
}

fn requests(out: &[QueueTransmit]) -> Vec<(String, String)> {
    out.iter()
        .filter(|t| t.side == Side::Backend && t.frames.len() > 2)
        .map(|t| {
            let body = t.frames.last().unwrap();
            (
                String::from_utf8_lossy(&t.frames[0]).into_owned(),
                String::from_utf8_lossy(body).into_owned(),
            )
        })
        .collect()
}

#[test]
fn request_goes_to_worker_and_reply_back_to_client() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.request("c1", "hello");
    let out = s.drain();
    assert_eq!(
        out[0],
        QueueTransmit {
            side: Side::Backend,
            frames: f(&["w1", "c1", "", "hello"])
        }
    );
    s.reply("w1", "c1", "world");
    assert_eq!(
        s.drain()[0],
        QueueTransmit {
            side: Side::Frontend,
            frames: f(&["c1", "", "world"])
        }
    );
}

#[test]
fn workers_are_used_least_recently_first() {
    let mut s = Sim::paranoid();
    for w in ["w1", "w2", "w3"] {
        s.ready(w);
    }
    let mut order = Vec::new();
    for i in 0..6 {
        s.request("c", &i.to_string());
        let (w, _) = requests(&s.drain()).pop().unwrap();
        s.reply(&w, "c", "ok");
        s.drain();
        order.push(w);
    }
    assert_eq!(order, ["w1", "w2", "w3", "w1", "w2", "w3"]);
}

#[test]
fn a_worker_that_comes_back_is_not_counted_twice() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.ready("w1");
    s.heartbeat("w1");
    assert_eq!((s.q.stats().workers, s.q.stats().idle_workers), (1, 1));
    // Busy, then READY again: it starts over, its request goes back to the queue and to it.
    s.request("c", "job");
    s.drain();
    s.ready("w1");
    assert_eq!(requests(&s.drain()), [("w1".into(), "job".into())]);
    assert_eq!(s.q.stats().workers, 1);
    assert_eq!(s.q.stats().requeued, 1);
}

#[test]
fn silent_worker_is_expired_and_its_request_goes_to_another() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.request("c", "job");
    assert_eq!(requests(&s.drain()), [("w1".into(), "job".into())]);
    s.ready("w2");
    let mut later = Vec::new();
    for _ in 0..10 {
        later.extend(requests(&s.advance(HB / 2)));
        s.heartbeat("w2");
    }
    assert_eq!(later, [("w2".into(), "job".into())]);
    assert_eq!(s.q.stats().expired_workers, 1);
    // A late reply from the expired worker goes nowhere, and is stale rather than an error.
    s.reply("w1", "c", "late");
    assert!(s.drain().iter().all(|t| t.side != Side::Frontend));
    let stats = s.q.stats();
    assert_eq!((stats.stale_replies, stats.protocol_errors), (1, 0));
}

#[test]
fn queue_heartbeats_workers_only_in_paranoid_mode() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    let out = s.advance(HB * 2);
    assert!(out
        .iter()
        .any(|t| t.frames == [b("w1"), Bytes::from_static(&[2])]));

    let mut simple = Sim::with(QueueConfig::simple());
    simple
        .q
        .handle_backend(
            simple.now,
            &[b("r1"), Bytes::new(), Bytes::from_static(&[1])],
        )
        .unwrap();
    assert!(simple.advance(Duration::from_secs(30)).is_empty());
    assert_eq!(
        simple.q.stats().workers,
        1,
        "simple mode never expires workers"
    );
}

#[test]
fn req_workers_get_and_give_an_extra_empty_frame() {
    let mut s = Sim::with(QueueConfig::simple());
    s.q.handle_backend(s.now, &[b("r1"), Bytes::new(), Bytes::from_static(&[1])])
        .unwrap();
    s.request("c", "x");
    assert_eq!(s.drain()[0].frames, f(&["r1", "", "c", "", "x"]));
    s.q.handle_backend(s.now, &f(&["r1", "", "c", "", "y"]))
        .unwrap();
    assert_eq!(s.drain()[0].frames, f(&["c", "", "y"]));
}

#[test]
fn waiting_requests_expire_and_bounds_hold() {
    let mut s = Sim::with(
        QueueConfig::simple()
            .request_expiry(Duration::from_millis(500))
            .max_queued(2),
    );
    s.request("c1", "a");
    s.request("c2", "b");
    s.request("c3", "c");
    assert_eq!(s.q.stats().rejected, 1);
    s.advance(Duration::from_secs(1));
    let stats = s.q.stats();
    assert_eq!((stats.expired, stats.queued), (2, 0));
    // Each drop is an event for the driver's counter.
    let events: Vec<Event> = std::iter::from_fn(|| s.q.poll_event()).collect();
    let dropped = |reason| Event::Dropped { reason };
    assert_eq!(
        events,
        [
            dropped(DropReason::TotalCount),
            dropped(DropReason::NoWorker),
            dropped(DropReason::NoWorker)
        ]
    );
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let mut s = Sim::paranoid();
    assert!(s.q.handle_frontend(s.now, &[]).is_err());
    assert!(s.q.handle_frontend(s.now, &f(&["c"])).is_err());
    assert!(s.q.handle_frontend(s.now, &f(&["c", ""])).is_err());
    assert!(s.q.handle_backend(s.now, &f(&["w"])).is_err());
    assert!(s.q.handle_backend(s.now, &f(&["w", "a", ""])).is_err());
    assert_eq!(s.q.stats().protocol_errors, 5);
}

fn counted_requests(stats: &QueueStats) -> u64 {
    stats.replies
        + stats.lost_replies
        + stats.queued as u64
        + stats.in_flight as u64
        + stats.expired
        + stats.rejected
        + stats.abandoned
}

#[test]
fn a_reply_the_driver_cannot_send_is_lost_not_replied() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    for (client, body) in [("c1", "a"), ("c2", "b")] {
        s.request(client, body);
        s.drain();
        s.reply("w1", client, body);
    }
    let out = s.drain();
    assert_eq!(out.iter().filter(|t| t.side == Side::Frontend).count(), 1);
    assert_eq!(s.q.stats().replies, 2, "counted when handed to the driver");
    // The driver could not send c2's reply (the client is gone).
    s.q.handle_undeliverable(s.now, Side::Frontend, &b("c2"));
    let stats = s.q.stats();
    assert_eq!(
        (
            stats.requests,
            stats.replies,
            stats.lost_replies,
            stats.undeliverable
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(stats.requests, counted_requests(&stats), "{stats:?}");
    assert_eq!(
        (stats.workers, stats.idle_workers),
        (1, 1),
        "the worker stays"
    );
}

#[test]
fn every_request_is_accounted_for_while_in_flight_and_after() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.request("c1", "a");
    s.request("c2", "b");
    let stats = s.q.stats();
    assert_eq!((stats.in_flight, stats.queued), (1, 1));
    assert_eq!(stats.requests, counted_requests(&stats), "{stats:?}");
    // An undeliverable worker: its request goes back and both wait.
    s.drain();
    s.q.handle_undeliverable(s.now, Side::Backend, &b("w1"));
    let stats = s.q.stats();
    assert_eq!(
        (
            stats.workers,
            stats.in_flight,
            stats.queued,
            stats.undeliverable
        ),
        (0, 0, 2, 1)
    );
    assert_eq!(stats.requests, counted_requests(&stats), "{stats:?}");
}

#[test]
fn a_reply_from_a_worker_the_queue_does_not_know_is_stale() {
    // The queue restarted while the worker held a request of the queue before.
    let mut s = Sim::paranoid();
    s.reply("w1", "c1", "from before");
    assert!(s.drain().is_empty(), "dropped");
    let stats = s.q.stats();
    assert_eq!(
        (
            stats.stale_replies,
            stats.protocol_errors,
            stats.replies,
            stats.workers
        ),
        (1, 0, 0, 0)
    );
}

#[test]
fn a_heartbeat_from_an_unknown_worker_takes_it_back_at_once() {
    let mut s = Sim::paranoid();
    s.request("c1", "waiting");
    assert!(s.drain().is_empty(), "no worker yet");
    // A worker of the queue before, whose socket reconnected by itself: it heartbeats, and it
    // would send READY only after its own liveness ran out.
    s.heartbeat("w1");
    assert_eq!(requests(&s.drain()), [("w1".into(), "waiting".into())]);
    let stats = s.q.stats();
    assert_eq!(
        (stats.workers, stats.rejoined_workers, stats.protocol_errors),
        (1, 1, 0)
    );
    s.reply("w1", "c1", "done");
    assert_eq!(s.drain()[0].frames, f(&["c1", "", "done"]));
    // Its READY, when it comes, does not make it a second worker.
    s.ready("w1");
    s.heartbeat("w1");
    let stats = s.q.stats();
    assert_eq!(
        (stats.workers, stats.idle_workers, stats.rejoined_workers),
        (1, 1, 1)
    );
    assert_eq!(stats.requeued, 0, "it held nothing");
}

#[test]
fn a_rejoined_worker_is_heartbeated_and_expired_like_any_other() {
    let mut s = Sim::paranoid();
    s.heartbeat("w1");
    // While it heartbeats, it stays and is heartbeated.
    let mut to_it = Vec::new();
    for _ in 0..10 {
        to_it.extend(s.advance(HB / 2));
        s.heartbeat("w1");
    }
    assert!(to_it
        .iter()
        .all(|t| t.frames == [b("w1"), Bytes::from_static(&[2])]));
    assert!(to_it.len() >= 4, "heartbeated: {to_it:?}");
    assert_eq!(s.q.stats().workers, 1);
    // Silent, it is expired.
    s.advance(HB * 5);
    let stats = s.q.stats();
    assert_eq!((stats.workers, stats.expired_workers), (0, 1));
}

#[test]
fn a_rejoined_req_worker_keeps_its_framing() {
    let mut s = Sim::paranoid();
    s.q.handle_backend(s.now, &[b("r1"), Bytes::new(), Bytes::from_static(&[2])])
        .unwrap();
    s.request("c", "x");
    assert_eq!(s.drain()[0].frames, f(&["r1", "", "c", "", "x"]));
}

#[test]
fn a_simple_queue_ignores_heartbeats_from_unknown_workers() {
    let mut s = Sim::with(QueueConfig::simple());
    s.heartbeat("w1");
    let stats = s.q.stats();
    assert_eq!(
        (stats.workers, stats.rejoined_workers, stats.protocol_errors),
        (0, 0, 0)
    );
}

#[test]
fn a_rejoined_worker_still_busy_with_an_old_request_does_not_hold_a_new_one_forever() {
    let mut s = Sim::paranoid();
    // It rejoins while still working on c0's request from the queue before, and is handed c1's.
    s.heartbeat("w1");
    s.request("c1", "new");
    assert_eq!(requests(&s.drain()), [("w1".into(), "new".into())]);
    // Its next reply answers the old request: stale. It was busy when c1's request came (a
    // `PppWorker` drops it), so the request goes out again, here to the same, now idle, worker.
    s.reply("w1", "c0", "old");
    let out = s.drain();
    assert!(out.iter().all(|t| t.side == Side::Backend), "{out:?}");
    assert_eq!(requests(&out), [("w1".into(), "new".into())]);
    s.reply("w1", "c1", "served");
    assert_eq!(s.drain()[0].frames, f(&["c1", "", "served"]));
    let stats = s.q.stats();
    assert_eq!(
        (
            stats.stale_replies,
            stats.requeued,
            stats.replies,
            stats.protocol_errors
        ),
        (1, 1, 1, 0)
    );
    // Only the first such reply is excused: the worker has caught up since.
    s.reply("w1", "c0", "again");
    assert!(s.drain().is_empty());
    let stats = s.q.stats();
    assert_eq!((stats.stale_replies, stats.protocol_errors), (1, 1));
}

#[test]
fn a_rejoined_idle_worker_s_late_reply_is_stale() {
    let mut s = Sim::paranoid();
    s.heartbeat("w1");
    s.reply("w1", "c0", "old");
    assert!(s.drain().is_empty());
    let stats = s.q.stats();
    assert_eq!(
        (
            stats.stale_replies,
            stats.protocol_errors,
            stats.workers,
            stats.idle_workers
        ),
        (1, 0, 1, 1)
    );
    // A worker that announced READY has no request from before: the same reply is an error.
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.reply("w1", "c0", "old");
    let stats = s.q.stats();
    assert_eq!((stats.stale_replies, stats.protocol_errors), (0, 1));
}

#[test]
fn after_a_queue_restart_a_heartbeating_worker_is_served_at_its_next_heartbeat() {
    let mut s = Sim::paranoid();
    s.ready("w1");
    s.advance(HB * 3);
    // The queue restarts. The worker's socket reconnects by itself and it heartbeats on, at its
    // interval, as it would until its own liveness ran out and it sent READY.
    s.q = PirateQueue::new(s.now, paranoid_config());
    s.request("c1", "after");
    s.advance(HB);
    s.heartbeat("w1");
    assert_eq!(requests(&s.drain()), [("w1".into(), "after".into())]);
    s.reply("w1", "c1", "served");
    assert_eq!(s.drain()[0].frames, f(&["c1", "", "served"]));
    let stats = s.q.stats();
    assert_eq!((stats.workers, stats.rejoined_workers), (1, 1));
}

#[test]
fn requests_held_at_shutdown_are_counted_as_dropped_for_drain() {
    let mut s = Sim::paranoid();
    s.ready("w");
    s.request("c1", "held");
    s.request("c2", "waits");
    s.request("c3", "waits");
    while s.q.poll_event().is_some() {}
    s.q.shutdown();
    let stats = s.q.stats();
    assert_eq!(
        (stats.dropped_at_shutdown, stats.queued, stats.in_flight),
        (3, 0, 0)
    );
    assert_eq!(
        stats.requests,
        stats.replies
            + stats.lost_replies
            + stats.expired
            + stats.rejected
            + stats.abandoned
            + stats.dropped_at_shutdown
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.q.poll_event()).collect();
    assert_eq!(
        events,
        [Event::DroppedMany {
            reason: DropReason::Drain,
            count: 3
        }]
    );
}

#[test]
fn waiting_requests_are_bounded_by_bytes() {
    use majordomo_proto::broker::FRAME_OVERHEAD;
    use majordomo_proto::pirate::QUEUED_REQUEST_OVERHEAD;
    // Each request: a 2-byte client address and a 1,000-byte body in one frame.
    let each = QUEUED_REQUEST_OVERHEAD + 2 + 1000 + FRAME_OVERHEAD;
    let mut s = Sim::with(QueueConfig::simple().max_queued_bytes(3 * each + each / 2));
    let body = "x".repeat(1000);
    for i in 0..5 {
        s.request(&format!("c{i}"), &body);
    }
    let stats = s.q.stats();
    assert_eq!((stats.queued, stats.rejected), (3, 2));
    assert_eq!(stats.queued_bytes, 3 * each);
    let dropped: Vec<Event> = std::iter::from_fn(|| s.q.poll_event()).collect();
    assert_eq!(
        dropped,
        vec![
            Event::Dropped {
                reason: DropReason::TotalBytes
            };
            2
        ]
    );
    // A worker takes one: its bytes are given back, and one more fits.
    s.ready("w");
    assert_eq!(s.q.stats().queued_bytes, 2 * each);
    s.request("c9", &body);
    assert_eq!(s.q.stats().queued, 3);
    // Expired requests give theirs back too.
    s.advance(Duration::from_secs(11));
    assert_eq!((s.q.stats().queued, s.q.stats().queued_bytes), (0, 0));
}
