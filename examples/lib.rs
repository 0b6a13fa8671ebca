//! The Guide's chapter 4 examples, on the majordomo crates. Each example opens with how to run
//! it; start a broker first with `cargo run --release -p majordomo-cli -- broker`.
//!
//! - `mdclient`: synchronous Majordomo client, many requests to `echo`.
//! - `mdclient2`: asynchronous Majordomo client, all requests in flight at once.
//! - `mdworker`: an `echo` worker.
//! - `mmiecho`: asks the broker whether `echo` is served (8/MMI).
//! - `lpclient`, `lpserver`: Lazy Pirate client and a REP server that crashes and stalls at random.
//! - `spqueue`, `spworker`: Simple Pirate queue and REQ worker.
//! - `ppqueue`, `ppworker`: Paranoid Pirate (6/PPP) queue and worker.

/// The broker endpoint the examples use unless given another as their first argument.
pub const DEFAULT_ENDPOINT: &str = "tcp://127.0.0.1:5555";

/// Installs a stderr log subscriber for an example (filter with `RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The endpoint from the first command-line argument, or [`DEFAULT_ENDPOINT`].
pub fn endpoint_arg() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}
