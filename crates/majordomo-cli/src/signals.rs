//! Stop signals: Ctrl-C and SIGTERM stop a command; SIGHUP reloads what registered with
//! [`on_reload`] (the CURVE client keys), and is otherwise logged and ignored.

use std::sync::Mutex;

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

    /// Completes on the next Ctrl-C or SIGTERM. SIGHUP would end the process by default; it
    /// reloads instead, and is never taken as a stop.
    pub(crate) async fn next(&mut self) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => reload(),
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

/// What SIGHUP reloads; an error leaves what was in force.
type Reload = Box<dyn Fn() -> Result<()> + Send>;

static RELOADS: Mutex<Vec<Reload>> = Mutex::new(Vec::new());

/// Runs `reload` on every SIGHUP from now on. Each run is counted in
/// `majordomo_reloads_total{result="ok"|"failed"}`; a failure is logged.
pub(crate) fn on_reload(reload: impl Fn() -> Result<()> + Send + 'static) {
    RELOADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(reload));
}

fn reload() {
    let reloads = RELOADS.lock().unwrap_or_else(|e| e.into_inner());
    if reloads.is_empty() {
        tracing::info!("SIGHUP: nothing to reload, ignored");
    }
    for reload in reloads.iter() {
        let result = match reload() {
            Ok(()) => "ok",
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "SIGHUP: reload failed; what was in force stays"
                );
                "failed"
            }
        };
        metrics::counter!("majordomo_reloads_total", "result" => result).increment(1);
    }
}
