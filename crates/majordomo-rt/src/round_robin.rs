//! [`RoundRobin`]: one [`Connector`] over several brokers that serve the same services.
//!
//! Each connection opens through the next connector in turn, so the clients that open a
//! connection per attempt ([`call`](crate::call) and the clients on it) spread their requests
//! over the brokers, and an attempt that timed out on one broker is retried on the next: the
//! Lazy Pirate's retry becomes a failover. A broker that cannot be reached costs only its share
//! of the connect timeout before the next one is tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::transport::{Connector, TransportError};

/// Connects through several connectors in turn; see the module docs. Clones share the turn.
#[derive(Debug)]
pub struct RoundRobin<C> {
    connectors: Arc<[C]>,
    next: Arc<AtomicUsize>,
}

impl<C> Clone for RoundRobin<C> {
    fn clone(&self) -> Self {
        Self {
            connectors: self.connectors.clone(),
            next: self.next.clone(),
        }
    }
}

impl<C: Connector> RoundRobin<C> {
    /// A connector over `connectors`, tried in their order from the first.
    ///
    /// # Panics
    ///
    /// If `connectors` is empty.
    pub fn new(connectors: impl IntoIterator<Item = C>) -> Self {
        let connectors: Arc<[C]> = connectors.into_iter().collect();
        assert!(
            !connectors.is_empty(),
            "a RoundRobin needs at least one connector"
        );
        Self {
            connectors,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The connectors, in their order.
    pub fn connectors(&self) -> &[C] {
        &self.connectors
    }
}

impl<C: Connector> Connector for RoundRobin<C> {
    type Conn = C::Conn;

    /// Tries the next connector, then the ones after it, until one connects; each gets an equal
    /// share of what is left of `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<C::Conn, TransportError> {
        let count = self.connectors.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let mut failure = TransportError::ConnectTimeout(timeout);
        for i in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(count - i).unwrap_or(u32::MAX);
            match self.connectors[(start + i) % count].connect(share).await {
                Ok(conn) => {
                    // The next connection starts after the one that answered.
                    self.next.store(start + i + 1, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(error) => failure = error,
            }
        }
        Err(failure)
    }

    fn describe(&self) -> String {
        let all: Vec<String> = self.connectors.iter().map(Connector::describe).collect();
        all.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;
    use crate::transport::Transport;

    #[tokio::test(start_paused = true)]
    async fn connections_go_to_each_broker_in_turn_and_skip_one_that_is_gone() {
        let (mut a, a_endpoint) = memory::router();
        let (b, b_endpoint) = memory::router();
        let (mut c, c_endpoint) = memory::router();
        let connector = RoundRobin::new([a_endpoint, b_endpoint, c_endpoint]);
        // B is gone: its turn passes to C.
        drop(b);
        let mut seen = Vec::new();
        for n in 0..4u8 {
            let mut conn = connector
                .connect(Duration::from_secs(1))
                .await
                .expect("a live broker");
            conn.send(vec![bytes::Bytes::from(vec![n])])
                .await
                .expect("sent");
            let which = tokio::select! {
                _ = a.recv() => 'a',
                _ = c.recv() => 'c',
            };
            seen.push(which);
        }
        assert_eq!(seen, ['a', 'c', 'a', 'c']);
        assert_eq!(connector.describe(), "memory,memory,memory");
    }

    #[tokio::test(start_paused = true)]
    async fn no_broker_is_the_last_failure() {
        let (a, a_endpoint) = memory::router();
        drop(a);
        let connector = RoundRobin::new([a_endpoint]);
        assert!(matches!(
            connector.connect(Duration::from_secs(1)).await,
            Err(TransportError::Closed)
        ));
    }
}
