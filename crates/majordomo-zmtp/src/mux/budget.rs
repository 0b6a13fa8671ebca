//! Byte budgets: a limit shared by whoever holds bytes against it, and the charges they hold.
//!
//! A [`Budget`] is a counter with a limit, shared by cheap clones. Bytes are taken from it only
//! through a [`Charge`], which gives them back when dropped, so a peer that leaves (its task
//! ended, cancelled or panicked) cannot leak budget. The counter never passes its limit: every
//! acquisition is one compare-and-swap that grants at most what is left.
//!
//! An [`Allowance`] is the softer bound of one peer's share of a queue that others share too:
//! it is over once its holder has that many bytes queued, but a holder under it may always queue
//! one more item, however large, so that any item within the other limits can pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A limit on bytes held, shared by its clones. See the module documentation.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// Woken on every release, for those waiting for room (no I/O: a plain wait list).
    released: tokio::sync::Notify,
    /// Holders waiting for room now ([`Budget::waiting`]).
    waiting: AtomicUsize,
    /// Woken whenever a holder starts waiting, for those who hold bytes and may have to give
    /// them up.
    pressure: tokio::sync::Notify,
}

/// Two handles are equal when they are the same budget (clones of one another).
impl PartialEq for Budget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Budget {}

impl Budget {
    /// A budget of `limit` bytes, none of them taken.
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            pressure: tokio::sync::Notify::new(),
        }))
    }

    /// Counts its caller as waiting for room until the returned guard is dropped, and wakes
    /// [`Budget::pressure`]'s waiters.
    pub fn wait_for_room(&self) -> Waiting {
        self.0.waiting.fetch_add(1, Ordering::AcqRel);
        self.0.pressure.notify_waiters();
        Waiting(self.clone())
    }

    /// Holders waiting for room now.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::Acquire)
    }

    /// Completes when a holder next starts waiting for room. To miss none, `enable` it before
    /// reading [`Budget::waiting`].
    pub fn pressure(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.pressure.notified()
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes held now, by every charge together; never more than [`Budget::limit`].
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// Completes at the next release of bytes. To wait without missing one, `enable` it before
    /// the attempt that found the budget spent.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.released.notified()
    }

    /// A charge of no bytes against this budget, to grow as bytes are held.
    pub fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes exactly `want` bytes, or nothing when fewer are left.
    fn acquire(&self, want: usize) -> bool {
        let mut used = self.0.used.load(Ordering::Acquire);
        loop {
            if self.0.limit.saturating_sub(used) < want {
                return false;
            }
            match self.0.used.compare_exchange_weak(
                used,
                used + want,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.0.used.fetch_sub(bytes, Ordering::AcqRel);
            self.0.released.notify_waiters();
        }
    }
}

/// A holder counted as waiting for room in a [`Budget`] ([`Budget::wait_for_room`]) until
/// dropped.
#[derive(Debug)]
pub struct Waiting(Budget);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0 .0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes held against a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Budget,
    bytes: usize,
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` more, all or nothing; `false` when the budget has fewer left.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        let granted = self.budget.acquire(bytes);
        if granted {
            self.bytes += bytes;
        }
        granted
    }

    /// Gives back whatever this charge holds beyond `bytes`.
    pub fn release_beyond(&mut self, bytes: usize) {
        if self.bytes > bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Adds what `other` holds to this charge (same budget), leaving it empty.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget.0, &other.budget.0));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// One holder's share of a shared queue, in bytes: see the module documentation. Cheap to
/// clone; the clones count together.
#[derive(Debug, Clone)]
pub struct Allowance(Arc<AllowanceInner>);

#[derive(Debug)]
struct AllowanceInner {
    limit: usize,
    queued: AtomicUsize,
    /// Woken whenever queued bytes are given back.
    written: tokio::sync::Notify,
}

impl Allowance {
    /// An allowance of `limit` bytes, none queued.
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(AllowanceInner {
            limit,
            queued: AtomicUsize::new(0),
            written: tokio::sync::Notify::new(),
        }))
    }

    /// Bytes queued now, by every [`Queued`] of this allowance together.
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Acquire)
    }

    /// Whether the holder has its limit or more queued: then it queues nothing more until
    /// [`Allowance::written`] says some was given back.
    pub fn is_over(&self) -> bool {
        self.queued() >= self.0.limit
    }

    /// Counts `bytes` as queued until the returned [`Queued`] is dropped. Never refused: the
    /// holder checks [`Allowance::is_over`] first.
    pub fn queue(&self, bytes: usize) -> Queued {
        self.0.queued.fetch_add(bytes, Ordering::AcqRel);
        Queued {
            allowance: self.clone(),
            bytes,
        }
    }

    /// Completes when queued bytes are next given back. To wait without missing that, `enable`
    /// it before the [`Allowance::is_over`] that found the allowance spent.
    pub fn written(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.written.notified()
    }
}

/// Bytes counted against an [`Allowance`] while queued; given back when dropped.
#[derive(Debug)]
pub struct Queued {
    allowance: Allowance,
    bytes: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.allowance
            .0
            .queued
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.allowance.0.written.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowance_is_over_at_its_limit_and_under_once_given_back() {
        let allowance = Allowance::new(100);
        assert!(!allowance.is_over());
        // Under the limit any item may be queued, even one larger than the limit.
        let big = allowance.queue(250);
        assert!(allowance.is_over());
        let small = allowance.clone().queue(10);
        assert_eq!(allowance.queued(), 260);
        drop(big);
        assert!(!allowance.is_over());
        drop(small);
        assert_eq!(allowance.queued(), 0);
    }

    #[test]
    fn charges_never_pass_the_limit_and_give_back_when_dropped() {
        let budget = Budget::new(100);
        let mut a = budget.charge();
        let mut b = budget.charge();
        assert!(a.try_grow(60));
        assert!(!b.try_grow(41), "all or nothing: 40 are left");
        assert_eq!(b.bytes(), 0);
        assert!(b.try_grow(40), "exactly what is left");
        assert_eq!(budget.used(), 100);
        assert!(!a.try_grow(1), "nothing is left");
        assert!(a.try_grow(0), "nothing is always there");
        drop(a);
        assert_eq!(budget.used(), 40);
        let mut c = budget.charge();
        assert!(c.try_grow(60));
        b.absorb(c);
        assert_eq!(b.bytes(), 100);
        assert_eq!(budget.used(), 100);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn waiters_are_counted_while_their_guard_lives_and_wake_the_pressure_waiters() {
        let budget = Budget::new(10);
        let pressure = budget.pressure();
        tokio::pin!(pressure);
        pressure.as_mut().enable();
        assert_eq!(budget.waiting(), 0);
        let first = budget.wait_for_room();
        let second = budget.clone().wait_for_room();
        assert_eq!(budget.waiting(), 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), pressure)
            .await
            .expect("woken by the first waiter");
        drop(first);
        assert_eq!(budget.waiting(), 1);
        drop(second);
        assert_eq!(budget.waiting(), 0);
    }

    #[test]
    fn concurrent_charges_never_pass_the_limit() {
        let budget = Budget::new(1000);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let budget = budget.clone();
                scope.spawn(move || {
                    for round in 0..2000 {
                        let mut charge = budget.charge();
                        let _ = charge.try_grow(round % 300);
                        assert!(budget.used() <= budget.limit());
                    }
                });
            }
        });
        assert_eq!(budget.used(), 0);
    }
}
