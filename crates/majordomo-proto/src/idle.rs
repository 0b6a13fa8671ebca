//! Waiting without sleeping for a short window: a busy-poll idle strategy for the drivers' loops.
//!
//! A thread that sleeps until its next message pays a wake-up when the message arrives: tens of
//! microseconds on a virtual machine, paid on every request when 7/MDP gives a worker one request
//! at a time. [`busy_wait`] polls instead, for a bounded window after the last piece of work, and
//! sleeps once the window passes with nothing to do, so an idle process costs nothing.
//!
//! Runtime-agnostic: the caller passes its runtime's yield (with tokio, `tokio::task::yield_now`,
//! which lets the runtime run other tasks and check for I/O before polling again).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Awaits `wait`, first polling it again and again without sleeping for up to `window`, calling
/// `yield_now` between polls. A zero window awaits `wait` directly.
///
/// `wait` must tolerate being polled without having woken its task, which every future does.
pub async fn busy_wait<F, Y, YF>(wait: F, window: Duration, mut yield_now: Y) -> F::Output
where
    F: Future,
    Y: FnMut() -> YF,
    YF: Future<Output = ()>,
{
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
            yield_now().await;
        }
    }
    wait.await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let got = busy_wait(unwoken, Duration::from_secs(60), tokio::task::yield_now).await;
        assert_eq!(got, 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_after_the_window_and_without_one() {
        let late = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        let got = busy_wait(late, Duration::from_micros(100), tokio::task::yield_now).await;
        assert_eq!(got, 7);
        let got = busy_wait(async { 9 }, Duration::ZERO, tokio::task::yield_now).await;
        assert_eq!(got, 9);
    }
}
