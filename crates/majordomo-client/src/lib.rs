//! Majordomo clients for tokio applications, in 7/MDP (v0.1, the default) or 18/MDP (v0.2, in
//! RFC 18's or majortomo's dialect; [`ClientConfig::version`]).
//!
//! - [`Client`]: `request(service, body)` with the Lazy Pirate strategy of 7/MDP built in: "If
//!   there is no reply within some timeout, ... close the request socket and open a new socket,
//!   and resend the request on that new socket. If there is no reply after several retries, ...
//!   signal the transaction as failed." A `Client` is a cheap clone; many tasks may call it at
//!   once and each gets exactly its own reply.
//! - [`Client::request_stream`]: the reply part by part as it arrives (18/MDP's PARTIALs then
//!   its FINAL), retried only until the first part.
//! - [`AsyncClient`]: the Guide's asynchronous Majordomo client (mdcliapi2): send many requests
//!   without waiting, receive the replies as they come.
//!
//! # Correlation without a request id
//! 7/MDP carries no request id, so a reply can only be matched to its request by the connection it
//! arrives on. [`Client`] therefore keeps one DEALER socket per request in flight, from a pool: a
//! socket carries one request at a time, and a socket whose request timed out is closed, never
//! reused, so a late reply can never be taken for the answer to a later request. The wire format is
//! plain 7/MDP and any broker serves it.
//!
//! # Layout
//! - [`Client`], [`ClientConfig`]: synchronous-style calls with retries.
//! - [`AsyncClient`]: pipelined requests on one socket.
//! - [`ClientError`]: what a call can fail with.
#![warn(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use majordomo_proto::client::{Call, CallError, CallEvent};
use majordomo_proto::mdp::{ClientReply, ClientRequest};
use majordomo_proto::mdp2;
pub use majordomo_proto::mdp2::{Dialect, Version};
use majordomo_proto::{DecodeError, Hex, Limits};
use majordomo_rt::clock;
use majordomo_rt::transport::{connect_dealer, Transport, TransportError};
use tracing::{debug, info_span, warn, Instrument};
use zeromq::DealerSocket;

/// Timeouts, retries and limits of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long to wait for each reply before giving up on that attempt (default 2500 ms). The
    /// connection is made within the same budget.
    pub timeout: Duration,
    /// How many attempts in all before [`ClientError::NoReply`] (default 3, the Guide's
    /// `REQUEST_RETRIES`: the request is sent, then resent twice on fresh sockets). Zero is
    /// treated as one.
    pub attempts: u32,
    /// Size limits applied to replies.
    pub limits: Limits,
    /// Most idle connections a [`Client`] keeps for later requests (default 64). A request
    /// takes an idle connection or opens one; when it is answered, its connection goes back to
    /// the pool unless the pool is full, in which case it is closed. So the pool grows to the
    /// most requests ever in flight at once, bounded by this.
    pub max_idle_connections: usize,
    /// The MDP the requests are in (default [`Version::V01`], 7/MDP). With
    /// `Version::V02(dialect)` they are 18/MDP in RFC 18's or majortomo's dialect, and
    /// [`Client::request`] returns the reply's parts gathered: every PARTIAL's frames, then the
    /// FINAL's. The timeout then runs from the request or from the last part, and an attempt
    /// that times out after some parts is retried whole (the parts it had are dropped);
    /// [`Client::request_stream`] yields the parts instead, and is not retried after one.
    pub version: Version,
}

impl ClientConfig {
    /// Sets `version`; the field says what it means and its default.
    pub fn version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Sets `timeout`; the field says what it means and its default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `attempts`; the field says what it means and its default.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets `limits`; the field says what it means and its default.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets `max_idle_connections`; the field says what it means and its default.
    pub fn max_idle_connections(mut self, max_idle_connections: usize) -> Self {
        self.max_idle_connections = max_idle_connections;
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(2500),
            attempts: 3,
            limits: Limits::default(),
            max_idle_connections: 64,
            version: Version::V01,
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No reply arrived after every attempt ([`ClientConfig::attempts`] attempts of
    /// [`ClientConfig::timeout`] each): the broker is down, or no worker served the request in
    /// time. The request is handed back.
    #[error("no reply from the broker after {attempts} attempts; is it running?")]
    NoReply {
        /// Attempts made.
        attempts: u32,
        /// The service the request was for.
        service: Bytes,
        /// The request body, for the caller to retry or report.
        body: Vec<Bytes>,
    },
    /// The broker answered with something that is not a 7/MDP client REPLY.
    #[error("malformed reply: {0}")]
    Malformed(#[from] DecodeError),
    /// The reply names another service than the request was sent to.
    #[error("reply for service {got:?} to a request for {expected:?}")]
    WrongService {
        /// The service asked.
        expected: Bytes,
        /// The service the reply named.
        got: Bytes,
    },
    /// The service name is empty or too long; nothing was sent.
    #[error("invalid service name: {0}")]
    InvalidService(DecodeError),
    /// A streamed reply ([`Client::request_stream`]) stopped after some parts: no next part
    /// within the timeout, or the connection failed. Not retried, since a retry would repeat
    /// the parts.
    #[error("the reply from {service:?} stopped after {parts} parts")]
    Interrupted {
        /// Parts received.
        parts: u32,
        /// The service the request was for.
        service: Bytes,
    },
    /// [`AsyncClient::recv`] waited [`ClientConfig::timeout`] and no reply came.
    #[error("no reply within the timeout")]
    Timeout,
    /// The transport failed in a way a retry cannot fix.
    #[error("transport error: {0}")]
    Transport(#[from] TransportError),
}

/// A 7/MDP client. Clone it freely: clones share one pool of connections.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: String,
    config: ClientConfig,
    /// Idle sockets, each with no request outstanding.
    pool: Mutex<Vec<PooledSocket>>,
}

struct PooledSocket(DealerSocket);

impl std::fmt::Debug for PooledSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DealerSocket")
    }
}

/// Opens a DEALER socket connected to `endpoint`, waiting at most `timeout`.
async fn connect(endpoint: &str, timeout: Duration) -> Result<DealerSocket, ClientError> {
    Ok(connect_dealer(endpoint, timeout).await?)
}

impl Client {
    /// A client for the broker at `endpoint`. Nothing connects until the first request.
    pub fn new(endpoint: impl Into<String>, config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint: endpoint.into(),
                config,
                pool: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends `body` to `service` and waits for the reply body, retrying on fresh connections per
    /// [`ClientConfig`]. A reply for another service or a malformed reply is an error, never
    /// taken for the answer.
    pub async fn request(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, ClientError> {
        let service = service.into();
        // Every event of the request (retries, connection failures) carries its service and
        // broker.
        let span = info_span!("request", service = %Hex(&service), broker = %self.inner.endpoint);
        self.call(service, body).instrument(span).await
    }

    /// Sends `body` to `service` and yields the reply part by part as it arrives: every
    /// PARTIAL, then the FINAL (with [`Part::last`] set), after which the stream ends. Over
    /// 7/MDP ([`Version::V01`]) the one REPLY is the one part.
    ///
    /// The timeout runs per part. Until the first part arrives, an attempt that times out or
    /// loses its connection is retried on a fresh connection as [`Client::request`] does. Once
    /// a part has arrived it is not: a new attempt would run the request again and yield its
    /// parts twice, so the stream ends with [`ClientError::Interrupted`] instead, and the caller
    /// decides whether to ask again.
    pub fn request_stream(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> impl Stream<Item = Result<Part, ClientError>> + Send + 'static {
        let service = service.into();
        let span = info_span!("request", service = %Hex(&service), broker = %self.inner.endpoint);
        let start = self.exchange(service, body, true);
        futures::stream::unfold(Some((self.clone(), start)), move |state| {
            let span = span.clone();
            async move {
                let (client, exchange) = state?;
                let mut exchange = match exchange {
                    Ok(exchange) => exchange,
                    Err(error) => return Some((Err(error), None)),
                };
                match client.step(&mut exchange).instrument(span).await {
                    Step::Part(body) => {
                        Some((Ok(Part { body, last: false }), Some((client, Ok(exchange)))))
                    }
                    Step::Done(Ok(body)) => Some((Ok(Part { body, last: true }), None)),
                    Step::Done(Err(error)) => Some((Err(error), None)),
                }
            }
        })
    }

    async fn call(&self, service: Bytes, body: Vec<Bytes>) -> Result<Vec<Bytes>, ClientError> {
        let mut exchange = self.exchange(service, body, false)?;
        loop {
            match self.step(&mut exchange).await {
                // Not streamed: parts are gathered by the call.
                Step::Part(_) => continue,
                Step::Done(result) => return result,
            }
        }
    }

    /// A call under way, with an idle connection from the pool if there is one.
    fn exchange(
        &self,
        service: Bytes,
        body: Vec<Bytes>,
        streamed: bool,
    ) -> Result<Exchange, ClientError> {
        let config = &self.inner.config;
        let now = clock::now();
        let (timeout, attempts, limits) = (config.timeout, config.attempts, config.limits);
        let version = config.version;
        let call = Call::with_version(
            now,
            service.clone(),
            body,
            timeout,
            attempts,
            limits,
            version,
        )
        // Streaming changes only 18/MDP calls.
        .map(|call| if streamed { call.streamed() } else { call })
        .map_err(ClientError::InvalidService)?;
        let socket = self
            .inner
            .pool
            .lock()
            .expect("pool lock")
            .pop()
            .map(|p| p.0);
        Ok(Exchange {
            call,
            service,
            socket,
            send: true,
        })
    }

    /// Drives `exchange` to its next part or its end.
    async fn step(&self, exchange: &mut Exchange) -> Step {
        let config = &self.inner.config;
        let Exchange {
            call,
            service,
            socket,
            send,
        } = exchange;
        loop {
            let deadline = call
                .poll_timeout()
                .expect("a call under way has a deadline");
            // One attempt: connect if needed, send, and wait for a message, all within the
            // attempt's deadline.
            let attempt =
                tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), async {
                    if socket.is_none() {
                        *socket = Some(connect(&self.inner.endpoint, config.timeout).await?);
                    }
                    let s = socket.as_mut().expect("connected above");
                    if *send {
                        s.send(call.request().to_vec()).await?;
                        // Not again on this connection, whatever comes.
                        *send = false;
                    }
                    Ok::<_, ClientError>(s.recv().await?)
                })
                .await;
            let event = match attempt {
                Ok(Ok(frames)) => match call.handle_part(clock::now(), &frames) {
                    Some(event) => Some(event),
                    // A PARTIAL gathered: wait for the next part on the same connection.
                    None => continue,
                },
                Ok(Err(error)) => {
                    debug!(attempt = call.attempt(), %error, "connection failed");
                    *socket = None;
                    call.handle_connection_lost(clock::now())
                }
                Err(_) => {
                    warn!(
                        service = %Hex(service),
                        attempt = call.attempt(),
                        attempts = call.attempts(),
                        "no reply in time"
                    );
                    // Close the socket: a late reply must not reach the next request.
                    *socket = None;
                    call.handle_timeout(clock::now().max(deadline))
                }
            };
            return match event.expect("a call that is not done answers every input") {
                CallEvent::Resend { .. } => {
                    *socket = None;
                    *send = true;
                    continue;
                }
                CallEvent::Part(body) => Step::Part(body),
                CallEvent::Done(Ok(body)) => {
                    if let Some(socket) = socket.take() {
                        let mut pool = self.inner.pool.lock().expect("pool lock");
                        // Above the bound the connection is closed (dropped) instead.
                        if pool.len() < config.max_idle_connections {
                            pool.push(PooledSocket(socket));
                        }
                    }
                    Step::Done(Ok(body))
                }
                // A socket that brought a bad reply is dropped: a confused connection is not
                // reused.
                CallEvent::Done(Err(error)) => Step::Done(Err(match error {
                    CallError::Malformed(error) => ClientError::Malformed(error),
                    CallError::WrongService { expected, got } => {
                        ClientError::WrongService { expected, got }
                    }
                    CallError::NoReply { attempts } => ClientError::NoReply {
                        attempts,
                        service: service.clone(),
                        body: call.body().to_vec(),
                    },
                    CallError::Interrupted { parts } => ClientError::Interrupted {
                        parts,
                        service: service.clone(),
                    },
                })),
            };
        }
    }
}

/// A request under way: its call, and the connection it is on.
struct Exchange {
    call: Call,
    service: Bytes,
    socket: Option<DealerSocket>,
    /// Whether the current attempt's request is still to be sent.
    send: bool,
}

/// Where [`Client::step`] stopped.
enum Step {
    Part(Vec<Bytes>),
    Done(Result<Vec<Bytes>, ClientError>),
}

/// One part of a reply from [`Client::request_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's frames.
    pub body: Vec<Bytes>,
    /// Whether this is the last part (the FINAL, or a 7/MDP REPLY).
    pub last: bool,
}

/// A reply received by an [`AsyncClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The service that answered (empty in majortomo's dialect, whose replies do not name it).
    pub service: Bytes,
    /// The reply body.
    pub body: Vec<Bytes>,
    /// Whether this ends its request's answer: always for a 7/MDP REPLY and an 18/MDP FINAL,
    /// not for a PARTIAL.
    pub last: bool,
}

/// The asynchronous Majordomo client (the Guide's mdcliapi2): one DEALER socket, many requests in
/// flight, replies in the order the broker sends them.
///
/// There are no retries here: 7/MDP replies carry no request id, so the caller correlates replies
/// (for example by putting its own id in the body) and decides what to resend. It speaks the
/// [`ClientConfig::version`] configured; in 18/MDP every PARTIAL and FINAL is a [`Reply`] of its
/// own ([`Reply::last`] tells them apart).
pub struct AsyncClient {
    socket: DealerSocket,
    config: ClientConfig,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AsyncClient {
    /// Connects to the broker at `endpoint`, waiting at most `config.timeout`.
    pub async fn connect(endpoint: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let socket = connect(endpoint, config.timeout).await?;
        Ok(Self { socket, config })
    }

    /// Sends a request without waiting for its reply.
    pub async fn send(
        &mut self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<(), ClientError> {
        let service = service.into();
        self.config
            .limits
            .check_service(&service)
            .map_err(ClientError::InvalidService)?;
        let request = match self.config.version {
            Version::V01 => ClientRequest::new(service, body).encode(),
            Version::V02(dialect) => mdp2::ClientRequest { service, body }.encode(dialect),
        };
        self.socket.send(request).await?;
        Ok(())
    }

    /// Waits up to [`ClientConfig::timeout`] for the next reply.
    pub async fn recv(&mut self) -> Result<Reply, ClientError> {
        let frames = tokio::time::timeout(self.config.timeout, self.socket.recv())
            .await
            .map_err(|_| ClientError::Timeout)??;
        let limits = &self.config.limits;
        Ok(match self.config.version {
            Version::V01 => {
                let reply = ClientReply::decode(&frames, limits)?;
                Reply {
                    service: reply.service,
                    body: reply.body,
                    last: true,
                }
            }
            Version::V02(dialect) => {
                let reply = mdp2::ClientReply::decode(&frames, dialect, limits)?;
                Reply {
                    service: reply.service,
                    body: reply.body,
                    last: reply.part == mdp2::Part::Final,
                }
            }
        })
    }
}
