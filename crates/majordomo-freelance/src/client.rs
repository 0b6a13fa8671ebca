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
    connect_router, CurveKeyPair, CurvePublicKey, FrameLimits, Transport, TransportError,
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
        config.validate()?;
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() {
            return Err(FreelanceClientError::NoServers);
        }
        let mut bridges = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            bridges.push(match &curve {
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
            });
        }
        let (commands, queue) = mpsc::channel(1024);
        let span = tracing::info_span!("freelance", servers = endpoints.len());
        tokio::spawn(run(endpoints, bridges, config, queue).instrument(span));
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

    /// What the client has seen: replies, failovers, stale replies, servers alive.
    pub async fn stats(&self) -> Result<FreelanceStats, FreelanceClientError> {
        let (reply, replied) = oneshot::channel();
        self.commands
            .send(Command::Stats(reply))
            .await
            .map_err(|_| FreelanceClientError::Stopped)?;
        replied.await.map_err(|_| FreelanceClientError::Stopped)
    }
}

/// One server: its endpoint (and identity), and its socket once connected, with the socket's
/// monitor, which tells at once when the connection closes (zmq.rs does not reconnect: the
/// socket is then made anew).
struct Slot {
    endpoint: String,
    /// With CURVE, the bridge the socket connects through.
    bridge: Option<Arc<CurveOutbound>>,
    identity: Bytes,
    socket: Option<(RouterSocket, Monitor)>,
    connecting: bool,
}

type Monitor = futures::channel::mpsc::Receiver<SocketEvent>;

/// Connects to `endpoint` (through `bridge` with CURVE), again and again every `retry` while
/// the server is down.
async fn connect(
    index: usize,
    endpoint: String,
    bridge: Option<Arc<CurveOutbound>>,
    retry: Duration,
) -> (usize, RouterSocket) {
    loop {
        let target = match &bridge {
            None => Ok(endpoint.clone()),
            Some(bridge) => bridge.local_endpoint().await,
        };
        match target {
            Ok(target) => match connect_router(&target, CONNECT_TIMEOUT).await {
                Ok(socket) => return (index, socket),
                Err(error) => debug!(%endpoint, %error, "server not reachable; trying again"),
            },
            Err(error) => debug!(%endpoint, %error, "CURVE bridge cannot listen; trying again"),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Frames the client accepts from a server through a CURVE bridge: the broker's limits.
fn frame_limits() -> FrameLimits {
    let limits = majordomo_proto::Limits::default();
    FrameLimits {
        max_frame: limits.max_message_size as u64,
        max_message: limits.max_message_size as u64,
        max_frames: u32::try_from(limits.max_frames).unwrap_or(u32::MAX),
    }
}

/// What one server's socket gave.
enum SlotEvent {
    /// A message, or the socket's failure.
    Message(Result<Vec<Bytes>, TransportError>),
    /// The monitor saw the connection close.
    Closed,
}

/// The next message on any connected server's socket, or the first connection closed, with
/// the server's index; `None` with no socket connected.
fn next_any(slots: &mut [Slot]) -> Option<BoxFuture<'_, (usize, SlotEvent)>> {
    let watching: Vec<_> = slots
        .iter_mut()
        .enumerate()
        .filter_map(|(i, slot)| slot.socket.as_mut().map(|(s, m)| (i, s, m)))
        .map(|(i, socket, monitor)| {
            async move {
                let closed = async {
                    loop {
                        match monitor.next().await {
                            Some(SocketEvent::Disconnected(_)) | None => return,
                            Some(_) => {}
                        }
                    }
                };
                // Both are cancel-safe: zmq.rs's recv, and a channel's next.
                tokio::select! {
                    message = Transport::recv(socket) => (i, SlotEvent::Message(message)),
                    () = closed => (i, SlotEvent::Closed),
                }
            }
            .boxed()
        })
        .collect();
    if watching.is_empty() {
        return None;
    }
    Some(select_all(watching).map(|(out, _, _)| out).boxed())
}

async fn run(
    endpoints: Vec<String>,
    bridges: Vec<Option<Arc<CurveOutbound>>>,
    config: FreelanceConfig,
    mut commands: mpsc::Receiver<Command>,
) {
    let now = clock::now();
    let identities: Vec<Bytes> = endpoints.iter().map(|e| Bytes::from(e.clone())).collect();
    let mut core = FreelanceCore::new(now, config, identities.clone());
    let mut slots: Vec<Slot> = endpoints
        .into_iter()
        .zip(identities)
        .zip(bridges)
        .map(|((endpoint, identity), bridge)| Slot {
            endpoint,
            bridge,
            identity,
            socket: None,
            connecting: false,
        })
        .collect();
    let mut connects = JoinSet::new();
    let mut waiters = std::collections::HashMap::new();
    loop {
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.socket.is_none() && !slot.connecting {
                slot.connecting = true;
                connects.spawn(connect(
                    i,
                    slot.endpoint.clone(),
                    slot.bridge.clone(),
                    config.ping_interval,
                ));
            }
        }
        let now = clock::now();
        while let Some((to, frames)) = core.poll_transmit() {
            let Some(slot) = slots.iter_mut().find(|s| s.identity == to) else {
                continue;
            };
            let Some((socket, _)) = slot.socket.as_mut() else {
                // Not connected: the core moves the request on when the attempt times out.
                continue;
            };
            let mut message = Vec::with_capacity(frames.len() + 1);
            message.push(to.clone());
            message.extend(frames);
            if let Err(error) = Transport::send(socket, message).await {
                // zmq.rs's ROUTER refuses a send to a peer it no longer has: the server is
                // gone, and the socket is remade (zmq.rs does not reconnect).
                info!(server = %slot.endpoint, %error, "server connection lost");
                slot.socket = None;
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
            // recv is cancel-safe (zmq.rs's recv is): a message not taken stays queued.
            (index, event) = received, if has_receive => {
                let now = clock::now();
                match event {
                    SlotEvent::Message(Ok(mut frames)) if frames.len() >= 2 => {
                        let identity = frames.remove(0);
                        core.handle_message(now, &identity, frames);
                    }
                    SlotEvent::Message(Ok(_)) => {}
                    SlotEvent::Message(Err(_)) | SlotEvent::Closed => {
                        info!(server = %slots[index].endpoint, "server connection closed");
                        slots[index].socket = None;
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
            Some(Ok((index, mut socket))) = connects.join_next(), if !connects.is_empty() => {
                debug!(server = %slots[index].endpoint, "connected");
                let monitor = socket.monitor();
                slots[index].socket = Some((socket, monitor));
                slots[index].connecting = false;
                let identity = slots[index].identity.clone();
                core.handle_server_connected(clock::now(), &identity);
            }
            () = tokio::time::sleep_until(deadline) => core.handle_timeout(clock::now()),
        }
        // Callers that went away: their requests are forgotten, a late reply then is stale.
        waiters.retain(|&id, waiter: &mut oneshot::Sender<_>| {
            let open = !waiter.is_closed();
            if !open {
                core.cancel(id);
            }
            open
        });
    }
}
