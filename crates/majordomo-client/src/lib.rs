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
//! - [`MuxClient`]: `request(service, body)` as [`Client`], with every request on one
//!   connection, each tagged with a frame of its own, when the broker routes extended reply
//!   envelopes (ours does); otherwise through a [`Client`]'s pool.
//!
//! # Correlation without a request id
//! 7/MDP carries no request id, so a reply can only be matched to its request by the connection it
//! arrives on. [`Client`] therefore keeps one DEALER socket per request in flight, from a pool: a
//! socket carries one request at a time, and a socket whose request timed out is closed, never
//! reused, so a late reply can never be taken for the answer to a later request. The wire format is
//! plain 7/MDP and any broker serves it.
//!
//! The attempts, timeouts and connections of a call are driven by `majordomo_rt::call`, over
//! any transport: [`Client::with_connector`] and [`AsyncClient::with_connector`] take the
//! in-memory sockets of `majordomo_rt::memory` as well as zmq.rs's.
//!
//! # CURVE
//! A client (any of them) connects to a CURVE server through a [`DealerConnector::curve`],
//! given where an endpoint would be: the server's public key, and the client's own pair (from a
//! czmq certificate, or made for the process).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use majordomo_client::{Client, ClientConfig, CurveKeyPair, CurvePublicKey, DealerConnector};
//!
//! let server = CurvePublicKey::from_z85("Ynvy(MIjwyZVESLBB4-[O^@mkUeBzilw&dzdN=49")?;
//! let keys = Arc::new(CurveKeyPair::load("billing-app_secret".as_ref())?);
//! let broker = DealerConnector::curve("tcp://broker.example:5555", server, keys)?;
//! let client = Client::new(broker, ClientConfig::default());
//! let reply = client.request("billing.invoice", vec!["42".into()]).await?;
//! # Ok(()) }
//! ```
//!
//! # Shutting down
//! A client has nothing to stop: a request is abandoned by dropping its future (each
//! request method says what that does), a [`Client`]'s connections close when its last clone
//! is dropped, and a [`MuxClient`]'s task ends once its last handle (and every [`MuxSender`])
//! is dropped.
//!
//! # Layout
//! - [`Client`], [`ClientConfig`]: synchronous-style calls with retries.
//! - [`AsyncClient`]: pipelined requests on one socket.
//! - [`MuxClient`], [`MuxStats`]: many requests on one connection (to each broker).
//! - [`MuxSender`], [`MuxReplies`] ([`MuxClient::split`]): the asynchronous client on tags, a
//!   shareable sender and a stream of replies matched to their requests' ids.
//! - [`Client::with_endpoints`], [`MuxClient::with_endpoints`], [`AsyncClient::with_endpoints`],
//!   [`RoundRobin`]: several brokers
//!   serving the same services; a request is delivered at least once and answered at most once.
//! - [`ClientError`]: what a call can fail with.
//! - With the feature `tower`: `Client` is a `tower_service::Service`, and
//!   `Client::service(name)` a `ServiceClient` for one service, so tower's layers (timeout,
//!   concurrency limit, retry, load shedding) apply.
#![warn(missing_docs)]

mod mux;
mod split;
#[cfg(feature = "tower")]
mod tower;
pub use mux::{MuxClient, MuxStats};
pub use split::{MuxReplies, MuxSender, Tagged};
#[cfg(feature = "tower")]
pub use tower::{Request, ResponseFuture, ServiceClient};

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The frames of requests and replies.
pub use bytes::Bytes;
/// What [`Client::request_stream`] returns is a [`Stream`]; [`StreamExt`] reads it
/// (`.next().await`).
pub use futures::{Stream, StreamExt};
use majordomo_proto::client::{Call, CallError, CallEvent};
use majordomo_proto::codec;
pub use majordomo_proto::mdp2::{Dialect, Version};
/// Why a configuration cannot work.
pub use majordomo_proto::ConfigError;
/// Why a reply did not decode, inside [`ClientError::Malformed`].
pub use majordomo_proto::DecodeError;
use majordomo_proto::Hex;
/// Size limits on what a client sends and accepts ([`ClientConfig::limits`]).
pub use majordomo_proto::Limits;
use majordomo_rt::call::CallLink;
use majordomo_rt::clock;
pub use majordomo_rt::round_robin::RoundRobin;
/// Where a client connects: an endpoint, or a CURVE server ([`DealerConnector::curve`]).
pub use majordomo_rt::transport::DealerConnector;
/// Size bounds on frames from a CURVE server ([`DealerConnector::curve_with_limits`]).
pub use majordomo_rt::transport::FrameLimits;
/// Why a connection failed, inside [`ClientError::Transport`].
pub use majordomo_rt::transport::TransportError;
/// How a client opens its connections ([`Client::with_connector`]), and what a connection
/// is ([`AsyncClient`]'s socket).
pub use majordomo_rt::transport::{Connector, Transport};
/// CURVE keys, for [`DealerConnector::curve`].
pub use majordomo_rt::transport::{CurveKeyPair, CurvePublicKey, KeyError};
use tracing::{debug, info_span, Instrument};
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
    /// Most requests a [`Client`] and its clones have under way at once (default 256), each on
    /// a connection of its own; a request past it waits until one is answered, and that wait
    /// is not counted in its timeout (put a `tokio::time::timeout` around the call to bound
    /// it). With the idle connections this bounds what a client opens: 256 + 64 at the
    /// defaults, under the 512 connections per address a `majordomo broker` allows, so 1,000
    /// concurrent calls are all served rather than refused at the broker's door. Zero is
    /// treated as one. [`MuxClient`] carries any number of requests on one connection.
    pub max_in_flight: usize,
    /// The MDP the requests are in (default [`Version::V01`], 7/MDP). With
    /// `Version::V02(dialect)` they are 18/MDP in RFC 18's or majortomo's dialect, and
    /// [`Client::request`] returns the reply's parts gathered: every PARTIAL's frames, then the
    /// FINAL's. The timeout then runs from the request or from the last part, and an attempt
    /// that times out after some parts is retried whole (the parts it had are dropped);
    /// [`Client::request_stream`] yields the parts instead, and is not retried after one.
    pub version: Version,
    /// Past this many bytes, a request goes out on a new connection rather than a pooled one,
    /// and a connection that carried a request or reply past it is closed once the reply is in
    /// rather than pooled (default `None`: every answered connection may be pooled). zmq.rs
    /// keeps buffers as large as the largest message a connection carried for as long as it
    /// lives, so a pool of connections that sometimes carry large messages otherwise holds one
    /// such buffer per connection.
    pub fresh_connection_above: Option<usize>,
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

    /// Sets `max_in_flight`; the field says what it means and its default.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets `fresh_connection_above`; the field says what it means and its default.
    pub fn fresh_connection_above(mut self, bytes: Option<usize>) -> Self {
        self.fresh_connection_above = bytes;
        self
    }

    /// Whether `bytes` of a request or reply pass `fresh_connection_above`.
    fn is_large(&self, bytes: usize) -> bool {
        self.fresh_connection_above
            .is_some_and(|above| bytes > above)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(2500),
            attempts: 3,
            limits: Limits::default(),
            max_idle_connections: 64,
            max_in_flight: 256,
            version: Version::V01,
            fresh_connection_above: None,
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
    #[error("malformed reply")]
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
    #[error("transport error")]
    Transport(#[from] TransportError),
}

/// A 7/MDP client. Clone it freely: clones share one pool of connections.
///
/// [`Client::new`] connects zmq.rs DEALER sockets to a broker's endpoint;
/// [`Client::with_connector`] opens its connections through any [`Connector`] (for example the
/// in-memory sockets of `majordomo_rt::memory`).
pub struct Client<C: Connector = DealerConnector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for Client<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Connector> std::fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.inner.broker)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner<C: Connector> {
    connector: C,
    /// Where the connector connects, for the span of every request.
    broker: String,
    config: ClientConfig,
    /// Links with an idle connection, each with no request outstanding.
    pool: Mutex<Vec<CallLink<C::Conn>>>,
    /// One permit per request under way ([`ClientConfig::max_in_flight`]).
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Client {
    /// A client for the broker at `endpoint`. Nothing connects until the first request.
    pub fn new(endpoint: impl Into<DealerConnector>, config: ClientConfig) -> Self {
        Self::with_connector(endpoint.into(), config)
    }
}

impl Client<RoundRobin<DealerConnector>> {
    /// A client of several brokers that serve the same services: each connection opens to the
    /// next broker in turn ([`RoundRobin`]), so requests spread over the brokers and an attempt
    /// that timed out on one is retried on the next. Nothing connects until the first request.
    ///
    /// A request is delivered at least once: a broker that dies after dispatching it, or a
    /// reply later than the timeout, means the retry may run it again. The caller gets at most
    /// one reply.
    ///
    /// # Panics
    ///
    /// If `endpoints` is empty.
    pub fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        config: ClientConfig,
    ) -> Self {
        Self::with_connector(
            RoundRobin::new(endpoints.into_iter().map(Into::into)),
            config,
        )
    }
}

impl<C: Connector> Client<C> {
    /// A client that opens its connections through `connector`, a new one for each attempt
    /// that needs one. Nothing connects until the first request.
    pub fn with_connector(connector: C, config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker: connector.describe(),
                connector,
                in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
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
    ///
    /// Cancel-safe: dropping the future (a `select!` or a `timeout` around it) closes the
    /// request's connection, so its reply, if one comes, reaches no later request; the request
    /// may still have run.
    pub async fn request(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, ClientError> {
        let service = service.into();
        // Every event of the request (retries, connection failures) carries its service and
        // broker.
        let span = info_span!("request", service = %Hex(&service), broker = %self.inner.broker);
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
    ///
    /// Dropping the stream before its end closes the request's connection, as dropping
    /// [`Client::request`]'s future does.
    pub fn request_stream(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> impl Stream<Item = Result<Part, ClientError>> + Send + 'static
    where
        C: 'static,
        C::Conn: 'static,
    {
        let service = service.into();
        let span = info_span!("request", service = %Hex(&service), broker = %self.inner.broker);
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

    /// A call about to start: it takes a connection (an idle one from the pool if it may) once
    /// it has its turn among [`ClientConfig::max_in_flight`].
    fn exchange(
        &self,
        service: Bytes,
        body: Vec<Bytes>,
        streamed: bool,
    ) -> Result<Exchange<C::Conn>, ClientError> {
        let call = self
            .new_call(clock::now(), service.clone(), body, streamed)
            .map_err(ClientError::InvalidService)?;
        let carried: usize = call.request().iter().map(Bytes::len).sum();
        Ok(Exchange {
            call,
            service,
            link: CallLink::default(),
            carried,
            streamed,
            turn: None,
        })
    }

    /// A call of `service` with `body` starting at `now`, per the configuration.
    fn new_call(
        &self,
        now: std::time::Instant,
        service: Bytes,
        body: Vec<Bytes>,
        streamed: bool,
    ) -> Result<Call, DecodeError> {
        let config = &self.inner.config;
        let (timeout, attempts, limits) = (config.timeout, config.attempts, config.limits);
        Call::with_version(
            now,
            service,
            body,
            timeout,
            attempts,
            limits,
            config.version,
        )
        // Streaming changes only 18/MDP calls.
        .map(|call| if streamed { call.streamed() } else { call })
    }

    /// Waits for `exchange`'s turn among the requests under way, then gives it an idle
    /// connection from the pool if there is one and its request is not large (a large request
    /// goes on a connection of its own, closed after its reply).
    async fn start(&self, exchange: &mut Exchange<C::Conn>) {
        if exchange.turn.is_some() {
            return;
        }
        let slots = self.inner.in_flight.clone();
        let turn = match slots.clone().try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) => {
                let turn = slots
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                // The wait is not the request's: its timeout starts now.
                let body = exchange.call.body().to_vec();
                let service = exchange.service.clone();
                exchange.call = self
                    .new_call(clock::now(), service, body, exchange.streamed)
                    .expect("the same request was valid when the exchange was made");
                turn
            }
        };
        exchange.turn = Some(turn);
        if !self.inner.config.is_large(exchange.carried) {
            if let Some(idle) = self.inner.pool.lock().expect("pool lock").pop() {
                exchange.link = idle;
            }
        }
    }

    /// Drives `exchange` to its next part or its end.
    async fn step(&self, exchange: &mut Exchange<C::Conn>) -> Step {
        self.start(exchange).await;
        let Exchange {
            call,
            service,
            link,
            carried,
            ..
        } = exchange;
        loop {
            return match link.drive(&self.inner.connector, call, |_| true).await {
                // The driver closed the connection; the next attempt opens a new one.
                CallEvent::Resend { attempt } => {
                    debug!(attempt, "resending on a new connection");
                    continue;
                }
                CallEvent::Part(body) => {
                    *carried += body.iter().map(Bytes::len).sum::<usize>();
                    Step::Part(body)
                }
                CallEvent::Done(Ok(body)) => {
                    *carried += body.iter().map(Bytes::len).sum::<usize>();
                    // A connection that carried a large message is closed (dropped), its
                    // buffers with it.
                    if link.is_idle() && !self.inner.config.is_large(*carried) {
                        let mut pool = self.inner.pool.lock().expect("pool lock");
                        // Above the bound the connection is closed (dropped) instead.
                        if pool.len() < self.inner.config.max_idle_connections {
                            pool.push(std::mem::take(link));
                        }
                    }
                    Step::Done(Ok(body))
                }
                // The driver dropped the connection that failed: a confused connection is not
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
struct Exchange<T> {
    call: Call,
    service: Bytes,
    link: CallLink<T>,
    /// Payload bytes of the request (with its header frames) and of the reply so far.
    carried: usize,
    /// Whether its reply is yielded part by part ([`Client::request_stream`]).
    streamed: bool,
    /// Its place among the requests under way, once it has one; given back when it is dropped.
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
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

/// The asynchronous Majordomo client (the Guide's mdcliapi2): one DEALER socket per broker, many
/// requests in flight, replies in the order the brokers send them.
///
/// There are no retries here: 7/MDP replies carry no request id, so the caller correlates replies
/// (for example by putting its own id in the body) and decides what to resend. It speaks the
/// [`ClientConfig::version`] configured; in 18/MDP every PARTIAL and FINAL is a [`Reply`] of its
/// own ([`Reply::last`] tells them apart).
///
/// With several brokers ([`AsyncClient::with_endpoints`]) requests go to each in turn, as a
/// DEALER connected to several endpoints sends them, and replies come from any. A broker whose
/// connection fails is left out from then on (sends go to the others); when none is left, calls
/// fail. [`MuxClient::split`] is the asynchronous client that matches each reply to its request,
/// retries, and reconnects.
pub struct AsyncClient<T = DealerSocket> {
    /// One connection per broker still in use, at least one.
    sockets: Vec<T>,
    /// The socket the next request goes to.
    next: usize,
    /// The socket asked first for the next reply, in turn, so that no broker's replies wait
    /// behind another's.
    first: usize,
    config: ClientConfig,
}

impl<T> std::fmt::Debug for AsyncClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("brokers", &self.sockets.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AsyncClient {
    /// Connects to the broker at `endpoint`, waiting at most `config.timeout`. Cancel-safe:
    /// dropping the future abandons the connection it was opening; nothing was sent.
    pub async fn connect(endpoint: &str, config: ClientConfig) -> Result<Self, ClientError> {
        Self::with_connector(&DealerConnector::new(endpoint), config).await
    }

    /// Connects to every broker in `endpoints` at once, waiting at most `config.timeout`; the
    /// brokers that do not answer in time are left out (logged), and only when none answers is
    /// it an error (the first broker's). Cancel-safe: dropping the future abandons the
    /// connections being opened; nothing was sent.
    pub async fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let connectors: Vec<DealerConnector> = endpoints.into_iter().map(Into::into).collect();
        Self::with_connectors(&connectors, config).await
    }
}

impl<T: Transport> AsyncClient<T> {
    /// Connects through `connector` (for example to the in-memory sockets of
    /// `majordomo_rt::memory`), waiting at most `config.timeout`. Cancel-safe as
    /// [`AsyncClient::connect`] is.
    pub async fn with_connector<C>(connector: &C, config: ClientConfig) -> Result<Self, ClientError>
    where
        C: Connector<Conn = T>,
    {
        let socket = connector.connect(config.timeout).await?;
        Ok(Self {
            sockets: vec![socket],
            next: 0,
            first: 0,
            config,
        })
    }

    /// Connects through each of `connectors` at once, as [`AsyncClient::with_endpoints`] does
    /// (cancel-safe as it is).
    ///
    /// # Panics
    ///
    /// If `connectors` is empty.
    pub async fn with_connectors<C>(
        connectors: &[C],
        config: ClientConfig,
    ) -> Result<Self, ClientError>
    where
        C: Connector<Conn = T>,
    {
        assert!(!connectors.is_empty(), "an AsyncClient needs a broker");
        let connected =
            futures::future::join_all(connectors.iter().map(|c| c.connect(config.timeout))).await;
        let mut sockets = Vec::with_capacity(connected.len());
        let mut first_error = None;
        for (connector, result) in connectors.iter().zip(connected) {
            match result {
                Ok(socket) => sockets.push(socket),
                Err(error) => {
                    tracing::warn!(broker = %connector.describe(), %error, "broker left out: cannot connect");
                    first_error.get_or_insert(error);
                }
            }
        }
        if sockets.is_empty() {
            return Err(first_error.map_or(ClientError::Timeout, ClientError::Transport));
        }
        Ok(Self {
            sockets,
            next: 0,
            first: 0,
            config,
        })
    }

    /// How many brokers the client still sends to.
    pub fn brokers(&self) -> usize {
        self.sockets.len()
    }

    /// Sends a request without waiting for its reply: to the next broker in turn, or, when
    /// sending to it fails, to the one after (the failed one is left out). Not cancel-safe once
    /// begun: a future dropped while zmq.rs's queue is full may leave the request sent or not.
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
        let request = codec::Request { service, body }.encode(self.config.version);
        let mut request = request;
        loop {
            let at = self.next % self.sockets.len();
            // Kept for the next broker only while there is one.
            let frames = if self.sockets.len() > 1 {
                request.clone()
            } else {
                std::mem::take(&mut request)
            };
            match self.sockets[at].send(frames).await {
                Ok(()) => {
                    self.next = at + 1;
                    return Ok(());
                }
                Err(error) if self.sockets.len() > 1 => {
                    tracing::warn!(%error, "broker left out: sending failed");
                    self.sockets.remove(at);
                    self.next = at;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Waits up to [`ClientConfig::timeout`] for the next reply, from any broker. Cancel-safe: a
    /// reply not taken stays queued for the next call.
    pub async fn recv(&mut self) -> Result<Reply, ClientError> {
        let frames = tokio::time::timeout(self.config.timeout, self.next_message())
            .await
            .map_err(|_| ClientError::Timeout)??;
        let reply = codec::Reply::decode(&frames, self.config.version, &self.config.limits)?;
        Ok(Reply {
            service: reply.service,
            body: reply.body,
            last: reply.part == codec::Part::Final,
        })
    }

    /// The next message of any socket. A socket that fails, of several, is left out.
    async fn next_message(&mut self) -> Result<Vec<Bytes>, TransportError> {
        loop {
            if self.sockets.len() == 1 {
                return self.sockets[0].recv().await;
            }
            // Each `recv` is cancel-safe: the ones not chosen lose nothing.
            let first = self.first % self.sockets.len();
            let (outcome, at) = {
                let (front, back) = self.sockets.split_at_mut(first);
                let waits = back
                    .iter_mut()
                    .chain(front.iter_mut())
                    .map(|socket| Box::pin(socket.recv()));
                let (outcome, turn, _) = futures::future::select_all(waits).await;
                (outcome, (first + turn) % self.sockets.len())
            };
            self.first = at + 1;
            match outcome {
                Ok(frames) => return Ok(frames),
                Err(error) => {
                    tracing::warn!(%error, "broker left out: receiving failed");
                    self.sockets.remove(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The clients over the in-memory transport on paused time, against a scripted broker.

    use futures::StreamExt;
    use majordomo_rt::memory::{self, MemoryEndpoint, MemoryRouter};

    use majordomo_proto::mdp::{ClientReply, ClientRequest};
    use majordomo_proto::mdp2;

    use super::*;

    /// Virtual time a test may wait for anything; never an expected duration.
    const PATIENCE: Duration = Duration::from_secs(600);
    const TIMEOUT: Duration = Duration::from_secs(1);

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn client(endpoint: &MemoryEndpoint, attempts: u32) -> Client<MemoryEndpoint> {
        let config = ClientConfig::default().timeout(TIMEOUT).attempts(attempts);
        Client::with_connector(endpoint.clone(), config)
    }

    /// The next request at the scripted broker: the client's identity, and the request.
    pub(crate) async fn next_request(router: &mut MemoryRouter) -> (Bytes, ClientRequest) {
        let mut frames = tokio::time::timeout(PATIENCE, router.recv())
            .await
            .expect("a request in time")
            .expect("router open");
        let identity = frames.remove(0);
        let request = ClientRequest::decode(&frames, &Limits::default()).expect("a 7/MDP request");
        (identity, request)
    }

    async fn answer(
        router: &mut MemoryRouter,
        identity: &Bytes,
        service: &'static str,
        body: Vec<Bytes>,
    ) -> Result<(), TransportError> {
        let reply = ClientReply {
            service: bytes(service),
            body,
        };
        router.send(reply.encode_routed(identity)).await
    }

    #[tokio::test(start_paused = true)]
    async fn no_reply_after_the_configured_attempts_each_on_a_new_connection() {
        let (mut router, endpoint) = memory::router();
        let client = client(&endpoint, 3);
        let call = tokio::spawn(async move { client.request("echo", vec![bytes("hi")]).await });
        let t0 = clock::now();
        let mut identities = Vec::new();
        for attempt in 0..3u32 {
            let (identity, request) = next_request(&mut router).await;
            assert_eq!(request.body, [bytes("hi")]);
            // Each attempt is sent once the one before has had its whole timeout.
            assert!(
                clock::now() >= t0 + TIMEOUT * attempt,
                "attempt {attempt} early"
            );
            identities.push(identity);
        }
        match call.await.unwrap() {
            Err(ClientError::NoReply {
                attempts,
                service,
                body,
            }) => {
                assert_eq!(attempts, 3);
                assert_eq!(service, bytes("echo"));
                assert_eq!(body, [bytes("hi")]);
            }
            other => panic!("expected NoReply, got {other:?}"),
        }
        identities.sort();
        identities.dedup();
        assert_eq!(identities.len(), 3, "every attempt on its own connection");
        let resent = tokio::time::timeout(PATIENCE, router.recv()).await;
        assert!(
            !matches!(resent, Ok(Ok(_))),
            "more attempts than configured"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_the_other_broker_even_when_another_call_took_its_turn() {
        let (mut silent, silent_endpoint) = memory::router();
        let (mut live, live_endpoint) = memory::router();
        let config = ClientConfig::default().timeout(TIMEOUT).attempts(2);
        let client =
            Client::with_connector(RoundRobin::new([silent_endpoint, live_endpoint]), config);
        // One broker takes requests and never answers; the other answers every one.
        let taken = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ignore = tokio::spawn({
            let taken = taken.clone();
            async move {
                while silent.recv().await.is_ok() {
                    taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let answer_all = tokio::spawn(async move {
            loop {
                let (identity, request) = next_request(&mut live).await;
                let _ = answer(&mut live, &identity, "echo", request.body).await;
            }
        });
        // Two calls at once: one starts on each broker, and the one on the silent broker is
        // retried on the other, though the other call took the turn after it.
        let (first, second) = tokio::join!(
            client.request("echo", vec![bytes("first")]),
            client.request("echo", vec![bytes("second")]),
        );
        answer_all.abort();
        ignore.abort();
        assert_eq!(first.expect("first answered"), [bytes("first")]);
        assert_eq!(second.expect("second answered"), [bytes("second")]);
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one attempt went to the silent broker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_after_a_timeout_gets_the_reply() {
        let (mut router, endpoint) = memory::router();
        let client = client(&endpoint, 3);
        let call = tokio::spawn(async move { client.request("echo", vec![bytes("hi")]).await });
        let (first, _) = next_request(&mut router).await;
        let (second, request) = next_request(&mut router).await;
        assert_ne!(first, second, "the retry is on a new connection");
        answer(&mut router, &second, "echo", request.body)
            .await
            .unwrap();
        assert_eq!(call.await.unwrap().unwrap(), [bytes("hi")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_is_never_taken_for_a_later_request() {
        let (mut router, endpoint) = memory::router();
        let client = client(&endpoint, 1);
        let first = client.request("echo", vec![bytes("first")]);
        let (early, (identity, _)) = tokio::join!(first, next_request(&mut router));
        assert!(matches!(
            early,
            Err(ClientError::NoReply { attempts: 1, .. })
        ));
        // The broker answers the request the client gave up on: its connection is closed.
        let late = answer(&mut router, &identity, "echo", vec![bytes("first")]).await;
        assert!(late.is_err(), "the late reply found a connection");
        let second = client.request("echo", vec![bytes("second")]);
        let server = async {
            let (identity, request) = next_request(&mut router).await;
            answer(&mut router, &identity, "echo", request.body)
                .await
                .unwrap();
        };
        let (reply, ()) = tokio::join!(second, server);
        assert_eq!(reply.unwrap(), [bytes("second")]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_get_their_own_replies_and_their_connections_are_reused() {
        let (mut router, endpoint) = memory::router();
        let client = client(&endpoint, 1);
        let calls: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|body| {
                let client = client.clone();
                tokio::spawn(async move { client.request("echo", vec![bytes(body)]).await })
            })
            .collect();
        let mut requests = vec![
            next_request(&mut router).await,
            next_request(&mut router).await,
        ];
        // Answered in the other order than asked.
        requests.reverse();
        for (identity, request) in &requests {
            answer(&mut router, identity, "echo", request.body.clone())
                .await
                .unwrap();
        }
        for (call, body) in calls.into_iter().zip(["a", "b"]) {
            assert_eq!(call.await.unwrap().unwrap(), [bytes(body)]);
        }
        let next = client.request("echo", vec![bytes("c")]);
        let server = async {
            let (identity, request) = next_request(&mut router).await;
            answer(&mut router, &identity, "echo", request.body)
                .await
                .unwrap();
            identity
        };
        let (reply, identity) = tokio::join!(next, server);
        assert_eq!(reply.unwrap(), [bytes("c")]);
        assert!(
            requests.iter().any(|(pooled, _)| *pooled == identity),
            "a new connection for a request while idle ones were pooled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_for_another_service_is_an_error() {
        let (mut router, endpoint) = memory::router();
        let client = client(&endpoint, 3);
        let call = client.request("echo", vec![bytes("hi")]);
        let server = async {
            let (identity, _) = next_request(&mut router).await;
            answer(&mut router, &identity, "other", vec![bytes("hi")])
                .await
                .unwrap();
        };
        let (reply, ()) = tokio::join!(call, server);
        match reply {
            Err(ClientError::WrongService { expected, got }) => {
                assert_eq!((expected, got), (bytes("echo"), bytes("other")));
            }
            other => panic!("expected WrongService, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_yields_each_part_then_the_final() {
        let (mut router, endpoint) = memory::router();
        let config = ClientConfig::default()
            .timeout(TIMEOUT)
            .version(Version::V02(Dialect::Rfc18));
        let client = Client::with_connector(endpoint.clone(), config);
        let stream = client.request_stream("echo", vec![bytes("hi")]);
        let server = async {
            let mut frames = tokio::time::timeout(PATIENCE, router.recv())
                .await
                .unwrap()
                .unwrap();
            let identity = frames.remove(0);
            for (part, body) in [
                (mdp2::Part::Partial, "1"),
                (mdp2::Part::Partial, "2"),
                (mdp2::Part::Final, "3"),
            ] {
                // Each part within the timeout of the one before.
                tokio::time::sleep(TIMEOUT / 2).await;
                let reply = mdp2::ClientReply {
                    part,
                    service: bytes("echo"),
                    body: vec![bytes(body)],
                };
                router
                    .send(reply.encode_routed(&identity, Dialect::Rfc18))
                    .await
                    .unwrap();
            }
        };
        let (parts, ()) = tokio::join!(stream.collect::<Vec<_>>(), server);
        let parts: Vec<Part> = parts.into_iter().map(Result::unwrap).collect();
        let expected: Vec<Part> = [("1", false), ("2", false), ("3", true)]
            .into_iter()
            .map(|(body, last)| Part {
                body: vec![bytes(body)],
                last,
            })
            .collect();
        assert_eq!(parts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn the_async_client_pipelines_and_times_out_when_nothing_comes() {
        let (mut router, endpoint) = memory::router();
        let config = ClientConfig::default().timeout(TIMEOUT);
        let mut client = AsyncClient::with_connector(&endpoint, config)
            .await
            .unwrap();
        for body in ["a", "b"] {
            client.send("echo", vec![bytes(body)]).await.unwrap();
        }
        for body in ["a", "b"] {
            let (identity, request) = next_request(&mut router).await;
            assert_eq!(request.body, [bytes(body)]);
            answer(&mut router, &identity, "echo", request.body)
                .await
                .unwrap();
        }
        for body in ["a", "b"] {
            let reply = client.recv().await.unwrap();
            assert_eq!((reply.body, reply.last), (vec![bytes(body)], true));
        }
        assert!(matches!(client.recv().await, Err(ClientError::Timeout)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_async_client_sends_to_each_broker_in_turn_and_leaves_a_dead_one_out() {
        let (mut first, one) = memory::router();
        let (mut second, two) = memory::router();
        let config = ClientConfig::default().timeout(TIMEOUT);
        let mut client = AsyncClient::with_connectors(&[one, two], config)
            .await
            .unwrap();
        assert_eq!(client.brokers(), 2);
        for body in ["a", "b", "c", "d"] {
            client.send("echo", vec![bytes(body)]).await.unwrap();
        }
        // In turn: a and c to the first broker, b and d to the second.
        for (router, bodies) in [(&mut first, ["a", "c"]), (&mut second, ["b", "d"])] {
            for body in bodies {
                let (identity, request) = next_request(router).await;
                assert_eq!(request.body, [bytes(body)]);
                answer(router, &identity, "echo", request.body)
                    .await
                    .unwrap();
            }
        }
        let mut replies = Vec::new();
        for _ in 0..4 {
            replies.extend(client.recv().await.unwrap().body);
        }
        replies.sort();
        assert_eq!(replies, ["a", "b", "c", "d"].map(bytes));

        // The first broker goes away: the client notices while it waits for replies, and
        // every request from then on goes to the second.
        drop(first);
        assert!(matches!(client.recv().await, Err(ClientError::Timeout)));
        assert_eq!(client.brokers(), 1);
        for body in ["e", "f"] {
            client.send("echo", vec![bytes(body)]).await.unwrap();
            let (identity, request) = next_request(&mut second).await;
            assert_eq!(request.body, [bytes(body)]);
            answer(&mut second, &identity, "echo", request.body)
                .await
                .unwrap();
            assert_eq!(client.recv().await.unwrap().body, [bytes(body)]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_client_of_brokers_that_all_refuse_is_an_error() {
        let (first, one) = memory::router();
        drop(first);
        let config = ClientConfig::default().timeout(TIMEOUT);
        let refused = AsyncClient::with_connectors(&[one], config).await;
        assert!(
            matches!(refused, Err(ClientError::Transport(_))),
            "{refused:?}"
        );
    }
}
