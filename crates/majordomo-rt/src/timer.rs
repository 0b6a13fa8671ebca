//! One timer per loop, moved only when the deadline moves.
//!
//! Registering a fresh timer on every turn would put one in, and take one out of, the runtime's
//! timer wheel per message, which costs more than routing the message.

use std::pin::Pin;
use std::time::Instant;

use tokio::time::Sleep;

/// A deadline timer re-armed only when its deadline changes.
#[derive(Debug)]
pub struct DeadlineTimer {
    sleep: Pin<Box<Sleep>>,
}

impl DeadlineTimer {
    /// A timer that fires at `at`.
    pub fn new(at: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at))),
        }
    }

    /// Moves the deadline to `at`. Setting the deadline it already has does nothing; a timer
    /// that has fired and is set to the same deadline fires again at once.
    pub fn set(&mut self, at: Instant) {
        rearm(self.sleep.as_mut(), at);
    }

    /// Waits for the deadline. Cancel-safe: dropping the future unfired loses nothing.
    pub async fn wait(&mut self) {
        self.sleep.as_mut().await;
    }
}

/// Moves a timer pinned in place (on a driver's stack, for one wait) to `at`, by the same rule
/// as [`DeadlineTimer::set`]: nothing happens when the deadline has not moved.
pub fn rearm(sleep: Pin<&mut Sleep>, at: Instant) {
    let at = tokio::time::Instant::from_std(at);
    if sleep.deadline() != at {
        sleep.reset(at);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_it_was_moved_to() {
        let t0 = crate::clock::now();
        let mut timer = DeadlineTimer::new(t0 + Duration::from_secs(10));
        timer.set(t0 + Duration::from_secs(1));
        timer.wait().await;
        assert_eq!(crate::clock::now(), t0 + Duration::from_secs(1));
        timer.set(t0 + Duration::from_secs(3));
        timer.wait().await;
        assert_eq!(crate::clock::now(), t0 + Duration::from_secs(3));
    }
}
