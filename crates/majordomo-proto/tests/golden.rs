//! Golden frames: each command byte for byte as 7/MDP and 6/PPP lay it out.

use bytes::Bytes;
use majordomo_proto::mdp::{
    BrokerInbound, BrokerMessage, ClientReply, ClientRequest, WorkerMessage,
};
use majordomo_proto::ppp::{Envelope, PppMessage};
use majordomo_proto::{mdp, DecodeError, Limits};

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|b| Bytes::copy_from_slice(b)).collect()
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

#[test]
fn client_request() {
    // Frame 0: Empty; Frame 1: "MDPC01"; Frame 2: Service name; Frames 3+: Request body.
    let wire = f(&[b"", b"MDPC01", b"echo", b"hello", b"world"]);
    let msg = ClientRequest::new("echo", vec![b(b"hello"), b(b"world")]);
    assert_eq!(msg.encode(), wire);
    assert_eq!(ClientRequest::decode(&wire, &Limits::default()), Ok(msg));
}

#[test]
fn client_reply_routed() {
    let msg = ClientReply {
        service: b(b"echo"),
        body: vec![b(b"hello")],
    };
    assert_eq!(msg.encode(), f(&[b"", b"MDPC01", b"echo", b"hello"]));
    assert_eq!(
        msg.encode_routed(&b(b"\x00ab")),
        f(&[b"\x00ab", b"", b"MDPC01", b"echo", b"hello"])
    );
    assert_eq!(
        ClientReply::decode(&msg.encode(), &Limits::default()),
        Ok(msg)
    );
}

#[test]
fn client_messages_with_an_empty_body_carry_one_empty_frame() {
    // "Frames 3+: Request body" / "Frames 3+: Reply body": at least one frame, so an empty body
    // is written as one empty frame, and reads back as that frame.
    let wire = f(&[b"", b"MDPC01", b"echo", b""]);
    let request = ClientRequest::new("echo", vec![]);
    assert_eq!(request.encode(), wire);
    assert_eq!(
        ClientRequest::decode(&request.encode(), &Limits::default()),
        Ok(ClientRequest::new("echo", vec![Bytes::new()]))
    );
    let reply = ClientReply {
        service: b(b"echo"),
        body: vec![],
    };
    assert_eq!(reply.encode(), wire);
    assert_eq!(
        reply.encode_routed(&b(b"C1")),
        f(&[b"C1", b"", b"MDPC01", b"echo", b""])
    );
    assert_eq!(
        ClientReply::decode(&reply.encode(), &Limits::default()),
        Ok(ClientReply {
            service: b(b"echo"),
            body: vec![Bytes::new()],
        })
    );
}

#[test]
fn worker_ready() {
    let wire = f(&[b"", b"MDPW01", &[0x01], b"echo"]);
    let msg = WorkerMessage::Ready {
        service: b(b"echo"),
    };
    assert_eq!(msg.encode(), wire);
    assert_eq!(WorkerMessage::decode(&wire, &Limits::default()), Ok(msg));
}

#[test]
fn worker_request_and_reply() {
    let request = f(&[b"W1", b"", b"MDPW01", &[0x02], b"C1", b"", b"body"]);
    let msg = BrokerMessage::Request {
        client: b(b"C1"),
        body: vec![b(b"body")],
    };
    assert_eq!(msg.encode_routed(&b(b"W1")), request);
    assert_eq!(
        BrokerMessage::request_routed(&b(b"W1"), &b(b"C1"), &[b(b"body")]),
        request
    );
    assert_eq!(
        BrokerMessage::decode(&request[1..], &Limits::default()),
        Ok(msg)
    );

    let reply = f(&[b"", b"MDPW01", &[0x03], b"C1", b"", b"a", b"b"]);
    let msg = WorkerMessage::Reply {
        client: b(b"C1"),
        body: vec![b(b"a"), b(b"b")],
    };
    assert_eq!(msg.encode(), reply);
    assert_eq!(WorkerMessage::decode(&reply, &Limits::default()), Ok(msg));
}

#[test]
fn heartbeat_and_disconnect_both_ways() {
    let hb = f(&[b"", b"MDPW01", &[0x04]]);
    let dc = f(&[b"", b"MDPW01", &[0x05]]);
    assert_eq!(WorkerMessage::Heartbeat.encode(), hb);
    assert_eq!(WorkerMessage::Disconnect.encode(), dc);
    assert_eq!(BrokerMessage::Heartbeat.encode(), hb);
    assert_eq!(BrokerMessage::Disconnect.encode(), dc);
    let limits = Limits::default();
    assert_eq!(
        WorkerMessage::decode(&hb, &limits),
        Ok(WorkerMessage::Heartbeat)
    );
    assert_eq!(
        BrokerMessage::decode(&dc, &limits),
        Ok(BrokerMessage::Disconnect)
    );
}

#[test]
fn ppp_commands_and_envelopes() {
    let limits = Limits::default();
    assert_eq!(PppMessage::Ready.encode(), f(&[&[0x01]]));
    assert_eq!(PppMessage::Heartbeat.encode(), f(&[&[0x02]]));
    assert_eq!(
        PppMessage::decode(&f(&[&[0x01]]), &limits),
        Ok(PppMessage::Ready)
    );
    assert_eq!(
        PppMessage::decode(&f(&[&[0x02]]), &limits),
        Ok(PppMessage::Heartbeat)
    );
    let wire = f(&[b"client", b"", b"hello"]);
    let msg = PppMessage::Payload(Envelope {
        address: vec![b(b"client")],
        body: vec![b(b"hello")],
    });
    assert_eq!(msg.encode(), wire);
    assert_eq!(PppMessage::decode(&wire, &limits), Ok(msg));
    // A one-byte body other than a command byte is a payload without envelope.
    assert_eq!(
        PppMessage::decode(&f(&[b"x"]), &limits),
        Ok(PppMessage::Payload(Envelope {
            address: vec![],
            body: vec![b(b"x")]
        }))
    );
    assert_eq!(
        PppMessage::decode(&f(&[b"client", b""]), &limits),
        Err(DecodeError::MissingBody)
    );
    // Found by fuzzing: an empty body frame after a bare terminator keeps its terminator.
    let msg = PppMessage::decode(&f(&[b"", b""]), &limits).unwrap();
    assert_eq!(msg.encode(), f(&[b"", b""]));
    let msg = PppMessage::decode(&f(&[b"", &[0x01]]), &limits).unwrap();
    assert_eq!(msg.encode(), f(&[b"", &[0x01]]));
}

#[test]
fn split_identity_needs_two_frames() {
    assert_eq!(mdp::split_identity(&[]), Err(DecodeError::Empty));
    assert_eq!(
        mdp::split_identity(&f(&[b"id"])),
        Err(DecodeError::MissingIdentity)
    );
    let frames = f(&[b"id", b"", b"MDPC01"]);
    let (id, rest) = mdp::split_identity(&frames).unwrap();
    assert_eq!(id.as_ref(), b"id");
    assert_eq!(rest.len(), 2);
}

#[test]
fn every_malformed_input_has_its_error() {
    let limits = Limits::default()
        .max_message_size(64)
        .max_frames(8)
        .max_service_name(8);
    let cases: Vec<(Vec<Bytes>, DecodeError)> = vec![
        (vec![], DecodeError::Empty),
        (
            f(&[b"x", b"MDPC01", b"s", b"b"]),
            DecodeError::MissingEmptyFrame(1),
        ),
        (
            f(&[b"", b"MDPX01", b"s", b"b"]),
            DecodeError::UnknownHeader(b(b"MDPX01")),
        ),
        (f(&[b""]), DecodeError::UnknownHeader(Bytes::new())),
        (
            f(&[b"", b"MDPC01", b"s"]),
            DecodeError::WrongFrameCount {
                command: "REQUEST",
                expected: "4 or more",
                got: 3,
            },
        ),
        (
            f(&[b"", b"MDPC01", b"", b"b"]),
            DecodeError::EmptyServiceName,
        ),
        (
            f(&[b"", b"MDPC01", b"123456789", b"b"]),
            DecodeError::ServiceNameTooLong { len: 9, max: 8 },
        ),
        (f(&[b"", b"MDPW01"]), DecodeError::MissingCommand),
        (
            f(&[b"", b"MDPW01", b"\x01\x01"]),
            DecodeError::BadCommandFrame(2),
        ),
        (
            f(&[b"", b"MDPW01", &[0x09]]),
            DecodeError::UnknownCommand(9),
        ),
        // REQUEST is broker-to-worker only.
        (
            f(&[b"", b"MDPW01", &[0x02], b"c", b"", b"b"]),
            DecodeError::UnknownCommand(2),
        ),
        (
            f(&[b"", b"MDPW01", &[0x01]]),
            DecodeError::WrongFrameCount {
                command: "READY",
                expected: "4",
                got: 3,
            },
        ),
        (
            f(&[b"", b"MDPW01", &[0x04], b"extra"]),
            DecodeError::WrongFrameCount {
                command: "HEARTBEAT",
                expected: "3",
                got: 4,
            },
        ),
        (
            f(&[b"", b"MDPW01", &[0x03]]),
            DecodeError::MissingClientAddress,
        ),
        (
            f(&[b"", b"MDPW01", &[0x03], b"", b"", b"b"]),
            DecodeError::MissingClientAddress,
        ),
        (
            f(&[b"", b"MDPW01", &[0x03], b"c", b"x", b"b"]),
            DecodeError::MissingDelimiter,
        ),
        (
            f(&[b"", b"MDPW01", &[0x03], b"c", b""]),
            DecodeError::WrongFrameCount {
                command: "REPLY",
                expected: "6 or more",
                got: 5,
            },
        ),
        (
            f(&[b"", b"MDPC01", b"s", &[0u8; 70]]),
            DecodeError::MessageTooLarge { size: 77, max: 64 },
        ),
        (
            f(&[b"", b"MDPC01", b"s", b"", b"", b"", b"", b"", b""]),
            DecodeError::TooManyFrames { count: 9, max: 8 },
        ),
    ];
    for (frames, expected) in cases {
        assert_eq!(
            BrokerInbound::decode(&frames, &limits),
            Err(expected.clone()),
            "frames {frames:?}"
        );
    }
    // A client receiving a worker command is told which header it expected.
    assert_eq!(
        ClientReply::decode(&f(&[b"", b"MDPW01", &[0x04]]), &limits),
        Err(DecodeError::UnexpectedHeader {
            expected: "MDPC01",
            got: b(b"MDPW01")
        })
    );
}

type Decode = fn(&[Bytes], &Limits) -> Result<(), DecodeError>;

#[test]
fn every_public_decoder_rejects_an_oversized_message() {
    let limits = Limits::default()
        .max_message_size(64)
        .max_frames(8)
        .max_service_name(8);
    let client = f(&[b"", b"MDPC01", b"s"]);
    let reply = f(&[b"", b"MDPW01", &[0x03], b"c", b""]);
    let request = f(&[b"", b"MDPW01", &[0x02], b"c", b""]);
    // Each decoder with the frames of a valid message before its body.
    let decoders: Vec<(&str, Vec<Bytes>, Decode)> = vec![
        ("ClientRequest", client.clone(), |m, l| {
            ClientRequest::decode(m, l).map(drop)
        }),
        ("ClientReply", client.clone(), |m, l| {
            ClientReply::decode(m, l).map(drop)
        }),
        ("BrokerInbound (client)", client, |m, l| {
            BrokerInbound::decode(m, l).map(drop)
        }),
        ("WorkerMessage", reply.clone(), |m, l| {
            WorkerMessage::decode(m, l).map(drop)
        }),
        ("BrokerInbound (worker)", reply, |m, l| {
            BrokerInbound::decode(m, l).map(drop)
        }),
        ("BrokerMessage", request, |m, l| {
            BrokerMessage::decode(m, l).map(drop)
        }),
        ("PppMessage", f(&[b"c", b""]), |m, l| {
            PppMessage::decode(m, l).map(drop)
        }),
    ];
    for (name, head, decode) in decoders {
        let head_size: usize = head.iter().map(Bytes::len).sum();
        let with_frames = |count: usize| {
            let mut frames = head.clone();
            frames.resize(count, b(b"x"));
            frames
        };
        let with_size = |size: usize| {
            let mut frames = head.clone();
            frames.push(Bytes::from(vec![b'x'; size - head_size]));
            frames
        };
        assert_eq!(
            decode(&with_frames(8), &limits),
            Ok(()),
            "{name} at the frame limit"
        );
        assert_eq!(
            decode(&with_frames(9), &limits),
            Err(DecodeError::TooManyFrames { count: 9, max: 8 }),
            "{name} past the frame limit"
        );
        assert_eq!(
            decode(&with_size(64), &limits),
            Ok(()),
            "{name} at the size limit"
        );
        assert_eq!(
            decode(&with_size(65), &limits),
            Err(DecodeError::MessageTooLarge { size: 65, max: 64 }),
            "{name} past the size limit"
        );
    }
}
