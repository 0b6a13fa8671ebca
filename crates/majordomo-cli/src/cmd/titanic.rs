//! `majordomo titanic`: a Titanic server (9/TSP) in front of a 7/MDP broker.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use majordomo_broker::HeartbeatConfig;

use super::byte_count;
use crate::connect::ConnectArgs;
use crate::server::ConfigArgs;
use crate::signals::shutdown_signal;

/// Options of `titanic`.
#[derive(Args)]
pub(crate) struct TitanicArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The store: one redb file, created if there is none. An existing file is checked at
    /// start; an empty or damaged one is an error naming it (docs/BEHAVIOUR.md says how to
    /// repair or start over).
    #[arg(long, default_value = "titanic.redb")]
    store: std::path::PathBuf,
    /// Keep requests and replies in memory only, not in `--store`: a restart loses them. For
    /// trials, and to measure what durability costs (`majordomo bench --runs titanic-memory`).
    #[arg(long)]
    in_memory: bool,
    /// Memory the store may use to cache its file, e.g. 32MiB.
    #[arg(long, default_value = "32MiB")]
    store_cache: bytesize::ByteSize,
    /// Memory that holds the bodies of requests and replies as well as the store, so that
    /// dispatches and replies need not read it, e.g. 32MiB; past it a body is read from the
    /// store when needed. 0 keeps none. The bodies being dispatched are bounded by as much
    /// again.
    #[arg(long, default_value = "32MiB")]
    max_body_memory: bytesize::ByteSize,
    /// Most requests and replies stored at once; past it `titanic.request` answers 500.
    #[arg(long, default_value_t = 1_000_000)]
    max_stored: usize,
    /// Most bytes the stored requests and replies may take in `--store`, e.g. 4GiB (each
    /// counted as it costs in the file, about its size and a quarter for large bodies, three
    /// times it for small ones); past it `titanic.request` answers `500 store full`.
    #[arg(long, default_value = "4GiB")]
    max_stored_bytes: bytesize::ByteSize,
    /// Most requests of one service sent to the broker at once.
    #[arg(long, default_value_t = 16)]
    in_flight_per_service: usize,
    /// How long a reply nobody closes is kept, e.g. 7d.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// How long to wait for each dispatched request's reply, per attempt.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Attempts per dispatch before the service backs off (1 s doubling to 30 s).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Heartbeat interval of its workers; must match the broker's.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Connections to the broker of each of the three services: each takes one request at a
    /// time, and the submits and closes being written at once share a commit.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// How long `titanic.reply` holds a question about a pending request, answering as soon as
    /// the reply is stored, before it answers 300; 0s answers at once. All but an eighth of
    /// the connections may hold at once.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reply_wait: Duration,
    /// Runtime threads: 0 (the default) for one per core, 1 for a single-threaded runtime
    /// (measured slower for submits). The store's commits run on the runtime's blocking pool.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests stored, dispatched, replied
    /// and closed; what the store holds; each step's latency) and a probe at /healthz (200
    /// while the server's loop answers), e.g. 127.0.0.1:9466. Off by default.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Past this size a block of Titanic's gets a mapping of its own, returned to the system when it
/// is freed (see [`crate::allocator`]): what Titanic holds of large bodies is then what its
/// bounds count, not what its threads' heaps once needed. Measured with 60 requests of 15 MiB
/// for services nobody serves (`scripts/measure-bounds.py titanic`): a peak of 199 MiB, against
/// 340 MiB with the same bounds and the threshold unset (460 MiB with the earlier 64 MiB ones);
/// the price, a fifth fewer submits of 1 MiB per second (round trips unchanged).
const MMAP_THRESHOLD: usize = 4 << 20;

/// Serves the three TSP services until a stop signal.
pub(crate) async fn run(args: TitanicArgs) -> Result<()> {
    use majordomo_titanic::core::CoreConfig;
    use majordomo_titanic::store::RedbStore;
    use majordomo_titanic::{Titanic, TitanicConfig};
    crate::allocator::fix_mmap_threshold(MMAP_THRESHOLD);
    let defaults = TitanicConfig::default();
    let config = defaults
        .core(
            CoreConfig::default()
                .max_stored(args.max_stored)
                .max_stored_bytes(args.max_stored_bytes.as_u64())
                .in_flight_per_service(args.in_flight_per_service)
                .retention(args.retention)
                .max_body_bytes(byte_count(args.max_body_memory)?),
        )
        .worker(
            defaults
                .worker
                .heartbeat(HeartbeatConfig::new(args.heartbeat, 3))
                .concurrency(args.connections as usize),
        )
        .client(
            defaults
                .client
                .timeout(args.timeout)
                .attempts(args.attempts),
        )
        .reply_wait(args.reply_wait);
    if args.in_memory {
        tracing::warn!(
            "titanic keeps its requests in memory only (--in-memory): a restart loses them"
        );
        let store = majordomo_titanic::store::MemoryStore::default();
        let titanic = Titanic::with_endpoints(args.connect.connectors()?, store, config);
        serve_metrics(args.metrics_listen, titanic.handle()).await?;
        titanic.run(shutdown_signal()).await?;
    } else {
        let store = RedbStore::open_with_cache(&args.store, byte_count(args.store_cache)?)?;
        tracing::info!(store = %args.store.display(), brokers = %args.connect.connect.join(","), "titanic starting");
        let titanic = Titanic::with_endpoints(args.connect.connectors()?, store, config);
        serve_metrics(args.metrics_listen, titanic.handle()).await?;
        titanic.run(shutdown_signal()).await?;
    }
    Ok(())
}

/// Serves `/metrics` and `/healthz` for the server behind `handle`, with --metrics-listen, then
/// tells systemd the server is ready.
async fn serve_metrics(
    addr: Option<SocketAddr>,
    handle: majordomo_titanic::TitanicHandle,
) -> Result<()> {
    if let Some(addr) = addr {
        crate::metrics::serve(addr, crate::metrics::TitanicSource { handle }).await?;
    }
    // The store is open: ready, and registering with the brokers as they answer.
    crate::signals::ready();
    Ok(())
}
