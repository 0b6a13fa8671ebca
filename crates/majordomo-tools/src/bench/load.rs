//! The load generator: client tasks that keep requests in flight against what is measured,
//! check every reply, and record latencies while the run is measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child::{cpu_seconds, memory};
use anyhow::{bail, ensure, Result};
use bytes::{BufMut, Bytes, BytesMut};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::clients::{caller, Library};
use super::report::Run;
use super::{BenchArgs, RunKind};

/// Phases of a run, shared with its clients: replies are counted only while it is `MEASURE`, and
/// no request is sent once it is `DRAIN`.
pub(super) const WARMUP: u8 = 0;
pub(super) const MEASURE: u8 = 1;
pub(super) const DRAIN: u8 = 2;

/// A DEALER socket connected to `endpoint`, trying for a bounded time while it comes up.
pub(super) async fn connect(endpoint: &str) -> Result<DealerSocket> {
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
pub(super) enum Mode {
    /// No protocol: `[empty, body]`, to the echo server or the relay.
    Raw,
    /// 7/MDP through the broker: `[empty, MDPC01, echo, body]`.
    Broker,
    /// 18/MDP through the broker, `[MDPC02, 0x01, echo, body]`, answered with PARTIALs (0x02)
    /// and a FINAL (0x03) that each carry the body; every part is counted.
    Stream,
    /// 7/MDP through the client library: `clients x in_flight` callers sharing one
    /// [`Client`](majordomo_client::Client) (a connection per request in flight).
    Pool,
    /// The same callers sharing one [`MuxClient`](majordomo_client::MuxClient) (one
    /// connection, tagged requests).
    Mux,
    /// `clients` Freelance clients (10/FLP), each shared by `in_flight` callers, straight to
    /// the servers: the load's endpoint lists them, comma-separated.
    Freelance,
}

/// What one client (or caller) saw.
#[derive(Default)]
pub(super) struct ClientResult {
    /// From each request to its reply (its FINAL, in [`Mode::Stream`]).
    pub(super) latencies_us: Vec<u32>,
    /// Messages received while measured: replies, or every part in [`Mode::Stream`].
    pub(super) measured: u64,
    /// What went wrong; the run fails if anything did.
    pub(super) errors: Vec<String>,
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
            Mode::Broker | Mode::Pool | Mode::Mux | Mode::Freelance => vec![
                Bytes::new(),
                Bytes::from_static(b"MDPC01"),
                Bytes::from_static(b"echo"),
                body.freeze(),
            ],
            Mode::Stream => vec![
                Bytes::from_static(b"MDPC02"),
                Bytes::from_static(&[0x01]),
                Bytes::from_static(b"echo"),
                body.freeze(),
            ],
        };
        ZmqMessage::try_from(frames).expect("frames")
    };
    let header = match mode {
        Mode::Raw => 1,
        Mode::Broker | Mode::Stream | Mode::Pool | Mode::Mux | Mode::Freelance => 3,
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
        // Whether this message ends its request (always, but for a PARTIAL).
        let mut last = true;
        let ok_header = frames.len() == header + 1
            && match mode {
                Mode::Raw => frames[0].is_empty(),
                Mode::Broker | Mode::Pool | Mode::Mux | Mode::Freelance => {
                    frames[0].is_empty()
                        && frames[1].as_ref() == b"MDPC01"
                        && frames[2].as_ref() == b"echo"
                }
                Mode::Stream => {
                    last = frames[1].as_ref() == [0x03];
                    frames[0].as_ref() == b"MDPC02"
                        && (last || frames[1].as_ref() == [0x02])
                        && frames[2].as_ref() == b"echo"
                }
            };
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
        let current = phase.load(Ordering::Relaxed);
        if !last {
            if from != id || !outstanding.contains_key(&seq) {
                result.errors.push(format!(
                    "client {id}: part for client {from} seq {seq} it did not expect"
                ));
                break;
            }
            if current == MEASURE {
                result.measured += 1;
            }
            continue;
        }
        let Some(sent) = (from == id).then(|| outstanding.remove(&seq)).flatten() else {
            result.errors.push(format!(
                "client {id}: reply for client {from} seq {seq} it did not expect"
            ));
            break;
        };
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

/// What one measured run drives.
pub(super) struct Load<'a> {
    pub(super) kind: RunKind,
    pub(super) mode: Mode,
    pub(super) endpoint: &'a str,
    pub(super) server_pid: u32,
    pub(super) size: usize,
    pub(super) clients: usize,
    pub(super) in_flight: usize,
}

/// Drives `load` through the warm-up and the measured time, then collects every client's figures
/// and the server's CPU time and memory; fails if any reply was lost or mismatched.
pub(super) async fn measure(args: &BenchArgs, load: Load<'_>) -> Result<Run> {
    let Load {
        kind,
        mode,
        endpoint,
        server_pid,
        size,
        clients,
        in_flight,
    } = load;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> = if let Mode::Pool | Mode::Mux = mode {
        let library = Library::new(mode == Mode::Mux, endpoint);
        (0..clients * in_flight)
            .map(|id| tokio::spawn(caller(library.clone(), id as u64, size, phase.clone())))
            .collect()
    } else if mode == Mode::Freelance {
        let servers: Vec<String> = endpoint.split(',').map(str::to_owned).collect();
        let mut tasks = Vec::new();
        for client in 0..clients {
            let library = Library::freelance(&servers)?;
            for slot in 0..in_flight {
                let id = (client * in_flight + slot) as u64;
                tasks.push(tokio::spawn(caller(
                    library.clone(),
                    id,
                    size,
                    phase.clone(),
                )));
            }
        }
        tasks
    } else {
        (0..clients)
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
            .collect()
    };
    let window = Window::run(args, server_pid, &phase).await?;
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
    window.into_run(kind, size, clients, in_flight, requests, latencies)
}

/// The warm-up and the measured time of a run, with the server's CPU time and memory over it.
pub(super) struct Window {
    pid: u32,
    seconds: f64,
    cpu: f64,
    rss_start_kib: u64,
}

impl Window {
    /// Waits out the warm-up, measures for the run's duration (the clients see `MEASURE`),
    /// then sets `DRAIN`.
    pub(super) async fn run(args: &BenchArgs, pid: u32, phase: &AtomicU8) -> Result<Self> {
        tokio::time::sleep(args.warmup).await;
        let rss_start_kib = memory(pid)?.rss_kib;
        let cpu_start = cpu_seconds(pid)?;
        let started = Instant::now();
        phase.store(MEASURE, Ordering::Relaxed);
        tokio::time::sleep(args.duration).await;
        phase.store(DRAIN, Ordering::Relaxed);
        Ok(Self {
            pid,
            seconds: started.elapsed().as_secs_f64(),
            cpu: cpu_seconds(pid)? - cpu_start,
            rss_start_kib,
        })
    }

    /// The run's figures: `requests` done in the window, with `latencies` (any order, not
    /// empty); the server's memory is read now.
    pub(super) fn into_run(
        self,
        kind: RunKind,
        size: usize,
        clients: usize,
        in_flight: usize,
        requests: u64,
        mut latencies: Vec<u32>,
    ) -> Result<Run> {
        let end = memory(self.pid)?;
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        let rate = requests as f64 / self.seconds;
        Ok(Run {
            kind,
            clients,
            in_flight,
            size,
            requests,
            seconds: self.seconds,
            rate,
            rate_min: rate,
            rate_max: rate,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            max_us: *latencies.last().expect("not empty"),
            cpu_s_per_100k: self.cpu / requests as f64 * 100_000.0,
            rss_start_kib: self.rss_start_kib,
            rss_end_kib: end.rss_kib,
            peak_kib: end.peak_kib,
        })
    }
}
