//! Titanic end to end over the in-memory transport on paused tokio time, with every part real:
//! our broker on a memory socket, an echo [`Worker`], Titanic dispatching through a 7/MDP
//! [`Client`] of that broker, and a [`TitanicClient`] submitting, waiting and closing. No
//! socket and no wall-clock wait: timeouts and backoff play out in virtual seconds.

mod support;

use std::time::Duration;

use bytes::Bytes;
use majordomo_broker::{Broker, BrokerConfig, EndpointRole};
use majordomo_client::{Client, ClientConfig};
use majordomo_rt::memory::{self, MemoryEndpoint, MemoryRouter};
use majordomo_titanic::core::CoreConfig;
use majordomo_titanic::store::MemoryStore;
use majordomo_titanic::tsp::Status;
use majordomo_titanic::{
    Titanic, TitanicClient, TitanicClientError, TitanicConfig, TitanicHandle, TitanicStats,
};
use majordomo_worker::{handler_fn, BoxError, Worker, WorkerConfig};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Virtual time a test may wait for anything; never an expected duration.
const PATIENCE: Duration = Duration::from_secs(600);
/// How often [`TitanicClient::wait`] asks.
const POLL: Duration = Duration::from_millis(100);

fn f(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// Our broker on a memory socket, and Titanic on it dispatching through a [`Client`] of it.
struct Setup {
    endpoint: MemoryEndpoint,
    handle: TitanicHandle,
    titanic: JoinHandle<TitanicStats>,
}

impl Setup {
    async fn start() -> Self {
        let (router, endpoint) = memory::router();
        let broker: Broker<MemoryRouter> = Broker::builder()
            .config(BrokerConfig::default())
            .build_on(vec![(EndpointRole::Shared, router)])
            .expect("a broker");
        tokio::spawn(broker.run(std::future::pending()));
        // One attempt of 1 s per dispatch, then the service backs off from 1 s.
        let dispatch = Client::with_connector(
            endpoint.clone(),
            ClientConfig::default()
                .timeout(Duration::from_secs(1))
                .attempts(1),
        );
        let config = TitanicConfig::default()
            .worker(WorkerConfig::default().concurrency(8))
            .core(CoreConfig::default().backoff(Duration::from_secs(1), Duration::from_secs(30)));
        let titanic =
            Titanic::with_connector(endpoint.clone(), MemoryStore::default(), dispatch, config);
        let handle = titanic.handle();
        let titanic = tokio::spawn(async move {
            titanic
                .run(std::future::pending())
                .await
                .expect("titanic runs")
        });
        let setup = Self {
            endpoint,
            handle,
            titanic,
        };
        for service in ["titanic.request", "titanic.reply", "titanic.close"] {
            setup.until_registered(service).await;
        }
        setup
    }

    /// A Titanic client through the broker.
    fn client(&self) -> TitanicClient<MemoryEndpoint> {
        TitanicClient::with_connector(self.endpoint.clone(), ClientConfig::default())
    }

    /// Starts an echo worker for `service`; it stops when the token is cancelled.
    fn echo_worker(&self, service: &str) -> (CancellationToken, JoinHandle<()>) {
        let stop = CancellationToken::new();
        let worker =
            Worker::with_connector(self.endpoint.clone(), f(service), WorkerConfig::default());
        let handler = handler_fn(|body: Vec<Bytes>| async move { Ok::<_, BoxError>(body) });
        let until = stop.clone();
        let task = tokio::spawn(async move {
            worker
                .run(handler, until.cancelled_owned())
                .await
                .expect("the worker runs");
        });
        (stop, task)
    }

    /// Waits until `service` has a worker at the broker, asking `mmi.service`.
    async fn until_registered(&self, service: &str) {
        let mmi = Client::with_connector(self.endpoint.clone(), ClientConfig::default());
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = mmi
                .request("mmi.service", vec![f(service)])
                .await
                .expect("the broker answers");
            if answer == [f("200")] {
                return;
            }
            assert!(Instant::now() < deadline, "{service} never registered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `check` holds on the running server's stats.
    async fn until(&self, what: &str, check: impl Fn(&TitanicStats) -> bool) -> TitanicStats {
        support::stats_until(&self.handle, PATIENCE, what, check).await
    }

    async fn stop(self) -> TitanicStats {
        self.handle.shutdown();
        self.titanic.await.expect("titanic ended")
    }
}

#[tokio::test(start_paused = true)]
async fn requests_go_through_the_broker_to_a_worker_and_back_to_the_client() {
    let setup = Setup::start().await;
    let (worker_stop, worker) = setup.echo_worker("echo");
    setup.until_registered("echo").await;
    let client = setup.client();
    let bodies: Vec<String> = (0..5).map(|i| format!("request {i}")).collect();
    let mut uuids = Vec::new();
    for body in &bodies {
        uuids.push(client.submit("echo", vec![f(body)]).await.expect("stored"));
    }
    let mut distinct = uuids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), uuids.len(), "a UUID per request");
    for (uuid, body) in uuids.iter().zip(&bodies) {
        let reply = client.wait(*uuid, PATIENCE, POLL).await.expect("a reply");
        assert_eq!(reply, [f(body)], "the echo of its own request");
    }
    for uuid in &uuids {
        client.close(*uuid).await.expect("closed");
    }
    // Closed: Titanic no longer knows them.
    assert!(matches!(
        client.reply(uuids[0]).await,
        Err(TitanicClientError::Status(Status::Unknown))
    ));
    let stats = setup.until("every request closed", |s| s.closed == 5).await;
    assert_eq!(
        (stats.accepted, stats.replied, stats.failed, stats.stored),
        (5, 5, 0, 0),
        "{stats:?}"
    );
    worker_stop.cancel();
    worker.await.unwrap();
    setup.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_its_worker_and_the_client_gets_the_reply() {
    let setup = Setup::start().await;
    let client = setup.client();
    let uuid = client
        .submit("late", vec![f("patient")])
        .await
        .expect("stored");
    // No worker: the dispatch gets no reply, and the service backs off.
    let before = setup.until("a dispatch failed", |s| s.failed >= 1).await;
    assert_eq!((before.replied, before.stored), (0, 1), "{before:?}");
    assert!(matches!(client.reply(uuid).await, Ok(None)), "pending");
    let (worker_stop, worker) = setup.echo_worker("late");
    let reply = client.wait(uuid, PATIENCE, POLL).await.expect("a reply");
    assert_eq!(reply, [f("patient")]);
    let stats = setup.until("the reply counted", |s| s.replied == 1).await;
    assert!(
        stats.dispatched > stats.failed && stats.failed >= 1,
        "sent again after failing: {stats:?}"
    );
    client.close(uuid).await.expect("closed");
    worker_stop.cancel();
    worker.await.unwrap();
    let stats = setup.stop().await;
    assert_eq!(
        (stats.accepted, stats.closed, stats.stored),
        (1, 1, 0),
        "{stats:?}"
    );
}
