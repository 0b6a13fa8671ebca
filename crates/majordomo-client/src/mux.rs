//! [`MuxClient`]: many requests on one connection, each tagged with a frame of its own.
//!
//! 7/MDP has no request id, so [`Client`] keeps one connection per request in flight. A broker
//! that routes extended reply envelopes (ours: `mmi.envelope` answers `200`) returns a client's
//! frames before the empty delimiter before every reply, so a request sent as
//! `[tag, empty, MDPC01, service, body...]` comes back as `[tag, empty, MDPC01, service,
//! reply...]`: one connection carries any number of requests, and each reply finds its request
//! by its tag, in any order.
//!
//! One task owns the connection and every request under way; [`MuxClient`] handles (cheap
//! clones) send it requests over a channel and wait for their answers. On each new connection
//! it asks `mmi.envelope` first, untagged, because a broker that does not route extended
//! envelopes must never be sent one (the Guide's Python broker asserts on it): a broker that
//! answers anything but `200`, or nothing within the timeout, is served through a [`Client`]
//! and its pool of connections instead, for the life of the `MuxClient`.
//!
//! Each request follows the Lazy Pirate strategy of [`Client`]: no reply within
//! [`ClientConfig::timeout`] and it is sent again, with a new tag, up to
//! [`ClientConfig::attempts`] times. A reply to an old tag is stale: dropped, counted in
//! [`MuxStats::stale`], never delivered, so a caller gets at most one reply. A connection on
//! which nothing arrived for a whole timeout while a request waited on it is taken as dead,
//! closed and replaced.
//!
//! Requests are sent in 7/MDP (v0.1) form whatever [`ClientConfig::version`] says; a client
//! configured for 18/MDP is served by the pool.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use bytes::Bytes;
use majordomo_proto::mdp::{ClientReply, ClientRequest};
use majordomo_proto::mmi;
use majordomo_rt::clock;
use majordomo_rt::transport::{Connector, DealerConnector, Transport};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::{Client, ClientConfig, ClientError, Version};

/// Requests a [`MuxClient`]'s task holds in its channel before callers wait to hand theirs.
const CHANNEL: usize = 1024;

/// What a [`MuxClient`]'s task has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MuxStats {
    /// Connections opened (each asked `mmi.envelope`).
    pub connections: u64,
    /// Requests sent, each attempt counted.
    pub sent: u64,
    /// Replies delivered to their callers.
    pub replies: u64,
    /// Replies to a tag no request holds any more (answered late, after a retry): dropped.
    pub stale: u64,
    /// Requests under way now.
    pub in_flight: usize,
    /// Whether the broker routes tagged requests; `None` until a connection has asked.
    pub multiplexed: Option<bool>,
}

/// A request's answer from the task.
enum Answer {
    Reply(Result<Vec<Bytes>, ClientError>),
    /// The broker does not route extended envelopes: the caller uses the pool.
    Unsupported(Bytes, Vec<Bytes>),
}

enum Command {
    Request {
        service: Bytes,
        body: Vec<Bytes>,
        answer: oneshot::Sender<Answer>,
    },
    Stats(oneshot::Sender<MuxStats>),
}

/// A 7/MDP client that multiplexes its requests on one connection to the broker (see the
/// module docs); clones share the connection. Made inside a tokio runtime: it spawns the task
/// that owns the connection, which ends when the last clone is dropped.
pub struct MuxClient<C: Connector + Clone = DealerConnector> {
    commands: mpsc::Sender<Command>,
    pool: Client<C>,
}

impl<C: Connector + Clone> Clone for MuxClient<C> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<C: Connector + Clone> std::fmt::Debug for MuxClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl MuxClient {
    /// A client for the broker at `endpoint`. Nothing connects until the first request.
    pub fn new(endpoint: impl Into<String>, config: ClientConfig) -> Self {
        Self::with_connector(DealerConnector::new(endpoint), config)
    }
}

impl<C: Connector + Clone + 'static> MuxClient<C> {
    /// A client whose connection (and pool, if the broker does not multiplex) opens through
    /// `connector`.
    pub fn with_connector(connector: C, config: ClientConfig) -> Self {
        let (commands, receiver) = mpsc::channel(CHANNEL);
        let pool = Client::with_connector(connector.clone(), config);
        let task = Task {
            connector,
            config,
            commands: receiver,
            conn: None,
            supported: (config.version != Version::V01).then_some(false),
            next_tag: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            stats: MuxStats::default(),
        };
        tokio::spawn(task.run());
        Self { commands, pool }
    }
}

impl<C: Connector + Clone> MuxClient<C> {
    /// Sends `body` to `service` and waits for the reply body, retried per [`ClientConfig`]
    /// with a new tag each time; through the pool if the broker does not multiplex.
    pub async fn request(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, ClientError> {
        let service = service.into();
        let (answer, answered) = oneshot::channel();
        let command = Command::Request {
            service: service.clone(),
            body,
            answer,
        };
        if self.commands.send(command).await.is_err() {
            return Err(ClientError::Transport(
                majordomo_rt::transport::TransportError::Closed,
            ));
        }
        match answered.await {
            Ok(Answer::Reply(result)) => result,
            Ok(Answer::Unsupported(service, body)) => self.pool.request(service, body).await,
            Err(_) => Err(ClientError::Transport(
                majordomo_rt::transport::TransportError::Closed,
            )),
        }
    }

    /// What the task has seen so far.
    pub async fn stats(&self) -> MuxStats {
        let (answer, answered) = oneshot::channel();
        if self.commands.send(Command::Stats(answer)).await.is_err() {
            return MuxStats::default();
        }
        answered.await.unwrap_or_default()
    }
}

/// A request under way.
struct Pending {
    service: Bytes,
    body: Vec<Bytes>,
    answer: oneshot::Sender<Answer>,
    /// Attempts left after this one.
    left: u32,
    deadline: Instant,
    /// When it was last sent.
    sent_at: Instant,
}

/// The connection, and when something last arrived on it.
struct Conn<T> {
    socket: T,
    heard: Instant,
}

struct Task<C: Connector> {
    connector: C,
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    conn: Option<Conn<C::Conn>>,
    /// Whether the broker routes tagged requests; `None` until asked.
    supported: Option<bool>,
    next_tag: u64,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    stats: MuxStats,
}

impl<C: Connector> Task<C> {
    async fn run(mut self) {
        loop {
            let next = self.deadlines.first().map(|(at, _)| *at);
            let conn = self.conn.as_mut().map(|c| &mut c.socket);
            tokio::select! {
                // mpsc's recv is cancel-safe.
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    // Every handle is gone, and with it every caller.
                    None => return,
                },
                // Cancel-safe (the Transport contract).
                frames = async { conn.expect("guarded").recv().await }, if conn.is_some() => {
                    match frames {
                        Ok(frames) => self.on_frames(frames),
                        Err(error) => {
                            debug!(%error, "connection to the broker failed; a new one opens at the next attempt");
                            self.conn = None;
                        }
                    }
                }
                () = tokio::time::sleep_until(next.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if next.is_some() => {
                    self.on_timeout(clock::now()).await;
                }
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Stats(answer) => {
                let mut stats = self.stats;
                stats.in_flight = self.pending.len();
                stats.multiplexed = self.supported;
                let _ = answer.send(stats);
            }
            Command::Request {
                service,
                body,
                answer,
            } => {
                if self.supported == Some(false) {
                    let _ = answer.send(Answer::Unsupported(service, body));
                    return;
                }
                let now = clock::now();
                let pending = Pending {
                    service,
                    body,
                    answer,
                    left: self.config.attempts.saturating_sub(1),
                    deadline: now,
                    sent_at: now,
                };
                self.send(now, pending).await;
            }
        }
    }

    /// Sends `pending` under a new tag (connecting first if need be), or hands it to the pool
    /// if the broker turns out not to multiplex.
    async fn send(&mut self, now: Instant, mut pending: Pending) {
        if self.conn.is_none() {
            self.connect().await;
        }
        if self.supported == Some(false) {
            let _ = pending
                .answer
                .send(Answer::Unsupported(pending.service, pending.body));
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let now = clock::now().max(now);
        pending.deadline = now + self.config.timeout;
        pending.sent_at = now;
        if let Some(conn) = &mut self.conn {
            let mut frames = vec![Bytes::copy_from_slice(&tag.to_be_bytes())];
            frames
                .extend(ClientRequest::new(pending.service.clone(), pending.body.clone()).encode());
            self.stats.sent += 1;
            if let Err(error) = conn.socket.send(frames).await {
                debug!(%error, "send to the broker failed; a new connection opens at the next attempt");
                self.conn = None;
            }
        }
        // Unsent (no connection): retried at its deadline like a lost one.
        self.deadlines.insert((pending.deadline, tag));
        self.pending.insert(tag, pending);
    }

    /// Opens a connection and asks it `mmi.envelope`, untagged.
    async fn connect(&mut self) {
        let timeout = self.config.timeout;
        let mut socket = match self.connector.connect(timeout).await {
            Ok(socket) => socket,
            Err(error) => {
                debug!(%error, "cannot connect to the broker");
                return;
            }
        };
        self.stats.connections += 1;
        let probe = ClientRequest::new(Bytes::from_static(mmi::ENVELOPE), vec![]).encode();
        if socket.send(probe).await.is_err() {
            return;
        }
        // On a new connection only the probe's answer can come.
        let answer = match tokio::time::timeout(timeout, socket.recv()).await {
            Ok(Ok(frames)) => ClientReply::decode(&frames, &self.config.limits).ok(),
            Ok(Err(_)) => return,
            Err(_) => None,
        };
        let supported = answer.is_some_and(|reply| {
            reply.service.as_ref() == mmi::ENVELOPE
                && reply.body.first().is_some_and(|s| s.as_ref() == mmi::OK)
        });
        if !supported {
            warn!("the broker does not route tagged requests (mmi.envelope): one connection per request instead");
            self.supported = Some(false);
            return;
        }
        self.supported = Some(true);
        self.conn = Some(Conn {
            socket,
            heard: clock::now(),
        });
    }

    fn on_frames(&mut self, frames: Vec<Bytes>) {
        let now = clock::now();
        if let Some(conn) = &mut self.conn {
            conn.heard = now;
        }
        let tag = frames
            .first()
            .and_then(|f| <[u8; 8]>::try_from(f.as_ref()).ok())
            .map(u64::from_be_bytes);
        let Some(pending) = tag.and_then(|tag| self.pending.remove(&tag)) else {
            self.stats.stale += 1;
            return;
        };
        self.deadlines
            .remove(&(pending.deadline, tag.expect("found")));
        let result = match ClientReply::decode(&frames[1..], &self.config.limits) {
            Ok(reply) if reply.service == pending.service => Ok(reply.body),
            Ok(reply) => Err(ClientError::WrongService {
                expected: pending.service,
                got: reply.service,
            }),
            Err(error) => Err(ClientError::Malformed(error)),
        };
        self.stats.replies += u64::from(result.is_ok());
        let _ = pending.answer.send(Answer::Reply(result));
    }

    /// Requests past their deadline: sent again under a new tag, or failed.
    async fn on_timeout(&mut self, now: Instant) {
        while let Some(&(at, tag)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(mut pending) = self.pending.remove(&tag) else {
                continue;
            };
            if pending.answer.is_closed() {
                continue;
            }
            if pending.left == 0 {
                let result = Err(ClientError::NoReply {
                    attempts: self.config.attempts,
                    service: pending.service,
                    body: pending.body,
                });
                let _ = pending.answer.send(Answer::Reply(result));
                continue;
            }
            pending.left -= 1;
            // Nothing heard since this request went: the connection is taken as dead.
            if self
                .conn
                .as_ref()
                .is_some_and(|c| c.heard < pending.sent_at)
            {
                debug!("no message from the broker for a whole timeout: reconnecting");
                self.conn = None;
            }
            self.send(now, pending).await;
        }
    }
}
