//! 18/MDP (v0.2) frames byte for byte, in both dialects: as RFC 18 writes them, and as
//! majortomo 0.2 (`client.py`, `worker.py`) puts them on the wire; and which version and dialect
//! a broker reads from a message's first frames.

use bytes::Bytes;
use majordomo_proto::mdp2::{
    classify, BrokerMessage, ClientReply, ClientRequest, Dialect, Part, Sender, Version,
    WorkerMessage,
};
use majordomo_proto::{DecodeError, Limits};
use proptest::prelude::*;

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|x| Bytes::copy_from_slice(x)).collect()
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

const RFC: Dialect = Dialect::Rfc18;
const MAJ: Dialect = Dialect::Majortomo;

#[test]
fn client_request_in_both_dialects() {
    let request = ClientRequest {
        service: b(b"echo"),
        body: vec![b(b"a"), b(b"b")],
    };
    // "Frame 0: MDPC02, Frame 1: 0x01 (REQUEST), Frame 2: Service name, Frames 3+: Request body"
    let rfc = f(&[b"MDPC02", &[0x01], b"echo", b"a", b"b"]);
    // majortomo: send_multipart((b'', CLIENT_HEADER, REQUEST (0x02), service) + args)
    let maj = f(&[b"", b"MDPC02", &[0x02], b"echo", b"a", b"b"]);
    assert_eq!(request.encode(RFC), rfc);
    assert_eq!(request.encode(MAJ), maj);
    let limits = Limits::default();
    assert_eq!(
        ClientRequest::decode(&rfc, RFC, &limits),
        Ok(request.clone())
    );
    assert_eq!(ClientRequest::decode(&maj, MAJ, &limits), Ok(request));
    // No body frame: refused in both.
    assert!(matches!(
        ClientRequest::decode(&f(&[b"MDPC02", &[0x01], b"echo"]), RFC, &limits),
        Err(DecodeError::WrongFrameCount { .. })
    ));
    // Each dialect's REQUEST byte is the other's PARTIAL-or-REQUEST: not mixed up.
    assert_eq!(
        ClientRequest::decode(&f(&[b"MDPC02", &[0x02], b"echo", b"x"]), RFC, &limits),
        Err(DecodeError::UnknownCommand(0x02))
    );
}

#[test]
fn client_replies_in_both_dialects() {
    let partial = ClientReply {
        part: Part::Partial,
        service: b(b"echo"),
        body: vec![b(b"1")],
    };
    let final_ = ClientReply {
        part: Part::Final,
        ..partial.clone()
    };
    // "PARTIAL: MDPC02, 0x02, service, body"; "FINAL: MDPC02, 0x03, service, body"
    assert_eq!(partial.encode(RFC), f(&[b"MDPC02", &[0x02], b"echo", b"1"]));
    assert_eq!(final_.encode(RFC), f(&[b"MDPC02", &[0x03], b"echo", b"1"]));
    // majortomo's client: empty, MDPC02, PARTIAL 0x03 | FINAL 0x04, then the body (message[2:]).
    assert_eq!(partial.encode(MAJ), f(&[b"", b"MDPC02", &[0x03], b"1"]));
    assert_eq!(final_.encode(MAJ), f(&[b"", b"MDPC02", &[0x04], b"1"]));
    let identity = b(b"client-7");
    assert_eq!(
        final_.encode_routed(&identity, MAJ),
        f(&[b"client-7", b"", b"MDPC02", &[0x04], b"1"])
    );
    let limits = Limits::default();
    assert_eq!(
        ClientReply::decode(&final_.encode(RFC), RFC, &limits),
        Ok(final_.clone())
    );
    // Decoded from majortomo's form, the service is not there to read.
    assert_eq!(
        ClientReply::decode(&final_.encode(MAJ), MAJ, &limits),
        Ok(ClientReply {
            service: Bytes::new(),
            ..final_
        })
    );
}

#[test]
fn worker_commands_in_both_dialects() {
    let limits = Limits::default();
    let cases: Vec<(WorkerMessage, Vec<Bytes>)> = vec![
        (
            WorkerMessage::Ready {
                service: b(b"echo"),
            },
            f(&[b"MDPW02", &[0x01], b"echo"]),
        ),
        (
            WorkerMessage::Reply {
                part: Part::Partial,
                client: b(b"c1"),
                body: vec![b(b"p")],
            },
            f(&[b"MDPW02", &[0x03], b"c1", b"", b"p"]),
        ),
        (
            WorkerMessage::Reply {
                part: Part::Final,
                client: b(b"c1"),
                body: vec![b(b"x"), b(b"y")],
            },
            f(&[b"MDPW02", &[0x04], b"c1", b"", b"x", b"y"]),
        ),
        (WorkerMessage::Heartbeat, f(&[b"MDPW02", &[0x05]])),
        (WorkerMessage::Disconnect, f(&[b"MDPW02", &[0x06]])),
    ];
    for (message, rfc) in cases {
        assert_eq!(message.encode(RFC), rfc);
        // majortomo's worker: send_multipart((b'', WORKER_HEADER, message_type) + args)
        let mut maj = vec![Bytes::new()];
        maj.extend(rfc.iter().cloned());
        assert_eq!(message.encode(MAJ), maj);
        assert_eq!(
            WorkerMessage::decode(&rfc, RFC, &limits),
            Ok(message.clone())
        );
        assert_eq!(WorkerMessage::decode(&maj, MAJ, &limits), Ok(message));
    }
    // A second frame after HEARTBEAT, a REQUEST from a worker, an empty client address.
    assert!(matches!(
        WorkerMessage::decode(&f(&[b"MDPW02", &[0x05], b"x"]), RFC, &limits),
        Err(DecodeError::WrongFrameCount { .. })
    ));
    assert_eq!(
        WorkerMessage::decode(&f(&[b"MDPW02", &[0x02], b"c", b"", b"x"]), RFC, &limits),
        Err(DecodeError::UnknownCommand(0x02))
    );
    assert_eq!(
        WorkerMessage::decode(&f(&[b"MDPW02", &[0x04], b"", b"", b"x"]), RFC, &limits),
        Err(DecodeError::MissingClientAddress)
    );
    assert_eq!(
        WorkerMessage::decode(&f(&[b"x", b"MDPW02", &[0x05]]), MAJ, &limits),
        Err(DecodeError::MissingEmptyFrame(1))
    );
}

#[test]
fn broker_commands_in_both_dialects() {
    let limits = Limits::default();
    let request = BrokerMessage::Request {
        client: b(b"c1"),
        body: vec![b(b"q")],
    };
    // "REQUEST: MDPW02, 0x02, Client address, Empty, Request body"
    let rfc = f(&[b"MDPW02", &[0x02], b"c1", b"", b"q"]);
    // majortomo's worker reads: empty, MDPW02, REQUEST, then frames[0] client, frames[2:] body.
    let maj = f(&[b"", b"MDPW02", &[0x02], b"c1", b"", b"q"]);
    assert_eq!(request.encode(RFC), rfc);
    assert_eq!(request.encode(MAJ), maj);
    assert_eq!(
        request.encode_routed(&b(b"w"), RFC),
        f(&[b"w", b"MDPW02", &[0x02], b"c1", b"", b"q"])
    );
    assert_eq!(
        BrokerMessage::decode(&rfc, RFC, &limits),
        Ok(request.clone())
    );
    assert_eq!(BrokerMessage::decode(&maj, MAJ, &limits), Ok(request));
    assert_eq!(
        BrokerMessage::Heartbeat.encode(MAJ),
        f(&[b"", b"MDPW02", &[0x05]])
    );
    assert_eq!(
        BrokerMessage::Disconnect.encode(RFC),
        f(&[b"MDPW02", &[0x06]])
    );
}

#[test]
fn a_broker_tells_versions_and_dialects_apart_by_the_first_frames() {
    use Sender::{Client, Worker};
    type Case<'a> = (&'a [&'a [u8]], Option<(Version, Sender)>);
    let cases: [Case<'_>; 7] = [
        (
            &[b"", b"MDPC01", b"echo", b"x"],
            Some((Version::V01, Client)),
        ),
        (
            &[b"", b"MDPW01", &[0x01], b"echo"],
            Some((Version::V01, Worker)),
        ),
        (
            &[b"MDPC02", &[0x01], b"echo", b"x"],
            Some((Version::V02(RFC), Client)),
        ),
        (&[b"MDPW02", &[0x05]], Some((Version::V02(RFC), Worker))),
        (
            &[b"", b"MDPC02", &[0x02], b"echo", b"x"],
            Some((Version::V02(MAJ), Client)),
        ),
        (
            &[b"", b"MDPW02", &[0x05]],
            Some((Version::V02(MAJ), Worker)),
        ),
        (&[b"", b"MDPX01"], None),
    ];
    for (frames, expected) in cases {
        assert_eq!(classify(&f(frames)), expected, "{frames:?}");
    }
    assert_eq!(classify(&[]), None);
    assert_eq!(classify(&f(&[b"MDPC01"])), None);
}

fn frame() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn nonempty() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 1..12).prop_map(Bytes::from)
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(RFC), Just(MAJ)]
}

fn body() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(frame(), 1..5)
}

proptest! {
    /// Whatever is encoded decodes to itself, in either dialect, and is classified as it was
    /// written.
    #[test]
    fn v02_messages_round_trip(
        d in dialect(),
        service in nonempty(),
        client in nonempty(),
        body in body(),
        last in any::<bool>(),
    ) {
        let limits = Limits::default();
        let part = if last { Part::Final } else { Part::Partial };
        let request = ClientRequest { service: service.clone(), body: body.clone() };
        prop_assert_eq!(ClientRequest::decode(&request.encode(d), d, &limits), Ok(request.clone()));
        prop_assert_eq!(classify(&request.encode(d)), Some((Version::V02(d), Sender::Client)));
        let reply = ClientReply { part, service: service.clone(), body: body.clone() };
        let decoded = ClientReply::decode(&reply.encode(d), d, &limits).unwrap();
        prop_assert_eq!(decoded.part, part);
        prop_assert_eq!(&decoded.body, &body);
        for message in [
            WorkerMessage::Ready { service: service.clone() },
            WorkerMessage::Reply { part, client: client.clone(), body: body.clone() },
            WorkerMessage::Heartbeat,
            WorkerMessage::Disconnect,
        ] {
            prop_assert_eq!(WorkerMessage::decode(&message.encode(d), d, &limits), Ok(message.clone()));
            prop_assert_eq!(classify(&message.encode(d)), Some((Version::V02(d), Sender::Worker)));
        }
        let request = BrokerMessage::Request { client, body };
        prop_assert_eq!(BrokerMessage::decode(&request.encode(d), d, &limits), Ok(request));
    }

    /// Arbitrary frames never panic a decoder.
    #[test]
    fn arbitrary_frames_get_an_error_not_a_panic(
        frames in prop::collection::vec(frame(), 0..8),
        d in dialect(),
    ) {
        let limits = Limits::default();
        let _ = ClientRequest::decode(&frames, d, &limits);
        let _ = ClientReply::decode(&frames, d, &limits);
        let _ = WorkerMessage::decode(&frames, d, &limits);
        let _ = BrokerMessage::decode(&frames, d, &limits);
        let _ = classify(&frames);
    }
}
