//! Summaries of dropped requests and protocol errors, so that logs stay small under any load.
//!
//! A flood of requests a server cannot take, or of invalid messages, would otherwise log one line
//! each; and a limit per service name or per peer is walked around by a flood of distinct names
//! or connections. [`DropLog`] and [`ErrorLog`] each log the first occurrence at once, then at
//! most one summary per [`SUMMARY_INTERVAL`] overall while more follow: how many, of which
//! kinds, from how many distinct services or peers (counted up to [`MAX_DISTINCT`]), over how
//! long. A quiet interval closes the window. Every drop and error is also counted in the
//! server's stats and reported as an [`Event`] for the driver's counters; this only shapes the
//! log, which stays within two lines per interval per log whatever arrives.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use crate::event::{Event, Events};
use crate::peer::Peer;
use crate::Hex;

/// Longest drops or errors go unreported while they continue.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Most distinct services (or peers) a summary counts; past it, it says "at least" this many.
/// Bounds the memory a window holds, whatever the names.
pub const MAX_DISTINCT: usize = 1024;

/// Why a request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The bytes queued for its service were at their bound.
    ServiceBytes,
    /// The bytes queued over all services were at their bound.
    TotalBytes,
    /// Its service was not known and the broker knew `max_services` services.
    Services,
    /// The requests queued for its service were at their count bound.
    ServiceCount,
    /// The requests queued over all services were at their count bound.
    TotalCount,
    /// No worker registered for its service within the request expiry.
    NoWorker,
    /// It waited longer than the broker's maximum wait, with workers registered.
    WaitedTooLong,
    /// Every worker it was handed to went away holding it.
    Abandoned,
    /// It arrived while the broker was draining: taking no new requests.
    Draining,
    /// It was still queued or in flight when the server stopped (after its drain, if any).
    Drain,
    /// The access rules do not let its client call its service
    /// ([`crate::access::AccessRules`]).
    Unauthorized,
}

impl DropReason {
    /// Every reason, so that a counter per reason can be exported from zero.
    pub const ALL: [DropReason; 11] = [
        DropReason::ServiceBytes,
        DropReason::TotalBytes,
        DropReason::Services,
        DropReason::ServiceCount,
        DropReason::TotalCount,
        DropReason::NoWorker,
        DropReason::WaitedTooLong,
        DropReason::Abandoned,
        DropReason::Draining,
        DropReason::Drain,
        DropReason::Unauthorized,
    ];

    /// A short, stable name, for counters (`reason` label of
    /// `majordomo_dropped_requests_total`).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ServiceBytes => "service_bytes",
            DropReason::TotalBytes => "total_bytes",
            DropReason::Services => "max_services",
            DropReason::ServiceCount => "service_count",
            DropReason::TotalCount => "total_count",
            DropReason::NoWorker => "no_worker",
            DropReason::WaitedTooLong => "max_wait",
            DropReason::Abandoned => "abandoned",
            DropReason::Draining => "draining",
            DropReason::Drain => "drain",
            DropReason::Unauthorized => "unauthorized",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::ServiceBytes => "service queue full (bytes)",
            DropReason::TotalBytes => "all queues full (bytes)",
            DropReason::Services => "too many services known",
            DropReason::ServiceCount => "service queue full (requests)",
            DropReason::TotalCount => "all queues full (requests)",
            DropReason::NoWorker => "expired: no worker for it",
            DropReason::WaitedTooLong => "expired: waited past the maximum wait",
            DropReason::Draining => "draining: no new requests",
            DropReason::Drain => "still held when the server stopped",
            DropReason::Unauthorized => {
                "unauthorized: the access rules do not let its client call it"
            }
            DropReason::Abandoned => "abandoned: every worker that took it went away",
        })
    }
}

/// One summary window: counts by kind and the distinct names seen, since the last line logged.
#[derive(Debug)]
struct Window<K> {
    /// When the window started (the first occurrence, or the last summary).
    since: Instant,
    /// Occurrences since then not yet logged, by kind (a handful of kinds).
    counts: Vec<(K, u64)>,
    /// Distinct names seen since then, at most [`MAX_DISTINCT`].
    distinct: HashSet<Bytes>,
}

impl<K: Copy + PartialEq> Window<K> {
    fn new(since: Instant) -> Self {
        Self {
            since,
            counts: Vec::new(),
            distinct: HashSet::new(),
        }
    }

    fn add(&mut self, name: &Bytes, kind: K) {
        match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((kind, 1)),
        }
        if self.distinct.len() < MAX_DISTINCT {
            self.distinct.insert(name.clone());
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    fn unreported(&self, kind: K) -> u64 {
        self.counts
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// The summary of one window, as logged.
struct Summary<'a, K> {
    counts: &'a [(K, u64)],
    label: fn(K) -> &'static str,
}

impl<K: Copy> fmt::Display for Summary<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, n)) in self.counts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={n}", (self.label)(*kind))?;
        }
        Ok(())
    }
}

/// The window logic both logs share: the first occurrence opens a window and is logged by the
/// caller; the rest are counted and summarised when the window ends.
#[derive(Debug)]
struct RateLimited<K> {
    window: Option<Window<K>>,
}

impl<K> Default for RateLimited<K> {
    fn default() -> Self {
        Self { window: None }
    }
}

impl<K: Copy + PartialEq> RateLimited<K> {
    /// Counts one occurrence; `true` when it opened a window (the caller logs it in full).
    fn record(&mut self, now: Instant, name: &Bytes, kind: K) -> bool {
        match &mut self.window {
            Some(window) => {
                window.add(name, kind);
                false
            }
            None => {
                self.window = Some(Window::new(now));
                true
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.window.as_ref().map(|w| w.since + SUMMARY_INTERVAL)
    }

    /// At the end of the window: what to summarise (if anything happened), and the window
    /// restarted or closed.
    fn handle_timeout(&mut self, now: Instant, mut log: impl FnMut(&Window<K>, Duration)) {
        let Some(window) = &mut self.window else {
            return;
        };
        if now < window.since + SUMMARY_INTERVAL {
            return;
        }
        if window.counts.is_empty() {
            self.window = None;
            return;
        }
        log(window, now - window.since);
        *window = Window::new(now);
    }

    fn unreported(&self, kind: K) -> Option<u64> {
        self.window.as_ref().map(|w| w.unreported(kind))
    }

    fn distinct(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.distinct.len())
    }
}

/// Rate-limited logging of dropped requests, over all services and reasons.
#[derive(Debug, Default)]
pub struct DropLog {
    limited: RateLimited<DropReason>,
    /// One [`Event::Dropped`] per drop, until the driver polls it.
    events: Events,
}

impl DropLog {
    /// Records one drop of a request for `service` at `now`. The first of a window is logged at
    /// once, the rest in its summary.
    pub fn record(&mut self, now: Instant, service: &Bytes, reason: DropReason) {
        self.events.push(Event::Dropped { reason });
        if self.limited.record(now, service, reason) {
            warn!(service = %Hex(service), %reason, "request dropped; further drops are summarised each second");
        }
    }

    /// Records `count` drops for `reason` at once, reported as one [`Event::DroppedMany`] and
    /// not logged (the caller logs them in one line).
    pub fn record_many(&mut self, reason: DropReason, count: u64) {
        if count > 0 {
            self.events.push(Event::DroppedMany { reason, count });
        }
    }

    /// The next drop not yet reported to the driver, as an [`Event::Dropped`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// When [`DropLog::handle_timeout`] must be called next, if a window is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.limited.poll_timeout()
    }

    /// Logs the summary when the window has ended (one line), and closes a quiet window.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.limited.handle_timeout(now, |window, over| {
            let distinct = window.distinct.len();
            warn!(
                dropped = window.total(),
                reasons = %Summary { counts: &window.counts, label: DropReason::label },
                services = distinct,
                services_at_least = distinct >= MAX_DISTINCT,
                over_ms = over.as_millis() as u64,
                "requests dropped"
            );
        });
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.limited.window.is_none()
    }

    /// Drops for `reason` recorded since the window's first line or last summary, if a window
    /// is open (for tests).
    pub fn unreported(&self, reason: DropReason) -> Option<u64> {
        self.limited.unreported(reason)
    }

    /// Distinct services among those drops (at most [`MAX_DISTINCT`]).
    pub fn distinct_services(&self) -> usize {
        self.limited.distinct()
    }
}

/// Rate-limited logging of protocol errors (invalid messages, unexpected commands), over all
/// peers and kinds.
#[derive(Debug, Default)]
pub struct ErrorLog {
    limited: RateLimited<&'static str>,
    /// One [`Event::ProtocolError`] per error, until the driver polls it.
    events: Events,
}

impl ErrorLog {
    /// Records one protocol error of `kind` from `peer` at `now`, `what` saying what happened
    /// and what the server does about it. The first of a window is logged at once with `error`,
    /// the rest in its summary.
    pub fn record(
        &mut self,
        now: Instant,
        peer: &Bytes,
        kind: &'static str,
        what: &str,
        error: &dyn fmt::Display,
    ) {
        self.events.push(Event::ProtocolError { kind });
        if self.limited.record(now, peer, kind) {
            warn!(peer = %Peer(peer), kind, %error, "{what}; further protocol errors are summarised each second");
        }
    }

    /// The next error not yet reported to the driver, as an [`Event::ProtocolError`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// When [`ErrorLog::handle_timeout`] must be called next, if a window is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.limited.poll_timeout()
    }

    /// Logs the summary when the window has ended (one line), and closes a quiet window.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.limited.handle_timeout(now, |window, over| {
            let distinct = window.distinct.len();
            warn!(
                errors = window.total(),
                kinds = %Summary { counts: &window.counts, label: |k| k },
                peers = distinct,
                peers_at_least = distinct >= MAX_DISTINCT,
                over_ms = over.as_millis() as u64,
                "protocol errors"
            );
        });
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.limited.window.is_none()
    }

    /// Errors of `kind` recorded since the window's first line or last summary, if a window is
    /// open (for tests).
    pub fn unreported(&self, kind: &'static str) -> Option<u64> {
        self.limited.unreported(kind)
    }

    /// Distinct peers among those errors (at most [`MAX_DISTINCT`]).
    pub fn distinct_peers(&self) -> usize {
        self.limited.distinct()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_drop_opens_a_window_summarised_at_its_end_then_closed_when_quiet() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        let svc = Bytes::from_static(b"echo");
        assert_eq!(log.poll_timeout(), None);
        log.record(t0, &svc, DropReason::ServiceBytes);
        for _ in 0..1000 {
            log.record(
                t0 + Duration::from_millis(10),
                &svc,
                DropReason::ServiceBytes,
            );
        }
        assert_eq!(log.unreported(DropReason::ServiceBytes), Some(1000));
        // Every drop is an event for the driver's counter.
        let mut events = 0;
        while let Some(event) = log.poll_event() {
            assert_eq!(
                event,
                Event::Dropped {
                    reason: DropReason::ServiceBytes
                }
            );
            events += 1;
        }
        assert_eq!(events, 1001);
        assert_eq!(log.poll_timeout(), Some(t0 + SUMMARY_INTERVAL));
        // Before the window ends nothing changes.
        log.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(log.unreported(DropReason::ServiceBytes), Some(1000));
        // At its end the count is reported and a new window starts.
        log.handle_timeout(t0 + SUMMARY_INTERVAL);
        assert_eq!(log.unreported(DropReason::ServiceBytes), Some(0));
        assert_eq!(log.poll_timeout(), Some(t0 + SUMMARY_INTERVAL * 2));
        // A quiet window closes.
        log.handle_timeout(t0 + SUMMARY_INTERVAL * 2);
        assert!(log.is_empty());
        assert_eq!(log.poll_timeout(), None);
    }

    #[test]
    fn one_window_covers_every_service_and_reason_with_distinct_names_bounded() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        log.record(t0, &a, DropReason::NoWorker);
        log.record(t0, &a, DropReason::TotalBytes);
        log.record(t0, &b, DropReason::NoWorker);
        log.record(t0, &b, DropReason::NoWorker);
        assert_eq!(log.unreported(DropReason::NoWorker), Some(2));
        assert_eq!(log.unreported(DropReason::TotalBytes), Some(1));
        assert_eq!(log.distinct_services(), 2);
        // 200,000 distinct names: one window, its set of names bounded.
        for i in 0..200_000u32 {
            log.record(
                t0,
                &Bytes::from(i.to_be_bytes().to_vec()),
                DropReason::NoWorker,
            );
        }
        assert_eq!(log.unreported(DropReason::NoWorker), Some(200_002));
        assert_eq!(log.distinct_services(), MAX_DISTINCT);
        assert_eq!(log.poll_timeout(), Some(t0 + SUMMARY_INTERVAL));
        log.handle_timeout(t0 + SUMMARY_INTERVAL);
        assert_eq!(log.distinct_services(), 0);
    }

    #[test]
    fn protocol_errors_share_one_window_over_all_peers_and_kinds() {
        let t0 = Instant::now();
        let mut log = ErrorLog::default();
        for i in 0..5000u32 {
            let peer = Bytes::from(i.to_be_bytes().to_vec());
            let kind = if i % 2 == 0 { "empty" } else { "missing_body" };
            log.record(t0, &peer, kind, "dropped invalid message", &"bad");
        }
        assert_eq!(log.unreported("empty"), Some(2499));
        assert_eq!(log.unreported("missing_body"), Some(2500));
        assert_eq!(log.distinct_peers(), MAX_DISTINCT);
        assert_eq!(
            std::iter::from_fn(|| log.poll_event()).count(),
            crate::event::MAX_EVENTS
        );
        log.handle_timeout(t0 + SUMMARY_INTERVAL);
        assert_eq!(log.unreported("empty"), Some(0));
        log.handle_timeout(t0 + SUMMARY_INTERVAL * 2);
        assert!(log.is_empty());
    }
}
