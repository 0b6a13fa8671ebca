//! Waiting without sleeping for a short window: the busy-poll idle strategy of the drivers' loops.
//!
//! A thread that sleeps until its next message pays a wake-up when the message arrives: tens of
//! microseconds on a virtual machine, paid on every request when 7/MDP gives a worker one request
//! at a time. [`busy_wait`] polls instead, for a bounded window after the last piece of work, and
//! sleeps once the window passes with nothing to do, so an idle process costs nothing.
//!
//! The window is measured on the real clock, not tokio's: it bounds CPU time spent polling, and
//! under paused test time tokio's clock does not move while a task keeps running.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Awaits `wait`, first polling it again and again without sleeping for up to `window`, yielding
/// to the runtime between polls (so other tasks run and I/O is checked). A zero window awaits
/// `wait` directly.
///
/// `wait` must tolerate being polled without having woken its task, which every future does.
pub async fn busy_wait<F: Future>(wait: F, window: Duration) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    if !window.is_zero() {
        let until = Instant::now() + window;
        loop {
            let polled = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
            if let Poll::Ready(output) = polled {
                return output;
            }
            if Instant::now() >= until {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    wait.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn polls_again_without_a_wake_up_inside_the_window() {
        // This future never wakes its task: only polling it again completes it.
        let mut polls = 0;
        let unwoken = std::future::poll_fn(|_| {
            polls += 1;
            if polls == 3 {
                Poll::Ready(polls)
            } else {
                Poll::Pending
            }
        });
        let got = busy_wait(unwoken, Duration::from_secs(60)).await;
        assert_eq!(got, 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stops_polling_after_the_window_and_waits_for_a_wake_up() {
        // A future woken once, by a timer well after the window: once the window is over it must
        // be polled only when woken, not spun on.
        let window = Duration::from_micros(200);
        let start = Instant::now();
        let late_polls = AtomicUsize::new(0);
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::from_millis(30)));
        let late = std::future::poll_fn(|cx| {
            if start.elapsed() > window + Duration::from_millis(5) {
                late_polls.fetch_add(1, Ordering::Relaxed);
            }
            sleep.as_mut().poll(cx).map(|()| 7)
        });
        let got = tokio::time::timeout(Duration::from_secs(10), busy_wait(late, window))
            .await
            .expect("completes when the timer fires");
        assert_eq!(got, 7);
        let late = late_polls.load(Ordering::Relaxed);
        assert!(
            late <= 2,
            "polled {late} times after the window: it kept spinning"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn zero_window_awaits_directly() {
        let mut polls = 0;
        let once = std::future::poll_fn(|_| {
            polls += 1;
            Poll::Ready(polls)
        });
        assert_eq!(busy_wait(once, Duration::ZERO).await, 1);
    }
}
