//! `majordomo call`: one request, its reply printed one frame per line; through Titanic with
//! `--titanic`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use majordomo_client::{Client, ClientConfig, ClientError};
use tokio::io::AsyncWriteExt;

use crate::connect::{ConnectArgs, Mdp};

/// Exit status of `call` when no reply came after every attempt.
const NO_REPLY: u8 = 2;
/// Exit status of `call` when a reply in parts stopped before its last part.
const INTERRUPTED: u8 = 3;

/// Options of `call`.
#[derive(Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// How long to wait for each attempt, e.g. 2500ms.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Attempts in all before giving up, each on a new connection and each waiting --timeout.
    #[arg(long, visible_alias = "retries", default_value_t = 3)]
    attempts: u32,
    /// Submit through Titanic (9/TSP) instead: store the request, poll `titanic.reply` until
    /// it is answered (printing nothing while it is pending), print the reply, close it.
    #[arg(long, conflicts_with = "mdp")]
    titanic: bool,
    /// With --titanic: keep the reply stored and print its UUID (to stderr) instead of
    /// closing it.
    #[arg(long, requires = "titanic")]
    no_close: bool,
    /// With --titanic: how long to wait for the reply before giving up (it stays stored).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    titanic_patience: Duration,
    /// Call Freelance servers (10/FLP, no broker) instead: every --connect endpoint is a
    /// server (`majordomo flserver`, or any server written from RFC 10), and the arguments are
    /// the request's frames, with no service name. Each attempt goes to the next live server
    /// and waits --timeout; the reply's frames are printed.
    #[arg(long, conflicts_with_all = ["titanic", "mdp"])]
    freelance: bool,
    /// The MDP to speak. With 0.2 each part of the reply is printed as it arrives (one line per
    /// frame, a blank line between parts); after a part has arrived, a timeout is not retried.
    #[arg(long, value_enum, default_value = "0.1")]
    mdp: Mdp,
    /// Service name.
    service: String,
    /// Request body frames.
    #[arg(required_unless_present = "freelance")]
    body: Vec<String>,
}

/// Sends the request and prints the reply. Exit status 0: answered; 2: no reply after every
/// attempt; 3: a reply in parts stopped before its last part.
pub(crate) async fn run(args: CallArgs) -> Result<ExitCode> {
    if args.titanic {
        return run_titanic(args).await;
    }
    if args.freelance {
        return run_freelance(args).await;
    }
    let client = Client::with_endpoints(
        args.connect.connectors()?,
        ClientConfig::default()
            .timeout(args.timeout)
            .attempts(args.attempts)
            .version(args.mdp.into()),
    );
    let body = args.body.into_iter().map(Bytes::from).collect();
    let mut parts = std::pin::pin!(client.request_stream(args.service, body));
    let mut out = tokio::io::stdout();
    let mut first = true;
    while let Some(part) = parts.next().await {
        match part {
            Ok(part) => {
                if !first {
                    out.write_all(b"\n").await?;
                }
                first = false;
                for frame in part.body {
                    out.write_all(&frame).await?;
                    out.write_all(b"\n").await?;
                }
                out.flush().await?;
            }
            Err(error @ ClientError::NoReply { .. }) => {
                eprintln!("majordomo call: {error}");
                return Ok(ExitCode::from(NO_REPLY));
            }
            Err(error @ ClientError::Interrupted { .. }) => {
                eprintln!("majordomo call: {error}");
                return Ok(ExitCode::from(INTERRUPTED));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `call --freelance`: the frames to the Freelance servers, the reply printed one frame per
/// line.
async fn run_freelance(args: CallArgs) -> Result<ExitCode> {
    use majordomo_freelance::{
        FreelanceClient, FreelanceClientError, FreelanceConfig, FreelanceCurve,
    };
    let config = FreelanceConfig::default()
        .attempt_timeout(args.timeout)
        .timeout(args.timeout * args.attempts.max(1));
    let endpoints = args.connect.endpoints()?;
    let client = match args.connect.curve.keys()? {
        None => FreelanceClient::new(endpoints, config)?,
        Some((server, keys)) => {
            FreelanceClient::with_curve(endpoints, config, FreelanceCurve { server, keys })?
        }
    };
    let mut frames = vec![Bytes::from(args.service)];
    frames.extend(args.body.into_iter().map(Bytes::from));
    let reply = match client.request(frames).await {
        Ok(reply) => reply,
        Err(error @ FreelanceClientError::Request(_)) => {
            eprintln!("majordomo call: {error}");
            return Ok(ExitCode::from(NO_REPLY));
        }
        Err(error) => return Err(error.into()),
    };
    print_frames(reply).await?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `frames` to stdout, one per line.
async fn print_frames(frames: Vec<Bytes>) -> std::io::Result<()> {
    let mut out = tokio::io::stdout();
    for frame in frames {
        out.write_all(&frame).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await
}

/// `call --titanic`: submits, waits for the reply, prints it, closes it (or, with
/// `--no-close`, prints its UUID).
async fn run_titanic(args: CallArgs) -> Result<ExitCode> {
    use majordomo_titanic::{TitanicClient, TitanicClientError};
    let client = TitanicClient::with_endpoints(
        args.connect.connectors()?,
        ClientConfig::default()
            .timeout(args.timeout)
            .attempts(args.attempts),
    );
    let body = args.body.into_iter().map(Bytes::from).collect();
    let uuid = match client.submit(args.service, body).await {
        Ok(uuid) => uuid,
        Err(TitanicClientError::Client(error @ ClientError::NoReply { .. })) => {
            eprintln!("majordomo call: {error}");
            return Ok(ExitCode::from(NO_REPLY));
        }
        Err(error) => return Err(error.into()),
    };
    let poll = Duration::from_millis(100);
    let reply = match client.wait(uuid, args.titanic_patience, poll).await {
        Ok(reply) => reply,
        Err(error @ TitanicClientError::Pending(_)) => {
            eprintln!("majordomo call: {error}");
            return Ok(ExitCode::from(NO_REPLY));
        }
        Err(error) => return Err(error.into()),
    };
    print_frames(reply).await?;
    if args.no_close {
        eprintln!("{uuid}");
    } else {
        client.close(uuid).await?;
    }
    Ok(ExitCode::SUCCESS)
}
