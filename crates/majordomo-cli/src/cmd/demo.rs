//! `majordomo demo`: a broker, echo workers and clients in one process on loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use clap::Args;
use majordomo_broker::{Broker, BrokerConfig, HeartbeatConfig};
use majordomo_client::{AsyncClient, Client, ClientConfig};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use shutdown::Shutdown;

/// Options of the demo.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Echo workers to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrent client tasks in the throughput run.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per client task in the throughput run.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

/// A one-shot broadcast: every waiter completes once `fire` is called.
mod shutdown {
    use tokio::sync::watch;

    #[derive(Clone)]
    pub(crate) struct Shutdown(watch::Receiver<bool>);

    impl Shutdown {
        pub(crate) fn new() -> (watch::Sender<bool>, Self) {
            let (tx, rx) = watch::channel(false);
            (tx, Self(rx))
        }

        pub(crate) async fn wait(mut self) {
            let _ = self.0.wait_for(|fired| *fired).await;
        }
    }
}

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let heartbeat = HeartbeatConfig::new(Duration::from_millis(500), 3);
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(BrokerConfig::default().heartbeat(heartbeat))
        .build()
        .await
        .context("demo broker cannot bind on loopback")?;
    let endpoint = broker.endpoints()[0].endpoint.clone();
    println!("broker listening on {endpoint}");

    let (stop, shutdown) = Shutdown::new();
    let broker_task = tokio::spawn(broker.run(shutdown.clone().wait()));

    let served: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.workers).map(|_| AtomicU64::new(0)).collect());
    let mut worker_tasks = Vec::new();
    for index in 0..args.workers {
        let served = served.clone();
        let handler = handler_fn(move |body: Vec<Bytes>| {
            served[index].fetch_add(1, Ordering::Relaxed);
            async move { Ok(body) }
        });
        let worker = Worker::new(
            endpoint.clone(),
            "echo",
            WorkerConfig::default().heartbeat(heartbeat),
        );
        worker_tasks.push(tokio::spawn(worker.run(handler, shutdown.clone().wait())));
    }
    println!("started {} echo workers", args.workers);

    let client = Client::new(endpoint.clone(), ClientConfig::default());
    // Workers register asynchronously; mmi.service tells when the service is there.
    let mut found = false;
    for _ in 0..50 {
        let status = client
            .request("mmi.service", vec![Bytes::from_static(b"echo")])
            .await?;
        if status[0].as_ref() == b"200" {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(found, "echo workers did not register");
    println!("mmi.service echo   -> 200 (found)");
    let missing = client
        .request("mmi.service", vec![Bytes::from_static(b"nope")])
        .await?;
    println!(
        "mmi.service nope   -> {}",
        String::from_utf8_lossy(&missing[0])
    );

    for text in ["hello", "majordomo"] {
        let reply = client.request("echo", vec![Bytes::from(text)]).await?;
        println!("echo {text:<12} -> {}", String::from_utf8_lossy(&reply[0]));
    }

    // Throughput: many tasks share one cloneable client; every reply is checked.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let n = args.requests;
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let body = Bytes::from(format!("client {c} request {i}"));
                let reply = client.request("echo", vec![body.clone()]).await?;
                anyhow::ensure!(reply == [body], "mismatched reply");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let total = args.clients * args.requests;
    println!(
        "{total} requests from {} concurrent callers in {:.2} s: {:.0} requests/s, all replies matched",
        args.clients,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // Asynchronous client: many requests in flight on one socket.
    let mut async_client = AsyncClient::connect(&endpoint, ClientConfig::default()).await?;
    let pipelined = 1000;
    let started = Instant::now();
    for i in 0..pipelined {
        async_client
            .send("echo", vec![Bytes::from(i.to_string())])
            .await?;
    }
    for _ in 0..pipelined {
        async_client.recv().await?;
    }
    let elapsed = started.elapsed();
    println!(
        "{pipelined} pipelined requests on one asynchronous client in {:.3} s: {:.0} requests/s",
        elapsed.as_secs_f64(),
        pipelined as f64 / elapsed.as_secs_f64()
    );

    titanic_round_trip(&endpoint, heartbeat).await?;

    let counts: Vec<u64> = served.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!("requests served per worker (least-recently-used routing): {counts:?}");

    let _ = stop.send(true);
    for task in worker_tasks {
        task.await??;
    }
    let stats = broker_task.await??;
    println!(
        "broker: {} requests, {} replies, {} expired, {} protocol errors",
        stats.requests, stats.replies, stats.expired, stats.protocol_errors
    );
    Ok(())
}

/// A Titanic (9/TSP) server on a store in a temporary file: one request stored, its reply
/// fetched, then closed.
async fn titanic_round_trip(endpoint: &str, heartbeat: HeartbeatConfig) -> Result<()> {
    use majordomo_titanic::store::RedbStore;
    use majordomo_titanic::{Titanic, TitanicClient, TitanicConfig};
    let path = std::env::temp_dir().join(format!("majordomo-demo-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let defaults = TitanicConfig::default();
    let config = defaults.worker(defaults.worker.heartbeat(heartbeat).concurrency(2));
    let titanic = Titanic::new(endpoint, RedbStore::open(&path)?, config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(titanic.run(async {
        let _ = stopped.await;
    }));
    let client = TitanicClient::new(endpoint, ClientConfig::default());
    let uuid = client
        .submit("echo", vec![Bytes::from_static(b"stored")])
        .await?;
    println!("titanic.request echo stored -> 200 {uuid}");
    let reply = client
        .wait(uuid, Duration::from_secs(10), Duration::from_millis(10))
        .await?;
    println!(
        "titanic.reply {uuid} -> 200 {}",
        String::from_utf8_lossy(&reply[0])
    );
    client.close(uuid).await?;
    println!("titanic.close {uuid} -> 200");
    let _ = stop.send(());
    task.await??;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
