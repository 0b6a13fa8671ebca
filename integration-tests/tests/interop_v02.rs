//! MDP v0.2 (18/MDP) peers through our broker: RFC-literal pyzmq peers checked frame by frame,
//! majortomo 0.2.0's own worker and client (its dialect), and a v0.1 client served by a
//! majortomo worker. `scripts/setup-interop.sh` installs pyzmq and majortomo.

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{test_config, wait_for_service, PyPeer as Py, RunningBroker, PATIENCE};
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
