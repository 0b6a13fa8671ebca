//! Interop with libzmq through pyzmq: stock 7/MDP peers written from the RFC in
//! `integration-tests/python/` against our broker, and our client and worker against a Python
//! broker. `scripts/setup-interop.sh` makes the virtual environment; without it these tests fail
//! with a message saying so.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use integration_tests::{
    free_endpoint, mmi_stats, test_config, wait_for_service, Proc, PyPeer as Py, RunningBroker,
    PATIENCE, TEST_HEARTBEAT,
};
use majordomo_client::{Client, ClientConfig};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};

fn hb_ms() -> String {
    TEST_HEARTBEAT.interval.as_millis().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_req_client_and_dealer_worker_through_our_broker() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut worker = Py::spawn(
        "mdp_dealer_worker.py",
        &[&broker.endpoint, "pyecho", &hb_ms()],
    )?;
    assert_eq!(worker.line().await?, "ready");
    wait_for_service(&broker.endpoint, "pyecho").await?;

    let mut client = Py::spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "pyecho", "one", "two", "three"],
    )?;
    for body in ["one", "two", "three"] {
        assert_eq!(client.line().await?, format!("[\"py:{body}\"]"));
    }
    assert_eq!(client.exit_code().await?, 0);

    // The Python worker has been heartbeating all along; a graceful stop tells it DISCONNECT.
    let stats = broker.stop().await?;
    assert_eq!(worker.line().await?, "disconnected");
    assert_eq!(worker.exit_code().await?, 0);
    assert_eq!((stats.protocol_errors, stats.purged), (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_req_client_through_our_broker_to_our_worker() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        broker.endpoint.clone(),
        "echo",
        WorkerConfig::default().heartbeat(TEST_HEARTBEAT),
    );
    let task = tokio::spawn(
        worker.run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = stopped.await;
        }),
    );
    wait_for_service(&broker.endpoint, "echo").await?;
    let mut client = Py::spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "echo", "hello", "libzmq"],
    )?;
    assert_eq!(client.line().await?, "[\"hello\"]");
    assert_eq!(client.line().await?, "[\"libzmq\"]");
    assert_eq!(client.exit_code().await?, 0);
    // mmi.service from libzmq too.
    let mut mmi = Py::spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "mmi.service", "echo", "nope"],
    )?;
    assert_eq!(mmi.line().await?, "[\"200\"]");
    assert_eq!(mmi.line().await?, "[\"404\"]");
    let _ = stop.send(());
    task.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_and_worker_against_a_libzmq_broker() -> Result<()> {
    let mut broker = Py::spawn("mdp_broker.py", &[&hb_ms()])?;
    let endpoint = broker.endpoint().await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        endpoint.clone(),
        "echo",
        WorkerConfig::default()
            .heartbeat(TEST_HEARTBEAT)
            .concurrency(2),
    );
    let task = tokio::spawn(
        worker.run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = stopped.await;
        }),
    );
    let client = Client::new(endpoint.clone(), ClientConfig::default());
    wait_for_service(&endpoint, "echo").await?;
    for i in 0..20 {
        let body = Bytes::from(format!("through libzmq {i}"));
        assert_eq!(client.request("echo", vec![body.clone()]).await?, [body]);
    }
    // Our worker keeps its registration alive across many heartbeat intervals.
    tokio::time::sleep(TEST_HEARTBEAT.expiry() * 3).await;
    let body = Bytes::from_static(b"still registered");
    assert_eq!(client.request("echo", vec![body.clone()]).await?, [body]);
    let _ = stop.send(());
    task.await??;
    Ok(())
}

/// Lines a peer prints until it has been quiet for `quiet`, or `bound` has passed.
async fn lines_until_quiet(peer: &mut Py, quiet: Duration, bound: Duration) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = quiet.min(left);
        match peer.line_within(wait).await? {
            Some(line) => lines.push(line),
            None => break,
        }
    }
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_worker_silent_while_busy_for_three_liveness_periods_is_delivered_once() -> Result<()>
{
    // Liveness is 3 x 100 ms; the handler runs 1000 ms, more than three liveness periods, and the
    // Guide's single-threaded worker sends nothing while it runs.
    const DELAY: Duration = Duration::from_millis(1000);
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&[
        "broker",
        "--bind",
        &ep,
        "--heartbeat",
        "100ms",
        "--liveness",
        "3",
    ])?;
    broker.wait_until_serving(&ep).await?;
    let delay_ms = DELAY.as_millis().to_string();
    let mut worker = Py::spawn("guide_worker.py", &[&ep, "guide", "100", &delay_ms])?;
    assert_eq!(worker.line().await?, "ready");
    wait_for_service(&ep, "guide").await?;

    let client = Client::new(
        ep.clone(),
        ClientConfig::default().timeout(DELAY * 5).attempts(1),
    );
    let body = Bytes::from_static(b"only once");
    let reply = client.request("guide", vec![body.clone()]).await;
    // The worker prints "handled N" before it sends the Nth reply, so every execution that led to
    // a reply is printed by now; one that started just before the reply would finish within the
    // handler's delay.
    let lines =
        lines_until_quiet(&mut worker, DELAY + Duration::from_millis(500), PATIENCE).await?;
    let handled = lines.iter().filter(|l| l.starts_with("handled ")).count();
    let stats = mmi_stats(&ep).await?;
    assert_eq!(
        (
            reply.map_err(|e| e.to_string()),
            handled,
            stats.purged,
            stats.requeued
        ),
        (Ok(vec![body]), 1, 0, 0),
        "the reply after one execution, the busy worker neither purged nor its request \
         re-queued; the worker printed {lines:?}; stats {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_pipelining_client_gets_all_100000_replies_at_default_settings() -> Result<()> {
    const COUNT: usize = 100_000;
    // A bound for a hung run, not an expected duration.
    const BOUND: Duration = Duration::from_secs(180);
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep])?;
    broker.wait_until_serving(&ep).await?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    wait_for_service(&ep, "echo").await?;

    let started = Instant::now();
    let count = COUNT.to_string();
    let mut client = Py::spawn("guide_pipelining_client.py", &[&ep, "echo", &count, "2500"])?;
    let received = client.line_within(BOUND).await?;
    let code = client.exit_code().await?;
    println!(
        "{COUNT} pipelined requests: {received:?} replies, exit {code}, in {:?}",
        started.elapsed()
    );
    let stats = mmi_stats(&ep).await?;
    assert_eq!(
        (received.as_deref(), code, stats.expired, stats.rejected),
        (Some(count.as_str()), 0, 0, 0),
        "every request served, none expired or rejected: stats {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_dealer_tags_many_requests_on_one_connection_and_each_reply_finds_its_own(
) -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // Workers that take a time that depends on the body, so replies come back out of order.
    for _ in 0..4 {
        let worker = Worker::new(
            broker.endpoint.clone(),
            "slow-echo",
            WorkerConfig::default().heartbeat(TEST_HEARTBEAT),
        );
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(worker.run(
            handler_fn(|body: Vec<Bytes>| async move {
                let n = body[0].iter().map(|b| u64::from(*b)).sum::<u64>() % 7;
                tokio::time::sleep(Duration::from_millis(n)).await;
                Ok(body)
            }),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }
    wait_for_service(&broker.endpoint, "slow-echo").await?;
    let mut client = Py::spawn(
        "mdp_tagged_client.py",
        &[&broker.endpoint, "slow-echo", "200"],
    )?;
    assert_eq!(client.line().await?, "200");
    assert_eq!(client.line().await?, "matched 200");
    assert_eq!(client.exit_code().await?, 0);
    let _ = stop.send(true);
    for task in tasks {
        task.await??;
    }
    let stats = broker.stop().await?;
    // The 200; mmi.envelope and the mmi.service probes of wait_for_service (one or more, as
    // the workers register) are counted apart.
    assert_eq!(stats.protocol_errors, 0);
    assert_eq!(stats.replies, 200, "{stats:?}");
    assert!(stats.mmi_requests >= 2, "{stats:?}");
    Ok(())
}
