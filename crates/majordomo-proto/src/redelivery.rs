//! What happens to a request whose worker went away while holding it.
//!
//! The Majordomo broker and the Pirate queue share one rule: a request is handed to one worker at a
//! time; when that worker dies, disconnects or breaks the protocol, the request goes back to the
//! front of its queue for another worker, at most `max_deliveries` hand-outs in all, so a request
//! that crashes every worker it reaches cannot cycle forever.
//!
//! A worker that says DISCONNECT before anything else once it was handed a request gives it back
//! instead: it was leaving as the request reached it (a worker says DISCONNECT right after its
//! last reply, and the broker may hand it the next request before that DISCONNECT arrives). That
//! hand-out is not counted; such returns have a bound of their own, [`MAX_RETURNS`], so that a
//! worker that comes back and leaves again at every request cannot keep one cycling either.

/// Returns a request may have before it is abandoned (see [`Deliveries::on_returned`]).
pub const MAX_RETURNS: u32 = 32;

/// How many times a request has been handed to a worker, and given back unstarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries {
    handed: u32,
    returned: u32,
}

/// What to do with a request whose worker went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Queue it again, at the front, for another worker.
    Requeue,
    /// Drop it: `max_deliveries` workers already went away holding it (or [`MAX_RETURNS`]
    /// gave it back).
    Abandon,
}

impl Deliveries {
    /// Records one more hand-out to a worker.
    pub fn hand_out(&mut self) {
        self.handed = self.handed.saturating_add(1);
    }

    /// Hand-outs so far, not counting those given back.
    pub fn count(self) -> u32 {
        self.handed
    }

    /// The rule: re-queue while fewer than `max_deliveries` workers have held the request.
    pub fn on_worker_lost(self, max_deliveries: u32) -> Redelivery {
        if self.handed >= max_deliveries {
            Redelivery::Abandon
        } else {
            Redelivery::Requeue
        }
    }

    /// The worker gave the request back unstarted: its hand-out is taken back, and the request
    /// is re-queued unless it was given back [`MAX_RETURNS`] times already.
    pub fn on_returned(&mut self) -> Redelivery {
        self.handed = self.handed.saturating_sub(1);
        self.returned = self.returned.saturating_add(1);
        if self.returned > MAX_RETURNS {
            Redelivery::Abandon
        } else {
            Redelivery::Requeue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeues_until_max_deliveries_workers_held_it() {
        let mut d = Deliveries::default();
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            d.hand_out();
            verdicts.push(d.on_worker_lost(3));
        }
        use Redelivery::*;
        assert_eq!(verdicts, [Requeue, Requeue, Abandon, Abandon]);
        assert_eq!(d.count(), 4);
    }

    #[test]
    fn a_returned_request_is_not_counted_and_returns_have_their_own_bound() {
        let mut d = Deliveries::default();
        d.hand_out();
        d.hand_out();
        assert_eq!(d.on_worker_lost(3), Redelivery::Requeue);
        for _ in 0..MAX_RETURNS {
            d.hand_out();
            assert_eq!(d.on_returned(), Redelivery::Requeue);
        }
        // Given back as often as that, the two lost hand-outs still stand, and no more.
        assert_eq!(d.count(), 2);
        d.hand_out();
        assert_eq!(d.on_worker_lost(3), Redelivery::Abandon);
        let mut bounced = Deliveries::default();
        for _ in 0..MAX_RETURNS {
            bounced.hand_out();
            bounced.on_returned();
        }
        bounced.hand_out();
        assert_eq!(bounced.on_returned(), Redelivery::Abandon);
    }
}
