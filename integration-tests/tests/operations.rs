//! What an operator reads from a running broker: Prometheus metrics and the health probe over
//! HTTP, against the `majordomo` binary.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::http::{free_addr, get, get_when_up, sample};
use integration_tests::{free_endpoint, wait_for_service, Proc, PATIENCE};
use majordomo_client::{Client, ClientConfig};

/// Scrapes until `done` holds for the page, or fails after [`PATIENCE`] with the last page.
async fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, page) = get(addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        if done(&page) {
            return Ok(page);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic_and_a_purged_worker() -> Result<()> {
    let ep = free_endpoint()?;
    let metrics = free_addr()?;
    let _broker = Proc::spawn(&[
        "broker",
        "--bind",
        &ep,
        "--heartbeat",
        "100ms",
        "--metrics-listen",
        &metrics,
    ])?;
    let worker = Proc::spawn(&["worker", "--connect", &ep, "--heartbeat", "100ms", "echo"])?;
    wait_for_service(&ep, "echo").await?;
    let (status, before) = get_when_up(&metrics, "/metrics").await?;
    assert_eq!(status, 200);
    // Every family on the page has its help and type, the build is named, and the counters
    // are there from zero.
    let families: Vec<&str> = before
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 20, "{before}");
    for family in &families {
        assert!(
            before.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{before}"
        );
    }
    assert_eq!(
        sample(
            &before,
            &format!(
                "majordomo_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{before}"
    );
    assert_eq!(sample(&before, "majordomo_unauthorized_total"), Some(0.0));
    // The labelled counters too: every drop reason and protocol error kind, before any.
    for series in [
        "majordomo_dropped_requests_total{reason=\"no_worker\"}",
        "majordomo_dropped_requests_total{reason=\"unauthorized\"}",
        "majordomo_protocol_errors_total{kind=\"unknown_header\"}",
        "majordomo_protocol_errors_total{kind=\"heartbeat_mismatch\"}",
    ] {
        assert_eq!(sample(&before, series), Some(0.0), "{series}:\n{before}");
    }
    assert!(
        !before.contains("reason=\"not_active\""),
        "a broker not in a pair drops nothing as passive"
    );
    let requests = sample(&before, "majordomo_requests_total").context("requests counter")?;
    let replies = sample(&before, "majordomo_replies_total").context("replies counter")?;
    assert_eq!(sample(&before, "majordomo_workers"), Some(1.0), "{before}");

    let client = Client::new(ep.clone(), ClientConfig::default());
    for i in 0..25 {
        let body = vec![Bytes::from(format!("n{i}"))];
        assert_eq!(client.request("echo", body.clone()).await?, body);
    }
    let (_, after) = get(&metrics, "/metrics").await?;
    assert_eq!(
        sample(&after, "majordomo_requests_total"),
        Some(requests + 25.0)
    );
    assert_eq!(
        sample(&after, "majordomo_replies_total"),
        Some(replies + 25.0)
    );
    let latencies = sample(
        &after,
        "majordomo_request_duration_seconds_count{service=\"echo\"}",
    );
    assert!(latencies >= Some(25.0), "{after}");
    assert_eq!(
        sample(&after, "majordomo_service_idle_workers{service=\"echo\"}"),
        Some(1.0)
    );
    assert!(
        sample(&after, "process_resident_memory_bytes") > Some(0.0),
        "{after}"
    );

    // A frozen worker is purged after three silent heartbeats: the counter moves by one.
    let purged = sample(&after, "majordomo_purged_workers_total").context("purged counter")?;
    worker.signal("STOP")?;
    let page = scrape_until(&metrics, "the frozen worker purged", |page| {
        sample(page, "majordomo_purged_workers_total") == Some(purged + 1.0)
    })
    .await?;
    assert_eq!(sample(&page, "majordomo_workers"), Some(0.0), "{page}");
    worker.signal("CONT")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_while_serving_and_503_while_draining() -> Result<()> {
    let ep = free_endpoint()?;
    let metrics = free_addr()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep, "--metrics-listen", &metrics])?;
    let _worker = Proc::spawn(&[
        "worker",
        "--connect",
        &ep,
        "exec",
        "slow",
        "--",
        "sh",
        "-c",
        "sleep 1; cat",
    ])?;
    wait_for_service(&ep, "slow").await?;
    assert_eq!(
        get_when_up(&metrics, "/healthz").await?,
        (200, "ok\n".to_owned())
    );
    assert_eq!(get(&metrics, "/nothing").await?.0, 404);

    let client = Client::new(
        ep.clone(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let in_flight =
        tokio::spawn(async move { client.request("slow", vec![Bytes::from_static(b"x")]).await });
    scrape_until(&metrics, "the request with the worker", |page| {
        sample(page, "majordomo_in_flight") == Some(1.0)
    })
    .await?;
    broker.signal("TERM")?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let draining = loop {
        let answer = get(&metrics, "/healthz").await?;
        if answer.0 == 503 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(draining, (503, "draining\n".to_owned()));
    assert_eq!(in_flight.await??, [Bytes::from_static(b"x")]);
    assert!(broker.wait_exit().await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pirate_queue_serves_metrics_and_health_too() -> Result<()> {
    use zeromq::{ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
    let (front, back, metrics) = (free_endpoint()?, free_endpoint()?, free_addr()?);
    let _queue = Proc::spawn(&[
        "spqueue",
        "--frontend",
        &front,
        "--backend",
        &back,
        "--metrics-listen",
        &metrics,
    ])?;
    assert_eq!(
        get_when_up(&metrics, "/healthz").await?,
        (200, "ok\n".to_owned())
    );
    // A Simple Pirate worker: a REQ socket that says READY (0x01), then echoes.
    let worker = tokio::spawn(async move {
        let mut socket = ReqSocket::new();
        tokio::time::timeout(PATIENCE, socket.connect(&back)).await??;
        socket.send(ZmqMessage::from(vec![0x01u8])).await?;
        loop {
            let request = socket.recv().await?;
            socket.send(request).await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    scrape_until(&metrics, "the worker registered", |page| {
        sample(page, "majordomo_workers") == Some(1.0)
    })
    .await?;
    let mut client = majordomo_pirate::LazyPirate::new(
        front.clone(),
        majordomo_pirate::LazyPirateConfig::default().timeout(PATIENCE),
    );
    for i in 0..5 {
        let body = vec![Bytes::from(format!("q{i}"))];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    let page = scrape_until(&metrics, "five replies counted", |page| {
        sample(page, "majordomo_replies_total") == Some(5.0)
    })
    .await?;
    assert_eq!(
        sample(&page, "majordomo_requests_total"),
        Some(5.0),
        "{page}"
    );
    assert!(
        sample(&page, "majordomo_guard_connections_total") >= Some(2.0),
        "{page}"
    );
    worker.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_services_keep_status_and_metrics_small_and_memory_within_the_count() -> Result<()> {
    const SERVICES: usize = 20_000;
    let ep = free_endpoint()?;
    let metrics = free_addr()?;
    let mut broker = Proc::spawn(&[
        "broker",
        "--bind",
        &ep,
        "--request-expiry",
        "300s",
        "--metrics-listen",
        &metrics,
    ])?;
    broker.wait_until_serving(&ep).await?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    wait_for_service(&ep, "echo").await?;
    get_when_up(&metrics, "/metrics").await?;
    let baseline = broker.rss_kib()?;
    // One request each to SERVICES names nobody serves: each name is a service, held until its
    // request expires.
    let mut peer = integration_tests::RawPeer::connect(&ep).await?;
    for i in 0..SERVICES {
        let service = format!("svc{i:06}");
        peer.send(integration_tests::frames(&[
            b"",
            b"MDPC01",
            service.as_bytes(),
            b"x",
        ]))
        .await?;
    }
    let stats = integration_tests::wait_for_mmi_stats(&ep, "every service known", |s| {
        s.services > SERVICES
    })
    .await?;
    let grown = broker.rss_kib()?.saturating_sub(baseline) * 1024;
    let counted = (stats.queued_bytes + stats.service_bytes) as u64;
    println!(
        "{SERVICES} services: RSS grew {grown} bytes ({} a service), counted {counted} ({} a service)",
        grown / SERVICES as u64,
        counted / SERVICES as u64
    );
    // What the bound counts covers what they cost (with 2 MiB for the allocator's rounding).
    assert!(
        grown <= counted + 2 * 1024 * 1024,
        "RSS grew {grown} bytes for {counted} counted"
    );
    // mmi.stats stays small: the busiest, and a count of the rest.
    assert_eq!(stats.per_service.len(), 100);
    assert_eq!(stats.services_omitted, stats.services - 100);
    assert!(stats.per_service.iter().any(|s| s.name.as_ref() == b"echo"));
    let client = Client::new(ep.clone(), ClientConfig::default());
    let reply = client.request("mmi.stats", vec![Bytes::new()]).await?;
    assert!(
        reply[1].len() < 64 * 1024,
        "mmi.stats is {} bytes",
        reply[1].len()
    );
    // A page, by prefix.
    let page = client
        .request(
            "mmi.stats",
            vec![Bytes::from_static(b"prefix=svc0123 limit=5")],
        )
        .await?;
    let page: serde_json::Value = serde_json::from_slice(&page[1])?;
    let names: Vec<&str> = page["per_service"]
        .as_array()
        .context("per_service")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "svc012300",
            "svc012301",
            "svc012302",
            "svc012303",
            "svc012304"
        ]
    );
    // `majordomo status` answers, with a line per listed service and what it left out.
    let status = tokio::process::Command::new(integration_tests::majordomo_bin()?)
        .args(["status", "--connect", &ep])
        .output()
        .await?;
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8(status.stdout)?;
    assert!(text.lines().count() < 110, "{text}");
    assert!(text.contains("more services not listed"), "{text}");
    // /metrics stays small.
    let (code, page) = get(&metrics, "/metrics").await?;
    assert_eq!(code, 200);
    println!("/metrics: {} bytes", page.len());
    assert!(page.len() < 1024 * 1024, "/metrics is {} bytes", page.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paranoid_pirate_queue_holds_no_more_than_its_byte_bound() -> Result<()> {
    queue_holds_no_more_than_its_byte_bound("ppqueue").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_pirate_queue_holds_no_more_than_its_byte_bound() -> Result<()> {
    queue_holds_no_more_than_its_byte_bound("spqueue").await
}

/// 200 requests of 1 MiB to a `kind` queue with no worker and a 32 MiB bound: the first fit,
/// the rest are dropped, and the queue's RSS grows by less than the bound.
async fn queue_holds_no_more_than_its_byte_bound(kind: &str) -> Result<()> {
    const BOUND_MIB: u64 = 32;
    const SENT: usize = 200;
    let (front, back, metrics) = (free_endpoint()?, free_endpoint()?, free_addr()?);
    let queue = Proc::spawn(&[
        kind,
        "--frontend",
        &front,
        "--backend",
        &back,
        "--max-queued-bytes",
        &format!("{BOUND_MIB}MiB"),
        "--request-expiry",
        "300s",
        "--metrics-listen",
        &metrics,
    ])?;
    get_when_up(&metrics, "/healthz").await?;
    let baseline = queue.rss_kib()?;
    let mut peer = integration_tests::RawPeer::connect(&front).await?;
    let body = vec![7u8; 1024 * 1024];
    for _ in 0..SENT {
        peer.send(integration_tests::frames(&[b"", &body])).await?;
    }
    let page = scrape_until(&metrics, "every request read", |page| {
        sample(page, "majordomo_requests_total") == Some(SENT as f64)
    })
    .await?;
    let queued = sample(&page, "majordomo_queued").context("queued")?;
    let queued_bytes = sample(&page, "majordomo_queued_bytes").context("queued bytes")?;
    let rejected = sample(&page, "majordomo_rejected_total").context("rejected")?;
    assert!(queued_bytes <= (BOUND_MIB << 20) as f64, "{page}");
    assert_eq!(queued + rejected, SENT as f64, "{page}");
    assert!(rejected >= (SENT as u64 - BOUND_MIB) as f64, "{page}");
    let grown = queue.rss_kib()?.saturating_sub(baseline);
    println!("{kind}: {queued} requests ({queued_bytes} bytes) queued, RSS grew {grown} KiB");
    // Each 1 MiB frame counts the 64 KiB zmq.rs reserves after it, so what the queue holds
    // stays under its bound; the transport's buffers of the messages being read come on top,
    // whatever the bound: about four copies of a message (the guard's frame, its write to
    // zmq.rs, zmq.rs's read buffer and what it reserves past it) for the message being read
    // and the one before it. Measured with both cores busy: 1.6 to 5.5 MiB over the queued.
    assert!(
        grown < (BOUND_MIB + 8) * 1024,
        "RSS grew {grown} KiB with a {BOUND_MIB} MiB bound"
    );
    Ok(())
}
