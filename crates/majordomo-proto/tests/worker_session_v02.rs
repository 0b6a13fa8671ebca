//! The worker session in 18/MDP (v0.2) under simulated time: byte-exact commands in both
//! dialects, parts as PARTIALs, the FINAL, parts gathered into one REPLY in v0.1, DISCONNECT,
//! and majortomo's broker that heartbeats idle workers only.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::mdp2::{Dialect, Version};
use majordomo_proto::worker::{Session, SessionEnd, WorkerEvent, WorkerSession};
use majordomo_proto::Limits;

const HB: HeartbeatConfig = HeartbeatConfig::new(Duration::from_millis(100), 3);

fn f(frames: &[&[u8]]) -> Vec<Bytes> {
    frames.iter().map(|x| Bytes::copy_from_slice(x)).collect()
}

fn session(now: Instant, version: Version) -> WorkerSession {
    WorkerSession::with_version(
        now,
        Bytes::from_static(b"echo"),
        HB,
        Limits::default(),
        version,
    )
}

fn sent(s: &mut WorkerSession) -> Vec<Vec<Bytes>> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// `frames` with majortomo's leading empty frame when `dialect` asks for it.
fn framed(dialect: Dialect, frames: &[&[u8]]) -> Vec<Bytes> {
    let mut out = Vec::new();
    if dialect == Dialect::Majortomo {
        out.push(Bytes::new());
    }
    out.extend(f(frames));
    out
}

#[test]
fn ready_request_partials_and_final_byte_exact_in_both_dialects() {
    for dialect in [Dialect::Rfc18, Dialect::Majortomo] {
        let t0 = Instant::now();
        let mut s = session(t0, Version::V02(dialect));
        assert_eq!(sent(&mut s), [framed(dialect, &[b"MDPW02", &[1], b"echo"])]);
        let request = framed(dialect, &[b"MDPW02", &[2], b"c1", b"", b"a", b"b"]);
        assert_eq!(
            s.handle_message(t0, &request),
            Some(WorkerEvent::Request(f(&[b"a", b"b"])))
        );
        s.handle_partial(t0, f(&[b"p1"]));
        s.handle_partial(t0, f(&[b"p2", b"p3"]));
        s.handle_reply(t0, f(&[b"done"]));
        assert_eq!(
            sent(&mut s),
            [
                framed(dialect, &[b"MDPW02", &[3], b"c1", b"", b"p1"]),
                framed(dialect, &[b"MDPW02", &[3], b"c1", b"", b"p2", b"p3"]),
                framed(dialect, &[b"MDPW02", &[4], b"c1", b"", b"done"]),
            ],
            "{dialect:?}"
        );
        // Idle again: a part now has no request and is dropped.
        s.handle_partial(t0, f(&[b"late"]));
        assert!(sent(&mut s).is_empty());
        assert!(!s.is_busy());
    }
}

#[test]
fn a_v01_session_sends_the_parts_in_front_of_the_answer_in_one_reply() {
    let t0 = Instant::now();
    let mut s = session(t0, Version::V01);
    sent(&mut s);
    let request = f(&[b"", b"MDPW01", &[2], b"c1", b"", b"q"]);
    assert!(s.handle_message(t0, &request).is_some());
    s.handle_partial(t0, f(&[b"1"]));
    s.handle_partial(t0, f(&[b"2"]));
    assert!(sent(&mut s).is_empty(), "7/MDP has one REPLY per request");
    s.handle_reply(t0, f(&[b"3"]));
    assert_eq!(
        sent(&mut s),
        [f(&[b"", b"MDPW01", &[3], b"c1", b"", b"1", b"2", b"3"])]
    );
}

#[test]
fn heartbeat_and_disconnect_in_both_dialects() {
    for dialect in [Dialect::Rfc18, Dialect::Majortomo] {
        let t0 = Instant::now();
        let mut s = session(t0, Version::V02(dialect));
        sent(&mut s);
        // A heartbeat from the broker is heard; the worker's own is due after an interval.
        let hb = framed(dialect, &[b"MDPW02", &[5]]);
        assert_eq!(s.handle_message(t0 + HB.interval / 2, &hb), None);
        let due = s.poll_timeout();
        assert_eq!(s.handle_timeout(due), None);
        assert_eq!(sent(&mut s), std::slice::from_ref(&hb));
        // "a worker that gets DISCONNECT reconnects": the session ends as Disconnected.
        let disconnect = framed(dialect, &[b"MDPW02", &[6]]);
        assert_eq!(
            s.handle_message(due, &disconnect),
            Some(WorkerEvent::Ended(SessionEnd::Disconnected))
        );
        assert_eq!(s.ended(), Some(SessionEnd::Disconnected));
    }
}

#[test]
fn shutdown_and_a_failed_handler_send_disconnect() {
    for dialect in [Dialect::Rfc18, Dialect::Majortomo] {
        let t0 = Instant::now();
        let mut s = session(t0, Version::V02(dialect));
        sent(&mut s);
        s.handle_message(t0, &framed(dialect, &[b"MDPW02", &[2], b"c", b"", b"q"]));
        assert_eq!(
            s.handle_failure(t0),
            Some(WorkerEvent::Ended(SessionEnd::HandlerFailed))
        );
        // A heartbeat first: the request was taken (see the v0.1 session's test).
        assert_eq!(
            sent(&mut s),
            [
                framed(dialect, &[b"MDPW02", &[5]]),
                framed(dialect, &[b"MDPW02", &[6]])
            ]
        );
        let mut s = session(t0, Version::V02(dialect));
        sent(&mut s);
        assert_eq!(s.shutdown(), Some(WorkerEvent::Ended(SessionEnd::Shutdown)));
        assert_eq!(sent(&mut s), [framed(dialect, &[b"MDPW02", &[6]])]);
    }
}

#[test]
fn messages_in_another_version_or_dialect_are_dropped() {
    let t0 = Instant::now();
    let mut s = session(t0, Version::V02(Dialect::Rfc18));
    sent(&mut s);
    for wrong in [
        f(&[b"", b"MDPW02", &[2], b"c", b"", b"q"]),
        f(&[b"", b"MDPW01", &[2], b"c", b"", b"q"]),
        f(&[b"MDPW02", &[0x09]]),
        f(&[b"MDPW02", &[2], b"c", b""]),
    ] {
        assert_eq!(s.handle_message(t0, &wrong), None, "{wrong:?}");
        assert!(!s.is_busy());
    }
}

/// Drives a busy session through `intervals` heartbeat intervals of broker silence; returns
/// how it ended, if it did.
fn busy_and_silent(dialect: Dialect, intervals: u32) -> Option<SessionEnd> {
    let t0 = Instant::now();
    let mut s = session(t0, Version::V02(dialect));
    sent(&mut s);
    s.handle_message(t0, &framed(dialect, &[b"MDPW02", &[2], b"c", b"", b"q"]));
    let end = t0 + HB.interval * intervals;
    for _ in 0..intervals * 4 {
        let now = s.poll_timeout();
        if now > end {
            break;
        }
        if let Some(WorkerEvent::Ended(why)) = s.handle_timeout(now) {
            return Some(why);
        }
        sent(&mut s);
    }
    None
}

#[test]
fn a_busy_worker_counts_the_brokers_silence_except_in_majortomos_dialect() {
    // RFC 18's broker heartbeats every worker: silence past liveness ends the session.
    assert_eq!(
        busy_and_silent(Dialect::Rfc18, 10),
        Some(SessionEnd::BrokerSilent)
    );
    // majortomo's broker heartbeats idle workers only and gives busy ones 900 s.
    assert_eq!(busy_and_silent(Dialect::Majortomo, 10), None);
}

#[test]
fn an_idle_worker_in_majortomos_dialect_still_notices_a_silent_broker() {
    let t0 = Instant::now();
    let mut s = session(t0, Version::V02(Dialect::Majortomo));
    sent(&mut s);
    let mut end = None;
    for _ in 0..20 {
        let now = s.poll_timeout();
        if let Some(WorkerEvent::Ended(why)) = s.handle_timeout(now) {
            end = Some(why);
            break;
        }
    }
    assert_eq!(end, Some(SessionEnd::BrokerSilent));
}
