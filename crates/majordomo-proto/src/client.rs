//! One client call with Lazy Pirate retries, as a state machine with no socket and no clock.
//!
//! "If there is no reply within some timeout, ... close the request socket and open a new socket,
//! and resend the request on that new socket. If there is no reply after several retries, ...
//! signal the transaction as failed." (7/MDP). A driver sends [`Call::request`] on a connection,
//! feeds the reply to [`Call::handle_reply`], and when [`Call::poll_timeout`] passes or the
//! connection fails, asks [`Call::handle_timeout`] or [`Call::handle_connection_lost`] whether to
//! resend on a new connection or give up.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::mdp::{ClientReply, ClientRequest};
use crate::{DecodeError, Limits};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No reply after every attempt.
    NoReply {
        /// Attempts made.
        attempts: u32,
    },
    /// The reply is not a 7/MDP client REPLY.
    Malformed(DecodeError),
    /// The reply names another service than the request.
    WrongService {
        /// The service asked.
        expected: Bytes,
        /// The service the reply named.
        got: Bytes,
    },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// Close the connection, open a new one and send [`Call::request`] again.
    Resend {
        /// The attempt about to be made, from 2.
        attempt: u32,
    },
    /// The call is over.
    Done(Result<Vec<Bytes>, CallError>),
}

/// One request and its attempts.
#[derive(Debug, Clone)]
pub struct Call {
    service: Bytes,
    request: Vec<Bytes>,
    timeout: Duration,
    attempts: u32,
    attempt: u32,
    deadline: Instant,
    limits: Limits,
    done: bool,
}

impl Call {
    /// Starts a call at `now`: `attempts` attempts (at least one) of `timeout` each, the first
    /// starting now. Fails at once if the service name is empty or too long.
    pub fn new(
        now: Instant,
        service: Bytes,
        body: Vec<Bytes>,
        timeout: Duration,
        attempts: u32,
        limits: Limits,
    ) -> Result<Self, DecodeError> {
        limits.check_service(&service)?;
        let request = ClientRequest::new(service.clone(), body).encode();
        Ok(Self {
            service,
            request,
            timeout,
            attempts: attempts.max(1),
            attempt: 1,
            deadline: now + timeout,
            limits,
            done: false,
        })
    }

    /// The frames to send on a DEALER connection (`[empty, "MDPC01", service, body...]`).
    pub fn request(&self) -> &[Bytes] {
        &self.request
    }

    /// The request body, for handing back to the caller.
    pub fn body(&self) -> &[Bytes] {
        &self.request[3..]
    }

    /// The service called.
    pub fn service(&self) -> &Bytes {
        &self.service
    }

    /// The attempt under way, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the current attempt times out.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Whether the call is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// A message arrived on the call's connection. A valid reply for the service ends the call;
    /// a malformed one or one for another service ends it with an error, never taken for the
    /// answer.
    pub fn handle_reply(&mut self, frames: &[Bytes]) -> Option<CallEvent> {
        if self.done {
            return None;
        }
        let result = match ClientReply::decode(frames, &self.limits) {
            Ok(reply) if reply.service == self.service => Ok(reply.body),
            Ok(reply) => Err(CallError::WrongService {
                expected: self.service.clone(),
                got: reply.service,
            }),
            Err(error) => Err(CallError::Malformed(error)),
        };
        self.done = true;
        Some(CallEvent::Done(result))
    }

    /// Called at [`Call::poll_timeout`]: resend on a new connection, or give up after the last
    /// attempt. Does nothing before the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<CallEvent> {
        if self.done || now < self.deadline {
            return None;
        }
        Some(self.next_attempt(now))
    }

    /// The connection failed before a reply came: the attempt is over now.
    pub fn handle_connection_lost(&mut self, now: Instant) -> Option<CallEvent> {
        if self.done {
            return None;
        }
        Some(self.next_attempt(now))
    }

    fn next_attempt(&mut self, now: Instant) -> CallEvent {
        if self.attempt >= self.attempts {
            self.done = true;
            return CallEvent::Done(Err(CallError::NoReply {
                attempts: self.attempts,
            }));
        }
        self.attempt += 1;
        self.deadline = now + self.timeout;
        CallEvent::Resend {
            attempt: self.attempt,
        }
    }
}
