//! The guard in front-end mode: every peer read by the guard and multiplexed onto one link to
//! the broker's socket, with the message deadline and the byte budgets.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{test_config, wait_for_service, RawZmtp, RunningBroker, PATIENCE};
use majordomo_broker::{Broker, GuardConfig, GuardStatsHandle};
use majordomo_client::{Client, ClientConfig};
use majordomo_worker::{handler_fn, BoxError, Worker, WorkerConfig};
use majordomo_zmtp::Rule;
use tokio::task::JoinHandle;

/// An in-process broker behind a front end with `guard`, an echo worker, and the guard's stats.
async fn front_ended_broker(
    guard: GuardConfig,
) -> Result<(RunningBroker, GuardStatsHandle, JoinHandle<()>)> {
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(test_config())
        .guard(guard.front_end(true))
        .build()
        .await?;
    let stats = broker
        .guards()
        .first()
        .context("a guarded endpoint")?
        .clone();
    let broker = RunningBroker::run(broker);
    let worker = Worker::new(broker.endpoint.clone(), "echo", WorkerConfig::default());
    let worker = tokio::spawn(async move {
        let echo = handler_fn(|body: Vec<Bytes>| async move { Ok::<_, BoxError>(body) });
        let _ = worker.run(echo, std::future::pending()).await;
    });
    wait_for_service(&broker.endpoint, "echo").await?;
    Ok((broker, stats, worker))
}

/// Waits until the guard's stats satisfy `done`, or fails after [`PATIENCE`] with them.
async fn wait_for_guard(
    stats: &GuardStatsHandle,
    what: &str,
    done: impl Fn(&majordomo_broker::GuardStats) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = stats.stats();
        if done(&now) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_workers_are_served_and_a_peer_stopping_mid_message_is_closed() -> Result<()> {
    let guard = GuardConfig::default().message_timeout(Duration::from_secs(1));
    let (broker, stats, _worker) = front_ended_broker(guard).await?;
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    let hello = vec![
        Bytes::from_static(b"hello"),
        Bytes::from(vec![7u8; 100_000]),
    ];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);

    // A peer that begins a message (the header of a 1,000-byte frame) and sends no more.
    let mut stalled = RawZmtp::connect(&broker.endpoint).await?;
    stalled.send_command(b"PING", &[0, 10]).await?;
    stalled.announce_frame(1000).await?;
    // Others are served meanwhile.
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    assert!(
        stalled.closed_within(PATIENCE).await?,
        "closed at its message deadline"
    );
    wait_for_guard(&stats, "message timeout counted", |s| {
        s.count(Rule::MessageTimeout) == 1 && s.pongs >= 1
    })
    .await?;
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    Ok(())
}
