#![no_main]
//! The front end's two readers. On a link: any bytes from the server, cut into reads anywhere,
//! never panic the decoder, never make it reserve for more than its limits, and decode as the
//! same bytes in one read. On a peer: any bytes never panic the assembler, keep its budget within
//! the limit and back to zero when it is dropped, and give the same messages (and verdict) as
//! the same bytes in one read.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use majordomo_zmtp::inspect::FrameLimits;
use majordomo_zmtp::mux::assemble::{Assembler, Step};
use majordomo_zmtp::mux::budget::Budget;
use majordomo_zmtp::mux::link::{
    encode_greeting, encode_ready, LinkDecoder, LinkEvent, LinkLimits,
};

const LINK: LinkLimits = LinkLimits {
    max_frame: 4096,
    max_message: 16384,
    max_frames: 16,
};
const PEER: FrameLimits = FrameLimits {
    max_frame: 4096,
    max_message: 16384,
    max_frames: 16,
};

/// Reads of the sizes in `cuts`, cycled; the whole rest at once when there are none.
fn reads<'a>(stream: &'a [u8], cuts: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = cuts.next().map_or(rest.len(), |&c| usize::from(c).max(1)).min(rest.len());
        let (read, after) = rest.split_at(n);
        rest = after;
        Some(read)
    })
}

fn link(stream: &[u8], cuts: &[u8]) -> (Vec<LinkEvent>, Option<String>) {
    let mut decoder = LinkDecoder::new(LINK);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for read in reads(stream, cuts) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => return (events, Some(error.to_string())),
            }
        }
        // What it reserves follows its limits, never a size the server announces.
        assert!(buf.capacity() <= 2 * (stream.len() + LINK.max_frame + 64), "{}", buf.capacity());
    }
    (events, None)
}

fn peer(stream: &[u8], cuts: &[u8]) -> (Vec<String>, Option<String>) {
    let budget = Budget::new(64 * 1024);
    let mut assembler = Assembler::new(PEER, budget.clone(), Duration::from_secs(1));
    let now = Instant::now();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut verdict = None;
    'reads: for read in reads(stream, cuts) {
        buf.extend_from_slice(read);
        loop {
            let step = assembler.next(now, &buf);
            assert!(budget.used() <= budget.limit());
            let consumed = match step {
                Err(violation) => {
                    verdict = Some(violation.to_string());
                    break 'reads;
                }
                Ok(Step::Pending) => break,
                // Every message is dropped at once, and the largest fits: never blocked.
                Ok(Step::Blocked) => panic!("blocked with nothing held"),
                Ok(Step::Consumed(n)) => n,
                Ok(Step::Ready { consumed, ready }) => {
                    seen.push(format!("{ready:?}"));
                    consumed
                }
                Ok(Step::Ping { consumed, context }) => {
                    seen.push(format!("{context:?}"));
                    consumed
                }
                Ok(Step::Message { consumed, message }) => {
                    seen.push(format!("{:?}", message.frames));
                    consumed
                }
            };
            buf.drain(..consumed);
        }
    }
    drop(assembler);
    assert_eq!(budget.used(), 0);
    (seen, verdict)
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the reader and whether a valid handshake goes in front (so that
    // the fuzzer reaches frames quickly); the next bytes choose the read sizes.
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let (cuts, body) = rest.split_at(rest.len().min(8));
    let mut stream = BytesMut::new();
    let on_link = choice & 1 == 0;
    if choice & 2 != 0 {
        encode_greeting(&mut stream);
        encode_ready(&mut stream, if on_link { b"ROUTER" } else { b"DEALER" }, None);
    }
    stream.extend_from_slice(body);
    if on_link {
        assert_eq!(link(&stream, cuts), link(&stream, &[]));
    } else {
        assert_eq!(peer(&stream, cuts), peer(&stream, &[]));
    }
});
