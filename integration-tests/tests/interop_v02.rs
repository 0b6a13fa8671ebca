//! MDP v0.2 (18/MDP) peers through our broker: RFC-literal pyzmq peers checked frame by frame,
//! majortomo 0.2.0's own worker and client (its dialect), and a v0.1 client served by a
//! majortomo worker. `scripts/setup-interop.sh` installs pyzmq and majortomo.

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{
    parts_then_echo, test_config, wait_for_service, PyPeer as Py, RunningBroker, PATIENCE,
};
use majordomo_client::{Client, ClientConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc18_worker_and_client_get_byte_exact_partials_and_finals() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut peers = Py::spawn("mdp2_rfc_peers.py", &[&broker.endpoint])?;
    assert_eq!(peers.line().await?, "done");
    assert_eq!(peers.exit_code().await?, 0);
    let stats = broker.stop().await?;
    assert_eq!(
        (stats.requests, stats.replies, stats.protocol_errors),
        (2, 2, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majortomo_worker_and_client_through_our_broker() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut peers = Py::spawn("majortomo_peers.py", &[&broker.endpoint, "200", "5"])?;
    assert_eq!(peers.line().await?, "ready");
    let done = peers.line_within(PATIENCE * 3).await?.unwrap_or_default();
    assert_eq!(done, "done 200");
    assert_eq!(peers.exit_code().await?, 0);
    let stats = broker.stop().await?;
    assert_eq!(
        (stats.requests, stats.replies, stats.protocol_errors),
        (200, 200, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v01_client_gets_a_majortomo_workers_parts_in_one_reply() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut worker = Py::spawn("majortomo_peers.py", &[&broker.endpoint, "0", "3"])?;
    assert_eq!(worker.line().await?, "ready");
    wait_for_service(&broker.endpoint, "mt-echo").await?;
    let client = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    let body = vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")];
    let reply = client.request("mt-echo", body.clone()).await?;
    let mut expected: Vec<Bytes> = (0..3).map(|n| Bytes::from(format!("part {n}"))).collect();
    expected.extend(body);
    assert_eq!(reply, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_v02_client_in_both_dialects_gets_a_majortomo_workers_parts() -> Result<()> {
    use majordomo_client::{Dialect, Version};
    let broker = RunningBroker::start(test_config()).await?;
    let mut worker = Py::spawn("majortomo_peers.py", &[&broker.endpoint, "0", "4"])?;
    assert_eq!(worker.line().await?, "ready");
    wait_for_service(&broker.endpoint, "mt-echo").await?;
    let before = broker.handle.stats().await.context("running")?.replies;
    for dialect in [Dialect::Rfc18, Dialect::Majortomo] {
        let client = Client::new(
            broker.endpoint.clone(),
            ClientConfig::default()
                .timeout(PATIENCE)
                .version(Version::V02(dialect)),
        );
        for i in 0..20 {
            let body = vec![
                Bytes::from(format!("{dialect:?} {i}")),
                Bytes::from_static(b"2"),
            ];
            let reply = client.request("mt-echo", body.clone()).await?;
            let mut expected: Vec<Bytes> =
                (0..4).map(|n| Bytes::from(format!("part {n}"))).collect();
            expected.extend(body);
            assert_eq!(reply, expected);
        }
    }
    let stats = broker.stop().await?;
    assert_eq!((stats.replies - before, stats.protocol_errors), (40, 0));
    Ok(())
}

/// Our worker for `service` in `version` at `config`, until the sender fires or is dropped.
fn spawn_our_worker(
    endpoint: &str,
    service: &str,
    config: majordomo_worker::WorkerConfig,
    parts: usize,
) -> tokio::sync::oneshot::Sender<()> {
    let worker = majordomo_worker::Worker::new(endpoint, service.to_owned(), config);
    integration_tests::spawn_until_stopped(|stopped| {
        worker.run_streaming(parts_then_echo(parts), stopped)
    })
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_worker_and_client_through_majortomos_broker_at_its_defaults() -> Result<()> {
    use futures::StreamExt;
    use majordomo_client::{Dialect, Version};
    let endpoint = integration_tests::free_endpoint()?;
    let mut broker = Py::spawn("majortomo_broker.py", &[&endpoint])?;
    assert_eq!(broker.line().await?, "ready");
    // majortomo's broker speaks its own dialect only, and heartbeats every 2.5 s: our worker at
    // its default heartbeat.
    let version = Version::V02(Dialect::Majortomo);
    let config = majordomo_worker::WorkerConfig::default().version(version);
    let _echo = spawn_our_worker(&endpoint, "echo", config, 0);
    let _parts = spawn_our_worker(&endpoint, "parts", config, 5);
    let client = Client::new(
        endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE).version(version),
    );
    // majortomo's broker queues a request until a worker for its service is ready.
    for i in 0..1000 {
        let body = vec![
            Bytes::from(format!("request {i}")),
            Bytes::new(),
            Bytes::from_static(b"third frame"),
        ];
        assert_eq!(client.request("echo", body.clone()).await?, body);
    }
    for i in 0..20 {
        let body = vec![
            Bytes::from(format!("streamed {i}")),
            Bytes::from_static(b"2"),
        ];
        let parts: Vec<_> = client
            .request_stream("parts", body.clone())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut expected: Vec<majordomo_client::Part> = (0..5)
            .map(|n| majordomo_client::Part {
                body: vec![Bytes::from(format!("part {n}"))],
                last: false,
            })
            .collect();
        expected.push(majordomo_client::Part { body, last: true });
        assert_eq!(parts, expected);
    }
    broker.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majortomos_client_through_our_broker_to_our_workers_in_both_dialects() -> Result<()> {
    use majordomo_client::{Dialect, Version};
    let broker = RunningBroker::start(test_config()).await?;
    let mut workers = Vec::new();
    for (service, dialect) in [
        ("ours-rfc", Dialect::Rfc18),
        ("ours-mt", Dialect::Majortomo),
    ] {
        let config = majordomo_worker::WorkerConfig::default()
            .heartbeat(integration_tests::TEST_HEARTBEAT)
            .version(Version::V02(dialect));
        workers.push(spawn_our_worker(&broker.endpoint, service, config, 5));
        wait_for_service(&broker.endpoint, service).await?;
        let before = broker.stats().await?.replies;
        let mut client = Py::spawn(
            "majortomo_client.py",
            &[&broker.endpoint, service, "100", "5"],
        )?;
        let done = client.line_within(PATIENCE * 3).await?.unwrap_or_default();
        assert_eq!(done, "done 100", "{dialect:?}");
        assert_eq!(client.exit_code().await?, 0);
        assert_eq!(broker.stats().await?.replies - before, 100);
    }
    let stats = broker.stop().await?;
    assert_eq!(stats.protocol_errors, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_req_client_and_a_majortomo_worker_share_a_service() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut worker = Py::spawn("majortomo_peers.py", &[&broker.endpoint, "0", "2"])?;
    assert_eq!(worker.line().await?, "ready");
    wait_for_service(&broker.endpoint, "mt-echo").await?;
    let mut client = Py::spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "mt-echo", "x", "y"],
    )?;
    // The stock v0.1 REQ client gets the parts gathered in one REPLY.
    assert_eq!(client.line().await?, r#"["part 0", "part 1", "x"]"#);
    assert_eq!(client.line().await?, r#"["part 0", "part 1", "y"]"#);
    assert_eq!(client.exit_code().await?, 0);
    worker.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majortomos_stock_echo_worker_and_client_through_our_broker_at_defaults() -> Result<()> {
    // `python -m majortomo.echo` as its README runs it, against our broker at its defaults.
    let broker = RunningBroker::start(majordomo_broker::BrokerConfig::default()).await?;
    let ep = broker.endpoint.clone();
    let mut worker = Py::spawn_module("majortomo.echo", &["-b", &ep, "worker"])?;
    wait_for_service(&ep, "mdp-echo").await?;
    let args = [
        "-b",
        &ep,
        "client",
        "-m",
        "hello there",
        "-r",
        "5",
        "-d",
        "0",
        "-t",
        "5",
    ];
    let mut client = Py::spawn_module("majortomo.echo", &args)?;
    for _ in 0..5 {
        let line = client.line().await?;
        // Green for a reply equal to the message, red otherwise.
        assert_eq!(line, "\x1B[38;32mGot response: [b'hello there']\x1B[0m");
    }
    assert_eq!(client.exit_code().await?, 0);
    worker.kill().await?;
    let stats = broker.stop().await?;
    assert_eq!(stats.protocol_errors, 0);
    Ok(())
}
