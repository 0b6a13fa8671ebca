//! `majordomo`: run a Majordomo broker, call services, serve them, or watch a demo.
//!
//! Logs go to stderr through `tracing`; filter them with `RUST_LOG` (default `info`).

mod bench;
mod config;
mod demo;
mod metrics;
mod soak;
mod status;

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use majordomo_broker::{
    Broker, BrokerConfig, BrokerHandle, GuardConfig, GuardStatsHandle, HeartbeatConfig, Limits,
};
use majordomo_cli::child::{Child, Stderr};
use majordomo_client::{Client, ClientConfig, ClientError, Dialect, Version};
use majordomo_pirate::{Queue, QueueConfig};
use majordomo_worker::{
    handler_fn, stream_handler_fn, BoxError, Responder, StreamHandler, Worker, WorkerConfig,
};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

const DEFAULT_ENDPOINT: &str = "tcp://127.0.0.1:5555";

#[derive(Parser)]
#[command(
    name = "majordomo",
    version,
    about = "ZeroMQ Majordomo (7/MDP) broker, client and worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text, or json (one object per line: timestamp, level, target, the
    /// event's fields, and the spans it happened in).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The MDP a client or worker speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mdp {
    /// 7/MDP (MDP v0.1).
    #[value(name = "0.1")]
    V01,
    /// 18/MDP (MDP v0.2) as RFC 18 writes it.
    #[value(name = "0.2")]
    V02,
    /// 18/MDP as majortomo speaks it (a leading empty frame; what majortomo's broker needs).
    #[value(name = "0.2-majortomo")]
    V02Majortomo,
}

impl From<Mdp> for Version {
    fn from(mdp: Mdp) -> Self {
        match mdp {
            Mdp::V01 => Version::V01,
            Mdp::V02 => Version::V02(Dialect::Rfc18),
            Mdp::V02Majortomo => Version::V02(Dialect::Majortomo),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a Majordomo broker (7/MDP + 8/MMI).
    Broker(BrokerArgs),
    /// Send one request and print the reply frames, one per line.
    Call(CallArgs),
    /// Show a broker's services (queued requests, idle and busy workers, oldest request's age)
    /// and totals; exit status 2 if it does not answer, so it can serve as a health probe.
    Status(status::StatusArgs),
    /// Serve a service as a Majordomo worker.
    Worker(WorkerArgs),
    /// Run a Titanic server (9/TSP): durable requests and replies through a 7/MDP broker.
    Titanic(TitanicArgs),
    /// Broker, workers and clients in one process on loopback, with a throughput summary.
    Demo(demo::DemoArgs),
    /// Measure the transport's ceiling and the broker's throughput, latency, CPU and memory.
    Bench(bench::BenchArgs),
    /// Run broker and workers as processes with random kills for a while; report what was lost.
    Soak(soak::SoakArgs),
    /// Internal: the raw ROUTER echo server `bench` measures the ceiling against.
    #[command(hide = true)]
    BenchEcho(bench::EchoArgs),
    /// Internal: a two-hop forwarder with no protocol, the transport's limit for a broker.
    #[command(hide = true)]
    BenchRelay(bench::RelayArgs),
    /// Internal: an echo peer of `bench-relay`.
    #[command(hide = true)]
    BenchRelayPeer(bench::RelayPeerArgs),
    /// Internal: a byte-copying TCP-to-Unix proxy, the cost of a relay hop without the guard's
    /// reading.
    #[command(hide = true)]
    BenchCopyRelay(bench::CopyRelayArgs),
    /// Run a Paranoid Pirate queue (6/PPP): heartbeating workers on the backend.
    Ppqueue(QueueArgs),
    /// Run a Simple Pirate queue: REQ workers that announce READY, no heartbeats.
    Spqueue(QueueArgs),
    /// Print a shell completion script for this command (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `majordomo man > majordomo.1`.
    Man,
}

/// What every server command (broker, ppqueue, spqueue) takes besides its own options.
#[derive(Args, Clone)]
struct ServerArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics and a health probe at /healthz (200 while
    /// the server's loop turns, 503 while the broker drains or the loop stalls), e.g.
    /// 127.0.0.1:9464. Off by default.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    guard: GuardArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Where a server command's configuration comes from.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// Read options from the `[broker]`, `[ppqueue]` or `[spqueue]` table of this TOML file (keys
    /// are the long option names: `heartbeat = "1s"`, `bind = ["tcp://0.0.0.0:5555"]`). A flag
    /// beats an environment variable (`MAJORDOMO_<COMMAND>_<OPTION>`, e.g.
    /// `MAJORDOMO_BROKER_HEARTBEAT=1s`), which beats the file, which beats the default.
    #[arg(long, env = "MAJORDOMO_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the configuration in force, as TOML, and exit.
    #[arg(long)]
    print_config: bool,
}

/// The ZMTP guard's options, shared by every server command.
#[derive(Args, Clone)]
#[command(next_help_heading = "ZMTP guard (tcp:// endpoints)")]
struct GuardArgs {
    /// Bind tcp:// endpoints without the ZMTP guard, for trusted networks only: zmq.rs then faces
    /// peers directly, and a peer announcing a huge frame aborts the process.
    #[arg(long)]
    no_guard: bool,
    /// Largest frame a peer may send, e.g. 16MiB (default: the largest message).
    #[arg(long)]
    guard_max_frame: Option<bytesize::ByteSize>,
    /// Largest message a peer may send, all frames summed (default: --max-message-size for the
    /// broker, 16MiB for the queues).
    #[arg(long)]
    guard_max_message: Option<bytesize::ByteSize>,
    /// Most frames in one message.
    #[arg(long, default_value_t = 1024)]
    guard_max_frames: u32,
    /// How long a new connection has to complete its ZMTP greeting and handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    guard_handshake_timeout: Duration,
    /// Most connections open at once per endpoint (each takes three file descriptors).
    #[arg(long, default_value_t = 4096)]
    guard_max_connections: usize,
    /// Most connections open at once from one IP address.
    #[arg(long, default_value_t = 512)]
    guard_max_connections_per_address: usize,
    /// New connections accepted per second from one IP address (bursts of twice as many).
    #[arg(long, default_value_t = 1000)]
    guard_connection_rate: u32,
}

impl GuardArgs {
    /// The guard's configuration, or `None` with --no-guard; `max_message` is the server's own
    /// message limit, the default for the guard's.
    fn config(&self, max_message: u64) -> Option<GuardConfig> {
        if self.no_guard {
            return None;
        }
        let max_message = self
            .guard_max_message
            .map_or(max_message, |size| size.as_u64());
        let max_frame = self
            .guard_max_frame
            .map_or(max_message, |size| size.as_u64());
        Some(
            GuardConfig::default()
                .max_frame_size(max_frame)
                .max_message_size(max_message)
                .max_frames(self.guard_max_frames)
                .handshake_timeout(self.guard_handshake_timeout)
                .max_connections(self.guard_max_connections)
                .max_connections_per_address(self.guard_max_connections_per_address)
                .connection_rate(self.guard_connection_rate),
        )
    }
}

/// Drains the broker behind `handle`: no new requests, then waits until what it holds is served,
/// `timeout` has passed, or a second stop signal comes, whichever is first.
async fn drain(handle: &BrokerHandle, timeout: Duration, signals: &mut StopSignals) {
    handle.drain();
    let drained = async {
        loop {
            match handle.stats().await {
                Some(s) if s.queued == 0 && s.in_flight == 0 => return,
                None => return,
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::select! {
        () = drained => tracing::info!("drained: nothing queued or in flight"),
        () = tokio::time::sleep(timeout) => {
            let left = handle.stats().await.map(|s| (s.queued, s.in_flight));
            tracing::warn!(?left, timeout = ?timeout, "drain timed out; stopping with requests left");
        }
        () = signals.next() => tracing::info!("second stop signal: stopping now"),
    }
}

/// Logs what each guard did, when a server stops.
fn log_guards(guards: &[GuardStatsHandle]) {
    for guard in guards {
        let stats = guard.stats();
        let refused: Vec<String> = stats
            .by_rule()
            .filter(|(_, n)| *n > 0)
            .map(|(rule, n)| format!("{rule}={n}"))
            .collect();
        tracing::info!(
            accepted = stats.accepted,
            pongs = stats.pongs,
            refused = %refused.join(","),
            "guard stopped"
        );
    }
}

#[derive(Args)]
struct QueueArgs {
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
    /// Runtime threads: 1 (the default) for a single-threaded runtime, 0 for one per core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep polling the sockets without sleeping for this long after the last message (see
    /// `broker --busy-poll`; 0, the default: sleep as soon as nothing is ready).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    busy_poll: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct BrokerArgs {
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
    /// Most bytes queued for one service (frames plus 320 bytes per request), e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    max_queued_bytes_per_service: bytesize::ByteSize,
    /// Most bytes queued over all services, e.g. 1GiB.
    #[arg(long, default_value = "1GiB")]
    max_queued_bytes: bytesize::ByteSize,
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
    threads: usize,
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
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Clone)]
struct ConnectArgs {
    /// Broker endpoint.
    // Global, so that `worker echo --connect EP` works as `worker --connect EP echo` does.
    #[arg(long, default_value = DEFAULT_ENDPOINT, global = true)]
    connect: String,
}

#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// How long to wait for each attempt, e.g. 2500ms.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Attempts in all before giving up, each on a new connection and each waiting --timeout.
    #[arg(long, visible_alias = "retries", default_value_t = 3)]
    attempts: u32,
    /// Submit through Titanic (9/TSP) instead: store the request, poll `titanic.reply` until
    /// it is answered (printing nothing while it is pending), print the reply, close it.
    #[arg(long, conflicts_with = "mdp")]
    titanic: bool,
    /// With --titanic: keep the reply stored and print its UUID (to stderr) instead of
    /// closing it.
    #[arg(long, requires = "titanic")]
    no_close: bool,
    /// With --titanic: how long to wait for the reply before giving up (it stays stored).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    titanic_patience: Duration,
    /// The MDP to speak. With 0.2 each part of the reply is printed as it arrives (one line per
    /// frame, a blank line between parts); after a part has arrived, a timeout is not retried.
    #[arg(long, value_enum, default_value = "0.1")]
    mdp: Mdp,
    /// Service name.
    service: String,
    /// Request body frames.
    #[arg(required = true)]
    body: Vec<String>,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Heartbeat interval, e.g. 2500ms; must match the broker's.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration, global = true)]
    heartbeat: Duration,
    /// Intervals of broker silence before reconnecting.
    #[arg(long, default_value_t = 3, global = true)]
    liveness: u32,
    /// Logical workers to run, each with its own connection.
    #[arg(long, default_value_t = 1, global = true)]
    concurrency: usize,
    /// First reconnect delay; it doubles on each failure up to --reconnect-max.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "32s", value_parser = humantime::parse_duration, global = true)]
    reconnect_max: Duration,
    /// Keep polling for the next request without sleeping for this long after the last message,
    /// e.g. 200us: lower latency, one core busy while requests keep coming (0: sleep at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    busy_poll: Duration,
    /// Runtime threads: 1 (the default) for a single-threaded runtime, 0 for one per core. The
    /// `echo` and `exec` handlers do no work on the runtime's threads, so one thread serves any
    /// concurrency without cross-thread wake-ups.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// The MDP to speak.
    #[arg(long, value_enum, default_value = "0.1", global = true)]
    mdp: Mdp,
    #[command(subcommand)]
    kind: WorkerKind,
}

#[derive(Subcommand)]
enum WorkerKind {
    /// Serve the built-in `echo` service: the reply is the request.
    Echo {
        /// Service name to register.
        #[arg(long, default_value = "echo")]
        service: String,
        /// Send the request back this many times as parts before the last (PARTIALs in
        /// 18/MDP, frames of the one REPLY in 7/MDP).
        #[arg(long, default_value_t = 0)]
        parts: usize,
    },
    /// Serve any program: the request body is its stdin, its stdout is the reply.
    Exec {
        /// Send each line of the program's stdout (without its newline) as a part as soon as it
        /// is written, and what follows the last newline as the last part: PARTIALs then the
        /// FINAL in 18/MDP (--mdp 0.2), the lines as frames of one REPLY in 7/MDP.
        #[arg(long)]
        stream: bool,
        /// Service name to register.
        service: String,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Logs to stderr, filtered by `RUST_LOG`, or at `default` when it is unset.
fn init_tracing(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level, beside timestamp, level and target.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// This binary running a subcommand, `args`, as a child process that logs at `log_level` to this
/// process's stderr; killed (and reaped) when dropped.
pub(crate) fn spawn_self(args: &[&str], log_level: &str) -> Result<Child> {
    Child::spawn(std::env::current_exe()?, args, log_level, Stderr::Inherit)
}

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

/// Runs the command; `call` exits with status 2 when no reply came, any error exits with 1 after
/// printing it. The runtime is dropped before the process exits, so every destructor runs.
fn main() -> Result<ExitCode> {
    let cli = config::parse()?;
    // The broker and the queues are one task that owns its state, and the worker's handlers do
    // their work elsewhere (echo: none; exec: a child process): a single-threaded runtime serves
    // them without cross-thread wake-ups. Everything else gets a multi-threaded one.
    let threads = match &cli.command {
        Command::Broker(args) => args.threads,
        Command::Ppqueue(args) | Command::Spqueue(args) => args.threads,
        Command::BenchEcho(args) => args.threads,
        Command::BenchRelay(args) => args.threads,
        Command::BenchRelayPeer(_) | Command::BenchCopyRelay(_) => 1,
        Command::Worker(args) => args.threads,
        Command::Titanic(args) => args.threads,
        Command::Bench(args) => args.threads,
        _ => 0,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder.enable_all().build()?
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // The demo and the benchmark print their own story; their components only speak up about
    // trouble.
    let level = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn",
        // Retries are the point of a soak run; its summary counts them.
        Command::Soak(_) => "error",
        _ => "info",
    };
    init_tracing(level, cli.log_format);
    let done = match cli.command {
        Command::Call(args) => return run_call(args).await,
        Command::Status(args) => return status::run(args).await,
        Command::Broker(args) => run_broker(args).await,
        Command::Worker(args) => run_worker(args).await,
        Command::Titanic(args) => run_titanic(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Soak(args) => soak::run(args).await,
        Command::BenchEcho(args) => bench::echo(args).await,
        Command::BenchRelay(args) => bench::relay(args).await,
        Command::BenchRelayPeer(args) => bench::relay_peer(args).await,
        Command::BenchCopyRelay(args) => bench::copy_relay(args).await,
        Command::Ppqueue(args) => run_queue(args, true).await,
        Command::Spqueue(args) => run_queue(args, false).await,
        // Generated from the command's own definition, so they never drift from it.
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut config::command(),
                "majordomo",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            Ok(clap_mangen::Man::new(config::command()).render(&mut std::io::stdout())?)
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// A byte size as a count this machine can hold.
fn byte_count(size: bytesize::ByteSize) -> Result<usize> {
    usize::try_from(size.as_u64()).context("byte size too large for this machine")
}

async fn run_broker(args: BrokerArgs) -> Result<()> {
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
        .max_queued_per_service(args.max_queued_per_service.unwrap_or(usize::MAX))
        .max_queued_total(args.max_queued.unwrap_or(usize::MAX))
        .max_deliveries(args.max_deliveries)
        .limits(Limits::default().max_message_size(args.max_message_size));
    let mut builder = Broker::builder().config(config).busy_poll(args.busy_poll);
    builder = match args.server.guard.config(args.max_message_size as u64) {
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
    let broker = builder.build().await.context("broker cannot start")?;
    let guards = broker.guards().to_vec();
    let handle = broker.handle();
    if let Some(addr) = args.server.metrics_listen {
        let source = metrics::BrokerSource {
            handle: handle.clone(),
            guards: guards.clone(),
        };
        metrics::serve(addr, source).await?;
    }
    let mut signals = StopSignals::new()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(broker.run(async {
        let _ = stopped.await;
    }));
    signals.next().await;
    if !args.drain_timeout.is_zero() {
        drain(&handle, args.drain_timeout, &mut signals).await;
    }
    let _ = stop.send(());
    let stats = run.await??;
    tracing::info!(?stats, "broker stopped");
    log_guards(&guards);
    Ok(())
}

async fn run_queue(args: QueueArgs, paranoid: bool) -> Result<()> {
    let heartbeat = HeartbeatConfig::new(args.heartbeat, args.liveness);
    let config = if paranoid {
        QueueConfig::paranoid().heartbeat(Some(heartbeat))
    } else {
        QueueConfig::simple()
    };
    let config = config
        .request_expiry(args.request_expiry)
        .max_queued(args.max_queued);
    let builder = Queue::builder()
        .frontend(&args.frontend)
        .backend(&args.backend)
        .config(config)
        .busy_poll(args.busy_poll);
    let builder = match args
        .server
        .guard
        .config(Limits::default().max_message_size as u64)
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
    let stats = queue.run(shutdown_signal()).await?;
    tracing::info!(?stats, "queue stopped");
    log_guards(&guards);
    Ok(())
}

/// Exit status of `call` when no reply came after every attempt.
const NO_REPLY: u8 = 2;
/// Exit status of `call` when a reply in parts stopped before its last part.
const INTERRUPTED: u8 = 3;

async fn run_call(args: CallArgs) -> Result<ExitCode> {
    if args.titanic {
        return run_titanic_call(args).await;
    }
    let client = Client::new(
        args.connect.connect,
        ClientConfig::default()
            .timeout(args.timeout)
            .attempts(args.attempts)
            .version(args.mdp.into()),
    );
    let body = args.body.into_iter().map(Bytes::from).collect();
    let mut parts = std::pin::pin!(client.request_stream(args.service, body));
    let mut out = tokio::io::stdout();
    let mut first = true;
    while let Some(part) = parts.next().await {
        match part {
            Ok(part) => {
                if !first {
                    out.write_all(b"\n").await?;
                }
                first = false;
                for frame in part.body {
                    out.write_all(&frame).await?;
                    out.write_all(b"\n").await?;
                }
                out.flush().await?;
            }
            Err(error @ ClientError::NoReply { .. }) => {
                eprintln!("majordomo call: {error}");
                return Ok(ExitCode::from(NO_REPLY));
            }
            Err(error @ ClientError::Interrupted { .. }) => {
                eprintln!("majordomo call: {error}");
                return Ok(ExitCode::from(INTERRUPTED));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct TitanicArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The store: one redb file, created if missing.
    #[arg(long, default_value = "titanic.redb")]
    store: std::path::PathBuf,
    /// Keep requests and replies in memory only, not in `--store`: a restart loses them. For
    /// trials, and to measure what durability costs (`majordomo bench --runs titanic-memory`).
    #[arg(long)]
    in_memory: bool,
    /// Memory the store may use to cache its file, e.g. 64MiB.
    #[arg(long, default_value = "64MiB")]
    store_cache: bytesize::ByteSize,
    /// Most requests and replies stored at once; past it `titanic.request` answers 500.
    #[arg(long, default_value_t = 1_000_000)]
    max_stored: usize,
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
    /// (measured slower for submits). The store's writes have a thread of their own either way.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

async fn run_titanic(args: TitanicArgs) -> Result<()> {
    use majordomo_titanic::core::CoreConfig;
    use majordomo_titanic::store::RedbStore;
    use majordomo_titanic::{Titanic, TitanicConfig};
    let defaults = TitanicConfig::default();
    let config = defaults
        .core(
            CoreConfig::default()
                .max_stored(args.max_stored)
                .in_flight_per_service(args.in_flight_per_service)
                .retention(args.retention),
        )
        .worker(
            defaults
                .worker
                .heartbeat(HeartbeatConfig::new(args.heartbeat, 3))
                .concurrency(args.connections as usize),
        )
        .client(
            ClientConfig::default()
                .timeout(args.timeout)
                .attempts(args.attempts),
        )
        .reply_wait(args.reply_wait);
    if args.in_memory {
        tracing::warn!(
            "titanic keeps its requests in memory only (--in-memory): a restart loses them"
        );
        let store = majordomo_titanic::store::MemoryStore::default();
        Titanic::new(args.connect.connect, store, config)
            .run(shutdown_signal())
            .await?;
    } else {
        let store = RedbStore::open_with_cache(&args.store, byte_count(args.store_cache)?)?;
        tracing::info!(store = %args.store.display(), broker = %args.connect.connect, "titanic starting");
        Titanic::new(args.connect.connect, store, config)
            .run(shutdown_signal())
            .await?;
    }
    Ok(())
}

async fn run_titanic_call(args: CallArgs) -> Result<ExitCode> {
    use majordomo_titanic::{TitanicClient, TitanicClientError};
    let client = TitanicClient::new(
        args.connect.connect,
        ClientConfig::default()
            .timeout(args.timeout)
            .attempts(args.attempts),
    );
    let body = args.body.into_iter().map(Bytes::from).collect();
    let uuid = match client.submit(args.service, body).await {
        Ok(uuid) => uuid,
        Err(TitanicClientError::Client(error @ ClientError::NoReply { .. })) => {
            eprintln!("majordomo call: {error}");
            return Ok(ExitCode::from(NO_REPLY));
        }
        Err(error) => return Err(error.into()),
    };
    let poll = Duration::from_millis(100);
    let reply = match client.wait(uuid, args.titanic_patience, poll).await {
        Ok(reply) => reply,
        Err(error @ TitanicClientError::Pending(_)) => {
            eprintln!("majordomo call: {error}");
            return Ok(ExitCode::from(NO_REPLY));
        }
        Err(error) => return Err(error.into()),
    };
    let mut out = tokio::io::stdout();
    for frame in reply {
        out.write_all(&frame).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await?;
    if args.no_close {
        eprintln!("{uuid}");
    } else {
        client.close(uuid).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_worker(args: WorkerArgs) -> Result<()> {
    let config = WorkerConfig::default()
        .heartbeat(HeartbeatConfig::new(args.heartbeat, args.liveness))
        .reconnect_initial(args.reconnect_initial)
        .reconnect_max(args.reconnect_max)
        .concurrency(args.concurrency)
        .busy_poll(args.busy_poll)
        .version(args.mdp.into());
    let endpoint = args.connect.connect;
    match args.kind {
        WorkerKind::Echo { service, parts: 0 } => {
            Worker::new(endpoint, service, config)
                .run(
                    handler_fn(|body| async move { Ok(body) }),
                    shutdown_signal(),
                )
                .await?
        }
        WorkerKind::Echo { service, parts } => {
            Worker::new(endpoint, service, config)
                .run_streaming(echo_in_parts(parts), shutdown_signal())
                .await?
        }
        WorkerKind::Exec {
            service,
            command,
            stream: true,
        } => {
            let command = std::sync::Arc::new(command);
            let handler = stream_handler_fn(move |body: Vec<Bytes>, responder| {
                let command = command.clone();
                async move { exec_streamed(&command, body, responder).await }
            });
            Worker::new(endpoint, service, config)
                .run_streaming(handler, shutdown_signal())
                .await?
        }
        WorkerKind::Exec {
            service,
            command,
            stream: false,
        } => {
            let command = std::sync::Arc::new(command);
            let handler = handler_fn(move |body: Vec<Bytes>| {
                let command = command.clone();
                async move { exec(&command, body).await }
            });
            Worker::new(endpoint, service, config)
                .run(handler, shutdown_signal())
                .await?
        }
    }
    Ok(())
}

/// Echoes the request `parts` times as parts, then as the last part.
pub(crate) fn echo_in_parts(parts: usize) -> impl StreamHandler {
    stream_handler_fn(
        move |body: Vec<Bytes>, mut responder: Responder| async move {
            for _ in 0..parts {
                responder.send(body.clone()).await?;
            }
            Ok::<_, BoxError>(body)
        },
    )
}

/// Starts `command` with the request body (frames concatenated) written to its stdin by a task
/// (a program that exits without reading all of it is not an error).
fn spawn_child(
    command: &[String],
    body: Vec<Bytes>,
) -> Result<
    (
        tokio::process::Child,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    BoxError,
> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        let written = async {
            for frame in body {
                stdin.write_all(&frame).await?;
            }
            stdin.shutdown().await
        };
        match written.await {
            // A program may exit without reading all of its input.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    });
    Ok((child, writer))
}

/// As [`exec`], sending each line of stdout (without its newline) as a part when it is written;
/// what follows the last newline (perhaps nothing) is the last part. A program that exits
/// non-zero is a handler error, after the lines it wrote have gone out.
async fn exec_streamed(
    command: &[String],
    body: Vec<Bytes>,
    mut responder: Responder,
) -> Result<Vec<Bytes>, BoxError> {
    use tokio::io::AsyncBufReadExt;
    let (mut child, writer) = spawn_child(command, body)?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let rest = loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line).await? == 0 {
            break Vec::new();
        }
        if line.last() != Some(&b'\n') {
            // The end of stdout came before a newline.
            break std::mem::take(&mut line);
        }
        line.pop();
        responder.send(vec![Bytes::copy_from_slice(&line)]).await?;
    };
    let status = child.wait().await?;
    writer.await??;
    if !status.success() {
        return Err(format!("{} exited with {}", command[0], status).into());
    }
    Ok(vec![Bytes::from(rest)])
}

/// Runs `command` with the request body (frames concatenated) on stdin; its stdout is the reply.
/// A program that exits non-zero is a handler error.
async fn exec(command: &[String], body: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError> {
    let (child, writer) = spawn_child(command, body)?;
    let output = child.wait_with_output().await?;
    writer.await??;
    if !output.status.success() {
        return Err(format!("{} exited with {}", command[0], output.status).into());
    }
    Ok(vec![Bytes::from(output.stdout)])
}
