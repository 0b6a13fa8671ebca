//! One 7/MDP worker connection as a state machine with no socket and no clock.
//!
//! A driver opens a socket, creates a [`WorkerSession`] (which queues READY), sends everything
//! [`WorkerSession::poll_transmit`] yields, and feeds it what arrives, the handler's results and
//! the deadline from [`WorkerSession::poll_timeout`]. When a call returns
//! [`WorkerEvent::Ended`], the driver sends what is still queued, closes the socket and, unless
//! it was shutting down, connects again on a new one: "When the worker receives DISCONNECT ... it
//! MUST close its socket, and reconnect to the broker on a new socket."

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use crate::heartbeat::{Heartbeat, HeartbeatAction, HeartbeatConfig};
use crate::mdp::{BrokerMessage, WorkerMessage};
use crate::{DecodeError, Hex, Limits};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The broker was silent for `liveness` intervals: reconnect after a backoff.
    BrokerSilent,
    /// The broker sent DISCONNECT: reconnect on a new socket.
    Disconnected,
    /// The handler failed; DISCONNECT is queued and the request dropped: register again at once.
    HandlerFailed,
    /// [`WorkerSession::shutdown`] was called; DISCONNECT is queued.
    Shutdown,
}

/// What the driver must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Run the handler on this request body, then call [`WorkerSession::handle_reply`] or
    /// [`WorkerSession::handle_failure`]. Only one request is handed out at a time.
    Request(Vec<Bytes>),
    /// The session is over; send what is queued and close the socket.
    Ended(SessionEnd),
}

/// The state of one worker connection.
#[derive(Debug)]
pub struct WorkerSession {
    heartbeat: Heartbeat,
    limits: Limits,
    /// The client whose request the handler is working on.
    busy: Option<Bytes>,
    transmits: VecDeque<Vec<Bytes>>,
    ended: Option<SessionEnd>,
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
            busy: None,
            transmits,
            ended: None,
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<Bytes>> {
        self.transmits.pop_front()
    }

    /// When [`WorkerSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        self.heartbeat.next_deadline()
    }

    /// Whether a request is with the handler.
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<SessionEnd> {
        self.ended
    }

    /// Handles a message from the broker.
    pub fn handle_message(&mut self, now: Instant, frames: &[Bytes]) -> Option<WorkerEvent> {
        if self.ended.is_some() {
            return None;
        }
        let message = match BrokerMessage::decode(frames, &self.limits) {
            Ok(message) => message,
            Err(error) => {
                self.invalid(&error);
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
                if self.busy.is_some() {
                    // "Workers will handle at most one request a time."
                    warn!(client = %Hex(&client), "request while one is in flight dropped");
                    return None;
                }
                self.busy = Some(client);
                Some(WorkerEvent::Request(body))
            }
        }
    }

    /// The handler finished the request: queues the REPLY to its client.
    pub fn handle_reply(&mut self, now: Instant, body: Vec<Bytes>) {
        if self.ended.is_some() {
            return;
        }
        let Some(client) = self.busy.take() else {
            warn!("reply with no request in flight dropped");
            return;
        };
        self.transmits
            .push_back(WorkerMessage::Reply { client, body }.encode());
        self.heartbeat.on_send(now);
    }

    /// The handler failed or panicked: the request is dropped, DISCONNECT is queued, and the
    /// session ends so the driver registers again on a new socket. 7/MDP has no error reply; a
    /// broker that re-queues requests of departed workers gives the request to another worker.
    pub fn handle_failure(&mut self) -> Option<WorkerEvent> {
        if self.ended.is_some() || self.busy.take().is_none() {
            return None;
        }
        self.transmits.push_back(WorkerMessage::Disconnect.encode());
        self.end(SessionEnd::HandlerFailed)
    }

    /// Sends a HEARTBEAT when one is due, and ends the session when the broker has been silent
    /// for `liveness` intervals.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<WorkerEvent> {
        if self.ended.is_some() {
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
    pub fn shutdown(&mut self) -> Option<WorkerEvent> {
        if self.ended.is_some() {
            return None;
        }
        self.busy = None;
        self.transmits.push_back(WorkerMessage::Disconnect.encode());
        self.end(SessionEnd::Shutdown)
    }

    fn end(&mut self, why: SessionEnd) -> Option<WorkerEvent> {
        self.ended = Some(why);
        self.busy = None;
        Some(WorkerEvent::Ended(why))
    }

    fn invalid(&self, error: &DecodeError) {
        warn!(%error, "invalid message from broker dropped");
    }
}
