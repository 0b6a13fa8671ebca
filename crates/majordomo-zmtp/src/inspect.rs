//! The guard's reading of a ZMTP 3 byte stream: sans-IO, no clock, no allocation per frame.
//!
//! An [`Inspector`] follows one direction of one connection. The caller keeps the bytes it has
//! read and not yet passed on in a buffer, and asks [`Inspector::next`] what to do with its
//! front: pass some bytes on, drop a PONG, answer a PING, pass on a rewritten READY, or close the
//! connection for a [`Violation`]. The inspector never needs more than [`MAX_COMMAND`] +
//! [`LONG_HEADER`] bytes at once, whatever a frame header announces: message bodies are passed on
//! as they arrive. Its decisions depend only on the bytes, never on how they were split into
//! reads (a property test checks this).
//!
//! What it reads, from RFC 37 (ZMTP 3.1):
//!
//! ```text
//! greeting  = signature version mechanism as-server filler   ; 64 octets
//! signature = %xFF padding %x7F                             ; padding = 8OCTET
//! version   = %x03 version-minor                            ; (3.0 peers are accepted too)
//! mechanism = 20OCTET                                       ; "NULL" padded with zeros
//! command   = command-size command-body                     ; %x04 short / %x06 long
//! message   = *message-more message-last                    ; %x00/%x02, MORE %x01/%x03
//! ready     = command-size %d5 "READY" metadata             ; property = name value
//! ping      = command-size %d4 "PING" ping-ttl ping-context ; ttl 2 octets, context 0-16
//! pong      = command-size %d4 "PONG" ping-context
//! ```

use std::fmt;

use crate::Rule;

/// Bytes of a short frame header (flags and a one-octet size).
pub const SHORT_HEADER: usize = 2;
/// Bytes of a long frame header (flags and an eight-octet size).
pub const LONG_HEADER: usize = 9;
/// Bytes of the greeting.
pub const GREETING: usize = 64;
/// The largest command the guard reads (READY with its metadata, PING, PONG). libzmq's READY
/// carries the socket type, a routing identity of at most 255 bytes and any `ZMQ_METADATA`
/// properties the application set; 8 KiB leaves room for many.
pub const MAX_COMMAND: usize = 8 * 1024;
/// The longest PING context (RFC 37: "ping-context = 0*16OCTET").
pub const MAX_PING_CONTEXT: usize = 16;

pub(crate) const MECHANISM: usize = 12;
pub(crate) const MECHANISM_LEN: usize = 20;
pub(crate) const NULL_MECHANISM: &[u8; MECHANISM_LEN] = b"NULL\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
const AS_SERVER: usize = 32;

pub(crate) const FLAG_MORE: u8 = 0x01;
pub(crate) const FLAG_LONG: u8 = 0x02;
pub(crate) const FLAG_COMMAND: u8 = 0x04;

/// Size bounds on what a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body.
    pub max_frame: u64,
    /// Largest message: the sum of its frame bodies.
    pub max_message: u64,
    /// Most frames in one message.
    pub max_frames: u32,
}

impl From<&majordomo_proto::Limits> for FrameLimits {
    /// The bounds a peer of a server with `limits` holds to: a frame as large as a message.
    fn from(limits: &majordomo_proto::Limits) -> Self {
        Self {
            max_frame: limits.max_message_size as u64,
            max_message: limits.max_message_size as u64,
            max_frames: u32::try_from(limits.max_frames).unwrap_or(u32::MAX),
        }
    }
}

/// A rule a peer broke. The connection is closed and nothing after the offending bytes is passed
/// on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The first ten bytes are not a ZMTP 3 signature (`FF`, 8 bytes, `7F`): not ZMTP at all.
    #[error("not a ZMTP signature")]
    Signature,
    /// The greeting asks for ZMTP 1 or 2, which zmq.rs does not speak.
    #[error("ZMTP version {0} is not supported (3.0 or later)")]
    Version(u8),
    /// The greeting names a security mechanism other than NULL.
    #[error("security mechanism {0:?} is not supported (NULL only)")]
    Mechanism(String),
    /// The greeting's as-server octet is neither 0 nor 1.
    #[error("malformed greeting")]
    Greeting,
    /// A frame header's reserved flag bits are set, or a command carries the MORE flag.
    #[error("reserved frame flags {0:#04x}")]
    Flags(u8),
    /// Something other than READY arrived during the handshake, or an ERROR command.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A command longer than [`MAX_COMMAND`].
    #[error("command of {size} bytes (at most {MAX_COMMAND})")]
    CommandTooLarge {
        /// The size announced.
        size: u64,
    },
    /// A command that is not well formed (metadata that overruns, a PING context over 16 bytes).
    #[error("malformed {0} command")]
    Malformed(&'static str),
    /// A command a ROUTER peer has no business sending after the handshake (READY again,
    /// SUBSCRIBE, ERROR, an unknown name).
    #[error("unexpected {0} command")]
    UnexpectedCommand(String),
    /// The peer chose a routing identity beginning with a zero byte: that room is reserved for
    /// identities the accepting side assigns (and one guessed could take another peer's replies).
    #[error("routing identity beginning with a zero byte (reserved)")]
    ReservedIdentity,
    /// A frame larger than [`FrameLimits::max_frame`].
    #[error("frame of {size} bytes (at most {max})")]
    FrameTooLarge {
        /// The size announced.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A message whose frames add up to more than [`FrameLimits::max_message`].
    #[error("message of at least {size} bytes (at most {max})")]
    MessageTooLarge {
        /// The size reached with this frame.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A message with more than [`FrameLimits::max_frames`] frames.
    #[error("message of more than {max} frames")]
    TooManyFrames {
        /// The limit.
        max: u32,
    },
    /// A CURVE handshake or MESSAGE command that breaks RFC 26: a box that does not open, a
    /// replayed nonce, a malformed command.
    #[error("CURVE: {0}")]
    Curve(crate::curve::CurveError),
    /// A CURVE client whose key the endpoint does not allow (its Z85 prefix).
    #[error("CURVE client key {0}... not allowed")]
    Unauthorized(String),
    /// A message begun and not finished within the front end's message timeout
    /// ([`crate::GuardConfig::message_timeout`]).
    #[error("message not finished within {0:?} of its first frame")]
    Stalled(std::time::Duration),
}

impl Violation {
    /// The rule broken.
    pub fn rule(&self) -> Rule {
        match self {
            Self::Signature | Self::Version(_) | Self::Mechanism(_) | Self::Greeting => {
                Rule::Greeting
            }
            Self::Flags(_) | Self::Malformed(_) => Rule::Malformed,
            Self::Handshake(_) => Rule::Handshake,
            Self::CommandTooLarge { .. } | Self::UnexpectedCommand(_) => Rule::Command,
            Self::ReservedIdentity => Rule::Identity,
            Self::FrameTooLarge { .. } => Rule::FrameSize,
            Self::MessageTooLarge { .. } => Rule::MessageSize,
            Self::TooManyFrames { .. } => Rule::Frames,
            Self::Stalled(_) => Rule::MessageTimeout,
            Self::Curve(_) => Rule::Curve,
            Self::Unauthorized(_) => Rule::Unauthorized,
        }
    }
}

/// A PING's context, echoed in the PONG (RFC 37: "the peer SHALL respond with a PONG command
/// that echoes the context").
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PingContext {
    bytes: [u8; MAX_PING_CONTEXT],
    len: u8,
}

impl PingContext {
    pub(crate) fn new(context: &[u8]) -> Self {
        let mut bytes = [0; MAX_PING_CONTEXT];
        bytes[..context.len()].copy_from_slice(context);
        Self {
            bytes,
            len: context.len() as u8,
        }
    }

    /// The context bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The PONG command answering this PING, ready to write.
    pub fn pong(&self) -> ([u8; 6 + MAX_PING_CONTEXT + SHORT_HEADER], usize) {
        let mut out = [0; 6 + MAX_PING_CONTEXT + SHORT_HEADER];
        let context = self.as_bytes();
        out[0] = FLAG_COMMAND;
        out[1] = (5 + context.len()) as u8;
        out[2] = 4;
        out[3..7].copy_from_slice(b"PONG");
        out[7..7 + context.len()].copy_from_slice(context);
        (out, 7 + context.len())
    }
}

impl fmt::Debug for PingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PingContext({:02x?})", self.as_bytes())
    }
}

/// What to do with the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass these many bytes on unchanged.
    Forward(usize),
    /// Drop these many bytes (a PONG: the guard sends no PING of its own, so it answers to none).
    Skip(usize),
    /// Drop these many bytes (a PING) and answer it with a PONG.
    Ping {
        /// The PING's length in the buffer.
        consumed: usize,
        /// What the PONG must echo.
        context: PingContext,
    },
    /// Drop these many bytes (the peer's READY) and pass on `ready` instead: the same command
    /// with the routing identity the guard assigns.
    Rewrite {
        /// The original command's length in the buffer.
        consumed: usize,
        /// The command to pass on in its place.
        ready: Vec<u8>,
    },
}

/// Which end of the connection a stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The remote peer: checked against every rule and limit.
    Peer,
    /// zmq.rs, behind the guard: trusted; only followed, to know where frames begin.
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of the greeting have been passed on.
    Greeting(usize),
    /// Waiting for the handshake's READY.
    Handshake,
    /// Waiting for a frame header (between frames).
    Header,
    /// Inside a frame body, with this many bytes still to come.
    Body(u64),
}

/// Follows one direction of a ZMTP connection. See the module documentation.
#[derive(Debug, Clone)]
pub struct Inspector {
    origin: Origin,
    limits: FrameLimits,
    /// The identity to give a peer that chose none; `None` leaves READY as it is.
    identity: Option<Vec<u8>>,
    state: State,
    /// The frame being passed on is the last of its message.
    last_frame: bool,
    /// Frames and bytes of the message so far.
    frames: u32,
    message_bytes: u64,
}

impl Inspector {
    /// An inspector of the stream from `origin`. On the peer's stream, `identity` (if given) is
    /// written into its READY when the peer chose no routing identity of its own.
    pub fn new(origin: Origin, limits: FrameLimits, identity: Option<Vec<u8>>) -> Self {
        Self {
            origin,
            limits,
            identity,
            state: State::Greeting(0),
            last_frame: true,
            frames: 0,
            message_bytes: 0,
        }
    }

    /// The greeting and READY have passed: the stream now carries messages and commands.
    pub fn handshake_done(&self) -> bool {
        matches!(self.state, State::Header | State::Body(_))
    }

    /// Everything passed on so far ends at a frame boundary after the handshake: a command may be
    /// inserted here (RFC 37 places commands between frames; libzmq inserts its own PINGs so).
    pub fn between_frames(&self) -> bool {
        self.state == State::Header
    }

    /// What to do with `buf`, the bytes read and not yet handled, or `None` if it must hold more
    /// bytes first (it never needs more than [`MAX_COMMAND`] + [`LONG_HEADER`]). Call again with
    /// the rest after acting on the answer.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<Action>, Violation> {
        if buf.is_empty() {
            return Ok(None);
        }
        match self.state {
            State::Greeting(at) => self.greeting(at, buf),
            State::Handshake => self.handshake(buf),
            State::Header => self.header(buf),
            State::Body(remaining) => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.advance_body(n as u64);
                Ok(Some(Action::Forward(n)))
            }
        }
    }

    fn greeting(&mut self, at: usize, buf: &[u8]) -> Result<Option<Action>, Violation> {
        let mut n = (GREETING - at).min(buf.len());
        if self.origin == Origin::Peer {
            for i in 0..n {
                if let Err(violation) = check_greeting(at + i, &buf[i..]) {
                    // The bytes before the offending one pass first, so that what passes does
                    // not depend on where reads ended.
                    if i == 0 {
                        return Err(violation);
                    }
                    n = i;
                    break;
                }
                if at + i == MECHANISM && buf.len() < i + MECHANISM_LEN {
                    // The mechanism is judged whole, so the verdict names it.
                    n = i;
                    break;
                }
            }
            if n == 0 {
                return Ok(None);
            }
        }
        self.state = if at + n == GREETING {
            State::Handshake
        } else {
            State::Greeting(at + n)
        };
        Ok(Some(Action::Forward(n)))
    }

    fn handshake(&mut self, buf: &[u8]) -> Result<Option<Action>, Violation> {
        if self.origin == Origin::Server {
            // zmq.rs's READY: a command like any other frame, followed only to find its end.
            return self.server_frame(buf);
        }
        let flags = buf[0];
        if flags & !(FLAG_LONG | FLAG_COMMAND) != 0 || flags & FLAG_COMMAND == 0 {
            return Err(Violation::Handshake(
                "a message before READY (NULL mechanism: READY comes first)".into(),
            ));
        }
        let Some((header, body)) = whole_command(buf)? else {
            return Ok(None);
        };
        let (name, data) = command_name(body).ok_or(Violation::Malformed("handshake"))?;
        match name {
            b"READY" => {}
            b"ERROR" => return Err(Violation::Handshake("the peer sent ERROR".into())),
            other => {
                return Err(Violation::Handshake(format!(
                    "{} instead of READY",
                    printable(other)
                )))
            }
        }
        let identity = ready_identity(data)?;
        self.state = State::Header;
        let consumed = header + body.len();
        match (&self.identity, identity) {
            (_, Some(id)) if id.first() == Some(&0) => Err(Violation::ReservedIdentity),
            (Some(assigned), None | Some(&[])) => Ok(Some(Action::Rewrite {
                consumed,
                ready: rewrite_ready(data, assigned),
            })),
            _ => Ok(Some(Action::Forward(consumed))),
        }
    }

    fn header(&mut self, buf: &[u8]) -> Result<Option<Action>, Violation> {
        if self.origin == Origin::Server {
            return self.server_frame(buf);
        }
        let flags = buf[0];
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0
            || flags & (FLAG_COMMAND | FLAG_MORE) == FLAG_COMMAND | FLAG_MORE
        {
            return Err(Violation::Flags(flags));
        }
        if flags & FLAG_COMMAND != 0 {
            return self.command(buf);
        }
        let Some((header, size)) = frame_header(buf) else {
            return Ok(None);
        };
        self.check_frame_header(flags, size)?;
        self.frames += 1;
        self.message_bytes = self.message_bytes.saturating_add(size);
        self.last_frame = flags & FLAG_MORE == 0;
        Ok(Some(self.start_body(buf, header, size)))
    }

    /// Whether a message frame with `flags` announcing `size` bytes may come next from a peer:
    /// the checks [`Inspector::next`] makes of its header, without taking it.
    pub fn check_frame_header(&self, flags: u8, size: u64) -> Result<(), Violation> {
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0
            || flags & (FLAG_COMMAND | FLAG_MORE) == FLAG_COMMAND | FLAG_MORE
        {
            return Err(Violation::Flags(flags));
        }
        if size > self.limits.max_frame {
            return Err(Violation::FrameTooLarge {
                size,
                max: self.limits.max_frame,
            });
        }
        if self.frames >= self.limits.max_frames {
            return Err(Violation::TooManyFrames {
                max: self.limits.max_frames,
            });
        }
        let total = self.message_bytes.saturating_add(size);
        if total > self.limits.max_message {
            return Err(Violation::MessageTooLarge {
                size: total,
                max: self.limits.max_message,
            });
        }
        Ok(())
    }

    /// Enters a frame body of `size` bytes after a `header`-byte header at the front of `buf`,
    /// and passes the header and whatever of the body is here in one step.
    fn start_body(&mut self, buf: &[u8], header: usize, size: u64) -> Action {
        self.state = State::Body(size);
        let body = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(buf.len() - header);
        self.advance_body(body as u64);
        Action::Forward(header + body)
    }

    fn command(&mut self, buf: &[u8]) -> Result<Option<Action>, Violation> {
        let Some((header, body)) = whole_command(buf)? else {
            return Ok(None);
        };
        let consumed = header + body.len();
        match command_name(body) {
            Some((b"PING", data)) => {
                // ping = command-size %d4 "PING" ping-ttl ping-context
                if data.len() < 2 || data.len() - 2 > MAX_PING_CONTEXT {
                    return Err(Violation::Malformed("PING"));
                }
                Ok(Some(Action::Ping {
                    consumed,
                    context: PingContext::new(&data[2..]),
                }))
            }
            Some((b"PONG", _)) => Ok(Some(Action::Skip(consumed))),
            Some((name, _)) => Err(Violation::UnexpectedCommand(printable(name))),
            None => Err(Violation::Malformed("command")),
        }
    }

    /// Follows a frame or command of zmq.rs's, its READY included: no limits.
    fn server_frame(&mut self, buf: &[u8]) -> Result<Option<Action>, Violation> {
        let Some((header, size)) = frame_header(buf) else {
            return Ok(None);
        };
        Ok(Some(self.start_body(buf, header, size)))
    }

    fn advance_body(&mut self, n: u64) {
        let State::Body(remaining) = self.state else {
            return;
        };
        let remaining = remaining - n;
        if remaining > 0 {
            self.state = State::Body(remaining);
            return;
        }
        self.state = State::Header;
        if self.last_frame {
            self.frames = 0;
            self.message_bytes = 0;
        }
    }
}

/// Checks the greeting byte at `index`, the first of `rest`.
fn check_greeting(index: usize, rest: &[u8]) -> Result<(), Violation> {
    let byte = rest[0];
    match index {
        0 if byte != 0xff => Err(Violation::Signature),
        9 if byte != 0x7f => Err(Violation::Signature),
        10 if byte < 3 => Err(Violation::Version(byte)),
        MECHANISM => match rest.get(..MECHANISM_LEN) {
            Some(name) if name != NULL_MECHANISM => {
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                Err(Violation::Mechanism(printable(name)))
            }
            _ => Ok(()),
        },
        AS_SERVER if byte > 1 => Err(Violation::Greeting),
        _ => Ok(()),
    }
}

/// The header length and body size of the frame at the front of `buf`, once the header is there.
pub(crate) fn frame_header(buf: &[u8]) -> Option<(usize, u64)> {
    if buf.first()? & FLAG_LONG == 0 {
        let size = *buf.get(1)?;
        Some((SHORT_HEADER, u64::from(size)))
    } else {
        let size: [u8; 8] = buf.get(1..LONG_HEADER)?.try_into().ok()?;
        Some((LONG_HEADER, u64::from_be_bytes(size)))
    }
}

/// The header length and body of the command at the front of `buf`, once all of it is there.
pub(crate) fn whole_command(buf: &[u8]) -> Result<Option<(usize, &[u8])>, Violation> {
    let Some((header, size)) = frame_header(buf) else {
        return Ok(None);
    };
    if size > MAX_COMMAND as u64 {
        return Err(Violation::CommandTooLarge { size });
    }
    let end = header + size as usize;
    Ok(buf.get(header..end).map(|body| (header, body)))
}

/// `command-name = OCTET 1*255command-name-char`: the name and the data after it.
pub(crate) fn command_name(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = body.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Walks READY's metadata (`property = name value`, `name = OCTET 1*255name-char`,
/// `value = 4OCTET *OCTET`) and returns the value of `Identity`, the one zmq.rs reads.
fn ready_identity(mut data: &[u8]) -> Result<Option<&[u8]>, Violation> {
    let mut identity = None;
    while !data.is_empty() {
        let (name, value, rest) = property(data).ok_or(Violation::Malformed("READY"))?;
        if name == b"Identity" {
            identity = Some(value);
        }
        data = rest;
    }
    Ok(identity)
}

pub(crate) fn property(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (&len, rest) = data.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len + 4 {
        return None;
    }
    let (name, rest) = rest.split_at(len);
    let (size, rest) = rest.split_first_chunk::<4>()?;
    let size = u32::from_be_bytes(*size) as usize;
    if rest.len() < size {
        return None;
    }
    let (value, rest) = rest.split_at(size);
    Some((name, value, rest))
}

/// READY with `metadata` (already walked) minus any empty `Identity`, plus `Identity = id`.
fn rewrite_ready(mut metadata: &[u8], id: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(6 + metadata.len() + 13 + id.len());
    body.push(5);
    body.extend_from_slice(b"READY");
    while let Some((name, value, rest)) = property(metadata) {
        if name != b"Identity" {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        metadata = rest;
    }
    body.push(8);
    body.extend_from_slice(b"Identity");
    body.extend_from_slice(&(id.len() as u32).to_be_bytes());
    body.extend_from_slice(id);
    let mut out = Vec::with_capacity(LONG_HEADER + body.len());
    if body.len() <= 255 {
        out.extend_from_slice(&[FLAG_COMMAND, body.len() as u8]);
    } else {
        out.push(FLAG_COMMAND | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&body);
    out
}

/// A peer-supplied name for a log line: printable ASCII, at most 32 bytes.
pub(crate) fn printable(name: &[u8]) -> String {
    name.iter()
        .take(32)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
