//! Titanic (9/TSP): disconnected, durable request-reply over any 7/MDP broker.
//!
//! A Titanic server is a 7/MDP worker for `titanic.request`, `titanic.reply` and
//! `titanic.close`, and a 7/MDP client of the same broker for the services the requests are
//! for. Clients store a request, get its UUID, and fetch the reply whenever they come back;
//! "Titanic requires no modifications to workers".
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use majordomo_titanic::store::RedbStore;
//! use majordomo_titanic::{ClientConfig, Titanic, TitanicClient, TitanicConfig};
//!
//! // A Titanic server of the broker on port 5555, its requests in one redb file.
//! let store = RedbStore::open("titanic.redb")?;
//! let server = Titanic::new("tcp://127.0.0.1:5555", store, TitanicConfig::default());
//! let handle = server.handle();
//! let server = tokio::spawn(server.run(std::future::pending()));
//!
//! // Store a request for the `echo` service, fetch its reply, forget it.
//! let client = TitanicClient::new("tcp://127.0.0.1:5555", ClientConfig::default());
//! let uuid = client.submit("echo", vec!["hello".into()]).await?;
//! let reply = client.wait(uuid, Duration::from_secs(10), Duration::from_millis(100)).await?;
//! client.close(uuid).await?;
//!
//! // Shutdown: the server stops when its shutdown future completes or a handle asks.
//! handle.shutdown();
//! let stats = server.await??;
//! # let _ = (reply, stats);
//! # Ok(()) }
//! ```
//!
//! # Shutdown
//! [`Titanic::run`] returns once its shutdown future completes or a handle calls
//! [`TitanicHandle::shutdown`]: held questions are answered 300, the calls under way finish
//! (for a moment at most), the workers say DISCONNECT, and requests sent to the broker but not
//! answered stay stored, to be sent again at the next start. Stop it this way rather than by
//! dropping the `run` future (see [`Titanic::run`]).
//!
//! # Layout
//! - [`tsp`]: the services, status frames and UUIDs of 9/TSP.
//! - [`core::Core`]: the rules and the dispatch policy, sans-IO (`now` is an input).
//! - [`store`]: the [`store::Store`] trait, [`store::RedbStore`] (one redb file) and
//!   [`store::MemoryStore`].
//! - [`Titanic`]: the server on tokio, one task owning its state; [`TitanicHandle`]: its
//!   stats and shutdown while it runs; [`dispatch::Dispatch`]: how it sends stored requests.
//! - [`TitanicClient`]: submit, poll, wait and close.
//!
//! # Guarantees
//! A request is acknowledged (`200` and its UUID) only once it is durable in the store, and a
//! reply is stored before its request is marked done. A request is executed at least once:
//! one sent to the broker when the server stopped or crashed is sent again when it starts, so
//! workers should be idempotent. None is lost: it stays until `titanic.close`, or until its
//! reply is older than the retention time. A close is answered at once and made durable
//! within a second: after a crash before that, the closed entry comes back (see
//! `docs/BEHAVIOUR.md`).
#![warn(missing_docs)]

pub mod client;
pub mod core;
pub mod dispatch;
mod owner;
pub mod server;
pub mod stats;
pub mod store;
pub mod tsp;

pub use client::{TitanicClient, TitanicClientError};
pub use dispatch::{dispatch_fn, Dispatch};
pub use server::{Titanic, TitanicConfig, TitanicError, TitanicHandle, FRESH_CONNECTION_ABOVE};
pub use stats::{Latency, TitanicStats};

/// The frames of requests and replies.
pub use bytes::Bytes;
/// Why a configuration cannot work, inside [`WorkerError::Config`].
pub use majordomo_client::ConfigError;
/// Why a reply did not decode, inside [`ClientError::Malformed`].
pub use majordomo_client::DecodeError;
/// Why a connection failed, inside [`ClientError::Transport`].
pub use majordomo_client::TransportError;
/// The 7/MDP client Titanic dispatches with ([`TitanicConfig::client`], [`Dispatch`]) and a
/// [`TitanicClient`] calls through.
pub use majordomo_client::{Client, ClientConfig, ClientError};
/// CURVE keys and frame bounds, for [`DealerConnector::curve`] and
/// [`DealerConnector::curve_with_limits`].
pub use majordomo_client::{CurveKeyPair, CurvePublicKey, FrameLimits, KeyError};
/// Connections to several brokers in turn ([`Titanic::with_endpoints`],
/// [`TitanicClient::with_endpoints`]).
pub use majordomo_rt::round_robin::RoundRobin;
/// How a server's workers and a client connect to the broker: to an endpoint, to a CURVE
/// server ([`DealerConnector::curve`]), or through any [`Connector`].
pub use majordomo_rt::transport::{Connector, DealerConnector};
/// What [`ClientConfig`] and [`WorkerConfig`] take: heartbeats, size limits, the protocol
/// version.
pub use majordomo_worker::{Dialect, HeartbeatConfig, Limits, Version};
/// The workers of the three services ([`TitanicConfig::worker`]) and why they could not run.
pub use majordomo_worker::{WorkerConfig, WorkerError};
/// The crates of the client and the workers, for the types their configurations take
/// (versions, heartbeats, limits, CURVE keys).
pub use {majordomo_client, majordomo_worker};
