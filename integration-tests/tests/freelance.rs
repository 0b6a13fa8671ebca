//! The Freelance pattern (10/FLP) over TCP: servers killed one by one under load, all of them
//! dead, one restarted on its endpoint; and interop with peers written from RFC 10 on pyzmq.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use integration_tests::{free_endpoint, PyPeer as Py, PATIENCE};
use majordomo_freelance::{
    handler_fn, FreelanceClient, FreelanceClientError, FreelanceConfig, FreelanceError,
    FreelanceServer, GuardConfig, ServerStats,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn quick() -> FreelanceConfig {
    FreelanceConfig::default()
        .ping_interval(Duration::from_millis(100))
        .server_ttl(Duration::from_millis(300))
        .attempt_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
}

/// An echo server on `endpoint` (a port just freed may take a moment to bind again).
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ServerStats, majordomo_freelance::FreelanceServerError>>,
}

async fn serve(endpoint: &str) -> Result<Running> {
    let mut bound = FreelanceServer::bind(endpoint, Some(GuardConfig::default())).await;
    for _ in 0..100 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = FreelanceServer::bind(endpoint, Some(GuardConfig::default())).await;
    }
    let server = bound?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        server.run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = stopped.await;
        }),
    );
    Ok(Running { stop, task })
}

impl Running {
    async fn kill(self) -> Result<ServerStats> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_one_by_one_lose_no_request_while_one_lives() -> Result<()> {
    let endpoints: Vec<String> = (0..3).map(|_| free_endpoint()).collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for endpoint in &endpoints {
        servers.push(Some(serve(endpoint).await?));
    }
    // Ten clients, each with its requests one after another; every reply checked against its
    // request, so a stale reply delivered would fail the run.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..10 {
        let client = FreelanceClient::new(endpoints.clone(), quick())?;
        let mut stopped = stopped.clone();
        clients.push(tokio::spawn(async move {
            let mut answered = 0u64;
            for i in 0.. {
                if *stopped.borrow_and_update() {
                    break;
                }
                let body = vec![Bytes::from(format!("client {c} request {i}"))];
                let reply = client.request(body.clone()).await?;
                anyhow::ensure!(reply == body, "client {c} got {reply:?} for {body:?}");
                answered += 1;
            }
            Ok::<_, anyhow::Error>((answered, client.stats().await?))
        }));
    }
    // Kill the servers one by one, the last one kept, each after some requests went through.
    // Requests go to the first live server: each victim served until it died, then the next.
    for (victim, server) in servers.iter_mut().take(2).enumerate() {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let served = server.take().expect("running").kill().await?;
        assert!(served.replies > 0, "server {victim} served before it died");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = stop.send(true);
    let mut total = 0;
    for client in clients {
        let (answered, stats) = client.await??;
        assert!(answered > 0);
        assert_eq!(stats.failed, 0, "no request lost while a server lives");
        total += answered;
    }
    assert!(total > 30, "the clients kept being answered: {total}");

    // All dead: a clean error within the timeout.
    servers[2].take().expect("running").kill().await?;
    let client = FreelanceClient::new(endpoints.clone(), quick())?;
    let failed = client.request(vec![Bytes::from_static(b"anyone?")]).await;
    assert!(
        matches!(
            failed,
            Err(FreelanceClientError::Request(
                FreelanceError::NoReply { .. }
            ))
        ),
        "{failed:?}"
    );
    // One comes back on its endpoint: used again.
    let back = serve(&endpoints[1]).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client.request(vec![Bytes::from_static(b"again")]).await {
            Ok(reply) => {
                assert_eq!(reply, [Bytes::from_static(b"again")]);
                break;
            }
            Err(error) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "not used again: {error}"
                )
            }
        }
    }
    back.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_client_uses_our_servers_and_our_client_uses_libzmq_servers() -> Result<()> {
    // A Guide-style model 3 client on pyzmq against two of our servers.
    let ours: Vec<String> = (0..2).map(|_| free_endpoint()).collect::<Result<_>>()?;
    let mut running = Vec::new();
    for endpoint in &ours {
        running.push(serve(endpoint).await?);
    }
    let mut args: Vec<&str> = vec!["client", "5"];
    args.extend(ours.iter().map(String::as_str));
    let mut py_client = Py::spawn("flp_peers.py", &args)?;
    for i in 0..5 {
        assert_eq!(py_client.line().await?, format!("reply {i}"));
    }
    assert_eq!(py_client.exit_code().await?, 0);
    for server in running {
        let stats = server.kill().await?;
        assert!(stats.pings > 0, "the libzmq client pinged");
    }

    // Our client against two pyzmq servers, one of them killed.
    let theirs: Vec<String> = (0..2).map(|_| free_endpoint()).collect::<Result<_>>()?;
    let mut py_servers = Vec::new();
    for endpoint in &theirs {
        let mut server = Py::spawn("flp_peers.py", &["server", endpoint])?;
        assert_eq!(server.line().await?, "ready");
        py_servers.push(server);
    }
    let client = FreelanceClient::new(theirs.clone(), quick())?;
    for i in 0..5 {
        let body = vec![
            Bytes::from(format!("to libzmq {i}")),
            Bytes::from_static(b"two"),
        ];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    py_servers[0].kill().await?;
    for i in 0..5 {
        let body = vec![Bytes::from(format!("after a kill {i}"))];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    assert_eq!(client.stats().await?.failed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_calls_freelance_and_fails_cleanly_when_all_are_down() -> Result<()> {
    use integration_tests::{majordomo_bin, Proc};

    let (a, b) = (free_endpoint()?, free_endpoint()?);
    let mut first = Proc::spawn(&["flserver", "--bind", &a, "echo"])?;
    let _second = Proc::spawn(&["flserver", "--bind", &b, "exec", "--", "tr", "a-z", "A-Z"])?;
    let call = |frames: &[&str]| {
        let mut command = std::process::Command::new(majordomo_bin().expect("built"));
        command.args(["call", "--freelance", "--connect", &a, "--connect", &b]);
        command.args(["--timeout", "500ms"]);
        command.args(frames);
        command.output()
    };
    // A server answers (whichever a new client hears from first; they may take a moment to
    // listen): the echo, or the program's output of the frames concatenated.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let out = call(&["hello", "world"])?;
        if out.status.success() {
            let printed = String::from_utf8(out.stdout)?;
            assert!(
                printed == "hello\nworld\n" || printed == "HELLOWORLD\n",
                "{printed:?}"
            );
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no answer: {out:?}");
    }
    first.signal("KILL")?;
    first.wait_exit().await?;
    // The second, a program's output, once the first is gone.
    let out = call(&["shout"])?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout)?, "SHOUT\n");
    drop(_second);
    let out = call(&["anyone"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server answered"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freelance_with_curve_serves_its_keys_and_refuses_a_wrong_server_key() -> Result<()> {
    use majordomo_freelance::{CurveKeyPair, FreelanceCurve};
    use majordomo_zmtp::mux::secure::{ClientFilter, CurveSecurity};

    let keys = std::sync::Arc::new(CurveKeyPair::generate());
    let guard = GuardConfig::default().curve(CurveSecurity {
        keys: keys.clone(),
        clients: ClientFilter::default(),
        allow_null: false,
    });
    let endpoints: Vec<String> = (0..2).map(|_| free_endpoint()).collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for endpoint in &endpoints {
        // Behind the front end, which announces the server's identity itself.
        let server = FreelanceServer::bind(endpoint, Some(guard.clone())).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            server.run(handler_fn(|body| async move { Ok(body) }), async {
                let _ = stopped.await;
            }),
        );
        servers.push(Running { stop, task });
    }
    let curve = FreelanceCurve {
        server: keys.public(),
        keys: std::sync::Arc::new(CurveKeyPair::generate()),
    };
    let client = FreelanceClient::with_curve(endpoints.clone(), quick(), curve)?;
    for i in 0..10 {
        let body = vec![Bytes::from(format!("sealed {i}")), Bytes::from_static(b"x")];
        assert_eq!(client.request(body.clone()).await?, body);
    }
    let wrong = FreelanceCurve {
        server: CurveKeyPair::generate().public(),
        keys: std::sync::Arc::new(CurveKeyPair::generate()),
    };
    let stranger = FreelanceClient::with_curve(endpoints.clone(), quick(), wrong)?;
    let refused = stranger.request(vec![Bytes::from_static(b"x")]).await;
    assert!(
        matches!(
            refused,
            Err(FreelanceClientError::Request(FreelanceError::NoReply {
                alive: 0,
                ..
            }))
        ),
        "{refused:?}"
    );
    for server in servers {
        server.kill().await?;
    }
    Ok(())
}
