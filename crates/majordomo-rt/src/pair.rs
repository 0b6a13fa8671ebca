//! The state link of a Binary Star pair: a PUB socket bound where the peer subscribes, a SUB
//! socket connected to the peer's PUB, as in the Guide's reference server ("the servers use
//! PUB-SUB sockets for state exchange. No other socket combination will work here"), so either
//! server of a pair may be ours or one written from the Guide.
//!
//! [`StateLink`] is a [`Transport`], so it sits among a server's sockets in the server loop: it
//! receives the peer's state messages as `[empty identity, message]` and publishes the last
//! frame of what it is given. The subscriber lives in a task of its own, which recreates its
//! socket whenever the peer has been silent for the expiry: zmq.rs's SUB reconnects by itself,
//! but with a backoff growing to 30 s, so a peer restarted after a long absence would be heard
//! too late; and connecting to a peer that is down waits up to the connect timeout. Should the
//! task ever end while the link lives, the link logs it and starts another.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, error, Instrument};
use zeromq::{PubSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::transport::{BindError, Transport, TransportError};

/// Most peer state messages held for the loop; past it newer ones are dropped (each repeats the
/// peer's whole state, and the peer sends one a heartbeat).
const INBOUND: usize = 16;

/// A Binary Star state link: publishes this server's state, receives the peer's.
pub struct StateLink {
    publisher: PubSocket,
    inbound: mpsc::Receiver<Bytes>,
    subscriber: tokio::task::JoinHandle<()>,
    endpoint: String,
    /// The peer's publisher, and how long it may be silent: what a new subscriber needs.
    peer: String,
    expiry: Duration,
    /// When the subscriber task started: the next starts no sooner than an expiry after.
    started: tokio::time::Instant,
    /// Set by [`Transport::close`]: the subscriber is not started again.
    closed: bool,
}

impl std::fmt::Debug for StateLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLink")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl StateLink {
    /// Binds the publisher on `bind` and starts subscribing to `peer`. `expiry` is how long the
    /// peer may be silent before the subscriber's socket is replaced (the pair's peer expiry,
    /// two heartbeats), and bounds each connect attempt.
    ///
    /// The only wait is the publisher's bind: a future dropped before it completes drops the
    /// publisher, and nothing has started subscribing.
    pub async fn bind(bind: &str, peer: &str, expiry: Duration) -> Result<Self, BindError> {
        let mut publisher = PubSocket::new();
        let endpoint = publisher.bind(bind).await?.to_string();
        let peer: zeromq::Endpoint = peer.parse().map_err(zeromq::ZmqError::from)?;
        let peer = peer.to_string();
        let (subscriber, inbound) = start_subscriber(&peer, expiry, Duration::ZERO);
        Ok(Self {
            publisher,
            inbound,
            subscriber,
            endpoint,
            peer,
            expiry,
            started: tokio::time::Instant::now(),
            closed: false,
        })
    }

    /// The endpoint the publisher bound, with an ephemeral port resolved.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for StateLink {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Starts a task subscribing to `peer`'s states after `delay`: the task, and where it hands
/// them.
fn start_subscriber(
    peer: &str,
    expiry: Duration,
    delay: Duration,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<Bytes>) {
    let (tx, inbound) = mpsc::channel(INBOUND);
    let span = tracing::debug_span!("bstar_subscriber", peer = %peer);
    let peer = peer.to_owned();
    let task = tokio::spawn(
        async move {
            tokio::time::sleep(delay).await;
            subscribe(peer, expiry, tx).await;
        }
        .instrument(span),
    );
    (task, inbound)
}

/// Subscribes to the peer's states until the link is dropped, replacing the socket after each
/// silence as long as the expiry.
async fn subscribe(peer: String, expiry: Duration, tx: mpsc::Sender<Bytes>) {
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(expiry);
        let mut socket = SubSocket::with_options(options);
        if socket.subscribe("").await.is_err() {
            tokio::time::sleep(expiry).await;
            continue;
        }
        // zmq.rs retries a refused connect until its connect timeout; ours bounds it as well.
        match tokio::time::timeout(expiry, socket.connect(&peer)).await {
            Ok(Ok(())) => debug!("subscribed to the peer"),
            Ok(Err(error)) => {
                debug!(%error, "peer not reachable");
                // A refusal that came at once: do not spin.
                tokio::time::sleep(expiry / 4).await;
                continue;
            }
            Err(_) => {
                debug!("peer not reachable");
                continue;
            }
        }
        loop {
            match tokio::time::timeout(expiry, socket.recv()).await {
                Ok(Ok(message)) => {
                    let Some(frame) = message.into_vec().pop() else {
                        continue;
                    };
                    match tx.try_send(frame) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Ok(Err(error)) => {
                    debug!(%error, "subscription failed; reconnecting");
                    break;
                }
                Err(_) => {
                    debug!("peer silent past the expiry; reconnecting");
                    break;
                }
            }
        }
    }
}

impl Transport for StateLink {
    /// The peer's next state message, as `[empty, message]`. Cancel-safe (an mpsc receive,
    /// and a restart that completes before the next wait).
    ///
    /// The link closes only when [`Transport::close`]d: a subscriber task that ended while the
    /// link lives (it ends only by a panic) is logged and started again, for a pair that
    /// stopped hearing its peer would take it for dead and could go active beside it. A new
    /// one starts no sooner than an expiry after the last, so that a repeated failure logs
    /// once an expiry.
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        loop {
            if self.closed {
                return Err(TransportError::Closed);
            }
            if let Some(message) = self.inbound.recv().await {
                return Ok(vec![Bytes::new(), message]);
            }
            let now = tokio::time::Instant::now();
            // At most one start an expiry: a subscriber that keeps failing does not spin.
            let delay = (self.started + self.expiry).saturating_duration_since(now);
            let (subscriber, inbound) = start_subscriber(&self.peer, self.expiry, delay);
            self.inbound = inbound;
            let ended = std::mem::replace(&mut self.subscriber, subscriber);
            // Why it ended is known once its task has finished unwinding: logged from there.
            let peer = self.peer.clone();
            tokio::spawn(async move {
                let cause = match ended.await {
                    Ok(()) => "returned".to_owned(),
                    Err(error) => error.to_string(),
                };
                error!(%peer, %cause, "the state link's subscriber ended; started it again");
            });
            self.started = now + delay;
        }
    }

    /// Publishes the last frame of `frames` (the first is the identity the server loop puts in
    /// front of every message). Never waits: zmq.rs's PUB drops a message nobody subscribes to.
    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let Some(message) = frames.into_iter().last() else {
            return Ok(());
        };
        self.publisher.send(ZmqMessage::from(message)).await?;
        Ok(())
    }

    async fn close(&mut self) {
        self.closed = true;
        self.subscriber.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh `ipc://` endpoint. A TCP port picked free would be in the kernel's ephemeral
    /// range, where another connection may take it before it is bound, or a link connecting to
    /// it before its peer binds may be given it as its own port and connect to itself.
    fn free_endpoint(name: &str) -> String {
        let path =
            std::env::temp_dir().join(format!("majordomo-pair-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        format!("ipc://{}", path.display())
    }

    #[tokio::test]
    async fn two_links_hear_each_other_and_a_restarted_peer_is_heard_again() {
        let expiry = Duration::from_millis(400);
        let (a_ep, b_ep) = (free_endpoint("a"), free_endpoint("b"));
        let mut a = StateLink::bind(&a_ep, &b_ep, expiry).await.expect("bind a");
        let mut b = StateLink::bind(&b_ep, &a_ep, expiry).await.expect("bind b");
        // Publish until heard: PUB drops what goes out before the subscription arrives.
        async fn heard(from: &mut StateLink, to: &mut StateLink, what: &'static [u8]) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                assert!(tokio::time::Instant::now() < deadline, "never heard");
                from.send(vec![Bytes::new(), Bytes::from_static(what)])
                    .await
                    .expect("send");
                if let Ok(Ok(frames)) =
                    tokio::time::timeout(Duration::from_millis(100), to.recv()).await
                {
                    if frames[1].as_ref() == what {
                        return;
                    }
                }
            }
        }
        heard(&mut a, &mut b, b"1").await;
        heard(&mut b, &mut a, b"2").await;
        // The peer goes away and a new one binds the same endpoint.
        drop(b);
        tokio::time::sleep(expiry).await;
        // zmq.rs removes the socket file from its accept task, after the socket is gone.
        let file = std::path::PathBuf::from(b_ep.trim_start_matches("ipc://"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while file.exists() {
            assert!(tokio::time::Instant::now() < deadline, "{file:?} stays");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut b = StateLink::bind(&b_ep, &a_ep, expiry)
            .await
            .expect("rebind b");
        heard(&mut b, &mut a, b"3").await;
        heard(&mut a, &mut b, b"4").await;
        // A subscriber that ends while its link lives is started again.
        a.subscriber.abort();
        heard(&mut b, &mut a, b"5").await;
        // A closed link stays closed.
        a.close().await;
        assert!(matches!(a.recv().await, Err(TransportError::Closed)));
        for endpoint in [a_ep, b_ep] {
            let _ = std::fs::remove_file(endpoint.trim_start_matches("ipc://"));
        }
    }
}
