//! What a driver needs of a socket: receive a message, send a message.
//!
//! [`Transport`] is implemented for zmq.rs's ROUTER and DEALER sockets and for the in-memory
//! sockets of [`crate::memory`], so every driver runs unchanged over TCP, IPC or memory.
//! [`send_bounded`] is the one way drivers send: it polls the send once and arms a timer only
//! when the send has to wait. [`Connector`] opens the connections of peers that reconnect.
//! [`Split`] divides a connection into a sending half that many tasks share and a receiving
//! half that one task reads (zmq.rs's DEALER and the in-memory dealer do).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
pub use majordomo_zmtp::curve::{CurveKeyPair, CurvePublicKey, KeyError};
use majordomo_zmtp::guard::{bind_private_unix, GuardError, GuardStatsHandle};
pub use majordomo_zmtp::inspect::FrameLimits;
use majordomo_zmtp::mux::link::{CONNECTED, DISCONNECTED};
use majordomo_zmtp::outbound::CurveOutbound;
use majordomo_zmtp::{Guard, GuardConfig};
use zeromq::{
    DealerSocket, Endpoint, Host, RouterSocket, Socket, SocketEvent, SocketOptions, SocketRecv,
    SocketSend, ZmqMessage,
};

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// zmq.rs reported an error (peer gone, unknown identity, connection refused).
    #[error(transparent)]
    Zmq(#[from] zeromq::ZmqError),
    /// The other end of an in-memory socket is gone.
    #[error("connection closed")]
    Closed,
    /// A ROUTER message named no known peer, or had no frame after the identity.
    #[error("message cannot be routed")]
    Unroutable,
    /// Connecting did not finish within the allowed time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Not an endpoint at all.
    #[error("{0:?} is not an endpoint (tcp://host:port or ipc:///path)")]
    InvalidEndpoint(String),
    /// An endpoint this connection cannot use (CURVE needs `tcp://host:port`).
    #[error("{0}: not a tcp://host:port endpoint, which CURVE needs")]
    Endpoint(String),
}

/// A message socket. On a ROUTER-like transport the first frame of every message, in both
/// directions, is the peer's identity.
pub trait Transport: Send {
    /// Waits for the next message. Must be cancel-safe: a future dropped before it completes
    /// loses no message (zmq.rs's `recv` is; so are the in-memory sockets).
    fn recv(&mut self) -> impl Future<Output = Result<Vec<Bytes>, TransportError>> + Send;

    /// Sends one message; it may wait while the peer's queue is full.
    fn send(
        &mut self,
        frames: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The identity of a peer whose connection closed, if the transport can tell; by default it
    /// never does. Polled next to [`Transport::recv`] by the server loop.
    fn poll_disconnected(&mut self, _cx: &mut Context<'_>) -> Poll<Bytes> {
        Poll::Pending
    }

    /// The next peer whose CURVE key the transport has learnt, with that key (32 octets); by
    /// default none. The server loop takes them all before it hands on a message, so a peer's
    /// key is known before its first message is handled.
    fn take_peer_key(&mut self) -> Option<(Bytes, [u8; 32])> {
        None
    }

    /// Releases what the transport holds beyond its connections (listeners, socket files)
    /// while the runtime still runs; by default nothing. The server loop calls it once, last.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// One of two transports, so that a server's sockets of two kinds share one loop (the broker's
/// ROUTER sockets and its Binary Star state link). Each call goes to the transport inside, and
/// keeps its cancel-safety.
#[derive(Debug)]
pub enum Either<L, R> {
    /// The first kind.
    Left(L),
    /// The second kind.
    Right(R),
}

impl<L: Transport, R: Transport> Transport for Either<L, R> {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        match self {
            Either::Left(socket) => socket.recv().await,
            Either::Right(socket) => socket.recv().await,
        }
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        match self {
            Either::Left(socket) => socket.send(frames).await,
            Either::Right(socket) => socket.send(frames).await,
        }
    }

    fn poll_disconnected(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self {
            Either::Left(socket) => socket.poll_disconnected(cx),
            Either::Right(socket) => socket.poll_disconnected(cx),
        }
    }

    fn take_peer_key(&mut self) -> Option<(Bytes, [u8; 32])> {
        match self {
            Either::Left(socket) => socket.take_peer_key(),
            Either::Right(socket) => socket.take_peer_key(),
        }
    }

    async fn close(&mut self) {
        match self {
            Either::Left(socket) => socket.close().await,
            Either::Right(socket) => socket.close().await,
        }
    }
}

/// Why binding an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// zmq.rs refused the endpoint (malformed, unsupported transport).
    #[error(transparent)]
    Zmq(zeromq::ZmqError),
    /// The operating system refused the socket (the address in use, a path not writable).
    #[error(transparent)]
    Io(std::io::Error),
    /// The ZMTP guard could not bind the port or create its private socket.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The host name of a `tcp://` endpoint did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
}

/// A zmq.rs ROUTER socket with its monitor, so that the server loop learns when a peer's
/// connection closes (a killed process, a reset) instead of waiting for heartbeats to lapse; and
/// the ZMTP guards in front of its `tcp://` endpoints.
///
/// A guard in front-end mode ([`GuardConfig::front_end`]) reaches the socket as one zmq.rs peer,
/// its link, carrying every peer's messages as `[peer-id, frames...]` and their connects and
/// disconnects as control messages (`majordomo_zmtp::mux::link`). The router unwraps them: the
/// server sees each front-end peer as a peer of its own, and learns of its disconnect from the
/// control message instead of the monitor.
pub struct ZmqRouter {
    /// Before the socket, so that a dropped router stops its guards before their links close.
    guards: Vec<Guard>,
    socket: RouterSocket,
    events: futures::channel::mpsc::Receiver<SocketEvent>,
    /// Front-end links by identity, with the peers each carries now.
    links: HashMap<Bytes, HashSet<Bytes>>,
    /// The link of each front-end peer.
    routes: HashMap<Bytes, Bytes>,
    /// Front-end peers gone and not yet reported by [`Transport::poll_disconnected`].
    gone: VecDeque<Bytes>,
    /// Who to wake when `gone` gains one.
    gone_waker: Option<Waker>,
    /// Front-end peers' CURVE keys not yet taken by [`Transport::take_peer_key`].
    keys: VecDeque<(Bytes, [u8; 32])>,
    /// Socket files of the `ipc://` endpoints bound here, removed at close.
    ipc_files: Vec<std::path::PathBuf>,
    /// The inbound budget this socket's guards share when their configuration names none.
    inbound: Option<majordomo_zmtp::mux::budget::Budget>,
}

impl std::fmt::Debug for ZmqRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZmqRouter")
    }
}

impl Default for ZmqRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl ZmqRouter {
    /// A new, unbound ROUTER socket.
    pub fn new() -> Self {
        Self::with_socket(RouterSocket::new())
    }

    /// A new, unbound ROUTER socket that announces `identity` as its routing identity to the
    /// peers that connect (a Freelance server's public endpoint, RFC 10). Behind a guard in
    /// relay mode the announcement passes through; a front end announces its own
    /// (`GuardConfig::identity`).
    pub fn with_identity(identity: Bytes) -> Result<Self, TransportError> {
        let mut options = SocketOptions::default();
        options.peer_identity(identity.try_into()?);
        Ok(Self::with_socket(RouterSocket::with_options(options)))
    }

    fn with_socket(mut socket: RouterSocket) -> Self {
        let events = socket.monitor();
        Self {
            socket,
            events,
            guards: Vec::new(),
            links: HashMap::new(),
            routes: HashMap::new(),
            gone: VecDeque::new(),
            gone_waker: None,
            keys: VecDeque::new(),
            ipc_files: Vec::new(),
            inbound: None,
        }
    }

    /// Binds `endpoint` with no guard, returning it with an ephemeral port resolved. As
    /// [`ZmqRouter::bind_guarded`], not meant to be cancelled.
    pub async fn bind(&mut self, endpoint: &str) -> Result<String, BindError> {
        self.bind_guarded(endpoint, None).await
    }

    /// Binds `endpoint`, returning it with an ephemeral port resolved. With `guard`, a `tcp://`
    /// or `ipc://` endpoint is bound by a [`Guard`] with those limits, which serves every
    /// connection to the socket over a private Unix socket; the guards of one socket share one
    /// inbound budget unless the configuration brings its own
    /// ([`GuardConfig::shared_inbound_budget`]). An `ipc://` socket file is readable and
    /// writable by this user only (mode 0600, whatever the umask), so only this user (and root)
    /// can connect, guarded or not.
    ///
    /// Not meant to be cancelled: a future dropped before it completes may leave `endpoint`
    /// bound or not; drop the socket to start again.
    pub async fn bind_guarded(
        &mut self,
        endpoint: &str,
        guard: Option<&GuardConfig>,
    ) -> Result<String, BindError> {
        let parsed: Endpoint = endpoint.parse().map_err(zeromq::ZmqError::from)?;
        let config = guard.map(|config| {
            let mut config = config.clone();
            if config.inbound_pool.is_none() {
                let budget = config.inbound_budget;
                config.inbound_pool = Some(
                    self.inbound
                        .get_or_insert_with(|| majordomo_zmtp::mux::budget::Budget::new(budget))
                        .clone(),
                );
            }
            config
        });
        let (guard, listener, resolved) = match (&parsed, config) {
            (Endpoint::Ipc(Some(path)), None) => {
                let listener = bind_private_unix(path).map_err(zeromq::ZmqError::from)?;
                self.socket.bind_listener(listener).await?;
                self.ipc_files.push(path.clone());
                return Ok(parsed.to_string());
            }
            (Endpoint::Ipc(Some(path)), Some(config)) => {
                let (guard, listener) = Guard::bind_unix(path, config).await?;
                self.ipc_files.push(path.clone());
                (guard, listener, parsed.to_string())
            }
            (Endpoint::Tcp(host, port), Some(config)) => {
                let addr = resolve(host, *port).await?;
                let (guard, listener) = Guard::bind(addr, config).await?;
                let port = guard.local_addr().map_or(*port, |addr| addr.port());
                (
                    guard,
                    listener,
                    Endpoint::Tcp(host.clone(), port).to_string(),
                )
            }
            _ => return Ok(self.socket.bind(endpoint).await?.to_string()),
        };
        self.socket.bind_listener(listener).await?;
        tracing::debug!(endpoint = %resolved, "ZMTP guard in front");
        if let Some(link) = guard.link_identity() {
            self.links.insert(link, HashSet::new());
        }
        self.guards.push(guard);
        Ok(resolved)
    }

    /// Stats handles of the guards in front of this socket, one per guarded endpoint.
    pub fn guards(&self) -> Vec<GuardStatsHandle> {
        self.guards.iter().map(Guard::stats_handle).collect()
    }
}

impl From<zeromq::ZmqError> for BindError {
    /// An operating system error zmq.rs wraps is kept as it is: its message names it once.
    fn from(error: zeromq::ZmqError) -> Self {
        match error {
            zeromq::ZmqError::Network(io) => BindError::Io(io),
            other => BindError::Zmq(other),
        }
    }
}

/// The address a `tcp://` host names: `*` is every IPv4 interface, as in libzmq.
async fn resolve(host: &Host, port: u16) -> Result<SocketAddr, BindError> {
    match host {
        Host::Ipv4(ip) => Ok(SocketAddr::from((*ip, port))),
        Host::Ipv6(ip) => Ok(SocketAddr::from((*ip, port))),
        Host::Domain(name) if name == "*" => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        Host::Domain(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| BindError::Resolve(name.clone())),
    }
}

impl ZmqRouter {
    /// A message as received, unwrapped if it came over a front-end link: `None` for a control
    /// message (its effect recorded), the peer's message otherwise.
    fn unwrap_link(&mut self, mut frames: Vec<Bytes>) -> Option<Vec<Bytes>> {
        let link = frames.first()?;
        if !self.links.contains_key(link) {
            // A guard's link made again after one failed comes under a new identity.
            if !self.guards.iter().any(|guard| guard.is_link(link)) {
                return Some(frames);
            }
            self.links.insert(link.clone(), HashSet::new());
        }
        let link = frames.remove(0);
        if !frames.first().is_some_and(Bytes::is_empty) {
            return (frames.len() >= 2).then_some(frames);
        }
        // [empty, event, peer]: the front end writes peers' frames only after their identity.
        let (Some(event), Some(peer)) = (frames.get(1), frames.get(2)) else {
            return None;
        };
        match event[..] {
            [CONNECTED] => {
                if let Some(key) = frames
                    .get(3)
                    .and_then(|k| <[u8; 32]>::try_from(&k[..]).ok())
                {
                    self.keys.push_back((peer.clone(), key));
                }
                self.routes.insert(peer.clone(), link.clone());
                if let Some(peers) = self.links.get_mut(&link) {
                    peers.insert(peer.clone());
                }
            }
            [DISCONNECTED] => self.forget(peer.clone()),
            _ => {}
        }
        None
    }

    /// A front-end peer is gone: its route goes and its disconnect is reported.
    fn forget(&mut self, peer: Bytes) {
        if let Some(link) = self.routes.remove(&peer) {
            if let Some(peers) = self.links.get_mut(&link) {
                peers.remove(&peer);
            }
        }
        self.gone.push_back(peer);
        if let Some(waker) = self.gone_waker.take() {
            waker.wake();
        }
    }
}

impl Transport for ZmqRouter {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        loop {
            // Cancel-safe: zmq.rs's recv is, and what follows it runs to completion.
            let frames = Transport::recv(&mut self.socket).await?;
            if let Some(frames) = self.unwrap_link(frames) {
                return Ok(frames);
            }
        }
    }

    fn send(
        &mut self,
        mut frames: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        // A front-end peer's message goes to its link, with its identity after the link's.
        if let Some(link) = frames.first().and_then(|peer| self.routes.get(peer)) {
            frames.insert(0, link.clone());
        }
        Transport::send(&mut self.socket, frames)
    }

    async fn close(&mut self) {
        // zmq.rs removes an ipc:// socket file when its listener stops, on a blocking task:
        // stopping here, with the runtime running, lets that finish (at process exit it fails
        // and warns). The guards go after, with their private directories.
        let _ = self.socket.unbind_all().await;
        self.guards.clear();
        for path in self.ipc_files.drain(..) {
            // Already gone if zmq.rs removed it.
            let _ = std::fs::remove_file(path);
        }
    }

    fn take_peer_key(&mut self) -> Option<(Bytes, [u8; 32])> {
        self.keys.pop_front()
    }

    fn poll_disconnected(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        if let Some(peer) = self.gone.pop_front() {
            return Poll::Ready(peer);
        }
        self.gone_waker = Some(cx.waker().clone());
        // The monitor reports every connection event; only disconnects matter here. zmq.rs
        // drops events when the channel is full, so a missed one falls back to heartbeats.
        loop {
            match futures::Stream::poll_next(std::pin::Pin::new(&mut self.events), cx) {
                Poll::Ready(Some(SocketEvent::Disconnected(peer))) => {
                    let peer = Bytes::from(peer);
                    let Some(peers) = self.links.remove(&peer) else {
                        return Poll::Ready(peer);
                    };
                    // A link is gone, and every peer it carried with it.
                    for peer in peers {
                        self.forget(peer);
                    }
                    if let Some(peer) = self.gone.pop_front() {
                        return Poll::Ready(peer);
                    }
                }
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Transport for RouterSocket {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        Ok(SocketRecv::recv(self).await?.into_vec())
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        // zmq.rs's ROUTER asserts on a message with nothing after the identity.
        if frames.len() < 2 {
            return Err(TransportError::Unroutable);
        }
        let msg = ZmqMessage::try_from(frames).map_err(|_| TransportError::Unroutable)?;
        Ok(SocketSend::send(self, msg).await?)
    }
}

impl Transport for DealerSocket {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        Ok(SocketRecv::recv(self).await?.into_vec())
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let msg = ZmqMessage::try_from(frames).map_err(|_| TransportError::Unroutable)?;
        Ok(SocketSend::send(self, msg).await?)
    }
}

/// A connection that splits into a sending half, which any number of tasks share, and a
/// receiving half, which one task reads: a multiplexing client's callers then send their own
/// requests, with no hand-over to the task that reads the replies.
pub trait Split: Transport + Sized {
    /// The sending half.
    type Sender: SendHalf;
    /// The receiving half.
    type Receiver: RecvHalf;

    /// Splits the connection; it closes once both halves are dropped.
    fn split(self) -> (Self::Sender, Self::Receiver);
}

/// The sending half of a [`Split`] connection, shared by reference.
pub trait SendHalf: Send + Sync + 'static {
    /// Sends one message; it may wait while the peer's queue is full.
    fn send(&self, frames: Vec<Bytes>) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// The receiving half of a [`Split`] connection.
pub trait RecvHalf: Send + 'static {
    /// Waits for the next message. Cancel-safe, as [`Transport::recv`] must be.
    fn recv(&mut self) -> impl Future<Output = Result<Vec<Bytes>, TransportError>> + Send;
}

/// The sending half of a split zmq.rs DEALER socket. zmq.rs's send only queues the message for
/// the connection's writer, so the lock is held for no longer than that, unless the queue is
/// full.
pub struct DealerSender(tokio::sync::Mutex<zeromq::DealerSendHalf>);

impl std::fmt::Debug for DealerSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DealerSender").finish_non_exhaustive()
    }
}

impl SendHalf for DealerSender {
    async fn send(&self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let msg = ZmqMessage::try_from(frames).map_err(|_| TransportError::Unroutable)?;
        Ok(SocketSend::send(&mut *self.0.lock().await, msg).await?)
    }
}

/// The receiving half of a split zmq.rs DEALER socket.
pub struct DealerReceiver(zeromq::DealerRecvHalf);

impl std::fmt::Debug for DealerReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DealerReceiver").finish_non_exhaustive()
    }
}

impl RecvHalf for DealerReceiver {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        Ok(SocketRecv::recv(&mut self.0).await?.into_vec())
    }
}

impl Split for DealerSocket {
    type Sender = DealerSender;
    type Receiver = DealerReceiver;

    fn split(self) -> (DealerSender, DealerReceiver) {
        let (send, recv) = DealerSocket::split(self);
        (
            DealerSender(tokio::sync::Mutex::new(send)),
            DealerReceiver(recv),
        )
    }
}

/// How a [`send_bounded`] ended.
#[derive(Debug)]
pub enum SendOutcome {
    /// The message was handed to the transport.
    Sent,
    /// The transport refused it (peer gone, unknown identity).
    Failed(TransportError),
    /// The peer's queue stayed full for the whole timeout; the message was dropped.
    TimedOut,
}

/// Sends `frames`, waiting at most `timeout` for room in the peer's queue.
///
/// Almost every send completes when first polled (zmq.rs queues up to 100,000 messages per peer),
/// so the send is polled once before any timer is armed: registering a timer for every message
/// would cost more than the send.
pub async fn send_bounded<T: Transport>(
    transport: &mut T,
    frames: Vec<Bytes>,
    timeout: Duration,
) -> SendOutcome {
    let send = transport.send(frames);
    let mut send = std::pin::pin!(send);
    let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout(timeout, send).await {
            Ok(result) => result,
            Err(_) => return SendOutcome::TimedOut,
        },
    };
    match result {
        Ok(()) => SendOutcome::Sent,
        Err(error) => SendOutcome::Failed(error),
    }
}

/// Opens a zmq.rs DEALER socket connected to `endpoint`, waiting at most `timeout`. zmq.rs
/// retries a refused connection until its own `connect_timeout`, so both are bounded here.
pub async fn connect_dealer(
    endpoint: &str,
    timeout: Duration,
) -> Result<DealerSocket, TransportError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    let mut socket = DealerSocket::with_options(options);
    match tokio::time::timeout(timeout, socket.connect(endpoint)).await {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(TransportError::ConnectTimeout(timeout)),
    }
}

/// Checks that `endpoint` is one (`tcp://host:port`, `ipc:///path`), so that a typo is an
/// error at once rather than attempts that time out.
pub fn check_endpoint(endpoint: &str) -> Result<(), TransportError> {
    endpoint
        .parse::<Endpoint>()
        .map(|_| ())
        .map_err(|_| TransportError::InvalidEndpoint(endpoint.to_owned()))
}

/// A zmq.rs ROUTER socket connected to `endpoint` within `timeout`: a Freelance client's socket
/// for one server (RFC 10: "Both clients and servers MUST use ROUTER").
pub async fn connect_router(
    endpoint: &str,
    timeout: Duration,
) -> Result<RouterSocket, TransportError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    let mut socket = RouterSocket::with_options(options);
    match tokio::time::timeout(timeout, socket.connect(endpoint)).await {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(TransportError::ConnectTimeout(timeout)),
    }
}

/// Opens new connections for a peer that reconnects on a fresh socket after each failure, as
/// 7/MDP and 6/PPP workers must.
pub trait Connector: Send + Sync {
    /// The connection it opens.
    type Conn: Transport;

    /// Opens one connection, within `timeout`.
    fn connect(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;

    /// Opens one connection within `timeout` for a call whose last connection went to the
    /// server `last` names (`None` before its first), and sets `last` to where this one goes.
    /// A connector over several servers ([`RoundRobin`](crate::round_robin::RoundRobin))
    /// starts with the server after the last, so that an attempt that got no reply is retried
    /// on another whatever other calls connected meanwhile. The default is
    /// [`Connector::connect`], which leaves `last` as it is: a connector that wraps one over
    /// several servers forwards this method too, or a call's retry may land on the server that
    /// did not answer when other calls connect meanwhile. Cancel-safe as `connect` is: a future
    /// dropped before it completes leaves `last` as it was.
    fn connect_after<'a>(
        &'a self,
        timeout: Duration,
        last: &'a mut Option<usize>,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send + 'a {
        let _ = last;
        self.connect(timeout)
    }

    /// Where it connects, for logs.
    fn describe(&self) -> String;
}

/// Connects zmq.rs DEALER sockets to one endpoint, with NULL security or, for a
/// [`DealerConnector::curve`] connector, CURVE: zmq.rs speaks only NULL, so its connections go
/// through a local bridge that seals them ([`majordomo_zmtp::outbound`]).
#[derive(Debug, Clone)]
pub struct DealerConnector {
    endpoint: String,
    curve: Option<Arc<CurveOutbound>>,
}

impl DealerConnector {
    /// A connector for `endpoint` (`tcp://host:port` or `ipc:///path`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            curve: None,
        }
    }

    /// A connector for the CURVE server at `endpoint` (`tcp://host:port`) whose public key is
    /// `server`, as the holder of `keys` (a client's own pair, or one made for the process:
    /// [`CurveKeyPair::generate`]). Frames from the server are held to the broker's default
    /// limits (16 MiB, 1,024 frames); [`DealerConnector::curve_with_limits`] sets others.
    pub fn curve(
        endpoint: impl Into<String>,
        server: CurvePublicKey,
        keys: Arc<CurveKeyPair>,
    ) -> Result<Self, TransportError> {
        let frames = FrameLimits::from(&majordomo_proto::Limits::default());
        Self::curve_with_limits(endpoint, server, keys, frames)
    }

    /// As [`DealerConnector::curve`], holding frames from the server to `limits`: one past
    /// `max_frame` closes the connection before anything is reserved for it.
    pub fn curve_with_limits(
        endpoint: impl Into<String>,
        server: CurvePublicKey,
        keys: Arc<CurveKeyPair>,
        limits: FrameLimits,
    ) -> Result<Self, TransportError> {
        let endpoint = endpoint.into();
        let remote = match endpoint.parse::<Endpoint>() {
            Ok(Endpoint::Tcp(host, port)) => format!("{host}:{port}"),
            _ => return Err(TransportError::Endpoint(endpoint)),
        };
        let curve = CurveOutbound::new(remote, server, keys, limits);
        Ok(Self {
            endpoint,
            curve: Some(Arc::new(curve)),
        })
    }
}

impl From<String> for DealerConnector {
    fn from(endpoint: String) -> Self {
        Self::new(endpoint)
    }
}

impl From<&str> for DealerConnector {
    fn from(endpoint: &str) -> Self {
        Self::new(endpoint)
    }
}

impl From<&String> for DealerConnector {
    fn from(endpoint: &String) -> Self {
        Self::new(endpoint.clone())
    }
}

impl Connector for DealerConnector {
    type Conn = DealerSocket;

    fn connect(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<DealerSocket, TransportError>> + Send {
        let curve = self.curve.clone();
        let endpoint = self.endpoint.clone();
        async move {
            match curve {
                None => connect_dealer(&endpoint, timeout).await,
                Some(curve) => {
                    let local = curve
                        .local_endpoint()
                        .await
                        .map_err(zeromq::ZmqError::from)?;
                    connect_dealer(&local, timeout).await
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self.curve {
            None => self.endpoint.clone(),
            Some(_) => format!("{} (CURVE)", self.endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[tokio::test]
    async fn front_end_links_are_unwrapped_and_their_disconnects_reported() {
        let mut router = ZmqRouter::new();
        router
            .links
            .insert(Bytes::from_static(b"\0Llink"), HashSet::new());
        // A peer of the socket's own passes as it is.
        assert_eq!(
            router.unwrap_link(frames(&[b"direct", b"", b"hi"])),
            Some(frames(&[b"direct", b"", b"hi"]))
        );
        // A front-end peer connects, sends, and leaves.
        let connect = frames(&[b"\0Llink", b"", &[CONNECTED], b"peer"]);
        assert_eq!(router.unwrap_link(connect), None);
        assert_eq!(
            router.routes.get(&b"peer"[..]),
            Some(&Bytes::from_static(b"\0Llink"))
        );
        assert_eq!(
            router.unwrap_link(frames(&[b"\0Llink", b"peer", b"", b"MDPC01"])),
            Some(frames(&[b"peer", b"", b"MDPC01"]))
        );
        // A lone identity carries nothing: dropped.
        assert_eq!(router.unwrap_link(frames(&[b"\0Llink", b"peer"])), None);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(router.poll_disconnected(&mut cx).is_pending());
        let leave = frames(&[b"\0Llink", b"", &[DISCONNECTED], b"peer"]);
        assert_eq!(router.unwrap_link(leave), None);
        assert_eq!(
            router.poll_disconnected(&mut cx),
            Poll::Ready(Bytes::from_static(b"peer"))
        );
        assert!(router.routes.is_empty());
        assert!(router.poll_disconnected(&mut cx).is_pending());
        // A CURVE peer's key comes with its CONNECTED; a key of the wrong length is ignored.
        assert_eq!(router.take_peer_key(), None);
        let key: &'static [u8] = &[7; 32];
        let connect = frames(&[b"\0Llink", b"", &[CONNECTED], b"curve", key]);
        assert_eq!(router.unwrap_link(connect), None);
        let short = frames(&[b"\0Llink", b"", &[CONNECTED], b"short", &[7; 31]]);
        assert_eq!(router.unwrap_link(short), None);
        assert_eq!(
            router.take_peer_key(),
            Some((Bytes::from_static(b"curve"), [7; 32]))
        );
        assert_eq!(router.take_peer_key(), None);
    }
}
