//! Stop signals: Ctrl-C and SIGTERM stop a command; SIGHUP is logged and ignored.

use anyhow::Result;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Ctrl-C, SIGTERM and SIGHUP, each registered once, so that a second stop signal is seen as
/// well as the first.
pub(crate) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Takes over the three signals for the rest of the process.
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Completes on the next Ctrl-C or SIGTERM. SIGHUP would end the process by default; there
    /// is nothing to reload, so it is logged and ignored rather than taken as a stop.
    pub(crate) async fn next(&mut self) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => tracing::info!("SIGHUP: nothing to reload, ignored"),
            }
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    match StopSignals::new() {
        Ok(mut signals) => signals.next().await,
        Err(error) => {
            tracing::warn!(%error, "cannot watch signals; stop with SIGKILL");
            std::future::pending().await
        }
    }
}
