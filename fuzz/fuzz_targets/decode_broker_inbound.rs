#![no_main]
//! What a broker reads: either sub-protocol after the ROUTER identity.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::mdp::{BrokerInbound, ClientRequest};
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok(msg) = BrokerInbound::decode(&frames, &limits) {
        let wire = match &msg {
            BrokerInbound::Client(request) => ClientRequest::encode(request),
            BrokerInbound::Worker(command) => command.encode(),
        };
        assert_eq!(BrokerInbound::decode(&wire, &limits), Ok(msg));
    }
});
