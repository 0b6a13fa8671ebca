//! A ZMTP guard: it stands in front of a zmq.rs socket on a TCP port and keeps any peer from
//! crashing, stalling or exhausting the server behind it.
//!
//! zmq.rs 0.7 reserves whatever size a frame header announces before reading it (a peer
//! announcing 1 TiB aborts the process), has no handshake timeout on accepted connections, takes
//! any number of them, answers no ZMTP PING and never learns a peer's address. The guard accepts
//! the TCP connections itself, reads the greeting, the NULL handshake and every frame header
//! (RFC 37), and streams the bytes through two bounded buffers to zmq.rs over a Unix socket in a
//! private directory, which zmq.rs adopts with `Socket::bind_listener`. A peer that breaks a
//! rule is disconnected and logged with its address and the rule; no other peer notices.
//!
//! # Layout
//! - [`inspect`]: the sans-IO reading of a ZMTP stream ([`inspect::Inspector`]): what to pass
//!   on, what to drop, which PING to answer, which [`inspect::Violation`] ends a connection.
//! - [`admission`]: connection limits in total, per source address and per second.
//! - [`config`]: [`GuardConfig`], every limit with its default.
//! - [`guard`]: the tokio side, [`Guard::bind`] and the per-connection relay.
//! - [`mux`]: the sans-IO parts of front-end mode, where the guard owns every peer and forwards
//!   whole messages to the server over one link: message assembly, the link codec, and the byte
//!   budgets (inbound for the process, outbound per peer) with the message deadline.
//!
//! - [`curve`]: CurveZMQ (RFC 26), sans-IO: keys and certificates, both sides of the handshake,
//!   the MESSAGE boxes. The front end terminates it for a server
//!   ([`mux::secure`], [`GuardConfig::curve`]); [`outbound`] bridges the connections a process
//!   makes to a CURVE server.
//!
//! # What it does not cover
//! Connections the process makes itself (clients and workers connecting out) are not guarded,
//! except through the [`outbound`] bridge: the guard only stands on listening sockets. Without
//! CURVE it does not authenticate, in relay mode it does not stop a peer from choosing the routing
//! identity of another peer that chose its own (zmq.rs gives the newer connection that
//! identity; in front-end mode every identity is the guard's), and a peer within every limit can
//! still send as fast as the server reads.

#![warn(missing_docs)]

pub mod admission;
pub mod config;
pub mod curve;
pub mod guard;
pub mod inspect;
pub mod mux;
pub mod outbound;

pub use config::{GuardConfig, GuardConfigError};
pub use guard::{Guard, GuardStats};

/// A rule the guard enforces; the name appears in logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// The greeting is not ZMTP 3 with the NULL mechanism.
    Greeting,
    /// The handshake went wrong (no READY, or an ERROR).
    Handshake,
    /// The greeting and READY did not arrive within [`GuardConfig::handshake_timeout`].
    HandshakeTimeout,
    /// A command too large or out of place.
    Command,
    /// Reserved flags set or a command malformed.
    Malformed,
    /// A routing identity beginning with a zero byte (reserved).
    Identity,
    /// A frame over [`GuardConfig::max_frame_size`].
    FrameSize,
    /// A message over [`GuardConfig::max_message_size`].
    MessageSize,
    /// A message over [`GuardConfig::max_frames`] frames.
    Frames,
    /// [`GuardConfig::max_connections`] were already open.
    MaxConnections,
    /// [`GuardConfig::max_connections_per_address`] were already open from the address.
    PerAddress,
    /// The address connected faster than [`GuardConfig::connection_rate`].
    Rate,
    /// A message was begun and not finished within [`GuardConfig::message_timeout`] (front-end
    /// mode).
    MessageTimeout,
    /// Replies for a peer that does not read passed [`GuardConfig::outbound_budget`] (front-end
    /// mode): the peer is closed and what was queued for it dropped.
    Outbound,
    /// A CURVE peer broke RFC 26 (a box that does not open, a replayed nonce, a malformed
    /// command).
    Curve,
    /// A CURVE client's key is not allowed on the endpoint.
    Unauthorized,
    /// The peer's address is in none of [`GuardConfig::allow_from`]'s networks.
    Network,
}

impl Rule {
    /// Every rule, in a fixed order.
    pub const ALL: [Rule; 17] = [
        Rule::Greeting,
        Rule::Handshake,
        Rule::HandshakeTimeout,
        Rule::Command,
        Rule::Malformed,
        Rule::Identity,
        Rule::FrameSize,
        Rule::MessageSize,
        Rule::Frames,
        Rule::MaxConnections,
        Rule::PerAddress,
        Rule::Rate,
        Rule::MessageTimeout,
        Rule::Outbound,
        Rule::Curve,
        Rule::Unauthorized,
        Rule::Network,
    ];

    /// The rule's name in logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Greeting => "greeting",
            Rule::Handshake => "handshake",
            Rule::HandshakeTimeout => "handshake_timeout",
            Rule::Command => "command",
            Rule::Malformed => "malformed",
            Rule::Identity => "identity",
            Rule::FrameSize => "frame_size",
            Rule::MessageSize => "message_size",
            Rule::Frames => "frames",
            Rule::MaxConnections => "max_connections",
            Rule::PerAddress => "per_address",
            Rule::Rate => "rate",
            Rule::MessageTimeout => "message_timeout",
            Rule::Outbound => "outbound",
            Rule::Curve => "curve",
            Rule::Unauthorized => "unauthorized",
            Rule::Network => "network",
        }
    }

    fn index(self) -> usize {
        Rule::ALL
            .iter()
            .position(|&r| r == self)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
