//! What a running Titanic server reports: [`TitanicStats`], with the latency of each step of a
//! request's round trip ([`Latency`]).

use std::time::Duration;

/// What a Titanic server has done and holds, read while it runs
/// ([`crate::TitanicHandle::stats`]) or returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TitanicStats {
    /// Requests stored and acknowledged (`titanic.request` answered 200).
    pub accepted: u64,
    /// `titanic.request` answered 500: malformed, store full, or the write failed.
    pub refused: u64,
    /// Replies stored.
    pub replied: u64,
    /// Requests sent to their service, counting each attempt.
    pub dispatched: u64,
    /// Dispatches that ended without a stored reply (the service then backs off).
    pub failed: u64,
    /// `titanic.close` calls answered 200.
    pub closed: u64,
    /// Requests and replies held now (stored, or being stored).
    pub stored: usize,
    /// Requests waiting for their turn now.
    pub queued: usize,
    /// Requests with the broker now.
    pub in_flight: usize,
    /// `titanic.reply` questions held now.
    pub held: usize,
    /// What the bodies kept in memory count now (see [`crate::core::body_cost`]).
    pub body_bytes: usize,
    /// What the bodies read from the store for the dispatches under way count now.
    pub reading_bytes: usize,
    /// What the stored requests and replies cost in the store now (see
    /// [`crate::store::stored_cost_of`]), against
    /// [`crate::core::CoreConfig::max_stored_bytes`].
    pub stored_bytes: u64,
    /// Transactions committed to the store.
    pub commits: u64,
    /// Writes (requests, replies, removals) in those transactions: `writes / commits` is how
    /// many writes shared an fsync, on average.
    pub writes: u64,
    /// From a `titanic.request` reaching the server to its 200, once durable.
    pub submit: Latency,
    /// From a request's submit to its dispatch, each attempt (its wait in the queue, for its
    /// turn under [`crate::core::CoreConfig::in_flight_per_service`] or a backoff).
    pub queue_wait: Latency,
    /// From a request's dispatch to its reply being durable (the service's time, and a
    /// commit).
    pub dispatch: Latency,
    /// From a `titanic.reply` question reaching the server to its answer (held questions
    /// included: a question about a pending request waits for its reply).
    pub reply: Latency,
    /// From a `titanic.close` reaching the server to its 200 (answered at once; the removal
    /// is made durable after).
    pub close: Latency,
}

/// The distribution of one step's latency since the server started. Quantiles are upper
/// bounds within 1/8 (an eighth of a power of two) of the true value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Microseconds below this have a bucket each; above, each power of two has 8.
const LINEAR: u64 = 8;
const BUCKETS: usize = 8 + 61 * 8;

/// A log-linear histogram of microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            max_us: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as u64;
    let m = (us >> (e - 3)) & 7;
    (LINEAR + (e - 3) * 8 + m) as usize
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let (e, m) = ((i - LINEAR) / 8 + 3, (i - LINEAR) % 8);
    let top = ((8 + u128::from(m) + 1) << (e - 3)) - 1;
    u64::try_from(top).unwrap_or(u64::MAX)
}

impl Histogram {
    pub(crate) fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    fn quantile(&self, q: f64) -> Duration {
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(upper(i).min(self.max_us));
            }
        }
        Duration::from_micros(self.max_us)
    }

    pub(crate) fn summary(&self) -> Latency {
        if self.count == 0 {
            return Latency::default();
        }
        Latency {
            count: self.count,
            p50: self.quantile(0.5),
            p99: self.quantile(0.99),
            max: Duration::from_micros(self.max_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values_within_an_eighth() {
        for us in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = bucket(us);
            assert!(i < BUCKETS, "{us}");
            assert!(upper(i) >= us, "{us}");
            assert!(upper(i) - us <= us / 8, "{us}: {}", upper(i));
            if i > 0 {
                assert!(upper(i - 1) < us, "{us}");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.max, Duration::from_millis(100));
        let near = |got: Duration, want_ms: u64| {
            let want = Duration::from_millis(want_ms);
            got >= want && got <= want + want / 8
        };
        assert!(near(s.p50, 50), "{s:?}");
        assert!(near(s.p99, 99), "{s:?}");
    }
}
