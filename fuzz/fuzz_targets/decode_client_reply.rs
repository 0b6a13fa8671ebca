#![no_main]
//! What a client reads from its broker.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::mdp::ClientReply;
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok(msg) = ClientReply::decode(&frames, &limits) {
        assert_eq!(ClientReply::decode(&msg.encode(), &limits), Ok(msg));
    }
});
