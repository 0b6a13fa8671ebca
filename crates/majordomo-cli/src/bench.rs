//! `majordomo bench`: the transport's ceiling and our broker's throughput, latency, CPU and
//! memory, measured in one run on loopback.
//!
//! Besides the broker, it measures what the transport allows: a raw ROUTER echo server (one
//! hop), and a relay that forwards between clients and echo peers with no protocol at all (two
//! hops, as a broker does), with 7/MDP's one request per worker at a time and without it.
//! The broker (and each of those servers) runs as a child process of this binary, so its CPU
//! time and memory are its own; each echo worker is a `majordomo worker echo`
//! child process (or, with `--in-process-workers`, a task here); the clients run in this process
//! and share the machine with them, as a load generator does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use futures::FutureExt;
use majordomo_broker::HeartbeatConfig;
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::child::{cpu_seconds, memory_kib, Child};

/// Options of the benchmark.
#[derive(Args, Clone)]
pub(crate) struct BenchArgs {
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
    /// Runtime threads of the broker and echo server processes (1: single-threaded runtime,
    /// 0: one per core).
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Runtime threads of this process, where the clients (and in-process workers) run (0: one
    /// per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
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
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "ipc"])]
    transport: String,
    /// Measure every run this many times and report the one with the median rate, with the
    /// range of rates seen.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The runs to make, comma separated, in the order of the table: ceiling, serial, relay,
    /// relay-all, broker, busypoll (and external, with `--external`).
    #[arg(long, value_delimiter = ',', default_values_t = RUNS.map(String::from), value_parser = RUNS)]
    runs: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Hidden helper: a raw ROUTER echo server, the ceiling's other end.
#[derive(Args)]
pub(crate) struct EchoArgs {
    /// Endpoint to bind.
    #[arg(long)]
    bind: String,
    /// Runtime threads (1: single-threaded runtime, 0: one per core).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
}

/// The names `--runs` accepts.
const RUNS: [&str; 7] = [
    "ceiling",
    "serial",
    "relay",
    "relay-all",
    "broker",
    "busypoll",
    "external",
];

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DRAIN: u8 = 2;

/// A free endpoint on loopback: an unused TCP port, or a fresh Unix socket path for ipc.
pub(crate) fn free_endpoint(transport: &str) -> Result<String> {
    if transport == "ipc" {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "majordomo-bench-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        return Ok(format!("ipc://{}", path.display()));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("tcp://127.0.0.1:{port}"))
}

async fn connect(endpoint: &str) -> Result<DealerSocket> {
    for _ in 0..100 {
        let mut socket = DealerSocket::new();
        if let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_millis(200), socket.connect(endpoint)).await
        {
            return Ok(socket);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("cannot connect to {endpoint}")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// No protocol: `[empty, body]`, to the echo server or the relay.
    Raw,
    /// 7/MDP through the broker: `[empty, MDPC01, echo, body]`.
    Broker,
}

#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<u32>,
    measured: u64,
    errors: Vec<String>,
}

/// One client: keeps `in_flight` requests outstanding, checks every reply against its request.
async fn client(
    endpoint: String,
    mode: Mode,
    id: u64,
    size: usize,
    in_flight: usize,
    phase: Arc<AtomicU8>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let mut socket = match connect(&endpoint).await {
        Ok(s) => s,
        Err(e) => {
            result.errors.push(e.to_string());
            return result;
        }
    };
    let size = size.max(16);
    let filler: Bytes = (0..size - 16)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect::<Vec<u8>>()
        .into();
    let make = |seq: u64| -> ZmqMessage {
        let mut body = BytesMut::with_capacity(size);
        body.put_u64(id);
        body.put_u64(seq);
        body.extend_from_slice(&filler);
        let frames = match mode {
            Mode::Raw => vec![Bytes::new(), body.freeze()],
            Mode::Broker => vec![
                Bytes::new(),
                Bytes::from_static(b"MDPC01"),
                Bytes::from_static(b"echo"),
                body.freeze(),
            ],
        };
        ZmqMessage::try_from(frames).expect("frames")
    };
    let header = match mode {
        Mode::Raw => 1,
        Mode::Broker => 3,
    };
    let mut outstanding: HashMap<u64, Instant> = HashMap::with_capacity(in_flight);
    let mut next_seq = 0u64;
    for _ in 0..in_flight {
        outstanding.insert(next_seq, Instant::now());
        if let Err(e) = socket.send(make(next_seq)).await {
            result.errors.push(format!("send: {e}"));
            return result;
        }
        next_seq += 1;
    }
    while !outstanding.is_empty() {
        let frames = match tokio::time::timeout(Duration::from_secs(5), socket.recv()).await {
            Ok(Ok(msg)) => msg.into_vec(),
            Ok(Err(e)) => {
                result.errors.push(format!("recv: {e}"));
                break;
            }
            Err(_) => {
                result.errors.push(format!(
                    "client {id}: {} replies lost (none within 5 s)",
                    outstanding.len()
                ));
                break;
            }
        };
        let ok_header = frames.len() == header + 1
            && frames[0].is_empty()
            && (mode == Mode::Raw
                || (frames[1].as_ref() == b"MDPC01" && frames[2].as_ref() == b"echo"));
        let body = &frames[frames.len() - 1];
        if !ok_header || body.len() != size || body[16..] != filler[..] {
            result.errors.push(format!(
                "client {id}: malformed reply {:?}",
                frames.iter().map(|f| f.len()).collect::<Vec<_>>()
            ));
            break;
        }
        let from = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
        let Some(sent) = (from == id).then(|| outstanding.remove(&seq)).flatten() else {
            result.errors.push(format!(
                "client {id}: reply for client {from} seq {seq} it did not expect"
            ));
            break;
        };
        let current = phase.load(Ordering::Relaxed);
        if current == MEASURE {
            result
                .latencies_us
                .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            result.measured += 1;
        }
        if current != DRAIN {
            outstanding.insert(next_seq, Instant::now());
            if let Err(e) = socket.send(make(next_seq)).await {
                result.errors.push(format!("send: {e}"));
                break;
            }
            next_seq += 1;
        }
    }
    result
}

/// Figures of one measured run.
#[derive(Debug, Clone)]
struct Run {
    mode: &'static str,
    clients: usize,
    in_flight: usize,
    size: usize,
    requests: u64,
    seconds: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    cpu_s_per_100k: f64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    peak_kib: u64,
    /// Lowest and highest rate over the repeats (both the run's own rate without repeats).
    rate_range: (f64, f64),
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"clients\":{},\"in_flight\":{},\"size\":{},\"requests\":{},\"seconds\":{:.3},\"requests_per_s\":{:.0},\"requests_per_s_min\":{:.0},\"requests_per_s_max\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"server_cpu_s_per_100k\":{:.3},\"server_rss_start_kib\":{},\"server_rss_end_kib\":{},\"server_peak_rss_kib\":{}}}",
            self.mode, self.clients, self.in_flight, self.size, self.requests, self.seconds, self.rate(),
            self.rate_range.0, self.rate_range.1, self.p50_us, self.p99_us, self.max_us,
            self.cpu_s_per_100k, self.rss_start_kib, self.rss_end_kib, self.peak_kib
        )
    }
}

/// What one measured run drives.
struct Load<'a> {
    label: &'static str,
    mode: Mode,
    endpoint: &'a str,
    server_pid: u32,
    size: usize,
    clients: usize,
    in_flight: usize,
}

async fn measure(args: &BenchArgs, load: Load<'_>) -> Result<Run> {
    let Load {
        label,
        mode,
        endpoint,
        server_pid,
        size,
        clients,
        in_flight,
    } = load;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            tokio::spawn(client(
                endpoint.to_owned(),
                mode,
                id as u64,
                size,
                in_flight,
                phase.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(args.warmup).await;
    let (rss_start, _) = memory_kib(server_pid)?;
    let cpu_start = cpu_seconds(server_pid)?;
    let started = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(args.duration).await;
    phase.store(DRAIN, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server_pid)? - cpu_start;
    let mut latencies = Vec::new();
    let mut requests = 0;
    let mut errors = Vec::new();
    for task in tasks {
        let r = task.await?;
        latencies.extend(r.latencies_us);
        requests += r.measured;
        errors.extend(r.errors);
    }
    ensure!(
        errors.is_empty(),
        "replies lost or mismatched: {}",
        errors.join("; ")
    );
    ensure!(!latencies.is_empty(), "no reply during the measured run");
    let (rss_end, peak) = memory_kib(server_pid)?;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    Ok(Run {
        mode: label,
        clients,
        in_flight,
        size,
        requests,
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: *latencies.last().expect("not empty"),
        cpu_s_per_100k: cpu / requests as f64 * 100_000.0,
        rss_start_kib: rss_start,
        rss_end_kib: rss_end,
        peak_kib: peak,
        rate_range: (requests as f64 / seconds, requests as f64 / seconds),
    })
}

pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    ensure!(
        args.clients > 0 && args.workers > 0 && args.in_flight > 0,
        "clients, workers and in-flight must be positive"
    );
    let wanted = |name: &str| args.runs.iter().any(|r| r == name);
    let threads = args.server_threads.to_string();
    let mut runs = Vec::new();
    for &size in &args.sizes {
        if wanted("ceiling") || wanted("serial") {
            // The ceiling: raw zmq.rs DEALER to ROUTER echo, same size and same load.
            let echo_ep = free_endpoint(&args.transport)?;
            let echo = Child::spawn(
                &["bench-echo", "--bind", &echo_ep, "--threads", &threads],
                "warn",
            )?;
            let load = |label, clients, in_flight| Load {
                label,
                mode: Mode::Raw,
                endpoint: &echo_ep,
                server_pid: echo.pid(),
                size,
                clients,
                in_flight,
            };
            if wanted("ceiling") {
                let ceiling = || measure(&args, load("ceiling", args.clients, args.in_flight));
                runs.push(median_of(args.repeat, ceiling).await?);
            }
            if wanted("serial") {
                // 7/MDP gives a worker one request at a time, so the broker-to-worker hop
                // carries at most one message per worker connection: the same echo with that
                // shape.
                let serial = || measure(&args, load("serial", args.workers, 1));
                runs.push(median_of(args.repeat, serial).await?);
            }
        }
        // The relays: two hops with no protocol, one request per echo peer at a time (7/MDP's
        // rule) and then as many as the clients send (no rule).
        for (label, window) in [("relay", 1), ("relay-all", 0)] {
            if wanted(label) {
                let target = || Target::Relay {
                    threads: &threads,
                    window,
                };
                let relay = || broker_run(&args, label, size, target());
                runs.push(median_of(args.repeat, relay).await?);
            }
        }
        for (label, busy_poll) in [("broker", Duration::ZERO), ("busypoll", args.busy_poll)] {
            if wanted(label) && (label == "broker" || !busy_poll.is_zero()) {
                let target = || Target::Ours {
                    threads: &threads,
                    busy_poll,
                };
                let ours = || broker_run(&args, label, size, target());
                runs.push(median_of(args.repeat, ours).await?);
            }
        }
        if let (true, Some(endpoint), Some(pid)) =
            (wanted("external"), &args.external, args.external_pid)
        {
            let external =
                || broker_run(&args, "external", size, Target::External { endpoint, pid });
            runs.push(median_of(args.repeat, external).await?);
        }
    }
    report(&args, &runs);
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
    all.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let range = (all[0].rate(), all[all.len() - 1].rate());
    let mut median = all.swap_remove(all.len() / 2);
    median.rate_range = range;
    Ok(median)
}

/// The broker a run measures.
enum Target<'a> {
    /// Ours, started as a child process with these settings.
    Ours {
        threads: &'a str,
        busy_poll: Duration,
    },
    /// Another broker, already running.
    External { endpoint: &'a str, pid: u32 },
    /// The protocol-free forwarder, its echo peers holding up to `window` requests each.
    Relay { threads: &'a str, window: usize },
}

/// One measured run of a broker (ours, another one, or the relay) in its own process, with its
/// echo workers or the relay's echo peers (processes, or tasks here with
/// `--in-process-workers`).
async fn broker_run(
    args: &BenchArgs,
    label: &'static str,
    size: usize,
    target: Target<'_>,
) -> Result<Run> {
    let relay = matches!(target, Target::Relay { .. });
    let (broker_ep, broker_pid, _broker) = match target {
        Target::Ours { threads, busy_poll } => {
            let endpoint = free_endpoint(&args.transport)?;
            let busy_poll = humantime::format_duration(busy_poll).to_string();
            let broker = Child::spawn(
                &[
                    "broker",
                    "--bind",
                    &endpoint,
                    "--threads",
                    threads,
                    "--busy-poll",
                    &busy_poll,
                ],
                "warn",
            )?;
            (endpoint, broker.pid(), Some(broker))
        }
        Target::External { endpoint, pid } => (endpoint.to_owned(), pid, None),
        Target::Relay { threads, window } => {
            let endpoint = free_endpoint(&args.transport)?;
            let relay = Child::spawn(
                &[
                    "bench-relay",
                    "--bind",
                    &endpoint,
                    "--threads",
                    threads,
                    "--window",
                    &window.to_string(),
                ],
                "warn",
            )?;
            (endpoint, relay.pid(), Some(relay))
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    // Each in its own process by default, as deployed: tasks beside the clients wait behind the
    // clients' work on the same runtime.
    let mut worker_processes = Vec::new();
    let worker_busy_poll = humantime::format_duration(args.worker_busy_poll).to_string();
    let worker_threads = args.worker_threads.to_string();
    for _ in 0..args.workers {
        let mut stopped = stopped.clone();
        match (relay, args.in_process_workers) {
            (true, false) => worker_processes.push(Child::spawn(
                &["bench-relay-peer", "--connect", &broker_ep],
                "warn",
            )?),
            (true, true) => {
                let peer = relay_peer(RelayPeerArgs {
                    connect: broker_ep.clone(),
                });
                workers.push(tokio::spawn(async move {
                    tokio::select! {
                        served = peer => served,
                        _ = stopped.wait_for(|s| *s) => Ok(()),
                    }
                }));
            }
            (false, false) => worker_processes.push(Child::spawn(
                &[
                    "worker",
                    "--connect",
                    &broker_ep,
                    "--busy-poll",
                    &worker_busy_poll,
                    "--threads",
                    &worker_threads,
                    "echo",
                ],
                "warn",
            )?),
            (false, true) => {
                let worker = Worker::new(
                    broker_ep.clone(),
                    "echo",
                    WorkerConfig {
                        heartbeat: HeartbeatConfig::default(),
                        busy_poll: args.worker_busy_poll,
                        ..WorkerConfig::default()
                    },
                );
                let echo = handler_fn(|body| async move { Ok(body) });
                let served = worker.run(echo, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
                workers.push(tokio::spawn(async move { Ok(served.await?) }));
            }
        }
    }
    let load = Load {
        label,
        mode: if relay { Mode::Raw } else { Mode::Broker },
        endpoint: &broker_ep,
        server_pid: broker_pid,
        size,
        clients: args.clients,
        in_flight: args.in_flight,
    };
    let run = measure(args, load).await;
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    for w in worker_processes {
        w.terminate().await;
    }
    run
}

fn report(args: &BenchArgs, runs: &[Run]) {
    let rate = |mode: &str, size: usize| {
        runs.iter()
            .find(|r| r.mode == mode && r.size == size)
            .map(Run::rate)
    };
    let ratio = |mode: &str, base: &str, size: usize| match (rate(mode, size), rate(base, size)) {
        (Some(b), Some(c)) if c > 0.0 => Some(b / c),
        _ => None,
    };
    let brokers = ["relay", "relay-all", "broker", "busypoll", "external"];
    // Each broker against the one-hop echo, and against the relay: two hops with 7/MDP's one
    // request per worker at a time and no protocol work.
    let ratios = |base: &'static str| {
        brokers
            .iter()
            .filter(move |mode| **mode != base)
            .flat_map(move |mode| {
                args.sizes
                    .iter()
                    .filter_map(move |s| ratio(mode, base, *s).map(|r| (*mode, *s, r)))
            })
    };
    if args.json {
        let items: Vec<String> = runs.iter().map(Run::json).collect();
        let json = |base| {
            ratios(base)
                .map(|(mode, size, r)| format!("\"{mode}/{size}\":{r:.3}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{{\"clients\":{},\"workers\":{},\"in_flight\":{},\"repeat\":{},\"transport\":\"{}\",\"busy_poll_us\":{},\"worker_busy_poll_us\":{},\"runs\":[{}],\"over_ceiling\":{{{}}},\"over_relay\":{{{}}}}}",
            args.clients,
            args.workers,
            args.in_flight,
            args.repeat.max(1),
            args.transport,
            args.busy_poll.as_micros(),
            args.worker_busy_poll.as_micros(),
            items.join(","),
            json("ceiling"),
            json("relay")
        );
        return;
    }
    println!(
        "{} clients x {} in flight, {} echo workers{} (busy-poll {}), {} transport, {:?} measured after {:?} warm-up, server runtime threads {}; every reply checked",
        args.clients,
        args.in_flight,
        args.workers,
        if args.in_process_workers {
            " in this process"
        } else {
            " in their own processes"
        },
        humantime::format_duration(args.worker_busy_poll),
        args.transport,
        args.duration,
        args.warmup,
        args.server_threads
    );
    println!(
        "ceiling: raw DEALER-ROUTER echo, same load; serial: the same echo with {} connections x 1 in flight (7/MDP's worker hop); relay: a forwarder with no protocol, one request per echo peer at a time (7/MDP's rule); relay-all: the same with no limit per peer; busypoll: broker --busy-poll {}",
        args.workers,
        humantime::format_duration(args.busy_poll)
    );
    if let Some(endpoint) = &args.external {
        println!("external: the broker at {endpoint}, same load and workers");
    }
    if args.repeat > 1 {
        println!(
            "each run measured {} times: the run with the median rate is shown, with the range of rates",
            args.repeat
        );
    }
    println!(
        "{:<9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>13} {:>22}",
        "run",
        "bytes",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s/100k",
        "server rss KiB (peak)"
    );
    for r in runs {
        let range = if args.repeat > 1 {
            format!("  range {:.0}-{:.0}", r.rate_range.0, r.rate_range.1)
        } else {
            String::new()
        };
        println!(
            "{:<9} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>13.2} {:>10} -> {:>6} ({}){range}",
            r.mode,
            r.size,
            r.rate(),
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            f64::from(r.max_us) / 1000.0,
            r.cpu_s_per_100k,
            r.rss_start_kib,
            r.rss_end_kib,
            r.peak_kib
        );
    }
    for base in ["ceiling", "relay"] {
        for (mode, size, r) in ratios(base) {
            println!("{mode}/{base} at {size} bytes: {r:.2}");
        }
    }
}

/// Hidden helper: a two-hop forwarder with no protocol, the transport's limit for a broker.
#[derive(Args)]
pub(crate) struct RelayArgs {
    /// Endpoint to bind, for clients and echo peers alike.
    #[arg(long)]
    bind: String,
    /// Requests in flight per echo peer (1: 7/MDP's shape; 0: no limit).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Runtime threads (1: single-threaded runtime, 0: one per core).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
}

/// Hidden helper: an echo peer of the relay.
#[derive(Args)]
pub(crate) struct RelayPeerArgs {
    /// The relay's endpoint.
    #[arg(long)]
    connect: String,
}

/// The relay: clients send `[empty, body]`; peers announce themselves with one `[ready]` frame
/// and then echo what they are given. Requests go to peers with room in their window, oldest
/// first, and replies straight back to their client: the routing a 7/MDP broker does, without
/// parsing, validation, services, heartbeats or expiry. Its loop is the broker's: take what is
/// ready (up to a batch), then send what it caused, and yield after a full batch.
pub(crate) async fn relay(args: RelayArgs) -> Result<()> {
    let mut socket = RouterSocket::new();
    socket.bind(&args.bind).await?;
    let mut relay = Relay {
        window: if args.window == 0 {
            usize::MAX
        } else {
            args.window
        },
        load: HashMap::new(),
        ready: VecDeque::new(),
        pending: VecDeque::new(),
        out: Vec::new(),
    };
    loop {
        relay.handle(socket.recv().await?);
        let mut full = true;
        for _ in 1..RELAY_BATCH {
            match socket.recv().now_or_never() {
                Some(msg) => relay.handle(msg?),
                None => {
                    full = false;
                    break;
                }
            }
        }
        for msg in relay.out.drain(..) {
            // A peer that left loses its message, as with a broker; the bench counts it lost.
            if let Err(error) = socket.send(msg).await {
                tracing::warn!(%error, "relay: send failed");
            }
        }
        if full {
            tokio::task::yield_now().await;
        }
    }
}

/// Most messages the relay takes before it sends what they caused, as the broker does.
const RELAY_BATCH: usize = 64;

/// The relay's state.
struct Relay {
    /// Most requests one peer holds.
    window: usize,
    /// Peers and how many requests each holds.
    load: HashMap<Bytes, usize>,
    /// The peers with room, each once.
    ready: VecDeque<Bytes>,
    /// Requests waiting for a peer.
    pending: VecDeque<Vec<Bytes>>,
    /// Messages to send.
    out: Vec<ZmqMessage>,
}

impl Relay {
    fn handle(&mut self, msg: ZmqMessage) {
        let mut frames = msg.into_vec();
        if frames.len() < 2 {
            return;
        }
        let from = frames[0].clone();
        if let Some(held) = self.load.get_mut(&from) {
            // A reply `[peer, client, empty, body]`: back to its client.
            if *held == self.window {
                self.ready.push_back(from);
            }
            *held -= 1;
            frames.remove(0);
            self.out.push(ZmqMessage::try_from(frames).expect("frames"));
        } else if frames.len() == 2 && frames[1].as_ref() == b"ready" {
            self.load.insert(from.clone(), 0);
            self.ready.push_back(from);
        } else {
            self.pending.push_back(frames);
        }
        while !self.pending.is_empty() {
            let Some(peer) = self.ready.pop_front() else {
                break;
            };
            let mut request = self.pending.pop_front().expect("not empty");
            request.insert(0, peer.clone());
            let held = self.load.get_mut(&peer).expect("known peer");
            *held += 1;
            if *held < self.window {
                self.ready.push_back(peer);
            }
            self.out
                .push(ZmqMessage::try_from(request).expect("frames"));
        }
    }
}

/// A relay peer: announces itself, then echoes every request.
pub(crate) async fn relay_peer(args: RelayPeerArgs) -> Result<()> {
    let mut socket = connect(&args.connect).await?;
    socket.send(ZmqMessage::from("ready")).await?;
    loop {
        let msg = socket.recv().await?;
        socket.send(msg).await?;
    }
}

/// The ceiling's server: echoes every message back to its sender.
pub(crate) async fn echo(args: EchoArgs) -> Result<()> {
    let mut socket = RouterSocket::new();
    socket.bind(&args.bind).await?;
    loop {
        let msg = socket.recv().await?;
        if msg.len() >= 2 {
            socket.send(msg).await?;
        }
    }
}
