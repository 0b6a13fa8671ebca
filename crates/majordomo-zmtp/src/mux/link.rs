//! ZMTP encoding for both sides of the front end, and the decoding of the server's side of a
//! link: sans-IO, over `BytesMut`.
//!
//! A link is one ZMTP 3.1 connection, NULL mechanism, from the front end (a DEALER) to the
//! server's ROUTER. On it every message carries its peer in front:
//!
//! ```text
//! front end -> server   [peer-id, frame...]            a peer's message
//!                       [empty, event, peer-id]        a control message
//!                       [empty, event, peer-id, key]   CONNECTED, a CURVE peer with its key
//! server -> front end   [peer-id, frame...]            a reply for a peer
//!                       [empty, event, peer-id]        a control message
//! ```
//!
//! Peer identities are the front end's and never empty, so no peer can forge a control message
//! (the front end writes a peer's frames only after its identity). Events are one octet:
//! [`CONNECTED`] (front end to server: a peer finished its handshake) and [`DISCONNECTED`] (to
//! the server: the peer is gone; to the front end: close it).
//!
//! The encoders append to a buffer, so many messages (of many peers) leave in one write. The
//! [`LinkDecoder`] trusts the server no further than its limits: it never panics, never reserves
//! more than one frame within [`LinkLimits::max_frame`], and ends the link on anything malformed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::inspect::{
    command_name, frame_header, printable, property, PingContext, FLAG_COMMAND, FLAG_LONG,
    FLAG_MORE, GREETING, LONG_HEADER, MAX_COMMAND, MAX_PING_CONTEXT, MECHANISM, MECHANISM_LEN,
    NULL_MECHANISM,
};

/// The event octet of a control message: the peer finished its handshake (front end to server).
pub const CONNECTED: u8 = 0x01;
/// The event octet of a control message: the peer is gone (front end to server), or is to be
/// closed (server to front end).
pub const DISCONNECTED: u8 = 0x02;

/// A control message on a link: an event about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// The peer finished its handshake ([`CONNECTED`]).
    Connected(Bytes),
    /// The peer is gone, or is to be closed ([`DISCONNECTED`]).
    Disconnected(Bytes),
    /// The peer finished a CURVE handshake holding this permanent public key ([`CONNECTED`]
    /// with the key as a fourth frame).
    Authenticated {
        /// The peer.
        peer: Bytes,
        /// Its key, 32 octets.
        key: Bytes,
    },
}

impl Control {
    fn parts(&self) -> (u8, &Bytes) {
        match self {
            Control::Connected(peer) => (CONNECTED, peer),
            Control::Disconnected(peer) => (DISCONNECTED, peer),
            Control::Authenticated { peer, .. } => (CONNECTED, peer),
        }
    }
}

/// What the server sent on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// The server's READY: the handshake is done.
    Ready,
    /// The server sent a PING; answer with [`encode_pong`].
    Ping(PingContext),
    /// A message for a peer: at least one frame.
    Routed {
        /// The peer's identity.
        peer: Bytes,
        /// The frames to write to it.
        frames: Vec<Bytes>,
    },
    /// A control message.
    Control(Control),
}

/// Why a link failed: the server broke ZMTP or a limit. The link is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The server's greeting is not ZMTP 3 with the NULL mechanism.
    #[error("the server's greeting is not ZMTP 3 NULL")]
    Greeting,
    /// The server's handshake went wrong (no READY, an ERROR, a socket type other than ROUTER).
    #[error("link handshake failed: {0}")]
    Handshake(String),
    /// A frame header with reserved flags, or a command malformed or over [`MAX_COMMAND`].
    #[error("malformed {0} on the link")]
    Malformed(&'static str),
    /// A frame over [`LinkLimits::max_frame`].
    #[error("frame of {size} bytes on the link (at most {max})")]
    FrameTooLarge {
        /// The size announced.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message over [`LinkLimits::max_message`] bytes or [`LinkLimits::max_frames`] frames.
    #[error("message over the link's limits")]
    MessageTooLarge,
    /// A control message with an unknown event or not three frames.
    #[error("malformed control message on the link")]
    Control,
}

/// Size bounds on what the server sends on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Largest frame body.
    pub max_frame: usize,
    /// Largest message: the sum of its frame bodies, the peer identity's included.
    pub max_message: usize,
    /// Most frames in one message, the peer identity included.
    pub max_frames: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ready,
    Frames,
}

/// Reads the server's side of a link. See the module documentation.
#[derive(Debug)]
pub struct LinkDecoder {
    limits: LinkLimits,
    state: State,
    frames: Vec<Bytes>,
    message_bytes: usize,
}

impl LinkDecoder {
    /// A decoder for a new link, expecting the server's greeting first.
    pub fn new(limits: LinkLimits) -> Self {
        Self {
            limits,
            state: State::Greeting,
            frames: Vec::new(),
            message_bytes: 0,
        }
    }

    /// The next event whole at the front of `buf`, taken from it; `None` when more bytes are
    /// needed (room for them is reserved in `buf`, at most one frame's worth).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<LinkEvent>, LinkError> {
        loop {
            let event = match self.state {
                State::Greeting => self.greeting(buf)?,
                State::Ready => self.ready(buf)?,
                State::Frames => self.frame(buf)?,
            };
            match event {
                Step::Wait => return Ok(None),
                Step::Again => continue,
                Step::Event(event) => return Ok(Some(event)),
            }
        }
    }

    fn greeting(&mut self, buf: &mut BytesMut) -> Result<Step, LinkError> {
        if buf.len() < GREETING {
            buf.reserve(GREETING - buf.len());
            return Ok(Step::Wait);
        }
        // RFC 37: "A peer MUST accept higher protocol versions as valid"; the mechanism must
        // match ours: "If the mechanism that the peer received does not exactly match the
        // mechanism it sent, it MUST close the connection."
        if buf[0] != 0xff
            || buf[9] != 0x7f
            || buf[10] < 3
            || &buf[MECHANISM..MECHANISM + MECHANISM_LEN] != NULL_MECHANISM
        {
            return Err(LinkError::Greeting);
        }
        buf.advance(GREETING);
        self.state = State::Ready;
        Ok(Step::Again)
    }

    fn ready(&mut self, buf: &mut BytesMut) -> Result<Step, LinkError> {
        if buf[..]
            .first()
            .is_some_and(|&flags| flags & FLAG_COMMAND == 0)
        {
            return Err(LinkError::Handshake("a message before READY".into()));
        }
        let Some(command) = take_command(buf)? else {
            return Ok(Step::Wait);
        };
        let (name, mut metadata) = command_name(&command).ok_or(LinkError::Malformed("READY"))?;
        if name != b"READY" {
            return Err(LinkError::Handshake(format!(
                "{} instead of READY",
                printable(name)
            )));
        }
        let mut socket_type = None;
        while !metadata.is_empty() {
            let (name, value, rest) = property(metadata).ok_or(LinkError::Malformed("READY"))?;
            if name.eq_ignore_ascii_case(b"Socket-Type") {
                socket_type = Some(value);
            }
            metadata = rest;
        }
        // RFC 37: "DEALER: REP, DEALER, ROUTER"; the front end only ever links to a ROUTER.
        if socket_type != Some(b"ROUTER") {
            return Err(LinkError::Handshake(
                "the server is not a ROUTER socket".into(),
            ));
        }
        self.state = State::Frames;
        Ok(Step::Event(LinkEvent::Ready))
    }

    fn frame(&mut self, buf: &mut BytesMut) -> Result<Step, LinkError> {
        let Some(&flags) = buf[..].first() else {
            return Ok(Step::Wait);
        };
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0
            || flags & (FLAG_COMMAND | FLAG_MORE) == FLAG_COMMAND | FLAG_MORE
        {
            return Err(LinkError::Malformed("frame header"));
        }
        if flags & FLAG_COMMAND != 0 {
            let Some(command) = take_command(buf)? else {
                return Ok(Step::Wait);
            };
            return match command_name(&command) {
                // ping = command-size %d4 "PING" ping-ttl ping-context
                Some((b"PING", data)) if data.len() >= 2 && data.len() - 2 <= MAX_PING_CONTEXT => {
                    Ok(Step::Event(LinkEvent::Ping(PingContext::new(&data[2..]))))
                }
                Some((b"PING", _)) => Err(LinkError::Malformed("PING")),
                // A PONG, or a command the front end has no use for: skipped.
                Some(_) => Ok(Step::Again),
                None => Err(LinkError::Malformed("command")),
            };
        }
        let Some((header, size)) = frame_header(buf) else {
            buf.reserve(LONG_HEADER);
            return Ok(Step::Wait);
        };
        let body = usize::try_from(size)
            .ok()
            .filter(|&body| body <= self.limits.max_frame)
            .ok_or(LinkError::FrameTooLarge {
                size,
                max: self.limits.max_frame,
            })?;
        if self.frames.len() >= self.limits.max_frames
            || self.message_bytes.saturating_add(body) > self.limits.max_message
        {
            return Err(LinkError::MessageTooLarge);
        }
        if buf.len() < header + body {
            buf.reserve(header + body - buf.len());
            return Ok(Step::Wait);
        }
        buf.advance(header);
        self.frames.push(buf.split_to(body).freeze());
        self.message_bytes += body;
        if flags & FLAG_MORE != 0 {
            return Ok(Step::Again);
        }
        self.message_bytes = 0;
        let mut frames = std::mem::take(&mut self.frames).into_iter();
        let Some(first) = frames.next() else {
            return Ok(Step::Again);
        };
        if first.is_empty() {
            return control(frames).map(|c| Step::Event(LinkEvent::Control(c)));
        }
        let frames: Vec<Bytes> = frames.collect();
        if frames.is_empty() {
            // ZMTP has no empty messages: nothing to write to the peer.
            return Ok(Step::Again);
        }
        Ok(Step::Event(LinkEvent::Routed {
            peer: first,
            frames,
        }))
    }
}

enum Step {
    Wait,
    Again,
    Event(LinkEvent),
}

/// The body of the whole command at the front of `buf`, taken from it.
fn take_command(buf: &mut BytesMut) -> Result<Option<Bytes>, LinkError> {
    let Some((header, size)) = frame_header(buf) else {
        buf.reserve(LONG_HEADER);
        return Ok(None);
    };
    if size > MAX_COMMAND as u64 {
        return Err(LinkError::Malformed("command"));
    }
    let size = size as usize;
    if buf.len() < header + size {
        buf.reserve(header + size - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    Ok(Some(buf.split_to(size).freeze()))
}

/// `[event, peer-id]` after the empty frame.
fn control(mut frames: impl Iterator<Item = Bytes>) -> Result<Control, LinkError> {
    let (Some(event), Some(peer), None) = (frames.next(), frames.next(), frames.next()) else {
        return Err(LinkError::Control);
    };
    match event[..] {
        _ if peer.is_empty() => Err(LinkError::Control),
        [CONNECTED] => Ok(Control::Connected(peer)),
        [DISCONNECTED] => Ok(Control::Disconnected(peer)),
        _ => Err(LinkError::Control),
    }
}

/// Appends a ZMTP 3.1 greeting with the NULL mechanism, as-server 0 (RFC 37: "When a peer uses
/// the NULL security mechanism, the as-server field MUST be zero").
pub fn encode_greeting(out: &mut BytesMut) {
    encode_greeting_with(out, NULL_MECHANISM, false);
}

/// Appends a ZMTP 3.1 greeting offering `mechanism` (padded with zeros), as a server or not.
pub(crate) fn encode_greeting_with(
    out: &mut BytesMut,
    mechanism: &[u8; MECHANISM_LEN],
    as_server: bool,
) {
    let mut greeting = [0u8; GREETING];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[11] = 1;
    greeting[MECHANISM..MECHANISM + MECHANISM_LEN].copy_from_slice(mechanism);
    greeting[MECHANISM + MECHANISM_LEN] = u8::from(as_server);
    out.put_slice(&greeting);
}

/// READY's metadata announcing `socket_type` and, if given, a routing `identity` (RFC 37:
/// `property = name value`).
pub(crate) fn ready_metadata(socket_type: &[u8], identity: Option<&[u8]>) -> Vec<u8> {
    let mut metadata = Vec::with_capacity(64);
    let mut property = |name: &[u8], value: &[u8]| {
        metadata.push(name.len() as u8);
        metadata.extend_from_slice(name);
        metadata.extend_from_slice(&(value.len() as u32).to_be_bytes());
        metadata.extend_from_slice(value);
    };
    property(b"Socket-Type", socket_type);
    if let Some(identity) = identity {
        property(b"Identity", identity);
    }
    metadata
}

/// Appends a READY command announcing `socket_type` and, if given, a routing `identity`.
pub fn encode_ready(out: &mut BytesMut, socket_type: &[u8], identity: Option<&[u8]>) {
    encode_ready_with(out, &ready_metadata(socket_type, identity));
}

/// Appends a READY command carrying `metadata` as it is.
pub(crate) fn encode_ready_with(out: &mut BytesMut, metadata: &[u8]) {
    encode_header(out, FLAG_COMMAND, 6 + metadata.len());
    out.put_slice(b"\x05READY");
    out.put_slice(metadata);
}

/// Appends a PONG echoing `context` (RFC 37: a peer receiving a PING "SHALL respond with a PONG
/// command that echoes the ping-context").
pub fn encode_pong(out: &mut BytesMut, context: &PingContext) {
    let (bytes, len) = context.pong();
    out.put_slice(&bytes[..len]);
}

/// Appends one message frame.
pub fn encode_frame(out: &mut BytesMut, body: &[u8], more: bool) {
    encode_header(out, if more { FLAG_MORE } else { 0 }, body.len());
    out.put_slice(body);
}

/// Appends a message: each frame with MORE but the last. Nothing for no frames.
pub fn encode_message(out: &mut BytesMut, frames: &[Bytes]) {
    out.reserve(encoded_len(frames));
    for (i, frame) in frames.iter().enumerate() {
        encode_frame(out, frame, i + 1 < frames.len());
    }
}

/// Appends `[peer, frames...]`, a peer's message on a link. Nothing for no frames (ZMTP has no
/// empty messages, and a lone peer identity would read as nothing at all).
pub fn encode_routed(out: &mut BytesMut, peer: &[u8], frames: &[Bytes]) {
    if frames.is_empty() {
        return;
    }
    out.reserve(header_len(peer.len()) + peer.len() + encoded_len(frames));
    encode_frame(out, peer, true);
    encode_message(out, frames);
}

/// Appends `[empty, event, peer]`, a control message on a link.
pub fn encode_control(out: &mut BytesMut, control: &Control) {
    let (event, peer) = control.parts();
    encode_frame(out, &[], true);
    encode_frame(out, &[event], true);
    match control {
        Control::Authenticated { key, .. } => {
            encode_frame(out, peer, true);
            encode_frame(out, key, false);
        }
        _ => encode_frame(out, peer, false),
    }
}

/// The bytes [`encode_message`] appends for `frames`.
pub fn encoded_len(frames: &[Bytes]) -> usize {
    frames.iter().map(|f| header_len(f.len()) + f.len()).sum()
}

fn header_len(body: usize) -> usize {
    if body > 255 {
        LONG_HEADER
    } else {
        2
    }
}

/// Appends a frame header: `flags`, with the LONG flag and an eight-octet size past 255.
pub(crate) fn encode_header(out: &mut BytesMut, flags: u8, size: usize) {
    if size > 255 {
        out.put_u8(flags | FLAG_LONG);
        out.put_u64(size as u64);
    } else {
        out.put_u8(flags);
        out.put_u8(size as u8);
    }
}
