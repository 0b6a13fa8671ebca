#![no_main]
//! What a worker reads from its broker.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::mdp::BrokerMessage;
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok(msg) = BrokerMessage::decode(&frames, &limits) {
        assert_eq!(BrokerMessage::decode(&msg.encode(), &limits), Ok(msg));
    }
});
