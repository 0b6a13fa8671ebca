//! One 7/MDP worker connection as a state machine with no socket and no clock.
//!
//! A driver opens a socket, creates a [`WorkerSession`] (which queues READY), and drives it as a
//! [`Session`] (see [`crate::session`] for the calling order). When a call returns
//! [`WorkerEvent::Ended`], the driver sends what is still queued, closes the socket and, unless
//! it was shutting down, connects again on a new one: "When the worker receives DISCONNECT ... it
//! MUST close its socket, and reconnect to the broker on a new socket."

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use crate::heartbeat::{Heartbeat, HeartbeatAction, HeartbeatConfig};
use crate::mdp::{BrokerMessage, WorkerMessage};
pub use crate::session::{Session, SessionEnd, WorkerEvent};
use crate::{Hex, Limits};

/// Where a worker connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Registered, waiting for a request.
    Idle,
    /// The handler is working on a request from this client.
    Busy { client: Bytes },
    /// Over; nothing more is accepted.
    Ended(SessionEnd),
}

/// The state of one worker connection.
#[derive(Debug)]
pub struct WorkerSession {
    heartbeat: Heartbeat,
    limits: Limits,
    state: State,
    transmits: VecDeque<Vec<Bytes>>,
}

impl WorkerSession {
    /// Starts a session at `now` for `service` and queues READY: "The worker opens the
    /// connection to the broker by creating a new socket, connecting it, and then sending a READY
    /// command to register a service."
    pub fn new(now: Instant, service: Bytes, heartbeat: HeartbeatConfig, limits: Limits) -> Self {
        let mut transmits = VecDeque::new();
        transmits.push_back(WorkerMessage::Ready { service }.encode());
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

    fn end(&mut self, why: SessionEnd) -> Option<WorkerEvent> {
        self.state = State::Ended(why);
        Some(WorkerEvent::Ended(why))
    }
}

impl Session for WorkerSession {
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
        let message = match BrokerMessage::decode(frames, &self.limits) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "invalid message from broker dropped");
                return None;
            }
        };
        match message {
            BrokerMessage::Disconnect => {
                info!("broker sent DISCONNECT");
                // "When the worker receives DISCONNECT it must send no further commands."
                self.end(SessionEnd::Disconnected)
            }
            BrokerMessage::Heartbeat => {
                // "Any received command except DISCONNECT acts as a heartbeat."
                self.heartbeat.on_recv(now);
                None
            }
            BrokerMessage::Request { client, body } => {
                self.heartbeat.on_recv(now);
                match self.state {
                    State::Idle => {
                        self.state = State::Busy { client };
                        Some(WorkerEvent::Request(body))
                    }
                    _ => {
                        // "Workers will handle at most one request a time."
                        warn!(client = %Hex(&client), "request while one is in flight dropped");
                        None
                    }
                }
            }
        }
    }

    /// Queues the REPLY to the client whose request was in flight.
    fn handle_reply(&mut self, now: Instant, body: Vec<Bytes>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Busy { client } => {
                self.transmits
                    .push_back(WorkerMessage::Reply { client, body }.encode());
                self.heartbeat.on_send(now);
            }
            other => {
                if !matches!(other, State::Ended(_)) {
                    warn!("reply with no request in flight dropped");
                }
                self.state = other;
            }
        }
    }

    /// The request is dropped, DISCONNECT is queued, and the session ends so the driver registers
    /// again on a new socket. 7/MDP has no error reply; a broker that re-queues requests of
    /// departed workers gives the request to another worker.
    fn handle_failure(&mut self, _now: Instant) -> Option<WorkerEvent> {
        if !self.is_busy() {
            return None;
        }
        self.transmits.push_back(WorkerMessage::Disconnect.encode());
        self.end(SessionEnd::HandlerFailed)
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        match self.heartbeat.poll(now) {
            HeartbeatAction::PeerDead => {
                warn!("broker silent past liveness");
                self.end(SessionEnd::BrokerSilent)
            }
            HeartbeatAction::Send => {
                self.transmits.push_back(WorkerMessage::Heartbeat.encode());
                None
            }
            HeartbeatAction::Wait => None,
        }
    }

    /// Ends the session with DISCONNECT: "The worker MAY send DISCONNECT at any time."
    fn shutdown(&mut self) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        self.transmits.push_back(WorkerMessage::Disconnect.encode());
        self.end(SessionEnd::Shutdown)
    }
}
