//! `majordomo worker`: serve the built-in echo service, or any program (`exec`: the request on
//! its stdin, its stdout the reply).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::{Args, Subcommand};
use majordomo_broker::HeartbeatConfig;
use majordomo_tools::echo::echo_in_parts;
use majordomo_worker::{
    handler_fn, stream_handler_fn, BoxError, Handler, Responder, StreamHandler, Worker,
    WorkerConfig,
};
use tokio::io::AsyncWriteExt;

use crate::connect::{ConnectArgs, Mdp};
use crate::server::ConfigArgs;
use crate::signals::shutdown_signal;

/// Options of `worker`.
#[derive(Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Heartbeat interval, e.g. 2500ms; must match the broker's.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration, global = true)]
    heartbeat: Duration,
    /// Intervals of broker silence before reconnecting.
    #[arg(long, default_value_t = 3, global = true)]
    liveness: u32,
    /// Logical workers to run, each with its own connection.
    #[arg(long, default_value_t = 1, global = true)]
    concurrency: usize,
    /// First reconnect delay; it doubles on each failure up to --reconnect-max.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "32s", value_parser = humantime::parse_duration, global = true)]
    reconnect_max: Duration,
    /// Keep polling for the next request without sleeping for this long after the last message,
    /// e.g. 200us: lower latency, one core busy while requests keep coming (0: sleep at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    busy_poll: Duration,
    /// Runtime threads: 1 (the default) for a single-threaded runtime, 0 for one per core. The
    /// `echo` and `exec` handlers do no work on the runtime's threads, so one thread serves any
    /// concurrency without cross-thread wake-ups.
    #[arg(long, default_value_t = 1, global = true)]
    pub(crate) threads: usize,
    /// The MDP to speak.
    #[arg(long, value_enum, default_value = "0.1", global = true)]
    mdp: Mdp,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests handled, failures and handler
    /// time, by service; the process's memory and CPU) and a probe at /healthz, e.g.
    /// 127.0.0.1:9465. Off by default.
    #[arg(long, global = true)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    kind: WorkerKind,
}

/// What the worker serves.
#[derive(Subcommand)]
enum WorkerKind {
    /// Serve the built-in `echo` service: the reply is the request.
    Echo {
        /// Service name to register.
        #[arg(long, default_value = "echo")]
        service: String,
        /// Send the request back this many times as parts before the last (PARTIALs in
        /// 18/MDP, frames of the one REPLY in 7/MDP).
        #[arg(long, default_value_t = 0)]
        parts: usize,
    },
    /// Serve any program: the request body is its stdin, its stdout is the reply.
    Exec {
        /// Send each line of the program's stdout (without its newline) as a part as soon as it
        /// is written, and what follows the last newline as the last part: PARTIALs then the
        /// FINAL in 18/MDP (--mdp 0.2), the lines as frames of one REPLY in 7/MDP.
        #[arg(long)]
        stream: bool,
        /// Service name to register.
        service: String,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Serves until a stop signal, then tells the broker DISCONNECT.
pub(crate) async fn run(args: WorkerArgs) -> Result<()> {
    let config = WorkerConfig::default()
        .heartbeat(HeartbeatConfig::new(args.heartbeat, args.liveness))
        .reconnect_initial(args.reconnect_initial)
        .reconnect_max(args.reconnect_max)
        .concurrency(args.concurrency)
        .busy_poll(args.busy_poll)
        .version(args.mdp.into());
    let endpoints = args.connect.connectors()?;
    if let Some(addr) = args.metrics_listen {
        crate::metrics::serve(addr, crate::metrics::WorkerSource).await?;
    }
    // A worker binds nothing: it is ready once it runs, and registers as its brokers answer.
    crate::signals::ready();
    match args.kind {
        WorkerKind::Echo { service, parts: 0 } => {
            let handler = Measured::new(&service, handler_fn(|body| async move { Ok(body) }));
            Worker::with_endpoints(endpoints, service, config)
                .run(handler, shutdown_signal())
                .await?
        }
        WorkerKind::Echo { service, parts } => {
            let handler = Measured::new(&service, echo_in_parts(parts));
            Worker::with_endpoints(endpoints, service, config)
                .run_streaming(handler, shutdown_signal())
                .await?
        }
        WorkerKind::Exec {
            service,
            command,
            stream: true,
        } => {
            let command = Arc::new(command);
            let handler = stream_handler_fn(move |body: Vec<Bytes>, responder| {
                let command = command.clone();
                async move { exec_streamed(&command, body, responder).await }
            });
            let handler = Measured::new(&service, handler);
            Worker::with_endpoints(endpoints, service, config)
                .run_streaming(handler, shutdown_signal())
                .await?
        }
        WorkerKind::Exec {
            service,
            command,
            stream: false,
        } => {
            let command = Arc::new(command);
            let handler = handler_fn(move |body: Vec<Bytes>| {
                let command = command.clone();
                async move { exec(&command, body).await }
            });
            let handler = Measured::new(&service, handler);
            Worker::with_endpoints(endpoints, service, config)
                .run(handler, shutdown_signal())
                .await?
        }
    }
    Ok(())
}

/// A handler whose requests are counted and timed, for `--metrics-listen` (without it the
/// metrics facade has no recorder and records nothing).
struct Measured<H> {
    inner: H,
    /// The service's series, registered once (the recorder is installed before handlers are
    /// made): requests that ended well, requests that failed, and handler time.
    ok: metrics::Counter,
    failed: metrics::Counter,
    duration: metrics::Histogram,
}

impl<H> Measured<H> {
    fn new(service: &str, inner: H) -> Self {
        let service = service.to_owned();
        let requests = |outcome: &'static str| metrics::counter!("majordomo_worker_requests_total", "service" => service.clone(), "outcome" => outcome);
        Self {
            inner,
            ok: requests("ok"),
            failed: requests("failed"),
            duration: metrics::histogram!("majordomo_worker_request_duration_seconds", "service" => service.clone()),
        }
    }

    /// Records one request that took since `started` and ended with `outcome`.
    fn record<T>(&self, started: Instant, outcome: &Result<T, BoxError>) {
        match outcome {
            Ok(_) => self.ok.increment(1),
            Err(_) => self.failed.increment(1),
        }
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

impl<H: Handler> Handler for Measured<H> {
    async fn handle(&self, request: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError> {
        let started = Instant::now();
        let outcome = self.inner.handle(request).await;
        self.record(started, &outcome);
        outcome
    }
}

impl<H: StreamHandler> StreamHandler for Measured<H> {
    async fn handle(
        &self,
        request: Vec<Bytes>,
        responder: Responder,
    ) -> Result<Vec<Bytes>, BoxError> {
        let started = Instant::now();
        let outcome = self.inner.handle(request, responder).await;
        self.record(started, &outcome);
        outcome
    }
}

/// Starts `command` with the request body (frames concatenated) written to its stdin by a task
/// (a program that exits without reading all of it is not an error).
fn spawn_child(
    command: &[String],
    body: Vec<Bytes>,
) -> Result<
    (
        tokio::process::Child,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    BoxError,
> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        let written = async {
            for frame in body {
                stdin.write_all(&frame).await?;
            }
            stdin.shutdown().await
        };
        match written.await {
            // A program may exit without reading all of its input.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    });
    Ok((child, writer))
}

/// As [`exec`], sending each line of stdout (without its newline) as a part when it is written;
/// what follows the last newline (perhaps nothing) is the last part. A program that exits
/// non-zero is a handler error, after the lines it wrote have gone out.
async fn exec_streamed(
    command: &[String],
    body: Vec<Bytes>,
    mut responder: Responder,
) -> Result<Vec<Bytes>, BoxError> {
    use tokio::io::AsyncBufReadExt;
    let (mut child, writer) = spawn_child(command, body)?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let rest = loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line).await? == 0 {
            break Vec::new();
        }
        if line.last() != Some(&b'\n') {
            // The end of stdout came before a newline.
            break std::mem::take(&mut line);
        }
        line.pop();
        responder.send(vec![Bytes::copy_from_slice(&line)]).await?;
    };
    let status = child.wait().await?;
    writer.await??;
    if !status.success() {
        return Err(format!("{} exited with {}", command[0], status).into());
    }
    Ok(vec![Bytes::from(rest)])
}

/// Runs `command` with the request body (frames concatenated) on stdin; its stdout is the reply.
/// A program that exits non-zero is a handler error.
pub(super) async fn exec(command: &[String], body: Vec<Bytes>) -> Result<Vec<Bytes>, BoxError> {
    let (child, writer) = spawn_child(command, body)?;
    let output = child.wait_with_output().await?;
    writer.await??;
    if !output.status.success() {
        return Err(format!("{} exited with {}", command[0], output.status).into());
    }
    Ok(vec![Bytes::from(output.stdout)])
}
