//! The Freelance runs: the `freelance` load straight to echo servers with no broker, and the
//! failover time when the server in use dies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use majordomo_freelance::{FreelanceClient, FreelanceConfig};

use super::load::{measure, Load, Mode};
use super::report::Run;
use super::{BenchArgs, RunKind};
use crate::bins::spawn_majordomo;
use crate::child::Child;
use crate::endpoint::{free_endpoint, Transport};

/// How many times the `freelance-failover` run kills the server in use.
const KILLS: usize = 5;

/// An echo `flserver` on `endpoint`, answering once it does.
async fn flserver(endpoint: &str, threads: &str) -> Result<Child> {
    let server = spawn_majordomo(
        &["flserver", "--bind", endpoint, "--threads", threads, "echo"],
        "warn",
    )?;
    let probe = FreelanceClient::new([endpoint], FreelanceConfig::default())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe
        .request(vec![Bytes::from_static(b"up?")])
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "flserver on {endpoint} did not answer"
        );
    }
    Ok(server)
}

/// The `freelance` run: `--workers` echo servers (`majordomo flserver`, each in its own
/// process), `--clients` Freelance clients in this process each shared by `--in-flight`
/// callers. CPU and memory are the first server's.
pub(super) async fn run(args: &BenchArgs, threads: &str, size: usize) -> Result<Run> {
    let endpoints: Vec<String> = (0..args.workers.max(1))
        .map(|_| free_endpoint(Transport::Tcp))
        .collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for endpoint in &endpoints {
        servers.push(flserver(endpoint, threads).await?);
    }
    let joined = endpoints.join(",");
    let run = measure(
        args,
        Load {
            kind: RunKind::Freelance,
            mode: Mode::Freelance,
            endpoint: &joined,
            server_pid: servers[0].pid(),
            size,
            clients: args.clients,
            in_flight: args.in_flight,
        },
    )
    .await;
    for server in servers {
        server.terminate(Duration::from_secs(2)).await;
    }
    run
}

/// How a server in use is made to fail.
#[derive(Clone, Copy, Debug)]
pub(super) enum Failure {
    /// SIGKILL: its connections close at once.
    Kill,
    /// SIGSTOP: it stops answering while its connections stay open.
    Freeze,
}

/// The `freelance-failover` run: three echo servers, one client making one request after
/// another; the server in use (the first) fails (`failure`) five times, killed and restarted
/// after each. Returns, for each, how long from the failure to the reply to the first request
/// sent after it (the request in flight at the failure is answered first, by whichever server).
pub(super) async fn failover(threads: &str, failure: Failure) -> Result<Vec<Duration>> {
    let endpoints: Vec<String> = (0..3)
        .map(|_| free_endpoint(Transport::Tcp))
        .collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for endpoint in &endpoints {
        servers.push(Some(flserver(endpoint, threads).await?));
    }
    let client = FreelanceClient::new(endpoints.clone(), FreelanceConfig::default())?;
    // (sent, replied) of every request.
    let calls: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let caller = {
        let (client, calls) = (client.clone(), calls.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !*stopped.borrow() {
                let body = vec![Bytes::from(i.to_string())];
                let sent = Instant::now();
                let reply = client.request(body.clone()).await?;
                ensure!(reply == body, "reply {reply:?} is not request {i}'s");
                calls
                    .lock()
                    .expect("not poisoned")
                    .push((sent, Instant::now()));
                i += 1;
            }
            Ok(())
        })
    };
    let mut gaps = Vec::new();
    for _ in 0..KILLS {
        // Steady replies from the first server, then it fails.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(victim) = servers[0].take() else {
            bail!("the first server is not running");
        };
        victim.signal(match failure {
            Failure::Kill => "KILL",
            Failure::Freeze => "STOP",
        })?;
        let failed = Instant::now();
        let deadline = failed + Duration::from_secs(10);
        let gap = loop {
            let after = calls
                .lock()
                .expect("not poisoned")
                .iter()
                .find(|(sent, _)| *sent >= failed)
                .map(|(_, replied)| *replied);
            if let Some(at) = after {
                break at - failed;
            }
            ensure!(
                Instant::now() < deadline,
                "no reply within 10 s of a failure"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        gaps.push(gap);
        victim.signal("KILL")?;
        drop(victim);
        servers[0] = Some(flserver(&endpoints[0], threads).await?);
        // Back in use once the client has heard from it again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let _ = stop.send(true);
    caller.await??;
    ensure!(client.stats().await?.failed == 0, "a request failed");
    for server in servers.into_iter().flatten() {
        server.terminate(Duration::from_secs(2)).await;
    }
    Ok(gaps)
}
