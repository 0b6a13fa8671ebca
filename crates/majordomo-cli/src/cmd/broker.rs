//! `majordomo broker`: a Majordomo broker (7/MDP + 8/MMI) until a stop signal, then a drain.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use majordomo_broker::{
    BinaryStarConfig, Broker, BrokerConfig, BrokerHandle, HeartbeatConfig, Limits, PairRole,
};

use super::byte_count;
use crate::connect::DEFAULT_ENDPOINT;
use crate::metrics;
use crate::server::{log_guards, ServerArgs};
use crate::signals::StopSignals;

/// Options of `broker`.
#[derive(Args)]
pub(crate) struct BrokerArgs {
    /// Endpoint for clients and workers; repeat to bind several (tcp:// or ipc://).
    /// Default tcp://127.0.0.1:5555 when no endpoint is given at all.
    #[arg(long = "bind")]
    bind: Vec<String>,
    /// Endpoint for clients only; repeatable.
    #[arg(long = "bind-clients")]
    bind_clients: Vec<String>,
    /// Endpoint for workers only; repeatable.
    #[arg(long = "bind-workers")]
    bind_workers: Vec<String>,
    /// Heartbeat interval to workers, e.g. 2500ms or 1s.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Intervals of silence after which a worker is purged.
    #[arg(long, default_value_t = 3)]
    liveness: u32,
    /// How long a request for a service with no registered worker waits for one before it is
    /// dropped. Requests for a service with workers wait for them (see --max-wait).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_expiry: Duration,
    /// Longest a request may wait in a queue even while its service has workers, e.g. 60s
    /// (default: no limit).
    #[arg(long, value_parser = humantime::parse_duration)]
    max_wait: Option<Duration>,
    /// How long a busy worker that has never been seen to heartbeat while busy (the Guide's
    /// worker API sends nothing while its handler runs) may stay silent before it is purged.
    /// Workers that heartbeat while busy are held to --liveness; a worker whose connection
    /// closes is removed at once.
    #[arg(long, default_value = "900s", value_parser = humantime::parse_duration)]
    busy_timeout: Duration,
    /// Most bytes queued for one service (frames plus 64 bytes per frame, 64 KiB more per frame
    /// over 128 KiB, and 352 bytes per request), e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    max_queued_bytes_per_service: bytesize::ByteSize,
    /// Most bytes queued over all services, e.g. 1GiB; each known service counts 1 KiB and its
    /// name in it too.
    #[arg(long, default_value = "1GiB")]
    max_queued_bytes: bytesize::ByteSize,
    /// Most services known at once: requests for a new service past it are dropped, unless a
    /// service idle in its grace (--service-idle-grace) can be forgotten to make room.
    #[arg(long, default_value_t = 100_000)]
    max_services: usize,
    /// How long a service with neither workers nor queued requests is kept, with its metric
    /// series, before it is forgotten (0s: at once). A worker that reconnects within it finds
    /// its service as it left it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    service_idle_grace: Duration,
    /// Most requests queued for one service (default: no limit; the byte bounds protect memory).
    #[arg(long)]
    max_queued_per_service: Option<usize>,
    /// Most requests queued in all (default: no limit).
    #[arg(long)]
    max_queued: Option<usize>,
    /// Largest accepted message in bytes; larger ones are dropped and logged.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_size: usize,
    /// How many workers one request may be given to before it is dropped.
    #[arg(long, default_value_t = 3)]
    max_deliveries: u32,
    /// Runtime threads: 1 runs the broker on a single-threaded runtime (the default; the broker
    /// is one task), 0 uses one thread per core.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Keep polling the sockets without sleeping for this long after the last message, e.g.
    /// 200us: lower latency and more requests per second while traffic flows, one core busy
    /// while it does (0, the default: sleep as soon as nothing is ready).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    busy_poll: Duration,
    /// On Ctrl-C or SIGTERM, stop taking requests and wait this long at most for the queued and
    /// in-flight ones to be answered before telling workers DISCONNECT and exiting (0: at once).
    /// A second signal stops at once.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Run as one server of a Binary Star pair (the Guide's chapter 4): `primary` or `backup`.
    /// Needs --bstar-bind and --bstar-peer. Only the active server of the pair answers client
    /// requests (mmi.* is answered by both); workers register with both.
    #[arg(long, value_enum)]
    bstar: Option<PairRoleArg>,
    /// Where this broker publishes its Binary Star state (PUB), e.g. tcp://0.0.0.0:5003.
    #[arg(long)]
    bstar_bind: Option<String>,
    /// Where the peer publishes its Binary Star state (our SUB connects there).
    #[arg(long)]
    bstar_peer: Option<String>,
    /// How often the Binary Star state is published; the peer counts as gone after two. Both
    /// servers of a pair must use the same.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    bstar_heartbeat: Duration,
    /// Who may call and serve which services, by CURVE key: a TOML file of `[[rule]]` tables
    /// (`keys`, `call`, `serve`; see the operations guide). Reloaded on SIGHUP. Default: every
    /// peer may do everything.
    #[arg(long)]
    access_rules: Option<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `--bstar`: which server of the pair this is.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PairRoleArg {
    /// Normally active.
    Primary,
    /// Normally passive; active once the primary is gone and a client asks.
    Backup,
}

/// Binds, serves until a stop signal, drains (see `--drain-timeout`), and stops.
pub(crate) async fn run(args: BrokerArgs) -> Result<()> {
    if args.liveness == 0 || args.heartbeat.is_zero() {
        bail!("--heartbeat and --liveness must be positive");
    }
    let config = BrokerConfig::default()
        .heartbeat(HeartbeatConfig::new(args.heartbeat, args.liveness))
        .request_expiry(args.request_expiry)
        .max_wait(args.max_wait)
        .busy_timeout(args.busy_timeout)
        .max_queued_bytes_per_service(byte_count(args.max_queued_bytes_per_service)?)
        .max_queued_bytes(byte_count(args.max_queued_bytes)?)
        .max_services(args.max_services)
        .service_idle_grace(args.service_idle_grace)
        .max_queued_per_service(args.max_queued_per_service.unwrap_or(usize::MAX))
        .max_queued_total(args.max_queued.unwrap_or(usize::MAX))
        .max_deliveries(args.max_deliveries)
        .limits(Limits::default().max_message_size(args.max_message_size));
    let config = match args.access_rules {
        Some(path) => config.access(crate::access::shared(path)?),
        None => config,
    };
    let mut builder = Broker::builder().config(config).busy_poll(args.busy_poll);
    builder = match args.server.guard.config(args.max_message_size as u64)? {
        Some(guard) => builder.guard(guard),
        None => builder.no_guard(),
    };
    let mut bind = args.bind;
    if bind.is_empty() && args.bind_clients.is_empty() && args.bind_workers.is_empty() {
        bind.push(DEFAULT_ENDPOINT.to_owned());
    }
    for ep in bind {
        builder = builder.bind(ep);
    }
    for ep in args.bind_clients {
        builder = builder.bind_clients(ep);
    }
    for ep in args.bind_workers {
        builder = builder.bind_workers(ep);
    }
    // Checked here rather than by clap, so that a configuration file may set them one key at a
    // time.
    match (args.bstar, args.bstar_bind, args.bstar_peer) {
        (Some(role), Some(bind), Some(peer)) => {
            let role = match role {
                PairRoleArg::Primary => PairRole::Primary,
                PairRoleArg::Backup => PairRole::Backup,
            };
            builder = builder
                .binary_star(role, bind, peer)
                .binary_star_config(BinaryStarConfig::default().heartbeat(args.bstar_heartbeat));
        }
        (None, None, None) => {}
        _ => bail!("--bstar, --bstar-bind and --bstar-peer go together: give all three or none"),
    }
    let broker = builder.build().await.context("broker cannot start")?;
    let guards = broker.guards().to_vec();
    let handle = broker.handle();
    if let Some(addr) = args.server.metrics_listen {
        let source = metrics::BrokerSource {
            handle: handle.clone(),
            guards: guards.clone(),
            pair: args.bstar.is_some(),
        };
        metrics::serve(addr, source).await?;
    }
    let mut signals = StopSignals::new()?;
    crate::signals::ready();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut run = tokio::spawn(broker.run(async {
        let _ = stopped.await;
    }));
    tokio::select! {
        // Dropped unfinished only when the broker has stopped, and the process with it.
        () = signals.next() => {}
        // The broker stops by itself only on a fatal Binary Star state: exit with its error.
        ended = &mut run => {
            let stats = ended??;
            tracing::info!(?stats, "broker stopped");
            return Ok(());
        }
    }
    if !args.drain_timeout.is_zero() {
        drain(&handle, args.drain_timeout, &mut signals).await;
    }
    let _ = stop.send(());
    let stats = run.await??;
    tracing::info!(?stats, "broker stopped");
    log_guards(&guards);
    Ok(())
}

/// Drains the broker behind `handle`: no new requests, then waits until what it holds is served,
/// `timeout` has passed, or a second stop signal comes, whichever is first.
async fn drain(handle: &BrokerHandle, timeout: Duration, signals: &mut StopSignals) {
    handle.drain();
    tokio::select! {
        () = handle.drained() => tracing::info!("drained: nothing queued or in flight"),
        () = tokio::time::sleep(timeout) => {
            let left = handle.stats().await.map(|s| (s.queued, s.in_flight));
            tracing::warn!(?left, timeout = ?timeout, "drain timed out; stopping with requests left");
        }
        () = signals.next() => tracing::info!("second stop signal: stopping now"),
    }
}
