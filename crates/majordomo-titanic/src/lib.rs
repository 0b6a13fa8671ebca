//! Titanic (9/TSP): disconnected, durable request-reply over any 7/MDP broker.
//!
//! A Titanic server is a 7/MDP worker for `titanic.request`, `titanic.reply` and
//! `titanic.close`, and a 7/MDP client of the same broker for the services the requests are
//! for. Clients store a request, get its UUID, and fetch the reply whenever they come back;
//! "Titanic requires no modifications to workers".
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
