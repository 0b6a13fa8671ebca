//! Interop with libzmq through pyzmq: stock 7/MDP peers written from the RFC in
//! `integration-tests/python/` against our broker, and our client and worker against a Python
//! broker. `scripts/setup-interop.sh` makes the virtual environment; without it these tests fail
//! with a message saying so.

use anyhow::Result;
use bytes::Bytes;
use integration_tests::{
    test_config, wait_for_service, PyPeer as Py, RunningBroker, TEST_HEARTBEAT,
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
