//! Stop signals: Ctrl-C and SIGTERM stop a command; SIGHUP reloads what registered with
//! [`on_reload`] (the CURVE client keys), and is otherwise logged and ignored. And systemd's
//! readiness protocol (`Type=notify`): [`ready`] once the endpoints are bound, `STOPPING=1` when
//! a stop signal arrives.

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
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => reload(),
            }
        }
        notify(sd_notify::NotifyState::Stopping);
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

/// Tells systemd that the service is ready: every endpoint is bound (a unit of `Type=notify`
/// starts the units that depend on it only then). Nothing happens unless systemd started the
/// process with `NOTIFY_SOCKET` set.
pub(crate) fn ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Sends `state` to systemd's notification socket, if there is one.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
