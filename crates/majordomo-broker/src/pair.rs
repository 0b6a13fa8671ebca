//! The broker as one server of a Binary Star pair (the Guide's chapter 4): the state machine of
//! [`majordomo_proto::bstar`] in the broker's own loop, its state link among the broker's
//! sockets, and what the broker does in each state.
//!
//! - **Client requests** are the machine's `ClientRequest` events. An active broker serves them;
//!   any other drops them unanswered, as the Guide's server does ("If peer is alive, reject
//!   connections"), so that an MDP client times out and retries against the other server. A
//!   request that reaches a passive broker whose peer has been silent for two heartbeats is the
//!   client vote: the broker becomes active and serves it.
//! - **`mmi.*` requests** are answered in every state and are no vote: "Operators must be able to
//!   monitor both servers at all times", and `mmi.stats` says which server is active.
//! - **Workers** register and heartbeat with both servers in every state, so that a broker that
//!   takes over has its workers already. A broker that is not active gets no request to give
//!   them.

use std::time::Instant;

use bytes::Bytes;
use majordomo_proto::broker::unrouted;
use majordomo_proto::bstar::{BinaryStar, BinaryStarConfig, Event, Fatal, Outcome, Role, State};
use majordomo_proto::mdp2::{self, Dialect, Sender, Version};
use majordomo_proto::mmi;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Where a broker's Binary Star state link binds and connects, and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairOptions {
    /// Primary or backup.
    pub role: Role,
    /// Where this broker publishes its state (a PUB socket), e.g. `tcp://0.0.0.0:5003`.
    pub bind: String,
    /// Where the peer publishes its state (our SUB connects there).
    pub peer: String,
    /// The heartbeat, which both servers must share.
    pub config: BinaryStarConfig,
}

/// A pair member's state as the broker's loop last saw it, from [`crate::Broker::pair_status`]
/// and in the `binary_star` object of `mmi.stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairStatus {
    /// This broker's role.
    pub role: Role,
    /// This broker's state.
    pub state: State,
    /// What the peer last said, `None` before it was heard or once it has been silent for two
    /// heartbeats.
    pub peer_state: Option<State>,
    /// Client requests dropped because this broker was not active.
    pub dropped: u64,
    /// Set when the pair reached a state it must never be in; the broker then stops.
    pub fatal: Option<Fatal>,
}

impl PairStatus {
    /// The status as the `binary_star` object of `mmi.stats`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "role": self.role.label(),
            "state": self.state.label(),
            "peer_state": self.peer_state.map(State::label),
            "dropped": self.dropped,
        })
    }
}

/// The pair's state machine as the broker's loop drives it.
pub(crate) struct PairDriver {
    fsm: BinaryStar,
    /// The index of the state link among the server's sockets.
    pub(crate) socket: usize,
    status: watch::Sender<PairStatus>,
    dropped: u64,
    /// Whether the peer was heard within the expiry, at the last look: for the log only.
    peer_alive: bool,
    /// The `now` of the latest call, for the gauges set when a state goes out.
    now: Instant,
    /// Draining before it stops: see [`PairDriver::leave`].
    leaving: bool,
    /// Leaving, it has told its passive peer to take over: it is no longer active.
    handed_over: bool,
    /// A state to publish at once, not at the next heartbeat.
    announce: bool,
    /// Until then, an active broker that did not run for the peer's expiry (frozen: a paused
    /// VM, SIGSTOP) serves and publishes nothing: see [`PairDriver::arrive`].
    quiet_until: Option<Instant>,
}

/// What the broker does with a client request.
pub(crate) enum Admit {
    /// Pass it to the broker core.
    Serve,
    /// Drop it unanswered.
    Drop,
}

impl PairDriver {
    pub(crate) fn new(
        now: Instant,
        options: &PairOptions,
        socket: usize,
    ) -> (Self, watch::Receiver<PairStatus>) {
        let fsm = BinaryStar::new(options.role, now, options.config);
        let (status, rx) = watch::channel(PairStatus {
            role: options.role,
            state: fsm.state(),
            peer_state: None,
            dropped: 0,
            fatal: None,
        });
        let driver = Self {
            fsm,
            socket,
            status,
            dropped: 0,
            peer_alive: false,
            now,
            leaving: false,
            handed_over: false,
            announce: false,
            quiet_until: None,
        };
        driver.record(now);
        (driver, rx)
    }

    pub(crate) fn is_fatal(&self) -> bool {
        self.status.borrow().fatal.is_some()
    }

    /// The broker drains before it stops (SIGTERM). Active, it hands over to its peer as soon
    /// as the peer is passive (at once if it is), rather than keep saying it is active until it
    /// is gone: from then on it publishes its role's starting state, as a broker restarting
    /// does, which a passive peer takes as its cue to become active (the Guide: "primary
    /// (passive) is restarting, ready active"); it admits no client request, and what the peer
    /// says no longer matters to it (the peer, active, is not a dual active for a broker on its
    /// way out). A peer not yet passive (just started, still a backup) is first told this
    /// broker is active, as usual, so that it becomes passive and can take over: told "primary"
    /// while a backup, it would stay a backup, and a backup never serves.
    pub(crate) fn leave(&mut self) {
        if !self.leaving && !self.is_fatal() {
            self.leaving = true;
            info!(
                role = self.fsm.role().label(),
                state = %self.fsm.state(),
                "binary star: draining; an active broker hands over once its peer is passive"
            );
            self.hand_over();
        }
    }

    /// Leaving and active with a passive peer: hands over.
    fn hand_over(&mut self) {
        let peer = self.fsm.peer_state(self.now);
        if self.leaving && !self.handed_over && self.fsm.is_active() && peer == Some(State::Passive)
        {
            info!(
                role = self.fsm.role().label(),
                "binary star: handing over to the passive peer"
            );
            self.handed_over = true;
            self.announce = true;
            self.quiet_until = None;
            // Its gauges are set when the announcement goes out (`poll_publish`).
            let state = self.reported_state();
            self.status.send_modify(|s| s.state = state);
        }
    }

    /// Whether the pair no longer needs this broker to stay: it is not leaving, not active, has
    /// handed over, or its peer is silent (nobody to hand over to). A draining broker waits for
    /// this too (within its drain timeout) before it stops.
    pub(crate) fn settled(&self) -> bool {
        !self.leaving
            || self.handed_over
            || !self.fsm.is_active()
            || self.fsm.peer_state(self.now).is_none()
            || self.is_fatal()
    }

    /// The state this broker shows: its role's starting state once it has handed over.
    fn reported_state(&self) -> State {
        if self.handed_over {
            self.fsm.role().initial_state()
        } else {
            self.fsm.state()
        }
    }

    /// Time moves to `now`. An active broker that finds it has not run for the peer's expiry
    /// was frozen, and its peer may have taken over meanwhile: for a heartbeat and a half (long
    /// enough to hear one of the peer's) it serves no client and says nothing, and listens. If
    /// the peer is active, its next heartbeat makes this one stop (both active) while the peer,
    /// having heard nothing, goes on; otherwise it resumes. Without the pause, its own "active"
    /// could reach the peer first and stop both. Clients that vote at the peer meanwhile make
    /// it active: a failover, where the pause was a chance to stay; one broker stays either way.
    fn arrive(&mut self, now: Instant) {
        let heartbeat = self.fsm.config().heartbeat;
        let gap = now.saturating_duration_since(self.now);
        if self.fsm.is_active() && !self.handed_over && gap >= self.fsm.config().peer_expiry() {
            warn!(
                gap_ms = gap.as_millis() as u64,
                "binary star: active and not run for two heartbeats; serving nothing while the peer is heard"
            );
            self.quiet_until = Some(now + heartbeat + heartbeat / 2);
        }
        if self.quiet_until.is_some_and(|until| now >= until) {
            info!("binary star: no other active broker heard; serving again");
            self.quiet_until = None;
        }
        self.now = now;
    }

    /// Whether this broker is listening after a freeze ([`PairDriver::arrive`]).
    fn quiet(&self) -> bool {
        self.quiet_until.is_some()
    }

    /// A message on the state link: the peer's state.
    pub(crate) fn handle_peer_message(&mut self, now: Instant, frames: &[Bytes]) {
        self.arrive(now);
        if self.is_fatal() || self.handed_over {
            return;
        }
        let Some(message) = frames.last() else {
            return;
        };
        let before = self.fsm.state();
        match self.fsm.handle_peer_message(now, message) {
            Err(error) => debug!(%error, "binary star: peer message ignored"),
            Ok(Err(fatal)) => {
                error!(
                    role = self.fsm.role().label(),
                    state = %self.fsm.state(),
                    peer = %State::decode(message).map_or("?", State::label),
                    "binary star: {fatal}; stopping"
                );
                self.status.send_modify(|s| s.fatal = Some(fatal));
            }
            Ok(Ok(_)) => {
                if !self.peer_alive {
                    info!(peer_state = %self.fsm.peer_state(now).map_or("?", State::label), "binary star: peer heard");
                    self.peer_alive = true;
                }
                self.changed(now, before);
                self.hand_over();
            }
        }
    }

    /// What to do with a client request for `service` (`mmi.*` is always served and no vote).
    pub(crate) fn admit(&mut self, now: Instant, service: &[u8]) -> Admit {
        self.arrive(now);
        if self.is_fatal() {
            return Admit::Drop;
        }
        if service.starts_with(mmi::PREFIX) {
            return Admit::Serve;
        }
        if self.handed_over || self.quiet() {
            return self.drop_request();
        }
        let before = self.fsm.state();
        // A client request is never fatal.
        match self.fsm.handle(now, Event::ClientRequest) {
            Ok(Outcome::Serve) => {
                if before != State::Active {
                    info!(
                        from = %before,
                        "binary star: client request with the peer silent for two heartbeats: now active"
                    );
                }
                self.changed(now, before);
                Admit::Serve
            }
            _ => {
                debug!(state = %before, "binary star: not active, client request dropped");
                self.drop_request()
            }
        }
    }

    /// Counts a client request dropped because this broker does not serve now.
    fn drop_request(&mut self) -> Admit {
        self.dropped += 1;
        metrics::counter!("majordomo_dropped_requests_total", "reason" => "not_active")
            .increment(1);
        self.status.send_modify(|s| s.dropped = self.dropped);
        Admit::Drop
    }

    /// Logs and publishes a change of state from `before`.
    fn changed(&mut self, now: Instant, before: State) {
        let state = self.fsm.state();
        if state != before {
            info!(
                role = self.fsm.role().label(),
                from = %before,
                to = %state,
                peer_state = %self.fsm.peer_state(now).map_or("?", State::label),
                "binary star: state changed"
            );
        }
        let peer_state = self.fsm.peer_state(now);
        self.status.send_if_modified(|s| {
            let modified = s.state != state || s.peer_state != peer_state;
            s.state = state;
            s.peer_state = peer_state;
            modified
        });
    }

    pub(crate) fn poll_timeout(&self) -> Instant {
        let next = self.fsm.poll_timeout();
        self.quiet_until.map_or(next, |until| next.min(until))
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.arrive(now);
        if self.is_fatal() {
            return;
        }
        self.fsm.handle_timeout(now);
        if self.peer_alive && !self.handed_over && self.fsm.peer_expired(now) {
            warn!(
                state = %self.fsm.state(),
                "binary star: peer silent for two heartbeats"
            );
            self.peer_alive = false;
            let before = self.fsm.state();
            self.changed(now, before);
        }
    }

    /// The state message to publish now, if one is due (every heartbeat and after a change).
    /// Nothing once a fatal state is found: a broker that found itself active beside an active
    /// peer says no more, so that the peer, still active, does not find the same and stop too.
    pub(crate) fn poll_publish(&mut self) -> Option<Vec<Bytes>> {
        if self.is_fatal() {
            return None;
        }
        if self.handed_over {
            let due = self.fsm.poll_publish().is_some();
            if !std::mem::take(&mut self.announce) && !due {
                return None;
            }
            self.record(self.now);
            return Some(vec![Bytes::new(), self.reported_state().encode()]);
        }
        if self.quiet() {
            return None;
        }
        let state = self.fsm.poll_publish()?;
        self.record(self.now);
        Some(vec![Bytes::new(), state.encode()])
    }

    /// Sets the pair's gauges; done every heartbeat, so the series stay fresh.
    fn record(&self, now: Instant) {
        let role = self.fsm.role().label();
        let state = self.reported_state();
        metrics::gauge!("majordomo_bstar_state", "role" => role).set(f64::from(state.number()));
        metrics::gauge!("majordomo_bstar_active", "role" => role).set(if state == State::Active {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("majordomo_bstar_peer_state", "role" => role).set(
            self.fsm
                .peer_state(now)
                .map_or(0.0, |s| f64::from(s.number())),
        );
    }

    /// The status at `now`, the peer's state as of then (the watch learns of an expiry only at
    /// the next heartbeat).
    pub(crate) fn status(&self, now: Instant) -> PairStatus {
        PairStatus {
            state: self.reported_state(),
            peer_state: self.fsm.peer_state(now),
            ..self.status.borrow().clone()
        }
    }
}

/// The service a client request names, or `None` for anything that is not a client request
/// with a service frame (worker commands, malformed messages: the core handles those).
pub(crate) fn client_service(frames: &[Bytes]) -> Option<&Bytes> {
    let rest = unrouted(frames);
    match mdp2::classify(rest)? {
        // [empty, MDPC01, service, ...] and [MDPC02, REQUEST, service, ...]
        (Version::V01 | Version::V02(Dialect::Rfc18), Sender::Client) => rest.get(2),
        // [empty, MDPC02, REQUEST, service, ...]
        (Version::V02(Dialect::Majortomo), Sender::Client) => rest.get(3),
        (_, Sender::Worker) => None,
    }
}

/// The `mmi.stats` body `json` with the pair's status added as `binary_star`; `None` when the
/// body is not a JSON object.
pub(crate) fn with_pair_status(json: &[u8], status: &PairStatus) -> Option<Bytes> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).ok()?;
    object.insert("binary_star".to_owned(), status.to_json());
    serde_json::to_vec(&object).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[test]
    fn client_requests_are_told_from_worker_commands_in_every_form() {
        let v01 = frames(&[b"", b"MDPC01", b"echo", b"hi"]);
        assert_eq!(client_service(&v01).map(|b| &b[..]), Some(&b"echo"[..]));
        let tagged = frames(&[b"tag", b"", b"MDPC01", b"mmi.stats"]);
        assert_eq!(
            client_service(&tagged).map(|b| &b[..]),
            Some(&b"mmi.stats"[..])
        );
        let rfc18 = frames(&[b"MDPC02", b"\x01", b"echo", b"hi"]);
        assert_eq!(client_service(&rfc18).map(|b| &b[..]), Some(&b"echo"[..]));
        let majortomo = frames(&[b"", b"MDPC02", b"\x02", b"echo", b"hi"]);
        assert_eq!(
            client_service(&majortomo).map(|b| &b[..]),
            Some(&b"echo"[..])
        );
        for not_client in [
            frames(&[b"", b"MDPW01", b"\x01", b"echo"]),
            frames(&[b"MDPW02", b"\x05"]),
            frames(&[b"", b"MDPC01"]),
            frames(&[b"junk"]),
        ] {
            assert_eq!(client_service(&not_client), None, "{not_client:?}");
        }
    }

    #[test]
    fn a_broker_that_finds_itself_active_beside_an_active_peer_publishes_no_more() {
        let (mut primary, _status, t0) = active_primary();
        // The backup says it is active (a state link cut while clients voted at it). In the
        // same turn the heartbeat is due.
        let later = t0 + Duration::from_secs(1);
        primary.handle_peer_message(later, &frames(&[b"", b"3"]));
        assert!(primary.is_fatal());
        primary.handle_timeout(later);
        assert_eq!(
            primary.poll_publish(),
            None,
            "an active state published now would stop the peer too"
        );
    }

    /// A primary made active by its backup at `t0`, what it had to say published.
    fn active_primary() -> (PairDriver, watch::Receiver<PairStatus>, Instant) {
        let options = PairOptions {
            role: Role::Primary,
            bind: String::new(),
            peer: String::new(),
            config: BinaryStarConfig::default(),
        };
        let t0 = Instant::now();
        let (mut primary, status) = PairDriver::new(t0, &options, 0);
        primary.handle_peer_message(t0, &frames(&[b"", b"2"]));
        while primary.poll_publish().is_some() {}
        assert_eq!(status.borrow().state, State::Active);
        (primary, status, t0)
    }

    #[test]
    fn an_active_broker_back_from_a_freeze_listens_a_heartbeat_before_it_serves_or_speaks() {
        // The backup took over during the freeze: its "active" stops this one, which has
        // said nothing that would stop the backup too.
        let (mut primary, _status, t0) = active_primary();
        let woke = t0 + Duration::from_secs(3);
        primary.handle_timeout(woke);
        assert_eq!(primary.poll_publish(), None);
        assert!(matches!(primary.admit(woke, b"echo"), Admit::Drop));
        assert!(matches!(primary.admit(woke, b"mmi.service"), Admit::Serve));
        primary.handle_peer_message(woke + Duration::from_millis(200), &frames(&[b"", b"3"]));
        assert!(primary.is_fatal());
        assert_eq!(primary.poll_publish(), None);

        // The backup stayed passive: after the heartbeat this one serves and speaks again.
        let (mut primary, status, t0) = active_primary();
        let woke = t0 + Duration::from_secs(3);
        primary.handle_timeout(woke);
        assert_eq!(primary.poll_publish(), None);
        primary.handle_peer_message(woke + Duration::from_millis(200), &frames(&[b"", b"4"]));
        let later = primary
            .poll_timeout()
            .max(woke + Duration::from_millis(1_500));
        primary.handle_timeout(later);
        assert!(matches!(primary.admit(later, b"echo"), Admit::Serve));
        assert_eq!(primary.poll_publish(), Some(frames(&[b"", b"3"])));
        assert_eq!(status.borrow().fatal, None);
    }

    #[test]
    fn stats_gain_the_pair_status() {
        let status = PairStatus {
            role: Role::Backup,
            state: State::Passive,
            peer_state: Some(State::Active),
            dropped: 3,
            fatal: None,
        };
        let json = with_pair_status(br#"{"workers":1}"#, &status).expect("object");
        assert_eq!(
            std::str::from_utf8(&json).expect("UTF-8"),
            r#"{"binary_star":{"dropped":3,"peer_state":"active","role":"backup","state":"passive"},"workers":1}"#
        );
        assert_eq!(with_pair_status(b"[1]", &status), None);
    }
}
