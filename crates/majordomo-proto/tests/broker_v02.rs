//! The broker with 18/MDP (v0.2) peers, in both dialects and mixed with v0.1 peers, and with
//! clients that tag requests with an extended reply envelope, under
//! simulated time: every frame checked as it would go on the wire.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::broker::{BrokerConfig, BrokerCore, Role, Transmit};
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::Limits;

const HB: Duration = Duration::from_millis(100);

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|x| Bytes::copy_from_slice(x)).collect()
}

struct Sim {
    core: BrokerCore,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        let now = Instant::now();
        let config = BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .limits(limits);
        Self {
            core: BrokerCore::new(now, config),
            now,
        }
    }

    /// A message from `peer`, the frames after its identity.
    fn from(&mut self, peer: &[u8], frames: &[&[u8]]) {
        self.core
            .handle_message(self.now, &Bytes::copy_from_slice(peer), &f(frames))
            .unwrap();
    }

    /// What the broker sent, identity first, with whom it went to.
    fn sent(&mut self) -> Vec<(Role, Vec<Bytes>)> {
        std::iter::from_fn(|| self.core.poll_transmit())
            .map(|Transmit { role, frames }| (role, frames))
            .collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<(Role, Vec<Bytes>)> {
        let until = self.now + by;
        let mut out = self.sent();
        while self.core.poll_timeout() <= until {
            self.now = self.core.poll_timeout().max(self.now);
            self.core.handle_timeout(self.now);
            out.extend(self.sent());
        }
        self.now = until;
        out
    }
}

#[test]
fn rfc18_client_and_worker_stream_partials_then_final() {
    let mut s = Sim::new();
    s.from(b"w", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"MDPC02", &[0x01], b"echo", b"hello"]);
    assert_eq!(
        s.sent(),
        [(
            Role::Worker,
            f(&[b"w", b"MDPW02", &[0x02], b"c", b"", b"hello"])
        )]
    );
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", b"part 1"]);
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", b"part 2"]);
    s.from(b"w", &[b"MDPW02", &[0x04], b"c", b"", b"done"]);
    assert_eq!(
        s.sent(),
        [
            (
                Role::Client,
                f(&[b"c", b"MDPC02", &[0x02], b"echo", b"part 1"])
            ),
            (
                Role::Client,
                f(&[b"c", b"MDPC02", &[0x02], b"echo", b"part 2"])
            ),
            (
                Role::Client,
                f(&[b"c", b"MDPC02", &[0x03], b"echo", b"done"])
            ),
        ]
    );
    let stats = s.core.stats();
    assert_eq!(
        (stats.requests, stats.replies, stats.protocol_errors),
        (1, 1, 0)
    );
    // Heartbeats go to it in its own form.
    let out = s.advance(HB * 2);
    assert!(
        out.contains(&(Role::Worker, f(&[b"w", b"MDPW02", &[0x05]]))),
        "{out:?}"
    );
}

#[test]
fn majortomo_peers_get_their_own_dialect() {
    let mut s = Sim::new();
    s.from(b"w", &[b"", b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"", b"MDPC02", &[0x02], b"echo", b"a", b"b"]);
    assert_eq!(
        s.sent(),
        [(
            Role::Worker,
            f(&[b"w", b"", b"MDPW02", &[0x02], b"c", b"", b"a", b"b"])
        )]
    );
    s.from(b"w", &[b"", b"MDPW02", &[0x03], b"c", b"", b"p"]);
    s.from(b"w", &[b"", b"MDPW02", &[0x04], b"c", b"", b"a", b"b"]);
    // majortomo's client reads [empty, MDPC02, PARTIAL 0x03 | FINAL 0x04, body...].
    assert_eq!(
        s.sent(),
        [
            (Role::Client, f(&[b"c", b"", b"MDPC02", &[0x03], b"p"])),
            (
                Role::Client,
                f(&[b"c", b"", b"MDPC02", &[0x04], b"a", b"b"])
            ),
        ]
    );
    // A second READY: DISCONNECT, in its dialect.
    s.from(b"w", &[b"", b"MDPW02", &[0x01], b"echo"]);
    assert_eq!(
        s.sent(),
        [(Role::Worker, f(&[b"w", b"", b"MDPW02", &[0x06]]))]
    );
    assert_eq!(s.core.stats().workers, 0);
}

#[test]
fn a_v01_client_served_by_a_v02_worker_gets_the_parts_in_one_reply() {
    let mut s = Sim::new();
    s.from(b"w", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"", b"MDPC01", b"echo", b"q"]);
    s.sent();
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", b"1"]);
    assert!(s.sent().is_empty(), "nothing before the FINAL");
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", b"2", b"3"]);
    s.from(b"w", &[b"MDPW02", &[0x04], b"c", b"", b"4"]);
    assert_eq!(
        s.sent(),
        [(
            Role::Client,
            f(&[b"c", b"", b"MDPC01", b"echo", b"1", b"2", b"3", b"4"])
        )]
    );
    // And a v0.2 client served by a v0.1 worker gets its REPLY as a FINAL.
    s.from(b"w1", &[b"", b"MDPW01", &[0x01], b"old"]);
    s.from(b"c2", &[b"MDPC02", &[0x01], b"old", b"x"]);
    assert_eq!(
        s.sent(),
        [(
            Role::Worker,
            f(&[b"w1", b"", b"MDPW01", &[0x02], b"c2", b"", b"x"])
        )]
    );
    s.from(b"w1", &[b"", b"MDPW01", &[0x03], b"c2", b"", b"y"]);
    assert_eq!(
        s.sent(),
        [(Role::Client, f(&[b"c2", b"MDPC02", &[0x03], b"old", b"y"]))]
    );
}

#[test]
fn parts_past_the_size_limit_for_a_v01_client_are_dropped_and_counted() {
    let mut s = Sim::with(Limits::default().max_message_size(100));
    s.from(b"w", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"", b"MDPC01", b"echo", b"q"]);
    s.sent();
    let sixty = [b'x'; 60];
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", &sixty]);
    s.from(b"w", &[b"MDPW02", &[0x03], b"c", b"", &sixty]);
    s.from(b"w", &[b"MDPW02", &[0x04], b"c", b"", b"end"]);
    assert!(s.sent().is_empty(), "no reply past the limit");
    let stats = s.core.stats();
    assert_eq!(
        (stats.abandoned, stats.replies, stats.idle_workers),
        (1, 0, 1)
    );
}

#[test]
fn parts_of_many_empty_frames_for_a_v01_client_are_held_to_the_frame_limit() {
    // 10,000 PARTIALs of 1,000 empty frames: the first passes, the second is past the 1,024
    // frames of an inbound message; the rest are dropped as they come, and an echo on another
    // service is answered throughout.
    let mut s = Sim::new();
    s.from(b"w", &[b"MDPW02", &[0x01], b"flood"]);
    s.from(b"e", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"", b"MDPC01", b"flood", b"q"]);
    s.sent();
    let mut partial: Vec<&[u8]> = vec![b"MDPW02", &[0x03], b"c", b""];
    partial.extend(std::iter::repeat_n(&b""[..], 1000));
    for i in 0..10_000 {
        s.from(b"w", &partial);
        if i % 1000 == 0 {
            s.from(b"c2", &[b"", b"MDPC01", b"echo", b"ping"]);
            let sent = s.sent();
            assert_eq!(sent.len(), 1, "the echo request goes to its worker");
            s.from(b"e", &[b"MDPW02", &[0x04], b"c2", b"", b"ping"]);
            assert_eq!(
                s.sent(),
                [(Role::Client, f(&[b"c2", b"", b"MDPC01", b"echo", b"ping"]))]
            );
        }
    }
    s.from(b"w", &[b"MDPW02", &[0x04], b"c", b"", b"end"]);
    assert!(s.sent().is_empty(), "no reply past the frame limit");
    let stats = s.core.stats();
    assert_eq!(
        (stats.abandoned, stats.replies, stats.idle_workers),
        (1, 10, 2)
    );
    let dropped = std::iter::from_fn(|| s.core.poll_event())
        .filter(|e| matches!(e, majordomo_proto::event::Event::Dropped { .. }))
        .count();
    assert_eq!(dropped, 1, "the abandoned reply is reported as a drop");
}

#[test]
fn a_request_that_streamed_is_not_replayed_when_its_worker_dies() {
    let mut s = Sim::new();
    s.from(b"w1", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"w2", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"MDPC02", &[0x01], b"echo", b"streamed"]);
    s.from(b"d", &[b"MDPC02", &[0x01], b"echo", b"not yet"]);
    let handed: Vec<Bytes> = s
        .sent()
        .into_iter()
        .map(|(_, frames)| frames[0].clone())
        .collect();
    assert_eq!(
        handed,
        [Bytes::from_static(b"w1"), Bytes::from_static(b"w2")]
    );
    s.from(b"w1", &[b"MDPW02", &[0x03], b"c", b"", b"half"]);
    s.sent();
    // Both workers' connections close: w1's request had a PARTIAL out, w2's had none.
    s.core
        .handle_disconnected(s.now, &Bytes::from_static(b"w1"));
    s.core
        .handle_disconnected(s.now, &Bytes::from_static(b"w2"));
    let stats = s.core.stats();
    assert_eq!((stats.abandoned, stats.requeued, stats.queued), (1, 1, 1));
    // A new worker gets only the one that never streamed.
    s.from(b"w3", &[b"MDPW02", &[0x01], b"echo"]);
    assert_eq!(
        s.sent(),
        [(
            Role::Worker,
            f(&[b"w3", b"MDPW02", &[0x02], b"d", b"", b"not yet"])
        )]
    );
}

#[test]
fn mmi_answers_v02_clients_in_their_dialect_and_v02_errors_get_v02_disconnects() {
    let mut s = Sim::new();
    s.from(b"w", &[b"MDPW02", &[0x01], b"echo"]);
    s.from(b"c", &[b"MDPC02", &[0x01], b"mmi.service", b"echo"]);
    s.from(b"m", &[b"", b"MDPC02", &[0x02], b"mmi.service", b"nobody"]);
    assert_eq!(
        s.sent(),
        [
            (
                Role::Client,
                f(&[b"c", b"MDPC02", &[0x03], b"mmi.service", b"200"])
            ),
            (Role::Client, f(&[b"m", b"", b"MDPC02", &[0x04], b"404"])),
        ]
    );
    // A HEARTBEAT before READY, and a PARTIAL with no request in flight.
    s.from(b"x", &[b"MDPW02", &[0x05]]);
    s.from(b"w", &[b"MDPW02", &[0x03], b"nobody", b"", b"p"]);
    assert_eq!(
        s.sent(),
        [
            (Role::Worker, f(&[b"x", b"MDPW02", &[0x06]])),
            (Role::Worker, f(&[b"w", b"MDPW02", &[0x06]])),
        ]
    );
    assert_eq!(s.core.stats().protocol_errors, 2);
    // READY for mmi.*: DISCONNECT (8/MMI), in the worker's dialect.
    s.from(b"y", &[b"", b"MDPW02", &[0x01], b"mmi.x"]);
    assert_eq!(
        s.sent(),
        [(Role::Worker, f(&[b"y", b"", b"MDPW02", &[0x06]]))]
    );
    // A malformed v0.2 message is an error like a v0.1 one.
    let bad = s.core.handle_message(
        s.now,
        &Bytes::from_static(b"z"),
        &f(&[b"MDPC02", &[0x01], b"echo"]),
    );
    assert!(bad.is_err());
}

/// A registered worker that sends a command in another version or dialect than its READY's is
/// a protocol error: counted, told DISCONNECT in its own form, and its request goes to another
/// worker.
#[test]
fn a_worker_switching_version_is_a_protocol_error() {
    use majordomo_proto::event::Event;
    use majordomo_proto::DecodeError;

    // (READY, the worker's DISCONNECT, a command in another version) for each pair.
    type Frames = &'static [&'static [u8]];
    let cases: [(Frames, Frames, Frames); 4] = [
        // v0.1 worker sends a v0.2 PARTIAL.
        (
            &[b"", b"MDPW01", &[0x01], b"echo"],
            &[b"w", b"", b"MDPW01", &[0x05]],
            &[b"MDPW02", &[0x03], b"c", b"", b"part"],
        ),
        // v0.2 (RFC 18) worker sends a v0.1 REPLY.
        (
            &[b"MDPW02", &[0x01], b"echo"],
            &[b"w", b"MDPW02", &[0x06]],
            &[b"", b"MDPW01", &[0x03], b"c", b"", b"done"],
        ),
        // v0.2 majortomo worker sends a v0.1 HEARTBEAT.
        (
            &[b"", b"MDPW02", &[0x01], b"echo"],
            &[b"w", b"", b"MDPW02", &[0x06]],
            &[b"", b"MDPW01", &[0x04]],
        ),
        // RFC 18 worker switches dialect mid-session.
        (
            &[b"MDPW02", &[0x01], b"echo"],
            &[b"w", b"MDPW02", &[0x06]],
            &[b"", b"MDPW02", &[0x05]],
        ),
    ];
    for (ready, disconnect, other) in cases {
        let mut s = Sim::new();
        s.from(b"w", ready);
        s.from(b"w2", ready);
        s.from(b"c", &[b"", b"MDPC01", b"echo", b"job"]);
        let out = s.sent();
        assert_eq!(out.len(), 1, "{out:?}");
        let holder = out[0].1[0].clone();
        let other_worker: &[u8] = if holder.as_ref() == b"w" { b"w2" } else { b"w" };
        let error = s
            .core
            .handle_message(s.now, &holder, &f(other))
            .expect_err("a version switch");
        assert!(
            matches!(error, DecodeError::VersionSwitch { .. }),
            "{error}"
        );
        assert_eq!(error.kind(), "version_switch");
        let out = s.sent();
        let mut expected_disconnect = f(disconnect);
        expected_disconnect[0] = holder.clone();
        assert_eq!(out[0], (Role::Worker, expected_disconnect), "{out:?}");
        // The request it held goes to the other worker.
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].1[0].as_ref(), other_worker);
        let stats = s.core.stats();
        assert_eq!(
            (stats.protocol_errors, stats.workers, stats.requeued),
            (1, 1, 1)
        );
        let events: Vec<Event> = std::iter::from_fn(|| s.core.poll_event()).collect();
        assert_eq!(
            events,
            [Event::ProtocolError {
                kind: "version_switch"
            }]
        );
    }
}

/// The typed v0.1 entry point reads a v0.1 worker command: from a worker registered in v0.2
/// it is a version switch too.
#[test]
fn the_v01_worker_entry_point_refuses_a_v02_worker() {
    let mut s = Sim::new();
    s.from(b"w", &[b"MDPW02", &[0x01], b"echo"]);
    s.core.handle_worker(
        s.now,
        &Bytes::from_static(b"w"),
        majordomo_proto::mdp::WorkerMessage::Heartbeat,
    );
    assert_eq!(s.sent(), [(Role::Worker, f(&[b"w", b"MDPW02", &[0x06]]))]);
    assert_eq!(
        (s.core.stats().protocol_errors, s.core.stats().workers),
        (1, 0)
    );
}

#[test]
fn tagged_requests_on_one_connection_get_their_own_tags_back_in_any_order() {
    let mut s = Sim::new();
    s.from(b"w1", &[b"", b"MDPW01", &[0x01], b"echo"]);
    s.from(b"w2", &[b"", b"MDPW02", &[0x01], b"echo"]);
    // Two requests from one client, each tagged; two hops' worth of route on the second.
    s.from(b"c", &[b"t1", b"", b"MDPC01", b"echo", b"one"]);
    s.from(
        b"c",
        &[b"proxy", b"t2", b"", b"MDPC02", &[0x02], b"echo", b"two"],
    );
    let sent = s.sent();
    // Workers see the client's identity as its address, as ever.
    assert_eq!(
        sent,
        [
            (
                Role::Worker,
                f(&[b"w1", b"", b"MDPW01", &[0x02], b"c", b"", b"one"])
            ),
            (
                Role::Worker,
                f(&[b"w2", b"", b"MDPW02", &[0x02], b"c", b"", b"two"])
            ),
        ]
    );
    // Answered in the other order: each reply after its own route.
    s.from(b"w2", &[b"", b"MDPW02", &[0x03], b"c", b"", b"part"]);
    s.from(b"w2", &[b"", b"MDPW02", &[0x04], b"c", b"", b"done"]);
    s.from(b"w1", &[b"", b"MDPW01", &[0x03], b"c", b"", b"ONE"]);
    assert_eq!(
        s.sent(),
        [
            (
                Role::Client,
                f(&[b"c", b"proxy", b"t2", b"", b"MDPC02", &[0x03], b"part"])
            ),
            (
                Role::Client,
                f(&[b"c", b"proxy", b"t2", b"", b"MDPC02", &[0x04], b"done"])
            ),
            (
                Role::Client,
                f(&[b"c", b"t1", b"", b"MDPC01", b"echo", b"ONE"])
            ),
        ]
    );
    // A client asks first whether its tags come back.
    s.from(b"c", &[b"t3", b"", b"MDPC01", b"mmi.envelope", b""]);
    assert_eq!(
        s.sent(),
        [(
            Role::Client,
            f(&[b"c", b"t3", b"", b"MDPC01", b"mmi.envelope", b"200"])
        )]
    );
}

#[test]
fn a_route_past_its_bounds_or_before_a_worker_command_is_malformed() {
    let mut s = Sim::new();
    let mut nine: Vec<&[u8]> = vec![b"hop"; 9];
    nine.extend([&b""[..], b"MDPC01", b"echo", b"x"]);
    let long = [0u8; 256];
    let bad: [Vec<&[u8]>; 4] = [
        nine,
        vec![&long[..], b"", b"MDPC01", b"echo", b"x"],
        // Only a client's message may carry a route.
        vec![b"t", b"", b"MDPW01", &[0x01], b"echo"],
        // The RFC 18 dialect has no delimiter after which a route could end.
        vec![b"t", b"MDPC02", &[0x01], b"echo", b"x"],
    ];
    for bad in bad {
        assert!(
            s.core
                .handle_message(s.now, &Bytes::from_static(b"c"), &f(&bad))
                .is_err(),
            "{bad:?}"
        );
    }
    assert!(s.sent().is_empty());
    assert_eq!(s.core.stats().protocol_errors, 4);
    assert_eq!(s.core.stats().requests, 0);
}
