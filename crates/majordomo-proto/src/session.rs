//! What every worker-side connection has in common: the 7/MDP worker ([`crate::worker`]) and the
//! 6/PPP worker ([`crate::ppp_worker`]) are both a [`Session`], so one driver loop runs both.
//!
//! # Calling order
//! Create the session on a fresh connection (it queues its READY), then repeatedly: send every
//! message [`Session::poll_transmit`] yields; feed it what arrives ([`Session::handle_message`]),
//! the parts the handler sends before its answer ([`Session::handle_partial`], in order), the
//! handler's result ([`Session::handle_reply`] or [`Session::handle_failure`]) and the passing
//! of [`Session::poll_timeout`] ([`Session::handle_timeout`]). A [`WorkerEvent::Request`] starts
//! the handler; [`WorkerEvent::Ended`] means: send what is queued, close the connection, and
//! reconnect on a new one unless it ended by [`Session::shutdown`].

use std::time::Instant;

use bytes::Bytes;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The broker or queue was silent for `liveness` intervals: reconnect after a backoff.
    BrokerSilent,
    /// The broker sent DISCONNECT: reconnect on a new socket after a backoff.
    Disconnected,
    /// The handler failed; DISCONNECT is queued and the request dropped: register again at once.
    HandlerFailed,
    /// [`Session::shutdown`] was called; whatever says goodbye is queued.
    Shutdown,
}

/// What the driver must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Run the handler on this request body, then call [`Session::handle_reply`] or
    /// [`Session::handle_failure`]. Only one request is handed out at a time.
    Request(Vec<Bytes>),
    /// The session is over; send what is queued and close the connection.
    Ended(SessionEnd),
}

/// One worker-side connection as a state machine; see the module docs for the calling order.
pub trait Session {
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<Vec<Bytes>>;

    /// When [`Session::handle_timeout`] must be called next.
    fn poll_timeout(&self) -> Instant;

    /// Why the session ended, once it has.
    fn ended(&self) -> Option<SessionEnd>;

    /// Handles a message from the broker or queue.
    fn handle_message(&mut self, now: Instant, frames: &[Bytes]) -> Option<WorkerEvent>;

    /// The handler sent a part of its answer before the last. A protocol with parts (18/MDP)
    /// sends it at once; one with a single reply per request keeps it and sends its frames in
    /// front of the answer's. Dropped when no request is in flight.
    fn handle_partial(&mut self, now: Instant, body: Vec<Bytes>);

    /// The handler finished the request in flight with this reply body.
    fn handle_reply(&mut self, now: Instant, body: Vec<Bytes>);

    /// The handler failed or panicked on the request in flight.
    fn handle_failure(&mut self, now: Instant) -> Option<WorkerEvent>;

    /// Sends a heartbeat when one is due; ends the session when the other side stayed silent.
    fn handle_timeout(&mut self, now: Instant) -> Option<WorkerEvent>;

    /// Ends the session, queueing whatever the protocol sends on the way out.
    fn shutdown(&mut self) -> Option<WorkerEvent>;
}

/// One reply made of the parts a handler sent before its answer, then the answer: what a
/// protocol with a single reply per request sends.
pub(crate) fn parts_then(mut gathered: Vec<Bytes>, answer: Vec<Bytes>) -> Vec<Bytes> {
    if gathered.is_empty() {
        return answer;
    }
    gathered.extend(answer);
    gathered
}
