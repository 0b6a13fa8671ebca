//! `majordomo titanic` and its store: a damaged store is an error naming the file, never a
//! panic; the store's bytes are bounded (`--max-stored-bytes`), and so is the memory of a
//! server holding many large requests for services nobody serves.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use integration_tests::http::{free_addr, get_when_up, sample};
use integration_tests::{free_endpoint, majordomo_bin, wait_for_service, Proc, PATIENCE};
use majordomo_client::{Client, ClientConfig};
use majordomo_titanic::core::CoreConfig;
use majordomo_titanic::store::{Entry, Op, RedbStore, Store};
use majordomo_titanic::tsp::Uuid;

/// A fresh directory for this test's stores, removed with what it holds when dropped.
fn dir() -> Result<tempfile::TempDir> {
    integration_tests::scratch_dir("titanic-store")
}

/// A store at `path` holding acknowledged requests of a few sizes, closed.
fn good_store(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let store = RedbStore::open(path)?;
    for i in 0..60u8 {
        let size = if i % 5 == 0 { 50_000 } else { 300 };
        let entry = Entry::Pending {
            stored_ms: 1,
            service: Bytes::from_static(b"echo"),
            body: vec![Bytes::from(vec![i; size])],
        };
        store.commit(&[Op::Request(Uuid([i; 16]), entry)])?;
    }
    Ok(())
}

/// Bytes that look like nothing (xorshift).
fn noise(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Runs `majordomo titanic` on `store` and returns how it ended and its stderr; it must end
/// within [`PATIENCE`] (a store that opens would have it serve until stopped).
async fn titanic_on(store: &Path) -> Result<(Option<i32>, String)> {
    let ep = free_endpoint()?;
    let child = tokio::process::Command::new(majordomo_bin()?)
        .args(["titanic", "--connect", &ep, "--store"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("titanic on {} did not exit", store.display()))??;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kinds_of_damaged_store_are_five_clear_errors_and_no_panic() -> Result<()> {
    let dir = dir()?;
    let good = dir.path().join("good.redb");
    good_store(&good)?;
    let bytes = std::fs::read(&good)?;
    let len = bytes.len();
    // A page in use: in the middle of the body of the request stored with 25s.
    let mut page = bytes.clone();
    let body = bytes
        .windows(8192)
        .position(|w| w.iter().all(|b| *b == 25))
        .context("the body of request 25 is in the file")?;
    let at = (body + 4096) / 4096 * 4096;
    page[at..at + 4096].copy_from_slice(&noise(7, 4096));
    let mut header = bytes.clone();
    header[16..512].copy_from_slice(&noise(11, 496));
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "empty",
            vec![],
            "is empty: it is not a Titanic store; remove it to start a new store",
        ),
        ("half", bytes[..len / 2].to_vec(), "is damaged"),
        ("page", page, "is damaged"),
        ("header", header, "is damaged"),
        ("random", noise(3, len), "is not a redb database"),
    ];
    for (name, content, problem) in cases {
        let path = dir.path().join(format!("{name}.redb"));
        std::fs::write(&path, &content)?;
        let (code, stderr) = titanic_on(&path).await?;
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: the file is named: {stderr}"
        );
        assert!(stderr.contains(problem), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        if name == "empty" {
            assert_eq!(
                std::fs::metadata(&path)?.len(),
                0,
                "an empty file is left as it is"
            );
        }
    }
    // The undamaged store opens and holds what was stored.
    let store = RedbStore::open(&good)?;
    assert_eq!(store.len()?, 60);
    drop(store);
    Ok(())
}

fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

/// A broker and `majordomo titanic` with `titanic_args`, serving.
async fn broker_and_titanic(store: &str, titanic_args: &[&str]) -> Result<(String, Proc, Proc)> {
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep])?;
    broker.wait_until_serving(&ep).await?;
    let mut args = vec!["titanic", "--connect", &ep, "--store", store];
    args.extend_from_slice(titanic_args);
    let titanic = Proc::spawn(&args)?;
    for service in ["titanic.request", "titanic.reply", "titanic.close"] {
        wait_for_service(&ep, service).await?;
    }
    Ok((ep, broker, titanic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stored_bytes_titanic_request_answers_500_store_full() -> Result<()> {
    let scratch = dir()?;
    let path = scratch.path().join("bytes.redb");
    let _ = std::fs::remove_file(&path);
    let store = path.to_str().context("utf-8 path")?;
    // Each 30,000-byte request costs 41 KB in the file: two fit in 100 KiB, not three.
    let body = vec![7u8; 30_000];
    let cost = majordomo_titanic::store::stored_cost_of(
        Some(&Bytes::from_static(b"nobody")),
        &frames(&[&body]),
    );
    assert!(2 * cost <= 100 << 10 && 3 * cost > 100 << 10, "{cost}");
    let metrics = free_addr()?;
    let (ep, _broker, _titanic) = broker_and_titanic(
        store,
        &["--max-stored-bytes", "100KiB", "--metrics-listen", &metrics],
    )
    .await?;
    let client = Client::new(&ep, ClientConfig::default().timeout(PATIENCE));
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = client
            .request("titanic.request", frames(&[b"nobody", &body]))
            .await?;
        answers.push(answer[0].clone());
    }
    assert_eq!(
        answers[..2],
        [Bytes::from_static(b"200"), Bytes::from_static(b"200")]
    );
    assert_eq!(answers[2], Bytes::from_static(b"500 store full"));
    // A small one still fits.
    let answer = client
        .request("titanic.request", frames(&[b"nobody", b"small"]))
        .await?;
    assert_eq!(answer[0], Bytes::from_static(b"200"), "{answer:?}");
    // The refusal is counted where an operator reads it; the two that fit, and the small one,
    // as accepted.
    let counted = |page: &str| {
        (
            sample(page, "majordomo_titanic_accepted_total"),
            sample(page, "majordomo_titanic_refused_total"),
        )
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, page) = get_when_up(&metrics, "/metrics").await?;
        assert_eq!(status, 200, "{page}");
        if counted(&page) == (Some(3.0), Some(1.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 accepted and 1 refused, not within {PATIENCE:?}: {:?}",
            counted(&page)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `count` requests of `mib` MiB for `services` services nobody serves; Titanic's RSS stays
/// under what its configuration bounds. `TITANIC_MEMORY=60x15x30` runs the full size (60
/// requests of 15 MiB over 30 services); the default (32 of 8 MiB over 16 services) keeps the
/// test fast, and is past the bound when every request is dispatched at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_requests_for_unserved_services_keep_titanic_memory_bounded() -> Result<()> {
    let size = std::env::var("TITANIC_MEMORY").unwrap_or_else(|_| "32x8x16".to_owned());
    let [count, mib, services]: [usize; 3] = size
        .split('x')
        .map(str::parse)
        .collect::<Result<Vec<usize>, _>>()?
        .try_into()
        .map_err(|_| anyhow!("TITANIC_MEMORY is COUNTxMIBxSERVICES"))?;
    let scratch = dir()?;
    let path = scratch.path().join("memory.redb");
    let _ = std::fs::remove_file(&path);
    let store = path.to_str().context("utf-8 path")?;
    // One attempt of 300 ms: each request for a service nobody serves stays in flight as long
    // as the test submits, unless the bound of bodies being dispatched holds it back.
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep])?;
    broker.wait_until_serving(&ep).await?;
    // At its defaults: the store's cache, the bounds of bodies, the 64 connections per service
    // (a connection that carried a large request is replaced by a new one, its buffers freed),
    // and glibc's mmap threshold as `majordomo titanic` sets it (without it, glibc's heaps
    // kept freed bodies: RSS varied from 330 to 420 MB between runs).
    let child = tokio::process::Command::new(majordomo_bin()?)
        .args(["titanic", "--connect", &ep, "--store", store])
        .args(["--timeout", "300ms", "--attempts", "1"])
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .env_remove("GLIBC_TUNABLES")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("titanic runs")?;
    let rss_mib = || -> Result<u64> { Ok(majordomo_tools::child::memory(pid)?.rss_kib / 1024) };
    for service in ["titanic.request", "titanic.reply", "titanic.close"] {
        wait_for_service(&ep, service).await?;
    }
    let baseline = rss_mib()?;
    // What the configuration bounds: the store's cache; the bodies kept in memory, those being
    // dispatched (one may pass the bound) and their copies in the dispatching sockets (each at
    // most `max_body_bytes`); a body being received from each submitter, one committed and
    // one read back; and an eighth of that in slack, for the runtime and the allocator. No
    // connection keeps a large message's buffers once it is answered.
    let submitters = 4;
    let body_bound = CoreConfig::default().max_body_bytes as u64 >> 20;
    let cache_mib = RedbStore::DEFAULT_CACHE as u64 >> 20;
    let held = cache_mib + 3 * body_bound + (submitters as u64 + 2) * mib as u64;
    let bound = baseline + held + held / 8;
    let body = Bytes::from(vec![0x5a; mib << 20]);
    let mut peak = 0;
    let (tx, mut rx) = tokio::sync::mpsc::channel(count);
    for s in 0..submitters {
        let (ep, body, tx) = (ep.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            let client = Client::new(&ep, ClientConfig::default().timeout(PATIENCE * 3));
            for i in (s..count).step_by(submitters) {
                let service = Bytes::from(format!("nobody-{}", i % services));
                let answer = client
                    .request("titanic.request", vec![service, body.clone()])
                    .await
                    .map(|a| a[0].clone());
                let _ = tx.send(answer).await;
            }
        });
    }
    drop(tx);
    let mut accepted = 0;
    while let Some(answer) = rx.recv().await {
        assert_eq!(answer?, Bytes::from_static(b"200"));
        accepted += 1;
        peak = peak.max(rss_mib()?);
    }
    assert_eq!(accepted, count);
    // While the last ones are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(rss_mib()?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{count} x {mib} MiB over {services} services: Titanic RSS {baseline} MiB at start, \
         peak {peak} MiB, bound {bound} MiB"
    );
    assert!(peak < bound, "peak {peak} MiB, bound {bound} MiB");
    Ok(())
}
