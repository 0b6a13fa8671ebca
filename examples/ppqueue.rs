//! Paranoid Pirate queue (6/PPP): like the Simple Pirate queue, plus heartbeats both ways and
//! expiry of silent workers. A worker it does not know that heartbeats (one of a queue before it
//! on the same endpoint) is taken back at once.
//!
//! Run: `cargo run -p majordomo-examples --example ppqueue -- [FRONTEND [BACKEND]]` (clients on
//! `tcp://127.0.0.1:5555`, workers on `tcp://127.0.0.1:5556` unless given), then some
//! `ppworker`s and an `lpclient`. (The `majordomo ppqueue` command is the same queue with
//! options.)

use majordomo_pirate::{Queue, QueueConfig};

/// The workers' endpoint unless given another as the second argument.
const DEFAULT_BACKEND: &str = "tcp://127.0.0.1:5556";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let frontend = majordomo_examples::endpoint_arg();
    let backend = std::env::args()
        .nth(2)
        .unwrap_or_else(|| DEFAULT_BACKEND.to_owned());
    let queue = Queue::bind(&frontend, &backend, QueueConfig::paranoid()).await?;
    queue
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
