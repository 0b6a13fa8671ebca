//! `majordomo`: run a Majordomo broker, call services, serve them, or watch a demo.
//!
//! Logs go to stderr through `tracing`; filter them with `RUST_LOG` (default `info`).
//!
//! Layout: this file parses the command line and dispatches; each subcommand is a module of
//! [`cmd`] that owns its options and its `run`. What several share lives beside it: the options
//! of every server ([`server`]) and where they come from ([`config`]), the broker connection of
//! the client commands ([`connect`]), `--metrics-listen` ([`metrics`]), stop signals
//! ([`signals`]), logging ([`logs`]) and the C library's allocator ([`allocator`]). `bench`
//! and `soak` are tooling, in the `majordomo-tools` crate.

mod access;
mod allocator;
mod cmd;
mod config;
mod connect;
mod logs;
mod metrics;
mod server;
mod signals;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use logs::LogFormat;

#[derive(Parser)]
#[command(
    name = "majordomo",
    version,
    about = "ZeroMQ Majordomo (7/MDP) broker, client and worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text, or json (one object per line: timestamp, level, target, the
    /// event's fields, and the spans it happened in).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Majordomo broker (7/MDP + 8/MMI).
    // Boxed: the broker has by far the most options.
    Broker(Box<cmd::broker::BrokerArgs>),
    /// Send one request and print the reply frames, one per line.
    Call(cmd::call::CallArgs),
    /// Show a broker's services (queued requests, idle and busy workers, oldest request's age)
    /// and totals; exit status 2 if it does not answer, so it can serve as a health probe.
    Status(cmd::status::StatusArgs),
    /// A live view of a broker, refreshed every second: totals and a line per service (queued,
    /// idle and busy workers, requests per second, oldest request, drops). Keys: q quit, s or
    /// 1-7 sort, r reverse.
    Top(cmd::top::TopArgs),
    /// Serve a service as a Majordomo worker.
    Worker(cmd::worker::WorkerArgs),
    /// Run a Titanic server (9/TSP): durable requests and replies through a 7/MDP broker.
    Titanic(cmd::titanic::TitanicArgs),
    /// Broker, workers and clients in one process on loopback, with a throughput summary.
    Demo(cmd::demo::DemoArgs),
    /// Measure the transport's ceiling and the broker's throughput, latency, CPU and memory.
    Bench(majordomo_tools::bench::BenchArgs),
    /// Run broker and workers as processes with random kills for a while; report what was lost.
    Soak(majordomo_tools::soak::SoakArgs),
    /// Run a Paranoid Pirate queue (6/PPP): heartbeating workers on the backend.
    Ppqueue(cmd::queue::QueueArgs),
    /// Run a Simple Pirate queue: REQ workers that announce READY, no heartbeats.
    Spqueue(cmd::queue::QueueArgs),
    /// Run a Freelance server (10/FLP): clients call it directly, no broker
    /// (`call --freelance`).
    Flserver(cmd::flserver::FlserverArgs),
    /// Make a CURVE key pair: NAME (public) and NAME_secret, czmq certificate files; prints the
    /// public key.
    Keygen(cmd::keygen::KeygenArgs),
    /// Print a shell completion script for this command (bash, zsh, fish, elvish, powershell).
    Completions(cmd::docs::CompletionsArgs),
    /// Print a manual page (roff): `majordomo man > majordomo.1`, `majordomo man broker`, or
    /// every page with `majordomo man --dir /usr/local/share/man/man1`.
    Man(cmd::docs::ManArgs),
}

impl Command {
    /// Runtime threads the command wants: 1 for a single-threaded runtime, 0 for one per core.
    /// The broker and the queues are one task that owns its state, and the worker's handlers do
    /// their work elsewhere (echo: none; exec: a child process): a single-threaded runtime
    /// serves them without cross-thread wake-ups. Everything else gets a multi-threaded one.
    fn threads(&self) -> usize {
        match self {
            Command::Broker(args) => args.threads,
            Command::Ppqueue(args) | Command::Spqueue(args) => args.threads,
            Command::Worker(args) => args.threads,
            Command::Titanic(args) => args.threads,
            Command::Flserver(args) => args.threads,
            Command::Bench(args) => args.threads(),
            _ => 0,
        }
    }

    /// The level of the components' logs when `RUST_LOG` is unset.
    fn log_level(&self) -> &'static str {
        match self {
            // The demo and the benchmark print their own story; their components only speak up
            // about trouble.
            Command::Demo(_) | Command::Bench(_) => "warn",
            // Retries are the point of a soak run; its summary counts them.
            Command::Soak(_) => "error",
            // Lines on stderr would tear the full-screen view; its status line says what fails.
            Command::Top(_) => "off",
            _ => "info",
        }
    }
}

/// Runs the command; `call` exits with status 2 when no reply came, any error exits with 1 after
/// printing it. The runtime is dropped before the process exits, so every destructor runs.
fn main() -> Result<ExitCode> {
    let cli = config::parse()?;
    let threads = cli.command.threads();
    let runtime = majordomo_rt::runtime::build(threads)?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    logs::init(cli.command.log_level(), cli.log_format);
    let format = cli.log_format;
    let done = run_command(cli).await;
    match done {
        // With JSON logs, a fatal error is a log line too, so that a log collector parses it.
        Err(error) if format == logs::LogFormat::Json => {
            let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
            tracing::error!(error = %error, causes = ?causes, "stopped by an error");
            Ok(ExitCode::FAILURE)
        }
        done => done,
    }
}

async fn run_command(cli: Cli) -> Result<ExitCode> {
    let done = match cli.command {
        Command::Call(args) => return cmd::call::run(args).await,
        Command::Status(args) => return cmd::status::run(args).await,
        Command::Top(args) => return cmd::top::run(args).await,
        Command::Broker(args) => cmd::broker::run(*args).await,
        Command::Worker(args) => cmd::worker::run(args).await,
        Command::Titanic(args) => cmd::titanic::run(args).await,
        Command::Demo(args) => cmd::demo::run(args).await,
        Command::Bench(args) => majordomo_tools::bench::run(args).await,
        Command::Soak(args) => majordomo_tools::soak::run(args).await,
        Command::Ppqueue(args) => cmd::queue::run(args, true).await,
        Command::Spqueue(args) => cmd::queue::run(args, false).await,
        Command::Completions(args) => cmd::docs::completions(args),
        Command::Man(args) => cmd::docs::man(args),
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Flserver(args) => cmd::flserver::run(args).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Z85 key may begin with `-`, one of its characters: it is still taken as the key.
    #[test]
    fn a_server_key_beginning_with_a_hyphen_is_taken_as_the_key() {
        let key = format!("-C{}", "0".repeat(38));
        for args in [
            vec!["worker", "--curve-server-key", &key, "echo"],
            vec!["call", "--curve-server-key", &key, "echo", "hello"],
            vec!["status", "--curve-server-key", &key],
        ] {
            let parsed = Cli::try_parse_from(std::iter::once("majordomo").chain(args.clone()));
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
        }
    }
}
