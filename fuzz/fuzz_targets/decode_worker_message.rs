#![no_main]
//! What a broker reads on a workers-only endpoint, after the ROUTER identity.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::mdp::WorkerMessage;
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok(msg) = WorkerMessage::decode(&frames, &limits) {
        assert_eq!(WorkerMessage::decode(&msg.encode(), &limits), Ok(msg));
    }
});
