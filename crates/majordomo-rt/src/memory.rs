//! In-memory ROUTER and DEALER sockets, for driver tests without a network.
//!
//! [`router`] makes a ROUTER-like socket and the [`MemoryEndpoint`] its peers connect to. Each
//! [`MemoryDealer`] gets an identity (`mem-1`, `mem-2`, ...), which the router puts in front of
//! every message it receives from that dealer, as a zmq.rs ROUTER does. The router's queue to each
//! dealer is bounded, so a dealer that stops reading makes sends to it wait, as a full zmq.rs
//! queue does. Dropping the router closes every dealer's connection; dropping a dealer makes
//! sends to it fail and is reported by the router's `poll_disconnected`, as a closed connection
//! is by zmq.rs's monitor. A dealer splits ([`Split`]) into a sending and a receiving half; its
//! connection closes once both are dropped. [`link`] makes the two ends of a Binary Star state link. Everything runs
//! on tokio's channels, so it works under paused test time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::transport::{Connector, RecvHalf, SendHalf, Split, Transport, TransportError};

/// Messages a router queues for one dealer before sends to it wait.
pub const DEALER_QUEUE: usize = 1024;

enum Inbound {
    Connect(Bytes, mpsc::Sender<Vec<Bytes>>),
    Message(Vec<Bytes>),
    /// A dealer was dropped.
    Gone(Bytes),
}

/// A ROUTER-like in-memory socket; see the module docs.
#[derive(Debug)]
pub struct MemoryRouter {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    peers: HashMap<Bytes, mpsc::Sender<Vec<Bytes>>>,
    /// Dealers dropped, not yet reported by `poll_disconnected`.
    gone: std::collections::VecDeque<Bytes>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inbound::Connect(id, _) => f.debug_tuple("Connect").field(id).finish(),
            Inbound::Message(frames) => f.debug_tuple("Message").field(frames).finish(),
            Inbound::Gone(id) => f.debug_tuple("Gone").field(id).finish(),
        }
    }
}

/// Where dealers connect to a [`MemoryRouter`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryEndpoint {
    inbound: mpsc::UnboundedSender<Inbound>,
    next_id: Arc<AtomicU64>,
}

/// A DEALER-like in-memory socket connected to one [`MemoryRouter`].
#[derive(Debug)]
pub struct MemoryDealer {
    sender: MemorySender,
    receiver: MemoryReceiver,
}

/// A dealer's connection to its router: the router learns it closed once this is dropped, as a
/// zmq.rs ROUTER's monitor reports a closed connection.
#[derive(Debug)]
struct Connection {
    identity: Bytes,
    inbound: mpsc::UnboundedSender<Inbound>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.inbound.send(Inbound::Gone(self.identity.clone()));
    }
}

/// The sending half of a split [`MemoryDealer`].
#[derive(Debug)]
pub struct MemorySender(Arc<Connection>);

/// The receiving half of a split [`MemoryDealer`].
#[derive(Debug)]
pub struct MemoryReceiver {
    outbound: mpsc::Receiver<Vec<Bytes>>,
    /// The connection stays open while either half lives.
    _connection: Arc<Connection>,
}

/// A router and the endpoint its dealers connect to.
pub fn router() -> (MemoryRouter, MemoryEndpoint) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        MemoryRouter {
            inbound: rx,
            peers: HashMap::new(),
            gone: std::collections::VecDeque::new(),
        },
        MemoryEndpoint {
            inbound: tx,
            next_id: Arc::new(AtomicU64::new(1)),
        },
    )
}

impl MemoryEndpoint {
    /// Connects a new dealer; fails once the router is gone.
    pub fn connect(&self) -> Result<MemoryDealer, TransportError> {
        let identity = Bytes::from(format!(
            "mem-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ));
        let (tx, rx) = mpsc::channel(DEALER_QUEUE);
        self.inbound
            .send(Inbound::Connect(identity.clone(), tx))
            .map_err(|_| TransportError::Closed)?;
        let connection = Arc::new(Connection {
            identity,
            inbound: self.inbound.clone(),
        });
        Ok(MemoryDealer {
            sender: MemorySender(connection.clone()),
            receiver: MemoryReceiver {
                outbound: rx,
                _connection: connection,
            },
        })
    }
}

impl Connector for MemoryEndpoint {
    type Conn = MemoryDealer;

    async fn connect(&self, _timeout: Duration) -> Result<MemoryDealer, TransportError> {
        MemoryEndpoint::connect(self)
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

impl MemoryDealer {
    /// The identity the router sees in front of this dealer's messages.
    pub fn identity(&self) -> &Bytes {
        &self.sender.0.identity
    }
}

impl Transport for MemoryRouter {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        loop {
            // Cancel-safe: mpsc's recv loses nothing when dropped, and a Connect is handled
            // completely before the next await.
            match self.inbound.recv().await {
                Some(Inbound::Connect(identity, tx)) => {
                    self.peers.insert(identity, tx);
                }
                Some(Inbound::Message(frames)) => return Ok(frames),
                Some(Inbound::Gone(identity)) => {
                    self.peers.remove(&identity);
                    self.gone.push_back(identity);
                }
                None => return Err(TransportError::Closed),
            }
        }
    }

    fn poll_disconnected(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Bytes> {
        // Filled by `recv`, which the server loop polls just before this.
        match self.gone.pop_front() {
            Some(identity) => std::task::Poll::Ready(identity),
            None => std::task::Poll::Pending,
        }
    }

    async fn send(&mut self, mut frames: Vec<Bytes>) -> Result<(), TransportError> {
        if frames.len() < 2 {
            return Err(TransportError::Unroutable);
        }
        let identity = frames.remove(0);
        let Some(peer) = self.peers.get(&identity) else {
            return Err(TransportError::Unroutable);
        };
        if peer.send(frames).await.is_err() {
            self.peers.remove(&identity);
            return Err(TransportError::Closed);
        }
        Ok(())
    }
}

impl Transport for MemoryDealer {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        self.receiver.recv().await
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        self.sender.send(frames).await
    }
}

impl SendHalf for MemorySender {
    async fn send(&self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let mut routed = Vec::with_capacity(frames.len() + 1);
        routed.push(self.0.identity.clone());
        routed.extend(frames);
        self.0
            .inbound
            .send(Inbound::Message(routed))
            .map_err(|_| TransportError::Closed)
    }
}

impl RecvHalf for MemoryReceiver {
    /// Cancel-safe: an mpsc receive.
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        self.outbound.recv().await.ok_or(TransportError::Closed)
    }
}

impl Split for MemoryDealer {
    type Sender = MemorySender;
    type Receiver = MemoryReceiver;

    fn split(self) -> (MemorySender, MemoryReceiver) {
        (self.sender, self.receiver)
    }
}

/// One end of an in-memory Binary Star state link (see [`link`]): a message one end sends (its
/// last frame), the other receives as `[empty identity, message]`, as from
/// [`crate::pair::StateLink`]; while the link is cut, messages are dropped, as a PUB drops them
/// with no subscriber. Dropping one end closes the other's receive.
#[derive(Debug)]
pub struct MemoryLink {
    tx: mpsc::UnboundedSender<Bytes>,
    rx: mpsc::UnboundedReceiver<Bytes>,
    up: Arc<AtomicBool>,
}

/// Cuts and restores a state link made by [`link`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkSwitch(Arc<AtomicBool>);

impl LinkSwitch {
    /// Drops every message from now on, both ways.
    pub fn cut(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Carries messages again.
    pub fn restore(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Two connected ends of a state link, and the switch that cuts it.
pub fn link() -> (MemoryLink, MemoryLink, LinkSwitch) {
    let (a_tx, b_rx) = mpsc::unbounded_channel();
    let (b_tx, a_rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(true));
    (
        MemoryLink {
            tx: a_tx,
            rx: a_rx,
            up: up.clone(),
        },
        MemoryLink {
            tx: b_tx,
            rx: b_rx,
            up: up.clone(),
        },
        LinkSwitch(up),
    )
}

impl Transport for MemoryLink {
    /// Cancel-safe: an mpsc receive.
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        match self.rx.recv().await {
            Some(message) => Ok(vec![Bytes::new(), message]),
            None => Err(TransportError::Closed),
        }
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        if let Some(message) = frames.into_iter().last() {
            if self.up.load(Ordering::Relaxed) {
                // The other end gone is a peer that stopped listening: nothing to report.
                let _ = self.tx.send(message);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_by_identity_both_ways() {
        let (mut router, endpoint) = router();
        let mut a = endpoint.connect().unwrap();
        let mut b = endpoint.connect().unwrap();
        a.send(vec![Bytes::from_static(b"from a")]).await.unwrap();
        b.send(vec![Bytes::from_static(b"from b")]).await.unwrap();
        let first = router.recv().await.unwrap();
        let second = router.recv().await.unwrap();
        assert_eq!(first, [a.identity().clone(), Bytes::from_static(b"from a")]);
        assert_eq!(
            second,
            [b.identity().clone(), Bytes::from_static(b"from b")]
        );
        router
            .send(vec![b.identity().clone(), Bytes::from_static(b"to b")])
            .await
            .unwrap();
        assert_eq!(b.recv().await.unwrap(), [Bytes::from_static(b"to b")]);
        let unknown = router
            .send(vec![Bytes::from_static(b"nobody"), Bytes::new()])
            .await;
        assert!(matches!(unknown, Err(TransportError::Unroutable)));
    }

    #[tokio::test]
    async fn dropping_either_end_is_seen_by_the_other() {
        let (mut router, endpoint) = router();
        let a = endpoint.connect().unwrap();
        let mut b = endpoint.connect().unwrap();
        b.send(vec![Bytes::from_static(b"hi")]).await.unwrap();
        router.recv().await.unwrap();
        let a_id = a.identity().clone();
        drop(a);
        let to_a = router.send(vec![a_id, Bytes::from_static(b"x")]).await;
        assert!(matches!(to_a, Err(TransportError::Closed)));
        drop(router);
        assert!(matches!(b.recv().await, Err(TransportError::Closed)));
        assert!(endpoint.connect().is_err());
    }

    #[tokio::test]
    async fn a_split_dealer_sends_and_receives_as_one_and_closes_with_its_last_half() {
        let (mut router, endpoint) = router();
        let dealer = endpoint.connect().unwrap();
        let identity = dealer.identity().clone();
        let (sender, mut receiver) = dealer.split();
        sender.send(vec![Bytes::from_static(b"up")]).await.unwrap();
        assert_eq!(
            router.recv().await.unwrap(),
            [identity.clone(), Bytes::from_static(b"up")]
        );
        router
            .send(vec![identity.clone(), Bytes::from_static(b"down")])
            .await
            .unwrap();
        assert_eq!(
            receiver.recv().await.unwrap(),
            [Bytes::from_static(b"down")]
        );
        // The receiving half alone keeps the connection open.
        drop(sender);
        router
            .send(vec![identity.clone(), Bytes::from_static(b"still")])
            .await
            .unwrap();
        assert_eq!(
            receiver.recv().await.unwrap(),
            [Bytes::from_static(b"still")]
        );
        drop(receiver);
        let closed = router.send(vec![identity, Bytes::from_static(b"x")]).await;
        assert!(matches!(closed, Err(TransportError::Closed)));
    }
}
