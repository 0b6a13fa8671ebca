//! Driver support for the Majordomo suite on tokio: what every server and peer loop shares, so a
//! fix to the loop is made once.
//!
//! The protocol crate (`majordomo-proto`) holds every rule as sans-IO state machines that take
//! `now` and never read the clock; the drivers in the other crates are thin layers over this
//! crate, which owns the I/O, the clock and the waiting.
//!
//! # Layout
//! - [`server`]: the loop of a ROUTER server (broker, queues) over a sans-IO [`server::Machine`],
//!   with fair polling of its sockets, batching, the one starvation rule, bounded sends and a
//!   [`server::ServerHandle`] for stats and shutdown.
//! - [`call`]: the client side: a sans-IO [`majordomo_proto::client::Call`] over connections
//!   from a [`transport::Connector`], a new one per attempt, with its deadline and retries.
//! - [`peer`]: the loop of a worker-side peer over a sans-IO
//!   [`majordomo_proto::session::Session`]: connect, serve, reconnect with backoff.
//! - [`transport`]: the [`transport::Transport`] trait (zmq.rs ROUTER and DEALER, memory, either of two),
//!   [`transport::send_bounded`] and the connect helper.
//! - [`round_robin`]: one connector over several brokers, each connection through the next.
//! - [`pair`]: the PUB/SUB state link of a Binary Star pair.
//! - [`memory`]: in-memory ROUTER and DEALER sockets for tests on paused time.
//! - [`timer`]: a deadline timer re-armed only when the deadline moves.
//! - [`idle`]: the busy-poll window before sleeping.
//! - [`clock`]: the one clock drivers read, once per wake-up.
//! - [`runtime`]: the tokio runtime a process runs on, by thread count.
#![warn(missing_docs)]

pub mod call;
pub mod clock;
pub mod idle;
pub mod memory;
pub mod pair;
pub mod peer;
pub mod round_robin;
pub mod runtime;
pub mod server;
pub mod timer;
pub mod transport;
