//! `majordomo worker`: serve the built-in echo service, or any program (`exec`: the request on
//! its stdin, its stdout the reply).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::{Args, Subcommand};
use majordomo_broker::HeartbeatConfig;
use majordomo_tools::echo::echo_in_parts;
use majordomo_worker::{handler_fn, stream_handler_fn, BoxError, Responder, Worker, WorkerConfig};
use tokio::io::AsyncWriteExt;

use crate::connect::{ConnectArgs, Mdp};
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
    match args.kind {
        WorkerKind::Echo { service, parts: 0 } => {
            Worker::with_endpoints(endpoints, service, config)
                .run(
                    handler_fn(|body| async move { Ok(body) }),
                    shutdown_signal(),
                )
                .await?
        }
        WorkerKind::Echo { service, parts } => {
            Worker::with_endpoints(endpoints, service, config)
                .run_streaming(echo_in_parts(parts), shutdown_signal())
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
            Worker::with_endpoints(endpoints, service, config)
                .run(handler, shutdown_signal())
                .await?
        }
    }
    Ok(())
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
