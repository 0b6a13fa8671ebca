//! Sans-IO core of the Majordomo suite: the wire protocols of ZeroMQ's reliable request-reply
//! patterns as typed messages, heartbeat bookkeeping, and the broker state machine.
//!
//! Nothing in this crate opens a socket, spawns a task or reads the clock. Messages are decoded
//! from the frames a ZeroMQ socket delivers (`&[Bytes]`) and encoded back to frames; every
//! time-dependent rule takes `now` as an argument and reports its next deadline. The tokio crates
//! of the workspace drive this code over zmq.rs (through `majordomo-rt`); tests drive it with
//! simulated time.
//!
//! # Layout
//! - [`codec`]: the MDP commands of every version as one set of types, and their codec keyed by
//!   version and dialect.
//! - [`mdp`]: 7/MDP v0.1 client and worker frames; [`mdp2`]: 18/MDP v0.2 in both dialects.
//! - [`ppp`]: 6/PPP (Paranoid Pirate) commands and envelopes.
//! - [`mmi`]: 8/MMI service names and status codes.
//! - [`heartbeat`]: liveness tracking and reconnect backoff.
//! - [`broker`]: the Majordomo broker state machine.
//! - [`bstar`]: the Binary Star (primary/backup pair) state machine.
//! - [`client`]: one client call with Lazy Pirate retries (7/MDP or plain REQ/REP).
//! - [`pirate`]: the Simple and Paranoid Pirate queue state machine.
//! - [`session`]: what worker connections have in common; [`worker`] (7/MDP) and
//!   [`ppp_worker`] (6/PPP) are the two.
//! - [`redelivery`]: the rule for requests whose worker went away (broker and queue).
//! - [`flow`]: holding peers that stopped reading.
//! - [`drops`]: rate-limited summaries of dropped requests.
//! - [`event`]: what the cores report for the driver to count (they record no metrics).
//! - [`Limits`], [`DecodeError`], [`EncodeError`], [`ConfigError`]: what a decoder accepts, why
//!   it refused, what a version cannot carry, and why a configuration was refused.
#![warn(missing_docs)]

pub mod access;
pub mod broker;
pub mod bstar;
pub mod client;
pub mod codec;
pub mod drops;
mod error;
pub mod event;
pub mod flow;
pub mod freelance;
pub mod heartbeat;
mod limits;
pub mod mdp;
pub mod mdp2;
pub mod mmi;
pub mod peer;
pub mod pirate;
pub mod ppp;
pub mod ppp_worker;
pub mod redelivery;
pub mod session;
pub mod worker;

use std::fmt;

pub use error::{ConfigError, DecodeError, EncodeError};
pub use limits::Limits;

/// Displays peer identities, service names and other frames for logs: printable ASCII as text,
/// anything else as hex.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = !self.0.is_empty() && self.0.iter().all(|b| (0x20..0x7f).contains(b));
        if printable {
            // Frames are peer-controlled: cap what goes into a log line.
            let shown = &self.0[..self.0.len().min(64)];
            f.write_str(std::str::from_utf8(shown).unwrap_or_default())?;
        } else {
            f.write_str("0x")?;
            for byte in self.0.iter().take(32) {
                write!(f, "{byte:02x}")?;
            }
        }
        if self.0.len() > 64 || (!printable && self.0.len() > 32) {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
