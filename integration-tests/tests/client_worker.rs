//! Our client and worker crates against our broker over TCP: retries, reconnects, concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::wait_for_service;
use integration_tests::{
    frames, free_endpoint, service_workers, test_config, worker_reply, CountingConnector, RawPeer,
    RunningBroker, PATIENCE, TEST_HEARTBEAT,
};
use majordomo_broker::HeartbeatConfig;
use majordomo_client::{AsyncClient, Client, ClientConfig, ClientError, MuxClient};
use majordomo_rt::transport::Connector;
use majordomo_worker::{handler_fn, BoxError, Handler, Worker, WorkerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Barrier};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn worker_config() -> WorkerConfig {
    WorkerConfig::default()
        .heartbeat(TEST_HEARTBEAT)
        .reconnect_initial(Duration::from_millis(50))
        .reconnect_max(Duration::from_millis(400))
}

fn quick_client(endpoint: &str, retries: u32) -> Client {
    Client::new(
        endpoint,
        ClientConfig::default()
            .timeout(Duration::from_millis(300))
            .attempts(retries),
    )
}

/// Runs worker(s) until the returned sender fires.
fn spawn_worker<H: Handler>(
    endpoint: &str,
    service: &str,
    config: WorkerConfig,
    handler: H,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), majordomo_worker::WorkerError>>,
) {
    run_worker(Worker::new(endpoint, service.to_owned(), config), handler)
}

/// Runs `worker` until the returned sender fires.
fn run_worker<C: Connector + 'static, H: Handler>(
    worker: Worker<C>,
    handler: H,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), majordomo_worker::WorkerError>>,
) {
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(worker.run(handler, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    (stop, task)
}

fn echo() -> impl Handler {
    handler_fn(|body| async move { Ok(body) })
}

/// Calls until it succeeds, a bounded number of times.
async fn call_until_ok(client: &Client, service: &str, body: &str) -> Result<Vec<Bytes>> {
    let mut last = None;
    for _ in 0..30 {
        match client
            .request(service.to_owned(), vec![Bytes::from(body.to_owned())])
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("never answered: {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gives_up_cleanly_when_no_broker_runs() -> Result<()> {
    let endpoint = free_endpoint()?;
    let client = quick_client(&endpoint, 3);
    match client
        .request("echo", vec![Bytes::from_static(b"anyone?")])
        .await
    {
        Err(ClientError::NoReply {
            attempts,
            service,
            body,
        }) => {
            assert_eq!(attempts, 3);
            assert_eq!(service.as_ref(), b"echo");
            assert_eq!(body, frames(&[b"anyone?"]), "the request is handed back");
        }
        other => panic!("expected NoReply, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_succeeds_when_broker_appears_between_retries() -> Result<()> {
    let endpoint = free_endpoint()?;
    // A bare TCP listener holds the port first. It accepts the client's first connection and
    // never answers the ZMTP greeting, so that attempt cannot get a reply and ends only when the
    // client gives up on it and closes the connection. The end of that stream is therefore proof
    // that one attempt has failed with nothing serving; only then does the broker start, on the
    // same port, for the attempts that follow.
    let listener =
        TcpListener::bind(endpoint.strip_prefix("tcp://").expect("a tcp endpoint")).await?;
    let client = quick_client(&endpoint, 10);
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request("echo", vec![Bytes::from_static(b"patience")])
                .await
        }
    });
    let (mut first, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .context("the client never connected")??;
    // Whatever it sent (its greeting) is read and dropped; end of stream or a reset both mean
    // the client closed the connection.
    let mut greeting = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, first.read_to_end(&mut greeting))
        .await
        .context("the client never gave up its first attempt")?;
    drop((first, listener));
    assert!(!call.is_finished(), "the call is still retrying");
    let broker = RunningBroker::start_at(&endpoint, test_config()).await?;
    let (stop, worker) = spawn_worker(&endpoint, "echo", worker_config(), echo());
    let reply = tokio::time::timeout(PATIENCE, call).await???;
    assert_eq!(reply, frames(&[b"patience"]));
    let _ = stop.send(true);
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reregisters_after_broker_crash_and_restart_on_same_port() -> Result<()> {
    let endpoint = free_endpoint()?;
    let broker = RunningBroker::start_at(&endpoint, test_config()).await?;
    let connector = CountingConnector::new(endpoint.clone());
    let mut connects = connector.connects();
    let (stop, worker) = run_worker(
        Worker::with_connector(connector, "echo", worker_config()),
        echo(),
    );
    let client = quick_client(&endpoint, 3);
    assert_eq!(
        call_until_ok(&client, "echo", "one").await?,
        frames(&[b"one"])
    );
    let connected = *connects.borrow();

    // No DISCONNECT: the worker must notice by itself that the broker is gone. The old broker
    // has ended and released the port once `crash` returns; the worker has noticed once it
    // begins a new connection, which it does only to reconnect.
    broker.crash().await?;
    tokio::time::timeout(PATIENCE, connects.wait_for(|n| *n > connected))
        .await
        .context("the worker never tried to reconnect")??;
    let broker = RunningBroker::start_at(&endpoint, test_config()).await?;
    broker
        .wait_until("worker re-registered", |s| service_workers(s, b"echo") == 1)
        .await?;
    assert_eq!(
        call_until_ok(&client, "echo", "two").await?,
        frames(&[b"two"])
    );

    let _ = stop.send(true);
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reregisters_after_disconnect() -> Result<()> {
    let endpoint = free_endpoint()?;
    let broker = RunningBroker::start_at(&endpoint, test_config()).await?;
    let (stop, worker) = spawn_worker(&endpoint, "echo", worker_config(), echo());
    let client = quick_client(&endpoint, 3);
    call_until_ok(&client, "echo", "before").await?;
    // A graceful stop sends the worker DISCONNECT; a new broker on the port gets it back.
    broker.stop().await?;
    let broker = RunningBroker::start_at(&endpoint, test_config()).await?;
    assert_eq!(
        call_until_ok(&client, "echo", "after").await?,
        frames(&[b"after"])
    );
    let _ = stop.send(true);
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_tasks_on_one_handle_each_get_their_own_reply() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let config = worker_config().concurrency(4);
    let (stop, worker) = spawn_worker(&broker.endpoint, "echo", config, echo());
    let client = Client::new(broker.endpoint.clone(), ClientConfig::default());
    call_until_ok(&client, "echo", "warm-up").await?;
    let mut tasks = Vec::new();
    for t in 0..100 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let body = Bytes::from(format!("task {t} call {i}"));
                let reply = client.request("echo", vec![body.clone()]).await?;
                anyhow::ensure!(
                    reply == [body.clone()],
                    "task {t} got {reply:?} for {body:?}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(PATIENCE * 3, task).await???;
    }
    let _ = stop.send(true);
    worker.await??;
    let stats = broker.stop().await?;
    assert_eq!(stats.requeued, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_while_a_long_handler_runs() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    // The handler takes ten liveness periods; the broker must not purge the worker meanwhile.
    let slow = handler_fn(|body| async move {
        tokio::time::sleep(TEST_HEARTBEAT.expiry() * 10).await;
        Ok(body)
    });
    let (stop, worker) = spawn_worker(&broker.endpoint, "slow", worker_config(), slow);
    let client = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let reply = client
        .request("slow", vec![Bytes::from_static(b"take your time")])
        .await?;
    assert_eq!(reply, frames(&[b"take your time"]));
    let _ = stop.send(true);
    worker.await??;
    let stats = broker.stop().await?;
    assert_eq!((stats.purged, stats.requeued), (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_handlers_do_not_kill_the_worker() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let handler = handler_fn(|body: Vec<Bytes>| async move {
        match body[0].as_ref() {
            b"fail" => Err::<Vec<Bytes>, BoxError>("refused".into()),
            b"panic" => panic!("handler panicked on purpose"),
            _ => Ok(body),
        }
    });
    let (stop, worker) = spawn_worker(&broker.endpoint, "fragile", worker_config(), handler);
    let client = quick_client(&broker.endpoint, 1);
    call_until_ok(&client, "fragile", "ok").await?;
    for bad in ["fail", "panic"] {
        let result = client.request("fragile", vec![Bytes::from(bad)]).await;
        assert!(
            matches!(result, Err(ClientError::NoReply { .. })),
            "{bad}: {result:?}"
        );
        // The worker is back and serving.
        assert_eq!(
            call_until_ok(&client, "fragile", "again").await?,
            frames(&[b"again"])
        );
    }
    let _ = stop.send(true);
    worker.await??;
    let stats = broker.stop().await?;
    // Each bad request went to a worker max_deliveries times, then was dropped.
    assert_eq!(stats.abandoned, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_runs_that_many_logical_workers() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    // Each handler waits until three are running at once, so the overlap is certain; a worker
    // that ran fewer at a time would never get past the barrier, and one that ran more would
    // show it in `peak`.
    let together = Arc::new(Barrier::new(3));
    let handler = {
        let (running, peak, together) = (running.clone(), peak.clone(), together.clone());
        handler_fn(move |body| {
            let (running, peak, together) = (running.clone(), peak.clone(), together.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                together.wait().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(body)
            }
        })
    };
    let config = worker_config().concurrency(3);
    let (stop, worker) = spawn_worker(&broker.endpoint, "par", config, handler);
    broker
        .wait_until("three logical workers registered", |s| {
            service_workers(s, b"par") == 3
        })
        .await?;
    // One attempt each, so no resent request upsets the count of nine (three rounds of three).
    let client = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let mut tasks = Vec::new();
    for i in 0..9 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = vec![Bytes::from(format!("{i}"))];
            let reply = client.request("par", body.clone()).await?;
            anyhow::ensure!(reply == body, "request {i} got {reply:?}");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        tokio::time::timeout(PATIENCE * 2, t).await???;
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "three logical workers run at once, never more"
    );
    let _ = stop.send(true);
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_for_another_service_is_an_error() -> Result<()> {
    // A misbehaving broker that answers every request as service "other".
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await?.to_string();
    // The fake keeps its socket open until the client has its answer.
    let (answered, client_done) = oneshot::channel::<()>();
    let fake = tokio::spawn(async move {
        let msg = router.recv().await?.into_vec();
        let reply = vec![
            msg[0].clone(),
            Bytes::new(),
            Bytes::from_static(b"MDPC01"),
            Bytes::from_static(b"other"),
            Bytes::from_static(b"x"),
        ];
        router
            .send(ZmqMessage::try_from(reply).expect("frames"))
            .await?;
        let _ = client_done.await;
        anyhow::Ok(())
    });
    let client = quick_client(&endpoint, 1);
    let result = client.request("echo", vec![Bytes::from_static(b"x")]).await;
    let _ = answered.send(());
    match result {
        Err(ClientError::WrongService { expected, got }) => {
            assert_eq!(
                (expected.as_ref(), got.as_ref()),
                (&b"echo"[..], &b"other"[..])
            );
        }
        other => panic!("expected WrongService, got {other:?}"),
    }
    tokio::time::timeout(PATIENCE, fake).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_pipelines_many_requests() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let config = worker_config().concurrency(2);
    let (stop, worker) = spawn_worker(&broker.endpoint, "echo", config, echo());
    call_until_ok(&quick_client(&broker.endpoint, 3), "echo", "warm-up").await?;
    let mut client = AsyncClient::connect(&broker.endpoint, ClientConfig::default()).await?;
    for i in 0..500 {
        client
            .send("echo", vec![Bytes::from(format!("{i}"))])
            .await?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let reply = client.recv().await?;
        assert_eq!(reply.service.as_ref(), b"echo");
        seen.insert(String::from_utf8(reply.body[0].to_vec())?.parse::<u32>()?);
    }
    assert_eq!(seen.len(), 500);
    assert!(matches!(client.recv().await, Err(ClientError::Timeout)));
    let _ = stop.send(true);
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_of_two_brokers_sends_to_each_in_turn_and_goes_on_without_a_dead_one(
) -> Result<()> {
    let brokers = [
        RunningBroker::start(test_config()).await?,
        RunningBroker::start(test_config()).await?,
    ];
    let mut workers = Vec::new();
    for broker in &brokers {
        workers.push(spawn_worker(
            &broker.endpoint,
            "echo",
            worker_config(),
            echo(),
        ));
        call_until_ok(&quick_client(&broker.endpoint, 3), "echo", "warm-up").await?;
    }
    let endpoints = [brokers[0].endpoint.clone(), brokers[1].endpoint.clone()];
    let config = ClientConfig::default().timeout(Duration::from_secs(1));
    let mut client = AsyncClient::with_endpoints(endpoints, config).await?;
    assert_eq!(client.brokers(), 2);
    for i in 0..100 {
        client
            .send("echo", vec![Bytes::from(format!("{i}"))])
            .await?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let reply = client.recv().await?;
        seen.insert(String::from_utf8(reply.body[0].to_vec())?.parse::<u32>()?);
    }
    assert_eq!(seen.len(), 100);
    // Half each, beside the warm-up call.
    for broker in &brokers {
        assert_eq!(broker.stats().await?.replies, 51);
    }

    // The first broker stops: the client leaves it out once it notices (a failed send, or the
    // connection closing while it waits for replies), and the second serves all from then on.
    let [first, second] = brokers;
    let (stop, worker) = workers.remove(0);
    let _ = stop.send(true);
    worker.await??;
    first.stop().await?;
    let deadline = tokio::time::Instant::now() + 3 * PATIENCE;
    let mut answered = 0;
    while answered < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second broker never served every request"
        );
        client
            .send("echo", vec![Bytes::from_static(b"after")])
            .await?;
        match client.recv().await {
            Ok(reply) => {
                assert_eq!(reply.body, [Bytes::from_static(b"after")]);
                answered += 1;
            }
            // A request sent to the stopped broker before it was noticed: lost, as with a
            // DEALER connected to both.
            Err(ClientError::Timeout) => answered = 0,
            Err(error) => return Err(error.into()),
        }
    }
    assert_eq!(client.brokers(), 1);
    for (stop, worker) in workers {
        let _ = stop.send(true);
        worker.await??;
    }
    second.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_worker_serves_heartbeats_and_stops() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let config = worker_config()
        .concurrency(2)
        .busy_poll(Duration::from_millis(2));
    // Some requests leave the handler pending for a while, so the handler is polled from inside
    // the busy-poll window too.
    let handler = handler_fn(|body: Vec<Bytes>| async move {
        if body[0].starts_with(b"slow") {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        Ok(body)
    });
    let (stop, worker) = spawn_worker(&broker.endpoint, "echo", config, handler);
    let client = Client::new(broker.endpoint.clone(), ClientConfig::default());
    call_until_ok(&client, "echo", "warm-up").await?;
    let mut tasks = Vec::new();
    for t in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let kind = if i % 3 == 0 { "slow" } else { "fast" };
                let body = Bytes::from(format!("{kind} task {t} call {i}"));
                let reply = client.request("echo", vec![body.clone()]).await?;
                anyhow::ensure!(reply == [body.clone()], "task {t} got {reply:?}");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(PATIENCE * 3, task).await???;
    }
    // Idle for several liveness periods: the workers sleep past their window and still
    // heartbeat, so the broker keeps them.
    tokio::time::sleep(TEST_HEARTBEAT.expiry() * 4).await;
    assert_eq!(
        client.request("echo", frames(&[b"still here"])).await?,
        frames(&[b"still here"])
    );
    let _ = stop.send(true);
    tokio::time::timeout(PATIENCE, worker).await???;
    let stats = broker.stop().await?;
    assert_eq!((stats.purged, stats.requeued), (0, 0));
    Ok(())
}

/// Serves one round of `workers.len()` concurrent requests, one on each raw worker, answering
/// none before all have arrived, so every call of the round is in flight at once; returns the
/// client address of each request, which is the broker's name for the connection it came on.
async fn hold_one_round(workers: &mut [RawPeer]) -> Result<Vec<Bytes>> {
    let mut requests = Vec::new();
    for w in workers.iter_mut() {
        let msg = w.recv_skipping_heartbeats().await?;
        anyhow::ensure!(
            msg.len() >= 6 && msg[..3] == frames(&[b"", b"MDPW01", &[0x02]])[..],
            "not a REQUEST: {msg:?}"
        );
        requests.push((msg[3].clone(), msg[5..].to_vec()));
    }
    for (w, (client, body)) in workers.iter_mut().zip(&requests) {
        let body: Vec<&[u8]> = body.iter().map(|b| b.as_ref()).collect();
        w.send(worker_reply(client.clone(), &body)).await?;
    }
    Ok(requests.into_iter().map(|(client, _)| client).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_at_most_max_idle_connections_between_calls() -> Result<()> {
    const BOUND: usize = 4;
    const IN_FLIGHT: usize = 32;
    // Raw workers that never heartbeat: the broker's heartbeat is long enough that none is
    // purged while the test runs.
    let broker =
        RunningBroker::start(test_config().heartbeat(HeartbeatConfig::new(PATIENCE, 3))).await?;
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut w = RawPeer::connect(&broker.endpoint).await?;
        w.send(frames(&[b"", b"MDPW01", &[0x01], b"held"])).await?;
        workers.push(w);
    }
    broker
        .wait_until("raw workers registered", |s| {
            service_workers(s, b"held") == IN_FLIGHT
        })
        .await?;
    // One attempt per call and a long timeout: a retry would open a connection of its own.
    let client = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default()
            .timeout(PATIENCE)
            .attempts(1)
            .max_idle_connections(BOUND),
    );
    let round = |round: usize| {
        (0..IN_FLIGHT)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let body = vec![Bytes::from(format!("round {round} call {i}"))];
                    let reply = client.request("held", body.clone()).await?;
                    anyhow::ensure!(reply == body, "round {round} call {i} got {reply:?}");
                    anyhow::Ok(())
                })
            })
            .collect::<Vec<_>>()
    };

    // Round one: 32 calls in flight at once, each on a connection of its own, all new. When
    // they are answered the pool keeps BOUND of them and closes the rest.
    let calls = round(1);
    let first = hold_one_round(&mut workers).await?;
    for call in calls {
        tokio::time::timeout(PATIENCE, call).await???;
    }
    let first: HashSet<Bytes> = first.into_iter().collect();
    assert_eq!(first.len(), IN_FLIGHT, "one connection per call in flight");

    // Round two, again all in flight at once: each call takes an idle connection if there is
    // one, else opens a new one. So the connections of round one seen again are exactly the
    // ones the pool kept: BOUND of them, where a pool ignoring its bound would have kept all
    // 32 (and one that never reused a connection none).
    let calls = round(2);
    let second = hold_one_round(&mut workers).await?;
    for call in calls {
        tokio::time::timeout(PATIENCE, call).await???;
    }
    let second: HashSet<Bytes> = second.into_iter().collect();
    assert_eq!(second.len(), IN_FLIGHT, "one connection per call in flight");
    assert_eq!(
        second.intersection(&first).count(),
        BOUND,
        "connections kept between the rounds"
    );
    let stats = broker.stop().await?;
    assert_eq!((stats.requests, stats.replies), (64, 64));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_client_sends_10000_concurrent_requests_on_one_tcp_connection() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let (stop, stopped) = watch::channel(false);
    for _ in 0..4 {
        let worker = Worker::new(broker.endpoint.clone(), "echo", WorkerConfig::default());
        let mut stopped = stopped.clone();
        tokio::spawn(
            worker.run(handler_fn(|body| async move { Ok(body) }), async move {
                let _ = stopped.wait_for(|s| *s).await;
            }),
        );
    }
    wait_for_service(&broker.endpoint, "echo").await?;
    let connector = CountingConnector::new(broker.endpoint.clone());
    let connects = connector.connects();
    let client = MuxClient::with_connector(connector, ClientConfig::default().timeout(PATIENCE));
    let calls: Vec<_> = (0..10_000u32)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = vec![Bytes::from(n.to_string())];
                (n, client.request("echo", body).await)
            })
        })
        .collect();
    for call in calls {
        let (n, reply) = call.await?;
        assert_eq!(reply?, [Bytes::from(n.to_string())]);
    }
    assert_eq!(*connects.borrow(), 1);
    let stats = client.stats().await;
    assert_eq!((stats.replies, stats.multiplexed), (10_000, Some(true)));
    let _ = stop.send(true);
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_run_future_is_dropped_says_disconnect() -> Result<()> {
    let broker = integration_tests::RunningBroker::start(integration_tests::test_config()).await?;
    let worker = Worker::new(
        broker.endpoint.clone(),
        "echo",
        WorkerConfig::default()
            .heartbeat(integration_tests::TEST_HEARTBEAT)
            .concurrency(2),
    );
    let running = tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok::<_, BoxError>(body) }),
        std::future::pending(),
    ));
    broker
        .wait_until("both workers registered", |s| s.workers == 2)
        .await?;
    // Dropped, not shut down: the workers still say DISCONNECT, and are not left running.
    running.abort();
    let stats = broker
        .wait_until("both workers gone", |s| s.workers == 0)
        .await?;
    assert_eq!(
        stats.purged, 0,
        "removed on their DISCONNECT, not purged for silence"
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_leaving_after_large_replies_lose_no_request_under_load() -> Result<()> {
    // Each worker connection says DISCONNECT after every request (all pass the threshold),
    // while clients keep the queue full: the broker hands a departing connection the next
    // request before its DISCONNECT arrives. With one delivery allowed, a request counted as
    // lost there would be abandoned.
    let broker = RunningBroker::start(test_config().max_deliveries(1)).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        handler_fn(move |body: Vec<Bytes>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(body) }
        })
    };
    let config = worker_config()
        .concurrency(4)
        .fresh_connection_above(Some(64 * 1024));
    let (stop, worker) = spawn_worker(&broker.endpoint, "echo", config, handler);
    wait_for_service(&broker.endpoint, "echo").await?;
    const CLIENTS: usize = 8;
    const EACH: usize = 20;
    let mut callers = Vec::new();
    for c in 0..CLIENTS {
        let client = Client::new(&broker.endpoint, ClientConfig::default().attempts(1));
        callers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let body = Bytes::from(vec![(c * EACH + i) as u8; 128 * 1024]);
                let reply = client.request("echo", vec![body.clone()]).await?;
                anyhow::ensure!(reply == [body], "client {c}, request {i}: another reply");
            }
            anyhow::Ok(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let _ = stop.send(true);
    worker.await??;
    let stats = broker.stop().await?;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        CLIENTS * EACH,
        "each ran once"
    );
    assert_eq!(stats.abandoned, 0, "{stats:?}");
    Ok(())
}
