//! Property tests: encode then decode gives the message back; arbitrary frames never panic.

use bytes::Bytes;
use majordomo_proto::mdp::{
    BrokerInbound, BrokerMessage, ClientReply, ClientRequest, WorkerMessage,
};
use majordomo_proto::ppp::{Envelope, PppMessage};
use majordomo_proto::{mdp, Limits};
use proptest::prelude::*;

fn frame() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn nonempty() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 1..48).prop_map(Bytes::from)
}

fn body() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(frame(), 1..6)
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    prop_oneof![
        nonempty().prop_map(|service| WorkerMessage::Ready { service }),
        (nonempty(), body()).prop_map(|(client, body)| WorkerMessage::Reply { client, body }),
        Just(WorkerMessage::Heartbeat),
        Just(WorkerMessage::Disconnect),
    ]
}

fn broker_message() -> impl Strategy<Value = BrokerMessage> {
    prop_oneof![
        (nonempty(), body()).prop_map(|(client, body)| BrokerMessage::Request { client, body }),
        Just(BrokerMessage::Heartbeat),
        Just(BrokerMessage::Disconnect),
    ]
}

fn ppp_message() -> impl Strategy<Value = PppMessage> {
    prop_oneof![
        Just(PppMessage::Ready),
        Just(PppMessage::Heartbeat),
        (prop::collection::vec(nonempty(), 0..3), body())
            .prop_map(|(address, body)| PppMessage::Payload(Envelope { address, body })),
    ]
}

/// Frames shaped like an MDP/Worker command, valid or nearly: a right or wrong frame 0, header
/// and command byte, then a few frames of which some are empty.
fn worker_shaped_frames() -> impl Strategy<Value = Vec<Bytes>> {
    let frame0 = prop_oneof![4 => Just(Bytes::new()), 1 => nonempty()];
    let header = prop_oneof![
        4 => Just(Bytes::from_static(b"MDPW01")),
        1 => Just(Bytes::from_static(b"MDPC01")),
        1 => frame(),
    ];
    let command = prop_oneof![
        4 => (1u8..=5).prop_map(|c| Bytes::from(vec![c])),
        1 => prop::collection::vec(any::<u8>(), 0..3).prop_map(Bytes::from),
    ];
    let rest = prop::collection::vec(prop_oneof![Just(Bytes::new()), frame()], 0..6);
    (frame0, header, command, rest).prop_map(|(frame0, header, command, rest)| {
        let mut frames = vec![frame0, header, command];
        frames.extend(rest);
        frames
    })
}

proptest! {
    #[test]
    fn decoded_worker_messages_reencode_to_themselves(frames in worker_shaped_frames()) {
        // What a broker decodes on a workers-only endpoint encodes back to frames that decode to
        // the same command, and a shared endpoint reads the same frames the same way.
        let limits = Limits::default();
        if let Ok(msg) = WorkerMessage::decode(&frames, &limits) {
            prop_assert_eq!(WorkerMessage::decode(&msg.encode(), &limits), Ok(msg.clone()));
            prop_assert_eq!(BrokerInbound::decode(&frames, &limits), Ok(BrokerInbound::Worker(msg)));
        }
    }

    #[test]
    fn client_request_roundtrip(service in nonempty(), body in body()) {
        let msg = ClientRequest { service, body };
        let wire = msg.encode();
        prop_assert_eq!(ClientRequest::decode(&wire, &Limits::default()), Ok(msg.clone()));
        prop_assert_eq!(BrokerInbound::decode(&wire, &Limits::default()), Ok(BrokerInbound::Client(msg)));
    }

    #[test]
    fn client_reply_roundtrip(service in nonempty(), body in body(), id in nonempty()) {
        let msg = ClientReply { service, body };
        prop_assert_eq!(ClientReply::decode(&msg.encode(), &Limits::default()), Ok(msg.clone()));
        let routed = msg.encode_routed(&id);
        let (got_id, rest) = mdp::split_identity(&routed).unwrap();
        prop_assert_eq!(got_id, &id);
        prop_assert_eq!(ClientReply::decode(rest, &Limits::default()), Ok(msg));
    }

    #[test]
    fn worker_message_roundtrip(msg in worker_message()) {
        let wire = msg.encode();
        prop_assert_eq!(WorkerMessage::decode(&wire, &Limits::default()), Ok(msg.clone()));
        prop_assert_eq!(BrokerInbound::decode(&wire, &Limits::default()), Ok(BrokerInbound::Worker(msg)));
    }

    #[test]
    fn broker_message_roundtrip(msg in broker_message(), id in nonempty()) {
        prop_assert_eq!(BrokerMessage::decode(&msg.encode(), &Limits::default()), Ok(msg.clone()));
        let routed = msg.encode_routed(&id);
        prop_assert_eq!(BrokerMessage::decode(&routed[1..], &Limits::default()), Ok(msg));
    }

    #[test]
    fn ppp_roundtrip(msg in ppp_message()) {
        prop_assert_eq!(PppMessage::decode(&msg.encode(), &Limits::default()), Ok(msg));
    }

    #[test]
    fn arbitrary_frames_never_panic(frames in prop::collection::vec(frame(), 0..10)) {
        let limits = Limits::default();
        let _ = BrokerInbound::decode(&frames, &limits);
        let _ = ClientRequest::decode(&frames, &limits);
        let _ = WorkerMessage::decode(&frames, &limits);
        let _ = BrokerMessage::decode(&frames, &limits);
        let _ = ClientReply::decode(&frames, &limits);
        let _ = PppMessage::decode(&frames, &limits);
        let _ = mdp::split_identity(&frames);
    }

    #[test]
    fn mdp_shaped_frames_never_panic(
        header in prop_oneof![Just(Bytes::from_static(b"MDPC01")), Just(Bytes::from_static(b"MDPW01")), frame()],
        cmd in prop::collection::vec(any::<u8>(), 0..3),
        rest in prop::collection::vec(frame(), 0..6),
    ) {
        let mut frames = vec![Bytes::new(), header, Bytes::from(cmd)];
        frames.extend(rest);
        let limits = Limits::default();
        let _ = BrokerInbound::decode(&frames, &limits);
        let _ = WorkerMessage::decode(&frames, &limits);
        let _ = BrokerMessage::decode(&frames, &limits);
        let _ = ClientReply::decode(&frames, &limits);
    }
}
