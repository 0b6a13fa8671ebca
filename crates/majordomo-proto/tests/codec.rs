//! The one codec for every MDP version: golden frames for every command in every version and
//! dialect, and round trips (`decode(encode(x)) == x`) over all of them.

use bytes::Bytes;
use majordomo_proto::codec::{
    classify, Dialect, FromWorker, Inbound, Part, Reply, Request, Sender, ToWorker, Version,
};
use majordomo_proto::{EncodeError, Limits};
use proptest::prelude::*;

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|x| Bytes::copy_from_slice(x)).collect()
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

const V01: Version = Version::V01;
const RFC: Version = Version::V02(Dialect::Rfc18);
const MAJ: Version = Version::V02(Dialect::Majortomo);
const VERSIONS: [Version; 3] = [V01, RFC, MAJ];

#[test]
fn client_request_golden_frames() {
    let request = Request {
        service: b(b"echo"),
        body: vec![b(b"a")],
    };
    let golden = [
        (V01, f(&[b"", b"MDPC01", b"echo", b"a"])),
        (RFC, f(&[b"MDPC02", &[0x01], b"echo", b"a"])),
        (MAJ, f(&[b"", b"MDPC02", &[0x02], b"echo", b"a"])),
    ];
    for (version, frames) in golden {
        assert_eq!(request.encode(version), frames, "{version:?}");
        let limits = Limits::default();
        assert_eq!(
            Request::decode(&frames, version, &limits),
            Ok(request.clone())
        );
        assert_eq!(
            Inbound::decode(&frames, &limits),
            Ok((version, Inbound::Client(request.clone())))
        );
        assert_eq!(classify(&frames), Some((version, Sender::Client)));
    }
}

#[test]
fn client_reply_golden_frames() {
    let reply = |part| Reply {
        part,
        service: b(b"echo"),
        body: vec![b(b"r")],
    };
    let id = b(b"c");
    let golden = [
        (
            V01,
            Part::Final,
            Ok(f(&[b"c", b"", b"MDPC01", b"echo", b"r"])),
        ),
        (V01, Part::Partial, Err(EncodeError::PartialInV01)),
        (
            RFC,
            Part::Partial,
            Ok(f(&[b"c", b"MDPC02", &[0x02], b"echo", b"r"])),
        ),
        (
            RFC,
            Part::Final,
            Ok(f(&[b"c", b"MDPC02", &[0x03], b"echo", b"r"])),
        ),
        // majortomo's replies to clients carry no service frame.
        (
            MAJ,
            Part::Partial,
            Ok(f(&[b"c", b"", b"MDPC02", &[0x03], b"r"])),
        ),
        (
            MAJ,
            Part::Final,
            Ok(f(&[b"c", b"", b"MDPC02", &[0x04], b"r"])),
        ),
    ];
    for (version, part, frames) in golden {
        assert_eq!(
            reply(part).encode(Some(&id), version),
            frames,
            "{version:?} {part:?}"
        );
        if let Ok(frames) = frames {
            let decoded = Reply::decode(&frames[1..], version, &Limits::default()).unwrap();
            let service = if version == MAJ {
                Bytes::new()
            } else {
                b(b"echo")
            };
            assert_eq!(
                decoded,
                Reply {
                    service,
                    ..reply(part)
                }
            );
        }
    }
}

#[test]
fn worker_command_golden_frames() {
    let ready = FromWorker::Ready {
        service: b(b"echo"),
    };
    let reply = |part| FromWorker::Reply {
        part,
        client: b(b"c"),
        body: vec![b(b"r")],
    };
    let golden: Vec<(Version, FromWorker, Result<Vec<Bytes>, EncodeError>)> = vec![
        (
            V01,
            ready.clone(),
            Ok(f(&[b"", b"MDPW01", &[0x01], b"echo"])),
        ),
        (
            V01,
            reply(Part::Final),
            Ok(f(&[b"", b"MDPW01", &[0x03], b"c", b"", b"r"])),
        ),
        (V01, reply(Part::Partial), Err(EncodeError::PartialInV01)),
        (
            V01,
            FromWorker::Heartbeat,
            Ok(f(&[b"", b"MDPW01", &[0x04]])),
        ),
        (
            V01,
            FromWorker::Disconnect,
            Ok(f(&[b"", b"MDPW01", &[0x05]])),
        ),
        (RFC, ready.clone(), Ok(f(&[b"MDPW02", &[0x01], b"echo"]))),
        (
            RFC,
            reply(Part::Partial),
            Ok(f(&[b"MDPW02", &[0x03], b"c", b"", b"r"])),
        ),
        (
            RFC,
            reply(Part::Final),
            Ok(f(&[b"MDPW02", &[0x04], b"c", b"", b"r"])),
        ),
        (RFC, FromWorker::Heartbeat, Ok(f(&[b"MDPW02", &[0x05]]))),
        (RFC, FromWorker::Disconnect, Ok(f(&[b"MDPW02", &[0x06]]))),
        (MAJ, ready, Ok(f(&[b"", b"MDPW02", &[0x01], b"echo"]))),
        (
            MAJ,
            reply(Part::Partial),
            Ok(f(&[b"", b"MDPW02", &[0x03], b"c", b"", b"r"])),
        ),
        (
            MAJ,
            reply(Part::Final),
            Ok(f(&[b"", b"MDPW02", &[0x04], b"c", b"", b"r"])),
        ),
        (
            MAJ,
            FromWorker::Heartbeat,
            Ok(f(&[b"", b"MDPW02", &[0x05]])),
        ),
        (
            MAJ,
            FromWorker::Disconnect,
            Ok(f(&[b"", b"MDPW02", &[0x06]])),
        ),
    ];
    let limits = Limits::default();
    for (version, command, frames) in golden {
        assert_eq!(command.encode(version), frames, "{version:?} {command:?}");
        if let Ok(frames) = frames {
            assert_eq!(
                FromWorker::decode(&frames, version, &limits),
                Ok(command.clone())
            );
            assert_eq!(
                Inbound::decode(&frames, &limits),
                Ok((version, Inbound::Worker(command)))
            );
            assert_eq!(classify(&frames), Some((version, Sender::Worker)));
        }
    }
}

#[test]
fn broker_command_golden_frames() {
    let request = ToWorker::Request {
        client: b(b"c"),
        body: vec![b(b"q")],
    };
    let id = b(b"w");
    let golden = [
        (
            V01,
            request.clone(),
            f(&[b"w", b"", b"MDPW01", &[0x02], b"c", b"", b"q"]),
        ),
        (
            V01,
            ToWorker::Heartbeat,
            f(&[b"w", b"", b"MDPW01", &[0x04]]),
        ),
        (
            V01,
            ToWorker::Disconnect,
            f(&[b"w", b"", b"MDPW01", &[0x05]]),
        ),
        (
            RFC,
            request.clone(),
            f(&[b"w", b"MDPW02", &[0x02], b"c", b"", b"q"]),
        ),
        (RFC, ToWorker::Heartbeat, f(&[b"w", b"MDPW02", &[0x05]])),
        (RFC, ToWorker::Disconnect, f(&[b"w", b"MDPW02", &[0x06]])),
        (
            MAJ,
            request,
            f(&[b"w", b"", b"MDPW02", &[0x02], b"c", b"", b"q"]),
        ),
        (
            MAJ,
            ToWorker::Heartbeat,
            f(&[b"w", b"", b"MDPW02", &[0x05]]),
        ),
        (
            MAJ,
            ToWorker::Disconnect,
            f(&[b"w", b"", b"MDPW02", &[0x06]]),
        ),
    ];
    for (version, command, frames) in golden {
        assert_eq!(
            command.encode(Some(&id), version),
            frames,
            "{version:?} {command:?}"
        );
        assert_eq!(
            command.encode(None, version),
            frames[1..],
            "{version:?} {command:?}"
        );
        assert_eq!(
            ToWorker::decode(&frames[1..], version, &Limits::default()),
            Ok(command)
        );
    }
}

#[test]
fn a_command_read_in_another_version_is_an_error() {
    let limits = Limits::default();
    for encoded in VERSIONS {
        for read in VERSIONS.into_iter().filter(|v| *v != encoded) {
            let frames = FromWorker::Heartbeat.encode(encoded).unwrap();
            assert!(
                FromWorker::decode(&frames, read, &limits).is_err(),
                "{encoded:?} read as {read:?}"
            );
            let frames = ToWorker::Heartbeat.encode(None, encoded);
            assert!(ToWorker::decode(&frames, read, &limits).is_err());
        }
    }
}

fn frame() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

/// A frame as MDP peers send them, most often one of the protocol's own (headers, command
/// numbers, an empty delimiter), so that arbitrary sequences decode often enough to test what
/// follows a successful decode.
fn protocol_frame() -> impl Strategy<Value = Bytes> {
    const TOKENS: &[&[u8]] = &[
        b"",
        b"MDPC01",
        b"MDPW01",
        b"MDPC02",
        b"MDPW02",
        b"\x01",
        b"\x02",
        b"\x03",
        b"\x04",
        b"\x05",
        b"\x06",
        b"echo",
        b"mmi.service",
    ];
    prop_oneof![
        4 => prop::sample::select(TOKENS).prop_map(Bytes::from_static),
        1 => frame(),
    ]
}

/// Frames that begin as some command of some version does (a header, perhaps the empty
/// delimiter, a command number or a service) and go on with anything: most decode or fail
/// late, so the decoders' every branch is reached.
fn shaped_frames() -> impl Strategy<Value = Vec<Bytes>> {
    const HEADS: &[&[&[u8]]] = &[
        &[b"MDPC01"],
        &[b"", b"MDPC01"],
        &[b"MDPC02", b"\x01"],
        &[b"", b"MDPC02", b"\x01"],
        &[b"MDPC02", b"\x02"],
        &[b"MDPC02", b"\x03"],
        &[b"MDPW01"],
        &[b"", b"MDPW01"],
        &[b"MDPW02"],
        &[b"", b"MDPW02"],
    ];
    (
        prop::sample::select(HEADS),
        prop::collection::vec(protocol_frame(), 0..6),
    )
        .prop_map(|(head, tail)| {
            head.iter()
                .map(|f| Bytes::from_static(f))
                .chain(tail)
                .collect()
        })
}

fn nonempty() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 1..8).prop_map(Bytes::from)
}

fn body() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(frame(), 1..4)
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(VERSIONS.to_vec())
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![Just(Part::Partial), Just(Part::Final)]
}

fn from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        nonempty().prop_map(|service| FromWorker::Ready { service }),
        (part(), nonempty(), body()).prop_map(|(part, client, body)| FromWorker::Reply {
            part,
            client,
            body
        }),
        Just(FromWorker::Heartbeat),
        Just(FromWorker::Disconnect),
    ]
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (nonempty(), body()).prop_map(|(client, body)| ToWorker::Request { client, body }),
        Just(ToWorker::Heartbeat),
        Just(ToWorker::Disconnect),
    ]
}

proptest! {
    #[test]
    fn every_command_round_trips_in_every_version(
        version in version(),
        service in nonempty(),
        body in body(),
        part in part(),
        worker in from_worker(),
        broker in to_worker(),
    ) {
        let limits = Limits::default();
        let request = Request { service: service.clone(), body: body.clone() };
        let frames = request.encode(version);
        prop_assert_eq!(Request::decode(&frames, version, &limits), Ok(request.clone()));
        prop_assert_eq!(Inbound::decode(&frames, &limits), Ok((version, Inbound::Client(request))));

        let reply = Reply { part, service, body };
        match (version, reply.encode(None, version)) {
            (Version::V01, Err(error)) => {
                prop_assert_eq!(part, Part::Partial);
                prop_assert_eq!(error, EncodeError::PartialInV01);
            }
            (_, Err(error)) => prop_assert!(false, "{error}"),
            (_, Ok(frames)) => {
                let decoded = Reply::decode(&frames, version, &limits).unwrap();
                let service = if version == MAJ { Bytes::new() } else { reply.service.clone() };
                prop_assert_eq!(decoded, Reply { service, ..reply });
            }
        }

        match worker.encode(version) {
            Ok(frames) => {
                prop_assert_eq!(FromWorker::decode(&frames, version, &limits), Ok(worker.clone()));
                prop_assert_eq!(Inbound::decode(&frames, &limits), Ok((version, Inbound::Worker(worker))));
            }
            Err(error) => {
                prop_assert_eq!(version, V01);
                prop_assert_eq!(error, EncodeError::PartialInV01);
                let is_partial = matches!(worker, FromWorker::Reply { part: Part::Partial, .. });
                prop_assert!(is_partial);
            }
        }

        let frames = broker.encode(None, version);
        prop_assert_eq!(ToWorker::decode(&frames, version, &limits), Ok(broker));
    }

    #[test]
    fn arbitrary_frames_are_an_error_or_a_command_that_round_trips(
        frames in prop_oneof![
            3 => shaped_frames(),
            1 => prop::collection::vec(protocol_frame(), 0..8),
        ],
        v in version(),
    ) {
        let limits = Limits::default();
        if let Ok((v, Inbound::Client(m))) = Inbound::decode(&frames, &limits) {
            prop_assert_eq!(Request::decode(&m.encode(v), v, &limits), Ok(m));
        }
        if let Ok(m) = Request::decode(&frames, v, &limits) {
            prop_assert_eq!(Request::decode(&m.encode(v), v, &limits), Ok(m));
        }
        if let Ok(m) = Reply::decode(&frames, v, &limits) {
            let again = m.encode(None, v).expect("a decoded reply has a form in its version");
            prop_assert_eq!(Reply::decode(&again, v, &limits), Ok(m));
        }
        if let Ok(m) = FromWorker::decode(&frames, v, &limits) {
            let again = m.encode(v).expect("a decoded command has a form in its version");
            prop_assert_eq!(FromWorker::decode(&again, v, &limits), Ok(m));
        }
        if let Ok(m) = ToWorker::decode(&frames, v, &limits) {
            prop_assert_eq!(ToWorker::decode(&m.encode(None, v), v, &limits), Ok(m));
        }
    }

    #[test]
    fn well_formed_frames_of_any_command_round_trip(
        v in version(),
        worker in from_worker(),
        broker in to_worker(),
    ) {
        // From the frames side: what a peer sends, decoded and sent again, is the same frames.
        let limits = Limits::default();
        if let Ok(frames) = worker.encode(v) {
            let decoded = FromWorker::decode(&frames, v, &limits).unwrap();
            prop_assert_eq!(decoded.encode(v), Ok(frames));
        }
        let frames = broker.encode(None, v);
        let decoded = ToWorker::decode(&frames, v, &limits).unwrap();
        prop_assert_eq!(decoded.encode(None, v), frames);
    }
}
