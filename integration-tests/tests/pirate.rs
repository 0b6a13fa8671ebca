//! The Pirate ladder over TCP: Lazy Pirate client, Simple and Paranoid Pirate queues and workers,
//! and interop with libzmq peers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{frames, free_endpoint, wait_for_stats, PyPeer, RawPeer, PATIENCE};
use majordomo_pirate::{
    LazyEvent, LazyPirate, LazyPirateConfig, LazyPirateError, PppWorker, PppWorkerConfig, Queue,
    QueueConfig, QueueHandle, QueueStats,
};
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_worker::handler_fn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zeromq::{RepSocket, ReqSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const HB: HeartbeatConfig = HeartbeatConfig::new(Duration::from_millis(100), 3);

fn quick(endpoint: &str, retries: u32) -> LazyPirate {
    LazyPirate::new(
        endpoint,
        LazyPirateConfig::default()
            .timeout(Duration::from_millis(300))
            .attempts(retries),
    )
}

/// A REP echo server that answers `count` requests, then closes.
async fn rep_server(endpoint: &str, count: usize) -> Result<JoinHandle<Result<()>>> {
    let mut server = RepSocket::new();
    // A server just closed on the same port may hold its listener a moment longer.
    let mut bound = server.bind(endpoint).await;
    for _ in 0..100 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = server.bind(endpoint).await;
    }
    bound?;
    Ok(tokio::spawn(async move {
        for _ in 0..count {
            let msg = server.recv().await?;
            server.send(msg).await?;
        }
        Ok(())
    }))
}

struct RunningQueue {
    frontend: String,
    backend: String,
    handle: QueueHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<QueueStats, majordomo_pirate::QueueError>>,
}

impl RunningQueue {
    async fn start(frontend: &str, backend: &str, config: QueueConfig) -> Result<Self> {
        Self::start_with(frontend, backend, config, Duration::ZERO).await
    }

    async fn start_with(
        frontend: &str,
        backend: &str,
        config: QueueConfig,
        busy_poll: Duration,
    ) -> Result<Self> {
        let builder = Queue::builder()
            .frontend(frontend)
            .backend(backend)
            .config(config)
            .busy_poll(busy_poll);
        // A queue just stopped on the same ports may hold its listeners a moment longer.
        let mut bound = builder.clone().build().await;
        for _ in 0..100 {
            if bound.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            bound = builder.clone().build().await;
        }
        let queue = bound?;
        let (frontend, backend) = (queue.frontend().to_owned(), queue.backend().to_owned());
        let handle = queue.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(queue.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            frontend,
            backend,
            handle,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<QueueStats> {
        let _ = self.stop.send(());
        Ok(tokio::time::timeout(PATIENCE, self.task).await???)
    }
}

fn paranoid() -> QueueConfig {
    QueueConfig::paranoid().heartbeat(Some(HB))
}

fn ppp_worker(
    endpoint: &str,
) -> (
    oneshot::Sender<()>,
    JoinHandle<Result<(), majordomo_pirate::PppWorkerError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = PppWorker::new(
        endpoint,
        PppWorkerConfig::default()
            .heartbeat(HB)
            .reconnect_initial(Duration::from_millis(50))
            .reconnect_max(Duration::from_millis(400)),
    );
    let task = tokio::spawn(
        worker.run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = stopped.await;
        }),
    );
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pirate_recovers_when_the_server_restarts_between_retries() -> Result<()> {
    let endpoint = free_endpoint()?;
    let server = rep_server(&endpoint, 1).await?;
    let (retried, mut retries) = watch::channel(0u32);
    let mut client = quick(&endpoint, 10).on_event(move |e| {
        if let LazyEvent::Retrying { .. } = e {
            retried.send_modify(|n| *n += 1);
        }
    });
    assert_eq!(client.request(frames(&[b"1"])).await?, frames(&[b"1"]));
    server.await??; // the server "crashes" after one request
    let call = tokio::spawn(async move { client.request(frames(&[b"2"])).await });
    // The first attempt found no server and the client is about to resend: only now does the
    // server come back.
    tokio::time::timeout(PATIENCE, retries.wait_for(|n| *n >= 1))
        .await
        .context("the client never retried")??;
    let server = rep_server(&endpoint, 1).await?;
    assert_eq!(
        tokio::time::timeout(PATIENCE, call).await???,
        frames(&[b"2"])
    );
    assert!(*retries.borrow() >= 1, "the client retried");
    server.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pirate_abandons_when_the_server_never_comes_back() -> Result<()> {
    let endpoint = free_endpoint()?;
    let mut client = quick(&endpoint, 3);
    match client.request(frames(&[b"hello"])).await {
        Err(LazyPirateError::ServerOffline { attempts, request }) => {
            assert_eq!(attempts, 3);
            assert_eq!(request, frames(&[b"hello"]));
        }
        other => panic!("expected ServerOffline, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pirate_rejects_a_stale_reply() -> Result<()> {
    // A server that first answers with a stale sequence number, then the right one.
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await?.to_string();
    // The server keeps its socket open until the client has its answer.
    let (answered, client_done) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let msg = router.recv().await?.into_vec();
        for body in [&b"6"[..], &b"7"[..]] {
            let reply = vec![msg[0].clone(), Bytes::new(), Bytes::copy_from_slice(body)];
            router
                .send(ZmqMessage::try_from(reply).expect("frames"))
                .await?;
        }
        let _ = client_done.await;
        anyhow::Ok(())
    });
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let seen = rejected.clone();
    let mut client = quick(&endpoint, 1).on_event(move |e| {
        if let LazyEvent::Rejected(reply) = e {
            seen.lock().unwrap().push(reply);
        }
    });
    let reply = client
        .request_with(frames(&[b"7"]), |r| r == frames(&[b"7"]))
        .await;
    let _ = answered.send(());
    assert_eq!(reply?, frames(&[b"7"]));
    assert_eq!(*rejected.lock().unwrap(), [frames(&[b"6"])]);
    tokio::time::timeout(PATIENCE, server).await???;
    Ok(())
}

/// A Simple Pirate worker on a REQ socket: READY, then for each of `count` requests it reports
/// `(tag, body)` on `seen`, waits for a release, and replies `tag:body`.
fn req_worker(
    backend: String,
    tag: &'static str,
    count: usize,
    seen: mpsc::UnboundedSender<(&'static str, String)>,
) -> (mpsc::UnboundedSender<()>, JoinHandle<Result<()>>) {
    let (release, mut released) = mpsc::unbounded_channel::<()>();
    let task = tokio::spawn(async move {
        let mut req = ReqSocket::new();
        req.connect(&backend).await?;
        req.send(ZmqMessage::from(Bytes::from_static(&[0x01])))
            .await?;
        for _ in 0..count {
            let mut frames = tokio::time::timeout(PATIENCE, req.recv())
                .await??
                .into_vec();
            let body = String::from_utf8(frames.pop().expect("body").to_vec())?;
            seen.send((tag, body.clone()))?;
            tokio::time::timeout(PATIENCE, released.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("released by nobody"))?;
            frames.push(Bytes::from(format!("{tag}:{body}")));
            req.send(ZmqMessage::try_from(frames).expect("frames"))
                .await?;
        }
        anyhow::Ok(())
    });
    (release, task)
}

/// The next `(worker, request)` a [`req_worker`] reports.
async fn next_seen(
    seen: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
) -> Result<(&'static str, String)> {
    tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("workers gone"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_pirate_queue_with_req_workers() -> Result<()> {
    let queue = RunningQueue::start(
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        QueueConfig::simple(),
    )
    .await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut x = RawPeer::connect(&queue.frontend).await?;
    let mut y = RawPeer::connect(&queue.frontend).await?;
    // Worker a takes request 0 and holds it; b, registered after, takes request 1 (a is busy).
    let (release_a, a) = req_worker(queue.backend.clone(), "a", 3, seen_tx.clone());
    x.send(frames(&[b"", b"0"])).await?;
    assert_eq!(next_seen(&mut seen).await?, ("a", "0".to_owned()));
    let (release_b, b) = req_worker(queue.backend.clone(), "b", 3, seen_tx);
    y.send(frames(&[b"", b"1"])).await?;
    assert_eq!(next_seen(&mut seen).await?, ("b", "1".to_owned()));
    // b answers first, then a: b is now the least recently used worker, a the most.
    release_b.send(())?;
    assert_eq!(y.recv().await?, frames(&[b"", b"b:1"]));
    release_a.send(())?;
    assert_eq!(x.recv().await?, frames(&[b"", b"a:0"]));
    // One request at a time: each goes to the worker that has waited longest.
    for (i, want) in [(2, "b"), (3, "a"), (4, "b"), (5, "a")] {
        let body = i.to_string();
        x.send(frames(&[b"", body.as_bytes()])).await?;
        let (got, request) = next_seen(&mut seen).await?;
        assert_eq!(
            (got, request.as_str()),
            (want, body.as_str()),
            "request {i} goes to the least recently used worker"
        );
        match got {
            "a" => release_a.send(())?,
            _ => release_b.send(())?,
        }
        assert_eq!(
            x.recv().await?,
            frames(&[b"", format!("{want}:{i}").as_bytes()])
        );
    }
    a.await??;
    b.await??;
    queue.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ppp_worker_survives_queue_restart_on_the_same_port() -> Result<()> {
    let front = free_endpoint()?;
    let back = free_endpoint()?;
    let queue = RunningQueue::start(&front, &back, paranoid()).await?;
    let (stop, worker) = ppp_worker(&back);
    let mut client = LazyPirate::new(front.clone(), LazyPirateConfig::default());
    assert_eq!(
        client.request(frames(&[b"before"])).await?,
        frames(&[b"before"])
    );

    queue.stop().await?;
    let queue = RunningQueue::start(&front, &back, paranoid()).await?;
    let mut client = LazyPirate::new(front.clone(), LazyPirateConfig::default());
    assert_eq!(
        client.request(frames(&[b"after"])).await?,
        frames(&[b"after"])
    );

    // Read while the worker still runs: once it stops, the queue may learn of it (a heartbeat
    // it cannot deliver) before it stops itself.
    let stats = queue.handle.stats().await.context("queue running")?;
    assert_eq!(stats.workers, 1, "one worker, registered once");
    let _ = stop.send(());
    worker.await??;
    queue.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_worker_is_expired_and_its_request_served_by_another() -> Result<()> {
    silent_worker_case(Duration::ZERO).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_queue_still_expires_a_silent_worker() -> Result<()> {
    silent_worker_case(Duration::from_millis(2)).await
}

async fn silent_worker_case(busy_poll: Duration) -> Result<()> {
    let any = "tcp://127.0.0.1:0";
    let queue = RunningQueue::start_with(any, any, paranoid(), busy_poll).await?;
    // A raw PPP worker that takes the request and then goes silent.
    let mut silent = RawPeer::connect(&queue.backend).await?;
    silent.send(frames(&[&[0x01]])).await?;
    // The request is sent only once the queue has registered the worker, so it is the one the
    // request goes to.
    wait_for_stats(&queue.handle, "silent worker registered", |s| {
        s.workers == 1 && s.idle_workers == 1
    })
    .await?;
    let mut client = LazyPirate::new(
        queue.frontend.clone(),
        LazyPirateConfig::default().timeout(PATIENCE).attempts(1),
    );
    let call = tokio::spawn(async move { client.request(frames(&[b"precious"])).await });
    let got = loop {
        let msg = silent.recv().await?;
        if msg != frames(&[&[0x02]]) {
            break msg;
        }
    };
    assert_eq!(got.last().map(|b| b.as_ref()), Some(&b"precious"[..]));
    // Now a healthy worker joins; the silent one is expired and its request moves.
    let (stop, worker) = ppp_worker(&queue.backend);
    assert_eq!(
        tokio::time::timeout(PATIENCE, call).await???,
        frames(&[b"precious"])
    );
    let _ = stop.send(());
    worker.await??;
    let stats = queue.stop().await?;
    assert_eq!(
        (stats.expired_workers, stats.requeued, stats.replies),
        (1, 1, 1)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pirate_against_a_libzmq_rep_server() -> Result<()> {
    let mut server = PyPeer::spawn("rep_server.py", &[])?;
    let endpoint = server.endpoint().await?;
    let mut client = LazyPirate::new(endpoint, LazyPirateConfig::default());
    for i in 0..5 {
        let body = i.to_string();
        let reply = client.request(frames(&[body.as_bytes()])).await?;
        assert_eq!(reply, frames(&[format!("py:{body}").as_bytes()]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_ppp_worker_against_our_queue() -> Result<()> {
    let queue = RunningQueue::start("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", paranoid()).await?;
    let mut worker = PyPeer::spawn(
        "ppp_worker.py",
        &[&queue.backend, &HB.interval.as_millis().to_string()],
    )?;
    assert_eq!(worker.line().await?, "ready");
    let mut client = LazyPirate::new(queue.frontend.clone(), LazyPirateConfig::default());
    for i in 0..5 {
        let body = format!("req {i}");
        assert_eq!(
            client.request(frames(&[body.as_bytes()])).await?,
            frames(&[format!("py:{body}").as_bytes()])
        );
    }
    // Several heartbeat intervals pass: the libzmq worker heartbeats and stays registered.
    tokio::time::sleep(HB.expiry() * 3).await;
    assert_eq!(
        client.request(frames(&[b"later"])).await?,
        frames(&[b"py:later"])
    );
    let stats = queue.stop().await?;
    assert_eq!(
        (stats.workers, stats.expired_workers, stats.protocol_errors),
        (1, 0, 0)
    );
    Ok(())
}

/// A worker written as the Guide's ppworker (libzmq DEALER, through pyzmq) stays on its socket
/// when the queue restarts, and libzmq reconnects it to the new queue: the new queue takes it back
/// on its heartbeats, without waiting for the READY it would send only once its own liveness ran
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_ppp_worker_is_taken_back_on_its_heartbeat_after_a_queue_restart() -> Result<()> {
    let front = free_endpoint()?;
    let back = free_endpoint()?;
    let queue = RunningQueue::start(&front, &back, QueueConfig::paranoid()).await?;
    // The Guide's 1 s heartbeat, but 30 silent intervals before it gives up on the queue: far past
    // the wait below, so before it ends only heartbeats can bring the worker back.
    let _worker = PyPeer::spawn("guide_ppworker.py", &[&back, "1000", "30"])?;
    wait_for_stats(&queue.handle, "the worker registered", |s| s.workers == 1).await?;
    let mut client = LazyPirate::new(front.clone(), LazyPirateConfig::default());
    assert_eq!(
        client.request(frames(&[b"before"])).await?,
        frames(&[b"before"])
    );
    let before = queue.stop().await?;
    assert_eq!((before.replies, before.rejoined_workers), (1, 0));

    let queue = RunningQueue::start(&front, &back, QueueConfig::paranoid()).await?;
    let rejoined =
        wait_for_stats(&queue.handle, "the worker taken back", |s| s.workers == 1).await?;
    assert_eq!(
        rejoined.rejoined_workers, 1,
        "registered on a heartbeat, not on READY"
    );
    let mut client = LazyPirate::new(front.clone(), LazyPirateConfig::default());
    assert_eq!(
        client.request(frames(&[b"after"])).await?,
        frames(&[b"after"])
    );
    let after = queue.stop().await?;
    assert_eq!(
        (
            after.workers,
            after.rejoined_workers,
            after.replies,
            after.stale_replies,
            after.protocol_errors
        ),
        (1, 1, 1, 0, 0)
    );
    Ok(())
}
