//! What happens to a request whose worker went away while holding it.
//!
//! The Majordomo broker and the Pirate queue share one rule: a request is handed to one worker at a
//! time; when that worker dies, disconnects or breaks the protocol, the request goes back to the
//! front of its queue for another worker, at most `max_deliveries` hand-outs in all, so a request
//! that crashes every worker it reaches cannot cycle forever.

/// How many times a request has been handed to a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries(u32);

/// What to do with a request whose worker went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Queue it again, at the front, for another worker.
    Requeue,
    /// Drop it: `max_deliveries` workers already went away holding it.
    Abandon,
}

impl Deliveries {
    /// Records one more hand-out to a worker.
    pub fn hand_out(&mut self) {
        self.0 = self.0.saturating_add(1);
    }

    /// Hand-outs so far.
    pub fn count(self) -> u32 {
        self.0
    }

    /// The rule: re-queue while fewer than `max_deliveries` workers have held the request.
    pub fn on_worker_lost(self, max_deliveries: u32) -> Redelivery {
        if self.0 >= max_deliveries {
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
}
