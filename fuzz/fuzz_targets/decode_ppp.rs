#![no_main]
//! 6/PPP, in either direction.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::ppp::PppMessage;
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok(msg) = PppMessage::decode(&frames, &limits) {
        assert_eq!(PppMessage::decode(&msg.encode(), &limits), Ok(msg));
    }
});
