use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::assemble::{Assembler, PeerReady, Step, FRAME_OVERHEAD, MESSAGE_OVERHEAD};
use super::budget::Budget;
use super::link::*;
use super::*;
use crate::inspect::{FrameLimits, Violation};

const LIMITS: FrameLimits = FrameLimits {
    max_frame: 100_000,
    max_message: 300_000,
    max_frames: 16,
};
const TIMEOUT: Duration = Duration::from_secs(5);
const LINK: LinkLimits = LinkLimits {
    max_frame: 100_000,
    max_message: 300_000,
    max_frames: 20,
};

fn frames(bodies: &[&[u8]]) -> Vec<Bytes> {
    bodies.iter().map(|b| Bytes::copy_from_slice(b)).collect()
}

/// A peer's greeting and READY.
fn handshake(socket_type: &[u8], identity: Option<&[u8]>) -> BytesMut {
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    encode_ready(&mut out, socket_type, identity);
    out
}

/// A PING command with `context` (TTL 1 s).
pub(crate) fn ping(context: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04, (7 + context.len()) as u8, 4];
    out.extend_from_slice(b"PING");
    out.extend_from_slice(&[0, 10]);
    out.extend_from_slice(context);
    out
}

/// What an assembler reports, with the bytes taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Ready(PeerReady),
    Ping(Vec<u8>),
    Message(Vec<Bytes>),
}

/// Feeds `stream` to `assembler` in reads of the sizes in `cuts` (cycled; the rest at once when
/// empty), handling every step. Stops at a violation or when blocked.
fn run(assembler: &mut Assembler, stream: &[u8], cuts: &[usize]) -> (Vec<Seen>, Option<Violation>) {
    let now = Instant::now();
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = cuts
            .next()
            .map_or(rest.len(), |&c| c.max(1))
            .min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let consumed = match assembler.next(now, &buf) {
                Err(violation) => return (seen, Some(violation)),
                Ok(Step::Pending) => break,
                Ok(Step::Blocked) => return (seen, None),
                Ok(Step::Consumed(n)) => n,
                Ok(Step::Ready { consumed, ready }) => {
                    seen.push(Seen::Ready(ready));
                    consumed
                }
                Ok(Step::Ping { consumed, context }) => {
                    seen.push(Seen::Ping(context.as_bytes().to_vec()));
                    consumed
                }
                Ok(Step::Message { consumed, message }) => {
                    seen.push(Seen::Message(message.frames));
                    consumed
                }
            };
            buf.drain(..consumed);
        }
    }
    (seen, None)
}

fn assembler(budget: &Budget) -> Assembler {
    Assembler::new(LIMITS, budget.clone(), TIMEOUT)
}

#[test]
fn a_peer_stream_becomes_its_ready_pings_and_whole_messages() {
    let mut stream = handshake(b"DEALER", Some(b"me")).to_vec();
    stream.extend(ping(b"ctx"));
    let long = vec![7u8; 1000];
    let mut out = BytesMut::new();
    encode_message(&mut out, &frames(&[b"", b"MDPC01", &long]));
    encode_message(&mut out, &frames(&[b""]));
    stream.extend_from_slice(&out);
    let budget = Budget::new(1 << 20);
    let (seen, verdict) = run(&mut assembler(&budget), &stream, &[]);
    assert_eq!(verdict, None);
    assert_eq!(
        seen,
        vec![
            Seen::Ready(PeerReady {
                socket_type: Bytes::from_static(b"DEALER"),
                identity: Some(Bytes::from_static(b"me")),
            }),
            Seen::Ping(b"ctx".to_vec()),
            Seen::Message(frames(&[b"", b"MDPC01", &long])),
            Seen::Message(frames(&[b""])),
        ]
    );
    assert_eq!(budget.used(), 0, "delivered messages were dropped");
}

#[test]
fn a_ping_between_the_frames_of_a_message_is_answered_and_the_message_kept_whole() {
    let mut stream = handshake(b"REQ", None).to_vec();
    let mut out = BytesMut::new();
    encode_frame(&mut out, b"a", true);
    stream.extend_from_slice(&out);
    stream.extend(ping(b""));
    let mut out = BytesMut::new();
    encode_frame(&mut out, b"b", false);
    stream.extend_from_slice(&out);
    let (seen, verdict) = run(&mut assembler(&Budget::new(1 << 20)), &stream, &[3]);
    assert_eq!(verdict, None);
    assert_eq!(
        seen[1..],
        [Seen::Ping(vec![]), Seen::Message(frames(&[b"a", b"b"]))]
    );
}

#[test]
fn a_socket_type_a_router_cannot_talk_to_is_refused() {
    for kind in [&b"PUB"[..], b"REP", b"PAIR"] {
        let (seen, verdict) = run(
            &mut assembler(&Budget::new(1024)),
            &handshake(kind, None),
            &[],
        );
        assert!(seen.is_empty());
        assert!(
            matches!(verdict, Some(Violation::Handshake(ref why)) if why.contains("socket type")),
            "{verdict:?}"
        );
    }
    // Metadata names are case-insensitive (RFC 37).
    let mut stream = BytesMut::new();
    encode_greeting(&mut stream);
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"socket-type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"ROUTER");
    stream.extend_from_slice(&[0x04, body.len() as u8]);
    stream.extend_from_slice(&body);
    let (seen, verdict) = run(&mut assembler(&Budget::new(1024)), &stream, &[]);
    assert_eq!(verdict, None);
    assert!(matches!(&seen[..], [Seen::Ready(ready)] if ready.socket_type == "ROUTER"));
}

#[test]
fn the_guard_limits_still_close_the_peer() {
    let budget = Budget::new(1 << 20);
    let mut stream = handshake(b"DEALER", None).to_vec();
    stream.extend_from_slice(&[0x02]);
    stream.extend_from_slice(&(LIMITS.max_frame + 1).to_be_bytes());
    let (_, verdict) = run(&mut assembler(&budget), &stream, &[]);
    assert!(matches!(verdict, Some(Violation::FrameTooLarge { .. })));
    let mut stream = handshake(b"DEALER", None).to_vec();
    let mut out = BytesMut::new();
    encode_message(&mut out, &vec![Bytes::from_static(b"x"); 17]);
    stream.extend_from_slice(&out);
    let mut peer = assembler(&budget);
    let (seen, verdict) = run(&mut peer, &stream, &[]);
    assert_eq!(seen.len(), 1, "only READY: the message never completes");
    assert_eq!(verdict, Some(Violation::TooManyFrames { max: 16 }));
    drop(peer);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_frame_header_charges_its_whole_body_before_any_of_it_arrives() {
    let budget = Budget::new(150_000);
    let mut peer = assembler(&budget);
    let mut stream = handshake(b"DEALER", None).to_vec();
    stream.extend_from_slice(&[0x02]);
    stream.extend_from_slice(&90_000u64.to_be_bytes());
    stream.extend_from_slice(&[1; 100]);
    let (seen, verdict) = run(&mut peer, &stream, &[]);
    assert_eq!((seen.len(), verdict), (1, None));
    let overhead = MESSAGE_OVERHEAD + FRAME_OVERHEAD;
    assert_eq!(peer.held(), overhead + 90_000);
    assert_eq!(budget.used(), peer.held());
    // A second peer's frame that the rest of the budget cannot hold whole waits at its header:
    // no peer ever holds part of a frame it cannot finish.
    let mut other = assembler(&budget);
    let mut big = handshake(b"DEALER", None).to_vec();
    big.extend_from_slice(&[0x02]);
    big.extend_from_slice(&90_000u64.to_be_bytes());
    big.extend_from_slice(&[2; 100]);
    let (seen, verdict) = run(&mut other, &big, &[]);
    assert_eq!((seen.len(), verdict), (1, None));
    assert_eq!(other.held(), 0);
    drop(peer);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_message_not_whole_by_its_deadline_closes_the_peer() {
    let budget = Budget::new(1 << 20);
    let mut peer = assembler(&budget);
    let start = Instant::now();
    let stream = handshake(b"DEALER", None).to_vec();
    let (seen, _) = run(&mut peer, &stream, &[]);
    assert_eq!(seen.len(), 1);
    assert_eq!(peer.deadline(), None, "no message begun: nothing is due");
    // The first frame of two, and half of the second's body.
    let mut out = BytesMut::new();
    encode_frame(&mut out, b"first", true);
    out.extend_from_slice(&[0x00, 10, 1, 2, 3]);
    let mut consumed = 0;
    while consumed < out.len() {
        match peer.next(start, &out[consumed..]).unwrap() {
            Step::Consumed(n) => consumed += n,
            Step::Pending => break,
            other => panic!("{other:?}"),
        }
    }
    let deadline = peer.deadline().expect("a message is begun");
    assert!(deadline >= start + TIMEOUT);
    assert_eq!(peer.check(deadline - Duration::from_millis(1)), Ok(()));
    assert_eq!(peer.check(deadline), Err(Violation::Stalled(TIMEOUT)));
    assert_eq!(
        peer.next(deadline, &[4]).unwrap_err(),
        Violation::Stalled(TIMEOUT)
    );
    assert_eq!(
        Violation::Stalled(TIMEOUT).rule(),
        crate::Rule::MessageTimeout
    );
}

#[test]
fn at_the_inbound_budget_a_peer_is_held_back_until_another_releases() {
    let overhead = MESSAGE_OVERHEAD + FRAME_OVERHEAD;
    let budget = Budget::new(2 * overhead + 1500);
    let (mut a, mut b) = (assembler(&budget), assembler(&budget));
    let body = vec![9u8; 1000];
    let mut message = BytesMut::new();
    encode_message(&mut message, &frames(&[&body]));
    let mut stream = handshake(b"DEALER", None).to_vec();
    stream.extend_from_slice(&message);
    let now = Instant::now();
    // A takes its whole message and keeps it (not yet written to the link).
    let mut held = None;
    let mut at = 0;
    while held.is_none() {
        match a.next(now, &stream[at..]).unwrap() {
            Step::Consumed(n) | Step::Ready { consumed: n, .. } => at += n,
            Step::Message { message, .. } => held = Some(message),
            other => panic!("{other:?}"),
        }
    }
    let held = held.unwrap();
    assert_eq!(held.charge.bytes(), overhead + 1000);
    // B is held back at its frame's header, whose whole body the budget cannot take yet,
    // without losing bytes or holding any of the budget for that frame.
    let mut at = 0;
    let blocked_at = loop {
        match b.next(now, &stream[at..]).unwrap() {
            Step::Consumed(n) | Step::Ready { consumed: n, .. } => at += n,
            Step::Blocked => break at,
            other => panic!("{other:?}"),
        }
        assert!(budget.used() <= budget.limit());
    };
    assert_eq!(budget.used(), overhead + 1000);
    assert!(blocked_at < stream.len());
    assert!(matches!(b.next(now, &stream[at..]), Ok(Step::Blocked)));
    // A's message is written to the link: B goes on and gets the same message.
    drop(held);
    let message = loop {
        match b.next(now, &stream[at..]).unwrap() {
            Step::Consumed(n) => at += n,
            Step::Message { message, .. } => break message,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(message.frames, frames(&[&body]));
    drop((a, b, message));
    assert_eq!(budget.used(), 0);
}

#[test]
fn replies_over_a_peers_outbound_budget_are_refused_and_queued_ones_released() {
    let reply = frames(&[b"id", b"", &[0u8; 300][..]]);
    let cost = reply_cost(&reply);
    assert_eq!(
        cost,
        (2 + 2) + 2 + (9 + 300) + MESSAGE_OVERHEAD + 3 * FRAME_OVERHEAD
    );
    let budget = Budget::new(2 * cost + cost / 2);
    let queued: Vec<_> = (0..2)
        .map(|_| charge_reply(&budget, &reply).unwrap())
        .collect();
    assert!(
        charge_reply(&budget, &reply).is_none(),
        "the third does not fit"
    );
    assert_eq!(budget.used(), 2 * cost);
    drop(queued);
    assert_eq!(budget.used(), 0);
}

#[test]
fn golden_link_bytes() {
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 1];
    greeting.extend_from_slice(b"NULL");
    greeting.resize(64, 0);
    assert_eq!(out[..], greeting[..]);

    let mut out = BytesMut::new();
    encode_ready(&mut out, b"DEALER", Some(b"L1"));
    let mut ready = vec![0x04, 43, 5];
    ready.extend_from_slice(b"READY");
    ready.extend_from_slice(b"\x0bSocket-Type\x00\x00\x00\x06DEALER");
    ready.extend_from_slice(b"\x08Identity\x00\x00\x00\x02L1");
    assert_eq!(out[..], ready[..]);

    // Two messages of two peers in one buffer: one write.
    let mut out = BytesMut::new();
    let long = [0xabu8; 256];
    encode_routed(&mut out, b"\x01p1", &frames(&[b"", b"hi"]));
    encode_routed(&mut out, b"p2", &frames(&[&long]));
    let mut expected = vec![0x01, 3, 1, b'p', b'1', 0x01, 0, 0x00, 2, b'h', b'i'];
    expected.extend_from_slice(&[0x01, 2, b'p', b'2', 0x02, 0, 0, 0, 0, 0, 0, 1, 0]);
    expected.extend_from_slice(&long);
    assert_eq!(out[..], expected[..]);

    let mut out = BytesMut::new();
    encode_control(&mut out, &Control::Connected(Bytes::from_static(b"p1")));
    encode_control(&mut out, &Control::Disconnected(Bytes::from_static(b"p1")));
    assert_eq!(
        out[..],
        [
            0x01,
            0,
            0x01,
            1,
            CONNECTED,
            0x00,
            2,
            b'p',
            b'1', //
            0x01,
            0,
            0x01,
            1,
            DISCONNECTED,
            0x00,
            2,
            b'p',
            b'1',
        ]
    );

    let mut out = BytesMut::new();
    encode_routed(&mut out, b"p", &[]);
    assert!(out.is_empty(), "no empty messages");
}

/// The server's side of a link: greeting and READY as a ROUTER.
fn server_handshake() -> BytesMut {
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    encode_ready(&mut out, b"ROUTER", None);
    out
}

fn decode_all(decoder: &mut LinkDecoder, buf: &mut BytesMut) -> Result<Vec<LinkEvent>, LinkError> {
    let mut events = Vec::new();
    while let Some(event) = decoder.decode(buf)? {
        events.push(event);
    }
    Ok(events)
}

#[test]
fn the_link_decoder_reads_the_servers_replies_controls_and_pings() {
    let mut buf = server_handshake();
    buf.extend_from_slice(&ping(b"x"));
    encode_routed(&mut buf, b"p1", &frames(&[b"", b"reply"]));
    encode_control(&mut buf, &Control::Disconnected(Bytes::from_static(b"p2")));
    // A lone identity has nothing to write: skipped.
    encode_frame(&mut buf, b"p3", false);
    encode_routed(&mut buf, b"p4", &frames(&[b"last"]));
    let mut decoder = LinkDecoder::new(LINK);
    let events = decode_all(&mut decoder, &mut buf).unwrap();
    assert!(buf.is_empty());
    let [LinkEvent::Ready, LinkEvent::Ping(context), rest @ ..] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(context.as_bytes(), b"x");
    assert_eq!(
        rest,
        [
            LinkEvent::Routed {
                peer: Bytes::from_static(b"p1"),
                frames: frames(&[b"", b"reply"])
            },
            LinkEvent::Control(Control::Disconnected(Bytes::from_static(b"p2"))),
            LinkEvent::Routed {
                peer: Bytes::from_static(b"p4"),
                frames: frames(&[b"last"])
            },
        ]
    );
}

#[test]
fn the_link_decoder_reads_a_byte_at_a_time() {
    let mut stream = server_handshake();
    encode_routed(&mut stream, b"p1", &frames(&[b"", b"reply"]));
    let mut decoder = LinkDecoder::new(LINK);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for &byte in &stream[..] {
        buf.extend_from_slice(&[byte]);
        events.extend(decode_all(&mut decoder, &mut buf).unwrap());
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], LinkEvent::Ready);
}

#[test]
fn the_link_decoder_refuses_what_breaks_zmtp_or_its_limits_without_reserving_for_it() {
    let not_a_router = {
        let mut b = BytesMut::new();
        encode_greeting(&mut b);
        encode_ready(&mut b, b"DEALER", None);
        b.to_vec()
    };
    let huge_frame = {
        let mut b = server_handshake().to_vec();
        b.push(0x02);
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b
    };
    let many_frames = {
        let mut b = server_handshake();
        encode_message(&mut b, &vec![Bytes::from_static(b"f"); 21]);
        b.to_vec()
    };
    let reserved_flags = {
        let mut b = server_handshake().to_vec();
        b.extend_from_slice(&[0x80, 0]);
        b
    };
    let unknown_event = {
        let mut b = server_handshake();
        encode_message(&mut b, &frames(&[b"", b"\x07", b"p"]));
        b.to_vec()
    };
    let control_without_peer = {
        let mut b = server_handshake();
        encode_message(&mut b, &frames(&[b"", b"\x01"]));
        b.to_vec()
    };
    let cases: Vec<(Vec<u8>, LinkError)> = vec![
        (b"GET / HTTP/1.1\r\n".repeat(4), LinkError::Greeting),
        (
            not_a_router,
            LinkError::Handshake("the server is not a ROUTER socket".into()),
        ),
        (
            huge_frame,
            LinkError::FrameTooLarge {
                size: u64::MAX,
                max: LINK.max_frame,
            },
        ),
        (many_frames, LinkError::MessageTooLarge),
        (reserved_flags, LinkError::Malformed("frame header")),
        (unknown_event, LinkError::Control),
        (control_without_peer, LinkError::Control),
    ];
    for (bytes, expected) in cases {
        let mut buf = BytesMut::from(&bytes[..]);
        let result = decode_all(&mut LinkDecoder::new(LINK), &mut buf);
        assert_eq!(result.map(|_| ()), Err(expected));
        assert!(buf.capacity() < 1024, "reserved {}", buf.capacity());
    }
}

/// A peer's stream: handshake, then `messages` with PINGs before some.
fn peer_stream(messages: &[(Vec<Vec<u8>>, bool)]) -> (Vec<u8>, Vec<Seen>) {
    let mut stream = handshake(b"DEALER", None).to_vec();
    let mut expected = vec![Seen::Ready(PeerReady {
        socket_type: Bytes::from_static(b"DEALER"),
        identity: None,
    })];
    for (message, pinged) in messages {
        if *pinged {
            stream.extend(ping(b"p"));
            expected.push(Seen::Ping(b"p".to_vec()));
        }
        let message: Vec<Bytes> = message.iter().map(|f| Bytes::from(f.clone())).collect();
        let mut out = BytesMut::new();
        encode_message(&mut out, &message);
        stream.extend_from_slice(&out);
        expected.push(Seen::Message(message));
    }
    (stream, expected)
}

/// Messages of 1 to 4 frames, with a PING before some.
fn messages() -> impl Strategy<Value = Vec<(Vec<Vec<u8>>, bool)>> {
    let frame = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..20),
        1 => proptest::collection::vec(any::<u8>(), 250..9000),
    ];
    let message = (proptest::collection::vec(frame, 1..5), any::<bool>());
    proptest::collection::vec(message, 0..6)
}

/// A peer of the shared-budget property.
struct Peer {
    assembler: Assembler,
    stream: Vec<u8>,
    /// Bytes consumed.
    at: usize,
    /// Bytes read: those past `at` wait in the peer's buffer.
    read_to: usize,
    /// Bytes one read takes.
    read: usize,
    seen: Vec<Seen>,
    expected: Vec<Seen>,
    /// Messages not yet written to the link.
    held: Vec<assemble::Message>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of a peer's stream into reads gives the same READY, PINGs and messages, and
    /// holds no budget once they are dropped.
    #[test]
    fn any_split_gives_the_same_messages(
        messages in messages(),
        cuts in proptest::collection::vec(1usize..700, 0..8),
    ) {
        let (stream, expected) = peer_stream(&messages);
        let budget = Budget::new(1 << 22);
        let (seen, verdict) = run(&mut assembler(&budget), &stream, &cuts);
        prop_assert_eq!(verdict, None);
        prop_assert_eq!(seen, expected);
        prop_assert_eq!(budget.used(), 0);
    }

    /// Peers sharing a small budget, read in any order, some holding their messages a while:
    /// the budget never passes its limit, every peer's messages arrive whole and in order, and
    /// the budget is back to zero when they leave.
    #[test]
    fn a_shared_budget_holds_its_limit_and_returns_to_zero(
        peers in proptest::collection::vec((
            proptest::collection::vec((
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..5),
                any::<bool>(),
            ), 4..12),
            1usize..3000,
        ), 2..4),
        schedule in proptest::collection::vec(
            (0usize..4, proptest::bool::weighted(0.1)),
            1..400,
        ),
        // Room for every peer's largest message (about 8.4 KB) at once, not for what they hold
        // besides: below that, peers each holding part of one could wait on each other until
        // the message timeout (see the module docs).
        limit in 26_000usize..40_000,
    ) {
        let budget = Budget::new(limit);
        let now = Instant::now();
        let mut peers: Vec<Peer> = peers
            .into_iter()
            .map(|(messages, read)| {
                let (stream, expected) = peer_stream(&messages);
                Peer {
                    assembler: assembler(&budget),
                    stream,
                    at: 0,
                    read_to: 0,
                    read,
                    seen: Vec::new(),
                    expected,
                    held: Vec::new(),
                }
            })
            .collect();
        // Each turn reads one peer (up to its read size) or, on `release`, writes its held
        // messages to the link. Then everything left is drained, releasing as needed (long
        // enough for one-byte reads of the longest streams).
        let turns = schedule
            .into_iter()
            .chain((0..4_000_000).map(|i| (i % 4, (i / 4) % 4 == 0)));
        for (who, release) in turns {
            if peers.iter().all(|p| p.at == p.stream.len() && p.held.is_empty()) {
                break;
            }
            let count = peers.len();
            let peer = &mut peers[who % count];
            if release {
                peer.held.clear();
                continue;
            }
            peer.read_to = (peer.read_to + peer.read).min(peer.stream.len());
            while peer.at < peer.read_to {
                let step = peer.assembler.next(now, &peer.stream[peer.at..peer.read_to]);
                prop_assert!(budget.used() <= budget.limit());
                match step {
                    Err(violation) => prop_assert!(false, "{}", violation),
                    // About a third of the cases reach the limit and wait here.
                    Ok(Step::Pending | Step::Blocked) => break,
                    Ok(Step::Consumed(n)) => peer.at += n,
                    Ok(Step::Ready { consumed, ready }) => {
                        peer.seen.push(Seen::Ready(ready));
                        peer.at += consumed;
                    }
                    Ok(Step::Ping { consumed, context }) => {
                        peer.seen.push(Seen::Ping(context.as_bytes().to_vec()));
                        peer.at += consumed;
                    }
                    Ok(Step::Message { consumed, message }) => {
                        peer.seen.push(Seen::Message(message.frames.clone()));
                        peer.held.push(message);
                        peer.at += consumed;
                    }
                }
            }
            if peer.held.len() > 8 {
                peer.held.remove(0);
            }
        }
        for peer in &peers {
            prop_assert_eq!(peer.at, peer.stream.len());
            prop_assert_eq!(&peer.seen, &peer.expected);
        }
        drop(peers);
        prop_assert_eq!(budget.used(), 0);
    }

    /// The link's messages read back as they were written, however the bytes are split.
    #[test]
    fn link_messages_read_back_under_any_split(
        items in proptest::collection::vec(
            (proptest::collection::vec(1u8..=255, 1..8), prop_oneof![
                Just(None),
                Just(Some(true)),
                Just(Some(false)),
            ], messages()),
            0..6,
        ),
        cuts in proptest::collection::vec(1usize..500, 0..8),
    ) {
        let mut stream = server_handshake();
        let mut expected = vec![LinkEvent::Ready];
        for (peer, control, messages) in &items {
            let peer = Bytes::from(peer.clone());
            match control {
                Some(connected) => {
                    let control = if *connected {
                        Control::Connected(peer)
                    } else {
                        Control::Disconnected(peer)
                    };
                    encode_control(&mut stream, &control);
                    expected.push(LinkEvent::Control(control));
                }
                None => {
                    for (message, _) in messages {
                        let frames: Vec<Bytes> =
                            message.iter().map(|f| Bytes::from(f.clone())).collect();
                        encode_routed(&mut stream, &peer, &frames);
                        expected.push(LinkEvent::Routed { peer: peer.clone(), frames });
                    }
                }
            }
        }
        let mut decoder = LinkDecoder::new(LINK);
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().map_or(rest.len(), |&c| c).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            seen.extend(decode_all(&mut decoder, &mut buf).unwrap());
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(seen, expected);
    }
}
