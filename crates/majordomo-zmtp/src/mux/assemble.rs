//! A peer's stream read into whole messages: sans-IO, `now` an input.
//!
//! An [`Assembler`] follows the stream of one accepted peer through an [`Inspector`] (every rule
//! and limit of the guard) and collects each message's frames into `Bytes`, taking the memory
//! it holds from the process's inbound [`Budget`] *before* it holds it. Call
//! [`Assembler::next`] with the bytes read and not yet consumed, act on the [`Step`], drop the
//! consumed bytes, and call again.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::budget::{Budget, Charge};
use crate::inspect::{
    command_name, frame_header, printable, property, Action, FrameLimits, Inspector, Origin,
    PingContext, Violation, FLAG_COMMAND, FLAG_LONG, FLAG_MORE, LONG_HEADER, SHORT_HEADER,
};

/// Bytes charged for each message on top of its frame bodies: the frame list and the queue entry
/// it takes on the way to the link.
pub const MESSAGE_OVERHEAD: usize = 128;
/// Bytes charged for each frame on top of its body: its handle in the frame list, which grows
/// by doubling (`Bytes` is 32 bytes; twice that covers the spare room).
pub const FRAME_OVERHEAD: usize = 64;

/// The socket types a ROUTER talks to. RFC 37: "ROUTER: REQ, DEALER, ROUTER"; "The peer SHOULD
/// enforce that the other peer is using a valid socket type".
const ROUTER_PEERS: [&[u8]; 3] = [b"REQ", b"DEALER", b"ROUTER"];

/// What the peer said in its READY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReady {
    /// Its socket type (`DEALER`, `REQ` or `ROUTER`).
    pub socket_type: Bytes,
    /// The routing identity it announced, if any: information only, the front end gives every
    /// peer its own.
    pub identity: Option<Bytes>,
}

/// A whole message from a peer, with the inbound budget it holds until dropped.
#[derive(Debug)]
pub struct Message {
    /// Its frames, in order; at least one.
    pub frames: Vec<Bytes>,
    /// What it holds of the inbound budget; released when the message is dropped.
    pub charge: Charge,
}

/// What to do after [`Assembler::next`]. Every variant with `consumed` has taken that many bytes
/// from the front of the buffer.
#[derive(Debug)]
pub enum Step {
    /// Nothing can be done before more bytes arrive.
    Pending,
    /// The inbound budget is spent: read nothing more from this peer until some is released,
    /// then call again with the same bytes.
    Blocked,
    /// Bytes taken; nothing to report yet.
    Consumed(usize),
    /// The handshake is done: answer with READY (the greeting may go at once).
    Ready {
        /// Bytes taken.
        consumed: usize,
        /// What the peer announced.
        ready: PeerReady,
    },
    /// The peer sent a PING: answer it with a PONG between frames.
    Ping {
        /// Bytes taken.
        consumed: usize,
        /// What the PONG echoes.
        context: PingContext,
    },
    /// A whole message.
    Message {
        /// Bytes taken.
        consumed: usize,
        /// The message.
        message: Message,
    },
}

/// The frame whose body is arriving.
#[derive(Debug)]
struct Body {
    data: Vec<u8>,
    size: usize,
    more: bool,
}

/// A message begun and not finished.
#[derive(Debug)]
struct Partial {
    frames: Vec<Bytes>,
    body: Option<Body>,
    charge: Charge,
    deadline: Instant,
}

/// Reads one peer's stream into whole messages. See the module documentation.
#[derive(Debug)]
pub struct Assembler {
    inspector: Inspector,
    budget: Budget,
    timeout: Duration,
    partial: Option<Partial>,
    /// Budget already held for the next frame's header to take ([`Assembler::prepay`]).
    paid: Option<Charge>,
    /// Bytes of message frames taken in so far, headers and bodies; not commands.
    taken: u64,
}

impl Assembler {
    /// An assembler for a newly accepted peer: `limits` as the guard checks them, memory from
    /// `budget`, and each message due whole `timeout` after its first frame header.
    pub fn new(limits: FrameLimits, budget: Budget, timeout: Duration) -> Self {
        Self {
            inspector: Inspector::new(Origin::Peer, limits, None),
            budget,
            timeout,
            partial: None,
            paid: None,
            taken: 0,
        }
    }

    /// Hands over `charge` for the next frame header to take before it charges the budget: a
    /// CURVE frame, charged while it was read sealed, is then not charged a second time once
    /// opened (peers that each hold a sealed frame could otherwise wait for one another's
    /// budget for good).
    pub fn prepay(&mut self, charge: Charge) {
        self.paid = Some(charge);
    }

    /// Gives back what [`Assembler::prepay`] handed over and no frame took.
    pub fn refund(&mut self) {
        self.paid = None;
    }

    /// When the message begun must be whole; `None` between messages. Past it,
    /// [`Assembler::next`] and [`Assembler::check`] report [`Violation::Stalled`].
    pub fn deadline(&self) -> Option<Instant> {
        self.partial.as_ref().map(|partial| partial.deadline)
    }

    /// Bytes of message frames taken in so far, headers and bodies: commands (PINGs, PONGs)
    /// are not counted.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Bytes of the inbound budget held by the message begun (0 between messages).
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.charge.bytes())
    }

    /// [`Violation::Stalled`] if a message is begun and `now` is past its deadline.
    pub fn check(&self, now: Instant) -> Result<(), Violation> {
        match self.deadline() {
            Some(deadline) if now >= deadline => Err(Violation::Stalled(self.timeout)),
            _ => Ok(()),
        }
    }

    /// What to do with `buf`, the bytes read and not yet consumed. The step depends only on the
    /// bytes and the budget, never on how the bytes were split into reads.
    pub fn next(&mut self, now: Instant, buf: &[u8]) -> Result<Step, Violation> {
        self.check(now)?;
        if buf.is_empty() {
            return Ok(Step::Pending);
        }
        if !self.inspector.handshake_done() {
            return self.handshake(buf);
        }
        if self.partial.as_ref().is_some_and(|p| p.body.is_some()) {
            return self.body(buf);
        }
        if buf[0] & FLAG_COMMAND != 0 {
            return self.command(buf);
        }
        self.header(now, buf)
    }

    fn handshake(&mut self, buf: &[u8]) -> Result<Step, Violation> {
        let consumed = match self.inspector.next(buf)? {
            None => return Ok(Step::Pending),
            Some(Action::Forward(n) | Action::Skip(n)) => n,
            Some(Action::Ping { consumed, .. } | Action::Rewrite { consumed, .. }) => consumed,
        };
        if !self.inspector.handshake_done() {
            return Ok(Step::Consumed(consumed));
        }
        // The inspector has passed the whole READY: read what it announces.
        let ready = peer_ready(&buf[..consumed])?;
        Ok(Step::Ready { consumed, ready })
    }

    fn command(&mut self, buf: &[u8]) -> Result<Step, Violation> {
        Ok(match self.inspector.next(buf)? {
            None => Step::Pending,
            Some(Action::Ping { consumed, context }) => Step::Ping { consumed, context },
            Some(Action::Forward(n) | Action::Skip(n)) => Step::Consumed(n),
            Some(Action::Rewrite { consumed, .. }) => Step::Consumed(consumed),
        })
    }

    fn header(&mut self, now: Instant, buf: &[u8]) -> Result<Step, Violation> {
        let header = if buf[0] & FLAG_LONG == 0 {
            SHORT_HEADER
        } else {
            LONG_HEADER
        };
        if buf.len() < header {
            // The inspector's flag checks wait for the whole header too: same verdict later.
            return Ok(Step::Pending);
        }
        let starting = self.partial.is_none();
        // The limits first, so that an oversized frame is refused rather than waited for.
        let (_, announced) = frame_header(buf).unwrap_or((header, 0));
        self.inspector.check_frame_header(buf[0], announced)?;
        // The inspector's checks bound the size by the frame limit, which fits in memory.
        let size = usize::try_from(announced).unwrap_or(usize::MAX);
        // The whole body is charged before any of it is read: a frame begun can always be
        // finished, so peers that each hold part of a frame can never wait on one another for
        // the rest, however many there are.
        let overhead = FRAME_OVERHEAD + if starting { MESSAGE_OVERHEAD } else { 0 };
        let need = overhead.saturating_add(size);
        let mut charge = self.paid.take().unwrap_or_else(|| self.budget.charge());
        let short = need.saturating_sub(charge.bytes());
        if short > 0 && !charge.try_grow(short) {
            self.paid = (charge.bytes() > 0).then_some(charge);
            return Ok(Step::Blocked);
        }
        charge.release_beyond(need);
        // Only the header goes to the inspector: the body follows as it arrives.
        if self.inspector.next(&buf[..header])? != Some(Action::Forward(header)) {
            // A whole message frame header is always passed whole.
            debug_assert!(false, "frame header not passed");
            return Err(Violation::Malformed("frame"));
        }
        let partial = self.partial.get_or_insert_with(|| Partial {
            frames: Vec::new(),
            body: None,
            charge: self.budget.charge(),
            deadline: now + self.timeout,
        });
        partial.charge.absorb(charge);
        partial.body = Some(Body {
            // Allocated whole, as it is charged: no copy as it grows, and no more memory than
            // the charge (pages not yet written are not resident).
            data: Vec::with_capacity(size),
            size,
            more: buf[0] & FLAG_MORE != 0,
        });
        self.taken += header as u64;
        if size == 0 {
            return Ok(self.frame_done(header));
        }
        Ok(Step::Consumed(header))
    }

    fn body(&mut self, buf: &[u8]) -> Result<Step, Violation> {
        let Some(partial) = self.partial.as_mut() else {
            return Ok(Step::Pending);
        };
        let Some(body) = partial.body.as_mut() else {
            return Ok(Step::Pending);
        };
        let take = (body.size - body.data.len()).min(buf.len());
        if self.inspector.next(&buf[..take])? != Some(Action::Forward(take)) {
            // Inside a body the inspector passes whatever it is given, up to the body's end.
            debug_assert!(false, "frame body not passed");
            return Err(Violation::Malformed("frame"));
        }
        body.data.extend_from_slice(&buf[..take]);
        self.taken += take as u64;
        if body.data.len() < body.size {
            return Ok(Step::Consumed(take));
        }
        Ok(self.frame_done(take))
    }

    /// The frame whose body is arriving is whole, after taking `consumed` bytes.
    fn frame_done(&mut self, consumed: usize) -> Step {
        let Some(partial) = self.partial.as_mut() else {
            return Step::Consumed(consumed);
        };
        let Some(body) = partial.body.take() else {
            return Step::Consumed(consumed);
        };
        // The buffer was allocated at the frame's size, so it is exactly full: no copy here.
        partial.frames.push(Bytes::from(body.data));
        if body.more {
            return Step::Consumed(consumed);
        }
        let Some(partial) = self.partial.take() else {
            return Step::Consumed(consumed);
        };
        Step::Message {
            consumed,
            message: Message {
                frames: partial.frames,
                charge: partial.charge,
            },
        }
    }
}

/// The socket type and identity in a READY the inspector has accepted (`command` is the whole
/// command, header included).
fn peer_ready(command: &[u8]) -> Result<PeerReady, Violation> {
    let malformed = Violation::Malformed("READY");
    let (header, _) = frame_header(command).ok_or(malformed.clone())?;
    let (_, mut metadata) = command
        .get(header..)
        .and_then(command_name)
        .ok_or(malformed.clone())?;
    let (mut socket_type, mut identity) = (None, None);
    while !metadata.is_empty() {
        let (name, value, rest) = property(metadata).ok_or(malformed.clone())?;
        // RFC 37: "Metadata names SHALL be case-insensitive."
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        } else if name.eq_ignore_ascii_case(b"Identity") && !value.is_empty() {
            identity = Some(Bytes::copy_from_slice(value));
        }
        metadata = rest;
    }
    match socket_type {
        Some(kind) if ROUTER_PEERS.contains(&kind) => Ok(PeerReady {
            socket_type: Bytes::copy_from_slice(kind),
            identity,
        }),
        Some(kind) => Err(Violation::Handshake(format!(
            "socket type {} cannot talk to a ROUTER",
            printable(kind)
        ))),
        None => Err(Violation::Handshake("READY without a Socket-Type".into())),
    }
}
