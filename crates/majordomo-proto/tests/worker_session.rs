//! The worker session under simulated time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::mdp::{BrokerMessage, WorkerMessage};
use majordomo_proto::worker::{Session, SessionEnd, WorkerEvent, WorkerSession};
use majordomo_proto::Limits;

const HB: HeartbeatConfig = HeartbeatConfig::new(Duration::from_millis(100), 3);

fn sent(s: &mut WorkerSession) -> Vec<WorkerMessage> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|f| WorkerMessage::decode(&f, &Limits::default()).unwrap())
        .collect()
}

fn session(now: Instant) -> WorkerSession {
    WorkerSession::new(now, Bytes::from_static(b"echo"), HB, Limits::default())
}

#[test]
fn ready_first_then_request_and_reply() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(
        sent(&mut s),
        [WorkerMessage::Ready {
            service: Bytes::from_static(b"echo")
        }]
    );
    let request = BrokerMessage::Request {
        client: Bytes::from_static(b"c1"),
        body: vec![Bytes::from_static(b"hi")],
    };
    assert_eq!(
        s.handle_message(t0, &request.encode()),
        Some(WorkerEvent::Request(vec![Bytes::from_static(b"hi")]))
    );
    // A second request while busy is not handed out.
    assert_eq!(s.handle_message(t0, &request.encode()), None);
    s.handle_reply(t0, vec![Bytes::from_static(b"ho")]);
    assert_eq!(
        sent(&mut s),
        [WorkerMessage::Reply {
            client: Bytes::from_static(b"c1"),
            body: vec![Bytes::from_static(b"ho")]
        }]
    );
}

#[test]
fn heartbeats_while_alive_and_ends_when_broker_is_silent() {
    let t0 = Instant::now();
    let mut s = session(t0);
    sent(&mut s);
    let mut heartbeats = 0;
    let (end, now) = loop {
        let now = s.poll_timeout();
        match s.handle_timeout(now) {
            Some(WorkerEvent::Ended(end)) => break (end, now),
            _ => {
                heartbeats += sent(&mut s)
                    .iter()
                    .filter(|m| **m == WorkerMessage::Heartbeat)
                    .count()
            }
        }
        assert!(heartbeats < 10, "never ended");
    };
    assert_eq!(end, SessionEnd::BrokerSilent);
    assert_eq!(now, t0 + HB.expiry());
    assert_eq!(heartbeats, 2);
}

#[test]
fn broker_traffic_keeps_the_session_alive() {
    let t0 = Instant::now();
    let mut s = session(t0);
    for step in 1..50u32 {
        let now = t0 + HB.interval * step;
        assert_eq!(
            s.handle_message(now, &BrokerMessage::Heartbeat.encode()),
            None
        );
        assert!(!matches!(
            s.handle_timeout(now),
            Some(WorkerEvent::Ended(_))
        ));
    }
}

#[test]
fn disconnect_failure_and_shutdown_end_the_session() {
    let t0 = Instant::now();
    let mut s = session(t0);
    sent(&mut s);
    assert_eq!(
        s.handle_message(t0, &BrokerMessage::Disconnect.encode()),
        Some(WorkerEvent::Ended(SessionEnd::Disconnected))
    );
    assert!(
        sent(&mut s).is_empty(),
        "nothing after the broker's DISCONNECT"
    );

    let mut s = session(t0);
    sent(&mut s);
    let request = BrokerMessage::Request {
        client: Bytes::from_static(b"c"),
        body: vec![Bytes::new()],
    };
    s.handle_message(t0, &request.encode());
    assert_eq!(
        s.handle_failure(t0),
        Some(WorkerEvent::Ended(SessionEnd::HandlerFailed))
    );
    // A heartbeat first: the request was taken, and its failure counts as a delivery.
    assert_eq!(
        sent(&mut s),
        [WorkerMessage::Heartbeat, WorkerMessage::Disconnect]
    );

    let mut s = session(t0);
    sent(&mut s);
    assert_eq!(s.shutdown(), Some(WorkerEvent::Ended(SessionEnd::Shutdown)));
    assert_eq!(sent(&mut s), [WorkerMessage::Disconnect]);
    assert_eq!(s.handle_timeout(t0 + HB.expiry() * 2), None);
    assert!(sent(&mut s).is_empty());
}
