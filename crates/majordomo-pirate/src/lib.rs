//! The steps of the Guide's chapter 4 below Majordomo, for tokio applications.
//!
//! - [`LazyPirate`]: a client for any REQ/REP server that never waits forever: it times out,
//!   closes and reopens its socket, resends, and gives up after a number of attempts.
//! - [`Queue`]: the Simple Pirate queue ([`QueueConfig::simple`]: workers announce READY, requests
//!   go to the least-recently-used worker) and the Paranoid Pirate queue
//!   ([`QueueConfig::paranoid`], 6/PPP: heartbeats both ways, silent workers expired).
//! - [`PppWorker`]: a 6/PPP worker: heartbeats, and reconnects with backoff from 1 s doubling to
//!   32 s when the queue goes silent.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use majordomo_pirate::{
//!     handler_fn, LazyPirate, LazyPirateConfig, PppWorker, PppWorkerConfig, Queue, QueueConfig,
//! };
//!
//! // A Paranoid Pirate queue: clients on port 5555, workers on 5556.
//! let queue = Queue::bind("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", QueueConfig::paranoid())
//!     .await?;
//! let handle = queue.handle();
//! let queue = tokio::spawn(queue.run(std::future::pending()));
//!
//! // A worker answering each request with its frames.
//! let stop = tokio_util::sync::CancellationToken::new();
//! let worker = PppWorker::new("tcp://127.0.0.1:5556", PppWorkerConfig::default());
//! let echo = handler_fn(|request| async move { Ok(request) });
//! let worker = tokio::spawn(worker.run(echo, stop.clone().cancelled_owned()));
//!
//! let mut client = LazyPirate::new("tcp://127.0.0.1:5555", LazyPirateConfig::default());
//! let reply = client.request(vec!["hello".into()]).await?;
//!
//! // Shutdown: each server stops when its shutdown future completes or, for the queue, when
//! // a handle asks; `run` then returns (the queue's final stats).
//! stop.cancel();
//! worker.await??;
//! handle.shutdown();
//! let stats = queue.await??;
//! # let _ = (reply, stats);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `lazy`: [`LazyPirate`], [`LazyPirateConfig`], [`LazyPirateError`], [`LazyEvent`].
//! - `queue`: [`Queue`], [`QueueBuilder`], [`QueueHandle`]: the tokio driver of
//!   [`majordomo_proto::pirate::PirateQueue`].
//! - `worker`: [`PppWorker`], [`PppWorkerConfig`].
#![warn(missing_docs)]

mod lazy;
mod queue;
mod worker;

pub use lazy::{LazyEvent, LazyPirate, LazyPirateConfig, LazyPirateError};
pub use majordomo_proto::pirate::{QueueConfig, QueueStats};
pub use queue::{Queue, QueueBuilder, QueueError, QueueHandle};
pub use worker::{PppWorker, PppWorkerConfig, PppWorkerError};

/// The frames of requests and replies.
pub use bytes::Bytes;
/// The heartbeat interval and liveness ([`QueueConfig::heartbeat`],
/// [`PppWorkerConfig::heartbeat`]).
pub use majordomo_proto::heartbeat::HeartbeatConfig;
/// A protocol version (7/MDP or 18/MDP, in a dialect), as a [`DecodeError`] names it.
pub use majordomo_proto::mdp2::{Dialect, Version};
/// Why a configuration cannot work.
pub use majordomo_proto::ConfigError;
/// Why frames did not decode, from [`Limits::check`].
pub use majordomo_proto::DecodeError;
/// Size limits on requests and replies ([`QueueConfig::limits`], [`PppWorkerConfig::limits`]).
pub use majordomo_proto::Limits;
/// What [`QueueHandle`] is: its methods (`stats`, `drain`, `drained`, `shutdown`,
/// `is_stopped`) are there.
pub use majordomo_rt::server::ServerHandle;
/// Why binding an endpoint failed, inside [`QueueError::Bind`].
pub use majordomo_rt::transport::BindError;
/// Size bounds on frames, from [`GuardConfig::frame_limits`] and for
/// [`DealerConnector::curve_with_limits`].
pub use majordomo_rt::transport::FrameLimits;
/// Why a connection or a socket operation failed ([`Connector`], [`Transport`]).
pub use majordomo_rt::transport::TransportError;
/// How [`LazyPirate`] and [`PppWorker`] open their connections: to an endpoint, to a CURVE
/// server ([`DealerConnector::curve`]), or through any [`Connector`].
pub use majordomo_rt::transport::{Connector, DealerConnector};
/// CURVE keys, for [`DealerConnector::curve`] and [`CurveSecurity`].
pub use majordomo_rt::transport::{CurveKeyPair, CurvePublicKey, KeyError};
/// The sockets a queue runs on: [`QueueBuilder::build_on`] takes any [`Transport`]; by
/// default a [`ZmqRouter`].
pub use majordomo_rt::transport::{Transport, ZmqRouter};
/// What serves a [`PppWorker`]'s requests.
pub use majordomo_worker::{handler_fn, BoxError, Handler, HandlerFn};
/// Why a guard could not start, inside [`BindError`].
pub use majordomo_zmtp::guard::GuardError;
/// What the ZMTP guards have counted ([`Queue::guards`]).
pub use majordomo_zmtp::guard::{GuardStats, GuardStatsHandle};
/// Size bounds on a guard's link, from [`GuardConfig::link_limits`].
pub use majordomo_zmtp::mux::link::LinkLimits;
/// CURVE on the guarded endpoints ([`GuardConfig::curve`]).
pub use majordomo_zmtp::mux::secure::{ClientFilter, CurveSecurity};
/// The limits of the ZMTP guard ([`QueueBuilder::guard`]).
pub use majordomo_zmtp::GuardConfig;
/// Why a guard's limits cannot work, from [`GuardConfig::validate`].
pub use majordomo_zmtp::GuardConfigError;
/// The rules a guard enforces, as [`GuardStats::count`] counts them.
pub use majordomo_zmtp::Rule;
