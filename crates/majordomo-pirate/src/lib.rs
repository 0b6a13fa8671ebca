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
//! # Layout
//! - `lazy`: [`LazyPirate`], [`LazyPirateConfig`], [`LazyPirateError`], [`LazyEvent`].
//! - `queue`: [`Queue`], [`QueueBuilder`], [`QueueHandle`]: the tokio driver of [`majordomo_proto::pirate::PirateQueue`].
//! - `worker`: [`PppWorker`], [`PppWorkerConfig`].
#![warn(missing_docs)]

mod lazy;
mod queue;
mod worker;

pub use lazy::{LazyEvent, LazyPirate, LazyPirateConfig, LazyPirateError};
pub use majordomo_proto::pirate::{QueueConfig, QueueStats};
pub use queue::{Queue, QueueBuilder, QueueError, QueueHandle};
pub use worker::{PppWorker, PppWorkerConfig, PppWorkerError};
