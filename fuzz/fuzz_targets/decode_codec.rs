#![no_main]
//! The one MDP codec, every command in every version and dialect: decoding never panics, and
//! whatever decodes re-encodes to frames that decode to the same command.

use libfuzzer_sys::fuzz_target;
use majordomo_proto::codec::{Dialect, FromWorker, Inbound, Reply, Request, ToWorker, Version};
use majordomo_proto::Limits;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let frames = common::frames(data);
    let limits = Limits::default();
    if let Ok((v, Inbound::Client(m))) = Inbound::decode(&frames, &limits) {
        assert_eq!(Request::decode(&m.encode(v), v, &limits), Ok(m));
    }
    for v in [
        Version::V01,
        Version::V02(Dialect::Rfc18),
        Version::V02(Dialect::Majortomo),
    ] {
        if let Ok(m) = Request::decode(&frames, v, &limits) {
            assert_eq!(Request::decode(&m.encode(v), v, &limits), Ok(m));
        }
        if let Ok(m) = Reply::decode(&frames, v, &limits) {
            let again = m
                .encode(None, v)
                .expect("a decoded reply has a form in its version");
            assert_eq!(Reply::decode(&again, v, &limits), Ok(m));
        }
        if let Ok(m) = FromWorker::decode(&frames, v, &limits) {
            let again = m
                .encode(v)
                .expect("a decoded command has a form in its version");
            assert_eq!(FromWorker::decode(&again, v, &limits), Ok(m));
        }
        if let Ok(m) = ToWorker::decode(&frames, v, &limits) {
            assert_eq!(ToWorker::decode(&m.encode(None, v), v, &limits), Ok(m));
        }
    }
});
