//! A model run of the worker session: arbitrary broker messages, handler outcomes and time steps,
//! with its invariants checked after every step: no panic; every message it sends is a valid
//! MDP/Worker command; READY first and only once; at most one request with the handler; a REPLY
//! only for the request in flight and addressed to its client; nothing after DISCONNECT; and a
//! heartbeat at least every interval while the session lives.
//! Shared by the property test `worker_model.rs` and the fuzz target `worker_session`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::mdp::{BrokerMessage, WorkerMessage};
use majordomo_proto::worker::{Session, WorkerEvent, WorkerSession};
use majordomo_proto::Limits;

const INTERVAL: Duration = Duration::from_millis(100);

/// Runs the operations encoded in `data` (two bytes each) and panics on a broken invariant.
pub fn run(data: &[u8]) {
    let limits = Limits::default();
    let mut now = Instant::now();
    let hb = HeartbeatConfig::new(INTERVAL, 3);
    let mut session = WorkerSession::new(now, Bytes::from_static(b"svc"), hb, limits);
    let mut sent_ready = false;
    let mut disconnected = false;
    let mut last_sent = now;
    // The client of the request the handler holds, as the model saw it handed out.
    let mut in_flight: Option<Bytes> = None;
    let mut last_request_client: Option<Bytes> = None;

    for op in data.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let event = match kind % 7 {
            0 => {
                let client = Bytes::from(vec![b'c', arg % 5]);
                last_request_client = Some(client.clone());
                let frames = BrokerMessage::Request {
                    client,
                    body: vec![Bytes::from(vec![arg])],
                }
                .encode();
                session.handle_message(now, &frames)
            }
            1 => session.handle_message(now, &BrokerMessage::Heartbeat.encode()),
            2 if arg % 8 == 0 => session.handle_message(now, &BrokerMessage::Disconnect.encode()),
            3 => {
                session.handle_reply(now, vec![Bytes::from_static(b"r")]);
                None
            }
            4 if arg % 4 == 0 => session.handle_failure(now),
            5 => {
                let until = now + Duration::from_millis(u64::from(arg) * 5);
                let mut event = None;
                for _ in 0..1000 {
                    let next = session.poll_timeout();
                    if next > until || event.is_some() || session.ended().is_some() {
                        break;
                    }
                    now = next.max(now);
                    event = session.handle_timeout(now);
                    drain(
                        &mut session,
                        now,
                        &mut sent_ready,
                        &mut disconnected,
                        &mut last_sent,
                        &mut in_flight,
                    );
                }
                if session.ended().is_none() {
                    now = until;
                }
                event
            }
            6 if arg % 16 == 0 => session.shutdown(),
            _ => {
                let frames: Vec<Bytes> = op
                    .iter()
                    .map(|b| Bytes::from(vec![*b; usize::from(*b % 3)]))
                    .collect();
                session.handle_message(now, &frames)
            }
        };
        match event {
            Some(WorkerEvent::Request(_)) => {
                assert!(in_flight.is_none(), "second request handed to the handler");
                in_flight = last_request_client.clone();
            }
            Some(WorkerEvent::Ended(_)) => in_flight = None,
            None => {}
        }
        drain(
            &mut session,
            now,
            &mut sent_ready,
            &mut disconnected,
            &mut last_sent,
            &mut in_flight,
        );
        assert_eq!(
            session.is_busy(),
            in_flight.is_some(),
            "busy state diverged"
        );
        if session.ended().is_none() {
            // Between steps the session never owes a heartbeat.
            assert!(
                now.duration_since(last_sent) <= INTERVAL || session.poll_timeout() > now,
                "heartbeat overdue"
            );
        } else {
            assert!(
                session.poll_transmit().is_none(),
                "sent after the session ended"
            );
        }
    }
}

fn drain(
    session: &mut WorkerSession,
    now: Instant,
    sent_ready: &mut bool,
    disconnected: &mut bool,
    last_sent: &mut Instant,
    in_flight: &mut Option<Bytes>,
) {
    let limits = Limits::default();
    while let Some(frames) = session.poll_transmit() {
        assert!(!*disconnected, "sent after DISCONNECT");
        let message = WorkerMessage::decode(&frames, &limits).expect("worker sends valid commands");
        match message {
            WorkerMessage::Ready { .. } => {
                assert!(!*sent_ready, "READY twice");
                *sent_ready = true;
            }
            WorkerMessage::Reply { client, .. } => {
                let expected = in_flight.take().expect("REPLY with no request in flight");
                assert_eq!(client, expected, "REPLY to the wrong client");
            }
            WorkerMessage::Heartbeat => {}
            WorkerMessage::Disconnect => *disconnected = true,
        }
        assert!(*sent_ready, "a command before READY");
        *last_sent = now;
    }
}
