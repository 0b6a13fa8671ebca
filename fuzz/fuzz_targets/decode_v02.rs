#![no_main]
//! 18/MDP (v0.2), every message type in both dialects: decoding never panics, and whatever
//! decodes re-encodes to frames that decode to the same message.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::mdp2::{
    classify, BrokerMessage, ClientReply, ClientRequest, Dialect, WorkerMessage,
};
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    let _ = classify(&frames);
    for d in [Dialect::Rfc18, Dialect::Majortomo] {
        if let Ok(m) = ClientRequest::decode(&frames, d, &limits) {
            assert_eq!(ClientRequest::decode(&m.encode(d), d, &limits), Ok(m));
        }
        if let Ok(m) = ClientReply::decode(&frames, d, &limits) {
            assert_eq!(ClientReply::decode(&m.encode(d), d, &limits), Ok(m));
        }
        if let Ok(m) = WorkerMessage::decode(&frames, d, &limits) {
            assert_eq!(WorkerMessage::decode(&m.encode(d), d, &limits), Ok(m));
        }
        if let Ok(m) = BrokerMessage::decode(&frames, d, &limits) {
            assert_eq!(BrokerMessage::decode(&m.encode(d), d, &limits), Ok(m));
        }
    }
});
