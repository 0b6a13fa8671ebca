//! Titanic (9/TSP) through our broker: every status path, a restart on the same store, and the
//! `majordomo titanic` and `call --titanic` commands.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{
    free_endpoint, majordomo_bin, scratch_dir, service_stats, spawn_until_stopped, test_config,
    wait_for_service, wait_for_stats, Proc, RunningBroker, PATIENCE, TEST_HEARTBEAT,
};
use majordomo_client::{Client, ClientConfig};
use majordomo_titanic::store::RedbStore;
use majordomo_titanic::tsp::{Status, Uuid};
use majordomo_titanic::{Titanic, TitanicClient, TitanicClientError, TitanicConfig, TitanicStats};
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use tokio::sync::oneshot;

/// A store file named after `name` in a fresh directory, which goes (with the file) when the
/// returned guard is dropped.
fn store_path(name: &str) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = scratch_dir("titanic")?;
    let path = dir.path().join(format!("{name}.redb"));
    Ok((dir, path))
}

/// Questions about pending requests are held briefly, so that a test asking for a request with
/// no worker hears 300 soon.
fn config() -> TitanicConfig {
    let defaults = TitanicConfig::default();
    defaults
        .worker(defaults.worker.heartbeat(TEST_HEARTBEAT))
        .client(ClientConfig::default().timeout(Duration::from_millis(500)))
        .reply_wait(Duration::from_millis(100))
}

/// Titanic on `path` for the broker at `endpoint`, until the sender fires.
fn spawn_titanic(
    endpoint: &str,
    path: &std::path::Path,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<TitanicStats>)> {
    spawn_titanic_with(endpoint, path, config())
}

/// As [`spawn_titanic`], with `config`.
fn spawn_titanic_with(
    endpoint: &str,
    path: &std::path::Path,
    config: TitanicConfig,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<TitanicStats>)> {
    let titanic = Titanic::new(endpoint, RedbStore::open(path)?, config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        titanic
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("titanic runs")
    });
    Ok((stop, task))
}

fn spawn_echo(endpoint: &str, service: &str) -> oneshot::Sender<()> {
    let worker = Worker::new(
        endpoint,
        service.to_owned(),
        WorkerConfig::default().heartbeat(TEST_HEARTBEAT),
    );
    let echo = handler_fn(|mut body: Vec<Bytes>| async move {
        body.insert(0, Bytes::from_static(b"echoed"));
        Ok(body)
    });
    spawn_until_stopped(|stopped| worker.run(echo, stopped)).0
}

/// A broker, and Titanic for it on the fresh store `store` with `config`, its three services
/// registered, and a client.
struct Setup {
    broker: RunningBroker,
    ep: String,
    path: std::path::PathBuf,
    /// Holds the store's directory.
    _dir: tempfile::TempDir,
    stop: oneshot::Sender<()>,
    titanic: tokio::task::JoinHandle<TitanicStats>,
    client: TitanicClient,
}

impl Setup {
    async fn start(store: &str, config: TitanicConfig) -> Result<Self> {
        let broker = RunningBroker::start(test_config()).await?;
        let ep = broker.endpoint.clone();
        let (dir, path) = store_path(store)?;
        let (stop, titanic) = spawn_titanic_with(&ep, &path, config)?;
        ready(&ep).await?;
        let client = client(&ep);
        Ok(Self {
            broker,
            ep,
            path,
            _dir: dir,
            stop,
            titanic,
            client,
        })
    }
}

fn client(endpoint: &str) -> TitanicClient {
    TitanicClient::new(endpoint, ClientConfig::default().timeout(PATIENCE))
}

async fn ready(endpoint: &str) -> Result<()> {
    for service in ["titanic.request", "titanic.reply", "titanic.close"] {
        wait_for_service(endpoint, service).await?;
    }
    Ok(())
}

fn f(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_path_pending_done_unknown_and_malformed() -> Result<()> {
    let Setup {
        _dir: _store,
        broker: _broker,
        ep,
        stop,
        titanic,
        client: c,
        ..
    } = Setup::start("status", config()).await?;
    let uuid = c.submit("later", vec![f("one"), f("two")]).await?;
    // 300 while no worker serves the service, as often as asked.
    for _ in 0..3 {
        assert_eq!(c.reply(uuid).await?, None);
    }
    let _worker = spawn_echo(&ep, "later");
    let reply = c.wait(uuid, PATIENCE, Duration::from_millis(20)).await?;
    assert_eq!(reply, [f("echoed"), f("one"), f("two")]);
    // "idempotent and MUST NOT delete a reply when successfully delivered".
    assert_eq!(c.reply(uuid).await?, Some(reply));
    c.close(uuid).await?;
    assert!(matches!(
        c.reply(uuid).await,
        Err(TitanicClientError::Status(Status::Unknown))
    ));
    // "MUST return 200 OK if the UUID is not known".
    c.close(Uuid([7; 16])).await?;
    assert!(matches!(
        c.reply(Uuid([7; 16])).await,
        Err(TitanicClientError::Status(Status::Unknown))
    ));
    // Malformed requests get a status, not silence.
    let raw = Client::new(ep.clone(), ClientConfig::default().timeout(PATIENCE));
    let answer = raw
        .request("titanic.request", vec![f("service-only")])
        .await?;
    assert_eq!(Status::parse(&answer[0]), Some(Status::Error));
    for service in ["titanic.reply", "titanic.close"] {
        let answer = raw.request(service, vec![f("not-a-uuid")]).await?;
        assert_eq!(answer, [f("400")], "{service}");
        let answer = raw.request(service, vec![]).await?;
        assert_eq!(answer, [f("400")], "{service}");
    }
    let _ = stop.send(());
    let stats = titanic.await?;
    assert_eq!((stats.accepted, stats.replied, stats.stored), (1, 1, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stored_before_a_restart_are_served_after_it() -> Result<()> {
    let Setup {
        _dir: _store,
        broker: _broker,
        ep,
        path,
        stop,
        titanic,
        client: c,
    } = Setup::start("restart", config()).await?;
    let mut uuids = Vec::new();
    for i in 0..20 {
        uuids.push((i, c.submit("after", vec![f(&format!("r{i}"))]).await?));
    }
    let _ = stop.send(());
    let stats = titanic.await?;
    assert_eq!((stats.accepted, stats.stored), (20, 20));
    // Started again on the same file, with a worker now.
    let (stop, titanic) = spawn_titanic(&ep, &path)?;
    let _worker = spawn_echo(&ep, "after");
    for (i, uuid) in uuids {
        let reply = c.wait(uuid, PATIENCE, Duration::from_millis(20)).await?;
        assert_eq!(reply, [f("echoed"), f(&format!("r{i}"))]);
        c.close(uuid).await?;
    }
    let _ = stop.send(());
    assert_eq!(titanic.await?.stored, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_store_file_is_a_clear_error() -> Result<()> {
    let (_dir, path) = store_path("foreign")?;
    std::fs::write(&path, b"this is not a database ".repeat(100))?;
    let error = RedbStore::open(&path).expect_err("not a redb file");
    assert!(
        error.to_string().contains("cannot open the store"),
        "{error}"
    );
    let ep = free_endpoint()?;
    let out = std::process::Command::new(majordomo_bin()?)
        .args(["titanic", "--connect", &ep, "--store"])
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_titanic_submits_waits_prints_and_closes() -> Result<()> {
    let ep = free_endpoint()?;
    let (_dir, path) = store_path("cli")?;
    let _broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let store = path.to_str().context("utf-8 path")?;
    // No body kept in memory: the request and its reply are read back from the file.
    let _titanic = Proc::spawn(&[
        "titanic",
        "--connect",
        &ep,
        "--store",
        store,
        "--max-body-memory",
        "0",
    ])?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    wait_for_service(&ep, "echo").await?;
    ready(&ep).await?;
    let out = tokio::process::Command::new(majordomo_bin()?)
        .args([
            "call",
            "--connect",
            &ep,
            "--titanic",
            "--no-close",
            "echo",
            "hi",
            "there",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "hi\nthere\n");
    // --no-close printed the UUID; the reply is still there.
    let stderr = String::from_utf8(out.stderr)?;
    let uuid = stderr
        .lines()
        .last()
        .and_then(|l| Uuid::parse(l.as_bytes()));
    let uuid = uuid.context("a UUID on stderr")?;
    assert_eq!(
        client(&ep).reply(uuid).await?,
        Some(vec![f("hi"), f("there")])
    );
    Ok(())
}

/// Kills `proc` with SIGKILL and waits until it is gone.
async fn kill(mut proc: Proc) -> Result<()> {
    proc.signal("KILL")?;
    tokio::time::timeout(PATIENCE, proc.wait_exit()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_titanic_broker_and_workers_loses_no_acknowledged_request() -> Result<()> {
    use std::sync::{Arc, Mutex};
    let ep = free_endpoint()?;
    let (_dir, path) = store_path("crash")?;
    let store = path.to_str().context("utf-8 path")?.to_owned();
    let hb = ["--heartbeat", "100ms"];
    let broker_args = ["broker", "--bind", &ep, hb[0], hb[1]];
    let worker_args = [
        "worker",
        "--connect",
        &ep,
        hb[0],
        hb[1],
        "echo",
        "--service",
        "crashy",
    ];
    let titanic_args = [
        "titanic",
        "--connect",
        &ep,
        "--store",
        &store,
        hb[0],
        hb[1],
        "--timeout",
        "500ms",
    ];
    let mut broker = Proc::spawn(&broker_args)?;
    let mut worker = Proc::spawn(&worker_args)?;
    let mut titanic = Proc::spawn(&titanic_args)?;
    // Acknowledged requests and the body each was submitted with.
    let acked: Arc<Mutex<Vec<(Uuid, Bytes)>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..4 {
        let (acked, mut stopped, ep) = (acked.clone(), stopped.clone(), ep.clone());
        clients.push(tokio::spawn(async move {
            let client = TitanicClient::new(
                ep,
                ClientConfig::default()
                    .timeout(Duration::from_millis(300))
                    .attempts(1),
            );
            for seq in 0.. {
                let body = Bytes::from(format!("client {c} request {seq}"));
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    submitted = client.submit("crashy", vec![body.clone()]) => {
                        // A submit that got no answer may or may not be stored; it was never
                        // acknowledged, so nothing is promised for it.
                        if let Ok(uuid) = submitted {
                            acked.lock().unwrap().push((uuid, body));
                        }
                    }
                }
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().len();
    let mut seed = 0x2545_f491u32;
    for cycle in 0..20 {
        // Kill at a moment picked at random: after 1 to 8 more acknowledgements.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let more = 1 + (seed >> 16) as usize % 8;
        let target = acked_count() + more;
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        while acked_count() < target {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: no progress ({} acknowledged)",
                acked_count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill(titanic).await?;
        if cycle % 5 == 2 {
            kill(worker).await?;
            worker = Proc::spawn(&worker_args)?;
        }
        if cycle == 10 {
            kill(broker).await?;
            broker = Proc::spawn(&broker_args)?;
            broker.wait_until_serving(&ep).await?;
        }
        titanic = Proc::spawn(&titanic_args)?;
    }
    let _ = stop.send(true);
    for c in clients {
        c.await?;
    }
    // The store reopens after the last kill, and every acknowledged request gets its own reply.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "{} acknowledged", acked.len());
    let client = client(&ep);
    for (uuid, body) in &acked {
        let reply = client
            .wait(*uuid, PATIENCE * 3, Duration::from_millis(20))
            .await?;
        assert_eq!(reply, std::slice::from_ref(body), "{uuid}");
    }
    kill(titanic).await?;
    let _ = (worker, broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_ticlient_against_our_titanic_through_our_broker() -> Result<()> {
    let broker = RunningBroker::start(test_config()).await?;
    let ep = broker.endpoint.clone();
    let (_dir, path) = store_path("ticlient")?;
    let (stop, titanic) = spawn_titanic(&ep, &path)?;
    let _worker = spawn_echo(&ep, "echo");
    ready(&ep).await?;
    let mut client = integration_tests::PyPeer::spawn("ticlient.py", &[&ep, "echo", "Hello"])?;
    assert_eq!(client.line().await?, "reply echoed Hello");
    assert_eq!(client.exit_code().await?, 0);
    let _ = stop.send(());
    let stats = titanic.await?;
    assert_eq!((stats.accepted, stats.replied, stats.stored), (1, 1, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_titanic_through_a_libzmq_broker_that_is_not_ours() -> Result<()> {
    let heartbeat = TEST_HEARTBEAT.interval.as_millis().to_string();
    let mut broker = integration_tests::PyPeer::spawn("mdp_broker.py", &[&heartbeat])?;
    let ep = broker.endpoint().await?;
    let (_dir, path) = store_path("libzmq")?;
    let (stop, titanic) = spawn_titanic(&ep, &path)?;
    let _worker = spawn_echo(&ep, "echo");
    ready(&ep).await?;
    wait_for_service(&ep, "echo").await?;
    let c = client(&ep);
    for i in 0..10 {
        let uuid = c
            .submit("echo", vec![f(&format!("via libzmq {i}"))])
            .await?;
        let reply = c.wait(uuid, PATIENCE, Duration::from_millis(20)).await?;
        assert_eq!(reply, [f("echoed"), f(&format!("via libzmq {i}"))]);
        c.close(uuid).await?;
    }
    let _ = stop.send(());
    assert_eq!(titanic.await?.replied, 10);
    broker.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_all_durable_and_counted_in_the_commits() -> Result<()> {
    let Setup {
        _dir: _store,
        broker: _broker,
        stop,
        titanic,
        client: c,
        ..
    } = Setup::start("grouped", config()).await?;
    let submits: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.submit("nobody", vec![f(&format!("{i}"))]).await })
        })
        .collect();
    for submit in submits {
        submit.await??;
    }
    let _ = stop.send(());
    let stats = titanic.await?;
    // No worker: the 64 requests are the only writes, in at most 64 transactions.
    assert_eq!((stats.accepted, stats.writes), (64, 64));
    assert!((1..=64).contains(&stats.commits), "{stats:?}");
    Ok(())
}

/// Long enough that a held question outlives every step of the tests below, and under the
/// clients' timeout ([`PATIENCE`]).
const HOLD: Duration = Duration::from_secs(5);

/// Waits until `n` questions are with Titanic's `titanic.reply` connections.
async fn questions_held(broker: &RunningBroker, n: usize) -> Result<()> {
    wait_for_stats(&broker.handle, "questions held by titanic.reply", |s| {
        service_stats(s, b"titanic.reply").is_some_and(|s| s.busy_workers == n)
    })
    .await?;
    Ok(())
}

/// A question about a request, running.
type Question = tokio::task::JoinHandle<Result<Option<Vec<Bytes>>, TitanicClientError>>;

/// A broker and a Titanic that holds questions for [`HOLD`], one request for `service` (which
/// has no worker) submitted, and one question about it held.
struct HeldQuestion {
    broker: RunningBroker,
    stop: oneshot::Sender<()>,
    titanic: tokio::task::JoinHandle<TitanicStats>,
    client: TitanicClient,
    uuid: Uuid,
    question: Question,
}

impl HeldQuestion {
    async fn start(store: &str, service: &str) -> Result<Self> {
        let Setup {
            _dir: _store,
            broker,
            stop,
            titanic,
            client,
            ..
        } = Setup::start(store, config().reply_wait(HOLD)).await?;
        let uuid = client.submit(service.to_owned(), vec![f("body")]).await?;
        let question = {
            let c = client.clone();
            tokio::spawn(async move { c.reply(uuid).await })
        };
        questions_held(&broker, 1).await?;
        Ok(Self {
            broker,
            stop,
            titanic,
            client,
            uuid,
            question,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.titanic.await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_about_a_pending_request_is_answered_when_its_reply_is_stored() -> Result<()> {
    let mut held = HeldQuestion::start("held", "later").await?;
    let _worker = spawn_echo(&held.broker.endpoint, "later");
    // The one question gets the reply: no 300, no second question.
    let answer = (&mut held.question).await??;
    assert_eq!(answer, Some(vec![f("echoed"), f("body")]));
    held.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_request_answers_its_held_question_unknown() -> Result<()> {
    let mut held = HeldQuestion::start("held-close", "nobody").await?;
    held.client.close(held.uuid).await?;
    // Had the close not reached it, the question would end with 300 (`Ok(None)`) after HOLD.
    let answer = (&mut held.question).await?;
    assert!(
        matches!(answer, Err(TitanicClientError::Status(Status::Unknown))),
        "{answer:?}"
    );
    held.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_held_limit_questions_are_answered_at_once() -> Result<()> {
    // 8 connections: 7 may hold, one stays free.
    let defaults = config();
    let eight = defaults
        .worker(defaults.worker.concurrency(8))
        .reply_wait(HOLD);
    let Setup {
        _dir: _store,
        broker,
        stop,
        titanic,
        client: c,
        ..
    } = Setup::start("held-limit", eight).await?;
    let mut questions = Vec::new();
    for i in 0..7 {
        let uuid = c.submit("nobody", vec![f(&format!("body {i}"))]).await?;
        let c = c.clone();
        questions.push(tokio::spawn(async move { c.reply(uuid).await }));
    }
    questions_held(&broker, 7).await?;
    let eighth = c.submit("nobody", vec![f("body 7")]).await?;
    assert_eq!(c.reply(eighth).await?, None);
    // The seven are still held: the eighth was answered at once, not after a hold of its own.
    questions_held(&broker, 7).await?;
    assert!(questions.iter().all(|q| !q.is_finished()));
    let _ = stop.send(());
    // Stopping answers held questions 300 at once.
    for question in questions {
        assert_eq!(question.await??, None);
    }
    titanic.await?;
    Ok(())
}

/// Titanic, an echo worker and `call --titanic`, each given two brokers (`--connect` twice):
/// with one broker killed, a call still goes through the other, from submit to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_and_its_callers_on_two_brokers_survive_losing_one() -> Result<()> {
    let (a, b) = (free_endpoint()?, free_endpoint()?);
    let (_dir, path) = store_path("two-brokers")?;
    let store = path.to_str().context("utf-8 path")?;
    let doomed = Proc::spawn(&["broker", "--bind", &a])?;
    let _survivor = Proc::spawn(&["broker", "--bind", &b])?;
    let both = ["--connect", a.as_str(), "--connect", b.as_str()];
    let titanic = [
        &["titanic"][..],
        &both,
        &["--store", store, "--timeout", "500ms"],
    ]
    .concat();
    let _titanic = Proc::spawn(&titanic)?;
    let _worker = Proc::spawn(&[&["worker"][..], &both, &["echo"]].concat())?;
    for ep in [&a, &b] {
        wait_for_service(ep, "echo").await?;
        ready(ep).await?;
    }
    let call = |body: &'static str| {
        let args = [
            &["call"][..],
            &both,
            &[
                "--timeout",
                "500ms",
                "--attempts",
                "10",
                "--titanic",
                "echo",
                body,
            ],
        ]
        .concat();
        async move {
            let out = tokio::process::Command::new(majordomo_bin()?)
                .args(args)
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(String::from_utf8(out.stdout)?)
        }
    };
    assert_eq!(call("before").await?, "before\n");
    kill(doomed).await?;
    // Every attempt that lands on the dead broker is retried on the live one; Titanic's own
    // dispatch does the same.
    for body in ["after-1", "after-2", "after-3"] {
        assert_eq!(call(body).await?, format!("{body}\n"));
    }
    Ok(())
}
