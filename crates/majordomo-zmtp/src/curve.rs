//! CurveZMQ (RFC 26) over ZMTP 3.1's CURVE mechanism (RFC 25): keys, the handshake of both sides
//! and the MESSAGE boxes. Sans-IO: the functions take command bodies and append whole ZMTP
//! commands to a buffer; randomness is an input, so a handshake can be replayed.
//!
//! ```text
//! C -> S  HELLO     version, padding, C', short nonce, Box[64 zeros](C'->S)
//! S -> C  WELCOME   long nonce, Box[S' + cookie](S->C')
//!                   cookie = long nonce, SecretBox[C' + s'](K)
//! C -> S  INITIATE  cookie, short nonce, Box[C + vouch + metadata](C'->S')
//!                   vouch = long nonce, Box[C' + S](C->S')
//! S -> C  READY     short nonce, Box[metadata](S'->C')
//! C <> S  MESSAGE   short nonce, Box[flags + frame](C'<->S')
//! S -> C  ERROR     reason (in clear; instead of READY when the client is refused)
//! ```
//!
//! Boxes are NaCl's `crypto_box` (X25519, XSalsa20, Poly1305): on the wire a 16-octet tag, then
//! the ciphertext, as libzmq writes them. Every short nonce is the sender's count of commands,
//! big-endian; the receiver refuses one that does not increase (RFC 26: "The server SHALL verify
//! that a client connection does use correctly incrementing short nonces, and SHALL disconnect
//! clients that reuse a short nonce").
//!
//! - [`keys`]: [`CurvePublicKey`], [`CurveKeyPair`], Z85 (RFC 32) and czmq's certificate files.
//! - [`handshake`]: [`CurveServer`] and [`CurveClient`].
//! - [`Session`]: MESSAGE boxes once the handshake is done.

pub mod handshake;
pub mod keys;
mod message;
#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::AeadInPlace;

pub use handshake::{CurveClient, CurveServer, Initiated};
pub use keys::{CurveKeyPair, CurvePublicKey, KeyError};

use crate::inspect::FLAG_COMMAND;

/// The mechanism name in a CURVE greeting, padded with zeros.
pub const CURVE_MECHANISM: &[u8; 20] = b"CURVE\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// Bytes a MESSAGE command adds to the frame it carries: its name (8), short nonce (8), the box's
/// tag (16) and the flags octet (RFC 26: "at least 33 octets long").
pub const MESSAGE_OVERHEAD: usize = 33;
/// A key's length in bytes.
pub const KEY: usize = 32;
/// The box's tag, in front of every ciphertext.
pub const TAG: usize = 16;

/// The flags octet inside a MESSAGE box: more frames follow.
pub const MESSAGE_MORE: u8 = 0x01;
/// The flags octet inside a MESSAGE box: the frame is a ZMTP command (PING, PONG), as libzmq
/// sends heartbeats once CURVE is on.
pub const MESSAGE_COMMAND: u8 = 0x02;

const MESSAGE_NAME: &[u8] = b"\x07MESSAGE";
const MESSAGE_FROM_CLIENT: &[u8; 16] = b"CurveZMQMESSAGEC";
const MESSAGE_FROM_SERVER: &[u8; 16] = b"CurveZMQMESSAGES";

/// Why a CURVE peer was refused. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CurveError {
    /// A command of the wrong length or layout, or out of place.
    #[error("malformed {0} command")]
    Malformed(&'static str),
    /// A box that does not open: the wrong key, or bytes altered on the way.
    #[error("{0} box does not open (wrong key or altered)")]
    Box(&'static str),
    /// A HELLO for another CurveZMQ version than 1.0.
    #[error("CurveZMQ version {0}.{1} (1.0 only)")]
    Version(u8, u8),
    /// A short nonce that does not increase: a replayed or reordered command.
    #[error("short nonce {got} after {last}: replayed or out of order")]
    Nonce {
        /// The nonce received.
        got: u64,
        /// The last nonce accepted.
        last: u64,
    },
    /// The vouch does not name the transient key or the server it came with.
    #[error("the vouch does not match the handshake")]
    Vouch,
    /// The cookie is not the one this server sent on this connection.
    #[error("the cookie does not match the handshake")]
    Cookie,
    /// MESSAGE flags with reserved bits set (RFC 26: "Bits 7-1: Reserved ... MUST be zero";
    /// ZMTP 3.1 uses bit 1 for commands).
    #[error("reserved MESSAGE flags {0:#04x}")]
    Flags(u8),
    /// The server refused this client with an ERROR command.
    #[error("the server refused the handshake: {0}")]
    Refused(String),
}

/// The 24-octet nonce: a 16-octet prefix and a big-endian short nonce.
fn short_nonce(prefix: &[u8; 16], nonce: u64) -> crypto_box::Nonce {
    let mut out = [0; 24];
    out[..16].copy_from_slice(prefix);
    out[16..].copy_from_slice(&nonce.to_be_bytes());
    GenericArray::clone_from_slice(&out)
}

/// The 24-octet nonce: an 8-octet prefix and a 16-octet long nonce.
fn long_nonce(prefix: &[u8; 8], nonce: &[u8; 16]) -> crypto_box::Nonce {
    let mut out = [0; 24];
    out[..8].copy_from_slice(prefix);
    out[8..].copy_from_slice(nonce);
    GenericArray::clone_from_slice(&out)
}

/// Appends the header of a ZMTP command of `len` bytes.
fn command_header(out: &mut BytesMut, len: usize) {
    crate::mux::link::encode_header(out, FLAG_COMMAND, len);
}

/// Opens `sealed` (tag, then ciphertext) in place; the plaintext is `sealed[TAG..]` after.
fn open_in_place(
    cipher: &impl AeadInPlace<NonceSize = crypto_box::aead::consts::U24>,
    nonce: &crypto_box::Nonce,
    sealed: &mut [u8],
    what: &'static str,
) -> Result<(), CurveError> {
    if sealed.len() < TAG {
        return Err(CurveError::Malformed(what));
    }
    let (tag, text) = sealed.split_at_mut(TAG);
    let tag = GenericArray::clone_from_slice(tag);
    cipher
        .decrypt_in_place_detached(nonce, b"", text, &tag)
        .map_err(|_| CurveError::Box(what))
}

/// Seals the plaintext at `buf[at + TAG..]` in place and writes its tag at `buf[at..at + TAG]`.
fn seal_in_place(
    cipher: &impl AeadInPlace<NonceSize = crypto_box::aead::consts::U24>,
    nonce: &crypto_box::Nonce,
    buf: &mut [u8],
    at: usize,
) {
    let (head, text) = buf[at..].split_at_mut(TAG);
    // Encryption fails only for associated data or lengths beyond 2^38 bytes, neither possible.
    if let Ok(tag) = cipher.encrypt_in_place_detached(nonce, b"", text) {
        head.copy_from_slice(&tag);
    }
}

/// Appends `plain` sealed as a box: tag, then ciphertext.
fn append_box(
    cipher: &impl AeadInPlace<NonceSize = crypto_box::aead::consts::U24>,
    nonce: &crypto_box::Nonce,
    plain: &[&[u8]],
    out: &mut BytesMut,
) {
    let at = out.len();
    out.put_bytes(0, TAG);
    for part in plain {
        out.put_slice(part);
    }
    seal_in_place(cipher, nonce, out, at);
}

/// An established CurveZMQ connection: seals outgoing frames into MESSAGE commands and opens
/// incoming ones, each with the next short nonce.
pub struct Session {
    /// The MESSAGE boxes this side seals and opens (see [`message`]); each half of a split
    /// session uses one.
    send: std::sync::Arc<message::DirectionBox>,
    receive: std::sync::Arc<message::DirectionBox>,
    sent: u64,
    received: u64,
    outgoing: &'static [u8; 16],
    incoming: &'static [u8; 16],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session under `box_key` (of the two transient keys: [`message::box_key`]), `sent`
    /// and `received` commands into it.
    fn new(box_key: &crypto_secretbox::Key, sent: u64, received: u64, server: bool) -> Self {
        let (outgoing, incoming) = if server {
            (MESSAGE_FROM_SERVER, MESSAGE_FROM_CLIENT)
        } else {
            (MESSAGE_FROM_CLIENT, MESSAGE_FROM_SERVER)
        };
        let direction = |prefix| std::sync::Arc::new(message::direction_box(box_key, prefix));
        Self {
            send: direction(outgoing),
            receive: direction(incoming),
            sent,
            received,
            outgoing,
            incoming,
        }
    }

    /// Bytes of the MESSAGE command carrying a frame of `len` bytes, its ZMTP header included.
    pub fn sealed_len(len: usize) -> usize {
        let body = len + MESSAGE_OVERHEAD;
        body + if body <= usize::from(u8::MAX) { 2 } else { 9 }
    }

    /// Appends the MESSAGE command carrying one frame; `flags` is [`MESSAGE_MORE`] and/or
    /// [`MESSAGE_COMMAND`].
    pub fn seal(&mut self, flags: u8, frame: &[u8], out: &mut BytesMut) {
        self.sent += 1;
        out.reserve(Self::sealed_len(frame.len()));
        // libzmq sends MESSAGE in a data frame (no COMMAND flag, no MORE: those are inside the
        // box), and reads it from either.
        crate::mux::link::encode_header(out, 0, frame.len() + MESSAGE_OVERHEAD);
        out.put_slice(MESSAGE_NAME);
        out.put_u64(self.sent);
        let nonce = short_nonce(self.outgoing, self.sent);
        append_box(&*self.send, &nonce, &[&[flags], frame], out);
    }

    /// Opens a MESSAGE command's body (from its name on) in place. Returns the flags and where
    /// the frame lies in `body`.
    pub fn open(&mut self, body: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), CurveError> {
        if body.len() < MESSAGE_OVERHEAD || !body.starts_with(MESSAGE_NAME) {
            return Err(CurveError::Malformed("MESSAGE"));
        }
        let nonce = u64::from_be_bytes(body[8..16].try_into().unwrap_or_default());
        if nonce <= self.received {
            return Err(CurveError::Nonce {
                got: nonce,
                last: self.received,
            });
        }
        let full = short_nonce(self.incoming, nonce);
        open_in_place(&*self.receive, &full, &mut body[16..], "MESSAGE")?;
        self.received = nonce;
        let flags = body[16 + TAG];
        if flags & !(MESSAGE_MORE | MESSAGE_COMMAND) != 0 {
            return Err(CurveError::Flags(flags));
        }
        Ok((flags, 16 + TAG + 1..body.len()))
    }
}

impl Session {
    /// Splits the session into its sending and its receiving half, for two tasks: each uses the
    /// one shared key with its own nonce.
    pub fn split(self) -> (Sealer, Opener) {
        let sealer = Session {
            send: self.send.clone(),
            receive: self.receive.clone(),
            ..self
        };
        (Sealer(sealer), Opener(self))
    }
}

/// The sending half of a [`Session`] ([`Session::split`]).
#[derive(Debug)]
pub struct Sealer(Session);

impl Sealer {
    /// As [`Session::seal`].
    pub fn seal(&mut self, flags: u8, frame: &[u8], out: &mut BytesMut) {
        self.0.seal(flags, frame, out);
    }
}

/// The receiving half of a [`Session`] ([`Session::split`]).
#[derive(Debug)]
pub struct Opener(Session);

impl Opener {
    /// As [`Session::open`].
    pub fn open(&mut self, body: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), CurveError> {
        self.0.open(body)
    }
}

/// Appends an ERROR command (RFC 37: `error = command-size %d5 "ERROR" error-reason`), sent in
/// clear instead of READY.
pub fn encode_error(out: &mut BytesMut, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(255)];
    command_header(out, 7 + reason.len());
    out.put_slice(b"\x05ERROR");
    out.put_u8(reason.len() as u8);
    out.put_slice(reason);
}

/// Appends a ZMTP 3.1 greeting offering CURVE, as a server or as a client.
pub fn encode_greeting(out: &mut BytesMut, as_server: bool) {
    crate::mux::link::encode_greeting_with(out, CURVE_MECHANISM, as_server);
}
