//! The Titanic runs: durable submits per second (`titanic-submit`), the same with no store
//! (`titanic-memory`), then whole round trips per second (`titanic`: submit, dispatch, reply
//! fetched, close), against our broker, W echo workers and a `majordomo titanic` process with a
//! fresh store; the Titanic process's CPU and memory. Each run also prints the latency of each
//! step (submit to its durable 200, reply fetched, close) to stderr, and the Titanic process
//! logs its own per-step figures when it stops.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use majordomo_client::{Client, ClientConfig};
use majordomo_titanic::TitanicClient;

use super::load::{Window, DRAIN, MEASURE, WARMUP};
use super::report::Run;
use super::{BenchArgs, RunKind};
use crate::bins::spawn_majordomo;
use crate::endpoint::{free_endpoint, SocketFile};

/// What one task measured.
#[derive(Default)]
struct Counted {
    latencies_us: Vec<u32>,
    /// Per step, of the same requests: submit, reply (round trips only), close (round trips).
    steps_us: [Vec<u32>; 3],
    errors: Vec<String>,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// `name p50 p99` in milliseconds, of `us` (sorted here).
fn step_figures(name: &str, us: &mut [u32]) -> String {
    if us.is_empty() {
        return String::new();
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(" {name} p50 {:.2} ms p99 {:.2} ms;", at(0.5), at(0.99))
}

/// One task: submits (`round_trip` false) or whole round trips, until the phase is `DRAIN`;
/// those that end while it is `MEASURE` are counted.
async fn task(
    client: TitanicClient,
    id: usize,
    size: usize,
    round_trip: bool,
    poll: Duration,
    phase: Arc<AtomicU8>,
) -> Counted {
    let mut counted = Counted::default();
    let filler = "x".repeat(size.saturating_sub(24));
    for seq in 0u64.. {
        let current = phase.load(Ordering::Relaxed);
        if current == DRAIN {
            break;
        }
        let body = Bytes::from(format!("{id:08} {seq:014} {filler}"));
        let started = Instant::now();
        let mut steps = [Duration::ZERO; 3];
        let outcome = async {
            let uuid = client.submit("echo", vec![body.clone()]).await?;
            steps[0] = started.elapsed();
            if round_trip {
                let reply = client.wait(uuid, Duration::from_secs(30), poll).await?;
                steps[1] = started.elapsed() - steps[0];
                ensure!(reply == [body.clone()], "request {id}/{seq}: another reply");
                client.close(uuid).await?;
                steps[2] = started.elapsed() - steps[0] - steps[1];
            }
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            counted.errors.push(error.to_string());
            break;
        }
        // Counted when it ends in the measured time, as the other runs count replies.
        if phase.load(Ordering::Relaxed) == MEASURE {
            counted
                .latencies_us
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            let taken = if round_trip { 3 } else { 1 };
            for (all, step) in counted.steps_us.iter_mut().zip(steps).take(taken) {
                all.push(micros(step));
            }
        }
    }
    counted
}

/// Runs the tasks through the warm-up and the measured time and returns the figures.
async fn phase(
    args: &BenchArgs,
    endpoint: &str,
    pid: u32,
    kind: RunKind,
    size: usize,
) -> Result<Run> {
    let tasks = args.clients * args.in_flight;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let config = ClientConfig::default().timeout(Duration::from_secs(5));
    let handles: Vec<_> = (0..tasks)
        .map(|id| {
            let client = TitanicClient::new(endpoint, config);
            let round_trip = kind == RunKind::Titanic;
            let poll = args.titanic_poll;
            tokio::spawn(task(client, id, size, round_trip, poll, phase.clone()))
        })
        .collect();
    let window = Window::run(args, pid, &phase).await?;
    let mut latencies = Vec::new();
    let mut steps: [Vec<u32>; 3] = Default::default();
    let mut errors = Vec::new();
    for handle in handles {
        let counted = handle.await?;
        latencies.extend(counted.latencies_us);
        for (all, step) in steps.iter_mut().zip(counted.steps_us) {
            all.extend(step);
        }
        errors.extend(counted.errors);
    }
    let [submit, reply, close] = &mut steps;
    eprintln!(
        "{kind} {size} B steps:{}{}{}",
        step_figures("submit", submit),
        step_figures("reply", reply),
        step_figures("close", close)
    );
    ensure!(
        errors.is_empty(),
        "titanic run failed: {}",
        errors.join("; ")
    );
    ensure!(
        !latencies.is_empty(),
        "nothing done during the measured run"
    );
    let requests = latencies.len() as u64;
    window.into_run(
        kind,
        size,
        args.clients,
        args.in_flight,
        requests,
        latencies,
    )
}

/// The `titanic-submit`, `titanic-memory` and `titanic` runs at `size`, each on a fresh store
/// (or none, for `titanic-memory`); the server figures
/// are the Titanic process's. Returns the runs and the store file's size at the end of each.
pub(super) async fn titanic(args: &BenchArgs, kind: RunKind, size: usize) -> Result<(Run, u64)> {
    let endpoint = free_endpoint(args.transport)?;
    // Removed once the broker is gone.
    let _socket_file = SocketFile::of(&endpoint);
    let threads = args.server_threads.to_string();
    let broker = spawn_majordomo(
        &["broker", "--bind", &endpoint, "--threads", &threads],
        "warn",
    )?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(spawn_majordomo(
            &["worker", "--connect", &endpoint, "echo"],
            "warn",
        )?);
    }
    let dir = std::env::temp_dir().join(format!("majordomo-bench-titanic-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = dir.join("bench.redb");
    let _ = std::fs::remove_file(&store);
    let store_arg = store.to_string_lossy().into_owned();
    let in_flight = args.titanic_in_flight.to_string();
    let mut argv = vec![
        "titanic",
        "--connect",
        &endpoint,
        "--store",
        &store_arg,
        "--in-flight-per-service",
        &in_flight,
    ];
    if kind == RunKind::TitanicMemory {
        argv.push("--in-memory");
    }
    let titanic = spawn_majordomo(
        &argv,
        // Its last line gives its totals: commits and the writes they carried.
        "warn,majordomo_titanic::server=info",
    )?;
    // Ready once Titanic's and echo's services answer.
    let mmi = Client::new(endpoint.clone(), ClientConfig::default());
    for service in ["titanic.request", "titanic.reply", "titanic.close", "echo"] {
        let mut found = false;
        for _ in 0..200 {
            let answer = mmi
                .request("mmi.service", vec![Bytes::from(service)])
                .await?;
            if answer.first().map(|f| f.as_ref()) == Some(b"200") {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ensure!(found, "{service} did not register");
    }
    let run = phase(args, &endpoint, titanic.pid(), kind, size).await;
    let store_bytes = std::fs::metadata(&store).map_or(0, |m| m.len());
    titanic.terminate(Duration::from_secs(5)).await;
    for w in workers {
        w.terminate(Duration::from_secs(2)).await;
    }
    broker.terminate(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((run?, store_bytes))
}
