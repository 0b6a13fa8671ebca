//! One 6/PPP (Paranoid Pirate) worker connection as a state machine with no socket and no clock.
//!
//! "The first message in any conversation MUST be W:READY": the session queues READY when it is
//! created. Requests arrive as envelopes (client address, empty, body); the reply goes back in
//! the same envelope. Both sides heartbeat; a queue silent for `liveness` intervals ends the
//! session ([`SessionEnd::BrokerSilent`]), and the driver reconnects on a new socket, which sends
//! READY again: "If the worker detects that the client has disconnected, it MUST send READY again
//! to start a new conversation". 6/PPP has no DISCONNECT: a handler that fails drops its request
//! and sends READY again on the same connection, which a queue takes as the worker starting over.
//! Driven as a [`Session`]; see [`crate::session`].

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tracing::warn;

use crate::heartbeat::{Heartbeat, HeartbeatAction, HeartbeatConfig};
use crate::ppp::{Envelope, PppMessage};
use crate::session::{Session, SessionEnd, WorkerEvent};
use crate::Limits;

/// Where a PPP worker connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// READY sent, waiting for a request.
    Idle,
    /// The handler is working on the request that came in this envelope address; parts it sent
    /// before its answer are kept in `gathered` (one reply per request).
    Busy {
        address: Vec<Bytes>,
        gathered: Vec<Bytes>,
    },
    /// Over.
    Ended(SessionEnd),
}

/// The state of one PPP worker connection.
#[derive(Debug)]
pub struct PppWorkerSession {
    heartbeat: Heartbeat,
    limits: Limits,
    state: State,
    transmits: VecDeque<Vec<Bytes>>,
}

impl PppWorkerSession {
    /// Starts a session at `now` and queues READY.
    pub fn new(now: Instant, heartbeat: HeartbeatConfig, limits: Limits) -> Self {
        let mut transmits = VecDeque::new();
        transmits.push_back(PppMessage::Ready.encode());
        Self {
            heartbeat: Heartbeat::new(now, heartbeat),
            limits,
            state: State::Idle,
            transmits,
        }
    }

    /// Whether a request is with the handler.
    pub fn is_busy(&self) -> bool {
        matches!(self.state, State::Busy { .. })
    }

    fn queue(&mut self, now: Instant, frames: Vec<Bytes>) {
        self.transmits.push_back(frames);
        self.heartbeat.on_send(now);
    }
}

impl Session for PppWorkerSession {
    fn poll_transmit(&mut self) -> Option<Vec<Bytes>> {
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Instant {
        self.heartbeat.next_deadline()
    }

    fn ended(&self) -> Option<SessionEnd> {
        match self.state {
            State::Ended(why) => Some(why),
            _ => None,
        }
    }

    fn handle_message(&mut self, now: Instant, frames: &[Bytes]) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        // Anything from the queue shows it is alive, even what we then drop.
        self.heartbeat.on_recv(now);
        match PppMessage::decode(frames, &self.limits) {
            Ok(PppMessage::Payload(Envelope { address, body })) => match self.state {
                State::Idle => {
                    self.state = State::Busy {
                        address,
                        gathered: Vec::new(),
                    };
                    Some(WorkerEvent::Request(body))
                }
                _ => {
                    warn!("request while busy dropped");
                    None
                }
            },
            Ok(PppMessage::Heartbeat) => None,
            Ok(PppMessage::Ready) => {
                warn!("READY from the queue ignored");
                None
            }
            Err(error) => {
                warn!(%error, "invalid message from queue dropped");
                None
            }
        }
    }

    /// Keeps the part: the reply carries its frames in front of the answer's.
    fn handle_partial(&mut self, _now: Instant, body: Vec<Bytes>) {
        match &mut self.state {
            State::Busy { gathered, .. } => gathered.extend(body),
            State::Ended(_) => {}
            State::Idle => warn!("part with no request in flight dropped"),
        }
    }

    /// Queues the reply in the envelope the request came in.
    fn handle_reply(&mut self, now: Instant, body: Vec<Bytes>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Busy { address, gathered } => {
                let body = crate::session::parts_then(gathered, body);
                self.queue(
                    now,
                    PppMessage::Payload(Envelope { address, body }).encode(),
                );
            }
            other => {
                if !matches!(other, State::Ended(_)) {
                    warn!("reply with no request in flight dropped");
                }
                self.state = other;
            }
        }
    }

    /// Drops the request and sends READY again on the same connection.
    fn handle_failure(&mut self, now: Instant) -> Option<WorkerEvent> {
        if self.is_busy() {
            self.state = State::Idle;
            self.queue(now, PppMessage::Ready.encode());
        }
        None
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        match self.heartbeat.poll(now) {
            HeartbeatAction::PeerDead => {
                warn!("queue silent past liveness");
                self.state = State::Ended(SessionEnd::BrokerSilent);
                Some(WorkerEvent::Ended(SessionEnd::BrokerSilent))
            }
            HeartbeatAction::Send => {
                self.transmits.push_back(PppMessage::Heartbeat.encode());
                None
            }
            HeartbeatAction::Wait => None,
        }
    }

    /// Ends the session; 6/PPP has no goodbye, so nothing is queued.
    fn shutdown(&mut self) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        self.state = State::Ended(SessionEnd::Shutdown);
        Some(WorkerEvent::Ended(SessionEnd::Shutdown))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> HeartbeatConfig {
        HeartbeatConfig::default()
            .interval(Duration::from_secs(1))
            .liveness(3)
    }

    fn drain(s: &mut PppWorkerSession) -> Vec<Vec<Bytes>> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn request(client: &'static [u8], body: &'static [u8]) -> Vec<Bytes> {
        PppMessage::Payload(Envelope {
            address: vec![Bytes::from_static(client)],
            body: vec![Bytes::from_static(body)],
        })
        .encode()
    }

    #[test]
    fn ready_then_request_reply_in_the_same_envelope() {
        let t0 = Instant::now();
        let mut s = PppWorkerSession::new(t0, config(), Limits::default());
        assert_eq!(drain(&mut s), [PppMessage::Ready.encode()]);
        let event = s.handle_message(t0, &request(b"c1", b"job"));
        assert_eq!(
            event,
            Some(WorkerEvent::Request(vec![Bytes::from_static(b"job")]))
        );
        assert!(s.is_busy());
        assert_eq!(
            s.handle_message(t0, &request(b"c2", b"other")),
            None,
            "one at a time"
        );
        s.handle_reply(t0, vec![Bytes::from_static(b"done")]);
        assert_eq!(
            drain(&mut s),
            [PppMessage::Payload(Envelope {
                address: vec![Bytes::from_static(b"c1")],
                body: vec![Bytes::from_static(b"done")],
            })
            .encode()]
        );
        assert!(!s.is_busy());
    }

    #[test]
    fn a_failed_handler_sends_ready_again_and_stays_connected() {
        let t0 = Instant::now();
        let mut s = PppWorkerSession::new(t0, config(), Limits::default());
        drain(&mut s);
        s.handle_message(t0, &request(b"c1", b"job"));
        assert_eq!(s.handle_failure(t0), None);
        assert_eq!(drain(&mut s), [PppMessage::Ready.encode()]);
        assert_eq!(s.ended(), None);
        assert!(s.handle_message(t0, &request(b"c2", b"next")).is_some());
    }

    #[test]
    fn heartbeats_each_interval_and_ends_when_the_queue_is_silent() {
        let t0 = Instant::now();
        let mut s = PppWorkerSession::new(t0, config(), Limits::default());
        drain(&mut s);
        let mut now = t0;
        let mut heartbeats = 0;
        for _ in 0..10 {
            now = s.poll_timeout();
            if let Some(WorkerEvent::Ended(why)) = s.handle_timeout(now) {
                assert_eq!(why, SessionEnd::BrokerSilent);
                break;
            }
            heartbeats += drain(&mut s).len();
        }
        assert_eq!(s.ended(), Some(SessionEnd::BrokerSilent));
        assert_eq!(now, t0 + Duration::from_secs(3));
        assert_eq!(heartbeats, 2);
    }

    #[test]
    fn traffic_from_the_queue_keeps_the_session_alive() {
        let t0 = Instant::now();
        let mut s = PppWorkerSession::new(t0, config(), Limits::default());
        for step in 1..=20u64 {
            let now = t0 + Duration::from_millis(900 * step);
            s.handle_message(now, &PppMessage::Heartbeat.encode());
            assert_eq!(s.handle_timeout(now), None);
        }
        assert_eq!(s.ended(), None);
    }

    #[test]
    fn shutdown_ends_without_a_goodbye() {
        let t0 = Instant::now();
        let mut s = PppWorkerSession::new(t0, config(), Limits::default());
        drain(&mut s);
        assert_eq!(s.shutdown(), Some(WorkerEvent::Ended(SessionEnd::Shutdown)));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.shutdown(), None);
    }
}
