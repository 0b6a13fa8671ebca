//! 6/PPP, the Paranoid Pirate Protocol: READY and HEARTBEAT commands and enveloped payloads.
//!
//! "READY: Consists of a 1-part message containing the single byte 0x01. HEARTBEAT: Consists of a
//! 1-part message containing the single byte 0x02. REQUEST [and REPLY]: Consists of a multipart
//! message containing an optional address stack with null terminator, followed by a message content
//! of 1 or more parts." A one-frame message holding exactly `0x01` or `0x02` is therefore a command;
//! anything else is a payload.

use bytes::Bytes;

use crate::{DecodeError, Limits};

/// The READY command byte.
pub const READY: u8 = 0x01;
/// The HEARTBEAT command byte.
pub const HEARTBEAT: u8 = 0x02;

/// A request or reply: an address stack (the ROUTER envelope) and the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Address frames, outermost first, without the empty terminator. May be empty.
    pub address: Vec<Bytes>,
    /// Content frames, at least one.
    pub body: Vec<Bytes>,
}

impl Envelope {
    /// Whether encoding must write the empty terminator: after an address, and also without one
    /// when the body alone would read back differently (it holds an empty frame, which would be
    /// taken for the terminator, or it is a lone command byte, which would be taken for a
    /// command).
    fn needs_terminator(&self) -> bool {
        !self.address.is_empty()
            || self.body.iter().any(Bytes::is_empty)
            || matches!(self.body.as_slice(), [only] if only.as_ref() == [READY] || only.as_ref() == [HEARTBEAT])
    }
}

/// One 6/PPP message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PppMessage {
    /// Worker to queue: "The first message in any conversation MUST be W:READY."
    Ready,
    /// Either direction, at the agreed interval.
    Heartbeat,
    /// A REQUEST (queue to worker) or REPLY (worker to queue).
    Payload(Envelope),
}

impl PppMessage {
    /// Decodes a message as a DEALER worker or (after the identity) a ROUTER queue sees it.
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        match frames {
            [] => Err(DecodeError::Empty),
            [only] if only.as_ref() == [READY] => Ok(Self::Ready),
            [only] if only.as_ref() == [HEARTBEAT] => Ok(Self::Heartbeat),
            _ => {
                let (address, body) = match frames.iter().position(Bytes::is_empty) {
                    Some(at) => (&frames[..at], &frames[at + 1..]),
                    None => (&[][..], frames),
                };
                if body.is_empty() {
                    return Err(DecodeError::MissingBody);
                }
                Ok(Self::Payload(Envelope {
                    address: address.to_vec(),
                    body: body.to_vec(),
                }))
            }
        }
    }

    /// Encodes to frames; an envelope with an address gets the empty terminator after it (and so
    /// does a body that needs it to read back the same; see [`PppMessage::decode`]).
    pub fn encode(&self) -> Vec<Bytes> {
        match self {
            Self::Ready => vec![Bytes::from_static(&[READY])],
            Self::Heartbeat => vec![Bytes::from_static(&[HEARTBEAT])],
            Self::Payload(env) => {
                let mut frames = Vec::with_capacity(env.address.len() + 1 + env.body.len());
                if env.needs_terminator() {
                    frames.extend(env.address.iter().cloned());
                    frames.push(Bytes::new());
                }
                frames.extend(env.body.iter().cloned());
                frames
            }
        }
    }
}
