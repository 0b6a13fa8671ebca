//! What a run measures, started for it: the ceiling's echo server, our broker, the relay, or
//! another broker already running, with the echo workers or relay peers behind it.

use std::time::Duration;

use anyhow::Result;
use majordomo_broker::HeartbeatConfig;
use majordomo_rt::transport::DealerConnector;
use majordomo_worker::{Dialect, Version, Worker, WorkerConfig};

use super::curve::CurveSetup;
use super::fixture::{relay_peer, RelayPeerArgs};
use super::load::{measure, Load, Mode};
use super::report::Run;
use super::{BenchArgs, RunKind};
use crate::bins::{spawn_fixture, spawn_majordomo};
use crate::child::Child;
use crate::echo::echo_in_parts;
use crate::endpoint::{free_endpoint, SocketFile, Transport};

/// How long a worker process gets to stop after SIGTERM before it is killed.
const WORKER_STOP: Duration = Duration::from_secs(2);

/// The ceiling's echo server in its own process, for the `ceiling` and `serial` runs.
pub(super) struct EchoServer {
    endpoint: String,
    process: Child,
}

impl EchoServer {
    /// Starts `majordomo-bench-fixture echo` on a free endpoint with `threads` runtime threads.
    pub(super) fn start(args: &BenchArgs, threads: &str) -> Result<Self> {
        let endpoint = free_endpoint(args.transport)?;
        let process = spawn_fixture(&["echo", "--bind", &endpoint, "--threads", threads], "warn")?;
        Ok(Self { endpoint, process })
    }

    /// `clients` clients with `in_flight` requests each of `size` bytes, against this server.
    pub(super) fn load(
        &self,
        kind: RunKind,
        size: usize,
        clients: usize,
        in_flight: usize,
    ) -> Load<'_> {
        Load {
            kind,
            mode: Mode::Raw,
            endpoint: &self.endpoint,
            server_pid: self.process.pid(),
            size,
            clients,
            in_flight,
        }
    }
}

/// The ZMTP guard of our broker in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GuardMode {
    /// The default mode, no flag.
    Default,
    /// `--no-guard`.
    Off,
    /// `--guard-relay`.
    Relay,
    /// `--curve-secret-key-file`.
    Curve,
}

/// Starts our broker on `endpoint` with `threads` runtime threads, the guard as `guard` (with
/// the keys of `curve` for [`GuardMode::Curve`]), and `extra` options.
pub(super) fn spawn_broker(
    endpoint: &str,
    threads: &str,
    guard: GuardMode,
    curve: Option<&CurveSetup>,
    extra: &[&str],
) -> Result<Child> {
    let mut command = vec!["broker", "--bind", endpoint, "--threads", threads];
    command.extend_from_slice(extra);
    let secret;
    match guard {
        GuardMode::Default => {}
        GuardMode::Off => command.push("--no-guard"),
        GuardMode::Relay => command.push("--guard-relay"),
        GuardMode::Curve => {
            secret = curve
                .ok_or_else(|| anyhow::anyhow!("a CURVE run without keys"))?
                .secret_file();
            command.extend(["--curve-secret-key-file", &secret]);
        }
    }
    spawn_majordomo(&command, "warn")
}

/// The broker a run measures.
pub(super) enum Target<'a> {
    /// Ours, started as a child process with these settings (`guard`: the guard's flag;
    /// `metrics`: true adds `--metrics-listen` on an ephemeral port; `parts`:
    /// 18/MDP clients, and workers that answer with that many PARTIALs before the FINAL).
    Ours {
        threads: &'a str,
        busy_poll: Duration,
        guard: GuardMode,
        metrics: bool,
        parts: Option<usize>,
    },
    /// Another broker, already running.
    External { endpoint: &'a str, pid: u32 },
    /// The protocol-free forwarder, its echo peers holding up to `window` requests each.
    Relay { threads: &'a str, window: usize },
    /// Ours unguarded on a Unix socket, behind the `copy-relay` fixture on TCP.
    CopyRelay { threads: &'a str },
}

/// One measured run of a broker (ours, another one, or the relay) in its own process, with its
/// echo workers or the relay's echo peers (processes, or tasks here with
/// `--in-process-workers`).
pub(super) async fn broker_run(
    args: &BenchArgs,
    kind: RunKind,
    size: usize,
    target: Target<'_>,
) -> Result<Run> {
    let relay = matches!(target, Target::Relay { .. });
    let parts = match target {
        Target::Ours { parts, .. } => parts,
        _ => None,
    };
    // The copy relay's process, when there is one, lives until the run ends.
    let mut _proxy = None;
    // Removed once the server is gone.
    let mut _socket_file = None;
    // The keys of a CURVE run, and the bridge its clients connect through.
    let mut curve: Option<CurveSetup> = None;
    let (broker_ep, broker_pid, _broker) = match target {
        Target::Ours {
            threads,
            busy_poll,
            guard,
            metrics,
            parts: _,
        } => {
            let endpoint = free_endpoint(args.transport)?;
            _socket_file = Some(SocketFile::of(&endpoint));
            let busy_poll = humantime::format_duration(busy_poll).to_string();
            let mut extra = vec!["--busy-poll", busy_poll.as_str()];
            if metrics {
                extra.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            if guard == GuardMode::Curve {
                curve = Some(CurveSetup::new()?);
            }
            let broker = spawn_broker(&endpoint, threads, guard, curve.as_ref(), &extra)?;
            (endpoint, broker.pid(), Some(broker))
        }
        Target::External { endpoint, pid } => (endpoint.to_owned(), pid, None),
        Target::CopyRelay { threads } => {
            let socket = free_endpoint(Transport::Ipc)?;
            _socket_file = Some(SocketFile::of(&socket));
            let broker =
                spawn_majordomo(&["broker", "--bind", &socket, "--threads", threads], "warn")?;
            let tcp = free_endpoint(Transport::Tcp)?;
            let path = socket.trim_start_matches("ipc://");
            let listen = tcp.trim_start_matches("tcp://");
            // The proxy can only connect once the broker listens.
            wait_for_path(path).await?;
            _proxy = Some(spawn_fixture(
                &["copy-relay", "--listen", listen, "--upstream", path],
                "warn",
            )?);
            (tcp, broker.pid(), Some(broker))
        }
        Target::Relay { threads, window } => {
            let endpoint = free_endpoint(args.transport)?;
            _socket_file = Some(SocketFile::of(&endpoint));
            let relay = spawn_fixture(
                &[
                    "relay",
                    "--bind",
                    &endpoint,
                    "--threads",
                    threads,
                    "--window",
                    &window.to_string(),
                ],
                "warn",
            )?;
            (endpoint, relay.pid(), Some(relay))
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    // Each in its own process by default, as deployed: tasks beside the clients wait behind the
    // clients' work on the same runtime.
    let mut worker_processes = Vec::new();
    let worker_busy_poll = humantime::format_duration(args.worker_busy_poll).to_string();
    let worker_threads = args.worker_threads.to_string();
    let parts_arg = parts.unwrap_or(0).to_string();
    for _ in 0..args.workers {
        let mut stopped = stopped.clone();
        match (relay, args.in_process_workers) {
            (true, false) => worker_processes.push(spawn_fixture(
                &["relay-peer", "--connect", &broker_ep],
                "warn",
            )?),
            (true, true) => {
                let peer = relay_peer(RelayPeerArgs {
                    connect: broker_ep.clone(),
                });
                workers.push(tokio::spawn(async move {
                    tokio::select! {
                        served = peer => served,
                        _ = stopped.wait_for(|s| *s) => Ok(()),
                    }
                }));
            }
            (false, false) => {
                let mut command = vec![
                    "worker",
                    "--connect",
                    &broker_ep,
                    "--busy-poll",
                    &worker_busy_poll,
                    "--threads",
                    &worker_threads,
                    "--mdp",
                    if parts.is_some() { "0.2" } else { "0.1" },
                ];
                let server_key = curve.as_ref().map(CurveSetup::public_z85);
                if let Some(key) = &server_key {
                    command.extend(["--curve-server-key", key]);
                }
                command.extend(["echo", "--parts", &parts_arg]);
                worker_processes.push(spawn_majordomo(&command, "warn")?)
            }
            (false, true) => {
                let version = match parts {
                    Some(_) => Version::V02(Dialect::Rfc18),
                    None => Version::V01,
                };
                let connector = match &curve {
                    Some(setup) => setup.outbound_connector(&broker_ep)?,
                    None => DealerConnector::new(broker_ep.clone()),
                };
                let worker = Worker::new(
                    connector,
                    "echo",
                    WorkerConfig::default()
                        .heartbeat(HeartbeatConfig::default())
                        .busy_poll(args.worker_busy_poll)
                        .version(version),
                );
                let served = worker.run_streaming(echo_in_parts(parts.unwrap_or(0)), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
                workers.push(tokio::spawn(async move { Ok(served.await?) }));
            }
        }
    }
    // A CURVE run's clients connect through a bridge in this process.
    let bridge = match &curve {
        Some(setup) => Some(setup.outbound(&broker_ep)?),
        None => None,
    };
    let client_ep = match &bridge {
        Some(bridge) => bridge.local_endpoint().await?,
        None => broker_ep.clone(),
    };
    let load = Load {
        kind,
        mode: match (relay, parts, kind) {
            (true, _, _) => Mode::Raw,
            (false, None, RunKind::ClientPool) => Mode::Pool,
            (false, None, RunKind::ClientMux) => Mode::Mux,
            (false, None, _) => Mode::Broker,
            (false, Some(_), _) => Mode::Stream,
        },
        endpoint: &client_ep,
        // The client runs measure the callers' side: this process.
        server_pid: match kind {
            RunKind::ClientPool | RunKind::ClientMux => std::process::id(),
            _ => broker_pid,
        },
        size,
        clients: args.clients,
        in_flight: args.in_flight,
    };
    let run = measure(args, load).await;
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    for w in worker_processes {
        w.terminate(WORKER_STOP).await;
    }
    run
}

/// Waits, a bounded time, for a process to create the socket file at `path`.
async fn wait_for_path(path: &str) -> Result<()> {
    for _ in 0..500 {
        if std::path::Path::new(path).exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{path} did not appear")
}
