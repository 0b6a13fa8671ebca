//! Flow control towards peers that stop reading.
//!
//! zmq.rs queues up to 100,000 messages per peer and then makes the sender wait. A driver gives
//! each send a bounded wait; a peer whose send waited that long is *held*: further messages to it
//! are dropped without waiting until the hold ends, so a peer that stopped reading costs one
//! timeout, not one per message, and never stalls the other peers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a peer whose send timed out is skipped, by default.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(5);

/// Most peers held at once before expired holds are swept.
const SWEEP_AT: usize = 1024;

/// Peers whose last send timed out, and until when messages to them are dropped.
#[derive(Debug, Clone)]
pub struct StuckPeers {
    hold: Duration,
    until: HashMap<Bytes, Instant>,
}

impl Default for StuckPeers {
    fn default() -> Self {
        Self::new(DEFAULT_HOLD)
    }
}

impl StuckPeers {
    /// Holds each stuck peer for `hold`.
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            until: HashMap::new(),
        }
    }

    /// How long a stuck peer is held.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Records that a send to `peer` timed out at `now`: it is held until `now + hold`.
    pub fn stuck(&mut self, now: Instant, peer: Bytes) {
        if self.until.len() >= SWEEP_AT {
            self.until.retain(|_, until| *until > now);
        }
        self.until.insert(peer, now + self.hold);
    }

    /// Whether a message to `peer` must be dropped at `now`. A hold that has ended is forgotten,
    /// so the next send to that peer is tried again.
    pub fn is_held(&mut self, now: Instant, peer: &Bytes) -> bool {
        match self.until.get(peer) {
            None => false,
            Some(until) if *until > now => true,
            Some(_) => {
                self.until.remove(peer);
                false
            }
        }
    }

    /// Peers held (expired holds included until they are next looked at or swept).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no peer is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_peer_is_held_for_the_hold_then_tried_again() {
        let t0 = Instant::now();
        let mut stuck = StuckPeers::new(Duration::from_secs(5));
        let peer = Bytes::from_static(b"p");
        assert!(!stuck.is_held(t0, &peer));
        stuck.stuck(t0, peer.clone());
        assert!(stuck.is_held(t0 + Duration::from_millis(4999), &peer));
        assert!(!stuck.is_held(t0 + Duration::from_secs(5), &peer));
        assert!(stuck.is_empty(), "an ended hold is forgotten");
        assert!(!stuck.is_held(t0, &Bytes::from_static(b"other")));
    }

    #[test]
    fn expired_holds_are_swept_so_the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut stuck = StuckPeers::new(Duration::from_secs(1));
        for i in 0..SWEEP_AT {
            stuck.stuck(t0, Bytes::from(i.to_string()));
        }
        stuck.stuck(t0 + Duration::from_secs(2), Bytes::from_static(b"late"));
        assert_eq!(stuck.len(), 1);
    }
}
