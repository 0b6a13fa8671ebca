//! [`FreelanceServer`]: a ROUTER with the server's public endpoint as its identity, answering
//! PING with PONG and each request with its control frame and the handler's reply.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use majordomo_proto::freelance::{PING, PONG};
use majordomo_rt::transport::{BindError, Transport, TransportError, ZmqRouter};
use majordomo_worker::Handler;
use majordomo_zmtp::GuardConfig;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

/// Requests handled at once, by default.
const CONCURRENCY: usize = 64;

/// Why a server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreelanceServerError {
    /// The endpoint could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The socket failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What a server has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// PINGs answered.
    pub pings: u64,
    /// Requests answered.
    pub replies: u64,
    /// Requests whose handler failed (no reply: the client moves on to another server).
    pub failed: u64,
    /// Messages that were neither a PING nor a request.
    pub malformed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    pings: AtomicU64,
    replies: AtomicU64,
    failed: AtomicU64,
    malformed: AtomicU64,
}

/// A Freelance server; see the crate documentation. Over zmq.rs by default
/// ([`FreelanceServer::bind`]); over any ROUTER-like transport with
/// [`FreelanceServer::with_transport`].
pub struct FreelanceServer<T: Transport = ZmqRouter> {
    socket: T,
    endpoint: String,
    concurrency: usize,
    counters: Arc<Counters>,
}

impl<T: Transport> std::fmt::Debug for FreelanceServer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreelanceServer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl FreelanceServer {
    /// Binds `endpoint`, which is also the identity clients address it by; behind the ZMTP
    /// guard with `guard`'s limits (relaying, or as the front end with CURVE, which then
    /// announces the identity).
    ///
    /// Dropping the future before it completes drops the socket; nothing has been served.
    pub async fn bind(
        endpoint: &str,
        guard: Option<GuardConfig>,
    ) -> Result<Self, FreelanceServerError> {
        Self::bind_as(endpoint, endpoint, guard).await
    }

    /// Binds `endpoint` and announces `identity`, the public endpoint clients connect to (RFC
    /// 10: "Server identities are their public endpoints"), when the two differ (a server
    /// bound to `tcp://*:5555` known as `tcp://host.example:5555`).
    ///
    /// Dropping the future before it completes drops the socket; nothing has been served.
    pub async fn bind_as(
        endpoint: &str,
        identity: &str,
        guard: Option<GuardConfig>,
    ) -> Result<Self, FreelanceServerError> {
        let identity = Bytes::copy_from_slice(identity.as_bytes());
        let mut socket = ZmqRouter::with_identity(identity.clone())?;
        // The front end announces the identity itself; relayed, the socket's own READY
        // carries it.
        let guard = guard.map(|g| g.identity(identity.clone()));
        let endpoint = socket.bind_guarded(endpoint, guard.as_ref()).await?;
        info!(%endpoint, identity = %String::from_utf8_lossy(&identity), "freelance server bound");
        Ok(Self {
            socket,
            endpoint,
            concurrency: CONCURRENCY,
            counters: Arc::default(),
        })
    }
}

impl<T: Transport> FreelanceServer<T> {
    /// A server on `socket`, a ROUTER-like transport whose messages start with the client's
    /// identity (`majordomo_rt::memory`'s router, in tests); `label` names it in logs.
    pub fn with_transport(socket: T, label: impl Into<String>) -> Self {
        Self {
            socket,
            endpoint: label.into(),
            concurrency: CONCURRENCY,
            counters: Arc::default(),
        }
    }

    /// Handles at most `n` requests at once (default 64); more wait in the socket.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The endpoint bound, with an ephemeral port resolved.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A reader of the server's counters, for while it runs.
    pub fn stats_handle(&self) -> impl Fn() -> ServerStats + Send + Sync + 'static {
        let counters = self.counters.clone();
        move || ServerStats {
            pings: counters.pings.load(Ordering::Relaxed),
            replies: counters.replies.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            malformed: counters.malformed.load(Ordering::Relaxed),
        }
    }

    /// Serves with `handler` until `shutdown` completes; returns the final counters. Handlers
    /// still running then finish in their own tasks, and their replies are dropped.
    ///
    /// Dropping the future stops the server as `shutdown` does, except that the socket is not
    /// closed first (an `ipc://` socket file is left behind): prefer `shutdown`.
    pub async fn run(
        mut self,
        handler: impl Handler,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ServerStats, FreelanceServerError> {
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let (done, mut replies) = mpsc::unbounded_channel::<Vec<Bytes>>();
        let stats = self.stats_handle();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // recv is cancel-safe: a message not taken stays queued.
                message = self.socket.recv() => {
                    let mut frames = message?;
                    // [client, PING] or [client, control, body...].
                    if frames.len() == 2 && frames[1][..] == *PING {
                        self.counters.pings.fetch_add(1, Ordering::Relaxed);
                        let pong = vec![frames.swap_remove(0), Bytes::from_static(PONG)];
                        self.send(pong).await;
                        continue;
                    }
                    if frames.len() < 3 {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        debug!(frames = frames.len(), "neither a PING nor a request, dropped");
                        continue;
                    }
                    let body = frames.split_off(2);
                    let envelope = frames; // [client, control]
                    let permit = permits.clone().acquire_owned().await;
                    let (handler, done) = (handler.clone(), done.clone());
                    let counters = self.counters.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        match handler.handle(body).await {
                            Ok(reply) if !reply.is_empty() => {
                                let mut message = envelope;
                                message.extend(reply);
                                let _ = done.send(message);
                            }
                            Ok(_) => {
                                // RFC 10: the CCF is "followed by one or more frames of reply".
                                let mut message = envelope;
                                message.push(Bytes::new());
                                let _ = done.send(message);
                            }
                            Err(error) => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                warn!(%error, "handler failed; no reply");
                            }
                        }
                    });
                }
                // recv is cancel-safe.
                Some(reply) = replies.recv() => {
                    self.counters.replies.fetch_add(1, Ordering::Relaxed);
                    self.send(reply).await;
                }
            }
        }
        self.socket.close().await;
        Ok(stats())
    }

    async fn send(&mut self, message: Vec<Bytes>) {
        // A client gone since it asked: zmq.rs's ROUTER refuses the send, and the reply is
        // dropped as libzmq's ROUTER drops it.
        if let Err(error) = self.socket.send(message).await {
            debug!(%error, "reply to a client that is gone, dropped");
        }
    }
}
