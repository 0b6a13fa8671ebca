//! One Majordomo worker connection (7/MDP, or 18/MDP in either dialect) as a state machine with
//! no socket and no clock.
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

use crate::codec::{Dialect, FromWorker, Part, ToWorker, Version};
use crate::heartbeat::{Heartbeat, HeartbeatAction, HeartbeatConfig};
pub use crate::session::{Session, SessionEnd, WorkerEvent};
use crate::{Hex, Limits};

/// Where a worker connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Registered, waiting for a request.
    Idle,
    /// The handler is working on a request from this client; a v0.1 session keeps the parts
    /// sent so far in `gathered`.
    Busy { client: Bytes, gathered: Vec<Bytes> },
    /// Over; nothing more is accepted.
    Ended(SessionEnd),
}

/// The state of one worker connection.
#[derive(Debug)]
pub struct WorkerSession {
    heartbeat: Heartbeat,
    limits: Limits,
    version: Version,
    state: State,
    transmits: VecDeque<Vec<Bytes>>,
}

impl WorkerSession {
    /// Starts a session at `now` for `service` and queues READY: "The worker opens the
    /// connection to the broker by creating a new socket, connecting it, and then sending a READY
    /// command to register a service."
    pub fn new(now: Instant, service: Bytes, heartbeat: HeartbeatConfig, limits: Limits) -> Self {
        Self::with_version(now, service, heartbeat, limits, Version::V01)
    }

    /// As [`WorkerSession::new`], speaking `version`: 7/MDP, or 18/MDP in a dialect.
    pub fn with_version(
        now: Instant,
        service: Bytes,
        heartbeat: HeartbeatConfig,
        limits: Limits,
        version: Version,
    ) -> Self {
        let mut session = Self {
            heartbeat: Heartbeat::new(now, heartbeat),
            limits,
            version,
            state: State::Idle,
            transmits: VecDeque::new(),
        };
        session.queue(FromWorker::Ready { service });
        session
    }

    /// The version and dialect spoken.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Queues `command` in the session's version. A v0.1 session gathers parts instead of
    /// queueing PARTIALs, so every command it queues has a v0.1 form.
    fn queue(&mut self, command: FromWorker) {
        match command.encode(self.version) {
            Ok(frames) => self.transmits.push_back(frames),
            Err(error) => warn!(%error, "command dropped"),
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
        let message = match ToWorker::decode(frames, self.version, &self.limits) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "invalid message from broker dropped");
                return None;
            }
        };
        match message {
            ToWorker::Disconnect => {
                info!("broker sent DISCONNECT");
                // "When the worker receives DISCONNECT it must send no further commands."
                self.end(SessionEnd::Disconnected)
            }
            ToWorker::Heartbeat => {
                // "Any received command except DISCONNECT acts as a heartbeat."
                self.heartbeat.on_recv(now);
                None
            }
            ToWorker::Request { client, body } => {
                self.heartbeat.on_recv(now);
                match self.state {
                    State::Idle => {
                        self.state = State::Busy {
                            client,
                            gathered: Vec::new(),
                        };
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

    /// Queues a PARTIAL (v0.2), or keeps the part for the REPLY (v0.1).
    fn handle_partial(&mut self, now: Instant, body: Vec<Bytes>) {
        match (&mut self.state, self.version) {
            (State::Busy { client, .. }, Version::V02(_)) => {
                let client = client.clone();
                self.queue(FromWorker::Reply {
                    part: Part::Partial,
                    client,
                    body,
                });
                self.heartbeat.on_send(now);
            }
            (State::Busy { gathered, .. }, Version::V01) => gathered.extend(body),
            (State::Ended(_), _) => {}
            (State::Idle, _) => warn!("part with no request in flight dropped"),
        }
    }

    /// Queues the REPLY (v0.1) or FINAL (v0.2) to the client whose request was in flight.
    fn handle_reply(&mut self, now: Instant, body: Vec<Bytes>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Busy { client, gathered } => {
                let body = crate::session::parts_then(gathered, body);
                self.queue(FromWorker::Reply {
                    part: Part::Final,
                    client,
                    body,
                });
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
    /// departed workers gives the request to another worker. A HEARTBEAT goes first: to a broker
    /// that takes a DISCONNECT before anything else as a request given back unstarted (this
    /// crate's does), the request was taken, and its failure counts against the broker's bound
    /// on deliveries. "HEARTBEAT commands are valid at any time, after a READY command." (7/MDP;
    /// its "SHOULD NOT send HEARTBEAT commands while also sending other commands" is about
    /// heartbeats that say nothing more, and this one says the request was taken.)
    fn handle_failure(&mut self, now: Instant) -> Option<WorkerEvent> {
        if !self.is_busy() {
            return None;
        }
        self.queue(FromWorker::Heartbeat);
        self.heartbeat.on_send(now);
        self.queue(FromWorker::Disconnect);
        self.end(SessionEnd::HandlerFailed)
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<WorkerEvent> {
        if let State::Ended(_) = self.state {
            return None;
        }
        if self.is_busy() && self.version == Version::V02(Dialect::Majortomo) {
            // majortomo's broker heartbeats idle workers only.
            self.heartbeat.on_recv(now);
        }
        match self.heartbeat.poll(now) {
            HeartbeatAction::PeerDead => {
                warn!("broker silent past liveness");
                self.end(SessionEnd::BrokerSilent)
            }
            HeartbeatAction::Send => {
                self.queue(FromWorker::Heartbeat);
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
        self.queue(FromWorker::Disconnect);
        self.end(SessionEnd::Shutdown)
    }
}
