//! The drivers' clock.
//!
//! Every driver reads the time here, once per wake-up, and hands it to its sans-IO core. It is
//! tokio's clock, so drivers run on paused test time (`#[tokio::test(start_paused = true)]`),
//! where it jumps from deadline to deadline while nothing is runnable.

use std::time::Instant;

/// The current instant on tokio's clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
