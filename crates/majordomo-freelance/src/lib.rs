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
