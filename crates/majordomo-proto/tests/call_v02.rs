//! A client call in 18/MDP (v0.2): parts gathered until the FINAL, the timeout per part, and a
//! retry that starts the gathering again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::client::{Call, CallError, CallEvent};
use majordomo_proto::mdp2::Dialect;
use majordomo_proto::Limits;

const T: Duration = Duration::from_millis(100);

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|x| Bytes::copy_from_slice(x)).collect()
}

fn call(now: Instant, dialect: Dialect) -> Call {
    let body = vec![Bytes::from_static(b"q")];
    Call::new_v02(
        now,
        Bytes::from_static(b"echo"),
        body,
        T,
        2,
        Limits::default(),
        dialect,
    )
    .unwrap()
}

#[test]
fn parts_are_gathered_until_the_final_and_the_timeout_runs_per_part() {
    let start = Instant::now();
    let mut c = call(start, Dialect::Rfc18);
    assert_eq!(c.request(), f(&[b"MDPC02", &[0x01], b"echo", b"q"]));
    assert_eq!(c.body(), f(&[b"q"]));
    let later = start + T * 3 / 4;
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x02], b"echo", b"1"])),
        None
    );
    // The deadline moved with the part: not due at the first deadline.
    assert_eq!(c.poll_timeout(), Some(later + T));
    assert_eq!(c.handle_timeout(start + T), None);
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x02], b"echo", b"2", b"3"])),
        None
    );
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x03], b"echo", b"4"])),
        Some(CallEvent::Done(Ok(f(&[b"1", b"2", b"3", b"4"]))))
    );
    assert!(c.is_done());
}

#[test]
fn majortomo_replies_have_no_service_and_a_retry_drops_the_parts_it_had() {
    let start = Instant::now();
    let mut c = call(start, Dialect::Majortomo);
    assert_eq!(c.request(), f(&[b"", b"MDPC02", &[0x02], b"echo", b"q"]));
    assert_eq!(c.body(), f(&[b"q"]));
    assert_eq!(
        c.handle_reply(&f(&[b"", b"MDPC02", &[0x03], b"lost"])),
        None
    );
    assert_eq!(
        c.handle_timeout(start + T),
        Some(CallEvent::Resend { attempt: 2 })
    );
    assert_eq!(
        c.handle_reply(&f(&[b"", b"MDPC02", &[0x04], b"whole"])),
        Some(CallEvent::Done(Ok(f(&[b"whole"]))))
    );
}

#[test]
fn a_reply_for_another_service_or_a_malformed_one_is_an_error() {
    let now = Instant::now();
    let mut c = call(now, Dialect::Rfc18);
    assert_eq!(
        c.handle_reply(&f(&[b"MDPC02", &[0x03], b"other", b"x"])),
        Some(CallEvent::Done(Err(CallError::WrongService {
            expected: Bytes::from_static(b"echo"),
            got: Bytes::from_static(b"other"),
        })))
    );
    let mut c = call(now, Dialect::Rfc18);
    assert!(matches!(
        c.handle_reply(&f(&[b"", b"MDPC01", b"echo", b"x"])),
        Some(CallEvent::Done(Err(CallError::Malformed(_))))
    ));
}

fn streamed(now: Instant) -> Call {
    call(now, Dialect::Rfc18).streamed()
}

#[test]
fn a_streamed_call_hands_out_each_part_and_ends_with_the_finals_frames() {
    let start = Instant::now();
    let mut c = streamed(start);
    let later = start + T / 2;
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x02], b"echo", b"1"])),
        Some(CallEvent::Part(f(&[b"1"])))
    );
    assert_eq!(
        c.poll_timeout(),
        Some(later + T),
        "the timeout runs per part"
    );
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x02], b"echo", b"2", b"3"])),
        Some(CallEvent::Part(f(&[b"2", b"3"])))
    );
    assert_eq!(
        c.handle_part(later, &f(&[b"MDPC02", &[0x03], b"echo", b"4"])),
        Some(CallEvent::Done(Ok(f(&[b"4"]))))
    );
    assert!(c.is_done());
}

#[test]
fn a_streamed_call_retries_before_its_first_part_and_not_after() {
    let start = Instant::now();
    let mut c = streamed(start);
    // No part yet: the Lazy Pirate retry, as for any call.
    assert_eq!(
        c.handle_timeout(start + T),
        Some(CallEvent::Resend { attempt: 2 })
    );
    let t1 = start + T + T / 2;
    assert_eq!(
        c.handle_part(t1, &f(&[b"MDPC02", &[0x02], b"echo", b"1"])),
        Some(CallEvent::Part(f(&[b"1"])))
    );
    // After a part a retry would run the request again: the call ends instead.
    assert_eq!(
        c.handle_timeout(t1 + T),
        Some(CallEvent::Done(Err(CallError::Interrupted { parts: 1 })))
    );
    // So does a lost connection, even with attempts to spare.
    let mut c = streamed(start);
    c.handle_part(start, &f(&[b"MDPC02", &[0x02], b"echo", b"1"]));
    c.handle_part(start, &f(&[b"MDPC02", &[0x02], b"echo", b"2"]));
    assert_eq!(
        c.handle_connection_lost(start),
        Some(CallEvent::Done(Err(CallError::Interrupted { parts: 2 })))
    );
}

#[test]
fn streamed_in_majortomos_dialect_and_a_v01_call_is_unchanged_by_streamed() {
    let start = Instant::now();
    let mut c = call(start, Dialect::Majortomo).streamed();
    assert_eq!(
        c.handle_part(start, &f(&[b"", b"MDPC02", &[0x03], b"1"])),
        Some(CallEvent::Part(f(&[b"1"])))
    );
    assert_eq!(
        c.handle_part(start, &f(&[b"", b"MDPC02", &[0x04], b"2"])),
        Some(CallEvent::Done(Ok(f(&[b"2"]))))
    );
    let body = vec![Bytes::from_static(b"q")];
    let echo = Bytes::from_static(b"echo");
    let mut c = Call::new(start, echo, body, T, 2, Limits::default())
        .unwrap()
        .streamed();
    assert_eq!(
        c.handle_part(start, &f(&[b"", b"MDPC01", b"echo", b"r"])),
        Some(CallEvent::Done(Ok(f(&[b"r"]))))
    );
}

#[test]
fn a_gathered_reply_is_held_to_the_limits_of_one_message() {
    let start = Instant::now();
    let new = |limits: Limits| {
        Call::new_v02(
            start,
            Bytes::from_static(b"echo"),
            vec![Bytes::from_static(b"q")],
            T,
            2,
            limits,
            Dialect::Rfc18,
        )
        .unwrap()
    };
    // Frames: PARTIALs of many empty frames count their frames, whatever their bytes.
    let mut c = new(Limits::default());
    let empties: Vec<&[u8]> = std::iter::repeat_n(&b""[..], 500).collect();
    let mut partial: Vec<&[u8]> = vec![b"MDPC02", &[0x02], b"echo"];
    partial.extend(&empties);
    assert_eq!(c.handle_part(start, &f(&partial)), None);
    assert_eq!(c.handle_part(start, &f(&partial)), None);
    assert_eq!(
        c.handle_part(start, &f(&partial)),
        Some(CallEvent::Done(Err(CallError::Malformed(
            majordomo_proto::DecodeError::TooManyFrames {
                count: 1500,
                max: 1024
            }
        ))))
    );
    assert!(c.is_done());
    // Bytes: the parts' bytes add up against the largest message (each message of 16 bytes
    // fits on its own).
    let mut c = new(Limits::default().max_message_size(16));
    for _ in 0..3 {
        assert_eq!(
            c.handle_part(start, &f(&[b"MDPC02", &[0x02], b"echo", b"12345"])),
            None
        );
    }
    assert_eq!(
        c.handle_part(start, &f(&[b"MDPC02", &[0x03], b"echo", b"12345"])),
        Some(CallEvent::Done(Err(CallError::Malformed(
            majordomo_proto::DecodeError::MessageTooLarge { size: 20, max: 16 }
        ))))
    );
}
