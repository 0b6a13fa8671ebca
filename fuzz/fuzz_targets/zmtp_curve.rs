#![no_main]
//! CurveZMQ from an untrusted peer. Any bytes as HELLO, INITIATE, WELCOME, READY or MESSAGE never
//! panic the handshake or the boxes. Any bytes after a CURVE greeting never panic the front
//! end's codec, keep its budget within the limit and back to zero when it is dropped, and give
//! the same steps and verdict whatever the reads they arrive in.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use majordomo_zmtp::curve::{encode_greeting, CurveClient, CurveKeyPair, CurveServer};
use majordomo_zmtp::inspect::FrameLimits;
use majordomo_zmtp::mux::assemble::Step;
use majordomo_zmtp::mux::budget::Budget;
use majordomo_zmtp::mux::secure::{ClientFilter, CurveSecurity, PeerCodec};

const LIMITS: FrameLimits = FrameLimits {
    max_frame: 4096,
    max_message: 16384,
    max_frames: 16,
};

fn keys() -> Arc<CurveKeyPair> {
    static KEYS: OnceLock<Arc<CurveKeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(CurveKeyPair::from_secret_bytes([7; 32])))
        .clone()
}

/// The handshake's parsers on raw bodies.
fn parsers(body: &[u8]) {
    let mut rng = crypto_box::aead::OsRng;
    let mut out = BytesMut::new();
    let mut server = CurveServer::new(keys());
    let _ = server.hello(&mut rng, body, &mut out);
    let _ = server.initiate(body);
    let mut client = CurveClient::new(&mut rng, keys().public(), keys());
    client.hello(&mut out);
    let _ = client.welcome(&mut rng, body, b"", &mut out);
    let _ = client.ready(body);
}

fn codec(stream: &[u8], cuts: &[u8]) -> (Vec<String>, Option<String>) {
    let budget = Budget::new(64 * 1024);
    let security = Arc::new(CurveSecurity {
        keys: keys(),
        clients: ClientFilter::default(),
        allow_null: false,
    });
    let mut codec = PeerCodec::new(LIMITS, budget.clone(), Duration::from_secs(1), Some(security));
    let now = Instant::now();
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let mut verdict = None;
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    'reads: while !rest.is_empty() {
        let n = cuts.next().map_or(rest.len(), |&c| usize::from(c).max(1)).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let mut out = BytesMut::new();
            let step = codec.next(now, &mut buf, &mut out);
            assert!(budget.used() <= budget.limit());
            let consumed = match step {
                Err(violation) => {
                    verdict = Some(violation.rule().as_str().to_string());
                    break 'reads;
                }
                Ok(Step::Pending) | Ok(Step::Blocked) => break,
                Ok(Step::Consumed(n)) => n,
                Ok(Step::Ready { consumed, .. }) => consumed,
                Ok(Step::Ping { consumed, .. }) => consumed,
                Ok(Step::Message { consumed, message }) => {
                    seen.push(format!("{:?}", message.frames));
                    consumed
                }
            };
            let _ = buf.split_to(consumed);
        }
    }
    drop(codec);
    assert_eq!(budget.used(), 0);
    (seen, verdict)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    if choice & 1 == 0 {
        parsers(rest);
        return;
    }
    let (cuts, body) = rest.split_at(rest.len().min(8));
    let mut stream = BytesMut::new();
    if choice & 2 != 0 {
        encode_greeting(&mut stream, false);
    }
    stream.extend_from_slice(body);
    assert_eq!(codec(&stream, cuts), codec(&stream, &[]));
});
