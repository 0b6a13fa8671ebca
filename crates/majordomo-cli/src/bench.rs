//! `majordomo bench`: the transport's ceiling and our broker's throughput, latency, CPU and
//! memory, measured in one run on loopback.
//!
//! The broker (and, for the ceiling, a raw ROUTER echo server) runs as a child process of this
//! binary, so its CPU time and memory are its own; clients and workers run in this process and
//! share the machine with it, as a load generator does.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use majordomo_broker::HeartbeatConfig;
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

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
    /// Runtime threads of this process, where clients and workers run (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
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

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DRAIN: u8 = 2;

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    fn spawn(args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting child process")?;
        Ok(Self(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// CPU seconds (user + system) of a process, from /proc (clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}

/// (current, peak) resident memory of a process in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn free_endpoint() -> Result<String> {
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
    /// Raw DEALER to ROUTER echo: `[empty, body]`.
    Ceiling,
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
            Mode::Ceiling => vec![Bytes::new(), body.freeze()],
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
        Mode::Ceiling => 1,
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
            && (mode == Mode::Ceiling
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
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"size\":{},\"requests\":{},\"seconds\":{:.3},\"requests_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"server_cpu_s_per_100k\":{:.3},\"server_rss_start_kib\":{},\"server_rss_end_kib\":{},\"server_peak_rss_kib\":{}}}",
            self.mode, self.size, self.requests, self.seconds, self.rate(), self.p50_us, self.p99_us, self.max_us,
            self.cpu_s_per_100k, self.rss_start_kib, self.rss_end_kib, self.peak_kib
        )
    }
}

async fn measure(
    args: &BenchArgs,
    mode: Mode,
    endpoint: &str,
    server_pid: u32,
    size: usize,
) -> Result<Run> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            tokio::spawn(client(
                endpoint.to_owned(),
                mode,
                id as u64,
                size,
                args.in_flight,
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
        mode: if mode == Mode::Ceiling {
            "ceiling"
        } else {
            "broker"
        },
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
    })
}

pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    ensure!(
        args.clients > 0 && args.workers > 0 && args.in_flight > 0,
        "clients, workers and in-flight must be positive"
    );
    let mut runs = Vec::new();
    for &size in &args.sizes {
        // The ceiling: raw zmq.rs DEALER to ROUTER echo, same size and same load.
        let echo_ep = free_endpoint()?;
        let threads = args.server_threads.to_string();
        let echo = Child::spawn(&["bench-echo", "--bind", &echo_ep, "--threads", &threads])?;
        runs.push(measure(&args, Mode::Ceiling, &echo_ep, echo.pid(), size).await?);
        drop(echo);

        // Our broker in its own process, echo workers here.
        let broker_ep = free_endpoint()?;
        let broker = Child::spawn(&["broker", "--bind", &broker_ep, "--threads", &threads])?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for _ in 0..args.workers {
            let mut stopped = stopped.clone();
            let worker = Worker::new(
                broker_ep.clone(),
                "echo",
                WorkerConfig {
                    heartbeat: HeartbeatConfig::default(),
                    ..WorkerConfig::default()
                },
            );
            workers.push(tokio::spawn(worker.run(
                handler_fn(|body| async move { Ok(body) }),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )));
        }
        runs.push(measure(&args, Mode::Broker, &broker_ep, broker.pid(), size).await?);
        let _ = stop.send(true);
        for w in workers {
            w.await??;
        }
        drop(broker);
    }
    report(&args, &runs);
    Ok(())
}

fn report(args: &BenchArgs, runs: &[Run]) {
    let ratio = |size: usize| {
        let find = |mode| {
            runs.iter()
                .find(|r| r.mode == mode && r.size == size)
                .map(Run::rate)
        };
        match (find("broker"), find("ceiling")) {
            (Some(b), Some(c)) if c > 0.0 => b / c,
            _ => 0.0,
        }
    };
    if args.json {
        let items: Vec<String> = runs.iter().map(Run::json).collect();
        let ratios: Vec<String> = args
            .sizes
            .iter()
            .map(|s| format!("\"{s}\":{:.3}", ratio(*s)))
            .collect();
        println!(
            "{{\"clients\":{},\"workers\":{},\"in_flight\":{},\"runs\":[{}],\"broker_over_ceiling\":{{{}}}}}",
            args.clients,
            args.workers,
            args.in_flight,
            items.join(","),
            ratios.join(",")
        );
        return;
    }
    println!(
        "{} clients x {} in flight, {} echo workers, {:?} measured after {:?} warm-up, server runtime threads {}; every reply checked",
        args.clients, args.in_flight, args.workers, args.duration, args.warmup, args.server_threads
    );
    println!(
        "{:<8} {:>6} {:>10} {:>8} {:>8} {:>8} {:>13} {:>22}",
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
        println!(
            "{:<8} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>13.2} {:>10} -> {:>6} ({})",
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
    for size in &args.sizes {
        println!("broker/ceiling at {size} bytes: {:.2}", ratio(*size));
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
