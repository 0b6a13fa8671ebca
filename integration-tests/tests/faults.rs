//! Fault scenarios against the real `majordomo` binary running as separate processes on
//! 127.0.0.1: workers and brokers killed, frozen and flooded while clients keep calling.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::http::{free_addr, get_when_up, sample};
use integration_tests::{
    frames, free_endpoint, mmi_stats, scratch_dir, service_stats, wait_for_mmi_stats,
    wait_for_service, Proc, PyPeer, RawPeer, RawZmtp, PATIENCE,
};
use majordomo_client::{Client, ClientConfig};

const HB: &[&str] = &["--heartbeat", "100ms", "--liveness", "3"];

fn broker(endpoint: &str, extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["broker", "--bind", endpoint];
    args.extend_from_slice(HB);
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// A worker process (reconnecting quickly, test heartbeats) running the subcommand `kind`.
fn worker(endpoint: &str, kind: &[&str]) -> Result<Proc> {
    let mut args = vec![
        "worker",
        "--connect",
        endpoint,
        "--reconnect-initial",
        "100ms",
        "--reconnect-max",
        "1s",
    ];
    args.extend_from_slice(HB);
    args.extend_from_slice(kind);
    Proc::spawn(&args)
}

/// A worker process serving `service` with a shell command (request on stdin, reply on stdout).
fn exec_worker(endpoint: &str, service: &str, script: &str) -> Result<Proc> {
    worker(endpoint, &["exec", service, "--", "sh", "-c", script])
}

fn echo_worker(endpoint: &str) -> Result<Proc> {
    worker(endpoint, &["echo"])
}

fn client(endpoint: &str) -> Client {
    Client::new(
        endpoint,
        ClientConfig::default()
            .timeout(Duration::from_millis(500))
            .attempts(20),
    )
}

/// Waits until a handler has left a file in `dir`.
async fn wait_for_marker(dir: &Path) -> Result<()> {
    for _ in 0..500 {
        if std::fs::read_dir(dir)?.next().is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no handler started")
}

async fn request_exactly_one_reply(
    c: &mut RawPeer,
    service: &[u8],
    body: &[u8],
) -> Result<Vec<Bytes>> {
    c.send(frames(&[b"", b"MDPC01", service, body])).await?;
    let reply = c.recv().await?;
    // Long enough for a duplicate to show up if one were coming.
    anyhow::ensure!(
        c.recv_within(Duration::from_millis(800)).await?.is_none(),
        "a second reply arrived"
    );
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_request_client_gets_exactly_one_reply() -> Result<()> {
    let ep = free_endpoint()?;
    let _broker = broker(&ep, &[])?;
    let scratch = scratch_dir("faults-kill")?;
    let dir = scratch.path();
    let script = format!("touch {}/started.$$; sleep 0.5; cat", dir.display());
    let doomed = exec_worker(&ep, "slow", &script)?;
    wait_for_service(&ep, "slow").await?;

    let mut c = RawPeer::connect(&ep).await?;
    c.send(frames(&[b"", b"MDPC01", b"slow", b"payload"]))
        .await?;
    wait_for_marker(dir).await?;
    let _rescuer = exec_worker(&ep, "slow", &script)?;
    doomed.signal("KILL")?;

    assert_eq!(
        c.recv().await?,
        frames(&[b"", b"MDPC01", b"slow", b"payload"])
    );
    assert_eq!(
        c.recv_within(Duration::from_millis(800)).await?,
        None,
        "exactly one reply"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_workers_return_and_clients_succeed() -> Result<()> {
    let ep = free_endpoint()?;
    let first = broker(&ep, &[])?;
    let _w1 = echo_worker(&ep)?;
    let _w2 = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    let c = client(&ep);
    assert_eq!(
        c.request("echo", vec![Bytes::from_static(b"before")])
            .await?,
        frames(&[b"before"])
    );

    first.signal("KILL")?;
    drop(first);
    let _second = broker(&ep, &[])?;
    // Ten callers at once; each must succeed through retries, none may hang.
    let mut calls = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            let body = Bytes::from(format!("after {i}"));
            let reply = c.request("echo", vec![body.clone()]).await?;
            anyhow::ensure!(reply == [body], "wrong reply");
            anyhow::Ok(())
        }));
    }
    for call in calls {
        tokio::time::timeout(PATIENCE * 2, call)
            .await
            .context("a client hung")???;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_is_expired_served_elsewhere_and_rejoins_cleanly() -> Result<()> {
    let ep = free_endpoint()?;
    let _broker = broker(&ep, &[])?;
    let scratch = scratch_dir("faults-stop")?;
    let dir = scratch.path();
    // The reply names the worker process that served it ($PPID of the shell).
    let script = format!(
        "touch {}/started.$$; sleep 1; printf '%s:' $PPID; cat",
        dir.display()
    );
    let frozen = exec_worker(&ep, "job", &script)?;
    wait_for_service(&ep, "job").await?;

    let mut c = RawPeer::connect(&ep).await?;
    c.send(frames(&[b"", b"MDPC01", b"job", b"x"])).await?;
    wait_for_marker(dir).await?;
    // Our worker heartbeats while busy; once the broker has seen it do so, it holds the worker
    // to liveness, busy or not, and a frozen one is expired within liveness.
    wait_for_mmi_stats(&ep, "the busy worker seen heartbeating", |s| {
        service_stats(s, b"job").is_some_and(|j| j.busy_heartbeating == 1)
    })
    .await?;
    frozen.signal("STOP")?;
    let other = exec_worker(&ep, "job", &script)?;

    let reply = c.recv().await?;
    assert_eq!(
        reply[3],
        Bytes::from(format!("{}:x", other.pid())),
        "served by the live worker"
    );

    // Resumed, the frozen worker finishes and replies late: that reply must not reach the client.
    frozen.signal("CONT")?;
    assert_eq!(
        c.recv_within(Duration::from_millis(1000)).await?,
        None,
        "late reply delivered"
    );

    // It re-registers: sequential requests reach both workers again.
    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..20 {
        let body = format!("r{i}");
        let reply = request_exactly_one_reply(&mut c, b"job", body.as_bytes()).await?;
        let text = String::from_utf8(reply[3].to_vec())?;
        served_by.insert(text.split(':').next().unwrap_or_default().to_owned());
        if served_by.len() == 2 {
            break;
        }
    }
    assert!(
        served_by.contains(&frozen.pid().to_string()),
        "frozen worker never came back: {served_by:?}"
    );
    Ok(())
}

/// Deterministic junk: truncated commands, wrong headers, bad command bytes, random frames, and
/// now and then a frame over the broker's size limit. Never a valid READY for `echo`.
fn junk(seed: &mut u64) -> Vec<Vec<u8>> {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let kind = next() % 8;
    let random_frame =
        |n: u64| -> Vec<u8> { (0..(n % 40)).map(|i| (n >> (i % 8)) as u8).collect() };
    match kind {
        0 => vec![b"".to_vec(), b"MDPC01".to_vec()],
        1 => vec![
            b"".to_vec(),
            b"MDPW01".to_vec(),
            vec![(next() % 250) as u8 + 6],
        ],
        2 => vec![
            b"".to_vec(),
            b"MDPX01".to_vec(),
            b"echo".to_vec(),
            b"x".to_vec(),
        ],
        3 => vec![
            b"".to_vec(),
            b"MDPW01".to_vec(),
            vec![0x03],
            b"c".to_vec(),
            b"not-empty".to_vec(),
            b"x".to_vec(),
        ],
        4 => vec![
            b"".to_vec(),
            b"MDPC01".to_vec(),
            vec![b'x'; 300],
            b"x".to_vec(),
        ],
        5 => vec![
            b"".to_vec(),
            b"MDPC01".to_vec(),
            b"echo".to_vec(),
            vec![7u8; 2 * 1024 * 1024],
        ],
        _ => (0..(next() % 6)).map(|_| random_frame(next())).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_floods_lose_no_legitimate_request() -> Result<()> {
    malformed_floods(&["--guard-relay"]).await
}

/// Through the front end every peer's messages share one link to the broker: the flood must not
/// queue so far ahead of the workers' heartbeats that they are purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_floods_through_the_front_end_lose_no_legitimate_request() -> Result<()> {
    malformed_floods(&[]).await
}

async fn malformed_floods(guard: &[&str]) -> Result<()> {
    let ep = free_endpoint()?;
    // The guard would cut off a connection at its first 2 MiB message; let those through it, so
    // that the broker's own limit (1 MiB) is what refuses them here.
    let mut args = vec![
        "--max-message-size",
        "1048576",
        "--guard-max-message",
        "4MiB",
    ];
    args.extend_from_slice(guard);
    let mut broker = broker(&ep, &args)?;
    let _w1 = echo_worker(&ep)?;
    let _w2 = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;

    let mut attackers = Vec::new();
    for a in 0..4u64 {
        let ep = ep.clone();
        attackers.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&ep).await?;
            let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (a + 1);
            for _ in 0..500 {
                let msg: Vec<Bytes> = junk(&mut seed).into_iter().map(Bytes::from).collect();
                if !msg.is_empty() {
                    peer.send(msg).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut legit = Vec::new();
    for c in 0..10 {
        let ep = ep.clone();
        legit.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&ep).await?;
            for i in 0..30 {
                let body = format!("legit {c}/{i}");
                peer.send(frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]))
                    .await?;
                let reply = peer.recv().await?;
                anyhow::ensure!(
                    reply == frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]),
                    "bad reply {reply:?}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in legit {
        tokio::time::timeout(PATIENCE * 3, task)
            .await
            .context("legitimate client stuck")???;
    }
    for task in attackers {
        task.await??;
    }
    assert!(!broker.has_exited()?, "broker died");
    let reply = client(&ep)
        .request("mmi.service", vec![Bytes::from_static(b"echo")])
        .await?;
    assert_eq!(reply, frames(&[b"200"]));
    // Every junk message the broker read is counted (and logged, rate-limited by the log's
    // reader, not by this test).
    let stats = mmi_stats(&ep).await?;
    assert!(
        stats.protocol_errors > 0,
        "invalid traffic is counted: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaves_memory_near_baseline() -> Result<()> {
    let ep = free_endpoint()?;
    // Thousands of connections a second from one address: past the guard's default rate.
    let broker = broker(&ep, &["--guard-connection-rate", "1000000"])?;
    let _w = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    let cycle = |n: usize| {
        let ep = ep.clone();
        async move {
            for i in 0..n {
                let mut peer = RawPeer::connect(&ep).await?;
                let body = format!("churn {i}");
                peer.send(frames(&[b"", b"MDPC01", b"echo", body.as_bytes()]))
                    .await?;
                let reply = peer.recv().await?;
                anyhow::ensure!(reply[3].as_ref() == body.as_bytes(), "bad reply");
            }
            anyhow::Ok(())
        }
    };
    // Warm up allocator and tables, then take the baseline.
    cycle(300).await?;
    let baseline = broker.rss_kib()?;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(cycle(750)));
    }
    for t in tasks {
        t.await??;
    }
    // The transport drops finished connections in its own tasks: give it a bounded time to.
    let mut after = broker.rss_kib()?;
    for _ in 0..100 {
        if after < baseline + 8 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = broker.rss_kib()?;
    }
    println!(
        "broker RSS: {baseline} KiB after warm-up, {after} KiB after 3000 more client connections"
    );
    // zmq.rs keeps ~120-265 bytes per finished ROUTER connection; 3000 cycles stay well under this.
    assert!(
        after < baseline + 8 * 1024,
        "RSS grew from {baseline} to {after} KiB"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_past_queue_bounds_stays_responsive_and_bounded() -> Result<()> {
    let ep = free_endpoint()?;
    let broker = broker(
        &ep,
        &["--max-queued", "2000", "--max-queued-per-service", "1000"],
    )?;
    // The baseline is taken once the broker answers.
    let idle = client(&ep)
        .request("mmi.service", vec![Bytes::from_static(b"nobody0")])
        .await?;
    assert_eq!(idle, frames(&[b"404"]));
    let baseline = broker.rss_kib()?;
    let mut floods = Vec::new();
    for f in 0..4 {
        let ep = ep.clone();
        floods.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&ep).await?;
            for i in 0..2500 {
                let service = format!("nobody{}", (f + i) % 3);
                peer.send(frames(&[b"", b"MDPC01", service.as_bytes(), &[0u8; 512]]))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for f in floods {
        f.await??;
    }
    // The broker works through the flood: wait until it has read all of it.
    const FLOOD: u64 = 4 * 2500;
    let mut stats = mmi_stats(&ep).await?;
    for _ in 0..500 {
        if stats.requests - stats.replies >= FLOOD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = mmi_stats(&ep).await?;
    }
    // Nothing serves those services: every flood request is queued, expired or rejected, and the
    // queue stays within its bound.
    assert_eq!(
        stats.queued as u64 + stats.expired + stats.rejected,
        FLOOD,
        "every request accounted for: {stats:?}"
    );
    assert!(stats.queued <= 2000, "queued past the bound: {stats:?}");
    assert!(stats.rejected > 0, "the bound was reached: {stats:?}");
    // Still answering.
    let reply = client(&ep)
        .request("mmi.service", vec![Bytes::from_static(b"nobody0")])
        .await?;
    assert_eq!(reply, frames(&[b"404"]));
    let after = broker.rss_kib()?;
    println!("broker RSS: {baseline} KiB idle, {after} KiB holding its bounded queues");
    assert!(
        after < baseline + 64 * 1024,
        "RSS grew from {baseline} to {after} KiB"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_does_not_stall_the_broker() -> Result<()> {
    never_reading_peer(&["--guard-relay"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_does_not_stall_a_busy_polling_broker() -> Result<()> {
    never_reading_peer(&["--guard-relay", "--busy-poll", "200us"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_is_closed_by_the_front_end() -> Result<()> {
    never_reading_peer_at_the_front_end(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_is_closed_by_the_front_end_of_a_busy_polling_broker() -> Result<()> {
    never_reading_peer_at_the_front_end(&["--busy-poll", "200us"]).await
}

/// With the relay (`--guard-relay`): the flooder has its own zmq.rs connection, whose queue
/// fills until the broker counts its replies as undeliverable.
async fn never_reading_peer(broker_args: &[&str]) -> Result<()> {
    let ep = free_endpoint()?;
    let _broker = broker(&ep, broker_args)?;
    let _w = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    // A client that floods mmi requests and never reads a reply: the broker's replies pile up in
    // the kernel, then in zmq.rs's 100,000-message queue, then the send timeout gives up on it.
    let mut sink = RawZmtp::connect(&ep).await?;
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let flood = tokio::spawn(async move {
        // A million requests: their replies overflow the kernel socket buffers and then zmq.rs's
        // 100,000-message queue.
        sink.send_repeated(&[b"", b"MDPC01", b"mmi.service", b"echo"], 1_000_000)
            .await?;
        // Keep the connection open, unread, until the test is done.
        let _ = tokio::time::timeout(PATIENCE * 3, &mut finished).await;
        anyhow::Ok(())
    });
    // Legitimate calls keep succeeding until the broker has given up on the flooder, and after.
    // The broker works through the flood meanwhile, so each call gets a generous budget.
    let c = Client::new(
        ep.clone(),
        ClientConfig::default()
            .timeout(Duration::from_secs(2))
            .attempts(15),
    );
    let mut gave_up = false;
    for i in 0..3000 {
        let body = Bytes::from(format!("still served {i}"));
        assert_eq!(c.request("echo", vec![body.clone()]).await?, [body]);
        // Replies to the flooder that could not be delivered: its queue filled past the send
        // timeout, and it is held.
        if mmi_stats(&ep).await?.undeliverable > 0 {
            gave_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gave_up,
        "the flood never filled the peer's queue, so this test did not test it"
    );
    for i in 0..5 {
        let body = Bytes::from(format!("after {i}"));
        assert_eq!(c.request("echo", vec![body.clone()]).await?, [body]);
    }
    let _ = done.send(());
    flood.await??;
    Ok(())
}

/// The body of `GET /metrics` at `addr`, retried until the listener answers.
async fn scrape(addr: &str) -> Result<String> {
    let (status, page) = get_when_up(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(page)
}

/// With the front end (the default): the flooder's replies are queued on it by the guard, which
/// closes it when they pass its outbound budget and counts them as dropped; the broker never
/// blocks on it, and other clients are served throughout.
async fn never_reading_peer_at_the_front_end(broker_args: &[&str]) -> Result<()> {
    let ep = free_endpoint()?;
    let metrics = free_addr()?;
    let mut args = vec!["--metrics-listen", &metrics];
    args.extend_from_slice(broker_args);
    let _broker = broker(&ep, &args)?;
    let _w = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    let before = scrape(&metrics).await?;
    assert_eq!(
        sample(&before, r#"majordomo_guard_refused_total{rule="outbound"}"#).unwrap_or(0.0),
        0.0
    );
    let mut sink = RawZmtp::connect(&ep).await?;
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let flood = tokio::spawn(async move {
        // A million requests whose replies, unread, pass the 32 MiB outbound budget. Once the
        // guard closes the connection, writing fails: that is the disconnection.
        let closed_while_writing = sink
            .send_repeated(&[b"", b"MDPC01", b"mmi.service", b"echo"], 1_000_000)
            .await
            .is_err();
        // Keep the connection unread until the test has seen the guard count it.
        let _ = tokio::time::timeout(PATIENCE * 3, &mut finished).await;
        let closed = closed_while_writing || sink.closed_within(PATIENCE).await?;
        anyhow::Ok(closed)
    });
    let c = Client::new(
        ep.clone(),
        ClientConfig::default()
            .timeout(Duration::from_secs(2))
            .attempts(15),
    );
    let mut closed = false;
    for i in 0..3000 {
        let body = Bytes::from(format!("still served {i}"));
        assert_eq!(c.request("echo", vec![body.clone()]).await?, [body]);
        let page = scrape(&metrics).await?;
        if sample(&page, r#"majordomo_guard_refused_total{rule="outbound"}"#).unwrap_or(0.0) >= 1.0
        {
            assert!(
                sample(&page, "majordomo_guard_dropped_total").unwrap_or(0.0) > 0.0,
                "the peer was closed at its outbound budget with nothing counted as dropped"
            );
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        closed,
        "the flood never passed the peer's outbound budget, so this test did not test it"
    );
    for i in 0..5 {
        let body = Bytes::from(format!("after {i}"));
        assert_eq!(c.request("echo", vec![body.clone()]).await?, [body]);
    }
    let _ = done.send(());
    assert!(
        flood.await??,
        "the peer that never reads was not disconnected"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frame_announcements_drop_the_peer_and_the_broker_serves_on() -> Result<()> {
    // zmq.rs 0.7 reserves whatever size a frame header announces before reading it: without the
    // guard, one announcement of 1 TiB aborts the process. The guard (on by default) refuses the
    // header and closes that connection; nothing reaches zmq.rs.
    let ep = free_endpoint()?;
    let mut broker = broker(&ep, &[])?;
    let _w = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    let c = client(&ep);
    let hello = vec![Bytes::from_static(b"hello")];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    let baseline = broker.rss_kib()?;
    for size in [1u64 << 40, u64::MAX, 16 * 1024 * 1024 + 1] {
        for _ in 0..10 {
            let mut peer = RawZmtp::connect(&ep).await?;
            peer.announce_frame(size).await?;
            assert!(
                peer.closed_within(PATIENCE).await?,
                "a {size}-byte frame announcement is cut off"
            );
            assert_eq!(c.request("echo", hello.clone()).await?, hello);
        }
    }
    assert!(!broker.has_exited()?, "the broker lives: {}", broker.log());
    let after = broker.rss_kib()?;
    println!("broker RSS {baseline} KiB before 30 huge announcements, {after} KiB after");
    assert!(
        after < baseline + 4 * 1024,
        "memory grew from {baseline} to {after} KiB"
    );
    Ok(())
}

/// A Guide-style worker (`python/guide_worker.py`) for `service` heartbeating every
/// `heartbeat_ms` while it waits, whose handler takes `delay_ms`; it sends nothing while the
/// handler runs.
fn guide_worker(
    endpoint: &str,
    service: &str,
    heartbeat_ms: &str,
    delay_ms: &str,
) -> Result<PyPeer> {
    PyPeer::spawn(
        "guide_worker.py",
        &[endpoint, service, heartbeat_ms, delay_ms],
    )
}

/// A busy Guide worker killed with SIGKILL while a fast one waits idle: the client, with one
/// attempt of `client_timeout`, must get its reply from the fast one, its request re-queued once
/// and no worker purged for silence. `broker_args` follow `--bind`.
async fn kill_9_busy_guide_worker(
    broker_args: &[&str],
    heartbeat_ms: &str,
    slow_delay_ms: &str,
    client_timeout: Duration,
) -> Result<()> {
    let ep = free_endpoint()?;
    let mut args = vec!["broker", "--bind", &ep];
    args.extend_from_slice(broker_args);
    let mut broker = Proc::spawn(&args)?;
    broker.wait_until_serving(&ep).await?;
    // Only the slow worker is there when the request comes, so it takes it.
    let mut slow = guide_worker(&ep, "guide", heartbeat_ms, slow_delay_ms)?;
    assert_eq!(slow.line().await?, "ready");
    wait_for_service(&ep, "guide").await?;
    let c = Client::new(
        ep.clone(),
        ClientConfig::default().timeout(client_timeout).attempts(1),
    );
    let body = Bytes::from_static(b"rescued");
    let call = tokio::spawn({
        let body = body.clone();
        async move { c.request("guide", vec![body]).await }
    });
    wait_for_mmi_stats(&ep, "the slow worker holds the request", |s| {
        service_stats(s, b"guide").is_some_and(|g| g.busy_workers == 1)
    })
    .await?;
    let mut fast = guide_worker(&ep, "guide", heartbeat_ms, "0")?;
    assert_eq!(fast.line().await?, "ready");
    wait_for_mmi_stats(&ep, "the fast worker is idle beside the busy one", |s| {
        service_stats(s, b"guide").is_some_and(|g| (g.idle_workers, g.busy_workers) == (1, 1))
    })
    .await?;

    slow.kill().await?;
    let reply = tokio::time::timeout(client_timeout + PATIENCE, call)
        .await
        .context("the client hung past its own timeout")??;
    let handled = match &reply {
        Ok(_) => Some(fast.line().await?),
        Err(_) => None,
    };
    let stats = mmi_stats(&ep).await?;
    // Re-queued once, when the connection closed: no purge for silence (a silent busy worker is
    // not held to liveness).
    assert_eq!(
        (
            reply.map_err(|e| e.to_string()),
            handled.as_deref(),
            stats.requeued,
            stats.purged
        ),
        (Ok(vec![body]), Some("handled 1"), 1, 0),
        "the reply from the other worker, the killed worker's request re-queued once and by no \
         purge: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_guide_worker_killed_with_kill_9_is_replaced_before_the_busy_timeout() -> Result<()> {
    // The slow worker is silent for its 30 s handler, and the busy timeout would wait 60 s: the
    // client's 20 s are enough only if the broker notices the closed connection.
    let mut args = vec!["--busy-timeout", "60s"];
    args.extend_from_slice(HB);
    kill_9_busy_guide_worker(&args, "100", "30000", Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_guide_worker_killed_with_kill_9_is_replaced_without_waiting_for_a_heartbeat(
) -> Result<()> {
    // With 30 s heartbeats, a broker that finds the dead connection only when a heartbeat to it
    // fails finds it 15 s or more after it handed out the request (the hand-out counts as a
    // send); the client waits 10 s. Only a broker that notices the connection close in time
    // serves it; the busy timeout (default) and liveness (90 s) are far off.
    kill_9_busy_guide_worker(
        &["--heartbeat", "30s", "--liveness", "3"],
        "30000",
        "120000",
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_invalid_messages_and_drops_log_a_bounded_number_of_lines() -> Result<()> {
    let ep = free_endpoint()?;
    // Requests past 10 queued are dropped, each for a service name of its own: a log limited
    // per name would write a line for each.
    let mut broker = broker(
        &ep,
        &["--max-queued", "10", "--guard-connection-rate", "1000000"],
    )?;
    broker.wait_until_serving(&ep).await?;
    let warnings = |log: &str| log.lines().filter(|l| l.contains("WARN")).count();
    let before = warnings(&broker.log());
    const PEERS: usize = 50;
    const EACH: usize = 100;
    let mut floods = Vec::new();
    for p in 0..PEERS {
        let ep = ep.clone();
        floods.push(tokio::spawn(async move {
            let mut peer = RawPeer::connect(&ep).await?;
            for i in 0..EACH {
                // No service frame: invalid.
                peer.send(frames(&[b"", b"MDPC01"])).await?;
                let service = format!("nobody-{p}-{i}");
                peer.send(frames(&[b"", b"MDPC01", service.as_bytes(), b"x"]))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for f in floods {
        f.await??;
    }
    let total = (PEERS * EACH) as u64;
    let stats = wait_for_mmi_stats(&ep, "the flood read", |s| {
        s.protocol_errors >= total && s.rejected + s.queued as u64 + s.expired >= total
    })
    .await?;
    assert_eq!(stats.rejected + stats.queued as u64 + stats.expired, total);
    assert!(stats.rejected >= total - 10, "{stats:?}");
    let lines = warnings(&broker.log()) - before;
    println!(
        "{} invalid messages and {} drops logged in {lines} WARN lines",
        stats.protocol_errors, stats.rejected
    );
    assert!(lines < 100, "{lines} WARN lines for the flood");
    Ok(())
}

/// Two broker processes, one worker process registered with both (`--connect` twice), and a
/// `MuxClient` and a round-robin `Client` of both with requests under way: one broker is
/// killed with SIGKILL, and every request is still answered, each caller once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_brokers_under_load_loses_no_request() -> Result<()> {
    use majordomo_client::MuxClient;
    let (a, b) = (free_endpoint()?, free_endpoint()?);
    let doomed = broker(&a, &[])?;
    let _survivor = broker(&b, &[])?;
    let _worker = worker(&a, &["--connect", &b, "--concurrency", "4", "echo"])?;
    wait_for_service(&a, "echo").await?;
    wait_for_service(&b, "echo").await?;
    let config = ClientConfig::default()
        .timeout(Duration::from_millis(500))
        .attempts(10);
    let mux = MuxClient::with_endpoints([a.clone(), b.clone()], config);
    let pool = Client::with_endpoints([a.clone(), b.clone()], config);
    let (kill, killed) = tokio::sync::watch::channel(false);
    // Callers that keep asking until the broker has been dead a while, so that requests are
    // under way when it dies and after.
    let mut callers = Vec::new();
    for caller in 0..16u32 {
        let (mux, pool, mut killed) = (mux.clone(), pool.clone(), killed.clone());
        callers.push(tokio::spawn(async move {
            let mut after_kill = 0;
            let mut n = 0u32;
            while after_kill < 20 {
                let body = vec![Bytes::from(format!("{caller}-{n}"))];
                let reply = if caller % 2 == 0 {
                    mux.request("echo", body.clone()).await
                } else {
                    pool.request("echo", body.clone()).await
                };
                anyhow::ensure!(reply? == body, "caller {caller} request {n}: another reply");
                n += 1;
                if *killed.borrow_and_update() {
                    after_kill += 1;
                }
            }
            anyhow::Ok(n)
        }));
    }
    // Both brokers serve before one dies.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while mux.stats().await.replies < 200 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.signal("KILL")?;
    let _ = kill.send(true);
    for caller in callers {
        caller.await??;
    }
    let stats = mux.stats().await;
    assert_eq!(stats.brokers_up, 1, "{stats:?}");
    Ok(())
}

/// A tokio program's 1,000 concurrent `Client::request`s at the defaults are all answered: the
/// client keeps at most `max_in_flight` (256) under way, each on a connection of its own, so
/// it stays under the broker's 512 connections per address instead of being refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_at_the_defaults_are_all_answered() -> Result<()> {
    let ep = free_endpoint()?;
    let metrics = free_addr()?;
    let _broker = broker(&ep, &["--metrics-listen", &metrics])?;
    let _workers = [echo_worker(&ep)?, echo_worker(&ep)?];
    wait_for_service(&ep, "echo").await?;
    let c = Client::new(ep.as_str(), ClientConfig::default());
    let calls: Vec<_> = (0..1000u32)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let body = vec![Bytes::from(n.to_string())];
                (n, c.request("echo", body).await)
            })
        })
        .collect();
    for call in calls {
        let (n, reply) = call.await?;
        assert_eq!(reply?, [Bytes::from(n.to_string())], "request {n}");
    }
    let page = scrape(&metrics).await?;
    let refused = sample(
        &page,
        r#"majordomo_guard_refused_total{rule="per_address"}"#,
    );
    assert_eq!(refused, Some(0.0), "no connection refused at the door");
    Ok(())
}

/// 40 connections each announce a 2 MiB frame and send 1.5 MiB of it, then nothing: 60 MiB
/// offered against a 16 MiB inbound budget. The broker's RSS stays within its baseline plus
/// the budget, and a legitimate client is served throughout: the stalled peers that hold the
/// budget are closed once it waits (`--guard-stall-timeout`), long before their message
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_frames_hold_no_more_than_the_inbound_budget() -> Result<()> {
    const MIB: usize = 1024 * 1024;
    let ep = free_endpoint()?;
    let broker = broker(
        &ep,
        &[
            "--max-message-size",
            "4194304",
            "--guard-inbound-budget",
            "16MiB",
            "--guard-message-timeout",
            "120s",
        ],
    )?;
    let _w = echo_worker(&ep)?;
    wait_for_service(&ep, "echo").await?;
    let c = Client::new(
        ep.as_str(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let hello = vec![Bytes::from_static(b"hello")];
    assert_eq!(c.request("echo", hello.clone()).await?, hello);
    let baseline = broker.rss_kib()?;
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut peer = RawZmtp::connect(&ep).await?;
        stalled.push(tokio::spawn(async move {
            // Waits while the guard does not read; a closed peer ends it.
            let _ = peer.send_partial_frame(2 * MIB as u64, 3 * MIB / 2).await;
            peer.closed_within(PATIENCE * 6).await
        }));
    }
    let mut most = baseline;
    for i in 0..40 {
        let body = vec![Bytes::from(format!("served {i}"))];
        assert_eq!(c.request("echo", body.clone()).await?, body);
        most = most.max(broker.rss_kib()?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("broker RSS {baseline} KiB before, at most {most} KiB with 40 stalled frames");
    assert!(
        most < baseline + 16 * 1024 + 8 * 1024,
        "RSS grew from {baseline} to {most} KiB"
    );
    for peer in stalled {
        peer.abort();
    }
    Ok(())
}
