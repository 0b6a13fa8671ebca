//! Heartbeat and liveness bookkeeping, and reconnect backoff, as pure code.
//!
//! Nothing here reads the clock: every call takes `now`, and [`Heartbeat::next_deadline`] says
//! when the caller has to come back. A tokio driver sleeps until that deadline; a test steps
//! simulated time to it.

use std::time::{Duration, Instant};

/// Heartbeat interval and liveness: "A peer MUST consider the other peer "disconnected" if no
/// heartbeat arrives within some multiple of that interval (usually 3-5)" (7/MDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// How often to send a heartbeat when nothing else was sent. Default 2500 ms (7/MDP's
    /// reference); 6/PPP's reference uses 1 s.
    pub interval: Duration,
    /// How many intervals of silence declare the peer dead. Default 3. Must be at least 1.
    pub liveness: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(2500),
            liveness: 3,
        }
    }
}

impl HeartbeatConfig {
    /// A heartbeat of `interval` and `liveness` (usable in constants).
    pub const fn new(interval: Duration, liveness: u32) -> Self {
        Self { interval, liveness }
    }

    /// Sets the interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the liveness.
    pub fn liveness(mut self, liveness: u32) -> Self {
        self.liveness = liveness;
        self
    }

    /// Checks that the interval and the liveness are positive; every driver calls this before it
    /// starts.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.interval.is_zero() || self.liveness == 0 {
            return Err(crate::ConfigError(
                "heartbeat interval and liveness must be positive",
            ));
        }
        Ok(())
    }

    /// How long a peer may stay silent before it is declared dead: `interval * liveness`.
    pub fn expiry(&self) -> Duration {
        self.interval.saturating_mul(self.liveness.max(1))
    }
}

/// What [`Heartbeat::poll`] asks the caller to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing is due before [`Heartbeat::next_deadline`].
    Wait,
    /// Send a HEARTBEAT now (the bookkeeping already counts it as sent).
    Send,
    /// The peer has been silent for `liveness` intervals: treat it as disconnected.
    PeerDead,
}

/// Liveness tracking for one peer, in both directions.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    config: HeartbeatConfig,
    last_recv: Instant,
    last_send: Instant,
}

impl Heartbeat {
    /// Starts tracking at `now`, as though the peer had just been heard from and sent to.
    pub fn new(now: Instant, config: HeartbeatConfig) -> Self {
        Self {
            config,
            last_recv: now,
            last_send: now,
        }
    }

    /// The configuration this tracker uses.
    pub fn config(&self) -> HeartbeatConfig {
        self.config
    }

    /// Records that something arrived from the peer: "Any received command except DISCONNECT acts
    /// as a heartbeat."
    pub fn on_recv(&mut self, now: Instant) {
        self.last_recv = self.last_recv.max(now);
    }

    /// Records that something was sent to the peer, which postpones the next HEARTBEAT: "Peers
    /// SHOULD NOT send HEARTBEAT commands while also sending other commands."
    pub fn on_send(&mut self, now: Instant) {
        self.last_send = self.last_send.max(now);
    }

    /// When the peer was last heard from (or when tracking started).
    pub fn last_heard(&self) -> Instant {
        self.last_recv
    }

    /// When the peer will be declared dead if it stays silent.
    pub fn expires_at(&self) -> Instant {
        self.last_recv + self.config.expiry()
    }

    /// When the next HEARTBEAT is due if nothing else is sent.
    pub fn send_at(&self) -> Instant {
        self.last_send + self.config.interval
    }

    /// Whether the peer has been silent for `liveness` intervals at `now`.
    pub fn is_peer_dead(&self, now: Instant) -> bool {
        now >= self.expires_at()
    }

    /// The earliest instant at which [`Heartbeat::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        self.expires_at().min(self.send_at())
    }

    /// Says what is due at `now`. A dead peer wins over a due heartbeat; when a heartbeat is due
    /// it is recorded as sent, so the caller must send it.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if self.is_peer_dead(now) {
            HeartbeatAction::PeerDead
        } else if now >= self.send_at() {
            self.last_send = now;
            HeartbeatAction::Send
        } else {
            HeartbeatAction::Wait
        }
    }
}

/// Reconnect delays: "the worker reconnects with exponential backoff" from `initial` doubling to
/// `max` (the Guide's Paranoid Pirate worker: 1 s to 32 s).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(32))
    }
}

impl Backoff {
    /// A backoff starting at `initial` and doubling up to `max` (raised to `initial` if smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait before the next attempt; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts again from `initial`, after a connection proved healthy.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HeartbeatConfig {
        HeartbeatConfig {
            interval: Duration::from_millis(100),
            liveness: 3,
        }
    }

    #[test]
    fn sends_at_each_interval_and_declares_silence_dead() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, config());
        assert_eq!(hb.poll(t0), HeartbeatAction::Wait);
        assert_eq!(hb.next_deadline(), t0 + Duration::from_millis(100));
        let mut now = t0;
        let mut sent = 0;
        while hb.poll(now) != HeartbeatAction::PeerDead {
            now = hb.next_deadline();
            if hb.poll(now) == HeartbeatAction::Send {
                sent += 1;
            }
            assert!(sent < 10, "peer never declared dead");
        }
        assert_eq!(now, t0 + Duration::from_millis(300));
        assert_eq!(sent, 2);
    }

    #[test]
    fn traffic_from_peer_keeps_it_alive() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, config());
        for step in 1..=20u32 {
            let now = t0 + Duration::from_millis(250) * step;
            hb.on_recv(now);
            assert_ne!(hb.poll(now), HeartbeatAction::PeerDead);
        }
    }

    #[test]
    fn other_traffic_postpones_heartbeat() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, config());
        hb.on_send(t0 + Duration::from_millis(90));
        hb.on_recv(t0 + Duration::from_millis(90));
        assert_eq!(
            hb.poll(t0 + Duration::from_millis(100)),
            HeartbeatAction::Wait
        );
        assert_eq!(hb.next_deadline(), t0 + Duration::from_millis(190));
    }

    #[test]
    fn backoff_doubles_to_max_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 32, 32]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
