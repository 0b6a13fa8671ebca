//! The front end's sans-IO parts: peers' streams read into whole messages, the link that carries
//! them to the server, and the budgets that bound every byte in flight.
//!
//! In front-end mode the guard owns every peer: it speaks ZMTP to each one itself (greeting,
//! NULL handshake, PING), reads each message whole, and forwards it to the server's zmq.rs
//! ROUTER over a private *link* (one ZMTP connection carrying every peer's messages, each with
//! the peer's identity in front; see [`link`]). Replies come back the same way and are written to
//! their peer. The identities are the front end's: what a peer announces in its READY is kept
//! only as information ([`assemble::PeerReady`]), so no peer can take over another's replies.
//!
//! # Layout
//! - [`assemble`]: one peer's stream into whole messages ([`assemble::Assembler`]), on top of
//!   the guard's [`crate::inspect::Inspector`], with the progress deadline.
//! - [`link`]: the encoders (greeting, READY, frames, messages for a peer or for the link,
//!   control messages) and the decoder of the server's side of a link.
//! - [`budget`]: a byte [`budget::Budget`] and the [`budget::Charge`]s held against it.
//!
//! # Budgets and deadlines
//! Every byte the front end holds for a peer is charged to a budget before it is held, and
//! given back when dropped. What each bounds, its default, and what a peer sees when it crosses
//! one:
//!
//! | Budget | Default | Bounds | At the limit |
//! |---|---|---|---|
//! | [`GuardConfig::inbound_budget`] | 256 MiB | Messages being read from peers and not yet written to the link, all peers of a guarded endpoint together. | Peers are not read until some is released: their sends wait (TCP backpressure). Nothing is dropped or closed for it. |
//! | [`GuardConfig::message_timeout`] | 30 s | How long a message begun (its first frame header read) may take to arrive whole. | The peer is closed ([`Rule::MessageTimeout`]) and what it had sent of the message is dropped. The clock runs while the peer waits for inbound budget too: under long overload the oldest unfinished messages fail rather than wait forever. |
//! | [`LINK_ALLOWANCE`] (fixed) | 256 KiB | One peer's messages handed to the link and not yet written to it. | The peer is not read until some are written; under the allowance one more message of any size within the limits may go. The link is one queue for every peer: without this, a peer flooding it (garbage that the server will only refuse, say) would put its whole inbound budget ahead of every other peer's next message, heartbeats included, and workers would be purged for silence. |
//! | [`GuardConfig::outbound_budget`] | 32 MiB | Replies queued for one peer and not yet written to its socket. | The peer is closed ([`Rule::Outbound`]); the replies queued for it and the one that did not fit are counted as dropped. libzmq's ROUTER drops silently at its high-water mark instead; a closed peer learns of it and can reconnect. |
//!
//! Charges count real memory: a frame body's buffer as allocated (it grows by doubling within
//! the frame's announced size, never beyond it, and only as bytes arrive: announcing a large
//! frame costs nothing until its bytes come), plus [`assemble::FRAME_OVERHEAD`] per frame and
//! [`assemble::MESSAGE_OVERHEAD`] per message for the structures around them. The per-peer read
//! and write buffers ([`GuardConfig::buffer_size`]) are bounded by
//! [`GuardConfig::max_connections`] and not charged.
//!
//! [`GuardConfig::inbound_budget`]: crate::GuardConfig::inbound_budget
//! [`GuardConfig::message_timeout`]: crate::GuardConfig::message_timeout
//! [`GuardConfig::outbound_budget`]: crate::GuardConfig::outbound_budget
//! [`GuardConfig::buffer_size`]: crate::GuardConfig::buffer_size
//! [`GuardConfig::max_connections`]: crate::GuardConfig::max_connections
//! [`Rule::MessageTimeout`]: crate::Rule::MessageTimeout
//! [`Rule::Outbound`]: crate::Rule::Outbound

pub mod assemble;
pub mod budget;
pub mod link;
pub mod secure;

use bytes::Bytes;

use self::assemble::{FRAME_OVERHEAD, MESSAGE_OVERHEAD};
use self::budget::{Budget, Charge};

/// Bytes of one peer's messages that may be queued on the link, not yet written, before the
/// peer is read no more until some are written (see the module documentation). A peer's share
/// of the link is then at most this plus one message, whatever it sends, so another peer's
/// message waits behind at most that much of it. A quarter of a mebibyte keeps a busy peer's
/// writes batched (many messages per write) while any queue ahead of a heartbeat stays a few
/// milliseconds long.
pub const LINK_ALLOWANCE: usize = 256 * 1024;

/// What a reply of `frames` costs a peer's outbound budget: its bytes as written, plus the
/// structures that hold it while queued.
pub fn reply_cost(frames: &[Bytes]) -> usize {
    link::encoded_len(frames) + MESSAGE_OVERHEAD + frames.len() * FRAME_OVERHEAD
}

/// Charges a reply of `frames` to the peer's outbound `budget`: the charge to queue it with, or
/// `None` when it does not fit. Then the peer is closed and everything queued for it dropped
/// (see the module documentation).
pub fn charge_reply(budget: &Budget, frames: &[Bytes]) -> Option<Charge> {
    let mut charge = budget.charge();
    charge.try_grow(reply_cost(frames)).then_some(charge)
}

#[cfg(test)]
pub(crate) mod tests;
