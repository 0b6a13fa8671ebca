//! [`FreelanceClient`]: one task owns a ROUTER socket per server and the Freelance core; the
//! handles send it requests and wait for their replies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{select_all, BoxFuture, FutureExt};
use futures::StreamExt;
use majordomo_proto::freelance::{
    FreelanceConfig, FreelanceCore, FreelanceError, FreelanceEvent, FreelanceStats,
};
use majordomo_rt::clock;
use majordomo_rt::transport::{
    connect_router, Connector, CurveKeyPair, CurvePublicKey, FrameLimits, Transport, TransportError,
};
use majordomo_zmtp::outbound::CurveOutbound;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, Instrument};
use zeromq::{RouterSocket, Socket, SocketEvent};

/// How long one connect to a server may take before it is tried again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreelanceClientError {
    /// No server answered in time, or the request was empty.
    #[error(transparent)]
    Request(#[from] FreelanceError),
    /// The client's task is gone (every handle but this one dropped is not enough: it stops
    /// only when the runtime does).
    #[error("the Freelance client has stopped")]
    Stopped,
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] majordomo_proto::ConfigError),
    /// No server was given.
    #[error("a Freelance client needs at least one server")]
    NoServers,
    /// CURVE needs `tcp://host:port` endpoints.
    #[error("{0}: CURVE needs a tcp://host:port endpoint")]
    NotTcp(String),
}

/// CURVE towards the servers: their public key (equivalent servers share one pair) and the
/// client's own pair.
#[derive(Debug, Clone)]
pub struct FreelanceCurve {
    /// The servers' public key.
    pub server: CurvePublicKey,
    /// The client's key pair ([`CurveKeyPair::generate`] for one of its own).
    pub keys: Arc<CurveKeyPair>,
}

enum Command {
    Request(
        Vec<Bytes>,
        oneshot::Sender<Result<Vec<Bytes>, FreelanceError>>,
    ),
    Stats(oneshot::Sender<FreelanceStats>),
}

/// A Freelance client of several equivalent servers; see the crate documentation. Cheap to
/// clone; the task behind it stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct FreelanceClient {
    commands: mpsc::Sender<Command>,
}

impl FreelanceClient {
    /// A client of the servers at `endpoints` (each also the server's identity, its public
    /// endpoint), in order of preference. Must be called within a tokio runtime: the client's
    /// task starts at once and connects to every server.
    pub fn new<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        config: FreelanceConfig,
    ) -> Result<Self, FreelanceClientError> {
        Self::start(endpoints, config, None)
    }

    /// As [`FreelanceClient::new`], every connection with CURVE (RFC 26): each goes through a
    /// local bridge that seals it (`majordomo_zmtp::outbound`), as the broker clients' do.
    pub fn with_curve<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        config: FreelanceConfig,
        curve: FreelanceCurve,
    ) -> Result<Self, FreelanceClientError> {
        Self::start(endpoints, config, Some(curve))
    }

    fn start<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        config: FreelanceConfig,
        curve: Option<FreelanceCurve>,
    ) -> Result<Self, FreelanceClientError> {
        let mut servers = Vec::new();
        for endpoint in endpoints {
            let endpoint: String = endpoint.into();
            let bridge = match &curve {
                None => None,
                Some(curve) => {
                    let remote = endpoint
                        .strip_prefix("tcp://")
                        .ok_or_else(|| FreelanceClientError::NotTcp(endpoint.clone()))?;
                    Some(Arc::new(CurveOutbound::new(
                        remote,
                        curve.server,
                        curve.keys.clone(),
                        frame_limits(),
                    )))
                }
            };
            let identity = Bytes::from(endpoint.clone());
            servers.push((identity, FreelanceConnector { endpoint, bridge }));
        }
        Self::with_connectors(servers, config)
    }

    /// A client of the servers reached through `servers`: each server's identity (the one
    /// the core addresses it by) and how to connect to it, in order of preference. A
    /// connection's messages are the frames after the server's identity; one that fails is
    /// made anew. [`FreelanceConnector`] is the one for zmq.rs; the in-memory sockets of
    /// `majordomo_rt::memory` serve tests.
    pub fn with_connectors<C>(
        servers: impl IntoIterator<Item = (Bytes, C)>,
        config: FreelanceConfig,
    ) -> Result<Self, FreelanceClientError>
    where
        C: Connector + 'static,
        C::Conn: 'static,
    {
        config.validate()?;
        let servers: Vec<(Bytes, C)> = servers.into_iter().collect();
        if servers.is_empty() {
            return Err(FreelanceClientError::NoServers);
        }
        let (commands, queue) = mpsc::channel(1024);
        let span = tracing::info_span!("freelance", servers = servers.len());
        tokio::spawn(run(servers, config, queue).instrument(span));
        Ok(Self { commands })
    }

    /// Sends `body` (one frame or more) to the first live server, and to the next after each
    /// attempt timeout, until one answers or the client's timeout passes. Returns the reply's
    /// frames (after the control frame). Cancel-safe: dropping the future abandons the request,
    /// and a reply that comes later is dropped.
    pub async fn request(&self, body: Vec<Bytes>) -> Result<Vec<Bytes>, FreelanceClientError> {
        let (reply, replied) = oneshot::channel();
        self.commands
            .send(Command::Request(body, reply))
            .await
            .map_err(|_| FreelanceClientError::Stopped)?;
        Ok(replied.await.map_err(|_| FreelanceClientError::Stopped)??)
    }

    /// What the client has seen: replies, failovers, stale replies, servers alive. Cancel-safe:
    /// a dropped question is answered to no one.
    pub async fn stats(&self) -> Result<FreelanceStats, FreelanceClientError> {
        let (reply, replied) = oneshot::channel();
        self.commands
            .send(Command::Stats(reply))
            .await
            .map_err(|_| FreelanceClientError::Stopped)?;
        replied.await.map_err(|_| FreelanceClientError::Stopped)
    }
}

/// One server: its identity, how to reach it, and its connection once made.
struct Slot<C: Connector> {
    identity: Bytes,
    connector: Arc<C>,
    conn: Option<C::Conn>,
    connecting: bool,
}

/// A connection to one Freelance server over zmq.rs: a ROUTER connected to that server alone
/// (RFC 10: "Both clients and servers MUST use ROUTER"), addressing it by its identity. Its
/// messages are the frames after the identity. Its connection closing (zmq.rs's monitor) ends
/// it: `recv` then fails with [`TransportError::Closed`], and a new one is made.
pub struct ServerSocket {
    socket: RouterSocket,
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    identity: Bytes,
}

impl std::fmt::Debug for ServerSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSocket")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Transport for ServerSocket {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        let Self {
            socket,
            monitor,
            identity,
        } = self;
        loop {
            let closed = async {
                loop {
                    match monitor.next().await {
                        Some(SocketEvent::Disconnected(_)) | None => return,
                        Some(_) => {}
                    }
                }
            };
            // Both are cancel-safe: zmq.rs's recv, and a channel's next.
            let mut frames = tokio::select! {
                message = Transport::recv(socket) => message?,
                () = closed => return Err(TransportError::Closed),
            };
            // Only the server is connected; anything else is not for this connection.
            if frames.len() >= 2 && frames[0] == *identity {
                frames.remove(0);
                return Ok(frames);
            }
        }
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let mut message = Vec::with_capacity(frames.len() + 1);
        message.push(self.identity.clone());
        message.extend(frames);
        Transport::send(&mut self.socket, message).await
    }
}

/// Connects to one Freelance server over zmq.rs, through a CURVE bridge if it has one.
#[derive(Debug)]
pub struct FreelanceConnector {
    endpoint: String,
    bridge: Option<Arc<CurveOutbound>>,
}

impl FreelanceConnector {
    /// A connector to the server at `endpoint`, which is also its identity.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            bridge: None,
        }
    }
}

impl Connector for FreelanceConnector {
    type Conn = ServerSocket;

    async fn connect(&self, timeout: Duration) -> Result<ServerSocket, TransportError> {
        let target = match &self.bridge {
            None => self.endpoint.clone(),
            Some(bridge) => bridge
                .local_endpoint()
                .await
                .map_err(zeromq::ZmqError::from)?,
        };
        let mut socket = connect_router(&target, timeout).await?;
        let monitor = socket.monitor();
        Ok(ServerSocket {
            socket,
            monitor,
            identity: Bytes::from(self.endpoint.clone()),
        })
    }

    fn describe(&self) -> String {
        self.endpoint.clone()
    }
}

/// Connects through `connector`, again and again every `retry` while the server is down.
async fn connect<C: Connector>(
    index: usize,
    connector: Arc<C>,
    retry: Duration,
) -> (usize, C::Conn) {
    loop {
        match connector.connect(CONNECT_TIMEOUT).await {
            Ok(conn) => return (index, conn),
            Err(error) => {
                debug!(server = %connector.describe(), %error, "server not reachable; trying again")
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Frames the client accepts from a server through a CURVE bridge: the broker's limits.
fn frame_limits() -> FrameLimits {
    FrameLimits::from(&majordomo_proto::Limits::default())
}

/// The next message on any connected server's connection, with the server's index; `None`
/// with nothing connected.
#[allow(clippy::type_complexity)]
fn next_any<C: Connector>(
    slots: &mut [Slot<C>],
) -> Option<BoxFuture<'_, (usize, Result<Vec<Bytes>, TransportError>)>>
where
    C::Conn: 'static,
{
    let receiving: Vec<_> = slots
        .iter_mut()
        .enumerate()
        .filter_map(|(i, slot)| slot.conn.as_mut().map(|c| (i, c)))
        .map(|(i, conn)| async move { (i, Transport::recv(conn).await) }.boxed())
        .collect();
    if receiving.is_empty() {
        return None;
    }
    Some(select_all(receiving).map(|(out, _, _)| out).boxed())
}

async fn run<C: Connector + 'static>(
    servers: Vec<(Bytes, C)>,
    config: FreelanceConfig,
    mut commands: mpsc::Receiver<Command>,
) where
    C::Conn: 'static,
{
    let now = clock::now();
    let identities: Vec<Bytes> = servers.iter().map(|(id, _)| id.clone()).collect();
    let mut core = FreelanceCore::new(now, config, identities);
    let mut slots: Vec<Slot<C>> = servers
        .into_iter()
        .map(|(identity, connector)| Slot {
            identity,
            connector: Arc::new(connector),
            conn: None,
            connecting: false,
        })
        .collect();
    let mut connects = JoinSet::new();
    let mut waiters = std::collections::HashMap::new();
    loop {
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.conn.is_none() && !slot.connecting {
                slot.connecting = true;
                connects.spawn(connect(i, slot.connector.clone(), config.ping_interval));
            }
        }
        let now = clock::now();
        while let Some((to, frames)) = core.poll_transmit() {
            let Some(slot) = slots.iter_mut().find(|s| s.identity == to) else {
                continue;
            };
            let Some(conn) = slot.conn.as_mut() else {
                // Not connected: the core moves the request on when the attempt times out.
                continue;
            };
            if let Err(error) = conn.send(frames).await {
                // zmq.rs's ROUTER refuses a send to a peer it no longer has: the server is
                // gone, and the connection is made anew (zmq.rs does not reconnect).
                info!(server = %slot.connector.describe(), %error, "server connection lost");
                slot.conn = None;
                core.handle_server_lost(now, &to);
            }
        }
        while let Some(FreelanceEvent::Done { id, result }) = core.poll_event() {
            if let Some(waiter) = waiters.remove(&id) {
                let _: Result<(), _> = oneshot::Sender::send(waiter, result);
            }
        }
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        let received = next_any(&mut slots);
        let has_receive = received.is_some();
        let received = async move {
            match received {
                Some(future) => future.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Cancel-safe: every connection's recv is (zmq.rs's, a channel's).
            (index, message) = received, if has_receive => {
                let now = clock::now();
                match message {
                    Ok(frames) if !frames.is_empty() => {
                        let identity = slots[index].identity.clone();
                        core.handle_message(now, &identity, frames);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        info!(server = %slots[index].connector.describe(), %error, "server connection closed");
                        slots[index].conn = None;
                        let identity = slots[index].identity.clone();
                        core.handle_server_lost(now, &identity);
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::Request(body, reply)) => {
                    let id = core.request(clock::now(), body);
                    waiters.insert(id, reply);
                }
                Some(Command::Stats(reply)) => {
                    let _ = reply.send(core.stats(clock::now()));
                }
                None => return,
            },
            // join_next is cancel-safe: a finished connect stays in the set.
            Some(Ok((index, conn))) = connects.join_next(), if !connects.is_empty() => {
                debug!(server = %slots[index].connector.describe(), "connected");
                slots[index].conn = Some(conn);
                slots[index].connecting = false;
                let identity = slots[index].identity.clone();
                core.handle_server_connected(clock::now(), &identity);
            }
            () = tokio::time::sleep_until(deadline) => {
                // Callers that went away: their requests are forgotten before any is sent again
                // (a late reply then is stale). Looked for at deadlines only, where requests
                // move on, not at every message.
                waiters.retain(|&id, waiter: &mut oneshot::Sender<_>| {
                    let open = !waiter.is_closed();
                    if !open {
                        core.cancel(id);
                    }
                    open
                });
                core.handle_timeout(clock::now());
            }
        }
    }
}
