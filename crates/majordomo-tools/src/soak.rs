//! `majordomo soak`: broker and workers as separate processes, clients in this one, and random
//! kills, freezes and restarts for a set duration; prints what was sent, answered, retried and
//! lost, and the broker's peak memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use majordomo_client::{Client, ClientConfig, ClientError};

use crate::bins::spawn_majordomo;
use crate::child::{memory, Child};
use crate::endpoint::{free_endpoint, Transport};

/// Options of the soak run.
#[derive(Args)]
pub struct SoakArgs {
    /// How long to run, e.g. 10m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Mean time between two faults (a worker killed, frozen or restarted, or the broker killed).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Attempts a client makes for one request before counting it lost.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
    /// Busy-poll window of the broker and the workers (see `broker --busy-poll`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    busy_poll: Duration,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    wrong: AtomicU64,
}

/// A small xorshift generator for choosing faults.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// Peak resident memory of the broker in KiB (0 once it is gone).
fn broker_peak_kib(broker: &Child) -> u64 {
    memory(broker.pid()).map_or(0, |memory| memory.peak_kib)
}

const HB: [&str; 4] = ["--heartbeat", "250ms", "--liveness", "3"];

/// Starts a broker on `endpoint`; a restart may find the port still held for a moment, so a
/// broker that exits at once is started again (a bounded number of times).
async fn broker(endpoint: &str, busy_poll: &str) -> Result<Child> {
    let mut args = vec!["broker", "--bind", endpoint, "--busy-poll", busy_poll];
    args.extend(HB);
    for _ in 0..50 {
        let mut process = spawn_majordomo(&args, "error")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !process.has_exited()? {
            return Ok(process);
        }
    }
    anyhow::bail!("broker cannot bind {endpoint}")
}

fn worker(endpoint: &str, busy_poll: &str) -> Result<Child> {
    let mut args = vec![
        "worker",
        "--connect",
        endpoint,
        "--busy-poll",
        busy_poll,
        "--reconnect-initial",
        "250ms",
        "--reconnect-max",
        "2s",
    ];
    args.extend(HB);
    args.push("echo");
    spawn_majordomo(&args, "error")
}

/// Runs the soak: faults at random for `--duration`, then the summary; an error if any request
/// was lost or answered wrongly.
pub async fn run(args: SoakArgs) -> Result<()> {
    let busy_poll = humantime::format_duration(args.busy_poll).to_string();
    let endpoint = free_endpoint(Transport::Tcp)?;
    let mut broker_proc = broker(&endpoint, &busy_poll).await?;
    let mut workers: Vec<Child> = (0..args.workers)
        .map(|_| worker(&endpoint, &busy_poll))
        .collect::<Result<_>>()?;
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + args.duration;
    println!(
        "soak: {} worker processes, {} clients, a fault every ~{:?}, for {:?} on {endpoint}",
        args.workers, args.clients, args.fault_every, args.duration
    );

    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = Client::new(
            endpoint.clone(),
            ClientConfig::default()
                .timeout(Duration::from_secs(1))
                .attempts(1),
        );
        let counters = counters.clone();
        let attempts = args.attempts;
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let body = Bytes::from(format!("client {c} request {i}"));
                counters.sent.fetch_add(1, Ordering::Relaxed);
                let mut outcome = None;
                for attempt in 0..attempts {
                    if attempt > 0 {
                        counters.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    match client.request("echo", vec![body.clone()]).await {
                        Ok(reply) => {
                            outcome = Some(reply == [body.clone()]);
                            break;
                        }
                        Err(ClientError::NoReply { .. }) => continue,
                        Err(_) => {
                            outcome = Some(false);
                            break;
                        }
                    }
                }
                let counter = match outcome {
                    Some(true) => &counters.answered,
                    Some(false) => &counters.wrong,
                    None => &counters.lost,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut dice = Dice(seed);
    let mut peak = 0u64;
    let mut faults = [0u64; 4];
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let wait = args
            .fault_every
            .mul_f64(0.5 + dice.roll(1000) as f64 / 1000.0);
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= deadline {
            break;
        }
        peak = peak.max(broker_peak_kib(&broker_proc));
        match dice.roll(10) {
            0..=4 => {
                // kill -9 a worker and start a new one.
                let i = dice.roll(workers.len() as u64) as usize;
                let _ = workers[i].signal("KILL");
                workers[i] = worker(&endpoint, &busy_poll)?;
                faults[0] += 1;
            }
            5..=7 => {
                // Freeze a worker past its liveness, then let it go.
                let i = dice.roll(workers.len() as u64) as usize;
                let _ = workers[i].signal("STOP");
                tokio::time::sleep(Duration::from_millis(1200)).await;
                let _ = workers[i].signal("CONT");
                faults[1] += 1;
            }
            8 => {
                // Restart every worker at once.
                for w in workers.iter_mut() {
                    let _ = w.signal("KILL");
                    *w = worker(&endpoint, &busy_poll)?;
                }
                faults[2] += 1;
            }
            _ => {
                // kill -9 the broker and restart it on the same port.
                let _ = broker_proc.signal("KILL");
                drop(broker_proc);
                broker_proc = broker(&endpoint, &busy_poll).await?;
                faults[3] += 1;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            report(&counters, peak, &faults, "progress");
        }
    }
    for task in tasks {
        task.await?;
    }
    peak = peak.max(broker_peak_kib(&broker_proc));
    report(&counters, peak, &faults, "final");
    let lost = counters.lost.load(Ordering::Relaxed) + counters.wrong.load(Ordering::Relaxed);
    anyhow::ensure!(lost == 0, "{lost} requests lost or answered wrongly");
    Ok(())
}

fn report(c: &Counters, peak_kib: u64, faults: &[u64; 4], label: &str) {
    println!(
        "{label}: sent {} answered {} retried {} lost {} wrong {} | faults: {} worker kills, {} freezes, {} all-worker restarts, {} broker kills | broker peak RSS {} KiB",
        c.sent.load(Ordering::Relaxed),
        c.answered.load(Ordering::Relaxed),
        c.retried.load(Ordering::Relaxed),
        c.lost.load(Ordering::Relaxed),
        c.wrong.load(Ordering::Relaxed),
        faults[0],
        faults[1],
        faults[2],
        faults[3],
        peak_kib
    );
}
