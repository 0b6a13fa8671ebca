//! The guard's limits, each with a safe default.

use std::time::Duration;

use crate::inspect::{FrameLimits, LONG_HEADER, MAX_COMMAND};
use crate::mux::assemble::{FRAME_OVERHEAD, MESSAGE_OVERHEAD};
use crate::mux::link::LinkLimits;

/// Bytes a server's envelope may add to a peer's message on a link (see
/// [`GuardConfig::link_limits`]).
pub const LINK_ENVELOPE: usize = 64 * 1024;
/// Frames a server's envelope may add to a peer's message on a link.
pub const LINK_ENVELOPE_FRAMES: usize = 64;

/// The guard's limits. Every limit closes the offending connection only; other peers do not
/// notice. `Default` gives the values below; setters chain.
///
/// The size limits match the broker's own decode limits (`majordomo_proto::Limits`: 16 MiB and
/// 1,024 frames), so what the guard lets through the broker accepts, and what it would reject is
/// refused before zmq.rs allocates for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardConfig {
    /// Largest frame body a peer may announce. Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest message, all frame bodies summed. Default 16 MiB.
    pub max_message_size: u64,
    /// Most frames in one message. Default 1,024.
    pub max_frames: u32,
    /// How long a new connection has to send its greeting and READY. Default 10 s. A peer that
    /// connects and sends nothing, or half a greeting, is closed when it passes.
    pub handshake_timeout: Duration,
    /// Most connections open at once, on this listener. Default 4,096. Each takes three file
    /// descriptors (the TCP connection and both ends of the local socket to zmq.rs): raise the
    /// process's `LimitNOFILE`/`ulimit -n` to match. Connections past it are closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one source IP address. Default 512.
    pub max_connections_per_address: usize,
    /// New connections accepted per second from one source IP address, with bursts of twice as
    /// many. Default 1,000: far above what a pooling client or a restarting host needs, low
    /// enough that one address churning connections cannot keep the accept loop to itself.
    /// Connections past it are closed at once.
    pub connection_rate: u32,
    /// Connections the kernel queues, handshake done, before the guard accepts them (the
    /// `listen(2)` backlog). Default 1,024; the kernel caps it at `net.core.somaxconn`. A burst
    /// of connects past it waits for the client's SYN retry (a second or more).
    pub listen_backlog: u32,
    /// Bytes buffered per direction per connection. Default 16 KiB, at least 8 KiB + 9 (a whole
    /// READY or PING must fit). With the defaults a connection costs the guard at most 32 KiB,
    /// whatever its peer announces.
    pub buffer_size: usize,
    /// Front-end mode: bytes of messages being read from peers and not yet written to the link
    /// to the server, all peers of the guarded endpoint together. Default 256 MiB; at least one largest message with
    /// its overhead. At the limit peers are not read until some is released (their sends
    /// wait); nothing is closed for it. See [`crate::mux`].
    pub inbound_budget: usize,
    /// Front-end mode: an inbound budget shared with every other guard made from a clone of
    /// this configuration (all endpoints of a server, both sockets of a queue), in place of
    /// one of `inbound_budget` bytes per guard. Default none; set by
    /// [`GuardConfig::shared_inbound_budget`]. Servers built on `majordomo-rt` share one among a
    /// socket's endpoints when none is set.
    pub inbound_pool: Option<crate::mux::budget::Budget>,
    /// Front-end mode: how long a message may take to arrive whole once its first frame header
    /// is read. Default 30 s. A peer past it is closed ([`crate::Rule::MessageTimeout`]). The
    /// same time bounds a write of replies to a peer: one that does not read them within it is
    /// closed ([`crate::Rule::Outbound`]) and what was queued for it counted as dropped.
    pub message_timeout: Duration,
    /// Front-end mode: how long a peer in the middle of a message may go without progress while
    /// other peers wait for the inbound budget. Default 500 ms. Progress is 64 KiB more of the
    /// message, or its end (128 KiB/s at the default). Past it the peer is closed
    /// ([`crate::Rule::MessageTimeout`]) and what it held goes to those waiting, so peers that
    /// begin large messages and stop, or trickle them a byte at a time, cannot keep everyone
    /// else unread until their message timeout. With no one waiting, a peer is held to
    /// `message_timeout` only.
    pub stall_timeout: Duration,
    /// Front-end mode: bytes of replies queued for one peer and not yet written to it. Default
    /// 32 MiB; at least one largest message with its overhead. A peer past it is closed
    /// ([`crate::Rule::Outbound`]) and what was queued for it counted as dropped.
    pub outbound_budget: usize,
    /// Front-end mode: the guard owns every peer and forwards whole messages to the server over
    /// one link, each with the peer's identity in front (see [`crate::mux`]); the server must
    /// know the link ([`crate::Guard::link_identity`]). Default on; off (`--guard-relay`), each peer
    /// is relayed to its own zmq.rs connection, which bounds no bytes a peer makes that
    /// connection hold. If the link fails, the peers it carried are closed and it is made again
    /// under a new identity ([`crate::Guard::is_link`]).
    pub front_end: bool,
    /// CURVE (RFC 26) on this endpoint: the server's keys and the client keys it lets in.
    /// Default none (NULL). Terminated by the front end, so setting it turns front-end mode on;
    /// peers see a CURVE server, the server behind sees them as NULL peers. See
    /// [`crate::mux::secure`].
    pub curve: Option<std::sync::Arc<crate::mux::secure::CurveSecurity>>,
    /// Front-end mode: the routing identity the front end announces to every peer in its READY,
    /// as the server's (a Freelance server's public endpoint, RFC 10). Default none. In relay
    /// mode the server's own READY passes through with whatever identity it sets.
    pub identity: Option<bytes::Bytes>,
    /// The networks peers may connect from (`10.0.0.0/8`, `192.168.1.7/32`, `::1/128`); a
    /// connection from any other address is closed as soon as it is accepted, before a byte is
    /// read ([`crate::Rule::Network`]). Default empty: any address. IPv4 peers reaching an IPv6
    /// socket (`::ffff:10.1.2.3`) are matched as IPv4.
    pub allow_from: Vec<ipnet::IpNet>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_frame_size: 16 * 1024 * 1024,
            max_message_size: 16 * 1024 * 1024,
            max_frames: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_address: 512,
            connection_rate: 1000,
            listen_backlog: 1024,
            buffer_size: 16 * 1024,
            inbound_budget: 256 * 1024 * 1024,
            inbound_pool: None,
            message_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_millis(500),
            outbound_budget: 32 * 1024 * 1024,
            front_end: true,
            curve: None,
            identity: None,
            allow_from: Vec::new(),
        }
    }
}

/// A [`GuardConfig`] value that cannot work; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guard: {0}")]
pub struct GuardConfigError(pub String);

impl GuardConfig {
    /// Sets `allow_from`; the field says what it means and its default.
    pub fn allow_from(mut self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.allow_from = networks.into_iter().collect();
        self
    }

    /// Sets `max_frame_size`; the field says what it means and its default.
    pub fn max_frame_size(mut self, bytes: u64) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets `max_message_size`; the field says what it means and its default.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets `max_frames`; the field says what it means and its default.
    pub fn max_frames(mut self, frames: u32) -> Self {
        self.max_frames = frames;
        self
    }

    /// Sets `handshake_timeout`; the field says what it means and its default.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets `max_connections`; the field says what it means and its default.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets `max_connections_per_address`; the field says what it means and its default.
    pub fn max_connections_per_address(mut self, connections: usize) -> Self {
        self.max_connections_per_address = connections;
        self
    }

    /// Sets `connection_rate`; the field says what it means and its default.
    pub fn connection_rate(mut self, per_second: u32) -> Self {
        self.connection_rate = per_second;
        self
    }

    /// Sets `listen_backlog`; the field says what it means and its default.
    pub fn listen_backlog(mut self, connections: u32) -> Self {
        self.listen_backlog = connections;
        self
    }

    /// Sets `buffer_size`; the field says what it means and its default.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// Sets `inbound_budget`; the field says what it means and its default.
    pub fn inbound_budget(mut self, bytes: usize) -> Self {
        self.inbound_budget = bytes;
        self
    }

    /// Sets `message_timeout`; the field says what it means and its default.
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// Sets `stall_timeout`; the field says what it means and its default.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sets `outbound_budget`; the field says what it means and its default.
    pub fn outbound_budget(mut self, bytes: usize) -> Self {
        self.outbound_budget = bytes;
        self
    }

    /// Sets `curve` (and turns front-end mode on); the field says what it means and its default.
    pub fn curve(mut self, security: crate::mux::secure::CurveSecurity) -> Self {
        self.curve = Some(std::sync::Arc::new(security));
        self.front_end = true;
        self
    }

    /// Sets `identity`; the field says what it means and its default.
    pub fn identity(mut self, identity: bytes::Bytes) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Makes one inbound budget of `inbound_budget` bytes that this configuration and all its
    /// clones share: every guard bound with them draws on it, so the bytes held for peers that
    /// are still sending are bounded for the process, however many endpoints it binds. Call it
    /// after setting `inbound_budget`.
    pub fn shared_inbound_budget(mut self) -> Self {
        self.inbound_pool = Some(crate::mux::budget::Budget::new(self.inbound_budget));
        self
    }

    /// Sets `front_end`; the field says what it means and its default.
    pub fn front_end(mut self, on: bool) -> Self {
        self.front_end = on;
        self
    }

    /// The most one message can cost a budget: the largest message with the overhead of the
    /// most frames (see [`crate::mux`]).
    pub fn largest_message_cost(&self) -> usize {
        usize::try_from(self.max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_add(MESSAGE_OVERHEAD)
            .saturating_add((self.max_frames as usize).saturating_mul(FRAME_OVERHEAD))
    }

    /// The smallest inbound budget a CURVE front end takes: the largest message and one sealed
    /// frame. A CURVE frame is held sealed until whole, charged for its place in the message it
    /// opens into, and opened into the message being read.
    pub fn smallest_curve_inbound_budget(&self) -> usize {
        let sealed = usize::try_from(self.max_frame_size)
            .unwrap_or(usize::MAX)
            .saturating_add(
                crate::curve::MESSAGE_OVERHEAD + LONG_HEADER + crate::mux::secure::OPENED_OVERHEAD,
            );
        self.largest_message_cost().saturating_add(sealed)
    }

    /// Checks that every limit can be met.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        let positive = [
            ("max_frame_size", self.max_frame_size == 0),
            ("max_message_size", self.max_message_size == 0),
            ("max_frames", self.max_frames == 0),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("max_connections", self.max_connections == 0),
            (
                "max_connections_per_address",
                self.max_connections_per_address == 0,
            ),
            ("connection_rate", self.connection_rate == 0),
            ("listen_backlog", self.listen_backlog == 0),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(GuardConfigError(format!("{name} must be positive")));
        }
        if self.curve.is_some() && !self.front_end {
            return Err(GuardConfigError(
                "CURVE is terminated by the front end: front_end must be on".into(),
            ));
        }
        if self.buffer_size < MAX_COMMAND + LONG_HEADER {
            return Err(GuardConfigError(format!(
                "buffer_size must be at least {} bytes",
                MAX_COMMAND + LONG_HEADER
            )));
        }
        Ok(())
    }

    /// Checks, on top of [`GuardConfig::validate`], the limits only front-end mode uses: the
    /// budgets must each hold the largest message, and the message timeout must be positive.
    pub fn validate_front_end(&self) -> Result<(), GuardConfigError> {
        self.validate()?;
        if self.message_timeout.is_zero() {
            return Err(GuardConfigError("message_timeout must be positive".into()));
        }
        if self.stall_timeout.is_zero() {
            return Err(GuardConfigError("stall_timeout must be positive".into()));
        }
        let largest = self.largest_message_cost();
        let inbound = self
            .inbound_pool
            .as_ref()
            .map_or(self.inbound_budget, crate::mux::budget::Budget::limit);
        let smallest = self.smallest_curve_inbound_budget();
        if self.curve.is_some() && inbound < smallest {
            return Err(GuardConfigError(format!(
                "inbound_budget must hold the largest message and one sealed CURVE frame: at least {smallest} bytes"
            )));
        }
        for (name, budget) in [
            ("inbound_budget", inbound),
            ("outbound_budget", self.outbound_budget),
        ] {
            if budget < largest {
                return Err(GuardConfigError(format!(
                    "{name} must hold the largest message: at least {largest} bytes"
                )));
            }
        }
        Ok(())
    }

    /// What a front end's link decoder accepts from the server: a reply is a peer's message
    /// (within these limits when it came through a guard) inside the server's envelope of a few
    /// short frames, which [`LINK_ENVELOPE`] bytes and frames cover.
    pub fn link_limits(&self) -> LinkLimits {
        let max_message = usize::try_from(self.max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_add(LINK_ENVELOPE);
        LinkLimits {
            max_frame: max_message,
            max_message,
            max_frames: (self.max_frames as usize).saturating_add(LINK_ENVELOPE_FRAMES),
        }
    }

    /// The size limits, as the inspector takes them.
    pub fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_frame: self.max_frame_size,
            max_message: self.max_message_size,
            max_frames: self.max_frames,
        }
    }
}
