//! `majordomo flserver`: a Freelance server (10/FLP): the built-in echo, or any program.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use majordomo_freelance::{handler_fn, FreelanceServer};

use crate::server::GuardArgs;
use crate::signals::shutdown_signal;

/// Options of `flserver`.
#[derive(Args)]
pub(crate) struct FlserverArgs {
    /// Endpoint to bind, e.g. tcp://0.0.0.0:5555.
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    bind: String,
    /// The public endpoint clients connect to, announced as this server's identity (RFC 10:
    /// "Server identities are their public endpoints"). Default: the bound endpoint.
    #[arg(long)]
    identity: Option<String>,
    /// Requests handled at once; more wait.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runtime threads: 1 (the default) for a single-threaded runtime, 0 for one per core.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    #[command(flatten)]
    guard: GuardArgs,
    #[command(subcommand)]
    kind: FlserverKind,
}

/// What the server answers.
#[derive(Subcommand)]
enum FlserverKind {
    /// The reply is the request's frames.
    Echo,
    /// Any program: the request's frames (concatenated) are its stdin, its stdout the reply.
    Exec {
        /// Program and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Serves until a stop signal.
pub(crate) async fn run(args: FlserverArgs) -> Result<()> {
    let identity = args.identity.clone().unwrap_or_else(|| args.bind.clone());
    let guard = args.guard.config(16 * 1024 * 1024)?;
    let server = FreelanceServer::bind_as(&args.bind, &identity, guard)
        .await
        .context("flserver cannot start")?
        .concurrency(args.concurrency);
    crate::signals::ready();
    let stats = match args.kind {
        FlserverKind::Echo => {
            server
                .run(
                    handler_fn(|body| async move { Ok(body) }),
                    shutdown_signal(),
                )
                .await?
        }
        FlserverKind::Exec { command } => {
            let command = Arc::new(command);
            let handler = handler_fn(move |body| {
                let command = command.clone();
                async move { super::worker::exec(&command, body).await }
            });
            server.run(handler, shutdown_signal()).await?
        }
    };
    tracing::info!(?stats, "flserver stopped");
    Ok(())
}
