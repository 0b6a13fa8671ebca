//! [`RoundRobin`]: one [`Connector`] over several brokers that serve the same services.
//!
//! Each connection opens through the next connector in turn, so the clients that open a
//! connection per attempt ([`call`](crate::call) and the clients on it) spread their requests
//! over the brokers, and an attempt that timed out on one broker is retried on the next: the
//! Lazy Pirate's retry becomes a failover. A call's next attempt starts after the broker of its
//! last ([`Connector::connect_after`]), not at the shared turn, which other calls move. A broker
//! that cannot be reached costs only its share of the connect timeout before the next one is
//! tried.

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

impl<C: Connector> RoundRobin<C> {
    /// Tries the connector at `start` (modulo their number), then the ones after it, until one
    /// connects; each gets an equal share of what is left of `timeout`. The connection, and
    /// the place of the connector that opened it.
    async fn connect_from(
        &self,
        timeout: Duration,
        start: usize,
    ) -> Result<(C::Conn, usize), TransportError> {
        let count = self.connectors.len();
        let deadline = Instant::now() + timeout;
        let mut failure = TransportError::ConnectTimeout(timeout);
        for i in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(count - i).unwrap_or(u32::MAX);
            let at = (start + i) % count;
            match self.connectors[at].connect(share).await {
                Ok(conn) => return Ok((conn, at)),
                Err(error) => failure = error,
            }
        }
        Err(failure)
    }

    /// Connects from the shared turn, which then passes to the connector after the one that
    /// answered, unless another connection has moved it meanwhile.
    async fn connect_in_turn(&self, timeout: Duration) -> Result<(C::Conn, usize), TransportError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (conn, at) = self.connect_from(timeout, start).await?;
        let _ = self.next.compare_exchange(
            start.wrapping_add(1),
            at + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        Ok((conn, at))
    }
}

impl<C: Connector> Connector for RoundRobin<C> {
    type Conn = C::Conn;

    /// Tries the next connector in turn, then the ones after it, until one connects; each gets
    /// an equal share of what is left of `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<C::Conn, TransportError> {
        Ok(self.connect_in_turn(timeout).await?.0)
    }

    /// As [`RoundRobin::connect`], but after a call's `last` connector: the one after it first,
    /// so that the call's next attempt goes to another broker even when other calls took turns
    /// meanwhile (with one connector, the same again). The shared turn moves only for a call's
    /// first connection.
    async fn connect_after(
        &self,
        timeout: Duration,
        last: &mut Option<usize>,
    ) -> Result<C::Conn, TransportError> {
        let (conn, at) = match *last {
            Some(previous) => self.connect_from(timeout, previous + 1).await?,
            None => self.connect_in_turn(timeout).await?,
        };
        *last = Some(at);
        Ok(conn)
    }

    fn describe(&self) -> String {
        let all: Vec<String> = self.connectors.iter().map(Connector::describe).collect();
        all.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{self, MemoryRouter};
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

    /// Which router got the next message, and its first byte.
    async fn which(routers: [&mut MemoryRouter; 3]) -> (char, u8) {
        let [a, b, c] = routers;
        let (name, frames) = tokio::select! {
            frames = a.recv() => ('a', frames),
            frames = b.recv() => ('b', frames),
            frames = c.recv() => ('c', frames),
        };
        (name, frames.expect("router open")[1][0])
    }

    /// A connection through `connector`: at its turn, or after `last` where given.
    async fn open(
        connector: &RoundRobin<memory::MemoryEndpoint>,
        last: Option<&mut Option<usize>>,
    ) -> memory::MemoryDealer {
        let timeout = Duration::from_secs(1);
        match last {
            Some(last) => connector.connect_after(timeout, last).await,
            None => connector.connect(timeout).await,
        }
        .expect("a live broker")
    }

    /// Three in-memory brokers, and a connector over them in their order.
    fn three_brokers() -> ([MemoryRouter; 3], RoundRobin<memory::MemoryEndpoint>) {
        let [(a, a_endpoint), (b, b_endpoint), (c, c_endpoint)] =
            [memory::router(), memory::router(), memory::router()];
        (
            [a, b, c],
            RoundRobin::new([a_endpoint, b_endpoint, c_endpoint]),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_calls_next_connection_goes_after_its_last_whatever_others_took() {
        let ([mut a, mut b, mut c], connector) = three_brokers();
        let mut last = None;
        let mut seen = Vec::new();
        for n in 0..3u8 {
            let mut conn = open(&connector, Some(&mut last)).await;
            // Another call takes the next turn meanwhile.
            let mut other = open(&connector, None).await;
            other
                .send(vec![bytes::Bytes::from(vec![100 + n])])
                .await
                .expect("sent");
            assert_eq!(which([&mut a, &mut b, &mut c]).await.1, 100 + n);
            conn.send(vec![bytes::Bytes::from(vec![n])])
                .await
                .expect("sent");
            let (name, byte) = which([&mut a, &mut b, &mut c]).await;
            assert_eq!(byte, n);
            seen.push(name);
        }
        assert_eq!(seen, ['a', 'b', 'c']);
        assert_eq!(last, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_leaves_the_shared_turn_where_it_was() {
        let ([mut a, mut b, mut c], connector) = three_brokers();
        let mut last = None;
        let mut first = open(&connector, Some(&mut last)).await;
        let mut retry = open(&connector, Some(&mut last)).await;
        // The first connection passed the turn to b; the retry, on b too, leaves it there.
        let mut next = open(&connector, None).await;
        for (n, conn) in [&mut first, &mut retry, &mut next].into_iter().enumerate() {
            conn.send(vec![bytes::Bytes::from(vec![n as u8])])
                .await
                .expect("sent");
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(which([&mut a, &mut b, &mut c]).await);
        }
        seen.sort_by_key(|(_, n)| *n);
        assert_eq!(seen, [('a', 0), ('b', 1), ('b', 2)]);
    }
}
