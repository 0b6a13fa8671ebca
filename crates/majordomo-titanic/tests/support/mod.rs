//! What the paused-time tests of the server share.

use std::time::Duration;

use majordomo_titanic::{TitanicHandle, TitanicStats};
use tokio::time::Instant;

/// Waits (in virtual time, at most `patience`) until `check` holds on the running server's
/// stats, and returns them.
pub async fn stats_until(
    handle: &TitanicHandle,
    patience: Duration,
    what: &str,
    check: impl Fn(&TitanicStats) -> bool,
) -> TitanicStats {
    let deadline = Instant::now() + patience;
    loop {
        let stats = handle.stats().await.expect("titanic running");
        if check(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "never {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
