use proptest::prelude::*;

use super::*;

const LIMITS: FrameLimits = FrameLimits {
    max_frame: 1000,
    max_message: 3000,
    max_frames: 8,
};

fn greeting(major: u8, mechanism: &[u8]) -> Vec<u8> {
    let mut g = vec![0u8; GREETING];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = major;
    g[11] = 1;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g
}

fn command(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(data);
    frame(FLAG_COMMAND, &body)
}

fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if body.len() > 255 {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, body.len() as u8]);
    }
    out.extend_from_slice(body);
    out
}

fn metadata(props: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in props {
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn ready(props: &[(&[u8], &[u8])]) -> Vec<u8> {
    command(b"READY", &metadata(props))
}

fn handshake() -> Vec<u8> {
    let mut s = greeting(3, b"NULL");
    s.extend(ready(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"")]));
    s
}

/// What an inspector did with a stream, as the guard would act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transcript {
    /// The bytes passed on (rewritten READY included).
    out: Vec<u8>,
    /// Each PING answered: where in `out` it came, and its context.
    pongs: Vec<(usize, Vec<u8>)>,
    /// Bytes skipped (PONGs).
    skipped: usize,
    verdict: Option<Violation>,
    /// Bytes read and still held (an unfinished header or command).
    held: usize,
}

fn run(origin: Origin, identity: Option<&[u8]>, chunks: &[&[u8]]) -> Transcript {
    let mut inspector = Inspector::new(origin, LIMITS, identity.map(<[u8]>::to_vec));
    let mut t = Transcript {
        out: Vec::new(),
        pongs: Vec::new(),
        skipped: 0,
        verdict: None,
        held: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match inspector.next(&buf) {
                Ok(None) => break,
                Ok(Some(Action::Forward(n))) => {
                    assert!(n > 0 && n <= buf.len());
                    t.out.extend(buf.drain(..n));
                }
                Ok(Some(Action::Skip(n))) => {
                    t.skipped += n;
                    buf.drain(..n);
                }
                Ok(Some(Action::Ping { consumed, context })) => {
                    t.pongs.push((t.out.len(), context.as_bytes().to_vec()));
                    buf.drain(..consumed);
                }
                Ok(Some(Action::Rewrite { consumed, ready })) => {
                    t.out.extend(ready);
                    buf.drain(..consumed);
                }
                Err(violation) => {
                    // What was read past the offending bytes depends on the reads; the verdict
                    // and everything passed on before it do not.
                    t.verdict = Some(violation);
                    return t;
                }
            }
        }
    }
    t.held = buf.len();
    t
}

fn whole(stream: &[u8]) -> Transcript {
    run(Origin::Peer, Some(b"\0assigned"), &[stream])
}

#[test]
fn a_good_stream_passes_unchanged_but_for_the_assigned_identity() {
    let mut stream = handshake();
    let after_handshake = stream.len();
    let mut message = frame(FLAG_MORE, b"");
    message.extend(frame(FLAG_MORE, b"MDPC01"));
    message.extend(frame(0, &[7; 600]));
    stream.extend(&message);
    let t = whole(&stream);
    assert_eq!(t.verdict, None);
    assert_eq!(t.held, 0);
    let mut expected = greeting(3, b"NULL");
    expected.extend(ready(&[
        (b"Socket-Type", b"DEALER"),
        (b"Identity", b"\0assigned"),
    ]));
    expected.extend(&message);
    assert_eq!(t.out, expected);
    assert!(after_handshake < stream.len());
}

#[test]
fn a_chosen_identity_is_kept_and_a_reserved_one_refused() {
    let mut stream = greeting(3, b"NULL");
    stream.extend(ready(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"w1")]));
    let t = whole(&stream);
    assert_eq!((t.verdict, t.out), (None, stream));

    let mut stream = greeting(3, b"NULL");
    stream.extend(ready(&[(b"Identity", b"\0\x04stolen")]));
    assert_eq!(whole(&stream).verdict, Some(Violation::ReservedIdentity));
}

#[test]
fn a_one_tebibyte_frame_is_refused_on_its_header() {
    let mut stream = handshake();
    let passed = whole(&stream).out;
    stream.push(FLAG_LONG);
    stream.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let t = whole(&stream);
    assert_eq!(
        t.verdict,
        Some(Violation::FrameTooLarge {
            size: 1 << 40,
            max: 1000
        })
    );
    assert_eq!(
        t.verdict.as_ref().map(Violation::rule),
        Some(Rule::FrameSize)
    );
    // Nothing of the frame went on; only the handshake (READY rewritten) did.
    assert_eq!(t.out, passed);
}

#[test]
fn many_small_frames_are_refused_by_the_message_and_frame_count_limits() {
    let mut stream = handshake();
    for _ in 0..4 {
        stream.extend(frame(FLAG_MORE, &[1; 900]));
    }
    assert_eq!(
        whole(&stream).verdict,
        Some(Violation::MessageTooLarge {
            size: 3600,
            max: 3000
        })
    );

    let mut stream = handshake();
    for _ in 0..9 {
        stream.extend(frame(FLAG_MORE, b"x"));
    }
    assert_eq!(
        whole(&stream).verdict,
        Some(Violation::TooManyFrames { max: 8 })
    );

    // The counts start again with each message.
    let mut stream = handshake();
    for _ in 0..20 {
        for _ in 0..7 {
            stream.extend(frame(FLAG_MORE, &[1; 400]));
        }
        stream.extend(frame(0, &[1; 200]));
    }
    assert_eq!(whole(&stream).verdict, None);
}

#[test]
fn ping_is_answered_and_pong_dropped_between_frames() {
    let mut stream = handshake();
    stream.extend(frame(FLAG_MORE, b"a"));
    let at = whole(&stream).out.len();
    stream.extend(command(b"PING", b"\x00\x64ctx"));
    stream.extend(command(b"PONG", b"ctx"));
    stream.extend(frame(0, b"b"));
    let t = whole(&stream);
    assert_eq!(t.verdict, None);
    assert_eq!(t.pongs, vec![(at, b"ctx".to_vec())]);
    assert_eq!(t.skipped, 10);
    assert!(t.out.ends_with(&frame(0, b"b")));

    let (pong, len) = PingContext::new(b"ctx").pong();
    assert_eq!(&pong[..len], &command(b"PONG", b"ctx")[..]);

    let mut bad = handshake();
    bad.extend(command(b"PING", &[0; 19]));
    assert_eq!(whole(&bad).verdict, Some(Violation::Malformed("PING")));
}

#[test]
fn greetings_other_than_zmtp3_null_are_refused() {
    assert_eq!(
        whole(b"GET / HTTP/1.1\r\n").verdict,
        Some(Violation::Signature)
    );
    assert_eq!(
        whole(&greeting(2, b"NULL")).verdict,
        Some(Violation::Version(2))
    );
    assert_eq!(
        whole(&greeting(3, b"CURVE")).verdict,
        Some(Violation::Mechanism("CURVE".into()))
    );
    let mut g = greeting(3, b"NULL");
    g[32] = 7;
    assert_eq!(whole(&g).verdict, Some(Violation::Greeting));
}

#[test]
fn the_handshake_must_be_ready() {
    let mut s = greeting(3, b"NULL");
    s.extend(frame(0, b"hello"));
    assert!(matches!(whole(&s).verdict, Some(Violation::Handshake(_))));

    let mut s = greeting(3, b"NULL");
    s.extend(command(b"ERROR", b"\x03bad"));
    assert!(matches!(whole(&s).verdict, Some(Violation::Handshake(_))));

    let mut s = greeting(3, b"NULL");
    s.extend(command(b"PING", b"\0\0"));
    assert!(matches!(whole(&s).verdict, Some(Violation::Handshake(_))));

    let mut s = greeting(3, b"NULL");
    s.extend(command(b"READY", b"\x04Name\0\0\0\x09short"));
    assert_eq!(whole(&s).verdict, Some(Violation::Malformed("READY")));
}

#[test]
fn commands_are_bounded_and_checked() {
    let mut s = handshake();
    s.push(FLAG_COMMAND | FLAG_LONG);
    s.extend_from_slice(&(1u64 << 20).to_be_bytes());
    assert_eq!(
        whole(&s).verdict,
        Some(Violation::CommandTooLarge { size: 1 << 20 })
    );

    let mut s = handshake();
    s.extend(frame(FLAG_COMMAND | FLAG_MORE, b"\x04PING\0\0"));
    assert_eq!(whole(&s).verdict, Some(Violation::Flags(0x05)));

    let mut s = handshake();
    s.extend(frame(0x80, b"x"));
    assert_eq!(whole(&s).verdict, Some(Violation::Flags(0x80)));

    let mut s = handshake();
    s.extend(command(b"SUBSCRIBE", b"topic"));
    assert_eq!(
        whole(&s).verdict,
        Some(Violation::UnexpectedCommand("SUBSCRIBE".into()))
    );
}

#[test]
fn the_server_side_knows_where_frames_begin() {
    let mut inspector = Inspector::new(Origin::Server, LIMITS, None);
    let mut s = greeting(3, b"NULL");
    s.extend(ready(&[(b"Socket-Type", b"ROUTER")]));
    let mut at = 0;
    while let Ok(Some(Action::Forward(n))) = inspector.next(&s[at..]) {
        at += n;
    }
    assert_eq!(at, s.len());
    assert!(inspector.between_frames());
    let f = frame(0, b"reply");
    assert_eq!(inspector.next(&f[..4]), Ok(Some(Action::Forward(4))));
    assert!(!inspector.between_frames());
    assert_eq!(inspector.next(&f[4..]), Ok(Some(Action::Forward(3))));
    assert!(inspector.between_frames());
}

/// One piece of a generated stream.
#[derive(Debug, Clone)]
enum Piece {
    Frame { more: bool, len: usize },
    Ping(Vec<u8>),
    Pong,
    Garbage(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => (any::<bool>(), 0usize..1200).prop_map(|(more, len)| Piece::Frame { more, len }),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Piece::Ping),
        1 => Just(Piece::Pong),
        1 => prop::collection::vec(any::<u8>(), 1..12).prop_map(Piece::Garbage),
    ]
}

fn stream_of(pieces: &[Piece], broken_greeting: Option<(usize, u8)>) -> Vec<u8> {
    let mut s = handshake();
    if let Some((at, byte)) = broken_greeting {
        let len = s.len();
        s[at % len] = byte;
    }
    for piece in pieces {
        match piece {
            Piece::Frame { more, len } => {
                s.extend(frame(if *more { FLAG_MORE } else { 0 }, &vec![0xab; *len]))
            }
            Piece::Ping(context) => {
                let mut data = vec![0, 10];
                data.extend(context);
                s.extend(command(b"PING", &data));
            }
            Piece::Pong => s.extend(command(b"PONG", b"")),
            Piece::Garbage(bytes) => s.extend(bytes),
        }
    }
    s
}

fn split<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(&stream[from..cut]);
        from = cut;
    }
    chunks.push(&stream[from..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// However a stream is cut into reads, the guard passes on the same bytes, answers the same
    /// PINGs at the same places and reaches the same verdict.
    #[test]
    fn decisions_do_not_depend_on_how_the_stream_is_split(
        pieces in prop::collection::vec(piece(), 0..24),
        broken in prop::option::of((0usize..200, any::<u8>())),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let stream = stream_of(&pieces, broken);
        let expected = whole(&stream);
        let chunks = split(&stream, &cuts);
        prop_assert_eq!(run(Origin::Peer, Some(b"\0assigned"), &chunks), expected.clone());
        // One byte at a time, the hardest split.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(run(Origin::Peer, Some(b"\0assigned"), &bytes), expected);
    }

    /// Random bytes never panic the inspector, and it never holds more than a command.
    #[test]
    fn random_bytes_get_a_verdict_not_a_panic(
        tail in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream = handshake();
        stream.extend(tail);
        let expected = whole(&stream);
        prop_assert!(expected.held < MAX_COMMAND + LONG_HEADER);
        prop_assert_eq!(run(Origin::Peer, Some(b"\0assigned"), &split(&stream, &cuts)), expected);
    }
}
