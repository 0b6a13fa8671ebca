//! One client call with Lazy Pirate retries, as a state machine with no socket and no clock.
//!
//! The same attempt and timeout rules serve a 7/MDP client ([`Call::new`]) and the Guide's Lazy
//! Pirate client of any REQ/REP server ([`Call::lazy_pirate`]).
//!
//! "If there is no reply within some timeout, ... close the request socket and open a new socket,
//! and resend the request on that new socket. If there is no reply after several retries, ...
//! signal the transaction as failed." (7/MDP). A driver sends [`Call::request`] on a connection,
//! feeds the reply to [`Call::handle_reply`], and when [`Call::poll_timeout`] passes or the
//! connection fails, asks [`Call::handle_timeout`] or [`Call::handle_connection_lost`] whether to
//! resend on a new connection or give up.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{self, Dialect, Part, Version};
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
    /// A streamed call ([`Call::streamed`]) had parts and then no FINAL within the timeout, or
    /// lost its connection. It is not retried: a new attempt would run the request again and
    /// hand the caller its parts twice.
    Interrupted {
        /// Parts handed to the caller.
        parts: u32,
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
    /// A PARTIAL of a streamed call ([`Call::streamed`]): hand its frames to the caller; more
    /// follow.
    Part(Vec<Bytes>),
    /// The call is over.
    Done(Result<Vec<Bytes>, CallError>),
}

/// What the request is, and how a reply is read.
#[derive(Debug, Clone)]
enum Exchange {
    /// A 7/MDP request; the reply must be a client REPLY for the same service.
    Mdp { service: Bytes, limits: Limits },
    /// An 18/MDP request; PARTIALs are gathered until the FINAL, or handed out one by one
    /// (`streamed`, counting them in `parts`). What is gathered is held to the limits of one
    /// message: its frames and their bytes.
    Mdp2 {
        service: Bytes,
        limits: Limits,
        dialect: Dialect,
        gathered: Vec<Bytes>,
        gathered_bytes: usize,
        streamed: bool,
        parts: u32,
    },
    /// A REQ-style request (empty delimiter, then the body); any reply is the answer.
    Plain,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Attempt `attempt` is under way and times out at `deadline`.
    Waiting { attempt: u32, deadline: Instant },
    /// The call is over; nothing more is accepted.
    Done,
}

/// One request and its attempts.
#[derive(Debug, Clone)]
pub struct Call {
    exchange: Exchange,
    request: Vec<Bytes>,
    timeout: Duration,
    attempts: u32,
    state: State,
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
        let request = codec::Request {
            service: service.clone(),
            body,
        }
        .encode(Version::V01);
        Ok(Self::start(
            now,
            Exchange::Mdp { service, limits },
            request,
            timeout,
            attempts,
        ))
    }

    /// An 18/MDP (v0.2) call in `dialect` for `service` with `body`: its result is the reply's
    /// parts, every PARTIAL's frames then the FINAL's, in order. The timeout runs from the
    /// request, or from the last part with [`Call::handle_part`]; a new attempt gathers anew.
    /// Fails if the service name is empty or too long.
    pub fn new_v02(
        now: Instant,
        service: Bytes,
        body: Vec<Bytes>,
        timeout: Duration,
        attempts: u32,
        limits: Limits,
        dialect: Dialect,
    ) -> Result<Self, DecodeError> {
        limits.check_service(&service)?;
        let request = codec::Request {
            service: service.clone(),
            body,
        }
        .encode(Version::V02(dialect));
        let exchange = Exchange::Mdp2 {
            service,
            limits,
            dialect,
            gathered: Vec::new(),
            gathered_bytes: 0,
            streamed: false,
            parts: 0,
        };
        Ok(Self::start(now, exchange, request, timeout, attempts))
    }

    /// A call in `version`: [`Call::new`] for 7/MDP, [`Call::new_v02`] in its dialect for
    /// 18/MDP.
    pub fn with_version(
        now: Instant,
        service: Bytes,
        body: Vec<Bytes>,
        timeout: Duration,
        attempts: u32,
        limits: Limits,
        version: Version,
    ) -> Result<Self, DecodeError> {
        match version {
            Version::V01 => Self::new(now, service, body, timeout, attempts, limits),
            Version::V02(dialect) => {
                Self::new_v02(now, service, body, timeout, attempts, limits, dialect)
            }
        }
    }

    /// Makes a v0.2 call hand out each PARTIAL as [`CallEvent::Part`] instead of gathering,
    /// and end with the FINAL's frames alone. Before the first part, a timeout or a lost
    /// connection is retried as always; after one, the call ends with
    /// [`CallError::Interrupted`]: a retry would run the request again and repeat its parts.
    /// Other calls (7/MDP, Lazy Pirate) have one reply and are unchanged.
    pub fn streamed(mut self) -> Self {
        if let Exchange::Mdp2 { streamed, .. } = &mut self.exchange {
            *streamed = true;
        }
        self
    }

    /// Starts a Lazy Pirate call of a REQ/REP server at `now`: the request goes out as a REQ
    /// socket sends it (an empty delimiter, then `body`), and any reply is the answer (a leading
    /// empty delimiter is removed). "If there is no reply within some timeout, ... close the
    /// socket, open a new one and resend."
    pub fn lazy_pirate(now: Instant, body: Vec<Bytes>, timeout: Duration, attempts: u32) -> Self {
        let mut request = Vec::with_capacity(body.len() + 1);
        request.push(Bytes::new());
        request.extend(body);
        Self::start(now, Exchange::Plain, request, timeout, attempts)
    }

    fn start(
        now: Instant,
        exchange: Exchange,
        request: Vec<Bytes>,
        timeout: Duration,
        attempts: u32,
    ) -> Self {
        Self {
            exchange,
            request,
            timeout,
            attempts: attempts.max(1),
            state: State::Waiting {
                attempt: 1,
                deadline: now + timeout,
            },
        }
    }

    /// The frames to send on a DEALER connection (`[empty, "MDPC01", service, body...]`, or
    /// `[empty, body...]` for a Lazy Pirate call).
    pub fn request(&self) -> &[Bytes] {
        &self.request
    }

    /// The request body, for handing back to the caller.
    pub fn body(&self) -> &[Bytes] {
        match self.exchange {
            Exchange::Mdp { .. } => &self.request[3..],
            Exchange::Mdp2 {
                dialect: Dialect::Rfc18,
                ..
            } => &self.request[3..],
            Exchange::Mdp2 {
                dialect: Dialect::Majortomo,
                ..
            } => &self.request[4..],
            Exchange::Plain => &self.request[1..],
        }
    }

    /// The service called (empty for a Lazy Pirate call).
    pub fn service(&self) -> &[u8] {
        match &self.exchange {
            Exchange::Mdp { service, .. } | Exchange::Mdp2 { service, .. } => service,
            Exchange::Plain => &[],
        }
    }

    /// The attempt under way (or the last one made), from 1.
    pub fn attempt(&self) -> u32 {
        match self.state {
            State::Waiting { attempt, .. } => attempt,
            State::Done => self.attempts,
        }
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the current attempt times out; `None` once the call is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { deadline, .. } => Some(deadline),
            State::Done => None,
        }
    }

    /// Whether the call is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A message arrived on the call's connection. A valid reply for the service ends the call;
    /// a malformed one or one for another service ends it with an error, never taken for the
    /// answer.
    pub fn handle_reply(&mut self, frames: &[Bytes]) -> Option<CallEvent> {
        if self.is_done() {
            return None;
        }
        let result = match &mut self.exchange {
            Exchange::Mdp2 {
                service,
                limits,
                dialect,
                gathered,
                gathered_bytes,
                streamed,
                parts,
            } => match codec::Reply::decode(frames, Version::V02(*dialect), limits) {
                // majortomo's replies carry no service frame to check.
                Ok(reply) if !reply.service.is_empty() && reply.service != *service => {
                    Err(CallError::WrongService {
                        expected: service.clone(),
                        got: reply.service,
                    })
                }
                Ok(reply) if *streamed && reply.part == Part::Partial => {
                    *parts += 1;
                    return Some(CallEvent::Part(reply.body));
                }
                Ok(reply) if *streamed => Ok(reply.body),
                Ok(reply) => {
                    // The gathered reply is one message for the caller: past a message's limits
                    // the call fails rather than hold whatever the peer keeps sending.
                    let count = gathered.len() + reply.body.len();
                    *gathered_bytes += reply.body.iter().map(Bytes::len).sum::<usize>();
                    if count > limits.max_frames {
                        Err(CallError::Malformed(DecodeError::TooManyFrames {
                            count,
                            max: limits.max_frames,
                        }))
                    } else if *gathered_bytes > limits.max_message_size {
                        Err(CallError::Malformed(DecodeError::MessageTooLarge {
                            size: *gathered_bytes,
                            max: limits.max_message_size,
                        }))
                    } else {
                        gathered.extend(reply.body);
                        if reply.part == Part::Partial {
                            return None;
                        }
                        Ok(std::mem::take(gathered))
                    }
                }
                Err(error) => Err(CallError::Malformed(error)),
            },
            Exchange::Mdp { service, limits } => {
                match codec::Reply::decode(frames, Version::V01, limits) {
                    Ok(reply) if reply.service == *service => Ok(reply.body),
                    Ok(reply) => Err(CallError::WrongService {
                        expected: service.clone(),
                        got: reply.service,
                    }),
                    Err(error) => Err(CallError::Malformed(error)),
                }
            }
            // A REP server's reply starts with the empty delimiter, as REQ expects.
            Exchange::Plain => Ok(match frames.split_first() {
                Some((first, rest)) if first.is_empty() => rest.to_vec(),
                _ => frames.to_vec(),
            }),
        };
        self.state = State::Done;
        Some(CallEvent::Done(result))
    }

    /// As [`Call::handle_reply`], and a PARTIAL of a v0.2 call (which gives `None`, or
    /// [`CallEvent::Part`] when streamed: more to come) moves the deadline to `now` plus the
    /// timeout, so the timeout runs per part.
    pub fn handle_part(&mut self, now: Instant, frames: &[Bytes]) -> Option<CallEvent> {
        let event = self.handle_reply(frames);
        if let (None | Some(CallEvent::Part(_)), State::Waiting { attempt, .. }) =
            (&event, self.state)
        {
            self.state = State::Waiting {
                attempt,
                deadline: now + self.timeout,
            };
        }
        event
    }

    /// Called at [`Call::poll_timeout`]: resend on a new connection, or give up after the last
    /// attempt. Does nothing before the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<CallEvent> {
        match self.state {
            State::Waiting { deadline, .. } if now >= deadline => Some(self.next_attempt(now)),
            _ => None,
        }
    }

    /// The connection failed before a reply came: the attempt is over now.
    pub fn handle_connection_lost(&mut self, now: Instant) -> Option<CallEvent> {
        if self.is_done() {
            return None;
        }
        Some(self.next_attempt(now))
    }

    fn next_attempt(&mut self, now: Instant) -> CallEvent {
        if let Exchange::Mdp2 {
            streamed: true,
            parts: parts @ 1..,
            ..
        } = self.exchange
        {
            self.state = State::Done;
            return CallEvent::Done(Err(CallError::Interrupted { parts }));
        }
        let attempt = self.attempt();
        if attempt >= self.attempts {
            self.state = State::Done;
            return CallEvent::Done(Err(CallError::NoReply {
                attempts: self.attempts,
            }));
        }
        self.state = State::Waiting {
            attempt: attempt + 1,
            deadline: now + self.timeout,
        };
        if let Exchange::Mdp2 {
            gathered,
            gathered_bytes,
            ..
        } = &mut self.exchange
        {
            // The parts of the attempt given up on are not the next attempt's.
            gathered.clear();
            *gathered_bytes = 0;
        }
        CallEvent::Resend {
            attempt: attempt + 1,
        }
    }
}
