//! `majordomo bench`: the transport's ceiling and our broker's throughput, latency, CPU and
//! memory, measured in one run on loopback.
//!
//! Besides the broker, it measures what the transport allows: a raw ROUTER echo server (one
//! hop), and a relay that forwards between clients and echo peers with no protocol at all (two
//! hops, as a broker does), with 7/MDP's one request per worker at a time and without it.
//! The broker runs as a `majordomo broker` child process and each of those servers as a
//! `majordomo-bench-fixture` one ([`fixture`]), so its CPU time and memory are its own; each
//! echo worker is a `majordomo worker echo` child process (or, with `--in-process-workers`, a
//! task here); the clients run in this process and share the machine with them, as a load
//! generator does.

mod clients;
mod curve;
pub mod fixture;
mod freelance;
mod load;
mod report;
mod targets;
mod titanic;
mod titanic_guide;

use std::fmt;
use std::time::Duration;

use crate::endpoint::Transport;
use anyhow::{ensure, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use load::measure;
use report::{report, Run};
use targets::{broker_run, EchoServer, GuardMode, Target};

/// Options of the benchmark.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Concurrent clients (one DEALER socket each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Echo workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 20)]
    in_flight: usize,
    /// Measured time of each run, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each measured run.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Body sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    sizes: Vec<usize>,
    /// Runtime threads of the broker and echo server processes, and of Titanic in the
    /// `titanic-guide` run (1: single-threaded runtime, 0: one per core).
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Runtime threads of this process, where the clients (and in-process workers) run (0: one
    /// per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Also measure the broker started with `--busy-poll` set to this window (0: skip that run).
    #[arg(long, default_value = "200us", value_parser = humantime::parse_duration)]
    busy_poll: Duration,
    /// Run the echo workers as tasks in this process, beside the clients, instead of each in its
    /// own `majordomo worker echo` process.
    #[arg(long)]
    in_process_workers: bool,
    /// Busy-poll window of the echo workers (see `majordomo worker --busy-poll`; 0: they sleep
    /// as soon as nothing is ready).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    worker_busy_poll: Duration,
    /// Runtime threads of each echo worker process (see `majordomo worker --threads`; 0: one
    /// per core).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Also measure another 7/MDP broker, already running at this endpoint, under the same load
    /// and with the same echo workers as ours.
    #[arg(long, requires = "external_pid")]
    external: Option<String>,
    /// Process id of the `--external` broker, for its CPU time and memory.
    #[arg(long, requires = "external")]
    external_pid: Option<u32>,
    /// Transport: tcp (loopback) or ipc (Unix domain sockets).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// Measure every run this many times and report the one with the median rate, with the
    /// range of rates seen.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The runs to make, comma separated; they are made in the order of the table whatever the
    /// order given. Default: every run but `freelance-failover`, which kills servers for half a
    /// minute.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = default_runs())]
    runs: Vec<RunKind>,
    /// How often a `titanic` round trip asks `titanic.reply` while its request is pending.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    titanic_poll: Duration,
    /// `majordomo titanic --in-flight-per-service` in the Titanic runs.
    #[arg(long, default_value_t = 16)]
    titanic_in_flight: usize,
    /// How long a `titanic-guide` client waits after each 300 before it asks `titanic.reply`
    /// again (the Guide's ticlient waits 100 ms).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    titanic_guide_poll: Duration,
    /// Python with pyzmq for the `titanic-guide` run's Guide server (default: `.venv/bin/python`
    /// in the project's directory, found from the current directory up).
    #[arg(long)]
    guide_python: Option<std::path::PathBuf>,
    /// The Guide-shaped Titanic server of the `titanic-guide` run (default:
    /// `integration-tests/python/guide_titanic.py` in the project's directory).
    #[arg(long)]
    guide_titanic: Option<std::path::PathBuf>,
    /// PARTIALs before the FINAL in the `stream` run.
    #[arg(long, default_value_t = 10)]
    stream_parts: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Every run but those asked for by name only.
fn default_runs() -> Vec<RunKind> {
    RunKind::value_variants()
        .iter()
        .copied()
        .filter(|&kind| kind != RunKind::FreelanceFailover)
        .collect()
}

impl BenchArgs {
    /// Runtime threads the benchmark's own process wants (`--threads`; 0: one per core).
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// A run of the benchmark, as `--runs` names it; the table lists them in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RunKind {
    /// Raw DEALER to ROUTER echo with the same load: the transport's one-hop ceiling.
    Ceiling,
    /// The same echo with one connection per worker and one request in flight on each.
    Serial,
    /// The protocol-free forwarder, one request per echo peer at a time (7/MDP's rule).
    Relay,
    /// The protocol-free forwarder with no limit per echo peer.
    RelayAll,
    /// Our broker (its ZMTP guard in front of tcp:// endpoints, as by default).
    Broker,
    /// Our broker with `--no-guard`: what the guard costs.
    NoGuard,
    /// Our broker with `--guard-relay`: the guard relaying each peer to its own zmq.rs
    /// connection instead of the front end.
    BrokerRelay,
    /// Our broker with CURVE (`--curve-secret-key-file`): clients and workers connect through
    /// this process's and the workers' outbound CURVE bridges. Set against `broker` (NULL
    /// through the same front end): what encryption costs.
    Curve,
    /// New CURVE connections to our broker, handshake only (greeting, HELLO, WELCOME,
    /// INITIATE, READY) then closed, from `clients` tasks: handshakes per second, and the
    /// broker's CPU per 100,000 of them.
    CurveHandshakes,
    /// No broker: `--workers` Freelance echo servers (`majordomo flserver`, 10/FLP) called by
    /// `--clients` Freelance clients of this process, each shared by `--in-flight` callers. Set
    /// against `broker` and `client-mux`. CPU and memory are the first server's.
    Freelance,
    /// Three Freelance servers and one client calling without pause; the server in use is
    /// killed (SIGKILL) five times, then frozen (SIGSTOP) five times, restarted after each: the
    /// time from each failure to the reply to the next request, printed before the table.
    FreelanceFailover,
    /// Our broker with `--metrics-listen` (the Prometheus recorder installed): what metrics
    /// cost.
    Metrics,
    /// Our broker with 18/MDP clients and workers answering each request with
    /// `--stream-parts` PARTIALs then a FINAL, each of the body: parts per second, to set
    /// against `broker`'s 7/MDP replies per second.
    Stream,
    /// Our broker with `--no-guard` on a Unix socket, behind a proxy that copies bytes between
    /// TCP and that socket without reading them: the cost of the relay hop alone.
    CopyRelay,
    /// Our broker with `--busy-poll` (skipped when `--busy-poll` is 0).
    Busypoll,
    /// Our broker (guarded, as by default) driven through the client library: `clients x
    /// in-flight` tasks of this process sharing one `Client`, which opens a connection per
    /// request in flight. Its CPU and memory figures are this process's: the callers' cost.
    ClientPool,
    /// The same callers sharing one `MuxClient`: every request tagged on one connection
    /// (`mmi.envelope`). Set against `client-pool`: rate and the callers' CPU per request.
    ClientMux,
    /// Titanic (`majordomo titanic`, a fresh store) in front of our broker and the echo
    /// workers: durable submits per second (`titanic.request` answered 200).
    TitanicSubmit,
    /// The same with `majordomo titanic --in-memory` (no store file, no fsync): submits per
    /// second without durability, to set against `titanic-submit`.
    TitanicMemory,
    /// The same as `titanic-submit`: whole round trips per second (submit, dispatch, reply
    /// fetched, close).
    Titanic,
    /// Sequential Guide-API clients (submit, poll `titanic.reply` every
    /// `--titanic-guide-poll` until 200, close) against `majordomo titanic` and then the
    /// Guide's Python Titanic (`guide_titanic.py`), each with our broker and the echo workers:
    /// round trips per second of each, ours over the Guide's, and each step's latencies.
    TitanicGuide,
    /// The broker at `--external` (only with `--external`).
    External,
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(
            self.to_possible_value()
                .expect("no run kind is skipped")
                .get_name(),
        )
    }
}

/// Makes the runs asked for, for each body size, and reports them.
pub async fn run(args: BenchArgs) -> Result<()> {
    ensure!(
        args.clients > 0 && args.workers > 0 && args.in_flight > 0,
        "clients, workers and in-flight must be positive"
    );
    let wanted = |kind: RunKind| args.runs.contains(&kind);
    let threads = args.server_threads.to_string();
    let mut runs = Vec::new();
    let mut comparisons = Vec::new();
    for &size in &args.sizes {
        if wanted(RunKind::Ceiling) || wanted(RunKind::Serial) {
            // The ceiling: raw zmq.rs DEALER to ROUTER echo, same size and same load.
            let echo = EchoServer::start(&args, &threads)?;
            if wanted(RunKind::Ceiling) {
                let ceiling = || {
                    measure(
                        &args,
                        echo.load(RunKind::Ceiling, size, args.clients, args.in_flight),
                    )
                };
                runs.push(median_of(args.repeat, ceiling).await?);
            }
            if wanted(RunKind::Serial) {
                // 7/MDP gives a worker one request at a time, so the broker-to-worker hop
                // carries at most one message per worker connection: the same echo with that
                // shape.
                let serial = || measure(&args, echo.load(RunKind::Serial, size, args.workers, 1));
                runs.push(median_of(args.repeat, serial).await?);
            }
        }
        // The relays: two hops with no protocol, one request per echo peer at a time (7/MDP's
        // rule) and then as many as the clients send (no rule).
        for (kind, window) in [(RunKind::Relay, 1), (RunKind::RelayAll, 0)] {
            if wanted(kind) {
                let target = || Target::Relay {
                    threads: &threads,
                    window,
                };
                let relay = || broker_run(&args, kind, size, target());
                runs.push(median_of(args.repeat, relay).await?);
            }
        }
        if wanted(RunKind::CopyRelay) && args.transport == Transport::Tcp {
            let target = || Target::CopyRelay { threads: &threads };
            let copied = || broker_run(&args, RunKind::CopyRelay, size, target());
            runs.push(median_of(args.repeat, copied).await?);
        }
        for (kind, busy_poll, guard, metrics) in [
            (RunKind::Broker, Duration::ZERO, GuardMode::Default, false),
            (RunKind::NoGuard, Duration::ZERO, GuardMode::Off, false),
            (
                RunKind::BrokerRelay,
                Duration::ZERO,
                GuardMode::Relay,
                false,
            ),
            (RunKind::Curve, Duration::ZERO, GuardMode::Curve, false),
            (RunKind::Metrics, Duration::ZERO, GuardMode::Default, true),
            (RunKind::Stream, Duration::ZERO, GuardMode::Default, false),
            (RunKind::Busypoll, args.busy_poll, GuardMode::Default, false),
        ] {
            if wanted(kind) && (kind != RunKind::Busypoll || !busy_poll.is_zero()) {
                let target = || Target::Ours {
                    threads: &threads,
                    busy_poll,
                    guard,
                    metrics,
                    parts: (kind == RunKind::Stream).then_some(args.stream_parts),
                };
                let ours = || broker_run(&args, kind, size, target());
                runs.push(median_of(args.repeat, ours).await?);
            }
        }
        if wanted(RunKind::Freelance) {
            let run = || freelance::run(&args, &threads, size);
            runs.push(median_of(args.repeat, run).await?);
        }
        if wanted(RunKind::FreelanceFailover) && size == args.sizes[0] {
            for failure in [freelance::Failure::Kill, freelance::Failure::Freeze] {
                let mut gaps = freelance::failover(&threads, failure).await?;
                gaps.sort();
                let ms = |d: &std::time::Duration| d.as_secs_f64() * 1000.0;
                eprintln!(
                    "freelance-failover ({failure:?}): from the failure of the server in use to the reply to the next request, over {} failures: p50 {:.1} ms, max {:.1} ms ({:?})",
                    gaps.len(),
                    ms(&gaps[gaps.len() / 2]),
                    ms(&gaps[gaps.len() - 1]),
                    gaps.iter().map(|g| format!("{:.1}", ms(g))).collect::<Vec<_>>()
                );
            }
        }
        // The handshake does not depend on the body size: measured once.
        if wanted(RunKind::CurveHandshakes) && size == args.sizes[0] {
            let handshakes = || curve::handshakes(&args, &threads);
            runs.push(median_of(args.repeat, handshakes).await?);
        }
        for kind in [RunKind::ClientPool, RunKind::ClientMux] {
            if wanted(kind) {
                let target = || Target::Ours {
                    threads: &threads,
                    busy_poll: Duration::ZERO,
                    guard: GuardMode::Default,
                    metrics: false,
                    parts: None,
                };
                let library = || broker_run(&args, kind, size, target());
                runs.push(median_of(args.repeat, library).await?);
            }
        }
        for kind in [
            RunKind::TitanicSubmit,
            RunKind::TitanicMemory,
            RunKind::Titanic,
        ] {
            if wanted(kind) {
                let store_kib = std::sync::Mutex::new(Vec::new());
                let run = || async {
                    let (run, bytes) = titanic::titanic(&args, kind, size).await?;
                    store_kib.lock().expect("not poisoned").push(bytes / 1024);
                    Ok(run)
                };
                runs.push(median_of(args.repeat, run).await?);
                let store_kib = store_kib.into_inner().expect("not poisoned");
                eprintln!("{kind} {size} B: store file KiB at the end of each run: {store_kib:?}");
            }
        }
        if wanted(RunKind::TitanicGuide) {
            comparisons.push(titanic_guide::compare(&args, size).await?);
        }
        if let (true, Some(endpoint), Some(pid)) =
            (wanted(RunKind::External), &args.external, args.external_pid)
        {
            let external = || {
                broker_run(
                    &args,
                    RunKind::External,
                    size,
                    Target::External { endpoint, pid },
                )
            };
            runs.push(median_of(args.repeat, external).await?);
        }
    }
    report(&args, &runs, &comparisons);
    Ok(())
}

/// Measures `repeat` times (at least once) and keeps the run with the median rate, noting the
/// range of rates.
async fn median_of<F, Fut>(repeat: usize, mut one: F) -> Result<Run>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Run>>,
{
    let mut all = Vec::new();
    for _ in 0..repeat.max(1) {
        all.push(one().await?);
    }
    all.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let (rate_min, rate_max) = (all[0].rate, all[all.len() - 1].rate);
    let mut median = all.swap_remove(all.len() / 2);
    median.rate_min = rate_min;
    median.rate_max = rate_max;
    Ok(median)
}
