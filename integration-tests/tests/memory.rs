//! The drivers over the in-memory transport on paused tokio time: every timing rule of the
//! broker, the Pirate queue and both workers plays out in virtual seconds, deterministically.
//! The clock jumps from deadline to deadline whenever every task is waiting, so a 60 s handler
//! or a 7.5 s liveness takes milliseconds, and no test depends on the machine's speed. The
//! clients (Majordomo's and the Lazy Pirate) run on the same transport.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use majordomo_broker::{Broker, BrokerConfig, BrokerHandle, BrokerStats, EndpointRole};
use majordomo_client::{Client, ClientConfig, ClientError, MuxClient, MuxStats};
use majordomo_pirate::{
    LazyPirate, LazyPirateConfig, PppWorker, PppWorkerConfig, Queue, QueueConfig, QueueHandle,
};
use majordomo_proto::mdp::{BrokerMessage, ClientReply, ClientRequest, WorkerMessage};
use majordomo_proto::ppp::PppMessage;
use majordomo_proto::Limits;
use majordomo_rt::memory::{
    self, MemoryDealer, MemoryEndpoint, MemoryReceiver, MemoryRouter, MemorySender,
};
use majordomo_rt::server::ServerHandle;
use majordomo_rt::transport::{Connector, SendHalf, Split, Transport, TransportError};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use tokio::task::JoinHandle;

/// Virtual time a test may wait for anything; never an expected duration.
const VIRTUAL_PATIENCE: Duration = Duration::from_secs(600);

type BrokerTask = JoinHandle<Result<BrokerStats, majordomo_broker::BrokerError>>;

fn spawn_broker(
    sockets: Vec<(EndpointRole, MemoryRouter)>,
    config: BrokerConfig,
) -> Result<(BrokerHandle, BrokerTask)> {
    let broker: Broker<MemoryRouter> = Broker::builder().config(config).build_on(sockets)?;
    let handle = broker.handle();
    Ok((handle, tokio::spawn(broker.run(std::future::pending()))))
}

/// A broker on one shared in-memory socket.
fn shared_broker(config: BrokerConfig) -> Result<(MemoryEndpoint, BrokerHandle, BrokerTask)> {
    let (router, endpoint) = memory::router();
    let (handle, task) = spawn_broker(vec![(EndpointRole::Shared, router)], config)?;
    Ok((endpoint, handle, task))
}

/// A broker with the default configuration, clients and workers each on an endpoint of their
/// own: its handle, its task, and the clients' and the workers' endpoints.
fn split_broker() -> Result<(BrokerHandle, BrokerTask, MemoryEndpoint, MemoryEndpoint)> {
    let (clients, client_ep) = memory::router();
    let (workers, worker_ep) = memory::router();
    let (handle, task) = spawn_broker(
        vec![
            (EndpointRole::Clients, clients),
            (EndpointRole::Workers, workers),
        ],
        BrokerConfig::default(),
    )?;
    Ok((handle, task, client_ep, worker_ep))
}

async fn stats(handle: &BrokerHandle) -> BrokerStats {
    handle.stats().await.expect("broker running")
}

/// Waits (in virtual time, bounded) until `check` holds on a server's stats.
async fn until<S: Send + std::fmt::Debug + 'static>(
    handle: &ServerHandle<S>,
    check: impl Fn(&S) -> bool,
) -> S {
    let deadline = tokio::time::Instant::now() + VIRTUAL_PATIENCE;
    loop {
        let s = handle.stats().await.expect("server running");
        if check(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(service: &'static [u8], body: &[u8]) -> Vec<Bytes> {
    ClientRequest::new(
        Bytes::from_static(service),
        vec![Bytes::copy_from_slice(body)],
    )
    .encode()
}

async fn recv_reply(client: &mut MemoryDealer) -> Result<ClientReply> {
    let frames = tokio::time::timeout(VIRTUAL_PATIENCE, client.recv())
        .await
        .context("no reply")??;
    Ok(ClientReply::decode(&frames, &Limits::default())?)
}

/// The next non-heartbeat command a raw worker gets.
async fn recv_command(worker: &mut MemoryDealer) -> Result<BrokerMessage> {
    loop {
        let frames = tokio::time::timeout(VIRTUAL_PATIENCE, worker.recv())
            .await
            .context("nothing for the worker")??;
        match BrokerMessage::decode(&frames, &Limits::default())? {
            BrokerMessage::Heartbeat => continue,
            other => return Ok(other),
        }
    }
}

/// The next REQUEST a raw worker gets: the client's address and the body.
async fn recv_request(worker: &mut MemoryDealer) -> Result<(Bytes, Vec<Bytes>)> {
    match recv_command(worker).await? {
        BrokerMessage::Request { client, body } => Ok((client, body)),
        other => anyhow::bail!("expected a REQUEST, got {other:?}"),
    }
}

/// A raw worker's REPLY to `client`.
async fn reply(worker: &mut MemoryDealer, client: Bytes, body: Vec<Bytes>) -> Result<()> {
    worker
        .send(WorkerMessage::Reply { client, body }.encode())
        .await?;
    Ok(())
}

fn ready(service: &'static [u8]) -> Vec<Bytes> {
    WorkerMessage::Ready {
        service: Bytes::from_static(service),
    }
    .encode()
}

#[tokio::test(start_paused = true)]
async fn broker_routes_a_request_to_a_worker_and_the_reply_back() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let mut worker = endpoint.connect()?;
    worker.send(ready(b"echo")).await?;
    let mut client = endpoint.connect()?;
    client.send(request(b"echo", b"hello")).await?;
    let (address, body) = recv_request(&mut worker).await?;
    assert_eq!(&address, client.identity());
    assert_eq!(body, [Bytes::from_static(b"hello")]);
    reply(&mut worker, address, body).await?;
    let reply = recv_reply(&mut client).await?;
    assert_eq!(reply.service, Bytes::from_static(b"echo"));
    assert_eq!(reply.body, [Bytes::from_static(b"hello")]);
    let s = stats(&handle).await;
    assert_eq!(
        (s.requests, s.replies, s.workers, s.idle_workers),
        (1, 1, 1, 1)
    );
    assert_eq!(s.per_service.len(), 1);
    assert_eq!(s.per_service[0].name, Bytes::from_static(b"echo"));
    assert_eq!(s.per_service[0].idle_workers, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn broker_heartbeats_a_silent_worker_then_purges_it_after_liveness() -> Result<()> {
    let config = BrokerConfig::default();
    let expiry = config.heartbeat.expiry();
    let (endpoint, handle, _task) = shared_broker(config)?;
    let mut worker = endpoint.connect()?;
    worker.send(ready(b"echo")).await?;
    let registered_at = tokio::time::Instant::now();
    until(&handle, |s| s.workers == 1).await;
    // The broker heartbeats the worker while it lives.
    let frames = tokio::time::timeout(VIRTUAL_PATIENCE, worker.recv()).await??;
    assert_eq!(
        BrokerMessage::decode(&frames, &Limits::default())?,
        BrokerMessage::Heartbeat
    );
    let s = until(&handle, |s| s.purged == 1).await;
    assert_eq!(s.workers, 0);
    assert!(
        tokio::time::Instant::now() >= registered_at + expiry,
        "purged before liveness ran out"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn broker_expires_a_request_for_a_service_without_workers() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let mut client = endpoint.connect()?;
    client.send(request(b"nobody", b"x")).await?;
    let queued = until(&handle, |s| s.queued == 1).await;
    assert_eq!(queued.per_service[0].queued, 1);
    let s = until(&handle, |s| s.expired == 1).await;
    assert_eq!(s.queued, 0);
    // Idle, the service is kept for its grace, then forgotten on the broker's own deadline.
    let expired_at = tokio::time::Instant::now();
    let s = until(&handle, |s| s.services == 0).await;
    assert_eq!(s.service_bytes, 0);
    assert!(
        tokio::time::Instant::now() >= expired_at + BrokerConfig::default().service_idle_grace / 2,
        "forgotten before its grace"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn client_flood_on_its_endpoint_does_not_starve_the_worker_endpoint() -> Result<()> {
    // 100,000 requests are waiting on the clients' socket before the worker says READY on its
    // own socket. Polled in turn, the workers' socket is served after at most a batch of client
    // messages; a loop that always polled the clients first would register the worker only once
    // the whole flood had been read.
    const FLOOD: u64 = 100_000;
    let (handle, _task, client_ep, worker_ep) = split_broker()?;
    let mut flooder = client_ep.connect()?;
    for i in 0..FLOOD {
        flooder
            .send(request(b"echo", i.to_string().as_bytes()))
            .await?;
    }
    let mut worker = worker_ep.connect()?;
    worker.send(ready(b"echo")).await?;
    // Each stats request is answered between two turns of the broker's loop, so this sees the
    // first turn at which the worker is registered (a sleep here would wait for the whole flood:
    // paused time moves only when every task is idle).
    let mut registered = None;
    for _ in 0..100_000 {
        let s = stats(&handle).await;
        if s.workers == 1 {
            registered = Some(s);
            break;
        }
        tokio::task::yield_now().await;
    }
    let s = registered.context("the worker never registered")?;
    assert!(
        s.requests < FLOOD / 2,
        "the worker was registered only after {} of {FLOOD} client messages",
        s.requests
    );
    // And it is served.
    assert!(matches!(
        recv_command(&mut worker).await?,
        BrokerMessage::Request { .. }
    ));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_request_behind_a_route_on_the_worker_endpoint_is_refused_as_any_other(
) -> Result<()> {
    let (handle, _task, client_ep, worker_ep) = split_broker()?;
    let mut worker = worker_ep.connect()?;
    worker.send(ready(b"echo")).await?;
    until(&handle, |s| s.workers == 1).await;
    // A client's request, tagged as a multiplexing client tags it, where only workers belong.
    let mut intruder = worker_ep.connect()?;
    let mut routed = vec![Bytes::from_static(b"tag")];
    routed.extend(request(b"echo", b"from the worker endpoint"));
    intruder.send(routed).await?;
    until(&handle, |s| s.protocol_errors == 1).await;
    // The worker's first request is the one sent where clients belong.
    let mut client = client_ep.connect()?;
    client.send(request(b"echo", b"from a client")).await?;
    match recv_command(&mut worker).await? {
        BrokerMessage::Request { body, .. } => {
            assert_eq!(body, [Bytes::from_static(b"from a client")]);
        }
        other => panic!("expected a request, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn worker_heartbeats_through_a_long_request_and_its_reply_is_delivered_once() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let long = Duration::from_secs(60);
    let worker = Worker::with_connector(endpoint.clone(), "slow", WorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(move |body| async move {
            tokio::time::sleep(long).await;
            Ok(body)
        }),
        std::future::pending(),
    ));
    until(&handle, |s| s.workers == 1).await;
    let mut client = endpoint.connect()?;
    client.send(request(b"slow", b"job")).await?;
    let started = tokio::time::Instant::now();
    let reply = recv_reply(&mut client).await?;
    assert_eq!(reply.body, [Bytes::from_static(b"job")]);
    assert!(tokio::time::Instant::now() >= started + long);
    let s = stats(&handle).await;
    assert_eq!((s.replies, s.purged, s.requeued), (1, 0, 0));
    // Nothing else arrives for that request.
    let more = tokio::time::timeout(Duration::from_secs(30), client.recv()).await;
    assert!(more.is_err(), "a second reply: {more:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn worker_told_disconnect_registers_again_on_a_new_connection_after_backoff() -> Result<()> {
    // The test plays the broker on a raw in-memory ROUTER.
    let (mut broker, endpoint) = memory::router();
    let config = WorkerConfig::default();
    let worker = Worker::with_connector(endpoint.clone(), "echo", config);
    tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok(body) }),
        std::future::pending(),
    ));
    let first = tokio::time::timeout(VIRTUAL_PATIENCE, broker.recv()).await??;
    assert_eq!(&first[1..], ready(b"echo").as_slice());
    let told_at = tokio::time::Instant::now();
    broker
        .send(majordomo_proto::mdp::BrokerMessage::Disconnect.encode_routed(&first[0]))
        .await?;
    // "When the worker receives DISCONNECT ... it MUST close its socket, and reconnect to the
    // broker on a new socket."
    let second = tokio::time::timeout(VIRTUAL_PATIENCE, broker.recv()).await??;
    assert_eq!(&second[1..], ready(b"echo").as_slice());
    assert_ne!(second[0], first[0], "a new connection");
    assert!(tokio::time::Instant::now() >= told_at + config.reconnect_initial);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shutdown_through_the_handle_sends_disconnect_to_every_worker() -> Result<()> {
    let (endpoint, handle, task) = shared_broker(BrokerConfig::default())?;
    let mut worker = endpoint.connect()?;
    worker.send(ready(b"echo")).await?;
    until(&handle, |s| s.workers == 1).await;
    handle.shutdown();
    assert_eq!(recv_command(&mut worker).await?, BrokerMessage::Disconnect);
    let last = task.await??;
    assert_eq!(last.workers, 0);
    assert!(
        handle.stats().await.is_none(),
        "a stopped broker has no stats"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn drained_completes_once_the_queued_and_in_flight_requests_are_answered() -> Result<()> {
    use futures::FutureExt;
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let mut worker = endpoint.connect()?;
    worker.send(ready(b"echo")).await?;
    let mut client = endpoint.connect()?;
    client.send(request(b"echo", b"first")).await?;
    client.send(request(b"echo", b"second")).await?;
    let (address, body) = recv_request(&mut worker).await?;
    until(&handle, |s| s.in_flight == 1 && s.queued == 1).await;
    handle.drain();
    // The stats answer after the drain's turn, which found work left.
    until(&handle, |s| s.draining).await;
    assert!(
        handle.drained().now_or_never().is_none(),
        "drained while two requests are held"
    );
    reply(&mut worker, address, body).await?;
    let (address, body) = recv_request(&mut worker).await?;
    assert_eq!(body, [Bytes::from_static(b"second")]);
    assert!(
        handle.drained().now_or_never().is_none(),
        "drained while a request is in flight"
    );
    reply(&mut worker, address, body).await?;
    tokio::time::timeout(VIRTUAL_PATIENCE, handle.drained())
        .await
        .context("never drained")?;
    for expected in [&b"first"[..], b"second"] {
        assert_eq!(recv_reply(&mut client).await?.body, [expected]);
    }
    // Drained is not stopped: the broker still runs, holding nothing.
    let s = stats(&handle).await;
    assert_eq!((s.queued, s.in_flight, s.replies), (0, 0, 2));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn drained_completes_when_the_broker_stops_without_draining() -> Result<()> {
    let (endpoint, handle, task) = shared_broker(BrokerConfig::default())?;
    let mut client = endpoint.connect()?;
    client.send(request(b"nobody", b"x")).await?;
    until(&handle, |s| s.queued == 1).await;
    assert!(
        futures::FutureExt::now_or_never(handle.drained()).is_none(),
        "drained before the broker was asked to drain or stop"
    );
    let drained = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drained().await }
    });
    handle.shutdown();
    task.await??;
    tokio::time::timeout(VIRTUAL_PATIENCE, drained)
        .await
        .context("drained never completed")??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_held_while_others_are_served() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok(body) }),
        std::future::pending(),
    ));
    until(&handle, |s| s.workers == 1).await;
    // Each mmi request is answered; past the router's queue to this client its sends wait, time
    // out, and the client is held.
    let mut sink = endpoint.connect()?;
    for _ in 0..(memory::DEALER_QUEUE * 3) {
        sink.send(request(b"mmi.service", b"echo")).await?;
    }
    let mut client = endpoint.connect()?;
    for i in 0..20 {
        let body = format!("served {i}");
        client.send(request(b"echo", body.as_bytes())).await?;
        let reply = recv_reply(&mut client).await?;
        assert_eq!(reply.body, [Bytes::from(body)]);
    }
    // The mmi.* answers are counted apart from the clients' replies.
    let s = stats(&handle).await;
    assert_eq!(s.replies, 20);
    assert!(s.mmi_requests >= memory::DEALER_QUEUE as u64, "{s:?}");
    drop(sink);
    Ok(())
}

type QueueTask = JoinHandle<Result<majordomo_pirate::QueueStats, majordomo_pirate::QueueError>>;

fn spawn_queue(
    config: QueueConfig,
) -> Result<(MemoryEndpoint, MemoryEndpoint, QueueHandle, QueueTask)> {
    let (frontend, front_ep) = memory::router();
    let (backend, back_ep) = memory::router();
    let queue = Queue::builder()
        .config(config)
        .build_on(frontend, backend)?;
    let handle = queue.handle();
    let task = tokio::spawn(queue.run(std::future::pending()));
    Ok((front_ep, back_ep, handle, task))
}

#[tokio::test(start_paused = true)]
async fn paranoid_queue_expires_a_silent_worker_and_gives_its_request_to_a_live_one() -> Result<()>
{
    let (front, back, handle, _task) = spawn_queue(QueueConfig::paranoid())?;
    // A raw worker that takes a request and then goes silent.
    let mut silent = back.connect()?;
    silent.send(PppMessage::Ready.encode()).await?;
    until(&handle, |s| s.workers == 1).await;
    let mut client = front.connect()?;
    client
        .send(vec![Bytes::new(), Bytes::from_static(b"job")])
        .await?;
    loop {
        let frames = tokio::time::timeout(VIRTUAL_PATIENCE, silent.recv()).await??;
        if let PppMessage::Payload(_) = PppMessage::decode(&frames, &Limits::default())? {
            break;
        }
    }
    // A real PPP worker joins; the silent one's request must reach it after liveness.
    let worker = PppWorker::with_connector(back.clone(), PppWorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|mut body: Vec<Bytes>| async move {
            body.push(Bytes::from_static(b"done"));
            Ok(body)
        }),
        std::future::pending(),
    ));
    let reply = tokio::time::timeout(VIRTUAL_PATIENCE, client.recv()).await??;
    assert_eq!(
        reply,
        [
            Bytes::new(),
            Bytes::from_static(b"job"),
            Bytes::from_static(b"done")
        ]
    );
    let s = until(&handle, |s| s.expired_workers == 1).await;
    assert_eq!((s.requeued, s.replies), (1, 1));
    drop(silent);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ppp_worker_sends_ready_again_after_a_failed_handler() -> Result<()> {
    let (front, back, handle, _task) = spawn_queue(QueueConfig::paranoid())?;
    let worker = PppWorker::with_connector(back.clone(), PppWorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|body: Vec<Bytes>| async move {
            if body[0].as_ref() == b"fail" {
                Err("asked to fail".into())
            } else {
                Ok(body)
            }
        }),
        std::future::pending(),
    ));
    until(&handle, |s| s.workers == 1).await;
    let mut client = front.connect()?;
    client
        .send(vec![Bytes::new(), Bytes::from_static(b"fail")])
        .await?;
    // The request comes back to the same worker (it sent READY again) until its deliveries
    // run out; then the next request is served normally.
    let s = until(&handle, |s| s.abandoned == 1).await;
    assert_eq!(s.workers, 1, "the worker is not counted twice");
    client
        .send(vec![Bytes::new(), Bytes::from_static(b"ok")])
        .await?;
    let reply = tokio::time::timeout(VIRTUAL_PATIENCE, client.recv()).await??;
    assert_eq!(reply, [Bytes::new(), Bytes::from_static(b"ok")]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_guide_style_worker_silent_while_busy_past_liveness_is_delivered_once() -> Result<()> {
    // The Guide's worker API sends nothing while its handler runs: a raw worker that takes a
    // request and answers after 60 s of silence (eight times liveness).
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let mut worker = endpoint.connect()?;
    worker.send(ready(b"slow")).await?;
    until(&handle, |s| s.workers == 1).await;
    let mut client = endpoint.connect()?;
    client.send(request(b"slow", b"job")).await?;
    let (address, body) = recv_request(&mut worker).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    reply(&mut worker, address, body).await?;
    let reply = recv_reply(&mut client).await?;
    assert_eq!(reply.body, [Bytes::from_static(b"job")]);
    let s = stats(&handle).await;
    assert_eq!((s.replies, s.purged, s.requeued), (1, 0, 0));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_busy_worker_whose_connection_closes_has_its_request_served_by_another_at_once(
) -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let mut doomed = endpoint.connect()?;
    doomed.send(ready(b"svc")).await?;
    until(&handle, |s| s.workers == 1).await;
    let mut client = endpoint.connect()?;
    client.send(request(b"svc", b"job")).await?;
    assert!(matches!(
        recv_command(&mut doomed).await?,
        BrokerMessage::Request { .. }
    ));
    let mut other = endpoint.connect()?;
    other.send(ready(b"svc")).await?;
    until(&handle, |s| s.workers == 2).await;
    // The process dies: its connection closes and the transport says so.
    let killed_at = tokio::time::Instant::now();
    drop(doomed);
    let (address, body) = recv_request(&mut other).await?;
    assert!(
        tokio::time::Instant::now() < killed_at + BrokerConfig::default().heartbeat.expiry(),
        "re-queued on the closed connection, not after liveness"
    );
    reply(&mut other, address, body).await?;
    assert_eq!(
        recv_reply(&mut client).await?.body,
        [Bytes::from_static(b"job")]
    );
    let s = stats(&handle).await;
    assert_eq!((s.disconnected, s.requeued, s.purged), (1, 1, 0));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_wait_for_a_busy_worker_instead_of_expiring() -> Result<()> {
    // 10,000 requests for one worker that takes 10 ms each: 100 s of work, ten times the
    // expiry. Requests for a served service wait for it.
    const N: usize = 10_000;
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|body| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(body)
        }),
        std::future::pending(),
    ));
    until(&handle, |s| s.workers == 1).await;
    let mut client = endpoint.connect()?;
    for i in 0..N {
        client
            .send(request(b"echo", i.to_string().as_bytes()))
            .await?;
    }
    for _ in 0..N {
        recv_reply(&mut client).await?;
    }
    let s = stats(&handle).await;
    assert_eq!((s.expired, s.rejected, s.replies), (0, 0, N as u64));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_v02_worker_told_disconnect_registers_again_on_a_new_connection() -> Result<()> {
    use majordomo_proto::mdp2::{self, Dialect, Version};
    for dialect in [Dialect::Rfc18, Dialect::Majortomo] {
        let (mut broker, endpoint) = memory::router();
        let config = WorkerConfig::default().version(Version::V02(dialect));
        let worker = Worker::with_connector(endpoint.clone(), "echo", config);
        let task = tokio::spawn(worker.run(
            handler_fn(|body| async move { Ok(body) }),
            std::future::pending(),
        ));
        let ready = mdp2::WorkerMessage::Ready {
            service: Bytes::from_static(b"echo"),
        }
        .encode(dialect);
        let first = tokio::time::timeout(VIRTUAL_PATIENCE, broker.recv()).await??;
        assert_eq!(&first[1..], ready.as_slice(), "{dialect:?}");
        let disconnect = mdp2::BrokerMessage::Disconnect.encode_routed(&first[0], dialect);
        broker.send(disconnect).await?;
        // 18/MDP: "a worker that gets DISCONNECT reconnects".
        let second = tokio::time::timeout(VIRTUAL_PATIENCE, broker.recv()).await??;
        assert_eq!(&second[1..], ready.as_slice(), "{dialect:?}");
        assert_ne!(second[0], first[0], "a new connection");
        task.abort();
    }
    Ok(())
}

// Clients over memory: the call driver's retries, timeouts and stale replies through the real
// broker, queue and workers.

fn memory_client(endpoint: &MemoryEndpoint, timeout: Duration) -> Client<MemoryEndpoint> {
    Client::with_connector(endpoint.clone(), ClientConfig::default().timeout(timeout))
}

/// `count` requests ("request 0", ...) to `echo` from `client` at once, each answered with its
/// own body.
async fn all_echoed(client: &Client<MemoryEndpoint>, count: usize) -> Result<()> {
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = vec![Bytes::from(format!("request {i}"))];
                (client.request("echo", body.clone()).await, body)
            })
        })
        .collect();
    for call in calls {
        let (reply, body) = call.await?;
        assert_eq!(reply?, body);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn clients_are_answered_through_the_broker_by_a_worker() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok(body) }),
        std::future::pending(),
    ));
    let client = memory_client(&endpoint, Duration::from_millis(2500));
    all_echoed(&client, 10).await?;
    let s = stats(&handle).await;
    assert_eq!((s.replies, s.expired), (10, 0));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_reply_after_the_clients_timeout_is_dropped_and_the_retry_answered() -> Result<()> {
    let (endpoint, _handle, _task) = shared_broker(BrokerConfig::default())?;
    let timeout = Duration::from_secs(1);
    // The first request takes longer than the client's timeout; the retry is served at once.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = served.clone();
    let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(move |mut body: Vec<Bytes>| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    tokio::time::sleep(timeout * 3 / 2).await;
                }
                body.push(Bytes::from(format!("answer {n}")));
                Ok(body)
            }
        }),
        std::future::pending(),
    ));
    let client = memory_client(&endpoint, timeout);
    let reply = client
        .request("echo", vec![Bytes::from_static(b"job")])
        .await?;
    assert_eq!(
        reply,
        [Bytes::from_static(b"job"), Bytes::from_static(b"answer 2")],
        "the late answer to the first attempt reached the call"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    Ok(())
}

/// Past `max_in_flight` a request waits for its turn, holding no connection, and its timeout
/// starts only then: three requests one at a time, each served in most of a timeout, are each
/// answered at their first attempt.
#[tokio::test(start_paused = true)]
async fn requests_past_max_in_flight_wait_their_turn_outside_their_timeout() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    let timeout = Duration::from_secs(1);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (count, peak) = (served.clone(), most.clone());
    let worker = Worker::with_connector(
        endpoint.clone(),
        "echo",
        WorkerConfig::default().concurrency(4),
    );
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    tokio::spawn(worker.run(
        handler_fn(move |body: Vec<Bytes>| {
            use std::sync::atomic::Ordering::SeqCst;
            count.fetch_add(1, SeqCst);
            let busy = busy.clone();
            peak.fetch_max(busy.fetch_add(1, SeqCst) + 1, SeqCst);
            async move {
                tokio::time::sleep(timeout * 4 / 5).await;
                busy.fetch_sub(1, SeqCst);
                Ok(body)
            }
        }),
        std::future::pending(),
    ));
    let client = Client::with_connector(
        endpoint.clone(),
        ClientConfig::default().timeout(timeout).max_in_flight(1),
    );
    all_echoed(&client, 3).await?;
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(served.load(SeqCst), 3, "no request was sent twice");
    assert_eq!(most.load(SeqCst), 1, "one request under way at a time");
    assert_eq!(stats(&handle).await.replies, 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_gives_up_after_its_attempts_when_no_worker_serves() -> Result<()> {
    let (endpoint, _handle, _task) = shared_broker(BrokerConfig::default())?;
    let timeout = Duration::from_secs(1);
    let client = memory_client(&endpoint, timeout);
    let started = tokio::time::Instant::now();
    match client
        .request("nobody", vec![Bytes::from_static(b"x")])
        .await
    {
        Err(ClientError::NoReply {
            attempts, service, ..
        }) => {
            assert_eq!(attempts, 3);
            assert_eq!(service, Bytes::from_static(b"nobody"));
        }
        other => panic!("expected NoReply, got {other:?}"),
    }
    assert!(tokio::time::Instant::now() >= started + timeout * 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn lazy_pirate_is_answered_through_the_paranoid_queue_by_a_ppp_worker() -> Result<()> {
    let (front, back, handle, _task) = spawn_queue(QueueConfig::paranoid())?;
    let worker = PppWorker::with_connector(back.clone(), PppWorkerConfig::default());
    tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok(body) }),
        std::future::pending(),
    ));
    let config = LazyPirateConfig::default().timeout(Duration::from_secs(1));
    let mut client = LazyPirate::with_connector(front.clone(), config);
    for i in 0..5 {
        let body = vec![Bytes::from(format!("{i}"))];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    let s = stats_of(&handle).await;
    assert_eq!(s.replies, 5);
    Ok(())
}

async fn stats_of(handle: &QueueHandle) -> majordomo_pirate::QueueStats {
    handle.stats().await.expect("queue running")
}

#[tokio::test(start_paused = true)]
async fn mux_client_serves_10000_concurrent_requests_on_one_connection() -> Result<()> {
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    for _ in 0..4 {
        let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
        tokio::spawn(worker.run(
            handler_fn(|body| async move { Ok(body) }),
            std::future::pending(),
        ));
    }
    until(&handle, |s| s.workers == 4).await;
    let client = MuxClient::with_connector(endpoint.clone(), ClientConfig::default());
    let calls = concurrent_echoes(&client, 10_000);
    for call in calls {
        let (n, reply) = call.await?;
        assert_eq!(reply?, [Bytes::from(n.to_string())], "request {n}");
    }
    let stats = client.stats().await;
    assert_eq!(
        (
            stats.connections,
            stats.replies,
            stats.stale,
            stats.multiplexed
        ),
        (1, 10_000, 0, Some(true)),
        "{stats:?}"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn mux_client_retries_under_a_new_tag_and_drops_the_late_reply() -> Result<()> {
    // Two workers; the first two requests take one and a half timeouts, the rest none.
    let (client, _task) = mux_client_of_slow_echoes(b"once").await?;
    // The first attempt waits on one slow worker, the second on the other, the third is
    // answered; both late replies come back to tags nobody holds.
    let reply = client
        .request("echo", vec![Bytes::from_static(b"once")])
        .await?;
    assert_eq!(reply, [Bytes::from_static(b"once")]);
    let stats = mux_stats_once(&client, |s| s.stale == 2).await;
    assert_eq!(
        (stats.sent, stats.replies, stats.stale, stats.connections),
        (3, 1, 2, 1),
        "{stats:?}"
    );
    Ok(())
}

/// A request a caller sends on a connection that is already up, while the client waits for no
/// other, is still timed out and retried: the client's task learns of it without a hand-over.
#[tokio::test(start_paused = true)]
async fn mux_client_times_out_a_request_sent_on_an_idle_connection() -> Result<()> {
    // The first two `slow` requests, over both workers, take one and a half timeouts.
    let (client, _task) = mux_client_of_slow_echoes(b"slow").await?;
    // The connection comes up with the first request; once it is answered, nothing is under way.
    let first = client.request("echo", vec![Bytes::from_static(b"fast")]);
    assert_eq!(
        tokio::time::timeout(VIRTUAL_PATIENCE, first).await??,
        [Bytes::from_static(b"fast")]
    );
    assert_eq!(client.stats().await.in_flight, 0);
    // On virtual time: past the first request's deadline, so that the task has no timer left.
    tokio::time::sleep(MUX_TIMEOUT * 2).await;
    let second = client.request("echo", vec![Bytes::from_static(b"slow")]);
    let reply = tokio::time::timeout(VIRTUAL_PATIENCE, second)
        .await
        .context("a request sent on the idle connection was never timed out")??;
    assert_eq!(reply, [Bytes::from_static(b"slow")]);
    let stats = mux_stats_once(&client, |s| s.stale == 1).await;
    // Three attempts of the slow request. Nothing had come from the broker for a whole timeout
    // when the first attempt timed out, so its connection was taken as dead and made again:
    // the first attempt's reply went with it, the second's came late to a tag nobody holds.
    assert_eq!(
        (stats.sent, stats.replies, stats.stale, stats.connections),
        (4, 2, 1, 2),
        "{stats:?}"
    );
    Ok(())
}

/// An in-memory dealer whose sending half, once split, sends nothing while its gate is shut:
/// its sends wait, as on a connection whose queue is full.
struct GatedDealer(MemoryDealer, Arc<AtomicBool>);

struct GatedSender(MemorySender, Arc<AtomicBool>);

impl Transport for GatedDealer {
    async fn recv(&mut self) -> Result<Vec<Bytes>, TransportError> {
        self.0.recv().await
    }

    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        self.0.send(frames).await
    }
}

impl SendHalf for GatedSender {
    async fn send(&self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        if !self.1.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        self.0.send(frames).await
    }
}

impl Split for GatedDealer {
    type Sender = GatedSender;
    type Receiver = MemoryReceiver;

    fn split(self) -> (GatedSender, MemoryReceiver) {
        let (sender, receiver) = self.0.split();
        (GatedSender(sender, self.1), receiver)
    }
}

/// Connects [`GatedDealer`]s to one broker, all behind one gate (open: `true`).
#[derive(Clone)]
struct Gated(MemoryEndpoint, Arc<AtomicBool>);

impl Connector for Gated {
    type Conn = GatedDealer;

    async fn connect(&self, _timeout: Duration) -> Result<GatedDealer, TransportError> {
        Ok(GatedDealer(self.0.connect()?, self.1.clone()))
    }

    fn describe(&self) -> String {
        "gated memory".to_owned()
    }
}

/// A broker on memory with two `echo` workers, reached through a gate; open at first.
async fn gated_echo_broker() -> Result<(Gated, BrokerTask)> {
    let (endpoint, handle, task) = shared_broker(BrokerConfig::default())?;
    spawn_echoes(&endpoint, None);
    until(&handle, |s| s.workers == 2).await;
    Ok((Gated(endpoint, Arc::new(AtomicBool::new(true))), task))
}

/// A [`gated_echo_broker`] and a client of it making `attempts` with [`MUX_TIMEOUT`], its
/// connection made and tried with one echo.
async fn gated_mux_client(attempts: u32) -> Result<(Gated, BrokerTask, MuxClient<Gated>)> {
    let (broker, task) = gated_echo_broker().await?;
    let config = ClientConfig::default()
        .timeout(MUX_TIMEOUT)
        .attempts(attempts);
    let client = MuxClient::with_connector(broker.clone(), config);
    let warm_up = client.request("echo", vec![Bytes::from_static(b"up")]);
    tokio::time::timeout(VIRTUAL_PATIENCE, warm_up).await??;
    Ok((broker, task, client))
}

/// The client's stats once `check` holds, or after the virtual patience.
async fn mux_stats_once<C: Connector + Clone>(
    client: &MuxClient<C>,
    check: impl Fn(&MuxStats) -> bool,
) -> MuxStats {
    let deadline = tokio::time::Instant::now() + VIRTUAL_PATIENCE;
    loop {
        let stats = client.stats().await;
        if check(&stats) || tokio::time::Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A caller whose send waits on one broker's connection gets the answer the task found on the
/// other broker meanwhile; the broker let go is connected again while the other serves alone.
#[tokio::test(start_paused = true)]
async fn mux_client_answers_a_caller_stuck_in_its_send_and_reconnects_the_broker_let_go(
) -> Result<()> {
    let (a, _a_task) = gated_echo_broker().await?;
    let (b, _b_task) = gated_echo_broker().await?;
    let config = ClientConfig::default().timeout(MUX_TIMEOUT).attempts(3);
    let client = MuxClient::with_connectors([a.clone(), b], config);
    let warm_up = client.request("echo", vec![Bytes::from_static(b"up")]);
    tokio::time::timeout(VIRTUAL_PATIENCE, warm_up).await??;
    let stats = mux_stats_once(&client, |s| s.brokers_up == 2).await;
    assert_eq!(stats.brokers_up, 2, "{stats:?}");
    // Both brokers have nothing under way: the next request goes to the first, whose sends now
    // wait. At its deadline it is sent to the other, and that reply is the caller's. (Sent a
    // moment after anything came from the first broker, on virtual time.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.1.store(false, Ordering::Relaxed);
    let stuck = client.request("echo", vec![Bytes::from_static(b"stuck")]);
    let reply = tokio::time::timeout(VIRTUAL_PATIENCE, stuck)
        .await
        .context("the caller stayed in its send")??;
    assert_eq!(reply, [Bytes::from_static(b"stuck")]);
    // Nothing came from the first broker for a whole timeout: its connection was let go. The
    // requests that follow all go to the second, and the first is connected again meanwhile.
    a.1.store(true, Ordering::Relaxed);
    let connections = client.stats().await.connections;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let call = client.request("echo", vec![Bytes::from_static(b"more")]);
        tokio::time::timeout(VIRTUAL_PATIENCE, call).await??;
    }
    let stats = mux_stats_once(&client, |s| s.brokers_up == 2).await;
    assert_eq!(
        (stats.brokers_up, stats.connections),
        (2, connections + 1),
        "{stats:?}"
    );
    Ok(())
}

/// A caller that stops waiting while its send waits withdraws the request: it was never sent,
/// so it is not timed out, and the connection is not taken as dead for it.
#[tokio::test(start_paused = true)]
async fn mux_client_withdraws_a_request_its_caller_dropped_before_it_was_sent() -> Result<()> {
    let (a, _task, client) = gated_mux_client(ClientConfig::default().attempts).await?;
    a.1.store(false, Ordering::Relaxed);
    let dropped = client.request("echo", vec![Bytes::from_static(b"never sent")]);
    assert!(tokio::time::timeout(MUX_TIMEOUT / 2, dropped)
        .await
        .is_err());
    assert_eq!(client.stats().await.in_flight, 0);
    // Past the dropped request's deadline: nothing was timed out, nothing reconnected.
    tokio::time::sleep(MUX_TIMEOUT * 2).await;
    a.1.store(true, Ordering::Relaxed);
    let after = client.request("echo", vec![Bytes::from_static(b"after")]);
    assert_eq!(
        tokio::time::timeout(VIRTUAL_PATIENCE, after).await??,
        [Bytes::from_static(b"after")]
    );
    let stats = client.stats().await;
    assert_eq!(
        (
            stats.sent,
            stats.replies,
            stats.connections,
            stats.in_flight
        ),
        (3, 2, 1, 0),
        "{stats:?}"
    );
    Ok(())
}

/// A request left after the task took in, at once, another that its caller had already
/// dropped is still timed out: the withdrawal removed the task's last deadline, and it must
/// then wait to be woken by the next request.
#[tokio::test(start_paused = true)]
async fn mux_client_times_out_a_request_left_after_one_taken_in_and_withdrawn_at_once() -> Result<()>
{
    let (a, _task, client) = gated_mux_client(1).await?;
    // Idle past the warm-up's deadline: no timer is armed.
    tokio::time::sleep(MUX_TIMEOUT * 2).await;
    a.1.store(false, Ordering::Relaxed);
    // Left and dropped in one poll, before the task runs: it takes the request in and its
    // withdrawal together.
    let dropped = client.request("echo", vec![Bytes::from_static(b"dropped")]);
    assert!(tokio::time::timeout(Duration::ZERO, dropped).await.is_err());
    a.1.store(true, Ordering::Relaxed);
    // The task runs, and waits again (asking for its stats would wake it once more).
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Sent, and never answered: no worker serves it.
    let unanswered = client.request("nobody", vec![Bytes::from_static(b"lost")]);
    let result = tokio::time::timeout(VIRTUAL_PATIENCE, unanswered).await?;
    assert!(
        matches!(result, Err(ClientError::NoReply { attempts: 1, .. })),
        "{result:?}"
    );
    Ok(())
}

/// The task's own sends (a retry, a request that waited for a connection) never hold it up: with
/// the only connection's sends waiting, it still times a request out, answers its caller and
/// reports its stats.
#[tokio::test(start_paused = true)]
async fn mux_client_is_not_held_up_by_its_own_retry_waiting_on_a_stalled_connection() -> Result<()>
{
    let (a, _task, client) = gated_mux_client(2).await?;
    let lost = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request("nobody", vec![Bytes::from_static(b"lost")])
                .await
        }
    });
    assert_eq!(
        mux_stats_once(&client, |s| s.in_flight == 1)
            .await
            .in_flight,
        1
    );
    // From now on every send waits: the retry at the deadline goes to the connection made
    // again, and its send never completes.
    a.1.store(false, Ordering::Relaxed);
    let result = tokio::time::timeout(VIRTUAL_PATIENCE, lost).await??;
    assert!(
        matches!(result, Err(ClientError::NoReply { attempts: 2, .. })),
        "{result:?}"
    );
    let stats = tokio::time::timeout(VIRTUAL_PATIENCE, client.stats()).await?;
    assert_eq!((stats.sent, stats.in_flight), (3, 0), "{stats:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn mux_client_never_tags_a_request_to_a_broker_that_does_not_route_envelopes() -> Result<()> {
    // A scripted broker in the Guide's shape: mmi.* answered 501, the rest echoed, and any
    // frame before the delimiter is a failure.
    let (mut router, endpoint) = memory::router();
    let broker = tokio::spawn(async move {
        let mut requests = 0;
        loop {
            let Ok(Ok(mut frames)) =
                tokio::time::timeout(Duration::from_secs(30), router.recv()).await
            else {
                return anyhow::Ok(requests);
            };
            let identity = frames.remove(0);
            let request = ClientRequest::decode(&frames, &Limits::default())
                .context("a tagged or malformed request")?;
            let body = if request.service.starts_with(b"mmi.") {
                vec![Bytes::from_static(b"501")]
            } else {
                requests += 1;
                request.body
            };
            let reply = ClientReply {
                service: request.service,
                body,
            };
            router.send(reply.encode_routed(&identity)).await?;
        }
    });
    let client = MuxClient::with_connector(endpoint, ClientConfig::default());
    for n in 0..3u8 {
        let reply = client.request("echo", vec![Bytes::from(vec![n])]).await?;
        assert_eq!(reply, [Bytes::from(vec![n])]);
    }
    let stats = client.stats().await;
    assert_eq!(
        (stats.multiplexed, stats.sent),
        (Some(false), 0),
        "{stats:?}"
    );
    drop(client);
    assert_eq!(broker.await??, 3);
    Ok(())
}

/// Two `echo` workers on `endpoint` that answer at once, except, with `slow` set to a body and
/// a delay, the first two requests (over both) with that body: those take the delay.
fn spawn_echoes(endpoint: &MemoryEndpoint, slow: Option<(&'static [u8], Duration)>) {
    let (slow, delay) = slow.unwrap_or_default();
    let slow_left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
    for _ in 0..2 {
        let slow_left = slow_left.clone();
        let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
        tokio::spawn(worker.run(
            handler_fn(move |body: Vec<Bytes>| {
                let is_slow = !slow.is_empty()
                    && body.first().is_some_and(|b| b.as_ref() == slow)
                    && slow_left
                        .fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |n| n.checked_sub(1),
                        )
                        .is_ok();
                async move {
                    if is_slow {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(body)
                }
            }),
            std::future::pending(),
        ));
    }
}

/// The timeout of the `MuxClient`s of these tests, on virtual time.
const MUX_TIMEOUT: Duration = Duration::from_secs(1);

/// A `MuxClient` (timeout [`MUX_TIMEOUT`], three attempts) of a broker with two `echo`
/// workers, whose first two requests with body `slow` take one and a half timeouts.
async fn mux_client_of_slow_echoes(
    slow: &'static [u8],
) -> Result<(MuxClient<MemoryEndpoint>, BrokerTask)> {
    let (endpoint, handle, task) = shared_broker(BrokerConfig::default())?;
    spawn_echoes(&endpoint, Some((slow, MUX_TIMEOUT * 3 / 2)));
    until(&handle, |s| s.workers == 2).await;
    let config = ClientConfig::default().timeout(MUX_TIMEOUT).attempts(3);
    Ok((MuxClient::with_connector(endpoint, config), task))
}

/// A request's number and what came back for it.
type Numbered = JoinHandle<(u32, Result<Vec<Bytes>, ClientError>)>;

/// `count` requests to `echo` at once through `client`, each body its number.
fn concurrent_echoes(client: &MuxClient<MemoryEndpoint>, count: u32) -> Vec<Numbered> {
    (0..count)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = vec![Bytes::from(n.to_string())];
                (n, client.request("echo", body).await)
            })
        })
        .collect()
}

/// Echo workers serving `echo` at every broker of `endpoints`, each answering after `delay`;
/// returns the most handlers seen running at once.
fn spawn_echo_at_every_broker(
    endpoints: &[MemoryEndpoint],
    concurrency: usize,
    delay: Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let running = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    let worker = Worker::with_connectors(
        endpoints.to_vec(),
        "echo",
        WorkerConfig::default().concurrency(concurrency),
    );
    let handler = {
        let most = most.clone();
        handler_fn(move |body| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(body)
            }
        })
    };
    tokio::spawn(worker.run(handler, std::future::pending()));
    most
}

#[tokio::test(start_paused = true)]
async fn a_worker_of_several_brokers_registers_with_each_and_runs_within_its_concurrency(
) -> Result<()> {
    let (a, a_handle, _a_task) = shared_broker(BrokerConfig::default())?;
    let (b, b_handle, _b_task) = shared_broker(BrokerConfig::default())?;
    let most = spawn_echo_at_every_broker(&[a.clone(), b.clone()], 2, Duration::from_millis(10));
    // Two connections at each broker, each its own READY.
    until(&a_handle, |s| s.workers == 2).await;
    until(&b_handle, |s| s.workers == 2).await;
    let calls: Vec<_> = (0..200u32)
        .map(|n| {
            let endpoint = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let client = Client::with_connector(endpoint, ClientConfig::default());
                let body = vec![Bytes::from(n.to_string())];
                (n, client.request("echo", body).await)
            })
        })
        .collect();
    for call in calls {
        let (n, reply) = call.await?;
        assert_eq!(reply?, [Bytes::from(n.to_string())], "request {n}");
    }
    let (a_stats, b_stats) = (stats(&a_handle).await, stats(&b_handle).await);
    assert_eq!((a_stats.replies, b_stats.replies), (100, 100));
    // Four connections, but never more than two handlers at once.
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn mux_client_spreads_over_brokers_and_loses_no_request_when_one_dies_under_load(
) -> Result<()> {
    let (a, a_handle, a_task) = shared_broker(BrokerConfig::default())?;
    let (b, b_handle, _b_task) = shared_broker(BrokerConfig::default())?;
    // Eight handlers of 1 ms: B alone answers all 2,000 well within one timeout.
    spawn_echo_at_every_broker(&[a.clone(), b.clone()], 8, Duration::from_millis(1));
    until(&a_handle, |s| s.workers == 8).await;
    until(&b_handle, |s| s.workers == 8).await;
    let client = MuxClient::with_connectors([a.clone(), b.clone()], ClientConfig::default());
    let calls = concurrent_echoes(&client, 2_000);
    // A dies (its socket and every connection with it) once it has answered some: its
    // requests under way are sent again to B.
    until(&a_handle, |s| s.replies >= 100).await;
    a_task.abort();
    for call in calls {
        let (n, reply) = call.await?;
        assert_eq!(reply?, [Bytes::from(n.to_string())], "request {n}");
    }
    let mux = client.stats().await;
    assert_eq!((mux.replies, mux.brokers_up), (2_000, 1), "{mux:?}");
    assert!(mux.failovers > 0, "{mux:?}");
    assert!(stats(&b_handle).await.replies > 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_pool_client_of_several_brokers_fails_over_to_the_next_when_one_dies() -> Result<()> {
    let (a, a_handle, a_task) = shared_broker(BrokerConfig::default())?;
    let (b, b_handle, _b_task) = shared_broker(BrokerConfig::default())?;
    spawn_echo_at_every_broker(&[a.clone(), b.clone()], 2, Duration::ZERO);
    until(&a_handle, |s| s.workers == 2).await;
    until(&b_handle, |s| s.workers == 2).await;
    let client = Client::with_connector(
        majordomo_client::RoundRobin::new([a.clone(), b.clone()]),
        ClientConfig::default().timeout(Duration::from_secs(1)),
    );
    // Spread over both: each request opens (or reuses) a connection, new ones in turn.
    let calls: Vec<_> = (0..20u32)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .request("echo", vec![Bytes::from(n.to_string())])
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await??;
    }
    let a_replies = stats(&a_handle).await.replies;
    assert!(a_replies > 0 && stats(&b_handle).await.replies > 0);
    a_task.abort();
    for n in 0..20u32 {
        let body = vec![Bytes::from(n.to_string())];
        assert_eq!(client.request("echo", body.clone()).await?, body);
    }
    assert_eq!(stats(&b_handle).await.replies, 40 - a_replies);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_split_mux_client_matches_out_of_order_replies_to_their_ids_within_its_window(
) -> Result<()> {
    use futures::{FutureExt, StreamExt};
    let (endpoint, handle, _task) = shared_broker(BrokerConfig::default())?;
    // The request numbered n takes 10 - n ms: later requests are answered first.
    let worker = Worker::with_connector(
        endpoint.clone(),
        "echo",
        WorkerConfig::default().concurrency(10),
    );
    tokio::spawn(worker.run(
        handler_fn(|body: Vec<Bytes>| async move {
            let n: u64 = std::str::from_utf8(&body[0])?.parse()?;
            tokio::time::sleep(Duration::from_millis(10 - n)).await;
            Ok(body)
        }),
        std::future::pending(),
    ));
    until(&handle, |s| s.workers == 10).await;
    let client = MuxClient::with_connector(endpoint.clone(), ClientConfig::default());
    let (sender, mut replies) = client.split(10);
    // Two tasks send, through clones of the sender.
    let mut sent = std::collections::HashMap::new();
    let other = sender.clone();
    let (evens, odds) = tokio::join!(
        async {
            let mut ids = Vec::new();
            for n in (0..10u64).step_by(2) {
                ids.push((
                    sender.send("echo", vec![Bytes::from(n.to_string())]).await,
                    n,
                ));
            }
            ids
        },
        async {
            let mut ids = Vec::new();
            for n in (1..10u64).step_by(2) {
                ids.push((
                    other.send("echo", vec![Bytes::from(n.to_string())]).await,
                    n,
                ));
            }
            ids
        }
    );
    sent.extend(evens.into_iter().chain(odds));
    let mut order = Vec::new();
    for _ in 0..10 {
        let (id, reply) = replies.next().await.context("a reply")?;
        let n = sent.remove(&id).context("an id sent once")?;
        assert_eq!(reply?, [Bytes::from(n.to_string())], "request {n}");
        order.push(n);
    }
    assert!(sent.is_empty());
    // Not in the order sent: each reply found its request by its tag.
    assert_ne!(order, (0..10).collect::<Vec<_>>());

    // A window of two: two replies not yet taken hold it.
    let client = MuxClient::with_connector(endpoint.clone(), ClientConfig::default());
    let (sender, mut replies) = client.split(2);
    for n in [5u64, 6] {
        sender.send("echo", vec![Bytes::from(n.to_string())]).await;
    }
    let deadline = tokio::time::Instant::now() + VIRTUAL_PATIENCE;
    while sender.stats().await.replies < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no replies");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let third = || sender.send("echo", vec![Bytes::from_static(b"7")]);
    assert_eq!(third().now_or_never(), None, "the window is full");
    replies.next().await.context("a reply")?.1?;
    assert!(
        third().now_or_never().is_some(),
        "a reply taken frees a place"
    );
    drop(sender);
    let mut rest = 0;
    while let Some((_, reply)) = replies.next().await {
        reply?;
        rest += 1;
    }
    assert_eq!(rest, 2);
    Ok(())
}

/// The next message a raw in-memory ROUTER gets.
async fn next_message(router: &mut MemoryRouter) -> Result<Vec<Bytes>> {
    Ok(tokio::time::timeout(VIRTUAL_PATIENCE, router.recv()).await??)
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_carried_a_large_request_registers_again_on_a_new_connection() -> Result<()> {
    // The test plays the broker on a raw in-memory ROUTER.
    let (mut broker, endpoint) = memory::router();
    let config = WorkerConfig::default().fresh_connection_above(Some(1024));
    let worker = Worker::with_connector(endpoint.clone(), "echo", config);
    tokio::spawn(worker.run(
        handler_fn(|body| async move { Ok(body) }),
        std::future::pending(),
    ));
    let first = next_message(&mut broker).await?;
    assert_eq!(&first[1..], ready(b"echo").as_slice());
    let identity = first[0].clone();
    let client = Bytes::from_static(b"client");
    let send_request = |body: Bytes| {
        BrokerMessage::Request {
            client: client.clone(),
            body: vec![body],
        }
        .encode_routed(&identity)
    };
    let answer = |body: Bytes| {
        let mut frames = vec![identity.clone()];
        frames.extend(
            WorkerMessage::Reply {
                client: client.clone(),
                body: vec![body],
            }
            .encode(),
        );
        frames
    };
    // A small request keeps the connection.
    let small = Bytes::from_static(b"small");
    broker.send(send_request(small.clone())).await?;
    assert_eq!(next_message(&mut broker).await?, answer(small));
    // A large one is answered on it, then the worker says DISCONNECT and comes back at once on
    // a new connection, without the reconnect backoff.
    let large = Bytes::from(vec![7u8; 2048]);
    broker.send(send_request(large.clone())).await?;
    let answered_at = tokio::time::Instant::now();
    assert_eq!(next_message(&mut broker).await?, answer(large));
    let mut goodbye = vec![identity.clone()];
    goodbye.extend(WorkerMessage::Disconnect.encode());
    assert_eq!(next_message(&mut broker).await?, goodbye);
    let again = next_message(&mut broker).await?;
    assert_eq!(&again[1..], ready(b"echo").as_slice());
    assert_ne!(again[0], identity, "a new connection");
    assert!(
        tokio::time::Instant::now() < answered_at + config.reconnect_initial,
        "waited for the backoff"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_sends_a_large_request_on_a_connection_of_its_own() -> Result<()> {
    // The test plays the broker on a raw in-memory ROUTER, answering each request as it comes
    // (a body of "big" is answered with a large reply) and reporting the connection it came on.
    let (mut broker, endpoint) = memory::router();
    let (seen, mut connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(mut frames) = broker.recv().await {
            let identity = frames.remove(0);
            let request = ClientRequest::decode(&frames, &Limits::default()).expect("a request");
            let body = match request.body[0].as_ref() {
                b"big" => Bytes::from(vec![1u8; 2048]),
                _ => request.body[0].clone(),
            };
            let _ = seen.send(identity.clone());
            let reply = ClientReply {
                service: request.service,
                body: vec![body],
            };
            let _ = broker.send(reply.encode_routed(&identity)).await;
        }
    });
    let config = ClientConfig::default().fresh_connection_above(Some(1024));
    let client = Client::with_connector(endpoint.clone(), config);
    let call = |body: Bytes| {
        let client = client.clone();
        async move { anyhow::Ok(client.request("echo", vec![body]).await?) }
    };
    let mut connection = || {
        connections
            .try_recv()
            .expect("a request reached the broker")
    };
    call(Bytes::from_static(b"one")).await?;
    let pooled = connection();
    // A large request goes on a new connection, which is not pooled after it.
    let large = Bytes::from(vec![7u8; 2048]);
    assert_eq!(call(large.clone()).await?, [large]);
    assert_ne!(connection(), pooled);
    call(Bytes::from_static(b"two")).await?;
    assert_eq!(connection(), pooled);
    // Nor is a connection that brought a large reply.
    assert_eq!(call(Bytes::from_static(b"big")).await?[0].len(), 2048);
    assert_eq!(connection(), pooled);
    call(Bytes::from_static(b"three")).await?;
    assert_ne!(connection(), pooled);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_worker_refuses_a_service_name_it_cannot_serve_and_says_why() -> Result<()> {
    let (_router, endpoint) = memory::router();
    let run = |service: &'static str| {
        let worker = Worker::with_connector(endpoint.clone(), service, WorkerConfig::default());
        worker.run(
            handler_fn(|body| async move { Ok(body) }),
            std::future::pending(),
        )
    };
    let reserved = run("mmi.echo").await.expect_err("mmi. is the broker's");
    assert!(
        matches!(reserved, majordomo_worker::WorkerError::ReservedService(_)),
        "{reserved:?}"
    );
    let text = reserved.to_string();
    assert!(
        text.contains("\"mmi.echo\"") && text.contains("mmi. namespace"),
        "{text}"
    );
    let empty = run("").await.expect_err("an empty name");
    assert!(
        matches!(empty, majordomo_worker::WorkerError::InvalidService(_)),
        "{empty:?}"
    );
    Ok(())
}
