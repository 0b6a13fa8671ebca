//! `majordomo-bench-fixture`: the servers `majordomo bench` measures the transport with, one per
//! process (see `majordomo_tools::bench::fixture`). The benchmark starts it from beside its own
//! executable; it is not meant to be run by hand.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`).

use anyhow::Result;
use clap::Parser;
use majordomo_tools::bench::fixture::Fixture;

/// The command line: one fixture and its options.
#[derive(Parser)]
#[command(
    name = "majordomo-bench-fixture",
    version,
    about = "Fixtures of `majordomo bench`: an echo server, a protocol-free relay and its peers, a copy relay"
)]
struct Cli {
    #[command(subcommand)]
    fixture: Fixture,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let threads = cli.fixture.threads();
    let runtime = majordomo_rt::runtime::build(threads)?;
    runtime.block_on(cli.fixture.run())
}
