//! Binary Star: a primary/backup pair of servers of which at most one is active.
//!
//! No RFC describes Binary Star; this follows the Guide's chapter 4, "High-Availability Pair
//! (Binary Star Pattern)", and its reference server. Each server publishes its own [`State`] to
//! the other once per heartbeat; what it hears from the peer and the client requests it gets
//! are the [`Event`]s of the state machine ("Events are the peer state, so 'Peer Active' means
//! the other server has told us it's active. 'Client Request' means we've received a client
//! request. 'Client Vote' means we've received a client request AND our peer is inactive for two
//! heartbeats.").
//!
//! [`BinaryStar`] holds the rules and the two timers (the next state to publish, the peer's
//! expiry), takes `now` with every input and never reads the clock. The driver feeds it the
//! peer's states and the client requests, publishes what [`BinaryStar::poll_publish`] returns,
//! serves a request only when [`BinaryStar::handle`] says [`Outcome::Serve`], and stops on a
//! [`Fatal`] error.
//!
//! ```text
//! state    event                     result
//! Primary  PeerBackup                Active
//! Primary  PeerActive                Passive
//! Primary  ClientRequest             Active if the peer has expired (armed at start), else drop
//! Backup   PeerActive                Passive
//! Backup   ClientRequest             drop
//! Active   PeerActive                fatal: both active
//! Passive  PeerPrimary, PeerBackup   Active (the peer restarted)
//! Passive  PeerPassive               fatal: both passive
//! Passive  ClientRequest             Active if the peer has expired (the client vote), else drop
//! any      the peer in our own role  fatal: both primary, or both backup
//! ```
//! Every other pair leaves the state as it is; an Active server serves every request.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Which server of the pair this is, fixed by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// "The server that is normally or initially active."
    Primary,
    /// "The server that is normally passive. It will become active if and when the primary
    /// server disappears from the network, and when client applications ask the backup server
    /// to connect."
    Backup,
}

impl Role {
    /// `primary` or `backup`, for logs, stats and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }

    /// The state a server of this role starts in.
    pub fn initial_state(self) -> State {
        match self {
            Role::Primary => State::Primary,
            Role::Backup => State::Backup,
        }
    }
}

/// The state of one server, numbered as the Guide's reference server numbers it on the wire
/// (`STATE_PRIMARY=1, STATE_BACKUP=2, STATE_ACTIVE=3, STATE_PASSIVE=4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// A primary waiting for its peer.
    Primary = 1,
    /// A backup waiting for its peer.
    Backup = 2,
    /// Serving clients. "There is at most one active server."
    Active = 3,
    /// Serving no client, ready to take over.
    Passive = 4,
}

/// Why a peer's state message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateDecodeError {
    /// The message was not the ASCII decimal of a state (1 to 4); it is ignored.
    #[error("not a Binary Star state: {0:?}")]
    Invalid(Bytes),
}

impl State {
    /// The Guide's number of this state.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// `primary`, `backup`, `active` or `passive`.
    pub fn label(self) -> &'static str {
        match self {
            State::Primary => "primary",
            State::Backup => "backup",
            State::Active => "active",
            State::Passive => "passive",
        }
    }

    /// The state message: the state's number in ASCII decimal, as the reference server sends it
    /// (`zstr_sendf (statepub, "%d", fsm.state)`).
    pub fn encode(self) -> Bytes {
        const DIGITS: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];
        Bytes::from_static(DIGITS[usize::from(self.number() - 1)])
    }

    /// Reads a state message: ASCII decimal 1 to 4, surrounding whitespace and a trailing NUL
    /// (a C peer may send its string's terminator) allowed.
    pub fn decode(message: &[u8]) -> Result<State, StateDecodeError> {
        let invalid = || StateDecodeError::Invalid(Bytes::copy_from_slice(message));
        let text = std::str::from_utf8(message).map_err(|_| invalid())?;
        match text.trim_end_matches('\0').trim() {
            "1" => Ok(State::Primary),
            "2" => Ok(State::Backup),
            "3" => Ok(State::Active),
            "4" => Ok(State::Passive),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An input of the state machine, numbered as the Guide's (`PEER_PRIMARY=1, PEER_BACKUP=2,
/// PEER_ACTIVE=3, PEER_PASSIVE=4, CLIENT_REQUEST=5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Event {
    /// The peer said it is in [`State::Primary`].
    PeerPrimary = 1,
    /// The peer said it is in [`State::Backup`].
    PeerBackup = 2,
    /// The peer said it is in [`State::Active`].
    PeerActive = 3,
    /// The peer said it is in [`State::Passive`].
    PeerPassive = 4,
    /// A client request arrived.
    ClientRequest = 5,
}

impl Event {
    /// The event of hearing `state` from the peer.
    pub fn from_peer(state: State) -> Event {
        match state {
            State::Primary => Event::PeerPrimary,
            State::Backup => Event::PeerBackup,
            State::Active => Event::PeerActive,
            State::Passive => Event::PeerPassive,
        }
    }
}

/// A state the pair must never be in. The reference server aborts on each; so must the driver,
/// and an operator must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fatal {
    /// Both servers active: split brain ("Two actives would mean split-brain"). Happens when
    /// the state link was cut while clients reached both servers, which the Guide's network
    /// rules forbid ("We must not split a Binary Star architecture into two islands").
    #[error("fatal: both servers of the pair are active (split brain)")]
    DualActive,
    /// Both servers passive: nobody would serve ("Two passives would mean cluster would be
    /// non-responsive").
    #[error("fatal: both servers of the pair are passive")]
    DualPassive,
    /// The peer is configured as the primary too.
    #[error("fatal: the peer is a primary too; one server must be the backup")]
    BothPrimary,
    /// The peer is configured as the backup too.
    #[error("fatal: the peer is a backup too; one server must be the primary")]
    BothBackup,
}

/// What the driver does with the input it gave [`BinaryStar::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A client request: serve it (this server is, or has just become, active).
    Serve,
    /// A client request: drop it unanswered. "If peer is alive, reject connections": the client
    /// times out and tries the other server.
    Drop,
    /// A peer state: taken into account.
    Noted,
}

/// Timing of the pair; both servers must use the same ("tune the failover response times,
/// which must be the same for both servers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BinaryStarConfig {
    /// How often each server publishes its state (default 1 s, the reference's `HEARTBEAT`).
    pub heartbeat: Duration,
}

impl Default for BinaryStarConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl BinaryStarConfig {
    /// Sets the heartbeat (default 1 s). The peer expires after two heartbeats without news, so
    /// this also sets how soon a passive server may take over.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long the peer may stay silent before it counts as gone: two heartbeats ("If peer
    /// doesn't respond in two heartbeats, it is 'dead'").
    pub fn peer_expiry(&self) -> Duration {
        self.heartbeat.saturating_mul(2)
    }

    /// Checks the heartbeat is positive.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.heartbeat.is_zero() {
            return Err(crate::ConfigError(
                "the Binary Star heartbeat must be positive",
            ));
        }
        Ok(())
    }
}

/// The Binary Star state machine of one server, on the caller's clock.
#[derive(Debug, Clone)]
pub struct BinaryStar {
    role: Role,
    state: State,
    config: BinaryStarConfig,
    /// When the peer counts as gone, unless it is heard from before.
    peer_expiry: Instant,
    /// What the peer last said, while it has not expired.
    peer_state: Option<State>,
    /// When the state is published next.
    publish_at: Instant,
    /// A state to publish now.
    due: Option<State>,
}

impl BinaryStar {
    /// A server of `role` starting at `now`: in [`State::Primary`] or [`State::Backup`], its
    /// first state due at once, the peer's expiry armed at `now` plus two heartbeats.
    ///
    /// The reference server starts with no expiry at all (`peer_expiry` zero), so its rule
    /// "Primary | ClientRequest | become Active (reference: accept, we are first up)" lets a
    /// primary that has just started serve the first client request before it could have heard
    /// its peer, even while the backup is active after a failover: both active. Arming the
    /// expiry at start makes "the peer has expired" mean two heartbeats of silence from the
    /// start too, so a primary becomes active on a client request only when it has not heard
    /// from an active peer in that time, which is the Guide's rule ("a server will not decide
    /// to become active until it gets application connection requests and it cannot see its
    /// peer server").
    pub fn new(role: Role, now: Instant, config: BinaryStarConfig) -> Self {
        Self {
            role,
            state: role.initial_state(),
            config,
            peer_expiry: now + config.peer_expiry(),
            peer_state: None,
            publish_at: now,
            due: None,
        }
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This server's state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// The timing in force.
    pub fn config(&self) -> &BinaryStarConfig {
        &self.config
    }

    /// What the peer last said, `None` before it was heard or once it has expired.
    pub fn peer_state(&self, now: Instant) -> Option<State> {
        self.peer_state.filter(|_| !self.peer_expired(now))
    }

    /// Whether the peer has been silent for two heartbeats (since the start, or since it was
    /// last heard).
    pub fn peer_expired(&self, now: Instant) -> bool {
        now >= self.peer_expiry
    }

    /// When the peer expires unless it is heard from before.
    pub fn peer_expiry(&self) -> Instant {
        self.peer_expiry
    }

    /// Whether this server serves clients now.
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// Applies `event` at `now`: the Guide's state machine. A peer state also re-arms the peer's
    /// expiry; a change of state is published at once (besides the heartbeat), so the peer
    /// learns of it without waiting. The error says the pair is in a state it must never be in;
    /// the state is then left as it was and the driver must stop.
    pub fn handle(&mut self, now: Instant, event: Event) -> Result<Outcome, Fatal> {
        let before = self.state;
        let outcome = match event {
            Event::ClientRequest => self.client_request(now),
            peer => {
                self.peer_event(peer)?;
                self.peer_expiry = now + self.config.peer_expiry();
                self.peer_state = Some(match peer {
                    Event::PeerPrimary => State::Primary,
                    Event::PeerBackup => State::Backup,
                    Event::PeerActive => State::Active,
                    _ => State::Passive,
                });
                Outcome::Noted
            }
        };
        if self.state != before {
            self.due = Some(self.state);
        }
        Ok(outcome)
    }

    /// Reads a state message from the peer and applies it. An unreadable message is ignored:
    /// it neither changes the state nor re-arms the expiry.
    pub fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &[u8],
    ) -> Result<Result<Outcome, Fatal>, StateDecodeError> {
        let state = State::decode(message)?;
        Ok(self.handle(now, Event::from_peer(state)))
    }

    fn peer_event(&mut self, event: Event) -> Result<(), Fatal> {
        // Only a server configured primary is ever in PRIMARY, and only a backup in BACKUP.
        match (self.role, event) {
            (Role::Primary, Event::PeerPrimary) => return Err(Fatal::BothPrimary),
            (Role::Backup, Event::PeerBackup) => return Err(Fatal::BothBackup),
            _ => {}
        }
        self.state = match (self.state, event) {
            // "connected to backup (passive), ready active"
            (State::Primary, Event::PeerBackup) => State::Active,
            // "connected to backup (active), ready passive"
            (State::Primary | State::Backup, Event::PeerActive) => State::Passive,
            (State::Active, Event::PeerActive) => return Err(Fatal::DualActive),
            // "primary (passive) is restarting, ready active", and the same of a backup.
            (State::Passive, Event::PeerPrimary | Event::PeerBackup) => State::Active,
            (State::Passive, Event::PeerPassive) => return Err(Fatal::DualPassive),
            (state, _) => state,
        };
        Ok(())
    }

    fn client_request(&mut self, now: Instant) -> Outcome {
        match self.state {
            State::Active => Outcome::Serve,
            // "Reject client connections when acting as backup."
            State::Backup => Outcome::Drop,
            // Primary: the expiry was armed at start (see `new`), so this is "we are first up"
            // only after two heartbeats without hearing an active peer. Passive: the client
            // vote ("If peer is dead, switch to the active state").
            State::Primary | State::Passive if self.peer_expired(now) => {
                self.state = State::Active;
                Outcome::Serve
            }
            State::Primary | State::Passive => Outcome::Drop,
        }
    }

    /// Publishes the state when the heartbeat is due. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.publish_at {
            self.due = Some(self.state);
            let next = self.publish_at + self.config.heartbeat;
            // After a stall, one message now and the next a heartbeat later, not a burst.
            self.publish_at = if next > now {
                next
            } else {
                now + self.config.heartbeat
            };
        }
    }

    /// When [`BinaryStar::handle_timeout`] must be called next: the next heartbeat.
    pub fn poll_timeout(&self) -> Instant {
        self.publish_at
    }

    /// The state to publish now (encode it with [`State::encode`]), once per heartbeat and
    /// after each change.
    pub fn poll_publish(&mut self) -> Option<State> {
        self.due.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn pair(role: Role) -> (BinaryStar, Instant) {
        let t0 = Instant::now();
        (BinaryStar::new(role, t0, BinaryStarConfig::default()), t0)
    }

    /// A server of `role` brought to `state` by its peer's messages at `t0`.
    fn in_state(role: Role, state: State) -> (BinaryStar, Instant) {
        let (mut fsm, t0) = pair(role);
        let via = match (role, state) {
            (_, State::Primary | State::Backup) => vec![],
            (Role::Primary, State::Active) => vec![Event::PeerBackup],
            (Role::Backup, State::Active) => vec![Event::PeerActive, Event::PeerPrimary],
            (Role::Primary, State::Passive) | (Role::Backup, State::Passive) => {
                vec![Event::PeerActive]
            }
        };
        for event in via {
            fsm.handle(t0, event).expect("valid");
        }
        assert_eq!(fsm.state(), state);
        (fsm, t0)
    }

    #[test]
    fn states_are_the_guides_ascii_decimals() {
        for (state, text) in [
            (State::Primary, "1"),
            (State::Backup, "2"),
            (State::Active, "3"),
            (State::Passive, "4"),
        ] {
            assert_eq!(state.encode().as_ref(), text.as_bytes());
            assert_eq!(State::decode(text.as_bytes()), Ok(state));
            assert_eq!(Event::from_peer(state) as u8, state.number());
        }
        assert_eq!(Event::ClientRequest as u8, 5);
        assert_eq!(State::decode(b"3\0"), Ok(State::Active));
        assert_eq!(State::decode(b" 4\n"), Ok(State::Passive));
        for bad in [&b""[..], b"0", b"5", b"33", b"x", b"\xff"] {
            assert!(State::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn starts_in_its_role_and_publishes_at_once_then_every_heartbeat() {
        let (mut fsm, t0) = pair(Role::Primary);
        assert_eq!(fsm.state(), State::Primary);
        assert_eq!(fsm.poll_timeout(), t0);
        fsm.handle_timeout(t0);
        assert_eq!(fsm.poll_publish(), Some(State::Primary));
        assert_eq!(fsm.poll_publish(), None);
        assert_eq!(fsm.poll_timeout(), t0 + HB);
        fsm.handle_timeout(t0 + HB / 2);
        assert_eq!(fsm.poll_publish(), None, "early: nothing");
        fsm.handle_timeout(t0 + HB);
        assert_eq!(fsm.poll_publish(), Some(State::Primary));
        assert_eq!(fsm.poll_timeout(), t0 + 2 * HB);
        // After a stall, one message and the next a heartbeat later.
        fsm.handle_timeout(t0 + 10 * HB);
        assert_eq!(fsm.poll_publish(), Some(State::Primary));
        assert_eq!(fsm.poll_timeout(), t0 + 11 * HB);
        let (backup, _) = pair(Role::Backup);
        assert_eq!(backup.state(), State::Backup);
    }

    #[test]
    fn primary_hearing_backup_becomes_active_and_says_so_at_once() {
        let (mut fsm, t0) = pair(Role::Primary);
        assert_eq!(fsm.handle(t0, Event::PeerBackup), Ok(Outcome::Noted));
        assert_eq!(fsm.state(), State::Active);
        assert_eq!(fsm.poll_publish(), Some(State::Active));
        assert_eq!(fsm.peer_state(t0), Some(State::Backup));
        assert_eq!(
            fsm.handle(t0, Event::ClientRequest),
            Ok(Outcome::Serve),
            "active serves"
        );
    }

    #[test]
    fn primary_hearing_active_becomes_passive() {
        let (mut fsm, t0) = pair(Role::Primary);
        fsm.handle(t0, Event::PeerActive).expect("valid");
        assert_eq!(fsm.state(), State::Passive);
        // Heard just now: a client request is dropped.
        assert_eq!(fsm.handle(t0 + HB, Event::ClientRequest), Ok(Outcome::Drop));
        assert_eq!(fsm.state(), State::Passive);
    }

    #[test]
    fn primary_ignores_a_passive_peer() {
        let (mut fsm, t0) = pair(Role::Primary);
        fsm.handle(t0, Event::PeerPassive).expect("valid");
        assert_eq!(fsm.state(), State::Primary);
        assert_eq!(fsm.poll_publish(), None, "no change, nothing extra");
    }

    #[test]
    fn a_started_primary_serves_no_client_before_the_peer_could_have_been_heard() {
        // "Primary | ClientRequest | become Active": only once the expiry armed at start has
        // passed, so a primary restarted while its backup is active cannot serve first.
        let (mut fsm, t0) = pair(Role::Primary);
        assert!(!fsm.peer_expired(t0));
        assert_eq!(fsm.handle(t0, Event::ClientRequest), Ok(Outcome::Drop));
        let just_before = t0 + 2 * HB - Duration::from_millis(1);
        assert_eq!(
            fsm.handle(just_before, Event::ClientRequest),
            Ok(Outcome::Drop)
        );
        assert_eq!(fsm.state(), State::Primary);
        // Two heartbeats of silence: the request makes it active.
        assert_eq!(
            fsm.handle(t0 + 2 * HB, Event::ClientRequest),
            Ok(Outcome::Serve)
        );
        assert_eq!(fsm.state(), State::Active);
        assert_eq!(fsm.poll_publish(), Some(State::Active));
    }

    #[test]
    fn a_restarted_primary_that_hears_the_active_backup_in_time_goes_passive() {
        let (mut fsm, t0) = pair(Role::Primary);
        assert_eq!(fsm.handle(t0 + HB, Event::ClientRequest), Ok(Outcome::Drop));
        fsm.handle(t0 + HB, Event::PeerActive).expect("valid");
        assert_eq!(fsm.state(), State::Passive);
        // The expiry moved with the peer's message.
        assert_eq!(
            fsm.handle(t0 + 2 * HB, Event::ClientRequest),
            Ok(Outcome::Drop)
        );
        assert_eq!(fsm.peer_expiry(), t0 + 3 * HB);
    }

    #[test]
    fn a_fresh_pair_that_never_hears_itself_has_one_active_at_most() {
        let (mut primary, t0) = pair(Role::Primary);
        let mut backup = BinaryStar::new(Role::Backup, t0, BinaryStarConfig::default());
        for step in 0..20 {
            let now = t0 + HB * step;
            let _ = primary.handle(now, Event::ClientRequest);
            assert_eq!(backup.handle(now, Event::ClientRequest), Ok(Outcome::Drop));
        }
        assert_eq!(primary.state(), State::Active);
        assert_eq!(backup.state(), State::Backup, "a backup never serves alone");
    }

    #[test]
    fn backup_drops_client_requests_until_it_has_been_passive() {
        let (mut fsm, t0) = pair(Role::Backup);
        assert_eq!(
            fsm.handle(t0 + 10 * HB, Event::ClientRequest),
            Ok(Outcome::Drop)
        );
        fsm.handle(t0, Event::PeerPrimary).expect("valid");
        fsm.handle(t0, Event::PeerPassive).expect("valid");
        assert_eq!(
            fsm.state(),
            State::Backup,
            "waits for the primary to go active"
        );
        fsm.handle(t0, Event::PeerActive).expect("valid");
        assert_eq!(fsm.state(), State::Passive);
        assert_eq!(fsm.poll_publish(), Some(State::Passive));
    }

    #[test]
    fn passive_takes_over_on_a_client_vote_only_once_the_peer_expired() {
        let (mut fsm, t0) = in_state(Role::Backup, State::Passive);
        let expiry = t0 + 2 * HB;
        assert_eq!(fsm.peer_expiry(), expiry);
        assert_eq!(
            fsm.handle(expiry - Duration::from_millis(1), Event::ClientRequest),
            Ok(Outcome::Drop)
        );
        assert_eq!(fsm.state(), State::Passive);
        assert!(fsm.peer_expired(expiry));
        assert_eq!(fsm.peer_state(expiry), None, "forgotten once expired");
        assert_eq!(fsm.handle(expiry, Event::ClientRequest), Ok(Outcome::Serve));
        assert_eq!(fsm.state(), State::Active);
        // Without a client, an expired peer changes nothing.
        let (mut quiet, t0) = in_state(Role::Backup, State::Passive);
        quiet.handle_timeout(t0 + 100 * HB);
        assert_eq!(quiet.state(), State::Passive);
    }

    #[test]
    fn passive_takes_over_when_the_peer_restarts() {
        for (role, peer) in [
            (Role::Backup, Event::PeerPrimary),
            (Role::Primary, Event::PeerBackup),
        ] {
            let (mut fsm, t0) = in_state(role, State::Passive);
            fsm.handle(t0 + HB, peer).expect("valid");
            assert_eq!(fsm.state(), State::Active, "{role:?}");
        }
    }

    #[test]
    fn active_keeps_serving_whatever_a_live_or_restarting_peer_says() {
        let (mut fsm, t0) = in_state(Role::Primary, State::Active);
        for event in [Event::PeerBackup, Event::PeerPassive] {
            fsm.handle(t0, event).expect("valid");
            assert_eq!(fsm.state(), State::Active);
        }
        let (mut fsm, t0) = in_state(Role::Backup, State::Active);
        fsm.handle(t0, Event::PeerPrimary).expect("valid");
        assert_eq!(fsm.state(), State::Active);
        assert_eq!(
            fsm.handle(t0 + 100 * HB, Event::ClientRequest),
            Ok(Outcome::Serve)
        );
    }

    #[test]
    fn dual_active_and_dual_passive_are_fatal() {
        let (mut fsm, t0) = in_state(Role::Primary, State::Active);
        assert_eq!(fsm.handle(t0, Event::PeerActive), Err(Fatal::DualActive));
        assert_eq!(fsm.state(), State::Active);
        let (mut fsm, t0) = in_state(Role::Backup, State::Passive);
        assert_eq!(fsm.handle(t0, Event::PeerPassive), Err(Fatal::DualPassive));
        assert_eq!(fsm.state(), State::Passive);
    }

    #[test]
    fn a_peer_in_our_own_role_is_fatal_in_every_state() {
        for state in [State::Primary, State::Active, State::Passive] {
            let (mut fsm, t0) = in_state(Role::Primary, state);
            assert_eq!(fsm.handle(t0, Event::PeerPrimary), Err(Fatal::BothPrimary));
        }
        for state in [State::Backup, State::Active, State::Passive] {
            let (mut fsm, t0) = in_state(Role::Backup, state);
            assert_eq!(fsm.handle(t0, Event::PeerBackup), Err(Fatal::BothBackup));
        }
    }

    #[test]
    fn a_fatal_message_does_not_refresh_the_peer() {
        let (mut fsm, t0) = in_state(Role::Backup, State::Passive);
        let expiry = fsm.peer_expiry();
        let _ = fsm.handle(t0 + HB, Event::PeerPassive);
        assert_eq!(fsm.peer_expiry(), expiry);
    }

    #[test]
    fn unreadable_peer_messages_change_nothing() {
        let (mut fsm, t0) = pair(Role::Primary);
        assert!(fsm.handle_peer_message(t0 + HB, b"9").is_err());
        assert_eq!(fsm.peer_expiry(), t0 + 2 * HB);
        assert_eq!(
            fsm.handle_peer_message(t0 + HB, b"2"),
            Ok(Ok(Outcome::Noted))
        );
        assert_eq!(fsm.state(), State::Active);
        assert_eq!(fsm.peer_expiry(), t0 + 3 * HB);
    }

    #[test]
    fn failover_and_failback_by_hand_on_simulated_time() {
        // Primary and backup exchange states every heartbeat; the primary dies; a client votes
        // at the backup; the primary restarts and comes back passive; then the backup is
        // stopped and a client vote makes the primary active again.
        let t0 = Instant::now();
        let config = BinaryStarConfig::default();
        let mut primary = BinaryStar::new(Role::Primary, t0, config);
        let mut backup = BinaryStar::new(Role::Backup, t0, config);
        let exchange = |a: &mut BinaryStar, b: &mut BinaryStar, now: Instant| {
            a.handle_timeout(now);
            b.handle_timeout(now);
            let (sa, sb) = (a.poll_publish(), b.poll_publish());
            if let Some(s) = sa {
                b.handle(now, Event::from_peer(s)).expect("valid");
            }
            if let Some(s) = sb {
                a.handle(now, Event::from_peer(s)).expect("valid");
            }
        };
        for step in 0..3 {
            exchange(&mut primary, &mut backup, t0 + HB * step);
            exchange(&mut primary, &mut backup, t0 + HB * step);
        }
        assert_eq!(
            (primary.state(), backup.state()),
            (State::Active, State::Passive)
        );
        // The primary dies at 3 s; the backup last heard it at 2 s.
        let dead = t0 + 3 * HB;
        assert_eq!(backup.handle(dead, Event::ClientRequest), Ok(Outcome::Drop));
        assert_eq!(
            backup.handle(t0 + 4 * HB, Event::ClientRequest),
            Ok(Outcome::Serve)
        );
        // Restarted at 5 s, the primary hears the active backup and goes passive.
        let mut primary = BinaryStar::new(Role::Primary, t0 + 5 * HB, config);
        exchange(&mut primary, &mut backup, t0 + 5 * HB);
        exchange(&mut primary, &mut backup, t0 + 5 * HB);
        assert_eq!(
            (primary.state(), backup.state()),
            (State::Passive, State::Active)
        );
        // Failback by hand: the backup is stopped; a client vote at the primary.
        assert_eq!(
            primary.handle(t0 + 6 * HB, Event::ClientRequest),
            Ok(Outcome::Drop)
        );
        assert_eq!(
            primary.handle(t0 + 7 * HB, Event::ClientRequest),
            Ok(Outcome::Serve)
        );
        assert!(primary.is_active());
    }
}
