//! Summaries of dropped requests, so that logs stay readable under load.
//!
//! A flood of requests a server cannot take would otherwise log one line each. [`DropLog`] logs
//! the first drop of a kind (service and reason) at once, then at most one summary per
//! [`SUMMARY_INTERVAL`] while drops of that kind continue: what was dropped, how many, over how
//! long. A kind that stays quiet for a whole interval is forgotten. Every drop is also counted in
//! the server's stats and reported as an [`Event::Dropped`] for the driver's counters; this only
//! shapes the log.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use crate::event::{Event, Events};
use crate::Hex;

/// Longest a kind of drop goes unreported while it continues.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Why a request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The bytes queued for its service were at their bound.
    ServiceBytes,
    /// The bytes queued over all services were at their bound.
    TotalBytes,
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
}

impl DropReason {
    /// A short, stable name, for counters (`reason` label of
    /// `majordomo_dropped_requests_total`).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ServiceBytes => "service_bytes",
            DropReason::TotalBytes => "total_bytes",
            DropReason::ServiceCount => "service_count",
            DropReason::TotalCount => "total_count",
            DropReason::NoWorker => "no_worker",
            DropReason::WaitedTooLong => "max_wait",
            DropReason::Abandoned => "abandoned",
            DropReason::Draining => "draining",
            DropReason::Drain => "drain",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::ServiceBytes => "service queue full (bytes)",
            DropReason::TotalBytes => "all queues full (bytes)",
            DropReason::ServiceCount => "service queue full (requests)",
            DropReason::TotalCount => "all queues full (requests)",
            DropReason::NoWorker => "expired: no worker for it",
            DropReason::WaitedTooLong => "expired: waited past the maximum wait",
            DropReason::Draining => "draining: no new requests",
            DropReason::Drain => "still held when the server stopped",
            DropReason::Abandoned => "abandoned: every worker that took it went away",
        })
    }
}

#[derive(Debug)]
struct Window {
    /// When the current window started (the first drop, or the last summary).
    since: Instant,
    /// Drops since then not yet logged.
    unreported: u64,
}

/// Rate-limited logging of dropped requests, per service and reason.
#[derive(Debug, Default)]
pub struct DropLog {
    windows: HashMap<(Bytes, DropReason), Window>,
    /// One [`Event::Dropped`] per drop, until the driver polls it.
    events: Events,
}

impl DropLog {
    /// Records one drop at `now`. The first of its kind is logged at once.
    pub fn record(&mut self, now: Instant, service: &Bytes, reason: DropReason) {
        self.events.push(Event::Dropped { reason });
        match self.windows.get_mut(&(service.clone(), reason)) {
            Some(window) => window.unreported += 1,
            None => {
                warn!(service = %Hex(service), %reason, "request dropped; further drops of this kind are summarised each second");
                self.windows.insert(
                    (service.clone(), reason),
                    Window {
                        since: now,
                        unreported: 0,
                    },
                );
            }
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
        self.windows
            .values()
            .map(|w| w.since + SUMMARY_INTERVAL)
            .min()
    }

    /// Logs the summaries whose window has ended, and forgets kinds that went quiet.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.windows.retain(|(service, reason), window| {
            if now < window.since + SUMMARY_INTERVAL {
                return true;
            }
            if window.unreported == 0 {
                return false;
            }
            warn!(
                service = %Hex(service),
                %reason,
                dropped = window.unreported,
                over_ms = (now - window.since).as_millis() as u64,
                "requests dropped"
            );
            window.since = now;
            window.unreported = 0;
            true
        });
    }

    /// Kinds of drop being tracked (open windows).
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Drops recorded since the last summary for this kind (for tests).
    pub fn unreported(&self, service: &Bytes, reason: DropReason) -> Option<u64> {
        self.windows
            .get(&(service.clone(), reason))
            .map(|w| w.unreported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_drop_opens_a_window_summarised_at_its_end_then_forgotten_when_quiet() {
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
        assert_eq!(log.unreported(&svc, DropReason::ServiceBytes), Some(1000));
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
        assert_eq!(log.unreported(&svc, DropReason::ServiceBytes), Some(1000));
        // At its end the count is reported and a new window starts.
        log.handle_timeout(t0 + SUMMARY_INTERVAL);
        assert_eq!(log.unreported(&svc, DropReason::ServiceBytes), Some(0));
        assert_eq!(log.poll_timeout(), Some(t0 + SUMMARY_INTERVAL * 2));
        // A quiet window closes the kind.
        log.handle_timeout(t0 + SUMMARY_INTERVAL * 2);
        assert!(log.is_empty());
        assert_eq!(log.poll_timeout(), None);
    }

    #[test]
    fn kinds_are_kept_apart_by_service_and_reason() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        log.record(t0, &a, DropReason::NoWorker);
        log.record(t0, &a, DropReason::TotalBytes);
        log.record(t0, &b, DropReason::NoWorker);
        log.record(t0, &b, DropReason::NoWorker);
        assert_eq!(log.len(), 3);
        assert_eq!(log.unreported(&b, DropReason::NoWorker), Some(1));
        assert_eq!(log.unreported(&a, DropReason::NoWorker), Some(0));
    }
}
