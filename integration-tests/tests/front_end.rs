//! The guard in front-end mode: every peer read by the guard and multiplexed onto one link to
//! the broker's socket, with the message deadline and the byte budgets.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{test_config, wait_for_service, RawZmtp, RunningBroker, PATIENCE};
use majordomo_broker::{Broker, GuardConfig, GuardStatsHandle};
use majordomo_client::{Client, ClientConfig};
use majordomo_worker::{handler_fn, BoxError, Worker, WorkerConfig};
use majordomo_zmtp::Rule;
use tokio::task::JoinHandle;

/// An in-process broker behind a front end with `guard`, an echo worker, and the guard's stats.
async fn front_ended_broker(
    guard: GuardConfig,
) -> Result<(RunningBroker, GuardStatsHandle, JoinHandle<()>)> {
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(test_config())
        .guard(guard.front_end(true))
        .build()
        .await?;
    let stats = broker
        .guards()
        .first()
        .context("a guarded endpoint")?
        .clone();
    let broker = RunningBroker::run(broker);
    let worker = Worker::new(broker.endpoint.clone(), "echo", WorkerConfig::default());
    let worker = tokio::spawn(async move {
        let echo = handler_fn(|body: Vec<Bytes>| async move { Ok::<_, BoxError>(body) });
        let _ = worker.run(echo, std::future::pending()).await;
    });
    wait_for_service(&broker.endpoint, "echo").await?;
    Ok((broker, stats, worker))
}

/// Waits until the guard's stats satisfy `done`, or fails after [`PATIENCE`] with them.
async fn wait_for_guard(
    stats: &GuardStatsHandle,
    what: &str,
    mut done: impl FnMut(&majordomo_broker::GuardStats) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = stats.stats();
        if done(&now) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_workers_are_served_and_a_peer_stopping_mid_message_is_closed() -> Result<()> {
    let guard = GuardConfig::default().message_timeout(Duration::from_secs(1));
    let (broker, stats, _worker) = front_ended_broker(guard).await?;
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    let hello = vec![
        Bytes::from_static(b"hello"),
        Bytes::from(vec![7u8; 100_000]),
    ];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);

    // A peer that begins a message (the header of a 1,000-byte frame) and sends no more.
    let mut stalled = RawZmtp::connect(&broker.endpoint).await?;
    stalled.send_command(b"PING", &[0, 10]).await?;
    stalled.announce_frame(1000).await?;
    // Others are served meanwhile.
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    assert!(
        stalled.closed_within(PATIENCE).await?,
        "closed at its message deadline"
    );
    wait_for_guard(&stats, "message timeout counted", |s| {
        s.count(Rule::MessageTimeout) == 1 && s.pongs >= 1
    })
    .await?;
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    Ok(())
}

/// A raw ZMTP DEALER that announces `identity`, after the handshake both ways.
async fn raw_dealer(endpoint: &str, identity: &[u8]) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("tcp://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut hello = RawZmtp::greeting();
    let mut body = vec![5];
    body.extend(b"READY");
    for (name, value) in [
        (&b"Socket-Type"[..], &b"DEALER"[..]),
        (b"Identity", identity),
    ] {
        body.push(name.len() as u8);
        body.extend(name);
        body.extend((value.len() as u32).to_be_bytes());
        body.extend(value);
    }
    hello.extend([0x04, body.len() as u8]);
    hello.extend(body);
    stream.write_all(&hello).await?;
    // The server's greeting, then its READY (a short command).
    let mut greeting = [0u8; 66];
    stream.read_exact(&mut greeting).await?;
    let mut ready = vec![0u8; usize::from(greeting[65])];
    stream.read_exact(&mut ready).await?;
    anyhow::ensure!(ready.starts_with(b"\x05READY"), "READY expected");
    Ok(stream)
}

/// Reads one message of short frames.
async fn read_message(stream: &mut tokio::net::TcpStream) -> Result<Vec<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut frames = Vec::new();
    loop {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await?;
        anyhow::ensure!(header[0] & 0x06 == 0, "a short message frame: {header:?}");
        let mut body = vec![0u8; usize::from(header[1])];
        stream.read_exact(&mut body).await?;
        frames.push(body);
        if header[0] & 0x01 == 0 {
            return Ok(frames);
        }
    }
}

fn encode(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let more = u8::from(i + 1 < frames.len());
        if frame.len() < 256 {
            out.extend([more, frame.len() as u8]);
        } else {
            out.push(more | 0x02);
            out.extend((frame.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_anothers_identity_takes_nothing_over() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (broker, _stats, _worker) = front_ended_broker(GuardConfig::default()).await?;
    let mut first = raw_dealer(&broker.endpoint, b"same").await?;
    let mut second = raw_dealer(&broker.endpoint, b"same").await?;
    for (peer, body) in [(&mut first, &b"one"[..]), (&mut second, b"two")] {
        peer.write_all(&encode(&[b"", b"MDPC01", b"echo", body]))
            .await?;
    }
    for (peer, body) in [(&mut first, &b"one"[..]), (&mut second, b"two")] {
        let reply = tokio::time::timeout(PATIENCE, read_message(peer)).await??;
        assert_eq!(
            reply.last().map(Vec::as_slice),
            Some(body),
            "each peer gets its own reply: {reply:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_its_replies_is_closed_at_its_outbound_budget() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    // A short timeout: however the socket buffers fill, the peer is closed for not reading,
    // at its budget or when a write to it stops moving.
    let guard = GuardConfig::default()
        .max_message_size(1024 * 1024)
        .max_frame_size(1024 * 1024)
        .outbound_budget(2 * 1024 * 1024)
        .message_timeout(Duration::from_secs(1));
    let (broker, stats, _worker) = front_ended_broker(guard).await?;
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    let mut deaf = raw_dealer(&broker.endpoint, b"").await?;
    // 64 replies of 512 KiB: far more than the socket buffers and the 2 MiB budget hold. The
    // guard stops reading a peer while its write to it waits, so the sends may wait too: they
    // run beside the test, which reads the outcome through the guard's counters.
    let body = vec![1u8; 512 * 1024];
    let request = encode(&[b"", b"MDPC01", b"echo", &body]);
    let sending = tokio::spawn(async move {
        for _ in 0..64 {
            if deaf.write_all(&request).await.is_err() {
                break;
            }
        }
        deaf
    });
    wait_for_guard(&stats, "closed for not reading", |s| {
        s.count(Rule::Outbound) == 1 && s.dropped >= 1
    })
    .await?;
    let mut deaf = tokio::time::timeout(PATIENCE, sending)
        .await
        .context("the sends end once the peer is closed")??;
    assert!(
        integration_tests::closed_within(&mut deaf, PATIENCE).await,
        "the peer was closed"
    );
    let hello = vec![Bytes::from_static(b"hello")];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    Ok(())
}

/// `count` peers that each announce a final frame of `frame` bytes, send `sent` of them and
/// then nothing; each task ends with whether its peer was closed within [`PATIENCE`].
async fn stalled_senders(
    endpoint: &str,
    count: usize,
    frame: u64,
    sent: usize,
) -> Result<Vec<JoinHandle<bool>>> {
    use tokio::io::AsyncWriteExt;
    let mut senders = Vec::new();
    for _ in 0..count {
        let mut peer = raw_dealer(endpoint, b"").await?;
        senders.push(tokio::spawn(async move {
            let mut header = vec![0x02];
            header.extend(frame.to_be_bytes());
            let _ = peer.write_all(&header).await;
            // Held back by the budget, this write waits; a closed peer ends it.
            let _ = peer.write_all(&vec![0u8; sent]).await;
            // Stay connected without finishing the message.
            integration_tests::closed_within(&mut peer, PATIENCE).await
        }));
    }
    Ok(senders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_of_many_peers_hold_no_more_than_the_inbound_budget() -> Result<()> {
    const MIB: usize = 1024 * 1024;
    let guard = GuardConfig::default()
        .max_frame_size(2 * MIB as u64)
        .max_message_size(2 * MIB as u64)
        .inbound_budget(4 * MIB)
        .message_timeout(Duration::from_secs(1));
    let (broker, stats, _worker) = front_ended_broker(guard).await?;
    // Twelve peers each announce a 1 MiB frame and send half of it: each frame is charged
    // whole, three times the budget in all.
    let senders = stalled_senders(&broker.endpoint, 12, MIB as u64, MIB / 2).await?;
    let mut most = 0;
    wait_for_guard(&stats, "the budget in use", |s| {
        most = most.max(s.inbound_held);
        s.inbound_held >= 3 * MIB as u64
    })
    .await?;
    // A client is served once the stalled messages time out and give their budget back.
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    let hello = vec![Bytes::from_static(b"hello")];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    wait_for_guard(&stats, "every stalled peer closed, the budget back", |s| {
        most = most.max(s.inbound_held);
        s.count(Rule::MessageTimeout) == 12 && s.inbound_held == 0
    })
    .await?;
    assert!(most <= 4 * MIB as u64, "held {most} bytes");
    for sender in senders {
        assert!(sender.await?, "each stalled peer was closed");
    }
    Ok(())
}

/// Peers that begin large messages, fill the inbound budget and stop cannot keep everyone else
/// unread until their message timeout (a minute here, past the test's patience): while others
/// wait for the budget, a holder that sends nothing for `stall_timeout` is closed, and the echo
/// worker's heartbeats and a client's calls get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stop_mid_message_while_others_wait_are_closed_and_others_served() -> Result<()>
{
    const MIB: usize = 1024 * 1024;
    let guard = GuardConfig::default()
        .max_frame_size(2 * MIB as u64)
        .max_message_size(2 * MIB as u64)
        .inbound_budget(4 * MIB)
        .message_timeout(Duration::from_secs(60))
        .stall_timeout(Duration::from_millis(200));
    let (broker, stats, _worker) = front_ended_broker(guard).await?;
    // Twelve peers each announce a frame of 1 MiB less 256 bytes and send half of it: each is
    // charged whole, and four of them leave too little of the budget for any other message.
    let senders = stalled_senders(&broker.endpoint, 12, MIB as u64 - 256, MIB / 2).await?;
    wait_for_guard(&stats, "the budget in use", |s| {
        s.inbound_held >= 4 * (MIB as u64 - 256)
    })
    .await?;
    let c = Client::new(
        broker.endpoint.clone(),
        ClientConfig::default().timeout(PATIENCE),
    );
    for n in 0..20 {
        let body = vec![Bytes::from(format!("served {n}"))];
        assert_eq!(c.request("echo", body.clone()).await?, body);
    }
    // Those that held the budget while the calls waited were closed; the rest, read once room
    // was made and pressed by nobody since, are held to their message timeout only.
    let closed = stats.stats().count(Rule::MessageTimeout);
    assert!(closed >= 1, "a stalled peer was closed to make room");
    assert!(stats.stats().inbound_held <= 4 * MIB as u64);
    for sender in senders {
        sender.abort();
    }
    Ok(())
}

/// An `ipc://` endpoint has the same front end as a `tcp://` one: a local peer announcing a
/// 1 TiB frame is closed (zmq.rs would have reserved it and aborted), others on the socket file
/// and on TCP are served, and the endpoints of one broker draw on one inbound budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipc_endpoint_is_guarded_as_tcp_is_and_shares_the_inbound_budget() -> Result<()> {
    let scratch = integration_tests::scratch_dir("fe-ipc")?;
    let dir = scratch.path();
    let ipc = format!("ipc://{}/broker.sock", dir.display());
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .bind(ipc.clone())
        .config(test_config())
        .guard(GuardConfig::default().message_timeout(Duration::from_secs(1)))
        .build()
        .await?;
    let [tcp_guard, ipc_guard] = broker.guards() else {
        anyhow::bail!("two guarded endpoints expected: {:?}", broker.guards());
    };
    let (tcp_guard, ipc_guard) = (tcp_guard.clone(), ipc_guard.clone());
    let broker = RunningBroker::run(broker);
    let worker = Worker::new(ipc.clone(), "echo", WorkerConfig::default());
    let _worker = tokio::spawn(async move {
        let echo = handler_fn(|body: Vec<Bytes>| async move { Ok::<_, BoxError>(body) });
        let _ = worker.run(echo, std::future::pending()).await;
    });
    wait_for_service(&broker.endpoint, "echo").await?;

    let mut huge = RawZmtp::connect(&ipc).await?;
    huge.announce_frame(1 << 40).await?;
    assert!(huge.closed_within(PATIENCE).await?, "closed at the header");
    wait_for_guard(&ipc_guard, "the frame limit counted on ipc", |s| {
        s.count(Rule::FrameSize) == 1
    })
    .await?;

    // A message begun on the socket file holds budget that the TCP endpoint sees held too.
    let mut begun = RawZmtp::connect(&ipc).await?;
    begun.send_partial_frame(100_000, 60_000).await?;
    wait_for_guard(
        &tcp_guard,
        "the ipc peer's bytes held in the shared budget",
        |s| s.inbound_held >= 60_000,
    )
    .await?;
    for c in [ipc.clone(), broker.endpoint.clone()] {
        let c = Client::new(c, ClientConfig::default().timeout(PATIENCE));
        let body = vec![Bytes::from_static(b"still served")];
        assert_eq!(c.request("echo", body.clone()).await?, body);
    }
    assert!(
        begun.closed_within(PATIENCE).await?,
        "closed at its deadline"
    );
    wait_for_guard(&tcp_guard, "the budget given back", |s| s.inbound_held == 0).await?;
    broker.stop().await?;
    Ok(())
}

/// Peers on two `ipc://` endpoints of one broker each have an identity of their own: the first
/// connection on each (a worker on one, a client on the other) are told apart, and the client's
/// request reaches the worker and its reply the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_peers_of_two_ipc_endpoints_are_told_apart() -> Result<()> {
    let scratch = integration_tests::scratch_dir("fe-two-ipc")?;
    let dir = scratch.path();
    let (one, two) = (
        format!("ipc://{}/one.sock", dir.display()),
        format!("ipc://{}/two.sock", dir.display()),
    );
    let broker = Broker::builder()
        .bind(one.clone())
        .bind(two.clone())
        .config(test_config())
        .build()
        .await?;
    let broker = RunningBroker::run(broker);
    let worker = Worker::new(one.clone(), "echo", WorkerConfig::default());
    let _worker = tokio::spawn(async move {
        let echo = handler_fn(|body: Vec<Bytes>| async move { Ok::<_, BoxError>(body) });
        let _ = worker.run(echo, std::future::pending()).await;
    });
    // Asked on the other endpoint, whose first connections have the numbers the worker's has on
    // its own.
    wait_for_service(&two, "echo").await?;
    let client = Client::new(two, ClientConfig::default().timeout(PATIENCE).attempts(1));
    let body = vec![Bytes::from_static(b"across endpoints")];
    assert_eq!(client.request("echo", body.clone()).await?, body);
    broker.stop().await?;
    Ok(())
}
