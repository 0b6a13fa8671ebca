//! CURVE (RFC 26) through the front end, against libzmq's own implementation: pyzmq clients and
//! workers with CURVE keys through our broker, refusals counted by rule, and the access rules
//! keeping a worker with the wrong key from serving a service.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{service_workers, test_config, PyPeer as Py, RunningBroker, PATIENCE};
use majordomo_broker::{
    AccessRule, AccessRules, Broker, BrokerConfig, ClientFilter, CurveKeyPair, CurveSecurity,
    GuardConfig, GuardStatsHandle, Pattern, SharedAccess,
};
use majordomo_zmtp::Rule;

const HEARTBEAT_MS: &str = "250";

/// A broker on loopback serving CURVE only, with `server`'s keys, the client keys `allowed`
/// (`None`: any), and `config`.
async fn curve_broker(
    server: &CurveKeyPair,
    allowed: Option<HashSet<majordomo_broker::CurvePublicKey>>,
    config: BrokerConfig,
) -> Result<(RunningBroker, GuardStatsHandle)> {
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(config)
        .guard(curve_guard(GuardConfig::default(), server, allowed))
        .build()
        .await?;
    let guards = broker.guards().to_vec();
    Ok((RunningBroker::run(broker), guards[0].clone()))
}

/// `guard` serving CURVE only, with `server`'s keys and the client keys `allowed` (`None`: any).
fn curve_guard(
    guard: GuardConfig,
    server: &CurveKeyPair,
    allowed: Option<HashSet<majordomo_broker::CurvePublicKey>>,
) -> GuardConfig {
    guard.curve(CurveSecurity {
        keys: std::sync::Arc::new(server.clone()),
        clients: ClientFilter::new(allowed),
        allow_null: false,
    })
}

/// The environment that gives a Python peer CURVE: the server's key, and the peer's own pair
/// (an ephemeral one for `None`).
fn curve_env(server: &CurveKeyPair, own: Option<&CurveKeyPair>) -> Vec<(&'static str, String)> {
    let mut env = vec![("MDP_CURVE_SERVER_KEY", server.public().to_z85())];
    if let Some(own) = own {
        env.push(("MDP_CURVE_PUBLIC", own.public().to_z85()));
        env.push(("MDP_CURVE_SECRET", own.secret_z85()));
    }
    env
}

fn spawn(script: &str, args: &[&str], env: &[(&'static str, String)]) -> Result<Py> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Py::spawn_env(script, args, &env)
}

/// Polls `guard` until `rule` has been counted `at_least` times.
async fn wait_for_refusals(guard: &GuardStatsHandle, rule: Rule, at_least: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while guard.stats().count(rule) < at_least {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{rule} counted {} times, not {at_least}",
            guard.stats().count(rule)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_curve_client_and_worker_are_served_and_wrong_or_unlisted_keys_get_nothing(
) -> Result<()> {
    let server = CurveKeyPair::generate();
    let (client, worker) = (CurveKeyPair::generate(), CurveKeyPair::generate());
    let allowed = HashSet::from([client.public(), worker.public()]);
    let (broker, guard) = curve_broker(&server, Some(allowed), test_config()).await?;

    let mut py_worker = spawn(
        "mdp_dealer_worker.py",
        &[&broker.endpoint, "pyecho", HEARTBEAT_MS],
        &curve_env(&server, Some(&worker)),
    )?;
    assert_eq!(py_worker.line().await?, "ready");
    broker
        .wait_until("the CURVE worker registered", |s| {
            service_workers(s, b"pyecho") == 1
        })
        .await?;
    let mut py_client = spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "pyecho", "one", "two"],
        &curve_env(&server, Some(&client)),
    )?;
    assert_eq!(py_client.line().await?, "[\"py:one\"]");
    assert_eq!(py_client.line().await?, "[\"py:two\"]");
    assert_eq!(py_client.exit_code().await?, 0);

    // The wrong server key: HELLO's box does not open.
    let mut wrong = spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "pyecho", "x"],
        &curve_env(&CurveKeyPair::generate(), Some(&client)),
    )?;
    wait_for_refusals(&guard, Rule::Curve, 1).await?;
    wrong.kill().await?;
    // A key that is not listed: refused with ERROR after INITIATE.
    let mut unlisted = spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "pyecho", "x"],
        &curve_env(&server, None),
    )?;
    wait_for_refusals(&guard, Rule::Unauthorized, 1).await?;
    unlisted.kill().await?;
    // A NULL peer on a CURVE endpoint.
    let mut null = Py::spawn("mdp_req_client.py", &[&broker.endpoint, "pyecho", "x"])?;
    wait_for_refusals(&guard, Rule::Greeting, 1).await?;
    null.kill().await?;

    let stats = broker.stop().await?;
    assert_eq!(py_worker.line().await?, "disconnected");
    assert_eq!(stats.replies, 2, "only the admitted client was answered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_key_may_not_serve_a_service_never_receives_its_requests() -> Result<()> {
    let server = CurveKeyPair::generate();
    let (client, worker, rogue) = (
        CurveKeyPair::generate(),
        CurveKeyPair::generate(),
        CurveKeyPair::generate(),
    );
    let rules = AccessRules::new(vec![
        AccessRule {
            keys: Some(HashSet::from([*client.public().as_bytes()])),
            call: vec![Pattern::parse("echo")],
            serve: vec![],
        },
        AccessRule {
            keys: Some(HashSet::from([*worker.public().as_bytes()])),
            call: vec![],
            serve: vec![Pattern::parse("ech*")],
        },
        // The rogue may call, not serve.
        AccessRule {
            keys: Some(HashSet::from([*rogue.public().as_bytes()])),
            call: vec![Pattern::parse("echo")],
            serve: vec![],
        },
    ]);
    let config = test_config().access(SharedAccess::new(Some(rules)));
    let (broker, _guard) = curve_broker(&server, None, config).await?;

    // The rogue registers first, so that it would be the first idle worker.
    let mut rogue_worker = spawn(
        "mdp_dealer_worker.py",
        &[&broker.endpoint, "echo", HEARTBEAT_MS],
        &curve_env(&server, Some(&rogue)),
    )?;
    assert_eq!(rogue_worker.line().await?, "ready");
    assert_eq!(
        rogue_worker.line().await?,
        "disconnected",
        "its READY is answered with DISCONNECT"
    );
    let mut good = spawn(
        "mdp_dealer_worker.py",
        &[&broker.endpoint, "echo", HEARTBEAT_MS],
        &curve_env(&server, Some(&worker)),
    )?;
    assert_eq!(good.line().await?, "ready");
    broker
        .wait_until("the allowed worker registered", |s| {
            service_workers(s, b"echo") == 1
        })
        .await?;
    let bodies: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let mut args = vec![broker.endpoint.as_str(), "echo"];
    args.extend(bodies.iter().map(String::as_str));
    let mut py_client = spawn(
        "mdp_req_client.py",
        &args,
        &curve_env(&server, Some(&client)),
    )?;
    for body in &bodies {
        assert_eq!(py_client.line().await?, format!("[\"py:{body}\"]"));
    }
    assert_eq!(py_client.exit_code().await?, 0);
    // The worker's key may not call: its request is dropped and counted.
    let mut worker_calling = spawn(
        "mdp_req_client.py",
        &[&broker.endpoint, "echo", "x"],
        &curve_env(&server, Some(&worker)),
    )?;
    let stats = broker
        .wait_until("the worker's request refused", |s| s.unauthorized >= 2)
        .await?;
    worker_calling.kill().await?;
    assert_eq!(stats.replies, 10);
    assert_eq!(service_workers(&stats, b"echo"), 1);
    broker.stop().await?;
    Ok(())
}

/// The Z85 public key on the line `public-key = "..."` of a certificate.
fn public_key_in(certificate: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(certificate)?;
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("public-key = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| anyhow::anyhow!("no public-key in {}", certificate.display()))?;
    Ok(key.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_curve_with_keygen_certificates_and_sighup_reloads_the_client_list(
) -> Result<()> {
    use integration_tests::http::{free_addr, get, sample};
    use integration_tests::{free_endpoint, majordomo_bin, Proc};

    let scratch = integration_tests::scratch_dir("curve-cli")?;
    let dir = scratch.path();
    for name in ["server", "client", "worker"] {
        let out = std::process::Command::new(majordomo_bin()?)
            .args(["keygen", "--force"])
            .arg(dir.join(name))
            .output()?;
        anyhow::ensure!(out.status.success(), "keygen: {out:?}");
        let printed = String::from_utf8(out.stdout)?;
        assert_eq!(printed.trim(), public_key_in(&dir.join(name))?);
    }
    let load = |name: &str| CurveKeyPair::load(&dir.join(format!("{name}_secret")));
    let (server, client, worker) = (load("server")?, load("client")?, load("worker")?);
    // At first only the worker's key is listed.
    let clients = dir.join("clients");
    std::fs::write(&clients, format!("# allowed\n{}\n", worker.public()))?;
    let (ep, metrics) = (free_endpoint()?, free_addr()?);
    let server_file = dir.join("server_secret");
    let mut broker = Proc::spawn(&[
        "broker",
        "--bind",
        &ep,
        "--metrics-listen",
        &metrics,
        "--curve-secret-key-file",
        server_file.to_str().unwrap_or_default(),
        "--curve-clients",
        clients.to_str().unwrap_or_default(),
    ])?;
    let mut py_worker = spawn(
        "mdp_dealer_worker.py",
        &[&ep, "pyecho", "1000"],
        &curve_env(&server, Some(&worker)),
    )?;
    assert_eq!(py_worker.line().await?, "ready");

    let scrape = |name: &'static str| {
        let metrics = metrics.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                if let Ok((200, page)) = get(&metrics, "/metrics").await {
                    if let Some(value) = sample(&page, name) {
                        return Ok::<f64, anyhow::Error>(value);
                    }
                }
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "no {name}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let unauthorized = "majordomo_guard_refused_total{rule=\"unauthorized\"}";
    let mut refused = spawn(
        "mdp_req_client.py",
        &[&ep, "pyecho", "x"],
        &curve_env(&server, Some(&client)),
    )?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while scrape(unauthorized).await? < 1.0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "client not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused.kill().await?;

    // The client's key is added and the broker told; the worker's connection stays.
    std::fs::write(
        &clients,
        format!("{}\n{}\n", worker.public(), client.public()),
    )?;
    broker.signal("HUP")?;
    let reloaded = "majordomo_reloads_total{result=\"ok\"}";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while scrape(reloaded).await.unwrap_or(0.0) < 1.0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no reload counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admitted = spawn(
        "mdp_req_client.py",
        &[&ep, "pyecho", "after HUP"],
        &curve_env(&server, Some(&client)),
    )?;
    assert_eq!(admitted.line().await?, "[\"py:after HUP\"]");
    assert_eq!(admitted.exit_code().await?, 0);
    assert!(!broker.has_exited()?);
    Ok(())
}

/// A connector to `endpoint` with CURVE, to the server holding `server`, as `keys`.
fn curve_connector(
    endpoint: &str,
    server: &CurveKeyPair,
    keys: &CurveKeyPair,
) -> Result<majordomo_rt::transport::DealerConnector> {
    Ok(majordomo_rt::transport::DealerConnector::curve(
        endpoint,
        server.public(),
        std::sync::Arc::new(keys.clone()),
    )?)
}

/// Our worker serving `echo` through `worker`, until the returned sender is dropped or fired.
fn our_echo_worker(
    worker: majordomo_rt::transport::DealerConnector,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), majordomo_worker::WorkerError>>,
) {
    use majordomo_worker::{handler_fn, Worker, WorkerConfig};
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        worker,
        "echo",
        WorkerConfig::default()
            .heartbeat(integration_tests::TEST_HEARTBEAT)
            .concurrency(4),
    );
    let task = tokio::spawn(
        worker.run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = stopped.await;
        }),
    );
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_mux_client_and_worker_speak_curve_to_our_broker_under_its_rules() -> Result<()>
{
    use bytes::Bytes;
    use majordomo_client::{Client, ClientConfig, MuxClient};

    let server = CurveKeyPair::generate();
    let (client_keys, worker_keys) = (CurveKeyPair::generate(), CurveKeyPair::generate());
    let rules = AccessRules::new(vec![
        AccessRule {
            keys: Some(HashSet::from([*client_keys.public().as_bytes()])),
            call: vec![Pattern::parse("echo"), Pattern::parse("mmi.*")],
            serve: vec![],
        },
        AccessRule {
            keys: Some(HashSet::from([*worker_keys.public().as_bytes()])),
            call: vec![],
            serve: vec![Pattern::parse("echo")],
        },
    ]);
    let config = test_config().access(SharedAccess::new(Some(rules)));
    let allowed = HashSet::from([client_keys.public(), worker_keys.public()]);
    let (broker, guard) = curve_broker(&server, Some(allowed), config).await?;
    let (stop, task) = our_echo_worker(curve_connector(&broker.endpoint, &server, &worker_keys)?);
    broker
        .wait_until("our CURVE worker registered", |s| {
            service_workers(s, b"echo") == 4
        })
        .await?;
    let connector = curve_connector(&broker.endpoint, &server, &client_keys)?;
    let client = Client::with_connector(connector.clone(), ClientConfig::default());
    for i in 0..20 {
        let body = Bytes::from(format!("sealed {i}"));
        assert_eq!(client.request("echo", vec![body.clone()]).await?, [body]);
    }
    // Large frames both ways, through the boxes.
    let big = Bytes::from(vec![0x5a; 3 * 1024 * 1024]);
    assert_eq!(client.request("echo", vec![big.clone()]).await?, [big]);
    // Many requests in flight on one CURVE connection.
    let mux = MuxClient::with_connector(connector, ClientConfig::default());
    let calls = (0..500).map(|i| {
        let mux = mux.clone();
        async move {
            let body = Bytes::from(format!("mux {i}"));
            let reply = mux.request("echo", vec![body.clone()]).await?;
            anyhow::ensure!(reply == [body], "reply {i} mismatched");
            Ok::<(), anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(calls).await {
        result?;
    }
    // The asynchronous client, pipelining on one CURVE connection.
    let mut pipelined = majordomo_client::AsyncClient::with_connector(
        &curve_connector(&broker.endpoint, &server, &client_keys)?,
        ClientConfig::default(),
    )
    .await?;
    for i in 0..50 {
        pipelined
            .send("echo", vec![Bytes::from(format!("pipelined {i}"))])
            .await?;
    }
    // Four workers answer: replies come in the order they are done.
    let mut replies = Vec::new();
    for _ in 0..50 {
        replies.extend(pipelined.recv().await?.body);
    }
    replies.sort();
    let mut sent: Vec<Bytes> = (0..50)
        .map(|i| Bytes::from(format!("pipelined {i}")))
        .collect();
    sent.sort();
    assert_eq!(replies, sent);
    let stats = broker.stats().await?;
    assert_eq!(stats.unauthorized, 0);
    assert_eq!(guard.stats().count(Rule::Curve), 0);
    let _ = stop.send(());
    task.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_and_worker_speak_curve_to_a_libzmq_broker() -> Result<()> {
    use bytes::Bytes;
    use majordomo_client::{Client, ClientConfig};

    let server = CurveKeyPair::generate();
    let env = [("MDP_CURVE_SERVER_SECRET", server.secret_z85())];
    let mut py_broker = spawn(
        "mdp_broker.py",
        &[&integration_tests::TEST_HEARTBEAT
            .interval
            .as_millis()
            .to_string()],
        &env,
    )?;
    let endpoint = py_broker.endpoint().await?;
    let (stop, task) = our_echo_worker(curve_connector(
        &endpoint,
        &server,
        &CurveKeyPair::generate(),
    )?);
    let client = Client::with_connector(
        curve_connector(&endpoint, &server, &CurveKeyPair::generate())?,
        ClientConfig::default(),
    );
    // The libzmq broker answers mmi.service: wait until our worker is registered there.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = client
            .request("mmi.service", vec![Bytes::from_static(b"echo")])
            .await?;
        if reply == [Bytes::from_static(b"200")] {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "echo never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let body = Bytes::from(format!("through libzmq CURVE {i}"));
        assert_eq!(client.request("echo", vec![body.clone()]).await?, [body]);
    }
    let _ = stop.send(());
    task.await??;
    py_broker.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paranoid_pirate_queue_serves_curve_on_both_ends() -> Result<()> {
    use majordomo_pirate::{
        LazyPirate, LazyPirateConfig, PppWorker, PppWorkerConfig, Queue, QueueConfig,
    };

    let server = CurveKeyPair::generate();
    let (client_keys, worker_keys) = (CurveKeyPair::generate(), CurveKeyPair::generate());
    let allowed = HashSet::from([client_keys.public(), worker_keys.public()]);
    let guard = curve_guard(GuardConfig::default(), &server, Some(allowed));
    let queue = Queue::builder()
        .frontend("tcp://127.0.0.1:0")
        .backend("tcp://127.0.0.1:0")
        .config(QueueConfig::paranoid().heartbeat(Some(integration_tests::TEST_HEARTBEAT)))
        .guard(guard)
        .build()
        .await?;
    let (frontend, backend) = (queue.frontend().to_owned(), queue.backend().to_owned());
    let guards = queue.guards().to_vec();
    let (stop_queue, queue_stopped) = tokio::sync::oneshot::channel::<()>();
    let queue_task = tokio::spawn(queue.run(async {
        let _ = queue_stopped.await;
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = PppWorker::new(
        curve_connector(&backend, &server, &worker_keys)?,
        PppWorkerConfig::default().heartbeat(integration_tests::TEST_HEARTBEAT),
    );
    let worker_task = tokio::spawn(worker.run(
        majordomo_worker::handler_fn(|body| async move { Ok(body) }),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = LazyPirate::new(
        curve_connector(&frontend, &server, &client_keys)?,
        LazyPirateConfig::default(),
    );
    for i in 0..10 {
        let body = vec![bytes::Bytes::from(format!("pirate {i}"))];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    // A client whose key is not listed is refused on the frontend.
    let mut stranger = LazyPirate::new(
        curve_connector(&frontend, &server, &CurveKeyPair::generate())?,
        LazyPirateConfig::default()
            .timeout(Duration::from_millis(200))
            .attempts(1),
    );
    assert!(stranger
        .request(vec![bytes::Bytes::from_static(b"x")])
        .await
        .is_err());
    let frontend_guard = guards
        .iter()
        .find(|g| g.stats().count(Rule::Unauthorized) > 0)
        .or(guards.first())
        .expect("two guards");
    wait_for_refusals(frontend_guard, Rule::Unauthorized, 1).await?;
    let _ = stop.send(());
    worker_task.await??;
    let _ = stop_queue.send(());
    queue_task.await??;
    Ok(())
}

/// A raw CURVE peer on `endpoint` (a DEALER by its metadata), handshake done: the stream.
async fn curve_raw_peer(endpoint: &str, server: &CurveKeyPair) -> Result<tokio::net::TcpStream> {
    use bytes::{Buf, BytesMut};
    use majordomo_zmtp::curve::{encode_greeting, CurveClient};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = endpoint.trim_start_matches("tcp://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut rng = crypto_box::aead::OsRng;
    let keys = std::sync::Arc::new(CurveKeyPair::generate());
    let mut client = CurveClient::new(&mut rng, server.public(), keys);
    let mut out = BytesMut::new();
    encode_greeting(&mut out, false);
    client.hello(&mut out);
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let command = async |buf: &mut BytesMut, stream: &mut tokio::net::TcpStream| loop {
        if buf.len() >= 2 && buf[0] & 0x02 == 0 && buf.len() >= 2 + usize::from(buf[1]) {
            let size = usize::from(buf[1]);
            buf.advance(2);
            return Ok::<_, anyhow::Error>(buf.split_to(size));
        }
        anyhow::ensure!(stream.read_buf(buf).await? > 0, "closed in the handshake");
    };
    while buf.len() < 64 {
        anyhow::ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed in the greeting"
        );
    }
    buf.advance(64);
    let welcome = command(&mut buf, &mut stream).await?;
    out.clear();
    let dealer = b"\x0bSocket-Type\x00\x00\x00\x06DEALER";
    client.welcome(&mut rng, &welcome, dealer, &mut out)?;
    stream.write_all(&out).await?;
    let ready = command(&mut buf, &mut stream).await?;
    client.ready(&ready)?;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_frames_half_sent_by_many_peers_hold_no_more_than_the_inbound_budget() -> Result<()>
{
    use tokio::io::AsyncWriteExt;
    const MIB: usize = 1024 * 1024;
    let server = CurveKeyPair::generate();
    let guard = GuardConfig::default()
        .max_frame_size(2 * MIB as u64)
        .max_message_size(2 * MIB as u64)
        .inbound_budget(8 * MIB)
        .message_timeout(Duration::from_secs(1));
    let guard = curve_guard(guard, &server, None);
    let broker = Broker::builder()
        .bind("tcp://127.0.0.1:0")
        .config(test_config())
        .guard(guard)
        .build()
        .await?;
    let stats = broker.guards()[0].clone();
    let broker = RunningBroker::run(broker);
    // Twelve peers each announce a sealed 2 MiB frame and send 1 MiB of it: 12 MiB offered.
    let mut senders = Vec::new();
    for _ in 0..12 {
        let mut peer = curve_raw_peer(&broker.endpoint, &server).await?;
        senders.push(tokio::spawn(async move {
            let mut header = vec![0x02];
            header.extend(((2 * MIB + 33) as u64).to_be_bytes());
            let _ = peer.write_all(&header).await;
            // Held back by the budget, this write waits; a closed peer ends it.
            let _ = peer.write_all(&vec![0u8; MIB]).await;
            integration_tests::closed_within(&mut peer, PATIENCE).await
        }));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut most = 0;
    while stats.stats().count(Rule::MessageTimeout) < 12 {
        most = most.max(stats.stats().inbound_held);
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "stalled peers not closed: {:?}",
            stats.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most > 0, "the sealed frames were charged");
    assert!(most <= 8 * MIB as u64, "held {most} bytes");
    for sender in senders {
        assert!(sender.await?, "each stalled peer was closed");
    }
    // Every byte back, and a CURVE client served.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stats.stats().inbound_held > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "budget not given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (stop, task) = our_echo_worker(curve_connector(
        &broker.endpoint,
        &server,
        &CurveKeyPair::generate(),
    )?);
    let client = majordomo_client::Client::with_connector(
        curve_connector(&broker.endpoint, &server, &CurveKeyPair::generate())?,
        majordomo_client::ClientConfig::default().timeout(PATIENCE),
    );
    let hello = vec![bytes::Bytes::from_static(b"hello")];
    assert_eq!(client.request("echo", hello.clone()).await?, hello);
    let _ = stop.send(());
    task.await??;
    broker.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_worker_and_client_reconnect_through_curve_to_a_restarted_broker() -> Result<()> {
    use bytes::Bytes;
    use majordomo_client::{Client, ClientConfig};

    let server = CurveKeyPair::generate();
    let (broker, _guard) = curve_broker(&server, None, test_config()).await?;
    let endpoint = broker.endpoint.clone();
    let (stop, task) = our_echo_worker(curve_connector(
        &endpoint,
        &server,
        &CurveKeyPair::generate(),
    )?);
    let client = Client::with_connector(
        curve_connector(&endpoint, &server, &CurveKeyPair::generate())?,
        ClientConfig::default()
            .timeout(Duration::from_millis(500))
            .attempts(2),
    );
    let before = vec![Bytes::from_static(b"before")];
    assert_eq!(client.request("echo", before.clone()).await?, before);
    broker.stop().await?;
    // The same keys on the same endpoint, a new broker process would do the same.
    let guard = curve_guard(GuardConfig::default(), &server, None);
    let mut restarted = None;
    for _ in 0..100 {
        let built = Broker::builder()
            .bind(&endpoint)
            .config(test_config())
            .guard(guard.clone())
            .build()
            .await;
        if let Ok(broker) = built {
            restarted = Some(RunningBroker::run(broker));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let broker = restarted.context("the endpoint could be bound again")?;
    let after = vec![Bytes::from_static(b"after")];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client.request("echo", after.clone()).await {
            Ok(reply) => {
                assert_eq!(reply, after);
                break;
            }
            Err(error) => anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "not served again: {error}"
            ),
        }
    }
    let _ = stop.send(());
    task.await??;
    broker.stop().await?;
    Ok(())
}

/// Sixteen CURVE clients each send a 4 MiB request through the binary broker and stay
/// connected, idle. A CURVE peer's read buffer grows to hold a whole sealed frame; once the frame
/// is read the guard lets that memory go, so the broker's RSS comes back near its baseline
/// rather than keeping 4 MiB for each idle connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_curve_peers_keep_no_buffer_of_the_large_frames_they_sent() -> Result<()> {
    use integration_tests::{free_endpoint, majordomo_bin, Proc};
    const MIB: usize = 1024 * 1024;
    const PEERS: usize = 16;

    let scratch = integration_tests::scratch_dir("curve-idle")?;
    let secret = scratch.path().join("server");
    let out = std::process::Command::new(majordomo_bin()?)
        .args(["keygen", "--force"])
        .arg(&secret)
        .output()?;
    anyhow::ensure!(out.status.success(), "keygen: {out:?}");
    let server = CurveKeyPair::load(&scratch.path().join("server_secret"))?;
    let ep = free_endpoint()?;
    let secret_file = scratch.path().join("server_secret");
    // Every block of 128 KiB or more mapped on its own and unmapped when freed (the broker
    // leaves glibc's threshold to rise): RSS then shows the large buffers still held, not those
    // that malloc keeps for reuse.
    let broker = Proc::spawn_env(
        &[
            "broker",
            "--bind",
            &ep,
            "--curve-secret-key-file",
            secret_file.to_str().unwrap_or_default(),
        ],
        &[("MALLOC_MMAP_THRESHOLD_", "131072")],
    )?;
    let (stop, task) = our_echo_worker(curve_connector(&ep, &server, &CurveKeyPair::generate())?);
    let client = majordomo_client::Client::with_connector(
        curve_connector(&ep, &server, &CurveKeyPair::generate())?,
        majordomo_client::ClientConfig::default().timeout(PATIENCE),
    );
    // Warm: one large request, so that what is kept once (the worker's connection, the link)
    // is in the baseline.
    let large = vec![bytes::Bytes::from(vec![7u8; 4 * MIB])];
    assert_eq!(client.request("echo", large.clone()).await?, large);
    let baseline = broker.rss_kib()?;
    // All at once: one connection each, every one kept in the client's pool afterwards.
    let calls: Vec<_> = (0..PEERS)
        .map(|_| {
            let (client, large) = (client.clone(), large.clone());
            tokio::spawn(async move { client.request("echo", large).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await??, large);
    }
    let after = broker.rss_kib()?;
    println!("broker RSS {baseline} KiB before, {after} KiB with {PEERS} idle CURVE peers");
    assert!(
        // Kept, each buffer holds 4 to 8 MiB (measured: 100 MiB more in all); let go, RSS
        // measured 8 to 25 MiB above the baseline.
        after < baseline + (PEERS * 3 * MIB / 1024) as u64,
        "RSS grew from {baseline} to {after} KiB"
    );
    let _ = stop.send(());
    task.await??;
    Ok(())
}
