//! The broker over real TCP on 127.0.0.1, driven by raw DEALER peers that check every frame.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use integration_tests::{
    frames, service_stats, service_workers, test_config, wait_for_stats, worker_reply, RawPeer,
    RawZmtp, RunningBroker, PATIENCE, TEST_HEARTBEAT,
};
use majordomo_client::{Client, ClientConfig};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use tokio::sync::watch;

const HEARTBEAT: &[u8] = &[0x04];
const DISCONNECT: &[u8] = &[0x05];

async fn worker(endpoint: &str, service: &[u8]) -> Result<RawPeer> {
    let mut w = RawPeer::connect(endpoint).await?;
    w.send(frames(&[b"", b"MDPW01", &[0x01], service])).await?;
    Ok(w)
}

async fn client(endpoint: &str) -> Result<RawPeer> {
    RawPeer::connect(endpoint).await
}

/// Receives the next REQUEST on a raw worker; returns (client address, body frames).
async fn take_request(w: &mut RawPeer) -> Result<(Bytes, Vec<Bytes>)> {
    let msg = w.recv_skipping_heartbeats().await?;
    assert_eq!(
        msg[..3],
        frames(&[b"", b"MDPW01", &[0x02]])[..],
        "not a REQUEST: {msg:?}"
    );
    assert!(
        msg[4].is_empty(),
        "client address must be followed by an empty frame"
    );
    Ok((msg[3].clone(), msg[5..].to_vec()))
}

async fn mmi_service(endpoint: &str, service: &[u8]) -> Result<Bytes> {
    let mut c = client(endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"mmi.service", service]))
        .await?;
    let reply = c.recv().await?;
    assert_eq!(reply[..3], frames(&[b"", b"MDPC01", b"mmi.service"])[..]);
    Ok(reply[3].clone())
}

/// Runs `n` echo workers (our worker crate) until the returned sender sends `true`.
fn echo_workers(
    endpoint: &str,
    n: usize,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<Result<(), majordomo_worker::WorkerError>>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = (0..n)
        .map(|_| {
            let mut rx = stopped.clone();
            let config = WorkerConfig::default().heartbeat(TEST_HEARTBEAT);
            let worker = Worker::new(endpoint.to_owned(), "echo", config);
            tokio::spawn(
                worker.run(handler_fn(|body| async move { Ok(body) }), async move {
                    let _ = rx.wait_for(|s| *s).await;
                }),
            )
        })
        .collect();
    (stop, workers)
}

/// Polls `mmi.service` until it answers `want`, within a bounded number of tries.
async fn wait_for_status(endpoint: &str, service: &[u8], want: &[u8]) -> Result<()> {
    for _ in 0..200 {
        if mmi_service(endpoint, service).await?.as_ref() == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("mmi.service never answered {want:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_with_exact_framing() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut w = worker(&broker.endpoint, b"echo").await?;
    wait_for_status(&broker.endpoint, b"echo", b"200").await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"echo", b"part1", b"part2"]))
        .await?;

    let (address, body) = take_request(&mut w).await?;
    assert!(!address.is_empty());
    assert_eq!(body, frames(&[b"part1", b"part2"]));
    w.send(worker_reply(address, &[b"r1", b"r2"])).await?;

    assert_eq!(
        c.recv().await?,
        frames(&[b"", b"MDPC01", b"echo", b"r1", b"r2"])
    );
    let stats = broker.stop().await?;
    assert_eq!(stats.protocol_errors, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queue_until_a_worker_arrives() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"later", b"early bird"]))
        .await?;
    assert_eq!(c.recv_within(Duration::from_millis(200)).await?, None);

    let mut w = worker(&broker.endpoint, b"later").await?;
    let (address, body) = take_request(&mut w).await?;
    assert_eq!(body, frames(&[b"early bird"]));
    w.send(vec![
        Bytes::new(),
        Bytes::from_static(b"MDPW01"),
        Bytes::from_static(&[0x03]),
        address,
        Bytes::new(),
        Bytes::from_static(b"served"),
    ])
    .await?;
    assert_eq!(
        c.recv().await?,
        frames(&[b"", b"MDPC01", b"later", b"served"])
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_get_requests_least_recently_used_first() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut workers = Vec::new();
    for registered in 1..=3 {
        workers.push(worker(&broker.endpoint, b"lru").await?);
        // One at a time: the next worker connects only once the broker has registered this one,
        // so the idle order is the order of the loop.
        broker
            .wait_until("worker registered", |s| {
                s.workers == registered && s.idle_workers == registered
            })
            .await?;
    }
    let mut c = client(&broker.endpoint).await?;
    // Six sequential requests must visit workers 0,1,2,0,1,2.
    for round in 0..6usize {
        let body = format!("r{round}");
        c.send(frames(&[b"", b"MDPC01", b"lru", body.as_bytes()]))
            .await?;
        let expected = round % 3;
        let (address, got) = take_request(&mut workers[expected]).await?;
        assert_eq!(got, frames(&[body.as_bytes()]));
        workers[expected]
            .send(vec![
                Bytes::new(),
                Bytes::from_static(b"MDPW01"),
                Bytes::from_static(&[0x03]),
                address,
                Bytes::new(),
                Bytes::from(body.clone()),
            ])
            .await?;
        assert_eq!(c.recv().await?[3].as_ref(), body.as_bytes());
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_heartbeats_workers_and_purges_silent_ones() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut w = worker(&broker.endpoint, b"hb").await?;
    let msg = w.recv().await?;
    assert_eq!(msg, frames(&[b"", b"MDPW01", HEARTBEAT]));
    // The worker stays silent: the broker purges it and mmi.service turns to 404.
    wait_for_status(&broker.endpoint, b"hb", b"404").await?;
    let stats = broker.stop().await?;
    assert_eq!(stats.purged, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_worker_stays_registered() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut w = worker(&broker.endpoint, b"alive").await?;
    for _ in 0..8 {
        w.send(frames(&[b"", b"MDPW01", HEARTBEAT])).await?;
        tokio::time::sleep(TEST_HEARTBEAT.interval).await;
    }
    assert_eq!(
        mmi_service(&broker.endpoint, b"alive").await?.as_ref(),
        b"200"
    );
    assert_eq!(broker.stop().await?.purged, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_worker_that_dies_has_its_request_served_by_another() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut doomed = worker(&broker.endpoint, b"job").await?;
    wait_for_status(&broker.endpoint, b"job", b"200").await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"job", b"important"]))
        .await?;
    let (_, body) = take_request(&mut doomed).await?;
    assert_eq!(body, frames(&[b"important"]));
    drop(doomed); // dies holding the request

    let mut rescuer = worker(&broker.endpoint, b"job").await?;
    let (address, body) = take_request(&mut rescuer).await?;
    assert_eq!(body, frames(&[b"important"]));
    rescuer.send(worker_reply(address, &[b"done"])).await?;
    assert_eq!(c.recv().await?, frames(&[b"", b"MDPC01", b"job", b"done"]));
    // Exactly one reply.
    assert_eq!(c.recv_within(Duration::from_millis(300)).await?, None);
    let stats = broker.stop().await?;
    assert_eq!(stats.requeued, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_disconnect_gets_no_further_commands_and_request_moves_on() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut leaving = worker(&broker.endpoint, b"svc").await?;
    wait_for_status(&broker.endpoint, b"svc", b"200").await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"svc", b"work"])).await?;
    take_request(&mut leaving).await?;
    leaving.send(frames(&[b"", b"MDPW01", DISCONNECT])).await?;
    // Nothing more for it, not even heartbeats, over several intervals.
    assert_eq!(
        leaving.recv_within(TEST_HEARTBEAT.interval * 4).await?,
        None
    );

    let mut other = worker(&broker.endpoint, b"svc").await?;
    let (_, body) = take_request(&mut other).await?;
    assert_eq!(body, frames(&[b"work"]));
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_worker_commands_get_disconnect() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let cases: Vec<(&str, Vec<Vec<Bytes>>)> = vec![
        (
            "REPLY before READY",
            vec![frames(&[b"", b"MDPW01", &[0x03], b"c", b"", b"x"])],
        ),
        (
            "HEARTBEAT before READY",
            vec![frames(&[b"", b"MDPW01", HEARTBEAT])],
        ),
        (
            "READY for mmi.*",
            vec![frames(&[b"", b"MDPW01", &[0x01], b"mmi.service"])],
        ),
        (
            "second READY",
            vec![
                frames(&[b"", b"MDPW01", &[0x01], b"twice"]),
                frames(&[b"", b"MDPW01", &[0x01], b"twice"]),
            ],
        ),
    ];
    for (name, msgs) in cases {
        let mut peer = RawPeer::connect(&broker.endpoint).await?;
        for m in msgs {
            peer.send(m).await?;
        }
        let got = peer.recv_skipping_heartbeats().await?;
        assert_eq!(got, frames(&[b"", b"MDPW01", DISCONNECT]), "{name}");
        // "and then no further commands to that worker"
        assert_eq!(
            peer.recv_within(TEST_HEARTBEAT.interval * 3).await?,
            None,
            "{name}"
        );
    }
    let stats = broker.stop().await?;
    assert_eq!(stats.protocol_errors, 4);
    assert_eq!(stats.workers, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_and_the_broker_keeps_serving() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut junk = RawPeer::connect(&broker.endpoint).await?;
    let bad: Vec<Vec<Bytes>> = vec![
        frames(&[b"no empty frame"]),
        frames(&[b"", b"MDPX01", b"svc", b"x"]),
        frames(&[b"", b"MDPC01", b"svc"]),
        frames(&[b"", b"MDPC01", b"", b"x"]),
        frames(&[b"", b"MDPW01"]),
        frames(&[b"", b"MDPW01", &[0x09]]),
        frames(&[b"", b"MDPW01", &[0x01]]),
        frames(&[b"", b"MDPW01", &[0x03], b"c", b"not empty", b"x"]),
        frames(&[b"", b"MDPW01", &[0x04], b"extra"]),
        vec![
            Bytes::new(),
            Bytes::from_static(b"MDPC01"),
            Bytes::from(vec![b'x'; 300]),
            Bytes::new(),
        ],
    ];
    let count = bad.len() as u64;
    for m in bad {
        junk.send(m).await?;
    }
    // All of it is read and counted, and none of it is answered.
    broker
        .wait_until("malformed messages counted", |s| s.protocol_errors == count)
        .await?;
    assert_eq!(junk.recv_within(Duration::from_millis(300)).await?, None);
    // A legitimate request still goes through (the raw worker registers now: it sends no
    // heartbeats, so it would have been purged during the wait above).
    let mut w = worker(&broker.endpoint, b"echo").await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"echo", b"still here"]))
        .await?;
    let (address, body) = take_request(&mut w).await?;
    assert_eq!(body, frames(&[b"still here"]));
    w.send(worker_reply(address, &[b"still here"])).await?;
    assert_eq!(
        c.recv().await?,
        frames(&[b"", b"MDPC01", b"echo", b"still here"])
    );
    assert_eq!(broker.stop().await?.protocol_errors, count);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_dropped() -> Result<()> {
    let mut config = test_config();
    config.limits.max_message_size = 1024;
    let broker = RunningBroker::start(config).await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(vec![
        Bytes::new(),
        Bytes::from_static(b"MDPC01"),
        Bytes::from_static(b"mmi.service"),
        Bytes::from(vec![0u8; 4096]),
    ])
    .await?;
    broker
        .wait_until("oversized message counted", |s| s.protocol_errors == 1)
        .await?;
    assert_eq!(c.recv_within(Duration::from_millis(300)).await?, None);
    assert_eq!(broker.stop().await?.protocol_errors, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmi_codes() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    assert_eq!(
        mmi_service(&broker.endpoint, b"echo").await?.as_ref(),
        b"404"
    );
    let _w = worker(&broker.endpoint, b"echo").await?;
    wait_for_status(&broker.endpoint, b"echo", b"200").await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"mmi.nosuch", b"x"]))
        .await?;
    assert_eq!(
        c.recv().await?,
        frames(&[b"", b"MDPC01", b"mmi.nosuch", b"501"])
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_requests_expire() -> Result<()> {
    let broker =
        RunningBroker::start(test_config().request_expiry(Duration::from_millis(100))).await?;
    let mut c = client(&broker.endpoint).await?;
    c.send(frames(&[b"", b"MDPC01", b"ghost", b"x"])).await?;
    // Once the broker has expired the request, a worker arriving finds nothing to do.
    let stats = broker
        .wait_until("request expired", |s| s.expired == 1)
        .await?;
    assert_eq!((stats.requests, stats.queued), (1, 0));
    let mut w = worker(&broker.endpoint, b"ghost").await?;
    let msg = w.recv().await?;
    assert_eq!(
        msg,
        frames(&[b"", b"MDPW01", HEARTBEAT]),
        "expired request was delivered"
    );
    assert_eq!(broker.stop().await?.expired, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_disconnects_workers() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let mut w = worker(&broker.endpoint, b"bye").await?;
    wait_for_status(&broker.endpoint, b"bye", b"200").await?;
    broker.stop().await?;
    assert_eq!(
        w.recv_skipping_heartbeats().await?,
        frames(&[b"", b"MDPW01", DISCONNECT])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_lose_and_misroute_nothing() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let (stop, workers) = echo_workers(&broker.endpoint, 3);
    wait_for_status(&broker.endpoint, b"echo", b"200").await?;
    let mut clients = Vec::new();
    for c in 0..50 {
        let endpoint = broker.endpoint.clone();
        clients.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&endpoint).await?;
            for i in 0..20 {
                let body = format!("client {c} request {i}");
                peer.send(frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]))
                    .await?;
                let reply = peer.recv().await?;
                anyhow::ensure!(
                    reply == frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]),
                    "client {c} got {reply:?} for {body}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        tokio::time::timeout(PATIENCE * 3, c).await???;
    }
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    let stats = broker.stop().await?;
    // Every request answered (the mmi.service polls included), nothing expired or re-queued.
    assert_eq!(stats.replies, stats.requests);
    assert!(stats.requests >= 1000);
    assert_eq!((stats.expired, stats.requeued, stats.rejected), (0, 0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_body_arrives_intact() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let stop = tokio::sync::oneshot::channel::<()>();
    let w = Worker::new(
        broker.endpoint.clone(),
        "echo",
        WorkerConfig::default().heartbeat(TEST_HEARTBEAT),
    );
    let worker = tokio::spawn(
        w.run(handler_fn(|body| async move { Ok(body) }), async move {
            let _ = stop.1.await;
        }),
    );
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let client = Client::new(broker.endpoint.clone(), ClientConfig::default());
    let reply = client
        .request("echo", vec![Bytes::from(body.clone())])
        .await?;
    assert_eq!(reply.len(), 1);
    assert!(reply[0] == body, "body changed in transit");
    let _ = stop.0.send(());
    worker.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_client_and_worker_endpoints() -> Result<()> {
    let broker = majordomo_broker::Broker::builder()
        .bind_clients("tcp://127.0.0.1:0")
        .bind_workers("tcp://127.0.0.1:0")
        .config(test_config())
        .build()
        .await?;
    let client_ep = broker.endpoints()[0].endpoint.clone();
    let worker_ep = broker.endpoints()[1].endpoint.clone();
    let broker = RunningBroker::run(broker);
    let mut w = worker(&worker_ep, b"split").await?;
    let mut c = client(&client_ep).await?;
    c.send(frames(&[b"", b"MDPC01", b"split", b"x"])).await?;
    let (address, _) = take_request(&mut w).await?;
    w.send(worker_reply(address, &[b"y"])).await?;
    assert_eq!(c.recv().await?, frames(&[b"", b"MDPC01", b"split", b"y"]));
    // A worker command on the client endpoint is dropped as invalid.
    let mut misplaced = worker(&client_ep, b"split").await?;
    broker
        .wait_until("misplaced READY counted", |s| s.protocol_errors == 1)
        .await?;
    assert_eq!(
        misplaced.recv_within(Duration::from_millis(300)).await?,
        None
    );
    let stats = broker.stop().await?;
    assert_eq!(stats.protocol_errors, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_tcp_and_ipc_at_once() -> Result<()> {
    let scratch = integration_tests::scratch_dir("ipc")?;
    let dir = scratch.path();
    let ipc = format!("ipc://{}/broker.sock", dir.display());
    let broker = majordomo_broker::Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .bind(ipc.clone())
        .config(test_config())
        .build()
        .await?;
    let tcp = broker.endpoints()[0].endpoint.clone();
    // Only this user may connect to the socket file, and nothing else is left beside it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("broker.sock"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let names: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names, ["broker.sock"]);
    let broker = RunningBroker::run(broker);
    let mut w = worker(&ipc, b"both").await?;
    let mut c = client(&tcp).await?;
    c.send(frames(&[b"", b"MDPC01", b"both", b"x"])).await?;
    let (address, _) = take_request(&mut w).await?;
    w.send(worker_reply(address, &[b"via ipc"])).await?;
    assert_eq!(c.recv().await?[3].as_ref(), b"via ipc");
    broker.stop().await?;
    assert!(
        !dir.join("broker.sock").exists(),
        "the socket file is removed at stop"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failure_is_a_clear_error() -> Result<()> {
    let first = RunningBroker::start(test_config()).await?;
    let err = majordomo_broker::Broker::builder()
        .bind(first.endpoint.clone())
        .build()
        .await
        .expect_err("second bind on the same port must fail");
    assert!(err.to_string().contains(&first.endpoint), "{err}");
    first.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_worker_is_purged_under_sustained_load() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let (stop, workers) = echo_workers(&broker.endpoint, 2);
    wait_for_status(&broker.endpoint, b"echo", b"200").await?;
    // Keep the broker busy with a pipeline of requests from several clients.
    let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
    let mut load = Vec::new();
    for _ in 0..4 {
        let endpoint = broker.endpoint.clone();
        let stopped = load_stopped.clone();
        load.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&endpoint).await?;
            for _ in 0..10 {
                peer.send(frames(&[b"", b"MDPC01", b"echo", b"load"]))
                    .await?;
            }
            while !*stopped.borrow() {
                peer.recv().await?;
                peer.send(frames(&[b"", b"MDPC01", b"echo", b"load"]))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    // A worker that registers and then says nothing must still be purged.
    let _silent = worker(&broker.endpoint, b"quiet").await?;
    wait_for_status(&broker.endpoint, b"quiet", b"200").await?;
    wait_for_status(&broker.endpoint, b"quiet", b"404").await?;
    let _ = stop_load.send(true);
    for task in load {
        task.await??;
    }
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    let stats = broker.stop().await?;
    assert!(stats.purged >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_broker_routes_heartbeats_purges_and_stops() -> Result<()> {
    let bound = majordomo_broker::Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(test_config())
        .busy_poll(Duration::from_millis(2))
        .build()
        .await?;
    let broker = RunningBroker::run(bound);
    let (stop, workers) = echo_workers(&broker.endpoint, 2);
    // A worker that never speaks again: the broker's timer must still fire while it polls.
    let mut silent = worker(&broker.endpoint, b"quiet").await?;
    wait_for_status(&broker.endpoint, b"echo", b"200").await?;
    let mut clients = Vec::new();
    for c in 0..8 {
        let endpoint = broker.endpoint.clone();
        clients.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&endpoint).await?;
            for round in 0..25 {
                let mut expected = std::collections::HashSet::new();
                for i in 0..4 {
                    let body = format!("client {c} round {round} request {i}");
                    peer.send(frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]))
                        .await?;
                    expected.insert(body);
                }
                for _ in 0..4 {
                    let reply = peer.recv().await?;
                    anyhow::ensure!(
                        reply.len() == 4 && reply[..3] == frames(&[b"", b"MDPC01", b"echo"])[..],
                        "client {c} got {reply:?}"
                    );
                    let body = String::from_utf8(reply[3].to_vec())?;
                    anyhow::ensure!(expected.remove(&body), "client {c} got unexpected {body}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        tokio::time::timeout(PATIENCE * 3, c).await???;
    }
    assert_eq!(
        silent.recv().await?,
        frames(&[b"", b"MDPW01", HEARTBEAT]),
        "heartbeat while busy polling"
    );
    wait_for_status(&broker.endpoint, b"quiet", b"404").await?;
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    let stats = tokio::time::timeout(PATIENCE, broker.stop()).await??;
    assert_eq!(stats.replies, stats.requests);
    assert!(stats.requests >= 800);
    assert_eq!(stats.purged, 1);
    Ok(())
}

/// Checks once that the echo worker is still registered, and only once, with nothing purged, and
/// that a call to it through `client` is answered; returns the stats read.
async fn check_echo_serves(
    broker: &RunningBroker,
    client: &Client,
    call: u32,
) -> Result<majordomo_broker::BrokerStats> {
    let stats = broker.stats().await?;
    anyhow::ensure!(stats.purged == 0, "a worker was purged: {stats:?}");
    anyhow::ensure!(
        (stats.workers, service_workers(&stats, b"echo")) == (1, 1),
        "the echo worker left or came back: {stats:?}"
    );
    let body = Bytes::from(format!("call {call}"));
    let reply = client.request("echo", vec![body.clone()]).await?;
    anyhow::ensure!(reply == [body], "call {call} got {reply:?}");
    Ok(stats)
}

/// Requests for the unserved service `nobody` the broker has read: each is queued, dropped at the
/// queue bound or expired.
fn nobody_read(stats: &majordomo_broker::BrokerStats) -> u64 {
    let queued = service_stats(stats, b"nobody").map_or(0, |s| s.queued) as u64;
    queued + stats.rejected + stats.expired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_flood_does_not_starve_heartbeats_on_the_workers_endpoint() -> Result<()> {
    const FLOOD: u64 = 200_000;
    const BATCH: u64 = 10_000;
    let bound = majordomo_broker::Broker::builder()
        .bind_clients("tcp://127.0.0.1:0")
        .bind_workers("tcp://127.0.0.1:0")
        .config(test_config())
        .build()
        .await?;
    let client_ep = bound.endpoints()[0].endpoint.clone();
    let worker_ep = bound.endpoints()[1].endpoint.clone();
    let broker = RunningBroker::run(bound);
    let (stop, workers) = echo_workers(&worker_ep, 1);
    broker
        .wait_until("echo worker registered", |s| {
            service_workers(s, b"echo") == 1
        })
        .await?;

    // One raw client floods the clients endpoint with requests for a service nobody serves (the
    // broker queues up to its bound, drops the rest, answers none): at least FLOOD of them, and
    // on until told to stop. It keeps one to two batches unread at the broker, so the broker
    // always has client messages waiting, and stopping leaves little to drain.
    let (stop_flood, flood_stopped) = watch::channel(false);
    let (sent_tx, sent) = watch::channel(0u64);
    let flood = tokio::spawn({
        let (client_ep, handle) = (client_ep.clone(), broker.handle.clone());
        async move {
            let mut raw = RawZmtp::connect(&client_ep).await?;
            let mut total = 0;
            while total < FLOOD || !*flood_stopped.borrow() {
                raw.send_repeated(&[b"", b"MDPC01", b"nobody", b"x"], BATCH as usize)
                    .await?;
                total += BATCH;
                sent_tx.send_replace(total);
                wait_for_stats(&handle, "flood read up to a batch", |s| {
                    nobody_read(s) + BATCH >= total
                })
                .await?;
            }
            anyhow::Ok((raw, total)) // the connection stays open until the test ends
        }
    });

    // Meanwhile the echo worker, heartbeating on the other endpoint, must stay registered and
    // serve calls made on the flooded one: for three liveness periods at least (a worker whose
    // heartbeats went unread that long would be purged) and until FLOOD requests are written.
    let client = Client::new(
        client_ep.clone(),
        ClientConfig::default()
            .timeout(Duration::from_secs(2))
            .attempts(3),
    );
    let mut calls = 0;
    let window = tokio::time::Instant::now() + TEST_HEARTBEAT.expiry() * 3;
    loop {
        if flood.is_finished() {
            let ended = flood.await?.map(|_| ());
            anyhow::bail!("the flood ended before it was stopped: {ended:?}");
        }
        check_echo_serves(&broker, &client, calls).await?;
        calls += 1;
        if tokio::time::Instant::now() >= window && *sent.borrow() >= FLOOD {
            break;
        }
        anyhow::ensure!(calls < 100_000, "the flood was never written");
    }
    let _ = stop_flood.send(true);
    let (raw, sent) = tokio::time::timeout(PATIENCE, flood).await???;

    // Then until the broker has read all of it, and for two liveness periods more, so a purge
    // decided late would be seen too.
    let mut read_at = None;
    for _ in 0..100_000 {
        let stats = check_echo_serves(&broker, &client, calls).await?;
        calls += 1;
        let now = tokio::time::Instant::now();
        if read_at.is_none() && nobody_read(&stats) >= sent {
            read_at = Some(now);
        }
        if read_at.is_some_and(|at| now >= at + TEST_HEARTBEAT.expiry() * 2) {
            break;
        }
    }
    anyhow::ensure!(read_at.is_some(), "the broker never read the whole flood");
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    drop(raw);
    let stats = broker.stop().await?;
    assert_eq!(stats.purged, 0);
    assert!(stats.replies >= u64::from(calls));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_when_the_broker_stops_are_counted_in_its_final_stats() -> Result<()> {
    let broker =
        RunningBroker::start(test_config().request_expiry(Duration::from_secs(300))).await?;
    let mut client = RawPeer::connect(&broker.endpoint).await?;
    let _worker = worker(&broker.endpoint, b"busy").await?;
    broker
        .wait_until("the worker registered", |s| s.workers == 1)
        .await?;
    client
        .send(frames(&[b"", b"MDPC01", b"busy", b"held"]))
        .await?;
    for i in 0..100 {
        let body = format!("waits {i}");
        client
            .send(frames(&[b"", b"MDPC01", b"nobody", body.as_bytes()]))
            .await?;
    }
    broker
        .wait_until("every request taken", |s| {
            s.queued == 100 && s.in_flight == 1
        })
        .await?;
    let stats = broker.stop().await?;
    assert_eq!(
        (stats.dropped_at_shutdown, stats.queued, stats.in_flight),
        (101, 0, 0)
    );
    assert_eq!(
        stats.requests,
        stats.replies
            + stats.expired
            + stats.rejected
            + stats.abandoned
            + stats.dropped_at_shutdown
    );
    Ok(())
}
