#![no_main]
//! The ZMTP guard's reading of a peer's stream: any bytes, cut into reads anywhere, never panic
//! the inspector, never make it hold more than a command, and get the same decisions as the same
//! bytes in one read.

use libfuzzer_sys::fuzz_target;
use majordomo_zmtp::inspect::{Action, FrameLimits, Inspector, Origin, LONG_HEADER, MAX_COMMAND};

const LIMITS: FrameLimits = FrameLimits {
    max_frame: 4096,
    max_message: 16384,
    max_frames: 16,
};

/// The bytes passed on, the PINGs answered (with where), and the verdict.
fn transcript(stream: &[u8], cuts: &[u8]) -> (Vec<u8>, Vec<(usize, Vec<u8>)>, Option<String>) {
    let mut inspector = Inspector::new(Origin::Peer, LIMITS, Some(b"\0id".to_vec()));
    let (mut out, mut pongs) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = cuts.next().map_or(rest.len(), |&c| usize::from(c).max(1)).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match inspector.next(&buf) {
                Ok(None) => break,
                Ok(Some(Action::Forward(n))) => out.extend(buf.drain(..n)),
                Ok(Some(Action::Skip(n))) => drop(buf.drain(..n)),
                Ok(Some(Action::Ping { consumed, context })) => {
                    pongs.push((out.len(), context.as_bytes().to_vec()));
                    buf.drain(..consumed);
                }
                Ok(Some(Action::Rewrite { consumed, ready })) => {
                    out.extend(ready);
                    buf.drain(..consumed);
                }
                Err(violation) => return (out, pongs, Some(violation.to_string())),
            }
        }
        assert!(buf.len() < MAX_COMMAND + LONG_HEADER, "held {} bytes", buf.len());
    }
    (out, pongs, None)
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the read sizes; half the inputs get a valid greeting in front so
    // that the fuzzer reaches the handshake and frames quickly.
    let (cuts, stream) = data.split_at(data.len().min(8));
    let mut bytes = Vec::new();
    if cuts.first().is_some_and(|c| c & 1 == 1) {
        bytes.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 1]);
        bytes.extend_from_slice(b"NULL");
        bytes.resize(64, 0);
    }
    bytes.extend_from_slice(stream);
    assert_eq!(transcript(&bytes, cuts), transcript(&bytes, &[]));
});
