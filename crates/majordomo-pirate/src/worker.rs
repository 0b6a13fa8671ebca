//! The Paranoid Pirate (6/PPP) worker: the tokio driver of
//! [`majordomo_proto::ppp_worker::PppWorkerSession`] on the peer loop of `majordomo-rt`.

use std::future::Future;
use std::time::Duration;

use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::ppp_worker::PppWorkerSession;
use majordomo_proto::Limits;
use majordomo_rt::peer::{self, PeerOptions};
use majordomo_rt::transport::{Connector, DealerConnector};
use majordomo_worker::Handler;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Heartbeat and reconnect settings of a [`PppWorker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PppWorkerConfig {
    /// Heartbeat interval and liveness (default 1 s and 3, the Guide's Paranoid Pirate values).
    pub heartbeat: HeartbeatConfig,
    /// First reconnect delay (default 1 s); it doubles on each failure up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay (default 32 s).
    pub reconnect_max: Duration,
    /// Size limits applied to requests.
    pub limits: Limits,
}

impl PppWorkerConfig {
    /// Sets `heartbeat`; the field says what it means and its default.
    pub fn heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets `reconnect_initial`; the field says what it means and its default.
    pub fn reconnect_initial(mut self, reconnect_initial: Duration) -> Self {
        self.reconnect_initial = reconnect_initial;
        self
    }

    /// Sets `reconnect_max`; the field says what it means and its default.
    pub fn reconnect_max(mut self, reconnect_max: Duration) -> Self {
        self.reconnect_max = reconnect_max;
        self
    }

    /// Sets `limits`; the field says what it means and its default.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

impl Default for PppWorkerConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default()
                .interval(Duration::from_secs(1))
                .liveness(3),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            limits: Limits::default(),
        }
    }
}

/// Why a PPP worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PppWorkerError {
    /// The configuration is unusable (the message says which setting).
    #[error(transparent)]
    Config(#[from] majordomo_proto::ConfigError),
}

/// A 6/PPP worker: READY, then requests served one at a time by a [`Handler`], heartbeats both
/// ways, and a new socket with READY after the queue goes silent ("If the worker detects that the
/// client has disconnected, it MUST send READY again to start a new conversation").
///
/// A handler that fails or panics drops its request; the worker then sends READY again on the
/// same connection, which our queue takes as the worker starting over (the request goes to
/// another worker).
#[derive(Debug, Clone)]
pub struct PppWorker<C = DealerConnector> {
    connector: C,
    config: PppWorkerConfig,
}

impl PppWorker {
    /// A worker for the queue backend at `endpoint`.
    pub fn new(endpoint: impl Into<DealerConnector>, config: PppWorkerConfig) -> Self {
        Self::with_connector(endpoint.into(), config)
    }
}

impl<C: Connector> PppWorker<C> {
    /// A worker that opens its connections through `connector` (for example the in-memory
    /// sockets of `majordomo_rt::memory`).
    pub fn with_connector(connector: C, config: PppWorkerConfig) -> Self {
        Self { connector, config }
    }

    /// Serves until `shutdown` completes. Connection failures are retried forever with backoff.
    ///
    /// Cancel-safe: dropping the future stops the worker as `shutdown` does, at once: its
    /// connection and the request it is handling are dropped (6/PPP has no goodbye; the queue
    /// expires the worker when its heartbeats stop).
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PppWorkerError> {
        let config = self.config;
        config.heartbeat.validate()?;
        let options = PeerOptions {
            heartbeat: config.heartbeat,
            reconnect_initial: config.reconnect_initial,
            reconnect_max: config.reconnect_max,
            ..PeerOptions::default()
        };
        let token = CancellationToken::new();
        let serve = peer::run(
            &self.connector,
            |now| PppWorkerSession::new(now, config.heartbeat, config.limits),
            // A PPP reply is one message: parts, if any, are sent in front of it.
            |body, _responder| handler.handle(body),
            options,
            &token,
        )
        .instrument(tracing::info_span!("ppp_worker"));
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            () = &mut serve => {}
            () = shutdown => {
                token.cancel();
                serve.await;
            }
        }
        Ok(())
    }
}
