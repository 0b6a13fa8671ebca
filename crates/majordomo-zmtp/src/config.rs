//! The guard's limits, each with a safe default.

use std::time::Duration;

use crate::inspect::{FrameLimits, LONG_HEADER, MAX_COMMAND};

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
    /// Bytes buffered per direction per connection. Default 16 KiB, at least 8 KiB + 9 (a whole
    /// READY or PING must fit). With the defaults a connection costs the guard at most 32 KiB,
    /// whatever its peer announces.
    pub buffer_size: usize,
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
            buffer_size: 16 * 1024,
        }
    }
}

/// A [`GuardConfig`] value that cannot work; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guard: {0}")]
pub struct GuardConfigError(pub String);

impl GuardConfig {
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

    /// Sets `buffer_size`; the field says what it means and its default.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
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
        ];
        if let Some((name, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(GuardConfigError(format!("{name} must be positive")));
        }
        if self.buffer_size < MAX_COMMAND + LONG_HEADER {
            return Err(GuardConfigError(format!(
                "buffer_size must be at least {} bytes",
                MAX_COMMAND + LONG_HEADER
            )));
        }
        Ok(())
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
