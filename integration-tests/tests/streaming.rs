//! Answers in parts (18/MDP PARTIALs then FINAL) with our worker, broker and client: every
//! version and dialect on both sides, the parts in order, a reply that stops part-way, and the
//! gathered forms for one-reply peers.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use integration_tests::{
    parts_then_echo, spawn_until_stopped, test_config, RunningBroker, PATIENCE, TEST_HEARTBEAT,
};
use majordomo_client::{Client, ClientConfig, ClientError, Dialect, Part, Version};
use majordomo_worker::{
    stream_handler_fn, BoxError, Responder, StreamHandler, Worker, WorkerConfig,
};
use tokio::sync::oneshot;

const VERSIONS: [Version; 3] = [
    Version::V01,
    Version::V02(Dialect::Rfc18),
    Version::V02(Dialect::Majortomo),
];

/// A worker speaking `version` for `service`, until the sender is dropped or fires.
fn spawn_worker<H: StreamHandler>(
    endpoint: &str,
    service: &str,
    version: Version,
    handler: H,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let config = WorkerConfig::default()
        .heartbeat(TEST_HEARTBEAT)
        .reconnect_initial(Duration::from_millis(50))
        .version(version);
    let worker = Worker::new(endpoint, service.to_owned(), config);
    spawn_until_stopped(|stopped| worker.run_streaming(handler, stopped))
}

fn client(endpoint: &str, version: Version) -> Client {
    Client::new(
        endpoint,
        ClientConfig::default().timeout(PATIENCE).version(version),
    )
}

async fn collect(client: &Client, service: &str, body: Vec<Bytes>) -> Vec<Result<Part, String>> {
    client
        .request_stream(service.to_owned(), body)
        .map(|part| part.map_err(|e| e.to_string()))
        .collect()
        .await
}

fn part(body: &[&str], last: bool) -> Result<Part, String> {
    Ok(Part {
        body: body.iter().map(|s| Bytes::from(s.to_string())).collect(),
        last,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_version_gets_a_workers_parts_in_its_own_form() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    for worker_version in VERSIONS {
        let service = format!("parts-{worker_version:?}");
        let (_stop, _task) = spawn_worker(
            &broker.endpoint,
            &service,
            worker_version,
            parts_then_echo(3),
        );
        for client_version in VERSIONS {
            let c = client(&broker.endpoint, client_version);
            let body = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
            let got = collect(&c, &service, body.clone()).await;
            let streams = worker_version != Version::V01 && client_version != Version::V01;
            let expected = if streams {
                // Every part on its own, then the FINAL.
                vec![
                    part(&["part 0"], false),
                    part(&["part 1"], false),
                    part(&["part 2"], false),
                    part(&["a", "b"], true),
                ]
            } else {
                // A v0.1 worker sends one REPLY with the parts in front; a v0.1 client gets
                // the parts gathered into one REPLY by the broker.
                vec![part(&["part 0", "part 1", "part 2", "a", "b"], true)]
            };
            assert_eq!(
                got, expected,
                "worker {worker_version:?}, client {client_version:?}"
            );
            // `request` gathers in every version.
            let gathered = c.request(service.clone(), body).await?;
            assert_eq!(gathered.len(), 5);
        }
    }
    let stats = broker.stop().await?;
    assert_eq!(
        (stats.requests, stats.replies, stats.protocol_errors),
        (18, 18, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_parts_arrive_in_order_through_the_bounded_responder() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    for version in [
        Version::V02(Dialect::Rfc18),
        Version::V02(Dialect::Majortomo),
    ] {
        let service = format!("many-{version:?}");
        let (_stop, _task) =
            spawn_worker(&broker.endpoint, &service, version, parts_then_echo(1000));
        let c = client(&broker.endpoint, version);
        let got = collect(&c, &service, vec![Bytes::from_static(b"end")]).await;
        assert_eq!(got.len(), 1001);
        for (n, p) in got[..1000].iter().enumerate() {
            assert_eq!(p, &part(&[&format!("part {n}")], false));
        }
        assert_eq!(got[1000], part(&["end"], true));
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_stops_after_its_parts_is_interrupted_not_retried() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let version = Version::V02(Dialect::Rfc18);
    let handler = stream_handler_fn(|_body: Vec<Bytes>, mut responder: Responder| async move {
        responder.send(vec![Bytes::from_static(b"one")]).await?;
        responder.send(vec![Bytes::from_static(b"two")]).await?;
        Err::<Vec<Bytes>, BoxError>("gave up".into())
    });
    let (_stop, _task) = spawn_worker(&broker.endpoint, "flaky", version, handler);
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default()
            .timeout(Duration::from_millis(500))
            .attempts(3)
            .version(version),
    );
    let mut parts = std::pin::pin!(c.request_stream("flaky", vec![Bytes::from_static(b"q")]));
    let mut got = Vec::new();
    let end = tokio::time::timeout(PATIENCE, async {
        while let Some(item) = parts.next().await {
            match item {
                Ok(p) => got.push(p),
                Err(error) => return Some(error),
            }
        }
        None
    })
    .await
    .context("the stream did not end")?;
    assert_eq!(
        got,
        [
            part(&["one"], false).unwrap(),
            part(&["two"], false).unwrap()
        ]
    );
    assert!(
        matches!(end, Some(ClientError::Interrupted { parts: 2, .. })),
        "{end:?}"
    );
    // One request reached the broker: the stream was not retried after its parts.
    let stats = broker.stats().await?;
    assert_eq!(stats.requests, 1);
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_gets_every_part_as_a_reply_of_its_own() -> Result<()> {
    use majordomo_client::AsyncClient;
    let broker = RunningBroker::start(test_config()).await?;
    for version in [
        Version::V02(Dialect::Rfc18),
        Version::V02(Dialect::Majortomo),
    ] {
        let service = format!("async-{version:?}");
        let (_stop, _task) = spawn_worker(&broker.endpoint, &service, version, parts_then_echo(2));
        let config = ClientConfig::default().timeout(PATIENCE).version(version);
        let mut client = AsyncClient::connect(&broker.endpoint, config).await?;
        for i in 0..3 {
            client
                .send(service.clone(), vec![Bytes::from(format!("q{i}"))])
                .await?;
        }
        let mut got = Vec::new();
        for _ in 0..9 {
            let reply = client.recv().await?;
            got.push((reply.body, reply.last));
        }
        // One worker: the requests are answered one after another, each in three parts.
        let expected: Vec<_> = (0..3)
            .flat_map(|i| {
                [
                    (vec![Bytes::from_static(b"part 0")], false),
                    (vec![Bytes::from_static(b"part 1")], false),
                    (vec![Bytes::from(format!("q{i}"))], true),
                ]
            })
            .collect();
        assert_eq!(got, expected, "{version:?}");
    }
    broker.stop().await?;
    Ok(())
}
