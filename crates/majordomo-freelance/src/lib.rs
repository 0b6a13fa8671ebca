//! The Freelance pattern (10/FLP, the Guide's chapter 4, model 3) for tokio: reliable
//! request-reply straight to several equivalent servers, with no broker between.
//!
//! - [`FreelanceClient`]: `request(body)` to the first live server, failing over to the next
//!   within one timeout; servers pinged, their liveness from any traffic. A cheap clone: many
//!   tasks may call it at once. The rules are `majordomo_proto::freelance`'s, tested on
//!   simulated time.
//! - [`FreelanceServer`]: serves a [`Handler`] (the worker crate's) on a ROUTER whose identity
//!   is its public endpoint, answering PING with PONG.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use majordomo_freelance::{handler_fn, FreelanceClient, FreelanceConfig, FreelanceServer};
//!
//! // Three servers, each answering with the request's frames.
//! for port in [5555, 5556, 5557] {
//!     let endpoint = format!("tcp://127.0.0.1:{port}");
//!     let server = FreelanceServer::bind(&endpoint, None).await?;
//!     tokio::spawn(server.run(handler_fn(|body| async move { Ok(body) }), std::future::pending()));
//! }
//! let client = FreelanceClient::new(
//!     ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557"],
//!     FreelanceConfig::default(),
//! )?;
//! let reply = client.request(vec!["hello".into()]).await?;
//! # Ok(()) }
//! ```
//!
//! The guarantee is Lazy Pirate's: a request may run on two servers (it moved on while the
//! first was slow, not dead), and the caller gets at most one reply, the first.
//!
//! # Shutdown
//! [`FreelanceServer::run`] serves until its shutdown future completes (the example's never
//! does; give it a signal, a channel or a `CancellationToken`'s `cancelled()`), then closes its
//! socket and returns its counters. A [`FreelanceClient`] has nothing to stop: its task ends
//! when the last clone is dropped, and a request is abandoned by dropping its future.

#![warn(missing_docs)]

mod client;
mod server;

pub use client::{
    FreelanceClient, FreelanceClientError, FreelanceConnector, FreelanceCurve, ServerSocket,
};
pub use majordomo_proto::freelance::{FreelanceConfig, FreelanceError, FreelanceStats};
pub use majordomo_rt::transport::{CurveKeyPair, CurvePublicKey};
pub use majordomo_worker::{handler_fn, BoxError, Handler};
pub use majordomo_zmtp::GuardConfig;
pub use server::{FreelanceServer, FreelanceServerError, ServerStats};

/// The frames of requests and replies.
pub use bytes::Bytes;
/// Why a configuration cannot work.
pub use majordomo_proto::ConfigError;
/// Why binding an endpoint failed, inside [`FreelanceServerError::Bind`].
pub use majordomo_rt::transport::BindError;
/// Size bounds on frames, from [`GuardConfig::frame_limits`].
pub use majordomo_rt::transport::FrameLimits;
/// Why a socket failed, inside [`FreelanceServerError::Transport`].
pub use majordomo_rt::transport::TransportError;
/// A server's socket by default: a zmq.rs ROUTER.
pub use majordomo_rt::transport::ZmqRouter;
/// How a client opens its connections ([`FreelanceClient::with_connectors`]), and what a
/// connection or a server's socket is ([`FreelanceServer::with_transport`]).
pub use majordomo_rt::transport::{Connector, Transport};
/// The [`Handler`] [`handler_fn`] makes.
pub use majordomo_worker::HandlerFn;
/// Why a CURVE key could not be read or saved.
pub use majordomo_zmtp::curve::KeyError;
/// Why a guard could not start, inside [`BindError`].
pub use majordomo_zmtp::guard::GuardError;
/// What a socket's ZMTP guards have counted ([`ZmqRouter::guards`]).
pub use majordomo_zmtp::guard::{GuardStats, GuardStatsHandle};
/// Size bounds on a guard's link, from [`GuardConfig::link_limits`].
pub use majordomo_zmtp::mux::link::LinkLimits;
/// CURVE on a server's endpoint ([`GuardConfig::curve`]).
pub use majordomo_zmtp::mux::secure::{ClientFilter, CurveSecurity};
/// Why a guard's limits cannot work, from [`GuardConfig::validate`].
pub use majordomo_zmtp::GuardConfigError;
/// The rules a guard enforces, as [`GuardStats::count`] counts them.
pub use majordomo_zmtp::Rule;
