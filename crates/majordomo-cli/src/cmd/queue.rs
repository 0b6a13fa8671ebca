//! `majordomo ppqueue` and `majordomo spqueue`: the Paranoid and Simple Pirate queues.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use majordomo_broker::{HeartbeatConfig, Limits};
use majordomo_pirate::{Queue, QueueConfig};

use crate::metrics;
use crate::server::{log_guards, ServerArgs};
use crate::signals::shutdown_signal;

/// Options of `ppqueue` and `spqueue`.
#[derive(Args)]
pub(crate) struct QueueArgs {
    /// Endpoint for clients (REQ or Lazy Pirate).
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    frontend: String,
    /// Endpoint for workers.
    #[arg(long, default_value = "tcp://127.0.0.1:5556")]
    backend: String,
    /// Heartbeat interval with workers (ppqueue only), e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Intervals of worker silence before it is expired (ppqueue only).
    #[arg(long, default_value_t = 3)]
    liveness: u32,
    /// How long a request may wait for a worker before it is dropped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_expiry: Duration,
    /// Most requests waiting for a worker; more are dropped and logged.
    #[arg(long, default_value_t = 10_000)]
    max_queued: usize,
    /// Most bytes waiting for a worker (frames plus 64 bytes per frame, 64 KiB more per frame
    /// over 128 KiB, and 192 bytes per request), e.g. 1GiB; more requests are dropped and
    /// logged.
    #[arg(long, default_value = "1GiB")]
    max_queued_bytes: bytesize::ByteSize,
    /// Runtime threads: 1 (the default) for a single-threaded runtime, 0 for one per core.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Keep polling the sockets without sleeping for this long after the last message (see
    /// `broker --busy-poll`; 0, the default: sleep as soon as nothing is ready).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    busy_poll: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

/// Runs the queue until a stop signal: the Paranoid Pirate one when `paranoid`, else the
/// Simple Pirate one.
pub(crate) async fn run(args: QueueArgs, paranoid: bool) -> Result<()> {
    let heartbeat = HeartbeatConfig::new(args.heartbeat, args.liveness);
    let config = if paranoid {
        QueueConfig::paranoid().heartbeat(Some(heartbeat))
    } else {
        QueueConfig::simple()
    };
    let config = config
        .request_expiry(args.request_expiry)
        .max_queued(args.max_queued)
        .max_queued_bytes(super::byte_count(args.max_queued_bytes)?);
    let builder = Queue::builder()
        .frontend(&args.frontend)
        .backend(&args.backend)
        .config(config)
        .busy_poll(args.busy_poll);
    let builder = match args
        .server
        .guard
        .config(Limits::default().max_message_size as u64)?
    {
        Some(guard) => builder.guard(guard),
        None => builder.no_guard(),
    };
    let queue = builder.build().await.context("queue cannot start")?;
    let guards = queue.guards().to_vec();
    if let Some(addr) = args.server.metrics_listen {
        let source = metrics::QueueSource {
            handle: queue.handle(),
            guards: guards.clone(),
        };
        metrics::serve(addr, source).await?;
    }
    crate::signals::ready();
    let stats = queue.run(shutdown_signal()).await?;
    tracing::info!(?stats, "queue stopped");
    log_guards(&guards);
    Ok(())
}
